//! Bulk presence: `agent.status` changes that need no per-agent precondition, arriving within
//! a short window, are sent together as one `PUT /api/v2/users/presences/bulk` (up to the
//! API's batch size), so a shift handover of thousands of agents costs tens of calls, not
//! thousands. Each job still waits for its own answer and keeps its own record, lock and events;
//! a user the bulk answer leaves out, or everyone in a bulk call that failed, is handed back to
//! the job, which applies its change alone (and so meets its own, precise error).
//!
//! Each lane ([`Lane`]) gathers its own calls, so batch children never hold a single job back.
//! A gathered call first waits for its budget token and keeps gathering while it waits: when
//! the budget is the bottleneck (a handover), calls leave full.
//!
//! Changes under a presence policy are read first, once per gathered call: one
//! `GET /api/v2/users?id=…` for up to 100 agents ([`crate::apply::users`]), then each is
//! decided ([`super::agent_status::decide`]) and those to write go in bulk calls of up to
//! `BULK_MAX`. A handover of 100 agents thus costs one read and two writes.
//!
//! A job paused while its change waits here must not be sent (docs/architecture.md,
//! "Controls"): right before a gathered read or write goes, each request in it opens its job's
//! [`CallGate`], and those refused are taken out (a call left empty is not made).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::agent_status::{decide, Decision};
use crate::apply::users::{self, AgentState, USERS_PATH, USERS_PER_READ};
use crate::genesys::{CallGate, GenesysClient, LaneClient};
use crate::job::PresencePolicy;
use crate::lane::Lane;
use crate::retry::RetryPolicy;

const BULK_PATH: &str = "/api/v2/users/presences/bulk";

/// What the bulk call did for one user.
#[derive(Debug)]
pub enum BulkOutcome {
    /// Set; the HTTP status and the presence's message as Genesys returned it, and the state
    /// read before (under a policy).
    Set {
        status: u16,
        message: Option<String>,
        attempts: u32,
        before: Option<AgentState>,
    },
    /// Read and decided without a write (unchanged, out of office, interacting).
    Decided {
        decision: Decision,
        before: AgentState,
        attempts: u32,
    },
    /// Not set by the bulk call: the job should apply its change alone.
    Left,
}

struct Request {
    user: Uuid,
    definition_id: String,
    message: Option<String>,
    /// Read and decide first, under this policy.
    policy: Option<PresencePolicy>,
    /// The job's gate ([`LaneClient::gate`]): this task sends on the job's behalf.
    gate: Option<CallGate>,
    reply: oneshot::Sender<BulkOutcome>,
}

impl Request {
    /// This change, kept in the call about to be sent when its job's gate opens (or it has
    /// none); one refused is answered `Left` and left out: its job was paused and is gone, or,
    /// should it still wait, meets its own gate when it applies its change alone.
    fn opens(self) -> Option<Self> {
        if self.gate.as_ref().is_none_or(CallGate::open) {
            return Some(self);
        }
        let _ = self.reply.send(BulkOutcome::Left);
        None
    }
}

/// Gathers presence changes into bulk calls; one per worker process.
#[derive(Debug, Clone)]
pub struct BulkPresence {
    /// Per lane, indexed like [`Lane`]: single, batch.
    lanes: [mpsc::Sender<Request>; 2],
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetPresence {
    id: String,
    #[serde(default)]
    message: Option<String>,
}

impl BulkPresence {
    /// Starts the gathering tasks: a call goes out `window` after its first change, once its
    /// budget token is there, or as soon as `max` changes are waiting.
    pub fn start(genesys: Arc<GenesysClient>, retry: RetryPolicy, window: Duration, max: usize) -> Self {
        let lane = |lane| {
            let (requests, incoming) = mpsc::channel::<Request>(max.max(1) * 4);
            tokio::spawn(gather(genesys.clone(), lane, retry, window, max, incoming));
            requests
        };
        Self {
            lanes: [lane(Lane::Single), lane(Lane::Batch)],
        }
    }

    /// Sets `user`'s presence as part of the next bulk call of `lane`; with a `policy`, reads
    /// the agent's state first (with the call's other reads) and decides. `gate`: the job's
    /// ([`LaneClient::gate`]), opened right before a call carrying the change goes; a change
    /// whose gate refuses is not sent (`Left`).
    pub async fn set(
        &self,
        lane: Lane,
        gate: Option<CallGate>,
        user: Uuid,
        definition_id: &str,
        message: Option<&str>,
        policy: Option<PresencePolicy>,
    ) -> BulkOutcome {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            user,
            definition_id: definition_id.to_string(),
            message: message.map(str::to_string),
            policy,
            gate,
            reply,
        };
        if self.lanes[lane.index()].send(request).await.is_err() {
            return BulkOutcome::Left;
        }
        answer.await.unwrap_or(BulkOutcome::Left)
    }
}

async fn gather(
    genesys: Arc<GenesysClient>,
    lane: Lane,
    retry: RetryPolicy,
    window: Duration,
    max: usize,
    mut incoming: mpsc::Receiver<Request>,
) {
    // The batch lane's previous call, while it reads and writes.
    let mut previous: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(first) = incoming.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        // A call gathers one write's worth. In the batch lane (a handover, bound by the budget)
        // a call waiting for its token, or for the previous call, takes changes read first up
        // to a read's worth, written in calls of `max`: it reads once for two writes. Single
        // jobs' calls stay one write's worth (a read for each), for latency.
        let limit = |batch: &[Request]| {
            if lane == Lane::Batch && batch.iter().any(|r| r.policy.is_some()) {
                USERS_PER_READ.max(max)
            } else {
                max
            }
        };
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, incoming.recv()).await {
                Ok(Some(request)) => batch.push(request),
                Ok(None) | Err(_) => break,
            }
        }
        // In the batch lane a call asks for its token only once the previous one has written,
        // gathering meanwhile: a token taken earlier would leave with the few jobs not waiting
        // on the previous call, and a handover under a policy would cost a read per 50 agents
        // instead of per 100. Single jobs' calls overlap, for latency.
        if let Some(mut running) = previous.take() {
            loop {
                if batch.len() >= limit(&batch) {
                    let _ = (&mut running).await;
                    break;
                }
                tokio::select! {
                    _ = &mut running => break,
                    Some(request) = incoming.recv() => batch.push(request),
                }
            }
        }
        // The call's token, from a client of the pool; changes arriving meanwhile still join
        // the call, which is sent as that client.
        let paid = genesys
            .in_lane(lane)
            .prepay_gathering(BULK_PATH, &mut batch, &mut incoming, limit)
            .await;
        let paid = match paid {
            Ok(paid) => paid.client_id().to_string(),
            Err(err) => {
                tracing::warn!(users = batch.len(), error.message = %err, "No budget for a bulk presence call; each job applies its change alone.");
                for request in batch {
                    let _ = request.reply.send(BulkOutcome::Left);
                }
                continue;
            }
        };
        let genesys = genesys.clone();
        let running = tokio::spawn(async move {
            let pool = genesys.in_lane(lane);
            let paid = pool.pinned_to_client(&paid).expect("a client of the pool");
            read_and_send(paid, pool, &retry, batch, max).await
        });
        if lane == Lane::Batch {
            previous = Some(running);
        }
    }
}

/// Reads the agents whose changes come under a policy (one call), answers those decided
/// without a write, and sends the rest in calls of up to `max`. The token `gather` took from
/// client `paid` pays the first call, the read when there is one (or the first write, when
/// every change to read was paused).
async fn read_and_send(
    paid: LaneClient<'_>,
    pool: LaneClient<'_>,
    retry: &RetryPolicy,
    mut batch: Vec<Request>,
    max: usize,
) {
    let mut prepaid = Some(paid);
    let mut states = None;
    if batch.iter().any(|r| r.policy.is_some()) {
        let first = prepaid.take().expect("the first call is paid");
        // The read's gates are asked once it may go: after a pause of its family is waited out.
        if let Err(error) = first.family_clear(USERS_PATH).await {
            tracing::warn!(users = batch.len(), error.message = %error, "No budget to read agents' state for a bulk call; each job applies its change alone.");
            for request in batch {
                let _ = request.reply.send(BulkOutcome::Left);
            }
            return;
        }
        // The changes read go in this call; the others open their gates when written.
        batch = batch
            .into_iter()
            .filter_map(|r| if r.policy.is_some() { r.opens() } else { Some(r) })
            .collect();
        let mut to_read: Vec<Uuid> = batch
            .iter()
            .filter(|r| r.policy.is_some())
            .map(|r| r.user)
            .collect();
        to_read.sort_unstable();
        to_read.dedup();
        if to_read.is_empty() {
            // Every change to read was paused: no read, its token pays the first write.
            prepaid = Some(first);
        } else {
            crate::telemetry::users_read(to_read.len());
            match users::read(first, true, pool, retry, &to_read).await {
                Ok(read) => states = Some(read),
                Err(error) => {
                    tracing::warn!(users = to_read.len(), error.message = %error, "Reading agents' state for a bulk call failed; each job applies its change alone.");
                    for request in batch {
                        let _ = request.reply.send(BulkOutcome::Left);
                    }
                    return;
                }
            }
        }
    }
    let mut to_write = Vec::with_capacity(batch.len());
    for request in batch {
        let Some(policy) = request.policy else {
            to_write.push((request, None));
            continue;
        };
        let read = states.as_ref().expect("read above");
        // A user Genesys does not know is left to the job, whose own call meets the 404.
        let Some(state) = read.found.get(&request.user).cloned() else {
            let _ = request.reply.send(BulkOutcome::Left);
            continue;
        };
        match decide(
            &state,
            policy,
            &request.definition_id,
            request.message.as_deref(),
            None,
        ) {
            Decision::Write => to_write.push((request, Some((state, read.attempts)))),
            decision => {
                let _ = request.reply.send(BulkOutcome::Decided {
                    decision,
                    before: state,
                    attempts: read.attempts,
                });
            }
        }
    }
    let mut rest = to_write.into_iter().peekable();
    while rest.peek().is_some() {
        let call: Vec<_> = rest.by_ref().take(max).collect();
        // A call whose changes were all paused leaves its token to the next.
        prepaid = send(prepaid.take(), pool, retry, call).await;
    }
}

/// Sends one bulk call: its first attempt as client `paid` when `gather` already took that
/// client's token, else with a token taken now; any retry through the `pool`. The gates of
/// its changes are asked once its token is there, right before it goes: those refused are
/// left out, and a call left empty is not made (its token is returned, unused).
async fn send<'a>(
    paid: Option<LaneClient<'a>>,
    pool: LaneClient<'a>,
    retry: &RetryPolicy,
    batch: Vec<(Request, Option<(AgentState, u32)>)>,
) -> Option<LaneClient<'a>> {
    let ready = async {
        let paid = match paid {
            Some(paid) => paid,
            None => pool.prepay(BULK_PATH).await.map_err(|err| err.to_string())?,
        };
        paid.family_clear(BULK_PATH)
            .await
            .map_err(|err| err.to_string())?;
        Ok::<_, String>(paid)
    };
    let paid = match ready.await {
        Ok(paid) => paid,
        Err(error) => {
            tracing::warn!(users = batch.len(), error.message = %error, "No budget for a bulk presence call; each job applies its change alone.");
            for (request, _) in batch {
                let _ = request.reply.send(BulkOutcome::Left);
            }
            return None;
        }
    };
    // Changes read in this call's read opened their gates then, and stay.
    let batch: Vec<_> = batch
        .into_iter()
        .filter_map(|(request, read)| Some((request.opens()?, read)))
        .collect();
    if batch.is_empty() {
        return Some(paid);
    }
    crate::telemetry::bulk_call(batch.len());
    let body: Vec<Value> = batch
        .iter()
        .map(|(r, _)| {
            let mut item =
                json!({"id": r.user, "source": "PURECLOUD", "presenceDefinition": {"id": r.definition_id}});
            if let Some(message) = &r.message {
                item["message"] = json!(message);
            }
            item
        })
        .collect();
    let body = &Value::Array(body);
    let sent = retry
        .run(|attempt| async move {
            match attempt {
                1 => paid.put_prepaid::<Vec<SetPresence>>(BULK_PATH, body).await,
                _ => pool.put::<Vec<SetPresence>>(BULK_PATH, body).await,
            }
        })
        .await;
    tracing::debug!(
        users = batch.len(),
        attempts = sent.attempts,
        "Bulk presence call."
    );
    match sent.result {
        Ok(reply) => {
            for (request, read) in batch {
                let set = reply
                    .body
                    .iter()
                    .find(|p| p.id.eq_ignore_ascii_case(&request.user.to_string()));
                let outcome = match set {
                    Some(presence) => BulkOutcome::Set {
                        status: reply.status,
                        message: presence.message.clone(),
                        attempts: sent.attempts.max(read.as_ref().map_or(1, |r| r.1)),
                        before: read.map(|r| r.0),
                    },
                    None => BulkOutcome::Left,
                };
                let _ = request.reply.send(outcome);
            }
        }
        Err(error) => {
            tracing::warn!(users = batch.len(), error.message = %error, "Bulk presence call failed; each job applies its change alone.");
            for (request, _) in batch {
                let _ = request.reply.send(BulkOutcome::Left);
            }
        }
    }
    None
}
