//! The operators' web console and its JSON API, served by the admin server ([`crate::admin`]) on
//! `ADMIN_ADDR`, for the people running a shift handover.
//!
//! Pages (server-rendered HTML, [`pages`], a little hand-written JavaScript that polls the API
//! every 2 s): `/console` (overview), `/console/batches`, `/console/batches/{id}`,
//! `/console/dead-letters`, `/console/jobs`. JSON under `/api/…`:
//!
//! | endpoint | |
//! |---|---|
//! | `GET /api/overview` | jobs per second by outcome, in flight per lane, oldest job, the Genesys budget, the controls |
//! | `GET /api/controls`, `POST /api/controls` | the controls in force; pause, resume, cancel ([`crate::control`]) |
//! | `GET /api/batches`, `GET /api/batches/{id}` | the latest batches' progress; one batch's |
//! | `GET /api/dead-letters`, `POST /api/dead-letters/replay` | the dead letters ([`crate::dlq`]); replay selected or all matching, or a dry run |
//! | `GET /api/jobs?q=` | a job by idempotency key or job id: its record, events, entity version |
//! | `GET /api/session` | whether a bearer token is the right one (the console's login) |
//!
//! **Authorization.** Reads are open to whoever reaches `ADMIN_ADDR` (loopback by default).
//! Every change (controls, replays) needs `Authorization: Bearer <ADMIN_TOKEN>` (compared in
//! constant time, never logged), checked before the body is read: 401 without the right one,
//! 403 when no `ADMIN_TOKEN` is set (the console is then read-only). The page's JavaScript
//! sends the token it was given at login, kept in the tab's `sessionStorage`, never a cookie:
//! another site cannot make a browser send it (CSRF), nor read the API's answers (no CORS).

pub mod pages;
pub mod recent;
pub mod samples;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::to_bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::admin::{bearer_token, same_secret, Health};
use crate::broker::{self, Publisher};
use crate::cli::BrokerArgs;
use crate::config::{Config, Secret, ServiceUrls, Topology};
use crate::control::{self, Change, ChangeKind, Control, ControlError, Controls, Target};
use crate::dlq::{self, DlqOptions, Filter, Listed, Replayed, Selection};
use crate::store::{Progress, Store, StoreError};
use samples::{OutcomeFigures, Samples};

/// Batches the overview and the batches page list.
const BATCHES_LISTED: usize = 25;
/// Dead letters a listing shows at most.
const LETTERS_LISTED: usize = 200;
/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;
/// Dead letters re-published per second by a replay from the console (the CLI's default).
const REPLAY_RATE: f64 = 20.0;
/// How long a replay request waits for the replay before answering that it goes on in the
/// background (within the admin server's 10 s request bound).
const REPLAY_ANSWER_WITHIN: Duration = Duration::from_secs(7);

/// What the console reads and changes.
#[derive(Debug)]
pub struct Console {
    store: Store,
    /// The worker's view of the controls: what the overview shows when Redis does not answer.
    controls: Controls,
    health: Arc<Health>,
    token: Option<Secret>,
    amqp_url: ServiceUrls,
    topology: Topology,
    dlq: DlqOptions,
    samples: Samples,
    /// One replay at a time: a second one would scan a queue the first holds half of.
    replaying: Arc<tokio::sync::Mutex<()>>,
}

impl Console {
    pub fn new(config: &Config, store: Store, controls: Controls, health: Arc<Health>) -> Arc<Self> {
        Arc::new(Self {
            store,
            controls,
            health,
            token: config.admin_token.clone(),
            amqp_url: config.amqp_url.clone(),
            topology: config.topology.clone(),
            dlq: DlqOptions {
                broker: BrokerArgs {
                    amqp_url: config.amqp_url.clone(),
                },
                dead_letter_queue: config.topology.dead_letter.clone(),
                jobs_exchange: config.topology.jobs_exchange.clone(),
            },
            samples: Samples::default(),
            replaying: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Whether changes can be made at all (an `ADMIN_TOKEN` is set).
    pub fn writable(&self) -> bool {
        self.token.is_some()
    }

    /// Samples the metrics every second until `stop`, on the runtime it is called on.
    pub fn sample(self: &Arc<Self>, stop: CancellationToken) {
        let console = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(samples::EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = every.tick() => console.samples.take(),
                }
            }
        });
    }

    /// Ok when `headers` carry the admin token; the refusal otherwise.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Response> {
        let Some(token) = &self.token else {
            return Err(error(
                StatusCode::FORBIDDEN,
                "read_only",
                "ADMIN_TOKEN is not set on this worker: the console and its API are read-only",
            ));
        };
        if bearer_token(headers).is_some_and(|given| same_secret(given, token.expose())) {
            return Ok(());
        }
        let mut refused = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer <ADMIN_TOKEN>)",
        );
        refused
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(refused)
    }

    /// The controls in force, read from Redis; the worker's last view (flagged stale) when
    /// Redis does not answer.
    async fn controls_now(&self) -> (Vec<Control>, bool) {
        match tokio::time::timeout(Duration::from_secs(2), crate::control::read(&self.store)).await {
            Ok(Ok(snapshot)) => (snapshot.list(), false),
            _ => (self.controls.current().list(), true),
        }
    }

    pub async fn overview(&self) -> Overview {
        let figures = self.samples.figures();
        let (controls, controls_stale) = self.controls_now().await;
        let budgets = self
            .health
            .budgets()
            .iter()
            .map(|budget| BudgetView {
                client: budget.client().to_string(),
                configured_per_second: figures
                    .configured
                    .get(budget.label().unwrap_or_default())
                    .copied(),
                effective_per_second: budget.per_second(),
                waiting: budget.waiting(),
                paused_for_secs: budget.paused_for().map(|d| d.as_secs_f64()),
            })
            .collect();
        let total = figures.in_flight.values().sum();
        Overview {
            at: now_rfc3339(),
            window_secs: figures.window_secs,
            jobs: JobFigures {
                per_second: figures.jobs_per_second,
                last_minute: figures.jobs_last_minute,
                by_outcome: figures.by_outcome,
            },
            in_flight: InFlight {
                lanes: figures.in_flight,
                total,
            },
            oldest_job_age_secs: figures.oldest_job_age_secs,
            genesys: GenesysFigures {
                requests_per_second: figures.requests_per_second,
                requests_last_minute: figures.requests_last_minute,
                throttled_last_minute: figures.throttled_last_minute,
                budgets,
            },
            consuming: self.health.consuming(),
            controls,
            controls_stale,
            writable: self.writable(),
        }
    }

    /// The latest batches, newest first.
    pub async fn batches(&self) -> Result<Vec<BatchView>, StoreError> {
        let ids = self.store.recent_batches(BATCHES_LISTED).await?;
        let (controls, _) = self.controls_now().await;
        let mut batches = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(progress) = self.store.batch_progress(id).await? {
                batches.push(BatchView::new(progress, &controls));
            }
        }
        Ok(batches)
    }

    pub async fn batch(&self, id: Uuid) -> Result<Option<BatchView>, StoreError> {
        let Some(progress) = self.store.batch_progress(id).await? else {
            return Ok(None);
        };
        let (controls, _) = self.controls_now().await;
        Ok(Some(BatchView::new(progress, &controls)))
    }

    pub async fn dead_letters(&self, query: &LetterQuery) -> Result<Listed, dlq::DlqError> {
        // A listing holds the letters it reads unacked for a moment: one scan or replay at a
        // time, so a replay never skips letters a listing holds, and reloads cannot pile up.
        let scan = tokio::time::timeout(Duration::from_secs(5), self.replaying.lock()).await;
        let Ok(_scan) = scan else {
            return Err(dlq::DlqError::Busy);
        };
        dlq::list_selected(&self.dlq, &query.selection(None), LETTERS_LISTED).await
    }

    /// Looks a job up by job id (this replica's recent jobs) or idempotency key.
    pub async fn lookup(&self, query: &JobQuery) -> Result<JobLookup, StoreError> {
        let q = query.q.trim();
        let given_entity = query.entity.as_deref().map(str::trim).filter(|e| !e.is_empty());
        let mut found = JobLookup {
            query: q.to_string(),
            needs_entity: self.store.records_keyed_by_entity(),
            ..JobLookup::default()
        };
        if q.is_empty() {
            return Ok(found);
        }
        let recent = Uuid::parse_str(q)
            .ok()
            .and_then(|id| Some((id, recent::find(id)?)));
        let (key, entity) = match &recent {
            Some((id, seen)) => {
                found.by = Some("job_id");
                found.job_id = Some(id.to_string());
                found.recent = Some(RecentView {
                    seen: rfc3339(OffsetDateTime::from(seen.seen)),
                    outcome: seen.outcome.map(|o| o.as_str().to_string()),
                });
                (seen.idempotency_key.clone(), Some(seen.entity.clone()))
            }
            None => (q.to_string(), given_entity.map(str::to_string)),
        };
        if entity.is_none() && found.needs_entity {
            found.notes.push(
                "Redis Cluster keeps a job's record with its entity: give the entity (e.g. user:<id>) to look it up by idempotency key."
                    .into(),
            );
            return Ok(found);
        }
        let record = self
            .store
            .idempotency_record(entity.as_deref().unwrap_or_default(), &key)
            .await?;
        if let Some(record) = record {
            let events: Vec<EventView> = record.events.iter().map(EventView::from).collect();
            let audit = events
                .iter()
                .find(|e| e.exchange == self.topology.audit_exchange)
                .map(|e| &e.body);
            let text = |name: &str| {
                audit
                    .and_then(|a| a.get(name))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            found.by.get_or_insert("idempotency_key");
            found.job_id = found.job_id.take().or_else(|| text("job_id"));
            found.entity = entity.or_else(|| text("entity"));
            found.record = Some(RecordView {
                state: record.state,
                outcome: record.outcome.map(|o| o.as_str().to_string()),
                confirmed: record.confirmed,
                events,
            });
        } else {
            found.entity = entity;
            if recent.is_some() {
                found.notes.push(
                    "Redis keeps the records of applied jobs (and of jobs in progress) only; this job's outcome was announced on the audit exchange."
                        .into(),
                );
            }
        }
        found.idempotency_key = (found.record.is_some() || recent.is_some()).then_some(key);
        if let Some(entity) = &found.entity {
            let head = self.store.entity_head(entity).await?;
            found.entity_version = Some(json!({"version": head.version, "checksum": head.checksum}));
        }
        found.found = found.record.is_some() || recent.is_some();
        if !found.found {
            found.notes.push(if Uuid::parse_str(q).is_ok() {
                "Not a job this replica ran lately, nor an idempotency key Redis keeps a record of.".into()
            } else {
                "No record under this idempotency key: never seen, expired, or its outcome was not applied (only applied jobs' records are kept).".into()
            });
        }
        Ok(found)
    }

    /// Makes a control change, announced on a connection of its own (the worker's publisher
    /// lives on another runtime and is replaced when the broker connection is).
    async fn change(&self, change: Change) -> Result<Control, ChangeError> {
        let connection = broker::connect(&self.amqp_url)
            .await
            .map_err(ChangeError::Broker)?;
        let result = async {
            let publisher = Publisher::open(&connection).await.map_err(ChangeError::Broker)?;
            control::change(&self.store, &publisher, &self.topology, change)
                .await
                .map_err(ChangeError::Control)
        }
        .await;
        let _ = connection.close(200, "control changed".into()).await;
        result
    }
}

enum ChangeError {
    /// No connection: nothing was changed.
    Broker(broker::BrokerError),
    Control(ControlError),
}

/// The routes of the console and its API, merged into the admin server's.
/// The console for the admin server ([`crate::admin::Pages`]): samples the overview's figures
/// on the admin server's runtime until `shutdown`, and serves the pages and the API.
pub fn pages(console: Arc<Console>) -> crate::admin::Pages {
    Box::new(move |shutdown| {
        console.sample(shutdown);
        router(console)
    })
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(pages::overview))
        .route("/console/batches", get(pages::batches))
        .route("/console/batches/{id}", get(pages::batch))
        .route("/console/dead-letters", get(pages::dead_letters))
        .route("/console/jobs", get(pages::jobs))
        .route("/console/console.js", get(pages::script))
        .route("/api/session", get(session))
        .route("/api/overview", get(api_overview))
        .route("/api/controls", get(api_controls).post(post_control))
        .route("/api/batches", get(api_batches))
        .route("/api/batches/{id}", get(api_batch))
        .route("/api/dead-letters", get(api_dead_letters))
        .route("/api/dead-letters/replay", axum::routing::post(post_replay))
        .route("/api/jobs", get(api_jobs))
        .with_state(console)
}

/// `{"error": {"code", "message"}}`, as the ingest answers.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

fn store_error(err: &StoreError) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "redis_unavailable",
        &err.to_string(),
    )
}

fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

// The JSON shapes.

/// `GET /api/overview`.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub at: String,
    /// The span the `last_minute` figures cover (less while the worker is younger than 60 s).
    pub window_secs: f64,
    pub jobs: JobFigures,
    pub in_flight: InFlight,
    pub oldest_job_age_secs: f64,
    pub genesys: GenesysFigures,
    /// Whether both lanes consume.
    pub consuming: bool,
    pub controls: Vec<Control>,
    /// The controls are the worker's last view: Redis did not answer.
    pub controls_stale: bool,
    /// Whether changes can be made (`ADMIN_TOKEN` is set).
    pub writable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobFigures {
    /// Jobs finished per second over the last 5 s.
    pub per_second: f64,
    pub last_minute: u64,
    pub by_outcome: Vec<OutcomeFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    /// By lane: `single`, `batch`.
    #[serde(flatten)]
    pub lanes: BTreeMap<String, u64>,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenesysFigures {
    pub requests_per_second: f64,
    pub requests_last_minute: u64,
    /// 429s.
    pub throttled_last_minute: u64,
    /// One per OAuth client.
    pub budgets: Vec<BudgetView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BudgetView {
    pub client: String,
    /// `GENESYS_RATE_LIMIT_RPS`.
    pub configured_per_second: Option<f64>,
    /// The pace calls are made at: lower than configured when Genesys allows the client less.
    pub effective_per_second: f64,
    /// Calls waiting for the budget now.
    pub waiting: usize,
    /// How long the client is still paused by a 429, if it is.
    pub paused_for_secs: Option<f64>,
}

/// A batch's progress with what the console adds.
#[derive(Debug, Clone, Serialize)]
pub struct BatchView {
    #[serde(flatten)]
    pub progress: Progress,
    /// Children final, in percent of the total.
    pub percent: f64,
    /// `running`, `finished` (every child final) or `announced` (its summary event confirmed).
    pub status: &'static str,
    /// The pause holding it back, if any.
    pub paused: Option<Control>,
    /// The cancel ending its children, if any.
    pub cancelled: Option<Control>,
}

impl BatchView {
    fn new(progress: Progress, controls: &[Control]) -> Self {
        let id = progress.batch_id.to_string();
        let find = |action: &str| {
            controls
                .iter()
                .find(|c| c.action.as_str() == action && c.scope == "batch" && c.value == id)
                .cloned()
        };
        let percent = if progress.total == 0 {
            0.0
        } else {
            (progress.finished as f64 * 1000.0 / progress.total as f64).floor() / 10.0
        };
        let status = if progress.summary_sent {
            "announced"
        } else if progress.total > 0 && progress.finished >= progress.total {
            "finished"
        } else {
            "running"
        };
        Self {
            percent,
            status,
            paused: find("pause"),
            cancelled: find("cancel"),
            progress,
        }
    }
}

/// `GET /api/jobs`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobLookup {
    pub query: String,
    pub found: bool,
    /// How it was found: `job_id` (this replica's recent jobs) or `idempotency_key`.
    pub by: Option<&'static str>,
    pub job_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub entity: Option<String>,
    /// The idempotency record in Redis.
    pub record: Option<RecordView>,
    /// What this replica remembers of the job (a lookup by job id).
    pub recent: Option<RecentView>,
    /// The entity's chain head: `{version, checksum}`.
    pub entity_version: Option<Value>,
    /// Whether a lookup by idempotency key needs the entity (Redis Cluster).
    pub needs_entity: bool,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordView {
    /// `in_progress` or `done`.
    pub state: String,
    pub outcome: Option<String>,
    /// Whether its events were confirmed by the broker.
    pub confirmed: bool,
    pub events: Vec<EventView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentView {
    /// When this replica last took the job.
    pub seen: String,
    pub outcome: Option<String>,
}

/// A stored event: where it was published and what.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub body: Value,
}

impl From<&crate::events::OutboundEvent> for EventView {
    fn from(event: &crate::events::OutboundEvent) -> Self {
        Self {
            exchange: event.exchange.clone(),
            routing_key: event.routing_key.clone(),
            message_id: event.message_id.clone(),
            body: serde_json::from_str(&event.body).unwrap_or_else(|_| Value::String(event.body.clone())),
        }
    }
}

// Queries and requests.

/// `?q=…&entity=…`
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobQuery {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub entity: Option<String>,
}

/// `?kind=…&code=…&batch=…` (empty values: any).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LetterQuery {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub batch: Option<String>,
}

fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

impl LetterQuery {
    fn selection(&self, job_ids: Option<Vec<String>>) -> Selection {
        Selection {
            filter: Filter {
                kind: given(&self.kind),
                code: given(&self.code),
            },
            batch: given(&self.batch),
            job_ids: job_ids.map(|ids| ids.into_iter().collect()),
        }
    }
}

/// `POST /api/controls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlRequest {
    action: String,
    scope: String,
    value: String,
    actor: String,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/dead-letters/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    batch: Option<String>,
    /// The letters ticked, by job id.
    #[serde(default)]
    job_ids: Vec<String>,
    /// Every letter the filter matches.
    #[serde(default)]
    all: bool,
    #[serde(default)]
    dry_run: bool,
    /// Who asked, for the log.
    #[serde(default)]
    actor: Option<String>,
}

// The API's handlers.

async fn session(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match console.authorize(&headers) {
        Ok(()) => Json(json!({"writable": true})).into_response(),
        Err(refused) => refused,
    }
}

async fn api_overview(State(console): State<Arc<Console>>) -> Json<Overview> {
    Json(console.overview().await)
}

async fn api_controls(State(console): State<Arc<Console>>) -> Json<Value> {
    let (controls, stale) = console.controls_now().await;
    Json(json!({"controls": controls, "stale": stale}))
}

async fn api_batches(State(console): State<Arc<Console>>) -> Response {
    match console.batches().await {
        Ok(batches) => Json(json!({"batches": batches})).into_response(),
        Err(err) => store_error(&err),
    }
}

async fn api_batch(State(console): State<Arc<Console>>, Path(id): Path<String>) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "a batch is named by its job id (a UUID)",
        );
    };
    match console.batch(id).await {
        Ok(Some(batch)) => Json(batch).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no batch {id} (never started, or its progress expired)"),
        ),
        Err(err) => store_error(&err),
    }
}

async fn api_dead_letters(State(console): State<Arc<Console>>, Query(query): Query<LetterQuery>) -> Response {
    match console.dead_letters(&query).await {
        Ok(listed) => Json(listed).into_response(),
        Err(err) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            &err.to_string(),
        ),
    }
}

async fn api_jobs(State(console): State<Arc<Console>>, Query(query): Query<JobQuery>) -> Response {
    match console.lookup(&query).await {
        Ok(found) => Json(found).into_response(),
        Err(err) => store_error(&err),
    }
}

/// The body of an authorized request, read only once the caller is known.
async fn authorized_body<T: serde::de::DeserializeOwned>(
    console: &Console,
    request: Request,
) -> Result<T, Response> {
    console.authorize(request.headers())?;
    let body = to_bytes(request.into_body(), MAX_BODY).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the body is larger than {MAX_BODY} bytes"),
        )
    })?;
    serde_json::from_slice(&body)
        .map_err(|err| error(StatusCode::BAD_REQUEST, "invalid_request", &err.to_string()))
}

async fn post_control(State(console): State<Arc<Console>>, request: Request) -> Response {
    let asked: ControlRequest = match authorized_body(&console, request).await {
        Ok(asked) => asked,
        Err(refused) => return refused,
    };
    let Some(kind) = ChangeKind::parse(&asked.action) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_control",
            &format!("action {:?}: not pause, resume or cancel", asked.action),
        );
    };
    let target = match Target::parse(&asked.scope, &asked.value) {
        Ok(target) => target,
        Err(err) => return control_error(&err),
    };
    let change = Change {
        kind,
        target,
        actor: asked.actor,
        reason: asked.reason,
    };
    match console.change(change).await {
        Ok(control) => Json(json!({"change": kind.as_str(), "control": control})).into_response(),
        Err(ChangeError::Control(err)) => control_error(&err),
        Err(ChangeError::Broker(err)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            &format!("{err}: nothing was changed"),
        ),
    }
}

fn control_error(err: &ControlError) -> Response {
    let (status, code) = match err {
        ControlError::NotPaused(_) => (StatusCode::BAD_REQUEST, "not_paused"),
        err if err.is_invalid() => (StatusCode::BAD_REQUEST, "invalid_control"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    error(status, code, &err.to_string())
}

async fn post_replay(State(console): State<Arc<Console>>, request: Request) -> Response {
    let asked: ReplayRequest = match authorized_body(&console, request).await {
        Ok(asked) => asked,
        Err(refused) => return refused,
    };
    if asked.job_ids.is_empty() && !asked.all {
        return error(
            StatusCode::BAD_REQUEST,
            "nothing_selected",
            "tick the letters to replay (job_ids), or ask for every letter the filter matches (all: true)",
        );
    }
    let Ok(guard) = console.replaying.clone().try_lock_owned() else {
        return error(
            StatusCode::CONFLICT,
            "replay_running",
            "a replay is running: wait for it to finish",
        );
    };
    let filter = LetterQuery {
        kind: asked.kind,
        code: asked.code,
        batch: asked.batch,
    };
    let job_ids = (!asked.job_ids.is_empty()).then_some(asked.job_ids);
    let selection = filter.selection(job_ids);
    let (dry_run, options) = (asked.dry_run, console.dlq.clone());
    tracing::info!(
        actor = asked.actor.as_deref().unwrap_or("(unnamed)"),
        dry_run,
        all = asked.all,
        "Dead-letter replay asked from the console."
    );
    // The replay goes on if the answer cannot wait for it: dropping it halfway would only
    // leave letters in the queue, but an operator asked for all of them.
    let replay = tokio::spawn(async move {
        let replayed = dlq::replay_selected(&options, &selection, REPLAY_RATE, dry_run).await;
        drop(guard);
        replayed
    });
    match tokio::time::timeout(REPLAY_ANSWER_WITHIN, replay).await {
        Ok(Ok(Ok(replayed))) => Json(replay_answer(&replayed, dry_run)).into_response(),
        Ok(Ok(Err(err))) => error(StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable", &err.to_string()),
        Ok(Err(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, "replay_failed", "the replay task failed"),
        Err(_) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "running": true,
                "dry_run": dry_run,
                "message": format!("the replay goes on in the background at {REPLAY_RATE} letters per second; list the dead letters again to follow it"),
            })),
        )
            .into_response(),
    }
}

fn replay_answer(replayed: &Replayed, dry_run: bool) -> Value {
    json!({
        "running": false,
        "dry_run": dry_run,
        "count": replayed.replayed.len(),
        "replayed": replayed.replayed,
        "left": replayed.left,
    })
}
