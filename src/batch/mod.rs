//! AWS Batch: one job per platform, submitted idempotently, watched by one shared poller.
//!
//! - [`job_name`] and [`submit_request`]: what SubmitJob sends for one platform, as plain data
//!   (printed by `build --dry-run`). User values go only into environment variables.
//! - [`BatchExecutor`]: find-or-submit (ListJobs by name before any SubmitJob, so a restart between
//!   SubmitJob and the status write adopts the job instead of submitting a duplicate), batched
//!   DescribeJobs, TerminateJob, and the CloudWatch Logs tail of a failed job.
//! - [`JobPoller`]: every interval one sweep describes the live jobs of all builds, 100 ids a call,
//!   and streams the changes keyed by the owning build.

mod error;
mod executor;
mod poller;
mod request;

pub use error::BatchError;
pub use executor::{
    AwsCallCounts, AwsOperation, BatchExecutor, DEFAULT_LOG_GROUP, DESCRIBE_JOBS_MAX_IDS, MAX_LOG_TAIL_LINES,
    SubmittedJob, snapshot_from_detail,
};
pub use poller::{JobChange, JobChanges, JobDescriber, JobPoller, PollerConfig, SweepReport};
pub use request::{
    BuildRef, MAX_JOB_NAME_LEN, MAX_SUBMIT_REQUEST_BYTES, RETRY_ON_STATUS_REASON, SubmitRequest, TAG_BUILD,
    TAG_BUILD_UID, TAG_PLATFORM, env, is_valid_job_name, job_name, registry_auth, submit_request,
};
