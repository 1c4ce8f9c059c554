//! Flows run over the cluster.
//!
//! The process that runs a flow on the cluster becomes its coordinator: it
//! takes the lease `coordinator.<flow>` (one coordinator per flow), places
//! the flow's instances on the workers present ([`Assignment`]) and
//! publishes the assignment, with the flow, at its lease epoch. Every
//! worker watches the published assignments, starts its share of a flow
//! (channels to the other workers, [`NatsTransport`]) and reports
//! in the `runs` bucket under `<flow>.<worker>`; the coordinator waits for
//! every share to finish, and on the first failure withdraws the
//! assignment, which stops the others. A newer epoch replaces a worker's
//! share of an older one.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use streamflow_dsl::FlowSpec;
use streamflow_runtime::{CheckpointCoordinator, Pipeline, Placement, RecoveryOptions};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::checkpoints::coordinator_link;
use crate::exchange::{DEFAULT_WINDOW, NatsTransport};
use crate::{
    Acquired, Assignment, Cluster, ClusterError, HeldLease, Member, NodeSpec, Result, check_name,
};

/// The bucket of workers' reports.
const RUNS: &str = "runs";

/// Where a worker's share of a flow run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Started.
    Running,
    /// Ended with every input drained.
    Finished,
    /// Ended by an error.
    Failed,
}

/// Records through one node's instances on one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCount {
    /// The node.
    pub name: String,
    /// Records its local instances received.
    pub records_in: u64,
    /// Records they emitted.
    pub records_out: u64,
}

/// What a worker says about its share of a flow run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The worker.
    pub worker: String,
    /// The assignment's epoch.
    pub epoch: u64,
    /// Where it is.
    pub state: RunState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per node with instances there, once ended.
    #[serde(default)]
    pub stages: Vec<StageCount>,
}

/// How a flow run over the cluster ended: each worker's last report.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The flow.
    pub flow: String,
    /// The epoch the flow ran at.
    pub epoch: u64,
    /// Per worker with a share.
    pub reports: Vec<Report>,
}

impl Outcome {
    /// Records per node summed over workers, in the flow's node order.
    pub fn stages(&self) -> Vec<StageCount> {
        let mut order = Vec::new();
        let mut sums: HashMap<String, StageCount> = HashMap::new();
        for s in self.reports.iter().flat_map(|r| &r.stages) {
            let sum = sums.entry(s.name.clone()).or_insert_with(|| {
                order.push(s.name.clone());
                StageCount {
                    name: s.name.clone(),
                    records_in: 0,
                    records_out: 0,
                }
            });
            sum.records_in += s.records_in;
            sum.records_out += s.records_out;
        }
        order.into_iter().filter_map(|n| sums.remove(&n)).collect()
    }
}

fn invalid_flow(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Invalid(format!("the flow does not plan: {e}"))
}

/// Restarts after failures a checkpointed flow is allowed before its run fails.
const MAX_RESTARTS: u64 = 10;

/// The low bits of an epoch number a run's restarts: the epoch of an
/// assignment is its coordinator's lease epoch shifted left by these, plus
/// the restart, so a restart outranks the run it replaces and a new
/// coordinator outranks every run of the old one.
const RESTART_BITS: u32 = 16;

/// Why one attempt at running a flow ended without its outcome.
enum Ended {
    /// The run can go on from its last complete checkpoint.
    Restart(ClusterError),
    /// A share failed; the run can go on from its last complete checkpoint
    /// once the cluster has settled (a share failing at once because a
    /// peer's worker died must not be placed on that worker again).
    ShareFailed {
        error: ClusterError,
        /// The workers the run was on.
        workers: Vec<String>,
    },
    /// Rescaling: the workers present would take a different assignment.
    Rescale(String),
    /// The run ends with this error.
    Fail(ClusterError),
}

/// Where an attempt is.
struct Attempt<'a> {
    flow: &'a str,
    spec: &'a FlowSpec,
    nodes: &'a [NodeSpec],
    epoch: u64,
}

impl Cluster {
    /// Runs `spec` over the workers of the cluster and waits for it to end.
    /// `stop` resolving once asks the sources to stop (everything in flight
    /// drains); resolving again withdraws the flow at once.
    ///
    /// A flow with checkpoints is checkpointed across the workers (in its
    /// `checkpoint.storage`, which every worker must reach, else in
    /// [`default_checkpoint_storage`](Cluster::default_checkpoint_storage)); when a
    /// worker is lost or a share fails, it restarts from its last complete
    /// checkpoint on the workers present (at most ten times), and when
    /// workers join it moves onto them after its next checkpoint.
    ///
    /// # Errors
    /// The flow coordinated elsewhere already, too few slots, a worker's
    /// share failing (its error) or its worker leaving (without
    /// checkpoints, or too often), the lease lost.
    pub async fn run_flow<S, F>(&self, spec: &FlowSpec, stop: S) -> Result<Outcome>
    where
        S: FnMut() -> F,
        F: Future<Output = ()>,
    {
        // Checkpoints go where every worker reaches them (the flow is named
        // by `name`, which planning requires). A relative directory is this
        // process's: the workers get it whole.
        let mut spec = spec.clone();
        if let (Some(name), Some(c)) = (spec.name.clone(), spec.checkpoint.as_mut()) {
            c.storage = Some(match c.storage.take() {
                None => self.default_checkpoint_storage(&name),
                Some(dir) if !dir.contains("://") && std::path::Path::new(&dir).is_relative() => {
                    std::path::absolute(&dir).map_or(dir, |p| p.display().to_string())
                }
                Some(other) => other,
            });
        }
        let spec = &spec;
        let pipeline = Pipeline::from_spec(spec).map_err(invalid_flow)?;
        let flow = pipeline.plan().graph.name.clone();
        check_name("flow name", &flow)?;
        let holder = format!("coordinator pid {}", std::process::id());
        let lease = match self
            .acquire(&format!("coordinator.{flow}"), holder.as_bytes())
            .await?
        {
            Acquired::Won(lease) => lease,
            Acquired::Held { value, .. } => {
                return Err(ClusterError::Invalid(format!(
                    "flow '{flow}' is running on the cluster already ({})",
                    String::from_utf8_lossy(&value)
                )));
            }
        };
        self.coordinate(spec, &pipeline, lease.keep(), stop).await
    }

    /// Coordinates the run of `pipeline` (planned from `spec`) holding its
    /// coordinator lease, restarting it from its last complete checkpoint
    /// when it can; withdraws it and gives the lease up at the end.
    async fn coordinate<S, F>(
        &self,
        spec: &FlowSpec,
        pipeline: &Pipeline,
        mut lease: HeldLease,
        mut stop: S,
    ) -> Result<Outcome>
    where
        S: FnMut() -> F,
        F: Future<Output = ()>,
    {
        let graph = &pipeline.plan().graph;
        let flow = graph.name.clone();
        let nodes: Vec<NodeSpec> = graph
            .nodes
            .iter()
            .map(|n| NodeSpec {
                name: n.name.clone(),
                parallelism: n.parallelism,
            })
            .collect();
        let mut restarts = 0u64;
        let mut failures = 0u64;
        let mut stopping = false;
        let result = loop {
            let attempt = Attempt {
                flow: &flow,
                spec,
                nodes: &nodes,
                epoch: (lease.epoch() << RESTART_BITS) | restarts,
            };
            let checkpoints =
                match CheckpointCoordinator::prepare(graph, &RecoveryOptions::default()).await {
                    Ok(c) => c,
                    Err(e) => {
                        break Err(ClusterError::Invalid(format!(
                            "flow '{flow}': checkpoints: {e}"
                        )));
                    }
                };
            let checkpointed = checkpoints.is_some();
            let mut settle = Vec::new();
            let why = match self
                .attempt(&attempt, checkpoints, &mut lease, &mut stop, &mut stopping)
                .await
            {
                Ok(outcome) => break Ok(outcome),
                Err(Ended::Fail(e)) => break Err(e),
                Err(Ended::Restart(e) | Ended::ShareFailed { error: e, .. })
                    if !checkpointed || stopping || failures >= MAX_RESTARTS =>
                {
                    break Err(e);
                }
                Err(Ended::Restart(e)) => {
                    failures += 1;
                    e.to_string()
                }
                Err(Ended::ShareFailed { error, workers }) => {
                    failures += 1;
                    settle = workers;
                    error.to_string()
                }
                Err(Ended::Rescale(why)) => why,
            };
            restarts += 1;
            tracing::warn!(flow = %flow, reason = %why, restart = restarts, "restarting the flow from its last complete checkpoint");
            // The shares of the run stop at once; a moment for them to go.
            if let Err(e) = self.withdraw(&flow).await {
                tracing::warn!(error = %e, flow = %flow, "withdrawing the assignment");
            }
            tokio::time::sleep(self.ttl().min(std::time::Duration::from_secs(1))).await;
            if !settle.is_empty() {
                self.await_departure(&settle).await;
            }
        };
        // Withdrawn either way: workers drop what is left of their shares.
        if let Err(e) = self.withdraw(&flow).await {
            tracing::warn!(error = %e, flow = %flow, "withdrawing the assignment");
        }
        lease.release().await;
        result
    }

    /// One run of a flow at one epoch: assigns it to the workers present,
    /// coordinates its checkpoints once every share runs, and waits for
    /// every share to finish.
    async fn attempt<S, F>(
        &self,
        run: &Attempt<'_>,
        mut checkpoints: Option<CheckpointCoordinator>,
        lease: &mut HeldLease,
        stop: &mut S,
        stopping: &mut bool,
    ) -> Result<Outcome, Ended>
    where
        S: FnMut() -> F,
        F: Future<Output = ()>,
    {
        let (flow, epoch) = (run.flow, run.epoch);
        let members = self.members().await.map_err(Ended::Fail)?;
        let mut assignment =
            Assignment::new(flow, epoch, run.nodes, &members).map_err(Ended::Restart)?;
        assignment.spec = Some(run.spec.clone());
        assignment.restore = checkpoints.as_ref().and_then(|c| c.restore().cloned());
        let shares: Vec<String> = assignment
            .workers
            .iter()
            .filter(|(_, tasks)| !tasks.is_empty())
            .map(|(w, _)| w.clone())
            .collect();
        let runs = self.bucket(RUNS).await.map_err(Ended::Fail)?;
        let mut reports_in = runs
            .watch_with_history(format!("{flow}.>"))
            .await
            .map_err(|e| Ended::Fail(self.error("watching reports", e)))?;
        let mut link = match &checkpoints {
            Some(_) => Some(
                coordinator_link(&self.client(), &self.run_prefix(flow, epoch))
                    .await
                    .map_err(|e| Ended::Fail(self.error("listening for checkpoint reports", e)))?,
            ),
            None => None,
        };
        self.publish_assignment(&assignment)
            .await
            .map_err(Ended::Fail)?;
        tracing::info!(
            flow = %flow,
            epoch,
            workers = shares.len(),
            restore = assignment.restore.as_ref().map(|m| m.id),
            "flow assigned"
        );

        let mut reports: BTreeMap<String, Report> = BTreeMap::new();
        let mut check = tokio::time::interval(self.ttl());
        // The checkpoint coordinator's task; dropped (aborted) with the attempt.
        let mut checkpointing: JoinSet<streamflow_core::Result<()>> = JoinSet::new();
        let mut metrics = None;
        let mut checkpoints_over = checkpoints.is_none();
        let mut rescale_after: Option<u64> = None;
        // A worker's report of this run: a failure restarts it; once every
        // share is up, barriers can reach every source.
        macro_rules! absorb {
            ($report:expr) => {{
                let report: Report = $report;
                if report.epoch == epoch {
                    if report.state == RunState::Failed {
                        return Err(Ended::ShareFailed {
                            error: ClusterError::Invalid(format!(
                                "worker '{}' failed: {}",
                                report.worker,
                                report.error.as_deref().unwrap_or("no reason given")
                            )),
                            workers: shares.clone(),
                        });
                    }
                    reports.insert(report.worker.clone(), report);
                    if reports.len() == shares.len()
                        && let Some(coordinator) = checkpoints.take()
                        && let Some(link) = link.as_mut()
                    {
                        let (commands, incoming) = link.channels();
                        metrics = Some(coordinator.metrics());
                        // In the caller's span: its events are the flow's.
                        checkpointing.spawn(tracing::Instrument::in_current_span(
                            coordinator.run(commands, incoming),
                        ));
                    }
                }
            }};
        }
        loop {
            tokio::select! {
                entry = reports_in.next() => {
                    let entry = match entry {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => return Err(Ended::Fail(self.error("watching reports", e))),
                        None => return Err(Ended::Fail(self.error("watching reports", "the watch ended"))),
                    };
                    if entry.operation != kv::Operation::Put {
                        continue;
                    }
                    let Ok(report) = serde_json::from_slice::<Report>(&entry.value) else {
                        continue;
                    };
                    absorb!(report);
                }
                Some(ended) = checkpointing.join_next(), if !checkpoints_over => {
                    match ended {
                        Ok(Ok(())) => checkpoints_over = true,
                        Ok(Err(e)) => return Err(Ended::Restart(ClusterError::Invalid(format!("flow '{flow}': {e}")))),
                        Err(e) => return Err(Ended::Restart(ClusterError::Invalid(format!("flow '{flow}': the checkpoint coordinator stopped: {e}")))),
                    }
                }
                _ = check.tick() => {
                    // The watch may lag or miss an update under load: read
                    // the reports of the shares not finished yet as well.
                    for worker in &shares {
                        if reports.get(worker).is_some_and(|r| r.state == RunState::Finished) {
                            continue;
                        }
                        if let Ok(Some(value)) = runs.get(format!("{flow}.{worker}")).await
                            && let Ok(report) = serde_json::from_slice::<Report>(&value)
                        {
                            absorb!(report);
                        }
                    }
                    let present = self.members().await.map_err(Ended::Fail)?;
                    if let Some(gone) = departed(&shares, &present) {
                        return Err(Ended::Restart(ClusterError::Invalid(format!(
                            "worker '{gone}' left the cluster while running its share of '{flow}'"
                        ))));
                    }
                    let Some(metrics) = &metrics else { continue };
                    if *stopping {
                        continue;
                    }
                    match rescale_after {
                        Some(seen) if metrics.completed() > seen => {
                            return Err(Ended::Rescale(format!(
                                "moving onto the {} workers present after checkpoint {}",
                                present.len(),
                                metrics.last().map_or(0, |l| l.id)
                            )));
                        }
                        Some(_) => {}
                        None => {
                            let wanted = Assignment::new(flow, epoch, run.nodes, &present);
                            if wanted.is_ok_and(|w| w.workers != assignment.workers) {
                                tracing::info!(flow = %flow, workers = present.len(), "workers changed: rescaling after the next checkpoint");
                                rescale_after = Some(metrics.completed());
                            }
                        }
                    }
                }
                why = lease.until_lost() => {
                    return Err(Ended::Fail(ClusterError::LeaseLost {
                        key: format!("coordinator.{flow}"),
                        epoch,
                        reason: why.to_string(),
                    }));
                }
                () = stop() => {
                    if *stopping {
                        return Err(Ended::Fail(ClusterError::Invalid(format!("flow '{flow}' withdrawn"))));
                    }
                    *stopping = true;
                    assignment.stopping = true;
                    self.publish_assignment(&assignment).await.map_err(Ended::Fail)?;
                    tracing::info!(flow = %flow, "stopping: sources asked to stop");
                }
            }
            // Done once every share has finished and, with checkpoints, the
            // final one is committed.
            let finished = reports
                .values()
                .filter(|r| r.state == RunState::Finished)
                .count();
            if finished == shares.len() && checkpoints_over {
                break;
            }
        }
        drop(link);
        Ok(Outcome {
            flow: flow.to_string(),
            epoch,
            reports: reports.into_values().collect(),
        })
    }

    /// Waits until one of `workers` has left the cluster, for a ttl at
    /// most: a worker that died has by then (its lease expired), and is
    /// not given a share of the next attempt.
    async fn await_departure(&self, workers: &[String]) {
        let deadline = tokio::time::Instant::now() + self.ttl();
        while tokio::time::Instant::now() < deadline {
            match self.members().await {
                Ok(present) if departed(workers, &present).is_some() => return,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reading the members"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The subject prefix of the run of `flow` at `epoch`.
    fn run_prefix(&self, flow: &str, epoch: u64) -> String {
        format!("streamflow.{}.{flow}.{epoch}", self.name())
    }

    /// Removes the published assignment of `flow`.
    async fn withdraw(&self, flow: &str) -> Result<()> {
        let store = self.bucket("assignments").await?;
        store
            .delete(flow)
            .await
            .map_err(|e| self.error(format!("withdrawing the assignment of {flow}"), e))
    }

    /// Runs this worker's shares of the flows assigned on the cluster until
    /// `shutdown` resolves (the shares still running are dropped; their
    /// coordinators see the worker leave).
    ///
    /// # Errors
    /// The server failing.
    pub async fn serve_assignments(
        &self,
        worker: &str,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let assignments = self.bucket("assignments").await?;
        let runs = self.bucket(RUNS).await?;
        let mut published = assignments
            .watch_with_history(">")
            .await
            .map_err(|e| self.error("watching assignments", e))?;
        let mut shares: HashMap<String, Share> = HashMap::new();
        tokio::pin!(shutdown);
        let mut check = tokio::time::interval(self.ttl());
        loop {
            let entry = tokio::select! {
                () = &mut shutdown => return Ok(()),
                entry = published.next() => entry,
                _ = check.tick() => {
                    self.drop_orphans(&mut shares).await;
                    continue;
                }
            };
            let entry = match entry {
                Some(Ok(e)) => e,
                Some(Err(e)) => return Err(self.error("watching assignments", e)),
                None => return Err(self.error("watching assignments", "the watch ended")),
            };
            let flow = entry.key.clone();
            let assignment = match entry.operation {
                kv::Operation::Put => match serde_json::from_slice::<Assignment>(&entry.value) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(flow = %flow, error = %e, "an assignment that does not read");
                        continue;
                    }
                },
                _ => {
                    if let Some(share) = shares.remove(&flow) {
                        tracing::info!(flow = %flow, epoch = share.epoch, "assignment withdrawn");
                        share.task.abort();
                    }
                    continue;
                }
            };
            if let Some(share) = shares.get(&flow) {
                if share.epoch == assignment.epoch {
                    if assignment.stopping {
                        let _ = share.stop.send(true);
                    }
                    continue;
                }
                if let Some(old) = shares.remove(&flow) {
                    tracing::info!(flow = %flow, old = old.epoch, new = assignment.epoch, "assignment replaced");
                    old.task.abort();
                }
            }
            let has_tasks = assignment
                .workers
                .get(worker)
                .is_some_and(|t| !t.is_empty());
            if !has_tasks || assignment.stopping {
                continue;
            }
            let Some(spec) = assignment.spec.clone() else {
                tracing::warn!(flow = %flow, "an assignment without its flow: ignored");
                continue;
            };
            let checkpointed = spec.checkpoint.is_some();
            let (stop, stopped) = watch::channel(false);
            let epoch = assignment.epoch;
            let task = tokio::spawn(run_share(
                self.clone(),
                runs.clone(),
                worker.to_string(),
                assignment,
                stopped,
            ));
            shares.insert(
                flow,
                Share {
                    epoch,
                    spec,
                    checkpointed,
                    stop,
                    task,
                },
            );
        }
    }
}

impl Cluster {
    /// Looks after the shares whose coordinator is gone (its lease expired:
    /// it was killed or cut off without withdrawing the flow): a
    /// checkpointed flow is taken over — the worker that wins its
    /// coordinator lease coordinates it from its last complete checkpoint —
    /// and the share of any other is dropped. Forgets the shares that ended.
    async fn drop_orphans(&self, shares: &mut HashMap<String, Share>) {
        let mut gone = Vec::new();
        for (flow, share) in shares.iter() {
            if share.task.is_finished() {
                gone.push(flow.clone());
                continue;
            }
            let key = format!("coordinator.{flow}");
            match self.lease_held(&key).await {
                Ok(true) => {}
                Ok(false) if share.checkpointed => self.take_over(flow, &share.spec).await,
                Ok(false) => {
                    tracing::warn!(flow = %flow, epoch = share.epoch, "the flow's coordinator is gone: share dropped");
                    share.task.abort();
                    gone.push(flow.clone());
                }
                Err(e) => tracing::warn!(flow = %flow, error = %e, "checking the coordinator"),
            }
        }
        for flow in gone {
            shares.remove(&flow);
        }
    }

    /// Tries to become the coordinator of `flow`, whose coordinator is
    /// gone; the winner coordinates it to its end in the background.
    async fn take_over(&self, flow: &str, spec: &FlowSpec) {
        let holder = format!("worker pid {} (took over)", std::process::id());
        let lease = match self
            .acquire(&format!("coordinator.{flow}"), holder.as_bytes())
            .await
        {
            Ok(Acquired::Won(lease)) => lease.keep(),
            Ok(Acquired::Held { .. }) => return,
            Err(e) => {
                tracing::warn!(flow = %flow, error = %e, "taking over the coordination");
                return;
            }
        };
        let pipeline = match Pipeline::from_spec(spec) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(flow = %flow, error = %e, "the flow to take over does not plan");
                return;
            }
        };
        tracing::warn!(flow = %flow, epoch = lease.epoch(), "the flow's coordinator is gone: coordinating it from its last complete checkpoint");
        let cluster = self.clone();
        let spec = spec.clone();
        let flow = flow.to_string();
        tokio::spawn(async move {
            match cluster
                .coordinate(&spec, &pipeline, lease, std::future::pending::<()>)
                .await
            {
                Ok(outcome) => {
                    tracing::info!(flow = %flow, epoch = outcome.epoch, "flow taken over ended")
                }
                Err(e) => tracing::error!(flow = %flow, error = %e, "flow taken over failed"),
            }
        });
    }
}

/// The first of `workers` that is not among the members `present`.
fn departed<'a>(workers: &'a [String], present: &[Member]) -> Option<&'a String> {
    workers
        .iter()
        .find(|w| !present.iter().any(|m| &m.name == *w))
}

/// A share of a flow this worker runs.
struct Share {
    epoch: u64,
    /// The flow, for a worker to take over its coordination.
    spec: FlowSpec,
    /// Whether the flow takes checkpoints (only then is it taken over).
    checkpointed: bool,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Runs this worker's tasks of `assignment` and reports as it goes.
async fn run_share(
    cluster: Cluster,
    runs: kv::Store,
    worker: String,
    assignment: Assignment,
    mut stop: watch::Receiver<bool>,
) {
    let key = format!("{}.{worker}", assignment.flow);
    let report = |state, error: Option<String>, stages| Report {
        worker: worker.clone(),
        epoch: assignment.epoch,
        state,
        error,
        stages,
    };
    let put = |report: Report| {
        let runs = runs.clone();
        let key = key.clone();
        async move {
            let value = serde_json::to_vec(&report).unwrap_or_default();
            if let Err(e) = runs.put(&key, value.into()).await {
                tracing::warn!(key = %key, error = %e, "reporting");
            }
        }
    };
    let started = async {
        // An assignment whose coordinator is gone (it died without
        // withdrawing it) is not started: its peers would never come.
        let coordinator = format!("coordinator.{}", assignment.flow);
        if !cluster
            .lease_held(&coordinator)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(None);
        }
        let spec = assignment
            .spec
            .as_ref()
            .ok_or_else(|| "the assignment carries no flow".to_string())?;
        let pipeline = Pipeline::from_spec(spec).map_err(|e| e.to_string())?;
        let graph = &pipeline.plan().graph;
        let mut local = Vec::new();
        let mut peers = HashMap::new();
        for (runner, tasks) in &assignment.workers {
            for t in tasks {
                let node = graph
                    .nodes
                    .iter()
                    .position(|n| n.name == t.node && n.parallelism == t.parallelism)
                    .ok_or_else(|| {
                        format!("node '{}' of the assignment is not in the flow", t.node)
                    })?;
                if *runner == worker {
                    local.push((node, t.instance));
                }
                peers.insert((node, t.instance), runner.clone());
            }
        }
        let prefix = cluster.run_prefix(&assignment.flow, assignment.epoch);
        let mut transport =
            NatsTransport::new(cluster.client(), prefix, DEFAULT_WINDOW).peers(peers);
        if let Some(exchange) = cluster.direct.clone() {
            transport = transport.direct(exchange);
        }
        if graph.checkpoint.is_some() {
            transport
                .listen_for_checkpoints()
                .await
                .map_err(|e| e.to_string())?;
        }
        let placement = Placement::new(local, std::sync::Arc::new(transport))
            .restoring(assignment.restore.clone());
        pipeline
            .start_placed(&RecoveryOptions::default(), Some(&placement))
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    };
    let handle = match started.await {
        Ok(Some(h)) => h,
        Ok(None) => {
            tracing::info!(flow = %assignment.flow, epoch = assignment.epoch, "assignment without coordinator: ignored");
            return;
        }
        Err(e) => {
            tracing::error!(flow = %assignment.flow, error = %e, "share did not start");
            put(report(RunState::Failed, Some(e), Vec::new())).await;
            return;
        }
    };
    tracing::info!(flow = %assignment.flow, epoch = assignment.epoch, "share started");
    put(report(RunState::Running, None, Vec::new())).await;
    let stopper = handle.stopper();
    let stopping = tokio::spawn(async move {
        if stop.wait_for(|s| *s).await.is_ok() {
            let _ = stopper.send(true);
        }
    });
    let ended = handle.wait().await;
    stopping.abort();
    match ended {
        Ok(summary) => {
            let stages = summary
                .stages
                .iter()
                .map(|s| StageCount {
                    name: s.name.clone(),
                    records_in: s.records_in,
                    records_out: s.records_out,
                })
                .collect();
            tracing::info!(flow = %assignment.flow, epoch = assignment.epoch, "share finished");
            put(report(RunState::Finished, None, stages)).await;
        }
        Err(e) => {
            tracing::error!(flow = %assignment.flow, error = %e, "share failed");
            put(report(RunState::Failed, Some(e.to_string()), Vec::new())).await;
        }
    }
}
