//! The admin endpoints on `ADMIN_ADDR` (loopback by default), for probes and operators:
//!
//! - `GET /healthz`: 200 while the process serves requests (liveness).
//! - `GET /metrics`: Prometheus text format ([`crate::telemetry`] lists the metrics).
//! - `GET /readyz`: 200 when the worker consumes both lanes and Redis answers; 503 with the reason
//!   otherwise; also how many 429s Genesys answered (`genesys_throttled`), counted apart from
//!   errors (readiness: without Redis the worker cannot deduplicate, so it must not be sent
//!   work).
//! - the operators' console (`/console…`) and its JSON API (`/api/…`): [`crate::console`];
//!   changes need `ADMIN_TOKEN`.
//!
//! [`serve_bounded`] serves this and the HTTP ingest alike, within [`Bounds`]: a slow, idle or
//! stalled client cannot hold a connection, or the memory behind it, for long.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use crate::lane::Lane;
use crate::limit::Budget;
use crate::store::Store;

/// What readiness is made of.
#[derive(Debug)]
pub struct Health {
    /// Per lane (single, batch): whether its consumer is consuming.
    consuming: [AtomicBool; 2],
    store: Store,
    /// The Genesys budgets (one per OAuth client of the pool), whose 429 counts are reported
    /// apart from errors.
    budgets: Vec<Arc<Budget>>,
}

impl Health {
    pub fn new(store: Store) -> Self {
        Self {
            consuming: [AtomicBool::new(false), AtomicBool::new(false)],
            store,
            budgets: Vec::new(),
        }
    }

    pub fn with_budget(mut self, budget: Arc<Budget>) -> Self {
        self.budgets.push(budget);
        self
    }

    /// Every OAuth client's budget, in the pool's order.
    pub fn with_budgets(mut self, budgets: impl IntoIterator<Item = Arc<Budget>>) -> Self {
        self.budgets.extend(budgets);
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

    /// Whether both lanes consume.
    pub fn consuming(&self) -> bool {
        self.consuming.iter().all(|lane| lane.load(Ordering::Relaxed))
    }

    /// The Genesys budgets, one per OAuth client.
    pub fn budgets(&self) -> &[Arc<Budget>] {
        &self.budgets
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
    pages: Pages,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>> {
    let listener = listener.into_std()?;
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener)?;
            serve(listener, health, pages, shutdown).await
        })
    })
}

/// More routes for the admin server (the console: `crate::console::Console::pages`), built on
/// its runtime, so whatever they start there runs beside the probes, not on the worker's.
pub type Pages = Box<dyn FnOnce(CancellationToken) -> Router + Send>;

/// Serves the admin endpoints and `pages` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    pages: Pages,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let pages = pages(shutdown.clone());
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
        .with_state(health)
        .merge(pages);
    serve_bounded(listener, app, ADMIN_BOUNDS, shutdown).await
}

/// The admin server's bounds: probes and scrapes are small GETs from a few clients.
const ADMIN_BOUNDS: Bounds = Bounds {
    header_read: Duration::from_secs(5),
    body_idle: Duration::from_secs(5),
    request: Duration::from_secs(10),
    max_connections: 64,
};

/// How long a client may take, and how many may be connected at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// From a connection's start, or from the end of its last response, until a request's
    /// headers are in. hyper has no separate keep-alive timeout: this one also closes idle
    /// connections.
    pub header_read: Duration,
    /// Longest pause while a request body is read (the handler then sees a `TimeoutError`).
    pub body_idle: Duration,
    /// A whole request, until its response starts (408 beyond).
    pub request: Duration,
    /// Connections served at once; more wait in the listen backlog, so the memory behind
    /// connections is bounded by this times [`MAX_BUF_SIZE`].
    pub max_connections: usize,
}

/// A connection's read buffer at most, headers included (hyper's default is 400 KiB).
const MAX_BUF_SIZE: usize = 64 * 1024;

/// How long in-flight requests may finish once shutdown is asked; then their connections are
/// dropped.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` within `bounds` until `shutdown` is cancelled.
///
/// hyper's connection builder directly rather than `axum::serve`, which has no header-read
/// timeout.
pub(crate) async fn serve_bounded(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = router
        .layer(RequestBodyTimeoutLayer::new(bounds.body_idle))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            bounds.request,
        ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read)
        .max_buf_size(MAX_BUF_SIZE);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    // Connections still open after the drain end with this function, however it ends.
    let abandon = CancellationToken::new();
    let _abandon = abandon.clone().drop_guard();
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) if is_connection_error(&err) => continue,
                Err(err) => {
                    // Out of file descriptors, say: pause rather than spin.
                    tracing::warn!(error.message = %err, "Could not accept a connection.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let abandon = abandon.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = connection => if let Err(err) = result {
                    // Header timeouts and clients gone mid-request: theirs, not ours.
                    tracing::debug!(error.message = %err, "HTTP connection ended with an error.");
                },
                () = abandon.cancelled() => {}
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::debug!("HTTP connections still open after the drain are dropped.");
    }
    Ok(())
}

/// Errors about one connection, not the listener.
fn is_connection_error(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 7235). Shared by the HTTP ingest (`INGEST_TOKEN`) and the console's API (`ADMIN_TOKEN`).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `given` equals `expected`, in time that does not depend on where they differ.
pub(crate) fn same_secret(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    // Hashing first gives both sides the same length, so the length is not revealed either.
    let digest = |s: &str| <sha2::Sha256 as sha2::Digest>::digest(s.as_bytes());
    digest(given).ct_eq(&digest(expected)).into()
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
    // The total, as before a pool; per OAuth client (by id) beside it.
    let throttled =
        (!health.budgets.is_empty()).then(|| health.budgets.iter().map(|b| b.throttled()).sum::<u64>());
    let by_client: serde_json::Map<String, serde_json::Value> = health
        .budgets
        .iter()
        .map(|b| (b.client().to_string(), json!(b.throttled())))
        .collect();
    let body = json!({
        "ready": ready,
        "consuming": consuming,
        "redis": redis.err().unwrap_or_else(|| "ok".into()),
        "genesys_throttled": throttled,
        "genesys_throttled_by_client": by_client,
    });
    (status, Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret("s3cr3t", "s3cr3t"));
        assert!(!same_secret("s3cr3t", "s3cr3T"));
        assert!(!same_secret("", "s3cr3t"));
        assert!(!same_secret("s3cr3t-longer", "s3cr3t"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let token = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer_token(&headers).map(str::to_string)
        };
        for value in ["Bearer t0k", "bearer t0k", "BEARER  t0k ", "bEaReR t0k"] {
            assert_eq!(token(value).as_deref(), Some("t0k"), "{value}");
        }
        assert_eq!(token("Basic t0k"), None);
        assert_eq!(token("Bearert0k"), None);
        assert_eq!(token("Bearer"), None);
    }
}
