//! From a structurally valid graph to a physical plan: every component
//! planned against its input schemas, all errors collected with paths.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use std::collections::HashMap;
use streamflow_connectors::{SinkContext, SinkFactory, SourceContext, SourceFactory};
use streamflow_core::{Diagnostics, dead_letter_schema};

use streamflow_dsl::{FlowGraph, FlowSpec, Node, NodeId, Role};
use streamflow_expr::{CompiledExpr, UsedColumns};
use streamflow_operators::process::Components;
use streamflow_operators::{EventTimeAssigner, InputRule, StageContext, StageFactory};

/// A planned component.
#[derive(Clone)]
pub enum Planned {
    /// A source and how to create its instances.
    Source(Arc<dyn SourceFactory>),
    /// A stage and how to create its operators.
    Stage(Arc<dyn StageFactory>),
    /// A sink and how to create its instances.
    Sink(Arc<dyn SinkFactory>),
}

/// One node of the physical plan.
#[derive(Clone)]
pub struct PlannedNode {
    /// The component.
    pub planned: Planned,
    /// Output schema (sources, stages) or input schema (sinks).
    pub schema: SchemaRef,
    /// Per logical input: the expressions its rows are hash-partitioned by
    /// (`key_by`, or a join's keys for that side); empty when not keyed.
    pub key_by: Vec<Vec<CompiledExpr>>,
    /// Name of the event-time column of the node's output, if it has one.
    pub event_time: Option<String>,
    /// For a source with `event_time`: how its batches get their event-time
    /// column and watermarks.
    pub time: Option<Arc<EventTimeAssigner>>,
}

/// A fully planned pipeline, ready to run.
#[derive(Clone)]
pub struct PhysicalPlan {
    /// The logical graph (names, wiring, parallelism, queues).
    pub graph: FlowGraph,
    /// Planned components, indexed like `graph.nodes`.
    pub nodes: Vec<PlannedNode>,
}

impl PhysicalPlan {
    /// The output schema of the node called `name`.
    pub fn schema_of(&self, name: &str) -> Option<SchemaRef> {
        let i = self.graph.nodes.iter().position(|n| n.name == name)?;
        Some(Arc::clone(&self.nodes[i].schema))
    }
}

/// Validates a declaration completely: structure, then schemas.
///
/// # Errors
/// Every problem found, each with its path.
pub fn validate_spec(spec: &FlowSpec) -> Result<PhysicalPlan, Diagnostics> {
    validate_spec_with(spec, Components::builtin())
}

/// [`validate_spec`] with named components for `process` stages.
///
/// # Errors
/// Every problem found, each with its path.
pub fn validate_spec_with(
    spec: &FlowSpec,
    components: &Components,
) -> Result<PhysicalPlan, Diagnostics> {
    let graph = FlowGraph::from_spec(spec)?;
    plan(graph, components)
}

/// Plans every node of `graph` in topological order.
///
/// # Errors
/// Every problem found. A node whose inputs failed to plan is skipped, so
/// one mistake is not reported again downstream.
pub fn plan(graph: FlowGraph, components: &Components) -> Result<PhysicalPlan, Diagnostics> {
    let full = plan_with(graph, components, &HashMap::new())?;
    // Projection pushdown: sources that can decode only the columns the
    // pipeline reads are planned again narrowed, and the pipeline with them.
    let narrowed = narrowed_sources(&full);
    if narrowed.is_empty() {
        return Ok(full);
    }
    plan_with(full.graph, components, &narrowed)
}

/// For every source that can be narrowed: the source producing only what
/// its consumers read.
fn narrowed_sources(plan: &PhysicalPlan) -> HashMap<NodeId, Arc<dyn SourceFactory>> {
    let n = plan.nodes.len();
    let mut read: Vec<UsedColumns> = vec![UsedColumns::none(); n];
    // Consumers come after their inputs: walk backwards.
    for id in (0..n).rev() {
        let node = &plan.graph.nodes[id];
        let planned = &plan.nodes[id];
        let of_inputs = match &planned.planned {
            Planned::Sink(_) => UsedColumns::All,
            Planned::Source(_) => continue,
            // A late output receives whole input rows.
            Planned::Stage(_) if node.late.is_some() => UsedColumns::All,
            Planned::Stage(f) => match f.input_columns(&read[id]) {
                None => UsedColumns::All,
                Some(mut used) => {
                    for keys in &planned.key_by {
                        for k in keys {
                            used.extend(k.columns());
                        }
                    }
                    used
                }
            },
        };
        for &input in &node.inputs {
            read[input].extend(&of_inputs);
        }
    }
    let mut out = HashMap::new();
    for (id, planned) in plan.nodes.iter().enumerate() {
        let Planned::Source(factory) = &planned.planned else {
            continue;
        };
        let used = match &planned.time {
            Some(t) => t.input_columns(&read[id]),
            None => read[id].clone(),
        };
        if let Some(narrowed) = used
            .prune(&factory.schema())
            .and_then(|schema| factory.project(&schema))
        {
            out.insert(id, narrowed);
        }
    }
    out
}

/// [`plan`] with some sources already planned (`sources`, by node id).
fn plan_with(
    graph: FlowGraph,
    components: &Components,
    sources: &HashMap<NodeId, Arc<dyn SourceFactory>>,
) -> Result<PhysicalPlan, Diagnostics> {
    let mut d = Diagnostics::new();
    let mut planned: Vec<Option<PlannedNode>> = Vec::with_capacity(graph.nodes.len());
    for (id, node) in graph.nodes.iter().enumerate() {
        let inputs: Option<Vec<SchemaRef>> =
            if node.role == Role::Sink && !node.late_inputs.is_empty() {
                // A late sink receives its stages' input records.
                late_schema(&graph, node, &planned, &mut d)
            } else if node.role == Role::Sink && node.inputs.is_empty() {
                Some(vec![dead_letter_schema()])
            } else {
                node.inputs
                    .iter()
                    .map(|&i| planned[i].as_ref().map(|p| Arc::clone(&p.schema)))
                    .collect()
            };
        let result = match inputs {
            None => {
                // An input failed: check what does not depend on its schema.
                if let Err(e) = check_without_input(node) {
                    d.extend(e);
                }
                None
            }
            Some(inputs) => match plan_node(
                &graph,
                components,
                sources.get(&id),
                node,
                &inputs,
                &node
                    .inputs
                    .iter()
                    .map(|&i| planned[i].as_ref().and_then(|p| p.event_time.as_deref()))
                    .collect::<Vec<_>>(),
            ) {
                Ok(p) => Some(p),
                Err(e) => {
                    d.extend(e);
                    None
                }
            },
        };
        planned.push(result);
    }
    if !d.is_empty() {
        return Err(d);
    }
    let nodes = planned.into_iter().flatten().collect();
    Ok(PhysicalPlan { graph, nodes })
}

/// The checks of a node whose input schema is unknown (an input failed to
/// plan): its type, and a sink's settings.
fn check_without_input(node: &Node) -> Result<(), Diagnostics> {
    match node.role {
        Role::Source => Ok(()),
        Role::Stage => streamflow_operators::find_stage(&node.kind)
            .map(drop)
            .ok_or_else(|| {
                let kinds = streamflow_operators::stage_kinds();
                unknown_type(node, &kinds.iter().map(|k| k.name).collect::<Vec<_>>())
            }),
        Role::Sink => {
            let kinds = streamflow_connectors::sink_kinds();
            let kind = streamflow_connectors::find_sink(&node.kind).ok_or_else(|| {
                unknown_type(node, &kinds.iter().map(|k| k.name).collect::<Vec<_>>())
            })?;
            let ctx = SinkContext {
                name: &node.name,
                path: &node.settings_path,
                settings: &node.settings,
                input: Arc::new(arrow::datatypes::Schema::empty()),
            };
            (kind.plan)(&ctx).map(drop)
        }
    }
}

fn unknown_type(node: &Node, known: &[&str]) -> Diagnostics {
    let what = node.role.as_str();
    let hint = match streamflow_dsl::suggest(&node.kind, known) {
        Some(s) => format!(" (did you mean '{s}'?)"),
        None => format!(" (known: {})", known.join(", ")),
    };
    Diagnostics::from(streamflow_core::Diagnostic::new(
        format!("{}.type", node.path),
        format!("unknown {what} type '{}'{hint}", node.kind),
    ))
}

fn plan_node(
    graph: &FlowGraph,
    components: &Components,
    source: Option<&Arc<dyn SourceFactory>>,
    node: &Node,
    inputs: &[SchemaRef],
    input_event_times: &[Option<&str>],
) -> Result<PlannedNode, Diagnostics> {
    let input_event_time = input_event_times.first().copied().flatten();
    match node.role {
        Role::Source => {
            let kinds = streamflow_connectors::source_kinds();
            let kind = streamflow_connectors::find_source(&node.kind).ok_or_else(|| {
                unknown_type(node, &kinds.iter().map(|k| k.name).collect::<Vec<_>>())
            })?;
            let ctx = SourceContext {
                name: &node.name,
                path: &node.settings_path,
                settings: &node.settings,
                mode: graph.mode,
            };
            let factory = match source {
                Some(f) => Arc::clone(f),
                None => (kind.plan)(&ctx)?,
            };
            let time = match &node.event_time {
                None => None,
                Some(spec) => Some(Arc::new(EventTimeAssigner::plan(
                    &factory.schema(),
                    spec,
                    &format!("{}.event_time", node.path),
                )?)),
            };
            Ok(PlannedNode {
                schema: time
                    .as_ref()
                    .map_or_else(|| factory.schema(), |t| t.schema()),
                planned: Planned::Source(factory),
                key_by: vec![Vec::new()],
                event_time: time.as_ref().map(|t| t.column().to_string()),
                time,
            })
        }
        Role::Stage => {
            let kinds = streamflow_operators::stage_kinds();
            let kind = streamflow_operators::find_stage(&node.kind).ok_or_else(|| {
                unknown_type(node, &kinds.iter().map(|k| k.name).collect::<Vec<_>>())
            })?;
            let mut d = Diagnostics::new();
            match kind.inputs {
                InputRule::SameSchema => {
                    for (k, schema) in inputs.iter().enumerate().skip(1) {
                        if !same_columns(schema, &inputs[0]) {
                            d.push(
                                format!("{}.input[{k}]", node.path),
                                format!(
                                    "schema of '{}' ({}) does not match '{}' ({})",
                                    graph.nodes[node.inputs[k]].name,
                                    describe(schema),
                                    graph.nodes[node.inputs[0]].name,
                                    describe(&inputs[0]),
                                ),
                            );
                        }
                    }
                }
                InputRule::Exactly(n) if inputs.len() != n => {
                    d.push(
                        format!("{}.input", node.path),
                        format!("{} takes exactly {n} inputs", node.kind),
                    );
                }
                InputRule::Exactly(_) => {}
            }
            if node.late.is_some() && !kind.late_output {
                d.push(
                    format!("{}.late", node.path),
                    format!("{} stages have no late records", node.kind),
                );
            }
            let key_by = compile_keys(node, inputs.first(), &mut d);
            d.into_result(())?;
            let settings = registered_validate_schema(node)?;
            let ctx = StageContext {
                name: &node.name,
                path: &node.settings_path,
                settings: settings.as_ref().unwrap_or(&node.settings),
                inputs,
                key_by: &node.key_by,
                event_time: input_event_time,
                input_event_times,
                components,
            };
            let factory = (kind.plan)(&ctx)?;
            // Each input is partitioned by its own keys (joins) or by key_by.
            let key_by = factory
                .partition_keys()
                .unwrap_or_else(|| vec![key_by; inputs.len().max(1)]);
            let schema = factory.output_schema();
            // A stage declares its output's event time, or the input's
            // survives where the stage keeps the column as a timestamp.
            let event_time = factory.event_time_column().or_else(|| {
                input_event_time
                    .filter(|c| {
                        schema
                            .field_with_name(c)
                            .is_ok_and(|f| is_timestamp(f.data_type()))
                    })
                    .map(str::to_string)
            });
            Ok(PlannedNode {
                schema,
                planned: Planned::Stage(factory),
                key_by,
                event_time,
                time: None,
            })
        }
        Role::Sink => {
            let kinds = streamflow_connectors::sink_kinds();
            let kind = streamflow_connectors::find_sink(&node.kind).ok_or_else(|| {
                unknown_type(node, &kinds.iter().map(|k| k.name).collect::<Vec<_>>())
            })?;
            let schema = inputs.first().cloned().unwrap_or_else(dead_letter_schema);
            let ctx = SinkContext {
                name: &node.name,
                path: &node.settings_path,
                settings: &node.settings,
                input: Arc::clone(&schema),
            };
            let factory = (kind.plan)(&ctx)?;
            Ok(PlannedNode {
                schema,
                planned: Planned::Sink(factory),
                key_by: vec![Vec::new()],
                event_time: None,
                time: None,
            })
        }
    }
}

/// The late-record schema shared by the stages naming `sink` as their
/// `late` output (their input's, unless the stage says otherwise).
/// A `validate` stage whose `schema` is a registry subject (`{subject,
/// version?, registry?}`, its `subject` not a type name): its settings with
/// the subject's columns declared instead, each with its type and
/// nullability. `None` for every other stage.
fn registered_validate_schema(
    node: &Node,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, Diagnostics> {
    use serde_json::{Value, json};
    let Some(Value::Object(schema)) = node.settings.get("schema") else {
        return Ok(None);
    };
    let subject = match schema.get("subject") {
        Some(Value::String(s)) if streamflow_expr::parse_data_type(s).is_err() => s.clone(),
        _ => return Ok(None),
    };
    if node.kind != "validate"
        || schema
            .keys()
            .any(|k| !["subject", "version", "registry"].contains(&k.as_str()))
    {
        return Ok(None);
    }
    let at = format!("{}.schema", node.settings_path);
    let fail = |m: String| Diagnostics::from(streamflow_core::Diagnostic::new(at.clone(), m));
    let mut reference = schema.clone();
    reference.remove("registry");
    let Some((_, version)) = streamflow_connectors::message::registry_subject(&reference) else {
        return Err(fail("version must be a positive integer".into()));
    };
    let registry = schema.get("registry").and_then(Value::as_str);
    let columns = streamflow_connectors::message::subject_columns(registry, &subject, version)
        .map_err(fail)?;
    let declared: serde_json::Map<String, Value> = columns
        .fields()
        .iter()
        .map(|f| {
            (
                f.name().clone(),
                json!({"type": f.data_type().to_string(), "nullable": f.is_nullable()}),
            )
        })
        .collect();
    let mut settings = node.settings.clone();
    settings.insert("schema".into(), Value::Object(declared));
    Ok(Some(settings))
}

fn late_schema(
    graph: &FlowGraph,
    sink: &Node,
    planned: &[Option<PlannedNode>],
    d: &mut Diagnostics,
) -> Option<Vec<SchemaRef>> {
    let mut schema: Option<SchemaRef> = None;
    for &stage in &sink.late_inputs {
        let node = &graph.nodes[stage];
        let own = match planned[stage].as_ref().map(|p| &p.planned) {
            Some(Planned::Stage(f)) => f.late_schema(),
            _ => None,
        };
        let input = match own {
            Some(s) => s,
            None => node
                .inputs
                .first()
                .and_then(|&i| planned[i].as_ref())
                .map(|p| Arc::clone(&p.schema))?,
        };
        match &schema {
            None => schema = Some(input),
            Some(s) if same_columns(s, &input) => {}
            Some(_) => {
                d.push(
                    format!("{}.late", node.path),
                    format!("'{}' receives late records of different schemas", sink.name),
                );
                return None;
            }
        }
    }
    schema.map(|s| vec![s])
}

fn is_timestamp(t: &arrow::datatypes::DataType) -> bool {
    matches!(t, arrow::datatypes::DataType::Timestamp(_, _))
}

fn compile_keys(node: &Node, input: Option<&SchemaRef>, d: &mut Diagnostics) -> Vec<CompiledExpr> {
    let Some(schema) = input else {
        return Vec::new();
    };
    node.key_by
        .iter()
        .enumerate()
        .filter_map(|(i, sql)| match streamflow_expr::compile(sql, schema) {
            Ok(e) => Some(e),
            Err(e) => {
                d.push(format!("{}.key_by[{i}]", node.path), e.message);
                None
            }
        })
        .collect()
}

/// Same column names and types, in order (nullability may differ).
fn same_columns(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

fn describe(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}
