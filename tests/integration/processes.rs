//! The worker as a process: SIGTERM under load, and SIGKILL in the middle of a run. Nothing is
//! lost, nothing is applied twice.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use genesys_sandbox::{user_id, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_job, spawn_app_without_worker, Arrived, TestApp, PER_AGENT_CALLS};

const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";

/// Collects audit events until every job in `jobs` has an outcome (or the deadline passes).
async fn outcomes_for(
    app: &mut TestApp,
    jobs: &HashSet<Uuid>,
    seen: &mut HashMap<Uuid, Vec<Outcome>>,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    while jobs.iter().any(|j| !seen.contains_key(j)) {
        assert!(
            Instant::now() < deadline,
            "{} job(s) never got an outcome",
            jobs.iter().filter(|j| !seen.contains_key(j)).count()
        );
        let batch: Vec<Arrived<genesys_worker::events::AuditEvent>> = app.audit_events(1).await;
        for event in batch {
            seen.entry(event.event.job_id)
                .or_default()
                .push(event.event.outcome);
        }
    }
}

/// Waits until at least `n` audit events arrived.
async fn wait_for_events(app: &mut TestApp, n: usize, seen: &mut HashMap<Uuid, Vec<Outcome>>) {
    while seen.values().map(Vec::len).sum::<usize>() < n {
        for event in app.audit_events(1).await {
            seen.entry(event.event.job_id)
                .or_default()
                .push(event.event.outcome);
        }
    }
}

fn mutations_per_entity(mutations: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for m in mutations {
        *counts
            .entry(m["entity"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn sigterm_under_load_finishes_in_flight_jobs_exits_0_and_loses_nothing() {
    let sandbox = SandboxConfig {
        users: 60,
        ..SandboxConfig::default()
    };
    let mut app = spawn_app_without_worker(sandbox, &[("SHUTDOWN_TIMEOUT_SECS", "5")]).await;
    // Slow Genesys, so jobs are in flight when the signal arrives.
    app.set_fault(json!({"route": PATCH_PRESENCE, "latency_ms": 150}))
        .await;
    let jobs = app.publish_agent_jobs(60, "On Queue").await;
    let mut seen = HashMap::new();
    let mut first = app.start_worker_process();
    wait_for_events(&mut app, 10, &mut seen).await;
    let signalled = Instant::now();
    first.terminate();
    let status = first
        .wait(Duration::from_secs(8))
        .await
        .unwrap_or_else(|| panic!("did not exit:\n{}", first.log_text()));
    assert!(status.success(), "exit {status:?}:\n{}", first.log_text());
    assert!(
        signalled.elapsed() < Duration::from_secs(7),
        "took {:?}",
        signalled.elapsed()
    );
    assert!(
        first.log_text().contains("Worker stopped."),
        "{}",
        first.log_text()
    );

    let mut second = app.start_worker_process();
    outcomes_for(&mut app, &jobs, &mut seen, Duration::from_secs(60)).await;
    for job in &jobs {
        assert!(seen[job].contains(&Outcome::Applied), "{job}: {:?}", seen[job]);
    }
    let counts = mutations_per_entity(&app.mutations().await);
    assert_eq!(counts.len(), 60);
    assert!(
        counts.values().all(|c| *c == 1),
        "a change was applied twice: {counts:?}"
    );
    second.terminate();
    assert!(second
        .wait(Duration::from_secs(8))
        .await
        .is_some_and(|s| s.success()));
    app.stop().await;
}

#[tokio::test]
async fn sigkill_in_the_middle_of_2000_jobs_loses_none_and_applies_none_twice() {
    let sandbox = SandboxConfig {
        users: 2000,
        ..SandboxConfig::default()
    };
    let overrides = [
        ("LEASE_MS", "1000"),
        ("WORKER_CONCURRENCY", "32"),
        ("WORKER_PREFETCH", "64"),
        ("GENESYS_RATE_LIMIT_RPS", "5000"),
        ("GENESYS_RATE_LIMIT_BURST", "500"),
    ];
    let mut app = spawn_app_without_worker(sandbox, &overrides).await;
    let jobs = app.publish_agent_jobs(2000, "Available").await;
    let mut seen = HashMap::new();
    let mut first = app.start_worker_process();
    wait_for_events(&mut app, 300, &mut seen).await;
    first.child.kill().unwrap();
    first.wait(Duration::from_secs(5)).await.expect("killed");

    let mut second = app.start_worker_process();
    outcomes_for(&mut app, &jobs, &mut seen, Duration::from_secs(180)).await;
    // Every job was applied (a copy acked late may also report `duplicate`), none failed.
    for job in &jobs {
        let outcomes = &seen[job];
        assert!(outcomes.contains(&Outcome::Applied), "{job}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Applied | Outcome::Duplicate)),
            "{job}: {outcomes:?}"
        );
    }
    // No idempotency key changed Genesys twice: one job per agent, one change per agent.
    let counts = mutations_per_entity(&app.mutations().await);
    assert_eq!(counts.len(), 2000);
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "applied twice: {twice:?}");
    second.terminate();
    assert!(second.wait(Duration::from_secs(10)).await.is_some());
    app.stop().await;
}

fn parse_instant(raw: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test]
async fn two_worker_processes_share_one_budget_and_use_it_without_tripping_the_limit() {
    use genesys_sandbox::RateLimit;
    const RATE: u32 = 20;
    const JOBS: usize = 200;
    let sandbox = SandboxConfig {
        users: JOBS,
        rate_limit: Some(RateLimit {
            requests_per_second: RATE,
            burst: 5,
        }),
        ..SandboxConfig::default()
    };
    let rate = RATE.to_string();
    let overrides = [
        ("GENESYS_RATE_LIMIT_RPS", rate.as_str()),
        ("GENESYS_RATE_LIMIT_BURST", "1"),
        ("GENESYS_RATE_LIMIT_SCOPE", "fleet"),
        ("WORKER_CONCURRENCY", "16"),
        ("WORKER_PREFETCH", "32"),
        PER_AGENT_CALLS[0],
    ];
    let mut app = spawn_app_without_worker(sandbox, &overrides).await;
    // Write-only jobs (no policy reads first): the budget's use is measured on the writes.
    let jobs = app
        .publish_agent_jobs_with(JOBS, json!({"presence": "Busy", "respect_out_of_office": false}))
        .await;
    let mut a = app.start_worker_process();
    let mut b = app.start_worker_process();
    let mut seen = HashMap::new();
    outcomes_for(&mut app, &jobs, &mut seen, Duration::from_secs(90)).await;
    assert!(seen.values().all(|o| o == &[Outcome::Applied]), "{seen:?}");

    let stats = app.sandbox_stats().await;
    let api_requests: u64 = stats["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["route"].as_str().unwrap().contains(" /api/"))
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    let throttled = stats["throttled"].as_u64().unwrap();
    assert!(
        throttled * 100 <= api_requests,
        "{throttled} of {api_requests} requests throttled"
    );
    let mut times: Vec<time::OffsetDateTime> = stats["mutations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| parse_instant(m["at"].as_str().unwrap()))
        .collect();
    times.sort();
    let span = (*times.last().unwrap() - times[0]).as_seconds_f64();
    let achieved = (times.len() - 1) as f64 / span;
    eprintln!("budget fidelity: {achieved:.2} of {RATE} requests/s, {throttled} of {api_requests} requests throttled");
    assert!(
        achieved >= 0.9 * f64::from(RATE),
        "achieved {achieved:.1} requests/s of {RATE}"
    );
    assert!(
        achieved <= 1.1 * f64::from(RATE),
        "achieved {achieved:.1} requests/s of {RATE}: over budget"
    );
    // Both replicas worked.
    for worker in [&a, &b] {
        assert!(
            worker.log_text().contains("Job finished."),
            "a replica applied nothing:\n{}",
            worker.log_text()
        );
    }
    a.terminate();
    b.terminate();
    assert!(
        a.wait(Duration::from_secs(10)).await.is_some() && b.wait(Duration::from_secs(10)).await.is_some()
    );
    app.stop().await;
}

#[tokio::test]
async fn while_redis_is_down_nothing_is_applied_and_the_worker_resumes_by_itself() {
    use crate::helpers::PrivateRedis;
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let sandbox = SandboxConfig {
        users: 80,
        ..SandboxConfig::default()
    };
    // In-flight jobs keep their leases and locks across the restart: a short lease lets their
    // redelivered copies take over quickly.
    let overrides = [
        ("REDIS_URL", url.as_str()),
        ("WORKER_CONCURRENCY", "4"),
        ("WORKER_PREFETCH", "8"),
        ("LEASE_MS", "2000"),
    ];
    let mut app = spawn_app_without_worker(sandbox, &overrides).await;
    app.set_fault(json!({"route": PATCH_PRESENCE, "latency_ms": 80}))
        .await;
    let jobs = app.publish_agent_jobs(80, "Meal").await;
    let worker = app.start_worker_process();
    let mut seen = HashMap::new();
    wait_for_events(&mut app, 10, &mut seen).await;

    // A probe gets a prompt answer throughout the outage, not a hung connection.
    let readyz = format!("http://{}/readyz", worker.admin_addr);
    let probing = {
        let readyz = readyz.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let mut unanswered = Vec::new();
            for probe in 0..25 {
                if let Err(err) = http.get(&readyz).send().await {
                    unanswered.push(format!("probe {probe}: {err}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            unanswered
        })
    };
    redis.kill();
    // Calls already on the wire may still land; after that, nothing while Redis is down.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = app.mutations().await.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !worker.log_text().contains("stopped consuming") {
        assert!(
            Instant::now() < deadline,
            "never stopped consuming:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = app
        .http
        .get(&readyz)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert_eq!(status, 503, "ready while Redis is down");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        app.mutations().await.len(),
        before,
        "a change was applied while Redis was down"
    );

    let unanswered = probing.await.unwrap();
    assert!(unanswered.is_empty(), "/readyz did not answer: {unanswered:?}");
    redis.restart().await;
    outcomes_for(&mut app, &jobs, &mut seen, Duration::from_secs(90)).await;
    for job in &jobs {
        assert!(seen[job].contains(&Outcome::Applied), "{job}: {:?}", seen[job]);
    }
    let counts = mutations_per_entity(&app.mutations().await);
    assert_eq!(counts.len(), 80);
    assert!(
        counts.values().all(|c| *c == 1),
        "a change was applied twice: {counts:?}"
    );
    assert_eq!(app.http.get(&readyz).send().await.unwrap().status(), 200);
    worker.terminate();
    // The log went to a file: plain text, no terminal colour codes.
    assert!(
        !worker.log_text().contains('\u{1b}'),
        "colour codes in a log file"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_rabbitmq_restart_mid_run_is_survived_and_nothing_is_lost_or_applied_twice() {
    use crate::helpers::{check_redis, random_name, start_worker_process, test_env, PrivateRabbit};
    use genesys_sandbox as sandbox;
    use genesys_worker::broker::{self, topology, Publisher};
    use genesys_worker::config::{Config, ServiceUrls};
    check_redis().await;
    let rabbit = PrivateRabbit::start().await;
    let sandbox = sandbox::spawn(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            users: 60,
            ..SandboxConfig::default()
        },
    )
    .await
    .unwrap();
    let url = rabbit.url();
    let env = test_env(
        &sandbox,
        &random_name(),
        &[
            ("AMQP_URL", url.as_str()),
            ("WORKER_CONCURRENCY", "4"),
            ("WORKER_PREFETCH", "8"),
            ("LEASE_MS", "2000"),
        ],
    );
    let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
    let http = reqwest::Client::new();
    let fault = json!({"route": PATCH_PRESENCE, "latency_ms": 100});
    http.post(format!("{}/sandbox/faults", sandbox.base_url()))
        .json(&fault)
        .send()
        .await
        .unwrap();

    // Every job is on the (durable) queue before the worker starts.
    let connection = broker::connect(&ServiceUrls::parse(&url).unwrap()).await.unwrap();
    topology::declare(&connection, &config.topology).await.unwrap();
    let publisher = Publisher::open(&connection).await.unwrap();
    for n in 0..60 {
        let job = agent_job(user_id(n), json!({"presence": "Training"}));
        let properties = lapin::BasicProperties::default().with_delivery_mode(2);
        publisher
            .publish(
                &config.topology.jobs_exchange,
                "agent.status",
                &serde_json::to_vec(&job).unwrap(),
                properties,
            )
            .await
            .unwrap();
    }
    let _ = connection.close(200, "published".into()).await;

    let mutations = || async {
        let stats: Value = http
            .get(format!("{}/sandbox/stats", sandbox.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["mutations"].as_array().cloned().unwrap_or_default()
    };
    let mut worker = start_worker_process(&env);
    let deadline = Instant::now() + Duration::from_secs(30);
    while mutations().await.len() < 10 {
        assert!(Instant::now() < deadline, "no progress:\n{}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rabbit.restart().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while mutations().await.len() < 60 {
        assert!(
            Instant::now() < deadline,
            "jobs were lost:\n{}",
            worker.log_text()
        );
        assert!(
            worker.child.try_wait().unwrap().is_none(),
            "the worker exited:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counts = mutations_per_entity(&mutations().await);
    assert_eq!(counts.len(), 60);
    assert!(
        counts.values().all(|c| *c == 1),
        "a change was applied twice: {counts:?}"
    );
    assert!(
        worker.log_text().contains("reconnecting"),
        "{}",
        worker.log_text()
    );
    worker.terminate();
    assert!(
        worker
            .wait(Duration::from_secs(10))
            .await
            .is_some_and(|s| s.success()),
        "{}",
        worker.log_text()
    );
}
