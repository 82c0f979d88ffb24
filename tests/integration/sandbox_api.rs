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

/// A sandbox of `users` users and 2 flows, and a client for it.
async fn api_with_users(users: usize) -> crate::helpers::SandboxApi {
    crate::helpers::SandboxApi::start(SandboxConfig {
        users,
        workitems: 0,
        flows: 2,
        ..SandboxConfig::default()
    })
    .await
}

async fn call(
    api: &crate::helpers::SandboxApi,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    api.try_call_as(&api.token, method, path, body).await.unwrap()
}

async fn get(api: &crate::helpers::SandboxApi, path: &str) -> (reqwest::StatusCode, Value) {
    call(api, reqwest::Method::GET, path, None).await
}

fn ids_of(listing: &Value) -> Vec<String> {
    listing["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn users_are_read_by_id_in_bulk_with_the_expansions_asked_for() {
    let api = api_with_users(120).await;
    let unknown = uuid::Uuid::new_v4();
    // Repeated ids (and expand values) as a client sends a list, comma-separated as the Python
    // SDK does, or both.
    let path = format!(
        "/api/v2/users?id={}&id={unknown}&id={},{}&expand=presence&expand=routingStatus,outOfOffice,skills",
        user_id(2),
        user_id(0),
        user_id(2)
    );
    let (status, listing) = get(&api, &path).await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(ids_of(&listing), [user_id(2).to_string(), user_id(0).to_string()]);
    assert_eq!(
        (
            &listing["total"],
            &listing["pageSize"],
            &listing["pageNumber"],
            &listing["pageCount"]
        ),
        (&json!(2), &json!(25), &json!(1), &json!(1))
    );
    for uri in ["selfUri", "firstUri", "lastUri"] {
        assert!(
            listing[uri].as_str().unwrap().starts_with("/api/v2/users?"),
            "{listing}"
        );
    }
    assert!(listing.get("nextUri").is_none() && listing.get("previousUri").is_none());
    let user = &listing["entities"][1];
    assert_eq!(
        (&user["name"], &user["state"]),
        (&json!("Agent 001"), &json!("active"))
    );
    // The presence is the one GET …/presences/purecloud answers.
    let (_, presence) = get(&api, &format!("/api/v2/users/{}/presences/purecloud", user_id(0))).await;
    assert_eq!(user["presence"], presence);
    assert_eq!(user["routingStatus"]["userId"], user_id(0).to_string());
    assert_eq!(user["routingStatus"]["status"], "OFF_QUEUE");
    assert!(user["routingStatus"]["startTime"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(user["outOfOffice"]["user"]["id"], user_id(0).to_string());
    assert_eq!(user["outOfOffice"]["active"], false);
    assert_eq!(user["outOfOffice"]["indefinite"], false);
    assert!(user.get("skills").is_none(), "unknown expand values are ignored");

    // Without expand, none of them.
    let (_, plain) = get(&api, &format!("/api/v2/users?id={}", user_id(0))).await;
    let user = &plain["entities"][0];
    for field in ["presence", "routingStatus", "outOfOffice"] {
        assert!(user.get(field).is_none(), "{field} unasked: {user}");
    }

    // 100 ids need pageSize=100 (the default is 25); 101 are refused.
    let hundred: Vec<String> = (0..100).map(|n| user_id(n).to_string()).collect();
    let (_, first_page) = get(&api, &format!("/api/v2/users?id={}", hundred.join(","))).await;
    assert_eq!(first_page["entities"].as_array().unwrap().len(), 25);
    assert_eq!(
        (&first_page["total"], &first_page["pageCount"]),
        (&json!(100), &json!(4))
    );
    assert!(first_page["nextUri"].as_str().unwrap().contains("pageNumber=2"));
    let repeated: String = hundred.iter().map(|id| format!("id={id}&")).collect();
    let (status, all) = get(&api, &format!("/api/v2/users?{repeated}pageSize=100")).await;
    assert_eq!(status, 200);
    assert_eq!(ids_of(&all), hundred);
    let (status, refused) = get(
        &api,
        &format!("/api/v2/users?{repeated}id={}&pageSize=100", user_id(100)),
    )
    .await;
    assert_eq!(
        (status, &refused["code"]),
        (reqwest::StatusCode::BAD_REQUEST, &json!("bad.request"))
    );
    assert!(refused["message"].as_str().unwrap().contains("100"), "{refused}");
    for bad in ["pageSize=501", "pageSize=0", "pageNumber=x"] {
        let (status, body) = get(&api, &format!("/api/v2/users?{bad}")).await;
        assert_eq!(
            (status, &body["code"]),
            (reqwest::StatusCode::BAD_REQUEST, &json!("bad.request")),
            "{bad}"
        );
    }
    let stats = api.stats().await;
    assert_eq!(crate::helpers::requests_in(&stats, "GET /api/v2/users", 200), 4);
    assert_eq!(crate::helpers::requests_in(&stats, "GET /api/v2/users", 400), 4);
}

#[tokio::test]
async fn users_are_listed_by_name_page_by_page_and_one_by_id() {
    let api = api_with_users(120).await;
    let (_, second) = get(&api, "/api/v2/users?pageSize=50&pageNumber=2&expand=presence").await;
    assert_eq!((&second["total"], &second["pageCount"]), (&json!(120), &json!(3)));
    assert_eq!(second["entities"].as_array().unwrap().len(), 50);
    assert_eq!(second["entities"][0]["name"], "Agent 051");
    assert!(second["entities"][0]["presence"]["presenceDefinition"]["id"].is_string());
    assert_eq!(
        second["previousUri"],
        "/api/v2/users?expand=presence&pageSize=50&pageNumber=1"
    );
    assert_eq!(
        second["nextUri"],
        "/api/v2/users?expand=presence&pageSize=50&pageNumber=3"
    );
    assert_eq!(
        second["lastUri"],
        "/api/v2/users?expand=presence&pageSize=50&pageNumber=3"
    );
    let (_, last) = get(&api, "/api/v2/users?pageSize=50&pageNumber=3").await;
    assert_eq!(last["entities"].as_array().unwrap().len(), 20);
    assert!(last.get("nextUri").is_none());
    let (_, inactive) = get(&api, "/api/v2/users?state=inactive").await;
    assert_eq!(inactive["total"], 0);

    let (status, user) = get(
        &api,
        &format!("/api/v2/users/{}?expand=routingStatus,outOfOffice", user_id(4)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (&user["id"], &user["name"]),
        (&json!(user_id(4)), &json!("Agent 005"))
    );
    assert_eq!(user["routingStatus"]["status"], "OFF_QUEUE");
    assert_eq!(user["outOfOffice"]["active"], false);
    assert!(user.get("presence").is_none());
    let (_, plain) = get(&api, &format!("/api/v2/users/{}", user_id(4))).await;
    assert!(plain.get("routingStatus").is_none());
    let (status, missing) = get(&api, &format!("/api/v2/users/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(
        (status, &missing["code"]),
        (reqwest::StatusCode::NOT_FOUND, &json!("not.found"))
    );
    let stats = api.stats().await;
    assert_eq!(
        crate::helpers::requests_in(&stats, "GET /api/v2/users/{userId}", 200),
        2
    );
    assert_eq!(
        crate::helpers::requests_in(&stats, "GET /api/v2/users/{userId}", 404),
        1
    );
}

#[tokio::test]
async fn out_of_office_is_read_and_replaced_and_the_change_is_logged() {
    let api = api_with_users(3).await;
    let path = format!("/api/v2/users/{}/outofoffice", user_id(1));
    let (status, initial) = get(&api, &path).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&initial["active"], &initial["indefinite"]),
        (&json!(false), &json!(false))
    );
    assert_eq!(initial["user"]["id"], user_id(1).to_string());
    assert!(initial.get("startDate").is_none());

    let body = json!({"active": true, "indefinite": false,
        "startDate": "2030-01-01T08:00:00Z", "endDate": "2030-01-05T17:00:00.000+00:00"});
    let (status, put) = call(&api, reqwest::Method::PUT, &path, Some(body.clone())).await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["active"], true);
    assert_eq!(put["startDate"], "2030-01-01T08:00:00.000Z");
    assert_eq!(put["endDate"], "2030-01-05T17:00:00.000Z");
    let (_, read) = get(&api, &path).await;
    assert_eq!(read, put);
    let (_, user) = get(&api, &format!("/api/v2/users/{}?expand=outOfOffice", user_id(1))).await;
    assert_eq!(user["outOfOffice"], put);
    let users = get_json(&api.http, &api.url("/sandbox/users"), None).await;
    let shown = users["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == user_id(1).to_string())
        .unwrap();
    assert_eq!(shown["outOfOffice"], true);
    let log = get_json(
        &api.http,
        &api.url(&format!("/sandbox/mutations?entity=user:{}", user_id(1))),
        None,
    )
    .await;
    let log = log["mutations"].as_array().unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (&log[0]["method"], &log[0]["path"], &log[0]["body"]),
        (&json!("PUT"), &json!(path), &body)
    );

    // A naive date (the SDK's isoformat() of a datetime without tzinfo) reads as UTC.
    let (status, naive) = call(
        &api,
        reqwest::Method::PUT,
        &path,
        Some(json!({"active": false, "startDate": "2030-02-01T00:00:00"})),
    )
    .await;
    assert_eq!(status, 200, "{naive}");
    assert_eq!(naive["startDate"], "2030-02-01T00:00:00.000Z");
    for bad in [
        json!({"active": "yes"}),
        json!({"active": true, "startDate": "tomorrow"}),
        json!({"active": true, "startDate": "2030-01-05T00:00:00Z", "endDate": "2030-01-01T00:00:00Z"}),
    ] {
        let (status, body) = call(&api, reqwest::Method::PUT, &path, Some(bad.clone())).await;
        assert_eq!(
            (status, &body["code"]),
            (reqwest::StatusCode::BAD_REQUEST, &json!("invalid.value")),
            "{bad}"
        );
    }
    let missing = format!("/api/v2/users/{}/outofoffice", uuid::Uuid::new_v4());
    assert_eq!(get(&api, &missing).await.0, 404);
    assert_eq!(
        call(
            &api,
            reqwest::Method::PUT,
            &missing,
            Some(json!({"active": true}))
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn dependency_tracking_reports_the_consumers_set_for_a_flow() {
    use genesys_sandbox::flow_id;
    let api = api_with_users(1).await;
    let flow = flow_id(0);
    let path = |query: &str| format!("/api/v2/architect/dependencytracking/consumingresources?{query}");
    for missing in [format!("id={flow}"), "objectType=INBOUNDCALLFLOW".to_string()] {
        let (status, body) = get(&api, &path(&missing)).await;
        assert_eq!(
            (status, &body["code"]),
            (reqwest::StatusCode::BAD_REQUEST, &json!("bad.request")),
            "{missing}"
        );
    }
    let (status, none) = get(&api, &path(&format!("id={flow}&objectType=INBOUNDCALLFLOW"))).await;
    assert_eq!(status, 200);
    assert_eq!((&none["entities"], &none["total"]), (&json!([]), &json!(0)));

    let caller = uuid::Uuid::new_v4();
    let consumers = json!({"consumers": [
        {"id": caller, "name": "Main menu", "type": "INBOUNDCALLFLOW"},
        {"id": "q-1", "name": "Support", "type": "QUEUE", "version": "4.0"},
        {"id": "m-1", "name": "Shared module", "type": "COMMONMODULEFLOW"},
    ]});
    let set = api
        .control(
            reqwest::Method::PUT,
            &format!("/sandbox/flows/{flow}/consumers"),
            consumers,
        )
        .await;
    assert_eq!(set["consumers"], 3);
    let query = format!("id={flow}&objectType=INBOUNDCALLFLOW");
    let (_, listing) = get(&api, &path(&query)).await;
    assert_eq!(
        (
            &listing["total"],
            &listing["pageSize"],
            &listing["pageNumber"],
            &listing["pageCount"]
        ),
        (&json!(3), &json!(25), &json!(1), &json!(1))
    );
    assert_eq!(
        listing["entities"][0],
        json!({"id": caller, "name": "Main menu", "version": "1.0", "type": "INBOUNDCALLFLOW",
               "deleted": false, "updated": false, "stateUnknown": false,
               "selfUri": format!("/api/v2/flows/{caller}")})
    );
    assert_eq!(listing["entities"][1]["version"], "4.0");
    assert!(listing["entities"][1].get("selfUri").is_none());
    let (_, flows_only) = get(
        &api,
        &path(&format!(
            "{query}&resourceType=INBOUNDCALLFLOW&resourceType=COMMONMODULEFLOW&flowFilter=published"
        )),
    )
    .await;
    assert_eq!(ids_of(&flows_only), [caller.to_string(), "m-1".to_string()]);
    let (_, paged) = get(&api, &path(&format!("{query}&pageSize=2&pageNumber=2"))).await;
    assert_eq!(
        (ids_of(&paged), &paged["pageCount"]),
        (vec!["m-1".to_string()], &json!(2))
    );
    // Another object type names another object: nothing consumes it.
    let (_, other) = get(&api, &path(&format!("id={flow}&objectType=COMMONMODULEFLOW"))).await;
    assert_eq!(other["total"], 0);
    let (_, unknown) = get(
        &api,
        &path(&format!("id={}&objectType=INBOUNDCALLFLOW", uuid::Uuid::new_v4())),
    )
    .await;
    assert_eq!(unknown["total"], 0);

    // Replaced, not added to.
    api.control(
        reqwest::Method::PUT,
        &format!("/sandbox/flows/{flow}/consumers"),
        json!({"consumers": []}),
    )
    .await;
    assert_eq!(get(&api, &path(&query)).await.1["total"], 0);
    let refused = |body: Value, flow: uuid::Uuid| {
        let http = api.http.clone();
        let url = api.url(&format!("/sandbox/flows/{flow}/consumers"));
        async move { http.put(url).json(&body).send().await.unwrap().status() }
    };
    assert_eq!(refused(json!({"consumers": []}), uuid::Uuid::new_v4()).await, 404);
    assert_eq!(
        refused(json!({"consumers": [{"id": "x", "type": "inbound call"}]}), flow).await,
        400
    );
    assert_eq!(
        crate::helpers::requests_in(
            &api.stats().await,
            "GET /api/v2/architect/dependencytracking/consumingresources",
            200
        ),
        7
    );
}
