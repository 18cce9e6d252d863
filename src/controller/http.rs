//! `/metrics`, `/healthz` and `/readyz`.
//!
//! - `/healthz` is 200 while the process runs, including while it waits for the CRD: a restart
//!   would not make the CRD appear.
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
#[derive(Default)]
pub struct Health {
    crd_ready: AtomicBool,
}

impl Health {
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
        .route("/healthz", get(|| async { "ok\n" }))
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
