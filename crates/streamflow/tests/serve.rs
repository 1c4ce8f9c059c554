//! `streamflow serve` over real HTTP, and the `streamflow flows` client:
//! the flow lifecycle, versions and compare-and-swap, invalid updates,
//! job flows ending SUCCEEDED, flows surviving a SIGKILL of the server,
//! authentication and body limits.

mod common;

use common::server::Server;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A streaming flow: a slow generator into an exactly-once file, checkpointed.
fn streaming_flow(name: &str, out: &Path, filter: &str) -> Value {
    json!({
        "name": name,
        "mode": "streaming",
        "checkpoint": {"interval": "200ms"},
        "sources": [{"name": "g", "type": "generator",
                     "config": {"count": 100_000_000, "rate": 2000, "batch_size": 100, "columns": {"id": "i"}}}],
        "stages": [{"name": "keep", "type": "filter", "input": "g", "where": filter}],
        "sinks": [{"name": "out", "type": "file", "input": "keep", "config": {"path": out}}]
    })
}

fn records_out(status: &Value, node: &str) -> u64 {
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == node)
        .and_then(|n| n["records_out"].as_u64())
        .unwrap_or(0)
}

#[test]
fn the_flow_lifecycle_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    assert_eq!(server.call("GET", "/healthz", None, &[]).0, 200);
    assert_eq!(server.call("GET", "/readyz", None, &[]).0, 200);

    // Create: version 1, running; the same name again is a conflict.
    let v1 = streaming_flow("clicks", &d.join("clicks.jsonl"), "id >= 0");
    let (code, created) = server.call("POST", "/v1/flows", Some(&v1), &[]);
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["version"], 1);
    let fingerprint = created["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    assert_eq!(fingerprint.len(), 64);
    assert_eq!(server.call("POST", "/v1/flows", Some(&v1), &[]).0, 409);
    let running = server.wait_status("clicks", |s| {
        s["state"] == "RUNNING" && records_out(s, "g") > 0
    });
    assert_eq!(running["version"], 1);

    // Update with compare-and-swap: version 2; a writer that read 1 loses.
    let v2 = streaming_flow("clicks", &d.join("clicks.jsonl"), "id % 2 = 0");
    let (code, updated) = server.call("PUT", "/v1/flows/clicks", Some(&v2), &[("If-Match", "1")]);
    assert_eq!(code, 200, "{updated}");
    assert_eq!(
        (updated["version"].clone(), updated["created"].clone()),
        (json!(2), json!(true))
    );
    let (code, lost) = server.call("PUT", "/v1/flows/clicks", Some(&v1), &[("If-Match", "1")]);
    assert_eq!(code, 409, "{lost}");
    assert!(
        lost["error"]
            .as_str()
            .expect("error")
            .contains("modified concurrently"),
        "{lost}"
    );
    // The same declaration again makes no version.
    let (code, same) = server.call("PUT", "/v1/flows/clicks?expected_version=2", Some(&v2), &[]);
    assert_eq!(code, 200);
    assert_eq!(
        (same["version"].clone(), same["created"].clone()),
        (json!(2), json!(false))
    );
    let swapped = server.wait_status("clicks", |s| s["state"] == "RUNNING" && s["version"] == 2);
    assert!(
        swapped["restored_from"].is_u64(),
        "the new version starts from the old one's checkpoint: {swapped}"
    );

    // Versions, reads, diff.
    let (_, versions) = server.call("GET", "/v1/flows/clicks/versions", None, &[]);
    assert_eq!(versions.as_array().expect("versions").len(), 2);
    let (_, old) = server.call("GET", "/v1/flows/clicks?version=1", None, &[]);
    assert_eq!(old["fingerprint"], fingerprint.as_str());
    assert_eq!(old["active"], false);
    let (code, diff) = server.call("GET", "/v1/flows/clicks/diff?from=1&to=2", None, &[]);
    assert_eq!(code, 200);
    let diff = diff.as_str().expect("text diff").to_string();
    assert!(
        diff.contains("-") && diff.contains("+") && diff.contains("id % 2 = 0"),
        "{diff}"
    );
    let cli_diff = server.cli(&["diff", "clicks", "1", "2"]);
    assert!(
        common::stdout(&cli_diff).contains("id % 2 = 0"),
        "{}",
        common::stderr(&cli_diff)
    );

    // Rollback: to 1; to a version that does not exist: 404.
    let (code, rolled) = server.call("POST", "/v1/flows/clicks/rollback/1", None, &[]);
    assert_eq!(code, 200, "{rolled}");
    server.wait_status("clicks", |s| s["state"] == "RUNNING" && s["version"] == 1);
    let (code, missing) = server.call("POST", "/v1/flows/clicks/rollback/9", None, &[]);
    assert_eq!(code, 404);
    assert_eq!(missing["error"], "version 9 does not exist");

    // Stop and start; the listing shows it.
    let (code, stopped) = server.call("POST", "/v1/flows/clicks/stop", None, &[]);
    assert_eq!((code, stopped["state"].clone()), (200, json!("STOPPED")));
    let list = server.cli(&["list"]);
    let listing = common::stdout(&list);
    assert!(
        listing.contains("clicks") && listing.contains("STOPPED"),
        "{listing}"
    );
    let (code, _) = server.call("POST", "/v1/flows/clicks/start", None, &[]);
    assert_eq!(code, 200);
    server.wait_status("clicks", |s| s["state"] == "RUNNING");

    // Delete: stopped and gone.
    let (code, _) = server.call("DELETE", "/v1/flows/clicks", None, &[]);
    assert_eq!(code, 204);
    assert_eq!(server.call("GET", "/v1/flows/clicks", None, &[]).0, 404);
    // The exactly-once file holds distinct ids only, across all the swaps.
    let mut ids = common::ids(&common::read_jsonl(&d.join("clicks.jsonl")));
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "no id written twice");
    assert!(n > 0);
}

#[test]
fn an_invalid_update_keeps_the_running_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let v1 = streaming_flow("keep", &d.join("keep.jsonl"), "id >= 0");
    assert_eq!(server.call("POST", "/v1/flows", Some(&v1), &[]).0, 201);
    server.wait_status("keep", |s| s["state"] == "RUNNING");
    let bad = streaming_flow("keep", &d.join("keep.jsonl"), "nope > 1");
    let (code, refused) = server.call("PUT", "/v1/flows/keep", Some(&bad), &[]);
    assert_eq!(code, 400, "{refused}");
    let errors = refused["errors"].to_string();
    assert!(
        errors.contains("stages[0]") && errors.contains("nope"),
        "{refused}"
    );
    let status = server.wait_status("keep", |s| s["state"] == "RUNNING");
    assert_eq!(status["version"], 1);
    assert!(
        status["last_update_error"]
            .as_str()
            .is_some_and(|e| e.contains("nope")),
        "{status}"
    );
    let (_, versions) = server.call("GET", "/v1/flows/keep/versions", None, &[]);
    assert_eq!(versions.as_array().expect("versions").len(), 1);
    // YAML bodies are taken too, and a flow without a name is refused.
    let yaml = format!(
        "name: other\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 10, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: file, input: g, config: {{path: '{}'}}}}\n",
        d.join("other.jsonl").display()
    );
    let (code, created) = server.call("POST", "/v1/flows", Some(&Value::String(yaml)), &[]);
    assert_eq!(code, 201, "{created}");
    server.wait_status("other", |s| s["state"] == "SUCCEEDED");
    let (code, nameless) = server.call("POST", "/v1/flows", Some(&json!({"sources": []})), &[]);
    assert_eq!(code, 400, "{nameless}");
}

#[test]
fn a_job_flow_ends_succeeded_with_its_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let out = d.join("job.jsonl");
    let flow = common::write(
        d,
        "job.yaml",
        &format!(
            "name: job\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 5000, columns: {{id: i}}}}}}\nsinks:\n  - {{name: out, type: file, input: g, config: {{path: '{}'}}}}\n",
            out.display()
        ),
    );
    let submitted = server.cli(&["submit", &flow]);
    assert!(submitted.status.success(), "{}", common::stderr(&submitted));
    assert!(
        common::stdout(&submitted).contains("job version 1"),
        "{}",
        common::stdout(&submitted)
    );
    let status = server.wait_status("job", |s| s["state"] == "SUCCEEDED");
    assert_eq!(status["error"], Value::Null);
    common::assert_each_once(&common::ids(&common::read_jsonl(&out)), 5000);
    let shown = server.cli(&["status", "job"]);
    assert!(
        common::stdout(&shown).contains("SUCCEEDED"),
        "{}",
        common::stdout(&shown)
    );
    // A declaration with errors is reported like `validate` does.
    let broken = common::write(
        d,
        "broken.yaml",
        "name: broken\nsources:\n  - {name: g, type: generator, config: {count: 1, columns: {id: i}}}\nstages:\n  - {name: r, type: retry, input: g}\nsinks:\n  - {name: o, type: blackhole, input: r}\n",
    );
    let refused = server.cli(&["submit", &broken]);
    assert!(!refused.status.success());
    assert!(
        common::stderr(&refused).contains("stages[0]"),
        "{}",
        common::stderr(&refused)
    );
}

#[test]
fn a_running_flow_survives_a_sigkill_of_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let data = d.join("data");
    let server = Server::start(&data, &[]);
    let flow = streaming_flow("durable", &d.join("durable.jsonl"), "id >= 0");
    assert_eq!(server.call("POST", "/v1/flows", Some(&flow), &[]).0, 201);
    server.wait_status("durable", |s| s["checkpoints"].as_u64().unwrap_or(0) >= 2);
    server.kill();
    let server = Server::start(&data, &[]);
    let status = server.wait_status("durable", |s| {
        s["state"] == "RUNNING" && records_out(s, "g") > 0
    });
    assert!(status["restored_from"].is_u64(), "{status}");
    server.call("POST", "/v1/flows/durable/stop", None, &[]);
    let mut ids = common::ids(&common::read_jsonl(&d.join("durable.jsonl")));
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "no id written twice across the crash");
}

#[test]
fn a_token_is_required_when_set_and_bodies_are_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &["--token", "s3cret"]);
    assert_eq!(server.call("GET", "/healthz", None, &[]).0, 200);
    assert_eq!(server.call("GET", "/v1/flows", None, &[]).0, 401);
    assert_eq!(
        server
            .call(
                "GET",
                "/v1/flows",
                None,
                &[("Authorization", "Bearer wrong")]
            )
            .0,
        401
    );
    assert_eq!(
        server
            .call(
                "GET",
                "/v1/flows",
                None,
                &[("Authorization", "Bearer s3cret")]
            )
            .0,
        200
    );
    let huge = json!({"name": "x".repeat(2 << 20)});
    let (code, _) = server.call(
        "POST",
        "/v1/flows",
        Some(&huge),
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(code, 413);
    // Without a token, only loopback addresses are served.
    let refused = common::run(&[
        "serve",
        "--data",
        &dir.path().join("other").to_string_lossy(),
        "--listen",
        "0.0.0.0:0",
    ]);
    assert!(!refused.status.success());
    assert!(
        common::stderr(&refused).contains("without --token"),
        "{}",
        common::stderr(&refused)
    );
}

/// Rows `(id, version)` written across version switches: ids ascend with
/// none repeated, versions follow each other, each row passes its
/// version's filter (`passes(version, id)`), and no id that both
/// neighbouring versions keep is missing between two rows.
fn assert_versions_switch_cleanly(seen: &[(i64, u64)], passes: impl Fn(u64, i64) -> bool) {
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "ids ascend, none repeated"
    );
    assert!(
        seen.windows(2).all(|w| w[0].1 <= w[1].1),
        "versions follow each other"
    );
    for (id, v) in seen {
        assert!(passes(*v, *id), "id {id} written by version {v}");
    }
    for w in seen.windows(2) {
        let ((a, va), (b, vb)) = (w[0], w[1]);
        for id in a + 1..b {
            assert!(
                !(passes(va, id) && passes(vb, id)),
                "id {id} lost between versions {va} and {vb}"
            );
        }
    }
}

/// The reload test's flow: ids at one per millisecond of event time; rows
/// passing `filter` (tagged `v` from version 2 on) to one exactly-once file,
/// and counts per 100 ms window of all ids to another.
fn reloading_flow(d: &Path, filter: &str, tag: Option<u64>) -> Value {
    let mut stages = vec![json!({"name": "keep", "type": "filter", "input": "g", "where": filter})];
    let rows_from = match tag {
        None => "keep",
        Some(v) => {
            stages.push(
                json!({"name": "tag", "type": "map", "input": "keep", "map": {"v": v.to_string()}}),
            );
            "tag"
        }
    };
    stages.push(json!({"name": "per_window", "type": "window", "input": "g", "key_by": ["k"],
                       "window": {"kind": "tumbling", "size": "100ms"}, "aggregates": {"n": "count(*)"}}));
    json!({
        "name": "reload",
        "mode": "streaming",
        "checkpoint": {"interval": "100ms"},
        "sources": [{"name": "g", "type": "generator",
                     "config": {"count": 100_000_000, "rate": 4000, "batch_size": 40,
                                "columns": {"id": "i", "t": "to_timestamp_millis(1700000000000 + i)", "k": "'all'"}},
                     "event_time": {"column": "t"}}],
        "stages": stages,
        "sinks": [
            {"name": "rows", "type": "file", "input": rows_from, "config": {"path": d.join("rows.jsonl")}},
            {"name": "windows", "type": "file", "input": "per_window", "config": {"path": d.join("windows.jsonl")}}
        ]
    })
}

/// Three updates while data flows — one adds a stage, one changes the
/// filter, one is invalid and refused — leave exactly the rows of an
/// uninterrupted run switched at the same positions, and the window state
/// carried across every swap.
#[test]
fn hot_reloads_lose_and_repeat_nothing_and_keep_window_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let progressed = |after: u64| {
        server.wait_status("reload", move |s| {
            s["state"] == "RUNNING" && records_out(s, "g") > after
        })
    };
    let (code, _) = server.call(
        "POST",
        "/v1/flows",
        Some(&reloading_flow(d, "id % 2 = 0", None)),
        &[],
    );
    assert_eq!(code, 201);
    progressed(600);
    let (code, v2) = server.call(
        "PUT",
        "/v1/flows/reload",
        Some(&reloading_flow(d, "id % 2 = 0", Some(2))),
        &[("If-Match", "1")],
    );
    assert_eq!(code, 200, "{v2}");
    let s = progressed(0);
    assert_eq!(s["version"], 2);
    progressed(600);
    let (code, v3) = server.call(
        "PUT",
        "/v1/flows/reload",
        Some(&reloading_flow(d, "id % 3 = 0", Some(3))),
        &[("If-Match", "2")],
    );
    assert_eq!(code, 200, "{v3}");
    progressed(600);
    let (code, refused) = server.call(
        "PUT",
        "/v1/flows/reload",
        Some(&reloading_flow(d, "nope > 1", Some(4))),
        &[("If-Match", "3")],
    );
    assert_eq!(code, 400, "{refused}");
    let s = progressed(600);
    assert_eq!(s["version"], 3);
    let (code, stopped) = server.call("POST", "/v1/flows/reload/stop", None, &[]);
    assert_eq!((code, stopped["state"].clone()), (200, json!("STOPPED")));

    // Rows: ids ascending and unique; each version's rows pass its filter;
    // nothing a version should have written is missing.
    let rows = common::read_jsonl(&d.join("rows.jsonl"));
    let version = |r: &Value| r["v"].as_u64().unwrap_or(1);
    let passes = |v: u64, id: i64| if v == 3 { id % 3 == 0 } else { id % 2 == 0 };
    let seen: Vec<(i64, u64)> = rows
        .iter()
        .map(|r| (r["id"].as_i64().expect("id"), version(r)))
        .collect();
    assert_versions_switch_cleanly(&seen, passes);
    let versions: std::collections::BTreeSet<u64> = seen.iter().map(|(_, v)| *v).collect();
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
    // Windows: every 100 ms window counted all of its 100 ids, across swaps.
    let windows = common::read_jsonl(&d.join("windows.jsonl"));
    assert!(windows.len() >= 10, "{} windows", windows.len());
    for w in &windows {
        assert_eq!(w["n"], 100, "window {w}");
    }
    let mut starts: Vec<String> = windows
        .iter()
        .map(|w| w["window_start"].to_string())
        .collect();
    let n = starts.len();
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), n, "each window once");
}

/// A counter's value in a Prometheus text exposition, for one flow and node.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, node: &str) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get("node") == Some(node))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no {metric} for {node}"))
}

#[test]
fn metrics_and_events_show_a_running_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &["--log-format", "json"]);
    let mut flow = streaming_flow("metered", &d.join("metered.jsonl"), "id >= 0");
    flow["sources"][0]["config"]["columns"]["t"] = json!("to_timestamp_millis(1700000000000 + i)");
    flow["sources"][0]["event_time"] = json!({"column": "t"});
    assert_eq!(server.call("POST", "/v1/flows", Some(&flow), &[]).0, 201);
    let status = server.wait_status("metered", |s| s["checkpoints"].as_u64().unwrap_or(0) >= 1);
    let node = |name: &str| {
        status["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no node {name} in {status}"))
    };
    // Event time 1700000000000 + id: the source's watermark trails its ids.
    let watermark = node("g")["watermark_ms"].as_i64().expect("watermark");
    assert!(watermark >= 1_700_000_000_000, "{status}");
    assert!(node("g")["watermark_lag_ms"].as_i64().expect("lag") > 0);
    assert_eq!(node("keep")["inputs"][0]["from"], "g", "{status}");
    assert!(node("out")["bytes_in"].as_u64().expect("bytes") > 0);
    let scrape = || {
        let (code, text) = server.call("GET", "/metrics", None, &[]);
        assert_eq!(code, 200);
        let text = text.as_str().expect("text").to_string();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("Prometheus text format")
    };
    let first = scrape();
    std::thread::sleep(Duration::from_millis(500));
    let second = scrape();
    let (before, after) = (
        sample(&first, "streamflow_records_out_total", "g"),
        sample(&second, "streamflow_records_out_total", "g"),
    );
    assert!(
        after > before && before > 0.0,
        "records out moved: {before} -> {after}"
    );
    assert!(sample(&second, "streamflow_records_in_total", "out") > 0.0);
    assert!(
        sample(&second, "streamflow_batches_out_total", "g")
            > sample(&first, "streamflow_batches_out_total", "g")
    );
    assert!(sample(&second, "streamflow_bytes_in_total", "out") > 0.0);
    assert!(sample(&second, "streamflow_watermark_lag_seconds", "g") > 0.0);
    let fill = sample(&second, "streamflow_input_queue_fill_ratio", "keep");
    assert!((0.0..=1.0).contains(&fill), "queue fill {fill}");
    let flow_sample = |metric: &str| {
        second
            .samples
            .iter()
            .find(|s| s.metric == metric && s.labels.get("flow") == Some("metered"))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {metric}"))
    };
    assert!(flow_sample("streamflow_checkpoints_completed_total") >= 1.0);
    assert_eq!(flow_sample("streamflow_checkpoints_failed_total"), 0.0);
    assert!(
        second
            .samples
            .iter()
            .any(|s| s.metric == "process_resident_memory_bytes")
    );
    let events = server.events("metered");
    let kinds = common::server::kinds(&events);
    assert_eq!(kinds[..2], ["submitted", "started"], "{events}");
    // Events raised inside the running flow are kept with the flow's.
    assert!(
        kinds.contains(&"checkpoint_completed"),
        "checkpoint events: {events}"
    );
    // A deleted flow's series leave /metrics.
    assert_eq!(server.call("DELETE", "/v1/flows/metered", None, &[]).0, 204);
    let after_delete = scrape();
    assert!(
        after_delete
            .samples
            .iter()
            .all(|s| s.labels.get("flow") != Some("metered")),
        "stale series of a deleted flow"
    );
    // The same events, as JSON log lines.
    let logged: Vec<Value> = server
        .log
        .lock()
        .expect("log")
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["flow"] == "metered")
        .collect();
    assert!(
        logged
            .iter()
            .any(|l| l["fields"]["event"] == "started" && l["level"] == "INFO"),
        "{logged:?}"
    );
}

/// `streamflow run --watch`: an invalid edit is reported and the running
/// version goes on; a valid one takes over at a checkpoint, losing and
/// repeating nothing.
#[test]
fn run_watch_reloads_the_file_when_it_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let flow = |filter: &str, tag: u64| {
        format!(
            "name: watched\ncheckpoint: {{interval: 100ms, storage: '{}'}}\nsources:\n  - {{name: g, type: generator, config: {{count: 100000000, rate: 4000, batch_size: 40, columns: {{id: i}}}}}}\nstages:\n  - {{name: keep, type: filter, input: g, where: '{filter}'}}\n  - {{name: tag, type: map, input: keep, map: {{v: '{tag}'}}}}\nsinks:\n  - {{name: rows, type: file, input: tag, config: {{path: '{}'}}}}\n",
            d.join("state").display(),
            d.join("rows.jsonl").display()
        )
    };
    let file = common::write(d, "watched.yaml", &flow("id % 2 = 0", 1));
    let mut child = common::streamflow()
        .args(["run", "--watch", &file])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = common::lines_of(child.stderr.take().expect("stderr"));
    let rows = || common::read_jsonl(&d.join("rows.jsonl"));
    let wait_for = |what: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !what() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&|| d.join("rows.jsonl").exists() && rows().len() > 200);
    std::thread::sleep(Duration::from_millis(20));
    common::write(d, "watched.yaml", &flow("nope > 1", 2));
    let said = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no `{needle}` on stderr"));
            if line.contains(needle) {
                return line;
            }
        }
    };
    said("not reloaded");
    let before = rows().len();
    wait_for(&|| rows().len() > before + 100);
    common::write(d, "watched.yaml", &flow("id % 3 = 0", 2));
    said("reloaded");
    wait_for(&|| rows().iter().filter(|r| r["v"] == 2).count() > 100);
    let stopped = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    assert!(child.wait().expect("wait").success());
    let seen: Vec<(i64, u64)> = rows()
        .iter()
        .map(|r| (r["id"].as_i64().expect("id"), r["v"].as_u64().expect("v")))
        .collect();
    assert_versions_switch_cleanly(
        &seen,
        |v, id| if v == 1 { id % 2 == 0 } else { id % 3 == 0 },
    );
}

/// `/openapi.json` documents exactly the routes served: every documented
/// operation is answered by its handler (not the router's bare 404 or 405).
#[test]
fn the_openapi_document_matches_the_routes_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let flow = streaming_flow("doc", &d.join("doc.jsonl"), "id >= 0");
    assert_eq!(server.call("POST", "/v1/flows", Some(&flow), &[]).0, 201);
    let (code, doc) = server.call("GET", "/openapi.json", None, &[]);
    assert_eq!(code, 200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        for method in ["get", "post", "put"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let concrete = path
                .replace("{name}", "doc")
                .replace("{version}", "1")
                .replace("/diff", "/diff?from=1&to=1");
            let body = (method != "get").then(|| flow.clone());
            let (code, answer) = server.call(&method.to_uppercase(), &concrete, body.as_ref(), &[]);
            assert_ne!(code, 405, "{method} {path}");
            assert!(
                code != 404 || answer.get("error").is_some(),
                "{method} {path} is not served"
            );
        }
    }
    assert!(operations >= 13, "{operations} operations documented");
    assert!(paths.contains_key("/v1/flows/{name}/rollback/{version}"));
    assert!(paths["/v1/flows/{name}"].get("delete").is_some());
}

/// A checkpoint not complete within `checkpoint.timeout` fails the flow,
/// and says so in its status, its events and `/metrics`.
#[test]
fn a_checkpoint_past_its_timeout_fails_the_flow_and_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let mut flow = streaming_flow("hasty", &d.join("hasty.jsonl"), "id >= 0");
    // Barriers go in between the generator's batches, 50 ms apart: no
    // checkpoint can complete within a microsecond.
    flow["checkpoint"]["timeout"] = json!("1us");
    assert_eq!(server.call("POST", "/v1/flows", Some(&flow), &[]).0, 201);
    let status = server.wait_status("hasty", |s| s["state"] == "FAILED");
    let error = status["error"].as_str().expect("error");
    assert!(error.contains("checkpoint.timeout"), "{error}");
    assert_eq!(status["checkpoints_failed"], 1, "{status}");
    let events = server.events("hasty");
    let kinds = common::server::kinds(&events);
    assert!(kinds.contains(&"checkpoint_failed"), "{events}");
    assert_eq!(kinds.last(), Some(&"failed"), "{events}");
    let (_, text) = server.call("GET", "/metrics", None, &[]);
    let scrape = prometheus_parse::Scrape::parse(
        text.as_str()
            .expect("text")
            .lines()
            .map(|l| Ok(l.to_string())),
    )
    .expect("Prometheus text format");
    let failed = scrape
        .samples
        .iter()
        .find(|s| s.metric == "streamflow_checkpoints_failed_total")
        .map(|s| s.value.clone());
    assert!(
        matches!(failed, Some(prometheus_parse::Value::Counter(v)) if v == 1.0),
        "{failed:?}"
    );
}

/// `streamflow run --metrics ADDR` serves the same series for one run.
#[test]
fn run_serves_its_metrics_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut flow = streaming_flow("solo", &d.join("solo.jsonl"), "id >= 0");
    flow["checkpoint"]["storage"] = json!(d.join("state"));
    let file = common::write(d, "solo.json", &flow.to_string());
    let mut child = common::streamflow()
        .args(["run", &file, "--quiet", "--metrics", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    let lines = common::lines_of(child.stderr.take().expect("stderr"));
    let url = lines
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .and_then(|l| l.strip_prefix("metrics on ").map(|u| u.trim().to_string()))
        .expect("run says where its metrics are");
    let scrape = || {
        let text = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                common::http()
                    .get(&url)
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await
            })
            .expect("GET /metrics");
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("Prometheus text format")
    };
    let first = scrape();
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = scrape();
        if sample(&now, "streamflow_records_out_total", "g")
            > sample(&first, "streamflow_records_out_total", "g")
        {
            break now;
        }
        assert!(Instant::now() < deadline, "records out never moved");
    };
    assert!(
        second
            .samples
            .iter()
            .any(|s| s.metric == "streamflow_records_in_total"
                && s.labels.get("flow") == Some("solo")),
        "series carry the flow's name"
    );
    let _ = child.kill();
    let _ = child.wait();
}
