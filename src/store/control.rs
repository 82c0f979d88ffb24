//! The operator controls (`crate::control` gives them meaning): one hash, `control`, whose fields are the controls in
//! force (`pause:kind:agent.status` → `{actor, at, reason}`) and `epoch`, moved by every change,
//! which the workers watch to know when to read the rest.

use std::sync::LazyLock;

use redis::Script;

use super::{EntityHead, Store, StoreError};

/// The field the workers watch.
const EPOCH: &str = "epoch";

/// Sets an entity's head and releases its lock, if `owner` still holds it.
static ADVANCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
        redis.call('HSET', KEYS[1], 'version', ARGV[2], 'checksum', ARGV[3])
        redis.call('EXPIRE', KEYS[1], ARGV[4])
        redis.call('DEL', KEYS[2])
        return 1
        ",
    )
});

/// Removes a control field and moves the epoch; returns what the field held.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local held = redis.call('HGET', KEYS[1], ARGV[1])
        if not held then return false end
        redis.call('HDEL', KEYS[1], ARGV[1])
        redis.call('HINCRBY', KEYS[1], 'epoch', 1)
        return held
        ",
    )
});

impl Store {
    fn control_key(&self) -> String {
        format!("{}control", self.prefix)
    }

    /// The controls' epoch (0 before the first change).
    pub async fn controls_epoch(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let epoch: Option<u64> = redis::cmd("HGET")
            .arg(self.control_key())
            .arg(EPOCH)
            .query_async(&mut conn)
            .await?;
        Ok(epoch.unwrap_or(0))
    }

    /// The controls' epoch and every control field with its value (`crate::control` reads
    /// them).
    pub async fn control_fields(&self) -> Result<(u64, Vec<(String, String)>), StoreError> {
        let mut conn = self.conn.clone();
        let mut fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.control_key())
            .query_async(&mut conn)
            .await?;
        let epoch = fields
            .iter()
            .position(|(field, _)| field == EPOCH)
            .map(|at| fields.swap_remove(at).1.parse().unwrap_or(0))
            .unwrap_or(0);
        Ok((epoch, fields))
    }

    /// Sets (or replaces) a control and moves the epoch, in one step.
    pub async fn set_control(&self, field: &str, value: &str) -> Result<(), StoreError> {
        let key = self.control_key();
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(&key)
            .arg(field)
            .arg(value)
            .ignore()
            .cmd("HINCRBY")
            .arg(&key)
            .arg(EPOCH)
            .arg(1)
            .ignore()
            .query_async(&mut conn)
            .await?;
        self.replicated(&key).await
    }

    /// Removes a control and moves the epoch; returns what it held (`None`: there was none).
    pub async fn remove_control(&self, field: &str) -> Result<Option<String>, StoreError> {
        let key = self.control_key();
        let mut conn = self.conn.clone();
        let held: Option<String> = REMOVE.key(&key).arg(field).invoke_async(&mut conn).await?;
        self.replicated(&key).await?;
        Ok(held)
    }

    /// Moves `entity`'s chain head to `head` and releases `owner`'s lock of it (a record made
    /// outside a job: a control change).
    pub async fn advance_entity(
        &self,
        entity: &str,
        owner: &str,
        head: &EntityHead,
    ) -> Result<(), StoreError> {
        let key = self.entity_key(entity);
        let mut conn = self.conn.clone();
        let advanced: i64 = ADVANCE
            .key(&key)
            .key(self.lock_key(entity))
            .arg(owner)
            .arg(head.version)
            .arg(&head.checksum)
            .arg(self.entity_ttl_secs)
            .invoke_async(&mut conn)
            .await?;
        if advanced == 0 {
            return Err(StoreError::Corrupt {
                key,
                problem: "the entity's lock was lost before its head was advanced".into(),
            });
        }
        self.replicated(&key).await
    }
}
