//! The window operator against a direct computation over the same input.

use super::*;
use proptest::prelude::*;

use arrow::array::Int64Array;
use std::collections::BTreeMap as Map;

/// Runs a window stage over `events` (ts, key, value) split into batches,
/// with a watermark of `max_seen - lag - 1` after each batch, and returns
/// `(start, key) -> (count, sum)` plus the number of late records.
type Windows = Map<(i64, i64), (i64, i64)>;

fn run_window(
    kind: serde_json::Value,
    events: &[(i64, i64, i64)],
    batch: usize,
    lag: i64,
) -> (Windows, Vec<(i64, i64, i64)>) {
    run_late_window(kind, 0, events, batch, lag)
}

/// [`run_window`] with `allowed_lateness` (ms): the changelog output is
/// applied (checking each `-U` retracts the value last emitted) and the
/// final value per window and key is returned.
fn run_late_window(
    kind: serde_json::Value,
    lateness: i64,
    events: &[(i64, i64, i64)],
    batch: usize,
    lag: i64,
) -> (Windows, Vec<(i64, i64, i64)>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]));
    let mut settings =
        serde_json::json!({"window": kind, "aggregates": {"n": "count(*)", "s": "sum(v)"}});
    if lateness > 0 {
        settings["allowed_lateness"] = serde_json::json!(format!("{lateness}ms"));
    }
    let settings = settings.as_object().cloned().unwrap_or_default();
    let factory = plan(&StageContext {
        name: "w",
        path: "stages[0]",
        settings: &settings,
        inputs: &[Arc::clone(&schema)],
        key_by: &["k".to_string()],
        event_time: Some("t"),
        input_event_times: &[],
        components: crate::process::Components::builtin(),
    })
    .expect("plans");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut op = factory.create();
        let mut out = Output::new();
        let mut max_seen = i64::MIN;
        for chunk in events.chunks(batch.max(1)) {
            let b = RecordBatch::try_new(
                Arc::clone(&schema),
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
            op.process_batch(0, b, &mut out).await.expect("process");
            max_seen = max_seen.max(chunk.iter().map(|e| e.0).max().unwrap_or(i64::MIN));
            op.process_watermark(Watermark(max_seen - lag - 1), &mut out)
                .await
                .expect("watermark");
        }
        op.finish(&mut out).await.expect("finish");
        let mut late = Vec::new();
        for b in out.take_late() {
            let t = b
                .column(0)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .expect("ts")
                .clone();
            let k = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("k")
                .clone();
            let v = b
                .column(2)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("v")
                .clone();
            late.extend((0..b.num_rows()).map(|r| (t.value(r), k.value(r), v.value(r))));
        }
        let mut result = Map::new();
        for b in out.take_batches() {
            let ops: Vec<String> = if lateness > 0 {
                let ops = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("_op");
                ops.iter().map(|o| o.unwrap_or("").to_string()).collect()
            } else {
                vec!["+I".to_string(); b.num_rows()]
            };
            let b = if lateness > 0 {
                b.project(&(1..b.num_columns()).collect::<Vec<_>>())
                    .expect("project")
            } else {
                b
            };
            // window_time is the last instant of the window; the checks
            // below read start, end, keys and aggregates.
            let ts = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .expect("ts")
                    .clone()
            };
            let (end, time) = (ts(1), ts(2));
            for r in 0..b.num_rows() {
                assert_eq!(time.value(r), end.value(r) - 1, "window_time");
            }
            let b = b
                .project(&(0..b.num_columns()).filter(|&i| i != 2).collect::<Vec<_>>())
                .expect("project");
            let start = b
                .column(0)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .expect("ts")
                .clone();
            let key = b
                .column(2)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("k")
                .clone();
            let n = b
                .column(3)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("n")
                .clone();
            let s = b
                .column(4)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("s")
                .clone();
            for (r, op) in ops.iter().enumerate() {
                let id = (start.value(r), key.value(r));
                let value = (n.value(r), s.value(r));
                match op.as_str() {
                    "+I" => {
                        let previous = result.insert(id, value);
                        assert!(previous.is_none(), "window {id:?} inserted twice");
                    }
                    "-U" => assert_eq!(result.remove(&id), Some(value), "retraction of {id:?}"),
                    "+U" => assert!(
                        result.insert(id, value).is_none(),
                        "+U without -U for {id:?}"
                    ),
                    other => panic!("unexpected op {other}"),
                }
            }
        }
        (result, late)
    })
}

/// The same computed directly: a record counts unless every window it
/// belongs to had fired when it arrived.
fn expected(
    a: Assigner,
    events: &[(i64, i64, i64)],
    batch: usize,
    lag: i64,
) -> (Windows, Vec<(i64, i64, i64)>) {
    expected_late(a, 0, events, batch, lag)
}

/// [`expected`] where windows take records until `lateness` after they fire.
fn expected_late(
    a: Assigner,
    lateness: i64,
    events: &[(i64, i64, i64)],
    batch: usize,
    lag: i64,
) -> (Windows, Vec<(i64, i64, i64)>) {
    let mut result: Windows = Map::new();
    let mut late = Vec::new();
    let mut watermark = i64::MIN;
    let mut max_seen = i64::MIN;
    for chunk in events.chunks(batch.max(1)) {
        for &(t, k, v) in chunk {
            let mut placed = false;
            for start in (t - a.size + 1..=t).filter(|s| s.rem_euclid(a.slide) == 0) {
                if start + a.size - 1 + lateness > watermark {
                    let e = result.entry((start, k)).or_default();
                    e.0 += 1;
                    e.1 += v;
                    placed = true;
                }
            }
            if !placed {
                late.push((t, k, v));
            }
        }
        max_seen = max_seen.max(chunk.iter().map(|e| e.0).max().unwrap_or(i64::MIN));
        watermark = watermark.max(max_seen - lag - 1);
    }
    (result, late)
}

proptest! {
    #[test]
    fn tumbling_matches_batch_computation(
        events in proptest::collection::vec((0i64..2_000, 0i64..4, -50i64..50), 0..300),
        batch in 1usize..40,
        lag in 0i64..300,
        size in 1i64..400,
    ) {
        let got = run_window(serde_json::json!({"kind": "tumbling", "size": format!("{size}ms")}), &events, batch, lag);
        prop_assert_eq!(got, expected(Assigner { size, slide: size }, &events, batch, lag));
    }

    #[test]
    fn sliding_matches_batch_computation(
        events in proptest::collection::vec((0i64..2_000, 0i64..4, -50i64..50), 0..300),
        batch in 1usize..40,
        lag in 0i64..300,
        size in 2i64..400,
        div in 1i64..6,
    ) {
        let slide = (size / div).max(1);
        let kind = serde_json::json!({"kind": "sliding", "size": format!("{size}ms"), "slide": format!("{slide}ms")});
        let got = run_window(kind, &events, batch, lag);
        prop_assert_eq!(got, expected(Assigner { size, slide }, &events, batch, lag));
    }

    #[test]
    fn allowed_lateness_updates_match_batch_computation(
        events in proptest::collection::vec((0i64..2_000, 0i64..4, -50i64..50), 0..300),
        batch in 1usize..40,
        lag in 0i64..300,
        size in 2i64..400,
        div in 1i64..4,
        lateness in 1i64..500,
    ) {
        let slide = (size / div).max(1);
        let kind = serde_json::json!({"kind": "sliding", "size": format!("{size}ms"), "slide": format!("{slide}ms")});
        let got = run_late_window(kind, lateness, &events, batch, lag);
        prop_assert_eq!(got, expected_late(Assigner { size, slide }, lateness, &events, batch, lag));
    }
}

#[test]
fn late_update_retracts_the_fired_result() {
    let kind = serde_json::json!({"kind": "tumbling", "size": "10ms"});
    // Window [0,10) fires at watermark 9 (record at 20, lag 10); the record
    // at 5 then updates it; after watermark 29 the window is gone.
    let events = [(1, 1, 1), (20, 1, 2), (5, 1, 4), (40, 1, 8), (6, 1, 16)];
    let (got, late) = run_late_window(kind, 10, &events, 1, 10);
    assert_eq!(got.get(&(0, 1)), Some(&(2, 5)));
    assert_eq!(late, vec![(6, 1, 16)]);
}

/// Sessions computed offline: per key, sorted by time, split where the
/// distance to the previous record exceeds `gap`.
fn sessions_offline(events: &[(i64, i64, i64)], gap: i64) -> Windows {
    let mut by_key: Map<i64, Vec<(i64, i64)>> = Map::new();
    for &(t, k, v) in events {
        by_key.entry(k).or_default().push((t, v));
    }
    let mut result = Map::new();
    for (k, mut rows) in by_key {
        rows.sort_unstable();
        let mut start = rows[0].0;
        let mut prev = rows[0].0;
        let (mut n, mut s) = (0, 0);
        for (t, v) in rows {
            if t - prev > gap {
                result.insert((start, k), (n, s));
                start = t;
                n = 0;
                s = 0;
            }
            n += 1;
            s += v;
            prev = t;
        }
        result.insert((start, k), (n, s));
    }
    result
}

#[test]
fn sessions_merge_at_exactly_the_gap_and_split_beyond_it() {
    let gap = serde_json::json!({"kind": "session", "gap": "10ms"});
    let (windows, late) = run_window(gap.clone(), &[(0, 1, 1), (10, 1, 2), (21, 1, 4)], 10, 1000);
    assert!(late.is_empty());
    assert_eq!(windows, Map::from([((0, 1), (2, 3)), ((21, 1), (1, 4))]));
    // A record bridging two sessions merges them, states included.
    let (windows, _) = run_window(gap, &[(0, 1, 1), (20, 1, 2), (10, 1, 4)], 10, 1000);
    assert_eq!(windows, Map::from([((0, 1), (3, 7))]));
}

proptest! {
    #[test]
    fn sessions_match_offline_sessionization_of_on_time_records(
        events in proptest::collection::vec((0i64..2_000, 0i64..4, -50i64..50), 0..300),
        batch in 1usize..40,
        lag in 0i64..300,
        gap in 1i64..200,
    ) {
        let (got, late) = run_window(serde_json::json!({"kind": "session", "gap": format!("{gap}ms")}), &events, batch, lag);
        // Every record is either late (exactly once) or counted.
        let mut accepted = events.clone();
        for l in &late {
            let i = accepted.iter().position(|e| e == l);
            prop_assert!(i.is_some(), "late record {:?} not in the input", l);
            if let Some(i) = i {
                accepted.remove(i);
            }
        }
        let counted: i64 = got.values().map(|(n, _)| n).sum();
        prop_assert_eq!(counted as usize, accepted.len());
        prop_assert_eq!(got, sessions_offline(&accepted, gap));
    }
}

/// Runs a count window over `(key, value)` records and returns
/// `key -> [(count, sum)]` in firing order.
fn run_count(
    size: u64,
    slide: u64,
    events: &[(i64, i64)],
    batch: usize,
) -> Map<i64, Vec<(i64, i64)>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]));
    let settings = serde_json::json!({
        "window": {"kind": "count", "size": size, "slide": slide},
        "aggregates": {"n": "count(*)", "s": "sum(v)"}
    });
    let settings = settings.as_object().cloned().unwrap_or_default();
    let factory = plan(&StageContext {
        name: "c",
        path: "stages[0]",
        settings: &settings,
        inputs: &[Arc::clone(&schema)],
        key_by: &["k".to_string()],
        event_time: None,
        input_event_times: &[],
        components: crate::process::Components::builtin(),
    })
    .expect("plans");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut op = factory.create();
        let mut out = Output::new();
        for chunk in events.chunks(batch.max(1)) {
            let b = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from(
                        chunk.iter().map(|e| e.0).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(
                        chunk.iter().map(|e| e.1).collect::<Vec<_>>(),
                    )),
                ],
            )
            .expect("batch");
            op.process_batch(0, b, &mut out).await.expect("process");
        }
        op.finish(&mut out).await.expect("finish");
        let mut result: Map<i64, Vec<(i64, i64)>> = Map::new();
        for b in out.take_batches() {
            let col = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("i64")
                    .clone()
            };
            let (k, n, s) = (col(0), col(1), col(2));
            for r in 0..b.num_rows() {
                result
                    .entry(k.value(r))
                    .or_default()
                    .push((n.value(r), s.value(r)));
            }
        }
        result
    })
}

proptest! {
    #[test]
    fn count_windows_match_direct_computation(
        events in proptest::collection::vec((0i64..4, -50i64..50), 0..200),
        batch in 1usize..30,
        size in 1u64..12,
        slide in 1u64..12,
    ) {
        let mut per_key: Map<i64, Vec<i64>> = Map::new();
        for &(k, v) in &events {
            per_key.entry(k).or_default().push(v);
        }
        let mut expected: Map<i64, Vec<(i64, i64)>> = Map::new();
        for (k, values) in per_key {
            let mut t = slide as usize;
            while t <= values.len() {
                let window = &values[t.saturating_sub(size as usize)..t];
                expected.entry(k).or_default().push((window.len() as i64, window.iter().sum()));
                t += slide as usize;
            }
        }
        prop_assert_eq!(run_count(size, slide, &events, batch), expected);
    }
}
