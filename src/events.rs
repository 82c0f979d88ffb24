//! What consumers receive (docs/architecture.md, section 2): outcomes, audit events and CRM events.
//!
//! Event ids are UUID v5 over the idempotency key, job id and outcome, so an event re-published
//! after a crash carries the same id and consumers can deduplicate on it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

/// How a job ended. Exactly one per job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Duplicate,
    Superseded,
    Expired,
    Conflict,
    Rejected,
    Failed,
    RolledBack,
    /// Cancelled by an operator before it ran (`crate::control`).
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Superseded => "superseded",
            Outcome::Expired => "expired",
            Outcome::Conflict => "conflict",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// Outcomes that changed the entity in Genesys: the links of its hash chain.
    pub fn changed_entity(self) -> bool {
        matches!(self, Outcome::Applied | Outcome::RolledBack)
    }

    /// Outcomes whose job goes to the dead-letter queue instead of being acked.
    pub fn dead_letters(self) -> bool {
        matches!(self, Outcome::Rejected | Outcome::Failed | Outcome::RolledBack)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `error` field of an audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventError {
    pub code: String,
    pub message: String,
    /// What Genesys said about a failed asynchronous operation (a flow's checkin or publish),
    /// for whoever has to fix the flow; absent for every other error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<ErrorDetails>,
}

impl EventError {
    /// An error whose code and message are bounded ([`crate::bounded`]): both may quote what a
    /// producer sent.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: crate::bounded::truncate(&code.into(), crate::bounded::VALUE_MAX).into_owned(),
            message: crate::bounded::message(message.into()),
            details: None,
        }
    }

    /// This error with `details`, bounded ([`ErrorDetails::bounded`]).
    pub fn with_details(mut self, details: Option<ErrorDetails>) -> Self {
        self.details = details.map(ErrorDetails::bounded);
        self
    }
}

/// A failed Genesys `Operation`'s own account of the failure, as Genesys sent it (`error.details`
/// of an audit event, `x-error-details` of a dead letter). Each field is null when Genesys sent
/// none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetails {
    /// `errorCode`.
    pub error_code: Option<String>,
    /// `errorDetails`: `Detail`s (`errorCode`, `fieldName`, `entityId`, `entityName`).
    pub error_details: Option<Vec<Value>>,
    /// `errorMessageParams`: the values of the placeholders of `errorMessage`.
    pub error_message_params: Option<Map<String, Value>>,
    /// Entries of `error_details` left out to keep the event or header bounded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub error_details_omitted: usize,
}

/// Most `errorDetails` entries (and `errorMessageParams` members) an event carries: a flow with
/// hundreds of validation errors must not make an event of megabytes; the first ones name the
/// problem.
pub const DETAILS_ENTRIES_MAX: usize = 25;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ErrorDetails {
    /// These details with at most [`DETAILS_ENTRIES_MAX`] entries and members, and every text
    /// in them cut to [`crate::bounded::VALUE_MAX`] (Genesys echoes flow and node names).
    pub fn bounded(mut self) -> Self {
        use crate::bounded::{truncate, VALUE_MAX};
        self.error_code = self
            .error_code
            .map(|code| truncate(&code, VALUE_MAX).into_owned());
        if let Some(details) = &mut self.error_details {
            if details.len() > DETAILS_ENTRIES_MAX {
                self.error_details_omitted += details.len() - DETAILS_ENTRIES_MAX;
                details.truncate(DETAILS_ENTRIES_MAX);
            }
            details.iter_mut().for_each(bound_texts);
        }
        if let Some(params) = &mut self.error_message_params {
            let kept: Map<String, Value> = std::mem::take(params)
                .into_iter()
                .take(DETAILS_ENTRIES_MAX)
                .map(|(name, mut value)| {
                    bound_texts(&mut value);
                    (truncate(&name, VALUE_MAX).into_owned(), value)
                })
                .collect();
            *params = kept;
        }
        self
    }
}

/// Cuts every string in `value` (keys included) to [`crate::bounded::VALUE_MAX`].
fn bound_texts(value: &mut Value) {
    use crate::bounded::{truncate, VALUE_MAX};
    match value {
        Value::String(text) => {
            if let std::borrow::Cow::Owned(cut) = truncate(text, VALUE_MAX) {
                *text = cut;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(bound_texts),
        Value::Object(members) => {
            let bounded: Map<String, Value> = std::mem::take(members)
                .into_iter()
                .map(|(name, mut item)| {
                    bound_texts(&mut item);
                    (truncate(&name, VALUE_MAX).into_owned(), item)
                })
                .collect();
            *members = bounded;
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Now, to the millisecond: events carry no false precision.
pub fn now_millis() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond())
        .expect("a millisecond of the current time is valid")
}

/// Milliseconds since the Unix epoch of `instant`.
pub fn unix_millis(instant: OffsetDateTime) -> u64 {
    (instant.unix_timestamp_nanos() / 1_000_000) as u64
}

/// The `prev_checksum` of an entity's first link.
pub const GENESIS_CHECKSUM: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How an audit event serialized without its log index begins (`log_index` is its first member).
pub const UNINDEXED: &str = r#"{"log_index":null"#;

/// `body`, an audit event serialized with `log_index` null, with `index` in its place: the
/// same bytes otherwise, as `serde_json` would write the event with the index. None when
/// `body` does not begin so (it has an index already, or is not such an event).
pub fn with_log_index(body: &str, index: u64) -> Option<String> {
    let rest = body.strip_prefix(UNINDEXED)?;
    Some(format!("{{\"log_index\":{index}{rest}"))
}

/// One audit event per job, published to `genesys.audit` as `audit.<kind>.<outcome>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// The event's position in the one append-only log over all audit events (a leaf of its
    /// Merkle tree: `crate::audit`), assigned when the event is recorded; null when the log is
    /// off. First in the serialized event, so that `with_log_index` can put it in without
    /// serializing the event again.
    #[serde(default)]
    pub log_index: Option<u64>,
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub kind: String,
    pub idempotency_key: Option<String>,
    pub entity: String,
    pub outcome: Outcome,
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub previous_state: Option<Value>,
    pub new_state: Option<Value>,
    pub attempts: u32,
    pub latency_ms: u64,
    pub genesys_status: Option<u16>,
    pub error: Option<EventError>,
    pub entity_version: u64,
    /// SHA-256 of `prev_checksum + "\n" + canonical event`; null unless the outcome changed
    /// the entity.
    pub checksum: Option<String>,
    pub prev_checksum: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// A `batch`'s event only: counts per outcome of its children and the first errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Value>,
    /// The W3C trace context the job arrived with (AMQP header `traceparent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl AuditEvent {
    /// The event of job `job_id` (`idempotency_key`, of `kind`) ending in `outcome` on `entity`:
    /// its id derived from them, now as its time, not yet linked into the entity's chain, every
    /// other field empty. Callers fill in what they know (`..AuditEvent::new(…)`).
    pub fn new(
        job_id: Uuid,
        kind: impl Into<String>,
        idempotency_key: &str,
        entity: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            log_index: None,
            event_id: audit_event_id(idempotency_key, job_id, outcome),
            job_id,
            kind: kind.into(),
            idempotency_key: Some(idempotency_key.to_string()),
            entity: entity.into(),
            outcome,
            actor: None,
            correlation_id: None,
            previous_state: None,
            new_state: None,
            attempts: 0,
            latency_ms: 0,
            genesys_status: None,
            error: None,
            entity_version: 0,
            checksum: None,
            prev_checksum: String::new(),
            occurred_at: now_millis(),
            summary: None,
            traceparent: None,
        }
    }

    pub fn routing_key(&self) -> String {
        format!("audit.{}.{}", self.kind, self.outcome)
    }
}

/// The compact record a CRM, payroll or VCS system needs, one per applied change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmEvent {
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub kind: String,
    pub entity: String,
    pub new_state: Option<Value>,
    pub entity_version: u64,
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The created workitem (`interaction.create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workitem_id: Option<String>,
    /// The version now published (`flow.deploy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_version: Option<String>,
    /// The job's `version_matrix` (`flow.deploy`), for VCS sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_matrix: Option<Value>,
    /// The W3C trace context the job arrived with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl CrmEvent {
    pub fn from_audit(audit: &AuditEvent) -> Self {
        let state = |field: &str| {
            audit
                .new_state
                .as_ref()
                .and_then(|s| s.get(field))
                .filter(|v| !v.is_null())
        };
        let text = |field: &str| state(field).and_then(Value::as_str).map(str::to_string);
        let for_kind = |kind: &str| audit.kind == kind;
        Self {
            event_id: crm_event_id(audit.idempotency_key.as_deref().unwrap_or(""), audit.job_id),
            job_id: audit.job_id,
            kind: audit.kind.clone(),
            entity: audit.entity.clone(),
            new_state: audit.new_state.clone(),
            entity_version: audit.entity_version,
            actor: audit.actor.clone(),
            correlation_id: audit.correlation_id.clone(),
            occurred_at: audit.occurred_at,
            workitem_id: text("workitem_id").filter(|_| for_kind("interaction.create")),
            published_version: text("published_version").filter(|_| for_kind("flow.deploy")),
            version_matrix: state("version_matrix")
                .cloned()
                .filter(|_| for_kind("flow.deploy")),
            traceparent: audit.traceparent.clone(),
        }
    }

    pub fn routing_key(&self) -> String {
        format!("crm.{}", self.kind)
    }
}

/// An instant as RFC 3339, the format of every timestamp in events and headers.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("UTC instants of this era always format as RFC 3339")
}

/// `event_id` of a job's audit event.
pub fn audit_event_id(idempotency_key: &str, job_id: Uuid, outcome: Outcome) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("genesys-worker:{idempotency_key}:{job_id}:{outcome}").as_bytes(),
    )
}

/// `event_id` of a job's CRM event: the applied audit event's name plus `:crm`.
pub fn crm_event_id(idempotency_key: &str, job_id: Uuid) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("genesys-worker:{idempotency_key}:{job_id}:applied:crm").as_bytes(),
    )
}

/// A message ready for an outbound exchange. Stored with the idempotency record so a job
/// redelivered before its events were confirmed re-publishes the very same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundEvent {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub body: String,
}

/// The messages announcing `event`: the audit event, and for an applied job its CRM event (a
/// batch's own event summarises its children, which each sent theirs; a control change is no
/// change in Genesys).
pub fn outbound(topology: &crate::config::Topology, event: &AuditEvent) -> Vec<OutboundEvent> {
    let mut messages = vec![OutboundEvent {
        exchange: topology.audit_exchange.clone(),
        routing_key: event.routing_key(),
        message_id: event.event_id.to_string(),
        body: serde_json::to_string(event).expect("audit events serialize"),
    }];
    let job_change = crate::job::Kind::parse(&event.kind).is_some_and(|kind| kind != crate::job::Kind::Batch);
    if event.outcome == Outcome::Applied && job_change {
        let crm = CrmEvent::from_audit(event);
        messages.push(OutboundEvent {
            exchange: topology.crm_exchange.clone(),
            routing_key: crm.routing_key(),
            message_id: crm.event_id.to_string(),
            body: serde_json::to_string(&crm).expect("crm events serialize"),
        });
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_deterministic_uuid_v5_in_the_url_namespace() {
        let job = Uuid::parse_str("0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b").unwrap();
        let id = audit_event_id("key-1", job, Outcome::Applied);
        assert_eq!(id, audit_event_id("key-1", job, Outcome::Applied));
        assert_eq!(id.get_version_num(), 5);
        let expected = Uuid::new_v5(
            &Uuid::parse_str("6ba7b811-9dad-11d1-80b4-00c04fd430c8").unwrap(),
            b"genesys-worker:key-1:0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b:applied",
        );
        assert_eq!(id, expected);
        assert_ne!(id, audit_event_id("key-1", job, Outcome::Duplicate));
        assert_ne!(crm_event_id("key-1", job), id);
    }

    #[test]
    fn an_error_without_details_serializes_as_before_and_details_are_bounded() {
        let plain = EventError::new("flow_locked", "job j: flow:f: locked");
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::json!({"code": "flow_locked", "message": "job j: flow:f: locked"})
        );
        let details = ErrorDetails {
            error_code: Some("architect.publish.failed".into()),
            error_details: Some(
                (0..30)
                    .map(|n| serde_json::json!({"errorCode": "e", "entityName": "N".repeat(n * 100)}))
                    .collect(),
            ),
            error_message_params: Some(
                (0..40)
                    .map(|n| (format!("p{n:02}"), Value::String("v".into())))
                    .collect(),
            ),
            error_details_omitted: 0,
        };
        let error = plain.with_details(Some(details));
        let details = error.details.as_ref().unwrap();
        assert_eq!(details.error_details.as_ref().unwrap().len(), DETAILS_ENTRIES_MAX);
        assert_eq!(details.error_details_omitted, 5);
        assert_eq!(
            details.error_message_params.as_ref().unwrap().len(),
            DETAILS_ENTRIES_MAX
        );
        let longest = details
            .error_details
            .iter()
            .flatten()
            .map(|d| d["entityName"].as_str().unwrap().len())
            .max()
            .unwrap();
        assert!(longest <= crate::bounded::VALUE_MAX, "{longest}");
        let json = serde_json::to_value(&error).unwrap();
        assert_eq!(json["details"]["error_code"], "architect.publish.failed");
        assert_eq!(json["details"]["error_details_omitted"], 5);
    }

    #[test]
    fn outcomes_serialize_as_the_contract_names() {
        assert_eq!(serde_json::to_value(Outcome::RolledBack).unwrap(), "rolled_back");
        assert!(Outcome::Rejected.dead_letters() && !Outcome::Conflict.dead_letters());
        assert!(Outcome::Applied.changed_entity() && !Outcome::Duplicate.changed_entity());
    }
}
