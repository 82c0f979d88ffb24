//! The throughput benchmark suite (issue 7): the worker against the plumbing it runs on.
//!
//! Needs RabbitMQ and Redis (`scripts/bench.sh` starts them); starts the sandbox and the worker
//! as processes of the release binary. Prints a table and writes `target/bench/throughput.json`.
//!
//! ```text
//! cargo bench --bench throughput -- [--quick] [--runs N] [--only NAME,...]
//! ```
//! Scenarios: `plumbing`, `bulk-off`, `bulk-on` (drains of the same 20,000 `agent.status` jobs,
//! repeated `--runs` times, medians reported), `fidelity` (20 calls/s against a sandbox limit
//! of 20/s, and 12/s configured against 4/s allowed, 1 and 3 replicas), `handover` (10,000 agents as one batch at 5 calls/s), `backlog`
//! (worker memory with 1,000,000 jobs queued), `durability` (the `bulk-off` drain against a
//! Redis primary + replica behind 3 Sentinels, `REDIS_WAIT_REPLICAS=0` and `=1` alternating per
//! run, `--runs` each, beside the standalone `bulk-off` of the same invocation; about 2 minutes).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use genesys_sandbox::{self as sandbox, user_id};
use genesys_worker::broker::{self, topology, Publisher};
use genesys_worker::config::{ServiceUrls, Topology, DEFAULT_REDIS_WAIT_TIMEOUT_MS};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{json, Value};
use testkit::topology::{redis_cli, SentinelRedis};
use testkit::{amqp_url, capture_unacked, free_port, get_json, redis_url, sandbox_token};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_genesys-worker");

/// The simulator's binary, beside the worker's (`scripts/bench.sh` builds it first).
fn sandbox_bin() -> std::path::PathBuf {
    let bin = std::path::Path::new(BIN).with_file_name("genesys-sandbox");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release -p genesys-sandbox` (scripts/bench.sh does)",
        bin.display()
    );
    bin
}
/// Jobs in flight, the same for the plumbing and the worker.
const CONCURRENCY: usize = 64;
const PREFETCH: u16 = 128;

struct Settings {
    jobs: usize,
    runs: usize,
    handover: usize,
    backlog: usize,
    fidelity_secs: u64,
    only: Option<Vec<String>>,
}

impl Settings {
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        Self {
            jobs: if quick { 4_000 } else { 20_000 },
            runs: value("--runs")
                .and_then(|v| v.parse().ok())
                .unwrap_or(if quick { 1 } else { 3 }),
            handover: if quick { 2_000 } else { 10_000 },
            backlog: if quick { 100_000 } else { 1_000_000 },
            fidelity_secs: if quick { 8 } else { 20 },
            only: value("--only").map(|v| v.split(',').map(str::to_string).collect()),
        }
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == scenario))
    }
}

/// A `genesys-sandbox` process.
struct Sandbox {
    /// Held so the process is killed when the scenario drops the sandbox.
    _process: Child,
    pid: Option<u32>,
    base: String,
}

impl Sandbox {
    async fn start(users: usize, rate_limit: Option<(u32, u32)>) -> Self {
        let port = free_port();
        let (rps, burst) = rate_limit.unwrap_or((0, 1));
        let child = Command::new(sandbox_bin())
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--users", &users.to_string()])
            .args(["--rate-limit-rps", &rps.to_string()])
            .args(["--rate-limit-burst", &burst.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the sandbox starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http.get(format!("{base}/sandbox/stats")).send().await.is_ok() {
                return Self {
                    pid: child.id(),
                    _process: child,
                    base,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the sandbox did not answer on {base}");
    }

    async fn token(&self, http: &reqwest::Client) -> String {
        sandbox_token(http, &self.base).await
    }

    /// Answered API requests (not token grants), by status.
    async fn answered(&self, http: &reqwest::Client) -> HashMap<u64, u64> {
        let stats = get_json(http, &format!("{}/sandbox/stats", self.base), None).await;
        let mut by_status = HashMap::new();
        for request in stats["requests"].as_array().unwrap() {
            if request["route"].as_str().unwrap_or_default().contains("/api/v2/") {
                *by_status.entry(request["status"].as_u64().unwrap()).or_default() +=
                    request["count"].as_u64().unwrap();
            }
        }
        by_status
    }
}

/// The names one scenario uses, apart from every other run.
fn topology(tag: &str) -> Topology {
    Topology {
        jobs_exchange: format!("bench.{tag}.jobs"),
        work_queue: format!("bench.{tag}.work"),
        batch_queue: format!("bench.{tag}.batch"),
        dead_letter: format!("bench.{tag}.dead"),
        audit_exchange: format!("bench.{tag}.audit"),
        crm_exchange: format!("bench.{tag}.crm"),
        ..Topology::default()
    }
}

async fn remove(channel: &Channel, topology: &Topology) {
    let mut queues = vec![
        topology.work_queue.clone(),
        topology.batch_queue.clone(),
        topology.dead_letter.clone(),
    ];
    for lane in topology.lane_queues() {
        queues.extend((0..topology.retry_delays_ms.len()).filter_map(|t| topology.retry_queue(lane, t)));
    }
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

fn worker_env(
    tag: &str,
    sandbox: &Sandbox,
    topology: &Topology,
    extra: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("AMQP_URL".into(), amqp_url()),
        ("REDIS_URL".into(), redis_url()),
        ("REDIS_KEY_PREFIX".into(), format!("bench:{tag}:")),
        ("GENESYS_API_BASE".into(), sandbox.base.clone()),
        ("GENESYS_LOGIN_BASE".into(), sandbox.base.clone()),
        ("GENESYS_CLIENT_ID".into(), sandbox::DEFAULT_CLIENT_ID.into()),
        (
            "GENESYS_CLIENT_SECRET".into(),
            sandbox::DEFAULT_CLIENT_SECRET.into(),
        ),
        ("JOBS_EXCHANGE".into(), topology.jobs_exchange.clone()),
        ("WORK_QUEUE".into(), topology.work_queue.clone()),
        ("BATCH_QUEUE".into(), topology.batch_queue.clone()),
        ("DEAD_LETTER_QUEUE".into(), topology.dead_letter.clone()),
        ("AUDIT_EXCHANGE".into(), topology.audit_exchange.clone()),
        ("CRM_EXCHANGE".into(), topology.crm_exchange.clone()),
        ("ADMIN_ADDR".into(), format!("127.0.0.1:{}", free_port())),
        ("WORKER_CONCURRENCY".into(), CONCURRENCY.to_string()),
        ("WORKER_PREFETCH".into(), PREFETCH.to_string()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.clone()));
    }
    env
}

/// The worker binary: this build's, or `BENCH_WORKER_BIN` (a build with frame pointers, to
/// profile it).
fn start_worker(env: &[(String, String)]) -> Child {
    let bin = std::env::var("BENCH_WORKER_BIN").unwrap_or_else(|_| BIN.to_string());
    Command::new(bin)
        .arg("run")
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker starts")
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Peak resident memory of process `pid`, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 when it does not answer).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// `pid` and its descendants (RabbitMQ's node runs helpers beside `beam.smp`).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", all[i]));
        for task in tasks.into_iter().flatten().flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            all.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        i += 1;
    }
    all
}

/// The command name of process `pid`.
fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Inodes of the TCP sockets (`/proc/net/tcp` and `tcp6`) for which `wanted(local port, remote
/// port, state)`; state `0A` is LISTEN, `01` ESTABLISHED.
fn socket_inodes(wanted: impl Fn(u16, u16, &str) -> bool) -> std::collections::HashSet<u64> {
    let port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            .unwrap_or(0)
    };
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && wanted(port(fields[1]), port(fields[2]), fields[3]) {
                inodes.extend(fields[9].parse::<u64>().ok().filter(|i| *i != 0));
            }
        }
    }
    inodes
}

/// The processes that hold one of the sockets `inodes` (reading other users' `/proc/<pid>/fd`
/// needs root, which the bench has where `scripts/bench.sh` runs).
fn socket_owners(inodes: &std::collections::HashSet<u64>) -> std::collections::BTreeSet<u32> {
    let mut pids = std::collections::BTreeSet::new();
    if inodes.is_empty() {
        return pids;
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|link| {
                    link.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|inode| inodes.contains(&inode))
        });
        if holds {
            pids.insert(pid);
        }
    }
    pids
}

/// The port of the first address of a service URL (`AMQP_URL` may list several nodes).
fn url_port(url: &str, default: u16) -> u16 {
    let first = url.split(',').next().unwrap_or_default();
    url::Url::parse(first)
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(default)
}

/// The shared RabbitMQ and Redis the drains use, and their processes, found once: RabbitMQ's as
/// the process listening on `AMQP_URL`'s port (with its helpers), Redis's from `INFO server`.
/// Services started before `scripts/bench.sh` are found the same way.
#[derive(Debug, Clone, Default)]
struct Services {
    amqp_port: u16,
    redis_port: u16,
    rabbitmq: Vec<u32>,
    redis: Vec<u32>,
}

impl Services {
    async fn find() -> Self {
        let amqp_port = url_port(&amqp_url(), 5672);
        let redis_port = url_port(&redis_url(), 6379);
        let listeners = socket_owners(&socket_inodes(|local, _, state| {
            local == amqp_port && state == "0A"
        }));
        let rabbitmq: Vec<u32> = listeners.iter().flat_map(|&pid| process_tree(pid)).collect();
        let mut redis = Vec::new();
        if let Ok(mut connection) = redis_connection(&redis_url()).await {
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut connection)
                .await
                .unwrap_or_default();
            redis.extend(
                info.lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|p| p.trim().parse::<u32>().ok())
                    // A Redis in another PID namespace (a container) is not this machine's pid.
                    .filter(|pid| process_name(*pid).starts_with("redis")),
            );
        }
        if redis.is_empty() {
            redis.extend(socket_owners(&socket_inodes(|local, _, state| {
                local == redis_port && state == "0A"
            })));
        }
        let describe = |pids: &[u32]| match pids.first() {
            Some(pid) => format!(
                "pid {pid} ({}){}",
                process_name(*pid),
                if pids.len() > 1 {
                    format!(" + {} helper process(es)", pids.len() - 1)
                } else {
                    String::new()
                }
            ),
            None => "NOT FOUND: its CPU is not counted".into(),
        };
        println!(
            "measured: RabbitMQ on :{amqp_port} {}; Redis on :{redis_port} {}",
            describe(&rabbitmq),
            describe(&redis)
        );
        Self {
            amqp_port,
            redis_port,
            rabbitmq,
            redis,
        }
    }
}

async fn redis_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?.get_multiplexed_async_connection().await
}

/// `INFO commandstats`: calls by command (`cmdstat_<name>:calls=N,...`).
fn command_calls(info: &str) -> HashMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// The commands that run a script.
const SCRIPT_COMMANDS: [&str; 6] = ["eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"];

/// CPU seconds per 1,000 jobs over a drain's window, by process.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct CpuSplit {
    /// All of the processes below.
    total: f64,
    /// The worker; for the plumbing, the bench process that runs it (its audit reader included).
    worker: f64,
    /// The bench process beside a worker: its reader of the audit events (0 for the plumbing,
    /// where it is in `worker`).
    bench_reader: f64,
    /// The node's `beam.smp` and its helper processes.
    rabbitmq: f64,
    /// The Redis server(s) the drain used (primary and replica for `durability`).
    redis: f64,
    sandbox: f64,
}

/// What a drain cost the machine.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Cost {
    cpu_secs_per_1000: CpuSplit,
    /// `INFO commandstats` delta over the window, the sum of `calls` over all commands (those run
    /// inside scripts included, as Redis counts them; the bench's own `INFO` excluded), per job.
    redis_commands_per_job: f64,
    /// Of those, `EVAL`/`EVALSHA` (and their `_ro` forms, `FCALL`) calls per job.
    redis_script_calls_per_job: f64,
    /// Processes other than the drain's connected to RabbitMQ or Redis at the start or the end
    /// of the window (`pid name`): their load is in the `rabbitmq` and `redis` CPU and in the
    /// command counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    foreign_clients: Vec<String>,
}

/// The processes whose CPU a drain counts and the Redis whose commands it counts, read at the
/// start and the end of the drain's window.
struct Meter {
    /// worker, bench reader, rabbitmq, redis, sandbox (as in `CpuSplit`).
    parts: [Vec<u32>; 5],
    redis: redis::aio::MultiplexedConnection,
    /// Ports whose other clients are reported as foreign: RabbitMQ's, and the shared Redis's when
    /// the drain uses it.
    watched_ports: Vec<u16>,
    ours: std::collections::BTreeSet<u32>,
    foreign: std::collections::BTreeSet<u32>,
}

struct Reading {
    cpu: [f64; 5],
    calls: HashMap<String, u64>,
}

impl Meter {
    /// `worker` is the worker's pid, or None for the plumbing (this process).
    async fn new(
        services: &Services,
        worker: Option<u32>,
        sandbox: &Sandbox,
        redis: &RedisUnderTest,
    ) -> Self {
        let me = std::process::id();
        let (worker, bench) = match worker {
            Some(pid) => (vec![pid], vec![me]),
            None => (vec![me], vec![]),
        };
        let (redis_pids, stats_url, watched_ports) = match &redis.topology {
            Some((pids, url)) => (pids.clone(), url.clone(), vec![services.amqp_port]),
            None => (
                services.redis.clone(),
                redis_url(),
                vec![services.amqp_port, services.redis_port],
            ),
        };
        let ours = worker
            .iter()
            .chain(&bench)
            .chain(&services.rabbitmq)
            .chain(&redis_pids)
            .copied()
            .chain(sandbox.pid)
            .collect();
        Self {
            parts: [
                worker,
                bench,
                services.rabbitmq.clone(),
                redis_pids,
                sandbox.pid.into_iter().collect(),
            ],
            redis: redis_connection(&stats_url)
                .await
                .expect("the drain's Redis answers INFO"),
            watched_ports,
            ours,
            foreign: Default::default(),
        }
    }

    fn note_foreign_clients(&mut self) {
        let ports = self.watched_ports.clone();
        let clients = socket_owners(&socket_inodes(|_, remote, state| {
            state == "01" && ports.contains(&remote)
        }));
        self.foreign
            .extend(clients.into_iter().filter(|pid| !self.ours.contains(pid)));
    }

    async fn read(&mut self) -> Reading {
        let cpu = self
            .parts
            .clone()
            .map(|pids| pids.iter().map(|&pid| cpu_seconds(pid)).sum());
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.redis)
            .await
            .unwrap_or_default();
        Reading {
            cpu,
            calls: command_calls(&info),
        }
    }

    /// The start of the window (the scan for other clients first, outside it).
    async fn start(&mut self) -> Reading {
        self.note_foreign_clients();
        self.read().await
    }

    /// The end of the window, and its cost over `jobs` jobs (the scan for other clients after).
    async fn finish(&mut self, start: &Reading, jobs: usize) -> Cost {
        let end = self.read().await;
        self.note_foreign_clients();
        let jobs = jobs.max(1) as f64;
        let per_1000 = |i: usize| (end.cpu[i] - start.cpu[i]).max(0.0) * 1000.0 / jobs;
        let [worker, bench_reader, rabbitmq, redis, sandbox] = [0, 1, 2, 3, 4].map(per_1000);
        let delta = |name: &str| {
            let calls = |r: &Reading| r.calls.get(name).copied().unwrap_or(0);
            calls(&end).saturating_sub(calls(start))
        };
        let commands: u64 = end
            .calls
            .keys()
            .filter(|name| *name != "info")
            .map(|name| delta(name))
            .sum();
        let scripts: u64 = SCRIPT_COMMANDS.iter().map(|name| delta(name)).sum();
        Cost {
            cpu_secs_per_1000: CpuSplit {
                total: worker + bench_reader + rabbitmq + redis + sandbox,
                worker,
                bench_reader,
                rabbitmq,
                redis,
                sandbox,
            },
            redis_commands_per_job: commands as f64 / jobs,
            redis_script_calls_per_job: scripts as f64 / jobs,
            foreign_clients: self
                .foreign
                .iter()
                .map(|pid| format!("{pid} {}", process_name(*pid)))
                .collect(),
        }
    }
}

/// The load average (1, 5, 15 minutes).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn agent_job(n: usize, users: usize, presence: &str) -> Value {
    json!({
        "job_id": Uuid::new_v4(),
        "kind": "agent.status",
        "idempotency_key": format!("bench-{}", Uuid::new_v4()),
        "actor": "bench",
        "payload": {"user_id": user_id(n % users), "presence": presence},
    })
}

fn job_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// Publishes `bodies` to `exchange` with routing key `agent.status`, confirms in rounds.
async fn publish_jobs(publisher: &Publisher, exchange: &str, bodies: Vec<Vec<u8>>) {
    let mut bodies = bodies.into_iter().peekable();
    while bodies.peek().is_some() {
        let chunk: Vec<(Vec<u8>, BasicProperties)> = bodies
            .by_ref()
            .take(5_000)
            .map(|b| (b, job_properties()))
            .collect();
        publisher
            .publish_all(exchange, "agent.status", chunk)
            .await
            .expect("jobs published");
    }
}

/// Waits for `n` audit events matching `wanted` (or `limit`); returns their bodies with their
/// arrival instants.
async fn await_events(
    audit: &mut lapin::Consumer,
    n: usize,
    limit: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<(Instant, Value)> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::with_capacity(n.min(100_000));
    while seen.len() < n {
        match tokio::time::timeout_at(deadline, audit.next()).await {
            Ok(Some(Ok(delivery))) => {
                let event: Value = serde_json::from_slice(&delivery.data).unwrap();
                if wanted(&event) {
                    seen.push((Instant::now(), event));
                }
            }
            _ => {
                // usize::MAX asks for whatever arrives within `limit`.
                if n != usize::MAX {
                    eprintln!("  (timed out with {} of {n} events)", seen.len());
                }
                break;
            }
        }
    }
    seen
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

#[derive(Debug, Clone, serde::Serialize)]
struct Drain {
    jobs_per_sec: f64,
    /// The worker's CPU seconds per 1,000 jobs over the drain's window (`cost` has the others').
    cpu_secs_per_1000: f64,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss_mib: f64,
    /// CPU seconds of the Redis servers (primary and replica, not the Sentinels) per 1,000
    /// jobs, when the drain ran against a topology of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_cpu_secs_per_1000: Option<f64>,
    cost: Cost,
}

fn median_drain(runs: &[Drain]) -> Drain {
    let pick = |f: fn(&Drain) -> f64| median(runs.iter().map(f).collect());
    let redis_cpu: Option<Vec<f64>> = runs.iter().map(|d| d.redis_cpu_secs_per_1000).collect();
    // The CPU split of the run with the median total, so that its parts add up.
    let mut by_total: Vec<&Drain> = runs.iter().collect();
    by_total.sort_by(|a, b| {
        a.cost
            .cpu_secs_per_1000
            .total
            .total_cmp(&b.cost.cpu_secs_per_1000.total)
    });
    // By pid, its name where a run read one (a process gone by then reads as `?`).
    let mut by_pid: std::collections::BTreeMap<String, String> = Default::default();
    for client in runs.iter().flat_map(|d| &d.cost.foreign_clients) {
        let (pid, name) = client.split_once(' ').unwrap_or((client, "?"));
        let known = by_pid.entry(pid.to_string()).or_insert_with(|| name.to_string());
        if known == "?" {
            *known = name.to_string();
        }
    }
    let foreign: Vec<String> = by_pid
        .into_iter()
        .map(|(pid, name)| format!("{pid} {name}"))
        .collect();
    let cost = Cost {
        cpu_secs_per_1000: by_total
            .get(((by_total.len().max(1) - 1) as f64 * 0.5).round() as usize)
            .map(|d| d.cost.cpu_secs_per_1000.clone())
            .unwrap_or_default(),
        redis_commands_per_job: pick(|d| d.cost.redis_commands_per_job),
        redis_script_calls_per_job: pick(|d| d.cost.redis_script_calls_per_job),
        foreign_clients: foreign,
    };
    Drain {
        jobs_per_sec: pick(|d| d.jobs_per_sec),
        cpu_secs_per_1000: pick(|d| d.cpu_secs_per_1000),
        p50_ms: pick(|d| d.p50_ms),
        p99_ms: pick(|d| d.p99_ms),
        peak_rss_mib: pick(|d| d.peak_rss_mib),
        redis_cpu_secs_per_1000: redis_cpu.filter(|v| !v.is_empty()).map(median),
        cost,
    }
}

/// What every scenario sets up: its own names, a fresh sandbox, the topology declared, and a
/// confirming publisher.
struct Stage {
    tag: String,
    topology: Topology,
    sandbox: Sandbox,
    setup: Channel,
    publisher: Publisher,
}

impl Stage {
    async fn open(connection: &Connection, name: &str, users: usize, rate_limit: Option<(u32, u32)>) -> Self {
        let tag = format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..6]);
        let topology = topology(&tag);
        let sandbox = Sandbox::start(users, rate_limit).await;
        let setup = connection.create_channel().await.unwrap();
        topology::declare(connection, &topology).await.unwrap();
        let publisher = Publisher::open(connection).await.unwrap();
        Self {
            tag,
            topology,
            sandbox,
            setup,
            publisher,
        }
    }

    /// Queues `agent.status` jobs `jobs` (job n for user n mod `users`).
    async fn publish_agent_jobs(&self, jobs: std::ops::Range<usize>, users: usize, presence: &str) {
        let bodies = jobs
            .map(|n| serde_json::to_vec(&agent_job(n, users, presence)).unwrap())
            .collect();
        publish_jobs(&self.publisher, &self.topology.jobs_exchange, bodies).await;
    }

    fn worker_env(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        worker_env(&self.tag, &self.sandbox, &self.topology, extra)
    }

    async fn capture_audit(&self) -> lapin::Consumer {
        capture_unacked(&self.setup, &self.topology.audit_exchange).await
    }

    /// Deletes the scenario's queues (the sandbox stops when dropped).
    async fn close(self) {
        remove(&self.setup, &self.topology).await;
    }
}

/// The plumbing alone, in this process: consume → one Redis round trip → one HTTP request to
/// the sandbox → two confirmed publishes → ack, `CONCURRENCY` at a time. Its cost's window runs
/// from the first consume to the last audit event read.
async fn plumbing(connection: &Connection, settings: &Settings, services: &Services, run: usize) -> Drain {
    let stage = Stage::open(connection, &format!("plumbing{run}"), settings.jobs, None).await;
    let (topology, sandbox, publisher) = (&stage.topology, &stage.sandbox, &stage.publisher);
    let http = reqwest::Client::new();
    let token = Arc::new(sandbox.token(&http).await);
    // Its "audit events" are captured and read as the worker's are.
    let audit = stage.capture_audit().await;
    stage
        .publish_agent_jobs(0..settings.jobs, settings.jobs, "Available")
        .await;
    let jobs = settings.jobs;
    let reader = tokio::spawn(async move {
        let mut audit = audit;
        await_events(&mut audit, jobs, Duration::from_secs(600), |_| true)
            .await
            .len()
    });

    let redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let consumer_channel = connection.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            topology.work_queue.as_str().into(),
            "plumbing".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(settings.jobs)));
    let mut meter = Meter::new(services, None, sandbox, &RedisUnderTest::default()).await;
    let window = meter.start().await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..settings.jobs {
        let delivery = consumer.next().await.unwrap().unwrap();
        let slot = slots.clone().acquire_owned().await.unwrap();
        let (mut redis, http, token, publisher) =
            (redis.clone(), http.clone(), token.clone(), publisher.clone());
        let (base, audit, crm, latencies) = (
            sandbox.base.clone(),
            topology.audit_exchange.clone(),
            topology.crm_exchange.clone(),
            latencies.clone(),
        );
        tasks.spawn(async move {
            let began = Instant::now();
            let job: Value = serde_json::from_slice(&delivery.data).unwrap();
            let key = format!("bench:plumbing:{}", job["idempotency_key"].as_str().unwrap());
            let _: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg("1")
                .arg("NX")
                .arg("EX")
                .arg(60)
                .query_async(&mut redis)
                .await
                .unwrap();
            let user = job["payload"]["user_id"].as_str().unwrap();
            let reply = http
                .patch(format!("{base}/api/v2/users/{user}/presences/purecloud"))
                .bearer_auth(token.as_str())
                .json(&json!({"presenceDefinition": {"id": sandbox::presence_definition_id("Available")}}))
                .send()
                .await
                .unwrap();
            assert!(reply.status().is_success());
            let body = reply.bytes().await.unwrap().to_vec();
            for exchange in [&audit, &crm] {
                let event = json!({"job_id": job["job_id"], "presence": serde_json::from_slice::<Value>(&body).unwrap()});
                publisher
                    .publish(exchange, "bench", &serde_json::to_vec(&event).unwrap(), job_properties())
                    .await
                    .unwrap();
            }
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            latencies.lock().unwrap().push(began.elapsed().as_secs_f64() * 1000.0);
            drop(slot);
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let _ = reader.await;
    let cost = meter.finish(&window, settings.jobs).await;
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort_by(f64::total_cmp);
    stage.close().await;
    Drain {
        jobs_per_sec: settings.jobs as f64 / elapsed,
        cpu_secs_per_1000: cost.cpu_secs_per_1000.worker,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        // The plumbing shares this process with the bench; its memory is not comparable.
        peak_rss_mib: 0.0,
        redis_cpu_secs_per_1000: None,
        cost,
    }
}

/// How a worker drain differs from the standalone one: its Redis settings (they override
/// `worker_env`'s), and for a topology of its own the pids of that Redis's servers, whose CPU the
/// drain then reports, with the URL of the one whose `INFO commandstats` it reads (the primary).
#[derive(Default)]
struct RedisUnderTest {
    env: Vec<(String, String)>,
    topology: Option<(Vec<u32>, String)>,
}

/// The worker draining `settings.jobs` pre-published `agent.status` jobs. Its cost's window runs
/// from the first audit event read to the last, as its jobs/s.
async fn worker_drain(
    connection: &Connection,
    settings: &Settings,
    services: &Services,
    name: &str,
    bulk: bool,
    redis: &RedisUnderTest,
) -> Drain {
    let stage = Stage::open(connection, name, settings.jobs, None).await;
    let mut audit = stage.capture_audit().await;
    stage
        .publish_agent_jobs(0..settings.jobs, settings.jobs, "Available")
        .await;

    let mut extra: Vec<(&str, String)> = vec![
        ("BULK_PRESENCE", if bulk { "on" } else { "off" }.into()),
        (
            "BULK_WINDOW_MS",
            std::env::var("BENCH_BULK_WINDOW_MS").unwrap_or("25".into()),
        ),
        ("GENESYS_RATE_LIMIT_RPS", "1000000".into()),
        ("GENESYS_RATE_LIMIT_BURST", "100000".into()),
        ("GENESYS_RATE_LIMIT_SCOPE", "replica".into()),
    ];
    extra.extend(redis.env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let env = stage.worker_env(&extra);
    let worker = start_worker(&env);
    let pid = worker.id().unwrap();
    let mut meter = Meter::new(services, Some(pid), &stage.sandbox, redis).await;
    let mut events = await_events(&mut audit, 1, Duration::from_secs(600), |_| true).await;
    let window = meter.start().await;
    events.extend(
        await_events(
            &mut audit,
            settings.jobs.saturating_sub(1),
            Duration::from_secs(600),
            |_| true,
        )
        .await,
    );
    let cost = meter.finish(&window, events.len().saturating_sub(1)).await;
    // From the first outcome to the last: the drain, not the process start.
    let elapsed = match (events.first(), events.last()) {
        (Some((first, _)), Some((last, _))) => last.duration_since(*first),
        _ => Duration::ZERO,
    };
    let rss = peak_rss_mib(pid);
    drop(worker);
    let mut latencies: Vec<f64> = events
        .iter()
        .filter_map(|(_, e)| e["latency_ms"].as_f64())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let applied = events.iter().filter(|(_, e)| e["outcome"] == "applied").count();
    if applied != settings.jobs {
        eprintln!("  warning: {applied} of {} jobs applied", settings.jobs);
    }
    stage.close().await;
    Drain {
        jobs_per_sec: events.len().saturating_sub(1) as f64 / elapsed.as_secs_f64(),
        cpu_secs_per_1000: cost.cpu_secs_per_1000.worker,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        peak_rss_mib: rss,
        redis_cpu_secs_per_1000: redis.topology.is_some().then_some(cost.cpu_secs_per_1000.redis),
        cost,
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Durability {
    /// Redis primary + 1 replica behind 3 Sentinels, all on loopback.
    topology: &'static str,
    wait_timeout_ms: u64,
    /// Medians of `--runs` drains each, `REDIS_WAIT_REPLICAS=0` and `=1`.
    wait_off: Drain,
    wait_on: Drain,
    /// `wait_on.jobs_per_sec / wait_off.jobs_per_sec`.
    ratio_on_off: f64,
    /// The same ratio for each pair of drains run back to back.
    ratio_on_off_per_run: Vec<f64>,
    runs_off: Vec<Drain>,
    runs_on: Vec<Drain>,
}

/// The `bulk-off` drain against Redis behind Sentinel, without and with `REDIS_WAIT_REPLICAS=1`
/// (`WAIT 1 <timeout>` after each claim and each commit), on one topology started for it. The two
/// alternate (off-on, on-off, ...), so drift of the machine weighs on both alike.
async fn durability(connection: &Connection, settings: &Settings, services: &Services) -> Durability {
    let sentinel = SentinelRedis::start().await;
    let primary = format!("redis://127.0.0.1:{}/", sentinel.primary_port().await);
    let mut pids = Vec::new();
    for port in sentinel.redis_ports() {
        let info = redis_cli(port, &["INFO", "server"])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(pid) = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
        {
            pids.push(pid);
        }
    }
    let with_wait = |replicas: u64| {
        let mut env = sentinel.redis_env();
        env.push(("REDIS_WAIT_REPLICAS".into(), replicas.to_string()));
        env.push((
            "REDIS_WAIT_TIMEOUT_MS".into(),
            DEFAULT_REDIS_WAIT_TIMEOUT_MS.to_string(),
        ));
        RedisUnderTest {
            env,
            topology: Some((pids.clone(), primary.clone())),
        }
    };
    let (off, on) = (with_wait(0), with_wait(1));
    let (mut runs_off, mut runs_on) = (Vec::new(), Vec::new());
    for run in 0..settings.runs {
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for wait in order {
            let (redis, runs) = if wait {
                (&on, &mut runs_on)
            } else {
                (&off, &mut runs_off)
            };
            let name = format!("durwait{}-{run}", u8::from(wait));
            let drain = worker_drain(connection, settings, services, &name, false, redis).await;
            println!(
                "  durability WAIT {} run {}: {:.0} jobs/s",
                u8::from(wait),
                run + 1,
                drain.jobs_per_sec
            );
            runs.push(drain);
        }
    }
    drop(sentinel);
    let (wait_off, wait_on) = (median_drain(&runs_off), median_drain(&runs_on));
    Durability {
        topology: "redis primary + 1 replica + 3 sentinels (loopback)",
        wait_timeout_ms: DEFAULT_REDIS_WAIT_TIMEOUT_MS,
        ratio_on_off: wait_on.jobs_per_sec / wait_off.jobs_per_sec,
        ratio_on_off_per_run: runs_off
            .iter()
            .zip(&runs_on)
            .map(|(off, on)| on.jobs_per_sec / off.jobs_per_sec)
            .collect(),
        wait_off,
        wait_on,
        runs_off,
        runs_on,
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Fidelity {
    replicas: usize,
    configured_per_sec: u32,
    allowed_per_sec: u32,
    achieved_per_sec: f64,
    achieved_share: f64,
    throttled_share: f64,
}

/// Replicas sharing a budget of `configured` calls/s against a sandbox that allows `allowed`:
/// how much of the allowance they use, and how often they are throttled. With `allowed` below
/// `configured`, the workers learn the allowance from the organization limits API.
async fn fidelity(
    connection: &Connection,
    settings: &Settings,
    replicas: usize,
    configured: u32,
    allowed: u32,
) -> Fidelity {
    let jobs = (configured.max(allowed) as usize) * (settings.fidelity_secs as usize + 10);
    let stage = Stage::open(
        connection,
        &format!("fidelity{replicas}-{allowed}of{configured}"),
        jobs,
        Some((allowed, allowed)),
    )
    .await;
    let http = reqwest::Client::new();
    stage.publish_agent_jobs(0..jobs, jobs, "Busy").await;
    let env = stage.worker_env(&[
        ("BULK_PRESENCE", "off".into()),
        ("GENESYS_RATE_LIMIT_RPS", configured.to_string()),
        ("GENESYS_RATE_LIMIT_BURST", configured.to_string()),
        ("GENESYS_RATE_LIMIT_SCOPE", "fleet".into()),
        ("WORKER_CONCURRENCY", "16".into()),
    ]);
    let workers: Vec<Child> = (0..replicas)
        .map(|_| {
            let mut env = env.clone();
            env.retain(|(k, _)| k != "ADMIN_ADDR");
            env.push(("ADMIN_ADDR".into(), format!("127.0.0.1:{}", free_port())));
            start_worker(&env)
        })
        .collect();
    // Past the start (token grant, presence directory, the first burst), then a steady window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = stage.sandbox.answered(&http).await;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(settings.fidelity_secs)).await;
    let after = stage.sandbox.answered(&http).await;
    let seconds = window.elapsed().as_secs_f64();
    drop(workers);
    let count = |map: &HashMap<u64, u64>, ok: bool| -> u64 {
        map.iter()
            .filter(|(status, _)| (**status == 429) != ok)
            .map(|(_, n)| *n)
            .sum()
    };
    let answered = count(&after, true) - count(&before, true);
    let throttled = count(&after, false) - count(&before, false);
    stage.close().await;
    Fidelity {
        replicas,
        configured_per_sec: configured,
        allowed_per_sec: allowed,
        achieved_per_sec: answered as f64 / seconds,
        achieved_share: answered as f64 / seconds / f64::from(allowed),
        throttled_share: throttled as f64 / (answered + throttled).max(1) as f64,
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Handover {
    agents: usize,
    budget_per_sec: u32,
    api_calls: u64,
    wall_secs: f64,
    ideal_secs: f64,
    ratio_to_ideal: f64,
}

/// A shift handover of `settings.handover` agents as one `batch`, at 5 calls/s.
async fn handover(connection: &Connection, settings: &Settings) -> Handover {
    const BUDGET: u32 = 5;
    let agents = settings.handover;
    let stage = Stage::open(connection, "handover", agents, Some((BUDGET, 2 * BUDGET))).await;
    let http = reqwest::Client::new();
    let mut audit = stage.capture_audit().await;
    let env = stage.worker_env(&[
        ("GENESYS_RATE_LIMIT_RPS", BUDGET.to_string()),
        ("GENESYS_RATE_LIMIT_BURST", BUDGET.to_string()),
    ]);
    let worker = start_worker(&env);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let children: Vec<Value> = (0..agents).map(|n| agent_job(n, agents, "On Queue")).collect();
    let batch = json!({
        "job_id": Uuid::new_v4(),
        "kind": "batch",
        "idempotency_key": format!("handover-{}", stage.tag),
        "payload": {"jobs": children},
    });
    let started = Instant::now();
    stage
        .publisher
        .publish(
            &stage.topology.jobs_exchange,
            "batch",
            &serde_json::to_vec(&batch).unwrap(),
            job_properties(),
        )
        .await
        .unwrap();
    let summary = await_events(&mut audit, 1, Duration::from_secs(600), |e| e["kind"] == "batch").await;
    let wall = summary
        .first()
        .map(|(at, _)| at.duration_since(started))
        .unwrap_or_default()
        .as_secs_f64();
    if let Some((_, event)) = summary.first() {
        println!("  handover summary: {}", event["summary"]["counts"]);
    }
    drop(worker);
    let calls: u64 = stage.sandbox.answered(&http).await.values().sum();
    stage.close().await;
    let ideal = calls as f64 / f64::from(BUDGET);
    Handover {
        agents,
        budget_per_sec: BUDGET,
        api_calls: calls,
        wall_secs: wall,
        ideal_secs: ideal,
        ratio_to_ideal: wall / ideal,
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Backlog {
    queued: usize,
    publish_secs: f64,
    processed_in_window: usize,
    peak_rss_mib: f64,
}

/// The worker's memory while a backlog of `settings.backlog` jobs waits in its queue.
async fn backlog(connection: &Connection, settings: &Settings) -> Backlog {
    let users = 20_000;
    let stage = Stage::open(connection, "backlog", users, None).await;
    let mut audit = stage.capture_audit().await;
    let started = Instant::now();
    let mut published = 0;
    while published < settings.backlog {
        let n = (settings.backlog - published).min(50_000);
        stage
            .publish_agent_jobs(published..published + n, users, "Available")
            .await;
        published += n;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let env = stage.worker_env(&[
        ("GENESYS_RATE_LIMIT_RPS", "1000000".into()),
        ("GENESYS_RATE_LIMIT_BURST", "100000".into()),
        ("GENESYS_RATE_LIMIT_SCOPE", "replica".into()),
    ]);
    let worker = start_worker(&env);
    let pid = worker.id().unwrap();
    let processed = await_events(&mut audit, usize::MAX, Duration::from_secs(20), |_| true)
        .await
        .len();
    let rss = peak_rss_mib(pid);
    drop(worker);
    stage.close().await;
    Backlog {
        queued: settings.backlog,
        publish_secs,
        processed_in_window: processed,
        peak_rss_mib: rss,
    }
}

#[tokio::main]
async fn main() {
    let settings = Settings::from_args();
    let url = ServiceUrls::parse(&amqp_url()).expect("AMQP_URL is a URL");
    let connection = broker::connect(&url)
        .await
        .expect("RabbitMQ answers (start it with scripts/services.sh up)");
    let load_at_start = load_average();
    println!("load average at the start: {load_at_start}");
    let services = Services::find().await;
    let mut report = serde_json::Map::new();
    report.insert(
        "machine".into(),
        json!({
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "jobs_per_drain": settings.jobs,
            "runs": settings.runs,
            "concurrency": CONCURRENCY,
        }),
    );

    let mut drains: Vec<(&str, Drain)> = Vec::new();
    let mut drain_runs: HashMap<&str, Vec<Drain>> = HashMap::new();
    for (name, bulk) in [
        ("plumbing", None),
        ("bulk-off", Some(false)),
        ("bulk-on", Some(true)),
    ] {
        if !settings.wants(name) {
            continue;
        }
        let mut runs = Vec::new();
        for run in 0..settings.runs {
            let drain = match bulk {
                None => plumbing(&connection, &settings, &services, run).await,
                Some(bulk) => {
                    let name = format!("bulk{}{run}", if bulk { "on" } else { "off" });
                    let standalone = RedisUnderTest::default();
                    worker_drain(&connection, &settings, &services, &name, bulk, &standalone).await
                }
            };
            println!(
                "  {name} run {}: {:.0} jobs/s, {:.2} CPU s/1k jobs all processes, {:.2} Redis commands/job",
                run + 1,
                drain.jobs_per_sec,
                drain.cost.cpu_secs_per_1000.total,
                drain.cost.redis_commands_per_job
            );
            runs.push(drain);
        }
        drain_runs.insert(name, runs.clone());
        drains.push((name, median_drain(&runs)));
    }
    if !drains.is_empty() {
        let baseline = drains
            .iter()
            .find(|(name, _)| *name == "plumbing")
            .map(|(_, d)| d.jobs_per_sec);
        let plumbing_cpu = drains
            .iter()
            .find(|(name, _)| *name == "plumbing")
            .map(|(_, d)| d.cost.cpu_secs_per_1000.total);
        let vs = |value: f64, base: Option<f64>| {
            base.map(|b| format!("{:.0}%", value / b * 100.0))
                .unwrap_or_default()
        };
        println!();
        println!(
            "| {:<9} | {:>8} | {:>11} | {:>8} | {:>8} | {:>9} | {:>14} | {:>13} |",
            "drain", "jobs/s", "vs plumbing", "p50 ms", "p99 ms", "peak RSS", "Redis cmds/job", "scripts/job"
        );
        println!(
            "|{:-<11}|{:->10}|{:->13}|{:->10}|{:->10}|{:->11}|{:->16}|{:->15}|",
            "", "", "", "", "", "", "", ""
        );
        let mut json_drains = serde_json::Map::new();
        for (name, drain) in &drains {
            let ratio = baseline.map(|b| drain.jobs_per_sec / b);
            println!(
                "| {:<9} | {:>8.0} | {:>11} | {:>8.1} | {:>8.1} | {:>9} | {:>14.2} | {:>13.2} |",
                name,
                drain.jobs_per_sec,
                vs(drain.jobs_per_sec, baseline),
                drain.p50_ms,
                drain.p99_ms,
                if drain.peak_rss_mib > 0.0 {
                    format!("{:.0} MiB", drain.peak_rss_mib)
                } else {
                    "-".into()
                },
                drain.cost.redis_commands_per_job,
                drain.cost.redis_script_calls_per_job,
            );
            let mut value = serde_json::to_value(drain).unwrap();
            value["ratio_to_plumbing"] = json!(ratio);
            value["cpu_ratio_to_plumbing"] =
                json!(plumbing_cpu.map(|b| drain.cost.cpu_secs_per_1000.total / b));
            value["runs"] = json!(drain_runs.get(name));
            json_drains.insert((*name).into(), value);
        }
        println!();
        println!(
            "CPU seconds per 1,000 jobs over the drain window, by process; total = worker + bench reader + RabbitMQ + Redis + sandbox"
        );
        println!(
            "(for plumbing the worker is the bench process, its audit reader included; the split is the run with the median total)"
        );
        println!(
            "| {:<9} | {:>7} | {:>11} | {:>7} | {:>12} | {:>8} | {:>7} | {:>7} |",
            "drain", "total", "vs plumbing", "worker", "bench reader", "RabbitMQ", "Redis", "sandbox"
        );
        println!(
            "|{:-<11}|{:->9}|{:->13}|{:->9}|{:->14}|{:->10}|{:->9}|{:->9}|",
            "", "", "", "", "", "", "", ""
        );
        for (name, drain) in &drains {
            let cpu = &drain.cost.cpu_secs_per_1000;
            println!(
                "| {:<9} | {:>7.2} | {:>11} | {:>7.2} | {:>12} | {:>8.2} | {:>7.2} | {:>7.2} |",
                name,
                cpu.total,
                vs(cpu.total, plumbing_cpu),
                cpu.worker,
                if *name == "plumbing" {
                    "(in worker)".to_string()
                } else {
                    format!("{:.2}", cpu.bench_reader)
                },
                cpu.rabbitmq,
                cpu.redis,
                cpu.sandbox,
            );
        }
        for (name, drain) in &drains {
            if !drain.cost.foreign_clients.is_empty() {
                println!(
                    "note: {name}: other processes were connected to RabbitMQ/Redis during the drain ({}): their load is in the RabbitMQ and Redis columns and the command counts",
                    drain.cost.foreign_clients.join(", ")
                );
            }
        }
        report.insert("drains".into(), Value::Object(json_drains));
    }
    if settings.wants("durability") {
        let started = Instant::now();
        let result = durability(&connection, &settings, &services).await;
        println!(
            "  durability: {:.0} s with the topology's start",
            started.elapsed().as_secs_f64()
        );
        let standalone = drains
            .iter()
            .find(|(name, _)| *name == "bulk-off")
            .map(|(_, d)| d.clone());
        println!();
        println!(
            "| {:<26} | {:>8} | {:>11} | {:>14} | {:>15} | {:>15} | {:>14} | {:>8} | {:>8} | {:>9} |",
            "durability (bulk-off)",
            "jobs/s",
            "vs WAIT off",
            "CPU s/1k jobs",
            "Redis CPU s/1k",
            "total CPU s/1k",
            "Redis cmds/job",
            "p50 ms",
            "p99 ms",
            "peak RSS"
        );
        println!(
            "|{:-<28}|{:->10}|{:->13}|{:->16}|{:->17}|{:->17}|{:->16}|{:->10}|{:->10}|{:->11}|",
            "", "", "", "", "", "", "", "", "", ""
        );
        let rows = [
            ("standalone redis", standalone.as_ref()),
            ("sentinel, WAIT_REPLICAS=0", Some(&result.wait_off)),
            ("sentinel, WAIT_REPLICAS=1", Some(&result.wait_on)),
        ];
        for (label, drain) in rows {
            let Some(drain) = drain else { continue };
            println!(
                "| {:<26} | {:>8.0} | {:>11} | {:>14.2} | {:>15} | {:>15.2} | {:>14.2} | {:>8.1} | {:>8.1} | {:>9} |",
                label,
                drain.jobs_per_sec,
                format!(
                    "{:.0}%",
                    drain.jobs_per_sec / result.wait_off.jobs_per_sec * 100.0
                ),
                drain.cpu_secs_per_1000,
                format!("{:.2}", drain.cost.cpu_secs_per_1000.redis),
                drain.cost.cpu_secs_per_1000.total,
                drain.cost.redis_commands_per_job,
                drain.p50_ms,
                drain.p99_ms,
                format!("{:.0} MiB", drain.peak_rss_mib),
            );
        }
        println!(
            "REDIS_WAIT_REPLICAS=1 (REDIS_WAIT_TIMEOUT_MS {}): {:.2} of the jobs/s without it (medians of {} run(s) each; per pair of runs back to back: {})",
            result.wait_timeout_ms,
            result.ratio_on_off,
            settings.runs,
            result
                .ratio_on_off_per_run
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut value = serde_json::to_value(&result).unwrap();
        value["standalone_bulk_off"] = json!(standalone);
        report.insert("durability".into(), value);
    }
    if settings.wants("fidelity") {
        let mut results = Vec::new();
        // As configured, then Genesys allowing a third of the configuration.
        for (configured, allowed) in [(20, 20), (12, 4)] {
            for replicas in [1, 3] {
                let result = fidelity(&connection, &settings, replicas, configured, allowed).await;
                println!(
                    "budget fidelity, {} replica(s), {}/s configured: {:.2}/s of {}/s allowed ({:.1}%), 429s {:.2}%",
                    result.replicas,
                    result.configured_per_sec,
                    result.achieved_per_sec,
                    result.allowed_per_sec,
                    result.achieved_share * 100.0,
                    result.throttled_share * 100.0
                );
                results.push(result);
            }
        }
        report.insert("fidelity".into(), serde_json::to_value(results).unwrap());
    }
    if settings.wants("handover") {
        let result = handover(&connection, &settings).await;
        println!(
            "handover of {} agents at {}/s: {} API calls, {:.1} s (ideal {:.1} s, ratio {:.2})",
            result.agents,
            result.budget_per_sec,
            result.api_calls,
            result.wall_secs,
            result.ideal_secs,
            result.ratio_to_ideal
        );
        report.insert("handover".into(), serde_json::to_value(result).unwrap());
    }
    if settings.wants("backlog") {
        let result = backlog(&connection, &settings).await;
        println!(
            "backlog of {} jobs (published in {:.0} s): worker peak RSS {:.1} MiB ({} jobs done in 20 s)",
            result.queued, result.publish_secs, result.peak_rss_mib, result.processed_in_window
        );
        report.insert("backlog".into(), serde_json::to_value(result).unwrap());
    }
    let load_at_end = load_average();
    println!("load average at the start: {load_at_start}; at the end: {load_at_end}");
    report["machine"]["load_average_start"] = json!(load_at_start);
    report["machine"]["load_average_end"] = json!(load_at_end);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(std::path::Path::new("target"))
        .join("bench");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("throughput.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&Value::Object(report)).unwrap(),
    )
    .unwrap();
    println!("\nwritten: {}", path.display());
}
