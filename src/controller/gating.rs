//! Downstream gating: what a finished build means for the suspended Jobs that wait on it, and the
//! ConfigMap that hands them the pinned image. Pure: the controller applies the decisions.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{batch::v1::Job, core::v1::ConfigMap},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{Resource, ResourceExt, api::ObjectMeta};

use crate::api::{MultiArchBuild, Phase};

/// The label a Job carries to wait for a build in its namespace. Its value names the build; it may
/// be empty when [`AFTER_BUILDS_ANNOTATION`] lists the builds. The controller watches and lists
/// only Jobs with this label (annotations cannot be selected).
pub const AFTER_LABEL: &str = "multiarch.dev/after";

/// The annotation listing several builds a Job waits on, comma-separated (labels cannot hold
/// lists): `multiarch.dev/after-builds: "base,submit"`. The Job is released when every one of
/// them (and the build its label names, if any) has succeeded; the controller then writes the
/// ConfigMap `<job>-images` with one key per build, its pinned image.
pub const AFTER_BUILDS_ANNOTATION: &str = "multiarch.dev/after-builds";

/// The annotation recording which build outcomes a Job was already told about (comma-separated
/// `<uid>/<phase>` markers), so a failed build warns each waiting Job once, not on every reconcile.
pub const NOTIFIED_ANNOTATION: &str = "multiarch.dev/notified";

/// What to do with one waiting Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Every build it waits on succeeded: set `spec.suspend: false` (after writing `<job>-images`
    /// when the Job lists its builds in [`AFTER_BUILDS_ANNOTATION`]).
    Release,
    /// A build it waits on failed or was cancelled: leave the Job suspended and warn it once.
    /// `marker` is the new value of [`NOTIFIED_ANNOTATION`].
    Warn {
        build: String,
        marker: String,
        message: String,
    },
}

/// The builds a Job waits on, each once: the label's build, then the annotation's. Empty for a Job
/// that waits on nothing.
pub fn awaited(job: &Job) -> Vec<String> {
    let label = job.labels().get(AFTER_LABEL).map(String::as_str);
    let listed = job.annotations().get(AFTER_BUILDS_ANNOTATION).map(String::as_str);
    let mut names: Vec<String> = Vec::new();
    for name in label.into_iter().chain(listed.into_iter().flat_map(|l| l.split(','))) {
        let name = name.trim();
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// Whether the Job lists its builds in [`AFTER_BUILDS_ANNOTATION`] (and so gets `<job>-images`).
pub fn lists_builds(job: &Job) -> bool {
    job.annotations().contains_key(AFTER_BUILDS_ANNOTATION)
}

/// The decision for one Job that waits on the builds of [`awaited`], given what each of them is
/// (`None`: not found), or `None` to leave it alone (a build still running or missing, Job not
/// suspended, already released or already warned).
pub fn gate(job: &Job, builds: &BTreeMap<String, Option<MultiArchBuild>>) -> Option<Gate> {
    let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
    let names = awaited(job);
    if !suspended || names.is_empty() {
        return None;
    }
    let told = job.annotations().get(NOTIFIED_ANNOTATION).cloned().unwrap_or_default();
    let mut all_succeeded = true;
    for name in &names {
        let Some(build) = builds.get(name).and_then(Option::as_ref) else {
            all_succeeded = false;
            continue;
        };
        let status = build.status.clone().unwrap_or_default();
        match status.phase {
            Some(Phase::Succeeded) if status.image.is_some() => {}
            Some(phase @ (Phase::Failed | Phase::Cancelled)) => {
                let marker = format!("{}/{phase:?}", build.uid().unwrap_or_default());
                if told.split(',').any(|m| m == marker) {
                    all_succeeded = false;
                    continue;
                }
                let why = status.message.clone().unwrap_or_default();
                let message = format!("stays suspended: MultiArchBuild {name} ended {phase:?}: {why}");
                let marker = if told.is_empty() {
                    marker
                } else {
                    format!("{told},{marker}")
                };
                return Some(Gate::Warn {
                    build: name.clone(),
                    marker,
                    message,
                });
            }
            _ => all_succeeded = false,
        }
    }
    all_succeeded.then_some(Gate::Release)
}

/// The `<job>-images` ConfigMap of a Job that lists its builds: one key per build (its name), the
/// pinned image; owned by the Job (not as its controller), so it goes when the Job goes. `None`
/// until every build has its image.
pub fn images_configmap(job: &Job, builds: &BTreeMap<String, Option<MultiArchBuild>>) -> Option<ConfigMap> {
    let mut data = BTreeMap::new();
    for name in awaited(job) {
        let build = builds.get(&name)?.as_ref()?;
        let status = build.status.as_ref()?;
        if status.phase != Some(Phase::Succeeded) {
            return None;
        }
        data.insert(name, status.image.clone()?);
    }
    let owner = OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.name_any(),
        uid: job.uid()?,
        controller: None,
        block_owner_deletion: None,
    };
    Some(managed_configmap(
        images_configmap_name(job),
        job.namespace(),
        vec![owner],
        data,
    ))
}

/// A ConfigMap this controller writes (labelled managed-by), owned by `owners`.
fn managed_configmap(
    name: String,
    namespace: Option<String>,
    owners: Vec<OwnerReference>,
    data: BTreeMap<String, String>,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            namespace,
            owner_references: (!owners.is_empty()).then_some(owners),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".into(),
                "multiarch-operator".into(),
            )])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// The name of the ConfigMap carrying the images of the builds a Job lists.
pub fn images_configmap_name(job: &Job) -> String {
    format!("{}-images", job.name_any())
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
    Some(managed_configmap(
        configmap_name(build),
        build.namespace(),
        build.controller_owner_ref(&()).into_iter().collect(),
        data,
    ))
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

    fn with(build: &MultiArchBuild) -> BTreeMap<String, Option<MultiArchBuild>> {
        BTreeMap::from([(build.name_any(), Some(build.clone()))])
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
        assert_eq!(gate(&job("vecoli-3f2a9c1", Some(true)), &with(&b)), Some(Gate::Release));
        assert_eq!(gate(&job("vecoli-3f2a9c1", Some(false)), &with(&b)), None);
        assert_eq!(gate(&job("vecoli-3f2a9c1", None), &with(&b)), None);
        assert_eq!(gate(&job("another-build", Some(true)), &with(&b)), None);
    }

    #[test]
    fn nothing_is_released_before_success() {
        for phase in [Phase::Pending, Phase::Building, Phase::Assembling] {
            assert_eq!(
                gate(&job("vecoli-3f2a9c1", Some(true)), &with(&build(phase))),
                None,
                "{phase:?}"
            );
        }
    }

    #[test]
    fn failure_warns_once_and_keeps_the_job_suspended() {
        let b = build(Phase::Failed);
        let mut waiting = job("vecoli-3f2a9c1", Some(true));
        let Some(Gate::Warn { marker, message, .. }) = gate(&waiting, &with(&b)) else {
            panic!("expected a warning")
        };
        assert!(
            message.contains("vecoli-3f2a9c1 ended Failed: linux/arm64 failed"),
            "{message}"
        );
        waiting.metadata.annotations = Some(BTreeMap::from([(NOTIFIED_ANNOTATION.into(), marker)]));
        assert_eq!(gate(&waiting, &with(&b)), None);
        assert!(matches!(
            gate(&job("vecoli-3f2a9c1", Some(true)), &with(&build(Phase::Cancelled))),
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

#[cfg(test)]
mod several {
    use k8s_openapi::api::batch::v1::JobSpec;

    use super::*;
    use crate::api::MultiArchBuildStatus;

    fn build(name: &str, phase: Phase) -> MultiArchBuild {
        let mut build: MultiArchBuild = serde_yaml::from_str(include_str!("../../config/samples/vecoli.yaml")).unwrap();
        build.metadata.name = Some(name.into());
        build.metadata.uid = Some(format!("uid-{name}"));
        build.status = Some(MultiArchBuildStatus {
            phase: Some(phase),
            image: (phase == Phase::Succeeded).then(|| format!("repo/{name}@sha256:ff")),
            message: Some(format!("{name} broke")),
            ..Default::default()
        });
        build
    }

    fn job(label: &str, listed: &str) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("head".into()),
                uid: Some("job-uid".into()),
                namespace: Some("sims".into()),
                labels: Some(BTreeMap::from([(AFTER_LABEL.into(), label.into())])),
                annotations: Some(BTreeMap::from([(AFTER_BUILDS_ANNOTATION.into(), listed.into())])),
                ..Default::default()
            },
            spec: Some(JobSpec {
                suspend: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn builds(list: &[(&str, Option<Phase>)]) -> BTreeMap<String, Option<MultiArchBuild>> {
        list.iter()
            .map(|(name, phase)| (name.to_string(), phase.map(|p| build(name, p))))
            .collect()
    }

    #[test]
    fn the_label_and_the_annotation_name_the_builds_once_each() {
        assert_eq!(awaited(&job("", " base, submit ,base,")), ["base", "submit"]);
        assert_eq!(awaited(&job("submit", "base,submit")), ["submit", "base"]);
    }

    #[test]
    fn released_only_when_every_build_succeeded_with_each_image_in_its_configmap() {
        let waiting = job("", "base,submit");
        let running = builds(&[("base", Some(Phase::Succeeded)), ("submit", Some(Phase::Building))]);
        assert_eq!(gate(&waiting, &running), None);
        assert!(images_configmap(&waiting, &running).is_none());
        let missing = builds(&[("base", Some(Phase::Succeeded)), ("submit", None)]);
        assert_eq!(gate(&waiting, &missing), None);
        let done = builds(&[("base", Some(Phase::Succeeded)), ("submit", Some(Phase::Succeeded))]);
        assert_eq!(gate(&waiting, &done), Some(Gate::Release));
        let cm = images_configmap(&waiting, &done).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("head-images"));
        let data = cm.data.unwrap();
        assert_eq!(data["base"], "repo/base@sha256:ff");
        assert_eq!(data["submit"], "repo/submit@sha256:ff");
        let owner = &cm.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Job", "job-uid", None)
        );
    }

    #[test]
    fn each_failed_build_warns_once() {
        let mut waiting = job("", "base,submit");
        let failed = builds(&[("base", Some(Phase::Failed)), ("submit", Some(Phase::Building))]);
        let Some(Gate::Warn { build, marker, message }) = gate(&waiting, &failed) else {
            panic!("expected a warning")
        };
        assert_eq!(build, "base");
        assert!(
            message.contains("MultiArchBuild base ended Failed: base broke"),
            "{message}"
        );
        waiting
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(NOTIFIED_ANNOTATION.into(), marker.clone());
        assert_eq!(gate(&waiting, &failed), None);
        let both = builds(&[("base", Some(Phase::Failed)), ("submit", Some(Phase::Cancelled))]);
        let Some(Gate::Warn {
            build, marker: second, ..
        }) = gate(&waiting, &both)
        else {
            panic!("expected a second warning")
        };
        assert_eq!(build, "submit");
        assert_eq!(second, format!("{marker},uid-submit/Cancelled"));
    }
}
