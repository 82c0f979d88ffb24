//! The one Redis connection the worker shares, whatever stands behind `REDIS_URL`: a single
//! server, a primary found through Sentinel, or a Redis Cluster (docs/architecture.md,
//! section 4.16). Every command reconnects on its own after a failure; an outage
//! surfaces as an error, never as a call that waits forever.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    AggregateOp, MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, RedisFuture, RedisResult, TlsMode, Value,
};

use super::StoreError;
use crate::config::{RedisSettings, RedisTopology};

const CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A clonable handle; clones share the underlying connection(s).
#[derive(Clone)]
pub(crate) enum Connection {
    Standalone(ConnectionManager),
    Sentinel(Arc<SentinelPrimary>),
    Cluster(ClusterConnection),
}

impl Connection {
    pub(crate) async fn open(settings: &RedisSettings) -> RedisResult<Self> {
        let nodes: Vec<&str> = settings.urls.nodes().iter().map(|url| url.expose()).collect();
        match settings.topology {
            RedisTopology::Standalone => {
                let client = redis::Client::open(nodes[0])?;
                Ok(Self::Standalone(
                    ConnectionManager::new_with_config(client, manager_config()).await?,
                ))
            }
            RedisTopology::Sentinel => {
                // The primary is reached as the Sentinels are: the same credentials, database
                // and TLS as the first Sentinel URL.
                let first = nodes[0].into_connection_info()?;
                let primary_info = SentinelNodeConnectionInfo {
                    tls_mode: match first.addr {
                        ConnectionAddr::TcpTls { .. } => Some(TlsMode::Secure),
                        _ => None,
                    },
                    redis_connection_info: Some(first.redis),
                };
                let sentinel = SentinelClient::build(
                    nodes,
                    settings.sentinel_master.clone(),
                    Some(primary_info),
                    SentinelServerType::Master,
                )?;
                let primary = SentinelPrimary {
                    sentinel: tokio::sync::Mutex::new(sentinel),
                    current: Mutex::new(None),
                };
                primary.connection().await?;
                Ok(Self::Sentinel(Arc::new(primary)))
            }
            RedisTopology::Cluster => {
                let client = ClusterClientBuilder::new(nodes)
                    .connection_timeout(CONNECTION_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    // A failover takes the cluster a few seconds; the job is retried by the
                    // intake rather than held here.
                    .retries(3)
                    .build()?;
                Ok(Self::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Waits until `replicas` replicas hold every write made so far through this connection
    /// (Redis `WAIT`) to the server holding `key`, or, with no key, to every primary; returns
    /// how many acknowledged within `timeout` (the fewest, for several primaries).
    pub(crate) async fn wait_for_replicas(
        &self,
        key: Option<&str>,
        replicas: u64,
        timeout: Duration,
    ) -> RedisResult<u64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            // WAIT names no key: send it to the primary of the key's slot, on the connection
            // the writes went through.
            Self::Cluster(cluster) => {
                let routing = match key {
                    Some(key) => RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                        hash_slot(key),
                        SlotAddr::Master,
                    ))),
                    None => RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::Aggregate(AggregateOp::Min)),
                    )),
                };
                let reply = cluster.clone().route_command(&wait, routing).await?;
                redis::from_redis_value(&reply)
            }
            other => wait.query_async(&mut other.clone()).await,
        }
    }
}

impl Connection {
    /// Ok when `replicas` replicas hold every write made so far (see
    /// [`Connection::wait_for_replicas`]); else `NotReplicated`, naming `key` (or every primary)
    /// and how far the writes got.
    pub(crate) async fn ensure_replicated(
        &self,
        key: Option<&str>,
        replicas: u64,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let acknowledged = self.wait_for_replicas(key, replicas, timeout).await?;
        if acknowledged >= replicas {
            return Ok(());
        }
        Err(StoreError::NotReplicated {
            key: key.unwrap_or("every primary").to_string(),
            cause: format!(
                "writes reached {acknowledged} of the {replicas} replicas REDIS_WAIT_REPLICAS asks for within {} ms",
                timeout.as_millis()
            ),
        })
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECTION_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        .set_number_of_retries(1)
        .set_max_delay(500)
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the
/// first `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter()
            .position(|b| *b == b'}')
            .filter(|close| *close > 0)
            .map(|close| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % 16384
}

/// The primary named by the Sentinels, asked again after a failure (a failover moves it).
pub(crate) struct SentinelPrimary {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<ConnectionManager>>,
}

impl SentinelPrimary {
    async fn connection(&self) -> RedisResult<ConnectionManager> {
        if let Some(current) = self.current.lock().expect("not poisoned").clone() {
            return Ok(current);
        }
        let mut sentinel = self.sentinel.lock().await;
        // Another caller may have asked while this one waited for the lock.
        if let Some(current) = self.current.lock().expect("not poisoned").clone() {
            return Ok(current);
        }
        let client = sentinel.async_get_client().await?;
        let manager = ConnectionManager::new_with_config(client, manager_config()).await?;
        *self.current.lock().expect("not poisoned") = Some(manager.clone());
        tracing::info!("Connected to the Redis primary named by the Sentinels.");
        Ok(manager)
    }

    /// After an error that says the primary is gone or demoted, the next command asks the
    /// Sentinels again.
    fn judge<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(error) = &result {
            if primary_lost(error) {
                self.current.lock().expect("not poisoned").take();
            }
        }
        result
    }
}

fn primary_lost(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(error.kind(), ErrorKind::ReadOnly | ErrorKind::MasterDown)
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(manager) => manager.req_packed_command(cmd),
            Self::Cluster(cluster) => cluster.req_packed_command(cmd),
            Self::Sentinel(primary) => Box::pin(async move {
                let result = async { primary.connection().await?.req_packed_command(cmd).await }.await;
                primary.judge(result)
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(manager) => manager.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(primary) => Box::pin(async move {
                let result = async {
                    let mut manager = primary.connection().await?;
                    manager.req_packed_commands(pipeline, offset, count).await
                }
                .await;
                primary.judge(result)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(manager) => manager.get_db(),
            Self::Cluster(cluster) => cluster.get_db(),
            Self::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hash_slot;

    #[test]
    fn hash_slots_follow_the_cluster_specification() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(hash_slot("123456789"), 12739);
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
        assert_eq!(hash_slot("gw:idem:{user:1}:k"), hash_slot("gw:lock:{user:1}"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(
            hash_slot("foo{}{bar}"),
            crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % 16384
        );
    }
}
