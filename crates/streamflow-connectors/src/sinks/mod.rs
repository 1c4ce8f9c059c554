//! Sinks, one module per system.

pub mod blackhole;
pub mod file;
#[cfg(feature = "redis")]
pub mod redis;
pub mod stdout;

mod encode;
