//! The sandbox's rate limit, faults, and the rules of Task Management and Architect that the
//! worker depends on, seen from an HTTP client.

use std::time::{Duration, Instant};

use genesys_sandbox::{
    flow_id, presence_definition_id, status_id, user_id, workitem_id, worktype_id, RateLimit, SandboxConfig,
    OTHER_CLIENT_ID, OTHER_CLIENT_SECRET,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{get_json, requests_in, sandbox_token_as, SandboxApi};

const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";

struct Api(SandboxApi);

impl std::ops::Deref for Api {
    type Target = SandboxApi;
    fn deref(&self) -> &SandboxApi {
        &self.0
    }
}

impl Api {
    async fn start(config: SandboxConfig) -> Self {
        Self(SandboxApi::start(config).await)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        self.try_call_as(&self.token, method, path, body).await
    }

    async fn call_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        self.try_call_as(token, method, path, body).await
    }
}

fn small() -> SandboxConfig {
    SandboxConfig {
        users: 5,
        workitems: 3,
        flows: 2,
        flow_operation_ms: 150,
        ..SandboxConfig::default()
    }
}

fn presence_body(label: &str) -> Value {
    json!({"presenceDefinition": {"id": presence_definition_id(label)}})
}

#[tokio::test]
async fn the_rate_limit_is_per_oauth_client_with_an_integer_retry_after() {
    let api = Api::start(SandboxConfig {
        rate_limit: Some(RateLimit {
            requests_per_second: 1,
            burst: 2,
        }),
        ..small()
    })
    .await;
    let path = "/api/v2/presence/definitions";
    for _ in 0..2 {
        assert_eq!(api.call(Method::GET, path, None).await.unwrap().0, 200);
    }
    let response = api
        .http
        .get(api.url(path))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["Retry-After"]
        .to_str()
        .unwrap()
        .parse()
        .expect("integer seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "too.many.requests.retry.after");
    assert_eq!(body["status"], 429);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains(&format!("[{retry_after}]")));

    // Another OAuth client has a bucket of its own.
    let other = sandbox_token_as(
        &api.http,
        &api.sandbox.base_url(),
        OTHER_CLIENT_ID,
        OTHER_CLIENT_SECRET,
    )
    .await;
    assert_eq!(api.call_as(&other, Method::GET, path, None).await.unwrap().0, 200);
    assert_eq!(api.stats().await["throttled"], 1);

    // Lifted through the control API.
    api.control(Method::DELETE, "/sandbox/ratelimit", json!(null))
        .await;
    assert_eq!(api.call(Method::GET, path, None).await.unwrap().0, 200);
}

#[tokio::test]
async fn faults_are_reproducible_from_the_seed() {
    let statuses = |seed: u64| async move {
        let api = Api::start(SandboxConfig { seed, ..small() }).await;
        let fault = json!({"route": "GET /api/v2/presence/definitions", "errors": {"500": 0.2, "503": 0.3}});
        api.control(Method::POST, "/sandbox/faults", fault).await;
        let mut seen = Vec::new();
        for _ in 0..30 {
            seen.push(
                api.call(Method::GET, "/api/v2/presence/definitions", None)
                    .await
                    .unwrap()
                    .0
                    .as_u16(),
            );
        }
        seen
    };
    let first = statuses(7).await;
    assert_eq!(first, statuses(7).await);
    assert_ne!(first, statuses(8).await);
    for status in [200, 500, 503] {
        assert!(first.contains(&status), "{first:?}");
    }
}

#[tokio::test]
async fn an_injected_error_has_the_genesys_body_and_changes_nothing() {
    let api = Api::start(small()).await;
    let fault = json!({"route": PATCH_PRESENCE, "errors": {"503": 1.0}, "times": 1});
    api.control(Method::POST, "/sandbox/faults", fault).await;
    let path = format!("/api/v2/users/{}/presences/purecloud", user_id(0));
    let (status, body) = api
        .call(Method::PATCH, &path, Some(presence_body("Available")))
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(body["code"], "service.unavailable");
    assert!(api.stats().await["mutations"].as_array().unwrap().is_empty());
    // `times: 1`: the next request is served.
    assert_eq!(
        api.call(Method::PATCH, &path, Some(presence_body("Available")))
            .await
            .unwrap()
            .0,
        200
    );
    assert!(
        get_json(&api.http, &api.url("/sandbox/faults"), None).await["faults"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_dropped_response_closes_the_connection_after_the_change_is_made() {
    let api = Api::start(small()).await;
    api.control(
        Method::POST,
        "/sandbox/faults",
        json!({"route": PATCH_PRESENCE, "drop_response": 1.0, "times": 1}),
    )
    .await;
    let path = format!("/api/v2/users/{}/presences/purecloud", user_id(1));
    let outcome = api.call(Method::PATCH, &path, Some(presence_body("Break"))).await;
    assert!(outcome.is_err(), "expected no response, got {outcome:?}");
    let stats = api.stats().await;
    assert_eq!(stats["dropped_responses"], 1);
    assert_eq!(
        stats["mutations"].as_array().unwrap().len(),
        1,
        "the change was made"
    );
    let (_, current) = api.call(Method::GET, &path, None).await.unwrap();
    assert_eq!(
        current["presenceDefinition"]["id"],
        presence_definition_id("Break").to_string()
    );
}

#[tokio::test]
async fn latency_delays_the_route() {
    let api = Api::start(small()).await;
    api.control(
        Method::POST,
        "/sandbox/faults",
        json!({"route": "GET /api/v2/presence/definitions", "latency_ms": 300}),
    )
    .await;
    let started = Instant::now();
    assert_eq!(
        api.call(Method::GET, "/api/v2/presence/definitions", None)
            .await
            .unwrap()
            .0,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    api.control(Method::DELETE, "/sandbox/faults", json!(null)).await;
    let started = Instant::now();
    api.call(Method::GET, "/api/v2/presence/definitions", None)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn bulk_presence_applies_each_entry_and_enforces_the_batch_size() {
    let api = Api::start(SandboxConfig {
        bulk_presence_max: 3,
        ..small()
    })
    .await;
    let item = |n: usize| json!({"id": user_id(n), "presenceDefinition": {"id": presence_definition_id("On Queue")}});
    let unknown =
        json!({"id": uuid::Uuid::new_v4(), "presenceDefinition": {"id": presence_definition_id("On Queue")}});
    let (status, body) = api
        .call(
            Method::PUT,
            "/api/v2/users/presences/bulk",
            Some(json!([item(0), unknown, item(1)])),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let ids: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [user_id(0).to_string(), user_id(1).to_string()]);
    let mutations = api.stats().await["mutations"].as_array().unwrap().clone();
    assert_eq!(mutations.len(), 2);
    assert_eq!(mutations[0]["entity"], format!("user:{}", user_id(0)));
    assert_eq!(
        requests_in(&api.stats().await, "PUT /api/v2/users/presences/bulk", 200),
        1
    );

    let (status, body) = api
        .call(
            Method::PUT,
            "/api/v2/users/presences/bulk",
            Some(json!([item(0), item(1), item(2), item(3)])),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid.value");
}

#[tokio::test]
async fn workitem_creation_is_validated_like_task_management() {
    let api = Api::start(small()).await;
    let create = |body: Value| api.call(Method::POST, "/api/v2/taskmanagement/workitems", Some(body));
    let (status, body) = create(json!({"name": "ab", "typeId": worktype_id()}))
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid.value"))
    );
    let (status, _) = create(json!({"name": "Valid name"})).await.unwrap();
    assert_eq!(status, 400);
    let (status, _) = create(json!({"name": "Valid name", "typeId": worktype_id(), "priority": 25_000_001}))
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, body) = create(json!({
        "name": "Valid name", "typeId": worktype_id(),
        "dateDue": "2026-12-10T00:00:00Z", "dateExpires": "2026-12-01T00:00:00Z"
    }))
    .await
    .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("pre.check.value.greater.than"))
    );
    assert!(api.stats().await["mutations"].as_array().unwrap().is_empty());

    let (status, created) =
        create(json!({"name": "Valid name", "typeId": worktype_id(), "externalTag": "k-1"}))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert_eq!(created["status"]["id"], status_id("Open").to_string());
    assert_eq!(created["statusCategory"], "Open");
}

#[tokio::test]
async fn status_changes_follow_the_destination_graph() {
    let api = Api::start(small()).await;
    let path = format!("/api/v2/taskmanagement/workitems/{}", workitem_id(0));
    let to = |name: &str| json!({"statusId": status_id(name)});
    let (status, body) = api.call(Method::PATCH, &path, Some(to("Waiting"))).await.unwrap();
    assert_eq!(status, 409, "Open -> Waiting is not allowed");
    assert!(body["code"].as_str().unwrap().starts_with("pre.check."));
    assert_eq!(
        api.call(Method::PATCH, &path, Some(to("In Progress")))
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        api.call(Method::PATCH, &path, Some(to("Escalated")))
            .await
            .unwrap()
            .0,
        200
    );
    // Escalated has no destinations listed: any status may follow.
    let (status, body) = api.call(Method::PATCH, &path, Some(to("Closed"))).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["statusCategory"], "Closed");
    assert!(body["dateClosed"].is_string());
}

#[tokio::test]
async fn queries_find_workitems_by_external_tag_and_page() {
    let api = Api::start(small()).await;
    for n in 0..3 {
        let body = json!({"name": format!("Tagged {n}"), "typeId": worktype_id(), "externalTag": "batch-7"});
        api.call(Method::POST, "/api/v2/taskmanagement/workitems", Some(body))
            .await
            .unwrap();
    }
    let filter = |name: &str, value: &str| json!({"name": name, "type": "String", "operator": "EQ", "values": [value]});
    let query = json!({"filters": [filter("typeId", &worktype_id().to_string()), filter("externalTag", "batch-7")], "pageSize": 2});
    let (status, page) = api
        .call(
            Method::POST,
            "/api/v2/taskmanagement/workitems/query",
            Some(query.clone()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(page["count"], 2);
    let mut second = query;
    second["after"] = page["after"].clone();
    let (_, rest) = api
        .call(
            Method::POST,
            "/api/v2/taskmanagement/workitems/query",
            Some(second),
        )
        .await
        .unwrap();
    assert_eq!(rest["count"], 1);
    assert!(rest.get("after").is_none());

    let no_root = json!({"filters": [filter("externalTag", "batch-7")]});
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v2/taskmanagement/workitems/query",
            Some(no_root),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_flow_locked_by_another_client_refuses_changes() {
    let api = Api::start(small()).await;
    let flow = flow_id(0);
    flow_control(
        &api,
        Method::POST,
        flow,
        "lock",
        json!({"client_id": OTHER_CLIENT_ID}),
    )
    .await;
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/api/v2/flows/actions/checkout?flow={flow}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 409);
    assert!(body["message"].as_str().unwrap().contains(OTHER_CLIENT_ID));
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/api/v2/flows/{flow}/versions"),
            Some(json!({"nodes": {}})),
        )
        .await
        .unwrap();
    assert_eq!(status, 409);
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/api/v2/flows/actions/publish?flow={flow}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 409);
    let (_, current) = api
        .call(Method::GET, &format!("/api/v2/flows/{flow}"), None)
        .await
        .unwrap();
    assert_eq!(current["lockedClient"]["id"], OTHER_CLIENT_ID);
    assert_eq!(current["publishedVersion"]["id"], "1.0");
}

#[tokio::test]
async fn checkin_and_publish_complete_asynchronously() {
    let api = Api::start(small()).await;
    let flow = flow_id(1);
    let action = |name: &str| format!("/api/v2/flows/actions/{name}?flow={flow}");
    assert_eq!(
        api.call(Method::POST, &action("checkout"), None).await.unwrap().0,
        200
    );
    let (_, version) = api
        .call(
            Method::POST,
            &format!("/api/v2/flows/{flow}/versions"),
            Some(json!({"nodes": {"a": {}}})),
        )
        .await
        .unwrap();
    assert_eq!(version["id"], "2.0");
    let (_, operation) = api.call(Method::POST, &action("checkin"), None).await.unwrap();
    assert_eq!(
        (operation["actionName"].as_str(), operation["complete"].as_bool()),
        (Some("CHECKIN"), Some(false))
    );
    let (_, pending) = api
        .call(Method::GET, &format!("/api/v2/flows/{flow}"), None)
        .await
        .unwrap();
    assert_eq!(pending["currentOperation"]["complete"], false);
    assert_eq!(pending["checkedInVersion"]["id"], "1.0");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, done) = api
        .call(Method::GET, &format!("/api/v2/flows/{flow}"), None)
        .await
        .unwrap();
    assert_eq!(done["currentOperation"]["actionStatus"], "SUCCESS");
    assert_eq!(done["checkedInVersion"]["id"], "2.0");
    assert!(done.get("lockedClient").is_none());

    // Publishing a version that does not exist "succeeds" and changes nothing, as observed of
    // the real API: callers must check publishedVersion.
    api.call(Method::POST, &format!("{}&version=99.0", action("publish")), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, after) = api
        .call(Method::GET, &format!("/api/v2/flows/{flow}"), None)
        .await
        .unwrap();
    assert_eq!(after["currentOperation"]["actionStatus"], "SUCCESS");
    assert_eq!(after["publishedVersion"]["id"], "1.0");

    api.call(Method::POST, &action("publish"), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, published) = api
        .call(Method::GET, &format!("/api/v2/flows/{flow}"), None)
        .await
        .unwrap();
    assert_eq!(published["publishedVersion"]["id"], "2.0");
    let (_, configuration) = api
        .call(
            Method::GET,
            &format!("/api/v2/flows/{flow}/versions/2.0/configuration"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(configuration, json!({"nodes": {"a": {}}}));
    let mutations = get_json(
        &api.http,
        &api.url(&format!("/sandbox/mutations?entity=flow:{flow}")),
        None,
    )
    .await;
    assert_eq!(mutations["mutations"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn reset_restores_the_seed_and_clears_faults() {
    let api = Api::start(small()).await;
    api.control(
        Method::POST,
        "/sandbox/faults",
        json!({"route": PATCH_PRESENCE, "errors": {"500": 1.0}}),
    )
    .await;
    api.control(Method::POST, "/sandbox/reset", json!(null)).await;
    assert!(
        get_json(&api.http, &api.url("/sandbox/faults"), None).await["faults"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Tokens went with the reset.
    let path = format!("/api/v2/users/{}/presences/purecloud", user_id(0));
    assert_eq!(
        api.call(Method::PATCH, &path, Some(presence_body("Available")))
            .await
            .unwrap()
            .0,
        401
    );
}

#[tokio::test]
async fn an_invalid_fault_is_refused_with_the_reason() {
    let api = Api::start(small()).await;
    let response = api
        .http
        .post(api.url("/sandbox/faults"))
        .json(&json!({"route": PATCH_PRESENCE, "errors": {"404": 0.5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("404"));
}

/// `GET /sandbox/users`' entry of `user`.
async fn sandbox_user(api: &Api, user: uuid::Uuid) -> Value {
    get_json(&api.http, &api.url("/sandbox/users"), None).await["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == user.to_string())
        .cloned()
        .unwrap()
}

/// The status of a control API call that may be refused.
async fn control_status(api: &Api, method: Method, path: &str, body: Value) -> StatusCode {
    api.http
        .request(method, api.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn the_control_api_sets_a_live_interaction_that_ends_by_itself_and_out_of_office() {
    let api = Api::start(small()).await;
    let user = user_id(2);
    let routing = format!("/api/v2/users/{user}/routingstatus");
    // On Queue and idle before the interaction.
    let presence = format!("/api/v2/users/{user}/presences/purecloud");
    api.call(Method::PATCH, &presence, Some(presence_body("On Queue")))
        .await
        .unwrap();
    let (_, idle) = api.call(Method::GET, &routing, None).await.unwrap();
    assert_eq!(idle["status"], "IDLE");

    // Start times have millisecond resolution.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let state = format!("/sandbox/users/{user}/state");
    let view = api
        .control(
            Method::PUT,
            &state,
            json!({"routing_status": "INTERACTING", "revert_after_ms": 400}),
        )
        .await;
    assert_eq!(
        (&view["id"], &view["routingStatus"]),
        (&json!(user), &json!("INTERACTING"))
    );
    assert_eq!(view["presence"], "On Queue");
    assert!(view["routingStatusRevertsAt"].is_string(), "{view}");
    let (_, interacting) = api.call(Method::GET, &routing, None).await.unwrap();
    assert_eq!(interacting["status"], "INTERACTING");
    assert_ne!(interacting["startTime"], idle["startTime"]);
    let (_, listed) = api
        .call(
            Method::GET,
            &format!("/api/v2/users?id={user}&expand=routingStatus"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(listed["entities"][0]["routingStatus"], interacting);
    // Going On Queue again does not end the interaction.
    api.call(Method::PATCH, &presence, Some(presence_body("On Queue")))
        .await
        .unwrap();
    assert_eq!(
        api.call(Method::GET, &routing, None).await.unwrap().1["status"],
        "INTERACTING"
    );
    assert!(
        api.stats().await["mutations"].as_array().unwrap().len() == 2,
        "the control API logs nothing"
    );

    tokio::time::sleep(Duration::from_millis(450)).await;
    let (_, after) = api.call(Method::GET, &routing, None).await.unwrap();
    assert_eq!(after["status"], "IDLE", "the interaction ended");
    assert_ne!(after["startTime"], interacting["startTime"]);
    let shown = sandbox_user(&api, user).await;
    assert_eq!(shown["routingStatus"], "IDLE");
    assert!(shown.get("routingStatusRevertsAt").is_none(), "{shown}");

    // Going off queue during an interaction drops the revert: off queue it stays.
    api.control(
        Method::PUT,
        &state,
        json!({"routing_status": "COMMUNICATING", "revert_after_ms": 200}),
    )
    .await;
    api.call(Method::PATCH, &presence, Some(presence_body("Break")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        api.call(Method::GET, &routing, None).await.unwrap().1["status"],
        "OFF_QUEUE"
    );

    // Without revert_after_ms it stays; out_of_office alone leaves the routing status.
    api.control(Method::PUT, &state, json!({"routing_status": "NOT_RESPONDING"}))
        .await;
    let view = api
        .control(Method::PUT, &state, json!({"out_of_office": true}))
        .await;
    assert_eq!(
        (&view["routingStatus"], &view["outOfOffice"]),
        (&json!("NOT_RESPONDING"), &json!(true))
    );
    let (_, out) = api
        .call(Method::GET, &format!("/api/v2/users/{user}/outofoffice"), None)
        .await
        .unwrap();
    assert_eq!((&out["active"], &out["indefinite"]), (&json!(true), &json!(true)));
    assert!(out["startDate"].is_string());
    let view = api
        .control(Method::PUT, &state, json!({"out_of_office": false}))
        .await;
    assert_eq!(view["outOfOffice"], false);

    for (body, status) in [
        (json!({"routing_status": "BUSY"}), 400),
        (json!({"revert_after_ms": 100}), 400),
        (json!({"routing_status": "IDLE", "colour": "red"}), 422),
    ] {
        assert_eq!(
            control_status(&api, Method::PUT, &state, body.clone()).await,
            status,
            "{body}"
        );
    }
    let unknown = format!("/sandbox/users/{}/state", uuid::Uuid::new_v4());
    assert_eq!(
        control_status(&api, Method::PUT, &unknown, json!({"out_of_office": true})).await,
        404
    );
}

async fn read_back(api: &Api, flow: uuid::Uuid, version: &str) -> Value {
    read_back_as(api, &api.token, flow, version).await
}

/// The configuration of `version` of `flow`, read with `token`.
async fn read_back_as(api: &Api, token: &str, flow: uuid::Uuid, version: &str) -> Value {
    api.call_as(
        token,
        Method::GET,
        &format!("/api/v2/flows/{flow}/versions/{version}/configuration"),
        None,
    )
    .await
    .unwrap()
    .1
}

/// Publishes `flow` with `token` and reads it back once the publish (150 ms here) has ended.
async fn publish_and_read(api: &Api, token: &str, flow: uuid::Uuid) -> Value {
    let publish = format!("/api/v2/flows/actions/publish?flow={flow}");
    api.call_as(token, Method::POST, &publish, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.call_as(token, Method::GET, &format!("/api/v2/flows/{flow}"), None)
        .await
        .unwrap()
        .1
}

/// Sets `flow` up through the control API's `/sandbox/flows/{flow}/{action}` (`lock`,
/// `consumers`, `fail-next-publish`, `alter-next-publish`).
async fn flow_control(api: &Api, method: Method, flow: uuid::Uuid, action: &str, body: Value) -> Value {
    api.control(method, &format!("/sandbox/flows/{flow}/{action}"), body)
        .await
}

#[tokio::test]
async fn an_altered_publish_succeeds_but_publishes_another_configuration_once() {
    let api = Api::start(small()).await;
    let flow = flow_id(0);
    let action = |name: &str| format!("/api/v2/flows/actions/{name}?flow={flow}");
    let configuration = json!({"name": "Main IVR", "nodes": {"start": {"type": "start"}}});
    let save_and_check_in = || async {
        api.call(Method::POST, &action("checkout"), None).await.unwrap();
        let (_, version) = api
            .call(
                Method::POST,
                &format!("/api/v2/flows/{flow}/versions"),
                Some(configuration.clone()),
            )
            .await
            .unwrap();
        api.call(Method::POST, &action("checkin"), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        version["id"].as_str().unwrap().to_string()
    };
    let publish = || publish_and_read(&api, &api.token, flow);
    let version = save_and_check_in().await;
    // A failed publish leaves the alteration for the next one that publishes.
    flow_control(&api, Method::POST, flow, "fail-next-publish", json!(null)).await;
    let set = flow_control(&api, Method::POST, flow, "alter-next-publish", json!(null)).await;
    assert_eq!(set["alter_next_publish"], true);
    assert_eq!(publish().await["currentOperation"]["actionStatus"], "FAILURE");
    assert_eq!(read_back(&api, flow, &version).await, configuration);

    let flow_after = publish().await;
    assert_eq!(flow_after["currentOperation"]["actionStatus"], "SUCCESS");
    assert_eq!(flow_after["publishedVersion"]["id"], version.as_str());
    let altered = read_back(&api, flow, &version).await;
    assert_ne!(altered, configuration);
    assert_eq!(altered["sandboxAltered"], true);
    assert_eq!(altered["nodes"], configuration["nodes"]);

    // Only that one publish.
    let next = save_and_check_in().await;
    assert_eq!(publish().await["publishedVersion"]["id"], next.as_str());
    assert_eq!(read_back(&api, flow, &next).await, configuration);
    assert_eq!(
        control_status(
            &api,
            Method::POST,
            &format!("/sandbox/flows/{}/alter-next-publish", uuid::Uuid::new_v4()),
            json!(null)
        )
        .await,
        404
    );
}

#[tokio::test]
async fn a_failed_publish_operation_carries_its_error_details_and_message_params() {
    let api = Api::start(small()).await;
    let flow = flow_id(1);
    flow_control(&api, Method::POST, flow, "fail-next-publish", json!(null)).await;
    let current = publish_and_read(&api, &api.token, flow).await;
    let operation = &current["currentOperation"];
    assert_eq!(
        (&operation["actionStatus"], &operation["complete"]),
        (&json!("FAILURE"), &json!(true))
    );
    assert_eq!(operation["errorCode"], "architect.publish.failed");
    let message = operation["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("Billing IVR") && message.contains("failed to publish"),
        "{message}"
    );
    let details = operation["errorDetails"].as_array().unwrap();
    assert_eq!(details.len(), 1);
    for field in ["errorCode", "fieldName", "entityId", "entityName"] {
        assert!(
            details[0][field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {operation}"
        );
    }
    assert_eq!(
        (&details[0]["entityId"], &details[0]["entityName"]),
        (&json!(flow), &json!("Billing IVR"))
    );
    let params = operation["errorMessageParams"].as_object().unwrap();
    assert_eq!(params["flowName"], "Billing IVR");
    assert_eq!(params["flowId"], flow.to_string());
    assert!(
        params.values().all(Value::is_string),
        "a map of strings: {params:?}"
    );
    assert_eq!(current["publishedVersion"]["id"], "1.0");
}

#[tokio::test]
async fn force_unlock_releases_a_persons_or_another_clients_lock_and_is_logged() {
    let api = Api::start(small()).await;
    let flow = flow_id(0);
    let action = |name: &str| format!("/api/v2/flows/actions/{name}?flow={flow}");
    for lock in [
        json!({"user_id": user_id(3)}),
        json!({"client_id": OTHER_CLIENT_ID}),
    ] {
        flow_control(&api, Method::POST, flow, "lock", lock.clone()).await;
        let (status, _) = api.call(Method::POST, &action("checkout"), None).await.unwrap();
        assert_eq!(status, 409, "{lock}");
        let (status, unlocked) = api.call(Method::POST, &action("unlock"), None).await.unwrap();
        assert_eq!(status, 200);
        assert!(
            unlocked.get("lockedUser").is_none() && unlocked.get("lockedClient").is_none(),
            "{unlocked}"
        );
        let (status, checked_out) = api.call(Method::POST, &action("checkout"), None).await.unwrap();
        assert_eq!(status, 200, "{lock}: {checked_out}");
        assert_eq!(checked_out["lockedClient"]["id"], "sandbox-client");
        api.call(Method::POST, &action("unlock"), None).await.unwrap();
    }
    let log = get_json(
        &api.http,
        &api.url(&format!("/sandbox/mutations?entity=flow:{flow}")),
        None,
    )
    .await;
    let unlocks: Vec<&Value> = log["mutations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["path"]
                .as_str()
                .unwrap()
                .starts_with("/api/v2/flows/actions/unlock")
        })
        .collect();
    assert_eq!(unlocks.len(), 4);
    assert_eq!(
        (&unlocks[0]["method"], &unlocks[0]["client_id"]),
        (&json!("POST"), &json!("sandbox-client"))
    );
}

#[tokio::test]
async fn reset_clears_user_state_out_of_office_consumers_and_pending_publishes() {
    let api = Api::start(small()).await;
    let user = user_id(0);
    let flow = flow_id(0);
    api.control(
        Method::PUT,
        &format!("/sandbox/users/{user}/state"),
        json!({"routing_status": "INTERACTING", "revert_after_ms": 60_000, "out_of_office": true}),
    )
    .await;
    flow_control(
        &api,
        Method::PUT,
        flow,
        "consumers",
        json!({"consumers": [{"id": "a", "name": "A", "type": "INBOUNDCALLFLOW"}]}),
    )
    .await;
    for knob in ["alter-next-publish", "fail-next-publish"] {
        flow_control(&api, Method::POST, flow, knob, json!(null)).await;
    }
    api.control(Method::POST, "/sandbox/reset", json!(null)).await;

    let shown = sandbox_user(&api, user).await;
    assert_eq!(
        (&shown["routingStatus"], &shown["outOfOffice"]),
        (&json!("OFF_QUEUE"), &json!(false))
    );
    assert!(shown.get("routingStatusRevertsAt").is_none());
    let token = crate::helpers::sandbox_token(&api.http, &api.sandbox.base_url()).await;
    let (_, consumers) = api
        .call_as(
            &token,
            Method::GET,
            &format!("/api/v2/architect/dependencytracking/consumingresources?id={flow}&objectType=INBOUNDCALLFLOW"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(consumers["total"], 0);
    let current = publish_and_read(&api, &token, flow).await;
    assert_eq!(current["currentOperation"]["actionStatus"], "SUCCESS");
    let configuration = read_back_as(&api, &token, flow, "1.0").await;
    assert!(configuration.get("sandboxAltered").is_none(), "{configuration}");
}

#[tokio::test]
async fn the_users_routes_are_rate_limited_and_faulted_like_the_others() {
    let api = Api::start(SandboxConfig {
        rate_limit: Some(RateLimit {
            requests_per_second: 1,
            burst: 1,
        }),
        ..small()
    })
    .await;
    let path = format!("/api/v2/users?id={}&expand=presence", user_id(0));
    assert_eq!(api.call(Method::GET, &path, None).await.unwrap().0, 200);
    let (status, body) = api.call(Method::GET, &path, None).await.unwrap();
    assert_eq!(
        (status, &body["code"]),
        (
            StatusCode::TOO_MANY_REQUESTS,
            &json!("too.many.requests.retry.after")
        )
    );
    api.control(Method::DELETE, "/sandbox/ratelimit", json!(null))
        .await;

    let outofoffice = format!("/api/v2/users/{}/outofoffice", user_id(0));
    api.control(
        Method::POST,
        "/sandbox/faults",
        json!({"route": "PUT /api/v2/users/{userId}/outofoffice", "errors": {"503": 1.0}, "times": 1}),
    )
    .await;
    let (status, _) = api
        .call(Method::PUT, &outofoffice, Some(json!({"active": true})))
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(
        api.call(Method::GET, &outofoffice, None).await.unwrap().1["active"],
        false
    );
    let stats = api.stats().await;
    assert_eq!(requests_in(&stats, "GET /api/v2/users", 429), 1);
    assert_eq!(
        requests_in(&stats, "PUT /api/v2/users/{userId}/outofoffice", 503),
        1
    );
}
