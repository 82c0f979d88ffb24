//! The worker's side of the verifiable audit log: every audit event it publishes (a job's, a
//! rejected message's, a duplicate's announcement, a batch summary, a control change) takes the
//! next `log_index`, without gaps; the sealer publishes signed checkpoints; and the auditor's
//! `audit verify --key` and `audit check-proof` accept what arrived on the audit exchange.

use std::time::Duration;

use futures_util::StreamExt;
use genesys_sandbox::SandboxConfig;
use genesys_worker::audit::checkpoint::{format_time, Checkpoint, CheckpointBody};
use genesys_worker::audit::merkle::{self, CompactRange};
use genesys_worker::audit::note::SigningKey;
use genesys_worker::store::Store;
use lapin::options::BasicAckOptions;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::helpers::audit::{
    self, batch_and_pause, capture_until, presence_job, signing_key, verify_capture, write_capture,
    AuditCapture,
};
use crate::helpers::{redis_url, spawn_app_with, spawn_app_without_worker, worker_bin};

/// What the sealer logs each time it publishes a checkpoint.
const PUBLISHED: &str = "Audit log checkpoint published.";

/// How long the sealing of a whole capture may take.
const SEALING: Duration = Duration::from_secs(60);

/// When a capture is sealed here: `events` events in all have arrived (one published twice
/// counts twice) and the latest checkpoint covers them. A checkpoint may come before the last
/// events it covers: their leaves are taken before they are published.
fn sealed(events: usize) -> impl Fn(&AuditCapture) -> bool {
    move |capture| {
        capture.events() >= events
            && capture
                .checkpoints
                .last()
                .is_some_and(|c| c.tree_size as usize >= events)
    }
}

fn scratch(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("verifiable-log-{test}-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

fn time_of(checkpoint: &Checkpoint) -> OffsetDateTime {
    OffsetDateTime::parse(checkpoint.time.as_deref().unwrap(), &Rfc3339).unwrap()
}

/// The events of `lines` (checkpoints left out), with their log indexes sorted.
fn events_and_indexes(lines: &[String]) -> (Vec<Value>, Vec<u64>) {
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("note").is_none())
        .collect();
    let mut indexes: Vec<u64> = events
        .iter()
        .map(|e| e["log_index"].as_u64().expect("every event has its index"))
        .collect();
    indexes.sort_unstable();
    (events, indexes)
}

#[tokio::test]
async fn every_audit_event_is_a_leaf_and_the_signed_checkpoints_verify_with_the_public_key() {
    let dir = scratch("signed");
    let (key_path, verifier) = signing_key(&dir);
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
    let mut audit = app.capture_audit_log().await;

    // Jobs (one twice: a duplicate's announcement), an invalid message, a batch, a control.
    let mut jobs: Vec<Value> = (0..8).map(|n| presence_job(n, "Break")).collect();
    jobs.push(jobs[0].clone());
    for job in &jobs {
        app.publish(job).await;
    }
    app.publish_raw("agent.status", b"{\"kind\": \"agent.status\"")
        .await;
    let (code, output) = batch_and_pause(&app, "auditor-test").await;
    assert_eq!(code, 0, "{output}");
    // 8 applied + 1 duplicate + 3 children + the batch summary + the pause (the invalid message
    // names no job: it is dead-lettered without an event).
    let expected = 8 + 1 + 3 + 1 + 1;
    let AuditCapture {
        lines, checkpoints, ..
    } = capture_until(&mut audit, SEALING, sealed(expected)).await;

    let (events, indexes) = events_and_indexes(&lines);
    assert_eq!(events.len(), expected, "{events:#?}");
    assert_eq!(
        indexes,
        (0..expected as u64).collect::<Vec<_>>(),
        "indexes without gaps or doubles"
    );
    let last = checkpoints.last().unwrap();
    assert_eq!(last.tree_size, expected as u64);
    assert_eq!(last.origin, audit::ORIGIN);

    // Kept in a file: `audit prove` reads it too.
    let capture_file = dir.join("audit.ndjson");
    write_capture(&capture_file, &lines);
    let file = capture_file.to_str().unwrap();
    let (code, output) = app
        .cli_output(&["audit", "verify", "--key", &verifier, file])
        .await;
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
    let (code, output) = app
        .cli_output(&[
            "audit",
            "check-proof",
            proof_file.to_str().unwrap(),
            "--key",
            &verifier,
        ])
        .await;
    assert_eq!(code, 0, "check-proof: {output}");

    // A stream with one event dropped no longer verifies, and says which leaf is missing.
    let dropped: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains(&format!("\"log_index\":{}", 5)))
        .collect();
    let (code, output) = verify_capture(&app, &dropped, &verifier).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains('5'), "names the missing leaf: {output}");
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

#[tokio::test]
async fn another_replica_takes_over_the_sealing_and_checkpoints_never_go_back() {
    const WAVE: usize = 10;
    let dir = scratch("handover");
    let (key_path, verifier) = signing_key(&dir);
    let app = spawn_app_without_worker(
        SandboxConfig {
            users: 2 * WAVE,
            ..SandboxConfig::default()
        },
        &[
            ("AUDIT_SIGNING_KEY_FILE", key_path.as_str()),
            ("AUDIT_CHECKPOINT_SECS", "1"),
        ],
    )
    .await;
    let mut audit = app.capture_audit_log().await;
    let mut replicas = [app.start_worker_process(), app.start_worker_process()];

    for user in 0..WAVE {
        app.publish(&presence_job(user, "Break")).await;
    }
    let mut capture = AuditCapture::default();
    let limit = Duration::from_secs(20);
    capture.read_until(&mut audit, limit, sealed(WAVE)).await;
    // The sealer logs a checkpoint once its publication is confirmed, which may be after the
    // checkpoint arrived here.
    let mut sealers = Vec::new();
    for _ in 0..50 {
        sealers = (0..2)
            .filter(|&i| replicas[i].log_text().contains(PUBLISHED))
            .collect();
        if !sealers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sealers.len(), 1, "one replica seals at a time: {sealers:?}");
    let (sealer, survivor) = (sealers[0], 1 - sealers[0]);

    // A crash: the lease is not given back, the survivor takes it once it expires (5 s).
    replicas[sealer].child.kill().unwrap();
    replicas[sealer]
        .wait(Duration::from_secs(5))
        .await
        .expect("killed");
    // As if the crashed sealer's clock ran an hour ahead: the time of the latest checkpoint,
    // which the next sealer reads when it takes the lease, is an hour from now.
    let ahead = format_time(OffsetDateTime::now_utc() + time::Duration::hours(1));
    let mut conn = redis().await;
    let key = format!("{}log:checkpoint", app.config.redis_key_prefix);
    let stored: String = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
    let stored: Checkpoint = serde_json::from_str(&stored).unwrap();
    // Signed by the same key, as that sealer would have (the survivor publishes the stored
    // checkpoint again when it takes over: it may never have gone out).
    let signer = SigningKey::parse(std::fs::read_to_string(&key_path).unwrap().trim()).unwrap();
    let fast = CheckpointBody::new(
        stored.origin.clone(),
        stored.tree_size,
        merkle::decode(&stored.root_hash).unwrap(),
        OffsetDateTime::parse(&ahead, &Rfc3339).unwrap(),
    );
    let fast = serde_json::to_string(&Checkpoint::sign(&fast, &signer).unwrap()).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&fast)
        .query_async(&mut conn)
        .await
        .unwrap();
    let before_crash = capture.checkpoints.len();

    for user in WAVE..2 * WAVE {
        app.publish(&presence_job(user, "Break")).await;
    }
    let crashed = std::time::Instant::now();
    capture.read_until(&mut audit, limit, sealed(2 * WAVE)).await;
    let AuditCapture {
        lines, checkpoints, ..
    } = capture;
    // Only the survivor is left to publish them.
    eprintln!("checkpoints resumed {:?} after the crash", crashed.elapsed());
    assert!(checkpoints.len() > before_crash);
    // Stored by the dead sealer and never published (it went into Redis only): the survivor
    // publishes it, byte for byte, when it takes the lease.
    assert!(
        lines.contains(&fast),
        "the stored checkpoint published again by the new sealer"
    );

    let dated: Vec<(u64, OffsetDateTime)> = checkpoints.iter().map(|c| (c.tree_size, time_of(c))).collect();
    assert!(
        dated.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1),
        "sizes and times never go back in publication order: {dated:?}"
    );
    let ahead = OffsetDateTime::parse(&ahead, &Rfc3339).unwrap();
    assert!(
        dated[before_crash..].iter().all(|(_, time)| *time >= ahead),
        "the new sealer dates its checkpoints no earlier than the last one ({ahead}): {dated:?}"
    );
    let (_, indexes) = events_and_indexes(&lines);
    assert_eq!(indexes, (0..2 * WAVE as u64).collect::<Vec<_>>());
    assert_eq!(checkpoints.last().unwrap().tree_size, 2 * WAVE as u64);

    let (code, output) = verify_capture(&app, &lines, &verifier).await;
    assert_eq!(code, 0, "audit verify --key: {output}");

    replicas[survivor].terminate();
    assert!(replicas[survivor].wait(Duration::from_secs(10)).await.is_some());
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

#[tokio::test]
async fn the_sealed_log_keeps_only_a_compact_range_in_redis() {
    const EVENTS: usize = 300;
    let app = spawn_app_with(
        SandboxConfig {
            users: EVENTS,
            ..SandboxConfig::default()
        },
        &[
            ("AUDIT_CHECKPOINT_SECS", "1"),
            ("WORKER_CONCURRENCY", "32"),
            ("WORKER_PREFETCH", "64"),
        ],
    )
    .await;
    let mut audit = app.capture_audit_log().await;
    for user in 0..EVENTS {
        app.publish(&presence_job(user, "Break")).await;
    }
    let AuditCapture {
        lines, checkpoints, ..
    } = capture_until(&mut audit, SEALING, sealed(EVENTS)).await;
    let (_, indexes) = events_and_indexes(&lines);
    assert_eq!(indexes.len(), EVENTS);
    assert_eq!(checkpoints.last().unwrap().tree_size, EVENTS as u64);

    let log = |part: &str| format!("{}log:{part}", app.config.redis_key_prefix);
    let mut conn = redis().await;
    let (size, leaves, tree): (u64, u64, String) = redis::pipe()
        .cmd("GET")
        .arg(log("size"))
        .cmd("HLEN")
        .arg(log("leaves"))
        .cmd("GET")
        .arg(log("tree"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(size, EVENTS as u64, "log:size counts every event");
    assert_eq!(leaves, 0, "every sealed leaf is dropped from log:leaves");
    // `<size> <hash> <hash> …`: one hash per set bit of the size, not one per event.
    let hashes = tree.split(' ').count() - 1;
    assert!(
        hashes <= EVENTS.count_ones() as usize,
        "{hashes} hashes in log:tree: {tree}"
    );
    assert_eq!(CompactRange::parse(&tree).unwrap().size, EVENTS as u64);
    app.stop().await;
}

#[tokio::test]
async fn the_stored_checkpoint_moves_only_forward_and_only_for_the_sealer() {
    let app = spawn_app_without_worker(SandboxConfig::default(), &[]).await;
    let store = Store::connect(
        &app.config.redis,
        &app.config.redis_key_prefix,
        app.config.idempotency_ttl_secs,
        app.config.lease_ms,
    )
    .await
    .unwrap();
    assert!(store.log_lease("a", Duration::from_secs(5)).await.unwrap());
    let time = |second: u32| format!("2026-12-02T08:00:{second:02}.000Z");
    let message = |size: u64, second: u32| json!({"tree_size": size, "time": time(second)}).to_string();
    let set = |owner: &'static str, size: u64, second: u32| {
        let store = store.clone();
        async move {
            store
                .log_set_checkpoint(owner, size, &time(second), &message(size, second))
                .await
                .unwrap()
        }
    };
    assert!(!set("b", 4, 1).await, "not the sealer");
    assert!(set("a", 4, 1).await);
    assert!(set("a", 4, 1).await, "the same again (a retry)");
    assert!(!set("a", 3, 2).await, "a smaller tree");
    assert!(!set("a", 8, 0).await, "an earlier time");
    assert!(set("a", 8, 2).await);
    assert_eq!(store.log_checkpoint().await.unwrap(), Some(message(8, 2)));
    app.stop().await;
}

/// A worker that crashed after its commit, before its events were confirmed, leaves the record
/// `done` and unconfirmed; the next delivery re-publishes the stored event with the index the
/// commit took (kept beside the stored events), byte for byte, and takes no other.
#[tokio::test]
async fn a_stored_event_republished_after_a_crash_keeps_its_log_index() {
    let app = spawn_app_with(SandboxConfig::default(), &[]).await;
    let mut audit = app.capture_audit_log().await;
    let mut job = presence_job(3, "Break");
    let key = format!("republish-{}", Uuid::new_v4());
    job["idempotency_key"] = json!(key);
    app.publish(&job).await;
    let first = next_event_body(&mut audit).await;
    let index = serde_json::from_str::<Value>(&first).unwrap()["log_index"]
        .as_u64()
        .expect("an index");

    // The crash: the record as the commit left it, before the worker noted the confirm.
    let record = format!("{}idem:{key}", app.config.redis_key_prefix);
    let size = format!("{}log:size", app.config.redis_key_prefix);
    let mut conn = redis().await;
    // Or the worker's own note of the confirm, just after, would undo the reset below.
    crate::helpers::wait_confirmed(&record).await;
    let (stored_index, size_before): (u64, u64) = redis::pipe()
        .cmd("HSET")
        .arg(&record)
        .arg("confirmed")
        .arg("0")
        .ignore()
        .cmd("HGET")
        .arg(&record)
        .arg("log_index")
        .cmd("GET")
        .arg(&size)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored_index, index,
        "the record keeps the index beside its events"
    );

    app.publish(&job).await;
    let republished = next_event_body(&mut audit).await;
    assert_eq!(republished, first, "the same bytes, index included");
    let size_after: u64 = redis::cmd("GET").arg(&size).query_async(&mut conn).await.unwrap();
    assert_eq!(size_after, size_before, "no second index");
    app.stop().await;
}

/// The next audit event's body (checkpoints skipped).
async fn next_event_body(audit: &mut lapin::Consumer) -> String {
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(20), audit.next())
            .await
            .expect("an audit event within 20 s")
            .unwrap()
            .unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        if delivery.routing_key.as_str() != testkit::CHECKPOINT_ROUTING_KEY {
            return String::from_utf8(delivery.data).unwrap();
        }
    }
}
