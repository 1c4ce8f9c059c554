//! `dedup`: keeps the first record of each key and drops the later ones,
//! for `ttl` of event time after the kept record (Nexmark q18/q19 shapes,
//! at-least-once inputs). Keys expire when the watermark passes their
//! first time + `ttl`, so state stays bounded on an endless stream; without
//! `ttl` keys are remembered for the whole run.
//!
//! ```yaml
//! - {name: first_bid, type: dedup, input: bids, key_by: [bidder, auction], ttl: 10m}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::{
    CheckpointBarrier, Diagnostics, Error, Operator, OperatorSnapshot, Output, Result, Watermark,
};
use streamflow_dsl::HumanDuration;
use streamflow_expr::CompiledExpr;
use streamflow_expr::hash_utils::RandomState;
use streamflow_state::put_keyed;

use crate::event_time::time_column_index;
use crate::grouping::KeyRows;
use crate::snapshot;
use crate::stage::{StageContext, StageFactory};

/// Settings of a `dedup` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupConfig {
    /// How long (event time) a key is remembered after its first record.
    ttl: Option<HumanDuration>,
    /// Timestamp column holding event time (default: the source's `event_time`).
    time_column: Option<String>,
}

#[derive(Clone)]
struct DedupFactory {
    schema: SchemaRef,
    keys: Vec<CompiledExpr>,
    ttl_ms: Option<i64>,
    time_index: Option<usize>,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: DedupConfig = ctx.config()?;
    let schema = ctx.input_schema();
    let mut d = Diagnostics::new();
    if ctx.key_by.is_empty() {
        d.push(
            format!("{}.key_by", ctx.path),
            "dedup needs key_by: the columns that identify a duplicate",
        );
    }
    let keys = crate::grouping::plan_keys(ctx, &schema, &mut Vec::new(), &mut d);
    let ttl_ms = config.ttl.map(|t| t.0.as_millis() as i64);
    if ttl_ms == Some(0) {
        d.push(ctx.at("ttl"), "must be at least 1ms");
    }
    let time_index = match ttl_ms {
        Some(_) => time_column_index(ctx, config.time_column.as_deref(), "ttl", &mut d),
        None => None,
    };
    d.into_result(())?;
    Ok(Arc::new(DedupFactory {
        schema,
        keys,
        ttl_ms,
        time_index,
    }))
}

impl StageFactory for DedupFactory {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn create(&self) -> Box<dyn Operator> {
        Box::new(Dedup {
            factory: self.clone(),
            keys: KeyRows::default(),
            seen: HashMap::with_hasher(RandomState::default()),
            expiry: BTreeMap::new(),
        })
    }
}

struct Dedup {
    factory: DedupFactory,
    keys: KeyRows,
    /// Key → event time of its kept record.
    seen: HashMap<Box<[u8]>, i64, RandomState>,
    /// Expiry time → keys kept at that time (for TTL cleanup).
    expiry: BTreeMap<i64, Vec<Box<[u8]>>>,
}

#[async_trait]
impl Operator for Dedup {
    async fn open(&mut self, restored: Option<OperatorSnapshot>) -> Result<()> {
        self.keys.prepare(&self.factory.keys)?;
        let Some(b) = restored
            .map(|snap| snapshot::entries(&snap, "seen"))
            .transpose()?
            .flatten()
        else {
            return Ok(());
        };
        let keys = snapshot::bytes(&b, "key")?;
        let first = snapshot::int64(&b, "first")?;
        for r in 0..b.num_rows() {
            let key: Box<[u8]> = keys.value(r).into();
            if let Some(ttl) = self.factory.ttl_ms {
                self.expiry
                    .entry(first.value(r).saturating_add(ttl))
                    .or_default()
                    .push(key.clone());
            }
            self.seen.insert(key, first.value(r));
        }
        Ok(())
    }

    /// One row per remembered key: `key, first` (event time of its kept record).
    async fn snapshot(&mut self, _barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        let mut snap = OperatorSnapshot::default();
        if self.seen.is_empty() {
            return Ok(snap);
        }
        let keys: Vec<&[u8]> = self.seen.keys().map(|k| k.as_ref()).collect();
        let first: Vec<i64> = self.seen.values().copied().collect();
        let groups = self.keys.key_groups(keys.iter().copied())?;
        let cols: Vec<(String, ArrayRef)> = vec![
            ("key".into(), snapshot::binary(keys)),
            ("first".into(), Arc::new(Int64Array::from(first))),
        ];
        put_keyed(&mut snap, "seen", snapshot::batch(cols)?, groups.as_deref())?;
        Ok(snap)
    }

    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        let Some(rows) = self.keys.rows(&self.factory.keys, &batch)? else {
            return Ok(());
        };
        let times = match self.factory.time_index {
            Some(i) => Some(crate::event_time::millis(batch.column(i))?),
            None => None,
        };
        let mut keep = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let key = rows.row(row).data();
            let ts = times
                .as_ref()
                .filter(|t| t.is_valid(row))
                .map(|t| t.value(row))
                .unwrap_or(i64::MIN);
            let ttl = self.factory.ttl_ms;
            let duplicate = self
                .seen
                .get(key)
                .is_some_and(|&first| ttl.is_none_or(|ttl| ts < first.saturating_add(ttl)));
            if duplicate {
                keep.push(false);
                continue;
            }
            self.seen.insert(key.into(), ts);
            if let Some(ttl) = self.factory.ttl_ms {
                self.expiry
                    .entry(ts.saturating_add(ttl))
                    .or_default()
                    .push(key.into());
            }
            keep.push(true);
        }
        let kept = filter_record_batch(&batch, &BooleanArray::from(keep))
            .map_err(|e| Error::arrow("dedup", e))?;
        out.emit(kept);
        Ok(())
    }

    async fn process_watermark(&mut self, watermark: Watermark, _out: &mut Output) -> Result<()> {
        while let Some(entry) = self.expiry.first_entry() {
            if *entry.key() > watermark.0 {
                break;
            }
            let (expires, keys) = entry.remove_entry();
            let ttl = self.factory.ttl_ms.unwrap_or(0);
            for key in keys {
                // The key may have started anew since; only its latest expiry counts.
                if self
                    .seen
                    .get(&key)
                    .is_some_and(|first| first.saturating_add(ttl) == expires)
                {
                    self.seen.remove(&key);
                }
            }
        }
        Ok(())
    }
}
