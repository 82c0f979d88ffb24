//! The `genesys-worker` binary: parses the command line ([`genesys_worker::cli`]) and hands the
//! subcommand to its front end in [`genesys_worker::tools`], which sets up logging, calls the
//! library, prints, and returns the exit code.

use std::process::ExitCode;

use clap::Parser;
use genesys_worker::cli::{Cli, Command};
use genesys_worker::tools;

/// Per job the worker makes and drops many small buffers (messages, JSON, Redis replies); under
/// glibc's allocator that was a third of its CPU (docs/architecture.md, section 3.3).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run => tools::run::run().await,
        Command::Enqueue(args) => tools::enqueue::run(args).await,
        Command::Plan(args) => tools::plan::run(args).await,
        Command::Audit(command) => tools::audit::run(command).await,
        Command::ValidateFlow(args) => tools::validate_flow::run(&args),
        Command::Dlq(command) => tools::dlq::run(command).await,
        Command::Relay(args) => tools::relay::run(args).await,
        Command::Batch(command) => tools::batch::run(command).await,
        Command::Control(command) => tools::control::run(command).await,
    }
}
