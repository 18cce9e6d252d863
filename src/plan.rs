//! The pure planner: from what the spec asks, what the status records and what was observed,
//! decide the next actions and the next status. No I/O, no clock, no AWS types: `now` is an input.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use crate::api::{
    BuildArg, GitSources, MultiArchBuildSpec, MultiArchBuildStatus, Phase, Platform, PlatformStatus, ProvenanceStatus,
    SignatureStatus,
};

/// A Batch job status, as Batch spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    Submitted,
    Pending,
    Runnable,
    Starting,
    Running,
    Succeeded,
    Failed,
    /// Not a Batch status: Batch stopped returning the job, so the planner gave it up.
    Lost,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Submitted => "SUBMITTED",
            JobState::Pending => "PENDING",
            JobState::Runnable => "RUNNABLE",
            JobState::Starting => "STARTING",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Lost => "LOST",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        [
            JobState::Submitted,
            JobState::Pending,
            JobState::Runnable,
            JobState::Starting,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Lost,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Lost)
    }
}

/// What Batch says about one job (DescribeJobs, mapped from `JobDetail`; every field optional
/// because Batch and moto may leave any of them out).
#[derive(Clone, Debug, PartialEq)]
pub struct JobSnapshot {
    pub job_id: String,
    pub job_name: String,
    /// Where the job ran, as Batch describes it (boxed: most snapshots are compared, few read it).
    pub placement: Option<Box<JobPlacement>>,
    pub state: JobState,
    pub status_reason: Option<String>,
    /// Number of attempts Batch made so far.
    pub attempts: i32,
    /// Exit code of the last attempt's container.
    pub exit_code: Option<i32>,
    /// The last attempt's container `reason` (e.g. `OutOfMemoryError: Container killed due to memory usage`).
    pub container_reason: Option<String>,
    pub log_stream_name: Option<String>,
    /// When the job was submitted (Batch `createdAt`).
    pub created_at: Option<Timestamp>,
    /// When the current attempt started running (Batch `startedAt`).
    pub started_at: Option<Timestamp>,
    pub stopped_at: Option<Timestamp>,
}

impl JobSnapshot {
    /// A snapshot that knows only the job's id, name and state (every optional field empty).
    pub fn new(job_id: impl Into<String>, job_name: impl Into<String>, state: JobState) -> Self {
        JobSnapshot {
            job_id: job_id.into(),
            job_name: job_name.into(),
            placement: None,
            state,
            status_reason: None,
            attempts: 0,
            exit_code: None,
            container_reason: None,
            log_stream_name: None,
            created_at: None,
            started_at: None,
            stopped_at: None,
        }
    }
}

/// The job's ARN, queue ARN and job definition ARN (with its revision).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobPlacement {
    pub job_arn: Option<String>,
    pub job_queue: Option<String>,
    pub job_definition: Option<String>,
}

/// What is known about one platform's job in this step.
#[derive(Clone, Debug, PartialEq)]
pub enum JobObservation {
    /// The executor just submitted (or adopted) this job.
    Submitted { job_id: String, job_name: String },
    /// DescribeJobs returned this.
    Seen(JobSnapshot),
    /// The recorded job id was asked for and Batch did not return it.
    Missing,
    /// ListJobs has no job of this platform's name (yet: it lags SubmitJob).
    NotListed,
    /// SubmitJob was refused, so no job was created (throttled or rejected).
    NotSubmitted,
}

/// What a succeeded job's log says it pushed.
#[derive(Clone, Debug, PartialEq)]
pub enum JobResult {
    /// The builder's last lines: the commit it built and the manifest digest it pushed.
    Pushed { commit: String, digest: String },
    /// The log does not (yet) end with those lines; why, for the message.
    NotInLog(String),
}

/// What `CheckExistingIndex` found at `<tag>`.
#[derive(Clone, Debug, PartialEq)]
pub enum ExistingIndex {
    /// Nothing there, or not an index of every platform.
    Absent,
    /// An index of every platform that this input did not provably build; why not.
    Differs(String),
    /// An index every child of which names the pinned commit and the same inputs.
    Reusable(IndexRef),
}

/// An index in the registry and the child manifests it lists.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexRef {
    pub digest: String,
    pub platforms: Vec<(Platform, String)>,
    /// The commit every child names (a reused index's).
    pub commit: Option<String>,
}

/// What came of an `Assemble` action.
#[derive(Clone, Debug, PartialEq)]
pub enum AssemblyOutcome {
    Pushed(IndexRef),
    /// A permanent failure (platform mismatch, missing tag, immutable tag…): the build fails.
    Rejected {
        reason: String,
        message: String,
    },
}

/// What came of a `PushTags` action.
#[derive(Clone, Debug, PartialEq)]
pub enum TagsOutcome {
    /// These tags now hold the index (each push verified against its digest).
    Pushed(Vec<String>),
    /// A permanent failure (an immutable tag holding another image, a refused push…).
    Rejected { reason: String, message: String },
}

/// What came of an `Attest` action.
#[derive(Clone, Debug, PartialEq)]
pub enum AttestationOutcome {
    /// The provenance (and, with a signing key, the signatures) are pushed and read back verified.
    Attached {
        provenance: ProvenanceStatus,
        signature: Option<SignatureStatus>,
    },
    /// Not attached (KMS refused, a push failed, what was pushed did not verify): retried.
    Failed { reason: String, message: String },
}

/// Everything observed in this step. Absent means "not looked at", never "empty".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observations {
    pub jobs: BTreeMap<Platform, JobObservation>,
    /// The result of `CheckExistingIndex`.
    pub existing_index: Option<ExistingIndex>,
    /// What succeeded jobs' logs say they pushed (`ReadResult`).
    pub results: BTreeMap<Platform, JobResult>,
    pub assembly: Option<AssemblyOutcome>,
    /// The result of `PushTags`.
    pub tags: Option<TagsOutcome>,
    /// The result of `Attest`.
    pub attestation: Option<AttestationOutcome>,
    /// The last log lines of failed platforms, as fetched by `FetchLogs` (empty when unreadable).
    pub failure_logs: BTreeMap<Platform, Vec<String>>,
}

/// What the planner wants done.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Look up whether `<tag>` already is an index covering every platform.
    CheckExistingIndex,
    /// Find-or-submit the platform's Batch job.
    Submit(Platform),
    /// Look for the platform's job by name only (a submit was asked and its answer not recorded).
    Adopt(Platform),
    /// TerminateJob (safe for every state; Batch never retries a terminated job).
    Terminate {
        platform: Platform,
        job_id: String,
        reason: String,
    },
    /// Read the last log lines of a failed job.
    FetchLogs {
        platform: Platform,
        log_stream_name: String,
    },
    /// Read what a succeeded job pushed from the end of its log.
    ReadResult {
        platform: Platform,
        log_stream_name: String,
    },
    /// Verify each platform's manifest, by the digest its job pushed, and push the index.
    Assemble {
        /// Each platform and the digest its job pushed, in spec order.
        children: Vec<(Platform, String)>,
        /// The commit every child must have been built from.
        commit: String,
        /// The index's `org.opencontainers.image.created`: when the last job stopped.
        created: Timestamp,
    },
    /// Attach the provenance of the index `digest` (signed, with a signing key) and read it back.
    Attest { digest: String },
    /// Push the index `digest` (already pushed as `<tag>` and verified, or reused) under each of
    /// `tags` too: the same bytes, each push verified against the digest.
    PushTags { digest: String, tags: Vec<String> },
}

/// The planner's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: MultiArchBuildStatus,
    /// When to look at the build again if nothing happens before (a deadline, a grace period).
    pub wake_at: Option<Timestamp>,
}

/// Why this controller will not run a build at all (decided outside the planner: configuration
/// and cluster policy), checked before anything is submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The condition reason: [`reason::REGISTRY_NOT_ALLOWED`] or [`reason::POLICY_VIOLATION`].
    pub reason: &'static str,
    pub message: String,
}

/// What one build named in `valueFrom.multiArchBuild` looked like in this step.
#[derive(Clone, Debug, PartialEq)]
pub enum Dependency {
    /// No such MultiArchBuild in the namespace (yet: objects may be applied in any order).
    NotFound,
    /// It exists and has not ended; its phase, if it has one.
    Running(Option<Phase>),
    /// It succeeded with this pinned image (`status.image`).
    Succeeded { image: String },
    /// It failed or was cancelled, and why (its `status.message`).
    Ended { phase: Phase, message: String },
}

/// What the caller saw of the builds a build's arguments take their values from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dependencies {
    /// By build name.
    pub builds: BTreeMap<String, Dependency>,
    /// A dependency cycle through this build, as the names from this build back to itself
    /// (`[a, b, a]`; `[a, a]` for a build that names itself).
    pub cycle: Option<Vec<String>>,
}

/// The builds a spec's arguments take their values from, each once, in spec order.
pub fn dependency_names(spec: &MultiArchBuildSpec) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for name in spec.build_args.iter().flatten().filter_map(BuildArg::dependency) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The cycle through `start`, following each build's dependencies as `dependencies_of` gives
/// them (`None` for a build that does not exist or cannot be read): the names from `start` back
/// to itself, or `None`. Depth-first, each build visited once.
pub fn find_cycle(start: &str, mut dependencies_of: impl FnMut(&str) -> Option<Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        name: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut std::collections::BTreeSet<String>,
        dependencies_of: &mut dyn FnMut(&str) -> Option<Vec<String>>,
    ) -> bool {
        for next in dependencies_of(name).unwrap_or_default() {
            if next == start {
                path.push(next);
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if visit(&next, start, path, seen, dependencies_of) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = std::collections::BTreeSet::from([start.to_string()]);
    visit(start, start, &mut path, &mut seen, &mut dependencies_of).then_some(path)
}

/// The spec the jobs build: every `valueFrom` argument replaced by the value recorded in
/// `status.inputs.buildArgs`. Errs with the name of an argument that has no recorded value.
pub fn resolved_spec(spec: &MultiArchBuildSpec, status: &MultiArchBuildStatus) -> Result<MultiArchBuildSpec, String> {
    let mut resolved = spec.clone();
    let recorded = status
        .inputs
        .as_ref()
        .map(|i| i.build_args.as_slice())
        .unwrap_or_default();
    for arg in resolved.build_args.iter_mut().flatten() {
        if arg.value_from.is_none() {
            continue;
        }
        let value = recorded
            .iter()
            .find(|r| r.name == arg.name)
            .ok_or_else(|| arg.name.clone())?;
        arg.value = Some(value.value.clone());
        arg.value_from = None;
    }
    Ok(resolved)
}

/// Everything `plan` decides from.
pub struct Input<'a> {
    pub spec: &'a MultiArchBuildSpec,
    /// Which git URLs the spec may use (file:/// only on a local stack).
    pub git_sources: GitSources,
    pub generation: Option<i64>,
    /// Set when the build may not run here; it then fails before anything is submitted.
    pub refusal: Option<&'a Refusal>,
    /// What the builds named in `valueFrom` looked like; `None` when nobody looked (the build then
    /// waits).
    pub dependencies: Option<&'a Dependencies>,
    pub status: &'a MultiArchBuildStatus,
    pub observed: &'a Observations,
    pub now: Timestamp,
}

/// How long a submitted job may be invisible to DescribeJobs before it counts as lost, from its
/// own submission. Batch is eventually consistent right after SubmitJob; a job that stays
/// invisible was deleted or expired.
pub const MISSING_JOB_GRACE_SECONDS: i64 = 300;

/// How long after asking for a submit whose answer was not recorded the job is only looked for
/// (ListJobs lags SubmitJob) before it is submitted again.
pub const SUBMIT_SETTLE_SECONDS: i64 = 60;

/// How long after a job stopped its log may still lack the builder's result lines (CloudWatch
/// Logs delivery lags) before the build fails closed.
pub const RESULT_LOG_GRACE_SECONDS: i64 = 120;

/// How often the log is read again meanwhile.
pub const RESULT_LOG_RETRY_SECONDS: i64 = 5;

/// How long after a failed `Attest` (KMS refused, a push failed) it is tried again.
pub const ATTEST_RETRY_SECONDS: i64 = 30;

/// What a failed build's message puts between its one-line explanation and the failed job's last
/// log lines.
pub const LAST_LOG_LINES: &str = "; last log lines:\n";

/// The `Ready` condition's type.
pub const READY: &str = "Ready";

/// The `Succeeded` condition's type (the Tekton, Knative and Shipwright convention): Unknown while
/// the build runs, True once `status.image` is final, False when it failed or was cancelled
/// (`kubectl wait --for=condition=Succeeded` returns once it succeeded,
/// `--for=condition=Succeeded=False` once it failed or was cancelled).
pub const SUCCEEDED: &str = "Succeeded";

/// kstatus's `Reconciling` condition (Flux, kpt, cli-utils): present and True while the build has
/// not ended, absent afterwards.
pub const RECONCILING: &str = "Reconciling";

/// kstatus's `Stalled` condition: present and True when the build failed or was cancelled (it
/// will never succeed), absent otherwise.
pub const STALLED: &str = "Stalled";

/// The condition saying why an existing index at `<tag>` was not reused.
pub const INDEX_REUSED: &str = "IndexReused";

/// The condition of a build whose arguments take values from other builds: False while it waits
/// (its `lastTransitionTime` is when the waiting began) or when they failed, True once every value
/// is recorded in `status.inputs`.
pub const DEPENDENCIES_READY: &str = "DependenciesReady";

/// Condition reasons (also event reasons).
pub mod reason {
    pub const PENDING: &str = "Pending";
    pub const BUILDING: &str = "Building";
    pub const ASSEMBLING: &str = "Assembling";
    pub const ATTESTING: &str = "Attesting";
    pub const SIGNING_FAILED: &str = "SigningFailed";
    pub const ATTESTATION_FAILED: &str = "AttestationFailed";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const REUSED: &str = "Reused";
    pub const BUILD_FAILED: &str = "BuildFailed";
    pub const JOB_LOST: &str = "JobLost";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const CANCELLED: &str = "Cancelled";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const DIGEST_UNKNOWN: &str = "DigestUnknown";
    pub const SOURCE_MISMATCH: &str = "SourceMismatch";
    pub const NOT_REUSABLE: &str = "NotReusable";
    pub const REGISTRY_NOT_ALLOWED: &str = "RegistryNotAllowed";
    pub const POLICY_VIOLATION: &str = "PolicyViolation";
    pub const WAITING_FOR_DEPENDENCIES: &str = "WaitingForDependencies";
    pub const DEPENDENCIES_SUCCEEDED: &str = "DependenciesSucceeded";
    pub const DEPENDENCY_FAILED: &str = "DependencyFailed";
    pub const DEPENDENCY_CYCLE: &str = "DependencyCycle";
    pub const DEPENDENCY_NOT_FOUND: &str = "DependencyNotFound";
}

/// The last known Batch state of a platform's job, if it has one.
pub fn state_of(entry: &PlatformStatus) -> Option<JobState> {
    entry.state.as_deref().and_then(JobState::parse)
}

/// The id of a platform's job if that job may still be running: its last known state is not
/// terminal (a job submitted but not described yet is live).
pub fn live_job(entry: &PlatformStatus) -> Option<&str> {
    entry
        .job_id
        .as_deref()
        .filter(|_| !state_of(entry).is_some_and(JobState::is_terminal))
}

/// Whether a platform's job may still be running (see [`live_job`]).
pub fn is_live(entry: &PlatformStatus) -> bool {
    live_job(entry).is_some()
}

/// When a finished build is to be deleted: its `completionTime` plus `spec.ttlSecondsAfterFinished`,
/// or plus `default_ttl_seconds` (the controller's default; `None` or 0 keeps builds forever) when
/// the spec sets none. `None` while the build runs, and for a build kept forever. Like the planner,
/// pure: the controller deletes once `now` has reached it.
pub fn expires_at(
    spec: &MultiArchBuildSpec,
    status: &MultiArchBuildStatus,
    default_ttl_seconds: Option<i64>,
) -> Option<Timestamp> {
    if !status.phase.is_some_and(Phase::is_terminal) {
        return None;
    }
    let finished = status.completion_time.as_ref()?.0;
    let ttl = spec
        .ttl_seconds_after_finished
        .or(default_ttl_seconds.filter(|&ttl| ttl > 0))?;
    finished
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(ttl.max(0)))
        .ok()
}

mod decide;
pub use decide::plan;

#[cfg(test)]
mod tests;
