//! The sandbox's behaviour profiles for Architect, consistency and locks, seen from an HTTP
//! client (`PUT /sandbox/behaviour`).

use std::time::Duration;

use genesys_sandbox::{
    flow_id, user_id, workitem_id, worktype_id, SandboxConfig, OTHER_CLIENT_ID, OTHER_CLIENT_SECRET,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{sandbox_token_as, SandboxApi};

/// How long checkin and publish take in these tests.
const OPERATION_MS: u64 = 150;

struct Api(SandboxApi);

impl std::ops::Deref for Api {
    type Target = SandboxApi;
    fn deref(&self) -> &SandboxApi {
        &self.0
    }
}

impl Api {
    /// A small sandbox playing `behaviour` (a `PUT /sandbox/behaviour` body).
    async fn playing(behaviour: Value) -> Self {
        let config = SandboxConfig {
            users: 3,
            workitems: 2,
            flows: 2,
            flow_operation_ms: OPERATION_MS,
            ..SandboxConfig::default()
        };
        let api = Self(SandboxApi::start(config).await);
        let set = api
            .control(Method::PUT, "/sandbox/behaviour", behaviour.clone())
            .await;
        for (field, value) in behaviour.as_object().unwrap() {
            assert_eq!(&set["behaviour"][field], value, "{field}");
        }
        api
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    async fn call_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.try_call_as(token, method, path, body).await.unwrap()
    }

    /// `POST /api/v2/flows/actions/{action}?flow=`.
    async fn action(&self, action: &str, flow: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/api/v2/flows/actions/{action}?flow={flow}"),
            None,
        )
        .await
    }

    async fn flow(&self, flow: &str) -> (StatusCode, Value) {
        self.call(Method::GET, &format!("/api/v2/flows/{flow}"), None)
            .await
    }

    /// Checks `flow` out and saves a new version; returns its id.
    async fn checkout_and_save(&self, flow: &str) -> String {
        let (status, body) = self.action("checkout", flow).await;
        assert_eq!(status, 200, "{body}");
        let (status, version) = self
            .call(
                Method::POST,
                &format!("/api/v2/flows/{flow}/versions"),
                Some(json!({"nodes": {}})),
            )
            .await;
        assert_eq!(status, 200, "{version}");
        version["id"].as_str().unwrap().to_string()
    }
}

fn sleep_ms(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

/// A 409 with the Genesys error body and `code`; returns its message.
fn conflict(status: StatusCode, body: &Value, code: &str) -> String {
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], 409);
    assert!(body["contextId"].is_string(), "{body}");
    body["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn complete_in_response_answers_the_finished_operation_and_flows_carry_none() {
    let api = Api::playing(json!({"flow_operations": "complete_in_response"})).await;
    let flow = flow_id(0).to_string();
    let version = api.checkout_and_save(&flow).await;

    let (status, checkin) = api.action("checkin", &flow).await;
    assert_eq!(status, 200, "{checkin}");
    assert_eq!(checkin["actionName"], "CHECKIN");
    assert_eq!(checkin["complete"], true);
    assert_eq!(checkin["actionStatus"], "SUCCESS");
    let (_, current) = api.flow(&flow).await;
    assert_eq!(current["checkedInVersion"]["id"], version.as_str());
    assert!(current.get("lockedClient").is_none(), "{current}");
    assert!(current.get("currentOperation").is_none(), "{current}");

    let (_, publish) = api.action("publish", &flow).await;
    assert_eq!(
        (&publish["complete"], &publish["actionStatus"]),
        (&json!(true), &json!("SUCCESS"))
    );
    assert!(publish.get("errorCode").is_none(), "{publish}");
    let (_, current) = api.flow(&flow).await;
    assert_eq!(current["publishedVersion"]["id"], version.as_str());
    assert!(current.get("currentOperation").is_none(), "{current}");

    // A failed publish says why in its answer and changes nothing.
    let other = flow_id(1).to_string();
    api.control(
        Method::POST,
        &format!("/sandbox/flows/{other}/fail-next-publish"),
        json!(null),
    )
    .await;
    let (status, failed) = api.action("publish", &other).await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(
        (&failed["complete"], &failed["actionStatus"]),
        (&json!(true), &json!("FAILURE"))
    );
    assert_eq!(failed["errorCode"], "architect.publish.failed");
    assert!(failed["errorMessage"]
        .as_str()
        .unwrap()
        .contains("failed to publish"));
    assert_eq!(failed["errorDetails"][0]["errorCode"], "architect.publish.failed");
    assert_eq!(failed["errorDetails"][0]["entityId"], other.as_str());
    let (_, listed) = api
        .call(Method::GET, "/api/v2/flows?name=Billing%20IVR", None)
        .await;
    let listed = &listed["entities"][0];
    assert_eq!(listed["publishedVersion"]["id"], "1.0");
    assert!(listed.get("currentOperation").is_none(), "{listed}");
}

#[tokio::test]
async fn async_hidden_operations_never_show_but_the_versions_move_after_their_time() {
    let api = Api::playing(json!({"flow_operations": "async_hidden"})).await;
    let flow = flow_id(0).to_string();
    let version = api.checkout_and_save(&flow).await;

    let (_, checkin) = api.action("checkin", &flow).await;
    assert_eq!(
        (&checkin["actionName"], &checkin["complete"]),
        (&json!("CHECKIN"), &json!(false))
    );
    let (_, current) = api.flow(&flow).await;
    assert!(current.get("currentOperation").is_none(), "{current}");
    assert_eq!(current["checkedInVersion"]["id"], "1.0");
    // Running, though unseen: another action waits for it.
    let (status, body) = api.action("publish", &flow).await;
    conflict(status, &body, "architect.flow.operation.in.progress");

    sleep_ms(OPERATION_MS + 100).await;
    let (_, current) = api.flow(&flow).await;
    assert!(current.get("currentOperation").is_none(), "{current}");
    assert_eq!(current["checkedInVersion"]["id"], version.as_str());
    assert_eq!(current["publishedVersion"]["id"], "1.0");

    let (_, publish) = api.action("publish", &flow).await;
    assert_eq!(publish["complete"], false);
    sleep_ms(OPERATION_MS + 100).await;
    let (_, current) = api.flow(&flow).await;
    assert!(current.get("currentOperation").is_none(), "{current}");
    assert_eq!(current["publishedVersion"]["id"], version.as_str());

    // A failed publish changes nothing, silently.
    let other = flow_id(1).to_string();
    api.control(
        Method::POST,
        &format!("/sandbox/flows/{other}/fail-next-publish"),
        json!(null),
    )
    .await;
    let (before_status, before) = api.flow(&other).await;
    assert_eq!(before_status, 200);
    let (_, publish) = api.action("publish", &other).await;
    assert_eq!(publish["complete"], false);
    sleep_ms(OPERATION_MS + 100).await;
    let (_, after) = api.flow(&other).await;
    assert_eq!(after, before);
}

#[tokio::test]
async fn stale_operation_shows_the_previous_operation_then_the_new_one() {
    let api = Api::playing(json!({"flow_operations": "stale_operation", "stale_operation_ms": 600})).await;
    let flow = flow_id(0).to_string();
    api.checkout_and_save(&flow).await;

    let (_, checkin) = api.action("checkin", &flow).await;
    let (_, current) = api.flow(&flow).await;
    assert!(
        current.get("currentOperation").is_none(),
        "no earlier operation: {current}"
    );
    sleep_ms(700).await;
    let (_, current) = api.flow(&flow).await;
    assert_eq!(current["currentOperation"]["id"], checkin["id"]);
    assert_eq!(current["currentOperation"]["complete"], true);

    let (_, publish) = api.action("publish", &flow).await;
    assert_ne!(publish["id"], checkin["id"]);
    let (_, current) = api.flow(&flow).await;
    assert_eq!(
        current["currentOperation"]["id"], checkin["id"],
        "stale: {current}"
    );
    assert_eq!(current["currentOperation"]["actionName"], "CHECKIN");
    assert_eq!(current["currentOperation"]["actionStatus"], "SUCCESS");
    sleep_ms(700).await;
    let (_, current) = api.flow(&flow).await;
    assert_eq!(current["currentOperation"]["id"], publish["id"]);
    assert_eq!(current["currentOperation"]["actionStatus"], "SUCCESS");
}

#[tokio::test]
async fn within_the_consistency_lag_workitem_reads_lag_and_nothing_written_is_lost() {
    let lag = 1_000;
    let api = Api::playing(json!({"consistency_lag_ms": lag})).await;
    let tag = "lagging-1";
    let (status, created) = api
        .call(
            Method::POST,
            "/api/v2/taskmanagement/workitems",
            Some(json!({"name": "Fresh case", "typeId": worktype_id(), "externalTag": tag})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/api/v2/taskmanagement/workitems/{id}");

    let (status, body) = api.call(Method::GET, &path, None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not.found");
    assert!(body["contextId"].is_string());
    let query = json!({"filters": [
        {"name": "typeId", "type": "String", "operator": "EQ", "values": [worktype_id()]},
        {"name": "externalTag", "type": "String", "operator": "EQ", "values": [tag]},
    ]});
    let found_ids = |listing: &Value| -> Vec<String> {
        listing["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect()
    };
    let query_path = "/api/v2/taskmanagement/workitems/query";
    let (_, listing) = api.call(Method::POST, query_path, Some(query.clone())).await;
    assert!(found_ids(&listing).is_empty(), "{listing}");

    // Writes work on the true state, unseen or not.
    let (status, patched) = api.call(Method::PATCH, &path, Some(json!({"priority": 7}))).await;
    assert_eq!((status, &patched["priority"]), (StatusCode::OK, &json!(7)));

    // A workitem patched within the lag reads as it was before the patch.
    let seeded = format!("/api/v2/taskmanagement/workitems/{}", workitem_id(0));
    let (_, before) = api.call(Method::GET, &seeded, None).await;
    let (_, patched) = api
        .call(Method::PATCH, &seeded, Some(json!({"name": "Renamed case"})))
        .await;
    assert_eq!(patched["name"], "Renamed case");
    let (status, seen) = api.call(Method::GET, &seeded, None).await;
    assert_eq!(status, 200);
    assert_eq!(seen, before);

    sleep_ms(lag + 100).await;
    let (status, seen) = api.call(Method::GET, &path, None).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(
        (&seen["name"], &seen["priority"]),
        (&json!("Fresh case"), &json!(7))
    );
    let (_, listing) = api.call(Method::POST, query_path, Some(query)).await;
    assert_eq!(found_ids(&listing), [id]);
    let (_, seen) = api.call(Method::GET, &seeded, None).await;
    assert_eq!(seen["name"], "Renamed case");
}

#[tokio::test]
async fn within_the_consistency_lag_new_flows_are_unseen_and_a_publish_after_checkin_mismatches() {
    let lag = 800;
    let api = Api::playing(json!({"consistency_lag_ms": lag})).await;

    let (status, created) = api
        .call(
            Method::POST,
            "/api/v2/flows",
            Some(json!({"name": "Fresh flow", "type": "INBOUNDCALL"})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let fresh = created["id"].as_str().unwrap().to_string();
    let (status, body) = api.flow(&fresh).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::NOT_FOUND, &json!("not.found"))
    );
    let by_name = "/api/v2/flows?name=Fresh%20flow";
    let (_, listed) = api.call(Method::GET, by_name, None).await;
    assert_eq!(listed["entities"], json!([]));
    // Actions on it work.
    let (status, body) = api.action("checkout", &fresh).await;
    assert_eq!(status, 200, "{body}");

    let flow = flow_id(0).to_string();
    let version = api.checkout_and_save(&flow).await;
    api.action("checkin", &flow).await;
    sleep_ms(OPERATION_MS + 100).await;
    let (_, current) = api.flow(&flow).await;
    assert_eq!(current["currentOperation"]["actionStatus"], "SUCCESS");
    let (status, body) = api.action("publish", &flow).await;
    let message = conflict(status, &body, "architect.flow.version.mismatch");
    assert!(
        message.contains("does not match the current version"),
        "{message}"
    );
    let (_, current) = api.flow(&flow).await;
    assert_eq!(current["publishedVersion"]["id"], "1.0");
    assert_eq!(
        current["currentOperation"]["actionName"], "CHECKIN",
        "nothing started"
    );

    sleep_ms(lag).await;
    let (status, body) = api.flow(&fresh).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["lockedClient"]["id"], "sandbox-client",
        "the checkout was kept"
    );
    let (_, listed) = api.call(Method::GET, by_name, None).await;
    assert_eq!(listed["entities"][0]["id"], fresh.as_str());
    let (status, body) = api.action("publish", &flow).await;
    assert_eq!(status, 200, "{body}");
    sleep_ms(OPERATION_MS + 100).await;
    let (_, current) = api.flow(&flow).await;
    assert_eq!(current["publishedVersion"]["id"], version.as_str());
}

#[tokio::test]
async fn a_persons_lock_refuses_every_client_until_they_let_go() {
    let api = Api::playing(json!({})).await;
    let flow = flow_id(0).to_string();
    let person = user_id(0);
    let locked = api
        .control(
            Method::POST,
            &format!("/sandbox/flows/{flow}/lock"),
            json!({"user_id": person, "release_after_ms": 800}),
        )
        .await;
    assert_eq!(locked["locked_user"]["name"], "Agent 001");

    let (_, current) = api.flow(&flow).await;
    assert_eq!(current["lockedUser"]["id"], person.to_string());
    assert_eq!(current["lockedUser"]["name"], "Agent 001");
    assert_eq!(
        current["lockedUser"]["selfUri"],
        format!("/api/v2/users/{person}")
    );
    assert!(current.get("lockedClient").is_none(), "{current}");

    let other = sandbox_token_as(
        &api.http,
        &api.sandbox.base_url(),
        OTHER_CLIENT_ID,
        OTHER_CLIENT_SECRET,
    )
    .await;
    for token in [&api.token, &other] {
        let (status, body) = api
            .call_as(
                token,
                Method::POST,
                &format!("/api/v2/flows/actions/checkout?flow={flow}"),
                None,
            )
            .await;
        let message = conflict(status, &body, "architect.flow.locked");
        assert!(message.contains("Agent 001"), "{message}");
    }
    for action in ["checkin", "publish", "revert"] {
        let (status, body) = api.action(action, &flow).await;
        conflict(status, &body, "architect.flow.locked");
    }
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/api/v2/flows/{flow}/versions"),
            Some(json!({"nodes": {}})),
        )
        .await;
    conflict(status, &body, "architect.flow.locked");

    sleep_ms(900).await;
    let (_, current) = api.flow(&flow).await;
    assert!(current.get("lockedUser").is_none(), "released: {current}");
    let (status, body) = api.action("checkout", &flow).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lockedClient"]["id"], "sandbox-client");

    // Unlock releases a person's lock at once; release_after_ms applies to a client's lock too.
    let second = flow_id(1).to_string();
    api.control(
        Method::POST,
        &format!("/sandbox/flows/{second}/lock"),
        json!({"user_id": person}),
    )
    .await;
    let (_, unlocked) = api.action("unlock", &second).await;
    assert!(unlocked.get("lockedUser").is_none(), "{unlocked}");
    api.control(
        Method::POST,
        &format!("/sandbox/flows/{second}/lock"),
        json!({"client_id": OTHER_CLIENT_ID, "release_after_ms": 300}),
    )
    .await;
    let (status, body) = api.action("checkout", &second).await;
    assert!(conflict(status, &body, "architect.flow.locked").contains(OTHER_CLIENT_ID));
    sleep_ms(400).await;
    let (status, body) = api.action("checkout", &second).await;
    assert_eq!(status, 200, "{body}");
}

/// How many of `presence`, `routingStatus` and `outOfOffice` each entity of the listing at
/// `path` carries (the listing must answer 200).
async fn expanded_counts(api: &Api, path: &str) -> Vec<usize> {
    let (status, listing) = api.call(Method::GET, path, None).await;
    assert_eq!(status, 200, "{listing}");
    listing["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| {
            ["presence", "routingStatus", "outOfOffice"]
                .iter()
                .filter(|field| user.get(**field).is_some())
                .count()
        })
        .collect()
}

#[tokio::test]
async fn expand_omitted_every_leaves_every_nth_entity_of_a_listing_unexpanded() {
    let api = Api::playing(json!({"expand_omitted_every": 2})).await;
    let ids: Vec<String> = (0..3).map(|n| user_id(n).to_string()).collect();
    let path = format!(
        "/api/v2/users?id={}&expand=presence,routingStatus,outOfOffice",
        ids.join(",")
    );
    assert_eq!(
        expanded_counts(&api, &path).await,
        [3, 0, 3],
        "positions 2, 4, … from 1 come without"
    );
    // Counted within each page.
    assert_eq!(
        expanded_counts(&api, "/api/v2/users?pageSize=2&pageNumber=2&expand=presence").await,
        [1]
    );
    // One user read alone is always expanded.
    let (_, user) = api
        .call(
            Method::GET,
            &format!("/api/v2/users/{}?expand=routingStatus", user_id(1)),
            None,
        )
        .await;
    assert_eq!(user["routingStatus"]["status"], "OFF_QUEUE");

    api.control(Method::DELETE, "/sandbox/behaviour", json!(null))
        .await;
    let path = format!("/api/v2/users?id={}&expand=presence", ids.join(","));
    assert_eq!(
        expanded_counts(&api, &path).await,
        [1, 1, 1],
        "the default expands every entity"
    );
}
