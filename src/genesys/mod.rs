//! The Genesys Cloud REST client every job kind applies its changes through.
//!
//! One place for what every call needs: a bearer token ([`auth`]), the shared [`Budget`] before
//! the request, a 401 answered by one fresh grant, a 429 answered by a pause for `Retry-After`
//! (not charged to the job: of the whole budget when the limit hit is the OAuth client's own, of
//! the request's route family when it is another, such as an org-wide limit), and Genesys error
//! bodies, JSON or not, turned into [`GenesysError`]s whose [`ErrorClass`] drives the retry
//! policy. A job's calls open its [`CallGate`] right before each request goes, so a job paused
//! before its first call sends nothing.
//!
//! **The OAuth client pool.** Genesys limits each token (300 requests a minute by default), so
//! the client may call as several OAuth clients of one org (`GENESYS_CLIENTS`), each with its
//! own token, [`Budget`] (fleet-wide per client id), pauses and effective limit. A call goes
//! through the client whose budget is least busy (fewest callers waiting, by its pace; ties in
//! turn), passing over a paused one; a call waiting on a client that gets paused moves to
//! another. A call that must be made as one client (a flow deploy holds Architect's lock as
//! that client) is pinned to it ([`LaneClient::pinned`]): chosen from a key by rendezvous
//! hashing, the same on every replica and after restarts while the pool is the same.

pub mod architect;
pub mod auth;
pub mod error;
mod gate;
pub mod limits;
pub mod presence;
pub mod taskmanagement;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

pub use auth::TokenSource;
pub use error::{ErrorClass, GenesysError};
pub use gate::CallGate;

use crate::config::{GenesysConfig, OAuthClient};
use crate::lane::Lane;
use crate::limit::{route_family, Budget, BudgetError, Taken, MAX_FAMILY_WAIT};
use crate::telemetry;

/// A 429 asking for a longer wait than this is not waited out in-process (as the Go SDK does).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(180);
/// Consecutive 429s one call waits out before giving up as rate-limited.
const MAX_THROTTLED_WAITS: u32 = 20;

/// A successful reply.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub status: u16,
    pub body: T,
}

/// The Genesys error body (`ErrorBody`); only the fields the worker reads.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    context_id: String,
    /// On a 429: which of the limits applied to the request was hit.
    #[serde(default)]
    limit: Option<limits::Limit>,
}

impl ErrorBody {
    /// Reads an error answer. Gateways in front of the API answer some errors with an HTML page
    /// or nothing at all: those are described by what came back, and classified by status.
    fn read(status: u16, bytes: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(body) => body,
            Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => Self {
                message: format!("{status} with an empty body"),
                ..Self::default()
            },
            Err(_) => Self {
                message: format!("{status} with a non-JSON body of {} bytes", bytes.len()),
                ..Self::default()
            },
        }
    }
}

/// One OAuth client of the pool: its token and its budget.
#[derive(Debug)]
struct Member {
    auth: TokenSource,
    budget: Arc<Budget>,
    /// Until when calls pass this client over: the login host refused its credentials.
    refused_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Member {
    fn refused(&self) -> bool {
        self.refused_until
            .lock()
            .expect("member lock is never poisoned")
            .is_some_and(|until| until > tokio::time::Instant::now())
    }
}

/// How long a pool passes over a client whose credentials the login host refused.
const REFUSED_CLIENT_SET_ASIDE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct GenesysClient {
    http: reqwest::Client,
    api_base: Url,
    /// The OAuth client pool, in configuration order; at least one.
    members: Vec<Member>,
    /// Where the next tie between equally busy clients starts.
    next: AtomicUsize,
    pub presence: presence::PresenceDirectory,
    pub statuses: taskmanagement::StatusDirectory,
}

/// Which client of the pool a call goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The least busy client not paused, chosen per attempt.
    Any,
    /// This one (an index into the pool), paused or not.
    Member(usize),
}

impl GenesysClient {
    /// A client calling as the one OAuth client of `config`.
    pub fn new(config: &GenesysConfig, budget: Arc<Budget>) -> Self {
        let client = OAuthClient {
            id: config.client_id.clone(),
            secret: config.client_secret.clone(),
        };
        Self::pool(config, vec![(client, budget)])
    }

    /// A client calling as a pool of OAuth clients of one org, each with its own budget.
    ///
    /// # Panics
    /// If `clients` is empty; the configuration has at least one.
    pub fn pool(config: &GenesysConfig, clients: Vec<(OAuthClient, Arc<Budget>)>) -> Self {
        assert!(!clients.is_empty(), "a Genesys client needs an OAuth client");
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout())
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("genesys-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client configuration is static and valid");
        let members = clients
            .into_iter()
            .map(|(client, budget)| Member {
                auth: TokenSource::new(http.clone(), &config.login_base, &client.id, client.secret),
                budget,
                refused_until: std::sync::Mutex::new(None),
            })
            .collect();
        Self {
            http,
            api_base: config.api_base.clone(),
            members,
            next: AtomicUsize::new(0),
            presence: presence::PresenceDirectory::new(Duration::from_secs(300)),
            statuses: taskmanagement::StatusDirectory::new(Duration::from_secs(300)),
        }
    }

    /// The first OAuth client of the pool (the only one without a pool).
    pub fn client_id(&self) -> &str {
        self.members[0].auth.client_id()
    }

    /// The OAuth client ids of the pool, in configuration order.
    pub fn client_ids(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| m.auth.client_id())
    }

    /// How many OAuth clients the pool has.
    pub fn pool_size(&self) -> usize {
        self.members.len()
    }

    /// The budget of the first OAuth client of the pool.
    pub fn budget(&self) -> &Budget {
        &self.members[0].budget
    }

    /// Every client's budget, in configuration order.
    pub fn budgets(&self) -> Vec<Arc<Budget>> {
        self.members.iter().map(|m| m.budget.clone()).collect()
    }

    /// The tokens of the first OAuth client of the pool.
    pub fn auth(&self) -> &TokenSource {
        &self.members[0].auth
    }

    /// The client as the calls of one lane see it: every call waits for the budget in `lane`.
    pub fn in_lane(&self, lane: Lane) -> LaneClient<'_> {
        LaneClient {
            client: self,
            lane,
            via: Via::Any,
            gate: None,
        }
    }

    /// The pool member calls about `key` are pinned to: rendezvous hashing (the member whose
    /// hash with `key` is highest), so it depends only on the key and the pool's ids, not on
    /// their order, the replica or a restart; a client added or removed moves only the keys it
    /// gains or held.
    fn member_for(&self, key: &str) -> usize {
        (0..self.members.len())
            .max_by_key(|&i| stable_hash(key, self.members[i].auth.client_id()))
            .expect("the pool is not empty")
    }

    fn member_of(&self, client_id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.auth.client_id() == client_id)
    }

    /// Takes a call's budget token from the least busy client not paused (a paused one only
    /// when all are, the soonest free), moving on when the chosen one gets paused meanwhile.
    /// Returns the client whose token it is.
    async fn acquire_any(&self, lane: Lane, family: &str) -> Result<usize, BudgetError> {
        if self.members.len() == 1 {
            self.members[0].budget.acquire(lane, family).await?;
            return Ok(0);
        }
        loop {
            let (chosen, all_paused) = self.least_busy(family);
            let budget = &self.members[chosen].budget;
            if all_paused {
                budget.acquire(lane, family).await?;
                return Ok(chosen);
            }
            if budget.acquire_unless_paused(lane, family).await? == Taken::Taken {
                return Ok(chosen);
            }
        }
    }

    /// The client to try next for a call of `family`, and whether every client is paused.
    fn least_busy(&self, family: &str) -> (usize, bool) {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // Clients whose credentials were refused only when every client's were.
        let any_accepted = self.members.iter().any(|m| !m.refused());
        let order = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| !any_accepted || !self.members[i].refused());
        let free = order
            .clone()
            .filter(|&i| {
                let budget = &self.members[i].budget;
                budget.paused_for().is_none() && !budget.family_paused(family)
            })
            .min_by(|&a, &b| self.load(a).total_cmp(&self.load(b)));
        match free {
            Some(i) => (i, false),
            None => {
                let soonest = order
                    .min_by_key(|&i| self.members[i].budget.paused_for().unwrap_or_default())
                    .expect("the pool is not empty");
                (soonest, true)
            }
        }
    }

    /// How long the callers waiting for a client's budget need at its pace, with one more.
    fn load(&self, i: usize) -> f64 {
        let budget = &self.members[i].budget;
        (budget.waiting() + 1) as f64 / budget.per_second()
    }

    /// One logical call of `on` (its lane, pool client and gate): waits for the budget in its
    /// lane (unless `paid`: the caller took this call's token itself, from the client `via`
    /// names), authenticates, opens the job's gate, and absorbs 401 (once) and 429s.
    async fn call<T: DeserializeOwned>(
        &self,
        on: &LaneClient<'_>,
        mut paid: bool,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply<T>, GenesysError> {
        let (lane, via) = (on.lane, on.via);
        let url = self
            .api_base
            .join(path.trim_start_matches('/'))
            .expect("API paths are relative URLs");
        let family = route_family(path);
        let mut regranted = false;
        let mut throttled_waits = 0;
        let mut first_throttled = None;
        loop {
            let member = match via {
                Via::Member(i) => {
                    let member = &self.members[i];
                    if std::mem::take(&mut paid) {
                        // Its token was taken; a family paused since still holds it back.
                        member.budget.wait_family(family).await.map_err(budget_error)?;
                    } else {
                        member.budget.acquire(lane, family).await.map_err(budget_error)?;
                    }
                    member
                }
                Via::Any => &self.members[self.acquire_any(lane, family).await.map_err(budget_error)?],
            };
            let usable = || self.members.iter().filter(|m| !m.refused()).count();
            if via == Via::Any && member.refused() && usable() > 0 {
                // Set aside while this call waited for its budget.
                continue;
            }
            let client = member.auth.client_id();
            let label = member.budget.label();
            let token = match member.auth.token().await {
                Ok(token) => token,
                // Refused credentials of one client of a pool (revoked, a wrong secret): the
                // call goes through another while one is left.
                Err(err @ GenesysError::Auth { .. }) if via == Via::Any && usable() > 1 => {
                    tracing::error!(client, error.message = %err, set_aside_secs = REFUSED_CLIENT_SET_ASIDE.as_secs(), "Genesys refused this OAuth client's credentials; calling through the pool's other clients meanwhile.");
                    *member
                        .refused_until
                        .lock()
                        .expect("member lock is never poisoned") =
                        Some(tokio::time::Instant::now() + REFUSED_CLIENT_SET_ASIDE);
                    continue;
                }
                Err(err) => return Err(err),
            };
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.bearer());
            if let Some(body) = body {
                request = request.json(body);
            }
            // The last moment to give the request up: a job paused while it waited for its token
            // sends nothing (a repeat after a 401 or 429 finds its gate open already).
            if on.gate.is_some_and(|gate| !gate.open()) {
                return Err(GenesysError::Abandoned {
                    method: method.to_string(),
                    path: path.to_string(),
                });
            }
            let route = format!("{method} {}", crate::telemetry::route_template(path));
            let sent = std::time::Instant::now();
            let response = request.send().await.map_err(|source| {
                telemetry::genesys_unanswered(label, &route);
                GenesysError::Network {
                    method: method.to_string(),
                    path: path.to_string(),
                    maybe_sent: !source.is_connect(),
                    source,
                }
            })?;
            let status = response.status().as_u16();
            telemetry::genesys_answered(label, &route, status, sent.elapsed().as_secs_f64());
            let retry_after = crate::http::retry_after(response.headers());
            let bytes = response.bytes().await.map_err(|source| GenesysError::Network {
                method: method.to_string(),
                path: path.to_string(),
                maybe_sent: true,
                source,
            })?;
            if (200..300).contains(&status) {
                let body = if bytes.is_empty() {
                    b"null".as_slice()
                } else {
                    &bytes
                };
                let body = serde_json::from_slice(body).map_err(|source| GenesysError::Decode {
                    method: method.to_string(),
                    path: path.to_string(),
                    source,
                })?;
                return Ok(Reply { status, body });
            }
            let err_body = ErrorBody::read(status, &bytes);
            let limit = err_body.limit.clone();
            let error = GenesysError::Api {
                method: method.to_string(),
                path: path.to_string(),
                status,
                code: if err_body.code.is_empty() {
                    format!("http.{status}")
                } else {
                    err_body.code
                },
                message: err_body.message,
                context_id: err_body.context_id,
                retry_after,
            };
            match status {
                401 if !regranted => {
                    tracing::info!(path, client, "Genesys answered 401; requesting a new token once.");
                    member.auth.invalidate(&token).await;
                    regranted = true;
                }
                429 => {
                    let wait = retry_after.unwrap_or_else(|| backoff_without_retry_after(throttled_waits));
                    throttled_waits += 1;
                    let key = limit.as_ref().map_or("unnamed", |l| l.key.as_str());
                    telemetry::genesys_throttled(label, key, family);
                    // The pause holds every other call back even when this one gives up.
                    let own = limit.as_ref().is_none_or(limits::Limit::is_the_clients_own);
                    if own {
                        tracing::warn!(
                            path,
                            client,
                            limit = key,
                            retry_after_secs = wait.as_secs(),
                            "Genesys returned 429 on this client's limit; pausing the budget."
                        );
                        member.budget.pause(wait).await;
                    } else {
                        // A limit others spend too (an org-wide one on a route family): only the
                        // calls that count against it wait.
                        tracing::warn!(path, client, limit = key, family, retry_after_secs = wait.as_secs(), "Genesys returned 429 on a limit shared beyond this client; pausing this route family only.");
                        member.budget.pause_family(family, wait).await;
                    }
                    if wait > MAX_RETRY_AFTER || throttled_waits > MAX_THROTTLED_WAITS {
                        return Err(error);
                    }
                    // ... and not for ever: the job is parked in a retry queue instead.
                    let since = *first_throttled.get_or_insert_with(std::time::Instant::now);
                    if !own && since.elapsed() + wait > MAX_FAMILY_WAIT {
                        return Err(error);
                    }
                }
                _ => return Err(error),
            }
        }
    }
}

/// The Genesys client as one lane's calls see it (a job's calls run in its lane): cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct LaneClient<'a> {
    client: &'a GenesysClient,
    lane: Lane,
    via: Via,
    /// The job's gate, opened right before each request goes: none for calls no pause stops
    /// (a plan, the tools, a gathered call, which asks its jobs' gates itself).
    gate: Option<&'a CallGate>,
}

impl<'a> LaneClient<'a> {
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// These calls on behalf of the job `gate` belongs to: each opens the gate right before its
    /// request is sent, and is not sent ([`GenesysError::Abandoned`]) when the job was paused
    /// first. Copies made from this client ([`LaneClient::pinned`],
    /// [`LaneClient::prepay`], ...) carry the gate.
    pub fn gated(self, gate: &'a CallGate) -> Self {
        Self {
            gate: Some(gate),
            ..self
        }
    }

    /// The job's gate these calls open, if any: a gathered call carrying one of the job's
    /// requests asks it too.
    pub fn gate(&self) -> Option<&'a CallGate> {
        self.gate
    }

    /// The client underneath: its caches and the OAuth client id.
    pub fn client(&self) -> &'a GenesysClient {
        self.client
    }

    /// The OAuth client these calls are made as when pinned ([`LaneClient::pinned`]): the
    /// holder of the locks they take. Unpinned, the pool's first.
    pub fn client_id(&self) -> &'a str {
        match self.via {
            Via::Member(i) => self.client.members[i].auth.client_id(),
            Via::Any => self.client.client_id(),
        }
    }

    /// These calls, all made as one OAuth client of the pool: the one `key` (e.g. an entity)
    /// maps to, the same on every replica and after a restart while the pool is the same.
    pub fn pinned(&self, key: &str) -> Self {
        Self {
            via: Via::Member(self.client.member_for(key)),
            ..*self
        }
    }

    /// These calls, all made as the pool's OAuth client `client_id`; `None` when the pool has
    /// no such client.
    pub fn pinned_to_client(&self, client_id: &str) -> Option<Self> {
        let member = self.client.member_of(client_id)?;
        Some(Self {
            via: Via::Member(member),
            ..*self
        })
    }

    /// Whether `client_id` is one of the pool's OAuth clients.
    pub fn is_pool_client(&self, client_id: &str) -> bool {
        self.client.member_of(client_id).is_some()
    }

    /// Takes one call's budget token in this lane (from the pinned client, or the least busy),
    /// for a call made later with [`LaneClient::put_prepaid`] on the returned client.
    ///
    /// # Errors
    /// When the fleet's budget cannot be consulted, or the family is paused too long.
    pub async fn prepay(&self, path: &str) -> Result<LaneClient<'a>, BudgetError> {
        let family = route_family(path);
        let member = match self.via {
            Via::Member(i) => {
                self.client.members[i].budget.acquire(self.lane, family).await?;
                i
            }
            Via::Any => self.client.acquire_any(self.lane, family).await?,
        };
        Ok(Self {
            via: Via::Member(member),
            ..*self
        })
    }

    /// [`LaneClient::prepay`] for a gathered call, taking more of the `incoming` requests into
    /// `batch` while the token is awaited, until `limit(batch)` of them: under a saturated
    /// budget the call leaves full.
    pub async fn prepay_gathering<R>(
        &self,
        path: &str,
        batch: &mut Vec<R>,
        incoming: &mut tokio::sync::mpsc::Receiver<R>,
        limit: impl Fn(&[R]) -> usize,
    ) -> Result<LaneClient<'a>, BudgetError> {
        let token = self.prepay(path);
        tokio::pin!(token);
        loop {
            if batch.len() >= limit(batch) {
                return token.await;
            }
            tokio::select! {
                paid = &mut token => return paid,
                Some(request) = incoming.recv() => batch.push(request),
            }
        }
    }

    /// For a gathered call on a prepaid client ([`LaneClient::prepay`]): waits while the call's
    /// route family is paused, as the call itself would before it is sent, so the gatherer asks
    /// its jobs' gates after that wait (up to `MAX_FAMILY_WAIT`), right before the request goes.
    ///
    /// # Errors
    /// [`GenesysError::FamilyPaused`] for a pause longer than a call waits.
    pub(crate) async fn family_clear(&self, path: &str) -> Result<(), GenesysError> {
        match self.via {
            Via::Member(i) => self.client.members[i]
                .budget
                .wait_family(route_family(path))
                .await
                .map_err(budget_error),
            // Not prepaid: the call waits for its family as it takes its token.
            Via::Any => Ok(()),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Reply<T>, GenesysError> {
        self.client.call(self, false, Method::GET, path, None).await
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Reply<T>, GenesysError> {
        self.client
            .call(self, false, Method::PATCH, path, Some(body))
            .await
    }

    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<Reply<T>, GenesysError> {
        self.client.call(self, false, Method::PUT, path, Some(body)).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Reply<T>, GenesysError> {
        self.client
            .call(self, false, Method::POST, path, Some(body))
            .await
    }

    /// A `GET` whose budget token the caller already took ([`LaneClient::prepay`]): a gathered
    /// read of many agents' state.
    pub async fn get_prepaid<T: DeserializeOwned>(&self, path: &str) -> Result<Reply<T>, GenesysError> {
        self.client.call(self, true, Method::GET, path, None).await
    }

    /// A `PUT` whose budget token the caller already took ([`LaneClient::prepay`], which
    /// returns the client to call this on): a gathered bulk call takes it first and keeps
    /// gathering while it waits.
    pub async fn put_prepaid<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Reply<T>, GenesysError> {
        self.client.call(self, true, Method::PUT, path, Some(body)).await
    }
}

pub(crate) fn budget_error(err: BudgetError) -> GenesysError {
    match err {
        BudgetError::Store(err) => GenesysError::Budget(err.to_string()),
        BudgetError::FamilyPaused { family, wait } => GenesysError::FamilyPaused { family, wait },
    }
}

/// FNV-1a over `key`, a separator and `client_id`: stable across processes and builds (std's
/// hasher is not).
fn stable_hash(key: &str, client_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain([0xff]).chain(client_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for keys that differ at the end: a final avalanche.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

/// A 429 without `Retry-After`: 1 s doubling to a 60 s cap.
fn backoff_without_retry_after(waits: u32) -> Duration {
    Duration::from_secs(1u64 << waits.min(6)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lane::LaneWeights;

    fn pool(ids: &[&str]) -> GenesysClient {
        let base = Url::parse("http://127.0.0.1:9/").unwrap();
        let config = GenesysConfig {
            api_base: base.clone(),
            login_base: base,
            client_id: ids[0].into(),
            client_secret: crate::config::Secret::new("s"),
            rate_limit_rps: 10,
            rate_limit_burst: 1,
            rate_limit_shared: false,
            request_timeout_ms: 1000,
            max_attempts: 1,
            consistency_window_ms: 0,
            limits_refresh_secs: 0,
        };
        let weights = LaneWeights { single: 3, batch: 1 };
        let clients = ids
            .iter()
            .map(|id| {
                let client = OAuthClient {
                    id: id.to_string(),
                    secret: crate::config::Secret::new("s"),
                };
                (client, Arc::new(Budget::for_pool_client(id, 10, 1, weights)))
            })
            .collect();
        GenesysClient::pool(&config, clients)
    }

    #[test]
    fn a_key_is_pinned_to_one_client_whatever_the_order_of_the_pool() {
        let abc = pool(&["a", "b", "c"]);
        let cab = pool(&["c", "a", "b"]);
        let mut per_client = std::collections::HashMap::new();
        for n in 0..300 {
            let key = format!("flow:{n}");
            let pinned = abc.in_lane(Lane::Single).pinned(&key).client_id();
            assert_eq!(pinned, cab.in_lane(Lane::Single).pinned(&key).client_id());
            *per_client.entry(pinned).or_insert(0) += 1;
        }
        // Spread over the pool: each about a third.
        assert_eq!(per_client.len(), 3);
        assert!(
            per_client.values().all(|&n| (60..=140).contains(&n)),
            "{per_client:?}"
        );
        // A client removed moves only the keys it held.
        let ab = pool(&["a", "b"]);
        for n in 0..300 {
            let key = format!("flow:{n}");
            let before = abc.in_lane(Lane::Single).pinned(&key).client_id();
            if before != "c" {
                assert_eq!(ab.in_lane(Lane::Single).pinned(&key).client_id(), before);
            }
        }
    }

    #[tokio::test]
    async fn calls_go_to_the_least_busy_client_and_pass_over_a_paused_one() {
        let client = pool(&["a", "b", "c"]);
        // Spread in turn while nobody waits.
        let mut chosen: Vec<usize> = Vec::new();
        for _ in 0..6 {
            chosen.push(client.acquire_any(Lane::Single, "users").await.unwrap());
        }
        for i in 0..3 {
            assert_eq!(chosen.iter().filter(|&&c| c == i).count(), 2, "{chosen:?}");
        }
        client.members[1].budget.pause(Duration::from_secs(30)).await;
        for _ in 0..6 {
            let start = std::time::Instant::now();
            assert_ne!(client.acquire_any(Lane::Single, "users").await.unwrap(), 1);
            assert!(start.elapsed() < Duration::from_millis(500));
        }
        // A family paused on one client only: its calls go to the others.
        client.members[0]
            .budget
            .pause_family("flows", Duration::from_secs(30))
            .await;
        for _ in 0..4 {
            assert_eq!(client.acquire_any(Lane::Single, "flows").await.unwrap(), 2);
        }
    }
}
