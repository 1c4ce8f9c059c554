//! Aggregate expressions (`count(*)`, `max(price)`, `count(DISTINCT bidder)`,
//! `approx_percentile_cont(price, 0.5)`, ...) backed by DataFusion's
//! accumulators, so every aggregate DataFusion has is available.
//!
//! [`GroupedAggregate`] keeps the state of many groups: vectorised
//! `GroupsAccumulator`s where the function has one, otherwise one
//! `Accumulator` per group (e.g. DISTINCT).

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{FieldRef, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion_common::{DFSchema, ScalarValue};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_expr::{Accumulator, EmitTo, Expr, GroupsAccumulator};
use datafusion_physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion_physical_expr::{PhysicalExpr, create_physical_expr};

use crate::expression::{ExprError, clean_message, plan_logical, used_columns};
use crate::used::UsedColumns;

fn df_err(e: datafusion_common::DataFusionError) -> ExprError {
    ExprError::new(clean_message(&e))
}

/// An aggregate call planned against an input schema.
#[derive(Clone)]
pub struct CompiledAggregate {
    sql: String,
    function: Arc<AggregateFunctionExpr>,
    args: Vec<Arc<dyn PhysicalExpr>>,
    columns: UsedColumns,
}

impl fmt::Debug for CompiledAggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledAggregate")
            .field("sql", &self.sql)
            .finish()
    }
}

/// Plans `sql`, which must be a single aggregate call, against `schema`;
/// `name` becomes its output column name.
///
/// # Errors
/// Unknown columns/functions, wrong argument types, or text that is not one aggregate call.
pub fn compile_aggregate(
    sql: &str,
    name: &str,
    schema: &SchemaRef,
) -> Result<CompiledAggregate, ExprError> {
    let logical = plan_logical(sql, schema)?;
    let columns = used_columns(&logical);
    let Expr::AggregateFunction(agg) = logical.unalias_nested().data else {
        return Err(ExprError::new(format!(
            "`{sql}` is not an aggregate call (expected e.g. count(*), sum(price), max(price))"
        )));
    };
    if agg.params.filter.is_some() || !agg.params.order_by.is_empty() {
        return Err(ExprError::new(format!(
            "`{sql}`: FILTER and ORDER BY inside aggregates are not supported"
        )));
    }
    let df_schema = DFSchema::try_from(schema.as_ref().clone())
        .map_err(|e| ExprError::new(clean_message(&e)))?;
    let props = ExecutionProps::new();
    let args = agg
        .params
        .args
        .iter()
        .map(|a| create_physical_expr(a, &df_schema, &props, &PhysicalPlanningContext::default()))
        .collect::<datafusion_common::Result<Vec<_>>>()
        .map_err(|e| ExprError::new(clean_message(&e)))?;
    let function = AggregateExprBuilder::new(Arc::clone(&agg.func), args.clone())
        .schema(Arc::clone(schema))
        .alias(name)
        .with_distinct(agg.params.distinct)
        .build()
        .map_err(|e| ExprError::new(format!("`{sql}`: {}", clean_message(&e))))?;
    Ok(CompiledAggregate {
        sql: sql.to_string(),
        function: Arc::new(function),
        args,
        columns,
    })
}

impl CompiledAggregate {
    /// The columns and nested struct fields its arguments read.
    pub fn columns(&self) -> &UsedColumns {
        &self.columns
    }

    /// The SQL text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The output field (named as requested).
    pub fn field(&self) -> FieldRef {
        self.function.field()
    }

    /// Evaluates the arguments on a batch.
    ///
    /// # Errors
    /// When an argument expression fails.
    pub fn arguments(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>, ExprError> {
        self.args
            .iter()
            .map(|a| {
                a.evaluate(batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
            })
            .collect::<datafusion_common::Result<Vec<_>>>()
            .map_err(|e| ExprError::new(clean_message(&e)))
    }

    /// Empty state for a set of groups.
    ///
    /// # Errors
    /// When DataFusion cannot create the accumulator.
    pub fn new_state(&self) -> Result<GroupedAggregate, ExprError> {
        GroupedAggregate::empty(Arc::clone(&self.function))
    }

    /// The columns of an exported state ([`GroupedAggregate::export`]).
    ///
    /// # Errors
    /// When DataFusion cannot describe the state.
    pub fn state_fields(&self) -> Result<Vec<FieldRef>, ExprError> {
        self.function.state_fields().map_err(df_err)
    }

    /// Rebuilds a state from [`GroupedAggregate::export`]ed columns (one row per group).
    ///
    /// # Errors
    /// When the columns do not match [`state_fields`](Self::state_fields).
    pub fn restore(&self, states: &[ArrayRef]) -> Result<GroupedAggregate, ExprError> {
        let mut state = self.new_state()?;
        let n = states.first().map_or(0, |s| s.len());
        if n > 0 {
            state.merge_state(states, &(0..n).collect::<Vec<_>>(), n)?;
        }
        Ok(state)
    }
}

impl CompiledAggregate {
    /// State for one group. `retractable` asks for an accumulator that can
    /// also remove values (for changelog input).
    ///
    /// # Errors
    /// When the function cannot retract and `retractable` was asked for.
    pub fn single(&self, retractable: bool) -> Result<SingleAggregate, ExprError> {
        let err = |e: datafusion_common::DataFusionError| {
            ExprError::new(format!("`{}`: {}", self.sql, clean_message(&e)))
        };
        let acc = if retractable {
            // DataFusion's retraction is built for sliding window frames: it
            // assumes the oldest value leaves first. Only functions whose
            // state is order-free (sums and counts) retract arbitrary rows.
            let name = self.function.fun().name().to_ascii_lowercase();
            let order_free = matches!(name.as_str(), "sum" | "count" | "avg" | "mean")
                && !self.function.is_distinct();
            if !order_free {
                return Err(ExprError::new(format!(
                    "`{}` cannot consume a changelog (only sum, count and avg retract rows); apply it before the changelog",
                    self.sql
                )));
            }
            let acc = self.function.create_sliding_accumulator().map_err(err)?;
            if !acc.supports_retract_batch() {
                return Err(ExprError::new(format!(
                    "`{}` cannot retract values, so it cannot consume a changelog",
                    self.sql
                )));
            }
            acc
        } else {
            self.function.create_accumulator().map_err(err)?
        };
        Ok(SingleAggregate {
            acc,
            function: Arc::clone(&self.function),
            retractable,
        })
    }

    /// A single-group state rebuilt from [`SingleAggregate::export`]ed values.
    ///
    /// # Errors
    /// When the values do not fit the accumulator's state.
    pub fn restore_single(
        &self,
        retractable: bool,
        state: &[ScalarValue],
    ) -> Result<SingleAggregate, ExprError> {
        let mut single = self.single(retractable)?;
        single.merge(state)?;
        Ok(single)
    }
}

/// The running state of one aggregate for one group.
pub struct SingleAggregate {
    acc: Box<dyn Accumulator>,
    function: Arc<AggregateFunctionExpr>,
    retractable: bool,
}

impl fmt::Debug for SingleAggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleAggregate").finish_non_exhaustive()
    }
}

impl SingleAggregate {
    /// Adds the rows of `values` (argument arrays).
    ///
    /// # Errors
    /// When the accumulator rejects the values.
    pub fn update(&mut self, values: &[ArrayRef]) -> Result<(), ExprError> {
        self.acc
            .update_batch(values)
            .map_err(|e| ExprError::new(clean_message(&e)))
    }
    /// Removes the rows of `values` (a retraction).
    ///
    /// # Errors
    /// When the accumulator cannot retract.
    pub fn retract(&mut self, values: &[ArrayRef]) -> Result<(), ExprError> {
        self.acc
            .retract_batch(values)
            .map_err(|e| ExprError::new(clean_message(&e)))
    }
    /// The intermediate state, leaving this state unchanged;
    /// [`CompiledAggregate::restore_single`] rebuilds it.
    ///
    /// # Errors
    /// When the accumulator cannot produce or re-absorb its state.
    pub fn export(&mut self) -> Result<Vec<ScalarValue>, ExprError> {
        let state = self.acc.state().map_err(df_err)?;
        self.acc = if self.retractable {
            self.function.create_sliding_accumulator()
        } else {
            self.function.create_accumulator()
        }
        .map_err(df_err)?;
        self.merge(&state)?;
        Ok(state)
    }

    fn merge(&mut self, state: &[ScalarValue]) -> Result<(), ExprError> {
        let arrays = state
            .iter()
            .map(|v| v.to_array())
            .collect::<datafusion_common::Result<Vec<_>>>()
            .map_err(df_err)?;
        self.acc.merge_batch(&arrays).map_err(df_err)
    }

    /// The current value.
    ///
    /// # Errors
    /// When the accumulator cannot produce its result.
    pub fn value(&mut self) -> Result<ScalarValue, ExprError> {
        self.acc
            .evaluate()
            .map_err(|e| ExprError::new(clean_message(&e)))
    }
}

enum Grouped {
    Vectorised(Box<dyn GroupsAccumulator>),
    PerGroup(Vec<Box<dyn Accumulator>>),
}

/// The running state of one aggregate over numbered groups `0..n`.
pub struct GroupedAggregate {
    function: Arc<AggregateFunctionExpr>,
    inner: Grouped,
    groups: usize,
}

impl fmt::Debug for GroupedAggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupedAggregate")
            .field("function", &self.function.name())
            .field("groups", &self.groups)
            .finish()
    }
}

impl GroupedAggregate {
    /// Adds rows: `values` are the argument arrays, `groups[i]` the group of row `i`;
    /// `total_groups` is the number of groups seen so far (≥ every index + 1).
    ///
    /// # Errors
    /// When the accumulator rejects the values.
    pub fn update(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        total_groups: usize,
    ) -> Result<(), ExprError> {
        let err = |e: datafusion_common::DataFusionError| ExprError::new(clean_message(&e));
        self.groups = self.groups.max(total_groups);
        match &mut self.inner {
            Grouped::Vectorised(acc) => acc
                .update_batch(values, groups, None, total_groups)
                .map_err(err),
            Grouped::PerGroup(accs) => {
                while accs.len() < total_groups {
                    accs.push(self.function.create_accumulator().map_err(err)?);
                }
                // Rows per group, then one update per group.
                let mut rows: Vec<Vec<u32>> = vec![Vec::new(); total_groups];
                for (row, g) in groups.iter().enumerate() {
                    rows[*g].push(row as u32);
                }
                for (g, idx) in rows.into_iter().enumerate().filter(|(_, r)| !r.is_empty()) {
                    let idx = UInt32Array::from(idx);
                    let taken = values
                        .iter()
                        .map(|v| take(v.as_ref(), &idx, None))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| ExprError::new(e.to_string()))?;
                    accs[g].update_batch(&taken).map_err(err)?;
                }
                Ok(())
            }
        }
    }

    /// Merges every group of `other` (same aggregate) into group `into`,
    /// which must already exist (`into < groups seen`). Used when windows merge.
    ///
    /// # Errors
    /// When the accumulators cannot exchange state.
    pub fn absorb(&mut self, mut other: GroupedAggregate, into: usize) -> Result<(), ExprError> {
        let (states, n) = other.take_state()?;
        if n == 0 {
            return Ok(());
        }
        self.merge_state(&states, &vec![into; n], self.groups.max(into + 1))
    }

    /// The intermediate state of every group (one row per group, columns as
    /// [`CompiledAggregate::state_fields`]), leaving this state unchanged.
    /// [`CompiledAggregate::restore`] rebuilds it.
    ///
    /// # Errors
    /// When the accumulators cannot produce or re-absorb their state.
    pub fn export(&mut self) -> Result<Vec<ArrayRef>, ExprError> {
        let (states, n) = self.take_state()?;
        let mut fresh = GroupedAggregate::empty(Arc::clone(&self.function))?;
        fresh.merge_state(&states, &(0..n).collect::<Vec<_>>(), n)?;
        *self = fresh;
        Ok(states)
    }

    /// The current value of every group, in group order, leaving the state
    /// unchanged (for results that may still be updated).
    ///
    /// # Errors
    /// When the accumulator cannot produce its result.
    pub fn values(&mut self) -> Result<ArrayRef, ExprError> {
        if let Grouped::PerGroup(_) = self.inner {
            // `Accumulator::evaluate` leaves its state intact.
            return self.evaluate_per_group();
        }
        let n = self.groups;
        let states = self.export()?;
        let mut copy = GroupedAggregate::empty(Arc::clone(&self.function))?;
        copy.merge_state(&states, &(0..n).collect::<Vec<_>>(), n)?;
        copy.finish()
    }

    /// Empty state of `function`.
    fn empty(function: Arc<AggregateFunctionExpr>) -> Result<Self, ExprError> {
        let inner = if function.groups_accumulator_supported() {
            Grouped::Vectorised(function.create_groups_accumulator().map_err(df_err)?)
        } else {
            Grouped::PerGroup(Vec::new())
        };
        Ok(GroupedAggregate {
            function,
            inner,
            groups: 0,
        })
    }

    /// Takes the intermediate state of all groups out, and their number.
    fn take_state(&mut self) -> Result<(Vec<ArrayRef>, usize), ExprError> {
        let n = self.groups;
        if n == 0 {
            return Ok((Vec::new(), 0));
        }
        match &mut self.inner {
            Grouped::Vectorised(acc) => Ok((acc.state(EmitTo::All).map_err(df_err)?, n)),
            Grouped::PerGroup(accs) => {
                while accs.len() < n {
                    accs.push(self.function.create_accumulator().map_err(df_err)?);
                }
                let rows: Vec<Vec<ScalarValue>> = accs
                    .iter_mut()
                    .map(|a| a.state())
                    .collect::<datafusion_common::Result<_>>()
                    .map_err(df_err)?;
                let columns = (0..rows[0].len())
                    .map(|c| ScalarValue::iter_to_array(rows.iter().map(|r| r[c].clone())))
                    .collect::<datafusion_common::Result<Vec<_>>>()
                    .map_err(df_err)?;
                Ok((columns, n))
            }
        }
    }

    /// Merges state rows into groups: row `i` of `states` into `groups[i]`.
    fn merge_state(
        &mut self,
        states: &[ArrayRef],
        groups: &[usize],
        total: usize,
    ) -> Result<(), ExprError> {
        self.groups = self.groups.max(total);
        match &mut self.inner {
            Grouped::Vectorised(acc) => {
                acc.merge_batch(states, groups, self.groups).map_err(df_err)
            }
            Grouped::PerGroup(accs) => {
                while accs.len() < self.groups {
                    accs.push(self.function.create_accumulator().map_err(df_err)?);
                }
                for (row, &g) in groups.iter().enumerate() {
                    let slice: Vec<ArrayRef> = states.iter().map(|s| s.slice(row, 1)).collect();
                    accs[g].merge_batch(&slice).map_err(df_err)?;
                }
                Ok(())
            }
        }
    }

    fn evaluate_per_group(&mut self) -> Result<ArrayRef, ExprError> {
        let Grouped::PerGroup(accs) = &mut self.inner else {
            return Err(ExprError::new("not a per-group aggregate"));
        };
        while accs.len() < self.groups {
            accs.push(self.function.create_accumulator().map_err(df_err)?);
        }
        let values = accs
            .iter_mut()
            .map(|a| a.evaluate())
            .collect::<datafusion_common::Result<Vec<_>>>()
            .map_err(df_err)?;
        if values.is_empty() {
            return Ok(arrow::array::new_empty_array(
                self.function.field().data_type(),
            ));
        }
        ScalarValue::iter_to_array(values).map_err(df_err)
    }

    /// The final value of every group, in group order; the state is consumed.
    ///
    /// # Errors
    /// When the accumulator cannot produce its result.
    pub fn finish(mut self) -> Result<ArrayRef, ExprError> {
        match &mut self.inner {
            Grouped::Vectorised(acc) => acc.evaluate(EmitTo::All).map_err(df_err),
            Grouped::PerGroup(_) => self.evaluate_per_group(),
        }
    }

    /// Approximate memory held, in bytes.
    pub fn size(&self) -> usize {
        match &self.inner {
            Grouped::Vectorised(acc) => acc.size(),
            Grouped::PerGroup(accs) => accs.iter().map(|a| a.size()).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    fn input() -> (SchemaRef, RecordBatch) {
        let s = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let b = RecordBatch::try_new(
            Arc::clone(&s),
            vec![
                Arc::new(Int64Array::from(vec![1, 1, 2, 2, 2])),
                Arc::new(Int64Array::from(vec![3, 3, 5, 7, 5])),
            ],
        )
        .expect("batch");
        (s, b)
    }

    fn run(sql: &str) -> ArrayRef {
        let (s, b) = input();
        let agg = compile_aggregate(sql, "out", &s).expect("compiles");
        let mut state = agg.new_state().expect("state");
        let values = agg.arguments(&b).expect("args");
        state.update(&values, &[0, 0, 1, 1, 1], 2).expect("update");
        state.finish().expect("finish")
    }

    #[test]
    fn vectorised_and_per_group_aggregates() {
        let count = run("count(*)");
        assert_eq!(
            count
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("i64")
                .values()
                .to_vec(),
            vec![2, 3]
        );
        let max = run("max(v)");
        assert_eq!(
            max.as_any()
                .downcast_ref::<Int64Array>()
                .expect("i64")
                .values()
                .to_vec(),
            vec![3, 7]
        );
        let avg = run("avg(v)");
        let avg = avg.as_any().downcast_ref::<Float64Array>().expect("f64");
        assert!((avg.value(1) - 17.0 / 3.0).abs() < 1e-12);
        let distinct = run("count(DISTINCT v)");
        assert_eq!(
            distinct
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("i64")
                .values()
                .to_vec(),
            vec![1, 2]
        );
        assert_eq!(run("approx_distinct(v)").len(), 2);
    }

    #[test]
    fn states_merge_into_one_group() {
        for sql in ["sum(v)", "count(DISTINCT v)"] {
            let (s, b) = input();
            let agg = compile_aggregate(sql, "out", &s).expect("compiles");
            let values = agg.arguments(&b).expect("args");
            let mut left = agg.new_state().expect("state");
            left.update(&values, &[0, 0, 0, 0, 0], 1).expect("update");
            let mut right = agg.new_state().expect("state");
            right.update(&values, &[0, 0, 0, 0, 0], 1).expect("update");
            left.absorb(right, 0).expect("absorb");
            let out = left.finish().expect("finish");
            let out = out
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("i64")
                .value(0);
            assert_eq!(out, if sql == "sum(v)" { 46 } else { 3 }, "{sql}");
        }
    }

    #[test]
    fn exported_state_restores_and_values_do_not_consume() {
        for sql in [
            "sum(v)",
            "count(DISTINCT v)",
            "avg(v)",
            "max(v)",
            "approx_distinct(v)",
        ] {
            let (s, b) = input();
            let agg = compile_aggregate(sql, "out", &s).expect("compiles");
            let values = agg.arguments(&b).expect("args");
            let groups = [0, 1, 0, 1, 1];
            let mut state = agg.new_state().expect("state");
            state.update(&values, &groups, 2).expect("update");
            let before = state.values().expect("values");
            let exported = state.export().expect("export");
            assert_eq!(exported.len(), agg.state_fields().expect("fields").len());
            let mut restored = agg.restore(&exported).expect("restore");
            // Both the original and the restored state keep accumulating.
            state.update(&values, &groups, 2).expect("update");
            restored.update(&values, &groups, 2).expect("update");
            let mut reference = agg.new_state().expect("state");
            reference.update(&values, &groups, 2).expect("update");
            assert_eq!(&before, &reference.values().expect("values"), "{sql}");
            reference.update(&values, &groups, 2).expect("update");
            let expected = reference.finish().expect("finish");
            assert_eq!(&state.finish().expect("finish"), &expected, "{sql}");
            assert_eq!(&restored.finish().expect("finish"), &expected, "{sql}");
        }
    }

    #[test]
    fn single_states_restore_and_keep_retracting() {
        let (s, b) = input();
        for sql in ["max(v)", "min(v)", "count(DISTINCT v)"] {
            let agg = compile_aggregate(sql, "out", &s).expect("compiles");
            let e = agg.single(true).expect_err("order-dependent retraction");
            assert!(
                e.message.contains("cannot consume a changelog"),
                "{}",
                e.message
            );
        }
        for sql in ["sum(v)", "count(*)", "avg(v)"] {
            let agg = compile_aggregate(sql, "out", &s).expect("compiles");
            let values = agg.arguments(&b).expect("args");
            let mut live = agg.single(true).expect("single");
            live.update(&values).expect("update");
            let state = live.export().expect("export");
            let mut restored = agg.restore_single(true, &state).expect("restore");
            let first: Vec<ArrayRef> = values.iter().map(|v| v.slice(2, 3)).collect();
            live.retract(&first).expect("retract");
            restored.retract(&first).expect("retract");
            let (r, l) = (
                restored.value().expect("value"),
                live.value().expect("value"),
            );
            assert!(!l.is_null(), "{sql}");
            assert_eq!(r, l, "{sql}");
        }
    }

    #[test]
    fn non_aggregates_are_rejected() {
        let (s, _) = input();
        let err = compile_aggregate("v + 1", "x", &s).expect_err("not an aggregate");
        assert!(
            err.message.contains("not an aggregate call"),
            "{}",
            err.message
        );
        let err = compile_aggregate("max(w)", "x", &s).expect_err("unknown column");
        assert!(
            err.message.contains("column 'w' not found"),
            "{}",
            err.message
        );
    }
}
