//! The decision itself. Reads top to bottom in the order a build lives: merge what was observed,
//! keep terminal builds terminal, then invalid spec, cancel, deadline, failures, assembly, reuse,
//! submission, progress.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};

use super::{
    ATTEST_RETRY_SECONDS, Action, AssemblyOutcome, AttestationOutcome, DEPENDENCIES_READY, Dependencies, Dependency,
    ExistingIndex, INDEX_REUSED, IndexRef, Input, JobObservation, JobResult, JobSnapshot, JobState, LAST_LOG_LINES,
    MISSING_JOB_GRACE_SECONDS, Plan, READY, RECONCILING, RESULT_LOG_GRACE_SECONDS, RESULT_LOG_RETRY_SECONDS, STALLED,
    SUBMIT_SETTLE_SECONDS, SUCCEEDED, TagsOutcome, is_live, live_job, reason, state_of,
};
use crate::api::{
    InputsStatus, MultiArchBuildSpec, MultiArchBuildStatus, Phase, Platform, PlatformStatus, ResolvedBuildArg,
    SourceStatus, validate_with,
};
use crate::provenance::pinned_commit;

/// Decides the next actions and status. Pure: the same input always gives the same plan.
pub fn plan(input: &Input<'_>) -> Plan {
    let mut status = merge_observations(input);
    status.observed_generation = input.generation;
    let phase = status.phase.unwrap_or(Phase::Pending);

    if phase.is_terminal() {
        // Terminal phases never change; only make sure nothing keeps running, and say which
        // generation the (unchanged) conditions were checked against.
        for condition in &mut status.conditions {
            condition.observed_generation = input.generation;
        }
        // A build that ended before the controller wrote `Succeeded`, `Reconciling` and `Stalled`
        // gets them from its `Ready` condition.
        if !status.conditions.iter().any(|c| c.type_ == SUCCEEDED) {
            let (why, message) = status
                .conditions
                .iter()
                .find(|c| c.type_ == READY)
                .map(|c| (c.reason.clone(), c.message.clone()))
                .unwrap_or_default();
            set_outcome(&mut status, phase, &why, &message, input.now);
        }
        let mut actions = Vec::new();
        if phase != Phase::Succeeded {
            actions.extend(terminate_live(&status, "the build already ended"));
        }
        return Plan {
            actions,
            status,
            wake_at: None,
        };
    }
    let mut decision = Decision {
        input,
        status,
        actions: Vec::new(),
        wake_at: None,
    };
    decision.decide();
    let ended = decision.status.phase.is_some_and(Phase::is_terminal);
    Plan {
        actions: decision.actions,
        status: decision.status,
        wake_at: decision.wake_at.filter(|_| !ended),
    }
}

/// One decision in the making: the status so far, the actions, and the earliest wake-up.
struct Decision<'a, 'b> {
    input: &'a Input<'b>,
    status: MultiArchBuildStatus,
    actions: Vec<Action>,
    wake_at: Option<Timestamp>,
}

impl Decision<'_, '_> {
    fn now(&self) -> Timestamp {
        self.input.now
    }

    /// Look again at `at` at the latest.
    fn wake(&mut self, at: Timestamp) {
        earliest(&mut self.wake_at, at);
    }

    /// Ends the build (terminating what still runs) with `why` and `message`.
    fn end(&mut self, phase: Phase, why: &str, message: String, terminate_because: &str) {
        self.actions.extend(terminate_live(&self.status, terminate_because));
        finish(&mut self.status, self.input.now, phase, why, message);
    }

    fn decide(&mut self) {
        let spec = self.input.spec;
        let nothing_submitted = self
            .status
            .platforms
            .iter()
            .all(|p| p.job_id.is_none() && p.submitted_at.is_none());
        if nothing_submitted && let Err(invalid) = validate_with(spec, self.input.git_sources) {
            let message = format!("invalid spec: {invalid}");
            return self.end(Phase::Failed, reason::INVALID_SPEC, message, "invalid spec");
        }
        if nothing_submitted && let Some(refusal) = self.input.refusal {
            let message = refusal.message.clone();
            return self.end(Phase::Failed, refusal.reason, message, "refused");
        }

        // The index is pushed and verified (or reused): only its provenance and its other tags are
        // left to push. Too late to cancel, and nothing runs that a deadline would stop.
        if self.status.digest.is_some() {
            return self.attest();
        }

        if spec.cancel {
            let live = terminate_live(&self.status, "cancelled: spec.cancel was set").len();
            let message = format!("cancelled by spec.cancel; {live} live job(s) terminated");
            return self.end(
                Phase::Cancelled,
                reason::CANCELLED,
                message,
                "cancelled: spec.cancel was set",
            );
        }

        if self.status.inputs.is_none() && !super::dependency_names(spec).is_empty() && !self.resolve_dependencies() {
            return;
        }

        if let Some(start) = self.status.start_time.as_ref().map(|t| t.0) {
            let deadline = start + SignedDuration::from_secs(spec.timeout_seconds);
            if self.now() >= deadline {
                let message = format!(
                    "deadline exceeded: not finished within spec.timeoutSeconds={}s; {}",
                    spec.timeout_seconds,
                    progress(&self.status)
                );
                let why = "deadline exceeded: spec.timeoutSeconds passed";
                return self.end(Phase::Failed, reason::DEADLINE_EXCEEDED, message, why);
            }
            self.wake(deadline);
        }

        if self.lost_job() {
            return;
        }

        if let Some(failed) = self
            .status
            .platforms
            .iter()
            .find(|p| state_of(p) == Some(JobState::Failed))
        {
            let platform = failed.platform;
            match (&failed.log_stream_name, self.input.observed.failure_logs.get(&platform)) {
                (Some(stream), None) => {
                    self.actions.push(Action::FetchLogs {
                        platform,
                        log_stream_name: stream.clone(),
                    });
                }
                (_, logs) => {
                    let message = failure_message(failed, logs.map(Vec::as_slice).unwrap_or_default());
                    let why = format!("fail fast: {platform} failed");
                    self.end(Phase::Failed, reason::BUILD_FAILED, message, &why);
                }
            }
            return;
        }

        if !self.learn_results() {
            return;
        }
        if let Some(message) = source_mismatch(spec, &self.status) {
            return self.end(
                Phase::Failed,
                reason::SOURCE_MISMATCH,
                message,
                "the platforms built different sources",
            );
        }

        let pushed: Option<Vec<(Platform, String)>> = self
            .status
            .platforms
            .iter()
            .map(|p| {
                Some((
                    p.platform,
                    p.digest.clone().filter(|_| state_of(p) == Some(JobState::Succeeded))?,
                ))
            })
            .collect();
        if let Some(children) = pushed.filter(|c| !c.is_empty()) {
            return self.assemble(children);
        }

        if nothing_submitted && spec.output.reuse_existing && !self.consider_reuse() {
            return;
        }
        self.submit();
        let message = progress(&self.status);
        set_phase(
            &mut self.status,
            Phase::Building,
            reason::BUILDING,
            message,
            self.input.now,
        );
    }

    /// Before anything is submitted, for a build whose arguments take values from other builds:
    /// fail on a cycle or a failed dependency, wait for the others (a missing one at most
    /// `spec.timeoutSeconds`), or record every resolved value in `status.inputs`. True when the
    /// values are recorded and the build goes on.
    fn resolve_dependencies(&mut self) -> bool {
        let spec = self.input.spec;
        let now = self.now();
        let names = super::dependency_names(spec);
        let empty = Dependencies::default();
        let deps = self.input.dependencies.unwrap_or(&empty);
        if let Some(cycle) = &deps.cycle {
            let message = format!("dependency cycle: {}; no job submitted", cycle.join(" -> "));
            return self.dependencies_failed(reason::DEPENDENCY_CYCLE, message);
        }
        for name in &names {
            if let Some(Dependency::Ended { phase, message }) = deps.builds.get(*name) {
                let message = format!(
                    "dependency MultiArchBuild {name} ended {phase:?}: {}; no job submitted",
                    crate::util::cut(&crate::util::one_line(message), 300, "…")
                );
                return self.dependencies_failed(reason::DEPENDENCY_FAILED, message);
            }
        }
        let mut waiting = Vec::new();
        let mut missing = Vec::new();
        for name in &names {
            match deps.builds.get(*name) {
                Some(Dependency::Succeeded { .. }) => {}
                Some(Dependency::Running(phase)) => {
                    waiting.push(format!(
                        "{name} ({})",
                        phase.map_or("Pending".into(), |p| format!("{p:?}"))
                    ));
                }
                Some(Dependency::NotFound) | Some(Dependency::Ended { .. }) => {
                    waiting.push(format!("{name} (not found)"));
                    missing.push(*name);
                }
                None if self.input.dependencies.is_none() => waiting.push(format!("{name} (not looked at)")),
                None => {
                    waiting.push(format!("{name} (not found)"));
                    missing.push(*name);
                }
            }
        }
        if waiting.is_empty() {
            let build_args: Vec<ResolvedBuildArg> = spec
                .build_args
                .iter()
                .flatten()
                .filter_map(|arg| match deps.builds.get(arg.dependency()?) {
                    Some(Dependency::Succeeded { image }) => Some(ResolvedBuildArg {
                        name: arg.name.clone(),
                        value: image.clone(),
                    }),
                    _ => None,
                })
                .collect();
            let message = build_args
                .iter()
                .map(|a| format!("{}={}", a.name, a.value))
                .collect::<Vec<_>>()
                .join(", ");
            self.status.inputs = Some(InputsStatus { build_args });
            let message = format!("every dependency succeeded: {message}");
            set_condition(
                &mut self.status,
                DEPENDENCIES_READY,
                true,
                reason::DEPENDENCIES_SUCCEEDED,
                &message,
                now,
            );
            return true;
        }
        let message = format!("waiting for MultiArchBuild {} to succeed", waiting.join(", "));
        set_condition(
            &mut self.status,
            DEPENDENCIES_READY,
            false,
            reason::WAITING_FOR_DEPENDENCIES,
            &message,
            now,
        );
        if !missing.is_empty() {
            let since = self
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == DEPENDENCIES_READY)
                .map_or(now, |c| c.last_transition_time.0);
            let deadline = since + SignedDuration::from_secs(spec.timeout_seconds);
            if now >= deadline {
                let message = format!(
                    "MultiArchBuild {} not found in the namespace within spec.timeoutSeconds={}s of waiting; no job \
                     submitted",
                    missing.join(", "),
                    spec.timeout_seconds
                );
                return self.dependencies_failed(reason::DEPENDENCY_NOT_FOUND, message);
            }
            self.wake(deadline);
        }
        set_phase(
            &mut self.status,
            Phase::Waiting,
            reason::WAITING_FOR_DEPENDENCIES,
            message,
            now,
        );
        false
    }

    /// Ends a build whose dependencies cannot be resolved, before anything was submitted.
    fn dependencies_failed(&mut self, why: &str, message: String) -> bool {
        let now = self.now();
        set_condition(&mut self.status, DEPENDENCIES_READY, false, why, &message, now);
        self.end(Phase::Failed, why, message, "a dependency failed");
        false
    }

    /// A live job that Batch has not returned for longer than the grace period after its own
    /// submission: recorded LOST (never asked about again) and the build fails.
    fn lost_job(&mut self) -> bool {
        let now = self.now();
        let start = self.status.start_time.as_ref().map(|t| t.0);
        let mut lost = None;
        for entry in &mut self.status.platforms {
            let Some(id) = live_job(entry).map(str::to_owned) else {
                continue;
            };
            if !matches!(
                self.input.observed.jobs.get(&entry.platform),
                Some(JobObservation::Missing)
            ) {
                continue;
            }
            let Some(since) = entry.submitted_at.as_ref().map(|t| t.0).or(start) else {
                continue;
            };
            let grace_over = since + SignedDuration::from_secs(MISSING_JOB_GRACE_SECONDS);
            if now < grace_over {
                earliest(&mut self.wake_at, grace_over);
                continue;
            }
            entry.state = Some(JobState::Lost.as_str().into());
            lost = Some(format!(
                "{}: Batch no longer knows job {id} (deleted, or its record expired); the build cannot be followed",
                entry.platform
            ));
            break;
        }
        let Some(message) = lost else {
            return false;
        };
        self.end(
            Phase::Failed,
            reason::JOB_LOST,
            message,
            "fail fast: a platform was lost",
        );
        true
    }

    /// For each succeeded platform whose digest is not known yet: read it from the job's log, wait
    /// for the log to catch up, or fail closed. False when the build ended.
    fn learn_results(&mut self) -> bool {
        let now = self.now();
        let mut failure = None;
        for entry in &self.status.platforms {
            if state_of(entry) != Some(JobState::Succeeded) || entry.digest.is_some() {
                continue;
            }
            let not_in_log = match (self.input.observed.results.get(&entry.platform), &entry.log_stream_name) {
                (Some(JobResult::NotInLog(why)), _) => why.clone(),
                (Some(JobResult::Pushed { .. }), _) => continue,
                (None, Some(stream)) => {
                    self.actions.push(Action::ReadResult {
                        platform: entry.platform,
                        log_stream_name: stream.clone(),
                    });
                    continue;
                }
                (None, None) => "Batch reports no log stream for the job".to_string(),
            };
            let stopped = [
                &entry.stopped_at,
                &entry.started_at,
                &entry.submitted_at,
                &self.status.start_time,
            ]
            .into_iter()
            .find_map(|t| t.as_ref().map(|t| t.0))
            .unwrap_or(now);
            let give_up = stopped + SignedDuration::from_secs(RESULT_LOG_GRACE_SECONDS);
            if now < give_up {
                let again = give_up.min(now + SignedDuration::from_secs(RESULT_LOG_RETRY_SECONDS));
                earliest(&mut self.wake_at, again);
                continue;
            }
            failure = Some(format!(
                "{}: the job succeeded but what it pushed cannot be learned: {not_in_log}. The build fails \
                 closed rather than trust what the tag {} points to now",
                entry.platform,
                entry
                    .image
                    .clone()
                    .unwrap_or_else(|| self.input.spec.platform_image(entry.platform))
            ));
            break;
        }
        if let Some(message) = failure {
            self.end(
                Phase::Failed,
                reason::DIGEST_UNKNOWN,
                message,
                "what a platform pushed is unknown",
            );
            return false;
        }
        true
    }

    /// Every platform pushed a known digest: assemble, or record what the assembly did.
    fn assemble(&mut self, children: Vec<(Platform, String)>) {
        let spec = self.input.spec;
        match &self.input.observed.assembly {
            Some(AssemblyOutcome::Pushed(index)) => {
                record_index(&mut self.status, spec, index);
                self.attest();
            }
            Some(AssemblyOutcome::Rejected { reason, message }) => {
                let message = format!("cannot publish the index: {message}");
                finish(&mut self.status, self.input.now, Phase::Failed, reason, message);
            }
            None => {
                // Every child has a commit when it has a digest: both come from the same log lines.
                let commit = commit_of(&self.status).unwrap_or_default().to_string();
                let created = self
                    .status
                    .platforms
                    .iter()
                    .filter_map(|p| p.stopped_at.as_ref().map(|t| t.0))
                    .max()
                    .unwrap_or(self.input.now);
                self.actions.push(Action::Assemble {
                    children,
                    commit,
                    created,
                });
                let message = format!("every platform pushed; assembling {}", spec.index_image());
                set_phase(
                    &mut self.status,
                    Phase::Assembling,
                    reason::ASSEMBLING,
                    message,
                    self.input.now,
                );
            }
        }
    }

    /// The index is at `<tag>` (`status.digest`): attach its provenance, signed with a signing key,
    /// before `status.image` names it, so nothing downstream pins an index that is not (yet)
    /// signed. A failure keeps the build Assembling and is tried again.
    fn attest(&mut self) {
        if self.status.provenance.is_some() {
            return self.publish_tags();
        }
        let now = self.now();
        let digest = self.status.digest.clone().unwrap_or_default();
        let index = format!("{}@{digest}", self.input.spec.output.repository);
        match &self.input.observed.attestation {
            Some(AttestationOutcome::Attached { provenance, signature }) => {
                self.status.provenance = Some(provenance.clone());
                self.status.signature = signature.clone();
                self.status.image = Some(index);
                self.publish_tags();
            }
            Some(AttestationOutcome::Failed { reason, message }) => {
                let message = format!(
                    "the index {index} is pushed, but its provenance is not attached: {message}; trying again in \
                     {ATTEST_RETRY_SECONDS}s (status.image is written once it is)"
                );
                set_phase(&mut self.status, Phase::Assembling, reason, message, now);
                self.wake(now + SignedDuration::from_secs(ATTEST_RETRY_SECONDS));
            }
            None => {
                self.actions.push(Action::Attest { digest });
                let message = format!("the index {index} is pushed; attaching its provenance");
                set_phase(&mut self.status, Phase::Assembling, reason::ATTESTING, message, now);
            }
        }
    }

    /// The index is at `<tag>` (`status.digest`): push it under each additional tag not pushed yet,
    /// record what was, and succeed once every tag holds it. Pushing a tag again is harmless, so a
    /// restart at any point only pushes again what `status.tags` does not list.
    fn publish_tags(&mut self) {
        let spec = self.input.spec;
        let now = self.now();
        let mut pushed = std::mem::take(&mut self.status.tags);
        match &self.input.observed.tags {
            Some(TagsOutcome::Pushed(tags)) => pushed.extend(tags.iter().cloned()),
            Some(TagsOutcome::Rejected { reason, message }) => {
                self.status.tags = in_spec_order(spec, &pushed);
                let message = format!(
                    "the index {} was pushed and verified, but not under every tag of spec.output.additionalTags: {message}",
                    self.status.image.clone().unwrap_or_default()
                );
                return finish(&mut self.status, now, Phase::Failed, reason, message);
            }
            None => {}
        }
        self.status.tags = in_spec_order(spec, &pushed);
        let missing: Vec<String> = spec
            .output
            .additional_tags
            .iter()
            .filter(|t| !self.status.tags.contains(t))
            .cloned()
            .collect();
        if missing.is_empty() {
            return self.succeed();
        }
        let message = format!(
            "the index {} is pushed; pushing it as {} too",
            self.status.image.clone().unwrap_or_default(),
            missing.join(", ")
        );
        self.actions.push(Action::PushTags {
            digest: self.status.digest.clone().unwrap_or_default(),
            tags: missing,
        });
        set_phase(&mut self.status, Phase::Assembling, reason::ASSEMBLING, message, now);
    }

    /// Every tag holds the index: the build succeeded, by building (`Succeeded`) or by reusing an
    /// index (`Reused`: no job was ever submitted).
    fn succeed(&mut self) {
        let spec = self.input.spec;
        let reused = self
            .status
            .platforms
            .iter()
            .all(|p| p.job_id.is_none() && p.submitted_at.is_none());
        let commit = commit_of(&self.status).unwrap_or("unknown").to_string();
        let mut message = if reused {
            format!(
                "{} already is an index built from commit {commit} with the same inputs; nothing built",
                spec.index_image()
            )
        } else {
            format!(
                "pushed {} ({} platforms, commit {commit})",
                self.status.image.clone().unwrap_or_default(),
                self.status.platforms.len(),
            )
        };
        match (&self.status.provenance, &self.status.signature) {
            (Some(provenance), Some(signature)) => message.push_str(&format!(
                "; signed by {} ({}), provenance {}",
                signature.key, signature.image, provenance.image
            )),
            (Some(provenance), None) => message.push_str(&format!("; provenance (unsigned) {}", provenance.image)),
            _ => {}
        }
        if !spec.output.additional_tags.is_empty() {
            message.push_str(&format!("; tagged {}", self.status.tags.join(", ")));
        }
        if let Some(differences) = spec.platform_differences() {
            message.push_str(&format!("; {differences}"));
        }
        let why = if reused { reason::REUSED } else { reason::SUCCEEDED };
        finish(&mut self.status, self.input.now, Phase::Succeeded, why, message);
    }

    /// Before anything is submitted: look for an index this input already built. True when the
    /// build goes on to submit.
    fn consider_reuse(&mut self) -> bool {
        let spec = self.input.spec;
        let now = self.input.now;
        match &self.input.observed.existing_index {
            None => {
                self.actions.push(Action::CheckExistingIndex);
                let message = format!("checking whether {} already exists", spec.index_image());
                set_phase(&mut self.status, Phase::Pending, reason::PENDING, message, now);
                false
            }
            Some(ExistingIndex::Reusable(index)) => {
                record_index(&mut self.status, spec, index);
                self.attest();
                false
            }
            Some(ExistingIndex::Differs(why)) => {
                let message = format!("{} exists but is not reused: {why}; building", spec.index_image());
                set_condition(
                    &mut self.status,
                    INDEX_REUSED,
                    false,
                    reason::NOT_REUSABLE,
                    &message,
                    now,
                );
                true
            }
            Some(ExistingIndex::Absent) => true,
        }
    }

    /// Submits every platform without a job, or looks for the job a recorded submit may have made.
    fn submit(&mut self) {
        let now = self.now();
        let mut wakes = Vec::new();
        let mut any_submitted = false;
        for entry in &mut self.status.platforms {
            if entry.job_id.is_some() {
                continue;
            }
            let observed = self.input.observed.jobs.get(&entry.platform);
            if matches!(observed, Some(JobObservation::NotSubmitted)) {
                // Refused in this step: the caller retries the whole step.
                continue;
            }
            match entry.submitted_at.as_ref().map(|t| t.0) {
                Some(asked) if now < asked + SignedDuration::from_secs(SUBMIT_SETTLE_SECONDS) => {
                    if matches!(observed, Some(JobObservation::NotListed)) {
                        wakes.push(asked + SignedDuration::from_secs(SUBMIT_SETTLE_SECONDS));
                    } else {
                        self.actions.push(Action::Adopt(entry.platform));
                    }
                }
                _ => {
                    self.actions.push(Action::Submit(entry.platform));
                    entry.submitted_at = Some(Time(now));
                    any_submitted = true;
                }
            }
        }
        for at in wakes {
            self.wake(at);
        }
        if self.status.start_time.is_none() && any_submitted {
            self.status.start_time = Some(Time(now));
            self.wake(now + SignedDuration::from_secs(self.input.spec.timeout_seconds));
        }
    }
}

/// Makes `wake_at` the earlier of itself and `at` (for loops over the status, where
/// [`Decision::wake`] cannot borrow the whole decision).
fn earliest(wake_at: &mut Option<Timestamp>, at: Timestamp) {
    *wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
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
                Some(JobObservation::NotSubmitted) if entry.job_id.is_none() => entry.submitted_at = None,
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
            if let Some(JobResult::Pushed { commit, digest }) = input.observed.results.get(&target.platform)
                && entry.digest.is_none()
            {
                entry.digest = Some(digest.clone());
                entry.commit = Some(commit.clone());
            }
            entry
        })
        .collect();
    status.platforms = entries;
    if commit_of(&status).is_none()
        && let Some(commit) = status.platforms.iter().find_map(|p| p.commit.clone())
    {
        status.source = Some(SourceStatus { commit: Some(commit) });
    }
    status
}

/// The commit the build's jobs reported (`status.source.commit`).
fn commit_of(status: &MultiArchBuildStatus) -> Option<&str> {
    status.source.as_ref()?.commit.as_deref()
}

/// Why the platforms' commits cannot all be the one the spec asked for: a platform built another
/// commit than the pinned revision, or two platforms built different commits (a branch moved).
fn source_mismatch(spec: &MultiArchBuildSpec, status: &MultiArchBuildStatus) -> Option<String> {
    let revision = &spec.source.git.revision;
    let built: Vec<(Platform, &str)> = status
        .platforms
        .iter()
        .filter_map(|p| Some((p.platform, p.commit.as_deref()?)))
        .collect();
    if let Some(pinned) = pinned_commit(spec)
        && let Some((platform, commit)) = built.iter().find(|(_, c)| *c != pinned)
    {
        return Some(format!(
            "{platform} built commit {commit}, not {pinned} that spec.source.git.revision names"
        ));
    }
    let (first, rest) = built.split_first()?;
    let other = rest.iter().find(|(_, c)| *c != first.1)?;
    Some(format!(
        "the platforms built different commits: {} built {}, {} built {}; revision {revision:?} moved during \
         the build. Pin spec.source.git.revision to a full commit SHA",
        first.0, first.1, other.0, other.1
    ))
}

fn apply_snapshot(entry: &mut PlatformStatus, job: &JobSnapshot) {
    entry.job_id = Some(job.job_id.clone());
    entry.job_name = Some(job.job_name.clone());
    if let Some(placement) = &job.placement {
        entry.job_arn.clone_from(&placement.job_arn);
        entry.job_queue.clone_from(&placement.job_queue);
        entry.job_definition.clone_from(&placement.job_definition);
    }
    entry.state = Some(job.state.as_str().into());
    entry.attempts = Some(job.attempts);
    entry.status_reason.clone_from(&job.status_reason);
    entry.exit_code = job.exit_code;
    if job.log_stream_name.is_some() {
        entry.log_stream_name.clone_from(&job.log_stream_name);
    }
    entry.started_at = job.started_at.map(Time);
    entry.stopped_at = job.stopped_at.map(Time);
    entry.queued_seconds = seconds_between(job.created_at, job.started_at);
    entry.run_seconds = seconds_between(job.started_at, job.stopped_at);
}

/// Whole seconds from `from` to `to` when both are known; 0 when Batch's times disagree (never
/// negative).
fn seconds_between(from: Option<Timestamp>, to: Option<Timestamp>) -> Option<i64> {
    Some(from?.duration_until(to?).as_secs().max(0))
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
        message.push_str(LAST_LOG_LINES);
        message.push_str(&log_lines.join("\n"));
    }
    message
}

fn record_index(status: &mut MultiArchBuildStatus, spec: &MultiArchBuildSpec, index: &IndexRef) {
    for entry in &mut status.platforms {
        if let Some((_, digest)) = index.platforms.iter().find(|(p, _)| *p == entry.platform) {
            entry.digest.get_or_insert_with(|| digest.clone());
            entry.image.get_or_insert_with(|| spec.platform_image(entry.platform));
        }
    }
    if let Some(commit) = &index.commit {
        status.source.get_or_insert_with(SourceStatus::default).commit = Some(commit.clone());
    }
    status.digest = Some(index.digest.clone());
    status.short_digest = Some(short_digest(&index.digest));
    // The index was pushed as (or found at) `<tag>`.
    status.tags = vec![spec.output.tag.clone()];
}

/// `<tag>` and those of `pushed` that are additional tags, in spec order, each once.
fn in_spec_order(spec: &MultiArchBuildSpec, pushed: &[String]) -> Vec<String> {
    spec.index_tags()
        .into_iter()
        .enumerate()
        .filter(|(i, t)| *i == 0 || pushed.contains(t))
        .map(|(_, t)| t)
        .collect()
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
    // Messages quote build output and registry answers: no terminal control codes in the status.
    let message = crate::util::clean_text(&message);
    status.phase = Some(phase);
    status.platforms_pushed = Some(pushed_count(status));
    let ready = phase == Phase::Succeeded;
    set_ready(status, ready, why, &message, now);
    set_outcome(status, phase, why, &message, now);
    status.message = Some(message);
}

/// Sets the conditions other tools read: `Succeeded` (Tekton, Knative, Shipwright: Unknown while
/// the build runs, then True or False for good), and kstatus's abnormal-true `Reconciling` (while
/// the build runs) and `Stalled` (failed or cancelled for good), each present only while True.
fn set_outcome(status: &mut MultiArchBuildStatus, phase: Phase, why: &str, message: &str, now: Timestamp) {
    let succeeded = match phase {
        Phase::Succeeded => "True",
        Phase::Failed | Phase::Cancelled => "False",
        _ => "Unknown",
    };
    set_condition_status(status, SUCCEEDED, succeeded, why, message, now);
    let present = match phase {
        _ if !phase.is_terminal() => Some(RECONCILING),
        Phase::Succeeded => None,
        _ => Some(STALLED),
    };
    status
        .conditions
        .retain(|c| !(c.type_ == RECONCILING || c.type_ == STALLED) || Some(c.type_.as_str()) == present);
    if let Some(type_) = present {
        set_condition_status(status, type_, "True", why, message, now);
    }
}

fn finish(status: &mut MultiArchBuildStatus, now: Timestamp, phase: Phase, why: &str, message: String) {
    set_phase(status, phase, why, message, now);
    status.completion_time = Some(Time(now));
}

/// Sets the `Ready` condition.
fn set_ready(status: &mut MultiArchBuildStatus, ready: bool, why: &str, message: &str, now: Timestamp) {
    set_condition(status, READY, ready, why, message, now);
}

/// Sets a condition, keeping `lastTransitionTime` when its status did not change.
fn set_condition(
    status: &mut MultiArchBuildStatus,
    type_: &str,
    value: bool,
    why: &str,
    message: &str,
    now: Timestamp,
) {
    set_condition_status(status, type_, if value { "True" } else { "False" }, why, message, now);
}

/// Sets a condition to `value` (`True`, `False` or `Unknown`), keeping `lastTransitionTime` when
/// its status did not change.
fn set_condition_status(
    status: &mut MultiArchBuildStatus,
    type_: &str,
    value: &str,
    why: &str,
    message: &str,
    now: Timestamp,
) {
    let observed_generation = status.observed_generation;
    let previous = status.conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(c) if c.status == value => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: type_.into(),
        status: value.into(),
        reason: why.into(),
        message: crate::util::clean_text(message),
        observed_generation,
        last_transition_time,
    };
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.push(condition);
}
