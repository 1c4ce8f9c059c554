//! A fluent Rust API producing the same declaration as a flow file.

use serde_json::{Map, Value, json};

use crate::spec::{FlowSpec, Inputs, Mode, SinkSpec, SourceSpec, StageSpec};

/// Builds a [`FlowSpec`] step by step. Each `stage` call reads the previous
/// node's output unless an explicit input is given with [`PipelineBuilder::stage_from`].
///
/// ```
/// use streamflow_dsl::PipelineBuilder;
/// let spec = PipelineBuilder::new("demo")
///     .source("events", "nexmark", serde_json::json!({"events": 1000}))
///     .filter("bids", "bid IS NOT NULL")
///     .sink("out", "blackhole", serde_json::json!({}))
///     .build();
/// assert_eq!(spec.stages.len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct PipelineBuilder {
    spec: FlowSpec,
    last: Option<String>,
}

impl PipelineBuilder {
    /// A pipeline called `name`, in job mode.
    pub fn new(name: &str) -> Self {
        Self {
            spec: FlowSpec {
                name: Some(name.to_string()),
                mode: Mode::Job,
                ..FlowSpec::default()
            },
            last: None,
        }
    }

    /// Sets the execution mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.spec.mode = mode;
        self
    }

    /// Adds a source with its type-specific `config` (a JSON object).
    pub fn source(mut self, name: &str, kind: &str, config: Value) -> Self {
        self.spec.sources.push(SourceSpec {
            name: Some(name.to_string()),
            kind: Some(kind.to_string()),
            config: as_map(config),
            ..SourceSpec::default()
        });
        self.last = Some(name.to_string());
        self
    }

    /// Adds a stage of type `kind` reading the previous node, with its settings.
    pub fn stage(self, name: &str, kind: &str, settings: Value) -> Self {
        let input = self.last.clone().map(Inputs::One);
        self.stage_from(name, kind, input, settings)
    }

    /// Adds a stage reading `input` explicitly.
    pub fn stage_from(
        mut self,
        name: &str,
        kind: &str,
        input: Option<Inputs>,
        settings: Value,
    ) -> Self {
        self.spec.stages.push(StageSpec {
            name: Some(name.to_string()),
            kind: Some(kind.to_string()),
            input,
            settings: as_map(settings),
            ..StageSpec::default()
        });
        self.last = Some(name.to_string());
        self
    }

    /// Adds a `filter` stage keeping rows where `predicate` is true.
    pub fn filter(self, name: &str, predicate: &str) -> Self {
        self.stage(name, "filter", json!({ "where": predicate }))
    }

    /// Adds a `select` stage computing `columns` (name → SQL expression).
    pub fn select(self, name: &str, columns: &[(&str, &str)]) -> Self {
        let map: Map<String, Value> = columns
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        self.stage(name, "select", json!({ "select": map }))
    }

    /// Adds a `map` stage adding or replacing `columns` (name → SQL expression).
    pub fn map(self, name: &str, columns: &[(&str, &str)]) -> Self {
        let map: Map<String, Value> = columns
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        self.stage(name, "map", json!({ "map": map }))
    }

    /// Adds a `process` stage running each record through the node tree
    /// `node` (see the `process` stage reference).
    pub fn process(self, name: &str, node: Value) -> Self {
        self.stage(name, "process", json!({ "node": node }))
    }

    /// Sends the dead letters of the node added last to the sink `sink`
    /// (declare it with [`dead_letter_sink`](Self::dead_letter_sink)).
    pub fn dlq(mut self, sink: &str) -> Self {
        let sink = Some(sink.to_string());
        self.on_last(|s| s.dlq = sink.clone(), |s| s.dlq = sink.clone());
        self
    }

    /// Adds a sink that receives dead letters only (no input).
    pub fn dead_letter_sink(mut self, name: &str, kind: &str, config: Value) -> Self {
        self.spec.sinks.push(SinkSpec {
            name: Some(name.to_string()),
            kind: Some(kind.to_string()),
            config: as_map(config),
            ..SinkSpec::default()
        });
        self
    }

    /// Sets the parallelism of the node added last.
    pub fn parallelism(mut self, p: i64) -> Self {
        self.on_last(|s| s.parallelism = Some(p), |s| s.parallelism = Some(p));
        self
    }

    /// Changes the stage or source added last.
    fn on_last(
        &mut self,
        stage: impl FnOnce(&mut StageSpec),
        source: impl FnOnce(&mut SourceSpec),
    ) {
        let last = self.last.clone();
        if let Some(s) = self.spec.stages.iter_mut().rev().find(|s| s.name == last) {
            stage(s);
        } else if let Some(s) = self.spec.sources.iter_mut().rev().find(|s| s.name == last) {
            source(s);
        }
    }

    /// Adds a sink reading the previous node.
    pub fn sink(mut self, name: &str, kind: &str, config: Value) -> Self {
        self.spec.sinks.push(SinkSpec {
            name: Some(name.to_string()),
            kind: Some(kind.to_string()),
            input: self.last.clone().map(Inputs::One),
            config: as_map(config),
            ..SinkSpec::default()
        });
        self
    }

    /// The declaration; validate it like a file (`FlowGraph::from_spec` and the planner).
    pub fn build(self) -> FlowSpec {
        self.spec
    }
}

fn as_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
