//! JSON lines parsed with simd-json and appended straight to Arrow columns.
//!
//! The fast path of [`LineDecoder`](super::decode::LineDecoder) for JSON
//! lines: each line is tokenized by simd-json onto a reused tape, and only
//! the schema's columns (nested structs included) are built from it; keys
//! the schema does not hold are stepped over. A value this decoder does not
//! take exactly as Arrow's JSON reader would (a string where a number or a
//! timestamp is expected, a float for an integer column, a list, ...) fails
//! the chunk, which Arrow's reader then decodes: results never differ from
//! arrow-json's, only the speed does.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBufferBuilder, LargeStringBuilder, PrimitiveArray, RecordBatch,
    RecordBatchOptions, StringBuilder, StructArray,
};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Fields, Float64Type, Int32Type, Int64Type, SchemaRef, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use arrow::error::ArrowError;
use simd_json::{Node, StaticNode};

/// Why a chunk left the fast path (it is then decoded by arrow-json).
#[derive(Debug)]
pub(crate) struct Unsupported(pub(crate) String);

type Step<T> = std::result::Result<T, Unsupported>;

fn unsupported<T>(what: impl Into<String>) -> Step<T> {
    Err(Unsupported(what.into()))
}

/// Decodes JSON lines into one schema on simd-json's tape.
pub(crate) struct TapeDecoder {
    schema: SchemaRef,
    root: StructColumn,
    /// The line being parsed (simd-json rewrites escaped strings in place,
    /// and the chunk must stay intact for the fallback).
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
    tape: Option<simd_json::tape::Tape<'static>>,
}

impl std::fmt::Debug for TapeDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapeDecoder").finish_non_exhaustive()
    }
}

impl TapeDecoder {
    /// A decoder into `schema`; `None` when a column's type is not one this
    /// decoder builds (32- and 64-bit integers, 64-bit floats, booleans,
    /// strings, timestamps and structs of them are).
    pub(crate) fn new(schema: SchemaRef) -> Option<Self> {
        let root = StructColumn::new(schema.fields())?;
        Some(Self {
            schema,
            root,
            scratch: Vec::new(),
            buffers: simd_json::Buffers::new(4096),
            tape: Some(simd_json::tape::Tape::null()),
        })
    }

    /// Decodes `chunk` (whole lines); blank lines are skipped. On any line
    /// it cannot take the partial columns are dropped and the reason
    /// returned.
    pub(crate) fn decode(&mut self, chunk: &[u8]) -> Step<Option<RecordBatch>> {
        let result = self.append_lines(chunk);
        if let Err(e) = result {
            self.root.clear();
            return Err(e);
        }
        if self.root.rows == 0 {
            return Ok(None);
        }
        let rows = self.root.rows;
        let (_, columns, _) = self.root.finish()?;
        RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map(Some)
        .map_err(|e| Unsupported(e.to_string()))
    }

    /// Whether `line` decodes on the fast path (then arrow-json decodes it
    /// the same); nothing is kept.
    pub(crate) fn accepts(&mut self, line: &[u8]) -> bool {
        let ok = self.append_lines(line).is_ok();
        self.root.clear();
        ok
    }

    fn append_lines(&mut self, chunk: &[u8]) -> Step<()> {
        let mut tape = self.tape.take().unwrap_or_else(simd_json::tape::Tape::null);
        let mut outcome = Ok(());
        let mut start = 0;
        while start < chunk.len() {
            let end = memchr::memchr(b'\n', &chunk[start..]).map_or(chunk.len(), |i| start + i);
            let line = &chunk[start..end];
            start = end + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.scratch.clear();
            self.scratch.extend_from_slice(line);
            let mut parsed = tape.reset();
            let step = match simd_json::fill_tape(&mut self.scratch, &mut self.buffers, &mut parsed)
            {
                Ok(()) => match parsed.0.first() {
                    Some(Node::Object { .. }) => self.root.append_object(&parsed.0).map(drop),
                    _ => unsupported("a line is not a JSON object"),
                },
                Err(e) => unsupported(e.to_string()),
            };
            tape = parsed.reset();
            if step.is_err() {
                outcome = step;
                break;
            }
        }
        self.tape = Some(tape);
        outcome
    }
}

/// Number of tape nodes of the value starting at `node` (itself included).
fn span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// One column being built.
enum Column {
    Int32(Primitive<Int32Type>),
    Int64(Primitive<Int64Type>),
    Float64(Primitive<Float64Type>),
    Timestamp(Primitive<Int64Type>, TimeUnit, Option<Arc<str>>),
    Boolean {
        values: BooleanBufferBuilder,
        nulls: Validity,
    },
    Utf8(StringBuilder),
    LargeUtf8(LargeStringBuilder),
    Struct(StructColumn),
}

impl Column {
    fn new(data_type: &DataType) -> Option<Self> {
        Some(match data_type {
            DataType::Int32 => Self::Int32(Primitive::default()),
            DataType::Int64 => Self::Int64(Primitive::default()),
            DataType::Float64 => Self::Float64(Primitive::default()),
            DataType::Timestamp(unit, tz) => {
                Self::Timestamp(Primitive::default(), *unit, tz.clone())
            }
            DataType::Boolean => Self::Boolean {
                values: BooleanBufferBuilder::new(0),
                nulls: Validity::default(),
            },
            DataType::Utf8 => Self::Utf8(StringBuilder::new()),
            DataType::LargeUtf8 => Self::LargeUtf8(LargeStringBuilder::new()),
            DataType::Struct(fields) => Self::Struct(StructColumn::new(fields)?),
            _ => return None,
        })
    }

    /// Appends the value at the start of `nodes`; returns the nodes it spans.
    fn append(&mut self, nodes: &[Node<'_>], name: &str) -> Step<usize> {
        let Some(node) = nodes.first() else {
            return unsupported("truncated tape");
        };
        if matches!(node, Node::Static(StaticNode::Null)) {
            self.append_null();
            return Ok(1);
        }
        let ok = match (&mut *self, node) {
            (Self::Int64(p), Node::Static(s)) => int(s).map(|v| p.push(v)).is_some(),
            (Self::Int32(p), Node::Static(s)) => int(s)
                .and_then(|v| i32::try_from(v).ok())
                .map(|v| p.push(v))
                .is_some(),
            (Self::Timestamp(p, ..), Node::Static(s)) => int(s).map(|v| p.push(v)).is_some(),
            (Self::Float64(p), Node::Static(s)) => float(s).map(|v| p.push(v)).is_some(),
            (Self::Boolean { values, nulls }, Node::Static(StaticNode::Bool(b))) => {
                values.append(*b);
                nulls.push(true);
                true
            }
            (Self::Utf8(b), Node::String(s)) => {
                b.append_value(s);
                true
            }
            (Self::LargeUtf8(b), Node::String(s)) => {
                b.append_value(s);
                true
            }
            (Self::Struct(c), Node::Object { .. }) => return c.append_object(nodes),
            _ => false,
        };
        if ok {
            Ok(1)
        } else {
            unsupported(format!("value of {name} taken by arrow-json's rules"))
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Int32(p) => p.push_null(),
            Self::Int64(p) | Self::Timestamp(p, ..) => p.push_null(),
            Self::Float64(p) => p.push_null(),
            Self::Boolean { values, nulls } => {
                values.append(false);
                nulls.push(false);
            }
            Self::Utf8(b) => b.append_null(),
            Self::LargeUtf8(b) => b.append_null(),
            Self::Struct(c) => c.append_null(),
        }
    }

    fn clear(&mut self) {
        match self {
            Self::Int32(p) => p.clear(),
            Self::Int64(p) | Self::Timestamp(p, ..) => p.clear(),
            Self::Float64(p) => p.clear(),
            Self::Boolean { values, nulls } => {
                values.truncate(0);
                nulls.clear();
            }
            Self::Utf8(b) if !b.is_empty() => drop(b.finish()),
            Self::LargeUtf8(b) if !b.is_empty() => drop(b.finish()),
            Self::Utf8(_) | Self::LargeUtf8(_) => {}
            Self::Struct(c) => c.clear(),
        }
    }

    fn finish(&mut self) -> Step<ArrayRef> {
        Ok(match self {
            Self::Int32(p) => Arc::new(p.finish()),
            Self::Int64(p) => Arc::new(p.finish()),
            Self::Float64(p) => Arc::new(p.finish()),
            Self::Timestamp(p, unit, tz) => {
                let (values, nulls) = p.take();
                match unit {
                    TimeUnit::Second => timestamp::<TimestampSecondType>(values, nulls, tz),
                    TimeUnit::Millisecond => {
                        timestamp::<TimestampMillisecondType>(values, nulls, tz)
                    }
                    TimeUnit::Microsecond => {
                        timestamp::<TimestampMicrosecondType>(values, nulls, tz)
                    }
                    TimeUnit::Nanosecond => timestamp::<TimestampNanosecondType>(values, nulls, tz),
                }
            }
            Self::Boolean { values, nulls } => Arc::new(arrow::array::BooleanArray::new(
                values.finish(),
                nulls.finish(),
            )),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::LargeUtf8(b) => Arc::new(b.finish()),
            Self::Struct(c) => {
                let (fields, columns, nulls) = c.finish()?;
                Arc::new(
                    StructArray::try_new(fields, columns, nulls)
                        .map_err(|e: ArrowError| Unsupported(e.to_string()))?,
                )
            }
        })
    }
}

fn timestamp<T: arrow::datatypes::ArrowTimestampType>(
    values: Vec<i64>,
    nulls: Option<NullBuffer>,
    tz: &Option<Arc<str>>,
) -> ArrayRef {
    Arc::new(
        PrimitiveArray::<T>::new(ScalarBuffer::from(values), nulls).with_timezone_opt(tz.clone()),
    )
}

/// An integer JSON number (floats are left to arrow-json).
fn int(node: &StaticNode) -> Option<i64> {
    match node {
        StaticNode::I64(v) => Some(*v),
        StaticNode::U64(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

fn float(node: &StaticNode) -> Option<f64> {
    match node {
        StaticNode::F64(v) => Some(*v),
        StaticNode::I64(v) => Some(*v as f64),
        StaticNode::U64(v) => Some(*v as f64),
        _ => None,
    }
}

/// Values and validity of a primitive column.
struct Primitive<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
    nulls: Validity,
}

impl<T: ArrowPrimitiveType> Default for Primitive<T> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            nulls: Validity::default(),
        }
    }
}

impl<T: ArrowPrimitiveType> Primitive<T> {
    fn push(&mut self, v: T::Native) {
        self.values.push(v);
        self.nulls.push(true);
    }

    fn push_null(&mut self) {
        self.values.push(T::Native::default());
        self.nulls.push(false);
    }

    fn clear(&mut self) {
        self.values.clear();
        self.nulls.clear();
    }

    fn take(&mut self) -> (Vec<T::Native>, Option<NullBuffer>) {
        let values = std::mem::take(&mut self.values);
        (values, self.nulls.finish())
    }

    fn finish(&mut self) -> PrimitiveArray<T> {
        let (values, nulls) = self.take();
        PrimitiveArray::new(ScalarBuffer::from(values), nulls)
    }
}

/// A validity bitmap that is only materialised once a null appears.
#[derive(Default)]
struct Validity {
    len: usize,
    bits: Option<BooleanBufferBuilder>,
}

impl Validity {
    fn push(&mut self, valid: bool) {
        match &mut self.bits {
            Some(bits) => bits.append(valid),
            None if valid => {}
            None => {
                let mut bits = BooleanBufferBuilder::new(self.len + 1024);
                bits.append_n(self.len, true);
                bits.append(false);
                self.bits = Some(bits);
            }
        }
        self.len += 1;
    }

    fn clear(&mut self) {
        self.len = 0;
        self.bits = None;
    }

    fn finish(&mut self) -> Option<NullBuffer> {
        self.len = 0;
        self.bits.take().map(|mut b| NullBuffer::new(b.finish()))
    }
}

/// The columns of an object (a struct column, or a whole line).
struct StructColumn {
    fields: Fields,
    /// The fields' names (compared with every key of every object).
    names: Vec<Vec<u8>>,
    children: Vec<Column>,
    /// For each child, the row it last received a value in (`rows + 1`
    /// while the current row is being filled).
    filled: Vec<usize>,
    nulls: Validity,
    rows: usize,
}

impl StructColumn {
    fn new(fields: &Fields) -> Option<Self> {
        let children = fields
            .iter()
            .map(|f| Column::new(f.data_type()))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            fields: fields.clone(),
            names: fields
                .iter()
                .map(|f| f.name().as_bytes().to_vec())
                .collect(),
            filled: vec![0; children.len()],
            children,
            nulls: Validity::default(),
            rows: 0,
        })
    }

    fn position(&self, key: &str) -> Option<usize> {
        let key = key.as_bytes();
        self.names.iter().position(|n| n.as_slice() == key)
    }

    /// Appends the object at the start of `nodes`; returns the nodes it spans.
    fn append_object(&mut self, nodes: &[Node<'_>]) -> Step<usize> {
        let Some(&Node::Object { len, count }) = nodes.first() else {
            return unsupported("expected an object");
        };
        let row = self.rows + 1;
        let mut at = 1;
        for _ in 0..len {
            let Some(Node::String(key)) = nodes.get(at) else {
                return unsupported("malformed tape");
            };
            at += 1;
            let Some(value) = nodes.get(at) else {
                return unsupported("malformed tape");
            };
            match self.position(key) {
                Some(i) => {
                    if self.filled[i] == row {
                        return unsupported(format!("duplicate key {key}"));
                    }
                    self.filled[i] = row;
                    at += self.children[i].append(&nodes[at..], key)?;
                }
                None => at += span(value),
            }
        }
        for (child, filled) in self.children.iter_mut().zip(&mut self.filled) {
            if *filled != row {
                *filled = row;
                child.append_null();
            }
        }
        self.nulls.push(true);
        self.rows = row;
        Ok(count + 1)
    }

    fn append_null(&mut self) {
        let row = self.rows + 1;
        for (child, filled) in self.children.iter_mut().zip(&mut self.filled) {
            *filled = row;
            child.append_null();
        }
        self.nulls.push(false);
        self.rows = row;
    }

    fn clear(&mut self) {
        self.children.iter_mut().for_each(Column::clear);
        self.filled.iter_mut().for_each(|f| *f = 0);
        self.nulls.clear();
        self.rows = 0;
    }

    fn finish(&mut self) -> Step<(Fields, Vec<ArrayRef>, Option<NullBuffer>)> {
        let columns = self
            .children
            .iter_mut()
            .map(Column::finish)
            .collect::<Step<Vec<_>>>()?;
        self.filled.iter_mut().for_each(|f| *f = 0);
        self.rows = 0;
        Ok((self.fields.clone(), columns, self.nulls.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use proptest::prelude::*;

    fn schema() -> SchemaRef {
        let inner = Fields::from(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]);
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("small", DataType::Int32, true),
            Field::new("f", DataType::Float64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("big", DataType::LargeUtf8, true),
            Field::new("o", DataType::Struct(inner), true),
        ]))
    }

    fn arrow_json(schema: SchemaRef, chunk: &[u8]) -> Result<Option<RecordBatch>, ArrowError> {
        let mut d = arrow::json::ReaderBuilder::new(schema)
            .with_batch_size(1 << 16)
            .with_coerce_primitive(true)
            .build_decoder()?;
        d.decode(chunk)?;
        d.flush()
    }

    /// A JSON value of any kind, as text.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            any::<i32>().prop_map(|v| v.to_string()),
            (-1e6f64..1e6).prop_map(|v| format!("{v:?}")),
            any::<u64>().prop_map(|v| v.to_string()),
            "[a-z\\\\\"\u{e9}\u{1F600} ]{0,8}"
                .prop_map(|s| serde_json::to_string(&s).expect("str")),
            Just("\"2024-01-02T03:04:05Z\"".to_string()),
            Just("[1, 2]".to_string()),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            proptest::collection::vec(
                (
                    prop_oneof![Just("id"), Just("name"), Just("at"), Just("x")],
                    inner,
                ),
                0..4,
            )
            .prop_map(|kvs| {
                let body: Vec<String> = kvs
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\": {v}"))
                    .collect();
                format!("{{{}}}", body.join(", "))
            })
        })
    }

    /// Mostly values of the column's own type, sometimes any value.
    fn typed(own: BoxedStrategy<String>) -> BoxedStrategy<String> {
        prop_oneof![6 => own, 1 => Just("null".to_string()), 1 => value()].boxed()
    }

    fn text() -> BoxedStrategy<String> {
        "[a-z\\\\\"\u{e9}\u{1F600} ]{0,8}"
            .prop_map(|s| serde_json::to_string(&s).expect("str"))
            .boxed()
    }

    fn line() -> impl Strategy<Value = String> {
        let int = any::<i64>().prop_map(|v| v.to_string()).boxed();
        let object = proptest::collection::vec(
            prop_oneof![
                typed(any::<i64>().prop_map(|v| format!("\"id\": {v}")).boxed()),
                typed(text().prop_map(|v| format!("\"name\": {v}")).boxed()),
                typed(
                    (0i64..4_000_000_000_000)
                        .prop_map(|v| format!("\"at\": {v}"))
                        .boxed()
                ),
                value().prop_map(|v| format!("\"x\": {v}")),
            ],
            0..4,
        )
        .prop_map(|kvs| format!("{{{}}}", kvs.join(", ")))
        .boxed();
        let columns = [
            ("a", typed(int)),
            (
                "small",
                typed(any::<i32>().prop_map(|v| v.to_string()).boxed()),
            ),
            (
                "f",
                typed((-1e9f64..1e9).prop_map(|v| format!("{v:?}")).boxed()),
            ),
            (
                "b",
                typed(any::<bool>().prop_map(|v| v.to_string()).boxed()),
            ),
            ("s", typed(text())),
            ("big", typed(text())),
            ("o", typed(object)),
            ("extra", value().boxed()),
        ];
        let kvs: Vec<_> = columns
            .into_iter()
            .map(|(k, v)| {
                proptest::option::weighted(0.8, v.prop_map(move |v| format!("\"{k}\":{v}")))
            })
            .collect();
        kvs.prop_map(|kvs| {
            format!(
                "{{{}}}",
                kvs.into_iter().flatten().collect::<Vec<_>>().join(",")
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Whatever the tape decoder takes, it decodes exactly as arrow-json.
        #[test]
        fn same_columns_as_arrow_json(lines in proptest::collection::vec(line(), 1..4)) {
            let chunk = lines.join("\n") + "\n";
            let mut tape = TapeDecoder::new(schema()).expect("supported schema");
            let taken = tape.decode(chunk.as_bytes());
            if let Ok(fast) = taken {
                let reference = arrow_json(schema(), chunk.as_bytes());
                prop_assert!(reference.is_ok(), "arrow-json rejects what the tape took: {chunk}");
                prop_assert_eq!(fast, reference.expect("checked"));
            }
            // After a chunk it refused, the decoder starts clean.
            let ok = "{\"a\": 1, \"o\": {\"id\": 2}}\n";
            let again = tape.decode(ok.as_bytes()).expect("plain line").expect("one row");
            prop_assert_eq!(Some(again), arrow_json(schema(), ok.as_bytes()).expect("ok"));
        }
    }

    #[test]
    fn nexmark_lines_take_the_fast_path() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/nexmark-file/sample.jsonl"
        ))
        .expect("sample");
        let (full, _) =
            arrow::json::reader::infer_json_schema(text.as_bytes(), None).expect("schema");
        let full = Arc::new(full);
        let mut tape = TapeDecoder::new(Arc::clone(&full)).expect("nexmark types are supported");
        let fast = tape
            .decode(text.as_bytes())
            .expect("fast path")
            .expect("rows");
        assert_eq!(fast.num_rows(), text.lines().count());
        assert_eq!(
            Some(fast),
            arrow_json(full, text.as_bytes()).expect("arrow")
        );
    }

    #[test]
    fn refuses_what_arrow_json_would_read_differently() {
        let mut tape = TapeDecoder::new(schema()).expect("supported");
        for line in [
            "{\"a\": 1.5}",
            "{\"a\": \"12\"}",
            "{\"o\": {\"at\": \"2024-01-02T03:04:05Z\"}}",
            "{\"a\": 1, \"a\": 2}",
            "[1]",
            "{\"a\": 1",
            "{\"small\": 3000000000}",
            "{\"a\": 1}(",
            "{\"a\": 1}x",
            "{\"a\": 1} {\"a\": 2}",
            "{\"a\": 1}}",
        ] {
            assert!(tape.decode(line.as_bytes()).is_err(), "{line}");
        }
        assert!(
            TapeDecoder::new(Arc::new(Schema::new(vec![Field::new(
                "l",
                DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
                true
            )])))
            .is_none()
        );
    }
}
