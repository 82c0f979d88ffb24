//! The two lanes a job runs in: single jobs, and the children of a `batch`. Each lane has its
//! own queue, consumer and concurrency, and the lanes share the Genesys budget by weight (fair
//! share, [`crate::limit`]), so a single change does not wait behind a 10,000-agent handover.

/// Which lane a job, and each of its Genesys calls, runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Jobs published on their own.
    Single,
    /// Children of a `batch`.
    Batch,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Single => "single",
            Lane::Batch => "batch",
        }
    }

    /// 0 for single, 1 for batch: for per-lane arrays.
    pub fn index(self) -> usize {
        match self {
            Lane::Single => 0,
            Lane::Batch => 1,
        }
    }
}

/// Weights of the two lanes sharing the Genesys budget while both wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneWeights {
    pub single: u32,
    pub batch: u32,
}
