//! The sandbox against the official Genesys Cloud Python SDK (`tests/conformance/`): every
//! endpoint the worker uses must deserialize into the SDK's models, field for field, and errors
//! must reach the SDK as `ApiException`s with the Genesys error body.

use std::path::PathBuf;

use genesys_sandbox::{self as sandbox, flow_id, status_id, user_id, worktype_id, SandboxConfig};

/// The venv `scripts/test.sh` creates, or `CONFORMANCE_PYTHON`.
fn python() -> PathBuf {
    if let Ok(python) = std::env::var("CONFORMANCE_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run the suite with `scripts/test.sh`, which creates it, or create it with \
         `python3 -m venv .venv && .venv/bin/pip install -r tests/conformance/requirements.txt`",
        venv.display()
    );
    venv
}

#[tokio::test]
async fn the_official_genesys_sdk_reads_every_endpoint_the_worker_uses() {
    let python = python();
    let config = SandboxConfig {
        users: 5,
        workitems: 3,
        flows: 3,
        flow_operation_ms: 100,
        ..SandboxConfig::default()
    };
    let sandbox = sandbox::spawn("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/conformance.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .env("SANDBOX_URL", sandbox.base_url())
        .env("SANDBOX_USER", user_id(0).to_string())
        .env("SANDBOX_OTHER_USER", user_id(1).to_string())
        .env("SANDBOX_THIRD_USER", user_id(2).to_string())
        .env("SANDBOX_WORKTYPE", worktype_id().to_string())
        .env("SANDBOX_STATUS_OPEN", status_id("Open").to_string())
        .env("SANDBOX_STATUS_IN_PROGRESS", status_id("In Progress").to_string())
        .env("SANDBOX_STATUS_WAITING", status_id("Waiting").to_string())
        .env("SANDBOX_STATUS_CLOSED", status_id("Closed").to_string())
        .env("SANDBOX_FLOW", flow_id(0).to_string())
        .env("SANDBOX_FLOW_2", flow_id(1).to_string())
        .env("SANDBOX_FLOW_3", flow_id(2).to_string())
        .output()
        .await
        .expect("the conformance script runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "SDK conformance failed:\n{report}");
    assert!(report.contains(" passed, 0 failed"), "{report}");
}
