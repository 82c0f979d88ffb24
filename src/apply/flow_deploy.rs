//! `flow.deploy`: deploy an IVR flow under Architect's lock, publish it, roll back on failure.
//!
//! Lifecycle (genesys-api.md section 5): read the flow (`expected_version` must match its saved
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

use std::time::Duration;

use serde_json::{json, Value};

use super::{Applied, Context};
use crate::events::{EventError, Outcome};
use crate::flow::{optimize, Optimization};
use crate::genesys::architect::{Flow, FlowListing, FlowVersion, Operation};
use crate::genesys::{ErrorClass, GenesysError};
use crate::job::{FlowDeploy, Job};
use crate::retry::RetryPolicy;

/// How the lifecycle waits for Architect's asynchronous operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSettings {
    /// Between two reads of the flow while an operation runs (each read is a Genesys call).
    pub poll: Duration,
    /// How long a checkin or publish may take before the deploy gives up.
    pub timeout: Duration,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            timeout: Duration::from_secs(300),
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
    job: &'a Job,
    payload: &'a FlowDeploy,
    entity: String,
    flow_id: String,
    attempts: u32,
}

pub async fn apply(ctx: Context<'_>, job: &Job, payload: &FlowDeploy) -> Applied {
    let mut deploy = Deploy {
        ctx,
        job,
        payload,
        entity: job.entity(),
        flow_id: String::new(),
        attempts: 1,
    };
    deploy.run().await
}

impl Deploy<'_> {
    fn client_id(&self) -> &str {
        self.ctx.genesys.client_id()
    }

    async fn run(&mut self) -> Applied {
        let before = match self.resolve().await {
            Ok(flow) => flow,
            Err(stop) => return self.finish(stop, None, None),
        };
        self.flow_id = before.id.clone();
        self.entity = format!("flow:{}", before.id);
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
        if let Some(holder) = before.locked_by_other(self.client_id()) {
            let message = format!("flow is locked by {holder}; the lock is left alone");
            let stop = Stop::Refused {
                outcome: Outcome::Conflict,
                code: "flow_locked",
                message,
            };
            return self.finish(stop, Some(previous_state), None);
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

        let saved = match self.check_in_new_version(&configuration).await {
            Ok(saved) => saved,
            Err(stop) => {
                self.release().await;
                return self.finish(stop, Some(previous_state), None);
            }
        };
        if !self.payload.publish {
            let after = self.read().await.unwrap_or(before.clone());
            return self.applied(Outcome::Applied, previous_state, &after, optimization, None);
        }
        match self.publish(&saved).await {
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

    /// Checkout, save `configuration` as a new version, checkin and wait: the new version's id.
    async fn check_in_new_version(&mut self, configuration: &Value) -> Result<String, Stop> {
        let client = self.client_id().to_string();
        self.action("checkout", |flow: &Flow| flow.locked_by(&client))
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
        let operation = self
            .action("checkin", |flow: &Flow| {
                is_new_operation(flow, "CHECKIN", &current)
            })
            .await?;
        let done = self.wait("CHECKIN", operation.as_ref(), &current).await?;
        if done.checked_in() != Some(saved.as_str()) {
            return Err(Stop::Operation {
                code: "checkin_not_effective".into(),
                message: format!(
                    "checkin completed but checkedInVersion is {:?}, not {saved:?}",
                    done.checked_in()
                ),
            });
        }
        Ok(saved)
    }

    /// Publishes the checked-in version and confirms `publishedVersion` moved to `version`.
    async fn publish(&mut self, version: &str) -> Result<Flow, Stop> {
        let current = self.read().await?;
        let operation = self
            .action("publish", |flow: &Flow| {
                is_new_operation(flow, "PUBLISH", &current)
            })
            .await?;
        let done = self.wait("PUBLISH", operation.as_ref(), &current).await?;
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
    ) -> Applied {
        let (code, message) = cause.describe();
        tracing::warn!(flow_id = %self.flow_id, cause = %message, "Deploy failed after a partial change; rolling back.");
        let restored = match self.check_in_new_version(configuration).await {
            Ok(restored) => restored,
            Err(stop) => return self.rollback_failed(&message, stop, previous_state).await,
        };
        match self.publish(&restored).await {
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

    async fn rollback_failed(&mut self, cause: &str, stop: Stop, previous_state: Value) -> Applied {
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
            .action("revert", |f: &Flow| !f.locked_by(&client))
            .await
            .is_err()
        {
            let _ = self.action("unlock", |f: &Flow| !f.locked_by(&client)).await;
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
        let created = self.ctx.genesys.post::<Flow>("/api/v2/flows", &body).await;
        match created {
            Ok(reply) => Ok(reply.body),
            // Lost answer or a racing creator: the flow may exist now.
            Err(err) if err.may_have_applied() || err.class() == ErrorClass::Conflict => self
                .find(&create.name, &flow_type)
                .await?
                .ok_or(Stop::Genesys(err)),
            Err(err) => Err(Stop::Genesys(err)),
        }
    }

    async fn find(&mut self, name: &str, flow_type: &str) -> Result<Option<Flow>, Stop> {
        let name_query: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let path = format!("/api/v2/flows?name={name_query}&type={flow_type}");
        let listing = self
            .ctx
            .retry
            .run(|_| self.ctx.genesys.get::<FlowListing>(&path))
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
        let read = self.ctx.retry.run(|_| self.ctx.genesys.get::<Flow>(&path)).await;
        self.attempts = self.attempts.max(read.attempts);
        Ok(read.result?.body)
    }

    async fn configuration_of(&mut self, version: &str) -> Result<Value, Stop> {
        let path = format!("/api/v2/flows/{}/versions/{version}/configuration", self.flow_id);
        let read = self.ctx.retry.run(|_| self.ctx.genesys.get::<Value>(&path)).await;
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
            match self.ctx.genesys.post::<FlowVersion>(&path, configuration).await {
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
    /// tells whether it took effect. Returns the operation when the answer carried one.
    async fn action(&mut self, name: &str, done: impl Fn(&Flow) -> bool) -> Result<Option<Operation>, Stop> {
        let path = format!("/api/v2/flows/actions/{name}?flow={}", self.flow_id);
        let max = self.ctx.retry.max_attempts;
        for attempt in 1..=max {
            self.attempts = self.attempts.max(attempt);
            match self.ctx.genesys.post::<Value>(&path, &Value::Null).await {
                Ok(reply) => return Ok(serde_json::from_value::<Operation>(reply.body).ok()),
                Err(err) => {
                    if err.may_have_applied() {
                        let now = self.read().await?;
                        if done(&now) {
                            tracing::info!(action = name, flow_id = %self.flow_id, "Action answer lost, but it took effect; not sending it again.");
                            return Ok(None);
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

    /// Polls the flow until the `action` operation started after `before` completes.
    async fn wait(&mut self, action: &str, started: Option<&Operation>, before: &Flow) -> Result<Flow, Stop> {
        let deadline = tokio::time::Instant::now() + self.ctx.flows.timeout;
        loop {
            let flow = self.read().await?;
            let operation = flow.current_operation.as_ref().filter(|op| match started {
                Some(started) => op.id == started.id,
                None => is_new_operation(&flow, action, before),
            });
            if let Some(op) = operation.filter(|op| op.complete) {
                if op.action_status.as_deref() == Some("FAILURE") {
                    return Err(Stop::Operation {
                        code: op
                            .error_code
                            .clone()
                            .unwrap_or_else(|| format!("{}_failed", action.to_lowercase())),
                        message: format!(
                            "{action} failed: {}",
                            op.error_message.clone().unwrap_or_else(|| "no message".into())
                        ),
                    });
                }
                return Ok(flow);
            }
            if tokio::time::Instant::now() >= deadline {
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
    ) -> Applied {
        let mut new_state = state_of(after);
        new_state["previous_published_version"] = previous_state["published_version"].clone();
        new_state["version_matrix"] = self.payload.version_matrix.clone().unwrap_or(Value::Null);
        new_state["optimization"] = json!(optimization);
        Applied {
            outcome,
            previous_state: Some(previous_state),
            new_state: Some(new_state),
            genesys_status: Some(200),
            error: error.map(|(code, message)| EventError {
                code,
                message: format!("job {}: {}: {message}", self.job.job_id, self.entity),
            }),
            attempts: self.attempts,
            entity: Some(self.entity.clone()),
            retryable: false,
        }
    }

    fn finish(&self, stop: Stop, previous_state: Option<Value>, new_state: Option<Value>) -> Applied {
        let mut applied = match stop {
            Stop::Genesys(err) => Applied::from_error(self.job.job_id, &self.entity, &err, self.attempts),
            Stop::Refused {
                outcome,
                code,
                message,
            } => Applied::refused(
                outcome,
                code,
                format!("job {}: {}: {message}", self.job.job_id, self.entity),
            ),
            Stop::Operation { code, message } => Applied::refused(
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

/// Whether `flow` shows an `action` operation other than the one `before` showed.
fn is_new_operation(flow: &Flow, action: &str, before: &Flow) -> bool {
    let previous = before.current_operation.as_ref().map(|op| op.id.as_str());
    flow.current_operation
        .as_ref()
        .is_some_and(|op| op.action_name.as_deref() == Some(action) && Some(op.id.as_str()) != previous)
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
