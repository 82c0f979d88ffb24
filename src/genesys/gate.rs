//! A job's call gate: whether anything was sent to Genesys on the job's behalf yet
//! (docs/architecture.md, "Controls").
//!
//! A pause must stop the calls of jobs already in flight that have not called Genesys yet (a job
//! can wait long for its first budget token). The pipeline abandons such a job, dropping its
//! future, but only if nothing was sent for it: a job whose change may be in Genesys runs on to
//! its end, so that its outcome is recorded. Some calls are made for a job by another task (a
//! gathered bulk write or read), which dropping the job's future does not stop; so the sender,
//! whichever task it is, and the pipeline settle it through this one state, changed once, by
//! whichever side comes first.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Nothing sent yet, nor abandoned.
const WAITING: u8 = 0;
/// A request went out (or was about to) for the job: it runs to its end.
const SENT: u8 = 1;
/// The job was paused first: nothing may be sent for it.
const ABANDONED: u8 = 2;

/// Shared by a job's [`super::LaneClient`] and whichever gathered call carries one of its
/// requests; cheap to clone (clones are the same gate).
#[derive(Clone, Default)]
pub struct CallGate(Arc<AtomicU8>);

impl CallGate {
    /// A gate of a job that has sent nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Called right before a request is sent on the job's behalf: true when it may go (the
    /// first makes the job's abandon fail from then on), false when the job was abandoned and
    /// the request must not be sent.
    pub fn open(&self) -> bool {
        match self
            .0
            .compare_exchange(WAITING, SENT, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(SENT) => true,
            Err(_) => false,
        }
    }

    /// Called by the pipeline when the job is paused: true when nothing was sent and nothing
    /// will be (the job may be dropped and run again later), false when a request already
    /// went out (the job must run on to its end).
    pub fn abandon(&self) -> bool {
        match self
            .0
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(ABANDONED) => true,
            Err(_) => false,
        }
    }

    /// Whether a request was sent (or was about to be) on the job's behalf.
    pub fn sent(&self) -> bool {
        self.0.load(Ordering::Acquire) == SENT
    }
}

impl std::fmt::Debug for CallGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.0.load(Ordering::Acquire) {
            WAITING => "waiting",
            SENT => "sent",
            _ => "abandoned",
        };
        f.debug_tuple("CallGate").field(&state).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_open_wins_over_a_later_abandon() {
        let gate = CallGate::new();
        assert!(!gate.sent());
        assert!(gate.open());
        assert!(gate.sent());
        // Opened again (a retry, a second call of the job): still open.
        assert!(gate.open());
        assert!(!gate.abandon());
        assert!(gate.sent());
        assert!(gate.open());
    }

    #[test]
    fn the_first_abandon_wins_over_a_later_open() {
        let gate = CallGate::new();
        assert!(gate.abandon());
        assert!(!gate.sent());
        assert!(gate.abandon());
        assert!(!gate.open());
        assert!(!gate.open());
        assert!(!gate.sent());
        assert!(gate.abandon());
    }

    #[test]
    fn clones_are_the_same_gate() {
        let gate = CallGate::new();
        let carried = gate.clone();
        assert!(carried.open());
        assert!(gate.sent());
        assert!(!gate.abandon());
        assert_eq!(format!("{gate:?}"), "CallGate(\"sent\")");
    }

    #[test]
    fn many_openers_against_one_abandon_exactly_one_side_wins() {
        for _ in 0..200 {
            let gate = CallGate::new();
            let start = Arc::new(std::sync::Barrier::new(9));
            let openers: Vec<_> = (0..8)
                .map(|_| {
                    let (gate, start) = (gate.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        gate.open()
                    })
                })
                .collect();
            let abandoner = {
                let (gate, start) = (gate.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    gate.abandon()
                })
            };
            let opened: Vec<bool> = openers.into_iter().map(|t| t.join().unwrap()).collect();
            let abandoned = abandoner.join().unwrap();
            // Either every opener went (and the abandon failed) or none did (and it held).
            if abandoned {
                assert!(opened.iter().all(|&o| !o), "{opened:?}");
                assert!(!gate.sent());
            } else {
                assert!(opened.iter().all(|&o| o), "{opened:?}");
                assert!(gate.sent());
            }
        }
    }
}
