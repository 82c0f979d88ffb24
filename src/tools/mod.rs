//! The front ends of the binary's subcommands, one module each: argument handling, calling the
//! library, printing and the exit code. `src/main.rs` only parses the command line ([`crate::cli`])
//! and hands over to `<tool>::run`.
//!
//! - [`run`]: the worker (`genesys-worker run`), configured by [`crate::config::Config`].
//! - [`enqueue`]: publish an NDJSON file of jobs ([`crate::enqueue`]).
//! - [`plan`]: what an NDJSON file of jobs would do, read from Genesys ([`crate::plan`]).
//! - [`dlq`]: `dlq list` and `dlq replay` ([`crate::dlq`]).
//! - [`relay`]: events to a webhook ([`crate::relay`]).
//! - [`audit`]: `audit verify` ([`crate::audit`]).
//! - [`validate_flow`]: the `flow.deploy` rules offline ([`crate::flow`]).
//! - [`batch`]: `batch status` ([`crate::store::Store::batch_progress`]).
//! - [`control`]: `control pause|resume|cancel|list` ([`crate::control`]).
//!
//! Exit codes follow one convention: 0 success; 1 a failure or a negative answer (skipped lines,
//! an invalid flow, a broken chain, an unknown batch, a blocked job); 2 an invalid setting or
//! unreadable input; `batch status` adds 3 (still running), `plan` 3 (Genesys or Redis cannot be
//! reached). Settings the tools read from the environment go through [`crate::config`], like the
//! worker's: an invalid one is one line naming the variable, then exit 2.

use std::process::ExitCode;

use crate::config::ConfigError;

pub mod audit;
pub mod batch;
pub mod control;
pub mod dlq;
pub mod enqueue;
pub mod plan;
pub mod relay;
pub mod run;
pub mod validate_flow;

/// Prints an invalid setting's one line; the exit code of a configuration error.
fn invalid(err: &ConfigError) -> ExitCode {
    eprintln!("{err}");
    ExitCode::from(2)
}

/// Sets up logging as `LOG_FORMAT` says (for the tools that log); an invalid value is a
/// configuration error.
fn init_logs() -> Result<(), ExitCode> {
    let format = crate::config::log_format_from_env().map_err(|err| invalid(&err))?;
    crate::telemetry::init(format);
    Ok(())
}

/// A file's text, or standard input's for `-`.
fn read_input(file: &std::path::Path) -> std::io::Result<String> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
