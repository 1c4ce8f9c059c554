//! `redis`: appends rows to a Redis stream (`XADD`), one entry per row with
//! the encoded row in field `field` (default `data`).
//!
//! With checkpoints, rows are staged in a list per instance and moved into
//! the stream when their checkpoint completes, by a Lua script that moves a
//! slice of them and records progress atomically (the moved rows leave the
//! list; the last slice records the checkpoint in a ledger key): a
//! checkpoint replayed after a crash goes on where it stopped, or finds
//! itself in the ledger and appends nothing (exactly-once). Without
//! checkpoints rows are appended as they come.
//!
//! ```yaml
//! - {name: out, type: redis, input: totals, config: {url: "redis://127.0.0.1:6379", stream: totals, max_len: 100000}}
//! ```

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Sink};

use crate::message::{MessageEncoder, MessageFormat};
use crate::registry::{SinkContext, SinkFactory};
use crate::sources::redis::{RedisEndpoint, default_field};

/// Settings of a `redis` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// The server.
    #[serde(flatten)]
    pub endpoint: RedisEndpoint,
    /// The stream key.
    pub stream: String,
    /// Message format.
    #[serde(default)]
    pub format: MessageFormat,
    /// `avro`: `{subject}` the rows' schema is registered under (default
    /// `<topic>-value`).
    pub schema: Option<serde_json::Map<String, serde_json::Value>>,
    /// Schema registry of `avro` (default: `STREAMFLOW_REGISTRY`, or the
    /// server the flow runs in).
    pub registry: Option<String>,
    /// The entry field holding the message.
    #[serde(default = "default_field")]
    pub field: String,
    /// Trim the stream to about this many entries (`MAXLEN ~`).
    pub max_len: Option<u64>,
    /// Prefix of the keys holding staged rows and the ledger (default
    /// `streamflow:<stream>:<sink name>`).
    pub state_key: Option<String>,
}

/// Rows per `RPUSH`/pipeline.
const ROWS_PER_CALL: usize = 1000;

/// Moves up to ARGV[4] rows of a staged list into the stream, unless the
/// ledger holds the checkpoint already; records the checkpoint in the
/// ledger once the list is empty. Each call is atomic, so a crash between
/// calls leaves the rest staged and the next call goes on from there.
/// KEYS: staged list, ledger, stream; ARGV: checkpoint, field, max_len
/// ('' for none), rows per call. Returns the rows moved, -1 when done.
const COMMIT: &str = r"
local done = tonumber(redis.call('GET', KEYS[2]) or '-1')
if done >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return -1
end
local rows = redis.call('LPOP', KEYS[1], ARGV[4])
if rows then
  for _, row in ipairs(rows) do
    if ARGV[3] ~= '' then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', ARGV[2], row)
    else
      redis.call('XADD', KEYS[3], '*', ARGV[2], row)
    end
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], ARGV[1])
  return -1
end
return #rows
";

/// Rows moved per commit call (a call blocks the server while it runs).
const ROWS_PER_COMMIT: usize = 10_000;

/// Renames the pending list to the checkpoint's staged list, if any rows
/// are pending. KEYS: pending, staged.
const STAGE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
end
return 0
";

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let config: RedisSinkConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    config.endpoint.check(|k| ctx.at(k))?;
    let encoder = MessageEncoder::new(&crate::message::EncoderSource {
        format: config.format,
        input: &ctx.input,
        declared: config.schema.as_ref(),
        registry: config.registry.as_deref(),
        default_subject: format!("{}-value", config.stream),
    })
    .map_err(|m| fail("format", m))?;
    Ok(Arc::new(RedisSinkFactory {
        state: config
            .state_key
            .clone()
            .unwrap_or_else(|| format!("streamflow:{}:{}", config.stream, ctx.name)),
        config: Arc::new(config),
        encoder,
    }))
}

struct RedisSinkFactory {
    config: Arc<RedisSinkConfig>,
    encoder: MessageEncoder,
    state: String,
}

impl SinkFactory for RedisSinkFactory {
    fn create(&self, instance: usize) -> Result<Box<dyn Sink>> {
        let prefix = format!("{}:{instance}", self.state);
        Ok(Box::new(RedisSink {
            config: Arc::clone(&self.config),
            encoder: self.encoder.clone(),
            pending: format!("{prefix}:pending"),
            ledger: format!("{prefix}:committed"),
            staged_prefix: format!("{prefix}:staged:"),
            conn: None,
            checkpointing: false,
            commit: redis::Script::new(COMMIT),
            stage: redis::Script::new(STAGE),
        }))
    }
}

struct RedisSink {
    config: Arc<RedisSinkConfig>,
    encoder: MessageEncoder,
    /// Rows written since the last checkpoint.
    pending: String,
    /// The last checkpoint whose rows are in the stream.
    ledger: String,
    /// Rows of checkpoint N wait in `<staged_prefix>N` until it completes.
    staged_prefix: String,
    conn: Option<MultiplexedConnection>,
    checkpointing: bool,
    commit: redis::Script,
    stage: redis::Script,
}

impl RedisSink {
    fn err(&self, what: &str, e: redis::RedisError) -> Error {
        Error::Other(format!("{what} (stream '{}'): {e}", self.config.stream))
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let conn = self.config.endpoint.connect().await?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    fn staged(&self, checkpoint: u64) -> String {
        format!("{}{checkpoint}", self.staged_prefix)
    }

    async fn publish(&mut self, checkpoint: u64) -> Result<()> {
        let mut conn = self.connection().await?;
        let max_len = self
            .config
            .max_len
            .map(|n| n.to_string())
            .unwrap_or_default();
        let mut moved_total = 0i64;
        loop {
            let moved: i64 = self
                .commit
                .key(self.staged(checkpoint))
                .key(&self.ledger)
                .key(&self.config.stream)
                .arg(checkpoint)
                .arg(&self.config.field)
                .arg(&max_len)
                .arg(ROWS_PER_COMMIT)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.err("committing a checkpoint", e))?;
            if moved < 0 {
                break;
            }
            moved_total += moved;
        }
        tracing::debug!(checkpoint, rows = moved_total, stream = %self.config.stream, "checkpoint appended");
        Ok(())
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn open(&mut self, checkpointing: Option<Vec<serde_json::Value>>) -> Result<()> {
        let mut conn = self.connection().await?;
        let Some(staged) = checkpointing else {
            return Ok(());
        };
        self.checkpointing = true;
        let fresh = staged.is_empty();
        for s in staged {
            if let Some(id) = s.get("checkpoint").and_then(serde_json::Value::as_u64) {
                self.publish(id).await?;
            }
        }
        // Rows written after the restored checkpoint are discarded, and a
        // fresh start owes nothing to an earlier run's ledger.
        let mut drop_keys = Vec::new();
        {
            let mut keys: redis::AsyncIter<String> = conn
                .scan_match(format!("{}*", self.staged_prefix))
                .await
                .map_err(|e| self.err("listing staged rows", e))?;
            while let Some(key) = keys.next_item().await {
                drop_keys.push(key.map_err(|e| self.err("listing staged rows", e))?);
            }
        }
        drop_keys.push(self.pending.clone());
        if fresh {
            drop_keys.push(self.ledger.clone());
        }
        let _: i64 = conn
            .del(drop_keys)
            .await
            .map_err(|e| self.err("discarding uncommitted rows", e))?;
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let messages = self.encoder.encode(&batch).await?;
        let mut conn = self.connection().await?;
        for chunk in messages.chunks(ROWS_PER_CALL) {
            if self.checkpointing {
                let _: i64 = conn
                    .rpush(&self.pending, chunk)
                    .await
                    .map_err(|e| self.err("staging rows", e))?;
            } else {
                let mut pipe = redis::pipe();
                for m in chunk {
                    let mut cmd = redis::cmd("XADD");
                    cmd.arg(&self.config.stream);
                    if let Some(n) = self.config.max_len {
                        cmd.arg("MAXLEN").arg("~").arg(n);
                    }
                    cmd.arg("*").arg(&self.config.field).arg(m.as_slice());
                    pipe.add_command(cmd).ignore();
                }
                let _: () = pipe
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.err("appending rows", e))?;
            }
        }
        Ok(())
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<serde_json::Value>> {
        let mut conn = self.connection().await?;
        let _: i64 = self
            .stage
            .key(&self.pending)
            .key(self.staged(checkpoint))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err("staging a checkpoint", e))?;
        Ok(vec![serde_json::json!({ "checkpoint": checkpoint })])
    }

    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        self.publish(checkpoint).await
    }

    async fn abort(&mut self, checkpoint: u64) -> Result<()> {
        let mut conn = self.connection().await?;
        let _: i64 = conn
            .del(self.staged(checkpoint))
            .await
            .map_err(|e| self.err("discarding a checkpoint", e))?;
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
