//! The `redis` source and sink against the local Redis server
//! (127.0.0.1:6379): round trip, dead letters with their entry ids, and
//! exactly-once through SIGKILLs with checkpoints.

mod common;

use std::path::Path;

use common::{read_jsonl, run, stderr, write};

const URL: &str = "redis://127.0.0.1:6379";

fn redis() -> redis::Connection {
    redis::Client::open(URL)
        .expect("client")
        .get_connection()
        .expect("the local Redis server is running")
}

/// Appends `messages` to `stream` in field `data`.
fn fill(stream: &str, messages: impl Iterator<Item = String>) {
    let mut conn = redis();
    let mut pipe = redis::pipe();
    for m in messages {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("data")
            .arg(m)
            .ignore();
    }
    let _: () = pipe.query(&mut conn).expect("XADD");
}

/// The `data` field of every entry of `stream`, parsed as JSON.
fn entries(stream: &str) -> Vec<serde_json::Value> {
    let mut conn = redis();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("XRANGE");
    reply
        .ids
        .iter()
        .map(|e| {
            let data: String = e.get("data").expect("field data");
            serde_json::from_str(&data).expect("JSON message")
        })
        .collect()
}

#[test]
fn a_stream_round_trips_and_bad_entries_reach_the_dlq_with_their_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (input, output) = (common::unique("in"), common::unique("out"));
    fill(
        &input,
        (0..1000).map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}")),
    );
    fill(&input, ["{\"id\": oops".to_string()].into_iter());
    let mut conn = redis();
    let bad_id: String = redis::cmd("XADD")
        .arg(&input)
        .arg("*")
        .arg("other")
        .arg("x")
        .query(&mut conn)
        .expect("XADD");
    fill(
        &input,
        (1000..1010).map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}")),
    );
    let flow = write(
        d,
        "copy.yaml",
        &format!(
            "name: copy\nmode: job\nsources:\n  - name: in\n    type: redis\n    dlq: bad\n    config: {{url: '{URL}', stream: {input}, bounded: true, batch_size: 64}}\nsinks:\n  - {{name: out, type: redis, input: in, config: {{url: '{URL}', stream: {output}}}}}\n  - {{name: bad, type: file, config: {{path: '{}'}}}}\n",
            d.join("bad.jsonl").display()
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let copied = entries(&output);
    assert_eq!(common::ids(&copied), (0..1010).collect::<Vec<_>>());
    assert!(
        copied
            .iter()
            .all(|r| r["_id"].is_string() && r["name"].is_string())
    );
    let bad = read_jsonl(&d.join("bad.jsonl"));
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0]["file"]
            .as_str()
            .is_some_and(|f| f.starts_with(&format!("{input}/")))
    );
    assert_eq!(bad[1]["file"], format!("{input}/{bad_id}"));
    assert!(
        bad[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no field 'data'"))
    );

    // And back out of Redis into a file.
    let back = write(
        d,
        "back.yaml",
        &format!(
            "name: back\nmode: job\nsources:\n  - {{name: s, type: redis, config: {{url: '{URL}', stream: {output}, bounded: true}}}}\nsinks:\n  - {{name: f, type: file, input: s, config: {{path: '{}'}}}}\n",
            d.join("back.jsonl").display()
        ),
    );
    let out = run(&["run", &back]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        common::ids(&read_jsonl(&d.join("back.jsonl"))),
        (0..1010).collect::<Vec<_>>()
    );
}

#[test]
fn a_server_that_is_down_is_named_in_the_error() {
    common::assert_run_fails_with(
        "name: t\nmode: job\nsources:\n  - {name: s, type: redis, config: {url: 'redis://127.0.0.1:1', stream: x, bounded: true, schema: {id: int64}}}\nsinks:\n  - {name: o, type: blackhole, input: s}\n",
        "cannot connect to Redis at 127.0.0.1:1",
    );
}

fn checkpointed_copy(d: &Path, input: &str, output: &str) -> String {
    write(
        d,
        "flow.yaml",
        &format!(
            "name: eo\nmode: job\ncheckpoint: {{interval: 50ms, storage: '{}'}}\nsources:\n  - {{name: in, type: redis, config: {{url: '{URL}', stream: {input}, bounded: true, batch_size: 50}}}}\nstages:\n  - {{name: keep, type: select, input: in, select: {{id: id, name: name}}}}\nsinks:\n  - {{name: out, type: redis, input: keep, config: {{url: '{URL}', stream: {output}}}}}\n",
            d.join("state").display()
        ),
    )
}

#[test]
fn sigkills_leave_exactly_the_rows_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, output) = (common::unique("eo-in"), common::unique("eo-out"));
    let n = 60_000;
    fill(
        &input,
        (0..n).map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}")),
    );
    let flow = checkpointed_copy(dir.path(), &input, &output);
    let resumed = common::run_with_kills(&flow, &[300, 450, 350, 600, 500]);
    assert!(resumed > 0, "a restart resumed from a checkpoint");
    common::assert_each_once(&common::ids(&entries(&output)), n);
    // The group acknowledged everything: nothing is left pending.
    let mut conn = redis();
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(&input)
        .arg("streamflow-in")
        .query(&mut conn)
        .expect("XPENDING");
    assert_eq!(pending.count(), 0);
}

#[test]
fn the_redis_examples_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let stream = common::unique("example");
    let root = common::root();
    let produce = root.join("examples/redis/produce.yaml");
    let consume = root.join("examples/redis/consume.yaml");
    let out = run(&[
        "run",
        &produce.to_string_lossy(),
        "--set",
        "sources.orders.config.count=5000",
        "--set",
        &format!("sinks.out.config.stream={stream}"),
        "--set",
        &format!("checkpoint.storage={}", d.join("state").display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let totals = d.join("totals");
    let out = run(&[
        "run",
        &consume.to_string_lossy(),
        "--set",
        &format!("sources.orders.config.stream={stream}"),
        "--set",
        &format!("sinks.totals.config.path={}", totals.display()),
        "--set",
        &format!("sinks.bad.config.path={}", d.join("bad.jsonl").display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_jsonl(&totals);
    // Every order is counted once across the windows.
    let counted: i64 = rows
        .iter()
        .map(|r| r["orders"].as_i64().expect("count"))
        .sum();
    assert_eq!(counted, 5000);
}
