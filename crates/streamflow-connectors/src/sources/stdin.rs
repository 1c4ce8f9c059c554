//! `stdin`: JSON lines or CSV from standard input, in a declared schema.
//!
//! ```yaml
//! - {name: in, type: stdin, config: {format: jsonl, schema: {id: int64, name: string}}}
//! ```

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::{Diagnostics, Error, Result, Source, SourceBatch};

use super::decode::{LineDecoder, TextFormat, TextReader};
use super::file::declared_schema;
use crate::registry::{SourceContext, SourceFactory};

/// Settings of a `stdin` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StdinConfig {
    /// `jsonl` (default) or `csv`.
    #[serde(default)]
    format: TextFormat,
    /// Column → type (standard input cannot be sampled ahead, so it is required).
    schema: Map<String, Value>,
    /// CSV: whether the first line is a header.
    #[serde(default)]
    header: bool,
}

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: StdinConfig = ctx.config()?;
    let schema = Arc::new(declared_schema(&config.schema, &ctx.at("schema"))?);
    Ok(Arc::new(StdinFactory { schema, config }))
}

struct StdinFactory {
    schema: SchemaRef,
    config: StdinConfig,
}

impl SourceFactory for StdinFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn bounded(&self) -> bool {
        true
    }
    fn create(&self, instance: usize, _parallelism: usize) -> Result<Box<dyn Source>> {
        if instance > 0 {
            return Err(Error::Other(
                "stdin can only be read by one instance (parallelism: 1)".into(),
            ));
        }
        let decoder = LineDecoder::new(Arc::clone(&self.schema), self.config.format, b',');
        Ok(Box::new(StdinSource {
            reader: TextReader::new(
                tokio::io::stdin(),
                "<stdin>".into(),
                decoder,
                self.config.header,
            )
            .eager(),
        }))
    }
}

struct StdinSource {
    reader: TextReader<tokio::io::Stdin>,
}

#[async_trait]
impl Source for StdinSource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        self.reader.next().await
    }
}
