//! Sinks, one module per system.

pub mod blackhole;
pub mod file;
pub mod stdout;

mod encode;
