//! Stage 0 and 8: consuming the work queue and settling each delivery.
//!
//! Manual acks with a prefetch; a delivery is acked only after its outcome was recorded and its
//! events confirmed, dead-lettered (then acked) when the job is rejected or failed, and returned
//! to the queue when the worker's own infrastructure failed. Acks of jobs that finish together
//! go as one frame ([`acks`]). On shutdown the consumer is cancelled first, then in-flight jobs
//! get a grace period to finish.

pub mod acks;
pub mod parked;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Health;
use crate::broker::publisher::{header_count, origin, DeadLetter};
use crate::broker::{BrokerError, Publisher};
use crate::control::Controls;
use crate::lane::Lane;
use crate::pipeline::{Disposition, Incoming, Pipeline, PipelineError};
use acks::Acks;

/// Pause before returning a job whose processing hit an infrastructure error, so a Redis or
/// broker outage does not become a hot redelivery loop.
const INFRA_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct IntakeSettings {
    pub queue: String,
    /// The lane whose Genesys budget share this queue's jobs draw on.
    pub lane: Lane,
    pub concurrency: usize,
    pub prefetch: u16,
    pub grace: Duration,
    /// Where jobs that end badly go (stage 8: the intake settles every delivery itself).
    pub dead_letter: String,
    /// The intake's own publisher, for retry queues and dead letters.
    pub publisher: Publisher,
    /// What operators paused: a paused lane stops consuming.
    pub controls: Controls,
    /// Wakes [`parked::follow_resumes`] for a job parked under controls that changed since.
    pub unparker: Arc<Notify>,
}

/// Why a consuming spell ended.
enum Pause {
    Shutdown,
    /// Redis failed: stop taking jobs until it answers again (fail closed).
    RedisDown,
    /// An operator paused the lane.
    LanePaused,
    Broken(BrokerError),
}

/// Consumes until `shutdown` fires or the consumer breaks, then drains in-flight jobs. While
/// Redis is unreachable no job can be deduplicated, so the worker stops consuming, reports not
/// ready, and resumes when Redis answers again.
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
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let in_flight = TaskTracker::new();
    let redis_down = Arc::new(Notify::new());
    let acks = Acks::start(channel.clone());
    let result = loop {
        match consume_until_paused(
            channel,
            &pipeline,
            settings,
            health,
            &shutdown,
            (&slots, &in_flight, &acks),
            &redis_down,
        )
        .await
        {
            Pause::Shutdown => break Ok(()),
            Pause::Broken(err) => break Err(err),
            Pause::RedisDown => {
                tracing::error!("Redis is unreachable: stopped consuming until it answers again.");
                if !wait_for_redis(&pipeline, &shutdown).await {
                    break Ok(());
                }
                tracing::info!("Redis answers again: resuming.");
            }
            Pause::LanePaused => {
                if !wait_for_resume(settings, &shutdown).await {
                    break Ok(());
                }
                tracing::info!(lane = settings.lane.as_str(), "Lane resumed by an operator.");
            }
        }
    };
    tracing::info!(
        in_flight = in_flight.len(),
        "Stopping intake; finishing in-flight jobs."
    );
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
    acks.close().await;
    result
}

/// One spell of consuming, with its own consumer tag.
async fn consume_until_paused(
    channel: &Channel,
    pipeline: &Arc<Pipeline>,
    settings: &IntakeSettings,
    health: &Health,
    shutdown: &CancellationToken,
    (slots, in_flight, acks): (&Arc<Semaphore>, &TaskTracker, &Acks),
    redis_down: &Arc<Notify>,
) -> Pause {
    let mut controls = settings.controls.clone();
    if let Some(pause) = controls.current().lane_paused(settings.lane) {
        tracing::warn!(lane = settings.lane.as_str(), pause = %pause.describe(), "Lane paused by an operator: not consuming.");
        return Pause::LanePaused;
    }
    let tag = format!("genesys-worker-{}", uuid::Uuid::new_v4());
    let consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    let mut consumer = match consumer {
        Ok(consumer) => consumer,
        Err(err) => return Pause::Broken(err.into()),
    };
    health.set_consuming(settings.lane, true);
    tracing::info!(queue = %settings.queue, lane = settings.lane.as_str(), concurrency = settings.concurrency, "Consuming jobs.");
    let pause = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Pause::Shutdown,
            _ = redis_down.notified() => break Pause::RedisDown,
            _ = controls.changed() => match controls.current().lane_paused(settings.lane) {
                Some(pause) => {
                    tracing::warn!(lane = settings.lane.as_str(), pause = %pause.describe(), "Lane paused by an operator: stopped consuming.");
                    break Pause::LanePaused;
                }
                None => continue,
            },
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                acks.received(delivery.delivery_tag);
                let slot = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let pipeline = pipeline.clone();
                let redis_down = redis_down.clone();
                let settings = settings.clone();
                let acks = acks.clone();
                in_flight.spawn(async move {
                    settle(&pipeline, &settings, delivery, &acks, &redis_down).await;
                    drop(slot);
                });
            }
            Some(Err(err)) => break Pause::Broken(err.into()),
            None => {
                break Pause::Broken(BrokerError::ConsumerEnded {
                    queue: settings.queue.clone(),
                })
            }
        }
    };
    health.set_consuming(settings.lane, false);
    if let Err(err) = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await
    {
        tracing::warn!(error.message = %err, "Could not cancel the consumer.");
    }
    if matches!(pause, Pause::RedisDown | Pause::LanePaused) {
        // Deliveries the broker pushed ahead of processing go back to the queue now.
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
        {
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
        }
    }
    pause
}

/// Waits until Redis answers (true) or shutdown is requested (false), asking every second at
/// most (a ping is cheap; a failover's end should not wait for a long backoff).
async fn wait_for_redis(pipeline: &Pipeline, shutdown: &CancellationToken) -> bool {
    let mut wait = Duration::from_millis(250);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        if pipeline.redis_answers().await {
            return true;
        }
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

/// Waits until the operators' pause of the lane is lifted (true) or shutdown is requested
/// (false).
async fn wait_for_resume(settings: &IntakeSettings, shutdown: &CancellationToken) -> bool {
    let mut controls = settings.controls.clone();
    while controls.current().lane_paused(settings.lane).is_some() {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = controls.changed() => {}
        }
    }
    true
}

/// Acks, parks, dead-letters or returns one delivery. A Redis failure also tells the intake to
/// stop consuming at once (`redis_down`), before this job's own backoff.
async fn settle(
    pipeline: &Pipeline,
    settings: &IntakeSettings,
    delivery: Delivery,
    acks: &Acks,
    redis_down: &Notify,
) {
    let lane = settings.lane;
    let _in_flight = crate::telemetry::job_started(lane.as_str());
    let incoming = Incoming {
        body: &delivery.data,
        properties: &delivery.properties,
        exchange: delivery.exchange.as_str(),
        routing_key: delivery.routing_key.as_str(),
    };
    let settled = match pipeline.process(incoming, lane).await {
        Ok(Disposition::Ack) => {
            acks.finished(delivery.delivery_tag);
            Ok(())
        }
        Ok(Disposition::Retry {
            queue,
            retries,
            attempts,
        }) => {
            let rounds = (retries, attempts);
            wait_in(
                settings,
                incoming,
                &queue,
                rounds,
                "park a job in its retry queue",
                &delivery,
                acks,
            )
            .await
        }
        Ok(Disposition::Park { queue, epoch }) => {
            // As it came: parking is no retry round.
            let rounds = (
                header_count(incoming.properties, "x-retries"),
                header_count(incoming.properties, "x-attempts"),
            );
            let parked = wait_in(
                settings,
                incoming,
                &queue,
                rounds,
                "park a paused job",
                &delivery,
                acks,
            )
            .await;
            if settings.controls.current().epoch != epoch {
                // The controls moved while it was being parked: a pass over the paused queue
                // may have missed it.
                settings.unparker.notify_one();
            }
            parked
        }
        Ok(Disposition::DeadLetter {
            code,
            message,
            attempts,
            details,
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
                error_details: details.as_ref(),
                attempts,
            };
            let sent = settings
                .publisher
                .dead_letter((&settings.dead_letter, &routing_key), letter)
                .await;
            if sent.is_ok() {
                crate::telemetry::dead_lettered(&code);
            }
            after_publish(sent, "dead-letter a job", &delivery, acks).await
        }
        Err(err) => {
            // Only when Redis does not answer (or not with enough replicas) does every job
            // wait; a job whose own record is broken goes back alone, until the broker's
            // delivery limit dead-letters it.
            if matches!(&err, PipelineError::Store(store) if store.means_redis_is_down()) {
                redis_down.notify_one();
            }
            tracing::error!(error.message = %err, error.cause_chain = ?err, "Infrastructure error; returning the job to the queue.");
            requeue(&delivery, acks).await
        }
    };
    if let Err(err) = settled {
        tracing::error!(error.message = %err, "Could not settle a delivery; the broker will redeliver it.");
    }
}

/// Moves the delivery to `queue` (a retry or paused queue) with its `(retries, attempts)` and
/// its origin, then acks it (`what` names the move in the log).
async fn wait_in(
    settings: &IntakeSettings,
    incoming: Incoming<'_>,
    queue: &str,
    (retries, attempts): (u32, u32),
    what: &str,
    delivery: &Delivery,
    acks: &Acks,
) -> Result<(), lapin::Error> {
    let (exchange, routing_key) = origin(incoming.properties, incoming.exchange, incoming.routing_key);
    let moved = settings
        .publisher
        .retry(
            queue,
            incoming.body,
            incoming.properties,
            (&exchange, &routing_key),
            retries,
            attempts,
        )
        .await;
    after_publish(moved, what, delivery, acks).await
}

/// After a retry or dead letter was published for the delivery: acked once it is confirmed, else
/// returned to its queue (`what` names the publish in the log).
async fn after_publish(
    published: Result<(), BrokerError>,
    what: &str,
    delivery: &Delivery,
    acks: &Acks,
) -> Result<(), lapin::Error> {
    match published {
        Ok(()) => {
            acks.finished(delivery.delivery_tag);
            Ok(())
        }
        Err(err) => {
            tracing::error!(error.message = %err, "Could not {what}; returning it to the queue.");
            requeue(delivery, acks).await
        }
    }
}

/// Returns the delivery to its queue after [`INFRA_BACKOFF`]; the acks no longer wait for it.
async fn requeue(delivery: &Delivery, acks: &Acks) -> Result<(), lapin::Error> {
    tokio::time::sleep(INFRA_BACKOFF).await;
    let nacked = delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .map(|_| ());
    // Sent or not, this delivery is no longer the acks' to wait for: a failed nack means the
    // channel is gone, and its deliveries with it.
    acks.settled(delivery.delivery_tag);
    nacked
}
