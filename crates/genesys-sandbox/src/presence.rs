//! Presence definitions, user presence and routing status.
//!
//! - `GET /api/v2/presence/definitions` → `OrganizationPresenceDefinitionEntityListing`
//! - `GET`/`PATCH /api/v2/users/{userId}/presences/purecloud` → `UserPresence`
//! - `GET`/`PUT /api/v2/users/{userId}/routingstatus` → `RoutingStatus`

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::api::{authorize, authorize_on, json_body, ApiError};
use super::state::{genesys_time, User, World};
use super::Sandbox;

/// Routing statuses a client may set; the others reflect live interactions.
const SETTABLE_ROUTING: [&str; 2] = ["OFF_QUEUE", "IDLE"];
/// Routing statuses of an agent on a live interaction.
const LIVE_ROUTING: [&str; 2] = ["INTERACTING", "COMMUNICATING"];
pub(crate) const ALL_ROUTING: [&str; 5] = [
    "OFF_QUEUE",
    "IDLE",
    "INTERACTING",
    "NOT_RESPONDING",
    "COMMUNICATING",
];

pub(crate) async fn definitions(
    State(sandbox): State<Arc<Sandbox>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let world = sandbox.world();
    let entities: Vec<Value> = world.definitions.iter().map(|d| d.to_json()).collect();
    Ok(Json(json!({"total": entities.len(), "entities": entities})))
}

pub(crate) fn user_presence(world: &World, user_id: Uuid, user: &User) -> Value {
    let definition = world.definition(user.presence).map(|d| d.reference());
    json!({
        "source": "PURECLOUD",
        "primary": true,
        "presenceDefinition": definition,
        "message": user.message,
        "modifiedDate": genesys_time(user.presence_modified),
        "selfUri": format!("/api/v2/users/{user_id}/presences/purecloud"),
    })
}

fn user_not_found(user_id: impl std::fmt::Display) -> ApiError {
    ApiError::not_found(format!("The user {user_id} was not found."))
}

/// The user `user_id`, or the API's 404 for it.
pub(crate) fn find_user(world: &World, user_id: Uuid) -> Result<&User, ApiError> {
    world.users.get(&user_id).ok_or_else(|| user_not_found(user_id))
}

/// The user `user_id` to change, or the API's 404 for it.
pub(crate) fn find_user_mut(world: &mut World, user_id: Uuid) -> Result<&mut User, ApiError> {
    world
        .users
        .get_mut(&user_id)
        .ok_or_else(|| user_not_found(user_id))
}

pub(crate) async fn get_presence(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, user_id) = authorize_on(&sandbox, &headers, &raw_id, "user")?;
    let world = sandbox.world();
    Ok(Json(user_presence(&world, user_id, find_user(&world, user_id)?)))
}

/// Applies one presence change (`PATCH` body or bulk item) to `user_id` and logs it.
fn change_presence(
    world: &mut World,
    client_id: &str,
    user_id: Uuid,
    body: &Value,
    path: String,
) -> Result<Value, ApiError> {
    if !world.users.contains_key(&user_id) {
        return Err(user_not_found(user_id));
    }
    let definition = match body.get("presenceDefinition") {
        None | Some(Value::Null) => None,
        Some(reference) => {
            let raw = reference.get("id").and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad_request("presenceDefinition.id is required when presenceDefinition is given.")
            })?;
            let found = Uuid::parse_str(raw)
                .ok()
                .and_then(|id| world.definition(id))
                .cloned();
            match found {
                Some(d) if !d.deactivated => Some(d),
                Some(_) => {
                    return Err(ApiError::invalid_value(format!(
                        "The presence definition {raw} is deactivated."
                    )))
                }
                None => {
                    return Err(ApiError::invalid_value(format!(
                        "The presence definition {raw} does not exist."
                    )))
                }
            }
        }
    };
    let message = match body.get("message") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(ApiError::invalid_value("message must be a string.")),
    };
    let primary = body.get("primary").and_then(Value::as_bool);
    if definition.is_none() && message.is_none() && primary.is_none() {
        return Err(ApiError::bad_request(
            "A presence update needs a presenceDefinition, a message or primary.",
        ));
    }
    let now = OffsetDateTime::now_utc();
    let user = world.users.get_mut(&user_id).expect("checked above");
    if let Some(definition) = &definition {
        user.presence = definition.id;
        // As in Genesys: going On Queue makes the agent routable, leaving it takes them off queue.
        // An agent on a live interaction stays on it when (again) On Queue.
        let on_queue = definition.system_presence == "OnQueue";
        let (current, _) = user.routing();
        if !(on_queue && LIVE_ROUTING.contains(&current)) {
            user.set_routing_until(if on_queue { "IDLE" } else { "OFF_QUEUE" }, now, None);
        }
    }
    if let Some(message) = message {
        user.message = message;
    }
    user.presence_modified = now;
    let user = user.clone();
    let method = if path.ends_with("/bulk") { "PUT" } else { "PATCH" };
    world.record(
        client_id.to_string(),
        method,
        path,
        format!("user:{user_id}"),
        body.clone(),
    );
    Ok(user_presence(world, user_id, &user))
}

pub(crate) async fn patch_presence(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (client_id, user_id) = authorize_on(&sandbox, &headers, &raw_id, "user")?;
    let body = json_body(&body)?;
    let path = format!("/api/v2/users/{user_id}/presences/purecloud");
    Ok(Json(change_presence(
        &mut sandbox.world(),
        &client_id,
        user_id,
        &body,
        path,
    )?))
}

/// `PUT /api/v2/users/presences/bulk`: a list of `MutableUserPresence` whose `id` is the user
/// id. Each entry is applied on its own; entries that cannot be applied (unknown user, bad
/// definition) are left out of the response, which lists the presences that were set.
pub(crate) async fn put_bulk(
    State(sandbox): State<Arc<Sandbox>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let client_id = authorize(&sandbox, &headers)?;
    let body = json_body(&body)?;
    let Some(items) = body.as_array() else {
        return Err(ApiError::bad_request(
            "The request body must be a list of presences.",
        ));
    };
    let max = sandbox.config().bulk_presence_max;
    if items.len() > max {
        return Err(ApiError::invalid_value(format!(
            "At most {max} presences can be set per request, got {}.",
            items.len()
        )));
    }
    let mut world = sandbox.world();
    let mut applied = Vec::new();
    for item in items {
        let Some(user_id) = item
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| Uuid::parse_str(id).ok())
        else {
            continue;
        };
        let path = "/api/v2/users/presences/bulk".to_string();
        if let Ok(mut presence) = change_presence(&mut world, &client_id, user_id, item, path) {
            presence["id"] = json!(user_id);
            applied.push(presence);
        }
    }
    Ok(Json(Value::Array(applied)))
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct BulkIds {
    id: Option<String>,
}

/// `GET /api/v2/users/presences/purecloud/bulk?id=a,b`: `UcUserPresence` of up to 50 users;
/// unknown users are left out.
pub(crate) async fn get_bulk(
    State(sandbox): State<Arc<Sandbox>>,
    Query(query): Query<BulkIds>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let ids: Vec<&str> = query
        .id
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .collect();
    if ids.len() > 50 {
        return Err(ApiError::invalid_value(format!(
            "At most 50 ids can be requested, got {}.",
            ids.len()
        )));
    }
    let world = sandbox.world();
    let presences: Vec<Value> = ids
        .iter()
        .filter_map(|raw| Uuid::parse_str(raw).ok())
        .filter_map(|id| world.users.get(&id).map(|user| (id, user)))
        .map(|(id, user)| {
            let mut presence = user_presence(&world, id, user);
            presence["userId"] = json!(id);
            presence
                .as_object_mut()
                .expect("presences are objects")
                .remove("primary");
            presence
        })
        .collect();
    Ok(Json(Value::Array(presences)))
}

/// The `RoutingStatus` of `user` as read now.
pub(crate) fn user_routing_status(user_id: Uuid, user: &User) -> Value {
    let (status, started) = user.routing();
    routing_status(user_id, status, started)
}

fn routing_status(user_id: Uuid, status: &str, started: OffsetDateTime) -> Value {
    json!({"userId": user_id, "status": status, "startTime": genesys_time(started)})
}

pub(crate) async fn get_routing_status(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, user_id) = authorize_on(&sandbox, &headers, &raw_id, "user")?;
    let world = sandbox.world();
    // The API answers OFF_QUEUE for a user that does not exist, not 404.
    Ok(Json(match world.users.get(&user_id) {
        Some(user) => user_routing_status(user_id, user),
        None => routing_status(user_id, "OFF_QUEUE", OffsetDateTime::now_utc()),
    }))
}

pub(crate) async fn put_routing_status(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (client_id, user_id) = authorize_on(&sandbox, &headers, &raw_id, "user")?;
    let body = json_body(&body)?;
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(status) = SETTABLE_ROUTING.iter().find(|s| **s == status) else {
        let problem = if ALL_ROUTING.contains(&status.as_str()) {
            format!("The routing status {status} cannot be set.")
        } else {
            format!("The routing status {status:?} is not valid.")
        };
        return Err(ApiError::invalid_value(problem));
    };
    let mut world = sandbox.world();
    let now = OffsetDateTime::now_utc();
    find_user_mut(&mut world, user_id)?.set_routing(status, now);
    let path = format!("/api/v2/users/{user_id}/routingstatus");
    world.record(client_id, "PUT", path, format!("user:{user_id}"), body);
    Ok(Json(routing_status(user_id, status, now)))
}
