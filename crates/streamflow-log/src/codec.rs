//! The binary form of an entry, one for the store and the wire: the server
//! ships the bytes it read without decoding them.
//!
//! An entry's stored value: offset (u64), timestamp (i64), transaction id
//! (u64), number in it (u32), node name (u16 length + bytes), metadata
//! (u32 length + JSON), payload (the rest). All integers little-endian.

use crate::{Entry, LogError, Record, Trx};

/// Appends the stored value of `record` to `out`.
pub(crate) fn encode_value(
    out: &mut Vec<u8>,
    offset: u64,
    trx: &Trx,
    record: &Record,
) -> Result<(), LogError> {
    let node = u16::try_from(trx.node.len())
        .map_err(|_| LogError::InvalidArgs("node name over 64 KiB".into()))?;
    out.reserve(36 + trx.node.len() + record.payload.len());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&record.timestamp.to_le_bytes());
    out.extend_from_slice(&trx.id.to_le_bytes());
    out.extend_from_slice(&trx.number.to_le_bytes());
    out.extend_from_slice(&node.to_le_bytes());
    out.extend_from_slice(trx.node.as_bytes());
    if record.metadata.is_empty() {
        out.extend_from_slice(&0u32.to_le_bytes());
    } else {
        let meta = serde_json::to_vec(&record.metadata).map_err(crate::store_error)?;
        let len = u32::try_from(meta.len())
            .map_err(|_| LogError::InvalidArgs("metadata over 4 GiB".into()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&meta);
    }
    out.extend_from_slice(&record.payload);
    Ok(())
}

/// A reader over bytes that fails with [`LogError::Store`] when they end early.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'a dyn Fn() -> String,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'a dyn Fn() -> String) -> Self {
        Self { bytes, what }
    }

    fn damaged(&self) -> LogError {
        LogError::Store(format!("damaged data: {}", (self.what)()))
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], LogError> {
        if self.bytes.len() < n {
            return Err(self.damaged());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LogError> {
        let head = self.take(N)?;
        head.try_into().map_err(|_| self.damaged())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, LogError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, LogError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, LogError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, LogError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub(crate) fn str(&mut self, len: usize) -> Result<&'a str, LogError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| self.damaged())
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The entry `sequence` of `segment` of `space` from its stored value.
pub(crate) fn decode_value(
    space: &str,
    segment: &str,
    sequence: u64,
    value: &[u8],
) -> Result<Entry, LogError> {
    let what = || format!("entry {space}/{segment}/{sequence}");
    let mut r = Reader::new(value, &what);
    let offset = r.u64()?;
    let timestamp = r.i64()?;
    let id = r.u64()?;
    let number = r.u32()?;
    let node_len = usize::from(r.u16()?);
    let node = r.str(node_len)?.to_string();
    let meta_len = r.u32()? as usize;
    let meta = r.take(meta_len)?;
    let metadata = if meta.is_empty() {
        serde_json::Map::new()
    } else {
        serde_json::from_slice(meta).map_err(crate::store_error)?
    };
    Ok(Entry {
        space: space.to_string(),
        segment: segment.to_string(),
        sequence,
        offset,
        timestamp,
        trx: Trx { id, node, number },
        payload: r.rest().to_vec(),
        metadata,
    })
}

/// The timestamp of a stored value, without decoding the rest.
pub(crate) fn value_timestamp(value: &[u8]) -> Option<i64> {
    value
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_le_bytes)
}

/// Appends `records` as a produce request's body: per record its sequence,
/// then its value (offset and transaction left zero).
pub(crate) fn encode_records(out: &mut Vec<u8>, records: &[Record]) -> Result<(), LogError> {
    let none = Trx::default();
    let mut value = Vec::new();
    for r in records {
        value.clear();
        encode_value(&mut value, 0, &none, r)?;
        out.extend_from_slice(&r.sequence.to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(&value);
    }
    Ok(())
}

/// The records of a produce request's body.
pub(crate) fn decode_records(bytes: &[u8]) -> Result<Vec<Record>, LogError> {
    let what = || "produce request".to_string();
    let mut r = Reader::new(bytes, &what);
    let mut out = Vec::new();
    while !r.is_empty() {
        let sequence = r.u64()?;
        let len = r.u32()? as usize;
        let entry = decode_value("", "", sequence, r.take(len)?)?;
        out.push(Record {
            sequence,
            timestamp: entry.timestamp,
            payload: entry.payload,
            metadata: entry.metadata,
        });
    }
    Ok(out)
}

/// Appends one stored entry as part of a read reply: names, sequence and
/// the stored value as is.
pub(crate) fn encode_entry(
    out: &mut Vec<u8>,
    space: &str,
    segment: &str,
    sequence: u64,
    value: &[u8],
) {
    for name in [space, segment] {
        // Names are at most MAX_NAME bytes (checked when written).
        let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&name.as_bytes()[..usize::from(len)]);
    }
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// The entries of a read reply.
pub(crate) fn decode_entries(bytes: &[u8]) -> Result<Vec<Entry>, LogError> {
    let what = || "a read reply".to_string();
    let mut r = Reader::new(bytes, &what);
    let mut out = Vec::new();
    while !r.is_empty() {
        let len = usize::from(r.u16()?);
        let space = r.str(len)?;
        let len = usize::from(r.u16()?);
        let segment = r.str(len)?;
        let sequence = r.u64()?;
        let value_len = r.u32()? as usize;
        out.push(decode_value(space, segment, sequence, r.take(value_len)?)?);
    }
    Ok(out)
}
