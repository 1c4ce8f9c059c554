//! Per-node counters, shared by all instances of a node and read by the
//! CLI's progress bar and summary and by the metrics endpoints.
//!
//! Counting is a handful of relaxed atomic additions per batch; nothing is
//! done per record.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use streamflow_core::Message;
use tokio::sync::mpsc::WeakSender;

/// Counters of one source, stage or sink (all instances together).
#[derive(Debug)]
pub struct NodeMetrics {
    records_in: AtomicU64,
    records_out: AtomicU64,
    batches_in: AtomicU64,
    batches_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    dead_letters: AtomicU64,
    late: AtomicU64,
    busy_ns: AtomicU64,
    /// Highest watermark emitted (sinks: received); `i64::MIN` before any.
    watermark: AtomicI64,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            batches_in: AtomicU64::new(0),
            batches_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            late: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
        }
    }
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
    /// Batches received.
    pub fn batches_in(&self) -> u64 {
        self.batches_in.load(Ordering::Relaxed)
    }
    /// Batches emitted.
    pub fn batches_out(&self) -> u64 {
        self.batches_out.load(Ordering::Relaxed)
    }
    /// Arrow memory of the batches received, in bytes (a buffer shared by
    /// several slices counts in full for each).
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }
    /// Arrow memory of the batches emitted, in bytes (as [`bytes_in`](Self::bytes_in)).
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }
    /// The event time (milliseconds) up to which this node has declared its
    /// output complete — for sinks, their input — once there is one. The
    /// end-of-input watermark is not reported.
    pub fn watermark(&self) -> Option<i64> {
        Some(self.watermark.load(Ordering::Relaxed)).filter(|w| *w != i64::MIN)
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
    pub(crate) fn add_in(&self, batch: &RecordBatch) {
        self.records_in
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        self.batches_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in
            .fetch_add(batch.get_array_memory_size() as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_out(&self, batch: &RecordBatch) {
        self.records_out
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        self.batches_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out
            .fetch_add(batch.get_array_memory_size() as u64, Ordering::Relaxed);
    }
    pub(crate) fn set_watermark(&self, w: i64) {
        if w != i64::MAX {
            self.watermark.fetch_max(w, Ordering::Relaxed);
        }
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
    failed: AtomicU64,
    last: std::sync::Mutex<Option<LastCheckpoint>>,
}

impl CheckpointMetrics {
    /// Checkpoints completed by this run.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
    /// Checkpoints that failed (each fails its run).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    pub(crate) fn record_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
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

/// What an input edge carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// The producer's output.
    Data,
    /// The producer's dead letters.
    DeadLetters,
    /// The producer's late records.
    Late,
}

impl EdgeKind {
    /// `data`, `dlq` or `late`.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Data => "data",
            EdgeKind::DeadLetters => "dlq",
            EdgeKind::Late => "late",
        }
    }
}

/// The bounded queues of one input edge of a node (every producer instance
/// to every consumer instance), watched without keeping them open.
#[derive(Debug, Clone)]
pub struct InputQueues {
    /// The producing node.
    pub from: String,
    /// What the edge carries.
    pub kind: EdgeKind,
    pub(crate) queues: Vec<WeakSender<Message>>,
}

impl InputQueues {
    /// Messages queued over messages that fit, 0 to 1, over all the edge's
    /// queues: near 1 the consumer is the bottleneck (backpressure). Queues
    /// already closed count as empty.
    pub fn fill_ratio(&self) -> f64 {
        let (mut queued, mut room) = (0usize, 0usize);
        for q in &self.queues {
            if let Some(sender) = q.upgrade() {
                queued += sender.max_capacity() - sender.capacity();
                room += sender.max_capacity();
            }
        }
        if room == 0 {
            0.0
        } else {
            queued as f64 / room as f64
        }
    }
}
