//! Key groups: `hash(key) mod MAX_KEY_GROUPS`, with a fixed hash seed so
//! that groups are stable across runs and processes.

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use datafusion_common::hash_utils::{RandomState, create_hashes};
use streamflow_core::{Error, OperatorSnapshot, Result};

/// Number of key groups keyed state is divided into; the upper bound on a
/// keyed stage's parallelism.
pub const MAX_KEY_GROUPS: u32 = 128;

/// Seed of the key hash: fixed, so key groups are stable across runs and processes.
const KEY_HASH_SEED: u64 = 0x5354_5245_414d;

/// The key group of a key hash.
pub fn key_group(hash: u64) -> u32 {
    (hash % MAX_KEY_GROUPS as u64) as u32
}

/// The instance (of `parallelism`) that owns `key_group`: contiguous ranges
/// of key groups per instance.
pub fn instance_for_key_group(key_group: u32, parallelism: usize) -> usize {
    (key_group as usize * parallelism) / MAX_KEY_GROUPS as usize
}

/// The key groups instance `instance` of `parallelism` owns: the range
/// [`instance_for_key_group`] maps to it (empty when `parallelism` exceeds
/// the key groups).
pub fn key_group_range(instance: usize, parallelism: usize) -> std::ops::Range<u32> {
    let groups = MAX_KEY_GROUPS as usize;
    let first = |i: usize| (i * groups).div_ceil(parallelism.max(1)) as u32;
    first(instance)..first(instance + 1).min(MAX_KEY_GROUPS)
}

/// Hashes of the keys made of `columns` (one per row), into `hashes`.
///
/// # Errors
/// When a column type cannot be hashed.
pub fn key_hashes(columns: &[ArrayRef], hashes: &mut Vec<u64>) -> Result<()> {
    let rows = columns.first().map_or(0, |c| c.len());
    hashes.clear();
    hashes.resize(rows, 0);
    create_hashes(columns, &RandomState::with_seed(KEY_HASH_SEED), hashes)
        .map_err(|e| Error::Other(format!("hashing keys: {e}")))?;
    Ok(())
}

/// The key group of every row of the keys made of `columns`.
///
/// # Errors
/// When a column type cannot be hashed.
pub fn key_groups(columns: &[ArrayRef]) -> Result<Vec<u32>> {
    let mut hashes = Vec::new();
    key_hashes(columns, &mut hashes)?;
    Ok(hashes.into_iter().map(key_group).collect())
}

/// Records `batch` under `name`: split by key group when `groups` gives
/// the key group of each row, else as state that belongs to no key.
///
/// # Errors
/// When the rows cannot be selected.
pub fn put_keyed(
    snapshot: &mut OperatorSnapshot,
    name: &str,
    batch: RecordBatch,
    groups: Option<&[u32]>,
) -> Result<()> {
    let Some(groups) = groups else {
        snapshot.put(name, None, batch);
        return Ok(());
    };
    let mut by_group: Vec<Vec<u32>> = vec![Vec::new(); MAX_KEY_GROUPS as usize];
    for (row, g) in groups.iter().enumerate() {
        by_group[*g as usize].push(row as u32);
    }
    for (g, rows) in by_group.into_iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let part = if rows.len() == batch.num_rows() {
            batch.clone()
        } else {
            take_record_batch(&batch, &UInt32Array::from(rows))
                .map_err(|e| Error::arrow("splitting state by key group", e))?
        };
        snapshot.put(name, Some(g as u32), part);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use proptest::prelude::*;
    use std::sync::Arc;

    proptest! {
        #[test]
        fn groups_cover_every_instance_range(g in 0u32..MAX_KEY_GROUPS, p in 1usize..=128) {
            let i = instance_for_key_group(g, p);
            prop_assert!(i < p);
            prop_assert!(key_group_range(i, p).contains(&g), "the owner's range holds the group");
        }

        #[test]
        fn instance_ranges_partition_the_key_groups(p in 1usize..=128) {
            let mut next = 0;
            for i in 0..p {
                let r = key_group_range(i, p);
                prop_assert_eq!(r.start, next, "contiguous");
                prop_assert!(!r.is_empty(), "every instance owns a group when p <= 128");
                next = r.end;
            }
            prop_assert_eq!(next, MAX_KEY_GROUPS);
        }
    }

    #[test]
    fn keyed_state_splits_by_group_and_loses_no_row() {
        let keys: ArrayRef = Arc::new(Int64Array::from((0..1000).collect::<Vec<i64>>()));
        let groups = key_groups(std::slice::from_ref(&keys)).expect("groups");
        assert_eq!(
            groups,
            key_groups(std::slice::from_ref(&keys)).expect("stable")
        );
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![keys]).expect("batch");
        let mut snapshot = OperatorSnapshot::default();
        put_keyed(&mut snapshot, "s", batch, Some(&groups)).expect("put");
        let entries = &snapshot.entries["s"];
        assert!(entries.len() > 100, "1000 keys spread over many groups");
        let total: usize = entries.iter().map(|(_, b)| b.num_rows()).sum();
        assert_eq!(total, 1000);
        for (g, b) in entries {
            let again = key_groups(&[Arc::clone(b.column(0))]).expect("groups");
            assert!(again.iter().all(|x| Some(*x) == *g));
            assert!(!b.column(0).is_empty());
        }
    }
}
