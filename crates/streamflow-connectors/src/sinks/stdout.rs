//! `stdout`: prints records as JSON lines (default), CSV or a table.
//! At-least-once: output printed before a crash may be printed again.
//!
//! ```yaml
//! - {name: out, type: stdout, input: q1, config: {format: table}}
//! ```

use std::io::{BufWriter, Stdout};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::{Diagnostic, Diagnostics, Result, Sink};

use super::encode::{Encoder, Encoding};
use crate::registry::{SinkContext, SinkFactory};

/// Settings of a `stdout` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StdoutConfig {
    /// `jsonl`, `csv` or `table`.
    #[serde(default)]
    format: Encoding,
}

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let config: StdoutConfig = ctx.config()?;
    if config.format == Encoding::Parquet {
        return Err(Diagnostic::new(
            ctx.at("format"),
            "parquet cannot be printed; use jsonl, csv or table",
        )
        .into());
    }
    Ok(Arc::new(StdoutFactory {
        format: config.format,
        schema: Arc::clone(&ctx.input),
    }))
}

struct StdoutFactory {
    format: Encoding,
    schema: SchemaRef,
}

impl SinkFactory for StdoutFactory {
    fn create(&self, _instance: usize) -> Result<Box<dyn Sink>> {
        let out = BufWriter::with_capacity(1 << 16, std::io::stdout());
        Ok(Box::new(StdoutSink {
            encoder: Some(Encoder::new(self.format, &self.schema, out)?),
        }))
    }
}

struct StdoutSink {
    encoder: Option<Encoder<BufWriter<Stdout>>>,
}

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if let Some(e) = self.encoder.as_mut() {
            e.write(&batch)?;
            e.flush()?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if let Some(e) = self.encoder.take() {
            use std::io::Write;
            let mut w = e.close()?;
            w.flush()
                .map_err(|e| streamflow_core::Error::io("writing to stdout", e))?;
        }
        Ok(())
    }
}
