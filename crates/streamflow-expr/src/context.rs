//! The function catalogue the SQL planner resolves names against.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::datatypes::DataType;
use datafusion_common::config::ConfigOptions;
use datafusion_common::{TableReference, plan_err};
use datafusion_expr::planner::{ContextProvider, ExprPlanner};
use datafusion_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};

/// Every scalar and aggregate function DataFusion ships, by name.
#[derive(Debug)]
pub(crate) struct FunctionCatalog {
    scalars: HashMap<String, Arc<ScalarUDF>>,
    aggregates: HashMap<String, Arc<AggregateUDF>>,
    planners: Vec<Arc<dyn ExprPlanner>>,
    options: ConfigOptions,
}

impl FunctionCatalog {
    /// The process-wide catalogue, built on first use.
    pub(crate) fn get() -> &'static FunctionCatalog {
        static CATALOG: OnceLock<FunctionCatalog> = OnceLock::new();
        CATALOG.get_or_init(|| {
            let mut scalars = HashMap::new();
            for f in datafusion_functions::all_default_functions() {
                for alias in f.aliases() {
                    scalars.insert(alias.clone(), Arc::clone(&f));
                }
                scalars.insert(f.name().to_string(), f);
            }
            let mut aggregates = HashMap::new();
            for f in datafusion_functions_aggregate::all_default_aggregate_functions() {
                for alias in f.aliases() {
                    aggregates.insert(alias.clone(), Arc::clone(&f));
                }
                aggregates.insert(f.name().to_string(), f);
            }
            let planners: Vec<Arc<dyn ExprPlanner>> = vec![
                Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
                Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
                Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
                Arc::new(datafusion_functions_aggregate::planner::AggregateFunctionPlanner),
            ];
            FunctionCatalog {
                scalars,
                aggregates,
                planners,
                options: ConfigOptions::default(),
            }
        })
    }
}

impl ContextProvider for FunctionCatalog {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion_common::Result<Arc<dyn TableSource>> {
        plan_err!("tables are not available in expressions (found '{name}')")
    }
    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.planners
    }
    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.scalars.get(name).cloned()
    }
    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.aggregates.get(name).cloned()
    }
    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }
    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        self.scalars.keys().cloned().collect()
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udaf_names(&self) -> Vec<String> {
        self.aggregates.keys().cloned().collect()
    }
    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The candidate closest to `name` by edit distance, if it is close enough
/// to be a likely typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                datafusion_common::utils::datafusion_strsim::levenshtein(&lower, &c.to_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(suggest("bidz", ["bids", "persons"]), Some("bids"));
        assert_eq!(suggest("prise", ["price", "auction"]), Some("price"));
        assert_eq!(suggest("zzzzzz", ["price", "auction"]), None);
    }
}
