//! DescribeJobs calls per poll interval for 1, 100 and 1,000 live builds of 2 platforms each,
//! measured against a real moto server (non-Docker Batch) through the real executor and poller:
//! the jobs are submitted with `find_or_submit`, watched by one `JobPoller`, and one sweep is run.
//! The figure is the number of DescribeJobs HTTP requests the SDK actually sent during the sweep
//! (counted by an SDK interceptor), cross-checked with the poller's own counter.
//!
//! Prints `bench describejobs_calls_per_poll_<N>_builds <calls> calls`; exits 1 when a figure is
//! not ceil(live jobs / 100). Needs `moto_server` (`pip install 'moto[server]'`).
//!
//! `cargo bench` passes `--bench`; without it (`cargo test --all-targets`) only 1 and 100 builds
//! are measured, as a quick check, and the lines start with `smoke` instead of `bench`.

// Test tooling like tests/: a failed setup step should stop the bench loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../tests/common/moto.rs"]
mod moto;

use std::process::ExitCode;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use moto::{JOB_DEFINITION, Moto, QUEUE, Recorder};
use multiarch_operator::api::Platform;
use multiarch_operator::batch::{BatchExecutor, BuildRef, JobPoller, PollerConfig, submit_request};

const PLATFORMS: [Platform; 2] = [Platform::LinuxAmd64, Platform::LinuxArm64];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let moto = Moto::start().await;
    let recorder = Recorder::default();
    let (batch, logs) = moto.clients(&recorder).await;
    moto.create_batch_environment(&batch).await;
    let executor = BatchExecutor::new(batch, logs);
    let spec = common::spec(QUEUE);

    let full = std::env::args().any(|arg| arg == "--bench");
    let (sizes, prefix): (&[usize], &str) = if full {
        (&[1, 100, 1000], "bench")
    } else {
        (&[1, 100], "smoke")
    };
    let mut ok = true;
    let mut next_build = 0usize;
    for &builds in sizes {
        let started = Instant::now();
        let poller = JobPoller::new(executor.clone(), PollerConfig::default());
        let refs = common::build_refs(next_build..next_build + builds);
        next_build += builds;
        let submitted: Vec<(BuildRef, String)> = futures::stream::iter(
            refs.iter()
                .flat_map(|build| PLATFORMS.map(|platform| (build.clone(), platform))),
        )
        .map(|(build, platform)| {
            let executor = executor.clone();
            let spec = &spec;
            async move {
                let request = submit_request(&build, spec, platform, JOB_DEFINITION)?;
                let job = executor.find_or_submit(&request).await?;
                Ok::<_, multiarch_operator::batch::BatchError>((build, job.job_id))
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await
        .expect("submitting the bench jobs to moto");
        for (build, job_id) in &submitted {
            poller.watch(build, job_id);
        }
        let submit_time = started.elapsed();

        let http_before = recorder.count("describejobs");
        let poller_before = poller.describe_calls();
        let sweep_started = Instant::now();
        let report = poller.sweep().await;
        let http_calls = recorder.count("describejobs") - http_before;
        let poller_calls = poller.describe_calls() - poller_before;
        let live_jobs = submitted.len();
        let expected = live_jobs.div_ceil(100);

        println!("{prefix} describejobs_calls_per_poll_{builds}_builds {http_calls} calls");
        eprintln!(
            "  {builds} builds, {live_jobs} live jobs: submitted in {:.1?}, sweep {:.1?}, {} changes; \
             poller counted {poller_calls}, expected ceil({live_jobs}/100) = {expected}",
            submit_time,
            sweep_started.elapsed(),
            report.changes,
        );
        if report.error.is_some() || http_calls != expected || poller_calls as usize != http_calls {
            eprintln!("  MISMATCH (error: {:?})", report.error);
            ok = false;
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
