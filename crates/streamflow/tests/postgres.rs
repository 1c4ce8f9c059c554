//! The `postgres` sink against the local PostgreSQL server (127.0.0.1:5432,
//! database `test`): append, upsert of window results and of a changelog,
//! and exactly-once through SIGKILLs with checkpoints.

mod common;

use std::collections::BTreeMap;

use common::{read_jsonl, run, stderr, write};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Runs SQL with psql; rows as `|`-separated lines.
fn psql(sql: &str) -> Vec<String> {
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-At",
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn generated_rows_are_appended_with_their_types() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = common::unique("append");
    let flow = write(
        dir.path(),
        "flow.yaml",
        &format!(
            "name: t\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 1000, columns: {{id: i, name: \"concat('n', i)\", amount: \"i / 4.0\", ok: \"i % 2 = 0\", at: \"to_timestamp_millis(1700000000000 + i)\"}}}}}}\nsinks:\n  - {{name: pg, type: postgres, input: g, config: {{url: '{URL}', table: {table}}}}}\n"
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        psql(&format!(
            "SELECT count(*), sum(id), sum(amount), count(*) FILTER (WHERE ok) FROM {table}"
        )),
        vec!["1000|499500|124875|500"]
    );
    assert_eq!(
        psql(&format!("SELECT name, at FROM {table} WHERE id = 7")),
        vec!["n7|2023-11-14 22:13:20.007"]
    );
}

#[test]
fn window_results_are_upserted_by_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let table = common::unique("windows");
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: t\nmode: job\nsources:\n  - name: bids\n    type: nexmark\n    config: {{events: 20000, table: bid}}\n    event_time: {{column: date_time, watermark: {{max_out_of_orderness: 1s}}}}\nstages:\n  - {{name: w, type: window, input: bids, key_by: [auction], window: {{kind: tumbling, size: 10s}}, aggregates: {{bids: \"count(*)\", top: \"max(price)\"}}}}\nsinks:\n  - {{name: pg, type: postgres, input: w, config: {{url: '{URL}', table: {table}, mode: upsert, key: [auction, window_start]}}}}\n  - {{name: f, type: file, input: w, config: {{path: '{}'}}}}\n",
            d.join("w.jsonl").display()
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected: BTreeMap<i64, (i64, i64)> =
        read_jsonl(&d.join("w.jsonl"))
            .iter()
            .fold(BTreeMap::new(), |mut m, r| {
                let e = m
                    .entry(r["auction"].as_i64().expect("auction"))
                    .or_insert((0, 0));
                e.0 += r["bids"].as_i64().expect("bids");
                e.1 = e.1.max(r["top"].as_i64().expect("top"));
                m
            });
    let got: BTreeMap<i64, (i64, i64)> = psql(&format!(
        "SELECT auction, sum(bids), max(top) FROM {table} GROUP BY auction"
    ))
    .iter()
    .map(|l| {
        let v: Vec<i64> = l.split('|').map(|x| x.parse().expect("int")).collect();
        (v[0], (v[1], v[2]))
    })
    .collect();
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
}

#[test]
fn a_changelog_is_applied_as_upserts_and_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = common::unique("changelog");
    let flow = write(
        dir.path(),
        "flow.yaml",
        &format!(
            "name: t\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 5000, batch_size: 100, columns: {{k: \"i % 10\", v: i}}}}}}\nstages:\n  - {{name: totals, type: aggregate, input: g, key_by: [k], aggregates: {{n: \"count(*)\", s: \"sum(v)\"}}}}\nsinks:\n  - {{name: pg, type: postgres, input: totals, config: {{url: '{URL}', table: {table}, mode: upsert, key: [k]}}}}\n"
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected: Vec<String> = (0..10)
        .map(|k| {
            let s: i64 = (0..5000).filter(|i| i % 10 == k).sum();
            format!("{k}|500|{s}")
        })
        .collect();
    assert_eq!(
        psql(&format!("SELECT k, n, s FROM {table} ORDER BY k")),
        expected
    );
}

#[test]
fn sigkills_leave_exactly_the_rows_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let table = common::unique("eo");
    // 40 000 rows at 40 000 rows/s in batches of 20: the run takes a while.
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: eo\nmode: job\ncheckpoint: {{interval: 30ms, storage: '{}'}}\nsources:\n  - {{name: in, type: generator, config: {{count: 40000, batch_size: 20, rate: 40000, columns: {{id: i, name: \"concat('n', i)\"}}}}}}\nsinks:\n  - {{name: pg, type: postgres, input: in, config: {{url: '{URL}', table: {table}}}}}\n",
            d.join("state").display()
        ),
    );
    let resumed = common::run_with_kills(&flow, &[250, 400, 300, 500]);
    assert!(resumed > 0, "a restart resumed from a checkpoint");
    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {table}"
        )),
        vec!["40000|40000|0|39999"]
    );
}

#[test]
fn a_server_that_is_down_is_named_in_the_error() {
    common::assert_run_fails_with(
        "name: t\nmode: job\nsources:\n  - {name: g, type: generator, config: {count: 1, columns: {id: i}}}\nsinks:\n  - {name: pg, type: postgres, input: g, config: {url: 'postgres://postgres@127.0.0.1:1/test', table: x}}\n",
        "cannot connect to PostgreSQL at 127.0.0.1:1",
    );
}

#[test]
fn a_table_is_read_incrementally_into_redis_and_a_rerun_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let table = common::unique("orders");
    let stream = format!("{table}_stream");
    psql(&format!(
        "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, customer TEXT, amount FLOAT8, created TIMESTAMP DEFAULT now()); INSERT INTO {table} (customer, amount) SELECT 'c' || g % 10, g / 10.0 FROM generate_series(1, 1000) g"
    ));
    let example = common::root().join("examples/postgres/orders_to_redis.yaml");
    let run_example = || {
        run(&[
            "run",
            &example.to_string_lossy(),
            "--set",
            &format!("sources.orders.config.table={table}"),
            "--set",
            "sources.orders.config.batch_size=300",
            "--set",
            &format!("sinks.stream.config.stream={stream}"),
            "--set",
            &format!("checkpoint.storage={}", d.join("state").display()),
        ])
    };
    let out = run_example();
    assert!(out.status.success(), "{}", stderr(&out));
    psql(&format!(
        "INSERT INTO {table} (customer, amount) SELECT 'new', g FROM generate_series(1, 500) g"
    ));
    let out = run_example();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming from checkpoint"));
    let len = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "XLEN", &stream])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&len.stdout).trim(), "1500");
}

#[test]
fn the_bids_per_auction_example_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = common::unique("bids_per_auction");
    let example = common::root().join("examples/postgres/bids_per_auction.yaml");
    let out = run(&[
        "run",
        &example.to_string_lossy(),
        "--set",
        "sources.bids.config.events=20000",
        "--set",
        &format!("sinks.table.config.table={table}"),
        "--set",
        &format!("checkpoint.storage={}", dir.path().join("state").display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Every bid the window took in (and did not find late) is counted once.
    let summary = stderr(&out);
    let line: Vec<&str> = summary
        .lines()
        .find(|l| l.starts_with("per_auction"))
        .expect("summary line")
        .split_whitespace()
        .collect();
    let (taken, late): (i64, i64) = (line[3].parse().expect("in"), line[6].parse().expect("late"));
    let bids: i64 = psql(&format!("SELECT sum(bids) FROM {table}"))[0]
        .parse()
        .expect("sum");
    assert!(taken > 0);
    assert_eq!(bids, taken - late);
}
