//! The audit log's auditor commands on tampered streams (no RabbitMQ or Redis needed): a log
//! built with the library, checkpoints signed with a test key, then `audit verify --key`,
//! `audit prove` and `audit check-proof` of the real binary on altered copies.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use genesys_worker::audit::checkpoint::{Checkpoint, CheckpointBody};
use genesys_worker::audit::log::leaf_of;
use genesys_worker::audit::merkle;
use genesys_worker::audit::note::SigningKey;
use genesys_worker::events::{AuditEvent, Outcome};
use genesys_worker::record::checksum_of_value;
use serde_json::{json, Value};
use time::macros::datetime;
use uuid::Uuid;

use crate::helpers::worker_bin;

const ORIGIN: &str = "test.example/audit";
const SIZE: u64 = 12;

fn key() -> SigningKey {
    SigningKey::from_seed(ORIGIN, &[7; 32]).unwrap()
}

/// A scratch directory of its own per test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("audit-log-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sets `log_index` and recomputes the event's chain checksum over it (as the worker links an
/// event after its index is assigned).
fn seal(event: &mut Value, index: u64) {
    event["log_index"] = json!(index);
    event["checksum"] = json!(checksum_of_value(event));
}

/// `SIZE` applied events on three entities, chained, with log indexes 0..SIZE.
fn events() -> Vec<Value> {
    let mut heads: HashMap<String, (u64, String)> = HashMap::new();
    (0..SIZE)
        .map(|i| {
            let entity = format!("workitem:{}", i % 3);
            let event = AuditEvent {
                event_id: Uuid::from_u128(u128::from(i) + 1),
                new_state: Some(json!({"status": format!("S{i}")})),
                attempts: 1,
                occurred_at: datetime!(2026-12-02 08:00:00 UTC),
                ..AuditEvent::new(
                    Uuid::from_u128(1000 + u128::from(i)),
                    "interaction.status",
                    &format!("k{i}"),
                    entity.clone(),
                    Outcome::Applied,
                )
            };
            let mut value = serde_json::to_value(event).unwrap();
            let head = heads
                .entry(entity)
                .or_insert((0, genesys_worker::events::GENESIS_CHECKSUM.to_string()));
            value["prev_checksum"] = json!(head.1);
            value["entity_version"] = json!(head.0 + 1);
            seal(&mut value, i);
            *head = (head.0 + 1, value["checksum"].as_str().unwrap().to_string());
            value
        })
        .collect()
}

fn checkpoint(events: &[Value], size: u64, key: &SigningKey) -> Value {
    let leaves: Vec<_> = events[..size as usize].iter().map(leaf_of).collect();
    let body = CheckpointBody::new(
        ORIGIN,
        size,
        merkle::root(&leaves),
        datetime!(2026-12-02 08:00:00 UTC),
    );
    serde_json::to_value(Checkpoint::sign(&body, key).unwrap()).unwrap()
}

/// The stream: events, with a checkpoint after every fourth.
fn stream(events: &[Value]) -> Vec<Value> {
    let key = key();
    let mut lines = Vec::new();
    for (i, event) in events.iter().enumerate() {
        lines.push(event.clone());
        if (i + 1) % 4 == 0 {
            lines.push(checkpoint(events, i as u64 + 1, &key));
        }
    }
    lines
}

fn write(dir: &std::path::Path, name: &str, lines: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let text: Vec<String> = lines.iter().map(|l| serde_json::to_string(l).unwrap()).collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

fn verifier(dir: &std::path::Path) -> String {
    let path = dir.join("verifier.pub");
    std::fs::write(&path, format!("{}\n", key().verifier())).unwrap();
    path.to_string_lossy().into_owned()
}

/// Runs the binary: (exit code, stdout + stderr).
fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(worker_bin()).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

fn verify(test: &str, lines: &[Value]) -> (i32, String) {
    let dir = scratch(test);
    let file = write(&dir, "stream.ndjson", lines);
    run(&[
        "audit",
        "verify",
        "--key",
        &verifier(&dir),
        file.to_str().unwrap(),
    ])
}

fn index_of(line: &Value) -> Option<u64> {
    line.get("log_index").and_then(Value::as_u64)
}

#[test]
fn an_intact_log_verifies() {
    let (code, out) = verify("intact", &stream(&events()));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: log of 12 leaves, 3 signed checkpoints, verified up to tree size 12"),
        "{out}"
    );
}

#[test]
fn a_truncated_tail_is_missing_leaves() {
    let mut lines = stream(&events());
    lines.retain(|line| index_of(line).is_none_or(|i| i < 10));
    let (code, out) = verify("truncated", &lines);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("2 leaves missing below checkpoint size 12") && out.contains(": 10..11"),
        "{out}"
    );
}

#[test]
fn a_dropped_entity_is_missing_leaves() {
    let mut lines = stream(&events());
    lines.retain(|line| line["entity"] != "workitem:1");
    let (code, out) = verify("dropped-entity", &lines);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("4 leaves missing below checkpoint size 12") && out.contains("1, 4, 7, 10"),
        "{out}"
    );
}

#[test]
fn an_altered_event_fails_the_root_and_is_narrowed_down() {
    let mut events = events();
    // Rewritten with a valid checksum of its own: only the signed roots can tell.
    events[5]["new_state"] = json!({"status": "forged"});
    seal(&mut events[5], 5);
    let mut lines = stream(&self::events());
    let at = lines.iter().position(|l| index_of(l) == Some(5)).unwrap();
    lines[at] = events[5].clone();
    let (code, out) = verify("altered", &lines);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("checkpoint size 8 (line 10): the leaves in the file do not reproduce its root: a leaf among 4..8 was altered")
            && out.contains("(the checkpoints up to size 4 verify)"),
        "{out}"
    );
}

#[test]
fn swapped_events_keeping_their_places_alter_the_root() {
    let mut lines = stream(&events());
    let a = lines.iter().position(|l| index_of(l) == Some(5)).unwrap();
    let b = lines.iter().position(|l| index_of(l) == Some(6)).unwrap();
    // Each takes the other's place in the log: its index is rewritten, its checksum redone.
    let (mut first, mut second) = (lines[b].clone(), lines[a].clone());
    seal(&mut first, 5);
    seal(&mut second, 6);
    lines[a] = first;
    lines[b] = second;
    let (code, out) = verify("swapped-kept", &lines);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("checkpoint size 8 (line 10): the leaves in the file do not reproduce its root"),
        "{out}"
    );
}

#[test]
fn lines_out_of_index_order_still_verify_since_events_are_published_concurrently() {
    let mut lines = stream(&events());
    let a = lines.iter().position(|l| index_of(l) == Some(5)).unwrap();
    let b = lines.iter().position(|l| index_of(l) == Some(6)).unwrap();
    lines.swap(a, b);
    let (code, out) = verify("swapped-lines", &lines);
    assert_eq!(code, 0, "the leaves are taken by log_index, not by line: {out}");
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused() {
    let events = events();
    let mut lines = stream(&events);
    let other = SigningKey::from_seed(ORIGIN, &[8; 32]).unwrap();
    let at = lines.iter().position(|l| l["tree_size"] == json!(8)).unwrap();
    lines[at] = checkpoint(&events, 8, &other);
    let (code, out) = verify("other-key", &lines);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "checkpoint at line 10: no signature by {ORIGIN}+{:08x} (signed by: {ORIGIN}+{:08x})",
            key().id(),
            other.id()
        )),
        "{out}"
    );
}

#[test]
fn two_roots_for_one_size_are_a_fork() {
    let events = events();
    let mut lines = stream(&events);
    let mut forked = events.clone();
    forked[2]["new_state"] = json!({"status": "other history"});
    seal(&mut forked[2], 2);
    lines.push(checkpoint(&forked, 8, &key()));
    let (code, out) = verify("fork", &lines);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("fork: checkpoints at lines 10 and 16 both sign tree size 8 with different roots"),
        "{out}"
    );
}

#[test]
fn a_larger_checkpoint_dated_before_a_smaller_one_is_refused() {
    let events = events();
    let mut lines = stream(&events);
    // Signed by the right key over the right root: only its time is out of order.
    let at = lines.iter().position(|l| l["tree_size"] == json!(12)).unwrap();
    let leaves: Vec<_> = events.iter().map(leaf_of).collect();
    let body = CheckpointBody::new(
        ORIGIN,
        SIZE,
        merkle::root(&leaves),
        datetime!(2026-12-02 07:59:59 UTC),
    );
    lines[at] = serde_json::to_value(Checkpoint::sign(&body, &key()).unwrap()).unwrap();
    let (code, out) = verify("backdated", &lines);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "checkpoint size 12 (line 15) is dated 2026-12-02T07:59:59.000Z, before checkpoint size 8 \
             (line 10), dated 2026-12-02T08:00:00.000Z: checkpoint times went backwards"
        ),
        "{out}"
    );
}

#[test]
fn leaves_beyond_the_latest_checkpoint_are_a_note() {
    let mut lines = stream(&events());
    lines.retain(|line| line["tree_size"] != json!(12));
    let (code, out) = verify("extra", &lines);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("note: 4 leaves beyond the latest checkpoint (not yet signed): 8..11"),
        "{out}"
    );
}

/// `audit prove` of event `index` in the intact stream, as JSON.
fn proof(dir: &std::path::Path, index: u64) -> Value {
    let file = write(dir, "stream.ndjson", &stream(&events()));
    let id = Uuid::from_u128(u128::from(index) + 1).to_string();
    let (code, out) = run(&["audit", "prove", &id, file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

fn check_proof(dir: &std::path::Path, proof: &Value) -> (i32, String) {
    let file = dir.join("proof.json");
    std::fs::write(&file, serde_json::to_string(proof).unwrap()).unwrap();
    run(&[
        "audit",
        "check-proof",
        file.to_str().unwrap(),
        "--key",
        &verifier(dir),
    ])
}

#[test]
fn inclusion_and_consistency_proofs_check_with_the_key_alone() {
    let dir = scratch("proofs");
    let proof = proof(&dir, 5);
    assert_eq!(
        (proof["log_index"].as_u64(), proof["tree_size"].as_u64()),
        (Some(5), Some(12))
    );
    let (code, out) = check_proof(&dir, &proof);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("is leaf 5 of the signed tree of size 12"), "{out}");

    let file = dir.join("stream.ndjson");
    let (code, out) = run(&[
        "audit",
        "prove",
        "--consistency",
        "4",
        "12",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let consistency: Value = serde_json::from_str(&out).unwrap();
    let (code, out) = check_proof(&dir, &consistency);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("the tree of size 12 extends the tree of size 4"),
        "{out}"
    );
    let mut flipped = consistency.clone();
    let hash = flipped["consistency"][0].as_str().unwrap().to_string();
    flipped["consistency"][0] = json!(flip(&hash));
    let (code, out) = check_proof(&dir, &flipped);
    assert_eq!(code, 1, "{out}");
    // The old tree (size 4) is perfect: the flipped hash leads the new root astray.
    assert!(out.contains("refused: the proof leads to root"), "{out}");
}

fn flip(hash: &str) -> String {
    let mut bytes = merkle::decode(hash).unwrap();
    bytes[0] ^= 1;
    merkle::encode(&bytes)
}

#[test]
fn a_proof_for_the_wrong_index_is_refused() {
    let dir = scratch("wrong-index");
    let proof = proof(&dir, 5);
    // The proof claims another index than its event's.
    let mut claimed = proof.clone();
    claimed["log_index"] = json!(4);
    let (code, out) = check_proof(&dir, &claimed);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refused: the proof says log_index 4, its event says 5"),
        "{out}"
    );
    // The event and the proof both moved to another index: the path leads elsewhere.
    let mut moved = proof.clone();
    moved["log_index"] = json!(4);
    moved["event"]["log_index"] = json!(4);
    let (code, out) = check_proof(&dir, &moved);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused: the proof leads to root"), "{out}");
}

#[test]
fn a_proof_with_a_flipped_hash_is_refused() {
    let dir = scratch("flipped");
    let mut proof = proof(&dir, 5);
    let hash = proof["inclusion"][1].as_str().unwrap().to_string();
    proof["inclusion"][1] = json!(flip(&hash));
    let (code, out) = check_proof(&dir, &proof);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refused: the proof leads to root") && out.contains("not to the expected root"),
        "{out}"
    );
}

#[test]
fn a_proof_whose_json_says_another_root_than_its_note_is_refused() {
    let dir = scratch("other-root");
    let mut proof = proof(&dir, 5);
    let root = proof["root_hash"].as_str().unwrap().to_string();
    proof["root_hash"] = json!(flip(&root));
    let (code, out) = check_proof(&dir, &proof);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused: the proof says root_hash"), "{out}");
    assert!(out.contains(&format!("its signed note says {root}")), "{out}");
}

#[test]
fn keygen_writes_a_private_key_once_and_prints_the_verifier() {
    let dir = scratch("keygen");
    let out_file = dir.join("audit.key");
    let path = out_file.to_str().unwrap();
    let (code, out) = run(&["audit", "keygen", ORIGIN, "--out", path]);
    assert_eq!(code, 0, "{out}");
    let private = std::fs::read_to_string(&out_file).unwrap();
    let key = SigningKey::parse(&private).unwrap();
    assert_eq!(out.trim(), key.verifier().to_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (code, out) = run(&["audit", "keygen", ORIGIN, "--out", path]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        private,
        "not overwritten"
    );
}
