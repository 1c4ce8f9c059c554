//! Checkpoints and exactly-once delivery, end to end through the CLI: a
//! checkpointed pipeline killed with SIGKILL at random moments and
//! restarted each time writes exactly what an uninterrupted run writes.
//!
//! `STREAMFLOW_CHAOS_KILLS=<n>` runs more kills (default 5);
//! `STREAMFLOW_CHAOS_SEED=<n>` replays a run's kill times.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{stderr, streamflow, write};

/// A windowed job over a throttled generator (about 3 s of input).
fn flow(dir: &Path) -> String {
    flow_in(dir, &dir.join("state").display().to_string())
}

/// [`flow`] with its checkpoints in `storage`.
fn flow_in(dir: &Path, storage: &str) -> String {
    write(
        dir,
        "flow.yaml",
        &format!(
            "name: chaos\nmode: job\ncheckpoint: {{interval: 100ms, storage: {state}}}\nsources:\n  - name: gen\n    type: generator\n    config: {{count: 60000, rate: 20000, batch_size: 400, columns: {{t: \"to_timestamp_millis(1700000000000 + i * 10)\", k: \"i % 13\", v: \"i\"}}}}\n    event_time: {{column: t, watermark: {{max_out_of_orderness: 0s}}}}\nstages:\n  - {{name: w, type: window, input: gen, key_by: [k], window: {{kind: sliding, size: 2s, slide: 500ms}}, aggregates: {{n: \"count(*)\", s: \"sum(v)\", d: \"count(DISTINCT v % 97)\"}}}}\n  - {{name: top, type: top_n, input: gen, key_by: [k], order_by: [v DESC], n: 2}}\nsinks:\n  - {{name: out, type: file, input: w, config: {{path: {out}}}}}\n  - {{name: tops, type: file, input: top, config: {{path: {tops}}}}}\n",
            state = storage,
            out = dir.join("out").display(),
            tops = dir.join("tops.jsonl").display(),
        ),
    )
}

/// Every published line of the outputs, sorted (in-progress files excluded).
fn published(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let out = dir.join("out");
    if let Ok(entries) = std::fs::read_dir(&out) {
        for e in entries {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "jsonl") {
                lines.extend(
                    std::fs::read_to_string(&p)
                        .expect("read")
                        .lines()
                        .map(|l| format!("w {l}")),
                );
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("tops.jsonl")) {
        lines.extend(text.lines().map(|l| format!("top {l}")));
    }
    lines.sort();
    lines
}

fn run_to_end(flow: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = streamflow();
    c.args(["run", flow, "--quiet"]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("runs")
}

fn reference() -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_to_end(&flow(dir.path()), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = published(dir.path());
    assert!(lines.len() > 500, "the job produces output");
    lines
}

/// A small deterministic generator for kill times.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[test]
fn killed_at_random_moments_the_output_is_exactly_that_of_an_uninterrupted_run() {
    let expected = reference();
    let kills: usize = std::env::var("STREAMFLOW_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("STREAMFLOW_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("chaos seed {seed} (STREAMFLOW_CHAOS_SEED={seed} replays it)");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = flow(dir.path());
    let mut killed = 0;
    let mut resumed = 0;
    while killed < kills {
        let mut child = streamflow()
            .args(["run", &flow, "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let wait = Duration::from_millis(150 + rng.next() % 700);
        let started = Instant::now();
        let mut finished = None;
        while started.elapsed() < wait {
            if let Some(status) = child.try_wait().expect("poll") {
                finished = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(status) = finished {
            // It completed before the kill: start over from nothing.
            assert!(status.success(), "run failed");
            std::fs::remove_dir_all(dir.path().join("state")).expect("clean");
            let _ = std::fs::remove_dir_all(dir.path().join("out"));
            let _ = std::fs::remove_file(dir.path().join("tops.jsonl"));
            continue;
        }
        child.kill().expect("SIGKILL");
        let out = child.wait_with_output().expect("wait");
        if String::from_utf8_lossy(&out.stderr).contains("resuming from checkpoint") {
            resumed += 1;
        }
        killed += 1;
    }
    let last = run_to_end(&flow, &[]);
    assert!(last.status.success(), "{}", stderr(&last));
    if stderr(&last).contains("resuming from checkpoint") {
        resumed += 1;
    }
    assert!(resumed > 0, "no restart resumed from a checkpoint");
    let got = published(dir.path());
    assert_eq!(
        got.len(),
        expected.len(),
        "after {killed} kills: {} lines, expected {}",
        got.len(),
        expected.len()
    );
    assert!(got == expected, "after {killed} kills the output differs");
}

#[test]
fn a_crash_between_checkpoint_and_commit_publishes_once_on_restart() {
    let expected = reference();
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = flow(dir.path());
    let crashed = run_to_end(&flow, &[("STREAMFLOW_CRASH_AFTER_COMMIT", "4")]);
    assert!(!crashed.status.success(), "the crash hook fired");
    let resumed = run_to_end(&flow, &[]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("resuming from checkpoint 4"),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(published(dir.path()), expected);
}

#[test]
fn a_damaged_checkpoint_is_detected_and_the_previous_one_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = flow(dir.path());
    // Stop after checkpoint 3 is recorded, then damage its state files.
    let crashed = run_to_end(&flow, &[("STREAMFLOW_CRASH_AFTER_COMMIT", "3")]);
    assert!(!crashed.status.success());
    let chk = dir.path().join("state").join("chk-3");
    let mut damaged = 0;
    for node in std::fs::read_dir(&chk).expect("chk-3") {
        for inst in std::fs::read_dir(node.expect("node").path()).expect("node dir") {
            for f in std::fs::read_dir(inst.expect("inst").path()).expect("inst dir") {
                let p = f.expect("file").path();
                let len = std::fs::metadata(&p).expect("meta").len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .expect("open")
                    .set_len(len / 2)
                    .expect("truncate");
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0);
    let list = streamflow()
        .args(["checkpoints", "list", &flow])
        .output()
        .expect("list");
    assert!(String::from_utf8_lossy(&list.stdout).contains("     3 "));
    let resumed = streamflow()
        .args(["run", &flow, "--quiet"])
        .env("STREAMFLOW_LOG", "warn")
        .output()
        .expect("run");
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let err = stderr(&resumed);
    assert!(err.contains("checkpoint damaged"), "{err}");
    assert!(err.contains("resuming from checkpoint 2"), "{err}");
}

#[test]
fn an_incompatible_flow_refuses_to_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = flow(dir.path());
    let crashed = run_to_end(&flow, &[("STREAMFLOW_CRASH_AFTER_COMMIT", "2")]);
    assert!(!crashed.status.success());
    let text = std::fs::read_to_string(&flow).expect("read");
    std::fs::write(
        &flow,
        text.replace("name: w, type: window", "name: w2, type: window")
            .replace("input: w,", "input: w2,"),
    )
    .expect("write");
    let refused = run_to_end(&flow, &[]);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("'w' (window) has state in checkpoint 2 but is no longer in the flow"),
        "{err}"
    );
    assert!(err.contains("--allow-state-drop"), "{err}");
    let dropped = streamflow()
        .args(["run", &flow, "--quiet", "--allow-state-drop"])
        .output()
        .expect("run");
    assert!(dropped.status.success(), "{}", stderr(&dropped));
}

#[test]
fn sigterm_in_streaming_mode_takes_a_savepoint_and_the_restart_continues_exactly() {
    let expected = reference();
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = flow(dir.path());
    let text = std::fs::read_to_string(&flow).expect("read");
    std::fs::write(
        &flow,
        text.replace("mode: job", "mode: streaming")
            .replace("interval: 100ms", "interval: 1h"),
    )
    .expect("write");
    let child = streamflow()
        .args(["run", &flow, "--quiet"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(800));
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let stopped = child.wait_with_output().expect("wait");
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    // The only checkpoint (the interval is an hour) is the savepoint.
    let list = streamflow()
        .args(["checkpoints", "list", &flow])
        .output()
        .expect("list");
    let listing = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(listing.contains("yes"), "a final checkpoint: {listing}");
    let resumed = run_to_end(&flow, &[]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("resuming from checkpoint 1"));
    assert_eq!(published(dir.path()), expected);
}

/// A windowed job over JSON-lines files, resumed from file offsets.
fn file_flow(dir: &Path) -> String {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    for f in 0..3 {
        let mut text = String::new();
        // Over 1 MiB per file: read in several chunks, so offsets fall mid-file.
        for i in 0..40_000 {
            let n = f * 40_000 + i;
            text.push_str(&format!(
                "{{\"t\": {}, \"k\": \"k{}\", \"v\": {n}}}\n",
                1_700_000_000_000i64 + n * 2,
                n % 5
            ));
        }
        std::fs::write(input.join(format!("part-{f}.jsonl")), text).expect("write");
    }
    write(
        dir,
        "flow.yaml",
        &format!(
            "name: files\nmode: job\ncheckpoint: {{interval: 20ms, storage: {state}}}\nsources:\n  - name: ev\n    type: file\n    config: {{path: \"{input}/*.jsonl\", timestamps: [t], batch_size: 100}}\n    event_time: {{column: t}}\nstages:\n  - {{name: w, type: window, input: ev, key_by: [k], window: {{kind: tumbling, size: 1s}}, aggregates: {{n: \"count(*)\", s: \"sum(v)\"}}}}\nsinks:\n  - {{name: out, type: file, input: w, config: {{path: {out}}}}}\n",
            state = dir.join("state").display(),
            input = input.display(),
            out = dir.join("out").display(),
        ),
    )
}

/// One file over the split size, read by a source of parallelism 2 (each
/// instance a byte range of it).
fn split_file_flow(dir: &Path) -> String {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    let mut text = String::new();
    for n in 0..100_000i64 {
        text.push_str(&format!(
            "{{\"t\": {}, \"k\": \"k{}\", \"v\": {n}, \"pad\": \"{}\"}}\n",
            1_700_000_000_000i64 + n * 2,
            n % 5,
            "p".repeat((n % 23) as usize)
        ));
    }
    assert!(text.len() > 4 << 20, "several ranges of 1 MB");
    std::fs::write(input.join("big.jsonl"), text).expect("write");
    write(
        dir,
        "flow.yaml",
        &format!(
            "name: split\nmode: job\ncheckpoint: {{interval: 20ms, storage: {state}}}\nsources:\n  - name: ev\n    type: file\n    parallelism: 2\n    config: {{path: \"{input}/big.jsonl\", timestamps: [t], split_size: 1MB}}\n    event_time: {{column: t, watermark: {{max_out_of_orderness: 200s}}}}\nstages:\n  - {{name: w, type: window, input: ev, key_by: [k], window: {{kind: tumbling, size: 1s}}, aggregates: {{n: \"count(*)\", s: \"sum(v)\"}}}}\nsinks:\n  - {{name: out, type: file, input: w, config: {{path: {out}}}}}\n",
            state = dir.join("state").display(),
            input = input.display(),
            out = dir.join("out").display(),
        ),
    )
}

/// Runs `make_flow`'s job once straight and once interrupted after
/// checkpoint commits (up to three times) and resumed; returns what the
/// straight run published, after checking the resumed run published the same.
fn straight_equals_interrupted(make_flow: fn(&Path) -> String) -> Vec<String> {
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let done = run_to_end(&make_flow(reference_dir.path()), &[]);
    assert!(done.status.success(), "{}", stderr(&done));
    let expected = published(reference_dir.path());

    let dir = tempfile::tempdir().expect("tempdir");
    let flow = make_flow(dir.path());
    let mut crash_at = 1;
    let mut crashes = 0;
    for _ in 0..3 {
        let run = run_to_end(
            &flow,
            &[("STREAMFLOW_CRASH_AFTER_COMMIT", &crash_at.to_string())],
        );
        if run.status.success() {
            break; // finished before reaching that checkpoint
        }
        crashes += 1;
        crash_at += 2;
    }
    assert!(crashes > 0, "the job was interrupted at least once");
    let last = run_to_end(&flow, &[]);
    assert!(last.status.success(), "{}", stderr(&last));
    assert!(stderr(&last).contains("resuming from checkpoint"));
    assert_eq!(published(dir.path()), expected);
    expected
}

#[test]
fn a_split_file_read_in_parallel_resumes_exactly() {
    let expected = straight_equals_interrupted(split_file_flow);
    // Every record is counted once: 100 000 records in 200 windows of 500.
    assert_eq!(expected.len(), 200 * 5);
}

#[test]
fn a_file_source_resumes_from_its_recorded_offsets() {
    let expected = straight_equals_interrupted(file_flow);
    assert!(expected.len() > 100);
}

#[test]
fn synchronous_snapshots_and_a_restore_at_another_parallelism_give_the_same_output() {
    let expected = reference();
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = flow(dir.path());
    let text = std::fs::read_to_string(&flow).expect("read");
    std::fs::write(
        &flow,
        text.replace("interval: 100ms,", "interval: 100ms, async: false,"),
    )
    .expect("write");
    // Keyed stages at parallelism 3: their state is split by key group.
    let wide = [
        "--set",
        "stages.w.parallelism=3",
        "--set",
        "stages.top.parallelism=3",
    ];
    let mut crashed = streamflow();
    crashed
        .args(["run", &flow, "--quiet"])
        .args(wide)
        .env("STREAMFLOW_CRASH_AFTER_COMMIT", "6");
    let crashed = crashed.output().expect("run");
    assert!(!crashed.status.success(), "crashed at checkpoint 6");
    // Restored at parallelism 2.
    let narrow = streamflow()
        .args([
            "run",
            &flow,
            "--quiet",
            "--set",
            "stages.w.parallelism=2",
            "--set",
            "stages.top.parallelism=2",
        ])
        .output()
        .expect("run");
    assert!(narrow.status.success(), "{}", stderr(&narrow));
    assert!(stderr(&narrow).contains("resuming from checkpoint 6"));
    assert_eq!(published(dir.path()), expected);
}

#[test]
fn the_exactly_once_example_runs_and_ends_with_a_final_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = common::root().join("examples/exactly_once.yaml");
    let flow = flow.to_string_lossy().into_owned();
    let state = format!("checkpoint.storage={}", dir.path().join("state").display());
    let out = format!("sinks.out.config.path={}", dir.path().join("out").display());
    let small = "sources.bids.config.events=20000";
    let run = streamflow()
        .args([
            "run", &flow, "--quiet", "--set", &state, "--set", &out, "--set", small,
        ])
        .output()
        .expect("run");
    assert!(run.status.success(), "{}", stderr(&run));
    let rows: usize = std::fs::read_dir(dir.path().join("out"))
        .expect("out")
        .map(|e| {
            std::fs::read_to_string(e.expect("entry").path())
                .expect("read")
                .lines()
                .count()
        })
        .sum();
    assert!(rows > 0, "windows were written");
    assert!(
        std::fs::read_dir(dir.path().join("out"))
            .expect("out")
            .all(|e| !e
                .expect("entry")
                .path()
                .to_string_lossy()
                .ends_with(".inprogress")),
        "every file is published"
    );
    let list = streamflow()
        .args(["checkpoints", "list", &flow, "--set", &state])
        .output()
        .expect("list");
    let listing = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        listing.lines().last().is_some_and(|l| l.ends_with("yes")),
        "{listing}"
    );
}

/// Checkpoints in object stores — a NATS JetStream object store on the
/// local server, and S3 (moto on 127.0.0.1:15000, started by `.ci/run`):
/// a crash right after checkpoint 4 is committed resumes from it, and the
/// output is exactly that of an uninterrupted run.
#[test]
fn checkpoints_in_object_stores_resume_exactly() {
    let expected = reference();
    let nats =
        std::env::var("STREAMFLOW_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let s3 = std::env::var("STREAMFLOW_S3_URL").unwrap_or_else(|_| "http://127.0.0.1:15000".into());
    let bucket = common::unique("chk").replace('_', "-");
    // moto takes any credentials; the bucket is made here, as an operator would.
    let made = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(common::http().put(format!("{s3}/{bucket}")).send())
        .expect("the S3 server (moto) answers");
    assert!(made.status().is_success(), "creating the bucket: {made:?}");
    let s3_env = [
        ("AWS_ENDPOINT", s3.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    for (storage, env) in [
        (
            format!("{}/{bucket}/chaos", nats.trim_end_matches('/')),
            &[][..],
        ),
        (format!("s3://{bucket}/flows/chaos"), &s3_env[..]),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let flow = flow_in(dir.path(), &storage);
        let mut crash = env.to_vec();
        crash.push(("STREAMFLOW_CRASH_AFTER_COMMIT", "4"));
        let crashed = run_to_end(&flow, &crash);
        assert!(!crashed.status.success(), "{storage}: the crash hook fired");
        let mut list = streamflow();
        list.args(["checkpoints", "list", &flow])
            .envs(env.iter().copied());
        let listed = list.output().expect("list");
        assert!(
            String::from_utf8_lossy(&listed.stdout).contains("     4 "),
            "{storage}: {}{}",
            String::from_utf8_lossy(&listed.stdout),
            stderr(&listed)
        );
        let resumed = run_to_end(&flow, env);
        assert!(resumed.status.success(), "{storage}: {}", stderr(&resumed));
        assert!(
            stderr(&resumed).contains("resuming from checkpoint 4"),
            "{storage}: {}",
            stderr(&resumed)
        );
        assert!(
            published(dir.path()) == expected,
            "{storage}: the output differs"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(nats.as_str()).await.expect("connect");
        async_nats::jetstream::new(client)
            .delete_object_store(&bucket)
            .await
            .expect("the bucket was made in NATS");
    });
}
