//! The worker's Redis, in one room: one auto-reconnecting connection, the key layout, and a file
//! per script family: [`claim`] (idempotency records, leases, takeover: stage 2), [`entity`]
//! (the per-entity lock and head: stage 3), [`commit`] (the outcome and the entity's version in
//! one step: stage 6), [`batch`] (a batch's progress) and [`budget`] (the fleet's rate limit).
//! The stages keep their rules: `order` decides superseded and expired, `record` builds the
//! chain link, `batch` fans out and summarises.
//!
//! Keys (all under the configured prefix):
//! - `idem:<idempotency key>`: hash `state` (`in_progress`/`done`), `fp`, `outcome`, `events`,
//!   `confirmed`; expires after the idempotency TTL once done.
//! - `lease:<idempotency key>`: the owner token of the worker running the job, with a TTL.
//! - `entity:<entity>`: hash `version`, `checksum`: the head of the entity's audit hash chain;
//!   `sequence`: the highest job sequence applied to it; `changed_at`: when (Redis's clock, ms)
//!   the last link was recorded. Expires `ENTITY_TTL_SECS` after its last change.
//! - `lock:<entity>`: the owner token of the job changing the entity, with a TTL.
//! - `budget:<client id>:tat`, `budget:<client id>:pause`: the fleet-wide rate-limit budget;
//!   `budget:<client id>:pause:<route family>`: a route family paused by a limit others share.
//! - `batch:<job id>`: a batch's progress (hash: `total`, `published`, `n:<outcome>` counts,
//!   `summary`, `sent`, ...); `batch:<job id>:final`: the indexes of its final children (set);
//!   `batch:<job id>:errors`: its first errors (list); `batches`: the batches started, by
//!   start time (sorted set, for the console).
//! - `control`: the operator controls in force and their `epoch` (hash, [`control`]).
//! - `log:*` (in a Redis Cluster `log:{log}:*`): the verifiable audit log ([`log`],
//!   [`Store::log_key`]).

mod batch;
mod budget;
mod claim;
mod commit;
mod connection;
mod control;
mod entity;
mod group;
mod log;
pub mod lookup;

pub use batch::{Progress, FIRST_ERRORS};
pub use claim::{Claim, Lease, LeaseKeeper};
pub use commit::LogIndexed;
pub use entity::{EntityHead, EntityState};

use std::borrow::Cow;
use std::time::Duration;

use crate::config::{RedisSettings, RedisTopology};
use connection::Connection;
use group::{Kind, ScriptGroup};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: {key}: {cause}")]
    NotReplicated { key: String, cause: String },
    /// A grouped call (see `group`) failed as a whole.
    #[error("redis unavailable: {cause} (grouped {script} call)")]
    Grouped { script: &'static str, cause: String },
    /// One job's part of a grouped call raised an error; its neighbours went on.
    #[error("redis script {script} failed on {key}: {message}")]
    Script {
        script: &'static str,
        key: String,
        message: String,
    },
    #[error("redis record {key} is corrupt: {problem}")]
    Corrupt { key: String, problem: String },
}

impl StoreError {
    /// Whether every job is affected (Redis out of reach, refusing, short of replicas), as
    /// opposed to one job's part of a grouped call failing on its own record.
    pub fn means_redis_is_down(&self) -> bool {
        match self {
            // Out of memory, loading, read-only and the like concern every job alike.
            Self::Redis(_) | Self::NotReplicated { .. } | Self::Grouped { .. } => true,
            Self::Script { .. } | Self::Corrupt { .. } => false,
        }
    }
}

/// 90 days: `ENTITY_TTL_SECS`'s default.
const DEFAULT_ENTITY_TTL_SECS: u64 = 90 * 24 * 3600;

/// Redis connection plus key naming.
#[derive(Clone)]
pub struct Store {
    pub(crate) conn: Connection,
    prefix: String,
    /// In a Redis Cluster an entity's keys carry it as their hash tag (one slot, so one script
    /// can touch them all); elsewhere they keep the single server's layout.
    tagged: bool,
    /// `REDIS_WAIT_REPLICAS` and `REDIS_WAIT_TIMEOUT_MS`.
    wait_replicas: u64,
    wait_timeout: Duration,
    /// The per-job scripts, grouped across the jobs in flight (`group`).
    group: ScriptGroup,
    /// How long a finished job's record is kept, in seconds.
    pub(crate) idempotency_ttl_secs: u64,
    /// Lease of an in-progress record, in milliseconds.
    pub(crate) lease_ms: u64,
    /// How long an entity's record is kept after its last change, in seconds.
    pub(crate) entity_ttl_secs: u64,
    /// Whether audit events join the verifiable log (`AUDIT_LOG`): each gets its `log_index`
    /// where it is recorded (`commit`, `log`).
    pub(crate) audit_log: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to the Redis `settings` name; the connection reconnects on its own after a
    /// failure (and follows a Sentinel or Cluster failover). Every command times out, so an
    /// outage surfaces as an error (and the intake stops consuming) instead of a call that
    /// waits forever.
    pub async fn connect(
        settings: &RedisSettings,
        prefix: &str,
        idempotency_ttl_secs: u64,
        lease_ms: u64,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open(settings).await?;
        let tagged = settings.topology == RedisTopology::Cluster;
        let group = ScriptGroup::start(group::Runner {
            conn: conn.clone(),
            wait: (settings.wait_replicas > 0).then(|| {
                (
                    settings.wait_replicas,
                    Duration::from_millis(settings.wait_timeout_ms),
                )
            }),
            alone: tagged,
        });
        Ok(Self {
            conn,
            group,
            prefix: prefix.to_string(),
            tagged,
            wait_replicas: settings.wait_replicas,
            wait_timeout: Duration::from_millis(settings.wait_timeout_ms),
            idempotency_ttl_secs,
            lease_ms,
            entity_ttl_secs: DEFAULT_ENTITY_TTL_SECS,
            audit_log: false,
        })
    }

    /// Keeps entity records `secs` after their last change (`ENTITY_TTL_SECS`).
    pub fn with_entity_ttl(mut self, secs: u64) -> Self {
        self.entity_ttl_secs = secs;
        self
    }

    /// Puts every audit event into the verifiable log. In a Redis Cluster the log's keys live
    /// in a slot of their own, so a recorded event takes its index in a second, repeatable
    /// step ([`Store::log_index_once`]) rather than in the script that records it.
    pub fn with_audit_log(mut self, on: bool) -> Self {
        self.audit_log = on;
        self
    }

    /// Whether audit events get a `log_index`.
    pub fn audit_log(&self) -> bool {
        self.audit_log
    }

    /// A key of the verifiable audit log: `size` (the next index), `leaves` (the events not
    /// sealed into the tree yet, by index), `tree` (the sealed tree's compact range), `sealer`
    /// (the lease of the replica sealing), `checkpoint` (the latest), `event:<id>:<digest>` (the
    /// index a recorded event took after its commit, in a Redis Cluster: [`Store::log_index_once`]).
    /// In a cluster they share the hash tag `{log}`: one slot, so the log's scripts may use any
    /// of them together (and never an entity's key).
    pub(crate) fn log_key(&self, part: &str) -> String {
        if self.tagged {
            format!("{}log:{{log}}:{part}", self.prefix)
        } else {
            format!("{}log:{part}", self.prefix)
        }
    }

    /// `name` as the hash tag of a Redis Cluster key, or as it is.
    fn tag<'a>(&self, name: &'a str) -> Cow<'a, str> {
        if self.tagged {
            Cow::Owned(format!("{{{name}}}"))
        } else {
            Cow::Borrowed(name)
        }
    }

    /// The idempotency record of `idempotency_key`, whose job changes `entity`.
    pub(crate) fn record_key(&self, entity: &str, idempotency_key: &str) -> String {
        self.job_key("idem", entity, idempotency_key)
    }

    pub(crate) fn lease_key(&self, entity: &str, idempotency_key: &str) -> String {
        self.job_key("lease", entity, idempotency_key)
    }

    fn job_key(&self, kind: &str, entity: &str, idempotency_key: &str) -> String {
        if self.tagged {
            format!("{}{kind}:{{{entity}}}:{idempotency_key}", self.prefix)
        } else {
            format!("{}{kind}:{idempotency_key}", self.prefix)
        }
    }

    /// In a Redis Cluster: the fingerprint first seen with `idempotency_key`, whatever entity
    /// its job named (the record lives in the entity's slot, so a key reused for another
    /// entity would not meet it).
    pub(crate) fn key_owner_key(&self, idempotency_key: &str) -> String {
        format!("{}key:{{{idempotency_key}}}", self.prefix)
    }

    /// A key of the fleet-wide rate-limit budget of OAuth client `client_id`.
    pub(crate) fn budget_key(&self, client_id: &str, part: &str) -> String {
        format!("{}budget:{}:{part}", self.prefix, self.tag(client_id))
    }

    pub(crate) fn lock_key(&self, entity: &str) -> String {
        format!("{}lock:{}", self.prefix, self.tag(entity))
    }

    pub(crate) fn entity_key(&self, entity: &str) -> String {
        format!("{}entity:{}", self.prefix, self.tag(entity))
    }

    /// With `REDIS_WAIT_REPLICAS` set: waits until that many replicas hold every write made so
    /// far to the server holding `key`; a write they do not all acknowledge in time is an error
    /// (the job is delivered again), since a failover could lose it.
    pub(crate) async fn replicated(&self, key: &str) -> Result<(), StoreError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        self.conn
            .ensure_replicated(Some(key), self.wait_replicas, self.wait_timeout)
            .await
    }

    /// Answers when Redis does, and, with `REDIS_WAIT_REPLICAS` set, when enough replicas
    /// follow (every primary's, in a cluster): used by readiness checks, and by the intake
    /// before it consumes again, so jobs are not taken while no claim could be replicated.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        if self.wait_replicas > 0 {
            self.conn
                .ensure_replicated(None, self.wait_replicas, self.wait_timeout)
                .await?;
        }
        Ok(())
    }
}
