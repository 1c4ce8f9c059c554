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
use std::time::{Duration, Instant};

use arrow::array::{Array, Int32Array, TimestampMillisecondArray};
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
///
/// A source instance reading several splits interleaved (Kafka partitions)
/// tracks the highest time per split and takes the minimum over them, so a
/// split that lags behind another is not made late by it (Flink's per-split
/// watermarks). An assigned split holds the watermark back until it has
/// data; with an idle timeout, a split silent for that long stops counting
/// until it has data again.
#[derive(Debug, Clone)]
pub struct WatermarkGenerator {
    column: usize,
    lag_ms: i64,
    /// The event time the watermark derives from; never goes back.
    max_seen: Option<i64>,
    /// Per-split clocks, when the input has splits.
    splits: Vec<SplitClock>,
    idle_timeout: Option<Duration>,
    emitted: Watermark,
}

/// Where one split stands.
#[derive(Debug, Clone)]
struct SplitClock {
    id: i32,
    /// Highest event time of the split; `None` before its first record.
    max: Option<i64>,
    /// When the split last had data (or was assigned).
    active_at: Instant,
}

impl WatermarkGenerator {
    /// Watches timestamp column `column`, trailing by `lag_ms`.
    pub fn new(column: usize, lag_ms: i64) -> Self {
        Self {
            column,
            lag_ms,
            max_seen: None,
            splits: Vec::new(),
            idle_timeout: None,
            emitted: Watermark::MIN,
        }
    }

    /// Splits silent for `timeout` stop holding the watermark back.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The event time the current watermark derives from (recorded at
    /// checkpoints): the highest seen, or with splits the lowest of the
    /// splits' highest.
    pub fn max_seen(&self) -> Option<i64> {
        self.max_seen
    }

    /// Resumes after a restore from [`max_seen`](Self::max_seen) as
    /// recorded; splits start afresh from there.
    pub fn restore(&mut self, max_seen: Option<i64>) {
        self.max_seen = max_seen;
    }

    /// The splits of the input, as of `now`: each holds the watermark back
    /// until it has data (or is idle). Empty: no splits.
    pub fn assign_splits(&mut self, ids: &[i32], now: Instant) {
        self.splits = ids
            .iter()
            .map(|&id| SplitClock {
                id,
                max: None,
                active_at: now,
            })
            .collect();
    }

    /// Takes a batch into account; returns a watermark when it advances.
    ///
    /// # Errors
    /// When the column is not a timestamp.
    pub fn observe(&mut self, batch: &RecordBatch) -> Result<Option<Watermark>> {
        let ms = self.event_times(batch)?;
        let Some(max) = arrow::compute::max(&ms) else {
            return Ok(None);
        };
        Ok(self.advance(max))
    }

    /// Takes a batch into account whose row `i` came from split `splits[i]`,
    /// at processing time `now`; returns a watermark when it advances.
    ///
    /// # Errors
    /// When the column is not a timestamp or `splits` does not match the batch.
    pub fn observe_splits(
        &mut self,
        batch: &RecordBatch,
        splits: &Int32Array,
        now: Instant,
    ) -> Result<Option<Watermark>> {
        if splits.len() != batch.num_rows() {
            return Err(Error::Other(format!(
                "{} split ids for {} rows",
                splits.len(),
                batch.num_rows()
            )));
        }
        let ms = self.event_times(batch)?;
        let mut at = usize::MAX;
        for (split, time) in splits.iter().zip(ms.iter()) {
            let (Some(split), Some(time)) = (split, time) else {
                continue;
            };
            // Rows of one split come in runs: look up only on a change.
            if self.splits.get(at).is_none_or(|s| s.id != split) {
                at = match self.splits.iter().position(|s| s.id == split) {
                    Some(i) => i,
                    None => {
                        self.splits.push(SplitClock {
                            id: split,
                            max: None,
                            active_at: now,
                        });
                        self.splits.len() - 1
                    }
                };
            }
            let clock = &mut self.splits[at];
            clock.max = Some(clock.max.map_or(time, |m| m.max(time)));
            clock.active_at = now;
        }
        let idle = self.idle_timeout;
        let mut lowest: Option<i64> = None;
        for clock in &self.splits {
            if idle.is_some_and(|t| now.saturating_duration_since(clock.active_at) >= t) {
                continue;
            }
            match clock.max {
                // An active split without data yet holds everything back.
                None => return Ok(None),
                Some(m) => lowest = Some(lowest.map_or(m, |l| l.min(m))),
            }
        }
        Ok(lowest.and_then(|l| self.advance(l)))
    }

    fn event_times(&self, batch: &RecordBatch) -> Result<TimestampMillisecondArray> {
        let column = batch.column(self.column);
        let ms = arrow::compute::cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))
            .map_err(|e| Error::arrow("reading event time", e))?;
        match ms.as_any().downcast_ref::<TimestampMillisecondArray>() {
            Some(ms) => Ok(ms.clone()),
            None => Err(Error::Other("event time column is not a timestamp".into())),
        }
    }

    /// Moves the time the watermark derives from up to `time` (never back).
    fn advance(&mut self, time: i64) -> Option<Watermark> {
        let max = self.max_seen.map_or(time, |m| m.max(time));
        self.max_seen = Some(max);
        let next = Watermark(max.saturating_sub(self.lag_ms).saturating_sub(1));
        (next > self.emitted).then(|| {
            self.emitted = next;
            next
        })
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

    fn observe_rows(
        g: &mut WatermarkGenerator,
        rows: &[(i32, i64)],
        now: Instant,
    ) -> Option<Watermark> {
        let b = batch(rows.iter().map(|r| Some(r.1)).collect());
        let splits = Int32Array::from_iter_values(rows.iter().map(|r| r.0));
        g.observe_splits(&b, &splits, now).expect("observe")
    }

    #[test]
    fn a_lagging_split_holds_the_watermark_back() {
        let now = Instant::now();
        let mut g = WatermarkGenerator::new(0, 0);
        g.assign_splits(&[0, 1], now);
        // Split 1 has no data yet: nothing may be declared complete.
        assert_eq!(observe_rows(&mut g, &[(0, 5000)], now), None);
        assert_eq!(
            observe_rows(&mut g, &[(1, 1000)], now),
            Some(Watermark(999))
        );
        assert_eq!(
            observe_rows(&mut g, &[(1, 2000), (0, 6000)], now),
            Some(Watermark(1999))
        );
        assert_eq!(g.max_seen(), Some(2000));
    }

    #[test]
    fn an_idle_split_stops_holding_back_until_it_has_data() {
        let start = Instant::now();
        let mut g = WatermarkGenerator::new(0, 0).with_idle_timeout(Some(Duration::from_secs(1)));
        g.assign_splits(&[0, 1], start);
        assert_eq!(observe_rows(&mut g, &[(0, 5000)], start), None);
        let later = start + Duration::from_secs(2);
        assert_eq!(
            observe_rows(&mut g, &[(0, 6000)], later),
            Some(Watermark(5999))
        );
        // Split 1 is back, behind: the watermark does not go back, nor ahead of it.
        assert_eq!(observe_rows(&mut g, &[(1, 3000)], later), None);
        assert_eq!(
            observe_rows(&mut g, &[(0, 9000), (1, 7000)], later),
            Some(Watermark(6999))
        );
    }

    #[test]
    fn split_ids_must_match_the_rows() {
        let mut g = WatermarkGenerator::new(0, 0);
        let b = batch(vec![Some(1), Some(2)]);
        let splits = Int32Array::from_iter_values([0]);
        assert!(g.observe_splits(&b, &splits, Instant::now()).is_err());
    }

    proptest::proptest! {
        /// Splits each in event-time order, interleaved in any way and cut
        /// into any batches: no record is ever behind the watermark, and the
        /// watermark never goes back.
        #[test]
        fn interleaved_ordered_splits_are_never_late(
            steps in proptest::collection::vec((0i32..4, 0i64..50, 1usize..5), 1..200),
        ) {
            let now = Instant::now();
            let mut g = WatermarkGenerator::new(0, 0);
            g.assign_splits(&[0, 1, 2, 3], now);
            let mut clocks = [0i64; 4];
            let mut watermark = Watermark::MIN;
            let mut pending: Vec<(i32, i64)> = Vec::new();
            for (split, step, cut) in steps {
                clocks[split as usize] += step;
                pending.push((split, clocks[split as usize]));
                if pending.len() >= cut {
                    for row in &pending {
                        proptest::prop_assert!(Watermark(row.1) > watermark, "{row:?} late at {watermark:?}");
                    }
                    if let Some(w) = observe_rows(&mut g, &pending, now) {
                        proptest::prop_assert!(w > watermark);
                        watermark = w;
                    }
                    pending.clear();
                }
            }
        }
    }
}
