//! StreamFlow flow files: the serde types of a pipeline declaration, parsing
//! YAML/JSON with line and column on syntax errors, `--set` overrides, and
//! the structural validation that turns a declaration into a [`FlowGraph`].
//!
//! Structural validation (names, wiring, cycles, numbers, durations) lives
//! here; schema-dependent checks (expressions, column names) are done by the
//! planner once every schema is known. Both collect all errors at once.

pub mod builder;
pub mod graph;
pub mod parse;
pub mod spec;
pub mod units;

pub use builder::PipelineBuilder;
pub use graph::{CheckpointConfig, FlowGraph, Node, NodeId, Role};
pub use parse::{FileFormat, apply_override, decode_settings, load_file, parse_str, suggest};
pub use spec::{
    CheckpointMode, CheckpointSpec, EpochUnit, EventTimeSpec, FlowSpec, Mode, SinkSpec, SourceSpec,
    StageSpec, WatermarkSpec,
};
pub use units::{ByteSize, HumanDuration, parse_byte_size, parse_duration};

/// Default capacity (in batches) of the bounded queue on every edge.
///
/// With the default batch size of 8192 rows this keeps at most ~130 k rows in
/// flight per edge, enough to absorb bursts while bounding memory.
pub const DEFAULT_QUEUE_CAPACITY: usize = 16;
