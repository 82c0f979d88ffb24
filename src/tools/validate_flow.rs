//! `genesys-worker validate-flow`: an IVR flow definition checked offline against the rules
//! `flow.deploy` applies ([`crate::flow::validate()`]), optionally optimised. Exit 0 when valid, 1
//! when invalid, 2 when the input cannot be read.

use std::process::ExitCode;

use crate::cli::ValidateFlowArgs;
use crate::flow::{self, FlowDefinition, Rules};

pub fn run(args: &ValidateFlowArgs) -> ExitCode {
    let unreadable = |problem: String| {
        eprintln!("{problem}");
        ExitCode::from(2)
    };
    let input = match super::read_input(&args.file) {
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
