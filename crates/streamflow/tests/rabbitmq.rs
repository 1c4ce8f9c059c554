//! The `rabbitmq` source and sink against the local RabbitMQ
//! (127.0.0.1:5672, guest/guest, started by `.ci/run`): a round trip through
//! a topic exchange; a reader SIGKILLed between receipt and checkpoint gets
//! its unacknowledged messages again and its de-duplication window drops
//! what the checkpoint already covers and what the publisher repeated; a
//! writer SIGKILLed repeatedly loses nothing and repeats ids only with the
//! same rows; a refused message fails the run after its retries, an
//! unroutable one at once; the examples.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{read_jsonl, run, stderr, streamflow, write};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

fn url() -> String {
    std::env::var("STREAMFLOW_AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

/// Runs `work` with a channel to the broker, on a runtime of its own.
fn broker<T>(work: impl AsyncFnOnce(Channel) -> T) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let connection = Connection::connect(&url(), ConnectionProperties::default())
                .await
                .expect("RabbitMQ at 127.0.0.1:5672 (.ci/run starts it)");
            let channel = connection.create_channel().await.expect("channel");
            let out = work(channel).await;
            let _ = connection.close(200, "done".into()).await;
            out
        })
}

/// Declares a durable queue with `arguments`.
fn declare_queue(queue: &str, arguments: FieldTable) {
    broker(async |ch| {
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .expect("declare");
    });
}

fn delete_queue(queue: &str) {
    broker(async |ch| {
        let _ = ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    });
}

/// Publishes `(message id, JSON payload)`s to `queue`, each confirmed.
fn publish(queue: &str, messages: &[(String, serde_json::Value)]) {
    broker(async |ch| {
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let mut confirms = Vec::new();
        for (id, payload) in messages {
            let body = serde_json::to_vec(payload).expect("json");
            let confirm = ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_message_id(id.as_str().into()),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for c in confirms {
            assert!(c.await.expect("confirmation").is_ack());
        }
    });
}

/// Takes every message of `queue` (acknowledged): (message id, payload).
fn drain(queue: &str) -> Vec<(Option<String>, serde_json::Value)> {
    broker(async |ch| {
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "test-drain".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut out = Vec::new();
        // The queue is drained once nothing comes for a while.
        while let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
        {
            let delivery = delivery.expect("delivery");
            out.push((
                delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str().to_string()),
                serde_json::from_slice(&delivery.data).expect("a JSON message"),
            ));
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
        out
    })
}

fn rows(n: i64) -> Vec<(String, serde_json::Value)> {
    (0..n)
        .map(|i| {
            (
                format!("m-{i}"),
                serde_json::json!({"id": i, "name": format!("n{i}")}),
            )
        })
        .collect()
}

/// A flow reading `queue` into exactly-once files under `dir/out`.
fn reader(dir: &std::path::Path, queue: &str, extra: &str) -> String {
    write(
        dir,
        "reader.yaml",
        &format!(
            r#"
name: rabbit-reader
checkpoint: {{interval: 200ms, storage: "{}"}}
sources:
  - name: r
    type: rabbitmq
    config: {{url: "{}", queue: {queue}, schema: {{id: int64, name: string}}{extra}}}
sinks:
  - {{name: out, type: file, input: r, config: {{path: "{}"}}}}
"#,
            dir.join("ckpt").display(),
            url(),
            dir.join("out").display()
        ),
    )
}

#[test]
fn rows_round_trip_through_a_topic_exchange() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = common::unique("orders");
    let queue = common::unique("orders_q");
    broker(async |ch| {
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    });
    let reader = reader(
        dir.path(),
        &queue,
        &format!(", exchange: {exchange}, routing_key: \"orders.#\""),
    );
    let child = streamflow()
        .args(["run", &reader, "--quiet"])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // The reader declares and binds its queue as it starts.
    std::thread::sleep(Duration::from_secs(2));
    let writer = write(
        dir.path(),
        "writer.yaml",
        &format!(
            r#"
name: rabbit-writer
mode: job
sources:
  - {{name: g, type: generator, config: {{count: 3000, batch_size: 100, columns: {{id: "i", name: "concat('n', i)", key: "concat('orders.', i % 3)"}}}}}}
sinks:
  - {{name: out, type: rabbitmq, input: g, config: {{url: "{}", exchange: {exchange}, routing_key: key}}}}
"#,
            url()
        ),
    );
    let out = run(&["run", &writer, "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_jsonl(&dir.path().join("out")).len() < 3000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    common::stop_gracefully(child);
    let rows = read_jsonl(&dir.path().join("out"));
    common::assert_each_once(&common::ids(&rows), 3000);
    let keys: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["_routing_key"].as_str().expect("routing key"))
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["orders.0", "orders.1", "orders.2"]),
        "the routing key column"
    );
    let ids: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["_message_id"].as_str().expect("the sink sets ids"))
        .collect();
    assert_eq!(ids.len(), 3000, "one id per message");
    delete_queue(&queue);
}

#[test]
fn a_killed_reader_gets_its_messages_again_and_repeats_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = common::unique("crash_q");
    declare_queue(&queue, FieldTable::default());
    // 60 000 messages, then the publisher repeats the last 500 (same ids,
    // within the default window of 10 000).
    let mut messages = rows(60_000);
    messages.extend(rows(60_000).split_off(59_500));
    publish(&queue, &messages);
    let flow = reader(dir.path(), &queue, ", bounded: true, batch_size: 500");
    let resumed = common::run_with_kills(&flow, &[1500, 1200, 1200]);
    assert!(resumed >= 1, "a run resumed from a checkpoint");
    let rows = read_jsonl(&dir.path().join("out"));
    // Redelivered messages the restored checkpoint covered, and the
    // publisher's repeats, were dropped: each message once.
    common::assert_each_once(&common::ids(&rows), 60_000);
    assert!(drain(&queue).is_empty(), "everything was acknowledged");
    delete_queue(&queue);
}

#[test]
fn without_a_window_repeats_come_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = common::unique("nodedup_q");
    declare_queue(&queue, FieldTable::default());
    let mut messages = rows(1000);
    messages.extend(rows(100));
    publish(&queue, &messages);
    let flow = reader(dir.path(), &queue, ", bounded: true, dedup_window: 0");
    let out = run(&["run", &flow, "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_jsonl(&dir.path().join("out"));
    assert_eq!(rows.len(), 1100, "at-least-once: the repeats are rows too");
    delete_queue(&queue);
}

#[test]
fn a_killed_writer_loses_nothing_and_repeats_ids_only_with_their_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = common::unique("writer_q");
    let flow = write(
        dir.path(),
        "writer.yaml",
        &format!(
            r#"
name: rabbit-crash-writer
mode: job
checkpoint: {{interval: 200ms, storage: "{}"}}
sources:
  - {{name: g, type: generator, config: {{count: 40000, batch_size: 200, rate: 20000, columns: {{id: "i", name: "concat('n', i)"}}}}}}
sinks:
  - {{name: out, type: rabbitmq, input: g, config: {{url: "{}", queue: {queue}, declare: true}}}}
"#,
            dir.path().join("ckpt").display(),
            url()
        ),
    );
    // The first kill comes after the first checkpoint has surely completed:
    // rows published before any checkpoint holds the run's token get new
    // ids when replayed (documented; a `message_id` column avoids it).
    let resumed = common::run_with_kills(&flow, &[1500, 700, 900]);
    assert!(resumed >= 1, "a run resumed from a checkpoint");
    let messages = drain(&queue);
    let mut by_id = BTreeMap::<String, i64>::new();
    for (message_id, payload) in &messages {
        let id = payload["id"].as_i64().expect("id");
        let message_id = message_id.clone().expect("every message has an id");
        // A repeated message id always carries the same row.
        assert_eq!(*by_id.entry(message_id).or_insert(id), id);
    }
    let unique: BTreeSet<i64> = by_id.values().copied().collect();
    assert_eq!(unique, (0..40_000).collect(), "every row arrived");
    assert_eq!(by_id.len(), 40_000, "one message id per row");
    delete_queue(&queue);
}

#[test]
fn a_message_the_broker_refuses_fails_the_run_after_its_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = common::unique("full_q");
    // A queue of 10 that refuses more (the broker nacks).
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(10));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    declare_queue(&queue, arguments);
    let flow = write(
        dir.path(),
        "full.yaml",
        &format!(
            r#"
name: rabbit-full
mode: job
sources:
  - {{name: g, type: generator, config: {{count: 50, columns: {{id: "i"}}}}}}
sinks:
  - {{name: out, type: rabbitmq, input: g, config: {{url: "{}", queue: {queue}, retry: {{max_attempts: 3, initial_backoff: 50ms}}}}}}
"#,
            url()
        ),
    );
    let out = run(&["run", &flow, "--quiet"]);
    assert!(!out.status.success(), "the run failed");
    assert!(
        stderr(&out).contains("the broker refused message") && stderr(&out).contains("3 times"),
        "{}",
        stderr(&out)
    );
    assert_eq!(drain(&queue).len(), 10);
    delete_queue(&queue);
}

#[test]
fn an_unroutable_message_and_a_missing_queue_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = common::unique("nowhere");
    let flow = write(
        dir.path(),
        "unroutable.yaml",
        &format!(
            r#"
name: rabbit-unroutable
mode: job
sources:
  - {{name: g, type: generator, config: {{count: 5, columns: {{id: "i"}}}}}}
sinks:
  - {{name: out, type: rabbitmq, input: g, config: {{url: "{}", exchange: {exchange}, routing_key: nobody, declare: true}}}}
"#,
            url()
        ),
    );
    let out = run(&["run", &flow, "--quiet"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no queue took a message") && stderr(&out).contains("nobody"),
        "{}",
        stderr(&out)
    );
    let missing = common::unique("missing_q");
    let reader = reader(dir.path(), &missing, ", bounded: true");
    let out = run(&["run", &reader, "--quiet"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("queue '{missing}' (declare: true creates it)")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_settings_are_refused_before_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = write(
        dir.path(),
        "bad.yaml",
        r#"
name: rabbit-bad
sources:
  - {name: a, type: rabbitmq, config: {url: "http://x", queue: q, schema: {id: int64}}}
  - {name: b, type: rabbitmq, config: {url: "amqp://127.0.0.1", schema: {id: int64}}}
  - {name: g, type: generator, config: {count: 5, columns: {id: "i"}}}
sinks:
  - {name: c, type: rabbitmq, input: g, config: {url: "amqp://127.0.0.1", queue: q, exchange: e}}
  - {name: d, type: rabbitmq, input: g, config: {url: "amqp://127.0.0.1", exchange: e, exchange_type: ring}}
  - {name: e, type: rabbitmq, input: g, config: {url: "amqp://127.0.0.1", queue: q, message_id: nope}}
"#,
    );
    let out = streamflow()
        .args(["validate", &flow])
        .output()
        .expect("validate");
    assert!(!out.status.success());
    let text = stderr(&out);
    for expected in [
        "sources[0].config.url: 'http://x' is not an amqp:// or amqps:// url",
        "sources[1].config.queue: name a queue, or an exchange to bind one to",
        "sinks[0].config.exchange: publish to a queue or to an exchange, not both",
        "sinks[1].config.exchange_type: 'ring' is not an exchange type",
        "sinks[2].config.message_id: no column 'nope' in the input",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn the_rabbitmq_examples_run_against_the_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = common::root();
    let example = |name: &str| {
        root.join("examples/connectors")
            .join(name)
            .to_string_lossy()
            .into_owned()
    };
    // A queue of its own, so concurrent runs do not share orders.
    let queue = common::unique("orders");
    let run_example = |name: &str, set: &str| {
        let out = streamflow()
            .current_dir(dir.path())
            .args(["run", &example(name), "--quiet", "--set", set])
            .output()
            .expect("run");
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    };
    run_example(
        "orders_to_rabbitmq.yaml",
        &format!("sinks.out.config.queue={queue}"),
    );
    run_example(
        "rabbitmq_order_totals.yaml",
        &format!("sources.orders.config.queue={queue}"),
    );
    let totals = read_jsonl(&dir.path().join("out/rabbitmq-orders/totals"));
    let orders: i64 = totals
        .iter()
        .map(|r| r["orders"].as_i64().expect("count"))
        .sum();
    assert_eq!(orders, 20_000, "every order counted once");
    // 20 000 orders 10 ms apart: 200 s, 20 windows of 50 customers.
    assert_eq!(totals.len(), 20 * 50);
    delete_queue(&queue);
}
