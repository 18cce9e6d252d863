//! The doing side of downstream gating ([`super::gating`] decides): once a build has ended, write
//! the `<build>-image` ConfigMap (success only) and release or warn the suspended Jobs labelled
//! `multiarch.dev/after=<build>` in its namespace.

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
    let waiting = jobs
        .list(&ListParams::default().labels(&format!("{AFTER_LABEL}={name}")))
        .await
        .map_err(|source| Error::Kube {
            action: "list the Jobs waiting on the build",
            source,
        })?;
    let regarding_build = build.object_ref(&());
    for job in waiting {
        let Some(gate) = gating::gate(build, &job) else {
            continue;
        };
        let job_name = job.name_any();
        let regarding_job = job.object_ref(&());
        match gate {
            Gate::Release => {
                let patch = json!({"spec": {"suspend": false}});
                jobs.patch(&job_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| Error::Kube {
                        action: "release a waiting Job",
                        source,
                    })?;
                let image = status.image.clone().unwrap_or_default();
                info!(job = %job_name, %image, "released a waiting Job");
                let on_job = format!(
                    "released by MultiArchBuild {name}: {image} (ConfigMap {})",
                    gating::configmap_name(build)
                );
                let on_build = format!("released Job {job_name}: {image}");
                let release = |note| BuildEvent::new(EventType::Normal, reasons::RELEASED, "ReleaseJob", note);
                ctx.publish(&regarding_job, &release(on_job)).await;
                ctx.publish(&regarding_build, &release(on_build)).await;
            }
            Gate::Warn { marker, message } => {
                let why = ready_reason(status).unwrap_or(match status.phase {
                    Some(Phase::Cancelled) => reason::CANCELLED,
                    _ => reason::BUILD_FAILED,
                });
                let event = BuildEvent::new(EventType::Warning, why, "HoldJob", message);
                ctx.publish(&regarding_job, &event).await;
                let patch = json!({"metadata": {"annotations": {NOTIFIED_ANNOTATION: marker}}});
                jobs.patch(&job_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| Error::Kube {
                        action: "mark a waiting Job as told",
                        source,
                    })?;
                info!(job = %job_name, "a waiting Job stays suspended: the build did not succeed");
            }
        }
    }
    Ok(())
}
