//! `kafka`: produces one record per row to a Kafka topic, keyed by the
//! `key` column when given (partitioned by key with murmur2, as the Java
//! client does).
//!
//! With checkpoints, each checkpoint's rows are one Kafka transaction,
//! committed when the checkpoint completes: `read_committed` consumers see
//! every row exactly once. A transaction whose checkpoint is still pending
//! does not hold back the next one: producers with transactional ids
//! `<transactional_id>-<instance>-<slot>` take turns. A restart fences every
//! slot (`init_transactions`), aborting what a crashed run left open;
//! librdkafka cannot resume a transaction another process opened, so rows
//! of a checkpoint the crash caught between completing and committing are
//! reported in the log. Without checkpoints the producer is idempotent
//! (at-least-once, no duplicates from its own retries).
//!
//! ```yaml
//! - {name: out, type: kafka, input: totals, config: {brokers: "127.0.0.1:9092", topic: totals, key: auction}}
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Deserialize;
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Sink};

use crate::message::{MessageEncoder, MessageFormat};
use crate::registry::{SinkContext, SinkFactory};
use crate::sources::kafka::{CALL_TIMEOUT, KafkaEndpoint};

/// Settings of a `kafka` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// The cluster.
    #[serde(flatten)]
    pub endpoint: KafkaEndpoint,
    /// The topic written.
    pub topic: String,
    /// Message format.
    #[serde(default)]
    pub format: MessageFormat,
    /// `avro`: `{subject}` the rows' schema is registered under (default
    /// `<topic>-value`).
    pub schema: Option<serde_json::Map<String, serde_json::Value>>,
    /// Schema registry of `avro` (default: `STREAMFLOW_REGISTRY`, or the
    /// server the flow runs in).
    pub registry: Option<String>,
    /// Column whose value (as text) is each record's key.
    pub key: Option<String>,
    /// Prefix of the transactional ids (default `streamflow-<topic>-<sink name>`).
    pub transactional_id: Option<String>,
    /// Create the topic if it is missing.
    #[serde(default)]
    pub create: bool,
    /// Partitions of a created topic.
    #[serde(default = "one")]
    pub partitions: i32,
}

fn one() -> i32 {
    1
}

/// Producers (transactional ids) per instance a restart always fences.
const SLOTS: usize = 2;

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let config: KafkaSinkConfig = ctx.config()?;
    config.endpoint.check(|k| ctx.at(k))?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    if config.partitions < 1 {
        return Err(fail("partitions", "must be positive".into()));
    }
    let key = match &config.key {
        None => None,
        Some(k) => Some(ctx.input.index_of(k).map_err(|_| {
            fail(
                "key",
                format!("no column '{k}' in the input ({})", column_names(ctx)),
            )
        })?),
    };
    let encoder = MessageEncoder::new(&crate::message::EncoderSource {
        format: config.format,
        input: &ctx.input,
        declared: config.schema.as_ref(),
        registry: config.registry.as_deref(),
        default_subject: format!("{}-value", config.topic),
    })
    .map_err(|m| fail("format", m))?;
    Ok(Arc::new(KafkaSinkFactory {
        transactional_id: config
            .transactional_id
            .clone()
            .unwrap_or_else(|| format!("streamflow-{}-{}", config.topic, ctx.name)),
        config: Arc::new(config),
        encoder,
        key,
    }))
}

fn column_names(ctx: &SinkContext<'_>) -> String {
    ctx.input
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

struct KafkaSinkFactory {
    config: Arc<KafkaSinkConfig>,
    encoder: MessageEncoder,
    key: Option<usize>,
    transactional_id: String,
}

impl SinkFactory for KafkaSinkFactory {
    fn create(&self, instance: usize) -> Result<Box<dyn Sink>> {
        Ok(Box::new(KafkaSink {
            config: Arc::clone(&self.config),
            encoder: self.encoder.clone(),
            key: self.key,
            transactional_id: format!("{}-{instance}", self.transactional_id),
            delivery: Arc::new(Delivery::default()),
            active: None,
            idle: Vec::new(),
            pending: Vec::new(),
            slots: 0,
            transactional: false,
        }))
    }
}

/// Counts failed deliveries (the first error kept) for the producer's
/// background thread.
#[derive(Default)]
struct Delivery {
    failed: Mutex<Option<String>>,
}

#[derive(Clone)]
struct DeliveryContext(Arc<Delivery>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result
            && let Ok(mut failed) = self.0.failed.lock()
            && failed.is_none()
        {
            *failed = Some(e.to_string());
        }
    }
}

type KafkaProducer = ThreadedProducer<DeliveryContext>;

/// One producer and, when transactional, its slot.
struct Slot {
    producer: Arc<KafkaProducer>,
    slot: usize,
}

struct KafkaSink {
    config: Arc<KafkaSinkConfig>,
    encoder: MessageEncoder,
    key: Option<usize>,
    /// Prefix of this instance's transactional ids.
    transactional_id: String,
    delivery: Arc<Delivery>,
    /// The producer written to (its transaction open, with checkpoints).
    active: Option<Slot>,
    /// Transactional producers with no transaction open.
    idle: Vec<Slot>,
    /// Transactions waiting for their checkpoint to complete.
    pending: Vec<(u64, Slot)>,
    /// Transactional ids made so far.
    slots: usize,
    transactional: bool,
}

/// Runs a blocking librdkafka call on the blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> std::result::Result<T, String> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

impl KafkaSink {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Other(format!(
            "kafka sink (topic {}): {what}: {e}",
            self.config.topic
        ))
    }

    /// A producer; transactional (fenced and ready) for `slot`.
    async fn producer(&self, slot: Option<usize>) -> Result<Arc<KafkaProducer>> {
        let mut defaults = vec![
            ("partitioner", "murmur2_random".to_string()),
            ("linger.ms", "5".to_string()),
            ("enable.idempotence", "true".to_string()),
        ];
        if let Some(slot) = slot {
            defaults.push((
                "transactional.id",
                format!("{}-{slot}", self.transactional_id),
            ));
            defaults.push(("transaction.timeout.ms", "60000".to_string()));
        }
        let defaults: Vec<(&str, &str)> = defaults.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let producer: KafkaProducer = self
            .config
            .endpoint
            .client_config(&defaults)?
            .create_with_context(DeliveryContext(Arc::clone(&self.delivery)))
            .map_err(|e| self.err("creating the producer", e))?;
        let producer = Arc::new(producer);
        if slot.is_some() {
            let p = Arc::clone(&producer);
            blocking(move || p.init_transactions(CALL_TIMEOUT))
                .await
                .map_err(|e| self.err("initialising transactions", e))?;
        }
        Ok(producer)
    }

    /// An idle transactional producer with a transaction begun.
    async fn begin(&mut self) -> Result<Slot> {
        let slot = match self.idle.pop() {
            Some(s) => s,
            None => {
                let slot = self.slots;
                self.slots += 1;
                Slot {
                    producer: self.producer(Some(slot)).await?,
                    slot,
                }
            }
        };
        slot.producer
            .begin_transaction()
            .map_err(|e| self.err("beginning a transaction", e))?;
        Ok(slot)
    }

    /// Creates the topic when it is missing and `create` is set; fails
    /// naming the brokers when they cannot be reached.
    async fn ensure_topic(&self) -> Result<()> {
        let endpoint = &self.config.endpoint;
        let probe: Arc<BaseConsumer> = Arc::new(
            endpoint
                .client_config(&[])?
                .create()
                .map_err(|e| self.err("connecting", e))?,
        );
        match endpoint.partitions(&probe, &self.config.topic).await {
            Ok(_) => return Ok(()),
            Err(e) if !self.config.create || e.to_string().contains("cannot connect") => {
                return Err(e);
            }
            Err(_) => {}
        }
        let admin: AdminClient<DefaultClientContext> = endpoint
            .client_config(&[])?
            .create()
            .map_err(|e| self.err("connecting", e))?;
        let topic = NewTopic::new(
            &self.config.topic,
            self.config.partitions,
            TopicReplication::Fixed(1),
        );
        let results = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .map_err(|e| self.err("creating the topic", e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(self.err("creating the topic", code)),
            }
        }
        Ok(())
    }

    /// Waits until every record sent is delivered, then reports a failed
    /// delivery. (librdkafka's flush, as rdkafka calls it, sleeps 100 ms
    /// when the producer's own thread serves the delivery reports.)
    async fn drain(&self, producer: &KafkaProducer) -> Result<()> {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        while producer.in_flight_count() > 0 {
            if tokio::time::Instant::now() > deadline {
                return Err(self.err(
                    "flushing",
                    format!("records still undelivered after {CALL_TIMEOUT:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.delivery_failure()
    }

    fn delivery_failure(&self) -> Result<()> {
        match self.delivery.failed.lock().map(|f| f.clone()) {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(self.err("delivering", e)),
            Err(_) => Err(self.err("delivering", "a delivery report panicked")),
        }
    }
}

/// Records `send` may be refused with a full queue; wait this long between tries.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(2);

#[async_trait]
impl Sink for KafkaSink {
    async fn open(&mut self, checkpointing: Option<Vec<serde_json::Value>>) -> Result<()> {
        self.ensure_topic().await?;
        let Some(staged) = checkpointing else {
            self.active = Some(Slot {
                producer: self.producer(None).await?,
                slot: 0,
            });
            return Ok(());
        };
        self.transactional = true;
        // Fence every slot a previous run may have used.
        let used = staged
            .iter()
            .filter_map(|s| s.get("slots")?.as_u64())
            .max()
            .map_or(0, |n| n as usize);
        for slot in 0..used.max(SLOTS) {
            let producer = self.producer(Some(slot)).await?;
            self.idle.push(Slot { producer, slot });
        }
        self.slots = used.max(SLOTS);
        for s in &staged {
            if let Some(slot) = s.get("slot") {
                tracing::info!(
                    topic = %self.config.topic,
                    transactional_id = %format!("{}-{slot}", self.transactional_id),
                    "restored after a crash: the restored checkpoint's transaction is \
                     committed if its commit reached the broker before the crash \
                     (librdkafka cannot resume another process's transaction)"
                );
            }
        }
        let first = self.begin().await?;
        self.active = Some(first);
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.delivery_failure()?;
        let messages = self.encoder.encode(&batch).await?;
        let keys = match self.key {
            None => None,
            Some(i) => {
                let column = batch.column(i);
                Some(if column.data_type() == &DataType::Utf8 {
                    Arc::clone(column)
                } else {
                    arrow::compute::cast(column, &DataType::Utf8)
                        .map_err(|e| Error::arrow("casting the key column to text", e))?
                })
            }
        };
        let keys = keys.as_ref().map(|k| k.as_string::<i32>());
        let Some(active) = &self.active else {
            return Err(self.err("producing", "not connected"));
        };
        let producer = Arc::clone(&active.producer);
        for (row, payload) in messages.iter().enumerate() {
            let mut record = BaseRecord::to(&self.config.topic).payload(payload.as_slice());
            if let Some(keys) = keys
                && keys.is_valid(row)
            {
                record = record.key(keys.value(row).as_bytes());
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(QUEUE_FULL_WAIT).await;
                    }
                    Err((e, _)) => return Err(self.err("producing", e)),
                }
            }
        }
        Ok(())
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<serde_json::Value>> {
        if !self.transactional {
            return Ok(Vec::new());
        }
        let Some(active) = self.active.take() else {
            return Err(self.err("committing", "no open transaction"));
        };
        // Everything sent reaches the broker inside the open transaction.
        self.drain(&active.producer).await?;
        let staged = serde_json::json!({ "slot": active.slot, "slots": self.slots });
        self.pending.push((checkpoint, active));
        self.active = Some(self.begin().await?);
        Ok(vec![staged])
    }

    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        let mut ready = Vec::new();
        let pending = std::mem::take(&mut self.pending);
        for (id, slot) in pending {
            if id <= checkpoint {
                ready.push(slot);
            } else {
                self.pending.push((id, slot));
            }
        }
        for slot in ready {
            let p = Arc::clone(&slot.producer);
            blocking(move || p.commit_transaction(CALL_TIMEOUT))
                .await
                .map_err(|e| self.err("committing the transaction", e))?;
            self.idle.push(slot);
        }
        Ok(())
    }

    async fn abort(&mut self, checkpoint: u64) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        for (id, slot) in pending {
            if id == checkpoint {
                let p = Arc::clone(&slot.producer);
                blocking(move || p.abort_transaction(CALL_TIMEOUT))
                    .await
                    .map_err(|e| self.err("aborting the transaction", e))?;
                self.idle.push(slot);
            } else {
                self.pending.push((id, slot));
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        let p = Arc::clone(&active.producer);
        if self.transactional {
            // Rows after the last checkpoint: the runtime takes a final
            // checkpoint before finishing, so this transaction is empty.
            blocking(move || p.abort_transaction(CALL_TIMEOUT))
                .await
                .map_err(|e| self.err("closing the transaction", e))?;
            self.delivery_failure()
        } else {
            self.drain(&p).await
        }
    }
}
