//! `mqtt`: subscribes to an MQTT topic filter (wildcards allowed) over
//! MQTT 5 with a persistent session (clean start off, a session expiry of
//! a day), so messages published while the pipeline is down wait at the
//! broker.
//!
//! With QoS 1 or 2, messages are acknowledged only when the checkpoint
//! covering them completes (without checkpoints: once handed on). A crash
//! before that makes the broker deliver them again to the same client id:
//! at-least-once. MQTT cannot replay what was acknowledged, so exactly-once
//! is not claimed; QoS 0 is at-most-once. The client asks the broker for a
//! receive window of `receive_maximum` unacknowledged messages: a
//! checkpoint interval holding more than that stalls delivery until the
//! checkpoint completes. Rows carry `_topic`. One instance subscribes.
//!
//! ```yaml
//! - name: readings
//!   type: mqtt
//!   config: {url: "mqtt://127.0.0.1:1883", topic: "sensors/+/temp", qos: 1, schema: {sensor: string, celsius: float64}}
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, SchemaRef};
use async_trait::async_trait;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Source, SourceBatch};
use streamflow_tls::TlsOptions;
use tokio::sync::mpsc;

use super::acknowledgements::Acknowledgements;
use crate::message::{MessageDecoder, MessageFormat};
use crate::registry::{SourceContext, SourceFactory};

/// How to reach an MQTT broker (shared by the source and the sink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttEndpoint {
    /// `mqtt://host:port` (port 1883 when absent), or `mqtts://host:port`
    /// for TLS (port 8883).
    pub url: String,
    /// Client id (default `streamflow-<node name>`); a persistent session
    /// is kept per client id.
    pub client_id: Option<String>,
    /// User name, with `password_env`.
    pub user: Option<String>,
    /// Environment variable holding the password (never printed).
    pub password_env: Option<String>,
    /// TLS settings (implied by `mqtts://`).
    pub tls: Option<TlsOptions>,
}

impl MqttEndpoint {
    /// Host, port and whether the scheme asks for TLS.
    pub(crate) fn address(&self) -> std::result::Result<(String, u16, bool), String> {
        let (rest, tls) = match self.url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (rest, false),
            Some(("mqtts" | "ssl", rest)) => (rest, true),
            _ => return Err(format!("'{}' is not an mqtt:// or mqtts:// url", self.url)),
        };
        let rest = rest.trim_end_matches('/');
        match rest.rsplit_once(':') {
            Some((host, port)) => Ok((
                host.to_string(),
                port.parse()
                    .map_err(|_| format!("'{}': the port is not a number", self.url))?,
                tls,
            )),
            None => Ok((rest.to_string(), if tls { 8883 } else { 1883 }, tls)),
        }
    }

    /// The TLS of the connection, if any.
    pub(crate) fn tls(&self) -> Option<TlsOptions> {
        let scheme_tls = self.address().is_ok_and(|(_, _, tls)| tls);
        crate::server::tls(self.tls.as_ref(), scheme_tls)
    }

    /// Validation of the url and TLS settings, at `at(key)`.
    pub(crate) fn check(
        &self,
        at: impl Fn(&str) -> String,
    ) -> std::result::Result<(), Diagnostics> {
        self.address()
            .map_err(|m| Diagnostics::from(Diagnostic::new(at("url"), m)))?;
        crate::server::check_tls(at, self.tls().as_ref())
    }

    /// Client options for `client_id` (persistent session, manual acks).
    pub(crate) fn options(&self, client_id: &str) -> Result<MqttOptions> {
        let (host, port, _) = self.address().map_err(Error::Other)?;
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
        if let Some(user) = &self.user {
            let password = match &self.password_env {
                Some(var) => std::env::var(var)
                    .map_err(|_| Error::Other(format!("environment variable {var} is not set")))?,
                None => String::new(),
            };
            options.set_credentials(user.clone(), password);
        }
        if let Some(tls) = self.tls() {
            options.set_transport(tls_transport(&tls)?);
        }
        Ok(options)
    }
}

#[cfg(feature = "tls")]
fn tls_transport(tls: &TlsOptions) -> Result<rumqttc::Transport> {
    let config = crate::server::tls_client_config(tls)?;
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
    ))
}

#[cfg(not(feature = "tls"))]
fn tls_transport(_: &TlsOptions) -> Result<rumqttc::Transport> {
    Err(Error::Other(
        "mqtt: this build has no TLS (cargo feature `tls`)".into(),
    ))
}

/// How long the broker keeps a disconnected client's session.
const SESSION_EXPIRY_SECS: u32 = 86_400;

/// The QoS of a `qos: 0|1|2` setting.
pub(crate) fn qos(level: u8) -> std::result::Result<QoS, String> {
    match level {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        other => Err(format!("qos is 0, 1 or 2, not {other}")),
    }
}

fn default_qos() -> u8 {
    1
}
fn default_receive_maximum() -> u16 {
    10_000
}
fn default_batch() -> usize {
    1000
}

/// Settings of an `mqtt` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// The broker.
    #[serde(flatten)]
    pub endpoint: MqttEndpoint,
    /// Topic filter (`+` and `#` wildcards allowed).
    pub topic: String,
    /// Subscription QoS.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Message format.
    #[serde(default)]
    pub format: MessageFormat,
    /// Declared schema (json, csv), column → type.
    pub schema: Option<Map<String, Value>>,
    /// Schema registry of `avro`/`protobuf` messages.
    pub registry: Option<String>,
    /// Unacknowledged messages the broker may send at once.
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
    /// Messages per batch at most.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: MqttSourceConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    config.endpoint.check(|k| ctx.at(k))?;
    qos(config.qos).map_err(|m| fail("qos", m))?;
    if config.topic.is_empty() {
        return Err(fail("topic", "must be named".into()));
    }
    if config.batch_size == 0 {
        return Err(fail("batch_size", "must be positive".into()));
    }
    let values = crate::message::value_schema(
        &crate::message::ValueSource {
            format: config.format,
            declared: config.schema.as_ref(),
            registry: config.registry.as_deref(),
            default_subject: format!("{}-value", config.topic),
            at: ctx.at("schema"),
        },
        || {
            Err(fail(
                "schema",
                "declare `schema` (an MQTT topic cannot be sampled without consuming it)".into(),
            ))
        },
    )?;
    let schema = values.with_columns([Field::new("_topic", DataType::Utf8, false)]);
    Ok(Arc::new(MqttSourceFactory {
        client_id: config
            .endpoint
            .client_id
            .clone()
            .unwrap_or_else(|| format!("streamflow-{}", ctx.name)),
        values,
        schema,
        config: Arc::new(config),
    }))
}

struct MqttSourceFactory {
    config: Arc<MqttSourceConfig>,
    client_id: String,
    values: crate::message::Values,
    schema: SchemaRef,
}

impl SourceFactory for MqttSourceFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn bounded(&self) -> bool {
        false
    }

    fn create(&self, instance: usize, _parallelism: usize) -> Result<Box<dyn Source>> {
        Ok(Box::new(MqttSource {
            config: Arc::clone(&self.config),
            client_id: self.client_id.clone(),
            decoder: MessageDecoder::new(self.config.format, &self.values),
            schema: Arc::clone(&self.schema),
            client: None,
            messages: None,
            poller: None,
            failure: Arc::default(),
            checkpointing: false,
            acks: Acknowledgements::default(),
            done: instance > 0,
        }))
    }
}

struct MqttSource {
    config: Arc<MqttSourceConfig>,
    client_id: String,
    decoder: MessageDecoder,
    schema: SchemaRef,
    client: Option<AsyncClient>,
    messages: Option<mpsc::Receiver<Publish>>,
    poller: Option<tokio::task::JoinHandle<()>>,
    /// Why the connection ended, once it has.
    failure: Arc<OnceLock<String>>,
    checkpointing: bool,
    /// Messages handed on, acknowledged when checkpoints complete.
    acks: Acknowledgements<Publish>,
    done: bool,
}

impl Drop for MqttSource {
    fn drop(&mut self) {
        if let Some(p) = self.poller.take() {
            p.abort();
        }
    }
}

/// What a connection's polling makes of its errors: until the broker has
/// accepted the connection once, a TLS failure (an untrusted certificate)
/// or a refusal (bad credentials) will not go away by retrying and ends
/// the connection, its reason kept in `failure`; other errors are logged
/// and the connection retried.
pub(crate) struct Reconnect {
    client_id: String,
    connected: bool,
    /// Why the connection ended, once it has.
    pub(crate) failure: Arc<OnceLock<String>>,
}

impl Reconnect {
    pub(crate) fn new(client_id: String) -> Self {
        Reconnect {
            client_id,
            connected: false,
            failure: Arc::default(),
        }
    }

    /// Notes a polled event (the broker's ConnAck).
    pub(crate) fn event(&mut self, event: &Event) {
        if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
            self.connected = true;
        }
    }

    /// After a polling error: `true` to poll again (after a pause),
    /// `false` when the connection is over.
    pub(crate) async fn retry(&mut self, e: &rumqttc::v5::ConnectionError) -> bool {
        let refused = matches!(e, rumqttc::v5::ConnectionError::ConnectionRefused(_));
        #[cfg(feature = "tls")]
        let refused = refused || matches!(e, rumqttc::v5::ConnectionError::Tls(_));
        if refused && !self.connected {
            let why = streamflow_core::error::describe(e);
            tracing::error!(client = %self.client_id, error = %why, "mqtt: the broker cannot be used");
            let _ = self.failure.set(why);
            return false;
        }
        tracing::warn!(client = %self.client_id, error = %e, "mqtt: connection lost; reconnecting");
        tokio::time::sleep(Duration::from_millis(500)).await;
        true
    }

    /// The reason the connection ended, or `otherwise`.
    pub(crate) fn why(failure: &OnceLock<String>, otherwise: &str) -> String {
        failure
            .get()
            .cloned()
            .unwrap_or_else(|| otherwise.to_string())
    }
}

/// Polls the connection (reconnecting after errors), handing incoming
/// publishes on; a full queue holds the connection back.
async fn poll(mut events: EventLoop, messages: mpsc::Sender<Publish>, mut reconnect: Reconnect) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if messages.send(p).await.is_err() {
                    return;
                }
            }
            Ok(event) => reconnect.event(&event),
            Err(e) => {
                if !reconnect.retry(&e).await {
                    return;
                }
            }
        }
    }
}

/// Acknowledges `messages` (QoS 1 and 2) through `client`.
async fn ack(client: Option<AsyncClient>, messages: Vec<Publish>) -> Result<()> {
    let Some(client) = client else {
        return Ok(());
    };
    for m in messages.iter().filter(|m| m.qos != QoS::AtMostOnce) {
        client
            .ack(m)
            .await
            .map_err(|e| Error::Other(format!("mqtt source: acknowledging: {e}")))?;
    }
    Ok(())
}

/// How long a pull waits for a first message.
const WAIT: Duration = Duration::from_millis(200);

#[async_trait]
impl Source for MqttSource {
    async fn open(&mut self, checkpointing: bool) -> Result<()> {
        self.checkpointing = checkpointing;
        if self.done {
            return Ok(());
        }
        let mut options = self.config.endpoint.options(&self.client_id)?;
        options
            .set_manual_acks(true)
            .set_receive_maximum(Some(self.config.receive_maximum));
        let (client, events) = AsyncClient::new(options, 1024);
        let qos = qos(self.config.qos).map_err(Error::Other)?;
        client
            .subscribe(self.config.topic.clone(), qos)
            .await
            .map_err(|e| Error::Other(format!("mqtt source: subscribing: {e}")))?;
        let (tx, rx) = mpsc::channel(self.config.batch_size.max(1) * 4);
        let reconnect = Reconnect::new(self.client_id.clone());
        self.failure = Arc::clone(&reconnect.failure);
        self.poller = Some(tokio::spawn(poll(events, tx, reconnect)));
        self.client = Some(client);
        self.messages = Some(rx);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        if self.done {
            return Ok(None);
        }
        if !self.checkpointing {
            let handed_on = self.acks.take_handed_on();
            ack(self.client.clone(), handed_on).await?;
        }
        let Some(messages) = self.messages.as_mut() else {
            return Err(Error::Other("mqtt source: not connected".into()));
        };
        let mut taken = Vec::new();
        match tokio::time::timeout(WAIT, messages.recv()).await {
            Ok(Some(m)) => taken.push(m),
            Ok(None) => {
                let why = Reconnect::why(&self.failure, "the connection ended");
                return Err(Error::Other(format!("mqtt source: {why}")));
            }
            Err(_) => return Ok(Some(SourceBatch::default())),
        }
        while taken.len() < self.config.batch_size {
            match messages.try_recv() {
                Ok(m) => taken.push(m),
                Err(_) => break,
            }
        }
        let payloads: Vec<&[u8]> = taken.iter().map(|m| m.payload.as_ref()).collect();
        let decoded = self
            .decoder
            .decode(&payloads, |i| {
                format!(
                    "{}/{}",
                    String::from_utf8_lossy(&taken[i].topic),
                    taken[i].pkid
                )
            })
            .await?;
        let data = decoded
            .batch
            .as_ref()
            .map(|values| {
                let topics = StringArray::from_iter_values(
                    decoded
                        .rows
                        .iter()
                        .map(|&i| String::from_utf8_lossy(&taken[i].topic).into_owned()),
                );
                crate::message::with_metadata(&self.schema, values, [Arc::new(topics) as ArrayRef])
            })
            .transpose()?;
        self.acks.handed_on(taken);
        Ok(Some(SourceBatch {
            data,
            dead_letters: decoded.dead_letters,
            splits: None,
        }))
    }

    fn offset(&mut self, checkpoint: u64) -> streamflow_core::SourceOffset {
        self.acks.barrier(checkpoint);
        streamflow_core::SourceOffset::None
    }

    async fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<()> {
        let due = self.acks.complete(checkpoint);
        ack(self.client.clone(), due).await
    }
}
