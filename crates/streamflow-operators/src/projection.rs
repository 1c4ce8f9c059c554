//! The projection runtime shared by `select`, `map`, `rename` and
//! `add_column`: each output column is an input column, a computed
//! expression or a constant, assembled into a new batch without copying the
//! columns that pass through.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use async_trait::async_trait;
use streamflow_core::{Operator, Output, Result};
use streamflow_expr::{CompiledExpr, ScalarValue, UsedColumns};

use crate::row_errors::apply_isolating;
use crate::stage::StageFactory;

/// Where one output column comes from.
#[derive(Debug, Clone)]
pub(crate) enum ColumnSource {
    /// An input column, by index (zero-copy).
    Input(usize),
    /// A computed expression.
    Expr(CompiledExpr),
    /// The same value on every row.
    Constant(ScalarValue),
}

/// A planned projection: the output schema and how to fill each column.
#[derive(Debug, Clone)]
pub(crate) struct Projection {
    schema: SchemaRef,
    columns: Vec<ColumnSource>,
    /// Names of the input columns.
    input_names: Arc<[String]>,
}

impl Projection {
    /// Builds the output schema from `(name, source)` pairs over `input`.
    pub(crate) fn new(input: &Schema, columns: Vec<(String, ColumnSource)>) -> Self {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, src)| match src {
                ColumnSource::Input(i) => input.field(*i).clone().with_name(name),
                ColumnSource::Expr(e) => Field::new(name, e.data_type().clone(), e.nullable()),
                ColumnSource::Constant(v) => Field::new(name, v.data_type(), v.is_null()),
            })
            .collect();
        Self {
            schema: Arc::new(Schema::new(fields)),
            columns: columns.into_iter().map(|(_, s)| s).collect(),
            input_names: input.fields().iter().map(|f| f.name().clone()).collect(),
        }
    }

    /// Every input column kept under its own name.
    pub(crate) fn identity(input: &Schema) -> Vec<(String, ColumnSource)> {
        input
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name().clone(), ColumnSource::Input(i)))
            .collect()
    }

    /// The output schema.
    pub(crate) fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The projection of `batch`; fails as a whole if any row fails.
    pub(crate) fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, String> {
        let n = batch.num_rows();
        let arrays = self
            .columns
            .iter()
            .map(|c| match c {
                ColumnSource::Input(i) => Ok(Arc::clone(batch.column(*i))),
                ColumnSource::Expr(e) => e.evaluate(batch).map_err(|e| e.message),
                ColumnSource::Constant(v) => v.to_array_of_size(n).map_err(|e| e.to_string()),
            })
            .collect::<Result<Vec<ArrayRef>, String>>()?;
        RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )
        .map_err(|e| e.to_string())
    }
}

impl StageFactory for Projection {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn input_columns(&self, output: &UsedColumns) -> Option<UsedColumns> {
        let mut used = UsedColumns::none();
        for (field, source) in self.schema.fields().iter().zip(&self.columns) {
            if !output.touches(field.name()) {
                continue;
            }
            match source {
                ColumnSource::Input(i) => {
                    used.extend(&output.renamed(field.name(), &self.input_names[*i]))
                }
                ColumnSource::Expr(e) => used.extend(e.columns()),
                ColumnSource::Constant(_) => {}
            }
        }
        Some(used)
    }
    fn create(&self) -> Box<dyn Operator> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl Operator for Projection {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        if let Some(projected) = apply_isolating(&batch, out, |b| self.apply(b))? {
            out.emit(projected);
        }
        Ok(())
    }
}
