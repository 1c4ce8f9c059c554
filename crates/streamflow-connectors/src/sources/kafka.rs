//! `kafka`: reads a Kafka topic, its partitions dealt to the instances.
//!
//! Instance `i` of `n` reads the partitions `p` with `p % n == i` (assigned
//! directly, as Flink's Kafka source does, not by a group rebalance). Each
//! partition starts at the checkpointed offset when restored, else at the
//! group's committed offset, else at `start`. Offsets are recorded in every
//! checkpoint and committed to `group` when that checkpoint completes (so
//! the group's lag shows progress); without checkpoints they are committed
//! after each batch is handed on (at-least-once). `isolation.level` is
//! `read_committed` unless `properties` says otherwise. Rows carry `_key`
//! (text), `_partition`, `_offset` and `_timestamp` (the record's timestamp).
//! `bounded: true` reads until it has reached the end of every partition
//! (librdkafka's partition-end events), then ends.
//!
//! ```yaml
//! - name: bids
//!   type: kafka
//!   config: {brokers: "127.0.0.1:9092", topic: bids, group: analytics, schema: {auction: int64, price: int64}}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringBuilder, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Source, SourceBatch, SourceOffset};

use crate::message::{MessageDecoder, MessageFormat, Start};
use crate::registry::{SourceContext, SourceFactory};
use streamflow_tls::TlsOptions;

/// How to reach a Kafka cluster (shared by the source and the sink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaEndpoint {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// librdkafka settings (`security.protocol`, `sasl.mechanisms`, …).
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Environment variable holding `sasl.password` (never printed).
    pub password_env: Option<String>,
    /// TLS settings: `security.protocol` becomes `ssl` (`sasl_ssl` with
    /// `sasl.mechanisms`); librdkafka's own OpenSSL does the TLS.
    pub tls: Option<TlsOptions>,
}

/// Bound on one metadata, offsets or transaction call to the cluster.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on one attempt to read the cluster's metadata (an unreachable
/// broker answers nothing: librdkafka retries until this passes).
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);

impl KafkaEndpoint {
    /// Validation of the TLS settings, at `at(key)`.
    pub(crate) fn check(
        &self,
        at: impl Fn(&str) -> String,
    ) -> std::result::Result<(), Diagnostics> {
        let mut problems = Diagnostics::new();
        for (key, message) in self.tls.iter().flat_map(TlsOptions::problems) {
            problems.push(at(&format!("tls.{key}")), message);
        }
        problems.into_result(())
    }

    /// A client configuration: the brokers, `defaults` (which `properties`
    /// override) and the password.
    pub(crate) fn client_config(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        // Fail a first connection within the bound rather than retrying forever.
        config.set("socket.connection.setup.timeout.ms", "5000");
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        if let Some(tls) = &self.tls {
            let sasl = self.properties.contains_key("sasl.mechanisms");
            config.set("security.protocol", if sasl { "sasl_ssl" } else { "ssl" });
            let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
            if let Some(ca) = &tls.ca_file {
                config.set("ssl.ca.location", path(ca));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                config.set("ssl.certificate.location", path(cert));
                config.set("ssl.key.location", path(key));
            }
            if tls.insecure_skip_verify {
                config.set("enable.ssl.certificate.verification", "false");
                config.set("ssl.endpoint.identification.algorithm", "none");
            }
        }
        for (k, v) in &self.properties {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            config.set(k, v);
        }
        if let Some(var) = &self.password_env {
            let password = std::env::var(var)
                .map_err(|_| Error::Other(format!("environment variable {var} is not set")))?;
            config.set("sasl.password", password);
        }
        Ok(config)
    }

    /// The partitions of `topic`: fails, naming the brokers, when the
    /// cluster cannot be reached (retried with backoff for about 10 s) or
    /// the topic does not exist.
    pub(crate) async fn partitions<C, X>(&self, client: &Arc<C>, topic: &str) -> Result<i32>
    where
        C: Consumer<X> + Send + Sync + 'static,
        X: ConsumerContext + 'static,
    {
        let found = crate::server::connect_with_backoff("Kafka", &self.brokers, || {
            let (client, topic) = (Arc::clone(client), topic.to_string());
            async move {
                let metadata = tokio::task::spawn_blocking(move || {
                    client.fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                Ok::<_, String>(
                    metadata
                        .topics()
                        .first()
                        .map(|t| (t.error().is_none(), t.partitions().len())),
                )
            }
        })
        .await?;
        match found {
            Some((true, n)) if n > 0 => Ok(n as i32),
            _ => Err(Error::Other(format!(
                "kafka topic '{topic}' does not exist at {}",
                self.brokers
            ))),
        }
    }
}

/// Settings of a `kafka` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// The cluster.
    #[serde(flatten)]
    pub endpoint: KafkaEndpoint,
    /// The topic read.
    pub topic: String,
    /// Consumer group offsets are committed to (default `streamflow-<source name>`).
    pub group: Option<String>,
    /// Message format.
    #[serde(default)]
    pub format: MessageFormat,
    /// Declared schema (json, csv), column → type; json is inferred from
    /// the topic's first 200 messages when absent.
    pub schema: Option<Map<String, Value>>,
    /// Schema registry of `avro` messages (default: `STREAMFLOW_REGISTRY`,
    /// or the server the flow runs in).
    pub registry: Option<String>,
    /// Where a partition without a committed offset starts.
    #[serde(default)]
    pub start: Start,
    /// Read until the end of every partition is reached, then end.
    #[serde(default)]
    pub bounded: bool,
    /// Messages per batch at most.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_batch() -> usize {
    8192
}

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: KafkaSourceConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    if config.batch_size == 0 {
        return Err(fail("batch_size", "must be positive".into()));
    }
    config.endpoint.check(|k| ctx.at(k))?;
    if config.endpoint.brokers.trim().is_empty() {
        return Err(fail("brokers", "must name at least one broker".into()));
    }
    let group = config
        .group
        .clone()
        .unwrap_or_else(|| format!("streamflow-{}", ctx.name));
    let values = crate::message::value_schema(
        &crate::message::ValueSource {
            format: config.format,
            declared: config.schema.as_ref(),
            registry: config.registry.as_deref(),
            default_subject: format!("{}-value", config.topic),
            at: ctx.at("schema"),
        },
        || infer(&config, &group).map_err(|m| fail("topic", m)),
    )?;
    let schema = values.with_columns([
        Field::new("_key", DataType::Utf8, true),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
    ]);
    Ok(Arc::new(KafkaSourceFactory {
        group,
        values,
        schema,
        config: Arc::new(config),
    }))
}

/// Messages sampled to infer a JSON schema.
const INFER_MESSAGES: usize = 200;

/// The JSON schema of the topic's first messages (from the start of each
/// partition, without committing anything).
fn infer(config: &KafkaSourceConfig, group: &str) -> std::result::Result<Schema, String> {
    let (endpoint, topic, group) = (
        config.endpoint.clone(),
        config.topic.clone(),
        group.to_string(),
    );
    let sample = crate::server::at_plan_time(move || async move {
        let consumer: Arc<KafkaConsumer> = Arc::new(
            consumer_config(&endpoint, &group, false)
                .map_err(|e| e.to_string())?
                .create_with_context(Events)
                .map_err(|e| e.to_string())?,
        );
        let partitions = endpoint
            .partitions(&consumer, &topic)
            .await
            .map_err(|e| e.to_string())?;
        let mut ends = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, CALL_TIMEOUT)
                .map_err(|e| e.to_string())?;
            if high > low {
                tpl.add_partition_offset(&topic, p, Offset::Offset(low))
                    .map_err(|e| e.to_string())?;
                ends.push(high);
            }
        }
        let mut sample = Vec::new();
        if ends.is_empty() {
            return Ok(sample);
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while sample.len() < INFER_MESSAGES {
            match next_message(&consumer, Some(deadline)).await {
                Some(Ok(m)) => sample.push(m.payload().unwrap_or_default().to_vec()),
                Some(Err(e)) => return Err(e.to_string()),
                None => break,
            }
        }
        Ok::<_, String>(sample)
    })?;
    crate::message::infer_json(sample.iter().map(Vec::as_slice)).unwrap_or_else(|| {
        Err(format!(
            "topic '{}' has no messages to infer a schema from; declare `schema`",
            config.topic
        ))
    })
}

/// The consumer's client context: partition ends are events of the
/// source, not errors to log.
struct Events;

impl ClientContext for Events {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(error = %error, reason, "kafka client");
        }
    }
}

impl ConsumerContext for Events {}

type KafkaConsumer = BaseConsumer<Events>;

/// Between polls of an empty queue.
const IDLE_POLL: Duration = Duration::from_millis(2);

/// The next message (or event) librdkafka has fetched; when there is none,
/// polled for until `deadline` (none: do not wait). Polling a queue is
/// cheaper per message than awaiting a stream per message.
async fn next_message(
    consumer: &KafkaConsumer,
    deadline: Option<tokio::time::Instant>,
) -> Option<rdkafka::error::KafkaResult<BorrowedMessage<'_>>> {
    loop {
        if let Some(item) = consumer.poll(Duration::ZERO) {
            return Some(item);
        }
        match deadline {
            Some(d) if tokio::time::Instant::now() < d => tokio::time::sleep(IDLE_POLL).await,
            _ => return None,
        }
    }
}

/// A consumer of `group` that never commits by itself; `eof`: reports
/// reaching the end of a partition.
fn consumer_config(endpoint: &KafkaEndpoint, group: &str, eof: bool) -> Result<ClientConfig> {
    endpoint.client_config(&[
        ("group.id", group),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", if eof { "true" } else { "false" }),
        ("isolation.level", "read_committed"),
        // librdkafka pauses fetching for this long once 100 000 messages
        // wait locally (1 s by default): a fast reader would then idle.
        ("fetch.queue.backoff.ms", "10"),
    ])
}

struct KafkaSourceFactory {
    config: Arc<KafkaSourceConfig>,
    group: String,
    values: crate::message::Values,
    schema: SchemaRef,
}

impl SourceFactory for KafkaSourceFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn bounded(&self) -> bool {
        self.config.bounded
    }

    fn create(&self, instance: usize, parallelism: usize) -> Result<Box<dyn Source>> {
        Ok(Box::new(KafkaSource {
            config: Arc::clone(&self.config),
            group: self.group.clone(),
            decoder: MessageDecoder::new(self.config.format, &self.values),
            schema: Arc::clone(&self.schema),
            instance,
            parallelism: parallelism.max(1),
            consumer: None,
            checkpointing: false,
            next: BTreeMap::new(),
            at_end: BTreeSet::new(),
            uncommitted: false,
            barriers: Vec::new(),
            done: false,
        }))
    }
}

/// Next offset to read, per partition.
type Offsets = BTreeMap<i32, i64>;

struct KafkaSource {
    config: Arc<KafkaSourceConfig>,
    group: String,
    decoder: MessageDecoder,
    schema: SchemaRef,
    instance: usize,
    parallelism: usize,
    consumer: Option<Arc<KafkaConsumer>>,
    checkpointing: bool,
    /// Next offset of each partition of this instance.
    next: Offsets,
    /// Bounded: the partitions whose end has been reached.
    at_end: BTreeSet<i32>,
    /// Without checkpoints: offsets handed on since the last commit.
    uncommitted: bool,
    /// Checkpoints not yet complete, with the offsets they cover.
    barriers: Vec<(u64, Offsets)>,
    done: bool,
}

impl KafkaSource {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Other(format!(
            "kafka source (topic {}): {what}: {e}",
            self.config.topic
        ))
    }

    /// Connects and assigns this instance's partitions, each at `restored`'s
    /// offset, else the group's committed one, else `start`.
    async fn assign(&mut self, restored: Option<&Offsets>) -> Result<()> {
        let consumer: Arc<KafkaConsumer> = Arc::new(
            consumer_config(&self.config.endpoint, &self.group, self.config.bounded)?
                .create_with_context(Events)
                .map_err(|e| self.err("creating the consumer", e))?,
        );
        let topic = self.config.topic.clone();
        let count = self.config.endpoint.partitions(&consumer, &topic).await?;
        let mine: Vec<i32> = (0..count)
            .filter(|p| *p as usize % self.parallelism == self.instance)
            .collect();
        let start = self.config.start;
        let restored = restored.cloned();
        let client = Arc::clone(&consumer);
        // Offsets and watermarks are blocking calls.
        let next = tokio::task::spawn_blocking(move || {
            let mut query = TopicPartitionList::new();
            for p in &mine {
                query.add_partition(&topic, *p);
            }
            let committed = client.committed_offsets(query, CALL_TIMEOUT)?;
            let mut next = Offsets::new();
            for p in mine {
                let (low, high) = client.fetch_watermarks(&topic, p, CALL_TIMEOUT)?;
                let group_at = committed
                    .find_partition(&topic, p)
                    .and_then(|e| e.offset().to_raw())
                    .filter(|o| *o >= 0);
                let at = match (restored.as_ref().and_then(|r| r.get(&p)), group_at) {
                    (Some(r), _) => *r,
                    (None, Some(g)) => g,
                    (None, None) if start == Start::Latest => high,
                    (None, None) => low,
                };
                // An offset the topic no longer keeps starts at its beginning.
                next.insert(p, at.max(low));
            }
            Ok::<_, KafkaError>(next)
        })
        .await
        .map_err(|e| self.err("reading offsets", e))?
        .map_err(|e| self.err("reading offsets", e))?;
        let mut tpl = TopicPartitionList::new();
        for (p, at) in &next {
            tpl.add_partition_offset(&self.config.topic, *p, Offset::Offset(*at))
                .map_err(|e| self.err("assigning partitions", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| self.err("assigning partitions", e))?;
        tracing::debug!(topic = %self.config.topic, instance = self.instance, partitions = ?next, "kafka source assigned");
        if next.is_empty() {
            self.done = true;
        }
        self.next = next;
        self.at_end.clear();
        self.consumer = Some(consumer);
        Ok(())
    }

    /// A consumer error: librdkafka reconnects and retries by itself, so
    /// only errors it cannot get past end the run.
    fn consume_error(&mut self, e: KafkaError) -> Result<()> {
        match e {
            KafkaError::PartitionEOF(p) => {
                self.at_end.insert(p);
                Ok(())
            }
            e if matches!(
                e.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::UnknownTopicOrPartition
                        | RDKafkaErrorCode::UnknownTopic
                        | RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::GroupAuthorizationFailed
                        | RDKafkaErrorCode::SaslAuthenticationFailed
                )
            ) =>
            {
                Err(self.err("reading", e))
            }
            e => {
                tracing::warn!(topic = %self.config.topic, error = %e, "kafka source: retrying");
                Ok(())
            }
        }
    }

    /// Bounded: the end of every partition of this instance was reached.
    fn caught_up(&self) -> bool {
        self.config.bounded && self.next.keys().all(|p| self.at_end.contains(p))
    }

    /// Commits `offsets` to the group (asynchronously: the group's offsets
    /// inform, the checkpoint decides).
    fn commit(&self, offsets: &Offsets) -> Result<()> {
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        for (p, at) in offsets {
            tpl.add_partition_offset(&self.config.topic, *p, Offset::Offset(*at))
                .map_err(|e| self.err("committing offsets", e))?;
        }
        if tpl.count() > 0 {
            consumer
                .commit(&tpl, CommitMode::Async)
                .map_err(|e| self.err("committing offsets", e))?;
        }
        Ok(())
    }
}

/// Wait for a first message before handing on an empty batch.
const POLL: Duration = Duration::from_millis(200);

#[async_trait]
impl Source for KafkaSource {
    async fn open(&mut self, checkpointing: bool) -> Result<()> {
        self.checkpointing = checkpointing;
        self.assign(None).await
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        if self.done {
            return Ok(None);
        }
        if !self.checkpointing && self.uncommitted {
            self.commit(&self.next)?;
            self.uncommitted = false;
        }
        let Some(consumer) = self.consumer.clone() else {
            return Err(self.err("reading", "not connected"));
        };
        let deadline = tokio::time::Instant::now() + POLL;
        let mut messages = Vec::new();
        while messages.len() < self.config.batch_size {
            let item = if messages.is_empty() {
                if self.caught_up() {
                    self.done = true;
                    return Ok(None);
                }
                match next_message(&consumer, Some(deadline)).await {
                    Some(item) => item,
                    None => break,
                }
            } else {
                // Then what has already arrived, without waiting.
                match next_message(&consumer, None).await {
                    Some(item) => item,
                    None => break,
                }
            };
            match item {
                Ok(m) => messages.push(m),
                Err(e) => self.consume_error(e)?,
            }
        }
        for m in &messages {
            self.next.insert(m.partition(), m.offset() + 1);
        }
        self.uncommitted = !messages.is_empty();
        let topic = &self.config.topic;
        let payloads: Vec<&[u8]> = messages
            .iter()
            .map(|m| m.payload().unwrap_or_default())
            .collect();
        let decoded = self
            .decoder
            .decode(&payloads, |i| {
                format!(
                    "{topic}/{}/{}",
                    messages[i].partition(),
                    messages[i].offset()
                )
            })
            .await?;
        let mut splits = None;
        let data = match decoded.batch {
            None => None,
            Some(values) => {
                let rows = &decoded.rows;
                let mut keys = StringBuilder::new();
                for &i in rows {
                    match messages[i].key() {
                        Some(k) => keys.append_value(String::from_utf8_lossy(k)),
                        None => keys.append_null(),
                    }
                }
                let partitions =
                    Int32Array::from_iter_values(rows.iter().map(|&i| messages[i].partition()));
                let rows_of = crate::message::with_metadata(
                    &self.schema,
                    &values,
                    [
                        Arc::new(keys.finish()) as ArrayRef,
                        Arc::new(partitions.clone()),
                        Arc::new(Int64Array::from_iter_values(
                            rows.iter().map(|&i| messages[i].offset()),
                        )),
                        Arc::new(TimestampMillisecondArray::from_iter(
                            rows.iter().map(|&i| messages[i].timestamp().to_millis()),
                        )),
                    ],
                )?;
                splits = Some(partitions);
                Some(rows_of)
            }
        };
        Ok(Some(SourceBatch {
            data,
            dead_letters: decoded.dead_letters,
            splits,
        }))
    }

    fn splits(&self) -> Vec<i32> {
        self.next.keys().copied().collect()
    }

    fn offset(&mut self, checkpoint: u64) -> SourceOffset {
        self.barriers.push((checkpoint, self.next.clone()));
        let partitions: Map<String, Value> = self
            .next
            .iter()
            .map(|(p, at)| (p.to_string(), Value::from(*at)))
            .collect();
        SourceOffset::Broker(serde_json::json!({ "partitions": partitions }))
    }

    async fn seek(&mut self, offset: &SourceOffset) -> Result<()> {
        let restored: Offsets = match offset {
            SourceOffset::None => return Ok(()),
            SourceOffset::Broker(v) => v
                .get("partitions")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(p, at)| Some((p.parse().ok()?, at.as_i64()?)))
                        .collect()
                })
                .unwrap_or_default(),
            other => {
                return Err(Error::Other(format!(
                    "a kafka source cannot resume from {other:?}"
                )));
            }
        };
        self.assign(Some(&restored)).await
    }

    async fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<()> {
        let mut newest = None;
        self.barriers.retain_mut(|(id, offsets)| {
            if *id <= checkpoint {
                newest = Some(std::mem::take(offsets));
                false
            } else {
                true
            }
        });
        match newest {
            Some(offsets) => self.commit(&offsets),
            None => Ok(()),
        }
    }
}
