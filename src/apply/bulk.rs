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

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::genesys::{GenesysClient, LaneClient};
use crate::lane::Lane;
use crate::retry::RetryPolicy;

const BULK_PATH: &str = "/api/v2/users/presences/bulk";

/// What the bulk call did for one user.
#[derive(Debug)]
pub enum BulkOutcome {
    /// Set; the HTTP status and the presence's message as Genesys returned it.
    Set {
        status: u16,
        message: Option<String>,
        attempts: u32,
    },
    /// Not set by the bulk call: the job should apply its change alone.
    Left,
}

struct Request {
    user: Uuid,
    definition_id: String,
    message: Option<String>,
    reply: oneshot::Sender<BulkOutcome>,
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

    /// Sets `user`'s presence as part of the next bulk call of `lane`.
    pub async fn set(
        &self,
        lane: Lane,
        user: Uuid,
        definition_id: &str,
        message: Option<&str>,
    ) -> BulkOutcome {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            user,
            definition_id: definition_id.to_string(),
            message: message.map(str::to_string),
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
    while let Some(first) = incoming.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, incoming.recv()).await {
                Ok(Some(request)) => batch.push(request),
                Ok(None) | Err(_) => break,
            }
        }
        // The call's token, from a client of the pool; changes arriving meanwhile still join
        // the call, which is sent as that client.
        let pool = genesys.in_lane(lane);
        let token = pool.prepay(BULK_PATH);
        tokio::pin!(token);
        let paid = loop {
            if batch.len() >= max {
                break token.await;
            }
            tokio::select! {
                paid = &mut token => break paid,
                Some(request) = incoming.recv() => batch.push(request),
            }
        };
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
        // Calls overlap: the next one gathers while this one is on the wire.
        tokio::spawn(async move {
            let pool = genesys.in_lane(lane);
            let paid = pool.pinned_to_client(&paid).expect("a client of the pool");
            send(paid, pool, &retry, batch).await
        });
    }
}

/// Sends a gathered call whose first attempt's budget token `gather` already took from client
/// `paid`: its first attempt as that client, any retry through the `pool`.
async fn send(paid: LaneClient<'_>, pool: LaneClient<'_>, retry: &RetryPolicy, batch: Vec<Request>) {
    crate::telemetry::bulk_call(batch.len());
    let body: Vec<Value> = batch
        .iter()
        .map(|r| {
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
            if attempt == 1 {
                paid.put_prepaid::<Vec<SetPresence>>(BULK_PATH, body).await
            } else {
                pool.put::<Vec<SetPresence>>(BULK_PATH, body).await
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
            for request in batch {
                let set = reply
                    .body
                    .iter()
                    .find(|p| p.id.eq_ignore_ascii_case(&request.user.to_string()));
                let outcome = match set {
                    Some(presence) => BulkOutcome::Set {
                        status: reply.status,
                        message: presence.message.clone(),
                        attempts: sent.attempts,
                    },
                    None => BulkOutcome::Left,
                };
                let _ = request.reply.send(outcome);
            }
        }
        Err(error) => {
            tracing::warn!(users = batch.len(), error.message = %error, "Bulk presence call failed; each job applies its change alone.");
            for request in batch {
                let _ = request.reply.send(BulkOutcome::Left);
            }
        }
    }
}
