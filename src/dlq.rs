//! Dead-letter tooling: `genesys-worker dlq list` and `dlq replay`.
//!
//! Both take every message of the dead-letter queue without acking it, so nothing is lost if
//! the tool dies: what it does not ack goes back to the queue when its channel closes (and the
//! tool waits until it is back before it ends). `replay` re-publishes a matching message to
//! where it was first published (`x-original-exchange` / `x-original-routing-key`, or
//! RabbitMQ's `x-death` for a message RabbitMQ dead-lettered itself), waits for the broker's
//! confirm, and only then acks it from the dead-letter queue. Idempotency makes a replay
//! harmless: a change already applied is not applied again.

use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde::Serialize;
use serde_json::Value;

use crate::broker::publisher::{field_text, header_count, header_text};
use crate::broker::{self, BrokerError, Publisher};
pub use crate::cli::{DlqOptions, Filter};

/// One dead letter, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub job_id: Option<String>,
    pub kind: Option<String>,
    pub code: String,
    pub message: Option<String>,
    /// `x-error-details`: Genesys' account of the failure (a failed checkin or publish), as the
    /// audit event's `error.details`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    pub attempts: u32,
    pub retries: u32,
    pub first_seen: Option<String>,
    pub original_exchange: String,
    pub original_routing_key: String,
    pub batch_id: Option<String>,
    pub bytes: usize,
}

impl Letter {
    fn read(message: &BasicGetMessage, jobs_exchange: &str) -> Self {
        let properties = &message.delivery.properties;
        let body: Option<Value> = serde_json::from_slice(&message.delivery.data).ok();
        let field = |name: &str| {
            body.as_ref()
                .and_then(|b| b.get(name))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let death = first_death(properties);
        let (exchange, routing_key) = match (
            header_text(properties, "x-original-exchange"),
            header_text(properties, "x-original-routing-key"),
        ) {
            (Some(exchange), Some(routing_key)) => (exchange, routing_key),
            _ => match &death {
                Some(death) => (death.exchange.clone(), death.routing_key.clone()),
                None => (
                    jobs_exchange.to_string(),
                    message.delivery.routing_key.to_string(),
                ),
            },
        };
        let code = header_text(properties, "x-error-code")
            .or_else(|| death.as_ref().map(|d| d.reason.clone()))
            .unwrap_or_else(|| "unknown".into());
        Self {
            job_id: field("job_id"),
            kind: field("kind"),
            code,
            message: header_text(properties, "x-error-message"),
            details: header_text(properties, "x-error-details")
                .and_then(|text| serde_json::from_str(&text).ok()),
            attempts: header_count(properties, "x-attempts"),
            retries: header_count(properties, "x-retries"),
            first_seen: header_text(properties, "x-first-seen"),
            original_exchange: exchange,
            original_routing_key: routing_key,
            batch_id: header_text(properties, crate::batch::BATCH_ID_HEADER),
            bytes: message.delivery.data.len(),
        }
    }

    fn matches(&self, filter: &Filter) -> bool {
        filter.kind.as_ref().is_none_or(|k| self.kind.as_ref() == Some(k))
            && filter.code.as_ref().is_none_or(|c| &self.code == c)
    }
}

/// Which dead letters the console lists or replays: the CLI's [`Filter`] (kind, code), a batch,
/// and particular jobs (the letters the operator ticked).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub filter: Filter,
    /// Only children of this batch (`x-batch-id`).
    pub batch: Option<String>,
    /// Only the letters of these jobs (`job_id` of the body); `None`: any job.
    pub job_ids: Option<std::collections::BTreeSet<String>>,
}

impl From<&Filter> for Selection {
    fn from(filter: &Filter) -> Self {
        Self {
            filter: filter.clone(),
            ..Self::default()
        }
    }
}

impl Selection {
    fn matches(&self, letter: &Letter) -> bool {
        letter.matches(&self.filter)
            && self
                .batch
                .as_ref()
                .is_none_or(|b| letter.batch_id.as_ref() == Some(b))
            && self
                .job_ids
                .as_ref()
                .is_none_or(|ids| letter.job_id.as_ref().is_some_and(|id| ids.contains(id)))
    }
}

/// Where RabbitMQ says it dead-lettered a message from (`x-death`, newest first).
struct Death {
    exchange: String,
    routing_key: String,
    reason: String,
}

fn first_death(properties: &BasicProperties) -> Option<Death> {
    let headers = properties.headers().as_ref()?;
    let (_, deaths) = headers.inner().iter().find(|(k, _)| k.as_str() == "x-death")?;
    let AMQPValue::FieldArray(deaths) = deaths else {
        return None;
    };
    let AMQPValue::FieldTable(death) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |name: &str| field_text(death, name);
    let routing_key = match death.inner().iter().find(|(k, _)| k.as_str() == "routing-keys") {
        Some((_, AMQPValue::FieldArray(keys))) => match keys.as_slice().first() {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    };
    Some(Death {
        exchange: text("exchange").unwrap_or_default(),
        routing_key: routing_key.unwrap_or_default(),
        reason: text("reason").map_or_else(|| "dead_lettered".into(), |r| format!("rabbitmq.{r}")),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("dead-letter queue {queue}: {source}")]
    Queue { queue: String, source: lapin::Error },
    /// Another scan or a replay holds the queue's letters (the console runs one at a time).
    #[error("dead-letter queue: a replay or another listing is running; try again shortly")]
    Busy,
}

/// Lists the dead letters matching `filter`, up to `limit`; the queue is left as it was.
pub async fn list(options: &DlqOptions, filter: &Filter, limit: usize) -> Result<Vec<Letter>, DlqError> {
    list_selected(options, &Selection::from(filter), limit)
        .await
        .map(|listed| listed.letters)
}

/// What a listing saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listed {
    /// The matching letters, up to the limit, in queue order.
    pub letters: Vec<Letter>,
    /// How many letters matched (the limit aside).
    pub matched: usize,
    /// How many letters the queue held.
    pub total: usize,
}

/// Lists the dead letters `selection` picks, up to `limit`, and counts them all; the queue is
/// left as it was.
pub async fn list_selected(
    options: &DlqOptions,
    selection: &Selection,
    limit: usize,
) -> Result<Listed, DlqError> {
    let mut listed = Listed::default();
    scan(options, |letter, _| {
        listed.total += 1;
        if selection.matches(letter) {
            listed.matched += 1;
            if listed.letters.len() < limit {
                listed.letters.push(letter.clone());
            }
        }
        async { Ok(false) }
    })
    .await?;
    Ok(listed)
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Replayed {
    pub replayed: Vec<Letter>,
    /// Dead letters left in the queue (not matching the filter).
    pub left: usize,
}

/// Re-publishes the dead letters matching `filter` to their origin, at most `rate` per second,
/// acking each from the dead-letter queue once its re-publication is confirmed. With `dry_run`
/// nothing is published or acked.
pub async fn replay(
    options: &DlqOptions,
    filter: &Filter,
    rate: f64,
    dry_run: bool,
) -> Result<Replayed, DlqError> {
    replay_selected(options, &Selection::from(filter), rate, dry_run).await
}

/// As [`replay`], for the letters `selection` picks.
pub async fn replay_selected(
    options: &DlqOptions,
    selection: &Selection,
    rate: f64,
    dry_run: bool,
) -> Result<Replayed, DlqError> {
    let connection = broker::connect(&options.broker.amqp_url).await?;
    let publisher = Publisher::open(&connection).await?;
    let pace = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut next = tokio::time::Instant::now();
    let mut outcome = Replayed::default();
    scan(options, |letter, message| {
        let matched = selection.matches(letter);
        if matched {
            outcome.replayed.push(letter.clone());
        } else {
            outcome.left += 1;
        }
        let publisher = &publisher;
        let (exchange, routing_key) = (
            letter.original_exchange.clone(),
            letter.original_routing_key.clone(),
        );
        let wait_until = next;
        if matched && !dry_run {
            next = next.max(tokio::time::Instant::now()) + pace;
        }
        async move {
            if !matched || dry_run {
                return Ok(false);
            }
            tokio::time::sleep_until(wait_until).await;
            let properties = replay_properties(&message.delivery.properties);
            publisher
                .publish(&exchange, &routing_key, &message.delivery.data, properties)
                .await?;
            Ok(true)
        }
    })
    .await?;
    connection.close(200, "dlq replay done".into()).await.ok();
    Ok(outcome)
}

/// The message as first published: the dead-letter and retry bookkeeping headers dropped, so
/// the job starts over (its batch and trace headers stay).
fn replay_properties(properties: &BasicProperties) -> BasicProperties {
    const DROPPED: [&str; 9] = [
        "x-error-code",
        "x-error-message",
        "x-error-details",
        "x-attempts",
        "x-retries",
        "x-original-exchange",
        "x-original-routing-key",
        "x-death",
        "x-delivery-count",
    ];
    let mut headers = FieldTable::default();
    if let Some(existing) = properties.headers() {
        for (name, value) in existing.inner() {
            if !DROPPED.contains(&name.as_str()) {
                headers.insert(ShortString::from(name.as_str()), value.clone());
            }
        }
    }
    properties.clone().with_headers(headers).with_delivery_mode(2)
}

/// Takes every message of the dead-letter queue once (unacked), calls `visit` with each; a
/// message for which `visit` returns true is acked, the others return to the queue when the
/// channel closes.
async fn scan<F, Fut>(options: &DlqOptions, mut visit: F) -> Result<(), DlqError>
where
    F: FnMut(&Letter, BasicGetMessage) -> Fut,
    Fut: std::future::Future<Output = Result<bool, BrokerError>>,
{
    let connection = broker::connect(&options.broker.amqp_url).await?;
    let channel = connection.create_channel().await.map_err(BrokerError::from)?;
    let queue_error = |source| DlqError::Queue {
        queue: options.dead_letter_queue.clone(),
        source,
    };
    let waiting = ready_count(&channel, &options.dead_letter_queue)
        .await
        .map_err(queue_error)?;
    let mut returned = 0;
    // Only what is there now: a replayed message dead-lettered again is not seen twice.
    for _ in 0..waiting {
        let Some(message) = channel
            .basic_get(
                options.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(queue_error)?
        else {
            break;
        };
        let letter = Letter::read(&message, &options.jobs_exchange);
        let tag = message.delivery.delivery_tag;
        if visit(&letter, message).await? {
            channel
                .basic_ack(tag, BasicAckOptions::default())
                .await
                .map_err(queue_error)?;
        } else {
            returned += 1;
        }
    }
    // Unacked messages go back to the queue when the channel closes. A quorum queue takes them
    // back through its log, some time after the close is answered: wait until they are there,
    // so that a listing or replay right after this one finds them.
    channel.close(200, "dlq scan done".into()).await.ok();
    if returned > 0 {
        let channel = connection.create_channel().await.map_err(BrokerError::from)?;
        let deadline = tokio::time::Instant::now() + RETURN_WAIT;
        while ready_count(&channel, &options.dead_letter_queue)
            .await
            .map_err(queue_error)?
            < returned
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    connection.close(200, "dlq scan done".into()).await.ok();
    Ok(())
}

/// How long a scan waits for the letters it did not take to be back in the queue (other
/// consumers of the dead-letter queue could take them meanwhile; the wait is only a courtesy).
const RETURN_WAIT: Duration = Duration::from_secs(10);

/// Messages ready in `queue` now (unacked ones are not counted).
async fn ready_count(channel: &lapin::Channel, queue: &str) -> Result<u32, lapin::Error> {
    let queue = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(queue.message_count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    fn letter(job_id: Option<&str>, kind: &str, code: &str, batch: Option<&str>) -> Letter {
        Letter {
            job_id: job_id.map(str::to_string),
            kind: Some(kind.into()),
            code: code.into(),
            message: None,
            details: None,
            attempts: 1,
            retries: 0,
            first_seen: None,
            original_exchange: "genesys.jobs".into(),
            original_routing_key: kind.into(),
            batch_id: batch.map(str::to_string),
            bytes: 10,
        }
    }

    #[test]
    fn a_selection_picks_by_filter_batch_and_job_ids() {
        let a = letter(Some("a"), "agent.status", "unknown_presence", Some("b1"));
        let b = letter(Some("b"), "agent.status", "genesys.not.found", None);
        let none = letter(None, "agent.status", "malformed_json", None);
        let everything = Selection::default();
        assert!([&a, &b, &none].iter().all(|l| everything.matches(l)));
        let by_code = Selection::from(&Filter {
            kind: None,
            code: Some("unknown_presence".into()),
        });
        assert!(by_code.matches(&a) && !by_code.matches(&b));
        let by_batch = Selection {
            batch: Some("b1".into()),
            ..Selection::default()
        };
        assert!(by_batch.matches(&a) && !by_batch.matches(&b));
        let ticked = Selection {
            job_ids: Some(["b".to_string()].into()),
            ..Selection::default()
        };
        assert!(!ticked.matches(&a) && ticked.matches(&b) && !ticked.matches(&none));
    }

    #[test]
    fn a_replay_drops_the_dead_letter_headers_and_keeps_the_jobs_own() {
        let mut headers = FieldTable::default();
        for name in [
            "x-error-code",
            "x-error-message",
            "x-error-details",
            "traceparent",
        ] {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from("v")));
        }
        let replayed = replay_properties(&BasicProperties::default().with_headers(headers));
        let names: Vec<String> = replayed
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(names, ["traceparent"]);
    }
}
