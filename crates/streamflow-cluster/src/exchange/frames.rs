//! Frames: the unit both ways of carrying a channel move. A frame is a
//! kind byte and a sequence number, then its body. Batches are an Arrow IPC
//! stream (the schema once, then each batch as an IPC message, buffers not
//! re-encoded), cut into frames of at most a chunk each; the consumer feeds
//! them to a streaming IPC decoder. Watermarks, idleness markers, barriers
//! and end of stream are frames of their own, in order with the data. A gap
//! in the sequence numbers is an error: frames were lost.

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamEncoder;
use bytes::{BufMut, Bytes, BytesMut};
use streamflow_core::{CheckpointBarrier, Message, Watermark};

/// Bytes of a frame before its body.
pub(super) const HEADER: usize = 9;

/// Frame kinds.
const DATA: u8 = 0;
const DATA_NEW_STREAM: u8 = 1;
const WATERMARK: u8 = 2;
const BARRIER: u8 = 3;
const IDLE: u8 = 4;
const END: u8 = 5;

/// Turns messages into frames.
#[derive(Default)]
pub(super) struct Encoder {
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

    pub(super) fn encode(
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
pub(super) struct Decoder {
    seq: u64,
    stream: StreamDecoder,
}

impl Decoder {
    /// The message a frame completes, if it does (a batch may take several).
    pub(super) fn decode(&mut self, frame: Bytes) -> Result<Option<Message>, String> {
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
