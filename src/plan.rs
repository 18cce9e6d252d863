//! The pure planner: from what the spec asks, what the status records and what was observed,
//! decide the next actions and the next status. No I/O, no clock, no AWS types: `now` is an input.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use crate::api::{GitSources, MultiArchBuildSpec, MultiArchBuildStatus, Platform, PlatformStatus};

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
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

/// What Batch says about one job (DescribeJobs, mapped from `JobDetail`; every field optional
/// because Batch and moto may leave any of them out).
#[derive(Clone, Debug, PartialEq)]
pub struct JobSnapshot {
    pub job_id: String,
    pub job_name: String,
    pub state: JobState,
    pub status_reason: Option<String>,
    /// Number of attempts Batch made so far.
    pub attempts: i32,
    /// Exit code of the last attempt's container.
    pub exit_code: Option<i32>,
    /// The last attempt's container `reason` (e.g. `OutOfMemoryError: Container killed due to memory usage`).
    pub container_reason: Option<String>,
    pub log_stream_name: Option<String>,
    pub started_at: Option<Timestamp>,
    pub stopped_at: Option<Timestamp>,
}

impl JobSnapshot {
    /// A snapshot that knows only the job's id, name and state (every optional field empty).
    pub fn new(job_id: impl Into<String>, job_name: impl Into<String>, state: JobState) -> Self {
        JobSnapshot {
            job_id: job_id.into(),
            job_name: job_name.into(),
            state,
            status_reason: None,
            attempts: 0,
            exit_code: None,
            container_reason: None,
            log_stream_name: None,
            started_at: None,
            stopped_at: None,
        }
    }
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
}

/// An index in the registry and the child manifests it lists.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexRef {
    pub digest: String,
    pub platforms: Vec<(Platform, String)>,
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

/// Everything observed in this step. Absent means "not looked at", never "empty".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observations {
    pub jobs: BTreeMap<Platform, JobObservation>,
    /// The result of `CheckExistingIndex`: `Some(None)` means looked up, not usable.
    pub existing_index: Option<Option<IndexRef>>,
    pub assembly: Option<AssemblyOutcome>,
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
    /// Verify every platform image and push the index.
    Assemble,
}

/// The planner's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: MultiArchBuildStatus,
}

/// Everything `plan` decides from.
pub struct Input<'a> {
    pub spec: &'a MultiArchBuildSpec,
    /// Which git URLs the spec may use (file:/// only on a local stack).
    pub git_sources: GitSources,
    pub generation: Option<i64>,
    pub status: &'a MultiArchBuildStatus,
    pub observed: &'a Observations,
    pub now: Timestamp,
}

/// How long a submitted job may be invisible to DescribeJobs before it counts as lost. Batch is
/// eventually consistent right after SubmitJob; a job that stays invisible was deleted or expired.
pub const MISSING_JOB_GRACE_SECONDS: i64 = 300;

/// The `Ready` condition's type.
pub const READY: &str = "Ready";

/// Condition reasons (also event reasons).
pub mod reason {
    pub const PENDING: &str = "Pending";
    pub const BUILDING: &str = "Building";
    pub const ASSEMBLING: &str = "Assembling";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const REUSED: &str = "Reused";
    pub const BUILD_FAILED: &str = "BuildFailed";
    pub const JOB_LOST: &str = "JobLost";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const CANCELLED: &str = "Cancelled";
    pub const INVALID_SPEC: &str = "InvalidSpec";
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

mod decide;
pub use decide::plan;

#[cfg(test)]
mod tests;
