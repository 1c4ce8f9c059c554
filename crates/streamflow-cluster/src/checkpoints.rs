//! Checkpoints across workers: the flow's checkpoint coordinator (in the
//! process coordinating the run) and each worker's checkpoint agent talk
//! over two core NATS subjects under the run's prefix, in JSON:
//!
//! - `<prefix>.checkpoint.commands`, coordinator → every worker: inject a
//!   barrier at your sources, checkpoint `id` is committed (publish);
//! - `<prefix>.checkpoint.reports`, workers → coordinator: an instance's
//!   part of a checkpoint, a source instance finished.
//!
//! State does not travel here: each worker writes its instances' state
//! files to the flow's checkpoint storage, which every worker reaches, and
//! reports their references (with checksums); the coordinator alone
//! commits checkpoint metadata. The prefix names the run's epoch, so the
//! shares of a replaced assignment neither hear the new commands nor count
//! in its checkpoints.
//!
//! Core NATS delivers in order from one connection. A lost report leaves
//! its checkpoint incomplete until `checkpoint.timeout`, which fails the
//! run, and the run restarts from the last complete checkpoint; a lost
//! completion is made good by the next one (sinks publish everything staged
//! up to the checkpoint they are told).

use futures::StreamExt;
use streamflow_core::{Error, Result};
use streamflow_runtime::{CheckpointCommand, CheckpointReport};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

fn commands_subject(prefix: &str) -> String {
    format!("{prefix}.checkpoint.commands")
}

fn reports_subject(prefix: &str) -> String {
    format!("{prefix}.checkpoint.reports")
}

fn broken(what: impl std::fmt::Display) -> Error {
    Error::Other(format!("checkpoint link: {what}"))
}

/// The coordinator's end of a run's checkpoint link: commands given to
/// `commands` go to every worker, the workers' reports come out of
/// `reports`. Dropping it stops the link.
pub(crate) struct CoordinatorLink {
    commands: UnboundedSender<CheckpointCommand>,
    reports: Option<UnboundedReceiver<CheckpointReport>>,
    tasks: [JoinHandle<()>; 2],
}

impl CoordinatorLink {
    /// The channels to give the checkpoint coordinator (once: the reports
    /// are moved out; the link keeps running until dropped).
    pub(crate) fn channels(
        &mut self,
    ) -> (
        UnboundedSender<CheckpointCommand>,
        UnboundedReceiver<CheckpointReport>,
    ) {
        let reports = self.reports.take().unwrap_or_else(|| unbounded_channel().1);
        (self.commands.clone(), reports)
    }
}

impl Drop for CoordinatorLink {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens the coordinator's end for the run under `prefix`; the workers'
/// reports are listened for from now on.
pub(crate) async fn coordinator_link(
    client: &async_nats::Client,
    prefix: &str,
) -> Result<CoordinatorLink> {
    let mut incoming = client
        .subscribe(reports_subject(prefix))
        .await
        .map_err(broken)?;
    let (reports_tx, reports) = unbounded_channel();
    let listen = tokio::spawn(async move {
        while let Some(message) = incoming.next().await {
            match serde_json::from_slice::<CheckpointReport>(&message.payload) {
                Ok(report) => {
                    if reports_tx.send(report).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "a checkpoint report that does not read"),
            }
        }
    });
    let (commands, mut outgoing) = unbounded_channel::<CheckpointCommand>();
    let subject = commands_subject(prefix);
    let client = client.clone();
    let speak = tokio::spawn(async move {
        while let Some(command) = outgoing.recv().await {
            let Ok(body) = serde_json::to_vec(&command) else {
                continue;
            };
            if let Err(e) = client.publish(subject.clone(), body.into()).await {
                tracing::warn!(error = %e, "sending a checkpoint command");
            }
            // Commands are few and each one waits on the workers: no batching.
            let _ = client.flush().await;
        }
    });
    Ok(CoordinatorLink {
        commands,
        reports: Some(reports),
        tasks: [listen, speak],
    })
}

/// A worker's subscription to a run's checkpoint commands, taken before
/// its share starts so that no command is missed.
pub(crate) async fn listen(
    client: &async_nats::Client,
    prefix: &str,
) -> Result<async_nats::Subscriber> {
    client
        .subscribe(commands_subject(prefix))
        .await
        .map_err(broken)
}

/// A worker's end of the link: its agent's reports to the coordinator, the
/// coordinator's commands to its agent. Ends when the reports do (every
/// local instance has ended).
pub(crate) async fn worker_link(
    client: async_nats::Client,
    mut commands_in: async_nats::Subscriber,
    prefix: String,
    mut reports: UnboundedReceiver<CheckpointReport>,
    commands: UnboundedSender<CheckpointCommand>,
) -> Result<()> {
    let subject = reports_subject(&prefix);
    loop {
        tokio::select! {
            report = reports.recv() => {
                let Some(report) = report else {
                    client.flush().await.map_err(broken)?;
                    return Ok(());
                };
                let body = serde_json::to_vec(&report).map_err(broken)?;
                client.publish(subject.clone(), body.into()).await.map_err(broken)?;
                client.flush().await.map_err(broken)?;
            }
            message = commands_in.next() => {
                let Some(message) = message else {
                    return Err(broken("the coordinator's commands ended"));
                };
                match serde_json::from_slice::<CheckpointCommand>(&message.payload) {
                    // The agent gone means the local instances ended.
                    Ok(command) => { let _ = commands.send(command); }
                    Err(e) => tracing::warn!(error = %e, "a checkpoint command that does not read"),
                }
            }
        }
    }
}
