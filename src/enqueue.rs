//! `genesys-worker enqueue`: publishes an NDJSON file of jobs to the jobs exchange, with
//! publisher confirms, and optionally waits for each job's outcome on the audit exchange.
//!
//! Every line is checked before anything is published (a JSON object with a `job_id` UUID and a
//! `kind`), so a bad file publishes nothing. Jobs are published `mandatory`: a job no queue would
//! receive is reported instead of silently dropped.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use serde_json::Value;
use uuid::Uuid;

use crate::broker::{self, BrokerError};
use crate::config::ServiceUrl;
use crate::events::AuditEvent;

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("line {line}: {problem}")]
    InvalidLine { line: usize, problem: String },
    #[error("no jobs in the input")]
    Empty,
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(
        "job {job_id} was unroutable: no queue is bound to exchange {exchange:?} for routing key \
         {kind:?}; start the worker once, it declares the topology"
    )]
    Unroutable {
        job_id: Uuid,
        kind: String,
        exchange: String,
    },
    #[error("timed out waiting for the outcome of {missing} job(s)")]
    Timeout { missing: usize },
}

impl From<lapin::Error> for EnqueueError {
    fn from(err: lapin::Error) -> Self {
        Self::Broker(err.into())
    }
}

#[derive(Debug, Clone)]
pub struct EnqueueOptions {
    pub amqp_url: ServiceUrl,
    pub jobs_exchange: String,
    pub audit_exchange: String,
    /// Wait for an audit event for every published job, up to `timeout`.
    pub await_outcomes: bool,
    pub timeout: Duration,
}

/// A checked line of the input.
#[derive(Debug, Clone)]
struct Line {
    job_id: Uuid,
    kind: String,
    body: Vec<u8>,
}

fn parse(input: &str) -> Result<Vec<Line>, EnqueueError> {
    let mut lines = Vec::new();
    for (index, raw) in input.lines().enumerate() {
        let line = index + 1;
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let invalid = |problem: &str| EnqueueError::InvalidLine {
            line,
            problem: problem.to_string(),
        };
        let value: Value = serde_json::from_str(raw).map_err(|e| invalid(&format!("not JSON: {e}")))?;
        let job_id = value
            .get("job_id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| invalid("job_id must be a UUID string"))?;
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("kind must be a string"))?;
        lines.push(Line {
            job_id,
            kind: kind.to_string(),
            body: raw.as_bytes().to_vec(),
        });
    }
    if lines.is_empty() {
        return Err(EnqueueError::Empty);
    }
    Ok(lines)
}

/// Publishes the jobs in `input`; with `await_outcomes`, returns their audit events in arrival
/// order, calling `on_event` with each event and its bytes as published as it arrives.
pub async fn enqueue(
    input: &str,
    options: &EnqueueOptions,
    mut on_event: impl FnMut(&AuditEvent, &[u8]),
) -> Result<Vec<AuditEvent>, EnqueueError> {
    let lines = parse(input)?;
    let connection = broker::connect(&options.amqp_url).await?;
    let channel = connection.create_channel().await?;

    // Listen before publishing, so no outcome can be missed.
    let mut outcomes = None;
    if options.await_outcomes {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                options.audit_exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        let queue_options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), queue_options, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                options.audit_exchange.as_str().into(),
                "audit.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        outcomes = Some(consumer);
    }

    let publisher = connection.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    for line in &lines {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(line.job_id.to_string().into());
        let confirm = publisher
            .basic_publish(
                options.jobs_exchange.as_str().into(),
                line.kind.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &line.body,
                properties,
            )
            .await?
            .await?;
        let acked = confirm.is_ack();
        if confirm.take_message().is_some() {
            return Err(EnqueueError::Unroutable {
                job_id: line.job_id,
                kind: line.kind.clone(),
                exchange: options.jobs_exchange.clone(),
            });
        }
        if !acked {
            return Err(BrokerError::Nacked {
                exchange: options.jobs_exchange.clone(),
                routing_key: line.kind.clone(),
            }
            .into());
        }
    }

    let mut events = Vec::new();
    if let Some(mut consumer) = outcomes {
        let mut waiting: HashMap<Uuid, usize> = HashMap::new();
        for line in &lines {
            *waiting.entry(line.job_id).or_default() += 1;
        }
        let deadline = tokio::time::Instant::now() + options.timeout;
        while !waiting.is_empty() {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            let delivery = match next {
                Ok(Some(Ok(delivery))) => delivery,
                Ok(Some(Err(err))) => return Err(err.into()),
                Ok(None) | Err(_) => {
                    return Err(EnqueueError::Timeout {
                        missing: waiting.values().sum(),
                    })
                }
            };
            delivery.ack(BasicAckOptions::default()).await?;
            let Ok(event) = serde_json::from_slice::<AuditEvent>(&delivery.data) else {
                continue;
            };
            if let Some(left) = waiting.get_mut(&event.job_id) {
                *left -= 1;
                if *left == 0 {
                    waiting.remove(&event.job_id);
                }
                on_event(&event, &delivery.data);
                events.push(event);
            }
        }
    }
    let _ = connection.close(200, "enqueue done".into()).await;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_line_is_reported_by_number_and_nothing_is_parsed() {
        let input =
            "{\"job_id\":\"0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b\",\"kind\":\"agent.status\"}\n\n{oops\n";
        match parse(input) {
            Err(EnqueueError::InvalidLine { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected an invalid line, got {other:?}"),
        }
    }

    #[test]
    fn blank_lines_are_skipped() {
        let input = "\n{\"job_id\":\"0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b\",\"kind\":\"agent.status\"}\n\n";
        assert_eq!(parse(input).unwrap().len(), 1);
        assert!(matches!(parse("\n\n"), Err(EnqueueError::Empty)));
    }
}
