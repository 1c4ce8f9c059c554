//! Lifecycle events: what happened to each flow, kept for `GET /v1/events`.
//!
//! The supervisor records its own (submitted, started, updated, failed, …)
//! directly. Events raised inside a running flow — checkpoint completed or
//! failed, circuit breaker opened or closed — are `tracing` events with an
//! `event` field; [`EventLog::layer`] picks them up and attributes each to
//! the flow whose `flow` span it was raised in.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event as TracingEvent, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The target of the supervisor's own events, which it records itself.
pub(crate) const SUPERVISOR_TARGET: &str = "streamflow::flow";

/// Events kept.
const KEPT: usize = 1000;

/// A lifecycle event of a flow.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    /// Milliseconds since the epoch.
    pub time_ms: u64,
    /// The flow.
    pub flow: String,
    /// `submitted`, `started`, `updated`, `update_refused`, `rolled_back`,
    /// `stopped`, `succeeded`, `failed`, `deleted`, `checkpoint_completed`,
    /// `checkpoint_failed`, `circuit_opened`, `circuit_half_open`,
    /// `circuit_closed`.
    pub event: String,
    /// Version, error, reason or the event's fields (`checkpoint=3 bytes=…`).
    pub detail: Option<String>,
}

/// The most recent events of a server (the last thousand), shared by the
/// supervisor, the API and the `tracing` layer.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    events: Arc<Mutex<VecDeque<Event>>>,
}

impl EventLog {
    /// Keeps `event`, forgetting the oldest when full.
    pub fn record(&self, flow: &str, event: &str, detail: Option<String>) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.len() == KEPT {
            events.pop_front();
        }
        events.push_back(Event {
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            flow: flow.to_string(),
            event: event.to_string(),
            detail,
        });
    }

    /// The kept events, oldest first; only `flow`'s when given.
    pub fn recent(&self, flow: Option<&str>) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|e| flow.is_none_or(|f| e.flow == f))
            .cloned()
            .collect()
    }

    /// A `tracing` layer recording the events raised inside running flows
    /// into this log. Give it a filter (`streamflow` at info) so that it
    /// does not enable every callsite.
    pub fn layer(&self) -> EventLayer {
        EventLayer { log: self.clone() }
    }
}

/// See [`EventLog::layer`].
pub struct EventLayer {
    log: EventLog,
}

/// The flow a span belongs to, kept in the span's extensions.
struct FlowName(String);

impl<S> Layer<S> for EventLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "flow" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(flow), Some(span)) = (fields.flow, ctx.span(id)) {
            span.extensions_mut().insert(FlowName(flow));
        }
    }

    fn on_event(&self, event: &TracingEvent<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() == SUPERVISOR_TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(name) = fields.event else { return };
        let flow = fields.flow.or_else(|| {
            ctx.event_scope(event)?
                .find_map(|span| span.extensions().get::<FlowName>().map(|f| f.0.clone()))
        });
        if let Some(flow) = flow {
            let detail = (!fields.rest.is_empty()).then_some(fields.rest);
            self.log.record(&flow, &name, detail);
        }
    }
}

/// An event's `event` and `flow` fields, the others as `key=value …`.
#[derive(Default)]
struct Fields {
    event: Option<String>,
    flow: Option<String>,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "event" => self.event = Some(value.to_string()),
            "flow" => self.flow = Some(value.to_string()),
            _ => self.record_debug(field, &value),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "event" => self.event = Some(format!("{value:?}")),
            "flow" => self.flow = Some(format!("{value:?}")),
            "message" => {}
            name => {
                if !self.rest.is_empty() {
                    self.rest.push(' ');
                }
                let _ = write!(self.rest, "{name}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_inside_a_flow_span_are_attributed_to_the_flow() {
        let log = EventLog::default();
        let subscriber = tracing_subscriber::registry().with(log.layer());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("flow", flow = %"orders");
            span.in_scope(|| {
                tracing::info!(
                    event = "checkpoint_completed",
                    checkpoint = 3,
                    bytes = 10,
                    "done"
                );
                tracing::info!("no event field: not kept");
            });
            tracing::info!(event = "outside_any_flow");
            tracing::info!(target: SUPERVISOR_TARGET, flow = "orders", event = "started");
        });
        let events = log.recent(Some("orders"));
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].event, "checkpoint_completed");
        assert_eq!(events[0].detail.as_deref(), Some("checkpoint=3 bytes=10"));
        assert!(log.recent(None).iter().all(|e| e.flow == "orders"));
    }

    #[test]
    fn the_oldest_events_are_forgotten_first() {
        let log = EventLog::default();
        for i in 0..KEPT + 5 {
            log.record("f", "tick", Some(i.to_string()));
        }
        let events = log.recent(None);
        assert_eq!(events.len(), KEPT);
        assert_eq!(events[0].detail.as_deref(), Some("5"));
    }
}
