//! StreamFlow sources and sinks, one module per system, and the registry
//! mapping flow-file `type:` names to them ([`registry`]).

pub mod log;
pub mod message;
pub mod registry;
pub mod schema_registry;
mod server;
pub mod sinks;
pub mod sources;

pub use registry::{
    SinkContext, SinkFactory, SinkKind, SourceContext, SourceFactory, SourceKind, find_sink,
    find_source, sink_kinds, source_kinds,
};
