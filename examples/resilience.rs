//! A `process` stage from the Rust API: a processor written in Rust,
//! registered by name, called under retry and timeout nodes. Records it
//! cannot handle go to the dead-letter output with the failing node's path.
//!
//! Run with `cargo run --example resilience`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Array, Int64Array};
use arrow::record_batch::RecordBatch;
use streamflow::process::{Components, Processed, Processor};
use streamflow::{Pipeline, PipelineBuilder};

/// Keeps records whose `id` is not a multiple of 7; the first call on any
/// batch fails as a whole (a flaky dependency the retry node absorbs).
struct Picky {
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Processor for Picky {
    async fn process(&self, batch: RecordBatch) -> Result<Processed, String> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err("warming up".into());
        }
        let ids = batch
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or("no id column")?;
        let failed: Vec<(usize, String)> = (0..ids.len())
            .filter(|&r| ids.value(r) % 7 == 0)
            .map(|r| (r, format!("{} is a multiple of 7", ids.value(r))))
            .collect();
        let keep = arrow::array::BooleanArray::from(
            (0..ids.len())
                .map(|r| ids.value(r) % 7 != 0)
                .collect::<Vec<_>>(),
        );
        let output =
            arrow::compute::filter_record_batch(&batch, &keep).map_err(|e| e.to_string())?;
        Ok(Processed { output, failed })
    }
}

#[tokio::main]
/// Registers the processor, builds and runs the pipeline, prints the summary.
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let components = Components::new();
    components.processor(
        "picky",
        Arc::new(Picky {
            calls: AtomicUsize::new(0),
        }),
    );
    let spec = PipelineBuilder::new("resilience-example")
        .source(
            "numbers",
            "generator",
            serde_json::json!({"count": 100, "columns": {"id": "i"}}),
        )
        .process(
            "checked",
            serde_json::json!({
                "type": "retry", "attempts": 2, "backoff": "10ms",
                "child": {"type": "timeout", "duration": "1s", "child": {"ref": "picky"}}
            }),
        )
        .dlq("rejected")
        .sink("out", "blackhole", serde_json::json!({}))
        .dead_letter_sink("rejected", "stdout", serde_json::json!({"format": "jsonl"}))
        .build();
    let pipeline = Pipeline::from_spec_with(&spec, &components).map_err(|d| d.to_string())?;
    let summary = pipeline.start().await?.wait().await?;
    eprintln!("{summary}");
    let checked = summary
        .stages
        .iter()
        .find(|s| s.name == "checked")
        .ok_or("no summary for the process stage")?;
    if (checked.records_out, checked.dead_letters) != (85, 15) {
        return Err(format!("expected 85 records and 15 dead letters, got {checked:?}").into());
    }
    Ok(())
}
