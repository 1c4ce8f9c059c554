//! `window`: event-time tumbling and sliding windows, keyed by `key_by` or
//! global, computing any DataFusion aggregate.
//!
//! ```yaml
//! - name: hot
//!   type: window
//!   input: bids
//!   key_by: [auction]
//!   window: {kind: sliding, size: 10s, slide: 2s}
//!   aggregates: {bids: "count(*)", top: "max(price)"}
//! ```
//!
//! A window `[start, end)` fires when the watermark reaches `end - 1`,
//! emitting one row per key: `window_start, window_end, window_time, <keys>,
//! <aggregates>`; its state is then freed. `window_time` (`window_end - 1ms`)
//! is the event time of the output, so windows cascade and window results
//! can be joined; the results are emitted before the watermark that fired
//! them is passed on, so they are never late downstream. A record whose every window has already fired
//! is late: it is counted and sent to the stage's `late` output (a sink, in
//! the stage's input schema), never merged into a fired result.
//! Event time comes from the source's `event_time` column unless
//! `time_column` names another timestamp column. With `time: processing`,
//! records are placed by the wall-clock time they reach the stage and windows
//! fire on the wall clock (no event time needed; nothing is ever late).

mod assign;
mod count;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array,
    new_null_array,
};
use arrow::compute::{concat, interleave, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::row::Rows;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::changelog::{OP_COLUMN, RowKind};
use streamflow_core::{
    CheckpointBarrier, Diagnostics, Error, Operator, OperatorSnapshot, Output, Result, Watermark,
};
use streamflow_dsl::HumanDuration;
use streamflow_expr::hash_utils::RandomState;
use streamflow_expr::{CompiledAggregate, CompiledExpr, GroupedAggregate, UsedColumns};

pub use assign::Assigner;

use crate::event_time::{millis, null_event_time, time_column_index};
use crate::grouping::{KeyRows, plan_aggregates, plan_keys, take_rows};
use crate::snapshot;
use crate::stage::{StageContext, StageFactory};
use streamflow_state::put_keyed;

/// Settings of a `window` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowConfig {
    /// Window shape.
    window: WindowSpec,
    /// Output column → aggregate call (`count(*)`, `max(price)`, ...).
    aggregates: Map<String, Value>,
    /// Timestamp column holding event time (default: the source's `event_time` column).
    time_column: Option<String>,
    /// Which clock places records in windows (default `event`).
    #[serde(default)]
    time: TimeDomain,
    /// How long after firing a tumbling/sliding window still takes late
    /// records, re-emitting its updated results (default 0).
    allowed_lateness: Option<HumanDuration>,
}

/// The clock windows follow.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TimeDomain {
    /// The record's event time; windows fire with the watermark.
    #[default]
    Event,
    /// The wall clock when the record reaches the stage.
    Processing,
}

/// Window shapes.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum WindowSpec {
    /// Fixed, non-overlapping windows of `size`.
    Tumbling { size: HumanDuration },
    /// Windows of `size` starting every `slide`.
    Sliding {
        size: HumanDuration,
        slide: HumanDuration,
    },
    /// Per-key sessions: records closer than `gap` (inclusive) share a window.
    Session { gap: HumanDuration },
    /// Per-key count windows: every `slide` records (default `size`), the
    /// last `size` records of the key (arrival order, no event time).
    Count { size: u64, slide: Option<u64> },
}

/// How records are grouped into windows.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Tumbling or sliding, aligned to the epoch.
    Aligned(Assigner),
    /// Sessions with this gap in milliseconds.
    Session(i64),
    /// Count windows: `(size, slide)` in records.
    Count(u64, u64),
}

#[derive(Clone)]
struct WindowFactory {
    schema: SchemaRef,
    /// Event-time column (event-time windows).
    time_index: Option<usize>,
    /// Which clock places records and fires windows.
    time: TimeDomain,
    keys: Vec<CompiledExpr>,
    aggregates: Vec<CompiledAggregate>,
    shape: Shape,
    /// Allowed lateness in ms; > 0 makes the output a changelog.
    lateness: i64,
    name: String,
    /// The input columns it reads: keys, aggregate arguments, event time.
    reads: UsedColumns,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: WindowConfig = ctx.config()?;
    let input = ctx.input_schema();
    let mut d = Diagnostics::new();
    let ms = |d: HumanDuration| d.0.as_millis() as i64;
    let shape = match config.window {
        WindowSpec::Tumbling { size } => Shape::Aligned(Assigner {
            size: ms(size),
            slide: ms(size),
        }),
        WindowSpec::Sliding { size, slide } => Shape::Aligned(Assigner {
            size: ms(size),
            slide: ms(slide),
        }),
        WindowSpec::Session { gap } => Shape::Session(ms(gap)),
        WindowSpec::Count { size, slide } => Shape::Count(size, slide.unwrap_or(size)),
    };
    match shape {
        Shape::Aligned(a) => check_assigner(ctx, a, &mut d),
        Shape::Session(gap) if gap <= 0 => d.push(ctx.at("window.gap"), "must be at least 1ms"),
        Shape::Session(_) => {}
        Shape::Count(size, slide) => {
            if size == 0 {
                d.push(ctx.at("window.size"), "must be at least 1");
            }
            if slide == 0 {
                d.push(ctx.at("window.slide"), "must be at least 1");
            }
        }
    }
    let timed = !matches!(shape, Shape::Count(..));
    let processing = config.time == TimeDomain::Processing;
    if processing && !timed {
        d.push(ctx.at("time"), "count windows follow no clock");
    }
    if processing && config.time_column.is_some() {
        d.push(
            ctx.at("time_column"),
            "processing-time windows take no time column",
        );
    }
    let time_index = if timed && !processing {
        time_column_index(ctx, config.time_column.as_deref(), "window", &mut d)
    } else {
        None
    };
    let lateness = config.allowed_lateness.map_or(0, ms);
    if lateness > 0 && !matches!(shape, Shape::Aligned(_)) {
        d.push(
            ctx.at("allowed_lateness"),
            "only tumbling and sliding windows take allowed_lateness",
        );
    }
    if lateness > 0 && processing {
        d.push(
            ctx.at("allowed_lateness"),
            "processing-time windows have no late records",
        );
    }
    let mut fields = Vec::new();
    if lateness > 0 {
        fields.push(Field::new(OP_COLUMN, DataType::Utf8, false));
    }
    if timed {
        for bound in [WINDOW_START, WINDOW_END, WINDOW_TIME] {
            fields.push(Field::new(
                bound,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ));
        }
    }
    let keys = plan_keys(ctx, &input, &mut fields, &mut d);
    let aggregates = plan_aggregates(ctx, &config.aggregates, &input, &mut fields, &mut d, None);
    d.into_result(())?;
    if timed && !processing && time_index.is_none() {
        return Err(Diagnostics::new());
    }
    let mut reads = UsedColumns::none();
    keys.iter().for_each(|k| reads.extend(k.columns()));
    aggregates.iter().for_each(|a| reads.extend(a.columns()));
    if let Some(t) = time_index {
        reads.add(vec![input.field(t).name().clone()]);
    }
    Ok(Arc::new(WindowFactory {
        reads,
        schema: Arc::new(Schema::new(fields)),
        time_index,
        time: config.time,
        keys,
        aggregates,
        shape,
        lateness,
        name: ctx.name.to_string(),
    }))
}

/// Output column: the first instant of a window.
pub(crate) const WINDOW_START: &str = "window_start";
/// Output column: the first instant after a window.
pub(crate) const WINDOW_END: &str = "window_end";
/// Output column: the event time of a window's result, `window_end - 1ms`
/// (the last instant inside it, as Flink's window TVFs define it), so that
/// results can be windowed again or joined in event time.
pub(crate) const WINDOW_TIME: &str = "window_time";

/// The `window_start, window_end, window_time` columns of fired windows.
pub(crate) fn bound_columns(starts: Vec<i64>, ends: Vec<i64>) -> [ArrayRef; 3] {
    let times: Vec<i64> = ends.iter().map(|e| e - 1).collect();
    [
        Arc::new(TimestampMillisecondArray::from(starts)),
        Arc::new(TimestampMillisecondArray::from(ends)),
        Arc::new(TimestampMillisecondArray::from(times)),
    ]
}

/// Checks a tumbling or sliding window's size and slide.
pub(crate) fn check_assigner(ctx: &StageContext<'_>, a: Assigner, d: &mut Diagnostics) {
    if a.size <= 0 {
        d.push(ctx.at("window.size"), "must be at least 1ms");
    }
    if a.slide <= 0 {
        d.push(ctx.at("window.slide"), "must be at least 1ms");
    } else if a.slide > a.size {
        d.push(
            ctx.at("window.slide"),
            "must not exceed size (rows between windows would belong to none)",
        );
    }
}

impl StageFactory for WindowFactory {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    /// Windows pass no input column through: they read only their own.
    fn input_columns(&self, _output: &UsedColumns) -> Option<UsedColumns> {
        Some(self.reads.clone())
    }
    /// Event-time windows' results are in event time: `window_time`.
    fn event_time_column(&self) -> Option<String> {
        let event_time = self.time == TimeDomain::Event && !matches!(self.shape, Shape::Count(..));
        event_time.then(|| WINDOW_TIME.to_string())
    }
    fn create(&self) -> Box<dyn Operator> {
        let factory = Arc::new(self.clone());
        let operator: Box<dyn Operator> = match self.shape {
            Shape::Aligned(assigner) => Box::new(WindowOperator {
                factory,
                assigner,
                keys: KeyRows::default(),
                panes: BTreeMap::new(),
                watermark: i64::MIN,
                late: 0,
                lateness: self.lateness,
            }),
            Shape::Session(gap) => Box::new(session::SessionOperator::new(factory, gap)),
            Shape::Count(size, slide) => Box::new(count::CountOperator::new(factory, size, slide)),
        };
        match (self.time, self.shape) {
            (TimeDomain::Processing, Shape::Aligned(a)) => {
                Box::new(ProcessingTime::new(operator, a.slide))
            }
            (TimeDomain::Processing, Shape::Session(gap)) => {
                Box::new(ProcessingTime::new(operator, gap))
            }
            _ => operator,
        }
    }
}

/// Drives a window operator by the wall clock instead of watermarks: records
/// were stamped with processing time on arrival, and the clock, read on a
/// timer, acts as the watermark. Upstream watermarks are ignored.
struct ProcessingTime {
    inner: Box<dyn Operator>,
    period: std::time::Duration,
}

impl ProcessingTime {
    /// Fires at least every 100 ms, more often for finer windows.
    fn new(inner: Box<dyn Operator>, granularity_ms: i64) -> Self {
        let period = std::time::Duration::from_millis(granularity_ms.clamp(1, 100) as u64);
        Self { inner, period }
    }
}

#[async_trait]
impl Operator for ProcessingTime {
    async fn open(&mut self, restored: Option<OperatorSnapshot>) -> Result<()> {
        self.inner.open(restored).await
    }

    async fn snapshot(&mut self, barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        self.inner.snapshot(barrier).await
    }
    async fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        self.inner.process_batch(input, batch, out).await
    }

    fn timer_interval(&self) -> Option<std::time::Duration> {
        Some(self.period)
    }

    async fn on_timer(&mut self, now_ms: i64, out: &mut Output) -> Result<()> {
        self.inner
            .process_watermark(Watermark(now_ms.saturating_sub(1)), out)
            .await
    }

    async fn finish(&mut self, out: &mut Output) -> Result<()> {
        self.inner.finish(out).await
    }
}

/// The state of one window: its keys and an aggregate state per aggregate.
struct Pane {
    groups: HashMap<Box<[u8]>, usize, RandomState>,
    keys: Option<Rows>,
    states: Vec<GroupedAggregate>,
    len: usize,
    /// With allowed lateness, once fired: the values last emitted, per aggregate.
    emitted: Option<Vec<ArrayRef>>,
    /// Groups updated by late records since the last emission.
    dirty: Vec<usize>,
}

struct WindowOperator {
    factory: Arc<WindowFactory>,
    assigner: Assigner,
    keys: KeyRows,
    /// Open windows, and fired ones kept for allowed lateness, by start.
    panes: BTreeMap<i64, Pane>,
    watermark: i64,
    late: u64,
    lateness: i64,
}

fn err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("{context}: {e}"))
}

impl WindowFactory {
    /// Event times of `batch` in milliseconds.
    fn event_times(&self, batch: &RecordBatch) -> Result<TimestampMillisecondArray> {
        if self.time == TimeDomain::Processing {
            let now = streamflow_core::processing_time_ms();
            return Ok(TimestampMillisecondArray::from_value(now, batch.num_rows()));
        }
        let index = self
            .time_index
            .ok_or_else(|| Error::Other("window without event time".into()))?;
        millis(batch.column(index))
    }

    /// Argument arrays of every aggregate for `batch`.
    fn arguments(&self, batch: &RecordBatch) -> Result<Vec<Vec<ArrayRef>>> {
        crate::grouping::arguments(&self.aggregates, batch)
    }

    /// Fresh aggregate states, one per aggregate.
    fn new_states(&self) -> Result<Vec<GroupedAggregate>> {
        self.aggregates
            .iter()
            .map(|a| a.new_state().map_err(|e| err(a.sql(), e)))
            .collect()
    }
}

impl WindowOperator {
    fn new_pane(&self) -> Result<Pane> {
        let states = self.factory.new_states()?;
        let keys = self.keys.converter.as_ref().map(|c| c.empty_rows(64, 1024));
        Ok(Pane {
            groups: HashMap::with_hasher(RandomState::default()),
            keys,
            states,
            len: 0,
            emitted: None,
            dirty: Vec::new(),
        })
    }

    /// Whether the window starting at `start` takes no more records.
    fn expired(&self, start: i64, watermark: i64) -> bool {
        self.assigner
            .fired(start.saturating_add(self.lateness), watermark)
    }

    /// Output rows of a pane: `picks` are `(source, group)` pairs, where
    /// source 0 reads `before` and 1 reads `now` (value arrays per aggregate).
    fn rows(
        &self,
        start: i64,
        keys: Option<&Rows>,
        picks: &[(usize, usize)],
        ops: Option<Vec<RowKind>>,
        before: Option<&[ArrayRef]>,
        now: &[ArrayRef],
    ) -> Result<RecordBatch> {
        let n = picks.len();
        let mut columns: Vec<ArrayRef> = Vec::new();
        if let Some(ops) = ops {
            columns.push(Arc::new(StringArray::from_iter_values(
                ops.into_iter().map(RowKind::as_str),
            )));
        }
        columns.extend(bound_columns(
            vec![start; n],
            vec![start + self.assigner.size; n],
        ));
        if let (Some(conv), Some(keys)) = (&self.keys.converter, keys) {
            columns.extend(
                conv.convert_rows(picks.iter().map(|&(_, g)| keys.row(g)))
                    .map_err(|e| Error::arrow("window keys", e))?,
            );
        }
        for (a, value) in now.iter().enumerate() {
            let sources: Vec<&dyn Array> = match before {
                Some(b) => vec![b[a].as_ref(), value.as_ref()],
                None => vec![value.as_ref(), value.as_ref()],
            };
            columns
                .push(interleave(&sources, picks).map_err(|e| Error::arrow("window output", e))?);
        }
        RecordBatch::try_new(Arc::clone(&self.factory.schema), columns)
            .map_err(|e| Error::arrow("window output", e))
    }

    /// Current values of every aggregate of a pane, leaving its state intact.
    fn values(pane: &mut Pane) -> Result<Vec<ArrayRef>> {
        pane.states
            .iter_mut()
            .map(|s| s.values().map_err(|e| err("window aggregate", e)))
            .collect()
    }

    /// Emits the results of a window for the first time.
    fn first_result(
        &self,
        start: i64,
        keys: Option<&Rows>,
        len: usize,
        values: &[ArrayRef],
        out: &mut Output,
    ) -> Result<()> {
        let picks: Vec<(usize, usize)> = (0..len).map(|g| (1, g)).collect();
        let ops = (self.lateness > 0).then(|| vec![RowKind::Insert; len]);
        out.emit(self.rows(start, keys, &picks, ops, None, values)?);
        Ok(())
    }

    /// Re-emits the groups of fired windows that late records updated:
    /// `-U` old value, `+U` new value (`+I` for a group new to the window).
    fn emit_updates(&mut self, out: &mut Output) -> Result<()> {
        let starts: Vec<i64> = self
            .panes
            .iter()
            .filter(|(_, p)| p.emitted.is_some() && !p.dirty.is_empty())
            .map(|(s, _)| *s)
            .collect();
        for start in starts {
            let Some(mut pane) = self.panes.remove(&start) else {
                continue;
            };
            let now = Self::values(&mut pane)?;
            let before = pane.emitted.take().unwrap_or_default();
            let emitted_groups = before.first().map_or(0, |b| b.len());
            let mut dirty = std::mem::take(&mut pane.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            let mut picks = Vec::with_capacity(dirty.len() * 2);
            let mut ops = Vec::with_capacity(dirty.len() * 2);
            for g in dirty {
                if g < emitted_groups {
                    picks.extend([(0, g), (1, g)]);
                    ops.extend([RowKind::UpdateBefore, RowKind::UpdateAfter]);
                } else {
                    picks.push((1, g));
                    ops.push(RowKind::Insert);
                }
            }
            out.emit(self.rows(
                start,
                pane.keys.as_ref(),
                &picks,
                Some(ops),
                Some(&before),
                &now,
            )?);
            pane.emitted = Some(now);
            self.panes.insert(start, pane);
        }
        Ok(())
    }

    /// Emits every pane that `watermark` completes (all, at end of input),
    /// and frees those past their allowed lateness.
    fn fire(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        while let Some(start) = self.panes.first_key_value().map(|(s, _)| *s) {
            if !self.expired(start, watermark) {
                break;
            }
            let Some(pane) = self.panes.remove(&start) else {
                break;
            };
            if pane.emitted.is_none() {
                // Final result, consuming the state.
                let values = pane
                    .states
                    .into_iter()
                    .map(|state| state.finish().map_err(|e| err("window aggregate", e)))
                    .collect::<Result<Vec<_>>>()?;
                self.first_result(start, pane.keys.as_ref(), pane.len, &values, out)?;
            }
        }
        if self.lateness == 0 {
            return Ok(());
        }
        // Fired windows kept open for late records: emit their first result.
        let fired: Vec<i64> = self
            .panes
            .iter()
            .take_while(|(start, _)| self.assigner.fired(**start, watermark))
            .filter(|(_, p)| p.emitted.is_none())
            .map(|(s, _)| *s)
            .collect();
        for start in fired {
            let Some(mut pane) = self.panes.remove(&start) else {
                continue;
            };
            let values = Self::values(&mut pane)?;
            self.first_result(start, pane.keys.as_ref(), pane.len, &values, out)?;
            pane.emitted = Some(values);
            self.panes.insert(start, pane);
        }
        Ok(())
    }
}

impl WindowOperator {
    /// One batch per pane: `start, key, emitted, a<i>_<j>` (aggregate
    /// states), and with allowed lateness `e<i>` (values last emitted).
    fn snapshot_panes(&mut self, snap: &mut OperatorSnapshot) -> Result<()> {
        let lateness = self.lateness;
        for (start, pane) in self.panes.iter_mut() {
            let n = pane.len;
            let keys: Vec<&[u8]> = match &pane.keys {
                Some(k) => (0..n).map(|g| k.row(g).data()).collect(),
                None => vec![&[]; n],
            };
            let groups = self.keys.key_groups(keys.iter().copied())?;
            let emitted_len = pane
                .emitted
                .as_ref()
                .and_then(|e| e.first())
                .map_or(0, |a| a.len());
            let mut cols: Vec<(String, ArrayRef)> = vec![
                ("start".into(), Arc::new(Int64Array::from_value(*start, n))),
                ("key".into(), snapshot::binary(keys)),
                (
                    "emitted".into(),
                    Arc::new(BooleanArray::from_iter(
                        (0..n).map(|g| Some(g < emitted_len)),
                    )),
                ),
            ];
            let states = pane
                .states
                .iter_mut()
                .map(|state| Ok(vec![state.export().map_err(|e| err("window state", e))?]))
                .collect::<Result<Vec<_>>>()?;
            snapshot::push_states(&mut cols, states)?;
            if lateness > 0 {
                for (i, agg) in self.factory.aggregates.iter().enumerate() {
                    let values = match &pane.emitted {
                        Some(e) => {
                            let pad = new_null_array(e[i].data_type(), n - emitted_len);
                            concat(&[e[i].as_ref(), pad.as_ref()])
                                .map_err(|e| Error::arrow("window state", e))?
                        }
                        None => new_null_array(agg.field().data_type(), n),
                    };
                    cols.push((format!("e{i}"), values));
                }
            }
            put_keyed(snap, "panes", snapshot::batch(cols)?, groups.as_deref())?;
        }
        Ok(())
    }

    /// Rebuilds the panes from [`snapshot_panes`](Self::snapshot_panes)
    /// batches (of any instances): emitted groups first in each pane.
    fn restore_panes(&mut self, b: &RecordBatch) -> Result<()> {
        let starts = snapshot::int64(b, "start")?;
        let emitted = snapshot::column::<BooleanArray>(b, "emitted")?;
        let mut by_pane: BTreeMap<i64, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
        for r in 0..b.num_rows() {
            let e = by_pane.entry(starts.value(r)).or_default();
            if emitted.value(r) {
                e.0.push(r as u32);
            } else {
                e.1.push(r as u32);
            }
        }
        let f = Arc::clone(&self.factory);
        for (start, (done, fresh)) in by_pane {
            let emitted_len = done.len();
            let order: Vec<u32> = done.into_iter().chain(fresh).collect();
            let part = take_record_batch(b, &UInt32Array::from(order))
                .map_err(|e| Error::arrow("window state", e))?;
            let mut pane = self.new_pane()?;
            let keys = snapshot::bytes(&part, "key")?;
            if let (Some(conv), Some(rows)) = (&self.keys.converter, pane.keys.as_mut()) {
                let parser = conv.parser();
                for g in 0..part.num_rows() {
                    pane.groups.insert(keys.value(g).into(), g);
                    rows.push(parser.parse(keys.value(g)));
                }
            }
            pane.len = part.num_rows();
            let states = snapshot::state_columns(&f.aggregates, &part)?;
            pane.states = snapshot::restore_states(&f.aggregates, &states, 0, pane.len)?;
            if emitted_len > 0 {
                let values = snapshot::numbered(&part, "e", f.aggregates.len())?;
                pane.emitted = Some(values.iter().map(|v| v.slice(0, emitted_len)).collect());
            }
            self.panes.insert(start, pane);
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for WindowOperator {
    async fn open(&mut self, restored: Option<OperatorSnapshot>) -> Result<()> {
        self.keys.prepare(&self.factory.keys)?;
        let Some(snap) = restored else {
            return Ok(());
        };
        self.watermark = snapshot::watermark(&snap)?;
        if let Some(b) = snapshot::entries(&snap, "panes")? {
            self.restore_panes(&b)?;
        }
        Ok(())
    }

    async fn snapshot(&mut self, _barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        let mut snap = OperatorSnapshot::default();
        snapshot::put_watermark(&mut snap, self.watermark)?;
        self.snapshot_panes(&mut snap)?;
        Ok(snap)
    }

    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        let f = Arc::clone(&self.factory);
        let n = batch.num_rows();
        let times = f.event_times(&batch)?;
        let key_rows = self.keys.rows(&f.keys, &batch)?;
        let args = f.arguments(&batch)?;

        // Rows per window; rows all of whose windows have fired are late.
        let mut rows_of: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        let mut late_rows: Vec<u32> = Vec::new();
        for row in 0..n {
            if times.is_null(row) {
                null_event_time(&batch, row, out);
                continue;
            }
            let mut placed = false;
            for start in self.assigner.windows(times.value(row)) {
                if !self.expired(start, self.watermark) {
                    rows_of.entry(start).or_default().push(row as u32);
                    placed = true;
                }
            }
            if !placed {
                late_rows.push(row as u32);
            }
        }
        if !late_rows.is_empty() {
            self.late += late_rows.len() as u64;
            let late = take_record_batch(&batch, &UInt32Array::from(late_rows))
                .map_err(|e| Error::arrow("late rows", e))?;
            out.emit_late(late);
        }
        for (start, rows) in rows_of {
            if !self.panes.contains_key(&start) {
                let pane = self.new_pane()?;
                self.panes.insert(start, pane);
            }
            let Some(pane) = self.panes.get_mut(&start) else {
                continue;
            };
            let mut group_ids = Vec::with_capacity(rows.len());
            for &r in &rows {
                let id = match (&key_rows, pane.keys.as_mut()) {
                    (Some(kr), Some(keys)) => {
                        let row = kr.row(r as usize);
                        match pane.groups.get(row.as_ref()) {
                            Some(&g) => g,
                            None => {
                                let g = pane.len;
                                pane.groups.insert(row.as_ref().into(), g);
                                keys.push(row);
                                pane.len += 1;
                                g
                            }
                        }
                    }
                    _ => {
                        pane.len = 1;
                        0
                    }
                };
                group_ids.push(id);
            }
            let taken = take_rows(&args, rows, n)?;
            for (state, values) in pane.states.iter_mut().zip(&taken) {
                state
                    .update(values, &group_ids, pane.len)
                    .map_err(|e| err("window aggregate", e))?;
            }
            if pane.emitted.is_some() {
                pane.dirty.extend(group_ids);
            }
        }
        if self.lateness > 0 {
            self.emit_updates(out)?;
            // Late records may open windows that have already fired.
            self.fire(self.watermark, out)?;
        }
        Ok(())
    }

    async fn process_watermark(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        self.watermark = self.watermark.max(watermark.0);
        self.fire(self.watermark, out)
    }

    async fn finish(&mut self, out: &mut Output) -> Result<()> {
        self.fire(i64::MAX, out)?;
        if self.late > 0 {
            tracing::info!(stage = %self.factory.name, late = self.late, "late records routed to the late output");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
