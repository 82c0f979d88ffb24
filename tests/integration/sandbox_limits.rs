//! The sandbox's limits, seen from an HTTP client: the organization limits API, the `limit` of
//! every 429, an org-wide limit on one route family spent by another integration, and errors
//! from the gateway in front of the API.

use genesys_sandbox::{
    flow_id, presence_definition_id, user_id, workitem_id, SandboxConfig, OTHER_CLIENT_ID,
    OTHER_CLIENT_SECRET,
};
use reqwest::{header, Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{get_json, requests_in, sandbox_token, sandbox_token_as, SandboxApi};

const CLIENT_RATE_KEY: &str = "client.credentials.token.rate.per.minute";
const ORG_KEY: &str = "org.requests.per.minute";
const LIMITS: &str = "/api/v2/organizations/limits/namespaces";

struct Api(SandboxApi);

impl std::ops::Deref for Api {
    type Target = SandboxApi;
    fn deref(&self) -> &SandboxApi {
        &self.0
    }
}

impl Api {
    async fn start() -> Self {
        let config = SandboxConfig {
            users: 5,
            workitems: 3,
            flows: 2,
            ..SandboxConfig::default()
        };
        Self(SandboxApi::start(config).await)
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Result<Response> {
        self.send_as(&self.token, method, path, body).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.send(Method::GET, path, None).await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn mutations_of_user(&self, n: usize) -> Vec<Value> {
        let path = format!("/sandbox/mutations?entity=user:{}", user_id(n));
        get_json(&self.http, &self.url(&path), None).await["mutations"]
            .as_array()
            .unwrap()
            .clone()
    }
}

fn presence_path(n: usize) -> String {
    format!("/api/v2/users/{}/presences/purecloud", user_id(n))
}

fn presence_body(label: &str) -> Value {
    json!({"presenceDefinition": {"id": presence_definition_id(label)}})
}

/// `(key, namespace, value)` of each entity of a `LimitsEntityListing`.
fn limits_of(listing: &Value) -> Vec<(String, String, i64)> {
    listing["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["key"].as_str().unwrap().to_string(),
                l["namespace"].as_str().unwrap().to_string(),
                l["value"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn limit(key: &str, namespace: &str, value: i64) -> (String, String, i64) {
    (key.to_string(), namespace.to_string(), value)
}

/// Checks a 429 as Genesys sends it and returns its `Retry-After` and `limit`.
async fn throttled(response: Response) -> (u64, Value) {
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["Retry-After"]
        .to_str()
        .unwrap()
        .parse()
        .expect("integer seconds");
    assert!(retry_after >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "too.many.requests.retry.after");
    assert_eq!(body["status"], 429);
    (retry_after, body["limit"].clone())
}

#[tokio::test]
async fn the_limits_api_reports_the_rate_limit_and_the_org_limit() {
    let api = Api::start().await;
    let platform = format!("{LIMITS}/platform.api");

    // Unlimited: no effective token limit, though Genesys' defaults are 300 a minute.
    let (status, effective) = api.get(&platform).await;
    assert_eq!((status, effective), (StatusCode::OK, json!({"entities": []})));
    let (_, defaults) = api.get(&format!("{platform}/defaults")).await;
    assert_eq!(
        limits_of(&defaults),
        [
            limit(CLIENT_RATE_KEY, "platform.api", 300),
            limit("token.rate.per.minute", "platform.api", 300)
        ]
    );

    api.control(
        Method::PUT,
        "/sandbox/ratelimit",
        json!({"requests_per_second": 4, "burst": 50}),
    )
    .await;
    let (_, effective) = api.get(&platform).await;
    assert_eq!(
        limits_of(&effective),
        [
            limit(CLIENT_RATE_KEY, "platform.api", 240),
            limit("token.rate.per.minute", "platform.api", 240)
        ]
    );

    let org_limit = json!({"org_limit": {"family": "users", "requests_per_second": 2.5, "burst": 3}});
    api.control(Method::PUT, "/sandbox/behaviour", org_limit).await;
    let (_, users) = api.get(&format!("{LIMITS}/users")).await;
    assert_eq!(limits_of(&users), [limit(ORG_KEY, "users", 150)]);
    let (status, other) = api.get(&format!("{LIMITS}/task.management")).await;
    assert_eq!((status, other), (StatusCode::OK, json!({"entities": []})));

    let (status, unknown) = api.get(&format!("{LIMITS}/no.such.namespace")).await;
    assert_eq!(
        (status, unknown["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not.found"))
    );

    let (status, first) = api.get(LIMITS).await;
    assert_eq!(status, 200);
    assert_eq!(
        (first["pageSize"].as_u64(), first["pageNumber"].as_u64()),
        (Some(25), Some(1))
    );
    assert_eq!(first["entities"].as_array().unwrap().len(), 25);
    let (_, all) = api.get(&format!("{LIMITS}?pageSize=500")).await;
    let names: Vec<&str> = all["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len() as u64, all["total"].as_u64().unwrap());
    assert!(names.contains(&"platform.api") && names.contains(&"users"));

    // Served through the gateway like any API call.
    let anonymous = api.http.get(api.url(&platform)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let stats = api.stats().await;
    assert_eq!(
        requests_in(
            &stats,
            "GET /api/v2/organizations/limits/namespaces/{namespaceName}",
            200
        ),
        4
    );
}

#[tokio::test]
async fn a_429_from_the_client_limit_names_it() {
    let api = Api::start().await;
    api.control(
        Method::PUT,
        "/sandbox/ratelimit",
        json!({"requests_per_second": 1, "burst": 1}),
    )
    .await;
    let path = "/api/v2/presence/definitions";
    assert_eq!(api.send(Method::GET, path, None).await.unwrap().status(), 200);
    let (retry_after, limit) = throttled(api.send(Method::GET, path, None).await.unwrap()).await;
    assert_eq!(retry_after, 1);
    assert_eq!(
        limit,
        json!({"key": CLIENT_RATE_KEY, "namespace": "platform.api", "value": 60})
    );
    let stats = api.stats().await;
    assert_eq!(stats["throttled"], 1);
    assert_eq!(stats["throttled_by"], json!({CLIENT_RATE_KEY: 1}));
}

#[tokio::test]
async fn an_org_limit_spent_by_another_integration_refuses_only_its_family() {
    let api = Api::start().await;
    api.control(
        Method::PUT,
        "/sandbox/behaviour",
        json!({"org_limit": {"family": "users", "requests_per_second": 2, "other_integration_rps": 2}}),
    )
    .await;
    let other = sandbox_token_as(
        &api.http,
        &api.sandbox.base_url(),
        OTHER_CLIENT_ID,
        OTHER_CLIENT_SECRET,
    )
    .await;
    let users_calls = [
        (Method::PATCH, presence_path(0), Some(presence_body("Available"))),
        (Method::GET, presence_path(1), None),
        (
            Method::PUT,
            "/api/v2/users/presences/bulk".to_string(),
            Some(json!([{"id": user_id(2), "presenceDefinition": {"id": presence_definition_id("Break")}}])),
        ),
        (
            Method::PUT,
            format!("/api/v2/users/{}/routingstatus", user_id(3)),
            Some(json!({"status": "IDLE"})),
        ),
    ];
    for token in [&api.token, &other] {
        for (method, path, body) in users_calls.clone() {
            let response = api.send_as(token, method, &path, body).await.unwrap();
            let (retry_after, limit) = throttled(response).await;
            assert_eq!(retry_after, 1, "nothing is left: try again soon");
            assert_eq!(limit, json!({"key": ORG_KEY, "namespace": "users", "value": 120}));
        }
    }
    // The same client's calls to other families are served.
    let (status, _) = api
        .get(&format!("/api/v2/taskmanagement/workitems/{}", workitem_id(0)))
        .await;
    assert_eq!(status, 200);
    let (status, _) = api.get(&format!("/api/v2/flows/{}", flow_id(0))).await;
    assert_eq!(status, 200);

    let stats = api.stats().await;
    assert_eq!(stats["throttled"], 8);
    assert_eq!(stats["throttled_by"], json!({ORG_KEY: 8}));
    assert!(stats["mutations"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn an_org_limit_with_room_serves_its_burst_and_a_reset_refills_it() {
    let api = Api::start().await;
    let org_limit = json!({"org_limit": {
        "family": "users", "requests_per_second": 0.1, "burst": 2,
        "key": "presence.rate.per.minute", "namespace": "presence"
    }});
    api.control(Method::PUT, "/sandbox/behaviour", org_limit).await;
    for n in 0..2 {
        assert_eq!(api.get(&presence_path(n)).await.0, 200);
    }
    let response = api.send(Method::GET, &presence_path(0), None).await.unwrap();
    let (retry_after, limit) = throttled(response).await;
    assert_eq!(retry_after, 10, "one token every 10 s");
    assert_eq!(
        limit,
        json!({"key": "presence.rate.per.minute", "namespace": "presence", "value": 6})
    );

    api.control(Method::POST, "/sandbox/reset", json!(null)).await;
    let token = sandbox_token(&api.http, &api.sandbox.base_url()).await;
    let response = api
        .send_as(&token, Method::GET, &presence_path(0), None)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn gateway_errors_come_with_html_or_empty_bodies() {
    let api = Api::start().await;
    let route = "GET /api/v2/users/{userId}/presences/purecloud";
    api.control(
        Method::POST,
        "/sandbox/faults",
        json!({"route": route, "errors": {"502": 1.0}, "body": "html", "times": 1}),
    )
    .await;
    let response = api.send(Method::GET, &presence_path(0), None).await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/html");
    assert!(response.headers().get("ININ-Correlation-Id").is_none());
    let page = response.text().await.unwrap();
    assert!(page.contains("<title>502 Bad Gateway</title>"), "{page}");

    // The behaviour's gateway errors reach every API route, not the login or control routes.
    api.control(
        Method::PUT,
        "/sandbox/behaviour",
        json!({"gateway": {"errors": {"504": 1.0}, "body": "empty"}}),
    )
    .await;
    for path in [presence_path(1), format!("/api/v2/flows/{}", flow_id(0))] {
        let response = api.send(Method::GET, &path, None).await.unwrap();
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "0");
        assert!(response.bytes().await.unwrap().is_empty());
    }
    sandbox_token(&api.http, &api.sandbox.base_url()).await;
    assert_eq!(
        requests_in(&api.stats().await, "GET /api/v2/flows/{flowId}", 504),
        1
    );

    api.control(Method::DELETE, "/sandbox/behaviour", json!(null))
        .await;
    assert_eq!(api.get(&presence_path(1)).await.0, 200);
}

#[tokio::test]
async fn a_reset_connection_answers_nothing_and_changes_nothing() {
    let api = Api::start().await;
    let route = "PATCH /api/v2/users/{userId}/presences/purecloud";
    api.control(
        Method::POST,
        "/sandbox/faults",
        json!({"route": route, "reset": 1.0, "times": 1}),
    )
    .await;
    let outcome = api
        .send(Method::PATCH, &presence_path(0), Some(presence_body("Break")))
        .await;
    let error = outcome.expect_err("a reset gets no response");
    assert!(error.status().is_none(), "{error}");
    assert!(api.mutations_of_user(0).await.is_empty(), "nothing was served");
    let stats = api.stats().await;
    assert_eq!(stats["reset_connections"], 1);
    assert_eq!(requests_in(&stats, route, 200), 0);

    api.control(
        Method::PUT,
        "/sandbox/behaviour",
        json!({"gateway": {"reset": 1.0}}),
    )
    .await;
    let outcome = api
        .send(Method::PATCH, &presence_path(1), Some(presence_body("Break")))
        .await;
    assert!(outcome.is_err(), "expected no response, got {outcome:?}");
    assert!(api.mutations_of_user(1).await.is_empty());
    assert_eq!(api.stats().await["reset_connections"], 2);

    api.control(Method::DELETE, "/sandbox/behaviour", json!(null))
        .await;
    let response = api
        .send(Method::PATCH, &presence_path(1), Some(presence_body("Break")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(api.mutations_of_user(1).await.len(), 1);
}
