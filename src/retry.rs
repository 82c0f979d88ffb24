//! The retry policy for Genesys calls (docs/architecture.md, section 4.7).
//!
//! Transient errors (408, 5xx but 501, network) are retried in-process with exponential backoff
//! and full jitter, up to `max_attempts`. Throttling is not failure: the client waits out 429s
//! itself and they never reach this policy as an attempt. Permanent errors and conflicts are
//! returned at once, except where the caller knows one may be Genesys' eventual consistency (a
//! 404 right after a create, a 409 right after its own checkin): [`RetryPolicy::run_through_lag`]
//! retries those for up to `consistency_window`.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::genesys::{ErrorClass, GenesysError};
use crate::telemetry::{self, RetryStage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// How long an answer that may be Genesys' consistency lag is retried before it counts.
    pub consistency_window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            consistency_window: Duration::from_secs(5),
        }
    }
}

/// A result and how many attempts it took.
#[derive(Debug)]
pub struct Attempted<T> {
    pub result: Result<T, GenesysError>,
    pub attempts: u32,
}

impl RetryPolicy {
    /// Upper bound of the wait after failed attempt `attempt` (1-based); the real wait is a
    /// uniform draw below it ("full jitter"), so replicas that failed together spread out.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The wait after failed attempt `attempt`: a uniform draw below [`Self::backoff_ceiling`].
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.backoff_ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ceiling))
    }

    /// Whether a failure of `class` is worth another in-process attempt.
    pub fn retries(class: ErrorClass) -> bool {
        match class {
            ErrorClass::Transient => true,
            // The client already waited out every 429 it could; what is left exceeded its patience.
            ErrorClass::RateLimited | ErrorClass::Permanent | ErrorClass::Conflict => false,
        }
    }

    /// Runs `op` (given the 1-based attempt number) until it succeeds, fails for good, or the
    /// attempts run out.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Attempted<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, GenesysError>>,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(value) => {
                    return Attempted {
                        result: Ok(value),
                        attempts: attempt,
                    }
                }
                Err(err) if Self::retries(err.class()) && attempt < self.max_attempts => {
                    let wait = self.backoff(attempt);
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error.message = %err, "Transient Genesys error; retrying.");
                    telemetry::retried(RetryStage::InProcess);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(err) => {
                    return Attempted {
                        result: Err(err),
                        attempts: attempt,
                    }
                }
            }
        }
    }
}

impl RetryPolicy {
    /// The policy of every Genesys call, as configured.
    pub fn for_genesys(config: &crate::config::GenesysConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            consistency_window: Duration::from_millis(config.consistency_window_ms),
            ..Self::default()
        }
    }

    /// [`RetryPolicy::run`], and while `lagging(error)` holds, again with backoff until
    /// `consistency_window` has passed since the first attempt: for answers that are Genesys'
    /// eventual consistency rather than the truth (CX-as-Code retries the same: a 404 right after
    /// a create, a 409 "version must match" right after a checkin).
    pub async fn run_through_lag<T, F, Fut>(
        &self,
        lagging: impl Fn(&GenesysError) -> bool,
        mut op: F,
    ) -> Attempted<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, GenesysError>>,
    {
        let deadline = tokio::time::Instant::now() + self.consistency_window;
        let mut round = 0;
        loop {
            let attempted = self.run(&mut op).await;
            let Err(err) = &attempted.result else {
                return attempted;
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !lagging(err) || left.is_zero() {
                return attempted;
            }
            round += 1;
            let wait = self.backoff_ceiling(round).min(left);
            tracing::info!(wait_ms = wait.as_millis() as u64, error.message = %err, "Genesys may not show a recent change yet; reading again.");
            telemetry::retried(RetryStage::Consistency);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert_eq!(policy.backoff_ceiling(1), Duration::from_millis(100));
        assert_eq!(policy.backoff_ceiling(2), Duration::from_millis(200));
        assert_eq!(policy.backoff_ceiling(4), Duration::from_millis(800));
        assert_eq!(policy.backoff_ceiling(5), Duration::from_secs(1));
        assert_eq!(policy.backoff_ceiling(40), Duration::from_secs(1));
    }

    #[test]
    fn only_transient_errors_are_retried_here() {
        assert!(RetryPolicy::retries(ErrorClass::Transient));
        assert!(!RetryPolicy::retries(ErrorClass::Permanent));
        assert!(!RetryPolicy::retries(ErrorClass::Conflict));
        assert!(!RetryPolicy::retries(ErrorClass::RateLimited));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_attempts_run_out() {
        let policy = RetryPolicy::default();
        let outcome = policy
            .run(|_| async {
                Err::<(), _>(GenesysError::Api {
                    method: "GET".into(),
                    path: "/x".into(),
                    status: 503,
                    code: "service.unavailable".into(),
                    message: String::new(),
                    context_id: String::new(),
                    retry_after: None,
                })
            })
            .await;
        assert_eq!(outcome.attempts, 3);
        assert!(outcome.result.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let outcome = RetryPolicy::default()
            .run(|_| async {
                Err::<(), _>(GenesysError::Api {
                    method: "PATCH".into(),
                    path: "/x".into(),
                    status: 404,
                    code: "not.found".into(),
                    message: String::new(),
                    context_id: String::new(),
                    retry_after: None,
                })
            })
            .await;
        assert_eq!(outcome.attempts, 1);
    }

    fn not_found() -> GenesysError {
        GenesysError::Api {
            method: "GET".into(),
            path: "/x".into(),
            status: 404,
            code: "not.found".into(),
            message: String::new(),
            context_id: String::new(),
            retry_after: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_answer_is_retried_until_the_truth_shows() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let outcome = RetryPolicy::default()
            .run_through_lag(
                |err| err.status() == Some(404),
                |_| {
                    let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move {
                        if n < 3 {
                            Err(not_found())
                        } else {
                            Ok(n)
                        }
                    }
                },
            )
            .await;
        assert_eq!(outcome.result.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_answer_counts_once_the_window_has_passed() {
        let policy = RetryPolicy::default();
        let started = tokio::time::Instant::now();
        let outcome = policy
            .run_through_lag(|_| true, |_| async { Err::<(), _>(not_found()) })
            .await;
        assert!(outcome.result.is_err());
        let waited = started.elapsed();
        assert!(waited >= policy.consistency_window, "{waited:?}");
        assert!(
            waited < policy.consistency_window + Duration::from_secs(1),
            "{waited:?}"
        );
    }
}
