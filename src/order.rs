//! Stage 3: ordering. At most one change is in flight per entity across every replica (a lock
//! with a lease in Redis, renewed with the job's idempotency lease), and the sequence rule: a
//! job whose `sequence` is lower than the last one applied to its entity is `superseded`, so a
//! late "Break" never overwrites a newer "Available".
//!
//! The lock is tried in the same round trip as the idempotency claim ([`crate::store::Store::claim`]), which
//! also reads the entity's [`crate::store::EntityState`]; only when another change of the entity is in flight
//! does the job wait here ([`crate::store::Store::lock_entity`]). The outcome's record advances the last
//! sequence ([`crate::store::Store::commit`]); the lock is released once the job's events are confirmed
//! ([`crate::store::Store::finish`]), so an entity's events reach the exchanges in version order.
//!
//! The rule lives here ([`refusal`]); the lock and the entity's record are Redis's
//! ([`crate::store`]).

use time::OffsetDateTime;

use crate::apply::Verdict;
use crate::events::{rfc3339, Outcome};
use crate::job::Job;

/// Why `job` must not be applied to `entity` at `now`: it arrived after its `not_after`
/// (`expired`), or a newer sequence than its own was already applied (`superseded`).
pub fn refusal(job: &Job, entity: &str, last_sequence: Option<u64>, now: OffsetDateTime) -> Option<Verdict> {
    match (job.not_after, job.sequence, last_sequence) {
        (Some(deadline), _, _) if now > deadline => Some(Verdict::refused(
            Outcome::Expired,
            "expired",
            format!(
                "job {}: {entity}: not_after {} has passed",
                job.job_id,
                rfc3339(deadline)
            ),
        )),
        (_, Some(sequence), Some(last)) if sequence < last => Some(Verdict::refused(
            Outcome::Superseded,
            "superseded",
            format!(
                "job {}: {entity}: sequence {sequence} is older than {last}, already applied",
                job.job_id
            ),
        )),
        _ => None,
    }
}
