//! StreamFlow operators.
//!
//! Every stage type is one module with the same layout: a config struct (the
//! flow-file reference), a planner that validates it against the input
//! schema, and the runtime operator working on whole Arrow batches. The
//! single table of stage types is [`registry::STAGES`].

pub mod registry;
pub mod stage;

mod add_column;
mod aggregate;
mod dedup;
mod event_time;
mod filter;
mod grouping;
mod join;
mod map;
pub mod process;
mod projection;
mod rename;
mod row_errors;
mod select;
mod snapshot;
mod top_n;
mod union;
mod validate;
pub mod watermark;
mod window;

pub use event_time::{DEFAULT_TIME_COLUMN, EventTimeAssigner};
pub use registry::{StageKind, find_stage, stage_kinds};
pub use stage::{InputRule, StageContext, StageFactory};
