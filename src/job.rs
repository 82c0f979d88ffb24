//! The job message (docs/architecture.md, section 2.1) and the decode stage: bytes in, a validated [`Job`] out.
//!
//! Anything wrong with a message is a [`DecodeError`] carrying a stable `code` (it becomes the
//! dead letter's `x-error-code`) and, when the message got far enough, the job id and kind so the
//! rejection can also be announced as an audit event.

use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::canonical;

/// Job kinds of the contract; every one is applied (a `batch` by fanning out its children).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    AgentStatus,
    InteractionStatus,
    InteractionCreate,
    FlowDeploy,
    Batch,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::AgentStatus,
        Kind::InteractionStatus,
        Kind::InteractionCreate,
        Kind::FlowDeploy,
        Kind::Batch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AgentStatus => "agent.status",
            Kind::InteractionStatus => "interaction.status",
            Kind::InteractionCreate => "interaction.create",
            Kind::FlowDeploy => "flow.deploy",
            Kind::Batch => "batch",
        }
    }

    pub fn parse(raw: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `routing_status` values a job may set; the others are read-only in Genesys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RoutingStatus {
    #[serde(rename = "OFF_QUEUE")]
    OffQueue,
    #[serde(rename = "IDLE")]
    Idle,
}

impl RoutingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingStatus::OffQueue => "OFF_QUEUE",
            RoutingStatus::Idle => "IDLE",
        }
    }
}

/// `agent.status` payload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    pub user_id: Uuid,
    /// A presence name (`Available`, `On Queue`, an org label) or a presence definition id.
    pub presence: String,
    pub routing_status: Option<RoutingStatus>,
    pub message: Option<String>,
    /// Apply only if the agent's current presence is this one (name or definition id).
    pub expected_current: Option<String>,
    /// What to do when the agent is on a live interaction (routing status `INTERACTING` or
    /// `COMMUNICATING`); unset: the batch's policy, else `apply`.
    pub if_interacting: Option<IfInteracting>,
    /// Leave an agent who is Out of Office alone (`conflict`, `out_of_office`); unset: the
    /// batch's policy, else true.
    pub respect_out_of_office: Option<bool>,
    /// Write nothing for an agent already in the target presence; unset: the batch's policy,
    /// else true.
    pub skip_if_current: Option<bool>,
}

/// `if_interacting` of an `agent.status` job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IfInteracting {
    /// Change the presence anyway (the interaction goes on).
    Apply,
    /// Try again later, until `not_after`.
    Defer,
    /// End as `conflict`, `agent_interacting`.
    Skip,
}

/// The presence policy of an `agent.status` job, its own fields or else its batch's
/// (`presence_policy`), each unset one at its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresencePolicy {
    pub if_interacting: IfInteracting,
    pub respect_out_of_office: bool,
    pub skip_if_current: bool,
}

impl AgentStatus {
    pub fn policy(&self) -> PresencePolicy {
        PresencePolicy {
            if_interacting: self.if_interacting.unwrap_or(IfInteracting::Apply),
            respect_out_of_office: self.respect_out_of_office.unwrap_or(true),
            skip_if_current: self.skip_if_current.unwrap_or(true),
        }
    }
}

/// A batch's `presence_policy`: the fields its `agent.status` children get unless they set
/// their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPresencePolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub if_interacting: Option<IfInteracting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub respect_out_of_office: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_if_current: Option<bool>,
}

/// `interaction.status` payload: move a workitem to another status of its worktype.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InteractionStatus {
    pub workitem_id: Uuid,
    /// The target status by id; exactly one of `status_id` and `status` is given.
    pub status_id: Option<Uuid>,
    /// The target status by name, resolved through the worktype's statuses.
    pub status: Option<String>,
    /// Apply only if the workitem's current status is this one (name or id).
    pub expected_current: Option<String>,
}

impl InteractionStatus {
    /// The target as given: an id or a name.
    pub fn target(&self) -> String {
        match (&self.status_id, &self.status) {
            (Some(id), _) => id.to_string(),
            (None, Some(name)) => name.clone(),
            (None, None) => String::new(),
        }
    }
}

/// Task Management's limits on a workitem (`WorkitemCreate`).
pub const WORKITEM_PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -25_000_000..=25_000_000;
pub const WORKITEM_NAME_CHARS: std::ops::RangeInclusive<usize> = 3..=256;
pub const WORKITEM_DESCRIPTION_MAX: usize = 512;
/// Skills per workitem accepted by this worker (the API documents no lower bound).
pub const WORKITEM_SKILLS_MAX: usize = 50;

/// `interaction.create` payload: a Task Management workitem, created exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InteractionCreate {
    pub type_id: Uuid,
    pub name: String,
    pub queue_id: Option<Uuid>,
    pub priority: Option<i64>,
    pub skill_ids: Option<Vec<Uuid>>,
    pub language_id: Option<Uuid>,
    pub external_contact_id: Option<Uuid>,
    pub custom_fields: Option<serde_json::Map<String, Value>>,
    pub description: Option<String>,
}

/// `create` of a `flow.deploy`: the flow to make when it does not exist yet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowCreate {
    pub name: String,
    #[serde(rename = "type")]
    pub flow_type: String,
}

fn yes() -> bool {
    true
}

/// `flow.deploy` payload: validate an IVR flow, optimise it, deploy it under a lock, publish.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowDeploy {
    /// The flow to deploy to; exactly one of `flow_id` and `create` is given.
    pub flow_id: Option<Uuid>,
    pub create: Option<FlowCreate>,
    pub flow: crate::flow::FlowDefinition,
    #[serde(default = "yes")]
    pub publish: bool,
    #[serde(default = "yes")]
    pub rollback_on_fail: bool,
    #[serde(default = "yes")]
    pub optimize: bool,
    /// Deploy only if the flow's saved version is this one.
    pub expected_version: Option<String>,
    #[serde(default)]
    pub rules: Option<crate::flow::Rules>,
    /// Free-form, carried into the audit and CRM events (component versions for VCS sync).
    pub version_matrix: Option<Value>,
    /// When someone else holds the flow's lock: `conflict` at once, or `wait` for it up to
    /// `lock_wait_secs`; unset: the worker's `FLOW_LOCK_WAIT_SECS`.
    pub on_locked: Option<OnLocked>,
    /// With `on_locked: wait`: how long, at most [`MAX_LOCK_WAIT_SECS`].
    pub lock_wait_secs: Option<u64>,
    /// Unlock a flow someone else holds before deploying; only for an actor the worker's
    /// `FLOW_FORCE_UNLOCK_ACTORS` names, and recorded in the audit event.
    #[serde(default)]
    pub force_unlock: bool,
}

/// `on_locked` of a `flow.deploy` job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLocked {
    Conflict,
    Wait,
}

/// The longest `lock_wait_secs` a job may ask for (an hour).
pub const MAX_LOCK_WAIT_SECS: u64 = 3600;

/// `batch` payload: child job messages, fanned out as jobs of their own (each decoded and
/// validated when it runs, so one bad child is rejected alone).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub jobs: Vec<Value>,
    /// Presence policy fields for the `agent.status` children that do not set their own.
    pub presence_policy: Option<BatchPresencePolicy>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    AgentStatus(AgentStatus),
    InteractionStatus(InteractionStatus),
    InteractionCreate(InteractionCreate),
    FlowDeploy(Box<FlowDeploy>),
    Batch(Batch),
}

/// A decoded, validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub job_id: Uuid,
    pub kind: Kind,
    /// Given by the producer, or the SHA-256 of the canonical `kind` + `payload`.
    pub idempotency_key: String,
    /// SHA-256 of the canonical `kind` + `payload`: the same key with another fingerprint is
    /// `idempotency_key_reused`.
    pub fingerprint: String,
    pub sequence: Option<u64>,
    pub actor: Option<String>,
    pub submitted_at: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
    pub correlation_id: Option<String>,
    pub payload: Payload,
    /// The W3C trace context the message arrived with (an AMQP header, not part of the body).
    pub traceparent: Option<String>,
}

impl Job {
    /// The Genesys entity the job changes, as named in events (`user:<id>`).
    ///
    /// A workitem to be created has no id yet: until it exists, its job is filed under
    /// `workitem:new:<idempotency key>`; the created workitem's events use `workitem:<id>`.
    pub fn entity(&self) -> String {
        match &self.payload {
            Payload::AgentStatus(p) => format!("user:{}", p.user_id),
            Payload::InteractionStatus(p) => format!("workitem:{}", p.workitem_id),
            Payload::InteractionCreate(_) => format!("workitem:new:{}", self.idempotency_key),
            Payload::FlowDeploy(p) => match (&p.flow_id, &p.create) {
                (Some(id), _) => format!("flow:{id}"),
                (None, Some(create)) => format!("flow:new:{}", create.name),
                (None, None) => "flow:unknown".into(),
            },
            Payload::Batch(_) => batch_entity(self.job_id),
        }
    }
}

/// The entity of batch `job_id`: its summary's place in the audit chains.
pub fn batch_entity(job_id: Uuid) -> String {
    format!("batch:{job_id}")
}

/// Why a message cannot be processed. `code` is stable and machine-readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    pub code: &'static str,
    pub message: String,
    /// Known when the message got far enough to name the job.
    pub job_id: Option<Uuid>,
    pub kind: Option<String>,
    pub entity: Option<String>,
    pub idempotency_key: Option<String>,
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
}

impl DecodeError {
    /// This error with every text cut to its bound.
    fn bounded(mut self) -> Self {
        use crate::bounded::{message, truncate, VALUE_MAX};
        self.message = message(self.message);
        let cut = |text: Option<String>| text.map(|t| truncate(&t, VALUE_MAX).into_owned());
        self.entity = cut(self.entity);
        self.kind = cut(self.kind);
        self
    }

    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            job_id: None,
            kind: None,
            entity: None,
            idempotency_key: None,
            actor: None,
            correlation_id: None,
        }
    }
}

pub const MAX_KEY_LEN: usize = 512;
const MAX_TEXT_LEN: usize = 1024;

/// Most children of one batch unless `BATCH_MAX` says otherwise.
pub const DEFAULT_BATCH_MAX: usize = 10_000;

/// Size limits of job messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// A `batch` carries its children, so it may be larger.
    pub max_batch_bytes: usize,
    /// Most children of one batch.
    pub batch_max: usize,
}

impl Limits {
    /// The same size limit for every kind, and the default batch size.
    pub fn uniform(max_bytes: usize) -> Self {
        Self {
            max_message_bytes: max_bytes,
            max_batch_bytes: max_bytes,
            batch_max: DEFAULT_BATCH_MAX,
        }
    }
}

/// Decodes and validates one message body, any kind limited to `max_bytes`.
pub fn decode(body: &[u8], max_bytes: usize) -> Result<Job, DecodeError> {
    decode_with(body, &Limits::uniform(max_bytes))
}

/// The payload's fingerprint: SHA-256 of the canonical `{"kind": …, "payload": …}` (written
/// directly: "kind" sorts before "payload").
fn fingerprint_of(kind: Kind, payload: &Value) -> String {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(b"{\"kind\":");
    canonical::append(&Value::String(kind.as_str().into()), &[], &mut bytes);
    bytes.extend_from_slice(b",\"payload\":");
    canonical::append(payload, &[], &mut bytes);
    bytes.push(b'}');
    canonical::sha256_hex(&bytes)
}

/// Decodes and validates one message body. Every error's texts are bounded
/// ([`crate::bounded`]): they quote what the producer sent.
pub fn decode_with(body: &[u8], limits: &Limits) -> Result<Job, DecodeError> {
    decode_unbounded(body, limits).map_err(DecodeError::bounded)
}

fn decode_unbounded(body: &[u8], limits: &Limits) -> Result<Job, DecodeError> {
    let too_large = |max: usize| {
        DecodeError::new(
            "payload_too_large",
            format!("message is {} bytes, the limit is {max}", body.len()),
        )
    };
    let ceiling = limits.max_message_bytes.max(limits.max_batch_bytes);
    if body.len() > ceiling {
        return Err(too_large(ceiling));
    }
    if body.len() > limits.max_message_bytes && !names_batch_kind(body) {
        // Only a batch may be this large: refused before it is parsed into a tree (a value
        // tree takes several times the message's size).
        return Err(too_large(limits.max_message_bytes));
    }
    let value = strict_json(body)
        .map_err(|e| DecodeError::new("malformed_json", format!("message is not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(DecodeError::new("invalid_job", "message must be a JSON object"));
    };
    let mut header = Header::read(&object)?;
    let named = |mut err: DecodeError, header: &Header| {
        err.job_id = Some(header.job_id);
        err.kind = Some(header.kind.clone());
        err.idempotency_key = header.idempotency_key.clone();
        err.actor = header.actor.clone();
        err.correlation_id = header.correlation_id.clone();
        err.message = format!("job {} ({}): {}", header.job_id, header.kind, err.message);
        err
    };
    let Some(kind) = Kind::parse(&header.kind) else {
        let err = DecodeError::new("unknown_kind", format!("unknown kind {:?}", header.kind));
        return Err(named(err, &header));
    };
    if kind != Kind::Batch && body.len() > limits.max_message_bytes {
        return Err(named(too_large(limits.max_message_bytes), &header));
    }
    let payload_value = match object.get("payload") {
        Some(Value::Object(map)) => Value::Object(map.clone()),
        Some(_) => {
            return Err(named(
                DecodeError::new("invalid_job", "payload must be an object"),
                &header,
            ))
        }
        None => {
            return Err(named(
                DecodeError::new("invalid_job", "payload is required"),
                &header,
            ))
        }
    };
    let fingerprint = fingerprint_of(kind, &payload_value);
    let idempotency_key = header
        .idempotency_key
        .get_or_insert_with(|| fingerprint.clone())
        .clone();
    let payload = match kind {
        Kind::AgentStatus => decode_agent_status(payload_value),
        Kind::InteractionStatus => decode_interaction_status(payload_value),
        Kind::InteractionCreate => decode_interaction_create(payload_value, &idempotency_key),
        Kind::FlowDeploy => decode_flow_deploy(payload_value),
        Kind::Batch => decode_batch(payload_value, limits.batch_max),
    };
    let payload = payload.map_err(|mut err| {
        if err.entity.is_none() {
            err.entity = entity_hint(&object);
        }
        named(err, &header)
    })?;
    Ok(Job {
        job_id: header.job_id,
        kind,
        idempotency_key,
        fingerprint,
        sequence: header.sequence,
        actor: header.actor,
        submitted_at: header.submitted_at,
        not_after: header.not_after,
        correlation_id: header.correlation_id,
        payload,
        traceparent: None,
    })
}

/// Parses JSON, refusing an object with the same key twice at any depth: with "last one wins",
/// a second `kind` or `user_id` could slip past whatever read the first.
fn strict_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    use serde::de::{Deserializer, Error, MapAccess, SeqAccess, Visitor};

    struct Strict(Value);

    impl<'de> serde::Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(StrictVisitor).map(Strict)
        }
    }

    struct StrictVisitor;

    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            while let Some(Strict(item)) = seq.next_element()? {
                items.push(item);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut object = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if object.contains_key(&key) {
                    let shown = crate::bounded::truncate(&key, crate::bounded::VALUE_MAX);
                    return Err(A::Error::custom(format!("duplicate key {shown:?}")));
                }
                let Strict(value) = map.next_value()?;
                object.insert(key, value);
            }
            Ok(Value::Object(object))
        }
    }

    serde_json::from_slice::<Strict>(body).map(|Strict(value)| value)
}

/// Whether `body` is a JSON object whose `kind` is `batch`, read without building the message:
/// every other field is skipped unallocated.
fn names_batch_kind(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct KindOnly {
        #[serde(default)]
        kind: Option<String>,
    }
    serde_json::from_slice::<KindOnly>(body)
        .ok()
        .and_then(|peek| peek.kind)
        .is_some_and(|kind| kind == Kind::Batch.as_str())
}

/// The envelope fields, read before the kind decides how to read the payload.
struct Header {
    job_id: Uuid,
    kind: String,
    idempotency_key: Option<String>,
    sequence: Option<u64>,
    actor: Option<String>,
    submitted_at: Option<OffsetDateTime>,
    not_after: Option<OffsetDateTime>,
    correlation_id: Option<String>,
}

impl Header {
    fn read(object: &Map<String, Value>) -> Result<Self, DecodeError> {
        let job_id = match object.get("job_id") {
            Some(Value::String(raw)) => Uuid::parse_str(raw).map_err(|_| {
                DecodeError::new("invalid_job", format!("job_id must be a UUID, got {raw:?}"))
            })?,
            Some(_) => return Err(DecodeError::new("invalid_job", "job_id must be a UUID string")),
            None => return Err(DecodeError::new("invalid_job", "job_id is required")),
        };
        let kind = match object.get("kind") {
            Some(Value::String(kind)) if !kind.is_empty() && kind.len() <= 64 => kind.clone(),
            Some(_) => {
                let mut err = DecodeError::new(
                    "invalid_job",
                    format!("job {job_id}: kind must be a non-empty string of at most 64 bytes"),
                );
                err.job_id = Some(job_id);
                return Err(err);
            }
            None => {
                let mut err = DecodeError::new("invalid_job", format!("job {job_id}: kind is required"));
                err.job_id = Some(job_id);
                return Err(err);
            }
        };
        let fail = |message: String| {
            let mut err = DecodeError::new("invalid_job", format!("job {job_id} ({kind}): {message}"));
            err.job_id = Some(job_id);
            err.kind = Some(kind.clone());
            err
        };
        let text = |field: &str, max: usize| -> Result<Option<String>, DecodeError> {
            match object.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(Some(s.clone())),
                Some(_) => Err(fail(format!(
                    "{field} must be a non-empty string of at most {max} bytes (UTF-8)"
                ))),
            }
        };
        let instant = |field: &str| -> Result<Option<OffsetDateTime>, DecodeError> {
            match text(field, 64)? {
                None => Ok(None),
                Some(raw) => OffsetDateTime::parse(&raw, &time::format_description::well_known::Rfc3339)
                    .map(Some)
                    .map_err(|_| fail(format!("{field} must be an RFC 3339 timestamp, got {raw:?}"))),
            }
        };
        let sequence = match object.get("sequence") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(_) => return Err(fail("sequence must be a non-negative integer".into())),
        };
        Ok(Self {
            idempotency_key: text("idempotency_key", MAX_KEY_LEN)?,
            sequence,
            actor: text("actor", MAX_TEXT_LEN)?,
            submitted_at: instant("submitted_at")?,
            not_after: instant("not_after")?,
            correlation_id: text("correlation_id", MAX_TEXT_LEN)?,
            job_id,
            kind,
        })
    }
}

/// Best-effort entity of an invalid payload, so its rejection is filed under the right entity.
fn entity_hint(object: &Map<String, Value>) -> Option<String> {
    let payload = object.get("payload")?;
    let id = |field: &str| {
        payload
            .get(field)?
            .as_str()
            .and_then(|raw| Uuid::parse_str(raw).ok())
    };
    id("user_id")
        .map(|id| format!("user:{id}"))
        .or_else(|| id("workitem_id").map(|id| format!("workitem:{id}")))
}

fn payload_error(err: serde_path_to_error::Error<serde_json::Error>) -> DecodeError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let message = if path == "." || path.is_empty() {
        format!("payload: {inner}")
    } else {
        format!("payload.{path}: {inner}")
    };
    DecodeError::new("invalid_payload", message)
}

fn decode_agent_status(value: Value) -> Result<Payload, DecodeError> {
    let payload: AgentStatus = serde_path_to_error::deserialize(value).map_err(payload_error)?;
    let invalid = |message: String| DecodeError {
        entity: Some(format!("user:{}", payload.user_id)),
        ..DecodeError::new("invalid_payload", message)
    };
    if payload.presence.trim().is_empty() || payload.presence.len() > 256 {
        return Err(invalid(
            "payload.presence must be a presence name or definition id".into(),
        ));
    }
    if payload.message.as_ref().is_some_and(|m| m.len() > MAX_TEXT_LEN) {
        return Err(invalid(format!(
            "payload.message is longer than {MAX_TEXT_LEN} bytes (UTF-8)"
        )));
    }
    if payload
        .expected_current
        .as_ref()
        .is_some_and(|e| e.trim().is_empty())
    {
        return Err(invalid("payload.expected_current must not be empty".into()));
    }
    Ok(Payload::AgentStatus(payload))
}

fn decode_interaction_status(value: Value) -> Result<Payload, DecodeError> {
    let payload: InteractionStatus = serde_path_to_error::deserialize(value).map_err(payload_error)?;
    let invalid = |message: &str| DecodeError {
        entity: Some(format!("workitem:{}", payload.workitem_id)),
        ..DecodeError::new("invalid_payload", message)
    };
    match (&payload.status_id, &payload.status) {
        (Some(_), Some(_)) => return Err(invalid("give payload.status_id or payload.status, not both")),
        (None, None) => return Err(invalid("payload.status_id or payload.status is required")),
        (None, Some(name)) if name.trim().is_empty() || name.len() > 256 => {
            return Err(invalid(
                "payload.status must be a status name of at most 256 bytes (UTF-8)",
            ))
        }
        _ => {}
    }
    if payload
        .expected_current
        .as_ref()
        .is_some_and(|e| e.trim().is_empty())
    {
        return Err(invalid("payload.expected_current must not be empty"));
    }
    Ok(Payload::InteractionStatus(payload))
}

fn decode_interaction_create(value: Value, idempotency_key: &str) -> Result<Payload, DecodeError> {
    let payload: InteractionCreate = serde_path_to_error::deserialize(value).map_err(payload_error)?;
    let invalid = |message: String| DecodeError {
        entity: Some(format!("workitem:new:{idempotency_key}")),
        ..DecodeError::new("invalid_payload", message)
    };
    let name_chars = payload.name.chars().count();
    if !WORKITEM_NAME_CHARS.contains(&name_chars) {
        return Err(invalid(format!(
            "payload.name must be 3 to 256 characters, got {name_chars}"
        )));
    }
    if let Some(priority) = payload.priority.filter(|p| !WORKITEM_PRIORITY_RANGE.contains(p)) {
        return Err(invalid(format!(
            "payload.priority must be between -25000000 and 25000000, got {priority}"
        )));
    }
    if let Some(length) = payload.description.as_ref().map(|d| d.chars().count()) {
        if length > WORKITEM_DESCRIPTION_MAX {
            return Err(invalid(format!(
                "payload.description must be at most 512 characters, got {length}"
            )));
        }
    }
    if let Some(count) = payload
        .skill_ids
        .as_ref()
        .map(Vec::len)
        .filter(|n| *n > WORKITEM_SKILLS_MAX)
    {
        return Err(invalid(format!(
            "payload.skill_ids may list at most {WORKITEM_SKILLS_MAX} skills, got {count}"
        )));
    }
    Ok(Payload::InteractionCreate(payload))
}

/// Problems listed in a rejected flow's message before it summarises.
const FLOW_PROBLEMS_LISTED: usize = 20;

fn decode_flow_deploy(value: Value) -> Result<Payload, DecodeError> {
    let payload: FlowDeploy = serde_path_to_error::deserialize(value).map_err(payload_error)?;
    let entity = match (&payload.flow_id, &payload.create) {
        (Some(id), None) => format!("flow:{id}"),
        (None, Some(create)) => format!("flow:new:{}", create.name),
        _ => {
            return Err(DecodeError::new(
                "invalid_payload",
                "give payload.flow_id or payload.create, not both or neither",
            ))
        }
    };
    let invalid = |code: &'static str, message: String| DecodeError {
        entity: Some(entity.clone()),
        ..DecodeError::new(code, message)
    };
    if let Some(create) = &payload.create {
        if create.name.trim().is_empty() || create.flow_type.trim().is_empty() {
            return Err(invalid(
                "invalid_payload",
                "payload.create needs a name and a type".into(),
            ));
        }
    }
    match (payload.on_locked, payload.lock_wait_secs) {
        (Some(OnLocked::Wait), None) => {
            return Err(invalid(
                "invalid_payload",
                "payload.on_locked is wait: give payload.lock_wait_secs".into(),
            ))
        }
        (Some(OnLocked::Wait), Some(secs)) if secs == 0 || secs > MAX_LOCK_WAIT_SECS => {
            return Err(invalid(
                "invalid_payload",
                format!("payload.lock_wait_secs must be 1 to {MAX_LOCK_WAIT_SECS}"),
            ))
        }
        (Some(OnLocked::Conflict) | None, Some(_)) => {
            return Err(invalid(
                "invalid_payload",
                "payload.lock_wait_secs needs payload.on_locked: wait".into(),
            ))
        }
        _ => {}
    }
    let rules = payload.rules.clone().unwrap_or_default();
    // A job may tighten the operator's limits on flows, not raise them.
    let ceiling = crate::flow::Rules::default();
    for (name, asked, max) in [
        ("max_nodes", rules.max_nodes, ceiling.max_nodes),
        ("max_depth", rules.max_depth, ceiling.max_depth),
    ] {
        if asked > max {
            return Err(invalid(
                "invalid_payload",
                format!("payload.rules.{name} {asked} is above the worker's limit of {max}"),
            ));
        }
    }
    if let Err(problems) = crate::flow::validate(&payload.flow, &rules) {
        let mut listed: Vec<String> = problems
            .iter()
            .take(FLOW_PROBLEMS_LISTED)
            .map(ToString::to_string)
            .collect();
        if problems.len() > FLOW_PROBLEMS_LISTED {
            listed.push(format!("and {} more", problems.len() - FLOW_PROBLEMS_LISTED));
        }
        return Err(invalid(
            "invalid_flow",
            format!(
                "{} problem(s) in flow {:?}: {}",
                problems.len(),
                payload.flow.name,
                listed.join("; ")
            ),
        ));
    }
    Ok(Payload::FlowDeploy(Box::new(payload)))
}

fn decode_batch(value: Value, batch_max: usize) -> Result<Payload, DecodeError> {
    let payload: Batch = serde_path_to_error::deserialize(value).map_err(payload_error)?;
    if payload.jobs.is_empty() || payload.jobs.len() > batch_max {
        return Err(DecodeError::new(
            "invalid_payload",
            format!(
                "payload.jobs holds {} jobs; a batch holds 1 to {batch_max} (BATCH_MAX)",
                payload.jobs.len()
            ),
        ));
    }
    // Children are validated one by one when they run; only what would make the fan-out itself
    // wrong is refused here.
    for (index, child) in payload.jobs.iter().enumerate() {
        if child.get("kind").and_then(Value::as_str) == Some(Kind::Batch.as_str()) {
            return Err(DecodeError::new(
                "invalid_payload",
                format!("payload.jobs[{index}]: a batch cannot contain a batch"),
            ));
        }
    }
    Ok(Payload::Batch(payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const USER: &str = "8f1c2b4e-7d6a-4b3c-9e2f-1a0b9c8d7e6f";
    const JOB: &str = "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b";

    #[test]
    fn the_fingerprint_is_the_hash_of_the_canonical_kind_and_payload() {
        let payload = json!({"user_id": "u", "presence": "Available", "x": [1, {"b": 2, "a": 1}]});
        let whole = json!({"kind": "agent.status", "payload": payload});
        assert_eq!(
            fingerprint_of(Kind::AgentStatus, &payload),
            canonical::sha256_hex(canonical::to_string(&whole).as_bytes())
        );
    }

    fn bytes(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    fn agent_job(payload: Value) -> Value {
        json!({"job_id": JOB, "kind": "agent.status", "payload": payload})
    }

    #[test]
    fn presence_policy_fields_default_to_apply_respect_and_skip() {
        let job = decode(
            &bytes(agent_job(json!({"user_id": USER, "presence": "Break"}))),
            1 << 20,
        )
        .unwrap();
        let Payload::AgentStatus(payload) = &job.payload else {
            panic!("agent.status")
        };
        assert_eq!(
            payload.policy(),
            PresencePolicy {
                if_interacting: IfInteracting::Apply,
                respect_out_of_office: true,
                skip_if_current: true
            }
        );
        let given = agent_job(
            json!({"user_id": USER, "presence": "Break", "if_interacting": "defer",
            "respect_out_of_office": false, "skip_if_current": false}),
        );
        let job = decode(&bytes(given), 1 << 20).unwrap();
        let Payload::AgentStatus(payload) = &job.payload else {
            panic!("agent.status")
        };
        assert_eq!(payload.policy().if_interacting, IfInteracting::Defer);
        assert!(!payload.policy().respect_out_of_office && !payload.policy().skip_if_current);
        let unknown = agent_job(json!({"user_id": USER, "presence": "Break", "if_interacting": "later"}));
        assert_eq!(
            decode(&bytes(unknown), 1 << 20).unwrap_err().code,
            "invalid_payload"
        );
    }

    #[test]
    fn a_lock_wait_needs_on_locked_wait_and_a_bounded_number_of_seconds() {
        let flow = |extra: Value| {
            let mut payload = json!({"flow_id": USER, "flow": {"name": "x", "type": "inboundcall", "start": "s", "nodes": {"s": {"type": "start", "transitions": []}}}});
            payload
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            bytes(json!({"job_id": JOB, "kind": "flow.deploy", "payload": payload}))
        };
        assert!(decode(&flow(json!({"on_locked": "wait", "lock_wait_secs": 30})), 1 << 20).is_ok());
        assert!(decode(
            &flow(json!({"on_locked": "conflict", "force_unlock": true})),
            1 << 20
        )
        .is_ok());
        for bad in [
            json!({"on_locked": "wait"}),
            json!({"on_locked": "wait", "lock_wait_secs": 0}),
            json!({"on_locked": "wait", "lock_wait_secs": MAX_LOCK_WAIT_SECS + 1}),
            json!({"lock_wait_secs": 30}),
            json!({"on_locked": "steal"}),
        ] {
            let err = decode(&flow(bad.clone()), 1 << 20).unwrap_err();
            assert_eq!(err.code, "invalid_payload", "{bad}: {}", err.message);
        }
    }

    #[test]
    fn a_key_given_twice_is_refused_at_any_depth() {
        let twice = br#"{"job_id": "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b", "kind": "agent.status", "kind": "batch", "payload": {}}"#;
        let err = decode(twice, 1 << 20).unwrap_err();
        assert_eq!(err.code, "malformed_json");
        assert!(err.message.contains("duplicate key \"kind\""), "{}", err.message);
        let nested = format!(
            r#"{{"job_id": "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b", "kind": "agent.status", "payload": {{"user_id": "{USER}", "user_id": "{USER}", "presence": "Break"}}}}"#
        );
        assert_eq!(
            decode(nested.as_bytes(), 1 << 20).unwrap_err().code,
            "malformed_json"
        );
    }

    #[test]
    fn a_jobs_rules_may_tighten_the_flow_limits_but_not_raise_them() {
        let deploy = |rules: Value| {
            json!({"job_id": "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b", "kind": "flow.deploy", "payload": {
                "flow_id": USER, "rules": rules,
                "flow": {"name": "x", "type": "inboundcall", "start": "s", "nodes": {"s": {"type": "start", "transitions": []}}}}})
        };
        let raised = decode(
            &serde_json::to_vec(&deploy(json!({"max_nodes": 1_000_000}))).unwrap(),
            1 << 20,
        );
        let err = raised.unwrap_err();
        assert_eq!(err.code, "invalid_payload");
        assert!(
            err.message.contains("above the worker's limit of 10000"),
            "{}",
            err.message
        );
        let raised = decode(
            &serde_json::to_vec(&deploy(json!({"max_depth": 5_000}))).unwrap(),
            1 << 20,
        );
        assert!(raised.is_err());
        let tightened = decode(
            &serde_json::to_vec(&deploy(json!({"max_nodes": 10}))).unwrap(),
            1 << 20,
        );
        assert!(tightened.is_ok(), "{tightened:?}");
    }

    #[test]
    fn a_message_over_the_limit_of_its_kind_is_refused_without_being_parsed() {
        let limits = Limits {
            max_message_bytes: 100,
            max_batch_bytes: 10_000,
            batch_max: 10,
        };
        let padding = "p".repeat(500);
        let big = format!(
            r#"{{"job_id": "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b", "kind": "agent.status", "payload": {{"x": "{padding}"}}}}"#
        );
        assert_eq!(
            decode_with(big.as_bytes(), &limits).unwrap_err().code,
            "payload_too_large"
        );
        // Not even JSON: refused by size all the same (it was never parsed as a tree).
        let garbage = vec![b'['; 500];
        assert_eq!(
            decode_with(&garbage, &limits).unwrap_err().code,
            "payload_too_large"
        );
    }

    #[test]
    fn decodes_the_documented_example() {
        let job = decode(
            &bytes(json!({
                "job_id": JOB, "kind": "agent.status",
                "idempotency_key": "wfm-handover-1", "sequence": 1732262400u64,
                "actor": "wfm-scheduler", "submitted_at": "2026-11-22T07:59:58Z",
                "not_after": "2026-11-22T08:15:00Z", "correlation_id": "handover-1",
                "payload": {"user_id": USER, "presence": "Available", "message": "shift start"}
            })),
            1 << 20,
        )
        .unwrap();
        assert_eq!(job.idempotency_key, "wfm-handover-1");
        assert_eq!(job.entity(), format!("user:{USER}"));
        assert_eq!(job.sequence, Some(1732262400));
        let Payload::AgentStatus(p) = &job.payload else {
            panic!("expected an agent.status payload")
        };
        assert_eq!(p.presence, "Available");
        assert_eq!(p.message.as_deref(), Some("shift start"));
    }

    #[test]
    fn default_key_is_the_payload_fingerprint_and_ignores_key_order() {
        let a = decode(
            &bytes(agent_job(json!({"user_id": USER, "presence": "Break"}))),
            1 << 20,
        )
        .unwrap();
        let raw = format!(
            r#"{{"kind":"agent.status","payload":{{"presence":"Break","user_id":"{USER}"}},"job_id":"{JOB}"}}"#
        );
        let b = decode(raw.as_bytes(), 1 << 20).unwrap();
        assert_eq!(a.idempotency_key, a.fingerprint);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 64);
    }

    #[test]
    fn each_kind_of_bad_input_has_its_code() {
        let code = |body: &[u8]| decode(body, 1 << 20).unwrap_err().code;
        assert_eq!(code(b"{not json"), "malformed_json");
        assert_eq!(code(b"[1,2]"), "invalid_job");
        assert_eq!(
            code(&bytes(json!({"kind": "agent.status", "payload": {}}))),
            "invalid_job"
        );
        assert_eq!(
            code(&bytes(
                json!({"job_id": "nope", "kind": "agent.status", "payload": {}})
            )),
            "invalid_job"
        );
        assert_eq!(
            code(&bytes(
                json!({"job_id": JOB, "kind": "agent.teleport", "payload": {}})
            )),
            "unknown_kind"
        );
        assert_eq!(
            code(&bytes(agent_job(
                json!({"user_id": "42", "presence": "Available"})
            ))),
            "invalid_payload"
        );
        assert_eq!(
            code(&bytes(agent_job(json!({"user_id": USER})))),
            "invalid_payload"
        );
        assert_eq!(
            code(&bytes(agent_job(
                json!({"user_id": USER, "presence": "x", "colour": 1})
            ))),
            "invalid_payload"
        );
        assert_eq!(
            code(&bytes(agent_job(
                json!({"user_id": USER, "presence": "x", "routing_status": "INTERACTING"})
            ))),
            "invalid_payload"
        );
        let mut late = agent_job(json!({"user_id": USER, "presence": "x"}));
        late["not_after"] = json!("yesterday");
        assert_eq!(code(&bytes(late)), "invalid_job");
        assert_eq!(decode(&[b' '; 100], 10).unwrap_err().code, "payload_too_large");
    }

    #[test]
    fn errors_name_the_job_and_the_field() {
        let err = decode(
            &bytes(agent_job(json!({"user_id": "42", "presence": "Available"}))),
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(err.job_id, Some(Uuid::parse_str(JOB).unwrap()));
        assert_eq!(err.kind.as_deref(), Some("agent.status"));
        assert!(err.message.contains(JOB), "{}", err.message);
        assert!(err.message.contains("payload.user_id"), "{}", err.message);
    }

    #[test]
    fn unknown_kind_is_named_for_the_audit_event() {
        let err = decode(
            &bytes(json!({"job_id": JOB, "kind": "agent.teleport", "payload": {}})),
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(err.kind.as_deref(), Some("agent.teleport"));
        assert!(err.job_id.is_some());
    }

    fn job_of(kind: &str, payload: Value) -> Value {
        json!({"job_id": JOB, "kind": kind, "idempotency_key": "key-1", "payload": payload})
    }

    #[test]
    fn interaction_status_takes_a_status_id_or_a_name_but_not_both() {
        let workitem = "3f1b8a2c-1d2e-4f5a-8b9c-0d1e2f3a4b5c";
        let decode_status = |payload: Value| decode(&bytes(job_of("interaction.status", payload)), 1 << 20);
        let by_name = decode_status(json!({"workitem_id": workitem, "status": "In Progress"})).unwrap();
        assert_eq!(by_name.entity(), format!("workitem:{workitem}"));
        let Payload::InteractionStatus(p) = &by_name.payload else {
            panic!("wrong payload")
        };
        assert_eq!(p.target(), "In Progress");
        assert!(decode_status(json!({"workitem_id": workitem, "status_id": USER})).is_ok());
        for bad in [
            json!({"workitem_id": workitem}),
            json!({"workitem_id": workitem, "status": "Open", "status_id": USER}),
            json!({"workitem_id": "nope", "status": "Open"}),
            json!({"workitem_id": workitem, "status": " "}),
        ] {
            assert_eq!(
                decode_status(bad.clone()).unwrap_err().code,
                "invalid_payload",
                "{bad}"
            );
        }
    }

    #[test]
    fn interaction_create_is_validated_with_clear_errors() {
        let type_id = "5e2a9b1c-3d4e-4f5a-9b8c-7d6e5f4a3b2c";
        let create = |payload: Value| decode(&bytes(job_of("interaction.create", payload)), 1 << 20);
        let ok =
            create(json!({"type_id": type_id, "name": "Call back", "priority": 10, "skill_ids": [USER]}))
                .unwrap();
        assert_eq!(ok.entity(), "workitem:new:key-1");
        let message = |payload: Value| create(payload).unwrap_err().message;
        assert!(message(json!({"type_id": type_id, "name": "ab"})).contains("payload.name must be 3 to 256"));
        assert!(message(json!({"name": "Call back"})).contains("type_id"));
        assert!(
            message(json!({"type_id": type_id, "name": "Call back", "priority": 25_000_001}))
                .contains("priority")
        );
        assert!(
            message(json!({"type_id": type_id, "name": "Call back", "queue_id": "q1"}))
                .contains("payload.queue_id")
        );
        let skills: Vec<&str> = vec![USER; 51];
        assert!(
            message(json!({"type_id": type_id, "name": "Call back", "skill_ids": skills}))
                .contains("at most 50")
        );
        assert!(
            message(json!({"type_id": type_id, "name": "Call back", "description": "d".repeat(513)}))
                .contains("512")
        );
        let long_name: String = "é".repeat(256);
        assert!(
            create(json!({"type_id": type_id, "name": long_name})).is_ok(),
            "characters, not bytes"
        );
    }

    #[test]
    fn a_batch_holds_one_to_batch_max_jobs_and_no_batch() {
        let limits = Limits {
            batch_max: 3,
            ..Limits::uniform(1 << 20)
        };
        let batch = |jobs: Value| decode_with(&bytes(job_of("batch", json!({"jobs": jobs}))), &limits);
        let child = agent_job(json!({"user_id": USER, "presence": "Available"}));
        let job = batch(json!([child, child])).unwrap();
        assert_eq!(job.entity(), format!("batch:{JOB}"));
        assert!(matches!(&job.payload, Payload::Batch(b) if b.jobs.len() == 2));
        let err = batch(json!([])).unwrap_err();
        assert_eq!(
            (err.code, err.job_id),
            ("invalid_payload", Some(JOB.parse().unwrap()))
        );
        let err = batch(json!([child, child, child, child])).unwrap_err();
        assert!(
            err.message.contains("holds 4 jobs") && err.message.contains("1 to 3"),
            "{err}"
        );
        let err = batch(json!([child, {"kind": "batch"}])).unwrap_err();
        assert!(err.message.contains("payload.jobs[1]"), "{err}");
        // A child that is not even a job is the child's problem, found when it runs.
        assert!(batch(json!([child, 42])).is_ok());
    }

    #[test]
    fn a_batch_may_be_larger_than_other_messages() {
        let limits = Limits {
            max_message_bytes: 300,
            max_batch_bytes: 4096,
            batch_max: 100,
        };
        let child = agent_job(json!({"user_id": USER, "presence": "Available"}));
        let batch = bytes(job_of("batch", json!({"jobs": [child, child, child]})));
        assert!(batch.len() > 300);
        assert!(decode_with(&batch, &limits).is_ok());
        let single = bytes(agent_job(
            json!({"user_id": USER, "presence": "Available", "message": "x".repeat(300)}),
        ));
        assert_eq!(
            decode_with(&single, &limits).unwrap_err().code,
            "payload_too_large"
        );
    }
}
