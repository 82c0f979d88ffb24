//! `genesys-worker enqueue`: publishes an NDJSON file of jobs to the jobs exchange, with
//! publisher confirms, and optionally waits for each job's outcome on the audit exchange.
//!
//! Every line is validated first by the worker's own decoder (the same rules as the JSON
//! Schemas in `schemas/`): an invalid line is reported with its number and skipped, or, with
//! `strict`, nothing is published. Jobs are published `mandatory`, in rounds of confirms: a job
//! no queue would receive is reported instead of silently dropped.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use uuid::Uuid;

use crate::broker::{self, BrokerError};
use crate::config::ServiceUrls;
use crate::events::AuditEvent;

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("{} invalid line(s), nothing published (strict): {}", .0.len(), describe_invalid(.0))]
    Invalid(Vec<InvalidLine>),
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

/// A line that is not a valid job, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLine {
    pub line: usize,
    pub code: &'static str,
    pub problem: String,
}

impl std::fmt::Display for InvalidLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: [{}] {}", self.line, self.code, self.problem)
    }
}

fn describe_invalid(lines: &[InvalidLine]) -> String {
    lines
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<lapin::Error> for EnqueueError {
    fn from(err: lapin::Error) -> Self {
        Self::Broker(err.into())
    }
}

#[derive(Debug, Clone)]
pub struct EnqueueOptions {
    pub amqp_url: ServiceUrls,
    pub jobs_exchange: String,
    pub audit_exchange: String,
    /// Wait for an audit event for every published job, up to `timeout`.
    pub await_outcomes: bool,
    pub timeout: Duration,
    /// Publish nothing if a line is invalid (otherwise invalid lines are skipped).
    pub strict: bool,
    /// The worker's limits the lines are validated against.
    pub limits: crate::job::Limits,
}

/// What `enqueue` did.
#[derive(Debug, Default)]
pub struct Enqueued {
    pub published: usize,
    /// Lines skipped as invalid (none with `strict`: then nothing is published).
    pub skipped: Vec<InvalidLine>,
    /// The published jobs' audit events, in arrival order (with `await_outcomes`).
    pub events: Vec<AuditEvent>,
}

/// A checked line of the input.
#[derive(Debug, Clone)]
struct Line {
    job_id: Uuid,
    kind: String,
    body: Vec<u8>,
}

/// The valid lines of `input`, and the invalid ones with their line numbers (1-based).
fn parse(input: &str, limits: &crate::job::Limits) -> (Vec<Line>, Vec<InvalidLine>) {
    let mut lines = Vec::new();
    let mut invalid = Vec::new();
    for (index, raw) in input.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        match crate::job::decode_with(raw.as_bytes(), limits) {
            Ok(job) => lines.push(Line {
                job_id: job.job_id,
                kind: job.kind.as_str().to_string(),
                body: raw.as_bytes().to_vec(),
            }),
            Err(err) => invalid.push(InvalidLine {
                line: index + 1,
                code: err.code,
                problem: err.message,
            }),
        }
    }
    (lines, invalid)
}

/// Jobs published per round of confirms.
const ROUND: usize = 500;

/// Publishes the valid jobs in `input`, calling `on_published` with the count so far after each
/// round of confirms; with `await_outcomes`, collects their audit events in arrival order,
/// calling `on_event` with each event and its bytes as published as it arrives.
pub async fn enqueue(
    input: &str,
    options: &EnqueueOptions,
    mut on_published: impl FnMut(usize, usize),
    mut on_event: impl FnMut(&AuditEvent, &[u8]),
) -> Result<Enqueued, EnqueueError> {
    let (lines, skipped) = parse(input, &options.limits);
    if options.strict && !skipped.is_empty() {
        return Err(EnqueueError::Invalid(skipped));
    }
    if lines.is_empty() && skipped.is_empty() {
        return Err(EnqueueError::Empty);
    }
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
        let consumer =
            crate::broker::topology::consume_private(&channel, &options.audit_exchange, "audit.#", false)
                .await?;
        outcomes = Some(consumer);
    }

    let publisher = connection.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    for round in lines.chunks(ROUND) {
        let mut pending = Vec::with_capacity(round.len());
        for line in round {
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
                .await?;
            pending.push((line, confirm));
        }
        for (line, confirm) in pending {
            let confirm = confirm.await?;
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
        on_published(round.len(), lines.len());
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
    Ok(Enqueued {
        published: lines.len(),
        skipped,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = r#"{"job_id":"0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b","kind":"agent.status","payload":{"user_id":"8f1c2b4e-7d6a-4b3c-9e2f-1a0b9c8d7e6f","presence":"Available"}}"#;

    #[test]
    fn invalid_lines_are_reported_by_number_with_the_decoders_code() {
        let input = format!(
            "{JOB}\n\n{{oops\n{}\n{JOB}\n",
            r#"{"job_id":"0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b","kind":"agent.status","payload":{"user_id":"nope","presence":"Available"}}"#
        );
        let (valid, invalid) = parse(&input, &crate::job::Limits::uniform(1 << 20));
        assert_eq!(valid.len(), 2);
        let lines: Vec<(usize, &str)> = invalid.iter().map(|i| (i.line, i.code)).collect();
        assert_eq!(lines, vec![(3, "malformed_json"), (4, "invalid_payload")]);
        assert!(invalid[1].problem.contains("payload.user_id"), "{}", invalid[1]);
    }

    #[test]
    fn blank_lines_are_skipped() {
        let (valid, invalid) = parse(&format!("\n{JOB}\n\n"), &crate::job::Limits::uniform(1 << 20));
        assert_eq!((valid.len(), invalid.len()), (1, 0));
    }
}
