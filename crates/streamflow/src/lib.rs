//! StreamFlow: stream processing on Arrow record batches.
//!
//! Declare a pipeline in a flow file (`streamflow run pipeline.yaml`) or in
//! Rust with [`PipelineBuilder`]; both are validated the same way and run by
//! the same [`Pipeline`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use streamflow::{Pipeline, PipelineBuilder};
//! let spec = PipelineBuilder::new("demo")
//!     .source("events", "nexmark", serde_json::json!({"events": 100_000, "table": "bid"}))
//!     .filter("expensive", "price > 1000000")
//!     .sink("out", "stdout", serde_json::json!({}))
//!     .build();
//! let summary = Pipeline::from_spec(&spec)?.start().await?.wait().await?;
//! println!("{summary}");
//! # Ok(()) }
//! ```

pub use streamflow_core::{Diagnostic, Diagnostics, Error};
pub use streamflow_dsl::{FlowSpec, Mode, PipelineBuilder};
pub use streamflow_runtime::{Pipeline, RecoveryOptions, RunHandle, RunSummary};

/// The components `process` stages reference, and the traits to write them.
pub mod process {
    pub use streamflow_operators::process::{
        Components, Condition, ErrorHandler, NodeError, Outcome, Predicate, Processed, Processor,
        Reducer,
    };
}

pub mod bench;
pub mod k8s;
