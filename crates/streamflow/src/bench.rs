//! `streamflow bench`: the Nexmark queries shipped in `examples/nexmark/`
//! (and the enrichment example), run on a blackhole sink with the generator
//! included in the measurement; any flow over its files (`bench file`).

pub mod avro;
pub mod log;
pub mod protobuf;

use std::time::Duration;

use serde::Serialize;

/// A Nexmark query that can be benchmarked: its name and flow file text.
pub const QUERIES: &[(&str, &str)] = &[
    ("q0", include_str!("../../../examples/nexmark/q0.yaml")),
    ("q1", include_str!("../../../examples/nexmark/q1.yaml")),
    ("q2", include_str!("../../../examples/nexmark/q2.yaml")),
    ("q21", include_str!("../../../examples/nexmark/q21.yaml")),
    ("q22", include_str!("../../../examples/nexmark/q22.yaml")),
    ("q5", include_str!("../../../examples/nexmark/q5.yaml")),
    ("q7", include_str!("../../../examples/nexmark/q7.yaml")),
    ("q11", include_str!("../../../examples/nexmark/q11.yaml")),
    (
        "q4_shape",
        include_str!("../../../examples/nexmark/q4_shape.yaml"),
    ),
    (
        "dedup",
        include_str!("../../../examples/nexmark/dedup.yaml"),
    ),
    ("q3", include_str!("../../../examples/nexmark/q3.yaml")),
    (
        "q3_left",
        include_str!("../../../examples/nexmark/q3_left.yaml"),
    ),
    ("q4", include_str!("../../../examples/nexmark/q4.yaml")),
    ("q8", include_str!("../../../examples/nexmark/q8.yaml")),
    ("q20", include_str!("../../../examples/nexmark/q20.yaml")),
    ("q9", include_str!("../../../examples/nexmark/q9.yaml")),
    ("q18", include_str!("../../../examples/nexmark/q18.yaml")),
    ("q19", include_str!("../../../examples/nexmark/q19.yaml")),
    (
        "top_window",
        include_str!("../../../examples/nexmark/top_window.yaml"),
    ),
    (
        "process_sql",
        include_str!("../../../examples/process/sql_sequence.yaml"),
    ),
    (
        "map_sql",
        include_str!("../../../examples/process/sql_map.yaml"),
    ),
    (
        "rate_limit",
        include_str!("../../../examples/process/rate_limit.yaml"),
    ),
    (
        "enrichment",
        include_str!("../../../examples/enrichment/bids_by_owner.yaml"),
    ),
];

/// Data files the queries read (path as written in the flow, contents), so
/// the benchmark runs from any directory.
pub const DATA_FILES: &[(&str, &str)] = &[(
    "examples/enrichment/channels.csv",
    include_str!("../../../examples/enrichment/channels.csv"),
)];

/// The flow file text of `query`.
pub fn query_text(query: &str) -> Option<&'static str> {
    QUERIES.iter().find(|(q, _)| *q == query).map(|(_, t)| *t)
}

/// One benchmark result (the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Query name.
    pub query: String,
    /// Events generated.
    pub events: u64,
    /// Wall-clock seconds, generator included.
    pub seconds: f64,
    /// Events per second.
    pub events_per_sec: f64,
    /// Worker threads used.
    pub cores: usize,
    /// Events per second per core.
    pub events_per_sec_per_core: f64,
    /// Records that reached the sink.
    pub output_records: u64,
    /// Peak resident memory of the process, in MiB (Linux).
    pub peak_rss_mib: Option<f64>,
    /// CPU time (user + system) the process spent on the run, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Average number of busy cores: CPU time / wall-clock time.
    pub busy_cores: Option<f64>,
    /// Events per second of CPU time (per busy core).
    pub events_per_cpu_sec: Option<f64>,
}

impl BenchResult {
    /// Builds the result from raw measurements.
    pub fn new(
        query: &str,
        events: u64,
        elapsed: Duration,
        cores: usize,
        output_records: u64,
        cpu_seconds: Option<f64>,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        let eps = events as f64 / seconds.max(1e-9);
        Self {
            query: query.to_string(),
            events,
            seconds,
            events_per_sec: eps,
            cores,
            events_per_sec_per_core: eps / cores.max(1) as f64,
            output_records,
            peak_rss_mib: peak_rss_mib(),
            cpu_seconds,
            busy_cores: cpu_seconds.map(|c| c / seconds.max(1e-9)),
            events_per_cpu_sec: cpu_seconds.map(|c| events as f64 / c.max(1e-9)),
        }
    }
}

pub use streamflow_runtime::resources::cpu_seconds;

/// Messages per read in the decoder benchmarks, as a broker source hands
/// them over.
const MESSAGES_PER_READ: usize = 8192;

/// The rows of `messages`, read `MESSAGES_PER_READ` at a time by `read` (a
/// source's reader, given a runtime to run it on).
///
/// # Errors
/// The first message that is not a row.
fn rows_read(
    messages: &[Vec<u8>],
    mut read: impl FnMut(
        &tokio::runtime::Runtime,
        &[&[u8]],
    ) -> streamflow_core::Result<(
        Option<arrow::record_batch::RecordBatch>,
        Vec<streamflow_core::DeadLetter>,
    )>,
) -> anyhow::Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| anyhow::anyhow!("runtime: {e}"))?;
    let mut rows = 0u64;
    for chunk in messages.chunks(MESSAGES_PER_READ) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let (batch, dead) = read(&rt, &refs).map_err(|e| anyhow::anyhow!(e))?;
        if let Some(d) = dead.first() {
            return Err(anyhow::anyhow!("a message did not decode: {}", d.error));
        }
        rows += batch.map_or(0, |b| b.num_rows() as u64);
    }
    Ok(rows)
}

/// What one run of a decoder benchmark (`bench avro`, `bench protobuf`) measured.
#[derive(Debug, Serialize)]
pub struct DecodeBench {
    /// The decoder.
    pub decoder: &'static str,
    /// Messages decoded.
    pub records: u64,
    /// Their bytes, framing included.
    pub bytes: u64,
    /// Wall-clock seconds of the decoding.
    pub seconds: f64,
    /// CPU seconds of the decoding.
    pub cpu_seconds: Option<f64>,
    /// Records per CPU second.
    pub records_per_cpu_sec: Option<f64>,
}

impl DecodeBench {
    /// Times `decode` over `messages` (what it was given is set up before,
    /// untimed); it returns the rows it read.
    fn timed(
        decoder: &'static str,
        messages: &[Vec<u8>],
        decode: impl FnOnce(&[Vec<u8>]) -> anyhow::Result<u64>,
    ) -> anyhow::Result<Self> {
        let bytes: u64 = messages.iter().map(|m| m.len() as u64).sum();
        let cpu_before = cpu_seconds();
        let started = std::time::Instant::now();
        let records = decode(messages)?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
        Ok(Self {
            decoder,
            records,
            bytes,
            seconds,
            cpu_seconds: cpu,
            records_per_cpu_sec: cpu.map(|c| records as f64 / c.max(1e-9)),
        })
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} records ({:.0} MiB) in {:.3}s, {:.2} M records per CPU second",
            self.decoder,
            self.records,
            self.bytes as f64 / (1 << 20) as f64,
            self.seconds,
            self.records_per_cpu_sec.unwrap_or(f64::NAN) / 1e6
        )
    }
}

/// Peak resident set size of this process (`VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    streamflow_runtime::resources::peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0))
}
