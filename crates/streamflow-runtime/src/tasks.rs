//! The three task loops: source, operator and sink instances.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use streamflow_core::{
    CheckpointBarrier, DeadLetter, Error, Message, Operator, OperatorSnapshot, Output, Result,
    Sink, Source, Watermark, dead_letter_batch, processing_time_ms,
};
use streamflow_state::SourcePosition;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

use crate::checkpoint::{Ack, AckSender, SourceControl};

use crate::exchange::Exchange;
use crate::input::{InputEvent, InputSet};
use crate::metrics::NodeMetrics;
use streamflow_operators::EventTimeAssigner;
use streamflow_operators::watermark::WatermarkGenerator;

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
        self.metrics.add_out(&batch);
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
        if let Message::Watermark(w) = message {
            self.metrics.set_watermark(w.0);
        }
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
        if let Some(w) = out.take_watermark() {
            self.broadcast(Message::Watermark(w)).await?;
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

/// A source instance's link to the checkpoint coordinator.
pub(crate) struct SourceCheckpoints {
    pub(crate) instance: usize,
    pub(crate) control: UnboundedReceiver<SourceControl>,
    pub(crate) acks: AckSender,
}

impl SourceCheckpoints {
    /// Emits `barrier` after everything pulled so far, recording `position`.
    async fn barrier(
        &self,
        barrier: CheckpointBarrier,
        position: SourcePosition,
        out: &mut Outputs,
    ) -> Result<()> {
        self.acks.send(Ack::Source {
            id: barrier.id,
            node: out.node.clone(),
            instance: self.instance,
            position,
        })?;
        out.broadcast(Message::Barrier(barrier)).await
    }
}

/// The event time of a source instance's records and its watermarks.
pub(crate) struct SourceTime {
    /// Puts the event-time column in place.
    pub(crate) assigner: Arc<EventTimeAssigner>,
    /// Derives watermarks from it.
    pub(crate) watermarks: WatermarkGenerator,
    /// No data for this long marks the instance idle.
    pub(crate) idle_timeout: Option<Duration>,
}

/// Where a source instance stands: the position of its next record.
fn position(source: &mut dyn Source, checkpoint: u64, time: Option<&SourceTime>) -> SourcePosition {
    SourcePosition {
        offset: source.offset(checkpoint),
        max_event_time: time.and_then(|t| t.watermarks.max_seen()),
    }
}

/// Pulls from a source until it ends or a stop is requested, then ends its
/// outputs. With checkpoints, barriers are injected between pulls, and the
/// end waits for the final checkpoint's barrier.
pub(crate) async fn run_source(
    mut source: Box<dyn Source>,
    mut out: Outputs,
    mut stop: watch::Receiver<bool>,
    mut time: Option<SourceTime>,
    mut checkpoints: Option<SourceCheckpoints>,
) -> Result<()> {
    let node = out.node.clone();
    let result = async {
        let mut stopped_early = false;
        'pull: loop {
            if let Some(c) = checkpoints.as_mut() {
                while let Ok(control) = c.control.try_recv() {
                    match control {
                        SourceControl::Inject(b) => {
                            let at = position(source.as_mut(), b.id, time.as_ref());
                            c.barrier(b, at, &mut out).await?;
                        }
                        SourceControl::Complete(id) => source.checkpoint_complete(id).await?,
                    }
                }
            }
            let next = {
                // The pending pull is kept across idle notices, never dropped.
                let pull = source.next_batch();
                tokio::pin!(pull);
                let mut idle_at = time.as_ref().and_then(|t| t.idle_timeout).map(|t| tokio::time::Instant::now() + t);
                loop {
                    tokio::select! {
                        biased;
                        _ = stopped(&mut stop) => {
                            stopped_early = true;
                            break 'pull;
                        }
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
                let (data, watermark) = match time.as_mut() {
                    Some(t) => {
                        let data = t.assigner.assign(data)?;
                        let w = match &batch.splits {
                            Some(splits) => t.watermarks.observe_splits(&data, splits, std::time::Instant::now())?,
                            None => t.watermarks.observe(&data)?,
                        };
                        (data, w)
                    }
                    None => (data, None),
                };
                out.emit(data).await?;
                if let Some(w) = watermark {
                    out.broadcast(Message::Watermark(w)).await?;
                }
            }
        }
        // End of input fires every event-time window (also downstream of
        // stages that assign event time later); a stop with checkpoints is a
        // savepoint instead: state is kept, not flushed.
        let savepoint = stopped_early && checkpoints.is_some();
        if !savepoint {
            out.broadcast(Message::Watermark(Watermark::MAX)).await?;
        }
        if let Some(c) = checkpoints.as_mut() {
            c.acks.send(Ack::SourceFinished)?;
            // Until the final checkpoint completes, so that broker sources
            // acknowledge what it covers.
            let mut final_id = None;
            while let Some(control) = c.control.recv().await {
                match control {
                    SourceControl::Inject(b) => {
                        let at = position(source.as_mut(), b.id, time.as_ref());
                        c.barrier(b, at, &mut out).await?;
                        if b.is_final {
                            final_id = Some(b.id);
                        }
                    }
                    SourceControl::Complete(id) => {
                        source.checkpoint_complete(id).await?;
                        if final_id.is_some_and(|f| id >= f) {
                            break;
                        }
                    }
                }
            }
        }
        out.end().await
    }
    .await;
    result.map_err(|e| e.in_stage(&node))
}

/// Sleeps until `at`; never returns for `None`.
pub(crate) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// An operator instance's link to the checkpoint coordinator.
pub(crate) struct OperatorCheckpoints {
    pub(crate) instance: usize,
    pub(crate) restored: Option<OperatorSnapshot>,
    pub(crate) acks: AckSender,
}

/// Runs one operator instance over its merged inputs.
pub(crate) async fn run_operator(
    mut op: Box<dyn Operator>,
    mut inputs: InputSet,
    mut out: Outputs,
    mut checkpoints: Option<OperatorCheckpoints>,
) -> Result<()> {
    let node = out.node.clone();
    let metrics = Arc::clone(&out.metrics);
    let result = async {
        op.open(checkpoints.as_mut().and_then(|c| c.restored.take()))
            .await?;
        let mut after_final = false;
        let generates_watermarks = op.generates_watermarks();
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
                    metrics.add_in(&batch);
                    let started = Instant::now();
                    op.process_batch(input, batch, &mut buffer).await?;
                    metrics.add_busy(started.elapsed());
                    out.drain(&mut buffer).await?;
                }
                InputEvent::Watermark(w) => {
                    op.process_watermark(w, &mut buffer).await?;
                    out.drain(&mut buffer).await?;
                    if !generates_watermarks {
                        out.broadcast(Message::Watermark(w)).await?;
                    }
                }
                InputEvent::Idle => out.broadcast(Message::Idle).await?,
                InputEvent::InputEnded(input) => {
                    op.input_finished(input, &mut buffer).await?;
                    out.drain(&mut buffer).await?;
                }
                InputEvent::Barrier(b) => {
                    if let Some(c) = &checkpoints {
                        let snapshot = op.snapshot(&b).await?;
                        let (stored, wait) = if c.acks.asynchronous {
                            (None, None)
                        } else {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            (Some(tx), Some(rx))
                        };
                        let alignment = inputs.last_alignment();
                        tracing::debug!(stage = %node, instance = c.instance, checkpoint = b.id, alignment_ms = alignment.as_millis() as u64, "barrier aligned, state handed over");
                        c.acks.send(Ack::Operator {
                            id: b.id,
                            node: node.clone(),
                            instance: c.instance,
                            snapshot,
                            alignment_ms: alignment.as_millis() as u64,
                            stored,
                        })?;
                        if let Some(rx) = wait {
                            rx.await.map_err(|_| {
                                Error::ChannelClosed("checkpoint coordinator stopped".into())
                            })?;
                        }
                    }
                    after_final |= b.is_final;
                    out.broadcast(Message::Barrier(b)).await?;
                }
                InputEvent::End => {
                    // After a final checkpoint the state is saved, not flushed.
                    if !after_final {
                        op.finish(&mut buffer).await?;
                        out.drain(&mut buffer).await?;
                    }
                    return out.end().await;
                }
            }
        }
    }
    .await;
    result.map_err(|e| e.in_stage(&node))
}

/// A sink instance's link to the checkpoint coordinator.
pub(crate) struct SinkCheckpoints {
    pub(crate) instance: usize,
    /// Staged commits of the restored checkpoint, replayed at open.
    pub(crate) pending: Vec<serde_json::Value>,
    /// Ids of completed checkpoints.
    pub(crate) commits: UnboundedReceiver<u64>,
    pub(crate) acks: AckSender,
}

/// Writes everything arriving on a sink instance's inputs. With
/// checkpoints: stages on each barrier, publishes when the coordinator
/// reports the checkpoint complete, and ends only after the final one.
pub(crate) async fn run_sink(
    mut sink: Box<dyn Sink>,
    mut inputs: InputSet,
    mut out: Outputs,
    mut checkpoints: Option<SinkCheckpoints>,
) -> Result<()> {
    let node = out.node.clone();
    let metrics = Arc::clone(&out.metrics);
    let result = async {
        sink.open(checkpoints.as_mut().map(|c| std::mem::take(&mut c.pending)))
            .await?;
        let mut final_id = None;
        loop {
            let event = match checkpoints.as_mut() {
                None => inputs.next().await,
                Some(c) => tokio::select! {
                    event = inputs.next() => event,
                    Some(id) = c.commits.recv() => {
                        sink.commit(id).await?;
                        out.dead_letters(sink.take_dead_letters()).await?;
                        continue;
                    }
                },
            };
            match event {
                InputEvent::Data { batch, .. } => {
                    metrics.add_in(&batch);
                    let started = Instant::now();
                    sink.write(batch).await?;
                    metrics.add_busy(started.elapsed());
                    out.dead_letters(sink.take_dead_letters()).await?;
                }
                InputEvent::Watermark(w) => metrics.set_watermark(w.0),
                InputEvent::Idle | InputEvent::InputEnded(_) => {}
                InputEvent::Barrier(b) => {
                    let pending = sink.pre_commit(b.id).await?;
                    // Rows given up on before the barrier go before it, and
                    // the barrier on to the `dlq` sink.
                    out.dead_letters(sink.take_dead_letters()).await?;
                    out.broadcast(Message::Barrier(b)).await?;
                    if let Some(c) = &checkpoints {
                        c.acks.send(Ack::Sink {
                            id: b.id,
                            node: node.clone(),
                            instance: c.instance,
                            pending,
                        })?;
                    }
                    if b.is_final {
                        final_id = Some(b.id);
                    }
                }
                InputEvent::End => {
                    if let (Some(c), Some(last)) = (checkpoints.as_mut(), final_id) {
                        // Publish the final checkpoint's data before finishing.
                        while let Some(id) = c.commits.recv().await {
                            sink.commit(id).await?;
                            out.dead_letters(sink.take_dead_letters()).await?;
                            if id >= last {
                                break;
                            }
                        }
                    }
                    sink.finish().await?;
                    out.dead_letters(sink.take_dead_letters()).await?;
                    return out.end().await;
                }
            }
        }
    }
    .await;
    result.map_err(|e| e.in_stage(&node))
}
