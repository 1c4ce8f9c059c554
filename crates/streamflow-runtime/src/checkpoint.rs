//! Checkpoints: the coordinator injects numbered barriers at the sources,
//! collects every instance's report (source positions, operator state,
//! sink commits staged), commits the checkpoint's metadata once all have
//! reported, and then tells the sinks to publish. Each process running
//! instances has an agent that writes its instances' state as it arrives
//! and relays between them and the coordinator, which may run in another
//! process. Also: choosing and loading the checkpoint to restore.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use streamflow_core::{CheckpointBarrier, Error, OperatorSnapshot, Result, processing_time_ms};
use streamflow_dsl::{CheckpointConfig, FlowGraph, Role};
use streamflow_state::{
    CheckpointMeta, CheckpointStore, InstanceState, NodeInfo, SourcePosition, StateFiles,
    instance_for_key_group,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use crate::tasks::sleep_until;

/// What an instance reports to its process's checkpoint agent.
pub(crate) enum Ack {
    /// A source emitted barrier `id` at `position`.
    Source {
        id: u64,
        node: String,
        instance: usize,
        position: SourcePosition,
    },
    /// An operator's state at barrier `id`; `stored` is answered once it is
    /// written (synchronous checkpoints).
    Operator {
        id: u64,
        node: String,
        instance: usize,
        snapshot: OperatorSnapshot,
        /// How long the barrier waited for all inputs.
        alignment_ms: u64,
        stored: Option<oneshot::Sender<()>>,
    },
    /// A sink staged `pending` for barrier `id`.
    Sink {
        id: u64,
        node: String,
        instance: usize,
        pending: Vec<serde_json::Value>,
    },
    /// A source instance has no more input (or was asked to stop).
    SourceFinished,
}

/// What the agent tells a source instance.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SourceControl {
    /// Emit this barrier after the records pulled so far.
    Inject(CheckpointBarrier),
    /// This checkpoint is complete.
    Complete(u64),
}

/// How each task talks to its process's checkpoint agent.
#[derive(Clone)]
pub(crate) struct AckSender {
    pub(crate) sender: UnboundedSender<Ack>,
    pub(crate) asynchronous: bool,
}

impl AckSender {
    pub(crate) fn send(&self, ack: Ack) -> Result<()> {
        self.sender
            .send(ack)
            .map_err(|_| Error::ChannelClosed("checkpoint coordinator stopped".into()))
    }
}

/// What the instances of one process report to the checkpoint coordinator
/// (their state is written by then: a report carries references only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointReport {
    /// One instance's part of checkpoint `id`: a source's position, an
    /// operator's state files or a sink's staged commits.
    Instance {
        /// The checkpoint.
        id: u64,
        /// The instance's part.
        state: InstanceState,
    },
    /// A source instance has no more input (or was asked to stop); once
    /// every source instance has said so, the final checkpoint is taken.
    SourceFinished,
}

/// What the checkpoint coordinator tells the processes running a flow's
/// instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointCommand {
    /// Every source instance emits this barrier after what it has read.
    Inject {
        /// The checkpoint.
        id: u64,
        /// When the coordinator started it (ms since epoch).
        timestamp_ms: i64,
        /// The run ends after it.
        is_final: bool,
    },
    /// Checkpoint `id` is committed: sinks publish what they staged for it.
    Complete(u64),
}

/// A process's checkpoint agent: it writes the state its instances
/// snapshot, reports to the coordinator (in this process or another) and
/// relays the coordinator's commands to its sources and sinks. It ends
/// when every local instance has ended.
pub(crate) struct Agent {
    pub(crate) files: Arc<StateFiles>,
    pub(crate) sources: Vec<UnboundedSender<SourceControl>>,
    pub(crate) sinks: Vec<UnboundedSender<u64>>,
    pub(crate) acks: UnboundedReceiver<Ack>,
    pub(crate) reports: UnboundedSender<CheckpointReport>,
    pub(crate) commands: UnboundedReceiver<CheckpointCommand>,
}

impl Agent {
    pub(crate) async fn run(mut self) -> Result<()> {
        let mut commands_open = true;
        let mut final_id = None;
        loop {
            tokio::select! {
                ack = self.acks.recv() => {
                    let Some(ack) = ack else { return Ok(()) };
                    let report = self.report(ack).await?;
                    self.reports.send(report).map_err(|_| {
                        Error::ChannelClosed("checkpoint coordinator stopped".into())
                    })?;
                }
                command = self.commands.recv(), if commands_open => match command {
                    Some(CheckpointCommand::Inject { id, timestamp_ms, is_final }) => {
                        if is_final {
                            final_id = Some(id);
                        }
                        let barrier = CheckpointBarrier { id, timestamp_ms, is_final };
                        for s in &self.sources {
                            // A source that has gone away fails the run elsewhere.
                            let _ = s.send(SourceControl::Inject(barrier));
                        }
                    }
                    Some(CheckpointCommand::Complete(id)) => {
                        for sink in &self.sinks {
                            let _ = sink.send(id);
                        }
                        for source in &self.sources {
                            let _ = source.send(SourceControl::Complete(id));
                        }
                        if final_id == Some(id) {
                            // Nothing follows the final checkpoint: sources
                            // and sinks end once they see their control closed.
                            self.sources.clear();
                            self.sinks.clear();
                        }
                    }
                    None => {
                        commands_open = false;
                        self.sources.clear();
                        self.sinks.clear();
                    }
                },
            }
        }
    }

    async fn report(&self, ack: Ack) -> Result<CheckpointReport> {
        let (id, state) = match ack {
            Ack::SourceFinished => return Ok(CheckpointReport::SourceFinished),
            Ack::Source {
                id,
                node,
                instance,
                position,
            } => (
                id,
                InstanceState {
                    node,
                    instance,
                    source: Some(position),
                    ..InstanceState::default()
                },
            ),
            Ack::Operator {
                id,
                node,
                instance,
                snapshot,
                alignment_ms,
                stored,
            } => {
                let blobs = self
                    .files
                    .write_state(id, &node, instance, &snapshot)
                    .await?;
                if let Some(done) = stored {
                    let _ = done.send(());
                }
                (
                    id,
                    InstanceState {
                        node,
                        instance,
                        blobs,
                        alignment_ms,
                        ..InstanceState::default()
                    },
                )
            }
            Ack::Sink {
                id,
                node,
                instance,
                pending,
            } => (
                id,
                InstanceState {
                    node,
                    instance,
                    pending,
                    ..InstanceState::default()
                },
            ),
        };
        Ok(CheckpointReport::Instance { id, state })
    }
}

struct InFlight {
    started: Instant,
    started_ms: i64,
    is_final: bool,
    instances: Vec<InstanceState>,
    bytes: u64,
}

/// A flow's checkpoint coordinator: it triggers numbered checkpoints,
/// collects every instance's report, commits the checkpoint's metadata
/// once all have reported, and then tells the sinks to publish. It talks
/// to the instances only through commands and reports, so the instances
/// may run in this process or in others.
pub struct CheckpointCoordinator {
    store: Arc<CheckpointStore>,
    config: CheckpointConfig,
    nodes: Vec<NodeInfo>,
    instances: usize,
    source_instances: usize,
    next_id: u64,
    restore: Option<CheckpointMeta>,
    metrics: Arc<crate::metrics::CheckpointMetrics>,
}

impl CheckpointCoordinator {
    /// Opens the flow's checkpoint storage, removes what a crash left of
    /// incomplete checkpoints and chooses the checkpoint to restore.
    /// `None` when the flow takes no checkpoints.
    ///
    /// # Errors
    /// The storage cannot be opened, or the chosen checkpoint does not fit
    /// the flow (see [`RecoveryOptions`]).
    pub async fn prepare(graph: &FlowGraph, options: &RecoveryOptions) -> Result<Option<Self>> {
        let Some(config) = &graph.checkpoint else {
            return Ok(None);
        };
        let store = Arc::new(CheckpointStore::open(&config.storage)?);
        store.clean_incomplete().await;
        let next_id = store.list().await?.last().map_or(1, |m| m.id + 1);
        let restore = choose(&store, graph, options).await?;
        Ok(Some(Self {
            store,
            config: config.clone(),
            nodes: node_infos(graph),
            instances: graph.nodes.iter().map(|n| n.parallelism).sum(),
            source_instances: graph
                .nodes
                .iter()
                .filter(|n| n.role == Role::Source)
                .map(|n| n.parallelism)
                .sum(),
            next_id,
            restore,
            metrics: Arc::default(),
        }))
    }

    /// The checkpoint the run restores, if any.
    pub fn restore(&self) -> Option<&CheckpointMeta> {
        self.restore.as_ref()
    }

    /// The checkpoint counters of the run.
    pub fn metrics(&self) -> Arc<crate::metrics::CheckpointMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Coordinates the run's checkpoints until the final one is complete
    /// (or the reports end). A checkpoint that cannot be committed, or is
    /// not complete within the configured timeout, fails the run (which
    /// then restarts from the last complete one); it is counted and
    /// reported as failed.
    ///
    /// # Errors
    /// A checkpoint failed.
    pub async fn run(
        self,
        commands: UnboundedSender<CheckpointCommand>,
        reports: UnboundedReceiver<CheckpointReport>,
    ) -> Result<()> {
        let metrics = Arc::clone(&self.metrics);
        let result = self.coordinate(commands, reports).await;
        if let Err(e) = &result {
            metrics.record_failure();
            tracing::warn!(target: "streamflow::checkpoint", event = "checkpoint_failed", error = %e, "checkpoint failed");
        }
        result
    }

    async fn coordinate(
        mut self,
        commands: UnboundedSender<CheckpointCommand>,
        mut reports: UnboundedReceiver<CheckpointReport>,
    ) -> Result<()> {
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.interval,
            self.config.interval,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_flight: BTreeMap<u64, InFlight> = BTreeMap::new();
        let mut finished = 0;
        let mut final_id = None;
        loop {
            let oldest = in_flight.iter().next().map(|(id, f)| (*id, f.started));
            let deadline = oldest
                .map(|(_, started)| tokio::time::Instant::from_std(started) + self.config.timeout);
            tokio::select! {
                _ = sleep_until(deadline), if deadline.is_some() => {
                    let id = oldest.map_or(0, |(id, _)| id);
                    return Err(Error::Other(format!(
                        "checkpoint {id} was not complete after {:?} (checkpoint.timeout)",
                        self.config.timeout
                    )));
                }
                _ = tick.tick(), if final_id.is_none() && in_flight.is_empty() => {
                    let id = self.trigger(false, &mut in_flight, &commands);
                    tracing::debug!(checkpoint = id, "checkpoint triggered");
                }
                report = reports.recv() => {
                    let (id, state) = match report {
                        None => return Ok(()),
                        Some(CheckpointReport::SourceFinished) => {
                            finished += 1;
                            if finished == self.source_instances && final_id.is_none() {
                                final_id = Some(self.trigger(true, &mut in_flight, &commands));
                            }
                            continue;
                        }
                        Some(CheckpointReport::Instance { id, state }) => (id, state),
                    };
                    let flight = in_flight.get_mut(&id).ok_or_else(|| {
                        Error::Other(format!("acknowledgement for unknown checkpoint {id}"))
                    })?;
                    flight.bytes += state.blobs.iter().map(|b| b.bytes).sum::<u64>();
                    flight.instances.push(state);
                    if flight.instances.len() == self.instances
                        && let Some(done) = in_flight.remove(&id)
                    {
                        self.complete(id, done, &commands).await?;
                        if final_id == Some(id) {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    fn trigger(
        &mut self,
        is_final: bool,
        in_flight: &mut BTreeMap<u64, InFlight>,
        commands: &UnboundedSender<CheckpointCommand>,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let timestamp_ms = processing_time_ms();
        in_flight.insert(
            id,
            InFlight {
                started: Instant::now(),
                started_ms: timestamp_ms,
                is_final,
                instances: Vec::new(),
                bytes: 0,
            },
        );
        // Instances that have gone away fail the run elsewhere.
        let _ = commands.send(CheckpointCommand::Inject {
            id,
            timestamp_ms,
            is_final,
        });
        id
    }

    async fn complete(
        &mut self,
        id: u64,
        done: InFlight,
        commands: &UnboundedSender<CheckpointCommand>,
    ) -> Result<()> {
        let duration = done.started.elapsed();
        let meta = CheckpointMeta {
            id,
            started_ms: done.started_ms,
            duration_ms: duration.as_millis() as u64,
            bytes: done.bytes,
            is_final: done.is_final,
            nodes: self.nodes.clone(),
            instances: done.instances,
        };
        self.store.commit(&meta).await?;
        crash_point(id);
        self.metrics.record(crate::metrics::LastCheckpoint {
            id,
            started_ms: meta.started_ms,
            duration_ms: meta.duration_ms,
            bytes: meta.bytes,
        });
        tracing::info!(
            target: "streamflow::checkpoint",
            event = "checkpoint_completed",
            checkpoint = id,
            duration_ms = meta.duration_ms,
            bytes = meta.bytes,
            is_final = meta.is_final,
            "checkpoint complete"
        );
        let _ = commands.send(CheckpointCommand::Complete(id));
        self.store.prune(self.config.retain).await
    }
}

/// Test hook: `STREAMFLOW_CRASH_AFTER_COMMIT=<id>` kills the process right
/// after checkpoint `id` is recorded and before any sink has published it,
/// the window that two-phase commit must survive.
fn crash_point(id: u64) {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var("STREAMFLOW_CRASH_AFTER_COMMIT")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if *at == Some(id) {
        tracing::error!(
            checkpoint = id,
            "crashing on request (STREAMFLOW_CRASH_AFTER_COMMIT)"
        );
        std::process::abort();
    }
}

/// What to restore from, as asked on the command line.
#[derive(Debug, Clone, Default)]
pub struct RecoveryOptions {
    /// Ignore existing checkpoints (they are kept; new ones continue the numbering).
    pub fresh: bool,
    /// Restore this checkpoint (or the newest intact one before it).
    pub from_checkpoint: Option<u64>,
    /// Restore even when stateful nodes were removed or changed type (their state is dropped).
    pub allow_state_drop: bool,
}

/// A checkpoint chosen for restoring, with its state split per new instance.
pub(crate) struct Restored {
    pub(crate) meta: CheckpointMeta,
    /// (node, new instance) → operator snapshot.
    pub(crate) operators: BTreeMap<(String, usize), OperatorSnapshot>,
}

impl Restored {
    pub(crate) fn source(&self, node: &str, instance: usize) -> Option<&SourcePosition> {
        self.meta
            .instances
            .iter()
            .find(|i| i.node == node && i.instance == instance)
            .and_then(|i| i.source.as_ref())
    }

    /// Staged commits of `node` that new instance `instance` replays.
    pub(crate) fn sink_pending(
        &self,
        node: &str,
        instance: usize,
        parallelism: usize,
    ) -> Vec<serde_json::Value> {
        self.meta
            .instances
            .iter()
            .filter(|i| i.node == node && i.instance % parallelism == instance)
            .flat_map(|i| i.pending.iter().cloned())
            .collect()
    }
}

/// The nodes of `graph` as recorded in checkpoints.
fn node_infos(graph: &FlowGraph) -> Vec<NodeInfo> {
    graph
        .nodes
        .iter()
        .map(|n| NodeInfo {
            name: n.name.clone(),
            kind: n.kind.clone(),
            parallelism: n.parallelism,
        })
        .collect()
}

/// Picks the checkpoint to restore, refusing restores that would silently
/// lose state.
async fn choose(
    store: &CheckpointStore,
    graph: &FlowGraph,
    options: &RecoveryOptions,
) -> Result<Option<CheckpointMeta>> {
    if options.fresh {
        return Ok(None);
    }
    let chosen = store
        .latest_valid(options.from_checkpoint, |meta, e| {
            tracing::warn!(checkpoint = meta.id, error = %e, "checkpoint damaged: using an older one");
        })
        .await?;
    let Some(meta) = chosen else {
        if let Some(id) = options.from_checkpoint {
            return Err(Error::Other(format!(
                "no intact checkpoint at or before {id} in {}",
                store.location()
            )));
        }
        return Ok(None);
    };
    check_compatible(&meta, graph, options.allow_state_drop)?;
    Ok(Some(meta))
}

/// Loads the state of checkpoint `meta`, split over the flow's instances
/// as they are now (key groups to their owners).
pub(crate) async fn load(
    files: &StateFiles,
    graph: &FlowGraph,
    meta: CheckpointMeta,
) -> Result<Restored> {
    let mut operators: BTreeMap<(String, usize), OperatorSnapshot> = BTreeMap::new();
    for node in graph.nodes.iter().filter(|n| n.role == Role::Stage) {
        let old = meta
            .nodes
            .iter()
            .find(|o| o.name == node.name && o.kind == node.kind);
        if old.is_none() {
            continue;
        }
        for inst in meta.instances.iter().filter(|i| i.node == node.name) {
            let snapshot = files.read_state(&inst.blobs).await?;
            for (name, entries) in snapshot.entries {
                for (group, batch) in entries {
                    let target = match group {
                        Some(g) => instance_for_key_group(g, node.parallelism),
                        None => inst.instance % node.parallelism,
                    };
                    operators
                        .entry((node.name.clone(), target))
                        .or_default()
                        .put(&name, group, batch);
                }
            }
        }
    }
    Ok(Restored { meta, operators })
}

fn check_compatible(meta: &CheckpointMeta, graph: &FlowGraph, allow_drop: bool) -> Result<()> {
    let mut problems = Vec::new();
    for old in &meta.nodes {
        let has_state = meta
            .instances
            .iter()
            .any(|i| i.node == old.name && (!i.blobs.is_empty() || i.source.is_some()));
        let now = graph.nodes.iter().find(|n| n.name == old.name);
        match now {
            None if has_state => problems.push(format!(
                "'{}' ({}) has state in checkpoint {} but is no longer in the flow",
                old.name, old.kind, meta.id
            )),
            Some(n) if n.kind != old.kind && has_state => problems.push(format!(
                "'{}' was a {} and is now a {}: its state cannot be restored",
                old.name, old.kind, n.kind
            )),
            Some(n) if n.role == Role::Source && n.parallelism != old.parallelism => {
                problems.push(format!(
                    "source '{}' ran with parallelism {} and now {}: its positions cannot be mapped",
                    old.name, old.parallelism, n.parallelism
                ))
            }
            _ => {}
        }
    }
    if problems.is_empty() || allow_drop {
        for p in &problems {
            tracing::warn!("{p}: state dropped (--allow-state-drop)");
        }
        return Ok(());
    }
    Err(Error::Other(format!(
        "cannot restore checkpoint {}: {} (start with --fresh, or --allow-state-drop to drop that state)",
        meta.id,
        problems.join("; ")
    )))
}
