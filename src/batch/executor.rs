//! The AWS Batch executor: idempotent find-or-submit, batched describe, terminate, and the log
//! tail of a failed job.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_batch::types::{
    ContainerOverrides, EvaluateOnExit, JobDetail, JobTimeout, KeyValuePair, KeyValuesPair, RetryAction, RetryStrategy,
};
use k8s_openapi::jiff::Timestamp;

use crate::plan::{JobSnapshot, JobState};

use super::request::RETRY_ON_STATUS_REASON;
use super::{BatchError, SubmitRequest};

/// Batch's log group for the `awslogs` driver when a job definition sets no other.
pub const DEFAULT_LOG_GROUP: &str = "/aws/batch/job";
/// DescribeJobs accepts at most this many job ids a call.
pub const DESCRIBE_JOBS_MAX_IDS: usize = 100;
/// At most this many log lines go into a failure message.
pub const MAX_LOG_TAIL_LINES: usize = 20;
/// Longer log lines are cut to this many bytes (a condition message must stay readable).
pub const MAX_LOG_LINE_BYTES: usize = 512;
/// ListJobs pages read at most when looking a job name up (a name has very few jobs).
const MAX_LIST_PAGES: usize = 10;

/// The AWS operations the executor calls, for per-operation call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AwsOperation {
    SubmitJob,
    ListJobs,
    DescribeJobs,
    TerminateJob,
    GetLogEvents,
}

impl AwsOperation {
    fn index(self) -> usize {
        self as usize
    }
}

/// Calls made by one executor (and its clones), by operation: one per request the executor sends,
/// whatever the SDK's own retries do underneath (the tests read them; the controller's metrics
/// count SDK attempts with their own interceptor).
#[derive(Debug, Default)]
pub struct AwsCallCounts {
    calls: [AtomicU64; 5],
}

impl AwsCallCounts {
    pub fn get(&self, operation: AwsOperation) -> u64 {
        self.calls[operation.index()].load(Ordering::Relaxed)
    }

    fn count(&self, operation: AwsOperation) {
        self.calls[operation.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// The result of [`BatchExecutor::find_or_submit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmittedJob {
    pub job_id: String,
    pub job_name: String,
    /// True when a job with this name already existed and was adopted instead of submitting.
    pub adopted: bool,
    /// The job's status as ListJobs reported it (adopted), or SUBMITTED (just submitted).
    pub state: Option<JobState>,
}

/// Runs the per-platform Batch jobs. Cheap to clone (the SDK clients are).
#[derive(Clone, Debug)]
pub struct BatchExecutor {
    batch: aws_sdk_batch::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
    calls: Arc<AwsCallCounts>,
}

impl BatchExecutor {
    pub fn new(batch: aws_sdk_batch::Client, logs: aws_sdk_cloudwatchlogs::Client) -> Self {
        BatchExecutor {
            batch,
            logs,
            calls: Arc::default(),
        }
    }

    /// Calls made so far, by operation.
    pub fn calls(&self) -> &AwsCallCounts {
        &self.calls
    }

    /// Submits the job unless one with the same name already exists in the queue, which is then
    /// adopted (the newest, if several). Since SubmitJob has no idempotency token, this is what
    /// makes a restart between SubmitJob and the status write harmless.
    pub async fn find_or_submit(&self, request: &SubmitRequest) -> Result<SubmittedJob, BatchError> {
        request.check_size()?;
        if let Some(existing) = self.find_job(&request.job_queue, &request.job_name).await? {
            tracing::info!(job_name = %existing.job_name, job_id = %existing.job_id, "adopted existing Batch job");
            return Ok(existing);
        }
        self.submit(request).await
    }

    /// The newest job named exactly `job_name` in `job_queue`, any status.
    ///
    /// ListJobs with a `JOB_NAME` filter returns jobs of every status; the filter is a
    /// case-insensitive prefix/exact match, so the name is compared exactly here, and "newest" is
    /// decided by `createdAt` rather than by the order of the answer.
    pub async fn find_job(&self, job_queue: &str, job_name: &str) -> Result<Option<SubmittedJob>, BatchError> {
        let filter = KeyValuesPair::builder().name("JOB_NAME").values(job_name).build();
        let mut newest: Option<(i64, SubmittedJob)> = None;
        let mut next_token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            self.calls.count(AwsOperation::ListJobs);
            let page = self
                .batch
                .list_jobs()
                .job_queue(job_queue)
                .filters(filter.clone())
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|e| BatchError::from_sdk("ListJobs", e))?;
            for summary in page.job_summary_list() {
                let (Some(id), Some(name)) = (summary.job_id(), summary.job_name()) else {
                    continue;
                };
                if name != job_name || id.is_empty() {
                    continue;
                }
                let created = summary.created_at().unwrap_or(i64::MIN);
                if newest.as_ref().is_none_or(|(at, _)| created > *at) {
                    let job = SubmittedJob {
                        job_id: id.to_owned(),
                        job_name: name.to_owned(),
                        adopted: true,
                        state: summary.status().and_then(|s| JobState::parse(s.as_str())),
                    };
                    newest = Some((created, job));
                }
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => break,
            }
        }
        Ok(newest.map(|(_, job)| job))
    }

    async fn submit(&self, request: &SubmitRequest) -> Result<SubmittedJob, BatchError> {
        let environment = request
            .environment
            .iter()
            .map(|(name, value)| KeyValuePair::builder().name(name).value(value).build())
            .collect();
        let retry = RetryStrategy::builder()
            .attempts(request.attempts)
            .evaluate_on_exit(
                EvaluateOnExit::builder()
                    .on_status_reason(RETRY_ON_STATUS_REASON)
                    .action(RetryAction::Retry)
                    .build(),
            )
            .evaluate_on_exit(
                EvaluateOnExit::builder()
                    .on_reason("*")
                    .action(RetryAction::Exit)
                    .build(),
            )
            .build();
        let timeout = JobTimeout::builder()
            .attempt_duration_seconds(i32::try_from(request.attempt_duration_seconds).unwrap_or(i32::MAX))
            .build();
        let tags: HashMap<String, String> = request.tags.clone().into_iter().collect();

        self.calls.count(AwsOperation::SubmitJob);
        let out = self
            .batch
            .submit_job()
            .job_name(&request.job_name)
            .job_queue(&request.job_queue)
            .job_definition(&request.job_definition)
            .container_overrides(ContainerOverrides::builder().set_environment(Some(environment)).build())
            .retry_strategy(retry)
            .timeout(timeout)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| BatchError::from_sdk("SubmitJob", e))?;
        let job_id = out
            .job_id()
            .filter(|id| !id.is_empty())
            .ok_or(BatchError::InvalidResponse {
                operation: "SubmitJob",
                field: "jobId",
            })?
            .to_owned();
        tracing::info!(job_name = %request.job_name, %job_id, queue = %request.job_queue, "submitted Batch job");
        Ok(SubmittedJob {
            job_id,
            job_name: request.job_name.clone(),
            adopted: false,
            state: Some(JobState::Submitted),
        })
    }

    /// Describes jobs, at most 100 ids a DescribeJobs call (duplicates are asked once). Ids Batch
    /// does not return (expired, unknown) are simply absent from the map; so are jobs whose
    /// answer lacks an id or a known status.
    pub async fn describe(&self, job_ids: &[String]) -> Result<HashMap<String, JobSnapshot>, BatchError> {
        let mut seen = HashSet::with_capacity(job_ids.len());
        let unique: Vec<String> = job_ids
            .iter()
            .filter(|id| !id.is_empty() && seen.insert(id.as_str()))
            .cloned()
            .collect();
        let mut snapshots = HashMap::with_capacity(unique.len());
        // Never send an empty list: Batch rejects it, and moto answers it with every job.
        for chunk in unique.chunks(DESCRIBE_JOBS_MAX_IDS) {
            self.calls.count(AwsOperation::DescribeJobs);
            let out = self
                .batch
                .describe_jobs()
                .set_jobs(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| BatchError::from_sdk("DescribeJobs", e))?;
            for detail in out.jobs() {
                match snapshot_from_detail(detail) {
                    Some(snapshot) => {
                        snapshots.insert(snapshot.job_id.clone(), snapshot);
                    }
                    None => tracing::warn!(
                        job_id = ?detail.job_id(),
                        status = ?detail.status(),
                        "DescribeJobs returned a job without an id or a known status; ignored"
                    ),
                }
            }
        }
        Ok(snapshots)
    }

    /// Terminates a job: STARTING/RUNNING jobs fail, earlier ones are cancelled, finished ones are
    /// left alone. (CancelJob would silently do nothing to a running job.)
    pub async fn terminate(&self, job_id: &str, reason: &str) -> Result<(), BatchError> {
        let reason = if reason.trim().is_empty() {
            "terminated by multiarch-operator"
        } else {
            reason
        };
        self.calls.count(AwsOperation::TerminateJob);
        self.batch
            .terminate_job()
            .job_id(job_id)
            .reason(reason)
            .send()
            .await
            .map_err(|e| BatchError::from_sdk("TerminateJob", e))?;
        tracing::info!(%job_id, %reason, "terminated Batch job");
        Ok(())
    }

    /// The last `n` (at most 20) lines of a job's log stream, oldest first, each cut to 512 bytes.
    /// Empty when the stream or the log group does not exist (yet).
    pub async fn log_tail(&self, log_stream_name: &str, n: usize) -> Result<Vec<String>, BatchError> {
        let n = n.min(MAX_LOG_TAIL_LINES);
        if n == 0 || log_stream_name.is_empty() {
            return Ok(Vec::new());
        }
        self.calls.count(AwsOperation::GetLogEvents);
        // startFromHead=false: the newest events; within the page they are oldest first.
        let result = self
            .logs
            .get_log_events()
            .log_group_name(DEFAULT_LOG_GROUP)
            .log_stream_name(log_stream_name)
            .start_from_head(false)
            .limit(i32::try_from(n).unwrap_or(20))
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let err = BatchError::from_sdk("GetLogEvents", e);
                if err.code() == Some("ResourceNotFoundException") {
                    return Ok(Vec::new());
                }
                return Err(err);
            }
        };
        let mut lines: Vec<String> = out
            .events()
            .iter()
            .filter_map(|event| event.message())
            .map(|message| crate::util::cut(message.trim_end_matches(['\n', '\r']), MAX_LOG_LINE_BYTES, "…"))
            .collect();
        let excess = lines.len().saturating_sub(n);
        lines.drain(..excess);
        Ok(lines)
    }
}

/// Maps Batch's `JobDetail` to the planner's [`JobSnapshot`]. Every field of `JobDetail` may be
/// absent (the SDK types are all `Option`, and moto leaves out `exitCode`, `statusReason`, ...);
/// `None` only when the job id or a known status is missing, since then nothing can be said.
///
/// Container facts (exit code, reason, log stream) come from `container` (the current attempt),
/// else from the last entry of `attempts`, else from the first essential container of a
/// multi-container (`ecsProperties`) job.
pub fn snapshot_from_detail(detail: &JobDetail) -> Option<JobSnapshot> {
    let job_id = detail.job_id().filter(|id| !id.is_empty())?.to_owned();
    let state = JobState::parse(detail.status()?.as_str())?;
    let attempts = detail.attempts();
    let last_attempt = attempts.last();
    let last_container = last_attempt.and_then(|a| a.container());
    let container = detail.container();
    let ecs_container = detail
        .ecs_properties()
        .and_then(|ecs| ecs.task_properties().first())
        .and_then(|task| {
            let containers = task.containers();
            containers
                .iter()
                .find(|c| c.essential() != Some(false) && (c.exit_code().is_some() || c.reason().is_some()))
                .or_else(|| containers.iter().find(|c| c.essential() != Some(false)))
        });

    let exit_code = container
        .and_then(|c| c.exit_code())
        .or_else(|| last_container.and_then(|c| c.exit_code()))
        .or_else(|| ecs_container.and_then(|c| c.exit_code()));
    let container_reason = container
        .and_then(|c| c.reason())
        .or_else(|| last_container.and_then(|c| c.reason()))
        .or_else(|| ecs_container.and_then(|c| c.reason()))
        .map(str::to_owned);
    let log_stream_name = container
        .and_then(|c| c.log_stream_name())
        .or_else(|| last_container.and_then(|c| c.log_stream_name()))
        .or_else(|| ecs_container.and_then(|c| c.log_stream_name()))
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let status_reason = detail
        .status_reason()
        .or_else(|| last_attempt.and_then(|a| a.status_reason()))
        .filter(|s| !s.is_empty())
        .map(str::to_owned);

    // `attempts` lists finished attempts (moto also lists the running one, without stoppedAt):
    // a job that is STARTING/RUNNING has one more in progress unless it is already listed.
    let in_progress = matches!(state, JobState::Starting | JobState::Running)
        && last_attempt.is_none_or(|a| a.stopped_at().is_some());
    let attempts = i32::try_from(attempts.len())
        .unwrap_or(i32::MAX)
        .saturating_add(i32::from(in_progress));

    Some(JobSnapshot {
        job_id,
        job_name: detail.job_name().unwrap_or_default().to_owned(),
        placement: Some(crate::plan::JobPlacement {
            job_arn: non_empty(detail.job_arn()),
            job_queue: non_empty(detail.job_queue()),
            job_definition: non_empty(detail.job_definition()),
        })
        .filter(|p| *p != crate::plan::JobPlacement::default())
        .map(Box::new),
        state,
        status_reason,
        attempts,
        exit_code,
        container_reason,
        log_stream_name,
        created_at: detail.created_at().and_then(millis),
        started_at: detail.started_at().and_then(millis),
        stopped_at: detail.stopped_at().and_then(millis),
    })
}

/// An owned copy of a field Batch may leave out or empty.
fn non_empty(field: Option<&str>) -> Option<String> {
    field.filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A Batch epoch-milliseconds time; 0 and negative values (moto's "not set") are absent.
fn millis(ms: i64) -> Option<Timestamp> {
    if ms <= 0 {
        return None;
    }
    Timestamp::from_millisecond(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_batch::types::{
        AttemptContainerDetail, AttemptDetail, ContainerDetail, EcsPropertiesDetail, EcsTaskDetails, JobStatus,
        TaskContainerDetails,
    };

    #[test]
    fn detail_with_every_field_absent_maps_to_nothing() {
        assert_eq!(snapshot_from_detail(&JobDetail::builder().build()), None);
        // An id alone is not enough: without a status nothing can be planned.
        assert_eq!(snapshot_from_detail(&JobDetail::builder().job_id("j").build()), None);
        // An unknown status (a newer API) is skipped too.
        let unknown = JobDetail::builder()
            .job_id("j")
            .status(JobStatus::from("PAUSED"))
            .build();
        assert_eq!(snapshot_from_detail(&unknown), None);
    }

    #[test]
    fn detail_with_only_id_and_status_maps_with_defaults() {
        let detail = JobDetail::builder().job_id("j-1").status(JobStatus::Runnable).build();
        assert_eq!(
            snapshot_from_detail(&detail),
            Some(JobSnapshot::new("j-1", "", JobState::Runnable))
        );
        // Empty nested objects are as good as absent.
        let detail = JobDetail::builder()
            .job_id("j-1")
            .status(JobStatus::Running)
            .container(ContainerDetail::builder().build())
            .attempts(AttemptDetail::builder().build())
            .ecs_properties(EcsPropertiesDetail::builder().build())
            .started_at(0)
            .build();
        let snap = snapshot_from_detail(&detail).unwrap();
        assert_eq!(snap.state, JobState::Running);
        assert_eq!(
            snap.attempts, 1,
            "a listed attempt without stoppedAt is the one in progress"
        );
        assert_eq!(
            (snap.exit_code, snap.log_stream_name, snap.started_at),
            (None, None, None)
        );
    }

    #[test]
    fn failed_spot_attempt_then_failed_build() {
        let detail = JobDetail::builder()
            .job_id("j-2")
            .job_name("mab-ns-n-arm64-12345678")
            .status(JobStatus::Failed)
            .attempts(
                AttemptDetail::builder()
                    .status_reason("Host EC2 (instance i-0abc) terminated.")
                    .started_at(1_700_000_000_000)
                    .stopped_at(1_700_000_100_000)
                    .container(
                        AttemptContainerDetail::builder()
                            .log_stream_name("def/default/a1")
                            .build(),
                    )
                    .build(),
            )
            .attempts(
                AttemptDetail::builder()
                    .status_reason("Essential container in task exited")
                    .stopped_at(1_700_000_900_000)
                    .container(
                        AttemptContainerDetail::builder()
                            .exit_code(1)
                            .reason("OutOfMemoryError: Container killed due to memory usage")
                            .log_stream_name("def/default/a2")
                            .build(),
                    )
                    .build(),
            )
            .created_at(1_699_999_990_000)
            .started_at(1_700_000_200_000)
            .stopped_at(1_700_000_900_000)
            .build();
        let snap = snapshot_from_detail(&detail).unwrap();
        assert_eq!(snap.created_at.unwrap().as_millisecond(), 1_699_999_990_000);
        assert_eq!(snap.started_at.unwrap().as_millisecond(), 1_700_000_200_000);
        assert_eq!(snap.state, JobState::Failed);
        assert_eq!(snap.attempts, 2);
        assert_eq!(snap.exit_code, Some(1));
        assert_eq!(
            snap.status_reason.as_deref(),
            Some("Essential container in task exited")
        );
        assert_eq!(snap.log_stream_name.as_deref(), Some("def/default/a2"));
        assert_eq!(
            snap.container_reason.as_deref(),
            Some("OutOfMemoryError: Container killed due to memory usage")
        );
        assert_eq!(snap.stopped_at.unwrap().as_millisecond(), 1_700_000_900_000);
    }

    #[test]
    fn running_job_prefers_current_container_and_counts_attempt_in_progress() {
        let detail = JobDetail::builder()
            .job_id("j-3")
            .status(JobStatus::Running)
            .status_reason("")
            .container(ContainerDetail::builder().log_stream_name("def/default/now").build())
            .build();
        let snap = snapshot_from_detail(&detail).unwrap();
        assert_eq!(snap.attempts, 1);
        assert_eq!(snap.status_reason, None);
        assert_eq!(snap.log_stream_name.as_deref(), Some("def/default/now"));
    }

    #[test]
    fn multi_container_job_reads_the_essential_container() {
        let detail = JobDetail::builder()
            .job_id("j-4")
            .status(JobStatus::Failed)
            .ecs_properties(
                EcsPropertiesDetail::builder()
                    .task_properties(
                        EcsTaskDetails::builder()
                            .containers(TaskContainerDetails::builder().essential(false).exit_code(0).build())
                            .containers(
                                TaskContainerDetails::builder()
                                    .exit_code(2)
                                    .log_stream_name("ecs/builder/x")
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .build();
        let snap = snapshot_from_detail(&detail).unwrap();
        assert_eq!(snap.exit_code, Some(2));
        assert_eq!(snap.log_stream_name.as_deref(), Some("ecs/builder/x"));
    }
}
