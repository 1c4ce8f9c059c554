//! Compiling SQL text into an evaluable physical expression.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion_common::{Column, DFSchema, DataFusionError, SchemaError};
use datafusion_expr::Expr;
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_expr::simplify::SimplifyContext;
use datafusion_optimizer::simplify_expressions::ExprSimplifier;
use datafusion_physical_expr::{PhysicalExpr, create_physical_expr};
use datafusion_sql::planner::{ParserOptions, PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;

use crate::context::{FunctionCatalog, suggest};
use crate::used::{PRESENCE, UsedColumns};
use datafusion_common::ScalarValue;

/// Why an expression could not be planned against a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// A message fit for a validation report, e.g.
    /// `column 'prise' not found (did you mean 'price'?)`.
    pub message: String,
}

impl ExprError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// A SQL expression planned against one input schema, evaluable on any
/// batch of that schema.
#[derive(Clone)]
pub struct CompiledExpr {
    sql: String,
    physical: Arc<dyn PhysicalExpr>,
    data_type: DataType,
    nullable: bool,
    columns: UsedColumns,
}

impl fmt::Debug for CompiledExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledExpr")
            .field("sql", &self.sql)
            .field("type", &self.data_type)
            .finish()
    }
}

impl CompiledExpr {
    /// The columns and nested struct fields it reads.
    pub fn columns(&self) -> &UsedColumns {
        &self.columns
    }
    /// The SQL text it was compiled from.
    pub fn sql(&self) -> &str {
        &self.sql
    }
    /// The type of the values it produces.
    pub fn data_type(&self) -> &DataType {
        &self.data_type
    }
    /// Whether it may produce nulls.
    pub fn nullable(&self) -> bool {
        self.nullable
    }
    /// Evaluates on `batch`, producing one value per row.
    ///
    /// # Errors
    /// Evaluation errors (division by zero, failed casts ...) fail the whole
    /// batch; callers isolate the offending rows if they need to.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef, ExprError> {
        self.physical
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| ExprError::new(clean_message(&e)))
    }
    /// Evaluates a predicate; nulls count as false.
    pub fn evaluate_predicate(&self, batch: &RecordBatch) -> Result<BooleanArray, ExprError> {
        let array = self.evaluate(batch)?;
        let bools = array
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| ExprError::new(format!("`{}` is not a boolean expression", self.sql)))?;
        Ok(if bools.null_count() > 0 {
            arrow::compute::prep_null_mask_filter(bools)
        } else {
            bools.clone()
        })
    }
}

/// Plans `sql` against `schema`.
///
/// Identifiers are case-sensitive (`Bid.price` reads field `price` of struct
/// column `Bid`); aggregate functions are rejected here.
pub fn compile(sql: &str, schema: &SchemaRef) -> Result<CompiledExpr, ExprError> {
    let logical = plan_logical(sql, schema)?;
    if contains_aggregate(&logical) {
        return Err(ExprError::new(format!(
            "aggregate functions are not allowed here (found in `{sql}`); use a window or aggregate stage"
        )));
    }
    let df_schema = DFSchema::try_from(schema.as_ref().clone())
        .map_err(|e| ExprError::new(clean_message(&e)))?;
    let props = ExecutionProps::new();
    let physical = create_physical_expr(
        &logical,
        &df_schema,
        &props,
        &PhysicalPlanningContext::default(),
    )
    .map_err(|e| ExprError::new(clean_message(&e)))?;
    let field = physical
        .return_field(schema.as_ref())
        .map_err(|e| ExprError::new(clean_message(&e)))?;
    Ok(CompiledExpr {
        sql: sql.to_string(),
        physical,
        data_type: field.data_type().clone(),
        nullable: field.is_nullable(),
        columns: used_columns(&logical),
    })
}

/// The columns and nested fields an expression reads.
pub(crate) fn used_columns(expr: &Expr) -> UsedColumns {
    use datafusion_common::tree_node::TreeNodeRecursion;
    let mut used = UsedColumns::none();
    let _ = expr.apply(|e| {
        // `s IS [NOT] NULL` reads only whether struct `s` is there.
        if let Expr::IsNull(inner) | Expr::IsNotNull(inner) = e
            && let Some(mut path) = path_of(inner)
        {
            path.push(PRESENCE.to_string());
            used.add(path);
            return Ok(TreeNodeRecursion::Jump);
        }
        Ok(match path_of(e) {
            Some(path) => {
                used.add(path);
                TreeNodeRecursion::Jump
            }
            None => TreeNodeRecursion::Continue,
        })
    });
    used
}

/// `a` → `[a]`, `a.b.c` (field access by literal names) → `[a, b, c]`.
fn path_of(expr: &Expr) -> Option<Vec<String>> {
    match expr {
        Expr::Column(c) => Some(vec![c.name.clone()]),
        Expr::ScalarFunction(f) if f.func.name() == "get_field" && f.args.len() == 2 => {
            let Expr::Literal(value, _) = &f.args[1] else {
                return None;
            };
            let field = match value {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => s.clone(),
                _ => return None,
            };
            let mut path = path_of(&f.args[0])?;
            path.push(field);
            Some(path)
        }
        _ => None,
    }
}

/// Plans a boolean predicate against `schema`.
pub fn compile_predicate(sql: &str, schema: &SchemaRef) -> Result<CompiledExpr, ExprError> {
    let expr = compile(sql, schema)?;
    if expr.data_type() != &DataType::Boolean {
        return Err(ExprError::new(format!(
            "`{sql}` must be a boolean expression, but it is of type {}",
            expr.data_type()
        )));
    }
    Ok(expr)
}

/// SQL text → type-coerced, simplified logical expression.
pub(crate) fn plan_logical(sql: &str, schema: &SchemaRef) -> Result<Expr, ExprError> {
    let dialect = GenericDialect {};
    let ast = Parser::new(&dialect)
        .try_with_sql(sql)
        .and_then(|mut p| {
            let e = p.parse_expr()?;
            p.expect_token(&datafusion_sql::sqlparser::tokenizer::Token::EOF)?;
            Ok(e)
        })
        .map_err(|e| ExprError::new(format!("invalid expression `{sql}`: {e}")))?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone())
        .map_err(|e| ExprError::new(clean_message(&e)))?;
    let options = ParserOptions {
        enable_ident_normalization: false,
        map_string_types_to_utf8view: false,
        ..ParserOptions::new()
    };
    let planner = SqlToRel::new_with_options(FunctionCatalog::get(), options);
    let expr = planner
        .sql_to_expr(ast, &df_schema, &mut PlannerContext::new())
        .map_err(|e| {
            unknown_name_error(&e, schema).unwrap_or_else(|| ExprError::new(clean_message(&e)))
        })?;
    let df_schema = Arc::new(df_schema);
    let simplifier = ExprSimplifier::new(
        SimplifyContext::builder()
            .with_schema(Arc::clone(&df_schema))
            .build(),
    );
    let expr = simplifier
        .coerce(expr, &df_schema)
        .map_err(|e| ExprError::new(clean_message(&e)))?;
    simplifier
        .simplify(expr)
        .map_err(|e| ExprError::new(clean_message(&e)))
}

fn contains_aggregate(expr: &Expr) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if matches!(e, Expr::AggregateFunction(_)) {
            found = true;
        }
        Ok(datafusion_common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

use datafusion_common::tree_node::TreeNode;

/// Rewrites DataFusion's unknown-column and unknown-function errors into
/// short messages with a "did you mean" suggestion.
fn unknown_name_error(e: &DataFusionError, schema: &SchemaRef) -> Option<ExprError> {
    match e.find_root() {
        DataFusionError::SchemaError(err, _) => match err.as_ref() {
            SchemaError::FieldNotFound { field, .. } => Some(column_not_found(field, schema)),
            _ => None,
        },
        DataFusionError::Plan(msg) if msg.contains("Invalid function") => {
            let name = msg.split('\'').nth(1).unwrap_or(msg.as_str());
            let catalog = FunctionCatalog::get();
            let names = ContextNames::of(catalog);
            let hint = suggest(name, names.iter().map(String::as_str))
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            Some(ExprError::new(format!("unknown function '{name}'{hint}")))
        }
        _ => None,
    }
}

fn column_not_found(field: &Column, schema: &SchemaRef) -> ExprError {
    let name = field.flat_name();
    let hint = suggest(&name, schema.fields().iter().map(|f| f.name().as_str()))
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default();
    ExprError::new(format!("column '{name}' not found{hint}"))
}

struct ContextNames;
impl ContextNames {
    fn of(catalog: &FunctionCatalog) -> Vec<String> {
        use datafusion_expr::planner::ContextProvider;
        let mut names = catalog.udf_names();
        names.extend(catalog.udaf_names());
        names
    }
}

/// DataFusion errors carry prefixes ("Error during planning: ") and
/// backtrace hints; keep only the message.
pub(crate) fn clean_message(e: &DataFusionError) -> String {
    let root = e.find_root();
    let text = match root {
        DataFusionError::Plan(m)
        | DataFusionError::Execution(m)
        | DataFusionError::NotImplemented(m) => m.clone(),
        DataFusionError::ArrowError(a, _) => a.to_string(),
        other => other.to_string(),
    };
    text.lines().next().unwrap_or_default().trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, StructArray};
    use arrow::datatypes::{Field, Fields, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int64, false),
            Field::new("channel", DataType::Utf8, false),
        ]))
    }

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![100, 250])),
                Arc::new(StringArray::from(vec!["Google", "Apple"])),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn arithmetic_is_coerced_and_vectorised() {
        let e = compile("price * 0.908", &schema()).expect("compiles");
        assert_eq!(e.data_type(), &DataType::Float64);
        let out = e.evaluate(&batch()).expect("evaluates");
        let out = out.as_any().downcast_ref::<Float64Array>().expect("f64");
        assert!((out.value(0) - 90.8).abs() < 1e-9);
        assert!((out.value(1) - 227.0).abs() < 1e-9);
    }

    #[test]
    fn functions_and_case() {
        let e = compile(
            "CASE WHEN lower(channel) = 'apple' THEN 1 ELSE 0 END",
            &schema(),
        )
        .expect("compiles");
        let out = e.evaluate(&batch()).expect("evaluates");
        let out = out.as_any().downcast_ref::<Int64Array>().expect("i64");
        assert_eq!(out.values().to_vec(), vec![0, 1]);
    }

    #[test]
    fn unknown_column_suggests() {
        let err = compile("prise > 3", &schema()).expect_err("unknown column");
        assert_eq!(
            err.message,
            "column 'prise' not found (did you mean 'price'?)"
        );
    }

    #[test]
    fn unknown_function_suggests() {
        let err = compile("lowr(channel)", &schema()).expect_err("unknown function");
        assert!(
            err.message.starts_with("unknown function 'lowr'"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("did you mean 'lower'"),
            "{}",
            err.message
        );
    }

    #[test]
    fn predicate_must_be_boolean() {
        let err = compile_predicate("price + 1", &schema()).expect_err("not boolean");
        assert!(err.message.contains("must be a boolean"), "{}", err.message);
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = compile("price * ", &schema()).expect_err("syntax");
        assert!(
            err.message.starts_with("invalid expression"),
            "{}",
            err.message
        );
    }

    #[test]
    fn struct_fields_are_case_sensitive_paths() {
        let inner = Fields::from(vec![Field::new("price", DataType::Int64, true)]);
        let s = Arc::new(Schema::new(vec![Field::new(
            "Bid",
            DataType::Struct(inner.clone()),
            true,
        )]));
        let bid = StructArray::new(
            inner,
            vec![Arc::new(Int64Array::from(vec![5, 7])) as ArrayRef],
            None,
        );
        let b = RecordBatch::try_new(Arc::clone(&s), vec![Arc::new(bid)]).expect("batch");
        let e = compile("Bid.price * 2", &s).expect("compiles");
        let out = e.evaluate(&b).expect("evaluates");
        let out = out.as_any().downcast_ref::<Int64Array>().expect("i64");
        assert_eq!(out.values().to_vec(), vec![10, 14]);
    }
}
