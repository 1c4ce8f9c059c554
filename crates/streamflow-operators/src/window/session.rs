//! Session windows: per key, records whose event times are at most `gap`
//! apart belong to one session `[first, last + gap)`, which fires when the
//! watermark reaches its end − 1. Sessions merge as records bridge them, and
//! their aggregate states merge with them.
//!
//! A record is late when its own session would already have fired, or when
//! it would extend a session of its key that has already fired (that
//! session's result is out, so merging is no longer possible).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use streamflow_core::{
    CheckpointBarrier, Error, Operator, OperatorSnapshot, Output, Result, Watermark,
};
use streamflow_expr::GroupedAggregate;
use streamflow_expr::hash_utils::RandomState;
use streamflow_state::put_keyed;

use super::{WindowFactory, err};
use crate::event_time::null_event_time;
use crate::grouping::{KeyRows, concat_columns, key_bytes, take_rows};
use crate::snapshot;

/// One open session.
struct Session {
    id: u64,
    start: i64,
    /// Exclusive: last event time + gap.
    end: i64,
    states: Vec<GroupedAggregate>,
}

/// The sessions of one key.
#[derive(Default)]
struct KeySessions {
    /// Open sessions, disjoint, in no particular order.
    open: Vec<Session>,
    /// End of the latest fired session of this key.
    fired_until: Option<i64>,
}

pub(super) struct SessionOperator {
    factory: Arc<WindowFactory>,
    gap: i64,
    keys: KeyRows,
    sessions: HashMap<Box<[u8]>, KeySessions, RandomState>,
    next_id: u64,
    watermark: i64,
    late: u64,
}

impl SessionOperator {
    pub(super) fn new(factory: Arc<WindowFactory>, gap: i64) -> Self {
        Self {
            factory,
            gap,
            keys: KeyRows::default(),
            sessions: HashMap::with_hasher(RandomState::default()),
            next_id: 0,
            watermark: i64::MIN,
            late: 0,
        }
    }

    /// Places a record at `ts` for `key`: returns its session id, or `None` if late.
    /// Sessions it bridges are merged (ids of merged sessions go to `merged`).
    fn place(
        &mut self,
        key: &[u8],
        ts: i64,
        merged: &mut HashMap<u64, u64>,
    ) -> Result<Option<u64>> {
        let gap = self.gap;
        if ts.saturating_add(gap) - 1 <= self.watermark {
            return Ok(None);
        }
        let entry = match self.sessions.get_mut(key) {
            Some(e) => e,
            None => self.sessions.entry(key.into()).or_default(),
        };
        if entry.fired_until.is_some_and(|f| ts <= f) {
            return Ok(None);
        }
        let (mut start, mut end) = (ts, ts + gap);
        let mut hits: Vec<usize> = (0..entry.open.len())
            .filter(|&i| entry.open[i].start <= end && entry.open[i].end >= start)
            .collect();
        if hits.is_empty() {
            let id = self.next_id;
            self.next_id += 1;
            entry.open.push(Session {
                id,
                start,
                end,
                states: self.factory.new_states()?,
            });
            return Ok(Some(id));
        }
        // Merge every intersecting session into the first.
        hits.sort_unstable();
        let keep = hits[0];
        for &i in hits[1..].iter().rev() {
            let other = entry.open.swap_remove(i);
            start = start.min(other.start);
            end = end.max(other.end);
            merged.insert(other.id, entry.open[keep].id);
            for (into, from) in entry.open[keep].states.iter_mut().zip(other.states) {
                into.absorb(from, 0)
                    .map_err(|e| err("merging sessions", e))?;
            }
        }
        let target = &mut entry.open[keep];
        target.start = target.start.min(start);
        target.end = target.end.max(end);
        Ok(Some(target.id))
    }

    /// Emits every session the watermark completes and frees its state.
    fn fire(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        let mut keys: Vec<&[u8]> = Vec::new();
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut values: Vec<Vec<ArrayRef>> = vec![Vec::new(); self.factory.aggregates.len()];
        for (key, entry) in self.sessions.iter_mut() {
            let mut i = 0;
            while i < entry.open.len() {
                if entry.open[i].end - 1 > watermark {
                    i += 1;
                    continue;
                }
                let session = entry.open.swap_remove(i);
                entry.fired_until = Some(
                    entry
                        .fired_until
                        .map_or(session.end, |f| f.max(session.end)),
                );
                keys.push(key);
                starts.push(session.start);
                ends.push(session.end);
                for (slot, state) in values.iter_mut().zip(session.states) {
                    slot.push(state.finish().map_err(|e| err("window aggregate", e))?);
                }
            }
        }
        if !starts.is_empty() {
            let mut columns: Vec<ArrayRef> = super::bound_columns(starts, ends).to_vec();
            columns.extend(self.keys.decode(keys.iter().copied())?);
            columns.extend(concat_columns(values)?);
            let batch = RecordBatch::try_new(Arc::clone(&self.factory.schema), columns)
                .map_err(|e| Error::arrow("window output", e))?;
            out.emit(batch);
        }
        // A key with nothing open whose last session is far behind the
        // watermark can never receive an on-time record again: free it.
        let gap = self.gap;
        self.sessions.retain(|_, e| {
            !e.open.is_empty()
                || e.fired_until
                    .is_some_and(|f| f.saturating_add(gap) - 1 > watermark)
        });
        Ok(())
    }
}

#[async_trait]
impl Operator for SessionOperator {
    async fn open(&mut self, restored: Option<OperatorSnapshot>) -> Result<()> {
        self.keys.prepare(&self.factory.keys)?;
        let Some(snap) = restored else {
            return Ok(());
        };
        self.watermark = snapshot::watermark(&snap)?;
        let f = Arc::clone(&self.factory);
        if let Some(b) = snapshot::entries(&snap, "sessions")? {
            let keys = snapshot::bytes(&b, "key")?;
            let (starts, ends) = (snapshot::int64(&b, "start")?, snapshot::int64(&b, "end")?);
            let states = snapshot::state_columns(&f.aggregates, &b)?;
            for r in 0..b.num_rows() {
                let restored = snapshot::restore_states(&f.aggregates, &states, r, 1)?;
                let id = self.next_id;
                self.next_id += 1;
                self.sessions
                    .entry(keys.value(r).into())
                    .or_default()
                    .open
                    .push(Session {
                        id,
                        start: starts.value(r),
                        end: ends.value(r),
                        states: restored,
                    });
            }
        }
        if let Some(b) = snapshot::entries(&snap, "fired")? {
            let keys = snapshot::bytes(&b, "key")?;
            let until = snapshot::int64(&b, "fired_until")?;
            for r in 0..b.num_rows() {
                self.sessions
                    .entry(keys.value(r).into())
                    .or_default()
                    .fired_until = Some(until.value(r));
            }
        }
        Ok(())
    }

    async fn snapshot(&mut self, _barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        let mut snap = OperatorSnapshot::default();
        snapshot::put_watermark(&mut snap, self.watermark)?;
        let mut keys: Vec<&[u8]> = Vec::new();
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut states: Vec<Vec<Vec<ArrayRef>>> = vec![Vec::new(); self.factory.aggregates.len()];
        let mut fired_keys: Vec<&[u8]> = Vec::new();
        let mut fired_until = Vec::new();
        for (key, entry) in self.sessions.iter_mut() {
            if let Some(f) = entry.fired_until {
                fired_keys.push(key);
                fired_until.push(f);
            }
            for session in &mut entry.open {
                keys.push(key);
                starts.push(session.start);
                ends.push(session.end);
                for (slot, state) in states.iter_mut().zip(&mut session.states) {
                    slot.push(state.export().map_err(|e| err("session state", e))?);
                }
            }
        }
        if !keys.is_empty() {
            let groups = self.keys.key_groups(keys.iter().copied())?;
            let mut cols: Vec<(String, ArrayRef)> = vec![
                ("key".into(), snapshot::binary(keys)),
                ("start".into(), Arc::new(Int64Array::from(starts))),
                ("end".into(), Arc::new(Int64Array::from(ends))),
            ];
            snapshot::push_states(&mut cols, states)?;
            put_keyed(
                &mut snap,
                "sessions",
                snapshot::batch(cols)?,
                groups.as_deref(),
            )?;
        }
        if !fired_keys.is_empty() {
            let groups = self.keys.key_groups(fired_keys.iter().copied())?;
            let cols: Vec<(String, ArrayRef)> = vec![
                ("key".into(), snapshot::binary(fired_keys)),
                (
                    "fired_until".into(),
                    Arc::new(Int64Array::from(fired_until)),
                ),
            ];
            put_keyed(
                &mut snap,
                "fired",
                snapshot::batch(cols)?,
                groups.as_deref(),
            )?;
        }
        Ok(snap)
    }

    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        let f = Arc::clone(&self.factory);
        let n = batch.num_rows();
        let times = f.event_times(&batch)?;
        let key_rows = self.keys.rows(&f.keys, &batch)?;
        let args = f.arguments(&batch)?;
        let mut merged: HashMap<u64, u64> = HashMap::new();
        let mut placed: Vec<(u32, u64)> = Vec::with_capacity(n);
        let mut late_rows: Vec<u32> = Vec::new();
        for row in 0..n {
            if times.is_null(row) {
                null_event_time(&batch, row, out);
                continue;
            }
            let key = key_bytes(&key_rows, row);
            match self.place(key, times.value(row), &mut merged)? {
                Some(id) => placed.push((row as u32, id)),
                None => late_rows.push(row as u32),
            }
        }
        // Rows per final session (following merges), then one update each.
        let resolve = |mut id: u64| {
            while let Some(&next) = merged.get(&id) {
                id = next;
            }
            id
        };
        let mut rows_of: HashMap<u64, Vec<u32>> = HashMap::new();
        for (row, id) in placed {
            rows_of.entry(resolve(id)).or_default().push(row);
        }
        for entry in self.sessions.values_mut() {
            for session in &mut entry.open {
                if let Some(rows) = rows_of.remove(&session.id) {
                    let groups = vec![0usize; rows.len()];
                    let taken = take_rows(&args, rows, n)?;
                    for (state, values) in session.states.iter_mut().zip(&taken) {
                        state
                            .update(values, &groups, 1)
                            .map_err(|e| err("window aggregate", e))?;
                    }
                }
            }
        }
        if !late_rows.is_empty() {
            self.late += late_rows.len() as u64;
            let late = take_record_batch(&batch, &UInt32Array::from(late_rows))
                .map_err(|e| Error::arrow("late rows", e))?;
            out.emit_late(late);
        }
        Ok(())
    }

    async fn process_watermark(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        self.watermark = self.watermark.max(watermark.0);
        self.fire(self.watermark, out)
    }

    async fn finish(&mut self, out: &mut Output) -> Result<()> {
        self.fire(i64::MAX, out)
    }
}
