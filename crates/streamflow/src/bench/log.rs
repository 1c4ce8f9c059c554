//! `streamflow bench log`: produce then consume entries of the durable
//! log, in process or over WebSocket on loopback (a server started in this
//! process, so the CPU time counts both ends). Every produce call is one
//! durable transaction (fsync before it returns).

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use streamflow_log::{LogClient, Record, SegmentRange, SpaceRange};

use super::cpu_seconds;

/// How the benchmark reaches the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A store opened in this process.
    InProcess,
    /// A server's store over WebSocket on loopback.
    Websocket,
}

/// One phase's figures.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// Entries moved.
    pub entries: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// CPU seconds of the process (client and, over WebSocket, server).
    pub cpu_seconds: Option<f64>,
    /// Entries per second.
    pub entries_per_sec: f64,
    /// Payload MB (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Entries per CPU second.
    pub entries_per_cpu_sec: Option<f64>,
}

impl Phase {
    fn measure<F: std::future::Future<Output = anyhow::Result<u64>>>(
        rt: &tokio::runtime::Runtime,
        payload: usize,
        work: F,
    ) -> anyhow::Result<Phase> {
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        let entries = rt.block_on(work)?;
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        let cpu = cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
        let bytes = entries * payload as u64;
        Ok(Phase {
            entries,
            bytes,
            seconds,
            cpu_seconds: cpu,
            entries_per_sec: entries as f64 / seconds,
            mb_per_sec: bytes as f64 / 1e6 / seconds,
            entries_per_cpu_sec: cpu.map(|c| entries as f64 / c.max(1e-9)),
        })
    }

    fn line(&self, name: &str) -> String {
        format!(
            "{name:>16}: {:>9.0} entries/s {:>7.1} MB/s  {:>9.0} entries per CPU second  ({} entries in {:.2}s)",
            self.entries_per_sec,
            self.mb_per_sec,
            self.entries_per_cpu_sec.unwrap_or(f64::NAN),
            self.entries,
            self.seconds
        )
    }
}

/// What `bench log` measured.
#[derive(Debug, Serialize)]
pub struct LogBench {
    /// The transport.
    pub transport: Transport,
    /// Payload size of each entry, bytes.
    pub payload_bytes: usize,
    /// Entries per produce call (one durable transaction each).
    pub batch: usize,
    /// Producing into one segment.
    pub produce: Phase,
    /// Reading the segment back by sequence.
    pub consume_segment: Phase,
    /// Reading the space back in write order.
    pub consume_space: Phase,
    /// Peak RSS of the process, MiB.
    pub peak_rss_mib: Option<f64>,
}

impl LogBench {
    /// Lines for people.
    pub fn summary(&self) -> String {
        format!(
            "log over {:?}, {} B payloads, {} entries per durable produce:\n{}\n{}\n{}\npeak RSS {:.0} MiB",
            self.transport,
            self.payload_bytes,
            self.batch,
            self.produce.line("produce"),
            self.consume_segment.line("consume segment"),
            self.consume_space.line("consume space"),
            self.peak_rss_mib.unwrap_or(f64::NAN)
        )
    }
}

/// Payloads: JSON objects of `size` bytes with varying values, as a
/// pipeline would write them.
fn payload(i: u64, size: usize) -> Vec<u8> {
    let head = format!(
        "{{\"auction\":{},\"bidder\":{},\"price\":{},\"channel\":\"channel-{}\",\"pad\":\"",
        1000 + i % 9973,
        2000 + (i * 7919) % 100_003,
        (i * 2_654_435_761) % 1_000_000,
        i % 13
    );
    let mut out = head.into_bytes();
    let tail = b"\"}";
    let fill = size.saturating_sub(out.len() + tail.len());
    out.extend((0..fill).map(|k| b'a' + ((i as usize + k) % 26) as u8));
    out.extend_from_slice(tail);
    out
}

/// Runs the benchmark on a fresh store in a temporary directory.
///
/// # Errors
/// The store or the server cannot be set up, or an operation fails.
pub fn run(
    transport: Transport,
    payload_bytes: usize,
    entries: u64,
    batch: usize,
) -> anyhow::Result<LogBench> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let log = rt.block_on(open(transport, dir.path()))?;
    let batch = batch.clamp(1, streamflow_log::CHUNK);
    // The payloads are made before the clock starts.
    let payloads: Vec<Vec<u8>> = (0..entries).map(|i| payload(i, payload_bytes)).collect();
    let produce = {
        let log = log.clone();
        let payloads = &payloads;
        Phase::measure(&rt, payload_bytes, async move {
            let mut sequence = 1u64;
            for chunk in payloads.chunks(batch) {
                let records: Vec<Record> = chunk
                    .iter()
                    .map(|p| {
                        let r = Record {
                            sequence,
                            timestamp: 1_700_000_000_000 + sequence as i64,
                            payload: p.clone(),
                            metadata: serde_json::Map::new(),
                        };
                        sequence += 1;
                        r
                    })
                    .collect();
                log.produce("bench", "s", records).await?;
            }
            Ok(sequence - 1)
        })?
    };
    const PAGE: usize = 10_000;
    let consume_segment = {
        let log = log.clone();
        Phase::measure(&rt, payload_bytes, async move {
            let mut read = 0u64;
            loop {
                let range = SegmentRange {
                    min_sequence: read + 1,
                    limit: PAGE,
                    ..SegmentRange::default()
                };
                let page = log.consume_segment("bench", "s", range).await?;
                read += page.len() as u64;
                if page.len() < PAGE {
                    return Ok(read);
                }
            }
        })?
    };
    let consume_space = {
        let log = log.clone();
        Phase::measure(&rt, payload_bytes, async move {
            let mut offset = 0u64;
            let mut read = 0u64;
            loop {
                let range = SpaceRange {
                    offset,
                    limit: PAGE,
                    ..SpaceRange::default()
                };
                let page = log.consume_space("bench", range).await?;
                read += page.len() as u64;
                match page.last() {
                    Some(e) if page.len() == PAGE => offset = e.offset,
                    _ => return Ok(read),
                }
            }
        })?
    };
    anyhow::ensure!(
        consume_segment.entries == entries && consume_space.entries == entries,
        "read back {} and {} of {entries} entries",
        consume_segment.entries,
        consume_space.entries
    );
    Ok(LogBench {
        transport,
        payload_bytes,
        batch,
        produce,
        consume_segment,
        consume_space,
        peak_rss_mib: super::peak_rss_mib(),
    })
}

/// The log under test.
async fn open(transport: Transport, dir: &std::path::Path) -> anyhow::Result<LogClient> {
    match transport {
        Transport::InProcess => Ok(LogClient::open(&dir.join("store"))?),
        Transport::Websocket => {
            let stores = streamflow_log::node::Stores::new(dir.to_path_buf(), "bench");
            let app = streamflow_server::streamz::router(streamflow_server::streamz::Streamz {
                stores,
                secret: None,
                token: None,
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a loopback port")?;
            let addr = listener.local_addr()?;
            tokio::spawn(async move { axum::serve(listener, app).await });
            let client = LogClient::connect(&format!("ws://{addr}"), "store", None).await?;
            Ok(client)
        }
    }
}
