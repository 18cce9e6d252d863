//! `logs`'s core against moto's CloudWatch Logs: every stream from its start, prefixed by platform;
//! `-f` picks up new lines and new streams and ends once the build has ended.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/moto.rs"]
mod moto;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use moto::Moto;
use multiarch_operator::logs::{Snapshot, StreamRef, print_logs};

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
    put(&logs, "s-amd", &["a1", "\u{1b}[31mred\u{1b}[0m"]).await;
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
        "[linux/amd64] a1\n[linux/amd64] red\n[linux/arm64] r1\n"
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
