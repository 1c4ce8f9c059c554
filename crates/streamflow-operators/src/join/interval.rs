//! The interval join: rows of both sides are kept, per key, until the
//! watermark rules out any future match; each arriving row is matched
//! against the other side's kept rows at once.
//!
//! A left row at `tl` matches a right row at `tr` when `tl + lower <= tr <=
//! tl + upper`. Rows at or behind the watermark on arrival are late. A
//! kept left row can still meet a future (on-time, so later than the
//! watermark) right row only while `watermark < tl + upper`; a right row
//! only while `watermark < tr - lower`. Past that they are dropped — and,
//! for outer joins, emitted with the other side null if they never matched.
//!
//! A regular join is this join with bounds of ±`state_ttl`; there a row is
//! late only when it arrives already expired, and an outer join emits its
//! unmatched rows at once (`+I`, other side null) and retracts them (`-D`)
//! when their first match arrives, as a changelog.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use streamflow_core::changelog::RowKind;
use streamflow_core::{
    CheckpointBarrier, Error, Operator, OperatorSnapshot, Output, Result, Watermark,
};

use super::{JoinFactory, decode_optional};
use crate::event_time::{millis, null_event_time};
use crate::snapshot;

/// An output row as encoded (left, right) rows; `None` for the null side
/// of an outer row.
type Pair<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// An output row whose encoded rows are owned.
type OwnedPair = (Option<Box<[u8]>>, Option<Box<[u8]>>);

/// Borrows owned pairs.
fn borrow(pairs: &[OwnedPair]) -> Vec<Pair<'_>> {
    pairs
        .iter()
        .map(|(l, r)| (l.as_deref(), r.as_deref()))
        .collect()
}

/// A kept row.
struct Kept {
    time: i64,
    row: Box<[u8]>,
    matched: bool,
}

/// One side's kept rows by key, and when they expire.
#[derive(Default)]
struct Side {
    rows: HashMap<Box<[u8]>, Vec<Kept>>,
    /// Expiry time → keys holding rows that expire then.
    expiry: BTreeMap<i64, Vec<Box<[u8]>>>,
}

pub(super) struct IntervalJoin {
    factory: Arc<JoinFactory>,
    lower: i64,
    upper: i64,
    sides: [Side; 2],
    /// A regular join: late means expired on arrival.
    regular: bool,
    /// Outer rows are emitted on arrival and retracted on a match (`_op`).
    changelog: bool,
    /// Whole-row encoders of the two inputs (empty if they could not be made).
    rows: Vec<RowConverter>,
    watermark: i64,
    failed: Option<Error>,
}

impl IntervalJoin {
    pub(super) fn new(factory: Arc<JoinFactory>, lower: i64, upper: i64, regular: bool) -> Self {
        let rows: std::result::Result<Vec<RowConverter>, _> = (0..2)
            .map(|i| {
                RowConverter::new(
                    factory.inputs[i]
                        .fields()
                        .iter()
                        .map(|f| SortField::new(f.data_type().clone()))
                        .collect(),
                )
            })
            .collect();
        let (rows, failed) = match rows {
            Ok(rows) => (rows, None),
            Err(e) => (Vec::new(), Some(Error::arrow("join rows", e))),
        };
        let changelog = regular && factory.how != super::JoinType::Inner;
        Self {
            factory,
            lower,
            upper,
            sides: [Side::default(), Side::default()],
            regular,
            changelog,
            rows,
            watermark: i64::MIN,
            failed,
        }
    }

    /// The whole-row encoder of `side`.
    fn conv(&self, side: usize) -> Result<&RowConverter> {
        self.rows
            .get(side)
            .ok_or_else(|| Error::Other("join: rows of this input cannot be encoded".into()))
    }

    /// Output rows from `(left row, right row)` pairs of encoded rows, with
    /// their changelog kinds when the output is a changelog.
    fn emit(&self, pairs: &[Pair<'_>], ops: &[RowKind], out: &mut Output) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = Vec::new();
        if self.changelog {
            columns.push(Arc::new(StringArray::from_iter_values(
                ops.iter().map(|k| k.as_str()),
            )));
        }
        for side in 0..2 {
            let rows: Vec<Option<&[u8]>> = pairs
                .iter()
                .map(|p| if side == 0 { p.0 } else { p.1 })
                .collect();
            columns.extend(decode_optional(
                self.conv(side)?,
                self.factory.inputs[side].fields(),
                &rows,
            )?);
        }
        out.emit(
            RecordBatch::try_new(Arc::clone(&self.factory.schema), columns)
                .map_err(|e| Error::arrow("join output", e))?,
        );
        Ok(())
    }

    /// Drops kept rows the watermark has ruled out; outer joins emit the
    /// unmatched ones.
    fn expire(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        let mut pairs: Vec<OwnedPair> = Vec::new();
        for side in 0..2 {
            // A changelog emitted its unmatched rows on arrival.
            let keep_unmatched = !self.changelog && self.keeps(side);
            let (lower, upper) = (self.lower, self.upper);
            let s = &mut self.sides[side];
            while let Some(entry) = s.expiry.first_entry() {
                if *entry.key() > watermark {
                    break;
                }
                for key in entry.remove() {
                    let Some(list) = s.rows.get_mut(&key) else {
                        continue;
                    };
                    let mut i = 0;
                    while i < list.len() {
                        if expiry(side, list[i].time, lower, upper) <= watermark {
                            let k = list.swap_remove(i);
                            if keep_unmatched && !k.matched {
                                pairs.push(if side == 0 {
                                    (Some(k.row), None)
                                } else {
                                    (None, Some(k.row))
                                });
                            }
                        } else {
                            i += 1;
                        }
                    }
                    if list.is_empty() {
                        s.rows.remove(&key);
                    }
                }
            }
        }
        self.emit(&borrow(&pairs), &[], out)
    }

    /// Whether unmatched rows of `side` are emitted.
    fn keeps(&self, side: usize) -> bool {
        if side == 0 {
            self.factory.how.keeps_left()
        } else {
            self.factory.how.keeps_right()
        }
    }

    fn keep(&mut self, side: usize, key: &[u8], kept: Kept) {
        let at = expiry(side, kept.time, self.lower, self.upper);
        let s = &mut self.sides[side];
        s.rows.entry(key.into()).or_default().push(kept);
        s.expiry.entry(at).or_default().push(key.into());
    }
}

/// An output row with `row` on `side` and `with` (or nulls) on the other.
fn placed(side: usize, row: &[u8], with: Option<&[u8]>) -> OwnedPair {
    let (row, with) = (Some(row.into()), with.map(Into::into));
    if side == 0 { (row, with) } else { (with, row) }
}

/// When a kept row of `side` at `time` can no longer meet an on-time row
/// of the other side.
fn expiry(side: usize, time: i64, lower: i64, upper: i64) -> i64 {
    if side == 0 {
        time.saturating_add(upper)
    } else {
        time.saturating_sub(lower)
    }
}

#[async_trait]
impl Operator for IntervalJoin {
    async fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let side = input.min(1);
        let other = 1 - side;
        let f = Arc::clone(&self.factory);
        let times = millis(batch.column(f.time_column(side)?))?;
        let (keys, valid) = f.keys(side, &batch)?;
        let whole = self
            .conv(side)?
            .convert_columns(batch.columns())
            .map_err(|e| Error::arrow("join rows", e))?;
        let keeps_own = self.keeps(side);
        let retracts_other = self.changelog && self.keeps(other);
        let mut late = Vec::new();
        let mut pairs: Vec<OwnedPair> = Vec::new();
        let mut ops: Vec<RowKind> = Vec::new();
        let pair = |own: &[u8], with: Option<&[u8]>| placed(side, own, with);
        for (row, key_valid) in valid.iter().copied().enumerate() {
            if times.is_null(row) {
                null_event_time(&batch, row, out);
                continue;
            }
            let t = times.value(row);
            let expired = if self.regular {
                expiry(side, t, self.lower, self.upper) <= self.watermark
            } else {
                t <= self.watermark
            };
            if expired {
                late.push(row as u32);
                continue;
            }
            let own = whole.row(row).data();
            let mut matched = false;
            if key_valid {
                let key = keys.row(row).data();
                if let Some(list) = self.sides[other].rows.get_mut(key) {
                    for k in list.iter_mut() {
                        let (l, r) = if side == 0 { (t, k.time) } else { (k.time, t) };
                        if l.saturating_add(self.lower) <= r && r <= l.saturating_add(self.upper) {
                            if retracts_other && !k.matched {
                                // Its row with a null side was emitted on arrival.
                                pairs.push(placed(other, &k.row, None));
                                ops.push(RowKind::Delete);
                            }
                            k.matched = true;
                            matched = true;
                            pairs.push(pair(own, Some(&k.row)));
                            ops.push(RowKind::Insert);
                        }
                    }
                }
                if self.changelog && keeps_own && !matched {
                    pairs.push(pair(own, None));
                    ops.push(RowKind::Insert);
                }
                let kept = Kept {
                    time: t,
                    row: own.into(),
                    matched,
                };
                self.keep(side, key, kept);
            } else if keeps_own {
                // A null key never matches: an outer join emits it at once.
                pairs.push(pair(own, None));
                ops.push(RowKind::Insert);
            }
        }
        self.emit(&borrow(&pairs), &ops, out)?;
        f.emit_late(side, &batch, late, out)?;
        Ok(())
    }

    async fn process_watermark(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        self.watermark = self.watermark.max(watermark.0);
        self.expire(self.watermark, out)
    }

    async fn finish(&mut self, out: &mut Output) -> Result<()> {
        self.watermark = i64::MAX;
        self.expire(i64::MAX, out)
    }

    async fn open(&mut self, restored: Option<OperatorSnapshot>) -> Result<()> {
        let Some(snap) = restored else {
            return Ok(());
        };
        self.watermark = snapshot::watermark(&snap)?;
        for side in 0..2 {
            let Some(b) = snapshot::entries(&snap, &format!("side{side}"))? else {
                continue;
            };
            let keys = snapshot::bytes(&b, "key")?;
            let rows = snapshot::bytes(&b, "row")?;
            let times = snapshot::int64(&b, "time")?;
            let matched = snapshot::int64(&b, "matched")?;
            for r in 0..b.num_rows() {
                let kept = Kept {
                    time: times.value(r),
                    row: rows.value(r).into(),
                    matched: matched.value(r) != 0,
                };
                self.keep(side, keys.value(r), kept);
            }
        }
        Ok(())
    }

    /// Per side, one row per kept row: `key, time, row, matched`, tagged
    /// with the key group of its join key.
    async fn snapshot(&mut self, _barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        let mut snap = OperatorSnapshot::default();
        snapshot::put_watermark(&mut snap, self.watermark)?;
        for side in 0..2 {
            let s = &self.sides[side];
            let (mut keys, mut times, mut rows, mut matched) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (key, list) in &s.rows {
                for k in list {
                    keys.push(key.as_ref());
                    times.push(k.time);
                    rows.push(k.row.as_ref());
                    matched.push(i64::from(k.matched));
                }
            }
            if keys.is_empty() {
                continue;
            }
            // Key groups from the decoded whole rows' join keys.
            let conv = self.conv(side)?;
            let parser = conv.parser();
            let columns = conv
                .convert_rows(rows.iter().map(|r| parser.parse(r)))
                .map_err(|e| Error::arrow("join state", e))?;
            let batch = RecordBatch::try_new(Arc::clone(&self.factory.inputs[side]), columns)
                .map_err(|e| Error::arrow("join state", e))?;
            let groups = self.factory.key_groups(side, &batch)?;
            let cols: Vec<(String, ArrayRef)> = vec![
                ("key".into(), snapshot::binary(keys)),
                ("time".into(), Arc::new(Int64Array::from(times))),
                ("row".into(), snapshot::binary(rows)),
                ("matched".into(), Arc::new(Int64Array::from(matched))),
            ];
            streamflow_state::put_keyed(
                &mut snap,
                &format!("side{side}"),
                snapshot::batch(cols)?,
                Some(&groups),
            )?;
        }
        Ok(snap)
    }
}
