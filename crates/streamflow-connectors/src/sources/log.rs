//! `log`: reads a space of StreamFlow's durable log — every segment merged
//! in write order (by space offset), or one `segment` by sequence.
//!
//! The position (the last offset or sequence handed on) is recorded in
//! checkpoints, and a restore goes on right after it: exactly-once with
//! checkpoints. A live space is followed (woken by the log's status
//! subscription); `bounded: true` reads what is there at start, then ends.
//! One instance reads (the others end at once). Rows carry `_segment`,
//! `_sequence`, `_offset` and `_timestamp` (when the entry was written).
//!
//! ```yaml
//! - name: bids
//!   type: log
//!   config: {space: bids, from: earliest, schema: {auction: int64, price: int64}}
//! ```

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Source, SourceBatch, SourceOffset};
use streamflow_log::{Entry, LogClient, SegmentRange, SpaceRange, Subscription};

use crate::log::LogEndpoint;
use crate::message::{MessageDecoder, MessageFormat, Start};
use crate::registry::{SourceContext, SourceFactory};

/// Where a new reader starts: `earliest`, `latest`, or an offset (a
/// sequence when reading one segment), inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStart {
    /// The first entry at or after this offset (sequence).
    At(u64),
    /// The first entry kept, or entries written from now on.
    Named(Start),
}

impl<'de> Deserialize<'de> for LogStart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if s == "earliest" => Ok(LogStart::Named(Start::Earliest)),
            Value::String(s) if s == "latest" => Ok(LogStart::Named(Start::Latest)),
            Value::Number(n) if n.as_u64().is_some_and(|n| n > 0) => {
                Ok(LogStart::At(n.as_u64().unwrap_or(1)))
            }
            other => Err(serde::de::Error::custom(format!(
                "expected earliest, latest or an offset from 1, got {other}"
            ))),
        }
    }
}

impl Default for LogStart {
    fn default() -> Self {
        LogStart::Named(Start::Earliest)
    }
}

/// Settings of a `log` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSourceConfig {
    /// Which log.
    #[serde(flatten)]
    pub endpoint: LogEndpoint,
    /// The space.
    pub space: String,
    /// Only this segment (by sequence); default: the whole space.
    pub segment: Option<String>,
    /// Where to start when not restoring.
    #[serde(default)]
    pub from: LogStart,
    /// Message format of the entries' payloads.
    #[serde(default)]
    pub format: MessageFormat,
    /// Declared schema (json, csv), column → type; json is inferred from
    /// the space's first 200 entries when absent.
    pub schema: Option<Map<String, Value>>,
    /// Schema registry of `avro`/`protobuf` payloads.
    pub registry: Option<String>,
    /// Read the entries present at start, then end.
    #[serde(default)]
    pub bounded: bool,
    /// Entries per read.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_batch() -> usize {
    4096
}

/// Entries sampled to infer a JSON schema.
const INFER_ENTRIES: usize = 200;

/// How long a caught-up reader waits for news before handing on an empty batch.
const WAIT: Duration = Duration::from_millis(200);

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: LogSourceConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    config.endpoint.check().map_err(|(k, m)| fail(k, m))?;
    if config.batch_size == 0 {
        return Err(fail("batch_size", "must be positive".into()));
    }
    if config.space.is_empty() {
        return Err(fail("space", "must be named".into()));
    }
    let values = crate::message::value_schema(
        &crate::message::ValueSource {
            format: config.format,
            declared: config.schema.as_ref(),
            registry: config.registry.as_deref(),
            default_subject: format!("{}-value", config.space),
            at: ctx.at("schema"),
        },
        || infer(&config).map_err(|m| fail("space", m)),
    )?;
    let schema = values.with_columns([
        Field::new("_segment", DataType::Utf8, false),
        Field::new("_sequence", DataType::Int64, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]);
    Ok(Arc::new(LogSourceFactory {
        values,
        schema,
        config: Arc::new(config),
    }))
}

/// The JSON schema of the space's first entries.
fn infer(config: &LogSourceConfig) -> std::result::Result<Schema, String> {
    let (endpoint, space, segment) = (
        config.endpoint.clone(),
        config.space.clone(),
        config.segment.clone(),
    );
    let sample = crate::server::at_plan_time(move || async move {
        let log = endpoint.connect().await.map_err(|e| e.to_string())?;
        let entries = match &segment {
            Some(segment) => {
                let range = SegmentRange {
                    limit: INFER_ENTRIES,
                    ..SegmentRange::default()
                };
                log.consume_segment(&space, segment, range).await
            }
            None => {
                let range = SpaceRange {
                    limit: INFER_ENTRIES,
                    ..SpaceRange::default()
                };
                log.consume_space(&space, range).await
            }
        };
        entries.map_err(|e| e.to_string())
    })?;
    crate::message::infer_json(sample.iter().map(|e| e.payload.as_slice())).unwrap_or_else(|| {
        Err(format!(
            "space '{}' has no entries to infer a schema from; declare `schema`",
            config.space
        ))
    })
}

struct LogSourceFactory {
    config: Arc<LogSourceConfig>,
    values: crate::message::Values,
    schema: SchemaRef,
}

impl SourceFactory for LogSourceFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn bounded(&self) -> bool {
        self.config.bounded
    }

    fn create(&self, instance: usize, _parallelism: usize) -> Result<Box<dyn Source>> {
        Ok(Box::new(LogSource {
            config: Arc::clone(&self.config),
            decoder: MessageDecoder::new(self.config.format, &self.values),
            schema: Arc::clone(&self.schema),
            log: None,
            news: None,
            position: 0,
            end: None,
            done: instance > 0,
        }))
    }
}

struct LogSource {
    config: Arc<LogSourceConfig>,
    decoder: MessageDecoder,
    schema: SchemaRef,
    log: Option<LogClient>,
    /// Wakes a caught-up reader when the space grows.
    news: Option<Subscription>,
    /// The last offset (sequence, for one segment) handed on.
    position: u64,
    /// Bounded: the last offset (sequence) present at start.
    end: Option<u64>,
    done: bool,
}

impl LogSource {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Other(format!(
            "log source (space {}, {}): {what}: {e}",
            self.config.space,
            self.config.endpoint.describe()
        ))
    }

    fn log(&self) -> Result<&LogClient> {
        self.log
            .as_ref()
            .ok_or_else(|| self.err("reading", "not open"))
    }

    /// What reading needs, without borrowing `self` across awaits.
    fn reader(&self) -> Result<Reader> {
        Ok(Reader {
            log: self.log()?.clone(),
            config: Arc::clone(&self.config),
            position: self.position,
            end: self.end,
        })
    }
}

/// A read of the log from where a source stands.
struct Reader {
    log: LogClient,
    config: Arc<LogSourceConfig>,
    position: u64,
    end: Option<u64>,
}

impl Reader {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Other(format!(
            "log source (space {}, {}): {what}: {e}",
            self.config.space,
            self.config.endpoint.describe()
        ))
    }

    /// The last offset (or sequence) written so far.
    async fn written(self) -> Result<u64> {
        let last = match &self.config.segment {
            Some(segment) => self
                .log
                .peek(&self.config.space, segment)
                .await
                .map(|s| s.last_sequence),
            None => self.log.last_offset(&self.config.space).await,
        };
        last.map_err(|e| self.err("reading the end", e))
    }

    async fn read(self, limit: usize) -> Result<Vec<Entry>> {
        let space = &self.config.space;
        let entries = match &self.config.segment {
            Some(segment) => {
                let range = SegmentRange {
                    min_sequence: self.position + 1,
                    max_sequence: self.end.unwrap_or(0),
                    limit,
                    ..SegmentRange::default()
                };
                self.log.consume_segment(space, segment, range).await
            }
            None => {
                let range = SpaceRange {
                    offset: self.position,
                    limit,
                    ..SpaceRange::default()
                };
                let end = self.end;
                self.log
                    .consume_space(space, range)
                    .await
                    .map(|mut entries| {
                        if let Some(end) = end {
                            entries.retain(|e| e.offset <= end);
                        }
                        entries
                    })
            }
        };
        entries.map_err(|e| self.err("reading", e))
    }
}

#[async_trait]
impl Source for LogSource {
    async fn open(&mut self, _checkpointing: bool) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.log = Some(self.config.endpoint.connect().await?);
        self.position = match self.config.from {
            LogStart::Named(Start::Earliest) => 0,
            LogStart::Named(Start::Latest) => self.reader()?.written().await?,
            LogStart::At(n) => n.saturating_sub(1),
        };
        if self.config.bounded {
            self.end = Some(self.reader()?.written().await?);
        }
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        if self.done || self.end.is_some_and(|end| self.position >= end) {
            self.done = true;
            return Ok(None);
        }
        let entries = self.reader()?.read(self.config.batch_size).await?;
        if entries.is_empty() {
            if self.end.is_some() {
                // Bounded, and what was there at start is read (or gone).
                self.done = true;
                return Ok(None);
            }
            if self.news.is_none() {
                let reader = self.reader()?;
                let segment = reader.config.segment.as_deref().unwrap_or("*");
                let news = reader
                    .log
                    .subscribe(&reader.config.space, segment)
                    .await
                    .map_err(|e| reader.err("following", e));
                self.news = Some(news?);
            }
            if let Some(news) = self.news.as_mut() {
                let _ = tokio::time::timeout(WAIT, news.next()).await;
            }
            return Ok(Some(SourceBatch::default()));
        }
        self.position = match (&self.config.segment, entries.last()) {
            (Some(_), Some(last)) => last.sequence,
            (None, Some(last)) => last.offset,
            (_, None) => self.position,
        };
        let space = self.config.space.clone();
        let payloads: Vec<&[u8]> = entries.iter().map(|e| e.payload.as_slice()).collect();
        let decoded = self
            .decoder
            .decode(&payloads, |i| {
                format!("{space}/{}/{}", entries[i].segment, entries[i].sequence)
            })
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
                            rows.iter().map(|&i| entries[i].segment.as_str()),
                        )) as ArrayRef,
                        Arc::new(Int64Array::from_iter_values(
                            rows.iter().map(|&i| entries[i].sequence as i64),
                        )),
                        Arc::new(Int64Array::from_iter_values(
                            rows.iter().map(|&i| entries[i].offset as i64),
                        )),
                        Arc::new(TimestampMillisecondArray::from_iter_values(
                            rows.iter().map(|&i| entries[i].timestamp),
                        )),
                    ],
                )
            })
            .transpose()?;
        Ok(Some(SourceBatch {
            data,
            dead_letters: decoded.dead_letters,
            splits: None,
        }))
    }

    fn offset(&mut self, _checkpoint: u64) -> SourceOffset {
        SourceOffset::Broker(serde_json::json!({ "position": self.position }))
    }

    async fn seek(&mut self, offset: &SourceOffset) -> Result<()> {
        match offset {
            SourceOffset::None => Ok(()),
            SourceOffset::Broker(v) => {
                if let Some(p) = v.get("position").and_then(Value::as_u64) {
                    self.position = p;
                }
                Ok(())
            }
            other => Err(Error::Other(format!(
                "a log source cannot resume from {other:?}"
            ))),
        }
    }
}
