//! Stage 4: the Genesys budget. Every Genesys API call waits here first.
//!
//! A GCRA token bucket (governor) paces this process's calls at the configured requests/second
//! with a burst. Genesys limits the OAuth client, not the process, so when replicas share a
//! budget (`GENESYS_RATE_LIMIT_SCOPE=fleet`, the default) a second GCRA in Redis paces the whole
//! fleet: a Lua script on Redis's own clock, so it runs on any Redis, managed ones included,
//! and every replica sees the same time. A 429 on the OAuth client's own limit pauses the whole
//! budget until its `Retry-After`, every replica included, not just the one job that saw it. A
//! 429 on another limit (Genesys' org-wide limits on route families, shared with every other
//! integration of the org) pauses only that route family (`users` for `/api/v2/users/*`),
//! fleet-wide: presence changes stalled by someone else's traffic do not stall flow deploys.
//!
//! The pace is the configured one unless Genesys says the client may spend less
//! ([`Budget::set_allowed_per_minute`], read from the organization limits API).
//!
//! Fair share: callers wait for their turn in one of two [`Lane`]s (single jobs, batch
//! children), and while both lanes wait the turns go by weight (stride scheduling), so a single
//! change submitted during a 10,000-agent handover waits for a few calls, not for the handover.
//! Every call names its lane ([`Budget::acquire`]).

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::lane::LaneWeights;
use crate::store::{Store, StoreError};
use crate::telemetry;

use crate::lane::Lane;

/// Whose turn it is to wait for the next token: one caller at a time, picked by weight among
/// the lanes that have callers waiting.
#[derive(Debug)]
struct Turns {
    state: Mutex<TurnState>,
}

#[derive(Debug)]
struct TurnState {
    taken: bool,
    waiting: [VecDeque<oneshot::Sender<()>>; 2],
    /// Stride scheduling: a lane's pass grows by 1/weight per turn; the lowest pass goes next.
    pass: [f64; 2],
    stride: [f64; 2],
}

impl Turns {
    fn new(weights: LaneWeights) -> Self {
        Self {
            state: Mutex::new(TurnState {
                taken: false,
                waiting: [VecDeque::new(), VecDeque::new()],
                pass: [0.0; 2],
                stride: [
                    1.0 / f64::from(weights.single.max(1)),
                    1.0 / f64::from(weights.batch.max(1)),
                ],
            }),
        }
    }

    /// Waits for `lane`'s caller's turn; the turn passes on when the guard drops.
    async fn take(&self, lane: Lane) -> Turn<'_> {
        let receiver = {
            let mut state = self.state.lock().expect("turn lock is never poisoned");
            if !state.taken {
                state.taken = true;
                return Turn(self);
            }
            let i = lane.index();
            if state.waiting[i].is_empty() {
                // A lane that was idle does not bank turns: it joins at the current pass.
                let current = state.pass[1 - i];
                state.pass[i] = state.pass[i].max(current - state.stride[i]);
            }
            let (sender, receiver) = oneshot::channel();
            state.waiting[i].push_back(sender);
            receiver
        };
        let mut waiting = Waiting {
            turns: self,
            receiver: Some(receiver),
        };
        let handed = waiting.receiver.as_mut().expect("set above").await;
        waiting.receiver = None;
        debug_assert!(handed.is_ok(), "a waiting sender is only dropped after a send");
        Turn(self)
    }

    /// Hands the turn to the next waiting caller, or frees it.
    fn pass_on(&self) {
        let mut state = self.state.lock().expect("turn lock is never poisoned");
        loop {
            let candidates = [0, 1].into_iter().filter(|&i| !state.waiting[i].is_empty());
            let Some(next) = candidates.min_by(|&a, &b| state.pass[a].total_cmp(&state.pass[b])) else {
                state.taken = false;
                return;
            };
            let sender = state.waiting[next].pop_front().expect("a non-empty lane");
            if sender.send(()).is_ok() {
                state.pass[next] += state.stride[next];
                return;
            }
            // That caller gave up waiting; try the next.
        }
    }
}

/// The current turn; passed on when dropped, so a cancelled call cannot keep it.
struct Turn<'a>(&'a Turns);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.pass_on();
    }
}

/// A caller waiting for its turn. Dropped after the turn was handed over but before it was
/// seen, it passes the turn on.
struct Waiting<'a> {
    turns: &'a Turns,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut receiver) = self.receiver.take() {
            receiver.close();
            if receiver.try_recv().is_ok() {
                self.turns.pass_on();
            }
        }
    }
}

/// The budget shared by every replica calling as one OAuth client.
#[derive(Debug, Clone)]
struct Fleet {
    store: Store,
    client_id: String,
    tat_key: String,
    pause_key: String,
}

impl Fleet {
    fn family_pause_key(&self, family: &str) -> String {
        self.store.budget_key(&self.client_id, &format!("pause:{family}"))
    }
}

/// The pace calls are made at: the configured one, or less when Genesys allows less.
#[derive(Debug)]
struct Pace {
    limiter: DefaultDirectRateLimiter,
    per_second: f64,
    /// Milliseconds between calls at the steady rate (the fleet's GCRA).
    interval_ms: f64,
    /// How far ahead of the steady rate a burst may run, in milliseconds.
    tolerance_ms: f64,
}

impl Pace {
    fn new(per_second: f64, burst: u32) -> Self {
        let interval = Duration::from_secs_f64(1.0 / per_second);
        let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        let quota = Quota::with_period(interval)
            .expect("a positive rate has a positive period")
            .allow_burst(burst);
        let interval_ms = 1000.0 / per_second;
        Self {
            limiter: RateLimiter::direct(quota),
            per_second,
            interval_ms,
            tolerance_ms: interval_ms * f64::from(burst.get() - 1),
        }
    }
}

pub struct Budget {
    /// The OAuth client this budget is for.
    client: String,
    /// Whether its metrics carry the `client` label (a client of a pool of several).
    labelled: bool,
    turns: Turns,
    configured: (u32, u32),
    pace: Mutex<Arc<Pace>>,
    fleet: Option<Fleet>,
    /// No call starts before this instant (set by a 429's `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
    /// Route families paused by a 429 on a limit that is not the client's own.
    families_paused: Mutex<HashMap<String, Instant>>,
    /// 429 responses seen: throttling, counted apart from errors.
    throttled: AtomicU64,
    /// Callers waiting in [`Budget::acquire`] now: how a pool of clients tells the least busy.
    waiting: AtomicUsize,
}

/// What [`Budget::acquire_unless_paused`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// The call may go.
    Taken,
    /// The client is paused (a 429 seen here, or the fleet's budget asks for a long wait): no
    /// token was taken; a pool sends the call through another client.
    Paused,
}

/// A wait the fleet's budget asks for beyond this is taken as the client paused (another
/// replica's 429, or the fleet spending it all): a pool tries another client meanwhile.
const FLEET_WAIT_ELSEWHERE: Duration = Duration::from_secs(1);

/// Counts a caller waiting in a budget while it lives.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Self(waiting)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("client", &self.client)
            .field("throttled", &self.throttled())
            .finish_non_exhaustive()
    }
}

impl Budget {
    /// # Panics
    /// If `rps` or `burst` is zero; configuration validation rules that out.
    pub fn new(rps: u32, burst: u32, weights: LaneWeights) -> Self {
        Self::build("", false, rps, burst, weights)
    }

    /// The budget of OAuth client `client` (its id), the worker's only one: its metrics as they
    /// always were.
    ///
    /// # Panics
    /// If `rps` or `burst` is zero; configuration validation rules that out.
    pub fn for_client(client: &str, rps: u32, burst: u32, weights: LaneWeights) -> Self {
        Self::build(client, false, rps, burst, weights)
    }

    /// The budget of OAuth client `client` of a pool of several: its metrics carry the client
    /// id as the `client` label (never the secret).
    ///
    /// # Panics
    /// If `rps` or `burst` is zero; configuration validation rules that out.
    pub fn for_pool_client(client: &str, rps: u32, burst: u32, weights: LaneWeights) -> Self {
        Self::build(client, true, rps, burst, weights)
    }

    fn build(client: &str, labelled: bool, rps: u32, burst: u32, weights: LaneWeights) -> Self {
        assert!(rps > 0 && burst > 0, "rate limit rps and burst are positive");
        let budget = Self {
            client: client.to_string(),
            labelled,
            turns: Turns::new(weights),
            configured: (rps, burst),
            pace: Mutex::new(Arc::new(Pace::new(f64::from(rps), burst))),
            fleet: None,
            paused_until: Mutex::new(None),
            families_paused: Mutex::new(HashMap::new()),
            throttled: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
        };
        telemetry::budget_configured(budget.label(), f64::from(rps));
        telemetry::budget_effective(budget.label(), f64::from(rps));
        budget
    }

    /// Shares the budget with every replica calling as `client_id`, through `store`.
    pub fn shared(mut self, store: Store, client_id: &str) -> Self {
        self.fleet = Some(Fleet {
            tat_key: store.budget_key(client_id, "tat"),
            pause_key: store.budget_key(client_id, "pause"),
            client_id: client_id.to_string(),
            store,
        });
        self
    }

    fn pace(&self) -> Arc<Pace> {
        self.pace.lock().expect("budget lock is never poisoned").clone()
    }

    /// The requests per second calls are paced at now.
    pub fn per_second(&self) -> f64 {
        self.pace().per_second
    }

    /// What Genesys allows this OAuth client (the organization limits API's
    /// `client.credentials.token.rate.per.minute`), or `None` when it says nothing: the budget
    /// paces at the lower of that and the configuration. Returns whether the pace changed.
    pub fn set_allowed_per_minute(&self, allowed: Option<u32>) -> bool {
        let (rps, burst) = self.configured;
        let configured = f64::from(rps);
        let (per_second, burst) = match allowed.map(|per_minute| f64::from(per_minute.max(1)) / 60.0) {
            // A burst above one second of the allowance would draw 429s at every start.
            Some(allowed) if allowed < configured => (allowed, burst.min(allowed.ceil() as u32).max(1)),
            _ => (configured, burst),
        };
        let mut pace = self.pace.lock().expect("budget lock is never poisoned");
        if (pace.per_second - per_second).abs() < 1e-9 {
            return false;
        }
        *pace = Arc::new(Pace::new(per_second, burst));
        telemetry::budget_effective(self.label(), per_second);
        true
    }

    /// Waits until a call of `lane` on `family` (see [`route_family`]) may be made: the
    /// family's pause, then the caller's turn in its lane, the client's pause and bucket, then
    /// the fleet's.
    ///
    /// # Errors
    /// When the fleet's budget cannot be consulted (Redis unreachable): no call is made.
    pub async fn acquire(&self, lane: Lane, family: &str) -> Result<(), BudgetError> {
        self.acquire_or_not(lane, family, false).await.map(drop)
    }

    /// Like [`Budget::acquire`], but a paused client (a 429 here, or a fleet wait longer than
    /// a second) or a paused route family is not waited out: [`Taken::Paused`], no token taken,
    /// for a pool to send the call through another client.
    ///
    /// # Errors
    /// As [`Budget::acquire`].
    pub async fn acquire_unless_paused(&self, lane: Lane, family: &str) -> Result<Taken, BudgetError> {
        self.acquire_or_not(lane, family, true).await
    }

    async fn acquire_or_not(&self, lane: Lane, family: &str, elsewhere: bool) -> Result<Taken, BudgetError> {
        let _queued = Queued::new(&self.waiting);
        let waiting = std::time::Instant::now();
        let taken = self.take(lane, family, elsewhere).await;
        if matches!(taken, Ok(Taken::Taken)) {
            telemetry::budget_waited(self.label(), lane.as_str(), waiting.elapsed().as_secs_f64());
        }
        taken
    }

    /// The OAuth client this budget is for.
    pub fn client(&self) -> &str {
        &self.client
    }

    /// The `client` label of this budget's metrics and its calls' (a client of a pool of
    /// several), or `None`.
    pub fn label(&self) -> Option<&str> {
        self.labelled.then_some(self.client.as_str())
    }

    /// Callers waiting for this budget now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// How long the whole client is still paused here (a 429 on its own limit), if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock().expect("budget lock is never poisoned"))?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// Sleeps while `family` is paused here: all a call whose token was already taken (a
    /// gathered bulk call) still waits for. A pause longer than [`MAX_FAMILY_WAIT`] is not
    /// waited out: the job is parked for a retry instead, so a family stalled by others does not
    /// keep the worker's job slots from other work.
    ///
    /// # Errors
    /// [`BudgetError::FamilyPaused`] for such a pause.
    pub async fn wait_family(&self, family: &str) -> Result<(), BudgetError> {
        loop {
            let until = self
                .families_paused
                .lock()
                .expect("budget lock is never poisoned")
                .get(family)
                .copied();
            match until {
                Some(until) if until > Instant::now() + MAX_FAMILY_WAIT => {
                    return Err(BudgetError::FamilyPaused {
                        family: family.to_string(),
                        wait: until - Instant::now(),
                    })
                }
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return Ok(()),
            }
        }
    }

    /// Whether calls of route `family` are paused here now.
    pub fn family_paused(&self, family: &str) -> bool {
        self.families_paused
            .lock()
            .expect("budget lock is never poisoned")
            .get(family)
            .is_some_and(|until| *until > Instant::now())
    }

    async fn take(&self, lane: Lane, family: &str, elsewhere: bool) -> Result<Taken, BudgetError> {
        loop {
            // In a pool, another client takes a call of a family paused here.
            if elsewhere && self.family_paused(family) {
                return Ok(Taken::Paused);
            }
            // Outside the turn: a paused family must not hold up the others.
            self.wait_family(family).await?;
            let _turn = self.turns.take(lane).await;
            if self.family_paused(family) {
                continue;
            }
            loop {
                let pause = *self.paused_until.lock().expect("budget lock is never poisoned");
                match pause {
                    Some(until) if until > Instant::now() && elsewhere => return Ok(Taken::Paused),
                    Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                    _ => break,
                }
            }
            let pace = self.pace();
            pace.limiter.until_ready().await;
            let Some(fleet) = &self.fleet else {
                return Ok(Taken::Taken);
            };
            let family_key = fleet.family_pause_key(family);
            loop {
                let wait_ms = fleet
                    .store
                    .budget_take(
                        [&fleet.tat_key, &fleet.pause_key, &family_key],
                        pace.interval_ms,
                        pace.tolerance_ms,
                    )
                    .await?;
                match wait_ms {
                    0 => return Ok(Taken::Taken),
                    // Paused by a 429 seen here since this call passed the pause (the fleet's
                    // answer is that pause): another client of the pool takes the call.
                    wait if elsewhere && wait > 0 && self.paused_for().is_some() => return Ok(Taken::Paused),
                    wait if elsewhere && wait as u128 > FLEET_WAIT_ELSEWHERE.as_millis() => {
                        // Paused by another replica, or spent by the fleet: here too, for that
                        // long, so the pool's next calls go elsewhere at once.
                        self.pause_here(Duration::from_millis(wait as u64));
                        return Ok(Taken::Paused);
                    }
                    wait if wait > 0 => tokio::time::sleep(Duration::from_millis(wait as u64)).await,
                    // Another replica saw the family throttled: wait with it, outside the turn.
                    paused => {
                        self.pause_family_here(family, Duration::from_millis(paused.unsigned_abs()));
                        break;
                    }
                }
            }
        }
    }

    /// Pauses every caller for `wait` (a 429's `Retry-After` on the client's own limit), every
    /// replica included; a longer pause already in force is kept.
    pub async fn pause(&self, wait: Duration) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        self.pause_here(wait);
        if let Some(fleet) = &self.fleet {
            fleet_pause(fleet, &fleet.pause_key, wait).await;
        }
    }

    fn pause_here(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().expect("budget lock is never poisoned");
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// Pauses the calls of one route `family` for `wait` (a 429 on a limit that is not the
    /// client's own), every replica included; other families go on.
    pub async fn pause_family(&self, family: &str, wait: Duration) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        self.pause_family_here(family, wait);
        if let Some(fleet) = &self.fleet {
            fleet_pause(fleet, &fleet.family_pause_key(family), wait).await;
        }
    }

    fn pause_family_here(&self, family: &str, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self
            .families_paused
            .lock()
            .expect("budget lock is never poisoned");
        let entry = paused.entry(family.to_string()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
}

async fn fleet_pause(fleet: &Fleet, key: &str, wait: Duration) {
    if let Err(err) = fleet.store.budget_pause(key, wait).await {
        tracing::warn!(error.message = %err, "Could not pause the fleet's budget; pausing this replica only.");
    }
}

/// The longest a call waits for its route family's pause (a limit other integrations share)
/// before its job is parked in a retry queue.
pub const MAX_FAMILY_WAIT: Duration = Duration::from_secs(10);

/// Why no Genesys call may go now.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The fleet's budget cannot be consulted (Redis unreachable): nothing was sent.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The call's route family is paused by a limit shared beyond this client for longer than
    /// a call waits.
    #[error("route family {family} is paused for {wait:?} by a limit other integrations share")]
    FamilyPaused { family: String, wait: Duration },
}

/// The route family of an API path: its first segment after `/api/v2/` (`users` for
/// `/api/v2/users/{id}/presences/purecloud`), the unit Genesys' org-wide limits apply to.
pub fn route_family(path: &str) -> &str {
    let rest = path.trim_start_matches('/');
    let rest = rest.strip_prefix("api/v2/").unwrap_or(rest);
    rest.split(['/', '?']).next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const WEIGHTS: LaneWeights = LaneWeights { single: 3, batch: 1 };

    #[tokio::test]
    async fn burst_is_served_at_once_then_calls_are_paced() {
        let budget = Budget::new(20, 3, WEIGHTS);
        let start = std::time::Instant::now();
        for _ in 0..3 {
            budget.acquire(Lane::Single, "users").await.unwrap();
        }
        // Within one pacing interval (50 ms at 20/s): the burst did not wait.
        assert!(
            start.elapsed() < Duration::from_millis(45),
            "{:?}",
            start.elapsed()
        );
        for _ in 0..4 {
            budget.acquire(Lane::Single, "users").await.unwrap();
        }
        // Four more at 20/s need at least ~150 ms after the burst.
        assert!(
            start.elapsed() >= Duration::from_millis(140),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_single_call_overtakes_a_queue_of_batch_calls() {
        let budget = Arc::new(Budget::new(50, 1, WEIGHTS));
        let order = Arc::new(Mutex::new(Vec::new()));
        let call = |lane: Lane, n: usize| {
            let (budget, order) = (budget.clone(), order.clone());
            tokio::spawn(async move {
                budget.acquire(lane, "users").await.unwrap();
                order.lock().unwrap().push((lane, n));
            })
        };
        let mut calls: Vec<_> = (0..20).map(|n| call(Lane::Batch, n)).collect();
        // The batch lane is queued (a call every 20 ms) when the single calls arrive.
        tokio::time::sleep(Duration::from_millis(30)).await;
        calls.extend((0..2).map(|n| call(Lane::Single, n)));
        for handle in calls {
            handle.await.unwrap();
        }
        let order = order.lock().unwrap();
        let singles: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, (lane, _))| *lane == Lane::Single)
            .map(|(position, _)| position)
            .collect();
        // Without lanes they would be last (20, 21); with weights 3:1 they go within a turn
        // or two of arriving, behind the ~2 batch calls already made.
        assert_eq!(singles.len(), 2);
        assert!(singles.iter().all(|&p| p <= 5), "{order:?}");
        // And the batch lane is not starved: every batch call was made.
        assert_eq!(order.len(), 22);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_keep_the_turn() {
        let budget = Arc::new(Budget::new(20, 1, WEIGHTS));
        budget.acquire(Lane::Single, "users").await.unwrap();
        // Waits for the next token (50 ms), then is dropped mid-wait.
        let cancelled =
            tokio::time::timeout(Duration::from_millis(5), budget.acquire(Lane::Single, "users")).await;
        assert!(cancelled.is_err());
        let next =
            tokio::time::timeout(Duration::from_millis(500), budget.acquire(Lane::Single, "users")).await;
        assert!(next.is_ok(), "the turn was lost with the cancelled caller");
    }

    #[tokio::test]
    async fn a_pause_holds_every_caller() {
        let budget = Budget::new(1000, 10, WEIGHTS);
        budget.pause(Duration::from_millis(120)).await;
        let start = std::time::Instant::now();
        budget.acquire(Lane::Single, "users").await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(110));
        assert_eq!(budget.throttled(), 1);
    }

    #[tokio::test]
    async fn a_paused_route_family_holds_only_its_own_calls() {
        let budget = Arc::new(Budget::new(1000, 10, WEIGHTS));
        budget.pause_family("users", Duration::from_millis(300)).await;
        let paused = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                budget.acquire(Lane::Single, "users").await.unwrap();
                start.elapsed()
            })
        };
        let start = std::time::Instant::now();
        for _ in 0..5 {
            budget.acquire(Lane::Single, "taskmanagement").await.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
        assert!(paused.await.unwrap() >= Duration::from_millis(280));
        assert_eq!(budget.throttled(), 1);
    }

    #[test]
    fn genesys_allowing_less_than_configured_sets_the_pace() {
        let budget = Budget::new(12, 12, WEIGHTS);
        assert_eq!(budget.per_second(), 12.0);
        assert!(budget.set_allowed_per_minute(Some(240)));
        assert_eq!(budget.per_second(), 4.0);
        assert!(!budget.set_allowed_per_minute(Some(240)), "unchanged");
        // Allowing more than configured does not raise the pace above the configuration.
        assert!(budget.set_allowed_per_minute(Some(6000)));
        assert_eq!(budget.per_second(), 12.0);
        assert!(budget.set_allowed_per_minute(Some(120)));
        assert!(budget.set_allowed_per_minute(None));
        assert_eq!(budget.per_second(), 12.0);
    }

    #[tokio::test]
    async fn the_lower_pace_is_kept() {
        let budget = Budget::new(100, 1, WEIGHTS);
        budget.set_allowed_per_minute(Some(1200)); // 20/s
        let start = std::time::Instant::now();
        for _ in 0..5 {
            budget.acquire(Lane::Single, "users").await.unwrap();
        }
        // Five calls at 20/s with a burst of 1: at least 4 intervals of 50 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_paused_client_is_reported_not_waited_for_when_asked() {
        let budget = Budget::for_client("a", 1000, 10, WEIGHTS);
        assert_eq!(budget.paused_for(), None);
        budget.pause(Duration::from_secs(5)).await;
        assert!(budget.paused_for().is_some_and(|d| d > Duration::from_secs(4)));
        let start = std::time::Instant::now();
        let taken = budget.acquire_unless_paused(Lane::Single, "users").await.unwrap();
        assert_eq!(taken, Taken::Paused);
        assert!(start.elapsed() < Duration::from_millis(100));
        assert_eq!(budget.waiting(), 0);
        let free = Budget::for_client("b", 1000, 10, WEIGHTS);
        assert_eq!(
            free.acquire_unless_paused(Lane::Single, "users").await.unwrap(),
            Taken::Taken
        );
        // A family paused here: its calls are reported too, the others go.
        free.pause_family("users", Duration::from_secs(5)).await;
        assert_eq!(
            free.acquire_unless_paused(Lane::Single, "users").await.unwrap(),
            Taken::Paused
        );
        assert_eq!(
            free.acquire_unless_paused(Lane::Single, "flows").await.unwrap(),
            Taken::Taken
        );
    }

    #[test]
    fn route_families_are_the_first_segment_after_api_v2() {
        assert_eq!(route_family("/api/v2/users/u/presences/purecloud"), "users");
        assert_eq!(route_family("/api/v2/users/presences/bulk"), "users");
        assert_eq!(route_family("/api/v2/flows/actions/publish?flow=f"), "flows");
        assert_eq!(route_family("api/v2/taskmanagement/workitems"), "taskmanagement");
        assert_eq!(route_family("/api/v2/flows?name=x"), "flows");
    }

    #[tokio::test]
    async fn a_family_paused_longer_than_a_call_waits_is_refused_at_once() {
        let budget = Budget::new(1000, 10, WEIGHTS);
        budget.pause_family("users", Duration::from_secs(60)).await;
        let start = std::time::Instant::now();
        let refused = budget.acquire(Lane::Single, "users").await;
        assert!(
            matches!(refused, Err(BudgetError::FamilyPaused { .. })),
            "{refused:?}"
        );
        assert!(start.elapsed() < Duration::from_millis(100));
        budget.acquire(Lane::Single, "flows").await.unwrap();
    }
}
