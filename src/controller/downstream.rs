//! The doing side of downstream gating ([`super::gating`] decides): once a build has ended, write
//! the `<build>-image` ConfigMap (success only) and release or warn the suspended Jobs in its
//! namespace that wait on it (label `multiarch.dev/after=<build>`, or the build listed in the
//! annotation `multiarch.dev/after-builds`; such a Job is released, with its `<job>-images`
//! ConfigMap, only when every build it lists succeeded).

use std::collections::BTreeMap;

use k8s_openapi::api::{batch::v1::Job, core::v1::ConfigMap};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;
use tracing::info;

use super::{
    events::{BuildEvent, ready_reason, reasons},
    gating::{self, AFTER_LABEL, Gate, NOTIFIED_ANNOTATION},
    reconcile::{Context, Error, FIELD_MANAGER},
};
use crate::{
    api::{MultiArchBuild, Phase},
    plan::reason,
};

/// Applies the gating decisions for an ended build; nothing while it runs.
pub(super) async fn release(build: &MultiArchBuild, ctx: &Context) -> Result<(), Error> {
    let Some(status) = &build.status else { return Ok(()) };
    if !status.phase.is_some_and(Phase::is_terminal) {
        return Ok(());
    }
    let namespace = build.namespace().unwrap_or_default();
    let name = build.name_any();
    // A finished build's gating is done once: its resyncs cost nothing here until a waiting Job
    // changes (a new one, or one suspended again). Read before the list, so a Job that changes
    // meanwhile gets another look.
    let uid = build.uid().unwrap_or_default();
    let signal = ctx.job_signal(&format!("{namespace}/{name}"));
    if ctx.gating_done(&uid, signal) {
        return Ok(());
    }
    if let Some(configmap) = gating::image_configmap(build) {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch(
            &gating::configmap_name(build),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&configmap),
        )
        .await
        .map_err(|source| Error::Kube {
            action: "write the image ConfigMap",
            source,
        })?;
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    // Every Job labelled multiarch.dev/after (whatever the value): those waiting on this build by
    // their label or by their multiarch.dev/after-builds annotation.
    let labelled = jobs
        .list(&ListParams::default().labels(AFTER_LABEL))
        .await
        .map_err(|source| Error::Kube {
            action: "list the Jobs waiting on the build",
            source,
        })?;
    let regarding_build = build.object_ref(&());
    let builds: Api<MultiArchBuild> = Api::namespaced(ctx.client.clone(), &namespace);
    for job in labelled {
        let awaited = gating::awaited(&job);
        if !awaited.contains(&name) {
            continue;
        }
        // This build as just stepped; the others as the API server has them now.
        let mut known: BTreeMap<String, Option<MultiArchBuild>> = BTreeMap::new();
        for other in &awaited {
            let found = if *other == name {
                Some(build.clone())
            } else {
                // One that cannot be read is not succeeded: the Job waits.
                match builds.get_opt(other).await {
                    Ok(found) => found,
                    Err(kube::Error::SerdeError(_)) => None,
                    Err(source) => {
                        return Err(Error::Kube {
                            action: "read a build a waiting Job names",
                            source,
                        });
                    }
                }
            };
            known.insert(other.clone(), found);
        }
        let Some(gate) = gating::gate(&job, &known) else {
            continue;
        };
        let job_name = job.name_any();
        let regarding_job = job.object_ref(&());
        match gate {
            Gate::Release => {
                let note = if gating::lists_builds(&job) {
                    let Some(configmap) = gating::images_configmap(&job, &known) else {
                        continue;
                    };
                    let cm_name = gating::images_configmap_name(&job);
                    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
                    api.patch(
                        &cm_name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&configmap),
                    )
                    .await
                    .map_err(|source| Error::Kube {
                        action: "write the images ConfigMap of a waiting Job",
                        source,
                    })?;
                    format!(
                        "released: MultiArchBuild {} succeeded (ConfigMap {cm_name})",
                        awaited.join(", ")
                    )
                } else {
                    format!(
                        "released by MultiArchBuild {name}: {} (ConfigMap {})",
                        status.image.clone().unwrap_or_default(),
                        gating::configmap_name(build)
                    )
                };
                let patch = json!({"spec": {"suspend": false}});
                jobs.patch(&job_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| Error::Kube {
                        action: "release a waiting Job",
                        source,
                    })?;
                let image = status.image.clone().unwrap_or_default();
                info!(job = %job_name, builds = ?awaited, "released a waiting Job");
                let on_build = format!("released Job {job_name}: {image}");
                let release = |note| BuildEvent::new(EventType::Normal, reasons::RELEASED, "ReleaseJob", note);
                ctx.publish(&regarding_job, &release(note)).await;
                ctx.publish(&regarding_build, &release(on_build)).await;
            }
            Gate::Warn {
                build: failed,
                marker,
                message,
            } => {
                let failed_status = known.get(&failed).cloned().flatten().and_then(|b| b.status);
                let why = failed_status.as_ref().and_then(ready_reason).unwrap_or(
                    match failed_status.as_ref().and_then(|s| s.phase) {
                        Some(Phase::Cancelled) => reason::CANCELLED,
                        _ => reason::BUILD_FAILED,
                    },
                );
                let event = BuildEvent::new(EventType::Warning, why, "HoldJob", message);
                ctx.publish(&regarding_job, &event).await;
                let patch = json!({"metadata": {"annotations": {NOTIFIED_ANNOTATION: marker}}});
                jobs.patch(&job_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| Error::Kube {
                        action: "mark a waiting Job as told",
                        source,
                    })?;
                info!(job = %job_name, build = %failed, "a waiting Job stays suspended: a build it waits on did not succeed");
            }
        }
    }
    ctx.gated(&uid, signal);
    Ok(())
}
