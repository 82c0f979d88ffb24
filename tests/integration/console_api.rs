//! The admin console's JSON API and pages, through a running worker's `ADMIN_ADDR`: the admin
//! token on every change, controls and their audit events, the overview, batches, dead letters
//! and the job lookup.

use std::time::Duration;

use genesys_sandbox::{user_id, SandboxConfig};
use genesys_worker::events::Outcome;
use genesys_worker::store::Store;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_job, job, random_name, spawn_app_with, TestApp};

const TOKEN: &str = "console-test-token-0123456789";
const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";

async fn spawn(overrides: &[(&str, &str)]) -> TestApp {
    let app = spawn_app_with(
        SandboxConfig {
            users: 20,
            ..SandboxConfig::default()
        },
        overrides,
    )
    .await;
    // The admin server answers once the worker has started.
    for _ in 0..100 {
        if app.http.get(url(&app, "/healthz")).send().await.is_ok() {
            return app;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the admin server did not start");
}

async fn spawn_with_token(overrides: &[(&str, &str)]) -> TestApp {
    spawn(&[&[("ADMIN_TOKEN", TOKEN)], overrides].concat()).await
}

fn url(app: &TestApp, path: &str) -> String {
    format!("http://{}{path}", app.config.admin_addr)
}

async fn get(app: &TestApp, path: &str) -> (StatusCode, Value) {
    let response = app.http.get(url(app, path)).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get_page(app: &TestApp, path: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = app.http.get(url(app, path)).send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.text().await.unwrap())
}

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut request = app.http.post(url(app, path)).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn store(app: &TestApp) -> Store {
    Store::connect(
        &app.config.redis,
        &app.config.redis_key_prefix,
        app.config.idempotency_ttl_secs,
        app.config.lease_ms,
    )
    .await
    .unwrap()
}

fn id_of(job: &Value) -> Uuid {
    job["job_id"].as_str().unwrap().parse().unwrap()
}

/// Polls `path` until `done` holds of its JSON (up to 15 s).
async fn until(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        let (status, body) = get(app, path).await;
        if status.is_success() && done(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never got there: {last:#}");
}

#[tokio::test]
async fn a_control_change_needs_the_admin_token_and_is_listed_and_announced() {
    let mut app = spawn_with_token(&[]).await;
    let store = store(&app).await;
    let pause = json!({"action": "pause", "scope": "correlation", "value": "handover-08",
                       "actor": "alice", "reason": "wrong roster"});

    // Without a token, or with a wrong one: 401, and nothing changes.
    let (status, body) = post(&app, "/api/controls", None, &pause).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = post(
        &app,
        "/api/controls",
        Some("console-test-token-0123456780"),
        &pause,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = app
        .http
        .post(url(&app, "/api/controls"))
        .header("Authorization", format!("Basic {TOKEN}"))
        .json(&pause)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert!(genesys_worker::control::read(&store).await.unwrap().is_empty());
    assert_eq!(get(&app, "/api/session").await.0, StatusCode::UNAUTHORIZED);

    // The login check.
    let session = app
        .http
        .get(url(&app, "/api/session"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), StatusCode::OK);

    // With it: the pause is stored, listed and announced.
    let (status, body) = post(&app, "/api/controls", Some(TOKEN), &pause).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["change"], "pause");
    assert_eq!(body["control"]["scope"], "correlation");
    assert_eq!(body["control"]["value"], "handover-08");
    assert_eq!(body["control"]["actor"], "alice");
    assert_eq!(body["control"]["reason"], "wrong roster");
    let stored = genesys_worker::control::read(&store).await.unwrap().list();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].scope, stored[0].value.as_str()),
        ("correlation", "handover-08")
    );
    let (status, listed) = get(&app, "/api/controls").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["controls"].as_array().unwrap().len(), 1);
    assert_eq!(listed["controls"][0]["action"], "pause");
    assert_eq!(listed["controls"][0]["actor"], "alice");
    assert_eq!(listed["stale"], false);
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.kind, "control");
    assert_eq!(event.event.entity, "control:correlation:handover-08");
    assert_eq!(event.event.actor.as_deref(), Some("alice"));
    assert_eq!(event.event.outcome, Outcome::Applied);
    assert_eq!(event.event.new_state.as_ref().unwrap()["action"], "pause");

    // Requests the control API refuses: 400 with the reason, nothing changed.
    for (request, code) in [
        (
            json!({"action": "cancel", "scope": "kind", "value": "agent.status", "actor": "alice"}),
            "invalid_control",
        ),
        (
            json!({"action": "pause", "scope": "batch", "value": "not-a-uuid", "actor": "alice"}),
            "invalid_control",
        ),
        (
            json!({"action": "stop", "scope": "lane", "value": "batch", "actor": "alice"}),
            "invalid_control",
        ),
        (
            json!({"action": "pause", "scope": "lane", "value": "batch", "actor": " "}),
            "invalid_control",
        ),
        (
            json!({"action": "resume", "scope": "lane", "value": "batch", "actor": "alice"}),
            "not_paused",
        ),
        (json!({"action": "pause", "scope": "lane"}), "invalid_request"),
    ] {
        let (status, body) = post(&app, "/api/controls", Some(TOKEN), &request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {body}");
        assert_eq!(body["error"]["code"], code, "{request}: {body}");
    }
    assert_eq!(
        genesys_worker::control::read(&store).await.unwrap().list().len(),
        1
    );

    // Resumed: gone from the list, announced by bob.
    let resume = json!({"action": "resume", "scope": "correlation", "value": "handover-08", "actor": "bob"});
    let (status, body) = post(&app, "/api/controls", Some(TOKEN), &resume).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(genesys_worker::control::read(&store).await.unwrap().is_empty());
    assert_eq!(get(&app, "/api/controls").await.1["controls"], json!([]));
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.entity, "control:correlation:handover-08");
    assert_eq!(event.event.actor.as_deref(), Some("bob"));
    assert_eq!(event.event.new_state.as_ref().unwrap()["action"], "resume");
    assert_eq!(event.event.entity_version, 2, "the control's chain goes on");
    app.stop().await;
}

#[tokio::test]
async fn without_an_admin_token_the_console_is_read_only() {
    let app = spawn(&[]).await;
    let store = store(&app).await;
    let pause = json!({"action": "pause", "scope": "lane", "value": "batch", "actor": "alice"});
    for token in [None, Some(TOKEN)] {
        let (status, body) = post(&app, "/api/controls", token, &pause).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "read_only");
        assert!(body["error"]["message"].as_str().unwrap().contains("ADMIN_TOKEN"));
        let (status, _) = post(
            &app,
            "/api/dead-letters/replay",
            token,
            &json!({"all": true, "dry_run": true}),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    assert!(genesys_worker::control::read(&store).await.unwrap().is_empty());
    assert_eq!(get(&app, "/api/session").await.0, StatusCode::FORBIDDEN);
    assert_eq!(get(&app, "/api/overview").await.1["writable"], false);
    let (status, _, page) = get_page(&app, "/console").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"data-writable="false""#));
    assert!(page.contains(r#"data-testid="read-only-note""#));
    assert!(!page.contains(r#"data-testid="login-form""#));
    app.stop().await;
}

#[tokio::test]
async fn the_overview_counts_jobs_by_outcome_and_shows_the_budget_beside_the_probes() {
    let mut app = spawn_with_token(&[]).await;
    for n in 0..5 {
        app.publish(&agent_job(user_id(n), json!({"presence": "Available"})))
            .await;
    }
    app.publish(&agent_job(user_id(6), json!({"presence": "Napping"})))
        .await;
    app.audit_events(6).await;
    // The metrics are the process's (other tests' workers count too): at least these.
    let overview = until(&app, "/api/overview", |o| {
        let total = |outcome: &str| {
            o["jobs"]["by_outcome"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["outcome"] == outcome)
                .map_or(0, |x| x["total"].as_u64().unwrap())
        };
        total("applied") >= 5 && total("rejected") >= 1 && o["jobs"]["last_minute"].as_u64().unwrap() >= 6
    })
    .await;
    for field in ["per_second", "last_minute", "by_outcome"] {
        assert!(!overview["jobs"][field].is_null(), "jobs.{field}: {overview:#}");
    }
    let applied = overview["jobs"]["by_outcome"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["outcome"] == "applied")
        .unwrap();
    assert!(applied["per_second"].is_number() && applied["last_minute"].as_u64().unwrap() >= 5);
    assert!(overview["in_flight"]["single"].is_u64() && overview["in_flight"]["batch"].is_u64());
    assert!(overview["in_flight"]["total"].is_u64());
    assert!(overview["oldest_job_age_secs"].is_number());
    assert!(overview["window_secs"].as_f64().unwrap() > 0.0);
    let genesys = &overview["genesys"];
    // A bulk presence call or a few, and the presence definitions.
    assert!(
        genesys["requests_last_minute"].as_u64().unwrap() >= 2,
        "{genesys:#}"
    );
    assert!(genesys["throttled_last_minute"].is_u64());
    assert!(genesys["requests_per_second"].is_number());
    let budgets = genesys["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 1);
    assert_eq!(budgets[0]["client"], genesys_sandbox::DEFAULT_CLIENT_ID);
    assert_eq!(budgets[0]["effective_per_second"], 500.0);
    assert!(budgets[0]["configured_per_second"].is_number());
    assert_eq!(overview["consuming"], true);
    assert_eq!(overview["controls"], json!([]));
    assert_eq!(overview["writable"], true);

    // The page, with its stable ids, and the script it loads.
    let (status, headers, page) = get_page(&app, "/console").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    for testid in [
        "jobs-per-second",
        "in-flight-single",
        "oldest-job-age",
        "genesys-throttled",
        "login-form",
        "pause-form",
    ] {
        assert!(page.contains(&format!(r#"data-testid="{testid}""#)), "{testid}");
    }
    let response = app
        .http
        .get(url(&app, "/console/console.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("/api/overview"));
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url(&app, "/"))
        .send()
        .await
        .unwrap();
    assert!(redirect.status().is_redirection());
    assert_eq!(redirect.headers()["location"], "/console");

    // The probes and the scrape are as they were.
    let (_, _, healthz) = get_page(&app, "/healthz").await;
    assert_eq!(healthz, "ok\n");
    let (status, ready) = get(&app, "/readyz").await;
    assert_eq!((status, ready["ready"].clone()), (StatusCode::OK, json!(true)));
    let (status, headers, metrics) = get_page(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4");
    assert!(metrics.contains("genesys_worker_jobs_total"));
    app.stop().await;
}

#[tokio::test]
async fn the_batch_endpoints_report_a_finished_batchs_counts_and_errors() {
    let mut app = spawn_with_token(&[]).await;
    let mut children: Vec<Value> = (0..4)
        .map(|n| agent_job(user_id(n), json!({"presence": "On Queue"})))
        .collect();
    children.push(agent_job(user_id(4), json!({"presence": "Teleporting"})));
    let mut batch = job("batch", json!({"jobs": children}));
    batch["idempotency_key"] = json!(format!("console-handover-{}", random_name()));
    let batch_id = id_of(&batch);
    app.publish(&batch).await;
    app.audit_events(6).await;

    let path = format!("/api/batches/{batch_id}");
    let one = until(&app, &path, |b| b["status"] == "announced").await;
    assert_eq!(one["batch_id"], batch_id.to_string());
    assert_eq!(
        (one["total"].clone(), one["finished"].clone()),
        (json!(5), json!(5))
    );
    assert_eq!(one["published"], 5);
    assert_eq!(one["percent"], 100.0);
    assert_eq!(one["counts"], json!({"applied": 4, "rejected": 1}));
    assert_eq!(one["summary_sent"], true);
    let errors = one["first_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "unknown_presence");
    assert_eq!(errors[0]["index"], 4);
    assert_eq!(
        (one["paused"].clone(), one["cancelled"].clone()),
        (Value::Null, Value::Null)
    );

    let (status, list) = get(&app, "/api/batches").await;
    assert_eq!(status, StatusCode::OK);
    let listed = list["batches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["batch_id"] == batch_id.to_string())
        .expect("the batch is listed");
    assert_eq!(listed["counts"], one["counts"]);

    // The pages.
    let (status, _, page) = get_page(&app, &format!("/console/batches/{batch_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("5 of 5 children final (100%)"), "{page}");
    assert!(page.contains(r#"data-testid="count-rejected""#));
    assert!(page.contains(r#"data-testid="batch-pause""#));
    let (_, _, page) = get_page(&app, "/console/batches").await;
    assert!(page.contains(&batch_id.to_string()));
    assert_eq!(
        get(&app, &format!("/api/batches/{}", Uuid::new_v4())).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_page(&app, "/console/batches/nope").await.0,
        StatusCode::NOT_FOUND
    );

    // Paused from the console: the batch says by whom.
    let pause = json!({"action": "pause", "scope": "batch", "value": batch_id, "actor": "carol"});
    assert_eq!(
        post(&app, "/api/controls", Some(TOKEN), &pause).await.0,
        StatusCode::OK
    );
    let (_, one) = get(&app, &path).await;
    assert_eq!(one["paused"]["actor"], "carol");
    app.stop().await;
}

#[tokio::test]
async fn dead_letters_are_listed_replayed_in_a_dry_run_and_replayed_by_selection() {
    let mut app = spawn_with_token(&[
        ("GENESYS_MAX_ATTEMPTS", "1"),
        ("RETRY_DELAYS_MS", "none"),
        ("BULK_PRESENCE", "off"),
    ])
    .await;
    app.set_fault(json!({"route": PATCH_PRESENCE, "errors": {"502": 1.0}}))
        .await;
    let failing = agent_job(user_id(1), json!({"presence": "Break"}));
    let invalid = agent_job(user_id(2), json!({"presence": "Napping"}));
    app.publish(&failing).await;
    app.publish(&invalid).await;
    app.audit_events(2).await;
    let listed = until(&app, "/api/dead-letters", |l| l["total"] == 2).await;
    assert_eq!(listed["matched"], 2);
    let letters = listed["letters"].as_array().unwrap();
    let failed = letters.iter().find(|l| l["job_id"] == failing["job_id"]).unwrap();
    assert_eq!(failed["code"], "genesys.bad.gateway");
    let (_, by_code) = get(&app, "/api/dead-letters?code=unknown_presence&kind=").await;
    assert_eq!(
        (by_code["matched"].clone(), by_code["total"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(by_code["letters"][0]["job_id"], invalid["job_id"]);
    let (status, page) = (
        get_page(&app, "/console/dead-letters").await.0,
        get_page(&app, "/console/dead-letters").await.2,
    );
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(failing["job_id"].as_str().unwrap()));
    assert!(page.contains(r#"data-testid="dlq-replay-selected""#));

    // Refused without the token; nothing selected; both leave the queue as it was.
    let selected = json!({"job_ids": [failing["job_id"]], "dry_run": false});
    let (status, _) = post(&app, "/api/dead-letters/replay", None, &selected).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = post(
        &app,
        "/api/dead-letters/replay",
        Some(TOKEN),
        &json!({"dry_run": true}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("nothing_selected"))
    );
    assert_eq!(get(&app, "/api/dead-letters").await.1["total"], 2);

    // A dry run changes nothing.
    let dry = json!({"job_ids": [failing["job_id"]], "dry_run": true, "actor": "dave"});
    let (status, body) = post(&app, "/api/dead-letters/replay", Some(TOKEN), &dry).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["dry_run"].clone(), body["count"].clone()),
        (json!(true), json!(1))
    );
    assert_eq!(body["replayed"][0]["job_id"], failing["job_id"]);
    let all_by_code = json!({"code": "unknown_presence", "all": true, "dry_run": true});
    let (_, body) = post(&app, "/api/dead-letters/replay", Some(TOKEN), &all_by_code).await;
    assert_eq!(body["count"], 1);
    assert_eq!(body["replayed"][0]["job_id"], invalid["job_id"]);
    assert_eq!(get(&app, "/api/dead-letters").await.1["total"], 2);
    assert_eq!(app.requests(PATCH_PRESENCE, 200).await, 0);

    // The cause fixed, the ticked letter is replayed: applied, and gone from the queue.
    let cleared = app
        .http
        .delete(format!("{}/sandbox/faults", app.sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert!(cleared.status().is_success());
    let (status, body) = post(&app, "/api/dead-letters/replay", Some(TOKEN), &selected).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["count"].clone(), body["left"].clone()),
        (json!(1), json!(1))
    );
    let replayed = app.audit_events(1).await.remove(0);
    assert_eq!(replayed.event.job_id, id_of(&failing));
    assert_eq!(replayed.event.outcome, Outcome::Applied);
    let left = get(&app, "/api/dead-letters").await.1;
    assert_eq!(left["total"], 1);
    assert_eq!(left["letters"][0]["job_id"], invalid["job_id"]);
    app.stop().await;
}

#[tokio::test]
async fn a_job_is_found_by_idempotency_key_and_by_a_recent_job_id_with_its_outcome_and_events() {
    let mut app = spawn_with_token(&[]).await;
    let key = format!("console-lookup-{}", random_name());
    let mut applied = agent_job(user_id(3), json!({"presence": "Break"}));
    applied["idempotency_key"] = json!(key);
    let job_id = id_of(&applied);
    app.publish(&applied).await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Applied);
    let entity = format!("user:{}", user_id(3));

    let found = until(&app, &format!("/api/jobs?q={key}"), |f| {
        f["record"]["confirmed"] == true
    })
    .await;
    assert_eq!(found["found"], true);
    assert_eq!(found["by"], "idempotency_key");
    assert_eq!(found["job_id"], job_id.to_string());
    assert_eq!(found["idempotency_key"], key);
    assert_eq!(found["entity"], entity);
    assert_eq!(found["record"]["state"], "done");
    assert_eq!(found["record"]["outcome"], "applied");
    let events = found["record"]["events"].as_array().unwrap();
    let audit = events
        .iter()
        .find(|e| e["exchange"] == json!(app.config.topology.audit_exchange))
        .expect("the audit event is stored");
    assert_eq!(audit["routing_key"], "audit.agent.status.applied");
    assert_eq!(audit["body"]["event_id"], event.event.event_id.to_string());
    assert!(events
        .iter()
        .any(|e| e["exchange"] == json!(app.config.topology.crm_exchange)));
    assert_eq!(found["entity_version"]["version"], 1);
    assert_eq!(found["entity_version"]["checksum"], json!(event.event.checksum));

    // By job id: the jobs this replica ran lately (the pipeline notes each one it takes).
    let (_, by_id) = get(&app, &format!("/api/jobs?q={job_id}")).await;
    assert_eq!(by_id["by"], "job_id", "{by_id:#}");
    assert_eq!(by_id["record"]["outcome"], "applied");
    assert_eq!(by_id["idempotency_key"], key);
    assert_eq!(by_id["entity"], entity);
    assert_eq!(by_id["recent"]["outcome"], "applied");
    assert!(by_id["recent"]["seen"].is_string());

    // A job whose record Redis does not keep (rejected): the replica remembers its outcome.
    let rejected = agent_job(user_id(4), json!({"presence": "Napping"}));
    app.publish(&rejected).await;
    app.audit_events(1).await;
    let path = format!("/api/jobs?q={}", id_of(&rejected));
    let found = until(&app, &path, |f| f["recent"]["outcome"] == "rejected").await;
    assert_eq!(
        (found["found"].clone(), found["record"].clone()),
        (json!(true), Value::Null)
    );
    assert!(
        found["notes"][0].as_str().unwrap().contains("applied jobs"),
        "{found:#}"
    );

    // Not found: said so.
    let (status, none) = get(&app, &format!("/api/jobs?q={}", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(none["found"], false);
    assert!(!none["notes"].as_array().unwrap().is_empty());

    // The page escapes what came from the job.
    let (status, _, page) = get_page(&app, &format!("/console/jobs?q={key}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"data-testid="job-outcome""#));
    assert!(page.contains("audit.agent.status.applied"));
    assert!(page.contains("only the jobs this replica ran lately"));
    let (_, _, page) = get_page(&app, "/console/jobs?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert!(!page.contains("<script>alert(1)</script>"));
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    app.stop().await;
}
