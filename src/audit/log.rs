//! The auditor's check of the Merkle log in a captured stream: audit events (leaves, by
//! `log_index`) and checkpoint messages mixed in one NDJSON file.
//!
//! With only the stream and the public key: every checkpoint's signature and origin, the leaves
//! reproduce every checkpoint's root, checkpoints of one size agree (else a fork), smaller
//! checkpoints are prefixes of larger ones (append-only), no larger checkpoint is dated before a
//! smaller one, and no leaf below a checkpoint's size is missing. Problems name leaves by index and checkpoints by size and line.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;
use time::OffsetDateTime;

use super::checkpoint::{self, Checkpoint, CheckpointBody};
use super::merkle::{self, CompactRange, Hash};
use super::note::VerifierKey;
use crate::canonical;

/// Whether a stream line is a checkpoint message rather than an audit event.
pub fn is_checkpoint(value: &Value) -> bool {
    value.get("note").is_some() || value.get("tree_size").is_some()
}

/// The leaf hash of an audit event as published: its canonical JSON, `checksum` and
/// `log_index` included.
pub fn leaf_of(event: &Value) -> Hash {
    merkle::leaf_hash(canonical::to_string(event).as_bytes())
}

/// One leaf of the stream.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub line: usize,
    pub event_id: String,
    pub event: Value,
    pub hash: Hash,
}

/// A stream read for the log check.
#[derive(Debug, Default)]
pub struct Stream {
    pub leaves: BTreeMap<u64, Leaf>,
    /// Checkpoint messages with their line numbers.
    pub checkpoints: Vec<(usize, Checkpoint)>,
    /// Audit events without `log_index` (not in the log).
    pub unindexed: usize,
    /// Conflicts found while reading.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct Unreadable {
    pub line: usize,
    pub problem: String,
}

/// Something the log check refuses; each displays as one reason line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("leaf {index}: line {line} (event {event_id}) and line {first_line} (event {first_id}) both claim it with different content")]
    Conflict {
        index: u64,
        first_line: usize,
        first_id: String,
        line: usize,
        event_id: String,
    },
    #[error("checkpoint at line {line}: {reason}")]
    Checkpoint { line: usize, reason: String },
    #[error(
        "fork: checkpoints at lines {first_line} and {line} both sign tree size {size} with different roots"
    )]
    Fork {
        size: u64,
        first_line: usize,
        line: usize,
    },
    #[error("checkpoint size {size} (line {line}) is dated {time}, before checkpoint size {smaller_size} (line {smaller_line}), dated {smaller_time}: checkpoint times went backwards")]
    Backdated {
        size: u64,
        line: usize,
        time: String,
        smaller_size: u64,
        smaller_line: usize,
        smaller_time: String,
    },
    #[error("{count} leaves missing below checkpoint size {size} (line {line}): {indexes}")]
    Missing {
        size: u64,
        line: usize,
        count: u64,
        indexes: String,
    },
    #[error("checkpoint size {size} (line {line}): the leaves in the file do not reproduce its root: a leaf among {since}..{size} was altered, replaced or reordered{}", verified_hint(*since))]
    Altered { size: u64, line: usize, since: u64 },
    #[error("checkpoint size {old_size} (line {old_line}) is not a prefix of checkpoint size {new_size} (line {new_line}), whose root the leaves reproduce: the log was rewritten")]
    Inconsistent {
        old_size: u64,
        old_line: usize,
        new_size: u64,
        new_line: usize,
    },
}

fn verified_hint(since: u64) -> String {
    match since {
        0 => String::new(),
        n => format!(" (the checkpoints up to size {n} verify)"),
    }
}

/// What the log check found.
#[derive(Debug, Default)]
pub struct LogReport {
    pub leaves: usize,
    /// Distinct checkpoints whose signature verified.
    pub checkpoints: usize,
    /// The largest signed tree size whose root the leaves reproduce.
    pub verified_size: u64,
    pub problems: Vec<Problem>,
    /// Informational lines (extra leaves beyond the latest checkpoint, events without index).
    pub notes: Vec<String>,
}

/// Reads `input`; lines that are neither a JSON object nor readable are [`Unreadable`]. Leaves
/// may come in any order.
pub fn read(input: &str) -> Result<Stream, Unreadable> {
    let mut stream = Stream::default();
    for (n, raw) in input.lines().enumerate() {
        let line = n + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let unreadable = |problem: String| Unreadable { line, problem };
        let value: Value = serde_json::from_str(raw).map_err(|e| unreadable(format!("not JSON: {e}")))?;
        if is_checkpoint(&value) {
            let checkpoint: Checkpoint = serde_json::from_value(value)
                .map_err(|e| unreadable(format!("not a checkpoint message: {e}")))?;
            stream.checkpoints.push((line, checkpoint));
            continue;
        }
        let Some(index) = value.get("log_index") else {
            stream.unindexed += 1;
            continue;
        };
        let index = index
            .as_u64()
            .ok_or_else(|| unreadable("log_index is not a non-negative integer".into()))?;
        let event_id = value
            .get("event_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let hash = leaf_of(&value);
        if let Some(first) = stream.leaves.get(&index) {
            // A re-publication carries the same bytes: one leaf. Anything else is a conflict.
            if first.hash != hash {
                stream.problems.push(Problem::Conflict {
                    index,
                    first_line: first.line,
                    first_id: first.event_id.clone(),
                    line,
                    event_id,
                });
            }
            continue;
        }
        // The order of the lines says nothing: the worker publishes events concurrently, so
        // they arrive out of index order. A leaf moved to another index changes the roots.
        stream.leaves.insert(
            index,
            Leaf {
                line,
                event_id,
                event: value,
                hash,
            },
        );
    }
    Ok(stream)
}

/// `3, 5..7, 9` for the indexes in `missing` (ascending), at most `limit` ranges shown.
fn ranges(missing: &[u64], limit: usize) -> String {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for &index in missing {
        match spans.last_mut() {
            Some((_, end)) if *end + 1 == index => *end = index,
            _ => spans.push((index, index)),
        }
    }
    let mut text = String::new();
    for (i, (start, end)) in spans.iter().enumerate() {
        if i == limit {
            let _ = write!(text, ", … ({} more ranges)", spans.len() - limit);
            break;
        }
        if i > 0 {
            text.push_str(", ");
        }
        let _ = match start == end {
            true => write!(text, "{start}"),
            false => write!(text, "{start}..{end}"),
        };
    }
    text
}

/// The checkpoints dated before a checkpoint of a smaller tree size: each one named with the
/// latest-dated of the smaller ones. The sealers never sign a time earlier than the last
/// checkpoint's (docs/architecture.md, "The verifiable audit log"), so a larger tree dated
/// earlier was signed out of order, or its time was forged.
fn backdated(mut dated: Vec<(u64, usize, OffsetDateTime)>) -> Vec<Problem> {
    dated.sort_by_key(|&(size, line, _)| (size, line));
    let mut problems = Vec::new();
    // The latest time among the sizes below the current one (of a tie, the largest size).
    let mut latest: Option<(u64, usize, OffsetDateTime)> = None;
    for same_size in dated.chunk_by(|a, b| a.0 == b.0) {
        if let Some((smaller_size, smaller_line, smaller_time)) = latest {
            for &(size, line, time) in same_size.iter().filter(|(_, _, time)| *time < smaller_time) {
                problems.push(Problem::Backdated {
                    size,
                    line,
                    time: checkpoint::format_time(time),
                    smaller_size,
                    smaller_line,
                    smaller_time: checkpoint::format_time(smaller_time),
                });
            }
        }
        for &checkpoint in same_size {
            if latest.is_none_or(|(_, _, time)| checkpoint.2 >= time) {
                latest = Some(checkpoint);
            }
        }
    }
    problems
}

/// Checks the log of `stream` against `key` (checkpoint origin `origin`, or else the key's
/// name).
pub fn check(stream: &Stream, key: &VerifierKey, origin: Option<&str>) -> LogReport {
    let mut report = LogReport {
        leaves: stream.leaves.len(),
        problems: stream.problems.clone(),
        ..LogReport::default()
    };
    // Signed checkpoints by size; the same checkpoint twice is one.
    let mut signed: BTreeMap<u64, (usize, CheckpointBody)> = BTreeMap::new();
    // Every signed checkpoint's (size, line, time), re-publications and forks included.
    let mut dated: Vec<(u64, usize, OffsetDateTime)> = Vec::new();
    for (line, message) in &stream.checkpoints {
        let body = match message.open(key, origin) {
            Ok(body) => body,
            Err(err) => {
                report.problems.push(Problem::Checkpoint {
                    line: *line,
                    reason: err.to_string(),
                });
                continue;
            }
        };
        if let Some(time) = body.time {
            dated.push((body.size, *line, time));
        }
        match signed.get(&body.size) {
            Some((_, first)) if first.root == body.root => {}
            Some((first_line, _)) => report.problems.push(Problem::Fork {
                size: body.size,
                first_line: *first_line,
                line: *line,
            }),
            None => {
                signed.insert(body.size, (*line, body));
            }
        }
    }
    report.checkpoints = signed.len();
    report.problems.extend(backdated(dated));
    let latest = signed.last_key_value().map(|(size, (line, _))| (*size, *line));

    if let Some((size, line)) = latest {
        let missing: Vec<u64> = (0..size)
            .filter(|index| !stream.leaves.contains_key(index))
            .collect();
        if !missing.is_empty() {
            report.problems.push(Problem::Missing {
                size,
                line,
                count: missing.len() as u64,
                indexes: ranges(&missing, 10),
            });
        }
    }
    let beyond: Vec<u64> = stream
        .leaves
        .range(latest.map_or(0, |(size, _)| size)..)
        .map(|(index, _)| *index)
        .collect();
    if !beyond.is_empty() {
        report.notes.push(format!(
            "{} leaves beyond the latest checkpoint (not yet signed): {}",
            beyond.len(),
            ranges(&beyond, 5)
        ));
    }
    if stream.unindexed > 0 {
        report.notes.push(format!(
            "{} events carry no log_index (not in the log)",
            stream.unindexed
        ));
    }

    // One pass: append leaves in index order and compare at each checkpoint's size. A gap
    // ends the pass: larger checkpoints cannot be recomputed (the gap is reported above).
    let mut range = CompactRange::new();
    let mut results: Vec<(u64, usize, bool)> = Vec::new();
    'checkpoints: for (&size, (line, body)) in &signed {
        while range.size < size {
            match stream.leaves.get(&range.size) {
                Some(leaf) => range.append(leaf.hash),
                None => break 'checkpoints,
            }
        }
        results.push((size, *line, range.root() == body.root));
    }
    let largest_ok = results.iter().rev().find(|(_, _, ok)| *ok).copied();
    report.verified_size = largest_ok.map_or(0, |(size, _, _)| size);
    let mut since = 0;
    for &(size, line, ok) in &results {
        if ok {
            since = size;
            continue;
        }
        match largest_ok.filter(|(larger, _, _)| *larger > size) {
            // The leaves reproduce a larger signed root but not this one: the signer signed
            // two histories.
            Some((new_size, new_line, _)) => report.problems.push(Problem::Inconsistent {
                old_size: size,
                old_line: line,
                new_size,
                new_line,
            }),
            None => report.problems.push(Problem::Altered { size, line, since }),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_compact() {
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8], 10), "1..3, 5, 7..8");
        assert_eq!(ranges(&[1, 3, 5], 2), "1, 3, … (1 more ranges)");
    }

    /// Four leaves and checkpoints of sizes 2 and 4 dated `times`: the roots all verify.
    fn dated_stream(times: [OffsetDateTime; 2]) -> (Stream, VerifierKey) {
        use serde_json::json;

        let key = crate::audit::note::SigningKey::from_seed("test.example/log", &[3; 32]).unwrap();
        let mut stream = Stream::default();
        for index in 0..4 {
            let event = json!({"log_index": index, "event_id": format!("e{index}")});
            let hash = leaf_of(&event);
            stream.leaves.insert(
                index,
                Leaf {
                    line: index as usize + 1,
                    event_id: format!("e{index}"),
                    event,
                    hash,
                },
            );
        }
        let hashes: Vec<Hash> = stream.leaves.values().map(|leaf| leaf.hash).collect();
        for (n, (size, time)) in [(2, times[0]), (4, times[1])].into_iter().enumerate() {
            let body = CheckpointBody::new(
                "test.example/log",
                size,
                merkle::root(&hashes[..size as usize]),
                time,
            );
            stream
                .checkpoints
                .push((5 + n, Checkpoint::sign(&body, &key).unwrap()));
        }
        (stream, key.verifier())
    }

    #[test]
    fn a_larger_checkpoint_dated_before_a_smaller_one_is_refused() {
        use time::macros::datetime;

        let (early, late) = (
            datetime!(2026-12-02 08:00:00 UTC),
            datetime!(2026-12-02 08:00:01 UTC),
        );
        for times in [[early, late], [early, early]] {
            let (stream, key) = dated_stream(times);
            let report = check(&stream, &key, None);
            assert!(report.problems.is_empty(), "{:?}", report.problems);
        }
        let (stream, key) = dated_stream([late, early]);
        let report = check(&stream, &key, None);
        assert_eq!(report.verified_size, 4, "the roots themselves verify");
        let reasons: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            [
                "checkpoint size 4 (line 6) is dated 2026-12-02T08:00:00.000Z, before checkpoint size 2 \
              (line 5), dated 2026-12-02T08:00:01.000Z: checkpoint times went backwards"
            ]
        );
    }
}
