//! `multiarch-operator logs NAME [-f]`: a build's CloudWatch Logs streams (one per platform's Batch
//! job, log group `/aws/batch/job`), each line prefixed by its platform, like `kubectl logs`.
//! Where the streams come from (the cluster's MultiArchBuild) is a closure, so the core is tested
//! against CloudWatch Logs alone.

use std::{collections::BTreeMap, future::Future, io::Write, time::Duration};

use kube::Api;

use crate::{
    api::{MultiArchBuild, MultiArchBuildStatus, Phase},
    batch::DEFAULT_LOG_GROUP,
    cli::LogsArgs,
    config,
    util::{clean_text, error_chain},
};

/// One platform's log stream, once its job has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRef {
    /// `linux/amd64`: the prefix of each line.
    pub platform: String,
    /// The stream in `/aws/batch/job`; `None` until the job has started.
    pub log_stream_name: Option<String>,
}

/// The build as seen at one moment: its streams, and whether every job has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub streams: Vec<StreamRef>,
    pub ended: bool,
}

/// Prints every stream of `source()`'s snapshot from its start, `[platform] line` per line. With
/// `follow`, polls every `interval` for new events (GetLogEvents from each stream's
/// nextForwardToken) and new streams, until a snapshot says every job has ended; the streams
/// are read once more after that, so nothing logged before the end is missed.
pub async fn print_logs<F, Fut, W>(
    logs: &aws_sdk_cloudwatchlogs::Client,
    mut source: F,
    follow: bool,
    interval: Duration,
    platform: Option<&str>,
    out: &mut W,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Snapshot, String>>,
    W: Write,
{
    let mut follower = Follower::default();
    loop {
        let snapshot = source().await?;
        follower.read_new(logs, &snapshot, platform, out).await?;
        if !follow || snapshot.ended {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

/// Where each stream was read up to: [`read_new`](Follower::read_new) prints only what came since.
#[derive(Debug, Default)]
pub struct Follower {
    tokens: BTreeMap<String, String>,
}

impl Follower {
    /// Prints the events of `snapshot`'s streams written since the last call (all of a stream the
    /// first time), `[platform] line` each.
    pub async fn read_new<W: Write>(
        &mut self,
        logs: &aws_sdk_cloudwatchlogs::Client,
        snapshot: &Snapshot,
        platform: Option<&str>,
        out: &mut W,
    ) -> Result<(), String> {
        for stream in snapshot
            .streams
            .iter()
            .filter(|s| platform.is_none_or(|p| p == s.platform))
        {
            let Some(name) = stream.log_stream_name.as_deref() else {
                continue;
            };
            loop {
                let answer = logs
                    .get_log_events()
                    .log_group_name(DEFAULT_LOG_GROUP)
                    .log_stream_name(name)
                    .start_from_head(true)
                    .set_next_token(self.tokens.get(name).cloned())
                    .send()
                    .await;
                let page = match answer {
                    Ok(page) => page,
                    // The job has a stream name before its first line is written.
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_resource_not_found_exception()) =>
                    {
                        break;
                    }
                    Err(e) => return Err(format!("GetLogEvents {DEFAULT_LOG_GROUP} {name}: {}", error_chain(&e))),
                };
                for event in page.events() {
                    // Without escape sequences or control characters but tabs: a build's log
                    // must not drive the terminal. Every line of an event carries the prefix, so
                    // none passes for another platform's.
                    let message = clean_text(event.message().unwrap_or_default());
                    for line in message.trim_end_matches('\n').split('\n') {
                        writeln!(out, "[{}] {line}", stream.platform)
                            .map_err(|e| format!("cannot write the logs: {e}"))?;
                    }
                }
                let next = page.next_forward_token().map(str::to_owned);
                let same = next.is_none() || next.as_ref() == self.tokens.get(name);
                if let Some(next) = next {
                    self.tokens.insert(name.to_owned(), next);
                }
                if same || page.events().is_empty() {
                    break;
                }
            }
        }
        out.flush().map_err(|e| format!("cannot write the logs: {e}"))
    }
}

/// The snapshot of a MultiArchBuild: its platforms' streams; ended once its phase is terminal.
pub fn snapshot_of(build: &MultiArchBuild) -> Snapshot {
    snapshot_of_status(&build.status.clone().unwrap_or_default())
}

/// The snapshot of a build's status.
pub fn snapshot_of_status(status: &MultiArchBuildStatus) -> Snapshot {
    Snapshot {
        streams: status
            .platforms
            .iter()
            .map(|p| StreamRef {
                platform: p.platform.to_string(),
                log_stream_name: p.log_stream_name.clone(),
            })
            .collect(),
        ended: status.phase.is_some_and(Phase::is_terminal),
    }
}

/// Runs the command against the cluster of the current kubeconfig context.
pub async fn run(args: &LogsArgs) -> Result<(), String> {
    let aws = config::aws_for_cli(args.region.as_deref()).await?;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the cluster: {}", error_chain(&e)))?;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&aws);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_with(client, &logs, args, &mut out).await
}

/// [`run`] with the cluster and CloudWatch Logs clients given.
pub async fn run_with<W: Write>(
    client: kube::Client,
    logs: &aws_sdk_cloudwatchlogs::Client,
    args: &LogsArgs,
    out: &mut W,
) -> Result<(), String> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<MultiArchBuild> = Api::namespaced(client, &namespace);
    let name = args.name.clone();
    let source = || {
        let api = api.clone();
        let name = name.clone();
        let namespace = namespace.clone();
        async move {
            let build = api
                .get(&name)
                .await
                .map_err(|e| format!("MultiArchBuild {namespace}/{name}: {}", error_chain(&e)))?;
            Ok(snapshot_of(&build))
        }
    };
    print_logs(
        logs,
        source,
        args.follow,
        Duration::from_secs(args.poll_interval_seconds),
        args.platform.as_deref(),
        out,
    )
    .await
}
