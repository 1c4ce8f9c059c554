//! The stream–table join: the right input is a table — the latest row per
//! key, or, when it carries an `_op` column, a changelog whose `-U`/`-D`
//! rows remove the key. Each stream (left) row looks the table up on
//! arrival. A stream row whose key is not in the table yet waits in a
//! bounded buffer and is joined as soon as its table row arrives, so the
//! result does not depend on which side arrives first. Waiting rows leave
//! the buffer after `ttl` of stream event time or when it is full (oldest
//! first): a `left` join then emits them with the table columns null, an
//! inner join drops them. A table row with no stream row produces
//! nothing. Once a bounded table input has ended, no row waits any more:
//! stream rows without a table row are unmatched at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use streamflow_core::changelog::{OP_COLUMN, RowKind};
use streamflow_core::{
    CheckpointBarrier, Error, Operator, OperatorSnapshot, Output, Result, Watermark,
};

use super::{JoinFactory, decode_optional, without_op};
use crate::event_time::millis;
use crate::snapshot;

/// A stream row waiting for its table row.
struct Waiting {
    key: Box<[u8]>,
    row: Box<[u8]>,
    time: i64,
    /// Arrival number (buffer order).
    seq: u64,
}

pub(super) struct TableJoin {
    factory: Arc<JoinFactory>,
    ttl: Option<i64>,
    max_rows: usize,
    /// Key → current table row (without `_op`).
    table: HashMap<Box<[u8]>, Box<[u8]>>,
    /// Key → waiting stream rows, in arrival order.
    waiting: HashMap<Box<[u8]>, VecDeque<Waiting>>,
    /// Arrival order of waiting rows: (seq, key, time). Entries of rows a
    /// table row released stay until they reach the front (or the deque
    /// is compacted): a row is still waiting when its key's oldest
    /// waiting row is not newer than it.
    order: VecDeque<(u64, Box<[u8]>, i64)>,
    waiting_rows: usize,
    next_seq: u64,
    /// Encoders of stream rows and of table rows (without `_op`).
    rows: Vec<RowConverter>,
    /// Table columns kept (all but `_op`), and the `_op` column if any.
    table_columns: Vec<usize>,
    op_column: Option<usize>,
    /// The table input has ended: nothing waits any more.
    table_complete: bool,
    failed: Option<Error>,
}

impl TableJoin {
    pub(super) fn new(factory: Arc<JoinFactory>, ttl: Option<i64>, max_rows: usize) -> Self {
        let right = &factory.inputs[1];
        let op_column = right.index_of(OP_COLUMN).ok();
        let table_columns = (0..right.fields().len())
            .filter(|i| Some(*i) != op_column)
            .collect();
        let schemas = [Arc::clone(&factory.inputs[0]), without_op(right)];
        let rows: std::result::Result<Vec<RowConverter>, _> = schemas
            .iter()
            .map(|s| {
                RowConverter::new(
                    s.fields()
                        .iter()
                        .map(|f| SortField::new(f.data_type().clone()))
                        .collect(),
                )
            })
            .collect();
        let (rows, failed) = match rows {
            Ok(rows) => (rows, None),
            Err(e) => (Vec::new(), Some(Error::arrow("join rows", e))),
        };
        Self {
            factory,
            ttl,
            max_rows,
            table: HashMap::new(),
            waiting: HashMap::new(),
            order: VecDeque::new(),
            waiting_rows: 0,
            next_seq: 0,
            rows,
            table_columns,
            op_column,
            table_complete: false,
            failed,
        }
    }

    fn conv(&self, side: usize) -> Result<&RowConverter> {
        self.rows
            .get(side)
            .ok_or_else(|| Error::Other("join: rows of this input cannot be encoded".into()))
    }

    /// Output rows from (stream row, table row or none) pairs.
    fn emit(&self, pairs: &[(&[u8], Option<&[u8]>)], out: &mut Output) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let left: Vec<Option<&[u8]>> = pairs.iter().map(|p| Some(p.0)).collect();
        let right: Vec<Option<&[u8]>> = pairs.iter().map(|p| p.1).collect();
        let mut columns = decode_optional(self.conv(0)?, self.factory.inputs[0].fields(), &left)?;
        columns.extend(decode_optional(
            self.conv(1)?,
            without_op(&self.factory.inputs[1]).fields(),
            &right,
        )?);
        out.emit(
            RecordBatch::try_new(Arc::clone(&self.factory.schema), columns)
                .map_err(|e| Error::arrow("join output", e))?,
        );
        Ok(())
    }

    /// Whether the `order` entry `(seq, key)` is a row still waiting.
    fn is_waiting(&self, seq: u64, key: &[u8]) -> bool {
        self.waiting
            .get(key)
            .and_then(VecDeque::front)
            .is_some_and(|w| w.seq <= seq)
    }

    /// Drops released rows' entries from the front of `order`.
    fn skip_released(&mut self) {
        while let Some((seq, key, _)) = self.order.front() {
            if self.is_waiting(*seq, key) {
                break;
            }
            self.order.pop_front();
        }
    }

    /// Removes the oldest waiting row (the oldest of its key too); a left
    /// join emits it unmatched.
    fn evict_oldest(&mut self, dropped: &mut Vec<Box<[u8]>>) {
        self.skip_released();
        let Some((_, key, _)) = self.order.pop_front() else {
            return;
        };
        if let Some(list) = self.waiting.get_mut(&key)
            && let Some(w) = list.pop_front()
        {
            self.waiting_rows -= 1;
            if list.is_empty() {
                self.waiting.remove(&key);
            }
            dropped.push(w.row);
        }
    }

    /// Emits what leaves the buffer unmatched (left join) or counts it.
    fn give_up(&self, dropped: Vec<Box<[u8]>>, out: &mut Output) -> Result<()> {
        if dropped.is_empty() {
            return Ok(());
        }
        if self.factory.how.keeps_left() {
            let pairs: Vec<(&[u8], Option<&[u8]>)> =
                dropped.iter().map(|r| (r.as_ref(), None)).collect();
            self.emit(&pairs, out)
        } else {
            tracing::debug!(
                rows = dropped.len(),
                "stream rows found no table row in time"
            );
            Ok(())
        }
    }

    fn wait(&mut self, key: &[u8], row: &[u8], time: i64, dropped: &mut Vec<Box<[u8]>>) {
        if self.waiting_rows >= self.max_rows {
            self.evict_oldest(dropped);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.waiting
            .entry(key.into())
            .or_default()
            .push_back(Waiting {
                key: key.into(),
                row: row.into(),
                time,
                seq,
            });
        self.order.push_back((seq, key.into(), time));
        self.waiting_rows += 1;
        if self.order.len() > 2 * self.waiting_rows + 1024 {
            // Mostly released rows' entries: keep the live ones.
            let order = std::mem::take(&mut self.order);
            self.order = order
                .into_iter()
                .filter(|(seq, key, _)| self.is_waiting(*seq, key))
                .collect();
        }
    }

    fn stream_batch(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        let f = Arc::clone(&self.factory);
        let (keys, valid) = f.keys(0, batch)?;
        let whole = self
            .conv(0)?
            .convert_columns(batch.columns())
            .map_err(|e| Error::arrow("join rows", e))?;
        let times = match f.times[0] {
            Some(t) => Some(millis(batch.column(t))?),
            None => None,
        };
        let mut matched: Vec<(usize, Box<[u8]>)> = Vec::new();
        let mut unmatched: Vec<usize> = Vec::new();
        let mut dropped = Vec::new();
        for (row, key_valid) in valid.iter().copied().enumerate() {
            if !key_valid {
                unmatched.push(row);
                continue;
            }
            let key = keys.row(row).data();
            match self.table.get(key) {
                Some(t) => matched.push((row, t.clone())),
                // A complete table will not get this key: no match, no wait.
                None if self.table_complete => dropped.push(whole.row(row).data().into()),
                None => {
                    let time = times
                        .as_ref()
                        .filter(|t| t.is_valid(row))
                        .map_or(i64::MAX, |t| t.value(row));
                    self.wait(key, whole.row(row).data(), time, &mut dropped);
                }
            }
        }
        let mut pairs: Vec<(&[u8], Option<&[u8]>)> = matched
            .iter()
            .map(|(row, t)| (whole.row(*row).data(), Some(t.as_ref())))
            .collect();
        if f.how.keeps_left() {
            // A null key never matches.
            pairs.extend(unmatched.iter().map(|r| (whole.row(*r).data(), None)));
        }
        self.emit(&pairs, out)?;
        self.give_up(dropped, out)
    }

    fn table_batch(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        let f = Arc::clone(&self.factory);
        let (keys, valid) = f.keys(1, batch)?;
        let projected = batch
            .project(&self.table_columns)
            .map_err(|e| Error::arrow("table rows", e))?;
        let whole = self
            .conv(1)?
            .convert_columns(projected.columns())
            .map_err(|e| Error::arrow("table rows", e))?;
        let ops = match self.op_column {
            Some(i) => Some(
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| Error::Other(format!("{OP_COLUMN} must be a string column")))?
                    .clone(),
            ),
            None => None,
        };
        // (stream row, table row) of waiting rows this batch releases.
        let mut released: Vec<[Box<[u8]>; 2]> = Vec::new();
        for (row, key_valid) in valid.iter().copied().enumerate() {
            if !key_valid {
                continue;
            }
            let key = keys.row(row).data();
            let addition = match &ops {
                None => true,
                Some(ops) => ops
                    .is_valid(row)
                    .then(|| RowKind::parse(ops.value(row)))
                    .flatten()
                    .ok_or_else(|| {
                        Error::Other(format!(
                            "invalid {OP_COLUMN} value (expected +I, -U, +U or -D)"
                        ))
                    })?
                    .is_addition(),
            };
            if !addition {
                self.table.remove(key);
                continue;
            }
            let table_row: Box<[u8]> = whole.row(row).data().into();
            if let Some(list) = self.waiting.remove(key) {
                self.waiting_rows -= list.len();
                for w in list {
                    released.push([w.row, table_row.clone()]);
                }
            }
            self.table.insert(key.into(), table_row);
        }
        let pairs: Vec<(&[u8], Option<&[u8]>)> = released
            .iter()
            .map(|[s, t]| (s.as_ref(), Some(t.as_ref())))
            .collect();
        self.emit(&pairs, out)
    }
}

#[async_trait]
impl Operator for TableJoin {
    async fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if input == 0 {
            self.stream_batch(&batch, out)
        } else {
            self.table_batch(&batch, out)
        }
    }

    async fn process_watermark(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        let Some(ttl) = self.ttl else {
            return Ok(());
        };
        let mut dropped = Vec::new();
        loop {
            self.skip_released();
            let expired = self
                .order
                .front()
                .is_some_and(|(_, _, t)| t.saturating_add(ttl) <= watermark.0);
            if !expired {
                break;
            }
            self.evict_oldest(&mut dropped);
        }
        self.give_up(dropped, out)
    }

    async fn input_finished(&mut self, input: usize, out: &mut Output) -> Result<()> {
        if input != 1 {
            return Ok(());
        }
        self.table_complete = true;
        self.finish(out).await
    }

    async fn finish(&mut self, out: &mut Output) -> Result<()> {
        let mut dropped = Vec::new();
        while self.waiting_rows > 0 {
            self.evict_oldest(&mut dropped);
        }
        self.give_up(dropped, out)
    }

    async fn open(&mut self, restored: Option<OperatorSnapshot>) -> Result<()> {
        let Some(snap) = restored else {
            return Ok(());
        };
        if let Some(b) = snapshot::entries(&snap, "table")? {
            let (keys, rows) = (snapshot::bytes(&b, "key")?, snapshot::bytes(&b, "row")?);
            for r in 0..b.num_rows() {
                self.table
                    .insert(keys.value(r).into(), rows.value(r).into());
            }
        }
        if let Some(b) = snapshot::entries(&snap, "waiting")? {
            let (keys, rows) = (snapshot::bytes(&b, "key")?, snapshot::bytes(&b, "row")?);
            let (times, seqs) = (snapshot::int64(&b, "time")?, snapshot::int64(&b, "seq")?);
            let mut all: Vec<(u64, usize)> = (0..b.num_rows())
                .map(|r| (seqs.value(r) as u64, r))
                .collect();
            all.sort_unstable();
            let mut dropped = Vec::new();
            for (_, r) in all {
                self.wait(keys.value(r), rows.value(r), times.value(r), &mut dropped);
            }
        }
        Ok(())
    }

    /// `table`: key, row; `waiting`: key, row, time, seq — tagged with the
    /// key group of the join key.
    async fn snapshot(&mut self, _barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        let mut snap = OperatorSnapshot::default();
        if !self.table.is_empty() {
            let keys: Vec<&[u8]> = self.table.keys().map(|k| k.as_ref()).collect();
            let rows: Vec<&[u8]> = self.table.values().map(|v| v.as_ref()).collect();
            let groups = self.factory.key_groups_of_keys(1, &keys)?;
            let cols: Vec<(String, ArrayRef)> = vec![
                ("key".into(), snapshot::binary(keys)),
                ("row".into(), snapshot::binary(rows)),
            ];
            streamflow_state::put_keyed(&mut snap, "table", snapshot::batch(cols)?, Some(&groups))?;
        }
        if self.waiting_rows > 0 {
            let waiting: Vec<&Waiting> = self.waiting.values().flatten().collect();
            let rows: Vec<&[u8]> = waiting.iter().map(|w| w.row.as_ref()).collect();
            let keys: Vec<&[u8]> = waiting.iter().map(|w| w.key.as_ref()).collect();
            let groups = self.factory.key_groups_of_keys(0, &keys)?;
            let cols: Vec<(String, ArrayRef)> = vec![
                ("key".into(), snapshot::binary(keys)),
                ("row".into(), snapshot::binary(rows)),
                (
                    "time".into(),
                    Arc::new(Int64Array::from_iter_values(waiting.iter().map(|w| w.time))),
                ),
                (
                    "seq".into(),
                    Arc::new(Int64Array::from_iter_values(
                        waiting.iter().map(|w| w.seq as i64),
                    )),
                ),
            ];
            streamflow_state::put_keyed(
                &mut snap,
                "waiting",
                snapshot::batch(cols)?,
                Some(&groups),
            )?;
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::harness::{Step, assert_restores_exactly};
    use crate::stage::{StageContext, StageFactory};
    use arrow::array::TimestampMillisecondArray;
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

    fn stream_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Int64, false),
        ]))
    }

    fn table_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("_op", DataType::Utf8, false),
            Field::new("k", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]))
    }

    fn stage(how: &str, max_rows: usize) -> Arc<dyn StageFactory> {
        let settings = serde_json::json!({
            "kind": "table",
            "on": "l.k = r.k",
            "join": how,
            "buffer": {"ttl": "100ms", "max_rows": max_rows},
            "prefix": {"right": "t_"},
        });
        let settings = settings.as_object().cloned().unwrap_or_default();
        super::super::plan(&StageContext {
            name: "j",
            path: "stages[0]",
            settings: &settings,
            inputs: &[stream_schema(), table_schema()],
            key_by: &[],
            event_time: Some("t"),
            input_event_times: &[Some("t"), None],
            components: crate::process::Components::builtin(),
        })
        .map_err(|d| format!("{d:?}"))
        .expect("plans")
    }

    fn stream(rows: &[(i64, Option<i64>, i64)]) -> Step {
        Step::Input(
            0,
            RecordBatch::try_new(
                stream_schema(),
                vec![
                    Arc::new(TimestampMillisecondArray::from(
                        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(
                        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(
                        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                    )),
                ],
            )
            .expect("batch"),
        )
    }

    fn table(rows: &[(&str, i64, &str)]) -> Step {
        Step::Input(
            1,
            RecordBatch::try_new(
                table_schema(),
                vec![
                    Arc::new(StringArray::from(
                        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(
                        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                    )),
                    Arc::new(StringArray::from(
                        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                    )),
                ],
            )
            .expect("batch"),
        )
    }

    /// Output rows `k|v|name` (name empty when null), sorted.
    fn run(stage: &Arc<dyn StageFactory>, steps: &[Step]) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut op = stage.create();
            let mut out = Output::new();
            for s in steps {
                match s {
                    Step::Input(i, b) => op.process_batch(*i, b.clone(), &mut out).await,
                    Step::Batch(b) => op.process_batch(0, b.clone(), &mut out).await,
                    Step::Watermark(w) => op.process_watermark(Watermark(*w), &mut out).await,
                }
                .expect("step");
            }
            op.finish(&mut out).await.expect("finish");
            let mut rows = Vec::new();
            for b in out.take_batches() {
                for r in 0..b.num_rows() {
                    let cell = |c: usize| {
                        arrow::util::display::array_value_to_string(b.column(c), r).expect("format")
                    };
                    rows.push(format!("{}|{}|{}", cell(1), cell(2), cell(4)));
                }
            }
            rows.sort();
            rows
        })
    }

    #[test]
    fn the_result_does_not_depend_on_which_side_arrives_first() {
        let s = stream(&[(10, Some(1), 100), (11, Some(2), 200), (12, Some(3), 300)]);
        let t = table(&[("+I", 1, "one"), ("+I", 2, "two"), ("+I", 9, "nine")]);
        for how in ["inner", "left"] {
            let stage = stage(how, 1000);
            let first = run(&stage, &[s.clone(), t.clone()]);
            let second = run(&stage, &[t.clone(), s.clone()]);
            assert_eq!(first, second, "{how}");
            let mut expected = vec!["1|100|one".to_string(), "2|200|two".to_string()];
            if how == "left" {
                expected.push("3|300|".to_string());
            }
            expected.sort();
            assert_eq!(first, expected, "{how}");
        }
    }

    #[test]
    fn changelog_updates_replace_and_deletes_remove_table_rows() {
        let stage = stage("left", 1000);
        let steps = [
            table(&[("+I", 1, "one"), ("+I", 2, "two")]),
            table(&[("-U", 1, "one"), ("+U", 1, "uno"), ("-D", 2, "two")]),
            stream(&[(10, Some(1), 100), (11, Some(2), 200), (12, None, 300)]),
            Step::Watermark(1_000),
        ];
        assert_eq!(run(&stage, &steps), vec!["1|100|uno", "2|200|", "|300|"]);
    }

    #[test]
    fn the_buffer_is_bounded_by_rows_and_by_ttl() {
        // max_rows 2: the third waiting row pushes the first out.
        let stage2 = stage("left", 2);
        let steps = [
            stream(&[(10, Some(1), 1), (11, Some(2), 2), (12, Some(3), 3)]),
            table(&[("+I", 1, "one"), ("+I", 2, "two"), ("+I", 3, "three")]),
        ];
        assert_eq!(run(&stage2, &steps), vec!["1|1|", "2|2|two", "3|3|three"]);
        // ttl 100 ms: the watermark at 200 gives up on rows from before 100.
        let stage = stage("inner", 1000);
        let steps = [
            stream(&[(10, Some(1), 1), (150, Some(2), 2)]),
            Step::Watermark(200),
            table(&[("+I", 1, "one"), ("+I", 2, "two")]),
        ];
        assert_eq!(run(&stage, &steps), vec!["2|2|two"]);
    }

    #[test]
    fn after_the_table_input_ends_nothing_waits() {
        let stage = stage("left", 1000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut op = stage.create();
            let mut out = Output::new();
            let Step::Input(_, early) = stream(&[(10, Some(7), 1)]) else {
                return;
            };
            op.process_batch(0, early, &mut out).await.expect("stream");
            assert!(out.take_batches().is_empty(), "waits for its table row");
            let Step::Input(_, t) = table(&[("+I", 1, "one")]) else {
                return;
            };
            op.process_batch(1, t, &mut out).await.expect("table");
            op.input_finished(1, &mut out).await.expect("table ended");
            let released: usize = out.take_batches().iter().map(|b| b.num_rows()).sum();
            assert_eq!(released, 1, "the waiting row is given up at once");
            let Step::Input(_, late) = stream(&[(20, Some(8), 2), (21, Some(1), 3)]) else {
                return;
            };
            op.process_batch(0, late, &mut out).await.expect("stream");
            let rows: usize = out.take_batches().iter().map(|b| b.num_rows()).sum();
            assert_eq!(rows, 2, "a match and an immediate non-match");
        });
    }

    #[test]
    fn a_restored_table_join_continues_exactly() {
        let steps = [
            stream(&[(10, Some(1), 1), (11, Some(5), 2)]),
            table(&[("+I", 1, "one"), ("+I", 2, "two")]),
            stream(&[(20, Some(2), 3), (21, Some(3), 4)]),
            Step::Watermark(50),
            table(&[("-D", 2, "two"), ("+I", 3, "three")]),
            stream(&[(60, Some(2), 5), (61, Some(3), 6)]),
            Step::Watermark(500),
        ];
        let stage = stage("left", 1000);
        for cut in 0..=steps.len() {
            assert_restores_exactly(|| stage.create(), &steps, cut);
        }
    }
}
