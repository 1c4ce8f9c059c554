//! `add_column`: adds columns holding one static value each; adding a column
//! that already exists is an error.
//!
//! ```yaml
//! - {name: tagged, type: add_column, input: bids, add_column: {region: eu, version: 2}}
//! ```

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::Diagnostics;

use crate::projection::{ColumnSource, Projection};
use crate::stage::{StageContext, StageFactory};

/// Settings of an `add_column` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddColumnConfig {
    /// New column name → value (string, integer, float, boolean or null).
    add_column: Map<String, Value>,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: AddColumnConfig = ctx.config()?;
    let schema = ctx.input_schema();
    let mut d = Diagnostics::new();
    let mut columns = Projection::identity(&schema);
    for (name, value) in &config.add_column {
        let path = ctx.at(&format!("add_column.{name}"));
        if schema.index_of(name).is_ok() {
            d.push(
                path,
                format!("column '{name}' already exists (use map to replace it)"),
            );
            continue;
        }
        match streamflow_expr::scalar_from_json(value) {
            Ok(v) => columns.push((name.clone(), ColumnSource::Constant(v))),
            Err(m) => d.push(path, m),
        }
    }
    d.into_result(())?;
    Ok(Arc::new(Projection::new(&schema, columns)))
}
