//! Following a segment, or every segment of a space, as it grows.

use std::collections::VecDeque;

use tokio::sync::broadcast::{Receiver, error::RecvError};

use crate::SegmentStatus;

/// A subscription: the current statuses, then each new one.
pub struct Subscription {
    space: String,
    /// `None`: every segment of the space.
    segment: Option<String>,
    /// Statuses to hand out before waiting.
    first: VecDeque<SegmentStatus>,
    receiver: Receiver<SegmentStatus>,
}

impl Subscription {
    pub(crate) fn new(
        space: String,
        segment: Option<String>,
        current: Vec<SegmentStatus>,
        receiver: Receiver<SegmentStatus>,
    ) -> Self {
        Self {
            space,
            segment,
            first: current.into(),
            receiver,
        }
    }

    /// The next status; `None` once the log is gone. A subscriber that
    /// falls far behind skips to newer statuses (each holds all before it).
    pub async fn next(&mut self) -> Option<SegmentStatus> {
        if let Some(s) = self.first.pop_front() {
            return Some(s);
        }
        loop {
            match self.receiver.recv().await {
                Ok(s)
                    if s.space == self.space
                        && self.segment.as_ref().is_none_or(|g| *g == s.segment) =>
                {
                    return Some(s);
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
