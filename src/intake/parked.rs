//! Jobs an operator paused wait in their lane's `.paused` queue (no TTL, so no redelivery loop
//! and no budget spent); when a pause is lifted (or a cancel added), [`follow_resumes`] moves
//! them back to their lane's queue. A job still held by another pause goes to the back of the paused queue
//! instead, so one pass over the queue ends.

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::batch::BATCH_ID_HEADER;
use crate::broker::publisher::header_text;
use crate::broker::topology::paused_queue;
use crate::broker::{BrokerError, Publisher};
use crate::control::{Controls, JobTags, Snapshot};
use crate::lane::Lane;

/// Moves parked jobs back whenever a pause is lifted or a cancel added, when `unparker` is
/// notified (a job parked under controls that changed meanwhile), and once at start (a pause
/// lifted while no worker ran), until `stop`. `lanes` pairs each lane with its queue. A broker
/// error is retried with backoff: a parked job must not wait for the next reconnect.
pub async fn follow_resumes(
    channel: &Channel,
    publisher: &Publisher,
    lanes: [(Lane, &str); 2],
    mut controls: Controls,
    unparker: &Notify,
    stop: CancellationToken,
) {
    let mut seen = controls.current();
    let mut pass = true;
    let mut backoff = Duration::from_millis(500);
    loop {
        if pass {
            match unpark_all(channel, publisher, lanes, &seen).await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(err) => {
                    tracing::error!(error.message = %err, retry_in_ms = backoff.as_millis() as u64, "Could not move parked jobs back; trying again.");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = controls.changed() => {
                let now = controls.current();
                pass = now.frees_parked(&seen);
                seen = now;
            }
            _ = unparker.notified() => {
                seen = controls.current();
                pass = true;
            }
        }
    }
}

async fn unpark_all(
    channel: &Channel,
    publisher: &Publisher,
    lanes: [(Lane, &str); 2],
    controls: &Snapshot,
) -> Result<(), BrokerError> {
    for (lane, queue) in lanes {
        unpark(channel, publisher, lane, queue, controls).await?;
    }
    Ok(())
}

/// One pass over `lane_queue`'s paused queue: each job no pause holds goes back to the lane's
/// queue, the others to the back of the paused queue. Returns how many went back.
async fn unpark(
    channel: &Channel,
    publisher: &Publisher,
    lane: Lane,
    lane_queue: &str,
    controls: &Snapshot,
) -> Result<usize, BrokerError> {
    let parked = paused_queue(lane_queue);
    let waiting = channel
        .queue_declare(
            parked.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    let mut resumed = 0;
    for _ in 0..waiting {
        let Some(message) = channel
            .basic_get(parked.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        let delivery = &message.delivery;
        let batch = header_text(&delivery.properties, BATCH_ID_HEADER).and_then(|id| id.parse().ok());
        // A message that does not decode goes back, where the pipeline dead-letters it.
        // A cancelled job goes back too, to end as `cancelled`.
        let held = crate::job::decode(&delivery.data, usize::MAX)
            .ok()
            .is_some_and(|job| {
                let tags = JobTags::of(&job, lane, batch);
                controls.pausing(&tags).is_some() && controls.cancelling(&tags).is_none()
            });
        let destination = if held { parked.as_str() } else { lane_queue };
        publisher
            .publish("", destination, &delivery.data, delivery.properties.clone())
            .await?;
        delivery.ack(BasicAckOptions::default()).await?;
        resumed += usize::from(!held);
    }
    if resumed > 0 {
        tracing::info!(lane = lane.as_str(), resumed, "Resumed parked jobs.");
    }
    Ok(resumed)
}
