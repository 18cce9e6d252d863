//! `multiarch-operator build -f FILE`: the controller's engine over one object read from a file,
//! without a cluster. Progress goes to stderr, the pinned image to stdout.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Read, Write},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::{
    api::{self, GitSources, MultiArchBuild, MultiArchBuildStatus, Phase, PlatformStatus},
    batch::{BuildRef, submit_request},
    cli::BuildArgs,
    config,
    engine::{Build, Engine, EngineError, job_observations, live_job_ids},
    plan::{JobObservation, LAST_LOG_LINES},
    util::{clean_text, one_line},
};

/// How many steps in a row may fail with a transient error before the command gives up.
const MAX_CONSECUTIVE_FAILURES: u32 = 6;

/// What the command ends with.
pub enum Outcome {
    /// The build succeeded; the pinned image.
    Succeeded(String),
    /// Jobs were submitted and `--wait` was not given.
    Submitted,
    /// `--dry-run`: the requests that would be sent, as YAML.
    DryRun(String),
    /// The build failed or was cancelled; the message.
    Failed(String),
}

/// Runs the command. Errors are one-line explanations for the user.
pub async fn run(args: &BuildArgs) -> Result<Outcome, String> {
    let mut object = read_build(args)?;
    let git_sources = if args.allow_local_git {
        GitSources::AllowLocal
    } else {
        GitSources::Remote
    };
    api::validate_with(&object.spec, git_sources).map_err(|e| format!("{}: invalid spec: {e}", args.file.display()))?;
    let reference = build_ref(&object)?;
    if let Some(arg) = object.spec.build_args.iter().flatten().find(|a| a.value_from.is_some()) {
        return Err(format!(
            "{}: spec.buildArgs {} takes its value from MultiArchBuild {} (valueFrom), which only the controller \
             can read: `build -f` has no cluster. Put that build's pinned image (kubectl get mab {} -o \
             jsonpath='{{.status.image}}') in value instead",
            args.file.display(),
            arg.name,
            arg.dependency().unwrap_or_default(),
            arg.dependency().unwrap_or_default()
        ));
    }

    if args.dry_run {
        let mut text = String::new();
        for target in &object.spec.platforms {
            let request = submit_request(&reference, &object.spec, target.platform, &args.default_job_definition)
                .map_err(|e| e.to_string())?;
            let yaml = serde_yaml::to_string(&request).map_err(|e| format!("cannot print the request: {e}"))?;
            text.push_str(&format!(
                "# SubmitJob for {} (dry run: nothing is sent)\n---\n{yaml}",
                target.platform
            ));
        }
        return Ok(Outcome::DryRun(text));
    }

    let aws = config::aws_for_cli(args.region.as_deref()).await?;
    let allowed = config::allowed_registries(&aws, &args.allow)
        .await
        .map_err(|e| format!("{e}; nothing was submitted"))?;
    if let Some(refusal) = allowed.spec_refusal(&object.spec) {
        return Err(format!("{}: {refusal}", args.file.display()));
    }
    let engine = config::engine(
        &aws,
        &args.registry,
        config::signer(&args.signing, aws_sdk_kms::config::Builder::from(&aws))?,
        &args.default_job_definition,
        &object.spec.output.repository,
    );
    let logs = aws_sdk_cloudwatchlogs::Client::new(&aws);
    let mut follower = crate::logs::Follower::default();
    let mut progress = Progress::new(args.follow_logs);
    let mut status = MultiArchBuildStatus::default();
    let mut failures = 0;
    let mut interrupted = false;
    loop {
        let step = step_once(&engine, &reference, &object, git_sources, &status, &mut progress).await;
        match step {
            Ok(next) => {
                status = next;
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                progress.warn(&format!("{e} (attempt {failures} of {MAX_CONSECUTIVE_FAILURES})"));
                if failures >= MAX_CONSECUTIVE_FAILURES {
                    return Err(giving_up(&e, &status));
                }
            }
        }
        if args.follow_logs {
            let mut text = Vec::new();
            let read = follower
                .read_new(&logs, &crate::logs::snapshot_of_status(&status), None, &mut text)
                .await;
            // The log first, then the end of the build held back for it: a failure's summary says
            // "see the log above" and the log is above.
            let mut lines: Vec<String> = String::from_utf8_lossy(&text).lines().map(str::to_owned).collect();
            lines.append(&mut progress.held);
            progress.print(&lines, &status);
            if let Err(e) = read {
                progress.warn(&e);
            }
        } else if args.wait && !status.phase.is_some_and(Phase::is_terminal) {
            latest_lines(&engine, &status, &mut progress).await;
        }
        match status.phase {
            Some(Phase::Succeeded) => return Ok(Outcome::Succeeded(status.image.unwrap_or_default())),
            Some(Phase::Cancelled) if interrupted => return Ok(Outcome::Failed(interrupted_message(&status))),
            // The whole message (the last log lines included) was shown as the phase's line: the
            // command's error is its first line, without them.
            Some(Phase::Failed | Phase::Cancelled) => {
                let message = status.message.unwrap_or_default();
                let head = message.split(LAST_LOG_LINES).next().unwrap_or_default();
                return Ok(Outcome::Failed(head.lines().next().unwrap_or_default().to_string()));
            }
            // Every platform has its job (an empty status means the first step failed: nothing was).
            _ if !args.wait
                && !interrupted
                && !status.platforms.is_empty()
                && status.platforms.iter().all(|p| p.job_id.is_some()) =>
            {
                progress.note("submitted; run the same command with --wait to follow the build to its end");
                return Ok(Outcome::Submitted);
            }
            _ => {}
        }
        let pause = backoff(args.poll_interval_seconds, failures);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                progress.note("interrupted: cancelling the build (terminating its jobs)");
                object.spec.cancel = true;
                interrupted = true;
            }
        }
    }
}

/// The last error of a run that gave up, and what it leaves behind.
fn giving_up(error: &EngineError, status: &MultiArchBuildStatus) -> String {
    let what = match error {
        // "will retry" is no longer true: this was the last try.
        EngineError::Batch(crate::batch::BatchError::Transient { operation, message }) => {
            format!("{operation} failed: {message}")
        }
        other => other.to_string(),
    };
    let jobs: Vec<&str> = status.platforms.iter().filter_map(|p| p.job_id.as_deref()).collect();
    if jobs.is_empty() {
        format!("{what}; nothing was submitted")
    } else {
        format!(
            "{what}; gave up after {MAX_CONSECUTIVE_FAILURES} tries with job(s) {} submitted: run the same command \
             again to adopt them",
            jobs.join(", ")
        )
    }
}

/// What an interrupted `--wait` ends with. The build's identity (hence its job names) comes from
/// the file, so running the same file again finds the terminated jobs and reports them: a fresh
/// build needs another metadata.name.
fn interrupted_message(status: &MultiArchBuildStatus) -> String {
    let terminated = status.platforms.iter().filter(|p| p.job_id.is_some()).count();
    format!(
        "interrupted: {terminated} job(s) terminated; running the same file again adopts the terminated jobs and \
         fails again: change metadata.name to build anew"
    )
}

async fn step_once(
    engine: &Engine,
    reference: &BuildRef,
    object: &MultiArchBuild,
    git_sources: GitSources,
    status: &MultiArchBuildStatus,
    progress: &mut Progress,
) -> Result<MultiArchBuildStatus, EngineError> {
    let jobs = observe_jobs(engine, status).await?;
    let build = Build {
        reference,
        spec: &object.spec,
        git_sources,
        generation: object.metadata.generation,
        // The registry was checked before the first step; there is no cluster policy here.
        refusal: None,
        // `run` refuses valueFrom: there is no cluster to read other builds from.
        dependencies: None,
    };
    engine
        .step(&build, status.clone(), jobs, Timestamp::now, |next| {
            progress.show(&next);
            std::future::ready(Ok(()))
        })
        .await
        .map(|stepped| stepped.status)
}

/// Each running platform's latest log line, for the live view (a decoration: a failed read only
/// leaves the line out).
async fn latest_lines(engine: &Engine, status: &MultiArchBuildStatus, progress: &mut Progress) {
    let mut changed = Vec::new();
    for p in &status.platforms {
        let Some(stream) = p.log_stream_name.as_deref() else {
            continue;
        };
        match engine.batch.log_tail(stream, 1).await {
            Ok(lines) => {
                if let Some(line) = lines.last()
                    && progress.latest.insert(p.platform, line.clone()).as_ref() != Some(line)
                {
                    changed.push(p.platform);
                }
            }
            Err(e) => tracing::debug!(platform = %p.platform, error = %e, "cannot read the latest log line"),
        }
    }
    progress.show_latest(&changed, status);
}

/// Describes the live jobs recorded in the status.
async fn observe_jobs(
    engine: &Engine,
    status: &MultiArchBuildStatus,
) -> Result<BTreeMap<api::Platform, JobObservation>, EngineError> {
    let ids = live_job_ids(status);
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut snapshots = engine.batch.describe(&ids).await?;
    Ok(job_observations(status, |id| {
        Some(
            snapshots
                .remove(id)
                .map_or(JobObservation::Missing, JobObservation::Seen),
        )
    }))
}

/// Poll interval, or exponential backoff with jitter after failures.
fn backoff(poll_seconds: u64, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::from_secs(poll_seconds);
    }
    let base = Duration::from_secs(1 << failures.min(5));
    base + Duration::from_millis(fastrand::u64(0..1000))
}

fn read_build(args: &BuildArgs) -> Result<MultiArchBuild, String> {
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(&args.file).map_err(|e| format!("cannot read {}: {e}", args.file.display()))?
    };
    crate::strict::parse_build(&text).map_err(|e| format!("{}: {e}", args.file.display()))
}

/// The build's identity. Without a cluster there is no uid, so one is derived from the object's
/// name and spec: running the same file again adopts the same jobs instead of building twice.
fn build_ref(object: &MultiArchBuild) -> Result<BuildRef, String> {
    let name = object.metadata.name.clone().ok_or("metadata.name is required")?;
    let namespace = object.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let uid = match &object.metadata.uid {
        Some(uid) => uid.clone(),
        None => {
            let spec = serde_json::to_vec(&object.spec).map_err(|e| format!("cannot hash the spec: {e}"))?;
            let digest = Sha256::new()
                .chain_update(namespace.as_bytes())
                .chain_update(b"/")
                .chain_update(name.as_bytes())
                .chain_update(&spec)
                .finalize();
            digest.iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    Ok(BuildRef { namespace, name, uid })
}

/// Prints state changes with timestamps, and each platform's live line: on a terminal, redrawn
/// below them; elsewhere, printed again when its latest log line changes.
struct Progress {
    last: BTreeMap<String, String>,
    /// Each platform's latest log line (as read: [`live_line`] cleans it).
    latest: BTreeMap<api::Platform, String>,
    tty: bool,
    live_lines: usize,
    /// `--follow-logs`: the log is printed as it comes, so a failure's summary does not repeat its
    /// last lines, and the lines of a build's end wait in `held` until the log before them is out.
    follow_logs: bool,
    held: Vec<String>,
}

/// The width of live lines when stderr is no terminal (a CI log, a file).
const LOG_WIDTH: usize = 120;

impl Progress {
    fn new(follow_logs: bool) -> Self {
        Progress {
            last: BTreeMap::new(),
            latest: BTreeMap::new(),
            tty: std::io::stderr().is_terminal(),
            live_lines: 0,
            follow_logs,
            held: Vec::new(),
        }
    }

    fn show(&mut self, status: &MultiArchBuildStatus) {
        let mut lines = Vec::new();
        for p in &status.platforms {
            let state = p.state.clone().unwrap_or_else(|| "waiting".into());
            let job = p.job_id.as_deref().map(|id| format!(" job {id}")).unwrap_or_default();
            // Where the time went: each part once known, so the line changes only when it grows.
            let times: Vec<String> = [("queued", p.queued_seconds), ("ran", p.run_seconds)]
                .into_iter()
                .filter_map(|(what, seconds)| Some(format!("{what} {}s", seconds?)))
                .collect();
            let times = if times.is_empty() {
                String::new()
            } else {
                format!(" ({})", times.join(", "))
            };
            let line = format!("{} {state}{job}{times}", p.platform);
            if self.last.insert(p.platform.to_string(), line.clone()).as_ref() != Some(&line) {
                lines.push(line);
            }
        }
        // Conditions other than those that mirror the phase (Ready, Succeeded, Reconciling,
        // Stalled: their message is the phase line's) say things the phase line does not (why an
        // index was not reused), once each.
        let mirrors_phase = |type_: &str| {
            [
                crate::plan::READY,
                crate::plan::SUCCEEDED,
                crate::plan::RECONCILING,
                crate::plan::STALLED,
            ]
            .contains(&type_)
        };
        for condition in status.conditions.iter().filter(|c| !mirrors_phase(&c.type_)) {
            let line = format!("{}: {}", condition.type_, condition.message);
            if self.last.insert(condition.type_.clone(), line.clone()).as_ref() != Some(&line) {
                lines.push(line);
            }
        }
        let summary = phase_line(status, self.follow_logs);
        if self.last.insert("phase".into(), summary.clone()).as_ref() != Some(&summary) {
            lines.push(summary);
        }
        if self.follow_logs && status.phase.is_some_and(Phase::is_terminal) {
            // `run` prints them after the log it reads next.
            self.held.append(&mut lines);
        }
        self.print(&lines, status);
    }

    /// Shows the latest log lines after they were read; `changed`: the platforms whose line is new.
    fn show_latest(&mut self, changed: &[api::Platform], status: &MultiArchBuildStatus) {
        let lines: Vec<String> = if self.tty {
            // The live lines below show them.
            Vec::new()
        } else {
            let now = Timestamp::now();
            status
                .platforms
                .iter()
                .filter(|p| changed.contains(&p.platform))
                .map(|p| live_line(p, self.latest.get(&p.platform).map(String::as_str), now, LOG_WIDTH))
                .collect()
        };
        self.print(&lines, status);
    }

    /// Prints `lines` with the time, cleaned of control characters (they quote build logs and
    /// registry answers), then on a terminal the live lines of a build still running.
    fn print(&mut self, lines: &[String], status: &MultiArchBuildStatus) {
        let mut err = std::io::stderr().lock();
        if self.tty && self.live_lines > 0 {
            // Move up over the previous live lines and clear them.
            let _ = write!(err, "\x1b[{}A\x1b[J", self.live_lines);
        }
        let now = Timestamp::now();
        let clock = now.strftime("%H:%M:%S");
        for line in lines {
            let _ = writeln!(err, "[{clock}] {}", clean_text(line));
        }
        self.live_lines = 0;
        if self.tty && !status.phase.is_some_and(Phase::is_terminal) {
            // One column to spare: a line as wide as the terminal wraps on some, and the next
            // redraw would then move up one line too few.
            let width = terminal_size::terminal_size_of(std::io::stderr())
                .map_or(LOG_WIDTH, |(width, _)| usize::from(width.0).saturating_sub(1));
            for p in &status.platforms {
                let latest = self.latest.get(&p.platform).map(String::as_str);
                let _ = writeln!(err, "{}", live_line(p, latest, now, width));
                self.live_lines += 1;
            }
        }
    }

    fn warn(&mut self, message: &str) {
        self.print(&[format!("warning: {message}")], &MultiArchBuildStatus::default());
    }

    fn note(&mut self, message: &str) {
        self.print(&[message.to_string()], &MultiArchBuildStatus::default());
    }
}

/// The phase line: `Failed: <message>`. With `follow_logs` the failed job's last log lines were
/// printed as they came: the line says where they are instead of repeating them.
fn phase_line(status: &MultiArchBuildStatus, follow_logs: bool) -> String {
    let phase = status.phase.unwrap_or(Phase::Pending);
    let message = status.message.as_deref().unwrap_or_default();
    match message.split_once(LAST_LOG_LINES) {
        Some((head, _)) if follow_logs => format!("{phase:?}: {head}; see the log above"),
        _ => format!("{phase:?}: {message}"),
    }
}

/// A platform's live line, `linux/amd64 RUNNING 3m12s  | Step 5/9 : RUN make`, at most `width`
/// characters: its state, the time since its job started (submitted, until it starts) up to when
/// it stopped, and its latest log line on one line, without escape sequences or control
/// characters (a build's log must not drive the user's terminal).
fn live_line(platform: &PlatformStatus, latest: Option<&str>, now: Timestamp, width: usize) -> String {
    let state = platform.state.as_deref().unwrap_or("waiting");
    let mut line = format!("{} {state}", platform.platform);
    let since = platform.started_at.as_ref().or(platform.submitted_at.as_ref());
    if let Some(since) = since.filter(|_| platform.job_id.is_some()) {
        let until = platform.stopped_at.as_ref().map_or(now, |t| t.0);
        let seconds = until.duration_since(since.0).as_secs().max(0);
        line.push_str(&format!(" {}m{:02}s", seconds / 60, seconds % 60));
    }
    let latest = one_line(&clean_text(latest.unwrap_or_default()));
    if !latest.is_empty() {
        line.push_str("  | ");
        line.push_str(&latest);
    }
    if line.chars().count() <= width {
        return line;
    }
    let kept: String = line.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::Platform;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn running(started: Option<i64>, stopped: Option<i64>) -> PlatformStatus {
        let mut p = PlatformStatus::from(Platform::LinuxAmd64);
        p.job_id = Some("j1".into());
        p.state = Some("RUNNING".into());
        p.submitted_at = Some(Time(at(-60)));
        p.started_at = started.map(|s| Time(at(s)));
        p.stopped_at = stopped.map(|s| Time(at(s)));
        p
    }

    #[test]
    fn a_live_line_shows_the_state_the_time_since_the_job_started_and_the_latest_log_line() {
        let p = running(Some(0), None);
        assert_eq!(
            live_line(&p, Some("Step 5/9 : RUN make\n"), at(192), 120),
            "linux/amd64 RUNNING 3m12s  | Step 5/9 : RUN make"
        );
        assert_eq!(live_line(&p, None, at(3725), 120), "linux/amd64 RUNNING 62m05s");
        // Before it starts, since it was submitted; once stopped, its run time.
        assert_eq!(
            live_line(&running(None, None), None, at(5), 120),
            "linux/amd64 RUNNING 1m05s"
        );
        assert_eq!(
            live_line(&running(Some(0), Some(90)), None, at(500), 120),
            "linux/amd64 RUNNING 1m30s"
        );
        // No job yet: no time.
        let waiting = PlatformStatus::from(Platform::LinuxArm64);
        assert_eq!(live_line(&waiting, Some(""), at(5), 120), "linux/arm64 waiting");
    }

    #[test]
    fn a_live_line_fits_the_width() {
        let p = running(Some(0), None);
        let long = format!("Step 5/9 : RUN {}", "é".repeat(300));
        for width in [50, 80, 120] {
            let line = live_line(&p, Some(&long), at(1), width);
            assert_eq!(line.chars().count(), width, "{line}");
            assert!(
                line.starts_with("linux/amd64 RUNNING 0m01s  | Step 5/9 : RUN é"),
                "{line}"
            );
            assert!(line.ends_with("é…"), "{line}");
        }
        let short = live_line(&p, Some("ok"), at(1), 40);
        assert_eq!(short, "linux/amd64 RUNNING 0m01s  | ok");
    }

    #[test]
    fn a_live_line_carries_no_escape_sequence_or_control_character_from_the_log() {
        let hostile = "\u{1b}[2J\u{1b}[H\u{1b}]0;pwned\u{7}Step\t1/9\r\n\u{1b}[31mred\u{1b}[0m\u{8}\u{9b}31m";
        let line = live_line(&running(Some(0), None), Some(hostile), at(1), 120);
        assert_eq!(line, "linux/amd64 RUNNING 0m01s  | Step 1/9 red31m");
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }

    #[test]
    fn with_the_log_followed_a_failure_points_at_it_instead_of_repeating_its_last_lines() {
        let status = MultiArchBuildStatus {
            phase: Some(Phase::Failed),
            message: Some(format!(
                "linux/amd64 failed; exit code 1; job j1{LAST_LOG_LINES}Step 5/9 : RUN make\nmake: *** [all] Error 2"
            )),
            ..Default::default()
        };
        assert_eq!(
            phase_line(&status, false),
            "Failed: linux/amd64 failed; exit code 1; job j1; last log lines:\nStep 5/9 : RUN make\nmake: *** [all] Error 2"
        );
        assert_eq!(
            phase_line(&status, true),
            "Failed: linux/amd64 failed; exit code 1; job j1; see the log above"
        );
        let cancelled = MultiArchBuildStatus {
            phase: Some(Phase::Cancelled),
            message: Some("cancelled: spec.cancel was set".into()),
            ..Default::default()
        };
        assert_eq!(
            phase_line(&cancelled, true),
            "Cancelled: cancelled: spec.cancel was set"
        );
    }
}
