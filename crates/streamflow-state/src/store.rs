//! Checkpoint storage: state blobs as Arrow IPC files in an object store
//! (the local disk today), and checkpoint metadata committed atomically in
//! an embedded redb database. A checkpoint exists only once its metadata is
//! committed, and every blob carries a CRC-32 so that a corrupted or
//! truncated file is detected before it is restored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use streamflow_core::{Error, OperatorSnapshot, Result, SourceOffset};

/// Checkpoint id → metadata (JSON).
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");

/// Column added to every state batch on disk: the entry's key group.
const KEY_GROUP_COLUMN: &str = "_key_group";

/// One state file of one operator instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRef {
    /// State name within the operator.
    pub name: String,
    /// Object path relative to the storage root.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 of the whole file.
    pub crc32: u32,
}

/// Where a source instance resumes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourcePosition {
    /// Offset of the next record to read.
    pub offset: SourceOffset,
    /// Highest event time seen (restores the watermark generator).
    pub max_event_time: Option<i64>,
}

/// What one instance of one node contributed to a checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceState {
    /// Node name.
    pub node: String,
    /// Instance index.
    pub instance: usize,
    /// Operator state files.
    #[serde(default)]
    pub blobs: Vec<BlobRef>,
    /// Source position, for source instances.
    #[serde(default)]
    pub source: Option<SourcePosition>,
    /// Sink commits staged for this checkpoint, replayed on recovery.
    #[serde(default)]
    pub pending: Vec<serde_json::Value>,
    /// Operators: how long the barrier waited for all inputs (ms).
    #[serde(default)]
    pub alignment_ms: u64,
}

/// A node as it was when the checkpoint was taken (to refuse incompatible restores).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Its type (`window`, `file`, ...).
    pub kind: String,
    /// Its parallelism.
    pub parallelism: usize,
}

/// A complete checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// Checkpoint id (increasing).
    pub id: u64,
    /// When the coordinator started it (ms since epoch).
    pub started_ms: i64,
    /// How long it took until every instance had acknowledged (ms).
    pub duration_ms: u64,
    /// Total size of its state files.
    pub bytes: u64,
    /// Whether the pipeline stopped after it (job end or stop with savepoint).
    pub is_final: bool,
    /// The nodes of the pipeline.
    pub nodes: Vec<NodeInfo>,
    /// Every instance's contribution.
    pub instances: Vec<InstanceState>,
}

fn io(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("checkpoint storage: {context}: {e}"))
}

/// The state files of a flow's checkpoints. Every process of a run opens
/// them (each writes the state of its own instances); only the checkpoint
/// coordinator keeps the metadata ([`CheckpointStore`]).
#[derive(Debug)]
pub struct StateFiles {
    root: PathBuf,
    objects: Arc<LocalFileSystem>,
}

impl StateFiles {
    /// Opens (creating if needed) the state files at `location`: a
    /// directory or a `file://` URL.
    ///
    /// # Errors
    /// Other URL schemes, or when the directory cannot be made.
    pub fn open(location: &str) -> Result<Self> {
        let root = match location.split_once("://") {
            None => PathBuf::from(location),
            Some(("file", path)) => PathBuf::from(path),
            Some((scheme, _)) => {
                return Err(Error::Other(format!(
                    "checkpoint storage '{location}': only local directories are supported for now, not {scheme}://"
                )));
            }
        };
        std::fs::create_dir_all(&root).map_err(|e| io(&root.display().to_string(), e))?;
        let objects = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| io(&root.display().to_string(), e))?;
        Ok(Self {
            root,
            objects: Arc::new(objects),
        })
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes one operator instance's state for checkpoint `id`, one Arrow
    /// IPC file per state name.
    ///
    /// # Errors
    /// When a state entry cannot be encoded or written.
    pub async fn write_state(
        &self,
        id: u64,
        node: &str,
        instance: usize,
        snapshot: &OperatorSnapshot,
    ) -> Result<Vec<BlobRef>> {
        let mut blobs = Vec::new();
        for (name, entries) in &snapshot.entries {
            let bytes = encode(name, entries)?;
            let path = format!("chk-{id}/{node}/{instance}/{name}.arrow");
            let crc32 = crc32fast::hash(&bytes);
            let size = bytes.len() as u64;
            self.objects
                .put(&ObjectPath::from(path.as_str()), PutPayload::from(bytes))
                .await
                .map_err(|e| io(&path, e))?;
            blobs.push(BlobRef {
                name: name.clone(),
                path,
                bytes: size,
                crc32,
            });
        }
        Ok(blobs)
    }

    /// Reads state files back into a snapshot, checking each checksum.
    ///
    /// # Errors
    /// A missing, corrupted or truncated file.
    pub async fn read_state(&self, blobs: &[BlobRef]) -> Result<OperatorSnapshot> {
        let mut snapshot = OperatorSnapshot::default();
        for blob in blobs {
            let bytes = self.read_checked(blob).await?;
            for (group, batch) in decode(&bytes).map_err(|e| io(&blob.path, e))? {
                snapshot.put(&blob.name, group, batch);
            }
        }
        Ok(snapshot)
    }

    async fn read_checked(&self, blob: &BlobRef) -> Result<bytes::Bytes> {
        let bytes = self
            .objects
            .get(&ObjectPath::from(blob.path.as_str()))
            .await
            .map_err(|e| io(&blob.path, e))?
            .bytes()
            .await
            .map_err(|e| io(&blob.path, e))?;
        if bytes.len() as u64 != blob.bytes || crc32fast::hash(&bytes) != blob.crc32 {
            return Err(io(
                &blob.path,
                format!(
                    "checksum mismatch ({} bytes, expected {})",
                    bytes.len(),
                    blob.bytes
                ),
            ));
        }
        Ok(bytes)
    }

    /// Checks every state file of a checkpoint.
    ///
    /// # Errors
    /// The first missing, corrupted or truncated file.
    pub async fn verify(&self, meta: &CheckpointMeta) -> Result<()> {
        for blob in meta.instances.iter().flat_map(|i| &i.blobs) {
            self.read_checked(blob).await?;
        }
        Ok(())
    }
}

/// The checkpoints of one flow: their state files and, committed
/// atomically in an embedded database, their metadata. One process at a
/// time opens it: the run's checkpoint coordinator.
#[derive(Debug)]
pub struct CheckpointStore {
    files: StateFiles,
    db: Database,
}

impl CheckpointStore {
    /// Opens (creating if needed) the storage at `location`: a directory or
    /// a `file://` URL.
    ///
    /// # Errors
    /// Other URL schemes, or when the directory or database cannot be opened.
    pub fn open(location: &str) -> Result<Self> {
        let files = StateFiles::open(location)?;
        let db = Database::create(files.root.join("checkpoints.redb"))
            .map_err(|e| io("opening checkpoints.redb", e))?;
        Ok(Self { files, db })
    }

    /// The state files.
    pub fn files(&self) -> &StateFiles {
        &self.files
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.files.root
    }

    /// Records a checkpoint as complete (atomically).
    ///
    /// # Errors
    /// When the database cannot commit.
    pub fn commit(&self, meta: &CheckpointMeta) -> Result<()> {
        let json = serde_json::to_vec(meta).map_err(|e| io("encoding metadata", e))?;
        let txn = self.db.begin_write().map_err(|e| io("begin", e))?;
        {
            let mut table = txn.open_table(CHECKPOINTS).map_err(|e| io("table", e))?;
            table
                .insert(meta.id, json.as_slice())
                .map_err(|e| io("insert", e))?;
        }
        txn.commit().map_err(|e| io("commit", e))
    }

    /// Every complete checkpoint, oldest first.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn list(&self) -> Result<Vec<CheckpointMeta>> {
        let txn = self.db.begin_read().map_err(|e| io("begin", e))?;
        let table = match txn.open_table(CHECKPOINTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io("table", e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| io("scan", e))? {
            let (_, value) = entry.map_err(|e| io("scan", e))?;
            out.push(
                serde_json::from_slice(value.value()).map_err(|e| io("decoding metadata", e))?,
            );
        }
        Ok(out)
    }

    /// The newest checkpoint whose files are all intact, optionally at most
    /// `at_most`; skipped checkpoints are reported through `on_skip`.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn latest_valid(
        &self,
        at_most: Option<u64>,
        mut on_skip: impl FnMut(&CheckpointMeta, &Error),
    ) -> Result<Option<CheckpointMeta>> {
        for meta in self.list()?.into_iter().rev() {
            if at_most.is_some_and(|m| meta.id > m) {
                continue;
            }
            match self.files.verify(&meta).await {
                Ok(()) => return Ok(Some(meta)),
                Err(e) => on_skip(&meta, &e),
            }
        }
        Ok(None)
    }

    /// Keeps the newest `retain` checkpoints and deletes the others' files and metadata.
    ///
    /// # Errors
    /// When the database cannot be updated (file deletion failures are ignored).
    pub async fn prune(&self, retain: usize) -> Result<()> {
        let all = self.list()?;
        let drop_count = all.len().saturating_sub(retain.max(1));
        for meta in &all[..drop_count] {
            let txn = self.db.begin_write().map_err(|e| io("begin", e))?;
            {
                let mut table = txn.open_table(CHECKPOINTS).map_err(|e| io("table", e))?;
                table.remove(meta.id).map_err(|e| io("remove", e))?;
            }
            txn.commit().map_err(|e| io("commit", e))?;
            let _ =
                tokio::fs::remove_dir_all(self.files.root.join(format!("chk-{}", meta.id))).await;
        }
        Ok(())
    }

    /// Deletes the files of checkpoints that never completed (left by a crash).
    pub async fn clean_incomplete(&self) {
        let complete: Vec<u64> = self
            .list()
            .map(|l| l.iter().map(|m| m.id).collect())
            .unwrap_or_default();
        let Ok(mut dir) = tokio::fs::read_dir(&self.files.root).await else {
            return;
        };
        while let Ok(Some(entry)) = dir.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_prefix("chk-")
                .and_then(|i| i.parse::<u64>().ok())
                && !complete.contains(&id)
            {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
            }
        }
    }
}

/// Entries of one state name as an Arrow IPC file with a key-group column.
fn encode(name: &str, entries: &[(Option<u32>, RecordBatch)]) -> Result<Vec<u8>> {
    let Some((_, first)) = entries.first() else {
        return Ok(Vec::new());
    };
    let mut fields: Vec<Arc<Field>> = first.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(
        KEY_GROUP_COLUMN,
        DataType::UInt32,
        true,
    )));
    let schema = Arc::new(Schema::new(fields));
    let mut out = Vec::new();
    {
        let mut writer = FileWriter::try_new(&mut out, &schema)
            .map_err(|e| Error::arrow(format!("encoding state '{name}'"), e))?;
        for (group, batch) in entries {
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            columns.push(Arc::new(UInt32Array::from(vec![*group; batch.num_rows()])));
            let b = RecordBatch::try_new(Arc::clone(&schema), columns)
                .map_err(|e| Error::arrow(format!("encoding state '{name}'"), e))?;
            writer
                .write(&b)
                .map_err(|e| Error::arrow(format!("encoding state '{name}'"), e))?;
        }
        writer
            .finish()
            .map_err(|e| Error::arrow(format!("encoding state '{name}'"), e))?;
    }
    Ok(out)
}

/// The entries of a state file, split back by key group.
fn decode(bytes: &[u8]) -> std::result::Result<Vec<(Option<u32>, RecordBatch)>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader =
        FileReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let groups_at = batch.num_columns() - 1;
        let groups = batch
            .column(groups_at)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .ok_or("missing key-group column")?
            .clone();
        let data = batch
            .project(&(0..groups_at).collect::<Vec<_>>())
            .map_err(|e| e.to_string())?;
        // Consecutive rows of one key group form one entry.
        let mut by_group: BTreeMap<Option<u32>, Vec<u32>> = BTreeMap::new();
        for r in 0..groups.len() {
            let g = groups.is_valid(r).then(|| groups.value(r));
            by_group.entry(g).or_default().push(r as u32);
        }
        for (g, rows) in by_group {
            let part = if rows.len() == data.num_rows() {
                data.clone()
            } else {
                arrow::compute::take_record_batch(&data, &UInt32Array::from(rows))
                    .map_err(|e| e.to_string())?
            };
            out.push((g, part));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn snapshot() -> OperatorSnapshot {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let mut s = OperatorSnapshot::default();
        for (g, values) in [(Some(3), vec![1, 2]), (None, vec![7]), (Some(90), vec![5])] {
            let b = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from(values))],
            )
            .expect("batch");
            s.put("panes", g, b);
        }
        s
    }

    fn meta(id: u64, blobs: Vec<BlobRef>) -> CheckpointMeta {
        CheckpointMeta {
            id,
            started_ms: 0,
            duration_ms: 1,
            bytes: blobs.iter().map(|b| b.bytes).sum(),
            is_final: false,
            nodes: vec![],
            instances: vec![InstanceState {
                node: "w".into(),
                instance: 0,
                blobs,
                ..InstanceState::default()
            }],
        }
    }

    #[tokio::test]
    async fn state_round_trips_and_corruption_falls_back_to_the_previous_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::open(&dir.path().display().to_string()).expect("open");
        let snap = snapshot();
        for id in 1..=3 {
            let blobs = store
                .files()
                .write_state(id, "w", 0, &snap)
                .await
                .expect("write");
            store.commit(&meta(id, blobs)).expect("commit");
        }
        let latest = store.list().expect("list");
        assert_eq!(
            latest.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let back = store
            .files()
            .read_state(&latest[2].instances[0].blobs)
            .await
            .expect("read");
        let rows = |s: &OperatorSnapshot| {
            let mut v: Vec<(Option<u32>, usize)> = s.entries["panes"]
                .iter()
                .map(|(g, b)| (*g, b.num_rows()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(rows(&back), rows(&snap));

        // Truncate checkpoint 3's file: 2 is used instead, and 3 is reported.
        let path = dir.path().join(&latest[2].instances[0].blobs[0].path);
        let len = std::fs::metadata(&path).expect("meta").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_len(len / 2).expect("truncate");
        let mut skipped = Vec::new();
        let chosen = store
            .latest_valid(None, |m, _| skipped.push(m.id))
            .await
            .expect("scan");
        assert_eq!(chosen.map(|m| m.id), Some(2));
        assert_eq!(skipped, vec![3]);

        store.prune(1).await.expect("prune");
        assert_eq!(
            store
                .list()
                .expect("list")
                .iter()
                .map(|m| m.id)
                .collect::<Vec<_>>(),
            vec![3]
        );
        assert!(!dir.path().join("chk-1").exists());
    }
}
