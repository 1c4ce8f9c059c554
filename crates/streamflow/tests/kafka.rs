//! The `kafka` source and sink against a local Kafka-protocol broker
//! (`STREAMFLOW_KAFKA_BROKERS`, default 127.0.0.1:19092: the tansu broker
//! `.ci/run` starts): round trip through a partitioned topic keyed by a
//! column, group offsets, dead letters with topic/partition/offset, a source
//! killed at random moments resuming exactly, and the sink's transactions
//! through SIGKILLs.

mod common;

use std::time::Duration;

use common::{read_jsonl, run, stderr, write};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn brokers() -> String {
    std::env::var("STREAMFLOW_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// One record as an independent client reads it.
#[derive(Debug)]
struct Record {
    partition: i32,
    key: Option<String>,
    value: serde_json::Value,
}

/// Every record of `topic`, read with librdkafka directly at `isolation`
/// until the end of every partition.
fn read_topic(topic: &str, isolation: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", common::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut records = Vec::new();
    let mut ended = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ended.len() < partitions as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => records.push(Record {
                partition: m.partition(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: serde_json::from_slice(m.payload().unwrap_or_default())
                    .expect("a JSON message"),
            }),
        }
    }
    records
}

/// Whether the broker keeps from `read_committed` readers the records of a
/// transaction that a crashed producer left open and its successor (same
/// transactional id) aborted by fencing — what a restarted sink relies on.
/// Kafka does; tansu 0.6 does not (it hides explicit aborts only).
fn broker_hides_fenced_transactions() -> bool {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let topic = common::unique("fence-probe");
    let id = common::unique("probe");
    let timeout = Duration::from_secs(10);
    create_topic(&topic, 1);
    let producer = || -> ThreadedProducer<DefaultProducerContext> {
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("transactional.id", &id)
            .create()
            .expect("producer");
        p.init_transactions(timeout).expect("init");
        p.begin_transaction().expect("begin");
        p
    };
    let crashed = producer();
    crashed
        .send(BaseRecord::<(), _>::to(&topic).payload("{\"crashed\": 1}"))
        .map_err(|(e, _)| e)
        .expect("send");
    crashed.flush(timeout).expect("flush");
    // Gone without a word, as a killed process is.
    std::mem::forget(crashed);
    let successor = producer();
    successor
        .send(BaseRecord::<(), _>::to(&topic).payload("{\"committed\": 1}"))
        .map_err(|(e, _)| e)
        .expect("send");
    successor.commit_transaction(timeout).expect("commit");
    let seen = read_topic(&topic, "read_committed");
    assert!(seen.iter().any(|r| r.value["committed"] == 1), "{seen:?}");
    !seen.iter().any(|r| r.value["crashed"] == 1)
}

/// A job flow writing `count` generated rows (`id`, `name`) to `topic`,
/// at `rate` rows/s when given, with the flow-level settings `extra`.
fn produce(d: &std::path::Path, topic: &str, count: u64, rate: Option<u64>, extra: &str) -> String {
    let rate = rate.map_or(String::new(), |r| format!(", rate: {r}"));
    write(
        d,
        "produce.yaml",
        &format!(
            "name: p\nmode: job\n{extra}sources:\n  - {{name: g, type: generator, config: {{count: {count}, batch_size: 20{rate}, columns: {{id: i, name: \"concat('n', i)\"}}}}}}\nsinks:\n  - {{name: out, type: kafka, input: g, config: {{brokers: '{}', topic: {topic}, key: id, create: true, partitions: 3}}}}\n",
            brokers()
        ),
    )
}

/// A bounded flow copying `topic` to `<name>.jsonl` (dead letters to `<name>-bad.jsonl`).
fn copy_flow(d: &std::path::Path, topic: &str, name: &str, extra: &str) -> String {
    write(
        d,
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\nmode: job\n{extra}sources:\n  - name: s\n    type: kafka\n    parallelism: 2\n    dlq: bad\n    config: {{brokers: '{}', topic: {topic}, group: {name}, bounded: true, batch_size: 50, schema: {{id: int64, name: string}}}}\nsinks:\n  - {{name: f, type: file, input: s, config: {{path: '{}'}}}}\n  - {{name: bad, type: file, config: {{path: '{}'}}}}\n",
            brokers(),
            d.join(format!("{name}.jsonl")).display(),
            d.join(format!("{name}-bad.jsonl")).display()
        ),
    )
}

#[test]
fn rows_round_trip_through_a_keyed_partitioned_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let topic = common::unique("rt");
    let out = run(&["run", &produce(d, &topic, 3000, None, "")]);
    assert!(out.status.success(), "{}", stderr(&out));
    // What another client sees: every row once, keyed by id, a key always
    // in the same partition, all partitions used.
    let records = read_topic(&topic, "read_committed");
    let ids: Vec<i64> = records
        .iter()
        .map(|r| r.value["id"].as_i64().expect("id"))
        .collect();
    common::assert_each_once(&ids, 3000);
    assert!(
        records
            .iter()
            .all(|r| r.key.as_deref() == Some(r.value["id"].to_string().as_str()))
    );
    let used: std::collections::BTreeSet<i32> = records.iter().map(|r| r.partition).collect();
    assert_eq!(used.len(), 3, "{used:?}");

    // StreamFlow reads it back with two instances splitting the partitions.
    let flow = copy_flow(d, &topic, "back", "");
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_jsonl(&d.join("back.jsonl"));
    common::assert_each_once(&common::ids(&rows), 3000);
    for r in &rows {
        assert_eq!(r["_key"], r["id"].to_string());
        let p = r["_partition"].as_i64().expect("partition");
        assert!((0..3).contains(&p));
        assert!(r["_offset"].as_i64().expect("offset") >= 0);
        assert!(r["_timestamp"].is_string());
    }
    // The group committed its offsets: the same group finds nothing new.
    std::fs::remove_file(d.join("back.jsonl")).expect("remove");
    let again = run(&["run", &flow]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(read_jsonl(&d.join("back.jsonl")).is_empty());

    // Without a declared schema, JSON is inferred from the first messages.
    let inferred = write(
        d,
        "inferred.yaml",
        &format!(
            "name: i\nmode: job\nsources:\n  - {{name: s, type: kafka, config: {{brokers: '{}', topic: {topic}, bounded: true}}}}\nsinks:\n  - {{name: o, type: blackhole, input: s}}\n",
            brokers()
        ),
    );
    let out = run(&["validate", &inferred]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = common::stdout(&out) + &stderr(&out);
    assert!(
        text.contains("id: Int64")
            && text.contains("name: Utf8")
            && text.contains("_offset: Int64"),
        "{text}"
    );
}

#[test]
fn malformed_messages_reach_the_dlq_with_topic_partition_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let topic = common::unique("bad");
    let flow = write(
        d,
        "produce.yaml",
        &format!(
            "name: p\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 3, columns: {{value: \"CASE WHEN i = 1 THEN '{{\\\"id\\\": oops' ELSE concat('{{\\\"id\\\": ', i, ', \\\"name\\\": \\\"x\\\"}}') END\"}}}}}}\nsinks:\n  - {{name: out, type: kafka, input: g, config: {{brokers: '{}', topic: {topic}, create: true, format: string}}}}\n",
            brokers()
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["run", &copy_flow(d, &topic, "reader", "")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        common::ids(&read_jsonl(&d.join("reader.jsonl"))),
        vec![0, 2]
    );
    let bad = read_jsonl(&d.join("reader-bad.jsonl"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["file"], format!("{topic}/0/1"));
    assert_eq!(bad[0]["payload"], "{\"id\": oops");
}

#[test]
fn a_source_killed_at_random_moments_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let topic = common::unique("src");
    let out = run(&["run", &produce(d, &topic, 20_000, None, "")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let flow = copy_flow(
        d,
        &topic,
        "copy",
        &format!(
            "checkpoint: {{interval: 30ms, storage: '{}'}}\n",
            d.join("state").display()
        ),
    );
    let resumed = common::run_with_kills(&flow, &[300, 450, 350]);
    assert!(resumed > 0, "a restart resumed from a checkpoint");
    common::assert_each_once(&common::ids(&read_jsonl(&d.join("copy.jsonl"))), 20_000);
}

/// The sink's transactions through SIGKILLs: a `read_committed` reader
/// sees each row exactly once on a broker that hides the transactions a
/// restart aborts by fencing. tansu 0.6 hands those records to
/// `read_committed` readers (the probe shows it), so there the test checks
/// that no row is lost.
#[test]
fn sigkills_lose_nothing_and_commit_each_checkpoint_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let topic = common::unique("eo");
    let flow = produce(
        d,
        &topic,
        30_000,
        Some(15_000),
        &format!(
            "checkpoint: {{interval: 30ms, storage: '{}'}}\n",
            d.join("state").display()
        ),
    );
    let resumed = common::run_with_kills(&flow, &[1000, 1300, 1100]);
    assert!(resumed > 0, "a restart resumed from a checkpoint");
    let ids: Vec<i64> = read_topic(&topic, "read_committed")
        .iter()
        .map(|r| r.value["id"].as_i64().expect("id"))
        .collect();
    if broker_hides_fenced_transactions() {
        common::assert_each_once(&ids, 30_000);
    } else {
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique, (0..30_000).collect::<Vec<_>>(), "no row lost");
    }
}

#[test]
fn a_broker_that_is_down_is_named_in_the_error() {
    common::assert_run_fails_with(
        "name: t\nmode: job\nsources:\n  - {name: g, type: generator, config: {count: 1, columns: {id: i}}}\nsinks:\n  - {name: k, type: kafka, input: g, config: {brokers: '127.0.0.1:1', topic: x}}\n",
        "cannot connect to Kafka at 127.0.0.1:1",
    );
}

#[test]
fn nexmark_bids_through_kafka_into_postgres_upserts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let topic = common::unique("bids");
    let table = topic.replace('-', "_");
    let root = common::root();
    let produce = run(&[
        "run",
        &root
            .join("examples/kafka/bids_to_kafka.yaml")
            .to_string_lossy(),
        "--set",
        "sources.bids.config.events=20000",
        "--set",
        &format!("sinks.out.config.brokers={}", brokers()),
        "--set",
        &format!("sinks.out.config.topic={topic}"),
        "--set",
        &format!("checkpoint.storage={}", d.join("p").display()),
    ]);
    assert!(produce.status.success(), "{}", stderr(&produce));
    let produced: usize = stderr(&produce)
        .lines()
        .find(|l| l.starts_with("bids "))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|n| n.parse().ok())
        .expect("records out of the source");
    assert_eq!(read_topic(&topic, "read_committed").len(), produced);
    let consume = run(&[
        "run",
        &root
            .join("examples/kafka/bids_windows_to_postgres.yaml")
            .to_string_lossy(),
        "--set",
        &format!("sources.bids.config.brokers={}", brokers()),
        "--set",
        &format!("sources.bids.config.topic={topic}"),
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
    let (taken, late): (usize, usize) = (
        window[3].parse().expect("in"),
        window[6].parse().expect("late"),
    );
    assert_eq!(taken, produced, "every produced bid was read");
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
    let counted: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("sum");
    assert_eq!(counted, taken - late);
}

/// Creates `topic` with `partitions` partitions.
fn create_topic(topic: &str, partitions: i32) {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .expect("admin");
    let created = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(admin.create_topics(
            [&rdkafka::admin::NewTopic::new(
                topic,
                partitions,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        ))
        .expect("create topic");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
}

/// One source instance reads two partitions, each in event-time order but
/// the second read long after the first (it arrives whole after the
/// first): its watermark follows the slower partition, so no record is
/// late and every window counts all of its records.
#[test]
fn a_partition_read_behind_another_is_not_made_late() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = common::unique("lagging");
    create_topic(&topic, 2);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "50")
        .create()
        .expect("producer");
    let per_partition = 4000i64;
    for p in 0..2 {
        for i in 0..per_partition {
            let payload = format!("{{\"t\": {}, \"p\": {p}}}", 1_700_000_000_000 + i * 1000);
            loop {
                match producer.send(
                    BaseRecord::<(), _>::to(&topic)
                        .partition(p)
                        .payload(&payload),
                ) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        _,
                    )) => {
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => panic!("send: {e}"),
                }
            }
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
    }
    let flow = write(
        dir.path(),
        "lagging.yaml",
        &format!(
            "name: lagging\nmode: job\nsources:\n  - name: s\n    type: kafka\n    config: {{brokers: '{}', topic: {topic}, group: lagging, bounded: true, schema: {{t: int64, p: int64}}}}\n    event_time: {{column: t, watermark: {{max_out_of_orderness: 1ms}}}}\nstages:\n  - {{name: w, type: window, input: s, key_by: [p], window: {{kind: tumbling, size: 100s}}, aggregates: {{n: \"count(*)\"}}}}\nsinks:\n  - {{name: f, type: file, input: w, config: {{path: '{}'}}}}\n",
            brokers(),
            dir.path().join("counts.jsonl").display()
        ),
    );
    let out = run(&["run", &flow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let counts = read_jsonl(&dir.path().join("counts.jsonl"));
    let total: i64 = counts.iter().map(|r| r["n"].as_i64().expect("n")).sum();
    assert_eq!(total, 2 * per_partition, "no record was dropped as late");
    assert_eq!(counts.len(), 2 * 40, "40 windows of 100 s per partition");
}

#[test]
fn the_kafka_order_examples_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let topic = common::unique("orders");
    let root = common::root();
    let out = run(&[
        "run",
        &root.join("examples/kafka/produce.yaml").to_string_lossy(),
        "--set",
        "sources.orders.config.count=5000",
        "--set",
        &format!("sinks.out.config.brokers={}", brokers()),
        "--set",
        &format!("sinks.out.config.topic={topic}"),
        "--set",
        &format!("checkpoint.storage={}", d.join("state").display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Keyed by customer: each customer's orders are in one partition.
    let mut partition_of = std::collections::BTreeMap::new();
    for r in read_topic(&topic, "read_committed") {
        let customer = r.value["customer"].as_str().expect("customer").to_string();
        assert_eq!(r.key.as_deref(), Some(customer.as_str()));
        assert_eq!(
            *partition_of.entry(customer).or_insert(r.partition),
            r.partition
        );
    }
    assert_eq!(partition_of.len(), 1000);
    let totals = d.join("totals");
    let out = run(&[
        "run",
        &root.join("examples/kafka/consume.yaml").to_string_lossy(),
        "--set",
        &format!("sources.orders.config.brokers={}", brokers()),
        "--set",
        &format!("sources.orders.config.topic={topic}"),
        "--set",
        &format!("sinks.totals.config.path={}", totals.display()),
        "--set",
        &format!("sinks.bad.config.path={}", d.join("bad.jsonl").display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let counted: i64 = read_jsonl(&totals)
        .iter()
        .map(|r| r["orders"].as_i64().expect("count"))
        .sum();
    assert_eq!(counted, 5000);
}
