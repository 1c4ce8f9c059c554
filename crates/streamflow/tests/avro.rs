//! Avro end to end: a third-party producer (confluent-kafka-python's
//! `AvroSerializer`) writes bids to Kafka, registering its schema in
//! `streamflow serve`'s registry and evolving it mid-stream; a flow reads
//! them in the Confluent wire format, windows them and writes Avro that
//! confluent-kafka-python's `AvroDeserializer` reads back.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::server::Server;
use serde_json::Value;

fn brokers() -> String {
    std::env::var("STREAMFLOW_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// Runs `avro_kafka.py args…`; its stdout lines.
fn python(args: &[&str]) -> Vec<String> {
    let script = common::root().join("crates/streamflow/tests/python/avro_kafka.py");
    let out = Command::new(common::python())
        .arg(script)
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "avro_kafka.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn avro_from_a_third_party_producer_through_a_window_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let (input, output) = (common::unique("avro-bids"), common::unique("avro-volume"));
    let (n1, n2) = (600, 400);
    python(&[
        "produce",
        &server.url,
        &brokers(),
        &input,
        &n1.to_string(),
        &n2.to_string(),
    ]);
    // The producer registered v1 then v2 (a field with a default) under <topic>-value.
    let (_, versions) = server.call(
        "GET",
        &format!("/subjects/{input}-value/versions"),
        None,
        &[],
    );
    assert_eq!(versions, serde_json::json!([1, 2]));

    // The flow reads version 1 (the consumer's schema) and so takes v2's
    // records too, without `channel`. The producer's keys spread the bids
    // over the topic's partitions, read interleaved by one instance whose
    // watermark is not per partition yet: the out-of-orderness covers the
    // whole 10 s of data so that no bid is late.
    let flow = format!(
        r#"name: avro-window
mode: job
sources:
  - name: bids
    type: kafka
    dlq: bad
    config: {{brokers: "{brokers}", topic: {input}, format: avro, registry: "{url}", schema: {{version: 1}}, bounded: true}}
    event_time: {{column: date_time, watermark: {{max_out_of_orderness: 15s}}}}
stages:
  - name: volume
    type: window
    input: bids
    key_by: [auction]
    window: {{kind: tumbling, size: 1s}}
    aggregates: {{bids: "count(*)", volume: "sum(price)"}}
  - name: plain
    type: select
    input: volume
    select: {{auction: auction, bids: bids, volume: volume, window_start: "CAST(window_start AS BIGINT)"}}
sinks:
  - name: out
    type: kafka
    input: plain
    config: {{brokers: "{brokers}", topic: {output}, format: avro, registry: "{url}", create: true}}
  - {{name: bad, type: file, config: {{path: "{bad}"}}}}
"#,
        brokers = brokers(),
        url = server.url,
        bad = d.join("bad.jsonl").display(),
    );
    let file = common::write(d, "avro.yaml", &flow);
    let out = common::run(&["run", &file]);
    assert!(out.status.success(), "{}", common::stderr(&out));

    // Two messages no reader can take, each with its reason.
    let bad = common::read_jsonl(&d.join("bad.jsonl"));
    let reasons: Vec<&str> = bad.iter().filter_map(|r| r["error"].as_str()).collect();
    assert_eq!(reasons.len(), 2, "{bad:?}");
    assert!(
        reasons.iter().any(|r| r.contains("wire format")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("999")), "{reasons:?}");

    // Read back by Confluent's deserializer: the windows of all 1000 bids.
    let rows: Vec<Value> = python(&["consume", &server.url, &brokers(), &output])
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    let mut expected: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
    for i in 0..(n1 + n2) as i64 {
        let t = 1_700_000_000_000 + i * 10;
        let e = expected
            .entry((i % 10, t - t.rem_euclid(1000)))
            .or_default();
        e.0 += 1;
        e.1 += 100 + i;
    }
    let got: BTreeMap<(i64, i64), (i64, i64)> = rows
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_i64().unwrap_or_else(|| panic!("{k} in {r}"));
            ((n("auction"), n("window_start")), (n("bids"), n("volume")))
        })
        .collect();
    assert_eq!(got, expected);
    // The sink registered its schema under <output>-value.
    let (code, _) = server.call(
        "GET",
        &format!("/subjects/{output}-value/versions/1"),
        None,
        &[],
    );
    assert_eq!(code, 200);
}

/// `streamflow bench avro`: both decoders read every message of the same
/// bids (the figures themselves are for the notes, not asserted).
#[test]
fn the_avro_bench_decodes_every_bid_with_both_decoders() {
    let records = |decoder: &str| {
        let out = common::run(&[
            "bench",
            "avro",
            "--events",
            "3000",
            "--decoder",
            decoder,
            "--json",
        ]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let r: Value = serde_json::from_slice(&out.stdout).expect("json");
        r["records"].as_u64().expect("records")
    };
    let ours = records("streamflow");
    assert!(ours > 2000, "{ours}");
    assert_eq!(ours, records("apache-avro"));
}

/// JSON Schema in the Confluent wire format: a third-party producer's
/// `JSONSerializer` records read as the subject's schema, summed per
/// customer, written framed with a registered JSON Schema that
/// `JSONDeserializer` validates and reads back.
#[test]
fn json_schema_records_from_a_third_party_producer_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let (input, output) = (common::unique("json-orders"), common::unique("json-totals"));
    let n = 700;
    python(&[
        "produce-json",
        &server.url,
        &brokers(),
        &input,
        &n.to_string(),
    ]);
    let flow = format!(
        r#"name: json-registry
mode: job
sources:
  - name: orders
    type: kafka
    dlq: bad
    config: {{brokers: "{brokers}", topic: {input}, format: json, registry: "{url}", schema: {{subject: {input}-value}}, bounded: true}}
stages:
  - name: per_customer
    type: aggregate
    input: orders
    key_by: [customer]
    aggregates: {{orders: "count(*)", total: "sum(amount)"}}
sinks:
  - name: out
    type: kafka
    input: per_customer
    config: {{brokers: "{brokers}", topic: {output}, format: json, registry: "{url}", schema: {{subject: {output}-value}}, create: true}}
  - {{name: bad, type: file, config: {{path: "{bad}"}}}}
"#,
        brokers = brokers(),
        url = server.url,
        bad = d.join("bad.jsonl").display(),
    );
    let file = common::write(d, "json.yaml", &flow);
    let out = common::run(&["run", &file]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let bad = common::read_jsonl(&d.join("bad.jsonl"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("wire format"),
        "{bad:?}"
    );

    let rows: Vec<Value> = python(&["consume-json", &server.url, &brokers(), &output])
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    // The aggregate's changelog: the last row per customer holds its totals.
    let mut last: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    for r in &rows {
        let c = r["customer"].as_str().expect("customer").to_string();
        last.insert(
            c,
            (
                r["orders"].as_i64().expect("orders"),
                r["total"].as_f64().expect("total"),
            ),
        );
    }
    let mut expected: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    for i in 0..n {
        let e = expected.entry(format!("c{}", i % 7)).or_default();
        e.0 += 1;
        e.1 += f64::from(i) / 4.0;
    }
    assert_eq!(last.len(), expected.len());
    for (c, (orders, total)) in &expected {
        let (o, t) = last[c];
        assert_eq!(o, *orders, "{c}");
        assert!((t - total).abs() < 1e-6, "{c}: {t} vs {total}");
    }
    let (_, schema) = server.call(
        "GET",
        &format!("/subjects/{output}-value/versions/latest"),
        None,
        &[],
    );
    assert_eq!(schema["schemaType"], "JSON", "{schema}");
}

/// The Avro examples: Nexmark bids to Kafka as Avro (the sink registers
/// their schema in `serve`'s registry, named by STREAMFLOW_REGISTRY), then
/// read back and windowed; every bid is counted once.
#[test]
fn the_avro_examples_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let root = common::root();
    let topic = common::unique("bids-avro");
    let run = |example: &str, sets: &[String]| {
        let mut c = common::streamflow();
        c.env("STREAMFLOW_REGISTRY", &server.url)
            .arg("run")
            .arg(root.join("examples/kafka").join(example));
        for s in sets {
            c.args(["--set", s]);
        }
        let out = c.output().expect("run");
        assert!(out.status.success(), "{example}: {}", common::stderr(&out));
        common::stderr(&out)
    };
    run(
        "bids_to_kafka_avro.yaml",
        &[
            "sources.bids.config.events=20000".into(),
            format!("sinks.out.config.brokers={}", brokers()),
            format!("sinks.out.config.topic={topic}"),
            format!("checkpoint.storage={}", d.join("p").display()),
        ],
    );
    let (code, _) = server.call(
        "GET",
        &format!("/subjects/{topic}-value/versions/1"),
        None,
        &[],
    );
    assert_eq!(code, 200, "the sink registered its schema");
    run(
        "avro_bid_windows.yaml",
        &[
            format!("sources.bids.config.brokers={}", brokers()),
            format!("sources.bids.config.topic={topic}"),
            format!("sinks.totals.config.path={}", d.join("totals").display()),
            format!("sinks.bad.config.path={}", d.join("bad.jsonl").display()),
        ],
    );
    let counted: i64 = common::read_jsonl(&d.join("totals"))
        .iter()
        .map(|r| r["bids"].as_i64().expect("bids"))
        .sum();
    // 20 000 Nexmark events hold 92 % bids.
    assert_eq!(counted, 18_400);
    assert!(!d.join("bad.jsonl").exists() || common::read_jsonl(&d.join("bad.jsonl")).is_empty());
}

/// Protobuf in the Confluent wire format: a third-party producer's
/// `ProtobufSerializer` records (scalars, an enum, a Timestamp) read as the
/// subject's first message type, straight off the wire into columns.
#[test]
fn protobuf_records_from_a_third_party_producer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let input = common::unique("pb-orders");
    let n = 500;
    python(&[
        "produce-protobuf",
        &server.url,
        &brokers(),
        &input,
        &n.to_string(),
    ]);
    let output = common::unique("pb-copies");
    let flow = format!(
        r#"name: protobuf-orders
mode: job
sources:
  - name: orders
    type: kafka
    dlq: bad
    config: {{brokers: "{brokers}", topic: {input}, format: protobuf, registry: "{url}", bounded: true}}
stages:
  - {{name: some, type: select, input: orders, select: [id, customer, amount, at]}}
sinks:
  - {{name: out, type: file, input: orders, config: {{path: "{out}"}}}}
  - {{name: copies, type: kafka, input: some, config: {{brokers: "{brokers}", topic: {output}, format: protobuf, registry: "{url}", create: true}}}}
  - {{name: bad, type: file, config: {{path: "{bad}"}}}}
"#,
        brokers = brokers(),
        url = server.url,
        out = d.join("out.jsonl").display(),
        bad = d.join("bad.jsonl").display(),
    );
    let file = common::write(d, "pb.yaml", &flow);
    let out = common::run(&["run", &file]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let bad = common::read_jsonl(&d.join("bad.jsonl"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    let mut rows = common::read_jsonl(&d.join("out.jsonl"));
    rows.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(rows.len(), n);
    for (i, r) in rows.iter().enumerate() {
        let i = i as i64;
        assert_eq!(r["id"], i, "{r}");
        assert_eq!(r["customer"], format!("c{}", i % 7), "{r}");
        assert_eq!(r["amount"].as_f64(), Some(i as f64 / 4.0), "{r}");
        assert_eq!(
            r["status"],
            ["NEW", "PAID", "SHIPPED"][(i % 3) as usize],
            "{r}"
        );
        let ms = 1_700_000_000_000 + i * 1000 + i % 1000;
        let at = r["at"].as_str().expect("at");
        let (seconds, fraction) = at.split_once('.').unwrap_or((at, "0"));
        let millis: i64 = format!("{:0<3}", fraction.trim_end_matches('Z'))[..3]
            .parse()
            .expect("millis");
        assert_eq!(
            (seconds.to_string(), millis),
            (chrono_like(ms), ms % 1000),
            "{at}"
        );
    }
    // The copies, written as Protobuf with a derived message type, read
    // back by Confluent's ProtobufDeserializer.
    let mut copies: Vec<Value> = python(&["consume-protobuf", &server.url, &brokers(), &output])
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    // Protobuf's JSON form writes int64 as strings, and leaves out zeros.
    let id = |r: &Value| {
        r["id"]
            .as_str()
            .map_or(0, |s| s.parse::<i64>().expect("id"))
    };
    copies.sort_by_key(id);
    assert_eq!(copies.len(), n);
    for (i, r) in copies.iter().enumerate() {
        let i = i as i64;
        assert_eq!(id(r), i, "{r}");
        assert_eq!(r["customer"], format!("c{}", i % 7), "{r}");
        assert_eq!(r["amount"].as_f64().unwrap_or(0.0), i as f64 / 4.0, "{r}");
        let at = r["at"].as_str().expect("at");
        assert!(
            at.starts_with(&chrono_like(1_700_000_000_000 + i * 1000 + i % 1000)),
            "{at}"
        );
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of milliseconds since the epoch (UTC).
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `streamflow bench protobuf`: both decoders read every message of the
/// same bids (the figures are for the notes, not asserted).
#[test]
fn the_protobuf_bench_decodes_every_bid_with_both_decoders() {
    let records = |decoder: &str| {
        let out = common::run(&[
            "bench",
            "protobuf",
            "--events",
            "3000",
            "--decoder",
            decoder,
            "--json",
        ]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let r: Value = serde_json::from_slice(&out.stdout).expect("json");
        r["records"].as_u64().expect("records")
    };
    let ours = records("streamflow");
    assert!(ours > 2000, "{ours}");
    assert_eq!(ours, records("prost-reflect"));
}
