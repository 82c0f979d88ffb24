//! `flow.deploy` against the sandbox's Architect: versions, locks, publish, rollback.

use genesys_sandbox::{flow_id, SandboxConfig};
use genesys_worker::events::{AuditEvent, EventError, Outcome};
use serde_json::{json, Value};
use uuid::Uuid;

use genesys_worker::flow::{configuration_hash, optimize, FlowDefinition};

use crate::helpers::{get_json, job, sandbox_token, spawn_app_with, Arrived, TestApp};

/// The flow tests' sandbox: three flows whose operations take 100 ms.
fn sandbox_config() -> SandboxConfig {
    SandboxConfig {
        users: 2,
        workitems: 1,
        flows: 3,
        flow_operation_ms: 100,
        ..SandboxConfig::default()
    }
}

async fn app() -> TestApp {
    spawn_app_with(sandbox_config(), &[("FLOW_POLL_MS", "20")]).await
}

fn ivr(prompt: &str) -> Value {
    json!({"name": "Main IVR", "type": "inboundcall", "start": "start", "nodes": {
        "start": {"type": "start", "transitions": [{"label": "next", "target": "menu"}]},
        "menu": {"type": "menu", "media_id": prompt,
                 "conditions": [
                     {"expression": "Call.Language == \"es\"", "priority": 1, "target": "queue"},
                     {"expression": "Call.Ani == \"+15551234\"", "priority": 10, "target": "vip"},
                     {"expression": "Call.Ani == \"+15559876\"", "priority": 5, "target": "vip"}],
                 "transitions": [{"label": "default", "target": "queue"}]},
        "vip": {"type": "transfer", "queue_id": "q-vip", "transitions": []},
        "queue": {"type": "transfer", "queue_id": "q-main", "transitions": []}
    }})
}

fn deploy(flow: Uuid, extra: Value) -> Value {
    let mut payload = json!({"flow_id": flow, "flow": ivr("prompt-welcome"), "version_matrix": {"ivr": "1.4.2", "prompts": "2026.11"}});
    for (k, v) in extra.as_object().unwrap() {
        payload[k] = v.clone();
    }
    job("flow.deploy", payload)
}

/// A `flow.deploy` that creates the flow `name`, or finds it by that name once it exists.
fn create(name: &str, flow: Value) -> Value {
    job(
        "flow.deploy",
        json!({"create": {"name": name, "type": "inboundcall"}, "flow": flow}),
    )
}

/// The next audit event; it must have `outcome` (its error is shown when it has not).
async fn next_event(app: &mut TestApp, outcome: Outcome) -> Arrived<AuditEvent> {
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, outcome, "{:?}", event.event.error);
    event
}

/// The error of `event`, which must have `code`.
fn error_of(event: &Arrived<AuditEvent>, code: &str) -> EventError {
    let error = event.event.error.clone().expect("an error");
    assert_eq!(error.code, code, "{}", error.message);
    error
}

/// The id of the flow a deploy's event names in its new state.
fn deployed_flow_id(event: &Arrived<AuditEvent>) -> String {
    event.event.new_state.as_ref().unwrap()["flow_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The flow as a Genesys client sees it.
async fn flow(app: &TestApp, id: &str) -> Value {
    let token = sandbox_token(&app.http, &app.sandbox.base_url()).await;
    get_json(
        &app.http,
        &format!("{}/api/v2/flows/{id}", app.sandbox.base_url()),
        Some(&token),
    )
    .await
}

async fn configuration(app: &TestApp, id: &str, version: &str) -> Value {
    let token = sandbox_token(&app.http, &app.sandbox.base_url()).await;
    let url = format!(
        "{}/api/v2/flows/{id}/versions/{version}/configuration",
        app.sandbox.base_url()
    );
    get_json(&app.http, &url, Some(&token)).await
}

async fn versions(app: &TestApp, id: &str) -> Vec<String> {
    let token = sandbox_token(&app.http, &app.sandbox.base_url()).await;
    let listing = get_json(
        &app.http,
        &format!("{}/api/v2/flows/{id}/versions", app.sandbox.base_url()),
        Some(&token),
    )
    .await;
    let mut ids: Vec<String> = listing["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn control(app: &TestApp, path: &str, body: Value) {
    control_with(app, reqwest::Method::POST, path, body).await;
}

/// Sets the sandbox's flow `id` up through `/sandbox/flows/{id}/{action}` (`lock`,
/// `fail-next-publish`, `alter-next-publish`).
async fn flow_control(app: &TestApp, id: &str, action: &str, body: Value) {
    control(app, &format!("/sandbox/flows/{id}/{action}"), body).await;
}

/// The event of a deploy of flow `n` whose publish the sandbox fails or alters (`action`:
/// `fail-next-publish`, `alter-next-publish`): it must be rolled back.
async fn rolled_back_deploy(app: &mut TestApp, n: usize, action: &str) -> Arrived<AuditEvent> {
    flow_control(app, &flow_id(n).to_string(), action, json!(null)).await;
    app.publish(&deploy(flow_id(n), json!({}))).await;
    next_event(app, Outcome::RolledBack).await
}

/// After a rollback: the flow publishes 3.0, which holds `original` (1.0's configuration), and
/// is unlocked.
async fn assert_rolled_back_to(app: &TestApp, id: &str, original: &Value) {
    let now = flow(app, id).await;
    assert_eq!(now["publishedVersion"]["id"], "3.0");
    assert!(now.get("lockedClient").is_none());
    assert_eq!(&configuration(app, id, "3.0").await, original);
}

async fn control_with(app: &TestApp, method: reqwest::Method, path: &str, body: Value) {
    let response = app
        .http
        .request(method, format!("{}{path}", app.sandbox.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
}

/// The paths (without query) of the changes the sandbox applied to flow `id`, in order.
async fn flow_mutations(app: &TestApp, id: &str) -> Vec<String> {
    let mutations = get_json(
        &app.http,
        &format!("{}/sandbox/mutations?entity=flow:{id}", app.sandbox.base_url()),
        None,
    )
    .await;
    mutations["mutations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap().split('?').next().unwrap().to_string())
        .collect()
}

/// The paths a deploy of flow `id` writes, in order (as [`flow_mutations`] lists them).
fn lifecycle_paths(id: &str) -> Vec<String> {
    vec![
        "/api/v2/flows/actions/checkout".to_string(),
        format!("/api/v2/flows/{id}/versions"),
        "/api/v2/flows/actions/checkin".to_string(),
        "/api/v2/flows/actions/publish".to_string(),
    ]
}

/// The writes of a deploy's lifecycle, as the sandbox's stats name their routes.
const LIFECYCLE_WRITES: [&str; 4] = [
    "POST /api/v2/flows/actions/checkout",
    "POST /api/v2/flows/{flowId}/versions",
    "POST /api/v2/flows/actions/checkin",
    "POST /api/v2/flows/actions/publish",
];

#[tokio::test]
async fn a_deploy_saves_checks_in_and_publishes_the_optimised_flow_and_leaves_it_unlocked() {
    let mut app = app().await;
    let id = flow_id(0).to_string();
    app.publish(&deploy(flow_id(0), json!({}))).await;
    let event = next_event(&mut app, Outcome::Applied).await;
    assert_eq!(event.routing_key, "audit.flow.deploy.applied");
    assert_eq!(event.event.entity, format!("flow:{id}"));
    let state = event.event.new_state.clone().unwrap();
    assert_eq!(state["published_version"], "2.0");
    assert_eq!(state["previous_published_version"], "1.0");
    assert_eq!(
        event.event.previous_state.as_ref().unwrap()["published_version"],
        "1.0"
    );
    assert_eq!(
        state["version_matrix"],
        json!({"ivr": "1.4.2", "prompts": "2026.11"})
    );
    assert_eq!(
        state["optimization"],
        json!({"nodes_changed": 1, "nodes_reordered": 1, "conditions_dropped": 1})
    );

    let crm = app.crm_events(1).await.remove(0);
    assert_eq!(crm.routing_key, "crm.flow.deploy");
    assert_eq!(crm.event.published_version.as_deref(), Some("2.0"));
    assert_eq!(
        crm.event.version_matrix,
        Some(json!({"ivr": "1.4.2", "prompts": "2026.11"}))
    );

    let now = flow(&app, &id).await;
    assert_eq!(now["publishedVersion"]["id"], "2.0");
    assert_eq!(now["checkedInVersion"]["id"], "2.0");
    assert!(now.get("lockedClient").is_none(), "left locked: {now}");
    assert_eq!(versions(&app, &id).await, ["1.0", "2.0"]);
    // What was deployed is the optimised flow: conditions by priority, duplicate target gone.
    let deployed = configuration(&app, &id, "2.0").await;
    let priorities: Vec<i64> = deployed["nodes"]["menu"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["priority"].as_i64().unwrap())
        .collect();
    assert_eq!(priorities, [10, 1]);
    assert_eq!(
        deployed["nodes"]["vip"]["queue_id"], "q-vip",
        "fields the worker does not read are kept"
    );
    assert_eq!(flow_mutations(&app, &id).await, lifecycle_paths(&id));
    app.stop().await;
}

#[tokio::test]
async fn a_flow_locked_by_another_client_is_a_conflict_and_its_lock_is_left_alone() {
    let mut app = app().await;
    let id = flow_id(1).to_string();
    flow_control(&app, &id, "lock", json!({"client_id": "other-client"})).await;
    app.publish(&deploy(flow_id(1), json!({}))).await;
    let event = next_event(&mut app, Outcome::Conflict).await;
    assert!(error_of(&event, "flow_locked").message.contains("other-client"));
    let now = flow(&app, &id).await;
    assert_eq!(now["lockedClient"]["id"], "other-client");
    assert_eq!(versions(&app, &id).await, ["1.0"]);
    app.assert_no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn a_failed_publish_is_rolled_back_to_the_previous_configuration_and_unlocked() {
    let mut app = app().await;
    let id = flow_id(2).to_string();
    let original = configuration(&app, &id, "1.0").await;
    let event = rolled_back_deploy(&mut app, 2, "fail-next-publish").await;
    assert_eq!(event.routing_key, "audit.flow.deploy.rolled_back");
    let error = error_of(&event, "architect.publish.failed");
    assert!(
        error
            .message
            .contains("restored version 1.0's configuration as version 3.0"),
        "{}",
        error.message
    );
    // A rollback changed the flow: a link of its chain.
    assert_eq!(event.event.entity_version, 1);
    assert!(event.event.checksum.is_some());
    let letter = app.dead_letters(1).await.remove(0);
    assert_eq!(letter.headers["x-error-code"], "architect.publish.failed");

    assert_rolled_back_to(&app, &id, &original).await;
    assert_eq!(versions(&app, &id).await, ["1.0", "2.0", "3.0"]);
    app.stop().await;
}

#[tokio::test]
async fn retries_inside_the_lifecycle_never_duplicate_a_version() {
    let mut app = app().await;
    let id = flow_id(0).to_string();
    // A 503 on checkin (not applied) and a lost answer on save (applied): one new version each way.
    control(
        &app,
        "/sandbox/faults",
        json!({"route": "POST /api/v2/flows/actions/checkin", "errors": {"503": 1.0}, "times": 1}),
    )
    .await;
    control(
        &app,
        "/sandbox/faults",
        json!({"route": "POST /api/v2/flows/{flowId}/versions", "drop_response": 1.0, "times": 1}),
    )
    .await;
    app.publish(&deploy(flow_id(0), json!({}))).await;
    next_event(&mut app, Outcome::Applied).await;
    assert_eq!(
        versions(&app, &id).await,
        ["1.0", "2.0"],
        "exactly one new version"
    );
    assert_eq!(app.requests("POST /api/v2/flows/actions/checkin", 503).await, 1);
    assert_eq!(app.requests("POST /api/v2/flows/actions/checkin", 200).await, 1);
    assert_eq!(app.requests("POST /api/v2/flows/{flowId}/versions", 200).await, 1);
    assert_eq!(flow(&app, &id).await["publishedVersion"]["id"], "2.0");
    app.stop().await;
}

#[tokio::test]
async fn a_lost_checkin_answer_is_settled_by_reading_not_by_checking_in_again() {
    let mut app = app().await;
    let id = flow_id(1).to_string();
    control(
        &app,
        "/sandbox/faults",
        json!({"route": "POST /api/v2/flows/actions/checkin", "drop_response": 1.0, "times": 1}),
    )
    .await;
    app.publish(&deploy(flow_id(1), json!({}))).await;
    next_event(&mut app, Outcome::Applied).await;
    assert_eq!(
        app.requests("POST /api/v2/flows/actions/checkin", 200).await,
        1,
        "one checkin reached Genesys"
    );
    assert_eq!(versions(&app, &id).await, ["1.0", "2.0"]);
    app.stop().await;
}

#[tokio::test]
async fn an_expected_version_that_does_not_hold_is_a_conflict() {
    let mut app = app().await;
    app.publish(&deploy(flow_id(1), json!({"expected_version": "7.0"})))
        .await;
    let event = next_event(&mut app, Outcome::Conflict).await;
    assert_eq!(
        event.event.error.as_ref().unwrap().code,
        "expected_version_mismatch"
    );
    assert_eq!(versions(&app, &flow_id(1).to_string()).await, ["1.0"]);
    app.publish(&deploy(flow_id(1), json!({"expected_version": "1.0"})))
        .await;
    assert_eq!(app.audit_events(1).await[0].event.outcome, Outcome::Applied);
    app.stop().await;
}

#[tokio::test]
async fn create_makes_the_flow_first_and_a_second_deploy_finds_it_by_name() {
    let mut app = app().await;
    let name = format!("Sales IVR {}", Uuid::new_v4());
    app.publish(&create(&name, ivr("prompt-sales"))).await;
    let first = next_event(&mut app, Outcome::Applied).await;
    let id = deployed_flow_id(&first);
    assert_eq!(first.event.entity, format!("flow:{id}"));
    assert_eq!(
        first.event.new_state.as_ref().unwrap()["published_version"],
        "1.0"
    );
    assert_eq!(
        first.event.new_state.as_ref().unwrap()["previous_published_version"],
        Value::Null
    );

    app.publish(&create(&name, ivr("prompt-sales-v2"))).await;
    let second = next_event(&mut app, Outcome::Applied).await;
    assert_eq!(
        second.event.entity,
        format!("flow:{id}"),
        "found by name, not created again"
    );
    assert_eq!(second.event.entity_version, 2);
    assert_eq!(versions(&app, &id).await, ["1.0", "2.0"]);
    assert_eq!(app.requests("POST /api/v2/flows", 200).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_flow_is_rejected_before_any_genesys_call() {
    let mut app = app().await;
    let mut bad = ivr("prompt-welcome");
    bad["nodes"]["menu"]["transitions"] = json!([{"target": "start"}, {"target": "ghost"}]);
    app.publish(&deploy(
        flow_id(0),
        json!({"flow": bad, "rules": {"media_registry": ["prompt-other"]}}),
    ))
    .await;
    let event = next_event(&mut app, Outcome::Rejected).await;
    let message = event.event.error.clone().unwrap().message;
    for expected in ["\"ghost\"", "cycle: start → menu → start", "\"prompt-welcome\""] {
        assert!(message.contains(expected), "{expected} missing from {message}");
    }
    assert_eq!(
        app.dead_letters(1).await[0].headers["x-error-code"],
        "invalid_flow"
    );
    assert!(app.mutations().await.is_empty());
    app.stop().await;
}

// The same lifecycle under each way Genesys reports its asynchronous operations (README,
// "Genesys behaviours"), and under its consistency lag and people's locks.

/// An app whose sandbox plays `behaviour`, polling every 20 ms. The operation timeout is far
/// above a deploy's few polls and above the tests' wait for events: a deploy that finishes only
/// by timing out fails the test.
async fn app_playing(behaviour: Value, env: &[(&str, &str)]) -> TestApp {
    let mut overrides = vec![("FLOW_POLL_MS", "20"), ("FLOW_OPERATION_TIMEOUT_SECS", "60")];
    overrides.extend_from_slice(env);
    let app = spawn_app_with(sandbox_config(), &overrides).await;
    app.set_behaviour(behaviour).await;
    app
}

/// A deploy of flow `n` is applied promptly, publishes version 2.0 and leaves the flow unlocked,
/// with one checkout, one saved version, one checkin and at least one publish.
async fn deploys_promptly(app: &mut TestApp, n: usize) {
    let id = flow_id(n).to_string();
    app.publish(&deploy(flow_id(n), json!({}))).await;
    let event = next_event(app, Outcome::Applied).await;
    assert_eq!(
        event.event.new_state.as_ref().unwrap()["published_version"],
        "2.0"
    );
    assert!(
        event.event.latency_ms < 5_000,
        "decided in {} ms: within a few polls, not by the timeout",
        event.event.latency_ms
    );
    let now = flow(app, &id).await;
    assert_eq!(now["publishedVersion"]["id"], "2.0");
    assert!(now.get("lockedClient").is_none(), "left locked: {now}");
    assert_eq!(versions(app, &id).await, ["1.0", "2.0"]);
    for action in LIFECYCLE_WRITES {
        assert_eq!(app.requests(action, 200).await, 1, "{action}");
    }
}

/// A deploy of flow `n` whose publish fails is rolled back to 1.0's configuration as 3.0.
async fn rolls_back(app: &mut TestApp, n: usize, code: &str) {
    let id = flow_id(n).to_string();
    let original = configuration(app, &id, "1.0").await;
    let event = rolled_back_deploy(app, n, "fail-next-publish").await;
    let error = error_of(&event, code);
    assert!(error.message.contains("as version 3.0"), "{}", error.message);
    assert_rolled_back_to(app, &id, &original).await;
}

#[tokio::test]
async fn an_operation_complete_in_the_actions_answer_is_the_result() {
    let mut app = app_playing(json!({"flow_operations": "complete_in_response"}), &[]).await;
    deploys_promptly(&mut app, 0).await;
    rolls_back(&mut app, 1, "architect.publish.failed").await;
    // The failure came straight from the publish's answer, with what Genesys said about it.
    app.stop().await;
}

#[tokio::test]
async fn operations_the_flow_never_shows_are_decided_by_its_versions() {
    let mut app = app_playing(json!({"flow_operations": "async_hidden"}), &[]).await;
    deploys_promptly(&mut app, 0).await;
    app.stop().await;
}

#[tokio::test]
async fn a_failed_publish_the_flow_never_shows_times_out_and_is_rolled_back() {
    // Nothing shows the failure: only the timeout ends the wait (short here), then the rollback.
    let mut app = app_playing(
        json!({"flow_operations": "async_hidden"}),
        &[("FLOW_OPERATION_TIMEOUT_SECS", "2")],
    )
    .await;
    rolls_back(&mut app, 1, "operation_timeout").await;
    app.stop().await;
}

#[tokio::test]
async fn an_older_complete_operation_still_shown_is_not_taken_for_the_new_one() {
    let mut app = app_playing(
        json!({"flow_operations": "stale_operation", "stale_operation_ms": 3000}),
        &[],
    )
    .await;
    deploys_promptly(&mut app, 0).await;
    rolls_back(&mut app, 1, "architect.publish.failed").await;
    app.stop().await;
}

#[tokio::test]
async fn a_publish_refused_while_the_checkin_settles_is_tried_again() {
    let mut app = app_playing(json!({"consistency_lag_ms": 600}), &[]).await;
    deploys_promptly(&mut app, 0).await;
    assert!(
        app.requests("POST /api/v2/flows/actions/publish", 409).await >= 1,
        "the sandbox refused the first publish"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_flow_this_job_created_is_read_once_genesys_shows_it() {
    let mut app = app_playing(json!({"consistency_lag_ms": 800}), &[]).await;
    let name = format!("Lagging IVR {}", Uuid::new_v4());
    app.publish(&create(&name, ivr("prompt-sales"))).await;
    let event = next_event(&mut app, Outcome::Applied).await;
    assert_eq!(
        event.event.new_state.as_ref().unwrap()["published_version"],
        "1.0"
    );
    assert_eq!(app.requests("POST /api/v2/flows", 200).await, 1);
    assert!(app.requests("GET /api/v2/flows/{flowId}", 404).await >= 1);
    app.stop().await;
}

#[tokio::test]
async fn a_flow_a_person_has_locked_is_a_conflict_that_names_them() {
    let mut app = app_playing(json!({}), &[]).await;
    let id = flow_id(2).to_string();
    let person = genesys_sandbox::user_id(0);
    flow_control(&app, &id, "lock", json!({"user_id": person})).await;
    app.publish(&deploy(flow_id(2), json!({}))).await;
    let event = next_event(&mut app, Outcome::Conflict).await;
    let error = error_of(&event, "flow_locked");
    assert!(
        error.message.contains(&format!("user Agent 001 ({person})")),
        "{}",
        error.message
    );
    assert_eq!(flow(&app, &id).await["lockedUser"]["id"], person.to_string());
    assert_eq!(versions(&app, &id).await, ["1.0"]);
    app.stop().await;
}

#[tokio::test]
async fn a_lock_its_holder_releases_within_flow_lock_wait_lets_the_deploy_through() {
    let mut app = app_playing(json!({}), &[("FLOW_LOCK_WAIT_SECS", "10")]).await;
    let id = flow_id(0).to_string();
    let person = genesys_sandbox::user_id(1);
    flow_control(
        &app,
        &id,
        "lock",
        json!({"user_id": person, "release_after_ms": 1500}),
    )
    .await;
    app.publish(&deploy(flow_id(0), json!({}))).await;
    let event = next_event(&mut app, Outcome::Applied).await;
    assert!(event.event.latency_ms >= 1_000, "it waited for the person");
    assert_eq!(flow(&app, &id).await["publishedVersion"]["id"], "2.0");
    app.stop().await;
}

#[tokio::test]
async fn a_flow_found_by_name_waits_for_its_holder_too() {
    let mut app = app_playing(json!({}), &[("FLOW_LOCK_WAIT_SECS", "10")]).await;
    let name = format!("Held IVR {}", Uuid::new_v4());
    app.publish(&create(&name, ivr("prompt-a"))).await;
    let first = next_event(&mut app, Outcome::Applied).await;
    let id = deployed_flow_id(&first);
    flow_control(
        &app,
        &id,
        "lock",
        json!({"user_id": genesys_sandbox::user_id(0), "release_after_ms": 800}),
    )
    .await;
    app.publish(&create(&name, ivr("prompt-b"))).await;
    let second = next_event(&mut app, Outcome::Applied).await;
    assert_eq!(second.event.entity, format!("flow:{id}"));
    app.stop().await;
}

// Deploys people can trust: unchanged deploys, lock policies, blast radius, verified publishes
// and failures that explain themselves.

/// The configuration a deploy of [`ivr`] saves: the optimised flow.
fn saved_configuration(prompt: &str) -> Value {
    let mut flow = FlowDefinition::from_value(ivr(prompt)).unwrap();
    optimize(&mut flow);
    serde_json::to_value(&flow).unwrap()
}

#[tokio::test]
async fn a_deploy_of_what_is_already_published_writes_nothing_and_says_it_was_unchanged() {
    let mut app = app().await;
    let id = flow_id(0).to_string();
    app.publish(&deploy(flow_id(0), json!({}))).await;
    let first = next_event(&mut app, Outcome::Applied).await;
    let first_state = first.event.new_state.clone().unwrap();
    assert_eq!(first_state["unchanged"], false);
    let hash = configuration_hash(&saved_configuration("prompt-welcome"));
    assert_eq!(first_state["configuration_hash"], hash);
    let writes_before: Vec<u64> = {
        let stats = app.sandbox_stats().await;
        LIFECYCLE_WRITES
            .iter()
            .map(|route| crate::helpers::requests_in(&stats, route, 200))
            .collect()
    };
    assert_eq!(writes_before, [1, 1, 1, 1]);

    // The same flow again, from another build (its version_matrix differs, so it is another
    // job, not a duplicate): the published configuration is the one it would save.
    app.publish(&deploy(
        flow_id(0),
        json!({"version_matrix": {"ivr": "1.4.3", "prompts": "2026.11"}}),
    ))
    .await;
    let second = next_event(&mut app, Outcome::Applied).await;
    assert_eq!(second.routing_key, "audit.flow.deploy.applied");
    let state = second.event.new_state.clone().unwrap();
    assert_eq!(state["unchanged"], true);
    assert_eq!(state["published_version"], "2.0");
    assert_eq!(state["previous_published_version"], "2.0");
    assert_eq!(state["configuration_hash"], hash);
    assert_eq!(state["consumers"], json!([]));
    assert!(second.event.error.is_none());

    // Nothing was written: no checkout, version, checkin or publish beyond the first deploy's.
    let stats = app.sandbox_stats().await;
    for route in LIFECYCLE_WRITES {
        assert_eq!(crate::helpers::requests_in(&stats, route, 200), 1, "{route}");
    }
    assert_eq!(
        flow_mutations(&app, &id).await.len(),
        4,
        "only the first deploy's"
    );
    assert_eq!(versions(&app, &id).await, ["1.0", "2.0"]);
    let now = flow(&app, &id).await;
    assert!(now.get("lockedClient").is_none(), "left locked: {now}");
    app.stop().await;
}

#[tokio::test]
async fn a_job_that_waits_for_a_persons_lock_deploys_once_they_let_go_and_is_a_conflict_naming_them_if_they_do_not(
) {
    // The worker's own setting says "conflict at once": the jobs' on_locked decides.
    let mut app = app_playing(json!({}), &[("FLOW_LOCK_WAIT_SECS", "0")]).await;
    let released = flow_id(0).to_string();
    flow_control(
        &app,
        &released,
        "lock",
        json!({"user_id": genesys_sandbox::user_id(1), "release_after_ms": 1500}),
    )
    .await;
    app.publish(&deploy(
        flow_id(0),
        json!({"on_locked": "wait", "lock_wait_secs": 10}),
    ))
    .await;
    let event = next_event(&mut app, Outcome::Applied).await;
    assert!(
        event.event.latency_ms >= 1_000,
        "it waited for the person: {} ms",
        event.event.latency_ms
    );
    assert_eq!(flow(&app, &released).await["publishedVersion"]["id"], "2.0");

    let held = flow_id(1).to_string();
    let person = genesys_sandbox::user_id(0);
    flow_control(&app, &held, "lock", json!({"user_id": person})).await;
    app.publish(&deploy(
        flow_id(1),
        json!({"on_locked": "wait", "lock_wait_secs": 1}),
    ))
    .await;
    let event = next_event(&mut app, Outcome::Conflict).await;
    let error = error_of(&event, "flow_locked");
    assert!(
        error
            .message
            .contains(&format!("locked by user Agent 001 ({person}) after waiting 1s")),
        "{}",
        error.message
    );
    assert!(event.event.latency_ms >= 1_000, "it waited the job's second");
    assert_eq!(flow(&app, &held).await["lockedUser"]["id"], person.to_string());
    assert!(flow_mutations(&app, &held).await.is_empty(), "nothing written");
    app.stop().await;
}

#[tokio::test]
async fn on_locked_conflict_does_not_wait_even_when_the_worker_would() {
    let mut app = app_playing(json!({}), &[("FLOW_LOCK_WAIT_SECS", "30")]).await;
    let id = flow_id(2).to_string();
    flow_control(&app, &id, "lock", json!({"client_id": "other-client"})).await;
    app.publish(&deploy(flow_id(2), json!({"on_locked": "conflict"})))
        .await;
    let event = next_event(&mut app, Outcome::Conflict).await;
    let error = error_of(&event, "flow_locked");
    assert!(error.message.contains("client other-client"), "{}", error.message);
    assert!(!error.message.contains("after waiting"), "{}", error.message);
    assert!(event.event.latency_ms < 5_000, "{} ms", event.event.latency_ms);
    assert!(flow_mutations(&app, &id).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn force_unlock_breaks_a_persons_lock_for_a_listed_actor_and_is_refused_before_any_change_for_others() {
    let mut app = app_playing(
        json!({}),
        &[("FLOW_FORCE_UNLOCK_ACTORS", "release-manager, ops-lead")],
    )
    .await;
    let id = flow_id(0).to_string();
    let person = genesys_sandbox::user_id(0);
    flow_control(&app, &id, "lock", json!({"user_id": person})).await;
    let mut allowed = deploy(flow_id(0), json!({"force_unlock": true}));
    allowed["actor"] = json!("release-manager");
    app.publish(&allowed).await;
    let event = next_event(&mut app, Outcome::Applied).await;
    let state = event.event.new_state.clone().unwrap();
    assert_eq!(
        state["forced_unlock"],
        json!({"holder": {"type": "user", "id": person, "name": "Agent 001"}})
    );
    assert_eq!(state["published_version"], "2.0");
    let mut expected = vec!["/api/v2/flows/actions/unlock".to_string()];
    expected.extend(lifecycle_paths(&id));
    assert_eq!(
        flow_mutations(&app, &id).await,
        expected,
        "the sandbox saw the unlock, before the checkout"
    );

    // An actor the worker does not list: rejected before anything is written.
    let refused_flow = flow_id(1).to_string();
    flow_control(&app, &refused_flow, "lock", json!({"user_id": person})).await;
    let mut refused = deploy(flow_id(1), json!({"force_unlock": true}));
    refused["actor"] = json!("intern-bot");
    app.publish(&refused).await;
    let event = next_event(&mut app, Outcome::Rejected).await;
    let error = error_of(&event, "force_unlock_not_allowed");
    assert!(error.message.contains("\"intern-bot\""), "{}", error.message);
    let letter = app.dead_letters(1).await.remove(0);
    assert_eq!(letter.headers["x-error-code"], "force_unlock_not_allowed");
    assert!(flow_mutations(&app, &refused_flow).await.is_empty());
    assert_eq!(
        app.requests("POST /api/v2/flows/actions/unlock", 200).await,
        1,
        "only the allowed actor's unlock"
    );
    assert_eq!(
        flow(&app, &refused_flow).await["lockedUser"]["id"],
        person.to_string(),
        "the person's lock is left alone"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_publish_whose_configuration_reads_back_otherwise_is_rolled_back() {
    let mut app = app().await;
    let id = flow_id(2).to_string();
    let original = configuration(&app, &id, "1.0").await;
    let event = rolled_back_deploy(&mut app, 2, "alter-next-publish").await;
    let error = error_of(&event, "publish_verification_failed");
    let saved = configuration_hash(&saved_configuration("prompt-welcome"));
    let altered = configuration_hash(&configuration(&app, &id, "2.0").await);
    assert_ne!(saved, altered);
    for hash in [&saved, &altered] {
        assert!(
            error.message.contains(hash.as_str()),
            "{hash} missing from {}",
            error.message
        );
    }
    assert!(
        error
            .message
            .contains("restored version 1.0's configuration as version 3.0"),
        "{}",
        error.message
    );
    let letter = app.dead_letters(1).await.remove(0);
    assert_eq!(letter.headers["x-error-code"], "publish_verification_failed");
    assert_rolled_back_to(&app, &id, &original).await;
    app.stop().await;
}

#[tokio::test]
async fn an_applied_deploy_lists_what_uses_the_flow_page_by_page_and_goes_on_without_it_when_it_cannot_be_read(
) {
    let mut app = app().await;
    let id = flow_id(0).to_string();
    let consumers: Vec<Value> = (0..150)
        .map(|n| json!({"id": format!("consumer-{n:03}"), "name": format!("Caller {n}"), "type": "INBOUNDCALLFLOW"}))
        .collect();
    control_with(
        &app,
        reqwest::Method::PUT,
        &format!("/sandbox/flows/{id}/consumers"),
        json!({"consumers": consumers}),
    )
    .await;
    app.publish(&deploy(flow_id(0), json!({}))).await;
    let event = next_event(&mut app, Outcome::Applied).await;
    let listed = event.event.new_state.as_ref().unwrap()["consumers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(listed.len(), 150, "both pages");
    assert_eq!(
        listed[0],
        json!({"id": "consumer-000", "name": "Caller 0", "type": "INBOUNDCALLFLOW", "version": "1.0"})
    );
    assert_eq!(
        app.requests("GET /api/v2/architect/dependencytracking/consumingresources", 200)
            .await,
        2
    );

    // Dependency tracking down: the deploy is applied all the same, and says why it has no list.
    app.set_fault(json!({"route": "GET /api/v2/architect/dependencytracking/consumingresources", "errors": {"503": 1.0}}))
        .await;
    app.publish(&deploy(flow_id(1), json!({}))).await;
    let event = next_event(&mut app, Outcome::Applied).await;
    let state = event.event.new_state.clone().unwrap();
    assert_eq!(state["consumers"], Value::Null);
    assert!(
        state["consumers_error"].as_str().unwrap().contains("503"),
        "{}",
        state["consumers_error"]
    );
    assert_eq!(state["published_version"], "2.0");
    app.stop().await;
}

#[tokio::test]
async fn a_failed_publish_explains_itself_in_the_audit_event() {
    let mut app = app().await;
    let id = flow_id(1).to_string();
    let event = rolled_back_deploy(&mut app, 1, "fail-next-publish").await;
    let error: Value = serde_json::from_str::<Value>(&event.raw).unwrap()["error"].clone();
    assert_eq!(error["code"], "architect.publish.failed");
    let details = &error["details"];
    assert_eq!(details["error_code"], "architect.publish.failed");
    let name = flow(&app, &id).await["name"].clone();
    let entries = details["error_details"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["fieldName"], "startUpRef");
    assert_eq!(entries[0]["entityId"], id.as_str());
    assert_eq!(entries[0]["entityName"], name);
    assert!(
        entries[0]["errorCode"]
            .as_str()
            .unwrap()
            .starts_with("architect."),
        "{entries:?}"
    );
    assert_eq!(details["error_message_params"]["flowId"], id);
    assert_eq!(details["error_message_params"]["version"], "2.0");
    assert_eq!(details["error_message_params"]["errorCount"], "1");
    // The same in the dead letter's headers is `x-error-details` (see the next test).
    let letter = app.dead_letters(1).await.remove(0);
    assert_eq!(letter.headers["x-error-code"], "architect.publish.failed");
    app.stop().await;
}

#[tokio::test]
async fn a_failed_publishs_details_reach_the_dead_letter() {
    let mut app = app().await;
    let event = rolled_back_deploy(&mut app, 1, "fail-next-publish").await;
    let details = serde_json::to_value(event.event.error.unwrap().details.unwrap()).unwrap();
    let letter = app.dead_letters(1).await.remove(0);
    let header: Value = serde_json::from_str(&letter.headers["x-error-details"]).unwrap();
    assert_eq!(header, details);
    assert_eq!(header["error_details"][0]["fieldName"], "startUpRef");
    app.stop().await;
}
