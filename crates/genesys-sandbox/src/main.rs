//! The `genesys-sandbox` binary: serves the simulator on loopback until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use genesys_sandbox::{RateLimit, SandboxConfig};

#[derive(Debug, Parser)]
#[command(
    name = "genesys-sandbox",
    version,
    about = "A Genesys Cloud simulator for tests, demos and local development (loopback only by default)."
)]
struct Args {
    /// Address to listen on. Loopback by default: the sandbox has no real security.
    #[arg(long, env = "SANDBOX_BIND", default_value = "127.0.0.1:8088")]
    bind: SocketAddr,
    /// Number of seeded users.
    #[arg(long, env = "SANDBOX_USERS", default_value_t = 200)]
    users: usize,
    /// Number of seeded workitems (of the seeded worktype).
    #[arg(long, env = "SANDBOX_WORKITEMS", default_value_t = 20)]
    workitems: usize,
    /// Number of seeded flows, each with a published version.
    #[arg(long, env = "SANDBOX_FLOWS", default_value_t = 3)]
    flows: usize,
    /// An accepted OAuth client as ID:SECRET (repeatable).
    #[arg(
        long = "client",
        env = "SANDBOX_CLIENTS",
        value_delimiter = ',',
        default_value = "sandbox-client:sandbox-secret,other-client:other-secret"
    )]
    clients: Vec<String>,
    /// Lifetime of issued access tokens.
    #[arg(long, env = "SANDBOX_TOKEN_TTL_SECS", default_value_t = 86_400)]
    token_ttl_secs: u64,
    /// Requests per second each OAuth client may make (Genesys: 300/min per token); 0 disables
    /// the limit.
    #[arg(long, env = "SANDBOX_RATE_LIMIT_RPS", default_value_t = 5)]
    rate_limit_rps: u32,
    /// Burst of the per-client token bucket.
    #[arg(long, env = "SANDBOX_RATE_LIMIT_BURST", default_value_t = 10)]
    rate_limit_burst: u32,
    /// Largest list the bulk presence endpoint accepts.
    #[arg(long, env = "SANDBOX_BULK_PRESENCE_MAX", default_value_t = 50)]
    bulk_presence_max: usize,
    /// How long asynchronous flow operations (checkin, publish) take.
    #[arg(long, env = "SANDBOX_FLOW_OPERATION_MS", default_value_t = 500)]
    flow_operation_ms: u64,
    /// Seed of the fault injector: the same requests in the same order meet the same faults.
    #[arg(long, env = "SANDBOX_SEED", default_value_t = 42)]
    seed: u64,
    /// Which of the real service's behaviours to play, as JSON, e.g.
    /// '{"flow_operations": "complete_in_response", "consistency_lag_ms": 500}' (README, "The
    /// sandbox"); fields not given keep their defaults.
    #[arg(long, env = "SANDBOX_BEHAVIOUR", value_parser = parse_behaviour)]
    behaviour: Option<genesys_sandbox::Behaviour>,
}

fn parse_behaviour(text: &str) -> Result<genesys_sandbox::Behaviour, String> {
    genesys_sandbox::Behaviour::parse(text)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().flatten_event(true).try_init(),
        _ => logs.try_init(),
    };
    run(args).await
}

async fn run(args: Args) -> ExitCode {
    let mut clients = Vec::new();
    for client in &args.clients {
        let Some((id, secret)) = client.split_once(':') else {
            eprintln!("invalid --client {client:?}: expected ID:SECRET");
            return ExitCode::from(2);
        };
        clients.push((id.to_string(), secret.to_string()));
    }
    let rate_limit = (args.rate_limit_rps > 0).then_some(RateLimit {
        requests_per_second: args.rate_limit_rps,
        burst: args.rate_limit_burst.max(1),
    });
    let config = SandboxConfig {
        users: args.users,
        workitems: args.workitems,
        flows: args.flows,
        clients,
        token_ttl_secs: args.token_ttl_secs,
        rate_limit,
        bulk_presence_max: args.bulk_presence_max,
        flow_operation_ms: args.flow_operation_ms,
        seed: args.seed,
        behaviour: args.behaviour.unwrap_or_default(),
    };
    let listener = match tokio::net::TcpListener::bind(args.bind).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("sandbox: cannot listen on {}: {err}", args.bind);
            return ExitCode::FAILURE;
        }
    };
    if !args.bind.ip().is_loopback() {
        tracing::warn!(bind = %args.bind, "The sandbox listens beyond loopback; it has no real security.");
    }
    tracing::info!(addr = %args.bind, users = config.users, "Genesys sandbox listening.");
    match genesys_sandbox::serve(listener, config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sandbox: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
