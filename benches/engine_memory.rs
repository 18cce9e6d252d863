//! The engine's peak memory with 1,000 live builds of 2 platforms each.
//!
//! Against a real moto server (non-Docker Batch): every build goes through `Engine::step` (plan,
//! then find-or-submit of both jobs), all 2,000 jobs are watched by one `JobPoller` and described
//! in one sweep, and every build is planned again from the poller's snapshots, with all statuses
//! held in memory as the controller holds them. Prints the process's peak resident set
//! (`VmHWM`) as `bench engine_peak_rss_1000_builds <MiB> MiB`; exits 1 above the 64 MiB target.
//!
//! Without `--bench` (under `cargo test --all-targets`) it runs 20 builds as a quick check and
//! prints a `smoke` line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../tests/common/moto.rs"]
mod moto;

use std::{collections::BTreeMap, process::ExitCode};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use moto::{JOB_DEFINITION, Moto, QUEUE, Recorder};
use multiarch_operator::{
    api::{GitSources, MultiArchBuildStatus},
    batch::{BatchExecutor, JobPoller, PollerConfig},
    engine::{self, Build, Engine},
    plan::{self, Input, JobObservation, Observations},
    registry::{RegistryClient, RegistryOptions},
};

const TARGET_MIB: f64 = 64.0;

/// Peak resident set of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (builds, prefix) = if full { (1000, "bench") } else { (20, "smoke") };

    let moto = Moto::start().await;
    let recorder = Recorder::default();
    let (batch, logs) = moto.clients(&recorder).await;
    moto.create_batch_environment(&batch).await;
    let executor = BatchExecutor::new(batch, logs);
    let engine = Engine {
        batch: executor.clone(),
        // No registry is reached: the spec does not reuse, and no build gets to assembly here.
        registry: RegistryClient::new(RegistryOptions::default()),
        default_job_definition: JOB_DEFINITION.into(),
        signer: None,
    };
    let poller = JobPoller::new(executor, PollerConfig::default());
    let spec = common::spec(QUEUE);
    let refs = common::build_refs(0..builds);

    // Every build's first step: plan, then find-or-submit of both platforms.
    let statuses: Vec<MultiArchBuildStatus> = futures::stream::iter(refs.iter())
        .map(|reference| {
            let (engine, spec) = (&engine, &spec);
            async move {
                let build = Build {
                    reference,
                    spec,
                    git_sources: GitSources::Remote,
                    generation: Some(1),
                    refusal: None,
                    dependencies: None,
                };
                engine
                    .step(
                        &build,
                        MultiArchBuildStatus::default(),
                        BTreeMap::new(),
                        Timestamp::now,
                        |_| std::future::ready(Ok(())),
                    )
                    .await
                    .map(|stepped| stepped.status)
            }
        })
        .buffered(8)
        .try_collect()
        .await
        .expect("submitting through the engine");

    // One poller sweep over all live jobs, then every build planned again from its snapshots.
    for (reference, status) in refs.iter().zip(&statuses) {
        for job_id in engine::live_job_ids(status) {
            poller.watch(reference, &job_id);
        }
    }
    let report = poller.sweep().await;
    assert!(report.error.is_none(), "sweep failed: {:?}", report.error);
    let next: Vec<plan::Plan> = statuses
        .iter()
        .map(|status| {
            let jobs = engine::job_observations(status, |id| poller.snapshot(id).map(JobObservation::Seen));
            let observed = Observations {
                jobs,
                ..Default::default()
            };
            plan::plan(&Input {
                spec: &spec,
                git_sources: GitSources::Remote,
                generation: Some(1),
                refusal: None,
                dependencies: None,
                status,
                observed: &observed,
                now: Timestamp::now(),
            })
        })
        .collect();
    let reading = next
        .iter()
        .filter(|p| {
            let reads = p
                .actions
                .iter()
                .filter(|a| matches!(a, plan::Action::ReadResult { .. }));
            reads.count() == 2
        })
        .count();
    assert_eq!(reading, builds, "every build saw both of its jobs succeed");

    let peak = peak_rss_mib();
    println!("{prefix} engine_peak_rss_{builds}_builds {peak:.1} MiB");
    eprintln!(
        "  {builds} builds, {} jobs submitted and described; target < {TARGET_MIB} MiB",
        builds * 2
    );
    if peak < TARGET_MIB {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
