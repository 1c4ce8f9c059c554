//! Flows run over the cluster.
//!
//! The process that runs a flow on the cluster becomes its coordinator: it
//! takes the lease `coordinator.<flow>` (one coordinator per flow), places
//! the flow's instances on the workers present ([`Assignment`]) and
//! publishes the assignment, with the flow, at its lease epoch. Every
//! worker watches the published assignments, starts its share of a flow
//! (channels to the other workers over NATS, [`NatsTransport`]) and reports
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
use streamflow_runtime::{Pipeline, Placement, RecoveryOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::exchange::{DEFAULT_WINDOW, NatsTransport};
use crate::{Acquired, Assignment, Cluster, ClusterError, NodeSpec, Result, check_name};

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

impl Cluster {
    /// Runs `spec` over the workers of the cluster and waits for it to end.
    /// `stop` resolving once asks the sources to stop (everything in flight
    /// drains); resolving again withdraws the flow at once.
    ///
    /// # Errors
    /// The flow coordinated elsewhere already, too few slots, a worker's
    /// share failing (its error) or its worker leaving, the lease lost.
    pub async fn run_flow<S, F>(&self, spec: &FlowSpec, mut stop: S) -> Result<Outcome>
    where
        S: FnMut() -> F,
        F: Future<Output = ()>,
    {
        let pipeline = Pipeline::from_spec(spec).map_err(invalid_flow)?;
        let flow = pipeline.plan().graph.name.clone();
        check_name("flow name", &flow)?;
        if pipeline.plan().graph.checkpoint.is_some() {
            return Err(ClusterError::Invalid(format!(
                "flow '{flow}' takes checkpoints, which do not work across workers yet: run it without --cluster"
            )));
        }
        let nodes: Vec<NodeSpec> = pipeline
            .plan()
            .graph
            .nodes
            .iter()
            .map(|n| NodeSpec {
                name: n.name.clone(),
                parallelism: n.parallelism,
            })
            .collect();
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
        let mut lease = lease.keep();
        let epoch = lease.epoch();
        let members = self.members().await?;
        let mut assignment = Assignment::new(&flow, epoch, &nodes, &members)?;
        assignment.spec = Some(spec.clone());
        let shares: Vec<String> = assignment
            .workers
            .iter()
            .filter(|(_, tasks)| !tasks.is_empty())
            .map(|(w, _)| w.clone())
            .collect();
        let runs = self.bucket(RUNS).await?;
        let mut reports_in = runs
            .watch_with_history(format!("{flow}.>"))
            .await
            .map_err(|e| self.error("watching reports", e))?;
        self.publish_assignment(&assignment).await?;
        tracing::info!(flow = %flow, epoch, workers = shares.len(), "flow assigned");

        let mut reports: BTreeMap<String, Report> = BTreeMap::new();
        let mut check = tokio::time::interval(self.ttl());
        let mut stopping = false;
        let result = loop {
            tokio::select! {
                entry = reports_in.next() => {
                    let entry = match entry {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => break Err(self.error("watching reports", e)),
                        None => break Err(self.error("watching reports", "the watch ended")),
                    };
                    if entry.operation != kv::Operation::Put {
                        continue;
                    }
                    let Ok(report) = serde_json::from_slice::<Report>(&entry.value) else {
                        continue;
                    };
                    if report.epoch != epoch {
                        continue;
                    }
                    if report.state == RunState::Failed {
                        break Err(ClusterError::Invalid(format!(
                            "worker '{}' failed: {}",
                            report.worker,
                            report.error.as_deref().unwrap_or("no reason given")
                        )));
                    }
                    reports.insert(report.worker.clone(), report);
                    let finished = reports.values().filter(|r| r.state == RunState::Finished).count();
                    if finished == shares.len() {
                        break Ok(());
                    }
                }
                _ = check.tick() => {
                    let present = self.members().await?;
                    if let Some(gone) = shares.iter().find(|w| !present.iter().any(|m| &m.name == *w)) {
                        break Err(ClusterError::Invalid(format!(
                            "worker '{gone}' left the cluster while running its share of '{flow}'"
                        )));
                    }
                }
                why = lease.until_lost() => {
                    break Err(ClusterError::LeaseLost {
                        key: format!("coordinator.{flow}"),
                        epoch,
                        reason: why.to_string(),
                    });
                }
                () = stop() => {
                    if stopping {
                        break Err(ClusterError::Invalid(format!("flow '{flow}' withdrawn")));
                    }
                    stopping = true;
                    assignment.stopping = true;
                    self.publish_assignment(&assignment).await?;
                    tracing::info!(flow = %flow, "stopping: sources asked to stop");
                }
            }
        };
        // Withdrawn either way: workers drop what is left of their shares.
        if let Err(e) = self.withdraw(&flow).await {
            tracing::warn!(error = %e, flow = %flow, "withdrawing the assignment");
        }
        lease.release().await;
        result.map(|()| Outcome {
            flow,
            epoch,
            reports: reports.into_values().collect(),
        })
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
            let (stop, stopped) = watch::channel(false);
            let epoch = assignment.epoch;
            let task = tokio::spawn(run_share(
                self.clone(),
                runs.clone(),
                worker.to_string(),
                assignment,
                stopped,
            ));
            shares.insert(flow, Share { epoch, stop, task });
        }
    }
}

impl Cluster {
    /// Drops the shares whose coordinator is gone (its lease expired: it
    /// was killed or cut off without withdrawing the flow), and forgets
    /// the shares that ended.
    async fn drop_orphans(&self, shares: &mut HashMap<String, Share>) {
        let mut gone = Vec::new();
        for (flow, share) in shares.iter() {
            if share.task.is_finished() {
                gone.push(flow.clone());
                continue;
            }
            match self.lease_held(&format!("coordinator.{flow}")).await {
                Ok(false) => {
                    tracing::warn!(flow = %flow, epoch = share.epoch, "the flow's coordinator is gone: share dropped");
                    share.task.abort();
                    gone.push(flow.clone());
                }
                Ok(true) => {}
                Err(e) => tracing::warn!(flow = %flow, error = %e, "checking the coordinator"),
            }
        }
        for flow in gone {
            shares.remove(&flow);
        }
    }
}

/// A share of a flow this worker runs.
struct Share {
    epoch: u64,
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
        for t in assignment.workers.get(&worker).into_iter().flatten() {
            let node = graph
                .nodes
                .iter()
                .position(|n| n.name == t.node && n.parallelism == t.parallelism)
                .ok_or_else(|| format!("node '{}' of the assignment is not in the flow", t.node))?;
            local.push((node, t.instance));
        }
        let prefix = format!(
            "streamflow.{}.{}.{}",
            cluster.name(),
            assignment.flow,
            assignment.epoch
        );
        let transport = NatsTransport::new(cluster.client(), prefix, DEFAULT_WINDOW);
        let placement = Placement::new(local, std::sync::Arc::new(transport));
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
