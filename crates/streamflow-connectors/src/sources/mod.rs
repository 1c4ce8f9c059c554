//! Sources, one module per system.

pub mod file;
pub mod generator;
pub mod nexmark;
pub mod stdin;

pub mod decode;
mod json;
mod sequence;
