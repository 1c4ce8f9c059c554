//! The runtime semantics of every node type, in one place.
//!
//! A node is called with a batch of records and returns an [`Outcome`]:
//! each record comes through or fails on its own. What counts as one
//! *call* — for `timeout`, `circuit-breaker` and `race` — is one batch
//! handed to the node: with `unit: record` (the stage's default) every
//! record is its own call, exactly as in Flume; with `unit: batch` a whole
//! batch is, for vectorised processors such as `sql`.
//! `rate-limit` takes one token per record either way.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, BooleanArray, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use backon::BackoffBuilder;
use futures::future::{BoxFuture, FutureExt, join_all};
use futures::stream::{FuturesUnordered, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

use super::outcome::{Assembly, NodeError, Outcome, subset};
use super::registry::{Condition, ErrorHandler, Predicate, Processor, Reducer};

/// A built node: its path (for errors), output schema and behaviour.
pub(crate) struct Node {
    pub(crate) path: Arc<str>,
    pub(crate) schema: SchemaRef,
    pub(crate) kind: Kind,
}

/// What a node does.
pub(crate) enum Kind {
    Processor(Arc<dyn Processor>),
    Sequence(Vec<Arc<Node>>),
    Concurrent {
        children: Vec<Arc<Node>>,
        reducer: Option<Arc<dyn Reducer>>,
        /// `worker-pool`: at most this many child calls at once.
        workers: Option<Arc<Semaphore>>,
    },
    Race(Vec<Arc<Node>>),
    Contest {
        children: Vec<Arc<Node>>,
        predicate: Arc<dyn Predicate>,
    },
    Fallback(Arc<Node>, Arc<Node>),
    Retry {
        child: Arc<Node>,
        attempts: usize,
        backoff: Option<Duration>,
    },
    Timeout {
        child: Arc<Node>,
        duration: Duration,
    },
    Filter {
        predicate: Arc<dyn Predicate>,
        then: Arc<Node>,
        otherwise: Option<Arc<Node>>,
    },
    Switch {
        condition: Arc<dyn Condition>,
        routes: BTreeMap<String, Arc<Node>>,
        default: Option<Arc<Node>>,
    },
    CircuitBreaker {
        child: Arc<Node>,
        breaker: Breaker,
    },
    RateLimit {
        child: Arc<Node>,
        limiter: Arc<DefaultDirectRateLimiter>,
        wait: bool,
    },
    Handle {
        child: Arc<Node>,
        handler: Arc<dyn ErrorHandler>,
    },
    Scaffold(Vec<Arc<Node>>),
    Stream {
        channel: Sender<RecordBatch>,
        name: String,
        timeout: Option<Duration>,
        then: Option<Arc<Node>>,
    },
}

impl Node {
    fn error(&self, message: impl Into<String>) -> NodeError {
        NodeError {
            path: Arc::clone(&self.path),
            message: message.into(),
        }
    }

    fn fail_all(&self, batch: &RecordBatch, message: impl Into<String>) -> Outcome {
        Outcome::fail_all(
            batch.num_rows(),
            Arc::clone(&self.schema),
            self.error(message),
        )
    }

    /// Runs the node on `batch`.
    pub(crate) fn call(self: &Arc<Self>, batch: RecordBatch) -> BoxFuture<'static, Outcome> {
        let node = Arc::clone(self);
        async move {
            if batch.num_rows() == 0 {
                return Outcome::ok(RecordBatch::new_empty(Arc::clone(&node.schema)));
            }
            node.run(batch).await
        }
        .boxed()
    }

    async fn run(self: Arc<Self>, batch: RecordBatch) -> Outcome {
        match &self.kind {
            Kind::Processor(p) => match p.process(batch.clone()).await {
                Ok(done) => {
                    let mut failed: Vec<(usize, Arc<NodeError>)> = done
                        .failed
                        .into_iter()
                        .map(|(r, m)| (r, Arc::new(self.error(m))))
                        .collect();
                    failed.sort_by_key(|(r, _)| *r);
                    if done.output.num_rows() + failed.len() != batch.num_rows() {
                        return self.fail_all(
                            &batch,
                            "processor returned a different number of rows than it was given",
                        );
                    }
                    Outcome {
                        output: done.output,
                        failed,
                    }
                }
                Err(m) => self.fail_all(&batch, m),
            },
            Kind::Sequence(children) => sequence(children, batch).await,
            Kind::Concurrent {
                children,
                reducer,
                workers,
            } => {
                let calls = children.iter().map(|c| {
                    let (c, b, w) = (Arc::clone(c), batch.clone(), workers.clone());
                    async move {
                        let _permit = match &w {
                            Some(s) => s.acquire().await.ok(),
                            None => None,
                        };
                        c.call(b).await
                    }
                });
                let results = join_all(calls).await;
                match reducer {
                    Some(r) => r.reduce(&batch, &results),
                    None => first_errors_or_input(&batch, &results),
                }
            }
            Kind::Race(children) => self.race(children, None, batch).await,
            Kind::Contest {
                children,
                predicate,
            } => self.race(children, Some(predicate), batch).await,
            Kind::Fallback(primary, fallback) => {
                let n = batch.num_rows();
                let mut a = Assembly::new(n);
                let all: Vec<usize> = (0..n).collect();
                let failed = a.add(&all, primary.call(batch.clone()).await);
                if !failed.is_empty() {
                    let rows: Vec<usize> = failed.iter().map(|(r, _)| *r).collect();
                    self.on_rows(&mut a, &batch, &rows, fallback, true).await;
                }
                a.finish(&self.schema, || self.error("unresolved"))
            }
            Kind::Retry {
                child,
                attempts,
                backoff,
            } => {
                let n = batch.num_rows();
                let mut a = Assembly::new(n);
                let mut delays = backoff.map(|base| {
                    backon::ExponentialBuilder::new()
                        .with_min_delay(base)
                        .with_factor(2.0)
                        .without_max_delay()
                        .with_max_times(attempts.saturating_sub(1))
                        .build()
                });
                let mut rows: Vec<usize> = (0..n).collect();
                for attempt in 1..=*attempts {
                    let last = attempt == *attempts;
                    let failed = self.on_rows(&mut a, &batch, &rows, child, last).await;
                    if failed.is_empty() || last {
                        break;
                    }
                    rows = failed;
                    if let Some(d) = delays.as_mut().and_then(Iterator::next) {
                        tokio::time::sleep(d).await;
                    }
                }
                a.finish(&self.schema, || self.error("unresolved"))
            }
            Kind::Timeout { child, duration } => {
                match tokio::time::timeout(*duration, child.call(batch.clone())).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        self.fail_all(&batch, format!("timed out after {}", humantime(*duration)))
                    }
                }
            }
            Kind::Filter {
                predicate,
                then,
                otherwise,
            } => {
                let mask = match predicate.evaluate(&batch) {
                    Ok(m) => m,
                    Err(e) => return self.fail_all(&batch, format!("predicate: {e}")),
                };
                let (yes, no): (Vec<usize>, Vec<usize>) =
                    (0..batch.num_rows()).partition(|&r| mask.is_valid(r) && mask.value(r));
                let mut a = Assembly::new(batch.num_rows());
                self.on_rows(&mut a, &batch, &yes, then, true).await;
                match otherwise {
                    Some(e) => {
                        self.on_rows(&mut a, &batch, &no, e, true).await;
                    }
                    None => a.pass(&batch, &no),
                }
                a.finish(&self.schema, || self.error("unresolved"))
            }
            Kind::Switch {
                condition,
                routes,
                default,
            } => {
                let keys: StringArray = match condition.evaluate(&batch) {
                    Ok(k) => k,
                    Err(e) => return self.fail_all(&batch, format!("condition: {e}")),
                };
                let mut by_route: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
                let mut unmatched = Vec::new();
                for r in 0..batch.num_rows() {
                    let key = keys.is_valid(r).then(|| keys.value(r));
                    match key.and_then(|k| routes.get_key_value(k)) {
                        Some((k, _)) => by_route.entry(Some(k.as_str())).or_default().push(r),
                        None if default.is_some() => by_route.entry(None).or_default().push(r),
                        None => unmatched.push(r),
                    }
                }
                let mut a = Assembly::new(batch.num_rows());
                let calls = by_route.into_iter().filter_map(|(k, rows)| {
                    let node = match k {
                        Some(k) => routes.get(k),
                        None => default.as_ref(),
                    }?;
                    let part = subset(&batch, &rows);
                    let node = Arc::clone(node);
                    Some(async move {
                        let outcome = match part {
                            Ok(p) => node.call(p).await,
                            Err(e) => Outcome::fail_all(
                                rows.len(),
                                Arc::clone(&node.schema),
                                node.error(e),
                            ),
                        };
                        (rows, outcome)
                    })
                });
                for (rows, outcome) in join_all(calls).await {
                    for (r, e) in a.add(&rows, outcome) {
                        a.fail(r, e);
                    }
                }
                a.pass(&batch, &unmatched);
                a.finish(&self.schema, || self.error("unresolved"))
            }
            Kind::CircuitBreaker { child, breaker } => {
                let Some(trial) = breaker.admit() else {
                    return self.fail_all(&batch, "circuit open: failing fast");
                };
                let outcome = child.call(batch).await;
                breaker.record(trial, outcome.failed.is_empty());
                outcome
            }
            Kind::RateLimit {
                child,
                limiter,
                wait,
            } => {
                if *wait {
                    for _ in 0..batch.num_rows() {
                        limiter.until_ready().await;
                    }
                    return child.call(batch).await;
                }
                // Drop mode: records without a token fail, the others go on.
                let (allowed, refused): (Vec<usize>, Vec<usize>) =
                    (0..batch.num_rows()).partition(|_| limiter.check().is_ok());
                if refused.is_empty() {
                    return child.call(batch).await;
                }
                let mut a = Assembly::new(batch.num_rows());
                self.on_rows(&mut a, &batch, &allowed, child, true).await;
                let refusal = Arc::new(self.error("rate limit exceeded"));
                for r in refused {
                    a.fail(r, Arc::clone(&refusal));
                }
                a.finish(&self.schema, || self.error("unresolved"))
            }
            Kind::Handle { child, handler } => {
                let outcome = child.call(batch.clone()).await;
                if !outcome.failed.is_empty() {
                    let rows: Vec<usize> = outcome.failed.iter().map(|(r, _)| *r).collect();
                    let errors: Vec<Arc<NodeError>> =
                        outcome.failed.iter().map(|(_, e)| Arc::clone(e)).collect();
                    match subset(&batch, &rows) {
                        Ok(failed) => handler.handle(failed, &errors).await,
                        Err(e) => {
                            tracing::warn!(node = %self.path, error = %e, "handle: could not collect the failed records")
                        }
                    }
                }
                outcome
            }
            Kind::Scaffold(children) => {
                for c in children {
                    let (c, b) = (Arc::clone(c), batch.clone());
                    tokio::spawn(async move {
                        let o = c.call(b).await;
                        if let Some((_, e)) = o.failed.first() {
                            tracing::debug!(failed = o.failed.len(), error = %e, "scaffold child failed (ignored)");
                        }
                    });
                }
                Outcome::ok(batch)
            }
            Kind::Stream {
                channel,
                name,
                timeout,
                then,
            } => {
                let sent = match timeout {
                    Some(t) => match channel.send_timeout(batch.clone(), *t).await {
                        Ok(()) => Ok(()),
                        Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                            Err(format!(
                                "channel '{name}' did not accept the records within {}",
                                humantime(*t)
                            ))
                        }
                        Err(tokio::sync::mpsc::error::SendTimeoutError::Closed(_)) => {
                            Err(format!("channel '{name}' is closed"))
                        }
                    },
                    None => channel
                        .send(batch.clone())
                        .await
                        .map_err(|_| format!("channel '{name}' is closed")),
                };
                match (sent, then) {
                    (Err(e), _) => self.fail_all(&batch, e),
                    (Ok(()), Some(child)) => child.call(batch).await,
                    (Ok(()), None) => Outcome::ok(batch),
                }
            }
        }
    }

    /// Calls `child` on input rows `rows` and takes its successes into `a`.
    /// Failures are final when `final_try` (recorded in `a`); the failed
    /// rows are returned either way.
    async fn on_rows(
        &self,
        a: &mut Assembly,
        batch: &RecordBatch,
        rows: &[usize],
        child: &Arc<Node>,
        final_try: bool,
    ) -> Vec<usize> {
        if rows.is_empty() {
            return Vec::new();
        }
        let outcome = match subset(batch, rows) {
            Ok(part) => child.call(part).await,
            Err(e) => Outcome::fail_all(rows.len(), Arc::clone(&child.schema), child.error(e)),
        };
        let failed = a.add(rows, outcome);
        let rows = failed.iter().map(|(r, _)| *r).collect();
        if final_try {
            for (r, e) in failed {
                a.fail(r, e);
            }
        }
        rows
    }

    /// `race` (no predicate) and `contest`: children run at once on the
    /// same records; each record takes the first child's success (that
    /// satisfies the predicate); once every record has one, the other
    /// calls are dropped. A record no child succeeds on fails with the
    /// last error seen (or the predicate's refusal).
    async fn race(
        &self,
        children: &[Arc<Node>],
        predicate: Option<&Arc<dyn Predicate>>,
        batch: RecordBatch,
    ) -> Outcome {
        let n = batch.num_rows();
        let all: Vec<usize> = (0..n).collect();
        let mut a = Assembly::new(n);
        let mut last: Vec<Option<Arc<NodeError>>> = vec![None; n];
        let mut calls: FuturesUnordered<_> =
            children.iter().map(|c| c.call(batch.clone())).collect();
        while let Some(outcome) = calls.next().await {
            let outcome = match predicate {
                None => outcome,
                Some(p) => self.refuse_unsatisfied(p, outcome, n),
            };
            for (r, e) in a.add(&all, outcome) {
                last[r] = Some(e);
            }
            if a.pending().is_empty() {
                break;
            }
        }
        drop(calls);
        for r in a.pending() {
            let e = last[r]
                .clone()
                .unwrap_or_else(|| Arc::new(self.error("no child succeeded")));
            a.fail(r, e);
        }
        a.finish(&self.schema, || self.error("unresolved"))
    }

    /// Turns successes the predicate rejects into failures.
    fn refuse_unsatisfied(&self, p: &Arc<dyn Predicate>, outcome: Outcome, n: usize) -> Outcome {
        let mask = match p.evaluate(&outcome.output) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::fail_all(
                    n,
                    Arc::clone(&self.schema),
                    self.error(format!("predicate: {e}")),
                );
            }
        };
        let refusal = Arc::new(self.error("no result satisfied the predicate"));
        let satisfied: Vec<bool> = (0..outcome.output.num_rows())
            .map(|i| mask.is_valid(i) && mask.value(i))
            .collect();
        let mut failed = Vec::new();
        for (r, fate) in outcome.fates(n).into_iter().enumerate() {
            match fate {
                Ok(row) if satisfied[row] => {}
                Ok(_) => failed.push((r, Arc::clone(&refusal))),
                Err(e) => failed.push((r, e)),
            }
        }
        match arrow::compute::filter_record_batch(&outcome.output, &BooleanArray::from(satisfied)) {
            Ok(output) => Outcome { output, failed },
            Err(e) => Outcome::fail_all(n, Arc::clone(&self.schema), self.error(e.to_string())),
        }
    }
}

/// Children one after another; a record stops at its first failure.
async fn sequence(children: &[Arc<Node>], batch: RecordBatch) -> Outcome {
    let mut current = batch;
    // Input row of each row of `current`; `None` while it is the identity.
    let mut origin: Option<Vec<usize>> = None;
    let mut failed: Vec<(usize, Arc<NodeError>)> = Vec::new();
    for child in children {
        let rows = current.num_rows();
        let outcome = child.call(current).await;
        if !outcome.failed.is_empty() {
            let map = origin.take().unwrap_or_else(|| (0..rows).collect());
            let mut survivors = Vec::with_capacity(rows - outcome.failed.len());
            for (r, fate) in outcome.fates(rows).into_iter().enumerate() {
                match fate {
                    Ok(_) => survivors.push(map[r]),
                    Err(e) => failed.push((map[r], e)),
                }
            }
            origin = Some(survivors);
        }
        current = outcome.output;
        if current.num_rows() == 0 {
            break;
        }
    }
    failed.sort_by_key(|(r, _)| *r);
    Outcome {
        output: current,
        failed,
    }
}

/// `concurrent` without a reducer: the input, minus the records some
/// child failed on (each with the first such child's error).
fn first_errors_or_input(batch: &RecordBatch, results: &[Outcome]) -> Outcome {
    let n = batch.num_rows();
    let mut first: Vec<Option<Arc<NodeError>>> = vec![None; n];
    for o in results {
        for (r, e) in &o.failed {
            first[*r].get_or_insert_with(|| Arc::clone(e));
        }
    }
    if first.iter().all(Option::is_none) {
        return Outcome::ok(batch.clone());
    }
    let mut a = Assembly::new(n);
    let ok: Vec<usize> = (0..n).filter(|&r| first[r].is_none()).collect();
    a.pass(batch, &ok);
    for (r, e) in first.into_iter().enumerate() {
        if let Some(e) = e {
            a.fail(r, e);
        }
    }
    a.finish(&batch.schema(), || NodeError {
        path: "concurrent".into(),
        message: "unresolved".into(),
    })
}

/// `5s`, `250ms`.
pub(crate) fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A token bucket of `per_second` records per second holding up to `burst`.
pub(crate) fn limiter(per_second: f64, burst: u32) -> Option<Arc<DefaultDirectRateLimiter>> {
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / per_second))?
        .allow_burst(std::num::NonZeroU32::new(burst)?);
    Some(Arc::new(RateLimiter::direct(quota)))
}

/// Circuit-breaker state: closed (counting consecutive failed calls),
/// open (failing fast until the recovery timeout), half-open (one trial
/// call; its success closes, its failure re-opens).
pub(crate) struct Breaker {
    /// The breaker node's label, for its events.
    node: Arc<str>,
    threshold: usize,
    recovery: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Clone, Copy)]
enum BreakerState {
    Closed {
        failures: usize,
    },
    Open {
        since: Instant,
    },
    /// The trial call is under way.
    HalfOpen,
}

impl Breaker {
    pub(crate) fn new(node: &str, threshold: usize, recovery: Duration) -> Self {
        Self {
            node: node.into(),
            threshold,
            recovery,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go through (`Some(true)`: it is the half-open trial).
    fn admit(&self) -> Option<bool> {
        let mut s = self.state();
        match *s {
            BreakerState::Closed { .. } => Some(false),
            BreakerState::Open { since } if since.elapsed() >= self.recovery => {
                *s = BreakerState::HalfOpen;
                tracing::info!(target: "streamflow::process", event = "circuit_half_open", node = %self.node);
                Some(true)
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => None,
        }
    }

    fn record(&self, trial: bool, success: bool) {
        let mut s = self.state();
        let next = match (*s, trial, success) {
            (_, true, true) => BreakerState::Closed { failures: 0 },
            (_, true, false) => BreakerState::Open {
                since: Instant::now(),
            },
            (BreakerState::Closed { .. }, false, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false, false) if failures + 1 >= self.threshold => {
                BreakerState::Open {
                    since: Instant::now(),
                }
            }
            (BreakerState::Closed { failures }, false, false) => BreakerState::Closed {
                failures: failures + 1,
            },
            // A call admitted before the breaker opened: the state stands.
            (state, false, _) => state,
        };
        if matches!(next, BreakerState::Open { .. }) && !matches!(*s, BreakerState::Open { .. }) {
            tracing::warn!(target: "streamflow::process", event = "circuit_opened", node = %self.node);
        }
        if matches!(*s, BreakerState::HalfOpen) && matches!(next, BreakerState::Closed { .. }) {
            tracing::info!(target: "streamflow::process", event = "circuit_closed", node = %self.node);
        }
        *s = next;
    }
}
