//! `select`: keeps a list of columns, or computes a map name → expression.
//!
//! ```yaml
//! - {name: q0, type: select, input: bids, select: [auction, bidder, price]}
//! - {name: q1, type: select, input: bids, select: {auction: auction, price: "price * 0.908"}}
//! ```

use std::sync::Arc;

use columns::OrderedColumns;
use serde::Deserialize;
use streamflow_core::{Diagnostic, Diagnostics};

use crate::projection::{ColumnSource, Projection};
use crate::stage::{StageContext, StageFactory};

/// Settings of a `select` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectConfig {
    /// Column names / expressions, or output name → expression.
    select: OrderedColumns,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: SelectConfig = ctx.config()?;
    let schema = ctx.input_schema();
    let mut d = Diagnostics::new();
    let mut columns = Vec::new();
    for (i, (name, sql, key)) in config.select.entries().into_iter().enumerate() {
        let path = match key {
            true => ctx.at(&format!("select.{name}")),
            false => ctx.at(&format!("select[{i}]")),
        };
        if columns
            .iter()
            .any(|(n, _): &(String, ColumnSource)| *n == name)
        {
            d.push(path, format!("column '{name}' selected twice"));
            continue;
        }
        match schema.index_of(&sql) {
            Ok(idx) => columns.push((name, ColumnSource::Input(idx))),
            Err(_) => match streamflow_expr::compile(&sql, &schema) {
                Ok(e) => columns.push((name, ColumnSource::Expr(e))),
                Err(e) => d.0.push(Diagnostic::new(path, e.message)),
            },
        }
    }
    if columns.is_empty() && d.is_empty() {
        d.push(ctx.at("select"), "select at least one column");
    }
    d.into_result(())?;
    Ok(Arc::new(Projection::new(&schema, columns)))
}

/// `select:` as a list or a map, keeping the order written.
mod columns {
    use serde::Deserialize;
    use serde_json::{Map, Value};

    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub(crate) enum OrderedColumns {
        List(Vec<String>),
        Map(Map<String, Value>),
    }

    impl OrderedColumns {
        /// `(output name, sql, written as map)` per column.
        pub(crate) fn entries(&self) -> Vec<(String, String, bool)> {
            match self {
                OrderedColumns::List(v) => {
                    v.iter().map(|s| (s.clone(), s.clone(), false)).collect()
                }
                OrderedColumns::Map(m) => m
                    .iter()
                    .map(|(k, v)| {
                        let sql = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), sql, true)
                    })
                    .collect(),
            }
        }
    }
}
