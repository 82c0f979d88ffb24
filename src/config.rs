//! Worker configuration, read once from the environment (the README's Configuration table) and validated at start.
//!
//! Every problem is reported as one line naming the variable, so an operator can fix a
//! deployment without reading code. Secrets live in [`Secret`], whose `Debug` never shows them.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

/// A value that must never reach logs, events or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The only way to read the value: call sites that do are easy to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A connection URL whose password is redacted in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUrl(Url);

impl ServiceUrl {
    pub fn parse(raw: &str) -> Result<Self, url::ParseError> {
        Url::parse(raw).map(Self)
    }

    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // set_password only fails for URLs that cannot carry credentials, which never have one.
            let _ = shown.set_password(Some("redacted"));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceUrl({self})")
    }
}

/// The nodes of one service, as `AMQP_URL` and `REDIS_URL` take them: one URL, or several
/// separated by commas (a RabbitMQ cluster's nodes, a Sentinel set, a Redis Cluster's seed
/// nodes). Passwords are redacted in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUrls(Vec<ServiceUrl>);

impl ServiceUrls {
    pub fn parse(raw: &str) -> Result<Self, url::ParseError> {
        let nodes = raw
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .map(ServiceUrl::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(url::ParseError::EmptyHost);
        }
        Ok(Self(nodes))
    }

    /// At least one.
    pub fn nodes(&self) -> &[ServiceUrl] {
        &self.0
    }

    /// The URLs as given, passwords included.
    pub fn expose(&self) -> String {
        let nodes: Vec<&str> = self.0.iter().map(ServiceUrl::expose).collect();
        nodes.join(",")
    }
}

impl From<ServiceUrl> for ServiceUrls {
    fn from(url: ServiceUrl) -> Self {
        Self(vec![url])
    }
}

impl fmt::Display for ServiceUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, node) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{node}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ServiceUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceUrls({self})")
    }
}

/// How the worker finds its Redis (`REDIS_TOPOLOGY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RedisTopology {
    /// One server (`REDIS_URL` names it).
    #[default]
    Standalone,
    /// A primary found through Sentinel (`REDIS_URL` names the Sentinels,
    /// `REDIS_SENTINEL_MASTER` the primary's name); failovers are followed.
    Sentinel,
    /// A Redis Cluster (`REDIS_URL` names one or more of its nodes).
    Cluster,
}

impl RedisTopology {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "standalone" => Some(Self::Standalone),
            "sentinel" => Some(Self::Sentinel),
            "cluster" => Some(Self::Cluster),
            _ => None,
        }
    }
}

/// Where Redis is and how much a write must be replicated before it counts.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub urls: ServiceUrls,
    pub topology: RedisTopology,
    /// `REDIS_SENTINEL_MASTER`: the primary's name in the Sentinels.
    pub sentinel_master: String,
    /// `REDIS_WAIT_REPLICAS`: replicas that must hold a claim or a commit (Redis `WAIT`) before
    /// the worker calls Genesys or acks the job; 0 trusts the primary alone.
    pub wait_replicas: u64,
    /// `REDIS_WAIT_TIMEOUT_MS`: how long `WAIT` may take before the job is retried.
    pub wait_timeout_ms: u64,
}

impl RedisSettings {
    /// One standalone server at `url`, no replication wait.
    pub fn standalone(url: ServiceUrl) -> Self {
        Self {
            urls: url.into(),
            topology: RedisTopology::Standalone,
            sentinel_master: DEFAULT_REDIS_SENTINEL_MASTER.into(),
            wait_replicas: 0,
            wait_timeout_ms: DEFAULT_REDIS_WAIT_TIMEOUT_MS,
        }
    }
}

// The defaults of the settings, in one place: `Config::from_lookup` falls back on them and the
// tools' flags (`crate::cli`) show and use them as their `default_value`, so a tool run without
// flags talks to the broker, exchanges, queues and Redis keys of a worker run without settings.
// (`crate::cli::DlqOptions` reads its two from here too; a test in `crate::cli` holds them equal.)

/// `AMQP_URL`.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// `REDIS_URL`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// `REDIS_SENTINEL_MASTER`.
pub const DEFAULT_REDIS_SENTINEL_MASTER: &str = "mymaster";
/// `REDIS_WAIT_TIMEOUT_MS`.
pub const DEFAULT_REDIS_WAIT_TIMEOUT_MS: u64 = 1_000;
/// `REDIS_KEY_PREFIX`.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "gw:";
/// `JOBS_EXCHANGE`.
pub const DEFAULT_JOBS_EXCHANGE: &str = "genesys.jobs";
/// `WORK_QUEUE`.
pub const DEFAULT_WORK_QUEUE: &str = "genesys.jobs.work";
/// `BATCH_QUEUE`.
pub const DEFAULT_BATCH_QUEUE: &str = "genesys.jobs.batch";
/// `DEAD_LETTER_QUEUE` (the dead-letter exchange and its queue).
pub const DEFAULT_DEAD_LETTER_QUEUE: &str = "genesys.jobs.dead";
/// `AUDIT_EXCHANGE`.
pub const DEFAULT_AUDIT_EXCHANGE: &str = "genesys.audit";
/// `CRM_EXCHANGE`.
pub const DEFAULT_CRM_EXCHANGE: &str = "genesys.crm";
/// `MAX_MESSAGE_BYTES`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// `MAX_BATCH_MESSAGE_BYTES`.
pub const DEFAULT_MAX_BATCH_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// `BATCH_MAX`.
pub const DEFAULT_BATCH_MAX: usize = crate::job::DEFAULT_BATCH_MAX;
/// `LOG_FORMAT`.
pub const DEFAULT_LOG_FORMAT: &str = "text";
/// `RELAY_MAX_ATTEMPTS` (`relay` only).
pub const DEFAULT_RELAY_MAX_ATTEMPTS: u32 = 8;
/// `RELAY_CONCURRENCY` (`relay` only).
pub const DEFAULT_RELAY_CONCURRENCY: usize = 8;
/// `RELAY_BACKOFF_MS` (`relay` only).
pub const DEFAULT_RELAY_BACKOFF_MS: u64 = 500;
/// `RELAY_TIMEOUT_MS` (`relay` only).
pub const DEFAULT_RELAY_TIMEOUT_MS: u64 = 10_000;

/// `LEASE_MS`: an in-progress record's (and an entity lock's) lease.
pub const DEFAULT_LEASE_MS: u64 = 30_000;

/// A bearer token (`INGEST_TOKEN`, `ADMIN_TOKEN`) shorter than this could be guessed.
const MIN_INGEST_TOKEN_BYTES: usize = 16;

/// An invalid or missing setting: `Display` is the one line printed before the program stops.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How to reach Genesys Cloud and how much of its budget this fleet may spend.
#[derive(Debug, Clone)]
pub struct GenesysConfig {
    /// `https://api.<region>` unless `GENESYS_API_BASE` points elsewhere (the sandbox, a proxy).
    pub api_base: Url,
    /// `https://login.<region>`: tokens come from the login host, not the API host.
    pub login_base: Url,
    /// The first OAuth client of [`Config::genesys_clients`] (the only one without a pool).
    pub client_id: String,
    pub client_secret: Secret,
    /// Requests per second across every Genesys call of this process.
    pub rate_limit_rps: u32,
    pub rate_limit_burst: u32,
    /// Whether replicas share the budget through Redis (`fleet`) or each spends it alone
    /// (`replica`).
    pub rate_limit_shared: bool,
    /// Per-request timeout; the official Go SDK uses 16 s.
    pub request_timeout_ms: u64,
    /// In-process attempts for a transient error (429s are not counted).
    pub max_attempts: u32,
    /// How long a 404 on an entity the job just created, or a 409 "version must match" right
    /// after its own checkin, is read again as Genesys' consistency lag.
    pub consistency_window_ms: u64,
    /// How often the org's effective token limit is read (the budget paces at it when it is
    /// below `rate_limit_rps`); 0: never.
    pub limits_refresh_secs: u64,
}

/// One OAuth client (client credentials grant) the worker calls Genesys as. `Debug` shows the
/// id only.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthClient {
    pub id: String,
    pub secret: Secret,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("id", &self.id)
            .field("secret", &self.secret)
            .finish()
    }
}

impl GenesysConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Names of everything the worker declares on the broker and in Redis; tests randomise them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub jobs_exchange: String,
    /// The single-job lane: every job published to `jobs_exchange`, batches included.
    pub work_queue: String,
    /// The batch lane: the children a `batch` fans out, published straight to this queue.
    pub batch_queue: String,
    /// Both the dead-letter exchange and its queue.
    pub dead_letter: String,
    pub audit_exchange: String,
    pub crm_exchange: String,
    /// Quorum-queue `x-delivery-limit`: a message that keeps crashing workers is dead-lettered.
    pub delivery_limit: u32,
    /// Delays of the retry queues, in order: a job whose transient failures outlast the
    /// in-process retries waits in the next tier, then returns to the work queue.
    pub retry_delays_ms: Vec<u64>,
}

impl Topology {
    /// The retry queue of tier `tier` for jobs of `queue` (named by its delay, so changing a
    /// delay declares a new queue rather than clashing with the old one's arguments). A job
    /// comes back to the queue it came from, so a batch child stays in the batch lane.
    pub fn retry_queue(&self, queue: &str, tier: usize) -> Option<String> {
        self.retry_delays_ms
            .get(tier)
            .map(|ms| format!("{queue}.retry.{ms}ms"))
    }

    /// The queues jobs are consumed from: the single-job lane, then the batch lane.
    pub fn lane_queues(&self) -> [&str; 2] {
        [&self.work_queue, &self.batch_queue]
    }

    /// The queue of `lane`.
    pub fn lane_queue(&self, lane: crate::lane::Lane) -> &str {
        self.lane_queues()[lane.index()]
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            jobs_exchange: DEFAULT_JOBS_EXCHANGE.into(),
            work_queue: DEFAULT_WORK_QUEUE.into(),
            batch_queue: DEFAULT_BATCH_QUEUE.into(),
            dead_letter: DEFAULT_DEAD_LETTER_QUEUE.into(),
            audit_exchange: DEFAULT_AUDIT_EXCHANGE.into(),
            crm_exchange: DEFAULT_CRM_EXCHANGE.into(),
            delivery_limit: 5,
            retry_delays_ms: vec![5_000, 30_000, 120_000, 600_000],
        }
    }
}

pub use crate::lane::LaneWeights;

#[derive(Debug, Clone)]
pub struct Config {
    pub amqp_url: ServiceUrls,
    pub redis: RedisSettings,
    /// Prefix of every Redis key, so several deployments (or tests) can share one Redis.
    pub redis_key_prefix: String,
    pub genesys: GenesysConfig,
    /// The OAuth client pool: `GENESYS_CLIENT_ID`/`GENESYS_CLIENT_SECRET` (first, when set),
    /// then `GENESYS_CLIENTS`, then the lines of `GENESYS_CLIENTS_FILE`; at least one, ids
    /// unique. Each has its own token, budget, pauses and effective limit.
    pub genesys_clients: Vec<OAuthClient>,
    pub topology: Topology,
    /// Jobs processed at once by this replica.
    pub worker_concurrency: usize,
    /// Unacked deliveries the broker may push ahead of processing.
    pub worker_prefetch: u16,
    /// `MAX_MESSAGE_BYTES`, `MAX_BATCH_MESSAGE_BYTES`, `BATCH_MAX`: what a job message may be.
    pub limits: crate::job::Limits,
    /// How long a finished job's idempotency record is kept.
    pub idempotency_ttl_secs: u64,
    /// How long an entity's record (chain head, last sequence, last change) is kept after its
    /// last change: entities such as created workitems and batches grow with the jobs.
    pub entity_ttl_secs: u64,
    /// An in-progress record's lease; renewed while the job runs, taken over once expired.
    pub lease_ms: u64,
    pub shutdown_timeout_secs: u64,
    /// Batch children processed at once by this replica (bulk calls fill up to `bulk_max` only
    /// when at least that many are in flight).
    pub batch_concurrency: usize,
    pub batch_prefetch: u16,
    /// Fair share of the Genesys budget when both lanes wait: single jobs get
    /// `single / (single + batch)` of the calls.
    pub lane_weights: LaneWeights,
    /// Coalesce `agent.status` jobs without preconditions into bulk presence calls.
    pub bulk_presence: bool,
    /// How long the first change of a bulk call waits for others.
    pub bulk_window_ms: u64,
    /// Most changes per bulk call (the API's batch size).
    pub bulk_max: usize,
    /// Between two reads of a flow while Architect runs a checkin or publish.
    pub flow_poll_ms: u64,
    /// How long a checkin or publish may take.
    pub flow_operation_timeout_secs: u64,
    /// How long a deploy waits for someone else's lock on its flow; 0: a `conflict` at once.
    pub flow_lock_wait_secs: u64,
    /// The job actors (`actor`) whose `flow.deploy` may ask for `force_unlock`; none by default.
    pub flow_force_unlock_actors: Vec<String>,
    pub admin_addr: SocketAddr,
    pub log_format: LogFormat,
    pub ingest_addr: Option<SocketAddr>,
    pub ingest_token: Option<Secret>,
    /// `ADMIN_TOKEN`: the bearer token the admin console's and API's changes (controls, dead-letter
    /// replays) need; without it they are refused and the console is read-only.
    pub admin_token: Option<Secret>,
    /// The verifiable audit log (`crate::audit`).
    pub audit_log: AuditLogSettings,
}

/// `AUDIT_LOG`, `AUDIT_SIGNING_KEY_FILE`, `AUDIT_CHECKPOINT_SECS`, `AUDIT_CHECKPOINT_LEAVES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLogSettings {
    /// Whether every audit event gets a `log_index` and the tree is sealed into checkpoints.
    pub on: bool,
    /// The Ed25519 signing key (a C2SP signed-note private key); without it the checkpoints go
    /// out unsigned. A file (or a mounted Secret), never Redis.
    pub signing_key_file: Option<std::path::PathBuf>,
    /// A checkpoint at most this often, when the tree grew.
    pub checkpoint_secs: u64,
    /// ... or as soon as this many leaves are waiting.
    pub checkpoint_leaves: u64,
}

impl Config {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let region = env.string("GENESYS_REGION", "mypurecloud.com")?;
        if region.is_empty() || region.contains('/') || region.contains(':') {
            return Err(ConfigError {
                var: "GENESYS_REGION",
                problem: format!("expected a region domain such as mypurecloud.ie, got {region:?}"),
            });
        }
        let api_base = match env.get("GENESYS_API_BASE") {
            Some(_) => env.url("GENESYS_API_BASE", &["http", "https"])?,
            None => parse_region_url(&format!("https://api.{region}"))?,
        };
        let login_base = match env.get("GENESYS_LOGIN_BASE") {
            Some(_) => env.url("GENESYS_LOGIN_BASE", &["http", "https"])?,
            None => parse_region_url(&format!("https://login.{region}"))?,
        };
        let genesys_clients = oauth_clients(&env)?;
        let genesys = GenesysConfig {
            api_base,
            login_base,
            client_id: genesys_clients[0].id.clone(),
            client_secret: genesys_clients[0].secret.clone(),
            rate_limit_rps: env.positive("GENESYS_RATE_LIMIT_RPS", 4)?,
            rate_limit_burst: env.positive("GENESYS_RATE_LIMIT_BURST", 8)?,
            rate_limit_shared: match env.string("GENESYS_RATE_LIMIT_SCOPE", "fleet")?.as_str() {
                "fleet" => true,
                "replica" => false,
                other => {
                    return Err(ConfigError {
                        var: "GENESYS_RATE_LIMIT_SCOPE",
                        problem: format!("expected fleet or replica, got {other:?}"),
                    })
                }
            },
            request_timeout_ms: env.positive("GENESYS_TIMEOUT_MS", 16_000)?,
            max_attempts: env.positive("GENESYS_MAX_ATTEMPTS", 3)?,
            consistency_window_ms: env.whole("GENESYS_CONSISTENCY_WINDOW_MS", 5_000)?,
            limits_refresh_secs: env.whole("GENESYS_LIMITS_REFRESH_SECS", 300)?,
        };
        let defaults = Topology::default();
        let topology = Topology {
            jobs_exchange: env.name("JOBS_EXCHANGE", &defaults.jobs_exchange)?,
            work_queue: env.name("WORK_QUEUE", &defaults.work_queue)?,
            batch_queue: env.name("BATCH_QUEUE", &defaults.batch_queue)?,
            dead_letter: env.name("DEAD_LETTER_QUEUE", &defaults.dead_letter)?,
            audit_exchange: env.name("AUDIT_EXCHANGE", &defaults.audit_exchange)?,
            crm_exchange: env.name("CRM_EXCHANGE", &defaults.crm_exchange)?,
            delivery_limit: env.positive("DELIVERY_LIMIT", defaults.delivery_limit)?,
            retry_delays_ms: env.delays("RETRY_DELAYS_MS", &defaults.retry_delays_ms)?,
        };
        let log_format = log_format(&env)?;
        let ingest_addr = match env.get("INGEST_ADDR") {
            Some(_) => Some(env.socket_addr("INGEST_ADDR", "")?),
            None => None,
        };
        let ingest_token = env.get("INGEST_TOKEN").map(Secret::new);
        if ingest_token
            .as_ref()
            .is_some_and(|token| token.expose().len() < MIN_INGEST_TOKEN_BYTES)
        {
            return Err(ConfigError {
                var: "INGEST_TOKEN",
                problem: format!(
                    "shorter than {MIN_INGEST_TOKEN_BYTES} bytes: use a random token, e.g. `openssl rand -hex 32`"
                ),
            });
        }
        let admin_token = env.get("ADMIN_TOKEN").map(Secret::new);
        if admin_token
            .as_ref()
            .is_some_and(|token| token.expose().len() < MIN_INGEST_TOKEN_BYTES)
        {
            return Err(ConfigError {
                var: "ADMIN_TOKEN",
                problem: format!(
                    "shorter than {MIN_INGEST_TOKEN_BYTES} bytes: use a random token, e.g. `openssl rand -hex 32`"
                ),
            });
        }
        let redis_key_prefix = env.string("REDIS_KEY_PREFIX", DEFAULT_REDIS_KEY_PREFIX)?;
        // In a Redis Cluster the keys carry a hash tag in braces; one in the prefix would move it.
        if redis_key_prefix.contains(['{', '}']) {
            return Err(ConfigError {
                var: "REDIS_KEY_PREFIX",
                problem: "must not contain { or } (Redis Cluster hash tags)".into(),
            });
        }
        if ingest_addr.is_some() && ingest_token.is_none() {
            return Err(ConfigError {
                var: "INGEST_TOKEN",
                problem: "required when INGEST_ADDR is set".into(),
            });
        }
        Ok(Self {
            amqp_url: env.service_urls("AMQP_URL", DEFAULT_AMQP_URL, &["amqp", "amqps"])?,
            redis: RedisSettings {
                urls: env.service_urls("REDIS_URL", DEFAULT_REDIS_URL, &["redis", "rediss"])?,
                topology: env.redis_topology()?,
                sentinel_master: env.string("REDIS_SENTINEL_MASTER", DEFAULT_REDIS_SENTINEL_MASTER)?,
                wait_replicas: env.whole("REDIS_WAIT_REPLICAS", 0)?,
                wait_timeout_ms: env.positive("REDIS_WAIT_TIMEOUT_MS", DEFAULT_REDIS_WAIT_TIMEOUT_MS)?,
            },
            redis_key_prefix,
            genesys,
            genesys_clients,
            topology,
            worker_concurrency: env.positive("WORKER_CONCURRENCY", 32)?,
            worker_prefetch: env.positive("WORKER_PREFETCH", 64)?,
            limits: job_limits(&env)?,
            idempotency_ttl_secs: env.positive("IDEMPOTENCY_TTL_SECS", 7 * 24 * 3600)?,
            entity_ttl_secs: env.positive("ENTITY_TTL_SECS", 90 * 24 * 3600)?,
            lease_ms: env.positive("LEASE_MS", DEFAULT_LEASE_MS)?,
            shutdown_timeout_secs: env.positive("SHUTDOWN_TIMEOUT_SECS", 30)?,
            batch_concurrency: env.positive("BATCH_CONCURRENCY", 128)?,
            batch_prefetch: env.positive("BATCH_PREFETCH", 256)?,
            lane_weights: LaneWeights {
                single: env.positive("LANE_WEIGHT_SINGLE", 3)?,
                batch: env.positive("LANE_WEIGHT_BATCH", 1)?,
            },
            bulk_presence: env.on_off("BULK_PRESENCE", "on")?,
            bulk_window_ms: env.positive("BULK_WINDOW_MS", 25)?,
            bulk_max: env.positive("BULK_MAX", 50)?,
            flow_poll_ms: env.positive("FLOW_POLL_MS", 1_000)?,
            flow_operation_timeout_secs: env.positive("FLOW_OPERATION_TIMEOUT_SECS", 300)?,
            flow_lock_wait_secs: env.whole("FLOW_LOCK_WAIT_SECS", 0)?,
            flow_force_unlock_actors: env
                .get("FLOW_FORCE_UNLOCK_ACTORS")
                .map(|raw| {
                    raw.split(',')
                        .map(str::trim)
                        .filter(|actor| !actor.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            admin_addr: env.socket_addr("ADMIN_ADDR", "127.0.0.1:9090")?,
            log_format,
            ingest_addr,
            ingest_token,
            admin_token,
            audit_log: AuditLogSettings {
                on: env.on_off("AUDIT_LOG", "on")?,
                signing_key_file: env.get("AUDIT_SIGNING_KEY_FILE").map(std::path::PathBuf::from),
                checkpoint_secs: env.positive("AUDIT_CHECKPOINT_SECS", 10)?,
                checkpoint_leaves: env.positive("AUDIT_CHECKPOINT_LEAVES", 10_000)?,
            },
        })
    }
}

/// The message limits, read through `lookup`: shared by the worker and the tools that validate
/// jobs for it (`enqueue`).
pub fn job_limits_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<crate::job::Limits, ConfigError> {
    job_limits(&Env(&lookup))
}

/// The message limits, read from the process environment.
pub fn job_limits_from_env() -> Result<crate::job::Limits, ConfigError> {
    job_limits_from_lookup(|name| std::env::var(name).ok())
}

fn job_limits(env: &Env) -> Result<crate::job::Limits, ConfigError> {
    Ok(crate::job::Limits {
        max_message_bytes: env.positive("MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES)?,
        max_batch_bytes: env.positive("MAX_BATCH_MESSAGE_BYTES", DEFAULT_MAX_BATCH_MESSAGE_BYTES)?,
        batch_max: env.positive("BATCH_MAX", DEFAULT_BATCH_MAX)?,
    })
}

/// `LOG_FORMAT`, read through `lookup`: shared by the worker and the tools that log
/// (`enqueue`, `relay`), which report an invalid value the same one-line way.
pub fn log_format_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<LogFormat, ConfigError> {
    log_format(&Env(&lookup))
}

/// `LOG_FORMAT`, read from the process environment.
pub fn log_format_from_env() -> Result<LogFormat, ConfigError> {
    log_format_from_lookup(|name| std::env::var(name).ok())
}

fn log_format(env: &Env) -> Result<LogFormat, ConfigError> {
    match env.string("LOG_FORMAT", DEFAULT_LOG_FORMAT)?.as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(ConfigError {
            var: "LOG_FORMAT",
            problem: format!("expected text or json, got {other:?}"),
        }),
    }
}

/// `RELAY_SECRET`, read through `lookup`: the HMAC key `relay` signs with, required by it (and
/// read by nothing else).
pub fn relay_secret_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Secret, ConfigError> {
    lookup("RELAY_SECRET")
        .filter(|secret| !secret.is_empty())
        .map(Secret::new)
        .ok_or(ConfigError {
            var: "RELAY_SECRET",
            problem: "required (the HMAC key receivers verify signatures with)".into(),
        })
}

/// `RELAY_SECRET`, read from the process environment.
pub fn relay_secret_from_env() -> Result<Secret, ConfigError> {
    relay_secret_from_lookup(|name| std::env::var(name).ok())
}

fn parse_region_url(raw: &str) -> Result<Url, ConfigError> {
    Url::parse(raw).map_err(|e| ConfigError {
        var: "GENESYS_REGION",
        problem: format!("does not form a valid URL ({raw}): {e}"),
    })
}

/// The OAuth client pool (see [`Config::genesys_clients`]). Errors name the variable and, for
/// a malformed entry, its position, never its text: it may hold a secret.
fn oauth_clients(env: &Env) -> Result<Vec<OAuthClient>, ConfigError> {
    let listed = env.get("GENESYS_CLIENTS");
    let file = env.get("GENESYS_CLIENTS_FILE");
    let mut pool: Vec<OAuthClient> = Vec::new();
    let mut add = |var: &'static str, client: OAuthClient| match pool.iter().find(|c| c.id == client.id) {
        // The same pair twice (e.g. GENESYS_CLIENT_ID also listed in GENESYS_CLIENTS): once.
        Some(known) if known.secret == client.secret => Ok(()),
        Some(_) => Err(ConfigError {
            var,
            problem: format!("client id {:?} is given twice with different secrets", client.id),
        }),
        None => {
            pool.push(client);
            Ok(())
        }
    };
    let (id, secret) = (env.get("GENESYS_CLIENT_ID"), env.get("GENESYS_CLIENT_SECRET"));
    if listed.is_none() && file.is_none() {
        let id = env.required("GENESYS_CLIENT_ID")?;
        let secret = Secret::new(env.required("GENESYS_CLIENT_SECRET")?);
        return Ok(vec![OAuthClient { id, secret }]);
    }
    match (id, secret) {
        (Some(id), Some(secret)) => add(
            "GENESYS_CLIENT_ID",
            OAuthClient {
                id: id.trim().to_string(),
                secret: Secret::new(secret),
            },
        )?,
        (None, None) => {}
        (Some(_), None) => env.required("GENESYS_CLIENT_SECRET").map(drop)?,
        (None, Some(_)) => env.required("GENESYS_CLIENT_ID").map(drop)?,
    }
    if let Some(raw) = listed {
        for (n, entry) in raw.split(',').enumerate() {
            if entry.trim().is_empty() {
                continue;
            }
            add(
                "GENESYS_CLIENTS",
                oauth_client("GENESYS_CLIENTS", "entry", n + 1, entry)?,
            )?;
        }
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path.trim()).map_err(|e| ConfigError {
            var: "GENESYS_CLIENTS_FILE",
            problem: format!("cannot read {:?}: {e}", path.trim()),
        })?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            add(
                "GENESYS_CLIENTS_FILE",
                oauth_client("GENESYS_CLIENTS_FILE", "line", n + 1, line)?,
            )?;
        }
    }
    if pool.is_empty() {
        let var = if env.get("GENESYS_CLIENTS").is_some() {
            "GENESYS_CLIENTS"
        } else {
            "GENESYS_CLIENTS_FILE"
        };
        return Err(ConfigError {
            var,
            problem: "lists no client: expected client_id:client_secret pairs".into(),
        });
    }
    Ok(pool)
}

/// One `id:secret` pair, split at its first `:`.
fn oauth_client(var: &'static str, unit: &str, n: usize, raw: &str) -> Result<OAuthClient, ConfigError> {
    let invalid = |problem: &str| ConfigError {
        var,
        problem: format!("{unit} {n}: {problem} (expected client_id:client_secret)"),
    };
    let Some((id, secret)) = raw.trim().split_once(':') else {
        return Err(invalid("no ':' between the client id and the secret"));
    };
    let id = id.trim();
    if id.is_empty() {
        return Err(invalid("empty client id"));
    }
    if id.chars().any(char::is_whitespace) {
        return Err(invalid("whitespace in the client id"));
    }
    if secret.is_empty() {
        return Err(invalid("empty secret"));
    }
    Ok(OAuthClient {
        id: id.to_string(),
        secret: Secret::new(secret),
    })
}

/// Typed accessors over a lookup function, each naming its variable in the error.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    fn string(&self, var: &'static str, default: &str) -> Result<String, ConfigError> {
        Ok(self
            .get(var)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| default.to_string()))
    }

    /// `on` or `off`.
    fn on_off(&self, var: &'static str, default: &str) -> Result<bool, ConfigError> {
        match self.string(var, default)?.as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            other => Err(ConfigError {
                var,
                problem: format!("expected on or off, got {other:?}"),
            }),
        }
    }

    fn required(&self, var: &'static str) -> Result<String, ConfigError> {
        self.get(var).ok_or(ConfigError {
            var,
            problem: "is required but not set".into(),
        })
    }

    fn name(&self, var: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.string(var, default)?;
        if value.len() > 255 {
            return Err(ConfigError {
                var,
                problem: "longer than 255 bytes".into(),
            });
        }
        Ok(value)
    }

    fn positive<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + Default,
    {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        match raw.trim().parse::<T>() {
            Ok(v) if v > T::default() => Ok(v),
            _ => Err(ConfigError {
                var,
                problem: format!("expected a positive whole number, got {raw:?}"),
            }),
        }
    }

    /// A whole number, zero allowed (it turns something off).
    fn whole(&self, var: &'static str, default: u64) -> Result<u64, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        raw.trim().parse::<u64>().map_err(|_| ConfigError {
            var,
            problem: format!("expected a whole number (0 or more), got {raw:?}"),
        })
    }

    /// A comma-separated list of millisecond delays; empty (`""` or `none`) turns retries off.
    fn delays(&self, var: &'static str, default: &[u64]) -> Result<Vec<u64>, ConfigError> {
        let Some(raw) = (self.0)(var) else {
            return Ok(default.to_vec());
        };
        let raw = raw.trim();
        if raw.is_empty() || raw.eq_ignore_ascii_case("none") {
            return Ok(Vec::new());
        }
        raw.split(',')
            .map(|part| part.trim().parse::<u64>().ok().filter(|ms| *ms > 0))
            .collect::<Option<Vec<u64>>>()
            .ok_or(ConfigError {
                var,
                problem: format!("expected comma-separated positive milliseconds, got {raw:?}"),
            })
    }

    fn socket_addr(&self, var: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.string(var, default)?;
        raw.parse().map_err(|_| ConfigError {
            var,
            problem: format!("expected host:port such as 127.0.0.1:9090, got {raw:?}"),
        })
    }

    fn url(&self, var: &'static str, schemes: &[&str]) -> Result<Url, ConfigError> {
        let raw = self.string(var, "")?;
        let url = Url::parse(&raw).map_err(|e| ConfigError {
            var,
            problem: format!("not a URL: {e}"),
        })?;
        if !schemes.contains(&url.scheme()) {
            return Err(ConfigError {
                var,
                problem: format!(
                    "scheme must be one of {}, got {}",
                    schemes.join("/"),
                    url.scheme()
                ),
            });
        }
        Ok(url)
    }

    fn service_urls(
        &self,
        var: &'static str,
        default: &str,
        schemes: &[&str],
    ) -> Result<ServiceUrls, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(ServiceUrls::parse(default).expect("built-in default URLs are valid"));
        };
        let urls = ServiceUrls::parse(&raw).map_err(|e| ConfigError {
            var,
            problem: format!("not a URL or a comma-separated list of URLs: {e}"),
        })?;
        if let Some(node) = urls
            .nodes()
            .iter()
            .find(|node| !schemes.contains(&node.0.scheme()))
        {
            return Err(ConfigError {
                var,
                problem: format!(
                    "scheme must be one of {}, got {}",
                    schemes.join("/"),
                    node.0.scheme()
                ),
            });
        }
        Ok(urls)
    }

    fn redis_topology(&self) -> Result<RedisTopology, ConfigError> {
        let raw = self.string("REDIS_TOPOLOGY", "standalone")?;
        RedisTopology::parse(&raw).ok_or_else(|| ConfigError {
            var: "REDIS_TOPOLOGY",
            problem: format!("must be standalone, sentinel or cluster, got {raw}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut map: HashMap<String, String> = HashMap::from([
            ("GENESYS_CLIENT_ID".into(), "client".into()),
            ("GENESYS_CLIENT_SECRET".into(), "s3cr3t-value".into()),
        ]);
        for (k, v) in vars {
            map.insert(k.to_string(), v.to_string());
        }
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_design() {
        let cfg = config(&[]).unwrap();
        assert_eq!(cfg.genesys.api_base.as_str(), "https://api.mypurecloud.com/");
        assert_eq!(cfg.genesys.login_base.as_str(), "https://login.mypurecloud.com/");
        assert_eq!((cfg.genesys.rate_limit_rps, cfg.genesys.rate_limit_burst), (4, 8));
        assert_eq!((cfg.worker_concurrency, cfg.worker_prefetch), (32, 64));
        assert_eq!(cfg.admin_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(cfg.topology, Topology::default());
    }

    #[test]
    fn force_unlock_actors_are_a_trimmed_comma_separated_list_and_none_by_default() {
        assert!(config(&[]).unwrap().flow_force_unlock_actors.is_empty());
        let cfg = config(&[("FLOW_FORCE_UNLOCK_ACTORS", " release-manager, ops-lead ,,")]).unwrap();
        assert_eq!(cfg.flow_force_unlock_actors, ["release-manager", "ops-lead"]);
    }

    #[test]
    fn a_short_ingest_token_is_refused() {
        let err = config(&[("INGEST_ADDR", "127.0.0.1:9091"), ("INGEST_TOKEN", "hunter2")]).unwrap_err();
        assert_eq!(err.var, "INGEST_TOKEN");
        assert!(err.problem.contains("shorter than 16 bytes"), "{err}");
        let ok = config(&[
            ("INGEST_ADDR", "127.0.0.1:9091"),
            ("INGEST_TOKEN", "0123456789abcdef0123"),
        ]);
        assert!(ok.is_ok());
    }

    #[test]
    fn the_admin_token_is_optional_long_enough_and_never_shown() {
        assert!(config(&[]).unwrap().admin_token.is_none());
        let err = config(&[("ADMIN_TOKEN", "short")]).unwrap_err();
        assert_eq!(err.var, "ADMIN_TOKEN");
        assert!(err.problem.contains("shorter than 16 bytes"), "{err}");
        assert!(!err.to_string().contains("short\""), "{err}");
        let cfg = config(&[("ADMIN_TOKEN", "admin-0123456789abcdef")]).unwrap();
        assert_eq!(
            cfg.admin_token.as_ref().map(Secret::expose),
            Some("admin-0123456789abcdef")
        );
        assert!(!format!("{cfg:?}").contains("admin-0123456789abcdef"));
    }

    #[test]
    fn region_derives_api_and_login_hosts() {
        let cfg = config(&[("GENESYS_REGION", "mypurecloud.ie")]).unwrap();
        assert_eq!(cfg.genesys.api_base.as_str(), "https://api.mypurecloud.ie/");
        assert_eq!(cfg.genesys.login_base.as_str(), "https://login.mypurecloud.ie/");
    }

    #[test]
    fn explicit_bases_override_the_region() {
        let cfg = config(&[
            ("GENESYS_API_BASE", "http://127.0.0.1:8088"),
            ("GENESYS_LOGIN_BASE", "http://127.0.0.1:8089"),
        ])
        .unwrap();
        assert_eq!(cfg.genesys.api_base.as_str(), "http://127.0.0.1:8088/");
        assert_eq!(cfg.genesys.login_base.as_str(), "http://127.0.0.1:8089/");
    }

    #[test]
    fn an_invalid_value_names_the_variable_in_one_line() {
        let err = config(&[("GENESYS_RATE_LIMIT_RPS", "fast")]).unwrap_err();
        assert_eq!(err.var, "GENESYS_RATE_LIMIT_RPS");
        let line = err.to_string();
        assert!(
            line.contains("GENESYS_RATE_LIMIT_RPS") && line.contains("fast"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert_eq!(
            config(&[("WORKER_CONCURRENCY", "0")]).unwrap_err().var,
            "WORKER_CONCURRENCY"
        );
        assert_eq!(config(&[("AMQP_URL", "http://x")]).unwrap_err().var, "AMQP_URL");
        assert_eq!(config(&[("ADMIN_ADDR", "nope")]).unwrap_err().var, "ADMIN_ADDR");
        assert_eq!(config(&[("LOG_FORMAT", "xml")]).unwrap_err().var, "LOG_FORMAT");
    }

    #[test]
    fn missing_credentials_are_reported() {
        let err = Config::from_lookup(|_| None).unwrap_err();
        assert_eq!(err.var, "GENESYS_CLIENT_ID");
    }

    #[test]
    fn the_tools_read_log_format_and_relay_secret_like_the_worker() {
        let lookup = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(log_format_from_lookup(lookup(&[])), Ok(LogFormat::Text));
        assert_eq!(
            log_format_from_lookup(lookup(&[("LOG_FORMAT", "json")])),
            Ok(LogFormat::Json)
        );
        let err = log_format_from_lookup(lookup(&[("LOG_FORMAT", "xml")])).unwrap_err();
        assert_eq!(err, config(&[("LOG_FORMAT", "xml")]).unwrap_err());
        assert_eq!(
            err.to_string(),
            "invalid configuration: LOG_FORMAT: expected text or json, got \"xml\""
        );

        for unset in [&[][..], &[("RELAY_SECRET", "")][..]] {
            let err = relay_secret_from_lookup(lookup(unset)).unwrap_err();
            assert_eq!(
                err.to_string(),
                "invalid configuration: RELAY_SECRET: required (the HMAC key receivers verify signatures with)"
            );
        }
        let secret = relay_secret_from_lookup(lookup(&[("RELAY_SECRET", "hmac-key-value")])).unwrap();
        assert_eq!(secret.expose(), "hmac-key-value");
        assert!(!format!("{secret:?}").contains("hmac-key-value"));
    }

    #[test]
    fn the_defaults_are_the_constants() {
        let cfg = config(&[]).unwrap();
        assert_eq!(cfg.amqp_url.expose(), DEFAULT_AMQP_URL);
        assert_eq!(cfg.redis.urls.expose(), DEFAULT_REDIS_URL);
        assert_eq!(cfg.redis.topology, RedisTopology::Standalone);
        assert_eq!(cfg.redis.wait_replicas, 0);
        assert_eq!(cfg.redis_key_prefix, DEFAULT_REDIS_KEY_PREFIX);
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(
            (
                cfg.limits.max_message_bytes,
                cfg.limits.max_batch_bytes,
                cfg.limits.batch_max
            ),
            (
                DEFAULT_MAX_MESSAGE_BYTES,
                DEFAULT_MAX_BATCH_MESSAGE_BYTES,
                DEFAULT_BATCH_MAX
            )
        );
        assert_eq!(job_limits_from_lookup(|_| None), Ok(cfg.limits));
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let cfg = config(&[("AMQP_URL", "amqp://user:hunter2@broker:5672/%2f")]).unwrap();
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redacted"));
        // The real value is still there for the connection.
        assert!(cfg.amqp_url.expose().contains("hunter2"));
    }

    #[test]
    fn several_nodes_are_taken_comma_separated_and_each_is_redacted() {
        let cfg = config(&[
            (
                "AMQP_URL",
                "amqp://u:hunter2@rabbit-0:5672/%2f, amqp://u:hunter2@rabbit-1:5672/%2f,amqp://u:hunter2@rabbit-2:5672/%2f",
            ),
            ("REDIS_URL", "redis://s-0:26379,redis://s-1:26379"),
            ("REDIS_TOPOLOGY", "sentinel"),
            ("REDIS_SENTINEL_MASTER", "genesys"),
            ("REDIS_WAIT_REPLICAS", "1"),
        ])
        .unwrap();
        let hosts: Vec<_> = cfg
            .amqp_url
            .nodes()
            .iter()
            .map(|n| n.0.host_str().unwrap().to_string())
            .collect();
        assert_eq!(hosts, ["rabbit-0", "rabbit-1", "rabbit-2"]);
        assert!(!cfg.amqp_url.to_string().contains("hunter2"));
        assert_eq!(cfg.amqp_url.to_string().matches("redacted").count(), 3);
        assert_eq!(cfg.redis.urls.nodes().len(), 2);
        assert_eq!(cfg.redis.topology, RedisTopology::Sentinel);
        assert_eq!(cfg.redis.sentinel_master, "genesys");
        assert_eq!(cfg.redis.wait_replicas, 1);
    }

    #[test]
    fn a_bad_node_list_or_topology_is_refused_by_name() {
        let err = config(&[("AMQP_URL", "amqp://a:5672/%2f,http://b:5672/")]).unwrap_err();
        assert_eq!(err.var, "AMQP_URL");
        assert!(err.problem.contains("got http"), "{err}");
        assert_eq!(config(&[("AMQP_URL", " , ")]).unwrap_err().var, "AMQP_URL");
        let err = config(&[("REDIS_TOPOLOGY", "replicated")]).unwrap_err();
        assert_eq!(err.var, "REDIS_TOPOLOGY");
        assert_eq!(
            config(&[("REDIS_KEY_PREFIX", "gw{a}:")]).unwrap_err().var,
            "REDIS_KEY_PREFIX"
        );
    }

    /// A pool only: the single pair's variables blanked.
    fn pool(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut all = vec![("GENESYS_CLIENT_ID", ""), ("GENESYS_CLIENT_SECRET", "")];
        all.extend_from_slice(vars);
        config(&all)
    }

    #[test]
    fn a_client_pool_is_read_from_genesys_clients() {
        let cfg = pool(&[(
            "GENESYS_CLIENTS",
            " a:s3cr3t-a, b:s3cr3t:b:with:colons ,c:s3cr3t-c,",
        )])
        .unwrap();
        let ids: Vec<&str> = cfg.genesys_clients.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        // Split at the first ':': the secret keeps the others.
        assert_eq!(cfg.genesys_clients[1].secret.expose(), "s3cr3t:b:with:colons");
        // The first is the single client of old.
        assert_eq!(cfg.genesys.client_id, "a");
        assert_eq!(cfg.genesys.client_secret.expose(), "s3cr3t-a");
        // Without a pool: the single pair, a pool of one.
        let single = config(&[]).unwrap();
        assert_eq!(single.genesys_clients.len(), 1);
        assert_eq!(single.genesys_clients[0].id, "client");
    }

    #[test]
    fn the_single_pair_joins_the_pool_first_and_a_pair_given_twice_counts_once() {
        let cfg = config(&[("GENESYS_CLIENTS", "other:s3cr3t-o,client:s3cr3t-value")]).unwrap();
        let ids: Vec<&str> = cfg.genesys_clients.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["client", "other"]);
        let err = config(&[("GENESYS_CLIENTS", "client:another-s3cr3t")]).unwrap_err();
        assert_eq!(err.var, "GENESYS_CLIENTS");
        assert!(err.problem.contains("\"client\""), "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        // Half a single pair beside a pool is refused by name.
        let err = pool(&[("GENESYS_CLIENTS", "a:x"), ("GENESYS_CLIENT_ID", "b")]).unwrap_err();
        assert_eq!(err.var, "GENESYS_CLIENT_SECRET");
    }

    #[test]
    fn a_bad_pool_entry_is_refused_by_name_and_position_without_its_text() {
        for (raw, problem) in [
            ("a:s3cr3t-1,s3cr3t-2", "entry 2: no ':'"),
            (":s3cr3t-1", "entry 1: empty client id"),
            ("a:", "entry 1: empty secret"),
            ("a b:s3cr3t-1", "entry 1: whitespace in the client id"),
            (",", "lists no client"),
        ] {
            let err = pool(&[("GENESYS_CLIENTS", raw)]).unwrap_err();
            assert_eq!(err.var, "GENESYS_CLIENTS", "{raw}");
            assert!(err.problem.starts_with(problem), "{raw}: {err}");
            assert!(!err.to_string().contains("s3cr3t"), "{err}");
            assert_eq!(err.to_string().lines().count(), 1);
        }
    }

    #[test]
    fn a_pool_is_read_from_a_file_one_pair_a_line() {
        let dir = std::env::temp_dir().join(format!("gw-clients-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("clients");
        std::fs::write(&file, "# the worker's clients\nf1:s3cr3t-1\n\n  f2:s3cr3t-2  \n").unwrap();
        let path = file.to_str().unwrap();
        let cfg = pool(&[("GENESYS_CLIENTS_FILE", path), ("GENESYS_CLIENTS", "a:s3cr3t-a")]).unwrap();
        let ids: Vec<&str> = cfg.genesys_clients.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "f1", "f2"]);
        assert_eq!(cfg.genesys_clients[2].secret.expose(), "s3cr3t-2");
        std::fs::write(&file, "f1:s3cr3t-1\nf2-s3cr3t-2\n").unwrap();
        let err = pool(&[("GENESYS_CLIENTS_FILE", path)]).unwrap_err();
        assert_eq!(err.var, "GENESYS_CLIENTS_FILE");
        assert!(err.problem.starts_with("line 2: no ':'"), "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let err = pool(&[("GENESYS_CLIENTS_FILE", "/nonexistent/clients")]).unwrap_err();
        assert_eq!(err.var, "GENESYS_CLIENTS_FILE");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_output_redacts_every_secret_of_the_pool() {
        let cfg = pool(&[("GENESYS_CLIENTS", "a:s3cr3t-a,b:s3cr3t-b")]).unwrap();
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(
            debug.contains("OAuthClient { id: \"b\", secret: Secret([redacted]) }"),
            "{debug}"
        );
    }
}
