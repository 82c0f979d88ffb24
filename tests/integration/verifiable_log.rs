//! The worker's side of the verifiable audit log: every audit event it publishes (a job's, a
//! rejected message's, a duplicate's announcement, a batch summary, a control change) takes the
//! next `log_index`, without gaps; the sealer publishes signed checkpoints; and the auditor's
//! `audit verify --key` and `audit check-proof` accept what arrived on the audit exchange.

use std::time::Duration;

use futures_util::StreamExt;
use genesys_sandbox::{user_id, SandboxConfig};
use genesys_worker::audit::checkpoint::Checkpoint;
use genesys_worker::audit::note::SigningKey;
use lapin::options::BasicAckOptions;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_job, capture, connect_broker, job, spawn_app_with, worker_bin, TestApp};

/// Everything published on the audit exchange until a checkpoint covers `events` leaves:
/// (events, checkpoints) as raw lines.
async fn capture_until_sealed(
    consumer: &mut lapin::Consumer,
    events: usize,
) -> (Vec<String>, Vec<Checkpoint>) {
    let mut lines = Vec::new();
    let mut checkpoints = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no checkpoint of {events} leaves: {} events, checkpoints {checkpoints:?}",
                    lines.len()
                )
            })
            .unwrap()
            .unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let raw = String::from_utf8(delivery.data.clone()).unwrap();
        if delivery.routing_key.as_str() == "audit.checkpoint" {
            let checkpoint: Checkpoint = serde_json::from_str(&raw).unwrap();
            let done = checkpoint.tree_size as usize >= events && lines.len() >= events;
            checkpoints.push(checkpoint);
            lines.push(raw);
            if done {
                return (lines, checkpoints);
            }
        } else {
            lines.push(raw);
        }
    }
}

async fn cli(app: &TestApp, args: &[&str]) -> (i32, String) {
    let (code, stdout, stderr) = app.cli(args).await;
    (code, format!("{stdout}{stderr}"))
}

#[tokio::test]
async fn every_audit_event_is_a_leaf_and_the_signed_checkpoints_verify_with_the_public_key() {
    let dir = std::env::temp_dir().join(format!("verifiable-log-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, private, verifier) = SigningKey::generate("audit.example/genesys-worker").unwrap();
    let key_file = dir.join("audit.key");
    std::fs::write(&key_file, &private).unwrap();
    let key_path = key_file.to_str().unwrap().to_string();
    let connection = connect_broker().await;
    let channel = connection.create_channel().await.unwrap();
    let app = spawn_app_with(
        SandboxConfig {
            users: 20,
            ..SandboxConfig::default()
        },
        &[
            ("AUDIT_SIGNING_KEY_FILE", key_path.as_str()),
            ("AUDIT_CHECKPOINT_SECS", "1"),
        ],
    )
    .await;
    let mut audit = capture(&channel, &app.config.topology.audit_exchange).await;

    // Jobs (one twice: a duplicate's announcement), an invalid message, a batch, a control.
    let mut jobs: Vec<Value> = (0..8)
        .map(|n| {
            agent_job(
                user_id(n),
                json!({"presence": "Break", "respect_out_of_office": false}),
            )
        })
        .collect();
    jobs.push(jobs[0].clone());
    for job in &jobs {
        app.publish(job).await;
    }
    app.publish_raw("agent.status", b"{\"kind\": \"agent.status\"")
        .await;
    let children: Vec<Value> = (10..13)
        .map(|n| {
            agent_job(
                user_id(n),
                json!({"presence": "Meal", "respect_out_of_office": false}),
            )
        })
        .collect();
    app.publish(&job("batch", json!({"jobs": children}))).await;
    let (code, output) = cli(
        &app,
        &[
            "control",
            "pause",
            "kind",
            "flow.deploy",
            "--actor",
            "auditor-test",
        ],
    )
    .await;
    assert_eq!(code, 0, "{output}");
    // 8 applied + 1 duplicate + 3 children + the batch summary + the pause (the invalid message
    // names no job: it is dead-lettered without an event).
    let expected = 8 + 1 + 3 + 1 + 1;
    let (lines, checkpoints) = capture_until_sealed(&mut audit, expected).await;

    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("note").is_none())
        .collect();
    assert_eq!(events.len(), expected, "{events:#?}");
    let mut indexes: Vec<u64> = events
        .iter()
        .map(|e| e["log_index"].as_u64().expect("every event has its index"))
        .collect();
    indexes.sort_unstable();
    assert_eq!(
        indexes,
        (0..expected as u64).collect::<Vec<_>>(),
        "indexes without gaps or doubles"
    );
    let last = checkpoints.last().unwrap();
    assert_eq!(last.tree_size, expected as u64);
    assert_eq!(last.origin, "audit.example/genesys-worker");

    let capture_file = dir.join("audit.ndjson");
    std::fs::write(&capture_file, lines.join("\n") + "\n").unwrap();
    let file = capture_file.to_str().unwrap();
    let (code, output) = cli(&app, &["audit", "verify", "--key", &verifier, file]).await;
    assert_eq!(code, 0, "audit verify --key: {output}");

    // One event's inclusion proof, checked with nothing but the proof and the public key.
    let event_id = events[3]["event_id"].as_str().unwrap();
    let output = std::process::Command::new(worker_bin())
        .args(["audit", "prove", event_id, file])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let proof_file = dir.join("proof.json");
    std::fs::write(&proof_file, &output.stdout).unwrap();
    let (code, output) = cli(
        &app,
        &[
            "audit",
            "check-proof",
            proof_file.to_str().unwrap(),
            "--key",
            &verifier,
        ],
    )
    .await;
    assert_eq!(code, 0, "check-proof: {output}");

    // A stream with one event dropped no longer verifies, and says which leaf is missing.
    let dropped: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains(&format!("\"log_index\":{}", 5)))
        .collect();
    let tampered = dir.join("dropped.ndjson");
    std::fs::write(
        &tampered,
        dropped.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let (code, output) = cli(
        &app,
        &["audit", "verify", "--key", &verifier, tampered.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains('5'), "names the missing leaf: {output}");
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}
