//! The fleet's rate-limit budget (`budget:<client id>:…`): a GCRA on Redis's own clock, so it
//! runs on any Redis (managed ones included) and every replica sees the same time, and the
//! pauses a 429 asks for.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Store, StoreError};

/// The fleet's GCRA: returns 0 when a call may go now, else the milliseconds to wait; negative
/// when the call's route family is paused (no token taken: the caller waits outside its turn).
/// The theoretical arrival time lives in KEYS[1], the client's 429 pause (an instant, ms) in
/// KEYS[2], the route family's in KEYS[3].
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local family_paused = tonumber(redis.call('GET', KEYS[3]) or '0')
if family_paused > now then
  return -math.ceil(family_paused - now)
end
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then
  return math.ceil(paused - now)
end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
if tat - tolerance > now then
  return math.ceil(tat - tolerance - now)
end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil(tolerance + interval) + 1000)
return 0
"#,
    )
});

/// Pauses the fleet's budget for ARGV[1] ms unless a longer pause is in force.
static PAUSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local until_ms = now + tonumber(ARGV[1])
if until_ms > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], tostring(until_ms), 'PX', ARGV[1])
end
return 1
"#,
    )
});

impl Store {
    /// One try at the fleet's budget over `[tat, client pause, family pause]` keys: 0 when a
    /// call may go now, else the milliseconds to wait; negative when the family is paused.
    pub async fn budget_take(
        &self,
        keys: [&str; 3],
        interval_ms: f64,
        tolerance_ms: f64,
    ) -> Result<i64, StoreError> {
        let mut conn = self.conn.clone();
        let [tat, pause, family_pause] = keys;
        Ok(TAKE
            .key(tat)
            .key(pause)
            .key(family_pause)
            .arg(interval_ms)
            .arg(tolerance_ms)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Pauses the budget kept at `key` for `wait`, unless a longer pause is in force.
    pub async fn budget_pause(&self, key: &str, wait: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = PAUSE
            .key(key)
            .arg(wait.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
