//! RabbitMQ: connecting, declaring the topology, and publishing with confirms.

pub mod publisher;
pub mod topology;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

pub use publisher::Publisher;

use crate::config::ServiceUrls;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker ended the consumer on queue {queue:?} (connection lost or queue deleted)")]
    ConsumerEnded { queue: String },
    #[error("RabbitMQ node {node} did not answer within {secs} s", secs = CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { node: String },
    #[error("RabbitMQ refused to confirm a publish to exchange {exchange:?} (routing key {routing_key:?})")]
    Nacked { exchange: String, routing_key: String },
}

/// How long one node may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The node the next connection tries first: a random one when the process starts (so the
/// replicas of a fleet spread over a cluster's nodes), then the one that last answered.
static PREFERRED_NODE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Opens a connection to the broker: to the preferred node of `urls`, or, when it does not
/// answer, to the next one that does (a RabbitMQ cluster's nodes all serve every queue).
pub async fn connect(urls: &ServiceUrls) -> Result<Connection, BrokerError> {
    let nodes = urls.nodes();
    let mut start = PREFERRED_NODE.load(Ordering::Relaxed);
    if start == usize::MAX {
        start = std::collections::hash_map::RandomState::new().hash_one(std::process::id()) as usize;
    }
    let start = start % nodes.len();
    let properties = || {
        ConnectionProperties::default()
            .with_connection_name(format!("genesys-worker pid {}", std::process::id()).into())
    };
    let mut failure = None;
    for offset in 0..nodes.len() {
        let index = (start + offset) % nodes.len();
        let node = &nodes[index];
        let error =
            match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(node.expose(), properties()))
                .await
            {
                Ok(Ok(connection)) => {
                    PREFERRED_NODE.store(index, Ordering::Relaxed);
                    return Ok(connection);
                }
                Ok(Err(error)) => BrokerError::Amqp(error),
                Err(_) => BrokerError::ConnectTimeout {
                    node: node.to_string(),
                },
            };
        if nodes.len() > 1 {
            tracing::warn!(node = %node, error.message = %error, "RabbitMQ node unreachable; trying the next.");
        }
        failure = Some(error);
    }
    Err(failure.expect("ServiceUrls holds at least one node"))
}
