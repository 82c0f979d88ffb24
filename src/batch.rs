//! The `batch` kind (docs/architecture.md, sections 2.1 and 4.15): fan-out into the batch lane, progress in
//! Redis, and one summary audit event once every child is final.
//!
//! A batch publishes its children straight to the batch queue, in chunks of confirmed publishes,
//! each child with the batch's `job_id` as `correlation_id`, an idempotency key derived from the
//! batch's, and its place in the batch in the `x-batch-id` / `x-batch-index` headers. A cursor in
//! Redis says how far the fan-out got, so a batch delivered again (a crash mid fan-out) goes on
//! from there; a child published twice has the same derived key, so it is never applied twice.
//!
//! Each child reports its final outcome by index (a set, so a child reported twice counts
//! once). The report that completes the batch gets the counts back, and the summary event is
//! sealed in Redis (stored once, byte for byte) before it is published, so a crash between the
//! two re-publishes the same event.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::broker::{BrokerError, Publisher};
use crate::canonical;
use crate::events::{unix_millis, Outcome};
use crate::job::{self, Batch, Job};
pub use crate::store::Progress;
use crate::store::{Store, StoreError};

/// Header naming the batch a child belongs to (the batch's `job_id`).
pub const BATCH_ID_HEADER: &str = "x-batch-id";
/// Header giving a child's place in its batch, from 0.
pub const BATCH_INDEX_HEADER: &str = "x-batch-index";
/// Children published per round of confirms.
const CHUNK: usize = 500;
/// Errors kept for the summary.
pub use crate::store::FIRST_ERRORS;

/// The idempotency key of a batch's child: the batch's key with the child's own key (or its
/// index), hashed when that would be longer than a key may be.
pub fn derived_key(batch_key: &str, index: usize, child_key: Option<&str>) -> String {
    let key = match child_key {
        Some(child) => format!("{batch_key}/{child}"),
        None => format!("{batch_key}/{index}"),
    };
    if key.len() <= job::MAX_KEY_LEN {
        key
    } else {
        format!("batch-child:{}", canonical::sha256_hex(key.as_bytes()))
    }
}

/// A child as published: the batch's id as correlation id, a derived key, and the batch's
/// actor, deadline and (for `agent.status`) presence policy fields unless the child has its own. Anything that is not an object goes as it
/// is: it is rejected, alone, when it runs.
pub fn child_body(batch: &Job, index: usize, child: &Value) -> Vec<u8> {
    let Value::Object(fields) = child else {
        return serde_json::to_vec(child).expect("JSON values serialize");
    };
    let mut fields = fields.clone();
    fields.insert("correlation_id".into(), json!(batch.job_id.to_string()));
    match fields.get("idempotency_key") {
        None | Some(Value::Null) => {
            fields.insert(
                "idempotency_key".into(),
                json!(derived_key(&batch.idempotency_key, index, None)),
            );
        }
        Some(Value::String(own)) => {
            let key = derived_key(&batch.idempotency_key, index, Some(own));
            fields.insert("idempotency_key".into(), json!(key));
        }
        // A malformed key stays as it is, for the child's own rejection to name it.
        Some(_) => {}
    }
    if let Some(actor) = &batch.actor {
        fields.entry("actor").or_insert_with(|| json!(actor));
    }
    if let Some(not_after) = batch.not_after {
        fields
            .entry("not_after")
            .or_insert_with(|| json!(crate::events::rfc3339(not_after)));
    }
    let policy = match &batch.payload {
        job::Payload::Batch(payload) => payload.presence_policy.as_ref(),
        _ => None,
    };
    let is_agent_status = fields.get("kind").and_then(Value::as_str) == Some(job::Kind::AgentStatus.as_str());
    if let (Some(policy), true, Some(Value::Object(payload))) =
        (policy, is_agent_status, fields.get_mut("payload"))
    {
        let Value::Object(defaults) = json!(policy) else {
            unreachable!("a policy serializes as an object")
        };
        for (name, value) in defaults {
            payload.entry(name).or_insert(value);
        }
    }
    serde_json::to_vec(&Value::Object(fields)).expect("JSON values serialize")
}

fn child_properties(batch: &Job, index: usize, child: &Value) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from(BATCH_ID_HEADER),
        AMQPValue::LongString(LongString::from(batch.job_id.to_string())),
    );
    headers.insert(
        ShortString::from(BATCH_INDEX_HEADER),
        AMQPValue::LongLongInt(index as i64),
    );
    // Children continue the batch's trace.
    if let Some(traceparent) = &batch.traceparent {
        headers.insert(
            ShortString::from("traceparent"),
            AMQPValue::LongString(LongString::from(traceparent.as_str())),
        );
    }
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_correlation_id(batch.job_id.to_string().as_str().into())
        .with_headers(headers);
    if let Some(job_id) = child.get("job_id").and_then(Value::as_str) {
        properties = properties.with_message_id(job_id.into());
    }
    properties
}

/// A child whose message would be larger than a job may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OversizedChild {
    pub index: usize,
    pub job_id: Option<Uuid>,
    pub bytes: usize,
}

impl OversizedChild {
    /// What its rejection says: which child of which batch, and by how much.
    pub fn problem(&self, batch: &Job, max: usize) -> String {
        let child = self.job_id.map_or_else(
            || format!("child {}", self.index),
            |id| format!("job {id} (child {})", self.index),
        );
        format!(
            "{child} of batch {}: message is {} bytes, the limit is {max}",
            batch.job_id, self.bytes
        )
    }
}

/// The children of `batch` whose message would exceed `max` bytes: rejected at fan-out, never
/// published.
pub fn oversized_children(job: &Job, batch: &Batch, max: usize) -> Vec<OversizedChild> {
    batch
        .jobs
        .iter()
        .enumerate()
        .filter_map(|(index, child)| {
            let bytes = child_body(job, index, child).len();
            (bytes > max).then(|| OversizedChild {
                index,
                job_id: child
                    .get("job_id")
                    .and_then(Value::as_str)
                    .and_then(|id| id.parse().ok()),
                bytes,
            })
        })
        .collect()
}

/// Publishes the children of `batch` not published yet to `queue`, but those over `max_bytes`
/// (see [`oversized_children`]); returns how many children there are.
pub async fn fan_out(
    store: &Store,
    publisher: &Publisher,
    queue: &str,
    job: &Job,
    batch: &Batch,
    max_bytes: usize,
) -> Result<usize, FanOutError> {
    let total = batch.jobs.len();
    let mut cursor = store.batch_start(job, total).await?;
    if cursor > 0 {
        tracing::info!(batch = %job.job_id, published = cursor, total, "Resuming a batch's fan-out.");
    }
    while cursor < total {
        let end = (cursor + CHUNK).min(total);
        let messages: Vec<(Vec<u8>, BasicProperties)> = (cursor..end)
            .filter_map(|i| {
                let child = &batch.jobs[i];
                let body = child_body(job, i, child);
                (body.len() <= max_bytes).then(|| (body, child_properties(job, i, child)))
            })
            .collect();
        publisher.publish_all("", queue, messages).await?;
        store.batch_published(job.job_id, end).await?;
        cursor = end;
    }
    Ok(total)
}

#[derive(Debug, thiserror::Error)]
pub enum FanOutError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Progress {
    /// The `summary` of the batch's audit event.
    pub fn summary(&self) -> Value {
        json!({
            "total": self.total,
            "counts": self.counts,
            "first_errors": self.first_errors,
        })
    }

    /// The batch's own audit event (not yet linked into its chain): outcome `applied`, entity
    /// `batch:<id>`, with the summary.
    pub fn audit_event(&self) -> crate::events::AuditEvent {
        let event = crate::events::AuditEvent::new(
            self.batch_id,
            job::Kind::Batch.as_str(),
            &self.idempotency_key,
            format!("batch:{}", self.batch_id),
            Outcome::Applied,
        );
        crate::events::AuditEvent {
            actor: self.actor.clone(),
            correlation_id: self.correlation_id.clone(),
            latency_ms: unix_millis(event.occurred_at).saturating_sub(self.started_ms),
            summary: Some(self.summary()),
            ..event
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn batch_job(key: &str) -> Job {
        let message = json!({
            "job_id": "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b",
            "kind": "batch",
            "idempotency_key": key,
            "actor": "wfm",
            "not_after": "2026-11-22T08:15:00Z",
            "payload": {"jobs": [{"kind": "agent.status"}]},
        });
        job::decode(&serde_json::to_vec(&message).unwrap(), 1 << 20).unwrap()
    }

    #[test]
    fn children_carry_the_batch_as_correlation_and_a_derived_key() {
        let batch = batch_job("handover-1");
        let child = json!({"job_id": "x", "kind": "agent.status", "payload": {}});
        let body: Value = serde_json::from_slice(&child_body(&batch, 7, &child)).unwrap();
        assert_eq!(body["correlation_id"], batch.job_id.to_string());
        assert_eq!(body["idempotency_key"], "handover-1/7");
        assert_eq!(body["actor"], "wfm");
        assert_eq!(body["not_after"], "2026-11-22T08:15:00Z");

        let own = json!({"job_id": "x", "kind": "agent.status", "idempotency_key": "u-1", "actor": "me", "payload": {}});
        let body: Value = serde_json::from_slice(&child_body(&batch, 7, &own)).unwrap();
        assert_eq!(body["idempotency_key"], "handover-1/u-1");
        assert_eq!(body["actor"], "me");
    }

    #[test]
    fn agent_status_children_take_the_batch_presence_policy_unless_they_set_their_own() {
        let message = json!({
            "job_id": "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b",
            "kind": "batch",
            "payload": {
                "jobs": [{"kind": "agent.status"}],
                "presence_policy": {"if_interacting": "defer", "respect_out_of_office": false},
            },
        });
        let batch = job::decode(&serde_json::to_vec(&message).unwrap(), 1 << 20).unwrap();
        let child = json!({"kind": "agent.status", "payload": {"presence": "Available", "respect_out_of_office": true}});
        let body: Value = serde_json::from_slice(&child_body(&batch, 0, &child)).unwrap();
        assert_eq!(body["payload"]["if_interacting"], "defer");
        assert_eq!(
            body["payload"]["respect_out_of_office"], true,
            "the child's own field wins"
        );
        assert!(
            body["payload"].get("skip_if_current").is_none(),
            "unset stays unset"
        );

        let other = json!({"kind": "interaction.status", "payload": {"workitem_id": "x"}});
        let body: Value = serde_json::from_slice(&child_body(&batch, 1, &other)).unwrap();
        assert!(
            body["payload"].get("if_interacting").is_none(),
            "only agent.status children"
        );
    }

    #[test]
    fn a_derived_key_stays_within_the_key_limit() {
        let long = "k".repeat(job::MAX_KEY_LEN);
        let key = derived_key(&long, 3, Some(&long));
        assert!(key.len() <= job::MAX_KEY_LEN);
        assert_eq!(key, derived_key(&long, 3, Some(&long)));
        assert_ne!(key, derived_key(&long, 3, Some("other")));
    }

    #[test]
    fn a_child_that_is_not_an_object_is_passed_on_unchanged() {
        let batch = batch_job("b");
        assert_eq!(child_body(&batch, 0, &json!(42)), b"42");
    }
}
