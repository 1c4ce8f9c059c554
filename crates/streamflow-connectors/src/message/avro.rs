//! `avro` messages in the Confluent wire format (magic byte 0, the writer
//! schema's 4-byte big-endian registry id, the Avro body), decoded straight
//! into Arrow columns by `arrow-avro` and resolved to the flow's (reader)
//! schema — a version of a registry subject, fixed when the flow is planned.
//!
//! A writer id not seen before is looked up in the registry when it first
//! appears, so producers may evolve their schema mid-stream; a writer
//! schema that cannot be read into the flow's schema, an id the registry
//! does not know, a message not in the wire format or a body that does not
//! decode sends that message to the dead letters with the reason, and the
//! others of its batch go on.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use streamflow_core::{DeadLetter, Error, Result};

use super::Decoded;
use crate::schema_registry::RegistryClient;

/// A source's Avro reading, as planned.
#[derive(Debug)]
pub struct AvroPlan {
    /// Where writer ids met later are looked up (none: only the reader's id is known).
    client: Option<RegistryClient>,
    /// The reader schema's registry id.
    reader_id: u32,
    /// The reader schema.
    reader: String,
    /// Its Arrow form: the columns of the source's rows.
    arrow: SchemaRef,
}

impl AvroPlan {
    /// Reads version `version` (latest when `None`) of `subject` from the
    /// registry at `registry` (or the default one) as the flow's schema.
    ///
    /// # Errors
    /// No registry, the registry unreachable, no such subject or version,
    /// a schema that is not Avro or not a record.
    pub fn plan(
        registry: Option<&str>,
        subject: &str,
        version: Option<u32>,
    ) -> std::result::Result<AvroPlan, String> {
        let client = RegistryClient::for_flow(registry)?;
        let fetched = client.version_at_plan_time(subject, version, Some("AVRO"))?;
        let writers = BTreeMap::from([(fetched.id, fetched.schema.clone())]);
        let decoder = build(&fetched.schema, &writers, 1)
            .map_err(|e| format!("subject '{subject}': not a schema rows can be read with: {e}"))?;
        Ok(AvroPlan {
            client: Some(client),
            reader_id: fetched.id,
            reader: fetched.schema,
            arrow: decoder.schema(),
        })
    }

    /// Reads with `schema`, known by id `id`, and no registry: messages
    /// written with any other schema id are dead letters.
    ///
    /// # Errors
    /// A schema rows cannot be read with.
    pub fn with_schema(id: u32, schema: &str) -> std::result::Result<AvroPlan, String> {
        let writers = BTreeMap::from([(id, schema.to_string())]);
        let decoder = build(schema, &writers, 1)?;
        Ok(AvroPlan {
            client: None,
            reader_id: id,
            reader: schema.to_string(),
            arrow: decoder.schema(),
        })
    }

    /// The columns rows have.
    pub fn schema(&self) -> Schema {
        self.arrow.as_ref().clone()
    }
}

/// A decoder of every writer schema in `writers`, resolved to `reader`.
fn build(
    reader: &str,
    writers: &BTreeMap<u32, String>,
    batch_size: usize,
) -> std::result::Result<Decoder, String> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    for (id, text) in writers {
        store
            .set(Fingerprint::Id(*id), AvroSchema::new(text.clone()))
            .map_err(|e| e.to_string())?;
    }
    ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_reader_schema(AvroSchema::new(reader.to_string()))
        .with_batch_size(batch_size)
        .build_decoder()
        .map_err(|e| e.to_string())
}

/// Rows decoded per Arrow batch inside one call (bounds the builders).
const BATCH: usize = 8192;

/// The per-instance state: writer schemas met so far and the decoder.
#[derive(Debug)]
pub(crate) struct AvroDecoder {
    plan: Arc<AvroPlan>,
    /// Writer schemas that resolve to the reader, by id.
    writers: BTreeMap<u32, String>,
    /// Ids whose schema cannot be read, and why.
    refused: BTreeMap<u32, String>,
    decoder: Option<Decoder>,
}

impl AvroDecoder {
    pub(crate) fn new(plan: Arc<AvroPlan>) -> Self {
        let writers = BTreeMap::from([(plan.reader_id, plan.reader.clone())]);
        Self {
            plan,
            writers,
            refused: BTreeMap::new(),
            decoder: None,
        }
    }

    fn decoder(&mut self) -> Result<&mut Decoder> {
        if self.decoder.is_none() {
            let d = build(&self.plan.reader, &self.writers, BATCH)
                .map_err(|e| Error::Other(format!("building the Avro decoder: {e}")))?;
            self.decoder = Some(d);
        }
        self.decoder
            .as_mut()
            .ok_or_else(|| Error::Other("no Avro decoder".into()))
    }

    /// Learns the writer schemas of ids not met before (asking the registry).
    async fn learn(&mut self, messages: &[&[u8]]) -> Result<()> {
        let mut new: Vec<u32> = messages
            .iter()
            .filter_map(|m| super::framed_id(m))
            .filter(|id| !self.writers.contains_key(id) && !self.refused.contains_key(id))
            .collect();
        new.sort_unstable();
        new.dedup();
        for id in new {
            let Some(client) = self.plan.client.as_ref() else {
                self.refused
                    .insert(id, format!("schema id {id} is not known (no registry)"));
                continue;
            };
            let fetched = client.schema(id).await.map_err(Error::Other)?;
            let why = match fetched {
                None => Some(format!(
                    "schema id {id} is not in the registry at {}",
                    client.url()
                )),
                Some(f) if f.schema_type != "AVRO" => Some(format!(
                    "schema id {id} is a {} schema, not AVRO",
                    f.schema_type
                )),
                Some(f) => {
                    let alone = BTreeMap::from([(id, f.schema.clone())]);
                    match build(&self.plan.reader, &alone, 1) {
                        Ok(_) => {
                            tracing::info!(
                                writer = id,
                                reader = self.plan.reader_id,
                                "new Avro writer schema"
                            );
                            self.writers.insert(id, f.schema);
                            self.decoder = None;
                            None
                        }
                        Err(e) => Some(format!(
                            "schema id {id} cannot be read as schema id {} (the flow's): {e}",
                            self.plan.reader_id
                        )),
                    }
                }
            };
            if let Some(why) = why {
                tracing::warn!(writer = id, reason = %why, "Avro writer schema refused: its messages go to the dead letters");
                self.refused.insert(id, why);
            }
        }
        Ok(())
    }

    /// Decodes `messages` (as [`super::MessageDecoder::decode`]).
    pub(crate) async fn decode(
        &mut self,
        messages: &[&[u8]],
        dead: impl Fn(usize, &[u8], String) -> DeadLetter,
    ) -> Result<Decoded> {
        self.learn(messages).await?;
        let mut batches: Vec<RecordBatch> = Vec::new();
        let mut rows = Vec::with_capacity(messages.len());
        let mut dead_letters: Vec<(usize, DeadLetter)> = Vec::new();
        // Messages in the decoder's builders, not yet in `batches`.
        let mut pending: Vec<usize> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let refusal = match super::framed_id(m) {
                None => Some(super::NOT_FRAMED.to_string()),
                Some(id) => self.refused.get(&id).cloned(),
            };
            if let Some(why) = refusal {
                dead_letters.push((i, dead(i, m, why)));
                continue;
            }
            match self.decode_one(m, &mut batches, &mut pending, &mut rows)? {
                Ok(()) => pending.push(i),
                Err(why) => {
                    dead_letters.push((i, dead(i, m, format!("not a valid Avro record: {why}"))));
                    // The builders may hold part of it: start afresh and
                    // decode again the rows they held.
                    self.decoder = None;
                    for &k in &std::mem::take(&mut pending) {
                        match self.decode_one(messages[k], &mut batches, &mut pending, &mut rows)? {
                            Ok(()) => pending.push(k),
                            Err(why) => dead_letters.push((k, dead(k, messages[k], why))),
                        }
                    }
                }
            }
        }
        if let Some(b) = self
            .decoder()?
            .flush()
            .map_err(|e| Error::Other(e.to_string()))?
        {
            batches.push(b);
        }
        rows.append(&mut pending);
        dead_letters.sort_by_key(|(i, _)| *i);
        let batch = match batches.len() {
            0 => None,
            _ => {
                let columns = arrow::compute::concat_batches(&batches[0].schema(), &batches)
                    .map_err(|e| Error::arrow("joining Avro batches", e))?;
                Some(
                    RecordBatch::try_new(Arc::clone(&self.plan.arrow), columns.columns().to_vec())
                        .map_err(|e| Error::arrow("Avro rows", e))?,
                )
            }
        };
        Ok(Decoded {
            batch,
            rows,
            dead_letters: dead_letters.into_iter().map(|(_, d)| d).collect(),
        })
    }

    /// Decodes one message; full batches (and a batch ended by a change of
    /// writer schema) move to `batches` with their `pending` rows.
    /// The inner error: the message is bad.
    fn decode_one(
        &mut self,
        m: &[u8],
        batches: &mut Vec<RecordBatch>,
        pending: &mut Vec<usize>,
        rows: &mut Vec<usize>,
    ) -> Result<std::result::Result<(), String>> {
        let mut at = 0;
        loop {
            let d = self.decoder()?;
            let n = match d.decode(&m[at..]) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e.to_string())),
            };
            at += n;
            if at >= m.len() {
                return Ok(Ok(()));
            }
            // Not all taken: the batch is full, or a new writer schema
            // waits for it to be flushed, or the body is cut short.
            match d.flush() {
                Ok(Some(b)) => {
                    batches.push(b);
                    rows.append(pending);
                }
                Ok(None) if n == 0 => return Ok(Err("the message ends inside the record".into())),
                Ok(None) => {}
                Err(e) => return Ok(Err(e.to_string())),
            }
        }
    }
}

/// Reads Avro messages in the Confluent wire format into Arrow rows, as
/// `format: avro` sources do.
#[derive(Debug)]
pub struct AvroReader {
    decoder: AvroDecoder,
}

impl AvroReader {
    /// A reader of rows of `plan`'s schema.
    pub fn new(plan: Arc<AvroPlan>) -> Self {
        Self {
            decoder: AvroDecoder::new(plan),
        }
    }

    /// The rows of `messages`, and the messages that are not rows (with why).
    ///
    /// # Errors
    /// The registry cannot be reached.
    pub async fn read(
        &mut self,
        messages: &[&[u8]],
    ) -> Result<(Option<RecordBatch>, Vec<DeadLetter>)> {
        let out = self
            .decoder
            .decode(messages, super::indexed_dead_letter)
            .await?;
        Ok((out.batch, out.dead_letters))
    }
}

/// A sink's Avro writing, as planned: the schema derived from its input,
/// checked against the registry subject it is registered under.
#[derive(Debug)]
pub struct AvroSinkPlan {
    client: RegistryClient,
    subject: String,
    /// The Avro schema (JSON) rows are written with.
    schema: String,
    /// The input's columns, with that schema in their metadata.
    input: SchemaRef,
}

impl AvroSinkPlan {
    /// Derives the Avro schema of `input` and checks that it may be
    /// registered under `subject` (its compatibility level decides); the
    /// registration itself happens when the sink first writes.
    ///
    /// # Errors
    /// No registry, a column type Avro cannot hold, or an incompatible schema.
    pub fn plan(
        registry: Option<&str>,
        subject: &str,
        input: &Schema,
    ) -> std::result::Result<AvroSinkPlan, String> {
        let client = RegistryClient::for_flow(registry)?;
        let plain = Schema::new(input.fields().clone());
        let avro =
            AvroSchema::try_from(&plain).map_err(|e| format!("the input has no Avro form: {e}"))?;
        client.check_at_plan_time(subject, "AVRO", &avro.json_string)?;
        let metadata = std::collections::HashMap::from([(
            arrow_avro::schema::SCHEMA_METADATA_KEY.to_string(),
            avro.json_string.clone(),
        )]);
        Ok(AvroSinkPlan {
            client,
            subject: subject.to_string(),
            schema: avro.json_string,
            input: Arc::new(Schema::new_with_metadata(input.fields().clone(), metadata)),
        })
    }
}

/// A sink instance's Avro writer: registers the schema on first use, then
/// encodes each row as one message in the Confluent wire format.
#[derive(Debug)]
pub(crate) struct AvroEncoder {
    plan: Arc<AvroSinkPlan>,
    encoder: Option<arrow_avro::writer::Encoder>,
}

impl Clone for AvroEncoder {
    fn clone(&self) -> Self {
        AvroEncoder::new(Arc::clone(&self.plan))
    }
}

impl AvroEncoder {
    pub(crate) fn new(plan: Arc<AvroSinkPlan>) -> Self {
        Self {
            plan,
            encoder: None,
        }
    }

    pub(crate) async fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        if self.encoder.is_none() {
            let id = self
                .plan
                .client
                .register(&self.plan.subject, "AVRO", &self.plan.schema)
                .await
                .map_err(Error::Other)?;
            tracing::info!(subject = %self.plan.subject, id, "Avro schema registered");
            let encoder = arrow_avro::writer::WriterBuilder::new(self.plan.input.as_ref().clone())
                .with_fingerprint_strategy(arrow_avro::schema::FingerprintStrategy::Id(id))
                .build_encoder::<arrow_avro::writer::format::AvroSoeFormat>()
                .map_err(|e| Error::Other(format!("building the Avro encoder: {e}")))?;
            self.encoder = Some(encoder);
        }
        let Some(encoder) = self.encoder.as_mut() else {
            return Err(Error::Other("no Avro encoder".into()));
        };
        let batch = RecordBatch::try_new(Arc::clone(&self.plan.input), batch.columns().to_vec())
            .map_err(|e| Error::arrow("Avro rows", e))?;
        encoder
            .encode(&batch)
            .map_err(|e| Error::Other(format!("encoding Avro: {e}")))?;
        Ok(encoder.flush().iter().map(|row| row.to_vec()).collect())
    }
}
