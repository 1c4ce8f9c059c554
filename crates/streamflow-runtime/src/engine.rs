//! Starting, stopping and watching a pipeline.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamflow_core::{Diagnostics, Error, Message, Result};
use streamflow_dsl::{FlowSpec, Mode, Role};
use tokio::sync::mpsc::{Receiver, Sender, channel};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::exchange::{Exchange, Partitioning};
use crate::input::{InputChannel, InputSet};
use crate::metrics::NodeMetrics;
use crate::plan::{PhysicalPlan, Planned, validate_spec};
use crate::tasks::{Outputs, run_operator, run_sink, run_source};
use crate::watermark::WatermarkGenerator;

/// A validated pipeline, ready to start.
#[derive(Clone)]
pub struct Pipeline {
    plan: PhysicalPlan,
}

impl Pipeline {
    /// Loads, validates and plans a flow file (`overrides` as `path=value`).
    ///
    /// # Errors
    /// Every problem in the file, each with its path.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self, Diagnostics> {
        let spec = streamflow_dsl::load_file(path, overrides)?;
        Self::from_spec(&spec)
    }

    /// Validates and plans a declaration (from a file or the builder).
    ///
    /// # Errors
    /// Every problem in the declaration, each with its path.
    pub fn from_spec(spec: &FlowSpec) -> Result<Self, Diagnostics> {
        Ok(Self {
            plan: validate_spec(spec)?,
        })
    }

    /// The physical plan (schemas per node).
    pub fn plan(&self) -> &PhysicalPlan {
        &self.plan
    }

    /// Spawns every instance on the current Tokio runtime.
    ///
    /// # Errors
    /// When a source or sink cannot be opened.
    pub fn start(&self) -> Result<RunHandle> {
        let plan = &self.plan;
        let graph = &plan.graph;
        let n = graph.nodes.len();
        let metrics: Vec<Arc<NodeMetrics>> =
            (0..n).map(|_| Arc::new(NodeMetrics::default())).collect();

        // Channels: for each consumer, per (producer instance, consumer instance).
        let mut inputs: Vec<Vec<Vec<InputChannel>>> = graph
            .nodes
            .iter()
            .map(|node| (0..node.parallelism).map(|_| Vec::new()).collect())
            .collect();
        let mut edges: Vec<Vec<Vec<Exchange>>> = graph
            .nodes
            .iter()
            .map(|node| (0..node.parallelism).map(|_| Vec::new()).collect())
            .collect();
        let mut lates: Vec<Vec<Option<Exchange>>> = graph
            .nodes
            .iter()
            .map(|node| (0..node.parallelism).map(|_| None).collect())
            .collect();
        let mut dlqs: Vec<Vec<Option<Exchange>>> = graph
            .nodes
            .iter()
            .map(|node| (0..node.parallelism).map(|_| None).collect())
            .collect();
        for (c, consumer) in graph.nodes.iter().enumerate() {
            for (logical, &p) in consumer.inputs.iter().enumerate() {
                let producer = &graph.nodes[p];
                let key_by = &plan.nodes[c].key_by;
                for (i, producer_edges) in edges[p].iter_mut().enumerate() {
                    let (senders, receivers) =
                        channels(consumer.parallelism, consumer.queue_capacity);
                    for (j, rx) in receivers.into_iter().enumerate() {
                        inputs[c][j].push(InputChannel {
                            receiver: rx,
                            logical,
                        });
                    }
                    let partitioning = if !key_by.is_empty() {
                        Partitioning::Hash(Arc::new(key_by.clone()))
                    } else if producer.parallelism == consumer.parallelism {
                        Partitioning::Forward(i)
                    } else {
                        Partitioning::RoundRobin
                    };
                    producer_edges.push(Exchange::new(senders, partitioning));
                }
            }
            let side_inputs = consumer.dead_letter_inputs.iter().map(|&p| (p, true));
            let side_inputs = side_inputs.chain(consumer.late_inputs.iter().map(|&p| (p, false)));
            for (p, is_dlq) in side_inputs {
                let slots = if is_dlq { &mut dlqs[p] } else { &mut lates[p] };
                for slot in slots.iter_mut() {
                    let (senders, receivers) =
                        channels(consumer.parallelism, consumer.queue_capacity);
                    for (j, rx) in receivers.into_iter().enumerate() {
                        inputs[c][j].push(InputChannel {
                            receiver: rx,
                            logical: 0,
                        });
                    }
                    *slot = Some(Exchange::new(senders, Partitioning::RoundRobin));
                }
            }
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut expected = Some(0u64);
        for (id, node) in graph.nodes.iter().enumerate() {
            let node_inputs = std::mem::take(&mut inputs[id]);
            let node_edges = std::mem::take(&mut edges[id]);
            let node_dlqs = std::mem::take(&mut dlqs[id]);
            let node_lates = std::mem::take(&mut lates[id]);
            for (instance, (((chans, outs), dlq), late)) in node_inputs
                .into_iter()
                .zip(node_edges)
                .zip(node_dlqs)
                .zip(node_lates)
                .enumerate()
            {
                let outputs = Outputs {
                    node: node.name.clone(),
                    metrics: Arc::clone(&metrics[id]),
                    edges: outs,
                    dlq,
                    late,
                };
                match &plan.nodes[id].planned {
                    Planned::Source(f) => {
                        let source = f
                            .create(instance, node.parallelism)
                            .map_err(|e| e.in_stage(&node.name))?;
                        expected = expected.zip(source.size_hint()).map(|(a, b)| a + b);
                        let watermarks = match (&plan.nodes[id].event_time, &node.event_time) {
                            (Some(column), Some(spec)) => {
                                let index = plan.nodes[id]
                                    .schema
                                    .index_of(column)
                                    .map_err(|e| Error::arrow("event time", e))?;
                                let lag = spec
                                    .watermark
                                    .max_out_of_orderness
                                    .unwrap_or_default()
                                    .as_millis() as i64;
                                Some(WatermarkGenerator::new(index, lag))
                            }
                            _ => None,
                        };
                        let idle_timeout = node
                            .event_time
                            .as_ref()
                            .and_then(|e| e.watermark.idle_timeout);
                        tasks.spawn(run_source(
                            source,
                            outputs,
                            stop_rx.clone(),
                            watermarks,
                            idle_timeout,
                        ));
                    }
                    Planned::Stage(f) => {
                        tasks.spawn(run_operator(f.create(), InputSet::new(chans), outputs));
                    }
                    Planned::Sink(f) => {
                        let sink = f.create(instance).map_err(|e| e.in_stage(&node.name))?;
                        tasks.spawn(run_sink(
                            sink,
                            InputSet::new(chans),
                            node.name.clone(),
                            Arc::clone(&metrics[id]),
                        ));
                    }
                }
            }
        }
        tracing::info!(pipeline = %graph.name, mode = ?graph.mode, tasks = tasks.len(), "pipeline started");
        let nodes = graph
            .nodes
            .iter()
            .zip(&metrics)
            .map(|(n, m)| NodeInfo {
                name: n.name.clone(),
                role: n.role,
                kind: n.kind.clone(),
                parallelism: n.parallelism,
                metrics: Arc::clone(m),
            })
            .collect();
        Ok(RunHandle {
            tasks,
            stop: stop_tx,
            nodes,
            started: Instant::now(),
            expected,
            mode: graph.mode,
        })
    }
}

fn channels(n: usize, capacity: usize) -> (Vec<Sender<Message>>, Vec<Receiver<Message>>) {
    (0..n).map(|_| channel(capacity)).unzip()
}

/// A node as seen by monitoring.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Source, stage or sink.
    pub role: Role,
    /// Component type.
    pub kind: String,
    /// Number of instances.
    pub parallelism: usize,
    /// Live counters.
    pub metrics: Arc<NodeMetrics>,
}

/// A running pipeline.
pub struct RunHandle {
    tasks: JoinSet<Result<()>>,
    stop: watch::Sender<bool>,
    nodes: Vec<NodeInfo>,
    started: Instant,
    expected: Option<u64>,
    mode: Mode,
}

impl RunHandle {
    /// Asks the sources to stop; everything in flight is drained and flushed.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// A handle that can request a graceful stop from elsewhere (signal handlers).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Nodes with their live counters, in topological order.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Records the sources will produce in all, when every source knows.
    pub fn expected_records(&self) -> Option<u64> {
        self.expected.filter(|e| *e > 0)
    }

    /// Records produced by the sources so far.
    pub fn source_records(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Source)
            .map(|n| n.metrics.records_out())
            .sum()
    }

    /// Waits for every task. On the first failure the others are cancelled
    /// and that error is returned.
    ///
    /// # Errors
    /// The first task failure, attributed to its stage.
    pub async fn wait(mut self) -> Result<RunSummary> {
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = match joined {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err(Error::Other(format!("a task panicked: {e}"))),
                Err(e) => Err(Error::Other(format!("a task was cancelled: {e}"))),
            };
            if let Err(e) = outcome {
                if matches!(e, Error::Stage { ref source, .. } if matches!(**source, Error::ChannelClosed(_)))
                {
                    // A consequence of another failure; keep waiting for the cause.
                    continue;
                }
                self.tasks.abort_all();
                tracing::error!(error = %e, "pipeline failed");
                return Err(e);
            }
        }
        let summary = RunSummary {
            elapsed: self.started.elapsed(),
            mode: self.mode,
            stages: self
                .nodes
                .iter()
                .map(|n| StageSummary {
                    name: n.name.clone(),
                    role: n.role,
                    kind: n.kind.clone(),
                    parallelism: n.parallelism,
                    records_in: n.metrics.records_in(),
                    records_out: n.metrics.records_out(),
                    dead_letters: n.metrics.dead_letters(),
                    late: n.metrics.late(),
                    busy: n.metrics.busy(),
                })
                .collect(),
        };
        tracing::info!(
            elapsed_ms = summary.elapsed.as_millis() as u64,
            "pipeline finished"
        );
        Ok(summary)
    }
}

/// Totals for one node at the end of a run.
#[derive(Debug, Clone)]
pub struct StageSummary {
    /// Node name.
    pub name: String,
    /// Source, stage or sink.
    pub role: Role,
    /// Component type.
    pub kind: String,
    /// Instances.
    pub parallelism: usize,
    /// Records received.
    pub records_in: u64,
    /// Records emitted.
    pub records_out: u64,
    /// Records sent to the dead-letter output.
    pub dead_letters: u64,
    /// Records too late for their windows.
    pub late: u64,
    /// Processing time summed over instances.
    pub busy: Duration,
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Wall-clock duration.
    pub elapsed: Duration,
    /// The mode it ran in.
    pub mode: Mode,
    /// Per node, in topological order.
    pub stages: Vec<StageSummary>,
}

impl RunSummary {
    /// Records produced by all sources.
    pub fn source_records(&self) -> u64 {
        self.stages
            .iter()
            .filter(|s| s.role == Role::Source)
            .map(|s| s.records_out)
            .sum()
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<20} {:<11} {:>4} {:>12} {:>12} {:>10} {:>10} {:>10}",
            "node", "type", "par", "in", "out", "dead", "late", "busy"
        )?;
        for s in &self.stages {
            let (inn, out) = match s.role {
                Role::Source => ("-".to_string(), s.records_out.to_string()),
                Role::Stage => (s.records_in.to_string(), s.records_out.to_string()),
                Role::Sink => (s.records_in.to_string(), "-".to_string()),
            };
            writeln!(
                f,
                "{:<20} {:<11} {:>4} {:>12} {:>12} {:>10} {:>10} {:>9.3}s",
                s.name,
                s.kind,
                s.parallelism,
                inn,
                out,
                s.dead_letters,
                s.late,
                s.busy.as_secs_f64()
            )?;
        }
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} records from sources in {:.3}s ({:.0} records/s)",
            self.source_records(),
            secs,
            self.source_records() as f64 / secs.max(1e-9)
        )
    }
}
