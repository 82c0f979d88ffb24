//! `interaction.status` and `interaction.create` through the pipeline, and `audit verify` on
//! the stream they produce.

use std::process::Command;

use genesys_sandbox::{status_id, workitem_id, worktype_id, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{job, sandbox_token, spawn_app, spawn_app_with, TestApp};

const CREATE: &str = "POST /api/v2/taskmanagement/workitems";
const QUERY: &str = "POST /api/v2/taskmanagement/workitems/query";

fn status_job(workitem: Uuid, payload: Value) -> Value {
    let mut payload = payload;
    payload["workitem_id"] = json!(workitem);
    job("interaction.status", payload)
}

fn create_job(name: &str) -> Value {
    let mut job = job(
        "interaction.create",
        json!({"type_id": worktype_id(), "name": name, "priority": 10, "queue_id": Uuid::new_v4(), "skill_ids": [Uuid::new_v4()]}),
    );
    job["idempotency_key"] = json!(format!("crm-ticket-{}", Uuid::new_v4()));
    job
}

/// Workitems the sandbox holds with `tag`, found through the API as any client would.
async fn workitems_tagged(app: &TestApp, tag: &str) -> Vec<Value> {
    let token = sandbox_token(&app.http, &app.sandbox.base_url()).await;
    let filter = |name: &str, value: String| json!({"name": name, "type": "String", "operator": "EQ", "values": [value]});
    let query = json!({"filters": [filter("typeId", worktype_id().to_string()), filter("externalTag", tag.to_string())]});
    let reply: Value = app
        .http
        .post(format!(
            "{}/api/v2/taskmanagement/workitems/query",
            app.sandbox.base_url()
        ))
        .bearer_auth(token)
        .json(&query)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["entities"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn an_allowed_transition_by_name_is_one_patch_with_previous_and_new_state() {
    let mut app = spawn_app().await;
    let workitem = workitem_id(0);
    app.publish(&status_job(workitem, json!({"status": "in progress"})))
        .await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Applied, "{:?}", event.event.error);
    assert_eq!(event.routing_key, "audit.interaction.status.applied");
    assert_eq!(event.event.entity, format!("workitem:{workitem}"));
    assert_eq!(event.event.previous_state.as_ref().unwrap()["status"], "Open");
    assert_eq!(event.event.new_state.as_ref().unwrap()["status"], "In Progress");
    assert_eq!(
        event.event.new_state.as_ref().unwrap()["status_category"],
        "InProgress"
    );
    assert_eq!(event.event.entity_version, 1);
    let crm = app.crm_events(1).await.remove(0);
    assert_eq!(crm.routing_key, "crm.interaction.status");
    let mutations = app.mutations().await;
    assert_eq!(mutations.len(), 1);
    assert_eq!(mutations[0]["method"], "PATCH");
    assert_eq!(
        mutations[0]["body"],
        json!({"statusId": status_id("In Progress")})
    );
    app.stop().await;
}

#[tokio::test]
async fn a_disallowed_transition_is_rejected_before_anything_is_written() {
    let mut app = spawn_app().await;
    app.publish(&status_job(
        workitem_id(1),
        json!({"status_id": status_id("Waiting")}),
    ))
    .await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Rejected);
    let error = event.event.error.clone().unwrap();
    assert_eq!(error.code, "transition_not_allowed");
    assert!(
        error.message.contains("\"Open\"") && error.message.contains("In Progress, Closed"),
        "{}",
        error.message
    );
    assert_eq!(
        app.dead_letters(1).await[0].headers["x-error-code"],
        "transition_not_allowed"
    );
    assert!(app.mutations().await.is_empty());
    assert_eq!(
        app.requests("PATCH /api/v2/taskmanagement/workitems/{workitemId}", 409)
            .await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn transitions_chain_through_the_state_machine_and_statuses_are_listed_once() {
    let mut app = spawn_app().await;
    let workitem = workitem_id(2);
    for status in ["In Progress", "Escalated", "Closed", "Open"] {
        app.publish(&status_job(workitem, json!({"status": status})))
            .await;
        let event = app.audit_events(1).await.remove(0);
        assert_eq!(
            event.event.outcome,
            Outcome::Applied,
            "{status}: {:?}",
            event.event.error
        );
    }
    assert_eq!(app.mutations().await.len(), 4);
    assert_eq!(
        app.requests("GET /api/v2/taskmanagement/worktypes/{worktypeId}/statuses", 200)
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn expected_current_that_does_not_hold_is_a_conflict_and_nothing_is_written() {
    let mut app = spawn_app().await;
    let workitem = workitem_id(3);
    app.publish(&status_job(
        workitem,
        json!({"status": "Closed", "expected_current": "In Progress"}),
    ))
    .await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Conflict);
    assert_eq!(
        event.event.error.as_ref().unwrap().code,
        "expected_current_mismatch"
    );
    assert_eq!(event.event.previous_state.as_ref().unwrap()["status"], "Open");
    assert!(app.mutations().await.is_empty());
    app.publish(&status_job(
        workitem,
        json!({"status": "Closed", "expected_current": "open"}),
    ))
    .await;
    assert_eq!(app.audit_events(1).await[0].event.outcome, Outcome::Applied);
    app.stop().await;
}

#[tokio::test]
async fn unknown_statuses_and_workitems_are_rejected() {
    let mut app = spawn_app().await;
    app.publish(&status_job(workitem_id(4), json!({"status": "Teleported"})))
        .await;
    app.publish(&status_job(Uuid::new_v4(), json!({"status": "Closed"})))
        .await;
    let events = app.audit_events(2).await;
    let mut codes: Vec<String> = events
        .iter()
        .map(|e| e.event.error.clone().unwrap().code)
        .collect();
    codes.sort();
    assert_eq!(codes, ["genesys.not.found", "unknown_status"]);
    assert!(events.iter().all(|e| e.event.outcome == Outcome::Rejected));
    assert!(app.mutations().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_create_makes_one_tagged_workitem_and_names_it_in_the_events() {
    let mut app = spawn_app().await;
    let job = create_job("Call back about invoice 42");
    let tag = job["idempotency_key"].as_str().unwrap().to_string();
    app.publish(&job).await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Applied, "{:?}", event.event.error);
    let created = workitems_tagged(&app, &tag).await;
    assert_eq!(created.len(), 1);
    let id = created[0]["id"].as_str().unwrap();
    assert_eq!(event.event.entity, format!("workitem:{id}"));
    assert_eq!(event.event.entity_version, 1);
    assert_eq!(event.event.new_state.as_ref().unwrap()["workitem_id"], id);
    assert_eq!(created[0]["priority"], 10);
    assert_eq!(created[0]["queue"]["id"], job["payload"]["queue_id"]);
    assert_eq!(created[0]["skills"][0]["id"], job["payload"]["skill_ids"][0]);
    let crm = app.crm_events(1).await.remove(0);
    assert_eq!(crm.event.workitem_id.as_deref(), Some(id));
    assert_eq!(crm.routing_key, "crm.interaction.create");
    // The same job again: a duplicate filed under the created workitem, no second workitem.
    app.publish(&job).await;
    let duplicate = app.audit_events(1).await.remove(0);
    assert_eq!(duplicate.event.outcome, Outcome::Duplicate);
    assert_eq!(duplicate.event.entity, format!("workitem:{id}"));
    assert_eq!(duplicate.event.new_state.as_ref().unwrap()["workitem_id"], id);
    assert_eq!(workitems_tagged(&app, &tag).await.len(), 1);
    assert_eq!(app.requests(CREATE, 200).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_create_whose_response_is_lost_is_found_by_its_tag_not_created_twice() {
    let mut app = spawn_app().await;
    app.set_fault(json!({"route": CREATE, "drop_response": 1.0, "times": 1}))
        .await;
    let job = create_job("Lost answer");
    let tag = job["idempotency_key"].as_str().unwrap().to_string();
    app.publish(&job).await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Applied, "{:?}", event.event.error);
    assert_eq!(
        workitems_tagged(&app, &tag).await.len(),
        1,
        "exactly one workitem"
    );
    let stats = app.sandbox_stats().await;
    assert_eq!(stats["dropped_responses"], 1);
    assert_eq!(
        crate::helpers::requests_in(&stats, CREATE, 200),
        1,
        "one create reached Genesys"
    );
    assert!(
        crate::helpers::requests_in(&stats, QUERY, 200) >= 1,
        "the worker looked before creating again"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_create_retried_after_a_503_makes_one_workitem() {
    let mut app = spawn_app().await;
    app.set_fault(json!({"route": CREATE, "errors": {"503": 1.0}, "times": 1}))
        .await;
    let job = create_job("After a 503");
    let tag = job["idempotency_key"].as_str().unwrap().to_string();
    app.publish(&job).await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Applied, "{:?}", event.event.error);
    assert_eq!(event.event.attempts, 2);
    assert_eq!(workitems_tagged(&app, &tag).await.len(), 1);
    assert_eq!(app.requests(CREATE, 503).await, 1);
    assert_eq!(app.requests(CREATE, 200).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_create_is_dead_lettered_with_a_clear_error() {
    let mut app = spawn_app().await;
    let bad = job(
        "interaction.create",
        json!({"type_id": worktype_id(), "name": "ab"}),
    );
    app.publish(&bad).await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Rejected);
    let letter = app.dead_letters(1).await.remove(0);
    assert_eq!(letter.headers["x-error-code"], "invalid_payload");
    assert!(letter.headers["x-error-message"].contains("payload.name must be 3 to 256 characters"));
    assert!(app.mutations().await.is_empty());
    app.stop().await;
}

fn verify(lines: &[String]) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("audit-{}", Uuid::new_v4()));
    std::fs::write(&dir, lines.join("\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_genesys-worker"))
        .args(["audit", "verify"])
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&dir);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

#[tokio::test]
async fn audit_verify_accepts_the_captured_stream_and_finds_each_kind_of_tampering() {
    let mut app = spawn_app_with(
        SandboxConfig {
            users: 5,
            workitems: 5,
            ..SandboxConfig::default()
        },
        &[],
    )
    .await;
    let workitem = workitem_id(0);
    let steps = [
        status_job(workitem, json!({"status": "In Progress"})),
        status_job(workitem, json!({"status": "Open", "expected_current": "Closed"})),
        status_job(workitem, json!({"status": "Waiting"})),
        status_job(workitem, json!({"status": "Closed"})),
        status_job(workitem_id(1), json!({"status": "Closed"})),
    ];
    let mut lines = Vec::new();
    for step in &steps {
        app.publish(step).await;
        lines.push(app.audit_events(1).await.remove(0).raw);
    }
    app.publish(&create_job("Verified")).await;
    lines.push(app.audit_events(1).await.remove(0).raw);
    app.stop().await;

    let (code, out) = verify(&lines);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("6 events, 3 entities, 5 links"), "{out}");

    let id_of = |line: &str| {
        serde_json::from_str::<Value>(line).unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut modified = lines.clone();
    modified[2] = modified[2].replace("\"Waiting\"", "\"Escalated\"");
    let (code, out) = verify(&modified);
    assert_eq!(code, Some(1));
    assert!(
        out.contains(&id_of(&lines[2])) && out.contains("modified"),
        "{out}"
    );

    let mut removed = lines.clone();
    removed.remove(2);
    let (code, out) = verify(&removed);
    assert_eq!(code, Some(1));
    assert!(
        out.contains(&id_of(&lines[3])) && out.contains("missing"),
        "{out}"
    );

    let mut reordered = lines.clone();
    reordered.swap(2, 3);
    let (code, out) = verify(&reordered);
    assert_eq!(code, Some(1), "{out}");

    // And through stdin.
    let mut child = Command::new(env!("CARGO_BIN_EXE_genesys-worker"))
        .args(["audit", "verify", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.join("\n").as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
}

// Under Genesys' consistency lag (reads behind writes) and errors from the gateway in front of
// the API (README, "Genesys behaviours").

async fn app_playing(behaviour: Value) -> TestApp {
    let app = spawn_app().await;
    app.set_behaviour(behaviour).await;
    app
}

/// The workitems the sandbox created (its mutation log: unaffected by the consistency lag).
async fn created_workitems(app: &TestApp) -> Vec<Value> {
    app.mutations()
        .await
        .into_iter()
        .filter(|m| {
            m["method"] == "POST" && m["entity"].as_str().unwrap_or_default().starts_with("workitem:")
        })
        .collect()
}

#[tokio::test]
async fn a_status_change_right_after_the_create_waits_until_genesys_shows_the_workitem() {
    let mut app = app_playing(json!({"consistency_lag_ms": 1000})).await;
    app.publish(&create_job("Created, then moved at once")).await;
    let created = app.audit_events(1).await.remove(0);
    assert_eq!(
        created.event.outcome,
        Outcome::Applied,
        "{:?}",
        created.event.error
    );
    let id: Uuid = created.event.new_state.as_ref().unwrap()["workitem_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    app.publish(&status_job(id, json!({"status": "In Progress"})))
        .await;
    let moved = app.audit_events(1).await.remove(0);
    assert_eq!(moved.event.outcome, Outcome::Applied, "{:?}", moved.event.error);
    assert_eq!(moved.event.new_state.as_ref().unwrap()["status"], "In Progress");
    assert!(
        app.requests("GET /api/v2/taskmanagement/workitems/{workitemId}", 404)
            .await
            >= 1,
        "Genesys answered 404 at first"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_lost_create_answer_during_the_consistency_lag_still_makes_one_workitem() {
    // The query right after the lost answer cannot see the new workitem yet.
    let mut app = app_playing(json!({"consistency_lag_ms": 1500})).await;
    app.set_fault(json!({"route": CREATE, "drop_response": 1.0, "times": 1}))
        .await;
    app.publish(&create_job("Lost answer, lagging query")).await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Applied, "{:?}", event.event.error);
    assert_eq!(created_workitems(&app).await.len(), 1, "exactly one workitem");
    assert!(
        app.requests(QUERY, 200).await >= 2,
        "looked again until it showed"
    );
    app.stop().await;
}

#[tokio::test]
async fn status_changes_in_quick_succession_are_applied_though_reads_lag() {
    let mut app = app_playing(json!({"consistency_lag_ms": 800})).await;
    let workitem = workitem_id(1);
    for (n, status) in ["In Progress", "Waiting", "In Progress", "Closed"]
        .into_iter()
        .enumerate()
    {
        let mut change = status_job(workitem, json!({"status": status}));
        change["idempotency_key"] = json!(format!("change-{n}-{}", Uuid::new_v4()));
        app.publish(&change).await;
        let event = app.audit_events(1).await.remove(0);
        assert_eq!(
            event.event.outcome,
            Outcome::Applied,
            "{status}: {:?}",
            event.event.error
        );
        assert_eq!(event.event.new_state.as_ref().unwrap()["status"], status);
    }
    let patches: Vec<Value> = app
        .mutations()
        .await
        .into_iter()
        .filter(|m| m["method"] == "PATCH")
        .collect();
    assert_eq!(patches.len(), 4, "one write each, none lost: {patches:#?}");
    app.stop().await;
}

#[tokio::test]
async fn gateway_errors_with_html_or_no_body_and_reset_connections_lose_nothing() {
    let mut app =
        app_playing(json!({"gateway": {"errors": {"502": 0.15, "504": 0.1}, "body": "html", "reset": 0.1}}))
            .await;
    let mut tags = Vec::new();
    for n in 0..6 {
        let create = create_job(&format!("Through the gateway {n}"));
        tags.push(create["idempotency_key"].as_str().unwrap().to_string());
        app.publish(&create).await;
    }
    app.publish(&status_job(workitem_id(2), json!({"status": "In Progress"})))
        .await;
    let events = app.audit_events(7).await;
    for event in &events {
        assert_eq!(event.event.outcome, Outcome::Applied, "{:?}", event.event.error);
    }
    app.set_behaviour(json!({})).await;
    for tag in tags {
        assert_eq!(workitems_tagged(&app, &tag).await.len(), 1, "{tag}");
    }
    let stats = app.sandbox_stats().await;
    let gateway_errors: u64 = [502, 504]
        .into_iter()
        .map(|status| {
            stats["requests"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["status"] == status)
                .map(|r| r["count"].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert!(
        gateway_errors + stats["reset_connections"].as_u64().unwrap() >= 1,
        "the gateway interfered: {stats}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_error_page_instead_of_an_error_body_is_described_by_what_came_back() {
    let mut app = spawn_app_with(
        SandboxConfig {
            users: 2,
            workitems: 4,
            ..SandboxConfig::default()
        },
        &[("RETRY_DELAYS_MS", "none")],
    )
    .await;
    app.set_fault(json!({
        "route": "PATCH /api/v2/taskmanagement/workitems/{workitemId}",
        "errors": {"502": 1.0}, "body": "html"
    }))
    .await;
    app.publish(&status_job(workitem_id(3), json!({"status": "In Progress"})))
        .await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Failed);
    let error = event.event.error.unwrap();
    assert_eq!(error.code, "genesys.http.502");
    assert!(
        error.message.contains("502 with a non-JSON body of"),
        "{}",
        error.message
    );
    app.stop().await;
}
