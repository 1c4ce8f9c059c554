//! `GET /metrics`: the running flows' counters in Prometheus text format.
//!
//! The engine counts in atomics as it goes; a scrape copies them into a
//! `metrics` recorder of this server's own (no global state, no work on
//! the data path) and renders it with `metrics-exporter-prometheus`.

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use streamflow_runtime::resources;

use crate::supervisor::{State, Supervisor};

/// The recorder a server renders its metrics with.
pub struct Metrics {
    recorder: PrometheusRecorder,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            recorder: PrometheusBuilder::new().build_recorder(),
        }
    }

    /// The text exposition of every flow's counters and the process's use.
    pub fn render(&self, supervisor: &Supervisor) -> String {
        metrics::with_local_recorder(&self.recorder, || {
            if let Some(cpu) = resources::cpu_seconds() {
                counter!("process_cpu_seconds_total").absolute(cpu as u64);
            }
            if let Some(rss) = resources::rss_bytes() {
                gauge!("process_resident_memory_bytes").set(rss as f64);
            }
            for flow in supervisor.statuses() {
                let name = flow.name.clone();
                let running = matches!(flow.state, State::Running | State::Deploying);
                gauge!("streamflow_flow_running", "flow" => name.clone()).set(if running {
                    1.0
                } else {
                    0.0
                });
                gauge!("streamflow_flow_version", "flow" => name.clone()).set(flow.version as f64);
                counter!("streamflow_checkpoints_completed_total", "flow" => name.clone())
                    .absolute(flow.checkpoints);
                if let Some(c) = flow.last_checkpoint {
                    gauge!("streamflow_checkpoint_duration_seconds", "flow" => name.clone())
                        .set(c.duration_ms as f64 / 1000.0);
                    gauge!("streamflow_checkpoint_size_bytes", "flow" => name.clone())
                        .set(c.bytes as f64);
                    gauge!("streamflow_checkpoint_last_id", "flow" => name.clone())
                        .set(c.id as f64);
                }
                for node in &flow.nodes {
                    let labels = [
                        ("flow", name.clone()),
                        ("node", node.name.clone()),
                        ("role", node.role.to_string()),
                    ];
                    counter!("streamflow_records_in_total", &labels).absolute(node.records_in);
                    counter!("streamflow_records_out_total", &labels).absolute(node.records_out);
                    counter!("streamflow_dead_letters_total", &labels).absolute(node.dead_letters);
                    counter!("streamflow_late_records_total", &labels).absolute(node.late);
                    gauge!("streamflow_busy_seconds", &labels).set(node.busy_ms as f64 / 1000.0);
                }
            }
        });
        self.recorder.handle().render()
    }
}
