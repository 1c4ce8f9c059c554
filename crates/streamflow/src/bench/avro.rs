//! `streamflow bench avro`: decoding Nexmark bids in the Confluent Avro wire
//! format — StreamFlow's reader (straight into Arrow columns, as `format:
//! avro` sources do) against `apache-avro` decoding the same messages into
//! its `Value`s. The messages are made first (untimed) from the Nexmark
//! generator's bids, every field included.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use serde::Serialize;
use streamflow_connectors::message::avro::{AvroPlan, AvroReader};
use streamflow_connectors::sources::nexmark::{NexmarkConfig, NexmarkGenerator, NexmarkTable};

/// The schema id the messages carry.
const ID: u32 = 1;
/// Messages per read, as a source hands them over.
const CHUNK: usize = 8192;

/// Which decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AvroDecoderChoice {
    /// StreamFlow's reader: arrow-avro into Arrow columns.
    Streamflow,
    /// apache-avro's `GenericDatumReader` into `Value`s, one message at a time.
    ApacheAvro,
}

/// Makes `events` bids as Confluent-framed messages and their schema.
fn messages(events: u64) -> anyhow::Result<(String, Vec<Vec<u8>>)> {
    let generator = NexmarkGenerator::new(NexmarkConfig {
        events: Some(events),
        table: NexmarkTable::Bid,
        ..NexmarkConfig::default()
    });
    let schema = generator.schema();
    let avro = arrow_avro::schema::AvroSchema::try_from(schema.as_ref())
        .map_err(|e| anyhow!("the bid schema in Avro: {e}"))?;
    let mut encoder = arrow_avro::writer::WriterBuilder::new(schema.as_ref().clone())
        .with_fingerprint_strategy(arrow_avro::schema::FingerprintStrategy::Id(ID))
        .build_encoder::<arrow_avro::writer::format::AvroSoeFormat>()
        .map_err(|e| anyhow!("the encoder: {e}"))?;
    let mut out = Vec::with_capacity(events as usize);
    let mut at = 0;
    while at < events {
        let end = (at + CHUNK as u64).min(events);
        let batch = generator
            .generate(at..end)
            .map_err(|e| anyhow!("generating bids: {e}"))?;
        encoder
            .encode(&batch)
            .map_err(|e| anyhow!("encoding bids: {e}"))?;
        out.extend(encoder.flush().iter().map(|row| row.to_vec()));
        at = end;
    }
    Ok((avro.json_string, out))
}

/// Decodes `events` bids with `decoder`.
///
/// # Errors
/// A message that does not decode (none should).
pub fn run(events: u64, decoder: AvroDecoderChoice) -> anyhow::Result<super::DecodeBench> {
    let (schema, messages) = messages(events)?;
    let name = decoder_name(decoder);
    match decoder {
        AvroDecoderChoice::Streamflow => {
            let plan = AvroPlan::with_schema(ID, &schema).map_err(|e| anyhow!(e))?;
            let mut reader = AvroReader::new(Arc::new(plan));
            super::DecodeBench::timed(name, &messages, |messages| {
                super::rows_read(messages, |rt, refs| rt.block_on(reader.read(refs)))
            })
        }
        AvroDecoderChoice::ApacheAvro => {
            let parsed = apache_avro::Schema::parse_str(&schema).context("the bid schema")?;
            let reader = apache_avro::reader::datum::GenericDatumReader::builder(&parsed)
                .build()
                .context("the datum reader")?;
            super::DecodeBench::timed(name, &messages, |messages| {
                for m in messages {
                    let mut body = &m[5..];
                    let value = reader
                        .read_value(&mut body)
                        .context("a message did not decode")?;
                    std::hint::black_box(value);
                }
                Ok(messages.len() as u64)
            })
        }
    }
}

fn decoder_name(d: AvroDecoderChoice) -> &'static str {
    match d {
        AvroDecoderChoice::Streamflow => "streamflow",
        AvroDecoderChoice::ApacheAvro => "apache-avro",
    }
}
