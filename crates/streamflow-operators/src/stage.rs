//! What the planner asks of every stage type.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use streamflow_core::{Diagnostics, Operator};

/// Everything a stage type needs to validate its settings and plan itself.
#[derive(Debug)]
pub struct StageContext<'a> {
    /// Stage name.
    pub name: &'a str,
    /// Path of the stage's settings in the flow file, e.g. `stages[2]`.
    pub path: &'a str,
    /// The type-specific settings.
    pub settings: &'a Map<String, Value>,
    /// Schemas of the logical inputs, in order.
    pub inputs: &'a [SchemaRef],
    /// The stage's `key_by` expressions (text).
    pub key_by: &'a [String],
    /// The event-time column of the (first) input, if known.
    pub event_time: Option<&'a str>,
    /// The event-time column of every input, in order (joins).
    pub input_event_times: &'a [Option<&'a str>],
    /// Named components that `process` stages reference.
    pub components: &'a crate::process::Components,
}

impl StageContext<'_> {
    /// Decodes the settings into the stage's config struct.
    ///
    /// # Errors
    /// Unknown fields and wrong types, with paths.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, Diagnostics> {
        streamflow_dsl::decode_settings(self.settings, self.path)
    }
    /// The schema of the first (for most stages, only) input.
    pub fn input_schema(&self) -> SchemaRef {
        self.inputs
            .first()
            .cloned()
            .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()))
    }
    /// Path of one settings key, e.g. `stages[2].where`.
    pub fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }
}

/// How a stage type treats several inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRule {
    /// Any number of inputs whose schemas must be identical (fan-in).
    SameSchema,
    /// Exactly this many inputs, each with its own schema (joins).
    Exactly(usize),
}

/// A stage planned against its input schemas: knows its output schema and
/// creates one operator per parallel instance.
pub trait StageFactory: Send + Sync {
    /// Schema of every batch the stage emits.
    fn output_schema(&self) -> SchemaRef;
    /// A new operator instance.
    fn create(&self) -> Box<dyn Operator>;
    /// The expressions each input is hash-partitioned by, when the stage
    /// keys its inputs differently (joins); `None` uses `key_by` for all.
    fn partition_keys(&self) -> Option<Vec<Vec<streamflow_expr::CompiledExpr>>> {
        None
    }
    /// The event-time column of the stage's output when the stage declares
    /// one (window results, `watermark` stages); `None` (the default): the
    /// input's event-time column, where the output keeps it as a timestamp.
    fn event_time_column(&self) -> Option<String> {
        None
    }
    /// The input columns (and nested fields) the stage reads when `output`
    /// is what is read of its output — the same for every input; `None`
    /// (the default) when it reads all of them. Sources decode only what
    /// is read (projection pushdown).
    fn input_columns(
        &self,
        _output: &streamflow_expr::UsedColumns,
    ) -> Option<streamflow_expr::UsedColumns> {
        None
    }
    /// The schema of the records the stage sends to its `late` output;
    /// `None` (the default) when they are its (first) input's records.
    fn late_schema(&self) -> Option<SchemaRef> {
        None
    }
}
