//! The source trait: where records enter a pipeline.

use arrow::array::Int32Array;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::{DeadLetter, Result};

/// What a source produced for one pull: a batch of good records (if any) and
/// the records it could not decode.
#[derive(Debug, Default)]
pub struct SourceBatch {
    /// Decoded records, in the source's schema.
    pub data: Option<RecordBatch>,
    /// Records that failed decoding, with file, line and reason.
    pub dead_letters: Vec<DeadLetter>,
    /// The split (partition, shard) each row of `data` came from, for a
    /// source instance that reads several splits interleaved: its watermark
    /// is then the minimum over its splits' (Flink's per-split watermarks),
    /// so a lagging split's records are not made late by a faster one.
    /// `None`: the instance's records form one ordered stream.
    pub splits: Option<Int32Array>,
}

/// One instance of a source. The runtime pulls batches in a loop, so that
/// barriers, watermarks and shutdown can be interleaved between pulls; a
/// slow downstream therefore simply stops the pulling (backpressure).
#[async_trait]
pub trait Source: Send {
    /// Called once after creation, before any [`seek`](Source::seek) or
    /// pull: `checkpointing` says whether checkpoints will be taken (broker
    /// sources then acknowledge only on [`checkpoint_complete`](Source::checkpoint_complete),
    /// otherwise as records are handed on).
    ///
    /// # Errors
    /// When the input cannot be reached.
    async fn open(&mut self, _checkpointing: bool) -> Result<()> {
        Ok(())
    }

    /// Produces the next batch; `Ok(None)` once the input is exhausted.
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>>;

    /// The position to resume from after a restore (file + byte offset,
    /// event index, broker position ...), recorded by checkpoint
    /// `checkpoint` as its barrier leaves this instance. Broker sources
    /// remember it, to acknowledge up to it when the checkpoint completes.
    fn offset(&mut self, _checkpoint: u64) -> SourceOffset {
        SourceOffset::None
    }

    /// Resumes from `offset`, as recorded by [`offset`](Source::offset) at a
    /// checkpoint of an instance with the same index and parallelism.
    ///
    /// # Errors
    /// When the source cannot replay from a position.
    async fn seek(&mut self, offset: &SourceOffset) -> Result<()> {
        match offset {
            SourceOffset::None => Ok(()),
            other => Err(crate::Error::Other(format!(
                "this source cannot resume from {other:?}"
            ))),
        }
    }

    /// Checkpoint `checkpoint` is complete: everything up to the position
    /// recorded in it is durable downstream. Broker sources acknowledge or
    /// commit their consumed offsets here, never earlier.
    async fn checkpoint_complete(&mut self, _checkpoint: u64) -> Result<()> {
        Ok(())
    }

    /// The splits this instance reads interleaved (see
    /// [`SourceBatch::splits`]), known after [`open`](Source::open) and
    /// [`seek`](Source::seek): each holds the watermark back until it has
    /// data, or has been silent for the source's `idle_timeout`. Empty: one
    /// stream.
    fn splits(&self) -> Vec<i32> {
        Vec::new()
    }

    /// Total number of records if known in advance (drives progress bars).
    fn size_hint(&self) -> Option<u64> {
        None
    }
}

/// A position in a source, recorded at checkpoints to resume from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceOffset {
    /// The source cannot replay (at-least-once at best).
    None,
    /// The index of the next record to produce (generators).
    Index(u64),
    /// A file and the byte offset of the next unread record.
    File {
        /// Path of the file being read.
        path: String,
        /// Byte offset of the next unread record.
        byte: u64,
    },
    /// A broker source's own position (last delivered message id, partition
    /// offsets ...), in the form that source reads back.
    Broker(serde_json::Value),
}
