//! The verifiable audit log's keys (`log:*`, see `Store::log_key`): an audit event recorded
//! without a job's commit (a rejected message, a duplicate's announcement, a control change)
//! takes its index here; a commit and a batch's seal take theirs in their own scripts (in a
//! Redis Cluster, right after them: `Store::log_index_once`). The sealer's lease, tree and
//! checkpoint are here too.

use std::sync::LazyLock;

use redis::Script;

use super::{Store, StoreError};
use crate::events::{with_log_index, AuditEvent, OutboundEvent};

/// KEYS: the log's size, its unsealed leaves. ARGV: the audit event as published, `log_index`
/// null. Returns the event's index.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{}
local index = log_entry(KEYS[1], KEYS[2], ARGV[1], nil)
return index
"#,
        super::commit::LOG_ENTRY
    ))
});

impl Store {
    /// Gives `event` (announced by `messages`, the audit event first) the log's next index, and
    /// fills it into both; nothing without the log. The index is taken before the event is
    /// published: a crash in between leaves a leaf no consumer saw (`audit verify` names it
    /// missing), never a published event outside the log.
    pub async fn log_append(
        &self,
        event: &mut AuditEvent,
        messages: &mut [OutboundEvent],
    ) -> Result<(), StoreError> {
        if !self.audit_log {
            return Ok(());
        }
        let Some(audit) = messages.first_mut() else {
            return Ok(());
        };
        let mut conn = self.conn.clone();
        let index: u64 = APPEND
            .key(self.log_key("size"))
            .key(self.log_key("leaves"))
            .arg(&audit.body)
            .invoke_async(&mut conn)
            .await?;
        self.replicated(&self.log_key("size")).await?;
        event.log_index = Some(index);
        if let Some(body) = with_log_index(&audit.body, index) {
            audit.body = body;
        }
        Ok(())
    }
}

/// KEYS: the sealer's lease. ARGV: owner, lease (ms). Takes or renews the lease; 1 when held.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
",
    )
});

/// KEYS: the sealer's lease, the tree, the leaves. ARGV: owner, the tree before ('' for none),
/// the tree after, then the indexes folded in. Moves the tree on and drops the folded leaves,
/// only while `owner` holds the lease and the tree is still the one it read: 1 when done.
static SEAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
-- One HDEL for all (at most the sealer's FOLD, 1,000: well within unpack's limit).
if #ARGV >= 4 then redis.call('HDEL', KEYS[3], unpack(ARGV, 4)) end
return 1
",
    )
});

/// KEYS: the sealer's lease, the latest checkpoint. ARGV: owner, the new checkpoint's tree
/// size, its time, the message. Stores the message only while `owner` holds the lease and
/// neither the stored size nor the stored time is larger (the same size again is a retry). The
/// times are `checkpoint::format_time`'s fixed-width UTC text, which sorts as it ticks; a stored
/// value that is not a checkpoint's JSON is replaced.
static SET_CHECKPOINT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local stored = redis.call('GET', KEYS[2])
if stored then
  local ok, old = pcall(cjson.decode, stored)
  if ok and type(old) == 'table' then
    local size = tonumber(old.tree_size)
    if size and size > tonumber(ARGV[2]) then return 0 end
    if type(old.time) == 'string' and old.time > ARGV[3] then return 0 end
  end
end
redis.call('SET', KEYS[2], ARGV[4])
return 1
",
    )
});

/// What the sealer reads: how many events have an index, and the sealed tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    /// Indexes given so far (the next one).
    pub size: u64,
    /// The sealed tree's compact range (`audit::merkle::CompactRange` text); `None` before the
    /// first seal.
    pub tree: Option<String>,
}

impl Store {
    /// Takes or renews the sealer's lease for `owner`; whether `owner` holds it.
    pub async fn log_lease(&self, owner: &str, lease: std::time::Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let held: i64 = LEASE
            .key(self.log_key("sealer"))
            .arg(owner)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(held == 1)
    }

    pub async fn log_state(&self) -> Result<LogState, StoreError> {
        let mut conn = self.conn.clone();
        let (size, tree): (Option<u64>, Option<String>) = redis::pipe()
            .cmd("GET")
            .arg(self.log_key("size"))
            .cmd("GET")
            .arg(self.log_key("tree"))
            .query_async(&mut conn)
            .await?;
        Ok(LogState {
            size: size.unwrap_or(0),
            tree,
        })
    }

    /// The unsealed leaves `from..to` (the audit events as published, index included), in
    /// order.
    pub async fn log_leaves(&self, from: u64, to: u64) -> Result<Vec<String>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let key = self.log_key("leaves");
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("HMGET");
        get.arg(&key);
        for index in from..to {
            get.arg(index);
        }
        let leaves: Vec<Option<String>> = get.query_async(&mut conn).await?;
        leaves
            .into_iter()
            .zip(from..)
            .map(|(leaf, index)| {
                let leaf = leaf.ok_or_else(|| StoreError::Corrupt {
                    key: key.clone(),
                    problem: format!("leaf {index} has an index but no event"),
                })?;
                // Stored as recorded, index null (see `LOG_ENTRY`); one stored by an earlier
                // version has it already.
                Ok(with_log_index(&leaf, index).unwrap_or(leaf))
            })
            .collect()
    }

    /// Replaces the sealed tree `before` by `after` and drops the leaves folded in, if `owner`
    /// still holds the sealer's lease and nobody sealed meanwhile; whether it did.
    pub async fn log_seal(
        &self,
        owner: &str,
        before: Option<&str>,
        after: &str,
        folded: std::ops::Range<u64>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut seal = SEAL.key(self.log_key("sealer"));
        seal.key(self.log_key("tree")).key(self.log_key("leaves"));
        seal.arg(owner).arg(before.unwrap_or_default()).arg(after);
        for index in folded {
            seal.arg(index);
        }
        let sealed: i64 = seal.invoke_async(&mut conn).await?;
        self.replicated(&self.log_key("tree")).await?;
        Ok(sealed == 1)
    }

    /// Keeps the checkpoint `message` (tree size `size`, time `time` as signed) as the latest,
    /// if `owner` holds the sealer's lease and it is not behind the stored one: whether it did.
    /// The sealer stores it before publishing it, so a sealer taking over later reads it and
    /// never signs an earlier time (docs/architecture.md, "The verifiable audit log").
    pub async fn log_set_checkpoint(
        &self,
        owner: &str,
        size: u64,
        time: &str,
        message: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let stored: i64 = SET_CHECKPOINT
            .key(self.log_key("sealer"))
            .key(self.log_key("checkpoint"))
            .arg(owner)
            .arg(size)
            .arg(time)
            .arg(message)
            .invoke_async(&mut conn)
            .await?;
        self.replicated(&self.log_key("checkpoint")).await?;
        Ok(stored == 1)
    }

    /// The latest checkpoint message the sealers stored (`None` before the first).
    pub async fn log_checkpoint(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(self.log_key("checkpoint"))
            .query_async(&mut conn)
            .await?)
    }
}
