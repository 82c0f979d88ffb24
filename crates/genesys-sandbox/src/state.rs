//! The sandbox's in-memory Genesys org: users, presence definitions, tokens, the rate limits'
//! token buckets, and what was seen.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::architect::FlowState;
use super::behaviour::OrgLimit;
use super::faults::Faults;
use super::limits::Limit;
use super::taskmanagement::TaskState;
use super::{user_id, RateLimit, SandboxConfig};

/// The system presences, with the ids public code shows as constant across orgs where known.
pub const SYSTEM_PRESENCES: [(&str, Option<&str>); 10] = [
    ("Available", Some("6a3af858-942f-489d-9700-5f9bcdcdae9b")),
    ("On Queue", Some("e08eaf1b-ee47-4fa9-a231-1200e284798f")),
    ("Offline", Some("ccf3c10a-aa2c-4845-8e8d-f59fa48c58e5")),
    ("Meal", Some("3fd96123-badb-4f69-bc03-1b1ccc6d8014")),
    ("Break", Some("227b37e2-f1d0-4dd0-8f50-badd7cf6d158")),
    ("Busy", Some("31fe3bac-dea6-44b7-bed7-47f91660a1a0")),
    ("Away", None),
    ("Idle", None),
    ("Training", None),
    ("Meeting", None),
];

/// The sandbox id of a presence definition by its English label.
pub fn presence_definition_id(label: &str) -> Uuid {
    SYSTEM_PRESENCES
        .iter()
        .find(|(name, _)| *name == label)
        .and_then(|(_, id)| id.map(|id| Uuid::parse_str(id).expect("listed ids are UUIDs")))
        .unwrap_or_else(|| {
            Uuid::new_v5(
                &Uuid::NAMESPACE_URL,
                format!("genesys-worker:sandbox:presence:{label}").as_bytes(),
            )
        })
}

#[derive(Debug, Clone)]
pub(crate) struct PresenceDefinition {
    pub id: Uuid,
    pub system: bool,
    /// The `systemPresence` enum value (`OnQueue`, no space, as the SDK's model lists it).
    pub system_presence: &'static str,
    pub label: &'static str,
    pub deactivated: bool,
}

/// `systemPresence` enum value of a system presence label.
fn system_presence_of(label: &'static str) -> &'static str {
    if label == "On Queue" {
        "OnQueue"
    } else {
        label
    }
}

impl PresenceDefinition {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": if self.system { "System" } else { "User" },
            "systemPresence": self.system_presence,
            "languageLabels": {"en_US": self.label},
            "deactivated": self.deactivated,
            "divisionId": "*",
            "selfUri": format!("/api/v2/presence/definitions/{}", self.id),
        })
    }

    pub fn reference(&self) -> Value {
        json!({
            "id": self.id,
            "systemPresence": self.system_presence,
            "selfUri": format!("/api/v2/presence/definitions/{}", self.id),
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct User {
    pub name: String,
    pub presence: Uuid,
    pub message: String,
    pub presence_modified: OffsetDateTime,
    /// Read through [`User::routing`]: a pending [`RoutingRevert`] may have replaced it.
    routing_status: &'static str,
    routing_started: OffsetDateTime,
    /// Set by the control API: the routing status goes back to `to` at `at` (an interaction
    /// ends), checked when read.
    routing_revert: Option<RoutingRevert>,
    pub out_of_office: OutOfOffice,
}

/// A routing status set for a while by the control API, and what it goes back to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoutingRevert {
    pub at: OffsetDateTime,
    pub to: &'static str,
}

/// A user's Out of Office (`OutOfOffice`): inactive until set.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct OutOfOffice {
    pub active: bool,
    pub indefinite: bool,
    pub start_date: Option<OffsetDateTime>,
    pub end_date: Option<OffsetDateTime>,
}

impl User {
    fn seeded(name: String, presence: Uuid, at: OffsetDateTime) -> Self {
        Self {
            name,
            presence,
            message: String::new(),
            presence_modified: at,
            routing_status: "OFF_QUEUE",
            routing_started: at,
            routing_revert: None,
            out_of_office: OutOfOffice::default(),
        }
    }

    /// The routing status as read now, and since when: a revert whose time has come has
    /// happened.
    pub fn routing(&self) -> (&'static str, OffsetDateTime) {
        match self.routing_revert {
            Some(revert) if OffsetDateTime::now_utc() >= revert.at => (revert.to, revert.at),
            _ => (self.routing_status, self.routing_started),
        }
    }

    /// When a routing status set for a while goes back, if it has not yet.
    pub fn routing_reverts_at(&self) -> Option<OffsetDateTime> {
        self.routing_revert
            .map(|revert| revert.at)
            .filter(|at| OffsetDateTime::now_utc() < *at)
    }

    /// Sets the routing status, in it since `started`; a pending revert is dropped, as the
    /// status set now replaces what it would go back from.
    pub fn set_routing(&mut self, status: &'static str, started: OffsetDateTime) {
        self.routing_status = status;
        self.routing_started = started;
        self.routing_revert = None;
    }

    /// Sets the routing status at `now` (a new start time only when it changes); with `after`,
    /// only until `now + after`, when it goes back to what it is now.
    pub fn set_routing_until(&mut self, status: &'static str, now: OffsetDateTime, after: Option<Duration>) {
        let (before, started) = self.routing();
        self.set_routing(status, if before == status { started } else { now });
        self.routing_revert = after.map(|after| RoutingRevert {
            at: now + after,
            to: before,
        });
    }
}

/// One applied change, as the control API reports it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Mutation {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub client_id: String,
    pub method: &'static str,
    pub path: String,
    pub entity: String,
    pub body: Value,
}

/// Requests per route template and status.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub requests: BTreeMap<(String, u16), u64>,
    /// 429s per `limit.key` of the limit that refused them.
    pub throttled_by: BTreeMap<String, u64>,
    /// Requests served whose response was then dropped (a fault).
    pub dropped_responses: u64,
    /// Connections closed before any answer (a fault or the gateway behaviour): nothing served.
    pub reset_connections: u64,
    /// Authenticated API requests per OAuth client id: all of them, and the 429s among them.
    pub clients: BTreeMap<String, ClientStats>,
}

/// What one OAuth client's requests met.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct ClientStats {
    pub requests: u64,
    pub throttled: u64,
}

impl Stats {
    pub fn count(&mut self, route: String, status: u16) {
        *self.requests.entry((route, status)).or_default() += 1;
    }

    pub fn count_throttled(&mut self, route: String, limit: &Limit) {
        self.count(route, 429);
        *self.throttled_by.entry(limit.key.clone()).or_default() += 1;
    }

    /// An authenticated API request of `client`, refused by a rate limit or not.
    pub fn count_client(&mut self, client: &str, throttled: bool) {
        let stats = self.clients.entry(client.to_string()).or_default();
        stats.requests += 1;
        stats.throttled += u64::from(throttled);
    }
}

/// A token bucket read at instants the caller gives, so its arithmetic is testable without
/// sleeping. It refills at `refill_per_second` up to `capacity`, while a continuous drain (the
/// traffic of another integration sharing it) takes `drain_per_second` out of it.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: f64,
    refill_per_second: f64,
    drain_per_second: f64,
    tokens: f64,
    at: Instant,
}

/// Float slack, so a bucket refilled to 0.999999… by rounding still holds its token.
const WHOLE_TOKEN: f64 = 1.0 - 1e-9;

impl TokenBucket {
    pub fn new(capacity: u32, refill_per_second: f64, drain_per_second: f64, now: Instant) -> Self {
        // It starts where the drain alone keeps it: full, unless the drain takes everything
        // that comes in (the other integration was there first).
        let starved = drain_per_second > 0.0 && drain_per_second >= refill_per_second;
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            refill_per_second,
            drain_per_second,
            tokens: if starved { 0.0 } else { capacity },
            at: now,
        }
    }

    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let net = self.refill_per_second - self.drain_per_second;
        self.tokens = (self.tokens + net * elapsed).clamp(0.0, self.capacity);
        self.at = self.at.max(now);
    }

    /// `Ok` when a token is there at `now`; else how long until one is, `None` when never
    /// (the drain takes everything). Takes nothing: see [`TokenBucket::take`].
    pub fn check(&mut self, now: Instant) -> Result<(), Option<Duration>> {
        self.advance(now);
        if self.tokens >= WHOLE_TOKEN {
            return Ok(());
        }
        let net = self.refill_per_second - self.drain_per_second;
        if net <= 0.0 {
            return Err(None);
        }
        Err(Some(Duration::from_secs_f64((1.0 - self.tokens) / net)))
    }

    /// Spends the token a successful [`TokenBucket::check`] found.
    pub fn take(&mut self) {
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

/// A request refused by a rate limit: which one, and when a token would be there (`None`:
/// not while the other integration spends everything).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub limit: Limit,
    pub wait: Option<Duration>,
}

/// The org-wide bucket of the behaviour's `org_limit`, with the limit it was made for.
#[derive(Debug)]
struct OrgBucket {
    limit: OrgLimit,
    bucket: TokenBucket,
}

/// Deliveries `POST /sandbox/webhook` keeps.
pub const WEBHOOK_KEPT: usize = 1_000;

#[derive(Debug)]
pub(crate) struct World {
    pub users: BTreeMap<Uuid, User>,
    pub definitions: Vec<PresenceDefinition>,
    /// token → (client id, expiry)
    tokens: HashMap<String, (String, Instant)>,
    pub tasks: TaskState,
    pub flows: FlowState,
    pub stats: Stats,
    pub mutations: Vec<Mutation>,
    /// What `POST /sandbox/webhook` received (a stand-in receiver for `relay` in the demo
    /// stack), newest last, at most [`WEBHOOK_KEPT`].
    pub webhook: std::collections::VecDeque<serde_json::Value>,
    pub faults: Faults,
    /// The per-OAuth-client limit, as Genesys limits requests per client token.
    rate_limit: Option<RateLimit>,
    /// Per-client limits that replace `rate_limit` for their client.
    client_rate_limits: HashMap<String, RateLimit>,
    client_buckets: HashMap<String, TokenBucket>,
    /// Made when a request first meets the behaviour's org limit, remade when it changes.
    org_bucket: Option<OrgBucket>,
}

impl World {
    pub fn seeded(config: &SandboxConfig) -> Self {
        let mut definitions: Vec<PresenceDefinition> = SYSTEM_PRESENCES
            .iter()
            .map(|(label, _)| PresenceDefinition {
                id: presence_definition_id(label),
                system: true,
                system_presence: system_presence_of(label),
                label,
                deactivated: false,
            })
            .collect();
        // Org-defined ("secondary") presences map onto a system one.
        definitions.push(PresenceDefinition {
            id: presence_definition_id("Lunch"),
            system: false,
            system_presence: "Meal",
            label: "Lunch",
            deactivated: false,
        });
        definitions.push(PresenceDefinition {
            id: presence_definition_id("Coaching (retired)"),
            system: false,
            system_presence: "Training",
            label: "Coaching (retired)",
            deactivated: true,
        });
        let offline = presence_definition_id("Offline");
        let epoch = OffsetDateTime::now_utc();
        let users = (0..config.users)
            .map(|n| {
                (
                    user_id(n),
                    User::seeded(format!("Agent {:03}", n + 1), offline, epoch),
                )
            })
            .collect();
        let mut world = Self {
            users,
            definitions,
            tokens: HashMap::new(),
            tasks: TaskState::seeded(config.workitems),
            flows: FlowState::seeded(config.flows),
            stats: Stats::default(),
            mutations: Vec::new(),
            webhook: std::collections::VecDeque::new(),
            faults: Faults::new(config.seed),
            rate_limit: None,
            client_rate_limits: HashMap::new(),
            client_buckets: HashMap::new(),
            org_bucket: None,
        };
        world.set_rate_limit(config.rate_limit);
        world
    }

    /// Sets the per-client limit; every client starts again with a full bucket.
    pub fn set_rate_limit(&mut self, limit: Option<RateLimit>) {
        self.rate_limit = limit;
        self.client_buckets.clear();
    }

    /// Sets (or, with `None`, drops) the limit of one OAuth client, in place of the per-client
    /// limit every other client has; that client starts again with a full bucket.
    pub fn set_client_rate_limit(&mut self, client: &str, limit: Option<RateLimit>) {
        match limit {
            Some(limit) => self.client_rate_limits.insert(client.to_string(), limit),
            None => self.client_rate_limits.remove(client),
        };
        self.client_buckets.remove(client);
    }

    /// The limit `client`'s requests meet: its own, else the per-client limit.
    pub fn rate_limit_of(&self, client: &str) -> Option<RateLimit> {
        self.client_rate_limits.get(client).copied().or(self.rate_limit)
    }

    /// The per-client limits set for one client each.
    pub fn client_rate_limits(&self) -> &HashMap<String, RateLimit> {
        &self.client_rate_limits
    }

    /// Lets a request of `client` through the rate limits at `now`, spending a token of each
    /// limit that applies, or names the limit that refuses it.
    ///
    /// The per-client limit is checked first, then `org_limit` when the request's route family
    /// is the limit's (`applies`). A request refused by one limit spends nothing of the other.
    /// `org_limit` is the behaviour's in any case, so its bucket is remade as soon as it
    /// changes.
    pub fn admit(
        &mut self,
        client: &str,
        org_limit: Option<&OrgLimit>,
        applies: bool,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.follow_org_limit(org_limit, now);
        let client_bucket = match self.rate_limit_of(client) {
            Some(rate) => {
                let bucket = self.client_buckets.entry(client.to_string()).or_insert_with(|| {
                    TokenBucket::new(rate.burst, f64::from(rate.requests_per_second), 0.0, now)
                });
                bucket.check(now).map_err(|wait| Refusal {
                    limit: Limit::client_rate(rate),
                    wait,
                })?;
                Some(bucket)
            }
            None => None,
        };
        let org_bucket = match self.org_bucket.as_mut().filter(|_| applies) {
            Some(org) => {
                org.bucket.check(now).map_err(|wait| Refusal {
                    limit: Limit::org(&org.limit),
                    wait,
                })?;
                Some(&mut org.bucket)
            }
            None => None,
        };
        // Both limits let it through: only now is anything spent.
        client_bucket
            .into_iter()
            .chain(org_bucket)
            .for_each(TokenBucket::take);
        Ok(())
    }

    /// Drops the org limit's bucket: the next request of its family starts a new one.
    pub fn forget_org_bucket(&mut self) {
        self.org_bucket = None;
    }

    fn follow_org_limit(&mut self, org_limit: Option<&OrgLimit>, now: Instant) {
        let current = self.org_bucket.as_ref().map(|org| &org.limit);
        if current == org_limit {
            return;
        }
        self.org_bucket = org_limit.map(|limit| OrgBucket {
            limit: limit.clone(),
            bucket: TokenBucket::new(
                limit.burst,
                limit.requests_per_second,
                limit.other_integration_rps,
                now,
            ),
        });
    }

    pub fn issue_token(&mut self, client_id: &str, ttl: Duration) -> String {
        let token = format!("sbx-{}", Uuid::new_v4().simple());
        self.tokens
            .insert(token.clone(), (client_id.to_string(), Instant::now() + ttl));
        token
    }

    /// The client a live token belongs to.
    pub fn client_of(&self, token: &str) -> Option<String> {
        self.tokens
            .get(token)
            .filter(|(_, expiry)| Instant::now() < *expiry)
            .map(|(client, _)| client.clone())
    }

    pub fn revoke_tokens(&mut self) -> usize {
        let revoked = self.tokens.len();
        self.tokens.clear();
        revoked
    }

    pub fn definition(&self, id: Uuid) -> Option<&PresenceDefinition> {
        self.definitions.iter().find(|d| d.id == id)
    }

    pub fn record(
        &mut self,
        client_id: String,
        method: &'static str,
        path: String,
        entity: String,
        body: Value,
    ) {
        let seq = self.mutations.len() as u64 + 1;
        self.mutations.push(Mutation {
            seq,
            at: OffsetDateTime::now_utc(),
            client_id,
            method,
            path,
            entity,
            body,
        });
    }
}

/// Genesys' timestamp style: ISO 8601 UTC with milliseconds and `Z`.
pub(crate) fn genesys_time(at: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    fn org_limit(rps: f64, burst: u32, other: f64) -> OrgLimit {
        OrgLimit {
            family: "users".into(),
            requests_per_second: rps,
            burst,
            other_integration_rps: other,
            key: "org.requests.per.minute".into(),
            namespace: None,
        }
    }

    fn world() -> World {
        World::seeded(&SandboxConfig {
            users: 1,
            workitems: 0,
            flows: 0,
            ..SandboxConfig::default()
        })
    }

    #[test]
    fn a_routing_status_set_for_a_while_goes_back_when_read_after_its_time() {
        let start = OffsetDateTime::now_utc();
        let mut user = User::seeded("Agent".into(), Uuid::nil(), start);
        user.set_routing("IDLE", start);
        let now = OffsetDateTime::now_utc();
        user.set_routing_until("INTERACTING", now, Some(Duration::from_millis(20)));
        assert_eq!(user.routing(), ("INTERACTING", now));
        assert!(user.routing_reverts_at().is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(user.routing(), ("IDLE", now + Duration::from_millis(20)));
        assert!(user.routing_reverts_at().is_none());

        // A status set without a time replaces a pending revert.
        user.set_routing_until("COMMUNICATING", now, Some(Duration::from_millis(20)));
        user.set_routing_until("NOT_RESPONDING", now, None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(user.routing().0, "NOT_RESPONDING");
    }

    #[test]
    fn a_bucket_gives_its_burst_then_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2, 4.0, 0.0, start);
        for _ in 0..2 {
            assert_eq!(bucket.check(start), Ok(()));
            bucket.take();
        }
        assert_eq!(bucket.check(start), Err(Some(Duration::from_millis(250))));
        let wait = bucket.check(at(start, 100)).unwrap_err().unwrap();
        assert!(
            wait.abs_diff(Duration::from_millis(150)) < Duration::from_micros(1),
            "{wait:?}"
        );
        assert_eq!(bucket.check(at(start, 250)), Ok(()));
        // Idle time refills no further than the burst.
        bucket.take();
        assert_eq!(bucket.check(at(start, 10_000)), Ok(()));
        bucket.take();
        bucket.take();
        assert!(bucket.check(at(start, 10_000)).is_err());
    }

    #[test]
    fn another_integration_slows_the_refill_or_takes_everything() {
        let start = Instant::now();
        let mut shared = TokenBucket::new(1, 3.0, 1.0, start);
        assert_eq!(shared.check(start), Ok(()));
        shared.take();
        // 2 tokens/s left to share: half a second for the next.
        assert_eq!(shared.check(start), Err(Some(Duration::from_millis(500))));

        let mut starved = TokenBucket::new(5, 2.0, 2.0, start);
        assert_eq!(
            starved.check(start),
            Err(None),
            "starts empty: the other was there first"
        );
        assert_eq!(starved.check(at(start, 60_000)), Err(None));
        let mut drained = TokenBucket::new(3, 1.0, 4.0, start);
        assert_eq!(drained.check(at(start, 1_000)), Err(None));
    }

    #[test]
    fn the_org_limit_applies_only_to_its_family_and_is_shared_by_every_client() {
        let mut world = world();
        let start = Instant::now();
        let limit = org_limit(1.0, 2, 0.0);
        assert!(world.admit("a", Some(&limit), true, start).is_ok());
        assert!(world.admit("b", Some(&limit), true, start).is_ok());
        let refusal = world.admit("a", Some(&limit), true, start).unwrap_err();
        assert_eq!(refusal.limit, Limit::org(&limit));
        assert_eq!(refusal.wait, Some(Duration::from_secs(1)));
        assert!(
            world.admit("c", Some(&limit), false, start).is_ok(),
            "another family"
        );
        assert!(world.admit("c", Some(&limit), true, at(start, 1_000)).is_ok());
    }

    #[test]
    fn a_request_refused_by_one_limit_spends_nothing_of_the_other() {
        let mut world = world();
        world.set_rate_limit(Some(RateLimit {
            requests_per_second: 1,
            burst: 1,
        }));
        let start = Instant::now();
        let starved = org_limit(2.0, 1, 2.0);
        let refusal = world.admit("a", Some(&starved), true, start).unwrap_err();
        assert_eq!(refusal.limit.key, "org.requests.per.minute");
        assert_eq!(refusal.wait, None);
        // The org refusal left the client's token: a request of another family gets it.
        assert!(world.admit("a", Some(&starved), false, start).is_ok());
        let refusal = world.admit("a", Some(&starved), false, start).unwrap_err();
        assert_eq!(refusal.limit.key, "client.credentials.token.rate.per.minute");

        // The client's refusal comes first and leaves the org's token.
        let open = org_limit(1.0, 1, 0.0);
        assert_eq!(
            world.admit("a", Some(&open), true, start).unwrap_err().limit.key,
            "client.credentials.token.rate.per.minute"
        );
        assert!(world.admit("b", Some(&open), true, start).is_ok());
    }

    #[test]
    fn a_changed_org_limit_starts_a_new_bucket() {
        let mut world = world();
        let start = Instant::now();
        let one = org_limit(1.0, 1, 0.0);
        assert!(world.admit("a", Some(&one), true, start).is_ok());
        assert!(world.admit("a", Some(&one), true, start).is_err());
        let two = org_limit(1.0, 2, 0.0);
        assert!(world.admit("a", Some(&two), true, start).is_ok());
        assert!(world.admit("a", None, true, start).is_ok(), "no org limit");
    }
}
