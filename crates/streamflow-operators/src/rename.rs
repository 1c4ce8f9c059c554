//! `rename`: renames columns (old → new); data is not copied.
//!
//! ```yaml
//! - {name: tidy, type: rename, input: bids, rename: {date_time: ts}}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use streamflow_core::Diagnostics;

use crate::projection::Projection;
use crate::stage::{StageContext, StageFactory};

/// Settings of a `rename` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameConfig {
    /// Existing column name → new name.
    rename: BTreeMap<String, String>,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: RenameConfig = ctx.config()?;
    let schema = ctx.input_schema();
    let mut d = Diagnostics::new();
    let mut columns = Projection::identity(&schema);
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    for (old, new) in &config.rename {
        let path = ctx.at(&format!("rename.{old}"));
        match columns.iter_mut().find(|(n, _)| n == old) {
            Some(slot) => slot.0 = new.clone(),
            None => d.push(
                path,
                match streamflow_dsl::suggest(old, &names) {
                    Some(s) => format!("column '{old}' not found (did you mean '{s}'?)"),
                    None => format!("column '{old}' not found"),
                },
            ),
        }
    }
    for (i, (name, _)) in columns.iter().enumerate() {
        if columns[..i].iter().any(|(n, _)| n == name) {
            d.push(
                ctx.at("rename"),
                format!("renaming makes column '{name}' appear twice"),
            );
        }
    }
    d.into_result(())?;
    Ok(Arc::new(Projection::new(&schema, columns)))
}
