//! `process`: runs each record through a declarative node tree of
//! resilience patterns (Flume/pipz semantics) over named processors.
//!
//! ```yaml
//! - name: enrich
//!   type: process
//!   input: bids
//!   unit: record            # each record is one call, as in Flume (default); batch: one call per batch
//!   concurrency: 16         # records in flight, unit: record (default 16)
//!   dlq: failed             # failing records, with the node path and error
//!   processors:             # named trees, used with `ref:` (after these, the registry)
//!     lookup: {type: http, url: "http://127.0.0.1:8080/owner/{channel}", response: {owner: string}}
//!   node:
//!     type: retry
//!     attempts: 3
//!     backoff: 100ms
//!     child: {type: timeout, duration: 2s, child: {ref: lookup}}
//! ```
//!
//! Node types: `sequence`, `concurrent` (optional `reducer`), `race`,
//! `contest` (`predicate`), `fallback` (2 children), `retry` (`attempts`,
//! `backoff`), `timeout` (`duration`), `filter` (`predicate`, `then`,
//! `else`), `switch` (`condition`, `routes`, `default`), `circuit-breaker`
//! (`failure_threshold`, `recovery_timeout`), `rate-limit`
//! (`requests_per_second`, `burst_size`, `mode: wait|drop`), `handle`
//! (`error_handler`), `scaffold`, `worker-pool` (`workers`), stream nodes
//! (`stream: <channel>`, `stream_timeout`, then `child`/`children`), and
//! the processors `sql` (`map`), `http` and `noop`. Predicates and
//! conditions are registered names or SQL expressions. See [`exec`] for
//! the semantics and [`node`] for the validation rules.
//!
//! Records fail one by one: a failing record goes to the stage's `dlq`
//! with the path of the failing node and the error; the rest continue.

use std::sync::Arc;

use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use serde_json::{Map, Value};
use streamflow_core::{DeadLetter, Diagnostics, Error, Operator, Output, Result};

use crate::row_errors::row_as_json;
use crate::stage::{StageContext, StageFactory};

mod builtin;
pub mod exec;
mod http;
pub mod node;
mod outcome;
mod registry;

pub use outcome::{NodeError, Outcome, Processed};
pub use registry::{Components, Condition, ErrorHandler, Predicate, Processor, Reducer};

/// What one call of the tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Every record on its own (timeouts, breakers, races per record).
    Record,
    /// A whole batch.
    Batch,
}

#[derive(Clone)]
struct ProcessStage {
    name: Arc<str>,
    root: Arc<exec::Node>,
    unit: Unit,
    concurrency: usize,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let event =
        |event: &str| tracing::info!(target: "streamflow::process", event, stage = ctx.name);
    event("validation_started");
    let mut d = Diagnostics::new();
    let s = ctx.settings;
    for key in s.keys() {
        if !["node", "processors", "unit", "concurrency"].contains(&key.as_str()) {
            d.push(
                ctx.at(key),
                format!("a process stage takes no '{key}' (node, processors, unit, concurrency)"),
            );
        }
    }
    let unit = match s.get("unit").and_then(Value::as_str) {
        None | Some("record") => Unit::Record,
        Some("batch") => Unit::Batch,
        Some(other) => {
            d.push(
                ctx.at("unit"),
                format!("'{other}': expected record or batch"),
            );
            Unit::Record
        }
    };
    let concurrency = match s.get("concurrency").map(node::positive_count).transpose() {
        Ok(n) => n.unwrap_or(16),
        Err(e) => {
            d.push(ctx.at("concurrency"), e);
            1
        }
    };
    let empty = Map::new();
    let definitions = match s.get("processors") {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => {
            d.push(ctx.at("processors"), "expected a map of name: node");
            &empty
        }
    };
    let mut builder = node::Builder::new(ctx.components, definitions, ctx.at("processors"));
    let root = match s.get("node") {
        Some(v) => builder.root(v, &ctx.at("node"), &ctx.input_schema()),
        None => {
            d.push(ctx.at("node"), "a process stage requires a node");
            None
        }
    };
    builder.check_unused();
    for (path, message) in builder.errors() {
        d.push(path, message);
    }
    if !d.is_empty() {
        tracing::warn!(target: "streamflow::process", event = "validation_failed", stage = ctx.name, errors = d.len());
        return Err(d);
    }
    event("validation_completed");
    event("build_started");
    let Some(root) = root else {
        tracing::warn!(target: "streamflow::process", event = "build_failed", stage = ctx.name);
        return Err(Diagnostics::from(streamflow_core::Diagnostic::new(
            ctx.at("node"),
            "the node tree could not be built",
        )));
    };
    event("build_completed");
    Ok(Arc::new(ProcessStage {
        name: ctx.name.into(),
        root,
        unit,
        concurrency,
    }))
}

impl StageFactory for ProcessStage {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.root.schema)
    }
    fn create(&self) -> Box<dyn Operator> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl Operator for ProcessStage {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        // (first input row of the call, its outcome), in input order.
        let calls: Vec<(usize, Outcome)> = match self.unit {
            Unit::Batch => vec![(0, self.root.call(batch.clone()).await)],
            Unit::Record => {
                let root = &self.root;
                stream::iter(0..batch.num_rows())
                    .map(|r| {
                        let call = root.call(batch.slice(r, 1));
                        async move { (r, call.await) }
                    })
                    .buffered(self.concurrency)
                    .collect()
                    .await
            }
        };
        let mut outputs = Vec::with_capacity(calls.len());
        for (first, outcome) in calls {
            for (r, e) in &outcome.failed {
                out.dead_letter(DeadLetter {
                    file: None,
                    line: None,
                    payload: Some(row_as_json(&batch.slice(first + r, 1))),
                    error: e.to_string(),
                });
            }
            if outcome.output.num_rows() > 0 {
                outputs.push(
                    outcome::conform(&outcome.output, &self.root.schema)
                        .map_err(|e| Error::Other(format!("{}: {e}", self.name)))?,
                );
            }
        }
        match outputs.len() {
            0 => {}
            1 => out.emit(outputs.remove(0)),
            _ => out.emit(
                concat_batches(&self.root.schema, &outputs)
                    .map_err(|e| Error::arrow(format!("{}: joining results", self.name), e))?,
            ),
        }
        Ok(())
    }
}
