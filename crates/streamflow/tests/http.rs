//! The `http` sink against a real HTTP server on loopback (axum, in this
//! test process): batching, headers from the environment, idempotency
//! keys, retries with `Retry-After`, and dead letters after the last
//! attempt or on a status that retrying cannot fix.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::{read_jsonl, stderr, streamflow, write};
use serde_json::Value;

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Rows of accepted requests.
    rows: Vec<Value>,
    /// Requests, accepted or not: (when, status, idempotency key, authorization).
    requests: Vec<(Instant, u16, Option<String>, Option<String>)>,
}

/// Serves `answer(n)` for the n-th request (from 0): a status and, for
/// failures, a body and an optional Retry-After.
fn receiver(
    answer: impl Fn(usize) -> (u16, &'static str, Option<u64>) + Send + Sync + 'static,
) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let answer = Arc::new(answer);
    let state = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/ingest",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (seen, answer) = (Arc::clone(&state), Arc::clone(&answer));
            async move {
                let mut seen = seen.lock().expect("lock");
                let n = seen.requests.len();
                let (status, text, retry_after) = answer(n);
                let header = |h: &str| {
                    headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                seen.requests.push((
                    Instant::now(),
                    status,
                    header("idempotency-key"),
                    header("authorization"),
                ));
                if status == 200 {
                    let rows: Vec<Value> = serde_json::from_slice(&body).expect("a JSON array");
                    seen.rows.extend(rows);
                }
                let mut response =
                    (StatusCode::from_u16(status).expect("status"), text).into_response();
                if let Some(s) = retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", s.to_string().parse().expect("header"));
                }
                response
            }
        }),
    );
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    (format!("http://{addr}/ingest"), seen)
}

fn flow(dir: &std::path::Path, url: &str, rows: u64, extra: &str) -> String {
    write(
        dir,
        "flow.yaml",
        &format!(
            r#"
name: to-http
mode: job
sources:
  - {{name: g, type: generator, config: {{count: {rows}, batch_size: 250, columns: {{id: i, name: "concat('n', i)"}}}}}}
sinks:
  - name: out
    type: http
    input: g
    dlq: rejected
    config:
      url: "{url}"
      headers: {{Authorization: "Bearer ${{STREAMFLOW_TEST_INGEST_TOKEN}}"}}
      idempotency_header: Idempotency-Key
      batch: {{max_rows: 100, linger: 10s}}
      {extra}
  - {{name: rejected, type: file, config: {{path: "{}"}}}}
"#,
            dir.join("rejected.jsonl").display()
        ),
    )
}

fn run(flow: &str) -> std::process::Output {
    streamflow()
        .args(["run", flow, "--quiet"])
        .env("STREAMFLOW_TEST_INGEST_TOKEN", "t0ken")
        .output()
        .expect("run")
}

#[test]
fn batches_are_retried_after_failures_honouring_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every other request fails; the first failure asks for a 1 s pause.
    let (url, seen) = receiver(|n| match n {
        0 => (503, "busy", Some(1)),
        n if n % 2 == 0 => (503, "busy", None),
        _ => (200, "ok", None),
    });
    let flow = flow(
        dir.path(),
        &url,
        2000,
        "retry: {max_attempts: 4, initial_backoff: 10ms}\n      concurrency: 1",
    );
    let out = run(&flow);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = seen.lock().expect("lock");
    let ids: Vec<i64> = seen
        .rows
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    common::assert_each_once(&ids, 2000);
    assert!(
        read_jsonl(&dir.path().join("rejected.jsonl")).is_empty(),
        "nothing dead-lettered"
    );
    let ok = seen.requests.iter().filter(|r| r.1 == 200).count();
    assert_eq!(ok, 20, "batches of 100 rows");
    assert!(seen.requests.iter().filter(|r| r.1 == 503).count() >= 19);
    // The retry after the first failure waited for Retry-After.
    let gap = seen.requests[1].0 - seen.requests[0].0;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    // A retry carries its batch's key; keys differ between batches.
    assert_eq!(seen.requests[0].2, seen.requests[1].2);
    let keys: std::collections::BTreeSet<_> = seen
        .requests
        .iter()
        .filter(|r| r.1 == 200)
        .map(|r| r.2.clone())
        .collect();
    assert_eq!(keys.len(), 20);
    assert!(
        seen.requests
            .iter()
            .all(|r| r.3.as_deref() == Some("Bearer t0ken"))
    );
}

#[test]
fn rows_of_a_batch_that_keeps_failing_go_to_the_dlq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, seen) = receiver(|_| (500, "database down", None));
    let flow = flow(
        dir.path(),
        &url,
        300,
        "retry: {max_attempts: 3, initial_backoff: 5ms}",
    );
    let out = run(&flow);
    assert!(out.status.success(), "{}", stderr(&out));
    let dead = read_jsonl(&dir.path().join("rejected.jsonl"));
    assert_eq!(dead.len(), 300, "every row dead-lettered");
    let error = dead[0]["error"].as_str().expect("error");
    assert!(
        error.contains("HTTP 500")
            && error.contains("database down")
            && error.contains("after 3 attempts"),
        "{error}"
    );
    assert_eq!(dead[0]["stage"], "out");
    assert_eq!(dead[0]["file"].as_str(), Some(url.as_str()));
    let payload: Value =
        serde_json::from_str(dead[0]["payload"].as_str().expect("payload")).expect("a row");
    assert!(payload["id"].is_i64());
    assert_eq!(
        seen.lock().expect("lock").requests.len(),
        3 * 3,
        "three batches, three attempts each"
    );
}

#[test]
fn a_status_retrying_cannot_fix_is_not_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, seen) = receiver(|_| (400, "bad field 'name'", None));
    let flow = flow(dir.path(), &url, 100, "");
    let out = run(&flow);
    assert!(out.status.success(), "{}", stderr(&out));
    let dead = read_jsonl(&dir.path().join("rejected.jsonl"));
    assert_eq!(dead.len(), 100);
    assert!(
        dead[0]["error"]
            .as_str()
            .expect("error")
            .contains("HTTP 400 Bad Request: bad field 'name'")
    );
    assert_eq!(seen.lock().expect("lock").requests.len(), 1, "no retry");
}

#[test]
fn without_a_dlq_a_failed_batch_fails_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, _seen) = receiver(|_| (400, "no", None));
    let flow = write(
        dir.path(),
        "flow.yaml",
        &format!(
            "name: f\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 10, columns: {{id: i}}}}}}\nsinks:\n  - {{name: out, type: http, input: g, config: {{url: \"{url}\"}}}}\n"
        ),
    );
    let out = run(&flow);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("HTTP 400"), "{}", stderr(&out));
}

#[test]
fn with_checkpoints_every_row_is_delivered_or_dead_lettered_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every fifth request is refused for good.
    let (url, seen) = receiver(|n| {
        if n % 5 == 4 {
            (422, "unprocessable", None)
        } else {
            (200, "ok", None)
        }
    });
    let flow = write(
        dir.path(),
        "flow.yaml",
        &format!(
            r#"
name: to-http-checkpointed
mode: job
checkpoint: {{interval: 100ms, storage: "{}"}}
sources:
  - {{name: g, type: generator, config: {{count: 3000, rate: 6000, batch_size: 50, columns: {{id: i}}}}}}
sinks:
  - {{name: out, type: http, input: g, dlq: rejected, config: {{url: "{url}", batch: {{max_rows: 40, linger: 20ms}}}}}}
  - {{name: rejected, type: file, config: {{path: "{}"}}}}
"#,
            dir.path().join("ckpt").display(),
            dir.path().join("rejected.jsonl").display()
        ),
    );
    let out = run(&flow);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut ids: Vec<i64> = seen
        .lock()
        .expect("lock")
        .rows
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    let dead = read_jsonl(&dir.path().join("rejected.jsonl"));
    assert!(!dead.is_empty(), "some batches were refused");
    ids.extend(dead.iter().map(|d| {
        let row: Value =
            serde_json::from_str(d["payload"].as_str().expect("payload")).expect("row");
        row["id"].as_i64().expect("id")
    }));
    common::assert_each_once(&ids, 3000);
}

/// A webhook flow on `port` writing rows to `out` (exactly-once file sink),
/// checkpointing every 300 ms.
fn webhook_flow(dir: &std::path::Path, port: u16, extra: &str) -> String {
    write(
        dir,
        "webhook.yaml",
        &format!(
            r#"
name: webhook
checkpoint: {{interval: 300ms, storage: "{}"}}
sources:
  - name: events
    type: http
    config: {{listen: "127.0.0.1:{port}", path: /events, token_env: STREAMFLOW_TEST_WEBHOOK_TOKEN, schema: {{id: int64, kind: string}}{extra}}}
sinks:
  - {{name: out, type: file, input: events, config: {{path: "{}"}}}}
"#,
            dir.join("ckpt").display(),
            dir.join("out").display()
        ),
    )
}

fn start(flow: &str) -> std::process::Child {
    streamflow()
        .args(["run", flow, "--quiet"])
        .env("STREAMFLOW_TEST_WEBHOOK_TOKEN", "hook")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn")
}

/// POSTs `body` until the receiver is up; the status and when it answered.
async fn post(client: &reqwest::Client, url: &str, token: &str, body: String) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .post(url)
            .bearer_auth(token)
            .body(body.clone())
            .send()
            .await
        {
            Ok(r) => return Some(r.status().as_u16()),
            Err(e) if e.is_connect() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn a_webhook_answers_after_the_checkpoint_so_answered_rows_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let flow = webhook_flow(dir.path(), port, "");
    let url = format!("http://127.0.0.1:{port}/events");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = common::http();
    let mut answered: Vec<i64> = Vec::new();
    let mut child = start(&flow);
    for request in 0..30i64 {
        // Three shapes of body: an array, JSON lines, one object.
        let ids: Vec<i64> = match request % 3 {
            2 => vec![request * 100],
            _ => (0..20).map(|k| request * 100 + k).collect(),
        };
        let rows: Vec<String> = ids
            .iter()
            .map(|id| format!("{{\"id\":{id},\"kind\":\"k{}\"}}", id % 7))
            .collect();
        let body = match request % 3 {
            0 => format!("[{}]", rows.join(",")),
            _ => rows.join("\n"),
        };
        let status = rt.block_on(post(&client, &url, "hook", body));
        if status == Some(200) {
            answered.extend(&ids);
        }
        // A crash after every tenth request: what was answered must survive.
        if request % 10 == 9 {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            child = start(&flow);
        }
    }
    // Once the last restart is serving, a graceful stop takes a final checkpoint.
    let last = "{\"id\":-1,\"kind\":\"last\"}".to_string();
    assert_eq!(rt.block_on(post(&client, &url, "hook", last)), Some(200));
    answered.push(-1);
    common::stop_gracefully(child);
    let written: Vec<i64> = read_jsonl(&dir.path().join("out"))
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    assert!(
        answered.len() >= 200,
        "most requests were answered: {}",
        answered.len()
    );
    for id in &answered {
        assert_eq!(
            written.iter().filter(|w| *w == id).count(),
            1,
            "answered row {id} written once"
        );
    }
}

#[test]
fn a_webhook_refuses_bad_tokens_large_bodies_and_non_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let flow = webhook_flow(dir.path(), port, ", max_body: 1KiB, ack: receipt");
    let url = format!("http://127.0.0.1:{port}/events");
    let mut child = start(&flow);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = common::http();
    let row = "{\"id\":1,\"kind\":\"a\"}".to_string();
    assert_eq!(
        rt.block_on(post(&client, &url, "hook", row.clone())),
        Some(200)
    );
    assert_eq!(
        rt.block_on(post(&client, &url, "wrong", row.clone())),
        Some(401)
    );
    let big = format!("[{}]", vec![row.clone(); 100].join(","));
    assert_eq!(rt.block_on(post(&client, &url, "hook", big)), Some(413));
    assert_eq!(
        rt.block_on(post(&client, &url, "hook", "not json".into())),
        Some(400)
    );
    assert_eq!(
        rt.block_on(post(&client, &url, "hook", "[1, 2]".into())),
        Some(400)
    );
    child.kill().expect("kill");
    child.wait().expect("reap");
}

#[test]
fn a_webhook_answers_429_while_the_pipeline_is_backed_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    // Downstream stalls: an HTTP sink posting to a listener that never
    // answers, one row per request. Channels fill, the source stops
    // pulling, and the webhook's queue of 1 is soon full.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stalled_url = format!("http://{}/never", stalled.local_addr().expect("address"));
    let flow = write(
        dir.path(),
        "backed_up.yaml",
        &format!(
            r#"
name: backed-up
sources:
  - name: events
    type: http
    config: {{listen: "127.0.0.1:{port}", path: /events, ack: receipt, queue: 1, schema: {{id: int64}}}}
sinks:
  - {{name: out, type: http, input: events, config: {{url: "{stalled_url}", batch: {{max_rows: 1}}, concurrency: 1, timeout: 60s}}}}
"#
        ),
    );
    let mut child = streamflow()
        .args(["run", &flow, "--quiet"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let url = format!("http://127.0.0.1:{port}/events");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = common::http();
    let (statuses, retry_after) = rt.block_on(async {
        let mut statuses = Vec::new();
        let mut retry_after = None;
        for request in 0..400i64 {
            let body: Vec<String> = (0..50)
                .map(|k| format!("{{\"id\":{}}}", request * 50 + k))
                .collect();
            let status = post(&client, &url, "", body.join("\n")).await;
            if status == Some(429) && retry_after.is_none() {
                let r = client
                    .post(&url)
                    .body("{\"id\":0}")
                    .send()
                    .await
                    .expect("request");
                retry_after = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap_or_default().to_string());
            }
            statuses.push(status);
            if statuses.iter().filter(|s| **s == Some(429)).count() >= 5 {
                break;
            }
        }
        (statuses, retry_after)
    });
    child.kill().expect("kill");
    child.wait().expect("reap");
    assert_eq!(
        statuses.first(),
        Some(&Some(200)),
        "accepted while there was room"
    );
    assert!(
        statuses.iter().filter(|s| **s == Some(429)).count() >= 5,
        "429 once backed up: {statuses:?}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"), "429 says when to retry");
}

#[test]
fn the_http_examples_run_against_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = common::root();
    let example = |name: &str| {
        root.join("examples/connectors")
            .join(name)
            .to_string_lossy()
            .into_owned()
    };
    let port = common::free_port();
    let listen = format!("sources.bids.config.listen=127.0.0.1:{port}");
    let receiver = streamflow()
        .current_dir(dir.path())
        .args([
            "run",
            &example("webhook_to_file.yaml"),
            "--quiet",
            "--set",
            &listen,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let target = format!("sinks.out.config.url=http://127.0.0.1:{port}/bids");
    let out = streamflow()
        .current_dir(dir.path())
        .args([
            "run",
            &example("bids_to_webhook.yaml"),
            "--quiet",
            "--set",
            &target,
        ])
        .args(["--set", "sources.bids.config.events=20000"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(read_jsonl(&dir.path().join("out/bids-to-webhook/rejected.jsonl")).is_empty());
    // Every request was answered after a checkpoint covered it: stop and count.
    common::stop_gracefully(receiver);
    let rows = read_jsonl(&dir.path().join("out/webhook/bids"));
    // 20 000 Nexmark events hold 18 400 bids; each arrived once.
    assert_eq!(rows.len(), 18_400);
    assert!(
        rows.iter()
            .all(|r| r["price"].is_i64() && r["date_time"].is_string())
    );
}
