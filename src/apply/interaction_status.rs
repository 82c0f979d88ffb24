//! `interaction.status`: move a workitem to another status of its worktype's state machine.
//!
//! The workitem is read first (its worktype and current status), the target is resolved by id
//! or name through the worktype's cached statuses, `expected_current` is checked, and the
//! transition is validated against the current status's `destinationStatuses` (empty: any)
//! before anything is written. Then `PATCH /api/v2/taskmanagement/workitems/{id}` with
//! `statusId`. A workitem already in the target status is `applied` without a write.

use serde_json::{json, Value};

use super::{Applied, Context};
use crate::events::Outcome;
use crate::genesys::taskmanagement::{Workitem, WorkitemStatus};
use crate::job::{InteractionStatus, Job};

pub async fn apply(ctx: Context<'_>, job: &Job, payload: &InteractionStatus) -> Applied {
    let entity = job.entity();
    let path = format!("/api/v2/taskmanagement/workitems/{}", payload.workitem_id);
    let fail = |err, attempts| Applied::from_error(job.job_id, &entity, err, attempts);
    let refuse = |outcome, code: &str, message: String| {
        Applied::refused(outcome, code, format!("job {}: {entity}: {message}", job.job_id))
    };

    let read = ctx.retry.run(|_| ctx.genesys.get::<Workitem>(&path)).await;
    let mut attempts = read.attempts;
    let current = match read.result {
        Ok(reply) => reply.body,
        Err(err) => return fail(&err, attempts),
    };
    let target = payload.target();
    let mut wanted = vec![current.status.id.as_str(), target.as_str()];
    if let Some(expected) = &payload.expected_current {
        wanted.push(expected);
    }
    let graph = match ctx
        .genesys
        .statuses
        .graph(ctx.genesys, &current.worktype.id, &wanted)
        .await
    {
        Ok(graph) => graph,
        Err(err) => return fail(&err, attempts),
    };
    let Some(from) = graph.find(&current.status.id).cloned() else {
        let message = format!(
            "current status {} is not a status of worktype {}",
            current.status.id, graph.worktype
        );
        return refuse(Outcome::Rejected, "unknown_status", message);
    };
    let previous_state = state_of(&current.id, &from);
    let Some(to) = graph.find(&target).cloned() else {
        let known: Vec<&str> = graph.statuses.iter().map(|s| s.name.as_str()).collect();
        let message = format!(
            "unknown status {target:?} for worktype {} (known: {})",
            graph.worktype,
            known.join(", ")
        );
        return with_previous(
            refuse(Outcome::Rejected, "unknown_status", message),
            previous_state,
        );
    };
    if let Some(expected) = &payload.expected_current {
        if !from.answers_to(expected) {
            let message = format!("expected current status {expected:?}, found {:?}", from.name);
            let mut conflict = refuse(Outcome::Conflict, "expected_current_mismatch", message);
            conflict.genesys_status = Some(200);
            return with_previous(conflict, previous_state);
        }
    }
    if from.id == to.id {
        return Applied {
            outcome: Outcome::Applied,
            new_state: Some(previous_state.clone()),
            previous_state: Some(previous_state),
            genesys_status: Some(200),
            error: None,
            attempts,
            entity: None,
            retryable: false,
        };
    }
    if !from.allows(&to) {
        let message = format!(
            "transition from {:?} to {:?} is not allowed (allowed: {})",
            from.name,
            to.name,
            graph.allowed_from(&from)
        );
        return with_previous(
            refuse(Outcome::Rejected, "transition_not_allowed", message),
            previous_state,
        );
    }

    let body = json!({"statusId": to.id});
    let write = ctx
        .retry
        .run(|_| ctx.genesys.patch::<Workitem>(&path, &body))
        .await;
    attempts = attempts.max(write.attempts);
    match write.result {
        Ok(reply) => {
            let landed = graph.find(&reply.body.status.id).cloned().unwrap_or(to);
            Applied {
                outcome: Outcome::Applied,
                previous_state: Some(previous_state),
                new_state: Some(state_of(&reply.body.id, &landed)),
                genesys_status: Some(reply.status),
                error: None,
                attempts,
                entity: None,
                retryable: false,
            }
        }
        Err(err) => with_previous(fail(&err, attempts), previous_state),
    }
}

fn with_previous(mut applied: Applied, previous_state: Value) -> Applied {
    applied.previous_state = Some(previous_state);
    applied
}

fn state_of(workitem_id: &str, status: &WorkitemStatus) -> Value {
    json!({
        "workitem_id": workitem_id,
        "status": status.name,
        "status_id": status.id,
        "status_category": status.category,
    })
}
