//! `streamflow worker`, `streamflow run --cluster` and `streamflow cluster
//! members` against the local NATS JetStream server (127.0.0.1:4222,
//! started by `.ci/run`): workers join, a killed one vanishes after the
//! ttl, a stopped (SIGSTOP) one is removed and, resumed, finds itself
//! fenced and exits; a stopped one (SIGTERM) leaves at once. Flows run over
//! three worker processes give what one process gives.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, streamflow};

fn url() -> String {
    std::env::var("STREAMFLOW_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

struct Workers {
    cluster: String,
    children: Vec<(String, Child)>,
}

impl Workers {
    fn args(&self) -> Vec<String> {
        vec![
            "--cluster".into(),
            url(),
            "--cluster-name".into(),
            self.cluster.clone(),
            "--ttl".into(),
            "2s".into(),
        ]
    }

    fn start(&mut self, name: &str) {
        self.start_with(name, Stdio::piped());
    }

    fn start_with(&mut self, name: &str, stderr: impl Into<Stdio>) {
        self.start_exchanging(name, stderr, "direct");
    }

    /// Starts a worker whose inbound channels travel `exchange` (`direct`
    /// or `nats`).
    fn start_exchanging(&mut self, name: &str, stderr: impl Into<Stdio>, exchange: &str) {
        let child = streamflow()
            .arg("worker")
            .args(self.args())
            .args(["--name", name, "--slots", "2", "--exchange", exchange])
            .env("STREAMFLOW_LOG", "info")
            .stderr(stderr)
            .spawn()
            .expect("spawn worker");
        self.children.push((name.to_string(), child));
    }

    fn child(&mut self, name: &str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("a started worker")
            .1
    }

    fn signal(&mut self, name: &str, signal: &str) {
        let pid = self.child(name).id().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn members(&self) -> Vec<String> {
        let out = streamflow()
            .args(["cluster", "members", "--json"])
            .args(self.args())
            .output()
            .expect("members");
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let m: serde_json::Value = serde_json::from_str(l).expect("json member");
                assert_eq!(m["slots"], 2);
                m["name"].as_str().expect("name").to_string()
            })
            .collect()
    }

    /// Waits until the members are `want`.
    fn await_members(&self, want: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.members();
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members {now:?}, expected {want:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Workers {
    /// Waits (20 s at most) until worker `name` has exited.
    fn await_exit(&mut self, name: &str) -> std::process::ExitStatus {
        let child = self.child(name);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "worker '{name}' exits");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `run` (a `streamflow run`) on the cluster, its coordinator
    /// logging at info to `log`.
    fn coordinate(&self, mut run: std::process::Command, log: &std::path::Path) -> Child {
        run.args(self.args())
            .env("STREAMFLOW_LOG", "info")
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("run --cluster")
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = streamflow()
            .args(["cluster", "dissolve"])
            .args(self.args())
            .output();
    }
}

#[test]
fn workers_join_expire_are_fenced_and_leave() {
    let mut w = Workers {
        cluster: common::unique("cluster"),
        children: Vec::new(),
    };
    for name in ["w1", "w2", "w3"] {
        w.start(name);
    }
    w.await_members(&["w1", "w2", "w3"]);

    // A second worker under a live name is refused.
    let out = streamflow()
        .arg("worker")
        .args(w.args())
        .args(["--name", "w3"])
        .output()
        .expect("duplicate");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("a worker named 'w3' is already in cluster"),
        "{}",
        stderr(&out)
    );

    // Killed: gone once its ttl has passed.
    w.signal("w1", "-KILL");
    w.await_members(&["w2", "w3"]);

    // Stopped past the ttl: removed; resumed, it finds its membership taken
    // away (its renewal is refused) and exits rather than act.
    w.signal("w2", "-STOP");
    w.await_members(&["w3"]);
    w.signal("w2", "-CONT");
    let status = w.await_exit("w2");
    assert!(!status.success());
    let mut err = String::new();
    let w2 = w.child("w2");
    std::io::Read::read_to_string(&mut w2.stderr.take().expect("stderr"), &mut err).expect("read");
    assert!(
        err.contains("worker 'w2' was removed from cluster"),
        "{err}"
    );
    assert!(err.contains("lost the lease 'w2'"), "{err}");

    // SIGTERM: leaves at once, without waiting for the ttl.
    w.signal("w3", "-TERM");
    let w3 = w.child("w3");
    assert!(w3.wait().expect("wait").success());
    assert!(w.members().is_empty(), "left at once");
}

/// Sorted lines of every file under `dir`.
fn lines_under(dir: &std::path::Path) -> Vec<String> {
    sorted_lines(dir, |_| true)
}

/// Sorted lines of the files under `dir` that `keep` accepts.
fn sorted_lines(dir: &std::path::Path, keep: impl Fn(&std::path::Path) -> bool) -> Vec<String> {
    let mut rows: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|f| f.expect("entry").path())
        .filter(|p| keep(p))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .expect("read")
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    rows
}

/// Workers w1, w2 and w3 of a new cluster, each logging (at info) to
/// `<dir>/<name>.log`; returns them once all three are members.
fn three_logged_workers(
    cluster: &str,
    dir: &std::path::Path,
) -> (Workers, Vec<std::path::PathBuf>) {
    let mut w = Workers {
        cluster: common::unique(cluster),
        children: Vec::new(),
    };
    let names = ["w1", "w2", "w3"];
    let logs: Vec<_> = names.iter().map(|n| dir.join(format!("{n}.log"))).collect();
    // The channels into w3 are relayed by NATS, the others' come direct.
    for (name, log) in names.iter().zip(&logs) {
        let exchange = if *name == "w3" { "nats" } else { "direct" };
        w.start_exchanging(name, std::fs::File::create(log).expect("log"), exchange);
    }
    w.await_members(&names);
    (w, logs)
}

#[test]
fn flows_run_over_three_workers_as_in_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, logs) = three_logged_workers("jobs", dir.path());
    let worker_logs = || {
        logs.iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Nexmark q5's keyed sliding windows and q3's join, each node with three
    // instances: every keyed channel between instances on different workers
    // crosses processes, over TCP into w1 and w2, through NATS into w3.
    let root = common::root();
    for (query, parallel) in [
        (
            "q5",
            "sources.bids.parallelism=3,stages.q5.parallelism=3,sources.bids.config.events=200000",
        ),
        (
            "q3",
            "sources.auctions.parallelism=3,sources.persons.parallelism=3,stages.joined.parallelism=3,sources.auctions.config.events=200000,sources.persons.config.events=200000",
        ),
    ] {
        let flow = root.join(format!("examples/nexmark/{query}.yaml"));
        let flow = flow.to_str().expect("path");
        let sets: Vec<String> = parallel.split(',').map(str::to_string).collect();
        let single = dir.path().join(format!("{query}-single"));
        let spread = dir.path().join(format!("{query}-cluster"));
        let with_out = |out: &std::path::Path| {
            let mut args = vec!["run".to_string(), flow.to_string()];
            for s in sets
                .iter()
                .cloned()
                .chain([format!("sinks.out.config.path={}", out.display())])
            {
                args.push("--set".into());
                args.push(s);
            }
            args
        };
        let one = streamflow()
            .args(with_out(&single))
            .arg("--quiet")
            .output()
            .expect("run");
        assert!(one.status.success(), "{}", stderr(&one));
        let many = streamflow()
            .args(with_out(&spread))
            .args(w.args())
            .output()
            .expect("run --cluster");
        assert!(
            many.status.success(),
            "{query}: {}\nworkers:\n{}",
            stderr(&many),
            worker_logs()
        );
        assert!(
            stderr(&many).contains("ran on 3 workers"),
            "{}",
            stderr(&many)
        );
        let (expected, got) = (lines_under(&single), lines_under(&spread));
        assert!(
            expected.len() > 100,
            "{query}: only {} rows",
            expected.len()
        );
        assert_eq!(got.len(), expected.len(), "{query}");
        assert!(got == expected, "{query}: the rows differ");
    }
    // The workers ran their shares and are still there for the next flow.
    assert_eq!(w.members(), ["w1", "w2", "w3"]);
    let logs = worker_logs();
    assert_eq!(logs.matches("share finished").count(), 6, "{logs}");
    for way in ["way=direct", "way=relay"] {
        assert!(logs.contains(way), "no channel went {way}: {logs}");
    }
}

#[test]
fn a_killed_worker_fails_the_run_and_frees_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut w, logs) = three_logged_workers("killed", dir.path());
    let flow = common::root().join("examples/nexmark/q5.yaml");
    let cluster_args = w.args();
    let run = |events: u64, out: &str| {
        let mut cmd = streamflow();
        cmd.arg("run")
            .arg(&flow)
            .args(&cluster_args)
            .args(["--set", "sources.bids.parallelism=3"])
            .args(["--set", "stages.q5.parallelism=3"])
            .args(["--set", &format!("sources.bids.config.events={events}")])
            .args(["--set", "sources.bids.config.rate=100000"])
            .args([
                "--set",
                &format!("sinks.out.config.path={}", dir.path().join(out).display()),
            ]);
        cmd
    };
    // Paced to run for about a minute; one worker is killed on the way.
    let running = run(6_000_000, "long")
        .stderr(Stdio::piped())
        .spawn()
        .expect("run --cluster");
    let shares_started = || {
        logs.iter()
            .map(|l| {
                std::fs::read_to_string(l)
                    .unwrap_or_default()
                    .matches("share started")
                    .count()
            })
            .sum::<usize>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while shares_started() < 3 {
        assert!(Instant::now() < deadline, "the shares did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    w.signal("w2", "-KILL");
    let killed = Instant::now();
    let out = running.wait_with_output().expect("wait");
    assert!(!out.status.success());
    // Either the coordinator saw w2's lease expire, or a survivor's
    // channel to or from w2 broke first (direct channels notice at once):
    // both name the lost worker.
    let why = stderr(&out);
    assert!(
        why.contains("worker 'w2' left the cluster while running its share of 'nexmark-q5'")
            || (why.contains("worker 'w2'") && why.contains("its worker stopped or was lost")),
        "{why}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "noticed after {:?}",
        killed.elapsed()
    );
    // The others dropped their shares and take the next flow.
    w.await_members(&["w1", "w3"]);
    let next = run(50_000, "next").output().expect("run");
    assert!(next.status.success(), "{}", stderr(&next));
    assert!(
        stderr(&next).contains("ran on 2 workers"),
        "{}",
        stderr(&next)
    );
    for log in [&logs[0], &logs[2]] {
        let text = std::fs::read_to_string(log).expect("log");
        assert!(text.contains("assignment withdrawn"), "{text}");
    }

    // A killed coordinator: the workers drop their shares once its lease
    // has expired, and the flow can be run again.
    let before = shares_started();
    let mut coordinator = run(6_000_000, "orphaned")
        .stderr(Stdio::null())
        .spawn()
        .expect("run --cluster");
    let deadline = Instant::now() + Duration::from_secs(30);
    while shares_started() < before + 2 {
        assert!(Instant::now() < deadline, "the shares did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    coordinator.kill().expect("kill");
    coordinator.wait().expect("wait");
    let deadline = Instant::now() + Duration::from_secs(20);
    let orphaned = || {
        [&logs[0], &logs[2]].iter().all(|l| {
            std::fs::read_to_string(l)
                .unwrap_or_default()
                .contains("coordinator is gone")
        })
    };
    while !orphaned() {
        assert!(
            Instant::now() < deadline,
            "the shares of a dead coordinator were kept: {}",
            [&logs[0], &logs[2]]
                .iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let again = run(50_000, "again").output().expect("run");
    assert!(again.status.success(), "{}", stderr(&again));
}

/// Sorted lines of the published files under `dir` (not the `.inprogress`
/// ones an exactly-once sink has not committed).
fn published_under(dir: &std::path::Path) -> Vec<String> {
    sorted_lines(dir, |p| p.extension().is_none_or(|e| e != "inprogress"))
}

/// Waits until `files` together hold `text` `times` times.
fn await_text(files: &[std::path::PathBuf], text: &str, times: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let all: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        if all.matches(text).count() >= times {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "'{text}' seen {} times, expected {times}:\n{all}",
            all.matches(text).count()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The exactly-once acceptance of scale-out: a checkpointed keyed window
/// with an exactly-once file sink, every node with three instances, over
/// three workers; one worker is SIGKILLed mid-run (the flow restarts from
/// its last checkpoint on the other two), then the coordinator (a worker
/// takes the flow over through its lease), then a fourth worker joins (the
/// flow moves onto it after a checkpoint). The published rows are exactly
/// those of one uninterrupted process.
#[test]
fn a_checkpointed_flow_outlives_a_killed_worker_and_coordinator_and_takes_in_a_new_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut w, mut logs) = three_logged_workers("exactly", dir.path());
    let run = |tag: &str, rate: u64| exactly_once_flow(dir.path(), tag, rate, 4_000_000);
    let expected = uninterrupted(run("single", 100_000_000), &dir.path().join("single"));

    // Paced to about 40 s: time for the three blows below.
    let coordinator_log = dir.path().join("coordinator.log");
    let mut coordinator = w.coordinate(run("cluster", 100_000), &coordinator_log);
    let coordinator_logs = [coordinator_log.clone()];
    await_text(
        &coordinator_logs,
        "checkpoint complete",
        2,
        Duration::from_secs(30),
    );

    // 1. A worker killed: the run restarts from its last checkpoint on w1, w3.
    w.signal("w2", "-KILL");
    await_text(
        &coordinator_logs,
        "restarting the flow",
        1,
        Duration::from_secs(20),
    );
    let completed = std::fs::read_to_string(&coordinator_log)
        .expect("log")
        .matches("checkpoint complete")
        .count();
    await_text(
        &coordinator_logs,
        "checkpoint complete",
        completed + 2,
        Duration::from_secs(30),
    );

    // 2. The coordinator killed: a worker takes the flow over.
    coordinator.kill().expect("kill");
    coordinator.wait().expect("wait");
    await_text(
        &logs,
        "coordinating it from its last complete checkpoint",
        1,
        Duration::from_secs(30),
    );
    await_text(&logs, "checkpoint complete", 1, Duration::from_secs(30));

    // 3. A fourth worker joins: the flow moves onto it after a checkpoint.
    let w4_log = dir.path().join("w4.log");
    w.start_with("w4", std::fs::File::create(&w4_log).expect("log"));
    logs.push(w4_log.clone());
    await_text(
        &logs,
        "moving onto the 3 workers present",
        1,
        Duration::from_secs(30),
    );
    await_text(&[w4_log], "share started", 1, Duration::from_secs(30));

    await_text(&logs, "flow taken over ended", 1, Duration::from_secs(120));
    let got = published_under(&dir.path().join("cluster"));
    assert_eq!(got.len(), expected.len(), "rows published");
    assert!(
        got == expected,
        "the rows differ from one uninterrupted run"
    );
}

/// `examples/exactly_once.yaml` with every node at three instances,
/// `events` bids paced at `rate` a second, its state and output under
/// `dir/<tag>-state` and `dir/<tag>`.
fn exactly_once_flow(
    dir: &std::path::Path,
    tag: &str,
    rate: u64,
    events: u64,
) -> std::process::Command {
    let mut cmd = streamflow();
    cmd.arg("run")
        .arg(common::root().join("examples/exactly_once.yaml"));
    for set in exactly_once_settings(dir, tag, rate, events) {
        cmd.args(["--set", &set]);
    }
    cmd
}

/// The `--set`s of [`exactly_once_flow`].
fn exactly_once_settings(dir: &std::path::Path, tag: &str, rate: u64, events: u64) -> Vec<String> {
    vec![
        "sources.bids.parallelism=3".to_string(),
        "stages.per_auction.parallelism=3".into(),
        "sinks.out.parallelism=3".into(),
        format!("sources.bids.config.events={events}"),
        format!("sources.bids.config.rate={rate}"),
        "checkpoint.interval=500ms".into(),
        format!(
            "checkpoint.storage={}",
            dir.join(format!("{tag}-state")).display()
        ),
        format!("sinks.out.config.path={}", dir.join(tag).display()),
    ]
}

/// Runs `cmd` in one process to its end; the rows it published in `out`.
fn uninterrupted(mut cmd: std::process::Command, out: &std::path::Path) -> Vec<String> {
    let done = cmd.arg("--quiet").output().expect("run");
    assert!(done.status.success(), "{}", stderr(&done));
    let rows = published_under(out);
    assert!(rows.len() > 1000, "only {} rows", rows.len());
    rows
}

/// A worker paused (SIGSTOP) past the ttl is removed and the flow restarts
/// without it; resumed, the worker finds its lease gone and exits, and
/// nothing its old share still held is published: the rows are exactly
/// those of one uninterrupted process.
#[test]
fn a_paused_worker_is_fenced_and_the_checkpointed_flow_goes_on_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut w, _logs) = three_logged_workers("paused", dir.path());
    let run = |tag: &str, rate: u64| exactly_once_flow(dir.path(), tag, rate, 2_000_000);
    let expected = uninterrupted(run("single", 100_000_000), &dir.path().join("single"));
    let coordinator_log = dir.path().join("coordinator.log");
    let coordinator = w.coordinate(run("cluster", 100_000), &coordinator_log);
    let coordinator_logs = [coordinator_log.clone()];
    await_text(
        &coordinator_logs,
        "checkpoint complete",
        2,
        Duration::from_secs(30),
    );
    w.signal("w2", "-STOP");
    await_text(
        &coordinator_logs,
        "restarting the flow",
        1,
        Duration::from_secs(20),
    );
    w.signal("w2", "-CONT");
    w.await_exit("w2");
    let ended = coordinator.wait_with_output().expect("wait");
    let log = std::fs::read_to_string(&coordinator_log).expect("log");
    assert!(ended.status.success(), "{log}");
    assert!(
        log.contains("left the cluster while running its share"),
        "{log}"
    );
    let got = published_under(&dir.path().join("cluster"));
    assert_eq!(got.len(), expected.len(), "rows published");
    assert!(
        got == expected,
        "the rows differ from one uninterrupted run"
    );
}

/// `serve --cluster`: a flow submitted to the control plane runs over the
/// cluster's workers, the server coordinating it, its checkpoints in the
/// cluster's JetStream object store, and ends SUCCEEDED with exactly the
/// rows of one uninterrupted process.
#[test]
fn serve_with_a_cluster_runs_submitted_flows_over_its_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, logs) = three_logged_workers("served", dir.path());
    let expected = uninterrupted(
        exactly_once_flow(dir.path(), "single", 400_000, 1_000_000),
        &dir.path().join("single"),
    );
    let cluster = w.args();
    let server = common::server::Server::start(
        &dir.path().join("data"),
        &cluster.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // The example without its storage: its checkpoints go to the cluster's
    // object store.
    let example = std::fs::read_to_string(common::root().join("examples/exactly_once.yaml"))
        .expect("the example");
    let flow = common::write(
        dir.path(),
        "served.yaml",
        &example
            .lines()
            .filter(|l| !l.trim_start().starts_with("storage:"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let mut submit = vec!["submit".to_string(), flow];
    for set in exactly_once_settings(dir.path(), "served", 400_000, 1_000_000)
        .into_iter()
        .filter(|s| !s.starts_with("checkpoint.storage="))
    {
        submit.extend(["--set".to_string(), set]);
    }
    let submitted = server.cli(&submit.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(submitted.status.success(), "{}", stderr(&submitted));
    let status = server.wait_status("exactly-once", |s| {
        s["state"] == "SUCCEEDED" || s["state"] == "FAILED"
    });
    assert_eq!(status["state"], "SUCCEEDED", "{status}");
    let got = published_under(&dir.path().join("served"));
    if got != expected {
        let missing = expected.iter().filter(|r| !got.contains(r)).count();
        let extra = got.iter().filter(|r| !expected.contains(r)).count();
        panic!(
            "the rows differ from one process's: {} rows, expected {} ({missing} missing, {extra} not expected)\nserver:\n{}",
            got.len(),
            expected.len(),
            server.log.lock().expect("log").join("\n")
        );
    }
    // Every worker ran a share; the server said where the flow ran.
    await_text(&logs, "share finished", 3, Duration::from_secs(10));
    let events = server.events("exactly-once");
    let kinds = common::server::kinds(&events);
    assert!(kinds.contains(&"checkpoint_completed"), "{events}");
    let started = events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event"] == "started")
        .expect("a started event");
    assert!(
        started["detail"]
            .as_str()
            .is_some_and(|d| d.contains("on cluster")),
        "{started}"
    );
}

/// Backpressure across processes: the one `stdout` sink of a flow sits on
/// one of three workers, whose standard output nobody reads for a while;
/// the sources on every worker (1 KiB rows, far more than fits in memory
/// budgets) are held back through the channels' TCP connections instead of
/// buffering, so every worker's memory stays bounded, and once the output
/// is read everything arrives, each row once.
#[test]
fn a_stalled_sink_on_one_worker_holds_back_the_sources_on_every_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = Workers {
        cluster: common::unique("stalled"),
        children: Vec::new(),
    };
    let names = ["w1", "w2", "w3"];
    let logs: Vec<_> = names
        .iter()
        .map(|n| dir.path().join(format!("{n}.log")))
        .collect();
    for (name, log) in names.iter().zip(&logs) {
        let child = streamflow()
            .arg("worker")
            .args(w.args())
            .args(["--name", name, "--slots", "2"])
            .env("STREAMFLOW_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("spawn worker");
        w.children.push((name.to_string(), child));
    }
    w.await_members(&names);
    // 1.2 M rows of about 1 KiB: 400 MB from each worker's source.
    let rows = 1_200_000u64;
    let flow = common::write(
        dir.path(),
        "stalled.yaml",
        &format!(
            "name: stalled\nmode: job\nsources:\n  - {{name: g, type: generator, parallelism: 3, config: {{count: {rows}, batch_size: 1024, columns: {{id: i, pad: \"repeat('x', 1000)\"}}}}}}\nsinks:\n  - {{name: out, type: stdout, input: g}}\n"
        ),
    );
    let mut run = w.coordinate(
        {
            let mut c = streamflow();
            c.args(["run", &flow]);
            c
        },
        &dir.path().join("coordinator.log"),
    );
    // Nobody reads the sink's output: its pipe fills, the sink blocks.
    let mut peak = vec![0u64; names.len()];
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        for (p, (_, child)) in peak.iter_mut().zip(&w.children) {
            *p = (*p).max(common::rss_kib(child.id()).unwrap_or(0));
        }
    }
    assert!(
        peak.iter().all(|&p| p > 0),
        "could not read the workers' memory"
    );
    for (name, p) in names.iter().zip(&peak) {
        assert!(
            *p < 250 * 1024,
            "worker {name} grew to {p} KiB while the sink was stalled"
        );
    }
    assert!(
        run.try_wait().expect("wait").is_none(),
        "the run ended while its sink was stalled"
    );
    // Read every worker's output now: the flow drains to its end.
    let readers: Vec<_> = w
        .children
        .iter_mut()
        .map(|(_, child)| {
            let out = child.stdout.take().expect("stdout");
            std::thread::spawn(move || {
                use std::io::BufRead;
                std::io::BufReader::new(out)
                    .lines()
                    .map_while(Result::ok)
                    .map(|l| {
                        // `{"id":N,"pad":"xxx…"}`: the id alone is read.
                        let id = l
                            .strip_prefix("{\"id\":")
                            .and_then(|r| r.split(',').next())
                            .unwrap_or_else(|| panic!("a row: {}", &l[..l.len().min(80)]));
                        id.parse::<i64>().expect("id")
                    })
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = run.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            panic!(
                "the run did not end once its output was read:\n{}",
                std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap_or_default()
    );
    // The run is over: the workers' output ends when they are stopped.
    for name in names {
        w.signal(name, "-TERM");
    }
    let mut ids: Vec<i64> = readers
        .into_iter()
        .flat_map(|r| r.join().expect("reader"))
        .collect();
    ids.sort_unstable();
    let sent = ids.len();
    ids.dedup();
    assert_eq!(sent, ids.len(), "rows arrived twice");
    assert_eq!(ids.len() as u64, rows, "rows were lost");
    // The sources on the other workers were held back by the sink's.
    let waited: f64 = logs
        .iter()
        .flat_map(|l| {
            std::fs::read_to_string(l)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("remote channel ended"))
                .filter_map(|l| {
                    l.split("held_back=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<f64>()
                        .ok()
                })
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(waited > 2.0, "the remote senders were held back {waited} s");
    eprintln!("while stalled: peak RSS {peak:?} KiB; remote senders were held back {waited:.1} s");
}
