//! `interaction.status`: move a workitem to another status of its worktype's state machine.
//!
//! The workitem is read first (its worktype and current status), the target is resolved by id
//! or name through the worktype's cached statuses, `expected_current` is checked, and the
//! transition is validated against the current status's `destinationStatuses` (empty: any)
//! before anything is written. Then `PATCH /api/v2/taskmanagement/workitems/{id}` with
//! `statusId`. A workitem already in the target status is `applied` without a write.
//!
//! Genesys' reads may lag its writes: a workitem created a moment ago may answer 404, one changed
//! a moment ago may show its previous status. So a 404, a read that refuses the job (a
//! transition the read status does not allow, an `expected_current` that does not hold), and a
//! read showing the target status already when the worker changed the workitem within the
//! window, are read again until the consistency window has passed before they count.

use serde_json::{json, Value};

use super::{Context, Verdict};
use crate::events::Outcome;
use crate::genesys::taskmanagement::{StatusGraph, Workitem, WorkitemStatus};
use crate::genesys::GenesysError;
use crate::job::{InteractionStatus, Job};

/// `changed_recently`: the worker changed this workitem within the consistency window, so a read
/// showing it already in the target status may predate that change.
pub async fn apply(
    ctx: Context<'_>,
    job: &Job,
    payload: &InteractionStatus,
    changed_recently: bool,
) -> Verdict {
    let entity = job.entity();
    let path = format!("/api/v2/taskmanagement/workitems/{}", payload.workitem_id);
    let fail = |err, attempts| Verdict::from_error(job.job_id, &entity, err, attempts);

    let read = ctx
        .retry
        .run_through_lag(
            |err| err.status() == Some(404),
            |_| ctx.genesys.get::<Workitem>(&path),
        )
        .await;
    let mut attempts = read.attempts;
    let mut current = match read.result {
        Ok(reply) => reply.body,
        Err(err) => return fail(&err, attempts),
    };
    let lag_deadline = tokio::time::Instant::now() + ctx.retry.consistency_window;
    let mut lag_round = 0;
    loop {
        let plan = match plan(ctx, job, payload, &current, changed_recently).await {
            Ok(plan) => plan,
            Err(err) => return fail(&err, attempts),
        };
        let left = lag_deadline.saturating_duration_since(tokio::time::Instant::now());
        match plan {
            Plan::Write {
                to,
                previous_state,
                graph,
            } => return write(ctx, job, &path, &graph, to, previous_state, attempts).await,
            Plan::Refuse {
                mut refusal,
                read_may_lag,
            } => {
                if !read_may_lag || left.is_zero() {
                    refusal.attempts = refusal.attempts.max(attempts);
                    return refusal;
                }
            }
        }
        lag_round += 1;
        tokio::time::sleep(ctx.retry.backoff_ceiling(lag_round).min(left)).await;
        let reread = ctx.retry.run(|_| ctx.genesys.get::<Workitem>(&path)).await;
        attempts = attempts.max(reread.attempts);
        current = match reread.result {
            Ok(reply) => reply.body,
            Err(err) => return fail(&err, attempts),
        };
    }
}

/// What the job does to the workitem as read.
enum Plan {
    Write {
        to: WorkitemStatus,
        previous_state: Value,
        graph: StatusGraph,
    },
    /// Decided without a write; `read_may_lag` when the read's status alone refused it, so a
    /// fresher read may decide otherwise.
    Refuse { refusal: Verdict, read_may_lag: bool },
}

async fn plan(
    ctx: Context<'_>,
    job: &Job,
    payload: &InteractionStatus,
    current: &Workitem,
    changed_recently: bool,
) -> Result<Plan, GenesysError> {
    let entity = job.entity();
    let refuse = |outcome, code: &str, message: String| {
        Verdict::refused(outcome, code, format!("job {}: {entity}: {message}", job.job_id))
    };
    let target = payload.target();
    let mut wanted = vec![current.status.id.as_str(), target.as_str()];
    if let Some(expected) = &payload.expected_current {
        wanted.push(expected);
    }
    let graph = ctx
        .genesys
        .client()
        .statuses
        .graph(ctx.genesys, &current.worktype.id, &wanted)
        .await?;
    let (from, to) = match judge(
        &graph,
        &current.status.id,
        &target,
        payload.expected_current.as_deref(),
    ) {
        Judged::Move { from, to } => (from.clone(), to.clone()),
        Judged::Refused { code, message, from } => {
            let Some(from) = from else {
                return Ok(Plan::Refuse {
                    refusal: refuse(Outcome::Rejected, code, message),
                    read_may_lag: false,
                });
            };
            let previous_state = state_of(&current.id, from);
            let (outcome, read_may_lag) = match code {
                "expected_current_mismatch" => (Outcome::Conflict, true),
                "transition_not_allowed" => (Outcome::Rejected, true),
                _ => (Outcome::Rejected, false),
            };
            let mut refusal = refuse(outcome, code, message);
            if outcome == Outcome::Conflict {
                refusal.genesys_status = Some(200);
            }
            return Ok(Plan::Refuse {
                refusal: with_previous(refusal, previous_state),
                read_may_lag,
            });
        }
        Judged::Unchanged(from) => {
            let previous_state = state_of(&current.id, from);
            let unchanged = Verdict {
                outcome: Outcome::Applied,
                new_state: Some(previous_state.clone()),
                previous_state: Some(previous_state),
                genesys_status: Some(200),
                error: None,
                attempts: 1,
                entity: None,
                retryable: false,
            };
            return Ok(Plan::Refuse {
                refusal: unchanged,
                read_may_lag: changed_recently,
            });
        }
    };
    let previous_state = state_of(&current.id, &from);
    Ok(Plan::Write {
        to,
        previous_state,
        graph,
    })
}

/// How the rules judge a move of a workitem from status `current` to `target` (each an id or
/// a name) with `expected` as the current status it must have: shared by the worker and `plan`.
#[derive(Debug)]
pub(crate) enum Judged<'g> {
    Move {
        from: &'g WorkitemStatus,
        to: &'g WorkitemStatus,
    },
    /// Already there.
    Unchanged(&'g WorkitemStatus),
    /// `unknown_status`, `expected_current_mismatch` or `transition_not_allowed`, and the
    /// current status when the worktype knows it.
    Refused {
        code: &'static str,
        message: String,
        from: Option<&'g WorkitemStatus>,
    },
}

pub(crate) fn judge<'g>(
    graph: &'g StatusGraph,
    current: &str,
    target: &str,
    expected: Option<&str>,
) -> Judged<'g> {
    let Some(from) = graph.find(current) else {
        return Judged::Refused {
            code: "unknown_status",
            message: format!(
                "current status {current} is not a status of worktype {}",
                graph.worktype
            ),
            from: None,
        };
    };
    let refused = |code, message| Judged::Refused {
        code,
        message,
        from: Some(from),
    };
    let Some(to) = graph.find(target) else {
        let known: Vec<&str> = graph.statuses.iter().map(|s| s.name.as_str()).collect();
        return refused(
            "unknown_status",
            format!(
                "unknown status {target:?} for worktype {} (known: {})",
                graph.worktype,
                known.join(", ")
            ),
        );
    };
    if let Some(expected) = expected {
        if !from.answers_to(expected) {
            return refused(
                "expected_current_mismatch",
                format!("expected current status {expected:?}, found {:?}", from.name),
            );
        }
    }
    if from.id == to.id {
        return Judged::Unchanged(from);
    }
    if !from.allows(to) {
        return refused(
            "transition_not_allowed",
            format!(
                "transition from {:?} to {:?} is not allowed (allowed: {})",
                from.name,
                to.name,
                graph.allowed_from(from)
            ),
        );
    }
    Judged::Move { from, to }
}

async fn write(
    ctx: Context<'_>,
    job: &Job,
    path: &str,
    graph: &StatusGraph,
    to: WorkitemStatus,
    previous_state: Value,
    attempts: u32,
) -> Verdict {
    let body = json!({"statusId": to.id});
    let write = ctx
        .retry
        .run(|_| ctx.genesys.patch::<Workitem>(path, &body))
        .await;
    let attempts = attempts.max(write.attempts);
    match write.result {
        Ok(reply) => {
            let landed = graph.find(&reply.body.status.id).cloned().unwrap_or(to);
            Verdict {
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
        Err(err) => with_previous(
            Verdict::from_error(job.job_id, &job.entity(), &err, attempts),
            previous_state,
        ),
    }
}

fn with_previous(mut applied: Verdict, previous_state: Value) -> Verdict {
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
