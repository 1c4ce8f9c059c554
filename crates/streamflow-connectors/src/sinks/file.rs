//! `file`: writes JSON lines, CSV or Parquet.
//!
//! `path` is either a file (`out/bad.jsonl`, one instance) or a directory,
//! into which each instance writes `part-<instance>-<seq>.<ext>` files,
//! rolling to a new file once `max_file_size` is reached or the file is
//! older than `rollover_interval`. A file is written
//! under a `.inprogress` name and renamed when complete, so readers never
//! see a partial file.
//!
//! With checkpoints the sink is exactly-once: finished files stay
//! `.inprogress` until the checkpoint that covers them completes, and are
//! then published (renamed; for a single-file `path`, appended to it at the
//! length recorded in the checkpoint). Publishing is idempotent, so a commit
//! replayed after a crash is a no-op, and files written after the last
//! complete checkpoint are deleted on recovery (their records are replayed).
//!
//! ```yaml
//! - {name: out, type: file, input: q1, config: {path: out/q1, format: parquet, max_file_size: 64MB}}
//! ```

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Sink};
use streamflow_dsl::{ByteSize, HumanDuration};

use super::encode::{Encoder, Encoding};
use crate::registry::{SinkContext, SinkFactory};

/// Settings of a `file` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSinkConfig {
    /// A file (`out.jsonl`) or a directory for rolling part files.
    path: PathBuf,
    /// `jsonl`, `csv` or `parquet`; by default from the file extension, else jsonl.
    format: Option<Encoding>,
    /// Start a new part file once this many bytes are written (directories only).
    max_file_size: Option<ByteSize>,
    /// Start a new part file once the current one is this old, e.g. `15m`
    /// (checked when a batch arrives; directories only).
    rollover_interval: Option<HumanDuration>,
    /// Name prefix of part files.
    #[serde(default = "default_prefix")]
    prefix: String,
}

fn default_prefix() -> String {
    "part".into()
}

fn encoding_of(path: &Path) -> Option<Encoding> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "jsonl" | "json" | "ndjson" => Some(Encoding::Jsonl),
        "csv" => Some(Encoding::Csv),
        "parquet" => Some(Encoding::Parquet),
        _ => None,
    }
}

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let config: FileSinkConfig = ctx.config()?;
    let single = encoding_of(&config.path);
    let format = config.format.or(single).unwrap_or_default();
    let mut d = Diagnostics::new();
    if format == Encoding::Table {
        d.0.push(Diagnostic::new(
            ctx.at("format"),
            "table is for stdout; use jsonl, csv or parquet",
        ));
    }
    if single.is_some() && config.max_file_size.is_some() {
        d.push(
            ctx.at("max_file_size"),
            "rolling needs a directory path, not a file name",
        );
    }
    if single.is_some() && config.rollover_interval.is_some() {
        d.push(
            ctx.at("rollover_interval"),
            "rolling needs a directory path, not a file name",
        );
    }
    if config.rollover_interval.is_some_and(|i| i.0.is_zero()) {
        d.push(ctx.at("rollover_interval"), "must be greater than 0");
    }
    if config.max_file_size == Some(ByteSize(0)) {
        d.push(ctx.at("max_file_size"), "must be greater than 0");
    }
    d.into_result(())?;
    Ok(Arc::new(FileSinkFactory {
        config,
        format,
        single: single.is_some(),
        schema: Arc::clone(&ctx.input),
    }))
}

struct FileSinkFactory {
    config: FileSinkConfig,
    format: Encoding,
    single: bool,
    schema: SchemaRef,
}

impl SinkFactory for FileSinkFactory {
    fn create(&self, instance: usize) -> Result<Box<dyn Sink>> {
        if self.single && instance > 0 {
            return Err(Error::Other(format!(
                "{} names one file, so it can only be written by one instance; use a directory path",
                self.config.path.display()
            )));
        }
        let dir = if self.single {
            self.config.path.parent().map(Path::to_path_buf)
        } else {
            Some(self.config.path.clone())
        };
        if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        Ok(Box::new(FileSink {
            config: self.config.clone(),
            format: self.format,
            single: self.single,
            schema: Arc::clone(&self.schema),
            instance,
            seq: 0,
            run: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            current: None,
            transactional: false,
            staged: Vec::new(),
            pending: Vec::new(),
            committed_len: 0,
        }))
    }
}

struct OpenFile {
    encoder: Encoder<BufWriter<File>>,
    opened: std::time::Instant,
    temp: PathBuf,
    target: PathBuf,
}

struct FileSink {
    config: FileSinkConfig,
    format: Encoding,
    single: bool,
    schema: SchemaRef,
    instance: usize,
    seq: u64,
    /// This run's token in staged names: a restored checkpoint's staged
    /// pieces and this run's never share a name.
    run: u128,
    current: Option<OpenFile>,
    /// Checkpointed: finished files wait for their checkpoint to complete.
    transactional: bool,
    /// Finished files not yet part of a checkpoint.
    staged: Vec<Publish>,
    /// Files staged by a checkpoint, published when it completes.
    pending: Vec<(u64, Publish)>,
    /// Single file: its published length.
    committed_len: u64,
}

/// Publishing one finished file: a rename, or for a single-file path an
/// append at a known length (so that replaying it is a no-op).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Publish {
    from: PathBuf,
    to: PathBuf,
    /// Single file: the length of `to` before this append.
    append_at: Option<u64>,
}

impl Publish {
    /// Completes the publication; a no-op when it already happened.
    fn apply(&self) -> Result<()> {
        if !self.from.exists() {
            return Ok(());
        }
        match self.append_at {
            None => std::fs::rename(&self.from, &self.to)
                .map_err(|e| Error::io(format!("publishing {}", self.to.display()), e)),
            Some(at) => {
                use std::io::{Seek, SeekFrom, Write};
                let data = std::fs::read(&self.from)
                    .map_err(|e| Error::io(format!("reading {}", self.from.display()), e))?;
                let mut out = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&self.to)
                    .map_err(|e| Error::io(format!("opening {}", self.to.display()), e))?;
                out.set_len(at)
                    .and_then(|_| out.seek(SeekFrom::Start(at)))
                    .and_then(|_| out.write_all(&data))
                    .and_then(|_| out.sync_all())
                    .map_err(|e| Error::io(format!("appending to {}", self.to.display()), e))?;
                std::fs::remove_file(&self.from)
                    .map_err(|e| Error::io(format!("removing {}", self.from.display()), e))
            }
        }
    }
}

impl FileSink {
    fn open(&mut self) -> Result<&mut OpenFile> {
        if self.current.is_none() {
            let target = if self.single {
                self.config.path.clone()
            } else {
                self.config.path.join(format!(
                    "{}-{}-{:05}.{}",
                    self.config.prefix,
                    self.instance,
                    self.seq,
                    self.format.extension()
                ))
            };
            self.seq += 1;
            let mut temp = target.clone().into_os_string();
            if self.single && self.transactional {
                // Several staged pieces of one file may wait at once.
                temp.push(format!(".{:x}-{}", self.run, self.seq));
            }
            temp.push(".inprogress");
            let temp = PathBuf::from(temp);
            let file = File::create(&temp)
                .map_err(|e| Error::io(format!("creating {}", temp.display()), e))?;
            let encoder = Encoder::new(
                self.format,
                &self.schema,
                BufWriter::with_capacity(1 << 20, file),
            )?;
            self.current = Some(OpenFile {
                encoder,
                opened: std::time::Instant::now(),
                temp,
                target,
            });
        }
        self.current
            .as_mut()
            .ok_or_else(|| Error::Other("file sink: no open file".into()))
    }

    fn close_current(&mut self) -> Result<()> {
        let Some(f) = self.current.take() else {
            return Ok(());
        };
        let writer = f.encoder.close()?;
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(format!("writing {}", f.temp.display()), e.into_error()))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io(format!("writing {}", f.temp.display()), e))?
            .len();
        file.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", f.temp.display()), e))?;
        let publish = Publish {
            from: f.temp,
            to: f.target,
            append_at: (self.single && self.transactional).then_some(self.committed_len),
        };
        if self.single {
            self.committed_len += size;
        }
        if self.transactional {
            self.staged.push(publish);
            Ok(())
        } else {
            publish.apply()
        }
    }

    /// This instance's `.inprogress` files in the output directory.
    fn leftovers(&self) -> Vec<PathBuf> {
        let (dir, stem) = if self.single {
            let name = self
                .config
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (self.config.path.parent().map(Path::to_path_buf), name)
        } else {
            (
                Some(self.config.path.clone()),
                format!("{}-{}-", self.config.prefix, self.instance),
            )
        };
        let dir = dir
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&stem) && n.ends_with(".inprogress")
                })
            })
            .collect()
    }

    /// The next free part number of this instance (after a restart).
    fn next_seq(&self) -> u64 {
        let stem = format!("{}-{}-", self.config.prefix, self.instance);
        std::fs::read_dir(&self.config.path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let rest = name.strip_prefix(&stem)?;
                        rest.split('.').next()?.parse::<u64>().ok()
                    })
                    .map(|s| s + 1)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn open(&mut self, checkpointing: Option<Vec<serde_json::Value>>) -> Result<()> {
        let Some(pending) = checkpointing else {
            return Ok(());
        };
        self.transactional = true;
        for p in pending {
            let publish: Publish = serde_json::from_value(p)
                .map_err(|e| Error::Other(format!("file sink: bad staged commit: {e}")))?;
            publish.apply()?;
        }
        // Written after the restored checkpoint: its records will be replayed.
        for stray in self.leftovers() {
            std::fs::remove_file(&stray)
                .map_err(|e| Error::io(format!("removing {}", stray.display()), e))?;
        }
        if self.single {
            // Anything past the last published length was never committed.
            self.committed_len = match std::fs::metadata(&self.config.path) {
                Ok(m) => m.len(),
                Err(_) => 0,
            };
        } else {
            self.seq = self.next_seq();
        }
        Ok(())
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<serde_json::Value>> {
        if !self.transactional {
            return Ok(Vec::new());
        }
        self.close_current()?;
        for p in std::mem::take(&mut self.staged) {
            self.pending.push((checkpoint, p));
        }
        // Every publication not yet done, earlier checkpoints' included: the
        // commit of an earlier checkpoint may not have run before a crash.
        self.pending
            .iter()
            .map(|(_, p)| {
                serde_json::to_value(p)
                    .map_err(|e| Error::Other(format!("file sink: staging: {e}")))
            })
            .collect()
    }

    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(c, _)| *c <= checkpoint);
        self.pending = waiting;
        for (_, p) in done {
            p.apply()?;
        }
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let limit = self.config.max_file_size.map(|b| b.0);
        let interval = self.config.rollover_interval.map(|i| i.0);
        let file = self.open()?;
        file.encoder.write(&batch)?;
        if limit.is_some_and(|l| file.encoder.bytes() >= l)
            || interval.is_some_and(|i| file.opened.elapsed() >= i)
        {
            self.close_current()?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if self.transactional {
            // Everything was staged by the final checkpoint and committed.
            return Ok(());
        }
        if self.single && self.current.is_none() {
            // An empty result is still a result: publish an empty file.
            self.open()?;
        }
        self.close_current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn sink(path: &Path) -> Box<dyn Sink> {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let settings = serde_json::json!({ "path": path });
        let ctx = SinkContext {
            name: "f",
            path: "sinks[0].config",
            settings: settings.as_object().expect("object"),
            input: schema,
        };
        plan(&ctx).expect("plan").create(0).expect("sink")
    }

    fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(ids))])
            .expect("batch")
    }

    /// A run restored from a checkpoint whose piece was not yet published
    /// publishes it, then crashes mid-write; the next restore of the same
    /// checkpoint must not mistake that run's piece for the checkpoint's.
    #[test]
    fn a_second_restore_of_one_checkpoint_publishes_only_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut first = sink(&path);
            first.open(Some(Vec::new())).await.expect("open");
            first.write(batch(0..3)).await.expect("write");
            let staged = first.pre_commit(1).await.expect("pre-commit");
            drop(first); // crashed before checkpoint 1 was published

            let mut second = sink(&path);
            second.open(Some(staged.clone())).await.expect("restore");
            second.write(batch(100..105)).await.expect("write");
            second.pre_commit(2).await.expect("pre-commit");
            drop(second); // crashed before checkpoint 2 completed

            let mut third = sink(&path);
            third.open(Some(staged)).await.expect("restore again");
            third.write(batch(3..5)).await.expect("write");
            third.pre_commit(2).await.expect("pre-commit");
            third.commit(2).await.expect("commit");
            third.finish().await.expect("finish");
        });
        let text = std::fs::read_to_string(&path).expect("output");
        let ids: Vec<i64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["id"]
                    .as_i64()
                    .expect("id")
            })
            .collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    }
}
