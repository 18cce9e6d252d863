//! Downstream gating: what a finished build means for the suspended Jobs that wait on it, and the
//! ConfigMap that hands them the pinned image. Pure: the controller applies the decisions.

use std::collections::BTreeMap;

use k8s_openapi::api::{batch::v1::Job, core::v1::ConfigMap};
use kube::{Resource, ResourceExt, api::ObjectMeta};

use crate::api::{MultiArchBuild, Phase};

/// The label a Job carries to wait for a build in its namespace.
pub const AFTER_LABEL: &str = "multiarch.dev/after";

/// The annotation recording which build outcome a Job was already told about, so a failed build
/// warns each waiting Job once, not on every reconcile.
pub const NOTIFIED_ANNOTATION: &str = "multiarch.dev/notified";

/// What to do with one waiting Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The build succeeded: set `spec.suspend: false`.
    Release,
    /// The build failed or was cancelled: leave the Job suspended and warn it once.
    Warn { marker: String, message: String },
}

/// The decision for one Job labelled `multiarch.dev/after=<build>`, or `None` to leave it alone
/// (build still running, Job not suspended, already released or already warned).
pub fn gate(build: &MultiArchBuild, job: &Job) -> Option<Gate> {
    let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
    if !suspended || job.labels().get(AFTER_LABEL) != Some(&build.name_any()) {
        return None;
    }
    let status = build.status.as_ref()?;
    match status.phase? {
        Phase::Succeeded if status.image.is_some() => Some(Gate::Release),
        phase @ (Phase::Failed | Phase::Cancelled) => {
            let marker = format!("{}/{phase:?}", build.uid().unwrap_or_default());
            if job.annotations().get(NOTIFIED_ANNOTATION) == Some(&marker) {
                return None;
            }
            let why = status.message.clone().unwrap_or_default();
            let message = format!(
                "stays suspended: MultiArchBuild {} ended {phase:?}: {why}",
                build.name_any()
            );
            Some(Gate::Warn { marker, message })
        }
        _ => None,
    }
}

/// The name of the ConfigMap carrying a succeeded build's image.
pub fn configmap_name(build: &MultiArchBuild) -> String {
    format!("{}-image", build.name_any())
}

/// The `<build>-image` ConfigMap (owned by the build, so it goes when the build goes), or `None`
/// until the build has a final image.
pub fn image_configmap(build: &MultiArchBuild) -> Option<ConfigMap> {
    let status = build.status.as_ref()?;
    if status.phase != Some(Phase::Succeeded) {
        return None;
    }
    let mut data = BTreeMap::from([
        ("image".to_string(), status.image.clone()?),
        ("digest".to_string(), status.digest.clone()?),
        ("tag".to_string(), build.spec.output.tag.clone()),
    ]);
    for platform in &status.platforms {
        if let Some(digest) = &platform.digest {
            data.insert(format!("digest-{}", platform.platform.tag_suffix()), digest.clone());
        }
    }
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(configmap_name(build)),
            namespace: build.namespace(),
            owner_references: build.controller_owner_ref(&()).map(|o| vec![o]),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".into(),
                "multiarch-operator".into(),
            )])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::JobSpec;

    use super::*;
    use crate::api::{MultiArchBuildStatus, Platform, PlatformStatus};

    fn build(phase: Phase) -> MultiArchBuild {
        let mut build: MultiArchBuild = serde_yaml::from_str(include_str!("../../config/samples/vecoli.yaml")).unwrap();
        build.metadata.uid = Some("uid-1".into());
        let mut arm = PlatformStatus::from(Platform::LinuxArm64);
        arm.digest = Some("sha256:aa".into());
        build.status = Some(MultiArchBuildStatus {
            phase: Some(phase),
            image: (phase == Phase::Succeeded).then(|| "repo@sha256:ff".into()),
            digest: (phase == Phase::Succeeded).then(|| "sha256:ff".into()),
            platforms: vec![arm],
            message: Some("linux/arm64 failed: exit code 2".into()),
            ..Default::default()
        });
        build
    }

    fn job(after: &str, suspend: Option<bool>) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("nextflow-head".into()),
                labels: Some(BTreeMap::from([(AFTER_LABEL.into(), after.into())])),
                ..Default::default()
            },
            spec: Some(JobSpec {
                suspend,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn success_releases_only_suspended_jobs_waiting_on_this_build() {
        let b = build(Phase::Succeeded);
        assert_eq!(gate(&b, &job("vecoli-3f2a9c1", Some(true))), Some(Gate::Release));
        assert_eq!(gate(&b, &job("vecoli-3f2a9c1", Some(false))), None);
        assert_eq!(gate(&b, &job("vecoli-3f2a9c1", None)), None);
        assert_eq!(gate(&b, &job("another-build", Some(true))), None);
    }

    #[test]
    fn nothing_is_released_before_success() {
        for phase in [Phase::Pending, Phase::Building, Phase::Assembling] {
            assert_eq!(
                gate(&build(phase), &job("vecoli-3f2a9c1", Some(true))),
                None,
                "{phase:?}"
            );
        }
    }

    #[test]
    fn failure_warns_once_and_keeps_the_job_suspended() {
        let b = build(Phase::Failed);
        let mut waiting = job("vecoli-3f2a9c1", Some(true));
        let Some(Gate::Warn { marker, message }) = gate(&b, &waiting) else {
            panic!("expected a warning")
        };
        assert!(
            message.contains("vecoli-3f2a9c1 ended Failed: linux/arm64 failed"),
            "{message}"
        );
        waiting.metadata.annotations = Some(BTreeMap::from([(NOTIFIED_ANNOTATION.into(), marker)]));
        assert_eq!(gate(&b, &waiting), None);
        assert!(matches!(
            gate(&build(Phase::Cancelled), &job("vecoli-3f2a9c1", Some(true))),
            Some(Gate::Warn { .. })
        ));
    }

    #[test]
    fn the_configmap_carries_image_digest_tag_and_per_arch_digests_and_is_owned() {
        assert!(image_configmap(&build(Phase::Building)).is_none());
        let cm = image_configmap(&build(Phase::Succeeded)).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("vecoli-3f2a9c1-image"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("sims"));
        let data = cm.data.unwrap();
        assert_eq!(data["image"], "repo@sha256:ff");
        assert_eq!(data["digest"], "sha256:ff");
        assert_eq!(data["tag"], "3f2a9c1");
        assert_eq!(data["digest-arm64"], "sha256:aa");
        let owner = &cm.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("MultiArchBuild", "uid-1", Some(true))
        );
    }
}
