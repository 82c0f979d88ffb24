//! What agents are doing, read in bulk: `GET /api/v2/users?id=…&expand=presence,routingStatus,
//! outOfOffice` answers for up to 100 users in one call (docs/architecture.md, section 4.8).
//!
//! Genesys resolves `expand` "with a best effort approach": a user that comes back without a
//! field that was asked for is read on its own, through that field's own route.
//!
//! The jobs in flight read through [`UserReads`]: in the single lane a read that finds no call
//! waiting for budget goes at once, alone (a job never waits for company); in the batch lane
//! (a handover) a read first waits `BULK_WINDOW_MS` for others, as a bulk write does. Reads
//! arriving meanwhile join the call, which waits for its budget token and keeps gathering while
//! it waits: when the budget is the bottleneck calls leave full.
//!
//! A gathered read carries each job's [`CallGate`]: right before it goes, the reads of jobs
//! paused meanwhile are taken out (docs/architecture.md, "Controls"), and a read left with
//! none is not made. A job reading through its own [`LaneClient`] opens its gate itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::genesys::{self, CallGate, GenesysClient, GenesysError, LaneClient};
use crate::lane::Lane;
use crate::retry::RetryPolicy;

/// Users per read: the most ids `GET /api/v2/users` takes (and the page size asked for).
pub const USERS_PER_READ: usize = 100;

pub(crate) const USERS_PATH: &str = "/api/v2/users";
const EXPAND: &str = "presence,routingStatus,outOfOffice";

/// `UserPresence`, the fields read here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPresence {
    pub presence_definition: Option<DefinitionRef>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub modified_date: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionRef {
    pub id: String,
    #[serde(default)]
    pub system_presence: Option<String>,
}

/// `RoutingStatus`, the field read here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoutingStatusBody {
    pub status: String,
}

#[derive(Debug, Clone, Deserialize)]
struct OutOfOffice {
    #[serde(default)]
    active: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct User {
    id: Uuid,
    presence: Option<UserPresence>,
    routing_status: Option<RoutingStatusBody>,
    out_of_office: Option<OutOfOffice>,
}

#[derive(Debug, Deserialize)]
struct UserListing {
    #[serde(default)]
    entities: Vec<User>,
}

/// What an agent is doing, as far as a change of presence is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentState {
    pub presence: UserPresence,
    /// `OFF_QUEUE`, `IDLE`, `INTERACTING`, `COMMUNICATING`, `NOT_RESPONDING`.
    pub routing_status: String,
    pub out_of_office: bool,
}

impl AgentState {
    /// On a live interaction: Genesys' routing status says so.
    pub fn interacting(&self) -> bool {
        matches!(self.routing_status.as_str(), "INTERACTING" | "COMMUNICATING")
    }
}

/// A read's answer: the states of the users Genesys knows (an unknown id is absent), and the
/// attempts the read took.
#[derive(Debug)]
pub struct States {
    pub found: HashMap<Uuid, AgentState>,
    pub attempts: u32,
}

/// Reads `users` (at most [`USERS_PER_READ`]) in one call, then on its own each user whose
/// expanded fields did not come back. `prepaid`: the call's budget token was taken already
/// ([`LaneClient::prepay`]) on `first`; retries and the reads on their own go through `pool`.
pub async fn read(
    first: LaneClient<'_>,
    prepaid: bool,
    pool: LaneClient<'_>,
    retry: &RetryPolicy,
    users: &[Uuid],
) -> Result<States, GenesysError> {
    debug_assert!(users.len() <= USERS_PER_READ);
    let mut path = format!("{USERS_PATH}?pageSize={USERS_PER_READ}&expand={EXPAND}");
    for user in users {
        path.push_str("&id=");
        path.push_str(&user.to_string());
    }
    let path = &path;
    let listed = retry
        .run(|attempt| async move {
            match (attempt, prepaid) {
                (1, true) => first.get_prepaid::<UserListing>(path).await,
                _ => pool.get::<UserListing>(path).await,
            }
        })
        .await;
    let mut attempts = listed.attempts;
    let mut found = HashMap::with_capacity(users.len());
    for user in listed.result?.body.entities {
        let (presence, routing, out_of_office) =
            match (user.presence, user.routing_status, user.out_of_office) {
                (Some(presence), Some(routing), Some(ooo)) => (presence, routing, ooo),
                (presence, routing, ooo) => {
                    let alone = read_alone(pool, retry, user.id, presence, routing, ooo).await?;
                    attempts = attempts.max(alone.1);
                    alone.0
                }
            };
        found.insert(
            user.id,
            AgentState {
                presence,
                routing_status: routing.status,
                out_of_office: out_of_office.active,
            },
        );
    }
    Ok(States { found, attempts })
}

/// The fields the listing left out, each from its own route.
async fn read_alone(
    pool: LaneClient<'_>,
    retry: &RetryPolicy,
    user: Uuid,
    presence: Option<UserPresence>,
    routing: Option<RoutingStatusBody>,
    out_of_office: Option<OutOfOffice>,
) -> Result<((UserPresence, RoutingStatusBody, OutOfOffice), u32), GenesysError> {
    let mut attempts = 1;
    let presence = or_read(
        pool,
        retry,
        presence,
        format!("/api/v2/users/{user}/presences/purecloud"),
        &mut attempts,
    )
    .await?;
    let routing = or_read(
        pool,
        retry,
        routing,
        format!("/api/v2/users/{user}/routingstatus"),
        &mut attempts,
    )
    .await?;
    let out_of_office = or_read(
        pool,
        retry,
        out_of_office,
        format!("/api/v2/users/{user}/outofoffice"),
        &mut attempts,
    )
    .await?;
    Ok(((presence, routing, out_of_office), attempts))
}

/// `have`, or else what `path` answers (the most attempts any read took in `attempts`).
async fn or_read<T: serde::de::DeserializeOwned>(
    pool: LaneClient<'_>,
    retry: &RetryPolicy,
    have: Option<T>,
    path: String,
    attempts: &mut u32,
) -> Result<T, GenesysError> {
    if let Some(have) = have {
        return Ok(have);
    }
    let read = retry.run(|_| pool.get::<T>(&path)).await;
    *attempts = (*attempts).max(read.attempts);
    Ok(read.result?.body)
}

/// One job's answer from a gathered read: its user's state (None: Genesys does not know the
/// user), or the read's error, shared by every job of the call.
pub type ReadAnswer = Result<(Option<AgentState>, u32), Arc<GenesysError>>;

struct Request {
    user: Uuid,
    /// The job's gate ([`LaneClient::gate`]): the gathered read is sent on the job's behalf.
    gate: Option<CallGate>,
    reply: oneshot::Sender<ReadAnswer>,
}

impl Request {
    /// This read, kept in the call about to be sent when its job's gate opens (or it has none);
    /// one refused is answered with [`GenesysError::Abandoned`] (its job is gone, as a rule)
    /// and left out.
    fn opens(self) -> Option<Self> {
        if self.gate.as_ref().is_none_or(CallGate::open) {
            return Some(self);
        }
        let _ = self.reply.send(Err(Arc::new(GenesysError::Abandoned {
            method: "GET".into(),
            path: USERS_PATH.into(),
        })));
        None
    }
}

/// Gathers the reads of the jobs in flight into bulk reads; one per worker process.
#[derive(Debug, Clone)]
pub struct UserReads {
    /// Per lane, indexed like [`Lane`].
    lanes: [mpsc::Sender<Request>; 2],
}

impl UserReads {
    /// `batch_window`: how long a read of the batch lane waits for others.
    pub fn start(genesys: Arc<GenesysClient>, retry: RetryPolicy, batch_window: Duration) -> Self {
        let lane = |lane| {
            let (requests, incoming) = mpsc::channel::<Request>(USERS_PER_READ * 4);
            let window = match lane {
                Lane::Single => Duration::ZERO,
                Lane::Batch => batch_window,
            };
            tokio::spawn(gather(genesys.clone(), lane, retry, window, incoming));
            requests
        };
        Self {
            lanes: [lane(Lane::Single), lane(Lane::Batch)],
        }
    }

    /// `user`'s state, read with the other reads of `lane` in flight. `gate`: the job's
    /// ([`LaneClient::gate`]), opened right before the read carrying this one goes; a read whose
    /// gate refuses is not sent ([`GenesysError::Abandoned`]).
    pub async fn read(&self, lane: Lane, gate: Option<CallGate>, user: Uuid) -> ReadAnswer {
        let stopping = || Arc::new(GenesysError::Budget("the worker is stopping".into()));
        let (reply, answer) = oneshot::channel();
        if self.lanes[lane.index()]
            .send(Request { user, gate, reply })
            .await
            .is_err()
        {
            return Err(stopping());
        }
        answer.await.unwrap_or_else(|_| Err(stopping()))
    }
}

async fn gather(
    genesys: Arc<GenesysClient>,
    lane: Lane,
    retry: RetryPolicy,
    window: Duration,
    mut incoming: mpsc::Receiver<Request>,
) {
    while let Some(first) = incoming.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < USERS_PER_READ {
            match incoming.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) if window.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, incoming.recv()).await {
                    Ok(Some(request)) => batch.push(request),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        let paid = genesys
            .in_lane(lane)
            .prepay_gathering(USERS_PATH, &mut batch, &mut incoming, |_| USERS_PER_READ)
            .await;
        let paid = match paid {
            Ok(paid) => paid.client_id().to_string(),
            Err(err) => {
                let err = Arc::new(genesys::budget_error(err));
                for request in batch {
                    let _ = request.reply.send(Err(err.clone()));
                }
                continue;
            }
        };
        let genesys = genesys.clone();
        // Reads overlap: the next one gathers while this one is on the wire.
        tokio::spawn(async move {
            let pool = genesys.in_lane(lane);
            let first = pool.pinned_to_client(&paid).expect("a client of the pool");
            // The gates are asked once the read may go: after a pause of its family is waited
            // out. A read whose jobs were all paused is not made; its token goes unused.
            if let Err(err) = first.family_clear(USERS_PATH).await {
                let err = Arc::new(err);
                for request in batch {
                    let _ = request.reply.send(Err(err.clone()));
                }
                return;
            }
            let batch: Vec<Request> = batch.into_iter().filter_map(Request::opens).collect();
            if batch.is_empty() {
                return;
            }
            let mut users: Vec<Uuid> = batch.iter().map(|r| r.user).collect();
            users.sort_unstable();
            users.dedup();
            crate::telemetry::users_read(users.len());
            match read(first, true, pool, &retry, &users).await {
                Ok(states) => {
                    for request in batch {
                        let state = states.found.get(&request.user).cloned();
                        let _ = request.reply.send(Ok((state, states.attempts)));
                    }
                }
                Err(err) => {
                    tracing::warn!(users = users.len(), error.message = %err, "Reading agents' state failed.");
                    let err = Arc::new(err);
                    for request in batch {
                        let _ = request.reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}
