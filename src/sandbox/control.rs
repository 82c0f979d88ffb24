//! The control API under `/sandbox/`: what the simulated Genesys saw, and resets.
//!
//! - `GET /sandbox/stats`: `requests` (route template, status, count), `throttled` (429s
//!   served) and `mutations` (every applied change, in order, with entity and request body).
//! - `POST /sandbox/reset`: back to the seeded state; stats and tokens cleared.
//! - `GET /sandbox/users`: the seeded users (id, name, current presence).
//! - `POST /sandbox/tokens/revoke`: invalidates every issued token (the next call gets a 401).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::state::World;
use super::Sandbox;

pub(crate) async fn stats(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
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
    Json(json!({"requests": requests, "throttled": throttled, "mutations": world.mutations}))
}

pub(crate) async fn reset(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    *sandbox.world() = World::seeded(&sandbox.config);
    Json(json!({"reset": true}))
}

pub(crate) async fn users(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    let world = sandbox.world();
    let mut users: Vec<_> = world.users.iter().collect();
    users.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let users: Vec<Value> = users
        .into_iter()
        .map(|(id, user)| {
            let presence = world.definition(user.presence).map(|d| d.label);
            json!({"id": id, "name": user.name, "presence": presence, "routingStatus": user.routing_status})
        })
        .collect();
    Json(json!({"entities": users}))
}

pub(crate) async fn revoke_tokens(State(sandbox): State<Arc<Sandbox>>) -> Json<Value> {
    let revoked = sandbox.world().revoke_tokens();
    Json(json!({"revoked": revoked}))
}
