//! Runs the flows of the record: starts the active version of each flow
//! that should run, watches it to its end, and swaps versions at a
//! checkpoint (stop, which drains and takes a final checkpoint, then start
//! the new version from it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use streamflow_cluster::Cluster;
use streamflow_dsl::{FileFormat, FlowSpec};
use streamflow_runtime::engine::NodeInfo;
use streamflow_runtime::{CheckpointMetrics, LastCheckpoint, Pipeline, RecoveryOptions, RunHandle};
use tokio::sync::watch;

use crate::events::{Event, EventLog, SUPERVISOR_TARGET};
use crate::metrics::{CheckpointTotals, FlowMetrics};
use crate::store::{Desired, FlowStore, Outcome, StoreError};

/// Where a flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Recorded, not started.
    Pending,
    /// Being planned and started.
    Deploying,
    /// Running.
    Running,
    /// Its input ended and everything was written.
    Succeeded,
    /// It failed (see the error).
    Failed,
    /// Stopped on request.
    Stopped,
}

/// Counters of one node of a running flow.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// `source`, `stage` or `sink`.
    pub role: &'static str,
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
    /// Processing time, milliseconds.
    pub busy_ms: u64,
    /// Batches received.
    pub batches_in: u64,
    /// Batches emitted.
    pub batches_out: u64,
    /// Arrow memory of the batches received, bytes.
    pub bytes_in: u64,
    /// Arrow memory of the batches emitted, bytes.
    pub bytes_out: u64,
    /// Event time (ms since the epoch) up to which its output is complete
    /// (sinks: their input), once there is one.
    pub watermark_ms: Option<i64>,
    /// How far that watermark is behind the wall clock, milliseconds.
    pub watermark_lag_ms: Option<i64>,
    /// How full each input edge's queues are (near 1: this node holds its
    /// producers back).
    pub inputs: Vec<InputStatus>,
}

/// The queues of one input edge of a node.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InputStatus {
    /// The producing node.
    pub from: String,
    /// `data`, `dlq` or `late`.
    pub edge: &'static str,
    /// Queued over capacity, 0 to 1.
    pub fill_ratio: f64,
}

impl NodeStatus {
    /// A node's counters now.
    pub fn of(node: &NodeInfo) -> NodeStatus {
        let s = node.summary();
        NodeStatus {
            role: s.role.as_str(),
            kind: s.kind,
            parallelism: s.parallelism,
            records_in: s.records_in,
            records_out: s.records_out,
            dead_letters: s.dead_letters,
            late: s.late,
            busy_ms: s.busy.as_millis() as u64,
            batches_in: s.batches_in,
            batches_out: s.batches_out,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            watermark_ms: s.watermark,
            watermark_lag_ms: s
                .watermark
                .map(|w| streamflow_core::processing_time_ms().saturating_sub(w)),
            inputs: s
                .inputs
                .into_iter()
                .map(|i| InputStatus {
                    from: i.from,
                    edge: i.kind.as_str(),
                    fill_ratio: i.fill_ratio,
                })
                .collect(),
            name: s.name,
        }
    }
}

/// What `GET /v1/flows/{name}/status` reports.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FlowStatus {
    /// Flow name.
    pub name: String,
    /// Active version.
    pub version: u64,
    /// Where it is in its life.
    pub state: State,
    /// Why it failed, when FAILED.
    pub error: Option<String>,
    /// Why the last update was refused, if it was.
    pub last_update_error: Option<String>,
    /// The checkpoint the current run resumed from.
    pub restored_from: Option<u64>,
    /// Per node, while it runs.
    pub nodes: Vec<NodeStatus>,
    /// The last checkpoint of the current run (id, started_ms, duration_ms, bytes).
    #[schema(value_type = Option<Object>)]
    pub last_checkpoint: Option<LastCheckpoint>,
    /// Checkpoints completed by the current run.
    pub checkpoints: u64,
    /// Checkpoints of this flow that failed since the server started.
    pub checkpoints_failed: u64,
}

/// A flow being run.
struct Live {
    version: u64,
    state: State,
    nodes: Vec<NodeInfo>,
    checkpoints: Option<Arc<CheckpointMetrics>>,
    restored_from: Option<u64>,
    stop: Option<watch::Sender<bool>>,
    /// Becomes true when the run has ended and its outcome is recorded.
    ended: watch::Receiver<bool>,
    stopping: bool,
}

/// Why a start or swap failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// From the record.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The declaration is invalid (every problem, one per line).
    #[error("{0}")]
    Invalid(String),
    /// The flow could not be started.
    #[error("{0}")]
    Start(String),
}

/// Runs flows; one per server.
pub struct Supervisor {
    data: PathBuf,
    store: Arc<FlowStore>,
    live: Mutex<HashMap<String, Live>>,
    refused: Mutex<HashMap<String, String>>,
    /// Checkpoint counts of runs that have ended, per flow.
    totals: Mutex<HashMap<String, CheckpointTotals>>,
    events: EventLog,
    /// Where flows run: over this cluster's workers, or in this process.
    cluster: Option<Cluster>,
}

/// A flow started: in this process, or coordinated over a cluster.
enum Started {
    Here(RunHandle),
    Cluster(Cluster, Box<FlowSpec>),
}

/// The `stop` of [`Cluster::run_flow`] for a flow the supervisor stops by
/// `stopped` becoming true: the first stop drains the flow; there is no
/// second (a drain is always waited for).
fn drain_once(stopped: watch::Receiver<bool>) -> impl FnMut() -> BoxFuture + Send {
    let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    move || {
        let (mut stopped, fired) = (stopped.clone(), Arc::clone(&fired));
        Box::pin(async move {
            if fired.load(std::sync::atomic::Ordering::Acquire)
                || stopped.wait_for(|s| *s).await.is_err()
            {
                std::future::pending::<()>().await;
            }
            fired.store(true, std::sync::atomic::Ordering::Release);
        })
    }
}

type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Plans `spec` (which may ask servers for schemas) off the async threads.
///
/// # Errors
/// Every problem of the declaration, one per line, as `validate` prints them.
pub async fn plan(spec: FlowSpec) -> Result<Pipeline, SupervisorError> {
    tokio::task::spawn_blocking(move || Pipeline::from_spec(&spec))
        .await
        .map_err(|e| SupervisorError::Start(e.to_string()))?
        .map_err(|d| SupervisorError::Invalid(d.to_string()))
}

/// The declaration of a stored normal-form document.
///
/// # Errors
/// When it no longer parses (it did when stored).
pub fn spec_of(doc: &serde_json::Value) -> Result<FlowSpec, SupervisorError> {
    streamflow_dsl::parse_str(&doc.to_string(), FileFormat::Json)
        .map_err(|d| SupervisorError::Invalid(d.to_string()))
}

impl Supervisor {
    /// A supervisor running flows here, their checkpoints under
    /// `data/checkpoints/<flow>`, or, given a cluster, over its workers with
    /// this process coordinating them.
    pub fn new(
        data: PathBuf,
        store: Arc<FlowStore>,
        events: EventLog,
        cluster: Option<Cluster>,
    ) -> Arc<Self> {
        Arc::new(Self {
            data,
            store,
            live: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            totals: Mutex::new(HashMap::new()),
            events,
            cluster,
        })
    }

    /// Records a lifecycle event: logged (as a structured `tracing` event)
    /// and kept for [`events`](Self::events).
    pub fn event(&self, flow: &str, event: &'static str, detail: Option<String>) {
        tracing::info!(
            target: SUPERVISOR_TARGET,
            flow,
            event,
            detail = detail.as_deref().unwrap_or(""),
            "flow event"
        );
        self.events.record(flow, event, detail);
    }

    /// The recent events, oldest first; only `flow`'s when given.
    pub fn events(&self, flow: Option<&str>) -> Vec<Event> {
        self.events.recent(flow)
    }

    /// The status of every flow.
    pub fn statuses(&self) -> Vec<FlowStatus> {
        self.store
            .list()
            .map(|all| {
                all.iter()
                    .filter_map(|r| self.status(&r.name).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The declaration as it runs here: named `name`, its checkpoints (if it
    /// takes any) in the server's data directory — but on a cluster, where
    /// they go where every worker reaches them: the flow's own storage, else
    /// the cluster's object store.
    fn prepare(&self, name: &str, mut spec: FlowSpec) -> FlowSpec {
        spec.name = Some(name.to_string());
        if let Some(c) = spec.checkpoint.as_mut()
            && self.cluster.is_none()
        {
            c.storage = Some(
                self.data
                    .join("checkpoints")
                    .join(name)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        spec
    }

    /// Starts every flow that should run (after a restart, from its newest
    /// checkpoint). Failures are recorded on the flows.
    pub async fn restore(self: &Arc<Self>) -> Result<(), StoreError> {
        for record in self.store.list()? {
            if record.desired == Desired::Running
                && let Err(e) = self.start(&record.name, RecoveryOptions::default()).await
            {
                tracing::warn!(flow = %record.name, error = %e, "flow not restarted");
            }
        }
        Ok(())
    }

    /// Starts the active version of `name` (resuming from its newest
    /// checkpoint); a no-op when it runs already.
    ///
    /// # Errors
    /// When it cannot be planned or started (also recorded as FAILED).
    pub async fn start(
        self: &Arc<Self>,
        name: &str,
        options: RecoveryOptions,
    ) -> Result<(), SupervisorError> {
        let record = self.store.get(name)?;
        let (ended_tx, ended) = watch::channel(false);
        {
            let mut live = self.live();
            if live.contains_key(name) {
                return Ok(());
            }
            live.insert(
                name.to_string(),
                Live {
                    version: record.active,
                    state: State::Deploying,
                    nodes: Vec::new(),
                    checkpoints: None,
                    restored_from: None,
                    stop: None,
                    ended,
                    stopping: false,
                },
            );
        }
        self.store.modify(name, |r| {
            r.desired = Desired::Running;
            r.outcome = None;
            Ok(())
        })?;
        let started = async {
            let version = self.store.version(name, record.active)?;
            let spec = self.prepare(name, spec_of(&version.spec)?);
            match &self.cluster {
                // Planned here to refuse an invalid flow at once; the
                // coordinator plans its own.
                Some(cluster) => {
                    plan(spec.clone()).await?;
                    Ok(Started::Cluster(cluster.clone(), Box::new(spec)))
                }
                None => plan(spec)
                    .await?
                    .start_with(&options)
                    .await
                    .map(Started::Here)
                    .map_err(|e| SupervisorError::Start(e.to_string())),
            }
        }
        .await;
        let started = match started {
            Ok(h) => h,
            Err(e) => {
                self.live().remove(name);
                let _ = ended_tx.send(true);
                self.event(name, "failed", Some(e.to_string()));
                self.record_end(
                    name,
                    Outcome::Failed {
                        error: e.to_string(),
                    },
                );
                return Err(e);
            }
        };
        let ended: std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> =
            match started {
                Started::Here(handle) => {
                    self.event(
                        name,
                        "started",
                        Some(match handle.restored_from() {
                            Some(c) => format!("version {} from checkpoint {c}", record.active),
                            None => format!("version {}", record.active),
                        }),
                    );
                    if let Some(l) = self.live().get_mut(name) {
                        l.state = State::Running;
                        l.nodes = handle.nodes().to_vec();
                        l.checkpoints = Some(handle.checkpoints());
                        l.restored_from = handle.restored_from();
                        l.stop = Some(handle.stopper());
                    }
                    Box::pin(
                        async move { handle.wait().await.map(drop).map_err(|e| e.to_string()) },
                    )
                }
                Started::Cluster(cluster, spec) => {
                    self.event(
                        name,
                        "started",
                        Some(format!(
                            "version {} on cluster '{}'",
                            record.active,
                            cluster.name()
                        )),
                    );
                    let (stop, stopped) = watch::channel(false);
                    if let Some(l) = self.live().get_mut(name) {
                        l.state = State::Running;
                        l.stop = Some(stop);
                    }
                    let span = tracing::info_span!("flow", flow = %name);
                    Box::pin(tracing::Instrument::instrument(
                        async move {
                            cluster
                                .run_flow(&spec, drain_once(stopped))
                                .await
                                .map(drop)
                                .map_err(|e| e.to_string())
                        },
                        span,
                    ))
                }
            };
        let this = Arc::clone(self);
        let name = name.to_string();
        tokio::spawn(async move {
            let result = ended.await;
            let stopping = this.live().get(&name).is_some_and(|l| l.stopping);
            let outcome = match result {
                Err(e) => {
                    tracing::warn!(flow = %name, error = %e, "flow failed");
                    Outcome::Failed {
                        error: e.to_string(),
                    }
                }
                Ok(_) if stopping => Outcome::Stopped,
                Ok(_) => Outcome::Succeeded,
            };
            match &outcome {
                Outcome::Succeeded => this.event(&name, "succeeded", None),
                Outcome::Stopped => this.event(&name, "stopped", None),
                Outcome::Failed { error } => this.event(&name, "failed", Some(error.clone())),
            }
            this.record_end(&name, outcome);
            if let Some(c) = this.live().remove(&name).and_then(|l| l.checkpoints) {
                let mut totals = this.totals.lock().unwrap_or_else(PoisonError::into_inner);
                let t = totals.entry(name.clone()).or_default();
                *t = t.plus(&c);
            }
            let _ = ended_tx.send(true);
        });
        Ok(())
    }

    /// Records how a run ended; a flow that ended by itself is not
    /// restarted with the server.
    fn record_end(&self, name: &str, outcome: Outcome) {
        let result = self.store.modify(name, |r| {
            if outcome != Outcome::Stopped {
                r.desired = Desired::Stopped;
            }
            r.outcome = Some(outcome);
            Ok(())
        });
        if let Err(e) = result
            && !matches!(e, StoreError::NotFound(_))
        {
            tracing::warn!(flow = name, error = %e, "cannot record how the flow ended");
        }
    }

    /// Stops `name` (draining it; with checkpoints, a final checkpoint is
    /// taken) and waits until it has ended. `keep_desired`: leave it marked
    /// to run (a swap of versions).
    ///
    /// # Errors
    /// When the record cannot be updated.
    pub async fn stop(&self, name: &str, keep_desired: bool) -> Result<(), SupervisorError> {
        if !keep_desired {
            self.store.modify(name, |r| {
                r.desired = Desired::Stopped;
                Ok(())
            })?;
        }
        let ended = {
            let mut live = self.live();
            match live.get_mut(name) {
                None => None,
                Some(l) => {
                    l.stopping = true;
                    if let Some(stop) = &l.stop {
                        let _ = stop.send(true);
                    }
                    Some(l.ended.clone())
                }
            }
        };
        if let Some(mut ended) = ended {
            let _ = ended.wait_for(|e| *e).await;
        }
        Ok(())
    }

    /// Whether `name` is being run.
    pub fn is_live(&self, name: &str) -> bool {
        self.live().contains_key(name)
    }

    /// Remembers (or forgets, with `None`) why the last update of `name`
    /// was refused.
    pub fn set_refused(&self, name: &str, why: Option<String>) {
        let mut refused = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match why {
            Some(w) => refused.insert(name.to_string(), w),
            None => refused.remove(name),
        };
    }

    /// The status of `name`.
    ///
    /// # Errors
    /// When the flow does not exist.
    pub fn status(&self, name: &str) -> Result<FlowStatus, SupervisorError> {
        let record = self.store.get(name)?;
        let last_update_error = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned();
        let live = self.live();
        let Some(l) = live.get(name) else {
            let (state, error) = match &record.outcome {
                None if record.desired == Desired::Running => (State::Pending, None),
                None => (State::Stopped, None),
                Some(Outcome::Succeeded) => (State::Succeeded, None),
                Some(Outcome::Stopped) => (State::Stopped, None),
                Some(Outcome::Failed { error }) => (State::Failed, Some(error.clone())),
            };
            return Ok(FlowStatus {
                name: name.to_string(),
                version: record.active,
                state,
                error,
                last_update_error,
                restored_from: None,
                nodes: Vec::new(),
                last_checkpoint: None,
                checkpoints: 0,
                checkpoints_failed: self.totals(name, None).failed,
            });
        };
        Ok(FlowStatus {
            name: name.to_string(),
            version: l.version,
            state: l.state,
            error: None,
            last_update_error,
            restored_from: l.restored_from,
            nodes: l.nodes.iter().map(NodeStatus::of).collect(),
            last_checkpoint: l.checkpoints.as_ref().and_then(|c| c.last()),
            checkpoints: l.checkpoints.as_ref().map_or(0, |c| c.completed()),
            checkpoints_failed: self.totals(name, l.checkpoints.as_deref()).failed,
        })
    }

    /// Checkpoints of `name`'s earlier runs in this process, plus `run`'s.
    fn totals(&self, name: &str, run: Option<&CheckpointMetrics>) -> CheckpointTotals {
        let earlier = self
            .totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or_default();
        run.map_or(earlier, |r| earlier.plus(r))
    }

    /// Every flow's live counters, for `/metrics`.
    pub fn metrics(&self) -> Vec<FlowMetrics> {
        let records = self.store.list().unwrap_or_default();
        let live = self.live();
        records
            .iter()
            .map(|r| {
                let l = live.get(&r.name);
                FlowMetrics {
                    name: r.name.clone(),
                    version: Some(l.map_or(r.active, |l| l.version)),
                    running: l
                        .is_some_and(|l| matches!(l.state, State::Running | State::Deploying)),
                    nodes: l.map(|l| l.nodes.clone()).unwrap_or_default(),
                    checkpoints: l.and_then(|l| l.checkpoints.clone()),
                    earlier: self.totals(&r.name, None),
                }
            })
            .collect()
    }

    /// The current state of `name` (for listings).
    pub fn state(&self, name: &str) -> State {
        self.status(name).map_or(State::Pending, |s| s.state)
    }

    /// Deletes `name`: stops it, then removes its record and checkpoints.
    ///
    /// # Errors
    /// When it does not exist or cannot be removed.
    pub async fn delete(&self, name: &str) -> Result<(), SupervisorError> {
        self.stop(name, false).await?;
        self.store.delete(name)?;
        self.set_refused(name, None);
        self.totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        let _ = tokio::fs::remove_dir_all(self.data.join("checkpoints").join(name)).await;
        Ok(())
    }
}
