//! RabbitMQ: connecting, declaring the topology, and publishing with confirms.

pub mod publisher;
pub mod topology;

use lapin::{Connection, ConnectionProperties};

pub use publisher::Publisher;

use crate::config::ServiceUrl;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker ended the consumer on queue {queue:?} (connection lost or queue deleted)")]
    ConsumerEnded { queue: String },
    #[error("RabbitMQ refused to confirm a publish to exchange {exchange:?} (routing key {routing_key:?})")]
    Nacked { exchange: String, routing_key: String },
}

/// Opens a connection to the broker.
pub async fn connect(url: &ServiceUrl) -> Result<Connection, BrokerError> {
    Ok(Connection::connect(url.expose(), ConnectionProperties::default()).await?)
}
