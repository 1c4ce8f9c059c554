//! The StreamFlow runtime: plans a validated flow against its schemas and
//! runs it as one task per operator instance, connected by bounded channels.
//!
//! - [`plan`] resolves every schema, expression and component, collecting
//!   all errors with their flow-file paths;
//! - [`exchange`] moves batches between instances (forward, round-robin or
//!   key-hash partitioning over key groups);
//! - [`input`] merges an instance's input channels: minimum watermark,
//!   aligned barriers, end of stream;
//! - [`checkpoint`] coordinates checkpoints (barriers, acknowledgements,
//!   two-phase sink commits) and chooses what to restore;
//! - [`transport`] carries the channels whose two ends run in different
//!   processes, so that one pipeline can span several workers;
//! - [`engine`] spawns the tasks, propagates failures and shutdown, and
//!   reports per-stage metrics.

pub mod checkpoint;
pub mod engine;
pub mod exchange;
pub mod input;
pub mod metrics;
pub mod plan;
pub mod resources;
mod tasks;
pub mod transport;

pub use checkpoint::{CheckpointCommand, CheckpointCoordinator, CheckpointReport, RecoveryOptions};
pub use engine::{InputFill, Pipeline, RunHandle, RunSummary, StageSummary};
pub use metrics::{CheckpointMetrics, EdgeKind, InputQueues, LastCheckpoint, NodeMetrics};
pub use plan::{PhysicalPlan, Planned, PlannedNode, plan, validate_spec, validate_spec_with};
pub use transport::{Bridge, ChannelId, Placement, Transport};
