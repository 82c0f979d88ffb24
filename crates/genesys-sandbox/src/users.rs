//! Users and their Out of Office.
//!
//! - `GET /api/v2/users?id=&expand=&pageSize=&pageNumber=` → `UserEntityListing`
//! - `GET /api/v2/users/{userId}?expand=` → `User`
//! - `GET`/`PUT /api/v2/users/{userId}/outofoffice` → `OutOfOffice`
//!
//! `expand` takes `presence` (the `UserPresence` of `GET …/presences/purecloud`),
//! `routingStatus` (`RoutingStatus`) and `outOfOffice` (`OutOfOffice`), repeated or
//! comma-separated; other values are ignored. As the API documents, expansion is a best effort:
//! with the behaviour's `expand_omitted_every` N, every Nth entity of a listing comes back
//! without them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use time::format_description::well_known::Iso8601;
use time::{OffsetDateTime, PrimitiveDateTime};
use uuid::Uuid;

use super::api::{authorize, authorize_on, json_body, query_list, query_value, ApiError, Page};
use super::presence::{find_user, find_user_mut, user_presence, user_routing_status};
use super::state::{genesys_time, OutOfOffice, User, World};
use super::Sandbox;

/// Most ids one `GET /api/v2/users` takes.
const MAX_IDS: usize = 100;
/// Largest `pageSize` of `GET /api/v2/users`.
const MAX_PAGE_SIZE: usize = 500;
const DEFAULT_PAGE_SIZE: usize = 25;

/// Which of a `User`'s fields to expand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Expand {
    presence: bool,
    routing_status: bool,
    out_of_office: bool,
}

impl Expand {
    fn from_query(query: Option<&str>) -> Self {
        let values = query_list(query, "expand");
        let has = |name: &str| values.iter().any(|v| v == name);
        Self {
            presence: has("presence"),
            routing_status: has("routingStatus"),
            out_of_office: has("outOfOffice"),
        }
    }

    /// The values asked for, as the listing's URIs repeat them.
    fn names(self) -> Vec<&'static str> {
        [
            (self.presence, "presence"),
            (self.routing_status, "routingStatus"),
            (self.out_of_office, "outOfOffice"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// The `OutOfOffice` of `user`.
pub(crate) fn out_of_office_json(user_id: Uuid, out_of_office: &OutOfOffice) -> Value {
    let mut value = json!({
        "id": user_id,
        "user": {"id": user_id, "selfUri": format!("/api/v2/users/{user_id}")},
        "active": out_of_office.active,
        "indefinite": out_of_office.indefinite,
        "selfUri": format!("/api/v2/users/{user_id}/outofoffice"),
    });
    if let Some(start) = out_of_office.start_date {
        value["startDate"] = json!(genesys_time(start));
    }
    if let Some(end) = out_of_office.end_date {
        value["endDate"] = json!(genesys_time(end));
    }
    value
}

/// The `User`, with the fields `expand` asks for.
fn user_json(world: &World, user_id: Uuid, user: &User, expand: Expand) -> Value {
    let mut value = json!({
        "id": user_id,
        "name": user.name,
        "state": "active",
        "selfUri": format!("/api/v2/users/{user_id}"),
    });
    if expand.presence {
        value["presence"] = user_presence(world, user_id, user);
    }
    if expand.routing_status {
        value["routingStatus"] = user_routing_status(user_id, user);
    }
    if expand.out_of_office {
        value["outOfOffice"] = out_of_office_json(user_id, &user.out_of_office);
    }
    value
}

/// `GET /api/v2/users`: the users named by `id` (at most 100; unknown ones are left out), in
/// the order asked, or every user by name; paged by `pageSize` (25, at most 500) and
/// `pageNumber`. `state` other than `active` lists nobody: every sandbox user is active.
pub(crate) async fn list_users(
    State(sandbox): State<Arc<Sandbox>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let query = query.as_deref();
    let ids = query_list(query, "id");
    if ids.len() > MAX_IDS {
        return Err(ApiError::bad_request(format!(
            "At most {MAX_IDS} ids can be requested, got {}.",
            ids.len()
        )));
    }
    let page = Page::from_query(query, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let expand = Expand::from_query(query);
    let omitted_every = sandbox.behaviour().expand_omitted_every as usize;
    let only_active = query_value(query, "state").is_none_or(|s| s.eq_ignore_ascii_case("active"));
    let world = sandbox.world();
    let selected: Vec<(Uuid, &User)> = if !only_active {
        Vec::new()
    } else if ids.is_empty() {
        let mut all: Vec<_> = world.users.iter().map(|(id, user)| (*id, user)).collect();
        all.sort_by(|a, b| a.1.name.cmp(&b.1.name).then(a.0.cmp(&b.0)));
        all
    } else {
        let mut seen = std::collections::HashSet::new();
        ids.iter()
            .filter_map(|raw| Uuid::parse_str(raw).ok())
            .filter(|id| seen.insert(*id))
            .filter_map(|id| world.users.get(&id).map(|user| (id, user)))
            .collect()
    };
    let total = selected.len();
    let entities: Vec<Value> = page
        .of(selected)
        .enumerate()
        .map(|(i, (id, user))| {
            // Best effort: every Nth entity of the page comes without its expansions.
            let omitted = omitted_every > 0 && (i + 1) % omitted_every == 0;
            let expand = if omitted { Expand::default() } else { expand };
            user_json(&world, id, user, expand)
        })
        .collect();
    let mut uri_query = url::form_urlencoded::Serializer::new(String::new());
    if !ids.is_empty() {
        uri_query.append_pair("id", &ids.join(","));
    }
    if !expand.names().is_empty() {
        uri_query.append_pair("expand", &expand.names().join(","));
    }
    Ok(Json(page.listing(
        entities,
        total,
        "/api/v2/users",
        &uri_query.finish(),
    )))
}

/// `GET /api/v2/users/{userId}`: the `User`, expanded as asked (always: the best effort of
/// `expand_omitted_every` is the listing's); unknown user → 404.
pub(crate) async fn get_user(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, user_id) = authorize_on(&sandbox, &headers, &raw_id, "user")?;
    let expand = Expand::from_query(query.as_deref());
    let world = sandbox.world();
    Ok(Json(user_json(
        &world,
        user_id,
        find_user(&world, user_id)?,
        expand,
    )))
}

pub(crate) async fn get_out_of_office(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, user_id) = authorize_on(&sandbox, &headers, &raw_id, "user")?;
    let world = sandbox.world();
    let user = find_user(&world, user_id)?;
    Ok(Json(out_of_office_json(user_id, &user.out_of_office)))
}

/// A date of an `OutOfOffice` body: ISO 8601 with an offset, or without one (UTC), as the
/// SDK's `isoformat()` of a naive `datetime` sends it.
fn date_field(body: &Value, field: &str) -> Result<Option<OffsetDateTime>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(raw)) => OffsetDateTime::parse(raw, &Iso8601::DEFAULT)
            .or_else(|_| PrimitiveDateTime::parse(raw, &Iso8601::DEFAULT).map(PrimitiveDateTime::assume_utc))
            .map(Some)
            .map_err(|_| ApiError::invalid_value(format!("{field} {raw:?} is not an ISO 8601 date-time."))),
        Some(_) => Err(ApiError::invalid_value(format!(
            "{field} must be an ISO 8601 date-time string."
        ))),
    }
}

fn bool_field(body: &Value, field: &str) -> Result<bool, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid_value(format!("{field} must be a boolean."))),
    }
}

/// `PUT /api/v2/users/{userId}/outofoffice`: replaces the user's Out of Office with the body's
/// `active`, `indefinite` (both false when not given), `startDate` and `endDate` (an end before
/// the start → 400).
pub(crate) async fn put_out_of_office(
    State(sandbox): State<Arc<Sandbox>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (client_id, user_id) = authorize_on(&sandbox, &headers, &raw_id, "user")?;
    let body = json_body(&body)?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be an OutOfOffice object.",
        ));
    }
    let out_of_office = OutOfOffice {
        active: bool_field(&body, "active")?,
        indefinite: bool_field(&body, "indefinite")?,
        start_date: date_field(&body, "startDate")?,
        end_date: date_field(&body, "endDate")?,
    };
    if let (Some(start), Some(end)) = (out_of_office.start_date, out_of_office.end_date) {
        if end < start {
            return Err(ApiError::invalid_value("endDate must not be before startDate."));
        }
    }
    let mut world = sandbox.world();
    let user = find_user_mut(&mut world, user_id)?;
    user.out_of_office = out_of_office;
    let answer = out_of_office_json(user_id, &user.out_of_office);
    let path = format!("/api/v2/users/{user_id}/outofoffice");
    world.record(client_id, "PUT", path, format!("user:{user_id}"), body);
    Ok(Json(answer))
}
