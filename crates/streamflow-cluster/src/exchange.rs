//! Channels between worker processes over NATS: the [`Transport`] of a
//! pipeline spread over a cluster.
//!
//! Each remote channel is three subjects under the run's prefix:
//! `<prefix>.<channel>.data` carries frames, `.open` is where the producer
//! asks for the consumer, `.credit` where the consumer grants more frames.
//!
//! - **Frames**: a kind byte and a sequence number, then the body. Batches
//!   are an Arrow IPC stream (the schema once, then each batch as an IPC
//!   message, buffers not re-encoded), cut into frames under the server's
//!   max payload; the consumer feeds them to a streaming IPC decoder.
//!   Watermarks, idleness markers, barriers and end of stream are frames of
//!   their own, in order with the data, so alignment and event time work
//!   across processes as within one.
//! - **Flow control** is credit-based: the producer sends a frame only
//!   against a credit, the consumer returns credits as it hands frames on
//!   to its (bounded) input queue. At most `window` frames of a channel are
//!   ever on the wire or in the consumer's subscription, so a slow consumer
//!   holds up its producer and no process buffers without bound; NATS never
//!   has to drop for a slow subscriber.
//! - **Loss**: core NATS delivers in order from one connection; a gap in
//!   the sequence numbers (a server restart, a dropped connection) fails
//!   the bridge and with it the run, which then restarts from its last
//!   checkpoint.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamEncoder;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use streamflow_core::{CheckpointBarrier, Error, Message, Result, Watermark};
use streamflow_runtime::{Bridge, ChannelId, CheckpointCommand, CheckpointReport, Transport};
use tokio::sync::mpsc::{Receiver, Sender, UnboundedReceiver, UnboundedSender};

/// Frames a channel may have in flight when not configured.
pub const DEFAULT_WINDOW: u32 = 8;

/// How long a producer waits for its consumer to appear.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

const HEADER: usize = 9;

/// Frame kinds.
const DATA: u8 = 0;
const DATA_NEW_STREAM: u8 = 1;
const WATERMARK: u8 = 2;
const BARRIER: u8 = 3;
const IDLE: u8 = 4;
const END: u8 = 5;

/// A [`Transport`] over a NATS connection, for the channels of one run
/// (named by its subject prefix).
#[derive(Debug, Clone)]
pub struct NatsTransport {
    client: async_nats::Client,
    prefix: String,
    window: u32,
    chunk: usize,
    /// The run's checkpoint commands, subscribed to before the run starts.
    commands: Arc<Mutex<Option<async_nats::Subscriber>>>,
}

impl NatsTransport {
    /// Channels under `prefix` (say `streamflow.<cluster>.<flow>.<epoch>`)
    /// on `client`, each with `window` frames in flight at most.
    pub fn new(client: async_nats::Client, prefix: impl Into<String>, window: u32) -> Self {
        let max_payload = client.server_info().max_payload.max(64 * 1024);
        Self {
            client,
            prefix: prefix.into(),
            window: window.max(2),
            chunk: max_payload.min(1 << 20) - HEADER - 64,
            commands: Arc::default(),
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
}

impl Transport for NatsTransport {
    fn outbound(&self, channel: ChannelId, messages: Receiver<Message>) -> Bridge {
        Box::pin(self.clone().send(channel, messages))
    }

    fn inbound(&self, channel: ChannelId, into: Sender<Message>) -> Bridge {
        Box::pin(self.clone().receive(channel, into))
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

fn broken(channel: ChannelId, what: impl std::fmt::Display) -> Error {
    Error::Other(format!("remote channel {channel}: {what}"))
}

impl NatsTransport {
    async fn send(self, channel: ChannelId, mut messages: Receiver<Message>) -> Result<()> {
        let data = self.subject(channel, "data");
        let mut grants = self
            .client
            .subscribe(self.subject(channel, "credit"))
            .await
            .map_err(|e| broken(channel, e))?;
        let mut credits = u64::from(self.open(channel).await?);
        let mut encoder = Encoder::default();
        let mut frames = Vec::new();
        let started = Instant::now();
        let (mut sent_frames, mut sent_bytes, mut waited) = (0u64, 0u64, Duration::ZERO);
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
                        .map_err(|e| broken(channel, e))?,
                ),
                other => other,
            };
            let end = matches!(message, Message::EndOfStream);
            encoder
                .encode(&message, self.chunk, &mut frames)
                .map_err(|e| broken(channel, e))?;
            for frame in frames.drain(..) {
                if credits == 0 {
                    let waiting = Instant::now();
                    while credits == 0 {
                        let grant = grants
                            .next()
                            .await
                            .ok_or_else(|| broken(channel, "the connection closed"))?;
                        credits += u64::from(read_u32(&grant.payload));
                    }
                    waited += waiting.elapsed();
                }
                credits -= 1;
                sent_frames += 1;
                sent_bytes += frame.len() as u64;
                self.client
                    .publish(data.clone(), frame)
                    .await
                    .map_err(|e| broken(channel, e))?;
            }
            if end {
                self.client.flush().await.map_err(|e| broken(channel, e))?;
                tracing::info!(
                    channel = %channel,
                    frames = sent_frames,
                    bytes = sent_bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    waited_for_credit = waited.as_secs_f64(),
                    "remote channel ended"
                );
                return Ok(());
            }
        }
        // The producer went away without ending: the run is failing elsewhere.
        Ok(())
    }

    /// Waits for the consumer; its answer is the first credit.
    async fn open(&self, channel: ChannelId) -> Result<u32> {
        let subject = self.subject(channel, "open");
        let started = Instant::now();
        loop {
            match self.client.request(subject.clone(), Bytes::new()).await {
                Ok(reply) => return Ok(read_u32(&reply.payload)),
                Err(e) if started.elapsed() > OPEN_TIMEOUT => {
                    return Err(broken(
                        channel,
                        format!("its consumer did not appear within {OPEN_TIMEOUT:?} ({e})"),
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn receive(self, channel: ChannelId, into: Sender<Message>) -> Result<()> {
        let subscribe = |what: &str| self.client.subscribe(self.subject(channel, what));
        let mut frames = subscribe("data").await.map_err(|e| broken(channel, e))?;
        let mut opens = subscribe("open").await.map_err(|e| broken(channel, e))?;
        let credit = self.subject(channel, "credit");
        // Subscribed at the server before any producer hears of us.
        self.client.flush().await.map_err(|e| broken(channel, e))?;
        let window = Bytes::copy_from_slice(&self.window.to_le_bytes());
        let mut decoder = Decoder::default();
        let mut consumed = 0u32;
        loop {
            tokio::select! {
                Some(open) = opens.next() => {
                    if let Some(reply) = open.reply {
                        self.client
                            .publish(reply, window.clone())
                            .await
                            .map_err(|e| broken(channel, e))?;
                    }
                }
                frame = frames.next() => {
                    let frame = frame.ok_or_else(|| broken(channel, "the connection closed"))?;
                    let message = decoder
                        .decode(frame.payload)
                        .map_err(|e| broken(channel, e))?;
                    let end = matches!(message, Some(Message::EndOfStream));
                    if let Some(message) = message {
                        into.send(message)
                            .await
                            .map_err(|_| Error::ChannelClosed(format!("remote channel {channel}")))?;
                    }
                    if end {
                        return Ok(());
                    }
                    consumed += 1;
                    if consumed >= self.window / 2 {
                        self.client
                            .publish(credit.clone(), Bytes::copy_from_slice(&consumed.to_le_bytes()))
                            .await
                            .map_err(|e| broken(channel, e))?;
                        consumed = 0;
                    }
                }
            }
        }
    }
}

fn read_u32(bytes: &[u8]) -> u32 {
    bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Turns messages into frames.
#[derive(Default)]
struct Encoder {
    seq: u64,
    stream: Option<(SchemaRef, StreamEncoder)>,
}

impl Encoder {
    fn header(&mut self, kind: u8, capacity: usize) -> BytesMut {
        let mut frame = BytesMut::with_capacity(HEADER + capacity);
        frame.put_u8(kind);
        frame.put_u64_le(self.seq);
        self.seq += 1;
        frame
    }

    fn encode(
        &mut self,
        message: &Message,
        chunk: usize,
        out: &mut Vec<Bytes>,
    ) -> Result<(), String> {
        let frame = match message {
            Message::Data(batch) => return self.encode_batch(batch, chunk, out),
            Message::Watermark(w) => {
                let mut f = self.header(WATERMARK, 8);
                f.put_i64_le(w.0);
                f
            }
            Message::Barrier(b) => {
                let mut f = self.header(BARRIER, 17);
                f.put_u64_le(b.id);
                f.put_i64_le(b.timestamp_ms);
                f.put_u8(u8::from(b.is_final));
                f
            }
            Message::Idle => self.header(IDLE, 0),
            Message::EndOfStream => self.header(END, 0),
        };
        out.push(frame.freeze());
        Ok(())
    }

    fn encode_batch(
        &mut self,
        batch: &RecordBatch,
        chunk: usize,
        out: &mut Vec<Bytes>,
    ) -> Result<(), String> {
        let schema = batch.schema();
        let same = self
            .stream
            .as_ref()
            .is_some_and(|(s, _)| std::sync::Arc::ptr_eq(s, &schema) || **s == *schema);
        let mut first = DATA;
        if !same {
            let encoder = StreamEncoder::try_new(&schema).map_err(|e| e.to_string())?;
            self.stream = Some((schema, encoder));
            first = DATA_NEW_STREAM;
        }
        let Some((_, encoder)) = self.stream.as_mut() else {
            return Err("no encoder".into());
        };
        let buffers = encoder.encode(batch).map_err(|e| e.to_string())?;
        let total: usize = buffers.iter().map(Buffer::len).sum();
        let mut written = 0;
        let mut frame = self.header(first, total.min(chunk));
        for buffer in &buffers {
            let mut rest = buffer.as_slice();
            while !rest.is_empty() {
                if frame.len() - HEADER == chunk {
                    out.push(std::mem::take(&mut frame).freeze());
                    frame = self.header(DATA, (total - written).min(chunk));
                }
                let n = rest.len().min(chunk - (frame.len() - HEADER));
                frame.put_slice(&rest[..n]);
                rest = &rest[n..];
                written += n;
            }
        }
        out.push(frame.freeze());
        Ok(())
    }
}

/// Turns frames back into messages.
#[derive(Default)]
struct Decoder {
    seq: u64,
    stream: StreamDecoder,
}

impl Decoder {
    /// The message a frame completes, if it does (a batch may take several).
    fn decode(&mut self, frame: Bytes) -> Result<Option<Message>, String> {
        if frame.len() < HEADER {
            return Err(format!("a frame of {} bytes", frame.len()));
        }
        let kind = frame[0];
        let seq = u64::from_le_bytes(frame[1..HEADER].try_into().map_err(|_| "short frame")?);
        if seq != self.seq {
            return Err(format!(
                "frames lost: expected frame {}, got {seq}",
                self.seq
            ));
        }
        self.seq += 1;
        let body = frame.slice(HEADER..);
        let number = |at: usize| -> Result<[u8; 8], String> {
            body.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("a short frame of kind {kind}"))
        };
        Ok(match kind {
            DATA | DATA_NEW_STREAM => {
                if kind == DATA_NEW_STREAM {
                    self.stream = StreamDecoder::new();
                }
                let mut buffer = Buffer::from(body);
                let mut batch = None;
                while !buffer.is_empty() {
                    if let Some(b) = self.stream.decode(&mut buffer).map_err(|e| e.to_string())? {
                        batch = Some(b);
                    }
                }
                batch.map(Message::Data)
            }
            WATERMARK => Some(Message::Watermark(Watermark(i64::from_le_bytes(number(
                0,
            )?)))),
            BARRIER => Some(Message::Barrier(CheckpointBarrier {
                id: u64::from_le_bytes(number(0)?),
                timestamp_ms: i64::from_le_bytes(number(8)?),
                is_final: body.get(16) == Some(&1),
            })),
            IDLE => Some(Message::Idle),
            END => Some(Message::EndOfStream),
            other => return Err(format!("a frame of unknown kind {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn batch(rows: usize, width: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("{i:0width$}")),
                )),
            ],
        )
        .expect("batch")
    }

    fn round_trip(messages: &[Message], chunk: usize) -> Vec<Message> {
        let mut encoder = Encoder::default();
        let mut decoder = Decoder::default();
        let mut frames = Vec::new();
        let mut out = Vec::new();
        for m in messages {
            encoder.encode(m, chunk, &mut frames).expect("encode");
            for f in frames.drain(..) {
                assert!(
                    f.len() <= chunk + HEADER,
                    "frame of {} over {chunk}",
                    f.len()
                );
                if let Some(m) = decoder.decode(f).expect("decode") {
                    out.push(m);
                }
            }
        }
        out
    }

    fn same(a: &Message, b: &Message) -> bool {
        match (a, b) {
            (Message::Data(x), Message::Data(y)) => x == y,
            (Message::Watermark(x), Message::Watermark(y)) => x == y,
            (Message::Barrier(x), Message::Barrier(y)) => x == y,
            (Message::Idle, Message::Idle) | (Message::EndOfStream, Message::EndOfStream) => true,
            _ => false,
        }
    }

    proptest! {
        /// Any sequence of messages, batches cut at any chunk size, comes
        /// out as it went in.
        #[test]
        fn messages_survive_framing(
            kinds in prop::collection::vec((0u8..5, 0usize..3000, 1usize..40, any::<i64>()), 1..20),
            chunk in 64usize..20_000,
        ) {
            let messages: Vec<Message> = kinds
                .iter()
                .map(|&(k, rows, width, n)| match k {
                    0 => Message::Data(batch(rows, width)),
                    1 => Message::Watermark(Watermark(n)),
                    2 => Message::Barrier(CheckpointBarrier { id: n.unsigned_abs(), timestamp_ms: n, is_final: n % 2 == 0 }),
                    3 => Message::Idle,
                    _ => Message::EndOfStream,
                })
                .collect();
            let out = round_trip(&messages, chunk);
            prop_assert_eq!(out.len(), messages.len());
            for (a, b) in messages.iter().zip(&out) {
                prop_assert!(same(a, b));
            }
        }
    }

    #[test]
    fn a_new_schema_starts_a_new_stream() {
        let a = batch(10, 3);
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
        )
        .expect("batch");
        let out = round_trip(
            &[
                Message::Data(a.clone()),
                Message::Data(b.clone()),
                Message::Data(a.clone()),
            ],
            100,
        );
        assert!(same(&out[0], &Message::Data(a.clone())));
        assert!(same(&out[1], &Message::Data(b)));
        assert!(same(&out[2], &Message::Data(a)));
    }

    #[test]
    fn a_lost_frame_is_an_error() {
        let mut encoder = Encoder::default();
        let mut frames = Vec::new();
        for w in 0..3 {
            encoder
                .encode(&Message::Watermark(Watermark(w)), 100, &mut frames)
                .expect("encode");
        }
        let mut decoder = Decoder::default();
        decoder.decode(frames[0].clone()).expect("first");
        let err = decoder.decode(frames[2].clone()).expect_err("gap");
        assert!(err.contains("expected frame 1, got 2"), "{err}");
    }
}
