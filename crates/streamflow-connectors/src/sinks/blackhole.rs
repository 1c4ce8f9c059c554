//! `blackhole`: counts records and discards them (benchmarks).
//!
//! ```yaml
//! - {name: void, type: blackhole, input: q0}
//! ```

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::{Diagnostics, Result, Sink};

use crate::registry::{SinkContext, SinkFactory};

/// Settings of a `blackhole` sink (none).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlackholeConfig {}

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let _: BlackholeConfig = ctx.config()?;
    Ok(Arc::new(BlackholeFactory {
        name: ctx.name.to_string(),
    }))
}

struct BlackholeFactory {
    name: String,
}

impl SinkFactory for BlackholeFactory {
    fn create(&self, _instance: usize) -> Result<Box<dyn Sink>> {
        Ok(Box::new(Blackhole {
            name: self.name.clone(),
            rows: 0,
        }))
    }
}

struct Blackhole {
    name: String,
    rows: u64,
}

#[async_trait]
impl Sink for Blackhole {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        Ok(())
    }
    async fn finish(&mut self) -> Result<()> {
        tracing::debug!(sink = %self.name, rows = self.rows, "blackhole finished");
        Ok(())
    }
}
