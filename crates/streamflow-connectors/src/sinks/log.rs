//! `log`: appends rows to a space of StreamFlow's durable log, one entry
//! per row, into the segment a column names (or a literal segment).
//!
//! Each segment is written by one sink instance, which numbers its entries
//! itself (its sequences continue the segment). With checkpoints, rows are
//! staged in the log (space `_staging`, each with its segment and the
//! sequence it will have there),
//! and copied into their segments when the checkpoint completes: a copy
//! replayed after a crash finds the sequences already present and skips
//! them, so every row lands exactly once. Without checkpoints rows are
//! appended as they come.
//!
//! ```yaml
//! - {name: out, type: log, input: bids, config: {space: bids, segment: auction}}
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::StringArray;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Sink};
use streamflow_log::{LogClient, Record, SegmentRange};

use crate::log::LogEndpoint;
use crate::message::{MessageEncoder, MessageFormat};
use crate::registry::{SinkContext, SinkFactory};

/// The space holding staged rows.
pub const STAGING: &str = "_staging";

/// Settings of a `log` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSinkConfig {
    /// Which log.
    #[serde(flatten)]
    pub endpoint: LogEndpoint,
    /// The space.
    pub space: String,
    /// The segment: a column of the input (its value per row), or else
    /// this literal name.
    pub segment: String,
    /// Message format of the entries' payloads.
    #[serde(default)]
    pub format: MessageFormat,
    /// `avro`/`protobuf`: `{subject}` the rows' schema is registered under
    /// (default `<space>-value`).
    pub schema: Option<serde_json::Map<String, Value>>,
    /// Schema registry of `avro`/`protobuf`.
    pub registry: Option<String>,
    /// Names this sink's staged rows (default `<space>/<sink name>`); two
    /// sinks writing one space need different ones.
    pub state_key: Option<String>,
}

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let config: LogSinkConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    config.endpoint.check().map_err(|(k, m)| fail(k, m))?;
    if config.space.is_empty() || config.space == STAGING {
        return Err(fail("space", format!("must be named, and not '{STAGING}'")));
    }
    if config.segment.is_empty() {
        return Err(fail("segment", "must name a column or a segment".into()));
    }
    let column = ctx.input.index_of(&config.segment).ok();
    if let Some(i) = column {
        let kind = ctx.input.field(i).data_type();
        if kind.is_nested() || matches!(kind, DataType::Binary | DataType::LargeBinary) {
            return Err(fail(
                "segment",
                format!(
                    "column '{}' is {kind}; a segment comes from a scalar column",
                    config.segment
                ),
            ));
        }
    }
    let encoder = MessageEncoder::new(&crate::message::EncoderSource {
        format: config.format,
        input: &ctx.input,
        declared: config.schema.as_ref(),
        registry: config.registry.as_deref(),
        default_subject: format!("{}-value", config.space),
    })
    .map_err(|m| fail("format", m))?;
    Ok(Arc::new(LogSinkFactory {
        state: config
            .state_key
            .clone()
            .unwrap_or_else(|| format!("{}/{}", config.space, ctx.name)),
        column,
        config: Arc::new(config),
        encoder,
    }))
}

struct LogSinkFactory {
    config: Arc<LogSinkConfig>,
    encoder: MessageEncoder,
    /// The input column naming segments, if `segment` is one.
    column: Option<usize>,
    state: String,
}

impl SinkFactory for LogSinkFactory {
    fn create(&self, instance: usize) -> Result<Box<dyn Sink>> {
        Ok(Box::new(LogSink {
            config: Arc::clone(&self.config),
            encoder: self.encoder.clone(),
            column: self.column,
            prefix: format!("{}/{instance}/", self.state),
            log: None,
            checkpointing: false,
            next: HashMap::new(),
            epoch: None,
            staged_rows: 0,
            pending: Vec::new(),
        }))
    }
}

/// Rows staged per produce call.
const STAGE_CHUNK: usize = 10_000;

struct LogSink {
    config: Arc<LogSinkConfig>,
    encoder: MessageEncoder,
    column: Option<usize>,
    /// Staging segments of this instance are named `<prefix><epoch>`.
    prefix: String,
    log: Option<LogClient>,
    checkpointing: bool,
    /// The next sequence of each segment written.
    next: HashMap<String, u64>,
    /// The staging segment of rows since the last checkpoint.
    epoch: Option<String>,
    /// Rows in it.
    staged_rows: u64,
    /// Checkpoints staged, not yet committed: id, staging segment.
    pending: Vec<(u64, String)>,
}

impl LogSink {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Other(format!(
            "log sink (space {}, {}): {what}: {e}",
            self.config.space,
            self.config.endpoint.describe()
        ))
    }

    async fn log(&mut self) -> Result<LogClient> {
        if let Some(l) = &self.log {
            return Ok(l.clone());
        }
        let log = self.config.endpoint.connect().await?;
        self.log = Some(log.clone());
        Ok(log)
    }

    /// The next sequence of `segment`, read from the log on first use.
    async fn next_sequence(&mut self, segment: &str) -> Result<u64> {
        if let Some(n) = self.next.get(segment) {
            return Ok(*n);
        }
        let log = self.log().await?;
        let status = log
            .peek(&self.config.space, segment)
            .await
            .map_err(|e| self.err("reading a segment", e))?;
        self.next
            .insert(segment.to_string(), status.last_sequence + 1);
        Ok(status.last_sequence + 1)
    }

    /// The segment of each row, when a column names them.
    fn segments(&self, batch: &RecordBatch) -> Result<Option<StringArray>> {
        self.column
            .map(|i| super::destinations(batch, i, "segment"))
            .transpose()
            .map_err(|m| self.err("writing", m))
    }

    /// Copies staging segment `staged` into its segments, skipping what a
    /// previous attempt wrote already; then drops it.
    async fn publish(&mut self, staged: &str) -> Result<()> {
        let log = self.log().await?;
        let space = self.config.space.clone();
        let mut from = 1;
        let mut written: HashMap<String, u64> = HashMap::new();
        let mut copied = 0usize;
        loop {
            let range = SegmentRange {
                min_sequence: from,
                limit: STAGE_CHUNK,
                ..SegmentRange::default()
            };
            let entries = log
                .consume_segment(STAGING, staged, range)
                .await
                .map_err(|e| self.err("reading staged rows", e))?;
            let Some(last) = entries.last() else { break };
            from = last.sequence + 1;
            let mut runs: Vec<(String, Vec<Record>)> = Vec::new();
            for e in entries {
                let Some((segment, sequence, payload)) = unstage(&e.payload) else {
                    return Err(self.err(
                        "publishing",
                        format!("staged entry {staged}/{} is damaged", e.sequence),
                    ));
                };
                let done = match written.get(segment) {
                    Some(d) => *d,
                    None => {
                        let d = log
                            .peek(&space, segment)
                            .await
                            .map_err(|e| self.err("reading a segment", e))?
                            .last_sequence;
                        written.insert(segment.to_string(), d);
                        d
                    }
                };
                if sequence <= done {
                    // Written by an earlier attempt of this commit.
                    continue;
                }
                let record = Record {
                    sequence,
                    timestamp: e.timestamp,
                    payload: payload.to_vec(),
                    metadata: serde_json::Map::new(),
                };
                match runs.last_mut() {
                    Some((s, records)) if s == segment => records.push(record),
                    _ => runs.push((segment.to_string(), vec![record])),
                }
            }
            for (segment, records) in runs {
                let last = records.last().map_or(0, |r| r.sequence);
                copied += records.len();
                log.produce(&space, &segment, records)
                    .await
                    .map_err(|e| self.err("publishing", e))?;
                written.insert(segment, last);
            }
        }
        log.delete_segment(STAGING, staged)
            .await
            .map_err(|e| self.err("dropping staged rows", e))?;
        tracing::debug!(space = %space, staged, rows = copied, "staged rows published");
        Ok(())
    }
}

#[async_trait]
impl Sink for LogSink {
    async fn open(&mut self, checkpointing: Option<Vec<Value>>) -> Result<()> {
        let log = self.log().await?;
        let Some(staged) = checkpointing else {
            return Ok(());
        };
        self.checkpointing = true;
        // Checkpoints staged before the crash are published (again, skipping
        // what is there); anything else of this instance was written after
        // the restored checkpoint and goes.
        let mut keep = Vec::new();
        for s in staged {
            if let Some(segment) = s.get("staged").and_then(Value::as_str) {
                self.publish(segment).await?;
                keep.push(segment.to_string());
            }
        }
        let leftovers = log
            .segments(STAGING)
            .await
            .map_err(|e| self.err("listing staged rows", e))?;
        for segment in leftovers {
            if segment.starts_with(&self.prefix) && !keep.contains(&segment) {
                log.delete_segment(STAGING, &segment)
                    .await
                    .map_err(|e| self.err("dropping staged rows", e))?;
            }
        }
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let messages = self.encoder.encode(&batch).await?;
        let names = self.segments(&batch)?;
        let segment_of = |row: usize| -> &str {
            match &names {
                Some(n) => n.value(row),
                None => self.config.segment.as_str(),
            }
        };
        // Runs of rows with the same segment, in row order.
        let mut runs: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for (row, message) in messages.into_iter().enumerate() {
            let segment = segment_of(row);
            match runs.last_mut() {
                Some((s, m)) if s == segment => m.push(message),
                _ => runs.push((segment.to_string(), vec![message])),
            }
        }
        let now = streamflow_core::processing_time_ms();
        let log = self.log().await?;
        if !self.checkpointing {
            for (segment, messages) in runs {
                let first = self.next_sequence(&segment).await?;
                let records: Vec<Record> = messages
                    .into_iter()
                    .zip(first..)
                    .map(|(payload, sequence)| Record {
                        sequence,
                        timestamp: now,
                        payload,
                        metadata: serde_json::Map::new(),
                    })
                    .collect();
                let n = records.len() as u64;
                log.produce(&self.config.space, &segment, records)
                    .await
                    .map_err(|e| self.err("appending", e))?;
                self.next.insert(segment, first + n);
            }
            return Ok(());
        }
        let epoch = match &self.epoch {
            Some(e) => e.clone(),
            None => {
                let e = format!("{}{}", self.prefix, unique_suffix());
                self.epoch = Some(e.clone());
                self.staged_rows = 0;
                e
            }
        };
        let mut staged = Vec::new();
        for (segment, messages) in runs {
            let first = self.next_sequence(&segment).await?;
            let n = messages.len() as u64;
            for (message, sequence) in messages.into_iter().zip(first..) {
                self.staged_rows += 1;
                staged.push(Record {
                    sequence: self.staged_rows,
                    timestamp: now,
                    payload: stage(&segment, sequence, &message),
                    metadata: serde_json::Map::new(),
                });
            }
            self.next.insert(segment, first + n);
        }
        log.produce(STAGING, &epoch, staged)
            .await
            .map_err(|e| self.err("staging rows", e))?;
        Ok(())
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<Value>> {
        let Some(epoch) = self.epoch.take() else {
            return Ok(Vec::new());
        };
        self.pending.push((checkpoint, epoch.clone()));
        // The staged rows carry their segments and sequences: naming the
        // staging segment is all a replay needs.
        Ok(vec![json!({ "checkpoint": checkpoint, "staged": epoch })])
    }

    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(id, _)| *id <= checkpoint)
            .map(|(_, s)| s.clone())
            .collect();
        self.pending.retain(|(id, _)| *id > checkpoint);
        for staged in due {
            self.publish(&staged).await?;
        }
        Ok(())
    }

    async fn abort(&mut self, checkpoint: u64) -> Result<()> {
        let log = self.log().await?;
        let gone: Vec<String> = self
            .pending
            .iter()
            .filter(|(id, _)| *id == checkpoint)
            .map(|(_, s)| s.clone())
            .collect();
        self.pending.retain(|(id, _)| *id != checkpoint);
        for staged in gone {
            log.delete_segment(STAGING, &staged)
                .await
                .map_err(|e| self.err("dropping staged rows", e))?;
        }
        // The sequences it took are free again: read them afresh.
        self.next.clear();
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A staged row: its segment (u16 length, bytes), the sequence it takes
/// there (u64), then the message.
fn stage(segment: &str, sequence: u64, message: &[u8]) -> Vec<u8> {
    let name = &segment.as_bytes()[..segment.len().min(usize::from(u16::MAX))];
    let mut out = Vec::with_capacity(10 + name.len() + message.len());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(message);
    out
}

/// The segment, sequence and message of a staged row.
fn unstage(bytes: &[u8]) -> Option<(&str, u64, &[u8])> {
    let len = usize::from(u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?));
    let name = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    let sequence = u64::from_le_bytes(bytes.get(2 + len..10 + len)?.try_into().ok()?);
    Some((name, sequence, bytes.get(10 + len..)?))
}

/// A name part no earlier run of this instance used.
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_rows_round_trip() {
        let staged = stage("auction-7", 42, b"{\"price\":3}");
        assert_eq!(
            unstage(&staged),
            Some(("auction-7", 42, &b"{\"price\":3}"[..]))
        );
        assert_eq!(unstage(&staged[..5]), None);
    }
}
