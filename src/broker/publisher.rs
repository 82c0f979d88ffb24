//! Confirmed publishing: a publish counts only once the broker confirmed it.
//!
//! Used for the worker's events (before the job is acked), for dead letters, and by `enqueue`.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use time::OffsetDateTime;

use super::BrokerError;
use crate::bounded;
use crate::events::{rfc3339, ErrorDetails, OutboundEvent};

/// The original message a dead letter carries, with where it came from.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub body: &'a [u8],
    pub properties: &'a BasicProperties,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub error_code: &'a str,
    pub error_message: &'a str,
    /// Genesys' own account of the failure (the audit event's `error.details`), sent as
    /// `x-error-details`.
    pub error_details: Option<&'a ErrorDetails>,
    pub attempts: u32,
}

/// A channel in confirm mode.
#[derive(Debug, Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(connection: &Connection) -> Result<Self, BrokerError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { channel })
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        self.send_all(std::iter::once((exchange, routing_key, body, properties)))
            .await
    }

    /// Publishes every message to `exchange` with `routing_key`, then waits for all the
    /// confirms (one round of confirms, not one per message).
    pub async fn publish_all(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: Vec<(Vec<u8>, BasicProperties)>,
    ) -> Result<(), BrokerError> {
        self.send_all(
            messages
                .iter()
                .map(|(body, properties)| (exchange, routing_key, body.as_slice(), properties.clone())),
        )
        .await
    }

    /// Publishes a job's events together and waits for their confirms.
    pub async fn publish_events(&self, events: &[OutboundEvent]) -> Result<(), BrokerError> {
        self.send_all(events.iter().map(|event| {
            (
                event.exchange.as_str(),
                event.routing_key.as_str(),
                event.body.as_bytes(),
                event_properties(event),
            )
        }))
        .await
    }

    /// Publishes every `(exchange, routing key, body, properties)`, then waits for all the
    /// confirms.
    pub async fn send_all<'a>(
        &self,
        messages: impl Iterator<Item = (&'a str, &'a str, &'a [u8], BasicProperties)>,
    ) -> Result<(), BrokerError> {
        let mut pending = Vec::new();
        for (exchange, routing_key, body, properties) in messages {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await?;
            pending.push((exchange, routing_key, confirm));
        }
        for (exchange, routing_key, confirm) in pending {
            if !confirm.await?.is_ack() {
                return Err(BrokerError::Nacked {
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                });
            }
        }
        Ok(())
    }

    /// Parks the message in `retry_queue` (through the default exchange) for its delay, with
    /// the rounds and attempts so far and where it was first published.
    pub async fn retry(
        &self,
        retry_queue: &str,
        body: &[u8],
        properties: &BasicProperties,
        origin: (&str, &str),
        retries: u32,
        attempts: u32,
    ) -> Result<(), BrokerError> {
        let mut headers = carried_headers(properties);
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        headers.insert(ShortString::from("x-retries"), AMQPValue::LongInt(retries as i32));
        headers.insert(
            ShortString::from("x-attempts"),
            AMQPValue::LongInt(attempts as i32),
        );
        if !header_present(&headers, "x-first-seen") {
            headers.insert(
                ShortString::from("x-first-seen"),
                text(&rfc3339(OffsetDateTime::now_utc())),
            );
        }
        headers.insert(ShortString::from("x-original-exchange"), text(origin.0));
        headers.insert(ShortString::from("x-original-routing-key"), text(origin.1));
        let properties = properties.clone().with_headers(headers).with_delivery_mode(2);
        self.publish("", retry_queue, body, properties).await
    }

    /// Sends the original message to `destination` (exchange, routing key) with the reason
    /// and its origin in its headers: the worker's dead-letter exchange under the original
    /// routing key, or a queue of its own through the default exchange (the relay's).
    pub async fn dead_letter(
        &self,
        destination: (&str, &str),
        letter: DeadLetter<'_>,
    ) -> Result<(), BrokerError> {
        let mut headers = carried_headers(letter.properties);
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        let code = bounded::truncate(letter.error_code, bounded::VALUE_MAX);
        let message = bounded::truncate(letter.error_message, bounded::MESSAGE_MAX);
        headers.insert(ShortString::from("x-error-code"), text(&code));
        headers.insert(ShortString::from("x-error-message"), text(&message));
        if let Some(details) = letter.error_details {
            headers.insert(
                ShortString::from("x-error-details"),
                text(&details_header(details)),
            );
        }
        headers.insert(
            ShortString::from("x-attempts"),
            AMQPValue::LongInt(letter.attempts as i32),
        );
        if !header_present(&headers, "x-first-seen") {
            let now = rfc3339(OffsetDateTime::now_utc());
            headers.insert(ShortString::from("x-first-seen"), text(&now));
        }
        headers.insert(ShortString::from("x-original-exchange"), text(letter.exchange));
        headers.insert(
            ShortString::from("x-original-routing-key"),
            text(letter.routing_key),
        );
        let properties = letter
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        self.publish(destination.0, destination.1, letter.body, properties)
            .await
    }
}

/// The message's own headers that fit in a frame beside the worker's (see [`bounded`]), and
/// `x-dropped-headers` naming those that did not.
fn carried_headers(properties: &BasicProperties) -> FieldTable {
    let Some(original) = properties.headers().as_ref() else {
        return FieldTable::default();
    };
    let (mut headers, dropped) = bounded::carried_headers(original);
    if !dropped.is_empty() {
        let names = bounded::truncate(&dropped.join(","), bounded::MESSAGE_MAX).into_owned();
        headers.insert(
            ShortString::from("x-dropped-headers"),
            AMQPValue::LongString(LongString::from(names)),
        );
    }
    headers
}

/// Most bytes of `x-error-details`: more than a message (a flow's validation errors are a list),
/// far below a frame beside the other headers (see [`bounded`]).
pub const DETAILS_HEADER_MAX: usize = 4 * 1024;

/// `details` as compact JSON of at most [`DETAILS_HEADER_MAX`] bytes. What does not fit is
/// left out whole, last `errorDetails` entries first (counted in `error_details_omitted`), then
/// the message parameters, so the header stays JSON a tool can parse.
pub fn details_header(details: &ErrorDetails) -> String {
    let mut details = details.clone();
    loop {
        let text = serde_json::to_string(&details).expect("error details serialize");
        if text.len() <= DETAILS_HEADER_MAX {
            return text;
        }
        if let Some(entries) = details.error_details.as_mut().filter(|e| !e.is_empty()) {
            entries.pop();
            details.error_details_omitted += 1;
        } else if details.error_message_params.take().is_none() {
            // Only the code is left, and it is bounded: cannot happen, but stay bounded.
            return bounded::truncate(&text, DETAILS_HEADER_MAX).into_owned();
        }
    }
}

/// Persistent JSON with the event id as message id.
fn event_properties(event: &OutboundEvent) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.message_id.as_str().into())
}

fn header_present(headers: &FieldTable, name: &str) -> bool {
    headers.inner().keys().any(|k| k.as_str() == name)
}

/// A text header of a message.
pub fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    field_text(properties.headers().as_ref()?, name)
}

/// A text field of a table (headers, or a nested table such as an `x-death` entry).
pub fn field_text(table: &FieldTable, name: &str) -> Option<String> {
    match table.inner().iter().find(|(k, _)| k.as_str() == name)?.1 {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A counter header of a message (absent: 0).
pub fn header_count(properties: &BasicProperties, name: &str) -> u32 {
    let Some(headers) = properties.headers().as_ref() else {
        return 0;
    };
    match headers
        .inner()
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v)
    {
        Some(AMQPValue::LongInt(i)) => (*i).max(0) as u32,
        Some(AMQPValue::LongLongInt(i)) => (*i).max(0) as u32,
        Some(AMQPValue::LongUInt(i)) => *i,
        Some(AMQPValue::ShortInt(i)) => (*i).max(0) as u32,
        _ => 0,
    }
}

/// Where a message was first published: its `x-original-*` headers once it went through a
/// retry queue, else where it came from.
pub fn origin(properties: &BasicProperties, exchange: &str, routing_key: &str) -> (String, String) {
    (
        header_text(properties, "x-original-exchange").unwrap_or_else(|| exchange.to_string()),
        header_text(properties, "x-original-routing-key").unwrap_or_else(|| routing_key.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn details(entries: usize, size: usize) -> ErrorDetails {
        ErrorDetails {
            error_code: Some("architect.publish.failed".into()),
            error_details: Some(
                (0..entries)
                    .map(|n| json!({"errorCode": "architect.flow.validation.error", "entityName": format!("{n}{}", "x".repeat(size))}))
                    .collect(),
            ),
            error_message_params: Some([("flowName".to_string(), json!("Main IVR"))].into_iter().collect()),
            error_details_omitted: 0,
        }
    }

    #[test]
    fn details_that_fit_are_the_compact_json_of_the_details() {
        let small = details(2, 10);
        let header = details_header(&small);
        assert!(!header.contains(": ") && !header.contains('\n'), "{header}");
        let back: ErrorDetails = serde_json::from_str(&header).unwrap();
        assert_eq!(back, small);
    }

    #[test]
    fn details_too_large_for_a_header_leave_out_whole_entries_and_stay_json() {
        let large = details(25, 250);
        let header = details_header(&large);
        assert!(header.len() <= DETAILS_HEADER_MAX, "{}", header.len());
        let back: Value = serde_json::from_str(&header).unwrap();
        let kept = back["error_details"].as_array().unwrap().len();
        assert!(kept > 0 && kept < 25, "{kept}");
        assert_eq!(back["error_details_omitted"], json!(25 - kept));
        assert_eq!(back["error_code"], "architect.publish.failed");
        assert_eq!(back["error_message_params"]["flowName"], "Main IVR");
    }
}
