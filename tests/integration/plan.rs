//! `genesys-worker plan`: the verdicts of a mixed file against the sandbox's live state, what a
//! plan costs in Genesys requests, and a plan beside a draining worker sharing its budget.

use std::collections::HashSet;
use std::time::Instant;

use genesys_sandbox::{flow_id, user_id, workitem_id, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_job, job, spawn_app_with, spawn_app_without_worker, TestApp};

/// A file of `lines` in a directory of its own.
fn write_jobs(lines: &[String]) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("plan-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jobs.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();
    (dir, file)
}

/// What `plan --json FILE` printed: one object per job, then the summary; and the exit code.
async fn plan_json(app: &TestApp, file: &std::path::Path) -> (i32, Vec<Value>, Value, String) {
    let (code, stdout, stderr) = app.cli(&["plan", "--json", file.to_str().unwrap()]).await;
    let mut objects: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let summary = objects
        .pop()
        .and_then(|last| last.get("summary").cloned())
        .unwrap_or_else(|| panic!("no summary last: {stdout}{stderr}"));
    (code, objects, summary, stderr)
}

/// The API requests the sandbox answered (not the OAuth token's; its control routes are not
/// counted at all), and the 429s among them.
fn api_requests(stats: &Value) -> (u64, u64) {
    let mut counts = (0, 0);
    for request in stats["requests"].as_array().unwrap() {
        if !request["route"].as_str().unwrap_or_default().contains("/api/v2/") {
            continue;
        }
        let count = request["count"].as_u64().unwrap();
        counts.0 += count;
        if request["status"] == 429 {
            counts.1 += count;
        }
    }
    counts
}

/// The seeded flows' published configuration: deploying it changes nothing.
fn seeded_flow(name: &str) -> Value {
    json!({"name": name, "type": "inboundcall", "start": "start", "nodes": {
        "start": {"type": "start", "transitions": [{"label": "next", "target": "queue"}]},
        "queue": {"type": "transfer", "transitions": []}}})
}

fn changed_flow(name: &str) -> Value {
    json!({"name": name, "type": "inboundcall", "start": "start", "nodes": {
        "start": {"type": "start", "transitions": [{"label": "next", "target": "menu"}]},
        "menu": {"type": "menu", "transitions": [{"label": "default", "target": "queue"}]},
        "queue": {"type": "transfer", "transitions": []}}})
}

#[tokio::test]
async fn a_mixed_file_gets_a_verdict_per_job_from_the_live_state_and_nothing_is_changed() {
    let app = spawn_app_without_worker(
        SandboxConfig {
            users: 20,
            workitems: 3,
            flows: 2,
            ..SandboxConfig::default()
        },
        &[],
    )
    .await;
    app.set_user_state(user_id(0), json!({"out_of_office": true}))
        .await;
    for n in [1, 2, 5, 7] {
        app.set_user_state(user_id(n), json!({"routing_status": "INTERACTING"}))
            .await;
    }
    let base = app.sandbox.base_url();
    let locked = app
        .http
        .post(format!("{base}/sandbox/flows/{}/lock", flow_id(1)))
        .json(&json!({"user_id": user_id(19)}))
        .send()
        .await
        .unwrap();
    assert!(locked.status().is_success());
    let consumers = app
        .http
        .put(format!("{base}/sandbox/flows/{}/consumers", flow_id(1)))
        .json(&json!({"consumers": [{"id": Uuid::new_v4(), "name": "Billing queue", "type": "QUEUE"}]}))
        .send()
        .await
        .unwrap();
    assert!(consumers.status().is_success());

    let batch = job(
        "batch",
        json!({"presence_policy": {"if_interacting": "skip"}, "jobs": [
            agent_job(user_id(6), json!({"presence": "Available"})),
            agent_job(user_id(7), json!({"presence": "Available"})),
        ]}),
    );
    let lines: Vec<(&str, Value)> = vec![
        ("no-op", agent_job(user_id(3), json!({"presence": "Offline"}))),
        ("change", agent_job(user_id(4), json!({"presence": "On Queue"}))),
        (
            "blocked:out_of_office",
            agent_job(user_id(0), json!({"presence": "On Queue"})),
        ),
        (
            "blocked:agent_interacting",
            agent_job(user_id(1), json!({"presence": "Break", "if_interacting": "skip"})),
        ),
        (
            "deferred:agent_interacting",
            agent_job(
                user_id(2),
                json!({"presence": "Break", "if_interacting": "defer"}),
            ),
        ),
        ("change", agent_job(user_id(5), json!({"presence": "Break"}))),
        (
            "blocked:unknown_user",
            agent_job(Uuid::new_v4(), json!({"presence": "Break"})),
        ),
        (
            "blocked:unknown_presence",
            agent_job(user_id(8), json!({"presence": "Teleporting"})),
        ),
        // Judged after line 2 would have set On Queue.
        (
            "change",
            agent_job(
                user_id(4),
                json!({"presence": "Break", "expected_current": "On Queue"}),
            ),
        ),
        ("batch", batch),
        (
            "change",
            job(
                "interaction.status",
                json!({"workitem_id": workitem_id(0), "status": "In Progress"}),
            ),
        ),
        (
            "no-op",
            job(
                "interaction.status",
                json!({"workitem_id": workitem_id(1), "status": "Open"}),
            ),
        ),
        (
            "blocked:unknown_workitem",
            job(
                "interaction.status",
                json!({"workitem_id": Uuid::new_v4(), "status": "Open"}),
            ),
        ),
        (
            "change",
            job(
                "interaction.create",
                json!({"type_id": genesys_sandbox::worktype_id(), "name": "Call back"}),
            ),
        ),
        (
            "no-op",
            job(
                "flow.deploy",
                json!({"flow_id": flow_id(0), "flow": seeded_flow("Main IVR")}),
            ),
        ),
        (
            "blocked:flow_locked",
            job(
                "flow.deploy",
                json!({"flow_id": flow_id(1), "flow": changed_flow("Billing IVR")}),
            ),
        ),
        (
            "deferred:flow_locked",
            job(
                "flow.deploy",
                json!({"flow_id": flow_id(1), "flow": changed_flow("Billing IVR"),
                    "on_locked": "wait", "lock_wait_secs": 60}),
            ),
        ),
    ];
    // What the worker's records and ordering would make of jobs of the file.
    let mut again = lines[1].1.clone();
    again["job_id"] = json!(Uuid::new_v4());
    let keyed = |presence: &str| {
        let mut keyed = agent_job(user_id(9), json!({"presence": presence}));
        keyed["idempotency_key"] = json!("plan-test-key");
        keyed
    };
    let sequenced = |sequence: u64, presence: &str| {
        let mut sequenced = agent_job(user_id(10), json!({"presence": presence}));
        sequenced["sequence"] = json!(sequence);
        sequenced
    };
    let mut late = agent_job(user_id(11), json!({"presence": "Break"}));
    late["not_after"] = json!("2020-01-01T00:00:00Z");
    let mut lines = lines;
    lines.extend([
        ("no-op:duplicate", again),
        ("change", keyed("Break")),
        ("blocked:idempotency_key_reused", keyed("Meal")),
        ("change", sequenced(5, "Break")),
        ("blocked:superseded", sequenced(3, "Meal")),
        ("blocked:expired", late),
    ]);
    let mut raw: Vec<String> = lines.iter().map(|(_, job)| job.to_string()).collect();
    raw.push("{oops".into());
    let (dir, file) = write_jobs(&raw);

    let (code, planned, summary, stderr) = plan_json(&app, &file).await;
    assert_eq!(code, 1, "something is blocked: {stderr}");
    let verdict = |p: &Value| match p["code"].as_str() {
        Some(code) => format!("{}:{code}", p["verdict"].as_str().unwrap()),
        None => p["verdict"].as_str().unwrap().to_string(),
    };
    let mut expected: Vec<(usize, Option<u64>, String)> = Vec::new();
    for (n, (wanted, _)) in lines.iter().enumerate() {
        if *wanted == "batch" {
            // The batch's policy (skip) reaches its children; the one on a call is blocked.
            expected.push((n + 1, Some(0), "change".into()));
            expected.push((n + 1, Some(1), "blocked:agent_interacting".into()));
        } else {
            expected.push((n + 1, None, wanted.to_string()));
        }
    }
    expected.push((lines.len() + 1, None, "blocked:malformed_json".into()));
    let got: Vec<(usize, Option<u64>, String)> = planned
        .iter()
        .map(|p| {
            (
                p["line"].as_u64().unwrap() as usize,
                p["child"].as_u64(),
                verdict(p),
            )
        })
        .collect();
    assert_eq!(got, expected, "{planned:#?}");

    // What each says: from → to, the holder of a lock, the blast radius, the job and entity.
    let on = |line: usize| planned.iter().find(|p| p["line"] == line).unwrap();
    assert_eq!(
        (on(2)["from"].as_str(), on(2)["to"].as_str()),
        (Some("Offline"), Some("On Queue"))
    );
    assert_eq!(on(9)["from"], "On Queue");
    assert!(
        on(6)["note"].as_str().unwrap().contains("INTERACTING"),
        "changed anyway: {}",
        on(6)
    );
    let out_of_office = on(3)["reason"].as_str().unwrap();
    assert!(
        out_of_office.contains(&user_id(0).to_string())
            && out_of_office.contains(lines[2].1["job_id"].as_str().unwrap()),
        "{out_of_office}"
    );
    assert_eq!(
        (on(11)["from"].as_str(), on(11)["to"].as_str()),
        (Some("Open"), Some("In Progress"))
    );
    let holder = on(16)["reason"].as_str().unwrap();
    assert!(
        holder.contains(&user_id(19).to_string()),
        "names the holder: {holder}"
    );
    assert_eq!(on(17)["consumers"][0]["name"], "Billing queue");
    assert!(on(17)["reason"].as_str().unwrap().contains("60s"), "{}", on(17));

    let count = |verdict: &str| {
        expected
            .iter()
            .filter(|(_, _, v)| v.split(':').next() == Some(verdict))
            .count()
    };
    let counts = [
        count("change"),
        count("no-op"),
        count("deferred"),
        count("blocked"),
    ];
    assert_eq!(summary["jobs"], expected.len());
    let summarised =
        ["change", "no-op", "deferred", "blocked"].map(|v| summary[v].as_u64().unwrap() as usize);
    assert_eq!(summarised, counts, "{summary}");
    let stats = app.sandbox_stats().await;
    assert!(
        stats["mutations"].as_array().unwrap().is_empty(),
        "a plan writes nothing"
    );
    let (requests, throttled) = api_requests(&stats);
    assert_eq!(
        summary["genesys_requests"], requests,
        "the plan counts what it cost"
    );
    assert_eq!(throttled, 0);

    // The text form: one line per job, then the counts.
    let (code, stdout, _) = app.cli(&["plan", file.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    let text: Vec<&str> = stdout.lines().collect();
    assert_eq!(text.len(), expected.len() + 1, "{stdout}");
    assert!(
        text[1].starts_with("line 2 ")
            && text[1].contains("change")
            && text[1].contains("Offline → On Queue"),
        "{}",
        text[1]
    );
    assert!(
        text[10].starts_with("line 10#1") && text[10].contains("blocked"),
        "{}",
        text[10]
    );
    assert!(
        text.last().unwrap().starts_with(&format!(
            "plan: {} job(s): 8 change, 4 no-op, 2 deferred, 11 blocked; ",
            expected.len()
        )),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).ok();
    app.stop().await;
}

/// Plans `agents` agents (every one a change) and returns the plan's own count of requests and
/// the sandbox's.
async fn plan_agents(agents: usize) -> (u64, u64) {
    let app = spawn_app_without_worker(
        SandboxConfig {
            users: agents,
            workitems: 0,
            flows: 0,
            ..SandboxConfig::default()
        },
        &[],
    )
    .await;
    let lines: Vec<String> = (0..agents)
        .map(|n| agent_job(user_id(n), json!({"presence": "On Queue"})).to_string())
        .collect();
    let (dir, file) = write_jobs(&lines);
    let started = Instant::now();
    let (code, planned, summary, stderr) = plan_json(&app, &file).await;
    assert_eq!(code, 0, "nothing blocked: {stderr}");
    assert_eq!(planned.len(), agents);
    assert_eq!(summary["change"], agents, "{summary}");
    let (requests, throttled) = api_requests(&app.sandbox_stats().await);
    assert_eq!(throttled, 0);
    eprintln!(
        "plan of {agents} agents: {requests} Genesys requests (the plan counted {}), {:.1} s",
        summary["genesys_requests"],
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).ok();
    app.stop().await;
    (summary["genesys_requests"].as_u64().unwrap(), requests)
}

#[tokio::test]
async fn a_thousand_agents_cost_a_request_per_hundred() {
    let (counted, requests) = plan_agents(1_000).await;
    assert_eq!(counted, requests);
    // 10 reads of 100 agents, the presence definitions, the org's limits (the README's figure).
    assert_eq!(requests, 12, "requests for 1,000 agents");
}

/// The README's figure: `cargo test --test integration plan::ten_thousand -- --nocapture`.
#[tokio::test]
async fn ten_thousand_agents_cost_about_a_hundred_requests() {
    let (counted, requests) = plan_agents(10_000).await;
    assert_eq!(counted, requests);
    // 100 reads of 100 agents, the presence definitions, the org's limits.
    assert_eq!(requests, 102, "requests for 10,000 agents");
}

#[tokio::test]
async fn a_plan_beside_a_draining_worker_spends_the_same_budget_and_draws_no_429() {
    const AGENTS: usize = 150;
    const WORKITEMS: usize = 60;
    let mut app = spawn_app_with(
        SandboxConfig {
            users: AGENTS,
            workitems: WORKITEMS,
            flows: 0,
            ..SandboxConfig::default()
        },
        &[
            ("GENESYS_RATE_LIMIT_RPS", "25"),
            // Below the sandbox's burst: a little jitter on the wire draws no 429.
            ("GENESYS_RATE_LIMIT_BURST", "5"),
            ("BULK_PRESENCE", "off"),
            ("WORKER_CONCURRENCY", "16"),
            ("WORKER_PREFETCH", "32"),
        ],
    )
    .await;
    let limit = app
        .http
        .put(format!("{}/sandbox/ratelimit", app.sandbox.base_url()))
        .json(&json!({"requests_per_second": 25, "burst": 10}))
        .send()
        .await
        .unwrap();
    assert!(limit.status().is_success());
    // The plan reads every workitem on its own: a plan of some weight, beside the worker's
    // presence changes.
    let lines: Vec<String> = (0..WORKITEMS)
        .map(|n| {
            job(
                "interaction.status",
                json!({"workitem_id": workitem_id(n), "status": "In Progress"}),
            )
            .to_string()
        })
        .collect();
    let (dir, file) = write_jobs(&lines);

    let started = Instant::now();
    let jobs: HashSet<Uuid> = app.publish_agent_jobs(AGENTS, "Available").await;
    let (code, planned, summary, stderr) = plan_json(&app, &file).await;
    // The drain was still under way when the plan was done: they shared the budget.
    let written_when_planned = app.mutations().await.len();
    assert!(
        written_when_planned < jobs.len(),
        "the worker had written all {written_when_planned} changes before the plan finished"
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(planned.iter().all(|p| p["verdict"] == "change"), "{planned:#?}");
    assert_eq!(summary["throttled"], 0, "{summary}");

    let mut done = HashSet::new();
    while done.len() < jobs.len() {
        for event in app.audit_events(1).await {
            assert_eq!(event.event.outcome, Outcome::Applied, "{:?}", event.event.error);
            done.insert(event.event.job_id);
        }
    }
    let drained_in = started.elapsed();
    let stats = app.sandbox_stats().await;
    assert_eq!(stats["throttled"], 0, "{}", stats["throttled_by"]);
    // Together at the one budget's pace (its burst, and the worker's start-up reads, aside).
    let (requests, _) = api_requests(&stats);
    let allowed = 25.0 * drained_in.as_secs_f64() + 10.0;
    assert!(
        requests as f64 <= allowed,
        "{requests} requests in {drained_in:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
    app.stop().await;
}

#[tokio::test]
async fn unreadable_input_and_unreachable_services_have_their_exit_codes() {
    let app = spawn_app_without_worker(
        SandboxConfig {
            users: 2,
            ..SandboxConfig::default()
        },
        &[],
    )
    .await;
    let (code, _, stderr) = app.cli(&["plan", "/nonexistent/jobs.ndjson"]).await;
    assert_eq!(code, 2, "{stderr}");
    let (dir, file) = write_jobs(&[agent_job(user_id(0), json!({"presence": "Break"})).to_string()]);
    let closed = format!("http://127.0.0.1:{}", crate::helpers::free_port());
    for (var, value) in [
        ("GENESYS_API_BASE", closed.clone()),
        (
            "REDIS_URL",
            format!("redis://127.0.0.1:{}/", crate::helpers::free_port()),
        ),
    ] {
        let output = tokio::process::Command::new(crate::helpers::worker_bin())
            .args(["plan", file.to_str().unwrap()])
            .envs(&app.env)
            .env(var, &value)
            .env(
                "GENESYS_LOGIN_BASE",
                if var == "GENESYS_API_BASE" {
                    closed.clone()
                } else {
                    app.env["GENESYS_LOGIN_BASE"].clone()
                },
            )
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{var}: {stderr}");
        assert!(stderr.contains("plan: "), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
    app.stop().await;
}
