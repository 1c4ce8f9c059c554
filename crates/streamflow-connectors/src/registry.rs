//! The tables of source and sink types.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use streamflow_core::{Diagnostics, Result, Sink, Source};
use streamflow_dsl::Mode;

use crate::{sinks, sources};

/// What a source type needs to validate its config and plan itself.
#[derive(Debug)]
pub struct SourceContext<'a> {
    /// Source name.
    pub name: &'a str,
    /// Path of its `config`, e.g. `sources[0].config`.
    pub path: &'a str,
    /// The `config` mapping.
    pub settings: &'a Map<String, Value>,
    /// Streaming or job mode (job mode requires bounded sources).
    pub mode: Mode,
}

impl SourceContext<'_> {
    /// Decodes `config` into the source's config struct.
    ///
    /// # Errors
    /// Unknown fields and wrong types, with paths.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, Diagnostics> {
        streamflow_dsl::decode_settings(self.settings, self.path)
    }
    /// Path of one config key.
    pub fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }
}

/// A planned source: knows its schema and creates instances.
pub trait SourceFactory: Send + Sync {
    /// Schema of every batch it produces.
    fn schema(&self) -> SchemaRef;
    /// Whether the input ends by itself (required in job mode).
    fn bounded(&self) -> bool;
    /// Instance `instance` of `parallelism`; instances split the input.
    ///
    /// # Errors
    /// When the input cannot be opened.
    fn create(&self, instance: usize, parallelism: usize) -> Result<Box<dyn Source>>;
    /// The same source producing only the columns and nested fields of
    /// `schema` (a pruned copy of [`schema`](Self::schema)), so that it
    /// decodes only what the pipeline reads; `None` when it cannot.
    fn project(&self, _schema: &Schema) -> Option<Arc<dyn SourceFactory>> {
        None
    }
}

/// A source type.
#[derive(Debug, Clone, Copy)]
pub struct SourceKind {
    /// The `type:` value.
    pub name: &'static str,
    /// One line of description.
    pub description: &'static str,
    /// Validates the config and plans the source.
    pub plan: fn(&SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics>,
}

/// What a sink type needs to validate its config and plan itself.
#[derive(Debug)]
pub struct SinkContext<'a> {
    /// Sink name.
    pub name: &'a str,
    /// Path of its `config`.
    pub path: &'a str,
    /// The `config` mapping.
    pub settings: &'a Map<String, Value>,
    /// Schema of the records it receives.
    pub input: SchemaRef,
}

impl SinkContext<'_> {
    /// Decodes `config` into the sink's config struct.
    ///
    /// # Errors
    /// Unknown fields and wrong types, with paths.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, Diagnostics> {
        streamflow_dsl::decode_settings(self.settings, self.path)
    }
    /// Path of one config key.
    pub fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }
}

/// A planned sink: creates instances.
pub trait SinkFactory: Send + Sync {
    /// Instance `instance` of the sink.
    ///
    /// # Errors
    /// When the destination cannot be opened.
    fn create(&self, instance: usize) -> Result<Box<dyn Sink>>;
}

/// A sink type.
#[derive(Debug, Clone, Copy)]
pub struct SinkKind {
    /// The `type:` value.
    pub name: &'static str,
    /// One line of description.
    pub description: &'static str,
    /// Validates the config and plans the sink.
    pub plan: fn(&SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics>,
}

/// Every source type.
pub static SOURCES: &[SourceKind] = &[
    SourceKind {
        name: "nexmark",
        description: "Nexmark auction events (person, auction, bid)",
        plan: sources::nexmark::plan,
    },
    SourceKind {
        name: "generator",
        description: "rows computed from a sequence by SQL expressions",
        plan: sources::generator::plan,
    },
    SourceKind {
        name: "file",
        description: "JSON lines, CSV or Parquet files (path or glob)",
        plan: sources::file::plan,
    },
    SourceKind {
        name: "stdin",
        description: "JSON lines or CSV from standard input",
        plan: sources::stdin::plan,
    },
    SourceKind {
        name: "http",
        description: "a webhook: POSTed JSON rows, answered once a checkpoint covers them",
        plan: sources::http::plan,
    },
    SourceKind {
        name: "log",
        description: "a space of StreamFlow's durable log (local, or a server's)",
        plan: sources::log::plan,
    },
    #[cfg(feature = "mqtt")]
    SourceKind {
        name: "mqtt",
        description: "an MQTT topic filter, persistent session, acknowledged at checkpoints",
        plan: sources::mqtt::plan,
    },
    #[cfg(feature = "kafka")]
    SourceKind {
        name: "kafka",
        description: "a Kafka topic, its partitions dealt to the instances",
        plan: sources::kafka::plan,
    },
    #[cfg(feature = "mysql")]
    SourceKind {
        name: "mysql",
        description: "a MySQL/MariaDB table or query, then its new rows by an incremental column",
        plan: sources::mysql::plan,
    },
    #[cfg(feature = "nats")]
    SourceKind {
        name: "nats",
        description: "a NATS JetStream stream, through a durable pull consumer",
        plan: sources::nats::plan,
    },
    #[cfg(feature = "postgres")]
    SourceKind {
        name: "postgres",
        description: "a PostgreSQL table or query, then its new rows by an incremental column",
        plan: sources::postgres::plan,
    },
    #[cfg(feature = "rabbitmq")]
    SourceKind {
        name: "rabbitmq",
        description: "a RabbitMQ queue, acknowledged at checkpoints, repeats dropped by message id",
        plan: sources::rabbitmq::plan,
    },
    #[cfg(feature = "redis")]
    SourceKind {
        name: "redis",
        description: "a Redis stream, through a consumer group",
        plan: sources::redis::plan,
    },
];

/// Every sink type.
pub static SINKS: &[SinkKind] = &[
    SinkKind {
        name: "stdout",
        description: "print as JSON lines, CSV or a table",
        plan: sinks::stdout::plan,
    },
    SinkKind {
        name: "file",
        description: "JSON lines, CSV or Parquet files, rolling by size",
        plan: sinks::file::plan,
    },
    SinkKind {
        name: "blackhole",
        description: "count and discard (benchmarks)",
        plan: sinks::blackhole::plan,
    },
    SinkKind {
        name: "http",
        description: "batched JSON POST/PUT with retries, backoff and a dlq for refused rows",
        plan: sinks::http::plan,
    },
    SinkKind {
        name: "log",
        description: "append to a space of StreamFlow's durable log (exactly-once with checkpoints)",
        plan: sinks::log::plan,
    },
    #[cfg(feature = "mqtt")]
    SinkKind {
        name: "mqtt",
        description: "publish to MQTT topics (QoS 1, confirmed before each checkpoint)",
        plan: sinks::mqtt::plan,
    },
    #[cfg(feature = "kafka")]
    SinkKind {
        name: "kafka",
        description: "produce to a Kafka topic (one transaction per checkpoint)",
        plan: sinks::kafka::plan,
    },
    #[cfg(feature = "mysql")]
    SinkKind {
        name: "mysql",
        description: "append or upsert into a MySQL/MariaDB table (exactly-once with checkpoints)",
        plan: sinks::mysql::plan,
    },
    #[cfg(feature = "nats")]
    SinkKind {
        name: "nats",
        description: "publish to NATS JetStream (de-duplicated by message id)",
        plan: sinks::nats::plan,
    },
    #[cfg(feature = "postgres")]
    SinkKind {
        name: "postgres",
        description: "append or upsert into a PostgreSQL table (exactly-once with checkpoints)",
        plan: sinks::postgres::plan,
    },
    #[cfg(feature = "rabbitmq")]
    SinkKind {
        name: "rabbitmq",
        description: "publish to a RabbitMQ queue or exchange (confirmed before each checkpoint)",
        plan: sinks::rabbitmq::plan,
    },
    #[cfg(feature = "redis")]
    SinkKind {
        name: "redis",
        description: "append to a Redis stream (exactly-once with checkpoints)",
        plan: sinks::redis::plan,
    },
];

/// All source types.
pub fn source_kinds() -> &'static [SourceKind] {
    SOURCES
}
/// All sink types.
pub fn sink_kinds() -> &'static [SinkKind] {
    SINKS
}
/// The source type called `name`.
pub fn find_source(name: &str) -> Option<&'static SourceKind> {
    SOURCES.iter().find(|k| k.name == name)
}
/// The sink type called `name`.
pub fn find_sink(name: &str) -> Option<&'static SinkKind> {
    SINKS.iter().find(|k| k.name == name)
}
