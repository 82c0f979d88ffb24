//! The commit: a job's outcome recorded and its entity's head advanced in one atomic step.

use std::sync::LazyLock;

use redis::Script;

use super::{EntityHead, Lease, Store, StoreError};
use crate::events::{AuditEvent, OutboundEvent};

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
    /// Records the outcome of `lease`'s job on `entity`, in one atomic step that also advances the
    /// entity's head and last `sequence` (for a change) and releases the job's lease. `prepare`
    /// builds, from the entity's head, the final audit event (linked into the chain by
    /// [`crate::record::link`]) and the messages to publish; they are stored with the record when
    /// `remember` is set (the job may not run again),
    /// otherwise the record is released so a redelivery or replay evaluates the job afresh.
    /// The entity lock stays held: the caller releases it once the events are confirmed, so an
    /// entity's events reach the exchanges in version order.
    ///
    /// `known_head` is the entity's head as read when its lock was taken; with it the commit is
    /// one round trip (the version check still guards against a lost lock).
    pub async fn commit(
        &self,
        lease: &Lease,
        entity: &str,
        remember: bool,
        sequence: Option<u64>,
        mut known_head: Option<EntityHead>,
        prepare: impl Fn(&EntityHead) -> (AuditEvent, Vec<OutboundEvent>),
    ) -> Result<(AuditEvent, Vec<OutboundEvent>), StoreError> {
        let script = &*COMMIT;
        loop {
            let head = match known_head.take() {
                Some(head) => head,
                None => self.entity_head(entity).await?,
            };
            let (event, messages) = prepare(&head);
            let stored = serde_json::to_string(&messages).expect("outbound events serialize");
            let mut conn = self.conn.clone();
            let committed: i64 = script
                .key(self.record_key(&lease.idempotency_key))
                .key(self.lease_key(&lease.idempotency_key))
                .key(self.entity_key(entity))
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
