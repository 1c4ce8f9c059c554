//! A `streamflow serve` process driven over HTTP.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `streamflow serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Everything the server printed on stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        // Any free port, unless `extra` names one.
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = super::streamflow()
            .args(["serve", "--data", &data.to_string_lossy()])
            .args(listen)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let lines = super::lines_of(child.stderr.take().expect("stderr"));
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
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            while let Ok(line) = lines.recv() {
                kept.lock().expect("log").push(line);
            }
        });
        Self { child, url, log }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// One request; the status and the JSON (or text) answer.
    pub fn call(
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
            let mut request = super::http().request(method, format!("{}{path}", self.url));
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

    /// `GET /v1/events?flow=<flow>` (must answer 200): the flow's events.
    pub fn events(&self, flow: &str) -> Value {
        let (code, events) = self.call("GET", &format!("/v1/events?flow={flow}"), None, &[]);
        assert_eq!(code, 200, "{events}");
        events
    }

    /// `streamflow flows <args> --json` against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        super::streamflow()
            .arg("flows")
            .args(args)
            .args(["--server", &self.url])
            .output()
            .expect("flows")
    }

    /// Waits until `name`'s status satisfies `done`; returns it.
    pub fn wait_status(&self, name: &str, done: impl Fn(&Value) -> bool) -> Value {
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

/// The `event` of each of `events` (as [`Server::events`] gives them), in order.
pub fn kinds(events: &Value) -> Vec<&str> {
    events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect()
}
