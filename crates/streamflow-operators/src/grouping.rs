//! What the grouping operators (windows, aggregates) share: planning their
//! keys and aggregates, keys as comparable byte rows (Arrow row format),
//! and selecting the rows of a group.

use arrow::array::{Array, ArrayRef, UInt32Array};
use arrow::compute::{concat, take};
use arrow::datatypes::{Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use serde_json::{Map, Value};
use streamflow_core::{Diagnostics, Error, Result};
use streamflow_expr::{CompiledAggregate, CompiledExpr};

use crate::stage::StageContext;

/// Compiles the stage's `key_by` expressions, adding one output field each.
pub(crate) fn plan_keys(
    ctx: &StageContext<'_>,
    input: &SchemaRef,
    fields: &mut Vec<Field>,
    d: &mut Diagnostics,
) -> Vec<CompiledExpr> {
    let mut keys = Vec::new();
    for (i, sql) in ctx.key_by.iter().enumerate() {
        match streamflow_expr::compile(sql, input) {
            Ok(e) => {
                fields.push(Field::new(sql, e.data_type().clone(), e.nullable()));
                keys.push(e);
            }
            Err(e) => d.push(format!("{}.key_by[{i}]", ctx.path), e.message),
        }
    }
    keys
}

/// Compiles `aggregates: {name: call}`, adding one output field each. With
/// `retractable: Some(r)`, each must also work as a single-group accumulator
/// (retracting when `r`), and its field becomes nullable.
pub(crate) fn plan_aggregates(
    ctx: &StageContext<'_>,
    declared: &Map<String, Value>,
    input: &SchemaRef,
    fields: &mut Vec<Field>,
    d: &mut Diagnostics,
    retractable: Option<bool>,
) -> Vec<CompiledAggregate> {
    let mut aggregates = Vec::new();
    for (name, sql) in declared {
        let path = ctx.at(&format!("aggregates.{name}"));
        let sql = sql
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| sql.to_string());
        if fields.iter().any(|f| f.name() == name) {
            d.push(
                path,
                format!("column '{name}' already exists in the output"),
            );
            continue;
        }
        let agg = match streamflow_expr::compile_aggregate(&sql, name, input) {
            Ok(a) => a,
            Err(e) => {
                d.push(path, e.message);
                continue;
            }
        };
        let mut field = agg.field().as_ref().clone();
        if let Some(retract) = retractable {
            if let Err(e) = agg.single(retract) {
                d.push(path, e.message);
                continue;
            }
            field = field.with_nullable(true);
        }
        fields.push(field);
        aggregates.push(agg);
    }
    if declared.is_empty() {
        d.push(ctx.at("aggregates"), "declare at least one aggregate");
    }
    aggregates
}

/// The argument arrays of every aggregate for `batch`.
pub(crate) fn arguments(
    aggregates: &[CompiledAggregate],
    batch: &RecordBatch,
) -> Result<Vec<Vec<ArrayRef>>> {
    aggregates
        .iter()
        .map(|a| {
            a.arguments(batch)
                .map_err(|e| Error::Other(format!("{}: {e}", a.sql())))
        })
        .collect()
}

/// The key of `row` as bytes; empty for a global grouping (no keys).
pub(crate) fn key_bytes(rows: &Option<Rows>, row: usize) -> &[u8] {
    match rows {
        Some(rows) => rows.row(row).data(),
        None => &[],
    }
}

/// Argument arrays restricted to `rows` (no copy when all rows are taken).
pub(crate) fn take_rows(
    args: &[Vec<ArrayRef>],
    rows: Vec<u32>,
    total: usize,
) -> Result<Vec<Vec<ArrayRef>>> {
    if rows.len() == total {
        return Ok(args.to_vec());
    }
    let idx = UInt32Array::from(rows);
    args.iter()
        .map(|vals| {
            vals.iter()
                .map(|v| take(v.as_ref(), &idx, None))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::arrow("selecting group rows", e))
}

/// One column per aggregate from per-group result pieces.
pub(crate) fn concat_columns(parts: Vec<Vec<ArrayRef>>) -> Result<Vec<ArrayRef>> {
    parts
        .into_iter()
        .map(|p| {
            let refs: Vec<&dyn Array> = p.iter().map(|a| a.as_ref()).collect();
            concat(&refs).map_err(|e| Error::arrow("assembling results", e))
        })
        .collect()
}

/// Key columns as comparable rows; the converter is made on first use.
#[derive(Default)]
pub(crate) struct KeyRows {
    pub(crate) converter: Option<RowConverter>,
}

impl KeyRows {
    /// Makes the converter for `keys` now (restoring state needs it before
    /// any batch arrives); nothing for a global grouping.
    pub(crate) fn prepare(&mut self, keys: &[CompiledExpr]) -> Result<()> {
        if keys.is_empty() || self.converter.is_some() {
            return Ok(());
        }
        let fields = keys
            .iter()
            .map(|k| SortField::new(k.data_type().clone()))
            .collect();
        self.converter = Some(RowConverter::new(fields).map_err(|e| Error::arrow("keys", e))?);
        Ok(())
    }

    /// The key group of each stored key (`None` for a global grouping).
    pub(crate) fn key_groups<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Option<Vec<u32>>> {
        if self.converter.is_none() {
            return Ok(None);
        }
        let columns = self.decode(keys)?;
        streamflow_state::key_groups(&columns).map(Some)
    }

    /// Key columns back from stored key rows (none for a global grouping).
    pub(crate) fn decode<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<ArrayRef>> {
        let Some(conv) = &self.converter else {
            return Ok(Vec::new());
        };
        let parser = conv.parser();
        conv.convert_rows(keys.into_iter().map(|k| parser.parse(k)))
            .map_err(|e| Error::arrow("decoding keys", e))
    }

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
