//! The receiving side of an instance: its input channels merged into one
//! ordered stream of events, with the rules every operator relies on:
//!
//! - the watermark is the minimum over inputs that have not ended, and is
//!   reported only when it advances;
//! - a checkpoint barrier is reported once it has arrived on every live
//!   input; until then, inputs that delivered it are not read (alignment);
//! - an input that declared itself idle does not hold back the watermark
//!   until it sends data or a watermark again; when every live input is idle
//!   the set reports itself idle, so that idleness propagates downstream;
//! - inputs ahead in event time wait while a readable input lags behind
//!   (watermark alignment, which bounds the state of joins and windows);
//! - end of stream is reported once every input has ended.
//!
//! This logic is pure with respect to time and I/O apart from polling the
//! channels, which keeps it testable.

use std::future::poll_fn;
use std::task::Poll;

use arrow::record_batch::RecordBatch;
use streamflow_core::{CheckpointBarrier, Message, Watermark};
use tokio::sync::mpsc::Receiver;

/// One channel from one producer instance.
#[derive(Debug)]
pub struct InputChannel {
    /// Messages from the producer.
    pub receiver: Receiver<Message>,
    /// Which logical input of the operator it belongs to.
    pub logical: usize,
}

/// What the merged inputs deliver next.
#[derive(Debug)]
pub enum InputEvent {
    /// A batch on logical input `input`.
    Data {
        /// Logical input index.
        input: usize,
        /// The batch.
        batch: RecordBatch,
    },
    /// The merged watermark advanced.
    Watermark(Watermark),
    /// A barrier has arrived on every live input.
    Barrier(CheckpointBarrier),
    /// Every live input is idle.
    Idle,
    /// Every channel of logical input `n` has ended (others continue).
    InputEnded(usize),
    /// Every input has ended.
    End,
}

#[derive(Debug)]
struct ChannelState {
    channel: InputChannel,
    watermark: Watermark,
    ended: bool,
    blocked: bool,
    idle: bool,
}

/// The merged inputs of one instance.
#[derive(Debug)]
pub struct InputSet {
    channels: Vec<ChannelState>,
    current: Watermark,
    pending_barrier: Option<CheckpointBarrier>,
    /// When the pending barrier first arrived, and how long the last one took to align.
    aligning_since: Option<std::time::Instant>,
    last_alignment: std::time::Duration,
    cursor: usize,
    done: bool,
    /// Whether `Idle` was reported and no input has become active since.
    idle_reported: bool,
    /// Logical inputs that have ended, not yet reported.
    ended_inputs: std::collections::VecDeque<usize>,
}

impl InputSet {
    /// Merges `channels`. With no channels the set is immediately ended.
    pub fn new(channels: Vec<InputChannel>) -> Self {
        let done = channels.is_empty();
        Self {
            channels: channels
                .into_iter()
                .map(|channel| ChannelState {
                    channel,
                    watermark: Watermark::MIN,
                    ended: false,
                    blocked: false,
                    idle: false,
                })
                .collect(),
            current: Watermark::MIN,
            pending_barrier: None,
            cursor: 0,
            aligning_since: None,
            last_alignment: std::time::Duration::ZERO,
            done,
            idle_reported: false,
            ended_inputs: std::collections::VecDeque::new(),
        }
    }

    /// The next event; after [`InputEvent::End`] it keeps returning `End`.
    pub async fn next(&mut self) -> InputEvent {
        loop {
            if self.done {
                return InputEvent::End;
            }
            if let Some(logical) = self.ended_inputs.pop_front() {
                return InputEvent::InputEnded(logical);
            }
            let (idx, message) = self.poll_any().await;
            if let Some(event) = self.on_message(idx, message) {
                return event;
            }
        }
    }

    /// Receives from the next readable channel, rotating for fairness. A
    /// closed channel reads as end of stream.
    async fn poll_any(&mut self) -> (usize, Message) {
        // Watermark alignment: while a readable input lags behind in event
        // time, inputs ahead of it wait, so that a fast input cannot fill a
        // join or window with state the slow one is not ready to match.
        // Inputs that have sent no watermark yet, idle ones and inputs held
        // by barrier alignment neither hold others back nor are held.
        let floor = self
            .channels
            .iter()
            .filter(|c| !c.ended && !c.blocked && !c.idle && c.watermark > Watermark::MIN)
            .map(|c| c.watermark)
            .min();
        poll_fn(|cx| {
            let n = self.channels.len();
            for step in 0..n {
                let i = (self.cursor + step) % n;
                let ch = &mut self.channels[i];
                if ch.ended || ch.blocked {
                    continue;
                }
                if floor.is_some_and(|f| ch.watermark > f) {
                    continue;
                }
                match ch.channel.receiver.poll_recv(cx) {
                    Poll::Ready(m) => {
                        self.cursor = (i + 1) % n;
                        return Poll::Ready((i, m.unwrap_or(Message::EndOfStream)));
                    }
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Applies one message to the channel states; returns what to report.
    fn on_message(&mut self, idx: usize, message: Message) -> Option<InputEvent> {
        if matches!(message, Message::Data(_) | Message::Watermark(_)) {
            self.channels[idx].idle = false;
            self.idle_reported = false;
        }
        match message {
            Message::Data(batch) => Some(InputEvent::Data {
                input: self.channels[idx].channel.logical,
                batch,
            }),
            Message::Watermark(w) => {
                let ch = &mut self.channels[idx];
                ch.watermark = ch.watermark.max(w);
                self.advance_watermark()
            }
            Message::Idle => {
                self.channels[idx].idle = true;
                if self.channels.iter().all(|c| c.ended || c.idle) {
                    if self.idle_reported {
                        return None;
                    }
                    self.idle_reported = true;
                    return Some(InputEvent::Idle);
                }
                self.advance_watermark()
            }
            Message::Barrier(b) => {
                self.channels[idx].blocked = true;
                self.pending_barrier = Some(b);
                self.aligning_since
                    .get_or_insert_with(std::time::Instant::now);
                self.complete_barrier()
            }
            Message::EndOfStream => {
                self.channels[idx].ended = true;
                self.channels[idx].blocked = false;
                if self.channels.iter().all(|c| c.ended) {
                    self.done = true;
                    return Some(InputEvent::End);
                }
                let logical = self.channels[idx].channel.logical;
                if self
                    .channels
                    .iter()
                    .filter(|c| c.channel.logical == logical)
                    .all(|c| c.ended)
                {
                    self.ended_inputs.push_back(logical);
                }
                // An ended input no longer holds back barriers or the watermark.
                if let Some(b) = self.complete_barrier() {
                    return Some(b);
                }
                self.advance_watermark()
            }
        }
    }

    fn advance_watermark(&mut self) -> Option<InputEvent> {
        let min = self
            .channels
            .iter()
            .filter(|c| !c.ended && !c.idle)
            .map(|c| c.watermark)
            .min()?;
        if min > self.current {
            self.current = min;
            Some(InputEvent::Watermark(min))
        } else {
            None
        }
    }

    /// How long the last completed barrier waited for all inputs.
    pub fn last_alignment(&self) -> std::time::Duration {
        self.last_alignment
    }

    fn complete_barrier(&mut self) -> Option<InputEvent> {
        let barrier = self.pending_barrier?;
        if self.channels.iter().all(|c| c.ended || c.blocked) {
            self.pending_barrier = None;
            self.last_alignment = self
                .aligning_since
                .take()
                .map(|t| t.elapsed())
                .unwrap_or_default();
            for c in &mut self.channels {
                c.blocked = false;
            }
            Some(InputEvent::Barrier(barrier))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{Sender, channel};

    fn set(n: usize) -> (Vec<Sender<Message>>, InputSet) {
        let mut txs = Vec::new();
        let mut chans = Vec::new();
        for i in 0..n {
            let (tx, rx) = channel(8);
            txs.push(tx);
            chans.push(InputChannel {
                receiver: rx,
                logical: i,
            });
        }
        (txs, InputSet::new(chans))
    }

    #[tokio::test]
    async fn watermark_is_minimum_of_live_inputs() {
        let (txs, mut inputs) = set(2);
        txs[0]
            .send(Message::Watermark(Watermark(10)))
            .await
            .expect("send");
        txs[1]
            .send(Message::Watermark(Watermark(5)))
            .await
            .expect("send");
        assert!(matches!(
            inputs.next().await,
            InputEvent::Watermark(Watermark(5))
        ));
        txs[1]
            .send(Message::Watermark(Watermark(20)))
            .await
            .expect("send");
        assert!(matches!(
            inputs.next().await,
            InputEvent::Watermark(Watermark(10))
        ));
        txs[0].send(Message::EndOfStream).await.expect("send");
        assert!(matches!(
            inputs.next().await,
            InputEvent::Watermark(Watermark(20))
        ));
        assert!(matches!(inputs.next().await, InputEvent::InputEnded(0)));
        txs[1].send(Message::EndOfStream).await.expect("send");
        assert!(matches!(inputs.next().await, InputEvent::End));
    }

    #[tokio::test]
    async fn barrier_waits_for_all_inputs_and_blocks_aligned_ones() {
        let (txs, mut inputs) = set(2);
        let b = CheckpointBarrier {
            id: 1,
            timestamp_ms: 0,
            is_final: false,
        };
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::empty());
        let data = || {
            Message::Data(
                RecordBatch::try_new_with_options(
                    schema.clone(),
                    vec![],
                    &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(1)),
                )
                .expect("batch"),
            )
        };
        txs[0].send(Message::Barrier(b)).await.expect("send");
        txs[0].send(data()).await.expect("send"); // after the barrier: must wait
        txs[1].send(data()).await.expect("send"); // before the barrier: flows
        txs[1].send(Message::Barrier(b)).await.expect("send");
        assert!(matches!(
            inputs.next().await,
            InputEvent::Data { input: 1, .. }
        ));
        assert!(matches!(inputs.next().await, InputEvent::Barrier(x) if x.id == 1));
        assert!(matches!(
            inputs.next().await,
            InputEvent::Data { input: 0, .. }
        ));
    }

    #[tokio::test]
    async fn idle_inputs_do_not_hold_back_the_watermark() {
        let (txs, mut inputs) = set(2);
        txs[0]
            .send(Message::Watermark(Watermark(10)))
            .await
            .expect("send");
        txs[1].send(Message::Idle).await.expect("send");
        assert!(matches!(
            inputs.next().await,
            InputEvent::Watermark(Watermark(10))
        ));
        txs[0].send(Message::Idle).await.expect("send");
        assert!(matches!(inputs.next().await, InputEvent::Idle));
        // Input 1 resumes behind: the merged watermark does not go back,
        // and input 0 (still idle) does not hold it.
        txs[1]
            .send(Message::Watermark(Watermark(5)))
            .await
            .expect("send");
        txs[1]
            .send(Message::Watermark(Watermark(30)))
            .await
            .expect("send");
        assert!(matches!(
            inputs.next().await,
            InputEvent::Watermark(Watermark(30))
        ));
        // Input 0 active again: it holds the watermark until it catches up.
        txs[0]
            .send(Message::Watermark(Watermark(20)))
            .await
            .expect("send");
        txs[1]
            .send(Message::Watermark(Watermark(40)))
            .await
            .expect("send");
        txs[0]
            .send(Message::Watermark(Watermark(50)))
            .await
            .expect("send");
        assert!(matches!(
            inputs.next().await,
            InputEvent::Watermark(Watermark(40))
        ));
    }

    #[tokio::test]
    async fn inputs_ahead_in_event_time_wait_for_the_lagging_one() {
        let (txs, mut inputs) = set(2);
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::empty());
        let data = || {
            Message::Data(
                RecordBatch::try_new_with_options(
                    schema.clone(),
                    vec![],
                    &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(1)),
                )
                .expect("batch"),
            )
        };
        txs[0]
            .send(Message::Watermark(Watermark(100)))
            .await
            .expect("send");
        txs[1]
            .send(Message::Watermark(Watermark(10)))
            .await
            .expect("send");
        assert!(matches!(
            inputs.next().await,
            InputEvent::Watermark(Watermark(10))
        ));
        // Input 0 is ahead: its queued batch waits while input 1 has data.
        txs[0].send(data()).await.expect("send");
        txs[1].send(data()).await.expect("send");
        txs[1].send(data()).await.expect("send");
        for _ in 0..2 {
            assert!(matches!(
                inputs.next().await,
                InputEvent::Data { input: 1, .. }
            ));
        }
        // Input 1 catches up: input 0 is read again.
        txs[1]
            .send(Message::Watermark(Watermark(200)))
            .await
            .expect("send");
        assert!(matches!(
            inputs.next().await,
            InputEvent::Watermark(Watermark(100))
        ));
        assert!(matches!(
            inputs.next().await,
            InputEvent::Data { input: 0, .. }
        ));
    }

    #[tokio::test]
    async fn an_input_whose_channels_all_ended_is_reported_once() {
        let (txs, mut inputs) = set(2);
        txs[1].send(Message::EndOfStream).await.expect("send");
        assert!(matches!(inputs.next().await, InputEvent::InputEnded(1)));
        txs[0].send(Message::EndOfStream).await.expect("send");
        assert!(matches!(inputs.next().await, InputEvent::End));
    }

    #[tokio::test]
    async fn dropped_sender_counts_as_end() {
        let (txs, mut inputs) = set(1);
        drop(txs);
        assert!(matches!(inputs.next().await, InputEvent::End));
    }
}
