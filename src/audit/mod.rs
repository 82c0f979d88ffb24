//! `genesys-worker audit verify`: checks a captured stream of audit events (NDJSON) against
//! the per-entity hash chain (docs/architecture.md, section 2.3).
//!
//! Per entity, the links (`applied`, `rolled_back`) must carry versions 1, 2, 3 … in the order
//! they appear, each `prev_checksum` must equal the previous link's `checksum` (64 zeros for the
//! first), and each `checksum` must match the event's content. A modified event fails its
//! checksum, a removed one leaves a gap, a reordered one breaks the sequence. The same event
//! twice (a re-publication after a crash carries the same id and bytes) is skipped; the same id
//! with other content is a break. With `sort`, links are taken in version order instead of file
//! order, for streams merged from several consumers.

pub mod checkpoint;
pub mod log;
pub mod merkle;
pub mod note;
pub mod seal;

use std::collections::HashMap;

use serde_json::Value;

use crate::canonical;
use crate::events::GENESIS_CHECKSUM;
use crate::record::checksum_of_value;

/// What a verified stream held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    pub events: usize,
    pub entities: usize,
    pub links: usize,
    pub duplicates: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("line {line}: not an audit event: {problem}")]
    Unreadable { line: usize, problem: String },
    #[error("chain broken at line {line}: event {event_id} (entity {entity}): {problem}")]
    Break {
        line: usize,
        event_id: String,
        entity: String,
        problem: String,
    },
}

struct Event {
    line: usize,
    id: String,
    entity: String,
    version: u64,
    value: Value,
}

/// The event on line `line`, or `None` for a checkpoint message (checked by [`log`]).
fn read(line: usize, raw: &str) -> Result<Option<Event>, VerifyError> {
    let unreadable = |problem: &str| VerifyError::Unreadable {
        line,
        problem: problem.to_string(),
    };
    let value: Value = serde_json::from_str(raw).map_err(|e| unreadable(&format!("not JSON: {e}")))?;
    if log::is_checkpoint(&value) {
        return Ok(None);
    }
    let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_string);
    let id = text("event_id").ok_or_else(|| unreadable("no event_id"))?;
    let entity = text("entity").ok_or_else(|| unreadable("no entity"))?;
    text("outcome").ok_or_else(|| unreadable("no outcome"))?;
    text("prev_checksum").ok_or_else(|| unreadable("no prev_checksum"))?;
    let version = value
        .get("entity_version")
        .and_then(Value::as_u64)
        .ok_or_else(|| unreadable("no entity_version"))?;
    Ok(Some(Event {
        line,
        id,
        entity,
        version,
        value,
    }))
}

fn is_link(event: &Event) -> bool {
    matches!(
        event.value.get("outcome").and_then(Value::as_str),
        Some("applied" | "rolled_back")
    )
}

/// Verifies the NDJSON `input`; the first break ends the walk.
pub fn verify(input: &str, sort: bool) -> Result<Report, VerifyError> {
    let mut report = Report::default();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut links: Vec<Event> = Vec::new();
    for (index, raw) in input.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let Some(event) = read(index + 1, raw)? else {
            continue;
        };
        let broken = |problem: &str| VerifyError::Break {
            line: event.line,
            event_id: event.id.clone(),
            entity: event.entity.clone(),
            problem: problem.to_string(),
        };
        let content = canonical::to_string(&event.value);
        if let Some(previous) = seen.get(&event.id) {
            if *previous != content {
                return Err(broken("the same event id appeared before with other content"));
            }
            report.duplicates += 1;
            continue;
        }
        seen.insert(event.id.clone(), content);
        report.events += 1;
        let checksum = event.value.get("checksum");
        if is_link(&event) {
            if !checksum.is_some_and(Value::is_string) {
                return Err(broken("an event that changed its entity has no checksum"));
            }
            links.push(event);
        } else if !checksum.is_some_and(Value::is_null) {
            return Err(broken("an event that changed nothing must have checksum null"));
        }
    }
    if sort {
        links.sort_by(|a, b| (&a.entity, a.version).cmp(&(&b.entity, b.version)));
    }
    let mut heads: HashMap<&str, (u64, String)> = HashMap::new();
    for event in &links {
        let (version, checksum) = heads
            .entry(&event.entity)
            .or_insert((0, GENESIS_CHECKSUM.to_string()));
        let broken = |problem: String| VerifyError::Break {
            line: event.line,
            event_id: event.id.clone(),
            entity: event.entity.clone(),
            problem,
        };
        if event.version != *version + 1 {
            let problem = if event.version <= *version {
                format!(
                    "version {} after version {version}: events out of order or replayed",
                    event.version
                )
            } else {
                format!(
                    "version {} follows version {version}: a link is missing",
                    event.version
                )
            };
            return Err(broken(problem));
        }
        let prev = event.value["prev_checksum"].as_str().unwrap_or_default();
        if prev != checksum {
            return Err(broken(format!(
                "prev_checksum does not match the checksum of version {version}"
            )));
        }
        let recorded = event.value["checksum"].as_str().unwrap_or_default();
        let recomputed = checksum_of_value(&event.value);
        if recorded != recomputed {
            return Err(broken(
                "checksum does not match the event's content: it was modified".into(),
            ));
        }
        *version = event.version;
        *checksum = recomputed;
        report.links += 1;
    }
    report.entities = heads.len();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{AuditEvent, Outcome};
    use crate::record::{link, EntityHead};
    use time::macros::datetime;
    use uuid::Uuid;

    /// A stream as the worker would publish it: links and a non-link on two entities.
    fn stream() -> Vec<String> {
        let mut heads: HashMap<&str, EntityHead> = HashMap::new();
        let steps = [
            ("workitem:a", Outcome::Applied),
            ("workitem:b", Outcome::Applied),
            ("workitem:a", Outcome::Conflict),
            ("workitem:a", Outcome::Applied),
            ("workitem:a", Outcome::Applied),
        ];
        steps
            .iter()
            .enumerate()
            .map(|(n, (entity, outcome))| {
                let head = heads.entry(entity).or_default();
                let mut event = AuditEvent {
                    event_id: Uuid::from_u128(n as u128 + 1),
                    new_state: Some(serde_json::json!({"status": format!("S{n}")})),
                    attempts: 1,
                    latency_ms: 5,
                    genesys_status: Some(200),
                    occurred_at: datetime!(2026-11-22 08:00:00 UTC),
                    ..AuditEvent::new(
                        Uuid::from_u128(100 + n as u128),
                        "interaction.status",
                        &format!("k{n}"),
                        entity.to_string(),
                        *outcome,
                    )
                };
                link(&mut event, head);
                if let Some(checksum) = &event.checksum {
                    *head = EntityHead {
                        version: event.entity_version,
                        checksum: checksum.clone(),
                    };
                }
                serde_json::to_string(&event).unwrap()
            })
            .collect()
    }

    fn break_of(lines: &[String]) -> (usize, String, String) {
        match verify(&lines.join("\n"), false) {
            Err(VerifyError::Break {
                line,
                event_id,
                problem,
                ..
            }) => (line, event_id, problem),
            other => panic!("expected a break, got {other:?}"),
        }
    }

    #[test]
    fn an_intact_stream_verifies() {
        let report = verify(&stream().join("\n"), false).unwrap();
        assert_eq!(
            report,
            Report {
                events: 5,
                entities: 2,
                links: 4,
                duplicates: 0
            }
        );
    }

    #[test]
    fn a_republished_event_is_skipped() {
        let mut lines = stream();
        lines.insert(2, lines[1].clone());
        assert_eq!(verify(&lines.join("\n"), false).unwrap().duplicates, 1);
    }

    #[test]
    fn a_modified_event_fails_its_checksum() {
        let mut lines = stream();
        lines[3] = lines[3].replace("\"S3\"", "\"S9\"");
        let (line, event_id, problem) = break_of(&lines);
        assert_eq!(
            (line, event_id.as_str()),
            (4, Uuid::from_u128(4).to_string().as_str())
        );
        assert!(problem.contains("modified"), "{problem}");
    }

    #[test]
    fn a_removed_event_leaves_a_gap() {
        let mut lines = stream();
        lines.remove(3);
        let (line, event_id, problem) = break_of(&lines);
        assert_eq!((line, event_id), (4, Uuid::from_u128(5).to_string()));
        assert!(problem.contains("missing"), "{problem}");
    }

    #[test]
    fn a_reordered_event_breaks_the_sequence_unless_sorting() {
        let mut lines = stream();
        lines.swap(3, 4);
        let (line, _, problem) = break_of(&lines);
        assert_eq!(line, 4);
        assert!(
            problem.contains("missing") || problem.contains("order"),
            "{problem}"
        );
        assert!(
            verify(&lines.join("\n"), true).is_ok(),
            "sorted by version it is whole"
        );
    }

    #[test]
    fn the_same_id_with_other_content_is_a_break() {
        let mut lines = stream();
        let forged = lines[1].replace("\"latency_ms\":5", "\"latency_ms\":6");
        lines.push(forged);
        assert!(break_of(&lines).2.contains("other content"));
    }

    #[test]
    fn unreadable_lines_are_reported_by_number() {
        assert_eq!(
            verify("{}\n", false),
            Err(VerifyError::Unreadable {
                line: 1,
                problem: "no event_id".into()
            })
        );
    }
}
