//! The Genesys budget against limits that are not the worker's own: an org-wide limit on one
//! route family that another integration spends, and a token limit below the configuration.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use genesys_sandbox::{flow_id, workitem_id, RateLimit, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{job, spawn_app_with, spawn_app_without_worker, PER_AGENT_CALLS};

/// Answers of the API routes in the sandbox's stats: (served, throttled), optionally only on
/// routes containing `route_part`.
fn answered(stats: &Value, route_part: Option<&str>) -> (u64, u64) {
    let mut counts = (0, 0);
    for request in stats["requests"].as_array().unwrap() {
        let route = request["route"].as_str().unwrap_or_default();
        if !route.contains("/api/v2/") || route_part.is_some_and(|part| !route.contains(part)) {
            continue;
        }
        let count = request["count"].as_u64().unwrap();
        if request["status"] == 429 {
            counts.1 += count;
        } else {
            counts.0 += count;
        }
    }
    counts
}

#[tokio::test]
async fn an_org_limit_spent_by_another_integration_stalls_presence_but_not_workitems_or_flows() {
    let sandbox = SandboxConfig {
        users: 20,
        workitems: 10,
        flows: 1,
        flow_operation_ms: 100,
        ..SandboxConfig::default()
    };
    let mut overrides = vec![
        ("GENESYS_RATE_LIMIT_RPS", "10"),
        ("GENESYS_RATE_LIMIT_BURST", "10"),
        ("WORKER_CONCURRENCY", "16"),
        ("WORKER_PREFETCH", "32"),
        ("FLOW_POLL_MS", "50"),
    ];
    overrides.extend_from_slice(PER_AGENT_CALLS);
    let mut app = spawn_app_with(sandbox, &overrides).await;
    // Another integration of the org spends the whole org-wide limit on /api/v2/users/*.
    app.set_behaviour(json!({"org_limit": {
        "family": "users", "requests_per_second": 2, "other_integration_rps": 2,
        "key": "org.users.rate.per.minute"
    }}))
    .await;
    // Fewer than the job slots: a stalled job holds its slot until it is parked for a retry.
    let stalled = app.publish_agent_jobs(8, "Available").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let mut wanted = HashSet::new();
    for n in 0..10 {
        let status = job(
            "interaction.status",
            json!({"workitem_id": workitem_id(n), "status": "In Progress"}),
        );
        wanted.insert(status["job_id"].as_str().unwrap().parse::<Uuid>().unwrap());
        app.publish(&status).await;
    }
    let deploy = job(
        "flow.deploy",
        json!({"flow_id": flow_id(0), "flow": {"name": "Main IVR", "type": "inboundcall", "start": "start", "nodes": {
            "start": {"type": "start", "transitions": [{"label": "next", "target": "queue"}]},
            "queue": {"type": "transfer", "transitions": []}}}}),
    );
    wanted.insert(deploy["job_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    app.publish(&deploy).await;

    // About 40 calls at 10/s: they keep their pace while every presence call is refused. (On a
    // worker where any 429 pauses the whole budget they crawl at a call or two a second.)
    let mut done = 0;
    while done < wanted.len() {
        for event in app.audit_events(1).await {
            if wanted.contains(&event.event.job_id) {
                assert_eq!(event.event.outcome, Outcome::Applied, "{:?}", event.event.error);
                done += 1;
            } else {
                assert!(stalled.contains(&event.event.job_id));
            }
        }
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(9),
        "workitems and the flow took {took:?}"
    );

    let stats = app.sandbox_stats().await;
    let (_, throttled_elsewhere) = answered(&stats, Some("/api/v2/taskmanagement/"));
    let (_, throttled_flows) = answered(&stats, Some("/api/v2/flows"));
    assert_eq!(throttled_elsewhere + throttled_flows, 0);
    let (_, throttled_users) = answered(&stats, Some("/api/v2/users"));
    assert!(throttled_users >= 1, "presence calls met the org limit");
    assert_eq!(
        stats["throttled_by"]["org.users.rate.per.minute"],
        throttled_users
    );
    // The presence jobs waited out the org limit's Retry-After, family by family: a handful of
    // calls a second, not a storm.
    let per_second = throttled_users as f64 / (took.as_secs_f64() + 0.5);
    assert!(per_second < 5.0, "{throttled_users} presence 429s in {took:?}");

    // The other integration stops: every presence change lands, once.
    app.set_behaviour(json!({})).await;
    let mut applied = HashSet::new();
    while applied.len() < stalled.len() {
        for event in app.audit_events(1).await {
            assert!(stalled.contains(&event.event.job_id));
            assert_eq!(event.event.outcome, Outcome::Applied, "{:?}", event.event.error);
            assert!(applied.insert(event.event.job_id), "applied twice");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn when_genesys_allows_less_than_configured_the_worker_paces_at_what_it_allows() {
    let sandbox = SandboxConfig {
        users: 80,
        rate_limit: Some(RateLimit {
            requests_per_second: 4,
            burst: 4,
        }),
        ..SandboxConfig::default()
    };
    let mut overrides = vec![
        ("GENESYS_RATE_LIMIT_RPS", "12"),
        ("GENESYS_RATE_LIMIT_BURST", "12"),
        ("WORKER_CONCURRENCY", "16"),
        ("WORKER_PREFETCH", "32"),
    ];
    overrides.extend_from_slice(PER_AGENT_CALLS);
    let app = spawn_app_without_worker(sandbox, &overrides).await;
    app.publish_agent_jobs(80, "Available").await;
    let mut worker = app.start_worker_process();

    // Past the start (token, limits, presence definitions), then a steady window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = answered(&app.sandbox_stats().await, None);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = answered(&app.sandbox_stats().await, None);
    let seconds = window.elapsed().as_secs_f64();
    let served = (after.0 - before.0) as f64 / seconds;
    let throttled = after.1 - before.1;

    let metrics = app
        .http
        .get(format!("http://{}/metrics", worker.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    worker.terminate();
    worker.wait(Duration::from_secs(10)).await;
    let log = worker.log_text();
    assert!(
        throttled <= 1,
        "{throttled} 429s in the steady window at {served:.2}/s"
    );
    assert!(served >= 3.4, "{served:.2}/s of the 4/s allowed");
    assert!(
        metrics.contains("genesys_worker_rate_limit_configured_per_second 12"),
        "{metrics}"
    );
    assert!(
        metrics.contains("genesys_worker_rate_limit_effective_per_second 4"),
        "{metrics}"
    );
    assert_eq!(
        log.matches("pacing at what it allows").count(),
        1,
        "said once: {log}"
    );
    app.stop().await;
}
