//! One reconcile of one MultiArchBuild, and what to do when it fails.
//!
//! `finalizer()` is the only top-level action: `Apply` runs the engine (observe from the shared
//! poller → plan → apply, the status written by server-side apply before anything that can fail),
//! then publishes events and releases the downstream Jobs; `Cleanup` terminates the build's live
//! jobs, and gives up with a Warning event once the grace period after deletion has passed.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_config::SdkConfig;
use k8s_openapi::{
    api::core::v1::{Namespace, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions},
    core::{DeserializeGuard, error_boundary::InvalidObject},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{self, finalizer},
    },
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, warn};

use super::{
    downstream,
    events::{self, BuildEvent, reasons},
    metrics::Metrics,
};
use crate::util::lock;
use crate::{
    api::{GitSources, MultiArchBuild, MultiArchBuildPolicy, MultiArchBuildStatus, Phase, policy_violations},
    batch::{BatchError, BatchExecutor, BuildRef, JobPoller, job_name},
    cli::RegistryArgs,
    config,
    engine::{Build, Engine, EngineError, job_observations, live_job_ids},
    plan::{
        Dependencies, Dependency, JobObservation, JobState, READY, Refusal, dependency_names, expires_at, find_cycle,
        reason,
    },
    registry::RegistryClient,
    signing::Signer,
    tenancy::AllowedRegistries,
};

/// The finalizer that terminates a build's Batch jobs when it is deleted.
pub const FINALIZER: &str = "multiarch.dev/cleanup";

/// The server-side apply field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "multiarch-operator";

/// The shortest time a cleanup attempt gets, even when the grace period is over: a controller that
/// comes back after the grace period still tries once before giving up.
const MIN_CLEANUP_ATTEMPT: Duration = Duration::from_secs(10);

/// What the reconciles need from the configuration.
#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    /// Job definition for builds that set none.
    pub default_job_definition: String,
    /// How to reach registries that are not ECR.
    pub registry: RegistryArgs,
    /// How long after deletion the finalizer waits for the jobs to be terminated.
    pub cleanup_grace: Duration,
    /// Seconds after a build finished when it is deleted, for builds without
    /// `spec.ttlSecondsAfterFinished`; `None` keeps them forever.
    pub default_ttl_seconds_after_finished: Option<i64>,
    /// Reconciles at the same time, over every watched namespace.
    pub concurrency: u16,
    /// The registries builds may push to.
    pub allowed: AllowedRegistries,
    /// Signs each index and its provenance (`--signing-key`).
    pub signer: Option<Arc<Signer>>,
}

/// Everything a reconcile uses. One per leadership term.
pub struct Context {
    pub(super) client: Client,
    batch: BatchExecutor,
    ecr: aws_sdk_ecr::Client,
    poller: JobPoller,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    config: ReconcileConfig,
    /// Registry clients by registry host: they keep their tokens and connections.
    registries: Mutex<HashMap<String, RegistryClient>>,
    /// Failed reconciles in a row, by namespace/name (kube-runtime keeps no such count).
    failures: Mutex<HashMap<String, u32>>,
    /// Unreadable builds already reported, by uid, with the generation reported.
    reported_invalid: Mutex<HashMap<String, Option<i64>>>,
    /// How many times a waiting Job naming a build changed, by namespace/name (the Job watch counts).
    job_signals: Mutex<HashMap<String, u64>>,
    /// Finished builds whose gating is done, by uid, with the count of Job changes it saw: a
    /// resync of such a build lists no Job and writes no ConfigMap until a waiting Job changes.
    gated: Mutex<HashMap<String, u64>>,
    permits: Semaphore,
}

impl Context {
    /// A context whose AWS clients come from `aws`, each call counted in the metrics, with a
    /// poller sweeping every `poll_interval`. `identity` names this replica in events.
    pub fn from_aws(
        client: Client,
        aws: &SdkConfig,
        poll_interval: Duration,
        metrics: Arc<Metrics>,
        config: ReconcileConfig,
        identity: &str,
    ) -> Self {
        let counter = metrics.aws_interceptor();
        let batch = aws_sdk_batch::Client::from_conf(
            aws_sdk_batch::config::Builder::from(aws)
                .interceptor(counter.clone())
                .build(),
        );
        let logs = aws_sdk_cloudwatchlogs::Client::from_conf(
            aws_sdk_cloudwatchlogs::config::Builder::from(aws)
                .interceptor(counter.clone())
                .build(),
        );
        let ecr = aws_sdk_ecr::Client::from_conf(aws_sdk_ecr::config::Builder::from(aws).interceptor(counter).build());
        let batch = BatchExecutor::new(batch, logs);
        let poller = JobPoller::new(batch.clone(), crate::batch::PollerConfig::with_interval(poll_interval));
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity.into()),
            },
        );
        Context {
            client,
            batch,
            ecr,
            poller,
            recorder,
            metrics,
            permits: Semaphore::new(usize::from(config.concurrency.max(1))),
            config,
            registries: Mutex::default(),
            failures: Mutex::default(),
            reported_invalid: Mutex::default(),
            job_signals: Mutex::default(),
            gated: Mutex::default(),
        }
    }

    /// Counts a change of a suspended Job waiting on `key` (namespace/name), as the Job watch does.
    pub fn job_changed(&self, key: &str) {
        *lock(&self.job_signals).entry(key.into()).or_default() += 1;
    }

    /// The count of Job changes about `key` (namespace/name) so far.
    pub(super) fn job_signal(&self, key: &str) -> u64 {
        lock(&self.job_signals).get(key).copied().unwrap_or_default()
    }

    /// Whether the finished build `uid` was gated and no waiting Job changed since (`signal`).
    pub(super) fn gating_done(&self, uid: &str, signal: u64) -> bool {
        lock(&self.gated).get(uid) == Some(&signal)
    }

    /// Remembers that the finished build `uid` is gated, as of `signal`.
    pub(super) fn gated(&self, uid: &str, signal: u64) {
        lock(&self.gated).insert(uid.into(), signal);
    }

    /// The shared job poller (the controller runs it and turns its changes into reconciles).
    pub fn poller(&self) -> &JobPoller {
        &self.poller
    }

    /// The registry client for a repository's host, made once per host.
    fn registry(&self, repository: &str) -> RegistryClient {
        let host = repository.split('/').next().unwrap_or_default().to_owned();
        lock(&self.registries)
            .entry(host)
            .or_insert_with(|| {
                config::registry_with(
                    &self.config.registry,
                    repository,
                    || self.ecr.clone(),
                    Some(self.metrics.registry_observer()),
                )
            })
            .clone()
    }

    /// Publishes an event; a failure is logged, never fatal (events are best effort).
    pub(super) async fn publish(&self, regarding: &ObjectReference, event: &BuildEvent) {
        let published = self
            .recorder
            .publish(
                &Event {
                    type_: event.type_,
                    reason: event.reason.clone(),
                    // Notes quote build output and registry answers: no terminal control codes.
                    note: Some(crate::util::clean_text(&event.note)),
                    action: event.action.into(),
                    secondary: None,
                },
                regarding,
            )
            .await;
        if let Err(error) = published {
            warn!(%error, reason = %event.reason, "cannot publish the event");
        }
    }

    fn failed_again(&self, key: &str) -> u32 {
        let mut failures = lock(&self.failures);
        let n = failures.entry(key.into()).or_default();
        *n = n.saturating_add(1);
        *n
    }
}

/// Why a reconcile failed. Each error has a [`label`](Error::label): the failures metric's label
/// and the Warning event's reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot {action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the object has no name or no uid")]
    Unnamed,
}

/// How a failure is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Nothing will change until the object does (a spec AWS can never accept).
    AwaitChange,
    /// AWS or the API server asked us to slow down: exponential backoff with jitter.
    Throttled,
    /// A timeout, a 5xx, a conflict: try again soon.
    Transient,
    /// AWS refused the request (a queue that does not exist, access denied): retry slowly, the
    /// configuration may be fixed meanwhile.
    Rejected,
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::Engine(e) => e.label(),
            Error::Kube { source, .. } if is_throttled(source) => "KubeThrottled",
            Error::Kube { .. } => "KubeApiFailed",
            Error::Unnamed => "InvalidObject",
        }
    }

    pub fn retry(&self) -> Retry {
        match self {
            Error::Engine(EngineError::Batch(e)) if e.is_throttling() => Retry::Throttled,
            Error::Engine(EngineError::Batch(e)) if e.is_transient() => Retry::Transient,
            Error::Engine(EngineError::Batch(
                BatchError::RequestTooLarge { .. }
                | BatchError::PlatformNotInSpec { .. }
                | BatchError::UnresolvedBuildArg { .. },
            )) => Retry::AwaitChange,
            Error::Engine(EngineError::Batch(_)) => Retry::Rejected,
            Error::Engine(EngineError::Registry(e)) if !e.is_transient() => Retry::Rejected,
            Error::Engine(_) => Retry::Transient,
            Error::Kube { source, .. } if is_throttled(source) => Retry::Throttled,
            Error::Kube { .. } => Retry::Transient,
            Error::Unnamed => Retry::AwaitChange,
        }
    }

    fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }

    fn from_finalizer(error: finalizer::Error<Error>) -> Error {
        match error {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            finalizer::Error::AddFinalizer(source) => Error::Kube {
                action: "add the finalizer",
                source,
            },
            finalizer::Error::RemoveFinalizer(source) => Error::Kube {
                action: "remove the finalizer",
                source,
            },
            finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer => Error::Unnamed,
        }
    }
}

fn is_throttled(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 429)
}

/// The delay before retrying after the `failures`-th failure in a row, or `None` to wait for a
/// change. `jitter` in [0, 1) spreads retries ("equal jitter": between half the delay and all of it).
pub fn backoff(retry: Retry, failures: u32, jitter: f64) -> Option<Duration> {
    let (base, max) = match retry {
        Retry::AwaitChange => return None,
        Retry::Throttled => (Duration::from_secs(5), Duration::from_secs(300)),
        Retry::Transient => (Duration::from_secs(1), Duration::from_secs(60)),
        Retry::Rejected => (Duration::from_secs(30), Duration::from_secs(600)),
    };
    Some(crate::backoff::equal_jitter(base, max, failures, jitter))
}

/// kube-runtime's error policy: requeue by error class, backing off per object.
pub fn error_policy(object: Arc<DeserializeGuard<MultiArchBuild>>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any());
    let failures = ctx.failed_again(&key);
    match backoff(error.retry(), failures, fastrand::f64()) {
        Some(delay) => {
            debug!(%key, failures, ?delay, label = error.label(), "retrying after a failure");
            Action::requeue(delay)
        }
        None => Action::await_change(),
    }
}

/// Reconciles one build, in a span naming it (every log line carries its namespace and name).
pub async fn reconcile(object: Arc<DeserializeGuard<MultiArchBuild>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let span = tracing::info_span!("reconcile", namespace = %namespace, build = %name);
    async move {
        // Counted as pending work for /healthz from now, also while it waits for a permit.
        let _pending = ctx.metrics.reconcile_pending();
        // Closed only when the context is dropped, which cannot happen while we hold it.
        let _permit = ctx.permits.acquire().await;
        let _timer = ctx.metrics.reconcile_timer();
        let result = reconcile_build(&namespace, &name, &ctx).await;
        match &result {
            Ok(action) => {
                ctx.metrics.reconciled(None);
                lock(&ctx.failures).remove(&format!("{namespace}/{name}"));
                debug!(?action, "reconciled");
            }
            Err(error @ Error::Engine(EngineError::StatusConflict(_))) => {
                // Not a failure anyone needs to see: the next reconcile reads the newer status.
                ctx.metrics.reconciled(Some(error.label()));
                debug!(%error, "status conflict; reading the build again");
            }
            Err(error) => {
                ctx.metrics.reconciled(Some(error.label()));
                warn!(%error, label = error.label(), "reconcile failed");
                let event = BuildEvent::new(EventType::Warning, error.label(), "Reconcile", error.to_string());
                ctx.publish(&object.object_ref(&()), &event).await;
            }
        }
        result
    }
    .instrument(span)
    .await
}

async fn reconcile_build(namespace: &str, name: &str, ctx: &Context) -> Result<Action, Error> {
    // The watch cache may lag our own status writes: read the build afresh.
    let guarded: Api<DeserializeGuard<MultiArchBuild>> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(latest) = guarded.get_opt(name).await.map_err(Error::kube("read the build"))? else {
        return Ok(Action::await_change());
    };
    match latest.0 {
        Err(invalid) => unreadable(&guarded, invalid, ctx).await,
        Ok(build) => {
            let api: Api<MultiArchBuild> = Api::namespaced(ctx.client.clone(), namespace);
            finalizer(&api, FINALIZER, Arc::new(build), |event| async move {
                match event {
                    finalizer::Event::Apply(build) => apply(&build, ctx).await,
                    finalizer::Event::Cleanup(build) => cleanup(&build, ctx).await,
                }
            })
            .await
            .map_err(Error::from_finalizer)
        }
    }
}

/// Steps the build, then reports and gates.
async fn apply(build: &MultiArchBuild, ctx: &Context) -> Result<Action, Error> {
    let reference = BuildRef::of(build).ok_or(Error::Unnamed)?;
    let previous = build.status.clone().unwrap_or_default();
    for id in live_job_ids(&previous) {
        ctx.poller.watch(&reference, &id);
    }
    let jobs = job_observations(&previous, |id| {
        ctx.poller
            .snapshot(id)
            .map(JobObservation::Seen)
            .or_else(|| ctx.poller.is_missing(id).then_some(JobObservation::Missing))
    });
    let engine = Engine {
        batch: ctx.batch.clone(),
        registry: ctx.registry(&build.spec.output.repository),
        default_job_definition: ctx.config.default_job_definition.clone(),
        signer: ctx.config.signer.clone(),
    };
    let api: Api<MultiArchBuild> = Api::namespaced(ctx.client.clone(), &reference.namespace);
    let stored: Arc<Mutex<Option<MultiArchBuildStatus>>> = Arc::default();
    // Every write names the version it was planned from: a conflict means re-read and re-plan.
    let version = Arc::new(Mutex::new(build.metadata.resource_version.clone()));
    let step = engine
        .step(
            &Build {
                reference: &reference,
                spec: &build.spec,
                git_sources: GitSources::Remote,
                generation: build.metadata.generation,
                refusal: refusal(build, &previous, ctx).await?,
                dependencies: dependencies(build, &previous, ctx).await?,
            },
            previous.clone(),
            jobs,
            Timestamp::now,
            |status| {
                let (api, name, stored) = (api.clone(), reference.name.clone(), Arc::clone(&stored));
                let version = Arc::clone(&version);
                async move {
                    let expected = lock(&version).clone();
                    let written = write_status(&api, &name, &status_patch(&status), expected.as_deref())
                        .await
                        .map_err(|e| match e {
                            kube::Error::Api(ref s) if s.code == 409 => EngineError::StatusConflict(e.to_string()),
                            e => EngineError::Persist(e.to_string()),
                        })?;
                    *lock(&version) = written;
                    *lock(&stored) = Some(status);
                    Ok(())
                }
            },
        )
        .await;

    // Report what was stored, also when a later action failed, and watch the jobs it records.
    let current = lock(&stored).take().unwrap_or_else(|| previous.clone());
    for id in live_job_ids(&current) {
        ctx.poller.watch(&reference, &id);
    }
    let regarding = build.object_ref(&());
    for event in events::transitions(&build.spec, &previous, &current) {
        ctx.publish(&regarding, &event).await;
    }
    ctx.metrics.set_phase(&reference.uid, current.phase);
    record_outcome(build, &previous, &current, &ctx.metrics);
    let stepped = step?;
    let status = stepped.status;

    let mut released = build.clone();
    released.status = Some(status.clone());
    downstream::release(&released, ctx).await?;
    if status.phase.is_some_and(Phase::is_terminal) && live_job_ids(&status).is_empty() {
        ctx.poller.forget_build(&reference);
    }
    // Retention: the planner's rule says when; the waiting Jobs were released first.
    let expires = expires_at(&build.spec, &status, ctx.config.default_ttl_seconds_after_finished);
    let now = Timestamp::now();
    if let Some(at) = expires.filter(|at| *at <= now) {
        expire(build, &reference, &status, at, ctx).await?;
        return Ok(Action::await_change());
    }
    let wake_at = match (stepped.wake_at, expires) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(match requeue_after(wake_at, now) {
        Some(delay) => Action::requeue(delay),
        None => Action::await_change(),
    })
}

/// Deletes a build whose `ttlSecondsAfterFinished` (or the controller's default) has passed since
/// it finished, with an event; only this very object (uid precondition). The finalizer then runs as
/// for any deletion: a finished build has no live job, so it terminates nothing.
async fn expire(
    build: &MultiArchBuild,
    reference: &BuildRef,
    status: &MultiArchBuildStatus,
    expired_at: Timestamp,
    ctx: &Context,
) -> Result<(), Error> {
    let finished = status.completion_time.as_ref().map_or(expired_at, |t| t.0);
    let ttl = expired_at.duration_since(finished).as_secs();
    let note = format!("deleted: finished at {finished}, {ttl}s (ttlSecondsAfterFinished) ago");
    info!(%finished, ttl, "deleting the finished build: its time to live is over");
    let event = BuildEvent::new(EventType::Normal, reasons::EXPIRED, "Delete", note);
    ctx.publish(&build.object_ref(&()), &event).await;
    let api: Api<MultiArchBuild> = Api::namespaced(ctx.client.clone(), &reference.namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(reference.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&reference.name, &params).await {
        Ok(_) => Ok(()),
        // Already gone, or another object of the same name by now.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(source) => Err(Error::kube("delete the expired build")(source)),
    }
}

/// Counts what changed between the stored statuses in the metrics: a build that just ended (by
/// phase and the `Succeeded` condition's reason, with its duration from creation), and each
/// platform job that just started (its queue time).
fn record_outcome(
    build: &MultiArchBuild,
    previous: &MultiArchBuildStatus,
    current: &MultiArchBuildStatus,
    metrics: &Metrics,
) {
    if let Some(phase) = current.phase.filter(|p| p.is_terminal())
        && !previous.phase.is_some_and(Phase::is_terminal)
    {
        let reason = current
            .conditions
            .iter()
            .find(|c| c.type_ == crate::plan::SUCCEEDED)
            .map_or("", |c| c.reason.as_str());
        let seconds = match (&build.metadata.creation_timestamp, &current.completion_time) {
            (Some(created), Some(ended)) => Some(ended.0.duration_since(created.0).as_secs_f64()),
            _ => None,
        };
        metrics.build_finished(phase, reason, seconds);
    }
    for platform in &current.platforms {
        let before = previous.platforms.iter().find(|p| p.platform == platform.platform);
        if let Some(seconds) = platform.queued_seconds
            && before.is_none_or(|p| p.queued_seconds.is_none())
        {
            metrics.job_queued(seconds);
        }
    }
}

/// Why this build may not run here: its registry is not allowed, or a MultiArchBuildPolicy that
/// selects its namespace forbids what it asks. Looked at only until something was submitted (a
/// policy made later does not stop a running build), so a running build costs no API call here.
async fn refusal(
    build: &MultiArchBuild,
    status: &MultiArchBuildStatus,
    ctx: &Context,
) -> Result<Option<Refusal>, Error> {
    let submitted = status
        .platforms
        .iter()
        .any(|p| p.job_id.is_some() || p.submitted_at.is_some());
    if submitted || status.phase.is_some_and(Phase::is_terminal) {
        return Ok(None);
    }
    if let Some(message) = ctx.config.allowed.spec_refusal(&build.spec) {
        return Ok(Some(Refusal {
            reason: reason::REGISTRY_NOT_ALLOWED,
            message,
        }));
    }
    let namespace = build.namespace().unwrap_or_default();
    let policies: Api<MultiArchBuildPolicy> = Api::all(ctx.client.clone());
    let policies = match policies.list(&ListParams::default()).await {
        Ok(list) => list.items,
        // No policy CRD installed: no policy.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
        Err(source) => return Err(Error::kube("list the MultiArchBuildPolicies")(source)),
    };
    if policies.is_empty() {
        return Ok(None);
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let mut labels = namespaces
        .get_opt(&namespace)
        .await
        .map_err(Error::kube("read the build's namespace"))?
        .and_then(|ns| ns.metadata.labels)
        .unwrap_or_default();
    // The API server sets this label on every namespace; a selector may use it.
    labels.insert("kubernetes.io/metadata.name".into(), namespace.clone());
    let violations = policy_violations(&policies, &namespace, &labels, &build.spec);
    Ok((!violations.is_empty()).then(|| Refusal {
        reason: reason::POLICY_VIOLATION,
        message: violations.join("; "),
    }))
}

/// The most builds a dependency walk reads: far more than any real chain, and a bound on the
/// API calls one reconcile can make.
const MAX_DEPENDENCY_WALK: usize = 64;

/// What the builds named in `valueFrom` look like now, and the dependency cycle through this
/// build if there is one; `None` once the values are recorded (they never change) or when the
/// build names none. Read afresh from the API server (the watch cache may lag), following the
/// dependencies of dependencies only as far as needed to find a cycle through this build.
async fn dependencies(
    build: &MultiArchBuild,
    status: &MultiArchBuildStatus,
    ctx: &Context,
) -> Result<Option<Dependencies>, Error> {
    let direct: Vec<String> = dependency_names(&build.spec).into_iter().map(str::to_owned).collect();
    if direct.is_empty() || status.inputs.is_some() || status.phase.is_some_and(Phase::is_terminal) {
        return Ok(None);
    }
    let namespace = build.namespace().unwrap_or_default();
    let name = build.name_any();
    let api: Api<DeserializeGuard<MultiArchBuild>> = Api::namespaced(ctx.client.clone(), &namespace);
    // Every build reachable from this one, by name: its dependencies (None: missing or unreadable).
    let mut graph: BTreeMap<String, Option<Vec<String>>> = BTreeMap::new();
    graph.insert(name.clone(), Some(direct.clone()));
    let mut deps = Dependencies::default();
    let mut queue: Vec<String> = direct.clone();
    while let Some(next) = queue.pop() {
        if graph.contains_key(&next) || graph.len() >= MAX_DEPENDENCY_WALK {
            continue;
        }
        let found = api
            .get_opt(&next)
            .await
            .map_err(Error::kube("read a build named in valueFrom"))?;
        let (observed, edges) = match found {
            None => (Dependency::NotFound, None),
            // Its own reconcile reports why it cannot be read; meanwhile it is waited for.
            Some(DeserializeGuard(Err(_))) => (Dependency::Running(None), None),
            Some(DeserializeGuard(Ok(other))) => {
                let edges: Vec<String> = dependency_names(&other.spec).into_iter().map(str::to_owned).collect();
                let other_status = other.status.unwrap_or_default();
                let observed = match (other_status.phase, other_status.image) {
                    (Some(Phase::Succeeded), Some(image)) => Dependency::Succeeded { image },
                    (Some(phase @ (Phase::Failed | Phase::Cancelled)), _) => Dependency::Ended {
                        phase,
                        message: other_status.message.unwrap_or_default(),
                    },
                    (phase, _) => Dependency::Running(phase),
                };
                // A dependency that already ended or resolved its own values cannot be on a cycle
                // that is still forming; stop there.
                let settled = other_status.inputs.is_some() || matches!(observed, Dependency::Succeeded { .. });
                (observed, (!settled).then_some(edges))
            }
        };
        if direct.contains(&next) {
            deps.builds.insert(next.clone(), observed);
        }
        queue.extend(edges.iter().flatten().cloned());
        graph.insert(next, edges);
    }
    deps.cycle = find_cycle(&name, |n| graph.get(n).cloned().flatten());
    Ok(Some(deps))
}

/// How long until the planner's wake-up (a deadline, a grace period ending), a second late so the
/// planner sees it passed. Job changes and object changes trigger every other reconcile.
pub fn requeue_after(wake_at: Option<Timestamp>, now: Timestamp) -> Option<Duration> {
    let wait = now.duration_until(wake_at?).max(SignedDuration::ZERO) + SignedDuration::from_secs(1);
    Duration::try_from(wait).ok()
}

/// The status as a server-side apply body.
fn status_patch(status: &MultiArchBuildStatus) -> serde_json::Value {
    serde_json::to_value(status).unwrap_or_default()
}

/// Writes the whole status by server-side apply under [`FIELD_MANAGER`], with force, only if the
/// object is still at `resource_version` (409 Conflict otherwise). Returns the new version.
async fn write_status<K: Resource + DeserializeOwned>(
    api: &Api<K>,
    name: &str,
    status: &serde_json::Value,
    resource_version: Option<&str>,
) -> Result<Option<String>, kube::Error> {
    let patch = json!({
        "apiVersion": MultiArchBuild::api_version(&()),
        "kind": MultiArchBuild::kind(&()),
        "metadata": {"resourceVersion": resource_version},
        "status": status,
    });
    let written = api
        .patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    debug!(phase = ?status.get("phase"), "status written");
    Ok(written.meta().resource_version.clone())
}

/// The build was deleted: terminate its live jobs, or give up after the grace period.
async fn cleanup(build: &MultiArchBuild, ctx: &Context) -> Result<Action, Error> {
    let reference = BuildRef::of(build).ok_or(Error::Unnamed)?;
    let status = build.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let deleted = build.metadata.deletion_timestamp.as_ref().map_or(now, |t| t.0);
    let deadline = cleanup_deadline(deleted, ctx);
    let budget = Duration::try_from(now.duration_until(deadline))
        .unwrap_or_default()
        .max(MIN_CLEANUP_ATTEMPT);
    let regarding = build.object_ref(&());
    let outcome = tokio::time::timeout(budget, terminate_jobs(build, &reference, &status, ctx)).await;
    let why = match outcome {
        Ok(Ok(terminated)) => {
            if !terminated.is_empty() {
                info!(jobs = ?terminated, "deleted: live jobs terminated");
                let note = format!("deleted: terminated Batch job(s) {}", terminated.join(", "));
                let event = BuildEvent::new(EventType::Normal, reasons::JOBS_TERMINATED, "TerminateJob", note);
                ctx.publish(&regarding, &event).await;
            }
            forget(&reference, ctx);
            return Ok(Action::await_change());
        }
        Ok(Err(error)) if Timestamp::now() < deadline => return Err(EngineError::from(error).into()),
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no answer from AWS within {}s", budget.as_secs()),
    };
    let live = live_job_ids(&status);
    let jobs = if live.is_empty() {
        "any job it submitted".to_string()
    } else {
        format!("job(s) {}", live.join(", "))
    };
    let note = format!(
        "deleted {}s ago and its Batch jobs could not be terminated ({why}); the finalizer is released so deletion \
         can finish: {jobs} may still run (aws batch terminate-job --job-id ...)",
        ctx.config.cleanup_grace.as_secs()
    );
    warn!(%why, "deleted: giving up terminating the jobs after the grace period");
    let event = BuildEvent::new(EventType::Warning, reasons::CLEANUP_ABANDONED, "TerminateJob", note);
    ctx.publish(&regarding, &event).await;
    forget(&reference, ctx);
    Ok(Action::await_change())
}

/// The build is gone: drop what this replica kept about it.
fn forget(reference: &BuildRef, ctx: &Context) {
    lock(&ctx.gated).remove(&reference.uid);
    ctx.poller.forget_build(reference);
    ctx.metrics.set_phase(&reference.uid, None);
    lock(&ctx.failures).remove(&reference.to_string());
}

/// Terminates the live jobs of a deleted build, including one submitted but not yet recorded (a
/// crash between SubmitJob and the status write), found by its deterministic name. Returns the ids.
async fn terminate_jobs(
    build: &MultiArchBuild,
    reference: &BuildRef,
    status: &MultiArchBuildStatus,
    ctx: &Context,
) -> Result<Vec<String>, BatchError> {
    let mut ids = live_job_ids(status);
    let running = status.start_time.is_some() && !status.phase.is_some_and(Phase::is_terminal);
    if running {
        for target in &build.spec.platforms {
            let recorded = status
                .platforms
                .iter()
                .any(|p| p.platform == target.platform && p.job_id.is_some());
            if recorded {
                continue;
            }
            let name = job_name(reference, target.platform);
            if let Some(job) = ctx.batch.find_job(&target.job_queue, &name).await?
                && !job.state.is_some_and(crate::plan::JobState::is_terminal)
            {
                ids.push(job.job_id);
            }
        }
    }
    for id in &ids {
        ctx.batch
            .terminate(id, "multiarch-operator: the MultiArchBuild was deleted")
            .await?;
    }
    Ok(ids)
}

/// A build that cannot be read as a MultiArchBuild (written by a newer or older version of the
/// controller, or edited around the CRD's validation). Its record stays whole: the problem is
/// reported as an event and, while the build has not ended, in its `Ready` condition, with every
/// other status field written back as it was read. An ended build's status is never touched. On
/// deletion the jobs its raw status records as live are terminated before the finalizer goes.
async fn unreadable(
    api: &Api<DeserializeGuard<MultiArchBuild>>,
    invalid: InvalidObject,
    ctx: &Context,
) -> Result<Action, Error> {
    let meta = &invalid.metadata;
    let name = meta.name.clone().ok_or(Error::Unnamed)?;
    let uid = meta.uid.clone().ok_or(Error::Unnamed)?;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let regarding = ObjectReference {
        api_version: Some(MultiArchBuild::api_version(&()).into()),
        kind: Some(MultiArchBuild::kind(&()).into()),
        name: Some(name.clone()),
        namespace: meta.namespace.clone(),
        uid: Some(uid.clone()),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    };
    let message = format!("cannot read the MultiArchBuild: {}", invalid.error);
    let raw: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &namespace,
        &ApiResource::erase::<MultiArchBuild>(&()),
    );
    let Some(object) = raw.get_opt(&name).await.map_err(Error::kube("read the build"))? else {
        return Ok(Action::await_change());
    };
    let mut status = object.data.get("status").cloned().unwrap_or_else(|| json!({}));
    let finalizers = meta.finalizers.clone().unwrap_or_default();
    if meta.deletion_timestamp.is_some() {
        if finalizers.iter().any(|f| f == FINALIZER) {
            let jobs = raw_live_jobs(&status);
            let why = match terminate_raw(&jobs, ctx).await {
                Ok(()) => None,
                Err(e) if cleanup_grace_left(meta.deletion_timestamp.as_ref(), ctx) => {
                    return Err(EngineError::from(e).into());
                }
                Err(e) => Some(e.to_string()),
            };
            let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
            let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": meta.resource_version}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(Error::kube("remove the finalizer"))?;
            let note = match why {
                None if jobs.is_empty() => format!("{message}; deleted: no live Batch job was recorded"),
                None => format!("{message}; deleted: terminated Batch job(s) {}", jobs.join(", ")),
                Some(why) => format!(
                    "{message}; deleted: job(s) {} could not be terminated ({why}) and may still run",
                    jobs.join(", ")
                ),
            };
            let event = BuildEvent::new(EventType::Warning, reason::INVALID_SPEC, "Cleanup", note);
            ctx.publish(&regarding, &event).await;
        }
        ctx.metrics.set_phase(&uid, None);
        return Ok(Action::await_change());
    }
    if lock(&ctx.reported_invalid).get(&uid) == Some(&meta.generation) {
        return Ok(Action::await_change());
    }
    let ended = status
        .get("phase")
        .and_then(|p| p.as_str())
        .is_some_and(|p| ["Succeeded", "Failed", "Cancelled"].contains(&p));
    warn!(error = %invalid.error, ended, "unreadable build: reported, its status kept");
    if !ended {
        set_raw_ready_false(&mut status, &message, meta.generation);
        write_status(api, &name, &status, meta.resource_version.as_deref())
            .await
            .map_err(Error::kube("write the status"))?;
    }
    let event = BuildEvent::new(EventType::Warning, reason::INVALID_SPEC, "Reconcile", message);
    ctx.publish(&regarding, &event).await;
    lock(&ctx.reported_invalid).insert(uid, meta.generation);
    Ok(Action::await_change())
}

/// Until when the finalizer of a build deleted at `deleted` tries to terminate its jobs.
fn cleanup_deadline(deleted: Timestamp, ctx: &Context) -> Timestamp {
    let grace = SignedDuration::try_from(ctx.config.cleanup_grace).unwrap_or(SignedDuration::MAX);
    deleted.checked_add(grace).unwrap_or(Timestamp::MAX)
}

/// Whether a deleted build is still within the cleanup grace period.
fn cleanup_grace_left(deleted: Option<&Time>, ctx: &Context) -> bool {
    deleted.is_none_or(|t| Timestamp::now() < cleanup_deadline(t.0, ctx))
}

/// The job ids a raw status records whose last known state is not terminal.
fn raw_live_jobs(status: &serde_json::Value) -> Vec<String> {
    let platforms = status.get("platforms").and_then(|p| p.as_array());
    platforms
        .into_iter()
        .flatten()
        .filter(|p| {
            let state = p.get("state").and_then(|s| s.as_str());
            !state.and_then(JobState::parse).is_some_and(JobState::is_terminal)
        })
        .filter_map(|p| Some(p.get("jobId")?.as_str()?.to_string()))
        .collect()
}

async fn terminate_raw(jobs: &[String], ctx: &Context) -> Result<(), BatchError> {
    for id in jobs {
        ctx.batch
            .terminate(id, "multiarch-operator: the MultiArchBuild was deleted")
            .await?;
    }
    Ok(())
}

/// Sets `Ready` False with reason InvalidSpec in a raw status, every other field left as it is.
fn set_raw_ready_false(status: &mut serde_json::Value, message: &str, generation: Option<i64>) {
    let now = Time(Timestamp::now());
    let condition = Condition {
        type_: READY.into(),
        status: "False".into(),
        reason: reason::INVALID_SPEC.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now,
    };
    let Some(fields) = status.as_object_mut() else {
        return;
    };
    let conditions = fields.entry("conditions").or_insert_with(|| json!([]));
    if let Some(list) = conditions.as_array_mut() {
        list.retain(|c| c.get("type").and_then(|t| t.as_str()) != Some(READY));
        list.push(serde_json::to_value(condition).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_by_error_class() {
        assert_eq!(backoff(Retry::AwaitChange, 1, 0.5), None);
        // Transient: 1 s, doubling to a minute.
        assert_eq!(backoff(Retry::Transient, 1, 1.0), Some(Duration::from_secs(1)));
        assert_eq!(backoff(Retry::Transient, 3, 1.0), Some(Duration::from_secs(4)));
        assert_eq!(backoff(Retry::Transient, 30, 1.0), Some(Duration::from_secs(60)));
        // Throttled: 5 s, doubling to five minutes, jittered between half and all of it.
        assert_eq!(backoff(Retry::Throttled, 1, 0.0), Some(Duration::from_millis(2500)));
        assert_eq!(backoff(Retry::Throttled, 2, 1.0), Some(Duration::from_secs(10)));
        assert_eq!(backoff(Retry::Throttled, 9, 1.0), Some(Duration::from_secs(300)));
        assert_eq!(backoff(Retry::Rejected, 1, 1.0), Some(Duration::from_secs(30)));
        assert_eq!(backoff(Retry::Rejected, 10, 1.0), Some(Duration::from_secs(600)));
    }

    #[test]
    fn errors_are_classed_and_labelled() {
        let throttled = Error::Engine(EngineError::Batch(BatchError::Throttled {
            operation: "SubmitJob",
            message: "slow down".into(),
        }));
        assert_eq!(
            (throttled.label(), throttled.retry()),
            ("AwsThrottled", Retry::Throttled)
        );
        let transient = Error::Engine(EngineError::Batch(BatchError::Transient {
            operation: "SubmitJob",
            message: "connection refused".into(),
        }));
        assert_eq!(
            (transient.label(), transient.retry()),
            ("AwsUnavailable", Retry::Transient)
        );
        let rejected = Error::Engine(EngineError::Batch(BatchError::Rejected {
            operation: "SubmitJob",
            code: "ClientException".into(),
            message: "no such queue".into(),
        }));
        assert_eq!((rejected.label(), rejected.retry()), ("AwsRejected", Retry::Rejected));
        let too_large = Error::Engine(EngineError::Batch(BatchError::RequestTooLarge {
            job_name: "j".into(),
            size: 40_000,
            limit: 30_720,
        }));
        assert_eq!(too_large.retry(), Retry::AwaitChange);
        let api = Error::Kube {
            action: "write the status",
            source: kube::Error::Api(Box::new(kube::core::Status {
                code: 429,
                ..Default::default()
            })),
        };
        assert_eq!((api.label(), api.retry()), ("KubeThrottled", Retry::Throttled));
        let persist = Error::Engine(EngineError::Persist("conflict".into()));
        assert_eq!(
            (persist.label(), persist.retry()),
            ("StatusWriteFailed", Retry::Transient)
        );
    }

    #[test]
    fn a_build_is_looked_at_again_a_second_after_the_planners_wake_up() {
        let now: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let wake = now + SignedDuration::from_secs(240);
        assert_eq!(requeue_after(Some(wake), now), Some(Duration::from_secs(241)));
        // A wake-up already passed: at once (plus the second of slack).
        let late = now + SignedDuration::from_secs(4000);
        assert_eq!(requeue_after(Some(wake), late), Some(Duration::from_secs(1)));
        assert_eq!(requeue_after(None, now), None);
    }

    #[test]
    fn a_raw_status_keeps_every_field_and_names_its_live_jobs() {
        let mut status = json!({
            "phase": "Waiting",
            "digest": "sha256:abc",
            "platforms": [
                {"platform": "linux/amd64", "jobId": "a", "state": "RUNNING"},
                {"platform": "linux/arm64", "jobId": "b", "state": "SUCCEEDED"},
                {"platform": "linux/arm64/v9", "jobId": "c", "state": "LOST"},
                {"platform": "linux/amd64/v2", "jobId": "d", "state": "SOMETHING_NEW"},
                {"platform": "linux/amd64/v3"}
            ],
            "conditions": [{"type": "Ready", "status": "False", "reason": "Building"}, {"type": "Other"}]
        });
        assert_eq!(raw_live_jobs(&status), ["a", "d"]);
        set_raw_ready_false(&mut status, "cannot read", Some(3));
        assert_eq!(status["phase"], "Waiting");
        assert_eq!(status["digest"], "sha256:abc");
        assert_eq!(status["platforms"].as_array().unwrap().len(), 5);
        let conditions = status["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1]["reason"], "InvalidSpec");
        assert_eq!(conditions[1]["observedGeneration"], 3);
    }
}
