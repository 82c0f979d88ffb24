//! Command-line interface: `run` (the worker), `enqueue` (publish jobs), `plan` (what jobs
//! would do) and the tools. The worker's settings come from the environment (the README's
//! Configuration table); flags here are for the tools around it, and their defaults are
//! [`crate::config`]'s. Each subcommand is carried out by its module in [`crate::tools`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, RedisSettings, RedisTopology, ServiceUrls};

#[derive(Debug, Parser)]
#[command(
    name = "genesys-worker",
    version,
    about = "Applies change requests to Genesys Cloud within its rate limits."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume jobs, apply them to Genesys, publish events. Configured by the
    /// environment (AMQP_URL, REDIS_URL, GENESYS_*; see README).
    Run,
    /// Publish an NDJSON file of jobs (one job message per line) to the jobs exchange.
    Enqueue(EnqueueArgs),
    /// Work with captured audit events.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Read and replay the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Forward CRM or audit events to a webhook (HMAC-signed, retried, dead-lettered).
    /// The signing secret comes from RELAY_SECRET.
    Relay(RelayArgs),
    /// Follow `batch` jobs.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Show what an NDJSON file of jobs would do if enqueued now, read from Genesys (nothing
    /// is changed).
    ///
    /// One line per job: `no-op` (already so), `change` (from → to), `deferred` (waits for an
    /// interaction or a lock first) or `blocked` (why); then the counts and the Genesys requests
    /// the plan cost. Configured like the worker (GENESYS_*, REDIS_URL, REDIS_KEY_PREFIX, the
    /// rate limit): its calls spend the fleet's budget in Redis. Exit 0 when nothing is blocked,
    /// 1 when a job is blocked or a line invalid, 2 on unreadable input or an invalid setting,
    /// 3 when Genesys or Redis cannot be reached.
    Plan(PlanArgs),
    /// Validate an IVR flow definition offline, as `flow.deploy` would (for CI pipelines).
    /// Exit 0 when valid, 1 when invalid, 2 when the input cannot be read.
    ValidateFlow(ValidateFlowArgs),
    /// Pause, resume or cancel work, across every replica (kept in Redis; each change is an
    /// audit event naming the actor). Exit 0 when done, 1 when there was nothing to resume or
    /// Redis or the broker failed, 2 for an invalid target.
    #[command(subcommand)]
    Control(ControlCommand),
}

#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Hold work back: SCOPE is kind (agent.status, ...), lane (single, batch), batch (its
    /// job_id) or correlation (a correlation_id). Paused jobs wait in the lane's `.paused`
    /// queue, spending no Genesys budget; jobs already calling Genesys finish.
    Pause(ControlArgs),
    /// Lift a pause (same SCOPE and VALUE); the jobs it held go back to their queue.
    Resume(ControlArgs),
    /// End jobs before they run, as `cancelled`: SCOPE is batch (its children not yet
    /// applied), job (a job_id) or key (an idempotency key).
    Cancel(ControlArgs),
    /// Print the controls in force.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: ControlStore,
    },
}

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// kind, lane, batch, correlation, job or key.
    pub scope: String,
    pub value: String,
    /// Who asks, for the audit event (default: $USER).
    #[arg(long, env = "CONTROL_ACTOR")]
    pub actor: Option<String>,
    /// Why, for the audit event and the console.
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub store: ControlStore,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[arg(long, env = "AUDIT_EXCHANGE", default_value = config::DEFAULT_AUDIT_EXCHANGE)]
    pub audit_exchange: String,
}

/// Where the controls are kept: the workers' Redis and key prefix.
#[derive(Debug, clap::Args)]
pub struct ControlStore {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = config::DEFAULT_REDIS_KEY_PREFIX)]
    pub redis_key_prefix: String,
    /// Whether the workers keep the verifiable audit log (`on`, `off`): a control's audit event
    /// then takes its `log_index` like theirs.
    #[arg(long, env = "AUDIT_LOG", default_value = "on", value_parser = ["on", "off"])]
    pub audit_log: String,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// NDJSON file of jobs (as `enqueue` takes), or - for standard input; a batch is planned as
    /// its children.
    pub file: PathBuf,
    /// One JSON object per job, then `{"summary": {...}}` (see README, Commands).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ValidateFlowArgs {
    /// JSON file of the flow (`{name, type, start, nodes}`), or - for standard input.
    pub file: PathBuf,
    #[arg(long)]
    pub max_nodes: Option<usize>,
    #[arg(long)]
    pub max_depth: Option<usize>,
    #[arg(long)]
    pub allow_cycles: bool,
    /// Known media ids: a JSON array, or one id per line. Without it media ids are not checked.
    #[arg(long)]
    pub media_registry: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also print the flow after condition optimisation (with --json, in the report).
    #[arg(long)]
    pub optimized: bool,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters with their error headers; the queue is left as it was.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Most dead letters to print.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        broker: DlqOptions,
    },
    /// Re-publish dead letters to their original exchange and routing key, acking each from
    /// the dead-letter queue only once its re-publication is confirmed.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Print what would be replayed; publish and ack nothing.
        #[arg(long)]
        dry_run: bool,
        /// Most re-publications per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[command(flatten)]
        broker: DlqOptions,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelaySource {
    Crm,
    Audit,
}

#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// Which events: the CRM exchange (applied changes) or the audit exchange (every outcome).
    #[arg(long, value_enum)]
    pub source: RelaySource,
    /// The webhook events are POSTed to.
    #[arg(long)]
    pub url: url::Url,
    /// The relay's queue on the source exchange (default `genesys.relay.<source>`); dead
    /// letters go to `<queue>.dead`.
    #[arg(long, env = "RELAY_QUEUE")]
    pub queue: Option<String>,
    /// Delivery attempts per event before it is dead-lettered.
    #[arg(long, env = "RELAY_MAX_ATTEMPTS", default_value_t = config::DEFAULT_RELAY_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Events POSTed at once.
    #[arg(long, env = "RELAY_CONCURRENCY", default_value_t = config::DEFAULT_RELAY_CONCURRENCY)]
    pub concurrency: usize,
    /// First retry delay in milliseconds (doubling, with full jitter, up to 60 s).
    #[arg(long, env = "RELAY_BACKOFF_MS", default_value_t = config::DEFAULT_RELAY_BACKOFF_MS)]
    pub backoff_ms: u64,
    #[arg(long, env = "RELAY_TIMEOUT_MS", default_value_t = config::DEFAULT_RELAY_TIMEOUT_MS)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[arg(long, env = "CRM_EXCHANGE", default_value = config::DEFAULT_CRM_EXCHANGE)]
    pub crm_exchange: String,
    #[arg(long, env = "AUDIT_EXCHANGE", default_value = config::DEFAULT_AUDIT_EXCHANGE)]
    pub audit_exchange: String,
}

/// The broker the tools connect to.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// RabbitMQ (`amqps://` for TLS); a cluster's nodes separated by commas.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = config::DEFAULT_AMQP_URL,
        hide_env_values = true,
        value_parser = ServiceUrls::parse
    )]
    pub amqp_url: ServiceUrls,
}

/// The Redis the tools read.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis: one server, the Sentinels, or nodes of a Redis Cluster, separated by commas.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = config::DEFAULT_REDIS_URL,
        hide_env_values = true,
        value_parser = ServiceUrls::parse
    )]
    pub redis_url: ServiceUrls,
    #[arg(long, env = "REDIS_TOPOLOGY", value_enum, default_value_t = RedisTopology::Standalone)]
    pub redis_topology: RedisTopology,
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = config::DEFAULT_REDIS_SENTINEL_MASTER)]
    pub redis_sentinel_master: String,
}

impl RedisArgs {
    /// A reader's settings: nothing is written, so no replication wait.
    pub fn settings(&self) -> RedisSettings {
        RedisSettings {
            urls: self.redis_url.clone(),
            topology: self.redis_topology,
            sentinel_master: self.redis_sentinel_master.clone(),
            wait_replicas: 0,
            wait_timeout_ms: config::DEFAULT_REDIS_WAIT_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Print a batch's progress (children published, final, counts per outcome, first errors).
    /// Exit 0 when every child is final and the summary was sent, 3 while it runs, 1 when no
    /// such batch is known, 2 when Redis cannot be reached.
    Status {
        /// The batch's `job_id`.
        id: uuid::Uuid,
        /// Print the progress as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        redis: RedisArgs,
        #[arg(long, env = "REDIS_KEY_PREFIX", default_value = config::DEFAULT_REDIS_KEY_PREFIX)]
        redis_key_prefix: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the per-entity hash chains of captured audit events (NDJSON); exit 1 at the first
    /// break, naming the event, 2 if the input cannot be read.
    Verify {
        /// NDJSON file of audit events, or - for standard input.
        file: PathBuf,
        /// Take each entity's links in version order rather than file order (for streams merged
        /// from several consumers); a reordering then no longer counts as a break.
        #[arg(long)]
        sort: bool,
        /// Also check the Merkle log against this verifier key (the key text, or a file holding
        /// it): checkpoint signatures, roots, forks, missing, altered or reordered leaves.
        #[arg(long, value_name = "VERIFIER")]
        key: Option<String>,
        /// The checkpoints' expected origin (default: the key's name).
        #[arg(long, requires = "key")]
        origin: Option<String>,
        /// Problems listed before only counting the rest.
        #[arg(long, default_value_t = 20)]
        max_problems: usize,
    },
    /// Capture everything published on the audit exchange (events and checkpoints) to FILE as
    /// NDJSON, for `audit verify --key`: until interrupted, or with --until-sealed until a
    /// checkpoint covers every event captured and nothing arrived for --idle-secs. Exit 0, 1
    /// when the broker fails or --timeout-secs runs out first.
    Capture {
        /// The NDJSON file to write (appended to).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(long)]
        until_sealed: bool,
        #[arg(long, default_value_t = 2)]
        idle_secs: u64,
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
        #[command(flatten)]
        broker: BrokerArgs,
        #[arg(long, env = "AUDIT_EXCHANGE", default_value = config::DEFAULT_AUDIT_EXCHANGE)]
        audit_exchange: String,
    },
    /// Generate an Ed25519 checkpoint signing key: the private key is written to FILE (mode
    /// 0600, never overwritten; default NAME.key), the verifier key printed for auditors.
    Keygen {
        /// The key's name (no spaces, no '+'); by default also the checkpoints' origin.
        name: String,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print a JSON inclusion proof of an event against a checkpoint in FILE (the latest, or
    /// the one of size --against), or with --consistency a consistency proof between two
    /// checkpoints. Exit 1 when the file cannot prove it, 2 when it cannot be read.
    Prove {
        /// EVENT_ID FILE, or FILE with --consistency.
        #[arg(required = true, num_args = 1..=2, value_names = ["EVENT_ID", "FILE"])]
        args: Vec<String>,
        /// The tree size of the checkpoint to prove against (default: the latest).
        #[arg(long, value_name = "SIZE", conflicts_with = "consistency")]
        against: Option<u64>,
        /// Prove that the checkpoint of NEW_SIZE extends the one of OLD_SIZE.
        #[arg(long, num_args = 2, value_names = ["OLD_SIZE", "NEW_SIZE"])]
        consistency: Option<Vec<u64>>,
    },
    /// Check a proof made by `audit prove` with nothing but the verifier key. Exit 0 valid, 1
    /// refused (with the reason), 2 unreadable.
    CheckProof {
        /// The proof's JSON file, or - for standard input.
        proof: PathBuf,
        /// The verifier key (the key text, or a file holding it).
        #[arg(long, value_name = "VERIFIER")]
        key: String,
        /// The checkpoints' expected origin (default: the key's name).
        #[arg(long)]
        origin: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    /// NDJSON file of jobs, or - for standard input.
    pub file: PathBuf,
    /// Wait for every published job's outcome on the audit exchange, print each, then the
    /// counts per outcome.
    #[arg(long, visible_alias = "await-outcomes")]
    pub wait: bool,
    /// Publish nothing if any line is invalid (by default invalid lines are reported with
    /// their line numbers and skipped, and the exit code is 1).
    #[arg(long)]
    pub strict: bool,
    /// How long to wait for outcomes.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// With --wait: also write the audit events, as published, to this NDJSON file (input for
    /// `audit verify`).
    #[arg(long, requires = "wait")]
    pub events_out: Option<PathBuf>,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[arg(long, env = "JOBS_EXCHANGE", default_value = config::DEFAULT_JOBS_EXCHANGE)]
    pub jobs_exchange: String,
    #[arg(long, env = "AUDIT_EXCHANGE", default_value = config::DEFAULT_AUDIT_EXCHANGE)]
    pub audit_exchange: String,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;
    use crate::config::{self, Topology};

    /// The default of `arg` in the subcommand at `path`, as `--help` shows it.
    fn default(path: &[&str], arg: &str) -> String {
        let mut command = Cli::command();
        for name in path {
            command = command
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("no subcommand {name}"))
                .clone();
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == arg)
            .unwrap_or_else(|| panic!("{path:?}: no argument {arg}"));
        let values: Vec<_> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        values.join(",")
    }

    #[test]
    fn the_tools_default_to_the_workers_settings() {
        let topology = Topology::default();
        for path in [&["enqueue"][..], &["relay"], &["dlq", "list"], &["dlq", "replay"]] {
            assert_eq!(default(path, "amqp_url"), config::DEFAULT_AMQP_URL, "{path:?}");
        }
        for path in [&["enqueue"][..], &["dlq", "list"], &["dlq", "replay"]] {
            assert_eq!(default(path, "jobs_exchange"), topology.jobs_exchange, "{path:?}");
        }
        for path in [&["dlq", "list"][..], &["dlq", "replay"]] {
            assert_eq!(
                default(path, "dead_letter_queue"),
                topology.dead_letter,
                "{path:?}"
            );
        }
        for path in [&["enqueue"][..], &["relay"]] {
            assert_eq!(
                default(path, "audit_exchange"),
                topology.audit_exchange,
                "{path:?}"
            );
        }
        assert_eq!(default(&["relay"], "crm_exchange"), topology.crm_exchange);
        assert_eq!(
            default(&["batch", "status"], "redis_url"),
            config::DEFAULT_REDIS_URL
        );
        assert_eq!(
            default(&["batch", "status"], "redis_key_prefix"),
            config::DEFAULT_REDIS_KEY_PREFIX
        );
    }
}

/// Which dead letters a command applies to.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only jobs of this kind (e.g. agent.status).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only dead letters with this error code (`x-error-code`, e.g. genesys.bad.gateway).
    #[arg(long)]
    pub code: Option<String>,
}

/// Where the tools connect.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqOptions {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[arg(long, env = "DEAD_LETTER_QUEUE", default_value = crate::config::DEFAULT_DEAD_LETTER_QUEUE)]
    pub dead_letter_queue: String,
    /// Where a dead letter without origin headers is replayed to.
    #[arg(long, env = "JOBS_EXCHANGE", default_value = crate::config::DEFAULT_JOBS_EXCHANGE)]
    pub jobs_exchange: String,
}
