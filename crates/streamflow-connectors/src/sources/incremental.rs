//! Reading a database query as a snapshot, then by an incremental column:
//! the pull loop, the position in checkpoints and the resume, shared by the
//! `postgres` and `mysql` sources (each says how to fetch the next rows).

use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde_json::Value;
use streamflow_core::{Error, Result, Source, SourceBatch, SourceOffset};

/// A query a database source reads.
#[async_trait]
pub(crate) trait Query: Send {
    /// The next rows: those after `last` in the incremental column's order
    /// (all of them from the start when `None`), or without an incremental
    /// column the snapshot's rows from the `read`-th on. With them, the
    /// incremental column's value in the last row (an integer, or
    /// microseconds for date-times). `None` when there are no more rows.
    async fn next_rows(
        &mut self,
        last: Option<i64>,
        read: u64,
    ) -> Result<Option<(RecordBatch, Option<i64>)>>;
}

/// A source reading a [`Query`]: rows until caught up, then a poll every
/// `poll`, or the end when `bounded`. Its position — the last incremental
/// value and the rows read — is what checkpoints record.
pub(crate) struct IncrementalSource<Q> {
    query: Q,
    poll: Duration,
    bounded: bool,
    last: Option<i64>,
    read: u64,
    done: bool,
    system: &'static str,
}

impl<Q: Query> IncrementalSource<Q> {
    /// A source reading `query`; an instance that is not `reading` ends at
    /// once (one instance reads a query). `system` names it in errors.
    pub(crate) fn new(
        query: Q,
        poll: Duration,
        bounded: bool,
        reading: bool,
        system: &'static str,
    ) -> Self {
        Self {
            query,
            poll,
            bounded,
            last: None,
            read: 0,
            done: !reading,
            system,
        }
    }
}

#[async_trait]
impl<Q: Query> Source for IncrementalSource<Q> {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        if self.done {
            return Ok(None);
        }
        if let Some((data, last)) = self.query.next_rows(self.last, self.read).await? {
            if last.is_some() {
                self.last = last;
            }
            self.read += data.num_rows() as u64;
            return Ok(Some(SourceBatch {
                data: Some(data),
                dead_letters: Vec::new(),
                splits: None,
            }));
        }
        // Caught up.
        if self.bounded {
            self.done = true;
            return Ok(None);
        }
        tokio::time::sleep(self.poll).await;
        Ok(Some(SourceBatch::default()))
    }

    fn offset(&mut self, _checkpoint: u64) -> SourceOffset {
        SourceOffset::Broker(serde_json::json!({ "last": self.last, "read": self.read }))
    }

    async fn seek(&mut self, offset: &SourceOffset) -> Result<()> {
        match offset {
            SourceOffset::None => Ok(()),
            SourceOffset::Broker(v) => {
                self.last = v.get("last").and_then(Value::as_i64);
                self.read = v.get("read").and_then(Value::as_u64).unwrap_or(0);
                Ok(())
            }
            other => Err(Error::Other(format!(
                "a {} source cannot resume from {other:?}",
                self.system
            ))),
        }
    }
}
