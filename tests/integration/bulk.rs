//! Bulk presence coalescing (`BULK_PRESENCE=on`): many jobs, few calls, one outcome each.

use genesys_sandbox::{user_id, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{agent_job, requests_in, spawn_app_with, TestApp};

const BULK: &str = "PUT /api/v2/users/presences/bulk";
const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";

/// A worker with bulk presence on, `users` seeded users and `concurrency` jobs in flight.
async fn spawn_bulk(users: usize, concurrency: &str) -> TestApp {
    spawn_bulk_with_window(users, concurrency, "50").await
}

/// [`spawn_bulk`] with a gathering window of `window_ms`.
async fn spawn_bulk_with_window(users: usize, concurrency: &str, window_ms: &str) -> TestApp {
    let overrides = [
        ("BULK_PRESENCE", "on"),
        ("BULK_WINDOW_MS", window_ms),
        ("BULK_MAX", "50"),
        ("WORKER_CONCURRENCY", concurrency),
        ("WORKER_PREFETCH", "128"),
    ];
    spawn_app_with(
        SandboxConfig {
            users,
            ..SandboxConfig::default()
        },
        &overrides,
    )
    .await
}

#[tokio::test]
async fn a_handover_of_200_agents_costs_a_handful_of_bulk_calls_and_each_job_its_own_outcome() {
    // A window long enough for a loaded machine (the whole suite on two cores) to bring a
    // call's worth of jobs to it: the test is about how many calls, not how fast.
    let mut app = spawn_bulk_with_window(200, "64", "200").await;
    // Write-only jobs: this is about coalescing writes; a read under the presence policies
    // has its own tests (presence_policies.rs).
    let jobs = app
        .publish_agent_jobs_with(
            200,
            serde_json::json!({"presence": "On Queue", "respect_out_of_office": false}),
        )
        .await;
    let events = app.audit_events(200).await;
    assert!(
        events.iter().all(|e| e.event.outcome == Outcome::Applied),
        "{:?}",
        events.iter().find(|e| e.event.outcome != Outcome::Applied)
    );
    let reported: std::collections::HashSet<Uuid> = events.iter().map(|e| e.event.job_id).collect();
    assert_eq!(reported, jobs, "one outcome per job");
    let stats = app.sandbox_stats().await;
    let bulk_calls = requests_in(&stats, BULK, 200);
    assert!(
        (4..=10).contains(&bulk_calls),
        "{bulk_calls} bulk calls for 200 agents"
    );
    assert_eq!(requests_in(&stats, PATCH_PRESENCE, 200), 0);
    let mutations = stats["mutations"].as_array().unwrap();
    assert_eq!(mutations.len(), 200);
    let users: std::collections::HashSet<&str> =
        mutations.iter().map(|m| m["entity"].as_str().unwrap()).collect();
    assert_eq!(users.len(), 200, "each agent changed once");
    app.crm_events(200).await;
    app.stop().await;
}

#[tokio::test]
async fn a_user_the_bulk_call_leaves_out_is_applied_alone_and_meets_its_own_error() {
    let mut app = spawn_bulk(20, "16").await;
    let stranger = Uuid::new_v4();
    for n in 0..5 {
        app.publish(&agent_job(user_id(n), json!({"presence": "Break"})))
            .await;
    }
    app.publish(&agent_job(stranger, json!({"presence": "Break"})))
        .await;
    let events = app.audit_events(6).await;
    let rejected: Vec<_> = events
        .iter()
        .filter(|e| e.event.outcome == Outcome::Rejected)
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].event.entity, format!("user:{stranger}"));
    assert_eq!(
        rejected[0].event.error.as_ref().unwrap().code,
        "genesys.not.found"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.outcome == Outcome::Applied)
            .count(),
        5
    );
    let stats = app.sandbox_stats().await;
    assert!(requests_in(&stats, BULK, 200) >= 1);
    assert_eq!(
        requests_in(&stats, PATCH_PRESENCE, 404),
        1,
        "the stranger alone got a call of its own"
    );
    app.stop().await;
}

#[tokio::test]
async fn jobs_with_a_precondition_are_not_coalesced() {
    let mut app = spawn_bulk(20, "8").await;
    app.publish(&agent_job(
        user_id(0),
        json!({"presence": "Break", "expected_current": "Offline"}),
    ))
    .await;
    app.publish(&agent_job(
        user_id(1),
        json!({"presence": "Available", "routing_status": "OFF_QUEUE"}),
    ))
    .await;
    let events = app.audit_events(2).await;
    assert!(events.iter().all(|e| e.event.outcome == Outcome::Applied));
    let stats = app.sandbox_stats().await;
    assert_eq!(requests_in(&stats, BULK, 200), 0);
    assert_eq!(requests_in(&stats, PATCH_PRESENCE, 200), 2);
    app.stop().await;
}
