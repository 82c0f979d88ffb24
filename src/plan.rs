//! `genesys-worker plan`: what a file of jobs would do if it were enqueued now, read from
//! Genesys without changing anything.
//!
//! The input is what `enqueue` takes (NDJSON, one job message a line, the same decoder and
//! limits); a `batch` is expanded into its children as the worker publishes them
//! ([`crate::batch::child_body`]: the batch's `presence_policy`, actor and deadline). Each job
//! gets one [`Verdict`], decided by the rules the worker applies:
//!
//! - `agent.status`: the presence name is resolved through the cached definitions (one listing
//!   for the whole plan); the agents' state is read 100 at a time
//!   ([`crate::apply::users::read`]), so a 10,000-agent plan costs about 100 requests. Then
//!   `expected_current` is checked and the policy decided by the worker's own
//!   [`crate::apply::agent_status::decide`]: Out of Office under `respect_out_of_office`, a live
//!   interaction under `if_interacting` (`skip`: blocked, `defer`: deferred, `apply`: changed
//!   anyway), already in the target presence under `skip_if_current` (no-op).
//! - `interaction.status`: the workitem is read, its worktype's statuses once per worktype; the
//!   target, `expected_current` and the transition are checked as `apply::interaction_status`
//!   does.
//! - `interaction.create`: a change (a new workitem); nothing is read.
//! - `flow.deploy`: the graph is validated offline (by the decoder: an invalid one is blocked);
//!   the flow and its published configuration are read: the same configuration hash is a no-op;
//!   someone else's lock blocks it, or defers it when the deploy would wait for the lock
//!   (`on_locked: wait`, `FLOW_LOCK_WAIT_SECS`), or is broken (`force_unlock`, for the actors
//!   `FLOW_FORCE_UNLOCK_ACTORS` lists); a change lists what uses the flow (dependency tracking).
//!
//! Jobs are judged in file order, each against the state the jobs before it in the file would
//! leave (an agent set to `Break` on line 1 is on `Break` for line 2's `expected_current`):
//! the order the worker applies one entity's jobs in when they carry increasing `sequence`s.
//! The worker's records and ordering rule apply as far as the file goes: a second copy of a job
//! (same entity and idempotency key) is a `duplicate` no-op, a key reused with another payload
//! is blocked, and so are a job past its `not_after` and one whose `sequence` is older than an
//! earlier line's ([`crate::order::refusal`]). The records in Redis are not read: a job applied
//! before the plan is planned as if it were new.
//!
//! Every Genesys call goes through the [`GenesysClient`] given, with the fleet's budget in
//! Redis, as the worker's own calls do: a plan run beside busy workers spends the same budget
//! instead of drawing 429s on them.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Serialize;
use uuid::Uuid;

use crate::apply::agent_status::{self, decide, Decision};
use crate::apply::flow_deploy::{self, FlowSettings, Published};
use crate::apply::interaction_status::{self, Judged};
use crate::apply::users::{self, AgentState, DefinitionRef, USERS_PER_READ};
use crate::flow::configuration_hash;
use crate::genesys::architect::{Consumer, Flow, FlowListing};
use crate::genesys::presence::{PresenceDefinition, ResolveError};
use crate::genesys::taskmanagement::{StatusGraph, Workitem};
use crate::genesys::{GenesysClient, GenesysError, LaneClient};
use crate::job::{self, AgentStatus, FlowDeploy, InteractionStatus, Job, Payload, RoutingStatus};
use crate::lane::Lane;
use crate::retry::RetryPolicy;

/// What a job would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Verdict {
    /// Nothing would be written: Genesys is in the target state already.
    #[serde(rename = "no-op")]
    NoOp,
    /// A write: `from` → `to`.
    #[serde(rename = "change")]
    Change,
    /// The change would wait first (an agent's live interaction under `if_interacting: defer`,
    /// someone's lock on a flow the deploy waits for), then be made; a wait that runs out ends
    /// as `conflict`. Not counted as blocked.
    #[serde(rename = "deferred")]
    Deferred,
    /// Nothing would be changed: `code` and `reason` say why (the worker's error code where it
    /// has one: `out_of_office`, `agent_interacting`, `flow_locked`, …, or the decoder's for a
    /// line that is not a valid job).
    #[serde(rename = "blocked")]
    Blocked,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NoOp => "no-op",
            Verdict::Change => "change",
            Verdict::Deferred => "deferred",
            Verdict::Blocked => "blocked",
        }
    }
}

/// One job's line of the plan (`--json`: one object, the fields that are not `None`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    /// The input line (1-based).
    pub line: usize,
    /// A batch's child: its index in the batch (`x-batch-index`, from 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child: Option<usize>,
    /// Absent only for a line too broken to name its job.
    pub job_id: Option<Uuid>,
    pub kind: Option<String>,
    pub entity: Option<String>,
    pub verdict: Verdict,
    /// The state the change starts from, as Genesys shows it (or the jobs before it leave it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The state the change leads to (also the state a no-op finds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why a job is blocked or deferred (or a no-op as a `duplicate` of one before it): a
    /// stable code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What else the change would do or meet (a live interaction it goes ahead despite, a lock
    /// it breaks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `flow.deploy`: what uses the flow (dependency tracking), the deploy's blast radius.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumers: Option<Vec<Consumer>>,
    /// How many consumers there are beyond those listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumers_omitted: Option<u64>,
}

impl Planned {
    fn of(line: usize, child: Option<usize>, job: &Job, verdict: Verdict) -> Self {
        Self {
            line,
            child,
            job_id: Some(job.job_id),
            kind: Some(job.kind.as_str().to_string()),
            entity: Some(job.entity()),
            verdict,
            from: None,
            to: None,
            code: None,
            reason: None,
            note: None,
            consumers: None,
            consumers_omitted: None,
        }
    }

    fn change(line: usize, child: Option<usize>, job: &Job, from: Option<String>, to: String) -> Self {
        Self {
            from,
            to: Some(to),
            ..Self::of(line, child, job, Verdict::Change)
        }
    }

    fn no_op(line: usize, child: Option<usize>, job: &Job, state: String) -> Self {
        Self {
            to: Some(state),
            ..Self::of(line, child, job, Verdict::NoOp)
        }
    }

    fn blocked(line: usize, child: Option<usize>, job: &Job, code: &str, reason: String) -> Self {
        Self {
            code: Some(code.to_string()),
            reason: Some(reason),
            ..Self::of(line, child, job, Verdict::Blocked)
        }
    }

    fn with_note(mut self, note: Option<String>) -> Self {
        self.note = note;
        self
    }
}

/// Counts per verdict, and what the plan cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub jobs: usize,
    pub change: usize,
    #[serde(rename = "no-op")]
    pub no_op: usize,
    pub deferred: usize,
    pub blocked: usize,
    /// Genesys API requests this process made while planning (retries and 429s included; the
    /// OAuth token request is not an API request).
    pub genesys_requests: u64,
    /// Of those, answered 429.
    pub throttled: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// In input order (a batch's children in their order).
    pub jobs: Vec<Planned>,
    pub summary: Summary,
}

/// What a plan needs of the worker's settings.
#[derive(Debug, Clone)]
pub struct PlanSettings {
    /// `MAX_MESSAGE_BYTES`, `MAX_BATCH_MESSAGE_BYTES`, `BATCH_MAX`.
    pub limits: job::Limits,
    pub retry: RetryPolicy,
    /// `FLOW_LOCK_WAIT_SECS` and `FLOW_FORCE_UNLOCK_ACTORS` (the rest is not used).
    pub flows: FlowSettings,
    /// The lane of the budget the plan's calls wait in.
    pub lane: Lane,
    /// Read first what Genesys allows each OAuth client and pace at it when it is less than
    /// configured, as the worker does (`GENESYS_LIMITS_REFRESH_SECS` not 0).
    pub pace_as_allowed: bool,
}

impl PlanSettings {
    /// The settings of the worker `config` describes; calls in the batch lane, so on a shared
    /// process single jobs go first.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            limits: config.limits,
            retry: RetryPolicy::for_genesys(&config.genesys),
            flows: FlowSettings {
                lock_wait: Duration::from_secs(config.flow_lock_wait_secs),
                force_unlock_actors: config.flow_force_unlock_actors.clone(),
                ..FlowSettings::default()
            },
            lane: Lane::Batch,
            pace_as_allowed: config.genesys.limits_refresh_secs > 0,
        }
    }
}

/// The Genesys client a plan calls through: the worker's own construction
/// ([`crate::worker`]), each OAuth client's budget shared with the fleet through Redis.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn connect(config: &crate::config::Config) -> Result<GenesysClient, crate::store::StoreError> {
    let store = crate::store::Store::connect(
        &config.redis,
        &config.redis_key_prefix,
        config.idempotency_ttl_secs,
        config.lease_ms,
    )
    .await?;
    Ok(crate::worker::genesys_client(config, &store))
}

/// Paces each OAuth client's budget at what Genesys allows it when that is below the
/// configuration, as the worker does: at the configured pace the plan would spend more than the
/// workers leave. Unreadable limits leave the configured pace (the worker's answer too).
async fn pace_as_allowed(genesys: &GenesysClient) {
    for budget in genesys.budgets() {
        let lane = genesys.in_lane(Lane::Single);
        let lane = lane.pinned_to_client(budget.client()).unwrap_or(lane);
        if let Ok(allowed) = crate::genesys::limits::allowed_per_minute(lane).await {
            budget.set_allowed_per_minute(allowed);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no jobs in the input")]
    Empty,
    /// A read the plan needs failed (after the retry policy's attempts): the plan is not made.
    #[error("job {job_id} ({entity}): cannot read {what} from Genesys: {source}")]
    Genesys {
        job_id: Uuid,
        entity: String,
        what: String,
        #[source]
        source: Box<GenesysError>,
    },
}

/// Reads in flight at once: the budget paces them; more would only queue for it.
const READS_IN_FLIGHT: usize = 8;

/// A line (or a batch's child) of the input, decoded.
struct Item {
    line: usize,
    child: Option<usize>,
    job: Result<Job, job::DecodeError>,
}

/// The jobs of `input`, batches expanded into their children as the worker publishes them.
fn parse(input: &str, limits: &job::Limits) -> Vec<Item> {
    let mut items = Vec::new();
    for (index, raw) in input.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let line = index + 1;
        let decoded = job::decode_with(raw.as_bytes(), limits);
        if let Ok(
            batch @ Job {
                payload: Payload::Batch(payload),
                ..
            },
        ) = &decoded
        {
            for (i, child) in payload.jobs.iter().enumerate() {
                // Decoded from the very body the fan-out publishes, with the worker's limits: an
                // oversized child is refused here as there.
                let body = crate::batch::child_body(batch, i, child);
                items.push(Item {
                    line,
                    child: Some(i),
                    job: job::decode_with(&body, limits),
                });
            }
            continue;
        }
        items.push(Item {
            line,
            child: None,
            job: decoded,
        });
    }
    items
}

/// The Genesys API requests (and 429s among them) this process has made so far, from its
/// metrics: every HTTP request of [`GenesysClient`] is counted there, retries and the reads
/// [`users::read`] makes on its own included.
fn requests_so_far() -> (u64, u64) {
    use crate::telemetry::names::{GENESYS_REQUESTS, THROTTLED};
    let text = crate::telemetry::metrics().render();
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|value| value as u64)
            .sum()
    };
    (sum(GENESYS_REQUESTS), sum(THROTTLED))
}

/// Plans `input` (NDJSON of job messages) against Genesys as `genesys` reads it.
///
/// # Errors
/// [`PlanError::Empty`] for an input without a line; [`PlanError::Genesys`] when a read the
/// plan needs fails (Genesys or the budget's Redis unreachable, a permission missing).
pub async fn plan(input: &str, genesys: &GenesysClient, settings: &PlanSettings) -> Result<Plan, PlanError> {
    let items = parse(input, &settings.limits);
    if items.is_empty() {
        return Err(PlanError::Empty);
    }
    let (requests_before, throttled_before) = requests_so_far();
    if settings.pace_as_allowed {
        pace_as_allowed(genesys).await;
    }
    let mut planner = Planner {
        genesys: genesys.in_lane(settings.lane),
        settings,
        targets: HashMap::new(),
        agents: HashMap::new(),
        workitems: HashMap::new(),
        statuses: HashMap::new(),
        flows: HashMap::new(),
        seen: HashMap::new(),
        sequences: HashMap::new(),
    };
    planner.read_agents(&items).await?;
    planner.read_workitems(&items).await?;
    let mut jobs = Vec::with_capacity(items.len());
    for item in &items {
        jobs.push(planner.judge(item).await?);
    }
    let (requests_after, throttled_after) = requests_so_far();
    let mut summary = Summary {
        jobs: jobs.len(),
        genesys_requests: requests_after.saturating_sub(requests_before),
        throttled: throttled_after.saturating_sub(throttled_before),
        ..Summary::default()
    };
    for planned in &jobs {
        match planned.verdict {
            Verdict::NoOp => summary.no_op += 1,
            Verdict::Change => summary.change += 1,
            Verdict::Deferred => summary.deferred += 1,
            Verdict::Blocked => summary.blocked += 1,
        }
    }
    Ok(Plan { jobs, summary })
}

/// A flow as the plan knows it: read, or not there.
#[derive(Debug, Clone)]
enum FlowState {
    /// `flow_id` names no flow.
    Unknown,
    /// `create` names no flow yet: the deploy creates it.
    ToCreate,
    Found {
        flow: Box<Flow>,
        /// What it publishes (read when a deploy publishes; then as the jobs before leave it).
        published: Option<Option<Published>>,
    },
    /// Created by a deploy earlier in the file: what that one would publish.
    Created { published: Option<Published> },
}

/// Where a job was first in the input (line, child), and its payload's fingerprint.
struct Seen {
    at: (usize, Option<usize>),
    fingerprint: String,
}

struct Planner<'a> {
    genesys: LaneClient<'a>,
    settings: &'a PlanSettings,
    /// Per presence as jobs name it: its definition, or why not (code, reason).
    targets: HashMap<String, Result<PresenceDefinition, (&'static str, String)>>,
    /// Agents Genesys knows, as read and then as the jobs before leave them.
    agents: HashMap<Uuid, AgentState>,
    /// Workitems as read (`None`: Genesys knows no such workitem) with their worktype's statuses.
    workitems: HashMap<Uuid, Option<(Workitem, StatusGraph)>>,
    /// A workitem's status as the jobs before leave it.
    statuses: HashMap<Uuid, String>,
    /// By the deploy's entity (`flow:<id>`, `flow:new:<name>`).
    flows: HashMap<String, FlowState>,
    /// Per entity and idempotency key (the worker's idempotency record): the first job's.
    seen: HashMap<(String, String), Seen>,
    /// Per entity: the highest `sequence` of the jobs before.
    sequences: HashMap<String, u64>,
}

impl Planner<'_> {
    fn retry(&self) -> &RetryPolicy {
        &self.settings.retry
    }

    /// Resolves every presence the `agent.status` jobs name (one listing, cached), then reads
    /// their agents 100 to a request.
    async fn read_agents(&mut self, items: &[Item]) -> Result<(), PlanError> {
        // The first job of each agent, to name in an error.
        let mut first_job: HashMap<Uuid, Uuid> = HashMap::new();
        let mut users = Vec::new();
        for item in items {
            let Ok(job) = &item.job else { continue };
            let Payload::AgentStatus(payload) = &job.payload else {
                continue;
            };
            if !self.targets.contains_key(&payload.presence) {
                let target = match self
                    .genesys
                    .client()
                    .presence
                    .resolve(self.genesys, &payload.presence)
                    .await
                {
                    Ok(definition) => Ok(definition),
                    Err(ResolveError::Genesys(source)) => {
                        return Err(PlanError::Genesys {
                            job_id: job.job_id,
                            entity: job.entity(),
                            what: "the presence definitions".into(),
                            source: Box::new(source),
                        })
                    }
                    Err(err @ ResolveError::Unknown { .. }) => Err(("unknown_presence", err.to_string())),
                    Err(err @ ResolveError::Deactivated { .. }) => {
                        Err(("presence_deactivated", err.to_string()))
                    }
                };
                self.targets.insert(payload.presence.clone(), target);
            }
            if first_job.insert(payload.user_id, job.job_id).is_none() {
                users.push(payload.user_id);
            }
        }
        let (genesys, retry) = (self.genesys, &self.settings.retry);
        let reads = stream::iter(users.chunks(USERS_PER_READ))
            .map(|chunk| async move {
                users::read(genesys, false, genesys, retry, chunk)
                    .await
                    .map_err(|source| (chunk[0], chunk.len(), source))
            })
            .buffer_unordered(READS_IN_FLIGHT);
        let mut reads = std::pin::pin!(reads);
        while let Some(read) = reads.next().await {
            match read {
                Ok(states) => self.agents.extend(states.found),
                Err((user, count, source)) => {
                    return Err(PlanError::Genesys {
                        job_id: first_job[&user],
                        entity: format!("user:{user}"),
                        what: format!("the state of {count} agent(s)"),
                        source: Box::new(source),
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads every workitem the `interaction.status` jobs name, and its worktype's statuses
    /// (listed once per worktype: the client's cache).
    async fn read_workitems(&mut self, items: &[Item]) -> Result<(), PlanError> {
        // Per workitem: the first job (to name in an error) and every status its jobs name.
        let mut wanted: HashMap<Uuid, (Uuid, Vec<String>)> = HashMap::new();
        let mut order = Vec::new();
        for item in items {
            let Ok(job) = &item.job else { continue };
            let Payload::InteractionStatus(payload) = &job.payload else {
                continue;
            };
            let entry = wanted.entry(payload.workitem_id).or_insert_with(|| {
                order.push(payload.workitem_id);
                (job.job_id, Vec::new())
            });
            entry.1.push(payload.target());
            entry.1.extend(payload.expected_current.clone());
        }
        let (genesys, retry) = (self.genesys, &self.settings.retry);
        let wanted = &wanted;
        let read = |workitem: Uuid| async move {
            let path = format!("/api/v2/taskmanagement/workitems/{workitem}");
            let fail = |what: &str, source| PlanError::Genesys {
                job_id: wanted[&workitem].0,
                entity: format!("workitem:{workitem}"),
                what: what.to_string(),
                source: Box::new(source),
            };
            let current = match retry.run(|_| genesys.get::<Workitem>(&path)).await.result {
                Ok(reply) => reply.body,
                Err(err) if err.status() == Some(404) => return Ok((workitem, None)),
                Err(err) => return Err(fail("the workitem", err)),
            };
            let mut must_know: Vec<&str> = vec![current.status.id.as_str()];
            must_know.extend(wanted[&workitem].1.iter().map(String::as_str));
            let graph = genesys
                .client()
                .statuses
                .graph(genesys, &current.worktype.id, &must_know)
                .await
                .map_err(|err| fail("the worktype's statuses", err))?;
            Ok((workitem, Some((current, graph))))
        };
        let found: Vec<_> = stream::iter(order)
            .map(read)
            .buffer_unordered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        self.workitems.extend(found);
        Ok(())
    }

    async fn judge(&mut self, item: &Item) -> Result<Planned, PlanError> {
        let (line, child) = (item.line, item.child);
        let job = match &item.job {
            Ok(job) => job,
            Err(err) => {
                return Ok(Planned {
                    line,
                    child,
                    job_id: err.job_id,
                    kind: err.kind.clone(),
                    entity: err.entity.clone(),
                    verdict: Verdict::Blocked,
                    from: None,
                    to: None,
                    code: Some(err.code.to_string()),
                    reason: Some(err.message.clone()),
                    note: None,
                    consumers: None,
                    consumers_omitted: None,
                })
            }
        };
        // The worker keeps one record per entity and idempotency key: a second copy of a job
        // is a duplicate (nothing is done again), a key reused with another payload is refused.
        let key = (job.entity(), job.idempotency_key.clone());
        if let Some(seen) = self.seen.get(&key) {
            let first = match seen.at.1 {
                Some(child) => format!("line {}#{child}", seen.at.0),
                None => format!("line {}", seen.at.0),
            };
            let (verdict, code, reason) = if seen.fingerprint == job.fingerprint {
                (
                    Verdict::NoOp,
                    "duplicate",
                    format!(
                        "the same job as {first} (idempotency_key {:?}): applied once",
                        job.idempotency_key
                    ),
                )
            } else {
                (
                    Verdict::Blocked,
                    "idempotency_key_reused",
                    format!(
                        "idempotency_key {:?} is {first}'s, with another payload",
                        job.idempotency_key
                    ),
                )
            };
            return Ok(Planned {
                code: Some(code.into()),
                reason: Some(format!("job {}: {}: {reason}", job.job_id, job.entity())),
                ..Planned::of(line, child, job, verdict)
            });
        }
        let entity = key.0.clone();
        // Whatever its outcome, a job's record makes its copies duplicates.
        let seen = Seen {
            at: (line, child),
            fingerprint: job.fingerprint.clone(),
        };
        self.seen.insert(key, seen);
        // The worker's ordering rule: past `not_after`, or a sequence older than one applied
        // (of the jobs before in the file: the plan does not read the worker's records).
        let last = self.sequences.get(&entity).copied();
        if let Some(refused) = crate::order::refusal(job, &entity, last, time::OffsetDateTime::now_utc()) {
            let error = refused.error.expect("a refusal says why");
            return Ok(Planned {
                code: Some(error.code),
                reason: Some(error.message),
                ..Planned::of(line, child, job, Verdict::Blocked)
            });
        }
        if let Some(sequence) = job.sequence {
            let last = self.sequences.entry(entity).or_insert(sequence);
            *last = (*last).max(sequence);
        }
        Ok(match &job.payload {
            Payload::AgentStatus(payload) => self.agent_status(line, child, job, payload).await,
            Payload::InteractionStatus(payload) => self.interaction_status(line, child, job, payload),
            Payload::InteractionCreate(payload) => Planned::change(
                line,
                child,
                job,
                None,
                format!(
                    "a new workitem {:?} of worktype {}",
                    payload.name, payload.type_id
                ),
            ),
            Payload::FlowDeploy(payload) => self.flow_deploy(line, child, job, payload).await?,
            // A batch's children are planned instead (see `parse`); a batch inside a batch is
            // refused by the decoder.
            Payload::Batch(_) => unreachable!("batches are expanded into their children"),
        })
    }

    /// The name of a presence definition the agent is in.
    async fn presence_name(&self, reference: Option<&DefinitionRef>) -> (Option<PresenceDefinition>, String) {
        let Some(reference) = reference else {
            return (None, "no presence".into());
        };
        let definition = self
            .genesys
            .client()
            .presence
            .by_id(self.genesys, &reference.id)
            .await
            .ok()
            .flatten();
        let name = definition
            .as_ref()
            .map(PresenceDefinition::display_name)
            .or_else(|| reference.system_presence.clone())
            .unwrap_or_else(|| reference.id.clone());
        (definition, name)
    }

    /// As `apply::agent_status` decides, on the state read (or left by the jobs before).
    async fn agent_status(
        &mut self,
        line: usize,
        child: Option<usize>,
        job: &Job,
        payload: &AgentStatus,
    ) -> Planned {
        let target = match &self.targets[&payload.presence] {
            Ok(target) => target.clone(),
            Err((code, reason)) => {
                return Planned::blocked(
                    line,
                    child,
                    job,
                    code,
                    format!("job {}: {}: {reason}", job.job_id, job.entity()),
                )
            }
        };
        let refuse = |code: &str, message: String| {
            Planned::blocked(
                line,
                child,
                job,
                code,
                format!("job {}: {}: {message}", job.job_id, job.entity()),
            )
        };
        let Some(state) = self.agents.get(&payload.user_id).cloned() else {
            return refuse(
                "unknown_user",
                format!("Genesys knows no user {}", payload.user_id),
            );
        };
        let policy = payload.policy();
        let mut to = target.display_name();
        if let Some(routing) = payload.routing_status {
            to = format!("{to}, routing {}", routing.as_str());
        }
        let (current_definition, current_name) = self
            .presence_name(state.presence.presence_definition.as_ref())
            .await;
        let from = if payload.routing_status.is_some() {
            format!("{current_name}, routing {}", state.routing_status)
        } else {
            current_name.clone()
        };
        // The worker reads the agent only when a precondition or a policy needs it; otherwise
        // it writes whatever the agent is doing.
        let reads = agent_status::reads_state(payload, false);
        if reads {
            if let Some(expected) = &payload.expected_current {
                let holds = agent_status::presence_holds(current_definition.as_ref(), &state, expected);
                if !holds {
                    return refuse(
                        "expected_current_mismatch",
                        format!("expected current presence {expected:?}, found {current_name}"),
                    );
                }
            }
            let on_it = |routing_status: &str| {
                format!("the agent is on a live interaction (routing status {routing_status})")
            };
            let decision = decide(
                &state,
                policy,
                &target.id,
                payload.message.as_deref(),
                payload.routing_status.map(RoutingStatus::as_str),
            );
            match decision {
                Decision::Write => {}
                Decision::Unchanged => return Planned::no_op(line, child, job, to),
                Decision::OutOfOffice => {
                    return refuse(
                        "out_of_office",
                        "the agent is Out of Office; left as is (respect_out_of_office)".into(),
                    )
                }
                Decision::Interacting { routing_status } => {
                    return refuse(
                        "agent_interacting",
                        format!("{}; skipped (if_interacting: skip)", on_it(&routing_status)),
                    )
                }
                Decision::Deferred { routing_status } => {
                    return Planned {
                        from: Some(from),
                        to: Some(to),
                        code: Some("agent_interacting".into()),
                        reason: Some(format!(
                            "job {}: {}: {}; changed once it ends, tried again until not_after (if_interacting: defer)",
                            job.job_id,
                            job.entity(),
                            on_it(&routing_status)
                        )),
                        ..Planned::of(line, child, job, Verdict::Deferred)
                    };
                }
            }
        }
        let note = state.interacting().then(|| {
            format!(
                "the agent is on a live interaction (routing status {}); changed anyway (if_interacting: apply)",
                state.routing_status
            )
        });
        // The jobs after this one find the agent as it leaves them.
        if let Some(agent) = self.agents.get_mut(&payload.user_id) {
            agent.presence.presence_definition = Some(DefinitionRef {
                id: target.id.clone(),
                system_presence: Some(target.system_presence.clone()),
            });
            if let Some(message) = &payload.message {
                agent.presence.message = Some(message.clone());
            }
            if let Some(routing) = payload.routing_status {
                agent.routing_status = routing.as_str().to_string();
            }
        }
        Planned::change(line, child, job, Some(from), to).with_note(note)
    }

    /// As `apply::interaction_status` decides, on the workitem read (or left by the jobs before).
    fn interaction_status(
        &mut self,
        line: usize,
        child: Option<usize>,
        job: &Job,
        payload: &InteractionStatus,
    ) -> Planned {
        let refuse = |code: &str, message: String| {
            Planned::blocked(
                line,
                child,
                job,
                code,
                format!("job {}: {}: {message}", job.job_id, job.entity()),
            )
        };
        let Some(Some((workitem, graph))) = self.workitems.get(&payload.workitem_id) else {
            return refuse(
                "unknown_workitem",
                format!("Genesys knows no workitem {}", payload.workitem_id),
            );
        };
        let current = self
            .statuses
            .get(&payload.workitem_id)
            .unwrap_or(&workitem.status.id);
        let target = payload.target();
        let (from, to) =
            match interaction_status::judge(graph, current, &target, payload.expected_current.as_deref()) {
                Judged::Move { from, to } => (from, to),
                Judged::Unchanged(to) => return Planned::no_op(line, child, job, to.name.clone()),
                Judged::Refused { code, message, .. } => return refuse(code, message),
            };
        let planned = Planned::change(line, child, job, Some(from.name.clone()), to.name.clone());
        self.statuses.insert(payload.workitem_id, to.id.clone());
        planned
    }

    /// The flow a deploy names, read once per plan.
    async fn flow(&mut self, job: &Job, payload: &FlowDeploy) -> Result<FlowState, PlanError> {
        let entity = job.entity();
        if let Some(known) = self.flows.get(&entity) {
            return Ok(known.clone());
        }
        let fail = |source| PlanError::Genesys {
            job_id: job.job_id,
            entity: entity.clone(),
            what: "the flow".into(),
            source: Box::new(source),
        };
        let state = match (&payload.flow_id, &payload.create) {
            (Some(id), _) => {
                let path = format!("/api/v2/flows/{id}");
                match self.retry().run(|_| self.genesys.get::<Flow>(&path)).await.result {
                    Ok(reply) => FlowState::Found {
                        flow: Box::new(reply.body),
                        published: None,
                    },
                    Err(err) if err.status() == Some(404) => FlowState::Unknown,
                    Err(err) => return Err(fail(err)),
                }
            }
            (None, Some(create)) => {
                // As the deploy finds a flow to create by name: the same name and type.
                let flow_type = create.flow_type.to_ascii_uppercase();
                let name: String = url::form_urlencoded::byte_serialize(create.name.as_bytes()).collect();
                let path = format!("/api/v2/flows?name={name}&type={flow_type}");
                let listing = self.retry().run(|_| self.genesys.get::<FlowListing>(&path)).await;
                let found = listing
                    .result
                    .map_err(fail)?
                    .body
                    .entities
                    .into_iter()
                    .find(|f| f.name.eq_ignore_ascii_case(&create.name));
                match found {
                    Some(flow) => FlowState::Found {
                        flow: Box::new(flow),
                        published: None,
                    },
                    None => FlowState::ToCreate,
                }
            }
            (None, None) => unreachable!("the decoder requires flow_id or create"),
        };
        self.flows.insert(entity, state.clone());
        Ok(state)
    }

    /// As `apply::flow_deploy` decides, before it takes the lock.
    async fn flow_deploy(
        &mut self,
        line: usize,
        child: Option<usize>,
        job: &Job,
        payload: &FlowDeploy,
    ) -> Result<Planned, PlanError> {
        let entity = job.entity();
        let refuse = |code: &str, message: String| {
            Planned::blocked(
                line,
                child,
                job,
                code,
                format!("job {}: {entity}: {message}", job.job_id),
            )
        };
        if payload.force_unlock && !flow_deploy::may_force_unlock(job.actor.as_deref(), &self.settings.flows)
        {
            return Ok(refuse(
                "force_unlock_not_allowed",
                format!(
                    "actor {:?} may not force_unlock a flow (FLOW_FORCE_UNLOCK_ACTORS does not list it)",
                    job.actor.as_deref().unwrap_or("")
                ),
            ));
        }
        let (configuration, _) = flow_deploy::deploy_configuration(payload);
        let hash = configuration_hash(&configuration);
        let short = &hash[..12];
        let (flow, published) = match self.flow(job, payload).await? {
            FlowState::Unknown => return Ok(refuse("unknown_flow", "Genesys knows no such flow".into())),
            FlowState::ToCreate => {
                let create = payload.create.as_ref().expect("a flow to create has `create`");
                let to = format!(
                    "a new flow {:?} ({}), {} (configuration {short}…)",
                    create.name,
                    create.flow_type,
                    if payload.publish {
                        "published"
                    } else {
                        "checked in, not published"
                    }
                );
                let published = payload.publish.then(|| planned_version(&configuration, &hash));
                self.flows
                    .insert(entity.clone(), FlowState::Created { published });
                return Ok(Planned::change(line, child, job, Some("no such flow".into()), to));
            }
            FlowState::Created { published } => {
                // Deployed again after the deploy that creates it: compared with what that one
                // publishes; nobody else can hold its lock yet.
                if payload.publish && flow_deploy::unchanged(published.as_ref(), &hash) {
                    return Ok(Planned::no_op(
                        line,
                        child,
                        job,
                        format!("published by the deploy before (configuration {short}…)"),
                    ));
                }
                let from = match &published {
                    Some(p) => format!(
                        "published by the deploy before (configuration {}…)",
                        &p.hash[..12]
                    ),
                    None => "checked in by the deploy before".into(),
                };
                if payload.publish {
                    let published = Some(planned_version(&configuration, &hash));
                    self.flows
                        .insert(entity.clone(), FlowState::Created { published });
                }
                return Ok(Planned::change(
                    line,
                    child,
                    job,
                    Some(from),
                    new_version(payload.publish, short),
                ));
            }
            FlowState::Found { flow, published } => (flow, published),
        };
        if let Some(expected) = &payload.expected_version {
            if flow.saved() != Some(expected.as_str()) {
                return Ok(refuse(
                    "expected_version_mismatch",
                    format!("expected saved version {expected:?}, found {:?}", flow.saved()),
                ));
            }
        }
        let mut published_now = None;
        if payload.publish {
            published_now = match published {
                Some(known) => known,
                None => {
                    let read = flow_deploy::published_configuration(self.genesys, self.retry(), &flow).await;
                    read.result.map_err(|source| PlanError::Genesys {
                        job_id: job.job_id,
                        entity: entity.clone(),
                        what: "the published configuration".into(),
                        source: Box::new(source),
                    })?
                }
            };
            self.remember_published(&entity, published_now.clone());
            if flow_deploy::unchanged(published_now.as_ref(), &hash) {
                let version = published_now.as_ref().map_or("?", |p| p.version.as_str());
                return Ok(Planned::no_op(
                    line,
                    child,
                    job,
                    format!("published {version} (configuration {short}…)"),
                ));
            }
        }
        let from = match (&published_now, payload.publish) {
            (Some(published), true) => format!(
                "published {} (configuration {}…)",
                published.version,
                &published.hash[..12]
            ),
            (None, true) => "nothing published".into(),
            (_, false) => match flow.checked_in() {
                Some(version) => format!("checked in {version}"),
                None => "nothing checked in".into(),
            },
        };
        let mut planned = Planned::change(line, child, job, Some(from), new_version(payload.publish, short));
        if let Some(holder) = flow_deploy::blocking_lock(&flow, &self.genesys) {
            if payload.force_unlock {
                planned.note = Some(format!(
                    "breaks the lock {holder} holds (force_unlock by actor {:?})",
                    job.actor.as_deref().unwrap_or("")
                ));
            } else {
                let patience = flow_deploy::lock_wait(payload, &self.settings.flows);
                if patience.is_zero() {
                    return Ok(refuse(
                        "flow_locked",
                        format!(
                            "flow is locked by {holder}; the deploy would be a conflict at once ({})",
                            if payload.on_locked.is_some() {
                                "on_locked: conflict"
                            } else {
                                "FLOW_LOCK_WAIT_SECS is 0"
                            }
                        ),
                    ));
                }
                planned.verdict = Verdict::Deferred;
                planned.code = Some("flow_locked".into());
                planned.reason = Some(format!(
                    "job {}: {entity}: flow is locked by {holder}; the deploy waits up to {}s for the lock, then deploys (a conflict if it is still held)",
                    job.job_id,
                    patience.as_secs()
                ));
            }
        }
        // The blast radius: what uses the flow. As in the deploy, a failed read does not stop it.
        let read = flow_deploy::consumers(self.genesys, self.retry(), &flow).await;
        match read.result {
            Ok(found) => {
                planned.consumers = Some(found.listed);
                planned.consumers_omitted = (found.omitted > 0).then_some(found.omitted);
            }
            Err(err) => {
                let note = format!("what uses the flow could not be read: {err}");
                planned.note = Some(match planned.note.take() {
                    Some(before) => format!("{before}; {note}"),
                    None => note,
                });
            }
        }
        if payload.publish {
            self.remember_published(&entity, Some(planned_version(&configuration, &hash)));
        }
        Ok(planned)
    }

    fn remember_published(&mut self, entity: &str, now: Option<Published>) {
        if let Some(FlowState::Found { published, .. }) = self.flows.get_mut(entity) {
            *published = Some(now);
        }
    }
}

/// What a deploy leaves: a new version, published or only checked in.
fn new_version(publish: bool, short_hash: &str) -> String {
    format!(
        "a new version, {} (configuration {short_hash}…)",
        if publish {
            "published"
        } else {
            "checked in, not published"
        }
    )
}

/// What a planned deploy would publish: its version is not known before it is saved.
fn planned_version(configuration: &serde_json::Value, hash: &str) -> Published {
    Published {
        version: "(planned)".into(),
        configuration: configuration.clone(),
        hash: hash.to_string(),
    }
}

/// Who a user-facing line names.
pub fn describe_where(planned: &Planned) -> String {
    match planned.child {
        Some(child) => format!("line {}#{child}", planned.line),
        None => format!("line {}", planned.line),
    }
}

/// The line `plan` prints for a job.
pub fn describe(planned: &Planned) -> String {
    let mut detail = match planned.verdict {
        Verdict::Change if planned.from.is_none() => planned.to.clone().unwrap_or_default(),
        Verdict::Change => format!(
            "{} → {}",
            planned.from.as_deref().unwrap_or("?"),
            planned.to.as_deref().unwrap_or("?")
        ),
        Verdict::NoOp => match (&planned.code, &planned.reason) {
            (Some(code), Some(reason)) => format!("{code}: {reason}"),
            _ => format!("already {}", planned.to.as_deref().unwrap_or("so")),
        },
        Verdict::Deferred | Verdict::Blocked => {
            let mut text = format!(
                "{}: {}",
                planned.code.as_deref().unwrap_or("?"),
                planned.reason.as_deref().unwrap_or("")
            );
            if let (Some(from), Some(to)) = (&planned.from, &planned.to) {
                text.push_str(&format!(" [{from} → {to}]"));
            }
            text
        }
    };
    if let Some(note) = &planned.note {
        detail.push_str(&format!(" ({note})"));
    }
    if let Some(consumers) = &planned.consumers {
        let mut names: Vec<String> = consumers
            .iter()
            .map(|c| {
                format!(
                    "{} ({})",
                    c.name.as_deref().unwrap_or(&c.id),
                    c.kind.as_deref().unwrap_or("?")
                )
            })
            .collect();
        if let Some(omitted) = planned.consumers_omitted {
            names.push(format!("and {omitted} more"));
        }
        if names.is_empty() {
            detail.push_str("; used by nothing");
        } else {
            detail.push_str(&format!("; used by {}", names.join(", ")));
        }
    }
    format!(
        "{:<10} {:<8} {:<18} {}  {detail}",
        describe_where(planned),
        planned.verdict.as_str(),
        planned.kind.as_deref().unwrap_or("-"),
        planned.entity.as_deref().unwrap_or("-"),
    )
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plan: {} job(s): {} change, {} no-op, {} deferred, {} blocked; {} Genesys request(s), {} throttled",
            self.jobs,
            self.change,
            self.no_op,
            self.deferred,
            self.blocked,
            self.genesys_requests,
            self.throttled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::IfInteracting;
    use serde_json::json;

    const USER: &str = "8f1c2b4e-7d6a-4b3c-9e2f-1a0b9c8d7e6f";

    #[test]
    fn a_batch_is_planned_as_its_children_with_its_presence_policy() {
        let child = json!({"job_id": "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a61", "kind": "agent.status",
            "payload": {"user_id": USER, "presence": "Break"}});
        let own = json!({"job_id": "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a62", "kind": "agent.status",
            "payload": {"user_id": USER, "presence": "Break", "if_interacting": "apply"}});
        let batch = json!({"job_id": "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a63", "kind": "batch",
            "payload": {"jobs": [child, own, 42], "presence_policy": {"if_interacting": "defer"}}});
        let input = format!("\n{batch}\n{{oops\n");
        let items = parse(&input, &job::Limits::uniform(1 << 20));
        let placed: Vec<(usize, Option<usize>)> = items.iter().map(|i| (i.line, i.child)).collect();
        assert_eq!(placed, vec![(2, Some(0)), (2, Some(1)), (2, Some(2)), (3, None)]);
        let policy = |item: &Item| match &item.job.as_ref().unwrap().payload {
            Payload::AgentStatus(p) => p.policy().if_interacting,
            _ => panic!("agent.status"),
        };
        assert_eq!(policy(&items[0]), IfInteracting::Defer, "the batch's policy");
        assert_eq!(policy(&items[1]), IfInteracting::Apply, "the child's own");
        assert_eq!(items[2].job.as_ref().unwrap_err().code, "invalid_job");
        assert_eq!(items[3].job.as_ref().unwrap_err().code, "malformed_json");
    }

    #[test]
    fn lines_name_the_place_verdict_entity_and_detail() {
        let planned = Planned {
            line: 4,
            child: Some(17),
            job_id: Some(Uuid::nil()),
            kind: Some("agent.status".into()),
            entity: Some(format!("user:{USER}")),
            verdict: Verdict::Change,
            from: Some("Offline".into()),
            to: Some("On Queue".into()),
            code: None,
            reason: None,
            note: None,
            consumers: None,
            consumers_omitted: None,
        };
        let line = describe(&planned);
        assert!(line.starts_with("line 4#17  change"), "{line}");
        assert!(
            line.ends_with(&format!("user:{USER}  Offline → On Queue")),
            "{line}"
        );
        let json = serde_json::to_value(&planned).unwrap();
        assert_eq!(json["verdict"], "change");
        assert!(json.get("code").is_none(), "{json}");
        let summary = Summary {
            jobs: 3,
            change: 1,
            no_op: 1,
            blocked: 1,
            genesys_requests: 2,
            ..Summary::default()
        };
        assert_eq!(serde_json::to_value(&summary).unwrap()["no-op"], 1);
        assert_eq!(
            summary.to_string(),
            "plan: 3 job(s): 1 change, 1 no-op, 0 deferred, 1 blocked; 2 Genesys request(s), 0 throttled"
        );
    }
}
