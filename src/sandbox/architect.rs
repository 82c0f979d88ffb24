//! Architect flows: versions, per-OAuth-client locks, and asynchronous checkin and publish.
//!
//! - `GET /api/v2/flows/{flowId}` (`Flow`, with `lockedClient`, `savedVersion`,
//!   `checkedInVersion`, `publishedVersion`, `currentOperation`)
//! - `POST /api/v2/flows/{flowId}/versions` (raw configuration → `FlowVersion`), `GET` lists them,
//!   `GET .../versions/{versionId}/configuration`
//! - `POST /api/v2/flows/actions/{checkout,checkin,publish,revert,unlock}?flow=` (no body)
//!
//! Checkout locks a flow to the calling OAuth client; another client's changes are refused
//! with 409 until checkin, revert or unlock releases it. Checkin and publish return an
//! `Operation` and complete later, visible through the flow's `currentOperation`. As observed
//! of the real API, publishing a version that does not exist succeeds and changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::api::{authorize, json_body, parse_id, ApiError};
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

#[derive(Debug, Clone)]
struct Operation {
    id: Uuid,
    action: &'static str,
    client: String,
    completes_at: Instant,
    /// The version being published.
    target: Option<String>,
    outcome: Option<Result<(), (String, String)>>,
}

#[derive(Debug, Clone)]
struct Flow {
    id: Uuid,
    name: String,
    flow_type: &'static str,
    locked_client: Option<String>,
    versions: Vec<Version>,
    saved: Option<String>,
    checked_in: Option<String>,
    published: Option<String>,
    operation: Option<Operation>,
    fail_next_publish: bool,
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
                    id: flow_id(n),
                    name,
                    flow_type: "INBOUNDCALL",
                    locked_client: None,
                    versions: vec![version],
                    saved: Some("1.0".into()),
                    checked_in: Some("1.0".into()),
                    published: Some("1.0".into()),
                    operation: None,
                    fail_next_publish: false,
                };
                (flow.id, flow)
            })
            .collect();
        Self { flows }
    }

    fn create(&mut self, name: &str, flow_type: &'static str) -> &Flow {
        let id = Uuid::new_v4();
        let flow = Flow {
            id,
            name: name.to_string(),
            flow_type,
            locked_client: None,
            versions: Vec::new(),
            saved: None,
            checked_in: None,
            published: None,
            operation: None,
            fail_next_publish: false,
        };
        self.flows.insert(id, flow);
        &self.flows[&id]
    }

    /// Locks `flow` as `client` (control API: "someone else holds the lock").
    pub fn lock_as(&mut self, flow: Uuid, client: &str) -> bool {
        self.flows
            .get_mut(&flow)
            .map(|f| f.locked_client = Some(client.to_string()))
            .is_some()
    }

    /// Makes the next publish of `flow` fail.
    pub fn fail_next_publish(&mut self, flow: Uuid) -> bool {
        self.flows
            .get_mut(&flow)
            .map(|f| f.fail_next_publish = true)
            .is_some()
    }
}

impl Flow {
    /// Completes the current operation if its time has come.
    fn settle(&mut self) {
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
                op.outcome = Some(Ok(()));
            }
            _ if self.fail_next_publish => {
                self.fail_next_publish = false;
                op.outcome = Some(Err((
                    "architect.publish.failed".into(),
                    "The flow failed to publish: validation errors were found.".into(),
                )));
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
                }
                op.outcome = Some(Ok(()));
            }
        }
        if self.locked_client.as_ref() == Some(&op.client) {
            self.locked_client = None;
        }
    }

    fn in_progress(&self) -> bool {
        self.operation.as_ref().is_some_and(|op| op.outcome.is_none())
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

    fn operation_json(&self) -> Value {
        let Some(op) = &self.operation else {
            return Value::Null;
        };
        let (status, complete) = match &op.outcome {
            None => ("PENDING_GENERATION", false),
            Some(Ok(())) => ("SUCCESS", true),
            Some(Err(_)) => ("FAILURE", true),
        };
        let mut value = json!({
            "id": op.id,
            "complete": complete,
            "client": {"id": op.client, "selfUri": format!("/api/v2/oauth/clients/{}", op.client)},
            "actionName": op.action,
            "actionStatus": status,
        });
        if let Some(Err((code, message))) = &op.outcome {
            value["errorCode"] = json!(code);
            value["errorMessage"] = json!(message);
            value["errorDetails"] = json!([]);
        }
        value
    }

    fn to_json(&self) -> Value {
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
        if let Some(client) = &self.locked_client {
            value["lockedClient"] =
                json!({"id": client, "selfUri": format!("/api/v2/oauth/clients/{client}")});
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
        if self.operation.is_some() {
            value["currentOperation"] = self.operation_json();
        }
        value
    }

    /// Refuses a change when another client holds the lock.
    fn check_not_locked_by_other(&self, client: &str) -> Result<(), ApiError> {
        match &self.locked_client {
            Some(holder) if holder != client => Err(ApiError::conflict(
                "architect.flow.locked",
                format!("The flow {} is locked by another client ({holder}).", self.id),
            )),
            _ => Ok(()),
        }
    }

    fn check_locked_by(&self, client: &str) -> Result<(), ApiError> {
        self.check_not_locked_by_other(client)?;
        if self.locked_client.is_none() {
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
pub(crate) async fn list_flows(
    State(sandbox): State<Arc<Sandbox>>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let mut world = sandbox.world();
    let entities: Vec<Value> = world
        .flows
        .flows
        .values_mut()
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
            f.to_json()
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
    let created = world.flows.create(name, kind).to_json();
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

pub(crate) async fn get_flow(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    with_flow(&sandbox, Some(&raw_id), |flow| Ok(Json(flow.to_json())))
}

pub(crate) async fn checkout(
    State(sandbox): State<Arc<Sandbox>>,
    Query(params): Query<ActionParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let client = authorize(&sandbox, &headers)?;
    let (id, flow) = with_flow(&sandbox, params.flow.as_deref(), |flow| {
        flow.check_not_locked_by_other(&client)?;
        flow.check_idle()?;
        flow.locked_client = Some(client.clone());
        Ok((flow.id, flow.to_json()))
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

fn start_operation(
    flow: &mut Flow,
    action: &'static str,
    client: &str,
    delay: Duration,
    target: Option<String>,
) -> Value {
    flow.operation = Some(Operation {
        id: Uuid::new_v4(),
        action,
        client: client.to_string(),
        completes_at: Instant::now() + delay,
        target,
        outcome: None,
    });
    flow.operation_json()
}

pub(crate) async fn checkin(
    State(sandbox): State<Arc<Sandbox>>,
    Query(params): Query<ActionParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let client = authorize(&sandbox, &headers)?;
    let delay = Duration::from_millis(sandbox.config().flow_operation_ms);
    let (id, operation) = with_flow(&sandbox, params.flow.as_deref(), |flow| {
        flow.check_locked_by(&client)?;
        flow.check_idle()?;
        if flow.saved.is_none() {
            return Err(ApiError::bad_request(
                "The flow has no configuration to check in.",
            ));
        }
        Ok((flow.id, start_operation(flow, "CHECKIN", &client, delay, None)))
    })?;
    record_action(&sandbox, client, "checkin", id, Value::Null);
    Ok(Json(operation))
}

pub(crate) async fn publish(
    State(sandbox): State<Arc<Sandbox>>,
    Query(params): Query<ActionParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let client = authorize(&sandbox, &headers)?;
    let delay = Duration::from_millis(sandbox.config().flow_operation_ms);
    let (id, operation) = with_flow(&sandbox, params.flow.as_deref(), |flow| {
        flow.check_not_locked_by_other(&client)?;
        flow.check_idle()?;
        let target = params.version.clone().or_else(|| flow.checked_in.clone());
        let Some(target) = target else {
            return Err(ApiError::bad_request(
                "The flow has no checked-in version to publish.",
            ));
        };
        Ok((
            flow.id,
            start_operation(flow, "PUBLISH", &client, delay, Some(target)),
        ))
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
    let (id, flow) = with_flow(&sandbox, params.flow.as_deref(), |flow| {
        flow.check_not_locked_by_other(&client)?;
        flow.check_idle()?;
        // Discards what was saved since the last checkin and releases the lock.
        flow.saved = flow.checked_in.clone();
        flow.locked_client = None;
        Ok((flow.id, flow.to_json()))
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
    // Force unlock: whoever holds the lock (Architect Admin permission in Genesys).
    let (id, flow) = with_flow(&sandbox, params.flow.as_deref(), |flow| {
        flow.locked_client = None;
        Ok((flow.id, flow.to_json()))
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
