//! `nexmark`: the Nexmark auction benchmark's event stream.
//!
//! Follows the Beam/Flink Nexmark generator model: events in the fixed
//! proportion 1 person : 3 auctions : 46 bids, ids drawn around the most
//! recent people and auctions with "hot" auctions, bidders and sellers,
//! prices log-uniform from $1 to $1M, event time `base_time + n / event_rate`.
//! Every event is a pure function of `(seed, event number)`, so output is
//! deterministic whatever the batch size or parallelism. Generation is
//! columnar: one batch of events is written straight into Arrow builders.
//!
//! ```yaml
//! - name: events
//!   type: nexmark
//!   config: {events: 1000000, seed: 7, table: bid}   # table: events | bid | auction | person
//! ```

use std::sync::Arc;

use arrow::array::{StringBuilder, StructArray, TimestampMillisecondBuilder};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::{Diagnostics, Error, Result, Source, SourceBatch, SourceOffset};
use streamflow_dsl::Mode;

use super::sequence::ChunkCursor;
use columns::{AuctionColumns, BidColumns, PersonColumns};
use model::{AUCTION_PROPORTION, Kind, NUM_IN_FLIGHT_AUCTIONS, Rng, TOTAL_PROPORTION};

mod columns;
mod model;
use crate::registry::{SourceContext, SourceFactory};

/// Which rows and columns the source emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NexmarkTable {
    /// Every event: `event_type`, `date_time` and nullable `person`,
    /// `auction`, `bid` struct columns (Flink's Nexmark datagen layout).
    #[default]
    Events,
    /// Only bids, as flat columns (Flink's `bid` view).
    Bid,
    /// Only auctions, as flat columns.
    Auction,
    /// Only people, as flat columns.
    Person,
}

/// Settings of a `nexmark` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NexmarkConfig {
    /// Number of events (all kinds) to generate; unbounded when absent.
    pub events: Option<u64>,
    /// Random seed; the same seed gives the same events.
    #[serde(default)]
    pub seed: u64,
    /// Event time of event 0, in ms since the epoch.
    #[serde(default = "default_base_time")]
    pub base_time: i64,
    /// Events per second of event time (spacing of `date_time`).
    #[serde(default = "default_event_rate")]
    pub event_rate: u64,
    /// Wall-clock throttle in events per second (unthrottled when absent).
    pub rate: Option<u64>,
    /// Events per generated batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Output layout.
    #[serde(default)]
    pub table: NexmarkTable,
}

fn default_base_time() -> i64 {
    1_700_000_000_000
}
fn default_event_rate() -> u64 {
    10_000
}
fn default_batch_size() -> usize {
    8192
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        Self {
            events: None,
            seed: 0,
            base_time: default_base_time(),
            event_rate: default_event_rate(),
            rate: None,
            batch_size: default_batch_size(),
            table: NexmarkTable::Events,
        }
    }
}

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: NexmarkConfig = ctx.config()?;
    let mut d = Diagnostics::new();
    if config.event_rate == 0 {
        d.push(ctx.at("event_rate"), "must be greater than 0");
    }
    if config.batch_size == 0 {
        d.push(ctx.at("batch_size"), "must be greater than 0");
    }
    if config.rate == Some(0) {
        d.push(ctx.at("rate"), "must be greater than 0");
    }
    if ctx.mode == Mode::Job && config.events.is_none() {
        d.push(
            ctx.at("events"),
            "required in job mode (the source must end)",
        );
    }
    d.into_result(())?;
    Ok(Arc::new(NexmarkFactory {
        generator: Arc::new(NexmarkGenerator::new(config)),
        projection: None,
    }))
}

struct NexmarkFactory {
    generator: Arc<NexmarkGenerator>,
    /// The columns kept (with their schema) when the flow reads only some.
    projection: Option<(Vec<usize>, SchemaRef)>,
}

impl SourceFactory for NexmarkFactory {
    fn schema(&self) -> SchemaRef {
        self.projection
            .as_ref()
            .map_or_else(|| self.generator.schema(), |(_, s)| Arc::clone(s))
    }
    fn bounded(&self) -> bool {
        self.generator.config.events.is_some()
    }
    /// Emits only the top-level columns the flow reads (the events are
    /// generated whole, so they stay the same; what travels downstream and
    /// across workers shrinks). Narrowed nested fields are not pruned.
    fn project(&self, schema: &Schema) -> Option<Arc<dyn SourceFactory>> {
        let full = self.generator.schema();
        let indices = schema
            .fields()
            .iter()
            .map(|f| {
                let (i, whole) = full.column_with_name(f.name())?;
                (whole.data_type() == f.data_type()).then_some(i)
            })
            .collect::<Option<Vec<usize>>>()?;
        if indices.len() == full.fields().len() {
            return None;
        }
        let projected = Arc::new(full.project(&indices).ok()?);
        Some(Arc::new(NexmarkFactory {
            generator: Arc::clone(&self.generator),
            projection: Some((indices, projected)),
        }))
    }
    fn create(&self, instance: usize, parallelism: usize) -> Result<Box<dyn Source>> {
        let c = &self.generator.config;
        Ok(Box::new(NexmarkSource {
            generator: Arc::clone(&self.generator),
            cursor: ChunkCursor::new(instance, parallelism, c.batch_size, c.events, c.rate),
            columns: self.projection.as_ref().map(|(i, _)| i.clone()),
        }))
    }
}

/// One instance of the source.
struct NexmarkSource {
    generator: Arc<NexmarkGenerator>,
    cursor: ChunkCursor,
    /// The columns emitted, when not all.
    columns: Option<Vec<usize>>,
}

#[async_trait]
impl Source for NexmarkSource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        let Some(range) = self.cursor.next().await else {
            return Ok(None);
        };
        let mut batch = self.generator.generate(range)?;
        if let Some(columns) = &self.columns {
            batch = batch
                .project(columns)
                .map_err(|e| Error::arrow("nexmark: projecting", e))?;
        }
        Ok(Some(SourceBatch {
            data: Some(batch),
            dead_letters: Vec::new(),
            splits: None,
        }))
    }

    fn offset(&mut self, _checkpoint: u64) -> SourceOffset {
        self.cursor.offset()
    }

    async fn seek(&mut self, offset: &SourceOffset) -> Result<()> {
        self.cursor.seek(offset)
    }

    fn size_hint(&self) -> Option<u64> {
        self.cursor.expected()
    }
}

/// Generates Nexmark events by event number; usable on its own (tests
/// compute expected query results from it without running a pipeline).
#[derive(Debug)]
pub struct NexmarkGenerator {
    config: NexmarkConfig,
    schema: SchemaRef,
}

impl NexmarkGenerator {
    /// A generator for `config`.
    pub fn new(config: NexmarkConfig) -> Self {
        let schema = match config.table {
            NexmarkTable::Events => Arc::new(Schema::new(vec![
                Field::new("event_type", DataType::Utf8, false),
                Field::new("date_time", ts_type(), false),
                Field::new("person", DataType::Struct(person_fields()), true),
                Field::new("auction", DataType::Struct(auction_fields()), true),
                Field::new("bid", DataType::Struct(bid_fields()), true),
            ])),
            NexmarkTable::Bid => Arc::new(Schema::new(bid_fields())),
            NexmarkTable::Auction => Arc::new(Schema::new(auction_fields())),
            NexmarkTable::Person => Arc::new(Schema::new(person_fields())),
        };
        Self { config, schema }
    }

    /// Schema of the generated batches.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The events numbered `range`, as one batch in the configured layout.
    ///
    /// # Errors
    /// Only if Arrow rejects the assembled batch (a bug).
    pub fn generate(&self, range: std::ops::Range<u64>) -> Result<RecordBatch> {
        let n = (range.end - range.start) as usize;
        let c = &self.config;
        let arrow_err = |e| Error::arrow("nexmark: assembling batch", e);
        match c.table {
            NexmarkTable::Events => {
                let mut kinds = StringBuilder::with_capacity(n, n * 4);
                let mut times = TimestampMillisecondBuilder::with_capacity(n);
                let mut person = PersonColumns::with_capacity(n / 50 + 1);
                let mut auction = AuctionColumns::with_capacity(n * 3 / 50 + 1);
                let mut bid = BidColumns::with_capacity(n);
                let (mut pv, mut av, mut bv) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for idx in range {
                    let mut rng = Rng::for_event(c.seed, idx);
                    let ts = self.timestamp(idx);
                    times.append_value(ts);
                    let kind = Kind::of(idx);
                    pv.push(kind == Kind::Person);
                    av.push(kind == Kind::Auction);
                    bv.push(kind == Kind::Bid);
                    match kind {
                        Kind::Person => {
                            kinds.append_value("person");
                            person.push(idx, ts, &mut rng);
                            auction.push_null();
                            bid.push_null();
                        }
                        Kind::Auction => {
                            kinds.append_value("auction");
                            person.push_null();
                            auction.push(idx, ts, self.avg_auction_ms(), &mut rng);
                            bid.push_null();
                        }
                        Kind::Bid => {
                            kinds.append_value("bid");
                            person.push_null();
                            auction.push_null();
                            bid.push(idx, ts, &mut rng);
                        }
                    }
                }
                let person = StructArray::try_new(
                    person_fields(),
                    person.finish(),
                    Some(NullBuffer::from(pv)),
                )
                .map_err(arrow_err)?;
                let auction = StructArray::try_new(
                    auction_fields(),
                    auction.finish(),
                    Some(NullBuffer::from(av)),
                )
                .map_err(arrow_err)?;
                let bid =
                    StructArray::try_new(bid_fields(), bid.finish(), Some(NullBuffer::from(bv)))
                        .map_err(arrow_err)?;
                RecordBatch::try_new(
                    self.schema(),
                    vec![
                        Arc::new(kinds.finish()),
                        Arc::new(times.finish()),
                        Arc::new(person),
                        Arc::new(auction),
                        Arc::new(bid),
                    ],
                )
                .map_err(arrow_err)
            }
            NexmarkTable::Bid => {
                let mut bid = BidColumns::with_capacity(n);
                for idx in range.filter(|&i| Kind::of(i) == Kind::Bid) {
                    bid.push(idx, self.timestamp(idx), &mut Rng::for_event(c.seed, idx));
                }
                RecordBatch::try_new(self.schema(), bid.finish()).map_err(arrow_err)
            }
            NexmarkTable::Auction => {
                let mut auction = AuctionColumns::with_capacity(n * 3 / 50 + 1);
                for idx in range.filter(|&i| Kind::of(i) == Kind::Auction) {
                    auction.push(
                        idx,
                        self.timestamp(idx),
                        self.avg_auction_ms(),
                        &mut Rng::for_event(c.seed, idx),
                    );
                }
                RecordBatch::try_new(self.schema(), auction.finish()).map_err(arrow_err)
            }
            NexmarkTable::Person => {
                let mut person = PersonColumns::with_capacity(n / 50 + 1);
                for idx in range.filter(|&i| Kind::of(i) == Kind::Person) {
                    person.push(idx, self.timestamp(idx), &mut Rng::for_event(c.seed, idx));
                }
                RecordBatch::try_new(self.schema(), person.finish()).map_err(arrow_err)
            }
        }
    }

    fn timestamp(&self, idx: u64) -> i64 {
        self.config.base_time + (idx as i128 * 1000 / self.config.event_rate as i128) as i64
    }

    /// Mean auction lifetime: long enough for ~100 auctions to be in flight.
    fn avg_auction_ms(&self) -> i64 {
        let events = NUM_IN_FLIGHT_AUCTIONS as u64 * TOTAL_PROPORTION / AUCTION_PROPORTION;
        (events * 1000 / self.config.event_rate).max(1) as i64
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// Columns of a person.
pub fn person_fields() -> Fields {
    Fields::from(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("email_address", DataType::Utf8, false),
        Field::new("credit_card", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("date_time", ts_type(), false),
        Field::new("extra", DataType::Utf8, false),
    ])
}

/// Columns of an auction.
pub fn auction_fields() -> Fields {
    Fields::from(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("item_name", DataType::Utf8, false),
        Field::new("description", DataType::Utf8, false),
        Field::new("initial_bid", DataType::Int64, false),
        Field::new("reserve", DataType::Int64, false),
        Field::new("date_time", ts_type(), false),
        Field::new("expires", ts_type(), false),
        Field::new("seller", DataType::Int64, false),
        Field::new("category", DataType::Int64, false),
        Field::new("extra", DataType::Utf8, false),
    ])
}

/// Columns of a bid.
pub fn bid_fields() -> Fields {
    Fields::from(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("date_time", ts_type(), false),
        Field::new("extra", DataType::Utf8, false),
    ])
}

#[cfg(test)]
mod tests {
    use super::model::FIRST_AUCTION_ID;
    use super::*;
    use arrow::array::{Array, Int64Array, StringArray};

    fn generator(table: NexmarkTable) -> NexmarkGenerator {
        NexmarkGenerator::new(NexmarkConfig {
            events: Some(1000),
            seed: 3,
            table,
            ..NexmarkConfig::default()
        })
    }

    #[test]
    fn proportions_are_1_3_46() {
        let b = generator(NexmarkTable::Events)
            .generate(0..5000)
            .expect("batch");
        let kinds = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        let count = |k: &str| kinds.iter().filter(|v| *v == Some(k)).count();
        assert_eq!(
            (count("person"), count("auction"), count("bid")),
            (100, 300, 4600)
        );
    }

    #[test]
    fn deterministic_regardless_of_batching() {
        let g = generator(NexmarkTable::Bid);
        let whole = g.generate(0..1000).expect("whole");
        let a = g.generate(0..333).expect("a");
        let b = g.generate(333..1000).expect("b");
        let joined = arrow::compute::concat_batches(&g.schema(), [&a, &b]).expect("concat");
        assert_eq!(whole, joined);
        let other_seed = NexmarkGenerator::new(NexmarkConfig {
            seed: 4,
            table: NexmarkTable::Bid,
            ..NexmarkConfig::default()
        });
        assert_ne!(whole, other_seed.generate(0..1000).expect("other"));
    }

    #[test]
    fn bids_reference_existing_auctions_and_people_ranges() {
        let b = generator(NexmarkTable::Bid)
            .generate(0..10_000)
            .expect("batch");
        let auction = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        let price = b
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert!(
            auction
                .values()
                .iter()
                .all(|&a| (FIRST_AUCTION_ID..FIRST_AUCTION_ID + 700).contains(&a))
        );
        assert!(
            price
                .values()
                .iter()
                .all(|&p| (100..=100_000_000).contains(&p))
        );
        assert_eq!(auction.null_count(), 0);
    }
}
