//! Watermarks derived at the sources from an event-time column.

use arrow::array::{Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use streamflow_core::{Error, Result, Watermark};

/// Bounded out-of-orderness: the watermark trails the highest event time
/// seen by `max_out_of_orderness` (and 1 ms, so records at the highest time
/// seen so far are not late). It never goes back.
#[derive(Debug, Clone)]
pub struct WatermarkGenerator {
    column: usize,
    lag_ms: i64,
    max_seen: Option<i64>,
    emitted: Watermark,
}

impl WatermarkGenerator {
    /// Watches timestamp column `column`, trailing by `lag_ms`.
    pub fn new(column: usize, lag_ms: i64) -> Self {
        Self {
            column,
            lag_ms,
            max_seen: None,
            emitted: Watermark::MIN,
        }
    }

    /// The highest event time seen (recorded at checkpoints).
    pub fn max_seen(&self) -> Option<i64> {
        self.max_seen
    }

    /// Resumes after a restore: the highest event time seen before it.
    pub fn restore(&mut self, max_seen: Option<i64>) {
        self.max_seen = max_seen;
    }

    /// Takes a batch into account; returns a watermark when it advances.
    ///
    /// # Errors
    /// When the column is not a timestamp.
    pub fn observe(&mut self, batch: &RecordBatch) -> Result<Option<Watermark>> {
        let column = batch.column(self.column);
        let ms = arrow::compute::cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))
            .map_err(|e| Error::arrow("reading event time", e))?;
        let Some(ms) = ms.as_any().downcast_ref::<TimestampMillisecondArray>() else {
            return Err(Error::Other("event time column is not a timestamp".into()));
        };
        let Some(max) = arrow::compute::max(ms) else {
            return Ok(None);
        };
        let max = self.max_seen.map_or(max, |m| m.max(max));
        self.max_seen = Some(max);
        let next = Watermark(max.saturating_sub(self.lag_ms).saturating_sub(1));
        if next > self.emitted {
            self.emitted = next;
            Ok(Some(next))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(ts: Vec<Option<i64>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(TimestampMillisecondArray::from(ts))])
            .expect("batch")
    }

    #[test]
    fn trails_the_maximum_and_never_regresses() {
        let mut g = WatermarkGenerator::new(0, 100);
        assert_eq!(
            g.observe(&batch(vec![Some(1000), Some(900)])).expect("ok"),
            Some(Watermark(899))
        );
        assert_eq!(g.observe(&batch(vec![Some(950)])).expect("ok"), None);
        assert_eq!(g.observe(&batch(vec![None])).expect("ok"), None);
        assert_eq!(
            g.observe(&batch(vec![Some(2000)])).expect("ok"),
            Some(Watermark(1899))
        );
    }
}
