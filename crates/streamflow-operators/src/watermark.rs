//! `watermark`: (re)declares the event time of a stream mid-pipeline and
//! generates its watermarks, for streams whose time only exists after a
//! transformation (Flink's `assignTimestampsAndWatermarks`).
//!
//! ```yaml
//! - name: timed
//!   type: watermark
//!   input: parsed
//!   event_time: {expr: "to_timestamp_millis(ts_ms)", as: ts, watermark: {max_out_of_orderness: 2s}}
//! ```
//!
//! The declaration is the same as a source's `event_time` (`column` or
//! `expr`, `unit`, `as`, `watermark`). The stage's output carries the
//! event-time column; the watermarks of its input are replaced by the ones
//! it derives from that column (bounded out-of-orderness). At the end of its
//! input it emits the final watermark, so downstream windows fire.

use std::sync::Arc;

use arrow::array::{Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::{
    CheckpointBarrier, Diagnostics, Error, Operator, OperatorSnapshot, Output, Result, Watermark,
};
use streamflow_dsl::EventTimeSpec;
use streamflow_expr::UsedColumns;

use crate::event_time::EventTimeAssigner;
use crate::snapshot;
use crate::stage::{StageContext, StageFactory};

/// Settings of a `watermark` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatermarkConfig {
    /// The event time of the output and its watermark strategy.
    event_time: EventTimeSpec,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: WatermarkConfig = ctx.config()?;
    if config.event_time.watermark.idle_timeout.is_some() {
        return Err(Diagnostics::from(streamflow_core::Diagnostic::new(
            ctx.at("event_time.watermark.idle_timeout"),
            "idle_timeout belongs to sources; a watermark stage passes on its input's idleness",
        )));
    }
    let assigner = EventTimeAssigner::plan(
        &ctx.input_schema(),
        &config.event_time,
        &ctx.at("event_time"),
    )?;
    Ok(Arc::new(WatermarkFactory {
        assigner: Arc::new(assigner),
    }))
}

struct WatermarkFactory {
    assigner: Arc<EventTimeAssigner>,
}

impl StageFactory for WatermarkFactory {
    fn output_schema(&self) -> SchemaRef {
        self.assigner.schema()
    }
    fn create(&self) -> Box<dyn Operator> {
        Box::new(WatermarkOperator {
            watermarks: self.assigner.watermarks(),
            assigner: Arc::clone(&self.assigner),
            ended: false,
        })
    }
    fn event_time_column(&self) -> Option<String> {
        Some(self.assigner.column().to_string())
    }
    fn input_columns(&self, output: &UsedColumns) -> Option<UsedColumns> {
        Some(self.assigner.input_columns(output))
    }
}

struct WatermarkOperator {
    assigner: Arc<EventTimeAssigner>,
    watermarks: WatermarkGenerator,
    ended: bool,
}

impl WatermarkOperator {
    fn end(&mut self, out: &mut Output) {
        if !self.ended {
            self.ended = true;
            out.emit_watermark(Watermark::MAX);
        }
    }
}

#[async_trait]
impl Operator for WatermarkOperator {
    async fn open(&mut self, restored: Option<OperatorSnapshot>) -> Result<()> {
        if let Some(s) = restored {
            let max = snapshot::watermark(&s)?;
            self.watermarks.restore((max != i64::MIN).then_some(max));
        }
        Ok(())
    }

    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        let batch = self.assigner.assign(batch)?;
        let watermark = self.watermarks.observe(&batch)?;
        out.emit(batch);
        if let Some(w) = watermark {
            out.emit_watermark(w);
        }
        Ok(())
    }

    async fn process_watermark(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        // The input's own watermarks are replaced, but its end is passed on.
        if watermark == Watermark::MAX {
            self.end(out);
        }
        Ok(())
    }

    fn generates_watermarks(&self) -> bool {
        true
    }

    async fn snapshot(&mut self, _barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        let mut s = OperatorSnapshot::default();
        snapshot::put_watermark(&mut s, self.watermarks.max_seen().unwrap_or(i64::MIN))?;
        Ok(s)
    }

    async fn finish(&mut self, out: &mut Output) -> Result<()> {
        self.end(out);
        Ok(())
    }
}

/// Watermarks derived from an event-time column (at sources and `watermark`
/// stages). Bounded out-of-orderness: the watermark trails the highest event time
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
