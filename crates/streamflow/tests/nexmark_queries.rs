//! Each Nexmark example, run through the CLI in job mode, produces exactly
//! what an independent computation over the same generated events gives.
//! The expected results are computed here in plain Rust from the generator's
//! events, without the engine.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use common::{read_jsonl, root, run, stderr};
use serde_json::Value;
use streamflow_connectors::sources::nexmark::{NexmarkConfig, NexmarkGenerator, NexmarkTable};

const EVENTS: u64 = 30_000;
/// Event rate of the windowed queries' tests: 30 s of event time, so several windows.
const WINDOWED_EVENT_RATE: u64 = 1_000;

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
    bids_at(NexmarkConfig::default().event_rate)
}

/// Bids generated at `event_rate` events per second of event time.
fn bids_at(event_rate: u64) -> Vec<Bid> {
    let g = NexmarkGenerator::new(NexmarkConfig {
        table: NexmarkTable::Bid,
        event_rate,
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
    let source = if matches!(
        query,
        "q5" | "q7" | "q11" | "q4_shape" | "dedup" | "q18" | "q19" | "top_window"
    ) {
        "bids"
    } else {
        "events"
    };
    let events = format!("sources.{source}.config.events={EVENTS}");
    let rate = format!("sources.{source}.config.event_rate={WINDOWED_EVENT_RATE}");
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
    if source == "bids" {
        args.extend(["--set", rate.as_str()]);
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

/// Window starts containing `ts` for windows of `size` every `slide` (ms).
fn window_starts(ts: i64, size: i64, slide: i64) -> Vec<i64> {
    (ts - size + 1..=ts)
        .filter(|s| s.rem_euclid(slide) == 0)
        .collect()
}

fn millis(text: &str) -> i64 {
    // "2023-11-14T22:13:20[.500]" → ms since the epoch, by difference with the base time.
    let (date_time, frac) = text.split_once('.').unwrap_or((text, "0"));
    let (_, time) = date_time.split_once('T').expect("T");
    let parts: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().expect("number"))
        .collect();
    let day_ms = ((parts[0] * 60 + parts[1]) * 60 + parts[2]) * 1000
        + format!("{frac:0<3}")[..3].parse::<i64>().expect("ms");
    // The generator's base time 1_700_000_000_000 is 2023-11-14T22:13:20 (all test events fall on that day).
    1_700_000_000_000 - (22 * 3600 + 13 * 60 + 20) * 1000 + day_ms
}

fn bid_millis() -> Vec<(i64, Bid)> {
    bids_at(WINDOWED_EVENT_RATE)
        .into_iter()
        .map(|b| (millis(&b.date_time), b))
        .collect()
}

#[test]
fn q7_highest_bid_per_tumbling_window() {
    let mut expected: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for (ts, b) in bid_millis() {
        let e = expected
            .entry(ts - ts.rem_euclid(10_000))
            .or_insert((i64::MIN, 0));
        e.0 = e.0.max(b.price);
        e.1 += 1;
    }
    let expected: Vec<String> = expected
        .into_iter()
        .map(|(s, (max, n))| format!("{s}|{}|{max}|{n}", s + 10_000))
        .collect();
    let actual = sorted(
        run_query("q7", 1)
            .iter()
            .map(|r| {
                format!(
                    "{}|{}|{}|{}",
                    millis(r["window_start"].as_str().expect("start")),
                    millis(r["window_end"].as_str().expect("end")),
                    r["max_price"],
                    r["bids"]
                )
            })
            .collect(),
    );
    assert!(expected.len() > 1, "the test needs several windows");
    assert_eq!(actual, sorted(expected));
}

#[test]
fn q5_bids_per_auction_in_sliding_windows() {
    let mut expected: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for (ts, b) in bid_millis() {
        for start in window_starts(ts, 10_000, 2_000) {
            *expected.entry((start, b.auction)).or_default() += 1;
        }
    }
    let expected: Vec<String> = expected
        .into_iter()
        .map(|((s, a), n)| format!("{s}|{}|{a}|{n}", s + 10_000))
        .collect();
    for parallelism in [1, 2] {
        let actual = sorted(
            run_query("q5", parallelism)
                .iter()
                .map(|r| {
                    format!(
                        "{}|{}|{}|{}",
                        millis(r["window_start"].as_str().expect("start")),
                        millis(r["window_end"].as_str().expect("end")),
                        r["auction"],
                        r["num"]
                    )
                })
                .collect(),
        );
        assert_eq!(
            actual,
            sorted(expected.clone()),
            "parallelism {parallelism}"
        );
    }
}

#[test]
fn q11_bids_per_bidder_session() {
    let mut per_bidder: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (ts, b) in bid_millis() {
        per_bidder.entry(b.bidder).or_default().push(ts);
    }
    let mut expected = Vec::new();
    for (bidder, mut times) in per_bidder {
        times.sort_unstable();
        let (mut start, mut last, mut n) = (times[0], times[0], 0);
        for t in times {
            if t - last > 10_000 {
                expected.push(format!("{start}|{}|{bidder}|{n}", last + 10_000));
                start = t;
                n = 0;
            }
            n += 1;
            last = t;
        }
        expected.push(format!("{start}|{}|{bidder}|{n}", last + 10_000));
    }
    let actual = sorted(
        run_query("q11", 1)
            .iter()
            .map(|r| {
                format!(
                    "{}|{}|{}|{}",
                    millis(r["window_start"].as_str().expect("start")),
                    millis(r["window_end"].as_str().expect("end")),
                    r["bidder"],
                    r["bid_count"]
                )
            })
            .collect(),
    );
    assert!(expected.len() > 10, "the test needs several sessions");
    assert_eq!(actual, sorted(expected));
}

/// Applies a changelog (`_op` = +I, -U, +U, -D) to a table keyed by `key`.
fn apply_changelog(rows: &[Value], key: &str) -> BTreeMap<String, Value> {
    let mut table = BTreeMap::new();
    for r in rows {
        let k = r[key].to_string();
        match r["_op"].as_str().expect("_op") {
            "+I" | "+U" => {
                table.insert(k, r.clone());
            }
            "-U" | "-D" => {
                let removed = table
                    .remove(&k)
                    .expect("retraction of a key with no current row");
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    v.as_object_mut().map(|o| o.remove("_op"));
                    v
                };
                assert_eq!(
                    strip(&removed),
                    strip(r),
                    "a retraction names the row it retracts"
                );
            }
            other => panic!("unexpected _op {other}"),
        }
    }
    table
}

#[test]
fn aggregates_of_aggregates_apply_retractions() {
    let mut max_per_auction: BTreeMap<i64, i64> = BTreeMap::new();
    for b in bids() {
        let m = max_per_auction.entry(b.auction).or_insert(i64::MIN);
        *m = (*m).max(b.price);
    }
    let mut groups: BTreeMap<i64, (f64, i64)> = BTreeMap::new();
    for (auction, max) in &max_per_auction {
        let g = groups.entry(auction % 5).or_default();
        g.0 += *max as f64;
        g.1 += 1;
    }
    let rows = run_query("q4_shape", 1);
    assert!(
        rows.iter().any(|r| r["_op"] == "-U"),
        "updates are emitted as retractions"
    );
    let table = apply_changelog(&rows, "auction % 5");
    assert_eq!(table.len(), groups.len());
    for (g, (sum, n)) in groups {
        let row = &table[&g.to_string()];
        assert_eq!(row["auctions"], n, "group {g}");
        let avg = row["avg_max"].as_f64().expect("avg");
        assert!(
            (avg - sum / n as f64).abs() < 1e-6 * avg.abs().max(1.0),
            "group {g}: {avg} vs {}",
            sum / n as f64
        );
    }
}

#[test]
fn dedup_keeps_first_bid_per_bidder_and_auction() {
    let mut seen = std::collections::HashSet::new();
    let expected = sorted(
        bid_millis()
            .into_iter()
            .filter(|(_, b)| seen.insert((b.bidder, b.auction)))
            .map(|(_, b)| format!("{}|{}|{}", b.bidder, b.auction, b.price))
            .collect(),
    );
    let actual = sorted(
        run_query("dedup", 1)
            .iter()
            .map(|r| format!("{}|{}|{}", r["bidder"], r["auction"], r["price"]))
            .collect(),
    );
    // 30 s of events: no key outlives the 10-minute ttl, so this is exact.
    assert!(actual.len() < bid_millis().len(), "duplicates were dropped");
    assert_eq!(actual, expected);
}

/// Applies a changelog of whole rows (`+I` adds, `-D` removes the same row)
/// and returns the remaining rows without `_op`, as sorted strings of `columns`.
fn apply_row_changelog(rows: &[Value], columns: &[&str]) -> Vec<String> {
    let mut table: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows {
        let row = columns
            .iter()
            .map(|c| r[*c].to_string())
            .collect::<Vec<_>>()
            .join("|");
        match r["_op"].as_str().expect("_op") {
            "+I" => *table.entry(row).or_default() += 1,
            "-D" => {
                let n = table.get_mut(&row).expect("-D of a row that is not there");
                *n -= 1;
                if *n == 0 {
                    table.remove(&row);
                }
            }
            other => panic!("unexpected _op {other}"),
        }
    }
    table
        .into_iter()
        .flat_map(|(row, n)| std::iter::repeat_n(row, n))
        .collect()
}

const BID_COLUMNS: [&str; 7] = [
    "auction",
    "bidder",
    "price",
    "channel",
    "url",
    "date_time",
    "extra",
];

fn bid_row(b: &Bid) -> String {
    format!(
        "{}|{}|{}|{:?}|{:?}|{:?}|{:?}",
        b.auction, b.bidder, b.price, b.channel, b.url, b.date_time, b.extra
    )
}

#[test]
fn q18_last_bid_per_bidder_and_auction() {
    // Latest date_time wins; among equal times the earlier bid stays.
    let mut last: BTreeMap<(i64, i64), (i64, Bid)> = BTreeMap::new();
    for (ts, b) in bid_millis() {
        match last.get(&(b.bidder, b.auction)) {
            Some((t, _)) if *t >= ts => {}
            _ => {
                last.insert((b.bidder, b.auction), (ts, b));
            }
        }
    }
    let expected = sorted(last.values().map(|(_, b)| bid_row(b)).collect());
    let rows = run_query("q18", 1);
    assert!(
        rows.iter().any(|r| r["_op"] == "-D"),
        "replaced bids are retracted"
    );
    assert_eq!(apply_row_changelog(&rows, &BID_COLUMNS), expected);
}

#[test]
fn q19_ten_highest_bids_per_auction() {
    let mut per_auction: BTreeMap<i64, Vec<Bid>> = BTreeMap::new();
    for (_, b) in bid_millis() {
        per_auction.entry(b.auction).or_default().push(b);
    }
    let mut expected = Vec::new();
    for (_, mut bids) in per_auction {
        // Stable: equal prices keep arrival order.
        bids.sort_by_key(|b| std::cmp::Reverse(b.price));
        expected.extend(bids.iter().take(10).map(bid_row));
    }
    let rows = run_query("q19", 1);
    assert!(
        rows.iter().any(|r| r["_op"] == "-D"),
        "bids drop out of the top ten"
    );
    assert_eq!(apply_row_changelog(&rows, &BID_COLUMNS), sorted(expected));
}

#[test]
fn top_three_bids_per_tumbling_window_with_ranks() {
    let mut per_window: BTreeMap<i64, Vec<Bid>> = BTreeMap::new();
    for (ts, b) in bid_millis() {
        per_window
            .entry(ts - ts.rem_euclid(10_000))
            .or_default()
            .push(b);
    }
    let mut expected = Vec::new();
    for (start, mut bids) in per_window {
        bids.sort_by_key(|b| std::cmp::Reverse(b.price));
        for (i, b) in bids.iter().take(3).enumerate() {
            expected.push(format!("{start}|{}|{}", i + 1, bid_row(b)));
        }
    }
    let actual = sorted(
        run_query("top_window", 1)
            .iter()
            .map(|r| {
                let row = BID_COLUMNS
                    .iter()
                    .map(|c| r[*c].to_string())
                    .collect::<Vec<_>>()
                    .join("|");
                format!(
                    "{}|{}|{row}",
                    millis(r["window_start"].as_str().expect("start")),
                    r["rank"]
                )
            })
            .collect(),
    );
    assert!(expected.len() > 3, "the test needs several windows");
    assert_eq!(actual, sorted(expected));
}

#[test]
fn q8_joins_persons_and_their_auctions_in_the_same_window() {
    let column = |b: &arrow::record_batch::RecordBatch, name: &str| {
        Arc::clone(b.column_by_name(name).expect("column"))
    };
    let i64s = |a: ArrayRef| {
        a.as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64")
            .clone()
    };
    let ts = |a: ArrayRef| {
        a.as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("ts")
            .clone()
    };
    let persons = generated(NexmarkTable::Person);
    let auctions = generated(NexmarkTable::Auction);
    let (pid, ptime) = (
        i64s(column(&persons, "id")),
        ts(column(&persons, "date_time")),
    );
    let pname = column(&persons, "name");
    let pname = pname.as_any().downcast_ref::<StringArray>().expect("utf8");
    let (aid, seller, atime) = (
        i64s(column(&auctions, "id")),
        i64s(column(&auctions, "seller")),
        ts(column(&auctions, "date_time")),
    );
    let window = |t: i64| t - t.rem_euclid(10_000);
    let mut expected = Vec::new();
    for p in 0..pid.len() {
        for a in 0..aid.len() {
            if pid.value(p) == seller.value(a) && window(ptime.value(p)) == window(atime.value(a)) {
                expected.push(format!(
                    "{}|{}|{}|{}",
                    window(ptime.value(p)),
                    pid.value(p),
                    pname.value(p),
                    aid.value(a)
                ));
            }
        }
    }
    assert!(expected.len() > 10, "the test needs matches");

    let actual = sorted(
        run_two_sources("q8", ["persons", "auctions"])
            .iter()
            .map(|r| {
                format!(
                    "{}|{}|{}|{}",
                    millis(r["window_start"].as_str().expect("start")),
                    r["p_id"],
                    r["p_name"].as_str().expect("name"),
                    r["a_id"]
                )
            })
            .collect(),
    );
    assert_eq!(actual, sorted(expected));
}

/// The test's events of one Nexmark table, at the windowed event rate.
fn generated(table: NexmarkTable) -> arrow::record_batch::RecordBatch {
    NexmarkGenerator::new(NexmarkConfig {
        table,
        event_rate: WINDOWED_EVENT_RATE,
        ..NexmarkConfig::default()
    })
    .generate(0..EVENTS)
    .expect("generate")
}

/// Runs `examples/nexmark/<query>.yaml`, whose two Nexmark sources are
/// `sources`, on the test's events; returns the output rows.
fn run_two_sources(query: &str, sources: [&str; 2]) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let flow = root().join(format!("examples/nexmark/{query}.yaml"));
    let flow = flow.to_string_lossy().into_owned();
    let mut args = vec!["run".to_string(), flow, "--quiet".to_string()];
    for source in sources {
        for setting in [
            format!("sources.{source}.config.events={EVENTS}"),
            format!("sources.{source}.config.event_rate={WINDOWED_EVENT_RATE}"),
        ] {
            args.extend(["--set".to_string(), setting]);
        }
    }
    args.extend([
        "--set".to_string(),
        format!("sinks.out.config.path={}", out_dir.display()),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    assert!(out.status.success(), "{query} failed: {}", stderr(&out));
    read_jsonl(&out_dir)
}

#[test]
fn q20_joins_category_10_auctions_to_bids_within_10_seconds() {
    let auctions = generated(NexmarkTable::Auction);
    let i64s = |name: &str| {
        auctions
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .expect("i64")
            .clone()
    };
    let (aid, seller, category) = (i64s("id"), i64s("seller"), i64s("category"));
    let atime = auctions
        .column_by_name("date_time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
        .expect("ts")
        .clone();
    let mut by_id: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for a in 0..aid.len() {
        if category.value(a) == 10 {
            by_id.insert(aid.value(a), (seller.value(a), atime.value(a)));
        }
    }
    let mut expected = Vec::new();
    for (ts, b) in bid_millis() {
        if let Some((seller, created)) = by_id.get(&b.auction)
            && *created <= ts
            && ts <= created + 10_000
        {
            expected.push(format!(
                "{}|{seller}|{}|{}|{ts}",
                b.auction, b.bidder, b.price
            ));
        }
    }
    assert!(expected.len() > 10, "the test needs matches");
    let actual = sorted(
        run_two_sources("q20", ["auctions", "bids"])
            .iter()
            .map(|r| {
                assert_eq!(r["a_category"], 10);
                format!(
                    "{}|{}|{}|{}|{}",
                    r["a_id"],
                    r["a_seller"],
                    r["b_bidder"],
                    r["b_price"],
                    millis(r["b_date_time"].as_str().expect("time"))
                )
            })
            .collect(),
    );
    assert_eq!(actual, sorted(expected));
}

#[test]
fn q3_joins_category_10_auctions_to_local_sellers() {
    let persons = generated(NexmarkTable::Person);
    let auctions = generated(NexmarkTable::Auction);
    let col = |b: &arrow::record_batch::RecordBatch, name: &str| {
        Arc::clone(b.column_by_name(name).expect("column"))
    };
    let i64s = |a: ArrayRef| {
        a.as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64")
            .clone()
    };
    let strs = |a: ArrayRef| {
        a.as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8")
            .clone()
    };
    let (pid, name, city, state) = (
        i64s(col(&persons, "id")),
        strs(col(&persons, "name")),
        strs(col(&persons, "city")),
        strs(col(&persons, "state")),
    );
    let (aid, seller, category) = (
        i64s(col(&auctions, "id")),
        i64s(col(&auctions, "seller")),
        i64s(col(&auctions, "category")),
    );
    let mut expected = Vec::new();
    // 30 s of events: well within the hour of state_ttl, so every match counts.
    for p in 0..pid.len() {
        if !["OR", "ID", "CA"].contains(&state.value(p)) {
            continue;
        }
        for a in 0..aid.len() {
            if category.value(a) == 10 && seller.value(a) == pid.value(p) {
                expected.push(format!(
                    "{}|{}|{}|{}",
                    name.value(p),
                    city.value(p),
                    state.value(p),
                    aid.value(a)
                ));
            }
        }
    }
    assert!(expected.len() > 3, "the test needs matches");
    let actual = sorted(
        run_two_sources("q3", ["auctions", "persons"])
            .iter()
            .map(|r| {
                format!(
                    "{}|{}|{}|{}",
                    r["p_name"].as_str().expect("name"),
                    r["p_city"].as_str().expect("city"),
                    r["p_state"].as_str().expect("state"),
                    r["a_id"]
                )
            })
            .collect(),
    );
    assert_eq!(actual, sorted(expected));
}

#[test]
fn q3_left_join_retracts_null_rows_when_the_seller_arrives() {
    let persons = generated(NexmarkTable::Person);
    let auctions = generated(NexmarkTable::Auction);
    let i64s = |b: &arrow::record_batch::RecordBatch, name: &str| {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .expect("i64")
            .clone()
    };
    let strs = |name: &str| {
        persons
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .expect("utf8")
            .clone()
    };
    let (pid, name, state) = (i64s(&persons, "id"), strs("name"), strs("state"));
    let (aid, seller, category) = (
        i64s(&auctions, "id"),
        i64s(&auctions, "seller"),
        i64s(&auctions, "category"),
    );
    let mut local: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
    for p in 0..pid.len() {
        if ["OR", "ID", "CA"].contains(&state.value(p)) {
            local
                .entry(pid.value(p))
                .or_default()
                .push((name.value(p).into(), state.value(p).into()));
        }
    }
    // 30 s of events: within the hour of state_ttl, so every match counts.
    let mut expected = Vec::new();
    for a in (0..aid.len()).filter(|&a| category.value(a) == 10) {
        let (id, s) = (aid.value(a), seller.value(a));
        match local.get(&s) {
            Some(people) => {
                for (n, st) in people {
                    expected.push(format!("{id}|{s}|{n:?}|{st:?}"));
                }
            }
            None => expected.push(format!("{id}|{s}|null|null")),
        }
    }
    assert!(
        expected.iter().any(|e| !e.ends_with("null"))
            && expected.iter().any(|e| e.ends_with("null")),
        "the test needs auctions with and without local sellers"
    );
    let rows = run_two_sources("q3_left", ["auctions", "persons"]);
    assert_eq!(
        apply_row_changelog(&rows, &["a_id", "a_seller", "p_name", "p_state"]),
        sorted(expected)
    );
}

#[test]
fn bids_are_enriched_from_a_csv_table() {
    // Which side reaches the join first varies from run to run; the
    // operator tests check both orders give the same rows.
    let owners: BTreeMap<&str, (&str, &str)> = [
        ("Google", ("Alphabet", "us")),
        ("Facebook", ("Meta", "us")),
        ("Baidu", ("Baidu Inc", "cn")),
        ("Apple", ("Apple Inc", "us")),
    ]
    .into_iter()
    .collect();
    let expected = sorted(
        bids()
            .iter()
            .map(|b| match owners.get(b.channel.as_str()) {
                Some((o, r)) => format!("{}|{}|{}|\"{o}\"|\"{r}\"", b.auction, b.price, b.channel),
                None => format!("{}|{}|{}|null|null", b.auction, b.price, b.channel),
            })
            .collect(),
    );
    assert!(
        expected.iter().any(|e| e.ends_with("null")),
        "some channels are unknown"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let flow = root().join("examples/enrichment/bids_by_owner.yaml");
    let csv = root().join("examples/enrichment/channels.csv");
    let events = format!("sources.bids.config.events={EVENTS}");
    let table = format!("sources.channels.config.path={}", csv.display());
    let sink = format!("sinks.out.config.path={}", out_dir.display());
    let flow = flow.to_string_lossy().into_owned();
    let out = run(&[
        "run", &flow, "--quiet", "--set", &events, "--set", &table, "--set", &sink,
    ]);
    assert!(out.status.success(), "enrichment failed: {}", stderr(&out));
    let actual = sorted(
        read_jsonl(&out_dir)
            .iter()
            .map(|r| {
                format!(
                    "{}|{}|{}|{}|{}",
                    r["auction"],
                    r["price"],
                    r["channel"].as_str().expect("channel"),
                    r["table_owner"],
                    r["table_region"]
                )
            })
            .collect(),
    );
    assert_eq!(actual, expected);
}

#[test]
fn q4_average_closing_price_per_category() {
    let auctions = generated(NexmarkTable::Auction);
    let i64s = |name: &str| {
        auctions
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .expect("i64")
            .clone()
    };
    let ts = |name: &str| {
        auctions
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
            .expect("ts")
            .clone()
    };
    let (aid, category) = (i64s("id"), i64s("category"));
    let (created, expires) = (ts("date_time"), ts("expires"));
    let mut auction: BTreeMap<i64, (i64, i64, i64)> = BTreeMap::new();
    for a in 0..aid.len() {
        auction.insert(
            aid.value(a),
            (category.value(a), created.value(a), expires.value(a)),
        );
    }
    // Highest bid within each auction's lifetime, then the mean per category.
    let mut winning: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for (t, b) in bid_millis() {
        if let Some((cat, from, to)) = auction.get(&b.auction)
            && *from <= t
            && t <= *to
        {
            let w = winning.entry(b.auction).or_insert((*cat, i64::MIN));
            w.1 = w.1.max(b.price);
        }
    }
    let mut per_category: BTreeMap<i64, (f64, i64)> = BTreeMap::new();
    for (cat, price) in winning.values() {
        let e = per_category.entry(*cat).or_default();
        e.0 += *price as f64;
        e.1 += 1;
    }
    assert!(per_category.len() > 1, "the test needs several categories");
    let rows = run_two_sources("q4", ["auctions", "bids"]);
    let table = apply_changelog(&rows, "a_category");
    assert_eq!(table.len(), per_category.len());
    for (cat, (sum, n)) in per_category {
        let row = &table[&cat.to_string()];
        assert_eq!(row["auctions"], n, "category {cat}");
        let avg = row["avg_final"].as_f64().expect("avg");
        let want = sum / n as f64;
        assert!(
            (avg - want).abs() < 1e-6 * want.abs().max(1.0),
            "category {cat}: {avg} vs {want}"
        );
    }
}

#[test]
fn q9_winning_bid_of_each_auction() {
    let auctions = generated(NexmarkTable::Auction);
    let column = |name: &str| Arc::clone(auctions.column_by_name(name).expect("column"));
    let ids = column("id");
    let ids = ids.as_any().downcast_ref::<Int64Array>().expect("i64");
    let [created, expires] = ["date_time", "expires"].map(|name| {
        column(name)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("ts")
            .clone()
    });
    let lifetime: BTreeMap<i64, (i64, i64)> = (0..ids.len())
        .map(|a| (ids.value(a), (created.value(a), expires.value(a))))
        .collect();
    // Highest price during the lifetime; among equal prices the earliest bid.
    let mut winner: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for (t, b) in bid_millis() {
        if let Some((from, to)) = lifetime.get(&b.auction)
            && *from <= t
            && t <= *to
        {
            let w = winner.entry(b.auction).or_insert((b.price, t));
            if (b.price, -t) > (w.0, -w.1) {
                *w = (b.price, t);
            }
        }
    }
    assert!(winner.len() > 10, "the test needs auctions with bids");
    let expected = sorted(
        winner
            .iter()
            .map(|(a, (price, t))| format!("{a}|{price}|{t}"))
            .collect(),
    );
    let rows = run_two_sources("q9", ["auctions", "bids"]);
    assert!(
        rows.iter().any(|r| r["_op"] == "-D"),
        "outbid winners are retracted"
    );
    let actual = sorted(
        apply_row_changelog(&rows, &["a_id", "b_price", "b_date_time"])
            .iter()
            .map(|row| {
                let mut parts = row.split('|');
                let (a, p, t) = (parts.next(), parts.next(), parts.next());
                let t = t.expect("time").trim_matches('"');
                format!("{}|{}|{}", a.expect("id"), p.expect("price"), millis(t))
            })
            .collect(),
    );
    assert_eq!(actual, expected);
}
