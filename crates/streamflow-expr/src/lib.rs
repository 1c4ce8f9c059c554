//! SQL expressions for StreamFlow.
//!
//! An expression such as `price * 0.908` or `lower(channel)` is planned once
//! against its input schema with DataFusion's SQL planner, type-coerced and
//! turned into a physical expression; evaluating it on a batch is then fully
//! vectorised. Unknown columns and functions are reported with a suggestion.

mod aggregate;
mod context;
mod expression;
mod types;
mod used;

pub use aggregate::{CompiledAggregate, GroupedAggregate, SingleAggregate, compile_aggregate};
pub use context::suggest;
pub use expression::{CompiledExpr, ExprError, compile, compile_predicate};
pub use types::{parse_data_type, scalar_from_json};
pub use used::{ColumnPath, UsedColumns};

/// DataFusion pieces other crates need to name (`ScalarValue`, hashing).
pub use datafusion_common::{ScalarValue, hash_utils};
