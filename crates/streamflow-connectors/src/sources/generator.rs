//! `generator`: rows computed by SQL expressions over a sequence number `i`.
//!
//! ```yaml
//! - name: orders
//!   type: generator
//!   config:
//!     count: 100000
//!     columns: {id: "i", customer: "concat('c-', i % 100)", amount: "(i * 37) % 1000 / 10.0"}
//! ```

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::{Diagnostics, Error, Result, Source, SourceBatch, SourceOffset};
use streamflow_dsl::Mode;
use streamflow_expr::CompiledExpr;

use super::sequence::ChunkCursor;
use crate::registry::{SourceContext, SourceFactory};

/// Settings of a `generator` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeneratorConfig {
    /// Rows to produce; unbounded when absent.
    count: Option<u64>,
    /// First value of `i`.
    #[serde(default)]
    start: i64,
    /// Output column → SQL expression over `i` (Int64).
    columns: Map<String, Value>,
    /// Rows per batch.
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    /// Wall-clock throttle in rows per second.
    rate: Option<u64>,
}

fn default_batch_size() -> usize {
    8192
}

fn sequence_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| Arc::new(Schema::new(vec![Field::new("i", DataType::Int64, false)])))
        .clone()
}

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: GeneratorConfig = ctx.config()?;
    let mut d = Diagnostics::new();
    let mut exprs = Vec::new();
    let mut fields = Vec::new();
    for (name, sql) in &config.columns {
        let sql = match sql {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match streamflow_expr::compile(&sql, &sequence_schema()) {
            Ok(e) => {
                fields.push(Field::new(name, e.data_type().clone(), e.nullable()));
                exprs.push(e);
            }
            Err(e) => d.push(ctx.at(&format!("columns.{name}")), e.message),
        }
    }
    if config.columns.is_empty() {
        d.push(ctx.at("columns"), "declare at least one column");
    }
    if config.batch_size == 0 {
        d.push(ctx.at("batch_size"), "must be greater than 0");
    }
    if ctx.mode == Mode::Job && config.count.is_none() {
        d.push(
            ctx.at("count"),
            "required in job mode (the source must end)",
        );
    }
    d.into_result(())?;
    Ok(Arc::new(GeneratorFactory {
        schema: Arc::new(Schema::new(fields)),
        exprs: Arc::new(exprs),
        config,
    }))
}

struct GeneratorFactory {
    schema: SchemaRef,
    exprs: Arc<Vec<CompiledExpr>>,
    config: GeneratorConfig,
}

impl SourceFactory for GeneratorFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn bounded(&self) -> bool {
        self.config.count.is_some()
    }
    fn create(&self, instance: usize, parallelism: usize) -> Result<Box<dyn Source>> {
        let c = &self.config;
        Ok(Box::new(GeneratorSource {
            schema: Arc::clone(&self.schema),
            exprs: Arc::clone(&self.exprs),
            start: c.start,
            cursor: ChunkCursor::new(instance, parallelism, c.batch_size, c.count, c.rate),
        }))
    }
}

struct GeneratorSource {
    schema: SchemaRef,
    exprs: Arc<Vec<CompiledExpr>>,
    start: i64,
    cursor: ChunkCursor,
}

#[async_trait]
impl Source for GeneratorSource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        let Some(range) = self.cursor.next().await else {
            return Ok(None);
        };
        let start = self.start;
        let seq = Int64Array::from_iter_values(range.map(|n| start + n as i64));
        let input = RecordBatch::try_new(sequence_schema(), vec![Arc::new(seq)])
            .map_err(|e| Error::arrow("generator", e))?;
        let columns = self
            .exprs
            .iter()
            .map(|e| {
                e.evaluate(&input).map_err(|m| Error::Expression {
                    expr: e.sql().to_string(),
                    message: m.message,
                })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| Error::arrow("generator", e))?;
        Ok(Some(SourceBatch {
            data: Some(batch),
            dead_letters: Vec::new(),
            splits: None,
        }))
    }

    fn offset(&mut self, _checkpoint: u64) -> SourceOffset {
        self.cursor.offset()
    }

    async fn seek(&mut self, offset: &SourceOffset) -> Result<()> {
        self.cursor.seek(offset)
    }

    fn size_hint(&self) -> Option<u64> {
        self.cursor.expected()
    }
}
