//! `agent.status`: set an agent's presence (and optionally routing status).
//!
//! `PATCH /api/v2/users/{userId}/presences/purecloud` with the definition id the presence name
//! resolves to, then `PUT /api/v2/users/{userId}/routingstatus` when `routing_status` is given.
//! The API has no ETag on presence, so `expected_current` is checked by reading the presence
//! first: a mismatch is a `conflict` and nothing is written.
//!
//! The presence policies (README, "agent.status") read what the agent is doing first, with
//! other jobs' reads ([`crate::apply::users`]): an agent Out of Office is left alone
//! (`respect_out_of_office`), one on a live interaction is changed, skipped or deferred
//! (`if_interacting`), and one already in the target presence is not written to
//! (`skip_if_current`: `applied` with `unchanged`).

use serde_json::{json, Value};

use super::bulk::BulkOutcome;
use super::{Context, Verdict};
use crate::apply::users::{AgentState, RoutingStatusBody, UserPresence};
use crate::events::Outcome;
use crate::genesys::presence::{PresenceDefinition, ResolveError};
use crate::genesys::GenesysError;
use crate::job::{AgentStatus, IfInteracting, Job, PresencePolicy, RoutingStatus};

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
    let policy = payload.policy();
    // What the agent is doing, when a precondition or a policy needs it (with the defaults it
    // does: Out of Office is respected).
    let reads = reads_state(payload, takeover);
    // A conflict found on reading, with the state read as `previous_state`.
    let conflict = |code: &str, message: String, described: &Value, attempts: u32| {
        let mut refused = Verdict::refused(
            Outcome::Conflict,
            code,
            format!("job {}: {entity}: {message}", job.job_id),
        );
        refused.previous_state = Some(described.clone());
        refused.genesys_status = Some(200);
        refused.attempts = attempts;
        refused
    };
    // Applied without a write: `unchanged` when nothing needed changing (not after a takeover,
    // whose previous owner made the change).
    let already = |described: Value, attempts: u32, unchanged: bool| {
        let mut state_now = new_state(
            &target,
            described["message"].as_str(),
            payload.routing_status.and(described["routing_status"].as_str()),
        );
        if unchanged {
            state_now["unchanged"] = json!(true);
        }
        Verdict {
            outcome: Outcome::Applied,
            new_state: Some(state_now),
            previous_state: Some(described),
            genesys_status: Some(200),
            error: None,
            attempts,
            entity: None,
            retryable: false,
        }
    };
    // The verdict of a policy's decision other than a write.
    let decided = |decision: Decision, described: Value, attempts: u32| {
        match decision {
        Decision::OutOfOffice => conflict(
            "out_of_office",
            "the agent is Out of Office; left as is (respect_out_of_office)".into(),
            &described,
            attempts,
        ),
        Decision::Interacting { routing_status } => conflict(
            "agent_interacting",
            format!("the agent is on a live interaction (routing status {routing_status}); skipped (if_interacting: skip)"),
            &described,
            attempts,
        ),
        Decision::Deferred { routing_status } => {
            // Tried again after the retry delays, until `not_after`; once the delays run out
            // first, this conflict is the outcome.
            let mut deferred = conflict(
                "agent_interacting",
                format!("the agent is on a live interaction (routing status {routing_status}); deferred (if_interacting: defer)"),
                &described,
                attempts,
            );
            deferred.retryable = true;
            deferred
        }
        Decision::Unchanged => already(described, attempts, true),
        Decision::Write => unreachable!("a write is decided by writing"),
    }
    };

    // Without a precondition to check, the change can travel with others in one bulk call
    // (read, under a policy, with theirs); a user the bulk call does not set falls through to a
    // call of its own.
    if let (Some(bulk), None, None, false) = (
        ctx.bulk,
        &payload.expected_current,
        payload.routing_status,
        takeover,
    ) {
        let lane = ctx.genesys.lane();
        match bulk
            .set(
                lane,
                ctx.genesys.gate().cloned(),
                user,
                &target.id,
                payload.message.as_deref(),
                reads.then_some(policy),
            )
            .await
        {
            BulkOutcome::Set {
                status,
                message,
                attempts,
                before,
            } => {
                let previous_state = match &before {
                    Some(state) => Some(describe(ctx, state).await.0),
                    None => None,
                };
                return Verdict {
                    outcome: Outcome::Applied,
                    previous_state,
                    new_state: Some(new_state(&target, message.as_deref(), None)),
                    genesys_status: Some(status),
                    error: None,
                    attempts,
                    entity: None,
                    retryable: false,
                };
            }
            BulkOutcome::Decided {
                decision,
                before,
                attempts,
            } => return decided(decision, describe(ctx, &before).await.0, attempts),
            BulkOutcome::Left => {}
        }
    }

    let mut attempts = 1;
    let mut previous_state = None;
    // Read with the other jobs' reads, up to 100 agents a call. A user Genesys does not know
    // is left to the write, whose 404 says so.
    if reads {
        let (state, read_attempts) = match ctx
            .users
            .read(ctx.genesys.lane(), ctx.genesys.gate().cloned(), user)
            .await
        {
            Ok(answer) => answer,
            Err(err) => return fail(&err, 1),
        };
        attempts = attempts.max(read_attempts);
        if let Some(state) = state {
            let (described, current_definition) = describe(ctx, &state).await;
            if let Some(expected) = &payload.expected_current {
                if !presence_holds(current_definition.as_ref(), &state, expected) {
                    let found = described["presence"].as_str().unwrap_or("none").to_string();
                    let message = format!("expected current presence {expected:?}, found {found}");
                    return conflict("expected_current_mismatch", message, &described, attempts);
                }
            }
            // After a takeover the previous owner may have made this change before its lease
            // ran out: then it is applied, whatever the policies say.
            if takeover && payload.routing_status.is_none() && already_there(&state, &target.id, None, None) {
                return already(described, attempts, false);
            }
            let decision = decide(
                &state,
                policy,
                &target.id,
                payload.message.as_deref(),
                payload.routing_status.map(RoutingStatus::as_str),
            );
            if decision != Decision::Write {
                return decided(decision, described, attempts);
            }
            previous_state = Some(described);
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

/// The agent's state as the audit event's `previous_state` shows it, and its presence's
/// definition.
async fn describe(ctx: Context<'_>, state: &AgentState) -> (Value, Option<PresenceDefinition>) {
    let definition = match &state.presence.presence_definition {
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
    (describe_current(state, definition.as_ref()), definition)
}

/// Whether the job reads the agent's state before it writes: for a precondition
/// (`expected_current`, a takeover) or a policy that needs it.
pub fn reads_state(payload: &AgentStatus, takeover: bool) -> bool {
    let policy = payload.policy();
    payload.expected_current.is_some()
        || takeover
        || policy.respect_out_of_office
        || policy.if_interacting != IfInteracting::Apply
        || payload.skip_if_current == Some(true)
}

/// Whether the agent's current presence (its definition, when known) is `expected`, a name or
/// a definition id.
pub fn presence_holds(definition: Option<&PresenceDefinition>, state: &AgentState, expected: &str) -> bool {
    match (definition, &state.presence.presence_definition) {
        (Some(definition), _) => definition.answers_to(expected),
        (None, Some(reference)) => {
            reference.id.eq_ignore_ascii_case(expected)
                || reference.system_presence.as_deref().is_some_and(|s| {
                    crate::genesys::presence::normalize(s) == crate::genesys::presence::normalize(expected)
                })
        }
        (None, None) => false,
    }
}

/// What a policy decides for an agent in `state` asked to move to `definition_id` (with
/// `message`, and routing status `routing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Write,
    /// Already there (`skip_if_current`).
    Unchanged,
    /// Out of Office (`respect_out_of_office`).
    OutOfOffice,
    /// On a live interaction (`if_interacting: skip`).
    Interacting {
        routing_status: String,
    },
    /// On a live interaction (`if_interacting: defer`): try again later.
    Deferred {
        routing_status: String,
    },
}

pub fn decide(
    state: &AgentState,
    policy: PresencePolicy,
    definition_id: &str,
    message: Option<&str>,
    routing: Option<&str>,
) -> Decision {
    if policy.respect_out_of_office && state.out_of_office {
        return Decision::OutOfOffice;
    }
    if state.interacting() {
        let routing_status = state.routing_status.clone();
        match policy.if_interacting {
            IfInteracting::Apply => {}
            IfInteracting::Skip => return Decision::Interacting { routing_status },
            IfInteracting::Defer => return Decision::Deferred { routing_status },
        }
    }
    if policy.skip_if_current && already_there(state, definition_id, message, routing) {
        return Decision::Unchanged;
    }
    Decision::Write
}

/// Whether the agent already has the presence (and message, and routing status) asked for.
fn already_there(
    state: &AgentState,
    definition_id: &str,
    message: Option<&str>,
    routing: Option<&str>,
) -> bool {
    let presence = &state.presence;
    presence
        .presence_definition
        .as_ref()
        .is_some_and(|r| r.id == definition_id)
        && message.is_none_or(|m| presence.message.as_deref().unwrap_or_default() == m)
        && routing.is_none_or(|wanted| state.routing_status == wanted)
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

fn describe_current(agent: &AgentState, definition: Option<&PresenceDefinition>) -> Value {
    let current = &agent.presence;
    let reference = current.presence_definition.as_ref();
    let name = definition
        .map(PresenceDefinition::display_name)
        .or_else(|| reference.and_then(|r| r.system_presence.clone()));
    let mut state = json!({
        "presence": name,
        "system_presence": definition.map(|d| d.system_presence.clone()).or_else(|| reference.and_then(|r| r.system_presence.clone())),
        "presence_definition_id": reference.map(|r| r.id.clone()),
        "routing_status": agent.routing_status,
        "out_of_office": agent.out_of_office,
    });
    if let Some(message) = current.message.as_deref().filter(|m| !m.is_empty()) {
        state["message"] = json!(message);
    }
    if let Some(modified) = &current.modified_date {
        state["modified_date"] = json!(modified);
    }
    state
}
