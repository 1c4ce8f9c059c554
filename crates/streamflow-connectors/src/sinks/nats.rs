//! `nats`: publishes one JetStream message per row to `subject`.
//!
//! Every message carries a `Nats-Msg-Id` made of the run (kept across
//! restores), the instance and the row's number in the run; the publish
//! acknowledgements are awaited before a checkpoint completes. After a
//! crash the rows after the restored checkpoint are published again under
//! the same ids, and the server's de-duplication window (`duplicate_window`
//! of the stream, 2 minutes by default) drops them: exactly-once when the
//! replay reproduces the rows in the same order and the restart comes within
//! the window. `create: true` creates the stream (subjects: the subject) if
//! it is missing.
//!
//! ```yaml
//! - {name: out, type: nats, input: totals, config: {url: "nats://127.0.0.1:4222", stream: TOTALS, subject: totals, create: true}}
//! ```

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_nats::jetstream::context::PublishAckFuture;
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Sink};

use super::replay_ids::ReplayIds;
use crate::message::{MessageEncoder, MessageFormat};
use crate::registry::{SinkContext, SinkFactory};
use crate::sources::nats::NatsEndpoint;

/// Settings of a `nats` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// The server.
    #[serde(flatten)]
    pub endpoint: NatsEndpoint,
    /// The subject published to.
    pub subject: String,
    /// The stream (checked, or created with `create`).
    pub stream: Option<String>,
    /// Create the stream if it is missing.
    #[serde(default)]
    pub create: bool,
    /// Message format.
    #[serde(default)]
    pub format: MessageFormat,
    /// `avro`: `{subject}` the rows' schema is registered under (default
    /// `<topic>-value`).
    pub schema: Option<serde_json::Map<String, serde_json::Value>>,
    /// Schema registry of `avro` (default: `STREAMFLOW_REGISTRY`, or the
    /// server the flow runs in).
    pub registry: Option<String>,
}

/// Publish acknowledgements awaited at once.
const IN_FLIGHT: usize = 4096;

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let config: NatsSinkConfig = ctx.config()?;
    config.endpoint.check(|k| ctx.at(k))?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    if config.create && config.stream.is_none() {
        return Err(fail("stream", "create needs the stream's name".into()));
    }
    let encoder = MessageEncoder::new(&crate::message::EncoderSource {
        format: config.format,
        input: &ctx.input,
        declared: config.schema.as_ref(),
        registry: config.registry.as_deref(),
        default_subject: format!("{}-value", config.subject),
    })
    .map_err(|m| fail("format", m))?;
    Ok(Arc::new(NatsSinkFactory {
        name: ctx.name.to_string(),
        config: Arc::new(config),
        encoder,
    }))
}

struct NatsSinkFactory {
    config: Arc<NatsSinkConfig>,
    encoder: MessageEncoder,
    name: String,
}

impl SinkFactory for NatsSinkFactory {
    fn create(&self, instance: usize) -> Result<Box<dyn Sink>> {
        Ok(Box::new(NatsSink {
            config: Arc::clone(&self.config),
            encoder: self.encoder.clone(),
            js: None,
            ids: ReplayIds::new(&self.name, instance),
            in_flight: Vec::new(),
        }))
    }
}

struct NatsSink {
    config: Arc<NatsSinkConfig>,
    encoder: MessageEncoder,
    js: Option<async_nats::jetstream::Context>,
    /// The `Nats-Msg-Id` of each message.
    ids: ReplayIds,
    in_flight: Vec<PublishAckFuture>,
}

impl NatsSink {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Other(format!(
            "nats sink (subject {}): {what}: {e}",
            self.config.subject
        ))
    }

    async fn settle(&mut self) -> Result<()> {
        for ack in std::mem::take(&mut self.in_flight) {
            ack.await.map_err(|e| self.err("publishing", e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for NatsSink {
    async fn open(&mut self, checkpointing: Option<Vec<serde_json::Value>>) -> Result<()> {
        let js = self.config.endpoint.connect().await?;
        if let Some(stream) = &self.config.stream {
            let found = js.get_stream(stream).await;
            if found.is_err() {
                if !self.config.create {
                    return Err(
                        self.err("opening the stream", format!("stream {stream} not found"))
                    );
                }
                js.get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![self.config.subject.clone()],
                    ..Default::default()
                })
                .await
                .map_err(|e| self.err("creating the stream", e))?;
            }
        }
        self.js = Some(js);
        self.ids.restore(checkpointing.as_deref());
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let messages = self.encoder.encode(&batch).await?;
        let Some(js) = self.js.clone() else {
            return Err(self.err("publishing", "not connected"));
        };
        for m in messages {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", self.ids.next_range(1).as_str());
            let ack = js
                .publish_with_headers(self.config.subject.clone(), headers, m.into())
                .await
                .map_err(|e| self.err("publishing", e))?;
            self.in_flight.push(ack);
            if self.in_flight.len() >= IN_FLIGHT {
                self.settle().await?;
            }
        }
        Ok(())
    }

    async fn pre_commit(&mut self, _checkpoint: u64) -> Result<Vec<serde_json::Value>> {
        self.settle().await?;
        Ok(vec![self.ids.checkpoint()])
    }

    async fn finish(&mut self) -> Result<()> {
        self.settle().await
    }
}
