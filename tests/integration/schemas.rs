//! `schemas/`: the examples and the demo's jobs are valid, and the worker's decoder accepts
//! exactly what the job schema accepts (tests/schemas/corpus.json). Validation by Python's
//! `jsonschema` (draft 2020-12), installed in `.venv` by the test command.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use genesys_worker::job;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(args: &[&str]) -> std::process::Output {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh (it creates .venv)",
        python.display()
    );
    Command::new(python)
        .arg(root().join("tests/schemas/check.py"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_example_and_demo_job_is_valid_against_the_schemas() {
    let output = check(&["examples"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" 0 invalid"), "{stdout}");
}

#[test]
fn the_decoder_accepts_exactly_what_the_job_schema_accepts() {
    let corpus_path = root().join("tests/schemas/corpus.json");
    let output = check(&["corpus", corpus_path.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let by_schema: BTreeMap<String, bool> = serde_json::from_slice(&output.stdout).unwrap();
    let corpus: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(corpus_path).unwrap()).unwrap();
    assert_eq!(by_schema.len(), corpus.len());
    let mut disagreements = Vec::new();
    for case in &corpus {
        let name = case["name"].as_str().unwrap();
        let bytes = serde_json::to_vec(&case["message"]).unwrap();
        let decoded = job::decode(&bytes, 1 << 20);
        if decoded.is_ok() != by_schema[name] {
            disagreements.push(format!(
                "{name}: schema says {}, decoder says {:?}",
                by_schema[name],
                decoded.map(|_| "valid").map_err(|e| e.to_string())
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    // The corpus has both kinds of case, so the comparison means something.
    assert!(by_schema.values().any(|v| *v) && by_schema.values().any(|v| !*v));
}
