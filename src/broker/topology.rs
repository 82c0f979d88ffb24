//! The exchanges and queues the worker uses (docs/architecture.md, section 2.5; the README's topology paragraph), declared at start,
//! idempotently.
//!
//! - `genesys.jobs`, `genesys.audit`, `genesys.crm`: durable topic exchanges, no arguments, so a
//!   producer or consumer may declare them first.
//! - the work queue: a quorum queue bound to `genesys.jobs` with `#` (every kind reaches it, so
//!   an unknown kind is dead-lettered rather than dropped as unroutable), with a dead-letter
//!   exchange and a `delivery-limit` declared together: a message that keeps crashing workers
//!   ends in the dead-letter queue instead of looping.
//! - `genesys.jobs.dead`: the dead-letter exchange (topic) and its quorum queue, bound with `#`.
//! - the batch queue: the batch lane, same arguments as the work queue, bound to no exchange:
//!   a batch publishes its children straight to it (default exchange), so they never queue in
//!   front of single jobs.
//! - retry queues `<lane queue>.retry.<delay>ms`, one per tier and lane: a message waits there
//!   for the tier's TTL, then is dead-lettered back to its lane's queue through the default
//!   exchange. Quorum queues too, with at-least-once dead-lettering: on a cluster a classic
//!   queue lives on one node, and while that node is down neither it nor the worker's
//!   declaration of it would work. A classic retry queue left by an earlier version is used as
//!   it is (with a warning: on a cluster, delete it once empty and the worker declares it anew).
//! - paused queues `<lane queue>.paused`: where jobs an operator paused wait, without a TTL,
//!   until `resume` moves them back ([`crate::control`]). Quorum queues, bound to nothing.

use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer, ExchangeKind};

use super::BrokerError;
use crate::config::Topology;

pub async fn declare(connection: &Connection, topology: &Topology) -> Result<(), BrokerError> {
    let channel = &connection.create_channel().await?;
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
    channel
        .queue_declare(topology.dead_letter.as_str().into(), queue_options, quorum())
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

    for lane in topology.lane_queues() {
        for tier in 0..topology.retry_delays_ms.len() {
            let queue = topology.retry_queue(lane, tier).expect("a tier of the list");
            declare_retry_queue(
                connection,
                channel,
                &queue,
                retry_queue_arguments(topology, lane, tier),
            )
            .await?;
        }
        channel
            .queue_declare(lane.into(), queue_options, work_queue_arguments(topology))
            .await?;
        channel
            .queue_declare(paused_queue(lane).as_str().into(), queue_options, quorum())
            .await?;
    }
    channel
        .queue_bind(
            topology.work_queue.as_str().into(),
            topology.jobs_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Consumes a queue of its own (server-named, exclusive: gone with the connection) bound to
/// `exchange` with `pattern`: what a reader of events sees from now on, and no one else.
pub async fn consume_private(
    channel: &Channel,
    exchange: &str,
    pattern: &str,
    no_ack: bool,
) -> Result<Consumer, lapin::Error> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Where the paused jobs of the lane queue `lane_queue` wait.
pub fn paused_queue(lane_queue: &str) -> String {
    format!("{lane_queue}.paused")
}

/// The arguments of a plain quorum queue.
fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

/// Declares a retry queue; one that an earlier version declared as a classic queue (the broker
/// refuses the new arguments with 406 and closes the channel) is checked to exist and kept.
async fn declare_retry_queue(
    connection: &Connection,
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let probe = connection.create_channel().await?;
    match probe.queue_declare(queue.into(), options, arguments).await {
        Ok(_) => {
            let _ = probe.close(200, "declared".into()).await;
            Ok(())
        }
        Err(error) if precondition_failed(&error) => {
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..options
                    },
                    FieldTable::default(),
                )
                .await?;
            tracing::warn!(queue, "Retry queue declared by an earlier version (a classic queue) kept as it is; on a RabbitMQ cluster delete it once it is empty, so the worker declares it as a quorum queue.");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

fn precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

/// Arguments of retry queue `tier` of lane queue `lane`: a quorum queue with its delay as TTL,
/// then back to the lane through the default exchange, at least once (which needs
/// `reject-publish` overflow).
pub fn retry_queue_arguments(topology: &Topology, lane: &str, tier: usize) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(topology.retry_delays_ms[tier] as i64),
    );
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(lane.into()),
    );
    args
}

/// Arguments of both lanes' queues; `deploy/rabbitmq/definitions.json` must declare the same (a
/// test checks).
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn as_json(value: &AMQPValue) -> Value {
        match value {
            AMQPValue::LongString(s) => json!(s.to_string()),
            AMQPValue::LongInt(i) => json!(i),
            AMQPValue::LongLongInt(i) => json!(i),
            other => panic!("unexpected argument type {other:?}"),
        }
    }

    /// A broker loaded from the shipped definitions must accept the worker's own declarations,
    /// which fail with PRECONDITION_FAILED if any argument differs.
    #[test]
    fn shipped_rabbitmq_definitions_match_what_the_worker_declares() {
        let raw = include_str!("../../deploy/rabbitmq/definitions.json");
        let definitions: Value = serde_json::from_str(raw).unwrap();
        let topology = Topology::default();
        let queue = |name: &str| {
            definitions["queues"]
                .as_array()
                .unwrap()
                .iter()
                .find(|q| q["name"] == name)
                .cloned()
                .unwrap()
        };
        let declared: serde_json::Map<String, Value> = work_queue_arguments(&topology)
            .inner()
            .iter()
            .map(|(k, v)| (k.to_string(), as_json(v)))
            .collect();
        for lane in topology.lane_queues() {
            assert_eq!(queue(lane)["arguments"], Value::Object(declared.clone()));
        }
        assert_eq!(
            queue(&topology.dead_letter)["arguments"],
            json!({"x-queue-type": "quorum"})
        );
        for exchange in [
            &topology.jobs_exchange,
            &topology.audit_exchange,
            &topology.crm_exchange,
            &topology.dead_letter,
        ] {
            let found = definitions["exchanges"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| &e["name"] == exchange);
            let found = found.unwrap_or_else(|| panic!("exchange {exchange} missing"));
            assert_eq!(
                (found["type"].as_str(), found["durable"].as_bool()),
                (Some("topic"), Some(true))
            );
            assert_eq!(found["arguments"], json!({}));
        }
        let bound =
            |source: &str, destination: &str| {
                definitions["bindings"].as_array().unwrap().iter().any(|b| {
                    b["source"] == source && b["destination"] == destination && b["routing_key"] == "#"
                })
            };
        for lane in topology.lane_queues() {
            for tier in 0..topology.retry_delays_ms.len() {
                let retry = queue(&topology.retry_queue(lane, tier).unwrap());
                let declared: serde_json::Map<String, Value> = retry_queue_arguments(&topology, lane, tier)
                    .inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), as_json(v)))
                    .collect();
                assert_eq!(retry["arguments"], Value::Object(declared));
            }
        }
        assert!(bound(&topology.jobs_exchange, &topology.work_queue));
        assert!(bound(&topology.dead_letter, &topology.dead_letter));
    }
}
