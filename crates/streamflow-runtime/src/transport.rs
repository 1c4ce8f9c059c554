//! Channels whose two ends run in different processes.
//!
//! A pipeline spread over several workers runs, in each process, only the
//! instances placed there ([`Placement`]). Every channel of an edge links
//! one producer instance to one consumer instance; when the two run in
//! different processes, the engine still gives each end an ordinary bounded
//! channel and hands the far side of it to a [`Transport`], which carries
//! the messages between the processes. Operators and exchanges cannot tell
//! a remote channel from a local one: data, watermarks, idleness markers,
//! barriers and end of stream travel in order on both.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use streamflow_core::{Message, Result};
use streamflow_state::CheckpointMeta;
use tokio::sync::mpsc::{Receiver, Sender, UnboundedReceiver, UnboundedSender};

use crate::checkpoint::{CheckpointCommand, CheckpointReport};

/// One channel of the pipeline: from one instance of a producing node to
/// one instance of a consuming node, on one of the consumer's inputs.
/// Nodes are numbered as in the plan, so every process names a channel the
/// same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId {
    /// The producing node.
    pub producer: usize,
    /// Its instance.
    pub producer_instance: usize,
    /// The consuming node.
    pub consumer: usize,
    /// Its instance.
    pub consumer_instance: usize,
    /// The consumer's input the channel feeds: its data inputs in order,
    /// then its dead-letter and late inputs.
    pub input: usize,
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}.{}",
            self.producer,
            self.producer_instance,
            self.consumer,
            self.consumer_instance,
            self.input
        )
    }
}

/// A task moving one channel's messages between processes; it ends when
/// end of stream has passed, and fails the run when the channel breaks.
pub type Bridge = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// Carries channels between processes.
///
/// For each remote channel the producing process calls
/// [`outbound`](Self::outbound) and the consuming process
/// [`inbound`](Self::inbound); the two bridges find each other by the
/// [`ChannelId`]. A transport must deliver in order, lose nothing (or fail
/// the bridge), and stay bounded: a consumer that does not take its
/// messages must hold up the producer, not fill memory.
pub trait Transport: Send + Sync {
    /// Sends what the producer puts into `messages` to the channel's consumer.
    fn outbound(&self, channel: ChannelId, messages: Receiver<Message>) -> Bridge;

    /// Delivers the channel's messages from its producer into `into`.
    fn inbound(&self, channel: ChannelId, into: Sender<Message>) -> Bridge;

    /// Links this process's instances to the flow's checkpoint coordinator
    /// in another process: carries their `reports` to it, and its commands
    /// into `commands`, each in order. Ends when `reports` does.
    fn checkpoints(
        &self,
        reports: UnboundedReceiver<CheckpointReport>,
        commands: UnboundedSender<CheckpointCommand>,
    ) -> Bridge;
}

/// Which instances this process runs, and the transport to the others.
#[derive(Clone)]
pub struct Placement {
    local: HashSet<(usize, usize)>,
    transport: Arc<dyn Transport>,
    restore: Option<CheckpointMeta>,
}

impl fmt::Debug for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Placement")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Placement {
    /// Runs the instances `local` (node index in the plan, instance) here
    /// and reaches the others through `transport`.
    pub fn new(
        local: impl IntoIterator<Item = (usize, usize)>,
        transport: Arc<dyn Transport>,
    ) -> Self {
        Self {
            local: local.into_iter().collect(),
            transport,
            restore: None,
        }
    }

    /// Restores checkpoint `checkpoint` (the one the flow's coordinator chose).
    #[must_use]
    pub fn restoring(mut self, checkpoint: Option<CheckpointMeta>) -> Self {
        self.restore = checkpoint;
        self
    }

    /// The checkpoint the instances restore.
    pub fn restore(&self) -> Option<&CheckpointMeta> {
        self.restore.as_ref()
    }

    /// Whether instance `instance` of node `node` runs in this process.
    pub fn runs(&self, node: usize, instance: usize) -> bool {
        self.local.contains(&(node, instance))
    }

    /// The transport to the other processes.
    pub fn transport(&self) -> &dyn Transport {
        self.transport.as_ref()
    }
}
