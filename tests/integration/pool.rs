//! The OAuth client pool (`GENESYS_CLIENTS`): calls spread over several OAuth clients of one
//! org, each with its own token, budget and pauses; a paused client does not hold calls up; a
//! flow deploy calls as one client; no secret of the pool reaches the logs.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use genesys_sandbox::{
    flow_id, workitem_id, RateLimit, SandboxConfig, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET,
};
use genesys_worker::events::Outcome;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{job, spawn_app_with, spawn_app_without_worker, TestApp};

const POOL: [(&str, &str); 3] = [
    ("pool-a", "pool-secret-a"),
    ("pool-b", "pool-secret-b"),
    ("pool-c", "pool-secret-c"),
];

/// `GENESYS_CLIENTS` for the pool.
fn pool_setting() -> String {
    POOL.iter()
        .map(|(id, secret)| format!("{id}:{secret}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A sandbox accepting the pool's clients (and the default one, for the tests' own reads).
fn sandbox(workitems: usize, flows: usize, rate_limit: Option<RateLimit>) -> SandboxConfig {
    let mut clients: Vec<(String, String)> = POOL
        .iter()
        .map(|(id, secret)| (id.to_string(), secret.to_string()))
        .collect();
    clients.push((DEFAULT_CLIENT_ID.into(), DEFAULT_CLIENT_SECRET.into()));
    SandboxConfig {
        users: 30,
        workitems,
        flows,
        clients,
        rate_limit,
        flow_operation_ms: 100,
        ..SandboxConfig::default()
    }
}

/// The worker's settings for the pool: `GENESYS_CLIENTS` alone (the single pair the test kit
/// sets is blanked), then `extra`.
fn pool_overrides<'a>(setting: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut overrides = vec![
        ("GENESYS_CLIENT_ID", ""),
        ("GENESYS_CLIENT_SECRET", ""),
        ("GENESYS_CLIENTS", setting),
    ];
    overrides.extend_from_slice(extra);
    overrides
}

/// Per pool client: (API requests, 429s) the sandbox saw.
fn per_client(stats: &Value) -> HashMap<String, (u64, u64)> {
    POOL.iter()
        .map(|(id, _)| {
            let seen = &stats["clients"][id];
            let count = |field: &str| seen[field].as_u64().unwrap_or(0);
            (id.to_string(), (count("requests"), count("throttled")))
        })
        .collect()
}

fn since(
    after: &HashMap<String, (u64, u64)>,
    before: &HashMap<String, (u64, u64)>,
) -> HashMap<String, (u64, u64)> {
    after
        .iter()
        .map(|(id, (requests, throttled))| {
            let (r0, t0) = before.get(id).copied().unwrap_or_default();
            (id.clone(), (requests - r0, throttled - t0))
        })
        .collect()
}

/// Publishes one `interaction.status` change per seeded workitem; returns their job ids.
async fn publish_status_changes(app: &TestApp, workitems: usize) -> HashSet<Uuid> {
    let mut jobs = HashSet::new();
    for n in 0..workitems {
        let status = job(
            "interaction.status",
            json!({"workitem_id": workitem_id(n), "status": "In Progress"}),
        );
        jobs.insert(status["job_id"].as_str().unwrap().parse().unwrap());
        app.publish(&status).await;
    }
    jobs
}

/// Waits for the audit events of `jobs`, each `applied`.
async fn all_applied(app: &mut TestApp, jobs: &HashSet<Uuid>) {
    let mut done = HashSet::new();
    while done.len() < jobs.len() {
        for event in app.audit_events(1).await {
            let event = event.event;
            assert!(jobs.contains(&event.job_id), "an unexpected job: {event:?}");
            assert_eq!(event.outcome, Outcome::Applied, "{:?}", event.error);
            done.insert(event.job_id);
        }
    }
}

async fn readyz(app: &TestApp) -> Value {
    let url = format!("http://{}/readyz", app.config.admin_addr);
    app.http.get(url).send().await.unwrap().json().await.unwrap()
}

/// R requests a second per client, enforced by the sandbox; the worker paces each client at R.
const R: u32 = 10;

#[tokio::test]
async fn three_clients_carry_three_times_the_calls_of_one_each_a_third() {
    const WORKITEMS: usize = 45;
    let limit = RateLimit {
        requests_per_second: R,
        burst: 10,
    };
    let setting = pool_setting();
    let rps = R.to_string();
    let overrides = pool_overrides(
        &setting,
        &[
            ("GENESYS_RATE_LIMIT_RPS", &rps),
            // Below the sandbox's burst: a little jitter on the wire draws no 429.
            ("GENESYS_RATE_LIMIT_BURST", "5"),
            ("WORKER_CONCURRENCY", "24"),
            ("WORKER_PREFETCH", "48"),
        ],
    );
    let mut app = spawn_app_with(sandbox(WORKITEMS, 0, Some(limit)), &overrides).await;
    assert_eq!(app.config.genesys_clients.len(), 3);
    // The pool's budgets start with a burst each; let the start-up reads (limits API) pass.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = per_client(&app.sandbox_stats().await);

    let started = Instant::now();
    let jobs = publish_status_changes(&app, WORKITEMS).await;
    all_applied(&mut app, &jobs).await;
    let took = started.elapsed().as_secs_f64();

    let stats = app.sandbox_stats().await;
    let calls = since(&per_client(&stats), &before);
    let total: u64 = calls.values().map(|(requests, _)| requests).sum();
    let throttled: u64 = calls.values().map(|(_, throttled)| throttled).sum();
    let rate = total as f64 / took;
    eprintln!(
        "pool of 3 at {R}/s each: {total} calls in {took:.2} s = {rate:.1}/s ({:.2}× one client's {R}/s); per client {calls:?}",
        rate / f64::from(R)
    );
    assert_eq!(
        throttled, 0,
        "no 429 with each client paced at its limit: {calls:?}"
    );
    assert_eq!(stats["throttled"], 0);
    // One client could not go faster than R a second: the pool goes about three times as fast.
    assert!(
        rate >= 2.5 * f64::from(R),
        "{total} calls in {took:.2} s: {rate:.1}/s"
    );
    // Each client carries about a third.
    for (id, (requests, _)) in &calls {
        let share = *requests as f64 / total as f64;
        assert!(
            (0.25..=0.42).contains(&share),
            "{id} made {requests} of {total} calls"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_client_paused_by_a_429_does_not_hold_up_the_others() {
    const WORKITEMS: usize = 60;
    const FAST: u32 = 20;
    let setting = pool_setting();
    let rps = FAST.to_string();
    let overrides = pool_overrides(
        &setting,
        &[
            ("GENESYS_RATE_LIMIT_RPS", &rps),
            ("GENESYS_RATE_LIMIT_BURST", "2"),
            ("WORKER_CONCURRENCY", "24"),
            ("WORKER_PREFETCH", "48"),
            // The worker does not learn pool-b's lower limit: it meets it as 429s.
            ("GENESYS_LIMITS_REFRESH_SECS", "0"),
        ],
    );
    let mut app = spawn_app_with(sandbox(WORKITEMS, 0, None), &overrides).await;
    // Genesys allows pool-b one request a second; the others are not limited.
    let url = format!("{}/sandbox/ratelimit", app.sandbox.base_url());
    let response = app
        .http
        .put(url)
        .json(&json!({"client_id": "pool-b", "requests_per_second": 1, "burst": 1}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let before = per_client(&app.sandbox_stats().await);

    let started = Instant::now();
    let jobs = publish_status_changes(&app, WORKITEMS).await;
    all_applied(&mut app, &jobs).await;
    let took = started.elapsed();

    let calls = since(&per_client(&app.sandbox_stats().await), &before);
    let total: u64 = calls
        .values()
        .map(|(requests, throttled)| requests - throttled)
        .sum();
    eprintln!("pool-b limited to 1/s: {total} calls in {took:?}; per client (requests, 429s) {calls:?}");
    let (b_requests, b_throttled) = calls["pool-b"];
    assert!(b_throttled >= 1, "pool-b met its limit: {calls:?}");
    // After each 429, pool-b waits out its Retry-After (1 s) while the others carry the calls:
    // about one call and one 429 a second of the run reach it.
    let secs = took.as_secs_f64().ceil() as u64;
    assert!(b_throttled <= 2 * secs + 3, "{calls:?} in {took:?}");
    assert!(b_requests - b_throttled <= secs + 3, "{calls:?} in {took:?}");
    for id in ["pool-a", "pool-c"] {
        assert_eq!(calls[id].1, 0, "{id} was never throttled: {calls:?}");
        assert!(calls[id].0 * 10 >= total * 4, "{id} carried its share: {calls:?}");
    }
    // ~120 calls at 2 × 20/s: a few seconds. Calls left waiting on pool-b would need a third of
    // them at 1/s: 40 s.
    assert!(took < Duration::from_secs(7), "took {took:?}");

    // Readiness still reports the total, and now each client's.
    let ready = readyz(&app).await;
    assert_eq!(ready["genesys_throttled"], json!(b_throttled));
    assert_eq!(ready["genesys_throttled_by_client"]["pool-b"], json!(b_throttled));
    assert_eq!(ready["genesys_throttled_by_client"]["pool-a"], 0);
    // Metrics per client, by id (the process's recorder is shared by the tests running in it:
    // series, not values, except this test's own 429s).
    let url = format!("http://{}/metrics", app.config.admin_addr);
    let metrics = app.http.get(url).send().await.unwrap().text().await.unwrap();
    for series in [
        r#"genesys_worker_genesys_throttled_total{client="pool-b",limit="client.credentials.token.rate.per.minute",family="taskmanagement"}"#,
        r#"genesys_worker_rate_limit_configured_per_second{client="pool-a"}"#,
        r#"genesys_worker_rate_limit_effective_per_second{client="pool-c"}"#,
        r#"genesys_worker_rate_limit_wait_seconds_count{client="pool-b",lane="single"}"#,
        r#"genesys_worker_genesys_requests_total{client="pool-a",route="PATCH /api/v2/taskmanagement/workitems/{id}",status="200"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }
    assert!(!metrics.contains("pool-secret"));
    app.stop().await;
}

fn ivr(prompt: &str) -> Value {
    json!({"name": "Main IVR", "type": "inboundcall", "start": "start", "nodes": {
        "start": {"type": "start", "transitions": [{"label": "next", "target": "menu"}]},
        "menu": {"type": "menu", "media_id": prompt, "conditions": [],
                 "transitions": [{"label": "default", "target": "queue"}]},
        "queue": {"type": "transfer", "queue_id": "q-main", "transitions": []}
    }})
}

#[tokio::test]
async fn a_flow_deploy_makes_all_its_calls_as_one_client_of_the_pool() {
    const FLOWS: usize = 6;
    let setting = pool_setting();
    let overrides = pool_overrides(&setting, &[("FLOW_POLL_MS", "20")]);
    let mut app = spawn_app_with(sandbox(1, FLOWS, None), &overrides).await;
    // A flow left locked by a client of the pool (say, before a change of the pool): deployed
    // as that client, not refused as "locked by another client".
    let pinned_elsewhere = flow_id(0);
    let lock = format!("{}/sandbox/flows/{pinned_elsewhere}/lock", app.sandbox.base_url());
    let response = app
        .http
        .post(lock)
        .json(&json!({"client_id": "pool-c"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());

    // Two deploys of each seeded flow (one after the other: the entity lock), and one created by
    // name.
    let mut jobs = HashSet::new();
    for round in 0..2 {
        for n in 0..FLOWS {
            let deploy = job(
                "flow.deploy",
                json!({"flow_id": flow_id(n), "flow": ivr(&format!("prompt-{round}"))}),
            );
            jobs.insert(deploy["job_id"].as_str().unwrap().parse::<Uuid>().unwrap());
            app.publish(&deploy).await;
        }
    }
    let create = job(
        "flow.deploy",
        json!({"create": {"name": "Pool IVR", "type": "inboundcall"}, "flow": ivr("prompt-new")}),
    );
    jobs.insert(create["job_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    app.publish(&create).await;
    all_applied(&mut app, &jobs).await;

    // The sandbox's locks are per client: a call as another client of the pool would have met
    // 409 "locked by another client". Every change to a flow was made as one client.
    let stats = app.sandbox_stats().await;
    let conflicts: u64 = stats["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["route"].as_str().unwrap_or_default().contains("/api/v2/flows") && r["status"] == 409)
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(conflicts, 0);
    // Per flow, the clients its changes were made as, in order.
    let mut changed_as: HashMap<String, Vec<String>> = HashMap::new();
    for mutation in stats["mutations"].as_array().unwrap() {
        changed_as
            .entry(mutation["entity"].as_str().unwrap().to_string())
            .or_default()
            .push(mutation["client_id"].as_str().unwrap().to_string());
    }
    assert_eq!(changed_as.len(), FLOWS + 1, "{changed_as:?}");
    let runs = |clients: &Vec<String>| {
        let mut runs = clients.clone();
        runs.dedup();
        runs
    };
    eprintln!(
        "flows changed as: {:?}",
        changed_as.iter().map(|(f, c)| (f, runs(c))).collect::<Vec<_>>()
    );
    // The locked flow: its first deploy as the lock's holder; the second as the client its
    // entity is pinned to (which may be the same).
    let locked = runs(&changed_as.remove(&format!("flow:{pinned_elsewhere}")).unwrap());
    assert_eq!(locked[0], "pool-c", "{locked:?}");
    assert!(locked.len() <= 2, "{locked:?}");
    // Every other flow, both deploys (and the create): one client.
    for (flow, clients) in &changed_as {
        assert_eq!(runs(clients).len(), 1, "{flow} was changed as {clients:?}");
    }
    // Flows are spread over the pool, not all on its first client.
    let used: HashSet<&String> = changed_as.values().flatten().collect();
    assert!(used.len() >= 2, "{changed_as:?}");
    app.stop().await;
}

#[tokio::test]
async fn bulk_presence_calls_take_their_budget_and_token_from_the_pool() {
    let setting = pool_setting();
    let overrides = pool_overrides(
        &setting,
        &[
            // Two calls a second per client, one at a time: the bulk calls spread over the pool.
            ("GENESYS_RATE_LIMIT_RPS", "2"),
            ("GENESYS_RATE_LIMIT_BURST", "1"),
            ("BULK_MAX", "5"),
            ("WORKER_CONCURRENCY", "30"),
            ("WORKER_PREFETCH", "30"),
        ],
    );
    let limit = RateLimit {
        requests_per_second: 2,
        burst: 2,
    };
    let mut app = spawn_app_with(sandbox(1, 0, Some(limit)), &overrides).await;
    let jobs = app.publish_agent_jobs(30, "Available").await;
    all_applied(&mut app, &jobs).await;
    let stats = app.sandbox_stats().await;
    let bulk = crate::helpers::requests_in(&stats, "PUT /api/v2/users/presences/bulk", 200);
    let calls = per_client(&stats);
    eprintln!("{bulk} bulk calls; per client {calls:?}");
    assert!(bulk >= 3, "{bulk} bulk calls");
    assert_eq!(stats["throttled"], 0, "{calls:?}");
    // Every client made calls, each with its own token: none was refused (401) or throttled.
    for (id, (requests, throttled)) in &calls {
        assert!(*requests >= 1 && *throttled == 0, "{id}: {calls:?}");
    }
    let unauthorized: u64 = stats["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 401)
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(unauthorized, 0);
    app.stop().await;
}

#[tokio::test]
async fn no_secret_of_the_pool_reaches_the_logs() {
    // A malformed pool: one line naming the variable and the entry, not its text.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_genesys-worker"))
        .arg("run")
        .env_remove("GENESYS_CLIENT_ID")
        .env_remove("GENESYS_CLIENT_SECRET")
        .env("GENESYS_CLIENTS", "pool-a:pool-secret-a,pool-secret-b")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("GENESYS_CLIENTS") && stderr.contains("entry 2"),
        "{stderr}"
    );
    assert!(!stderr.contains("pool-secret"), "{stderr}");

    // A worker process calling through the pool, logging at debug.
    let setting = pool_setting();
    let overrides = pool_overrides(&setting, &[("RUST_LOG", "debug")]);
    let mut app = spawn_app_without_worker(sandbox(3, 0, None), &overrides).await;
    let mut worker = app.start_worker_process();
    let mut jobs = publish_status_changes(&app, 3).await;
    for n in 0..3 {
        let mut presence =
            crate::helpers::agent_job(genesys_sandbox::user_id(n), json!({"presence": "Break"}));
        presence["payload"]["routing_status"] = json!("OFF_QUEUE");
        jobs.insert(presence["job_id"].as_str().unwrap().parse().unwrap());
        app.publish(&presence).await;
    }
    all_applied(&mut app, &jobs).await;
    worker.terminate();
    assert!(worker.wait(Duration::from_secs(10)).await.is_some());
    let log = worker.log_text();
    assert!(log.contains("pool of OAuth clients"), "{log}");
    for (_, secret) in POOL {
        assert!(!log.contains(secret), "{secret} is in the log");
    }
    // Nor the tokens the sandbox issued.
    assert!(!log.contains("sbx-"), "a token is in the log");
    app.stop().await;
}

#[tokio::test]
async fn a_client_whose_credentials_are_refused_is_passed_over() {
    const WORKITEMS: usize = 20;
    // pool-b's secret is wrong (revoked, mistyped): the login host refuses it.
    let setting = "pool-a:pool-secret-a,pool-b:not-its-secret,pool-c:pool-secret-c".to_string();
    let overrides = pool_overrides(&setting, &[("GENESYS_LIMITS_REFRESH_SECS", "0")]);
    let mut app = spawn_app_with(sandbox(WORKITEMS, 0, None), &overrides).await;
    let jobs = publish_status_changes(&app, WORKITEMS).await;
    all_applied(&mut app, &jobs).await;
    let stats = app.sandbox_stats().await;
    let calls = per_client(&stats);
    assert_eq!(calls["pool-b"].0, 0, "{calls:?}");
    assert!(calls["pool-a"].0 >= 10 && calls["pool-c"].0 >= 10, "{calls:?}");
    // Asked once (twice at most, in a race), then passed over for a while: not once per call.
    let refused = crate::helpers::requests_in(&stats, "POST /oauth/token", 401);
    assert!((1..=2).contains(&refused), "{refused} refused grants");
    app.stop().await;
}
