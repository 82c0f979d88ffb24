//! `genesys-worker run`: the worker, configured by the environment ([`Config::from_env`]).
//! Exit 2 on an invalid setting, 1 when the worker stops on an error, 0 after a graceful
//! shutdown (SIGINT or SIGTERM).

use std::process::ExitCode;

use crate::config::Config;
use crate::{telemetry, worker};

pub async fn run() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => return super::invalid(&err),
    };
    telemetry::init(config.log_format);
    match worker::run(config, super::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error.message = %err, "Worker stopped on an error.");
            ExitCode::FAILURE
        }
    }
}
