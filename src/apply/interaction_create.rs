//! `interaction.create`: a Task Management workitem, created exactly once.
//!
//! The API has no idempotency key, so the worker stamps `externalTag` with the job's
//! idempotency key. When a create may have been applied without the worker seeing the answer
//! (a 5xx, a timeout, a connection closed after sending) or a previous worker's lease ran out
//! mid-job, the worker queries the workitems of that type by `externalTag` before creating
//! again: exactly one workitem exists per idempotency key. A query may not show a workitem
//! created a moment ago (Genesys' consistency lag), so after an ambiguous failure "not found" is
//! only believed once the consistency window has passed.

use serde_json::{json, Map, Value};

use super::{Context, Verdict};
use crate::events::Outcome;
use crate::genesys::taskmanagement::{find_by_external_tag, Workitem};
use crate::genesys::GenesysError;
use crate::job::{InteractionCreate, Job};

pub async fn apply(ctx: Context<'_>, job: &Job, payload: &InteractionCreate, takeover: bool) -> Verdict {
    let tag = job.idempotency_key.as_str();
    let find = || find_by_external_tag(ctx.genesys, payload.type_id, tag);
    if takeover {
        // The previous owner may have created it before its lease ran out.
        let lookup = ctx.retry.run(|_| find()).await;
        match lookup.result {
            Ok(Some(existing)) => return created(existing, 200, lookup.attempts),
            Ok(None) => {}
            Err(err) => return Verdict::from_error(job.job_id, &job.entity(), &err, lookup.attempts),
        }
    }
    let body = request_body(payload, tag);
    let outcome = ctx
        .retry
        .run(|attempt| {
            let body = &body;
            async move {
                match ctx
                    .genesys
                    .post::<Workitem>("/api/v2/taskmanagement/workitems", body)
                    .await
                {
                    Ok(reply) => Ok((reply.body, reply.status)),
                    Err(err) if err.may_have_applied() => {
                        let lookup = find_settled(ctx.retry, find).await;
                        settle_ambiguous(err, lookup, attempt, tag)
                    }
                    Err(err) => Err(err),
                }
            }
        })
        .await;
    match outcome.result {
        Ok((workitem, status)) => created(workitem, status, outcome.attempts),
        Err(err) => Verdict::from_error(job.job_id, &job.entity(), &err, outcome.attempts),
    }
}

/// `find`, again with backoff while it finds nothing, until the consistency window has passed.
async fn find_settled<F, Fut>(
    retry: &crate::retry::RetryPolicy,
    find: F,
) -> Result<Option<Workitem>, GenesysError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Workitem>, GenesysError>>,
{
    let deadline = tokio::time::Instant::now() + retry.consistency_window;
    let mut round = 0;
    loop {
        let found = find().await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if found.is_some() || left.is_zero() {
            return Ok(found);
        }
        round += 1;
        tokio::time::sleep(retry.backoff_ceiling(round).min(left)).await;
    }
}

/// After a create that may have landed: the workitem found by its tag, or the original error
/// (so the retry policy decides whether to create again).
fn settle_ambiguous(
    err: GenesysError,
    lookup: Result<Option<Workitem>, GenesysError>,
    attempt: u32,
    tag: &str,
) -> Result<(Workitem, u16), GenesysError> {
    match lookup {
        Ok(Some(existing)) => {
            tracing::info!(attempt, external_tag = tag, workitem_id = %existing.id, error.message = %err, "Create answer was lost, but the workitem exists; not creating again.");
            Ok((existing, 200))
        }
        Ok(None) => Err(err),
        // The lookup failed too: report the lookup's error, which the retry policy classifies.
        Err(lookup_err) => Err(lookup_err),
    }
}

fn request_body(payload: &InteractionCreate, tag: &str) -> Value {
    let mut body = Map::new();
    body.insert("name".into(), json!(payload.name));
    body.insert("typeId".into(), json!(payload.type_id));
    body.insert("externalTag".into(), json!(tag));
    let optional = [
        ("queueId", payload.queue_id.map(|v| json!(v))),
        ("priority", payload.priority.map(|v| json!(v))),
        ("skillIds", payload.skill_ids.as_ref().map(|v| json!(v))),
        ("languageId", payload.language_id.map(|v| json!(v))),
        ("externalContactId", payload.external_contact_id.map(|v| json!(v))),
        ("customFields", payload.custom_fields.as_ref().map(|v| json!(v))),
        ("description", payload.description.as_ref().map(|v| json!(v))),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            body.insert(name.into(), value);
        }
    }
    Value::Object(body)
}

fn created(workitem: Workitem, status: u16, attempts: u32) -> Verdict {
    let new_state = json!({
        "workitem_id": workitem.id,
        "name": workitem.name,
        "type_id": workitem.worktype.id,
        "status": workitem.status.name,
        "status_id": workitem.status.id,
        "status_category": workitem.status_category,
        "queue_id": workitem.queue.as_ref().map(|q| q.id.clone()),
        "priority": workitem.priority,
        "external_tag": workitem.external_tag,
    });
    Verdict {
        outcome: Outcome::Applied,
        previous_state: None,
        new_state: Some(new_state),
        genesys_status: Some(status),
        error: None,
        attempts,
        entity: Some(format!("workitem:{}", workitem.id)),
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn the_request_carries_the_real_field_names_and_the_tag() {
        let type_id = Uuid::new_v4();
        let queue = Uuid::new_v4();
        let payload = InteractionCreate {
            type_id,
            name: "Call back".into(),
            queue_id: Some(queue),
            priority: Some(7),
            skill_ids: Some(vec![queue]),
            language_id: None,
            external_contact_id: None,
            custom_fields: None,
            description: None,
        };
        let body = request_body(&payload, "key-9");
        assert_eq!(
            body,
            json!({"name": "Call back", "typeId": type_id, "externalTag": "key-9", "queueId": queue,
                   "priority": 7, "skillIds": [queue]})
        );
    }
}
