//! `process` stages: every node type's semantics, driven through flow
//! files, with real processors registered from Rust (counted calls, slow
//! and failing ones) and a local HTTP service.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use common::read_jsonl;
use serde_json::Value;
use streamflow::Pipeline;
use streamflow::process::{Components, ErrorHandler, NodeError, Processed, Processor};

/// A processor whose behaviour per record is scripted: it records every
/// call, waits `delay`, fails where `fail(id, call number)` says so, and
/// tags its output rows (`by` column) with its name.
struct Scripted {
    name: &'static str,
    delay: Duration,
    fail: Box<dyn Fn(i64, usize) -> Option<String> + Send + Sync>,
    calls: Mutex<Vec<(i64, Instant)>>,
    completed: AtomicUsize,
    /// Calls under way now, and the most seen at once.
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Scripted {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            delay: Duration::ZERO,
            fail: Box::new(|_, _| None),
            calls: Mutex::new(Vec::new()),
            completed: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
        }
    }
    fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    fn failing(mut self, f: impl Fn(i64, usize) -> Option<String> + Send + Sync + 'static) -> Self {
        self.fail = Box::new(f);
        self
    }
    fn called_ids(&self) -> Vec<i64> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .map(|c| c.0)
            .collect()
    }
    fn call_times(&self) -> Vec<Instant> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .map(|c| c.1)
            .collect()
    }
}

fn with_by(input: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = input
        .fields()
        .iter()
        .filter(|f| f.name() != "by")
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("by", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

#[async_trait]
impl Processor for Scripted {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, String> {
        Ok(with_by(input))
    }
    async fn process(&self, batch: RecordBatch) -> Result<Processed, String> {
        let ids = batch
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or("no id column")?
            .clone();
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let mut fails = Vec::new();
        {
            let mut calls = self.calls.lock().expect("lock");
            for r in 0..ids.len() {
                calls.push((ids.value(r), Instant::now()));
                if let Some(e) = (self.fail)(ids.value(r), calls.len()) {
                    fails.push((r, e));
                }
            }
        }
        tokio::time::sleep(self.delay).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.completed.fetch_add(1, Ordering::SeqCst);
        let keep: Vec<u32> = (0..ids.len() as u32)
            .filter(|r| !fails.iter().any(|(f, _)| *f == *r as usize))
            .collect();
        let kept =
            arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(keep))
                .map_err(|e| e.to_string())?;
        let schema = with_by(&batch.schema());
        let mut cols: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .filter(|f| f.name() != "by")
            .map(|f| Arc::clone(kept.column_by_name(f.name()).expect("column")))
            .collect();
        cols.push(Arc::new(StringArray::from(vec![
            self.name;
            kept.num_rows()
        ])));
        let output = RecordBatch::try_new(schema, cols).map_err(|e| e.to_string())?;
        Ok(Processed {
            output,
            failed: fails,
        })
    }
}

/// Runs a job flow: `count` generated records (`id`, `v = id * 10`) through
/// a process stage with `stage` settings (YAML, indented under the stage);
/// returns (output rows by id, dead letters).
fn run_stage(
    components: &Components,
    count: u64,
    source_extra: &str,
    stage: &str,
) -> (BTreeMap<i64, Value>, Vec<Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let dlq = dir.path().join("dlq.jsonl");
    let yaml = format!(
        "name: t\nmode: job\nsources:\n  - {{name: src, type: generator, config: {{count: {count}, columns: {{id: \"i\", v: \"i * 10\"}}{source_extra}}}}}\nstages:\n  - name: p\n    type: process\n    input: src\n    dlq: failed\n{stage}\nsinks:\n  - {{name: out, type: file, input: p, config: {{path: \"{}\"}}}}\n  - {{name: failed, type: file, config: {{path: \"{}\"}}}}\n",
        out.display(),
        dlq.display()
    );
    let spec = streamflow_dsl::parse_str(&yaml, streamflow_dsl::FileFormat::Yaml)
        .unwrap_or_else(|d| panic!("{d}\n{yaml}"));
    let pipeline =
        Pipeline::from_spec_with(&spec, components).unwrap_or_else(|d| panic!("{d}\n{yaml}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        pipeline
            .start()
            .await
            .expect("start")
            .wait()
            .await
            .expect("run")
    });
    let rows = |p: &std::path::Path| {
        if p.exists() {
            read_jsonl(p)
        } else {
            Vec::new()
        }
    };
    let by_id = rows(&out)
        .into_iter()
        .map(|r| (r["id"].as_i64().expect("id"), r))
        .collect();
    (by_id, rows(&dlq))
}

/// The dead letters' errors by record id.
fn errors(dlq: &[Value]) -> BTreeMap<i64, String> {
    dlq.iter()
        .map(|d| {
            let payload: Value =
                serde_json::from_str(d["payload"].as_str().expect("payload")).expect("json");
            (
                payload["id"].as_i64().expect("id"),
                d["error"].as_str().expect("error").to_string(),
            )
        })
        .collect()
}

fn registry(processors: &[(&str, Arc<Scripted>)]) -> Components {
    let c = Components::new();
    for (name, p) in processors {
        c.processor(*name, Arc::clone(p) as Arc<dyn Processor>);
    }
    c
}

#[test]
fn a_sequence_of_sql_processors_equals_a_map_stage_and_stops_at_the_first_error() {
    let c = Components::new();
    let (rows, dlq) = run_stage(
        &c,
        20,
        "",
        "    unit: batch\n    node:\n      type: sequence\n      children:\n        - {type: sql, map: {w: \"v + 1\"}}\n        - {type: sql, name: divide, map: {q: \"100 / (id - 3)\"}}\n        - {type: sql, map: {w: \"w * 2\"}}",
    );
    assert_eq!(rows.len(), 19);
    for (id, r) in &rows {
        assert_eq!(r["w"], (id * 10 + 1) * 2);
        assert_eq!(r["q"], 100 / (id - 3));
    }
    let e = errors(&dlq);
    assert_eq!(e.len(), 1);
    assert_eq!(e[&3], "sequence -> divide: Divide by zero error");
}

#[test]
fn retry_calls_a_failing_record_attempts_times_with_doubling_backoff() {
    // Record 1 fails twice then succeeds; record 2 always fails.
    let counts = Arc::new(Mutex::new(BTreeMap::<i64, usize>::new()));
    let seen = Arc::clone(&counts);
    let flaky = Arc::new(Scripted::new("flaky").failing(move |id, _| {
        let mut m = seen.lock().expect("lock");
        let n = m.entry(id).or_default();
        *n += 1;
        match id {
            1 if *n <= 2 => Some(format!("transient {n}")),
            2 => Some(format!("down {n}")),
            _ => None,
        }
    }));
    let c = registry(&[("flaky", Arc::clone(&flaky))]);
    let (rows, dlq) = run_stage(
        &c,
        4,
        "",
        "    unit: record\n    node: {type: retry, attempts: 3, backoff: 40ms, child: {ref: flaky}}",
    );
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), vec![0, 1, 3]);
    let calls = counts.lock().expect("lock").clone();
    assert_eq!(calls, BTreeMap::from([(0, 1), (1, 3), (2, 3), (3, 1)]));
    assert_eq!(errors(&dlq)[&2], "retry -> flaky: down 3");
    // The waits before the 2nd and 3rd attempts: 40 ms, then 80 ms.
    let times: Vec<Instant> = flaky
        .calls
        .lock()
        .expect("lock")
        .iter()
        .filter(|c| c.0 == 2)
        .map(|c| c.1)
        .collect();
    assert!(times[1] - times[0] >= Duration::from_millis(40));
    assert!(times[2] - times[1] >= Duration::from_millis(80));
}

#[test]
fn timeout_fails_the_slow_records_only() {
    let slow = Arc::new(Scripted::new("slow").delay(Duration::from_millis(400)));
    let fast = Arc::new(Scripted::new("fast"));
    let c = registry(&[("slow", slow), ("fast", fast)]);
    let (rows, dlq) = run_stage(
        &c,
        6,
        "",
        "    unit: record\n    node:\n      type: timeout\n      duration: 100ms\n      child:\n        type: filter\n        predicate: \"id % 2 = 0\"\n        then: {ref: slow}\n        else: {ref: fast}",
    );
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), vec![1, 3, 5]);
    let e = errors(&dlq);
    assert_eq!(e.keys().copied().collect::<Vec<_>>(), vec![0, 2, 4]);
    assert!(
        e.values().all(|m| m == "timeout: timed out after 100ms"),
        "{e:?}"
    );
}

#[test]
fn circuit_breaker_opens_fails_fast_and_recovers_through_half_open() {
    // The service fails its first three calls, then works.
    let service = Arc::new(
        Scripted::new("service")
            .failing(|_, call| (call <= 3).then(|| format!("unavailable (call {call})"))),
    );
    let c = registry(&[("service", Arc::clone(&service))]);
    // 40 records/s, one record per call: the 200 ms recovery spans several records.
    let (rows, dlq) = run_stage(
        &c,
        40,
        ", rate: 40, batch_size: 1",
        "    unit: record\n    concurrency: 1\n    node: {type: circuit-breaker, failure_threshold: 2, recovery_timeout: 200ms, child: {ref: service}}",
    );
    let called = service.called_ids();
    let e = errors(&dlq);
    // Closed: records 0 and 1 reach the service and fail; the breaker opens.
    assert_eq!(&called[..2], &[0, 1]);
    // Open: the records until the recovery timeout fail fast, uncalled.
    let (trial1, trial2) = (called[2], called[3]);
    assert!(
        trial1 > 2,
        "records were failed fast before the first trial: {called:?}"
    );
    for id in 2..trial1 {
        assert_eq!(e[&id], "circuit-breaker: circuit open: failing fast");
    }
    // Half-open: the trial fails (3rd call), which re-opens the breaker.
    assert_eq!(
        e[&trial1],
        "circuit-breaker -> service: unavailable (call 3)"
    );
    assert!(
        trial2 > trial1 + 1,
        "re-opened: records failed fast again: {called:?}"
    );
    for id in trial1 + 1..trial2 {
        assert_eq!(e[&id], "circuit-breaker: circuit open: failing fast");
    }
    // The next trial succeeds and closes it: every later record is called.
    assert_eq!(&called[3..], &(trial2..40).collect::<Vec<_>>()[..]);
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        (trial2..40).collect::<Vec<_>>()
    );
}

#[test]
fn rate_limit_spaces_calls_by_the_token_rate() {
    let api = Arc::new(Scripted::new("api"));
    let c = registry(&[("api", Arc::clone(&api))]);
    let (rows, _) = run_stage(
        &c,
        12,
        "",
        "    unit: record\n    node: {type: rate-limit, requests_per_second: 25, burst_size: 2, child: {ref: api}}",
    );
    assert_eq!(rows.len(), 12);
    let t = api.call_times();
    // A burst of 2, then one token each 40 ms: the 12th call waits for 10 tokens.
    assert!(
        t[11] - t[0] >= Duration::from_millis(390),
        "{:?}",
        t[11] - t[0]
    );
    let mut sorted = t.clone();
    sorted.sort();
    for w in sorted[2..].windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(30),
            "{:?}",
            w[1] - w[0]
        );
    }
}

#[test]
fn rate_limit_in_drop_mode_fails_records_beyond_the_burst() {
    let api = Arc::new(Scripted::new("api"));
    let c = registry(&[("api", Arc::clone(&api))]);
    let (rows, dlq) = run_stage(
        &c,
        10,
        "",
        "    unit: record\n    concurrency: 1\n    node: {type: rate-limit, requests_per_second: 0.5, burst_size: 3, mode: drop, child: {ref: api}}",
    );
    assert_eq!(rows.len(), 3);
    assert_eq!(dlq.len(), 7);
    assert!(
        errors(&dlq)
            .values()
            .all(|e| e == "rate-limit: rate limit exceeded")
    );
    assert_eq!(api.called_ids().len(), 3);
}

#[test]
fn fallback_runs_the_backup_for_failed_records_and_reports_its_error() {
    let primary = Arc::new(
        Scripted::new("primary").failing(|id, _| (id % 2 == 1).then(|| "primary down".into())),
    );
    let backup =
        Arc::new(Scripted::new("backup").failing(|id, _| (id == 3).then(|| "backup down".into())));
    let c = registry(&[("primary", primary), ("backup", Arc::clone(&backup))]);
    let (rows, dlq) = run_stage(
        &c,
        6,
        "",
        "    node: {type: fallback, children: [{ref: primary}, {ref: backup}]}",
    );
    let by: Vec<(i64, &str)> = rows
        .iter()
        .map(|(id, r)| (*id, r["by"].as_str().expect("by")))
        .collect();
    assert_eq!(
        by,
        vec![
            (0, "primary"),
            (1, "backup"),
            (2, "primary"),
            (4, "primary"),
            (5, "backup")
        ]
    );
    let mut called = backup.called_ids();
    called.sort();
    assert_eq!(called, vec![1, 3, 5]);
    assert_eq!(
        errors(&dlq),
        BTreeMap::from([(3, "fallback -> backup: backup down".to_string())])
    );
}

#[test]
fn race_takes_the_first_success_and_cancels_the_rest() {
    let slow = Arc::new(Scripted::new("slow").delay(Duration::from_millis(600)));
    let fast = Arc::new(
        Scripted::new("fast")
            .delay(Duration::from_millis(20))
            .failing(|id, _| (id == 2).then(|| "fast failed".into())),
    );
    let c = registry(&[("slow", Arc::clone(&slow)), ("fast", fast)]);
    let (rows, dlq) = run_stage(
        &c,
        3,
        "",
        "    unit: record\n    node: {type: race, children: [{ref: slow}, {ref: fast}]}",
    );
    assert_eq!(rows[&0]["by"], "fast");
    assert_eq!(rows[&1]["by"], "fast");
    // Where the fast one fails, the slow one's success still wins.
    assert_eq!(rows[&2]["by"], "slow");
    assert!(dlq.is_empty());
    // Only the call that was needed ran to completion; the others were dropped.
    assert_eq!(slow.completed.load(Ordering::SeqCst), 1);

    let a = Arc::new(Scripted::new("a").failing(|_, _| Some("a failed".into())));
    let b = Arc::new(
        Scripted::new("b")
            .delay(Duration::from_millis(30))
            .failing(|_, _| Some("b failed".into())),
    );
    let c = registry(&[("a", a), ("b", b)]);
    let (rows, dlq) = run_stage(
        &c,
        2,
        "",
        "    node: {type: race, children: [{ref: a}, {ref: b}]}",
    );
    assert!(rows.is_empty());
    assert!(
        errors(&dlq).values().all(|e| e == "race -> b: b failed"),
        "the last error: {dlq:?}"
    );
}

#[test]
fn contest_takes_the_first_success_that_satisfies_the_predicate() {
    let c = Components::new();
    let (rows, dlq) = run_stage(
        &c,
        4,
        "",
        "    node:\n      type: contest\n      predicate: \"score > 10\"\n      children:\n        - {type: sql, map: {score: \"id * 3\"}}\n        - {type: sql, map: {score: \"id * 7\"}}",
    );
    // id 0: no child gives > 10; id 1: 7 fails, 3 fails; id 2: 14; id 3: 9 fails, 21.
    assert_eq!(rows[&2]["score"], 14);
    assert_eq!(rows[&3]["score"], 21);
    let e = errors(&dlq);
    assert_eq!(e.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    assert!(
        e.values()
            .all(|m| m == "contest: no result satisfied the predicate")
    );
}

#[test]
fn concurrent_returns_the_input_or_the_reducers_merge() {
    let audit =
        Arc::new(Scripted::new("audit").failing(|id, _| (id == 1).then(|| "audit refused".into())));
    let c = registry(&[("audit", Arc::clone(&audit))]);
    let (rows, dlq) = run_stage(
        &c,
        3,
        "",
        "    node: {type: concurrent, children: [{ref: audit}, {type: sql, map: {v: \"-1\"}}]}",
    );
    // No reducer: the original input, untouched by the children.
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[&2]["v"], 20);
    assert!(rows[&2].get("by").is_none());
    assert_eq!(errors(&dlq)[&1], "concurrent -> audit: audit refused");

    let c = Components::new();
    let (rows, _) = run_stage(
        &c,
        3,
        "",
        "    node:\n      type: concurrent\n      reducer: merge\n      children:\n        - {type: sql, map: {double: \"v * 2\"}}\n        - {type: sql, map: {label: \"concat('n', id)\"}}",
    );
    assert_eq!(rows[&2]["double"], 40);
    assert_eq!(rows[&2]["label"], "n2");
    assert_eq!(rows[&2]["v"], 20);
}

#[test]
fn filter_and_switch_route_records_and_pass_the_rest_through() {
    let c = Components::new();
    let (rows, _) = run_stage(
        &c,
        6,
        "",
        "    node:\n      type: sequence\n      children:\n        - {type: filter, predicate: \"id < 2\", then: {type: sql, map: {v: \"v + 1000\"}}}\n        - type: switch\n          condition: \"CASE WHEN id % 3 = 0 THEN 'fizz' WHEN id % 3 = 1 THEN 'one' END\"\n          routes:\n            fizz: {type: sql, map: {v: \"0 - v\"}}\n            one: {type: sql, map: {v: \"v * 100\"}}",
    );
    let v: Vec<i64> = rows.values().map(|r| r["v"].as_i64().expect("v")).collect();
    // id 0: filter +1000 → fizz negates; 1: +1000 → one ×100; 2: unmatched, passes through.
    assert_eq!(v, vec![-1000, 101_000, 20, -30, 4000, 50]);
    let (rows, _) = run_stage(
        &c,
        3,
        "",
        "    node:\n      type: switch\n      condition: \"CASE WHEN id = 0 THEN 'zero' END\"\n      routes: {zero: {type: sql, map: {v: \"1\"}}}\n      default: {type: sql, map: {v: \"2\"}}",
    );
    let v: Vec<i64> = rows.values().map(|r| r["v"].as_i64().expect("v")).collect();
    assert_eq!(v, vec![1, 2, 2]);
}

#[test]
fn branches_that_differ_in_nullability_are_put_back_together() {
    let c = Components::new();
    let (rows, dlq) = run_stage(
        &c,
        4,
        "",
        "    unit: batch\n    node:\n      type: filter\n      predicate: \"id % 2 = 0\"\n      then: {type: noop}\n      else: {type: sql, map: {v: \"CASE WHEN id = 1 THEN NULL ELSE v END\"}}",
    );
    assert!(dlq.is_empty(), "{dlq:?}");
    let v: Vec<Value> = rows
        .values()
        .map(|r| r.get("v").cloned().unwrap_or(Value::Null))
        .collect();
    assert_eq!(
        v,
        vec![
            Value::from(0),
            Value::Null,
            Value::from(20),
            Value::from(30)
        ]
    );
}

/// Counts what it observes.
#[derive(Default)]
struct Observer {
    seen: Mutex<Vec<(i64, String)>>,
}

#[async_trait]
impl ErrorHandler for Observer {
    async fn handle(&self, failed: RecordBatch, errors: &[Arc<NodeError>]) {
        let ids = failed
            .column_by_name("id")
            .expect("id")
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64")
            .clone();
        let mut seen = self.seen.lock().expect("lock");
        for (r, e) in errors.iter().enumerate() {
            seen.push((ids.value(r), e.to_string()));
        }
    }
}

#[test]
fn handle_observes_failures_which_still_propagate() {
    let bad = Arc::new(Scripted::new("bad").failing(|id, _| (id >= 2).then(|| format!("no {id}"))));
    let c = registry(&[("bad", bad)]);
    let observer = Arc::new(Observer::default());
    c.error_handler("observer", Arc::clone(&observer) as Arc<dyn ErrorHandler>);
    let (rows, dlq) = run_stage(
        &c,
        4,
        "",
        "    node: {type: handle, error_handler: observer, child: {ref: bad}}",
    );
    assert_eq!(rows.len(), 2);
    assert_eq!(errors(&dlq).len(), 2);
    let mut seen = observer.seen.lock().expect("lock").clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (2, "handle -> bad: no 2".to_string()),
            (3, "handle -> bad: no 3".to_string())
        ]
    );
}

#[test]
fn scaffold_fires_and_forgets_and_worker_pool_bounds_parallelism() {
    let side = Arc::new(
        Scripted::new("side")
            .delay(Duration::from_millis(50))
            .failing(|_, _| Some("ignored".into())),
    );
    let c = registry(&[("side", Arc::clone(&side))]);
    let (rows, dlq) = run_stage(
        &c,
        3,
        "",
        "    unit: record\n    node: {type: scaffold, children: [{ref: side}]}",
    );
    // The input comes through at once; the child's failures are not the record's.
    assert_eq!(rows.len(), 3);
    assert!(rows.values().all(|r| r.get("by").is_none()));
    assert!(dlq.is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while side.called_ids().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut called = side.called_ids();
    called.sort();
    assert_eq!(called, vec![0, 1, 2], "the fired children ran");

    let worker = Arc::new(Scripted::new("worker").delay(Duration::from_millis(30)));
    // One processor under three names: a name is used once per scope (Flume).
    let c = registry(&[
        ("w1", Arc::clone(&worker)),
        ("w2", Arc::clone(&worker)),
        ("w3", Arc::clone(&worker)),
    ]);
    let (rows, _) = run_stage(
        &c,
        8,
        "",
        "    unit: record\n    concurrency: 8\n    node: {type: worker-pool, workers: 2, children: [{ref: w1}, {ref: w2}, {ref: w3}]}",
    );
    assert_eq!(rows.len(), 8);
    assert_eq!(worker.called_ids().len(), 24);
    assert_eq!(worker.max_running.load(Ordering::SeqCst), 2);
}

#[test]
fn stream_nodes_send_records_to_a_channel_then_continue() {
    let c = Components::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(64);
    c.channel("audit", tx);
    let (rows, _) = run_stage(
        &c,
        5,
        "",
        "    node: {stream: audit, child: {type: sql, map: {v: \"v + 1\"}}}",
    );
    assert_eq!(rows[&4]["v"], 41);
    let mut sent = 0;
    while let Ok(b) = rx.try_recv() {
        // The channel sees the records as they were before the child.
        let v = b
            .column_by_name("v")
            .expect("v")
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64")
            .clone();
        assert!(v.iter().flatten().all(|x| x % 10 == 0));
        sent += b.num_rows();
    }
    assert_eq!(sent, 5);
}

#[test]
fn registered_trees_are_referenced_like_processors() {
    let c = Components::new();
    c.schema(
        "bump",
        serde_json::json!({"type": "sql", "map": {"v": "v + 5"}}),
    );
    c.schema(
        "double",
        serde_json::json!({"type": "sql", "map": {"v": "v * 2"}}),
    );
    let (rows, _) = run_stage(
        &c,
        2,
        "",
        "    node: {type: sequence, children: [{ref: bump}, {ref: double}]}",
    );
    assert_eq!(rows[&1]["v"], 30);
    assert!(c.remove_schema("bump"));
    assert!(c.get_schema("bump").is_none());
}

/// Every validation rule, each reported with its exact path, all at once.
#[test]
fn validation_reports_every_rule_with_its_path() {
    let c = Components::new();
    let stage = r#"    processors:
      a: {type: sequence, children: [{ref: b}]}
      b: {type: retry, child: {ref: a}}
      shared: {type: noop}
    node:
      type: sequence
      children:
        - {}
        - {ref: x, type: noop}
        - {type: teleport}
        - {ref: missing}
        - {type: filter, predicate: is_premium, then: {type: noop}}
        - {type: switch, condition: tier, routes: {a: {type: noop}}}
        - {type: concurrent, reducer: nope, children: [{type: noop}]}
        - {type: handle, error_handler: nobody, child: {type: noop}}
        - {stream: nowhere}
        - type: fallback
          children:
            - {type: retry}
        - {type: retry, attempts: -1, backoff: soon, child: {type: noop}}
        - {type: timeout, duration: 5 parsecs, child: {type: noop}}
        - {type: circuit-breaker, failure_threshold: -1, child: {type: noop}}
        - {type: rate-limit, requests_per_second: -3, burst_size: -1, child: {type: noop}}
        - {type: worker-pool, workers: -2, children: [{type: noop}]}
        - {type: sequence, children: []}
        - {ref: a}
        - {type: fallback, children: [{ref: shared}, {ref: shared}]}
        - {type: filter, predicate: "v > 1", then: {ref: shared}, else: {ref: shared}}
        - {type: retry, child: {type: noop}, atempts: 2}"#;
    let yaml = format!(
        "name: t\nmode: job\nsources:\n  - {{name: src, type: generator, config: {{count: 1, columns: {{id: \"i\", v: \"i\"}}}}}}\nstages:\n  - name: p\n    type: process\n    input: src\n{stage}\nsinks:\n  - {{name: out, type: blackhole, input: p}}\n"
    );
    let spec = streamflow_dsl::parse_str(&yaml, streamflow_dsl::FileFormat::Yaml).expect("parses");
    let Err(d) = Pipeline::from_spec_with(&spec, &c) else {
        panic!("invalid flow accepted");
    };
    let text = d.to_string();
    let n = "stages[0].node.children";
    for expected in [
        format!("{n}[0]: empty node: needs ref, type or stream"),
        format!("{n}[1]: a node takes ref or type, not both"),
        format!("{n}[2].type: unknown node type 'teleport'"),
        format!("{n}[3].ref: processor 'missing' not found"),
        format!("{n}[4](filter).predicate: predicate 'is_premium' not found"),
        format!("{n}[5](switch).condition: condition 'tier' not found"),
        format!("{n}[6](concurrent).reducer: reducer 'nope' not found"),
        format!("{n}[7](handle).error_handler: error handler 'nobody' not found"),
        format!("{n}[8](stream).stream: channel 'nowhere' not found"),
        format!(
            "{n}[9](fallback).children: fallback requires exactly 2 children (primary, fallback); got 1"
        ),
        format!("{n}[10](retry).attempts: attempts must be positive (got -1)"),
        format!("{n}[10](retry).backoff: invalid backoff duration 'soon'"),
        format!("{n}[11](timeout).duration: invalid duration '5 parsecs'"),
        format!("{n}[12](circuit-breaker).failure_threshold: failure_threshold must be positive (got -1)"),
        format!("{n}[13](rate-limit).requests_per_second: must be a positive number (got -3)"),
        format!("{n}[13](rate-limit).burst_size: burst_size must be positive (got -1)"),
        format!("{n}[14](worker-pool).workers: workers must be positive (got -2)"),
        format!("{n}[15](sequence).children: sequence requires at least one child (children)"),
        "stages[0].processors.b.child.ref: circular reference detected: 'a' creates a cycle (a -> b -> a)".to_string(),
        format!(
            "{n}[19](retry).atempts: a retry node takes no 'atempts' (did you mean 'attempts'?)"
        ),
    ] {
        assert!(text.contains(&expected), "missing `{expected}` in:\n{text}");
    }
    // The same component in exclusive branches is no cycle.
    assert!(!text.contains("children[17]"), "{text}");
    assert!(!text.contains("children[18]"), "{text}");
}

#[test]
fn the_child_of_a_nested_node_is_reported_with_the_types_on_its_path() {
    let c = Components::new();
    let yaml = "name: t\nmode: job\nsources:\n  - {name: src, type: generator, config: {count: 1, columns: {id: \"i\"}}}\nstages:\n  - name: p\n    type: process\n    input: src\n    node: {type: sequence, children: [{type: noop}, {type: fallback, children: [{type: retry}, {type: timeout, child: {ref: x}}]}]}\nsinks:\n  - {name: out, type: blackhole, input: p}\n";
    let spec = streamflow_dsl::parse_str(yaml, streamflow_dsl::FileFormat::Yaml).expect("parses");
    let Err(d) = Pipeline::from_spec_with(&spec, &c) else {
        panic!("invalid flow accepted");
    };
    let text = d.to_string();
    assert!(
        text.contains(
            "stages[0].node.children[1](fallback).children[0](retry).child: retry requires a child"
        ),
        "{text}"
    );
    assert!(text.contains("stages[0].node.children[1](fallback).children[1](timeout).child.ref: processor 'x' not found"), "{text}");
}

/// What the owner service counts: 503 answers, and the bids asked about.
type ServiceState = (
    Arc<AtomicUsize>,
    Arc<Mutex<std::collections::HashSet<String>>>,
);

/// A channel-owner service: hot channels have owners, `Apple` answers 503
/// to the first request for each bid (auction and bidder in the query), regular channels have none (an empty object),
/// and every tenth regular channel is unknown (404).
async fn owner_service() -> (String, Arc<AtomicUsize>) {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Json};
    let unavailable = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let state = (Arc::clone(&unavailable), seen);
    let app = axum::Router::new()
        .route(
            "/channels/{channel}",
            axum::routing::get(
                |Path(channel): Path<String>,
                 uri: axum::http::Uri,
                 State((unavailable, seen)): State<ServiceState>| async move {
                    let owner = match channel.as_str() {
                        "Google" => ("Alphabet", "us"),
                        "Facebook" => ("Meta", "us"),
                        "Baidu" => ("Baidu Inc", "cn"),
                        "Apple" => {
                            // The first request for each bid fails.
                            let bid = uri.query().unwrap_or_default().to_string();
                            if seen.lock().expect("lock").insert(bid) {
                                unavailable.fetch_add(1, Ordering::SeqCst);
                                return StatusCode::SERVICE_UNAVAILABLE.into_response();
                            }
                            ("Apple Inc", "us")
                        }
                        // Regular channels: unknown owner, and one in ten unknown channel.
                        other => match other
                            .strip_prefix("channel-")
                            .and_then(|n| n.parse::<u64>().ok())
                        {
                            Some(n) if n % 10 != 0 => {
                                return Json(serde_json::json!({})).into_response();
                            }
                            _ => return StatusCode::NOT_FOUND.into_response(),
                        },
                    };
                    Json(serde_json::json!({"owner": owner.0, "region": owner.1, "ignored": 1}))
                        .into_response()
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), unavailable)
}

#[test]
fn the_http_enrichment_example_enriches_retries_and_dead_letters() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (base, unavailable) = rt.block_on(owner_service());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let failed = dir.path().join("failed.jsonl");
    let flow = common::root().join("examples/process/enrich_http.yaml");
    let result = common::run(&[
        "run",
        &flow.to_string_lossy(),
        "--quiet",
        "--set",
        &format!(
            "stages.owners.processors.lookup.url={base}/channels/{{channel}}?auction={{auction}}&bidder={{bidder}}"
        ),
        "--set",
        &format!("sinks.out.config.path={}", out.display()),
        "--set",
        &format!("sinks.failed.config.path={}", failed.display()),
    ]);
    assert!(result.status.success(), "{}", common::stderr(&result));
    let rows = read_jsonl(&out);
    let dead = if failed.exists() {
        read_jsonl(&failed)
    } else {
        Vec::new()
    };
    let bids = streamflow_connectors::sources::nexmark::NexmarkGenerator::new(
        streamflow_connectors::sources::nexmark::NexmarkConfig {
            table: streamflow_connectors::sources::nexmark::NexmarkTable::Bid,
            ..Default::default()
        },
    )
    .generate(0..2000)
    .expect("generate")
    .num_rows();
    assert_eq!(
        rows.len() + dead.len(),
        bids,
        "every bid is in the output or the dlq"
    );
    let owners = BTreeMap::from([
        ("Google", "Alphabet"),
        ("Facebook", "Meta"),
        ("Baidu", "Baidu Inc"),
        ("Apple", "Apple Inc"),
    ]);
    for r in &rows {
        let channel = r["channel"].as_str().expect("channel");
        match owners.get(channel) {
            Some(owner) => assert_eq!(r["channel_owner"], *owner, "{r}"),
            None => assert!(r["channel_owner"].is_null(), "{r}"),
        }
    }
    assert!(
        rows.iter().any(|r| r["channel"] == "Apple"),
        "503s were retried"
    );
    assert!(unavailable.load(Ordering::SeqCst) > 0);
    assert!(!dead.is_empty(), "unknown channels");
    for d in &dead {
        let payload: Value =
            serde_json::from_str(d["payload"].as_str().expect("payload")).expect("json");
        let channel = payload["channel"].as_str().expect("channel");
        let n: u64 = channel
            .strip_prefix("channel-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{d}"));
        assert_eq!(n % 10, 0, "{d}");
        let error = d["error"].as_str().expect("error");
        assert!(
            error.starts_with(
                "rate-limit -> circuit-breaker -> retry -> timeout -> lookup: GET http://"
            ) && error.ends_with("HTTP 404 Not Found"),
            "{error}"
        );
    }
}

/// Runs `examples/process/<name>.yaml` on `events` events; its output rows.
fn run_example(name: &str, events: u64, extra: &[&str]) -> (std::process::Output, Vec<Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let flow = common::root().join(format!("examples/process/{name}.yaml"));
    let events = format!("sources.bids.config.events={events}");
    let sink = format!("sinks.out.config.path={}", out.display());
    let flow = flow.to_string_lossy().into_owned();
    let mut args = vec![
        "run",
        flow.as_str(),
        "--quiet",
        "--set",
        events.as_str(),
        "--set",
        sink.as_str(),
    ];
    args.extend_from_slice(extra);
    let result = common::run(&args);
    assert!(
        result.status.success(),
        "{name}: {}",
        common::stderr(&result)
    );
    let rows = read_jsonl(&out);
    (result, rows)
}

#[test]
fn the_sql_sequence_example_equals_its_map_stage_baseline() {
    let (_, sequence) = run_example("sql_sequence", 20_000, &[]);
    let (_, map) = run_example("sql_map", 20_000, &[]);
    assert!(sequence.len() > 10_000);
    assert!(
        sequence.iter().any(|r| r["band"] == "high") && sequence.iter().any(|r| r["band"] == "low")
    );
    assert_eq!(sequence, map);
}

#[test]
fn the_rate_limit_example_passes_every_record_and_logs_lifecycle_events() {
    let log = ["--set", "stages.limited.node.requests_per_second=100000"];
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let flow = common::root().join("examples/process/rate_limit.yaml");
    let result = common::streamflow()
        .env("STREAMFLOW_LOG", "streamflow::process=info")
        .args([
            "run",
            &flow.to_string_lossy(),
            "--quiet",
            "--set",
            "sources.bids.config.events=500",
            "--set",
            &format!("sinks.out.config.path={}", out.display()),
        ])
        .args(log)
        .output()
        .expect("runs");
    assert!(result.status.success(), "{}", common::stderr(&result));
    assert_eq!(read_jsonl(&out).len(), 460);
    let logs = common::stderr(&result) + &common::stdout(&result);
    for event in [
        "validation_started",
        "validation_completed",
        "build_started",
        "build_completed",
    ] {
        assert!(logs.contains(event), "no {event} in:\n{logs}");
    }
    // An invalid tree: validation fails, the flow never starts.
    let bad = common::streamflow()
        .env("STREAMFLOW_LOG", "streamflow::process=info")
        .args([
            "validate",
            &flow.to_string_lossy(),
            "--set",
            "stages.limited.node.burst_size=-1",
        ])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    let text = common::stderr(&bad) + &common::stdout(&bad);
    assert!(
        text.contains("stages[0].node.burst_size: burst_size must be positive (got -1)"),
        "{text}"
    );
    assert!(text.contains("validation_failed"), "{text}");
}

/// A scoring service: `POST /score` takes a JSON array of records and
/// answers an array of `{score}` (id × 7), if the `x-key` header is right.
async fn scoring_service() -> String {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Json};
    let app = axum::Router::new().route(
        "/score",
        axum::routing::post(
            |headers: HeaderMap, Json(records): Json<Vec<Value>>| async move {
                if headers.get("x-key").and_then(|v| v.to_str().ok()) != Some("secret") {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                let scores: Vec<Value> = records
                    .iter()
                    .map(|r| serde_json::json!({"score": r["id"].as_i64().unwrap_or(-1) * 7}))
                    .collect();
                Json(scores).into_response()
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/score")
}

#[test]
fn http_per_batch_posts_the_records_and_merges_the_answers() {
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let url = server.block_on(scoring_service());
    let c = Components::new();
    let stage = |key: &str| {
        format!(
            "    unit: batch\n    node: {{type: http, per: batch, method: POST, url: \"{url}\", headers: {{x-key: {key}}}, response: {{score: int64}}, prefix: \"s_\"}}"
        )
    };
    let (rows, dlq) = run_stage(&c, 50, "", &stage("secret"));
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(rows.len(), 50);
    for (id, r) in &rows {
        assert_eq!(r["s_score"], id * 7);
        assert_eq!(r["v"], id * 10);
    }
    // A refused call fails every record of the batch, each dead-lettered.
    let (rows, dlq) = run_stage(&c, 5, "", &stage("wrong"));
    assert!(rows.is_empty());
    assert_eq!(dlq.len(), 5);
    assert!(
        errors(&dlq)
            .values()
            .all(|e| e.starts_with("http: POST http://") && e.ends_with("HTTP 401 Unauthorized")),
        "{dlq:?}"
    );
}
