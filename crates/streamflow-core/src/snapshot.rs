//! Operator state as it is handed to a checkpoint.

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;

/// The state of one operator instance at a checkpoint barrier: named Arrow
/// batches, each tagged with the key group it belongs to (`None` for state
/// that is not keyed), so that state taken at one parallelism can be
/// redistributed at another.
#[derive(Debug, Clone, Default)]
pub struct OperatorSnapshot {
    /// Entries by state name, then by key group.
    pub entries: BTreeMap<String, Vec<(Option<u32>, RecordBatch)>>,
}

impl OperatorSnapshot {
    /// Records `batch` under `name` for `key_group`.
    pub fn put(&mut self, name: &str, key_group: Option<u32>, batch: RecordBatch) {
        self.entries
            .entry(name.to_string())
            .or_default()
            .push((key_group, batch));
    }
    /// `true` when the operator has no state.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
