//! A stalled sink slows the sources: with small queues and a sink whose
//! output nobody reads, an unbounded source blocks instead of buffering, so
//! memory stays bounded; once the sink drains, data flows again, and a
//! SIGTERM drains the pipeline and exits cleanly.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use common::{streamflow, write};

#[test]
fn stalled_sink_blocks_the_producer_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    // ~200 bytes per row: an unbounded buffer would grow by hundreds of MB per second.
    let flow = write(
        dir.path(),
        "flow.yaml",
        "name: stall\nmode: streaming\nqueue: {capacity: 1}\nsources: [{name: g, type: generator, config: {batch_size: 1024, columns: {id: i, pad: \"repeat('x', 200)\"}}}]\nsinks: [{name: out, type: stdout, input: g}]\n",
    );
    let mut child = streamflow()
        .args(["run", &flow, "--workers", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    // Nobody reads stdout: the pipe fills, the sink blocks, the queues fill.
    let mut peak = 0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(common::rss_kib(pid).unwrap_or(0));
    }
    assert!(peak > 0, "could not read the child's memory");
    assert!(
        peak < 300 * 1024,
        "memory grew to {peak} KiB while the sink was stalled"
    );

    // Draining the sink lets data flow again.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = vec![0u8; 4 << 20];
    stdout.read_exact(&mut buf).expect("output resumes");
    let text = String::from_utf8_lossy(&buf);
    let first = text.lines().next().expect("a line");
    let v: serde_json::Value = serde_json::from_str(first).expect("JSON line");
    assert_eq!(v["id"], 0);

    // Graceful stop: SIGTERM drains and exits 0 while we keep reading.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest);
    });
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    assert!(status.success(), "exit status {status}");
}
