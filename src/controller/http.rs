//! `/metrics`, `/healthz` and `/readyz`.
//!
//! - `/healthz` is 200 while the process runs, including while it waits for the CRD (a restart
//!   would not make the CRD appear) and while it has nothing to do; 503 when reconciles are asked
//!   for and none has finished for longer than the stall bound (`--health-stall-seconds`, default
//!   10 minutes: far above a reconcile's time, whose slowest calls time out well before), so the
//!   kubelet restarts a replica whose reconcile loop is stuck. Healthy again as soon as one
//!   finishes.
//! - `/readyz` is 200 once the CRD is served, on the leader and on standby replicas alike, so a
//!   rolling update can finish; 503 before.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};

use super::metrics::Metrics;

/// What the endpoints report.
pub struct Health {
    crd_ready: AtomicBool,
    stall_bound: std::time::Duration,
}

/// How long reconciles may make no progress while some are asked for before `/healthz` fails,
/// unless `--health-stall-seconds` says otherwise.
pub const DEFAULT_STALL_BOUND: std::time::Duration = std::time::Duration::from_secs(600);

impl Default for Health {
    fn default() -> Self {
        Health::with_stall_bound(DEFAULT_STALL_BOUND)
    }
}

impl Health {
    /// Health whose `/healthz` fails after `stall_bound` without progress while work is pending.
    pub fn with_stall_bound(stall_bound: std::time::Duration) -> Self {
        Health {
            crd_ready: AtomicBool::new(false),
            stall_bound,
        }
    }

    pub fn set_crd_ready(&self) {
        self.crd_ready.store(true, Ordering::Relaxed);
    }

    pub fn crd_ready(&self) -> bool {
        self.crd_ready.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Endpoints {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The router of the three endpoints.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .with_state(Endpoints { metrics, health })
}

/// Serves the endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_text(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    match endpoints.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode the metrics: {e}\n"),
        ),
    }
}

async fn healthz(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    match endpoints.metrics.stalled_for() {
        Some(stalled) if stalled > endpoints.health.stall_bound => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "reconciles are pending and none finished for {}s (bound {}s)\n",
                stalled.as_secs(),
                endpoints.health.stall_bound.as_secs()
            ),
        ),
        _ => (StatusCode::OK, "ok\n".to_string()),
    }
}

async fn ready(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    if endpoints.health.crd_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the MultiArchBuild CRD (multiarchbuilds.multiarch.dev) to be served\n",
        )
    }
}
