//! The control API under `/sandbox/`: what the simulated Genesys saw, and knobs for tests.
//! These routes bypass the gateway: they are not counted, limited or faulted.
//!
//! | route | |
//! |---|---|
//! | `GET /sandbox/stats` | `requests` (route template, status, count), `throttled` (429s), `throttled_by` (429s per `limit.key`), `clients` (per OAuth client id: `requests`, `throttled`), `dropped_responses`, `reset_connections`, `mutations` |
//! | `GET /sandbox/mutations?entity=user:<id>` | the mutation log, optionally of one entity |
//! | `POST`/`GET /sandbox/webhook` | a webhook receiver for `relay` (keeps the last 1,000 deliveries: headers and body) |
//! | `POST /sandbox/reset` | back to the seed: state, stats, tokens, faults cleared |
//! | `GET`/`PUT`/`DELETE /sandbox/ratelimit` | the per-client rate limit (`{requests_per_second, burst}`); with `client_id` (in the body, or `?client_id=` for `DELETE`) one client's own limit in place of it |
//! | `GET`/`POST`/`DELETE /sandbox/faults` | list, set (one route's [`Fault`]), clear all |
//! | `GET`/`PUT`/`DELETE /sandbox/behaviour` | the [`Behaviour`] played (PUT replaces it; fields not given take their defaults) |
//! | `POST /sandbox/flows/{flowId}/lock` | lock a flow as another client (`{client_id}`, default `other-client`) or as a person (`{user_id}`, shown as `lockedUser`); `release_after_ms` makes the holder let go by itself |
//! | `POST /sandbox/flows/{flowId}/fail-next-publish` | the flow's next publish fails (`FAILURE` with `errorCode`, `errorMessage`, `errorMessageParams`, `errorDetails`) |
//! | `POST /sandbox/flows/{flowId}/alter-next-publish` | the flow's next publish that moves `publishedVersion` succeeds, but the published version's configuration then reads back with `"sandboxAltered": true` added at the top level |
//! | `PUT /sandbox/flows/{flowId}/consumers` | `{consumers: [{id, name, type, version?}]}`: what dependency tracking (`consumingresources`) reports as using the flow (replaces) |
//! | `GET /sandbox/users` | seeded users with current presence, routing status and Out of Office (`outOfOffice`: active or not; `routingStatusRevertsAt` while a status set for a while lasts) |
//! | `PUT /sandbox/users/{userId}/state` | state only Genesys sets: `{out_of_office?: bool, routing_status?: "INTERACTING"\|"COMMUNICATING"\|"IDLE"\|"OFF_QUEUE"\|"NOT_RESPONDING", revert_after_ms?}`; with `revert_after_ms` the routing status goes back to what it was after that long (the interaction ends); answers the user as `GET /sandbox/users` lists them |
//! | `POST /sandbox/tokens/revoke` | invalidate every token (the next API call gets a 401) |

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::architect::{Consumer, LockHolder};
use super::behaviour::Behaviour;
use super::faults::Fault;
use super::presence::ALL_ROUTING;
use super::state::{genesys_time, OutOfOffice, User, World};
use super::{RateLimit, Sandbox, OTHER_CLIENT_ID};

type Reply = (StatusCode, Json<Value>);

fn refused(status: StatusCode, problem: impl Into<String>) -> Reply {
    (status, Json(json!({"error": problem.into()})))
}

pub(crate) fn router() -> Router<Arc<Sandbox>> {
    Router::new()
        .route("/sandbox/stats", get(stats))
        .route("/sandbox/mutations", get(mutations))
        .route("/sandbox/reset", post(reset))
        .route(
            "/sandbox/ratelimit",
            get(get_rate_limit).put(set_rate_limit).delete(clear_rate_limit),
        )
        .route(
            "/sandbox/faults",
            get(list_faults).post(set_fault).delete(clear_faults),
        )
        .route(
            "/sandbox/behaviour",
            get(get_behaviour).put(set_behaviour).delete(clear_behaviour),
        )
        .route("/sandbox/flows/{flowId}/lock", post(lock_flow))
        .route(
            "/sandbox/flows/{flowId}/fail-next-publish",
            post(fail_next_publish),
        )
        .route(
            "/sandbox/flows/{flowId}/alter-next-publish",
            post(alter_next_publish),
        )
        .route("/sandbox/flows/{flowId}/consumers", put(set_consumers))
        .route("/sandbox/users", get(users))
        .route("/sandbox/users/{userId}/state", put(set_user_state))
        .route("/sandbox/webhook", get(webhook_deliveries).post(webhook))
        .route("/sandbox/tokens/revoke", post(revoke_tokens))
}

async fn webhook(
    State(sandbox): State<Arc<Sandbox>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let mut world = sandbox.world();
    let signed = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    world.webhook.push_back(json!({
        "event_id": signed("x-genesys-worker-event-id"),
        "timestamp": signed("x-genesys-worker-timestamp"),
        "signature": signed("x-genesys-worker-signature"),
        "body": serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
    }));
    if world.webhook.len() > super::state::WEBHOOK_KEPT {
        world.webhook.pop_front();
    }
    StatusCode::NO_CONTENT
}

async fn webhook_deliveries(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    Json(json!({"deliveries": sandbox.world().webhook.iter().collect::<Vec<_>>()}))
}

async fn stats(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    let world = sandbox.world();
    let requests: Vec<Value> = world
        .stats
        .requests
        .iter()
        .map(|((route, status), count)| json!({"route": route, "status": status, "count": count}))
        .collect();
    let throttled: u64 = world
        .stats
        .requests
        .iter()
        .filter(|((_, s), _)| *s == 429)
        .map(|(_, c)| c)
        .sum();
    Json(json!({
        "requests": requests,
        "throttled": throttled,
        "throttled_by": world.stats.throttled_by,
        "clients": world.stats.clients,
        "dropped_responses": world.stats.dropped_responses,
        "reset_connections": world.stats.reset_connections,
        "mutations": world.mutations,
    }))
}

#[derive(Debug, Deserialize)]
struct EntityFilter {
    entity: Option<String>,
}

async fn mutations(State(sandbox): State<Arc<Sandbox>>, Query(filter): Query<EntityFilter>) -> Json<Value> {
    let world = sandbox.world();
    let selected: Vec<_> = world
        .mutations
        .iter()
        .filter(|m| filter.entity.as_ref().is_none_or(|e| &m.entity == e))
        .collect();
    Json(json!({"mutations": selected}))
}

async fn reset(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    let mut world = sandbox.world();
    // The rate limits stay as set, one client's own included.
    let client_limits = world.client_rate_limits().clone();
    *world = World::seeded(&sandbox.config());
    for (client, limit) in client_limits {
        world.set_client_rate_limit(&client, Some(limit));
    }
    Json(json!({"reset": true}))
}

async fn get_rate_limit(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    let clients = sandbox.world().client_rate_limits().clone();
    Json(json!({"rate_limit": sandbox.config().rate_limit, "clients": clients}))
}

/// `PUT /sandbox/ratelimit`: the limit, and optionally the one client it is for.
#[derive(Debug, Deserialize)]
struct RateLimitFor {
    #[serde(flatten)]
    limit: RateLimit,
    #[serde(default)]
    client_id: Option<String>,
}

async fn set_rate_limit(State(sandbox): State<Arc<Sandbox>>, Json(request): Json<RateLimitFor>) -> Reply {
    let limit = request.limit;
    if limit.requests_per_second == 0 || limit.burst == 0 {
        return refused(
            StatusCode::BAD_REQUEST,
            "requests_per_second and burst must be positive",
        );
    }
    if let Some(client) = request.client_id {
        sandbox.world().set_client_rate_limit(&client, Some(limit));
        return (
            StatusCode::OK,
            Json(json!({"client_id": client, "rate_limit": limit})),
        );
    }
    sandbox.set_rate_limit(Some(limit));
    (StatusCode::OK, Json(json!({"rate_limit": limit})))
}

#[derive(Debug, Deserialize)]
struct ClientFilter {
    client_id: Option<String>,
}

async fn clear_rate_limit(
    State(sandbox): State<Arc<Sandbox>>,
    Query(filter): Query<ClientFilter>,
) -> Json<Value> {
    if let Some(client) = filter.client_id {
        sandbox.world().set_client_rate_limit(&client, None);
        return Json(json!({"client_id": client, "rate_limit": null}));
    }
    sandbox.set_rate_limit(None);
    Json(json!({"rate_limit": null}))
}

async fn get_behaviour(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    Json(json!({"behaviour": sandbox.behaviour()}))
}

async fn set_behaviour(State(sandbox): State<Arc<Sandbox>>, Json(behaviour): Json<Behaviour>) -> Reply {
    if let Some(problem) = behaviour.problem() {
        return refused(StatusCode::BAD_REQUEST, problem);
    }
    sandbox.set_behaviour(behaviour.clone());
    (StatusCode::OK, Json(json!({"behaviour": behaviour})))
}

async fn clear_behaviour(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    sandbox.set_behaviour(Behaviour::default());
    Json(json!({"behaviour": Behaviour::default()}))
}

async fn list_faults(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    Json(json!({"faults": sandbox.world().faults.list()}))
}

async fn set_fault(State(sandbox): State<Arc<Sandbox>>, Json(fault): Json<Fault>) -> Reply {
    if let Some(problem) = fault.problem() {
        return refused(StatusCode::BAD_REQUEST, problem);
    }
    let mut world = sandbox.world();
    world.faults.set(fault);
    (StatusCode::OK, Json(json!({"faults": world.faults.list()})))
}

async fn clear_faults(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    sandbox.world().faults.clear();
    Json(json!({"faults": []}))
}

/// Who the lock is taken as: an OAuth client (`client_id`, by default `other-client`) or a
/// person (`user_id`); `release_after_ms` lets the holder release it by itself.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LockAs {
    client_id: Option<String>,
    user_id: Option<Uuid>,
    release_after_ms: Option<u64>,
}

async fn lock_flow(
    State(sandbox): State<Arc<Sandbox>>,
    Path(flow): Path<Uuid>,
    body: Option<Json<LockAs>>,
) -> Reply {
    let lock = body.map(|Json(b)| b).unwrap_or_default();
    let release_after = lock.release_after_ms.map(Duration::from_millis);
    let mut world = sandbox.world();
    let (holder, reply) = match (lock.client_id, lock.user_id) {
        (Some(_), Some(_)) => {
            return refused(StatusCode::BAD_REQUEST, "give client_id or user_id, not both");
        }
        (None, Some(user)) => {
            // A seeded user locks under their own name; any other id stands for a person the
            // sandbox does not list.
            let name = world
                .users
                .get(&user)
                .map(|u| u.name.clone())
                .unwrap_or_else(|| format!("Architect user {}", &user.simple().to_string()[..8]));
            let reply = json!({"flow": flow, "locked_user": {"id": user, "name": name}});
            (LockHolder::User { id: user, name }, reply)
        }
        (client, None) => {
            let client = client.unwrap_or_else(|| OTHER_CLIENT_ID.to_string());
            let reply = json!({"flow": flow, "locked_client": client});
            (LockHolder::Client(client), reply)
        }
    };
    if world.flows.lock_as(flow, holder, release_after) {
        let mut reply = reply;
        if let Some(after) = lock.release_after_ms {
            reply["release_after_ms"] = json!(after);
        }
        (StatusCode::OK, Json(reply))
    } else {
        refused(StatusCode::NOT_FOUND, format!("no flow {flow}"))
    }
}

async fn fail_next_publish(State(sandbox): State<Arc<Sandbox>>, Path(flow): Path<Uuid>) -> Reply {
    if sandbox.world().flows.fail_next_publish(flow) {
        (
            StatusCode::OK,
            Json(json!({"flow": flow, "fail_next_publish": true})),
        )
    } else {
        refused(StatusCode::NOT_FOUND, format!("no flow {flow}"))
    }
}

async fn alter_next_publish(State(sandbox): State<Arc<Sandbox>>, Path(flow): Path<Uuid>) -> Reply {
    if sandbox.world().flows.alter_next_publish(flow) {
        (
            StatusCode::OK,
            Json(json!({"flow": flow, "alter_next_publish": true})),
        )
    } else {
        refused(StatusCode::NOT_FOUND, format!("no flow {flow}"))
    }
}

/// `PUT /sandbox/flows/{flowId}/consumers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Consumers {
    consumers: Vec<Consumer>,
}

async fn set_consumers(
    State(sandbox): State<Arc<Sandbox>>,
    Path(flow): Path<Uuid>,
    Json(body): Json<Consumers>,
) -> Reply {
    if let Some(problem) = body.consumers.iter().find_map(Consumer::problem) {
        return refused(StatusCode::BAD_REQUEST, problem);
    }
    let count = body.consumers.len();
    if sandbox.world().flows.set_consumers(flow, body.consumers) {
        (StatusCode::OK, Json(json!({"flow": flow, "consumers": count})))
    } else {
        refused(StatusCode::NOT_FOUND, format!("no flow {flow}"))
    }
}

/// A user as the control API shows them.
fn user_view(world: &World, id: Uuid, user: &User) -> Value {
    let presence = world.definition(user.presence).map(|d| d.label);
    let (routing_status, _) = user.routing();
    let mut view = json!({
        "id": id,
        "name": user.name,
        "presence": presence,
        "routingStatus": routing_status,
        "outOfOffice": user.out_of_office.active,
    });
    if let Some(at) = user.routing_reverts_at() {
        view["routingStatusRevertsAt"] = json!(genesys_time(at));
    }
    view
}

async fn users(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    let world = sandbox.world();
    let mut users: Vec<_> = world.users.iter().collect();
    users.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let users: Vec<Value> = users
        .into_iter()
        .map(|(id, user)| user_view(&world, *id, user))
        .collect();
    Json(json!({"entities": users}))
}

/// `PUT /sandbox/users/{userId}/state`: what only Genesys sets about a user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserState {
    out_of_office: Option<bool>,
    routing_status: Option<String>,
    revert_after_ms: Option<u64>,
}

async fn set_user_state(
    State(sandbox): State<Arc<Sandbox>>,
    Path(user_id): Path<Uuid>,
    Json(state): Json<UserState>,
) -> Reply {
    let routing = match state.routing_status.as_deref() {
        None => None,
        Some(raw) => match ALL_ROUTING.iter().find(|s| **s == raw) {
            Some(status) => Some(*status),
            None => {
                return refused(
                    StatusCode::BAD_REQUEST,
                    format!("routing_status {raw:?} is not one of {}", ALL_ROUTING.join(", ")),
                )
            }
        },
    };
    if routing.is_none() && state.revert_after_ms.is_some() {
        return refused(
            StatusCode::BAD_REQUEST,
            "revert_after_ms needs a routing_status to revert from",
        );
    }
    let mut world = sandbox.world();
    let Some(user) = world.users.get_mut(&user_id) else {
        return refused(StatusCode::NOT_FOUND, format!("no user {user_id}"));
    };
    let now = time::OffsetDateTime::now_utc();
    if let Some(status) = routing {
        let after = state.revert_after_ms.map(Duration::from_millis);
        user.set_routing_until(status, now, after);
    }
    if let Some(active) = state.out_of_office {
        user.out_of_office = if active {
            OutOfOffice {
                active: true,
                indefinite: true,
                start_date: Some(now),
                end_date: None,
            }
        } else {
            OutOfOffice::default()
        };
    }
    let user = user.clone();
    (StatusCode::OK, Json(user_view(&world, user_id, &user)))
}

async fn revoke_tokens(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    let revoked = sandbox.world().revoke_tokens();
    Json(json!({"revoked": revoked}))
}
