//! `file`: reads JSON lines, CSV or Parquet files named by a path or glob.
//!
//! The schema is declared (`schema: {col: type}`) or inferred from the first
//! file; nested JSON objects become struct columns (`Bid.price`). Integer
//! epoch-millisecond fields listed in `timestamps` become timestamp columns.
//! Undecodable lines go to the source's `dlq` with file and line; without a
//! `dlq` the pipeline fails naming the file, line and reason.
//!
//! With `parallelism: N`, JSON-lines and CSV files larger than
//! `split_size` (default 16 MiB) are cut into ranges of that size at line
//! boundaries (a line belongs to the range its first byte is in), dealt to
//! the instances in turn, so that all instances advance through the file —
//! and its event time — together; smaller files and Parquet files go to the
//! instances whole, in turn. Checkpoints record each instance's position.
//!
//! ```yaml
//! - name: raw
//!   type: file
//!   dlq: bad
//!   config: {path: "data/*.jsonl", timestamps: [Bid.date_time]}
//! ```

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Source, SourceBatch, SourceOffset};

use super::decode::{ByteInput, JsonParser, LineDecoder, TextFormat, TextReader};
use crate::registry::{SourceContext, SourceFactory};

/// File formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values (first line is a header unless `header: false`).
    Csv,
    /// Apache Parquet.
    Parquet,
}

/// Settings of a `file` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A file path or a glob (`data/*.jsonl`); files are read in name order.
    pub path: String,
    /// Format; by default from the extension (`.jsonl`/`.json`/`.ndjson`, `.csv`, `.parquet`).
    pub format: Option<FileFormat>,
    /// Declared schema, column → type; inferred from the first file when absent.
    pub schema: Option<Map<String, Value>>,
    /// Lines sampled for inference.
    #[serde(default = "default_infer_rows")]
    pub infer_rows: usize,
    /// Integer epoch-millisecond fields to read as timestamps (dotted paths for nested JSON).
    #[serde(default)]
    pub timestamps: Vec<String>,
    /// CSV: whether the first line is a header.
    #[serde(default = "yes")]
    pub header: bool,
    /// CSV field delimiter.
    #[serde(default = "comma")]
    pub delimiter: char,
    /// Parquet rows per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// With several instances: text files larger than this are read in
    /// ranges of this size, dealt to the instances in turn (default 16MB).
    pub split_size: Option<streamflow_dsl::ByteSize>,
    /// JSON lines: the parser, `simd-json` (default) or `arrow-json`;
    /// both decode alike.
    #[serde(default)]
    pub json_parser: JsonParser,
}

fn default_infer_rows() -> usize {
    1000
}
fn yes() -> bool {
    true
}
fn comma() -> char {
    ','
}
fn default_batch_size() -> usize {
    8192
}

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: FileSourceConfig = ctx.config()?;
    let at = |k: &str| ctx.at(k);
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(at(k), m));
    let files = expand(&config.path).map_err(|m| fail("path", m))?;
    let format = match config.format {
        Some(f) => f,
        None => format_of(&files[0]).ok_or_else(|| {
            fail(
                "format",
                format!(
                    "cannot tell the format of '{}'; set format: jsonl, csv or parquet",
                    files[0].display()
                ),
            )
        })?,
    };
    if !config.delimiter.is_ascii() {
        return Err(fail("delimiter", "must be a single ASCII character".into()));
    }
    let raw = match &config.schema {
        Some(declared) => declared_schema(declared, &at("schema"))?,
        None => infer(&files[0], format, &config).map_err(|m| fail("path", m))?,
    };
    let schema = retype_timestamps(&raw, &config.timestamps).map_err(|m| fail("timestamps", m))?;
    Ok(Arc::new(FileSourceFactory {
        files,
        format,
        raw: Arc::new(raw),
        schema: Arc::new(schema),
        config,
    }))
}

fn expand(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = glob::glob(pattern)
        .map_err(|e| format!("invalid glob '{pattern}': {e}"))?
        .filter_map(|p| p.ok())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no file matches '{pattern}'"));
    }
    Ok(files)
}

fn format_of(path: &Path) -> Option<FileFormat> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "jsonl" | "json" | "ndjson" => Some(FileFormat::Jsonl),
        "csv" => Some(FileFormat::Csv),
        "parquet" => Some(FileFormat::Parquet),
        _ => None,
    }
}

/// A schema declared as `column → type name`.
pub(crate) fn declared_schema(
    declared: &Map<String, Value>,
    path: &str,
) -> Result<Schema, Diagnostics> {
    let mut d = Diagnostics::new();
    let mut fields = Vec::new();
    for (name, ty) in declared {
        match ty.as_str().map(streamflow_expr::parse_data_type) {
            Some(Ok(t)) => fields.push(Field::new(name, t, true)),
            Some(Err(m)) => d.push(format!("{path}.{name}"), m),
            None => d.push(format!("{path}.{name}"), "expected a type name"),
        }
    }
    d.into_result(Schema::new(fields))
}

/// Bytes of a text file sampled for inference at most.
const INFER_BYTES: usize = 64 << 20;

/// The schema of `file` from its first `infer_rows` lines. Lines that do
/// not parse, or whose types cannot be merged with the majority's (an
/// object where most lines have a number), are left out of the inference
/// (the reader sends them to the dlq); a column seen with numbers and
/// strings becomes a string column.
fn infer(file: &Path, format: FileFormat, config: &FileSourceConfig) -> Result<Schema, String> {
    let open =
        || std::fs::File::open(file).map_err(|e| format!("cannot open '{}': {e}", file.display()));
    let what =
        |e: &dyn std::fmt::Display| format!("cannot infer the schema of '{}': {e}", file.display());
    let sample = || -> Result<Vec<u8>, String> {
        use std::io::{BufRead, Read};
        let mut reader = std::io::BufReader::new(open()?).take(INFER_BYTES as u64);
        let mut bytes = Vec::new();
        let lines = config.infer_rows + usize::from(format == FileFormat::Csv && config.header);
        for _ in 0..lines {
            if reader.read_until(b'\n', &mut bytes).map_err(|e| what(&e))? == 0 {
                break;
            }
        }
        Ok(bytes)
    };
    match format {
        FileFormat::Jsonl => infer_json(&sample()?).map_err(|e| what(&e)),
        FileFormat::Csv => infer_csv(&sample()?, config).map_err(|e| what(&e)),
        FileFormat::Parquet => ParquetRecordBatchReaderBuilder::try_new(open()?)
            .map(|b| b.schema().as_ref().clone())
            .map_err(|e| what(&e)),
    }
}

/// JSON lines' schema from the lines that parse as objects.
pub(crate) fn infer_json(sample: &[u8]) -> Result<Schema, String> {
    use arrow::json::reader::infer_json_schema_from_iterator;
    let values: Vec<Value> = sample
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .filter(Value::is_object)
        .collect();
    if values.is_empty() {
        return Err("no line of the sample is a JSON object".into());
    }
    let all = |vs: &[&Value]| infer_json_schema_from_iterator(vs.iter().map(|v| Ok(*v)));
    let refs: Vec<&Value> = values.iter().collect();
    if let Ok(schema) = all(&refs) {
        return Ok(schema);
    }
    // Some values clash (an object where others have a number). Lines of
    // one shape (the schema of the line alone) infer alike: take the shapes
    // commonest first, keeping each that agrees with those kept (lines of
    // the others go to the dlq when read).
    let mut shapes: Vec<(String, &Value, usize)> = Vec::new();
    for v in refs {
        let shape = all(&[v]).map(|s| s.to_string()).unwrap_or_default();
        match shapes.iter_mut().find(|(s, ..)| *s == shape) {
            Some((_, _, n)) => *n += 1,
            None => shapes.push((shape, v, 1)),
        }
    }
    shapes.sort_by_key(|(_, _, n)| std::cmp::Reverse(*n));
    let mut kept: Vec<&Value> = Vec::new();
    for (_, v, _) in shapes {
        kept.push(v);
        if all(&kept).is_err() {
            kept.pop();
        }
    }
    all(&kept).map_err(|e| e.to_string())
}

/// CSV's schema from the header and the rows that have its field count.
fn infer_csv(sample: &[u8], config: &FileSourceConfig) -> Result<Schema, String> {
    let format = || {
        arrow::csv::reader::Format::default()
            .with_header(config.header)
            .with_delimiter(config.delimiter as u8)
    };
    let infer = |bytes: &[u8]| format().infer_schema(bytes, None).map(|(s, _)| s);
    if let Ok(schema) = infer(sample) {
        return Ok(schema);
    }
    let mut lines = sample.split_inclusive(|b| *b == b'\n');
    let mut kept: Vec<u8> = Vec::new();
    if config.header {
        kept.extend_from_slice(lines.next().unwrap_or_default());
    }
    let base = kept.len();
    for line in lines {
        let mut one = kept[..base].to_vec();
        one.extend_from_slice(line);
        if infer(&one).is_ok() {
            kept.extend_from_slice(line);
        }
    }
    infer(&kept).map_err(|e| e.to_string())
}

/// Replaces the integer fields at `paths` with millisecond timestamps.
fn retype_timestamps(schema: &Schema, paths: &[String]) -> Result<Schema, String> {
    fn retype(fields: &Fields, path: &[&str], full: &str) -> Result<Fields, String> {
        let Some((head, rest)) = path.split_first() else {
            return Ok(fields.clone());
        };
        let Some((i, field)) = fields.find(head) else {
            return Err(format!("field '{full}' not found"));
        };
        let new_type = match (rest.is_empty(), field.data_type()) {
            (true, t) if t.is_integer() || matches!(t, DataType::Timestamp(..)) => {
                DataType::Timestamp(TimeUnit::Millisecond, None)
            }
            (true, t) => return Err(format!("field '{full}' is {t}, not an integer")),
            (false, DataType::Struct(children)) => DataType::Struct(retype(children, rest, full)?),
            (false, t) => return Err(format!("field '{head}' is {t}, not a struct")),
        };
        let mut out: Vec<Field> = fields.iter().map(|f| f.as_ref().clone()).collect();
        out[i] = field.as_ref().clone().with_data_type(new_type);
        Ok(Fields::from(out))
    }
    let mut fields = schema.fields().clone();
    for p in paths {
        let parts: Vec<&str> = p.split('.').collect();
        fields = retype(&fields, &parts, p)?;
    }
    Ok(Schema::new(fields))
}

struct FileSourceFactory {
    files: Vec<PathBuf>,
    format: FileFormat,
    /// Schema as stored in the files (before timestamp conversion).
    raw: SchemaRef,
    /// Schema emitted.
    schema: SchemaRef,
    config: FileSourceConfig,
}

impl SourceFactory for FileSourceFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    /// JSON lines decode only the fields of the pruned schema (others are
    /// skipped while parsing, never built).
    fn project(&self, schema: &Schema) -> Option<Arc<dyn SourceFactory>> {
        if self.format != FileFormat::Jsonl {
            return None;
        }
        Some(Arc::new(FileSourceFactory {
            files: self.files.clone(),
            format: self.format,
            raw: Arc::new(schema.clone()),
            schema: Arc::new(schema.clone()),
            config: self.config.clone(),
        }))
    }
    fn bounded(&self) -> bool {
        true
    }
    fn create(&self, instance: usize, parallelism: usize) -> Result<Box<dyn Source>> {
        let split_size = self
            .config
            .split_size
            .map_or(DEFAULT_SPLIT_BYTES, |b| b.0.max(1));
        let splits = splits(&self.files, self.format, split_size, instance, parallelism)?;
        // JSON decodes straight into the final types; CSV and Parquet are cast after decoding.
        let decode_schema = match self.format {
            FileFormat::Jsonl => Arc::clone(&self.schema),
            _ => Arc::clone(&self.raw),
        };
        Ok(Box::new(FileSource {
            splits,
            format: self.format,
            decoder: LineDecoder::new(
                decode_schema,
                if self.format == FileFormat::Csv {
                    TextFormat::Csv
                } else {
                    TextFormat::Jsonl
                },
                self.config.delimiter as u8,
            )
            .with_parser(self.config.json_parser),
            schema: Arc::clone(&self.schema),
            header: self.config.header,
            batch_size: self.config.batch_size,
            current: None,
            finished: None,
            known_line: None,
        }))
    }
}

/// A byte range of a file, read by blocking reads on the blocking pool
/// straight into the reader's buffer (tokio's file copies every read out of
/// a buffer of its own).
struct FileRange {
    file: Option<std::fs::File>,
    /// Bytes left in the range.
    left: u64,
}

#[async_trait]
impl ByteInput for FileRange {
    async fn read_into(&mut self, buf: &mut Vec<u8>, max: usize) -> std::io::Result<usize> {
        let want = (max as u64).min(self.left);
        let Some(mut file) = self.file.take().filter(|_| want > 0) else {
            return Ok(0);
        };
        let mut owned = std::mem::take(buf);
        let (file, owned, read) = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            owned.reserve(want as usize);
            let read = (&mut file).take(want).read_to_end(&mut owned);
            (file, owned, read)
        })
        .await
        .map_err(std::io::Error::other)?;
        *buf = owned;
        self.file = Some(file);
        let n = read?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A text range being read.
struct TextRange {
    reader: TextReader<FileRange>,
    path: PathBuf,
    /// Where the range ends (`u64::MAX`: the end of the file).
    end: u64,
}

impl TextRange {
    fn name(&self) -> &str {
        self.reader.name()
    }
    fn offset(&self) -> u64 {
        self.reader.offset()
    }
    fn line(&self) -> u64 {
        self.reader.line()
    }
}

enum Reader {
    Text(Box<TextRange>),
    Parquet {
        reader: ParquetRecordBatchReader,
        name: String,
        /// Rows read so far (the position within a Parquet file).
        rows: u64,
    },
}

/// Position of a file that has been read to the end.
const FINISHED: u64 = u64::MAX;

/// Default `split_size`: the ranges of a text file dealt to the instances
/// of a parallel source.
pub const DEFAULT_SPLIT_BYTES: u64 = 16 << 20;

/// The part of a file one instance reads: the lines starting in `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Split {
    path: PathBuf,
    start: u64,
    /// Exclusive; `u64::MAX` for "to the end".
    end: u64,
}

/// The splits instance `instance` of `parallelism` reads, in file order.
fn splits(
    files: &[PathBuf],
    format: FileFormat,
    split_size: u64,
    instance: usize,
    parallelism: usize,
) -> Result<VecDeque<Split>> {
    let mut out = VecDeque::new();
    for (i, path) in files.iter().enumerate() {
        let whole = Split {
            path: path.clone(),
            start: 0,
            end: u64::MAX,
        };
        if parallelism <= 1 || format == FileFormat::Parquet {
            if i % parallelism.max(1) == instance {
                out.push_back(whole);
            }
            continue;
        }
        let name = path.display().to_string();
        let size = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading {name}"), e))?
            .len();
        if size <= split_size {
            if i % parallelism == instance {
                out.push_back(whole);
            }
            continue;
        }
        let ranges = size.div_ceil(split_size);
        for k in (instance as u64..ranges).step_by(parallelism) {
            let start = line_start_from(path, k * split_size)?;
            let end = line_start_from(path, ((k + 1) * split_size).min(size))?;
            if start < end {
                out.push_back(Split {
                    path: path.clone(),
                    start,
                    end,
                });
            }
        }
    }
    Ok(out)
}

/// The offset of the first line starting at or after `pos`: `pos` itself at
/// 0 or right after a newline, else just past the next newline (or the end
/// of the file).
fn line_start_from(path: &Path, pos: u64) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    if pos == 0 {
        return Ok(0);
    }
    let name = path.display().to_string();
    let io = |e| Error::io(format!("reading {name}"), e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut at = file.seek(SeekFrom::Start(pos - 1)).map_err(io)?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(at);
        }
        if let Some(i) = memchr::memchr(b'\n', &buf[..n]) {
            return Ok(at + i as u64 + 1);
        }
        at += n as u64;
    }
}

struct FileSource {
    splits: VecDeque<Split>,
    format: FileFormat,
    decoder: LineDecoder,
    schema: SchemaRef,
    header: bool,
    batch_size: usize,
    current: Option<Reader>,
    /// The last split read to the end: its file and end.
    finished: Option<(String, u64)>,
    /// A known line start: file, byte offset and 1-based line number (so
    /// the next range of the same file counts lines from there).
    known_line: Option<(PathBuf, u64, u64)>,
}

impl FileSource {
    async fn open_next(&mut self) -> Result<bool> {
        self.open_next_at(None).await
    }

    /// Opens the next split, positioned at `position` (bytes for text, rows
    /// for Parquet), or at its start.
    async fn open_next_at(&mut self, position: Option<u64>) -> Result<bool> {
        let Some(split) = self.splits.pop_front() else {
            return Ok(false);
        };
        let position = position.unwrap_or(split.start);
        let path = split.path;
        let name = path.display().to_string();
        self.current = Some(match self.format {
            FileFormat::Parquet => {
                let file = std::fs::File::open(&path)
                    .map_err(|e| Error::io(format!("opening {name}"), e))?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| {
                        b.with_batch_size(self.batch_size)
                            .with_offset(position as usize)
                            .build()
                    })
                    .map_err(|e| Error::Decode {
                        location: name.clone(),
                        message: e.to_string(),
                    })?;
                Reader::Parquet {
                    reader,
                    name,
                    rows: position,
                }
            }
            _ => {
                use std::io::{Seek, SeekFrom};
                let mut file = std::fs::File::open(&path)
                    .map_err(|e| Error::io(format!("opening {name}"), e))?;
                // Lines before `position` are counted for dead letters,
                // from the last known line start of this file if there is one.
                let (from, line) = match &self.known_line {
                    Some((p, byte, line)) if *p == path && *byte <= position => (*byte, *line),
                    _ => (0, 1),
                };
                let line = line + count_lines(&path, from, position).await?;
                file.seek(SeekFrom::Start(position))
                    .map_err(|e| Error::io(format!("reading {name}"), e))?;
                let skip_header = self.format == FileFormat::Csv && self.header;
                let file = FileRange {
                    file: Some(file),
                    left: split.end.saturating_sub(position),
                };
                Reader::Text(Box::new(TextRange {
                    reader: TextReader::new(file, name, self.decoder.clone(), skip_header)
                        .resume_at(position, line),
                    path: path.clone(),
                    end: split.end,
                }))
            }
        });
        Ok(true)
    }

    /// Casts decoded columns to the emitted schema (integer → timestamp).
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if batch.schema().fields() == self.schema.fields() {
            return Ok(batch);
        }
        let columns = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(Arc::clone(c))
                } else {
                    cast(c, f.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::arrow("converting timestamps", e))?;
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| Error::arrow("converting timestamps", e))
    }
}

#[async_trait]
impl Source for FileSource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        loop {
            if self.current.is_none() && !self.open_next().await? {
                return Ok(None);
            }
            let produced = match self.current.as_mut() {
                Some(Reader::Parquet { reader, name, rows }) => match reader.next() {
                    Some(batch) => {
                        let batch =
                            batch.map_err(|e| Error::arrow(format!("reading {name}"), e))?;
                        *rows += batch.num_rows() as u64;
                        Some(SourceBatch {
                            data: Some(batch),
                            dead_letters: Vec::new(),
                            splits: None,
                        })
                    }
                    None => None,
                },
                Some(Reader::Text(range)) => range.reader.next().await?,
                None => None,
            };
            match produced {
                Some(mut batch) => {
                    batch.data = batch.data.map(|b| self.conform(b)).transpose()?;
                    return Ok(Some(batch));
                }
                None => {
                    self.finished = match self.current.take() {
                        Some(Reader::Text(r)) => {
                            self.known_line = Some((r.path.clone(), r.offset(), r.line()));
                            Some((r.name().to_string(), r.end))
                        }
                        Some(Reader::Parquet { name, .. }) => Some((name, FINISHED)),
                        None => None,
                    };
                }
            }
        }
    }

    /// The file being read and the position of its next record (bytes for
    /// text, rows for Parquet), or the last file read to the end.
    fn offset(&mut self, _checkpoint: u64) -> SourceOffset {
        match (&self.current, &self.finished) {
            (Some(Reader::Text(r)), _) => SourceOffset::File {
                path: r.name().to_string(),
                byte: r.offset(),
            },
            (Some(Reader::Parquet { name, rows, .. }), _) => SourceOffset::File {
                path: name.clone(),
                byte: *rows,
            },
            (None, Some((done, end))) => SourceOffset::File {
                path: done.clone(),
                byte: *end,
            },
            (None, None) => SourceOffset::None,
        }
    }

    async fn seek(&mut self, offset: &SourceOffset) -> Result<()> {
        let (path, position) = match offset {
            SourceOffset::None => return Ok(()),
            SourceOffset::File { path, byte } => (path, *byte),
            other => return Err(Error::Other(format!("cannot resume from {other:?}"))),
        };
        // Splits are read in file order: skip those before the recorded one.
        while self
            .splits
            .front()
            .is_some_and(|f| f.path.display().to_string() != *path)
        {
            self.splits.pop_front();
        }
        if self.splits.is_empty() {
            return Err(Error::Other(format!(
                "cannot resume: {path}, where the checkpoint stopped reading, is no longer among the input files"
            )));
        }
        // Ranges of that file read to the end (or the whole file: FINISHED).
        while self
            .splits
            .front()
            .is_some_and(|f| f.path.display().to_string() == *path && f.end <= position)
        {
            self.splits.pop_front();
        }
        self.finished = Some((path.clone(), position));
        match self.splits.front() {
            Some(f) if f.path.display().to_string() == *path && f.start <= position => {
                self.open_next_at(Some(position)).await.map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

/// How many lines bytes `from..to` of `path` hold (read in large blocks on
/// the blocking pool: a range may start deep in a large file).
async fn count_lines(path: &Path, from: u64, to: u64) -> Result<u64> {
    if to <= from {
        return Ok(0);
    }
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let name = path.display().to_string();
        let io = |e| Error::io(format!("reading {name}"), e);
        let mut file = std::fs::File::open(&path).map_err(io)?;
        file.seek(SeekFrom::Start(from)).map_err(io)?;
        let mut left = to - from;
        let mut lines = 0;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = file.read(&mut buf[..want]).map_err(io)?;
            if n == 0 {
                return Err(Error::Other(format!(
                    "cannot resume {name} at byte {to}: the file is shorter"
                )));
            }
            lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
            left -= n as u64;
        }
        Ok(lines)
    })
    .await
    .map_err(|e| Error::Other(format!("counting lines: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use streamflow_dsl::Mode;

    /// Reads a source to the end, returning the `v` column.
    async fn drain(source: &mut dyn Source, limit: usize) -> Vec<i64> {
        let mut out = Vec::new();
        let mut batches = 0;
        while batches < limit {
            let Some(batch) = source.next_batch().await.expect("read") else {
                break;
            };
            if let Some(data) = batch.data {
                let v = data
                    .column_by_name("v")
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                    .expect("v");
                out.extend(v.iter().flatten());
            }
            batches += 1;
        }
        out
    }

    #[tokio::test]
    async fn split_instances_read_every_line_once_and_resume_where_the_offset_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all = Vec::new();
        for f in 0..2 {
            let mut text = String::new();
            for i in 0..60_000i64 {
                let v = f * 60_000 + i;
                all.push(v);
                // Lines of varying length, so range cuts fall mid-line.
                let pad = "x".repeat(60 + (v % 41) as usize);
                text.push_str(&format!("{{\"v\": {v}, \"pad\": \"{pad}\"}}\n"));
            }
            assert!(text.len() > 3 << 20, "files are split in several ranges");
            std::fs::write(dir.path().join(format!("{f}.jsonl")), text).expect("write");
        }
        let settings = serde_json::json!({
            "path": format!("{}/*.jsonl", dir.path().display()),
            "schema": {"v": "int64", "pad": "string"},
            "split_size": "1MB",
        });
        let settings = settings.as_object().cloned().expect("object");
        let factory = plan(&SourceContext {
            name: "f",
            path: "sources[0].config",
            settings: &settings,
            mode: Mode::Job,
        })
        .map_err(|d| format!("{d:?}"))
        .expect("plans");
        for parallelism in [1, 2, 3] {
            let mut union = Vec::new();
            for instance in 0..parallelism {
                let mut whole = factory.create(instance, parallelism).expect("source");
                let expected = drain(whole.as_mut(), usize::MAX).await;
                // Stop after each number of batches, record the offset,
                // resume a fresh instance from it: together they read the
                // instance's records once.
                for cut in [1, 2, 3, 5, 8, 13, 21] {
                    let mut first = factory.create(instance, parallelism).expect("source");
                    let mut got = drain(first.as_mut(), cut).await;
                    let offset = first.offset(1);
                    let mut second = factory.create(instance, parallelism).expect("source");
                    second.seek(&offset).await.expect("seek");
                    got.extend(drain(second.as_mut(), usize::MAX).await);
                    assert_eq!(
                        got, expected,
                        "instance {instance}/{parallelism}, cut after {cut} batches at {offset:?}"
                    );
                }
                if parallelism > 1 {
                    assert!(
                        expected.len() < all.len(),
                        "instance {instance} reads a part"
                    );
                }
                union.extend(expected);
            }
            union.sort_unstable();
            assert_eq!(union, all, "parallelism {parallelism}: every line once");
        }
    }
}
