//! Per-entity ordering: one change in flight per entity, and the sequence rule.

use genesys_sandbox::{presence_definition_id, user_id, SandboxConfig};
use genesys_worker::audit;
use genesys_worker::events::Outcome;
use serde_json::json;

use crate::helpers::{agent_job, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_late_lower_sequence_is_superseded_and_the_newer_state_stays() {
    let mut app = spawn_app().await;
    let user = user_id(10);
    let mut newer = agent_job(user, json!({"presence": "Break"}));
    newer["sequence"] = json!(2);
    let mut older = agent_job(user, json!({"presence": "Available"}));
    older["sequence"] = json!(1);
    app.publish(&newer).await;
    assert_eq!(app.audit_events(1).await[0].event.outcome, Outcome::Applied);
    app.crm_events(1).await;
    app.publish(&older).await;
    let late = app.audit_events(1).await.remove(0);
    assert_eq!(late.event.outcome, Outcome::Superseded);
    assert_eq!(late.routing_key, "audit.agent.status.superseded");
    assert_eq!(late.event.error.as_ref().unwrap().code, "superseded");
    assert_eq!(app.user(user).await["presence"], "Break");
    assert_eq!(app.mutations().await.len(), 1);
    app.assert_no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn sequences_beyond_2_pow_53_compare_exactly() {
    // Nanosecond timestamps: doubles cannot tell these apart.
    let mut app = spawn_app().await;
    let user = user_id(12);
    let mut applied_presences = Vec::new();
    for (sequence, presence) in [
        (1_760_000_000_000_000_000u64, "Available"),
        (1_760_000_000_000_000_100, "Break"),
        (1_760_000_000_000_000_050, "Meal"),
        (1_760_000_000_000_000_101, "Busy"),
        (u64::MAX, "Away"),
        (u64::MAX - 1, "Training"),
    ] {
        let mut job = agent_job(user, json!({"presence": presence}));
        job["sequence"] = json!(sequence);
        app.publish(&job).await;
        let event = app.audit_events(1).await.remove(0);
        if event.event.outcome == Outcome::Applied {
            applied_presences.push(presence);
        } else {
            assert_eq!(event.event.outcome, Outcome::Superseded, "{presence}");
        }
    }
    assert_eq!(applied_presences, ["Available", "Break", "Busy", "Away"]);
    assert_eq!(app.user(user).await["presence"], "Away");
    app.stop().await;
}

#[tokio::test]
async fn a_burst_on_one_agent_applies_in_increasing_sequence_and_ends_on_the_newest() {
    let sandbox = SandboxConfig {
        users: 20,
        ..SandboxConfig::default()
    };
    let mut app = spawn_app_with(
        sandbox,
        &[("WORKER_CONCURRENCY", "16"), ("WORKER_PREFETCH", "32")],
    )
    .await;
    let user = user_id(11);
    let presences = [
        "Available",
        "Break",
        "Meal",
        "Busy",
        "Away",
        "Training",
        "Meeting",
        "On Queue",
    ];
    // Published out of order: 5, 2, 8, 1, 7, 3, 6, 4.
    let order = [5u64, 2, 8, 1, 7, 3, 6, 4];
    for sequence in order {
        let mut job = agent_job(user, json!({"presence": presences[sequence as usize - 1]}));
        job["sequence"] = json!(sequence);
        app.publish(&job).await;
    }
    let events = app.audit_events(order.len()).await;
    let applied = events
        .iter()
        .filter(|e| e.event.outcome == Outcome::Applied)
        .count();
    let superseded = events
        .iter()
        .filter(|e| e.event.outcome == Outcome::Superseded)
        .count();
    assert_eq!(applied + superseded, order.len());
    // Sequence 8 is never superseded, and nothing applied after it: it is the final state.
    assert_eq!(app.user(user).await["presence"], "On Queue");
    let mutations = app.mutations().await;
    assert_eq!(mutations.len(), applied);
    let applied_definitions: Vec<String> = mutations
        .iter()
        .map(|m| {
            m["body"]["presenceDefinition"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let sequence_of = |definition: &str| {
        presences
            .iter()
            .position(|p| presence_definition_id(p).to_string() == definition)
            .unwrap()
            + 1
    };
    let sequences: Vec<usize> = applied_definitions.iter().map(|d| sequence_of(d)).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "applied out of order: {sequences:?}"
    );
    // One change in flight at a time: the entity's events arrive in version order.
    let stream: Vec<String> = events.iter().map(|e| e.raw.clone()).collect();
    let report = audit::verify(&stream.join("\n"), false).expect("the stream verifies in arrival order");
    assert_eq!(report.links, applied);
    app.stop().await;
}
