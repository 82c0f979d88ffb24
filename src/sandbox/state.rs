//! The sandbox's in-memory Genesys org: users, presence definitions, tokens, and what was seen.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::architect::FlowState;
use super::faults::Faults;
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
    pub routing_status: &'static str,
    pub routing_started: OffsetDateTime,
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
    /// Requests served whose response was then dropped (a fault).
    pub dropped_responses: u64,
}

impl Stats {
    pub fn count(&mut self, route: String, status: u16) {
        *self.requests.entry((route, status)).or_default() += 1;
    }
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
    /// Per-OAuth-client token bucket, as Genesys limits requests per client token.
    limiter: Option<DefaultKeyedRateLimiter<String>>,
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
                let user = User {
                    name: format!("Agent {:03}", n + 1),
                    presence: offline,
                    message: String::new(),
                    presence_modified: epoch,
                    routing_status: "OFF_QUEUE",
                    routing_started: epoch,
                };
                (user_id(n), user)
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
            limiter: None,
        };
        world.set_rate_limit(config.rate_limit);
        world
    }

    pub fn set_rate_limit(&mut self, limit: Option<RateLimit>) {
        self.limiter = limit.map(|limit| {
            let rps = NonZeroU32::new(limit.requests_per_second.max(1)).expect("at least 1");
            let burst = NonZeroU32::new(limit.burst.max(1)).expect("at least 1");
            RateLimiter::keyed(Quota::per_second(rps).allow_burst(burst))
        });
    }

    /// `Some(wait)` when `client` is over its rate limit.
    pub fn throttle(&self, client: &str) -> Option<Duration> {
        let limiter = self.limiter.as_ref()?;
        let key = client.to_string();
        limiter
            .check_key(&key)
            .err()
            .map(|not_until| not_until.wait_time_from(limiter.clock().now()))
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
