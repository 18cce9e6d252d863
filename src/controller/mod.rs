//! The Kubernetes controller: reconciles MultiArchBuilds in every namespace (or a list), driven by
//! watch events and by the shared Batch job poller, never by a per-build timer.
//!
//! [`run`] wires it for the `controller` command: the Kubernetes client (kubeconfig or in-cluster),
//! the AWS configuration, `/metrics` `/healthz` `/readyz`, and SIGTERM. [`run_with`] is the rest,
//! and what the tests drive: wait for the CRD, stand by until this replica holds the leader Lease,
//! then lead — the poller and one kube-runtime `Controller` per scope — until the Lease is lost
//! (taken, or not renewed within its duration, whether the API server refuses or does not answer:
//! stop at once, stand by again) or shutdown is asked (finish the reconciles in flight, release
//! the Lease). The election is ours (`lease.rs`): kube-lease-manager never reported a failed
//! renewal, so a cut-off leader kept reconciling.

mod downstream;
pub mod events;
pub mod gating;
pub mod http;
mod lease;
pub mod metrics;
mod reconcile;

use std::{future::Future, sync::Arc, time::Duration};

use aws_config::SdkConfig;
use futures::{FutureExt, StreamExt, future::BoxFuture, future::Shared};
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    core::DeserializeGuard,
    runtime::{
        Controller, controller,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::watch;
use tracing::{info, warn};

pub use reconcile::{
    Context, Error, FIELD_MANAGER, FINALIZER, ReconcileConfig, Retry, backoff, error_policy, reconcile, requeue_after,
};

use crate::{api::MultiArchBuild, cli::ControllerArgs, config, tenancy::AllowedRegistries};
use gating::AFTER_LABEL;
use http::Health;
use metrics::Metrics;

/// Everything the controller is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to reconcile; all when empty.
    pub namespaces: Vec<String>,
    /// Time between two sweeps of the job poller.
    pub poll_interval: Duration,
    pub reconcile: ReconcileConfig,
    pub lease: LeaseSettings,
    /// How often to look again for a missing CRD.
    pub crd_retry: Duration,
}

/// Leader election: one Lease, held by one replica at a time.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in the Lease (and in its events).
    pub identity: String,
    /// How long a holder keeps the Lease without renewing it.
    pub duration_seconds: u64,
    /// How long before expiry the holder renews (it then retries until the Lease expires, and
    /// stops leading when it does).
    pub grace_seconds: u64,
}

impl Settings {
    pub fn from_args(args: &ControllerArgs) -> Settings {
        let identity = args.lease_identity.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| FIELD_MANAGER.into());
            let suffix: String = std::iter::repeat_with(fastrand::lowercase).take(6).collect();
            format!("{host}-{suffix}")
        });
        Settings {
            namespaces: args.namespaces.iter().filter(|n| !n.is_empty()).cloned().collect(),
            poll_interval: Duration::from_secs(args.poll_interval_seconds),
            reconcile: ReconcileConfig {
                default_job_definition: args.default_job_definition.clone(),
                registry: args.registry.clone(),
                cleanup_grace: Duration::from_secs(args.cleanup_grace_seconds),
                default_ttl_seconds_after_finished: i64::try_from(args.default_ttl_seconds_after_finished)
                    .ok()
                    .filter(|&ttl| ttl > 0),
                concurrency: args.concurrency,
                // Only the listed hosts until `run` has learnt the account.
                allowed: AllowedRegistries {
                    own: None,
                    listed: args.allow.allowed_registries.clone(),
                },
                // Opened by `run`, which has the AWS configuration a KMS key needs.
                signer: None,
            },
            lease: LeaseSettings {
                namespace: args.lease_namespace.clone(),
                name: args.lease_name.clone(),
                identity,
                duration_seconds: 15,
                grace_seconds: 5,
            },
            crd_retry: Duration::from_secs(5),
        }
    }
}

/// Asks the controller to stop; cheap to clone, every clone sees the request.
#[derive(Clone)]
pub struct Shutdown {
    requested: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            requested: Arc::new(watch::channel(false).0),
        }
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Asks every holder to stop.
    pub fn trigger(&self) {
        self.requested.send_replace(true);
    }

    /// Completes once stopping was asked.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut requested = self.requested.subscribe();
        async move {
            // The sender lives as long as `self`'s clones; an error means nobody can ask any more.
            let _ = requested.wait_for(|stop| *stop).await;
        }
    }

    /// Triggers on SIGTERM (what Kubernetes sends) or Ctrl-C.
    pub fn on_signals(&self) {
        let shutdown = self.clone();
        tokio::spawn(async move {
            let terminate = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the controller");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = terminate => info!("SIGTERM: shutting down gracefully"),
                _ = tokio::signal::ctrl_c() => info!("interrupted: shutting down gracefully"),
            }
            shutdown.trigger();
        });
    }
}

/// The `controller` command. Errors are one line, for the user.
pub async fn run(args: ControllerArgs) -> Result<(), String> {
    let mut settings = Settings::from_args(&args);
    let client = Client::try_default().await.map_err(|e| {
        format!(
            "no Kubernetes cluster: set KUBECONFIG or run in a pod ({})",
            crate::util::one_line(&e.to_string())
        )
    })?;
    let version = client.apiserver_version().await.map_err(|e| {
        format!(
            "cannot reach the Kubernetes API server of the current context (check KUBECONFIG and \
             `kubectl config current-context`): {}",
            crate::util::one_line(&e.to_string())
        )
    })?;
    info!(kubernetes = %version.git_version, "connected to the Kubernetes API server");
    let aws = config::aws().await?;
    check_credentials(&aws).await?;
    settings.reconcile.allowed = config::allowed_registries(&aws, &args.allow).await?;
    info!(allowed = ?settings.reconcile.allowed, "registries builds may push to");
    let metrics = Arc::new(Metrics::new());
    let kms = aws_sdk_kms::config::Builder::from(&aws).interceptor(metrics.aws_interceptor());
    settings.reconcile.signer = config::signer(&args.signing, kms)?;
    match &settings.reconcile.signer {
        Some(signer) => info!(key = %signer.uri(), "signing each index and its provenance"),
        None => info!("no --signing-key: provenance is attached unsigned"),
    }
    let health = Arc::new(Health::with_stall_bound(Duration::from_secs(args.health_stall_seconds)));
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|e| format!("cannot listen on {} (--http-addr): {e}", args.http_addr))?;
    info!(addr = %args.http_addr, identity = %settings.lease.identity, "serving /metrics, /healthz and /readyz");
    let server = tokio::spawn(http::serve(
        listener,
        Arc::clone(&metrics),
        Arc::clone(&health),
        shutdown.wait(),
    ));
    let result = run_with(client, &aws, settings, metrics, health, shutdown.clone()).await;
    shutdown.trigger();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "the HTTP server failed"),
        Err(e) => warn!(error = %e, "the HTTP server task failed"),
    }
    info!("stopped");
    result
}

/// Waits for the CRD, then leads whenever this replica holds the Lease, until `shutdown`.
pub async fn run_with(
    client: Client,
    aws: &SdkConfig,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> Result<(), String> {
    if !wait_for_crd(&client, &settings, &shutdown).await {
        return Ok(());
    }
    health.set_crd_ready();
    let mut elector = lease::Elector::new(client.clone(), &settings.lease)?;
    let identity = settings.lease.identity.as_str();
    loop {
        let since = tokio::select! {
            biased;
            () = shutdown.wait() => break,
            since = elector.acquire() => since,
        };
        info!(%identity, "holding the leader Lease: reconciling MultiArchBuilds");
        let ctx = Arc::new(Context::from_aws(
            client.clone(),
            aws,
            settings.poll_interval,
            Arc::clone(&metrics),
            settings.reconcile.clone(),
            identity,
        ));
        metrics.set_leader(Some(ctx.poller().clone()));
        // Whichever ends first: leading stops (and its reconciles are dropped) the moment the Lease
        // is lost, which is at the latest when its last renewal's duration is over.
        let lost = tokio::select! {
            () = lead(ctx, &settings, shutdown.wait().boxed().shared()) => None,
            lost = elector.hold(since) => Some(lost),
        };
        metrics.set_leader(None);
        let Some(lost) = lost else { break };
        warn!(%identity, reason = %lost, "lost the leader Lease: stopped reconciling, standing by");
    }
    // Released, a standby takes over at its next look instead of waiting for the Lease to expire.
    match tokio::time::timeout(Duration::from_secs(10), elector.release()).await {
        Ok(Ok(true)) => info!(%identity, "released the leader Lease"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => warn!(error = %e, "cannot release the leader Lease; it expires by itself"),
        Err(_) => warn!("the leader Lease was not released within 10 s; it expires by itself"),
    }
    Ok(())
}

/// Reconciles until `stop`: the poller and one Controller per scope, their results logged.
async fn lead(ctx: Arc<Context>, settings: &Settings, stop: Shared<BoxFuture<'static, ()>>) {
    let poller = ctx.poller().clone();
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let controllers = futures::stream::select_all(
        scopes
            .into_iter()
            .map(|scope| controller(Arc::clone(&ctx), scope, settings.reconcile.concurrency, stop.clone()).boxed()),
    )
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => tracing::trace!(%object, "reconciled"),
            Err(controller::Error::ReconcilerFailed(error, object)) => {
                tracing::debug!(%object, %error, "reconcile failed (retried by error class)");
            }
            Err(controller::Error::QueueError(error)) => warn!(%error, "watch failed; retrying"),
            Err(error) => warn!(%error, "controller error"),
        }
    });
    futures::future::join(poller.run(stop), controllers).await;
}

type Reconciled =
    Result<(ObjectRef<DeserializeGuard<MultiArchBuild>>, controller::Action), controller::Error<Error, watcher::Error>>;

/// The Controller of one scope (a namespace, or all of them): builds are reconciled when they
/// change, when one of their jobs changes (the poller), and when a suspended Job starts waiting
/// on them.
fn controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    stop: Shared<BoxFuture<'static, ()>>,
) -> impl futures::Stream<Item = Reconciled> {
    let client = ctx.client.clone();
    let (builds, jobs): (Api<DeserializeGuard<MultiArchBuild>>, Api<Job>) = match &namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client, ns)),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let job_changes = ctx.poller().subscribe().filter_map(move |change| {
        let in_scope = namespace.as_ref().is_none_or(|ns| *ns == change.owner.namespace);
        std::future::ready(in_scope.then(|| ObjectRef::new(&change.owner.name).within(&change.owner.namespace)))
    });
    let signals = Arc::clone(&ctx);
    let controller = Controller::new(builds.clone(), watcher::Config::default().any_semantic());
    let store = controller.store();
    controller
        .watches(jobs, watcher::Config::default().labels(AFTER_LABEL), move |job| {
            let builds = waiting_on(job);
            for build in &builds {
                signals.job_changed(&format!(
                    "{}/{}",
                    build.namespace.as_deref().unwrap_or_default(),
                    build.name
                ));
            }
            builds
        })
        // A build's change (created, succeeded, failed) reconciles the builds of its namespace whose
        // arguments take values from it: a lookup in the Controller's own store of builds.
        .watches(builds, watcher::Config::default().any_semantic(), move |changed| {
            dependents(&store, &changed)
        })
        .reconcile_on(job_changes)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
}

/// The builds a suspended Job waits on (`multiarch.dev/after`, `multiarch.dev/after-builds`, same
/// namespace).
fn waiting_on(job: Job) -> Vec<ObjectRef<DeserializeGuard<MultiArchBuild>>> {
    let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
    let Some(namespace) = job.namespace().filter(|_| suspended) else {
        return Vec::new();
    };
    gating::awaited(&job)
        .iter()
        .map(|build| ObjectRef::new(build).within(&namespace))
        .collect()
}

/// The builds in the namespace of `changed` that name it in `valueFrom.multiArchBuild`.
fn dependents(
    store: &Store<DeserializeGuard<MultiArchBuild>>,
    changed: &DeserializeGuard<MultiArchBuild>,
) -> Vec<ObjectRef<DeserializeGuard<MultiArchBuild>>> {
    let name = changed.name_any();
    let namespace = changed.namespace();
    store
        .state()
        .iter()
        .filter(|other| other.namespace() == namespace)
        .filter(|other| {
            other.0.as_ref().is_ok_and(|build| {
                build
                    .spec
                    .build_args
                    .iter()
                    .flatten()
                    .any(|arg| arg.dependency() == Some(name.as_str()))
            })
        })
        .map(|other| ObjectRef::from_obj(other.as_ref()))
        .collect()
}

/// Waits until MultiArchBuilds can be listed (the CRD is established); false when shut down first.
async fn wait_for_crd(client: &Client, settings: &Settings, shutdown: &Shutdown) -> bool {
    let api: Api<DeserializeGuard<MultiArchBuild>> = match settings.namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut told = false;
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => {
                if told {
                    info!("the MultiArchBuild CRD is served");
                }
                return true;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                if !told {
                    info!(
                        "waiting for the MultiArchBuild CRD (multiarchbuilds.multiarch.dev): \
                         kubectl apply -f crds/multiarch.dev_multiarchbuilds.yaml"
                    );
                    told = true;
                }
            }
            Err(e) => warn!(error = %e, "cannot list MultiArchBuilds; retrying"),
        }
        tokio::select! {
            () = shutdown.wait() => return false,
            () = tokio::time::sleep(settings.crd_retry) => {}
        }
    }
}

/// Fails at start, in one line, when the AWS credential chain has nothing.
async fn check_credentials(aws: &SdkConfig) -> Result<(), String> {
    use aws_sdk_batch::config::ProvideCredentials;
    let hint = "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run with IRSA";
    let provider = aws
        .credentials_provider()
        .ok_or_else(|| format!("no AWS credentials: {hint}"))?;
    provider.provide_credentials().await.map_err(|e| {
        let detail = aws_sdk_batch::error::DisplayErrorContext(&e).to_string();
        format!("no AWS credentials: {hint} ({})", crate::util::one_line(&detail))
    })?;
    Ok(())
}
