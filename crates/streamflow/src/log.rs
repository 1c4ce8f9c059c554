//! `streamflow log …`: the durable log from the command line, against a
//! local store or a server's.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use serde_json::{Value, json};
use streamflow_log::{Entry, LogClient, Record, Retention, SegmentRange, SpaceRange};

/// Which store.
#[derive(clap::Args)]
pub struct Target {
    /// Local store directory (ignored with `--server`).
    #[arg(long, default_value = ".streamflow/log", global = true)]
    path: PathBuf,
    /// A `streamflow serve` to reach over WebSocket (`ws://host:port` or
    /// `http://host:port`).
    #[arg(long, env = "STREAMFLOW_LOG_SERVER", global = true)]
    server: Option<String>,
    /// The server's store.
    #[arg(long, default_value = "default", global = true)]
    store: String,
    /// Token for the server: a JWT from `streamflow log token`, or the
    /// server's bearer token.
    #[arg(
        long,
        env = "STREAMFLOW_LOG_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
}

/// What to do with the log.
#[derive(Subcommand)]
pub enum LogAction {
    /// Append JSON lines (one entry each) to a segment, continuing its
    /// sequences; prints the segment's status after each durable chunk.
    Produce {
        /// Space.
        space: String,
        /// Segment.
        segment: String,
        /// File of JSON lines; `-` or none: standard input.
        file: Option<PathBuf>,
        /// Entries per durable write.
        #[arg(long, default_value_t = streamflow_log::CHUNK)]
        chunk: usize,
    },
    /// Print entries as JSON lines: a segment's by sequence, or a whole
    /// space's in write order (by offset).
    Consume {
        /// Space.
        space: String,
        /// Segment (default: every segment of the space).
        segment: Option<String>,
        /// First sequence (a segment) or offset (a space), inclusive.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last sequence or offset, inclusive (0: no bound).
        #[arg(long, default_value_t = 0)]
        to: u64,
        /// Entries at most (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Print where a segment stands (its last entry's sequence and time).
    Peek {
        /// Space.
        space: String,
        /// Segment.
        segment: String,
    },
    /// List the spaces.
    Spaces,
    /// List a space's segments.
    Segments {
        /// Space.
        space: String,
    },
    /// Follow a space (or one segment): print each new segment status, until interrupted.
    Tail {
        /// Space.
        space: String,
        /// Segment (default: every segment).
        segment: Option<String>,
    },
    /// Keep at most this much of a space (applied by the store over time).
    Retention {
        /// Space.
        space: String,
        /// Entries older than this go (e.g. `7d`, `12h`).
        #[arg(long, value_parser = streamflow_dsl::parse_duration)]
        max_age: Option<Duration>,
        /// Oldest entries go while the space is larger (e.g. `1GiB`).
        #[arg(long, value_parser = streamflow_dsl::parse_byte_size)]
        max_bytes: Option<u64>,
    },
    /// Issue a JWT scoped to some stores, signed with `STREAMFLOW_LOG_SECRET`.
    Token {
        /// Stores it covers (`*`: all).
        #[arg(long, value_delimiter = ',', required = true)]
        stores: Vec<String>,
        /// Who it is for.
        #[arg(long, default_value = "streamflow")]
        subject: String,
        /// How long it is valid.
        #[arg(long, default_value = "24h", value_parser = streamflow_dsl::parse_duration)]
        ttl: Duration,
        /// The secret (the server's `--log-secret`).
        #[arg(long, env = "STREAMFLOW_LOG_SECRET", hide_env_values = true)]
        secret: String,
    },
}

/// Runs one `log` command.
///
/// # Errors
/// The store cannot be reached, or the operation fails.
pub fn run(target: Target, action: LogAction) -> anyhow::Result<ExitCode> {
    if let LogAction::Token {
        stores,
        subject,
        ttl,
        secret,
    } = &action
    {
        let token = streamflow_log::auth::issue(secret.as_bytes(), subject, stores, *ttl)?;
        println!("{token}");
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let client = connect(&target).await?;
        execute(&client, action).await
    })
}

/// The store `target` names.
pub async fn connect(target: &Target) -> anyhow::Result<LogClient> {
    match &target.server {
        Some(server) => {
            let url = server
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1);
            Ok(LogClient::connect(&url, &target.store, target.token.clone()).await?)
        }
        None => Ok(LogClient::open(&target.path)
            .with_context(|| format!("opening the log in {}", target.path.display()))?),
    }
}

/// An entry as one JSON line: the payload as JSON when it is, else as text
/// (or base64 when not UTF-8).
fn entry_json(e: &Entry) -> Value {
    let mut out = json!({
        "space": e.space,
        "segment": e.segment,
        "sequence": e.sequence,
        "offset": e.offset,
        "timestamp": e.timestamp,
        "trx": e.trx,
    });
    if !e.metadata.is_empty() {
        out["metadata"] = Value::Object(e.metadata.clone());
    }
    match serde_json::from_slice::<Value>(&e.payload) {
        Ok(v) => out["payload"] = v,
        Err(_) => match std::str::from_utf8(&e.payload) {
            Ok(text) => out["payload"] = Value::String(text.to_string()),
            Err(_) => {
                use base64::Engine as _;
                out["payload_base64"] =
                    Value::String(base64::engine::general_purpose::STANDARD.encode(&e.payload));
            }
        },
    }
    out
}

/// Entries read per request by `consume`.
const PAGE: usize = 10_000;

async fn execute(client: &LogClient, action: LogAction) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    match action {
        LogAction::Produce {
            space,
            segment,
            file,
            chunk: chunk_size,
        } => {
            let chunk_size = chunk_size.clamp(1, streamflow_log::CHUNK);
            let input: Box<dyn BufRead> = match file.as_deref() {
                None => Box::new(std::io::stdin().lock()),
                Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
                Some(p) => Box::new(std::io::BufReader::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                )),
            };
            let mut next = client.peek(&space, &segment).await?.last_sequence + 1;
            let mut chunk = Vec::new();
            let mut produced = false;
            let mut out = stdout.lock();
            let mut acknowledge =
                |statuses: Vec<streamflow_log::SegmentStatus>| -> anyhow::Result<()> {
                    for status in statuses {
                        writeln!(out, "{}", serde_json::to_string(&status)?)?;
                    }
                    out.flush()?;
                    Ok(())
                };
            let now = || {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64)
            };
            for (n, line) in input.lines().enumerate() {
                let line = line.context("reading the input")?;
                if line.trim().is_empty() {
                    continue;
                }
                serde_json::from_str::<Value>(&line)
                    .map_err(|e| anyhow!("line {}: not JSON: {e}", n + 1))?;
                chunk.push(Record {
                    sequence: next,
                    timestamp: now(),
                    payload: line.into_bytes(),
                    metadata: serde_json::Map::new(),
                });
                next += 1;
                if chunk.len() == chunk_size {
                    acknowledge(
                        client
                            .produce(&space, &segment, std::mem::take(&mut chunk))
                            .await?,
                    )?;
                    produced = true;
                }
            }
            if !chunk.is_empty() {
                acknowledge(client.produce(&space, &segment, chunk).await?)?;
            } else if !produced {
                acknowledge(vec![client.peek(&space, &segment).await?])?;
            }
        }
        LogAction::Consume {
            space,
            segment,
            from,
            to,
            limit,
        } => {
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut printed = 0usize;
            let mut at = from;
            loop {
                let want = if limit == 0 {
                    PAGE
                } else {
                    PAGE.min(limit - printed)
                };
                if want == 0 {
                    break;
                }
                let page = match &segment {
                    Some(segment) => {
                        let range = SegmentRange {
                            min_sequence: at,
                            max_sequence: to,
                            limit: want,
                            ..SegmentRange::default()
                        };
                        client.consume_segment(&space, segment, range).await?
                    }
                    None => {
                        let range = SpaceRange {
                            offset: at.saturating_sub(1),
                            limit: want,
                            ..SpaceRange::default()
                        };
                        let mut page = client.consume_space(&space, range).await?;
                        if to != 0 {
                            page.retain(|e| e.offset <= to);
                        }
                        page
                    }
                };
                for e in &page {
                    writeln!(out, "{}", entry_json(e))?;
                }
                printed += page.len();
                let Some(last) = page.last() else { break };
                at = if segment.is_some() {
                    last.sequence
                } else {
                    last.offset
                } + 1;
                if page.len() < want || (to != 0 && at > to) {
                    break;
                }
            }
            out.flush()?;
        }
        LogAction::Peek { space, segment } => {
            println!(
                "{}",
                serde_json::to_string(&client.peek(&space, &segment).await?)?
            );
        }
        LogAction::Spaces => {
            for s in client.spaces().await? {
                println!("{s}");
            }
        }
        LogAction::Segments { space } => {
            for s in client.segments(&space).await? {
                println!("{s}");
            }
        }
        LogAction::Tail { space, segment } => {
            let mut sub = client
                .subscribe(&space, segment.as_deref().unwrap_or("*"))
                .await?;
            loop {
                tokio::select! {
                    status = sub.next() => match status {
                        Some(status) => {
                            let mut out = stdout.lock();
                            writeln!(out, "{}", serde_json::to_string(&status)?)?;
                            out.flush()?;
                        }
                        None => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
        LogAction::Retention {
            space,
            max_age,
            max_bytes,
        } => {
            client
                .set_retention(&space, Retention { max_age, max_bytes })
                .await?;
        }
        LogAction::Token { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}
