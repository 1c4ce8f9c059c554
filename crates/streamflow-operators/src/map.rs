//! `map`: adds computed columns, keeping every input column; a computed
//! column with an existing name replaces it in place.
//!
//! ```yaml
//! - {name: euros, type: map, input: bids, map: {price_eur: "price * 0.908"}}
//! ```

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::Diagnostics;

use crate::projection::{ColumnSource, Projection};
use crate::stage::{StageContext, StageFactory};

/// Settings of a `map` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapConfig {
    /// Output column name → SQL expression over the input columns.
    map: Map<String, Value>,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: MapConfig = ctx.config()?;
    let schema = ctx.input_schema();
    let mut d = Diagnostics::new();
    let mut columns = Projection::identity(&schema);
    for (name, sql) in &config.map {
        let path = ctx.at(&format!("map.{name}"));
        let sql = match sql {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match streamflow_expr::compile(&sql, &schema) {
            Ok(e) => match columns.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = ColumnSource::Expr(e),
                None => columns.push((name.clone(), ColumnSource::Expr(e))),
            },
            Err(e) => d.push(path, e.message),
        }
    }
    if config.map.is_empty() {
        d.push(ctx.at("map"), "map at least one column");
    }
    d.into_result(())?;
    Ok(Arc::new(Projection::new(&schema, columns)))
}
