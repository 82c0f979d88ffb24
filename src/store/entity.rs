//! The entity records: an entity's lock (one change in flight per entity, across replicas)
//! and its head (`entity:<entity>`: chain head, last sequence, when it last changed).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Store, StoreError};
use crate::events::GENESIS_CHECKSUM;

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

/// What the job holding an entity's lock knows of it: the highest sequence applied and the head
/// of its audit chain (stable while the lock is held).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntityState {
    pub last_sequence: Option<u64>,
    pub head: EntityHead,
    /// How long ago (Redis's clock) a change of the entity was last recorded: within Genesys'
    /// consistency lag, its reads may not show that change yet.
    pub changed_ms_ago: Option<u64>,
}

impl EntityState {
    /// Parses `[sequence, version, checksum, age]` as the Lua scripts return them ('' for
    /// absent).
    pub(crate) fn parse(key: &str, fields: &[String]) -> Result<Self, StoreError> {
        let corrupt = |problem: &str| StoreError::Corrupt {
            key: key.to_string(),
            problem: problem.to_string(),
        };
        let [sequence, version, checksum, age] = fields else {
            return Err(corrupt("short entity state reply"));
        };
        // A clock step back can make it negative: a change just now.
        let changed_ms_ago = (!age.is_empty()).then(|| age.parse::<i64>().map_or(0, |ms| ms.max(0) as u64));
        let last_sequence = match sequence.as_str() {
            "" => None,
            raw => Some(raw.parse().map_err(|_| corrupt("sequence is not a number"))?),
        };
        let head = match (version.as_str(), checksum.as_str()) {
            ("", "") => EntityHead::default(),
            ("", _) | (_, "") => return Err(corrupt("half-written entity head")),
            (version, checksum) => EntityHead {
                version: version.parse().map_err(|_| corrupt("version is not a number"))?,
                checksum: checksum.to_string(),
            },
        };
        Ok(Self {
            last_sequence,
            head,
            changed_ms_ago,
        })
    }
}

/// Takes the lock (KEYS[1]) for ARGV[1]; when held, returns {'1', sequence, version,
/// checksum, ms since the last change} of the entity (KEYS[2]), else {'0'}.
static LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'0'}
end
local head = redis.call('HMGET', KEYS[2], 'sequence', 'version', 'checksum', 'changed_at')
local age = ''
if head[4] then
  local t = redis.call('TIME')
  age = tostring(math.floor(tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 - tonumber(head[4])))
end
return {'1', head[1] or '', head[2] or '', head[3] or '', age}
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

    /// Waits until `owner` holds the lock of `entity`, and returns the entity's state. A
    /// holder that died releases the lock when its lease runs out.
    pub async fn lock_entity(&self, entity: &str, owner: &str) -> Result<EntityState, StoreError> {
        let script = &*LOCK;
        let key = self.lock_key(entity);
        let entity_key = self.entity_key(entity);
        loop {
            let mut conn = self.conn.clone();
            let reply: Vec<String> = script
                .key(&key)
                .key(&entity_key)
                .arg(owner)
                .arg(self.lease_ms)
                .invoke_async(&mut conn)
                .await?;
            if reply.first().map(String::as_str) == Some("1") {
                return EntityState::parse(&entity_key, &reply[1..]);
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
}
