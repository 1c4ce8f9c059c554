//! The log in a redb file: entries by (space, segment, sequence), segment
//! statuses, and a per-space index of offsets in write order.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{CHUNK, Entry, LogError, Record, SegmentRange, SegmentStatus, SpaceRange, store_error};

/// (space, segment, sequence) → offset, timestamp, metadata and payload.
const ENTRIES: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("entries");
/// (space, segment) → [`SegmentStatus`] (JSON).
const SEGMENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("segments");
/// Space → its last offset.
const SPACES: TableDefinition<&str, u64> = TableDefinition::new("spaces");
/// (space, offset) → (segment, sequence).
const OFFSETS: TableDefinition<(&str, u64), (&str, u64)> = TableDefinition::new("offsets");
/// Lease key → (holder, expiry in ms since the epoch).
const LEASES: TableDefinition<&str, (&str, i64)> = TableDefinition::new("leases");

/// An embedded log, in one file. Writers are serialised by the store;
/// readers never wait for them.
pub struct Log {
    db: Database,
    /// Every committed write's new segment status, for subscribers.
    statuses: tokio::sync::broadcast::Sender<SegmentStatus>,
}

/// Statuses kept for subscribers that fall behind (older ones are skipped:
/// a status holds everything before it).
const STATUS_BACKLOG: usize = 1024;

fn encode(offset: u64, r: &Record) -> Result<Vec<u8>, LogError> {
    let meta = serde_json::to_vec(&r.metadata).map_err(store_error)?;
    let mut out = Vec::with_capacity(20 + meta.len() + r.payload.len());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&r.timestamp.to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&r.payload);
    Ok(out)
}

fn decode(space: &str, segment: &str, sequence: u64, bytes: &[u8]) -> Result<Entry, LogError> {
    let bad = || LogError::Store(format!("a damaged entry: {space}/{segment}/{sequence}"));
    let word = |at: usize| -> Result<[u8; 8], LogError> {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)
    };
    let offset = u64::from_le_bytes(word(0)?);
    let timestamp = i64::from_le_bytes(word(8)?);
    let meta_len = bytes
        .get(16..20)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(bad)? as usize;
    let meta = bytes.get(20..20 + meta_len).ok_or_else(bad)?;
    Ok(Entry {
        space: space.to_string(),
        segment: segment.to_string(),
        sequence,
        offset,
        timestamp,
        payload: bytes[20 + meta_len..].to_vec(),
        metadata: serde_json::from_slice(meta).map_err(store_error)?,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Log {
    /// Opens (or creates) the log in directory `dir`.
    ///
    /// # Errors
    /// The file cannot be opened (another process holds it, say).
    pub fn open(dir: &Path) -> Result<Log, LogError> {
        std::fs::create_dir_all(dir).map_err(store_error)?;
        let db = Database::create(dir.join("log.redb")).map_err(store_error)?;
        let (statuses, _) = tokio::sync::broadcast::channel(STATUS_BACKLOG);
        Ok(Log { db, statuses })
    }

    /// Appends `records` to `segment` of `space`: each must continue the
    /// segment exactly. Written in chunks of [`CHUNK`], each one durable
    /// transaction; returns the status after each chunk.
    ///
    /// # Errors
    /// Empty names or no records, a sequence gap (nothing of that chunk is
    /// written; earlier chunks are), the store.
    pub fn produce(
        &self,
        space: &str,
        segment: &str,
        records: &[Record],
    ) -> Result<Vec<SegmentStatus>, LogError> {
        if space.is_empty() || segment.is_empty() {
            return Err(LogError::InvalidArgs(
                "space and segment must be named".into(),
            ));
        }
        if records.is_empty() {
            return Err(LogError::InvalidArgs("no records".into()));
        }
        records
            .chunks(CHUNK)
            .map(|chunk| self.write(space, segment, chunk))
            .collect()
    }

    /// Appends one entry to `segment` of `space`, its sequence the next
    /// one, its timestamp now.
    ///
    /// # Errors
    /// Empty names, the store.
    pub fn publish(
        &self,
        space: &str,
        segment: &str,
        payload: Vec<u8>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<SegmentStatus, LogError> {
        if space.is_empty() || segment.is_empty() {
            return Err(LogError::InvalidArgs(
                "space and segment must be named".into(),
            ));
        }
        let mut record = Record {
            sequence: 0,
            timestamp: now_ms(),
            payload,
            metadata,
        };
        self.write_with(space, segment, |status| {
            record.sequence = status.last_sequence + 1;
            Ok(std::slice::from_ref(&record).to_vec())
        })
    }

    fn write(
        &self,
        space: &str,
        segment: &str,
        chunk: &[Record],
    ) -> Result<SegmentStatus, LogError> {
        self.write_with(space, segment, |status| {
            for (expected, r) in (status.last_sequence + 1..).zip(chunk) {
                if r.sequence != expected {
                    return Err(LogError::SequenceGap {
                        expected,
                        got: r.sequence,
                    });
                }
            }
            Ok(chunk.to_vec())
        })
    }

    /// One durable transaction: `records` (given the segment's status)
    /// appended, statuses and offsets updated.
    fn write_with(
        &self,
        space: &str,
        segment: &str,
        records: impl FnOnce(&SegmentStatus) -> Result<Vec<Record>, LogError>,
    ) -> Result<SegmentStatus, LogError> {
        let mut txn = self.db.begin_write().map_err(store_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(store_error)?;
        let status = {
            let mut segments = txn.open_table(SEGMENTS).map_err(store_error)?;
            let mut status = match segments.get((space, segment)).map_err(store_error)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(store_error)?,
                None => SegmentStatus {
                    space: space.to_string(),
                    segment: segment.to_string(),
                    ..SegmentStatus::default()
                },
            };
            let records = records(&status)?;
            let mut spaces = txn.open_table(SPACES).map_err(store_error)?;
            let mut offset = spaces
                .get(space)
                .map_err(store_error)?
                .map_or(0, |v| v.value());
            let mut entries = txn.open_table(ENTRIES).map_err(store_error)?;
            let mut offsets = txn.open_table(OFFSETS).map_err(store_error)?;
            for r in &records {
                offset += 1;
                entries
                    .insert((space, segment, r.sequence), encode(offset, r)?.as_slice())
                    .map_err(store_error)?;
                offsets
                    .insert((space, offset), (segment, r.sequence))
                    .map_err(store_error)?;
            }
            if let (Some(first), Some(last)) = (records.first(), records.last()) {
                if status.first_sequence == 0 {
                    status.first_sequence = first.sequence;
                    status.first_timestamp = first.timestamp;
                }
                status.last_sequence = last.sequence;
                status.last_timestamp = last.timestamp;
            }
            spaces.insert(space, offset).map_err(store_error)?;
            let json = serde_json::to_vec(&status).map_err(store_error)?;
            segments
                .insert((space, segment), json.as_slice())
                .map_err(store_error)?;
            status
        };
        txn.commit().map_err(store_error)?;
        // Nobody listening is fine.
        let _ = self.statuses.send(status.clone());
        Ok(status)
    }

    /// The statuses of `segment` of `space` (`*`: every segment of it):
    /// the current ones first, then each new one as writes commit.
    ///
    /// # Errors
    /// The store.
    pub fn subscribe(&self, space: &str, segment: &str) -> Result<crate::Subscription, LogError> {
        // Subscribe before reading, so nothing written in between is missed.
        let receiver = self.statuses.subscribe();
        let segments = if segment == "*" {
            self.segments(space)?
        } else {
            vec![segment.to_string()]
        };
        let current = segments
            .iter()
            .map(|s| self.peek(space, s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::Subscription::new(
            space.to_string(),
            (segment != "*").then(|| segment.to_string()),
            current,
            receiver,
        ))
    }

    /// Entries of `segment` within `range`, by sequence.
    ///
    /// # Errors
    /// The store.
    pub fn consume_segment(
        &self,
        space: &str,
        segment: &str,
        range: SegmentRange,
    ) -> Result<Vec<Entry>, LogError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let entries = match txn.open_table(ENTRIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(store_error(e)),
        };
        let max = if range.max_sequence == 0 {
            u64::MAX
        } else {
            range.max_sequence
        };
        let mut out = Vec::new();
        for item in entries
            .range((space, segment, range.min_sequence)..=(space, segment, max))
            .map_err(store_error)?
        {
            let (k, v) = item.map_err(store_error)?;
            let entry = decode(space, segment, k.value().2, v.value())?;
            if within(entry.timestamp, range.min_timestamp, range.max_timestamp) {
                out.push(entry);
                if range.limit != 0 && out.len() == range.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Entries of every segment of `space` after `range.offset`, in write
    /// order (each carries its offset to resume after).
    ///
    /// # Errors
    /// The store.
    pub fn consume_space(&self, space: &str, range: SpaceRange) -> Result<Vec<Entry>, LogError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let (offsets, entries) = match (txn.open_table(OFFSETS), txn.open_table(ENTRIES)) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, Err(redb::TableError::TableDoesNotExist(_))) => {
                return Ok(Vec::new());
            }
            (Err(e), _) | (_, Err(e)) => return Err(store_error(e)),
        };
        let mut out = Vec::new();
        for item in offsets
            .range((space, range.offset.saturating_add(1))..=(space, u64::MAX))
            .map_err(store_error)?
        {
            let (_, v) = item.map_err(store_error)?;
            let (segment, sequence) = v.value();
            let Some(bytes) = entries
                .get((space, segment, sequence))
                .map_err(store_error)?
            else {
                continue;
            };
            let entry = decode(space, segment, sequence, bytes.value())?;
            if within(entry.timestamp, range.min_timestamp, range.max_timestamp) {
                out.push(entry);
                if range.limit != 0 && out.len() == range.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Entries of several spaces, each after its offset, `limit` in all
    /// (0: all), space by space in the order given.
    ///
    /// # Errors
    /// The store.
    pub fn consume(&self, offsets: &[(&str, u64)], limit: usize) -> Result<Vec<Entry>, LogError> {
        let mut out = Vec::new();
        for (space, offset) in offsets {
            let left = if limit == 0 { 0 } else { limit - out.len() };
            if limit != 0 && left == 0 {
                break;
            }
            out.extend(self.consume_space(
                space,
                SpaceRange {
                    offset: *offset,
                    limit: left,
                    ..SpaceRange::default()
                },
            )?);
        }
        Ok(out)
    }

    /// Where `segment` stands; an absent one has sequence 0.
    ///
    /// # Errors
    /// The store.
    pub fn peek(&self, space: &str, segment: &str) -> Result<SegmentStatus, LogError> {
        let absent = SegmentStatus {
            space: space.to_string(),
            segment: segment.to_string(),
            ..SegmentStatus::default()
        };
        let txn = self.db.begin_read().map_err(store_error)?;
        let segments = match txn.open_table(SEGMENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(absent),
            Err(e) => return Err(store_error(e)),
        };
        match segments.get((space, segment)).map_err(store_error)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(store_error),
            None => Ok(absent),
        }
    }

    /// The spaces, by name.
    ///
    /// # Errors
    /// The store.
    pub fn spaces(&self) -> Result<Vec<String>, LogError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let spaces = match txn.open_table(SPACES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(store_error(e)),
        };
        let mut out = Vec::new();
        for item in spaces.iter().map_err(store_error)? {
            out.push(item.map_err(store_error)?.0.value().to_string());
        }
        Ok(out)
    }

    /// The segments of `space`, by name.
    ///
    /// # Errors
    /// The store.
    pub fn segments(&self, space: &str) -> Result<Vec<String>, LogError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let segments = match txn.open_table(SEGMENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(store_error(e)),
        };
        let mut out = Vec::new();
        for item in segments.range((space, "")..).map_err(store_error)? {
            let (k, _) = item.map_err(store_error)?;
            let (s, segment) = k.value();
            if s != space {
                break;
            }
            out.push(segment.to_string());
        }
        Ok(out)
    }
}

impl Log {
    /// Takes (or renews) lease `key` for `holder` until `ttl` from now:
    /// granted when the key is free, expired, or already `holder`'s.
    ///
    /// # Errors
    /// [`LogError::LeaseHeld`], or the store.
    pub fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<(), LogError> {
        let now = now_ms();
        let mut txn = self.db.begin_write().map_err(store_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(store_error)?;
        {
            let mut leases = txn.open_table(LEASES).map_err(store_error)?;
            if let Some(v) = leases.get(key).map_err(store_error)? {
                let (current, expires) = v.value();
                if current != holder && expires > now {
                    return Err(LogError::LeaseHeld {
                        key: key.to_string(),
                        holder: current.to_string(),
                        remaining_ms: expires - now,
                    });
                }
            }
            let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
            leases.insert(key, (holder, expires)).map_err(store_error)?;
        }
        txn.commit().map_err(store_error)
    }

    /// Gives lease `key` up, when `holder` holds it.
    ///
    /// # Errors
    /// The store.
    pub fn release_lease(&self, key: &str, holder: &str) -> Result<(), LogError> {
        let txn = self.db.begin_write().map_err(store_error)?;
        {
            let mut leases = txn.open_table(LEASES).map_err(store_error)?;
            let mine = leases
                .get(key)
                .map_err(store_error)?
                .is_some_and(|v| v.value().0 == holder);
            if mine {
                leases.remove(key).map_err(store_error)?;
            }
        }
        txn.commit().map_err(store_error)
    }
}

/// `t` within `[min, max]`, 0 meaning unbounded.
fn within(t: i64, min: i64, max: i64) -> bool {
    (min == 0 || t >= min) && (max == 0 || t <= max)
}
