//! Helpers for driving the `streamflow` binary in tests.
#![allow(dead_code)]

pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (for `examples/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A `streamflow` command.
pub fn streamflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_streamflow"));
    c.env_remove("STREAMFLOW_LOG");
    c
}

/// Runs `streamflow args...` to completion.
pub fn run(args: &[&str]) -> Output {
    streamflow().args(args).output().expect("runs streamflow")
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p.to_string_lossy().into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every JSON line of every `.jsonl` file directly in `dir` (or the file itself).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .expect("read output")
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(&l).expect("valid JSON line"))
        .collect()
}

/// Reads `reader` line by line on a thread; the receiver gets each line.
pub fn lines_of(reader: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs `flow` to the end, killing it with SIGKILL after each of
/// `kills_ms` milliseconds (restarting each time) unless it finished;
/// returns how many of the runs resumed from a checkpoint.
pub fn run_with_kills(flow: &str, kills_ms: &[u64]) -> usize {
    let resumed = |o: &Output| usize::from(stderr(o).contains("resuming from checkpoint"));
    let mut count = 0;
    for wait in kills_ms {
        let mut child = streamflow()
            .args(["run", flow, "--quiet"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(*wait));
        let finished = child.try_wait().expect("wait").is_some();
        if !finished {
            child.kill().expect("SIGKILL");
        }
        let out = child.wait_with_output().expect("reap");
        count += resumed(&out);
        if finished {
            assert!(out.status.success(), "{}", stderr(&out));
            return count;
        }
    }
    let last = streamflow()
        .args(["run", flow, "--quiet"])
        .output()
        .expect("run");
    assert!(last.status.success(), "{}", stderr(&last));
    count + resumed(&last)
}

/// Runs the flow `yaml`; it must fail, saying `expected`.
pub fn assert_run_fails_with(yaml: &str, expected: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = write(dir.path(), "flow.yaml", yaml);
    let out = run(&["run", &flow]);
    assert!(!out.status.success(), "the run succeeded");
    assert!(
        stderr(&out).contains(expected),
        "missing `{expected}` in:\n{}",
        stderr(&out)
    );
}

/// A name (stream, table, key) no other test run uses: `sf_<name>_<pid>_<time>`.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("sf_{name}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// The `id` column of rows.
pub fn ids(rows: &[serde_json::Value]) -> Vec<i64> {
    rows.iter().map(|r| r["id"].as_i64().expect("id")).collect()
}

/// Every id in `0..n` occurs exactly once in `ids`, and nothing else.
pub fn assert_each_once(ids: &[i64], n: i64) {
    let mut counts = std::collections::BTreeMap::<i64, usize>::new();
    for id in ids {
        *counts.entry(*id).or_default() += 1;
    }
    let missing = (0..n).filter(|i| !counts.contains_key(i)).count();
    let doubled = counts.values().filter(|c| **c > 1).count();
    assert_eq!((missing, doubled), (0, 0), "every row exactly once");
    assert_eq!(counts.len(), n as usize, "no other rows");
}

/// The Python with confluent-kafka that `.ci/run` installs.
pub fn python() -> String {
    let path = std::env::var("STREAMFLOW_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/streamflow/pyenv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: .ci/run installs it (a venv with confluent-kafka[avro,schemaregistry])"
    );
    path
}

/// An HTTP client for the tests' own requests (the one StreamFlow's
/// connectors use: rustls on ring, no process-wide provider needed).
pub fn http() -> reqwest::Client {
    streamflow_tls::http_client(None)
        .expect("http client settings")
        .build()
        .expect("http client")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Stops a running flow as an operator would (SIGTERM: a final checkpoint);
/// it must exit cleanly.
pub fn stop_gracefully(mut child: std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(child.wait().expect("reap").success(), "stopped cleanly");
}

/// Resident memory of process `pid`, KiB (`None` once it is gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
