//! Grouping keys as comparable byte rows (Arrow row format), shared by the
//! stateful operators that keep state per key.

use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use streamflow_core::{Error, Result};
use streamflow_expr::CompiledExpr;

/// Key columns as comparable rows; the converter is made on first use.
#[derive(Default)]
pub(crate) struct KeyRows {
    pub(crate) converter: Option<RowConverter>,
}

impl KeyRows {
    /// The keys of every row of `batch`, or `None` for a global window.
    pub(crate) fn rows(
        &mut self,
        keys: &[CompiledExpr],
        batch: &RecordBatch,
    ) -> Result<Option<Rows>> {
        if keys.is_empty() {
            return Ok(None);
        }
        let arrays = keys
            .iter()
            .map(|k| {
                k.evaluate(batch).map_err(|e| Error::Expression {
                    expr: k.sql().into(),
                    message: e.message,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if self.converter.is_none() {
            let fields = arrays
                .iter()
                .map(|a| SortField::new(a.data_type().clone()))
                .collect();
            self.converter =
                Some(RowConverter::new(fields).map_err(|e| Error::arrow("window keys", e))?);
        }
        let conv = self
            .converter
            .as_ref()
            .ok_or_else(|| Error::Other("no key converter".into()))?;
        conv.convert_columns(&arrays)
            .map(Some)
            .map_err(|e| Error::arrow("window keys", e))
    }
}
