//! Effectively-once across worker crashes: lease takeover and re-publication of stored events.
//! A crashed worker is simulated by writing the Redis record it would have left behind.

use genesys_sandbox::{presence_definition_id, user_id};
use genesys_worker::events::{AuditEvent, OutboundEvent, Outcome, GENESIS_CHECKSUM};
use genesys_worker::job;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_job, redis_url, sandbox_token, spawn_app, TestApp};

const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";
/// The read of agents' state (presence, routing status, Out of Office) before a change.
const READ_USERS: &str = "GET /api/v2/users";

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn record_key(app: &TestApp, idempotency_key: &str) -> String {
    format!("{}idem:{idempotency_key}", app.config.redis_key_prefix)
}

fn fingerprint(job: &Value) -> String {
    job::decode(&serde_json::to_vec(job).unwrap(), 1 << 20)
        .unwrap()
        .fingerprint
}

/// The record a worker leaves when it dies mid-job, once its lease has expired.
async fn leave_in_progress_without_lease(app: &TestApp, job: &Value) {
    let key = record_key(app, job["idempotency_key"].as_str().unwrap());
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("state")
        .arg("in_progress")
        .arg("fp")
        .arg(fingerprint(job))
        .query_async(&mut redis().await)
        .await
        .unwrap();
}

/// Sets a presence the way the crashed worker did before it died.
async fn patch_directly(app: &TestApp, user: Uuid, presence: &str) {
    let token = sandbox_token(&app.http, &app.sandbox.base_url()).await;
    let status = app
        .http
        .patch(format!(
            "{}/api/v2/users/{user}/presences/purecloud",
            app.sandbox.base_url()
        ))
        .bearer_auth(token)
        .json(&json!({"presenceDefinition": {"id": presence_definition_id(presence)}}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_job_taken_over_from_a_dead_worker_is_not_written_twice() {
    let mut app = spawn_app().await;
    let user = user_id(10);
    let mut job = agent_job(user, json!({"presence": "Available"}));
    job["idempotency_key"] = json!(format!("takeover-{}", Uuid::new_v4()));
    // The dead worker claimed the key, made the change, and died; its lease has expired.
    patch_directly(&app, user, "Available").await;
    leave_in_progress_without_lease(&app, &job).await;

    app.publish(&job).await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Applied);
    assert_eq!(
        event.event.previous_state.as_ref().unwrap()["presence"],
        "Available"
    );
    // The new owner read the presence and found the change made: no second PATCH.
    assert_eq!(app.requests(READ_USERS, 200).await, 1);
    assert_eq!(app.requests(PATCH_PRESENCE, 200).await, 1);
    assert_eq!(app.mutations().await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_job_taken_over_before_the_change_was_made_applies_it_once() {
    let mut app = spawn_app().await;
    let user = user_id(11);
    let mut job = agent_job(user, json!({"presence": "Break"}));
    job["idempotency_key"] = json!(format!("takeover-{}", Uuid::new_v4()));
    leave_in_progress_without_lease(&app, &job).await;

    app.publish(&job).await;
    assert_eq!(app.audit_events(1).await[0].event.outcome, Outcome::Applied);
    assert_eq!(app.requests(READ_USERS, 200).await, 1);
    assert_eq!(app.mutations().await.len(), 1);
    assert_eq!(app.user(user).await["presence"], "Break");
    app.stop().await;
}

/// What a worker that crashed after recording `job`'s outcome, before its events were
/// confirmed, leaves in Redis; returns the stored audit event and the record's key.
async fn leave_done_unconfirmed(app: &TestApp, job: &Value, user: Uuid) -> (AuditEvent, String) {
    let idempotency_key = job["idempotency_key"].as_str().unwrap().to_string();
    let job_id: Uuid = job["job_id"].as_str().unwrap().parse().unwrap();
    // The crashed worker recorded the outcome but died before its events were confirmed.
    let stored = AuditEvent {
        actor: Some("integration-test".into()),
        new_state: Some(json!({"presence": "Meal"})),
        attempts: 1,
        latency_ms: 7,
        genesys_status: Some(200),
        entity_version: 1,
        checksum: Some("ab".repeat(32)),
        prev_checksum: GENESIS_CHECKSUM.into(),
        occurred_at: time::OffsetDateTime::UNIX_EPOCH,
        ..AuditEvent::new(
            job_id,
            "agent.status",
            &idempotency_key,
            format!("user:{user}"),
            Outcome::Applied,
        )
    };
    let body = serde_json::to_string(&stored).unwrap();
    let events = vec![OutboundEvent {
        exchange: app.config.topology.audit_exchange.clone(),
        routing_key: stored.routing_key(),
        message_id: stored.event_id.to_string(),
        body: body.clone(),
    }];
    let key = record_key(app, &idempotency_key);
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("state")
        .arg("done")
        .arg("fp")
        .arg(fingerprint(job))
        .arg("outcome")
        .arg("applied")
        .arg("events")
        .arg(serde_json::to_string(&events).unwrap())
        .arg("confirmed")
        .arg("0")
        .query_async(&mut redis().await)
        .await
        .unwrap();

    (stored, key)
}

#[tokio::test]
async fn a_finished_job_whose_events_were_never_confirmed_republishes_them_unchanged() {
    let mut app = spawn_app().await;
    let user = user_id(12);
    let mut job = agent_job(user, json!({"presence": "Meal"}));
    job["idempotency_key"] = json!(format!("republish-{}", Uuid::new_v4()));
    let (stored, key) = leave_done_unconfirmed(&app, &job, user).await;

    app.publish(&job).await;
    let republished = app.audit_events(1).await.remove(0);
    assert_eq!(republished.event, stored);
    assert!(app.mutations().await.is_empty());

    // Now confirmed: the next copy is an ordinary duplicate.
    crate::helpers::wait_confirmed(&key).await;
    app.publish(&job).await;
    assert_eq!(app.audit_events(1).await[0].event.outcome, Outcome::Duplicate);
    assert!(app.mutations().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn another_copy_arriving_before_the_events_were_confirmed_hears_it_is_a_duplicate() {
    let mut app = spawn_app().await;
    let user = user_id(14);
    let mut job = agent_job(user, json!({"presence": "Meal"}));
    job["idempotency_key"] = json!(format!("republish-{}", Uuid::new_v4()));
    let (stored, _) = leave_done_unconfirmed(&app, &job, user).await;
    // Another copy (its own job id): whoever waits for its outcome must hear one.
    let mut copy = job.clone();
    copy["job_id"] = json!(Uuid::new_v4());
    app.publish(&copy).await;
    let events = app.audit_events(2).await;
    assert!(
        events.iter().any(|e| e.event == stored),
        "the original's events again"
    );
    let duplicate = events
        .iter()
        .find(|e| e.event.job_id.to_string() == copy["job_id"].as_str().unwrap())
        .expect("the copy's own event");
    assert_eq!(duplicate.event.outcome, Outcome::Duplicate);
    assert!(app.mutations().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_message_that_fails_every_time_ends_in_the_dead_letter_queue_by_delivery_limit() {
    let sandbox = genesys_sandbox::SandboxConfig {
        users: 20,
        ..Default::default()
    };
    let app = crate::helpers::spawn_app_with(sandbox, &[("DELIVERY_LIMIT", "2")]).await;
    let mut job = agent_job(user_id(13), json!({"presence": "Break"}));
    let idempotency_key = format!("poison-{}", Uuid::new_v4());
    job["idempotency_key"] = json!(idempotency_key);
    // A record the worker cannot read: every delivery fails on it and is returned to the queue.
    let _: () = redis::cmd("HSET")
        .arg(record_key(&app, &idempotency_key))
        .arg("state")
        .arg("done")
        .arg("fp")
        .arg(fingerprint(&job))
        .arg("outcome")
        .arg("exploded")
        .query_async(&mut redis().await)
        .await
        .unwrap();
    app.publish(&job).await;
    let letter = app.dead_letters(1).await.remove(0);
    assert_eq!(serde_json::from_slice::<Value>(&letter.body).unwrap(), job);
    // Dead-lettered by RabbitMQ itself, which records why.
    assert!(
        letter.headers.contains_key("x-death") || letter.headers.contains_key("x-first-death-reason"),
        "{:?}",
        letter.headers
    );
    assert!(app.mutations().await.is_empty());
    app.stop().await;
}
