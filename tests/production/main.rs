//! The worker on production topologies (README, "Running in production"): a 3-node RabbitMQ
//! cluster, Redis behind Sentinel, a Redis Cluster, each started on loopback by
//! `scripts/topology.sh` (through `testkit::topology`). Jobs flow through two worker processes
//! while a node dies; every job must reach one final outcome, no change may reach Genesys twice,
//! no audit event may be lost, the workers must live on and `/readyz` must say what happened.
//! Each test prints the gap (the longest time without a change reaching Genesys) for the notes.
//!
//! The topologies are heavy for two cores: the tests take turns (`one_at_a_time`).

mod cluster_audit_log;
mod cluster_guarantees;
mod fleet;

use std::time::{Duration, Instant};

use fleet::{Fleet, Report, JOBS};
use testkit::topology::{one_at_a_time, RabbitCluster, RedisCluster, SentinelRedis};

/// How long a run may take once the failure is injected.
const RUN_LIMIT: Duration = Duration::from_secs(240);

fn print_gap(what: &str, report: &Report) {
    eprintln!(
        "[gap] {what}: {:.2} s without a change reaching Genesys; /readyz answers other than 200 per worker: {:?}",
        report.gap.as_secs_f64(),
        report.not_ready
    );
}

fn env(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test]
async fn killing_the_rabbitmq_node_the_workers_use_loses_nothing_and_doubles_nothing() {
    let _turn = one_at_a_time().await;
    testkit::check_redis().await;
    let rabbit = RabbitCluster::start().await;
    let amqp_url = rabbit.amqp_url();
    let mut fleet = Fleet::prepare(&[("AMQP_URL", &amqp_url)]).await;
    fleet.start();
    fleet.wait_until_made(JOBS / 5, Duration::from_secs(90)).await;

    // The node holding most of the workers' connections.
    let mut per_node = [0usize; 3];
    for connection in rabbit.connections().await {
        if connection
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("genesys-worker"))
        {
            per_node[connection.node] += 1;
        }
    }
    let victim = (0..3).max_by_key(|&n| per_node[n]).unwrap();
    assert!(per_node[victim] > 0, "no worker connection found: {per_node:?}");
    let failed_at = Instant::now();
    rabbit.kill_node(victim);
    let report = fleet.finish(failed_at, RUN_LIMIT).await;
    print_gap("RabbitMQ node with the workers' connections killed", &report);
    // The workers now run through the two nodes left.
    assert!(!rabbit.is_up(victim));
}

#[tokio::test]
async fn killing_the_rabbitmq_node_that_leads_the_work_queue_loses_nothing_and_doubles_nothing() {
    let _turn = one_at_a_time().await;
    testkit::check_redis().await;
    let rabbit = RabbitCluster::start().await;
    let amqp_url = rabbit.amqp_url();
    let mut fleet = Fleet::prepare(&[("AMQP_URL", &amqp_url)]).await;
    let work_queue = fleet.config.topology.work_queue.clone();
    assert_eq!(
        rabbit.queue_members(&work_queue).await,
        [0, 1, 2],
        "replicated on every node"
    );
    fleet.start();
    fleet.wait_until_made(JOBS / 5, Duration::from_secs(90)).await;

    let leader = rabbit.wait_for_leader(&work_queue, None).await;
    let failed_at = Instant::now();
    rabbit.kill_node(leader);
    let new_leader = rabbit.wait_for_leader(&work_queue, Some(leader)).await;
    assert_ne!(new_leader, leader);
    let report = fleet.finish(failed_at, RUN_LIMIT).await;
    print_gap("RabbitMQ node leading the work queue killed", &report);
}

#[tokio::test]
async fn killing_the_redis_primary_under_sentinel_with_replicated_writes_loses_nothing_and_doubles_nothing() {
    let _turn = one_at_a_time().await;
    let redis = SentinelRedis::start().await;
    let mut settings = redis.redis_env();
    settings.push(("REDIS_WAIT_REPLICAS".into(), "1".into()));
    settings.push(("REDIS_WAIT_TIMEOUT_MS".into(), "500".into()));
    let mut fleet = Fleet::prepare(&env(&settings)).await;
    fleet.start();
    fleet.wait_until_made(JOBS / 5, Duration::from_secs(90)).await;

    let failed_at = Instant::now();
    let old_primary = redis.kill_primary().await;
    let new_primary = redis.wait_for_failover(old_primary).await;
    assert_ne!(new_primary, old_primary);
    eprintln!(
        "[gap] Sentinel promoted the replica {:.2} s after the kill",
        failed_at.elapsed().as_secs_f64()
    );
    // The new primary has no replica until the old one returns (as its replica): until then
    // no claim can be replicated, so nothing is applied and /readyz says why.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stalled_at = fleet.made();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fleet.made(),
        stalled_at,
        "changes made while no replica could hold their claims"
    );
    let rejoined_at = Instant::now();
    redis.restart_node(old_primary).await;
    let before = fleet.made();
    // Sentinel converts a returned primary after about 8 s; longer on a loaded machine (TILT).
    fleet.wait_until_made(before + 1, Duration::from_secs(120)).await;
    eprintln!(
        "[gap] first change {:.2} s after the old primary was started again (as the new one's replica)",
        rejoined_at.elapsed().as_secs_f64()
    );
    if std::env::var("DUMP").is_ok() {
        eprintln!("{}", fleet.logs_full());
    }
    let report = fleet.finish(failed_at, RUN_LIMIT).await;
    print_gap(
        "Redis primary killed under Sentinel (REDIS_WAIT_REPLICAS=1)",
        &report,
    );
    assert!(
        report.not_ready.iter().all(|n| *n > 0),
        "both workers said not ready while Redis failed over: {:?}",
        report.not_ready
    );
}

#[tokio::test]
async fn failing_over_a_redis_cluster_primary_loses_nothing_and_doubles_nothing() {
    let _turn = one_at_a_time().await;
    let redis = RedisCluster::start().await;
    let mut fleet = Fleet::prepare(&env(&redis.redis_env())).await;
    fleet.start();
    fleet.wait_until_made(JOBS / 5, Duration::from_secs(90)).await;

    let primary = redis.primaries().await[0];
    let failed_at = Instant::now();
    let replacement = redis.fail_over_by_killing(primary).await;
    assert_ne!(replacement, primary);
    let report = fleet.finish(failed_at, RUN_LIMIT).await;
    print_gap("Redis Cluster primary killed", &report);
}
