//! HTTP ingest: `POST /v1/jobs` with a bearer token, validated, published with confirms.

use genesys_worker::events::Outcome;
use genesys_worker::sandbox::{user_id, SandboxConfig};
use serde_json::{json, Value};

use crate::helpers::{agent_job, free_port, spawn_app_with};

const TOKEN: &str = "ingest-test-token-5b1f";

#[tokio::test]
async fn jobs_posted_with_the_token_are_published_and_anything_else_is_refused() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut app = spawn_app_with(
        SandboxConfig {
            users: 10,
            ..SandboxConfig::default()
        },
        &[
            ("INGEST_ADDR", addr.as_str()),
            ("INGEST_TOKEN", TOKEN),
            ("MAX_MESSAGE_BYTES", "2048"),
            ("MAX_BATCH_MESSAGE_BYTES", "4096"),
        ],
    )
    .await;
    let url = format!("http://{addr}/v1/jobs");
    let http = reqwest::Client::new();
    // The listener comes up with the worker.
    for _ in 0..50 {
        if http.post(&url).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // No token, a wrong token: 401, nothing published.
    let single = agent_job(user_id(1), json!({"presence": "Available"}));
    let response = http.post(&url).json(&single).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = http
        .post(&url)
        .bearer_auth("ingest-test-token-5b1e")
        .json(&single)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // One invalid job in an NDJSON body refuses the whole request, naming it.
    let mut invalid = agent_job(user_id(2), json!({"presence": "Break"}));
    invalid["payload"]["user_id"] = json!("nope");
    let body = format!(
        "{}\n{}\n",
        agent_job(user_id(3), json!({"presence": "Meal"})),
        invalid
    );
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let refused: Value = response.json().await.unwrap();
    assert_eq!(refused["jobs"][0]["line"], 2);
    assert_eq!(refused["jobs"][0]["code"], "invalid_payload");
    assert_eq!(refused["jobs"].as_array().unwrap().len(), 1);

    // Too large: 413.
    let oversized = format!(
        "{{\"job_id\":\"{}\",\"pad\":\"{}\"}}",
        uuid::Uuid::new_v4(),
        "x".repeat(5000)
    );
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    app.assert_no_more_events().await;

    // A job, then an NDJSON list: 202 with the ids, and applied.
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&single)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["accepted"], json!([single["job_id"]]));
    let list = [
        agent_job(user_id(4), json!({"presence": "Break"})),
        agent_job(user_id(5), json!({"presence": "Meal"})),
    ];
    let body = list.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(
        accepted["accepted"],
        json!([list[0]["job_id"], list[1]["job_id"]])
    );
    let events = app.audit_events(3).await;
    assert!(events.iter().all(|e| e.event.outcome == Outcome::Applied));
    assert_eq!(app.user(user_id(5)).await["presence"], "Meal");
    app.stop().await;
}
