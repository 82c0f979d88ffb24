//! `agent.status` through the whole pipeline: what Genesys saw, what reached the exchanges.
//!
//! These follow the per-agent path (`BULK_PRESENCE=off`: one PATCH per job); `bulk.rs` covers
//! the coalesced one.

use genesys_sandbox::{presence_definition_id, user_id};
use genesys_worker::canonical;
use genesys_worker::events::{audit_event_id, crm_event_id, Outcome, GENESIS_CHECKSUM};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_job, spawn_app_with, TestApp, PER_AGENT_CALLS};

const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";

async fn spawn_app() -> TestApp {
    spawn_app_with(
        genesys_sandbox::SandboxConfig {
            users: 20,
            ..Default::default()
        },
        PER_AGENT_CALLS,
    )
    .await
}

/// Recomputes an event's checksum the way a downstream verifier would: from the JSON received.
fn recomputed_checksum(event: &Value) -> String {
    // The chain covers the event without its checksum and its place in the audit log.
    let mut without = event.clone();
    without.as_object_mut().unwrap().remove("checksum");
    without.as_object_mut().unwrap().remove("log_index");
    let prev = event["prev_checksum"].as_str().unwrap();
    canonical::sha256_hex(format!("{prev}\n{}", canonical::to_string(&without)).as_bytes())
}

#[tokio::test]
async fn one_job_is_applied_with_exactly_one_patch_and_the_documented_events() {
    let mut app = spawn_app().await;
    let user = user_id(0);
    let job = agent_job(user, json!({"presence": "On Queue", "message": "shift start"}));
    app.publish(&job).await;

    let audit = app.audit_events(1).await.remove(0);
    let crm = app.crm_events(1).await.remove(0);
    app.assert_no_more_events().await;

    // Genesys saw one PATCH with the definition id of "On Queue" and the message.
    let mutations = app.mutations().await;
    assert_eq!(mutations.len(), 1, "{mutations:#?}");
    assert_eq!(mutations[0]["method"], "PATCH");
    assert_eq!(
        mutations[0]["path"],
        format!("/api/v2/users/{user}/presences/purecloud")
    );
    assert_eq!(
        mutations[0]["body"],
        json!({"presenceDefinition": {"id": presence_definition_id("On Queue")}, "message": "shift start"})
    );
    assert_eq!(app.requests(PATCH_PRESENCE, 200).await, 1);
    assert_eq!(app.user(user).await["presence"], "On Queue");

    // The audit event carries the documented fields.
    let job_id: Uuid = job["job_id"].as_str().unwrap().parse().unwrap();
    let key = audit.event.idempotency_key.clone().expect("the key is reported");
    assert_eq!(audit.routing_key, "audit.agent.status.applied");
    let event = &audit.event;
    assert_eq!(event.event_id, audit_event_id(&key, job_id, Outcome::Applied));
    assert_eq!(
        audit.properties.message_id().as_ref().map(|m| m.to_string()),
        Some(event.event_id.to_string())
    );
    assert_eq!(event.job_id, job_id);
    assert_eq!(event.kind, "agent.status");
    assert_eq!(event.entity, format!("user:{user}"));
    assert_eq!(event.outcome, Outcome::Applied);
    assert_eq!(event.actor.as_deref(), Some("integration-test"));
    assert_eq!(event.correlation_id.as_deref(), job["correlation_id"].as_str());
    assert_eq!(event.genesys_status, Some(200));
    assert_eq!(event.attempts, 1);
    assert!(event.error.is_none());
    let new_state = event.new_state.clone().unwrap();
    assert_eq!(new_state["presence"], "On Queue");
    assert_eq!(
        new_state["presence_definition_id"],
        presence_definition_id("On Queue").to_string()
    );
    assert_eq!(new_state["message"], "shift start");
    assert_eq!(event.entity_version, 1);
    assert_eq!(event.prev_checksum, GENESIS_CHECKSUM);
    let raw = serde_json::to_value(event).unwrap();
    for field in [
        "log_index",
        "event_id",
        "job_id",
        "kind",
        "entity",
        "outcome",
        "actor",
        "correlation_id",
        "previous_state",
        "new_state",
        "attempts",
        "latency_ms",
        "genesys_status",
        "error",
        "entity_version",
        "checksum",
        "prev_checksum",
        "occurred_at",
    ] {
        assert!(raw.get(field).is_some(), "audit event lacks {field}: {raw:#}");
    }
    assert_eq!(event.checksum.clone().unwrap(), recomputed_checksum(&raw));

    // The CRM event is the compact record of the same change.
    assert_eq!(crm.routing_key, "crm.agent.status");
    assert_eq!(crm.event.event_id, crm_event_id(&key, job_id));
    assert_eq!(crm.event.job_id, job_id);
    assert_eq!(crm.event.entity, event.entity);
    assert_eq!(crm.event.new_state, event.new_state);
    assert_eq!(crm.event.entity_version, 1);
    assert_eq!(crm.event.actor, event.actor);
    assert_eq!(crm.event.correlation_id, event.correlation_id);
    app.stop().await;
}

#[tokio::test]
async fn the_same_job_three_times_patches_once_and_reports_two_duplicates() {
    let mut app = spawn_app().await;
    let user = user_id(1);
    let job = agent_job(user, json!({"presence": "Available"}));
    for _ in 0..3 {
        app.publish(&job).await;
    }
    let events = app.audit_events(3).await;
    let outcomes: Vec<Outcome> = events.iter().map(|e| e.event.outcome).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Applied).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Duplicate).count(),
        2,
        "{outcomes:?}"
    );
    app.crm_events(1).await;
    app.assert_no_more_events().await;

    assert_eq!(app.mutations().await.len(), 1);
    assert_eq!(app.requests(PATCH_PRESENCE, 200).await, 1);
    let duplicate = events
        .iter()
        .find(|e| e.event.outcome == Outcome::Duplicate)
        .unwrap();
    assert_eq!(duplicate.routing_key, "audit.agent.status.duplicate");
    // A duplicate is not a link of the chain; it references the head the applied job made.
    let applied = events
        .iter()
        .find(|e| e.event.outcome == Outcome::Applied)
        .unwrap();
    assert_eq!(duplicate.event.checksum, None);
    assert_eq!(duplicate.event.entity_version, 1);
    assert_eq!(
        Some(duplicate.event.prev_checksum.clone()),
        applied.event.checksum
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_with_a_code_and_the_worker_keeps_going() {
    let mut app = spawn_app().await;
    let unknown_kind_id = Uuid::new_v4();
    let bad_user_job = json!({
        "job_id": Uuid::new_v4(), "kind": "agent.status",
        "payload": {"user_id": "not-a-uuid", "presence": "Available"}
    });
    app.publish_raw("agent.status", b"{\"job_id\": oops").await;
    app.publish(&json!({"job_id": unknown_kind_id, "kind": "agent.teleport", "payload": {}}))
        .await;
    app.publish(&bad_user_job).await;
    let good = agent_job(user_id(2), json!({"presence": "Break"}));
    app.publish(&good).await;

    let letters = app.dead_letters(3).await;
    let mut codes: Vec<&str> = letters
        .iter()
        .map(|l| l.headers["x-error-code"].as_str())
        .collect();
    codes.sort();
    assert_eq!(codes, ["invalid_payload", "malformed_json", "unknown_kind"]);
    for letter in &letters {
        assert!(!letter.headers["x-error-message"].is_empty());
        assert_eq!(
            letter.headers["x-original-exchange"],
            app.config.topology.jobs_exchange
        );
        assert!(letter.headers.contains_key("x-first-seen"));
        assert!(letter.headers.contains_key("x-attempts"));
    }
    let letter = |code: &str| {
        letters
            .iter()
            .find(|l| l.headers["x-error-code"] == code)
            .unwrap()
    };
    // The original message is kept byte for byte, under its original routing key.
    assert_eq!(letter("malformed_json").body, b"{\"job_id\": oops");
    assert_eq!(letter("unknown_kind").routing_key, "agent.teleport");
    assert_eq!(
        letter("unknown_kind").headers["x-original-routing-key"],
        "agent.teleport"
    );
    let invalid = &letter("invalid_payload").headers["x-error-message"];
    assert!(invalid.contains("payload.user_id"), "{invalid}");

    // The two messages that name a job are announced as rejected; the good job is applied.
    let events = app.audit_events(3).await;
    let by_job = |id: &Value| {
        events
            .iter()
            .find(|e| e.event.job_id.to_string() == id.as_str().unwrap())
            .unwrap()
    };
    let unknown = by_job(&json!(unknown_kind_id.to_string()));
    assert_eq!(unknown.event.outcome, Outcome::Rejected);
    assert_eq!(unknown.routing_key, "audit.agent.teleport.rejected");
    assert_eq!(unknown.event.error.as_ref().unwrap().code, "unknown_kind");
    assert_eq!(
        by_job(&bad_user_job["job_id"]).event.error.as_ref().unwrap().code,
        "invalid_payload"
    );
    assert_eq!(by_job(&good["job_id"]).event.outcome, Outcome::Applied);
    assert_eq!(app.mutations().await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_reused_key_with_another_payload_is_rejected_and_the_first_change_stands() {
    let mut app = spawn_app().await;
    let user = user_id(3);
    let mut first = agent_job(user, json!({"presence": "Available"}));
    first["idempotency_key"] = json!("wfm-shift-42-user-3");
    let mut second = agent_job(user, json!({"presence": "Break"}));
    second["idempotency_key"] = json!("wfm-shift-42-user-3");

    app.publish(&first).await;
    assert_eq!(app.audit_events(1).await[0].event.outcome, Outcome::Applied);
    app.publish(&second).await;
    let rejected = app.audit_events(1).await.remove(0);
    assert_eq!(rejected.event.outcome, Outcome::Rejected);
    assert_eq!(
        rejected.event.error.as_ref().unwrap().code,
        "idempotency_key_reused"
    );
    assert_eq!(
        rejected.event.job_id.to_string(),
        second["job_id"].as_str().unwrap()
    );

    let letters = app.dead_letters(1).await;
    assert_eq!(letters[0].headers["x-error-code"], "idempotency_key_reused");
    assert_eq!(serde_json::from_slice::<Value>(&letters[0].body).unwrap(), second);

    let mutations = app.mutations().await;
    assert_eq!(mutations.len(), 1);
    assert_eq!(
        mutations[0]["body"]["presenceDefinition"]["id"],
        presence_definition_id("Available").to_string()
    );
    assert_eq!(app.user(user).await["presence"], "Available");
    app.stop().await;
}

#[tokio::test]
async fn a_failed_expectation_is_a_conflict_and_nothing_is_written() {
    let mut app = spawn_app().await;
    let user = user_id(4); // seeded Offline
    app.publish(&agent_job(
        user,
        json!({"presence": "On Queue", "expected_current": "Available"}),
    ))
    .await;
    let conflict = app.audit_events(1).await.remove(0);
    assert_eq!(conflict.event.outcome, Outcome::Conflict);
    assert_eq!(conflict.routing_key, "audit.agent.status.conflict");
    assert_eq!(
        conflict.event.error.as_ref().unwrap().code,
        "expected_current_mismatch"
    );
    assert_eq!(
        conflict.event.previous_state.as_ref().unwrap()["presence"],
        "Offline"
    );
    assert!(app.mutations().await.is_empty());
    assert_eq!(app.requests(PATCH_PRESENCE, 200).await, 0);

    // A conflict is acked, not dead-lettered; the matching expectation then applies.
    app.publish(&agent_job(
        user,
        json!({"presence": "On Queue", "expected_current": "offline"}),
    ))
    .await;
    let applied = app.audit_events(1).await.remove(0);
    assert_eq!(applied.event.outcome, Outcome::Applied);
    assert_eq!(
        applied.event.previous_state.as_ref().unwrap()["presence"],
        "Offline"
    );
    assert_eq!(app.mutations().await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn routing_status_is_set_after_the_presence() {
    let mut app = spawn_app().await;
    let user = user_id(5);
    app.publish(&agent_job(user, json!({"presence": "On Queue"})))
        .await;
    app.audit_events(1).await;
    app.publish(&agent_job(
        user,
        json!({"presence": "Available", "routing_status": "OFF_QUEUE"}),
    ))
    .await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Applied);
    assert_eq!(
        event.event.new_state.as_ref().unwrap()["routing_status"],
        "OFF_QUEUE"
    );
    let mutations = app.mutations().await;
    let methods: Vec<&str> = mutations.iter().map(|m| m["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["PATCH", "PATCH", "PUT"]);
    assert_eq!(mutations[2]["body"], json!({"status": "OFF_QUEUE"}));
    assert_eq!(app.user(user).await["routingStatus"], "OFF_QUEUE");
    // Two links on one entity: versions 1 and 2, chained.
    assert_eq!(event.event.entity_version, 2);
    app.stop().await;
}

#[tokio::test]
async fn presence_names_and_ids_resolve_and_unknown_names_are_rejected() {
    let mut app = spawn_app().await;
    let lunch = presence_definition_id("Lunch");
    app.publish(&agent_job(user_id(6), json!({"presence": "lunch"})))
        .await;
    app.publish(&agent_job(
        user_id(7),
        json!({"presence": presence_definition_id("Busy").to_string()}),
    ))
    .await;
    app.publish(&agent_job(user_id(8), json!({"presence": "Teleporting"})))
        .await;
    let events = app.audit_events(3).await;
    let mut outcomes: Vec<Outcome> = events.iter().map(|e| e.event.outcome).collect();
    outcomes.sort_by_key(|o| o.as_str());
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Applied, Outcome::Rejected]);
    let rejected = events
        .iter()
        .find(|e| e.event.outcome == Outcome::Rejected)
        .unwrap();
    assert_eq!(rejected.event.error.as_ref().unwrap().code, "unknown_presence");
    assert_eq!(
        app.dead_letters(1).await[0].headers["x-error-code"],
        "unknown_presence"
    );
    assert_eq!(app.user(user_id(6)).await["presence"], "Lunch");
    assert_eq!(app.user(user_id(7)).await["presence"], "Busy");
    let bodies: Vec<Value> = app
        .mutations()
        .await
        .into_iter()
        .map(|m| m["body"].clone())
        .collect();
    assert!(bodies.contains(&json!({"presenceDefinition": {"id": lunch}})));
    // The definitions were listed once for all three jobs.
    assert_eq!(app.requests("GET /api/v2/presence/definitions", 200).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_job_past_not_after_is_expired_and_not_applied() {
    let mut app = spawn_app().await;
    let mut job = agent_job(user_id(9), json!({"presence": "Available"}));
    job["not_after"] = json!("2020-01-01T00:00:00Z");
    app.publish(&job).await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Expired);
    assert_eq!(event.routing_key, "audit.agent.status.expired");
    assert!(app.mutations().await.is_empty());
    app.assert_no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn a_user_genesys_does_not_know_is_rejected_with_its_404() {
    let mut app = spawn_app().await;
    let stranger = Uuid::new_v4();
    app.publish(&agent_job(stranger, json!({"presence": "Available"})))
        .await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Rejected);
    assert_eq!(event.event.genesys_status, Some(404));
    let error = event.event.error.clone().unwrap();
    assert_eq!(error.code, "genesys.not.found");
    assert!(
        error.message.contains(&stranger.to_string())
            && error.message.contains(&event.event.job_id.to_string())
    );
    assert_eq!(
        app.dead_letters(1).await[0].headers["x-error-code"],
        "genesys.not.found"
    );
    app.stop().await;
}
