//! `redis`: reads a Redis stream through a consumer group.
//!
//! Each instance is one consumer of the group (`{consumer}-{instance}`), so
//! the group spreads the stream's entries over the instances. An entry's
//! message is its field `field` (default `data`), decoded by `format`; rows
//! also carry the entry id (`_id`) and the time in it (`_timestamp`).
//!
//! Entries are acknowledged (`XACK`) only when the checkpoint covering them
//! completes, and a restored instance first replays its own pending entries
//! after the checkpointed position: exactly-once with checkpoints,
//! at-least-once without (entries are then acknowledged once handed on).
//! `bounded: true` reads the entries present at start and ends (job mode).
//!
//! ```yaml
//! - name: orders
//!   type: redis
//!   dlq: bad
//!   config: {url: "redis://127.0.0.1:6379", stream: orders, group: shop, bounded: true}
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::{
    DeadLetter, Diagnostic, Diagnostics, Error, Result, Source, SourceBatch, SourceOffset,
};

use crate::message::{MessageDecoder, MessageFormat, Start};
use crate::registry::{SourceContext, SourceFactory};
use streamflow_tls::TlsOptions;

/// How to reach a Redis server (shared by the source and the sink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisEndpoint {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Environment variable holding the password (never printed).
    pub password_env: Option<String>,
    /// TLS settings (implied by `rediss://`).
    pub tls: Option<TlsOptions>,
}

impl RedisEndpoint {
    /// The TLS of the connection, if any.
    fn tls(&self) -> Option<TlsOptions> {
        crate::server::tls(self.tls.as_ref(), self.url.starts_with("rediss://"))
    }

    /// Validation of the url and TLS settings, at `at(key)`.
    pub(crate) fn check(
        &self,
        at: impl Fn(&str) -> String,
    ) -> std::result::Result<(), Diagnostics> {
        crate::server::check_tls(&at, self.tls().as_ref())?;
        self.client()
            .map(|_| ())
            .map_err(|m| Diagnostics::from(Diagnostic::new(at("url"), m)))
    }

    /// The client; the password comes from `password_env`.
    pub(crate) fn client(&self) -> std::result::Result<redis::Client, String> {
        let mut info: redis::ConnectionInfo = self
            .url
            .as_str()
            .parse()
            .map_err(|e| format!("invalid Redis url: {e}"))?;
        if let Some(var) = &self.password_env {
            let password =
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        match self.tls() {
            Some(tls) => tls_client(info, &tls),
            None => redis::Client::open(info).map_err(|e| format!("invalid Redis url: {e}")),
        }
    }

    /// The server's address, for messages (no credentials).
    pub(crate) fn address(&self) -> String {
        self.client()
            .map(|c| c.get_connection_info().addr().to_string())
            .unwrap_or_else(|_| "the configured Redis server".into())
    }

    /// A connection, retried with backoff for up to about 10 s.
    pub(crate) async fn connect(&self) -> Result<MultiplexedConnection> {
        let client = self.client().map_err(Error::Other)?;
        crate::server::connect_with_backoff("Redis", &self.address(), || {
            client.get_multiplexed_async_connection()
        })
        .await
    }

    /// A blocking connection, for planning (schema inference).
    pub(crate) fn connect_blocking(&self) -> std::result::Result<redis::Connection, String> {
        let client = self.client()?;
        client
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(|e| format!("cannot connect to Redis at {}: {e}", self.address()))
    }
}

/// A client connecting with TLS: verified against `ca_file` (or the
/// system's authorities), or not at all with `insecure_skip_verify`.
#[cfg(feature = "tls")]
fn tls_client(
    info: redis::ConnectionInfo,
    tls: &TlsOptions,
) -> std::result::Result<redis::Client, String> {
    streamflow_tls::install_default_provider();
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        other => return Err(format!("TLS needs a TCP address, not {other}")),
    };
    let info = info.set_addr(redis::ConnectionAddr::TcpTls {
        host,
        port,
        insecure: tls.insecure_skip_verify,
        tls_params: None,
    });
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read '{}': {e}", path.display()))
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    let root_cert = tls.ca_pem().map_err(|e| e.to_string())?;
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| format!("invalid Redis TLS settings: {e}"))
}

#[cfg(not(feature = "tls"))]
fn tls_client(
    _: redis::ConnectionInfo,
    _: &TlsOptions,
) -> std::result::Result<redis::Client, String> {
    Err("this build has no TLS (cargo feature `tls`)".into())
}

/// Settings of a `redis` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSourceConfig {
    /// The server.
    #[serde(flatten)]
    pub endpoint: RedisEndpoint,
    /// The stream key.
    pub stream: String,
    /// Consumer group (default `streamflow-<source name>`).
    pub group: Option<String>,
    /// Consumer name prefix (default the source name); instance i is `<consumer>-<i>`.
    pub consumer: Option<String>,
    /// Message format.
    #[serde(default)]
    pub format: MessageFormat,
    /// The entry field holding the message.
    #[serde(default = "default_field")]
    pub field: String,
    /// Declared schema (json, csv), column → type; json is inferred from
    /// the stream's first entries when absent.
    pub schema: Option<Map<String, Value>>,
    /// Schema registry of `avro` messages (default: `STREAMFLOW_REGISTRY`,
    /// or the server the flow runs in).
    pub registry: Option<String>,
    /// Where a new group starts.
    #[serde(default)]
    pub start: Start,
    /// Read the entries present at start, then end.
    #[serde(default)]
    pub bounded: bool,
    /// Entries per read.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

pub(crate) fn default_field() -> String {
    "data".into()
}
fn default_batch() -> usize {
    1000
}

/// Entries sampled to infer a JSON schema.
const INFER_ENTRIES: usize = 1000;

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: RedisSourceConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    if config.batch_size == 0 {
        return Err(fail("batch_size", "must be positive".into()));
    }
    config.endpoint.check(|k| ctx.at(k))?;
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
        Field::new("_id", DataType::Utf8, false),
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]);
    Ok(Arc::new(RedisSourceFactory {
        group: config
            .group
            .clone()
            .unwrap_or_else(|| format!("streamflow-{}", ctx.name)),
        consumer: config
            .consumer
            .clone()
            .unwrap_or_else(|| ctx.name.to_string()),
        values,
        schema,
        config: Arc::new(config),
    }))
}

/// The JSON schema of the stream's first entries.
fn infer(config: &RedisSourceConfig) -> std::result::Result<Schema, String> {
    let mut conn = config.endpoint.connect_blocking()?;
    let reply: redis::Value = redis::cmd("XRANGE")
        .arg(&config.stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(INFER_ENTRIES)
        .query(&mut conn)
        .map_err(|e| format!("reading stream '{}': {e}", config.stream))?;
    let entries = entries_of(reply, &config.field);
    crate::message::infer_json(entries.iter().filter_map(|e| e.message.as_deref())).unwrap_or_else(
        || {
            Err(format!(
                "stream '{}' has no entries with field '{}' to infer a schema from; declare `schema`",
                config.stream, config.field
            ))
        },
    )
}

/// A stream entry: its id and the message in the configured field.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: String,
    /// `None`: the entry has no such field (or was deleted).
    pub(crate) message: Option<Vec<u8>>,
}

fn text(v: redis::Value) -> Option<Vec<u8>> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// The entries of an `XRANGE` reply (or of one stream of `XREADGROUP`),
/// taking each entry's `field` out of the reply without copying it.
pub(crate) fn entries_of(reply: redis::Value, field: &str) -> Vec<Entry> {
    let redis::Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let redis::Value::Array(pair) = item else {
                return None;
            };
            let mut pair = pair.into_iter();
            let id = String::from_utf8(text(pair.next()?)?).ok()?;
            let mut message = None;
            let fields: Vec<redis::Value> = match pair.next() {
                Some(redis::Value::Array(f)) => f,
                Some(redis::Value::Map(m)) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => Vec::new(),
            };
            let mut fields = fields.into_iter();
            while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                if text(k).is_some_and(|k| k == field.as_bytes()) {
                    message = text(v);
                    break;
                }
            }
            Some(Entry { id, message })
        })
        .collect()
}

/// The entries of the one stream an `XREADGROUP` reply holds.
fn read_reply(reply: redis::Value, field: &str) -> Vec<Entry> {
    let stream = match reply {
        redis::Value::Array(streams) => streams.into_iter().next().and_then(|s| match s {
            redis::Value::Array(kv) => kv.into_iter().nth(1),
            _ => None,
        }),
        redis::Value::Map(streams) => streams.into_iter().next().map(|(_, v)| v),
        _ => None,
    };
    stream.map(|s| entries_of(s, field)).unwrap_or_default()
}

struct RedisSourceFactory {
    config: Arc<RedisSourceConfig>,
    group: String,
    consumer: String,
    values: crate::message::Values,
    schema: SchemaRef,
}

impl SourceFactory for RedisSourceFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn bounded(&self) -> bool {
        self.config.bounded
    }

    fn create(&self, instance: usize, _parallelism: usize) -> Result<Box<dyn Source>> {
        Ok(Box::new(RedisSource {
            config: Arc::clone(&self.config),
            group: self.group.clone(),
            consumer: format!("{}-{instance}", self.consumer),
            decoder: MessageDecoder::new(self.config.format, &self.values),
            schema: Arc::clone(&self.schema),
            conn: None,
            checkpointing: false,
            replay_after: Some("0-0".into()),
            acked_through: None,
            last: None,
            end: None,
            unacked: VecDeque::new(),
            barriers: VecDeque::new(),
        }))
    }
}

/// A stream entry id, `ms-seq`, comparable.
fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

struct RedisSource {
    config: Arc<RedisSourceConfig>,
    group: String,
    consumer: String,
    decoder: MessageDecoder,
    schema: SchemaRef,
    conn: Option<MultiplexedConnection>,
    checkpointing: bool,
    /// While replaying this consumer's pending entries: the id after which
    /// to continue (`None` once they are all replayed).
    replay_after: Option<String>,
    /// Pending entries up to this id were covered by the restored
    /// checkpoint: acknowledge them, do not replay them.
    acked_through: Option<String>,
    /// The last entry handed on.
    last: Option<String>,
    /// Bounded: the stream's last entry at start (`None`: not yet known).
    end: Option<Option<String>>,
    /// Entries handed on and not yet acknowledged, in order.
    unacked: VecDeque<String>,
    /// Checkpoints taken and not yet complete, with the last entry each covers.
    barriers: VecDeque<(u64, Option<String>)>,
}

impl RedisSource {
    fn err(&self, what: &str, e: redis::RedisError) -> Error {
        Error::Other(format!("{what} stream '{}': {e}", self.config.stream))
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let mut conn = self.config.endpoint.connect().await?;
        let start = match self.config.start {
            Start::Earliest => "0",
            Start::Latest => "$",
        };
        let created: redis::RedisResult<()> = conn
            .xgroup_create_mkstream(&self.config.stream, &self.group, start)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(self.err("creating the group of", e));
        }
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn ack(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await?;
        let _: i64 = conn
            .xack(&self.config.stream, &self.group, ids)
            .await
            .map_err(|e| self.err("acknowledging entries of", e))?;
        Ok(())
    }

    /// Reads entries after `id` (`>`: new ones) for this consumer.
    async fn read(&mut self, id: &str, block: Option<usize>) -> Result<Vec<Entry>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.config.batch_size);
        if let Some(ms) = block {
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS").arg(&self.config.stream).arg(id);
        let reply: redis::Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err("reading", e))?;
        Ok(read_reply(reply, &self.config.field))
    }

    /// The next entries to hand on: pending ones first, then new ones.
    async fn next_entries(&mut self) -> Result<Option<Vec<Entry>>> {
        while let Some(after) = self.replay_after.clone() {
            let entries = self.read(&after, None).await?;
            let Some(last) = entries.last() else {
                self.replay_after = None;
                break;
            };
            self.replay_after = Some(last.id.clone());
            // Covered by the restored checkpoint: acknowledge, skip.
            let through = self.acked_through.as_deref().map(id_key);
            let (done, fresh): (Vec<Entry>, Vec<Entry>) = entries
                .into_iter()
                .partition(|e| through.is_some_and(|t| id_key(&e.id) <= t));
            self.ack(&done.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
                .await?;
            if !fresh.is_empty() {
                return Ok(Some(fresh));
            }
        }
        if self.config.bounded {
            let end = match &self.end {
                Some(end) => end.clone(),
                None => {
                    let mut conn = self.connection().await?;
                    let last: redis::Value = conn
                        .xrevrange_count(&self.config.stream, "+", "-", 1)
                        .await
                        .map_err(|e| self.err("reading", e))?;
                    let end = entries_of(last, "").into_iter().next().map(|e| e.id);
                    self.end = Some(end.clone());
                    end
                }
            };
            let Some(end) = end else {
                return Ok(None);
            };
            let mut entries = self.read(">", None).await?;
            // Entries added after the start are left for a later run.
            entries.retain(|e| id_key(&e.id) <= id_key(&end));
            return Ok((!entries.is_empty()).then_some(entries));
        }
        Ok(Some(self.read(">", Some(100)).await?))
    }

    fn rows(&self, data: RecordBatch, entries: &[Entry], rows: &[usize]) -> Result<RecordBatch> {
        let ids = StringArray::from_iter_values(rows.iter().map(|&i| entries[i].id.as_str()));
        let times = TimestampMillisecondArray::from_iter_values(
            rows.iter().map(|&i| id_key(&entries[i].id).0 as i64),
        );
        crate::message::with_metadata(
            &self.schema,
            &data,
            [Arc::new(ids) as ArrayRef, Arc::new(times)],
        )
    }
}

#[async_trait]
impl Source for RedisSource {
    async fn open(&mut self, checkpointing: bool) -> Result<()> {
        self.checkpointing = checkpointing;
        self.connection().await.map(drop)
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        if !self.checkpointing {
            let handed_on: Vec<String> = self.unacked.drain(..).collect();
            self.ack(&handed_on).await?;
        }
        let Some(entries) = self.next_entries().await? else {
            return Ok(None);
        };
        let Some(last) = entries.last() else {
            return Ok(Some(SourceBatch::default()));
        };
        self.last = Some(last.id.clone());
        self.unacked.extend(entries.iter().map(|e| e.id.clone()));
        let field = self.config.field.clone();
        let mut messages = Vec::with_capacity(entries.len());
        let mut kept = Vec::with_capacity(entries.len());
        let mut dead_letters = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match e.message.as_deref() {
                Some(m) => {
                    messages.push(m);
                    kept.push(i);
                }
                None => dead_letters.push(DeadLetter {
                    file: Some(format!("{}/{}", self.config.stream, e.id)),
                    line: None,
                    payload: None,
                    error: format!("entry has no field '{field}'"),
                }),
            }
        }
        let stream = self.config.stream.clone();
        let decoded = self
            .decoder
            .decode(&messages, |i| format!("{stream}/{}", entries[kept[i]].id))
            .await?;
        dead_letters.extend(decoded.dead_letters);
        // In entry order (the file column holds `stream/id`).
        dead_letters.sort_by_key(|d| {
            d.file
                .as_deref()
                .and_then(|f| f.rsplit_once('/'))
                .map(|(_, id)| id_key(id))
        });
        let rows: Vec<usize> = decoded.rows.iter().map(|&i| kept[i]).collect();
        let data = match decoded.batch {
            Some(b) => Some(self.rows(b, &entries, &rows)?),
            None => None,
        };
        Ok(Some(SourceBatch {
            data,
            dead_letters,
            splits: None,
        }))
    }

    fn offset(&mut self, checkpoint: u64) -> SourceOffset {
        self.barriers.push_back((checkpoint, self.last.clone()));
        SourceOffset::Broker(serde_json::json!({ "last": self.last }))
    }

    async fn seek(&mut self, offset: &SourceOffset) -> Result<()> {
        match offset {
            SourceOffset::None => Ok(()),
            SourceOffset::Broker(v) => {
                let last = v.get("last").and_then(Value::as_str).map(str::to_string);
                self.acked_through = last.clone();
                self.last = last;
                Ok(())
            }
            other => Err(Error::Other(format!(
                "a redis source cannot resume from {other:?}"
            ))),
        }
    }

    async fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<()> {
        let mut covered = None;
        while self
            .barriers
            .front()
            .is_some_and(|(id, _)| *id <= checkpoint)
        {
            covered = self.barriers.pop_front().map(|(_, last)| last);
        }
        let Some(Some(through)) = covered else {
            return Ok(());
        };
        let through = id_key(&through);
        let mut ids = Vec::new();
        while self.unacked.front().is_some_and(|id| id_key(id) <= through) {
            ids.extend(self.unacked.pop_front());
        }
        self.ack(&ids).await
    }
}
