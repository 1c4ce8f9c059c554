//! `top_n`: the first `n` rows of each `key_by` group by `order_by`
//! (Nexmark q18/q19 shapes: last bid per bidder and auction, top bids per
//! auction).
//!
//! ```yaml
//! - name: top_bids
//!   type: top_n
//!   input: bids
//!   key_by: [auction]
//!   order_by: [price DESC, date_time]
//!   n: 10
//! ```
//!
//! Continuous (no `window`): the output is a changelog of the input rows
//! (`_op` first): `+I` when a row enters its group's top `n`, `-D` when a
//! better row pushes it out. Applying the changelog yields the current top
//! `n` of every group. Rows that tie keep arrival order (earlier first).
//!
//! Windowed (`window: {kind: tumbling | sliding, ...}`, event time): when
//! a window fires, each group's top `n` rows are emitted once, with
//! `window_start`, `window_end` and, if `rank: <column>` is set, their rank
//! (1 = first); late records go to the stage's `late` output.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use arrow::compute::{SortOptions, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::changelog::{OP_COLUMN, RowKind};
use streamflow_core::{
    CheckpointBarrier, Diagnostics, Error, Operator, OperatorSnapshot, Output, Result, Watermark,
};
use streamflow_dsl::HumanDuration;
use streamflow_expr::CompiledExpr;
use streamflow_expr::hash_utils::RandomState;
use streamflow_state::put_keyed;

use crate::event_time::{millis, null_event_time, time_column_index};
use crate::grouping::{KeyRows, key_bytes, plan_keys};
use crate::snapshot;
use crate::stage::{StageContext, StageFactory};
use crate::window::{Assigner, check_assigner};

/// Settings of a `top_n` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopNConfig {
    /// How many rows to keep per group.
    n: usize,
    /// Sort expressions, best first: `price DESC`, `date_time ASC NULLS LAST`.
    order_by: Vec<String>,
    /// Top-N per event-time window instead of continuously.
    window: Option<TopNWindow>,
    /// Output column for the rank (windowed only).
    rank: Option<String>,
    /// Timestamp column holding event time (default: the source's `event_time`).
    time_column: Option<String>,
}

/// Windows a windowed top-N can use.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum TopNWindow {
    /// Fixed, non-overlapping windows of `size`.
    Tumbling { size: HumanDuration },
    /// Windows of `size` starting every `slide`.
    Sliding {
        size: HumanDuration,
        slide: HumanDuration,
    },
}

/// One `order_by` entry: an expression and its direction.
fn parse_order(text: &str) -> (&str, SortOptions) {
    let mut expr = text.trim();
    let mut options = SortOptions::default();
    let mut nulls_first = None;
    loop {
        let upper = expr.to_ascii_uppercase();
        if upper.ends_with(" NULLS FIRST") || upper.ends_with(" NULLS LAST") {
            let first = upper.ends_with(" FIRST");
            nulls_first = Some(first);
            expr = expr[..expr.len() - if first { 12 } else { 11 }].trim_end();
        } else if upper.ends_with(" DESC") {
            options.descending = true;
            expr = expr[..expr.len() - 5].trim_end();
        } else if upper.ends_with(" ASC") {
            expr = expr[..expr.len() - 4].trim_end();
        } else {
            break;
        }
    }
    // As in SQL: nulls sort as the largest value unless told otherwise.
    options.nulls_first = nulls_first.unwrap_or(options.descending);
    (expr, options)
}

#[derive(Clone)]
struct TopNFactory {
    input: SchemaRef,
    schema: SchemaRef,
    keys: Vec<CompiledExpr>,
    order: Vec<(CompiledExpr, SortOptions)>,
    n: usize,
    window: Option<Assigner>,
    time_index: Option<usize>,
    rank: bool,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: TopNConfig = ctx.config()?;
    let input = ctx.input_schema();
    let mut d = Diagnostics::new();
    if input.index_of(OP_COLUMN).is_ok() {
        d.push(
            ctx.at("input"),
            format!("top_n reads append-only input; this input is a changelog ({OP_COLUMN})"),
        );
    }
    if config.n == 0 {
        d.push(ctx.at("n"), "must be at least 1");
    }
    if config.order_by.is_empty() {
        d.push(ctx.at("order_by"), "name at least one sort expression");
    }
    let mut order = Vec::new();
    for (i, text) in config.order_by.iter().enumerate() {
        let (sql, options) = parse_order(text);
        match streamflow_expr::compile(sql, &input) {
            Ok(e) => order.push((e, options)),
            Err(e) => d.push(ctx.at(&format!("order_by[{i}]")), e.message),
        }
    }
    let keys = plan_keys(ctx, &input, &mut Vec::new(), &mut d);
    let ms = |d: HumanDuration| d.0.as_millis() as i64;
    let window = config.window.map(|w| match w {
        TopNWindow::Tumbling { size } => Assigner {
            size: ms(size),
            slide: ms(size),
        },
        TopNWindow::Sliding { size, slide } => Assigner {
            size: ms(size),
            slide: ms(slide),
        },
    });
    let mut fields = Vec::new();
    let mut time_index = None;
    match window {
        Some(a) => {
            check_assigner(ctx, a, &mut d);
            time_index = time_column_index(ctx, config.time_column.as_deref(), "window", &mut d);
            for bound in ["window_start", "window_end"] {
                fields.push(Field::new(
                    bound,
                    DataType::Timestamp(TimeUnit::Millisecond, None),
                    false,
                ));
            }
            if let Some(rank) = &config.rank {
                fields.push(Field::new(rank, DataType::UInt64, false));
            }
        }
        None => {
            if config.rank.is_some() {
                d.push(
                    ctx.at("rank"),
                    "rank numbers need a window (continuous top_n emits +I/-D rows)",
                );
            }
            fields.push(Field::new(OP_COLUMN, DataType::Utf8, false));
        }
    }
    for f in input.fields() {
        if fields.iter().any(|g| g.name() == f.name()) {
            d.push(
                ctx.at("rank"),
                format!("column '{}' already exists in the input", f.name()),
            );
        }
        fields.push(f.as_ref().clone());
    }
    d.into_result(())?;
    if window.is_some() && time_index.is_none() {
        return Err(Diagnostics::new());
    }
    Ok(Arc::new(TopNFactory {
        input,
        schema: Arc::new(Schema::new(fields)),
        keys,
        order,
        n: config.n,
        window,
        time_index,
        rank: config.rank.is_some(),
    }))
}

impl StageFactory for TopNFactory {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn create(&self) -> Box<dyn Operator> {
        Box::new(TopN {
            factory: Arc::new(self.clone()),
            keys: KeyRows::default(),
            rows: None,
            sorts: None,
            groups: HashMap::with_hasher(RandomState::default()),
            windows: BTreeMap::new(),
            watermark: i64::MIN,
        })
    }
}

/// A kept row: its sort key and the whole row (Arrow row format).
struct Ranked {
    sort: Box<[u8]>,
    row: Box<[u8]>,
}

/// Groups and their kept rows, best first.
type Groups = HashMap<Box<[u8]>, Vec<Ranked>, RandomState>;

struct TopN {
    factory: Arc<TopNFactory>,
    keys: KeyRows,
    /// Encodes whole input rows.
    rows: Option<RowConverter>,
    /// Encodes `order_by` values so that byte order is rank order.
    sorts: Option<RowConverter>,
    /// Continuous mode: every group's top rows.
    groups: Groups,
    /// Windowed mode: groups per window start.
    windows: BTreeMap<i64, Groups>,
    watermark: i64,
}

/// Offers a row to a group's list; returns whether it was kept and the row
/// it pushed out, if any.
fn offer(list: &mut Vec<Ranked>, n: usize, sort: &[u8], row: &[u8]) -> (bool, Option<Ranked>) {
    // After every equal sort key: ties keep arrival order.
    let at = list.partition_point(|r| r.sort.as_ref() <= sort);
    if at >= n {
        return (false, None);
    }
    list.insert(
        at,
        Ranked {
            sort: sort.into(),
            row: row.into(),
        },
    );
    let evicted = if list.len() > n { list.pop() } else { None };
    (true, evicted)
}

impl TopN {
    /// Makes the row and sort-key converters (restoring needs them before
    /// any batch arrives).
    fn prepare(&mut self) -> Result<()> {
        self.keys.prepare(&self.factory.keys)?;
        if self.rows.is_none() {
            let fields = self
                .factory
                .input
                .fields()
                .iter()
                .map(|x| SortField::new(x.data_type().clone()))
                .collect();
            self.rows = Some(RowConverter::new(fields).map_err(|e| Error::arrow("top_n rows", e))?);
        }
        if self.sorts.is_none() {
            let fields = self
                .factory
                .order
                .iter()
                .map(|(e, o)| SortField::new_with_options(e.data_type().clone(), *o))
                .collect();
            self.sorts =
                Some(RowConverter::new(fields).map_err(|e| Error::arrow("top_n order", e))?);
        }
        Ok(())
    }

    /// Encodes the whole rows and the sort keys of `batch`.
    fn encode(&mut self, batch: &RecordBatch) -> Result<(Rows, Rows)> {
        let sort = self.sort_keys(batch)?;
        Ok((self.whole_rows(batch)?, sort))
    }

    /// The sort keys of `batch`, encoded.
    fn sort_keys(&mut self, batch: &RecordBatch) -> Result<Rows> {
        self.prepare()?;
        let order = self
            .factory
            .order
            .iter()
            .map(|(e, _)| {
                e.evaluate(batch).map_err(|err| Error::Expression {
                    expr: e.sql().into(),
                    message: err.message,
                })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let sorts = self
            .sorts
            .as_ref()
            .ok_or_else(|| Error::Other("top_n converters missing".into()))?;
        sorts
            .convert_columns(&order)
            .map_err(|e| Error::arrow("top_n order", e))
    }

    /// The whole rows of `batch`, encoded.
    fn whole_rows(&mut self, batch: &RecordBatch) -> Result<Rows> {
        self.prepare()?;
        let rows = self
            .rows
            .as_ref()
            .ok_or_else(|| Error::Other("top_n converters missing".into()))?;
        rows.convert_columns(batch.columns())
            .map_err(|e| Error::arrow("top_n rows", e))
    }

    /// Input columns back from encoded rows.
    fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let conv = self
            .rows
            .as_ref()
            .ok_or_else(|| Error::Other("top_n rows converter missing".into()))?;
        let parser = conv.parser();
        conv.convert_rows(rows.into_iter().map(|r| parser.parse(r)))
            .map_err(|e| Error::arrow("top_n output", e))
    }

    /// Continuous mode: offers every row, emitting `+I` / `-D` changes.
    /// Only rows that can enter their group's top `n` are encoded whole: a
    /// full group's worst row only gets better within a batch, so a row not
    /// better than it now never enters.
    fn continuous(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        let f = Arc::clone(&self.factory);
        let key_rows = self.keys.rows(&f.keys, batch)?;
        let sort = self.sort_keys(batch)?;
        let candidates: Vec<usize> = (0..batch.num_rows())
            .filter(|&row| match self.groups.get(key_bytes(&key_rows, row)) {
                Some(list) if list.len() >= f.n => list
                    .last()
                    .is_some_and(|worst| sort.row(row).data() < worst.sort.as_ref()),
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let whole = if candidates.len() == batch.num_rows() {
            self.whole_rows(batch)?
        } else {
            let idx = UInt32Array::from_iter_values(candidates.iter().map(|&r| r as u32));
            let part = take_record_batch(batch, &idx).map_err(|e| Error::arrow("top_n rows", e))?;
            self.whole_rows(&part)?
        };
        // Changes in order; evicted rows are owned, added rows are candidates.
        let mut ops: Vec<RowKind> = Vec::new();
        let mut evicted: Vec<Ranked> = Vec::new();
        let mut changes: Vec<Result<usize, usize>> = Vec::new();
        for (k, &row) in candidates.iter().enumerate() {
            let key = key_bytes(&key_rows, row);
            let list = match self.groups.get_mut(key) {
                Some(list) => list,
                None => self.groups.entry(key.into()).or_default(),
            };
            let (kept, out_row) = offer(list, f.n, sort.row(row).data(), whole.row(k).data());
            if kept {
                ops.push(RowKind::Insert);
                changes.push(Ok(k));
            }
            if let Some(r) = out_row {
                ops.push(RowKind::Delete);
                changes.push(Err(evicted.len()));
                evicted.push(r);
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        let columns = self.decode(changes.iter().map(|c| match c {
            Ok(k) => whole.row(*k).data(),
            Err(i) => evicted[*i].row.as_ref(),
        }))?;
        let mut all: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
            ops.into_iter().map(RowKind::as_str),
        ))];
        all.extend(columns);
        out.emit(
            RecordBatch::try_new(Arc::clone(&f.schema), all)
                .map_err(|e| Error::arrow("top_n output", e))?,
        );
        Ok(())
    }

    /// Windowed mode: offers every row to each of its open windows.
    fn windowed(&mut self, a: Assigner, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        let f = Arc::clone(&self.factory);
        let index = f
            .time_index
            .ok_or_else(|| Error::Other("windowed top_n without event time".into()))?;
        let times = millis(batch.column(index))?;
        let key_rows = self.keys.rows(&f.keys, batch)?;
        let (whole, sort) = self.encode(batch)?;
        let mut late = Vec::new();
        for row in 0..batch.num_rows() {
            if times.is_null(row) {
                null_event_time(batch, row, out);
                continue;
            }
            let key = key_bytes(&key_rows, row);
            let mut placed = false;
            for start in a.windows(times.value(row)) {
                if a.fired(start, self.watermark) {
                    continue;
                }
                placed = true;
                let groups = self
                    .windows
                    .entry(start)
                    .or_insert_with(|| HashMap::with_hasher(RandomState::default()));
                let list = match groups.get_mut(key) {
                    Some(list) => list,
                    None => groups.entry(key.into()).or_default(),
                };
                offer(list, f.n, sort.row(row).data(), whole.row(row).data());
            }
            if !placed {
                late.push(row as u32);
            }
        }
        if !late.is_empty() {
            let rows = take_record_batch(batch, &UInt32Array::from(late))
                .map_err(|e| Error::arrow("late rows", e))?;
            out.emit_late(rows);
        }
        Ok(())
    }

    /// Emits and frees every window `watermark` completes.
    fn fire(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        let Some(a) = self.factory.window else {
            return Ok(());
        };
        while let Some(entry) = self.windows.first_entry() {
            let start = *entry.key();
            if !a.fired(start, watermark) {
                break;
            }
            let groups = entry.remove();
            let mut ranks = Vec::new();
            let mut rows = Vec::new();
            for list in groups.values() {
                for (i, r) in list.iter().enumerate() {
                    ranks.push(i as u64 + 1);
                    rows.push(r.row.as_ref());
                }
            }
            let n = rows.len();
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(TimestampMillisecondArray::from_value(start, n)),
                Arc::new(TimestampMillisecondArray::from_value(start + a.size, n)),
            ];
            if self.factory.rank {
                columns.push(Arc::new(UInt64Array::from(ranks)));
            }
            columns.extend(self.decode(rows)?);
            out.emit(
                RecordBatch::try_new(Arc::clone(&self.factory.schema), columns)
                    .map_err(|e| Error::arrow("top_n output", e))?,
            );
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for TopN {
    async fn open(&mut self, restored: Option<OperatorSnapshot>) -> Result<()> {
        self.prepare()?;
        let Some(snap) = restored else {
            return Ok(());
        };
        self.watermark = snapshot::watermark(&snap)?;
        let Some(b) = snapshot::entries(&snap, "ranked")? else {
            return Ok(());
        };
        let (keys, sorts, rows) = (
            snapshot::bytes(&b, "key")?,
            snapshot::bytes(&b, "sort")?,
            snapshot::bytes(&b, "row")?,
        );
        let starts = snapshot::int64(&b, "start")?;
        for r in 0..b.num_rows() {
            let groups = if starts.is_null(r) {
                &mut self.groups
            } else {
                self.windows
                    .entry(starts.value(r))
                    .or_insert_with(|| HashMap::with_hasher(RandomState::default()))
            };
            // Rows of a list were written best first.
            groups
                .entry(keys.value(r).into())
                .or_default()
                .push(Ranked {
                    sort: sorts.value(r).into(),
                    row: rows.value(r).into(),
                });
        }
        Ok(())
    }

    /// One row per kept row, best first within its list: `start` (null when
    /// continuous), `key, sort, row`.
    async fn snapshot(&mut self, _barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        let mut snap = OperatorSnapshot::default();
        snapshot::put_watermark(&mut snap, self.watermark)?;
        let lists = self.groups.iter().map(|(k, l)| (None, k, l)).chain(
            self.windows
                .iter()
                .flat_map(|(s, g)| g.iter().map(move |(k, l)| (Some(*s), k, l))),
        );
        let (mut starts, mut keys, mut sorts, mut rows) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (start, key, list) in lists {
            for ranked in list {
                starts.push(start);
                keys.push(key.as_ref());
                sorts.push(ranked.sort.as_ref());
                rows.push(ranked.row.as_ref());
            }
        }
        if keys.is_empty() {
            return Ok(snap);
        }
        let groups = self.keys.key_groups(keys.iter().copied())?;
        let cols: Vec<(String, ArrayRef)> = vec![
            ("start".into(), Arc::new(Int64Array::from(starts))),
            ("key".into(), snapshot::binary(keys)),
            ("sort".into(), snapshot::binary(sorts)),
            ("row".into(), snapshot::binary(rows)),
        ];
        put_keyed(
            &mut snap,
            "ranked",
            snapshot::batch(cols)?,
            groups.as_deref(),
        )?;
        Ok(snap)
    }

    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        match self.factory.window {
            Some(a) => self.windowed(a, &batch, out),
            None => self.continuous(&batch, out),
        }
    }

    async fn process_watermark(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        self.watermark = self.watermark.max(watermark.0);
        self.fire(self.watermark, out)
    }

    async fn finish(&mut self, out: &mut Output) -> Result<()> {
        self.fire(i64::MAX, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_by_directions() {
        let (e, o) = parse_order("price DESC");
        assert_eq!(e, "price");
        assert!(o.descending && o.nulls_first);
        let (e, o) = parse_order("a + b asc nulls first");
        assert_eq!(e, "a + b");
        assert!(!o.descending && o.nulls_first);
        let (e, o) = parse_order("date_time");
        assert_eq!(e, "date_time");
        assert!(!o.descending && !o.nulls_first);
    }

    #[test]
    fn offer_keeps_the_best_n_and_ties_in_arrival_order() {
        let mut list = Vec::new();
        assert!(offer(&mut list, 2, b"b", b"1").0);
        assert!(offer(&mut list, 2, b"a", b"2").0);
        // Equal to the last kept: arrives later, so ranks after it: out.
        assert!(!offer(&mut list, 2, b"b", b"3").0);
        let (kept, evicted) = offer(&mut list, 2, b"a", b"4");
        assert!(kept);
        assert_eq!(evicted.map(|r| r.row.to_vec()), Some(b"1".to_vec()));
        let rows: Vec<_> = list.iter().map(|r| r.row.to_vec()).collect();
        assert_eq!(rows, vec![b"2".to_vec(), b"4".to_vec()]);
    }
}
