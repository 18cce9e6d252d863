//! The Batch executor and the shared poller against a real moto server (non-Docker Batch).
//!
//! moto differs from AWS in ways these tests tolerate (the code is written for AWS):
//! - jobs are SUCCEEDED (or FAILED with `MOTO_SIMPLE_BATCH_FAIL_AFTER=0`) before SubmitJob returns;
//! - ListJobs answers oldest first (AWS: newest first), without pagination;
//! - DescribeJobs accepts more than 100 ids (AWS rejects them) and answers an empty list with every job;
//! - TerminateJob of a finished or unknown job succeeds and sets `statusReason` on a finished one.

// Helpers outside #[test] functions unwrap too: a failed setup step must stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/moto.rs"]
mod moto;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use moto::{JOB_DEFINITION, Moto, QUEUE, Recorder};
use multiarch_operator::api::{MultiArchBuildSpec, Platform};
use multiarch_operator::batch::{
    AwsOperation, BatchExecutor, BuildRef, JobPoller, PollerConfig, SubmitRequest, job_name, submit_request,
};
use multiarch_operator::plan::JobState;

fn spec() -> MultiArchBuildSpec {
    serde_yaml::from_str(&format!(
        r#"
source:
  git:
    url: https://github.com/example/app.git
    revision: main
buildArgs:
  - name: VERSION
    value: "1.0"
output:
  repository: 123456789012.dkr.ecr.us-east-1.amazonaws.com/app
  tag: v1
platforms:
  - platform: linux/amd64
    jobQueue: {QUEUE}
  - platform: linux/arm64
    jobQueue: {QUEUE}
retry:
  attempts: 2
timeoutSeconds: 900
"#
    ))
    .unwrap()
}

fn build(n: usize) -> BuildRef {
    BuildRef::new(
        "team",
        format!("app-{n}"),
        format!("{n:08x}-0000-4000-8000-000000000000"),
    )
}

fn request(n: usize, platform: Platform) -> SubmitRequest {
    submit_request(&build(n), &spec(), platform, JOB_DEFINITION).unwrap()
}

struct Env {
    _moto: Moto,
    recorder: Recorder,
    batch: aws_sdk_batch::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
    executor: BatchExecutor,
}

async fn env_with(server_env: &[(&str, &str)]) -> Env {
    let moto = Moto::start_with_env(server_env).await;
    let recorder = Recorder::default();
    let (batch, logs) = moto.clients(&recorder).await;
    moto.create_batch_environment(&batch).await;
    let executor = BatchExecutor::new(batch.clone(), logs.clone());
    Env {
        _moto: moto,
        recorder,
        batch,
        logs,
        executor,
    }
}

async fn env() -> Env {
    env_with(&[]).await
}

async fn jobs_named(batch: &aws_sdk_batch::Client, name: &str) -> Vec<String> {
    batch
        .list_jobs()
        .job_queue(QUEUE)
        .filters(
            aws_sdk_batch::types::KeyValuesPair::builder()
                .name("JOB_NAME")
                .values(name)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .job_summary_list()
        .iter()
        .filter(|s| s.job_name() == Some(name))
        .filter_map(|s| s.job_id().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn find_or_submit_twice_submits_once_and_sends_the_contract() {
    let env = env().await;
    let req = request(1, Platform::LinuxArm64);

    let first = env.executor.find_or_submit(&req).await.unwrap();
    assert!(!first.adopted);
    assert_eq!(first.job_name, "mab-team-app-1-arm64-00000001");
    assert_eq!(first.state, Some(JobState::Submitted));
    let second = env.executor.find_or_submit(&req).await.unwrap();
    assert!(second.adopted);
    assert_eq!(second.job_id, first.job_id);
    assert_eq!(env.recorder.count("submitjob"), 1);
    assert_eq!(env.recorder.count("listjobs"), 2, "ListJobs before every submit");
    assert_eq!(jobs_named(&env.batch, &req.job_name).await, vec![first.job_id.clone()]);
    assert_eq!(env.executor.calls().get(AwsOperation::SubmitJob), 1);

    // What went over the wire: environment only (no command), retry rules, timeout, tags.
    let body = &env.recorder.bodies("submitjob")[0];
    assert_eq!(body["jobName"], "mab-team-app-1-arm64-00000001");
    assert_eq!(body["jobQueue"], QUEUE);
    assert_eq!(body["jobDefinition"], JOB_DEFINITION);
    assert!(body["containerOverrides"].get("command").is_none(), "{body}");
    assert_eq!(body["retryStrategy"]["attempts"], 2);
    assert_eq!(
        body["retryStrategy"]["evaluateOnExit"],
        serde_json::json!([
            {"onStatusReason": "Host EC2*", "action": "RETRY"},
            {"onReason": "*", "action": "EXIT"},
        ])
    );
    assert_eq!(body["timeout"]["attemptDurationSeconds"], 900);
    assert_eq!(body["tags"]["multiarch.dev/build"], "team/app-1");
    assert_eq!(body["tags"]["multiarch.dev/platform"], "linux/arm64");
    assert_eq!(
        body["tags"]["multiarch.dev/build-uid"],
        "00000001-0000-4000-8000-000000000000"
    );
    // The same body as the plain-data form printed by --dry-run.
    assert_eq!(*body, req.to_submit_job_json());

    // Batch (moto) hands the variables to the container and keeps the tags.
    let detail = env.batch.describe_jobs().jobs(&first.job_id).send().await.unwrap();
    let job = &detail.jobs()[0];
    let container_env: BTreeMap<&str, &str> = job
        .container()
        .unwrap()
        .environment()
        .iter()
        .filter_map(|kv| Some((kv.name()?, kv.value()?)))
        .collect();
    assert_eq!(
        container_env["MAB_IMAGE"],
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:v1-arm64"
    );
    assert_eq!(container_env["MAB_PLATFORM"], "linux/arm64");
    assert_eq!(container_env["MAB_REGISTRY_AUTH"], "ecr");
    assert_eq!(container_env["MAB_BUILD_ARG_NAMES"], "VERSION");
    assert_eq!(container_env["MAB_BUILD_ARG_VERSION"], "1.0");
    assert_eq!(container_env["MAB_CACHE_MODE"], "max");
    assert_eq!(
        container_env["MAB_CACHE_IMAGE"],
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:buildcache-arm64"
    );
    assert_eq!(
        job.tags().unwrap()["multiarch.dev/build-uid"],
        "00000001-0000-4000-8000-000000000000"
    );
}

#[tokio::test]
async fn restart_between_submit_and_status_write_adopts_the_job() {
    let env = env().await;
    let req = request(2, Platform::LinuxAmd64);
    // The operator submits, then "crashes" before recording the id...
    let lost = env.executor.find_or_submit(&req).await.unwrap().job_id;
    // ...and a new process, with a new client and no memory of the id, reconciles again.
    let restarted = BatchExecutor::new(env.batch.clone(), env.logs.clone());
    let again = restarted.find_or_submit(&req).await.unwrap();
    assert!(again.adopted);
    assert_eq!(again.job_id, lost);
    assert_eq!(jobs_named(&env.batch, &req.job_name).await.len(), 1);
    // The other platform of the same build is a different job.
    let other = restarted
        .find_or_submit(&request(2, Platform::LinuxArm64))
        .await
        .unwrap();
    assert!(!other.adopted);
    assert_ne!(other.job_id, lost);
}

#[tokio::test]
async fn adoption_takes_the_newest_exact_name_only() {
    let env = env().await;
    let req = request(3, Platform::LinuxAmd64);
    let submit_raw = |name: String| {
        let batch = env.batch.clone();
        async move {
            batch
                .submit_job()
                .job_name(name)
                .job_queue(QUEUE)
                .job_definition(JOB_DEFINITION)
                .send()
                .await
                .unwrap()
                .job_id()
                .unwrap()
                .to_owned()
        }
    };
    // A job whose name differs only in case: moto's (and AWS's) JOB_NAME filter returns it.
    submit_raw(req.job_name.to_uppercase()).await;
    // Two jobs with the exact name (e.g. left by an older operator); the newer must win.
    let older = submit_raw(req.job_name.clone()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let newer = submit_raw(req.job_name.clone()).await;
    assert_ne!(older, newer);
    let found = env.executor.find_or_submit(&req).await.unwrap();
    assert!(found.adopted);
    assert_eq!(found.job_id, newer);
    assert_eq!(env.recorder.count("submitjob"), 3, "no submit from find_or_submit");
    // A name nobody used is not found.
    assert_eq!(env.executor.find_job(QUEUE, "mab-nobody").await.unwrap(), None);
}

#[tokio::test]
async fn describe_chunks_by_100_and_leaves_unknown_ids_out() {
    let env = env().await;
    let mut ids = Vec::new();
    for n in 0..75 {
        for platform in [Platform::LinuxAmd64, Platform::LinuxArm64] {
            ids.push(
                env.executor
                    .find_or_submit(&request(100 + n, platform))
                    .await
                    .unwrap()
                    .job_id,
            );
        }
    }
    let unknown = [
        "00000000-0000-4000-8000-00000000dead".to_owned(),
        "00000000-0000-4000-8000-00000000beef".to_owned(),
    ];
    let mut ask = ids.clone();
    ask.extend(unknown.iter().cloned());
    ask.push(ids[0].clone()); // duplicates are asked once

    let before = env.recorder.count("describejobs");
    let found = env.executor.describe(&ask).await.unwrap();
    assert_eq!(env.recorder.count("describejobs") - before, 2, "ceil(152 / 100) calls");
    assert_eq!(found.len(), 150);
    for id in &ids {
        let snap = &found[id];
        assert_eq!(snap.state, JobState::Succeeded);
        assert!(snap.job_name.starts_with("mab-team-app-1"), "{}", snap.job_name);
        assert!(
            snap.log_stream_name
                .as_deref()
                .is_some_and(|s| s.ends_with(id.as_str()))
        );
        assert_eq!(snap.attempts, 1);
        assert!(snap.started_at.is_some() && snap.stopped_at.is_some());
        assert!(snap.created_at.is_some_and(|c| Some(c) <= snap.started_at), "{snap:?}");
    }
    assert!(unknown.iter().all(|id| !found.contains_key(id)));
    // Nothing to ask: no call (moto would answer an empty list with every job).
    assert!(env.executor.describe(&[]).await.unwrap().is_empty());
    assert_eq!(env.recorder.count("describejobs") - before, 2);
}

#[tokio::test]
async fn terminate_sends_the_reason() {
    let env = env().await;
    let job = env
        .executor
        .find_or_submit(&request(4, Platform::LinuxAmd64))
        .await
        .unwrap();
    env.executor
        .terminate(&job.job_id, "MultiArchBuild team/app-4 was cancelled")
        .await
        .unwrap();
    let bodies = env.recorder.bodies("terminatejob");
    assert_eq!(bodies[0]["jobId"], job.job_id.as_str());
    assert_eq!(bodies[0]["reason"], "MultiArchBuild team/app-4 was cancelled");
    // A reason is mandatory for Batch: an empty one is replaced.
    env.executor.terminate(&job.job_id, " ").await.unwrap();
    assert_eq!(
        env.recorder.bodies("terminatejob")[1]["reason"],
        "terminated by multiarch-operator"
    );
    // moto keeps the first reason as the status reason (the job had already finished there).
    let snap = env
        .executor
        .describe(std::slice::from_ref(&job.job_id))
        .await
        .unwrap()
        .remove(&job.job_id)
        .unwrap();
    assert_eq!(
        snap.status_reason.as_deref(),
        Some("MultiArchBuild team/app-4 was cancelled")
    );
}

#[tokio::test]
async fn log_tail_reads_the_last_lines() {
    let env = env().await;
    // No log group yet, then no stream: empty, not an error.
    assert!(
        env.executor
            .log_tail("mab-builder/default/none", 20)
            .await
            .unwrap()
            .is_empty()
    );
    let lines: Vec<String> = (1..=30).map(|i| format!("step {i}\n")).collect();
    moto::put_log_lines(&env.logs, "mab-builder/default/abc", &lines).await;
    assert!(
        env.executor
            .log_tail("mab-builder/default/none", 20)
            .await
            .unwrap()
            .is_empty()
    );

    let tail = env.executor.log_tail("mab-builder/default/abc", 5).await.unwrap();
    assert_eq!(tail, ["step 26", "step 27", "step 28", "step 29", "step 30"]);
    let tail = env.executor.log_tail("mab-builder/default/abc", 500).await.unwrap();
    assert_eq!(tail.len(), 20, "at most 20 lines");
    assert_eq!(tail[0], "step 11");
    assert!(
        env.executor
            .log_tail("mab-builder/default/abc", 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(env.executor.calls().get(AwsOperation::GetLogEvents), 4);
}

#[tokio::test]
async fn poller_publishes_each_change_once_and_drops_finished_jobs() {
    let env = env().await;
    let poller = JobPoller::new(
        env.executor.clone(),
        PollerConfig::with_interval(Duration::from_millis(50)),
    );
    let mut changes = poller.subscribe();
    let mut owners = HashMap::new();
    for n in 0..60 {
        for platform in [Platform::LinuxAmd64, Platform::LinuxArm64] {
            let job = env.executor.find_or_submit(&request(200 + n, platform)).await.unwrap();
            poller.watch(&build(200 + n), &job.job_id);
            owners.insert(job.job_id, build(200 + n));
        }
    }
    poller.watch(&build(999), "00000000-0000-4000-8000-00000000dead");
    assert_eq!(poller.live_jobs(), 121);

    let before = env.recorder.count("describejobs");
    let report = poller.sweep().await;
    assert_eq!(report.describe_calls, 2);
    assert_eq!(
        env.recorder.count("describejobs") - before,
        2,
        "one sweep = ceil(121 / 100) calls"
    );
    assert_eq!(report.changes, 120);
    let mut seen = 0;
    while let Some(change) = changes.try_recv() {
        let snap = change.snapshot.expect("a snapshot");
        assert_eq!(snap.state, JobState::Succeeded);
        assert_eq!(owners[&change.job_id], change.owner);
        seen += 1;
    }
    assert_eq!(seen, 120);
    // Finished jobs are not described again; only the unknown id is, until it counts as missing.
    assert_eq!(poller.live_jobs(), 1);
    let report = poller.sweep().await;
    assert_eq!((report.jobs, report.describe_calls, report.changes), (1, 1, 0));
    assert_eq!(poller.sweep().await.changes, 1, "reported missing after 3 sweeps");
    let missing = changes.try_recv().unwrap();
    assert_eq!((missing.owner, missing.snapshot), (build(999), None));
    assert!(poller.is_missing("00000000-0000-4000-8000-00000000dead"));
    // Still asked about (it may yet appear), but not reported again.
    let report = poller.sweep().await;
    assert_eq!((report.describe_calls, report.changes), (1, 0));
    assert!(changes.try_recv().is_none());
    poller.forget_job("00000000-0000-4000-8000-00000000dead");
    assert_eq!(poller.sweep().await.describe_calls, 0);
    assert_eq!(
        poller.describe_calls(),
        env.executor.calls().get(AwsOperation::DescribeJobs)
    );
}

#[tokio::test]
async fn failed_job_gets_its_log_tail_into_the_message() {
    let env = env_with(&[("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")]).await;
    let poller = JobPoller::new(
        env.executor.clone(),
        PollerConfig::with_interval(Duration::from_millis(50)),
    );
    let changes = poller.subscribe();
    let job = env
        .executor
        .find_or_submit(&request(5, Platform::LinuxArm64))
        .await
        .unwrap();
    poller.watch(&build(5), &job.job_id);
    let runner = tokio::spawn({
        let poller = poller.clone();
        async move { poller.run(std::future::pending()).await }
    });
    let mut changes = changes;
    let change = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .unwrap()
        .unwrap();
    runner.abort();
    let snap = change.snapshot.unwrap();
    assert_eq!(snap.state, JobState::Failed);
    assert_eq!(snap.job_name, job_name(&build(5), Platform::LinuxArm64));
    let stream = snap.log_stream_name.clone().unwrap();

    let lines: Vec<String> = (1..=25)
        .map(|i| format!("[mab] step {i}"))
        .chain(["build.sh: docker build failed (exit 1)".to_owned()])
        .collect();
    moto::put_log_lines(&env.logs, &stream, &lines).await;
    let tail = env.executor.log_tail(&stream, 20).await.unwrap();
    assert_eq!(tail.len(), 20, "{tail:?}");
    assert_eq!(
        tail.last().map(String::as_str),
        Some("build.sh: docker build failed (exit 1)")
    );
    assert_eq!(tail.first().map(String::as_str), Some("[mab] step 7"));
}
