//! Operator controls through the `control` command and a running worker: a pause holds one
//! kind's Genesys calls while other kinds keep the budget, `resume` lets the parked jobs run
//! once each, a cancelled batch's children not yet applied end as `cancelled`, a cancelled key
//! never reaches Genesys, a paused lane stops consuming. Assertions are on what the sandbox
//! saw and on the events that arrived.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use genesys_sandbox::{user_id, worktype_id, SandboxConfig};
use genesys_worker::events::{AuditEvent, Outcome};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_job, job, spawn_app_with, Arrived, TestApp};

const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";
const CREATE_WORKITEM: &str = "POST /api/v2/taskmanagement/workitems";

/// A worker whose budget (`rps` calls a second) is what paces the jobs, each presence change
/// its own call.
async fn spawn(users: usize, rps: &str) -> TestApp {
    spawn_app_with(
        SandboxConfig {
            users,
            ..SandboxConfig::default()
        },
        &[
            ("GENESYS_RATE_LIMIT_RPS", rps),
            ("GENESYS_RATE_LIMIT_BURST", "2"),
            ("BULK_PRESENCE", "off"),
        ],
    )
    .await
}

/// A presence change that needs no read first: one PATCH.
fn presence_job(n: usize) -> Value {
    agent_job(
        user_id(n),
        json!({"presence": "On Queue", "respect_out_of_office": false}),
    )
}

fn create_job(n: usize) -> Value {
    let mut job = job(
        "interaction.create",
        json!({"type_id": worktype_id(), "name": format!("ticket {n}"), "priority": 10, "queue_id": Uuid::new_v4(), "skill_ids": [Uuid::new_v4()]}),
    );
    job["idempotency_key"] = json!(format!("crm-ticket-{}", Uuid::new_v4()));
    job
}

fn id_of(job: &Value) -> Uuid {
    job["job_id"].as_str().unwrap().parse().unwrap()
}

async fn control(app: &TestApp, args: &[&str]) -> (i32, String) {
    let (code, stdout, stderr) = app.cli(&[&["control"], args].concat()).await;
    (code, format!("{stdout}{stderr}"))
}

async fn control_ok(app: &TestApp, args: &[&str]) {
    let (code, output) = control(app, args).await;
    assert_eq!(code, 0, "control {args:?}: {output}");
}

/// Successful calls the sandbox answered on `route`.
async fn calls(app: &TestApp, route: &str) -> u64 {
    app.requests(route, 200).await + app.requests(route, 201).await
}

/// Waits until `check` holds, up to `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The events of the jobs (by job id) and those of control changes, apart.
fn split(events: Vec<Arrived<AuditEvent>>) -> (HashMap<Uuid, Vec<AuditEvent>>, Vec<AuditEvent>) {
    let mut jobs: HashMap<Uuid, Vec<AuditEvent>> = HashMap::new();
    let mut controls = Vec::new();
    for arrived in events {
        if arrived.event.kind == "control" {
            assert_eq!(arrived.routing_key, "audit.control.applied");
            controls.push(arrived.event);
        } else {
            jobs.entry(arrived.event.job_id).or_default().push(arrived.event);
        }
    }
    (jobs, controls)
}

#[tokio::test]
async fn pausing_a_kind_stops_its_calls_within_two_seconds_while_others_keep_the_budget() {
    let mut app = spawn(200, "20").await;
    let mut presence_jobs = HashSet::new();
    let mut create_jobs = HashSet::new();
    for n in 0..120 {
        let presence = presence_job(n);
        presence_jobs.insert(id_of(&presence));
        app.publish(&presence).await;
        let create = create_job(n);
        create_jobs.insert(id_of(&create));
        app.publish(&create).await;
    }
    eventually(Duration::from_secs(20), "presence calls to start", || async {
        calls(&app, PATCH_PRESENCE).await >= 10
    })
    .await;

    control_ok(
        &app,
        &[
            "pause",
            "kind",
            "agent.status",
            "--actor",
            "alice",
            "--reason",
            "wrong schedule",
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (presence_at_2s, creates_at_2s) = (
        calls(&app, PATCH_PRESENCE).await,
        calls(&app, CREATE_WORKITEM).await,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (presence_at_5s, creates_at_5s) = (
        calls(&app, PATCH_PRESENCE).await,
        calls(&app, CREATE_WORKITEM).await,
    );
    assert_eq!(
        presence_at_5s, presence_at_2s,
        "presence calls went on more than 2 s after the pause"
    );
    assert!(
        presence_at_2s < 120,
        "the pause came too late to hold anything ({presence_at_2s} presence calls)"
    );
    // The budget is 20 calls/s; creates had at most half of it before the pause. A create may
    // cost a query too, so count only the creates: well over 3 s × 10 /s.
    assert!(
        creates_at_5s - creates_at_2s >= 30 || creates_at_5s == 120,
        "other kinds did not keep the budget: {} creates in 3 s",
        creates_at_5s - creates_at_2s
    );
    let (code, listed) = control(&app, &["list", "--json"]).await;
    assert_eq!(code, 0);
    assert!(
        listed.contains("\"scope\":\"kind\"") && listed.contains("agent.status"),
        "{listed}"
    );

    control_ok(&app, &["resume", "kind", "agent.status", "--actor", "alice"]).await;
    let (jobs, controls) = split(app.audit_events(240 + 2).await);

    // Every job once, applied; nothing lost, nothing doubled.
    assert_eq!(jobs.len(), 240);
    for (job_id, events) in &jobs {
        assert_eq!(events.len(), 1, "job {job_id}: {events:?}");
        assert_eq!(events[0].outcome, Outcome::Applied, "job {job_id}: {events:?}");
    }
    assert_eq!(
        jobs.keys().copied().collect::<HashSet<_>>(),
        &presence_jobs | &create_jobs
    );
    assert_eq!(
        calls(&app, PATCH_PRESENCE).await,
        120,
        "each agent changed exactly once"
    );
    let changed: Vec<String> = app
        .mutations()
        .await
        .iter()
        .filter(|m| m["entity"].as_str().is_some_and(|e| e.starts_with("user:")))
        .map(|m| m["entity"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        changed.iter().collect::<HashSet<_>>().len(),
        changed.len(),
        "an agent was changed twice"
    );

    // The pause and the resume are audit events naming the actor, one chain.
    assert_eq!(controls.len(), 2, "{controls:?}");
    for (version, (control, action)) in controls.iter().zip(["pause", "resume"]).enumerate() {
        assert_eq!(control.entity, "control:kind:agent.status");
        assert_eq!(control.actor.as_deref(), Some("alice"));
        assert_eq!(control.entity_version, version as u64 + 1);
        assert_eq!(control.new_state.as_ref().unwrap()["action"], action);
    }
    assert_eq!(
        controls[0].new_state.as_ref().unwrap()["reason"],
        "wrong schedule"
    );
    let (_, listed) = control(&app, &["list"]).await;
    assert!(listed.contains("0 control(s) in force"), "{listed}");
    app.stop().await;
}

#[tokio::test]
async fn cancelling_a_batch_ends_its_children_not_yet_applied_as_cancelled() {
    let mut app = spawn(100, "10").await;
    let children: Vec<Value> = (0..60).map(presence_job).collect();
    let mut batch = job("batch", json!({"jobs": children}));
    batch["idempotency_key"] = json!(format!("handover-{}", Uuid::new_v4()));
    let batch_id = id_of(&batch);
    app.publish(&batch).await;
    eventually(Duration::from_secs(20), "the batch to start", || async {
        calls(&app, PATCH_PRESENCE).await >= 5
    })
    .await;
    control_ok(
        &app,
        &["cancel", "batch", &batch_id.to_string(), "--actor", "bob"],
    )
    .await;

    // 60 children, the batch's summary, the cancel.
    let (jobs, controls) = split(app.audit_events(60 + 1 + 1).await);
    let summary = &jobs[&batch_id][0];
    let counts = &summary.summary.as_ref().unwrap()["counts"];
    let (applied, cancelled) = (
        counts["applied"].as_u64().unwrap_or(0),
        counts["cancelled"].as_u64().unwrap_or(0),
    );
    assert_eq!(applied + cancelled, 60, "{counts}");
    assert!(cancelled > 0 && applied >= 5, "{counts}");
    assert_eq!(
        calls(&app, PATCH_PRESENCE).await,
        applied,
        "a cancelled child reached Genesys"
    );
    let cancelled_events: Vec<&AuditEvent> = jobs
        .values()
        .flatten()
        .filter(|e| e.outcome == Outcome::Cancelled)
        .collect();
    assert_eq!(cancelled_events.len() as u64, cancelled);
    for event in cancelled_events {
        let error = event.error.as_ref().unwrap();
        assert_eq!(error.code, "cancelled");
        assert!(error.message.contains("by bob"), "{}", error.message);
    }
    assert_eq!(controls.len(), 1);
    assert_eq!(controls[0].entity, format!("control:batch:{batch_id}"));
    assert!(
        app.dead_letters_now().await.is_empty(),
        "cancelled jobs are not dead-lettered"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_job_cancelled_by_its_key_never_reaches_genesys_and_stays_cancelled() {
    let mut app = spawn(10, "50").await;
    let (code, output) = control(&app, &["pause", "job", &Uuid::new_v4().to_string()]).await;
    assert_eq!(code, 2, "a job is cancelled, not paused: {output}");
    let (code, output) = control(&app, &["resume", "kind", "flow.deploy"]).await;
    assert_eq!(code, 1, "nothing to resume: {output}");

    let mut cancelled = presence_job(1);
    cancelled["idempotency_key"] = json!("shift-42-agent-1");
    control_ok(&app, &["cancel", "key", "shift-42-agent-1", "--actor", "carol"]).await;
    // The workers see a change within a quarter of a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    app.publish(&cancelled).await;
    // The same job again (a redelivery, a replay) is cancelled again, not applied.
    app.publish(&cancelled).await;
    let other = presence_job(2);
    app.publish(&other).await;
    let (jobs, controls) = split(app.audit_events(1 + 3).await);
    assert_eq!(controls.len(), 1);
    let outcomes: Vec<Outcome> = jobs[&id_of(&cancelled)].iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes, [Outcome::Cancelled, Outcome::Cancelled]);
    assert_eq!(jobs[&id_of(&other)][0].outcome, Outcome::Applied);
    assert_eq!(
        calls(&app, PATCH_PRESENCE).await,
        1,
        "only the other job reached Genesys"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_paused_lane_stops_consuming_until_it_is_resumed() {
    let mut app = spawn(20, "50").await;
    control_ok(&app, &["pause", "lane", "single", "--actor", "dave"]).await;
    // Within the watch interval the consumer is gone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in 0..5 {
        app.publish(&presence_job(n)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(calls(&app, PATCH_PRESENCE).await, 0, "a paused lane ran jobs");
    control_ok(&app, &["resume", "lane", "single", "--actor", "dave"]).await;
    let (jobs, controls) = split(app.audit_events(5 + 2).await);
    assert_eq!(controls.len(), 2);
    assert!(jobs
        .values()
        .all(|e| e.len() == 1 && e[0].outcome == Outcome::Applied));
    assert_eq!(calls(&app, PATCH_PRESENCE).await, 5);
    app.stop().await;
}

#[tokio::test]
async fn a_correlation_pause_parks_only_its_jobs() {
    let mut app = spawn(20, "50").await;
    control_ok(&app, &["pause", "correlation", "wfm-run-7", "--actor", "erin"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut held = presence_job(1);
    held["correlation_id"] = json!("wfm-run-7");
    app.publish(&held).await;
    let free = presence_job(2);
    app.publish(&free).await;
    let (jobs, _) = split(app.audit_events(1 + 1).await);
    assert_eq!(jobs[&id_of(&free)][0].outcome, Outcome::Applied);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls(&app, PATCH_PRESENCE).await, 1, "the paused job ran");
    control_ok(&app, &["resume", "correlation", "wfm-run-7", "--actor", "erin"]).await;
    let (jobs, _) = split(app.audit_events(1 + 1).await);
    assert_eq!(jobs[&id_of(&held)][0].outcome, Outcome::Applied);
    assert_eq!(calls(&app, PATCH_PRESENCE).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_paused_batch_that_is_then_cancelled_ends_without_a_resume() {
    let mut app = spawn(40, "50").await;
    let children: Vec<Value> = (0..20).map(presence_job).collect();
    let mut batch = job("batch", json!({"jobs": children}));
    batch["idempotency_key"] = json!(format!("handover-{}", Uuid::new_v4()));
    let batch_id = id_of(&batch);
    control_ok(
        &app,
        &["pause", "batch", &batch_id.to_string(), "--actor", "frank"],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    app.publish(&batch).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(calls(&app, PATCH_PRESENCE).await, 0, "a paused batch ran");
    control_ok(
        &app,
        &["cancel", "batch", &batch_id.to_string(), "--actor", "frank"],
    )
    .await;
    // The pause, the cancel, and one event: the batch itself, parked before it fanned out.
    let (jobs, controls) = split(app.audit_events(2 + 1).await);
    assert_eq!(controls.len(), 2);
    let outcomes: Vec<Outcome> = jobs[&batch_id].iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes, [Outcome::Cancelled]);
    assert_eq!(calls(&app, PATCH_PRESENCE).await, 0);
    app.stop().await;
}
