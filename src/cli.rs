//! Command-line interface: `run` (the worker), `sandbox` (the Genesys simulator) and
//! `enqueue` (publish jobs). The worker's settings come from the environment (DESIGN.md
//! section 6); flags here are for the tools around it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Run the Genesys Cloud simulator (login and API host on one port).
    Sandbox(SandboxArgs),
    /// Publish an NDJSON file of jobs (one job message per line) to the jobs exchange.
    Enqueue(EnqueueArgs),
}

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on. Loopback by default: the sandbox has no real security.
    #[arg(long, env = "SANDBOX_BIND", default_value = "127.0.0.1:8088")]
    pub bind: SocketAddr,
    /// Number of seeded users.
    #[arg(long, env = "SANDBOX_USERS", default_value_t = 200)]
    pub users: usize,
    /// An accepted OAuth client as ID:SECRET (repeatable).
    #[arg(
        long = "client",
        env = "SANDBOX_CLIENTS",
        value_delimiter = ',',
        default_value = "sandbox-client:sandbox-secret"
    )]
    pub clients: Vec<String>,
    /// Lifetime of issued access tokens.
    #[arg(long, env = "SANDBOX_TOKEN_TTL_SECS", default_value_t = 86_400)]
    pub token_ttl_secs: u64,
}

#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    /// NDJSON file of jobs, or - for standard input.
    pub file: PathBuf,
    /// Wait for every job's outcome on the audit exchange and print it.
    #[arg(long)]
    pub await_outcomes: bool,
    /// How long to wait for outcomes.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    #[arg(long, env = "JOBS_EXCHANGE", default_value = "genesys.jobs")]
    pub jobs_exchange: String,
    #[arg(long, env = "AUDIT_EXCHANGE", default_value = "genesys.audit")]
    pub audit_exchange: String,
}
