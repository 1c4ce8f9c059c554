//! StreamFlow's embedded durable stream log: a store of spaces, each of
//! segments, each an append-only run of entries whose sequences are
//! contiguous from 1. Every write is one redb transaction, made durable
//! (fsync) before it returns; a produce of many records is written in
//! chunks of [`CHUNK`] records, each its own transaction.
//!
//! Entries of a space also get a space offset, 1, 2, … in the order they
//! were written, so a reader of a whole space resumes after the last offset
//! it saw.

mod lease;
mod store;
mod subscription;

pub use lease::{LeaseToken, with_lease};
pub use store::Log;
pub use subscription::Subscription;

use serde::{Deserialize, Serialize};

/// Records written per transaction by [`Log::produce`].
pub const CHUNK: usize = 10_000;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// What a log operation can fail with.
#[derive(Debug, thiserror::Error)]
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
}

pub(crate) fn store_error(e: impl std::fmt::Display) -> LogError {
    LogError::Store(e.to_string())
}
