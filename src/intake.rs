//! Stage 0 and 8: consuming the work queue and settling each delivery.
//!
//! Manual acks with a prefetch; a delivery is acked only after its outcome was recorded and its
//! events confirmed, dead-lettered (then acked) when the job is rejected or failed, and returned
//! to the queue when the worker's own infrastructure failed. On shutdown the consumer is
//! cancelled first, then in-flight jobs get a grace period to finish.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Health;
use crate::broker::publisher::{origin, DeadLetter};
use crate::broker::BrokerError;
use crate::pipeline::{Disposition, Incoming, Pipeline};

/// Pause before returning a job whose processing hit an infrastructure error, so a Redis or
/// broker outage does not become a hot redelivery loop.
const INFRA_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct IntakeSettings {
    pub queue: String,
    pub concurrency: usize,
    pub prefetch: u16,
    pub grace: Duration,
}

/// Consumes until `shutdown` fires or the consumer ends, then drains in-flight jobs.
pub async fn consume(
    channel: &Channel,
    pipeline: Arc<Pipeline>,
    settings: &IntakeSettings,
    health: &Health,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    channel
        .basic_qos(settings.prefetch, BasicQosOptions { global: false })
        .await?;
    let tag = format!("genesys-worker-{}", uuid::Uuid::new_v4());
    let mut consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    health.set_consuming(true);
    tracing::info!(queue = %settings.queue, concurrency = settings.concurrency, "Consuming jobs.");
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let in_flight = TaskTracker::new();
    let result = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                let slot = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let pipeline = pipeline.clone();
                in_flight.spawn(async move {
                    settle(&pipeline, delivery).await;
                    drop(slot);
                });
            }
            Some(Err(err)) => break Err(BrokerError::from(err)),
            None => {
                break Err(BrokerError::ConsumerEnded {
                    queue: settings.queue.clone(),
                })
            }
        }
    };
    tracing::info!(
        in_flight = in_flight.len(),
        "Stopping intake; finishing in-flight jobs."
    );
    if let Err(err) = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await
    {
        tracing::warn!(error.message = %err, "Could not cancel the consumer.");
    }
    in_flight.close();
    if tokio::time::timeout(settings.grace, in_flight.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = in_flight.len(),
            "Grace period over; unfinished jobs will be redelivered."
        );
    }
    result
}

async fn settle(pipeline: &Pipeline, delivery: Delivery) {
    let incoming = Incoming {
        body: &delivery.data,
        properties: &delivery.properties,
        exchange: delivery.exchange.as_str(),
        routing_key: delivery.routing_key.as_str(),
    };
    let settled = match pipeline.process(incoming).await {
        Ok(Disposition::Ack) => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
        Ok(Disposition::Retry {
            queue,
            retries,
            attempts,
        }) => {
            let (exchange, routing_key) =
                origin(incoming.properties, incoming.exchange, incoming.routing_key);
            let parked = pipeline
                .publisher
                .retry(
                    &queue,
                    incoming.body,
                    incoming.properties,
                    (&exchange, &routing_key),
                    retries,
                    attempts,
                )
                .await;
            match parked {
                Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
                Err(err) => {
                    tracing::error!(error.message = %err, "Could not park a job in its retry queue; returning it to the queue.");
                    requeue(&delivery).await
                }
            }
        }
        Ok(Disposition::DeadLetter {
            code,
            message,
            attempts,
        }) => {
            let (exchange, routing_key) =
                origin(incoming.properties, incoming.exchange, incoming.routing_key);
            let letter = DeadLetter {
                body: incoming.body,
                properties: incoming.properties,
                exchange: &exchange,
                routing_key: &routing_key,
                error_code: &code,
                error_message: &message,
                attempts,
            };
            match pipeline
                .publisher
                .dead_letter(&pipeline.topology.dead_letter, letter)
                .await
            {
                Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
                Err(err) => {
                    tracing::error!(error.message = %err, "Could not dead-letter a job; returning it to the queue.");
                    requeue(&delivery).await
                }
            }
        }
        Err(err) => {
            tracing::error!(error.message = %err, error.cause_chain = ?err, "Infrastructure error; returning the job to the queue.");
            requeue(&delivery).await
        }
    };
    if let Err(err) = settled {
        tracing::error!(error.message = %err, "Could not settle a delivery; the broker will redeliver it.");
    }
}

async fn requeue(delivery: &Delivery) -> Result<(), lapin::Error> {
    tokio::time::sleep(INFRA_BACKOFF).await;
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .map(|_| ())
}
