//! The declaration types of a flow file, as written by users.
//!
//! Fields common to every source, stage or sink are typed here; the
//! type-specific part (`config` of sources and sinks, the remaining keys of a
//! stage) is kept as JSON and decoded by the component that owns it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Streaming runs until stopped (or every source is exhausted); job mode
/// requires bounded sources, drains them, flushes and exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Run until SIGINT/SIGTERM, then drain gracefully.
    #[default]
    Streaming,
    /// Drain bounded sources, flush, print a summary, exit.
    Job,
}

/// A whole flow file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// Pipeline name.
    pub name: Option<String>,
    /// Execution mode (default `streaming`).
    #[serde(default)]
    pub mode: Mode,
    /// Default queue for every edge not configured otherwise.
    pub queue: Option<QueueSpec>,
    /// Where data enters.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
    /// Operators, in any order; wiring is by `input`.
    #[serde(default)]
    pub stages: Vec<StageSpec>,
    /// Where data leaves.
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
    /// Periodic checkpoints for exactly-once results and recovery.
    pub checkpoint: Option<CheckpointSpec>,
}

impl FlowSpec {
    /// The declaration as a JSON document in normal form: unset fields left
    /// out, the declaration's own keys in one fixed order. The order of
    /// user mappings is kept, since it means something (generated columns,
    /// aggregates). Declarations that differ only in layout, syntax (YAML
    /// or JSON) or the order of their keys give equal documents; the
    /// document parses back to the same declaration.
    pub fn to_document(&self) -> serde_json::Value {
        fn drop_nulls(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(m) => {
                    m.retain(|_, x| !x.is_null());
                    m.values_mut().for_each(drop_nulls);
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls),
                _ => {}
            }
        }
        // A declaration is plain data: serializing it cannot fail.
        let mut doc = serde_json::to_value(self).unwrap_or_default();
        drop_nulls(&mut doc);
        doc
    }
}

/// `checkpoint: {interval: 10s, storage: <dir>, mode: aligned, retain: 3, async: true, timeout: 10m}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Time between checkpoints (default 10 s).
    #[serde(default, with = "opt_duration")]
    pub interval: Option<std::time::Duration>,
    /// Directory (or `file://` URL) for checkpoints (default
    /// `.streamflow/<flow name>/checkpoints`).
    pub storage: Option<String>,
    /// Barrier handling; only `aligned` exists.
    #[serde(default)]
    pub mode: CheckpointMode,
    /// Complete checkpoints to keep (default 3).
    pub retain: Option<i64>,
    /// `true` (default): operators hand their state over and continue while
    /// it is written; `false`: they wait until it is stored.
    #[serde(rename = "async")]
    pub asynchronous: Option<bool>,
    /// A checkpoint not complete this long after it started fails the run,
    /// which then restarts from the previous one (default 10 min).
    #[serde(default, with = "opt_duration")]
    pub timeout: Option<std::time::Duration>,
}

/// How barriers are handled at operators with several inputs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointMode {
    /// Inputs that delivered the barrier wait until all have (exactly-once).
    #[default]
    Aligned,
}

/// A bounded queue on the edges into a stage or sink.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// Maximum number of batches waiting on the edge (> 0).
    pub capacity: i64,
}

/// One or several input names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Inputs {
    /// A single input.
    One(String),
    /// Several inputs (fan-in; schemas must match unless the stage says otherwise).
    Many(Vec<String>),
}

impl Inputs {
    /// The input names in order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Inputs::One(s) => vec![s.as_str()],
            Inputs::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// A source declaration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Unique name.
    pub name: Option<String>,
    /// Source type (`nexmark`, `generator`, `file`, `stdin`, ...).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Type-specific settings.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// Number of parallel instances (≥ 1).
    pub parallelism: Option<i64>,
    /// Sink receiving records that fail decoding.
    pub dlq: Option<String>,
    /// Which column carries event time, and how watermarks are derived from it.
    pub event_time: Option<EventTimeSpec>,
}

/// Event time of a source (or of a `watermark` stage's output):
/// `{column: date_time, watermark: {max_out_of_orderness: 2s}}`, or computed
/// from any SQL expression of the columns, as Flink declares a computed
/// rowtime column with a WATERMARK:
/// `{expr: "COALESCE(Person.date_time, Bid.date_time)", unit: ms, as: ts}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventTimeSpec {
    /// A column (`date_time`) or nested field (`Bid.date_time`) holding the
    /// event time. A top-level column that is not a timestamp is converted
    /// in place; a nested field is copied to a top-level column (`as`).
    pub column: Option<String>,
    /// A SQL expression over the columns giving the event time (instead of
    /// `column`); its value is written to the column named by `as`.
    pub expr: Option<String>,
    /// Unit of integer (or floating) epoch values: `ms` (default), `s`, `us`, `ns`.
    pub unit: Option<EpochUnit>,
    /// Name of the computed event-time column (default `event_time`).
    #[serde(rename = "as")]
    pub name: Option<String>,
    /// Watermark strategy.
    #[serde(default)]
    pub watermark: WatermarkSpec,
}

/// Unit of numeric epoch timestamps.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EpochUnit {
    /// Seconds since the Unix epoch.
    S,
    /// Milliseconds since the Unix epoch.
    #[default]
    Ms,
    /// Microseconds since the Unix epoch.
    Us,
    /// Nanoseconds since the Unix epoch.
    Ns,
}

/// Bounded out-of-orderness watermarks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSpec {
    /// How far behind the highest event time seen the watermark trails (default 0s).
    #[serde(default, with = "opt_duration")]
    pub max_out_of_orderness: Option<std::time::Duration>,
    /// After this long without data the source is marked idle, so it no
    /// longer holds back the watermark of the operators it feeds.
    #[serde(default, with = "opt_duration")]
    pub idle_timeout: Option<std::time::Duration>,
}

/// Durations in specs are written as text (`2s`) and kept as `Duration`.
mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            // Whole milliseconds when exact, else microseconds (the finest unit read).
            Some(d) if d.subsec_nanos() % 1_000_000 == 0 => {
                s.serialize_str(&format!("{}ms", d.as_millis()))
            }
            Some(d) => s.serialize_str(&format!("{}us", d.as_micros())),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<crate::units::HumanDuration>::deserialize(d)?.map(|h| h.0))
    }
}

/// A stage declaration: common fields plus type-specific keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StageSpec {
    /// Unique name.
    pub name: Option<String>,
    /// Stage type (`filter`, `select`, `map`, ...).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Upstream source(s) or stage(s).
    pub input: Option<Inputs>,
    /// Number of parallel instances (≥ 1).
    pub parallelism: Option<i64>,
    /// Queue on the edges into this stage.
    pub queue: Option<QueueSpec>,
    /// Sink receiving rows this stage rejects.
    pub dlq: Option<String>,
    /// Sink receiving records too late for their windows (window stages).
    pub late: Option<String>,
    /// Expressions whose hash routes rows to instances.
    pub key_by: Option<Vec<String>>,
    /// Type-specific settings (`where`, `select`, `window`, ...).
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

/// A sink declaration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// Unique name.
    pub name: Option<String>,
    /// Sink type (`stdout`, `file`, `blackhole`, ...).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The stage or source it writes; absent for a sink used only as a `dlq`.
    pub input: Option<Inputs>,
    /// Sink receiving the rows this sink gives up on (an HTTP request
    /// finally refused, say).
    pub dlq: Option<String>,
    /// Type-specific settings.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// Number of parallel instances (≥ 1).
    pub parallelism: Option<i64>,
    /// Queue on the edge into this sink.
    pub queue: Option<QueueSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any duration a flow file can state survives the normal form.
        #[test]
        fn durations_survive_the_normal_form(micros in 0u64..10_000_000_000) {
            let spec = FlowSpec {
                checkpoint: Some(CheckpointSpec {
                    interval: Some(std::time::Duration::from_micros(micros)),
                    ..CheckpointSpec::default()
                }),
                ..FlowSpec::default()
            };
            let doc = spec.to_document();
            let back: FlowSpec = serde_json::from_value(doc.clone()).expect("parses back");
            prop_assert_eq!(back, spec, "{}", doc);
        }
    }
}
