//! `genesys-worker dlq list|replay` against the dead-letter queue the worker fills.

use genesys_sandbox::{user_id, SandboxConfig};
use genesys_worker::cli::{BrokerArgs, DlqOptions, Filter};
use genesys_worker::config::ServiceUrls;
use genesys_worker::dlq;
use genesys_worker::events::Outcome;
use serde_json::{json, Value};

use crate::helpers::{agent_job, amqp_url, spawn_app_with, TestApp};

const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";

/// Runs `genesys-worker dlq ARGS` against the app's queues; returns exit code and stdout.
async fn dlq(app: &TestApp, args: &[&str]) -> (i32, String) {
    let (code, stdout, _) = app.cli(&[&["dlq"], args].concat()).await;
    (code, stdout)
}

async fn listed(app: &TestApp, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(filter);
    let (code, out) = dlq(app, &args).await;
    assert_eq!(code, 0, "{out}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn dead_letters_are_listed_without_being_taken_and_replayed_once_the_cause_is_fixed() {
    let mut app = spawn_app_with(
        SandboxConfig {
            users: 10,
            ..SandboxConfig::default()
        },
        &[
            ("GENESYS_MAX_ATTEMPTS", "1"),
            ("RETRY_DELAYS_MS", "none"),
            ("BULK_PRESENCE", "off"),
        ],
    )
    .await;
    app.set_fault(json!({"route": PATCH_PRESENCE, "errors": {"502": 1.0}}))
        .await;
    let failing = agent_job(user_id(1), json!({"presence": "Break"}));
    let invalid = agent_job(user_id(2), json!({"presence": "Napping"}));
    app.publish(&failing).await;
    app.publish(&invalid).await;
    let outcomes: Vec<Outcome> = app
        .audit_events(2)
        .await
        .iter()
        .map(|e| e.event.outcome)
        .collect();
    assert!(outcomes.contains(&Outcome::Failed) && outcomes.contains(&Outcome::Rejected));

    // Dead-lettering follows the events; wait until both are in the queue.
    let mut letters = Vec::new();
    for _ in 0..50 {
        letters = listed(&app, &[]).await;
        if letters.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(letters.len(), 2, "{letters:#?}");
    let failed = letters.iter().find(|l| l["job_id"] == failing["job_id"]).unwrap();
    assert_eq!(failed["code"], "genesys.bad.gateway");
    assert_eq!(failed["kind"], "agent.status");
    assert_eq!(
        failed["original_exchange"],
        json!(app.config.topology.jobs_exchange)
    );
    assert_eq!(failed["original_routing_key"], "agent.status");
    assert_eq!(listed(&app, &["--code", "unknown_presence"]).await.len(), 1);
    assert_eq!(listed(&app, &["--kind", "interaction.status"]).await.len(), 0);
    // Listing took nothing.
    assert_eq!(listed(&app, &[]).await.len(), 2);

    // The cause is fixed; a dry run first.
    let cleared = app
        .http
        .delete(format!("{}/sandbox/faults", app.sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert!(cleared.status().is_success());
    let (code, out) = dlq(&app, &["replay", "--code", "genesys.bad.gateway", "--dry-run"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("would replay 1 dead letter(s); 2 left"), "{out}");
    assert_eq!(listed(&app, &[]).await.len(), 2);

    let (code, out) = dlq(&app, &["replay", "--code", "genesys.bad.gateway", "--rate", "5"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("replayed 1 dead letter(s); 1 left"), "{out}");
    let replayed = app.audit_events(1).await.remove(0);
    assert_eq!(
        replayed.event.job_id.to_string(),
        failing["job_id"].as_str().unwrap()
    );
    assert_eq!(replayed.event.outcome, Outcome::Applied);
    // A fresh start: the replayed job's retry bookkeeping was dropped.
    assert_eq!(replayed.event.attempts, 1);
    assert_eq!(app.user(user_id(1)).await["presence"], "Break");
    let left = listed(&app, &[]).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["code"], "unknown_presence");
    app.stop().await;
}

#[tokio::test]
async fn listings_back_to_back_each_find_every_dead_letter() {
    let app = spawn_app_with(SandboxConfig::default(), &[]).await;
    const LETTERS: usize = 20;
    for i in 0..LETTERS {
        app.publish(&agent_job(user_id(i), json!({"presence": "Napping"})))
            .await;
    }
    let options = DlqOptions {
        broker: BrokerArgs {
            amqp_url: ServiceUrls::parse(&amqp_url()).unwrap(),
        },
        dead_letter_queue: app.config.topology.dead_letter.clone(),
        jobs_exchange: app.config.topology.jobs_exchange.clone(),
    };
    let everything = Filter::default();
    let list = || dlq::list(&options, &everything, usize::MAX);
    let mut found = 0;
    for _ in 0..100 {
        found = list().await.unwrap().len();
        if found == LETTERS {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(found, LETTERS);
    // A listing takes every letter for a moment; the next one, started at once, still finds
    // them all back in the queue.
    for round in 0..30 {
        assert_eq!(list().await.unwrap().len(), LETTERS, "listing {round}");
    }
    app.stop().await;
}
