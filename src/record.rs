//! Stage 6: recording a job's outcome, with the entity's version and audit hash chain.
//!
//! The chain (docs/architecture.md, section 2.3): an event that changed its entity is a link,
//! numbered by `entity_version` and sealed with `checksum = sha256(prev_checksum + "\n" +
//! canonical event without checksum)`. Advancing the entity head and finishing the idempotency
//! record happen in one Lua script, guarded by the head version the event was built on, so two
//! workers can never both claim the same version.

use serde_json::Value;

use crate::canonical;
use crate::events::AuditEvent;
pub use crate::store::EntityHead;

/// The checksum `event` must carry: over its canonical form without the `checksum` field.
pub fn checksum_of(event: &AuditEvent) -> String {
    checksum_of_value(&serde_json::to_value(event).expect("audit events always serialize"))
}

/// The same over an event as received: `sha256(prev_checksum + "\n" + canonical)`, where
/// `canonical` is the event without `checksum` and `log_index` (its place in the audit log,
/// given when it is recorded, after it was linked), keys sorted, no whitespace. Verifiers use this
/// on the JSON they captured, so fields this version does not know are covered too.
pub fn checksum_of_value(event: &Value) -> String {
    let prev = event
        .get("prev_checksum")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut bytes = Vec::with_capacity(1024);
    bytes.extend_from_slice(prev.as_bytes());
    bytes.push(b'\n');
    canonical::append(event, &["checksum", "log_index"], &mut bytes);
    canonical::sha256_hex(&bytes)
}

/// Fills the chain fields of `event` against the entity's current `head`.
pub fn link(event: &mut AuditEvent, head: &EntityHead) {
    event.prev_checksum = head.checksum.clone();
    if event.outcome.changed_entity() {
        event.entity_version = head.version + 1;
        event.checksum = Some(checksum_of(event));
    } else {
        // Not a link: carries the current version and head for reference.
        event.entity_version = head.version;
        event.checksum = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Outcome, GENESIS_CHECKSUM};
    use time::macros::datetime;
    use uuid::Uuid;

    fn event(outcome: Outcome) -> AuditEvent {
        AuditEvent {
            event_id: Uuid::nil(),
            new_state: Some(serde_json::json!({"presence": "Available"})),
            attempts: 1,
            latency_ms: 12,
            genesys_status: Some(200),
            occurred_at: datetime!(2026-11-22 08:00:00 UTC),
            ..AuditEvent::new(Uuid::nil(), "agent.status", "k", "user:1", outcome)
        }
    }

    #[test]
    fn first_link_starts_at_version_one_from_the_genesis_checksum() {
        let mut e = event(Outcome::Applied);
        link(&mut e, &EntityHead::default());
        assert_eq!(e.entity_version, 1);
        assert_eq!(e.prev_checksum, GENESIS_CHECKSUM);
        let checksum = e.checksum.clone().unwrap();
        // Recomputed independently: prev + "\n" + sorted compact JSON without `checksum` and
        // `log_index` (the event's place in the audit log, given after it is linked).
        let mut value = serde_json::to_value(&e).unwrap();
        value.as_object_mut().unwrap().remove("checksum");
        value.as_object_mut().unwrap().remove("log_index");
        let expected =
            canonical::sha256_hex(format!("{GENESIS_CHECKSUM}\n{}", canonical::to_string(&value)).as_bytes());
        assert_eq!(checksum, expected);
    }

    #[test]
    fn a_later_link_chains_to_the_head() {
        let head = EntityHead {
            version: 4,
            checksum: "ab".repeat(32),
        };
        let mut e = event(Outcome::Applied);
        link(&mut e, &head);
        assert_eq!(
            (e.entity_version, e.prev_checksum.as_str()),
            (5, head.checksum.as_str())
        );
    }

    #[test]
    fn non_changing_outcomes_reference_the_head_without_a_checksum() {
        let head = EntityHead {
            version: 4,
            checksum: "ab".repeat(32),
        };
        let mut e = event(Outcome::Conflict);
        link(&mut e, &head);
        assert_eq!(e.entity_version, 4);
        assert_eq!(e.checksum, None);
        assert_eq!(e.prev_checksum, head.checksum);
    }

    #[test]
    fn any_change_to_the_event_changes_the_checksum() {
        let mut a = event(Outcome::Applied);
        link(&mut a, &EntityHead::default());
        let mut b = event(Outcome::Applied);
        b.latency_ms = 13;
        link(&mut b, &EntityHead::default());
        assert_ne!(a.checksum, b.checksum);
    }
}
