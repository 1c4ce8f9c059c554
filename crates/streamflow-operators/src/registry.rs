//! The one table of stage types: name → planner and metadata.

use std::sync::Arc;

use streamflow_core::Diagnostics;

use crate::stage::{InputRule, StageContext, StageFactory};
use crate::{
    add_column, aggregate, dedup, filter, join, map, process, rename, select, top_n, union,
    validate, watermark, window,
};

/// Plans a stage from its context.
pub type PlanFn = fn(&StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics>;

/// A stage type known to the flow-file language.
#[derive(Debug, Clone, Copy)]
pub struct StageKind {
    /// The `type:` value.
    pub name: &'static str,
    /// One line for `--help` and error messages.
    pub description: &'static str,
    /// How several inputs are handled.
    pub inputs: InputRule,
    /// Whether the stage can route late records to a `late` output.
    pub late_output: bool,
    /// Validates settings against the input schemas and plans the stage.
    pub plan: PlanFn,
}

/// Every stage type, in the order shown to users.
pub static STAGES: &[StageKind] = &[
    StageKind {
        name: "filter",
        description: "keep rows where a predicate holds",
        inputs: InputRule::SameSchema,
        late_output: false,
        plan: filter::plan,
    },
    StageKind {
        name: "select",
        description: "project columns or expressions",
        inputs: InputRule::SameSchema,
        late_output: false,
        plan: select::plan,
    },
    StageKind {
        name: "rename",
        description: "rename columns",
        inputs: InputRule::SameSchema,
        late_output: false,
        plan: rename::plan,
    },
    StageKind {
        name: "add_column",
        description: "add columns with static values",
        inputs: InputRule::SameSchema,
        late_output: false,
        plan: add_column::plan,
    },
    StageKind {
        name: "map",
        description: "add or replace computed columns",
        inputs: InputRule::SameSchema,
        late_output: false,
        plan: map::plan,
    },
    StageKind {
        name: "validate",
        description: "enforce a declared schema; bad rows to the dlq",
        inputs: InputRule::SameSchema,
        late_output: false,
        plan: validate::plan,
    },
    StageKind {
        name: "watermark",
        description: "(re)declare the event time of a stream and generate its watermarks",
        inputs: InputRule::SameSchema,
        late_output: false,
        plan: watermark::plan,
    },
    StageKind {
        name: "window",
        description: "event-time tumbling or sliding windows with aggregates",
        inputs: InputRule::SameSchema,
        late_output: true,
        plan: window::plan,
    },
    StageKind {
        name: "aggregate",
        description: "continuously updated aggregates per key, as a changelog",
        inputs: InputRule::SameSchema,
        late_output: false,
        plan: aggregate::plan,
    },
    StageKind {
        name: "dedup",
        description: "first record per key, for a ttl of event time",
        inputs: InputRule::SameSchema,
        late_output: false,
        plan: dedup::plan,
    },
    StageKind {
        name: "top_n",
        description: "first n rows per key by order_by, continuously or per window",
        inputs: InputRule::SameSchema,
        late_output: true,
        plan: top_n::plan,
    },
    StageKind {
        name: "join",
        description: "join two inputs on equal keys: window, interval, regular (ttl) or table",
        inputs: InputRule::Exactly(2),
        late_output: true,
        plan: join::plan,
    },
    StageKind {
        name: "process",
        description: "a resilience node tree (retry, timeout, circuit-breaker, ...) over processors",
        inputs: InputRule::SameSchema,
        late_output: false,
        plan: process::plan,
    },
    StageKind {
        name: "union",
        description: "merge inputs with identical schemas",
        inputs: InputRule::SameSchema,
        late_output: false,
        plan: union::plan,
    },
];

/// All stage types.
pub fn stage_kinds() -> &'static [StageKind] {
    STAGES
}

/// The stage type called `name`.
pub fn find_stage(name: &str) -> Option<&'static StageKind> {
    STAGES.iter().find(|k| k.name == name)
}
