//! Stage 3: ordering. At most one change is in flight per entity across every replica (a lock
//! with a lease in Redis, renewed with the job's idempotency lease), and the sequence rule: a
//! job whose `sequence` is lower than the last one applied to its entity is `superseded`, so a
//! late "Break" never overwrites a newer "Available".
//!
//! The lock is taken after the idempotency claim and released by the same atomic step that
//! records the outcome ([`Store::commit`]), which also advances the entity's last sequence.

use std::sync::LazyLock;

use std::time::Duration;

use redis::Script;

use crate::store::{Store, StoreError};

static LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 1
end
return 0
"#,
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// How often a job waiting for its entity looks again.
const LOCK_POLL: Duration = Duration::from_millis(20);

impl Store {
    /// Waits until `owner` holds the lock of `entity`. A holder that died releases it when its
    /// lease runs out.
    pub async fn lock_entity(&self, entity: &str, owner: &str) -> Result<(), StoreError> {
        let script = &*LOCK;
        let key = self.lock_key(entity);
        loop {
            let mut conn = self.conn.clone();
            let locked: i64 = script
                .key(&key)
                .arg(owner)
                .arg(self.lease_ms)
                .invoke_async(&mut conn)
                .await?;
            if locked == 1 {
                return Ok(());
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    /// Releases `owner`'s lock of `entity` (when the job ends without recording an outcome).
    pub async fn release_entity(&self, entity: &str, owner: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = RELEASE
            .key(self.lock_key(entity))
            .arg(owner)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The highest `sequence` applied to `entity`, if any job carried one.
    pub async fn last_sequence(&self, entity: &str) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let last: Option<u64> = redis::cmd("HGET")
            .arg(self.entity_key(entity))
            .arg("sequence")
            .query_async(&mut conn)
            .await?;
        Ok(last)
    }
}
