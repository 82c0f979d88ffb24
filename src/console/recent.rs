//! The jobs this process ran lately, by job id: what the console's job lookup needs to find a
//! job's idempotency record, which Redis keeps by idempotency key only.
//!
//! The pipeline calls [`note`] for every job once it knows its idempotency key and entity (and
//! may call [`finished`] with its outcome). The index is bounded, by entries
//! ([`MAX_ENTRIES`]) and by bytes of keys and entities ([`MAX_BYTES`]): the oldest go first. It
//! knows only this replica's jobs, and only since it started.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use uuid::Uuid;

use crate::events::Outcome;

/// Jobs remembered at most.
pub const MAX_ENTRIES: usize = 50_000;
/// Bytes of idempotency keys and entities remembered at most (keys may be 512 bytes long).
pub const MAX_BYTES: usize = 8 * 1024 * 1024;

/// What the index knows of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recent {
    pub idempotency_key: String,
    pub entity: String,
    /// When the job was noted (its latest delivery).
    pub seen: SystemTime,
    /// Its outcome, once [`finished`] was called for it.
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Default)]
struct Index {
    jobs: HashMap<Uuid, (u64, Recent)>,
    /// Job ids in the order they were noted, with the note's number: a job noted again is
    /// evicted by its latest note only.
    order: VecDeque<(Uuid, u64)>,
    next: u64,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Index {
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries,
            max_bytes,
            ..Self::default()
        }
    }

    fn note(&mut self, job_id: Uuid, idempotency_key: &str, entity: &str) {
        let size = idempotency_key.len() + entity.len();
        let number = self.next;
        self.next += 1;
        let recent = Recent {
            idempotency_key: idempotency_key.to_string(),
            entity: entity.to_string(),
            seen: SystemTime::now(),
            outcome: None,
        };
        if let Some((_, old)) = self.jobs.insert(job_id, (number, recent)) {
            self.bytes -= old.idempotency_key.len() + old.entity.len();
        }
        self.bytes += size;
        self.order.push_back((job_id, number));
        while self.jobs.len() > self.max_entries
            || self.bytes > self.max_bytes
            || self.order.len() > 2 * self.max_entries
        {
            let Some((id, number)) = self.order.pop_front() else {
                break;
            };
            if self.jobs.get(&id).is_some_and(|(n, _)| *n == number) {
                let (_, gone) = self.jobs.remove(&id).expect("just seen");
                self.bytes -= gone.idempotency_key.len() + gone.entity.len();
            }
        }
    }
}

fn index() -> &'static Mutex<Index> {
    static INDEX: OnceLock<Mutex<Index>> = OnceLock::new();
    INDEX.get_or_init(|| Mutex::new(Index::new(MAX_ENTRIES, MAX_BYTES)))
}

/// Remembers that this process runs job `job_id`, of `idempotency_key`, changing `entity` (the
/// entity its idempotency record is kept with: the one it claimed with).
pub fn note(job_id: Uuid, idempotency_key: &str, entity: &str) {
    index()
        .lock()
        .expect("recent jobs lock is never poisoned")
        .note(job_id, idempotency_key, entity);
}

/// Remembers job `job_id`'s outcome (a job not noted is left out).
pub fn finished(job_id: Uuid, outcome: Outcome) {
    let mut index = index().lock().expect("recent jobs lock is never poisoned");
    if let Some((_, recent)) = index.jobs.get_mut(&job_id) {
        recent.outcome = Some(outcome);
    }
}

/// What this process remembers of job `job_id`.
pub fn find(job_id: Uuid) -> Option<Recent> {
    index()
        .lock()
        .expect("recent jobs lock is never poisoned")
        .jobs
        .get(&job_id)
        .map(|(_, recent)| recent.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_by_count_and_by_bytes() {
        let mut index = Index::new(3, 100);
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            index.note(*id, "key", "user:1");
        }
        assert_eq!(index.jobs.len(), 3);
        assert!(!index.jobs.contains_key(&ids[1]) && index.jobs.contains_key(&ids[2]));
        // A job noted again is kept by its latest note.
        index.note(ids[2], "key", "user:1");
        index.note(Uuid::new_v4(), "key", "user:1");
        assert!(index.jobs.contains_key(&ids[2]) && !index.jobs.contains_key(&ids[3]));
        assert_eq!(index.bytes, 3 * 9);
        // One large key pushes out as many as it must.
        index.note(Uuid::new_v4(), &"k".repeat(80), "user:1");
        assert!(index.bytes <= 100, "{}", index.bytes);
        assert_eq!(index.jobs.len(), 2);
    }

    #[test]
    fn noted_jobs_are_found_with_their_outcome() {
        let id = Uuid::new_v4();
        assert_eq!(find(id), None);
        note(id, "wfm-1", "user:42");
        finished(id, Outcome::Applied);
        let recent = find(id).unwrap();
        assert_eq!(
            (
                recent.idempotency_key.as_str(),
                recent.entity.as_str(),
                recent.outcome
            ),
            ("wfm-1", "user:42", Some(Outcome::Applied))
        );
    }
}
