//! The shared job poller: one DescribeJobs sweep per interval over the live jobs of every build,
//! at most 100 ids a call, so Batch calls grow with ceil(live jobs / 100), not with builds.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;

use crate::plan::JobSnapshot;
use crate::util::lock;

use super::executor::DESCRIBE_JOBS_MAX_IDS;
use super::{BatchError, BatchExecutor, BuildRef};

/// What the poller needs from Batch: DescribeJobs for at most 100 ids. Implemented by
/// [`BatchExecutor`]; tests substitute a scripted fake.
pub trait JobDescriber: Send + Sync + 'static {
    /// Snapshots of the jobs Batch knows among `job_ids` (≤ 100); unknown ids are absent.
    fn describe_jobs(
        &self,
        job_ids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, JobSnapshot>, BatchError>> + Send;
}

impl JobDescriber for BatchExecutor {
    fn describe_jobs(
        &self,
        job_ids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, JobSnapshot>, BatchError>> + Send {
        self.describe(job_ids)
    }
}

/// How the poller paces itself.
#[derive(Clone, Debug)]
pub struct PollerConfig {
    /// Time from the start of one sweep to the start of the next (`--poll-interval-seconds`).
    pub interval: Duration,
    /// Retries of one DescribeJobs call within a sweep on throttling or a transient error.
    pub max_retries: u32,
    /// First backoff delay; doubled each retry, up to `backoff_max`, with jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A job Batch has not returned for this many sweeps in a row is reported once as missing
    /// (expired, unknown, or not yet visible: not a failure). It is still swept, and reported
    /// again if it reappears, until it is forgotten.
    pub missing_after_sweeps: u32,
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            interval: Duration::from_secs(15),
            max_retries: 4,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            missing_after_sweeps: 3,
        }
    }
}

impl PollerConfig {
    pub fn with_interval(interval: Duration) -> Self {
        PollerConfig {
            interval,
            ..PollerConfig::default()
        }
    }
}

/// One observed change of one job, keyed by the build that owns it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobChange {
    pub owner: BuildRef,
    pub job_id: String,
    /// The new snapshot; `None` when Batch stopped returning the job (expired or unknown, which
    /// is not a failure: the planner decides).
    pub snapshot: Option<JobSnapshot>,
}

/// What one sweep did.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Live job ids the sweep asked about.
    pub jobs: usize,
    /// DescribeJobs calls made, retries included.
    pub describe_calls: u64,
    /// Changes published.
    pub changes: usize,
    /// Calls that were throttled (each retried or left for the next sweep).
    pub throttled: u64,
    /// Chunks that still failed after the retries; their jobs stay live for the next sweep. After
    /// a chunk that stayed throttled the sweep stops, and the chunks not asked are not counted.
    pub failed_chunks: usize,
    /// The last error of a failed chunk.
    pub error: Option<BatchError>,
}

/// The shared poller. Builds [`watch`](Self::watch) their job ids; [`run`](Self::run) sweeps every
/// interval; consumers [`subscribe`](Self::subscribe) to a stream of [`JobChange`]s, or read the
/// latest [`snapshot`](Self::snapshot) of a job while reconciling. Cheap to clone.
pub struct JobPoller<D = BatchExecutor> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for JobPoller<D> {
    fn clone(&self) -> Self {
        JobPoller {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<D> {
    describer: D,
    config: PollerConfig,
    jobs: Mutex<BTreeMap<String, Tracked>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<JobChange>>>,
    /// One sweep at a time.
    sweeping: tokio::sync::Mutex<()>,
    describe_calls: AtomicU64,
    throttled_calls: AtomicU64,
    sweeps: AtomicU64,
    /// When the last sweep ended.
    last_sweep: Mutex<Option<tokio::time::Instant>>,
}

struct Tracked {
    owner: BuildRef,
    last: Option<JobSnapshot>,
    /// Still swept: not seen in a terminal state yet.
    live: bool,
    /// Sweeps in a row that did not return the job.
    missing_sweeps: u32,
    /// Reported missing, and not seen since.
    missing: bool,
}

impl<D: JobDescriber> JobPoller<D> {
    pub fn new(describer: D, config: PollerConfig) -> Self {
        JobPoller {
            inner: Arc::new(Inner {
                describer,
                config,
                jobs: Mutex::default(),
                subscribers: Mutex::default(),
                sweeping: tokio::sync::Mutex::new(()),
                describe_calls: AtomicU64::new(0),
                throttled_calls: AtomicU64::new(0),
                sweeps: AtomicU64::new(0),
                last_sweep: Mutex::new(None),
            }),
        }
    }

    /// Starts sweeping `job_id` for `owner`. Idempotent: a job already known (live or finished) is
    /// left as it is, so the engine can call this on every reconcile.
    pub fn watch(&self, owner: &BuildRef, job_id: &str) {
        if job_id.is_empty() {
            return;
        }
        self.jobs().entry(job_id.to_owned()).or_insert_with(|| Tracked {
            owner: owner.clone(),
            last: None,
            live: true,
            missing_sweeps: 0,
            missing: false,
        });
    }

    /// Stops tracking every job of `owner` and forgets their snapshots (the build was deleted or
    /// reached a terminal phase and recorded it).
    pub fn forget_build(&self, owner: &BuildRef) {
        self.jobs().retain(|_, tracked| &tracked.owner != owner);
    }

    /// Stops tracking one job and forgets its snapshot.
    pub fn forget_job(&self, job_id: &str) {
        self.jobs().remove(job_id);
    }

    /// The latest snapshot seen of a job (kept after it finished, until forgotten).
    pub fn snapshot(&self, job_id: &str) -> Option<JobSnapshot> {
        self.jobs().get(job_id).and_then(|t| t.last.clone())
    }

    /// Whether Batch stopped returning a watched job (reported once as a change without snapshot).
    pub fn is_missing(&self, job_id: &str) -> bool {
        self.jobs().get(job_id).is_some_and(|t| t.missing)
    }

    /// Jobs the next sweep will describe.
    pub fn live_jobs(&self) -> usize {
        self.jobs().values().filter(|t| t.live).count()
    }

    /// DescribeJobs calls made by this poller so far, retries included.
    pub fn describe_calls(&self) -> u64 {
        self.inner.describe_calls.load(Ordering::Relaxed)
    }

    /// DescribeJobs calls AWS throttled so far.
    pub fn throttled_calls(&self) -> u64 {
        self.inner.throttled_calls.load(Ordering::Relaxed)
    }

    /// Sweeps done so far.
    pub fn sweeps(&self) -> u64 {
        self.inner.sweeps.load(Ordering::Relaxed)
    }

    /// Time since the last sweep ended (`None` before the first): the poller's lag behind Batch,
    /// about one interval when all is well.
    pub fn since_last_sweep(&self) -> Option<Duration> {
        lock(&self.inner.last_sweep).map(|at| at.elapsed())
    }

    /// A new stream of every change published from now on. The stream ends when the poller and
    /// all its clones are dropped.
    pub fn subscribe(&self) -> JobChanges {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.subscribers).push(tx);
        JobChanges { rx }
    }

    /// Sweeps every `interval` until `shutdown` completes. Errors never stop the loop: a sweep
    /// whose calls kept failing is followed by a longer, jittered pause when AWS throttled.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut throttled_sweeps: u32 = 0;
        loop {
            let started = tokio::time::Instant::now();
            // A sweep may be cut short: every chunk's answer is recorded as soon as it arrives.
            let report = tokio::select! {
                () = &mut shutdown => return,
                report = self.sweep() => report,
            };
            let mut pause = self.inner.config.interval;
            if let Some(error) = &report.error {
                tracing::warn!(error = %error, label = error.label(), failed_chunks = report.failed_chunks,
                    "job poller sweep incomplete; the jobs stay watched");
            }
            if report.throttled > 0 && report.failed_chunks > 0 {
                throttled_sweeps = throttled_sweeps.saturating_add(1);
                pause = pause.max(self.backoff(throttled_sweeps));
            } else {
                throttled_sweeps = 0;
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep_until(started + pause) => {}
            }
        }
    }

    /// One sweep: describe every live job in chunks of 100, publish what changed, drop jobs that
    /// finished (reported once). Throttling and transient errors are retried with backoff and
    /// jitter; a chunk that still fails is left for the next sweep (after a throttled one, so is the
    /// rest of the sweep), never reported as a job failure.
    pub async fn sweep(&self) -> SweepReport {
        let _one_at_a_time = self.inner.sweeping.lock().await;
        self.inner.sweeps.fetch_add(1, Ordering::Relaxed);
        let ids: Vec<String> = self
            .jobs()
            .iter()
            .filter(|(_, t)| t.live)
            .map(|(id, _)| id.clone())
            .collect();
        let mut report = SweepReport {
            jobs: ids.len(),
            ..SweepReport::default()
        };
        for chunk in ids.chunks(DESCRIBE_JOBS_MAX_IDS) {
            match self.describe_with_retry(chunk, &mut report).await {
                Ok(found) => {
                    let changes = self.apply(chunk, found);
                    report.changes += changes.len();
                    self.publish(changes);
                }
                Err(error) => {
                    report.failed_chunks += 1;
                    let throttled = error.is_throttling();
                    report.error = Some(error);
                    if throttled {
                        // Still throttled after the retries: leave the rest for the next sweep
                        // rather than press on.
                        break;
                    }
                }
            }
        }
        *lock(&self.inner.last_sweep) = Some(tokio::time::Instant::now());
        report
    }

    async fn describe_with_retry(
        &self,
        chunk: &[String],
        report: &mut SweepReport,
    ) -> Result<HashMap<String, JobSnapshot>, BatchError> {
        let mut retry = 0;
        loop {
            self.inner.describe_calls.fetch_add(1, Ordering::Relaxed);
            report.describe_calls += 1;
            match self.inner.describer.describe_jobs(chunk).await {
                Ok(found) => return Ok(found),
                Err(error) => {
                    if error.is_throttling() {
                        self.inner.throttled_calls.fetch_add(1, Ordering::Relaxed);
                        report.throttled += 1;
                    }
                    if !error.is_retryable() || retry >= self.inner.config.max_retries {
                        return Err(error);
                    }
                    retry += 1;
                    let delay = self.backoff(retry);
                    tracing::debug!(error = %error, retry, ?delay, "DescribeJobs failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The delay before retry `n`: [`equal_jitter`](crate::backoff::equal_jitter) backoff.
    fn backoff(&self, n: u32) -> Duration {
        let config = &self.inner.config;
        crate::backoff::equal_jitter(config.backoff_base, config.backoff_max, n, fastrand::f64())
    }

    /// Records one chunk's answer; returns the changes to publish.
    fn apply(&self, chunk: &[String], mut found: HashMap<String, JobSnapshot>) -> Vec<JobChange> {
        let missing_after = self.inner.config.missing_after_sweeps.max(1);
        let mut jobs = self.jobs();
        let mut changes = Vec::new();
        for id in chunk {
            // Forgotten while the call was in flight.
            let Some(tracked) = jobs.get_mut(id) else { continue };
            if !tracked.live {
                continue;
            }
            match found.remove(id) {
                Some(snapshot) => {
                    tracked.missing_sweeps = 0;
                    if snapshot.state.is_terminal() {
                        tracked.live = false;
                    }
                    let back = std::mem::take(&mut tracked.missing);
                    if back || tracked.last.as_ref() != Some(&snapshot) {
                        tracked.last = Some(snapshot.clone());
                        changes.push(JobChange {
                            owner: tracked.owner.clone(),
                            job_id: id.clone(),
                            snapshot: Some(snapshot),
                        });
                    }
                }
                None => {
                    tracked.missing_sweeps = tracked.missing_sweeps.saturating_add(1);
                    if tracked.missing_sweeps >= missing_after && !tracked.missing {
                        tracked.missing = true;
                        changes.push(JobChange {
                            owner: tracked.owner.clone(),
                            job_id: id.clone(),
                            snapshot: None,
                        });
                    }
                }
            }
        }
        changes
    }

    fn publish(&self, changes: Vec<JobChange>) {
        if changes.is_empty() {
            return;
        }
        let mut subscribers = lock(&self.inner.subscribers);
        subscribers.retain(|tx| changes.iter().all(|change| tx.send(change.clone()).is_ok()));
    }

    fn jobs(&self) -> MutexGuard<'_, BTreeMap<String, Tracked>> {
        lock(&self.inner.jobs)
    }
}

/// The changes published by a [`JobPoller`], as a [`Stream`]. Unbounded: a slow consumer never
/// loses a change (each job changes only a handful of times).
pub struct JobChanges {
    rx: mpsc::UnboundedReceiver<JobChange>,
}

impl JobChanges {
    /// The next change; `None` once the poller is gone.
    pub async fn recv(&mut self) -> Option<JobChange> {
        self.rx.recv().await
    }

    /// A change already waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<JobChange> {
        self.rx.try_recv().ok()
    }
}

impl Stream for JobChanges {
    type Item = JobChange;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<JobChange>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::JobState;
    use futures::StreamExt;
    use std::collections::VecDeque;

    /// A fake Batch: the test sets each job's state; errors can be queued for the next calls.
    #[derive(Default)]
    struct Fake {
        states: Mutex<HashMap<String, JobState>>,
        errors: Mutex<VecDeque<BatchError>>,
        calls: Mutex<Vec<usize>>,
    }

    impl JobDescriber for Arc<Fake> {
        async fn describe_jobs(&self, job_ids: &[String]) -> Result<HashMap<String, JobSnapshot>, BatchError> {
            assert!(job_ids.len() <= 100, "a chunk of {}", job_ids.len());
            lock(&self.calls).push(job_ids.len());
            if let Some(error) = lock(&self.errors).pop_front() {
                return Err(error);
            }
            let states = lock(&self.states);
            Ok(job_ids
                .iter()
                .filter_map(|id| states.get(id).map(|s| (id.clone(), snap(id, *s))))
                .collect())
        }
    }

    fn snap(id: &str, state: JobState) -> JobSnapshot {
        JobSnapshot::new(id, format!("name-{id}"), state)
    }

    fn fast() -> PollerConfig {
        PollerConfig {
            interval: Duration::from_millis(10),
            max_retries: 3,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            missing_after_sweeps: 2,
        }
    }

    fn throttled() -> BatchError {
        BatchError::Throttled {
            operation: "DescribeJobs",
            message: "Too Many Requests".into(),
        }
    }

    fn drain(changes: &mut JobChanges) -> Vec<JobChange> {
        std::iter::from_fn(|| changes.try_recv()).collect()
    }

    #[tokio::test]
    async fn publishes_each_change_once_and_drops_finished_jobs() {
        let fake = Arc::new(Fake::default());
        let poller = JobPoller::new(Arc::clone(&fake), fast());
        let mut changes = poller.subscribe();
        let build = BuildRef::new("ns", "b", "uid-1");
        lock(&fake.states).insert("j1".into(), JobState::Runnable);
        poller.watch(&build, "j1");
        poller.watch(&build, "j1"); // idempotent
        assert_eq!(poller.since_last_sweep(), None);

        let report = poller.sweep().await;
        assert!(
            poller
                .since_last_sweep()
                .is_some_and(|lag| lag < Duration::from_secs(5))
        );
        assert_eq!((report.jobs, report.describe_calls, report.changes), (1, 1, 1));
        let got = drain(&mut changes);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].owner, build);
        assert_eq!(got[0].snapshot.as_ref().map(|s| s.state), Some(JobState::Runnable));

        // No change, nothing published.
        assert_eq!(poller.sweep().await.changes, 0);
        assert!(drain(&mut changes).is_empty());

        lock(&fake.states).insert("j1".into(), JobState::Succeeded);
        assert_eq!(poller.sweep().await.changes, 1);
        let got = drain(&mut changes);
        assert_eq!(got[0].snapshot.as_ref().map(|s| s.state), Some(JobState::Succeeded));
        assert_eq!(poller.live_jobs(), 0);

        // Finished: no longer described, still readable, and watching again does not revive it.
        poller.watch(&build, "j1");
        let report = poller.sweep().await;
        assert_eq!((report.jobs, report.describe_calls), (0, 0));
        assert_eq!(poller.snapshot("j1").map(|s| s.state), Some(JobState::Succeeded));
        assert!(drain(&mut changes).is_empty());

        poller.forget_build(&build);
        assert_eq!(poller.snapshot("j1"), None);
    }

    #[tokio::test]
    async fn one_sweep_describes_all_builds_in_chunks_of_100() {
        let fake = Arc::new(Fake::default());
        let poller = JobPoller::new(Arc::clone(&fake), fast());
        for b in 0..250 {
            let build = BuildRef::new("ns", format!("b{b}"), format!("uid-{b}"));
            for arch in ["amd64", "arm64"] {
                let id = format!("{b}-{arch}");
                lock(&fake.states).insert(id.clone(), JobState::Running);
                poller.watch(&build, &id);
            }
        }
        let report = poller.sweep().await;
        assert_eq!(report.jobs, 500);
        assert_eq!(report.describe_calls, 5);
        assert_eq!(*lock(&fake.calls), vec![100; 5]);
        assert_eq!(poller.describe_calls(), 5);
        assert_eq!(report.changes, 500);
    }

    #[tokio::test]
    async fn throttling_is_retried_and_never_reported_as_a_job_change() {
        let fake = Arc::new(Fake::default());
        let poller = JobPoller::new(Arc::clone(&fake), fast());
        let mut changes = poller.subscribe();
        let build = BuildRef::new("ns", "b", "u");
        lock(&fake.states).insert("j".into(), JobState::Running);
        poller.watch(&build, "j");
        lock(&fake.errors).extend([throttled(), throttled()]);

        let report = poller.sweep().await;
        assert_eq!(
            (report.describe_calls, report.throttled, report.failed_chunks),
            (3, 2, 0)
        );
        assert!(report.error.is_none());
        let got = drain(&mut changes);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].snapshot.as_ref().map(|s| s.state), Some(JobState::Running));

        // More throttling than retries: the sweep gives up on the chunk, the job stays live and
        // nothing is published; the next sweep picks it up.
        lock(&fake.errors).extend((0..4).map(|_| throttled()));
        lock(&fake.states).insert("j".into(), JobState::Failed);
        let report = poller.sweep().await;
        assert_eq!((report.describe_calls, report.failed_chunks), (4, 1));
        assert!(report.error.as_ref().is_some_and(BatchError::is_throttling));
        assert!(drain(&mut changes).is_empty());
        assert_eq!(poller.live_jobs(), 1);
        assert_eq!(poller.sweep().await.changes, 1);
        assert_eq!(
            drain(&mut changes)[0].snapshot.as_ref().map(|s| s.state),
            Some(JobState::Failed)
        );
        assert_eq!(poller.throttled_calls(), 6);
    }

    #[tokio::test]
    async fn a_sweep_stops_at_a_chunk_that_stays_throttled() {
        let fake = Arc::new(Fake::default());
        let poller = JobPoller::new(Arc::clone(&fake), fast());
        let build = BuildRef::new("ns", "b", "u");
        for i in 0..300 {
            let id = format!("j{i:03}");
            lock(&fake.states).insert(id.clone(), JobState::Running);
            poller.watch(&build, &id);
        }
        // The first chunk stays throttled through its 3 retries: the other two are not asked.
        lock(&fake.errors).extend((0..4).map(|_| throttled()));
        let report = poller.sweep().await;
        assert_eq!((report.describe_calls, report.failed_chunks, report.changes), (4, 1, 0));
        let report = poller.sweep().await;
        assert_eq!(
            (report.describe_calls, report.failed_chunks, report.changes),
            (3, 0, 300)
        );
    }

    #[tokio::test]
    async fn rejected_calls_are_not_retried() {
        let fake = Arc::new(Fake::default());
        let poller = JobPoller::new(Arc::clone(&fake), fast());
        poller.watch(&BuildRef::new("ns", "b", "u"), "j");
        lock(&fake.errors).push_back(BatchError::Rejected {
            operation: "DescribeJobs",
            code: "AccessDeniedException".into(),
            message: "no".into(),
        });
        let report = poller.sweep().await;
        assert_eq!((report.describe_calls, report.failed_chunks), (1, 1));
        assert_eq!(poller.live_jobs(), 1);
    }

    #[tokio::test]
    async fn jobs_batch_no_longer_returns_are_reported_missing_once() {
        let fake = Arc::new(Fake::default());
        let poller = JobPoller::new(Arc::clone(&fake), fast());
        let mut changes = poller.subscribe();
        let build = BuildRef::new("ns", "b", "u");
        poller.watch(&build, "gone");
        assert_eq!(poller.sweep().await.changes, 0);
        assert_eq!(poller.sweep().await.changes, 1);
        let got = drain(&mut changes);
        assert_eq!(
            got,
            vec![JobChange {
                owner: build,
                job_id: "gone".into(),
                snapshot: None
            }]
        );
        assert!(poller.is_missing("gone"));
        // Still swept, not reported again...
        let report = poller.sweep().await;
        assert_eq!((report.describe_calls, report.changes), (1, 0));
        // ...and reported when Batch returns it after all (eventual consistency).
        lock(&fake.states).insert("gone".into(), JobState::Runnable);
        assert_eq!(poller.sweep().await.changes, 1);
        assert!(!poller.is_missing("gone"));
        let got = drain(&mut changes);
        assert_eq!(got[0].snapshot.as_ref().map(|s| s.state), Some(JobState::Runnable));
        poller.forget_job("gone");
        assert_eq!(poller.sweep().await.describe_calls, 0);
    }

    #[tokio::test]
    async fn run_sweeps_every_interval_until_shutdown_and_streams_changes() {
        let fake = Arc::new(Fake::default());
        let poller = JobPoller::new(Arc::clone(&fake), fast());
        let changes = poller.subscribe();
        let build = BuildRef::new("ns", "b", "u");
        lock(&fake.states).insert("j".into(), JobState::Starting);
        poller.watch(&build, "j");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runner = tokio::spawn({
            let poller = poller.clone();
            async move {
                poller
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await
            }
        });
        let mut changes = changes.map(|c| (c.owner.name, c.snapshot.map(|s| s.state)));
        assert_eq!(changes.next().await, Some(("b".into(), Some(JobState::Starting))));
        lock(&fake.states).insert("j".into(), JobState::Succeeded);
        assert_eq!(changes.next().await, Some(("b".into(), Some(JobState::Succeeded))));
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), runner)
            .await
            .unwrap()
            .unwrap();
        assert!(poller.sweeps() >= 2);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let poller = JobPoller::new(Arc::new(Fake::default()), PollerConfig::default());
        for n in 1..20 {
            let d = poller.backoff(n);
            let cap = (Duration::from_millis(500) * 2u32.pow((n - 1).min(10))).min(Duration::from_secs(30));
            assert!(d >= cap / 2 && d <= cap, "n={n} d={d:?} cap={cap:?}");
        }
    }
}
