//! The three task loops: source, operator and sink instances.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use streamflow_core::{
    DeadLetter, Error, Message, Operator, Output, Result, Sink, Source, Watermark,
    dead_letter_batch, processing_time_ms,
};
use tokio::sync::watch;

use crate::exchange::Exchange;
use crate::input::{InputEvent, InputSet};
use crate::metrics::NodeMetrics;
use crate::watermark::WatermarkGenerator;

/// Where one instance sends its output and dead letters.
pub(crate) struct Outputs {
    pub(crate) node: String,
    pub(crate) metrics: Arc<NodeMetrics>,
    pub(crate) edges: Vec<Exchange>,
    pub(crate) dlq: Option<Exchange>,
    pub(crate) late: Option<Exchange>,
}

impl Outputs {
    async fn emit(&mut self, batch: RecordBatch) -> Result<()> {
        self.metrics.add_out(batch.num_rows());
        if let Some((last, rest)) = self.edges.split_last_mut() {
            for edge in rest {
                edge.send(batch.clone()).await?;
            }
            last.send(batch).await?;
        }
        Ok(())
    }

    /// Sends a control message on every edge, the dead-letter edge included
    /// (so that barriers and end of stream reach `dlq` sinks too).
    async fn broadcast(&mut self, message: Message) -> Result<()> {
        for edge in self
            .edges
            .iter_mut()
            .chain(self.dlq.as_mut())
            .chain(self.late.as_mut())
        {
            edge.broadcast(message.clone()).await?;
        }
        Ok(())
    }

    /// Routes dead letters to the `dlq`, or fails naming the first one.
    async fn dead_letters(&mut self, letters: Vec<DeadLetter>) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        self.metrics.add_dead(letters.len());
        match self.dlq.as_mut() {
            Some(dlq) => {
                let batch = dead_letter_batch(&self.node, &letters)
                    .map_err(|e| Error::arrow("building dead letters", e))?;
                dlq.send(batch).await
            }
            None => {
                let first = &letters[0];
                let location = match (&first.file, first.line) {
                    (Some(f), Some(l)) => format!("{f}:{l}"),
                    (Some(f), None) => f.clone(),
                    _ => format!("record {}", first.payload.as_deref().unwrap_or("?")),
                };
                Err(Error::Decode {
                    location,
                    message: format!(
                        "{} (set `dlq:` on '{}' to route bad records instead of failing)",
                        first.error, self.node
                    ),
                })
            }
        }
    }

    async fn drain(&mut self, out: &mut Output) -> Result<()> {
        self.dead_letters(out.take_dead_letters()).await?;
        for late in out.take_late() {
            self.metrics.add_late(late.num_rows());
            match self.late.as_mut() {
                Some(edge) => edge.send(late).await?,
                None => {
                    tracing::debug!(stage = %self.node, rows = late.num_rows(), "late records dropped (no late output)")
                }
            }
        }
        for batch in out.take_batches() {
            self.emit(batch).await?;
        }
        Ok(())
    }

    async fn end(&mut self) -> Result<()> {
        self.broadcast(Message::EndOfStream).await
    }
}

/// Waits until `stop` turns true; never returns if the sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Pulls from a source until it ends or a stop is requested, then ends its outputs.
pub(crate) async fn run_source(
    mut source: Box<dyn Source>,
    mut out: Outputs,
    mut stop: watch::Receiver<bool>,
    mut watermarks: Option<WatermarkGenerator>,
    idle_timeout: Option<Duration>,
) -> Result<()> {
    let node = out.node.clone();
    let result = async {
        'pull: loop {
            let next = {
                // The pending pull is kept across idle notices, never dropped.
                let pull = source.next_batch();
                tokio::pin!(pull);
                let mut idle_at = idle_timeout.map(|t| tokio::time::Instant::now() + t);
                loop {
                    tokio::select! {
                        biased;
                        _ = stopped(&mut stop) => break 'pull,
                        next = &mut pull => break next?,
                        _ = sleep_until(idle_at), if idle_at.is_some() => {
                            tracing::debug!(source = %node, "no data for the idle timeout: marked idle");
                            out.broadcast(Message::Idle).await?;
                            idle_at = None;
                        }
                    }
                }
            };
            let Some(batch) = next else {
                break;
            };
            out.dead_letters(batch.dead_letters).await?;
            if let Some(data) = batch.data
                && data.num_rows() > 0
            {
                let watermark = match watermarks.as_mut() {
                    Some(g) => g.observe(&data)?,
                    None => None,
                };
                out.emit(data).await?;
                if let Some(w) = watermark {
                    out.broadcast(Message::Watermark(w)).await?;
                }
            }
        }
        if watermarks.is_some() {
            // End of input: every event-time window may now fire.
            out.broadcast(Message::Watermark(Watermark::MAX)).await?;
        }
        out.end().await
    }
    .await;
    result.map_err(|e| e.in_stage(&node))
}

/// Sleeps until `at`; never returns for `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs one operator instance over its merged inputs.
pub(crate) async fn run_operator(
    mut op: Box<dyn Operator>,
    mut inputs: InputSet,
    mut out: Outputs,
) -> Result<()> {
    let node = out.node.clone();
    let metrics = Arc::clone(&out.metrics);
    let result = async {
        op.open(None).await?;
        let mut buffer = Output::new();
        let mut timer = op.timer_interval().map(|period| {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let event = match timer.as_mut() {
                None => inputs.next().await,
                Some(t) => tokio::select! {
                    event = inputs.next() => event,
                    _ = t.tick() => {
                        op.on_timer(processing_time_ms(), &mut buffer).await?;
                        out.drain(&mut buffer).await?;
                        continue;
                    }
                },
            };
            match event {
                InputEvent::Data { input, batch } => {
                    metrics.add_in(batch.num_rows());
                    let started = Instant::now();
                    op.process_batch(input, batch, &mut buffer).await?;
                    metrics.add_busy(started.elapsed());
                    out.drain(&mut buffer).await?;
                }
                InputEvent::Watermark(w) => {
                    op.process_watermark(w, &mut buffer).await?;
                    out.drain(&mut buffer).await?;
                    out.broadcast(Message::Watermark(w)).await?;
                }
                InputEvent::Idle => out.broadcast(Message::Idle).await?,
                InputEvent::Barrier(b) => {
                    let snapshot = op.snapshot(&b).await?;
                    tracing::debug!(stage = %node, checkpoint = b.id, entries = snapshot.entries.len(), "snapshot taken");
                    out.broadcast(Message::Barrier(b)).await?;
                }
                InputEvent::End => {
                    op.finish(&mut buffer).await?;
                    out.drain(&mut buffer).await?;
                    return out.end().await;
                }
            }
        }
    }
    .await;
    result.map_err(|e| e.in_stage(&node))
}

/// Writes everything arriving on a sink instance's inputs.
pub(crate) async fn run_sink(
    mut sink: Box<dyn Sink>,
    mut inputs: InputSet,
    node: String,
    metrics: Arc<NodeMetrics>,
) -> Result<()> {
    let result = async {
        loop {
            match inputs.next().await {
                InputEvent::Data { batch, .. } => {
                    metrics.add_in(batch.num_rows());
                    let started = Instant::now();
                    sink.write(batch).await?;
                    metrics.add_busy(started.elapsed());
                }
                InputEvent::Watermark(_) | InputEvent::Idle => {}
                InputEvent::Barrier(b) => sink.pre_commit(b.id).await?,
                InputEvent::End => return sink.finish().await,
            }
        }
    }
    .await;
    result.map_err(|e| e.in_stage(&node))
}
