//! The admin endpoints on `ADMIN_ADDR` (loopback by default), for probes and operators:
//!
//! - `GET /healthz`: 200 while the process serves requests (liveness).
//! - `GET /metrics`: Prometheus text format ([`crate::telemetry`] lists the metrics).
//! - `GET /readyz`: 200 when the worker consumes both lanes and Redis answers; 503 with the reason
//!   otherwise; also how many 429s Genesys answered (`genesys_throttled`), counted apart from
//!   errors (readiness: without Redis the worker cannot deduplicate, so it must not be sent
//!   work).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::limit::{Budget, Lane};
use crate::store::Store;

/// What readiness is made of.
#[derive(Debug)]
pub struct Health {
    /// Per lane (single, batch): whether its consumer is consuming.
    consuming: [AtomicBool; 2],
    store: Store,
    /// The Genesys budget, whose 429 count is reported apart from errors.
    budget: Option<Arc<Budget>>,
}

impl Health {
    pub fn new(store: Store) -> Self {
        Self {
            consuming: [AtomicBool::new(false), AtomicBool::new(false)],
            store,
            budget: None,
        }
    }

    pub fn with_budget(mut self, budget: Arc<Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Notes whether `lane`'s consumer is consuming; the worker is ready when both are.
    pub fn set_consuming(&self, lane: Lane, consuming: bool) {
        self.consuming[lane.index()].store(consuming, Ordering::Relaxed);
    }

    /// No lane consumes (the broker connection is gone).
    pub fn stopped_consuming(&self) {
        for lane in &self.consuming {
            lane.store(false, Ordering::Relaxed);
        }
    }
}

/// Binds `addr`; the caller serves the listener with [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin endpoints on a thread and runtime of their own until `shutdown` is
/// cancelled: a probe gets a prompt answer (a 503 with the reason, at worst) however busy or
/// stuck the worker's own runtime is, during a Redis outage included.
///
/// # Errors
/// When the listener cannot be handed to the admin thread.
pub fn spawn(
    listener: TcpListener,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>> {
    let listener = listener.into_std()?;
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener)?;
            serve(listener, health, shutdown).await
        })
    })
}

/// Serves the admin endpoints until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::telemetry::render(),
                )
            }),
        )
        .with_state(health);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn ready(State(health): State<Arc<Health>>) -> (StatusCode, Json<serde_json::Value>) {
    let consuming = health.consuming.iter().all(|lane| lane.load(Ordering::Relaxed));
    let redis = match tokio::time::timeout(Duration::from_secs(1), health.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("redis did not answer within 1 s".to_string()),
    };
    let ready = consuming && redis.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "consuming": consuming,
        "redis": redis.err().unwrap_or_else(|| "ok".into()),
        "genesys_throttled": health.budget.as_ref().map(|b| b.throttled()),
    });
    (status, Json(body))
}
