//! Stage 6: recording a job's outcome, with the entity's version and audit hash chain.
//!
//! The chain (docs/architecture.md, section 2.3): an event that changed its entity is a link,
//! numbered by `entity_version` and sealed with `checksum = sha256(prev_checksum + "\n" +
//! canonical event without checksum)`. Advancing the entity head and finishing the idempotency
//! record happen in one Lua script, guarded by the head version the event was built on, so two
//! workers can never both claim the same version.

use std::sync::LazyLock;

use redis::Script;
use serde_json::Value;

use crate::canonical;
use crate::dedupe::Lease;
use crate::events::{AuditEvent, OutboundEvent, GENESIS_CHECKSUM};
use crate::store::{Store, StoreError};

/// The newest link of an entity's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityHead {
    pub version: u64,
    pub checksum: String,
}

impl Default for EntityHead {
    fn default() -> Self {
        Self {
            version: 0,
            checksum: GENESIS_CHECKSUM.to_string(),
        }
    }
}

/// The checksum `event` must carry: over its canonical form without the `checksum` field.
pub fn checksum_of(event: &AuditEvent) -> String {
    checksum_of_value(&serde_json::to_value(event).expect("audit events always serialize"))
}

/// The same over an event as received: `sha256(prev_checksum + "\n" + canonical)`, where
/// `canonical` is the event without `checksum`, keys sorted, no whitespace. Verifiers use this
/// on the JSON they captured, so fields this version does not know are covered too.
pub fn checksum_of_value(event: &Value) -> String {
    let mut without = event.clone();
    if let Value::Object(map) = &mut without {
        map.remove("checksum");
    }
    let prev = event
        .get("prev_checksum")
        .and_then(Value::as_str)
        .unwrap_or_default();
    canonical::sha256_hex(format!("{prev}\n{}", canonical::to_string(&without)).as_bytes())
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

static COMMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local version = tonumber(redis.call('HGET', KEYS[3], 'version') or '0')
if version ~= tonumber(ARGV[1]) then
  return 0
end
if ARGV[2] ~= '' then
  local t = redis.call('TIME')
  local now = math.floor(tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[3], 'version', version + 1, 'checksum', ARGV[2], 'changed_at', now)
  redis.call('EXPIRE', KEYS[3], ARGV[9])
end
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'outcome', ARGV[3], 'events', ARGV[4], 'confirmed', '0')
  redis.call('EXPIRE', KEYS[1], ARGV[6])
else
  redis.call('DEL', KEYS[1])
end
if ARGV[2] ~= '' and ARGV[8] ~= '' then
  -- Sequences are u64 decimal strings without leading zeros: compared by length, then
  -- lexically, exactly (Lua numbers are doubles, which cannot tell 2^53 + 1 from 2^53).
  local last = redis.call('HGET', KEYS[3], 'sequence')
  if not last or #ARGV[8] > #last or (#ARGV[8] == #last and ARGV[8] > last) then
    redis.call('HSET', KEYS[3], 'sequence', ARGV[8])
  end
end
if redis.call('GET', KEYS[2]) == ARGV[7] then
  redis.call('DEL', KEYS[2])
end
return 1
"#,
    )
});

impl Store {
    /// The head of `entity`'s chain (version 0 and the genesis checksum when it has none).
    pub async fn entity_head(&self, entity: &str) -> Result<EntityHead, StoreError> {
        let key = self.entity_key(entity);
        let mut conn = self.conn.clone();
        let (version, checksum): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(&key)
            .arg("version")
            .arg("checksum")
            .query_async(&mut conn)
            .await?;
        match (version, checksum) {
            (Some(version), Some(checksum)) => Ok(EntityHead { version, checksum }),
            (None, None) => Ok(EntityHead::default()),
            _ => Err(StoreError::Corrupt {
                key,
                problem: "half-written entity head".into(),
            }),
        }
    }

    /// Links `draft` into its entity's chain and records the outcome for `lease`'s job, in one
    /// atomic step that also advances the entity's last `sequence` (for a change) and releases
    /// the job's lease. `outbound` turns the final audit event into the messages to publish;
    /// they are stored with the record when `remember` is set (the job may not run again),
    /// otherwise the record is released so a redelivery or replay evaluates the job afresh.
    /// The entity lock stays held: the caller releases it once the events are confirmed, so an
    /// entity's events reach the exchanges in version order.
    ///
    /// `known_head` is the entity's head as read when its lock was taken; with it the commit is
    /// one round trip (the version check still guards against a lost lock).
    pub async fn commit(
        &self,
        lease: &Lease,
        draft: &AuditEvent,
        remember: bool,
        sequence: Option<u64>,
        mut known_head: Option<EntityHead>,
        outbound: impl Fn(&AuditEvent) -> Vec<OutboundEvent>,
    ) -> Result<(AuditEvent, Vec<OutboundEvent>), StoreError> {
        let script = &*COMMIT;
        loop {
            let head = match known_head.take() {
                Some(head) => head,
                None => self.entity_head(&draft.entity).await?,
            };
            let mut event = draft.clone();
            link(&mut event, &head);
            let messages = outbound(&event);
            let stored = serde_json::to_string(&messages).expect("outbound events serialize");
            let mut conn = self.conn.clone();
            let committed: i64 = script
                .key(self.record_key(&lease.idempotency_key))
                .key(self.lease_key(&lease.idempotency_key))
                .key(self.entity_key(&draft.entity))
                .arg(head.version)
                .arg(event.checksum.clone().unwrap_or_default())
                .arg(event.outcome.as_str())
                .arg(stored)
                .arg(if remember { "1" } else { "0" })
                .arg(self.idempotency_ttl_secs)
                .arg(&lease.owner)
                .arg(sequence.map(|s| s.to_string()).unwrap_or_default())
                .arg(self.entity_ttl_secs)
                .invoke_async(&mut conn)
                .await?;
            if committed == 1 {
                return Ok((event, messages));
            }
            // Another job advanced the entity between our read and write: link again.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Outcome;
    use time::macros::datetime;
    use uuid::Uuid;

    fn event(outcome: Outcome) -> AuditEvent {
        AuditEvent {
            event_id: Uuid::nil(),
            job_id: Uuid::nil(),
            kind: "agent.status".into(),
            idempotency_key: Some("k".into()),
            entity: "user:1".into(),
            outcome,
            actor: None,
            correlation_id: None,
            previous_state: None,
            new_state: Some(serde_json::json!({"presence": "Available"})),
            attempts: 1,
            latency_ms: 12,
            genesys_status: Some(200),
            error: None,
            entity_version: 0,
            checksum: None,
            prev_checksum: String::new(),
            occurred_at: datetime!(2026-11-22 08:00:00 UTC),
            summary: None,
            traceparent: None,
        }
    }

    #[test]
    fn first_link_starts_at_version_one_from_the_genesis_checksum() {
        let mut e = event(Outcome::Applied);
        link(&mut e, &EntityHead::default());
        assert_eq!(e.entity_version, 1);
        assert_eq!(e.prev_checksum, GENESIS_CHECKSUM);
        let checksum = e.checksum.clone().unwrap();
        // Recomputed independently: prev + "\n" + sorted compact JSON without `checksum`.
        let mut value = serde_json::to_value(&e).unwrap();
        value.as_object_mut().unwrap().remove("checksum");
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
