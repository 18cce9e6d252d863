//! `logs`'s core against moto's CloudWatch Logs: every stream from its start, prefixed by platform;
//! `-f` picks up new lines and new streams and ends once the build has ended. And `build
//! --follow-logs` against moto's Batch: a failed job's lines once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/fake_kube.rs"]
mod fake_kube;
#[path = "common/moto.rs"]
mod moto;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use fake_kube::{FakeKube, Key};
use moto::Moto;
use multiarch_operator::{
    cli::LogsArgs,
    logs::{Snapshot, StreamRef, print_logs, run_with},
};

const GROUP: &str = "/aws/batch/job";

async fn put(logs: &aws_sdk_cloudwatchlogs::Client, stream: &str, lines: &[&str]) {
    let _ = logs.create_log_group().log_group_name(GROUP).send().await;
    let _ = logs
        .create_log_stream()
        .log_group_name(GROUP)
        .log_stream_name(stream)
        .send()
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let events = lines.iter().enumerate().map(|(i, line)| {
        aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
            .timestamp(now + i as i64)
            .message(*line)
            .build()
            .unwrap()
    });
    logs.put_log_events()
        .log_group_name(GROUP)
        .log_stream_name(stream)
        .set_log_events(Some(events.collect()))
        .send()
        .await
        .unwrap();
}

fn snapshot(streams: &[(&str, Option<&str>)], ended: bool) -> Snapshot {
    Snapshot {
        streams: streams
            .iter()
            .map(|(platform, stream)| StreamRef {
                platform: platform.to_string(),
                log_stream_name: stream.map(str::to_owned),
            })
            .collect(),
        ended,
    }
}

#[tokio::test]
async fn follow_prints_new_lines_and_new_streams_and_ends_with_the_build() {
    let moto = Moto::start().await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&moto.sdk_config().await);
    let amd = "multiarch-builder/default/amd";
    let arm = "multiarch-builder/default/arm";
    put(&logs, amd, &["amd 1", "amd 2"]).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let source = || {
        let logs = logs.clone();
        let calls = Arc::clone(&calls);
        async move {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(snapshot(&[("linux/amd64", Some(amd)), ("linux/arm64", None)], false)),
                1 => {
                    put(&logs, amd, &["amd 3"]).await;
                    put(&logs, arm, &["arm 1\n"]).await;
                    Ok(snapshot(
                        &[("linux/amd64", Some(amd)), ("linux/arm64", Some(arm))],
                        false,
                    ))
                }
                _ => {
                    // Logged just before the end: still printed.
                    put(&logs, amd, &["amd 4"]).await;
                    Ok(snapshot(
                        &[("linux/amd64", Some(amd)), ("linux/arm64", Some(arm))],
                        true,
                    ))
                }
            }
        }
    };
    let mut out = Vec::new();
    print_logs(&logs, source, true, Duration::from_millis(10), None, &mut out)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "[linux/amd64] amd 1\n[linux/amd64] amd 2\n[linux/amd64] amd 3\n[linux/arm64] arm 1\n[linux/amd64] amd 4\n"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "ends once the build has ended");
}

#[tokio::test]
async fn without_follow_prints_once_and_platform_filters() {
    let moto = Moto::start().await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&moto.sdk_config().await);
    // A log prints what it likes: colours, a title change, a bell, a carriage return, a line that
    // poses as another platform's. Tabs stay.
    put(
        &logs,
        "s-amd",
        &[
            "a1",
            "\u{1b}[31mred\u{1b}[0m\u{1b}]0;pwned\u{7}\r",
            "col\tumn\nforged\n[linux/arm64] r2",
        ],
    )
    .await;
    put(&logs, "s-arm", &["r1"]).await;
    let both = [("linux/amd64", Some("s-amd")), ("linux/arm64", Some("s-arm"))];
    let mut out = Vec::new();
    print_logs(
        &logs,
        || async { Ok(snapshot(&both, false)) },
        false,
        Duration::from_secs(1),
        None,
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "[linux/amd64] a1\n[linux/amd64] red\n[linux/amd64] col\tumn\n[linux/amd64] forged\n[linux/amd64] [linux/arm64] r2\n[linux/arm64] r1\n"
    );
    let mut out = Vec::new();
    print_logs(
        &logs,
        || async { Ok(snapshot(&both, false)) },
        false,
        Duration::from_secs(1),
        Some("linux/arm64"),
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "[linux/arm64] r1\n");
    // A stream not written yet prints nothing; an error of the source is the command's error.
    let mut out = Vec::new();
    print_logs(
        &logs,
        || async { Ok(snapshot(&[("linux/amd64", Some("not-yet"))], false)) },
        false,
        Duration::from_secs(1),
        None,
        &mut out,
    )
    .await
    .unwrap();
    assert!(out.is_empty());
    let e = print_logs(
        &logs,
        || async { Err::<Snapshot, _>("MultiArchBuild default/x: not found".to_string()) },
        true,
        Duration::from_secs(1),
        None,
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(e, "MultiArchBuild default/x: not found");
}

/// The command's cluster half: the MultiArchBuild's status names the streams; `-f` ends when its
/// phase is terminal; a build that does not exist is one line naming it.
#[tokio::test]
async fn logs_reads_the_streams_from_the_builds_status_and_follows_until_it_ends() {
    let moto = Moto::start().await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&moto.sdk_config().await);
    put(&logs, "amd-1", &["amd one"]).await;
    put(&logs, "arm-1", &["arm one"]).await;
    let kube = FakeKube::new();
    kube.create(
        "multiarch.dev",
        "multiarchbuilds",
        serde_json::json!({
            "apiVersion": "multiarch.dev/v1alpha1",
            "kind": "MultiArchBuild",
            "metadata": {"name": "web", "namespace": "team"},
            "spec": {
                "source": {"git": {"url": "https://github.com/example/app.git", "revision": "main"}},
                "output": {"repository": "registry.example.com/app", "tag": "v1"},
                "platforms": [
                    {"platform": "linux/amd64", "jobQueue": "amd"},
                    {"platform": "linux/arm64", "jobQueue": "arm"}
                ]
            }
        }),
    );
    let key = Key::build("team", "web");
    kube.edit(&key, |o| {
        o["status"] = serde_json::json!({
            "phase": "Building",
            "platforms": [
                {"platform": "linux/amd64", "jobId": "j1", "logStreamName": "amd-1"},
                {"platform": "linux/arm64", "jobId": "j2"}
            ]
        });
    });
    let args = |follow: bool, platform: Option<&str>| LogsArgs {
        name: "web".into(),
        namespace: Some("team".into()),
        follow,
        platform: platform.map(str::to_owned),
        region: None,
        poll_interval_seconds: 1,
    };

    // Without -f: what is there now, the arm64 job having no stream yet.
    let mut out = Vec::new();
    run_with(kube.client(), &logs, &args(false, None), &mut out)
        .await
        .unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "[linux/amd64] amd one\n");

    // -f: the arm64 stream appears, then the build ends; the command ends with it.
    let ender = {
        let kube = kube.clone();
        let logs = logs.clone();
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            put(&logs, "amd-1", &["amd two"]).await;
            kube.edit(&key, |o| {
                o["status"]["platforms"][1]["logStreamName"] = "arm-1".into();
                o["status"]["phase"] = "Succeeded".into();
            });
        })
    };
    let mut out = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        run_with(kube.client(), &logs, &args(true, None), &mut out),
    )
    .await
    .expect("-f ends once the build has ended")
    .unwrap();
    ender.await.unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "[linux/amd64] amd one\n[linux/amd64] amd two\n[linux/arm64] arm one\n"
    );

    let mut out = Vec::new();
    run_with(kube.client(), &logs, &args(false, Some("linux/arm64")), &mut out)
        .await
        .unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "[linux/arm64] arm one\n");

    let mut missing = args(false, None);
    missing.name = "nope".into();
    let e = run_with(kube.client(), &logs, &missing, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(e.starts_with("MultiArchBuild team/nope: "), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

/// `build --wait --follow-logs` of a build whose job fails: the job's log lines are streamed once,
/// before the failure's summary, which points at them instead of printing them again.
#[tokio::test]
async fn build_follow_logs_prints_a_failed_jobs_last_lines_once() {
    // moto answers SubmitJob after 3 s with the job failed: time to write its log meanwhile.
    let moto = Moto::start_with_env(&[("MOTO_SIMPLE_BATCH_FAIL_AFTER", "3")]).await;
    let aws = moto.sdk_config().await;
    let batch = aws_sdk_batch::Client::new(&aws);
    moto.create_batch_environment(&batch).await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&aws);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: multiarch.dev/v1alpha1\nkind: MultiArchBuild\nmetadata:\n  name: fails\nspec:\n  source:\n    \
         git:\n      url: https://github.com/example/app.git\n      revision: main\n  output:\n    repository: \
         registry.example.com/team/app\n    tag: v1\n    reuseExisting: false\n  platforms:\n    - platform: \
         linux/amd64\n      jobQueue: {}\n  jobDefinition: {}\n",
        moto::QUEUE,
        moto::JOB_DEFINITION
    );
    std::fs::write(dir.path().join("build.yaml"), yaml).unwrap();
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_multiarch-operator"))
        .args(["build", "-f", "build.yaml", "--wait", "--follow-logs"])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("MAB_ALLOWED_REGISTRIES", "registry.example.com")
        .env("MAB_POLL_INTERVAL_SECONDS", "1")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The job is listed while SubmitJob waits: its log, as the builder would have written it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let job_id = loop {
        let listed = batch.list_jobs().job_queue(moto::QUEUE).send().await.unwrap();
        if let Some(job) = listed.job_summary_list().first() {
            break job.job_id().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no job submitted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stream = format!("{}/default/{job_id}", moto::JOB_DEFINITION);
    put(&logs, &stream, &["Step 5/9 : RUN make", "make: *** [all] Error 2"]).await;

    let out = tokio::time::timeout(Duration::from_secs(60), command.wait_with_output())
        .await
        .expect("the build ends once its job failed")
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty());
    let lines: Vec<&str> = stderr.lines().collect();
    let at = |pattern: &str| {
        let re = regex::Regex::new(pattern).unwrap();
        let found: Vec<usize> = (0..lines.len()).filter(|&i| re.is_match(lines[i])).collect();
        assert_eq!(found.len(), 1, "{pattern} once in:\n{stderr}");
        found[0]
    };
    let first = at(r"^\[\d\d:\d\d:\d\d\] \[linux/amd64\] Step 5/9 : RUN make$");
    let last = at(r"^\[\d\d:\d\d:\d\d\] \[linux/amd64\] make: \*\*\* \[all\] Error 2$");
    let summary = at(&format!(
        r"^\[\d\d:\d\d:\d\d\] Failed: linux/amd64 failed.*; job {job_id}; log stream {}; see the log above$",
        regex::escape(&stream)
    ));
    assert!(first < last && last < summary, "{stderr}");
    assert_eq!(stderr.matches("Error 2").count(), 1, "{stderr}");
    assert!(!stderr.contains("last log lines"), "{stderr}");
    assert_eq!(
        *lines.last().unwrap(),
        format!(
            "multiarch-operator: {}",
            lines[summary]
                .split_once("Failed: ")
                .unwrap()
                .1
                .trim_end_matches("; see the log above")
        ),
        "the error is the summary's first line, without the log"
    );
}
