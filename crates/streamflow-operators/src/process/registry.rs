//! The registry of named components that `process` node trees reference:
//! processors, predicates, conditions, reducers, error handlers and
//! channels, registered by Rust code and looked up by flow files
//! (`ref: enrich`, `predicate: is_premium`, `stream: audit`).
//!
//! Registering and removing emit lifecycle events (`tracing`, target
//! `streamflow::process`).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

use arrow::array::{BooleanArray, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc::Sender;

use super::outcome::{NodeError, Outcome, Processed};

/// A named processing step: transforms a batch of records, reporting the
/// records it failed on (the others continue).
#[async_trait]
pub trait Processor: Send + Sync {
    /// The schema of its output for `input` (called when the flow is
    /// planned); the default keeps the input schema.
    ///
    /// # Errors
    /// A message when the processor cannot take this input.
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, String> {
        Ok(Arc::clone(input))
    }
    /// Processes `batch`. `Err` fails every record of the batch.
    ///
    /// # Errors
    /// The reason the whole call failed.
    async fn process(&self, batch: RecordBatch) -> Result<Processed, String>;
}

/// A named yes/no question about each record (`filter` and `contest` nodes).
pub trait Predicate: Send + Sync {
    /// One answer per row; null counts as no.
    ///
    /// # Errors
    /// When the batch cannot be evaluated.
    fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, String>;
}

/// A named route key for each record (`switch` nodes).
pub trait Condition: Send + Sync {
    /// One route key per row; null matches no route.
    ///
    /// # Errors
    /// When the batch cannot be evaluated.
    fn evaluate(&self, batch: &RecordBatch) -> Result<StringArray, String>;
}

/// Combines the results of a `concurrent` node's children.
pub trait Reducer: Send + Sync {
    /// The output schema for the input schema and each child's output schema.
    ///
    /// # Errors
    /// A message when these schemas cannot be combined.
    fn output_schema(&self, input: &SchemaRef, results: &[SchemaRef]) -> Result<SchemaRef, String>;
    /// The node's outcome from its input and every child's outcome (in
    /// child order, each over the same input rows).
    fn reduce(&self, input: &RecordBatch, results: &[Outcome]) -> Outcome;
}

/// Observes failures inside a `handle` node (the failures still propagate).
#[async_trait]
pub trait ErrorHandler: Send + Sync {
    /// Called with the failed records and, row by row, why they failed.
    async fn handle(&self, failed: RecordBatch, errors: &[Arc<NodeError>]);
}

/// Every kind of component, by name.
#[derive(Default)]
struct Tables {
    processors: BTreeMap<String, Arc<dyn Processor>>,
    predicates: BTreeMap<String, Arc<dyn Predicate>>,
    conditions: BTreeMap<String, Arc<dyn Condition>>,
    reducers: BTreeMap<String, Arc<dyn Reducer>>,
    error_handlers: BTreeMap<String, Arc<dyn ErrorHandler>>,
    channels: BTreeMap<String, Sender<RecordBatch>>,
    schemas: BTreeMap<String, Value>,
}

/// The named components node trees can reference. Cheap to share; lookups
/// happen when a flow is planned, never per record.
pub struct Components {
    tables: RwLock<Tables>,
}

impl Default for Components {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! component_kind {
    ($add:ident, $get:ident, $field:ident, $kind:literal, $ty:ty) => {
        #[doc = concat!("Registers (or replaces) the ", $kind, " `name`.")]
        pub fn $add(&self, name: impl Into<String>, component: $ty) -> &Self {
            let name = name.into();
            tracing::info!(target: "streamflow::process", event = "component_registered", kind = $kind, name = %name);
            self.write().$field.insert(name, component);
            self
        }
        #[doc = concat!("The ", $kind, " `name`, if registered.")]
        pub fn $get(&self, name: &str) -> Option<$ty> {
            self.read().$field.get(name).cloned()
        }
    };
}

impl Components {
    /// A registry holding the built-in components: the reducer `merge`
    /// and the error handler `log`.
    pub fn new() -> Self {
        tracing::debug!(target: "streamflow::process", event = "factory_created");
        let c = Self {
            tables: RwLock::new(Tables::default()),
        };
        c.reducer("merge", Arc::new(super::builtin::Merge));
        c.error_handler("log", Arc::new(super::builtin::Log));
        c
    }

    /// The shared registry of built-ins, used when a flow is planned
    /// without one of its own (the CLI).
    pub fn builtin() -> &'static Components {
        static BUILTIN: OnceLock<Components> = OnceLock::new();
        BUILTIN.get_or_init(Components::new)
    }

    component_kind!(
        processor,
        get_processor,
        processors,
        "processor",
        Arc<dyn Processor>
    );
    component_kind!(
        predicate,
        get_predicate,
        predicates,
        "predicate",
        Arc<dyn Predicate>
    );
    component_kind!(
        condition,
        get_condition,
        conditions,
        "condition",
        Arc<dyn Condition>
    );
    component_kind!(reducer, get_reducer, reducers, "reducer", Arc<dyn Reducer>);
    component_kind!(
        error_handler,
        get_error_handler,
        error_handlers,
        "error handler",
        Arc<dyn ErrorHandler>
    );
    component_kind!(
        channel,
        get_channel,
        channels,
        "channel",
        Sender<RecordBatch>
    );

    /// Registers (or replaces) the named node tree `name` (a schema, in
    /// Flume's words), which nodes reference with `ref: name` like a
    /// processor. It is validated where it is used.
    pub fn schema(&self, name: impl Into<String>, tree: Value) -> &Self {
        let name = name.into();
        let replaced = self.write().schemas.insert(name.clone(), tree).is_some();
        let event = if replaced {
            "schema_updated"
        } else {
            "schema_registered"
        };
        tracing::info!(target: "streamflow::process", event, name = %name);
        self
    }

    /// The node tree registered as `name`.
    pub fn get_schema(&self, name: &str) -> Option<Value> {
        self.read().schemas.get(name).cloned()
    }

    /// Removes the node tree `name`; true if it existed.
    pub fn remove_schema(&self, name: &str) -> bool {
        let removed = self.write().schemas.remove(name).is_some();
        if removed {
            tracing::info!(target: "streamflow::process", event = "schema_removed", name = %name);
        }
        removed
    }

    /// Removes every component called `name`; true if one existed.
    pub fn remove(&self, name: &str) -> bool {
        let mut t = self.write();
        let removed = [
            t.processors.remove(name).is_some(),
            t.predicates.remove(name).is_some(),
            t.conditions.remove(name).is_some(),
            t.reducers.remove(name).is_some(),
            t.error_handlers.remove(name).is_some(),
            t.channels.remove(name).is_some(),
        ]
        .contains(&true);
        if removed {
            tracing::info!(target: "streamflow::process", event = "component_removed", name = %name);
        }
        removed
    }

    /// Names of the registered processors and node trees (for error hints).
    pub fn processor_names(&self) -> Vec<String> {
        let t = self.read();
        t.processors
            .keys()
            .chain(t.schemas.keys())
            .cloned()
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for Components {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.read();
        f.debug_struct("Components")
            .field("processors", &t.processors.keys().collect::<Vec<_>>())
            .field("predicates", &t.predicates.keys().collect::<Vec<_>>())
            .field("conditions", &t.conditions.keys().collect::<Vec<_>>())
            .field("reducers", &t.reducers.keys().collect::<Vec<_>>())
            .field(
                "error_handlers",
                &t.error_handlers.keys().collect::<Vec<_>>(),
            )
            .field("channels", &t.channels.keys().collect::<Vec<_>>())
            .field("schemas", &t.schemas.keys().collect::<Vec<_>>())
            .finish()
    }
}
