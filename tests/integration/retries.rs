//! The worker against a throttling, failing Genesys: what the sandbox saw and what the jobs
//! became.

use genesys_sandbox::{user_id, RateLimit, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::json;

use crate::helpers::{agent_job, spawn_app_with, PER_AGENT_CALLS};

const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";

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
    let mut app = spawn_app_with(sandbox, PER_AGENT_CALLS).await;
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
    // Throttling is counted apart from errors, where operators look.
    let ready: serde_json::Value = app
        .http
        .get(format!("http://{}/readyz", app.config.admin_addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ready["genesys_throttled"].as_u64().unwrap() >= 1, "{ready}");
    app.stop().await;
}

#[tokio::test]
async fn transient_errors_are_retried_and_the_change_lands_once() {
    let mut app = spawn_app_with(
        SandboxConfig {
            users: 20,
            ..SandboxConfig::default()
        },
        PER_AGENT_CALLS,
    )
    .await;
    app.set_fault(json!({"route": PATCH_PRESENCE, "errors": {"503": 1.0}, "times": 2}))
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
        &[("GENESYS_MAX_ATTEMPTS", "2"), PER_AGENT_CALLS[0]],
    )
    .await;
    app.set_fault(json!({"route": PATCH_PRESENCE, "errors": {"502": 1.0}}))
        .await;
    app.publish(&agent_job(user_id(1), json!({"presence": "Break"})))
        .await;
    // Two in-process attempts per round; a round in each of the two retry tiers; then failed.
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Failed);
    assert_eq!(event.event.attempts, 2);
    assert_eq!(event.event.genesys_status, Some(502));
    assert_eq!(event.routing_key, "audit.agent.status.failed");
    app.assert_no_more_events().await;
    let letter = app.dead_letters(1).await.remove(0);
    assert_eq!(letter.headers["x-error-code"], "genesys.bad.gateway");
    assert_eq!(letter.headers["x-attempts"], "6");
    assert_eq!(letter.headers["x-retries"], "2");
    assert_eq!(
        letter.routing_key, "agent.status",
        "dead-lettered under its original routing key"
    );
    assert_eq!(
        letter.headers["x-original-exchange"],
        app.config.topology.jobs_exchange
    );
    assert_eq!(app.requests(PATCH_PRESENCE, 502).await, 6);
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
        PER_AGENT_CALLS,
    )
    .await;
    app.set_fault(json!({"route": PATCH_PRESENCE, "drop_response": 1.0, "times": 1}))
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

#[tokio::test]
async fn with_30_percent_503s_on_mutating_routes_every_job_lands_exactly_once() {
    use genesys_sandbox::worktype_id;
    let sandbox = SandboxConfig {
        users: 30,
        seed: 7,
        ..SandboxConfig::default()
    };
    let mut app = spawn_app_with(
        sandbox,
        &[("RETRY_DELAYS_MS", "100,200,400,800"), PER_AGENT_CALLS[0]],
    )
    .await;
    for route in [PATCH_PRESENCE, "POST /api/v2/taskmanagement/workitems"] {
        app.set_fault(json!({"route": route, "errors": {"503": 0.3}}))
            .await;
    }
    let mut tags = Vec::new();
    for n in 0..20 {
        app.publish(&agent_job(user_id(n), json!({"presence": "On Queue"})))
            .await;
    }
    for n in 0..10 {
        let tag = format!("flaky-{n}-{}", uuid::Uuid::new_v4());
        let mut create = crate::helpers::job(
            "interaction.create",
            json!({"type_id": worktype_id(), "name": format!("Flaky {n}")}),
        );
        create["idempotency_key"] = json!(tag);
        tags.push(tag);
        app.publish(&create).await;
    }
    let events = app.audit_events(30).await;
    for event in &events {
        assert_eq!(event.event.outcome, Outcome::Applied, "{:?}", event.event.error);
    }
    app.crm_events(30).await;
    app.assert_no_more_events().await;
    let stats = app.sandbox_stats().await;
    assert!(
        crate::helpers::requests_in(&stats, PATCH_PRESENCE, 503) > 0,
        "faults were injected"
    );
    let mutations = stats["mutations"].as_array().unwrap();
    assert_eq!(mutations.len(), 30, "each job changed Genesys exactly once");
    let created: Vec<&str> = mutations
        .iter()
        .filter_map(|m| m["body"]["externalTag"].as_str())
        .collect();
    for tag in &tags {
        assert_eq!(
            created.iter().filter(|t| *t == tag).count(),
            1,
            "one workitem for {tag}"
        );
    }
    app.stop().await;
}
