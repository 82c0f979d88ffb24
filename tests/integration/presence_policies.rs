//! The presence policies of `agent.status` (`respect_out_of_office`, `if_interacting`,
//! `skip_if_current`, a batch's `presence_policy`): what the worker read and wrote in the
//! sandbox, and the outcome each job announced.

use genesys_sandbox::{user_id, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_job, spawn_app_with, TestApp, PER_AGENT_CALLS};

const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";
const READ_USERS: &str = "GET /api/v2/users";
const BULK_PUT: &str = "PUT /api/v2/users/presences/bulk";

async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_with(
        SandboxConfig {
            users: 300,
            ..Default::default()
        },
        overrides,
    )
    .await
}

fn presence_writes(mutations: &[Value], user: Uuid) -> usize {
    mutations
        .iter()
        .filter(|m| m["path"] == format!("/api/v2/users/{user}/presences/purecloud"))
        .count()
}

#[tokio::test]
async fn an_agent_out_of_office_is_left_alone_unless_the_job_says_otherwise() {
    let mut app = spawn_app(PER_AGENT_CALLS).await;
    let (away, other) = (user_id(0), user_id(1));
    app.set_user_state(away, json!({"out_of_office": true})).await;

    app.publish(&agent_job(away, json!({"presence": "On Queue"})))
        .await;
    let event = app.audit_events(1).await.remove(0).event;
    assert_eq!(event.outcome, Outcome::Conflict);
    let error = event.error.expect("the conflict says why");
    assert_eq!(error.code, "out_of_office");
    assert!(error.message.contains(&away.to_string()), "{}", error.message);
    assert_eq!(event.previous_state.unwrap()["out_of_office"], true);
    assert_eq!(
        presence_writes(&app.mutations().await, away),
        0,
        "nothing written"
    );

    let overridden = agent_job(
        away,
        json!({"presence": "On Queue", "respect_out_of_office": false}),
    );
    app.publish(&overridden).await;
    app.publish(&agent_job(other, json!({"presence": "On Queue"})))
        .await;
    let events = app.audit_events(2).await;
    assert!(
        events.iter().all(|e| e.event.outcome == Outcome::Applied),
        "{events:#?}"
    );
    let mutations = app.mutations().await;
    assert_eq!(presence_writes(&mutations, away), 1);
    assert_eq!(presence_writes(&mutations, other), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_agent_on_a_live_interaction_is_changed_skipped_or_deferred_as_the_job_asks() {
    let mut app = spawn_app(PER_AGENT_CALLS).await;
    let (applied, skipped) = (user_id(0), user_id(1));
    for user in [applied, skipped] {
        app.set_user_state(user, json!({"routing_status": "INTERACTING"}))
            .await;
    }
    app.publish(&agent_job(applied, json!({"presence": "Break"})))
        .await;
    app.publish(&agent_job(
        skipped,
        json!({"presence": "Break", "if_interacting": "skip"}),
    ))
    .await;
    let events = app.audit_events(2).await;
    let by_user = |user: Uuid| {
        events
            .iter()
            .find(|e| e.event.entity == format!("user:{user}"))
            .unwrap()
            .event
            .clone()
    };
    assert_eq!(by_user(applied).outcome, Outcome::Applied, "apply is the default");
    let skip = by_user(skipped);
    assert_eq!(skip.outcome, Outcome::Conflict);
    assert_eq!(skip.error.unwrap().code, "agent_interacting");
    let mutations = app.mutations().await;
    assert_eq!(presence_writes(&mutations, applied), 1);
    assert_eq!(presence_writes(&mutations, skipped), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_deferred_change_waits_for_the_interaction_to_end_without_a_hot_loop() {
    // Retry rounds of 300 ms, 600 ms, 900 ms, 1.2 s: the interaction ends after about 1 s.
    let mut app = spawn_app(&[("BULK_PRESENCE", "off"), ("RETRY_DELAYS_MS", "300,600,900,1200")]).await;
    let user = user_id(0);
    app.set_user_state(
        user,
        json!({"routing_status": "COMMUNICATING", "revert_after_ms": 1000}),
    )
    .await;
    app.publish(&agent_job(
        user,
        json!({"presence": "Meal", "if_interacting": "defer"}),
    ))
    .await;
    let event = app.audit_events(1).await.remove(0).event;
    assert_eq!(event.outcome, Outcome::Applied, "{event:#?}");
    app.crm_events(1).await;
    app.assert_no_more_events().await;
    let mutations = app.mutations().await;
    assert_eq!(presence_writes(&mutations, user), 1);
    // One read per round, each after its delay: no polling in between.
    let reads = app.requests(READ_USERS, 200).await;
    assert!((2..=5).contains(&reads), "{reads} reads");
    app.stop().await;
}

#[tokio::test]
async fn a_deferred_change_ends_as_a_conflict_when_its_rounds_run_out_and_expires_at_not_after() {
    let mut app = spawn_app(&[("BULK_PRESENCE", "off"), ("RETRY_DELAYS_MS", "100,100")]).await;
    let (rounds, deadline) = (user_id(0), user_id(1));
    for user in [rounds, deadline] {
        app.set_user_state(user, json!({"routing_status": "INTERACTING"}))
            .await;
    }
    app.publish(&agent_job(
        rounds,
        json!({"presence": "Meal", "if_interacting": "defer"}),
    ))
    .await;
    let event = app.audit_events(1).await.remove(0).event;
    assert_eq!(event.outcome, Outcome::Conflict);
    assert_eq!(event.error.unwrap().code, "agent_interacting");

    let not_after = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(150);
    let mut job = agent_job(deadline, json!({"presence": "Meal", "if_interacting": "defer"}));
    job["not_after"] = json!(not_after
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap());
    app.publish(&job).await;
    let event = app.audit_events(1).await.remove(0).event;
    assert_eq!(event.outcome, Outcome::Expired, "{event:#?}");
    let mutations = app.mutations().await;
    assert_eq!(
        presence_writes(&mutations, rounds) + presence_writes(&mutations, deadline),
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn an_agent_already_in_the_target_presence_is_not_written_to() {
    let mut app = spawn_app(PER_AGENT_CALLS).await;
    let (already, forced) = (user_id(0), user_id(1));
    // Seeded users start Offline.
    app.publish(&agent_job(already, json!({"presence": "Offline"})))
        .await;
    app.publish(&agent_job(
        forced,
        json!({"presence": "Offline", "skip_if_current": false}),
    ))
    .await;
    let events = app.audit_events(2).await;
    assert!(
        events.iter().all(|e| e.event.outcome == Outcome::Applied),
        "{events:#?}"
    );
    let unchanged = |user: Uuid| {
        events
            .iter()
            .find(|e| e.event.entity == format!("user:{user}"))
            .unwrap()
            .event
            .new_state
            .clone()
            .unwrap()["unchanged"]
            .clone()
    };
    assert_eq!(unchanged(already), true);
    assert_eq!(unchanged(forced), Value::Null);
    let mutations = app.mutations().await;
    assert_eq!(presence_writes(&mutations, already), 0);
    assert_eq!(presence_writes(&mutations, forced), 1);
    assert_eq!(app.requests(PATCH_PRESENCE, 200).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_policy_reaches_its_children_and_users_left_out_of_an_expand_are_read_alone() {
    let mut app = spawn_app(&[]).await;
    // Genesys leaves every 3rd user of a listing without the expanded fields.
    app.set_behaviour(json!({"expand_omitted_every": 3})).await;
    let users: Vec<Uuid> = (0..12).map(user_id).collect();
    for user in &users[..4] {
        app.set_user_state(*user, json!({"routing_status": "INTERACTING"}))
            .await;
    }
    app.set_user_state(users[4], json!({"out_of_office": true})).await;
    let children: Vec<Value> = users
        .iter()
        .map(|user| agent_job(*user, json!({"presence": "On Queue"})))
        .collect();
    let batch = json!({
        "job_id": Uuid::new_v4(),
        "kind": "batch",
        "payload": {"jobs": children, "presence_policy": {"if_interacting": "skip"}},
    });
    app.publish(&batch).await;
    let events = app.audit_events(users.len() + 1).await;
    let outcome_of = |user: Uuid| {
        events
            .iter()
            .find(|e| e.event.entity == format!("user:{user}"))
            .map(|e| (e.event.outcome, e.event.error.as_ref().map(|e| e.code.clone())))
            .unwrap()
    };
    for user in &users[..4] {
        assert_eq!(
            outcome_of(*user),
            (Outcome::Conflict, Some("agent_interacting".into()))
        );
    }
    assert_eq!(
        outcome_of(users[4]),
        (Outcome::Conflict, Some("out_of_office".into()))
    );
    for user in &users[5..] {
        assert_eq!(outcome_of(*user), (Outcome::Applied, None));
    }
    let mutations = app.mutations().await;
    let written: usize = users.iter().map(|u| presence_writes(&mutations, *u)).sum();
    assert_eq!(written, 0, "bulk calls, not PATCHes");
    // The sandbox logs a bulk call's change of each user as a mutation of its own.
    let changed: Vec<&Value> = mutations
        .iter()
        .filter(|m| m["path"] == "/api/v2/users/presences/bulk")
        .collect();
    assert_eq!(
        changed.len(),
        7,
        "only the seven agents free to change: {changed:#?}"
    );
    // The users the listing left out were read on their own.
    assert!(
        app.requests("GET /api/v2/users/{userId}/routingstatus", 200)
            .await
            >= 1
    );
    app.stop().await;
}

#[tokio::test]
async fn a_handover_with_the_policies_on_costs_at_most_one_and_a_half_times_the_writes() {
    // Budget-bound, as a real handover is: calls leave full.
    let mut app = spawn_app(&[("GENESYS_RATE_LIMIT_RPS", "4"), ("GENESYS_RATE_LIMIT_BURST", "1")]).await;
    let users: Vec<Uuid> = (0..200).map(user_id).collect();
    let children: Vec<Value> = users
        .iter()
        .map(|user| agent_job(*user, json!({"presence": "On Queue"})))
        .collect();
    app.publish(&json!({"job_id": Uuid::new_v4(), "kind": "batch", "payload": {"jobs": children}}))
        .await;
    let events = app.audit_events(users.len() + 1).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.outcome == Outcome::Applied)
            .count(),
        users.len() + 1
    );
    let reads = app.requests(READ_USERS, 200).await;
    let writes = app.requests(BULK_PUT, 200).await;
    assert_eq!(writes, 4, "200 agents in bulk calls of 50");
    assert!(
        (reads + writes) as f64 <= 1.5 * writes as f64,
        "{reads} reads for {writes} writes"
    );
    app.stop().await;
}
