//! How stateful operators lay out their state in an [`OperatorSnapshot`]:
//! one Arrow batch per state name, keys as their Arrow row-format bytes,
//! aggregate states as the accumulators' own state columns, and each keyed
//! row tagged with its key group so state can move between instances.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, Int64Array, RecordBatch};
use arrow::compute::{concat, concat_batches};
use arrow::datatypes::{Field, Schema};
use streamflow_core::{Error, OperatorSnapshot, Result};
use streamflow_expr::{CompiledAggregate, GroupedAggregate};

/// Name of the entry holding an operator's watermark.
const WATERMARK: &str = "watermark";

/// Builds a batch from named columns (every field nullable).
pub(crate) fn batch(columns: Vec<(String, ArrayRef)>) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, a)| Field::new(name, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .map_err(|e| Error::arrow("building a state snapshot", e))
}

/// Byte strings (keys, encoded rows) as a binary column.
pub(crate) fn binary<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> ArrayRef {
    Arc::new(BinaryArray::from_iter_values(values))
}

/// Records the operator's watermark.
pub(crate) fn put_watermark(snapshot: &mut OperatorSnapshot, watermark: i64) -> Result<()> {
    let b = batch(vec![(
        WATERMARK.into(),
        Arc::new(Int64Array::from(vec![watermark])),
    )])?;
    snapshot.put(WATERMARK, None, b);
    Ok(())
}

/// The restored watermark: the minimum over the instances whose state was
/// handed over (so no instance believes time is further than it was).
pub(crate) fn watermark(snapshot: &OperatorSnapshot) -> Result<i64> {
    let Some(b) = entries(snapshot, WATERMARK)? else {
        return Ok(i64::MIN);
    };
    Ok(arrow::compute::min(int64(&b, WATERMARK)?).unwrap_or(i64::MIN))
}

/// Every batch recorded under `name`, as one batch; `None` when there is none.
pub(crate) fn entries(snapshot: &OperatorSnapshot, name: &str) -> Result<Option<RecordBatch>> {
    let Some(parts) = snapshot.entries.get(name) else {
        return Ok(None);
    };
    let Some((_, first)) = parts.first() else {
        return Ok(None);
    };
    let batches: Vec<&RecordBatch> = parts.iter().map(|(_, b)| b).collect();
    concat_batches(&first.schema(), batches)
        .map(Some)
        .map_err(|e| Error::arrow(format!("reading state '{name}'"), e))
}

/// A column of a restored batch, by name and type.
pub(crate) fn column<'a, T: Array + 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::Other(format!("state column '{name}' is missing or mistyped")))
}

/// An Int64 column of a restored batch.
pub(crate) fn int64<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a Int64Array> {
    column::<Int64Array>(b, name)
}

/// A binary column of a restored batch.
pub(crate) fn bytes<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a BinaryArray> {
    column::<BinaryArray>(b, name)
}

/// The columns named `prefix0`, `prefix1`, ... of a restored batch, in order.
pub(crate) fn numbered(b: &RecordBatch, prefix: &str, count: usize) -> Result<Vec<ArrayRef>> {
    (0..count)
        .map(|j| {
            let name = format!("{prefix}{j}");
            b.column_by_name(&name)
                .cloned()
                .ok_or_else(|| Error::Other(format!("state column '{name}' is missing")))
        })
        .collect()
}

/// Appends aggregate states as columns `a<i>_<j>`: `states[i]` holds the
/// exported state columns of aggregate `i` for consecutive runs of rows.
pub(crate) fn push_states(
    cols: &mut Vec<(String, ArrayRef)>,
    states: Vec<Vec<Vec<ArrayRef>>>,
) -> Result<()> {
    for (i, runs) in states.into_iter().enumerate() {
        let width = runs.first().map_or(0, Vec::len);
        for j in 0..width {
            let parts: Vec<&dyn Array> = runs.iter().map(|r| r[j].as_ref()).collect();
            let column =
                concat(&parts).map_err(|e| Error::arrow("building a state snapshot", e))?;
            cols.push((format!("a{i}_{j}"), column));
        }
    }
    Ok(())
}

/// The `a<i>_<j>` state columns of every aggregate.
pub(crate) fn state_columns(
    aggregates: &[CompiledAggregate],
    b: &RecordBatch,
) -> Result<Vec<Vec<ArrayRef>>> {
    aggregates
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let width = a
                .state_fields()
                .map_err(|e| Error::Other(format!("{}: {e}", a.sql())))?
                .len();
            numbered(b, &format!("a{i}_"), width)
        })
        .collect()
}

/// Aggregate states rebuilt from rows `offset..offset + len` of
/// [`state_columns`] (one group per row).
pub(crate) fn restore_states(
    aggregates: &[CompiledAggregate],
    columns: &[Vec<ArrayRef>],
    offset: usize,
    len: usize,
) -> Result<Vec<GroupedAggregate>> {
    aggregates
        .iter()
        .zip(columns)
        .map(|(a, cols)| {
            let rows: Vec<ArrayRef> = cols.iter().map(|c| c.slice(offset, len)).collect();
            a.restore(&rows)
                .map_err(|e| Error::Other(format!("restoring {}: {e}", a.sql())))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod harness {
    //! Checks that an operator restored from a snapshot continues exactly as
    //! the operator that was never interrupted.

    use arrow::datatypes::{Field, Schema};
    use streamflow_core::{CheckpointBarrier, Operator, Output, Watermark};

    use super::*;

    /// One step of input.
    #[derive(Clone)]
    pub(crate) enum Step {
        Batch(RecordBatch),
        /// A batch on another logical input.
        Input(usize, RecordBatch),
        Watermark(i64),
    }

    async fn apply(op: &mut Box<dyn Operator>, step: &Step, out: &mut Output) {
        match step {
            Step::Batch(b) => op.process_batch(0, b.clone(), out).await.expect("process"),
            Step::Input(i, b) => op.process_batch(*i, b.clone(), out).await.expect("process"),
            Step::Watermark(w) => op
                .process_watermark(Watermark(*w), out)
                .await
                .expect("watermark"),
        }
    }

    /// Output rows as text, in order, data and late output apart.
    fn drain(out: &mut Output) -> (Vec<String>, Vec<String>) {
        let text = |batches: Vec<RecordBatch>| {
            batches
                .iter()
                .flat_map(|b| {
                    let cols: Vec<_> = b
                        .columns()
                        .iter()
                        .map(|c| {
                            arrow::util::display::ArrayFormatter::try_new(
                                c.as_ref(),
                                &Default::default(),
                            )
                            .expect("formatter")
                        })
                        .collect();
                    (0..b.num_rows())
                        .map(|r| {
                            cols.iter()
                                .map(|c| c.value(r).to_string())
                                .collect::<Vec<_>>()
                                .join("|")
                        })
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        // Emission order within one firing follows hash maps: compare as sets.
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        (
            sorted(text(out.take_batches())),
            sorted(text(out.take_late())),
        )
    }

    /// Runs `steps` through one operator, and again through an operator that
    /// is snapshotted after `cut` steps and replaced by a fresh one restored
    /// from that snapshot; both must emit the same rows.
    pub(crate) fn assert_restores_exactly(
        create: impl Fn() -> Box<dyn Operator>,
        steps: &[Step],
        cut: usize,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut reference = create();
            reference.open(None).await.expect("open");
            let mut out = Output::new();
            for s in steps {
                apply(&mut reference, s, &mut out).await;
            }
            reference.finish(&mut out).await.expect("finish");
            let expected = drain(&mut out);

            let mut first = create();
            first.open(None).await.expect("open");
            let mut out = Output::new();
            for s in &steps[..cut] {
                apply(&mut first, s, &mut out).await;
            }
            let barrier = CheckpointBarrier {
                id: 1,
                timestamp_ms: 0,
                is_final: false,
            };
            let snapshot = first.snapshot(&barrier).await.expect("snapshot");
            drop(first);
            let mut second = create();
            second.open(Some(snapshot)).await.expect("restore");
            for s in &steps[cut..] {
                apply(&mut second, s, &mut out).await;
            }
            second.finish(&mut out).await.expect("finish");
            let got = drain(&mut out);
            for (what, got, expected) in [("output", &got.0, &expected.0), ("late", &got.1, &expected.1)] {
                let missing: Vec<_> = expected.iter().filter(|r| !got.contains(r)).take(5).collect();
                let extra: Vec<_> = got.iter().filter(|r| !expected.contains(r)).take(5).collect();
                assert!(
                    got == expected,
                    "restored at step {cut}: {what} has {} rows, expected {}; missing {missing:?}, extra {extra:?}",
                    got.len(),
                    expected.len()
                );
            }
        });
    }

    /// A stage of type `kind` over `(t, k, v)` with event time `t`.
    pub(crate) fn tkv_stage(
        kind: &str,
        settings: serde_json::Value,
        keyed: bool,
    ) -> Arc<dyn crate::StageFactory> {
        let settings = settings.as_object().cloned().unwrap_or_default();
        let key_by = if keyed { vec!["k".to_string()] } else { vec![] };
        let stage = crate::find_stage(kind).expect("stage type");
        (stage.plan)(&crate::StageContext {
            name: "s",
            path: "stages[0]",
            settings: &settings,
            inputs: &[tkv_schema()],
            key_by: &key_by,
            event_time: Some("t"),
            input_event_times: &[],
            components: crate::process::Components::builtin(),
        })
        .map_err(|d| format!("{d:?}"))
        .expect("plans")
    }

    fn tkv_schema() -> arrow::datatypes::SchemaRef {
        use arrow::datatypes::{DataType, TimeUnit};
        Arc::new(Schema::new(vec![
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]))
    }

    /// `events` `(t, k, v)` in batches, each followed by the watermark
    /// `max time seen - lag - 1`.
    pub(crate) fn tkv_steps(events: &[(i64, i64, i64)], batch: usize, lag: i64) -> Vec<Step> {
        use arrow::array::TimestampMillisecondArray;
        let mut out = Vec::new();
        let mut max_seen = i64::MIN;
        for chunk in events.chunks(batch.max(1)) {
            let b = RecordBatch::try_new(
                tkv_schema(),
                vec![
                    Arc::new(TimestampMillisecondArray::from(
                        chunk.iter().map(|e| e.0).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(
                        chunk.iter().map(|e| e.1).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(
                        chunk.iter().map(|e| e.2).collect::<Vec<_>>(),
                    )),
                ],
            )
            .expect("batch");
            out.push(Step::Batch(b));
            max_seen = max_seen.max(chunk.iter().map(|e| e.0).max().unwrap_or(i64::MIN));
            out.push(Step::Watermark(max_seen - lag - 1));
        }
        out
    }

    use proptest::prelude::*;

    /// Every stateful stage, with the settings the property below runs.
    fn stateful_stage(case: usize) -> (&'static str, serde_json::Value, bool) {
        let aggregates = serde_json::json!({"n": "count(*)", "s": "sum(v)", "d": "count(DISTINCT v)", "m": "max(v)"});
        let window =
            |w: serde_json::Value| serde_json::json!({"window": w, "aggregates": aggregates});
        match case {
            0 => (
                "window",
                window(serde_json::json!({"kind": "tumbling", "size": "100ms"})),
                true,
            ),
            1 => {
                let mut s = window(
                    serde_json::json!({"kind": "sliding", "size": "300ms", "slide": "100ms"}),
                );
                s["allowed_lateness"] = serde_json::json!("200ms");
                ("window", s, true)
            }
            2 => (
                "window",
                window(serde_json::json!({"kind": "tumbling", "size": "250ms"})),
                false,
            ),
            3 => (
                "window",
                window(serde_json::json!({"kind": "session", "gap": "40ms"})),
                true,
            ),
            4 => (
                "window",
                window(serde_json::json!({"kind": "count", "size": 5, "slide": 2})),
                true,
            ),
            5 => (
                "aggregate",
                serde_json::json!({"aggregates": aggregates}),
                true,
            ),
            6 => ("dedup", serde_json::json!({"ttl": "150ms"}), true),
            7 => (
                "top_n",
                serde_json::json!({"n": 2, "order_by": ["v DESC"]}),
                true,
            ),
            _ => (
                "top_n",
                serde_json::json!({"n": 3, "order_by": ["v"], "rank": "r", "window": {"kind": "tumbling", "size": "200ms"}}),
                false,
            ),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn stateful_stages_restored_from_a_snapshot_continue_exactly(
            events in proptest::collection::vec((0i64..2_000, 0i64..6, -50i64..50), 1..200),
            batch in 1usize..30,
            lag in 0i64..300,
            cut in 0usize..1000,
            case in 0usize..9,
        ) {
            let (kind, settings, keyed) = stateful_stage(case);
            let stage = tkv_stage(kind, settings, keyed);
            let steps = tkv_steps(&events, batch, lag);
            let cut = cut % (steps.len() + 1);
            assert_restores_exactly(|| stage.create(), &steps, cut);
        }
    }
}
