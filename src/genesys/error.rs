//! Genesys errors and their classification (docs/architecture.md, section 4.7).
//!
//! The class drives what happens next: transient errors are retried with backoff, rate-limited
//! ones wait without spending an attempt, conflicts are reported, permanent ones reject the job.

use std::time::Duration;

/// What an error means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Will not succeed by retrying: bad input, missing permission, unknown entity.
    Permanent,
    /// May succeed later: 408, 5xx (but 501), network errors.
    Transient,
    /// 429: wait for `Retry-After`; never charged to the job's attempts.
    RateLimited,
    /// A concurrent change (a 409 that is not a `pre.check.*` validation failure).
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum GenesysError {
    /// The API answered with an error body.
    #[error("{method} {path} returned {status} {code}: {message} (contextId {context_id})")]
    Api {
        method: String,
        path: String,
        status: u16,
        code: String,
        message: String,
        context_id: String,
        retry_after: Option<Duration>,
    },
    /// No usable answer: connection refused, reset, timed out.
    #[error("{method} {path} failed: {source}")]
    Network {
        method: String,
        path: String,
        /// False when the request provably never left (connect error).
        maybe_sent: bool,
        #[source]
        source: reqwest::Error,
    },
    /// The login host refused the client-credentials grant.
    #[error("OAuth token request returned {status} {error}: {description}")]
    Auth {
        status: u16,
        error: String,
        description: String,
    },
    /// The login host could not be reached.
    #[error("OAuth token request failed: {0}")]
    AuthNetwork(#[source] reqwest::Error),
    /// The fleet-wide budget could not be consulted (Redis unreachable): nothing was sent.
    #[error("the shared rate-limit budget is unavailable: {0}")]
    Budget(String),
    /// The call's route family is paused by a limit other integrations share, for longer than a
    /// call waits: nothing was sent, the job waits in a retry queue.
    #[error("{family} calls are paused for {wait:?} by an org-wide limit other integrations share")]
    FamilyPaused { family: String, wait: Duration },
    /// The job was paused before anything was sent for it (its [`super::CallGate`] was
    /// abandoned): this request was not sent. The pipeline drops such a job's future and runs it
    /// again after the resume, so this is seldom seen; transient, as the job will be.
    #[error("{method} {path}: the job was paused before its first Genesys call; not sent")]
    Abandoned { method: String, path: String },
    /// A success status with a body we cannot read.
    #[error("{method} {path} returned an unreadable body: {source}")]
    Decode {
        method: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Exhaustive status → class mapping; the `code` separates validation 409s from conflicts.
pub fn classify(status: u16, code: &str) -> ErrorClass {
    // Every status has an arm: a new case is a decision, not a fall-through.
    match status {
        429 => ErrorClass::RateLimited,
        408 => ErrorClass::Transient,
        409 if code.starts_with("pre.check.") => ErrorClass::Permanent,
        409 => ErrorClass::Conflict,
        501 => ErrorClass::Permanent,
        500 | 502..=599 => ErrorClass::Transient,
        400..=407 | 410..=428 | 430..=499 => ErrorClass::Permanent,
        // Not an error status: a client that treats it as one has misread the exchange.
        0..=399 | 600..=u16::MAX => ErrorClass::Permanent,
    }
}

impl GenesysError {
    pub fn class(&self) -> ErrorClass {
        match self {
            GenesysError::Api { status, code, .. } => classify(*status, code),
            GenesysError::Network { .. }
            | GenesysError::AuthNetwork(_)
            | GenesysError::Budget(_)
            | GenesysError::Abandoned { .. } => ErrorClass::Transient,
            GenesysError::FamilyPaused { .. } => ErrorClass::RateLimited,
            GenesysError::Auth { status, .. } => match status {
                429 => ErrorClass::RateLimited,
                500..=599 => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            GenesysError::Decode { .. } => ErrorClass::Permanent,
        }
    }

    /// HTTP status of the deciding call, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            GenesysError::Api { status, .. } | GenesysError::Auth { status, .. } => Some(*status),
            GenesysError::Network { .. }
            | GenesysError::AuthNetwork(_)
            | GenesysError::Budget(_)
            | GenesysError::FamilyPaused { .. }
            | GenesysError::Abandoned { .. }
            | GenesysError::Decode { .. } => None,
        }
    }

    /// A stable code for events and dead letters: the Genesys code where there is one.
    pub fn code(&self) -> String {
        match self {
            GenesysError::Api { code, .. } => format!("genesys.{code}"),
            GenesysError::Network { .. } => "genesys.network".into(),
            GenesysError::Auth { error, .. } => format!("genesys.auth.{error}"),
            GenesysError::AuthNetwork(_) => "genesys.auth.network".into(),
            GenesysError::Budget(_) => "budget.unavailable".into(),
            GenesysError::FamilyPaused { .. } => "budget.family_paused".into(),
            GenesysError::Abandoned { .. } => "genesys.abandoned".into(),
            GenesysError::Decode { .. } => "genesys.bad_response".into(),
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GenesysError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Genesys' "version must match": right after a checkin it is the checkin still settling
    /// (Terraform's CX-as-Code provider matches the same: a 409, or a 400 saying "does not match
    /// the current version").
    pub fn is_version_mismatch(&self) -> bool {
        match self {
            GenesysError::Api {
                status: 400 | 409,
                code,
                message,
                ..
            } => code.contains("version.mismatch") || message.contains("does not match the current version"),
            _ => false,
        }
    }

    /// Architect refusing an action while another operation on the flow runs.
    pub fn is_operation_in_progress(&self) -> bool {
        matches!(self, GenesysError::Api { status: 409, code, .. } if code.contains("operation.in.progress"))
    }

    /// True when the request may have been applied although no success was seen: a write that
    /// failed this way must be settled by reading Genesys before it is sent again.
    pub fn may_have_applied(&self) -> bool {
        match self {
            GenesysError::Network { maybe_sent, .. } => *maybe_sent,
            GenesysError::Api { status, .. } => *status >= 500,
            GenesysError::Auth { .. }
            | GenesysError::AuthNetwork(_)
            | GenesysError::Budget(_)
            | GenesysError::FamilyPaused { .. }
            | GenesysError::Abandoned { .. }
            | GenesysError::Decode { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_design_classes() {
        for s in [408, 500, 502, 503, 504] {
            assert_eq!(classify(s, ""), ErrorClass::Transient, "{s}");
        }
        for s in [400, 401, 403, 404, 413, 415, 422, 501] {
            assert_eq!(classify(s, ""), ErrorClass::Permanent, "{s}");
        }
        assert_eq!(
            classify(429, "too.many.requests.retry.after"),
            ErrorClass::RateLimited
        );
    }

    #[test]
    fn a_request_of_an_abandoned_job_was_not_sent_and_the_job_runs_again() {
        let err = GenesysError::Abandoned {
            method: "PUT".into(),
            path: "/api/v2/users/presences/bulk".into(),
        };
        assert_eq!(err.class(), ErrorClass::Transient);
        assert!(!err.may_have_applied());
        assert_eq!(err.status(), None);
        assert_eq!(err.code(), "genesys.abandoned");
    }

    #[test]
    fn a_validation_409_is_permanent_and_other_409s_are_conflicts() {
        assert_eq!(
            classify(409, "pre.check.value.greater.than"),
            ErrorClass::Permanent
        );
        assert_eq!(classify(409, "conflict"), ErrorClass::Conflict);
    }
}
