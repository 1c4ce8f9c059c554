//! Channels between processes found through the local NATS server
//! (127.0.0.1:4222), each end on its own connection as two workers would
//! be, both ways: relayed by the server, and direct over TCP; and a
//! pipeline split over two engines that talk only through them.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use streamflow_cluster::{DirectExchange, NatsTransport};
use streamflow_core::{CheckpointBarrier, Message, Watermark};
use streamflow_runtime::{ChannelId, Pipeline, Placement, RecoveryOptions, Transport};
use tokio::sync::mpsc::channel;

const NATS: &str = "nats://127.0.0.1:4222";

async fn connect() -> async_nats::Client {
    async_nats::connect(NATS)
        .await
        .expect("the local NATS server on 4222 (.ci/run starts it)")
}

fn prefix(test: &str) -> String {
    format!("streamflow-test.{test}.{}", std::process::id())
}

fn batch(first: i64, rows: usize, width: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(first..first + rows as i64)),
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("{i:0width$}")),
            )),
        ],
    )
    .expect("batch")
}

/// How the channel under test travels.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    Relay,
    Direct,
}

/// A consumer's transport: listening for direct channels on loopback, or not.
async fn consumer(prefix: &str, window: u32, way: Way) -> NatsTransport {
    let transport = NatsTransport::new(connect().await, prefix, window);
    match way {
        Way::Relay => transport,
        Way::Direct => transport.direct(
            DirectExchange::bind("127.0.0.1:0".parse().expect("addr"), "127.0.0.1")
                .await
                .expect("listen"),
        ),
    }
}

const CHANNEL: ChannelId = ChannelId {
    producer: 0,
    producer_instance: 1,
    consumer: 2,
    consumer_instance: 0,
    input: 0,
};

#[tokio::test]
async fn relayed_messages_cross_in_order_with_batches_larger_than_a_payload() {
    messages_cross_in_order(Way::Relay).await;
}

#[tokio::test]
async fn direct_messages_cross_in_order_with_large_batches() {
    messages_cross_in_order(Way::Direct).await;
}

async fn messages_cross_in_order(way: Way) {
    let a = connect().await;
    let max_payload = a.server_info().max_payload;
    let prefix = prefix(&format!("order-{way:?}"));
    let sending = NatsTransport::new(a, prefix.clone(), 4);
    let receiving = consumer(&prefix, 4, way).await;
    let (to_bridge, from_producer) = channel(2);
    let (to_consumer, mut received) = channel(2);
    // The producer's side starts first: it waits for the consumer.
    let out = tokio::spawn(sending.outbound(CHANNEL, from_producer));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let inb = tokio::spawn(receiving.inbound(CHANNEL, to_consumer));

    // A batch of several payloads, then small ones between control messages.
    let big = batch(0, 40_000, 80);
    assert!(big.get_array_memory_size() > 2 * max_payload);
    let mut sent = vec![Message::Data(big)];
    for i in 0..50 {
        sent.push(Message::Data(batch(i * 100, 100, 8)));
        sent.push(Message::Watermark(Watermark(i)));
        if i % 10 == 0 {
            sent.push(Message::Barrier(CheckpointBarrier {
                id: i as u64,
                timestamp_ms: 7,
                is_final: false,
            }));
            sent.push(Message::Idle);
        }
    }
    sent.push(Message::EndOfStream);
    let producer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for m in sent {
                to_bridge.send(m).await.expect("send");
            }
        })
    };
    let mut got = Vec::new();
    while let Some(m) = received.recv().await {
        got.push(m);
    }
    producer.await.expect("producer");
    out.await.expect("join").expect("outbound");
    inb.await.expect("join").expect("inbound");
    // Data may be coalesced into fewer batches and a watermark may move
    // later past data (superseded ones dropped), but the rows, and every
    // barrier, idle marker and end, keep their order and places, and the
    // last watermark before each of them is the one sent.
    let (sent_shape, got_shape) = (shape(&sent), shape(&got));
    assert_eq!(got_shape.rows, sent_shape.rows, "the rows differ");
    assert_eq!(got_shape.controls, sent_shape.controls);
    for (rows, w) in &got_shape.watermarks {
        assert!(
            sent_shape
                .watermarks
                .iter()
                .any(|(before, sent)| sent == w && before <= rows),
            "watermark {w} arrived before rows it was sent after"
        );
    }
    assert!(
        got.len() < sent.len(),
        "nothing was coalesced ({} messages)",
        got.len()
    );
}

/// What a channel must keep of a message sequence.
struct Shape {
    /// Every data row, in order (`id` column).
    rows: Vec<i64>,
    /// Each barrier, idle marker and end with the rows before it and the
    /// last watermark before it.
    controls: Vec<(usize, String, Option<i64>)>,
    /// Each watermark with the rows before it.
    watermarks: Vec<(usize, i64)>,
}

fn shape(messages: &[Message]) -> Shape {
    let mut s = Shape {
        rows: Vec::new(),
        controls: Vec::new(),
        watermarks: Vec::new(),
    };
    let mut last = None;
    for m in messages {
        match m {
            Message::Data(b) => s.rows.extend(
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("id column")
                    .values()
                    .iter()
                    .copied(),
            ),
            Message::Watermark(w) => {
                last = Some(w.0);
                s.watermarks.push((s.rows.len(), w.0));
            }
            other => s.controls.push((s.rows.len(), format!("{other:?}"), last)),
        }
    }
    s
}

#[tokio::test]
async fn a_consumer_that_does_not_take_holds_up_its_relayed_producer() {
    // Queue of 1 at each end, `window` frames in flight, one in each
    // bridge's hands; a frame holds up to 9 of these batches (coalesced
    // up to 8192 rows).
    let window = 4;
    holds_up_the_producer(Way::Relay, 1 + (i64::from(window) + 1 + 2) * 9).await;
}

#[tokio::test]
async fn a_consumer_that_does_not_take_holds_up_its_direct_producer() {
    // What the two sockets' kernel buffers (1 MiB asked, doubled by Linux)
    // and the two 64 KiB user buffers hold, at 28 000 bytes of data a
    // batch at least; plus a queue of 1 at each end and a coalesced
    // frame of up to 9 batches in each bridge's hands.
    let in_flight = 2 * 2 * (1 << 20) + 2 * 64 * 1024;
    holds_up_the_producer(Way::Direct, 1 + in_flight / 28_000 + 2 * 9).await;
}

async fn holds_up_the_producer(way: Way, bound: i64) {
    let prefix = prefix(&format!("backpressure-{way:?}"));
    let window = 4;
    let (to_bridge, from_producer) = channel(1);
    let (to_consumer, mut received) = channel(1);
    let out = tokio::spawn(
        NatsTransport::new(connect().await, prefix.clone(), window)
            .outbound(CHANNEL, from_producer),
    );
    let inb = tokio::spawn(
        consumer(&prefix, window, way)
            .await
            .inbound(CHANNEL, to_consumer),
    );
    let mut accepted = 0;
    // Nobody reads `received`: the producer can hand over only what fits in
    // the queues and the window, however long it tries.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(
            Duration::from_millis(100),
            to_bridge.send(Message::Data(batch(accepted, 1000, 16))),
        )
        .await
        {
            Ok(sent) => {
                sent.expect("send");
                accepted += 1;
            }
            Err(_) => continue,
        }
    }
    assert!(
        accepted <= bound,
        "the producer handed over {accepted} batches with nobody reading (bound {bound})"
    );
    assert!(accepted >= 3, "only {accepted} batches went through");
    // Once the consumer reads, everything comes through.
    let producer = tokio::spawn(async move {
        for i in 0..50 {
            to_bridge
                .send(Message::Data(batch(10_000 + i, 1000, 16)))
                .await
                .expect("send");
        }
        to_bridge.send(Message::EndOfStream).await.expect("end");
    });
    let mut rows = 0;
    while let Some(m) = received.recv().await {
        if let Message::Data(b) = m {
            rows += b.num_rows() as i64;
        }
    }
    producer.await.expect("producer");
    out.await.expect("join").expect("outbound");
    inb.await.expect("join").expect("inbound");
    assert_eq!(rows, (accepted + 50) * 1000);
}

#[tokio::test]
async fn a_producer_without_consumer_gives_up_with_the_channel_named() {
    // Not the whole minute: the error path is the same after any wait, so
    // this only checks that the producer keeps waiting meanwhile.
    let a = connect().await;
    let (_to_bridge, from_producer) = channel(1);
    let out = NatsTransport::new(a, prefix("alone"), 4).outbound(CHANNEL, from_producer);
    let waited = tokio::time::timeout(Duration::from_millis(500), out).await;
    assert!(
        waited.is_err(),
        "the producer did not wait for its consumer"
    );
}

#[tokio::test]
async fn a_direct_producer_nobody_waits_for_is_refused() {
    let exchange = DirectExchange::bind("127.0.0.1:0".parse().expect("addr"), "127.0.0.1")
        .await
        .expect("listen");
    let mut stream = tokio::net::TcpStream::connect(exchange.address())
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = b"streamflow.c.flow.1.0.0.1.0.0";
    stream
        .write_all(&(key.len() as u16).to_le_bytes())
        .await
        .expect("write");
    stream.write_all(key).await.expect("write");
    assert_eq!(stream.read_u8().await.expect("answer"), 0, "accepted");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("closed");
    assert!(rest.is_empty());
}

/// The keyed windows of Nexmark q5 over two engines: sources, window
/// instances and the sink spread over both, every keyed channel between
/// them crossing processes: direct into the first engine, relayed by NATS
/// into the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_split_over_two_engines_gives_the_single_process_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = |out: &std::path::Path| {
        format!(
            r#"
name: q5-split
mode: job
sources:
  - name: bids
    type: nexmark
    parallelism: 2
    config: {{events: 60000, table: bid, batch_size: 1000}}
    event_time: {{column: date_time, watermark: {{max_out_of_orderness: 0s}}}}
stages:
  - name: q5
    type: window
    input: bids
    parallelism: 2
    key_by: [auction]
    window: {{kind: sliding, size: 10s, slide: 2s}}
    aggregates: {{num: "count(*)"}}
sinks:
  - name: out
    type: file
    input: q5
    config: {{path: {}}}
"#,
            out.display()
        )
    };
    let plan = |out: &std::path::Path| {
        let spec =
            streamflow_dsl::parse_str(&flow(out), streamflow_dsl::FileFormat::Yaml).expect("flow");
        Pipeline::from_spec(&spec).expect("valid")
    };
    let single = dir.path().join("single");
    let alone = plan(&single)
        .start()
        .await
        .expect("start")
        .wait()
        .await
        .expect("single-process run");

    let split = dir.path().join("split");
    let pipeline = plan(&split);
    let prefix = prefix("pipeline");
    // Node indexes in the plan: bids 0, q5 1, out 2.
    let index = |name: &str| {
        pipeline
            .plan()
            .graph
            .nodes
            .iter()
            .position(|n| n.name == name)
            .expect("node")
    };
    let (bids, q5, out) = (index("bids"), index("q5"), index("out"));
    let first = Placement::new(
        [(bids, 0), (q5, 1), (out, 0)],
        Arc::new(consumer(&prefix, 8, Way::Direct).await),
    );
    let second = Placement::new(
        [(bids, 1), (q5, 0)],
        Arc::new(consumer(&prefix, 8, Way::Relay).await),
    );
    let options = RecoveryOptions::default();
    let a = pipeline
        .start_placed(&options, Some(&first))
        .await
        .expect("first");
    let b = pipeline
        .start_placed(&options, Some(&second))
        .await
        .expect("second");
    let (ra, rb) = tokio::join!(a.wait(), b.wait());
    let (ra, rb) = (ra.expect("first engine"), rb.expect("second engine"));
    // Bids are 92 % of Nexmark's events; each engine ran one of the two
    // source instances.
    assert_eq!(alone.source_records(), 55_200);
    assert!(ra.source_records() > 0 && rb.source_records() > 0);
    assert_eq!(ra.source_records() + rb.source_records(), 55_200);

    let rows = |d: &std::path::Path| {
        let mut rows: Vec<String> = std::fs::read_dir(d)
            .expect("output")
            .flat_map(|f| {
                std::fs::read_to_string(f.expect("entry").path())
                    .expect("read")
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        rows.sort();
        rows
    };
    let (expected, got) = (rows(&single), rows(&split));
    assert!(expected.len() > 1000, "only {} windows", expected.len());
    assert_eq!(got, expected);
}
