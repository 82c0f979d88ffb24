//! Hostile and careless input: whatever a message carries, the worker answers it with one dead
//! letter (and one audit event when it names a job), keeps its broker connection, and its
//! neighbours are unaffected.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use genesys_sandbox::{flow_id, user_id, SandboxConfig};
use genesys_worker::events::Outcome;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_job, job, spawn_app_without_worker, TestApp};

/// A field value larger than a whole AMQP frame.
fn huge(fill: char) -> String {
    std::iter::repeat_n(fill, 300_000).collect()
}

/// The hostile variants: (what, routing key, body, headers, whether it names a job).
fn variants() -> Vec<(&'static str, &'static str, Vec<u8>, FieldTable, bool)> {
    let mut unknown_field = agent_job(user_id(1), json!({"presence": "Available"}));
    unknown_field["payload"][huge('f')] = json!(1);
    let mut routing = agent_job(user_id(2), json!({"presence": "Available"}));
    routing["payload"]["routing_status"] = json!(huge('R'));
    let flow = |start: &str, nodes: Value| {
        job(
            "flow.deploy",
            json!({"flow_id": flow_id(0), "flow": {"name": "Main IVR", "type": "inboundcall", "start": start, "nodes": nodes}}),
        )
    };
    let bad_start = flow(&huge('s'), json!({"start": {"type": "start", "transitions": []}}));
    let nodes: serde_json::Map<String, Value> = (0..40)
        .map(|n| {
            let name = format!("{n}{}", "n".repeat(8_000));
            (
                name,
                json!({"type": "menu", "transitions": [{"label": "x", "target": "ghost"}]}),
            )
        })
        .collect();
    let bad_nodes = flow("start", Value::Object(nodes));
    let mut headers = FieldTable::default();
    // Below a frame on its own, beyond one with the worker's error headers added.
    headers.insert(
        "x-producer-trace".into(),
        AMQPValue::LongString(LongString::from("h".repeat(120_000))),
    );
    let mut carried = agent_job(user_id(3), json!({"presence": "Teleporting"}));
    carried["idempotency_key"] = json!(format!("hostile-{}", Uuid::new_v4()));
    let body = |v: &Value| serde_json::to_vec(v).unwrap();
    vec![
        (
            "job_id",
            "agent.status",
            body(&json!({"job_id": huge('J'), "kind": "agent.status", "payload": {}})),
            FieldTable::default(),
            false,
        ),
        ("unknown payload field", "agent.status", body(&unknown_field), FieldTable::default(), true),
        ("routing_status", "agent.status", body(&routing), FieldTable::default(), true),
        ("flow start", "flow.deploy", body(&bad_start), FieldTable::default(), true),
        ("flow node names", "flow.deploy", body(&bad_nodes), FieldTable::default(), true),
        ("large original header", "agent.status", body(&carried), headers, true),
        (
            "duplicate kind",
            "agent.status",
            br#"{"job_id": "6f1e0c1a-0000-4000-8000-000000000001", "kind": "agent.status", "kind": "batch", "payload": {"user_id": "6f1e0c1a-0000-4000-8000-000000000002", "presence": "Available"}}"#.to_vec(),
            FieldTable::default(),
            false,
        ),
    ]
}

async fn publish_with(app: &TestApp, routing_key: &str, body: &[u8], headers: FieldTable) {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    app.publisher()
        .publish(&app.config.topology.jobs_exchange, routing_key, body, properties)
        .await
        .expect("published");
}

#[tokio::test]
async fn oversized_values_anywhere_give_one_bounded_dead_letter_and_the_connection_stays_up() {
    let sandbox = SandboxConfig {
        users: 40,
        flows: 1,
        ..SandboxConfig::default()
    };
    let mut app = spawn_app_without_worker(sandbox, &[]).await;
    let variants = variants();
    for (_, routing_key, body, headers, _) in &variants {
        publish_with(&app, routing_key, body, headers.clone()).await;
    }
    // Neighbours, queued behind the hostile messages.
    let neighbours = app.publish_agent_jobs(30, "Available").await;
    let mut worker = app.start_worker_process();

    let named = variants.iter().filter(|v| v.4).count();
    let events = app.audit_events(named + neighbours.len()).await;
    let mut outcomes: HashMap<Uuid, Vec<Outcome>> = HashMap::new();
    for event in &events {
        outcomes
            .entry(event.event.job_id)
            .or_default()
            .push(event.event.outcome);
        assert!(
            event.raw.len() < 16 * 1024,
            "an audit event of {} bytes",
            event.raw.len()
        );
    }
    for job in &neighbours {
        assert_eq!(outcomes.get(job), Some(&vec![Outcome::Applied]), "{job}");
    }
    let rejected = events
        .iter()
        .filter(|e| e.event.outcome == Outcome::Rejected)
        .count();
    assert_eq!(
        rejected, named,
        "one rejected event per hostile job that names one"
    );
    app.crm_events(neighbours.len()).await;
    app.assert_no_more_events().await;

    let letters = app.dead_letters(variants.len()).await;
    let codes: HashSet<&str> = letters
        .iter()
        .map(|l| l.headers["x-error-code"].as_str())
        .collect();
    for letter in &letters {
        let message = &letter.headers["x-error-message"];
        assert!(
            message.len() <= 1024,
            "x-error-message of {} bytes",
            message.len()
        );
        assert!(
            !letter.headers.contains_key("x-death"),
            "dead-lettered by the worker, not by RabbitMQ"
        );
    }
    assert!(codes.contains("malformed_json"), "{codes:?}");
    let carried = letters
        .iter()
        .find(|l| l.headers.contains_key("x-dropped-headers"))
        .expect("the large header was dropped, and said so");
    assert_eq!(carried.headers["x-dropped-headers"], "x-producer-trace");
    assert!(!carried.headers.contains_key("x-producer-trace"));

    worker.terminate();
    worker.wait(Duration::from_secs(10)).await;
    let log = worker.log_text();
    assert!(
        !log.contains("Broker connection lost"),
        "the connection dropped:\n{}",
        &log[..log.len().min(4000)]
    );
    assert!(
        log.lines().all(|line| line.len() < 8 * 1024),
        "a log line over 8 KiB"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_message_too_large_for_its_kind_and_an_oversized_batch_child_are_refused() {
    let sandbox = SandboxConfig {
        users: 4,
        flows: 1,
        ..SandboxConfig::default()
    };
    let mut app = spawn_app_without_worker(sandbox, &[("MAX_MESSAGE_BYTES", "4096")]).await;
    let mut big = job(
        "flow.deploy",
        json!({"flow_id": flow_id(0), "flow": {"name": "x", "type": "inboundcall", "start": "start", "nodes": {}}}),
    );
    big["payload"]["version_matrix"] = json!({"padding": "p".repeat(8_000)});
    app.publish(&big).await;
    // A batch may be larger; one of its children may not.
    let mut oversized_child = agent_job(user_id(1), json!({"presence": "Break"}));
    oversized_child["payload"]["message"] = json!("m".repeat(900));
    oversized_child["actor"] = json!("a".repeat(1000));
    oversized_child["correlation_id"] = json!("c".repeat(1000));
    oversized_child["idempotency_key"] = json!("k".repeat(500));
    oversized_child["submitted_at"] = json!("2026-11-22T07:59:58Z");
    let mut padded = oversized_child.clone();
    padded["payload"]["padding"] = json!("q".repeat(3_000));
    let children = vec![
        agent_job(user_id(0), json!({"presence": "Available"})),
        padded.clone(),
    ];
    let mut batch = job("batch", json!({"jobs": children}));
    batch["idempotency_key"] = json!(format!("handover-{}", Uuid::new_v4()));
    app.publish(&batch).await;
    let mut worker = app.start_worker_process();

    let letter = app.dead_letters(1).await.remove(0);
    assert_eq!(letter.headers["x-error-code"], "payload_too_large");
    let events = app.audit_events(2).await;
    let summary = events
        .iter()
        .find(|e| e.event.kind == "batch")
        .expect("the batch's summary");
    let summary_value = serde_json::to_value(&summary.event).unwrap();
    assert_eq!(
        summary_value["summary"]["counts"],
        json!({"applied": 1, "rejected": 1}),
        "{}",
        summary.raw
    );
    assert_eq!(
        summary_value["summary"]["first_errors"][0]["code"], "payload_too_large",
        "{}",
        summary.raw
    );
    // The oversized child never reached the batch lane: no dead letter of its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(app.dead_letters_now().await.is_empty());
    worker.terminate();
    worker.wait(Duration::from_secs(10)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_batch_whose_only_child_is_too_large_still_ends_in_its_summary() {
    let sandbox = SandboxConfig {
        users: 2,
        ..SandboxConfig::default()
    };
    let mut app = spawn_app_without_worker(sandbox, &[("MAX_MESSAGE_BYTES", "2048")]).await;
    let mut child = agent_job(user_id(1), json!({"presence": "Break"}));
    child["payload"]["padding"] = json!("q".repeat(4_000));
    let mut batch = job("batch", json!({"jobs": [child]}));
    batch["idempotency_key"] = json!(format!("handover-{}", Uuid::new_v4()));
    app.publish(&batch).await;
    let mut worker = app.start_worker_process();
    let summary = app.audit_events(1).await.remove(0);
    assert_eq!(summary.event.kind, "batch");
    let summary = serde_json::to_value(&summary.event).unwrap()["summary"].clone();
    assert_eq!(summary["counts"], json!({"rejected": 1}), "{summary}");
    worker.terminate();
    worker.wait(Duration::from_secs(10)).await;
    app.stop().await;
}
