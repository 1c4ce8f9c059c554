//! The sink trait: where records leave a pipeline.

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::{DeadLetter, Result};

/// One instance of a sink.
///
/// Transactional sinks stage data on [`pre_commit`](Sink::pre_commit) and
/// publish it on [`commit`](Sink::commit) once the checkpoint is complete; a
/// commit replayed after a crash must be a no-op. Sinks that do not override
/// them are at-least-once.
#[async_trait]
pub trait Sink: Send {
    /// Called once before any write. `checkpointing` is `None` when the
    /// pipeline takes no checkpoints (publish as you go); otherwise it holds
    /// the commits staged by the checkpoint being restored (empty when
    /// starting fresh), which must be completed (idempotently), and anything
    /// written after that checkpoint must be discarded.
    async fn open(&mut self, _checkpointing: Option<Vec<serde_json::Value>>) -> Result<()> {
        Ok(())
    }

    /// Writes one batch.
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;

    /// Stages everything written so far as part of checkpoint `checkpoint`;
    /// returns what [`commit`](Sink::commit) will do, as data that
    /// [`open`](Sink::open) can replay after a crash.
    async fn pre_commit(&mut self, _checkpoint: u64) -> Result<Vec<serde_json::Value>> {
        Ok(Vec::new())
    }

    /// Publishes what was staged for `checkpoint`.
    async fn commit(&mut self, _checkpoint: u64) -> Result<()> {
        Ok(())
    }

    /// Rows the sink gave up on since the last call (a request finally
    /// refused, say), for the sink's `dlq`; the run fails on them when the
    /// sink has none. Asked after every write, pre-commit and commit.
    fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        Vec::new()
    }

    /// Discards what was staged for `checkpoint`.
    async fn abort(&mut self, _checkpoint: u64) -> Result<()> {
        Ok(())
    }

    /// End of input: flush and close.
    async fn finish(&mut self) -> Result<()>;
}
