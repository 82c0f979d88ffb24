//! `genesys-worker relay`: forwards CRM or audit events to a webhook ([`crate::relay`]) until
//! SIGINT or SIGTERM. The signing key is `RELAY_SECRET` ([`config::relay_secret_from_env`]):
//! without it, exit 2.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{RelayArgs, RelaySource};
use crate::config;
use crate::relay::RelayOptions;
use crate::retry::RetryPolicy;

pub async fn run(args: RelayArgs) -> ExitCode {
    if let Err(code) = super::init_logs() {
        return code;
    }
    let secret = match config::relay_secret_from_env() {
        Ok(secret) => secret,
        Err(err) => return super::invalid(&err),
    };
    let (exchange, name) = match args.source {
        RelaySource::Crm => (args.crm_exchange, "crm"),
        RelaySource::Audit => (args.audit_exchange, "audit"),
    };
    let options = RelayOptions {
        amqp_url: args.broker.amqp_url,
        exchange,
        queue: args.queue.unwrap_or_else(|| format!("genesys.relay.{name}")),
        url: args.url,
        secret,
        retry: RetryPolicy {
            max_attempts: args.max_attempts.max(1),
            base_delay: Duration::from_millis(args.backoff_ms),
            max_delay: Duration::from_secs(60),
            ..RetryPolicy::default()
        },
        concurrency: args.concurrency.max(1),
        request_timeout: Duration::from_millis(args.timeout_ms),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        stop.cancel();
    });
    match crate::relay::run(options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("relay: {err}");
            ExitCode::FAILURE
        }
    }
}
