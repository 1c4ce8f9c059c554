//! The log in an embedded LSM tree (fjall): entries by (space, segment,
//! sequence), segment statuses, and a per-space index of offsets in write
//! order. Every write is one atomic batch across these keyspaces, its
//! journal synced to disk (fsync) before it is acknowledged; writers are
//! serialised by the store, readers read a snapshot and never wait.
//!
//! Keys name spaces and segments with a 2-byte length before each name,
//! so one space's (and one segment's) keys are contiguous; numbers are
//! big-endian so they sort.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

use crate::codec::{decode_value, encode_value, value_timestamp};
use crate::{
    CHUNK, Entry, LogError, MAX_NAME, Record, Retention, SegmentRange, SegmentStatus, SpaceRange,
    Trx, store_error,
};

/// An embedded log, in one directory. Writers are serialised by the store;
/// readers never wait for them.
pub struct Log {
    db: Database,
    /// (space, segment, sequence) → the entry's value (see `codec`).
    entries: Keyspace,
    /// (space, segment) → [`SegmentStatus`] (JSON).
    segments: Keyspace,
    /// Space → its last offset and the bytes of its entries (2 × u64).
    spaces: Keyspace,
    /// (space, offset) → (segment, sequence).
    offsets: Keyspace,
    /// Lease key → expiry (i64, ms since the epoch) and holder.
    leases: Keyspace,
    /// Space → max age in ms and max bytes (2 × u64, 0: no limit).
    retention: Keyspace,
    /// Counters: `trx`, the last write's id.
    meta: Keyspace,
    /// Names this store in the entries it writes.
    node: String,
    /// One writer at a time: a write reads the state it extends.
    writer: Mutex<()>,
    /// Every committed write's new segment status, for subscribers.
    statuses: tokio::sync::broadcast::Sender<SegmentStatus>,
}

/// Statuses kept for subscribers that fall behind (older ones are skipped:
/// a status holds everything before it).
const STATUS_BACKLOG: usize = 1024;

/// Stores open in this process, by directory: a store can be opened once
/// per process, so every user of a directory shares one.
static OPEN: Mutex<Vec<(PathBuf, Weak<Log>)>> = Mutex::new(Vec::new());

fn check_names(space: &str, segment: &str) -> Result<(), LogError> {
    if space.is_empty() || segment.is_empty() {
        return Err(LogError::InvalidArgs(
            "space and segment must be named".into(),
        ));
    }
    if space.len() > MAX_NAME || segment.len() > MAX_NAME {
        return Err(LogError::InvalidArgs(format!(
            "space and segment names are at most {MAX_NAME} bytes"
        )));
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Appends `name` with its length before it.
fn push_name(out: &mut Vec<u8>, name: &str) {
    // Names are at most MAX_NAME bytes (checked when written).
    let len = name.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&name.as_bytes()[..len]);
}

/// Reads a name written by [`push_name`] at the start of `bytes`; the rest.
fn take_name(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?));
    let name = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    Some((name, &bytes[2 + len..]))
}

fn space_key(space: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + space.len() + 8);
    push_name(&mut k, space);
    k
}

fn segment_key(space: &str, segment: &str) -> Vec<u8> {
    let mut k = space_key(space);
    push_name(&mut k, segment);
    k
}

fn entry_key(prefix: &[u8], sequence: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&sequence.to_be_bytes());
    k
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

/// The space offset in stored `value`.
fn offset_of(value: &[u8]) -> Option<u64> {
    value
        .get(0..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// The timestamp of stored `value` within `[min, max]`, 0 meaning unbounded.
fn within(value: &[u8], min: i64, max: i64) -> bool {
    if min == 0 && max == 0 {
        return true;
    }
    value_timestamp(value).is_some_and(|t| (min == 0 || t >= min) && (max == 0 || t <= max))
}

fn damaged(what: &str) -> LogError {
    LogError::Store(format!("damaged data: {what}"))
}

impl Log {
    /// Opens (or creates) the log in directory `dir`, its entries written
    /// as node `node`.
    ///
    /// # Errors
    /// The directory cannot be opened (another process holds it, say).
    pub fn open_as(dir: &Path, node: &str) -> Result<Log, LogError> {
        std::fs::create_dir_all(dir).map_err(store_error)?;
        let db = Database::builder(dir)
            .open()
            .map_err(|e| LogError::Store(format!("opening the log in {}: {e}", dir.display())))?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(store_error)
        };
        let (statuses, _) = tokio::sync::broadcast::channel(STATUS_BACKLOG);
        Ok(Log {
            entries: keyspace("entries")?,
            segments: keyspace("segments")?,
            spaces: keyspace("spaces")?,
            offsets: keyspace("offsets")?,
            leases: keyspace("leases")?,
            retention: keyspace("retention")?,
            meta: keyspace("meta")?,
            db,
            node: node.to_string(),
            writer: Mutex::new(()),
            statuses,
        })
    }

    /// Opens (or creates) the log in directory `dir` as node `local`.
    ///
    /// # Errors
    /// As [`open_as`](Self::open_as).
    pub fn open(dir: &Path) -> Result<Log, LogError> {
        Self::open_as(dir, "local")
    }

    /// The log in `dir`, shared with every other user of it in this
    /// process (opened on first use, closed when the last user drops it).
    ///
    /// # Errors
    /// As [`open_as`](Self::open_as).
    pub fn shared(dir: &Path, node: &str) -> Result<Arc<Log>, LogError> {
        std::fs::create_dir_all(dir).map_err(store_error)?;
        let key = dir.canonicalize().map_err(store_error)?;
        let mut open = OPEN
            .lock()
            .map_err(|_| LogError::Store("open stores: poisoned".into()))?;
        open.retain(|(_, log)| log.strong_count() > 0);
        if let Some(log) = open
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, l)| l.upgrade())
        {
            return Ok(log);
        }
        let log = Arc::new(Self::open_as(&key, node)?);
        open.push((key, Arc::downgrade(&log)));
        Ok(log)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, LogError> {
        self.writer
            .lock()
            .map_err(|_| LogError::Store("the writer lock is poisoned".into()))
    }

    /// A durable batch: synced to disk when committed.
    fn batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(PersistMode::SyncAll))
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
        check_names(space, segment)?;
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
        check_names(space, segment)?;
        let mut record = Record {
            sequence: 0,
            timestamp: now_ms(),
            payload,
            metadata,
        };
        self.write_with(space, segment, |status| {
            record.sequence = status.last_sequence + 1;
            Ok(Cow::Owned(vec![record]))
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
            Ok(Cow::Borrowed(chunk))
        })
    }

    /// The status of a segment as last written.
    fn status(&self, space: &str, segment: &str) -> Result<SegmentStatus, LogError> {
        match self
            .segments
            .get(segment_key(space, segment))
            .map_err(store_error)?
        {
            Some(v) => serde_json::from_slice(&v).map_err(store_error),
            None => Ok(SegmentStatus {
                space: space.to_string(),
                segment: segment.to_string(),
                ..SegmentStatus::default()
            }),
        }
    }

    /// Where a space stands: its last offset and its entries' bytes.
    fn space_state(&self, space: &str) -> Result<(u64, u64), LogError> {
        Ok(
            match self.spaces.get(space.as_bytes()).map_err(store_error)? {
                Some(v) => (
                    u64_at(&v, 0).ok_or_else(|| damaged(space))?,
                    u64_at(&v, 8).ok_or_else(|| damaged(space))?,
                ),
                None => (0, 0),
            },
        )
    }

    /// One durable write: `records` (given the segment's status) appended,
    /// statuses and offsets updated.
    fn write_with<'r>(
        &self,
        space: &str,
        segment: &str,
        records: impl FnOnce(&SegmentStatus) -> Result<Cow<'r, [Record]>, LogError>,
    ) -> Result<SegmentStatus, LogError> {
        let _writer = self.lock()?;
        let mut status = self.status(space, segment)?;
        let records = records(&status)?;
        let trx_id = self
            .meta
            .get("trx")
            .map_err(store_error)?
            .and_then(|v| u64_at(&v, 0))
            .unwrap_or(0)
            + 1;
        let (mut offset, mut bytes) = self.space_state(space)?;
        let prefix = segment_key(space, segment);
        let space_prefix = space_key(space);
        let mut batch = self.batch();
        let mut trx = Trx {
            id: trx_id,
            node: self.node.clone(),
            number: 0,
        };
        for (number, r) in records.iter().enumerate() {
            offset += 1;
            trx.number = number as u32;
            let mut value = Vec::with_capacity(40 + self.node.len() + r.payload.len());
            encode_value(&mut value, offset, &trx, r)?;
            bytes += value.len() as u64;
            batch.insert(&self.entries, entry_key(&prefix, r.sequence), value);
            let mut target = Vec::with_capacity(10 + segment.len());
            push_name(&mut target, segment);
            target.extend_from_slice(&r.sequence.to_be_bytes());
            batch.insert(&self.offsets, entry_key(&space_prefix, offset), target);
        }
        if let (Some(first), Some(last)) = (records.first(), records.last()) {
            if status.first_sequence == 0 {
                status.first_sequence = first.sequence;
                status.first_timestamp = first.timestamp;
            }
            status.last_sequence = last.sequence;
            status.last_timestamp = last.timestamp;
        }
        batch.insert(&self.meta, "trx", trx_id.to_be_bytes().to_vec());
        batch.insert(&self.spaces, space.as_bytes(), pair(offset, bytes).to_vec());
        batch.insert(
            &self.segments,
            prefix,
            serde_json::to_vec(&status).map_err(store_error)?,
        );
        batch.commit().map_err(store_error)?;
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
        Ok(crate::Subscription::local(
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
        let mut out = Vec::new();
        self.visit_segment(space, segment, range, |space, segment, sequence, value| {
            out.push(decode_value(space, segment, sequence, value)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with (space, segment, sequence, stored value) of each
    /// entry [`consume_segment`](Self::consume_segment) reads.
    pub(crate) fn visit_segment(
        &self,
        space: &str,
        segment: &str,
        range: SegmentRange,
        mut f: impl FnMut(&str, &str, u64, &[u8]) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let prefix = segment_key(space, segment);
        let max = if range.max_sequence == 0 {
            u64::MAX
        } else {
            range.max_sequence
        };
        if range.min_sequence > max {
            return Ok(());
        }
        let (from, to) = (
            entry_key(&prefix, range.min_sequence),
            entry_key(&prefix, max),
        );
        let snapshot = self.db.snapshot();
        let mut taken = 0;
        for item in snapshot.range(&self.entries, from..=to) {
            let (key, value) = item.into_inner().map_err(store_error)?;
            let sequence = u64_at(&key, prefix.len()).ok_or_else(|| damaged(segment))?;
            if within(&value, range.min_timestamp, range.max_timestamp) {
                f(space, segment, sequence, &value)?;
                taken += 1;
                if range.limit != 0 && taken == range.limit {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Entries of every segment of `space` after `range.offset`, in write
    /// order (each carries its offset to resume after).
    ///
    /// # Errors
    /// The store.
    pub fn consume_space(&self, space: &str, range: SpaceRange) -> Result<Vec<Entry>, LogError> {
        let mut out = Vec::new();
        self.visit_space(space, range, |space, segment, sequence, value| {
            out.push(decode_value(space, segment, sequence, value)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with (space, segment, sequence, stored value) of each
    /// entry [`consume_space`](Self::consume_space) reads; returns how many.
    pub(crate) fn visit_space(
        &self,
        space: &str,
        range: SpaceRange,
        mut f: impl FnMut(&str, &str, u64, &[u8]) -> Result<(), LogError>,
    ) -> Result<usize, LogError> {
        let prefix = space_key(space);
        let from = entry_key(&prefix, range.offset.saturating_add(1));
        let to = entry_key(&prefix, u64::MAX);
        let snapshot = self.db.snapshot();
        let mut taken = 0;
        for item in snapshot.range(&self.offsets, from..=to) {
            let (_, target) = item.into_inner().map_err(store_error)?;
            let (segment, rest) = take_name(&target).ok_or_else(|| damaged(space))?;
            let sequence = u64_at(rest, 0).ok_or_else(|| damaged(space))?;
            let key = entry_key(&segment_key(space, segment), sequence);
            let Some(value) = snapshot.get(&self.entries, key).map_err(store_error)? else {
                continue;
            };
            if within(&value, range.min_timestamp, range.max_timestamp) {
                f(space, segment, sequence, &value)?;
                taken += 1;
                if range.limit != 0 && taken == range.limit {
                    break;
                }
            }
        }
        Ok(taken)
    }

    /// Entries of several spaces, each after its offset, `limit` in all
    /// (0: all), space by space in the order given.
    ///
    /// # Errors
    /// The store.
    pub fn consume(&self, offsets: &[(&str, u64)], limit: usize) -> Result<Vec<Entry>, LogError> {
        let mut out = Vec::new();
        self.visit(offsets, limit, |space, segment, sequence, value| {
            out.push(decode_value(space, segment, sequence, value)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` for each entry [`consume`](Self::consume) reads.
    pub(crate) fn visit(
        &self,
        offsets: &[(&str, u64)],
        limit: usize,
        mut f: impl FnMut(&str, &str, u64, &[u8]) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let mut taken = 0;
        for (space, offset) in offsets {
            if limit != 0 && taken >= limit {
                break;
            }
            let range = SpaceRange {
                offset: *offset,
                limit: if limit == 0 { 0 } else { limit - taken },
                ..SpaceRange::default()
            };
            taken += self.visit_space(space, range, &mut f)?;
        }
        Ok(())
    }

    /// Where `segment` stands; an absent one has sequence 0.
    ///
    /// # Errors
    /// The store.
    pub fn peek(&self, space: &str, segment: &str) -> Result<SegmentStatus, LogError> {
        self.status(space, segment)
    }

    /// The offset of the last entry written to `space` (0: none).
    ///
    /// # Errors
    /// The store.
    pub fn last_offset(&self, space: &str) -> Result<u64, LogError> {
        Ok(self.space_state(space)?.0)
    }

    /// The spaces, by name.
    ///
    /// # Errors
    /// The store.
    pub fn spaces(&self) -> Result<Vec<String>, LogError> {
        let mut out = Vec::new();
        for item in self.db.snapshot().iter(&self.spaces) {
            let key = item.key().map_err(store_error)?;
            out.push(String::from_utf8_lossy(&key).into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// The segments of `space`, by name.
    ///
    /// # Errors
    /// The store.
    pub fn segments(&self, space: &str) -> Result<Vec<String>, LogError> {
        let prefix = space_key(space);
        let mut out = Vec::new();
        for item in self.db.snapshot().prefix(&self.segments, &prefix) {
            let key = item.key().map_err(store_error)?;
            let (segment, _) = take_name(&key[prefix.len()..]).ok_or_else(|| damaged(space))?;
            out.push(segment.to_string());
        }
        out.sort();
        Ok(out)
    }

    /// Removes `segment` of `space` and its entries; the space's offsets
    /// go on from where they were.
    ///
    /// # Errors
    /// The store.
    pub fn delete_segment(&self, space: &str, segment: &str) -> Result<(), LogError> {
        let _writer = self.lock()?;
        let prefix = segment_key(space, segment);
        let space_prefix = space_key(space);
        let mut batch = self.batch();
        let mut freed = 0u64;
        for item in self.db.snapshot().prefix(&self.entries, &prefix) {
            let (key, value) = item.into_inner().map_err(store_error)?;
            freed += value.len() as u64;
            if let Some(offset) = offset_of(&value) {
                batch.remove(&self.offsets, entry_key(&space_prefix, offset));
            }
            batch.remove(&self.entries, key);
        }
        let (last, bytes) = self.space_state(space)?;
        if last > 0 {
            batch.insert(
                &self.spaces,
                space.as_bytes(),
                pair(last, bytes.saturating_sub(freed)).to_vec(),
            );
        }
        batch.remove(&self.segments, prefix);
        batch.commit().map_err(store_error)
    }

    /// Keeps at most `retention` of `space` from now on: [`enforce_retention`](Self::enforce_retention)
    /// removes what is older or over the size, oldest first.
    ///
    /// # Errors
    /// The store.
    pub fn set_retention(&self, space: &str, retention: Retention) -> Result<(), LogError> {
        let _writer = self.lock()?;
        let age = retention.max_age.map_or(0, |a| a.as_millis() as u64);
        let mut batch = self.batch();
        batch.insert(
            &self.retention,
            space.as_bytes(),
            pair(age, retention.max_bytes.unwrap_or(0)).to_vec(),
        );
        batch.commit().map_err(store_error)
    }

    /// Applies every space's retention: removes its oldest entries (in
    /// write order) while they are older than its age limit or the space
    /// is over its size; returns how many entries went.
    ///
    /// # Errors
    /// The store.
    pub fn enforce_retention(&self) -> Result<u64, LogError> {
        let mut rules = Vec::new();
        for item in self.db.snapshot().iter(&self.retention) {
            let (k, v) = item.into_inner().map_err(store_error)?;
            let space = String::from_utf8_lossy(&k).into_owned();
            let age = u64_at(&v, 0).ok_or_else(|| damaged(&space))?;
            let bytes = u64_at(&v, 8).ok_or_else(|| damaged(&space))?;
            rules.push((space, age, bytes));
        }
        let mut removed = 0;
        for (space, max_age, max_bytes) in rules {
            removed += self.trim_space(&space, max_age, max_bytes)?;
        }
        Ok(removed)
    }

    fn trim_space(&self, space: &str, max_age_ms: u64, max_bytes: u64) -> Result<u64, LogError> {
        let oldest_kept = if max_age_ms == 0 {
            i64::MIN
        } else {
            now_ms().saturating_sub(i64::try_from(max_age_ms).unwrap_or(i64::MAX))
        };
        let _writer = self.lock()?;
        let (last, mut bytes) = self.space_state(space)?;
        if last == 0 {
            return Ok(0);
        }
        let space_prefix = space_key(space);
        let snapshot = self.db.snapshot();
        let mut batch = self.batch();
        let mut removed = 0u64;
        // Per segment trimmed, the first sequence kept.
        let mut firsts: std::collections::BTreeMap<String, u64> = Default::default();
        for item in snapshot.prefix(&self.offsets, &space_prefix) {
            let (offset_key, target) = item.into_inner().map_err(store_error)?;
            let (segment, rest) = take_name(&target).ok_or_else(|| damaged(space))?;
            let sequence = u64_at(rest, 0).ok_or_else(|| damaged(space))?;
            let key = entry_key(&segment_key(space, segment), sequence);
            let Some(value) = snapshot.get(&self.entries, &key).map_err(store_error)? else {
                batch.remove(&self.offsets, offset_key);
                continue;
            };
            let old = value_timestamp(&value).is_some_and(|t| t < oldest_kept);
            let over = max_bytes != 0 && bytes > max_bytes;
            if !old && !over {
                break;
            }
            bytes = bytes.saturating_sub(value.len() as u64);
            batch.remove(&self.offsets, offset_key);
            batch.remove(&self.entries, key);
            firsts.insert(segment.to_string(), sequence + 1);
            removed += 1;
        }
        for (segment, first) in firsts {
            let mut status = self.status(space, &segment)?;
            let next = snapshot
                .get(
                    &self.entries,
                    entry_key(&segment_key(space, &segment), first),
                )
                .map_err(store_error)?
                .and_then(|v| value_timestamp(&v));
            match next {
                Some(t) => {
                    status.first_sequence = first;
                    status.first_timestamp = t;
                }
                None => {
                    // Emptied: the segment keeps its last sequence.
                    status.first_sequence = status.last_sequence + 1;
                    status.first_timestamp = status.last_timestamp;
                }
            }
            batch.insert(
                &self.segments,
                segment_key(space, &segment),
                serde_json::to_vec(&status).map_err(store_error)?,
            );
        }
        batch.insert(&self.spaces, space.as_bytes(), pair(last, bytes).to_vec());
        batch.commit().map_err(store_error)?;
        Ok(removed)
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
        let _writer = self.lock()?;
        let now = now_ms();
        if let Some((current, expires)) = self.lease(key)?
            && current != holder
            && expires > now
        {
            return Err(LogError::LeaseHeld {
                key: key.to_string(),
                holder: current,
                remaining_ms: expires - now,
            });
        }
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut value = expires.to_be_bytes().to_vec();
        value.extend_from_slice(holder.as_bytes());
        let mut batch = self.batch();
        batch.insert(&self.leases, key.as_bytes(), value);
        batch.commit().map_err(store_error)
    }

    /// The holder of lease `key` and its expiry.
    fn lease(&self, key: &str) -> Result<Option<(String, i64)>, LogError> {
        let Some(v) = self.leases.get(key.as_bytes()).map_err(store_error)? else {
            return Ok(None);
        };
        let expires = v
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
            .ok_or_else(|| damaged(key))?;
        Ok(Some((
            String::from_utf8_lossy(&v[8..]).into_owned(),
            expires,
        )))
    }

    /// Gives lease `key` up, when `holder` holds it.
    ///
    /// # Errors
    /// The store.
    pub fn release_lease(&self, key: &str, holder: &str) -> Result<(), LogError> {
        let _writer = self.lock()?;
        if self.lease(key)?.is_some_and(|(h, _)| h == holder) {
            let mut batch = self.batch();
            batch.remove(&self.leases, key.as_bytes());
            batch.commit().map_err(store_error)?;
        }
        Ok(())
    }
}
