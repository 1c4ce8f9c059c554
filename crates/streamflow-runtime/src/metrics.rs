//! Per-node counters, shared by all instances of a node and read by the
//! CLI's progress bar and summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one source, stage or sink (all instances together).
#[derive(Debug, Default)]
pub struct NodeMetrics {
    records_in: AtomicU64,
    records_out: AtomicU64,
    dead_letters: AtomicU64,
    late: AtomicU64,
    busy_ns: AtomicU64,
}

impl NodeMetrics {
    /// Records received.
    pub fn records_in(&self) -> u64 {
        self.records_in.load(Ordering::Relaxed)
    }
    /// Records emitted.
    pub fn records_out(&self) -> u64 {
        self.records_out.load(Ordering::Relaxed)
    }
    /// Records sent to the dead-letter output.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }
    /// Records that arrived after their windows had fired.
    pub fn late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }
    /// Time spent processing (summed over instances).
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }
    pub(crate) fn add_in(&self, n: usize) {
        self.records_in.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_out(&self, n: usize) {
        self.records_out.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_dead(&self, n: usize) {
        self.dead_letters.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_late(&self, n: usize) {
        self.late.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_busy(&self, d: Duration) {
        self.busy_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// The last checkpoint a run completed, for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LastCheckpoint {
    /// Checkpoint id.
    pub id: u64,
    /// When it started, milliseconds since the epoch.
    pub started_ms: i64,
    /// How long it took.
    pub duration_ms: u64,
    /// Bytes of state written.
    pub bytes: u64,
}

/// Checkpoint counters of a run, updated by its coordinator.
#[derive(Debug, Default)]
pub struct CheckpointMetrics {
    completed: AtomicU64,
    last: std::sync::Mutex<Option<LastCheckpoint>>,
}

impl CheckpointMetrics {
    /// Checkpoints completed by this run.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
    /// The newest completed checkpoint.
    pub fn last(&self) -> Option<LastCheckpoint> {
        self.last.lock().ok().and_then(|l| *l)
    }
    pub(crate) fn record(&self, last: LastCheckpoint) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last.lock() {
            *l = Some(last);
        }
    }
}
