//! The `mysql` sink and source against the local MariaDB (127.0.0.1:3306,
//! root without a password, database `test`, started by `.ci/run`): append
//! with every type, upsert of window results and of a changelog,
//! exactly-once through SIGKILLs with checkpoints, a table read
//! incrementally with a rerun going on after it, clear errors, the example.

mod common;

use common::{read_jsonl, run, stderr, write};

const URL: &str = "mysql://root@127.0.0.1:3306/test";

/// Runs SQL with the mariadb client; rows as tab-separated lines.
fn sql(statement: &str) -> Vec<String> {
    let out = std::process::Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-u",
            "root",
            "test",
            "-N",
            "-B",
            "-e",
            statement,
        ])
        .output()
        .expect("the mariadb client runs");
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
fn generated_rows_are_appended_and_read_back_with_their_types() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = common::unique("typed");
    let writer = write(
        dir.path(),
        "writer.yaml",
        &format!(
            "name: t\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 1000, columns: {{id: i, name: \"concat('it''s ', i)\", amount: \"i / 4.0\", ok: \"i % 2 = 0\", at: \"to_timestamp_millis(1767225600000 + i)\"}}}}}}\nsinks:\n  - {{name: db, type: mysql, input: g, config: {{url: '{URL}', table: {table}}}}}\n"
        ),
    );
    let out = run(&["run", &writer]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sql(&format!(
            "SELECT count(*), sum(amount), sum(ok), max(name), max(at) FROM {table}"
        )),
        vec!["1000\t124875\t500\tit's 999\t2026-01-01 00:00:00.999000"]
    );
    // Read back: the types come from the server's description.
    let reader = write(
        dir.path(),
        "reader.yaml",
        &format!(
            "name: r\nmode: job\nsources:\n  - {{name: db, type: mysql, config: {{url: '{URL}', table: {table}, batch_size: 300}}}}\nsinks:\n  - {{name: f, type: file, input: db, config: {{path: '{}'}}}}\n",
            dir.path().join("out").display()
        ),
    );
    let out = run(&["run", &reader]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_jsonl(&dir.path().join("out"));
    common::assert_each_once(&common::ids(&rows), 1000);
    let row = rows.iter().find(|r| r["id"] == 4).expect("row 4");
    assert_eq!(row["amount"], 1.0);
    assert_eq!(row["ok"], 1);
    assert_eq!(row["name"], "it's 4");
    assert_eq!(row["at"], "2026-01-01T00:00:00.004");
}

#[test]
fn window_results_are_upserted_by_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = common::unique("windows");
    let flow = write(
        dir.path(),
        "flow.yaml",
        &format!(
            "name: t\nmode: job\nsources:\n  - name: bids\n    type: nexmark\n    config: {{events: 20000, table: bid}}\n    event_time: {{column: date_time, watermark: {{max_out_of_orderness: 1s}}}}\nstages:\n  - {{name: w, type: window, input: bids, key_by: [auction], window: {{kind: tumbling, size: 10s}}, aggregates: {{bids: \"count(*)\", top: \"max(price)\"}}}}\nsinks:\n  - {{name: db, type: mysql, input: w, config: {{url: '{URL}', table: {table}, mode: upsert, key: [auction, window_start]}}}}\n  - {{name: f, type: file, input: w, config: {{path: '{}'}}}}\n",
            dir.path().join("out").display()
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut expected: Vec<String> = read_jsonl(&dir.path().join("out"))
        .iter()
        .map(|r| format!("{}\t{}\t{}", r["auction"], r["bids"], r["top"]))
        .collect();
    expected.sort();
    let mut got = sql(&format!("SELECT auction, bids, top FROM {table}"));
    got.sort();
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
}

#[test]
fn a_changelog_is_applied_as_upserts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = common::unique("changelog");
    let flow = write(
        dir.path(),
        "flow.yaml",
        &format!(
            "name: t\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 5000, batch_size: 100, columns: {{k: \"i % 10\", v: i}}}}}}\nstages:\n  - {{name: totals, type: aggregate, input: g, key_by: [k], aggregates: {{n: \"count(*)\", s: \"sum(v)\"}}}}\nsinks:\n  - {{name: db, type: mysql, input: totals, config: {{url: '{URL}', table: {table}, mode: upsert, key: [k]}}}}\n"
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected: Vec<String> = (0..10)
        .map(|k| {
            let s: i64 = (0..5000).filter(|i| i % 10 == k).sum();
            format!("{k}\t500\t{s}")
        })
        .collect();
    assert_eq!(
        sql(&format!("SELECT k, n, s FROM {table} ORDER BY k")),
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
            "name: eo\nmode: job\ncheckpoint: {{interval: 30ms, storage: '{}'}}\nsources:\n  - {{name: in, type: generator, config: {{count: 40000, batch_size: 20, rate: 40000, columns: {{id: i, name: \"concat('n', i)\"}}}}}}\nsinks:\n  - {{name: db, type: mysql, input: in, config: {{url: '{URL}', table: {table}}}}}\n",
            d.join("state").display()
        ),
    );
    let resumed = common::run_with_kills(&flow, &[250, 400, 300, 500, 350]);
    assert!(resumed > 0, "a restart resumed from a checkpoint");
    assert_eq!(
        sql(&format!(
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {table}"
        )),
        vec!["40000\t40000\t0\t39999"]
    );
}

#[test]
fn a_table_is_read_incrementally_and_a_rerun_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let table = common::unique("orders");
    sql(&format!(
        "CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer VARCHAR(20), amount DECIMAL(10,2), created DATETIME(6)); INSERT INTO {table} (customer, amount, created) SELECT concat('c', seq % 10), seq / 10, '2026-01-01' + INTERVAL seq SECOND FROM seq_1_to_1000"
    ));
    let flow = write(
        d,
        "reader.yaml",
        &format!(
            "name: inc\nmode: job\ncheckpoint: {{interval: 1s, storage: '{}'}}\nsources:\n  - {{name: orders, type: mysql, config: {{url: '{URL}', table: {table}, incremental_column: id, bounded: true, batch_size: 300}}}}\nsinks:\n  - {{name: f, type: file, input: orders, config: {{path: '{}'}}}}\n",
            d.join("state").display(),
            d.join("out").display()
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_jsonl(&d.join("out")).len(), 1000);
    sql(&format!(
        "INSERT INTO {table} (customer, amount, created) SELECT 'new', seq, '2026-02-01' FROM seq_1_to_500"
    ));
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming from checkpoint"));
    let rows = read_jsonl(&d.join("out"));
    // Auto-increment ids may leave gaps between bulk inserts: compare with
    // the table's own.
    let mut ids = common::ids(&rows);
    ids.sort_unstable();
    let table_ids: Vec<i64> = sql(&format!("SELECT id FROM {table} ORDER BY id"))
        .iter()
        .map(|i| i.parse().expect("an id"))
        .collect();
    assert_eq!(table_ids.len(), 1500);
    assert_eq!(ids, table_ids, "every row once");
    let row = rows.iter().find(|r| r["id"] == 25).expect("row 25");
    assert_eq!(row["amount"], 2.5);
    assert_eq!(row["created"], "2026-01-01T00:00:25");
}

#[test]
fn bad_settings_and_a_server_that_is_down_are_clear_errors() {
    common::assert_run_fails_with(
        "name: t\nmode: job\nsources:\n  - {name: g, type: generator, config: {count: 1, columns: {id: i}}}\nsinks:\n  - {name: db, type: mysql, input: g, config: {url: 'mysql://root@127.0.0.1:1/test', table: x}}\n",
        "cannot connect to MySQL at 127.0.0.1:1",
    );
    common::assert_run_fails_with(
        &format!(
            "name: t\nmode: job\nsources:\n  - {{name: db, type: mysql, config: {{url: '{URL}', query: 'SELECT nope FROM nowhere_at_all'}}}}\nsinks:\n  - {{name: f, type: stdout, input: db}}\n"
        ),
        "sources[0].config.query:",
    );
    common::assert_run_fails_with(
        "name: t\nmode: job\nsources:\n  - {name: g, type: generator, config: {count: 1, columns: {id: i}}}\nsinks:\n  - {name: db, type: mysql, input: g, config: {url: 'mysql://root@127.0.0.1/test', table: x, mode: upsert}}\n",
        "sinks[0].config.key: upsert needs key columns",
    );
}

#[test]
fn the_mysql_example_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = common::unique("order_totals");
    let example = common::root().join("examples/connectors/order_totals_to_mysql.yaml");
    let out = common::streamflow()
        .current_dir(dir.path())
        .args([
            "run",
            &example.to_string_lossy(),
            "--quiet",
            "--set",
            &format!("sinks.totals.config.table={table}"),
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    // 20 000 orders 10 ms apart: 20 windows of 50 customers, each order once.
    assert_eq!(
        sql(&format!("SELECT count(*), sum(orders) FROM {table}")),
        vec!["1000\t20000"]
    );
}
