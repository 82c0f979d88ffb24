//! The `genesys-worker` binary: parses the command line, sets up logging, and hands over to the
//! library.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use genesys_worker::audit::{self, VerifyError};
use genesys_worker::cli::{
    AuditCommand, BatchCommand, Cli, Command, DlqCommand, EnqueueArgs, RelayArgs, RelaySource,
    ValidateFlowArgs,
};
use genesys_worker::config::{Config, LogFormat, ServiceUrl};
use genesys_worker::enqueue::{self, EnqueueOptions};
use genesys_worker::flow::{self, FlowDefinition, Rules};
use genesys_worker::{telemetry, worker};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => run().await,
        Command::Enqueue(args) => run_enqueue(args).await,
        Command::Audit(AuditCommand::Verify { file, sort }) => verify_audit(&file, sort),
        Command::ValidateFlow(args) => validate_flow(&args),
        Command::Dlq(command) => dlq(command).await,
        Command::Relay(args) => relay(args).await,
        Command::Batch(BatchCommand::Status {
            id,
            json,
            redis_url,
            redis_key_prefix,
        }) => batch_status(id, json, &redis_url, &redis_key_prefix).await,
    }
}

async fn relay(args: RelayArgs) -> ExitCode {
    telemetry::init(log_format_from_env());
    let Some(secret) = std::env::var("RELAY_SECRET").ok().filter(|s| !s.is_empty()) else {
        eprintln!(
            "invalid configuration: RELAY_SECRET: required (the HMAC key receivers verify signatures with)"
        );
        return ExitCode::from(2);
    };
    let (exchange, name) = match args.source {
        RelaySource::Crm => (args.crm_exchange, "crm"),
        RelaySource::Audit => (args.audit_exchange, "audit"),
    };
    let options = genesys_worker::relay::RelayOptions {
        amqp_url: args.broker.amqp_url,
        exchange,
        queue: args.queue.unwrap_or_else(|| format!("genesys.relay.{name}")),
        url: args.url,
        secret: genesys_worker::config::Secret::new(secret),
        retry: genesys_worker::retry::RetryPolicy {
            max_attempts: args.max_attempts.max(1),
            base_delay: Duration::from_millis(args.backoff_ms),
            max_delay: Duration::from_secs(60),
            ..genesys_worker::retry::RetryPolicy::default()
        },
        concurrency: args.concurrency.max(1),
        request_timeout: Duration::from_millis(args.timeout_ms),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    match genesys_worker::relay::run(options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("relay: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn dlq(command: DlqCommand) -> ExitCode {
    use genesys_worker::dlq;
    let line = |letter: &dlq::Letter| {
        format!(
            "{}  {:<18} {:<28} attempts {:<2} -> {} {}  {}",
            letter.job_id.as_deref().unwrap_or("(no job id)"),
            letter.kind.as_deref().unwrap_or("?"),
            letter.code,
            letter.attempts,
            if letter.original_exchange.is_empty() {
                "(default)"
            } else {
                &letter.original_exchange
            },
            letter.original_routing_key,
            letter.message.as_deref().unwrap_or(""),
        )
    };
    match command {
        DlqCommand::List {
            filter,
            limit,
            json,
            broker,
        } => {
            let options = broker;
            match dlq::list(&options, &filter, limit).await {
                Ok(letters) => {
                    for letter in &letters {
                        if json {
                            println!("{}", serde_json::to_string(letter).expect("letters serialize"));
                        } else {
                            println!("{}", line(letter));
                        }
                    }
                    if !json {
                        eprintln!("{} dead letter(s) listed", letters.len());
                    }
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("dlq list: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        DlqCommand::Replay {
            filter,
            dry_run,
            rate,
            broker,
        } => {
            let options = broker;
            match dlq::replay(&options, &filter, rate, dry_run).await {
                Ok(outcome) => {
                    for letter in &outcome.replayed {
                        println!(
                            "{}{}",
                            if dry_run { "would replay " } else { "replayed " },
                            line(letter)
                        );
                    }
                    println!(
                        "{} {} dead letter(s); {} left in {}",
                        if dry_run { "would replay" } else { "replayed" },
                        outcome.replayed.len(),
                        if dry_run {
                            outcome.left + outcome.replayed.len()
                        } else {
                            outcome.left
                        },
                        options.dead_letter_queue
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("dlq replay: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn batch_status(id: uuid::Uuid, json: bool, url: &ServiceUrl, prefix: &str) -> ExitCode {
    // Reading progress needs neither the TTL nor the lease.
    let progress = match genesys_worker::store::Store::connect(url, prefix, 1, 1).await {
        Ok(store) => store.batch_progress(id).await,
        Err(err) => Err(err),
    };
    let progress = match progress {
        Ok(Some(progress)) => progress,
        Ok(None) => {
            eprintln!("batch {id}: unknown (no progress under prefix {prefix:?}; finished batches are kept for IDEMPOTENCY_TTL_SECS)");
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!("batch {id}: {err}");
            return ExitCode::from(2);
        }
    };
    let done = progress.total > 0 && progress.finished >= progress.total && progress.summary_sent;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&progress).expect("progress serializes")
        );
    } else {
        let percent = progress.finished * 100 / progress.total.max(1);
        println!(
            "batch {id}: {} of {} children final ({percent}%), {} published, summary {}",
            progress.finished,
            progress.total,
            progress.published,
            if progress.summary_sent { "sent" } else { "pending" }
        );
        for (outcome, count) in &progress.counts {
            println!("  {outcome:<12} {count}");
        }
        for error in &progress.first_errors {
            println!(
                "  error: child {} ({}): [{}] {}",
                error["index"],
                error["job_id"].as_str().unwrap_or("?"),
                error["code"].as_str().unwrap_or(""),
                error["message"].as_str().unwrap_or("")
            );
        }
    }
    if done {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

fn validate_flow(args: &ValidateFlowArgs) -> ExitCode {
    let unreadable = |problem: String| {
        eprintln!("{problem}");
        ExitCode::from(2)
    };
    let input = match read_input(&args.file) {
        Ok(input) => input,
        Err(err) => return unreadable(format!("cannot read {}: {err}", args.file.display())),
    };
    let mut definition = match serde_json::from_str(&input)
        .map_err(|e| e.to_string())
        .and_then(FlowDefinition::from_value)
    {
        Ok(definition) => definition,
        Err(err) => return unreadable(format!("{}: not a flow definition: {err}", args.file.display())),
    };
    let mut rules = Rules {
        allow_cycles: args.allow_cycles,
        ..Rules::default()
    };
    rules.max_nodes = args.max_nodes.unwrap_or(rules.max_nodes);
    rules.max_depth = args.max_depth.unwrap_or(rules.max_depth);
    if let Some(path) = &args.media_registry {
        match std::fs::read_to_string(path) {
            Ok(raw) => {
                let ids = serde_json::from_str::<Vec<String>>(&raw).unwrap_or_else(|_| {
                    raw.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect()
                });
                rules.media_registry = Some(ids);
            }
            Err(err) => return unreadable(format!("cannot read {}: {err}", path.display())),
        }
    }
    let result = flow::validate(&definition, &rules);
    let optimization = args.optimized.then(|| flow::optimize(&mut definition));
    let valid = result.is_ok();
    if args.json {
        let errors: Vec<serde_json::Value> = result
            .as_ref()
            .err()
            .into_iter()
            .flatten()
            .map(|e| {
                let mut value = serde_json::to_value(e).expect("flow errors serialize");
                value["message"] = serde_json::json!(e.to_string());
                value
            })
            .collect();
        let mut report =
            serde_json::json!({"valid": valid, "nodes": definition.nodes.len(), "errors": errors});
        if let Some(optimization) = optimization {
            report["optimization"] = serde_json::json!(optimization);
            report["flow"] = serde_json::json!(definition);
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        );
    } else {
        match &result {
            Ok(()) => println!(
                "{}: valid ({} nodes)",
                args.file.display(),
                definition.nodes.len()
            ),
            Err(errors) => {
                println!("{}: {} problem(s)", args.file.display(), errors.len());
                for error in errors {
                    println!("  {}: {error}", error.code());
                }
            }
        }
        if let Some(optimization) = optimization {
            println!(
                "optimised: {} node(s) changed, {} reordered, {} duplicate condition(s) dropped",
                optimization.nodes_changed, optimization.nodes_reordered, optimization.conditions_dropped
            );
            println!(
                "{}",
                serde_json::to_string_pretty(&definition).expect("flows serialize")
            );
        }
    }
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn read_input(file: &std::path::Path) -> std::io::Result<String> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
}

fn verify_audit(file: &std::path::Path, sort: bool) -> ExitCode {
    let input = match read_input(file) {
        Ok(input) => input,
        Err(err) => {
            eprintln!("cannot read {}: {err}", file.display());
            return ExitCode::from(2);
        }
    };
    match audit::verify(&input, sort) {
        Ok(report) => {
            println!(
                "ok: {} events, {} entities, {} links verified ({} repeated events skipped)",
                report.events, report.entities, report.links, report.duplicates
            );
            ExitCode::SUCCESS
        }
        Err(err @ VerifyError::Break { .. }) => {
            println!("{err}");
            ExitCode::FAILURE
        }
        Err(err @ VerifyError::Unreadable { .. }) => {
            eprintln!("{err}");
            ExitCode::from(2)
        }
    }
}

fn log_format_from_env() -> LogFormat {
    match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

async fn run() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    match worker::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error.message = %err, "Worker stopped on an error.");
            ExitCode::FAILURE
        }
    }
}

async fn run_enqueue(args: EnqueueArgs) -> ExitCode {
    telemetry::init(log_format_from_env());
    let input = match read_input(&args.file) {
        Ok(input) => input,
        Err(err) => {
            eprintln!("cannot read {}: {err}", args.file.display());
            return ExitCode::from(2);
        }
    };
    // Lines are validated against the limits the worker reads from the same variables.
    let limits = match genesys_worker::config::job_limits_from_lookup(|name| std::env::var(name).ok()) {
        Ok(limits) => limits,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let options = EnqueueOptions {
        amqp_url: args.broker.amqp_url,
        jobs_exchange: args.jobs_exchange,
        audit_exchange: args.audit_exchange,
        await_outcomes: args.wait,
        timeout: Duration::from_secs(args.timeout_secs),
        strict: args.strict,
        limits,
    };
    // A progress bar on a terminal; plain counts otherwise (logs, CI).
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = indicatif::ProgressBar::hidden();
    if terminal {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs published ({per_sec})")
                .expect("the template is valid"),
        );
    }
    let mut published = 0;
    let on_published = |round: usize, total: usize| {
        published += round;
        bar.set_length(total as u64);
        bar.set_position(published as u64);
        if !terminal {
            eprintln!("published {published}/{total}");
        }
    };
    let mut captured = String::new();
    let print = |event: &genesys_worker::events::AuditEvent, raw: &[u8]| {
        bar.suspend(|| println!("{}", describe(event)));
        captured.push_str(&String::from_utf8_lossy(raw));
        captured.push('\n');
    };
    let result = enqueue::enqueue(&input, &options, on_published, print).await;
    bar.finish_and_clear();
    if let (Some(path), Ok(_)) = (&args.events_out, &result) {
        if let Err(err) = std::fs::write(path, &captured) {
            eprintln!("cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    match result {
        Ok(report) => {
            for invalid in &report.skipped {
                eprintln!("skipped {invalid}");
            }
            if options.await_outcomes {
                let mut counts = std::collections::BTreeMap::new();
                for event in &report.events {
                    *counts.entry(event.outcome.as_str()).or_insert(0) += 1;
                }
                let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
                println!("{} job(s): {}", report.events.len(), summary.join(", "));
            }
            println!(
                "published {} job(s){}",
                report.published,
                if report.skipped.is_empty() {
                    String::new()
                } else {
                    format!(", skipped {} invalid line(s)", report.skipped.len())
                }
            );
            if report.skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err @ enqueue::EnqueueError::Invalid(_)) => {
            eprintln!("enqueue: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("enqueue: {err}");
            ExitCode::FAILURE
        }
    }
}

/// One line per outcome: job, kind, outcome, entity, the new state's headline, the error.
fn describe(event: &genesys_worker::events::AuditEvent) -> String {
    let error = event
        .error
        .as_ref()
        .map(|e| format!("  [{}] {}", e.code, e.message))
        .unwrap_or_default();
    let headline = event.new_state.as_ref().and_then(|state| {
        let field = |name: &str| state.get(name).and_then(|v| v.as_str()).map(str::to_string);
        field("presence")
            .or_else(|| field("status"))
            .or_else(|| field("published_version").map(|v| format!("published {v}")))
    });
    let mut state = headline.map(|h| format!(" -> {h}")).unwrap_or_default();
    if let Some(counts) = event.summary.as_ref().and_then(|s| s.get("counts")) {
        state = format!(" children: {counts}");
    }
    format!(
        "{}  {:<18} {:<10} {} v{}{state}{error}",
        event.job_id, event.kind, event.outcome, event.entity, event.entity_version
    )
}

/// Resolves on SIGINT or SIGTERM.
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
