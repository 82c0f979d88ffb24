//! The sandbox speaks like Genesys: paths, field names, error bodies, control API.

use genesys_sandbox::{self as sandbox, presence_definition_id, user_id, SandboxConfig};
use reqwest::Client;
use serde_json::{json, Value};

use crate::helpers::{get_json, sandbox_token};

#[tokio::test]
async fn errors_use_the_genesys_error_body_and_correlation_header() {
    let handle = sandbox::spawn("127.0.0.1:0".parse().unwrap(), SandboxConfig::default())
        .await
        .unwrap();
    let base = handle.base_url();
    let http = Client::new();
    let token = sandbox_token(&http, &base).await;
    let response = http
        .get(format!(
            "{base}/api/v2/users/{}/presences/purecloud",
            uuid::Uuid::new_v4()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let correlation = response.headers()["ININ-Correlation-Id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not.found");
    assert_eq!(body["status"], 404);
    assert_eq!(body["contextId"], correlation);
    assert!(body["message"].as_str().unwrap().contains("was not found"));

    let patch = http
        .patch(format!("{base}/api/v2/users/{}/presences/purecloud", user_id(0)))
        .bearer_auth(&token)
        .json(&json!({"presenceDefinition": {"id": presence_definition_id("Coaching (retired)")}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 400);
    assert_eq!(patch.json::<Value>().await.unwrap()["code"], "invalid.value");

    let unauthenticated = http
        .get(format!("{base}/api/v2/presence/definitions"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(
        unauthenticated.json::<Value>().await.unwrap()["code"],
        "authentication.required"
    );

    let bad_client = http
        .post(format!("{base}/oauth/token"))
        .basic_auth("nobody", Some("nothing"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_client.status(), 401);
    assert_eq!(
        bad_client.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
}

#[tokio::test]
async fn presence_round_trips_with_real_field_names_and_reset_restores_the_seed() {
    let handle = sandbox::spawn("127.0.0.1:0".parse().unwrap(), SandboxConfig::default())
        .await
        .unwrap();
    let base = handle.base_url();
    let http = Client::new();
    let token = sandbox_token(&http, &base).await;
    let path = format!("{base}/api/v2/users/{}/presences/purecloud", user_id(0));
    let available = presence_definition_id("Available");
    let patched: Value = http
        .patch(&path)
        .bearer_auth(&token)
        .json(&json!({"presenceDefinition": {"id": available}, "message": "back"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["presenceDefinition"]["id"], available.to_string());
    assert_eq!(patched["presenceDefinition"]["systemPresence"], "Available");
    assert_eq!(patched["message"], "back");
    assert!(patched["modifiedDate"].as_str().unwrap().ends_with('Z'));
    let read = get_json(&http, &path, Some(&token)).await;
    assert_eq!(read["presenceDefinition"]["id"], available.to_string());

    let definitions = get_json(
        &http,
        &format!("{base}/api/v2/presence/definitions"),
        Some(&token),
    )
    .await;
    let first = &definitions["entities"][0];
    for field in ["id", "type", "systemPresence", "languageLabels", "deactivated"] {
        assert!(first.get(field).is_some(), "definition lacks {field}: {first}");
    }

    let stats = get_json(&http, &format!("{base}/sandbox/stats"), None).await;
    assert_eq!(stats["mutations"].as_array().unwrap().len(), 1);
    assert_eq!(stats["mutations"][0]["entity"], format!("user:{}", user_id(0)));
    http.post(format!("{base}/sandbox/reset")).send().await.unwrap();
    let stats = get_json(&http, &format!("{base}/sandbox/stats"), None).await;
    assert!(stats["mutations"].as_array().unwrap().is_empty());
    assert!(stats["requests"].as_array().unwrap().is_empty());
    // Tokens are gone with the reset.
    let after = http.get(&path).bearer_auth(&token).send().await.unwrap();
    assert_eq!(after.status(), 401);
}

#[test]
fn the_demo_handover_names_only_seeded_users() {
    let seeded: Vec<String> = (0..20).map(|n| user_id(n).to_string()).collect();
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/demo/handover.ndjson")).unwrap();
    for line in demo.lines().filter(|l| !l.trim().is_empty()) {
        let job: Value = serde_json::from_str(line).unwrap();
        let user = job["payload"]["user_id"].as_str().unwrap();
        assert!(
            seeded.iter().any(|s| s == user),
            "demo job names unknown user {user}"
        );
    }
}

#[test]
fn the_demo_interactions_name_only_seeded_workitems_and_the_seeded_worktype() {
    use genesys_sandbox::{workitem_id, worktype_id};
    let seeded: Vec<String> = (0..20).map(|n| workitem_id(n).to_string()).collect();
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/demo/interactions.ndjson")).unwrap();
    for line in demo.lines().filter(|l| !l.trim().is_empty()) {
        let job: Value = serde_json::from_str(line).unwrap();
        let payload = &job["payload"];
        if let Some(workitem) = payload["workitem_id"].as_str() {
            assert!(
                seeded.iter().any(|s| s == workitem),
                "demo job names unknown workitem {workitem}"
            );
        } else {
            assert_eq!(payload["type_id"], worktype_id().to_string());
        }
    }
}
