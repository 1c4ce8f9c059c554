//! The log in a redb file: entries by (space, segment, sequence), segment
//! statuses, and a per-space index of offsets in write order.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::codec::{decode_value, encode_value, value_timestamp};
use crate::{
    CHUNK, Entry, LogError, MAX_NAME, Record, Retention, SegmentRange, SegmentStatus, SpaceRange,
    Trx, store_error,
};

/// (space, segment, sequence) → the entry's value (see `codec`).
const ENTRIES: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("entries");
/// (space, segment) → [`SegmentStatus`] (JSON).
const SEGMENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("segments");
/// Space → (its last offset, bytes of its entries).
const SPACES: TableDefinition<&str, (u64, u64)> = TableDefinition::new("spaces");
/// (space, offset) → (segment, sequence).
const OFFSETS: TableDefinition<(&str, u64), (&str, u64)> = TableDefinition::new("offsets");
/// Lease key → (holder, expiry in ms since the epoch).
const LEASES: TableDefinition<&str, (&str, i64)> = TableDefinition::new("leases");
/// Space → (max age in ms, max bytes), 0 meaning no limit.
const RETENTION: TableDefinition<&str, (u64, u64)> = TableDefinition::new("retention");
/// Counters: `trx`, the last write transaction's id.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// An embedded log, in one file. Writers are serialised by the store;
/// readers never wait for them.
pub struct Log {
    db: Database,
    /// Names this store in the entries it writes.
    node: String,
    /// Every committed write's new segment status, for subscribers.
    statuses: tokio::sync::broadcast::Sender<SegmentStatus>,
}

/// Statuses kept for subscribers that fall behind (older ones are skipped:
/// a status holds everything before it).
const STATUS_BACKLOG: usize = 1024;

/// Stores open in this process, by directory: a store file can be opened
/// once per process, so every user of a directory shares one.
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

impl Log {
    /// Opens (or creates) the log in directory `dir`, its entries written
    /// as node `node`.
    ///
    /// # Errors
    /// The file cannot be opened (another process holds it, say).
    pub fn open_as(dir: &Path, node: &str) -> Result<Log, LogError> {
        std::fs::create_dir_all(dir).map_err(store_error)?;
        let db = Database::create(dir.join("log.redb"))
            .map_err(|e| LogError::Store(format!("opening the log in {}: {e}", dir.display())))?;
        let (statuses, _) = tokio::sync::broadcast::channel(STATUS_BACKLOG);
        Ok(Log {
            db,
            node: node.to_string(),
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

    /// One durable transaction: `records` (given the segment's status)
    /// appended, statuses and offsets updated.
    fn write_with<'r>(
        &self,
        space: &str,
        segment: &str,
        records: impl FnOnce(&SegmentStatus) -> Result<Cow<'r, [Record]>, LogError>,
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
            let mut meta = txn.open_table(META).map_err(store_error)?;
            let trx_id = meta
                .get("trx")
                .map_err(store_error)?
                .map_or(0, |v| v.value())
                + 1;
            meta.insert("trx", trx_id).map_err(store_error)?;
            let mut spaces = txn.open_table(SPACES).map_err(store_error)?;
            let (mut offset, mut bytes) = spaces
                .get(space)
                .map_err(store_error)?
                .map_or((0, 0), |v| v.value());
            let mut entries = txn.open_table(ENTRIES).map_err(store_error)?;
            let mut offsets = txn.open_table(OFFSETS).map_err(store_error)?;
            let mut value = Vec::new();
            let mut trx = Trx {
                id: trx_id,
                node: self.node.clone(),
                number: 0,
            };
            for (number, r) in records.iter().enumerate() {
                offset += 1;
                trx.number = number as u32;
                value.clear();
                encode_value(&mut value, offset, &trx, r)?;
                bytes += value.len() as u64;
                entries
                    .insert((space, segment, r.sequence), value.as_slice())
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
            spaces.insert(space, (offset, bytes)).map_err(store_error)?;
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
        let txn = self.db.begin_read().map_err(store_error)?;
        let entries = match txn.open_table(ENTRIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(store_error(e)),
        };
        let max = if range.max_sequence == 0 {
            u64::MAX
        } else {
            range.max_sequence
        };
        let mut taken = 0;
        for item in entries
            .range((space, segment, range.min_sequence)..=(space, segment, max))
            .map_err(store_error)?
        {
            let (k, v) = item.map_err(store_error)?;
            let value = v.value();
            if within(value, range.min_timestamp, range.max_timestamp) {
                f(space, segment, k.value().2, value)?;
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
        let txn = self.db.begin_read().map_err(store_error)?;
        let (offsets, entries) = match (txn.open_table(OFFSETS), txn.open_table(ENTRIES)) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, Err(redb::TableError::TableDoesNotExist(_))) => {
                return Ok(0);
            }
            (Err(e), _) | (_, Err(e)) => return Err(store_error(e)),
        };
        let mut taken = 0;
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
            let value = bytes.value();
            if within(value, range.min_timestamp, range.max_timestamp) {
                f(space, segment, sequence, value)?;
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

    /// The offset of the last entry written to `space` (0: none).
    ///
    /// # Errors
    /// The store.
    pub fn last_offset(&self, space: &str) -> Result<u64, LogError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        match txn.open_table(SPACES) {
            Ok(t) => Ok(t
                .get(space)
                .map_err(store_error)?
                .map_or(0, |v| v.value().0)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Removes `segment` of `space` and its entries; the space's offsets
    /// go on from where they were.
    ///
    /// # Errors
    /// The store.
    pub fn delete_segment(&self, space: &str, segment: &str) -> Result<(), LogError> {
        let mut txn = self.db.begin_write().map_err(store_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(store_error)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(store_error)?;
            let mut offsets = txn.open_table(OFFSETS).map_err(store_error)?;
            let mut spaces = txn.open_table(SPACES).map_err(store_error)?;
            let mut segments = txn.open_table(SEGMENTS).map_err(store_error)?;
            let mut freed = 0u64;
            let mut gone = Vec::new();
            for item in entries
                .range((space, segment, 0)..=(space, segment, u64::MAX))
                .map_err(store_error)?
            {
                let (k, v) = item.map_err(store_error)?;
                let value = v.value();
                freed += value.len() as u64;
                gone.push((k.value().2, offset_of(value)));
            }
            for (sequence, offset) in gone {
                entries
                    .remove((space, segment, sequence))
                    .map_err(store_error)?;
                if let Some(offset) = offset {
                    offsets.remove((space, offset)).map_err(store_error)?;
                }
            }
            let current = spaces.get(space).map_err(store_error)?.map(|v| v.value());
            if let Some((last, bytes)) = current {
                spaces
                    .insert(space, (last, bytes.saturating_sub(freed)))
                    .map_err(store_error)?;
            }
            segments.remove((space, segment)).map_err(store_error)?;
        }
        txn.commit().map_err(store_error)
    }

    /// Keeps at most `retention` of `space` from now on: [`enforce_retention`](Self::enforce_retention)
    /// removes what is older or over the size, oldest first.
    ///
    /// # Errors
    /// The store.
    pub fn set_retention(&self, space: &str, retention: Retention) -> Result<(), LogError> {
        let mut txn = self.db.begin_write().map_err(store_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(store_error)?;
        {
            let mut table = txn.open_table(RETENTION).map_err(store_error)?;
            let age = retention.max_age.map_or(0, |a| a.as_millis() as u64);
            table
                .insert(space, (age, retention.max_bytes.unwrap_or(0)))
                .map_err(store_error)?;
        }
        txn.commit().map_err(store_error)
    }

    /// Applies every space's retention: removes its oldest entries (in
    /// write order) while they are older than its age limit or the space
    /// is over its size; returns how many entries went.
    ///
    /// # Errors
    /// The store.
    pub fn enforce_retention(&self) -> Result<u64, LogError> {
        let rules: Vec<(String, u64, u64)> = {
            let txn = self.db.begin_read().map_err(store_error)?;
            match txn.open_table(RETENTION) {
                Ok(t) => t
                    .iter()
                    .map_err(store_error)?
                    .map(|item| {
                        let (k, v) = item.map_err(store_error)?;
                        let (age, bytes) = v.value();
                        Ok((k.value().to_string(), age, bytes))
                    })
                    .collect::<Result<_, LogError>>()?,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(store_error(e)),
            }
        };
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
        let mut txn = self.db.begin_write().map_err(store_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(store_error)?;
        let mut removed = 0u64;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(store_error)?;
            let mut offsets = txn.open_table(OFFSETS).map_err(store_error)?;
            let mut spaces = txn.open_table(SPACES).map_err(store_error)?;
            let mut segments = txn.open_table(SEGMENTS).map_err(store_error)?;
            let Some((last, mut bytes)) =
                spaces.get(space).map_err(store_error)?.map(|v| v.value())
            else {
                return Ok(0);
            };
            let mut gone = Vec::new();
            let mut firsts: std::collections::BTreeMap<String, u64> = Default::default();
            for item in offsets
                .range((space, 0)..=(space, u64::MAX))
                .map_err(store_error)?
            {
                let (k, v) = item.map_err(store_error)?;
                let (segment, sequence) = v.value();
                let Some(value) = entries
                    .get((space, segment, sequence))
                    .map_err(store_error)?
                else {
                    gone.push((k.value().1, segment.to_string(), sequence));
                    continue;
                };
                let value = value.value();
                let old = value_timestamp(value).is_some_and(|t| t < oldest_kept);
                let over = max_bytes != 0 && bytes > max_bytes;
                if !old && !over {
                    break;
                }
                bytes = bytes.saturating_sub(value.len() as u64);
                gone.push((k.value().1, segment.to_string(), sequence));
                firsts.insert(segment.to_string(), sequence + 1);
            }
            for (offset, segment, sequence) in &gone {
                offsets.remove((space, *offset)).map_err(store_error)?;
                entries
                    .remove((space, segment.as_str(), *sequence))
                    .map_err(store_error)?;
                removed += 1;
            }
            for (segment, first) in firsts {
                let status: Option<SegmentStatus> = segments
                    .get((space, segment.as_str()))
                    .map_err(store_error)?
                    .map(|v| serde_json::from_slice(v.value()))
                    .transpose()
                    .map_err(store_error)?;
                if let Some(mut status) = status {
                    let next = entries
                        .get((space, segment.as_str(), first))
                        .map_err(store_error)?
                        .and_then(|v| value_timestamp(v.value()));
                    if let Some(t) = next {
                        status.first_sequence = first;
                        status.first_timestamp = t;
                    } else {
                        // Emptied: the segment keeps its last sequence.
                        status.first_sequence = status.last_sequence + 1;
                        status.first_timestamp = status.last_timestamp;
                    }
                    let json = serde_json::to_vec(&status).map_err(store_error)?;
                    segments
                        .insert((space, segment.as_str()), json.as_slice())
                        .map_err(store_error)?;
                }
            }
            spaces.insert(space, (last, bytes)).map_err(store_error)?;
        }
        txn.commit().map_err(store_error)?;
        Ok(removed)
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

/// The timestamp of stored `value` within `[min, max]`, 0 meaning unbounded.
fn within(value: &[u8], min: i64, max: i64) -> bool {
    if min == 0 && max == 0 {
        return true;
    }
    value_timestamp(value).is_some_and(|t| (min == 0 || t >= min) && (max == 0 || t <= max))
}

/// The space offset in stored `value`.
fn offset_of(value: &[u8]) -> Option<u64> {
    value
        .get(0..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}
