//! Starting, stopping and watching a pipeline.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamflow_core::{Diagnostics, Error, Result};
use streamflow_dsl::{FlowSpec, Mode, Role};
use streamflow_state::StateFiles;
use tokio::sync::mpsc::{channel, unbounded_channel};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::checkpoint::{self, AckSender, Agent, CheckpointCoordinator, RecoveryOptions};
use crate::exchange::{Exchange, Partitioning};
use crate::input::{InputChannel, InputSet};
use crate::metrics::{EdgeKind, InputQueues, NodeMetrics};
use crate::plan::{PhysicalPlan, Planned, validate_spec_with};
use crate::tasks::{
    OperatorCheckpoints, Outputs, SinkCheckpoints, SourceCheckpoints, SourceTime, run_operator,
    run_sink, run_source,
};
use crate::transport::{Bridge, ChannelId, Placement};
use streamflow_operators::process::Components;

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
        Self::from_spec_with(spec, Components::builtin())
    }

    /// [`from_spec`](Self::from_spec) with named components (processors,
    /// predicates, channels, ...) that `process` stages reference.
    ///
    /// # Errors
    /// Every problem in the declaration, each with its path.
    pub fn from_spec_with(spec: &FlowSpec, components: &Components) -> Result<Self, Diagnostics> {
        Ok(Self {
            plan: validate_spec_with(spec, components)?,
        })
    }

    /// The physical plan (schemas per node).
    pub fn plan(&self) -> &PhysicalPlan {
        &self.plan
    }

    /// Spawns every instance on the current Tokio runtime, resuming from
    /// the newest intact checkpoint when the flow takes checkpoints.
    ///
    /// # Errors
    /// When a source or sink cannot be opened, or a checkpoint cannot be restored.
    pub async fn start(&self) -> Result<RunHandle> {
        self.start_with(&RecoveryOptions::default()).await
    }

    /// [`start`](Self::start) with explicit recovery choices.
    ///
    /// # Errors
    /// When a source or sink cannot be opened, or a checkpoint cannot be restored.
    pub async fn start_with(&self, options: &RecoveryOptions) -> Result<RunHandle> {
        self.start_placed(options, None).await
    }

    /// Starts the instances `placement` puts in this process (all of them
    /// without one), their channels to instances elsewhere carried by its
    /// transport. Every process of a run plans the same flow.
    ///
    /// With checkpoints, the flow's [`CheckpointCoordinator`] runs
    /// elsewhere, reached through the transport, and the checkpoint to
    /// restore is the placement's.
    ///
    /// # Errors
    /// When a source or sink cannot be opened, or a checkpoint cannot be
    /// restored.
    pub async fn start_placed(
        &self,
        options: &RecoveryOptions,
        placement: Option<&Placement>,
    ) -> Result<RunHandle> {
        let plan = &self.plan;
        let graph = &plan.graph;
        // Checkpoints: this process's agent, and the coordinator here
        // unless the instances are placed over several processes (then it
        // runs elsewhere and chose the checkpoint to restore).
        let mut restored = None;
        let mut coordinator = None;
        let mut agent = None;
        if let Some(config) = &graph.checkpoint {
            let meta = match placement {
                None => {
                    let c = CheckpointCoordinator::prepare(graph, options).await?;
                    let meta = c.as_ref().and_then(|c| c.restore().cloned());
                    coordinator = c;
                    meta
                }
                Some(p) => p.restore().cloned(),
            };
            let files = Arc::new(StateFiles::open(&config.storage)?);
            if let Some(meta) = meta {
                tracing::info!(checkpoint = meta.id, storage = %config.storage, "restoring from checkpoint");
                restored = Some(checkpoint::load(&files, graph, meta).await?);
            }
            let (acks, ack_rx) = unbounded_channel();
            let acks = AckSender {
                sender: acks,
                asynchronous: config.asynchronous,
            };
            agent = Some((files, acks, ack_rx));
        }
        let mut source_injects = Vec::new();
        let mut sink_commits = Vec::new();
        let acks = agent.as_ref().map(|a| a.1.clone());
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
        let mut queues: Vec<Vec<InputQueues>> = graph.nodes.iter().map(|_| Vec::new()).collect();
        // Each channel links one producer instance to one consumer instance.
        // Where only one end runs here, the other end of its local channel
        // goes to the transport (a bridge task); where neither does, it is
        // not made.
        let local = |node: usize, instance: usize| placement.is_none_or(|p| p.runs(node, instance));
        let mut bridges: Vec<Bridge> = Vec::new();
        for (c, consumer) in graph.nodes.iter().enumerate() {
            let side_inputs = consumer.dead_letter_inputs.iter().map(|&p| (p, Some(true)));
            let side_inputs =
                side_inputs.chain(consumer.late_inputs.iter().map(|&p| (p, Some(false))));
            let all_inputs = consumer
                .inputs
                .iter()
                .map(|&p| (p, None))
                .chain(side_inputs);
            for (input, (p, side)) in all_inputs.enumerate() {
                let producer = &graph.nodes[p];
                let mut watched = InputQueues {
                    from: producer.name.clone(),
                    kind: match side {
                        None => EdgeKind::Data,
                        Some(true) => EdgeKind::DeadLetters,
                        Some(false) => EdgeKind::Late,
                    },
                    queues: Vec::new(),
                };
                // Side inputs are one logical input of their consumer.
                let logical = if side.is_none() { input } else { 0 };
                let key_by = match side {
                    None => plan.nodes[c].key_by.get(input).cloned().unwrap_or_default(),
                    Some(_) => Vec::new(),
                };
                for i in 0..producer.parallelism {
                    let mut senders = Vec::with_capacity(consumer.parallelism);
                    for j in 0..consumer.parallelism {
                        let (tx, rx) = channel(consumer.queue_capacity);
                        let id = ChannelId {
                            producer: p,
                            producer_instance: i,
                            consumer: c,
                            consumer_instance: j,
                            input,
                        };
                        match (local(p, i), local(c, j), placement) {
                            (true, true, _) | (_, _, None) => {
                                watched.queues.push(tx.downgrade());
                                senders.push(tx);
                                inputs[c][j].push(InputChannel {
                                    receiver: rx,
                                    logical,
                                });
                            }
                            (true, false, Some(placement)) => {
                                senders.push(tx);
                                bridges.push(placement.transport().outbound(id, rx));
                            }
                            (false, true, Some(placement)) => {
                                watched.queues.push(tx.downgrade());
                                bridges.push(placement.transport().inbound(id, tx));
                                inputs[c][j].push(InputChannel {
                                    receiver: rx,
                                    logical,
                                });
                            }
                            (false, false, Some(_)) => {}
                        }
                    }
                    if !local(p, i) {
                        continue;
                    }
                    let exchange = match side {
                        None => {
                            let partitioning = if !key_by.is_empty() {
                                Partitioning::Hash(Arc::new(key_by.clone()))
                            } else if producer.parallelism == consumer.parallelism {
                                Partitioning::Forward(i)
                            } else {
                                Partitioning::RoundRobin
                            };
                            edges[p][i].push(Exchange::new(senders, partitioning));
                            continue;
                        }
                        Some(_) => Exchange::new(senders, Partitioning::RoundRobin),
                    };
                    if side == Some(true) {
                        dlqs[p][i] = Some(exchange);
                    } else {
                        lates[p][i] = Some(exchange);
                    }
                }
                queues[c].push(watched);
            }
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        // Everything the run logs names its flow (the server's event log
        // attributes events by it).
        let span = tracing::info_span!("flow", flow = %graph.name);
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
                if !local(id, instance) {
                    continue;
                }
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
                        let mut time = plan.nodes[id].time.as_ref().map(|t| SourceTime {
                            watermarks: t.watermarks(),
                            idle_timeout: t.spec().watermark.idle_timeout,
                            assigner: Arc::clone(t),
                        });
                        let mut source = source;
                        source
                            .open(acks.is_some())
                            .await
                            .map_err(|e| e.in_stage(&node.name))?;
                        if let Some(position) = restored
                            .as_ref()
                            .and_then(|r| r.source(&node.name, instance))
                        {
                            source
                                .seek(&position.offset)
                                .await
                                .map_err(|e| e.in_stage(&node.name))?;
                            if let Some(t) = time.as_mut() {
                                t.watermarks.restore(position.max_event_time);
                            }
                        }
                        if let Some(t) = time.as_mut() {
                            t.watermarks
                                .assign_splits(&source.splits(), std::time::Instant::now());
                        }
                        let checkpoints = acks.as_ref().map(|acks| {
                            let (tx, rx) = unbounded_channel();
                            source_injects.push(tx);
                            SourceCheckpoints {
                                instance,
                                control: rx,
                                acks: acks.clone(),
                            }
                        });
                        tasks.spawn(
                            run_source(source, outputs, stop_rx.clone(), time, checkpoints)
                                .instrument(span.clone()),
                        );
                    }
                    Planned::Stage(f) => {
                        let checkpoints = acks.as_ref().map(|acks| OperatorCheckpoints {
                            instance,
                            restored: restored
                                .as_mut()
                                .and_then(|r| r.operators.remove(&(node.name.clone(), instance))),
                            acks: acks.clone(),
                        });
                        tasks.spawn(
                            run_operator(f.create(), InputSet::new(chans), outputs, checkpoints)
                                .instrument(span.clone()),
                        );
                    }
                    Planned::Sink(f) => {
                        let sink = f.create(instance).map_err(|e| e.in_stage(&node.name))?;
                        let checkpoints = acks.as_ref().map(|acks| {
                            let (tx, rx) = unbounded_channel();
                            sink_commits.push(tx);
                            SinkCheckpoints {
                                instance,
                                pending: restored
                                    .as_ref()
                                    .map(|r| r.sink_pending(&node.name, instance, node.parallelism))
                                    .unwrap_or_default(),
                                commits: rx,
                                acks: acks.clone(),
                            }
                        });
                        tasks.spawn(
                            run_sink(sink, InputSet::new(chans), outputs, checkpoints)
                                .instrument(span.clone()),
                        );
                    }
                }
            }
        }
        drop(acks);
        for bridge in bridges {
            tasks.spawn(bridge.instrument(span.clone()));
        }
        let restored_from = restored.as_ref().map(|r| r.meta.id);
        let mut checkpoint_metrics = Arc::default();
        if let Some((files, acks, ack_rx)) = agent {
            drop(acks);
            let (reports, reports_rx) = unbounded_channel();
            let (commands_tx, commands) = unbounded_channel();
            let agent = Agent {
                files,
                sources: source_injects,
                sinks: sink_commits,
                acks: ack_rx,
                reports,
                commands,
            };
            tasks.spawn(agent.run().instrument(span.clone()));
            match (coordinator, placement) {
                (Some(coordinator), _) => {
                    checkpoint_metrics = coordinator.metrics();
                    tasks.spawn(
                        coordinator
                            .run(commands_tx, reports_rx)
                            .instrument(span.clone()),
                    );
                }
                (None, Some(placement)) => {
                    tasks.spawn(
                        placement
                            .transport()
                            .checkpoints(reports_rx, commands_tx)
                            .instrument(span.clone()),
                    );
                }
                (None, None) => {
                    return Err(Error::Other("checkpoints without a coordinator".into()));
                }
            }
        }
        tracing::info!(pipeline = %graph.name, mode = ?graph.mode, tasks = tasks.len(), "pipeline started");
        let nodes = graph
            .nodes
            .iter()
            .zip(&metrics)
            .zip(queues)
            .map(|((n, m), inputs)| NodeInfo {
                name: n.name.clone(),
                role: n.role,
                kind: n.kind.clone(),
                parallelism: n.parallelism,
                metrics: Arc::clone(m),
                inputs,
            })
            .collect();
        Ok(RunHandle {
            restored_from,
            checkpoints: checkpoint_metrics,
            tasks,
            stop: stop_tx,
            nodes,
            started: Instant::now(),
            expected,
            mode: graph.mode,
        })
    }
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
    /// Its input edges' queues, in input order (side inputs last).
    pub inputs: Vec<InputQueues>,
}

impl NodeInfo {
    /// Its counters now.
    pub fn summary(&self) -> StageSummary {
        StageSummary {
            name: self.name.clone(),
            role: self.role,
            kind: self.kind.clone(),
            parallelism: self.parallelism,
            records_in: self.metrics.records_in(),
            records_out: self.metrics.records_out(),
            batches_in: self.metrics.batches_in(),
            batches_out: self.metrics.batches_out(),
            bytes_in: self.metrics.bytes_in(),
            bytes_out: self.metrics.bytes_out(),
            dead_letters: self.metrics.dead_letters(),
            late: self.metrics.late(),
            busy: self.metrics.busy(),
            watermark: self.metrics.watermark(),
            inputs: self
                .inputs
                .iter()
                .map(|q| InputFill {
                    from: q.from.clone(),
                    kind: q.kind,
                    fill_ratio: q.fill_ratio(),
                })
                .collect(),
        }
    }
}

/// A running pipeline.
pub struct RunHandle {
    restored_from: Option<u64>,
    checkpoints: Arc<crate::metrics::CheckpointMetrics>,
    tasks: JoinSet<Result<()>>,
    stop: watch::Sender<bool>,
    nodes: Vec<NodeInfo>,
    started: Instant,
    expected: Option<u64>,
    mode: Mode,
}

impl RunHandle {
    /// The checkpoint this run resumed from, if any.
    pub fn restored_from(&self) -> Option<u64> {
        self.restored_from
    }

    /// Checkpoint counters of this run.
    pub fn checkpoints(&self) -> Arc<crate::metrics::CheckpointMetrics> {
        Arc::clone(&self.checkpoints)
    }

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
                // Returned to the caller, who reports it (logging it too printed it twice).
                tracing::debug!(error = %e, "pipeline failed");
                return Err(e);
            }
        }
        let summary = RunSummary {
            elapsed: self.started.elapsed(),
            mode: self.mode,
            stages: self.nodes.iter().map(NodeInfo::summary).collect(),
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
    /// Batches received.
    pub batches_in: u64,
    /// Batches emitted.
    pub batches_out: u64,
    /// Arrow memory of the batches received (see [`NodeMetrics::bytes_in`]).
    pub bytes_in: u64,
    /// Arrow memory of the batches emitted.
    pub bytes_out: u64,
    /// Records sent to the dead-letter output.
    pub dead_letters: u64,
    /// Records too late for their windows.
    pub late: u64,
    /// Processing time summed over instances.
    pub busy: Duration,
    /// Event-time watermark in milliseconds (see [`NodeMetrics::watermark`]).
    pub watermark: Option<i64>,
    /// How full each input edge's queues are.
    pub inputs: Vec<InputFill>,
}

/// How full one input edge's queues are at a moment.
#[derive(Debug, Clone)]
pub struct InputFill {
    /// The producing node.
    pub from: String,
    /// What the edge carries.
    pub kind: EdgeKind,
    /// Queued over capacity, 0 to 1.
    pub fill_ratio: f64,
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
