//! Stage 5: applying a job to Genesys Cloud, one module per job kind.
//!
//! An applier reads and writes through the [`GenesysClient`] under the [`RetryPolicy`] and
//! reports a [`Verdict`]: the outcome and what the audit event needs to say about it.

pub mod agent_status;
pub mod bulk;
pub mod flow_deploy;
pub mod interaction_create;
pub mod interaction_status;
pub mod users;

use serde_json::Value;
use uuid::Uuid;

use crate::events::{EventError, Outcome};
use crate::genesys::{ErrorClass, GenesysError, LaneClient};
use crate::job::{Job, Payload};
use crate::retry::RetryPolicy;

/// The verdict on a job: its outcome (applied, or refused, duplicate, failed, …) and what its
/// audit event says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub previous_state: Option<Value>,
    pub new_state: Option<Value>,
    /// HTTP status of the deciding Genesys call.
    pub genesys_status: Option<u16>,
    pub error: Option<EventError>,
    /// Attempts of the call that took the most.
    pub attempts: u32,
    /// The entity the job turned out to change, when it differs from the job's own (a created
    /// workitem is only named once it exists).
    pub entity: Option<String>,
    /// A `failed` outcome that may succeed later (transient errors): worth a delayed retry.
    pub retryable: bool,
}

impl Verdict {
    /// An outcome decided without a change (conflict, validation against Genesys state).
    pub fn refused(outcome: Outcome, code: &str, message: String) -> Self {
        Self {
            outcome,
            previous_state: None,
            new_state: None,
            genesys_status: None,
            error: Some(EventError::new(code, message)),
            attempts: 1,
            entity: None,
            retryable: false,
        }
    }

    /// The outcome of a Genesys error that ended the job.
    pub fn from_error(job_id: Uuid, entity: &str, err: &GenesysError, attempts: u32) -> Self {
        let outcome = match (err, err.class()) {
            // Credentials are the operator's to fix; the job itself is fine: replay it later.
            // A 401 that outlived a fresh grant is the same: the credentials, not the job.
            (GenesysError::Auth { .. } | GenesysError::AuthNetwork(_), _) => Outcome::Failed,
            (GenesysError::Api { status: 401, .. }, _) => Outcome::Failed,
            (_, ErrorClass::Permanent) => Outcome::Rejected,
            (_, ErrorClass::Conflict) => Outcome::Conflict,
            (_, ErrorClass::Transient | ErrorClass::RateLimited) => Outcome::Failed,
        };
        Self {
            outcome,
            previous_state: None,
            new_state: None,
            genesys_status: err.status(),
            error: Some(EventError::new(
                err.code(),
                format!("job {job_id}: {entity}: {err}"),
            )),
            attempts,
            entity: None,
            retryable: matches!(err.class(), ErrorClass::Transient | ErrorClass::RateLimited)
                || matches!(err, GenesysError::AuthNetwork(_)),
        }
    }
}

/// Everything an applier needs.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The Genesys client in the job's lane: every call waits for the budget there.
    pub genesys: LaneClient<'a>,
    pub retry: &'a RetryPolicy,
    pub flows: &'a flow_deploy::FlowSettings,
    /// Present when `agent.status` changes are coalesced into bulk calls.
    pub bulk: Option<&'a bulk::BulkPresence>,
    /// Reads agents' state with the other jobs' reads (the presence policies).
    pub users: &'a crate::apply::users::UserReads,
}

/// What the pipeline knows of the job and its entity when it applies it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    /// A previous worker's lease expired mid-job: the change may already be in Genesys, so
    /// appliers read before they write.
    pub takeover: bool,
    /// The entity was changed within Genesys' consistency window: a read that shows it already
    /// in the requested state may be showing a state from before that change.
    pub changed_recently: bool,
}

/// Applies `job`.
///
/// Each kind's future is boxed: inline, the largest (a flow deploy) made every job's future
/// twice as large (~16 KB), and it is copied whenever a job is spawned or wrapped.
pub async fn apply(ctx: Context<'_>, job: &Job, known: Known) -> Verdict {
    match &job.payload {
        Payload::AgentStatus(payload) => {
            Box::pin(agent_status::apply(ctx, job, payload, known.takeover)).await
        }
        Payload::InteractionStatus(payload) => {
            Box::pin(interaction_status::apply(
                ctx,
                job,
                payload,
                known.changed_recently,
            ))
            .await
        }
        Payload::InteractionCreate(payload) => {
            Box::pin(interaction_create::apply(ctx, job, payload, known.takeover)).await
        }
        Payload::FlowDeploy(payload) => Box::pin(flow_deploy::apply(ctx, job, payload)).await,
        // The pipeline fans a batch out (crate::batch) instead of applying it.
        Payload::Batch(_) => Verdict::refused(
            Outcome::Rejected,
            "batch_not_applicable",
            format!("job {}: a batch is fanned out, not applied", job.job_id),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(status: u16, code: &str) -> GenesysError {
        GenesysError::Api {
            method: "PATCH".into(),
            path: "/api/v2/users/u/presences/purecloud".into(),
            status,
            code: code.into(),
            message: "m".into(),
            context_id: "c".into(),
            retry_after: None,
        }
    }

    #[test]
    fn genesys_errors_map_to_the_contract_outcomes() {
        let outcome =
            |status, code| Verdict::from_error(Uuid::nil(), "user:u", &api_error(status, code), 1).outcome;
        assert_eq!(outcome(404, "not.found"), Outcome::Rejected);
        assert_eq!(outcome(409, "pre.check.value.greater.than"), Outcome::Rejected);
        assert_eq!(outcome(409, "conflict"), Outcome::Conflict);
        assert_eq!(outcome(503, "service.unavailable"), Outcome::Failed);
        assert_eq!(outcome(429, "too.many.requests.retry.after"), Outcome::Failed);
        // Credentials that fail even after a fresh grant are the operator's to fix: replayable.
        assert_eq!(outcome(401, "bad.credentials"), Outcome::Failed);
    }

    #[test]
    fn error_messages_name_the_job_the_entity_and_the_cause() {
        let applied = Verdict::from_error(Uuid::nil(), "user:u", &api_error(404, "not.found"), 2);
        let error = applied.error.unwrap();
        assert_eq!(error.code, "genesys.not.found");
        assert!(error.message.contains(&Uuid::nil().to_string()));
        assert!(error.message.contains("user:u") && error.message.contains("404"));
        assert_eq!((applied.genesys_status, applied.attempts), (Some(404), 2));
    }
}
