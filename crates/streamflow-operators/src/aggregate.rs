//! `aggregate`: a continuously updated, non-windowed aggregation per key,
//! emitted as a changelog (see `streamflow_core::changelog`): `+I` for a
//! new key, `-U`/`+U` when its result changes, `-D` when a changelog input
//! retracts its last row. Its input may itself be a changelog (a column
//! `_op`), whose retractions it applies — so aggregates of aggregates are
//! correct (Nexmark q4 shape). Results are emitted once per input batch.
//!
//! ```yaml
//! - {name: top, type: aggregate, input: bids, key_by: [auction], aggregates: {max_price: "max(price)"}}
//! - {name: avg, type: aggregate, input: top, aggregates: {avg_max: "avg(max_price)"}}
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, StringArray};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::changelog::{OP_COLUMN, RowKind};
use streamflow_core::{
    CheckpointBarrier, Diagnostics, Error, Operator, OperatorSnapshot, Output, Result,
};
use streamflow_expr::hash_utils::RandomState;
use streamflow_expr::{CompiledAggregate, CompiledExpr, ScalarValue, SingleAggregate};
use streamflow_state::put_keyed;

use crate::grouping::{KeyRows, arguments, key_bytes, plan_aggregates, plan_keys, take_rows};
use crate::snapshot;
use crate::stage::{StageContext, StageFactory};

/// Settings of an `aggregate` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AggregateConfig {
    /// Output column → aggregate call.
    aggregates: Map<String, Value>,
}

#[derive(Clone)]
struct AggregateFactory {
    schema: SchemaRef,
    keys: Vec<CompiledExpr>,
    aggregates: Vec<CompiledAggregate>,
    /// Index of the input's `_op` column, when the input is a changelog.
    op_index: Option<usize>,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: AggregateConfig = ctx.config()?;
    let input = ctx.input_schema();
    let mut d = Diagnostics::new();
    let op_index = input.index_of(OP_COLUMN).ok();
    let mut fields = vec![Field::new(OP_COLUMN, DataType::Utf8, false)];
    let keys = plan_keys(ctx, &input, &mut fields, &mut d);
    let aggregates = plan_aggregates(
        ctx,
        &config.aggregates,
        &input,
        &mut fields,
        &mut d,
        Some(op_index.is_some()),
    );
    d.into_result(())?;
    Ok(Arc::new(AggregateFactory {
        schema: Arc::new(Schema::new(fields)),
        keys,
        aggregates,
        op_index,
    }))
}

impl StageFactory for AggregateFactory {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn create(&self) -> Box<dyn Operator> {
        Box::new(AggregateOperator {
            factory: Arc::new(self.clone()),
            keys: KeyRows::default(),
            groups: HashMap::with_hasher(RandomState::default()),
        })
    }
}

/// The state of one key.
struct Group {
    accumulators: Vec<SingleAggregate>,
    /// Live input rows (additions minus retractions).
    rows: i64,
    /// The values last emitted.
    last: Option<Vec<ScalarValue>>,
}

struct AggregateOperator {
    factory: Arc<AggregateFactory>,
    keys: KeyRows,
    groups: HashMap<Box<[u8]>, Group, RandomState>,
}

fn err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("{context}: {e}"))
}

/// Output rows under construction.
#[derive(Default)]
struct Changes {
    ops: Vec<&'static str>,
    keys: Vec<Box<[u8]>>,
    values: Vec<Vec<ScalarValue>>,
}

impl Changes {
    fn push(&mut self, kind: RowKind, key: &[u8], values: Vec<ScalarValue>) {
        self.ops.push(kind.as_str());
        self.keys.push(key.into());
        self.values.push(values);
    }
}

impl AggregateOperator {
    fn row_kinds(&self, batch: &RecordBatch) -> Result<Option<Vec<bool>>> {
        let Some(i) = self.factory.op_index else {
            return Ok(None);
        };
        let ops = batch
            .column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::Other(format!("{OP_COLUMN} must be a string column")))?;
        ops.iter()
            .map(|op| {
                op.and_then(RowKind::parse)
                    .map(RowKind::is_addition)
                    .ok_or_else(|| {
                        Error::Other(format!(
                            "invalid {OP_COLUMN} value {op:?} (expected +I, -U, +U or -D)"
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn emit(&self, changes: Changes, out: &mut Output) -> Result<()> {
        if changes.ops.is_empty() {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(changes.ops))];
        columns.extend(self.keys.decode(changes.keys.iter().map(|k| &k[..]))?);
        for (a, agg) in self.factory.aggregates.iter().enumerate() {
            let values = changes.values.iter().map(|v| v[a].clone());
            let array = ScalarValue::iter_to_array(values).map_err(|e| err(agg.sql(), e))?;
            let field_type = self.factory.schema.field(columns.len()).data_type().clone();
            columns.push(if array.data_type() == &field_type {
                array
            } else {
                arrow::compute::cast(&array, &field_type)
                    .map_err(|e| Error::arrow("aggregate output", e))?
            });
        }
        out.emit(
            RecordBatch::try_new(Arc::clone(&self.factory.schema), columns)
                .map_err(|e| Error::arrow("aggregate output", e))?,
        );
        Ok(())
    }
}

#[async_trait]
impl Operator for AggregateOperator {
    async fn open(&mut self, restored: Option<OperatorSnapshot>) -> Result<()> {
        self.keys.prepare(&self.factory.keys)?;
        let Some(b) = restored
            .map(|snap| snapshot::entries(&snap, "groups"))
            .transpose()?
            .flatten()
        else {
            return Ok(());
        };
        let f = Arc::clone(&self.factory);
        let keys = snapshot::bytes(&b, "key")?;
        let rows = snapshot::int64(&b, "rows")?;
        let has_last = snapshot::column::<BooleanArray>(&b, "has_last")?;
        let last = snapshot::numbered(&b, "l", f.aggregates.len())?;
        let states = f
            .aggregates
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let width = a.state_fields().map_err(|e| err(a.sql(), e))?.len();
                snapshot::numbered(&b, &format!("a{i}_"), width)
            })
            .collect::<Result<Vec<_>>>()?;
        let scalar = |c: &ArrayRef, r: usize| {
            ScalarValue::try_from_array(c, r).map_err(|e| err("restoring aggregate state", e))
        };
        for r in 0..b.num_rows() {
            let accumulators = f
                .aggregates
                .iter()
                .zip(&states)
                .map(|(a, cols)| {
                    let state = cols
                        .iter()
                        .map(|c| scalar(c, r))
                        .collect::<Result<Vec<_>>>()?;
                    a.restore_single(f.op_index.is_some(), &state)
                        .map_err(|e| err(a.sql(), e))
                })
                .collect::<Result<Vec<_>>>()?;
            let last = if has_last.value(r) {
                Some(
                    last.iter()
                        .map(|c| scalar(c, r))
                        .collect::<Result<Vec<_>>>()?,
                )
            } else {
                None
            };
            self.groups.insert(
                keys.value(r).into(),
                Group {
                    accumulators,
                    rows: rows.value(r),
                    last,
                },
            );
        }
        Ok(())
    }

    /// One row per key: `key, rows, a<i>_<j>` (accumulator states),
    /// `has_last, l<i>` (the values last emitted).
    async fn snapshot(&mut self, _barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        let mut snap = OperatorSnapshot::default();
        if self.groups.is_empty() {
            return Ok(snap);
        }
        let f = Arc::clone(&self.factory);
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut rows = Vec::new();
        let mut has_last = Vec::new();
        let mut states: Vec<Vec<Vec<ScalarValue>>> = vec![Vec::new(); f.aggregates.len()];
        let mut last: Vec<Vec<ScalarValue>> = vec![Vec::new(); f.aggregates.len()];
        // Keys with nothing emitted yet hold a null of the emitted values' type.
        let mut nulls = Vec::with_capacity(f.aggregates.len());
        for i in 0..f.aggregates.len() {
            let data_type = match self.groups.values().find_map(|g| g.last.as_ref()) {
                Some(l) => l[i].data_type(),
                None => f.schema.field(1 + f.keys.len() + i).data_type().clone(),
            };
            nulls.push(ScalarValue::try_from(&data_type).map_err(|e| err("aggregate state", e))?);
        }
        for (key, group) in self.groups.iter_mut() {
            keys.push(key);
            rows.push(group.rows);
            has_last.push(group.last.is_some());
            for (i, acc) in group.accumulators.iter_mut().enumerate() {
                states[i].push(acc.export().map_err(|e| err("aggregate state", e))?);
                last[i].push(match &group.last {
                    Some(l) => l[i].clone(),
                    None => nulls[i].clone(),
                });
            }
        }
        let groups = self.keys.key_groups(keys.iter().copied())?;
        let mut cols: Vec<(String, ArrayRef)> = vec![
            ("key".into(), snapshot::binary(keys)),
            ("rows".into(), Arc::new(Int64Array::from(rows))),
            ("has_last".into(), Arc::new(BooleanArray::from(has_last))),
        ];
        let array = |values: Vec<ScalarValue>| {
            ScalarValue::iter_to_array(values).map_err(|e| err("aggregate state", e))
        };
        for (i, per_group) in states.into_iter().enumerate() {
            let width = per_group.first().map_or(0, Vec::len);
            for j in 0..width {
                cols.push((
                    format!("a{i}_{j}"),
                    array(per_group.iter().map(|s| s[j].clone()).collect())?,
                ));
            }
        }
        for (i, values) in last.into_iter().enumerate() {
            cols.push((format!("l{i}"), array(values)?));
        }
        put_keyed(
            &mut snap,
            "groups",
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
        let f = Arc::clone(&self.factory);
        let n = batch.num_rows();
        let key_rows = self.keys.rows(&f.keys, &batch)?;
        let additions = self.row_kinds(&batch)?;
        let args = arguments(&f.aggregates, &batch)?;
        // Rows per key, split into additions and retractions, in first-seen order.
        let mut touched: Vec<&[u8]> = Vec::new();
        let mut rows_of: HashMap<&[u8], (Vec<u32>, Vec<u32>), RandomState> =
            HashMap::with_hasher(RandomState::default());
        for row in 0..n {
            let key = key_bytes(&key_rows, row);
            let slot = rows_of.entry(key).or_insert_with(|| {
                touched.push(key);
                (Vec::new(), Vec::new())
            });
            if additions.as_ref().is_none_or(|a| a[row]) {
                slot.0.push(row as u32);
            } else {
                slot.1.push(row as u32);
            }
        }
        let mut changes = Changes::default();
        for key in touched {
            let Some((adds, retracts)) = rows_of.remove(key) else {
                continue;
            };
            if !self.groups.contains_key(key) {
                let accumulators = f
                    .aggregates
                    .iter()
                    .map(|a| a.single(f.op_index.is_some()).map_err(|e| err(a.sql(), e)))
                    .collect::<Result<Vec<_>>>()?;
                self.groups.insert(
                    key.into(),
                    Group {
                        accumulators,
                        rows: 0,
                        last: None,
                    },
                );
            }
            let Some(group) = self.groups.get_mut(key) else {
                continue;
            };
            group.rows += adds.len() as i64 - retracts.len() as i64;
            if !adds.is_empty() {
                for (acc, values) in group
                    .accumulators
                    .iter_mut()
                    .zip(take_rows(&args, adds, n)?)
                {
                    acc.update(&values).map_err(|e| err("aggregate", e))?;
                }
            }
            if !retracts.is_empty() {
                for (acc, values) in group
                    .accumulators
                    .iter_mut()
                    .zip(take_rows(&args, retracts, n)?)
                {
                    acc.retract(&values).map_err(|e| err("aggregate", e))?;
                }
            }
            if group.rows <= 0 {
                if let Some(last) = self.groups.remove(key).and_then(|g| g.last) {
                    changes.push(RowKind::Delete, key, last);
                }
                continue;
            }
            let now = group
                .accumulators
                .iter_mut()
                .map(|a| a.value().map_err(|e| err("aggregate", e)))
                .collect::<Result<Vec<_>>>()?;
            match group.last.replace(now.clone()) {
                None => changes.push(RowKind::Insert, key, now),
                Some(before) if before != now => {
                    changes.push(RowKind::UpdateBefore, key, before);
                    changes.push(RowKind::UpdateAfter, key, now);
                }
                Some(_) => {}
            }
        }
        self.emit(changes, out)
    }
}
