//! `mqtt`: publishes one message per row (MQTT 5), to the topic a column
//! names or a literal topic, at QoS 1 by default, optionally retained.
//!
//! A checkpoint completes only once the broker confirmed every message
//! published before its barrier (PUBACK, or PUBCOMP at QoS 2):
//! at-least-once (a replay after a crash publishes again; MQTT has no
//! de-duplication). Without a `client_id`, each run of each instance
//! connects under a fresh id with a clean session (a broker allows one
//! connection per id).
//!
//! ```yaml
//! - {name: out, type: mqtt, input: alerts, config: {url: "mqtt://127.0.0.1:1883", topic: alerts/high, qos: 1}}
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use serde::Deserialize;
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Sink};
use tokio::sync::Notify;

use crate::message::{MessageEncoder, MessageFormat};
use crate::registry::{SinkContext, SinkFactory};
use crate::sources::mqtt::{MqttEndpoint, Reconnect, qos};

/// Settings of an `mqtt` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// The broker.
    #[serde(flatten)]
    pub endpoint: MqttEndpoint,
    /// The topic: a column of the input (its value per row), or else this
    /// literal topic.
    pub topic: String,
    /// Publish QoS.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publish retained messages.
    #[serde(default)]
    pub retain: bool,
    /// Message format.
    #[serde(default)]
    pub format: MessageFormat,
    /// `avro`/`protobuf`: `{subject}` the rows' schema is registered under.
    pub schema: Option<serde_json::Map<String, serde_json::Value>>,
    /// Schema registry of `avro`/`protobuf`.
    pub registry: Option<String>,
}

fn default_qos() -> u8 {
    1
}

/// How long a checkpoint waits for the broker's confirmations.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let config: MqttSinkConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    config.endpoint.check(|k| ctx.at(k))?;
    qos(config.qos).map_err(|m| fail("qos", m))?;
    if config.topic.is_empty() {
        return Err(fail("topic", "must name a column or a topic".into()));
    }
    let column = ctx.input.index_of(&config.topic).ok();
    let encoder = MessageEncoder::new(&crate::message::EncoderSource {
        format: config.format,
        input: &ctx.input,
        declared: config.schema.as_ref(),
        registry: config.registry.as_deref(),
        default_subject: format!("{}-value", config.topic),
    })
    .map_err(|m| fail("format", m))?;
    Ok(Arc::new(MqttSinkFactory {
        // A broker allows one connection per client id: without a
        // configured one, each run of each instance gets its own, so two
        // flows (or two runs) writing at once do not throw each other off.
        client_id: config
            .endpoint
            .client_id
            .clone()
            .unwrap_or_else(|| super::replay_ids::run_token(&format!("streamflow-{}", ctx.name))),
        column,
        config: Arc::new(config),
        encoder,
    }))
}

struct MqttSinkFactory {
    config: Arc<MqttSinkConfig>,
    client_id: String,
    column: Option<usize>,
    encoder: MessageEncoder,
}

impl SinkFactory for MqttSinkFactory {
    fn create(&self, instance: usize) -> Result<Box<dyn Sink>> {
        Ok(Box::new(MqttSink {
            config: Arc::clone(&self.config),
            client_id: format!("{}-{instance}", self.client_id),
            column: self.column,
            encoder: self.encoder.clone(),
            client: None,
            poller: None,
            failure: Arc::default(),
            confirmed: Arc::new(Confirmed::default()),
            published: 0,
        }))
    }
}

/// Confirmations counted by the connection.
#[derive(Default)]
struct Confirmed {
    count: AtomicU64,
    changed: Notify,
}

struct MqttSink {
    config: Arc<MqttSinkConfig>,
    client_id: String,
    column: Option<usize>,
    encoder: MessageEncoder,
    client: Option<AsyncClient>,
    poller: Option<tokio::task::JoinHandle<()>>,
    /// Why the connection ended, once it has.
    failure: Arc<OnceLock<String>>,
    confirmed: Arc<Confirmed>,
    /// Messages published that the broker must confirm.
    published: u64,
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        if let Some(p) = self.poller.take() {
            p.abort();
        }
    }
}

/// Polls the connection, counting the broker's confirmations.
async fn poll(mut events: EventLoop, confirmed: Arc<Confirmed>, mut reconnect: Reconnect) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                confirmed.count.fetch_add(1, Ordering::Release);
                confirmed.changed.notify_waiters();
            }
            Ok(event) => reconnect.event(&event),
            Err(e) => {
                if !reconnect.retry(&e).await {
                    confirmed.changed.notify_waiters();
                    return;
                }
            }
        }
    }
}

impl MqttSink {
    fn client(&mut self) -> Result<AsyncClient> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let mut options = self.config.endpoint.options(&self.client_id)?;
        if self.config.endpoint.client_id.is_none() {
            // A fresh id per run: nothing for the broker to keep after it.
            options
                .set_clean_start(true)
                .set_session_expiry_interval(None);
        }
        let (client, events) = AsyncClient::new(options, 1024);
        let reconnect = Reconnect::new(self.client_id.clone());
        self.failure = Arc::clone(&reconnect.failure);
        self.poller = Some(tokio::spawn(poll(
            events,
            Arc::clone(&self.confirmed),
            reconnect,
        )));
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Waits until the broker confirmed every message published.
    async fn confirmations(&self) -> Result<()> {
        let wait = async {
            loop {
                let changed = self.confirmed.changed.notified();
                if let Some(why) = self.failure.get() {
                    return Err(Error::Other(format!("mqtt sink: {why}")));
                }
                if self.confirmed.count.load(Ordering::Acquire) >= self.published {
                    return Ok(());
                }
                // Woken by a confirmation, or look again shortly.
                let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
            }
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, wait)
            .await
            .map_err(|_| {
                Error::Other(format!(
                    "mqtt sink: the broker confirmed {} of {} messages within {CONFIRM_TIMEOUT:?}",
                    self.confirmed.count.load(Ordering::Acquire),
                    self.published
                ))
            })?
    }
}

#[async_trait]
impl Sink for MqttSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let messages = self.encoder.encode(&batch).await?;
        let topics = self
            .column
            .map(|i| super::destinations(&batch, i, "topic"))
            .transpose()
            .map_err(|m| Error::Other(format!("mqtt sink: {m}")))?;
        let qos = qos(self.config.qos).map_err(Error::Other)?;
        let client = self.client()?;
        for (row, message) in messages.into_iter().enumerate() {
            let topic = match &topics {
                Some(t) => t.value(row).to_string(),
                None => self.config.topic.clone(),
            };
            client
                .publish(topic, qos, self.config.retain, message)
                .await
                .map_err(|e| {
                    let why = Reconnect::why(&self.failure, &format!("publishing: {e}"));
                    Error::Other(format!("mqtt sink: {why}"))
                })?;
            if qos != QoS::AtMostOnce {
                self.published += 1;
            }
        }
        Ok(())
    }

    async fn pre_commit(&mut self, _checkpoint: u64) -> Result<Vec<serde_json::Value>> {
        self.confirmations().await?;
        Ok(Vec::new())
    }

    async fn finish(&mut self) -> Result<()> {
        self.confirmations().await?;
        if let Some(client) = &self.client {
            let _ = client.disconnect().await;
        }
        Ok(())
    }
}
