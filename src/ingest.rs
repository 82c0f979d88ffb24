//! HTTP ingest for upstream systems that speak webhooks rather than AMQP: `POST /v1/jobs` on
//! `INGEST_ADDR` (off unless set).
//!
//! The body is one job (a JSON object) or an NDJSON list of jobs. The caller authenticates with
//! `Authorization: Bearer <INGEST_TOKEN>` (compared in constant time). Every job is validated by
//! the worker's decoder (the rules of `schemas/`) before anything is published: one invalid job
//! refuses the request (400, each problem named by its line), so a caller never has to work out
//! which half of a request went through. Valid requests are published to the jobs exchange with
//! publisher confirms and answered 202 with the job ids.
//!
//! What a caller can make the worker hold is bounded: the token is checked from the headers
//! before any of the body is read (an unauthenticated caller costs a connection and its headers,
//! 401 at once); bodies are read within a budget of [`BODY_BUDGET_MAX_BODIES`] largest bodies
//! at once; and the connection timeouts of [`BOUNDS`] apply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use lapin::BasicProperties;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::admin::{bearer_token, same_secret, serve_bounded, Bounds};
use crate::broker::{self, Publisher};
use crate::config::{Secret, ServiceUrls};
use crate::job::{self, Limits};

/// What the ingest endpoint needs.
#[derive(Debug)]
pub struct Ingest {
    pub token: Secret,
    pub amqp_url: ServiceUrls,
    pub jobs_exchange: String,
    pub limits: Limits,
    /// A confirm-mode channel, opened on first use and again after a broker failure.
    publisher: Mutex<Option<(lapin::Connection, Publisher)>>,
    budget: BodyBudget,
}

/// The ingest server's bounds. A body may take up to `request` (60 s: 16 MiB at 280 KB/s) but
/// may not pause for more than `body_idle`.
const BOUNDS: Bounds = Bounds {
    header_read: Duration::from_secs(5),
    body_idle: Duration::from_secs(10),
    request: Duration::from_secs(60),
    max_connections: 256,
};

/// How many bodies of the largest size (`MAX_BATCH_MESSAGE_BYTES`) may be held at once. A body
/// and what is made from it are held until the response, about twice its size (measured: two
/// 16 MiB bodies of 90,000 invalid jobs each took the worker from 27 to 91 MiB), so two fit
/// well within the 256 Mi the Kubernetes manifests give the worker. Publishing is one request at
/// a time anyway, so more would not add throughput.
pub const BODY_BUDGET_MAX_BODIES: usize = 2;

/// How long an authenticated request waits for room in the budget before 503: long enough to
/// ride out a burst, short enough that a caller retries rather than piling up.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// Invalid jobs detailed in a 400 at most; the message counts them all.
const MAX_PROBLEMS_LISTED: usize = 100;

/// Bytes of request body the ingest holds at once, counted in KiB permits. A request is charged
/// what it declares (`Content-Length`), or the largest body when it is chunked, so many small
/// requests go through together while the memory stays bounded.
#[derive(Debug)]
struct BodyBudget {
    permits: Arc<Semaphore>,
    total: u32,
}

impl BodyBudget {
    fn new(max_body: usize) -> Self {
        let total = kib(max_body.saturating_mul(BODY_BUDGET_MAX_BODIES))
            .min(Semaphore::MAX_PERMITS as u64)
            .min(u64::from(u32::MAX)) as u32;
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Room for `bytes` of body, or `None` when there was none within [`BUDGET_WAIT`].
    async fn admit(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let wanted = kib(bytes).clamp(1, u64::from(self.total)) as u32;
        let acquire = self.permits.clone().acquire_many_owned(wanted);
        tokio::time::timeout(BUDGET_WAIT, acquire).await.ok()?.ok()
    }
}

fn kib(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(1024)
}

impl Ingest {
    pub fn new(token: Secret, amqp_url: ServiceUrls, jobs_exchange: String, limits: Limits) -> Self {
        Self {
            token,
            amqp_url,
            jobs_exchange,
            limits,
            publisher: Mutex::new(None),
            budget: BodyBudget::new(limits.max_batch_bytes),
        }
    }

    async fn publish(&self, jobs: &[(&str, &[u8], uuid::Uuid)]) -> Result<(), broker::BrokerError> {
        let mut slot = self.publisher.lock().await;
        let usable = matches!(&*slot, Some((connection, _)) if connection.status().connected());
        if !usable {
            let connection = broker::connect(&self.amqp_url).await?;
            let publisher = Publisher::open(&connection).await?;
            *slot = Some((connection, publisher));
        }
        let (_, publisher) = slot.as_ref().expect("opened above");
        let properties = |job_id: &uuid::Uuid| {
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(job_id.to_string().into())
        };
        let messages = jobs
            .iter()
            .map(|(kind, body, job_id)| (self.jobs_exchange.as_str(), *kind, *body, properties(job_id)));
        if let Err(err) = publisher.send_all(messages).await {
            *slot = None;
            return Err(err);
        }
        Ok(())
    }
}

/// Serves `POST /v1/jobs` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new().route("/v1/jobs", post(accept)).with_state(ingest);
    serve_bounded(listener, app, BOUNDS, shutdown).await
}

/// Binds `addr`, with a warning when it is reachable from other hosts: the ingest speaks plain
/// HTTP, so the bearer token would cross the network in clear text.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().to_canonical().is_loopback() {
        tracing::warn!(
            %addr,
            "INGEST_ADDR is not a loopback address and the ingest speaks plain HTTP: put TLS in \
             front of it (a reverse proxy or a service-mesh sidecar) so the bearer token and the \
             jobs do not cross the network in clear text."
        );
    }
    TcpListener::bind(addr).await
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// Reads the body once the caller is known and there is room for it: neither an unknown caller
/// nor a crowd of callers can make the worker hold more than the budget.
async fn accept(State(ingest): State<Arc<Ingest>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if !bearer_token(&parts.headers).is_some_and(|t| same_secret(t, ingest.token.expose())) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("a valid header value"),
        );
        return response;
    }
    // A request carries at most what one batch message may.
    let limit = ingest.limits.max_batch_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return too_large(limit);
    }
    let Some(_room) = ingest.budget.admit(declared.unwrap_or(limit)).await else {
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many request bodies in progress; retry later",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, BUDGET_WAIT.as_secs().into());
        return response;
    };
    let body = match read_body(body, limit).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_body", "the body is not UTF-8");
    };
    // One JSON object, or NDJSON (one job per line). Checked without building a tree: the body
    // may be 16 MiB.
    let one_object =
        text.trim_start().starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
    let lines: Vec<(usize, &str)> = if one_object {
        vec![(1, text.trim())]
    } else {
        text.lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty())
            .collect()
    };
    if lines.is_empty() {
        return error(StatusCode::BAD_REQUEST, "invalid_body", "no jobs in the body");
    }
    let mut jobs = Vec::with_capacity(lines.len());
    let mut problems = Vec::new();
    let mut invalid = 0usize;
    for (line, raw) in lines {
        match job::decode_with(raw.as_bytes(), &ingest.limits) {
            Ok(job) => jobs.push((job.kind.as_str(), raw.as_bytes(), job.job_id)),
            Err(err) => {
                invalid += 1;
                // Listing every one of 100,000 bad lines would cost ten times the body.
                if problems.len() < MAX_PROBLEMS_LISTED {
                    problems.push(json!({
                        "line": line,
                        "job_id": err.job_id,
                        "code": err.code,
                        "message": err.message,
                    }));
                }
            }
        }
    }
    if invalid > 0 {
        let listed = if invalid > problems.len() {
            format!(" (the first {} listed)", problems.len())
        } else {
            String::new()
        };
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": {"code": "invalid_jobs", "message": format!("{invalid} invalid job(s){listed}; nothing was published")},
                "jobs": problems,
            })),
        )
            .into_response();
    }
    if let Err(err) = ingest.publish(&jobs).await {
        tracing::error!(error.message = %err, "Ingest could not publish; the caller may retry.");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            "the jobs could not be published; retry later",
        );
    }
    let ids: Vec<&uuid::Uuid> = jobs.iter().map(|(_, _, id)| id).collect();
    tracing::info!(jobs = ids.len(), "Accepted jobs over HTTP.");
    (StatusCode::ACCEPTED, Json(json!({"accepted": ids}))).into_response()
}

/// The body, up to `limit` bytes; otherwise the answer: 413 beyond the limit, 408 when the
/// caller paused longer than [`Bounds::body_idle`], 400 when it went away.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, Response> {
    let err = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => return Ok(bytes),
        Err(err) => err,
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return Err(too_large(limit));
        }
        if e.is::<tower_http::timeout::TimeoutError>() {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body stalled",
            ));
        }
        cause = e.source();
    }
    Err(error(
        StatusCode::BAD_REQUEST,
        "invalid_body",
        "the body could not be read",
    ))
}

fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!("the body is larger than MAX_BATCH_MESSAGE_BYTES ({limit} bytes)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_admits_small_bodies_together_and_bounds_large_ones() {
        let budget = BodyBudget::new(16 * 1024);
        let large = budget.admit(16 * 1024).await.unwrap();
        let small: Vec<_> = futures_util::future::join_all((0..16).map(|_| budget.admit(1000)))
            .await
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(budget.permits.available_permits(), 0);
        drop(large);
        assert_eq!(budget.permits.available_permits(), 16);
        drop(small);
        // Larger than the whole budget: charged the whole budget, never refused for good.
        assert!(budget.admit(usize::MAX).await.is_some());
    }
}
