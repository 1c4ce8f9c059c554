//! StreamFlow's embedded durable stream log: a store of spaces, each of
//! segments, each an append-only run of entries whose sequences are
//! contiguous from 1. Every write is one redb transaction, made durable
//! (fsync) before it returns; a produce of many records is written in
//! chunks of [`CHUNK`] records, each its own transaction.
//!
//! Entries of a space also get a space offset, 1, 2, … in the order they
//! were written, so a reader of a whole space resumes after the last offset
//! it saw.

pub mod auth;
mod client;
mod codec;
mod lease;
pub mod node;
mod remote;
mod store;
mod subscription;
mod wire;

pub use client::LogClient;
pub use lease::{LeaseToken, with_lease};
pub use remote::RemoteLog;
pub use store::Log;
pub use subscription::Subscription;

use serde::{Deserialize, Serialize};

/// Records written per transaction by [`Log::produce`].
pub const CHUNK: usize = 10_000;

/// Longest space or segment name, in bytes.
pub const MAX_NAME: usize = 1024;

/// The write transaction an entry came with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trx {
    /// The transaction's id, increasing per store.
    pub id: u64,
    /// The store node that wrote it.
    pub node: String,
    /// The entry's place in the transaction, from 0.
    pub number: u32,
}

/// How much of a space to keep; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Entries older than this (by their timestamp) go.
    pub max_age: Option<std::time::Duration>,
    /// Oldest entries go while the space's stored entries exceed this.
    pub max_bytes: Option<u64>,
}

/// An entry to write: its sequence must continue its segment exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 1, 2, … within the segment.
    pub sequence: u64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The entry's bytes.
    pub payload: Vec<u8>,
    /// Free-form attributes.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// An entry as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Its space.
    pub space: String,
    /// Its segment.
    pub segment: String,
    /// Its sequence in the segment.
    pub sequence: u64,
    /// Its offset in the space (write order).
    pub offset: u64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The write that made it.
    pub trx: Trx,
    /// The entry's bytes.
    pub payload: Vec<u8>,
    /// Free-form attributes.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Where a segment stands (sequence 0 and no timestamps: empty or absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentStatus {
    /// The space.
    pub space: String,
    /// The segment.
    pub segment: String,
    /// The first sequence written (0: none).
    pub first_sequence: u64,
    /// Its timestamp.
    pub first_timestamp: i64,
    /// The last sequence written (0: none).
    pub last_sequence: u64,
    /// Its timestamp.
    pub last_timestamp: i64,
}

/// Bounds of a segment read; inclusive, 0 means unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRange {
    /// Lowest sequence.
    pub min_sequence: u64,
    /// Highest sequence.
    pub max_sequence: u64,
    /// Earliest timestamp.
    pub min_timestamp: i64,
    /// Latest timestamp.
    pub max_timestamp: i64,
    /// Entries at most.
    pub limit: usize,
}

/// Bounds of a space read: entries after `offset` (exclusive), in write
/// order; timestamps inclusive, 0 meaning unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceRange {
    /// The last offset already read (0: from the start).
    pub offset: u64,
    /// Entries at most (0: all).
    pub limit: usize,
    /// Earliest timestamp.
    pub min_timestamp: i64,
    /// Latest timestamp.
    pub max_timestamp: i64,
}

/// What a log operation can fail with (the same over every transport).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum LogError {
    /// An empty space or segment name, or no records.
    #[error("invalid produce args: {0}")]
    InvalidArgs(String),
    /// A record does not continue its segment.
    #[error("sequence gap: expected {expected}, got {got}")]
    SequenceGap {
        /// The sequence the segment needs next.
        expected: u64,
        /// The one given.
        got: u64,
    },
    /// Another holder's lease on the key has not expired.
    #[error("lease '{key}' is held by {holder} for {remaining_ms} ms more")]
    LeaseHeld {
        /// The key.
        key: String,
        /// Its holder.
        holder: String,
        /// Until it expires.
        remaining_ms: i64,
    },
    /// The embedded store failed.
    #[error("log store: {0}")]
    Store(String),
    /// The server could not be reached, or the connection was lost.
    #[error("log transport: {0}")]
    Transport(String),
    /// The token is missing, invalid, or does not cover the store.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The store is refusing use for a while after repeated failures.
    #[error(
        "store '{store}' is unavailable for {retry_in_ms} ms after repeated failures to open it"
    )]
    Unavailable {
        /// The store.
        store: String,
        /// Until it is tried again.
        retry_in_ms: u64,
    },
}

pub(crate) fn store_error(e: impl std::fmt::Display) -> LogError {
    LogError::Store(e.to_string())
}
