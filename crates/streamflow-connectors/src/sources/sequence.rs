//! Numbered-record sources (generators): which records an instance
//! produces next, and wall-clock throttling.

use std::ops::Range;
use std::time::{Duration, Instant};

use streamflow_core::{Error, Result, SourceOffset};

/// Walks record numbers in chunks of `batch_size`; instance `i` of `p` takes
/// chunks `i, i + p, i + 2p, ...`, so instances together cover every number
/// exactly once and output does not depend on the parallelism.
#[derive(Debug, Clone)]
pub(crate) struct ChunkCursor {
    next_chunk: u64,
    stride: u64,
    batch_size: u64,
    total: Option<u64>,
    throttle: Option<(u64, Option<Instant>)>,
    produced: u64,
}

impl ChunkCursor {
    /// A cursor for instance `instance` of `parallelism`; `rate` (records
    /// per second, shared by all instances) throttles it.
    pub(crate) fn new(
        instance: usize,
        parallelism: usize,
        batch_size: usize,
        total: Option<u64>,
        rate: Option<u64>,
    ) -> Self {
        Self {
            next_chunk: instance as u64,
            stride: parallelism.max(1) as u64,
            batch_size: batch_size.max(1) as u64,
            total,
            throttle: rate.map(|r| (r, None)),
            produced: 0,
        }
    }

    /// The next range of record numbers, after waiting for the throttle;
    /// `None` once past `total`.
    pub(crate) async fn next(&mut self) -> Option<Range<u64>> {
        let start = self.next_chunk.saturating_mul(self.batch_size);
        let end = match self.total {
            Some(total) if start >= total => return None,
            Some(total) => (start + self.batch_size).min(total),
            None => start + self.batch_size,
        };
        if let Some((rate, began)) = &mut self.throttle {
            let began = *began.get_or_insert_with(Instant::now);
            let due =
                Duration::from_secs_f64(self.produced as f64 * self.stride as f64 / *rate as f64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        self.next_chunk += self.stride;
        self.produced += end - start;
        Some(start..end)
    }

    /// The checkpoint offset: the index of the next chunk.
    pub(crate) fn offset(&self) -> SourceOffset {
        SourceOffset::Index(self.next_chunk)
    }

    /// Resumes at a checkpointed [`offset`](Self::offset) of the same
    /// instance at the same parallelism.
    pub(crate) fn seek(&mut self, offset: &SourceOffset) -> Result<()> {
        let position = match offset {
            SourceOffset::None => return Ok(()),
            SourceOffset::Index(p) => *p,
            other => return Err(Error::Other(format!("cannot resume from {other:?}"))),
        };
        if position % self.stride != self.next_chunk % self.stride {
            return Err(Error::Other(format!(
                "offset {position} belongs to another instance or parallelism"
            )));
        }
        // The throttle restarts from here.
        self.produced = 0;
        self.next_chunk = position;
        Ok(())
    }

    /// Records this instance will produce in all, if bounded.
    pub(crate) fn expected(&self) -> Option<u64> {
        self.total.map(|t| t / self.stride)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn instances_cover_every_number_once() {
        let mut seen = Vec::new();
        for i in 0..3 {
            let mut c = ChunkCursor::new(i, 3, 4, Some(30), None);
            while let Some(r) = c.next().await {
                seen.extend(r);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..30).collect::<Vec<_>>());
    }
}
