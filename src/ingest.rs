//! HTTP ingest for upstream systems that speak webhooks rather than AMQP: `POST /v1/jobs` on
//! `INGEST_ADDR` (off unless set).
//!
//! The body is one job (a JSON object) or an NDJSON list of jobs. The caller authenticates with
//! `Authorization: Bearer <INGEST_TOKEN>` (compared in constant time). Every job is validated by
//! the worker's decoder (the rules of `schemas/`) before anything is published: one invalid job
//! refuses the request (400, each problem named by its line), so a caller never has to work out
//! which half of a request went through. Valid requests are published to the jobs exchange with
//! publisher confirms and answered 202 with the job ids.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use lapin::BasicProperties;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Publisher};
use crate::config::{Secret, ServiceUrl};
use crate::job::{self, Limits};

/// What the ingest endpoint needs.
#[derive(Debug)]
pub struct Ingest {
    pub token: Secret,
    pub amqp_url: ServiceUrl,
    pub jobs_exchange: String,
    pub limits: Limits,
    /// A confirm-mode channel, opened on first use and again after a broker failure.
    publisher: Mutex<Option<(lapin::Connection, Publisher)>>,
}

impl Ingest {
    pub fn new(token: Secret, amqp_url: ServiceUrl, jobs_exchange: String, limits: Limits) -> Self {
        Self {
            token,
            amqp_url,
            jobs_exchange,
            limits,
            publisher: Mutex::new(None),
        }
    }

    async fn publish(&self, jobs: &[(String, Vec<u8>, String)]) -> Result<(), broker::BrokerError> {
        let mut slot = self.publisher.lock().await;
        let usable = matches!(&*slot, Some((connection, _)) if connection.status().connected());
        if !usable {
            let connection = broker::connect(&self.amqp_url).await?;
            let publisher = Publisher::open(&connection).await?;
            *slot = Some((connection, publisher));
        }
        let (_, publisher) = slot.as_ref().expect("opened above");
        let properties = |job_id: &str| {
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(job_id.into())
        };
        let messages = jobs.iter().map(|(kind, body, job_id)| {
            (
                self.jobs_exchange.as_str(),
                kind.as_str(),
                body.as_slice(),
                properties(job_id),
            )
        });
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
    // A request carries at most what one batch message may.
    let limit = ingest.limits.max_batch_bytes;
    let app = Router::new()
        .route("/v1/jobs", post(accept))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ingest);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Whether `given` equals `expected`, in time that does not depend on where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    // Hashing first gives both sides the same length, so the length is not revealed either.
    let digest = |s: &str| <sha2::Sha256 as sha2::Digest>::digest(s.as_bytes());
    let (a, b) = (digest(given), digest(expected));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

async fn accept(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Bytes) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| same_secret(t.trim(), ingest.token.expose())) {
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
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_body", "the body is not UTF-8");
    };
    // One JSON object, or NDJSON (one job per line).
    let lines: Vec<(usize, &str)> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(_)) => vec![(1, text.trim())],
        _ => text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty())
            .collect(),
    };
    if lines.is_empty() {
        return error(StatusCode::BAD_REQUEST, "invalid_body", "no jobs in the body");
    }
    let mut jobs = Vec::with_capacity(lines.len());
    let mut problems = Vec::new();
    for (line, raw) in lines {
        match job::decode_with(raw.as_bytes(), &ingest.limits) {
            Ok(job) => jobs.push((
                job.kind.as_str().to_string(),
                raw.as_bytes().to_vec(),
                job.job_id.to_string(),
            )),
            Err(err) => problems.push(json!({
                "line": line,
                "job_id": err.job_id,
                "code": err.code,
                "message": err.message,
            })),
        }
    }
    if !problems.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": {"code": "invalid_jobs", "message": format!("{} invalid job(s); nothing was published", problems.len())},
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
    let ids: Vec<&str> = jobs.iter().map(|(_, _, id)| id.as_str()).collect();
    tracing::info!(jobs = ids.len(), "Accepted jobs over HTTP.");
    (StatusCode::ACCEPTED, Json(json!({"accepted": ids}))).into_response()
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
}
