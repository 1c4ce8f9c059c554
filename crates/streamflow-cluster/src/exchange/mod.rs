//! Channels between worker processes: the [`Transport`] of a pipeline
//! spread over a cluster.
//!
//! A remote channel is found through NATS, under the run's subject prefix
//! (which carries the run's epoch): the producer asks for its consumer on
//! `<prefix>.<channel>.open`, and the consumer's answer says how the
//! channel's [frames](frames) travel.
//!
//! - **Directly**, when the consumer's process listens for channels
//!   ([`DirectExchange`], the default for workers): the producer connects
//!   to it over TCP and writes the frames down that connection. TCP's flow
//!   control, over socket buffers of a fixed size, holds the producer to
//!   its consumer's pace. The NATS server carries none of the data.
//! - **Relayed** by the NATS server (`--exchange nats`, for workers that
//!   cannot reach each other): frames go to `<prefix>.<channel>.data`
//!   against credits. The producer sends a frame only against a credit; the
//!   consumer grants credits on `.credit` as it hands frames on to its
//!   (bounded) input queue, so at most `window` frames of a channel are on
//!   the wire or in the consumer's subscription, and NATS never has to drop
//!   for a slow subscriber.
//!
//! Either way a slow consumer holds up its producer and no process buffers
//! without bound. Watermarks, idleness markers, barriers and end of stream
//! travel in order with the data, so alignment and event time work across
//! processes as within one. A broken connection or a gap in the frames'
//! sequence numbers (a server restart, a dropped connection) fails the
//! bridge and with it the run, which then restarts from its last
//! checkpoint. A producer of a replaced run (an older epoch) finds no
//! consumer: its connection is refused.

mod direct;
mod frames;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use streamflow_core::{Error, Message, Result};
use streamflow_runtime::{Bridge, ChannelId, CheckpointCommand, CheckpointReport, Transport};
use tokio::sync::mpsc::{Receiver, Sender, UnboundedReceiver, UnboundedSender};

pub use direct::DirectExchange;
pub(crate) use direct::local_ip_toward;
use frames::{Decoder, Encoder, HEADER};

/// Frames a relayed channel may have in flight when not configured.
pub const DEFAULT_WINDOW: u32 = 8;

/// How long a producer waits for its consumer to appear.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest frame body of a direct channel (larger batches are cut).
const DIRECT_CHUNK: usize = 16 << 20;

/// A [`Transport`] found through a NATS connection, for the channels of one
/// run (named by its subject prefix): direct where the consuming process
/// has a [`DirectExchange`], relayed by the server otherwise.
#[derive(Debug, Clone)]
pub struct NatsTransport {
    client: async_nats::Client,
    prefix: String,
    window: u32,
    chunk: usize,
    /// Where this process's inbound channels arrive directly, if it listens.
    direct: Option<Arc<DirectExchange>>,
    /// The worker running each (node, instance), to name in errors.
    peers: Arc<HashMap<(usize, usize), String>>,
    /// The run's checkpoint commands, subscribed to before the run starts.
    commands: Arc<Mutex<Option<async_nats::Subscriber>>>,
}

impl NatsTransport {
    /// Channels under `prefix` (say `streamflow.<cluster>.<flow>.<epoch>`)
    /// on `client`, relayed ones with `window` frames in flight at most.
    pub fn new(client: async_nats::Client, prefix: impl Into<String>, window: u32) -> Self {
        let max_payload = client.server_info().max_payload.max(64 * 1024);
        Self {
            client,
            prefix: prefix.into(),
            window: window.max(2),
            chunk: max_payload.min(1 << 20) - HEADER - 64,
            direct: None,
            peers: Arc::default(),
            commands: Arc::default(),
        }
    }

    /// Has the producers of this process's inbound channels send straight
    /// to `exchange` over TCP, not through the NATS server.
    #[must_use]
    pub fn direct(mut self, exchange: Arc<DirectExchange>) -> Self {
        self.direct = Some(exchange);
        self
    }

    /// Names the worker running each (node, instance) of the run, for
    /// errors to say which peer a broken channel led to.
    #[must_use]
    pub fn peers(mut self, peers: HashMap<(usize, usize), String>) -> Self {
        self.peers = Arc::new(peers);
        self
    }

    /// The channel as errors name it: with the worker at its other end.
    fn label(&self, channel: ChannelId, outbound: bool) -> String {
        let (peer, way) = if outbound {
            ((channel.consumer, channel.consumer_instance), "to")
        } else {
            ((channel.producer, channel.producer_instance), "from")
        };
        match self.peers.get(&peer) {
            Some(worker) => format!("{channel} {way} worker '{worker}'"),
            None => channel.to_string(),
        }
    }

    /// Listens for the run's checkpoint commands from now on: call it
    /// before starting a checkpointed share, whose coordinator may send
    /// its first barrier as soon as the share is up.
    ///
    /// # Errors
    /// The server failing.
    pub async fn listen_for_checkpoints(&self) -> Result<()> {
        let subscriber = crate::checkpoints::listen(&self.client, &self.prefix).await?;
        *self.commands.lock().unwrap_or_else(|e| e.into_inner()) = Some(subscriber);
        Ok(())
    }

    fn subject(&self, channel: ChannelId, what: &str) -> String {
        format!("{}.{channel}.{what}", self.prefix)
    }

    /// The channel's name in this run, as a direct producer introduces it.
    fn key(&self, channel: ChannelId) -> String {
        format!("{}.{channel}", self.prefix)
    }
}

impl Transport for NatsTransport {
    fn outbound(&self, channel: ChannelId, messages: Receiver<Message>) -> Bridge {
        Box::pin(self.clone().send(channel, messages))
    }

    fn inbound(&self, channel: ChannelId, into: Sender<Message>) -> Bridge {
        let this = self.clone();
        Box::pin(async move {
            match this.direct.clone() {
                Some(exchange) => this.receive_direct(&exchange, channel, into).await,
                None => this.receive_relayed(channel, into).await,
            }
        })
    }

    fn checkpoints(
        &self,
        reports: UnboundedReceiver<CheckpointReport>,
        commands: UnboundedSender<CheckpointCommand>,
    ) -> Bridge {
        let listening = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        Box::pin(async move {
            let listening = match listening {
                Some(s) => s,
                None => crate::checkpoints::listen(&client, &prefix).await?,
            };
            crate::checkpoints::worker_link(client, listening, prefix, reports, commands).await
        })
    }
}

/// Data batches following one within [`LINGER`] are sent with it, up to
/// these many rows or bytes.
const COALESCE_ROWS: usize = 8192;
const COALESCE_BYTES: usize = 1 << 20;
/// How long a batch waits for more to share its frame (as Flink's buffer
/// timeout, much shorter): the latency a remote edge adds at most.
const LINGER: Duration = Duration::from_millis(5);

/// `first` and the data batches that follow it within [`LINGER`], as one
/// batch, with the messages to send after it queued in `after`: the newest
/// watermark seen while gathering (a watermark may move later past data,
/// never earlier: no record becomes late, and older ones are superseded),
/// then the message that stopped the gathering, if any (a barrier, idle
/// marker or end keeps its place). Fewer, larger frames cost less to
/// encode and to relay than many small ones.
async fn coalesce(
    first: RecordBatch,
    messages: &mut Receiver<Message>,
    after: &mut VecDeque<Message>,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut rows = first.num_rows();
    let mut bytes = first.get_array_memory_size();
    let mut batches = vec![first];
    let mut watermark = None;
    let deadline = tokio::time::Instant::now() + LINGER;
    while rows < COALESCE_ROWS && bytes < COALESCE_BYTES {
        let next = match messages.try_recv() {
            Ok(m) => Some(m),
            Err(_) => tokio::time::timeout_at(deadline, messages.recv())
                .await
                .ok()
                .flatten(),
        };
        match next {
            Some(Message::Data(b)) => {
                rows += b.num_rows();
                bytes += b.get_array_memory_size();
                batches.push(b);
            }
            Some(Message::Watermark(w)) => watermark = Some(Message::Watermark(w)),
            Some(other) => {
                after.extend(watermark.take());
                after.push_back(other);
                break;
            }
            None => break,
        }
    }
    after.extend(watermark);
    match batches.len() {
        1 => Ok(batches.swap_remove(0)),
        _ => arrow::compute::concat_batches(&batches[0].schema(), &batches),
    }
}

fn broken(channel: impl std::fmt::Display, what: impl std::fmt::Display) -> Error {
    Error::Other(format!("remote channel {channel}: {what}"))
}

/// A consumer's answer to its producer's `open`: how to send.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Through the NATS server, with this many frames' credit to start.
    Relay { window: u32 },
    /// Over TCP to this address.
    Direct { address: String },
}

impl Answer {
    fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Answer::Relay { window } => {
                out.put_u8(b'r');
                out.put_u32_le(*window);
            }
            Answer::Direct { address } => {
                out.put_u8(b'd');
                out.put_slice(address.as_bytes());
            }
        }
        out.freeze()
    }

    fn decode(bytes: &[u8]) -> Result<Answer, String> {
        match bytes.split_first() {
            Some((b'r', rest)) => Ok(Answer::Relay {
                window: read_u32(rest),
            }),
            Some((b'd', rest)) => std::str::from_utf8(rest)
                .map(|a| Answer::Direct {
                    address: a.to_string(),
                })
                .map_err(|_| "an answer with an address that is not text".to_string()),
            _ => Err(format!(
                "an answer of {} bytes that does not read",
                bytes.len()
            )),
        }
    }
}

/// A direct connection that broke: its other end's worker is the
/// likeliest cause.
fn lost(e: std::io::Error) -> String {
    format!("the connection broke ({e}): its worker stopped or was lost")
}

/// Where a producer's frames go.
enum Outlet {
    /// Published to the NATS server against the consumer's credits.
    Relay {
        client: async_nats::Client,
        subject: String,
        grants: async_nats::Subscriber,
        credits: u64,
    },
    /// Written down a TCP connection to the consumer's process.
    Direct(direct::Sending),
}

impl Outlet {
    /// Sends one frame; returns how long the consumer held it back.
    async fn send(&mut self, frame: Bytes) -> Result<Duration, String> {
        match self {
            Outlet::Relay {
                client,
                subject,
                grants,
                credits,
            } => {
                let mut waited = Duration::ZERO;
                if *credits == 0 {
                    let waiting = Instant::now();
                    while *credits == 0 {
                        let grant = grants.next().await.ok_or("the connection closed")?;
                        *credits += u64::from(read_u32(&grant.payload));
                    }
                    waited = waiting.elapsed();
                }
                *credits -= 1;
                client
                    .publish(subject.clone(), frame)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(waited)
            }
            Outlet::Direct(sending) => {
                let writing = Instant::now();
                sending.send(&frame).await.map_err(lost)?;
                Ok(writing.elapsed())
            }
        }
    }

    /// Nothing more to send for now: pushes out what is buffered (a
    /// relayed channel's client flushes by itself).
    async fn idle(&mut self) -> Result<(), String> {
        match self {
            Outlet::Relay { .. } => Ok(()),
            Outlet::Direct(sending) => sending.flush().await.map_err(lost),
        }
    }

    /// The end was sent: pushes out everything.
    async fn finish(&mut self) -> Result<(), String> {
        match self {
            Outlet::Relay { client, .. } => client.flush().await.map_err(|e| e.to_string()),
            Outlet::Direct(sending) => sending.flush().await.map_err(lost),
        }
    }

    fn way(&self) -> &'static str {
        match self {
            Outlet::Relay { .. } => "relay",
            Outlet::Direct(_) => "direct",
        }
    }
}

impl NatsTransport {
    async fn send(self, channel: ChannelId, mut messages: Receiver<Message>) -> Result<()> {
        let label = self.label(channel, true);
        // Subscribed before asking, so that no credit is missed.
        let grants = self
            .client
            .subscribe(self.subject(channel, "credit"))
            .await
            .map_err(|e| broken(&label, e))?;
        let (mut outlet, chunk) = match self.open(channel, &label).await? {
            Answer::Relay { window } => (
                Outlet::Relay {
                    client: self.client.clone(),
                    subject: self.subject(channel, "data"),
                    grants,
                    credits: u64::from(window),
                },
                self.chunk,
            ),
            Answer::Direct { address } => {
                drop(grants);
                let sending = direct::connect(&address, &self.key(channel))
                    .await
                    .map_err(|e| broken(&label, e))?;
                (Outlet::Direct(sending), DIRECT_CHUNK)
            }
        };
        let mut encoder = Encoder::default();
        let mut frames = Vec::new();
        let started = Instant::now();
        let (mut sent_frames, mut sent_bytes, mut held) = (0u64, 0u64, Duration::ZERO);
        let mut next: VecDeque<Message> = VecDeque::new();
        loop {
            let message = match next.pop_front() {
                Some(m) => m,
                None => match messages.recv().await {
                    Some(m) => m,
                    None => break,
                },
            };
            let message = match message {
                Message::Data(batch) if next.is_empty() => Message::Data(
                    coalesce(batch, &mut messages, &mut next)
                        .await
                        .map_err(|e| broken(&label, e))?,
                ),
                other => other,
            };
            let end = matches!(message, Message::EndOfStream);
            encoder
                .encode(&message, chunk, &mut frames)
                .map_err(|e| broken(&label, e))?;
            for frame in frames.drain(..) {
                sent_frames += 1;
                sent_bytes += frame.len() as u64;
                held += outlet.send(frame).await.map_err(|e| broken(&label, e))?;
            }
            if end {
                outlet.finish().await.map_err(|e| broken(&label, e))?;
                tracing::info!(
                    channel = %channel,
                    way = %outlet.way(),
                    frames = sent_frames,
                    bytes = sent_bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    held_back = held.as_secs_f64(),
                    "remote channel ended"
                );
                return Ok(());
            }
            if next.is_empty() && messages.is_empty() {
                outlet.idle().await.map_err(|e| broken(&label, e))?;
            }
        }
        // The producer went away without ending: the run is failing elsewhere.
        Ok(())
    }

    /// Waits for the consumer and its answer.
    async fn open(&self, channel: ChannelId, label: &str) -> Result<Answer> {
        let subject = self.subject(channel, "open");
        let started = Instant::now();
        loop {
            match self.client.request(subject.clone(), Bytes::new()).await {
                Ok(reply) => return Answer::decode(&reply.payload).map_err(|e| broken(label, e)),
                Err(e) if started.elapsed() > OPEN_TIMEOUT => {
                    return Err(broken(
                        label,
                        format!("its consumer did not appear within {OPEN_TIMEOUT:?} ({e})"),
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Answers the producer's `open` with `exchange`'s address and takes
    /// the frames from the connection it makes there.
    async fn receive_direct(
        &self,
        exchange: &DirectExchange,
        channel: ChannelId,
        into: Sender<Message>,
    ) -> Result<()> {
        let label = self.label(channel, false);
        // Expected before any producer hears of us.
        let mut expected = exchange.expect(self.key(channel));
        let mut opens = self
            .client
            .subscribe(self.subject(channel, "open"))
            .await
            .map_err(|e| broken(&label, e))?;
        self.client.flush().await.map_err(|e| broken(&label, e))?;
        let answer = Answer::Direct {
            address: exchange.address().to_string(),
        }
        .encode();
        let mut receiving = loop {
            tokio::select! {
                Some(open) = opens.next() => {
                    self.answer(open, &answer).await.map_err(|e| broken(&label, e))?;
                }
                arrived = expected.arrived() => {
                    break arrived.map_err(|e| broken(&label, e))?;
                }
            }
        };
        drop(opens);
        let mut decoder = Decoder::default();
        while let Some(frame) = receiving
            .next()
            .await
            .map_err(|e| broken(&label, lost(e)))?
        {
            if deliver(&mut decoder, frame, &into, channel, &label).await? {
                return Ok(());
            }
        }
        Err(broken(
            &label,
            "its producer hung up before the end (its worker stopped or was lost)",
        ))
    }

    async fn receive_relayed(&self, channel: ChannelId, into: Sender<Message>) -> Result<()> {
        let label = self.label(channel, false);
        let subscribe = |what: &str| self.client.subscribe(self.subject(channel, what));
        let mut frames = subscribe("data").await.map_err(|e| broken(&label, e))?;
        let mut opens = subscribe("open").await.map_err(|e| broken(&label, e))?;
        let credit = self.subject(channel, "credit");
        // Subscribed at the server before any producer hears of us.
        self.client.flush().await.map_err(|e| broken(&label, e))?;
        let answer = Answer::Relay {
            window: self.window,
        }
        .encode();
        let mut decoder = Decoder::default();
        let mut consumed = 0u32;
        loop {
            tokio::select! {
                Some(open) = opens.next() => {
                    self.answer(open, &answer).await.map_err(|e| broken(&label, e))?;
                }
                frame = frames.next() => {
                    let frame = frame.ok_or_else(|| broken(&label, "the connection closed"))?;
                    if deliver(&mut decoder, frame.payload, &into, channel, &label).await? {
                        return Ok(());
                    }
                    consumed += 1;
                    if consumed >= self.window / 2 {
                        self.client
                            .publish(credit.clone(), Bytes::copy_from_slice(&consumed.to_le_bytes()))
                            .await
                            .map_err(|e| broken(&label, e))?;
                        consumed = 0;
                    }
                }
            }
        }
    }
}

impl NatsTransport {
    /// Replies to a producer's `open` with the consumer's `answer`.
    async fn answer(
        &self,
        open: async_nats::Message,
        answer: &Bytes,
    ) -> Result<(), async_nats::PublishError> {
        match open.reply {
            Some(reply) => self.client.publish(reply, answer.clone()).await,
            None => Ok(()),
        }
    }
}

/// Hands on to the consumer the message `frame` completes, if any; true
/// once that was the end of the stream.
async fn deliver(
    decoder: &mut Decoder,
    frame: Bytes,
    into: &Sender<Message>,
    channel: ChannelId,
    label: &str,
) -> Result<bool> {
    let message = decoder.decode(frame).map_err(|e| broken(label, e))?;
    let end = matches!(message, Some(Message::EndOfStream));
    if let Some(message) = message {
        into.send(message)
            .await
            .map_err(|_| Error::ChannelClosed(format!("remote channel {channel}")))?;
    }
    Ok(end)
}

fn read_u32(bytes: &[u8]) -> u32 {
    bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_back() {
        for answer in [
            Answer::Relay { window: 8 },
            Answer::Direct {
                address: "10.0.0.7:41234".into(),
            },
        ] {
            assert_eq!(Answer::decode(&answer.encode()), Ok(answer));
        }
        assert!(Answer::decode(b"").is_err());
        assert!(Answer::decode(b"x123").is_err());
    }
}
