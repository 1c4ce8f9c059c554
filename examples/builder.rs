//! The fluent Rust API: the same pipeline as a flow file, built in code.
//!
//! Run with `cargo run --example builder`.

use streamflow::{Pipeline, PipelineBuilder};

#[tokio::main]
/// Builds, validates and runs the pipeline, printing its output and summary.
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = PipelineBuilder::new("builder-example")
        .source(
            "bids",
            "nexmark",
            serde_json::json!({"events": 50_000, "seed": 1, "table": "bid"}),
        )
        .filter("expensive", "price > 50000000")
        .select(
            "euros",
            &[("auction", "auction"), ("price_eur", "price * 0.908 / 100")],
        )
        .sink("out", "stdout", serde_json::json!({"format": "jsonl"}))
        .build();
    let pipeline = Pipeline::from_spec(&spec).map_err(|d| d.to_string())?;
    let summary = pipeline.start().await?.wait().await?;
    eprintln!("{summary}");
    Ok(())
}
