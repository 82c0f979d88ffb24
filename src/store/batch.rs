//! A batch's progress in Redis (`batch:<job id>`, `…:final`, `…:errors`): its start and
//! publish cursor, each child's final outcome counted once, the sealed summary.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::Script;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{EntityHead, Lease, Store, StoreError};
use crate::events::{unix_millis, EventError, OutboundEvent, Outcome};
use crate::job::Job;

/// How many of a batch's errors its summary quotes.
pub const FIRST_ERRORS: usize = 5;

/// A batch's progress as kept in Redis.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub batch_id: Uuid,
    pub total: u64,
    /// Children published so far.
    pub published: u64,
    /// Children with a final outcome.
    pub finished: u64,
    pub counts: BTreeMap<String, u64>,
    pub first_errors: Vec<Value>,
    /// Whether the summary event was confirmed by the broker.
    pub summary_sent: bool,
    #[serde(skip)]
    pub(crate) idempotency_key: String,
    #[serde(skip)]
    pub(crate) actor: Option<String>,
    #[serde(skip)]
    pub(crate) correlation_id: Option<String>,
    #[serde(skip)]
    pub(crate) started_ms: u64,
}

impl Progress {
    fn parse(
        batch_id: Uuid,
        key: &str,
        fields: &[String],
        errors: &[String],
        finished: u64,
    ) -> Result<Self, StoreError> {
        let map: BTreeMap<&str, &str> = fields
            .chunks_exact(2)
            .map(|pair| (pair[0].as_str(), pair[1].as_str()))
            .collect();
        let number = |name: &str| -> Result<u64, StoreError> {
            map.get(name)
                .map(|raw| raw.parse())
                .transpose()
                .map(Option::unwrap_or_default)
                .map_err(|_| StoreError::Corrupt {
                    key: key.to_string(),
                    problem: format!("{name} is not a number"),
                })
        };
        let text = |name: &str| map.get(name).filter(|v| !v.is_empty()).map(|v| v.to_string());
        let counts = map
            .iter()
            .filter_map(|(name, count)| Some((name.strip_prefix("n:")?.to_string(), count.parse().ok()?)))
            .collect();
        Ok(Self {
            batch_id,
            total: number("total")?,
            published: number("published")?,
            finished,
            counts,
            first_errors: errors
                .iter()
                .filter_map(|e| serde_json::from_str(e).ok())
                .collect(),
            summary_sent: map.get("sent") == Some(&"1"),
            idempotency_key: text("key").unwrap_or_default(),
            actor: text("actor"),
            correlation_id: text("correlation_id"),
            started_ms: number("started_ms")?,
        })
    }
}

/// Creates the progress record (once) and returns how many children were published already.
static START: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('HSETNX', KEYS[1], 'total', ARGV[1])
redis.call('HSETNX', KEYS[1], 'published', '0')
redis.call('HSETNX', KEYS[1], 'key', ARGV[2])
redis.call('HSETNX', KEYS[1], 'actor', ARGV[3])
redis.call('HSETNX', KEYS[1], 'correlation_id', ARGV[4])
redis.call('HSETNX', KEYS[1], 'started_ms', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return redis.call('HGET', KEYS[1], 'published')
"#,
    )
});

/// Counts a child's final outcome once; when that completes the batch (and its summary was not
/// sent), returns the progress record's fields, '--', then the first errors.
static REPORT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[2], 1)
  if ARGV[3] ~= '' and redis.call('LLEN', KEYS[3]) < tonumber(ARGV[4]) then
    redis.call('RPUSH', KEYS[3], ARGV[3])
    redis.call('EXPIRE', KEYS[3], ARGV[5])
  end
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '-1')
if total < 0 or redis.call('SCARD', KEYS[2]) < total or redis.call('HGET', KEYS[1], 'sent') == '1' then
  return {}
end
local reply = redis.call('HGETALL', KEYS[1])
table.insert(reply, '--')
for _, e in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  table.insert(reply, e)
end
return reply
"#,
    )
});

/// Stores the summary's messages once and advances the batch entity's head with it; returns
/// the stored messages (an earlier seal wins, so every publication is byte-identical).
///
/// With the log (ARGV[5], the summary's audit event, not empty; KEYS 3 and 4 the log's size and
/// leaves) the summary takes its log index here, once, like a job's event in its commit. Not in
/// a Redis Cluster (the log's keys are in another slot): there the summary is stored without
/// its index and takes it from `Store::log_index_once` before it is published.
static SEAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{}
local stored = redis.call('HGET', KEYS[1], 'summary')
if stored then
  return stored
end
local messages = ARGV[1]
if ARGV[5] ~= '' then
  local _
  _, messages = log_entry(KEYS[3], KEYS[4], ARGV[5], messages)
end
redis.call('HSET', KEYS[1], 'summary', messages)
redis.call('HSET', KEYS[2], 'version', ARGV[2], 'checksum', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return messages
"#,
        super::commit::LOG_ENTRY
    ))
});

/// Finishes a batch job's idempotency record once its children are all published: a copy
/// delivered later is a duplicate. Releases its lease and entity lock.
static FANNED_OUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('HSET', KEYS[1], 'state', 'done', 'outcome', 'applied', 'events', '[]', 'confirmed', '1')
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 2, 3 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
  end
end
return 1
"#,
    )
});

impl Store {
    /// A batch's keys are named after (and, in a Redis Cluster, tagged with) the batch's
    /// entity, whose head the summary advances in the same script.
    fn batch_key(&self, batch_id: Uuid, part: &str) -> String {
        format!(
            "{}{}{part}",
            self.prefix,
            self.tag(&crate::job::batch_entity(batch_id))
        )
    }

    pub(crate) async fn batch_start(&self, job: &Job, total: usize) -> Result<usize, StoreError> {
        let now_ms = unix_millis(OffsetDateTime::now_utc());
        let mut conn = self.conn.clone();
        let published: String = START
            .key(self.batch_key(job.job_id, ""))
            .arg(total)
            .arg(&job.idempotency_key)
            .arg(job.actor.as_deref().unwrap_or_default())
            .arg(job.correlation_id.as_deref().unwrap_or_default())
            .arg(now_ms)
            .arg(self.idempotency_ttl_secs)
            .invoke_async(&mut conn)
            .await?;
        // The console's list of batches, newest first; entries older than the records go.
        let recent = self.recent_batches_key();
        let _: () = redis::pipe()
            .cmd("ZADD")
            .arg(&recent)
            .arg("NX")
            .arg(now_ms)
            .arg(job.job_id.to_string())
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&recent)
            .arg("-inf")
            .arg(now_ms.saturating_sub(self.idempotency_ttl_secs.saturating_mul(1000)))
            .ignore()
            // Gone with the last batch's records when no batch starts for that long.
            .cmd("EXPIRE")
            .arg(&recent)
            .arg(self.idempotency_ttl_secs)
            .ignore()
            .query_async(&mut conn)
            .await?;
        published.parse().map_err(|_| StoreError::Corrupt {
            key: self.batch_key(job.job_id, ""),
            problem: "published is not a number".into(),
        })
    }

    pub(crate) async fn batch_published(&self, batch_id: Uuid, published: usize) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("HSET")
            .arg(self.batch_key(batch_id, ""))
            .arg("published")
            .arg(published)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Finishes the idempotency record of a batch whose children are all published.
    pub async fn batch_fanned_out(&self, lease: &Lease, entity: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = FANNED_OUT
            .key(self.record_key(&lease.entity, &lease.idempotency_key))
            .key(self.lease_key(&lease.entity, &lease.idempotency_key))
            .key(self.lock_key(entity))
            .arg(&lease.owner)
            .arg(self.idempotency_ttl_secs)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Counts child `index`'s final `outcome`; returns the batch's progress when this completed
    /// it and its summary is still to be sent.
    pub async fn batch_report(
        &self,
        batch_id: Uuid,
        index: u64,
        child_job: Option<Uuid>,
        outcome: Outcome,
        error: Option<&EventError>,
    ) -> Result<Option<Progress>, StoreError> {
        let error = error
            .map(|e| {
                json!({"index": index, "job_id": child_job, "outcome": outcome, "code": e.code, "message": e.message})
                    .to_string()
            })
            .unwrap_or_default();
        let mut conn = self.conn.clone();
        let reply: Vec<String> = REPORT
            .key(self.batch_key(batch_id, ""))
            .key(self.batch_key(batch_id, ":final"))
            .key(self.batch_key(batch_id, ":errors"))
            .arg(index)
            .arg(outcome.as_str())
            .arg(error)
            .arg(FIRST_ERRORS)
            .arg(self.idempotency_ttl_secs)
            .invoke_async(&mut conn)
            .await?;
        if reply.is_empty() {
            return Ok(None);
        }
        let split = reply.iter().position(|f| f == "--").unwrap_or(reply.len());
        let (fields, errors) = reply.split_at(split);
        let mut progress = Progress::parse(
            batch_id,
            &self.batch_key(batch_id, ""),
            fields,
            errors.get(1..).unwrap_or_default(),
            0,
        )?;
        progress.finished = progress.total;
        Ok(Some(progress))
    }

    /// Stores the summary's `messages` (linked at `head`) unless an earlier report did; returns
    /// the messages to publish (in a Redis Cluster without their log index: see
    /// [`Store::log_index_once`]).
    pub async fn batch_seal(
        &self,
        batch_id: Uuid,
        entity: &str,
        head: &EntityHead,
        messages: &[OutboundEvent],
    ) -> Result<Vec<OutboundEvent>, StoreError> {
        let key = self.batch_key(batch_id, "");
        let mut conn = self.conn.clone();
        let mut seal = SEAL.key(&key);
        seal.key(self.entity_key(entity));
        if self.logs_in_commit() {
            seal.key(self.log_key("size")).key(self.log_key("leaves"));
        }
        let audit = match messages.first() {
            Some(audit) if self.logs_in_commit() => audit.body.as_str(),
            _ => "",
        };
        let stored: String = seal
            .arg(serde_json::to_string(messages).expect("outbound events serialize"))
            .arg(head.version)
            .arg(&head.checksum)
            .arg(self.entity_ttl_secs)
            .arg(audit)
            .invoke_async(&mut conn)
            .await?;
        serde_json::from_str(&stored).map_err(|e| StoreError::Corrupt {
            key,
            problem: format!("summary: {e}"),
        })
    }

    /// Notes that the batch's summary event was confirmed.
    pub async fn batch_summary_sent(&self, batch_id: Uuid) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("HSET")
            .arg(self.batch_key(batch_id, ""))
            .arg("sent")
            .arg("1")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    fn recent_batches_key(&self) -> String {
        format!("{}batches", self.prefix)
    }

    /// The ids of the latest `limit` batches started, newest first.
    pub async fn recent_batches(&self, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(self.recent_batches_key())
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut conn)
            .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// A batch's progress, for `genesys-worker batch status` (None: no such batch).
    pub async fn batch_progress(&self, batch_id: Uuid) -> Result<Option<Progress>, StoreError> {
        let key = self.batch_key(batch_id, "");
        let mut conn = self.conn.clone();
        let (fields, finished, errors): (Vec<String>, u64, Vec<String>) = redis::pipe()
            .cmd("HGETALL")
            .arg(&key)
            .cmd("SCARD")
            .arg(self.batch_key(batch_id, ":final"))
            .cmd("LRANGE")
            .arg(self.batch_key(batch_id, ":errors"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Progress::parse(batch_id, &key, &fields, &errors, finished).map(Some)
    }
}
