//! `flow.deploy`: deploy an IVR flow under Architect's lock, publish it, roll back on failure.
//!
//! Lifecycle (docs/architecture.md, section 4.10): read the flow (`expected_version` must match its saved
//! version); read the published version's configuration: when it is the very configuration the
//! deploy would save (same canonical hash), nothing is written and the job is `applied` with
//! `unchanged: true`; someone else's lock is waited for or is a `conflict` (`on_locked`), or is
//! broken with `force_unlock` for the actors `FLOW_FORCE_UNLOCK_ACTORS` lists; checkout; save
//! the (optimised) configuration as a new version; checkin and wait for the operation; publish
//! and wait, then confirm `publishedVersion` really moved to the new version and that the
//! published configuration reads back as the one saved. Whatever happens, the flow is not left
//! locked by this worker. After a failure once a new version is checked in, with
//! `rollback_on_fail`, the previously published configuration is saved again as a new version,
//! checked in and published: `rolled_back`. An applied deploy's event lists what uses the flow
//! (dependency tracking's consumers), so its reader sees the blast radius.
//!
//! The checks a dry run also needs (what would be saved, is it unchanged, who holds the lock,
//! who consumes the flow) are free functions over a [`LaneClient`], apart from [`Deploy`].
//!
//! Every action that may have been applied without an answer (5xx, timeout, dropped
//! connection) is settled by reading the flow before it is sent again, so a retry never
//! creates a second version or a second operation.
//!
//! Genesys reports an asynchronous operation in more than one way, all within its models: the
//! action's own answer may already be the complete `Operation`; or it is incomplete and the
//! flow's `currentOperation` shows its progress; or the flow never shows it (or keeps showing an
//! older one) and only its versions move. The deploy decides on whichever evidence comes first:
//! a complete operation with this id, or `checkedInVersion`/`publishedVersion` at the version
//! it is waiting for. The timeout is for a Genesys that never finishes.
//!
//! With a pool of OAuth clients, Architect's lock belongs to the client that took it: every call
//! of a deploy goes through one client, pinned from the job's entity (`flow:<id>`, or
//! `flow:new:<name>` for a create; see [`LaneClient::pinned`]), so a retried or taken-over
//! deploy, on any replica, calls as the same client; a flow found locked by another client of
//! the pool (the pool changed meanwhile, or a deploy that named the flow otherwise was cut
//! short) is deployed as that client.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{Context, Verdict};
use crate::events::{ErrorDetails, EventError, Outcome};
use crate::flow::{configuration_hash, optimize, Optimization};
use crate::genesys::architect::{
    dependency_type, Consumer, ConsumingResources, Flow, FlowListing, FlowVersion, LockHolder, Operation,
};
use crate::genesys::{ErrorClass, GenesysError, LaneClient};
use crate::job::{FlowDeploy, Job, OnLocked};
use crate::retry::{Attempted, RetryPolicy};

/// How the lifecycle waits for Architect's asynchronous operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSettings {
    /// Between two reads of the flow while an operation runs (each read is a Genesys call).
    pub poll: Duration,
    /// How long a checkin or publish may take before the deploy gives up.
    pub timeout: Duration,
    /// How long to wait for someone else's lock (a person in Architect, another client) to be
    /// released before the deploy is a `conflict`; zero: at once.
    pub lock_wait: Duration,
    /// `FLOW_FORCE_UNLOCK_ACTORS`: the job actors allowed to ask for `force_unlock`.
    pub force_unlock_actors: Vec<String>,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            timeout: Duration::from_secs(300),
            lock_wait: Duration::ZERO,
            force_unlock_actors: Vec::new(),
        }
    }
}

/// Why the lifecycle stopped.
#[derive(Debug)]
enum Stop {
    Genesys(GenesysError),
    Refused {
        outcome: Outcome,
        code: &'static str,
        message: String,
    },
    /// An asynchronous operation failed, timed out, or did not have its effect.
    Operation {
        code: String,
        message: String,
        /// What Genesys said about a `FAILURE` operation.
        details: Option<ErrorDetails>,
    },
}

impl Stop {
    fn describe(&self) -> (String, String) {
        match self {
            Stop::Genesys(err) => (err.code(), err.to_string()),
            Stop::Refused { code, message, .. } => (code.to_string(), message.clone()),
            Stop::Operation { code, message, .. } => (code.clone(), message.clone()),
        }
    }

    fn details(&self) -> Option<ErrorDetails> {
        match self {
            Stop::Operation { details, .. } => details.clone(),
            Stop::Genesys(_) | Stop::Refused { .. } => None,
        }
    }

    /// An operation's failure without Genesys' details (the worker's own finding).
    fn operation(code: &str, message: String) -> Self {
        Stop::Operation {
            code: code.into(),
            message,
            details: None,
        }
    }
}

impl From<GenesysError> for Stop {
    fn from(err: GenesysError) -> Self {
        Stop::Genesys(err)
    }
}

struct Deploy<'a> {
    ctx: Context<'a>,
    /// Every call of the deploy, as one OAuth client of the pool.
    genesys: LaneClient<'a>,
    job: &'a Job,
    payload: &'a FlowDeploy,
    entity: String,
    flow_id: String,
    attempts: u32,
    /// This job created the flow: a 404 on reading it is Genesys' consistency lag.
    created: bool,
    /// What the deploy learned on its way for the audit event's `new_state`: `forced_unlock`,
    /// `consumers`.
    notes: Map<String, Value>,
}

/// Where an applied deploy left the flow.
struct Landed<'f> {
    flow: &'f Flow,
    /// Of the configuration the flow now publishes (with `publish: false`, has checked in).
    configuration_hash: &'f str,
    /// Nothing was written: the flow already published this configuration.
    unchanged: bool,
}

/// What a deploy of `payload` saves as the new version: the flow after optimisation (unless
/// `optimize: false`), exactly the body `POST /api/v2/flows/{id}/versions` is sent, and what
/// optimisation changed.
pub(crate) fn deploy_configuration(payload: &FlowDeploy) -> (Value, Optimization) {
    let mut definition = payload.flow.clone();
    let optimization = if payload.optimize {
        optimize(&mut definition)
    } else {
        Optimization::default()
    };
    let configuration = serde_json::to_value(&definition).expect("flow definitions serialize");
    (configuration, optimization)
}

/// How long a deploy of `payload` waits for someone else's lock before it is a `conflict`:
/// not at all with `on_locked: conflict`, `lock_wait_secs` with `on_locked: wait`, else the
/// worker's `FLOW_LOCK_WAIT_SECS`.
pub(crate) fn lock_wait(payload: &FlowDeploy, settings: &FlowSettings) -> Duration {
    match (payload.on_locked, payload.lock_wait_secs) {
        (Some(OnLocked::Conflict), _) => Duration::ZERO,
        (Some(OnLocked::Wait), Some(secs)) => Duration::from_secs(secs),
        // The decoder refuses `wait` without seconds; the worker's setting is the fallback.
        (Some(OnLocked::Wait) | None, _) => settings.lock_wait,
    }
}

/// Whether a job of `actor` may ask for `force_unlock`: `FLOW_FORCE_UNLOCK_ACTORS` lists it.
pub(crate) fn may_force_unlock(actor: Option<&str>, settings: &FlowSettings) -> bool {
    actor.is_some_and(|actor| {
        settings
            .force_unlock_actors
            .iter()
            .any(|allowed| allowed == actor)
    })
}

/// Who holds `flow`'s lock such that a deploy through `genesys` must wait for them, break the
/// lock, or be a `conflict`: anyone but a client of the pool (whose lock a deploy takes over:
/// it calls as that client).
pub(crate) fn blocking_lock(flow: &Flow, genesys: &LaneClient<'_>) -> Option<LockHolder> {
    flow.lock_holder()
        .filter(|holder| !matches!(holder, LockHolder::Client { id, .. } if genesys.is_pool_client(id)))
}

/// A flow's published version with its configuration and that configuration's hash.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Published {
    pub(crate) version: String,
    pub(crate) configuration: Value,
    /// [`configuration_hash`] of `configuration`.
    pub(crate) hash: String,
}

/// The configuration of version `version` of flow `flow_id`.
pub(crate) async fn version_configuration(
    genesys: LaneClient<'_>,
    retry: &RetryPolicy,
    flow_id: &str,
    version: &str,
) -> Attempted<Value> {
    let path = format!("/api/v2/flows/{flow_id}/versions/{version}/configuration");
    let read = retry.run(|_| genesys.get::<Value>(&path)).await;
    Attempted {
        result: read.result.map(|reply| reply.body),
        attempts: read.attempts,
    }
}

/// What `flow` publishes; `None` when it publishes nothing yet.
pub(crate) async fn published_configuration(
    genesys: LaneClient<'_>,
    retry: &RetryPolicy,
    flow: &Flow,
) -> Attempted<Option<Published>> {
    let Some(version) = flow.published() else {
        return Attempted {
            result: Ok(None),
            attempts: 0,
        };
    };
    let read = version_configuration(genesys, retry, &flow.id, version).await;
    Attempted {
        result: read.result.map(|configuration| {
            Some(Published {
                version: version.to_string(),
                hash: configuration_hash(&configuration),
                configuration,
            })
        }),
        attempts: read.attempts,
    }
}

/// Whether deploying a configuration of hash `hash` would change nothing: the flow already
/// publishes that very configuration.
pub(crate) fn unchanged(published: Option<&Published>, hash: &str) -> bool {
    published.is_some_and(|published| published.hash == hash)
}

/// What uses a flow, as dependency tracking reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Consumers {
    /// At most [`CONSUMERS_MAX`], each name bounded.
    pub(crate) listed: Vec<Consumer>,
    /// How many more there are than listed.
    pub(crate) omitted: u64,
}

/// Most consumers an audit event lists: enough to see the blast radius, not an event of
/// megabytes for a common module every flow uses.
pub(crate) const CONSUMERS_MAX: usize = 500;

/// Every resource that uses `flow` (`GET /api/v2/architect/dependencytracking/consumingresources`,
/// page by page), up to [`CONSUMERS_MAX`].
pub(crate) async fn consumers(
    genesys: LaneClient<'_>,
    retry: &RetryPolicy,
    flow: &Flow,
) -> Attempted<Consumers> {
    const PAGE_SIZE: usize = 100;
    let object_type = dependency_type(&flow.flow_type);
    let mut found = Consumers::default();
    let mut attempts = 0;
    let mut total = None;
    for page in 1.. {
        let path = format!(
            "/api/v2/architect/dependencytracking/consumingresources?id={}&objectType={object_type}&pageSize={PAGE_SIZE}&pageNumber={page}",
            flow.id
        );
        let read = retry.run(|_| genesys.get::<ConsumingResources>(&path)).await;
        attempts = attempts.max(read.attempts);
        let listing = match read.result {
            Ok(reply) => reply.body,
            Err(err) => {
                return Attempted {
                    result: Err(err),
                    attempts,
                }
            }
        };
        total = listing.total.or(total);
        let last =
            listing.entities.len() < PAGE_SIZE || listing.page_count.is_some_and(|count| page >= count);
        found
            .listed
            .extend(listing.entities.into_iter().map(|mut consumer| {
                consumer.name = consumer
                    .name
                    .map(|name| crate::bounded::truncate(&name, crate::bounded::VALUE_MAX).into_owned());
                consumer
            }));
        if last || found.listed.len() >= CONSUMERS_MAX {
            break;
        }
    }
    found.listed.truncate(CONSUMERS_MAX);
    found.omitted = total.map_or(0, |total| total.saturating_sub(found.listed.len() as u64));
    Attempted {
        result: Ok(found),
        attempts,
    }
}

/// What ends the wait for an operation: the flow showing the version it was meant to move.
#[derive(Debug, Clone, Copy)]
enum Evidence<'v> {
    CheckedIn(&'v str),
    Published(&'v str),
}

impl Evidence<'_> {
    fn shown_by(self, flow: &Flow) -> bool {
        match self {
            Evidence::CheckedIn(version) => flow.checked_in() == Some(version),
            Evidence::Published(version) => flow.published() == Some(version),
        }
    }
}

pub async fn apply(ctx: Context<'_>, job: &Job, payload: &FlowDeploy) -> Verdict {
    let entity = job.entity();
    let mut deploy = Deploy {
        ctx,
        genesys: ctx.genesys.pinned(&entity),
        job,
        payload,
        entity,
        flow_id: String::new(),
        attempts: 1,
        created: false,
        notes: Map::new(),
    };
    deploy.run().await
}

impl Deploy<'_> {
    fn client_id(&self) -> &str {
        self.genesys.client_id()
    }

    /// A flow locked by a client of the pool other than the one the deploy is pinned to (a
    /// deploy cut short while the pool was different, or one that named the flow otherwise) is
    /// deployed as the lock's holder, which may carry on and release it.
    fn follow_lock(&mut self, flow: &Flow) {
        let holder = flow
            .locked_client
            .as_ref()
            .and_then(|holder| self.ctx.genesys.pinned_to_client(&holder.id));
        if let Some(holder) = holder {
            self.genesys = holder;
        }
    }

    async fn run(&mut self) -> Verdict {
        if let Err(stop) = self.authorize_force_unlock() {
            return self.finish(stop, None);
        }
        let found = match self.resolve().await {
            Ok(flow) => flow,
            Err(stop) => return self.finish(stop, None),
        };
        // Known from here on, also when the flow was found or created by name.
        self.flow_id = found.id.clone();
        self.entity = format!("flow:{}", found.id);
        self.follow_lock(&found);
        if let Err(stop) = self.expect_version(&found) {
            return self.finish(stop, Some(state_of(&found)));
        }
        let (configuration, optimization) = deploy_configuration(self.payload);
        let hash = configuration_hash(&configuration);

        // What is published: the same configuration needs no deploy (and no lock); else it is
        // what a rollback restores, read before anything changes.
        let mut published = None;
        if self.payload.publish {
            published = match self.published(&found).await {
                Ok(published) => published,
                Err(stop) => return self.finish(stop, Some(state_of(&found))),
            };
            if unchanged(published.as_ref(), &hash) {
                return self.unchanged(&found, optimization, &hash).await;
            }
        }
        let before = match self.take_turn(found).await {
            Ok(flow) => flow,
            Err(stop) => return self.finish(stop, None),
        };
        let previous_state = state_of(&before);
        if let Err(stop) = self.expect_version(&before) {
            return self.finish(stop, Some(previous_state));
        }
        // Someone published while the deploy waited for their lock: compare with, and restore,
        // what is published now.
        if self.payload.publish && before.published() != published.as_ref().map(|p| p.version.as_str()) {
            published = match self.published(&before).await {
                Ok(published) => published,
                Err(stop) => return self.finish(stop, Some(previous_state)),
            };
            if unchanged(published.as_ref(), &hash) {
                return self.unchanged(&before, optimization, &hash).await;
            }
        }
        let restore = published.filter(|_| self.payload.rollback_on_fail);

        let (saved, checked_in) = match self.check_in_new_version(&configuration).await {
            Ok(done) => done,
            Err(stop) => {
                self.release().await;
                return self.finish(stop, Some(previous_state));
            }
        };
        if !self.payload.publish {
            // The checkin's wait read the flow as it left it.
            return self
                .deployed(previous_state, &checked_in, optimization, &hash)
                .await;
        }
        match self.publish(&saved, &checked_in, &hash).await {
            Ok(after) => self.deployed(previous_state, &after, optimization, &hash).await,
            Err(cause) => match restore {
                Some(restore) => {
                    self.roll_back(previous_state, optimization, &restore, cause)
                        .await
                }
                None => {
                    self.release().await;
                    self.finish(cause, Some(previous_state))
                }
            },
        }
    }

    /// `force_unlock` is for the actors `FLOW_FORCE_UNLOCK_ACTORS` lists; for any other the job
    /// is `rejected` before Genesys is called at all.
    fn authorize_force_unlock(&self) -> Result<(), Stop> {
        if !self.payload.force_unlock || may_force_unlock(self.job.actor.as_deref(), self.ctx.flows) {
            return Ok(());
        }
        let who = match &self.job.actor {
            Some(actor) => format!(
                "actor {:?}",
                crate::bounded::truncate(actor, crate::bounded::VALUE_MAX)
            ),
            None => "a job without an actor".into(),
        };
        Err(Stop::Refused {
            outcome: Outcome::Rejected,
            code: "force_unlock_not_allowed",
            message: format!(
                "{who} may not force_unlock a flow (FLOW_FORCE_UNLOCK_ACTORS does not list it); nothing was changed"
            ),
        })
    }

    fn expect_version(&self, flow: &Flow) -> Result<(), Stop> {
        match &self.payload.expected_version {
            Some(expected) if flow.saved() != Some(expected.as_str()) => Err(Stop::Refused {
                outcome: Outcome::Conflict,
                code: "expected_version_mismatch",
                message: format!("expected saved version {expected:?}, found {:?}", flow.saved()),
            }),
            _ => Ok(()),
        }
    }

    async fn published(&mut self, flow: &Flow) -> Result<Option<Published>, Stop> {
        let read = published_configuration(self.genesys, self.ctx.retry, flow).await;
        self.attempts = self.attempts.max(read.attempts);
        Ok(read.result?)
    }

    /// The flow already publishes the configuration: `applied`, `unchanged`, nothing written.
    async fn unchanged(&mut self, flow: &Flow, optimization: Optimization, hash: &str) -> Verdict {
        tracing::info!(flow_id = %self.flow_id, configuration_hash = %hash, "The flow already publishes this configuration; nothing to deploy.");
        // A lock this client still holds is a cut-short attempt's: nothing needs it now.
        if flow.locked_by(self.client_id()) {
            self.release().await;
        }
        self.note_consumers(flow).await;
        let landed = Landed {
            flow,
            configuration_hash: hash,
            unchanged: true,
        };
        self.applied(Outcome::Applied, state_of(flow), landed, optimization, None)
    }

    /// The new version is published (or checked in): `applied`, with what uses the flow.
    async fn deployed(
        &mut self,
        previous_state: Value,
        after: &Flow,
        optimization: Optimization,
        hash: &str,
    ) -> Verdict {
        self.note_consumers(after).await;
        let landed = Landed {
            flow: after,
            configuration_hash: hash,
            unchanged: false,
        };
        self.applied(Outcome::Applied, previous_state, landed, optimization, None)
    }

    /// Notes what uses the flow for the audit event. The deploy is done whatever this read
    /// answers: a failure is a warning, and `consumers: null` with why.
    async fn note_consumers(&mut self, flow: &Flow) {
        let read = consumers(self.genesys, self.ctx.retry, flow).await;
        self.attempts = self.attempts.max(read.attempts);
        match read.result {
            Ok(found) => {
                self.notes.insert("consumers".into(), json!(found.listed));
                if found.omitted > 0 {
                    self.notes
                        .insert("consumers_omitted".into(), json!(found.omitted));
                }
            }
            Err(err) => {
                tracing::warn!(flow_id = %self.flow_id, error.message = %err, "Could not read what uses the flow; its audit event says so.");
                self.notes.insert("consumers".into(), Value::Null);
                let why = format!("dependency tracking could not be read: {err}");
                self.notes
                    .insert("consumers_error".into(), json!(crate::bounded::message(why)));
            }
        }
    }

    /// Gets past someone else's lock: breaks it when the job asks `force_unlock` (its actor was
    /// authorised), else waits for it as `on_locked` says.
    async fn take_turn(&mut self, flow: Flow) -> Result<Flow, Stop> {
        if !self.payload.force_unlock {
            return self.wait_for_unlock(flow).await;
        }
        let Some(holder) = blocking_lock(&flow, &self.ctx.genesys) else {
            self.follow_lock(&flow);
            return Ok(flow);
        };
        tracing::warn!(flow_id = %self.flow_id, %holder, actor = ?self.job.actor, "Breaking someone else's lock on the flow, as the job asks (force_unlock).");
        let pool = self.ctx.genesys;
        self.action("unlock", |f: &Flow| blocking_lock(f, &pool).is_none(), no_lag)
            .await?;
        self.notes
            .insert("forced_unlock".into(), json!({"holder": holder}));
        self.read().await
    }

    /// Checkout, save `configuration` as a new version, checkin and wait: the new version's id
    /// and the flow as the checkin left it.
    async fn check_in_new_version(&mut self, configuration: &Value) -> Result<(String, Flow), Stop> {
        let client = self.client_id().to_string();
        let checkout = self
            .action("checkout", |flow: &Flow| flow.locked_by(&client), no_lag)
            .await;
        if let Err(err) = checkout {
            return Err(match err {
                // Someone took the lock since the flow was read: name them if the flow says.
                Stop::Genesys(GenesysError::Api { status: 409, .. }) => {
                    let holder = match self.read().await {
                        Ok(flow) => flow.locked_by_other(&client).map(|h| h.to_string()),
                        Err(_) => None,
                    };
                    Stop::Refused {
                        outcome: Outcome::Conflict,
                        code: "flow_locked",
                        message: format!(
                            "checkout refused: the flow is locked by {}",
                            holder.as_deref().unwrap_or("someone else")
                        ),
                    }
                }
                other => other,
            });
        }
        let current = self.read().await?;
        let saved = self.save_version(&current, configuration).await?;
        let checked_in = Evidence::CheckedIn(&saved);
        // A checkin releases the lock: a flow no longer locked by this client took it.
        let took_effect = |flow: &Flow| {
            checked_in.shown_by(flow)
                || !flow.locked_by(&client)
                || is_new_operation(flow, "CHECKIN", &current)
        };
        let operation = self.action("checkin", took_effect, no_lag).await?;
        let done = self
            .wait("CHECKIN", operation.as_ref(), checked_in, &current)
            .await?;
        if done.checked_in() != Some(saved.as_str()) {
            return Err(Stop::operation(
                "checkin_not_effective",
                format!(
                    "checkin completed but checkedInVersion is {:?}, not {saved:?}",
                    done.checked_in()
                ),
            ));
        }
        Ok((saved, done))
    }

    /// Publishes the checked-in version, confirms `publishedVersion` moved to `version`, and
    /// that the published configuration reads back as the one saved (hash `saved_hash`).
    async fn publish(&mut self, version: &str, before: &Flow, saved_hash: &str) -> Result<Flow, Stop> {
        let published = Evidence::Published(version);
        let took_effect = |flow: &Flow| published.shown_by(flow) || is_new_operation(flow, "PUBLISH", before);
        // Right after a checkin Genesys may still answer 409 "version must match"; after a
        // publish whose answer was lost and that the flow does not show, "in progress".
        let operation = self
            .action("publish", took_effect, |err| {
                err.is_version_mismatch() || err.is_operation_in_progress()
            })
            .await?;
        let done = self
            .wait("PUBLISH", operation.as_ref(), published, before)
            .await?;
        if done.published() != Some(version) {
            return Err(Stop::operation(
                "publish_not_effective",
                format!(
                    "publish reported success but publishedVersion is {:?}, not {version:?}",
                    done.published()
                ),
            ));
        }
        self.verify_published(version, saved_hash).await?;
        Ok(done)
    }

    /// A publish is trusted once what Genesys publishes reads back as what was saved: the
    /// version moving is not enough (a publish has been seen to report success and change
    /// nothing; this catches one that changed something else).
    async fn verify_published(&mut self, version: &str, saved_hash: &str) -> Result<(), Stop> {
        let read = version_configuration(self.genesys, self.ctx.retry, &self.flow_id, version).await;
        self.attempts = self.attempts.max(read.attempts);
        let published_hash = configuration_hash(&read.result?);
        if published_hash != saved_hash {
            return Err(Stop::operation(
                "publish_verification_failed",
                format!(
                    "version {version} was published, but its configuration reads back with hash {published_hash}, not {saved_hash} (the configuration saved)"
                ),
            ));
        }
        Ok(())
    }

    /// Restores the configuration `restore` published as a new published version.
    async fn roll_back(
        &mut self,
        previous_state: Value,
        optimization: Optimization,
        restore: &Published,
        cause: Stop,
    ) -> Verdict {
        let (code, message) = cause.describe();
        tracing::warn!(flow_id = %self.flow_id, cause = %message, "Deploy failed after a partial change; rolling back.");
        let (restored, checked_in) = match self.check_in_new_version(&restore.configuration).await {
            Ok(done) => done,
            Err(stop) => return self.rollback_failed(&cause, stop, previous_state).await,
        };
        match self.publish(&restored, &checked_in, &restore.hash).await {
            Ok(after) => {
                let note = format!(
                    "{message}; restored version {}'s configuration as version {restored}",
                    restore.version
                );
                let error = self.event_error(code, note, cause.details());
                let landed = Landed {
                    flow: &after,
                    configuration_hash: &restore.hash,
                    unchanged: false,
                };
                self.applied(
                    Outcome::RolledBack,
                    previous_state,
                    landed,
                    optimization,
                    Some(error),
                )
            }
            Err(stop) => self.rollback_failed(&cause, stop, previous_state).await,
        }
    }

    /// The rollback failed too: `failed`, naming both causes; Genesys' details are the
    /// rollback's failure's when it has some, else the first cause's.
    async fn rollback_failed(&mut self, cause: &Stop, stop: Stop, previous_state: Value) -> Verdict {
        self.release().await;
        let (_, cause_message) = cause.describe();
        let (code, message) = stop.describe();
        let stop = Stop::Operation {
            code,
            message: format!("{cause_message}; the rollback failed too: {message}"),
            details: stop.details().or_else(|| cause.details()),
        };
        self.finish(stop, Some(previous_state))
    }

    /// Leaves the flow unlocked by this worker: revert (discarding unsaved work), else unlock.
    async fn release(&mut self) {
        let client = self.client_id().to_string();
        let Ok(flow) = self.read().await else { return };
        if !flow.locked_by(&client) {
            return;
        }
        if self
            .action("revert", |f: &Flow| !f.locked_by(&client), no_lag)
            .await
            .is_err()
        {
            let _ = self
                .action("unlock", |f: &Flow| !f.locked_by(&client), no_lag)
                .await;
        }
    }

    async fn resolve(&mut self) -> Result<Flow, Stop> {
        if let Some(id) = self.payload.flow_id {
            self.flow_id = id.to_string();
            return self.read().await;
        }
        let create = self
            .payload
            .create
            .as_ref()
            .expect("decode requires flow_id or create");
        let flow_type = create.flow_type.to_ascii_uppercase();
        if let Some(existing) = self.find(&create.name, &flow_type).await? {
            return Ok(existing);
        }
        let body = json!({"name": create.name, "type": flow_type});
        let created = self.genesys.post::<Flow>("/api/v2/flows", &body).await;
        self.created = true;
        match created {
            Ok(reply) => Ok(reply.body),
            // Lost answer or a racing creator: the flow may exist now, though a listing may not
            // show it at once.
            Err(err) if err.may_have_applied() || err.class() == ErrorClass::Conflict => {
                let deadline = tokio::time::Instant::now() + self.ctx.retry.consistency_window;
                let mut round = 0;
                loop {
                    if let Some(found) = self.find(&create.name, &flow_type).await? {
                        return Ok(found);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Stop::Genesys(err));
                    }
                    round += 1;
                    tokio::time::sleep(self.ctx.retry.backoff_ceiling(round)).await;
                }
            }
            Err(err) => Err(Stop::Genesys(err)),
        }
    }

    /// Waits, up to [`lock_wait`], for a lock held by someone else to be released; a lock still
    /// held then is a `conflict` naming its holder, and it is left alone.
    async fn wait_for_unlock(&mut self, mut flow: Flow) -> Result<Flow, Stop> {
        let patience = lock_wait(self.payload, self.ctx.flows);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let Some(holder) = blocking_lock(&flow, &self.ctx.genesys) else {
                // Free, or held by a client of the pool: the deploy calls as that client.
                self.follow_lock(&flow);
                return Ok(flow);
            };
            if tokio::time::Instant::now() >= deadline {
                let waited = if patience.is_zero() {
                    String::new()
                } else {
                    format!(" after waiting {patience:?}")
                };
                return Err(Stop::Refused {
                    outcome: Outcome::Conflict,
                    code: "flow_locked",
                    message: format!("flow is locked by {holder}{waited}; the lock is left alone"),
                });
            }
            tracing::info!(flow_id = %self.flow_id, %holder, "Flow is locked by someone else; waiting for them to release it.");
            tokio::time::sleep(self.ctx.flows.poll).await;
            flow = self.read().await?;
        }
    }

    async fn find(&mut self, name: &str, flow_type: &str) -> Result<Option<Flow>, Stop> {
        let name_query: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let path = format!("/api/v2/flows?name={name_query}&type={flow_type}");
        let listing = self
            .ctx
            .retry
            .run(|_| self.genesys.get::<FlowListing>(&path))
            .await;
        self.attempts = self.attempts.max(listing.attempts);
        let found = listing
            .result?
            .body
            .entities
            .into_iter()
            .find(|f| f.name.eq_ignore_ascii_case(name));
        Ok(found)
    }

    async fn read(&mut self) -> Result<Flow, Stop> {
        let path = format!("/api/v2/flows/{}", self.flow_id);
        let created = self.created;
        let read = self
            .ctx
            .retry
            .run_through_lag(
                |err| created && err.status() == Some(404),
                |_| self.genesys.get::<Flow>(&path),
            )
            .await;
        self.attempts = self.attempts.max(read.attempts);
        Ok(read.result?.body)
    }

    /// Saves a version; after an ambiguous failure, a saved version newer than `current`'s is
    /// the one this worker saved (it holds the lock).
    async fn save_version(&mut self, current: &Flow, configuration: &Value) -> Result<String, Stop> {
        let path = format!("/api/v2/flows/{}/versions", self.flow_id);
        let max = self.ctx.retry.max_attempts;
        for attempt in 1..=max {
            self.attempts = self.attempts.max(attempt);
            match self.genesys.post::<FlowVersion>(&path, configuration).await {
                Ok(reply) => return Ok(reply.body.id),
                Err(err) => {
                    if err.may_have_applied() {
                        let now = self.read().await?;
                        if now.saved() != current.saved() {
                            return Ok(now.saved().unwrap_or_default().to_string());
                        }
                    }
                    if attempt == max || !RetryPolicy::retries(err.class()) {
                        return Err(Stop::Genesys(err));
                    }
                    tokio::time::sleep(self.ctx.retry.backoff_ceiling(attempt)).await;
                }
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// `POST /api/v2/flows/actions/{name}?flow=<id>`; after an ambiguous failure, `done(flow)`
    /// tells whether it took effect. An error that `lagging` calls Genesys' consistency lag is
    /// retried within the consistency window without spending an attempt. Returns the
    /// operation when the answer carried one.
    async fn action(
        &mut self,
        name: &str,
        done: impl Fn(&Flow) -> bool,
        lagging: fn(&GenesysError) -> bool,
    ) -> Result<Option<Operation>, Stop> {
        let path = format!("/api/v2/flows/actions/{name}?flow={}", self.flow_id);
        let max = self.ctx.retry.max_attempts;
        let lag_deadline = tokio::time::Instant::now() + self.ctx.retry.consistency_window;
        let (mut attempt, mut lag_round) = (1, 0);
        loop {
            self.attempts = self.attempts.max(attempt);
            let err = match self.genesys.post::<Value>(&path, &Value::Null).await {
                Ok(reply) => return Ok(serde_json::from_value::<Operation>(reply.body).ok()),
                Err(err) => err,
            };
            if err.may_have_applied() {
                let now = self.read().await?;
                if done(&now) {
                    tracing::info!(action = name, flow_id = %self.flow_id, "Action answer lost, but it took effect; not sending it again.");
                    return Ok(None);
                }
            }
            if lagging(&err) && tokio::time::Instant::now() < lag_deadline {
                lag_round += 1;
                tracing::info!(action = name, flow_id = %self.flow_id, error.message = %err, "Genesys has not settled the previous action yet; trying again.");
                tokio::time::sleep(self.ctx.retry.backoff_ceiling(lag_round)).await;
                // An earlier attempt whose answer was lost may have been what was in progress:
                // once it shows, it is not sent again.
                if done(&self.read().await?) {
                    return Ok(None);
                }
                continue;
            }
            if attempt == max || !RetryPolicy::retries(err.class()) {
                return Err(Stop::Genesys(err));
            }
            tokio::time::sleep(self.ctx.retry.backoff_ceiling(attempt)).await;
            attempt += 1;
        }
    }

    /// Waits for the `action` operation to finish: decided by the action's own answer when it
    /// is complete, else by whichever the flow shows first, the operation (by id) complete, or
    /// the `evidence`. A success is returned as the flow read after it, for the caller to check
    /// the versions.
    async fn wait(
        &mut self,
        action: &str,
        started: Option<&Operation>,
        evidence: Evidence<'_>,
        before: &Flow,
    ) -> Result<Flow, Stop> {
        let deadline = tokio::time::Instant::now() + self.ctx.flows.timeout;
        // After a reported success the versions may take a moment to show it; they are checked
        // for that long, then the caller reports what the flow shows.
        let mut settle_deadline = None;
        if let Some(op) = started.filter(|op| op.complete) {
            operation_result(action, op)?;
            settle_deadline = Some(tokio::time::Instant::now() + self.ctx.retry.consistency_window);
        }
        loop {
            let flow = self.read().await?;
            if evidence.shown_by(&flow) {
                return Ok(flow);
            }
            // The operation by its id; when the action's answer was lost, one the flow did not
            // show before the action.
            let shown = flow.current_operation.as_ref().filter(|op| {
                op.complete
                    && match started {
                        Some(started) => op.id == started.id,
                        None => is_new_operation(&flow, action, before),
                    }
            });
            if let Some(op) = shown {
                operation_result(action, op)?;
                settle_deadline
                    .get_or_insert(tokio::time::Instant::now() + self.ctx.retry.consistency_window);
            }
            let now = tokio::time::Instant::now();
            if settle_deadline.is_some_and(|settle| now >= settle) {
                return Ok(flow);
            }
            if now >= deadline {
                return Err(Stop::operation(
                    "operation_timeout",
                    format!("{action} did not complete within {:?}", self.ctx.flows.timeout),
                ));
            }
            tokio::time::sleep(self.ctx.flows.poll).await;
        }
    }

    /// An event error naming the job and the entity, with Genesys' details if any.
    fn event_error(&self, code: String, message: String, details: Option<ErrorDetails>) -> EventError {
        EventError::new(
            code,
            format!("job {}: {}: {message}", self.job.job_id, self.entity),
        )
        .with_details(details)
    }

    fn applied(
        &self,
        outcome: Outcome,
        previous_state: Value,
        landed: Landed<'_>,
        optimization: Optimization,
        error: Option<EventError>,
    ) -> Verdict {
        let mut new_state = state_of(landed.flow);
        new_state["previous_published_version"] = previous_state["published_version"].clone();
        new_state["version_matrix"] = self.payload.version_matrix.clone().unwrap_or(Value::Null);
        new_state["optimization"] = json!(optimization);
        new_state["unchanged"] = json!(landed.unchanged);
        new_state["configuration_hash"] = json!(landed.configuration_hash);
        for (field, value) in &self.notes {
            new_state[field] = value.clone();
        }
        Verdict {
            outcome,
            previous_state: Some(previous_state),
            new_state: Some(new_state),
            genesys_status: Some(200),
            error,
            attempts: self.attempts,
            entity: Some(self.entity.clone()),
            retryable: false,
        }
    }

    /// The verdict of a deploy that stopped without its change. A lock it broke on the way is
    /// still recorded (`new_state.forced_unlock`): that was a change.
    fn finish(&self, stop: Stop, previous_state: Option<Value>) -> Verdict {
        let details = stop.details();
        let mut applied = match stop {
            Stop::Genesys(err) => Verdict::from_error(self.job.job_id, &self.entity, &err, self.attempts),
            Stop::Refused {
                outcome,
                code,
                message,
            } => Verdict::refused(
                outcome,
                code,
                format!("job {}: {}: {message}", self.job.job_id, self.entity),
            ),
            Stop::Operation { code, message, .. } => Verdict::refused(
                Outcome::Failed,
                &code,
                format!("job {}: {}: {message}", self.job.job_id, self.entity),
            ),
        };
        applied.error = applied.error.map(|error| error.with_details(details));
        applied.previous_state = previous_state;
        applied.new_state = self
            .notes
            .get("forced_unlock")
            .map(|forced| json!({"forced_unlock": forced}));
        applied.attempts = applied.attempts.max(self.attempts);
        applied.entity = Some(self.entity.clone());
        applied
    }
}

/// A complete operation's verdict: `FAILURE` is the deploy's failure, with what Genesys said.
fn operation_result(action: &str, op: &Operation) -> Result<(), Stop> {
    if op.action_status.as_deref() == Some("FAILURE") {
        return Err(Stop::Operation {
            code: op
                .error_code
                .clone()
                .unwrap_or_else(|| format!("{}_failed", action.to_lowercase())),
            message: format!("{action} failed: {}", op.failure_text()),
            details: Some(ErrorDetails {
                error_code: op.error_code.clone(),
                error_details: op.error_details.clone(),
                error_message_params: op.error_message_params.clone(),
                error_details_omitted: 0,
            }),
        });
    }
    Ok(())
}

/// Whether `flow` shows an `action` operation other than the one `before` showed.
fn is_new_operation(flow: &Flow, action: &str, before: &Flow) -> bool {
    let previous = before.current_operation.as_ref().map(|op| op.id.as_str());
    flow.current_operation
        .as_ref()
        .is_some_and(|op| op.action_name.as_deref() == Some(action) && Some(op.id.as_str()) != previous)
}

/// An action whose errors are never consistency lag.
fn no_lag(_: &GenesysError) -> bool {
    false
}

fn state_of(flow: &Flow) -> Value {
    json!({
        "flow_id": flow.id,
        "name": flow.name,
        "published_version": flow.published(),
        "checked_in_version": flow.checked_in(),
        "saved_version": flow.saved(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(extra: Value) -> FlowDeploy {
        let mut value = json!({
            "flow_id": "d888db31-c3ea-56c5-982c-2761b339ec98",
            "flow": {"name": "Main IVR", "type": "inboundcall", "start": "start", "nodes": {
                "start": {"type": "start", "transitions": [{"label": "next", "target": "menu"}]},
                "menu": {"type": "menu", "conditions": [
                    {"expression": "a", "priority": 1, "target": "end"},
                    {"expression": "b", "priority": 9, "target": "end"}],
                    "transitions": []},
                "end": {"type": "transfer"}}}
        });
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_jobs_lock_policy_overrides_the_workers_wait() {
        let settings = FlowSettings {
            lock_wait: Duration::from_secs(7),
            ..FlowSettings::default()
        };
        assert_eq!(lock_wait(&payload(json!({})), &settings), Duration::from_secs(7));
        assert_eq!(
            lock_wait(&payload(json!({"on_locked": "conflict"})), &settings),
            Duration::ZERO
        );
        assert_eq!(
            lock_wait(
                &payload(json!({"on_locked": "wait", "lock_wait_secs": 30})),
                &settings
            ),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn only_listed_actors_may_force_an_unlock() {
        let settings = FlowSettings {
            force_unlock_actors: vec!["release-manager".into()],
            ..FlowSettings::default()
        };
        assert!(may_force_unlock(Some("release-manager"), &settings));
        assert!(!may_force_unlock(Some("release-manager2"), &settings));
        assert!(!may_force_unlock(None, &settings));
        assert!(!may_force_unlock(Some("anyone"), &FlowSettings::default()));
    }

    #[test]
    fn a_deploy_is_unchanged_when_the_published_configuration_is_the_optimised_one() {
        let (configuration, optimization) = deploy_configuration(&payload(json!({})));
        assert_eq!(optimization.conditions_dropped, 1);
        let (unoptimised, _) = deploy_configuration(&payload(json!({"optimize": false})));
        let published = Published {
            version: "2.0".into(),
            hash: configuration_hash(&configuration),
            configuration: configuration.clone(),
        };
        assert!(unchanged(Some(&published), &configuration_hash(&configuration)));
        assert!(!unchanged(Some(&published), &configuration_hash(&unoptimised)));
        assert!(!unchanged(None, &configuration_hash(&configuration)));
    }

    #[test]
    fn a_failed_operation_carries_what_genesys_said_into_the_stop() {
        let op: Operation = serde_json::from_value(json!({
            "id": "op", "complete": true, "actionName": "PUBLISH", "actionStatus": "FAILURE",
            "errorCode": "architect.publish.failed", "errorMessage": "failed",
            "errorDetails": [{"errorCode": "architect.flow.validation.error", "fieldName": "startUpRef"}],
            "errorMessageParams": {"errorCount": "1"}
        }))
        .unwrap();
        let stop = operation_result("PUBLISH", &op).unwrap_err();
        let details = stop.details().unwrap();
        assert_eq!(details.error_code.as_deref(), Some("architect.publish.failed"));
        assert_eq!(details.error_details.unwrap()[0]["fieldName"], "startUpRef");
        assert_eq!(details.error_message_params.unwrap()["errorCount"], "1");
        let succeeded: Operation =
            serde_json::from_value(json!({"id": "op", "complete": true, "actionStatus": "SUCCESS"})).unwrap();
        assert!(operation_result("PUBLISH", &succeeded).is_ok());
    }
}
