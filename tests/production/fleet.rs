//! Two worker processes on a production topology, a run of jobs through them, and what the
//! sandbox, the audit exchange and the workers' `/readyz` showed while a node failed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use genesys_sandbox::{self as sandbox, user_id, SandboxConfig, SandboxHandle};
use genesys_worker::broker::{self, Publisher};
use genesys_worker::config::Config;
use genesys_worker::events::{AuditEvent, Outcome};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{json, Value};
use testkit::{agent_job, random_name, start_worker_process, test_env, WorkerProcess};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";

/// Jobs in a run: one per agent, so a change made twice shows as two mutations of one user.
pub const JOBS: usize = 400;

/// The settings of a run; `env` adds to (or overrides) the test defaults, e.g. the cluster's
/// `AMQP_URL` or the Redis topology.
pub struct Fleet {
    pub sandbox: SandboxHandle,
    pub config: Config,
    env: HashMap<String, String>,
    pub workers: Vec<WorkerProcess>,
    capture_queue: String,
    jobs: HashSet<Uuid>,
    http: reqwest::Client,
    progress: Arc<Mutex<Vec<(Instant, usize)>>>,
    readiness: Arc<Mutex<Vec<(Instant, usize, bool)>>>,
    stop_watching: CancellationToken,
}

/// What a run saw after the failure.
#[derive(Debug)]
pub struct Report {
    /// The longest time without a change reaching Genesys, from the failure to the end.
    pub gap: Duration,
    /// Readiness answers that were not 200, per worker, after the failure.
    pub not_ready: Vec<usize>,
}

impl Fleet {
    /// A sandbox whose presence changes take 100 ms (so a run lasts several seconds with
    /// `WORKER_CONCURRENCY=4` on each of two workers), the topology declared, every job
    /// published (confirmed), and an audit capture queue (quorum: it survives a node).
    pub async fn prepare(overrides: &[(&str, &str)]) -> Self {
        let sandbox = sandbox::spawn(
            "127.0.0.1:0".parse().unwrap(),
            SandboxConfig {
                users: JOBS,
                ..SandboxConfig::default()
            },
        )
        .await
        .unwrap();
        let mut settings = vec![
            ("WORKER_CONCURRENCY", "4"),
            ("WORKER_PREFETCH", "8"),
            ("LEASE_MS", "3000"),
            ("BULK_PRESENCE", "off"),
            ("RETRY_DELAYS_MS", "500,1000,2000"),
        ];
        settings.extend_from_slice(overrides);
        let env = test_env(&sandbox, &random_name(), &settings);
        let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
        let http = reqwest::Client::new();
        http.post(format!("{}/sandbox/faults", sandbox.base_url()))
            .json(&json!({"route": PATCH_PRESENCE, "latency_ms": 100}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();

        let connection = broker::connect(&config.amqp_url).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        broker::topology::declare(&connection, &config.topology)
            .await
            .unwrap();
        let capture_queue = format!("capture.{}", random_name());
        let mut quorum = FieldTable::default();
        quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        channel
            .queue_declare(
                capture_queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                quorum,
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                capture_queue.as_str().into(),
                config.topology.audit_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let publisher = Publisher::open(&connection).await.unwrap();
        let mut jobs = HashSet::new();
        for n in 0..JOBS {
            let job = agent_job(user_id(n), json!({"presence": "On Queue"}));
            jobs.insert(Uuid::parse_str(job["job_id"].as_str().unwrap()).unwrap());
            publisher
                .publish(
                    &config.topology.jobs_exchange,
                    "agent.status",
                    &serde_json::to_vec(&job).unwrap(),
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap();
        }
        let _ = connection.close(200, "published".into()).await;
        Self {
            sandbox,
            config,
            env,
            workers: Vec::new(),
            capture_queue,
            jobs,
            http,
            progress: Arc::default(),
            readiness: Arc::default(),
            stop_watching: CancellationToken::new(),
        }
    }

    /// Starts two worker processes and samples progress and readiness until the run ends.
    pub fn start(&mut self) {
        for _ in 0..2 {
            self.workers.push(start_worker_process(&self.env));
        }
        let (progress, http, base, stop) = (
            self.progress.clone(),
            self.http.clone(),
            self.sandbox.base_url(),
            self.stop_watching.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(stats) = stats(&http, &base).await {
                    let made = stats["mutations"].as_array().map_or(0, Vec::len);
                    progress.lock().unwrap().push((Instant::now(), made));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let admins: Vec<String> = self.workers.iter().map(|w| w.admin_addr.clone()).collect();
        let (readiness, http, stop) = (
            self.readiness.clone(),
            self.http.clone(),
            self.stop_watching.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for (index, admin) in admins.iter().enumerate() {
                    let ready = http
                        .get(format!("http://{admin}/readyz"))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    readiness.lock().unwrap().push((Instant::now(), index, ready));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// Changes made so far.
    pub fn made(&self) -> usize {
        self.progress.lock().unwrap().last().map_or(0, |(_, n)| *n)
    }

    /// Waits until `n` changes were made, while both workers run.
    pub async fn wait_until_made(&mut self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.made() < n {
            self.assert_workers_alive();
            assert!(
                Instant::now() < deadline,
                "{} of {n} changes after {limit:?}\n{}",
                self.made(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn assert_workers_alive(&mut self) {
        for worker in &mut self.workers {
            assert!(
                worker.child.try_wait().unwrap().is_none(),
                "a worker exited:\n{}",
                worker.log_text()
            );
        }
    }

    pub fn logs_full(&self) -> String {
        self.workers
            .iter()
            .map(|w| w.log_text())
            .collect::<Vec<_>>()
            .join("\n=====\n")
    }

    pub fn logs(&self) -> String {
        self.workers
            .iter()
            .enumerate()
            .map(|(i, w)| format!("--- worker {i} ---\n{}", tail(&w.log_text(), 60)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the run to end, then checks the promises: every change made once in
    /// Genesys, every job's outcome on the audit exchange (one applied event per job, maybe
    /// sent twice, never two different ones), the workers alive and ready. Returns what was
    /// seen after `failed_at`.
    pub async fn finish(mut self, failed_at: Instant, limit: Duration) -> Report {
        self.wait_until_made(JOBS, limit).await;
        let stats = stats(&self.http, &self.sandbox.base_url()).await.unwrap();
        let mut per_entity: HashMap<String, usize> = HashMap::new();
        for mutation in stats["mutations"].as_array().unwrap() {
            *per_entity
                .entry(mutation["entity"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        assert_eq!(per_entity.len(), JOBS, "every agent changed");
        let twice: Vec<_> = per_entity.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "changes made twice: {twice:?}\n{}", self.logs());

        // Every job's applied event reaches the audit exchange (events follow the change).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut applied: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
        let mut other: Vec<(Uuid, Outcome)> = Vec::new();
        loop {
            for event in self.take_captured().await {
                match event.outcome {
                    Outcome::Applied => {
                        applied.entry(event.job_id).or_default().insert(event.event_id);
                    }
                    outcome => other.push((event.job_id, outcome)),
                }
            }
            if self.jobs.iter().all(|job| applied.contains_key(job)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} job(s) without an applied audit event; other outcomes: {other:?}\n{}",
                self.jobs.iter().filter(|j| !applied.contains_key(j)).count(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let reported_twice: Vec<_> = applied.iter().filter(|(_, ids)| ids.len() > 1).collect();
        assert!(
            reported_twice.is_empty(),
            "jobs reported applied by two different events: {reported_twice:?}"
        );
        assert!(
            other.iter().all(|(_, o)| *o == Outcome::Duplicate),
            "unexpected outcomes: {other:?}"
        );

        // Back to ready, both of them.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let recent: Vec<bool> = {
                let readiness = self.readiness.lock().unwrap();
                (0..self.workers.len())
                    .map(|w| {
                        readiness
                            .iter()
                            .rev()
                            .find(|(_, i, _)| *i == w)
                            .is_some_and(|(_, _, ready)| *ready)
                    })
                    .collect()
            };
            if recent.iter().all(|r| *r) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not ready again: {recent:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.assert_workers_alive();
        self.stop_watching.cancel();
        let report = Report {
            gap: self.gap_after(failed_at),
            not_ready: (0..self.workers.len())
                .map(|w| {
                    self.readiness
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|(at, i, ready)| *at >= failed_at && *i == w && !*ready)
                        .count()
                })
                .collect(),
        };
        for worker in &self.workers {
            worker.terminate();
        }
        for worker in &mut self.workers {
            assert!(
                worker
                    .wait(Duration::from_secs(20))
                    .await
                    .is_some_and(|s| s.success()),
                "a worker did not stop cleanly:\n{}",
                tail(&worker.log_text(), 80)
            );
        }
        report
    }

    /// The longest stretch without a new change, from `failed_at` until the last change.
    fn gap_after(&self, failed_at: Instant) -> Duration {
        let progress = self.progress.lock().unwrap();
        let mut last_change = failed_at;
        let mut last_count = progress
            .iter()
            .rev()
            .find(|(at, _)| *at <= failed_at)
            .map_or(0, |(_, n)| *n);
        let mut longest = Duration::ZERO;
        for (at, count) in progress.iter().filter(|(at, _)| *at > failed_at) {
            if *count > last_count {
                longest = longest.max(at.duration_since(last_change));
                last_change = *at;
                last_count = *count;
            }
        }
        longest
    }

    /// Audit events captured so far (taken from the capture queue).
    async fn take_captured(&self) -> Vec<AuditEvent> {
        let Ok(connection) = broker::connect(&self.config.amqp_url).await else {
            return Vec::new();
        };
        let mut events = Vec::new();
        if let Ok(channel) = connection.create_channel().await {
            while let Ok(Some(message)) = channel
                .basic_get(self.capture_queue.as_str().into(), BasicGetOptions::default())
                .await
            {
                // The audit log's checkpoints share the exchange; these tests count events.
                if message.delivery.routing_key.as_str() != testkit::CHECKPOINT_ROUTING_KEY {
                    events.push(serde_json::from_slice(&message.delivery.data).unwrap());
                }
                let _ = message.delivery.ack(BasicAckOptions::default()).await;
            }
        }
        let _ = connection.close(200, "captured".into()).await;
        events
    }
}

async fn stats(http: &reqwest::Client, base: &str) -> Result<Value, reqwest::Error> {
    http.get(format!("{base}/sandbox/stats"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
