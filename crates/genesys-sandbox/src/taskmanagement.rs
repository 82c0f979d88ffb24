//! Task Management: workitems, their query, and the worktype's status graph.
//!
//! - `POST /api/v2/taskmanagement/workitems` (`WorkitemCreate` → `Workitem`)
//! - `GET`/`PATCH /api/v2/taskmanagement/workitems/{workitemId}` (`WorkitemUpdate`)
//! - `POST /api/v2/taskmanagement/workitems/query` (`WorkitemQueryPostRequest`: at least one EQ
//!   filter on `workbinId`, `assigneeId`, `queueId` or `typeId`, at most 3 filters)
//! - `GET /api/v2/taskmanagement/worktypes/{worktypeId}/statuses` (`WorkitemStatusListing`)
//!
//! Schema errors are 400 `invalid.value`/`bad.request`; validation failures are 409 with a
//! `pre.check.*` code, as Task Management reports them (a disallowed status transition among
//! them).
//!
//! With `consistency_lag_ms`, reads (`GET` and the query) see the workitems as they were that
//! long ago: one created since is not found (404 / not matched), one patched since shows the
//! state before the patch. Writes always apply to the true state, so nothing written is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Map, Value};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::api::{authorize, authorize_on, json_body, ApiError};
use super::state::genesys_time;
use super::Sandbox;

const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -25_000_000..=25_000_000;
const MAX_DESCRIPTION: usize = 512;
const QUERY_ROOT_FILTERS: [&str; 4] = ["workbinId", "assigneeId", "queueId", "typeId"];
const QUERY_FILTERS: [&str; 7] = [
    "workbinId",
    "assigneeId",
    "queueId",
    "typeId",
    "externalTag",
    "statusId",
    "id",
];

fn sandbox_uuid(kind: &str, name: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("genesys-worker:sandbox:{kind}:{name}").as_bytes(),
    )
}

/// Id of the seeded worktype ("Support case").
pub fn worktype_id() -> Uuid {
    sandbox_uuid("worktype", "support-case")
}

/// Id of a status of the seeded worktype: `Open`, `In Progress`, `Waiting`, `Escalated`, `Closed`.
pub fn status_id(name: &str) -> Uuid {
    sandbox_uuid("status", name)
}

/// Id of seeded workitem `n` (0-based).
pub fn workitem_id(n: usize) -> Uuid {
    sandbox_uuid("workitem", &n.to_string())
}

#[derive(Debug, Clone)]
struct Status {
    id: Uuid,
    name: &'static str,
    category: &'static str,
    /// Empty: any status of the worktype may follow.
    destinations: Vec<Uuid>,
}

#[derive(Debug, Clone)]
struct Worktype {
    id: Uuid,
    name: &'static str,
    statuses: Vec<Status>,
    default_status: Uuid,
}

impl Worktype {
    fn status(&self, id: Uuid) -> Option<&Status> {
        self.statuses.iter().find(|s| s.id == id)
    }

    fn reference(&self) -> Value {
        json!({"id": self.id, "name": self.name, "selfUri": format!("/api/v2/taskmanagement/worktypes/{}", self.id)})
    }
}

#[derive(Debug, Clone)]
struct Workitem {
    id: Uuid,
    type_id: Uuid,
    status_id: Uuid,
    created: OffsetDateTime,
    modified: OffsetDateTime,
    status_changed: OffsetDateTime,
    closed: Option<OffsetDateTime>,
    modified_by: Option<String>,
    /// The writable fields as last set, in their API names.
    fields: Map<String, Value>,
    /// When `POST` created it (seeded workitems have always existed), for the consistency lag.
    created_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct TaskState {
    worktypes: Vec<Worktype>,
    workitems: BTreeMap<Uuid, Workitem>,
    /// Creation order, which queries follow.
    order: Vec<Uuid>,
    /// States replaced by a PATCH within the consistency lag, oldest first, with when they were
    /// replaced: what lagging reads still show.
    replaced: BTreeMap<Uuid, Vec<(Instant, Workitem)>>,
}

fn seeded_worktype() -> Worktype {
    let status = |name, category, destinations: &[&str]| Status {
        id: status_id(name),
        name,
        category,
        destinations: destinations.iter().map(|d| status_id(d)).collect(),
    };
    Worktype {
        id: worktype_id(),
        name: "Support case",
        statuses: vec![
            status("Open", "Open", &["In Progress", "Closed"]),
            status("In Progress", "InProgress", &["Waiting", "Escalated", "Closed"]),
            status("Waiting", "Waiting", &["In Progress", "Closed"]),
            status("Escalated", "InProgress", &[]),
            status("Closed", "Closed", &["Open"]),
        ],
        default_status: status_id("Open"),
    }
}

impl TaskState {
    pub fn seeded(workitems: usize) -> Self {
        let worktype = seeded_worktype();
        let now = OffsetDateTime::now_utc();
        let mut state = Self {
            worktypes: vec![worktype.clone()],
            workitems: BTreeMap::new(),
            order: Vec::new(),
            replaced: BTreeMap::new(),
        };
        for n in 0..workitems {
            let mut fields = Map::new();
            fields.insert("name".into(), json!(format!("Case {:04}", n + 1)));
            fields.insert("priority".into(), json!(0));
            let item = Workitem {
                id: workitem_id(n),
                type_id: worktype.id,
                status_id: worktype.default_status,
                created: now,
                modified: now,
                status_changed: now,
                closed: None,
                modified_by: None,
                fields,
                created_at: None,
            };
            state.order.push(item.id);
            state.workitems.insert(item.id, item);
        }
        state
    }

    fn worktype(&self, id: Uuid) -> Option<&Worktype> {
        self.worktypes.iter().find(|w| w.id == id)
    }

    /// The workitem as reads `lag` behind the writes see it: `None` if it was created since,
    /// the state before the first PATCH made since, else the current state.
    fn as_seen(&self, id: Uuid, lag: std::time::Duration) -> Option<&Workitem> {
        let item = self.workitems.get(&id)?;
        if lag.is_zero() {
            return Some(item);
        }
        if item.created_at.is_some_and(|at| at.elapsed() < lag) {
            return None;
        }
        let replaced_since = self
            .replaced
            .get(&id)
            .and_then(|states| states.iter().find(|(at, _)| at.elapsed() < lag));
        Some(replaced_since.map_or(item, |(_, before)| before))
    }

    /// Replaces a workitem's state, keeping the old one while lagging reads may still show it.
    fn replace(&mut self, updated: Workitem, lag: std::time::Duration) {
        let id = updated.id;
        let before = self.workitems.insert(id, updated);
        if lag.is_zero() {
            self.replaced.remove(&id);
            return;
        }
        let states = self.replaced.entry(id).or_default();
        states.retain(|(at, _)| at.elapsed() < lag);
        states.extend(before.map(|before| (Instant::now(), before)));
    }

    fn render(&self, item: &Workitem) -> Value {
        let worktype = self
            .worktype(item.type_id)
            .expect("workitems keep a known worktype");
        let status = worktype
            .status(item.status_id)
            .expect("workitems keep a known status");
        let reference = |id: &Value, path: &str| {
            id.as_str()
                .map(|id| json!({"id": id, "selfUri": format!("{path}/{id}")}))
        };
        let field = |name: &str| item.fields.get(name).cloned().unwrap_or(Value::Null);
        let mut value = json!({
            "id": item.id,
            "name": field("name"),
            "division": {"id": "*", "name": "Home", "selfUri": "/api/v2/authorization/divisions/*"},
            "type": worktype.reference(),
            "description": field("description"),
            "priority": item.fields.get("priority").cloned().unwrap_or(json!(0)),
            "dateCreated": genesys_time(item.created),
            "dateModified": genesys_time(item.modified),
            "dateDue": field("dateDue"),
            "dateExpires": field("dateExpires"),
            "durationSeconds": field("durationSeconds"),
            "ttl": field("ttl"),
            "status": {"id": status.id, "name": status.name, "selfUri": format!("/api/v2/taskmanagement/worktypes/{}/statuses/{}", worktype.id, status.id)},
            "statusCategory": status.category,
            "dateStatusChanged": genesys_time(item.status_changed),
            "dateClosed": item.closed.map(genesys_time),
            "workbin": reference(&field("workbinId"), "/api/v2/taskmanagement/workbins"),
            "assignee": reference(&field("assigneeId"), "/api/v2/users"),
            "externalContact": reference(&field("externalContactId"), "/api/v2/externalcontacts/contacts"),
            "externalTag": field("externalTag"),
            "modifiedBy": item.modified_by.as_ref().map(|client| json!({"id": client})),
            "queue": reference(&field("queueId"), "/api/v2/routing/queues"),
            "language": reference(&field("languageId"), "/api/v2/routing/languages"),
            "skills": field("skillIds").as_array().map(|ids| {
                ids.iter().filter_map(|id| reference(id, "/api/v2/routing/skills")).collect::<Vec<_>>()
            }),
            "autoStatusTransition": item.fields.get("autoStatusTransition").cloned().unwrap_or(json!(true)),
            "customFields": field("customFields"),
            "selfUri": format!("/api/v2/taskmanagement/workitems/{}", item.id),
        });
        // Genesys leaves unset fields out rather than sending nulls.
        if let Value::Object(map) = &mut value {
            map.retain(|_, v| !v.is_null());
        }
        value
    }
}

/// Checks the writable fields shared by create and update; returns them as they will be stored.
fn validate_fields(
    body: &Map<String, Value>,
    worktype: &Worktype,
    creating: bool,
) -> Result<Map<String, Value>, ApiError> {
    let mut fields = Map::new();
    for (name, value) in body {
        if value.is_null() {
            continue;
        }
        let invalid = |what: &str| ApiError::invalid_value(format!("{name} {what}"));
        match name.as_str() {
            "name" => {
                let length = value
                    .as_str()
                    .map(|s| s.chars().count())
                    .ok_or_else(|| invalid("must be a string"))?;
                if !(3..=256).contains(&length) {
                    return Err(invalid("must be between 3 and 256 characters"));
                }
            }
            "priority" => {
                let priority = value.as_i64().ok_or_else(|| invalid("must be an integer"))?;
                if !PRIORITY_RANGE.contains(&priority) {
                    return Err(invalid("must be between -25000000 and 25000000"));
                }
            }
            "description" => {
                let length = value
                    .as_str()
                    .map(|s| s.chars().count())
                    .ok_or_else(|| invalid("must be a string"))?;
                if length > MAX_DESCRIPTION {
                    return Err(invalid("must be at most 512 characters"));
                }
            }
            "queueId" | "assigneeId" | "languageId" | "externalContactId" | "workbinId" | "scriptId"
            | "utilizationLabelId" => {
                value
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or_else(|| invalid("must be a UUID"))?;
            }
            "statusId" => {
                let id = value
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or_else(|| invalid("must be a UUID"))?;
                if worktype.status(id).is_none() {
                    return Err(invalid("is not a status of the workitem's worktype"));
                }
            }
            "skillIds" | "preferredAgentIds" => {
                let ids = value
                    .as_array()
                    .ok_or_else(|| invalid("must be a list of UUIDs"))?;
                if ids
                    .iter()
                    .any(|id| id.as_str().and_then(|s| Uuid::parse_str(s).ok()).is_none())
                {
                    return Err(invalid("must be a list of UUIDs"));
                }
            }
            "externalTag" | "wrapupCode" | "assignmentOperation" | "assignmentState" => {
                value.as_str().ok_or_else(|| invalid("must be a string"))?;
            }
            "dateDue" | "dateExpires" | "dateClosed" => {
                let raw = value
                    .as_str()
                    .ok_or_else(|| invalid("must be an ISO-8601 date"))?;
                let at = OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| invalid("must be an ISO-8601 date"))?;
                if name != "dateClosed" && at > OffsetDateTime::now_utc() + Duration::days(365) {
                    return Err(ApiError::pre_check(
                        "pre.check.value.greater.than",
                        format!("{name} must not be more than 365 days in the future"),
                    ));
                }
            }
            "durationSeconds" | "ttl" => {
                value
                    .as_i64()
                    .filter(|v| *v >= 0)
                    .ok_or_else(|| invalid("must be a non-negative integer"))?;
            }
            "autoStatusTransition" => {
                value.as_bool().ok_or_else(|| invalid("must be a boolean"))?;
            }
            "customFields" => {
                value.as_object().ok_or_else(|| invalid("must be an object"))?;
            }
            "typeId" if creating => {}
            "scoredAgents" => {
                let agents = value.as_array().ok_or_else(|| invalid("must be a list"))?;
                if agents.len() > 20 {
                    return Err(invalid("must have at most 20 entries"));
                }
            }
            _ => {}
        }
        fields.insert(name.clone(), value.clone());
    }
    if let (Some(due), Some(expires)) = (fields.get("dateDue"), fields.get("dateExpires")) {
        let parse = |v: &Value| {
            OffsetDateTime::parse(
                v.as_str().unwrap_or_default(),
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
        };
        if parse(due) > parse(expires) {
            return Err(ApiError::pre_check(
                "pre.check.value.greater.than",
                "dateDue must not be after dateExpires",
            ));
        }
    }
    Ok(fields)
}

fn object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request("The request body must be a JSON object.")),
    }
}

pub(crate) async fn create(
    State(sandbox): State<Arc<Sandbox>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let client_id = authorize(&sandbox, &headers)?;
    let raw = json_body(&body)?;
    let body = object(raw.clone())?;
    let mut world = sandbox.world();
    let type_id = match body.get("typeId") {
        None | Some(Value::Null) => return Err(ApiError::bad_request("typeId is required.")),
        Some(v) => v
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| ApiError::invalid_value("typeId must be a UUID"))?,
    };
    let worktype = world
        .tasks
        .worktype(type_id)
        .cloned()
        .ok_or_else(|| ApiError::invalid_value(format!("The worktype {type_id} does not exist.")))?;
    if body.get("name").is_none_or(Value::is_null) {
        return Err(ApiError::bad_request("name is required."));
    }
    let mut fields = validate_fields(&body, &worktype, true)?;
    fields.remove("typeId");
    let status_id = fields
        .remove("statusId")
        .and_then(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
        .unwrap_or(worktype.default_status);
    let now = OffsetDateTime::now_utc();
    let closed = (worktype.status(status_id).map(|s| s.category) == Some("Closed")).then_some(now);
    let item = Workitem {
        id: Uuid::new_v4(),
        type_id,
        status_id,
        created: now,
        modified: now,
        status_changed: now,
        closed,
        modified_by: Some(client_id.clone()),
        fields,
        created_at: Some(Instant::now()),
    };
    let rendered = world.tasks.render(&item);
    world.tasks.order.push(item.id);
    let path = format!("/api/v2/taskmanagement/workitems/{}", item.id);
    world.tasks.workitems.insert(item.id, item.clone());
    world.record(client_id, "POST", path, format!("workitem:{}", item.id), raw);
    Ok(Json(rendered))
}

fn consistency_lag(sandbox: &Sandbox) -> std::time::Duration {
    std::time::Duration::from_millis(sandbox.behaviour().consistency_lag_ms)
}

fn workitem_not_found(id: impl std::fmt::Display) -> ApiError {
    ApiError::not_found(format!("The workitem {id} was not found."))
}

pub(crate) async fn get(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, id) = authorize_on(&sandbox, &headers, &raw_id, "workitem")?;
    let lag = consistency_lag(&sandbox);
    let world = sandbox.world();
    let item = world
        .tasks
        .as_seen(id, lag)
        .ok_or_else(|| workitem_not_found(id))?;
    Ok(Json(world.tasks.render(item)))
}

pub(crate) async fn update(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (client_id, id) = authorize_on(&sandbox, &headers, &raw_id, "workitem")?;
    let raw = json_body(&body)?;
    let body = object(raw.clone())?;
    let lag = consistency_lag(&sandbox);
    let mut world = sandbox.world();
    // The true state, whatever lagging reads show.
    let item = world
        .tasks
        .workitems
        .get(&id)
        .cloned()
        .ok_or_else(|| workitem_not_found(id))?;
    let worktype = world
        .tasks
        .worktype(item.type_id)
        .cloned()
        .expect("workitems keep a known worktype");
    let mut changes = validate_fields(&body, &worktype, false)?;
    let mut updated = item.clone();
    let now = OffsetDateTime::now_utc();
    if let Some(target) = changes
        .remove("statusId")
        .and_then(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
    {
        if target != item.status_id {
            let current = worktype
                .status(item.status_id)
                .expect("workitems keep a known status");
            if !current.destinations.is_empty() && !current.destinations.contains(&target) {
                let target_name = worktype.status(target).map(|s| s.name).unwrap_or("unknown");
                return Err(ApiError::pre_check(
                    "pre.check.status.transition.not.allowed",
                    format!("The status {} cannot transition to {target_name}.", current.name),
                ));
            }
            updated.status_id = target;
            updated.status_changed = now;
            updated.closed = (worktype.status(target).map(|s| s.category) == Some("Closed")).then_some(now);
        }
    }
    for (name, value) in changes {
        if name == "customFields" && value.as_object().is_some_and(Map::is_empty) {
            // An empty object clears the custom fields.
            updated.fields.remove("customFields");
            continue;
        }
        updated.fields.insert(name, value);
    }
    updated.modified = now;
    updated.modified_by = Some(client_id.clone());
    let rendered = world.tasks.render(&updated);
    world.tasks.replace(updated, lag);
    world.record(
        client_id,
        "PATCH",
        format!("/api/v2/taskmanagement/workitems/{id}"),
        format!("workitem:{id}"),
        raw,
    );
    Ok(Json(rendered))
}

pub(crate) async fn query(
    State(sandbox): State<Arc<Sandbox>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let body = object(json_body(&body)?)?;
    let filters = body
        .get("filters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if filters.is_empty() || filters.len() > 3 {
        return Err(ApiError::bad_request("A query needs between 1 and 3 filters."));
    }
    let mut parsed = Vec::new();
    for filter in &filters {
        let name = filter.get("name").and_then(Value::as_str).unwrap_or_default();
        let operator = filter
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_uppercase();
        let values: Vec<String> = filter
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if !QUERY_FILTERS.contains(&name) {
            return Err(ApiError::invalid_value(format!(
                "Filtering on {name:?} is not supported."
            )));
        }
        if !["EQ", "IN", "NEQ"].contains(&operator.as_str()) || values.is_empty() {
            return Err(ApiError::invalid_value(format!(
                "Filter {name}: operator {operator:?} with values {values:?} is not supported."
            )));
        }
        parsed.push((name.to_string(), operator, values));
    }
    if !parsed
        .iter()
        .any(|(name, op, _)| op == "EQ" && QUERY_ROOT_FILTERS.contains(&name.as_str()))
    {
        return Err(ApiError::bad_request(
            "A query requires at least one EQ filter on workbinId, assigneeId, queueId or typeId.",
        ));
    }
    let page_size = body
        .get("pageSize")
        .and_then(Value::as_u64)
        .unwrap_or(25)
        .clamp(1, 200) as usize;
    let start = body
        .get("after")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<usize>().ok())
        .unwrap_or(0);
    let lag = consistency_lag(&sandbox);
    let world = sandbox.world();
    let attribute = |item: &Workitem, name: &str| -> Option<String> {
        match name {
            "typeId" => Some(item.type_id.to_string()),
            "statusId" => Some(item.status_id.to_string()),
            "id" => Some(item.id.to_string()),
            other => item.fields.get(other).and_then(Value::as_str).map(str::to_string),
        }
    };
    let matching: Vec<&Workitem> = world
        .tasks
        .order
        .iter()
        .filter_map(|id| world.tasks.as_seen(*id, lag))
        .filter(|item| {
            parsed.iter().all(|(name, op, values)| {
                let actual = attribute(item, name);
                let hit = actual
                    .as_ref()
                    .is_some_and(|a| values.iter().any(|v| v.eq_ignore_ascii_case(a)));
                if op == "NEQ" {
                    !hit
                } else {
                    hit
                }
            })
        })
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(page_size)
        .map(|item| world.tasks.render(item))
        .collect();
    let mut listing = json!({
        "entities": page,
        "count": page.len(),
        "selfUri": "/api/v2/taskmanagement/workitems/query",
    });
    if start + page_size < matching.len() {
        listing["after"] = json!((start + page_size).to_string());
    }
    Ok(Json(listing))
}

pub(crate) async fn statuses(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, id) = authorize_on(&sandbox, &headers, &raw_id, "worktype")?;
    let world = sandbox.world();
    let worktype = world
        .tasks
        .worktype(id)
        .ok_or_else(|| ApiError::not_found(format!("The worktype {id} was not found.")))?;
    let status_ref = |id: Uuid| {
        let name = worktype.status(id).map(|s| s.name);
        json!({"id": id, "name": name, "selfUri": format!("/api/v2/taskmanagement/worktypes/{}/statuses/{id}", worktype.id)})
    };
    let entities: Vec<Value> = worktype
        .statuses
        .iter()
        .map(|status| {
            json!({
                "id": status.id,
                "name": status.name,
                "category": status.category,
                "destinationStatuses": status.destinations.iter().map(|d| status_ref(*d)).collect::<Vec<_>>(),
                "description": format!("{} ({})", status.name, status.category),
                "worktype": worktype.reference(),
                "autoTerminateWorkitem": false,
                "selfUri": format!("/api/v2/taskmanagement/worktypes/{}/statuses/{}", worktype.id, status.id),
            })
        })
        .collect();
    Ok(Json(json!({
        "total": entities.len(),
        "entities": entities,
        "selfUri": format!("/api/v2/taskmanagement/worktypes/{id}/statuses"),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lagging_reads_see_the_state_of_lag_ago() {
        let lag = std::time::Duration::from_millis(40);
        let mut state = TaskState::seeded(1);
        let seeded = workitem_id(0);
        assert!(
            state.as_seen(seeded, lag).is_some(),
            "the seed has always existed"
        );

        let mut created = state.workitems[&seeded].clone();
        created.id = Uuid::new_v4();
        created.created_at = Some(Instant::now());
        state.workitems.insert(created.id, created.clone());
        assert!(state.as_seen(created.id, lag).is_none());
        assert!(state.as_seen(created.id, std::time::Duration::ZERO).is_some());

        let rename = |item: &Workitem, name: &str| {
            let mut renamed = item.clone();
            renamed.fields.insert("name".into(), json!(name));
            renamed
        };
        let name_seen = |state: &TaskState| state.as_seen(seeded, lag).map(|i| i.fields["name"].clone());
        let first = rename(&state.workitems[&seeded], "First");
        state.replace(first, lag);
        let second = rename(&state.workitems[&seeded], "Second");
        state.replace(second, lag);
        assert_eq!(
            name_seen(&state),
            Some(json!("Case 0001")),
            "the state before both patches"
        );
        assert_eq!(
            state.workitems[&seeded].fields["name"], "Second",
            "writes apply to the truth"
        );
        std::thread::sleep(lag);
        assert_eq!(name_seen(&state), Some(json!("Second")));
        assert!(state.as_seen(created.id, lag).is_some());
    }
}
