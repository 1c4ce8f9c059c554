//! What a source owes its input once checkpoints complete: messages to
//! acknowledge, requests to answer. Items handed on between two barriers
//! are released together when the checkpoint of the second completes.

/// Items handed on, grouped by the checkpoint that covers them.
#[derive(Debug)]
pub(crate) struct Acknowledgements<T> {
    /// Handed on since the last barrier.
    handed_on: Vec<T>,
    /// Per pending checkpoint, the items its completion releases.
    barriers: Vec<(u64, Vec<T>)>,
}

impl<T> Default for Acknowledgements<T> {
    fn default() -> Self {
        Self {
            handed_on: Vec::new(),
            barriers: Vec::new(),
        }
    }
}

impl<T> Acknowledgements<T> {
    /// `items` were handed on downstream.
    pub(crate) fn handed_on(&mut self, items: impl IntoIterator<Item = T>) {
        self.handed_on.extend(items);
    }

    /// Everything handed on so far, when no checkpoints are taken.
    pub(crate) fn take_handed_on(&mut self) -> Vec<T> {
        std::mem::take(&mut self.handed_on)
    }

    /// Checkpoint `id`'s barrier left: it covers what was handed on.
    pub(crate) fn barrier(&mut self, id: u64) {
        let covered = std::mem::take(&mut self.handed_on);
        self.barriers.push((id, covered));
    }

    /// Checkpoint `id` completed: the items it (and any before it) covers.
    pub(crate) fn complete(&mut self, id: u64) -> Vec<T> {
        let mut due = Vec::new();
        self.barriers.retain_mut(|(at, items)| {
            if *at <= id {
                due.append(items);
                false
            } else {
                true
            }
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_releases_what_its_barrier_and_earlier_ones_cover() {
        let mut acks = Acknowledgements::default();
        acks.handed_on([1, 2]);
        acks.barrier(1);
        acks.handed_on([3]);
        acks.barrier(2);
        acks.handed_on([4]);
        assert_eq!(acks.complete(2), [1, 2, 3]);
        assert!(acks.complete(2).is_empty());
        assert_eq!(acks.take_handed_on(), [4]);
    }
}
