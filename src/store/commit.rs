//! The commit: a job's outcome recorded and its entity's head advanced in one atomic step.

use std::sync::LazyLock;

use redis::Script;

use super::{EntityHead, Kind, Lease, Store, StoreError};
use crate::events::{with_log_index, AuditEvent, OutboundEvent, UNINDEXED};

/// KEYS: record, entity head, the log's size, the log's unsealed leaves (the last two only when
/// the commit takes the index). ARGV: expected version, checksum (empty: not a link), outcome,
/// events, remember, idempotency TTL, sequence, entity TTL, the audit event as published
/// (empty: the log is off, or in a Redis Cluster). Returns `{0, -1}` when the head moved, else
/// `{1, log index}` (-1 when no index was taken).
///
/// With the log, the event takes the next index in the same step that records it: the event
/// joins the unsealed leaves, and a remembered record keeps the index in its `log_index` field,
/// which a claim of the finished job fills into the stored event (`{"log_index":null` →
/// `{"log_index":7`, [`crate::events::with_log_index`]). So a crash never skips or doubles an
/// index, and re-published stored events keep theirs. In a Redis Cluster the log's keys are in
/// another slot: the commit is sent without them and the index is taken by [`LOG_ONCE`].
///
/// The job's lease is not touched: it expires by itself within `LEASE_MS`, and nothing reads it
/// once the record is done or gone (a claim reads a lease only beside an `in_progress` record, and
/// a new claim sets its own). Deleting it took two commands per job.
pub(super) const COMMIT: &str = r#"
local head = redis.call('HMGET', KEYS[2], 'version', 'sequence')
local version = tonumber(head[1] or '0')
if version ~= tonumber(ARGV[1]) then
  return {0, -1}
end
local log_index = -1
if ARGV[9] ~= '' then
  log_index = log_entry(KEYS[3], KEYS[4], ARGV[9], nil)
end
if ARGV[2] ~= '' then
  local fields = {'version', version + 1, 'checksum', ARGV[2], 'changed_at', math.floor(now_ms())}
  if ARGV[7] ~= '' and sequence_is_newer(ARGV[7], head[2]) then
    fields[7], fields[8] = 'sequence', ARGV[7]
  end
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('EXPIRE', KEYS[2], ARGV[8])
end
if ARGV[5] == '1' then
  local fields = {'state', 'done', 'outcome', ARGV[3], 'events', ARGV[4], 'confirmed', '0'}
  if log_index >= 0 then
    fields[9], fields[10] = 'log_index', log_index
  end
  -- The claim gave the record its TTL (counted from the claim, seconds earlier: no need to
  -- set it again); only a record that is gone (every field new) gets one here.
  if redis.call('HSET', KEYS[1], unpack(fields)) == #fields / 2 then
    redis.call('EXPIRE', KEYS[1], ARGV[6])
  end
else
  redis.call('DEL', KEYS[1])
end
return {1, log_index}
"#;

/// Lua: `log_entry(size, leaves, event, events)` gives audit `event` (serialized with
/// `log_index` null as its first member) the log's next index (`size`, a counter) and stores
/// it as it is, index null, as an unsealed leaf (`leaves`, a hash by index: the sealer puts the
/// index in). Returns the index, and `events` (the stored messages: JSON holding that event as a
/// string; nil: none to fill) with the index filled in. Everything is checked before anything
/// is written: an error must not leave an index without its leaf.
///
/// Filling an index into a string makes Lua build a new one, which costs more than the rest of
/// the step together (about 4 µs per KiB): a job's commit leaves its stored events alone and
/// keeps the index in a field of its own; only the rare batch summary is filled in here.
pub(super) const LOG_ENTRY: &str = r#"
local function log_entry(size, leaves, event, events)
  local unset = '{"log_index":null'
  local quoted = '{\\"log_index\\":null'
  if string.sub(event, 1, #unset) ~= unset then
    error('an audit event must begin with its log_index')
  end
  local at
  if events then
    at = string.find(events, quoted, 1, true)
    if not at then
      error('the stored events do not hold the audit event')
    end
  end
  local index = redis.call('INCR', size) - 1
  redis.call('HSET', leaves, index, event)
  if events then
    events = string.sub(events, 1, at - 1) .. '{\\"log_index\\":' .. index .. string.sub(events, at + #quoted)
  end
  return index, events
end
"#;
/// KEYS: the log's size, its unsealed leaves, the event's own key (`log:{log}:event:…`).
/// ARGV: the audit event as recorded (`log_index` null), the idempotency TTL. Returns the
/// event's index: the one its key holds, else the log's next (taken as [`LOG_ENTRY`] takes it)
/// and kept under the key for the TTL.
///
/// A Redis Cluster's index step, after the commit (which runs in the entity's slot and cannot
/// reach the log's): repeatable, so a crash between the two steps neither skips an index (one
/// is taken only with its leaf) nor doubles one (the key answers every later run), and the job's
/// next delivery re-publishes its stored event with the index it took, if it took one. The key
/// lives as long as a record can: any re-publication of the stored event finds it. The stored
/// record itself keeps `log_index: null` (it is in the entity's slot); the key answers the
/// same index on every re-publication instead.
static LOG_ONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{LOG_ENTRY}
local given = redis.call('GET', KEYS[3])
if given then
  return tonumber(given)
end
local index = log_entry(KEYS[1], KEYS[2], ARGV[1], nil)
redis.call('SET', KEYS[3], index, 'EX', ARGV[2])
return index
"#
    ))
});

/// How long a Redis Cluster's index key ([`LOG_ONCE`]) lives once its events are confirmed:
/// enough for a copy of the job that read the record unconfirmed a moment before to re-publish
/// with the same index (its claim and `LOG_ONCE` are milliseconds apart).
const SETTLED_GRACE_SECS: u64 = 60;

/// The index a recorded event took in a Redis Cluster ([`Store::log_index_once`]), and the key
/// that answers it again.
#[derive(Debug)]
pub struct LogIndexed {
    pub index: u64,
    key: String,
}

/// Lua: whether job sequence `candidate` is above the entity's `last` (nil: none yet).
/// Sequences are u64 decimal strings without leading zeros: compared by length, then lexically,
/// exactly (Lua numbers are doubles, which cannot tell 2^53 + 1 from 2^53). Defined once for the
/// grouped scripts (see `group`) and for [`LINK_ELSEWHERE`].
pub(super) const SEQUENCE_IS_NEWER: &str = r#"
local function sequence_is_newer(candidate, last)
  return not last or #candidate > #last or (#candidate == #last and candidate > last)
end
"#;

/// A Redis Cluster's commit of a job that changed another entity than the one it claimed with (a
/// created workitem): that entity's head lives in another hash slot, so it is advanced first, by
/// [`LINK_ELSEWHERE`], which also keeps the link it made under `link:{entity}:<key>`: run again
/// for the same job (after a crash before [`RECORD`]), it returns that link instead of making a
/// second. Then [`RECORD`] writes the outcome in the claimed entity's slot.
///
/// KEYS: entity head, the job's link. ARGV: expected version, checksum, sequence, entity TTL,
/// the link (event and messages), idempotency TTL. Returns {'linked', link} or {'moved'}.
static LINK_ELSEWHERE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{SEQUENCE_IS_NEWER}
local made = redis.call('GET', KEYS[2])
if made then
  return {{'linked', made}}
end
local head = redis.call('HMGET', KEYS[1], 'version', 'sequence')
local version = tonumber(head[1] or '0')
if version ~= tonumber(ARGV[1]) then
  return {{'moved'}}
end
local t = redis.call('TIME')
local now = math.floor(tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000)
local fields = {{'version', version + 1, 'checksum', ARGV[2], 'changed_at', now}}
if ARGV[3] ~= '' and sequence_is_newer(ARGV[3], head[2]) then
  fields[7], fields[8] = 'sequence', ARGV[3]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[6])
return {{'linked', ARGV[5]}}
"#
    ))
});

/// KEYS: record, lease. ARGV: outcome, events, remember, idempotency TTL, owner.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'outcome', ARGV[1], 'events', ARGV[2], 'confirmed', '0')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
else
  redis.call('DEL', KEYS[1])
end
if redis.call('GET', KEYS[2]) == ARGV[5] then
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
    ///
    /// With the audit log, the event comes back with its `log_index`, except in a Redis Cluster:
    /// there [`Store::log_index_once`] gives it, in a second step, before the events are
    /// published.
    pub async fn commit(
        &self,
        lease: &Lease,
        entity: &str,
        remember: bool,
        sequence: Option<u64>,
        mut known_head: Option<EntityHead>,
        prepare: impl Fn(&EntityHead) -> (AuditEvent, Vec<OutboundEvent>),
    ) -> Result<(AuditEvent, Vec<OutboundEvent>), StoreError> {
        if self.tagged && entity != lease.entity {
            return self
                .commit_elsewhere(lease, entity, remember, sequence, known_head, prepare)
                .await;
        }
        loop {
            let head = match known_head.take() {
                Some(head) => head,
                None => self.entity_head(entity).await?,
            };
            let (mut event, mut messages) = prepare(&head);
            let stored = serde_json::to_string(&messages).expect("outbound events serialize");
            let record = self.record_key(&lease.entity, &lease.idempotency_key);
            let committed = self
                .group
                .call(
                    Kind::Commit,
                    self.commit_keys(record, entity),
                    vec![
                        head.version.to_string(),
                        event.checksum.clone().unwrap_or_default(),
                        event.outcome.as_str().to_string(),
                        stored,
                        if remember { "1" } else { "0" }.to_string(),
                        self.idempotency_ttl_secs.to_string(),
                        sequence.map(|s| s.to_string()).unwrap_or_default(),
                        self.entity_ttl_secs.to_string(),
                        if self.logs_in_commit() {
                            messages[0].body.clone()
                        } else {
                            String::new()
                        },
                    ],
                )
                .await?;
            // Replicated before the events go out and the job is acked (the group waited).
            let [committed, log_index]: [i64; 2] = redis::from_redis_value::<Vec<i64>>(&committed)?
                .try_into()
                .map_err(|reply| StoreError::Corrupt {
                    key: self.entity_key(entity),
                    problem: format!("unexpected commit reply {reply:?}"),
                })?;
            if committed == 1 {
                if let Ok(index) = u64::try_from(log_index) {
                    event.log_index = Some(index);
                    if let Some(body) = with_log_index(&messages[0].body, index) {
                        messages[0].body = body;
                    }
                }
                return Ok((event, messages));
            }
            // Another job advanced the entity between our read and write: link again.
        }
    }

    /// The commit's keys: the log's only when the commit takes the index (not in a Redis
    /// Cluster, where they are in another slot).
    fn commit_keys(&self, record: String, entity: &str) -> Vec<String> {
        let mut keys = vec![record, self.entity_key(entity)];
        if self.logs_in_commit() {
            keys.extend([self.log_key("size"), self.log_key("leaves")]);
        }
        keys
    }

    /// Whether a recorded event takes its log index in the script that records it (a job's
    /// commit, a batch's seal): with the log, on one server or behind Sentinel. In a Redis
    /// Cluster it takes it afterwards, from [`Store::log_index_once`].
    pub(super) fn logs_in_commit(&self) -> bool {
        self.audit_log && !self.tagged
    }

    /// In a Redis Cluster, gives the audit event of `messages` (a recorded event about to be
    /// published: a job's commit, its stored events re-published, a batch's summary) its log
    /// index, once, and fills it into the first message; returns the index given (`None`:
    /// nothing to do: without the log, or not in a cluster, where the commit and the seal take
    /// the index themselves and a stored event without one was recorded while the log was off,
    /// so it is re-published as it was).
    ///
    /// Repeatable ([`LOG_ONCE`]): run again for the same stored event, after a crash or on a
    /// re-publication, it answers the index taken the first time and takes no other. The event
    /// is named by its id and a digest of its bytes: a job whose outcome is not remembered (a
    /// cancel, a rejection replayed from the dead letters) may be recorded again under the same
    /// event id, and that is another event with an index of its own.
    pub async fn log_index_once(
        &self,
        messages: &mut [OutboundEvent],
    ) -> Result<Option<LogIndexed>, StoreError> {
        let Some(audit) = messages.first_mut() else {
            return Ok(None);
        };
        // An event stored by a version that did not put log_index first does not begin so: it
        // cannot take an index without changing its bytes.
        if !self.audit_log || !self.tagged || !audit.body.starts_with(UNINDEXED) {
            return Ok(None);
        }
        // 128 bits of SHA-256 tell apart two recordings of one event id.
        let digest = crate::canonical::sha256_hex(audit.body.as_bytes());
        let event_key = self.log_key(&format!("event:{}:{}", audit.message_id, &digest[..32]));
        let size = self.log_key("size");
        let mut conn = self.conn.clone();
        let index: u64 = LOG_ONCE
            .key(&size)
            .key(self.log_key("leaves"))
            .key(&event_key)
            .arg(&audit.body)
            .arg(self.idempotency_ttl_secs)
            .invoke_async(&mut conn)
            .await?;
        self.replicated(&size).await?;
        if let Some(body) = with_log_index(&audit.body, index) {
            audit.body = body;
        }
        Ok(Some(LogIndexed {
            index,
            key: event_key,
        }))
    }

    /// Once the events of `indexed` are confirmed (the record answers `duplicate` from then on,
    /// so nothing re-publishes them), its key need not outlive a re-publisher that read the
    /// record just before: it is given [`SETTLED_GRACE_SECS`] instead of the idempotency TTL,
    /// or every event's key would stay on the `{log}` primary for days. Sent in the
    /// background, without a wait: if it is lost the key expires with the TTL.
    pub fn log_index_settled(&self, indexed: Option<LogIndexed>) {
        let Some(indexed) = indexed else { return };
        let mut conn = self.conn.clone();
        tokio::spawn(async move {
            let expired: redis::RedisResult<i64> = redis::cmd("EXPIRE")
                .arg(&indexed.key)
                .arg(SETTLED_GRACE_SECS)
                .query_async(&mut conn)
                .await;
            if let Err(err) = expired {
                tracing::debug!(error.message = %err, "Could not shorten a log index key; it expires with the idempotency TTL.");
            }
        });
    }

    /// [`Store::commit`] in a Redis Cluster for a job whose `entity` is not the one it claimed
    /// with: two steps, each atomic in its own slot, the first repeatable (see [`LINK_ELSEWHERE`]).
    async fn commit_elsewhere(
        &self,
        lease: &Lease,
        entity: &str,
        remember: bool,
        sequence: Option<u64>,
        mut known_head: Option<EntityHead>,
        prepare: impl Fn(&EntityHead) -> (AuditEvent, Vec<OutboundEvent>),
    ) -> Result<(AuditEvent, Vec<OutboundEvent>), StoreError> {
        let entity_key = self.entity_key(entity);
        let link_key = format!(
            "{}link:{}:{}",
            self.prefix,
            self.tag(entity),
            lease.idempotency_key
        );
        let (event, messages): (AuditEvent, Vec<OutboundEvent>) = loop {
            let head = match known_head.take() {
                Some(head) => head,
                None => self.entity_head(entity).await?,
            };
            let drafted = prepare(&head);
            let link = serde_json::to_string(&drafted).expect("events serialize");
            let mut conn = self.conn.clone();
            let reply: Vec<String> = LINK_ELSEWHERE
                .key(&entity_key)
                .key(&link_key)
                .arg(head.version)
                .arg(drafted.0.checksum.clone().unwrap_or_default())
                .arg(sequence.map(|s| s.to_string()).unwrap_or_default())
                .arg(self.entity_ttl_secs)
                .arg(link)
                .arg(self.idempotency_ttl_secs)
                .invoke_async(&mut conn)
                .await?;
            match (reply.first().map(String::as_str), reply.get(1)) {
                (Some("linked"), Some(made)) => {
                    break serde_json::from_str(made).map_err(|e| StoreError::Corrupt {
                        key: link_key.clone(),
                        problem: format!("link: {e}"),
                    })?
                }
                // Another job advanced the entity between our read and write: link again.
                (Some("moved"), _) => continue,
                (other, _) => {
                    return Err(StoreError::Corrupt {
                        key: link_key,
                        problem: format!("unexpected link reply {other:?}"),
                    })
                }
            }
        };
        self.replicated(&entity_key).await?;
        let record = self.record_key(&lease.entity, &lease.idempotency_key);
        let mut conn = self.conn.clone();
        let _: i64 = RECORD
            .key(&record)
            .key(self.lease_key(&lease.entity, &lease.idempotency_key))
            .arg(event.outcome.as_str())
            .arg(serde_json::to_string(&messages).expect("outbound events serialize"))
            .arg(if remember { "1" } else { "0" })
            .arg(self.idempotency_ttl_secs)
            .arg(&lease.owner)
            .invoke_async(&mut conn)
            .await?;
        self.replicated(&record).await?;
        Ok((event, messages))
    }
}
