//! Built-in components: the `noop` and `sql` processors, SQL predicates
//! and conditions written inline in a node, the `merge` reducer and the
//! `log` error handler.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, StringArray, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use streamflow_expr::CompiledExpr;

use super::outcome::{NodeError, Outcome, Processed};
use super::registry::{Condition, ErrorHandler, Predicate, Processor, Reducer};
use crate::projection::Projection;
use crate::row_errors::isolate;

/// `noop`: passes records through.
pub(crate) struct Noop;

#[async_trait]
impl Processor for Noop {
    async fn process(&self, batch: RecordBatch) -> Result<Processed, String> {
        Ok(Processed::ok(batch))
    }
}

/// `sql`: `map: {column: expression}` — adds or replaces computed columns;
/// a record on which an expression fails fails alone.
pub(crate) struct Sql(pub(crate) Projection);

#[async_trait]
impl Processor for Sql {
    fn output_schema(&self, _input: &SchemaRef) -> Result<SchemaRef, String> {
        Ok(crate::stage::StageFactory::output_schema(&self.0))
    }
    async fn process(&self, batch: RecordBatch) -> Result<Processed, String> {
        let (output, failed) = isolate(&batch, |b| self.0.apply(b)).map_err(|e| e.to_string())?;
        let output = output.unwrap_or_else(|| RecordBatch::new_empty(self.0.schema()));
        Ok(Processed { output, failed })
    }
}

/// A boolean SQL expression used as a predicate.
pub(crate) struct SqlPredicate(pub(crate) CompiledExpr);

impl Predicate for SqlPredicate {
    fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, String> {
        let a = self.0.evaluate(batch).map_err(|e| e.message)?;
        a.as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .ok_or_else(|| format!("`{}` is not a boolean", self.0.sql()))
    }
}

/// A SQL expression whose text value picks a switch route.
pub(crate) struct SqlCondition(pub(crate) CompiledExpr);

impl Condition for SqlCondition {
    fn evaluate(&self, batch: &RecordBatch) -> Result<StringArray, String> {
        let a = self.0.evaluate(batch).map_err(|e| e.message)?;
        let text = cast(&a, &DataType::Utf8).map_err(|e| e.to_string())?;
        text.as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| "route key is not text".to_string())
    }
}

/// `merge`: the input's columns plus every child's output columns (a
/// later child's column replaces an earlier one of the same name). A
/// record fails when any child failed on it, with the first child's error.
pub(crate) struct Merge;

/// Where each output column of a merge comes from: `None` = the input,
/// `Some(c)` = child `c`; and its column index there.
fn merge_plan(input: &Schema, results: &[&Schema]) -> (Vec<Field>, Vec<(Option<usize>, usize)>) {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut from: Vec<(Option<usize>, usize)> = (0..fields.len()).map(|i| (None, i)).collect();
    for (c, schema) in results.iter().enumerate() {
        for (i, f) in schema.fields().iter().enumerate() {
            match fields.iter().position(|g| g.name() == f.name()) {
                Some(at) => {
                    fields[at] = f.as_ref().clone();
                    from[at] = (Some(c), i);
                }
                None => {
                    fields.push(f.as_ref().clone());
                    from.push((Some(c), i));
                }
            }
        }
    }
    (fields, from)
}

impl Reducer for Merge {
    fn output_schema(&self, input: &SchemaRef, results: &[SchemaRef]) -> Result<SchemaRef, String> {
        let results: Vec<&Schema> = results.iter().map(AsRef::as_ref).collect();
        Ok(Arc::new(Schema::new(merge_plan(input, &results).0)))
    }

    fn reduce(&self, input: &RecordBatch, results: &[Outcome]) -> Outcome {
        let n = input.num_rows();
        let fates: Vec<_> = results.iter().map(|o| o.fates(n)).collect();
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for r in 0..n {
            match fates.iter().find_map(|f| f[r].as_ref().err()) {
                Some(e) => failed.push((r, Arc::clone(e))),
                None => ok.push(r),
            }
        }
        let schemas: Vec<&Schema> = results
            .iter()
            .map(|o| o.output.schema_ref().as_ref())
            .collect();
        let (fields, from) = merge_plan(input.schema_ref(), &schemas);
        let schema = Arc::new(Schema::new(fields));
        let pick = |c: Option<usize>| -> UInt32Array {
            ok.iter()
                .map(|&r| match c {
                    None => r as u32,
                    Some(c) => *fates[c][r].as_ref().unwrap_or(&0) as u32,
                })
                .collect()
        };
        let columns: Result<Vec<ArrayRef>, _> = from
            .iter()
            .map(|(c, i)| {
                let source = match c {
                    None => input.column(*i),
                    Some(c) => results[*c].output.column(*i),
                };
                take(source.as_ref(), &pick(*c), None)
            })
            .collect();
        match columns.and_then(|cols| RecordBatch::try_new(Arc::clone(&schema), cols)) {
            Ok(output) => Outcome { output, failed },
            Err(e) => Outcome::fail_all(
                n,
                schema,
                NodeError {
                    path: "merge".into(),
                    message: e.to_string(),
                },
            ),
        }
    }
}

/// `log`: writes each failure as a warning.
pub(crate) struct Log;

#[async_trait]
impl ErrorHandler for Log {
    async fn handle(&self, failed: RecordBatch, errors: &[Arc<NodeError>]) {
        for e in errors {
            tracing::warn!(target: "streamflow::process", error = %e, "record failed");
        }
        tracing::debug!(records = failed.num_rows(), "handled failures");
    }
}
