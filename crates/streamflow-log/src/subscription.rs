//! Following a segment, or every segment of a space, as it grows.

use std::collections::VecDeque;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

use crate::SegmentStatus;

/// A subscription: the current statuses, then each new one.
pub struct Subscription {
    feed: Feed,
}

enum Feed {
    /// A store in this process.
    Local {
        space: String,
        /// `None`: every segment of the space.
        segment: Option<String>,
        /// Statuses to hand out before waiting.
        first: VecDeque<SegmentStatus>,
        receiver: broadcast::Receiver<SegmentStatus>,
    },
    /// A server's statuses, forwarded by the connection (renewed after a
    /// reconnect, beginning again with the current statuses).
    Remote {
        receiver: mpsc::Receiver<SegmentStatus>,
        /// Cancels the subscription at the server when dropped.
        _cancel: crate::remote::CancelOnDrop,
    },
}

impl Subscription {
    pub(crate) fn local(
        space: String,
        segment: Option<String>,
        current: Vec<SegmentStatus>,
        receiver: broadcast::Receiver<SegmentStatus>,
    ) -> Self {
        Self {
            feed: Feed::Local {
                space,
                segment,
                first: current.into(),
                receiver,
            },
        }
    }

    pub(crate) fn remote(
        receiver: mpsc::Receiver<SegmentStatus>,
        cancel: crate::remote::CancelOnDrop,
    ) -> Self {
        Self {
            feed: Feed::Remote {
                receiver,
                _cancel: cancel,
            },
        }
    }

    /// The next status; `None` once the log is gone. A subscriber that
    /// falls far behind skips to newer statuses (each holds all before it).
    pub async fn next(&mut self) -> Option<SegmentStatus> {
        match &mut self.feed {
            Feed::Local {
                space,
                segment,
                first,
                receiver,
            } => {
                if let Some(s) = first.pop_front() {
                    return Some(s);
                }
                loop {
                    match receiver.recv().await {
                        Ok(s)
                            if s.space == *space
                                && segment.as_ref().is_none_or(|g| *g == s.segment) =>
                        {
                            return Some(s);
                        }
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
            Feed::Remote { receiver, .. } => receiver.recv().await,
        }
    }
}
