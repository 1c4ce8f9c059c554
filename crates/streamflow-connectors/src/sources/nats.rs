//! `nats`: reads a NATS JetStream stream through a durable pull consumer.
//!
//! One instance reads the consumer (the others end at once), in stream
//! order. Messages are acknowledged (`AckPolicy::All`: the last one covered
//! acknowledges those before it) only when the checkpoint covering them
//! completes. A restored source re-creates its consumer at the message after
//! the checkpointed stream sequence, so it replays exactly what the
//! checkpoint does not cover: exactly-once with checkpoints, at-least-once
//! without. Rows carry `_subject`, `_sequence` (stream sequence) and
//! `_timestamp` (when the server stored the message).
//!
//! ```yaml
//! - name: bids
//!   type: nats
//!   config: {url: "nats://127.0.0.1:4222", stream: BIDS, subject: bids.>, schema: {auction: int64, price: int64}}
//! ```

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Source, SourceBatch, SourceOffset};

use crate::message::{MessageDecoder, MessageFormat, Start};
use crate::registry::{SourceContext, SourceFactory};
use streamflow_tls::TlsOptions;

/// How to reach a NATS server (shared by the source and the sink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsEndpoint {
    /// `nats://host:port`.
    pub url: String,
    /// User name, with `password_env`.
    pub user: Option<String>,
    /// Environment variable holding the password (never printed).
    pub password_env: Option<String>,
    /// Environment variable holding a token (never printed).
    pub token_env: Option<String>,
    /// TLS settings (implied by `tls://`).
    pub tls: Option<TlsOptions>,
}

impl NatsEndpoint {
    /// The server's address for messages: the url without credentials.
    pub(crate) fn address(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                format!("{scheme}://{host}")
            }
            None => self
                .url
                .rsplit_once('@')
                .map_or(self.url.clone(), |(_, h)| h.to_string()),
        }
    }

    /// The TLS of the connection, if any.
    pub(crate) fn tls(&self) -> Option<TlsOptions> {
        crate::server::tls(self.tls.as_ref(), self.url.starts_with("tls://"))
    }

    /// Validation of the TLS settings, at `at(key)`.
    pub(crate) fn check(
        &self,
        at: impl Fn(&str) -> String,
    ) -> std::result::Result<(), Diagnostics> {
        crate::server::check_tls(at, self.tls().as_ref())
    }

    /// A JetStream context; retried with backoff for about 10 s.
    pub(crate) async fn connect(&self) -> Result<async_nats::jetstream::Context> {
        let env = |var: &str| {
            std::env::var(var)
                .map_err(|_| Error::Other(format!("environment variable {var} is not set")))
        };
        let user = match (&self.user, &self.password_env) {
            (Some(user), Some(var)) => Some((user.clone(), env(var)?)),
            _ => None,
        };
        let token = self.token_env.as_deref().map(env).transpose()?;
        let tls = self
            .tls()
            .map(|tls| tls.client_config().map_err(|e| Error::Other(e.to_string())))
            .transpose()?;
        let client = crate::server::connect_with_backoff("NATS", &self.address(), || {
            let mut options =
                async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
            if let Some((user, password)) = user.clone() {
                options = options.user_and_password(user, password);
            }
            if let Some(token) = token.clone() {
                options = options.token(token);
            }
            if let Some(tls) = tls.clone() {
                options = options.tls_client_config(tls).require_tls(true);
            }
            options.connect(self.url.as_str())
        })
        .await?;
        Ok(async_nats::jetstream::new(client))
    }
}

/// Settings of a `nats` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// The server.
    #[serde(flatten)]
    pub endpoint: NatsEndpoint,
    /// The JetStream stream.
    pub stream: String,
    /// Only messages of this subject (wildcards allowed).
    pub subject: Option<String>,
    /// Durable consumer name (default `streamflow-<source name>`).
    pub consumer: Option<String>,
    /// Message format.
    #[serde(default)]
    pub format: MessageFormat,
    /// Declared schema (json, csv), column → type; json is inferred from
    /// the stream's first 200 messages when absent.
    pub schema: Option<Map<String, Value>>,
    /// Schema registry of `avro` messages (default: `STREAMFLOW_REGISTRY`,
    /// or the server the flow runs in).
    pub registry: Option<String>,
    /// Where a new consumer starts.
    #[serde(default)]
    pub start: Start,
    /// Read the messages present at start, then end.
    #[serde(default)]
    pub bounded: bool,
    /// Messages per fetch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_batch() -> usize {
    1000
}

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: NatsSourceConfig = ctx.config()?;
    config.endpoint.check(|k| ctx.at(k))?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    if config.batch_size == 0 {
        return Err(fail("batch_size", "must be positive".into()));
    }
    let values = crate::message::value_schema(
        &crate::message::ValueSource {
            format: config.format,
            declared: config.schema.as_ref(),
            registry: config.registry.as_deref(),
            default_subject: format!("{}-value", config.stream),
            at: ctx.at("schema"),
        },
        || infer(&config).map_err(|m| fail("stream", m)),
    )?;
    let schema = values.with_columns([
        Field::new("_subject", DataType::Utf8, false),
        Field::new("_sequence", DataType::Int64, false),
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]);
    Ok(Arc::new(NatsSourceFactory {
        consumer: config
            .consumer
            .clone()
            .unwrap_or_else(|| format!("streamflow-{}", ctx.name)),
        values,
        schema,
        config: Arc::new(config),
    }))
}

/// Messages sampled to infer a JSON schema.
const INFER_MESSAGES: u64 = 200;

/// The JSON schema of the stream's first messages.
fn infer(config: &NatsSourceConfig) -> std::result::Result<Schema, String> {
    let (endpoint, name) = (config.endpoint.clone(), config.stream.clone());
    let sample = crate::server::at_plan_time(move || async move {
        let js = endpoint.connect().await.map_err(|e| e.to_string())?;
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|e| format!("opening stream {name}: {e}"))?;
        let state = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .clone();
        let mut sample = Vec::new();
        let last = state
            .last_sequence
            .min(state.first_sequence + INFER_MESSAGES - 1);
        for seq in state.first_sequence..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                sample.push(m.payload);
            }
        }
        Ok::<_, String>(sample)
    })?;
    crate::message::infer_json(sample.iter().map(|m| m.as_ref())).unwrap_or_else(|| {
        Err(format!(
            "stream '{}' has no messages to infer a schema from; declare `schema`",
            config.stream
        ))
    })
}

struct NatsSourceFactory {
    config: Arc<NatsSourceConfig>,
    consumer: String,
    values: crate::message::Values,
    schema: SchemaRef,
}

impl SourceFactory for NatsSourceFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn bounded(&self) -> bool {
        self.config.bounded
    }

    fn create(&self, instance: usize, _parallelism: usize) -> Result<Box<dyn Source>> {
        Ok(Box::new(NatsSource {
            config: Arc::clone(&self.config),
            name: self.consumer.clone(),
            decoder: MessageDecoder::new(self.config.format, &self.values),
            schema: Arc::clone(&self.schema),
            consumer: None,
            checkpointing: false,
            last: None,
            unacked: None,
            barriers: Vec::new(),
            end: None,
            done: instance > 0,
        }))
    }
}

struct NatsSource {
    config: Arc<NatsSourceConfig>,
    /// Durable consumer name.
    name: String,
    decoder: MessageDecoder,
    schema: SchemaRef,
    consumer: Option<PullConsumer>,
    checkpointing: bool,
    /// Stream sequence of the last message handed on.
    last: Option<u64>,
    /// The last message handed on and not yet acknowledged.
    unacked: Option<async_nats::jetstream::Message>,
    /// Checkpoints not yet complete: id, last sequence covered, and the
    /// message acknowledging it.
    barriers: Vec<(u64, Option<u64>, Option<async_nats::jetstream::Message>)>,
    /// Bounded: the stream's last sequence at start.
    end: Option<u64>,
    done: bool,
}

impl NatsSource {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Other(format!(
            "nats source (stream {}): {what}: {e}",
            self.config.stream
        ))
    }

    /// (Re)creates the durable consumer; `from`: the first stream sequence to deliver.
    async fn consumer(&mut self, from: Option<u64>) -> Result<()> {
        let js = self.config.endpoint.connect().await?;
        let mut stream = js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| self.err("opening the stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| self.err("reading the stream", e))?;
        if self.config.bounded {
            self.end = Some(info.state.last_sequence);
        }
        let deliver_policy = match (from, self.config.start) {
            (Some(start_sequence), _) => {
                // Replays from the checkpointed position: a fresh consumer.
                let _ = stream.delete_consumer(&self.name).await;
                DeliverPolicy::ByStartSequence { start_sequence }
            }
            (None, Start::Earliest) => DeliverPolicy::All,
            (None, Start::Latest) => DeliverPolicy::New,
        };
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &self.name,
                pull::Config {
                    durable_name: Some(self.name.clone()),
                    ack_policy: AckPolicy::All,
                    deliver_policy,
                    filter_subject: self.config.subject.clone().unwrap_or_default(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.err("creating the consumer", e))?;
        self.consumer = Some(consumer);
        Ok(())
    }
}

/// Acknowledges `message` (and, by `AckPolicy::All`, those before it).
async fn ack(message: Option<async_nats::jetstream::Message>) -> Result<()> {
    match message {
        Some(m) => m
            .ack()
            .await
            .map_err(|e| Error::Other(format!("nats source: acknowledging: {e}"))),
        None => Ok(()),
    }
}

#[async_trait]
impl Source for NatsSource {
    async fn open(&mut self, checkpointing: bool) -> Result<()> {
        self.checkpointing = checkpointing;
        if self.done {
            return Ok(());
        }
        self.consumer(None).await
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        if self.done {
            return Ok(None);
        }
        if !self.checkpointing {
            let handed_on = self.unacked.take();
            ack(handed_on).await?;
        }
        if let (Some(end), Some(last)) = (self.end, self.last)
            && last >= end
        {
            self.done = true;
            return Ok(None);
        }
        if self.end == Some(0) {
            self.done = true;
            return Ok(None);
        }
        let Some(consumer) = self.consumer.as_ref() else {
            return Err(self.err("reading", "no consumer"));
        };
        let mut batch = consumer
            .fetch()
            .max_messages(self.config.batch_size)
            .expires(Duration::from_millis(200))
            .messages()
            .await
            .map_err(|e| self.err("fetching", e))?;
        let mut messages = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| self.err("fetching", e))?;
            let Ok(info) = m.info() else { continue };
            let seq = info.stream_sequence;
            // A redelivery of a message already handed on in this run.
            if self.last.is_some_and(|l| seq <= l) {
                continue;
            }
            let millis = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
            let subject = m.subject.to_string();
            messages.push((seq, millis, subject, m));
        }
        let Some((last_seq, ..)) = messages.last() else {
            // Bounded and nothing left for this consumer: the end.
            let caught_up = match (self.config.bounded, self.consumer.as_mut()) {
                (true, Some(consumer)) => match consumer.info().await {
                    Ok(info) => info.num_pending == 0,
                    Err(e) => {
                        return Err(Error::Other(format!(
                            "nats source: reading the consumer: {e}"
                        )));
                    }
                },
                _ => false,
            };
            if caught_up {
                self.done = true;
                return Ok(None);
            }
            return Ok(Some(SourceBatch::default()));
        };
        self.last = Some(*last_seq);
        let stream = self.config.stream.clone();
        let payloads: Vec<&[u8]> = messages.iter().map(|(.., m)| m.payload.as_ref()).collect();
        let decoded = self
            .decoder
            .decode(&payloads, |i| format!("{stream}/{}", messages[i].0))
            .await?;
        let rows = &decoded.rows;
        let data = decoded
            .batch
            .as_ref()
            .map(|values| {
                crate::message::with_metadata(
                    &self.schema,
                    values,
                    [
                        Arc::new(StringArray::from_iter_values(
                            rows.iter().map(|&i| messages[i].2.as_str()),
                        )) as ArrayRef,
                        Arc::new(Int64Array::from_iter_values(
                            rows.iter().map(|&i| messages[i].0 as i64),
                        )),
                        Arc::new(TimestampMillisecondArray::from_iter_values(
                            rows.iter().map(|&i| messages[i].1),
                        )),
                    ],
                )
            })
            .transpose()?;
        self.unacked = messages.pop().map(|(.., m)| m);
        Ok(Some(SourceBatch {
            data,
            dead_letters: decoded.dead_letters,
            splits: None,
        }))
    }

    fn offset(&mut self, checkpoint: u64) -> SourceOffset {
        self.barriers
            .push((checkpoint, self.last, self.unacked.take()));
        SourceOffset::Broker(serde_json::json!({ "sequence": self.last }))
    }

    async fn seek(&mut self, offset: &SourceOffset) -> Result<()> {
        let last = match offset {
            SourceOffset::None => return Ok(()),
            SourceOffset::Broker(v) => v.get("sequence").and_then(Value::as_u64),
            other => {
                return Err(Error::Other(format!(
                    "a nats source cannot resume from {other:?}"
                )));
            }
        };
        if self.done {
            return Ok(());
        }
        self.last = last;
        self.consumer(Some(last.map_or(1, |l| l + 1))).await
    }

    async fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<()> {
        // The newest message covered acknowledges all before it.
        let mut newest = None;
        self.barriers.retain_mut(|(id, _, m)| {
            if *id <= checkpoint {
                if m.is_some() {
                    newest = m.take();
                }
                false
            } else {
                true
            }
        });
        ack(newest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_messages_carry_no_credentials() {
        let at = |url: &str| {
            NatsEndpoint {
                url: url.into(),
                user: None,
                password_env: None,
                token_env: None,
                tls: None,
            }
            .address()
        };
        assert_eq!(
            at("nats://alice:s3cret@10.0.0.1:4222"),
            "nats://10.0.0.1:4222"
        );
        assert_eq!(at("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(at("tok@host:4222"), "host:4222");
    }
}
