//! The durable log end to end through the CLI: `streamflow log …` against a
//! local store and against `serve`'s `/streamz` with scoped JWTs; a
//! producer killed mid-write; pipelines handing data over through the log
//! with exactly-once, killed at random moments.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::server::Server;
use common::{read_jsonl, stderr, stdout, streamflow, write};
use serde_json::Value;

/// `streamflow log ARGS` against the store `target` names (`--path DIR` or
/// `--server URL ...`); must succeed; its stdout lines as JSON.
fn log(target: &[&str], args: &[&str]) -> Vec<Value> {
    let out = streamflow()
        .arg("log")
        .args(target)
        .args(args)
        .output()
        .expect("run");
    assert!(out.status.success(), "log {args:?}: {}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.to_string())))
        .collect()
}

fn seqs(entries: &[Value]) -> Vec<u64> {
    entries
        .iter()
        .map(|e| e["sequence"].as_u64().expect("sequence"))
        .collect()
}

/// The operations of the issue, through the CLI, on one store.
fn exercise(target: &[&str], dir: &Path) {
    assert!(
        log(target, &["spaces"]).is_empty(),
        "a fresh store lists no spaces"
    );
    let lines: String = (1..=10).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let file = write(dir, "ten.jsonl", &lines);
    let acks = log(target, &["produce", "s", "a", &file, "--chunk", "4"]);
    let lasts: Vec<u64> = acks
        .iter()
        .map(|s| s["last_sequence"].as_u64().expect("last"))
        .collect();
    assert_eq!(lasts, [4, 8, 10], "one status per durable chunk");
    let read = |from: &str, to: &str| {
        seqs(&log(
            target,
            &["consume", "s", "a", "--from", from, "--to", to],
        ))
    };
    assert_eq!(read("0", "0"), (1..=10).collect::<Vec<_>>());
    assert_eq!(read("3", "3"), [3]);
    assert_eq!(read("3", "5"), [3, 4, 5]);
    assert!(read("11", "0").is_empty());
    assert_eq!(read("9", "15"), [9, 10]);
    let one = log(
        target,
        &["consume", "s", "a", "--from", "7", "--limit", "1"],
    );
    assert_eq!(one[0]["payload"], serde_json::json!({"n": 7}));
    assert_eq!(log(target, &["peek", "s", "a"])[0]["last_sequence"], 10);
    let absent = log(target, &["peek", "s", "nope"]);
    assert_eq!(
        (
            absent[0]["last_sequence"].as_u64(),
            absent[0]["segment"].as_str()
        ),
        (Some(0), Some("nope"))
    );
    // A second segment, then the space in write order, resumed by offset.
    let two = write(dir, "two.jsonl", "{\"n\":\"x\"}\n{\"n\":\"y\"}\n");
    log(target, &["produce", "s", "b", &two]);
    assert_eq!(
        log(target, &["segments", "s"]),
        [Value::from("a"), Value::from("b")]
    );
    let space = log(target, &["consume", "s", "--from", "10"]);
    let seen: Vec<(String, u64)> = space
        .iter()
        .map(|e| {
            (
                e["segment"].as_str().expect("segment").to_string(),
                e["offset"].as_u64().expect("offset"),
            )
        })
        .collect();
    assert_eq!(seen, [("a".into(), 10), ("b".into(), 11), ("b".into(), 12)]);
    // Not JSON: refused with the line, nothing written.
    let bad = write(dir, "bad.jsonl", "{\"n\":1}\nnot json\n");
    let out = streamflow()
        .arg("log")
        .args(target)
        .args(["produce", "s", "c", &bad])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("line 2: not JSON"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_cli_on_a_local_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    exercise(&["--path", &store.to_string_lossy()], dir.path());
}

#[test]
fn the_cli_on_a_server_with_scoped_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "a log secret";
    let server = Server::start(&dir.path().join("server"), &["--log-secret", secret]);
    let token = |stores: &str| {
        let out = streamflow()
            .args(["log", "token", "--stores", stores, "--ttl", "1h"])
            .env("STREAMFLOW_LOG_SECRET", secret)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let mine = token("orders");
    exercise(
        &[
            "--server",
            &server.url,
            "--store",
            "orders",
            "--token",
            &mine,
        ],
        dir.path(),
    );
    // Another store than the token's: refused, per operation.
    let out = streamflow()
        .args([
            "log",
            "--server",
            &server.url,
            "--store",
            "payments",
            "--token",
            &mine,
            "spaces",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not cover store 'payments'"),
        "{}",
        stderr(&out)
    );
    // No token at all: refused at the door.
    let out = streamflow()
        .args(["log", "--server", &server.url, "spaces"])
        .env_remove("STREAMFLOW_LOG_TOKEN")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    // A token for every store reads what the first wrote.
    let all = token("*");
    let entries = log(
        &[
            "--server",
            &server.url,
            "--store",
            "orders",
            "--token",
            &all,
        ],
        &["consume", "s", "a", "--limit", "2"],
    );
    assert_eq!(seqs(&entries), [1, 2]);
}

#[test]
fn a_killed_producer_loses_no_acknowledged_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let lines: Vec<String> = (0..300_000)
        .map(|i| format!("{{\"i\":{i},\"pad\":\"{:040}\"}}", i))
        .collect();
    let file = write(dir.path(), "input.jsonl", &(lines.join("\n") + "\n"));
    let mut child = streamflow()
        .args([
            "log",
            "--path",
            &store.to_string_lossy(),
            "produce",
            "s",
            "a",
            &file,
            "--chunk",
            "500",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let acks = common::lines_of(child.stdout.take().expect("stdout"));
    let mut acknowledged = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged < 20 * 500 && Instant::now() < deadline {
        let Ok(line) = acks.recv_timeout(Duration::from_secs(30)) else {
            break;
        };
        let status: Value = serde_json::from_str(&line).expect("a status");
        acknowledged = status["last_sequence"].as_u64().expect("last");
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // Statuses printed before the kill, but read only now, were acknowledged too.
    while let Ok(line) = acks.recv_timeout(Duration::from_millis(200)) {
        let status: Value = serde_json::from_str(&line).expect("a status");
        acknowledged = status["last_sequence"].as_u64().expect("last");
    }
    assert!(
        acknowledged >= 20 * 500,
        "the producer acknowledged chunks before the kill"
    );
    let entries = log(
        &["--path", &store.to_string_lossy()],
        &["consume", "s", "a"],
    );
    let n = entries.len() as u64;
    assert!(
        n >= acknowledged,
        "{n} entries, {acknowledged} acknowledged"
    );
    assert_eq!(seqs(&entries), (1..=n).collect::<Vec<_>>(), "contiguous");
    for (e, line) in entries.iter().zip(&lines) {
        assert_eq!(
            e["payload"],
            serde_json::from_str::<Value>(line).expect("json")
        );
    }
    // The segment goes on after the crash.
    let more = write(dir.path(), "more.jsonl", "{\"i\":-1}\n");
    let status = log(
        &["--path", &store.to_string_lossy()],
        &["produce", "s", "a", &more],
    );
    assert_eq!(status[0]["last_sequence"].as_u64(), Some(n + 1));
}

/// Sorted output rows of a file sink directory.
fn rows(dir: &Path) -> Vec<String> {
    let mut rows: Vec<String> = read_jsonl(dir).iter().map(Value::to_string).collect();
    rows.sort();
    rows
}

const WRITER: &str = r#"
name: writer
mode: job
checkpoint: {interval: 300ms, storage: CKPT}
sources:
  - name: bids
    type: nexmark
    config: {events: 150000, table: bid, rate: 60000}
stages:
  - name: laned
    type: map
    input: bids
    map: {lane: "CASE WHEN auction % 3 = 0 THEN 'a' ELSE 'b' END"}
sinks:
  - name: out
    type: log
    input: laned
    config: {url: URL, space: bids, segment: lane}
"#;

const WINDOWS: &str = r#"
name: windows
mode: MODE
checkpoint: {interval: 300ms, storage: CKPT}
sources:
  - name: bids
    type: SOURCE
    config: CONFIG
    event_time: {column: date_time, watermark: {max_out_of_orderness: 30s}}
stages:
  - name: per_auction
    type: window
    input: bids
    key_by: [auction]
    window: {kind: tumbling, size: 2s}
    aggregates: {bids: "count(*)", volume: "sum(price)", lanes: "count(DISTINCT lane)"}
sinks:
  - {name: totals, type: file, input: per_auction, config: {path: OUT}}
"#;

#[test]
fn pipelines_hand_over_through_the_log_exactly_once_across_kills() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"), &[]);
    let ws = server.url.replacen("http://", "ws://", 1);
    let path = |p: &str| dir.path().join(p).to_string_lossy().into_owned();
    // The reference: the same windows straight from the generator, uninterrupted.
    let reference = WINDOWS
        .replace("MODE", "job")
        .replace("CKPT", &path("ref-ckpt"))
        .replace("SOURCE", "nexmark")
        .replace("CONFIG", "{events: 150000, table: bid}")
        .replace("OUT", &path("reference"));
    // The generator's rows have no lane: add it as the writer does.
    let reference = reference.replace(
        "stages:\n",
        "stages:\n  - {name: laned, type: map, input: bids, map: {lane: \"CASE WHEN auction % 3 = 0 THEN 'a' ELSE 'b' END\"}}\n",
    ).replace("    input: bids\n    key_by", "    input: laned\n    key_by");
    let flow = write(dir.path(), "reference.yaml", &reference);
    let out = streamflow()
        .args(["run", &flow, "--quiet"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));

    let writer = write(
        dir.path(),
        "writer.yaml",
        &WRITER
            .replace("CKPT", &path("writer-ckpt"))
            .replace("URL", &format!("\"{ws}\"")),
    );
    let config = format!(
        "{{url: \"{ws}\", space: bids, schema: {{auction: int64, bidder: int64, price: int64, date_time: timestamp, lane: string}}}}"
    );
    let reader = |mode: &str, bounded: bool| {
        let config = if bounded {
            config.replace("space: bids,", "space: bids, bounded: true,")
        } else {
            config.clone()
        };
        write(
            dir.path(),
            &format!("windows-{mode}.yaml"),
            &WINDOWS
                .replace("MODE", mode)
                .replace("CKPT", &path("windows-ckpt"))
                .replace("SOURCE", "log")
                .replace("CONFIG", &config)
                .replace("OUT", &path("windows")),
        )
    };
    // The reader follows the space while the writer runs; both are killed
    // at moments of their own.
    let follower = reader("streaming", false);
    let follow = std::thread::spawn(move || {
        for wait in [900u64, 1_300, 700, 1_600] {
            let mut child = streamflow()
                .args(["run", &follower, "--quiet"])
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            std::thread::sleep(Duration::from_millis(wait));
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    });
    common::run_with_kills(&writer, &[700, 1_100, 900, 1_500, 800]);
    follow.join().expect("follower");
    // Then the reader drains what is there (from its last checkpoint) and ends.
    let drain = reader("job", true);
    common::run_with_kills(&drain, &[]);
    let got = rows(&dir.path().join("windows"));
    let want = rows(&dir.path().join("reference"));
    assert!(!want.is_empty());
    assert_eq!(got.len(), want.len(), "as many windows as uninterrupted");
    assert_eq!(got, want, "the same windows as uninterrupted");
    // Every bid is in the log exactly once, each segment contiguous.
    let entries = log(&["--server", &server.url], &["consume", "bids"]);
    assert_eq!(entries.len(), count_bids(&dir.path().join("reference")));
    for lane in ["a", "b"] {
        let s = seqs(&log(&["--server", &server.url], &["consume", "bids", lane]));
        assert_eq!(
            s,
            (1..=s.len() as u64).collect::<Vec<_>>(),
            "segment {lane} contiguous"
        );
    }
    let _ = std::io::stdout().flush();
}

/// Bids counted by the reference windows.
fn count_bids(dir: &Path) -> usize {
    read_jsonl(dir)
        .iter()
        .map(|r| r["bids"].as_u64().expect("bids") as usize)
        .sum()
}

#[test]
fn the_log_examples_run_one_after_the_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = common::root();
    for example in ["bids_to_log.yaml", "bid_windows_from_log.yaml"] {
        let out = streamflow()
            .current_dir(dir.path())
            .args([
                "run",
                &root.join("examples/log").join(example).to_string_lossy(),
                "--quiet",
            ])
            .output()
            .expect("run");
        assert!(out.status.success(), "{example}: {}", stderr(&out));
    }
    let totals = read_jsonl(&dir.path().join("out/bid-windows-from-log/totals"));
    let bids: u64 = totals
        .iter()
        .map(|r| r["bids"].as_u64().expect("bids"))
        .sum();
    let entries = log(
        &[
            "--path",
            &dir.path().join(".streamflow/log").to_string_lossy(),
        ],
        &["segments", "bids"],
    );
    assert_eq!(entries, [Value::from("even"), Value::from("odd")]);
    // Every bid of the generator went through the log into a window.
    let expected = {
        let out = streamflow()
            .current_dir(dir.path())
            .args(["log", "consume", "bids"])
            .output()
            .expect("run");
        stdout(&out).lines().count() as u64
    };
    assert!(expected > 0);
    assert_eq!(bids, expected);
}

#[test]
fn the_log_bench_reads_back_every_entry_over_both_transports() {
    for transport in ["in-process", "websocket"] {
        let out = streamflow()
            .args([
                "bench",
                "log",
                "--transport",
                transport,
                "--entries",
                "5000",
                "--payload",
                "1000",
                "--json",
            ])
            .output()
            .expect("run");
        assert!(out.status.success(), "{transport}: {}", stderr(&out));
        let result: Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
        for phase in ["produce", "consume_segment", "consume_space"] {
            assert_eq!(result[phase]["entries"], 5000, "{transport} {phase}");
            assert_eq!(result[phase]["bytes"], 5_000_000, "{transport} {phase}");
        }
    }
}

#[test]
fn a_client_reconnects_and_resubscribes_when_the_server_comes_back() {
    use streamflow_log::LogClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("server");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let server = Server::start(&data, &["--listen", &listen]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let log = LogClient::connect(&format!("ws://{listen}"), "default", None)
            .await
            .expect("connect");
        let meta = serde_json::Map::new();
        log.publish("s", "a", b"{}".to_vec(), meta.clone())
            .await
            .expect("publish");
        let mut sub = log.subscribe("s", "a").await.expect("subscribe");
        let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("in time")
            .expect("status");
        assert_eq!(first.last_sequence, 1);
        server.kill();
        let again = tokio::task::spawn_blocking({
            let data = data.clone();
            let listen = listen.clone();
            move || Server::start(&data, &["--listen", &listen])
        })
        .await
        .expect("restart");
        // Calls wait for the connection to come back (or fail, and are retried).
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            match log.publish("s", "a", b"{}".to_vec(), meta.clone()).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    assert!(matches!(e, streamflow_log::LogError::Transport(_)), "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("not back: {e}"),
            }
        };
        assert_eq!(status.last_sequence, 2, "the data survived the restart");
        // The subscription was renewed: it sees the new entry.
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match sub.next().await {
                    Some(s) if s.last_sequence >= 2 => return s.last_sequence,
                    Some(_) => {}
                    None => return 0,
                }
            }
        })
        .await
        .expect("in time");
        assert_eq!(seen, 2);
        again.kill();
    });
}

#[test]
fn bad_log_settings_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = write(
        dir.path(),
        "bad.yaml",
        r#"
name: bad
sources:
  - name: a
    type: log
    config: {space: s, from: middle, schema: {x: int64}}
  - name: b
    type: log
    config: {space: s, path: here, url: "ws://127.0.0.1:1", schema: {x: int64}}
  - name: c
    type: log
    config: {space: s, url: "http://127.0.0.1:1", schema: {x: int64}}
sinks:
  - {name: d, type: log, input: a, config: {space: _staging, segment: x}}
  - {name: e, type: log, input: a, config: {space: t, segment: x, store: other}}
  - {name: f, type: blackhole, input: b}
  - {name: g, type: blackhole, input: c}
"#,
    );
    let out = streamflow()
        .args(["validate", &flow])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let text = stderr(&out) + &stdout(&out);
    for expected in [
        "sources[0].config.from",
        "expected earliest, latest or an offset from 1, got \"middle\"",
        "sources[1].config.path: give `path` (a local store) or `url` (a server), not both",
        "sources[2].config.url: 'http://127.0.0.1:1' is not a ws:// or wss:// url",
        "sinks[0].config.space: must be named, and not '_staging'",
        "sinks[1].config.store: `store` names a server's store: set `url` too",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}
