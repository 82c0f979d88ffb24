//! The worker process around the pipeline: start-up checks, readiness, shutdown.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::spawn_app;

#[test]
fn an_invalid_setting_stops_the_program_with_one_line_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_genesys-worker"))
        .arg("run")
        .env("GENESYS_CLIENT_ID", "id")
        .env("GENESYS_CLIENT_SECRET", "very-secret-value")
        .env("GENESYS_RATE_LIMIT_RPS", "fast")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("GENESYS_RATE_LIMIT_RPS") && stderr.contains("fast"),
        "{stderr}"
    );
    assert!(!stderr.contains("very-secret-value"));
}

#[test]
fn missing_credentials_stop_the_program_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_genesys-worker"))
        .arg("run")
        .env_remove("GENESYS_CLIENT_ID")
        .env_remove("GENESYS_CLIENT_SECRET")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("GENESYS_CLIENT_ID"));
}

#[tokio::test]
async fn readiness_turns_on_once_the_worker_consumes_and_health_answers() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.config.admin_addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ready = loop {
        if let Ok(response) = app.http.get(format!("{base}/readyz")).send().await {
            if response.status() == 200 {
                break response.json::<Value>().await.unwrap();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready["consuming"], true);
    assert_eq!(ready["redis"], "ok");
    let health = app.http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let admin_addr = app.config.admin_addr;
    app.stop().await;
    // Once stopped, nothing listens there any more.
    assert!(reqwest::get(format!("http://{admin_addr}/healthz"))
        .await
        .is_err());
}

#[tokio::test]
async fn when_the_broker_ends_its_consumer_the_worker_reconnects_and_declares_its_topology_again() {
    let mut app = spawn_app().await;
    let ready = format!("http://{}/readyz", app.config.admin_addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app
        .http
        .get(&ready)
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.delete_work_queue().await;
    // The queue comes back, bound again, and jobs flow through it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if app
            .http
            .get(&ready)
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not come back"
        );
    }
    app.publish(&crate::helpers::agent_job(
        genesys_sandbox::user_id(0),
        serde_json::json!({"presence": "Break"}),
    ))
    .await;
    assert_eq!(
        app.audit_events(1).await[0].event.outcome,
        genesys_worker::events::Outcome::Applied
    );
    app.stop().await;
}

fn validate_flow(args: &[&str], stdin: Option<&str>) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_genesys-worker"))
        .arg("validate-flow")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = stdin.unwrap_or_default().to_string();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn validate_flow_exits_0_1_or_2_and_names_every_problem() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/flow-main-ivr.json");
    let (code, out) = validate_flow(&[demo], None);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("valid (4 nodes)"), "{out}");

    let broken = r#"{"name": "x", "type": "inboundcall", "start": "a", "nodes": {
        "a": {"type": "start", "transitions": [{"target": "b"}, {"target": "ghost"}]},
        "b": {"type": "menu", "media_id": "m1", "transitions": [{"target": "a"}]},
        "island": {"type": "menu"}}}"#;
    let (code, out) = validate_flow(&["-", "--media-registry", "/dev/null"], Some(broken));
    assert_eq!(code, Some(1), "{out}");
    for expected in [
        "missing_target",
        "\"ghost\"",
        "cycle: a → b → a",
        "unreachable from the start: island",
        "unknown_media",
    ] {
        assert!(out.contains(expected), "{expected} missing from {out}");
    }
    let (code, out) = validate_flow(&["-", "--json", "--allow-cycles"], Some(broken));
    assert_eq!(code, Some(1));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["valid"], false);
    let codes: Vec<&str> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["missing_target", "unreachable"],
        "cycles allowed, no registry: {report}"
    );

    let (code, out) = validate_flow(&["-"], Some("{ not json"));
    assert_eq!(code, Some(2), "{out}");
    let (code, _) = validate_flow(&["/nonexistent/flow.json"], None);
    assert_eq!(code, Some(2));
}

/// Commands a client (not a Lua script) sent to Redis on keys under `prefix`, as MONITOR sees
/// them: the worker's Redis round trips.
struct RedisMonitor {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RedisMonitor {
    async fn start(prefix: &str) -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let url = url::Url::parse(&crate::helpers::redis_url()).unwrap();
        let address = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(6379));
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(b"MONITOR\r\n").await.unwrap();
        let mut lines = BufReader::new(stream).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("+OK"));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(&prefix) && !line.contains(" lua]") {
                    sink.lock().unwrap().push(line);
                }
            }
        });
        Self { seen }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// A job alone (nothing else in flight) is not held back for company: claim, commit, finish go
/// at once, three round trips, as before group commit.
#[tokio::test]
async fn a_job_costs_three_redis_round_trips() {
    let mut app = spawn_app().await;
    let prefix = app.config.redis_key_prefix.clone();
    let monitor = RedisMonitor::start(&prefix).await;
    let users = genesys_sandbox::user_id;
    // The first job loads the scripts into Redis (and the presence directory into memory).
    app.publish(&crate::helpers::agent_job(
        users(0),
        serde_json::json!({"presence": "Available"}),
    ))
    .await;
    app.audit_events(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    monitor.take();

    app.publish(&crate::helpers::agent_job(
        users(1),
        serde_json::json!({"presence": "Break"}),
    ))
    .await;
    app.audit_events(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The fleet budget's check is the rate limiter's, one per Genesys call, not the job's; the
    // operator controls' epoch is read on a timer, not per job.
    let round_trips: Vec<String> = monitor
        .take()
        .into_iter()
        .filter(|line| !line.contains(&format!("{prefix}budget:")))
        .filter(|line| !line.contains(&format!("\"{prefix}control\"")))
        // The audit log's sealer folds leaves on a timer too; the job's own part of the log
        // rides in its commit.
        .filter(|line| !line.contains(&format!("\"{prefix}log:")) || line.contains("\"COMMIT\""))
        .collect();
    // Claim (with the entity lock and state), commit, finish (confirmed + unlock).
    assert_eq!(round_trips.len(), 3, "{round_trips:#?}");
    app.stop().await;
}

/// Jobs in flight together share their script calls (group commit): 200 jobs, 32 at a time,
/// cost far fewer than the three calls each a job alone makes (3.01 per job before group
/// commit); and a job whose record is
/// broken fails alone, its neighbours in the same calls are applied.
#[tokio::test]
async fn jobs_in_flight_together_share_their_redis_script_calls_and_fail_alone() {
    use genesys_sandbox::{user_id, SandboxConfig};
    use genesys_worker::events::Outcome;
    const JOBS: usize = 200;
    let mut app = crate::helpers::spawn_app_without_worker(
        SandboxConfig {
            users: JOBS + 1,
            ..SandboxConfig::default()
        },
        &[
            ("WORKER_CONCURRENCY", "32"),
            ("WORKER_PREFETCH", "64"),
            ("BULK_PRESENCE", "off"),
            ("DELIVERY_LIMIT", "2"),
            ("RETRY_DELAYS_MS", "none"),
            // No pacing: the budget would space the jobs' calls a few ms apart, and on a busy
            // machine each job's script call could then find the group idle and go alone.
            ("GENESYS_RATE_LIMIT_RPS", "100000"),
            ("GENESYS_RATE_LIMIT_BURST", "10000"),
        ],
    )
    .await;
    // Genesys takes 30 ms per change, so the jobs in flight move in step, as in a handover.
    app.set_fault(
        serde_json::json!({"route": "PATCH /api/v2/users/{userId}/presences/purecloud", "latency_ms": 30}),
    )
    .await;
    let prefix = app.config.redis_key_prefix.clone();
    // One job's record is broken (a string where a hash belongs): its claim raises an error.
    let mut broken = crate::helpers::agent_job(user_id(JOBS), serde_json::json!({"presence": "Break"}));
    broken["idempotency_key"] = serde_json::json!("broken-record");
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}idem:broken-record"))
        .arg("not a hash")
        .arg("EX")
        .arg(300)
        .query_async(&mut redis)
        .await
        .unwrap();
    app.publish(&broken).await;
    for n in 0..JOBS {
        app.publish(&crate::helpers::agent_job(
            user_id(n),
            serde_json::json!({"presence": "Meal"}),
        ))
        .await;
    }
    let monitor = RedisMonitor::start(&prefix).await;
    let mut worker = app.start_worker_process();
    let events = app.audit_events(JOBS).await;
    assert!(events.iter().all(|e| e.event.outcome == Outcome::Applied));
    assert!(events
        .iter()
        .all(|e| e.event.job_id.to_string() != broken["job_id"].as_str().unwrap()));
    for n in [0, JOBS / 2, JOBS - 1] {
        assert_eq!(app.user(user_id(n)).await["presence"], "Meal");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scripts = monitor
        .take()
        .into_iter()
        .filter(|line| !line.contains(&format!("{prefix}budget:")))
        .filter(|line| line.contains("\"EVALSHA\"") || line.contains("\"EVAL\""))
        .count();
    let per_job = scripts as f64 / JOBS as f64;
    eprintln!("{scripts} script calls for {JOBS} jobs ({per_job:.2} per job)");
    assert!(per_job < 1.5, "{scripts} script calls for {JOBS} jobs");
    // The broken job is not applied; the broker dead-letters it once its deliveries run out.
    let letters = app.dead_letters(1).await;
    let letter: serde_json::Value = serde_json::from_slice(&letters[0].body).unwrap();
    assert_eq!(letter["job_id"], broken["job_id"]);
    assert_ne!(app.user(user_id(JOBS)).await["presence"], "Break");
    worker.terminate();
    assert!(
        worker
            .wait(Duration::from_secs(20))
            .await
            .is_some_and(|s| s.success()),
        "{}",
        worker.log_text()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_classic_retry_queue_from_an_earlier_version_is_kept_and_still_returns_jobs_to_their_lane() {
    use genesys_worker::broker::topology;
    use genesys_worker::config::Topology;
    use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};

    let connection = crate::helpers::connect_broker().await;
    let prefix = crate::helpers::random_name();
    let names = Topology {
        jobs_exchange: format!("test.{prefix}.jobs"),
        work_queue: format!("test.{prefix}.jobs.work"),
        batch_queue: format!("test.{prefix}.jobs.batch"),
        dead_letter: format!("test.{prefix}.jobs.dead"),
        audit_exchange: format!("test.{prefix}.audit"),
        crm_exchange: format!("test.{prefix}.crm"),
        retry_delays_ms: vec![200],
        ..Topology::default()
    };
    let retry = names.retry_queue(&names.work_queue, 0).unwrap();
    // As versions before the quorum retry queues declared it.
    let mut classic = FieldTable::default();
    classic.insert("x-message-ttl".into(), AMQPValue::LongLongInt(200));
    classic.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
    classic.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(names.work_queue.as_str().into()),
    );
    let channel = connection.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(retry.as_str().into(), durable, classic)
        .await
        .unwrap();

    topology::declare(&connection, &names)
        .await
        .expect("the old retry queue is accepted");
    topology::declare(&connection, &names)
        .await
        .expect("and again, idempotently");

    channel
        .basic_publish(
            "".into(),
            retry.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let back = channel
            .basic_get(names.work_queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if back.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the message never left the retry queue"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for queue in [&retry, &names.work_queue, &names.batch_queue, &names.dead_letter] {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    if let Some(batch_retry) = names.retry_queue(&names.batch_queue, 0) {
        let _ = channel
            .queue_delete(batch_retry.as_str().into(), Default::default())
            .await;
    }
}

#[tokio::test]
async fn nodes_of_amqp_url_that_do_not_answer_are_passed_over_by_the_worker_and_the_tools() {
    use genesys_sandbox::{user_id, SandboxConfig};
    use genesys_worker::events::Outcome;
    use serde_json::json;

    // Two ports nothing listens on, around the real broker: whichever node a process starts
    // at, it reaches the broker.
    let dead = |port: u16| format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let nodes = format!(
        "{},{},{}",
        dead(crate::helpers::free_port()),
        crate::helpers::amqp_url(),
        dead(crate::helpers::free_port())
    );
    let mut app =
        crate::helpers::spawn_app_with(SandboxConfig::default(), &[("AMQP_URL", nodes.as_str())]).await;
    app.publish(&crate::helpers::agent_job(
        user_id(1),
        json!({"presence": "Break"}),
    ))
    .await;
    assert_eq!(app.audit_events(1).await[0].event.outcome, Outcome::Applied);
    // A tool, as a process of its own (its own random start), on the same list.
    let (code, out, err) = app.cli(&["dlq", "list", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    app.stop().await;
}
