//! `genesys-worker enqueue`: validated NDJSON in, confirmed publishes, outcomes followed.

use genesys_sandbox::user_id;
use serde_json::json;

use crate::helpers::{agent_job, spawn_app, TestApp};

async fn enqueue(app: &TestApp, file: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    app.cli(&[&["enqueue", file.to_str().unwrap()], args].concat())
        .await
}

#[tokio::test]
async fn invalid_lines_are_skipped_by_number_or_stop_everything_with_strict() {
    let mut app = spawn_app().await;
    let mut bad_payload = agent_job(user_id(4), json!({"presence": "Available"}));
    bad_payload["payload"]["user_id"] = json!("not-a-uuid");
    let lines = [
        agent_job(user_id(1), json!({"presence": "Available"})).to_string(),
        "{not json".to_string(),
        agent_job(user_id(2), json!({"presence": "Break"})).to_string(),
        bad_payload.to_string(),
        agent_job(user_id(3), json!({"presence": "Meal"})).to_string(),
    ];
    let dir = std::env::temp_dir().join(format!("enqueue-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jobs.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();

    // --strict: the invalid lines are named and nothing is published.
    let (code, _, stderr) = enqueue(&app, &file, &["--strict"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("line 2: [malformed_json]"), "{stderr}");
    assert!(
        stderr.contains("line 4: [invalid_payload]") && stderr.contains("payload.user_id"),
        "{stderr}"
    );
    app.assert_no_more_events().await;
    assert!(app.mutations().await.is_empty());

    // Without: the valid ones go, the invalid ones are reported and skipped; --wait follows
    // the outcomes.
    let (code, stdout, stderr) = enqueue(&app, &file, &["--wait", "--timeout-secs", "30"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("3 job(s): applied 3"), "{stdout}");
    assert!(
        stdout.contains("published 3 job(s), skipped 2 invalid line(s)"),
        "{stdout}"
    );
    assert!(stderr.contains("skipped line 2: [malformed_json]"), "{stderr}");
    // Not a terminal: plain counts instead of a progress bar.
    assert!(stderr.contains("published 3/3"), "{stderr}");
    assert_eq!(app.audit_events(3).await.len(), 3);
    assert_eq!(app.mutations().await.len(), 3);
    std::fs::remove_dir_all(&dir).ok();
    app.stop().await;
}
