//! Core vocabulary of StreamFlow: the [`Message`]s that travel on edges, the
//! [`Operator`], [`Source`] and [`Sink`] traits every component implements,
//! dead letters, diagnostics and errors.
//!
//! This crate performs no I/O; connectors, operators and the runtime build on it.

pub mod changelog;
pub mod clock;
pub mod dead_letter;
pub mod diagnostic;
pub mod error;
pub mod message;
pub mod operator;
pub mod sink;
pub mod snapshot;
pub mod source;

pub use clock::processing_time_ms;
pub use dead_letter::{DeadLetter, dead_letter_batch, dead_letter_schema};
pub use diagnostic::{Diagnostic, Diagnostics};
pub use error::{Error, Result};
pub use message::{CheckpointBarrier, Message, Watermark};
pub use operator::{Operator, Output};
pub use sink::Sink;
pub use snapshot::OperatorSnapshot;
pub use source::{Source, SourceBatch, SourceOffset};

/// Re-export of the Arrow version every StreamFlow crate is built on.
pub use arrow;
