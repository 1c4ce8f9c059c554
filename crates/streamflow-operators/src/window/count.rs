//! Count windows: per key and in arrival order, every `slide` records the
//! window of the last `size` records fires (Flink's `countWindow(size,
//! slide)`; tumbling when `slide == size`). The k-th record of a key (from 1)
//! belongs to the windows firing at records `t` with `t % slide == 0` and
//! `k <= t < k + size`. Windows not complete at end of input do not fire.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use streamflow_core::{CheckpointBarrier, Error, Operator, OperatorSnapshot, Output, Result};
use streamflow_expr::GroupedAggregate;
use streamflow_expr::hash_utils::RandomState;
use streamflow_state::put_keyed;

use super::{WindowFactory, err};
use crate::grouping::{KeyRows, concat_columns, key_bytes, take_rows};
use crate::snapshot;

/// The record counts (1-based) at which the k-th record's windows fire.
pub(super) fn triggers(k: u64, size: u64, slide: u64) -> impl Iterator<Item = u64> {
    let first = k.div_ceil(slide) * slide;
    (0..)
        .map(move |i| first + i * slide)
        .take_while(move |t| *t < k + size)
}

#[derive(Default)]
struct KeyCount {
    seen: u64,
    /// Open windows by the count at which they fire → window id.
    open: BTreeMap<u64, u64>,
}

pub(super) struct CountOperator {
    factory: Arc<WindowFactory>,
    size: u64,
    slide: u64,
    keys: KeyRows,
    counts: HashMap<Box<[u8]>, KeyCount, RandomState>,
    windows: HashMap<u64, Vec<GroupedAggregate>>,
    next_id: u64,
}

impl CountOperator {
    pub(super) fn new(factory: Arc<WindowFactory>, size: u64, slide: u64) -> Self {
        Self {
            factory,
            size,
            slide,
            keys: KeyRows::default(),
            counts: HashMap::with_hasher(RandomState::default()),
            windows: HashMap::new(),
            next_id: 0,
        }
    }
}

#[async_trait]
impl Operator for CountOperator {
    async fn open(&mut self, restored: Option<OperatorSnapshot>) -> Result<()> {
        self.keys.prepare(&self.factory.keys)?;
        let Some(snap) = restored else {
            return Ok(());
        };
        let f = Arc::clone(&self.factory);
        if let Some(b) = snapshot::entries(&snap, "counts")? {
            let keys = snapshot::bytes(&b, "key")?;
            let seen = snapshot::int64(&b, "seen")?;
            for r in 0..b.num_rows() {
                self.counts.entry(keys.value(r).into()).or_default().seen = seen.value(r) as u64;
            }
        }
        if let Some(b) = snapshot::entries(&snap, "windows")? {
            let keys = snapshot::bytes(&b, "key")?;
            let fire_at = snapshot::int64(&b, "fire_at")?;
            let states = snapshot::state_columns(&f.aggregates, &b)?;
            for r in 0..b.num_rows() {
                let id = self.next_id;
                self.next_id += 1;
                self.windows
                    .insert(id, snapshot::restore_states(&f.aggregates, &states, r, 1)?);
                self.counts
                    .entry(keys.value(r).into())
                    .or_default()
                    .open
                    .insert(fire_at.value(r) as u64, id);
            }
        }
        Ok(())
    }

    async fn snapshot(&mut self, _barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        let mut snap = OperatorSnapshot::default();
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut seen = Vec::new();
        let mut window_keys: Vec<&[u8]> = Vec::new();
        let mut fire_at = Vec::new();
        let mut states: Vec<Vec<Vec<ArrayRef>>> = vec![Vec::new(); self.factory.aggregates.len()];
        for (key, entry) in &self.counts {
            keys.push(key);
            seen.push(entry.seen as i64);
            for (&t, id) in &entry.open {
                let Some(window) = self.windows.get_mut(id) else {
                    continue;
                };
                window_keys.push(key);
                fire_at.push(t as i64);
                for (slot, state) in states.iter_mut().zip(window.iter_mut()) {
                    slot.push(state.export().map_err(|e| err("count window state", e))?);
                }
            }
        }
        if !keys.is_empty() {
            let groups = self.keys.key_groups(keys.iter().copied())?;
            let cols: Vec<(String, ArrayRef)> = vec![
                ("key".into(), snapshot::binary(keys)),
                ("seen".into(), Arc::new(Int64Array::from(seen))),
            ];
            put_keyed(
                &mut snap,
                "counts",
                snapshot::batch(cols)?,
                groups.as_deref(),
            )?;
        }
        if !window_keys.is_empty() {
            let groups = self.keys.key_groups(window_keys.iter().copied())?;
            let mut cols: Vec<(String, ArrayRef)> = vec![
                ("key".into(), snapshot::binary(window_keys)),
                ("fire_at".into(), Arc::new(Int64Array::from(fire_at))),
            ];
            snapshot::push_states(&mut cols, states)?;
            put_keyed(
                &mut snap,
                "windows",
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
        let key_rows = self.keys.rows(&f.keys, &batch)?;
        let args = f.arguments(&batch)?;
        let mut rows_of: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut touched: HashSet<&[u8]> = HashSet::new();
        for row in 0..n {
            let key = key_bytes(&key_rows, row);
            touched.insert(key);
            let entry = match self.counts.get_mut(key) {
                Some(e) => e,
                None => self.counts.entry(key.into()).or_default(),
            };
            entry.seen += 1;
            for t in triggers(entry.seen, self.size, self.slide) {
                let id = match entry.open.get(&t) {
                    Some(&id) => id,
                    None => {
                        let id = self.next_id;
                        self.next_id += 1;
                        entry.open.insert(t, id);
                        self.windows.insert(id, f.new_states()?);
                        id
                    }
                };
                rows_of.entry(id).or_default().push(row as u32);
            }
        }
        for (id, rows) in rows_of {
            let groups = vec![0usize; rows.len()];
            let taken = take_rows(&args, rows, n)?;
            if let Some(states) = self.windows.get_mut(&id) {
                for (state, values) in states.iter_mut().zip(&taken) {
                    state
                        .update(values, &groups, 1)
                        .map_err(|e| err("window aggregate", e))?;
                }
            }
        }
        // Fire every window whose count has been reached (only keys seen in this batch can have one).
        let mut fired_keys: Vec<&[u8]> = Vec::new();
        let mut values: Vec<Vec<ArrayRef>> = vec![Vec::new(); f.aggregates.len()];
        for key in touched {
            let Some(entry) = self.counts.get_mut(key) else {
                continue;
            };
            while let Some(entry_t) = entry.open.first_entry() {
                if *entry_t.key() > entry.seen {
                    break;
                }
                let id = entry_t.remove();
                let Some(states) = self.windows.remove(&id) else {
                    continue;
                };
                fired_keys.push(key);
                for (slot, state) in values.iter_mut().zip(states) {
                    slot.push(state.finish().map_err(|e| err("window aggregate", e))?);
                }
            }
        }
        if fired_keys.is_empty() {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = Vec::new();
        columns.extend(self.keys.decode(fired_keys.iter().copied())?);
        columns.extend(concat_columns(values)?);
        let batch = RecordBatch::try_new(Arc::clone(&f.schema), columns)
            .map_err(|e| Error::arrow("window output", e))?;
        out.emit(batch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::triggers;

    #[test]
    fn tumbling_count_windows_fire_at_exact_size() {
        assert_eq!(triggers(1, 3, 3).collect::<Vec<_>>(), vec![3]);
        assert_eq!(triggers(3, 3, 3).collect::<Vec<_>>(), vec![3]);
        assert_eq!(triggers(4, 3, 3).collect::<Vec<_>>(), vec![6]);
    }

    #[test]
    fn sliding_count_windows() {
        // size 4, slide 2: record 3 is in the windows firing at 4 and 6.
        assert_eq!(triggers(3, 4, 2).collect::<Vec<_>>(), vec![4, 6]);
        assert_eq!(triggers(1, 4, 2).collect::<Vec<_>>(), vec![2, 4]);
    }

    #[test]
    fn slide_larger_than_size_skips_records() {
        // size 2, slide 5: windows fire at 5, 10, ... with records 4-5, 9-10.
        assert_eq!(triggers(3, 2, 5).count(), 0);
        assert_eq!(triggers(4, 2, 5).collect::<Vec<_>>(), vec![5]);
        assert_eq!(triggers(5, 2, 5).collect::<Vec<_>>(), vec![5]);
        assert_eq!(triggers(6, 2, 5).count(), 0);
    }
}
