//! `protobuf` messages in the Confluent wire format (magic byte 0, 4-byte
//! schema id, the message-index array, the Protobuf body), read as a
//! registry subject's message type. The body is parsed straight off the
//! wire into Arrow builders by field number: each message's fields are
//! first located in a reusable slot table (the last occurrence wins, as
//! Protobuf says), then appended, so a malformed message never leaves half
//! a row behind. Columns: the message's scalar fields (int32/sint32/
//! sfixed32 → Int32, the 64-bit ones → Int64, uint32/fixed32 → UInt32,
//! uint64/fixed64 → UInt64, float, double, bool, string, bytes, enum →
//! its value's name) and `google.protobuf.Timestamp` fields (→ timestamp,
//! ms). Absent fields take Protobuf's defaults, or null for fields with
//! presence (`optional`, timestamps). Nested messages other than
//! timestamps, repeated fields and maps are refused when the flow is
//! planned.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use prost_reflect::{Kind, MessageDescriptor};
use streamflow_core::{DeadLetter, Error, Result};
use streamflow_registry::{Parsed, SchemaType};

use super::Decoded;
use crate::schema_registry::RegistryClient;

/// How a column's value is read off the wire.
#[derive(Debug, Clone)]
enum Read {
    Int32,
    SInt32,
    SFixed32,
    Int64,
    SInt64,
    SFixed64,
    UInt32,
    Fixed32,
    UInt64,
    Fixed64,
    Float,
    Double,
    Bool,
    String,
    Bytes,
    /// Value number → name.
    Enum(HashMap<i32, String>),
    Timestamp,
}

#[derive(Debug, Clone)]
struct Column {
    read: Read,
    /// Absent means null (else Protobuf's default).
    presence: bool,
}

/// A source's Protobuf reading, as planned.
#[derive(Debug)]
pub struct ProtobufPlan {
    /// Where other schema ids are checked (none: only the reader's id is known).
    client: Option<RegistryClient>,
    reader_id: u32,
    columns: Vec<Column>,
    /// Field number → column (dense: field numbers are small).
    by_number: Vec<Option<usize>>,
    arrow: SchemaRef,
}

impl ProtobufPlan {
    /// Reads message `message` (default: the file's first) of version
    /// `version` (latest when `None`) of `subject`.
    ///
    /// # Errors
    /// No registry or subject, not a Protobuf schema, or a field this
    /// reader does not take.
    pub fn plan(
        registry: Option<&str>,
        subject: &str,
        version: Option<u32>,
        message: Option<&str>,
    ) -> std::result::Result<ProtobufPlan, String> {
        let client = RegistryClient::for_flow(registry)?;
        let fetched = client.version_at_plan_time(subject, version, Some("PROTOBUF"))?;
        let Parsed::Protobuf(compiled) = Parsed::parse(SchemaType::Protobuf, &fetched.schema, &[])
            .map_err(|e| format!("subject '{subject}': {e}"))?
        else {
            return Err(format!("subject '{subject}': not a Protobuf schema"));
        };
        let descriptor = compiled.message(message).ok_or_else(|| match message {
            Some(m) => format!("subject '{subject}' has no message '{m}'"),
            None => format!("subject '{subject}' declares no message"),
        })?;
        let (columns, by_number, arrow) = columns_of(&descriptor)?;
        Ok(ProtobufPlan {
            client: Some(client),
            reader_id: fetched.id,
            columns,
            by_number,
            arrow: Arc::new(arrow),
        })
    }

    /// The columns rows have.
    pub fn schema(&self) -> Schema {
        self.arrow.as_ref().clone()
    }

    fn column_of(&self, number: u32) -> Option<usize> {
        self.by_number.get(number as usize).copied().flatten()
    }

    /// Reads message `message` (default: the first) of `schema` (`.proto`
    /// source), known by id `id`, without a registry: messages framed with
    /// another id are dead letters.
    ///
    /// # Errors
    /// A schema that does not compile, or a field this reader does not take.
    pub fn with_schema(
        id: u32,
        schema: &str,
        message: Option<&str>,
    ) -> std::result::Result<ProtobufPlan, String> {
        let Parsed::Protobuf(compiled) = Parsed::parse(SchemaType::Protobuf, schema, &[])? else {
            return Err("not a Protobuf schema".into());
        };
        let descriptor = compiled
            .message(message)
            .ok_or("the schema declares no such message")?;
        let (columns, by_number, arrow) = columns_of(&descriptor)?;
        Ok(ProtobufPlan {
            client: None,
            reader_id: id,
            columns,
            by_number,
            arrow: Arc::new(arrow),
        })
    }

    /// The rows of `messages` (Confluent-framed), and the messages that are
    /// not rows, with why.
    ///
    /// # Errors
    /// The registry cannot be reached.
    pub async fn read(&self, messages: &[&[u8]]) -> Result<(Option<RecordBatch>, Vec<DeadLetter>)> {
        let out = decode(self, messages, super::indexed_dead_letter).await?;
        Ok((out.batch, out.dead_letters))
    }
}

type Columns = (Vec<Column>, Vec<Option<usize>>, Schema);

/// Field numbers above this are refused (the index is dense).
const MAX_FIELD_NUMBER: u32 = 1 << 16;

fn columns_of(m: &MessageDescriptor) -> std::result::Result<Columns, String> {
    let mut columns = Vec::new();
    let mut by_number: Vec<Option<usize>> = Vec::new();
    let mut fields = Vec::new();
    for f in m.fields() {
        let at = || format!("{}.{}", m.full_name(), f.name());
        if f.is_list() || f.is_map() {
            return Err(format!(
                "{}: repeated fields and maps are not read yet",
                at()
            ));
        }
        let (read, t) = match f.kind() {
            Kind::Int32 => (Read::Int32, DataType::Int32),
            Kind::Sint32 => (Read::SInt32, DataType::Int32),
            Kind::Sfixed32 => (Read::SFixed32, DataType::Int32),
            Kind::Int64 => (Read::Int64, DataType::Int64),
            Kind::Sint64 => (Read::SInt64, DataType::Int64),
            Kind::Sfixed64 => (Read::SFixed64, DataType::Int64),
            Kind::Uint32 => (Read::UInt32, DataType::UInt32),
            Kind::Fixed32 => (Read::Fixed32, DataType::UInt32),
            Kind::Uint64 => (Read::UInt64, DataType::UInt64),
            Kind::Fixed64 => (Read::Fixed64, DataType::UInt64),
            Kind::Float => (Read::Float, DataType::Float32),
            Kind::Double => (Read::Double, DataType::Float64),
            Kind::Bool => (Read::Bool, DataType::Boolean),
            Kind::String => (Read::String, DataType::Utf8),
            Kind::Bytes => (Read::Bytes, DataType::Binary),
            Kind::Enum(e) => (
                Read::Enum(
                    e.values()
                        .map(|v| (v.number(), v.name().to_string()))
                        .collect(),
                ),
                DataType::Utf8,
            ),
            Kind::Message(n) if n.full_name() == "google.protobuf.Timestamp" => (
                Read::Timestamp,
                DataType::Timestamp(TimeUnit::Millisecond, None),
            ),
            Kind::Message(n) => {
                return Err(format!(
                    "{}: nested message {} is not read yet (timestamps are)",
                    at(),
                    n.full_name()
                ));
            }
        };
        let presence = f.supports_presence();
        if f.number() > MAX_FIELD_NUMBER {
            return Err(format!(
                "{}: field numbers above {MAX_FIELD_NUMBER} are not read",
                at()
            ));
        }
        let n = f.number() as usize;
        if by_number.len() <= n {
            by_number.resize(n + 1, None);
        }
        by_number[n] = Some(columns.len());
        fields.push(Field::new(f.name(), t, presence));
        columns.push(Column { read, presence });
    }
    Ok((columns, by_number, Schema::new(fields)))
}

/// Where a field's last occurrence sits in the message.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Unset,
    Varint(u64),
    Fixed32(u32),
    Fixed64(u64),
    Bytes(usize, usize),
}

/// A varint at `at`; the value and the position after it.
fn varint(buf: &[u8], mut at: usize) -> std::result::Result<(u64, usize), String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(at).ok_or("the message ends inside a varint")?;
        at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok((value, at));
        }
    }
    Err("a varint longer than 10 bytes".into())
}

fn fixed<const N: usize>(buf: &[u8], at: usize) -> std::result::Result<[u8; N], String> {
    buf.get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "the message ends inside a fixed-width field".to_string())
}

/// Locates the fields of the message `buf[range]` in `slots`.
fn locate(
    buf: &[u8],
    range: Range<usize>,
    column_of: impl Fn(u32) -> Option<usize>,
    slots: &mut [Slot],
) -> std::result::Result<(), String> {
    let mut at = range.start;
    while at < range.end {
        let (key, next) = varint(buf, at)?;
        at = next;
        let number = u32::try_from(key >> 3).map_err(|_| "a field number out of range")?;
        let slot = match key & 7 {
            0 => {
                let (v, next) = varint(buf, at)?;
                at = next;
                Slot::Varint(v)
            }
            1 => {
                let v = u64::from_le_bytes(fixed::<8>(buf, at)?);
                at += 8;
                Slot::Fixed64(v)
            }
            2 => {
                let (len, next) = varint(buf, at)?;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|l| next.checked_add(l))
                    .filter(|e| *e <= range.end)
                    .ok_or("a length beyond the message")?;
                at = end;
                Slot::Bytes(next, end)
            }
            5 => {
                let v = u32::from_le_bytes(fixed::<4>(buf, at)?);
                at += 4;
                Slot::Fixed32(v)
            }
            w => return Err(format!("wire type {w} (groups are not read)")),
        };
        if let Some(c) = column_of(number) {
            slots[c] = slot;
        }
    }
    if at != range.end {
        return Err("the last field runs past the message".into());
    }
    Ok(())
}

/// The builders of one batch.
enum Builder {
    I32(Int32Builder),
    I64(Int64Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
    Bin(BinaryBuilder),
    Ts(TimestampMillisecondBuilder),
}

impl Builder {
    fn for_read(read: &Read) -> Builder {
        match read {
            Read::Int32 | Read::SInt32 | Read::SFixed32 => Builder::I32(Int32Builder::new()),
            Read::Int64 | Read::SInt64 | Read::SFixed64 => Builder::I64(Int64Builder::new()),
            Read::UInt32 | Read::Fixed32 => Builder::U32(UInt32Builder::new()),
            Read::UInt64 | Read::Fixed64 => Builder::U64(UInt64Builder::new()),
            Read::Float => Builder::F32(Float32Builder::new()),
            Read::Double => Builder::F64(Float64Builder::new()),
            Read::Bool => Builder::Bool(BooleanBuilder::new()),
            Read::String | Read::Enum(_) => Builder::Str(StringBuilder::new()),
            Read::Bytes => Builder::Bin(BinaryBuilder::new()),
            Read::Timestamp => Builder::Ts(TimestampMillisecondBuilder::new()),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::U32(b) => Arc::new(b.finish()),
            Builder::U64(b) => Arc::new(b.finish()),
            Builder::F32(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Bin(b) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
        }
    }
}

/// Checks that `slot` can be read as `column` (so appending cannot fail).
fn check(column: &Column, slot: &mut Slot, buf: &[u8]) -> std::result::Result<(), String> {
    // A timestamp is read here, once: its milliseconds take its slot.
    if let (Read::Timestamp, Slot::Bytes(s, e)) = (&column.read, *slot) {
        *slot = Slot::Fixed64(timestamp_ms(buf, s..e)? as u64);
        return Ok(());
    }
    let ok = match (&column.read, *slot) {
        (_, Slot::Unset) => true,
        (
            Read::Int32
            | Read::SInt32
            | Read::Int64
            | Read::SInt64
            | Read::UInt32
            | Read::UInt64
            | Read::Bool
            | Read::Enum(_),
            Slot::Varint(_),
        ) => true,
        (Read::SFixed32 | Read::Fixed32 | Read::Float, Slot::Fixed32(_)) => true,
        (Read::SFixed64 | Read::Fixed64 | Read::Double, Slot::Fixed64(_)) => true,
        (Read::String, Slot::Bytes(s, e)) => std::str::from_utf8(&buf[s..e]).is_ok(),
        (Read::Bytes, Slot::Bytes(..)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err("a field's wire type does not match the schema".into())
    }
}

/// A `google.protobuf.Timestamp` in milliseconds.
fn timestamp_ms(buf: &[u8], range: Range<usize>) -> std::result::Result<i64, String> {
    let mut slots = [Slot::Unset, Slot::Unset];
    locate(
        buf,
        range,
        |n| (1..=2).contains(&n).then(|| n as usize - 1),
        &mut slots,
    )?;
    let seconds = match slots[0] {
        Slot::Varint(v) => v as i64,
        _ => 0,
    };
    let nanos = match slots[1] {
        Slot::Varint(v) => v as i64,
        _ => 0,
    };
    Ok(seconds * 1000 + nanos / 1_000_000)
}

fn append(builder: &mut Builder, column: &Column, slot: Slot, buf: &[u8]) {
    let unset = matches!(slot, Slot::Unset);
    let null = unset && column.presence;
    let varint = match slot {
        Slot::Varint(v) => v,
        _ => 0,
    };
    let f32bits = match slot {
        Slot::Fixed32(v) => v,
        _ => 0,
    };
    let f64bits = match slot {
        Slot::Fixed64(v) => v,
        _ => 0,
    };
    let bytes = match slot {
        Slot::Bytes(s, e) => &buf[s..e],
        _ => &[][..],
    };
    let zigzag = |v: u64| ((v >> 1) as i64) ^ -((v & 1) as i64);
    match (builder, &column.read) {
        (Builder::I32(b), r) => b.append_option((!null).then(|| match r {
            Read::SInt32 => zigzag(varint) as i32,
            Read::SFixed32 => f32bits as i32,
            _ => varint as i32,
        })),
        (Builder::I64(b), r) => b.append_option((!null).then(|| match r {
            Read::SInt64 => zigzag(varint),
            Read::SFixed64 => f64bits as i64,
            _ => varint as i64,
        })),
        (Builder::U32(b), r) => b.append_option((!null).then_some(match r {
            Read::Fixed32 => f32bits,
            _ => varint as u32,
        })),
        (Builder::U64(b), r) => b.append_option((!null).then_some(match r {
            Read::Fixed64 => f64bits,
            _ => varint,
        })),
        (Builder::F32(b), _) => b.append_option((!null).then(|| f32::from_bits(f32bits))),
        (Builder::F64(b), _) => b.append_option((!null).then(|| f64::from_bits(f64bits))),
        (Builder::Bool(b), _) => b.append_option((!null).then_some(varint != 0)),
        (Builder::Str(b), Read::Enum(names)) => {
            let name = names.get(&(varint as i32)).map(String::as_str);
            match (null, name) {
                (true, _) => b.append_null(),
                (false, Some(n)) => b.append_value(n),
                // An enum value this schema does not name: its number.
                (false, None) => b.append_value((varint as i32).to_string()),
            }
        }
        (Builder::Str(b), _) => match (null, std::str::from_utf8(bytes)) {
            (false, Ok(s)) => b.append_value(s),
            _ => b.append_null(),
        },
        (Builder::Bin(b), _) => match null {
            true => b.append_null(),
            false => b.append_value(bytes),
        },
        (Builder::Ts(b), _) => match slot {
            Slot::Fixed64(ms) => b.append_value(ms as i64),
            _ => b.append_null(),
        },
    }
}

/// Where the body starts after the framing; why not, for a message not in
/// the Confluent Protobuf wire format.
fn body_start(m: &[u8]) -> std::result::Result<(u32, usize), String> {
    let id = super::framed_id(m).ok_or(super::NOT_FRAMED)?;
    // The message-index array: a zigzag count, then as many indexes.
    let (count, mut at) = varint(m, 5)?;
    let count = (count >> 1) as i64 ^ -((count & 1) as i64);
    for _ in 0..count.max(0) {
        at = varint(m, at)?.1;
    }
    Ok((id, at))
}

/// Decodes `messages` (as [`super::MessageDecoder::decode`]).
pub(crate) async fn decode(
    plan: &ProtobufPlan,
    messages: &[&[u8]],
    dead: impl Fn(usize, &[u8], String) -> DeadLetter,
) -> Result<Decoded> {
    let mut builders: Vec<Builder> = plan
        .columns
        .iter()
        .map(|c| Builder::for_read(&c.read))
        .collect();
    let mut slots = vec![Slot::Unset; plan.columns.len()];
    let mut rows = Vec::with_capacity(messages.len());
    let mut dead_letters = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let located = match body_start(m) {
            Err(why) => Err(why),
            Ok((id, start)) => {
                let known = match (&plan.client, id == plan.reader_id) {
                    (_, true) => Ok(()),
                    (None, false) => Err(format!("schema id {id} is not known (no registry)")),
                    (Some(client), false) => match client.schema(id).await.map_err(Error::Other)? {
                        Some(f) if f.schema_type == "PROTOBUF" => Ok(()),
                        Some(f) => Err(format!(
                            "schema id {id} is a {} schema, not PROTOBUF",
                            f.schema_type
                        )),
                        None => Err(format!(
                            "schema id {id} is not in the registry at {}",
                            client.url()
                        )),
                    },
                };
                slots.fill(Slot::Unset);
                known
                    .and_then(|()| locate(m, start..m.len(), |n| plan.column_of(n), &mut slots))
                    .and_then(|()| {
                        plan.columns
                            .iter()
                            .zip(slots.iter_mut())
                            .try_for_each(|(c, s)| check(c, s, m))
                    })
            }
        };
        match located {
            Ok(()) => {
                for ((b, c), s) in builders.iter_mut().zip(&plan.columns).zip(&slots) {
                    append(b, c, *s, m);
                }
                rows.push(i);
            }
            Err(why) => {
                dead_letters.push(dead(i, m, format!("not a valid Protobuf record: {why}")))
            }
        }
    }
    let batch = if rows.is_empty() {
        None
    } else {
        let columns = builders.iter_mut().map(Builder::finish).collect();
        Some(
            RecordBatch::try_new(Arc::clone(&plan.arrow), columns)
                .map_err(|e| Error::arrow("Protobuf rows", e))?,
        )
    };
    Ok(Decoded {
        batch,
        rows,
        dead_letters,
    })
}

/// How a column is written.
#[derive(Debug, Clone, Copy)]
enum Write {
    Int32,
    Int64,
    UInt32,
    UInt64,
    Float,
    Double,
    Bool,
    String,
    Bytes,
    /// A timestamp in this many nanoseconds per unit.
    Timestamp(i64),
}

/// A sink's Protobuf writing, as planned: a message type `streamflow.Row`
/// derived from its input (one field per column, numbered in order;
/// nullable columns `optional`, timestamps `google.protobuf.Timestamp`),
/// checked against its subject.
#[derive(Debug)]
pub struct ProtobufSinkPlan {
    client: RegistryClient,
    subject: String,
    /// The `.proto` source registered.
    schema: String,
    writes: Vec<Write>,
}

impl ProtobufSinkPlan {
    /// Derives the message type of rows of `input` and checks that it may
    /// be registered under `subject`; the registration happens on first write.
    ///
    /// # Errors
    /// No registry, a column with no Protobuf form, or an incompatible schema.
    pub fn plan(
        registry: Option<&str>,
        subject: &str,
        input: &Schema,
    ) -> std::result::Result<ProtobufSinkPlan, String> {
        let client = RegistryClient::for_flow(registry)?;
        let mut fields = String::new();
        let mut writes = Vec::new();
        let mut timestamps = false;
        for (i, f) in input.fields().iter().enumerate() {
            let name = f.name();
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "column '{name}' is not a Protobuf field name (rename it)"
                ));
            }
            let (write, t) = match f.data_type() {
                DataType::Int8 | DataType::Int16 | DataType::Int32 => (Write::Int32, "int32"),
                DataType::Int64 => (Write::Int64, "int64"),
                DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => (Write::UInt32, "uint32"),
                DataType::UInt64 => (Write::UInt64, "uint64"),
                DataType::Float32 => (Write::Float, "float"),
                DataType::Float64 => (Write::Double, "double"),
                DataType::Boolean => (Write::Bool, "bool"),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    (Write::String, "string")
                }
                DataType::Binary | DataType::LargeBinary => (Write::Bytes, "bytes"),
                DataType::Timestamp(unit, _) => {
                    timestamps = true;
                    let nanos = match unit {
                        TimeUnit::Second => 1_000_000_000,
                        TimeUnit::Millisecond => 1_000_000,
                        TimeUnit::Microsecond => 1_000,
                        TimeUnit::Nanosecond => 1,
                    };
                    (Write::Timestamp(nanos), "google.protobuf.Timestamp")
                }
                other => {
                    return Err(format!(
                        "column '{name}': type {other} has no Protobuf form"
                    ));
                }
            };
            let optional = if f.is_nullable() && !matches!(write, Write::Timestamp(_)) {
                "optional "
            } else {
                ""
            };
            fields.push_str(&format!("  {optional}{t} {name} = {};\n", i + 1));
            writes.push(write);
        }
        let import = if timestamps {
            "import \"google/protobuf/timestamp.proto\";\n"
        } else {
            ""
        };
        let schema = format!(
            "syntax = \"proto3\";\npackage streamflow;\n{import}message Row {{\n{fields}}}\n"
        );
        client.check_at_plan_time(subject, "PROTOBUF", &schema)?;
        Ok(ProtobufSinkPlan {
            client,
            subject: subject.to_string(),
            schema,
            writes,
        })
    }

    /// The wire-format prefix of this sink's messages: magic byte, the id
    /// (registering the schema, or finding it), message index `[0]`.
    pub(crate) async fn prefix(&self) -> Result<[u8; 6]> {
        let id = self
            .client
            .register(&self.subject, "PROTOBUF", &self.schema)
            .await
            .map_err(Error::Other)?;
        tracing::info!(subject = %self.subject, id, "Protobuf schema registered");
        let [a, b, c, d] = id.to_be_bytes();
        Ok([0, a, b, c, d, 0])
    }

    /// One message per row of `batch`, each starting with `prefix`.
    pub(crate) fn encode(&self, batch: &RecordBatch, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes as t;
        let mut out: Vec<Vec<u8>> = (0..batch.num_rows()).map(|_| prefix.to_vec()).collect();
        let cast = |e| Error::arrow("encoding Protobuf", e);
        for (c, (write, column)) in self.writes.iter().zip(batch.columns()).enumerate() {
            let number = (c + 1) as u64;
            // Integers are widened once per column, not per row.
            let widened;
            let column: &dyn Array = match write {
                Write::Int32 if column.data_type() != &DataType::Int32 => {
                    widened = arrow::compute::cast(column, &DataType::Int32).map_err(cast)?;
                    widened.as_ref()
                }
                Write::UInt32 if column.data_type() != &DataType::UInt32 => {
                    widened = arrow::compute::cast(column, &DataType::UInt32).map_err(cast)?;
                    widened.as_ref()
                }
                Write::String if column.data_type() != &DataType::Utf8 => {
                    widened = arrow::compute::cast(column, &DataType::Utf8).map_err(cast)?;
                    widened.as_ref()
                }
                Write::Bytes if column.data_type() != &DataType::Binary => {
                    widened = arrow::compute::cast(column, &DataType::Binary).map_err(cast)?;
                    widened.as_ref()
                }
                _ => column.as_ref(),
            };
            for (row, m) in out.iter_mut().enumerate() {
                if column.is_null(row) {
                    continue;
                }
                match write {
                    Write::Int32 => varint_field(
                        m,
                        number,
                        column.as_primitive::<t::Int32Type>().value(row) as i64 as u64,
                    ),
                    Write::Int64 => varint_field(
                        m,
                        number,
                        column.as_primitive::<t::Int64Type>().value(row) as u64,
                    ),
                    Write::UInt32 => varint_field(
                        m,
                        number,
                        u64::from(column.as_primitive::<t::UInt32Type>().value(row)),
                    ),
                    Write::UInt64 => {
                        varint_field(m, number, column.as_primitive::<t::UInt64Type>().value(row))
                    }
                    Write::Bool => {
                        varint_field(m, number, u64::from(column.as_boolean().value(row)))
                    }
                    Write::Float => {
                        put_varint(m, (number << 3) | 5);
                        m.extend_from_slice(
                            &column
                                .as_primitive::<t::Float32Type>()
                                .value(row)
                                .to_le_bytes(),
                        );
                    }
                    Write::Double => {
                        put_varint(m, (number << 3) | 1);
                        m.extend_from_slice(
                            &column
                                .as_primitive::<t::Float64Type>()
                                .value(row)
                                .to_le_bytes(),
                        );
                    }
                    Write::String => {
                        bytes_field(m, number, column.as_string::<i32>().value(row).as_bytes())
                    }
                    Write::Bytes => bytes_field(m, number, column.as_binary::<i32>().value(row)),
                    Write::Timestamp(nanos_per_unit) => {
                        let v = timestamp_value(column, row);
                        let nanos = i128::from(v) * i128::from(*nanos_per_unit);
                        let seconds = nanos.div_euclid(1_000_000_000) as i64;
                        let rest = nanos.rem_euclid(1_000_000_000) as i64;
                        let mut ts = Vec::with_capacity(16);
                        if seconds != 0 {
                            varint_field(&mut ts, 1, seconds as u64);
                        }
                        if rest != 0 {
                            varint_field(&mut ts, 2, rest as u64);
                        }
                        bytes_field(m, number, &ts);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A timestamp column's raw value (in its unit).
fn timestamp_value(column: &dyn arrow::array::Array, row: usize) -> i64 {
    use arrow::array::AsArray;
    use arrow::datatypes as t;
    match column.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            column.as_primitive::<t::TimestampSecondType>().value(row)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => column
            .as_primitive::<t::TimestampMillisecondType>()
            .value(row),
        DataType::Timestamp(TimeUnit::Microsecond, _) => column
            .as_primitive::<t::TimestampMicrosecondType>()
            .value(row),
        _ => column
            .as_primitive::<t::TimestampNanosecondType>()
            .value(row),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, number: u64, v: u64) {
    put_varint(out, number << 3);
    put_varint(out, v);
}

fn bytes_field(out: &mut Vec<u8>, number: u64, v: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_framing() {
        assert_eq!(varint(&[0x96, 0x01], 0), Ok((150, 2)));
        assert!(varint(&[0x96], 0).is_err());
        // Magic, id 7, index array [0] as the single byte 0, then the body.
        assert_eq!(body_start(&[0, 0, 0, 0, 7, 0, 8, 1]), Ok((7, 6)));
        // Index array of one element, 2: count 1 (zigzag 2), index 2 (zigzag 4).
        assert_eq!(body_start(&[0, 0, 0, 0, 7, 2, 4, 8, 1]), Ok((7, 7)));
        assert!(body_start(b"{}").is_err());
    }

    #[test]
    fn fields_are_located_and_unknown_ones_skipped() {
        // field 1 varint 150, field 9 (unknown) length-delimited "ab", field 2 fixed32.
        let msg = [0x08, 0x96, 0x01, 0x4a, 0x02, b'a', b'b', 0x15, 1, 0, 0, 0];
        let column_of = |n: u32| (1..=2).contains(&n).then(|| n as usize - 1);
        let mut slots = [Slot::Unset, Slot::Unset];
        locate(&msg, 0..msg.len(), column_of, &mut slots).expect("parses");
        assert!(matches!(slots[0], Slot::Varint(150)));
        assert!(matches!(slots[1], Slot::Fixed32(1)));
        assert!(locate(&msg[..5], 0..5, column_of, &mut slots).is_err());
    }
}
