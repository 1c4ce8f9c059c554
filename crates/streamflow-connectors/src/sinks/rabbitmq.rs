//! `rabbitmq`: publishes one message per row (AMQP 0-9-1) to a `queue`
//! (through the default exchange) or to an `exchange` with a
//! `routing_key` taken from a column or given literally; persistent
//! (delivery mode 2) by default.
//!
//! The channel is in confirm mode and every message is `mandatory`: a
//! checkpoint completes only once the broker confirmed every message
//! published before its barrier. A message the broker refuses (nack, e.g. a
//! full queue with `x-overflow: reject-publish`) is published again after a
//! backoff, up to `retry.max_attempts`, after which the checkpoint — and
//! the run — fails; a message no queue takes (returned as unroutable) fails
//! it at once. At-least-once: a replay after a crash publishes again. Each
//! message carries a `message_id`, from the `message_id` column or else
//! made of the run (kept across restores), the instance and the row's
//! number in the run, so a replay that reproduces the rows after the
//! restored checkpoint repeats their ids and a consumer that
//! de-duplicates by id (the `rabbitmq` source does) drops them.
//!
//! ```yaml
//! - {name: out, type: rabbitmq, input: orders, config: {url: "amqp://127.0.0.1:5672/%2f", queue: orders, declare: true}}
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::StringArray;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind, PublisherConfirm};
use serde::Deserialize;
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Sink};

use super::replay_ids::ReplayIds;
use super::retry::RetryConfig;
use crate::message::{MessageEncoder, MessageFormat};
use crate::registry::{SinkContext, SinkFactory};
use crate::sources::rabbitmq::{RabbitEndpoint, broker_error, declare_queue, missing_hint};

/// Settings of a `rabbitmq` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitSinkConfig {
    /// The broker.
    #[serde(flatten)]
    pub endpoint: RabbitEndpoint,
    /// Publish to this queue (through the default exchange).
    pub queue: Option<String>,
    /// Or publish to this exchange, with `routing_key`.
    pub exchange: Option<String>,
    /// With `exchange`: a column of the input (its value per row), or else
    /// this literal key.
    #[serde(default)]
    pub routing_key: String,
    /// With `exchange` and `declare`: the exchange's type (direct, fanout,
    /// topic, headers).
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Declare the queue or exchange (durable) when it does not exist;
    /// otherwise a missing one is an error.
    #[serde(default)]
    pub declare: bool,
    /// Persistent messages (delivery mode 2), kept across broker restarts.
    #[serde(default = "default_true")]
    pub persistent: bool,
    /// A column holding each message's id (default: ids the sink makes,
    /// repeated by a replay).
    pub message_id: Option<String>,
    /// Retries of messages the broker refused.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Messages awaiting the broker's confirmation at most; publishing
    /// waits beyond that.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Message format.
    #[serde(default)]
    pub format: MessageFormat,
    /// `avro`/`protobuf`: `{subject}` the rows' schema is registered under.
    pub schema: Option<serde_json::Map<String, serde_json::Value>>,
    /// Schema registry of `avro`/`protobuf`.
    pub registry: Option<String>,
}

fn default_exchange_type() -> String {
    "topic".into()
}
fn default_true() -> bool {
    true
}
fn default_in_flight() -> usize {
    10_000
}

/// The exchange kind a `exchange_type` setting names.
fn exchange_kind(name: &str) -> std::result::Result<ExchangeKind, String> {
    match name {
        "direct" => Ok(ExchangeKind::Direct),
        "fanout" => Ok(ExchangeKind::Fanout),
        "topic" => Ok(ExchangeKind::Topic),
        "headers" => Ok(ExchangeKind::Headers),
        other => Err(format!(
            "'{other}' is not an exchange type (direct, fanout, topic, headers)"
        )),
    }
}

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let config: RabbitSinkConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    config.endpoint.check(|k| ctx.at(k))?;
    let target = match (&config.queue, &config.exchange) {
        (Some(q), None) if !q.is_empty() => Target::Queue(q.clone()),
        (None, Some(e)) if !e.is_empty() => Target::Exchange {
            name: e.clone(),
            kind: exchange_kind(&config.exchange_type).map_err(|m| fail("exchange_type", m))?,
            key_column: ctx.input.index_of(&config.routing_key).ok(),
        },
        (Some(_), Some(_)) => {
            return Err(fail(
                "exchange",
                "publish to a queue or to an exchange, not both".into(),
            ));
        }
        _ => {
            return Err(fail(
                "queue",
                "name the queue, or the exchange, messages go to".into(),
            ));
        }
    };
    let id_column = match &config.message_id {
        None => None,
        Some(c) => Some(
            ctx.input
                .index_of(c)
                .map_err(|_| fail("message_id", format!("no column '{c}' in the input")))?,
        ),
    };
    if config.max_in_flight == 0 {
        return Err(fail("max_in_flight", "must be positive".into()));
    }
    if config.retry.max_attempts == 0 {
        return Err(fail("retry.max_attempts", "must be at least 1".into()));
    }
    let encoder = MessageEncoder::new(&crate::message::EncoderSource {
        format: config.format,
        input: &ctx.input,
        declared: config.schema.as_ref(),
        registry: config.registry.as_deref(),
        default_subject: format!("{}-value", target.name()),
    })
    .map_err(|m| fail("format", m))?;
    Ok(Arc::new(RabbitSinkFactory {
        name: ctx.name.to_string(),
        config: Arc::new(config),
        target: Arc::new(target),
        id_column,
        encoder,
    }))
}

/// Where messages go.
#[derive(Debug)]
enum Target {
    Queue(String),
    Exchange {
        name: String,
        kind: ExchangeKind,
        /// The column holding each row's routing key, if one is named.
        key_column: Option<usize>,
    },
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Self::Queue(q) => q,
            Self::Exchange { name, .. } => name,
        }
    }
}

struct RabbitSinkFactory {
    name: String,
    config: Arc<RabbitSinkConfig>,
    target: Arc<Target>,
    id_column: Option<usize>,
    encoder: MessageEncoder,
}

impl SinkFactory for RabbitSinkFactory {
    fn create(&self, instance: usize) -> Result<Box<dyn Sink>> {
        Ok(Box::new(RabbitSink {
            name: format!("streamflow-{}-{instance}", self.name),
            config: Arc::clone(&self.config),
            target: Arc::clone(&self.target),
            id_column: self.id_column,
            encoder: self.encoder.clone(),
            ids: ReplayIds::new(&self.name, instance),
            connection: None,
            channel: None,
            pending: VecDeque::new(),
        }))
    }
}

/// A message published.
struct Message {
    routing_key: ShortString,
    payload: Vec<u8>,
    id: ShortString,
    /// Attempts so far, this one included.
    attempt: u32,
}

/// A message awaiting the broker's confirmation.
struct Pending {
    message: Message,
    confirm: PublisherConfirm,
}

struct RabbitSink {
    name: String,
    config: Arc<RabbitSinkConfig>,
    target: Arc<Target>,
    id_column: Option<usize>,
    encoder: MessageEncoder,
    ids: ReplayIds,
    connection: Option<Connection>,
    channel: Option<Channel>,
    /// Published, oldest first.
    pending: VecDeque<Pending>,
}

impl RabbitSink {
    fn exchange(&self) -> &str {
        match &*self.target {
            Target::Queue(_) => "",
            Target::Exchange { name, .. } => name,
        }
    }

    /// Checks (or declares) the queue or exchange.
    async fn declare(&self, channel: &Channel) -> Result<()> {
        let declare = self.config.declare;
        match &*self.target {
            Target::Queue(queue) => {
                declare_queue(channel, queue, declare).await?;
            }
            Target::Exchange { name, kind, .. } => {
                let options = ExchangeDeclareOptions {
                    passive: !declare,
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                };
                channel
                    .exchange_declare(
                        name.as_str().into(),
                        kind.clone(),
                        options,
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        broker_error(&format!("exchange '{name}'{}", missing_hint(declare)), e)
                    })?;
            }
        }
        Ok(())
    }

    fn properties(&self, id: ShortString) -> BasicProperties {
        let properties = BasicProperties::default().with_message_id(id);
        if self.config.persistent {
            properties.with_delivery_mode(2)
        } else {
            properties
        }
    }

    /// Publishes one message; its confirmation is awaited later.
    async fn publish(&mut self, message: Message) -> Result<()> {
        let Some(channel) = &self.channel else {
            return Err(Error::Other("rabbitmq sink: not connected".into()));
        };
        let confirm = channel
            .basic_publish(
                self.exchange().into(),
                message.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.payload,
                self.properties(message.id.clone()),
            )
            .await
            .map_err(|e| broker_error("publishing", e))?;
        self.pending.push_back(Pending { message, confirm });
        Ok(())
    }

    /// Awaits confirmations until at most `keep` messages are unconfirmed;
    /// the refused ones are published again together after a backoff.
    async fn settle(&mut self, keep: usize) -> Result<()> {
        let mut backoff = self.config.retry.backoff();
        loop {
            let mut refused = Vec::new();
            while self.pending.len() > keep {
                let Some(Pending { message, confirm }) = self.pending.pop_front() else {
                    break;
                };
                let confirmation = confirm
                    .await
                    .map_err(|e| broker_error("awaiting the broker's confirmation", e))?;
                match confirmation {
                    Confirmation::Ack(None) | Confirmation::NotRequested => {}
                    Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                        return Err(Error::Other(format!(
                            "rabbitmq sink: no queue took a message to exchange '{}' with routing key '{}': {} {}",
                            self.exchange(),
                            message.routing_key,
                            returned.reply_code,
                            returned.reply_text
                        )));
                    }
                    Confirmation::Nack(None)
                        if message.attempt >= self.config.retry.max_attempts =>
                    {
                        return Err(Error::Other(format!(
                            "rabbitmq sink: the broker refused message '{}' to '{}' {} times",
                            message.id,
                            self.target.name(),
                            message.attempt
                        )));
                    }
                    Confirmation::Nack(None) => refused.push(message),
                }
            }
            if refused.is_empty() {
                return Ok(());
            }
            let wait = backoff.next_wait();
            tracing::debug!(
                messages = refused.len(),
                ?wait,
                "rabbitmq sink: refused; publishing again"
            );
            tokio::time::sleep(wait).await;
            for mut message in refused {
                message.attempt += 1;
                self.publish(message).await?;
            }
        }
    }

    /// The routing keys of `batch`'s rows: a column's values, or one key.
    fn routing_keys(&self, batch: &RecordBatch) -> Result<Option<StringArray>> {
        let column = match &*self.target {
            Target::Exchange {
                key_column: Some(i),
                ..
            } => *i,
            _ => return Ok(None),
        };
        super::destinations(batch, column, "routing key")
            .map(Some)
            .map_err(|m| Error::Other(format!("rabbitmq sink: {m}")))
    }
}

/// How long a checkpoint waits for the broker's confirmations.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(120);

#[async_trait]
impl Sink for RabbitSink {
    async fn open(&mut self, checkpointing: Option<Vec<serde_json::Value>>) -> Result<()> {
        let connection = self.config.endpoint.connect(&self.name).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| broker_error("opening a channel", e))?;
        self.declare(&channel).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker_error("turning publisher confirms on", e))?;
        self.channel = Some(channel);
        self.connection = Some(connection);
        self.ids.restore(checkpointing.as_deref());
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let messages = self.encoder.encode(&batch).await?;
        let keys = self.routing_keys(&batch)?;
        let ids = self
            .id_column
            .map(|i| super::destinations(&batch, i, "message id"))
            .transpose()
            .map_err(|m| Error::Other(format!("rabbitmq sink: {m}")))?;
        let literal_key: ShortString = match &*self.target {
            Target::Queue(q) => q.as_str().into(),
            Target::Exchange { .. } => self.config.routing_key.as_str().into(),
        };
        for (row, payload) in messages.into_iter().enumerate() {
            let key = keys
                .as_ref()
                .map_or_else(|| literal_key.clone(), |k| k.value(row).into());
            let id = match &ids {
                Some(ids) => ids.value(row).into(),
                None => self.ids.next_range(1).into(),
            };
            self.publish(Message {
                routing_key: key,
                payload,
                id,
                attempt: 1,
            })
            .await?;
            if self.pending.len() >= self.config.max_in_flight {
                self.settle(self.config.max_in_flight / 2).await?;
            }
        }
        Ok(())
    }

    async fn pre_commit(&mut self, _checkpoint: u64) -> Result<Vec<serde_json::Value>> {
        tokio::time::timeout(CONFIRM_TIMEOUT, self.settle(0))
            .await
            .map_err(|_| {
                Error::Other(format!(
                    "rabbitmq sink: the broker did not confirm {} messages within {CONFIRM_TIMEOUT:?}",
                    self.pending.len()
                ))
            })??;
        Ok(vec![self.ids.checkpoint()])
    }

    async fn finish(&mut self) -> Result<()> {
        self.settle(0).await?;
        if let Some(connection) = &self.connection {
            let _ = connection.close(200, "done".into()).await;
        }
        Ok(())
    }
}
