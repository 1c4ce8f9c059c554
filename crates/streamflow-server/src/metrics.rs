//! `GET /metrics`: the flows' counters in Prometheus text format, for
//! `streamflow serve` and for `streamflow run --metrics ADDR`.
//!
//! The engine counts in atomics as it goes; a scrape copies them into a
//! fresh `metrics` recorder (no global state, no work on the data path, and
//! a deleted flow's series go with it) and renders that with
//! `metrics-exporter-prometheus`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::header;
use axum::response::IntoResponse;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use streamflow_core::processing_time_ms;
use streamflow_runtime::engine::NodeInfo;
use streamflow_runtime::{CheckpointMetrics, RunHandle, resources};

/// One flow as its metrics see it.
#[derive(Debug, Clone)]
pub struct FlowMetrics {
    /// Flow name.
    pub name: String,
    /// Active version (server flows).
    pub version: Option<u64>,
    /// Whether it is running (or being deployed).
    pub running: bool,
    /// Its nodes' live counters (none when it is not running).
    pub nodes: Vec<NodeInfo>,
    /// Its current run's checkpoint counters.
    pub checkpoints: Option<Arc<CheckpointMetrics>>,
    /// Checkpoints completed and failed by its earlier runs in this process.
    pub earlier: CheckpointTotals,
}

/// Checkpoints counted over runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointTotals {
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
}

impl CheckpointTotals {
    /// These plus a run's.
    pub fn plus(self, run: &CheckpointMetrics) -> CheckpointTotals {
        CheckpointTotals {
            completed: self.completed + run.completed(),
            failed: self.failed + run.failed(),
        }
    }
}

impl FlowMetrics {
    /// A running pipeline's metrics under `name`.
    pub fn of_run(name: &str, run: &RunHandle) -> FlowMetrics {
        FlowMetrics {
            name: name.to_string(),
            version: None,
            running: true,
            nodes: run.nodes().to_vec(),
            checkpoints: Some(run.checkpoints()),
            earlier: CheckpointTotals::default(),
        }
    }
}

/// The Prometheus content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The text exposition of `flows`' counters and of this process's CPU and
/// memory use. Series: `streamflow_records_{in,out}_total`,
/// `streamflow_batches_{in,out}_total`, `streamflow_bytes_{in,out}_total`,
/// `streamflow_dead_letters_total`, `streamflow_late_records_total`,
/// `streamflow_busy_seconds_total` and `streamflow_watermark_lag_seconds`
/// per flow and node; `streamflow_input_queue_fill_ratio` per input edge;
/// `streamflow_checkpoints_{completed,failed}_total`,
/// `streamflow_checkpoint_{duration_seconds,size_bytes,last_id}` per flow.
pub fn render(flows: &[FlowMetrics]) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let now_ms = processing_time_ms();
    metrics::with_local_recorder(&recorder, || {
        if let Some(cpu) = resources::cpu_seconds() {
            gauge!("process_cpu_seconds_total").set(cpu);
        }
        if let Some(rss) = resources::rss_bytes() {
            gauge!("process_resident_memory_bytes").set(rss as f64);
        }
        for flow in flows {
            flow_series(flow, now_ms);
        }
    });
    recorder.handle().render()
}

fn flow_series(flow: &FlowMetrics, now_ms: i64) {
    let name = flow.name.clone();
    gauge!("streamflow_flow_running", "flow" => name.clone())
        .set(f64::from(u8::from(flow.running)));
    if let Some(v) = flow.version {
        gauge!("streamflow_flow_version", "flow" => name.clone()).set(v as f64);
    }
    let totals = match &flow.checkpoints {
        Some(c) => flow.earlier.plus(c),
        None => flow.earlier,
    };
    counter!("streamflow_checkpoints_completed_total", "flow" => name.clone())
        .absolute(totals.completed);
    counter!("streamflow_checkpoints_failed_total", "flow" => name.clone()).absolute(totals.failed);
    if let Some(c) = flow.checkpoints.as_ref().and_then(|c| c.last()) {
        gauge!("streamflow_checkpoint_duration_seconds", "flow" => name.clone())
            .set(c.duration_ms as f64 / 1000.0);
        gauge!("streamflow_checkpoint_size_bytes", "flow" => name.clone()).set(c.bytes as f64);
        gauge!("streamflow_checkpoint_last_id", "flow" => name.clone()).set(c.id as f64);
    }
    for node in &flow.nodes {
        let s = node.summary();
        let labels = [
            ("flow", name.clone()),
            ("node", s.name.clone()),
            ("role", s.role.as_str().to_string()),
        ];
        counter!("streamflow_records_in_total", &labels).absolute(s.records_in);
        counter!("streamflow_records_out_total", &labels).absolute(s.records_out);
        counter!("streamflow_batches_in_total", &labels).absolute(s.batches_in);
        counter!("streamflow_batches_out_total", &labels).absolute(s.batches_out);
        counter!("streamflow_bytes_in_total", &labels).absolute(s.bytes_in);
        counter!("streamflow_bytes_out_total", &labels).absolute(s.bytes_out);
        counter!("streamflow_dead_letters_total", &labels).absolute(s.dead_letters);
        counter!("streamflow_late_records_total", &labels).absolute(s.late);
        gauge!("streamflow_busy_seconds_total", &labels).set(s.busy.as_secs_f64());
        if let Some(w) = s.watermark {
            gauge!("streamflow_watermark_lag_seconds", &labels)
                .set(now_ms.saturating_sub(w) as f64 / 1000.0);
        }
        for input in &s.inputs {
            let labels = [
                ("flow", name.clone()),
                ("node", s.name.clone()),
                ("from", input.from.clone()),
                ("edge", input.kind.as_str().to_string()),
            ];
            gauge!("streamflow_input_queue_fill_ratio", &labels).set(input.fill_ratio);
        }
    }
}

/// The flow a `streamflow run --metrics` endpoint reports; replaced when a
/// new version of the flow starts (`--watch`).
#[derive(Debug, Clone, Default)]
pub struct CurrentRun {
    flow: Arc<Mutex<Option<FlowMetrics>>>,
}

impl CurrentRun {
    /// Reports `flow` from now on, keeping the checkpoint counts of the run
    /// it replaces.
    pub fn set(&self, mut flow: FlowMetrics) {
        let mut current = self.flow.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = current.as_ref() {
            flow.earlier = match &old.checkpoints {
                Some(c) => old.earlier.plus(c),
                None => old.earlier,
            };
        }
        *current = Some(flow);
    }

    fn render(&self) -> String {
        let current = self
            .flow
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        render(current.as_slice())
    }
}

/// Serves `GET /metrics` (and `GET /healthz`) for `run` on `addr` in the
/// background; returns the bound address.
///
/// # Errors
/// When the address cannot be bound.
pub async fn expose(addr: SocketAddr, run: CurrentRun) -> Result<SocketAddr, crate::ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::ServeError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| crate::ServeError::Listen { addr, source })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let run = run.clone();
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], run.render()).into_response() }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}
