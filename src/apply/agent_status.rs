//! `agent.status`: set an agent's presence (and optionally routing status).
//!
//! `PATCH /api/v2/users/{userId}/presences/purecloud` with the definition id the presence name
//! resolves to, then `PUT /api/v2/users/{userId}/routingstatus` when `routing_status` is given.
//! The API has no ETag on presence, so `expected_current` is checked by reading the presence
//! first: a mismatch is a `conflict` and nothing is written.

use serde::Deserialize;
use serde_json::{json, Value};

use super::bulk::BulkOutcome;
use super::{Context, Verdict};
use crate::events::Outcome;
use crate::genesys::presence::{PresenceDefinition, ResolveError};
use crate::genesys::GenesysError;
use crate::job::{AgentStatus, Job};

/// `UserPresence`, the fields read here.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserPresence {
    presence_definition: Option<DefinitionRef>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    modified_date: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefinitionRef {
    id: String,
    #[serde(default)]
    system_presence: Option<String>,
}

/// `RoutingStatus`, the fields read here.
#[derive(Debug, Clone, Deserialize)]
struct RoutingStatusBody {
    status: String,
}

pub async fn apply(ctx: Context<'_>, job: &Job, payload: &AgentStatus, takeover: bool) -> Verdict {
    let entity = job.entity();
    let user = payload.user_id;
    let fail = |err: &GenesysError, attempts| Verdict::from_error(job.job_id, &entity, err, attempts);
    let target = match ctx
        .genesys
        .client()
        .presence
        .resolve(ctx.genesys, &payload.presence)
        .await
    {
        Ok(definition) => definition,
        Err(ResolveError::Genesys(err)) => return fail(&err, 1),
        Err(err @ ResolveError::Unknown { .. }) => {
            return Verdict::refused(
                Outcome::Rejected,
                "unknown_presence",
                format!("job {}: {entity}: {err}", job.job_id),
            )
        }
        Err(err @ ResolveError::Deactivated { .. }) => {
            return Verdict::refused(
                Outcome::Rejected,
                "presence_deactivated",
                format!("job {}: {entity}: {err}", job.job_id),
            )
        }
    };
    let presence_path = format!("/api/v2/users/{user}/presences/purecloud");
    let mut attempts = 1;

    let mut previous_state = None;
    if payload.expected_current.is_some() || takeover {
        let read = ctx
            .retry
            .run(|_| ctx.genesys.get::<UserPresence>(&presence_path))
            .await;
        attempts = attempts.max(read.attempts);
        let current = match read.result {
            Ok(reply) => reply.body,
            Err(err) => return fail(&err, attempts),
        };
        let current_definition = match &current.presence_definition {
            Some(reference) => ctx
                .genesys
                .client()
                .presence
                .by_id(ctx.genesys, &reference.id)
                .await
                .ok()
                .flatten(),
            None => None,
        };
        previous_state = Some(describe_current(&current, current_definition.as_ref()));
        if let Some(expected) = &payload.expected_current {
            let holds = match (&current_definition, &current.presence_definition) {
                (Some(definition), _) => definition.answers_to(expected),
                (None, Some(reference)) => {
                    reference.id.eq_ignore_ascii_case(expected)
                        || reference.system_presence.as_deref().is_some_and(|s| {
                            crate::genesys::presence::normalize(s)
                                == crate::genesys::presence::normalize(expected)
                        })
                }
                (None, None) => false,
            };
            if !holds {
                let mut refused = Verdict::refused(
                    Outcome::Conflict,
                    "expected_current_mismatch",
                    format!(
                        "job {}: {entity}: expected current presence {expected:?}, found {}",
                        job.job_id,
                        previous_state
                            .as_ref()
                            .and_then(|s| s["presence"].as_str())
                            .unwrap_or("none")
                    ),
                );
                refused.previous_state = previous_state;
                refused.genesys_status = Some(200);
                refused.attempts = attempts;
                return refused;
            }
        }
        if takeover
            && current
                .presence_definition
                .as_ref()
                .is_some_and(|r| r.id == target.id)
            && payload.routing_status.is_none()
        {
            // A previous owner already made this change before its lease ran out.
            return Verdict {
                outcome: Outcome::Applied,
                new_state: Some(new_state(&target, current.message.as_deref(), None)),
                previous_state,
                genesys_status: Some(200),
                error: None,
                attempts,
                entity: None,
                retryable: false,
            };
        }
    }

    // Without a precondition to check, the change can travel with others in one bulk call;
    // a user the bulk call does not set falls through to a call of its own.
    if let (Some(bulk), None, None, false) = (
        ctx.bulk,
        &payload.expected_current,
        payload.routing_status,
        takeover,
    ) {
        if let BulkOutcome::Set {
            status,
            message,
            attempts,
        } = bulk
            .set(ctx.genesys.lane(), user, &target.id, payload.message.as_deref())
            .await
        {
            return Verdict {
                outcome: Outcome::Applied,
                previous_state: None,
                new_state: Some(new_state(&target, message.as_deref(), None)),
                genesys_status: Some(status),
                error: None,
                attempts,
                entity: None,
                retryable: false,
            };
        }
    }

    let mut body = json!({"presenceDefinition": {"id": target.id}});
    if let Some(message) = &payload.message {
        body["message"] = json!(message);
    }
    let write = ctx
        .retry
        .run(|_| ctx.genesys.patch::<UserPresence>(&presence_path, &body))
        .await;
    attempts = attempts.max(write.attempts);
    let written = match write.result {
        Ok(reply) => reply,
        Err(err) => return fail(&err, attempts),
    };
    let mut status = written.status;

    let mut routing = None;
    if let Some(wanted) = payload.routing_status {
        let path = format!("/api/v2/users/{user}/routingstatus");
        let body = json!({"status": wanted.as_str()});
        let put = ctx
            .retry
            .run(|_| ctx.genesys.put::<RoutingStatusBody>(&path, &body))
            .await;
        attempts = attempts.max(put.attempts);
        match put.result {
            Ok(reply) => {
                status = reply.status;
                routing = Some(reply.body.status);
            }
            Err(err) => return fail(&err, attempts),
        }
    }
    Verdict {
        outcome: Outcome::Applied,
        previous_state,
        new_state: Some(new_state(
            &target,
            written.body.message.as_deref(),
            routing.as_deref(),
        )),
        genesys_status: Some(status),
        error: None,
        attempts,
        entity: None,
        retryable: false,
    }
}

fn new_state(target: &PresenceDefinition, message: Option<&str>, routing_status: Option<&str>) -> Value {
    let mut state = json!({
        "presence": target.display_name(),
        "system_presence": target.system_presence,
        "presence_definition_id": target.id,
    });
    if let Some(message) = message.filter(|m| !m.is_empty()) {
        state["message"] = json!(message);
    }
    if let Some(routing) = routing_status {
        state["routing_status"] = json!(routing);
    }
    state
}

fn describe_current(current: &UserPresence, definition: Option<&PresenceDefinition>) -> Value {
    let reference = current.presence_definition.as_ref();
    let name = definition
        .map(PresenceDefinition::display_name)
        .or_else(|| reference.and_then(|r| r.system_presence.clone()));
    let mut state = json!({
        "presence": name,
        "system_presence": definition.map(|d| d.system_presence.clone()).or_else(|| reference.and_then(|r| r.system_presence.clone())),
        "presence_definition_id": reference.map(|r| r.id.clone()),
    });
    if let Some(message) = current.message.as_deref().filter(|m| !m.is_empty()) {
        state["message"] = json!(message);
    }
    if let Some(modified) = &current.modified_date {
        state["modified_date"] = json!(modified);
    }
    state
}
