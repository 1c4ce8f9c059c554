//! `streamflow bench protobuf`: decoding Nexmark bids in the Confluent
//! Protobuf wire format — StreamFlow's reader (off the wire into Arrow
//! columns, as `format: protobuf` sources do) against prost-reflect's
//! `DynamicMessage` on the same messages. The messages are made first
//! (untimed) from the Nexmark generator's bids, every field included.

use anyhow::{Context, anyhow};
use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use serde::Serialize;
use streamflow_connectors::message::protobuf::ProtobufPlan;
use streamflow_connectors::sources::nexmark::{NexmarkConfig, NexmarkGenerator, NexmarkTable};

/// The bid message.
const SCHEMA: &str = r#"syntax = "proto3";
package nexmark;
import "google/protobuf/timestamp.proto";
message Bid {
  int64 auction = 1;
  int64 bidder = 2;
  int64 price = 3;
  string channel = 4;
  string url = 5;
  google.protobuf.Timestamp date_time = 6;
  string extra = 7;
}
"#;
/// The schema id the messages carry.
const ID: u32 = 1;
/// Messages per read, as a source hands them over.
const CHUNK: usize = 8192;

/// Which decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtobufDecoderChoice {
    /// StreamFlow's reader: off the wire into Arrow columns.
    Streamflow,
    /// prost-reflect's `DynamicMessage::decode`, one message at a time.
    ProstReflect,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn int_field(out: &mut Vec<u8>, number: u64, v: i64) {
    varint(out, number << 3);
    varint(out, v as u64);
}

fn bytes_field(out: &mut Vec<u8>, number: u64, v: &[u8]) {
    varint(out, (number << 3) | 2);
    varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

/// Makes `events` bids as Confluent-framed Protobuf messages.
fn messages(events: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    let generator = NexmarkGenerator::new(NexmarkConfig {
        events: Some(events),
        table: NexmarkTable::Bid,
        ..NexmarkConfig::default()
    });
    let mut out = Vec::with_capacity(events as usize);
    let mut at = 0;
    while at < events {
        let end = (at + CHUNK as u64).min(events);
        let batch = generator
            .generate(at..end)
            .map_err(|e| anyhow!("generating bids: {e}"))?;
        let int = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Int64Type>())
                .ok_or_else(|| anyhow!("no {name}"))
        };
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| anyhow!("no {name}"))
        };
        let (auction, bidder, price) = (int("auction")?, int("bidder")?, int("price")?);
        let (channel, url, extra) = (text("channel")?, text("url")?, text("extra")?);
        let date_time = batch
            .column_by_name("date_time")
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
            .ok_or_else(|| anyhow!("no date_time"))?;
        for i in 0..batch.num_rows() {
            // Magic byte, id, message index [0].
            let mut m = vec![0, 0, 0, 0, ID as u8, 0];
            int_field(&mut m, 1, auction.value(i));
            int_field(&mut m, 2, bidder.value(i));
            int_field(&mut m, 3, price.value(i));
            bytes_field(&mut m, 4, channel.value(i).as_bytes());
            bytes_field(&mut m, 5, url.value(i).as_bytes());
            let ms = date_time.value(i);
            let mut ts = Vec::new();
            int_field(&mut ts, 1, ms.div_euclid(1000));
            int_field(&mut ts, 2, ms.rem_euclid(1000) * 1_000_000);
            bytes_field(&mut m, 6, &ts);
            bytes_field(&mut m, 7, extra.value(i).as_bytes());
            out.push(m);
        }
        at = end;
    }
    Ok(out)
}

/// Decodes `events` bids with `decoder`.
///
/// # Errors
/// A message that does not decode (none should).
pub fn run(events: u64, decoder: ProtobufDecoderChoice) -> anyhow::Result<super::DecodeBench> {
    let messages = messages(events)?;
    let name = decoder_name(decoder);
    match decoder {
        ProtobufDecoderChoice::Streamflow => {
            let plan = ProtobufPlan::with_schema(ID, SCHEMA, None).map_err(|e| anyhow!(e))?;
            super::DecodeBench::timed(name, &messages, |messages| {
                super::rows_read(messages, |rt, refs| rt.block_on(plan.read(refs)))
            })
        }
        ProtobufDecoderChoice::ProstReflect => {
            let streamflow_registry::Parsed::Protobuf(compiled) =
                streamflow_registry::Parsed::parse(
                    streamflow_registry::SchemaType::Protobuf,
                    SCHEMA,
                    &[],
                )
                .map_err(|e| anyhow!(e))?
            else {
                return Err(anyhow!("not a Protobuf schema"));
            };
            let bid = compiled
                .message(None)
                .ok_or_else(|| anyhow!("no message"))?;
            super::DecodeBench::timed(name, &messages, |messages| {
                for m in messages {
                    let message = prost_reflect::DynamicMessage::decode(bid.clone(), &m[6..])
                        .context("a message did not decode")?;
                    std::hint::black_box(message);
                }
                Ok(messages.len() as u64)
            })
        }
    }
}

fn decoder_name(d: ProtobufDecoderChoice) -> &'static str {
    match d {
        ProtobufDecoderChoice::Streamflow => "streamflow",
        ProtobufDecoderChoice::ProstReflect => "prost-reflect",
    }
}
