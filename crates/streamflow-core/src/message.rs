//! Messages carried by the edges of a running pipeline.

use arrow::record_batch::RecordBatch;

/// An event-time watermark: no record with an event time (milliseconds since
/// the Unix epoch) at or below this value is expected any more on the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watermark(pub i64);

impl Watermark {
    /// The watermark before any event time has been observed.
    pub const MIN: Watermark = Watermark(i64::MIN);
    /// The watermark at end of input: every window may fire.
    pub const MAX: Watermark = Watermark(i64::MAX);
}

/// A numbered checkpoint barrier injected by the checkpoint coordinator at
/// the sources. Everything before it on an edge belongs to checkpoint `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckpointBarrier {
    /// Monotonically increasing checkpoint number.
    pub id: u64,
    /// Wall-clock time the coordinator started the checkpoint (ms since epoch).
    pub timestamp_ms: i64,
    /// `true` when the pipeline stops after this checkpoint (savepoint / job end).
    pub is_final: bool,
}

/// What flows on an edge between two operator instances.
#[derive(Debug, Clone)]
pub enum Message {
    /// A batch of records, all with the edge's schema.
    Data(RecordBatch),
    /// Event-time progress, in-band with the data.
    Watermark(Watermark),
    /// Checkpoint barrier, aligned by multi-input operators.
    Barrier(CheckpointBarrier),
    /// The producer has had no data for its idle timeout: until it sends
    /// data or a watermark again, consumers do not wait for its watermark.
    Idle,
    /// The producing instance will send nothing more.
    EndOfStream,
}
