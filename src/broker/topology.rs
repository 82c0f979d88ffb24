//! The exchanges and queues the worker uses (DESIGN.md section 4, "Topology"), declared at start,
//! idempotently.
//!
//! - `genesys.jobs`, `genesys.audit`, `genesys.crm`: durable topic exchanges, no arguments, so a
//!   producer or consumer may declare them first.
//! - the work queue: a quorum queue bound to `genesys.jobs` with `#` (every kind reaches it, so
//!   an unknown kind is dead-lettered rather than dropped as unroutable), with a dead-letter
//!   exchange and a `delivery-limit` declared together: a message that keeps crashing workers
//!   ends in the dead-letter queue instead of looping.
//! - `genesys.jobs.dead`: the dead-letter exchange (topic) and its quorum queue, bound with `#`.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::BrokerError;
use crate::config::Topology;

pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for exchange in [
        &topology.jobs_exchange,
        &topology.audit_exchange,
        &topology.crm_exchange,
        &topology.dead_letter,
    ] {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
    }

    let queue_options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut dead_args = FieldTable::default();
    dead_args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(topology.dead_letter.as_str().into(), queue_options, dead_args)
        .await?;
    channel
        .queue_bind(
            topology.dead_letter.as_str().into(),
            topology.dead_letter.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    channel
        .queue_declare(
            topology.work_queue.as_str().into(),
            queue_options,
            work_queue_arguments(topology),
        )
        .await?;
    channel
        .queue_bind(
            topology.work_queue.as_str().into(),
            topology.jobs_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Arguments of the work queue; `deploy/rabbitmq-definitions.json` must declare the same.
pub fn work_queue_arguments(topology: &Topology) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(topology.dead_letter.as_str().into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(topology.delivery_limit as i32),
    );
    args
}
