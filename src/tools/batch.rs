//! `genesys-worker batch status`: a batch's progress from Redis
//! ([`crate::store::Store::batch_progress`]). Exit 0 when every child is final and the summary
//! was sent, 3 while it runs, 1 when no such batch is known, 2 when Redis cannot be reached.

use std::process::ExitCode;

use crate::cli::BatchCommand;
use crate::config::RedisSettings;
use crate::store::Store;

pub async fn run(command: BatchCommand) -> ExitCode {
    match command {
        BatchCommand::Status {
            id,
            json,
            redis,
            redis_key_prefix,
        } => status(id, json, &redis.settings(), &redis_key_prefix).await,
    }
}

async fn status(id: uuid::Uuid, json: bool, redis: &RedisSettings, prefix: &str) -> ExitCode {
    // Reading progress needs neither the TTL nor the lease.
    let progress = match Store::connect(redis, prefix, 1, 1).await {
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
