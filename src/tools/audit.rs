//! `genesys-worker audit …`: the auditor's commands.
//!
//! `verify` checks the hash chains of captured audit events ([`crate::audit::verify`]) and, with
//! `--key`, the Merkle log and its signed checkpoints ([`crate::audit::log`]); `keygen` makes a
//! checkpoint signing key; `prove` and `check-proof` make and check self-contained inclusion and
//! consistency proofs. Exit 0 ok, 1 with a reason line per problem, 2 unreadable input.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::audit::checkpoint::{self, Checkpoint, CheckpointBody};
use crate::audit::merkle::{self, Hash};
use crate::audit::note::{self, SigningKey, VerifierKey};
use crate::audit::{self, log, VerifyError};
use crate::cli::AuditCommand;

pub async fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Capture {
            out,
            until_sealed,
            idle_secs,
            timeout_secs,
            broker,
            audit_exchange,
        } => {
            let until = Until {
                sealed: until_sealed,
                idle: Duration::from_secs(idle_secs),
                timeout: Duration::from_secs(timeout_secs),
            };
            match capture(&broker, &audit_exchange, &out, until).await {
                Ok(lines) => {
                    eprintln!("captured {lines} message(s) to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("audit capture: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        AuditCommand::Verify {
            file,
            sort,
            key,
            origin,
            max_problems,
        } => verify(&file, sort, key.as_deref(), origin.as_deref(), max_problems),
        AuditCommand::Keygen { name, out } => keygen(&name, out.as_deref()),
        AuditCommand::Prove {
            args,
            against,
            consistency,
        } => prove(&args, against, consistency.as_deref()),
        AuditCommand::CheckProof { proof, key, origin } => check_proof(&proof, &key, origin.as_deref()),
    }
}

/// A failure of a command: exit 1 (refused) or 2 (unreadable), with its reason.
enum Failure {
    Refused(String),
    Unreadable(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        match self {
            Failure::Refused(reason) => {
                println!("refused: {reason}");
                ExitCode::FAILURE
            }
            Failure::Unreadable(reason) => {
                eprintln!("{reason}");
                ExitCode::from(2)
            }
        }
    }
}

fn read(file: &Path) -> Result<String, Failure> {
    super::read_input(file)
        .map_err(|err| Failure::Unreadable(format!("cannot read {}: {err}", file.display())))
}

/// The verifier key given as its text or as a file holding it.
fn verifier_key(arg: &str) -> Result<VerifierKey, Failure> {
    if let Ok(key) = VerifierKey::parse(arg) {
        return Ok(key);
    }
    let text = std::fs::read_to_string(arg).map_err(|err| {
        Failure::Unreadable(format!(
            "--key is neither a verifier key nor a readable file: {err}"
        ))
    })?;
    VerifierKey::parse(&text).map_err(|err| Failure::Unreadable(format!("--key: {err}")))
}

fn verify(file: &Path, sort: bool, key: Option<&str>, origin: Option<&str>, max_problems: usize) -> ExitCode {
    let input = match read(file) {
        Ok(input) => input,
        Err(failure) => return failure.exit(),
    };
    let key = match key.map(verifier_key).transpose() {
        Ok(key) => key,
        Err(failure) => return failure.exit(),
    };
    let mut failed = false;
    match audit::verify(&input, sort) {
        Ok(report) => println!(
            "ok: {} events, {} entities, {} links verified ({} repeated events skipped)",
            report.events, report.entities, report.links, report.duplicates
        ),
        Err(err @ VerifyError::Break { .. }) => {
            println!("{err}");
            failed = true;
        }
        Err(err @ VerifyError::Unreadable { .. }) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    }
    let Some(key) = key else {
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    };
    let stream = match log::read(&input) {
        Ok(stream) => stream,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let report = log::check(&stream, &key, origin);
    for problem in report.problems.iter().take(max_problems) {
        println!("log: {problem}");
    }
    if report.problems.len() > max_problems {
        println!(
            "log: … and {} more problems",
            report.problems.len() - max_problems
        );
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    if report.problems.is_empty() {
        println!(
            "ok: log of {} leaves, {} signed checkpoints, verified up to tree size {}",
            report.leaves, report.checkpoints, report.verified_size
        );
    } else {
        println!("log: {} problems", report.problems.len());
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn keygen(name: &str, out: Option<&Path>) -> ExitCode {
    let (_, private, verifier) = match SigningKey::generate(name) {
        Ok(generated) => generated,
        Err(err) => return Failure::Unreadable(err.to_string()).exit(),
    };
    let default = format!("{name}.key");
    let path = out.unwrap_or(Path::new(&default));
    let mut options = std::fs::OpenOptions::new();
    // Never overwrite a key: a lost signing key cannot sign again under the same verifier.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(path)
        .and_then(|mut file| writeln!(file, "{private}"));
    if let Err(err) = written {
        eprintln!("cannot write {}: {err}", path.display());
        return ExitCode::FAILURE;
    }
    println!("{verifier}");
    ExitCode::SUCCESS
}

/// A checkpoint of the stream with the body its note states (not verified: `prove` needs no
/// key; `check-proof` verifies).
fn stated(message: &Checkpoint) -> Option<CheckpointBody> {
    CheckpointBody::parse(note::body_unverified(&message.note)?).ok()
}

/// The leaf hashes 0..size of `stream`, and that they reproduce `body`'s root.
fn leaves_of(stream: &log::Stream, body: &CheckpointBody) -> Result<Vec<Hash>, Failure> {
    let leaves = (0..body.size)
        .map(|index| stream.leaves.get(&index).map(|leaf| leaf.hash))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Failure::Refused(format!("the file lacks leaves below tree size {}", body.size)))?;
    if merkle::root(&leaves) != body.root {
        return Err(Failure::Refused(format!(
            "the leaves in the file do not reproduce the root of checkpoint size {}",
            body.size
        )));
    }
    Ok(leaves)
}

fn checkpoint_of_size(
    stream: &log::Stream,
    size: Option<u64>,
) -> Result<(&Checkpoint, CheckpointBody), Failure> {
    stream
        .checkpoints
        .iter()
        .filter_map(|(_, message)| stated(message).map(|body| (message, body)))
        .filter(|(_, body)| size.is_none_or(|size| body.size == size))
        .max_by_key(|(_, body)| body.size)
        .ok_or_else(|| {
            Failure::Refused(match size {
                Some(size) => format!("no checkpoint of tree size {size} in the file"),
                None => "no checkpoint in the file".into(),
            })
        })
}

fn encode_all(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(merkle::encode).collect()
}

fn prove(args: &[String], against: Option<u64>, consistency: Option<&[u64]>) -> ExitCode {
    match make_proof(args, against, consistency) {
        Ok(proof) => {
            println!("{}", serde_json::to_string_pretty(&proof).expect("JSON"));
            ExitCode::SUCCESS
        }
        Err(failure) => failure.exit(),
    }
}

fn make_proof(args: &[String], against: Option<u64>, consistency: Option<&[u64]>) -> Result<Value, Failure> {
    let usage = || {
        Failure::Unreadable(
            "usage: audit prove EVENT_ID FILE | audit prove --consistency OLD_SIZE NEW_SIZE FILE".into(),
        )
    };
    let (event_id, file) = match (consistency, args) {
        (Some(_), [file]) => (None, file),
        (None, [event_id, file]) => (Some(event_id), file),
        _ => return Err(usage()),
    };
    let input = read(Path::new(file))?;
    let stream = log::read(&input).map_err(|e| Failure::Unreadable(e.to_string()))?;
    if let Some(&[old_size, new_size]) = consistency {
        let (old, old_body) = checkpoint_of_size(&stream, Some(old_size))?;
        let (new, new_body) = checkpoint_of_size(&stream, Some(new_size))?;
        let leaves = leaves_of(&stream, &new_body)?;
        if merkle::root(&leaves[..old_body.size.min(new_body.size) as usize]) != old_body.root {
            return Err(Failure::Refused(format!(
                "checkpoint size {old_size} is not a prefix of checkpoint size {new_size}"
            )));
        }
        let path = merkle::consistency_proof(&leaves, old_size, new_size)
            .map_err(|e| Failure::Refused(e.to_string()))?;
        return Ok(json!({
            "type": "consistency",
            "old": {"tree_size": old_size, "root_hash": old.root_hash, "note": old.note},
            "new": {"tree_size": new_size, "root_hash": new.root_hash, "note": new.note},
            "consistency": encode_all(&path),
        }));
    }
    let event_id = event_id.ok_or_else(usage)?;
    let leaf = stream
        .leaves
        .iter()
        .find(|(_, leaf)| leaf.event_id == *event_id)
        .map(|(index, leaf)| (*index, leaf.event.clone()))
        .ok_or_else(|| Failure::Refused(format!("no event {event_id} with a log_index in the file")))?;
    let (message, body) = checkpoint_of_size(&stream, against)?;
    if leaf.0 >= body.size {
        return Err(Failure::Refused(format!(
            "leaf {} is not below checkpoint size {}",
            leaf.0, body.size
        )));
    }
    let leaves = leaves_of(&stream, &body)?;
    let path = merkle::inclusion_proof(&leaves, leaf.0).map_err(|e| Failure::Refused(e.to_string()))?;
    Ok(json!({
        "type": "inclusion",
        "event": leaf.1,
        "log_index": leaf.0,
        "tree_size": body.size,
        "root_hash": message.root_hash,
        "inclusion": encode_all(&path),
        "note": message.note,
    }))
}

fn check_proof(file: &Path, key: &str, origin: Option<&str>) -> ExitCode {
    let result = (|| {
        let key = verifier_key(key)?;
        let text = read(file)?;
        let proof: Value = serde_json::from_str(&text)
            .map_err(|e| Failure::Unreadable(format!("{}: not JSON: {e}", file.display())))?;
        check(&proof, &key, origin)
    })();
    match result {
        Ok(summary) => {
            println!("valid: {summary}");
            ExitCode::SUCCESS
        }
        Err(failure) => failure.exit(),
    }
}

fn field<'a>(value: &'a Value, name: &str) -> Result<&'a Value, Failure> {
    value
        .get(name)
        .ok_or_else(|| Failure::Unreadable(format!("the proof has no {name}")))
}

fn path_of(value: &Value) -> Result<Vec<Hash>, Failure> {
    value
        .as_array()
        .ok_or_else(|| Failure::Unreadable("the path is not an array".into()))?
        .iter()
        .map(|hash| {
            hash.as_str()
                .and_then(merkle::decode)
                .ok_or_else(|| Failure::Unreadable("a path hash is not 32 bytes of base64".into()))
        })
        .collect()
}

/// The signed body of a proof part (`note`), refusing unsigned `tree_size`/`root_hash` beside
/// it that say otherwise.
fn signed_body(part: &Value, key: &VerifierKey, origin: Option<&str>) -> Result<CheckpointBody, Failure> {
    let note = field(part, "note")?
        .as_str()
        .ok_or_else(|| Failure::Unreadable("the note is not a string".into()))?;
    let body = checkpoint::open_note(note, key, origin)
        .map_err(|e| Failure::Refused(format!("the checkpoint note: {e}")))?;
    if let Some(size) = part.get("tree_size") {
        if size.as_u64() != Some(body.size) {
            return Err(Failure::Refused(format!(
                "the proof says tree_size {size}, its signed note says {}",
                body.size
            )));
        }
    }
    if let Some(root) = part.get("root_hash") {
        if root.as_str().and_then(merkle::decode) != Some(body.root) {
            return Err(Failure::Refused(format!(
                "the proof says root_hash {root}, its signed note says {}",
                merkle::encode(&body.root)
            )));
        }
    }
    Ok(body)
}

fn check(proof: &Value, key: &VerifierKey, origin: Option<&str>) -> Result<String, Failure> {
    let refused = |e: merkle::ProofError| Failure::Refused(e.to_string());
    if let Some(path) = proof.get("consistency") {
        let path = path_of(path)?;
        let old = signed_body(field(proof, "old")?, key, origin)?;
        let new = signed_body(field(proof, "new")?, key, origin)?;
        merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &path).map_err(refused)?;
        return Ok(format!(
            "the tree of size {} extends the tree of size {}",
            new.size, old.size
        ));
    }
    let path = path_of(field(proof, "inclusion")?)?;
    let body = signed_body(proof, key, origin)?;
    let event = field(proof, "event")?;
    // The index is part of the leaf: the event's own log_index is the one proven, and the
    // proof's must not say another.
    let index = event
        .get("log_index")
        .and_then(Value::as_u64)
        .ok_or_else(|| Failure::Refused("the event carries no log_index".into()))?;
    let stated = field(proof, "log_index")?;
    if stated.as_u64() != Some(index) {
        return Err(Failure::Refused(format!(
            "the proof says log_index {stated}, its event says {index}"
        )));
    }
    merkle::verify_inclusion(&log::leaf_of(event), index, body.size, &path, &body.root).map_err(refused)?;
    let id = event.get("event_id").and_then(Value::as_str).unwrap_or("?");
    Ok(format!(
        "event {id} is leaf {index} of the signed tree of size {}",
        body.size
    ))
}

/// When `audit capture` stops.
struct Until {
    /// Once a checkpoint covers every event captured, and nothing arrived for `idle`.
    sealed: bool,
    idle: Duration,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
enum CaptureError {
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("{0}")]
    File(#[from] std::io::Error),
    #[error("no checkpoint covered the events captured within the timeout")]
    Timeout,
}

/// Appends every message of the audit exchange to `out`, one line each, as published.
async fn capture(
    broker: &crate::cli::BrokerArgs,
    exchange: &str,
    out: &Path,
    until: Until,
) -> Result<usize, CaptureError> {
    use futures_util::StreamExt;
    use lapin::options::BasicAckOptions;

    let connection = crate::broker::connect(&broker.amqp_url).await?;
    let channel = connection.create_channel().await?;
    let mut consumer = crate::broker::topology::consume_private(&channel, exchange, "#", false).await?;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(out)?;
    let deadline = tokio::time::Instant::now() + until.timeout;
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let (mut lines, mut next_index, mut sealed) = (0usize, 0u64, 0u64);
    loop {
        let wait = if until.sealed && lines > 0 && sealed >= next_index {
            until.idle
        } else {
            Duration::from_secs(3600)
        };
        let next = tokio::select! {
            () = &mut shutdown => break,
            _ = tokio::time::sleep_until(deadline) => {
                if until.sealed { return Err(CaptureError::Timeout) }
                break;
            }
            next = tokio::time::timeout(wait, consumer.next()) => next,
        };
        let Ok(Some(delivery)) = next else {
            // Idle, with every event captured under a checkpoint.
            break;
        };
        let delivery = delivery?;
        file.write_all(&delivery.data)?;
        file.write_all(b"\n")?;
        file.flush()?;
        lines += 1;
        if let Ok(message) = serde_json::from_slice::<serde_json::Value>(&delivery.data) {
            if let Some(size) = message.get("tree_size").and_then(serde_json::Value::as_u64) {
                sealed = sealed.max(size);
            } else if let Some(index) = message.get("log_index").and_then(serde_json::Value::as_u64) {
                next_index = next_index.max(index + 1);
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let _ = connection.close(200, "captured".into()).await;
    Ok(lines)
}
