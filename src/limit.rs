//! Stage 4: the Genesys budget. Every Genesys API call waits here first.
//!
//! A GCRA token bucket (governor) paces this process's calls at the configured requests/second
//! with a burst. Genesys limits the OAuth client, not the process, so when replicas share a
//! budget (`GENESYS_RATE_LIMIT_SCOPE=fleet`, the default) a second GCRA in Redis paces the whole
//! fleet: a Lua script on Redis's own clock, so it runs on any Redis, managed ones included,
//! and every replica sees the same time. A 429 pauses the whole budget until its `Retry-After`,
//! every replica included, not just the one job that saw it.

use std::sync::LazyLock;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use redis::Script;
use tokio::time::Instant;

use crate::store::{Store, StoreError};

/// The fleet's GCRA: returns 0 when a call may go now, else the milliseconds to wait. The
/// theoretical arrival time lives in KEYS[1], a 429 pause (an instant, ms) in KEYS[2].
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
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

/// The budget shared by every replica calling as one OAuth client.
#[derive(Debug, Clone)]
struct Fleet {
    store: Store,
    tat_key: String,
    pause_key: String,
    /// Milliseconds between calls at the steady rate.
    interval_ms: f64,
    /// How far ahead of the steady rate a burst may run, in milliseconds.
    tolerance_ms: f64,
}

pub struct Budget {
    limiter: DefaultDirectRateLimiter,
    fleet: Option<Fleet>,
    /// No call starts before this instant (set by a 429's `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
    /// 429 responses seen: throttling, counted apart from errors.
    throttled: AtomicU64,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("throttled", &self.throttled())
            .finish_non_exhaustive()
    }
}

impl Budget {
    /// # Panics
    /// If `rps` or `burst` is zero; configuration validation rules that out.
    pub fn new(rps: u32, burst: u32) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(rps).expect("rate limit rps is positive"))
            .allow_burst(NonZeroU32::new(burst).expect("rate limit burst is positive"));
        Self {
            limiter: RateLimiter::direct(quota),
            fleet: None,
            paused_until: Mutex::new(None),
            throttled: AtomicU64::new(0),
        }
    }

    /// Shares the budget with every replica calling as `client_id`, through `store`.
    pub fn shared(mut self, store: Store, client_id: &str, rps: u32, burst: u32) -> Self {
        let interval_ms = 1000.0 / f64::from(rps.max(1));
        self.fleet = Some(Fleet {
            tat_key: store.budget_key(client_id, "tat"),
            pause_key: store.budget_key(client_id, "pause"),
            store,
            interval_ms,
            tolerance_ms: interval_ms * f64::from(burst.max(1) - 1),
        });
        self
    }

    /// Waits until a call may be made: the local pause and bucket, then the fleet's.
    ///
    /// # Errors
    /// When the fleet's budget cannot be consulted (Redis unreachable): no call is made.
    pub async fn acquire(&self) -> Result<(), StoreError> {
        loop {
            let pause = *self.paused_until.lock().expect("budget lock is never poisoned");
            match pause {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        self.limiter.until_ready().await;
        let Some(fleet) = &self.fleet else { return Ok(()) };
        let script = &*TAKE;
        loop {
            let mut conn = fleet.store.conn.clone();
            let wait_ms: i64 = script
                .key(&fleet.tat_key)
                .key(&fleet.pause_key)
                .arg(fleet.interval_ms)
                .arg(fleet.tolerance_ms)
                .invoke_async(&mut conn)
                .await?;
            if wait_ms <= 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
        }
    }

    /// Pauses the fleet's budget too (see [`Budget::pause_for`]).
    pub async fn pause_fleet(&self, wait: Duration) {
        let Some(fleet) = &self.fleet else { return };
        let mut conn = fleet.store.conn.clone();
        let paused: Result<i64, _> = PAUSE
            .key(&fleet.pause_key)
            .arg(wait.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await;
        if let Err(err) = paused {
            tracing::warn!(error.message = %err, "Could not pause the fleet's budget; pausing this replica only.");
        }
    }

    /// Pauses every caller for `wait` (a 429's `Retry-After`); a longer pause already in force
    /// is kept.
    pub fn pause_for(&self, wait: Duration) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().expect("budget lock is never poisoned");
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn burst_is_served_at_once_then_calls_are_paced() {
        let budget = Budget::new(20, 3);
        let start = std::time::Instant::now();
        for _ in 0..3 {
            budget.acquire().await.unwrap();
        }
        // Within one pacing interval (50 ms at 20/s): the burst did not wait.
        assert!(
            start.elapsed() < Duration::from_millis(45),
            "{:?}",
            start.elapsed()
        );
        for _ in 0..4 {
            budget.acquire().await.unwrap();
        }
        // Four more at 20/s need at least ~150 ms after the burst.
        assert!(
            start.elapsed() >= Duration::from_millis(140),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_pause_holds_every_caller() {
        let budget = Budget::new(1000, 10);
        budget.pause_for(Duration::from_millis(120));
        let start = std::time::Instant::now();
        budget.acquire().await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(110));
        assert_eq!(budget.throttled(), 1);
    }
}
