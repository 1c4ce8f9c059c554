//! The `nats` source and sink against the local NATS server with JetStream
//! (127.0.0.1:4222): round trip through a stream, dead letters with their
//! stream sequence, and exactly-once through SIGKILLs with checkpoints.

mod common;

use common::{read_jsonl, run, stderr, write};

const URL: &str = "nats://127.0.0.1:4222";

/// Copies stream `stream` to the JSON-lines file `out` (a bounded read).
fn read_back(d: &std::path::Path, stream: &str, name: &str) -> Vec<serde_json::Value> {
    let out = d.join(format!("{name}.jsonl"));
    let flow = write(
        d,
        &format!("{name}.yaml"),
        &format!(
            "name: back\nmode: job\nsources:\n  - name: s\n    type: nats\n    dlq: bad\n    config: {{url: '{URL}', stream: {stream}, consumer: {name}, bounded: true, schema: {{id: int64, name: string}}}}\nsinks:\n  - {{name: f, type: file, input: s, config: {{path: '{}'}}}}\n  - {{name: bad, type: file, config: {{path: '{}'}}}}\n",
            out.display(),
            d.join(format!("{name}-bad.jsonl")).display()
        ),
    );
    let run = run(&["run", &flow]);
    assert!(run.status.success(), "{}", stderr(&run));
    read_jsonl(&out)
}

#[test]
fn rows_round_trip_through_a_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let stream = common::unique("RT");
    let flow = write(
        d,
        "produce.yaml",
        &format!(
            "name: p\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 3000, columns: {{id: i, name: \"concat('n', i)\"}}}}}}\nsinks:\n  - {{name: out, type: nats, input: g, config: {{url: '{URL}', stream: {stream}, subject: {stream}.rows, create: true}}}}\n"
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_back(d, &stream, "reader");
    assert_eq!(common::ids(&rows), (0..3000).collect::<Vec<_>>());
    assert!(
        rows.iter()
            .all(|r| r["_subject"] == format!("{stream}.rows"))
    );
    assert_eq!(rows[0]["_sequence"], 1);
    // Without a declared schema, it is inferred from the first messages.
    let inferred = write(
        d,
        "inferred.yaml",
        &format!(
            "name: i\nmode: job\nsources:\n  - {{name: s, type: nats, config: {{url: '{URL}', stream: {stream}, consumer: inferred, bounded: true}}}}\nsinks:\n  - {{name: o, type: blackhole, input: s}}\n"
        ),
    );
    let out = run(&["validate", &inferred]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = common::stdout(&out) + &stderr(&out);
    assert!(
        text.contains("id: Int64") && text.contains("name: Utf8"),
        "{text}"
    );
}

#[test]
fn sigkills_leave_exactly_the_rows_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let stream = common::unique("EO");
    let flow = write(
        d,
        "flow.yaml",
        &format!(
            "name: eo\nmode: job\ncheckpoint: {{interval: 30ms, storage: '{}'}}\nsources:\n  - {{name: g, type: generator, config: {{count: 30000, batch_size: 20, rate: 30000, columns: {{id: i, name: \"concat('n', i)\"}}}}}}\nsinks:\n  - {{name: out, type: nats, input: g, config: {{url: '{URL}', stream: {stream}, subject: {stream}.rows, create: true}}}}\n",
            d.join("state").display()
        ),
    );
    let resumed = common::run_with_kills(&flow, &[250, 400, 300]);
    assert!(resumed > 0, "a restart resumed from a checkpoint");
    common::assert_each_once(&common::ids(&read_back(d, &stream, "check")), 30_000);
}

#[test]
fn a_source_killed_at_random_moments_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let stream = common::unique("SRC");
    let fill = write(
        d,
        "fill.yaml",
        &format!(
            "name: f\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 20000, columns: {{id: i, name: \"concat('n', i)\"}}}}}}\nsinks:\n  - {{name: out, type: nats, input: g, config: {{url: '{URL}', stream: {stream}, subject: {stream}.rows, create: true}}}}\n"
        ),
    );
    assert!(run(&["run", &fill]).status.success());
    let out = d.join("out");
    let flow = write(
        d,
        "copy.yaml",
        &format!(
            "name: c\nmode: job\ncheckpoint: {{interval: 30ms, storage: '{}'}}\nsources:\n  - {{name: s, type: nats, config: {{url: '{URL}', stream: {stream}, bounded: true, batch_size: 20, schema: {{id: int64, name: string}}}}}}\nsinks:\n  - {{name: f, type: file, input: s, config: {{path: '{}'}}}}\n",
            d.join("state").display(),
            out.display()
        ),
    );
    let resumed = common::run_with_kills(&flow, &[300, 450, 350]);
    assert!(resumed > 0);
    let mut got = common::ids(&read_jsonl(&out));
    got.sort_unstable();
    assert_eq!(got, (0..20_000).collect::<Vec<_>>());
}

#[test]
fn a_server_that_is_down_is_named_in_the_error() {
    common::assert_run_fails_with(
        "name: t\nmode: job\nsources:\n  - {name: g, type: generator, config: {count: 1, columns: {id: i}}}\nsinks:\n  - {name: n, type: nats, input: g, config: {url: 'nats://127.0.0.1:1', subject: x}}\n",
        "cannot connect to NATS at nats://127.0.0.1:1",
    );
}

#[test]
fn malformed_messages_reach_the_dlq_with_their_sequence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let stream = common::unique("BAD");
    // Raw text messages: two good JSON objects around a broken one.
    let flow = write(
        d,
        "produce.yaml",
        &format!(
            "name: p\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 3, columns: {{value: \"CASE WHEN i = 1 THEN '{{\\\"id\\\": oops' ELSE concat('{{\\\"id\\\": ', i, ', \\\"name\\\": \\\"x\\\"}}') END\"}}}}}}\nsinks:\n  - {{name: out, type: nats, input: g, config: {{url: '{URL}', stream: {stream}, subject: {stream}.raw, create: true, format: string}}}}\n"
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_back(d, &stream, "reader");
    assert_eq!(common::ids(&rows), vec![0, 2]);
    let bad = read_jsonl(&d.join("reader-bad.jsonl"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["file"], format!("{stream}/2"));
    assert_eq!(bad[0]["payload"], "{\"id\": oops");
}

#[test]
fn nexmark_bids_through_nats_into_postgres_upserts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let stream = common::unique("BIDS");
    let table = stream.to_lowercase();
    let root = common::root();
    let produce = run(&[
        "run",
        &root
            .join("examples/nats/bids_to_nats.yaml")
            .to_string_lossy(),
        "--set",
        "sources.bids.config.events=20000",
        "--set",
        &format!("sinks.out.config.stream={stream}"),
        "--set",
        &format!("sinks.out.config.subject={stream}.bids"),
        "--set",
        &format!("checkpoint.storage={}", d.join("p").display()),
    ]);
    assert!(produce.status.success(), "{}", stderr(&produce));
    let published: i64 = stderr(&produce)
        .lines()
        .find(|l| l.starts_with("bids "))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|n| n.parse().ok())
        .expect("records out of the source");
    let consume = run(&[
        "run",
        &root
            .join("examples/nats/bids_windows_to_postgres.yaml")
            .to_string_lossy(),
        "--set",
        &format!("sources.bids.config.stream={stream}"),
        "--set",
        &format!("sinks.table.config.table={table}"),
        "--set",
        &format!("sinks.bad.config.path={}", d.join("bad.jsonl").display()),
        "--set",
        &format!("checkpoint.storage={}", d.join("c").display()),
    ]);
    assert!(consume.status.success(), "{}", stderr(&consume));
    let summary = stderr(&consume);
    let window: Vec<&str> = summary
        .lines()
        .find(|l| l.starts_with("per_auction"))
        .expect("summary")
        .split_whitespace()
        .collect();
    let (taken, late): (i64, i64) = (
        window[3].parse().expect("in"),
        window[6].parse().expect("late"),
    );
    assert_eq!(taken, published, "every published bid was read");
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
        ])
        .arg(format!("SELECT sum(bids) FROM {table}"))
        .output()
        .expect("psql");
    let counted: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("sum");
    assert_eq!(counted, taken - late);
}
