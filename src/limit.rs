//! Stage 4: the Genesys budget. Every Genesys API call waits here first.
//!
//! A GCRA token bucket (governor) paces calls at the configured requests/second with a burst.
//! A 429 pauses the whole budget until its `Retry-After`, not just the one job that saw it:
//! Genesys limits the OAuth client, so every in-flight job would hit the same wall.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

pub struct Budget {
    limiter: DefaultDirectRateLimiter,
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
            paused_until: Mutex::new(None),
            throttled: AtomicU64::new(0),
        }
    }

    /// Waits until a call may be made.
    pub async fn acquire(&self) {
        loop {
            let pause = *self.paused_until.lock().expect("budget lock is never poisoned");
            match pause {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        self.limiter.until_ready().await;
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
            budget.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(30));
        for _ in 0..4 {
            budget.acquire().await;
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
        budget.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(110));
        assert_eq!(budget.throttled(), 1);
    }
}
