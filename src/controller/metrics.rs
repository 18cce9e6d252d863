//! The controller's Prometheus metrics (`/metrics`), all prefixed `multiarch_`:
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `multiarch_reconciles_total` | counter | `result` (`success`, `error`) | reconciles finished |
//! | `multiarch_reconcile_errors_total` | counter | `error` (the error label, e.g. `AwsThrottled`) | failed reconciles by cause |
//! | `multiarch_reconcile_duration_seconds` | histogram | | time per reconcile |
//! | `multiarch_builds` | gauge | `phase` | builds this replica knows, by phase |
//! | `multiarch_builds_waiting` | gauge | | builds that have not started building: phase `Waiting` (on their `valueFrom` builds) or `Pending` |
//! | `multiarch_builds_finished_total` | counter | `phase` (`Succeeded`, `Failed`, `Cancelled`), `reason` (the `Succeeded` condition's reason, e.g. `BuildFailed`) | builds that ended, counted once by the leader that saw them end |
//! | `multiarch_build_duration_seconds` | histogram | `phase` | from a build's creation to its end |
//! | `multiarch_build_queue_seconds` | histogram | | per platform job: from its submission to its start (`status.platforms[].queuedSeconds`) |
//! | `multiarch_aws_calls_total` | counter | `service` (`Batch`, `CloudWatch Logs`, `ECR`, `KMS`), `operation`, `outcome` (`success`, `throttled`, `error`) | AWS API calls, SDK retries included |
//! | `multiarch_registry_requests_total` | counter | `method`, `object` (`manifest`, `blob`), `status` (HTTP status, `none` without an answer) | registry API requests, retries included |
//! | `multiarch_poller_lag_seconds` | gauge | | time since the job poller's last sweep ended |
//! | `multiarch_poller_live_jobs` | gauge | | Batch jobs the poller describes each sweep |
//! | `multiarch_leader` | gauge | | 1 while this replica holds the leader Lease |

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Instant,
};

use aws_sdk_batch::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::{
    box_error::BoxError,
    client::{interceptors::context::FinalizerInterceptorContextRef, orchestrator::Metadata},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use reqwest::{Method, StatusCode};

use crate::util::lock;
use crate::{
    api::Phase,
    batch::JobPoller,
    registry::{RegistryObject, RequestObserver},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    phase: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsCallLabels {
    service: String,
    operation: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryRequestLabels {
    method: String,
    object: &'static str,
    status: String,
}

/// Every metric, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histogram,
    builds: Family<PhaseLabels, Gauge>,
    aws_calls: Family<AwsCallLabels, Counter>,
    registry_requests: Family<RegistryRequestLabels, Counter>,
    poller_lag: Gauge<f64, AtomicU64>,
    poller_live_jobs: Gauge,
    leader: Gauge,
    builds_waiting: Gauge,
    builds_finished: Family<FinishedLabels, Counter>,
    build_duration: Family<PhaseLabels, Histogram>,
    build_queue: Histogram,
    /// Reconciles asked for and not finished, and when one last finished (`/healthz`).
    progress: Mutex<Progress>,
    /// The phase of each build (by uid) behind `builds`.
    phases: Mutex<HashMap<String, Phase>>,
    /// The poller of the current leadership term, read at scrape time.
    poller: Mutex<Option<JobPoller>>,
}

const PHASES: [Phase; 7] = [
    Phase::Waiting,
    Phase::Pending,
    Phase::Building,
    Phase::Assembling,
    Phase::Succeeded,
    Phase::Failed,
    Phase::Cancelled,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("multiarch");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register("reconciles", "Reconciles finished, by result", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by error label (also the Warning event reason)",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            reconcile_duration.clone(),
        );
        let builds = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "builds",
            "MultiArchBuilds known to the leader, by phase",
            builds.clone(),
        );
        let aws_calls = Family::<AwsCallLabels, Counter>::default();
        registry.register(
            "aws_calls",
            "AWS API calls (each attempt), by service, operation and outcome",
            aws_calls.clone(),
        );
        let registry_requests = Family::<RegistryRequestLabels, Counter>::default();
        registry.register(
            "registry_requests",
            "Registry API requests (each attempt), by method, object and HTTP status",
            registry_requests.clone(),
        );
        let poller_lag = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "poller_lag_seconds",
            "Seconds since the shared Batch job poller last finished a sweep",
            poller_lag.clone(),
        );
        let poller_live_jobs = Gauge::default();
        registry.register(
            "poller_live_jobs",
            "Batch jobs the poller describes each sweep",
            poller_live_jobs.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles",
            leader.clone(),
        );
        let builds_waiting = Gauge::default();
        registry.register(
            "builds_waiting",
            "Builds that have not started building: phase Waiting (on the builds their valueFrom names) or Pending",
            builds_waiting.clone(),
        );
        let builds_finished = Family::<FinishedLabels, Counter>::default();
        registry.register(
            "builds_finished",
            "Builds that ended, by phase and reason (the Succeeded condition's reason)",
            builds_finished.clone(),
        );
        let build_duration = Family::<PhaseLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
            ])
        });
        registry.register(
            "build_duration_seconds",
            "Time from a build's creation to its end, by the phase it ended in",
            build_duration.clone(),
        );
        let build_queue = Histogram::new([5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0]);
        registry.register(
            "build_queue_seconds",
            "Time a platform's Batch job waited from its submission to its start (queue, scale-up, image pull)",
            build_queue.clone(),
        );
        for phase in PHASES {
            builds
                .get_or_create(&PhaseLabels {
                    phase: phase_name(phase),
                })
                .set(0);
        }
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            builds,
            aws_calls,
            registry_requests,
            poller_lag,
            poller_live_jobs,
            leader,
            builds_waiting,
            builds_finished,
            build_duration,
            build_queue,
            progress: Mutex::new(Progress {
                in_flight: 0,
                last: Instant::now(),
            }),
            phases: Mutex::default(),
            poller: Mutex::default(),
        }
    }

    /// The OpenMetrics text of every metric, poller figures refreshed.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        if let Some(poller) = lock(&self.poller).as_ref() {
            let lag = poller.since_last_sweep().map_or(0.0, |d| d.as_secs_f64());
            self.poller_lag.set(lag);
            self.poller_live_jobs
                .set(i64::try_from(poller.live_jobs()).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Starts timing one reconcile; the time is recorded when the guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            histogram: &self.reconcile_duration,
            start: Instant::now(),
        }
    }

    /// Counts a finished reconcile; `error` is the error label of a failed one.
    pub fn reconciled(&self, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles.get_or_create(&ResultLabels { result }).inc();
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { error: error.into() })
                .inc();
        }
    }

    /// Records the phase of a build (`None`: the build is gone).
    pub fn set_phase(&self, uid: &str, phase: Option<Phase>) {
        let mut phases = lock(&self.phases);
        let changed = match phase {
            Some(phase) => phases.insert(uid.into(), phase) != Some(phase),
            None => phases.remove(uid).is_some(),
        };
        if changed {
            for p in PHASES {
                let n = phases.values().filter(|q| **q == p).count();
                self.builds
                    .get_or_create(&PhaseLabels { phase: phase_name(p) })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            let waiting = phases
                .values()
                .filter(|q| matches!(q, Phase::Waiting | Phase::Pending))
                .count();
            self.builds_waiting.set(i64::try_from(waiting).unwrap_or(i64::MAX));
        }
    }

    /// Counts a build that just ended in `phase` for `reason`, `seconds` after its creation.
    pub fn build_finished(&self, phase: Phase, reason: &str, seconds: Option<f64>) {
        let name = phase_name(phase);
        self.builds_finished
            .get_or_create(&FinishedLabels {
                phase: name,
                reason: reason.into(),
            })
            .inc();
        if let Some(seconds) = seconds {
            self.build_duration
                .get_or_create(&PhaseLabels { phase: name })
                .observe(seconds.max(0.0));
        }
    }

    /// Records how long a platform's job queued before it started.
    pub fn job_queued(&self, seconds: i64) {
        // Seconds fit an f64 exactly far beyond any real queue time.
        #[allow(clippy::cast_precision_loss)]
        self.build_queue.observe(seconds.max(0) as f64);
    }

    /// Marks a reconcile asked for (waiting for a permit or running) until the guard drops, which
    /// counts as progress.
    pub fn reconcile_pending(self: &Arc<Self>) -> PendingReconcile {
        let mut progress = lock(&self.progress);
        // Idle time is no stall: the clock starts when work arrives.
        if progress.in_flight == 0 {
            progress.last = Instant::now();
        }
        progress.in_flight += 1;
        drop(progress);
        PendingReconcile {
            metrics: Arc::clone(self),
        }
    }

    /// How long the reconciles have made no progress while some are asked for: `None` when none
    /// is pending (an idle controller is healthy however long it has been idle).
    pub fn stalled_for(&self) -> Option<std::time::Duration> {
        let progress = lock(&self.progress);
        (progress.in_flight > 0).then(|| progress.last.elapsed())
    }

    /// Sets whether this replica leads, and the poller to report on while it does.
    pub fn set_leader(&self, poller: Option<JobPoller>) {
        self.leader.set(i64::from(poller.is_some()));
        if poller.is_none() {
            lock(&self.phases).clear();
            for p in PHASES {
                self.builds.get_or_create(&PhaseLabels { phase: phase_name(p) }).set(0);
            }
        }
        *lock(&self.poller) = poller;
    }

    /// An SDK interceptor counting every AWS call into `multiarch_aws_calls_total`.
    pub fn aws_interceptor(self: &Arc<Self>) -> AwsCallCounter {
        AwsCallCounter {
            metrics: Arc::clone(self),
        }
    }

    fn aws_call(&self, service: &str, operation: &str, outcome: &'static str) {
        self.aws_calls
            .get_or_create(&AwsCallLabels {
                service: service.into(),
                operation: operation.into(),
                outcome,
            })
            .inc();
    }

    /// A registry observer counting every request into `multiarch_registry_requests_total`.
    pub fn registry_observer(self: &Arc<Self>) -> Arc<dyn RequestObserver> {
        Arc::new(RegistryRequestCounter {
            metrics: Arc::clone(self),
        })
    }
}

/// Reconciles asked for and not finished, and when one last finished.
struct Progress {
    in_flight: usize,
    last: Instant,
}

/// A reconcile asked for: counted in `/healthz` until dropped (finished, failed or cancelled).
pub struct PendingReconcile {
    metrics: Arc<Metrics>,
}

impl Drop for PendingReconcile {
    fn drop(&mut self) {
        let mut progress = lock(&self.metrics.progress);
        progress.in_flight = progress.in_flight.saturating_sub(1);
        progress.last = Instant::now();
    }
}

/// Records a reconcile's duration when dropped (also when the reconcile is cancelled).
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// Counts each attempt of each AWS call by operation and outcome: `success` (2xx), `throttled`
/// (429 or a throttling error type) or `error` (any other answer, or none).
#[derive(Clone)]
pub struct AwsCallCounter {
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AwsCallCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsCallCounter")
    }
}

impl Intercept for AwsCallCounter {
    fn name(&self) -> &'static str {
        "multiarch-aws-call-metrics"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) = cfg
            .load::<Metadata>()
            .map_or(("unknown", "unknown"), |m| (m.service(), m.name()));
        let outcome = match context.response() {
            Some(response) => {
                let status = response.status().as_u16();
                let error_type = response.headers().get("x-amzn-errortype").unwrap_or_default();
                if (200..300).contains(&status) {
                    "success"
                } else if status == 429 || error_type.contains("Throttl") || error_type.contains("TooManyRequests") {
                    "throttled"
                } else {
                    "error"
                }
            }
            None => "error",
        };
        self.metrics.aws_call(service, operation, outcome);
        Ok(())
    }
}

/// Counts each attempt of each registry request by method, object and status.
struct RegistryRequestCounter {
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RegistryRequestCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryRequestCounter")
    }
}

impl RequestObserver for RegistryRequestCounter {
    fn attempted(&self, method: &Method, object: RegistryObject, status: Option<StatusCode>) {
        self.metrics
            .registry_requests
            .get_or_create(&RegistryRequestLabels {
                method: method.as_str().into(),
                object: object.as_str(),
                status: status.map_or_else(|| "none".into(), |s| s.as_u16().to_string()),
            })
            .inc();
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Waiting => "Waiting",
        Phase::Pending => "Pending",
        Phase::Building => "Building",
        Phase::Assembling => "Assembling",
        Phase::Succeeded => "Succeeded",
        Phase::Failed => "Failed",
        Phase::Cancelled => "Cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_its_name() {
        let metrics = Arc::new(Metrics::new());
        {
            let _timer = metrics.reconcile_timer();
        }
        metrics.reconciled(None);
        metrics.reconciled(Some("AwsThrottled"));
        metrics.set_phase("u1", Some(Phase::Building));
        metrics.set_phase("u2", Some(Phase::Building));
        metrics.set_phase("u1", Some(Phase::Succeeded));
        metrics.aws_call("Batch", "DescribeJobs", "throttled");
        let observer = metrics.registry_observer();
        observer.attempted(&Method::PUT, RegistryObject::Manifest, Some(StatusCode::CREATED));
        observer.attempted(&Method::GET, RegistryObject::Blob, None);
        let text = metrics.encode().unwrap();
        for line in [
            "multiarch_reconciles_total{result=\"success\"} 1",
            "multiarch_reconciles_total{result=\"error\"} 1",
            "multiarch_reconcile_errors_total{error=\"AwsThrottled\"} 1",
            "multiarch_reconcile_duration_seconds_count 1",
            "multiarch_builds{phase=\"Building\"} 1",
            "multiarch_builds{phase=\"Succeeded\"} 1",
            "multiarch_builds{phase=\"Failed\"} 0",
            "multiarch_aws_calls_total{service=\"Batch\",operation=\"DescribeJobs\",outcome=\"throttled\"} 1",
            "multiarch_registry_requests_total{method=\"PUT\",object=\"manifest\",status=\"201\"} 1",
            "multiarch_registry_requests_total{method=\"GET\",object=\"blob\",status=\"none\"} 1",
            "multiarch_poller_lag_seconds 0",
            "multiarch_leader 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        metrics.set_phase("u2", None);
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains("multiarch_builds{phase=\"Building\"} 0")
        );
    }
}
