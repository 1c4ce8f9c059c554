//! Frames of the WebSocket transport. One binary WebSocket message is one
//! frame: stream id (u32), kind (u8), head length (u32), a JSON head, and a
//! binary body (records to produce, entries read). Many logical streams,
//! one per operation, share a connection; a stream begins with a request
//! and ends with a reply or an error (a subscription sends events until it
//! is cancelled).

use serde::{Deserialize, Serialize};

use crate::{LogError, SegmentRange, SpaceRange};

/// Client → server: the operation opening a stream.
pub(crate) const REQUEST: u8 = 1;
/// Server → client: the result, ending the stream.
pub(crate) const REPLY: u8 = 2;
/// Server → client: one item of a subscription.
pub(crate) const EVENT: u8 = 3;
/// Server → client: the operation failed, ending the stream.
pub(crate) const ERROR: u8 = 4;
/// Client → server: end a subscription.
pub(crate) const CANCEL: u8 = 5;

/// One frame.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) stream: u32,
    pub(crate) kind: u8,
    pub(crate) head: Vec<u8>,
    pub(crate) body: Vec<u8>,
}

impl Frame {
    /// A frame whose head is `head` as JSON.
    pub(crate) fn new(
        stream: u32,
        kind: u8,
        head: &impl Serialize,
        body: Vec<u8>,
    ) -> Result<Frame, LogError> {
        Ok(Frame {
            stream,
            kind,
            head: serde_json::to_vec(head).map_err(|e| LogError::Transport(e.to_string()))?,
            body,
        })
    }

    /// The frame's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.head.len() + self.body.len());
        out.extend_from_slice(&self.stream.to_le_bytes());
        out.push(self.kind);
        out.extend_from_slice(&(self.head.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.body);
        out
    }

    /// A frame from its bytes.
    pub(crate) fn decode(mut bytes: Vec<u8>) -> Result<Frame, LogError> {
        let bad = || LogError::Transport("a malformed frame".into());
        if bytes.len() < 9 {
            return Err(bad());
        }
        let stream = u32::from_le_bytes(bytes[0..4].try_into().map_err(|_| bad())?);
        let kind = bytes[4];
        let head_len = u32::from_le_bytes(bytes[5..9].try_into().map_err(|_| bad())?) as usize;
        let head_end = 9usize.checked_add(head_len).ok_or_else(bad)?;
        if bytes.len() < head_end {
            return Err(bad());
        }
        let body = bytes.split_off(head_end);
        let head = bytes[9..].to_vec();
        Ok(Frame {
            stream,
            kind,
            head,
            body,
        })
    }

    /// The head, read as `T`.
    pub(crate) fn head<T: for<'de> Deserialize<'de>>(&self) -> Result<T, LogError> {
        serde_json::from_slice(&self.head)
            .map_err(|e| LogError::Transport(format!("a malformed frame head: {e}")))
    }
}

/// A request's head: the store and the operation.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RequestHead {
    pub(crate) store: String,
    #[serde(flatten)]
    pub(crate) request: Request,
}

/// The operations. Records to produce and a published payload travel in
/// the frame's body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    Produce {
        space: String,
        segment: String,
    },
    Publish {
        space: String,
        segment: String,
        metadata: serde_json::Map<String, serde_json::Value>,
    },
    ConsumeSegment {
        space: String,
        segment: String,
        range: SegmentRange,
    },
    ConsumeSpace {
        space: String,
        range: SpaceRange,
    },
    Consume {
        offsets: Vec<(String, u64)>,
        limit: usize,
    },
    Peek {
        space: String,
        segment: String,
    },
    LastOffset {
        space: String,
    },
    Spaces,
    Segments {
        space: String,
    },
    DeleteSegment {
        space: String,
        segment: String,
    },
    Subscribe {
        space: String,
        segment: String,
    },
    AcquireLease {
        key: String,
        holder: String,
        ttl_ms: u64,
    },
    ReleaseLease {
        key: String,
        holder: String,
    },
    SetRetention {
        space: String,
        max_age_ms: Option<u64>,
        max_bytes: Option<u64>,
    },
}
