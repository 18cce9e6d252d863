//! The decision itself. Reads top to bottom in the order a build lives: merge what was observed,
//! keep terminal builds terminal, then invalid spec, cancel, deadline, failures, assembly, reuse,
//! submission, progress.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};

use super::{
    Action, AssemblyOutcome, IndexRef, Input, JobObservation, JobSnapshot, JobState, MISSING_JOB_GRACE_SECONDS, Plan,
    READY, is_live, live_job, reason, state_of,
};
use crate::api::{MultiArchBuildSpec, MultiArchBuildStatus, Phase, Platform, PlatformStatus, validate_with};

/// Decides the next actions and status. Pure: the same input always gives the same plan.
pub fn plan(input: &Input<'_>) -> Plan {
    let mut status = merge_observations(input);
    status.observed_generation = input.generation;
    let mut actions = Vec::new();
    let phase = status.phase.unwrap_or(Phase::Pending);

    if phase.is_terminal() {
        // Terminal phases never change; only make sure nothing keeps running, and say which
        // generation the (unchanged) conditions were checked against.
        for condition in &mut status.conditions {
            condition.observed_generation = input.generation;
        }
        if phase != Phase::Succeeded {
            actions.extend(terminate_live(&status, "the build already ended"));
        }
        return Plan { actions, status };
    }

    let spec = input.spec;
    let nothing_submitted = status.platforms.iter().all(|p| p.job_id.is_none());
    if nothing_submitted && let Err(invalid) = validate_with(spec, input.git_sources) {
        finish(
            &mut status,
            input.now,
            Phase::Failed,
            reason::INVALID_SPEC,
            format!("invalid spec: {invalid}"),
        );
        return Plan { actions, status };
    }

    if spec.cancel {
        actions.extend(terminate_live(&status, "cancelled: spec.cancel was set"));
        let message = format!("cancelled by spec.cancel; {} live job(s) terminated", actions.len());
        finish(&mut status, input.now, Phase::Cancelled, reason::CANCELLED, message);
        return Plan { actions, status };
    }

    if let Some(start) = status.start_time.as_ref().map(|t| t.0)
        && input.now >= start + SignedDuration::from_secs(spec.timeout_seconds)
    {
        actions.extend(terminate_live(&status, "deadline exceeded: spec.timeoutSeconds passed"));
        let message = format!(
            "deadline exceeded: not finished within spec.timeoutSeconds={}s; {}",
            spec.timeout_seconds,
            progress(&status)
        );
        finish(
            &mut status,
            input.now,
            Phase::Failed,
            reason::DEADLINE_EXCEEDED,
            message,
        );
        return Plan { actions, status };
    }

    if let Some((platform, message)) = lost_job(input, &status) {
        actions.extend(terminate_live(&status, &format!("fail fast: {platform} was lost")));
        finish(&mut status, input.now, Phase::Failed, reason::JOB_LOST, message);
        return Plan { actions, status };
    }

    if let Some(failed) = status.platforms.iter().find(|p| state_of(p) == Some(JobState::Failed)) {
        let platform = failed.platform;
        match (&failed.log_stream_name, input.observed.failure_logs.get(&platform)) {
            (Some(stream), None) => {
                actions.push(Action::FetchLogs {
                    platform,
                    log_stream_name: stream.clone(),
                });
            }
            (_, logs) => {
                let message = failure_message(failed, logs.map(Vec::as_slice).unwrap_or_default());
                actions.extend(terminate_live(&status, &format!("fail fast: {platform} failed")));
                finish(&mut status, input.now, Phase::Failed, reason::BUILD_FAILED, message);
            }
        }
        return Plan { actions, status };
    }

    let all_pushed = status
        .platforms
        .iter()
        .all(|p| state_of(p) == Some(JobState::Succeeded));
    if all_pushed && !status.platforms.is_empty() {
        match &input.observed.assembly {
            Some(AssemblyOutcome::Pushed(index)) => {
                record_index(&mut status, spec, index);
                let message = format!(
                    "pushed {} ({} platforms)",
                    status.image.clone().unwrap_or_default(),
                    index.platforms.len()
                );
                finish(&mut status, input.now, Phase::Succeeded, reason::SUCCEEDED, message);
            }
            Some(AssemblyOutcome::Rejected { reason, message }) => {
                finish(
                    &mut status,
                    input.now,
                    Phase::Failed,
                    reason,
                    format!("cannot publish the index: {message}"),
                );
            }
            None => {
                actions.push(Action::Assemble);
                set_phase(
                    &mut status,
                    Phase::Assembling,
                    reason::ASSEMBLING,
                    format!("every platform pushed; assembling {}", spec.index_image()),
                    input.now,
                );
            }
        }
        return Plan { actions, status };
    }

    if nothing_submitted && spec.output.reuse_existing {
        match &input.observed.existing_index {
            None => {
                actions.push(Action::CheckExistingIndex);
                set_phase(
                    &mut status,
                    Phase::Pending,
                    reason::PENDING,
                    format!("checking whether {} already exists", spec.index_image()),
                    input.now,
                );
                return Plan { actions, status };
            }
            Some(Some(index)) => {
                record_index(&mut status, spec, index);
                let message = format!(
                    "{} already is an index covering every platform; nothing built",
                    spec.index_image()
                );
                finish(&mut status, input.now, Phase::Succeeded, reason::REUSED, message);
                return Plan { actions, status };
            }
            Some(None) => {}
        }
    }

    for entry in &status.platforms {
        if entry.job_id.is_none() {
            actions.push(Action::Submit(entry.platform));
        }
    }
    if status.start_time.is_none() && !actions.is_empty() {
        status.start_time = Some(Time(input.now));
    }
    let message = progress(&status);
    set_phase(&mut status, Phase::Building, reason::BUILDING, message, input.now);
    Plan { actions, status }
}

/// The previous status with one entry per requested platform (spec order) and this step's job
/// observations applied.
fn merge_observations(input: &Input<'_>) -> MultiArchBuildStatus {
    let mut status = input.status.clone();
    let entries = input
        .spec
        .platforms
        .iter()
        .map(|target| {
            let mut entry = status
                .platforms
                .iter()
                .find(|p| p.platform == target.platform)
                .cloned()
                .unwrap_or_else(|| PlatformStatus::from(target.platform));
            match input.observed.jobs.get(&target.platform) {
                Some(JobObservation::Submitted { job_id, job_name }) if entry.job_id.is_none() => {
                    entry.job_id = Some(job_id.clone());
                    entry.job_name = Some(job_name.clone());
                    entry.state = Some(JobState::Submitted.as_str().into());
                    entry.image = Some(input.spec.platform_image(target.platform));
                }
                // A terminal Batch state is final: later answers cannot change it.
                Some(JobObservation::Seen(snapshot))
                    if entry.job_id.as_deref().is_none_or(|id| id == snapshot.job_id)
                        && !state_of(&entry).is_some_and(JobState::is_terminal) =>
                {
                    apply_snapshot(&mut entry, snapshot);
                    entry
                        .image
                        .get_or_insert_with(|| input.spec.platform_image(target.platform));
                }
                _ => {}
            }
            entry
        })
        .collect();
    status.platforms = entries;
    status
}

fn apply_snapshot(entry: &mut PlatformStatus, job: &JobSnapshot) {
    entry.job_id = Some(job.job_id.clone());
    entry.job_name = Some(job.job_name.clone());
    entry.state = Some(job.state.as_str().into());
    entry.attempts = Some(job.attempts);
    entry.status_reason.clone_from(&job.status_reason);
    entry.exit_code = job.exit_code;
    if job.log_stream_name.is_some() {
        entry.log_stream_name.clone_from(&job.log_stream_name);
    }
    entry.started_at = job.started_at.map(Time);
    entry.stopped_at = job.stopped_at.map(Time);
}

fn terminate_live(status: &MultiArchBuildStatus, why: &str) -> Vec<Action> {
    status
        .platforms
        .iter()
        .filter_map(|p| {
            Some(Action::Terminate {
                platform: p.platform,
                job_id: live_job(p)?.to_owned(),
                reason: format!("multiarch-operator: {why}"),
            })
        })
        .collect()
}

/// A live job that Batch has not returned for longer than the grace period.
fn lost_job(input: &Input<'_>, status: &MultiArchBuildStatus) -> Option<(Platform, String)> {
    let start = status.start_time.as_ref()?.0;
    let grace_over = input.now >= start + SignedDuration::from_secs(MISSING_JOB_GRACE_SECONDS);
    status.platforms.iter().find_map(|entry| {
        let id = live_job(entry)?;
        let missing = matches!(input.observed.jobs.get(&entry.platform), Some(JobObservation::Missing));
        (missing && grace_over).then(|| {
            (
                entry.platform,
                format!(
                    "{}: Batch no longer knows job {id} (deleted, or its record expired); the build cannot be followed",
                    entry.platform
                ),
            )
        })
    })
}

fn failure_message(failed: &PlatformStatus, log_lines: &[String]) -> String {
    let mut message = format!("{} failed", failed.platform);
    if let Some(reason) = failed.status_reason.as_deref().filter(|r| !r.is_empty()) {
        message.push_str(&format!(": {reason}"));
    }
    if let Some(code) = failed.exit_code {
        message.push_str(&format!("; exit code {code}"));
    }
    if let Some(id) = &failed.job_id {
        message.push_str(&format!("; job {id}"));
    }
    if let Some(stream) = &failed.log_stream_name {
        message.push_str(&format!("; log stream {stream}"));
    }
    if !log_lines.is_empty() {
        message.push_str("; last log lines:\n");
        message.push_str(&log_lines.join("\n"));
    }
    message
}

fn record_index(status: &mut MultiArchBuildStatus, spec: &MultiArchBuildSpec, index: &IndexRef) {
    for entry in &mut status.platforms {
        if let Some((_, digest)) = index.platforms.iter().find(|(p, _)| *p == entry.platform) {
            entry.digest = Some(digest.clone());
            entry.image.get_or_insert_with(|| spec.platform_image(entry.platform));
        }
    }
    status.digest = Some(index.digest.clone());
    status.short_digest = Some(short_digest(&index.digest));
    status.image = Some(format!("{}@{}", spec.output.repository, index.digest));
}

/// `sha256:` and the first 12 hex digits.
fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) => format!("{algorithm}:{}", hex.chars().take(12).collect::<String>()),
        None => digest.chars().take(19).collect(),
    }
}

fn progress(status: &MultiArchBuildStatus) -> String {
    let states: Vec<String> = status
        .platforms
        .iter()
        .map(|p| {
            let state = p.state.as_deref().unwrap_or("not submitted");
            match p.attempts {
                Some(n) if n > 1 && is_live(p) => format!("{} {state} (attempt {n})", p.platform),
                _ => format!("{} {state}", p.platform),
            }
        })
        .collect();
    format!("{} platforms pushed; {}", pushed_count(status), states.join(", "))
}

fn pushed_count(status: &MultiArchBuildStatus) -> String {
    let pushed = status
        .platforms
        .iter()
        .filter(|p| state_of(p) == Some(JobState::Succeeded))
        .count();
    format!("{pushed}/{}", status.platforms.len())
}

fn set_phase(status: &mut MultiArchBuildStatus, phase: Phase, why: &str, message: String, now: Timestamp) {
    status.phase = Some(phase);
    status.platforms_pushed = Some(pushed_count(status));
    let ready = phase == Phase::Succeeded;
    set_ready(status, ready, why, &message, now);
    status.message = Some(message);
}

fn finish(status: &mut MultiArchBuildStatus, now: Timestamp, phase: Phase, why: &str, message: String) {
    set_phase(status, phase, why, message, now);
    status.completion_time = Some(Time(now));
}

/// Sets the `Ready` condition, keeping `lastTransitionTime` when its status did not change.
fn set_ready(status: &mut MultiArchBuildStatus, ready: bool, why: &str, message: &str, now: Timestamp) {
    let value = if ready { "True" } else { "False" };
    let observed_generation = status.observed_generation;
    let previous = status.conditions.iter().find(|c| c.type_ == READY);
    let last_transition_time = match previous {
        Some(c) if c.status == value => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: READY.into(),
        status: value.into(),
        reason: why.into(),
        message: message.into(),
        observed_generation,
        last_transition_time,
    };
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.push(condition);
}
