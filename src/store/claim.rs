//! Stage 2: deduplication through Redis idempotency records (docs/architecture.md, section 4.1).
//!
//! A job first *claims* its idempotency key. The claim is atomic (one Lua script), so of many
//! copies of a job delivered at once exactly one runs; the others wait for its outcome and become
//! `duplicate`. An in-progress claim holds a lease renewed while the job runs: if the worker dies,
//! the lease expires and a redelivered copy takes the job over.
//!
//! The same round trip also tries the entity's lock (stage 3, [`crate::order`]) and, when it
//! gets it, reads the entity's last sequence and chain head: everything a job needs before it
//! applies costs one Redis round trip unless another change of the entity is in flight.

use std::sync::LazyLock;

use std::time::Duration;

use redis::Script;
use uuid::Uuid;

use super::{EntityState, Kind, Store, StoreError};
use crate::events::{OutboundEvent, Outcome};

/// What the claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This worker owns the job now. `takeover` is true when a previous owner's lease expired:
    /// the change may already have been made. `entity` is the entity's state when its lock was
    /// taken in the same step (None: another change of the entity is in flight; wait for it
    /// with [`Store::lock_entity`]).
    Owned(Lease, Option<EntityState>),
    /// The job already finished; `confirmed` says whether its events reached the exchanges.
    Done {
        outcome: Outcome,
        events: Vec<OutboundEvent>,
        confirmed: bool,
    },
    /// The key was used before with a different payload.
    KeyReused,
}

/// Ownership of an in-progress job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub idempotency_key: String,
    /// The entity the job named when it claimed its key: its record lives with that entity's
    /// (in a Redis Cluster, in that entity's hash slot) even if the job changes another one.
    pub entity: String,
    pub owner: String,
    pub takeover: bool,
}

/// KEYS: record, lease, entity lock, entity head. On a claim, also tries the entity lock and
/// returns {verdict, locked, sequence, version, checksum, ms since the last change}.
pub(super) const CLAIM: &str = r#"
local function age_of(changed_at)
  if not changed_at then return '' end
  return tostring(math.floor(now_ms() - tonumber(changed_at)))
end
local function with_entity(verdict)
  local locked = redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3], 'NX')
  if not locked and redis.call('GET', KEYS[3]) ~= ARGV[2] then
    return {verdict, '0'}
  end
  local head = redis.call('HMGET', KEYS[4], 'sequence', 'version', 'checksum', 'changed_at')
  return {verdict, '1', head[1] or '', head[2] or '', head[3] or '', age_of(head[4])}
end
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'in_progress', 'fp', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return with_entity('claimed')
end
if redis.call('HGET', KEYS[1], 'fp') ~= ARGV[1] then
  return {'reused'}
end
if state == 'done' then
  return {'done', redis.call('HGET', KEYS[1], 'outcome') or '',
          redis.call('HGET', KEYS[1], 'events') or '[]',
          redis.call('HGET', KEYS[1], 'confirmed') or '0',
          redis.call('HGET', KEYS[1], 'log_index') or ''}
end
if redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3], 'NX') then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return with_entity('takeover')
end
return {'busy'}
"#;

/// Renews every key (the idempotency lease, the entity lock) that `owner` holds; returns
/// whether the first one, the lease, was still held.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    if i == 1 then held = 1 end
  end
end
return held
"#,
    )
});

static CONFIRM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'state') == 'done' then
  redis.call('HSET', KEYS[1], 'confirmed', '1')
end
return 1
"#,
    )
});

/// Gives up an in-progress claim (the job will be delivered again later) and the entity lock.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  if redis.call('HGET', KEYS[1], 'state') == 'in_progress' then
    redis.call('DEL', KEYS[1])
  end
end
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
return 1
"#,
    )
});

/// The last step of a job, after its events were confirmed: notes the confirmation on a
/// remembered record and releases the entity lock, in one round trip. A done record has its
/// `confirmed` field from the commit, so setting it adds no field; where it does add one (the
/// record expired, or is another claim's in-progress record) the field is taken out again: one
/// command where a check first would cost two.
pub(super) const FINISH: &str = r#"
if ARGV[2] == '1' and redis.call('HSET', KEYS[1], 'confirmed', '1') == 1 then
  redis.call('HDEL', KEYS[1], 'confirmed')
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
"#;

/// How often a waiting copy looks at the record of the copy that runs.
const BUSY_POLL: Duration = Duration::from_millis(50);

impl Store {
    /// Claims `idempotency_key` for a job whose payload has `fingerprint` and that changes
    /// `entity`, trying the entity's lock in the same step. A copy that finds the job running
    /// elsewhere waits until it finishes or its lease expires.
    pub async fn claim(
        &self,
        idempotency_key: &str,
        fingerprint: &str,
        entity: &str,
    ) -> Result<Claim, StoreError> {
        let owner = Uuid::new_v4().to_string();
        let record = self.record_key(entity, idempotency_key);
        let entity_key = self.entity_key(entity);
        if self.tagged && !self.first_payload_of_key(idempotency_key, fingerprint).await? {
            return Ok(Claim::KeyReused);
        }
        loop {
            let reply = self
                .group
                .call(
                    Kind::Claim,
                    vec![
                        record.clone(),
                        self.lease_key(entity, idempotency_key),
                        self.lock_key(entity),
                        entity_key.clone(),
                    ],
                    vec![
                        fingerprint.to_string(),
                        owner.clone(),
                        self.lease_ms.to_string(),
                        self.idempotency_ttl_secs.to_string(),
                    ],
                )
                .await;
            let reply: Vec<String> = match reply {
                Ok(reply) => redis::from_redis_value(&reply)?,
                Err(error @ StoreError::NotReplicated { .. }) => {
                    // Not safe to call Genesys on: give the claim back (if this call made it)
                    // for the next delivery.
                    let unsure = Lease {
                        idempotency_key: idempotency_key.to_string(),
                        entity: entity.to_string(),
                        owner: owner.clone(),
                        takeover: false,
                    };
                    let _ = self.release_claim(&unsure, entity).await;
                    return Err(error);
                }
                Err(error) => return Err(error),
            };
            let lease = |takeover| -> Result<Claim, StoreError> {
                let lease = Lease {
                    idempotency_key: idempotency_key.to_string(),
                    entity: entity.to_string(),
                    owner: owner.clone(),
                    takeover,
                };
                let entity = match reply.get(1).map(String::as_str) {
                    Some("1") => Some(EntityState::parse(&entity_key, &reply[2..])?),
                    _ => None,
                };
                Ok(Claim::Owned(lease, entity))
            };
            let verdict = reply.first().map(String::as_str);
            match verdict {
                Some("claimed") => return lease(false),
                Some("takeover") => return lease(true),
                Some("reused") => return Ok(Claim::KeyReused),
                Some("done") => return parse_done(&record, &reply),
                Some("busy") => tokio::time::sleep(BUSY_POLL).await,
                other => {
                    return Err(StoreError::Corrupt {
                        key: record,
                        problem: format!("unexpected claim reply {other:?}"),
                    })
                }
            }
        }
    }

    /// Records `fingerprint` as the payload of `idempotency_key` unless one is already recorded;
    /// false when the key was first seen with another payload.
    async fn first_payload_of_key(
        &self,
        idempotency_key: &str,
        fingerprint: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let earlier: Option<String> = redis::cmd("SET")
            .arg(self.key_owner_key(idempotency_key))
            .arg(fingerprint)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(self.idempotency_ttl_secs)
            .query_async(&mut conn)
            .await?;
        Ok(earlier.is_none_or(|earlier| earlier == fingerprint))
    }

    /// Extends the lease, and the lock of `entity` when this job holds it; false when the lease
    /// was lost (expired and taken over).
    pub async fn renew(&self, lease: &Lease, entity: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let renewed: i64 = RENEW
            .key(self.lease_key(&lease.entity, &lease.idempotency_key))
            .key(self.lock_key(entity))
            .arg(&lease.owner)
            .arg(self.lease_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Gives up `lease`'s claim and its lock of `entity`, so the job's next delivery claims it
    /// afresh.
    pub async fn release_claim(&self, lease: &Lease, entity: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = RELEASE
            .key(self.record_key(&lease.entity, &lease.idempotency_key))
            .key(self.lease_key(&lease.entity, &lease.idempotency_key))
            .key(self.lock_key(entity))
            .arg(&lease.owner)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Ends a recorded job once its events are confirmed: marks a remembered record confirmed
    /// and releases `lease`'s lock of `entity`.
    pub async fn finish(&self, lease: &Lease, entity: &str, remembered: bool) -> Result<(), StoreError> {
        self.group
            .call(
                Kind::Finish,
                vec![
                    self.record_key(&lease.entity, &lease.idempotency_key),
                    self.lock_key(entity),
                ],
                vec![
                    lease.owner.clone(),
                    if remembered { "1" } else { "0" }.to_string(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Notes that a finished job's events were confirmed by the broker.
    pub async fn mark_confirmed(&self, entity: &str, idempotency_key: &str) -> Result<(), StoreError> {
        // `entity`: the one the job named, as when it claimed.
        let mut conn = self.conn.clone();
        let _: i64 = CONFIRM
            .key(self.record_key(entity, idempotency_key))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Renews `lease` (and the lock of `entity`, once held) until the returned guard is
    /// dropped, so a long job keeps its claim.
    pub fn keep_alive(&self, lease: &Lease, entity: &str) -> LeaseKeeper {
        let store = self.clone();
        let lease = lease.clone();
        let entity = entity.to_string();
        let period = Duration::from_millis((self.lease_ms / 3).max(10));
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                match store.renew(&lease, &entity).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(idempotency_key = %lease.idempotency_key, "Lease lost; another worker may take the job over.");
                        return;
                    }
                    Err(e) => tracing::warn!(error.message = %e, "Lease renewal failed; retrying."),
                }
            }
        });
        LeaseKeeper(task)
    }
}

/// Stops renewing a lease when dropped.
#[derive(Debug)]
pub struct LeaseKeeper(tokio::task::JoinHandle<()>);

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn parse_done(record: &str, reply: &[String]) -> Result<Claim, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt {
        key: record.to_string(),
        problem,
    };
    let outcome: Outcome = serde_json::from_value(serde_json::Value::String(reply[1].clone()))
        .map_err(|_| corrupt(format!("unknown outcome {:?}", reply[1])))?;
    let mut events: Vec<OutboundEvent> =
        serde_json::from_str(&reply[2]).map_err(|e| corrupt(format!("events: {e}")))?;
    if let Some(index) = reply.get(4).filter(|i| !i.is_empty()) {
        let index = index
            .parse()
            .map_err(|_| corrupt(format!("log_index {index:?}")))?;
        fill_log_index(&mut events, index);
    }
    Ok(Claim::Done {
        outcome,
        events,
        confirmed: reply[3] == "1",
    })
}

/// Puts the log index a commit kept beside the stored events into the audit event among them
/// (the first), which was stored with `log_index` null: the bytes published the first time.
pub(super) fn fill_log_index(events: &mut [OutboundEvent], index: u64) {
    if let Some(audit) = events.first_mut() {
        if let Some(body) = crate::events::with_log_index(&audit.body, index) {
            audit.body = body;
        }
    }
}
