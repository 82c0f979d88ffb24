//! The Genesys client against the sandbox: tokens, 401 handling, presence lookups.

use std::sync::Arc;
use std::time::Duration;

use genesys_sandbox::{self as sandbox, SandboxConfig, SandboxHandle};
use genesys_worker::config::{GenesysConfig, LaneWeights, Secret};
use genesys_worker::genesys::{ErrorClass, GenesysClient, GenesysError};
use genesys_worker::lane::Lane;
use genesys_worker::limit::Budget;
use serde_json::Value;

use crate::helpers::requests_in;

const TOKEN: &str = "POST /oauth/token";
const DEFINITIONS: &str = "GET /api/v2/presence/definitions";

async fn sandbox_with(token_ttl_secs: u64) -> SandboxHandle {
    let config = SandboxConfig {
        users: 5,
        token_ttl_secs,
        ..SandboxConfig::default()
    };
    sandbox::spawn("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

fn client_for(sandbox: &SandboxHandle, secret: &str) -> GenesysClient {
    let base = url::Url::parse(&sandbox.base_url()).unwrap();
    let config = GenesysConfig {
        api_base: base.clone(),
        login_base: base,
        client_id: sandbox::DEFAULT_CLIENT_ID.into(),
        client_secret: Secret::new(secret),
        rate_limit_rps: 1000,
        rate_limit_burst: 200,
        rate_limit_shared: false,
        request_timeout_ms: 5_000,
        max_attempts: 3,
        consistency_window_ms: 5_000,
        limits_refresh_secs: 0,
    };
    GenesysClient::new(
        &config,
        Arc::new(Budget::new(1000, 200, LaneWeights { single: 3, batch: 1 })),
    )
}

use crate::helpers::sandbox_stats as stats;

#[tokio::test]
async fn a_hundred_concurrent_callers_cause_one_token_request() {
    let sandbox = sandbox_with(86_400).await;
    let client = Arc::new(client_for(&sandbox, sandbox::DEFAULT_CLIENT_SECRET));
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .in_lane(Lane::Single)
                    .get::<Value>("/api/v2/presence/definitions")
                    .await
                    .map(|r| r.status)
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 200);
    }
    let stats = stats(&sandbox).await;
    assert_eq!(requests_in(&stats, TOKEN, 200), 1);
    assert_eq!(requests_in(&stats, DEFINITIONS, 200), 100);
    assert_eq!(client.auth().grants(), 1);
}

#[tokio::test]
async fn a_401_runs_the_grant_again_once_and_the_call_succeeds() {
    let sandbox = sandbox_with(86_400).await;
    let client = client_for(&sandbox, sandbox::DEFAULT_CLIENT_SECRET);
    client
        .in_lane(Lane::Single)
        .get::<Value>("/api/v2/presence/definitions")
        .await
        .unwrap();
    reqwest::Client::new()
        .post(format!("{}/sandbox/tokens/revoke", sandbox.base_url()))
        .send()
        .await
        .unwrap();

    let reply = client
        .in_lane(Lane::Single)
        .get::<Value>("/api/v2/presence/definitions")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let stats = stats(&sandbox).await;
    assert_eq!(requests_in(&stats, TOKEN, 200), 2);
    assert_eq!(requests_in(&stats, DEFINITIONS, 401), 1);
    assert_eq!(requests_in(&stats, DEFINITIONS, 200), 2);
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    // A 2 s token is replaced after 1 s, so no call ever meets a 401.
    let sandbox = sandbox_with(2).await;
    let client = client_for(&sandbox, sandbox::DEFAULT_CLIENT_SECRET);
    client
        .in_lane(Lane::Single)
        .get::<Value>("/api/v2/presence/definitions")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    client
        .in_lane(Lane::Single)
        .get::<Value>("/api/v2/presence/definitions")
        .await
        .unwrap();
    let stats = stats(&sandbox).await;
    assert_eq!(requests_in(&stats, TOKEN, 200), 2);
    assert_eq!(requests_in(&stats, DEFINITIONS, 401), 0);
}

#[tokio::test]
async fn bad_credentials_are_a_permanent_auth_error_that_names_the_cause() {
    let sandbox = sandbox_with(86_400).await;
    let client = client_for(&sandbox, "wrong-secret");
    let err = client
        .in_lane(Lane::Single)
        .get::<Value>("/api/v2/presence/definitions")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GenesysError::Auth { status: 401, error, .. } if error == "invalid_client"),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);
    // The secret never appears in what is reported.
    assert!(!format!("{err} {err:?}").contains("wrong-secret"));
    assert_eq!(requests_in(&stats(&sandbox).await, DEFINITIONS, 200), 0);
}

#[tokio::test]
async fn presence_names_resolve_through_one_cached_listing() {
    let sandbox = sandbox_with(86_400).await;
    let client = client_for(&sandbox, sandbox::DEFAULT_CLIENT_SECRET);
    let on_queue = client
        .presence
        .resolve(client.in_lane(Lane::Single), "OnQueue")
        .await
        .unwrap();
    assert_eq!(
        on_queue.id,
        sandbox::presence_definition_id("On Queue").to_string()
    );
    assert_eq!(
        client
            .presence
            .resolve(client.in_lane(Lane::Single), "on queue")
            .await
            .unwrap()
            .id,
        on_queue.id
    );
    let by_id = client
        .presence
        .resolve(client.in_lane(Lane::Single), &on_queue.id)
        .await
        .unwrap();
    assert_eq!(by_id.system_presence, "OnQueue");
    assert_eq!(
        client
            .presence
            .resolve(client.in_lane(Lane::Single), "Lunch")
            .await
            .unwrap()
            .system_presence,
        "Meal"
    );
    assert!(client
        .presence
        .resolve(client.in_lane(Lane::Single), "Coaching (retired)")
        .await
        .is_err());
    assert_eq!(requests_in(&stats(&sandbox).await, DEFINITIONS, 200), 1);
}
