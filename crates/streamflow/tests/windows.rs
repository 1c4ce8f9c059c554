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
