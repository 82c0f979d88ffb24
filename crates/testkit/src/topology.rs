//! Production-like topologies on loopback, started by `scripts/topology.sh` (user processes with
//! their data in a private directory; no Docker): a 3-node RabbitMQ cluster, a Redis primary
//! with a replica and 3 Sentinels, and a 6-node Redis Cluster. Each handle can kill and restart
//! its servers; dropping it kills everything it started (SIGKILL) and removes the directory.
//!
//! Starting a topology takes seconds (the RabbitMQ cluster 15–25 s): tests that use one should
//! take [`one_at_a_time`] first, so that two of them do not share the machine's cores.
//!
//! RabbitMQ nodes are numbered from 0 (the order of [`RabbitCluster::urls`]); Redis servers are
//! named by their port.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

use crate::random_name;

/// How long a failover, a restart or a state change may take before the test fails.
pub const TOPOLOGY_WAIT: Duration = Duration::from_secs(60);

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Held by a test while it runs a topology: the tests of one test binary then run them one
/// after the other.
pub async fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/topology.sh")
}

/// What `scripts/topology.sh up` made: its directory, its state and the settings it printed.
#[derive(Debug)]
struct Topology {
    dir: PathBuf,
    state: HashMap<String, String>,
    settings: Vec<(String, String)>,
}

impl Topology {
    async fn up(kind: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("genesys-worker-topology-{}", random_name()));
        let started = Instant::now();
        let output = tokio::process::Command::new("bash")
            .arg(script())
            .args(["up", kind])
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("bash runs scripts/topology.sh");
        assert!(
            output.status.success(),
            "scripts/topology.sh up {kind} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let settings = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|word| word.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut topology = Self {
            dir,
            state: HashMap::new(),
            settings,
        };
        topology.read_state();
        eprintln!("[topology] {kind} up in {:.1?}", started.elapsed());
        topology
    }

    /// Reads `state` again (a later line of a key overrides an earlier one).
    fn read_state(&mut self) {
        let text = std::fs::read_to_string(self.dir.join("state")).expect("the topology's state");
        self.state = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    fn get(&self, key: &str) -> &str {
        self.state
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not in {}/state", self.dir.display()))
    }

    fn setting(&self, key: &str) -> String {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("scripts/topology.sh printed no {key}"))
    }

    async fn script(&self, args: &[&str]) -> Result<String, String> {
        let output = tokio::process::Command::new("bash")
            .arg(script())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("bash runs scripts/topology.sh");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "scripts/topology.sh {} failed ({}): {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn dir_arg(&self) -> String {
        self.dir.display().to_string()
    }

    /// The pid in the file that `key` names.
    fn pid(&self, key: &str) -> Option<u32> {
        std::fs::read_to_string(self.get(key)).ok()?.trim().parse().ok()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(script())
            .arg("kill")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

/// SIGKILL of `pid`, then waits until `port` no longer answers.
fn kill_9(pid: u32, port: u16) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while port_open(port) {
        assert!(
            std::time::Instant::now() < deadline,
            "port {port} still answers after SIGKILL of {pid}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` until it gives a value or `TOPOLOGY_WAIT` is over (then fails with `what`).
async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + TOPOLOGY_WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {TOPOLOGY_WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- RabbitMQ ----------------------------------------------------------------------------------

/// Three RabbitMQ nodes in one cluster, each with its own AMQP port. Quorum queues declared on it
/// get a member on each node.
#[derive(Debug)]
pub struct RabbitCluster {
    topology: Topology,
}

/// A client connection as the cluster lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitConnection {
    /// The node (index) the connection is on.
    pub node: usize,
    /// The name the client gave (`connection_name` client property), if any.
    pub name: Option<String>,
    /// The client's port (its end of the TCP connection).
    pub peer_port: u16,
}

impl RabbitCluster {
    pub const NODES: usize = 3;

    pub async fn start() -> Self {
        Self {
            topology: Topology::up("rabbit-cluster").await,
        }
    }

    fn key(i: usize, what: &str) -> String {
        assert!(i < Self::NODES, "node {i} of a {}-node cluster", Self::NODES);
        format!("rabbit_{}_{what}", i + 1)
    }

    /// The AMQP port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.topology.get(&Self::key(i, "port")).parse().unwrap()
    }

    /// Node `i`'s URL.
    pub fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port(i))
    }

    /// One URL per node.
    pub fn urls(&self) -> Vec<String> {
        (0..Self::NODES).map(|i| self.url(i)).collect()
    }

    /// The worker's `AMQP_URL`: the nodes' URLs, comma-separated.
    pub fn amqp_url(&self) -> String {
        self.topology.setting("AMQP_URL")
    }

    /// Node `i`'s Erlang node name (`gw-c<port>-<i+1>@localhost`).
    pub fn node_name(&self, i: usize) -> String {
        self.topology.get(&Self::key(i, "name")).to_string()
    }

    fn node_index(&self, name: &str) -> Option<usize> {
        (0..Self::NODES).find(|&i| self.node_name(i) == name)
    }

    /// Whether node `i`'s AMQP port answers.
    pub fn is_up(&self, i: usize) -> bool {
        port_open(self.port(i))
    }

    /// SIGKILL of node `i`'s Erlang VM; returns once its AMQP port is closed.
    pub fn kill_node(&self, i: usize) {
        let pid = self
            .topology
            .pid(&Self::key(i, "pidfile"))
            .unwrap_or_else(|| panic!("node {i} has no pid file: is it running?"));
        kill_9(pid, self.port(i));
    }

    /// Starts node `i` again on its data (it rejoins the cluster); returns once it takes
    /// connections.
    pub async fn start_node(&mut self, i: usize) {
        let index = (i + 1).to_string();
        let dir = self.topology.dir_arg();
        if let Err(error) = self.topology.script(&["start-rabbit", &dir, &index]).await {
            panic!("{error}");
        }
        self.topology.read_state();
    }

    /// `rabbitmqctl -n <node i> args...`: its stdout, or its error.
    pub async fn try_rabbitmqctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let node = self.node_name(i);
        let mut all = vec!["rabbitmqctl", "-q", "-n", node.as_str()];
        all.extend_from_slice(args);
        self.topology.script(&all).await
    }

    /// The same, failing the test when rabbitmqctl fails.
    pub async fn rabbitmqctl(&self, i: usize, args: &[&str]) -> String {
        self.try_rabbitmqctl(i, args)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `args` with `--formatter json`, asked of the first node that answers.
    async fn ask_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--formatter", "json"]);
        let mut failures = Vec::new();
        for i in (0..Self::NODES).filter(|&i| self.is_up(i)) {
            match self.try_rabbitmqctl(i, &all).await {
                Ok(text) => {
                    return serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("rabbitmqctl {args:?} gave no JSON ({e}): {text}"))
                }
                Err(error) => failures.push(error),
            }
        }
        panic!("no node answered rabbitmqctl {args:?}: {failures:?}");
    }

    /// The nodes (indices) that node `i` sees running in its cluster (`cluster_status`).
    pub async fn running_nodes(&self, i: usize) -> Vec<usize> {
        let text = self
            .rabbitmqctl(i, &["cluster_status", "--formatter", "json"])
            .await;
        let status: Value = serde_json::from_str(&text).expect("cluster_status is JSON");
        let mut nodes: Vec<usize> = status["running_nodes"]
            .as_array()
            .expect("cluster_status lists running_nodes")
            .iter()
            .filter_map(|n| self.node_index(n.as_str()?))
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// A queue's line of `list_queues name type leader members`, if it exists.
    async fn queue_info(&self, queue: &str) -> Option<Value> {
        let list = self
            .ask_json(&["list_queues", "name", "type", "leader", "members"])
            .await;
        list.as_array()?.iter().find(|q| q["name"] == queue).cloned()
    }

    /// The node (index) leading quorum queue `queue`, if it exists and has a leader.
    pub async fn queue_leader(&self, queue: &str) -> Option<usize> {
        let info = self.queue_info(queue).await?;
        self.node_index(info["leader"].as_str()?)
    }

    /// The nodes (indices) holding a member of quorum queue `queue`.
    pub async fn queue_members(&self, queue: &str) -> Vec<usize> {
        let Some(info) = self.queue_info(queue).await else {
            return Vec::new();
        };
        let mut members: Vec<usize> = info["members"]
            .as_array()
            .map(|m| m.iter().filter_map(|n| self.node_index(n.as_str()?)).collect())
            .unwrap_or_default();
        members.sort_unstable();
        members
    }

    /// Waits until quorum queue `queue` has a leader on a running node other than `not_on`;
    /// returns that node.
    pub async fn wait_for_leader(&self, queue: &str, not_on: Option<usize>) -> usize {
        wait_until(&format!("a leader for {queue}"), || async move {
            let leader = self.queue_leader(queue).await?;
            (Some(leader) != not_on && self.is_up(leader)).then_some(leader)
        })
        .await
    }

    /// The client connections of the whole cluster, with the node each is on.
    pub async fn connections(&self) -> Vec<RabbitConnection> {
        let list = self
            .ask_json(&["list_connections", "port", "peer_port", "client_properties"])
            .await;
        list.as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|c| {
                        Some(RabbitConnection {
                            // Each node has an AMQP port of its own.
                            node: (0..Self::NODES).find(|&i| c["port"] == self.port(i))?,
                            name: connection_name(&c["client_properties"]),
                            peer_port: u16::try_from(c["peer_port"].as_u64()?).ok()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many client connections each node holds.
    pub async fn connections_per_node(&self) -> Vec<usize> {
        let mut counts = vec![0; Self::NODES];
        for connection in self.connections().await {
            counts[connection.node] += 1;
        }
        counts
    }

    /// The nodes (indices) holding a connection whose name starts with `prefix` (the worker
    /// names its connections `genesys-worker pid <pid>`).
    pub async fn nodes_of_connections(&self, prefix: &str) -> Vec<usize> {
        let mut nodes: Vec<usize> = self
            .connections()
            .await
            .into_iter()
            .filter(|c| c.name.as_deref().is_some_and(|n| n.starts_with(prefix)))
            .map(|c| c.node)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Stops every node (SIGKILL) and removes their data.
    pub fn stop(self) {}
}

/// The `connection_name` of a connection's client properties as rabbitmqctl's JSON shows them
/// (an object, or a list of `[key, type, value]` triples).
fn connection_name(properties: &Value) -> Option<String> {
    if let Some(name) = properties.get("connection_name").and_then(Value::as_str) {
        return Some(name.to_string());
    }
    properties.as_array()?.iter().find_map(|entry| {
        let entry = entry.as_array()?;
        (entry.first()?.as_str()? == "connection_name")
            .then(|| entry.last()?.as_str().map(str::to_string))
            .flatten()
    })
}

// --- Redis -------------------------------------------------------------------------------------

/// `redis-cli -p port args...`: its output, or its error (redis-cli prints a server's error
/// reply on stdout and exits 0: that counts as an error too).
pub async fn redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let run = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .map_err(|_| format!("redis-cli -p {port} {args:?}: no answer within 5 s"))?
        .map_err(|e| format!("redis-cli does not run: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() || text.starts_with("ERR") || text.starts_with("Could not connect") {
        return Err(format!(
            "redis-cli -p {port} {args:?}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(text)
}

/// The role (`master`, `slave` or `sentinel`) the server on `port` reports, if it answers.
pub async fn redis_role(port: u16) -> Option<String> {
    let text = redis_cli(port, &["ROLE"]).await.ok()?;
    text.lines().next().map(str::to_string)
}

fn redis_pid(topology: &Topology, port: u16) -> u32 {
    topology
        .pid(&format!("redis_{port}_pidfile"))
        .unwrap_or_else(|| panic!("redis on {port} has no pid file: is it running?"))
}

fn ports(list: &str) -> Vec<u16> {
    list.split(',').map(|p| p.parse().unwrap()).collect()
}

/// A Redis primary, one replica and three Sentinels (quorum 2) watching them as `mymaster`,
/// which fail over within a few seconds of the primary's death.
#[derive(Debug)]
pub struct SentinelRedis {
    topology: Topology,
}

impl SentinelRedis {
    pub async fn start() -> Self {
        Self {
            topology: Topology::up("redis-sentinel").await,
        }
    }

    /// The worker's settings: `REDIS_TOPOLOGY=sentinel`, `REDIS_URL` (the Sentinels) and
    /// `REDIS_SENTINEL_MASTER`.
    pub fn redis_env(&self) -> Vec<(String, String)> {
        self.topology.settings.clone()
    }

    pub fn master_name(&self) -> &str {
        self.topology.get("master_name")
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        ports(self.topology.get("sentinel_ports"))
    }

    /// The two Redis servers (the first primary first).
    pub fn redis_ports(&self) -> Vec<u16> {
        ports(self.topology.get("redis_ports"))
    }

    /// The primary the Sentinels name now (the first Sentinel that answers).
    pub async fn primary_port(&self) -> u16 {
        for sentinel in self.sentinel_ports() {
            let answer = redis_cli(
                sentinel,
                &["SENTINEL", "get-master-addr-by-name", self.master_name()],
            )
            .await;
            if let Some(port) = answer.ok().and_then(|t| t.lines().nth(1)?.trim().parse().ok()) {
                return port;
            }
        }
        panic!("no Sentinel names the primary of {}", self.master_name());
    }

    /// SIGKILL of the server on `port` (a Redis server or a Sentinel).
    pub fn kill(&self, port: u16) {
        kill_9(redis_pid(&self.topology, port), port);
    }

    /// SIGKILL of the current primary; returns its port.
    pub async fn kill_primary(&self) -> u16 {
        let port = self.primary_port().await;
        self.kill(port);
        port
    }

    /// Waits until the Sentinels agree on a primary other than `old_port` and it answers
    /// `ROLE` as master; returns its port.
    pub async fn wait_for_failover(&self, old_port: u16) -> u16 {
        wait_until("a Sentinel failover", || async move {
            let mut named = Vec::new();
            for sentinel in self.sentinel_ports() {
                let answer = redis_cli(
                    sentinel,
                    &["SENTINEL", "get-master-addr-by-name", self.master_name()],
                )
                .await
                .ok()?;
                named.push(answer.lines().nth(1)?.trim().parse::<u16>().ok()?);
            }
            let new = named[0];
            let agreed = named.iter().all(|&p| p == new) && new != old_port;
            (agreed && redis_role(new).await.as_deref() == Some("master")).then_some(new)
        })
        .await
    }

    /// Starts the server (or Sentinel) of `port` again. An old primary comes back as a master
    /// with its own (empty) data until the Sentinels make it a replica.
    pub async fn restart_node(&self, port: u16) {
        let dir = self.topology.dir_arg();
        if let Err(error) = self
            .topology
            .script(&["start-redis", &dir, &port.to_string()])
            .await
        {
            panic!("{error}");
        }
    }

    /// Kills everything (SIGKILL) and removes the data.
    pub fn stop(self) {}
}

/// A node of a Redis Cluster as `CLUSTER NODES` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// Flagged `fail` (or `fail?`) by the node asked.
    pub failed: bool,
    /// A replica's primary's id.
    pub primary_id: Option<String>,
    /// The slot ranges it serves (inclusive).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    pub fn slot_count(&self) -> usize {
        self.slots.iter().map(|(a, b)| usize::from(b - a) + 1).sum()
    }
}

fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            // 127.0.0.1:port@bus
            let port = fields[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = fields[2];
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(ClusterNode {
                id: fields[0].to_string(),
                port,
                primary: flags.contains("master"),
                failed: flags.contains("fail"),
                primary_id: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// Six Redis servers in one Redis Cluster: three primaries sharing the 16384 slots, each with a
/// replica (`cluster-node-timeout` 1 s, so a dead primary's replica takes over within seconds).
#[derive(Debug)]
pub struct RedisCluster {
    topology: Topology,
}

impl RedisCluster {
    pub async fn start() -> Self {
        Self {
            topology: Topology::up("redis-cluster").await,
        }
    }

    /// The worker's settings: `REDIS_TOPOLOGY=cluster` and `REDIS_URL` (all six nodes).
    pub fn redis_env(&self) -> Vec<(String, String)> {
        self.topology.settings.clone()
    }

    /// The six nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        ports(self.topology.get("cluster_ports"))
    }

    /// `CLUSTER NODES` as the node on `port` sees it.
    pub async fn nodes_seen_by(&self, port: u16) -> Result<Vec<ClusterNode>, String> {
        Ok(parse_cluster_nodes(
            &redis_cli(port, &["CLUSTER", "NODES"]).await?,
        ))
    }

    /// The ports that answer `PING`.
    pub async fn live_ports(&self) -> Vec<u16> {
        let mut live = Vec::new();
        for port in self.ports() {
            if redis_cli(port, &["PING"]).await.is_ok_and(|t| t.trim() == "PONG") {
                live.push(port);
            }
        }
        live
    }

    /// The cluster's nodes as the first live node sees them.
    pub async fn nodes(&self) -> Vec<ClusterNode> {
        for port in self.live_ports().await {
            if let Ok(nodes) = self.nodes_seen_by(port).await {
                return nodes;
            }
        }
        panic!("no node of the cluster answers");
    }

    /// The ports of the primaries serving slots (not failed).
    pub async fn primaries(&self) -> Vec<u16> {
        let mut primaries: Vec<u16> = self
            .nodes()
            .await
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        primaries.sort_unstable();
        primaries
    }

    /// The slot ranges the node on `port` serves.
    pub async fn slots_of(&self, port: u16) -> Vec<(u16, u16)> {
        self.nodes()
            .await
            .into_iter()
            .find(|n| n.port == port)
            .map(|n| n.slots)
            .unwrap_or_default()
    }

    /// How many of the 16384 slots the live primaries serve.
    pub async fn covered_slots(&self) -> usize {
        self.nodes()
            .await
            .iter()
            .filter(|n| n.primary && !n.failed)
            .map(ClusterNode::slot_count)
            .sum()
    }

    /// The port of a (not failed) replica of the primary on `primary_port`, with its link to
    /// the primary up (waits for one: right after a failover the old primary takes a moment to
    /// become the new one's replica).
    pub async fn replica_of(&self, primary_port: u16) -> u16 {
        wait_until(&format!("a replica of {primary_port}"), || async move {
            let nodes = self.nodes().await;
            let primary = nodes.iter().find(|n| n.port == primary_port)?;
            for replica in nodes
                .iter()
                .filter(|n| !n.failed && n.primary_id.as_deref() == Some(primary.id.as_str()))
            {
                let info = redis_cli(replica.port, &["INFO", "replication"]).await.ok()?;
                if info.lines().any(|l| l.trim() == "master_link_status:up") {
                    return Some(replica.port);
                }
            }
            None
        })
        .await
    }

    /// SIGKILL of the node on `port`.
    pub fn kill_node(&self, port: u16) {
        kill_9(redis_pid(&self.topology, port), port);
    }

    /// Starts the node on `port` again (it rejoins the cluster from its nodes.conf).
    pub async fn restart_node(&self, port: u16) {
        let dir = self.topology.dir_arg();
        if let Err(error) = self
            .topology
            .script(&["start-redis", &dir, &port.to_string()])
            .await
        {
            panic!("{error}");
        }
    }

    /// A graceful failover: `CLUSTER FAILOVER` on a replica of the primary on `primary_port`.
    /// Returns once every live node sees the replica serving the primary's slots and the
    /// cluster is ok; the replica's port is returned.
    pub async fn failover(&self, primary_port: u16) -> u16 {
        let slots = self.slots_of(primary_port).await;
        let replica = self.replica_of(primary_port).await;
        redis_cli(replica, &["CLUSTER", "FAILOVER"])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.wait_for_slots(replica, &slots).await;
        self.wait_ok().await;
        // Done when the old primary follows the new one.
        assert_eq!(self.replica_of(replica).await, primary_port);
        replica
    }

    /// The hard way: SIGKILL of the primary on `primary_port`; returns once every live node
    /// sees its replica serving its slots and the cluster is ok. The replica's port is returned.
    pub async fn fail_over_by_killing(&self, primary_port: u16) -> u16 {
        let slots = self.slots_of(primary_port).await;
        let replica = self.replica_of(primary_port).await;
        self.kill_node(primary_port);
        self.wait_for_slots(replica, &slots).await;
        self.wait_ok().await;
        replica
    }

    async fn wait_for_slots(&self, port: u16, slots: &[(u16, u16)]) {
        wait_until(&format!("the node on {port} serving {slots:?}"), || async move {
            for live in self.live_ports().await {
                let nodes = self.nodes_seen_by(live).await.ok()?;
                let node = nodes.iter().find(|n| n.port == port)?;
                if !(node.primary && slots.iter().all(|s| node.slots.contains(s))) {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }

    /// Waits until every live node says `cluster_state:ok` and sees all 16384 slots served.
    pub async fn wait_ok(&self) {
        wait_until("cluster_state:ok on every live node", || async move {
            let live = self.live_ports().await;
            for &port in &live {
                let info = redis_cli(port, &["CLUSTER", "INFO"]).await.ok()?;
                if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    return None;
                }
                let nodes = self.nodes_seen_by(port).await.ok()?;
                let covered: usize = nodes
                    .iter()
                    .filter(|n| n.primary && !n.failed)
                    .map(ClusterNode::slot_count)
                    .sum();
                if covered != 16384 {
                    return None;
                }
            }
            (!live.is_empty()).then_some(())
        })
        .await;
    }

    /// Kills every node (SIGKILL) and removes the data.
    pub fn stop(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_parse() {
        let text = "\
aacd 127.0.0.1:26914@36914 slave f42e 0 1796147444928 2 connected
c53e 127.0.0.1:27198@37198 master,fail - 1796147451082 1796147450581 3 disconnected
da14 127.0.0.1:25334@35334 myself,master - 0 1796147444000 1 connected 0-5460 5462 [5461->-f42e]
";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].port, 26914);
        assert!(!nodes[0].primary);
        assert_eq!(nodes[0].primary_id.as_deref(), Some("f42e"));
        assert!(nodes[1].primary && nodes[1].failed && nodes[1].slots.is_empty());
        assert_eq!(nodes[2].slots, vec![(0, 5460), (5462, 5462)]);
        assert_eq!(nodes[2].slot_count(), 5462);
    }

    #[test]
    fn connection_names_parse() {
        let listed = serde_json::json!([
            ["product", "longstr", "lapin"],
            ["connection_name", "longstr", "genesys-worker pid 7"]
        ]);
        assert_eq!(connection_name(&listed).as_deref(), Some("genesys-worker pid 7"));
        let object = serde_json::json!({"connection_name": "x"});
        assert_eq!(connection_name(&object).as_deref(), Some("x"));
        assert_eq!(connection_name(&serde_json::json!({})), None);
    }
}
