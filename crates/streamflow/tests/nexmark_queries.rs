//! Each Nexmark example, run through the CLI in job mode, produces exactly
//! what an independent computation over the same generated events gives.
//! The expected results are computed here in plain Rust from the generator's
//! events, without the engine.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, Int64Array, StringArray, TimestampMillisecondArray};
use common::{read_jsonl, root, run, stderr};
use serde_json::Value;
use streamflow_connectors::sources::nexmark::{NexmarkConfig, NexmarkGenerator, NexmarkTable};

const EVENTS: u64 = 30_000;

/// One generated bid, as plain values.
#[derive(Debug, Clone)]
struct Bid {
    auction: i64,
    bidder: i64,
    price: i64,
    channel: String,
    url: String,
    date_time: String,
    extra: String,
}

fn bids() -> Vec<Bid> {
    let g = NexmarkGenerator::new(NexmarkConfig {
        table: NexmarkTable::Bid,
        ..NexmarkConfig::default()
    });
    let b = g.generate(0..EVENTS).expect("generate");
    let i64s = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64")
            .clone()
    };
    let strs = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8")
            .clone()
    };
    let (auction, bidder, price) = (i64s(0), i64s(1), i64s(2));
    let (channel, url, extra) = (strs(3), strs(4), strs(6));
    let ts = b
        .column(5)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .expect("ts")
        .clone();
    (0..b.num_rows())
        .map(|r| Bid {
            auction: auction.value(r),
            bidder: bidder.value(r),
            price: price.value(r),
            channel: channel.value(r).to_string(),
            url: url.value(r).to_string(),
            date_time: arrow::util::display::array_value_to_string(&ts, r).expect("format ts"),
            extra: extra.value(r).to_string(),
        })
        .collect()
}

/// Runs `examples/nexmark/<query>.yaml` on `EVENTS` events with `parallelism`
/// on its stages and returns the output rows.
fn run_query(query: &str, parallelism: usize) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let flow = root().join(format!("examples/nexmark/{query}.yaml"));
    let flow = flow.to_string_lossy().into_owned();
    let events = format!("sources.events.config.events={EVENTS}");
    let path = format!("sinks.out.config.path={}", out_dir.display());
    let mut args = vec![
        "run",
        flow.as_str(),
        "--set",
        events.as_str(),
        "--set",
        path.as_str(),
        "--quiet",
    ];
    let par = format!("stages[0].parallelism={parallelism}");
    let sink_par = format!("sinks.out.parallelism={parallelism}");
    if parallelism > 1 {
        args.extend(["--set", par.as_str(), "--set", sink_par.as_str()]);
    }
    let out = run(&args);
    assert!(out.status.success(), "{query} failed: {}", stderr(&out));
    read_jsonl(Path::new(&out_dir))
}

fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

fn rows_as_strings(rows: &[Value], columns: &[&str]) -> Vec<String> {
    sorted(
        rows.iter()
            .map(|r| {
                assert_eq!(
                    r.as_object().map(|o| o.len()),
                    Some(columns.len()),
                    "unexpected columns in {r}"
                );
                columns
                    .iter()
                    .map(|c| r[*c].to_string())
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect(),
    )
}

#[test]
fn q0_passes_every_bid_through() {
    let expected = sorted(
        bids()
            .iter()
            .map(|b| {
                format!(
                    "{}|{}|{}|{}|{}",
                    b.auction,
                    b.bidder,
                    b.price,
                    Value::from(b.date_time.clone()),
                    Value::from(b.extra.clone())
                )
            })
            .collect(),
    );
    let actual = rows_as_strings(
        &run_query("q0", 1),
        &["auction", "bidder", "price", "date_time", "extra"],
    );
    assert_eq!(actual.len(), (EVENTS as usize / 50) * 46);
    assert_eq!(actual, expected);
}

#[test]
fn q0_with_parallel_stages_gives_the_same_rows() {
    let expected = rows_as_strings(
        &run_query("q0", 1),
        &["auction", "bidder", "price", "date_time", "extra"],
    );
    let parallel = rows_as_strings(
        &run_query("q0", 2),
        &["auction", "bidder", "price", "date_time", "extra"],
    );
    assert_eq!(parallel, expected);
}

#[test]
fn q1_converts_prices() {
    let mut expected: BTreeMap<(i64, i64, String), Vec<f64>> = BTreeMap::new();
    for b in bids() {
        expected
            .entry((b.auction, b.bidder, b.date_time.clone()))
            .or_default()
            .push(0.908 * b.price as f64);
    }
    let mut actual: BTreeMap<(i64, i64, String), Vec<f64>> = BTreeMap::new();
    for r in run_query("q1", 1) {
        let key = (
            r["auction"].as_i64().expect("auction"),
            r["bidder"].as_i64().expect("bidder"),
            r["date_time"].as_str().expect("date_time").to_string(),
        );
        actual
            .entry(key)
            .or_default()
            .push(r["price"].as_f64().expect("price"));
    }
    assert_eq!(actual.len(), expected.len());
    for (k, mut want) in expected {
        let mut got = actual.remove(&k).unwrap_or_default();
        want.sort_by(f64::total_cmp);
        got.sort_by(f64::total_cmp);
        assert_eq!(got.len(), want.len(), "{k:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                "{k:?}: {g} != {w}"
            );
        }
    }
}

#[test]
fn q2_selects_auctions_divisible_by_123() {
    let expected = sorted(
        bids()
            .iter()
            .filter(|b| b.auction % 123 == 0)
            .map(|b| format!("{}|{}", b.auction, b.price))
            .collect(),
    );
    assert!(!expected.is_empty(), "the test needs some matching bids");
    let actual = rows_as_strings(&run_query("q2", 1), &["auction", "price"]);
    assert_eq!(actual, expected);
}

fn channel_id(b: &Bid) -> Option<String> {
    match b.channel.to_lowercase().as_str() {
        "apple" => Some("0".into()),
        "google" => Some("1".into()),
        "facebook" => Some("2".into()),
        "baidu" => Some("3".into()),
        _ => b
            .url
            .split_once("channel_id=")
            .map(|(_, rest)| rest.split('&').next().unwrap_or("").to_string()),
    }
}

#[test]
fn q21_adds_channel_ids() {
    let expected = sorted(
        bids()
            .iter()
            .filter_map(|b| {
                channel_id(b).map(|id| {
                    format!(
                        "{}|{}|{}|{}|{}",
                        b.auction,
                        b.bidder,
                        b.price,
                        Value::from(b.channel.clone()),
                        Value::from(id)
                    )
                })
            })
            .collect(),
    );
    let actual = rows_as_strings(
        &run_query("q21", 1),
        &["auction", "bidder", "price", "channel", "channel_id"],
    );
    assert_eq!(actual, expected);
}

#[test]
fn q22_splits_urls() {
    let part = |url: &str, i: usize| url.split('/').nth(i).unwrap_or("").to_string();
    let expected = sorted(
        bids()
            .iter()
            .map(|b| {
                format!(
                    "{}|{}|{}|{}|{}|{}|{}",
                    b.auction,
                    b.bidder,
                    b.price,
                    Value::from(b.channel.clone()),
                    Value::from(part(&b.url, 3)),
                    Value::from(part(&b.url, 4)),
                    Value::from(part(&b.url, 5))
                )
            })
            .collect(),
    );
    let actual = rows_as_strings(
        &run_query("q22", 1),
        &[
            "auction", "bidder", "price", "channel", "dir1", "dir2", "dir3",
        ],
    );
    assert_eq!(actual, expected);
}

#[test]
fn quickstart_runs_on_embedded_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = root()
        .join("examples/quickstart.yaml")
        .to_string_lossy()
        .into_owned();
    let path = format!("sinks.out.config.path={}", dir.path().join("q").display());
    let out = run(&["run", &flow, "--set", &path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_jsonl(&dir.path().join("q"));
    let expected_count = {
        let g = NexmarkGenerator::new(NexmarkConfig {
            seed: 42,
            table: NexmarkTable::Bid,
            ..NexmarkConfig::default()
        });
        let b = g.generate(0..200_000).expect("generate");
        let price = b
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        price.values().iter().filter(|p| **p > 10_000_000).count()
    };
    assert_eq!(rows.len(), expected_count);
    assert!(
        rows.iter().all(
            |r| r["currency"] == "EUR" && r["price_eur"].as_f64().is_some_and(|p| p > 90_800.0)
        )
    );
    assert!(
        stderr(&out).contains("records from sources"),
        "summary missing: {}",
        stderr(&out)
    );
}
