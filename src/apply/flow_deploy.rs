//! `flow.deploy`: deploy an IVR flow under Architect's lock, publish it, roll back on failure.
//!
//! Lifecycle (docs/architecture.md, section 4.10): read the flow (`expected_version` must match its saved
//! version; a lock held by someone else is a `conflict` and is left alone); record the published
//! version and its configuration; checkout; save the (optimised) configuration as a new
//! version; checkin and wait for the operation; publish and wait, then confirm
//! `publishedVersion` really moved to the new version. Whatever happens, the flow is not left
//! locked by this worker. After a failure once a new version is checked in, with
//! `rollback_on_fail`, the previously published configuration is saved again as a new version,
//! checked in and published: `rolled_back`.
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

use serde_json::{json, Value};

use super::{Context, Verdict};
use crate::events::{EventError, Outcome};
use crate::flow::{optimize, Optimization};
use crate::genesys::architect::{Flow, FlowListing, FlowVersion, Operation};
use crate::genesys::{ErrorClass, GenesysError, LaneClient};
use crate::job::{FlowDeploy, Job};
use crate::retry::RetryPolicy;

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
    },
}

impl Stop {
    fn describe(&self) -> (String, String) {
        match self {
            Stop::Genesys(err) => (err.code(), err.to_string()),
            Stop::Refused { code, message, .. } => (code.to_string(), message.clone()),
            Stop::Operation { code, message } => (code.clone(), message.clone()),
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
        let before = match self.resolve().await {
            Ok(flow) => flow,
            Err(stop) => return self.finish(stop, None, None),
        };
        // Known from here on, also when the flow was found or created by name.
        self.flow_id = before.id.clone();
        self.entity = format!("flow:{}", before.id);
        self.follow_lock(&before);
        let before = match self.wait_for_unlock(before).await {
            Ok(flow) => flow,
            Err(stop) => return self.finish(stop, None, None),
        };
        let previous_state = state_of(&before);
        if let Some(expected) = &self.payload.expected_version {
            if before.saved() != Some(expected.as_str()) {
                let message = format!("expected saved version {expected:?}, found {:?}", before.saved());
                let stop = Stop::Refused {
                    outcome: Outcome::Conflict,
                    code: "expected_version_mismatch",
                    message,
                };
                return self.finish(stop, Some(previous_state), None);
            }
        }
        let mut definition = self.payload.flow.clone();
        let optimization = if self.payload.optimize {
            optimize(&mut definition)
        } else {
            Optimization::default()
        };
        let configuration = serde_json::to_value(&definition).expect("flow definitions serialize");

        // What a rollback would restore, read before anything changes.
        let restore = match (
            self.payload.rollback_on_fail && self.payload.publish,
            before.published(),
        ) {
            (true, Some(version)) => match self.configuration_of(version).await {
                Ok(config) => Some((version.to_string(), config)),
                Err(stop) => return self.finish(stop, Some(previous_state), None),
            },
            _ => None,
        };

        let (saved, checked_in) = match self.check_in_new_version(&configuration).await {
            Ok(done) => done,
            Err(stop) => {
                self.release().await;
                return self.finish(stop, Some(previous_state), None);
            }
        };
        if !self.payload.publish {
            let after = self.read().await.unwrap_or(before.clone());
            return self.applied(Outcome::Applied, previous_state, &after, optimization, None);
        }
        match self.publish(&saved, &checked_in).await {
            Ok(after) => self.applied(Outcome::Applied, previous_state, &after, optimization, None),
            Err(cause) => match restore {
                Some((version, config)) => {
                    self.roll_back(previous_state, optimization, &version, &config, cause)
                        .await
                }
                None => {
                    self.release().await;
                    self.finish(cause, Some(previous_state), None)
                }
            },
        }
    }

    /// Checkout, save `configuration` as a new version, checkin and wait: the new version's id
    /// and the flow as the checkin left it.
    async fn check_in_new_version(&mut self, configuration: &Value) -> Result<(String, Flow), Stop> {
        let client = self.client_id().to_string();
        self.action("checkout", |flow: &Flow| flow.locked_by(&client), no_lag)
            .await
            .map_err(|err| match err {
                Stop::Genesys(GenesysError::Api { status: 409, .. }) => Stop::Refused {
                    outcome: Outcome::Conflict,
                    code: "flow_locked",
                    message: "checkout refused: the flow is locked by someone else".into(),
                },
                other => other,
            })?;
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
            return Err(Stop::Operation {
                code: "checkin_not_effective".into(),
                message: format!(
                    "checkin completed but checkedInVersion is {:?}, not {saved:?}",
                    done.checked_in()
                ),
            });
        }
        Ok((saved, done))
    }

    /// Publishes the checked-in version and confirms `publishedVersion` moved to `version`.
    async fn publish(&mut self, version: &str, before: &Flow) -> Result<Flow, Stop> {
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
            return Err(Stop::Operation {
                code: "publish_not_effective".into(),
                message: format!(
                    "publish reported success but publishedVersion is {:?}, not {version:?}",
                    done.published()
                ),
            });
        }
        Ok(done)
    }

    /// Restores the configuration of `version` as a new published version.
    async fn roll_back(
        &mut self,
        previous_state: Value,
        optimization: Optimization,
        version: &str,
        configuration: &Value,
        cause: Stop,
    ) -> Verdict {
        let (code, message) = cause.describe();
        tracing::warn!(flow_id = %self.flow_id, cause = %message, "Deploy failed after a partial change; rolling back.");
        let (restored, checked_in) = match self.check_in_new_version(configuration).await {
            Ok(done) => done,
            Err(stop) => return self.rollback_failed(&message, stop, previous_state).await,
        };
        match self.publish(&restored, &checked_in).await {
            Ok(after) => {
                let note =
                    format!("{message}; restored version {version}'s configuration as version {restored}");
                self.applied(
                    Outcome::RolledBack,
                    previous_state,
                    &after,
                    optimization,
                    Some((code, note)),
                )
            }
            Err(stop) => self.rollback_failed(&message, stop, previous_state).await,
        }
    }

    async fn rollback_failed(&mut self, cause: &str, stop: Stop, previous_state: Value) -> Verdict {
        self.release().await;
        let (code, message) = stop.describe();
        let stop = Stop::Operation {
            code,
            message: format!("{cause}; the rollback failed too: {message}"),
        };
        self.finish(stop, Some(previous_state), None)
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

    /// Waits, up to `lock_wait`, for a lock held by someone else to be released; a lock still
    /// held then is a `conflict`, and it is left alone.
    async fn wait_for_unlock(&mut self, mut flow: Flow) -> Result<Flow, Stop> {
        let deadline = tokio::time::Instant::now() + self.ctx.flows.lock_wait;
        loop {
            let Some(holder) = flow.locked_by_other(self.client_id()) else {
                return Ok(flow);
            };
            if tokio::time::Instant::now() >= deadline {
                let waited = if self.ctx.flows.lock_wait.is_zero() {
                    String::new()
                } else {
                    format!(" after waiting {:?}", self.ctx.flows.lock_wait)
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

    async fn configuration_of(&mut self, version: &str) -> Result<Value, Stop> {
        let path = format!("/api/v2/flows/{}/versions/{version}/configuration", self.flow_id);
        let read = self.ctx.retry.run(|_| self.genesys.get::<Value>(&path)).await;
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
                return Err(Stop::Operation {
                    code: "operation_timeout".into(),
                    message: format!("{action} did not complete within {:?}", self.ctx.flows.timeout),
                });
            }
            tokio::time::sleep(self.ctx.flows.poll).await;
        }
    }

    fn applied(
        &self,
        outcome: Outcome,
        previous_state: Value,
        after: &Flow,
        optimization: Optimization,
        error: Option<(String, String)>,
    ) -> Verdict {
        let mut new_state = state_of(after);
        new_state["previous_published_version"] = previous_state["published_version"].clone();
        new_state["version_matrix"] = self.payload.version_matrix.clone().unwrap_or(Value::Null);
        new_state["optimization"] = json!(optimization);
        Verdict {
            outcome,
            previous_state: Some(previous_state),
            new_state: Some(new_state),
            genesys_status: Some(200),
            error: error.map(|(code, message)| {
                EventError::new(
                    code,
                    format!("job {}: {}: {message}", self.job.job_id, self.entity),
                )
            }),
            attempts: self.attempts,
            entity: Some(self.entity.clone()),
            retryable: false,
        }
    }

    fn finish(&self, stop: Stop, previous_state: Option<Value>, new_state: Option<Value>) -> Verdict {
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
            Stop::Operation { code, message } => Verdict::refused(
                Outcome::Failed,
                &code,
                format!("job {}: {}: {message}", self.job.job_id, self.entity),
            ),
        };
        applied.previous_state = previous_state;
        applied.new_state = new_state;
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
