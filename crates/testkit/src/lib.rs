//! What the worker's integration tests and benches share: `spawn_app()` (a sandbox, a worker
//! wired to it, and capture queues on the outbound exchanges), private RabbitMQ, Redis and
//! worker processes, the services' URLs, tokens, and job builders; [`audit`], what the tests of
//! the verifiable audit log share.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use genesys_sandbox::{self as sandbox, SandboxConfig, SandboxHandle};
use genesys_worker::broker::{self, Publisher};
use genesys_worker::config::{Config, ServiceUrls};
use genesys_worker::events::{AuditEvent, CrmEvent};
use genesys_worker::worker;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

pub mod audit;
pub mod browser;
pub mod topology;

pub const WAIT: Duration = Duration::from_secs(15);

/// The `genesys-worker` binary of this build: `GENESYS_WORKER_BIN`, else the one beside the
/// running test or bench (cargo builds it first: `target/<profile>/deps/<test>` →
/// `target/<profile>/genesys-worker`).
pub fn worker_bin() -> std::path::PathBuf {
    if let Ok(bin) = std::env::var("GENESYS_WORKER_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the running test has a path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join(format!("genesys-worker{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --bin genesys-worker` (cargo test does)",
        bin.display()
    );
    bin
}

/// One presence call per `agent.status` job (bulk coalescing off), for tests that count them.
pub const PER_AGENT_CALLS: &[(&str, &str)] = &[("BULK_PRESENCE", "off")];

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

pub fn random_name() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 10).to_lowercase()
}

/// Connects to the test broker, or fails with the command that starts it.
pub async fn connect_broker() -> Connection {
    let url = ServiceUrls::parse(&amqp_url()).expect("AMQP_URL is a URL");
    let mut last_error = None;
    for _ in 0..20 {
        match broker::connect(&url).await {
            Ok(connection) => return connection,
            Err(err) => last_error = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "RabbitMQ is not reachable at {url} ({last_error:?}). Start the test services with \
         `scripts/services.sh up`, or run the whole suite with `scripts/test.sh`."
    );
}

/// Declares `queue` as a durable quorum queue on `channel`.
pub async fn declare_quorum_queue(channel: &Channel, queue: &str) {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
}

/// Checks Redis answers, or fails with the command that starts it.
pub async fn check_redis() {
    let ok = async {
        let client = redis::Client::open(redis_url()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
    };
    if tokio::time::timeout(Duration::from_secs(5), ok)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        panic!(
            "Redis is not reachable at {}. Start the test services with `scripts/services.sh up`, \
             or run the whole suite with `scripts/test.sh`.",
            redis_url()
        );
    }
}

/// A port free right now (the OS picks it; a race with another process is possible but rare).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The environment of a test worker, for an in-process worker or a worker process.
pub fn test_env(
    sandbox: &SandboxHandle,
    prefix: &str,
    overrides: &[(&str, &str)],
) -> HashMap<String, String> {
    let base = sandbox.base_url();
    let mut vars: HashMap<String, String> = HashMap::from([
        ("AMQP_URL".into(), amqp_url()),
        ("REDIS_URL".into(), redis_url()),
        ("REDIS_KEY_PREFIX".into(), format!("test:{prefix}:")),
        ("GENESYS_API_BASE".into(), base.clone()),
        ("GENESYS_LOGIN_BASE".into(), base),
        ("GENESYS_CLIENT_ID".into(), sandbox::DEFAULT_CLIENT_ID.into()),
        (
            "GENESYS_CLIENT_SECRET".into(),
            sandbox::DEFAULT_CLIENT_SECRET.into(),
        ),
        ("GENESYS_RATE_LIMIT_RPS".into(), "500".into()),
        ("GENESYS_RATE_LIMIT_BURST".into(), "50".into()),
        ("JOBS_EXCHANGE".into(), format!("test.{prefix}.jobs")),
        ("WORK_QUEUE".into(), format!("test.{prefix}.jobs.work")),
        ("BATCH_QUEUE".into(), format!("test.{prefix}.jobs.batch")),
        ("DEAD_LETTER_QUEUE".into(), format!("test.{prefix}.jobs.dead")),
        ("AUDIT_EXCHANGE".into(), format!("test.{prefix}.audit")),
        ("CRM_EXCHANGE".into(), format!("test.{prefix}.crm")),
        ("SHUTDOWN_TIMEOUT_SECS".into(), "5".into()),
        ("WORKER_CONCURRENCY".into(), "8".into()),
        ("WORKER_PREFETCH".into(), "8".into()),
        ("ADMIN_ADDR".into(), format!("127.0.0.1:{}", free_port())),
        ("RETRY_DELAYS_MS".into(), "200,400".into()),
    ]);
    for (k, v) in overrides {
        vars.insert(k.to_string(), v.to_string());
    }
    vars
}

/// An event as it arrived, with its routing key.
#[derive(Debug, Clone)]
pub struct Arrived<T> {
    /// The message body exactly as published.
    pub raw: String,
    pub routing_key: String,
    pub event: T,
    pub properties: BasicProperties,
}

/// A dead letter as it sits in the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub routing_key: String,
    pub headers: HashMap<String, String>,
}

pub struct TestApp {
    pub sandbox: SandboxHandle,
    pub config: Config,
    /// The worker's environment: what a worker process is started with.
    pub env: HashMap<String, String>,
    pub http: reqwest::Client,
    connection: Connection,
    channel: Channel,
    publisher: Publisher,
    audit: Consumer,
    crm: Consumer,
    stop: Option<oneshot::Sender<()>>,
    worker: Option<tokio::task::JoinHandle<Result<(), worker::WorkerError>>>,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("sandbox", &self.sandbox.addr)
            .field("prefix", &self.config.redis_key_prefix)
            .finish_non_exhaustive()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(
        SandboxConfig {
            users: 20,
            ..SandboxConfig::default()
        },
        &[],
    )
    .await
}

pub async fn spawn_app_with(sandbox_config: SandboxConfig, overrides: &[(&str, &str)]) -> TestApp {
    let mut app = spawn_app_without_worker(sandbox_config, overrides).await;
    let (stop, stopped) = oneshot::channel::<()>();
    app.worker = Some(tokio::spawn(worker::run(app.config.clone(), async {
        let _ = stopped.await;
    })));
    app.stop = Some(stop);
    app
}

/// Everything but the worker: tests start worker processes with [`TestApp::start_worker_process`].
pub async fn spawn_app_without_worker(sandbox_config: SandboxConfig, overrides: &[(&str, &str)]) -> TestApp {
    check_redis().await;
    let connection = connect_broker().await;
    let sandbox = sandbox::spawn("127.0.0.1:0".parse().unwrap(), sandbox_config)
        .await
        .expect("sandbox starts");
    let prefix = random_name();
    let env = test_env(&sandbox, &prefix, overrides);
    let config = Config::from_lookup(|k| env.get(k).cloned()).expect("test configuration is valid");
    let channel = connection.create_channel().await.unwrap();
    // Declared here too, so jobs published before the worker is up wait in the queue.
    broker::topology::declare(&connection, &config.topology)
        .await
        .unwrap();
    let audit = capture(&channel, &config.topology.audit_exchange).await;
    let crm = capture(&channel, &config.topology.crm_exchange).await;
    let publisher = Publisher::open(&connection).await.unwrap();
    TestApp {
        sandbox,
        config,
        env,
        http: reqwest::Client::new(),
        connection,
        channel,
        publisher,
        audit,
        crm,
        stop: None,
        worker: None,
    }
}

/// A private queue bound to every routing key of `exchange`, consumed with acks (each event
/// taken is acked by [`next_n`]).
pub async fn capture(channel: &Channel, exchange: &str) -> Consumer {
    capture_with(channel, exchange, false).await
}

/// The same, without acks: what a benchmark reading thousands of events a second wants.
pub async fn capture_unacked(channel: &Channel, exchange: &str) -> Consumer {
    capture_with(channel, exchange, true).await
}

async fn capture_with(channel: &Channel, exchange: &str, no_ack: bool) -> Consumer {
    genesys_worker::broker::topology::consume_private(channel, exchange, "#", no_ack)
        .await
        .unwrap()
}

async fn next_from<T: serde::de::DeserializeOwned>(
    consumer: &mut Consumer,
    wait: Duration,
) -> Option<Arrived<T>> {
    let deadline = tokio::time::Instant::now() + wait;
    let delivery = loop {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .ok()??
            .ok()?;
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        // The audit log's checkpoints share the audit exchange; tests of events skip them
        // (`capture_checkpoints` takes them).
        if delivery.routing_key.as_str() != CHECKPOINT_ROUTING_KEY {
            break delivery;
        }
    };
    let event = serde_json::from_slice(&delivery.data).unwrap_or_else(|e| {
        panic!(
            "event does not parse ({e}): {}",
            String::from_utf8_lossy(&delivery.data)
        )
    });
    Some(Arrived {
        raw: String::from_utf8(delivery.data).expect("events are UTF-8 JSON"),
        routing_key: delivery.routing_key.to_string(),
        event,
        properties: delivery.properties,
    })
}

/// The routing key of the audit log's checkpoints.
pub const CHECKPOINT_ROUTING_KEY: &str = "audit.checkpoint";

pub async fn next_n<T>(consumer: &mut Consumer, n: usize, what: &str) -> Vec<Arrived<T>>
where
    T: serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut events = Vec::new();
    while events.len() < n {
        match next_from(consumer, WAIT).await {
            Some(event) => events.push(event),
            None => panic!("expected {n} {what} events, got {}: {events:#?}", events.len()),
        }
    }
    events
}

/// What `sandbox` saw: requests per route and status, mutations, 429s (`/sandbox/stats`).
pub async fn sandbox_stats(sandbox: &SandboxHandle) -> Value {
    get_json(
        &reqwest::Client::new(),
        &format!("{}/sandbox/stats", sandbox.base_url()),
        None,
    )
    .await
}

/// GETs `url` and reads the JSON reply.
pub async fn get_json(http: &reqwest::Client, url: &str, token: Option<&str>) -> Value {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

fn header_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

impl TestApp {
    /// Publishes a job message as a producer would: routing key = kind, persistent JSON.
    pub async fn publish(&self, job: &Value) {
        let kind = job.get("kind").and_then(Value::as_str).unwrap_or("unknown");
        self.publish_raw(kind, serde_json::to_vec(job).unwrap().as_slice())
            .await;
    }

    /// Publishes a job message with AMQP headers (e.g. `traceparent`).
    pub async fn publish_with_headers(&self, job: &Value, headers: &[(&str, &str)]) {
        let mut table = lapin::types::FieldTable::default();
        for (name, value) in headers {
            table.insert(
                (*name).into(),
                lapin::types::AMQPValue::LongString((*value).into()),
            );
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(table);
        let kind = job.get("kind").and_then(Value::as_str).unwrap_or("unknown");
        self.publisher
            .publish(
                &self.config.topology.jobs_exchange,
                kind,
                &serde_json::to_vec(job).unwrap(),
                properties,
            )
            .await
            .expect("job published");
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        self.publisher
            .publish(&self.config.topology.jobs_exchange, routing_key, body, properties)
            .await
            .expect("job published");
    }

    /// The next `n` audit events, failing the test if they do not all arrive in time.
    pub async fn audit_events(&mut self, n: usize) -> Vec<Arrived<AuditEvent>> {
        next_n(&mut self.audit, n, "audit").await
    }

    /// The next `n` crm events, failing the test if they do not all arrive in time.
    pub async fn crm_events(&mut self, n: usize) -> Vec<Arrived<CrmEvent>> {
        next_n(&mut self.crm, n, "crm").await
    }

    /// Asserts nothing more arrives on the audit and crm exchanges for a while.
    pub async fn assert_no_more_events(&mut self) {
        let quiet = Duration::from_millis(500);
        if let Some(extra) = next_from::<Value>(&mut self.audit, quiet).await {
            panic!("unexpected audit event: {extra:#?}");
        }
        if let Some(extra) = next_from::<Value>(&mut self.crm, quiet).await {
            panic!("unexpected crm event: {extra:#?}");
        }
    }

    /// The publisher the app publishes jobs with.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Whatever the dead-letter queue holds right now (taken).
    pub async fn dead_letters_now(&self) -> Vec<DeadLetter> {
        let mut letters = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                self.config.topology.dead_letter.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            letters.push(DeadLetter {
                body: message.delivery.data,
                routing_key: message.delivery.routing_key.to_string(),
                headers: HashMap::new(),
            });
        }
        letters
    }

    /// The next `n` messages of the dead-letter queue.
    pub async fn dead_letters(&self, n: usize) -> Vec<DeadLetter> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut letters = Vec::new();
        while letters.len() < n {
            let got = self
                .channel
                .basic_get(
                    self.config.topology.dead_letter.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            match got {
                Some(message) => {
                    let delivery = message.delivery;
                    let headers = delivery
                        .properties
                        .headers()
                        .clone()
                        .unwrap_or_default()
                        .inner()
                        .iter()
                        .map(|(k, v)| (k.to_string(), header_text(v)))
                        .collect();
                    letters.push(DeadLetter {
                        body: delivery.data,
                        routing_key: delivery.routing_key.to_string(),
                        headers,
                    });
                }
                None if tokio::time::Instant::now() > deadline => {
                    panic!("expected {n} dead letters, got {}: {letters:#?}", letters.len())
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        letters
    }

    /// Installs a fault on the sandbox (see the README's control API).
    pub async fn set_fault(&self, fault: Value) {
        let url = format!("{}/sandbox/faults", self.sandbox.base_url());
        let response = self.http.post(url).json(&fault).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "fault refused: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Makes the sandbox play `behaviour` (README, "The sandbox": behaviour profiles).
    pub async fn set_behaviour(&self, behaviour: Value) {
        let url = format!("{}/sandbox/behaviour", self.sandbox.base_url());
        let response = self.http.put(url).json(&behaviour).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "behaviour refused: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Publishes one `agent.status` job setting `presence` for each of the first `users` seeded
    /// users; returns their job ids.
    pub async fn publish_agent_jobs(&self, users: usize, presence: &str) -> std::collections::HashSet<Uuid> {
        self.publish_agent_jobs_with(users, serde_json::json!({"presence": presence}))
            .await
    }

    /// Sets what only Genesys sets about a seeded user (a live interaction, Out of Office):
    /// the sandbox's `PUT /sandbox/users/{userId}/state`.
    pub async fn set_user_state(&self, user: Uuid, state: Value) {
        let url = format!("{}/sandbox/users/{user}/state", self.sandbox.base_url());
        let response = self.http.put(url).json(&state).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "state refused: {}",
            response.status()
        );
    }

    /// As [`TestApp::publish_agent_jobs`], each job with `payload` (`user_id` added).
    pub async fn publish_agent_jobs_with(
        &self,
        users: usize,
        payload: Value,
    ) -> std::collections::HashSet<Uuid> {
        let mut jobs = std::collections::HashSet::new();
        for n in 0..users {
            let job = agent_job(genesys_sandbox::user_id(n), payload.clone());
            jobs.insert(job["job_id"].as_str().unwrap().parse::<Uuid>().unwrap());
            self.publish(&job).await;
        }
        jobs
    }

    pub async fn sandbox_stats(&self) -> Value {
        sandbox_stats(&self.sandbox).await
    }

    /// Changes the sandbox applied, in order.
    pub async fn mutations(&self) -> Vec<Value> {
        self.sandbox_stats().await["mutations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// How many requests the sandbox answered on `route` (e.g. `PATCH /api/v2/...`) with `status`.
    pub async fn requests(&self, route: &str, status: u16) -> u64 {
        requests_in(&self.sandbox_stats().await, route, status)
    }

    /// The sandbox's view of a user: `presence` (label) and `routingStatus`.
    pub async fn user(&self, id: Uuid) -> Value {
        let users = get_json(
            &self.http,
            &format!("{}/sandbox/users", self.sandbox.base_url()),
            None,
        )
        .await;
        users["entities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == id.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("user {id} is not seeded"))
    }

    /// Runs `genesys-worker ARGS` (a tool: enqueue, dlq, batch status) with this app's
    /// environment, so it finds the app's queues, exchanges and Redis keys; returns the exit
    /// code, stdout and stderr.
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let output = tokio::process::Command::new(worker_bin())
            .args(args)
            .envs(&self.env)
            .output()
            .await
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    }

    /// As [`TestApp::cli`], stdout and stderr joined: what a failed assertion shows.
    pub async fn cli_output(&self, args: &[&str]) -> (i32, String) {
        let (code, stdout, stderr) = self.cli(args).await;
        (code, format!("{stdout}{stderr}"))
    }

    /// Starts `genesys-worker run` as a process with this app's configuration; its output goes
    /// to a log file named in the returned handle.
    pub fn start_worker_process(&self) -> WorkerProcess {
        start_worker_process(&self.env)
    }

    /// Deletes the work queue under the worker's feet.
    pub async fn delete_work_queue(&self) {
        self.channel
            .queue_delete(
                self.config.topology.work_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .unwrap();
    }

    /// Stops the worker and removes this test's exchanges and queues.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(worker) = self.worker.take() {
            worker.await.expect("worker task").expect("worker stops cleanly");
        }
        let topology = &self.config.topology;
        let retry_queues: Vec<String> = topology
            .lane_queues()
            .into_iter()
            .flat_map(|lane| {
                (0..topology.retry_delays_ms.len()).filter_map(move |t| topology.retry_queue(lane, t))
            })
            .collect();
        for queue in [&topology.work_queue, &topology.batch_queue, &topology.dead_letter]
            .into_iter()
            .chain(retry_queues.iter())
        {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [
            &topology.jobs_exchange,
            &topology.audit_exchange,
            &topology.crm_exchange,
            &topology.dead_letter,
        ] {
            let _ = self
                .channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// A sandbox of the test's own and a client holding a token for it: for tests of the sandbox
/// itself. Test files wrap it (`struct Api(SandboxApi)`, with `Deref`) to add their own calls.
#[derive(Debug)]
pub struct SandboxApi {
    pub sandbox: SandboxHandle,
    pub http: reqwest::Client,
    pub token: String,
}

impl SandboxApi {
    pub async fn start(config: SandboxConfig) -> Self {
        let sandbox = sandbox::spawn("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let http = reqwest::Client::new();
        let token = sandbox_token(&http, &sandbox.base_url()).await;
        Self { sandbox, http, token }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url())
    }

    /// The raw response, or the error of a request that got none.
    pub async fn send_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await
    }

    /// The status and JSON body (`null` when there is none) of a request with `token`.
    pub async fn try_call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Result<(reqwest::StatusCode, Value)> {
        let response = self.send_as(token, method, path, body).await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// A control API call (`/sandbox/...`) that must succeed; its JSON answer.
    pub async fn control(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method, self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "control {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn stats(&self) -> Value {
        get_json(&self.http, &self.url("/sandbox/stats"), None).await
    }
}

/// A bearer token from the sandbox's login endpoint, as any OAuth client would get one.
pub async fn sandbox_token(http: &reqwest::Client, base: &str) -> String {
    sandbox_token_as(
        http,
        base,
        sandbox::DEFAULT_CLIENT_ID,
        sandbox::DEFAULT_CLIENT_SECRET,
    )
    .await
}

/// The same, for another OAuth client.
pub async fn sandbox_token_as(http: &reqwest::Client, base: &str, client_id: &str, secret: &str) -> String {
    let reply: Value = http
        .post(format!("{base}/oauth/token"))
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["token_type"], "bearer");
    reply["access_token"]
        .as_str()
        .expect("a token is issued")
        .to_string()
}

/// Starts `genesys-worker run` as a process with `env`; its output goes to a log file named in
/// the returned handle.
pub fn start_worker_process(env: &HashMap<String, String>) -> WorkerProcess {
    let log = std::env::temp_dir().join(format!("genesys-worker-test-{}.log", random_name()));
    let file = std::fs::File::create(&log).unwrap();
    // Replicas side by side each need their own admin port.
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let child = std::process::Command::new(worker_bin())
        .arg("run")
        .envs(env)
        .env("ADMIN_ADDR", &admin_addr)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("the worker binary starts");
    WorkerProcess {
        child,
        log,
        admin_addr,
    }
}

/// A RabbitMQ node of the test's own, on its own port and data directory, which the test may
/// kill and start again: its durable queues and persistent messages survive.
#[derive(Debug)]
pub struct PrivateRabbit {
    pub port: u16,
    dir: std::path::PathBuf,
    /// The launcher process, reaped when the node stops.
    launcher: std::sync::Mutex<Option<std::process::Child>>,
}

impl PrivateRabbit {
    pub async fn start() -> Self {
        Self::start_with(|_| String::new()).await
    }

    /// Starts a node whose `rabbitmq.conf` is `config(node directory)` (files the config names
    /// should be put in that directory: it is readable by the node's user).
    pub async fn start_with(config: impl FnOnce(&std::path::Path) -> String) -> Self {
        let dir = std::env::temp_dir().join(format!("genesys-worker-rabbit-{}", random_name()));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("enabled_plugins"), "").unwrap();
        std::fs::write(dir.join("rabbitmq.conf"), config(&dir)).unwrap();
        let rabbit = Self {
            port: free_port(),
            dir,
            launcher: std::sync::Mutex::new(None),
        };
        rabbit.launch().await;
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The node's directory (its data, logs and config).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn pid_file(&self) -> std::path::PathBuf {
        self.dir.join("rabbitmq.pid")
    }

    async fn launch(&self) {
        let as_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        let mut command = if as_root {
            let _ = std::process::Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(&self.dir)
                .status();
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "rabbitmq", "--", "env", "HOME=/var/lib/rabbitmq"]);
            c
        } else {
            std::process::Command::new("env")
        };
        let dir = self.dir.display();
        command
            .arg(format!("RABBITMQ_MNESIA_BASE={dir}/mnesia"))
            .arg(format!("RABBITMQ_LOG_BASE={dir}/log"))
            .arg(format!("RABBITMQ_NODENAME=gw-test-{}@localhost", self.port))
            .arg("RABBITMQ_NODE_IP_ADDRESS=127.0.0.1")
            .arg(format!("RABBITMQ_NODE_PORT={}", self.port))
            .arg(format!("RABBITMQ_DIST_PORT={}", free_port()))
            .arg(format!("RABBITMQ_ENABLED_PLUGINS_FILE={dir}/enabled_plugins"))
            .arg(format!("RABBITMQ_CONFIG_FILE={dir}/rabbitmq.conf"))
            .arg(format!("RABBITMQ_PID_FILE={}", self.pid_file().display()))
            .arg("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let launcher = command
            .spawn()
            .expect("rabbitmq-server is installed (scripts/services.sh installs it)");
        *self.launcher.lock().unwrap() = Some(launcher);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let url = ServiceUrls::parse(&self.url()).unwrap();
        loop {
            if let Ok(connection) = broker::connect(&url).await {
                let _ = connection.close(200, "ready".into()).await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the private RabbitMQ did not start"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the node (SIGTERM: RabbitMQ shuts down in order) and starts it again on the same
    /// data, as an operator's restart or a rolling upgrade does.
    pub async fn restart(&self) {
        self.stop("-TERM");
        self.launch().await;
    }

    fn stop(&self, signal: &str) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let _ = std::process::Command::new("kill")
                .args([signal, pid.trim()])
                .status();
        }
        // Wait for the port to close before starting again.
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.pid_file());
        if let Some(mut launcher) = self.launcher.lock().unwrap().take() {
            let _ = launcher.kill();
            let _ = launcher.wait();
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.stop("-KILL");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A worker running as a process.
#[derive(Debug)]
pub struct WorkerProcess {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
    pub admin_addr: String,
}

impl WorkerProcess {
    /// SIGTERM: the graceful way.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis server of the test's own, which the test may kill and start again. It keeps an
/// append-only file, so a restart keeps its data, as a production Redis would.
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("genesys-worker-redis-{}", random_name()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            port: free_port(),
            dir,
            child: None,
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ping = async {
                let client = redis::Client::open(self.url()).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
            };
            if ping.await.is_some() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the private redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn requests_in(stats: &Value, route: &str, status: u16) -> u64 {
    stats["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["route"] == route && r["status"] == status)
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

/// A new job of `kind` with `payload`.
pub fn job(kind: &str, payload: Value) -> Value {
    serde_json::json!({
        "job_id": Uuid::new_v4(),
        "kind": kind,
        "actor": "integration-test",
        "correlation_id": format!("corr-{}", random_name()),
        "payload": payload,
    })
}

/// A new `agent.status` job for `user`.
pub fn agent_job(user: Uuid, payload: Value) -> Value {
    let mut payload = payload;
    payload["user_id"] = Value::String(user.to_string());
    serde_json::json!({
        "job_id": Uuid::new_v4(),
        "kind": "agent.status",
        "actor": "integration-test",
        "correlation_id": format!("corr-{}", random_name()),
        "payload": payload,
    })
}
