//! Stage 5: applying a job to Genesys Cloud, one module per job kind.
//!
//! An applier reads and writes through the [`GenesysClient`] under the [`RetryPolicy`] and
//! reports an [`Applied`]: the outcome and what the audit event needs to say about it.

pub mod agent_status;

use serde_json::Value;
use uuid::Uuid;

use crate::events::{EventError, Outcome};
use crate::genesys::{ErrorClass, GenesysClient, GenesysError};
use crate::job::{Job, Payload};
use crate::retry::RetryPolicy;

/// What applying a job did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub outcome: Outcome,
    pub previous_state: Option<Value>,
    pub new_state: Option<Value>,
    /// HTTP status of the deciding Genesys call.
    pub genesys_status: Option<u16>,
    pub error: Option<EventError>,
    /// Attempts of the call that took the most.
    pub attempts: u32,
}

impl Applied {
    /// An outcome decided without a change (conflict, validation against Genesys state).
    pub fn refused(outcome: Outcome, code: &str, message: String) -> Self {
        Self {
            outcome,
            previous_state: None,
            new_state: None,
            genesys_status: None,
            error: Some(EventError {
                code: code.to_string(),
                message,
            }),
            attempts: 1,
        }
    }

    /// The outcome of a Genesys error that ended the job.
    pub fn from_error(job_id: Uuid, entity: &str, err: &GenesysError, attempts: u32) -> Self {
        let outcome = match (err, err.class()) {
            // Credentials are the operator's to fix; the job itself is fine: replay it later.
            (GenesysError::Auth { .. } | GenesysError::AuthNetwork(_), _) => Outcome::Failed,
            (_, ErrorClass::Permanent) => Outcome::Rejected,
            (_, ErrorClass::Conflict) => Outcome::Conflict,
            (_, ErrorClass::Transient | ErrorClass::RateLimited) => Outcome::Failed,
        };
        Self {
            outcome,
            previous_state: None,
            new_state: None,
            genesys_status: err.status(),
            error: Some(EventError {
                code: err.code(),
                message: format!("job {job_id}: {entity}: {err}"),
            }),
            attempts,
        }
    }
}

/// Everything an applier needs.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub genesys: &'a GenesysClient,
    pub retry: &'a RetryPolicy,
}

/// Applies `job`. `takeover` is set when a previous worker's lease expired mid-job: the change
/// may already be in Genesys, so appliers read before they write.
pub async fn apply(ctx: Context<'_>, job: &Job, takeover: bool) -> Applied {
    match &job.payload {
        Payload::AgentStatus(payload) => agent_status::apply(ctx, job, payload, takeover).await,
    }
}
