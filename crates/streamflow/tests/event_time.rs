//! Event time declared every way a user can: a nested field, an expression
//! with a unit, a `watermark` stage mid-pipeline; and time that survives
//! stages: windows over window results and window results joined with their
//! input. Each result is compared with a direct computation in the test.

mod common;

use std::collections::BTreeMap;

use common::{read_jsonl, run, stderr, stdout, write};
use serde_json::Value;

/// `n` records `{k, t_ms, v}`: out of order within 3 s, over 60 s of time.
fn records(n: i64) -> Vec<(String, i64, i64)> {
    (0..n)
        .map(|i| {
            let jitter = (i * 7919) % 3000;
            (format!("k{}", i % 5), 1_000_000 + i * 60 - jitter, i)
        })
        .collect()
}

/// Writes the records as JSON lines, with the time as `t_ms` (top level),
/// `meta.at` (nested) and `secs` (float seconds).
fn write_records(dir: &std::path::Path, rows: &[(String, i64, i64)]) -> String {
    let text: String = rows
        .iter()
        .map(|(k, t, v)| {
            format!(
                "{{\"k\": \"{k}\", \"t_ms\": {t}, \"meta\": {{\"at\": {t}}}, \"secs\": {}, \"v\": {v}}}\n",
                *t as f64 / 1000.0
            )
        })
        .collect();
    write(dir, "in.jsonl", &text)
}

/// Direct tumbling-window sums: (window start ms, key) → (count, sum).
fn tumbling(rows: &[(String, i64, i64)], size: i64) -> BTreeMap<(i64, String), (i64, i64)> {
    let mut m = BTreeMap::new();
    for (k, t, v) in rows {
        let e = m
            .entry((t.div_euclid(size) * size, k.clone()))
            .or_insert((0, 0));
        e.0 += 1;
        e.1 += v;
    }
    m
}

fn ms(v: &Value) -> i64 {
    // Timestamps are written as ISO text; parse the seconds-and-millis part.
    let s = v.as_str().expect("timestamp text");
    let a = arrow::array::StringArray::from(vec![s]);
    let t = arrow::compute::cast(
        &a,
        &arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
    )
    .expect("parse timestamp");
    t.as_any()
        .downcast_ref::<arrow::array::TimestampMillisecondArray>()
        .expect("ts")
        .value(0)
}

fn windows_out(path: &std::path::Path) -> BTreeMap<(i64, String), (i64, i64)> {
    read_jsonl(path)
        .iter()
        .map(|r| {
            (
                (
                    ms(&r["window_start"]),
                    r["k"].as_str().expect("k").to_string(),
                ),
                (
                    r["n"].as_i64().expect("n"),
                    r["total"].as_i64().expect("total"),
                ),
            )
        })
        .collect()
}

/// Runs a job over the records with `source_time` as the source's
/// `event_time` (or none) and `stages` in front of a 10 s tumbling window
/// reading `window_input`, counting records (`n`) and summing `v` (`total`).
fn run_window(
    source_time: &str,
    stages: &str,
    window_input: &str,
) -> BTreeMap<(i64, String), (i64, i64)> {
    run_window_with(
        source_time,
        stages,
        window_input,
        "{n: \"count(*)\", total: \"sum(v)\"}",
    )
}

/// [`run_window`] with the final window's `aggregates` (producing `n` and `total`).
fn run_window_with(
    source_time: &str,
    stages: &str,
    window_input: &str,
    aggregates: &str,
) -> BTreeMap<(i64, String), (i64, i64)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let input = write_records(d, &records(2000));
    let out = d.join("out.jsonl");
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: et\nmode: job\nsources:\n  - name: ev\n    type: file\n    config: {{path: \"{input}\"}}\n{source_time}stages:\n{stages}  - {{name: w, type: window, input: {window_input}, key_by: [k], window: {{kind: tumbling, size: 10s}}, aggregates: {aggregates}}}\nsinks:\n  - {{name: out, type: file, input: w, config: {{path: \"{}\"}}}}\n",
            out.display()
        ),
    );
    let o = run(&["run", &flow, "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    windows_out(&out)
}

const LAG: &str = "watermark: {max_out_of_orderness: 3s}";

#[test]
fn event_time_from_a_nested_field() {
    let got = run_window(
        &format!("    event_time: {{column: meta.at, {LAG}}}\n"),
        "",
        "ev",
    );
    assert_eq!(got, tumbling(&records(2000), 10_000));
}

#[test]
fn event_time_from_an_expression_with_a_unit() {
    let got = run_window(
        &format!("    event_time: {{expr: \"secs\", unit: s, as: ts, {LAG}}}\n"),
        "",
        "ev",
    );
    assert_eq!(got, tumbling(&records(2000), 10_000));
    // An integer column converted in place keeps its name.
    let got = run_window(
        &format!("    event_time: {{column: t_ms, {LAG}}}\n"),
        "",
        "ev",
    );
    assert_eq!(got, tumbling(&records(2000), 10_000));
}

#[test]
fn a_watermark_stage_assigns_time_mid_pipeline() {
    let got = run_window(
        "",
        &format!(
            "  - {{name: shifted, type: map, input: ev, map: {{later: \"t_ms + 0\"}}}}\n  - {{name: timed, type: watermark, input: shifted, event_time: {{column: later, {LAG}}}}}\n"
        ),
        "timed",
    );
    assert_eq!(got, tumbling(&records(2000), 10_000));
}

#[test]
fn windows_cascade_on_window_time() {
    // A 10 s window over the results of a 2 s window (its window_time is
    // the event time) equals the direct 10 s window.
    let got = run_window_with(
        &format!("    event_time: {{column: t_ms, {LAG}}}\n"),
        "  - {name: small, type: window, input: ev, key_by: [k], window: {kind: tumbling, size: 2s}, aggregates: {n2: \"count(*)\", t2: \"sum(v)\"}}\n",
        "small",
        "{n: \"sum(n2)\", total: \"sum(t2)\"}",
    );
    assert_eq!(got, tumbling(&records(2000), 10_000));
}

#[test]
fn validate_names_the_event_time_of_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let input = write_records(d, &records(10));
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: et\nmode: job\nsources:\n  - name: ev\n    type: file\n    config: {{path: \"{input}\"}}\n    event_time: {{expr: \"meta.at\", as: ts}}\nstages:\n  - {{name: w, type: window, input: ev, key_by: [k], window: {{kind: tumbling, size: 10s}}, aggregates: {{n: \"count(*)\"}}}}\n  - {{name: plain, type: select, input: ev, select: [k, v]}}\nsinks:\n  - {{name: out, type: blackhole, input: w}}\n  - {{name: out2, type: blackhole, input: plain}}\n"
        ),
    );
    let o = run(&["validate", &flow]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("source ev (file, parallelism 1, event time ts)"),
        "{text}"
    );
    assert!(
        text.contains("stage w (window, parallelism 1, event time window_time)"),
        "{text}"
    );
    assert!(
        text.contains("stage plain (select, parallelism 1, no event time)"),
        "{text}"
    );
    assert!(
        text.contains("ts: Timestamp(ms)") || text.contains("ts: Timestamp(Millisecond, None)"),
        "{text}"
    );
    // The source decodes only what the window, the select and the event
    // time read: k, v and meta.at — not t_ms or secs.
    assert!(!text.contains("secs") && !text.contains("t_ms"), "{text}");
    assert!(text.contains("meta: Struct(\"at\": Int64)"), "{text}");
}

#[test]
fn bad_event_time_declarations_are_rejected_with_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let input = write_records(d, &records(10));
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: et\nmode: job\nsources:\n  - {{name: a, type: file, config: {{path: \"{input}\"}}, event_time: {{column: t_ms, expr: t_ms}}}}\n  - {{name: b, type: file, config: {{path: \"{input}\"}}, event_time: {{watermark: {{max_out_of_orderness: 1s}}}}}}\n  - {{name: c, type: file, config: {{path: \"{input}\"}}, event_time: {{expr: \"meta\", as: t}}}}\n  - {{name: ok, type: file, config: {{path: \"{input}\"}}}}\nstages:\n  - {{name: u, type: union, input: [a]}}\n  - {{name: wm, type: watermark, input: ok, event_time: {{column: nope}}}}\nsinks:\n  - {{name: o1, type: blackhole, input: wm}}\n  - {{name: o0, type: blackhole, input: u}}\n  - {{name: o2, type: blackhole, input: b}}\n  - {{name: o3, type: blackhole, input: c}}\n"
        ),
    );
    let o = run(&["validate", &flow]);
    assert!(!o.status.success());
    let err = stderr(&o);
    for expected in [
        "sources[0].event_time.expr: give either column or expr, not both",
        "sources[1].event_time.column: name the event-time column (column: …) or compute it (expr: …)",
        "sources[2].event_time.expr: Struct(",
        "stages[1].event_time.column: column 'nope' not found",
    ] {
        assert!(err.contains(expected), "missing '{expected}' in:\n{err}");
    }
}

#[test]
fn join_time_columns_are_checked_per_side() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let input = write_records(d, &records(10));
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: et\nmode: job\nsources:\n  - {{name: a, type: file, config: {{path: \"{input}\"}}, event_time: {{column: t_ms}}}}\n  - {{name: b, type: file, config: {{path: \"{input}\"}}, event_time: {{column: t_ms}}}}\nstages:\n  - {{name: j, type: join, input: [a, b], kind: interval, on: \"l.k = r.k\", between: {{lower: 0s, upper: 1s}}, prefix: {{left: l_, right: r_}}, time_column: {{left: nope, right: k}}}}\nsinks:\n  - {{name: o, type: blackhole, input: j}}\n"
        ),
    );
    let o = run(&["validate", &flow]);
    assert!(!o.status.success());
    let err = stderr(&o);
    for expected in [
        "stages[0].time_column: left input: column 'nope' not found",
        "stages[0].time_column: right input: column 'k' is Utf8, not a timestamp",
    ] {
        assert!(err.contains(expected), "missing '{expected}' in:\n{err}");
    }
    // The declared columns replace the inputs' event time.
    let ok = std::fs::read_to_string(&flow)
        .expect("read")
        .replace("time_column: {left: nope, right: k}", "time_column: t_ms");
    std::fs::write(&flow, ok).expect("write");
    let o = run(&["validate", &flow]);
    assert!(o.status.success(), "{}", stderr(&o));
}
