//! What the worker tells operators: tracing output (human-readable text, or JSON lines for
//! containers, `LOG_FORMAT`) and Prometheus metrics (served on `/metrics` by [`crate::admin`]).
//!
//! Metrics go through the `metrics` facade to one process-wide Prometheus recorder. Labels are
//! low-cardinality only: kinds, outcomes, lanes, error codes, route templates (ids replaced by
//! `{id}`), HTTP statuses, OAuth client ids (`client`, only with a pool of several clients:
//! one per client, never a secret); never a job, user or workitem id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` filter.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=warn"));
    // Colour codes only on a terminal: a file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Metric names, shared with `deploy/grafana/` and the alert examples (a test checks).
pub mod names {
    pub const JOBS: &str = "genesys_worker_jobs_total";
    pub const JOB_DURATION: &str = "genesys_worker_job_duration_seconds";
    pub const JOBS_IN_FLIGHT: &str = "genesys_worker_jobs_in_flight";
    pub const OLDEST_JOB_AGE: &str = "genesys_worker_oldest_job_age_seconds";
    pub const RETRIES: &str = "genesys_worker_retries_total";
    pub const DEAD_LETTERS: &str = "genesys_worker_dead_letters_total";
    pub const GENESYS_REQUESTS: &str = "genesys_worker_genesys_requests_total";
    pub const GENESYS_REQUEST_DURATION: &str = "genesys_worker_genesys_request_duration_seconds";
    pub const RATE_LIMIT_WAIT: &str = "genesys_worker_rate_limit_wait_seconds";
    pub const BULK_BATCH_SIZE: &str = "genesys_worker_bulk_batch_size";
    pub const USERS_READ_BATCH_SIZE: &str = "genesys_worker_users_read_batch_size";
    pub const RATE_LIMIT_CONFIGURED: &str = "genesys_worker_rate_limit_configured_per_second";
    pub const RATE_LIMIT_EFFECTIVE: &str = "genesys_worker_rate_limit_effective_per_second";
    pub const THROTTLED: &str = "genesys_worker_genesys_throttled_total";
    pub const ACK_FRAMES: &str = "genesys_worker_ack_frames_total";

    pub const ALL: [&str; 15] = [
        JOBS,
        JOB_DURATION,
        JOBS_IN_FLIGHT,
        OLDEST_JOB_AGE,
        RETRIES,
        DEAD_LETTERS,
        GENESYS_REQUESTS,
        GENESYS_REQUEST_DURATION,
        RATE_LIMIT_WAIT,
        BULK_BATCH_SIZE,
        USERS_READ_BATCH_SIZE,
        RATE_LIMIT_CONFIGURED,
        RATE_LIMIT_EFFECTIVE,
        THROTTLED,
        ACK_FRAMES,
    ];
}

/// The process's Prometheus recorder, installed on first use (several workers in one test
/// process share it).
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let seconds = [
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(names::BULK_BATCH_SIZE.into()),
                    &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(names::USERS_READ_BATCH_SIZE.into()),
                    &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 75.0, 100.0],
                )
            })
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may exist (a library user's); ours still renders what it saw.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Folds recorded histogram samples into their buckets every 5 s until `stop`: samples wait in
/// a list until then, so without it a worker nobody scrapes would grow without bound.
pub fn keep_metrics_tidy(stop: tokio_util::sync::CancellationToken) {
    let handle = metrics();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => handle.run_upkeep(),
            }
        }
    });
}

/// Renders every metric in the Prometheus text format, with the age of the oldest job in
/// flight as of now.
pub fn render() -> String {
    let handle = metrics();
    let oldest = in_flight()
        .started
        .lock()
        .expect("in-flight lock is never poisoned")
        .values()
        .min()
        .map(|started| started.elapsed().as_secs_f64())
        .unwrap_or(0.0);
    metrics::gauge!(names::OLDEST_JOB_AGE).set(oldest);
    handle.run_upkeep();
    handle.render()
}

/// Jobs being processed in this process, for the in-flight gauge and the oldest job's age.
#[derive(Debug, Default)]
pub struct InFlight {
    next: AtomicU64,
    started: Mutex<HashMap<u64, Instant>>,
}

fn in_flight() -> &'static InFlight {
    static IN_FLIGHT: OnceLock<InFlight> = OnceLock::new();
    IN_FLIGHT.get_or_init(InFlight::default)
}

/// Counts a job of `lane` in flight until the guard drops.
pub fn job_started(lane: &'static str) -> JobInFlight {
    let tracker = in_flight();
    let id = tracker.next.fetch_add(1, Ordering::Relaxed);
    tracker
        .started
        .lock()
        .expect("in-flight lock is never poisoned")
        .insert(id, Instant::now());
    metrics::gauge!(names::JOBS_IN_FLIGHT, "lane" => lane).increment(1.0);
    JobInFlight { id, lane }
}

#[derive(Debug)]
pub struct JobInFlight {
    id: u64,
    lane: &'static str,
}

impl Drop for JobInFlight {
    fn drop(&mut self) {
        in_flight()
            .started
            .lock()
            .expect("in-flight lock is never poisoned")
            .remove(&self.id);
        metrics::gauge!(names::JOBS_IN_FLIGHT, "lane" => self.lane).decrement(1.0);
    }
}

// What the worker records, one named function per event: the only place `metrics::` is called.

/// A job reached its final outcome after `seconds`.
pub fn job_finished(kind: &'static str, outcome: &'static str, seconds: f64) {
    metrics::counter!(names::JOBS, "kind" => kind, "outcome" => outcome).increment(1);
    metrics::histogram!(names::JOB_DURATION, "kind" => kind).record(seconds);
}

/// A job was dead-lettered with `code`.
pub fn dead_lettered(code: &str) {
    metrics::counter!(names::DEAD_LETTERS, "code" => code.to_string()).increment(1);
}

/// Where a retry happened: in process, through a retry queue, or reading through Genesys'
/// consistency lag.
#[derive(Debug, Clone, Copy)]
pub enum RetryStage {
    InProcess,
    RetryQueue,
    Consistency,
}

pub fn retried(stage: RetryStage) {
    let stage = match stage {
        RetryStage::InProcess => "in_process",
        RetryStage::RetryQueue => "retry_queue",
        RetryStage::Consistency => "consistency",
    };
    metrics::counter!(names::RETRIES, "stage" => stage).increment(1);
}

/// A Genesys call on `route` (a [`route_template`]) answered `status` after `seconds`.
pub fn genesys_answered(client: Option<&str>, route: &str, status: u16, seconds: f64) {
    metrics::histogram!(names::GENESYS_REQUEST_DURATION, "route" => route.to_string()).record(seconds);
    genesys_requests(client, route, status.to_string());
}

/// A Genesys call on `route` got no answer (network).
pub fn genesys_unanswered(client: Option<&str>, route: &str) {
    genesys_requests(client, route, "error".into());
}

fn genesys_requests(client: Option<&str>, route: &str, status: String) {
    let route = route.to_string();
    match client {
        Some(client) => {
            metrics::counter!(names::GENESYS_REQUESTS, "client" => client.to_string(), "route" => route, "status" => status)
                .increment(1);
        }
        None => metrics::counter!(names::GENESYS_REQUESTS, "route" => route, "status" => status).increment(1),
    }
}

// `client`: the OAuth client id a call or budget is for, as the `client` label, given only with
// a pool of several clients (`None`: one client, the series as they always were).

/// Genesys answered 429 naming `limit` (or none) on a call of route `family`.
pub fn genesys_throttled(client: Option<&str>, limit: &str, family: &str) {
    let (limit, family) = (limit.to_string(), family.to_string());
    match client {
        Some(client) => {
            metrics::counter!(names::THROTTLED, "client" => client.to_string(), "limit" => limit, "family" => family)
                .increment(1);
        }
        None => metrics::counter!(names::THROTTLED, "limit" => limit, "family" => family).increment(1),
    }
}

/// The pace of Genesys calls (of one OAuth client's budget): as configured, and as paced now.
pub fn budget_configured(client: Option<&str>, per_second: f64) {
    match client {
        Some(client) => {
            metrics::gauge!(names::RATE_LIMIT_CONFIGURED, "client" => client.to_string()).set(per_second)
        }
        None => metrics::gauge!(names::RATE_LIMIT_CONFIGURED).set(per_second),
    }
}

pub fn budget_effective(client: Option<&str>, per_second: f64) {
    match client {
        Some(client) => {
            metrics::gauge!(names::RATE_LIMIT_EFFECTIVE, "client" => client.to_string()).set(per_second)
        }
        None => metrics::gauge!(names::RATE_LIMIT_EFFECTIVE).set(per_second),
    }
}

/// A call of `lane` waited `seconds` for the budget.
pub fn budget_waited(client: Option<&str>, lane: &'static str, seconds: f64) {
    match client {
        Some(client) => {
            metrics::histogram!(names::RATE_LIMIT_WAIT, "client" => client.to_string(), "lane" => lane)
                .record(seconds);
        }
        None => metrics::histogram!(names::RATE_LIMIT_WAIT, "lane" => lane).record(seconds),
    }
}

/// A `basic.ack` frame went out: for several deliveries (`multiple`) or one.
pub fn acks_sent(multiple: bool) {
    let multiple = if multiple { "true" } else { "false" };
    metrics::counter!(names::ACK_FRAMES, "multiple" => multiple).increment(1);
}

/// A bulk presence call went out for `users` users.
pub fn bulk_call(users: usize) {
    metrics::histogram!(names::BULK_BATCH_SIZE).record(users as f64);
}

/// A gathered read of agents' state (`GET /api/v2/users?id=…`) for `users` agents.
pub fn users_read(users: usize) {
    metrics::histogram!(names::USERS_READ_BATCH_SIZE).record(users as f64);
}

/// A request path as a low-cardinality label: every segment that is not a plain word of the
/// API's vocabulary (lowercase letters: `users`, `presences`, `versions`) becomes `{id}`, so
/// UUIDs, numbers, flow versions (`3.0`) and namespace names never make a new series; the query
/// is dropped. `/api/v2/users/8f1c…/presences/purecloud` → `/api/v2/users/{id}/presences/purecloud`.
pub fn route_template(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    path.split('/')
        .map(|segment| {
            let word = segment == "v2" || segment.bytes().all(|b| b.is_ascii_lowercase());
            if word {
                segment
            } else {
                "{id}"
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_lose_their_ids_and_queries() {
        assert_eq!(
            route_template("/api/v2/users/8f1c2b4e-7d6a-4b3c-9e2f-1a0b9c8d7e6f/presences/purecloud"),
            "/api/v2/users/{id}/presences/purecloud"
        );
        assert_eq!(
            route_template("/api/v2/flows/8f1c2b4e-7d6a-4b3c-9e2f-1a0b9c8d7e6f/versions/3?deleted=false"),
            "/api/v2/flows/{id}/versions/{id}"
        );
        assert_eq!(
            route_template("/api/v2/users/presences/bulk"),
            "/api/v2/users/presences/bulk"
        );
    }

    #[test]
    fn flow_versions_namespaces_and_any_other_id_become_id() {
        let flow = "8f1c2b4e-7d6a-4b3c-9e2f-1a0b9c8d7e6f";
        assert_eq!(
            route_template(&format!("/api/v2/flows/{flow}/versions/3.0/configuration")),
            "/api/v2/flows/{id}/versions/{id}/configuration"
        );
        assert_eq!(
            route_template("/api/v2/organizations/limits/namespaces/platform.api"),
            "/api/v2/organizations/limits/namespaces/{id}"
        );
        assert_eq!(
            route_template("/api/v2/flows/actions/checkin?flow=x"),
            "/api/v2/flows/actions/checkin"
        );
        assert_eq!(
            route_template("/api/v2/users/SOME_Id-7/presences"),
            "/api/v2/users/{id}/presences"
        );
    }
}
