//! The `mqtt` source and sink against the local Mosquitto (127.0.0.1:1883,
//! started by `.ci/run`): a round trip through a topic tree, and a source
//! killed between receiving messages and checkpointing them, whose
//! persistent session gets them delivered again.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{read_jsonl, stderr, streamflow, write};

fn broker() -> String {
    std::env::var("STREAMFLOW_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

/// A streaming flow reading `filter` into exactly-once files under `out`.
fn reader(dir: &std::path::Path, filter: &str, client: &str, interval: &str) -> String {
    write(
        dir,
        "reader.yaml",
        &format!(
            r#"
name: mqtt-reader
checkpoint: {{interval: {interval}, storage: "{}"}}
sources:
  - name: m
    type: mqtt
    config: {{url: "{}", topic: "{filter}", qos: 1, client_id: {client}, schema: {{id: int64, name: string}}}}
sinks:
  - {{name: out, type: file, input: m, config: {{path: "{}"}}}}
"#,
            dir.join("ckpt").display(),
            broker(),
            dir.join("out").display()
        ),
    )
}

/// A job publishing `count` rows (`id`, `name`) to the topic the SQL
/// expression `topic` gives each row (a column of the rows), at 3000 rows/s:
/// a broker drops QoS 1 messages it cannot queue for a subscriber that lags
/// (Mosquitto keeps 1000), which a loaded test machine can make this reader.
fn writer(dir: &std::path::Path, from: i64, count: i64, topic: &str) -> String {
    write(
        dir,
        "writer.yaml",
        &format!(
            r#"
name: mqtt-writer
mode: job
sources:
  - {{name: g, type: generator, config: {{count: {count}, batch_size: 100, rate: 3000, columns: {{id: "i + {from}", name: "concat('n', i)", topic: "{topic}"}}}}}}
sinks:
  - {{name: out, type: mqtt, input: g, config: {{url: "{}", topic: topic, qos: 1}}}}
"#,
            broker()
        ),
    )
}

fn start(flow: &str) -> Child {
    streamflow()
        .args(["run", flow, "--quiet"])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn")
}

/// Ids in the reader's output, once `want` rows are there (or the time is up).
fn ids_when(dir: &std::path::Path, want: usize) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = read_jsonl(&dir.join("out"));
        if rows.len() >= want || Instant::now() > deadline {
            return rows.iter().map(|r| r["id"].as_i64().expect("id")).collect();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the writer job; it must succeed.
fn publish(flow: &str) {
    let out = streamflow()
        .args(["run", flow, "--quiet"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn rows_round_trip_through_a_topic_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = common::unique("mqtt");
    let client = common::unique("reader");
    let reader = reader(dir.path(), &format!("{root}/+/events"), &client, "300ms");
    let child = start(&reader);
    // The subscription is made when the reader starts; give it a moment.
    std::thread::sleep(Duration::from_secs(2));
    // Rows to two topics that match the filter, by a column.
    publish(&writer(
        dir.path(),
        0,
        3000,
        &format!("concat('{root}/', i % 2, '/events')"),
    ));
    let ids = ids_when(dir.path(), 3000);
    common::stop_gracefully(child);
    common::assert_each_once(&ids, 3000);
    let topics: std::collections::BTreeSet<String> = read_jsonl(&dir.path().join("out"))
        .iter()
        .map(|r| r["_topic"].as_str().expect("topic").to_string())
        .collect();
    assert_eq!(topics.len(), 2, "{topics:?}");
}

#[test]
fn messages_received_but_not_checkpointed_are_delivered_again_after_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = common::unique("mqtt-crash");
    let client = common::unique("crash-reader");
    // Checkpoints far apart: the kill comes after receipt, before any checkpoint.
    let slow = reader(dir.path(), &topic, &client, "30s");
    let mut child = start(&slow);
    std::thread::sleep(Duration::from_secs(2));
    publish(&writer(dir.path(), 0, 500, &format!("'{topic}'")));
    std::thread::sleep(Duration::from_secs(1));
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(
        read_jsonl(&dir.path().join("out")).is_empty(),
        "nothing was checkpointed"
    );
    // Restarted with the same client id and frequent checkpoints: the
    // persistent session delivers the unacknowledged messages again.
    let fast = reader(dir.path(), &topic, &client, "300ms");
    let child = start(&fast);
    let ids = ids_when(dir.path(), 500);
    common::stop_gracefully(child);
    let mut unique: Vec<i64> = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique,
        (0..500).collect::<Vec<_>>(),
        "every message arrived (at least once)"
    );
}

#[test]
fn the_mqtt_examples_run_against_the_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = common::root();
    let example = |name: &str| {
        root.join("examples/connectors")
            .join(name)
            .to_string_lossy()
            .into_owned()
    };
    // A prefix of its own, so concurrent runs do not see each other's readings.
    let prefix = common::unique("sensors");
    let client = format!(
        "sources.readings.config.client_id={}",
        common::unique("windows")
    );
    let filter = format!("sources.readings.config.topic={prefix}/+/temp");
    let consumer = streamflow()
        .current_dir(dir.path())
        .args([
            "run",
            &example("mqtt_readings_windows.yaml"),
            "--quiet",
            "--set",
            &client,
            "--set",
            &filter,
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_secs(2));
    let topic =
        format!("sources.readings.config.columns.topic=concat('{prefix}/s', i % 10, '/temp')");
    let out = streamflow()
        .current_dir(dir.path())
        .args([
            "run",
            &example("readings_to_mqtt.yaml"),
            "--quiet",
            "--set",
            &topic,
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    // 20 000 readings 10 ms apart: 200 s of event time, 20 windows per sensor;
    // the last windows close when the consumer stops.
    let deadline = Instant::now() + Duration::from_secs(60);
    let averages = dir.path().join("out/mqtt-readings/averages");
    while Instant::now() < deadline && read_jsonl(&averages).len() < 150 {
        std::thread::sleep(Duration::from_millis(300));
    }
    common::stop_gracefully(consumer);
    let rows = read_jsonl(&averages);
    let readings: i64 = rows
        .iter()
        .map(|r| r["readings"].as_i64().expect("count"))
        .sum();
    assert!(
        readings >= 15_000,
        "{readings} readings in {} windows",
        rows.len()
    );
    assert!(rows.iter().all(|r| {
        r["mean"]
            .as_f64()
            .is_some_and(|m| (20.0..33.0).contains(&m))
    }));
}
