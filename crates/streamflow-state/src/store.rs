//! Checkpoint storage: state blobs as Arrow IPC files, and the metadata of
//! each complete checkpoint, in a directory or an object store (S3, GCS,
//! Azure, NATS JetStream). A checkpoint exists only once its metadata
//! object is written (each object write is atomic), and every blob carries
//! a CRC-32 so that a corrupted or truncated file is detected before it is
//! restored. Any process that can reach the storage sees the same
//! checkpoints: a flow's coordinator can move to another host.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use serde::{Deserialize, Serialize};
use streamflow_core::{Error, OperatorSnapshot, Result, SourceOffset};

use crate::objects::Objects;

/// Where the metadata of complete checkpoints lives: `meta/<id>.json`.
const META: &str = "meta";

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
    objects: Objects,
}

impl StateFiles {
    /// Opens (creating if needed) the state files at `location`: a
    /// directory or `file:///dir`; `s3://bucket/prefix`, `gs://…`,
    /// `az://…` (credentials and endpoint from the usual `AWS_*`,
    /// `GOOGLE_*`, `AZURE_*` variables); `nats://HOST:PORT/bucket/prefix`
    /// or `nats://bucket/prefix` (a JetStream object store, on the server
    /// of `STREAMFLOW_CLUSTER`, else 127.0.0.1:4222).
    ///
    /// # Errors
    /// An unknown scheme, a bad URL, or a directory that cannot be made.
    /// A server that cannot be reached fails the first read or write.
    pub fn open(location: &str) -> Result<Self> {
        Ok(Self {
            objects: Objects::open(location)?,
        })
    }

    /// Where the storage is, as given to [`open`](Self::open).
    pub fn location(&self) -> &str {
        self.objects.location()
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
            self.objects.put(&path, bytes::Bytes::from(bytes)).await?;
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
        let bytes = self.objects.get(&blob.path).await?;
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

    /// Deletes every file of checkpoint `id`.
    async fn remove_files(&self, id: u64) -> Result<()> {
        self.objects.delete_all(&format!("chk-{id}")).await
    }
}

/// The checkpoints of one flow: their state files and the metadata of the
/// complete ones. One process at a time writes it: the run's checkpoint
/// coordinator (the coordinator lease of a cluster, or the one process
/// running the flow, makes sure of that).
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    files: Arc<StateFiles>,
}

impl CheckpointStore {
    /// Opens (creating if needed) the storage at `location` (see
    /// [`StateFiles::open`]).
    ///
    /// # Errors
    /// See [`StateFiles::open`].
    pub fn open(location: &str) -> Result<Self> {
        Ok(Self {
            files: Arc::new(StateFiles::open(location)?),
        })
    }

    /// The state files.
    pub fn files(&self) -> &StateFiles {
        &self.files
    }

    /// Where the storage is.
    pub fn location(&self) -> &str {
        self.files.location()
    }

    /// Records a checkpoint as complete: its metadata object is written
    /// in one atomic put, after every state file it names.
    ///
    /// # Errors
    /// When the metadata cannot be written.
    pub async fn commit(&self, meta: &CheckpointMeta) -> Result<()> {
        let json = serde_json::to_vec(meta).map_err(|e| io("encoding metadata", e))?;
        self.files
            .objects
            .put(
                &format!("{META}/{}.json", meta.id),
                bytes::Bytes::from(json),
            )
            .await
    }

    /// Every complete checkpoint, oldest first.
    ///
    /// # Errors
    /// When the storage cannot be listed or a metadata object read.
    pub async fn list(&self) -> Result<Vec<CheckpointMeta>> {
        let mut ids: Vec<u64> = self
            .files
            .objects
            .list(META)
            .await?
            .iter()
            .filter_map(|p| {
                p.strip_prefix(&format!("{META}/"))?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let bytes = self.files.objects.get(&format!("{META}/{id}.json")).await?;
            out.push(
                serde_json::from_slice(&bytes)
                    .map_err(|e| io(&format!("decoding the metadata of checkpoint {id}"), e))?,
            );
        }
        Ok(out)
    }

    /// The newest checkpoint whose files are all intact, optionally at most
    /// `at_most`; skipped checkpoints are reported through `on_skip`.
    ///
    /// # Errors
    /// When the storage cannot be listed.
    pub async fn latest_valid(
        &self,
        at_most: Option<u64>,
        mut on_skip: impl FnMut(&CheckpointMeta, &Error),
    ) -> Result<Option<CheckpointMeta>> {
        for meta in self.list().await?.into_iter().rev() {
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

    /// Keeps the newest `retain` checkpoints and deletes the others'
    /// metadata, then their files.
    ///
    /// # Errors
    /// When the storage cannot be listed or a metadata object deleted
    /// (state file deletion failures are ignored).
    pub async fn prune(&self, retain: usize) -> Result<()> {
        let all = self.list().await?;
        let drop_count = all.len().saturating_sub(retain.max(1));
        for meta in &all[..drop_count] {
            self.files
                .objects
                .delete(&format!("{META}/{}.json", meta.id))
                .await?;
            let _ = self.files.remove_files(meta.id).await;
        }
        Ok(())
    }

    /// Deletes the files of checkpoints that never completed (left by a crash).
    pub async fn clean_incomplete(&self) {
        let complete: Vec<u64> = self
            .list()
            .await
            .map(|l| l.iter().map(|m| m.id).collect())
            .unwrap_or_default();
        let Ok(all) = self.files.objects.list("").await else {
            return;
        };
        let incomplete: std::collections::BTreeSet<u64> = all
            .iter()
            .filter_map(|p| p.strip_prefix("chk-")?.split('/').next()?.parse().ok())
            .filter(|id| !complete.contains(id))
            .collect();
        for id in incomplete {
            let _ = self.files.remove_files(id).await;
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

    /// Writes three checkpoints, reads one back, truncates a file of the
    /// newest (the one before is chosen), prunes to one, and drops the files
    /// of a checkpoint that never completed.
    async fn round_trip(location: &str) {
        let store = CheckpointStore::open(location).expect("open");
        let snap = snapshot();
        for id in 1..=3 {
            let blobs = store
                .files()
                .write_state(id, "w", 0, &snap)
                .await
                .expect("write");
            store.commit(&meta(id, blobs)).await.expect("commit");
        }
        let latest = store.list().await.expect("list");
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
        let objects = &store.files().objects;
        let path = &latest[2].instances[0].blobs[0].path;
        let whole = objects.get(path).await.expect("get");
        objects
            .put(path, whole.slice(..whole.len() / 2))
            .await
            .expect("truncate");
        let mut skipped = Vec::new();
        let chosen = store
            .latest_valid(None, |m, _| skipped.push(m.id))
            .await
            .expect("scan");
        assert_eq!(chosen.map(|m| m.id), Some(2));
        assert_eq!(skipped, vec![3]);

        store.prune(1).await.expect("prune");
        let ids = |l: Vec<CheckpointMeta>| l.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(store.list().await.expect("list")), vec![3]);
        assert!(objects.list("chk-1").await.expect("list").is_empty());
        assert!(!objects.list("chk-3").await.expect("list").is_empty());

        // Files of checkpoint 4, never committed, go at the next start.
        store
            .files()
            .write_state(4, "w", 0, &snap)
            .await
            .expect("write");
        store.clean_incomplete().await;
        assert!(objects.list("chk-4").await.expect("list").is_empty());
        assert!(!objects.list("chk-3").await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn checkpoints_round_trip_in_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        round_trip(&dir.path().display().to_string()).await;
        assert!(!dir.path().join("chk-1").exists());
    }

    /// Against the local NATS server (started by `.ci/run`), in a bucket
    /// of its own, under a prefix.
    #[tokio::test]
    async fn checkpoints_round_trip_in_a_nats_object_store() {
        let server =
            std::env::var("STREAMFLOW_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let host = server.trim_start_matches("nats://");
        let bucket = format!("sf-test-{}", std::process::id());
        round_trip(&format!("nats://{host}/{bucket}/flows/one")).await;
        let client = async_nats::connect(server.as_str()).await.expect("connect");
        async_nats::jetstream::new(client)
            .delete_object_store(&bucket)
            .await
            .expect("delete the bucket");
    }

    #[test]
    fn bad_locations_are_refused_with_the_reason() {
        for (location, reason) in [
            ("nats://", "naming the bucket"),
            ("nats://127.0.0.1:4222/bad.bucket", "naming the bucket"),
            ("ftp://host/dir", "opening"),
        ] {
            let e = CheckpointStore::open(location)
                .expect_err(location)
                .to_string();
            assert!(
                e.contains(reason) && e.contains(location),
                "{location}: {e}"
            );
        }
    }
}
