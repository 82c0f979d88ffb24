//! Presence definitions, user presence and routing status.
//!
//! - `GET /api/v2/presence/definitions` → `OrganizationPresenceDefinitionEntityListing`
//! - `GET`/`PATCH /api/v2/users/{userId}/presences/purecloud` → `UserPresence`
//! - `GET`/`PUT /api/v2/users/{userId}/routingstatus` → `RoutingStatus`

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::api::{authorize, json_body, parse_id, ApiError};
use super::state::{genesys_time, User, World};
use super::Sandbox;

/// Routing statuses a client may set; the others reflect live interactions.
const SETTABLE_ROUTING: [&str; 2] = ["OFF_QUEUE", "IDLE"];
const ALL_ROUTING: [&str; 5] = [
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

fn user_presence(world: &World, user_id: Uuid, user: &User) -> Value {
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

pub(crate) async fn get_presence(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let user_id = parse_id(&raw_id, "user")?;
    let world = sandbox.world();
    let user = world.users.get(&user_id).ok_or_else(|| user_not_found(user_id))?;
    Ok(Json(user_presence(&world, user_id, user)))
}

pub(crate) async fn patch_presence(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let client_id = authorize(&sandbox, &headers)?;
    let user_id = parse_id(&raw_id, "user")?;
    let body = json_body(&body)?;
    let mut world = sandbox.world();
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
        let routing = if definition.system_presence == "On Queue" {
            "IDLE"
        } else {
            "OFF_QUEUE"
        };
        if user.routing_status != routing {
            user.routing_status = routing;
            user.routing_started = now;
        }
    }
    if let Some(message) = message {
        user.message = message;
    }
    user.presence_modified = now;
    let user = user.clone();
    let path = format!("/api/v2/users/{user_id}/presences/purecloud");
    world.record(client_id, "PATCH", path, format!("user:{user_id}"), body);
    Ok(Json(user_presence(&world, user_id, &user)))
}

fn routing_status(user_id: Uuid, status: &str, started: OffsetDateTime) -> Value {
    json!({"userId": user_id, "status": status, "startTime": genesys_time(started)})
}

pub(crate) async fn get_routing_status(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let user_id = parse_id(&raw_id, "user")?;
    let world = sandbox.world();
    // The API answers OFF_QUEUE for a user that does not exist, not 404.
    Ok(Json(match world.users.get(&user_id) {
        Some(user) => routing_status(user_id, user.routing_status, user.routing_started),
        None => routing_status(user_id, "OFF_QUEUE", OffsetDateTime::now_utc()),
    }))
}

pub(crate) async fn put_routing_status(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let client_id = authorize(&sandbox, &headers)?;
    let user_id = parse_id(&raw_id, "user")?;
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
    let user = world
        .users
        .get_mut(&user_id)
        .ok_or_else(|| user_not_found(user_id))?;
    user.routing_status = status;
    user.routing_started = now;
    let path = format!("/api/v2/users/{user_id}/routingstatus");
    world.record(client_id, "PUT", path, format!("user:{user_id}"), body);
    Ok(Json(routing_status(user_id, status, now)))
}
