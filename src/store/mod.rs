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
//!   `batch:<job id>:errors`: its first errors (list).

mod batch;
mod budget;
mod claim;
mod commit;
mod entity;

pub use batch::{Progress, FIRST_ERRORS};
pub use claim::{Claim, Lease, LeaseKeeper};
pub use entity::{EntityHead, EntityState};

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::ServiceUrl;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis record {key} is corrupt: {problem}")]
    Corrupt { key: String, problem: String },
}

/// 90 days: `ENTITY_TTL_SECS`'s default.
const DEFAULT_ENTITY_TTL_SECS: u64 = 90 * 24 * 3600;

/// Redis connection plus key naming.
#[derive(Clone)]
pub struct Store {
    pub(crate) conn: ConnectionManager,
    prefix: String,
    /// How long a finished job's record is kept, in seconds.
    pub(crate) idempotency_ttl_secs: u64,
    /// Lease of an in-progress record, in milliseconds.
    pub(crate) lease_ms: u64,
    /// How long an entity's record is kept after its last change, in seconds.
    pub(crate) entity_ttl_secs: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects; the connection manager reconnects on its own after a failure. Every command
    /// times out, so an outage surfaces as an error (and the intake stops consuming) instead of
    /// a call that waits forever.
    pub async fn connect(
        url: &ServiceUrl,
        prefix: &str,
        idempotency_ttl_secs: u64,
        lease_ms: u64,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(Duration::from_secs(3))
            .set_number_of_retries(1)
            .set_max_delay(500);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            idempotency_ttl_secs,
            lease_ms,
            entity_ttl_secs: DEFAULT_ENTITY_TTL_SECS,
        })
    }

    /// Keeps entity records `secs` after their last change (`ENTITY_TTL_SECS`).
    pub fn with_entity_ttl(mut self, secs: u64) -> Self {
        self.entity_ttl_secs = secs;
        self
    }

    /// `suffix` under the prefix.
    pub(crate) fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    pub(crate) fn record_key(&self, idempotency_key: &str) -> String {
        format!("{}idem:{idempotency_key}", self.prefix)
    }

    pub(crate) fn lease_key(&self, idempotency_key: &str) -> String {
        format!("{}lease:{idempotency_key}", self.prefix)
    }

    /// A key of the fleet-wide rate-limit budget of OAuth client `client_id`.
    pub(crate) fn budget_key(&self, client_id: &str, part: &str) -> String {
        format!("{}budget:{client_id}:{part}", self.prefix)
    }

    pub(crate) fn lock_key(&self, entity: &str) -> String {
        format!("{}lock:{entity}", self.prefix)
    }

    pub(crate) fn entity_key(&self, entity: &str) -> String {
        format!("{}entity:{entity}", self.prefix)
    }

    /// Answers when Redis does: used by readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }
}
