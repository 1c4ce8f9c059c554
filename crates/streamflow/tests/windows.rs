//! Event-time windows end to end: watermarks from a source's event time,
//! windows firing in order, and late records routed to the `late` sink.

mod common;

use common::{read_jsonl, run, stderr, write};

#[test]
fn late_records_go_to_the_late_output_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Files are read in name order, one batch each: the watermark passes
    // 24.999 s after a.jsonl, so the 2 s record in b.jsonl is late.
    write(
        d,
        "a.jsonl",
        "{\"t\": 1000, \"k\": \"x\", \"v\": 1}\n{\"t\": 25000, \"k\": \"x\", \"v\": 2}\n",
    );
    write(
        d,
        "b.jsonl",
        "{\"t\": 2000, \"k\": \"x\", \"v\": 4}\n{\"t\": 26000, \"k\": \"y\", \"v\": 8}\n{\"t\": 27000, \"k\": \"x\", \"v\": 16}\n",
    );
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: late\nmode: job\nsources:\n  - name: ev\n    type: file\n    config: {{path: \"{glob}\", timestamps: [t]}}\n    event_time: {{column: t}}\nstages:\n  - name: w\n    type: window\n    input: ev\n    key_by: [k]\n    late: too_late\n    window: {{kind: tumbling, size: 10s}}\n    aggregates: {{n: \"count(*)\", total: \"sum(v)\"}}\nsinks:\n  - {{name: out, type: file, input: w, config: {{path: {out}}}}}\n  - {{name: too_late, type: file, config: {{path: {late}}}}}\n",
            glob = d.join("[ab].jsonl").display(),
            out = d.join("out.out.jsonl").display(),
            late = d.join("late.out.jsonl").display(),
        ),
    );
    let result = run(&["run", &flow]);
    assert!(result.status.success(), "{}", stderr(&result));
    let mut windows: Vec<String> = read_jsonl(&d.join("out.out.jsonl"))
        .iter()
        .map(|r| format!("{} {} {} {}", r["window_start"], r["k"], r["n"], r["total"]))
        .collect();
    windows.sort();
    assert_eq!(
        windows,
        vec![
            "\"1970-01-01T00:00:00\" \"x\" 1 1",
            "\"1970-01-01T00:00:20\" \"x\" 2 18",
            "\"1970-01-01T00:00:20\" \"y\" 1 8",
        ]
    );
    let late = read_jsonl(&d.join("late.out.jsonl"));
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["v"], 4);
    assert!(
        stderr(&result).contains("late"),
        "summary shows the late column"
    );
}

#[test]
fn late_output_only_on_window_stages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = write(
        dir.path(),
        "flow.yaml",
        "name: l\nmode: job\nsources: [{name: g, type: generator, config: {count: 1, columns: {x: i}}}]\nstages: [{name: f, type: filter, input: g, where: 'x > 0', late: l}]\nsinks: [{name: o, type: blackhole, input: f}, {name: l, type: blackhole}]\n",
    );
    let out = run(&["validate", &flow]);
    assert!(
        stderr(&out).contains("stages[0].late: filter stages have no late records"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dedup_keeps_the_first_record_per_key_within_the_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: dedup\nmode: job\nsources:\n  - name: g\n    type: generator\n    config: {{count: 10, columns: {{i: i, k: \"i % 3\", t: \"to_timestamp_millis(i * 1000)\"}}}}\n    event_time: {{column: t}}\nstages:\n  - {{name: first, type: dedup, input: g, key_by: [k], ttl: 5s}}\nsinks:\n  - {{name: out, type: file, input: first, config: {{path: {out}}}}}\n",
            out = d.join("out.jsonl").display()
        ),
    );
    let result = run(&["run", &flow]);
    assert!(result.status.success(), "{}", stderr(&result));
    let kept: Vec<i64> = read_jsonl(&d.join("out.jsonl"))
        .iter()
        .map(|r| r["i"].as_i64().expect("i"))
        .collect();
    // k=0: 0 kept, 3 within 5 s, 6 starts anew, 9 within; k=1: 1, 7; k=2: 2, 8.
    assert_eq!(kept, vec![0, 1, 2, 6, 7, 8]);
}

#[test]
fn allowed_lateness_reemits_updated_results_as_a_changelog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(
        d,
        "a.jsonl",
        "{\"t\": 1000, \"k\": \"x\", \"v\": 1}\n{\"t\": 25000, \"k\": \"x\", \"v\": 2}\n",
    );
    write(
        d,
        "b.jsonl",
        "{\"t\": 2000, \"k\": \"x\", \"v\": 4}\n{\"t\": 3000, \"k\": \"z\", \"v\": 8}\n{\"t\": 45000, \"k\": \"x\", \"v\": 16}\n",
    );
    write(d, "c.jsonl", "{\"t\": 4000, \"k\": \"x\", \"v\": 32}\n");
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: late\nmode: job\nsources:\n  - name: ev\n    type: file\n    config: {{path: \"{glob}\", timestamps: [t]}}\n    event_time: {{column: t}}\nstages:\n  - name: w\n    type: window\n    input: ev\n    key_by: [k]\n    late: too_late\n    window: {{kind: tumbling, size: 10s}}\n    allowed_lateness: 20s\n    aggregates: {{total: \"sum(v)\"}}\nsinks:\n  - {{name: out, type: file, input: w, config: {{path: {out}}}}}\n  - {{name: too_late, type: file, config: {{path: {late}}}}}\n",
            glob = d.join("[abc].jsonl").display(),
            out = d.join("out.out.jsonl").display(),
            late = d.join("late.out.jsonl").display(),
        ),
    );
    let result = run(&["run", &flow]);
    assert!(result.status.success(), "{}", stderr(&result));
    let rows: Vec<String> = read_jsonl(&d.join("out.out.jsonl"))
        .iter()
        .filter(|r| r["window_start"] == "1970-01-01T00:00:00")
        .map(|r| format!("{} {} {}", r["_op"], r["k"], r["total"]))
        .collect();
    // Window [0 s, 10 s) fired at watermark 24.999 s with x = 1; the records
    // at 2 s and 3 s were within the 20 s lateness and updated it; after the
    // watermark passed 44.999 s the record at 4 s was too late.
    assert_eq!(
        rows,
        vec![
            "\"+I\" \"x\" 1",
            "\"-U\" \"x\" 1",
            "\"+U\" \"x\" 5",
            "\"+I\" \"z\" 8"
        ]
    );
    let late = read_jsonl(&d.join("late.out.jsonl"));
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["v"], 32);
}

/// Waits up to a minute for the first line of `rx`.
fn first_line(rx: &std::sync::mpsc::Receiver<String>) -> Option<String> {
    rx.recv_timeout(std::time::Duration::from_secs(60)).ok()
}

#[test]
fn processing_time_windows_fire_on_the_wall_clock_while_input_stays_open() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = write(
        dir.path(),
        "flow.yaml",
        "name: pt\nsources: [{name: in, type: stdin, config: {schema: {k: string}}}]\nstages:\n  - {name: w, type: window, input: in, key_by: [k], time: processing, window: {kind: tumbling, size: 200ms}, aggregates: {n: \"count(*)\"}}\nsinks: [{name: out, type: stdout, input: w}]\n",
    );
    let mut child = common::streamflow()
        .args(["run", &flow, "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(b"{\"k\": \"a\"}\n{\"k\": \"a\"}\n{\"k\": \"a\"}\n")
        .expect("write");
    input.flush().expect("flush");
    let rx = common::lines_of(child.stdout.take().expect("stdout"));
    // Standard input is still open: only the clock can fire the window.
    let line = first_line(&rx);
    drop(input);
    let status = child.wait().expect("wait");
    let line = line.expect("a window result while the input was open");
    let row: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(row["k"], "a");
    assert_eq!(row["n"], 3);
    assert!(status.success());
}

#[test]
fn an_idle_source_stops_holding_back_the_watermark() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `events` keeps producing; `manual` (stdin) stays silent. Windows over
    // their union can only fire once `manual` is marked idle.
    let flow = write(
        dir.path(),
        "flow.yaml",
        "name: idle\nsources:\n  - name: events\n    type: generator\n    config: {rate: 2000, batch_size: 100, columns: {t: \"to_timestamp_millis(1700000000000 + i)\", k: \"'g'\"}}\n    event_time: {column: t}\n  - name: manual\n    type: stdin\n    config: {schema: {t: timestamp, k: string}}\n    event_time: {column: t, watermark: {idle_timeout: 300ms}}\nstages:\n  - {name: all, type: union, input: [events, manual]}\n  - {name: w, type: window, input: all, key_by: [k], window: {kind: tumbling, size: 100ms}, aggregates: {n: \"count(*)\"}}\nsinks: [{name: out, type: stdout, input: w}]\n",
    );
    let mut child = common::streamflow()
        .args(["run", &flow, "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let input = child.stdin.take().expect("stdin");
    let rx = common::lines_of(child.stdout.take().expect("stdout"));
    let line = first_line(&rx);
    let _ = child.kill();
    let _ = child.wait();
    drop(input);
    let line = line.expect("a window result while stdin was open and silent");
    let row: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(row["k"], "g");
    assert_eq!(row["n"], 100, "first 100 ms window of the generator: {row}");
}

#[test]
fn join_rows_behind_the_watermark_go_to_the_late_output_with_their_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // The right side is a small file, read at once; the left side is a
    // generator throttled to 10 rows/s whose last row (2 s) comes half a
    // second later, when both sides are long past 25 s: it is late.
    write(
        d,
        "r.jsonl",
        "{\"rt\": 1500, \"rk\": \"x\", \"w\": 10}\n{\"rt\": 26500, \"rk\": \"x\", \"w\": 20}\n{\"rt\": 30000, \"rk\": \"y\", \"w\": 30}\n",
    );
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: late-join\nmode: job\nsources:\n  - name: l\n    type: generator\n    config:\n      count: 6\n      rate: 10\n      batch_size: 1\n      columns: {{t: \"to_timestamp_millis(CASE i WHEN 0 THEN 1000 WHEN 5 THEN 2000 ELSE 24000 + i * 1000 END)\", k: \"'x'\", v: \"i\"}}\n    event_time: {{column: t}}\n  - name: r\n    type: file\n    config: {{path: \"{right}\", timestamps: [rt]}}\n    event_time: {{column: rt}}\nstages:\n  - name: j\n    type: join\n    input: [l, r]\n    kind: interval\n    on: \"l.k = r.rk\"\n    between: {{lower: 0s, upper: 5s}}\n    late: too_late\nsinks:\n  - {{name: out, type: file, input: j, config: {{path: {out}}}}}\n  - {{name: too_late, type: file, config: {{path: {late}}}}}\n",
            right = d.join("r.jsonl").display(),
            out = d.join("out.out.jsonl").display(),
            late = d.join("late.out.jsonl").display(),
        ),
    );
    let result = run(&["run", &flow]);
    assert!(result.status.success(), "{}", stderr(&result));
    let mut joined: Vec<String> = read_jsonl(&d.join("out.out.jsonl"))
        .iter()
        .map(|r| format!("{}+{}", r["v"], r["w"]))
        .collect();
    joined.sort();
    // 1 s with 1.5 s; 25 s and 26 s with 26.5 s.
    assert_eq!(joined, vec!["0+10", "1+20", "2+20"]);
    let late = read_jsonl(&d.join("late.out.jsonl"));
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["input"], "left");
    let row: serde_json::Value =
        serde_json::from_str(late[0]["row"].as_str().expect("row")).expect("json");
    assert_eq!(row["v"], 5);
    assert!(
        late[0]["event_time"]
            .as_str()
            .expect("time")
            .contains("00:00:02")
    );
}
