//! `streamflow serve` over real HTTP, and the `streamflow flows` client:
//! the flow lifecycle, versions and compare-and-swap, invalid updates,
//! job flows ending SUCCEEDED, flows surviving a SIGKILL of the server,
//! authentication and body limits.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running `streamflow serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Self {
        let mut child = common::streamflow()
            .args([
                "serve",
                "--data",
                &data.to_string_lossy(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let lines = common::lines_of(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the server says where it listens");
            if let Some(url) = line.strip_prefix("listening on ") {
                break url.trim().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        Self { child, url }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// One request; the status and the JSON (or text) answer.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let mut request = reqwest::Client::new().request(method, format!("{}{path}", self.url));
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            match body {
                // Text goes as YAML.
                Some(Value::String(text)) => {
                    request = request
                        .header("Content-Type", "application/yaml")
                        .body(text.clone());
                }
                Some(b) => request = request.json(b),
                None => {}
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let text = response.text().await.expect("body");
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }

    /// `streamflow flows <args> --json` against this server.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        common::streamflow()
            .arg("flows")
            .args(args)
            .args(["--server", &self.url])
            .output()
            .expect("flows")
    }

    /// Waits until `name`'s status satisfies `done`; returns it.
    fn wait_status(&self, name: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, status) = self.call("GET", &format!("/v1/flows/{name}/status"), None, &[]);
            assert_eq!(code, 200, "{status}");
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "timed out; last status {status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
