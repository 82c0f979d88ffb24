//! The worker against a throttling, failing Genesys: what the sandbox saw and what the jobs
//! became.

use genesys_worker::events::Outcome;
use genesys_worker::sandbox::{user_id, RateLimit, SandboxConfig};
use serde_json::json;

use crate::helpers::{agent_job, spawn_app_with};

const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";

async fn set_fault(app: &crate::helpers::TestApp, fault: serde_json::Value) {
    let response = app
        .http
        .post(format!("{}/sandbox/faults", app.sandbox.base_url()))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

#[tokio::test]
async fn throttled_jobs_wait_for_retry_after_and_all_land_without_spending_attempts() {
    let sandbox = SandboxConfig {
        users: 20,
        rate_limit: Some(RateLimit {
            requests_per_second: 2,
            burst: 2,
        }),
        ..SandboxConfig::default()
    };
    // The worker's own budget is far above Genesys' limit, so Genesys answers 429s.
    let mut app = spawn_app_with(sandbox, &[]).await;
    for n in 0..5 {
        app.publish(&agent_job(user_id(n), json!({"presence": "Available"})))
            .await;
    }
    let events = app.audit_events(5).await;
    for event in &events {
        assert_eq!(event.event.outcome, Outcome::Applied, "{:?}", event.event.error);
        assert_eq!(event.event.attempts, 1, "a 429 is not an attempt");
    }
    let stats = app.sandbox_stats().await;
    assert!(
        stats["throttled"].as_u64().unwrap() >= 1,
        "the sandbox never throttled: {stats:#}"
    );
    assert_eq!(app.mutations().await.len(), 5, "each change made exactly once");
    app.stop().await;
}

#[tokio::test]
async fn transient_errors_are_retried_and_the_change_lands_once() {
    let mut app = spawn_app_with(
        SandboxConfig {
            users: 20,
            ..SandboxConfig::default()
        },
        &[],
    )
    .await;
    set_fault(
        &app,
        json!({"route": PATCH_PRESENCE, "errors": {"503": 1.0}, "times": 2}),
    )
    .await;
    app.publish(&agent_job(user_id(0), json!({"presence": "Break"})))
        .await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Applied);
    assert_eq!(event.event.attempts, 3);
    assert_eq!(app.requests(PATCH_PRESENCE, 503).await, 2);
    assert_eq!(app.requests(PATCH_PRESENCE, 200).await, 1);
    assert_eq!(app.mutations().await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn errors_that_outlast_the_retries_fail_the_job_into_the_dead_letter_queue() {
    let mut app = spawn_app_with(
        SandboxConfig {
            users: 20,
            ..SandboxConfig::default()
        },
        &[("GENESYS_MAX_ATTEMPTS", "2")],
    )
    .await;
    set_fault(&app, json!({"route": PATCH_PRESENCE, "errors": {"502": 1.0}})).await;
    app.publish(&agent_job(user_id(1), json!({"presence": "Break"})))
        .await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Failed);
    assert_eq!(event.event.attempts, 2);
    assert_eq!(event.event.genesys_status, Some(502));
    assert_eq!(event.routing_key, "audit.agent.status.failed");
    let letter = app.dead_letters(1).await.remove(0);
    assert_eq!(letter.headers["x-error-code"], "genesys.bad.gateway");
    assert_eq!(letter.headers["x-attempts"], "2");
    assert!(app.mutations().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_response_lost_after_the_change_is_retried_without_a_second_effect() {
    let mut app = spawn_app_with(
        SandboxConfig {
            users: 20,
            ..SandboxConfig::default()
        },
        &[],
    )
    .await;
    set_fault(
        &app,
        json!({"route": PATCH_PRESENCE, "drop_response": 1.0, "times": 1}),
    )
    .await;
    app.publish(&agent_job(user_id(2), json!({"presence": "Meal"})))
        .await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Applied);
    assert_eq!(event.event.attempts, 2);
    // Setting a presence is idempotent: the retry sets the same value again.
    assert_eq!(app.user(user_id(2)).await["presence"], "Meal");
    app.stop().await;
}
