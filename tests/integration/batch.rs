//! The `batch` kind: fan-out into the batch lane, bulk presence calls, progress, one summary,
//! and fair share with single jobs.

use std::collections::HashSet;

use genesys_sandbox::{presence_definition_id, user_id, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_job, job, requests_in, spawn_app_with, Arrived, TestApp};

const BULK: &str = "PUT /api/v2/users/presences/bulk";
const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";

async fn spawn(users: usize, rps: &str) -> TestApp {
    spawn_app_with(
        SandboxConfig {
            users,
            ..SandboxConfig::default()
        },
        &[("GENESYS_RATE_LIMIT_RPS", rps), ("GENESYS_RATE_LIMIT_BURST", "2")],
    )
    .await
}

/// A handover: every one of `users` agents to `presence`, as one batch.
fn handover(users: std::ops::Range<usize>, presence: &str) -> Value {
    let children: Vec<Value> = users
        .map(|n| agent_job(user_id(n), json!({"presence": presence})))
        .collect();
    let mut batch = job("batch", json!({"jobs": children}));
    batch["idempotency_key"] = json!(format!("handover-{}", Uuid::new_v4()));
    batch["actor"] = json!("wfm-scheduler");
    batch
}

fn id_of(job: &Value) -> Uuid {
    job["job_id"].as_str().unwrap().parse().unwrap()
}

/// Waits for `n` audit events; returns them in arrival order.
async fn events(app: &mut TestApp, n: usize) -> Vec<Arrived<genesys_worker::events::AuditEvent>> {
    app.audit_events(n).await
}

async fn batch_status(app: &TestApp, id: Uuid) -> (i32, Value) {
    let (code, stdout, _) = app.cli(&["batch", "status", &id.to_string(), "--json"]).await;
    (code, serde_json::from_str(&stdout).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_handover_of_1000_agents_costs_at_most_25_presence_calls_and_ends_in_one_summary() {
    // The budget must be what holds the calls back (so they leave full), also when the whole
    // suite shares the machine's two cores: 10 calls/s, about 2 s for the handover.
    let mut app = spawn(1000, "10").await;
    let batch = handover(0..1000, "On Queue");
    let batch_id = id_of(&batch);
    app.publish(&batch).await;

    let arrived = events(&mut app, 1001).await;
    let (summary, children): (Vec<_>, Vec<_>) = arrived.iter().partition(|e| e.event.kind == "batch");
    assert_eq!(summary.len(), 1, "one summary event");
    // The summary comes once every child is final: after all of them.
    assert_eq!(arrived.last().unwrap().event.kind, "batch");
    let summary = &summary[0];
    assert_eq!(summary.routing_key, "audit.batch.applied");
    assert_eq!(summary.event.job_id, batch_id);
    assert_eq!(summary.event.entity, format!("batch:{batch_id}"));
    assert_eq!(summary.event.actor.as_deref(), Some("wfm-scheduler"));
    assert_eq!(
        summary.event.summary.as_ref().unwrap(),
        &json!({"total": 1000, "counts": {"applied": 1000}, "first_errors": []})
    );
    assert!(children.iter().all(|e| e.event.outcome == Outcome::Applied
        && e.event.correlation_id.as_deref() == Some(batch_id.to_string().as_str())));
    let applied: HashSet<&str> = children.iter().map(|e| e.event.entity.as_str()).collect();
    assert_eq!(applied.len(), 1000, "each agent once");

    // What Genesys saw: bulk calls of up to 50, no single PATCH, every agent changed once.
    let stats = app.sandbox_stats().await;
    let bulk_calls = requests_in(&stats, BULK, 200);
    assert!(
        bulk_calls <= 25,
        "{bulk_calls} bulk presence calls for 1000 agents"
    );
    assert_eq!(requests_in(&stats, PATCH_PRESENCE, 200), 0);
    assert_eq!(stats["mutations"].as_array().unwrap().len(), 1000);
    assert_eq!(app.user(user_id(999)).await["presence"], "On Queue");

    let (code, report) = batch_status(&app, batch_id).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        (
            &report["total"],
            &report["finished"],
            &report["published"],
            &report["summary_sent"]
        ),
        (&json!(1000), &json!(1000), &json!(1000), &json!(true))
    );
    // Children send CRM events; the batch's summary does not.
    app.crm_events(1000).await;
    app.assert_no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn a_batch_delivered_twice_never_duplicates_its_children() {
    let mut app = spawn(40, "50").await;
    let batch = handover(0..30, "Break");
    app.publish(&batch).await;
    app.publish(&batch).await;
    // 30 children, the summary, and the copy's own duplicate event.
    let arrived = events(&mut app, 32).await;
    let batch_events: Vec<Outcome> = arrived
        .iter()
        .filter(|e| e.event.kind == "batch")
        .map(|e| e.event.outcome)
        .collect();
    assert_eq!(batch_events.iter().filter(|o| **o == Outcome::Applied).count(), 1);
    assert_eq!(
        batch_events.iter().filter(|o| **o == Outcome::Duplicate).count(),
        1
    );
    assert_eq!(
        arrived
            .iter()
            .filter(|e| e.event.kind == "agent.status" && e.event.outcome == Outcome::Applied)
            .count(),
        30
    );
    assert_eq!(app.mutations().await.len(), 30, "each child applied once");
    app.crm_events(30).await;
    app.assert_no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn a_bad_child_is_rejected_alone_and_named_in_the_summary() {
    let mut app = spawn(10, "50").await;
    let mut batch = handover(0..3, "Available");
    let bad_presence = agent_job(user_id(3), json!({"presence": "Napping"}));
    let jobs = batch["payload"]["jobs"].as_array_mut().unwrap();
    jobs.push(bad_presence.clone());
    jobs.push(json!("not a job"));
    let batch_id = id_of(&batch);
    app.publish(&batch).await;

    let arrived = events(&mut app, 5).await;
    let summary = arrived.iter().find(|e| e.event.kind == "batch").unwrap();
    let summary = summary.event.summary.as_ref().unwrap();
    assert_eq!(summary["counts"], json!({"applied": 3, "rejected": 2}));
    let errors = summary["first_errors"].as_array().unwrap();
    let by_index = |index: u64| errors.iter().find(|e| e["index"] == index).unwrap();
    assert_eq!(by_index(3)["code"], "unknown_presence");
    assert_eq!(by_index(3)["job_id"], bad_presence["job_id"]);
    assert_eq!(by_index(4)["code"], "invalid_job");
    // The child with a job id had its own rejection event; both went to the dead-letter queue,
    // still naming their batch.
    assert!(arrived.iter().any(|e| e.event.job_id == id_of(&bad_presence)
        && e.event.outcome == Outcome::Rejected
        && e.event.correlation_id.as_deref() == Some(batch_id.to_string().as_str())));
    let letters = app.dead_letters(2).await;
    assert!(letters
        .iter()
        .all(|l| l.headers["x-batch-id"] == batch_id.to_string()));
    assert_eq!(app.mutations().await.len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_single_job_during_a_handover_finishes_before_the_handover_does() {
    // At 5 calls/s the 1,000 agents take 20 bulk calls, about 4 s.
    let mut app = spawn(1001, "5").await;
    let batch = handover(0..1000, "Meal");
    app.publish(&batch).await;
    // The handover is under way: its first children are final.
    let first = events(&mut app, 1).await.remove(0);
    assert_eq!(first.event.kind, "agent.status");
    // A precondition makes it a per-agent change: a read and a write, in the single lane.
    let single = agent_job(
        user_id(1000),
        json!({"presence": presence_definition_id("Break"), "expected_current": "Offline"}),
    );
    app.publish(&single).await;

    let arrived = events(&mut app, 1001).await;
    let position = |wanted: &dyn Fn(&Arrived<genesys_worker::events::AuditEvent>) -> bool| {
        arrived.iter().position(wanted).unwrap()
    };
    let single_at = position(&|e| e.event.job_id == id_of(&single));
    let summary_at = position(&|e| e.event.kind == "batch");
    assert_eq!(arrived[single_at].event.outcome, Outcome::Applied);
    assert!(
        single_at < summary_at,
        "the single job finished at {single_at}, the handover at {summary_at}"
    );
    // Far ahead of the handover's end, not just before it: within the first half.
    assert!(single_at < 500, "the single job finished at {single_at} of 1001");
    app.stop().await;
}
