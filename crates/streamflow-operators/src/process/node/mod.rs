//! Node declarations: every rule checked with a dotted path, all errors
//! collected, then the tree built against the schema of the records that
//! reach each node.
//!
//! Paths follow the declaration, with the type of each node below the root
//! in parentheses: `stages[3].node.children[1](fallback).children[0]`.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Field, Schema, SchemaRef};
use serde_json::{Map, Value};

use super::builtin::{SqlCondition, SqlPredicate};
use super::exec::{Kind, Node};
use super::registry::{Components, Condition, Predicate};

mod types;

/// Node types and the keys each takes besides `type` and `name`.
const TYPES: &[(&str, &[&str])] = &[
    ("sequence", &["children"]),
    ("concurrent", &["children", "reducer"]),
    ("race", &["children"]),
    ("contest", &["children", "predicate"]),
    ("fallback", &["children"]),
    ("retry", &["child", "attempts", "backoff"]),
    ("timeout", &["child", "duration"]),
    ("filter", &["predicate", "then", "else"]),
    ("switch", &["condition", "routes", "default"]),
    (
        "circuit-breaker",
        &["child", "failure_threshold", "recovery_timeout"],
    ),
    (
        "rate-limit",
        &["child", "requests_per_second", "burst_size", "mode"],
    ),
    ("handle", &["child", "error_handler"]),
    ("scaffold", &["children"]),
    ("worker-pool", &["children", "workers"]),
    ("sql", &["map"]),
    ("http", crate::process::http::HTTP_KEYS),
    ("noop", &[]),
];

/// Builds node trees for one stage, collecting every problem.
pub(crate) struct Builder<'a> {
    components: &'a Components,
    /// The stage's named node trees (`processors:`), and where they are;
    /// trees registered in `components` are found after these.
    definitions: &'a Map<String, Value>,
    definitions_path: String,
    errors: Vec<(String, String)>,
    /// Definitions being expanded, outermost first (to name a cycle).
    stack: Vec<String>,
    /// References met so far in this scope: a reference met again is a
    /// cycle (Flume's rule). Nodes run one after another or together share
    /// the scope; exclusive branches (fallback and contest children, filter
    /// then/else, switch routes) each start from a copy of it.
    seen: Vec<String>,
    /// Definitions expanded by a reference (the others are checked alone).
    expanded: std::collections::HashSet<String>,
}

/// One node's declaration while it is built: its settings, its path in
/// the flow file (annotated with its type below the root), its runtime
/// path, its type, and the schema of the records reaching it (`None` when
/// an earlier part failed: only structure is checked then).
#[derive(Clone, Copy)]
struct Decl<'a> {
    obj: &'a Map<String, Value>,
    here: &'a str,
    label: &'a str,
    ty: &'a str,
    input: Option<&'a SchemaRef>,
}

/// Where a node sits: its declaration path, the runtime path of its
/// parent, and whether it is the root of its tree.
#[derive(Clone)]
struct At<'p> {
    path: &'p str,
    parent: Option<&'p str>,
    root: bool,
    /// The node's name in runtime paths, when a reference names it.
    name: Option<&'p str>,
}

impl<'p> At<'p> {
    fn below(path: &'p str, parent: &'p str) -> Self {
        Self {
            path,
            parent: Some(parent),
            root: false,
            name: None,
        }
    }
}

impl<'a> Builder<'a> {
    pub(crate) fn new(
        components: &'a Components,
        definitions: &'a Map<String, Value>,
        definitions_path: String,
    ) -> Self {
        Self {
            components,
            definitions,
            definitions_path,
            errors: Vec::new(),
            stack: Vec::new(),
            seen: Vec::new(),
            expanded: std::collections::HashSet::new(),
        }
    }

    /// The errors found, each once, in the order found.
    pub(crate) fn errors(self) -> Vec<(String, String)> {
        let mut seen = std::collections::HashSet::new();
        self.errors
            .into_iter()
            .filter(|e| seen.insert(e.clone()))
            .collect()
    }

    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push((path.into(), message.into()));
    }

    /// Builds the tree declared at `path` for records of `input`.
    pub(crate) fn root(&mut self, v: &Value, path: &str, input: &SchemaRef) -> Option<Arc<Node>> {
        self.node(
            v,
            At {
                path,
                parent: None,
                root: true,
                name: None,
            },
            Some(input),
        )
    }

    /// Checks the structure of the definitions no reference expanded (a
    /// definition is validated whether or not it is used).
    pub(crate) fn check_unused(&mut self) {
        let mut unused: Vec<&String> = self
            .definitions
            .keys()
            .filter(|k| !self.expanded.contains(*k))
            .collect();
        unused.sort();
        for name in unused {
            let Some(def) = self.definitions.get(name) else {
                continue;
            };
            let path = format!("{}.{name}", self.definitions_path);
            self.seen = vec![name.clone()];
            self.stack = vec![name.clone()];
            self.node(
                def,
                At {
                    path: &path,
                    parent: None,
                    root: true,
                    name: Some(name),
                },
                None,
            );
        }
        self.seen.clear();
        self.stack.clear();
    }

    /// Builds one node; `input` is `None` when an earlier part failed and
    /// the schema reaching this node is unknown (only structure is checked).
    fn node(&mut self, v: &Value, at: At<'_>, input: Option<&SchemaRef>) -> Option<Arc<Node>> {
        let Some(obj) = v.as_object() else {
            self.err(at.path, "a node is a map (ref, type or stream)");
            return None;
        };
        let text = |k: &str| obj.get(k).and_then(Value::as_str);
        let (r, ty, stream) = (obj.get("ref"), obj.get("type"), obj.get("stream"));
        for key in ["ref", "type", "stream", "name"] {
            if obj.get(key).is_some_and(|v| !v.is_string()) {
                self.err(format!("{}.{key}", at.path), "expected a name");
            }
        }
        let name = at.name.or(text("name"));
        match (r, ty, stream) {
            (None, None, None) => {
                self.err(at.path, "empty node: needs ref, type or stream");
                None
            }
            (Some(_), Some(_), _) => {
                self.err(at.path, "a node takes ref or type, not both");
                None
            }
            (Some(_), None, Some(_)) | (None, Some(_), Some(_)) => {
                self.err(
                    at.path,
                    "a stream node takes no ref or type (put the work in its child)",
                );
                None
            }
            (Some(_), None, None) => {
                self.only(obj, &["ref", "name"], at.path, "a ref node");
                let target = text("ref")?;
                self.reference(target, &at, name.unwrap_or(target), input)
            }
            (None, None, Some(_)) => {
                let channel = text("stream")?;
                self.stream(obj, channel, &at, name, input)
            }
            (None, Some(_), None) => {
                let ty = text("type")?;
                let Some((_, keys)) = TYPES.iter().find(|(t, _)| *t == ty) else {
                    let names: Vec<&str> = TYPES.iter().map(|(t, _)| *t).collect();
                    let hint = match streamflow_dsl::suggest(ty, &names) {
                        Some(s) => format!(" (did you mean '{s}'?)"),
                        None => format!(" (known: {})", names.join(", ")),
                    };
                    self.err(
                        format!("{}.type", at.path),
                        format!("unknown node type '{ty}'{hint}"),
                    );
                    return None;
                };
                let mut allowed = vec!["type", "name"];
                allowed.extend_from_slice(keys);
                let label = self.label(&at, name.unwrap_or(ty));
                let here = if at.root {
                    at.path.to_string()
                } else {
                    format!("{}({ty})", at.path)
                };
                self.only(obj, &allowed, &here, &format!("a {ty} node"));
                self.typed(&Decl {
                    obj,
                    here: &here,
                    label: &label,
                    ty,
                    input,
                })
            }
        }
    }

    /// The runtime path of a node called `own` below `at.parent`.
    fn label(&self, at: &At<'_>, own: &str) -> String {
        match at.parent {
            Some(p) => format!("{p} -> {own}"),
            None => own.to_string(),
        }
    }

    fn only(&mut self, obj: &Map<String, Value>, allowed: &[&str], path: &str, what: &str) {
        for key in obj.keys() {
            if !allowed.contains(&key.as_str()) {
                let hint = streamflow_dsl::suggest(key, allowed)
                    .map_or_else(String::new, |s| format!(" (did you mean '{s}'?)"));
                self.err(
                    format!("{path}.{key}"),
                    format!("{what} takes no '{key}'{hint}"),
                );
            }
        }
    }

    /// `ref: name`: a definition of the stage, or a registered processor.
    fn reference(
        &mut self,
        target: &str,
        at: &At<'_>,
        own: &str,
        input: Option<&SchemaRef>,
    ) -> Option<Arc<Node>> {
        let (def, def_path) = match self.definitions.get(target) {
            Some(d) => (
                Some(d.clone()),
                format!("{}.{target}", self.definitions_path),
            ),
            None => (
                self.components.get_schema(target),
                format!("schemas.{target}"),
            ),
        };
        if self.seen.iter().any(|s| s == target) {
            let path = match self.stack.iter().position(|s| s == target) {
                Some(i) => {
                    let mut cycle = self.stack[i..].to_vec();
                    cycle.push(target.to_string());
                    format!(" ({})", cycle.join(" -> "))
                }
                None => String::new(),
            };
            self.err(
                format!("{}.ref", at.path),
                format!("circular reference detected: '{target}' creates a cycle{path}"),
            );
            return None;
        }
        self.seen.push(target.to_string());
        if let Some(def) = def {
            self.expanded.insert(target.to_string());
            self.stack.push(target.to_string());
            let node = self.node(
                &def,
                At {
                    path: &def_path,
                    parent: at.parent,
                    root: true,
                    name: Some(own),
                },
                input,
            );
            self.stack.pop();
            return node;
        }
        let label = self.label(at, own);
        match self.components.get_processor(target) {
            Some(p) => {
                let schema = match input.map(|i| p.output_schema(i)) {
                    Some(Ok(s)) => s,
                    Some(Err(e)) => {
                        self.err(
                            format!("{}.ref", at.path),
                            format!("processor '{target}': {e}"),
                        );
                        return None;
                    }
                    None => return None,
                };
                Some(Arc::new(Node {
                    path: label.as_str().into(),
                    schema,
                    kind: Kind::Processor(p),
                }))
            }
            None => {
                let mut names: Vec<String> = self.definitions.keys().cloned().collect();
                names.extend(self.components.processor_names());
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let hint = streamflow_dsl::suggest(target, &names)
                    .map_or_else(String::new, |s| format!(" (did you mean '{s}'?)"));
                self.err(
                    format!("{}.ref", at.path),
                    format!("processor '{target}' not found{hint}"),
                );
                None
            }
        }
    }

    fn stream(
        &mut self,
        obj: &Map<String, Value>,
        channel: &str,
        at: &At<'_>,
        name: Option<&str>,
        input: Option<&SchemaRef>,
    ) -> Option<Arc<Node>> {
        let label = self.label(at, name.unwrap_or(&format!("stream:{channel}")));
        let here = if at.root {
            at.path.to_string()
        } else {
            format!("{}(stream)", at.path)
        };
        self.only(
            obj,
            &["stream", "name", "stream_timeout", "child", "children"],
            &here,
            "a stream node",
        );
        let d = Decl {
            obj,
            here: &here,
            label: &label,
            ty: "stream",
            input,
        };
        let timeout = self.duration(&d, "stream_timeout", None);
        let sender = self.components.get_channel(channel);
        if sender.is_none() {
            self.err(
                format!("{here}.stream"),
                format!("channel '{channel}' not found"),
            );
        }
        let then = match (obj.get("child"), obj.get("children")) {
            (Some(_), Some(_)) => {
                self.err(&here, "a stream node takes child or children, not both");
                return None;
            }
            (Some(c), None) => {
                Some(self.node(c, At::below(&format!("{here}.child"), &label), input)?)
            }
            (None, Some(_)) => Some(self.sequence_of(&d)?),
            (None, None) => None,
        };
        let schema = then
            .as_ref()
            .map(|t| Arc::clone(&t.schema))
            .or_else(|| input.cloned())?;
        Some(Arc::new(Node {
            path: label.into(),
            schema,
            kind: Kind::Stream {
                channel: sender?,
                name: channel.into(),
                timeout: timeout.flatten(),
                then,
            },
        }))
    }

    /// Builds an exclusive branch: references it meets are not seen by its
    /// siblings or by what follows.
    fn branch<T>(&mut self, build: impl FnOnce(&mut Self) -> T) -> T {
        let saved = self.seen.clone();
        let built = build(self);
        self.seen = saved;
        built
    }

    /// `children` built as a sequence node below the node's label.
    fn sequence_of(&mut self, d: &Decl<'_>) -> Option<Arc<Node>> {
        let label = d.label;
        let children = self.children(d, true)?;
        let schema = Arc::clone(&children.last()?.schema);
        Some(Arc::new(Node {
            path: label.into(),
            schema,
            kind: Kind::Sequence(children),
        }))
    }

    /// The `children` list (at least one); `chained`: each child reads the
    /// previous one's output, else all read `input`.
    fn children(&mut self, d: &Decl<'_>, chained: bool) -> Option<Vec<Arc<Node>>> {
        let Decl {
            obj,
            here,
            label,
            ty,
            input,
        } = *d;
        let list = match obj.get("children") {
            Some(Value::Array(l)) if !l.is_empty() => l,
            Some(Value::Array(_)) | None => {
                self.err(
                    format!("{here}.children"),
                    format!("{ty} requires at least one child (children)"),
                );
                return None;
            }
            Some(_) => {
                self.err(format!("{here}.children"), "expected a list of nodes");
                return None;
            }
        };
        let mut built = Vec::new();
        let mut ok = true;
        let mut current = input.cloned();
        // Only one of a fallback's or a contest's children is the result.
        let exclusive = matches!(ty, "fallback" | "contest");
        for (i, c) in list.iter().enumerate() {
            let path = format!("{here}.children[{i}]");
            let at = At::below(&path, label);
            let node = if exclusive {
                self.branch(|b| b.node(c, at, current.as_ref()))
            } else {
                self.node(c, at, current.as_ref())
            };
            if chained {
                current = node.as_ref().map(|n| Arc::clone(&n.schema));
            }
            match node {
                Some(n) => built.push(n),
                None => ok = false,
            }
        }
        ok.then_some(built)
    }

    /// The required `child`.
    fn child(&mut self, d: &Decl<'_>) -> Option<Arc<Node>> {
        let Decl {
            obj,
            here,
            label,
            ty,
            input,
        } = *d;
        match obj.get("child") {
            Some(c) => self.node(c, At::below(&format!("{here}.child"), label), input),
            None => {
                self.err(format!("{here}.child"), format!("{ty} requires a child"));
                None
            }
        }
    }

    /// A duration setting (`None` after an error).
    fn duration(
        &mut self,
        d: &Decl<'_>,
        key: &str,
        default: Option<Duration>,
    ) -> Option<Option<Duration>> {
        match d.obj.get(key).map(duration_value).transpose() {
            Ok(v) => Some(v.or(default)),
            Err(e) => {
                let e = if key == "duration" {
                    e
                } else {
                    e.replacen("invalid duration", &format!("invalid {key} duration"), 1)
                };
                self.err(format!("{}.{key}", d.here), e);
                None
            }
        }
    }

    /// A positive integer setting; 0, like leaving it out, means the
    /// default (Flume's rule).
    fn count(&mut self, d: &Decl<'_>, key: &str, default: usize) -> Option<usize> {
        match d.obj.get(key) {
            None => Some(default),
            Some(v) => match v.as_i64() {
                Some(0) => Some(default),
                Some(n) if n > 0 => Some(n as usize),
                _ => {
                    self.err(
                        format!("{}.{key}", d.here),
                        format!("{key} must be positive (got {v})"),
                    );
                    None
                }
            },
        }
    }

    /// A named component or an inline SQL expression: a bare name that is
    /// not a column of the records it reads (`input`) is looked up in the
    /// registry.
    fn predicate(
        &mut self,
        d: &Decl<'_>,
        key: &str,
        input: Option<&SchemaRef>,
    ) -> Option<Arc<dyn Predicate>> {
        let components = self.components;
        self.name_or_sql(
            d,
            key,
            input,
            "predicate",
            |name| components.get_predicate(name),
            |text, schema| {
                streamflow_expr::compile_predicate(text, schema)
                    .map(|e| Arc::new(SqlPredicate(e)) as Arc<dyn Predicate>)
                    .map_err(|e| e.message)
            },
        )
    }

    fn condition(&mut self, d: &Decl<'_>) -> Option<Arc<dyn Condition>> {
        let components = self.components;
        self.name_or_sql(
            d,
            "condition",
            d.input,
            "condition",
            |name| components.get_condition(name),
            |text, schema| {
                streamflow_expr::compile(text, schema)
                    .map(|e| Arc::new(SqlCondition(e)) as Arc<dyn Condition>)
                    .map_err(|e| e.message)
            },
        )
    }

    /// The `key` setting of `d`: a registered `kind` (a bare name that is
    /// not a column of `input`) or a SQL expression over `input`.
    fn name_or_sql<T>(
        &mut self,
        d: &Decl<'_>,
        key: &str,
        input: Option<&SchemaRef>,
        kind: &str,
        registered: impl Fn(&str) -> Option<T>,
        compile: impl Fn(&str, &SchemaRef) -> Result<T, String>,
    ) -> Option<T> {
        let at = format!("{}.{key}", d.here);
        let Some(text) = d.obj.get(key).and_then(Value::as_str) else {
            self.err(
                at,
                format!(
                    "{} requires a {key} (a registered {kind} or a SQL expression)",
                    d.ty
                ),
            );
            return None;
        };
        if is_name(text) && input.is_none_or(|s| s.index_of(text).is_err()) {
            let found = registered(text);
            if found.is_none() {
                self.err(at, format!("{kind} '{text}' not found"));
            }
            return found;
        }
        match compile(text, input?) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(at, e);
                None
            }
        }
    }

    /// Checks that every schema in `outputs` has the same columns; the
    /// result is their common schema (nullable where any is).
    fn agree(&mut self, outputs: &[(String, SchemaRef)]) -> Option<SchemaRef> {
        let (first_path, first) = outputs.first()?;
        let mut fields: Vec<Field> = first.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut ok = true;
        for (path, s) in &outputs[1..] {
            let same = s.fields().len() == fields.len()
                && s.fields()
                    .iter()
                    .zip(&fields)
                    .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
            if !same {
                self.err(path, format!("its records ({}) differ from those of {first_path} ({}); every branch must give the same columns", describe(s), describe(first)));
                ok = false;
                continue;
            }
            for (f, g) in fields.iter_mut().zip(s.fields()) {
                if g.is_nullable() {
                    *f = f.clone().with_nullable(true);
                }
            }
        }
        ok.then(|| Arc::new(Schema::new(fields)))
    }
}

/// A positive integer setting's value.
///
/// # Errors
/// The message for a value that is not a positive integer.
pub(crate) fn positive_count(v: &Value) -> Result<usize, String> {
    match v.as_i64() {
        Some(n) if n >= 1 => Ok(n as usize),
        _ => Err(format!("must be a positive integer (got {v})")),
    }
}

/// A duration setting's value (`500ms`, `10s`).
///
/// # Errors
/// The message for a value that is not a duration.
pub(crate) fn duration_value(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => streamflow_dsl::parse_duration(s),
        other => Err(format!(
            "invalid duration {other} (expected e.g. 500ms, 10s)"
        )),
    }
}

/// A bare identifier (a component name) rather than an expression.
fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "true" | "false" | "null"
        )
}

/// `a: Int64, b: Utf8`.
fn describe(s: &Schema) -> String {
    s.fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}
