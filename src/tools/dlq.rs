//! `genesys-worker dlq list|replay`: prints dead letters one line each (or JSON with `list
//! --json`) and replays them ([`crate::dlq`]). Exit 1 when the broker or queue fails.

use std::process::ExitCode;

use crate::cli::DlqCommand;
use crate::dlq::{self, Letter};

pub async fn run(command: DlqCommand) -> ExitCode {
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

/// One dead letter: job, kind, error code, attempts, where it goes back to, the message.
fn line(letter: &Letter) -> String {
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
}
