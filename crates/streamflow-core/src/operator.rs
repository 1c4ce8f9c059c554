//! The operator trait: a stage instance transforming batches.

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::{CheckpointBarrier, DeadLetter, OperatorSnapshot, Result, Watermark};

/// What an operator produced for one call: data batches for its output edge,
/// dead letters for its `dlq` and late records for its `late` output. The runtime drains it after every call.
#[derive(Debug, Default)]
pub struct Output {
    batches: Vec<RecordBatch>,
    dead_letters: Vec<DeadLetter>,
    late: Vec<RecordBatch>,
    watermark: Option<Watermark>,
}

impl Output {
    /// An empty output buffer.
    pub fn new() -> Self {
        Self::default()
    }
    /// Emits a batch downstream (empty batches are dropped).
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }
    /// Sends one record to the dead-letter output.
    pub fn dead_letter(&mut self, letter: DeadLetter) {
        self.dead_letters.push(letter);
    }
    /// Sends input records that arrived too late for their windows to the
    /// stage's `late` output (in the stage's input schema).
    pub fn emit_late(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.late.push(batch);
        }
    }
    /// Sends a watermark downstream after this call's batches; only for
    /// operators that generate their own watermarks
    /// ([`Operator::generates_watermarks`]).
    pub fn emit_watermark(&mut self, watermark: Watermark) {
        self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
    }
    /// Takes the watermark emitted by this call, if any.
    pub fn take_watermark(&mut self) -> Option<Watermark> {
        self.watermark.take()
    }
    /// Takes the late records, leaving the buffer empty.
    pub fn take_late(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.late)
    }
    /// Takes the emitted batches, leaving the buffer empty.
    pub fn take_batches(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.batches)
    }
    /// Takes the dead letters, leaving the buffer empty.
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead_letters)
    }
}

/// One running instance of a stage.
///
/// The runtime calls it from a single task: [`open`](Operator::open) once,
/// then [`process_batch`](Operator::process_batch) for every batch on any
/// input (`input` is the index of the logical input), then
/// [`finish`](Operator::finish) once all inputs have ended. Watermarks are
/// already merged over inputs (minimum) and barriers already aligned when the
/// operator sees them; the runtime forwards both downstream after the call.
#[async_trait]
pub trait Operator: Send {
    /// Restores state from a checkpoint snapshot, if one exists.
    async fn open(&mut self, _restored: Option<OperatorSnapshot>) -> Result<()> {
        Ok(())
    }

    /// Processes one batch from logical input `input`.
    async fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()>;

    /// The merged input watermark advanced; emit whatever it completes.
    async fn process_watermark(&mut self, _watermark: Watermark, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    /// Logical input `input` has ended while others continue (a bounded
    /// table side of a join, say).
    async fn input_finished(&mut self, _input: usize, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    /// How often the runtime calls [`on_timer`](Operator::on_timer) while the
    /// operator runs; `None` (the default) for operators that do no
    /// processing-time work.
    fn timer_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Processing time (wall clock, ms since the Unix epoch) reached `now_ms`.
    async fn on_timer(&mut self, _now_ms: i64, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    /// `true` for operators that assign event time and emit their own
    /// watermarks ([`Output::emit_watermark`]): the runtime then does not
    /// forward the watermarks of their inputs.
    fn generates_watermarks(&self) -> bool {
        false
    }

    /// A barrier has arrived on all inputs: return the state to persist.
    async fn snapshot(&mut self, _barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        Ok(OperatorSnapshot::default())
    }

    /// All inputs have ended; emit anything still buffered.
    async fn finish(&mut self, _out: &mut Output) -> Result<()> {
        Ok(())
    }
}
