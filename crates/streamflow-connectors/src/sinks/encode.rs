//! Encoding batches as JSON lines, CSV or Parquet into any writer.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use serde::Deserialize;
use streamflow_core::{Error, Result};

/// Output encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// CSV with a header line.
    Csv,
    /// Apache Parquet (files only).
    Parquet,
    /// An aligned text table (stdout only).
    Table,
}

impl Encoding {
    /// File extension for the encoding.
    pub fn extension(self) -> &'static str {
        match self {
            Encoding::Jsonl => "jsonl",
            Encoding::Csv => "csv",
            Encoding::Parquet => "parquet",
            Encoding::Table => "txt",
        }
    }
}

/// A writer counting the bytes that pass through it.
pub(crate) struct Counting<W> {
    inner: W,
    bytes: Arc<AtomicU64>,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An open encoder over a writer.
pub(crate) struct Encoder<W: Write + Send> {
    kind: Kind<W>,
    bytes: Arc<AtomicU64>,
}

enum Kind<W: Write + Send> {
    Json(arrow::json::LineDelimitedWriter<Counting<W>>),
    Csv(arrow::csv::Writer<Counting<W>>),
    Parquet(ArrowWriter<Counting<W>>),
    Table(Counting<W>),
}

impl<W: Write + Send> Encoder<W> {
    pub(crate) fn new(encoding: Encoding, schema: &SchemaRef, out: W) -> Result<Self> {
        let bytes = Arc::new(AtomicU64::new(0));
        let out = Counting {
            inner: out,
            bytes: Arc::clone(&bytes),
        };
        use Kind as Encoder;
        let kind = match encoding {
            Encoding::Jsonl => Encoder::Json(arrow::json::LineDelimitedWriter::new(out)),
            Encoding::Csv => Encoder::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
            ),
            Encoding::Parquet => Encoder::Parquet(
                ArrowWriter::try_new(out, schema.clone(), None)
                    .map_err(|e| Error::Other(format!("parquet writer: {e}")))?,
            ),
            Encoding::Table => Encoder::Table(out),
        };
        Ok(Self { kind, bytes })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let err = |e: arrow::error::ArrowError| Error::arrow("encoding output", e);
        use Kind as Encoder;
        match &mut self.kind {
            Encoder::Json(w) => w.write(batch).map_err(err),
            Encoder::Csv(w) => w.write(batch).map_err(err),
            Encoder::Parquet(w) => w
                .write(batch)
                .map_err(|e| Error::Other(format!("writing parquet: {e}"))),
            Encoder::Table(w) => {
                let table = arrow::util::pretty::pretty_format_batches(std::slice::from_ref(batch))
                    .map_err(err)?;
                writeln!(w, "{table}").map_err(|e| Error::io("writing table", e))
            }
        }
    }

    /// Bytes written so far (Parquet: including buffered row groups).
    pub(crate) fn bytes(&self) -> u64 {
        let written = self.bytes.load(Ordering::Relaxed);
        match &self.kind {
            Kind::Parquet(w) => written + w.in_progress_size() as u64,
            _ => written,
        }
    }

    /// Flushes buffered rows without closing (JSON, CSV, table).
    pub(crate) fn flush(&mut self) -> Result<()> {
        let r = match &mut self.kind {
            Kind::Json(w) => w.get_mut().flush(),
            Kind::Table(w) => w.flush(),
            Kind::Csv(_) | Kind::Parquet(_) => Ok(()),
        };
        r.map_err(|e| Error::io("flushing output", e))
    }

    /// Finishes the encoding (Parquet footer) and returns the writer.
    pub(crate) fn close(self) -> Result<W> {
        use Kind as Encoder;
        match self.kind {
            Encoder::Json(mut w) => {
                w.finish().map_err(|e| Error::arrow("closing output", e))?;
                Ok(w.into_inner().inner)
            }
            Encoder::Csv(w) => Ok(w.into_inner().inner),
            Encoder::Parquet(w) => Ok(w
                .into_inner()
                .map_err(|e| Error::Other(format!("closing parquet: {e}")))?
                .inner),
            Encoder::Table(w) => Ok(w.inner),
        }
    }
}
