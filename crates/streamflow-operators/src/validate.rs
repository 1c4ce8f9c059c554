//! `validate`: enforces a declared schema. Declared columns are converted to
//! their declared type; rows whose values cannot be converted, that hold
//! null in a non-nullable column, or that fail a `checks` predicate go to the
//! dead-letter output with the reason. The rest flow on, typed.
//!
//! ```yaml
//! - name: typed
//!   type: validate
//!   input: raw
//!   schema: {price: int64, channel: {type: string, nullable: false}}
//!   checks: ["price >= 0"]
//! ```

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::{DeadLetter, Diagnostics, Error, Operator, Output, Result};
use streamflow_expr::CompiledExpr;

use crate::row_errors::row_as_json;
use crate::stage::{StageContext, StageFactory};

/// Settings of a `validate` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateConfig {
    /// Column → type name, or `{type, nullable}` (nullable defaults to true).
    schema: Map<String, Value>,
    /// Boolean SQL predicates every row must satisfy (null passes, as in SQL CHECK).
    #[serde(default)]
    checks: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnDecl {
    #[serde(rename = "type")]
    data_type: String,
    #[serde(default = "yes")]
    nullable: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone)]
struct DeclaredColumn {
    index: usize,
    data_type: DataType,
    nullable: bool,
}

#[derive(Clone)]
struct ValidateFactory {
    /// Output schema with declared types and nullability.
    strict: SchemaRef,
    /// The same with every declared column nullable (intermediate batches).
    relaxed: SchemaRef,
    columns: Vec<DeclaredColumn>,
    checks: Vec<CompiledExpr>,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: ValidateConfig = ctx.config()?;
    let input = ctx.input_schema();
    let mut d = Diagnostics::new();
    let mut strict: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut relaxed = strict.clone();
    let mut columns = Vec::new();
    let names: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
    for (name, decl) in &config.schema {
        let path = ctx.at(&format!("schema.{name}"));
        let decl = match decl {
            Value::String(t) => ColumnDecl {
                data_type: t.clone(),
                nullable: true,
            },
            other => match serde_json::from_value::<ColumnDecl>(other.clone()) {
                Ok(c) => c,
                Err(e) => {
                    d.push(
                        path,
                        streamflow_dsl::parse::friendly_serde_message(&e.to_string()),
                    );
                    continue;
                }
            },
        };
        let data_type = match streamflow_expr::parse_data_type(&decl.data_type) {
            Ok(t) => t,
            Err(m) => {
                d.push(path, m);
                continue;
            }
        };
        let Ok(index) = input.index_of(name) else {
            d.push(
                path,
                match streamflow_dsl::suggest(name, &names) {
                    Some(s) => {
                        format!("column '{name}' not found in the input (did you mean '{s}'?)")
                    }
                    None => format!("column '{name}' not found in the input"),
                },
            );
            continue;
        };
        if !arrow::compute::can_cast_types(input.field(index).data_type(), &data_type) {
            d.push(
                path,
                format!(
                    "cannot convert {} to {data_type}",
                    input.field(index).data_type()
                ),
            );
            continue;
        }
        strict[index] = Field::new(name, data_type.clone(), decl.nullable);
        relaxed[index] = Field::new(name, data_type.clone(), true);
        columns.push(DeclaredColumn {
            index,
            data_type,
            nullable: decl.nullable,
        });
    }
    let strict = Arc::new(Schema::new(strict));
    let relaxed = Arc::new(Schema::new(relaxed));
    let mut checks = Vec::new();
    for (i, sql) in config.checks.iter().enumerate() {
        match streamflow_expr::compile_predicate(sql, &relaxed) {
            Ok(e) => checks.push(e),
            Err(e) => d.push(ctx.at(&format!("checks[{i}]")), e.message),
        }
    }
    d.into_result(())?;
    Ok(Arc::new(ValidateFactory {
        strict,
        relaxed,
        columns,
        checks,
    }))
}

impl StageFactory for ValidateFactory {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.strict)
    }
    fn create(&self) -> Box<dyn Operator> {
        Box::new(self.clone())
    }
}

impl ValidateFactory {
    /// Re-labels a batch whose rows all conform with the strict schema.
    fn typed(&self, batch: RecordBatch) -> Result<RecordBatch> {
        RecordBatch::try_new(Arc::clone(&self.strict), batch.columns().to_vec())
            .map_err(|e| Error::arrow("validate", e))
    }

    fn record(reasons: &mut [Option<String>], row: usize, why: impl FnOnce() -> String) {
        if reasons[row].is_none() {
            reasons[row] = Some(why());
        }
    }
}

#[async_trait]
impl Operator for ValidateFactory {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        let n = batch.num_rows();
        let mut reasons: Vec<Option<String>> = vec![None; n];
        let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
        let options = CastOptions {
            safe: true,
            ..CastOptions::default()
        };
        for c in &self.columns {
            let src = batch.column(c.index);
            let cast = if src.data_type() == &c.data_type {
                Arc::clone(src)
            } else {
                cast_with_options(src, &c.data_type, &options)
                    .map_err(|e| Error::arrow("validate: cast", e))?
            };
            if cast.null_count() > 0 {
                let name = self.strict.field(c.index).name();
                for row in (0..n).filter(|&r| cast.is_null(r)) {
                    if src.is_valid(row) {
                        Self::record(&mut reasons, row, || {
                            let shown = arrow::util::display::array_value_to_string(src, row)
                                .unwrap_or_default();
                            format!(
                                "column '{name}': cannot convert '{shown}' to {}",
                                c.data_type
                            )
                        });
                    } else if !c.nullable {
                        Self::record(&mut reasons, row, || {
                            format!("column '{name}': null in a non-nullable column")
                        });
                    }
                }
            }
            arrays[c.index] = cast;
        }
        let relaxed = RecordBatch::try_new(Arc::clone(&self.relaxed), arrays)
            .map_err(|e| Error::arrow("validate: assembling batch", e))?;
        for check in &self.checks {
            let result = check.evaluate(&relaxed).map_err(|e| Error::Expression {
                expr: check.sql().to_string(),
                message: e.message,
            })?;
            let Some(result) = result.as_any().downcast_ref::<BooleanArray>() else {
                continue;
            };
            for row in (0..n).filter(|&r| result.is_valid(r) && !result.value(r)) {
                Self::record(&mut reasons, row, || {
                    format!("check `{}` failed", check.sql())
                });
            }
        }
        if reasons.iter().all(Option::is_none) {
            out.emit(self.typed(relaxed)?);
            return Ok(());
        }
        let keep: BooleanArray = reasons.iter().map(|r| Some(r.is_none())).collect();
        for (row, reason) in reasons.into_iter().enumerate() {
            if let Some(error) = reason {
                out.dead_letter(DeadLetter {
                    file: None,
                    line: None,
                    payload: Some(row_as_json(&batch.slice(row, 1))),
                    error,
                });
            }
        }
        let good = filter_record_batch(&relaxed, &keep)
            .map_err(|e| Error::arrow("validate: filter", e))?;
        out.emit(self.typed(good)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[tokio::test]
    async fn converts_and_rejects_rows_with_reasons() {
        let input = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Utf8, true),
            Field::new("channel", DataType::Utf8, true),
        ]));
        let settings = serde_json::json!({
            "schema": {"price": "int64", "channel": {"type": "string", "nullable": false}},
            "checks": ["price >= 0"]
        });
        let map = settings.as_object().cloned().unwrap_or_default();
        let factory = plan(&StageContext {
            name: "v",
            path: "stages[0]",
            settings: &map,
            inputs: &[Arc::clone(&input)],
            key_by: &[],
            event_time: None,
            input_event_times: &[],
            components: crate::process::Components::builtin(),
        })
        .expect("plans");
        let batch = RecordBatch::try_new(
            input,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("10"),
                    Some("abc"),
                    Some("5"),
                    Some("-1"),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("web"),
                    Some("web"),
                    None,
                    Some("app"),
                ])),
            ],
        )
        .expect("batch");
        let mut op = factory.create();
        let mut out = Output::new();
        op.process_batch(0, batch, &mut out).await.expect("runs");
        let good = out.take_batches();
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].schema().field(0).data_type(), &DataType::Int64);
        assert!(!good[0].schema().field(1).is_nullable());
        let prices = good[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert_eq!(prices.values().to_vec(), vec![10]);
        let errors: Vec<String> = out
            .take_dead_letters()
            .into_iter()
            .map(|d| d.error)
            .collect();
        assert_eq!(
            errors,
            vec![
                "column 'price': cannot convert 'abc' to Int64".to_string(),
                "column 'channel': null in a non-nullable column".to_string(),
                "check `price >= 0` failed".to_string(),
            ]
        );
    }
}
