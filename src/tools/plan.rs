//! `genesys-worker plan`: what an NDJSON file of jobs would do if enqueued now
//! ([`crate::plan`]), configured like the worker ([`Config::from_env`]). Prints one line per
//! job and the summary, or with `--json` one JSON object per job and `{"summary": …}`.
//! Exit 0 when nothing is blocked, 1 when a job is blocked or a line invalid, 2 on unreadable
//! input or an invalid setting, 3 when Genesys or Redis cannot be reached.

use std::process::ExitCode;

use crate::cli::PlanArgs;
use crate::config::Config;
use crate::plan::{self, PlanError, PlanSettings};

/// Genesys or Redis could not be reached: the plan is not made.
const UNREACHABLE: u8 = 3;

pub async fn run(args: PlanArgs) -> ExitCode {
    let input = match super::read_input(&args.file) {
        Ok(input) => input,
        Err(err) => {
            eprintln!("plan: cannot read {}: {err}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => return super::invalid(&err),
    };
    crate::telemetry::init(config.log_format);
    let genesys = match plan::connect(&config).await {
        Ok(genesys) => genesys,
        Err(err) => {
            eprintln!("plan: cannot reach Redis (the fleet's rate-limit budget): {err}");
            return ExitCode::from(UNREACHABLE);
        }
    };
    let planned = match plan::plan(&input, &genesys, &PlanSettings::from_config(&config)).await {
        Ok(planned) => planned,
        Err(err @ PlanError::Empty) => {
            eprintln!("plan: {}: {err}", args.file.display());
            return ExitCode::from(2);
        }
        Err(err @ PlanError::Genesys { .. }) => {
            eprintln!("plan: {err}; no plan made");
            return ExitCode::from(UNREACHABLE);
        }
    };
    for job in &planned.jobs {
        if args.json {
            println!("{}", serde_json::to_string(job).expect("plans serialize"));
        } else {
            println!("{}", plan::describe(job));
        }
    }
    if args.json {
        let summary = serde_json::json!({"summary": planned.summary});
        println!("{summary}");
    } else {
        println!("{}", planned.summary);
    }
    if planned.summary.blocked > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
