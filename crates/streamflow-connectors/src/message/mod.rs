//! Message formats of the broker connectors: one message's bytes become one
//! row, and one row becomes one message.
//!
//! `json` (one object per message, into a declared or inferred schema),
//! `csv` (one record per message), `string`/`bytes` (the whole message in
//! one column, `value`) and `avro` (the Confluent wire format, against a
//! schema registry: [`avro`]). Undecodable messages become dead letters
//! carrying the message's position.

pub mod avro;
pub mod json_schema;
pub mod protobuf;

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;
use streamflow_core::{DeadLetter, Error, Result};

use crate::sources::decode::{LineDecoder, TextFormat};

/// How messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    /// One JSON object per message.
    #[default]
    Json,
    /// One CSV record per message (no header).
    Csv,
    /// The message as UTF-8 text, in column `value`.
    String,
    /// The message's bytes, in column `value`.
    Bytes,
    /// Avro in the Confluent wire format, read as a registry subject's schema.
    Avro,
    /// Protobuf in the Confluent wire format, read as a registry subject's message.
    Protobuf,
}

/// Where a new consumer (group) of a broker starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// The first message kept.
    #[default]
    Earliest,
    /// Messages added from now on.
    Latest,
}

/// The column holding the whole message in `string` and `bytes` formats.
pub const VALUE: &str = "value";

impl MessageFormat {
    /// The schema of `string`/`bytes` messages; `None` for formats whose
    /// schema is declared or inferred.
    pub fn fixed_schema(self) -> Option<Schema> {
        let t = match self {
            MessageFormat::String => DataType::Utf8,
            MessageFormat::Bytes => DataType::Binary,
            MessageFormat::Json
            | MessageFormat::Csv
            | MessageFormat::Avro
            | MessageFormat::Protobuf => {
                return None;
            }
        };
        Some(Schema::new(vec![Field::new(VALUE, t, true)]))
    }
}

/// What a source's messages decode into: the columns, and for `avro` the
/// schema read from the registry.
#[derive(Debug, Clone)]
pub struct Values {
    /// The message columns.
    pub schema: SchemaRef,
    /// The reader schema of `avro` messages.
    pub avro: Option<Arc<avro::AvroPlan>>,
    /// The registry subject of `json` messages in the Confluent wire format.
    pub json: Option<Arc<json_schema::JsonSchemaPlan>>,
    /// The message type of `protobuf` messages.
    pub protobuf: Option<Arc<protobuf::ProtobufPlan>>,
}

impl Values {
    /// The schema of a source's rows: the message columns, then `extra`
    /// (the source's metadata columns, such as `_offset`).
    pub(crate) fn with_columns(&self, extra: impl IntoIterator<Item = Field>) -> SchemaRef {
        let fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .chain(extra)
            .collect();
        Arc::new(Schema::new(fields))
    }
}

/// A source's rows: decoded message `values`, then the metadata columns
/// `extra`, in the `schema` [`Values::with_columns`] gave.
///
/// # Errors
/// When the columns do not fit the schema.
pub(crate) fn with_metadata(
    schema: &SchemaRef,
    values: &RecordBatch,
    extra: impl IntoIterator<Item = ArrayRef>,
) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = values.columns().iter().cloned().chain(extra).collect();
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| Error::arrow("adding message metadata", e))
}

/// Where a source's message schema comes from.
pub(crate) struct ValueSource<'a> {
    /// The format.
    pub(crate) format: MessageFormat,
    /// `schema:` as declared: columns (json, csv) or `{subject, version}` (avro).
    pub(crate) declared: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// `registry:` (avro).
    pub(crate) registry: Option<&'a str>,
    /// The subject read when `avro` names none (`<topic>-value`).
    pub(crate) default_subject: String,
    /// The path of `schema` in the flow file.
    pub(crate) at: String,
}

/// The schema of a source's messages: fixed for `string`/`bytes`, the
/// registry subject's for `avro`, else declared, else inferred (`json` only).
///
/// # Errors
/// A schema declared for a fixed format, a bad declaration, `csv` without
/// one, an unusable registry subject, or what `infer` reports.
pub(crate) fn value_schema(
    source: &ValueSource<'_>,
    infer: impl FnOnce() -> std::result::Result<Schema, streamflow_core::Diagnostics>,
) -> std::result::Result<Values, streamflow_core::Diagnostics> {
    let (format, declared, at) = (source.format, source.declared, source.at.as_str());
    let fail = |m: String| {
        streamflow_core::Diagnostics::from(streamflow_core::Diagnostic::new(at.to_string(), m))
    };
    let plain = |schema: Schema| Values {
        schema: Arc::new(schema),
        avro: None,
        json: None,
        protobuf: None,
    };
    // `json` with `schema: {subject, version?}` (not a column declaration):
    // registry-framed JSON read as that subject's JSON Schema.
    if format == MessageFormat::Json
        && let Some(d) = declared
        && let Some((subject, version)) = registry_subject(d)
        && crate::sources::file::declared_schema(d, at).is_err()
    {
        let subject = subject.unwrap_or_else(|| source.default_subject.clone());
        let plan =
            json_schema::JsonSchemaPlan::plan(source.registry, &subject, version).map_err(fail)?;
        return Ok(Values {
            schema: Arc::new(plan.schema()),
            avro: None,
            json: Some(Arc::new(plan)),
            protobuf: None,
        });
    }
    if format == MessageFormat::Protobuf {
        let empty = serde_json::Map::new();
        let d = declared.unwrap_or(&empty);
        if let Some(k) = d
            .keys()
            .find(|k| !["subject", "version", "message"].contains(&k.as_str()))
        {
            return Err(fail(format!(
                "a protobuf schema is {{subject, version, message}} of a registry subject (got '{k}')"
            )));
        }
        let mut reference = d.clone();
        let message = reference
            .remove("message")
            .map(|m| {
                m.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| fail("message must be a string".into()))
            })
            .transpose()?;
        let (subject, version) = if reference.is_empty() {
            (None, None)
        } else {
            registry_subject(&reference).ok_or_else(|| {
                fail("subject must be a string and version a positive integer".into())
            })?
        };
        let subject = subject.unwrap_or_else(|| source.default_subject.clone());
        let plan =
            protobuf::ProtobufPlan::plan(source.registry, &subject, version, message.as_deref())
                .map_err(fail)?;
        return Ok(Values {
            schema: Arc::new(plan.schema()),
            avro: None,
            json: None,
            protobuf: Some(Arc::new(plan)),
        });
    }
    if format == MessageFormat::Avro {
        let (subject, version) = match declared {
            None => (source.default_subject.clone(), None),
            Some(d) => {
                if let Some(k) = d
                    .keys()
                    .find(|k| !["subject", "version"].contains(&k.as_str()))
                {
                    return Err(fail(format!(
                        "an avro schema is {{subject, version}} of a registry subject (got '{k}')"
                    )));
                }
                let subject = match d.get("subject") {
                    None => source.default_subject.clone(),
                    Some(s) => s
                        .as_str()
                        .ok_or_else(|| fail("subject must be a string".into()))?
                        .to_string(),
                };
                let version = match d.get("version") {
                    None => None,
                    Some(v) => Some(
                        v.as_u64()
                            .and_then(|v| u32::try_from(v).ok())
                            .filter(|v| *v > 0)
                            .ok_or_else(|| fail("version must be a positive integer".into()))?,
                    ),
                };
                (subject, version)
            }
        };
        let plan = avro::AvroPlan::plan(source.registry, &subject, version).map_err(fail)?;
        return Ok(Values {
            schema: Arc::new(plan.schema()),
            avro: Some(Arc::new(plan)),
            json: None,
            protobuf: None,
        });
    }
    match (format.fixed_schema(), declared) {
        (Some(fixed), None) => Ok(plain(fixed)),
        (Some(_), Some(_)) => Err(fail(format!(
            "format {format:?} has a fixed schema (column {VALUE})"
        ))),
        (None, Some(declared)) => crate::sources::file::declared_schema(declared, at).map(plain),
        (None, None) if format == MessageFormat::Csv => {
            Err(fail("csv messages need a declared schema".into()))
        }
        (None, None) => infer().map(plain),
    }
}

/// The columns a registry subject's schema (Avro or JSON Schema) gives
/// rows, as `avro` and registry `json` sources read them.
///
/// # Errors
/// No registry, the subject or version missing, a Protobuf schema, or a
/// schema without a column form.
pub fn subject_columns(
    registry: Option<&str>,
    subject: &str,
    version: Option<u32>,
) -> std::result::Result<Schema, String> {
    let client = crate::schema_registry::RegistryClient::for_flow(registry)?;
    let fetched = client.version_at_plan_time(subject, version, None)?;
    match fetched.schema_type.as_str() {
        "AVRO" => Ok(avro::AvroPlan::with_schema(fetched.id, &fetched.schema)?.schema()),
        "JSON" => {
            let schema: serde_json::Value = serde_json::from_str(&fetched.schema)
                .map_err(|e| format!("subject '{subject}': not JSON: {e}"))?;
            json_schema::columns_of(&schema).map_err(|e| format!("subject '{subject}': {e}"))
        }
        other => Err(format!(
            "subject '{subject}' holds a {other} schema; columns come from AVRO and JSON schemas"
        )),
    }
}

/// Why a message is not read when it lacks the Confluent framing.
pub(crate) const NOT_FRAMED: &str =
    "not in the Confluent wire format (magic byte 0, 4-byte schema id)";

/// The schema id of a message in the Confluent wire format (magic byte 0,
/// the id as 4 big-endian bytes); `None` for any other message.
pub(crate) fn framed_id(message: &[u8]) -> Option<u32> {
    match message {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// A dead letter naming message `i` of a batch handed to a reader.
pub(crate) fn indexed_dead_letter(i: usize, payload: &[u8], error: String) -> DeadLetter {
    DeadLetter {
        file: Some(format!("message {i}")),
        line: None,
        payload: Some(String::from_utf8_lossy(payload).into_owned()),
        error,
    }
}

/// The subject a registry-aware sink writes under: `schema: {subject}`,
/// else `default`.
fn sink_subject(
    declared: Option<&serde_json::Map<String, serde_json::Value>>,
    default: &str,
    format: &str,
) -> std::result::Result<String, String> {
    match declared {
        None => Ok(default.to_string()),
        Some(d) => match (
            d.get("subject").and_then(serde_json::Value::as_str),
            d.len(),
        ) {
            (Some(s), 1) => Ok(s.to_string()),
            _ => Err(format!("a {format} sink's schema is {{subject: NAME}}")),
        },
    }
}

/// `{subject?, version?}`: the subject (when named) and version of a
/// registry reference; `None` for other maps.
pub fn registry_subject(
    d: &serde_json::Map<String, serde_json::Value>,
) -> Option<(Option<String>, Option<u32>)> {
    if d.is_empty()
        || d.keys()
            .any(|k| !["subject", "version"].contains(&k.as_str()))
    {
        return None;
    }
    let subject = match d.get("subject") {
        None => None,
        Some(s) => Some(s.as_str()?.to_string()),
    };
    let version = match d.get("version") {
        None => None,
        Some(v) => Some(u32::try_from(v.as_u64()?).ok().filter(|v| *v > 0)?),
    };
    Some((subject, version))
}

/// Appends `message` to `chunk` as one line: newlines inside a message
/// are JSON whitespace (raw newlines cannot be inside JSON strings).
fn push_line(chunk: &mut Vec<u8>, message: &[u8]) {
    chunk.extend(
        message
            .iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    chunk.push(b'\n');
}

/// The JSON schema of sampled messages; `None` when there are none.
pub(crate) fn infer_json<'a>(
    messages: impl IntoIterator<Item = &'a [u8]>,
) -> Option<std::result::Result<Schema, String>> {
    let mut sample = Vec::new();
    for m in messages {
        push_line(&mut sample, m);
    }
    (!sample.is_empty()).then(|| crate::sources::file::infer_json(&sample))
}

/// Good rows of some messages: the batch, and for each row the index of
/// the message it came from.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) batch: Option<RecordBatch>,
    pub(crate) rows: Vec<usize>,
    pub(crate) dead_letters: Vec<DeadLetter>,
}

/// Decodes messages of one format into one schema.
#[derive(Debug)]
pub(crate) struct MessageDecoder {
    format: MessageFormat,
    schema: SchemaRef,
    lines: Option<LineDecoder>,
    avro: Option<avro::AvroDecoder>,
    json: Option<Arc<json_schema::JsonSchemaPlan>>,
    protobuf: Option<Arc<protobuf::ProtobufPlan>>,
}

impl MessageDecoder {
    pub(crate) fn new(format: MessageFormat, values: &Values) -> Self {
        let schema = Arc::clone(&values.schema);
        let lines = match format {
            MessageFormat::Json => Some(TextFormat::Jsonl),
            MessageFormat::Csv => Some(TextFormat::Csv),
            MessageFormat::String
            | MessageFormat::Bytes
            | MessageFormat::Avro
            | MessageFormat::Protobuf => None,
        }
        .map(|f| LineDecoder::new(Arc::clone(&schema), f, b','));
        Self {
            format,
            schema,
            lines,
            avro: values.avro.clone().map(avro::AvroDecoder::new),
            json: values.json.clone(),
            protobuf: values.protobuf.clone(),
        }
    }

    /// Decodes `messages`; a bad one becomes a dead letter whose `file` is
    /// `position(index)`.
    pub(crate) async fn decode(
        &mut self,
        messages: &[&[u8]],
        position: impl Fn(usize) -> String,
    ) -> Result<Decoded> {
        let dead = |i: usize, payload: &[u8], error: String| DeadLetter {
            file: Some(position(i)),
            line: None,
            payload: Some(String::from_utf8_lossy(payload).into_owned()),
            error,
        };
        match self.format {
            MessageFormat::Avro => {
                let Some(avro) = self.avro.as_mut() else {
                    return Err(Error::Other("avro messages without a reader schema".into()));
                };
                avro.decode(messages, dead).await
            }
            MessageFormat::Protobuf => {
                let Some(plan) = self.protobuf.as_ref() else {
                    return Err(Error::Other(
                        "protobuf messages without a message type".into(),
                    ));
                };
                protobuf::decode(plan, messages, dead).await
            }
            MessageFormat::Bytes => {
                let array = BinaryArray::from_iter_values(messages.iter());
                self.one_column(Arc::new(array), (0..messages.len()).collect(), Vec::new())
            }
            MessageFormat::String => {
                let mut dead_letters = Vec::new();
                let mut b = StringBuilder::new();
                let mut rows = Vec::with_capacity(messages.len());
                for (i, m) in messages.iter().enumerate() {
                    match std::str::from_utf8(m) {
                        Ok(s) => {
                            b.append_value(s);
                            rows.push(i);
                        }
                        Err(e) => dead_letters.push(dead(i, m, format!("not UTF-8: {e}"))),
                    }
                }
                self.one_column(Arc::new(b.finish()), rows, dead_letters)
            }
            MessageFormat::Json | MessageFormat::Csv => {
                // One line per message.
                let mut found = Vec::new();
                let mut chunk = Vec::with_capacity(messages.iter().map(|m| m.len() + 1).sum());
                let mut lines = Vec::with_capacity(messages.len());
                for (i, m) in messages.iter().enumerate() {
                    // Registry-framed JSON: the document follows the framing.
                    let m: &[u8] = match &self.json {
                        None => m,
                        Some(plan) => match plan.check_framing(m).await? {
                            Ok(at) => &m[at..],
                            Err(why) => {
                                found.push((i, dead(i, m, why)));
                                continue;
                            }
                        },
                    };
                    if m.iter().all(u8::is_ascii_whitespace) {
                        found.push((i, dead(i, m, "empty message".into())));
                        continue;
                    }
                    push_line(&mut chunk, m);
                    lines.push(i);
                }
                let Some(decoder) = self.lines.as_mut() else {
                    return Err(Error::Other("no line decoder for a text format".into()));
                };
                let out = decoder.decode(&chunk, "", 1)?;
                let mut bad = vec![false; lines.len()];
                for d in out.dead_letters {
                    let Some(k) = d
                        .line
                        .and_then(|l| usize::try_from(l).ok())
                        .and_then(|l| l.checked_sub(1))
                    else {
                        continue;
                    };
                    if let Some(&i) = lines.get(k) {
                        bad[k] = true;
                        found.push((i, dead(i, messages[i], d.error)));
                    }
                }
                let rows = lines
                    .iter()
                    .zip(&bad)
                    .filter(|(_, b)| !**b)
                    .map(|(i, _)| *i)
                    .collect();
                found.sort_by_key(|(i, _)| *i);
                Ok(Decoded {
                    batch: out.data,
                    rows,
                    dead_letters: found.into_iter().map(|(_, d)| d).collect(),
                })
            }
        }
    }

    fn one_column(
        &self,
        array: ArrayRef,
        rows: Vec<usize>,
        dead_letters: Vec<DeadLetter>,
    ) -> Result<Decoded> {
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), vec![array])
            .map_err(|e| Error::arrow("building message rows", e))?;
        Ok(Decoded {
            batch: (batch.num_rows() > 0).then_some(batch),
            rows,
            dead_letters,
        })
    }
}

/// Encodes rows as messages, one per row.
#[derive(Debug, Clone)]
pub(crate) struct MessageEncoder {
    format: MessageFormat,
    avro: Option<avro::AvroEncoder>,
    /// Registry-framed JSON: the plan, and the prefix once registered.
    json: Option<(Arc<json_schema::JsonSinkPlan>, Option<[u8; 5]>)>,
    /// Protobuf: the plan, and the prefix once registered.
    protobuf: Option<(Arc<protobuf::ProtobufSinkPlan>, Option<[u8; 6]>)>,
}

/// What a sink's messages are written as.
pub(crate) struct EncoderSource<'a> {
    /// The format.
    pub(crate) format: MessageFormat,
    /// The rows written.
    pub(crate) input: &'a Schema,
    /// `schema: {subject}` (avro).
    pub(crate) declared: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// `registry:` (avro).
    pub(crate) registry: Option<&'a str>,
    /// The subject written when `avro` names none (`<topic>-value`).
    pub(crate) default_subject: String,
}

impl MessageEncoder {
    /// An encoder of rows of `schema`; `string`/`bytes` need a `value`
    /// column of that type; `avro` checks its schema against the registry.
    pub(crate) fn new(target: &EncoderSource<'_>) -> std::result::Result<Self, String> {
        let (format, schema) = (target.format, target.input);
        if format == MessageFormat::Protobuf {
            let subject = sink_subject(target.declared, &target.default_subject, "protobuf")?;
            let plan = protobuf::ProtobufSinkPlan::plan(target.registry, &subject, schema)?;
            return Ok(Self {
                format,
                avro: None,
                json: None,
                protobuf: Some((Arc::new(plan), None)),
            });
        }
        if format == MessageFormat::Avro {
            let subject = sink_subject(target.declared, &target.default_subject, "avro")?;
            let plan = avro::AvroSinkPlan::plan(target.registry, &subject, schema)?;
            return Ok(Self {
                format,
                avro: Some(avro::AvroEncoder::new(Arc::new(plan))),
                json: None,
                protobuf: None,
            });
        }
        if let Some(d) = target.declared {
            let registered = (format == MessageFormat::Json)
                .then(|| registry_subject(d))
                .flatten()
                .filter(|(_, version)| version.is_none());
            let Some((subject, _)) = registered else {
                return Err(format!(
                    "format {format:?} takes no schema (json: {{subject}} to register its JSON Schema)"
                ));
            };
            let subject = subject.unwrap_or_else(|| target.default_subject.clone());
            let plan = json_schema::JsonSinkPlan::plan(target.registry, &subject, schema)?;
            return Ok(Self {
                format,
                avro: None,
                json: Some((Arc::new(plan), None)),
                protobuf: None,
            });
        }
        if let Some(fixed) = format.fixed_schema() {
            let want = fixed.field(0).data_type();
            match schema.field_with_name(VALUE) {
                Ok(f) if f.data_type() == want => {}
                _ => {
                    return Err(format!(
                        "format {format:?} writes column '{VALUE}' of type {want}; the input has {}",
                        schema
                            .fields()
                            .iter()
                            .map(|f| format!("{}: {}", f.name(), f.data_type()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        Ok(Self {
            format,
            avro: None,
            json: None,
            protobuf: None,
        })
    }

    /// One message per row of `batch`.
    pub(crate) async fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let err = |e| Error::arrow("encoding messages", e);
        match self.format {
            MessageFormat::Protobuf => {
                let Some((plan, prefix)) = self.protobuf.as_mut() else {
                    return Err(Error::Other("protobuf rows without a message type".into()));
                };
                if prefix.is_none() {
                    *prefix = Some(plan.prefix().await?);
                }
                plan.encode(batch, prefix.as_ref().map_or(&[], |p| p.as_slice()))
            }
            MessageFormat::Avro => match self.avro.as_mut() {
                Some(avro) => avro.encode(batch).await,
                None => Err(Error::Other("avro rows without a schema".into())),
            },
            MessageFormat::Json | MessageFormat::Csv => {
                let mut out = Vec::new();
                if self.format == MessageFormat::Json {
                    let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
                    w.write(batch).map_err(err)?;
                    w.finish().map_err(err)?;
                } else {
                    let mut w = arrow::csv::WriterBuilder::new()
                        .with_header(false)
                        .build(&mut out);
                    w.write(batch).map_err(err)?;
                }
                let prefix: &[u8] = match self.json.as_mut() {
                    None => &[],
                    Some((plan, prefix)) => {
                        if prefix.is_none() {
                            *prefix = Some(plan.prefix().await?);
                        }
                        prefix.as_ref().map_or(&[], |p| p.as_slice())
                    }
                };
                Ok(out
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| [prefix, l].concat())
                    .collect())
            }
            MessageFormat::String => {
                let column = batch
                    .column_by_name(VALUE)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(|| Error::Other(format!("no string column '{VALUE}'")))?;
                // A null value is an empty message.
                Ok(column
                    .iter()
                    .map(|v| v.map(|s| s.as_bytes().to_vec()).unwrap_or_default())
                    .collect())
            }
            MessageFormat::Bytes => {
                let column = batch
                    .column_by_name(VALUE)
                    .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
                    .ok_or_else(|| Error::Other(format!("no binary column '{VALUE}'")))?;
                Ok(column
                    .iter()
                    .map(|v| v.map(<[u8]>::to_vec).unwrap_or_default())
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn json_messages_round_trip_and_bad_ones_keep_their_position() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let values = Values {
            schema: Arc::clone(&schema),
            avro: None,
            json: None,
            protobuf: None,
        };
        let mut d = MessageDecoder::new(MessageFormat::Json, &values);
        let messages: Vec<&[u8]> = vec![
            b"{\"a\": 1,\n \"b\": \"x\"}",
            b"{\"a\": ",
            b"",
            b"{\"a\": 4, \"b\": \"y\"}",
        ];
        let out = block_on(d.decode(&messages, |i| format!("s/{i}"))).expect("decodes");
        assert_eq!(out.rows, vec![0, 3]);
        let files: Vec<_> = out
            .dead_letters
            .iter()
            .filter_map(|d| d.file.clone())
            .collect();
        assert_eq!(files, vec!["s/1", "s/2"]);
        let batch = out.batch.expect("rows");
        let a = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert_eq!(a.values().to_vec(), vec![1, 4]);
        let mut encoder = MessageEncoder::new(&EncoderSource {
            format: MessageFormat::Json,
            input: &schema,
            declared: None,
            registry: None,
            default_subject: String::new(),
        })
        .expect("encoder");
        let encoded = block_on(encoder.encode(&batch)).expect("encodes");
        assert_eq!(encoded[0], b"{\"a\":1,\"b\":\"x\"}".to_vec());
        let encoded: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let again = block_on(d.decode(&encoded, |i| i.to_string())).expect("decodes");
        assert_eq!(again.batch.expect("rows"), batch);
    }

    #[test]
    fn string_messages_reject_invalid_utf8() {
        let values = Values {
            schema: Arc::new(MessageFormat::String.fixed_schema().expect("fixed")),
            avro: None,
            json: None,
            protobuf: None,
        };
        let mut d = MessageDecoder::new(MessageFormat::String, &values);
        let out = block_on(d.decode(&[b"ok", b"\xff"], |i| i.to_string())).expect("decodes");
        assert_eq!(out.rows, vec![0]);
        assert_eq!(out.dead_letters.len(), 1);
    }
}
