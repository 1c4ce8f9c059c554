//! Sources, one module per system.

pub mod file;
pub mod generator;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod log;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "nats")]
pub mod nats;
pub mod nexmark;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
pub mod stdin;

mod acknowledgements;
pub mod decode;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod incremental;
mod json;
mod sequence;
