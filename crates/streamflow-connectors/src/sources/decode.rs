//! Decoding newline-delimited text (JSON lines, CSV) into Arrow batches,
//! with malformed lines isolated as dead letters carrying file and line.
//!
//! The fast path decodes a whole chunk of lines at once: JSON lines with
//! simd-json onto Arrow columns ([`super::json`]), falling back to Arrow's
//! JSON reader for what that does not take; CSV with Arrow's reader. Only
//! when the chunk fails is it re-decoded line by line to find the bad lines;
//! the good ones are then decoded together.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde::Deserialize;
use streamflow_core::{DeadLetter, Error, Result, SourceBatch};

use super::json::TapeDecoder;

/// Text formats read line by line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TextFormat {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// Comma-separated values.
    Csv,
}

/// Rows the reused JSON decoder takes per chunk (a chunk is a few MB).
const FAST_ROWS: usize = 1 << 22;

/// The parser of JSON lines' fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum JsonParser {
    /// simd-json onto Arrow columns, arrow-json for chunks it does not take.
    #[default]
    #[serde(rename = "simd-json")]
    Simd,
    /// Arrow's JSON reader only.
    #[serde(rename = "arrow-json")]
    Arrow,
}

/// Decodes chunks of complete lines in one schema; lines that fail become
/// dead letters with their file and line.
pub struct LineDecoder {
    schema: SchemaRef,
    format: TextFormat,
    delimiter: u8,
    /// The JSON decoder of the fast path, kept across chunks so that its
    /// buffers are reused (rebuilt after a failed chunk).
    json: Option<arrow::json::reader::Decoder>,
    parser: JsonParser,
    /// The simd-json decoder, built on first use (`None` inside: the schema
    /// has types it does not build).
    tape: Option<Option<TapeDecoder>>,
}

impl std::fmt::Debug for LineDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineDecoder")
            .field("format", &self.format)
            .finish()
    }
}

impl Clone for LineDecoder {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.schema), self.format, self.delimiter).with_parser(self.parser)
    }
}

impl LineDecoder {
    /// A decoder of `format` lines into `schema` (`delimiter`: CSV only).
    pub fn new(schema: SchemaRef, format: TextFormat, delimiter: u8) -> Self {
        Self {
            schema,
            format,
            delimiter,
            json: None,
            parser: JsonParser::default(),
            tape: None,
        }
    }

    /// Chooses the parser of JSON lines (simd-json by default).
    #[must_use]
    pub fn with_parser(mut self, parser: JsonParser) -> Self {
        self.parser = parser;
        self.tape = None;
        self
    }

    /// The whole chunk in one pass; fails if any line fails.
    fn decode_fast(
        &mut self,
        bytes: &[u8],
        lines: usize,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        if self.format != TextFormat::Jsonl || lines > FAST_ROWS || bytes.is_empty() {
            return self.decode_all(bytes, lines);
        }
        if self.parser == JsonParser::Simd {
            let schema = &self.schema;
            let tape = self
                .tape
                .get_or_insert_with(|| TapeDecoder::new(Arc::clone(schema)));
            if let Some(tape) = tape {
                match tape.decode(bytes) {
                    Ok(batch) => return Ok(batch),
                    Err(why) => tracing::trace!(reason = %why.0, "chunk left to arrow-json"),
                }
            }
        }
        let decoder = match &mut self.json {
            Some(d) => d,
            None => self.json.insert(
                arrow::json::ReaderBuilder::new(Arc::clone(&self.schema))
                    .with_batch_size(FAST_ROWS)
                    .with_coerce_primitive(true)
                    .build_decoder()?,
            ),
        };
        let result = decoder.decode(bytes).and_then(|used| {
            if used < bytes.len() {
                return Err(ArrowError::JsonError(
                    "more records than expected in chunk".into(),
                ));
            }
            decoder.flush()
        });
        if result.is_err() {
            self.json = None;
        }
        result
    }

    /// Decodes `chunk` (complete lines, each ending in `\n`), whose first
    /// line is line `first_line` (1-based) of `file`.
    ///
    /// # Errors
    /// When the good lines cannot be assembled into a batch.
    pub fn decode(&mut self, chunk: &[u8], file: &str, first_line: u64) -> Result<SourceBatch> {
        let lines =
            memchr::memchr_iter(b'\n', chunk).count() + usize::from(!chunk.ends_with(b"\n"));
        if let Ok(data) = self.decode_fast(chunk, lines) {
            return Ok(SourceBatch {
                data,
                dead_letters: Vec::new(),
                splits: None,
            });
        }
        let mut good = Vec::with_capacity(chunk.len());
        let mut dead_letters = Vec::new();
        for (line_no, line) in (first_line..).zip(chunk.split_inclusive(|b| *b == b'\n')) {
            let text = trim_line(line);
            if !text.is_empty() {
                // A line the fast path takes is good; arrow-json judges the rest.
                if let Some(Some(tape)) = &mut self.tape
                    && tape.accepts(line)
                {
                    good.extend_from_slice(line);
                    continue;
                }
                match self.decode_all(line, 1) {
                    Ok(_) => good.extend_from_slice(line),
                    Err(e) => dead_letters.push(DeadLetter {
                        file: Some(file.to_string()),
                        line: Some(line_no),
                        payload: Some(String::from_utf8_lossy(text).into_owned()),
                        error: at_line(&clean_error(&e), line_no),
                    }),
                }
            }
        }
        let data = self.decode_fast(&good, lines).map_err(|e| Error::Decode {
            location: format!("{file}:{first_line}"),
            message: clean_error(&e),
        })?;
        Ok(SourceBatch {
            data,
            dead_letters,
            splits: None,
        })
    }

    fn decode_all(&self, bytes: &[u8], max_rows: usize) -> Result<Option<RecordBatch>, ArrowError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        match self.format {
            TextFormat::Jsonl => {
                let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&self.schema))
                    .with_batch_size(max_rows.max(1))
                    .with_coerce_primitive(true)
                    .build_decoder()?;
                let used = decoder.decode(bytes)?;
                if used < bytes.len() {
                    return Err(ArrowError::JsonError(
                        "more records than expected in chunk".into(),
                    ));
                }
                decoder.flush()
            }
            TextFormat::Csv => {
                // Every line must be one record: a quoted value left open
                // would swallow the next line.
                let records = csv_lines(bytes, self.delimiter)?;
                // Room for one record more than there are lines, to notice
                // a line holding two (a bare carriage return ends a record).
                let mut decoder = arrow::csv::ReaderBuilder::new(Arc::clone(&self.schema))
                    .with_header(false)
                    .with_delimiter(self.delimiter)
                    .with_batch_size(max_rows.max(1) + 1)
                    .build_decoder();
                let mut rest = bytes;
                while !rest.is_empty() {
                    let used = decoder.decode(rest)?;
                    if used == 0 {
                        break;
                    }
                    rest = &rest[used..];
                }
                let _ = decoder.decode(&[])?;
                let batch = decoder.flush()?;
                let rows = batch.as_ref().map_or(0, RecordBatch::num_rows);
                if !rest.is_empty() || rows > max_rows || rows > records {
                    return Err(ArrowError::CsvError(
                        "a line holds more than one record (a carriage return inside a line?)"
                            .into(),
                    ));
                }
                Ok(batch)
            }
        }
    }
}

/// The number of non-blank lines in `bytes`, each checked to hold a CSV
/// record that ends on its own line (a quoted value left open fails).
fn csv_lines(bytes: &[u8], delimiter: u8) -> Result<usize, ArrowError> {
    let quoted = memchr::memchr(b'"', bytes).is_some();
    let mut reader = csv_core::ReaderBuilder::new().delimiter(delimiter).build();
    let mut field = Vec::new();
    let mut records = 0;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if trim_line(line).is_empty() {
            continue;
        }
        records += 1;
        if quoted
            && memchr::memchr(b'"', line).is_some()
            && !closes_on_its_line(&mut reader, &mut field, line)
        {
            return Err(ArrowError::CsvError(
                "a quoted value is not closed on its line".into(),
            ));
        }
    }
    Ok(records)
}

/// Whether the CSV reader, fed `line`, ends a record by the line's end.
fn closes_on_its_line(reader: &mut csv_core::Reader, field: &mut Vec<u8>, line: &[u8]) -> bool {
    use csv_core::ReadFieldResult;
    reader.reset();
    field.resize(line.len() + 1, 0);
    let ended;
    let mut rest = if line.ends_with(b"\n") {
        line
    } else {
        ended = [line, b"\n"].concat();
        &ended[..]
    };
    loop {
        let (result, used, _) = reader.read_field(rest, field);
        rest = &rest[used..];
        match result {
            ReadFieldResult::Field { record_end: true } | ReadFieldResult::End => return true,
            ReadFieldResult::Field { record_end: false } => {}
            ReadFieldResult::InputEmpty | ReadFieldResult::OutputFull => return false,
        }
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r' | b' ' | b'\t') {
        end -= 1;
    }
    &line[..end]
}

/// Arrow's messages about a line decoded alone number it 1: give the
/// line's number in the file instead.
fn at_line(message: &str, line: u64) -> String {
    let mut out = String::with_capacity(message.len() + 8);
    let mut rest = message;
    while let Some(i) = rest.find("line ") {
        let (head, tail) = rest.split_at(i + "line ".len());
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push_str(&line.to_string());
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// Arrow's messages carry a "Json error: " style prefix; keep the substance.
fn clean_error(e: &ArrowError) -> String {
    match e {
        ArrowError::JsonError(m) | ArrowError::CsvError(m) | ArrowError::ParseError(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Splits a stream of bytes into chunks of complete lines, tracking line
/// numbers and byte offsets.
#[derive(Debug, Default)]
pub(crate) struct LineChunker {
    pending: Vec<u8>,
    /// 1-based number of the first line of the next chunk.
    pub(crate) next_line: u64,
    /// Byte offset (in the input) of the next chunk.
    pub(crate) next_offset: u64,
}

impl LineChunker {
    pub(crate) fn new() -> Self {
        Self {
            pending: Vec::new(),
            next_line: 1,
            next_offset: 0,
        }
    }

    /// Appends freshly read bytes.
    #[cfg(test)]
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The buffer reads append to (its spare capacity is filled in place).
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// Buffered bytes not yet returned as a chunk.
    pub(crate) fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Marks every complete line buffered (`at_eof`: the remainder too) as
    /// the next chunk, returning `(first_line, length)`; the chunk is
    /// [`chunk`](Self::chunk) until [`consume`](Self::consume)d.
    pub(crate) fn take(&mut self, at_eof: bool) -> Option<(u64, usize)> {
        let cut = if at_eof {
            if self.pending.is_empty() {
                return None;
            }
            if self.pending.last() != Some(&b'\n') {
                self.pending.push(b'\n');
            }
            self.pending.len()
        } else {
            memchr::memrchr(b'\n', &self.pending)? + 1
        };
        let first = self.next_line;
        self.next_line += memchr::memchr_iter(b'\n', &self.pending[..cut]).count() as u64;
        self.next_offset += cut as u64;
        Some((first, cut))
    }

    /// The first `len` buffered bytes.
    pub(crate) fn chunk(&self, len: usize) -> &[u8] {
        &self.pending[..len]
    }

    /// Drops the first `len` buffered bytes (a decoded chunk), keeping the
    /// buffer's allocation for the next reads.
    pub(crate) fn consume(&mut self, len: usize) {
        self.pending.drain(..len);
    }
}

/// Where a [`TextReader`]'s bytes come from.
#[async_trait::async_trait]
pub(crate) trait ByteInput: Send {
    /// Appends up to `max` bytes to `buf`, returning how many; 0 at the end.
    async fn read_into(&mut self, buf: &mut Vec<u8>, max: usize) -> std::io::Result<usize>;
}

#[async_trait::async_trait]
impl ByteInput for tokio::io::Stdin {
    async fn read_into(&mut self, buf: &mut Vec<u8>, max: usize) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        buf.reserve(max);
        self.read_buf(buf).await
    }
}

/// Reads a byte stream as decoded batches of lines.
pub(crate) struct TextReader<R> {
    input: R,
    name: String,
    decoder: LineDecoder,
    chunker: LineChunker,
    eof: bool,
    skip_header: bool,
    min_chunk: usize,
}

impl<R: ByteInput> TextReader<R> {
    /// Bytes read per call.
    const CHUNK_BYTES: usize = 1 << 20;

    /// Reads `input` (called `name` in dead letters); `skip_header` drops the first line.
    pub(crate) fn new(input: R, name: String, decoder: LineDecoder, skip_header: bool) -> Self {
        Self {
            input,
            name,
            decoder,
            chunker: LineChunker::new(),
            eof: false,
            skip_header,
            min_chunk: Self::CHUNK_BYTES / 2,
        }
    }

    /// Decodes whatever complete lines each read returns, without waiting to
    /// fill a chunk (interactive input).
    pub(crate) fn eager(mut self) -> Self {
        self.min_chunk = 1;
        self
    }

    /// Continues an input already positioned at byte `offset`, whose next
    /// line is line `line` (1-based): after a restore.
    pub(crate) fn resume_at(mut self, offset: u64, line: u64) -> Self {
        self.chunker.next_offset = offset;
        self.chunker.next_line = line;
        if offset > 0 {
            self.skip_header = false;
        }
        self
    }

    /// 1-based number of the next undecoded line.
    pub(crate) fn line(&self) -> u64 {
        self.chunker.next_line
    }

    /// Byte offset of the next undecoded line.
    pub(crate) fn offset(&self) -> u64 {
        self.chunker.next_offset
    }

    /// Name of the input.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The next decoded chunk, `None` at end of input.
    pub(crate) async fn next(&mut self) -> Result<Option<SourceBatch>> {
        loop {
            let chunk = if self.eof {
                match self.chunker.take(true) {
                    Some(c) => c,
                    None => return Ok(None),
                }
            } else {
                // Read straight into the chunker's buffer (no copy).
                let n = self
                    .input
                    .read_into(self.chunker.buffer(), Self::CHUNK_BYTES)
                    .await
                    .map_err(|e| Error::io(format!("reading {}", self.name), e))?;
                if n == 0 {
                    self.eof = true;
                    continue;
                }
                if self.chunker.buffered() < self.min_chunk {
                    continue;
                }
                match self.chunker.take(false) {
                    Some(c) => c,
                    None => continue,
                }
            };
            let (mut first, len) = chunk;
            let mut bytes = self.chunker.chunk(len);
            if self.skip_header {
                self.skip_header = false;
                let cut = memchr::memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1);
                bytes = &bytes[cut..];
                first += 1;
            }
            let decoded = self.decoder.decode(bytes, &self.name, first);
            self.chunker.consume(len);
            return decoded.map(Some);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn bad_json_lines_become_dead_letters_with_line_numbers() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let mut d = LineDecoder::new(schema, TextFormat::Jsonl, b',');
        let chunk = b"{\"a\": 1}\n{\"a\": \n\n{\"a\": \"x\"}\n{\"a\": 4}\n";
        let out = d.decode(chunk, "in.jsonl", 10).expect("decodes");
        let data = out.data.expect("good rows");
        let a = data
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert_eq!(a.values().to_vec(), vec![1, 4]);
        let lines: Vec<u64> = out.dead_letters.iter().filter_map(|d| d.line).collect();
        assert_eq!(lines, vec![11, 13]);
        assert_eq!(out.dead_letters[0].payload.as_deref(), Some("{\"a\":"));
        assert_eq!(a.null_count(), 0);
    }

    #[test]
    fn csv_dead_letters_name_the_line_in_the_file() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let mut d = LineDecoder::new(schema, TextFormat::Csv, b',');
        let out = d
            .decode(b"1,x\n2\nz,y\n4,w\n", "in.csv", 2)
            .expect("decodes");
        assert_eq!(out.data.expect("rows").num_rows(), 2);
        let got: Vec<(Option<u64>, &str)> = out
            .dead_letters
            .iter()
            .map(|d| (d.line, d.error.as_str()))
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, Some(3));
        assert!(got[0].1.contains("line 3"), "{}", got[0].1);
        assert_eq!(got[1].0, Some(4));
        assert!(got[1].1.contains("line 4"), "{}", got[1].1);
    }

    #[test]
    fn an_open_quote_does_not_swallow_the_next_line() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let mut d = LineDecoder::new(schema, TextFormat::Csv, b',');
        let out = d
            .decode(b"1,\"x, y\"\n2,\"open\n3,z\n", "in.csv", 1)
            .expect("decodes");
        let batch = out.data.expect("rows");
        let b = batch.column(1).as_string::<i32>();
        assert_eq!((b.value(0), b.value(1)), ("x, y", "z"));
        assert_eq!(out.dead_letters.len(), 1);
        assert_eq!(out.dead_letters[0].line, Some(2));
        assert!(
            out.dead_letters[0]
                .error
                .contains("quoted value is not closed"),
            "{}",
            out.dead_letters[0].error
        );
    }

    #[test]
    fn numbers_in_a_string_column_are_read_as_text() {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        let mut d = LineDecoder::new(schema, TextFormat::Jsonl, b',');
        let out = d
            .decode(b"{\"s\": \"a\"}\n{\"s\": 10}\n{\"s\": true}\n", "in", 1)
            .expect("decodes");
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        let data = out.data.expect("rows");
        let s = data
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("utf8");
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![Some("a"), Some("10"), Some("true")]
        );
    }

    /// Lines of JSON-ish or CSV-ish bytes, with random damage.
    fn damaged_lines(json: bool) -> impl proptest::strategy::Strategy<Value = Vec<Vec<u8>>> {
        use proptest::prelude::*;
        let good = if json {
            prop_oneof![
                (any::<i64>(), "[a-z\\\\\"]{0,6}").prop_map(|(a, b)| format!(
                    "{{\"a\": {a}, \"b\": {}, \"o\": {{\"x\": 1.5}}}}",
                    serde_json::to_string(&b).expect("str")
                )),
                Just("{\"a\": null, \"o\": null}".to_string()),
                Just("{\"a\": \"7\", \"b\": 3}".to_string()),
            ]
            .boxed()
        } else {
            (any::<i64>(), "[a-z]{0,6}")
                .prop_map(|(a, b)| format!("{a},{b}"))
                .boxed()
        };
        let line = (good, any::<u8>(), any::<prop::sample::Index>(), 0u8..4).prop_map(
            |(text, byte, at, damage)| {
                let mut bytes = text.into_bytes();
                let i = at.index(bytes.len().max(1)).min(bytes.len());
                match damage {
                    0 => bytes.truncate(i),
                    1 if byte != b'\n' => bytes.insert(i, byte),
                    _ => {}
                }
                bytes
            },
        );
        proptest::collection::vec(line, 1..30)
    }

    fn nested_schema() -> SchemaRef {
        let inner = arrow::datatypes::Fields::from(vec![Field::new("x", DataType::Float64, true)]);
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
            Field::new("o", DataType::Struct(inner), true),
        ]))
    }

    proptest::proptest! {
        /// Whatever the bytes, every non-blank line is a row or a dead letter.
        #[test]
        fn every_line_is_a_row_or_a_dead_letter(
            lines in damaged_lines(true),
            csv in damaged_lines(false),
        ) {
            for (format, lines, schema) in [
                (TextFormat::Jsonl, lines, nested_schema()),
                (
                    TextFormat::Csv,
                    csv,
                    Arc::new(Schema::new(vec![
                        Field::new("a", DataType::Int64, true),
                        Field::new("b", DataType::Utf8, true),
                    ])),
                ),
            ] {
                let mut chunk = lines.join(&b'\n');
                chunk.push(b'\n');
                let expected = chunk
                    .split(|b| *b == b'\n')
                    .filter(|l| !trim_line(l).is_empty())
                    .count();
                let mut d = LineDecoder::new(schema, format, b',');
                let out = d.decode(&chunk, "fuzz", 1).expect("decodes");
                let rows = out.data.map_or(0, |b| b.num_rows());
                proptest::prop_assert!(
                    rows + out.dead_letters.len() == expected,
                    "{} rows + {} dead letters for {} lines",
                    rows,
                    out.dead_letters.len(),
                    expected
                );
            }
        }
    }

    #[test]
    fn chunker_tracks_lines_and_offsets() {
        let mut c = LineChunker::new();
        c.push(b"a\nb\nc");
        let (first, len) = c.take(false).expect("two lines");
        assert_eq!((first, c.chunk(len)), (1, b"a\nb\n".as_slice()));
        c.consume(len);
        assert!(c.take(false).is_none());
        let (first, len) = c.take(true).expect("rest");
        assert_eq!((first, c.chunk(len)), (3, b"c\n".as_slice()));
        assert_eq!(c.next_offset, 6);
    }
}
