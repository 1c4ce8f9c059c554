//! `rabbitmq`: consumes a RabbitMQ queue (AMQP 0-9-1) — a queue named by
//! `queue`, or one bound to `exchange` with `routing_key`.
//!
//! Messages are acknowledged only when the checkpoint covering them
//! completes (without checkpoints: once handed on), so a crash makes the
//! broker deliver the unacknowledged ones again: at-least-once. On top of
//! that the source remembers the `message_id`s of the last `dedup_window`
//! messages (at least `prefetch`) in its checkpoints and drops a message
//! whose id it has seen: a message redelivered after a crash whose effects
//! the restored checkpoint already holds is dropped, and so is a repeat the
//! publisher sent (within the window). With exactly-once sinks that makes
//! the flow effectively-once for messages that carry unique ids (the
//! `rabbitmq` sink sets them); messages without a `message_id` stay
//! at-least-once. The broker sends at most `prefetch` unacknowledged
//! messages: a checkpoint interval holding more stalls delivery until the
//! checkpoint completes. One instance consumes (the others end at once).
//! Rows carry `_routing_key` and `_message_id`. With `bounded: true` the
//! source reads the messages the queue holds when it starts, then ends.
//!
//! ```yaml
//! - name: orders
//!   type: rabbitmq
//!   config: {url: "amqp://127.0.0.1:5672/%2f", queue: orders, schema: {id: int64, amount: float64}}
//! ```

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, SchemaRef};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Source, SourceBatch, SourceOffset};

use super::acknowledgements::Acknowledgements;
use crate::message::{MessageDecoder, MessageFormat};
use crate::registry::{SourceContext, SourceFactory};
use streamflow_tls::TlsOptions;

/// How to reach a RabbitMQ broker (shared by the source and the sink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitEndpoint {
    /// `amqp://[user[:password]@]host[:port]/[vhost]` (`%2f` is the default
    /// vhost `/`).
    pub url: String,
    /// Environment variable holding the password, which replaces the url's
    /// (never printed).
    pub password_env: Option<String>,
    /// TLS settings (implied by `amqps://`, whose default port is 5671).
    pub tls: Option<TlsOptions>,
}

impl RabbitEndpoint {
    /// The parsed url, or why it is not one.
    pub(crate) fn uri(&self) -> std::result::Result<AMQPUri, String> {
        if !self.url.starts_with("amqp://") && !self.url.starts_with("amqps://") {
            return Err(format!("'{}' is not an amqp:// or amqps:// url", self.url));
        }
        self.url
            .parse::<AMQPUri>()
            .map_err(|e| format!("'{}': {e}", self.url))
    }

    /// The broker's address, without credentials (for messages).
    pub(crate) fn address(&self) -> String {
        self.uri().map_or_else(
            |_| self.url.clone(),
            |u| format!("{}:{}", u.authority.host, u.authority.port),
        )
    }

    /// The TLS of the connection, if any.
    fn tls(&self) -> Option<TlsOptions> {
        crate::server::tls(self.tls.as_ref(), self.url.starts_with("amqps://"))
    }

    /// Validation of the url and TLS settings, at `at(key)`.
    pub(crate) fn check(
        &self,
        at: impl Fn(&str) -> String,
    ) -> std::result::Result<(), Diagnostics> {
        self.uri()
            .map_err(|m| Diagnostics::from(Diagnostic::new(at("url"), m)))?;
        crate::server::check_tls(at, self.tls().as_ref())
    }

    /// A connection named `name` (shown in the broker's management UI);
    /// retried with backoff for about 10 s.
    pub(crate) async fn connect(&self, name: &str) -> Result<Connection> {
        let mut uri = self.uri().map_err(Error::Other)?;
        if let Some(var) = &self.password_env {
            uri.authority.userinfo.password = std::env::var(var)
                .map_err(|_| Error::Other(format!("environment variable {var} is not set")))?;
        }
        let tls = self.tls().map(|tls| tls_connector(&tls)).transpose()?;
        crate::server::connect_with_backoff("RabbitMQ", &self.address(), || {
            let properties = ConnectionProperties::default().with_connection_name(name.into());
            let (uri, tls) = (uri.clone(), tls.clone());
            async move {
                match tls {
                    Some(tls) => connect_tls(uri, properties, tls).await,
                    None => Connection::connect_uri(uri, properties).await,
                }
            }
        })
        .await
    }
}

#[cfg(feature = "tls")]
type TlsConnector = Arc<lapin::tcp::RustlsConnector>;
#[cfg(not(feature = "tls"))]
type TlsConnector = Arc<()>;

#[cfg(feature = "tls")]
fn tls_connector(tls: &TlsOptions) -> Result<TlsConnector> {
    let config = crate::server::tls_client_config(tls)?;
    Ok(Arc::new(lapin::tcp::RustlsConnector::from(Arc::new(
        config,
    ))))
}

#[cfg(not(feature = "tls"))]
fn tls_connector(_: &TlsOptions) -> Result<TlsConnector> {
    Err(Error::Other(
        "rabbitmq: this build has no TLS (cargo feature `tls`)".into(),
    ))
}

/// Connects over TLS with StreamFlow's rustls configuration (the url's
/// host is the name the certificate must carry); reconnects the same way.
#[cfg(feature = "tls")]
async fn connect_tls(
    uri: AMQPUri,
    properties: ConnectionProperties,
    tls: TlsConnector,
) -> lapin::Result<Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, runtime| {
            let host = uri.authority.host.clone();
            let address = runtime.to_socket_addrs((host.clone(), uri.authority.port));
            let stream = lapin::tcp::AsyncTcpStream::connect(&runtime, address).await?;
            Ok(stream.into_rustls(&tls, &host).await?)
        },
        properties,
    )
    .await
}

#[cfg(not(feature = "tls"))]
async fn connect_tls(
    _: AMQPUri,
    _: ConnectionProperties,
    _: TlsConnector,
) -> lapin::Result<Connection> {
    Err(std::io::Error::other("this build has no TLS (cargo feature `tls`)").into())
}

/// A broker error as a pipeline error saying what was being done.
pub(crate) fn broker_error(what: &str, e: lapin::Error) -> Error {
    Error::Other(format!("rabbitmq: {what}: {e}"))
}

fn default_prefetch() -> u16 {
    10_000
}
fn default_dedup_window() -> usize {
    10_000
}
fn default_batch() -> usize {
    1000
}
fn default_binding() -> String {
    "#".into()
}

/// Settings of a `rabbitmq` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitSourceConfig {
    /// The broker.
    #[serde(flatten)]
    pub endpoint: RabbitEndpoint,
    /// The queue consumed. With `exchange`, default `streamflow-<node>`.
    pub queue: Option<String>,
    /// Bind the queue to this exchange (declaring the queue, durable).
    pub exchange: Option<String>,
    /// Binding key with `exchange` (`#`: everything on a topic exchange).
    #[serde(default = "default_binding")]
    pub routing_key: String,
    /// Declare the queue (durable) when it does not exist; otherwise a
    /// missing queue is an error.
    #[serde(default)]
    pub declare: bool,
    /// Unacknowledged messages the broker may send at once.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Message ids remembered to drop repeats (0: no de-duplication).
    #[serde(default = "default_dedup_window")]
    pub dedup_window: usize,
    /// Message format.
    #[serde(default)]
    pub format: MessageFormat,
    /// Declared schema (json, csv), column → type.
    pub schema: Option<Map<String, Value>>,
    /// Schema registry of `avro`/`protobuf` messages.
    pub registry: Option<String>,
    /// Messages per batch at most.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Read the messages the queue holds when the flow starts, then end.
    #[serde(default)]
    pub bounded: bool,
}

impl RabbitSourceConfig {
    /// The queue consumed, for node `node`.
    fn queue(&self, node: &str) -> String {
        self.queue
            .clone()
            .unwrap_or_else(|| format!("streamflow-{node}"))
    }
}

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: RabbitSourceConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    config.endpoint.check(|k| ctx.at(k))?;
    match (&config.queue, &config.exchange) {
        (None, None) => {
            return Err(fail(
                "queue",
                "name a queue, or an exchange to bind one to".into(),
            ));
        }
        (Some(q), _) if q.is_empty() => return Err(fail("queue", "must not be empty".into())),
        _ => {}
    }
    if config.prefetch == 0 {
        return Err(fail("prefetch", "must be positive".into()));
    }
    if config.batch_size == 0 {
        return Err(fail("batch_size", "must be positive".into()));
    }
    let queue = config.queue(ctx.name);
    let values = crate::message::value_schema(
        &crate::message::ValueSource {
            format: config.format,
            declared: config.schema.as_ref(),
            registry: config.registry.as_deref(),
            default_subject: format!("{queue}-value"),
            at: ctx.at("schema"),
        },
        || {
            Err(fail(
                "schema",
                "declare `schema` (a queue cannot be sampled without consuming it)".into(),
            ))
        },
    )?;
    let schema = values.with_columns([
        Field::new("_routing_key", DataType::Utf8, false),
        Field::new("_message_id", DataType::Utf8, true),
    ]);
    Ok(Arc::new(RabbitSourceFactory {
        node: ctx.name.to_string(),
        queue,
        values,
        schema,
        config: Arc::new(config),
    }))
}

struct RabbitSourceFactory {
    config: Arc<RabbitSourceConfig>,
    node: String,
    queue: String,
    values: crate::message::Values,
    schema: SchemaRef,
}

impl SourceFactory for RabbitSourceFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn bounded(&self) -> bool {
        self.config.bounded
    }

    fn create(&self, instance: usize, _parallelism: usize) -> Result<Box<dyn Source>> {
        let window = if self.config.dedup_window == 0 {
            0
        } else {
            self.config
                .dedup_window
                .max(usize::from(self.config.prefetch))
        };
        Ok(Box::new(RabbitSource {
            config: Arc::clone(&self.config),
            node: self.node.clone(),
            queue: self.queue.clone(),
            decoder: MessageDecoder::new(self.config.format, &self.values),
            schema: Arc::clone(&self.schema),
            connection: None,
            channel: None,
            consumer: None,
            checkpointing: false,
            acks: Acknowledgements::default(),
            seen: SeenIds::new(window),
            remaining: None,
            done: instance > 0,
        }))
    }
}

/// The most recent message ids, oldest first, for dropping repeats.
#[derive(Debug)]
struct SeenIds {
    capacity: usize,
    order: VecDeque<Arc<str>>,
    set: HashSet<Arc<str>>,
}

impl SeenIds {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    /// Records `id`; false when it is among the remembered ones.
    fn first_time(&mut self, id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        let id: Arc<str> = Arc::from(id);
        self.order.push_back(Arc::clone(&id));
        self.set.insert(id);
        true
    }

    fn ids(&self) -> Vec<&str> {
        self.order.iter().map(|id| &**id).collect()
    }
}

struct RabbitSource {
    config: Arc<RabbitSourceConfig>,
    node: String,
    queue: String,
    decoder: MessageDecoder,
    schema: SchemaRef,
    connection: Option<Connection>,
    channel: Option<Channel>,
    consumer: Option<Consumer>,
    checkpointing: bool,
    /// The last delivery tag of each batch handed on; acknowledging it
    /// (`multiple`) acknowledges every delivery before it.
    acks: Acknowledgements<u64>,
    seen: SeenIds,
    /// With `bounded`: messages still to read of those the queue held.
    remaining: Option<u32>,
    done: bool,
}

/// Acknowledges every delivery up to the highest tag of `tags`.
async fn ack(channel: Option<Channel>, tags: Vec<u64>) -> Result<()> {
    let (Some(tag), Some(channel)) = (tags.into_iter().max(), channel) else {
        return Ok(());
    };
    channel
        .basic_ack(tag, BasicAckOptions { multiple: true })
        .await
        .map_err(|e| broker_error("acknowledging", e))
}

/// Declares the durable `queue` (`declare`), or checks that it exists; how
/// many messages it holds. Shared by the source and the sink.
pub(crate) async fn declare_queue(channel: &Channel, queue: &str, declare: bool) -> Result<u32> {
    let options = QueueDeclareOptions {
        passive: !declare,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .map_err(|e| broker_error(&format!("queue '{queue}'{}", missing_hint(declare)), e))?;
    Ok(declared.message_count())
}

/// What an error about a missing queue or exchange adds when `declare` is off.
pub(crate) fn missing_hint(declare: bool) -> &'static str {
    if declare {
        ""
    } else {
        " (declare: true creates it)"
    }
}

/// Sets up `queue` (checked, declared, bound) and a consumer of it for
/// node `node`; how many messages the queue held.
async fn consume(
    channel: &Channel,
    config: &RabbitSourceConfig,
    queue: &str,
    node: &str,
) -> Result<(Consumer, u32)> {
    let declare = config.declare || config.exchange.is_some();
    let held = declare_queue(channel, queue, declare).await?;
    if let Some(exchange) = &config.exchange {
        channel
            .queue_bind(
                queue.into(),
                exchange.as_str().into(),
                config.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                broker_error(
                    &format!("binding queue '{queue}' to exchange '{exchange}'"),
                    e,
                )
            })?;
    }
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| broker_error("setting the prefetch", e))?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            format!("streamflow-{node}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker_error(&format!("consuming queue '{queue}'"), e))?;
    Ok((consumer, held))
}

impl RabbitSource {
    /// Rows of the deliveries not seen before, with the routing key and
    /// message id columns.
    async fn rows(&mut self, taken: &[Delivery]) -> Result<SourceBatch> {
        let fresh: Vec<&Delivery> = taken
            .iter()
            .filter(|d| match d.properties.message_id() {
                Some(id) => self.seen.first_time(id.as_str()),
                None => true,
            })
            .collect();
        if fresh.len() < taken.len() {
            tracing::debug!(
                queue = %self.queue,
                dropped = taken.len() - fresh.len(),
                "rabbitmq: dropped repeated message ids"
            );
        }
        let payloads: Vec<&[u8]> = fresh.iter().map(|d| d.data.as_slice()).collect();
        let decoded = self
            .decoder
            .decode(&payloads, |i| {
                format!("{}/{}", self.queue, fresh[i].delivery_tag)
            })
            .await?;
        let rows = &decoded.rows;
        let data = decoded
            .batch
            .as_ref()
            .map(|values| {
                let keys = StringArray::from_iter_values(
                    rows.iter().map(|&i| fresh[i].routing_key.as_str()),
                );
                let ids = StringArray::from_iter(rows.iter().map(|&i| {
                    fresh[i]
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|m| m.as_str())
                }));
                crate::message::with_metadata(
                    &self.schema,
                    values,
                    [Arc::new(keys) as ArrayRef, Arc::new(ids)],
                )
            })
            .transpose()?;
        Ok(SourceBatch {
            data,
            dead_letters: decoded.dead_letters,
            splits: None,
        })
    }
}

/// How long a pull waits for a first message.
const WAIT: Duration = Duration::from_millis(200);

#[async_trait]
impl Source for RabbitSource {
    async fn open(&mut self, checkpointing: bool) -> Result<()> {
        self.checkpointing = checkpointing;
        if self.done {
            return Ok(());
        }
        let connection = self
            .config
            .endpoint
            .connect(&format!("streamflow-{}", self.node))
            .await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| broker_error("opening a channel", e))?;
        let (consumer, held) = consume(&channel, &self.config, &self.queue, &self.node).await?;
        if self.config.bounded {
            self.remaining = Some(held);
        }
        self.consumer = Some(consumer);
        self.channel = Some(channel);
        self.connection = Some(connection);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        if self.done {
            return Ok(None);
        }
        if !self.checkpointing {
            let handed_on = self.acks.take_handed_on();
            ack(self.channel.clone(), handed_on).await?;
        }
        if self.remaining == Some(0) {
            return Ok(None);
        }
        let limit = self.remaining.map_or(self.config.batch_size, |r| {
            self.config.batch_size.min(r as usize)
        });
        let Some(consumer) = self.consumer.as_mut() else {
            return Err(Error::Other("rabbitmq source: not connected".into()));
        };
        let ended = || {
            Error::Other(format!(
                "rabbitmq source: the consumer of queue '{}' was cancelled",
                self.queue
            ))
        };
        let mut taken = Vec::new();
        match tokio::time::timeout(WAIT, consumer.next()).await {
            Ok(Some(delivery)) => {
                taken.push(delivery.map_err(|e| broker_error("receiving", e))?);
            }
            Ok(None) => return Err(ended()),
            Err(_) => return Ok(Some(SourceBatch::default())),
        }
        while taken.len() < limit {
            match consumer.next().now_or_never() {
                Some(Some(delivery)) => {
                    taken.push(delivery.map_err(|e| broker_error("receiving", e))?);
                }
                Some(None) => return Err(ended()),
                None => break,
            }
        }
        if let Some(r) = self.remaining.as_mut() {
            *r = r.saturating_sub(taken.len() as u32);
        }
        let batch = self.rows(&taken).await?;
        self.acks
            .handed_on(taken.iter().map(|d| d.delivery_tag).max());
        Ok(Some(batch))
    }

    fn offset(&mut self, checkpoint: u64) -> SourceOffset {
        self.acks.barrier(checkpoint);
        if self.seen.capacity == 0 {
            return SourceOffset::None;
        }
        SourceOffset::Broker(serde_json::json!({ "seen": self.seen.ids() }))
    }

    async fn seek(&mut self, offset: &SourceOffset) -> Result<()> {
        match offset {
            SourceOffset::None => Ok(()),
            SourceOffset::Broker(v) => {
                let ids = v.get("seen").and_then(Value::as_array).ok_or_else(|| {
                    Error::Other(format!("rabbitmq source: cannot resume from {v}"))
                })?;
                for id in ids.iter().filter_map(Value::as_str) {
                    self.seen.first_time(id);
                }
                Ok(())
            }
            other => Err(Error::Other(format!(
                "rabbitmq source: cannot resume from {other:?}"
            ))),
        }
    }

    async fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<()> {
        let due = self.acks.complete(checkpoint);
        ack(self.channel.clone(), due).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_drops_repeats_and_forgets_the_oldest() {
        let mut seen = SeenIds::new(2);
        assert!(seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("c"));
        // "a" fell out of the window of two.
        assert!(seen.first_time("a"));
        assert_eq!(seen.ids(), ["c", "a"]);
    }

    #[test]
    fn a_zero_window_keeps_everything() {
        let mut seen = SeenIds::new(0);
        assert!(seen.first_time("a"));
        assert!(seen.first_time("a"));
        assert!(seen.ids().is_empty());
    }
}
