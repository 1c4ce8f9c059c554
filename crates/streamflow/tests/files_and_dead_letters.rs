//! File sources and sinks end to end, and dead letters: bad lines and bad
//! rows go to the `dlq` with their reason while good records flow on.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{read_jsonl, run, stderr, stdout, streamflow, write};

#[test]
fn malformed_json_lines_go_to_the_dlq_with_line_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(
        d,
        "in.jsonl",
        "{\"id\": 1, \"name\": \"a\"}\n{\"id\": 2, \"name\": \n{\"id\": 3, \"name\": \"c\"}\nnot json\n\n{\"id\": \"four\", \"name\": \"d\"}\n{\"id\": 5, \"name\": \"e\"}\n",
    );
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: dlq\nmode: job\nsources:\n  - name: raw\n    type: file\n    dlq: bad\n    config: {{path: {in_}, schema: {{id: int64, name: string}}}}\nsinks:\n  - {{name: good, type: file, input: raw, config: {{path: {good}}}}}\n  - {{name: bad, type: file, config: {{path: {bad}}}}}\n",
            in_ = d.join("in.jsonl").display(),
            good = d.join("good.jsonl").display(),
            bad = d.join("bad.jsonl").display(),
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let good: Vec<i64> = read_jsonl(&d.join("good.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(good, vec![1, 3, 5]);
    let bad = read_jsonl(&d.join("bad.jsonl"));
    let lines: Vec<u64> = bad
        .iter()
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, vec![2, 4, 6]);
    assert!(bad.iter().all(
        |r| r["stage"] == "raw" && r["file"].as_str().is_some_and(|f| f.ends_with("in.jsonl"))
    ));
    assert_eq!(bad[1]["payload"], "not json");
    assert!(
        bad.iter()
            .all(|r| !r["error"].as_str().unwrap_or("").is_empty())
    );
    assert!(stderr(&out).contains("raw"), "summary names the source");
}

#[test]
fn without_a_dlq_a_bad_line_fails_with_file_line_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let input = write(d, "in.jsonl", "{\"id\": 1}\n{\"id\": oops}\n");
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: nodlq\nmode: job\nsources: [{{name: raw, type: file, config: {{path: {input}, schema: {{id: int64}}}}}}]\nsinks: [{{name: o, type: blackhole, input: raw}}]\n"
        ),
    );
    let out = run(&["run", &flow]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("in.jsonl:2"), "{err}");
    assert!(err.contains("stage 'raw'"), "{err}");
    assert!(err.contains("set `dlq:`"), "{err}");
}

#[test]
fn nested_json_becomes_struct_columns_and_epoch_millis_become_timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(
        d,
        "events.jsonl",
        "{\"Bid\": {\"price\": 5, \"date_time\": 1700000000000}}\n{\"Bid\": {\"price\": 7, \"date_time\": 1700000001500}}\n",
    );
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: nested\nmode: job\nsources: [{{name: raw, type: file, config: {{path: {p}, timestamps: [Bid.date_time]}}}}]\nstages: [{{name: s, type: select, input: raw, select: {{price: \"Bid.price * 2\", ts: Bid.date_time}}}}]\nsinks: [{{name: o, type: file, input: s, config: {{path: {o}}}}}]\n",
            p = d.join("events.jsonl").display(),
            o = d.join("o.jsonl").display()
        ),
    );
    let v = run(&["validate", &flow]);
    assert!(
        stdout(&v).contains("ts: Timestamp(ms)"),
        "{}{}",
        stdout(&v),
        stderr(&v)
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_jsonl(&d.join("o.jsonl"));
    assert_eq!(rows[0]["price"], 10);
    assert_eq!(rows[1]["price"], 14);
    assert_eq!(rows[0]["ts"], "2023-11-14T22:13:20");
    assert_eq!(rows[1]["ts"], "2023-11-14T22:13:21.500");
}

#[test]
fn csv_with_inferred_schema_and_validate_stage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(
        d,
        "orders.csv",
        "id,amount,country\n1,10.5,FR\n2,abc,DE\n3,-4,FR\n4,8,\n",
    );
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: csv\nmode: job\nsources: [{{name: raw, type: file, config: {{path: {p}}}}}]\nstages:\n  - name: typed\n    type: validate\n    input: raw\n    dlq: rejects\n    schema: {{amount: float64, country: {{type: string, nullable: false}}}}\n    checks: [\"amount >= 0\"]\nsinks:\n  - {{name: o, type: file, input: typed, config: {{path: {o}}}}}\n  - {{name: rejects, type: file, config: {{path: {r}}}}}\n",
            p = d.join("orders.csv").display(),
            o = d.join("o.jsonl").display(),
            r = d.join("r.jsonl").display()
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let good = read_jsonl(&d.join("o.jsonl"));
    assert_eq!(good.len(), 1);
    assert_eq!(good[0]["id"], 1);
    let rejects = read_jsonl(&d.join("r.jsonl"));
    let errors: Vec<&str> = rejects
        .iter()
        .map(|r| r["error"].as_str().expect("error"))
        .collect();
    assert_eq!(
        errors,
        vec![
            "column 'amount': cannot convert 'abc' to Float64",
            "check `amount >= 0` failed",
            "column 'country': null in a non-nullable column"
        ]
    );
    assert!(rejects.iter().all(|r| r["stage"] == "typed"));
}

#[test]
fn expression_errors_dead_letter_the_row_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: rowerr\nmode: job\nsources: [{{name: g, type: generator, config: {{count: 10, columns: {{x: \"i - 5\"}}}}}}]\nstages: [{{name: m, type: map, input: g, dlq: bad, map: {{y: \"100 / x\"}}}}]\nsinks:\n  - {{name: o, type: file, input: m, config: {{path: {o}}}}}\n  - {{name: bad, type: file, config: {{path: {b}}}}}\n",
            o = d.join("o.jsonl").display(),
            b = d.join("b.jsonl").display()
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ys: Vec<i64> = read_jsonl(&d.join("o.jsonl"))
        .iter()
        .map(|r| r["y"].as_i64().expect("y"))
        .collect();
    assert_eq!(ys.len(), 9);
    assert_eq!(ys.iter().filter(|y| **y == 100).count(), 1);
    let bad = read_jsonl(&d.join("b.jsonl"));
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["payload"], "{\"x\":0}");
    assert!(
        bad[0]["error"]
            .as_str()
            .expect("error")
            .contains("Divide by zero")
    );
}

#[test]
fn parquet_round_trip_through_rolling_files_and_globs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let write_flow = write(
        d,
        "w.yaml",
        &format!(
            "name: w\nmode: job\nsources: [{{name: g, type: generator, config: {{count: 50000, batch_size: 5000, columns: {{id: i, name: \"concat('n', i % 7)\"}}}}}}]\nsinks: [{{name: o, type: file, input: g, config: {{path: {p}, format: parquet, max_file_size: 20KB}}}}]\n",
            p = d.join("pq").display()
        ),
    );
    let out = run(&["run", &write_flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let parts = std::fs::read_dir(d.join("pq")).expect("dir").count();
    assert!(
        parts > 1,
        "expected rolling into several files, got {parts}"
    );
    let read_flow = write(
        d,
        "r.yaml",
        &format!(
            "name: r\nmode: job\nsources: [{{name: f, type: file, config: {{path: \"{p}/*.parquet\"}}}}]\nstages: [{{name: s, type: filter, input: f, where: \"name = 'n3'\"}}]\nsinks: [{{name: o, type: file, input: s, config: {{path: {o}}}}}]\n",
            p = d.join("pq").display(),
            o = d.join("o.jsonl").display()
        ),
    );
    let out = run(&["run", &read_flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut ids: Vec<i64> = read_jsonl(&d.join("o.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..50_000).filter(|i| i % 7 == 3).collect::<Vec<_>>());
}

#[test]
fn stdin_to_stdout_with_rename_and_add_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = write(
        dir.path(),
        "flow.yaml",
        "name: pipe\nsources: [{name: in, type: stdin, config: {schema: {a: int64, b: string}}}]\nstages:\n  - {name: r, type: rename, input: in, rename: {b: label}}\n  - {name: t, type: add_column, input: r, add_column: {v: 2}}\nsinks: [{name: out, type: stdout, input: t, config: {format: csv}}]\n",
    );
    let mut child = streamflow()
        .args(["run", &flow, "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"{\"a\": 1, \"b\": \"x\"}\n{\"a\": 2, \"b\": \"y\"}\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "a,label,v\n1,x,2\n2,y,2\n");
}

#[test]
fn add_column_rejects_existing_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = write(
        dir.path(),
        "flow.yaml",
        "name: a\nmode: job\nsources: [{name: g, type: generator, config: {count: 1, columns: {x: i}}}]\nstages: [{name: t, type: add_column, input: g, add_column: {x: 1}}]\nsinks: [{name: o, type: blackhole, input: t}]\n",
    );
    let out = run(&["validate", &flow]);
    assert!(
        stderr(&out).contains("stages[0].add_column.x: column 'x' already exists"),
        "{}",
        stderr(&out)
    );
}
