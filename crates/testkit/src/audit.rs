//! What the tests of the verifiable audit log share: a signing key, the audit exchange read raw
//! (checkpoints included) until the log is sealed, `audit verify --key` over what was read, and
//! the job mix they publish.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use genesys_sandbox::user_id;
use genesys_worker::audit::checkpoint::Checkpoint;
use genesys_worker::audit::note::SigningKey;
use lapin::options::BasicAckOptions;
use lapin::Consumer;
use serde_json::{json, Value};

use crate::{agent_job, capture, job, random_name, TestApp, CHECKPOINT_ROUTING_KEY};

/// The name of the key [`signing_key`] makes: the origin of the checkpoints it signs.
pub const ORIGIN: &str = "audit.example/genesys-worker";

/// A signing key written to `dir`: (the private key file's path, for `AUDIT_SIGNING_KEY_FILE`;
/// the verifier key, for `audit verify --key`).
pub fn signing_key(dir: &Path) -> (String, String) {
    let (_, private, verifier) = SigningKey::generate(ORIGIN).unwrap();
    let key_file = dir.join("audit.key");
    std::fs::write(&key_file, &private).unwrap();
    (key_file.to_str().unwrap().to_string(), verifier)
}

impl TestApp {
    /// A queue of the test's own on the audit exchange, to read with [`capture_until`]: unlike
    /// [`TestApp::audit_events`], it keeps the checkpoints, which `audit verify` needs.
    pub async fn capture_audit_log(&self) -> Consumer {
        capture(&self.channel, &self.config.topology.audit_exchange).await
    }
}

/// What the audit exchange published, as it arrived.
#[derive(Debug, Default)]
pub struct AuditCapture {
    /// Every message, events and checkpoints, raw and in order: what `audit verify` reads.
    pub lines: Vec<String>,
    pub checkpoints: Vec<Checkpoint>,
    /// The distinct `log_index`es of the events (an event published twice has one).
    pub indexes: BTreeSet<u64>,
}

impl AuditCapture {
    /// How many events arrived, an event published twice counted twice.
    pub fn events(&self) -> usize {
        self.lines.len() - self.checkpoints.len()
    }

    /// Reads `consumer` into this capture until `done` holds, failing the test if it does not
    /// within `limit`, or if an event comes without its `log_index`. Tests differ in when the
    /// log is sealed (events counted or distinct indexes, the latest checkpoint or any), hence
    /// `done`.
    pub async fn read_until(
        &mut self,
        consumer: &mut Consumer,
        limit: Duration,
        done: impl Fn(&AuditCapture) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(self) {
            let delivery = tokio::time::timeout_at(deadline, consumer.next())
                .await
                .unwrap_or_else(|_| panic!("the audit log not sealed within {limit:?}: {self:#?}"))
                .unwrap()
                .unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            let raw = String::from_utf8(delivery.data).unwrap();
            if delivery.routing_key.as_str() == CHECKPOINT_ROUTING_KEY {
                self.checkpoints.push(serde_json::from_str(&raw).unwrap());
            } else {
                let event: Value = serde_json::from_str(&raw).unwrap();
                let index = event["log_index"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("an audit event without its log_index: {raw}"));
                self.indexes.insert(index);
            }
            self.lines.push(raw);
        }
    }
}

/// What `consumer` (see [`TestApp::capture_audit_log`]) reads until `done` holds: see
/// [`AuditCapture::read_until`].
pub async fn capture_until(
    consumer: &mut Consumer,
    limit: Duration,
    done: impl Fn(&AuditCapture) -> bool,
) -> AuditCapture {
    let mut capture = AuditCapture::default();
    capture.read_until(consumer, limit, done).await;
    capture
}

/// Writes `lines` to `file`, one a line, as `audit verify` and `audit prove` read a capture.
pub fn write_capture(file: &Path, lines: &[impl AsRef<str>]) {
    let lines: Vec<&str> = lines.iter().map(AsRef::as_ref).collect();
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
}

/// `audit verify --key VERIFIER` over `lines` (written to a temporary file): the exit code and
/// the output.
pub async fn verify_capture(app: &TestApp, lines: &[impl AsRef<str>], verifier: &str) -> (i32, String) {
    let file = std::env::temp_dir().join(format!("audit-capture-{}.ndjson", random_name()));
    write_capture(&file, lines);
    let outcome = app
        .cli_output(&["audit", "verify", "--key", verifier, file.to_str().unwrap()])
        .await;
    let _ = std::fs::remove_file(&file);
    outcome
}

/// An `agent.status` job setting seeded user `user`'s `presence`, Out of Office or not: it is
/// applied, one audit event.
pub fn presence_job(user: usize, presence: &str) -> Value {
    agent_job(
        user_id(user),
        json!({"presence": presence, "respect_out_of_office": false}),
    )
}

/// Publishes a batch of 3 agent jobs (users 10 to 12: the app needs 13 users) and pauses the
/// `flow.deploy` kind as `actor`: 5 audit events (the 3 children's, the batch's summary and the
/// pause's). Returns the pause's exit code and output.
pub async fn batch_and_pause(app: &TestApp, actor: &str) -> (i32, String) {
    let children: Vec<Value> = (10..13).map(|n| presence_job(n, "Meal")).collect();
    app.publish(&job("batch", json!({"jobs": children}))).await;
    app.cli_output(&["control", "pause", "kind", "flow.deploy", "--actor", actor])
        .await
}
