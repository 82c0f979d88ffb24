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
//!
//! `audit-log` (only when named): the `bulk-off` and `bulk-on` drains with the verifiable audit
//! log off and on (signed checkpoints), alternating per run; the log's Redis keys after each.
//!
//! The OAuth client pool against one client (`GENESYS_CLIENTS`; README, "OAuth client pool"),
//! run only when named in `--only` (together about 3 minutes, which would take the default suite of
//! about 7 to 10), once each whatever `--runs` says:
//! - `pool-status`: 10,000 queued `interaction.status` jobs (one per seeded workitem, Open → In
//!   Progress: a read and a PATCH each) against a sandbox allowing 5 requests/s (burst 10) per
//!   OAuth client, the worker's budget 5/s per client, 16 jobs in flight
//!   (`BENCH_POOL_CONCURRENCY`; see [`pool_status`]); with 1 client, then with 3. The rate over a
//!   steady window (the first 5 s after the first outcome skipped, then 45 s; 15 s with
//!   `--quick`): jobs/s, Genesys calls/s, the share answered 429, calls per client.
//! - `pool-handover`: the `handover` scenario (10,000 agents as one batch, each client at 5/s)
//!   with 1 client, then with 3: wall seconds, the speed-up, API calls, 429s.

use std::collections::{BTreeMap, HashMap};
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
/// Jobs in flight in the drains (the plumbing and the worker alike), prefetch twice that:
/// `BENCH_CONCURRENCY`, 64 by default.
fn concurrency() -> usize {
    std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|c| (1..=16_384).contains(c))
        .unwrap_or(64)
}

fn prefetch() -> u16 {
    (concurrency() * 2).min(usize::from(u16::MAX)) as u16
}

struct Settings {
    jobs: usize,
    runs: usize,
    handover: usize,
    backlog: usize,
    fidelity_secs: u64,
    /// Jobs published one at a time by `single`.
    single: usize,
    /// `interaction.status` jobs queued for `pool-status`, and its steady window.
    pool_status_jobs: usize,
    pool_status_secs: u64,
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
            single: std::env::var("BENCH_SINGLE_JOBS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(if quick { 100 } else { 300 }),
            pool_status_jobs: if quick { 2_000 } else { 10_000 },
            pool_status_secs: if quick { 15 } else { 45 },
            only: value("--only").map(|v| v.split(',').map(str::to_string).collect()),
        }
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == scenario))
    }

    /// Scenarios left out of the default suite run only when `--only` names them.
    fn names(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_some_and(|only| only.iter().any(|o| o == scenario))
    }
}

/// A `genesys-sandbox` process.
struct Sandbox {
    /// Held so the process is killed when the scenario drops the sandbox.
    _process: Child,
    pid: Option<u32>,
    base: String,
}

/// What a scenario's sandbox seeds and accepts beyond its defaults.
#[derive(Default)]
struct SandboxExtras {
    /// Seeded workitems (`--workitems`; the sandbox's default when None).
    workitems: Option<usize>,
    /// OAuth clients accepted besides the default one (`--client`; the sandbox's defaults when
    /// empty).
    clients: Vec<(&'static str, &'static str)>,
}

impl Sandbox {
    async fn start_with(users: usize, rate_limit: Option<(u32, u32)>, extras: SandboxExtras) -> Self {
        let port = free_port();
        let (rps, burst) = rate_limit.unwrap_or((0, 1));
        let mut command = Command::new(sandbox_bin());
        command
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--users", &users.to_string()])
            .args(["--rate-limit-rps", &rps.to_string()])
            .args(["--rate-limit-burst", &burst.to_string()]);
        if let Some(workitems) = extras.workitems {
            command.args(["--workitems", &workitems.to_string()]);
        }
        if !extras.clients.is_empty() {
            // The default client too, for the bench's own reads.
            let default = (sandbox::DEFAULT_CLIENT_ID, sandbox::DEFAULT_CLIENT_SECRET);
            for (id, secret) in std::iter::once(default).chain(extras.clients) {
                command.args(["--client", &format!("{id}:{secret}")]);
            }
        }
        let child = command
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

    /// The whole of `GET /sandbox/stats`.
    async fn stats(&self, http: &reqwest::Client) -> Value {
        get_json(http, &format!("{}/sandbox/stats", self.base), None).await
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
        ("WORKER_CONCURRENCY".into(), concurrency().to_string()),
        ("WORKER_PREFETCH".into(), prefetch().to_string()),
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
    start_worker_bin(env, None)
}

/// The worker from binary `bin` (None: as [`start_worker`]); `BENCH_BASELINE_WORKER_BIN` names
/// an earlier build to measure beside this one in the same run.
fn start_worker_bin(env: &[(String, String)], bin: Option<&str>) -> Child {
    let bin = bin
        .map(str::to_string)
        .unwrap_or_else(|| std::env::var("BENCH_WORKER_BIN").unwrap_or_else(|_| BIN.to_string()));
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

/// `INFO commandstats`: calls and microseconds by command (`cmdstat_<name>:calls=N,usec=U,...`).
fn command_calls(info: &str) -> HashMap<String, (u64, u64)> {
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| -> Option<u64> {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_string(), (field("calls")?, field("usec")?)))
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
    /// Microseconds Redis spent running those scripts, per job (`usec` of `INFO commandstats`;
    /// most of Redis's time in a drain).
    redis_script_usec_per_job: f64,
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
    calls: HashMap<String, (u64, u64)>,
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
            let calls = |r: &Reading| r.calls.get(name).map_or(0, |c| c.0);
            calls(&end).saturating_sub(calls(start))
        };
        let usec = |name: &str| {
            let usec = |r: &Reading| r.calls.get(name).map_or(0, |c| c.1);
            usec(&end).saturating_sub(usec(start))
        };
        let commands: u64 = end
            .calls
            .keys()
            .filter(|name| *name != "info")
            .map(|name| delta(name))
            .sum();
        let scripts: u64 = SCRIPT_COMMANDS.iter().map(|name| delta(name)).sum();
        let script_usec: u64 = SCRIPT_COMMANDS.iter().map(|name| usec(name)).sum();
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
            redis_script_usec_per_job: script_usec as f64 / jobs,
            foreign_clients: self
                .foreign
                .iter()
                .map(|pid| format!("{pid} {}", process_name(*pid)))
                .collect(),
        }
    }
}

/// "1 client", "3 clients".
fn clients_label(clients: usize) -> String {
    format!("{clients} client{}", if clients == 1 { "" } else { "s" })
}

/// The load average (1, 5, 15 minutes).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A write-only `agent.status` job (`respect_out_of_office: false`, so no policy reads the
/// agent's state first): the same work as the plumbing's, and as the worker did before the
/// presence policies. [`agent_job_with_policies`] keeps the defaults.
fn agent_job(n: usize, users: usize, presence: &str) -> Value {
    let mut job = agent_job_with_policies(n, users, presence);
    job["payload"]["respect_out_of_office"] = json!(false);
    job
}

fn agent_job_with_policies(n: usize, users: usize, presence: &str) -> Value {
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
    publish_jobs_as(publisher, exchange, "agent.status", bodies).await;
}

/// Publishes `bodies` to `exchange` with `routing_key` (the jobs' kind), confirms in rounds.
async fn publish_jobs_as(publisher: &Publisher, exchange: &str, routing_key: &str, bodies: Vec<Vec<u8>>) {
    let mut bodies = bodies.into_iter().peekable();
    while bodies.peek().is_some() {
        let chunk: Vec<(Vec<u8>, BasicProperties)> = bodies
            .by_ref()
            .take(5_000)
            .map(|b| (b, job_properties()))
            .collect();
        publisher
            .publish_all(exchange, routing_key, chunk)
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
                // The log's checkpoints share the audit exchange; they are not outcomes.
                if delivery.routing_key.as_str() == testkit::CHECKPOINT_ROUTING_KEY {
                    continue;
                }
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
    /// The verifiable audit log's Redis keys once the sealer caught up (None: the log was off).
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_log: Option<LogFootprint>,
    cost: Cost,
}

/// The audit log's state in Redis after a drain: the sealer keeps the compact range, O(log n)
/// hashes, and drops the leaves it folded.
#[derive(Debug, Clone, serde::Serialize)]
struct LogFootprint {
    /// `log:size`: indexes given.
    size: u64,
    /// Leaves not yet folded into the tree (`HLEN log:leaves`) when the bench stopped waiting.
    unsealed: u64,
    /// Seconds from the last outcome until `unsealed` reached 0 (or the bench gave up, at 10).
    seal_lag_secs: f64,
    /// `MEMORY USAGE` of `log:tree`, `log:leaves`, `log:size`, `log:checkpoint`, in bytes.
    bytes: u64,
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
        redis_script_usec_per_job: pick(|d| d.cost.redis_script_usec_per_job),
        foreign_clients: foreign,
    };
    Drain {
        jobs_per_sec: pick(|d| d.jobs_per_sec),
        cpu_secs_per_1000: pick(|d| d.cpu_secs_per_1000),
        p50_ms: pick(|d| d.p50_ms),
        p99_ms: pick(|d| d.p99_ms),
        peak_rss_mib: pick(|d| d.peak_rss_mib),
        redis_cpu_secs_per_1000: redis_cpu.filter(|v| !v.is_empty()).map(median),
        // The largest: what the log may hold at worst.
        audit_log: runs
            .iter()
            .filter_map(|d| d.audit_log.clone())
            .max_by_key(|log| log.bytes),
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
        Self::open_with(connection, name, users, rate_limit, SandboxExtras::default()).await
    }

    async fn open_with(
        connection: &Connection,
        name: &str,
        users: usize,
        rate_limit: Option<(u32, u32)>,
        extras: SandboxExtras,
    ) -> Self {
        let tag = format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..6]);
        let topology = topology(&tag);
        let sandbox = Sandbox::start_with(users, rate_limit, extras).await;
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
/// the sandbox → two confirmed publishes → ack, [`concurrency`] at a time. Its cost's window runs
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
        .basic_qos(prefetch(), BasicQosOptions::default())
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
    let slots = Arc::new(Semaphore::new(concurrency()));
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
        audit_log: None,
        cost,
    }
}

/// How a worker drain differs from the standalone one: its Redis settings and any other (they
/// override `worker_env`'s), and for a topology of its own the pids of that Redis's servers, whose CPU the
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
    bin: Option<&str>,
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
    let worker = start_worker_bin(&env, bin);
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
    let redis_at = redis
        .topology
        .as_ref()
        .map_or_else(redis_url, |(_, url)| url.clone());
    let audit_log = log_footprint(&redis_at, &format!("bench:{}:", stage.tag)).await;
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
        audit_log,
        cost,
    }
}

/// The audit log's keys under `prefix` once the sealer has folded every leaf (waiting up to
/// 10 s); None when the worker kept no log.
async fn log_footprint(url: &str, prefix: &str) -> Option<LogFootprint> {
    let mut redis = redis_connection(url).await.ok()?;
    let key = |part: &str| format!("{prefix}log:{part}");
    let size: Option<u64> = redis::cmd("GET")
        .arg(key("size"))
        .query_async(&mut redis)
        .await
        .ok()?;
    let size = size?;
    let started = Instant::now();
    let mut unsealed: u64;
    loop {
        unsealed = redis::cmd("HLEN")
            .arg(key("leaves"))
            .query_async(&mut redis)
            .await
            .ok()?;
        if unsealed == 0 || started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut bytes = 0;
    for part in ["tree", "leaves", "size", "checkpoint"] {
        let usage: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key(part))
            .query_async(&mut redis)
            .await
            .ok()?;
        bytes += usage.unwrap_or(0);
    }
    Some(LogFootprint {
        size,
        unsealed,
        seal_lag_secs: started.elapsed().as_secs_f64(),
        bytes,
    })
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

/// `--runs` worker drains with each of two settings (`[off, on]`), alternating (off-on, on-off,
/// ...) so that drift of the machine weighs on both alike; returns the drains of each.
async fn alternating_drains(
    connection: &Connection,
    settings: &Settings,
    services: &Services,
    label: &str,
    bulk: bool,
    [off, on]: [&RedisUnderTest; 2],
) -> (Vec<Drain>, Vec<Drain>) {
    let (mut runs_off, mut runs_on) = (Vec::new(), Vec::new());
    for run in 0..settings.runs {
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for which in order {
            let (redis, runs) = if which {
                (on, &mut runs_on)
            } else {
                (off, &mut runs_off)
            };
            let tag: String = label
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_lowercase();
            let name = format!("{tag}{}{}-{run}", u8::from(bulk), u8::from(which));
            let drain = worker_drain(connection, settings, services, &name, bulk, redis, None).await;
            println!(
                "  {label} {} run {}: {:.0} jobs/s, {:.2} CPU s/1k jobs all processes, {:.2} Redis commands/job",
                if which { "on" } else { "off" },
                run + 1,
                drain.jobs_per_sec,
                drain.cost.cpu_secs_per_1000.total,
                drain.cost.redis_commands_per_job
            );
            runs.push(drain);
        }
    }
    (runs_off, runs_on)
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
    let (runs_off, runs_on) = alternating_drains(
        connection,
        settings,
        services,
        "durability WAIT",
        false,
        [&off, &on],
    )
    .await;
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
struct AuditLogCost {
    /// Per drain (`bulk-off`, `bulk-on`): medians of `--runs` drains with the log off and on.
    drains: BTreeMap<String, AuditLogPair>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct AuditLogPair {
    off: Drain,
    on: Drain,
    /// `on.jobs_per_sec / off.jobs_per_sec` of the medians (target >= 0.95).
    ratio_on_off: f64,
    /// The same ratio for each pair of drains run back to back.
    ratio_on_off_per_run: Vec<f64>,
    runs_off: Vec<Drain>,
    runs_on: Vec<Drain>,
}

/// The `bulk-off` and `bulk-on` drains with the verifiable audit log off (`AUDIT_LOG=off`) and on
/// (signed checkpoints every `AUDIT_CHECKPOINT_SECS`, its default), alternating per run (off-on,
/// on-off, ...) so that the machine's drift weighs on both alike.
async fn audit_log_cost(connection: &Connection, settings: &Settings, services: &Services) -> AuditLogCost {
    let dir = std::env::temp_dir().join(format!("bench-audit-key-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("bench.key");
    let made = std::process::Command::new(BIN)
        .args(["audit", "keygen", "bench-audit"])
        .arg("--out")
        .arg(&key)
        .stdout(Stdio::null())
        .status()
        .expect("the worker binary runs");
    assert!(made.success(), "audit keygen failed");
    let with_log = |on: bool| RedisUnderTest {
        env: if on {
            vec![
                ("AUDIT_LOG".into(), "on".into()),
                ("AUDIT_SIGNING_KEY_FILE".into(), key.display().to_string()),
            ]
        } else {
            vec![("AUDIT_LOG".into(), "off".into())]
        },
        topology: None,
    };
    let (off, on) = (with_log(false), with_log(true));
    let mut drains = BTreeMap::new();
    for bulk in [false, true] {
        let name = if bulk { "bulk-on" } else { "bulk-off" };
        let label = format!("audit-log {name}, log");
        let (runs_off, runs_on) =
            alternating_drains(connection, settings, services, &label, bulk, [&off, &on]).await;
        let (off, on) = (median_drain(&runs_off), median_drain(&runs_on));
        drains.insert(
            name.to_string(),
            AuditLogPair {
                ratio_on_off: on.jobs_per_sec / off.jobs_per_sec,
                ratio_on_off_per_run: runs_off
                    .iter()
                    .zip(&runs_on)
                    .map(|(off, on)| on.jobs_per_sec / off.jobs_per_sec)
                    .collect(),
                off,
                on,
                runs_off,
                runs_on,
            },
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    AuditLogCost { drains }
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
struct Single {
    /// The worker binary measured ("this build" or `BENCH_BASELINE_WORKER_BIN`).
    worker: String,
    jobs: usize,
    /// Publish to audit event read, one job in flight at a time.
    round_trip_p50_ms: f64,
    round_trip_p99_ms: f64,
    /// The worker's own `latency_ms` (claim to outcome).
    latency_p50_ms: f64,
    latency_p99_ms: f64,
}

/// One job in flight at a time: each job is published only once the previous one's audit event
/// arrived, so group commit and acks together have no company to wait for (a job alone must not
/// wait for any). `bin`: the worker binary (None: this build's).
async fn single(connection: &Connection, settings: &Settings, bin: Option<&str>, run: usize) -> Single {
    const WARMUP: usize = 20;
    let jobs = settings.single;
    let stage = Stage::open(connection, &format!("single{run}"), jobs + WARMUP, None).await;
    let mut audit = stage.capture_audit().await;
    let env = stage.worker_env(&[
        ("BULK_PRESENCE", "off".into()),
        ("GENESYS_RATE_LIMIT_RPS", "1000000".into()),
        ("GENESYS_RATE_LIMIT_BURST", "100000".into()),
        ("GENESYS_RATE_LIMIT_SCOPE", "replica".into()),
    ]);
    let worker = start_worker_bin(&env, bin);
    let mut round_trips = Vec::with_capacity(jobs);
    let mut latencies = Vec::with_capacity(jobs);
    for n in 0..jobs + WARMUP {
        let body = serde_json::to_vec(&agent_job(n, jobs + WARMUP, "Available")).unwrap();
        let sent = Instant::now();
        publish_jobs(&stage.publisher, &stage.topology.jobs_exchange, vec![body]).await;
        let event = await_events(&mut audit, 1, Duration::from_secs(60), |_| true).await;
        let Some((at, event)) = event.first() else {
            eprintln!("  warning: single: job {n} had no audit event within 60 s");
            break;
        };
        if n >= WARMUP {
            round_trips.push(at.duration_since(sent).as_secs_f64() * 1000.0);
            if let Some(latency) = event["latency_ms"].as_f64() {
                latencies.push(latency);
            }
        }
    }
    drop(worker);
    stage.close().await;
    round_trips.sort_by(f64::total_cmp);
    latencies.sort_by(f64::total_cmp);
    Single {
        worker: bin.unwrap_or("this build").to_string(),
        jobs: round_trips.len(),
        round_trip_p50_ms: percentile(&round_trips, 0.5),
        round_trip_p99_ms: percentile(&round_trips, 0.99),
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
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
    handover_as(connection, settings, "handover", None, false).await.0
}

/// The handover, as the sandbox's default client or (`pool` = Some(n)) as the first n clients of
/// [`POOL`], each limited to 5 calls/s by the sandbox and paced at 5/s by the worker. Also
/// returns the calls answered 429, the calls per client (pool only) and the children's outcomes.
async fn handover_as(
    connection: &Connection,
    settings: &Settings,
    name: &str,
    pool: Option<usize>,
    policies: bool,
) -> (Handover, u64, BTreeMap<String, ClientCalls>, Value) {
    const BUDGET: u32 = 5;
    let agents = settings.handover;
    let extras = SandboxExtras {
        clients: if pool.is_some() { POOL.to_vec() } else { Vec::new() },
        ..SandboxExtras::default()
    };
    let stage = Stage::open_with(connection, name, agents, Some((BUDGET, 2 * BUDGET)), extras).await;
    let http = reqwest::Client::new();
    let mut audit = stage.capture_audit().await;
    let mut extra = vec![
        ("GENESYS_RATE_LIMIT_RPS", BUDGET.to_string()),
        ("GENESYS_RATE_LIMIT_BURST", BUDGET.to_string()),
    ];
    if let Some(clients) = pool {
        extra.extend(pool_env(clients));
    }
    let env = stage.worker_env(&extra);
    let before = match pool {
        Some(clients) => per_client(&stage.sandbox.stats(&http).await, clients),
        None => BTreeMap::new(),
    };
    let worker = start_worker(&env);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let child = if policies {
        agent_job_with_policies
    } else {
        agent_job
    };
    let children: Vec<Value> = (0..agents).map(|n| child(n, agents, "On Queue")).collect();
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
    let counts = summary
        .first()
        .map(|(_, event)| event["summary"]["counts"].clone())
        .unwrap_or(Value::Null);
    println!("  {name} summary: {counts}");
    drop(worker);
    let answered = stage.sandbox.answered(&http).await;
    let calls: u64 = answered.values().sum();
    let throttled = answered.get(&429).copied().unwrap_or(0);
    let by_client = match pool {
        Some(clients) => client_calls(&stage.sandbox.stats(&http).await, &before, clients),
        None => BTreeMap::new(),
    };
    stage.close().await;
    let ideal = calls as f64 / f64::from(BUDGET * pool.unwrap_or(1) as u32);
    let result = Handover {
        agents,
        budget_per_sec: BUDGET,
        api_calls: calls,
        wall_secs: wall,
        ideal_secs: ideal,
        ratio_to_ideal: wall / ideal,
    };
    (result, throttled, by_client, counts)
}

/// The OAuth clients of the pool scenarios, as `GENESYS_CLIENTS` lists them.
const POOL: [(&str, &str); 3] = [
    ("pool-a", "pool-secret-a"),
    ("pool-b", "pool-secret-b"),
    ("pool-c", "pool-secret-c"),
];

/// The worker's settings for the first `clients` clients of [`POOL`]: `GENESYS_CLIENTS` alone
/// (the single pair of `worker_env` blanked), also for one client, so 1 and 3 go the same way.
fn pool_env(clients: usize) -> Vec<(&'static str, String)> {
    let listed = POOL[..clients]
        .iter()
        .map(|(id, secret)| format!("{id}:{secret}"))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        ("GENESYS_CLIENT_ID", String::new()),
        ("GENESYS_CLIENT_SECRET", String::new()),
        ("GENESYS_CLIENTS", listed),
    ]
}

/// API requests a client made, and the 429s among them (the sandbox's `clients` stats).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct ClientCalls {
    requests: u64,
    throttled: u64,
}

/// The sandbox's per-client counts of the first `clients` clients of [`POOL`].
fn per_client(stats: &Value, clients: usize) -> BTreeMap<String, ClientCalls> {
    POOL[..clients]
        .iter()
        .map(|(id, _)| {
            let seen = &stats["clients"][id];
            let count = |field: &str| seen[field].as_u64().unwrap_or(0);
            (
                id.to_string(),
                ClientCalls {
                    requests: count("requests"),
                    throttled: count("throttled"),
                },
            )
        })
        .collect()
}

/// Per client, the calls since `before`.
fn client_calls(
    stats: &Value,
    before: &BTreeMap<String, ClientCalls>,
    clients: usize,
) -> BTreeMap<String, ClientCalls> {
    per_client(stats, clients)
        .into_iter()
        .map(|(id, after)| {
            let start = before.get(&id).copied().unwrap_or_default();
            let calls = ClientCalls {
                requests: after.requests.saturating_sub(start.requests),
                throttled: after.throttled.saturating_sub(start.throttled),
            };
            (id, calls)
        })
        .collect()
}

/// `pool-a 130, pool-b 129, …` (429s in brackets when there were any).
fn describe_clients(calls: &BTreeMap<String, ClientCalls>) -> String {
    calls
        .iter()
        .map(|(id, c)| {
            if c.throttled > 0 {
                format!("{id} {} ({} 429)", c.requests, c.throttled)
            } else {
                format!("{id} {}", c.requests)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, serde::Serialize)]
struct PoolStatusRun {
    clients: usize,
    /// Per client: the sandbox's limit (burst 10) and the worker's budget.
    limit_per_client_per_sec: u32,
    /// `WORKER_CONCURRENCY` (`BENCH_POOL_CONCURRENCY`, 16).
    worker_concurrency: usize,
    jobs_queued: usize,
    /// From the first outcome to the start of the window.
    skipped_secs: f64,
    window_secs: f64,
    jobs_in_window: usize,
    jobs_per_sec: f64,
    /// Jobs finished in each second of the window.
    per_second: Vec<usize>,
    /// Outcomes of the jobs finished in the window.
    outcomes: BTreeMap<String, usize>,
    /// API calls answered other than 429, per second of the window.
    calls_per_sec: f64,
    calls_per_job: f64,
    throttled: u64,
    /// 429s among all API calls of the window.
    throttled_share: f64,
    /// The window's calls per client.
    per_client: BTreeMap<String, ClientCalls>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct PoolStatus {
    one: PoolStatusRun,
    three: PoolStatusRun,
    /// `three.jobs_per_sec / one.jobs_per_sec` (target ≥ 2.8).
    jobs_ratio: f64,
    calls_ratio: f64,
}

/// `settings.pool_status_jobs` queued `interaction.status` jobs (workitem n: Open → In Progress,
/// one job per seeded workitem, so each is a read and a PATCH) worked with `clients` clients of
/// the pool, each allowed 5 requests/s (burst 10) by the sandbox and paced at 5/s by the worker.
/// The rate over a steady window: `SKIP` after the first outcome, then `settings.pool_status_secs`;
/// then the worker stops, the jobs left are dropped with the scenario's queues.
///
/// 16 jobs in flight (`BENCH_POOL_CONCURRENCY`), not the drains' 64: each client's callers are
/// served in turn, so the jobs in flight keep the phase they started in (all read, then all
/// write, then all read...) and jobs finish in waves, C/(5 × clients) seconds of finishing and as
/// long of none. With 64 in flight and one client that is 12.8 s on, 12.8 s off: a 45 s window
/// then counts anything from 2.2 to 2.8 jobs/s for the same 5 calls/s. With 16 the waves last 3.2 s
/// (1.1 s with 3 clients) and 45 s holds about 7 (21) of them whole. Fewer jobs in flight do not
/// lower the rate while callers still wait for every client.
async fn pool_status(connection: &Connection, settings: &Settings, clients: usize) -> PoolStatusRun {
    const LIMIT: u32 = 5;
    const SKIP: Duration = Duration::from_secs(5);
    let jobs = settings.pool_status_jobs;
    let extras = SandboxExtras {
        workitems: Some(jobs),
        clients: POOL.to_vec(),
    };
    let stage = Stage::open_with(
        connection,
        &format!("poolstatus{clients}"),
        10,
        Some((LIMIT, 2 * LIMIT)),
        extras,
    )
    .await;
    let http = reqwest::Client::new();
    let mut audit = stage.capture_audit().await;
    let bodies = (0..jobs)
        .map(|n| {
            let job = json!({
                "job_id": Uuid::new_v4(),
                "kind": "interaction.status",
                "idempotency_key": format!("bench-{}", Uuid::new_v4()),
                "actor": "bench",
                "payload": {"workitem_id": sandbox::workitem_id(n), "status": "In Progress"},
            });
            serde_json::to_vec(&job).unwrap()
        })
        .collect();
    let publishing = Instant::now();
    publish_jobs_as(
        &stage.publisher,
        &stage.topology.jobs_exchange,
        "interaction.status",
        bodies,
    )
    .await;
    println!(
        "  pool-status, {clients} client(s): {jobs} jobs queued in {:.1} s",
        publishing.elapsed().as_secs_f64()
    );
    let mut extra = vec![
        ("GENESYS_RATE_LIMIT_RPS", LIMIT.to_string()),
        // Below the sandbox's burst: a little jitter on the wire draws no 429.
        ("GENESYS_RATE_LIMIT_BURST", LIMIT.to_string()),
    ];
    let concurrency: usize = std::env::var("BENCH_POOL_CONCURRENCY")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(16);
    extra.push(("WORKER_CONCURRENCY", concurrency.to_string()));
    extra.extend(pool_env(clients));
    let worker = start_worker(&stage.worker_env(&extra));
    let first = await_events(&mut audit, 1, Duration::from_secs(120), |_| true).await;
    let first_at = first.first().map(|(at, _)| *at).unwrap_or_else(Instant::now);
    // Past the start: the budgets' bursts, the token grants, the statuses read.
    let _ = await_events(
        &mut audit,
        usize::MAX,
        SKIP.saturating_sub(first_at.elapsed()),
        |_| true,
    )
    .await;
    let before_stats = stage.sandbox.stats(&http).await;
    let window = Instant::now();
    let skipped = window.duration_since(first_at).as_secs_f64();
    let events = await_events(
        &mut audit,
        usize::MAX,
        Duration::from_secs(settings.pool_status_secs),
        |_| true,
    )
    .await;
    let after_stats = stage.sandbox.stats(&http).await;
    let seconds = window.elapsed().as_secs_f64();
    drop(worker);
    stage.close().await;

    let by_status = |stats: &Value| {
        let mut by_status: HashMap<u64, u64> = HashMap::new();
        for request in stats["requests"].as_array().into_iter().flatten() {
            if request["route"].as_str().unwrap_or_default().contains("/api/v2/") {
                *by_status
                    .entry(request["status"].as_u64().unwrap_or(0))
                    .or_default() += request["count"].as_u64().unwrap_or(0);
            }
        }
        by_status
    };
    let (before, after) = (by_status(&before_stats), by_status(&after_stats));
    let delta = |throttled: bool| -> u64 {
        after
            .iter()
            .filter(|(status, _)| (**status == 429) == throttled)
            .map(|(status, n)| n - before.get(status).copied().unwrap_or(0))
            .sum()
    };
    let (answered, throttled) = (delta(false), delta(true));
    let mut per_second = vec![0; settings.pool_status_secs as usize];
    for (at, _) in &events {
        let second = at.duration_since(window).as_secs() as usize;
        if let Some(count) = per_second.get_mut(second) {
            *count += 1;
        }
    }
    let mut outcomes = BTreeMap::new();
    for (_, event) in &events {
        *outcomes
            .entry(event["outcome"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    if outcomes.keys().any(|outcome| outcome != "applied") {
        eprintln!("  warning: pool-status, {clients} client(s): outcomes in the window {outcomes:?}");
    }
    PoolStatusRun {
        clients,
        limit_per_client_per_sec: LIMIT,
        worker_concurrency: concurrency,
        jobs_queued: jobs,
        skipped_secs: skipped,
        window_secs: seconds,
        jobs_in_window: events.len(),
        jobs_per_sec: events.len() as f64 / seconds,
        per_second,
        outcomes,
        calls_per_sec: answered as f64 / seconds,
        calls_per_job: answered as f64 / events.len().max(1) as f64,
        throttled,
        throttled_share: throttled as f64 / (answered + throttled).max(1) as f64,
        per_client: client_calls(&after_stats, &per_client(&before_stats, clients), clients),
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct PoolHandoverRun {
    clients: usize,
    #[serde(flatten)]
    handover: Handover,
    throttled: u64,
    per_client: BTreeMap<String, ClientCalls>,
    /// The batch summary's outcome counts.
    outcomes: Value,
}

#[derive(Debug, Clone, serde::Serialize)]
struct PoolHandover {
    one: PoolHandoverRun,
    three: PoolHandoverRun,
    /// `one.wall_secs / three.wall_secs` (target ≥ 2.8).
    speed_up: f64,
}

async fn pool_handover(connection: &Connection, settings: &Settings, clients: usize) -> PoolHandoverRun {
    let name = format!("poolhandover{clients}");
    let (handover, throttled, per_client, outcomes) =
        handover_as(connection, settings, &name, Some(clients), false).await;
    PoolHandoverRun {
        clients,
        handover,
        throttled,
        per_client,
        outcomes,
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
            "concurrency": concurrency(),
        }),
    );

    let mut drains: Vec<(&str, Drain)> = Vec::new();
    let mut drain_runs: HashMap<&str, Vec<Drain>> = HashMap::new();
    // With an earlier build named, its drains run beside this build's, run after run (so the
    // machine's drift weighs on both alike), and are reported as `<drain>@base`.
    let baseline_bin = std::env::var("BENCH_BASELINE_WORKER_BIN").ok();
    let mut plan: Vec<(&str, Option<bool>, Option<&str>)> = vec![
        ("plumbing", None, None),
        ("bulk-off", Some(false), None),
        ("bulk-on", Some(true), None),
    ];
    if let Some(bin) = baseline_bin.as_deref() {
        plan.insert(2, ("bulk-off@base", Some(false), Some(bin)));
        plan.push(("bulk-on@base", Some(true), Some(bin)));
    }
    plan.retain(|(name, ..)| settings.wants(name.split('@').next().unwrap_or(name)));
    for run in 0..settings.runs {
        for &(name, bulk, bin) in &plan {
            let drain = match bulk {
                None => plumbing(&connection, &settings, &services, run).await,
                Some(bulk) => {
                    let tag = format!(
                        "bulk{}{}{run}",
                        if bulk { "on" } else { "off" },
                        if bin.is_some() { "base" } else { "" }
                    );
                    let standalone = RedisUnderTest::default();
                    worker_drain(&connection, &settings, &services, &tag, bulk, &standalone, bin).await
                }
            };
            println!(
                "  {name} run {}: {:.0} jobs/s, {:.2} CPU s/1k jobs all processes, {:.2} Redis commands/job",
                run + 1,
                drain.jobs_per_sec,
                drain.cost.cpu_secs_per_1000.total,
                drain.cost.redis_commands_per_job
            );
            drain_runs.entry(name).or_default().push(drain);
        }
    }
    for &(name, ..) in &plan {
        if let Some(runs) = drain_runs.get(name) {
            drains.push((name, median_drain(runs)));
        }
    }
    if let Some(bin) = &baseline_bin {
        println!("@base: the worker binary {bin}");
        report.insert("baseline_worker_bin".into(), json!(bin));
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
            "| {:<13} | {:>8} | {:>11} | {:>8} | {:>8} | {:>9} | {:>14} | {:>13} |",
            "drain", "jobs/s", "vs plumbing", "p50 ms", "p99 ms", "peak RSS", "Redis cmds/job", "scripts/job"
        );
        println!(
            "|{:-<15}|{:->10}|{:->13}|{:->10}|{:->10}|{:->11}|{:->16}|{:->15}|",
            "", "", "", "", "", "", "", ""
        );
        let mut json_drains = serde_json::Map::new();
        for (name, drain) in &drains {
            let ratio = baseline.map(|b| drain.jobs_per_sec / b);
            println!(
                "| {:<13} | {:>8.0} | {:>11} | {:>8.1} | {:>8.1} | {:>9} | {:>14.2} | {:>13.2} |",
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
            "| {:<13} | {:>7} | {:>11} | {:>7} | {:>12} | {:>8} | {:>7} | {:>7} |",
            "drain", "total", "vs plumbing", "worker", "bench reader", "RabbitMQ", "Redis", "sandbox"
        );
        println!(
            "|{:-<15}|{:->9}|{:->13}|{:->9}|{:->14}|{:->10}|{:->9}|{:->9}|",
            "", "", "", "", "", "", "", ""
        );
        for (name, drain) in &drains {
            let cpu = &drain.cost.cpu_secs_per_1000;
            println!(
                "| {:<13} | {:>7.2} | {:>11} | {:>7.2} | {:>12} | {:>8.2} | {:>7.2} | {:>7.2} |",
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
    if settings.wants("single") {
        let mut runs: Vec<Single> = Vec::new();
        let mut base_runs: Vec<Single> = Vec::new();
        for run in 0..settings.runs {
            runs.push(single(&connection, &settings, None, run).await);
            if let Some(bin) = baseline_bin.as_deref() {
                base_runs.push(single(&connection, &settings, Some(bin), run).await);
            }
        }
        let med = |runs: &[Single], f: fn(&Single) -> f64| median(runs.iter().map(f).collect());
        println!();
        println!(
            "single: one job in flight at a time, {} jobs per run, medians of {} run(s)",
            settings.single, settings.runs
        );
        println!(
            "| {:<13} | {:>17} | {:>17} | {:>15} | {:>15} |",
            "worker", "round trip p50 ms", "round trip p99 ms", "latency p50 ms", "latency p99 ms"
        );
        println!("|{:-<15}|{:->19}|{:->19}|{:->17}|{:->17}|", "", "", "", "", "");
        for (label, runs) in [("this build", &runs), ("@base", &base_runs)] {
            if runs.is_empty() {
                continue;
            }
            println!(
                "| {:<13} | {:>17.2} | {:>17.2} | {:>15.1} | {:>15.1} |",
                label,
                med(runs, |r| r.round_trip_p50_ms),
                med(runs, |r| r.round_trip_p99_ms),
                med(runs, |r| r.latency_p50_ms),
                med(runs, |r| r.latency_p99_ms),
            );
        }
        if !base_runs.is_empty() {
            println!(
                "single: round trip p50 {:.2} of the baseline's",
                med(&runs, |r| r.round_trip_p50_ms) / med(&base_runs, |r| r.round_trip_p50_ms)
            );
        }
        report.insert("single".into(), json!({"runs": runs, "baseline_runs": base_runs}));
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
    if settings.names("audit-log") {
        let started = Instant::now();
        let result = audit_log_cost(&connection, &settings, &services).await;
        println!("  audit-log: {:.0} s", started.elapsed().as_secs_f64());
        println!();
        println!(
            "audit-log: the drains with the verifiable audit log off and on (signed checkpoints), medians of {} run(s) each",
            settings.runs
        );
        println!(
            "| {:<14} | {:>8} | {:>10} | {:>15} | {:>14} | {:>14} | {:>15} | {:>8} | {:>8} | {:>22} |",
            "drain, log",
            "jobs/s",
            "vs log off",
            "total CPU s/1k",
            "Redis CPU s/1k",
            "Redis cmds/job",
            "script µs/job",
            "p50 ms",
            "p99 ms",
            "log keys after"
        );
        println!(
            "|{:-<16}|{:->10}|{:->12}|{:->17}|{:->16}|{:->16}|{:->17}|{:->10}|{:->10}|{:->24}|",
            "", "", "", "", "", "", "", "", "", ""
        );
        for (name, pair) in &result.drains {
            for (label, drain) in [("off", &pair.off), ("on", &pair.on)] {
                println!(
                    "| {:<14} | {:>8.0} | {:>10} | {:>15.2} | {:>14.2} | {:>14.2} | {:>15.1} | {:>8.1} | {:>8.1} | {:>22} |",
                    format!("{name}, {label}"),
                    drain.jobs_per_sec,
                    format!("{:.1}%", drain.jobs_per_sec / pair.off.jobs_per_sec * 100.0),
                    drain.cost.cpu_secs_per_1000.total,
                    drain.cost.cpu_secs_per_1000.redis,
                    drain.cost.redis_commands_per_job,
                    drain.cost.redis_script_usec_per_job,
                    drain.p50_ms,
                    drain.p99_ms,
                    drain.audit_log.as_ref().map_or("-".to_string(), |log| format!(
                        "{} B, {} unsealed",
                        log.bytes, log.unsealed
                    )),
                );
            }
        }
        for (name, pair) in &result.drains {
            println!(
                "audit-log {name}: log on {:.3} of the jobs/s with it off (target >= 0.95; per pair of runs back to back: {})",
                pair.ratio_on_off,
                pair.ratio_on_off_per_run
                    .iter()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        report.insert("audit_log".into(), serde_json::to_value(&result).unwrap());
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
    if settings.names("handover-policies") {
        // The handover as write-only jobs, then with the presence policies at their defaults
        // (each agent's state read first, 100 a call): what reading costs.
        let write_only = handover_as(&connection, &settings, "handover-write-only", None, false).await;
        let read_first = handover_as(&connection, &settings, "handover-policies", None, true).await;
        println!();
        println!(
            "handover-policies: {} agents as one batch at {}/s (one run each)",
            write_only.0.agents, write_only.0.budget_per_sec
        );
        println!(
            "| {:<20} | {:>9} | {:>10} | {:>7} | {:>5} |",
            "handover", "API calls", "vs writes", "wall s", "429s"
        );
        println!("|{:-<22}|{:->11}|{:->12}|{:->9}|{:->7}|", "", "", "", "", "");
        for (label, run) in [("write-only", &write_only), ("policies on", &read_first)] {
            println!(
                "| {:<20} | {:>9} | {:>10} | {:>7.1} | {:>5} |",
                label,
                run.0.api_calls,
                format!("{:.2}x", run.0.api_calls as f64 / write_only.0.api_calls as f64),
                run.0.wall_secs,
                run.1,
            );
        }
        report.insert(
            "handover_policies".into(),
            json!({
                "write_only": write_only.0,
                "policies_on": read_first.0,
                "calls_ratio": read_first.0.api_calls as f64 / write_only.0.api_calls as f64,
            }),
        );
    }
    if settings.names("pool-status") {
        let started = Instant::now();
        let one = pool_status(&connection, &settings, 1).await;
        let three = pool_status(&connection, &settings, 3).await;
        for run in [&one, &three] {
            let per_5s: Vec<String> = run
                .per_second
                .chunks(5)
                .map(|c| c.iter().sum::<usize>().to_string())
                .collect();
            println!(
                "  pool-status, {} client(s), {} in flight: jobs finished per 5 s of the window: {}",
                run.clients,
                run.worker_concurrency,
                per_5s.join(" ")
            );
        }
        println!("  pool-status: {:.0} s", started.elapsed().as_secs_f64());
        println!();
        println!(
            "pool-status: {} interaction.status jobs queued, 5 requests/s (burst 10) per client, {} jobs in flight, steady window {} s after the first {:.0} s (one run each)",
            one.jobs_queued, one.worker_concurrency, settings.pool_status_secs, one.skipped_secs
        );
        println!(
            "| {:<11} | {:>6} | {:>11} | {:>7} | {:>9} | {:>9} | {:>8} | {:<36} |",
            "pool-status",
            "jobs/s",
            "vs 1 client",
            "calls/s",
            "calls/job",
            "jobs done",
            "429s",
            "calls per client (window)"
        );
        println!(
            "|{:-<13}|{:->8}|{:->13}|{:->9}|{:->11}|{:->11}|{:->10}|{:-<38}|",
            "", "", "", "", "", "", "", ""
        );
        for run in [&one, &three] {
            println!(
                "| {:<11} | {:>6.2} | {:>11} | {:>7.2} | {:>9.2} | {:>9} | {:>8} | {:<36} |",
                clients_label(run.clients),
                run.jobs_per_sec,
                format!("{:.2}x", run.jobs_per_sec / one.jobs_per_sec),
                run.calls_per_sec,
                run.calls_per_job,
                run.jobs_in_window,
                format!("{} ({:.1}%)", run.throttled, run.throttled_share * 100.0),
                describe_clients(&run.per_client),
            );
        }
        let result = PoolStatus {
            jobs_ratio: three.jobs_per_sec / one.jobs_per_sec,
            calls_ratio: three.calls_per_sec / one.calls_per_sec,
            one,
            three,
        };
        println!(
            "pool-status: 3 clients / 1 client: {:.2}x jobs/s, {:.2}x calls/s (target >= 2.8x); 429s {:.2}% and {:.2}% (target 0%)",
            result.jobs_ratio,
            result.calls_ratio,
            result.one.throttled_share * 100.0,
            result.three.throttled_share * 100.0
        );
        report.insert("pool_status".into(), serde_json::to_value(result).unwrap());
    }
    if settings.names("pool-handover") {
        let started = Instant::now();
        let one = pool_handover(&connection, &settings, 1).await;
        let three = pool_handover(&connection, &settings, 3).await;
        println!("  pool-handover: {:.0} s", started.elapsed().as_secs_f64());
        println!();
        println!(
            "pool-handover: {} agents as one batch, 5 requests/s (burst 10) per client, worker budget 5/s per client (one run each)",
            one.handover.agents
        );
        println!(
            "| {:<13} | {:>7} | {:>8} | {:>9} | {:>5} | {:>7} | {:>8} | {:<36} |",
            "pool-handover",
            "wall s",
            "speed-up",
            "API calls",
            "429s",
            "ideal s",
            "vs ideal",
            "calls per client"
        );
        println!(
            "|{:-<15}|{:->9}|{:->10}|{:->11}|{:->7}|{:->9}|{:->10}|{:-<38}|",
            "", "", "", "", "", "", "", ""
        );
        for run in [&one, &three] {
            println!(
                "| {:<13} | {:>7.1} | {:>8} | {:>9} | {:>5} | {:>7.1} | {:>8.2} | {:<36} |",
                clients_label(run.clients),
                run.handover.wall_secs,
                format!("{:.2}x", one.handover.wall_secs / run.handover.wall_secs),
                run.handover.api_calls,
                run.throttled,
                run.handover.ideal_secs,
                run.handover.ratio_to_ideal,
                describe_clients(&run.per_client),
            );
        }
        let result = PoolHandover {
            speed_up: one.handover.wall_secs / three.handover.wall_secs,
            one,
            three,
        };
        println!(
            "pool-handover: 3 clients {:.2}x as fast as 1 (target >= 2.8x); outcomes {} and {}",
            result.speed_up, result.one.outcomes, result.three.outcomes
        );
        report.insert("pool_handover".into(), serde_json::to_value(result).unwrap());
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
