//! `file`: writes JSON lines, CSV or Parquet.
//!
//! `path` is either a file (`out/bad.jsonl`, one instance) or a directory,
//! into which each instance writes `part-<instance>-<seq>.<ext>` files,
//! rolling to a new file once `max_file_size` is reached or the file is
//! older than `rollover_interval`. A file is written
//! under a `.inprogress` name and renamed when complete, so readers never
//! see a partial file.
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
            current: None,
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
    current: Option<OpenFile>,
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
        file.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", f.temp.display()), e))?;
        std::fs::rename(&f.temp, &f.target)
            .map_err(|e| Error::io(format!("publishing {}", f.target.display()), e))
    }
}

#[async_trait]
impl Sink for FileSink {
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
        if self.single && self.current.is_none() {
            // An empty result is still a result: publish an empty file.
            self.open()?;
        }
        self.close_current()
    }
}
