//! The Nexmark queries of `examples/nexmark-file/`, reading the nexmark-rs
//! JSON-lines event format (one `{"Person"|"Auction"|"Bid": {...}}` object
//! per line, epoch-millisecond `date_time`), run through the CLI and
//! compared with an independent computation over the same file: the file is
//! parsed here with serde_json and each query computed in plain Rust.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use arrow::array::{Array, AsArray, StructArray};
use arrow::datatypes::{DataType, Int64Type, TimestampMillisecondType};
use common::{root, run, stderr};
use serde_json::{Map, Value, json};
use streamflow_connectors::sources::nexmark::{NexmarkConfig, NexmarkGenerator};

/// Writes `events` generated events in the nexmark-rs format, at
/// `event_rate` events per second of event time. States and cities are
/// lower case, as nexmark-rs writes them.
fn write_events(path: &Path, events: u64, event_rate: u64) {
    let g = NexmarkGenerator::new(NexmarkConfig {
        event_rate,
        ..NexmarkConfig::default()
    });
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut start = 0;
    while start < events {
        let end = (start + 10_000).min(events);
        let batch = g.generate(start..end).expect("generate");
        let kinds = [("Person", "person"), ("Auction", "auction"), ("Bid", "bid")];
        for row in 0..batch.num_rows() {
            for (tag, column) in kinds {
                let s = batch
                    .column_by_name(column)
                    .expect("struct column")
                    .as_struct();
                if s.is_valid(row) {
                    let line = json!({ tag: struct_row(s, row) });
                    writeln!(out, "{line}").expect("write");
                }
            }
        }
        start = end;
    }
    out.flush().expect("flush");
}

fn struct_row(s: &StructArray, row: usize) -> Value {
    let mut object = Map::new();
    for (field, column) in s.fields().iter().zip(s.columns()) {
        let v = match column.data_type() {
            DataType::Int64 => json!(column.as_primitive::<Int64Type>().value(row)),
            DataType::Timestamp(..) => {
                json!(column.as_primitive::<TimestampMillisecondType>().value(row))
            }
            _ => {
                let text = column.as_string::<i32>().value(row);
                if matches!(field.name().as_str(), "city" | "state") {
                    json!(text.to_lowercase())
                } else {
                    json!(text)
                }
            }
        };
        object.insert(field.name().clone(), v);
    }
    Value::Object(object)
}

/// The events of a nexmark-rs file, parsed independently of the engine.
#[derive(Default)]
struct Events {
    persons: Vec<Value>,
    auctions: Vec<Value>,
    bids: Vec<Value>,
}

fn read_events(path: &Path) -> Events {
    let mut e = Events::default();
    for line in std::fs::read_to_string(path).expect("read").lines() {
        let v: Value = serde_json::from_str(line).expect("json line");
        let (tag, body) = v
            .as_object()
            .and_then(|o| o.iter().next())
            .expect("one event");
        match tag.as_str() {
            "Person" => e.persons.push(body.clone()),
            "Auction" => e.auctions.push(body.clone()),
            "Bid" => e.bids.push(body.clone()),
            other => panic!("unknown event kind {other}"),
        }
    }
    e
}

fn int(v: &Value, field: &str) -> i64 {
    v[field].as_i64().expect(field)
}
fn text(v: &Value, field: &str) -> String {
    v[field].as_str().expect(field).to_string()
}

/// Millisecond timestamps as the CSV sink writes them.
fn ts(ms: i64) -> String {
    let a = arrow::array::TimestampMillisecondArray::from(vec![ms]);
    arrow::util::display::array_value_to_string(&a, 0).expect("format")
}

type Rows = Vec<Vec<String>>;

/// Runs `examples/nexmark-file/<query>.yaml` over `input` and returns the
/// CSV rows of its output (header checked, rows sorted).
fn run_query(query: &str, input: &Path, header: &[&str]) -> Rows {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let bad = dir.path().join("bad.jsonl");
    let flow = root().join(format!("examples/nexmark-file/{query}.yaml"));
    let o = run(&[
        "run",
        flow.to_str().expect("utf8"),
        "--quiet",
        "--set",
        &format!("sources.events.config.path={}", input.display()),
        "--set",
        &format!("sinks.out.config.path={}", out.display()),
        "--set",
        &format!("sinks.bad.config.path={}", bad.display()),
    ]);
    assert!(o.status.success(), "{query} failed: {}", stderr(&o));
    assert!(
        !bad.exists() || std::fs::read_to_string(&bad).expect("dlq").is_empty(),
        "{query}: dead letters"
    );
    let mut rows = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .expect("output dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for f in files {
        let content = std::fs::read_to_string(&f).expect("read csv");
        let mut lines = content.lines();
        let Some(first) = lines.next() else { continue };
        assert_eq!(
            first.split(',').collect::<Vec<_>>(),
            header,
            "{query} header"
        );
        rows.extend(lines.map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>()));
    }
    rows.sort();
    rows
}

/// The expected rows, sorted; a query whose reference is empty would test nothing.
fn sorted(mut rows: Rows) -> Rows {
    assert!(!rows.is_empty(), "the input gives the query some rows");
    rows.sort();
    rows
}

fn q0(e: &Events) -> Rows {
    e.bids
        .iter()
        .map(|b| {
            vec![
                int(b, "auction").to_string(),
                int(b, "bidder").to_string(),
                int(b, "price").to_string(),
                ts(int(b, "date_time")),
                text(b, "extra"),
            ]
        })
        .collect()
}

/// q1 rows with the price as a number (compared with a tolerance).
fn q1(e: &Events) -> Vec<(i64, i64, f64, String)> {
    e.bids
        .iter()
        .map(|b| {
            (
                int(b, "auction"),
                int(b, "bidder"),
                0.908 * int(b, "price") as f64,
                ts(int(b, "date_time")),
            )
        })
        .collect()
}

fn q2(e: &Events) -> Rows {
    e.bids
        .iter()
        .filter(|b| int(b, "auction") % 123 == 0)
        .map(|b| vec![int(b, "auction").to_string(), int(b, "price").to_string()])
        .collect()
}

fn q3(e: &Events) -> Rows {
    let mut rows = Vec::new();
    for a in e.auctions.iter().filter(|a| int(a, "category") == 10) {
        for p in &e.persons {
            let state = text(p, "state");
            if int(p, "id") == int(a, "seller") && ["or", "id", "ca"].contains(&state.as_str()) {
                rows.push(vec![
                    text(p, "name"),
                    text(p, "city"),
                    state,
                    int(a, "id").to_string(),
                ]);
            }
        }
    }
    rows
}

const SIZE: i64 = 10_000;
const SLIDE: i64 = 2_000;

fn q5(e: &Events) -> Rows {
    // Every sliding window [start, start + 10 s) with start a multiple of 2 s.
    let mut counts: BTreeMap<i64, HashMap<i64, i64>> = BTreeMap::new();
    for b in &e.bids {
        let t = int(b, "date_time");
        let last = t.div_euclid(SLIDE) * SLIDE;
        let mut start = last;
        while start > t - SIZE {
            *counts
                .entry(start)
                .or_default()
                .entry(int(b, "auction"))
                .or_default() += 1;
            start -= SLIDE;
        }
    }
    let mut rows = Vec::new();
    for (start, per_auction) in counts {
        let max = per_auction.values().copied().max().unwrap_or(0);
        for (auction, num) in per_auction {
            if num >= max {
                rows.push(vec![
                    auction.to_string(),
                    num.to_string(),
                    ts(start),
                    ts(start + SIZE),
                ]);
            }
        }
    }
    rows
}

fn q7(e: &Events) -> Rows {
    let window = |b: &Value| int(b, "date_time").div_euclid(SIZE);
    let mut max: HashMap<i64, i64> = HashMap::new();
    for b in &e.bids {
        let m = max.entry(window(b)).or_insert(i64::MIN);
        *m = (*m).max(int(b, "price"));
    }
    e.bids
        .iter()
        .filter(|b| max[&window(b)] == int(b, "price"))
        .map(|b| {
            vec![
                int(b, "auction").to_string(),
                int(b, "bidder").to_string(),
                int(b, "price").to_string(),
                ts(int(b, "date_time")),
            ]
        })
        .collect()
}

fn q8(e: &Events) -> Rows {
    let window = |v: &Value| int(v, "date_time").div_euclid(SIZE) * SIZE;
    let sellers: BTreeSet<(i64, i64)> = e
        .auctions
        .iter()
        .map(|a| (int(a, "seller"), window(a)))
        .collect();
    let persons: BTreeSet<(i64, String, i64)> = e
        .persons
        .iter()
        .map(|p| (int(p, "id"), text(p, "name"), window(p)))
        .collect();
    persons
        .into_iter()
        .filter(|(id, _, w)| sellers.contains(&(*id, *w)))
        .map(|(id, name, w)| vec![id.to_string(), name, ts(w)])
        .collect()
}

/// A generated file spanning 60 s of event time (several windows of every kind).
fn generated() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    write_events(&path, 60_000, 1_000);
    (dir, path)
}

/// Runs every query over `input` and compares with the independent results.
fn check_all(input: &Path, queries: &[&str]) {
    let e = read_events(input);
    for &q in queries {
        match q {
            "q0" => {
                let got = run_query(
                    q,
                    input,
                    &["auction", "bidder", "price", "date_time", "extra"],
                );
                assert_eq!(got, sorted(q0(&e)), "q0");
            }
            "q1" => {
                let got = run_query(q, input, &["auction", "bidder", "price", "date_time"]);
                let mut want = q1(&e);
                want.sort_by(|a, b| {
                    (a.0, a.1, &a.3)
                        .cmp(&(b.0, b.1, &b.3))
                        .then(a.2.total_cmp(&b.2))
                });
                let mut got: Vec<(i64, i64, f64, String)> = got
                    .into_iter()
                    .map(|r| {
                        (
                            r[0].parse().expect("auction"),
                            r[1].parse().expect("bidder"),
                            r[2].parse().expect("price"),
                            r[3].clone(),
                        )
                    })
                    .collect();
                got.sort_by(|a, b| {
                    (a.0, a.1, &a.3)
                        .cmp(&(b.0, b.1, &b.3))
                        .then(a.2.total_cmp(&b.2))
                });
                assert_eq!(got.len(), want.len(), "q1 rows");
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!((g.0, g.1, &g.3), (w.0, w.1, &w.3), "q1");
                    assert!(
                        (g.2 - w.2).abs() <= 1e-9 * w.2.abs().max(1.0),
                        "q1 price {g:?} vs {w:?}"
                    );
                }
            }
            "q2" => {
                let got = run_query(q, input, &["auction", "price"]);
                assert_eq!(got, sorted(q2(&e)), "q2");
            }
            "q3" => {
                let got = run_query(q, input, &["name", "city", "state", "id"]);
                assert_eq!(got, sorted(q3(&e)), "q3");
            }
            "q5" => {
                let got = run_query(q, input, &["auction", "num", "window_start", "window_end"]);
                assert_eq!(got, sorted(q5(&e)), "q5");
            }
            "q7" => {
                let got = run_query(q, input, &["auction", "bidder", "price", "date_time"]);
                assert_eq!(got, sorted(q7(&e)), "q7");
            }
            "q8" => {
                let got = run_query(q, input, &["id", "name", "starttime"]);
                assert_eq!(got, sorted(q8(&e)), "q8");
            }
            other => panic!("no reference for {other}"),
        }
    }
}

#[test]
fn stateless_queries_over_a_generated_file() {
    let (_dir, input) = generated();
    check_all(&input, &["q0", "q1", "q2", "q3"]);
}

#[test]
fn windowed_queries_over_a_generated_file() {
    let (_dir, input) = generated();
    check_all(&input, &["q5", "q7", "q8"]);
}

#[test]
fn every_query_over_the_nexmark_rs_sample() {
    let sample = root().join("examples/nexmark-file/sample.jsonl");
    check_all(&sample, &["q0", "q1", "q2", "q3", "q5", "q7", "q8"]);
}

#[test]
fn sources_decode_only_the_fields_the_query_reads() {
    let flow = root().join("examples/nexmark-file/q2.yaml");
    let sample = root().join("examples/nexmark-file/sample.jsonl");
    let o = run(&[
        "validate",
        flow.to_str().expect("utf8"),
        "--set",
        &format!("sources.events.config.path={}", sample.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = common::stdout(&o);
    let source: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("  source events"))
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .map(str::trim)
        .collect();
    assert_eq!(
        source,
        [
            "Person: Struct(\"date_time\": Int64)",
            "Auction: Struct(\"date_time\": Int64)",
            "Bid: Struct(\"auction\": Int64, \"price\": Int64, \"date_time\": Int64)",
            "date_time: Timestamp(ms)",
        ],
        "{text}"
    );
}

#[test]
fn the_decoder_benchmark_decodes_every_line_of_the_sample() {
    let sample = root().join("examples/nexmark-file/sample.jsonl");
    let o = run(&["bench", "decode", sample.to_str().expect("utf8"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_str(common::stdout(&o).trim()).expect("one JSON object");
    let lines = std::fs::read_to_string(&sample)
        .expect("read")
        .lines()
        .count();
    assert_eq!(report["lines"], json!(lines));
    assert_eq!(report["dead_letters"], json!(0));
}
