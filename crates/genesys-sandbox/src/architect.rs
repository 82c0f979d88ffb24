//! Architect flows: versions, locks, and asynchronous checkin and publish.
//!
//! - `GET /api/v2/flows/{flowId}` (`Flow`, with `lockedClient` or `lockedUser`, `savedVersion`,
//!   `checkedInVersion`, `publishedVersion`, `currentOperation`)
//! - `POST /api/v2/flows/{flowId}/versions` (raw configuration → `FlowVersion`), `GET` lists them,
//!   `GET .../versions/{versionId}/configuration`
//! - `POST /api/v2/flows/actions/{checkout,checkin,publish,revert,unlock}?flow=` (no body)
//!
//! Checkout locks a flow to the calling OAuth client; another client's changes are refused
//! with 409 until checkin, revert or unlock releases it. The control API can also lock a flow as
//! a person (`lockedUser`), which refuses every OAuth client until unlock or until the person
//! lets go by themselves. As observed of the real API, publishing a version that does not exist
//! succeeds and changes nothing.
//!
//! Checkin and publish return an `Operation`; how it is reported follows the
//! [`FlowOperations`] profile:
//!
//! | profile | the action answers | the flow's `currentOperation` |
//! |---|---|---|
//! | `async_visible` | the incomplete operation; it completes after `flow_operation_ms` | the operation, until the next one |
//! | `complete_in_response` | the complete operation (the action took effect within the request) | never present |
//! | `async_hidden` | the incomplete operation | never present: only the versions move, once it completes |
//! | `stale_operation` | the incomplete operation | the previous operation (or none) for `stale_operation_ms`, then this one |
//!
//! With `consistency_lag_ms`, a flow created less than the lag ago is not found by `GET` (its
//! actions work), and a publish less than the lag after the last checkin completed answers 409
//! `architect.flow.version.mismatch`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::api::{authorize, json_body, parse_id, query_list, query_value, ApiError, Page};
use super::behaviour::{Behaviour, FlowOperations};
use super::state::genesys_time;
use super::Sandbox;

/// Id of seeded flow `n` (0-based).
pub fn flow_id(n: usize) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("genesys-worker:sandbox:flow:{n}").as_bytes(),
    )
}

#[derive(Debug, Clone)]
struct Version {
    id: String,
    configuration: Value,
    /// SAVE, CHECKIN or PUBLISH: the furthest this version got.
    kind: &'static str,
    created_ms: i64,
    created_by_client: String,
    published: Option<OffsetDateTime>,
}

/// Why a publish failed: `errorCode`, `errorMessage`, `errorMessageParams` and `errorDetails`
/// (the SDK's `Detail`s) of its `Operation`.
#[derive(Debug, Clone)]
struct Failure {
    code: String,
    message: String,
    params: BTreeMap<String, String>,
    details: Vec<Value>,
}

impl Failure {
    /// A publish of `version` of the flow refused by Architect's validation.
    fn publish(flow: Uuid, name: &str, version: Option<&str>) -> Self {
        const CODE: &str = "architect.publish.failed";
        let version = version.unwrap_or("latest");
        let params = BTreeMap::from([
            ("flowId".to_string(), flow.to_string()),
            ("flowName".to_string(), name.to_string()),
            ("version".to_string(), version.to_string()),
            ("errorCount".to_string(), "1".to_string()),
        ]);
        Self {
            code: CODE.into(),
            message: format!(
                "Version {version} of flow '{name}' failed to publish: 1 validation error was found."
            ),
            params,
            details: vec![json!({
                "errorCode": CODE,
                "fieldName": "startUpRef",
                "entityId": flow,
                "entityName": name,
            })],
        }
    }
}

#[derive(Debug, Clone)]
struct Operation {
    id: Uuid,
    action: &'static str,
    client: String,
    completes_at: Instant,
    /// The version being published.
    target: Option<String>,
    outcome: Option<Result<(), Failure>>,
    /// Started under `async_hidden`: the flow never shows it.
    hidden: bool,
    /// Under `stale_operation` the flow shows the operation before this one until then.
    shown_from: Instant,
}

impl Operation {
    /// The `Operation` body.
    fn to_json(&self) -> Value {
        let (status, complete) = match &self.outcome {
            None => ("PENDING_GENERATION", false),
            Some(Ok(())) => ("SUCCESS", true),
            Some(Err(_)) => ("FAILURE", true),
        };
        let mut value = json!({
            "id": self.id,
            "complete": complete,
            "client": {"id": self.client, "selfUri": format!("/api/v2/oauth/clients/{}", self.client)},
            "actionName": self.action,
            "actionStatus": status,
        });
        if let Some(Err(failure)) = &self.outcome {
            value["errorCode"] = json!(failure.code);
            value["errorMessage"] = json!(failure.message);
            value["errorDetails"] = json!(failure.details);
            value["errorMessageParams"] = json!(failure.params);
        }
        value
    }
}

/// A resource that uses a flow, as dependency tracking reports it (a `Dependency`): set through
/// `PUT /sandbox/flows/{flowId}/consumers`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Consumer {
    pub id: String,
    /// The id when not given.
    #[serde(default)]
    pub name: Option<String>,
    /// A `Dependency.type`, e.g. `INBOUNDCALLFLOW`, `COMMONMODULEFLOW`, `QUEUE`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `1.0` when not given.
    #[serde(default)]
    pub version: Option<String>,
}

impl Consumer {
    /// Why it cannot be reported.
    pub fn problem(&self) -> Option<String> {
        if self.id.trim().is_empty() {
            return Some("consumers: id must not be empty".into());
        }
        let well_formed = !self.kind.is_empty()
            && self
                .kind
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !well_formed {
            return Some(format!(
                "consumers: type {:?} is not a Dependency type such as INBOUNDCALLFLOW",
                self.kind
            ));
        }
        None
    }

    /// The `Dependency` body.
    fn to_json(&self) -> Value {
        let mut value = json!({
            "id": self.id,
            "name": self.name.as_deref().unwrap_or(&self.id),
            "version": self.version.as_deref().unwrap_or("1.0"),
            "type": self.kind,
            "deleted": false,
            "updated": false,
            "stateUnknown": false,
        });
        if self.kind.ends_with("FLOW") || self.kind == "WORKFLOW" {
            value["selfUri"] = json!(format!("/api/v2/flows/{}", self.id));
        }
        value
    }
}

/// The dependency tracking type (`objectType`) of a flow of `flow_type`: `INBOUNDCALL` →
/// `INBOUNDCALLFLOW`, `WORKFLOW` as it is.
fn dependency_type(flow_type: &str) -> String {
    if flow_type == "WORKFLOW" {
        flow_type.to_string()
    } else {
        format!("{flow_type}FLOW")
    }
}

/// Who holds a flow's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LockHolder {
    /// An OAuth client: a checkout, or the control API playing another integration.
    Client(String),
    /// A person with the flow open in Architect (the control API plays them).
    User { id: Uuid, name: String },
}

#[derive(Debug, Clone)]
struct Lock {
    holder: LockHolder,
    /// The holder lets go by itself then, as a person closing Architect does.
    releases_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Flow {
    id: Uuid,
    name: String,
    flow_type: &'static str,
    lock: Option<Lock>,
    versions: Vec<Version>,
    saved: Option<String>,
    checked_in: Option<String>,
    published: Option<String>,
    /// The latest checkin or publish, complete or not: what refuses a second one.
    operation: Option<Operation>,
    /// The complete operation before `operation`, which `stale_operation` keeps showing.
    previous_operation: Option<Operation>,
    fail_next_publish: bool,
    /// The next publish that moves `publishedVersion` alters the published configuration.
    alter_next_publish: bool,
    /// What dependency tracking reports as consuming the flow (set by the control API).
    consumers: Vec<Consumer>,
    /// When `POST /api/v2/flows` created it (seeded flows have always existed), for the
    /// consistency lag of reads.
    created_at: Option<Instant>,
    /// When the last checkin completed: a publish within the consistency lag of it is refused.
    checked_in_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct FlowState {
    flows: BTreeMap<Uuid, Flow>,
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A minimal flow graph, in the shape `flow.deploy` jobs carry.
fn seed_configuration(name: &str) -> Value {
    json!({
        "name": name, "type": "inboundcall", "start": "start",
        "nodes": {
            "start": {"type": "start", "transitions": [{"label": "next", "target": "queue"}]},
            "queue": {"type": "transfer", "transitions": []}
        }
    })
}

impl Flow {
    fn new(id: Uuid, name: String, flow_type: &'static str) -> Self {
        Self {
            id,
            name,
            flow_type,
            lock: None,
            versions: Vec::new(),
            saved: None,
            checked_in: None,
            published: None,
            operation: None,
            previous_operation: None,
            fail_next_publish: false,
            alter_next_publish: false,
            consumers: Vec::new(),
            created_at: None,
            checked_in_at: None,
        }
    }
}

impl FlowState {
    pub fn seeded(flows: usize) -> Self {
        let names = ["Main IVR", "Billing IVR", "After Hours"];
        let flows = (0..flows)
            .map(|n| {
                let name = names
                    .get(n)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| format!("Flow {}", n + 1));
                let version = Version {
                    id: "1.0".into(),
                    configuration: seed_configuration(&name),
                    kind: "PUBLISH",
                    created_ms: now_ms(),
                    created_by_client: "seed".into(),
                    published: Some(OffsetDateTime::now_utc()),
                };
                let flow = Flow {
                    versions: vec![version],
                    saved: Some("1.0".into()),
                    checked_in: Some("1.0".into()),
                    published: Some("1.0".into()),
                    ..Flow::new(flow_id(n), name, "INBOUNDCALL")
                };
                (flow.id, flow)
            })
            .collect();
        Self { flows }
    }

    fn create(&mut self, name: &str, flow_type: &'static str) -> &Flow {
        let id = Uuid::new_v4();
        let flow = Flow {
            created_at: Some(Instant::now()),
            ..Flow::new(id, name.to_string(), flow_type)
        };
        self.flows.insert(id, flow);
        &self.flows[&id]
    }

    /// Locks `flow` as `holder` (control API: "someone else holds the lock"), released by the
    /// holder itself after `release_after` if given.
    pub fn lock_as(&mut self, flow: Uuid, holder: LockHolder, release_after: Option<Duration>) -> bool {
        self.flows
            .get_mut(&flow)
            .map(|f| {
                f.lock = Some(Lock {
                    holder,
                    releases_at: release_after.map(|after| Instant::now() + after),
                })
            })
            .is_some()
    }

    /// Makes the next publish of `flow` fail.
    pub fn fail_next_publish(&mut self, flow: Uuid) -> bool {
        self.flows
            .get_mut(&flow)
            .map(|f| f.fail_next_publish = true)
            .is_some()
    }

    /// Makes the next publish of `flow` that moves its `publishedVersion` publish a
    /// configuration other than the one saved.
    pub fn alter_next_publish(&mut self, flow: Uuid) -> bool {
        self.flows
            .get_mut(&flow)
            .map(|f| f.alter_next_publish = true)
            .is_some()
    }

    /// Sets what dependency tracking reports as consuming `flow` (replacing what was set).
    pub fn set_consumers(&mut self, flow: Uuid, consumers: Vec<Consumer>) -> bool {
        self.flows
            .get_mut(&flow)
            .map(|f| f.consumers = consumers)
            .is_some()
    }
}

/// Whether something written at `at` is still behind what reads see.
fn within_lag(at: Option<Instant>, lag: Duration) -> bool {
    !lag.is_zero() && at.is_some_and(|at| at.elapsed() < lag)
}

impl Flow {
    /// Brings the flow up to now: a lock whose holder lets go by itself is released, and the
    /// current operation completes if its time has come.
    fn settle(&mut self) {
        if self
            .lock
            .as_ref()
            .and_then(|lock| lock.releases_at)
            .is_some_and(|at| Instant::now() >= at)
        {
            self.lock = None;
        }
        let Some(op) = self.operation.as_mut() else { return };
        if op.outcome.is_some() || Instant::now() < op.completes_at {
            return;
        }
        match op.action {
            "CHECKIN" => {
                self.checked_in = self.saved.clone();
                if let Some(version) = self
                    .versions
                    .iter_mut()
                    .find(|v| Some(&v.id) == self.saved.as_ref())
                {
                    version.kind = "CHECKIN";
                }
                self.checked_in_at = Some(op.completes_at);
                op.outcome = Some(Ok(()));
            }
            _ if self.fail_next_publish => {
                self.fail_next_publish = false;
                op.outcome = Some(Err(Failure::publish(self.id, &self.name, op.target.as_deref())));
            }
            _ => {
                // An unknown version "publishes" successfully and changes nothing.
                if let Some(version) = self
                    .versions
                    .iter_mut()
                    .find(|v| Some(&v.id) == op.target.as_ref())
                {
                    version.kind = "PUBLISH";
                    version.published = Some(OffsetDateTime::now_utc());
                    self.published = Some(version.id.clone());
                    // As if Genesys published something other than what was saved.
                    if std::mem::take(&mut self.alter_next_publish) {
                        if let Some(configuration) = version.configuration.as_object_mut() {
                            configuration.insert("sandboxAltered".into(), Value::Bool(true));
                        }
                    }
                }
                op.outcome = Some(Ok(()));
            }
        }
        let held_by_operator = matches!(
            self.lock.as_ref().map(|lock| &lock.holder),
            Some(LockHolder::Client(holder)) if *holder == op.client
        );
        if held_by_operator {
            self.lock = None;
        }
    }

    fn in_progress(&self) -> bool {
        self.operation.as_ref().is_some_and(|op| op.outcome.is_none())
    }

    /// Starts `action` as `client` under the `behaviour` played and answers its `Operation`.
    fn start_operation(
        &mut self,
        action: &'static str,
        client: &str,
        target: Option<String>,
        behaviour: &Behaviour,
        takes: Duration,
    ) -> Value {
        let now = Instant::now();
        let mode = behaviour.flow_operations;
        let immediate = mode == FlowOperations::CompleteInResponse;
        let stale_for = match mode {
            FlowOperations::StaleOperation => Duration::from_millis(behaviour.stale_operation_ms),
            _ => Duration::ZERO,
        };
        // A hidden operation was never shown, so a stale read cannot show it either.
        self.previous_operation = self.operation.take().filter(|op| !op.hidden);
        self.operation = Some(Operation {
            id: Uuid::new_v4(),
            action,
            client: client.to_string(),
            completes_at: if immediate { now } else { now + takes },
            target,
            outcome: None,
            hidden: mode == FlowOperations::AsyncHidden,
            shown_from: now + stale_for,
        });
        if immediate {
            self.settle();
        }
        self.operation
            .as_ref()
            .map(Operation::to_json)
            .unwrap_or(Value::Null)
    }

    /// The operation a read of the flow shows under `mode`.
    fn shown_operation(&self, mode: FlowOperations) -> Option<&Operation> {
        match mode {
            FlowOperations::CompleteInResponse | FlowOperations::AsyncHidden => None,
            FlowOperations::AsyncVisible | FlowOperations::StaleOperation => {
                let op = self.operation.as_ref().filter(|op| !op.hidden)?;
                if Instant::now() < op.shown_from {
                    self.previous_operation.as_ref()
                } else {
                    Some(op)
                }
            }
        }
    }

    fn version_json(&self, id: &str) -> Value {
        let Some(v) = self.versions.iter().find(|v| v.id == id) else {
            return Value::Null;
        };
        let mut value = json!({
            "id": v.id,
            "name": self.name,
            "commitVersion": v.id,
            "configurationVersion": v.id,
            "type": v.kind,
            "secure": false,
            "debug": false,
            "createdByClient": {"id": v.created_by_client, "selfUri": format!("/api/v2/oauth/clients/{}", v.created_by_client)},
            "configurationUri": format!("/api/v2/flows/{}/versions/{}/configuration", self.id, v.id),
            "dateCreated": v.created_ms,
            "dateSaved": v.created_ms,
            "selfUri": format!("/api/v2/flows/{}/versions/{}", self.id, v.id),
        });
        if v.kind != "SAVE" {
            value["dateCheckedIn"] = json!(v.created_ms);
        }
        if let Some(published) = v.published {
            value["datePublished"] = json!(genesys_time(published));
        }
        value
    }

    /// The `Flow` body as a read under the operations profile `mode` shows it.
    fn to_json(&self, mode: FlowOperations) -> Value {
        let mut value = json!({
            "id": self.id,
            "name": self.name,
            "division": {"id": "*", "name": "Home", "selfUri": "/api/v2/authorization/divisions/*"},
            "description": format!("{} (sandbox)", self.name),
            "type": self.flow_type,
            "active": true,
            "system": false,
            "deleted": false,
            "selfUri": format!("/api/v2/flows/{}", self.id),
        });
        match self.lock.as_ref().map(|lock| &lock.holder) {
            Some(LockHolder::Client(client)) => {
                value["lockedClient"] =
                    json!({"id": client, "selfUri": format!("/api/v2/oauth/clients/{client}")});
            }
            Some(LockHolder::User { id, name }) => {
                value["lockedUser"] =
                    json!({"id": id, "name": name, "selfUri": format!("/api/v2/users/{id}")});
            }
            None => {}
        }
        for (field, version) in [
            ("savedVersion", &self.saved),
            ("checkedInVersion", &self.checked_in),
            ("publishedVersion", &self.published),
        ] {
            if let Some(id) = version {
                value[field] = self.version_json(id);
            }
        }
        if let Some(op) = self.shown_operation(mode) {
            value["currentOperation"] = op.to_json();
        }
        value
    }

    /// Refuses a change when anyone but `client` holds the lock.
    fn check_not_locked_by_other(&self, client: &str) -> Result<(), ApiError> {
        match self.lock.as_ref().map(|lock| &lock.holder) {
            Some(LockHolder::Client(holder)) if holder != client => Err(ApiError::conflict(
                "architect.flow.locked",
                format!("The flow {} is locked by another client ({holder}).", self.id),
            )),
            Some(LockHolder::User { id, name }) => Err(ApiError::conflict(
                "architect.flow.locked",
                format!("The flow {} is locked by user {name} ({id}).", self.id),
            )),
            _ => Ok(()),
        }
    }

    fn check_locked_by(&self, client: &str) -> Result<(), ApiError> {
        self.check_not_locked_by_other(client)?;
        if self.lock.is_none() {
            return Err(ApiError::conflict(
                "architect.flow.not.checked.out",
                format!("The flow {} must be checked out first.", self.id),
            ));
        }
        Ok(())
    }

    fn check_idle(&self) -> Result<(), ApiError> {
        if self.in_progress() {
            return Err(ApiError::conflict(
                "architect.flow.operation.in.progress",
                format!("The flow {} has an operation in progress.", self.id),
            ));
        }
        Ok(())
    }

    /// Refuses a publish of `target` that reads could not see checked in yet: within the
    /// consistency lag of the last checkin, Architect answers a version mismatch.
    fn check_checkin_visible(&self, target: &str, lag: Duration) -> Result<(), ApiError> {
        if within_lag(self.checked_in_at, lag) {
            return Err(ApiError::conflict(
                "architect.flow.version.mismatch",
                format!(
                    "The version {target} of flow {} does not match the current version of the flow.",
                    self.id
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ActionParams {
    flow: Option<String>,
    version: Option<String>,
}

/// The flow types the SDK's `Flow.type` enum lists.
const FLOW_TYPES: [&str; 21] = [
    "BOT",
    "BUSINESSPROCESS",
    "COMMONMODULE",
    "DIGITALBOT",
    "EMAILSEND",
    "INBOUNDCALL",
    "INBOUNDCHAT",
    "INBOUNDEMAIL",
    "INBOUNDSHORTMESSAGE",
    "INQUEUECALL",
    "INQUEUEEMAIL",
    "INQUEUESHORTMESSAGE",
    "OUTBOUNDCALL",
    "SECURECALL",
    "SPEECH",
    "SURVEYINVITE",
    "VOICE",
    "VOICEMAIL",
    "VOICESURVEY",
    "WORKFLOW",
    "WORKITEM",
];

fn flow_type(raw: &str) -> Option<&'static str> {
    FLOW_TYPES.iter().copied().find(|t| t.eq_ignore_ascii_case(raw))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListParams {
    name: Option<String>,
    #[serde(rename = "type")]
    flow_type: Option<String>,
}

/// `GET /api/v2/flows?name=&type=`: `FlowEntityListing`; names match exactly, ignoring case.
/// A flow created within the consistency lag is not listed yet.
pub(crate) async fn list_flows(
    State(sandbox): State<Arc<Sandbox>>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let behaviour = sandbox.behaviour();
    let lag = Duration::from_millis(behaviour.consistency_lag_ms);
    let mut world = sandbox.world();
    let entities: Vec<Value> = world
        .flows
        .flows
        .values_mut()
        .filter(|f| !within_lag(f.created_at, lag))
        .filter(|f| {
            params
                .name
                .as_ref()
                .is_none_or(|n| f.name.eq_ignore_ascii_case(n))
        })
        .filter(|f| {
            params
                .flow_type
                .as_ref()
                .is_none_or(|t| f.flow_type.eq_ignore_ascii_case(t))
        })
        .map(|f| {
            f.settle();
            f.to_json(behaviour.flow_operations)
        })
        .collect();
    Ok(Json(json!({
        "entities": entities,
        "pageSize": 25,
        "pageNumber": 1,
        "total": entities.len(),
        "pageCount": 1,
        "selfUri": "/api/v2/flows",
    })))
}

/// `POST /api/v2/flows` (`Flow` with `name` and `type`): a new flow with no versions. Names are
/// unique per flow type.
pub(crate) async fn create_flow(
    State(sandbox): State<Arc<Sandbox>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let client = authorize(&sandbox, &headers)?;
    let raw = json_body(&body)?;
    let name = raw
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty());
    let Some(name) = name else {
        return Err(ApiError::bad_request("name is required."));
    };
    let requested = raw.get("type").and_then(Value::as_str).unwrap_or_default();
    let Some(kind) = flow_type(requested) else {
        return Err(ApiError::invalid_value(format!(
            "type {requested:?} is not a flow type."
        )));
    };
    let operations = sandbox.behaviour().flow_operations;
    let mut world = sandbox.world();
    if world
        .flows
        .flows
        .values()
        .any(|f| f.flow_type == kind && f.name.eq_ignore_ascii_case(name))
    {
        return Err(ApiError::conflict(
            "architect.flow.name.conflict",
            format!("A {kind} flow named {name:?} already exists."),
        ));
    }
    let created = world.flows.create(name, kind).to_json(operations);
    let id = created["id"].as_str().unwrap_or_default().to_string();
    world.record(client, "POST", "/api/v2/flows".into(), format!("flow:{id}"), raw);
    Ok(Json(created))
}

#[derive(Debug, Deserialize)]
pub(crate) struct PageParams {
    #[serde(rename = "pageNumber")]
    page_number: Option<usize>,
    #[serde(rename = "pageSize")]
    page_size: Option<usize>,
}

fn flow_not_found(id: impl std::fmt::Display) -> ApiError {
    ApiError::not_found(format!("The flow {id} was not found."))
}

/// Runs `change` on the flow named by `raw_id` for `client`, after settling any operation.
fn with_flow<T>(
    sandbox: &Sandbox,
    raw_id: Option<&str>,
    change: impl FnOnce(&mut Flow) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let raw_id = raw_id.ok_or_else(|| ApiError::bad_request("The flow query parameter is required."))?;
    let id = parse_id(raw_id, "flow")?;
    let mut world = sandbox.world();
    let flow = world.flows.flows.get_mut(&id).ok_or_else(|| flow_not_found(id))?;
    flow.settle();
    change(flow)
}

fn record_action(sandbox: &Sandbox, client: String, action: &str, flow: Uuid, body: Value) {
    let path = format!("/api/v2/flows/actions/{action}?flow={flow}");
    sandbox
        .world()
        .record(client, "POST", path, format!("flow:{flow}"), body);
}

/// `GET /api/v2/flows/{flowId}`; a flow created within the consistency lag is not found yet.
pub(crate) async fn get_flow(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let behaviour = sandbox.behaviour();
    let lag = Duration::from_millis(behaviour.consistency_lag_ms);
    with_flow(&sandbox, Some(&raw_id), |flow| {
        if within_lag(flow.created_at, lag) {
            return Err(flow_not_found(flow.id));
        }
        Ok(Json(flow.to_json(behaviour.flow_operations)))
    })
}

pub(crate) async fn checkout(
    State(sandbox): State<Arc<Sandbox>>,
    Query(params): Query<ActionParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let client = authorize(&sandbox, &headers)?;
    let operations = sandbox.behaviour().flow_operations;
    let (id, flow) = with_flow(&sandbox, params.flow.as_deref(), |flow| {
        flow.check_not_locked_by_other(&client)?;
        flow.check_idle()?;
        flow.lock = Some(Lock {
            holder: LockHolder::Client(client.clone()),
            releases_at: None,
        });
        Ok((flow.id, flow.to_json(operations)))
    })?;
    record_action(&sandbox, client, "checkout", id, Value::Null);
    Ok(Json(flow))
}

pub(crate) async fn save_version(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let client = authorize(&sandbox, &headers)?;
    let configuration = json_body(&body)?;
    if !configuration.is_object() {
        return Err(ApiError::bad_request(
            "The flow configuration must be a JSON object.",
        ));
    }
    let (id, version) = with_flow(&sandbox, Some(&raw_id), |flow| {
        flow.check_locked_by(&client)?;
        let version_id = format!("{}.0", flow.versions.len() + 1);
        flow.versions.push(Version {
            id: version_id.clone(),
            configuration: configuration.clone(),
            kind: "SAVE",
            created_ms: now_ms(),
            created_by_client: client.clone(),
            published: None,
        });
        flow.saved = Some(version_id.clone());
        Ok((flow.id, flow.version_json(&version_id)))
    })?;
    sandbox.world().record(
        client,
        "POST",
        format!("/api/v2/flows/{id}/versions"),
        format!("flow:{id}"),
        configuration,
    );
    Ok(Json(version))
}

/// `POST /api/v2/flows/actions/checkin`: an `Operation` that makes the saved version the
/// checked-in one and releases the caller's lock.
pub(crate) async fn checkin(
    State(sandbox): State<Arc<Sandbox>>,
    Query(params): Query<ActionParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let client = authorize(&sandbox, &headers)?;
    let takes = Duration::from_millis(sandbox.config().flow_operation_ms);
    let behaviour = sandbox.behaviour();
    let (id, operation) = with_flow(&sandbox, params.flow.as_deref(), |flow| {
        flow.check_locked_by(&client)?;
        flow.check_idle()?;
        if flow.saved.is_none() {
            return Err(ApiError::bad_request(
                "The flow has no configuration to check in.",
            ));
        }
        let operation = flow.start_operation("CHECKIN", &client, None, &behaviour, takes);
        Ok((flow.id, operation))
    })?;
    record_action(&sandbox, client, "checkin", id, Value::Null);
    Ok(Json(operation))
}

/// `POST /api/v2/flows/actions/publish?version=`: an `Operation` that publishes the version
/// (the checked-in one by default).
pub(crate) async fn publish(
    State(sandbox): State<Arc<Sandbox>>,
    Query(params): Query<ActionParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let client = authorize(&sandbox, &headers)?;
    let takes = Duration::from_millis(sandbox.config().flow_operation_ms);
    let behaviour = sandbox.behaviour();
    let lag = Duration::from_millis(behaviour.consistency_lag_ms);
    let (id, operation) = with_flow(&sandbox, params.flow.as_deref(), |flow| {
        flow.check_not_locked_by_other(&client)?;
        flow.check_idle()?;
        let target = params.version.clone().or_else(|| flow.checked_in.clone());
        let Some(target) = target else {
            return Err(ApiError::bad_request(
                "The flow has no checked-in version to publish.",
            ));
        };
        flow.check_checkin_visible(&target, lag)?;
        let operation = flow.start_operation("PUBLISH", &client, Some(target), &behaviour, takes);
        Ok((flow.id, operation))
    })?;
    record_action(
        &sandbox,
        client,
        "publish",
        id,
        json!({"version": params.version}),
    );
    Ok(Json(operation))
}

pub(crate) async fn revert(
    State(sandbox): State<Arc<Sandbox>>,
    Query(params): Query<ActionParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let client = authorize(&sandbox, &headers)?;
    let operations = sandbox.behaviour().flow_operations;
    let (id, flow) = with_flow(&sandbox, params.flow.as_deref(), |flow| {
        flow.check_not_locked_by_other(&client)?;
        flow.check_idle()?;
        // Discards what was saved since the last checkin and releases the lock.
        flow.saved = flow.checked_in.clone();
        flow.lock = None;
        Ok((flow.id, flow.to_json(operations)))
    })?;
    record_action(&sandbox, client, "revert", id, Value::Null);
    Ok(Json(flow))
}

pub(crate) async fn unlock(
    State(sandbox): State<Arc<Sandbox>>,
    Query(params): Query<ActionParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let client = authorize(&sandbox, &headers)?;
    let operations = sandbox.behaviour().flow_operations;
    // Force unlock: whoever holds the lock, a client or a person (Architect Admin permission
    // in Genesys).
    let (id, flow) = with_flow(&sandbox, params.flow.as_deref(), |flow| {
        flow.lock = None;
        Ok((flow.id, flow.to_json(operations)))
    })?;
    record_action(&sandbox, client, "unlock", id, Value::Null);
    Ok(Json(flow))
}

pub(crate) async fn list_versions(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    Query(page): Query<PageParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let page_size = page.page_size.unwrap_or(25).clamp(1, 100);
    let page_number = page.page_number.unwrap_or(1).max(1);
    with_flow(&sandbox, Some(&raw_id), |flow| {
        let total = flow.versions.len();
        // Newest first.
        let entities: Vec<Value> = flow
            .versions
            .iter()
            .rev()
            .skip((page_number - 1) * page_size)
            .take(page_size)
            .map(|v| flow.version_json(&v.id))
            .collect();
        Ok(Json(json!({
            "entities": entities,
            "pageSize": page_size,
            "pageNumber": page_number,
            "total": total,
            "pageCount": total.div_ceil(page_size),
            "selfUri": format!("/api/v2/flows/{}/versions?pageNumber={page_number}&pageSize={page_size}", flow.id),
        })))
    })
}

/// `GET /api/v2/architect/dependencytracking/consumingresources?id=&objectType=`:
/// `ConsumingResourcesEntityListing` of the consumers set for the flow `id` through the control
/// API, when `objectType` is the flow's (`INBOUNDCALLFLOW` for an `INBOUNDCALL` flow); else, as
/// for any object nothing consumes, none. `resourceType` (repeated or comma-separated) keeps
/// those types only; `version` and `flowFilter` are accepted and not applied; `pageSize` (25)
/// and `pageNumber` page. Without `id` or `objectType`: 400.
pub(crate) async fn consuming_resources(
    State(sandbox): State<Arc<Sandbox>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let query = query.as_deref();
    let required = |name: &str| {
        query_value(query, name)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| ApiError::bad_request(format!("The {name} query parameter is required.")))
    };
    let id = required("id")?;
    let object_type = required("objectType")?;
    let page = Page::from_query(query, 25, usize::MAX)?;
    let resource_types = query_list(query, "resourceType");
    let world = sandbox.world();
    let consumers: Vec<&Consumer> = Uuid::parse_str(&id)
        .ok()
        .and_then(|flow| world.flows.flows.get(&flow))
        .filter(|flow| dependency_type(flow.flow_type).eq_ignore_ascii_case(&object_type))
        .map(|flow| {
            flow.consumers
                .iter()
                .filter(|c| {
                    resource_types.is_empty()
                        || resource_types.iter().any(|t| t.eq_ignore_ascii_case(&c.kind))
                })
                .collect()
        })
        .unwrap_or_default();
    let total = consumers.len();
    let entities: Vec<Value> = page.of(consumers).map(Consumer::to_json).collect();
    let uri_query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("id", &id)
        .append_pair("objectType", &object_type)
        .finish();
    Ok(Json(page.listing(
        entities,
        total,
        "/api/v2/architect/dependencytracking/consumingresources",
        &uri_query,
    )))
}

pub(crate) async fn version_configuration(
    State(sandbox): State<Arc<Sandbox>>,
    Path((raw_id, version_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    with_flow(&sandbox, Some(&raw_id), |flow| {
        flow.versions
            .iter()
            .find(|v| v.id == version_id)
            .map(|v| Json(v.configuration.clone()))
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "The version {version_id} of flow {} was not found.",
                    flow.id
                ))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "sandbox-client";

    /// Seeded flow 0, checked out by [`CLIENT`] with version 2.0 saved.
    fn saved_flow() -> Flow {
        let mut flow = FlowState::seeded(1).flows.remove(&flow_id(0)).expect("seeded");
        flow.lock = Some(Lock {
            holder: LockHolder::Client(CLIENT.into()),
            releases_at: None,
        });
        flow.versions.push(Version {
            id: "2.0".into(),
            configuration: json!({}),
            kind: "SAVE",
            created_ms: now_ms(),
            created_by_client: CLIENT.into(),
            published: None,
        });
        flow.saved = Some("2.0".into());
        flow
    }

    fn playing(flow_operations: FlowOperations) -> Behaviour {
        Behaviour {
            flow_operations,
            stale_operation_ms: 40,
            ..Behaviour::default()
        }
    }

    fn wait(ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }

    #[test]
    fn complete_in_response_answers_the_outcome_and_the_flow_shows_no_operation() {
        let behaviour = playing(FlowOperations::CompleteInResponse);
        let mut flow = saved_flow();
        let checkin = flow.start_operation("CHECKIN", CLIENT, None, &behaviour, Duration::from_secs(60));
        assert_eq!(
            (checkin["complete"].clone(), checkin["actionStatus"].clone()),
            (json!(true), json!("SUCCESS"))
        );
        assert_eq!(flow.checked_in.as_deref(), Some("2.0"));
        assert!(flow.lock.is_none(), "checkin released the lock");

        flow.fail_next_publish = true;
        let publish = flow.start_operation(
            "PUBLISH",
            CLIENT,
            Some("2.0".into()),
            &behaviour,
            Duration::from_secs(60),
        );
        assert_eq!(publish["actionStatus"], "FAILURE");
        assert_eq!(publish["errorCode"], "architect.publish.failed");
        assert_eq!(publish["errorDetails"][0]["entityId"], json!(flow.id));
        assert_eq!(flow.published.as_deref(), Some("1.0"));
        assert!(flow
            .to_json(behaviour.flow_operations)
            .get("currentOperation")
            .is_none());
    }

    #[test]
    fn a_hidden_operation_is_never_shown_but_moves_the_versions() {
        let behaviour = playing(FlowOperations::AsyncHidden);
        let mut flow = saved_flow();
        let answer = flow.start_operation("CHECKIN", CLIENT, None, &behaviour, Duration::from_millis(20));
        assert_eq!(answer["complete"], false);
        assert!(flow.check_idle().is_err(), "a second action waits for it");
        assert_eq!(flow.checked_in.as_deref(), Some("1.0"));
        wait(30);
        flow.settle();
        assert_eq!(flow.checked_in.as_deref(), Some("2.0"));
        for mode in [FlowOperations::AsyncHidden, FlowOperations::AsyncVisible] {
            assert!(flow.to_json(mode).get("currentOperation").is_none(), "{mode:?}");
        }
    }

    #[test]
    fn a_stale_read_shows_the_previous_operation_for_a_while() {
        let behaviour = playing(FlowOperations::StaleOperation);
        let mut flow = saved_flow();
        let first = flow.start_operation("CHECKIN", CLIENT, None, &behaviour, Duration::ZERO);
        assert!(
            flow.to_json(behaviour.flow_operations)
                .get("currentOperation")
                .is_none(),
            "none before"
        );
        wait(50);
        flow.settle();
        let shown = flow.to_json(behaviour.flow_operations);
        assert_eq!(shown["currentOperation"]["id"], first["id"]);

        let second = flow.start_operation("PUBLISH", CLIENT, Some("2.0".into()), &behaviour, Duration::ZERO);
        flow.settle();
        let stale = flow.to_json(behaviour.flow_operations);
        assert_eq!(stale["currentOperation"]["id"], first["id"]);
        assert_eq!(
            stale["publishedVersion"]["id"], "2.0",
            "only the operation is stale"
        );
        wait(50);
        let fresh = flow.to_json(behaviour.flow_operations);
        assert_eq!(fresh["currentOperation"]["id"], second["id"]);
        assert_eq!(fresh["currentOperation"]["complete"], true);
    }

    #[test]
    fn a_persons_lock_refuses_every_client_until_they_let_go() {
        let mut state = FlowState::seeded(1);
        let person = LockHolder::User {
            id: Uuid::new_v4(),
            name: "Agent 001".into(),
        };
        assert!(state.lock_as(flow_id(0), person, Some(Duration::from_millis(20))));
        let flow = state.flows.get_mut(&flow_id(0)).expect("seeded");
        let refused = flow.check_not_locked_by_other(CLIENT).unwrap_err();
        assert!(format!("{refused:?}").contains("Agent 001"), "{refused:?}");
        let shown = flow.to_json(FlowOperations::AsyncVisible);
        assert_eq!(shown["lockedUser"]["name"], "Agent 001");
        assert!(shown.get("lockedClient").is_none());
        wait(30);
        flow.settle();
        assert!(flow.check_not_locked_by_other(CLIENT).is_ok());
        assert!(flow
            .to_json(FlowOperations::AsyncVisible)
            .get("lockedUser")
            .is_none());
    }

    #[test]
    fn a_publish_right_after_a_checkin_is_a_version_mismatch_within_the_lag() {
        let behaviour = playing(FlowOperations::CompleteInResponse);
        let mut flow = saved_flow();
        flow.start_operation("CHECKIN", CLIENT, None, &behaviour, Duration::ZERO);
        let lag = Duration::from_millis(30);
        let refused = flow.check_checkin_visible("2.0", lag).unwrap_err();
        assert!(format!("{refused:?}").contains("does not match the current version"));
        assert!(
            flow.check_checkin_visible("2.0", Duration::ZERO).is_ok(),
            "no lag, no mismatch"
        );
        wait(40);
        assert!(flow.check_checkin_visible("2.0", lag).is_ok());
    }
}
