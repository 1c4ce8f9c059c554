//! `filter`: keeps the rows where a SQL predicate is true (null counts as false).
//!
//! ```yaml
//! - {name: bids, type: filter, input: events, where: "bid IS NOT NULL"}
//! ```

use std::sync::Arc;

use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::{Diagnostics, Operator, Output, Result};
use streamflow_expr::{CompiledExpr, UsedColumns};

use crate::row_errors::apply_isolating;
use crate::stage::{StageContext, StageFactory};

/// Settings of a `filter` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterConfig {
    /// Boolean SQL expression over the input columns.
    #[serde(rename = "where")]
    predicate: String,
}

struct FilterFactory {
    schema: SchemaRef,
    predicate: CompiledExpr,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: FilterConfig = ctx.config()?;
    let schema = ctx.input_schema();
    let predicate =
        streamflow_expr::compile_predicate(&config.predicate, &schema).map_err(|e| {
            Diagnostics::from(streamflow_core::Diagnostic::new(ctx.at("where"), e.message))
        })?;
    Ok(Arc::new(FilterFactory { schema, predicate }))
}

impl StageFactory for FilterFactory {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn input_columns(&self, output: &UsedColumns) -> Option<UsedColumns> {
        let mut used = output.clone();
        used.extend(self.predicate.columns());
        Some(used)
    }
    fn create(&self) -> Box<dyn Operator> {
        Box::new(Filter {
            predicate: self.predicate.clone(),
        })
    }
}

/// Runtime `filter` operator.
struct Filter {
    predicate: CompiledExpr,
}

impl Filter {
    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, String> {
        let mask = self
            .predicate
            .evaluate_predicate(batch)
            .map_err(|e| e.message)?;
        filter_record_batch(batch, &mask).map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Operator for Filter {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        if let Some(kept) = apply_isolating(&batch, out, |b| self.apply(b))? {
            out.emit(kept);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    fn ctx_plan(
        settings: serde_json::Value,
        schema: SchemaRef,
    ) -> Result<Arc<dyn StageFactory>, Diagnostics> {
        let map = settings.as_object().cloned().unwrap_or_default();
        plan(&StageContext {
            name: "f",
            path: "stages[0]",
            settings: &map,
            inputs: &[schema],
            key_by: &[],
            event_time: None,
            input_event_times: &[],
            components: crate::process::Components::builtin(),
        })
    }

    #[tokio::test]
    async fn keeps_matching_rows_and_dead_letters_failing_ones() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let f = ctx_plan(
            serde_json::json!({"where": "10 / a > 2"}),
            Arc::clone(&schema),
        )
        .expect("plans");
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 0, 5, 2]))])
                .expect("batch");
        let mut op = f.create();
        let mut out = Output::new();
        op.process_batch(0, batch, &mut out).await.expect("runs");
        let kept = out.take_batches();
        let a = kept[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert_eq!(a.values().to_vec(), vec![1, 2]);
        let dead = out.take_dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].payload.as_deref(), Some(r#"{"a":0}"#));
        assert!(
            dead[0].error.contains("Divide by zero"),
            "{}",
            dead[0].error
        );
    }

    #[test]
    fn unknown_column_is_reported_at_where() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "price",
            DataType::Int64,
            false,
        )]));
        let err = ctx_plan(serde_json::json!({"where": "prise > 1"}), schema)
            .err()
            .expect("fails");
        assert_eq!(
            err.to_string(),
            "stages[0].where: column 'prise' not found (did you mean 'price'?)"
        );
    }
}
