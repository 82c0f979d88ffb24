//! `genesys-worker enqueue`: publishes an NDJSON file of jobs ([`crate::enqueue`]), with a
//! progress bar on a terminal; with `--wait`, prints each outcome and the counts per outcome.
//! Lines are validated against the message limits the worker reads from the same variables
//! ([`config::job_limits_from_env`]). Exit 0 when every line was published, 1 when lines were
//! skipped or publishing failed, 2 on unreadable input, an invalid setting, or an invalid line
//! with `--strict`.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::EnqueueArgs;
use crate::config;
use crate::enqueue::{self, EnqueueError, EnqueueOptions};
use crate::events::AuditEvent;

pub async fn run(args: EnqueueArgs) -> ExitCode {
    if let Err(code) = super::init_logs() {
        return code;
    }
    let input = match super::read_input(&args.file) {
        Ok(input) => input,
        Err(err) => {
            eprintln!("cannot read {}: {err}", args.file.display());
            return ExitCode::from(2);
        }
    };
    // Lines are validated against the limits the worker reads from the same variables.
    let limits = match config::job_limits_from_env() {
        Ok(limits) => limits,
        Err(err) => return super::invalid(&err),
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
    let print = |event: &AuditEvent, raw: &[u8]| {
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
        Err(err @ EnqueueError::Invalid(_)) => {
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
fn describe(event: &AuditEvent) -> String {
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
