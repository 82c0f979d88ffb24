//! Operator controls: pause and resume work by kind, lane, batch or correlation id, and cancel a
//! batch or a job before it runs (docs/architecture.md, "Controls").
//!
//! Controls live in Redis (`store/control.rs`), so they hold across replicas and restarts. Each
//! worker keeps a [`Snapshot`] of them in memory, refreshed when the controls' epoch moves
//! ([`Controls::watch`]): checking a job costs no Redis command. Every change is an audit event
//! of its own (kind `control`, entity `control:<target>`), naming the actor who asked.
//!
//! Where they take effect:
//! - a paused lane stops its consumer (`intake`);
//! - a job of a paused kind, batch or correlation id is parked in its lane's `.paused` queue
//!   before it claims anything (`pipeline`), and a job paused while it waits for its first
//!   Genesys call gives that call up ([`crate::genesys::CallGate`]); `resume` moves the parked
//!   jobs back ([`crate::intake::parked`]);
//! - a cancelled job, or a child of a cancelled batch, ends as `cancelled` without a Genesys
//!   call, recorded like `expired` (`pipeline`, next to the sequence rule).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{BrokerError, Publisher};
use crate::config::Topology;
use crate::events::{self, AuditEvent, Outcome};
use crate::job::{Job, Kind};
use crate::lane::Lane;
use crate::record::{self, EntityHead};
use crate::store::{Store, StoreError};

/// How often a worker asks whether the controls changed: a pause takes effect within this
/// plus the time a job already past its checks needs to finish.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// The audit event kind of a control change.
pub const CONTROL_KIND: &str = "control";

/// What a control applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Kind(Kind),
    Lane(Lane),
    Batch(Uuid),
    Correlation(String),
    Job(Uuid),
    /// An idempotency key.
    Key(String),
}

impl Target {
    /// Parses `scope` (`kind`, `lane`, `batch`, `correlation`, `job`, `key`) and its value.
    ///
    /// # Errors
    /// An unknown scope, or a value that is not one of the scope's (a kind of the contract, a
    /// lane, a UUID, a non-empty text of at most 256 bytes).
    pub fn parse(scope: &str, value: &str) -> Result<Self, ControlError> {
        let invalid = |expected: &str| ControlError::Invalid(format!("{scope} {value:?}: not {expected}"));
        let uuid = || Uuid::parse_str(value).map_err(|_| invalid("a UUID"));
        let text = || {
            if value.is_empty() || value.len() > crate::bounded::VALUE_MAX {
                Err(invalid("a text of 1 to 256 bytes"))
            } else {
                Ok(value.to_string())
            }
        };
        match scope {
            "kind" => Kind::parse(value).map(Target::Kind).ok_or_else(|| {
                invalid(
                    "a job kind (agent.status, interaction.create, interaction.status, flow.deploy, batch)",
                )
            }),
            "lane" => match value {
                "single" => Ok(Target::Lane(Lane::Single)),
                "batch" => Ok(Target::Lane(Lane::Batch)),
                _ => Err(invalid("a lane (single, batch)")),
            },
            "batch" => uuid().map(Target::Batch),
            "job" => uuid().map(Target::Job),
            "correlation" => text().map(Target::Correlation),
            "key" => text().map(Target::Key),
            _ => Err(ControlError::Invalid(format!(
                "unknown scope {scope:?} (kind, lane, batch, correlation, job, key)"
            ))),
        }
    }

    pub fn scope(&self) -> &'static str {
        match self {
            Target::Kind(_) => "kind",
            Target::Lane(_) => "lane",
            Target::Batch(_) => "batch",
            Target::Correlation(_) => "correlation",
            Target::Job(_) => "job",
            Target::Key(_) => "key",
        }
    }

    pub fn value(&self) -> String {
        match self {
            Target::Kind(kind) => kind.as_str().to_string(),
            Target::Lane(lane) => lane.as_str().to_string(),
            Target::Batch(id) | Target::Job(id) => id.to_string(),
            Target::Correlation(text) | Target::Key(text) => text.clone(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scope(), self.value())
    }
}

/// A control's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Cancel,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Cancel => "cancel",
        }
    }

    /// The scopes the action takes: a pause holds work back by what it is, a cancel ends
    /// particular jobs.
    fn allows(self, target: &Target) -> bool {
        match self {
            Action::Pause => matches!(
                target,
                Target::Kind(_) | Target::Lane(_) | Target::Batch(_) | Target::Correlation(_)
            ),
            Action::Cancel => matches!(target, Target::Batch(_) | Target::Job(_) | Target::Key(_)),
        }
    }
}

/// A control in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Control {
    pub action: Action,
    pub scope: &'static str,
    pub value: String,
    /// Who asked (as they named themselves to the CLI or the console).
    pub actor: String,
    /// When, RFC 3339.
    pub at: String,
    pub reason: Option<String>,
}

impl Control {
    /// `action target by actor at time (reason)`, for logs and error messages.
    pub fn describe(&self) -> String {
        let reason = self
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        format!(
            "{} {}:{} by {} at {}{reason}",
            self.action.as_str(),
            self.scope,
            self.value,
            self.actor,
            self.at
        )
    }
}

/// What Redis keeps of a control (the field names the action and target).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    pub actor: String,
    pub at: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The Redis hash field of `action` on `target`: `pause:kind:agent.status`.
fn field(action: Action, target: &Target) -> String {
    format!("{}:{}", action.as_str(), target)
}

/// The control a stored field and value describe; `None` for a field this version does not know
/// (a newer worker's control), which is left alone.
fn parse_field(field: &str, stored: &str) -> Option<(Target, Control)> {
    let (action, rest) = field.split_once(':')?;
    let (scope, value) = rest.split_once(':')?;
    let action = match action {
        "pause" => Action::Pause,
        "cancel" => Action::Cancel,
        _ => return None,
    };
    let target = Target::parse(scope, value).ok()?;
    let stored: Stored = serde_json::from_str(stored).ok()?;
    Some((
        target.clone(),
        Control {
            action,
            scope: target.scope(),
            value: target.value(),
            actor: stored.actor,
            at: stored.at,
            reason: stored.reason,
        },
    ))
}

/// What a job is, as the controls see it.
#[derive(Debug, Clone, Copy)]
pub struct JobTags<'a> {
    pub kind: Kind,
    pub lane: Lane,
    pub job_id: Uuid,
    pub idempotency_key: &'a str,
    /// The batch the job belongs to: its own id for a `batch`, the `x-batch-id` of a child.
    pub batch: Option<Uuid>,
    pub correlation_id: Option<&'a str>,
}

impl<'a> JobTags<'a> {
    /// `job`'s tags, as it runs in `lane`; `batch` is the `x-batch-id` of a batch child.
    pub fn of(job: &'a Job, lane: Lane, batch: Option<Uuid>) -> Self {
        Self {
            kind: job.kind,
            lane,
            job_id: job.job_id,
            idempotency_key: &job.idempotency_key,
            // A batch is its own batch: pausing or cancelling it holds its fan-out too.
            batch: batch.or((job.kind == Kind::Batch).then_some(job.job_id)),
            correlation_id: job.correlation_id.as_deref(),
        }
    }

    /// The targets that would pause this job, lane first.
    fn pause_targets(&self) -> impl Iterator<Item = Target> + '_ {
        [
            Some(Target::Lane(self.lane)),
            Some(Target::Kind(self.kind)),
            self.batch.map(Target::Batch),
            self.correlation_id.map(|c| Target::Correlation(c.to_string())),
        ]
        .into_iter()
        .flatten()
    }

    fn cancel_targets(&self) -> impl Iterator<Item = Target> + '_ {
        [
            Some(Target::Job(self.job_id)),
            Some(Target::Key(self.idempotency_key.to_string())),
            self.batch.map(Target::Batch),
        ]
        .into_iter()
        .flatten()
    }
}

/// The controls in force at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub epoch: u64,
    controls: HashMap<(Action, Target), Control>,
}

impl Snapshot {
    fn new(epoch: u64, controls: impl IntoIterator<Item = (Target, Control)>) -> Self {
        Self {
            epoch,
            controls: controls
                .into_iter()
                .map(|(target, control)| ((control.action, target), control))
                .collect(),
        }
    }

    /// The pause holding `job` back, if any.
    pub fn pausing(&self, job: &JobTags<'_>) -> Option<&Control> {
        job.pause_targets()
            .find_map(|target| self.controls.get(&(Action::Pause, target)))
    }

    /// The cancel ending `job`, if any.
    pub fn cancelling(&self, job: &JobTags<'_>) -> Option<&Control> {
        job.cancel_targets()
            .find_map(|target| self.controls.get(&(Action::Cancel, target)))
    }

    pub fn lane_paused(&self, lane: Lane) -> Option<&Control> {
        self.controls.get(&(Action::Pause, Target::Lane(lane)))
    }

    pub fn is_empty(&self) -> bool {
        self.controls.is_empty()
    }

    /// Whether parked jobs may move since `earlier`: a pause lifted, or a cancel added (a
    /// cancelled job goes back to end as `cancelled`).
    pub fn frees_parked(&self, earlier: &Snapshot) -> bool {
        let lifted = earlier
            .controls
            .keys()
            .any(|key| key.0 == Action::Pause && !self.controls.contains_key(key));
        let cancelled = self
            .controls
            .keys()
            .any(|key| key.0 == Action::Cancel && !earlier.controls.contains_key(key));
        lifted || cancelled
    }

    /// Every control, pauses first, each group oldest first.
    pub fn list(&self) -> Vec<Control> {
        let mut all: Vec<Control> = self.controls.values().cloned().collect();
        all.sort_by(|a, b| {
            (a.action.as_str() != "pause", &a.at, a.scope, &a.value).cmp(&(
                b.action.as_str() != "pause",
                &b.at,
                b.scope,
                &b.value,
            ))
        });
        all
    }
}

/// The controls in force, read from Redis. A field this version does not know (a newer
/// worker's control) is left out, with a warning.
///
/// # Errors
/// When Redis cannot be read.
pub async fn read(store: &Store) -> Result<Snapshot, StoreError> {
    let (epoch, fields) = store.control_fields().await?;
    let controls = fields.iter().filter_map(|(field, value)| {
        let parsed = parse_field(field, value);
        if parsed.is_none() {
            tracing::warn!(field, "An operator control this worker does not know; ignored.");
        }
        parsed
    });
    Ok(Snapshot::new(epoch, controls))
}

/// A worker's view of the controls, kept current by [`Controls::watch`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Controls {
    current: watch::Receiver<Arc<Snapshot>>,
}

impl Controls {
    /// Reads the controls, then follows them: the epoch every [`WATCH_INTERVAL`], the whole set
    /// when it moved, until `shutdown`. While Redis does not answer the last snapshot holds.
    ///
    /// # Errors
    /// When the first read fails: a worker must not start without knowing what is paused.
    pub async fn watch(store: Store, shutdown: CancellationToken) -> Result<Self, StoreError> {
        let first = read(&store).await?;
        let (sender, current) = watch::channel(Arc::new(first));
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                }
                let known = sender.borrow().epoch;
                let fresh = match store.controls_epoch().await {
                    Ok(epoch) if epoch == known => continue,
                    Ok(_) => read(&store).await,
                    Err(err) => Err(err),
                };
                match fresh {
                    Ok(snapshot) => {
                        warned = false;
                        tracing::info!(
                            epoch = snapshot.epoch,
                            controls = snapshot.controls.len(),
                            "Operator controls changed."
                        );
                        sender.send_replace(Arc::new(snapshot));
                    }
                    Err(err) if !warned => {
                        warned = true;
                        tracing::warn!(error.message = %err, "Could not read the operator controls; the last ones read still hold.");
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(Self { current })
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.current.borrow().clone()
    }

    /// Resolves when the controls next change (never, once the watcher stopped).
    pub async fn changed(&mut self) {
        if self.current.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once `job` is paused or cancelled (at once when it already is), with that
    /// control; a cancel wins over a pause.
    pub async fn stopped(&self, job: &JobTags<'_>) -> Control {
        let mut current = self.current.clone();
        loop {
            {
                let snapshot = current.borrow_and_update();
                if let Some(control) = snapshot.cancelling(job).or_else(|| snapshot.pausing(job)) {
                    return control.clone();
                }
            }
            if current.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A control change, as the CLI and the admin API ask for it.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: ChangeKind,
    pub target: Target,
    pub actor: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Pause,
    Resume,
    Cancel,
}

impl ChangeKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "cancel" => Some(Self::Cancel),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control: {0}")]
    Invalid(String),
    #[error("nothing to resume: {0} is not paused")]
    NotPaused(Target),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the control was changed, but its audit event was not published: {0}")]
    Broker(#[from] BrokerError),
}

impl ControlError {
    /// Whether the request was at fault (400) rather than the worker's infrastructure (503).
    pub fn is_invalid(&self) -> bool {
        matches!(self, Self::Invalid(_) | Self::NotPaused(_))
    }
}

/// Makes a control change and publishes its audit event; returns the control as it now stands
/// (for `resume`, the pause it lifted).
///
/// # Errors
/// [`ControlError::Invalid`] for an action the target does not take (pause a job, cancel a
/// kind), an empty or over-long actor or reason; [`ControlError::NotPaused`] for a resume of
/// nothing; Redis and broker failures.
pub async fn change(
    store: &Store,
    publisher: &Publisher,
    topology: &Topology,
    change: Change,
) -> Result<Control, ControlError> {
    let actor = change.actor.trim();
    if actor.is_empty() || actor.len() > crate::bounded::VALUE_MAX {
        return Err(ControlError::Invalid(
            "actor: 1 to 256 bytes naming who asks".into(),
        ));
    }
    let reason = change.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.len() > 1024) {
        return Err(ControlError::Invalid("reason: at most 1024 bytes".into()));
    }
    let action = match change.kind {
        ChangeKind::Pause | ChangeKind::Resume => Action::Pause,
        ChangeKind::Cancel => Action::Cancel,
    };
    if !action.allows(&change.target) {
        return Err(ControlError::Invalid(format!(
            "{} does not apply to {} (pause and resume: kind, lane, batch, correlation; cancel: batch, job, key)",
            change.kind.as_str(),
            change.target.scope()
        )));
    }
    // To the millisecond, like the events' times.
    let now = OffsetDateTime::now_utc();
    let at = events::rfc3339(now.replace_millisecond(now.millisecond()).unwrap_or(now));
    let stored = Stored {
        actor: actor.to_string(),
        at: at.clone(),
        reason: reason.map(str::to_string),
    };
    let field = field(action, &change.target);
    let control = if change.kind == ChangeKind::Resume {
        let lifted = store.remove_control(&field).await?;
        let Some((_, lifted)) = lifted.and_then(|json| parse_field(&field, &json)) else {
            return Err(ControlError::NotPaused(change.target));
        };
        lifted
    } else {
        store
            .set_control(
                &field,
                &serde_json::to_string(&stored).expect("controls serialize"),
            )
            .await?;
        Control {
            action,
            scope: change.target.scope(),
            value: change.target.value(),
            actor: stored.actor.clone(),
            at: stored.at.clone(),
            reason: stored.reason.clone(),
        }
    };
    tracing::info!(change = change.kind.as_str(), target = %change.target, actor, "Operator control changed.");
    publish_event(store, topology, publisher, &change, &stored).await?;
    Ok(control)
}

/// The audit event of a control change: entity `control:<target>`, chained like any entity.
async fn publish_event(
    store: &Store,
    topology: &Topology,
    publisher: &Publisher,
    change: &Change,
    stored: &Stored,
) -> Result<(), ControlError> {
    let entity = format!("control:{}", change.target);
    let job_id = Uuid::new_v4();
    let mut event = AuditEvent {
        actor: Some(stored.actor.clone()),
        new_state: Some(json!({
            "action": change.kind.as_str(),
            "scope": change.target.scope(),
            "value": change.target.value(),
            "reason": stored.reason,
        })),
        attempts: 0,
        ..AuditEvent::new(
            job_id,
            CONTROL_KIND,
            &job_id.to_string(),
            entity.clone(),
            Outcome::Applied,
        )
    };
    let owner = job_id.to_string();
    let state = store.lock_entity(&entity, &owner).await?;
    record::link(&mut event, &state.head);
    let mut messages = events::outbound(topology, &event);
    if let Err(err) = store.log_append(&mut event, &mut messages).await {
        let _ = store.release_entity(&entity, &owner).await;
        return Err(err.into());
    }
    // Published before the head moves: an event that never went out leaves no gap in the chain.
    if let Err(err) = publisher.publish_events(&messages).await {
        let _ = store.release_entity(&entity, &owner).await;
        return Err(err.into());
    }
    let head = EntityHead {
        version: event.entity_version,
        checksum: event.checksum.clone().unwrap_or_default(),
    };
    store.advance_entity(&entity, &owner, &head).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(actor: &str) -> String {
        serde_json::to_string(&Stored {
            actor: actor.into(),
            at: "2026-12-02T08:00:00Z".into(),
            reason: None,
        })
        .unwrap()
    }

    fn snapshot(fields: &[&str]) -> Snapshot {
        Snapshot::new(
            1,
            fields.iter().map(|f| parse_field(f, &stored("alice")).unwrap()),
        )
    }

    fn tags<'a>(kind: Kind, lane: Lane, batch: Option<Uuid>, correlation: Option<&'a str>) -> JobTags<'a> {
        JobTags {
            kind,
            lane,
            job_id: Uuid::from_u128(7),
            idempotency_key: "key-7",
            batch,
            correlation_id: correlation,
        }
    }

    #[test]
    fn targets_parse_their_scopes_and_refuse_the_rest() {
        assert_eq!(
            Target::parse("kind", "agent.status").unwrap(),
            Target::Kind(Kind::AgentStatus)
        );
        assert_eq!(Target::parse("lane", "batch").unwrap(), Target::Lane(Lane::Batch));
        let id = Uuid::new_v4();
        assert_eq!(
            Target::parse("batch", &id.to_string()).unwrap(),
            Target::Batch(id)
        );
        for (scope, value) in [
            ("kind", "agent.sleep"),
            ("lane", "fast"),
            ("batch", "not-a-uuid"),
            ("job", ""),
            ("correlation", ""),
            ("tenant", "x"),
        ] {
            assert!(
                matches!(Target::parse(scope, value), Err(ControlError::Invalid(_))),
                "{scope} {value}"
            );
        }
        let long = "k".repeat(crate::bounded::VALUE_MAX + 1);
        assert!(Target::parse("key", &long).is_err());
    }

    #[test]
    fn a_pause_takes_what_work_is_and_a_cancel_takes_particular_jobs() {
        let job = Target::Job(Uuid::new_v4());
        let kind = Target::Kind(Kind::FlowDeploy);
        assert!(!Action::Pause.allows(&job) && Action::Cancel.allows(&job));
        assert!(Action::Pause.allows(&kind) && !Action::Cancel.allows(&kind));
        let batch = Target::Batch(Uuid::new_v4());
        assert!(Action::Pause.allows(&batch) && Action::Cancel.allows(&batch));
    }

    #[test]
    fn a_job_is_paused_by_its_lane_kind_batch_or_correlation_only() {
        let batch = Uuid::new_v4();
        let paused = snapshot(&[
            "pause:kind:flow.deploy",
            &format!("pause:batch:{batch}"),
            "pause:correlation:run-7",
            "pause:lane:single",
        ]);
        assert!(paused
            .pausing(&tags(Kind::FlowDeploy, Lane::Batch, None, None))
            .is_some());
        assert!(paused
            .pausing(&tags(Kind::AgentStatus, Lane::Batch, Some(batch), None))
            .is_some());
        assert!(paused
            .pausing(&tags(Kind::AgentStatus, Lane::Batch, None, Some("run-7")))
            .is_some());
        assert!(paused
            .pausing(&tags(Kind::AgentStatus, Lane::Single, None, None))
            .is_some());
        assert!(paused
            .pausing(&tags(
                Kind::AgentStatus,
                Lane::Batch,
                Some(Uuid::new_v4()),
                Some("run-8")
            ))
            .is_none());
        assert!(paused
            .cancelling(&tags(Kind::FlowDeploy, Lane::Batch, Some(batch), None))
            .is_none());
    }

    #[test]
    fn a_job_is_cancelled_by_its_id_key_or_batch() {
        let batch = Uuid::new_v4();
        let cancelled = snapshot(&[&format!("cancel:batch:{batch}")]);
        let child = tags(Kind::AgentStatus, Lane::Batch, Some(batch), None);
        assert_eq!(cancelled.cancelling(&child).unwrap().actor, "alice");
        assert!(cancelled.pausing(&child).is_none());
        let by_key = snapshot(&["cancel:key:key-7"]);
        assert!(by_key
            .cancelling(&tags(Kind::AgentStatus, Lane::Single, None, None))
            .is_some());
        let by_id = snapshot(&[&format!("cancel:job:{}", Uuid::from_u128(7))]);
        assert!(by_id
            .cancelling(&tags(Kind::AgentStatus, Lane::Single, None, None))
            .is_some());
    }

    #[test]
    fn parked_jobs_move_when_a_pause_is_lifted_or_a_cancel_added() {
        let before = snapshot(&["pause:kind:flow.deploy", "cancel:key:k"]);
        assert!(
            !snapshot(&["pause:kind:flow.deploy"]).frees_parked(&before),
            "a cancel went"
        );
        let paused_more = snapshot(&["pause:kind:flow.deploy", "cancel:key:k", "pause:lane:batch"]);
        assert!(!paused_more.frees_parked(&before));
        assert!(
            snapshot(&["cancel:key:k"]).frees_parked(&before),
            "a pause was lifted"
        );
        let cancelled_more = snapshot(&["pause:kind:flow.deploy", "cancel:key:k", "cancel:key:j"]);
        assert!(cancelled_more.frees_parked(&before));
    }

    #[test]
    fn fields_of_a_newer_version_are_left_alone() {
        assert!(parse_field("drain:kind:agent.status", &stored("a")).is_none());
        assert!(parse_field("pause:tenant:x", &stored("a")).is_none());
        assert!(parse_field("pause:kind:agent.status", "not json").is_none());
        let (target, control) = parse_field("pause:kind:agent.status", &stored("a")).unwrap();
        assert_eq!(field(Action::Pause, &target), "pause:kind:agent.status");
        assert_eq!(
            control.describe(),
            "pause kind:agent.status by a at 2026-12-02T08:00:00Z"
        );
    }
}
