//! `union`: merges several inputs with identical schemas (the planner checks
//! the schemas); batches pass through unchanged.
//!
//! ```yaml
//! - {name: all, type: union, input: [eu, us]}
//! ```

use std::sync::Arc;

use serde::Deserialize;
use streamflow_core::Diagnostics;

use crate::projection::Projection;
use crate::stage::{StageContext, StageFactory};

/// Settings of a `union` stage (none besides the common ones).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnionConfig {}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let _: UnionConfig = ctx.config()?;
    let schema = ctx.input_schema();
    Ok(Arc::new(Projection::new(
        &schema,
        Projection::identity(&schema),
    )))
}
