//! The logical graph: a flow declaration whose names, wiring and numbers
//! have been checked, in topological order.

use std::collections::HashMap;

use serde_json::{Map, Value};
use streamflow_core::Diagnostics;

use crate::DEFAULT_QUEUE_CAPACITY;
use crate::parse::suggest;
use crate::spec::{EventTimeSpec, FlowSpec, Inputs, Mode, QueueSpec};

/// Index of a node in [`FlowGraph::nodes`].
pub type NodeId = usize;

/// What part a node plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Produces records; has no input.
    Source,
    /// Transforms records.
    Stage,
    /// Consumes records.
    Sink,
}

impl Role {
    /// Section name in the flow file.
    pub fn section(self) -> &'static str {
        match self {
            Role::Source => "sources",
            Role::Stage => "stages",
            Role::Sink => "sinks",
        }
    }

    /// `source`, `stage` or `sink`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Stage => "stage",
            Role::Sink => "sink",
        }
    }
}

/// One source, stage or sink after structural validation.
#[derive(Debug, Clone)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// Source, stage or sink.
    pub role: Role,
    /// Component type name (`filter`, `nexmark`, ...).
    pub kind: String,
    /// Path of the declaration, e.g. `stages[2]`.
    pub path: String,
    /// Path under which `settings` keys live (`sources[0].config`, `stages[2]`).
    pub settings_path: String,
    /// Upstream nodes, in declaration order (logical input 0, 1, ...).
    pub inputs: Vec<NodeId>,
    /// Nodes whose dead letters this node receives (a `dlq` sink).
    pub dead_letter_inputs: Vec<NodeId>,
    /// Stages whose late records this node receives (a `late` sink).
    pub late_inputs: Vec<NodeId>,
    /// Number of parallel instances.
    pub parallelism: usize,
    /// Capacity in batches of each edge into this node.
    pub queue_capacity: usize,
    /// The sink receiving this node's dead letters.
    pub dlq: Option<NodeId>,
    /// The sink receiving this stage's late records.
    pub late: Option<NodeId>,
    /// Partitioning expressions for the edges into this node.
    pub key_by: Vec<String>,
    /// Type-specific settings.
    pub settings: Map<String, Value>,
    /// Event time declared on a source.
    pub event_time: Option<EventTimeSpec>,
}

/// A structurally valid pipeline: unique names, existing inputs, no cycles.
/// Nodes are in topological order (every input precedes its consumers).
#[derive(Debug, Clone)]
pub struct FlowGraph {
    /// Pipeline name.
    pub name: String,
    /// Streaming or job.
    pub mode: Mode,
    /// All nodes, inputs first.
    pub nodes: Vec<Node>,
    /// Checkpointing, when declared.
    pub checkpoint: Option<CheckpointConfig>,
}

/// Validated checkpoint settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// Time between checkpoints.
    pub interval: std::time::Duration,
    /// Storage directory or URL.
    pub storage: String,
    /// Complete checkpoints kept.
    pub retain: usize,
    /// Whether operators continue while their state is written.
    pub asynchronous: bool,
    /// Longest a checkpoint may take before the run fails.
    pub timeout: std::time::Duration,
}

impl CheckpointConfig {
    /// Checks `spec`; `flow` names the default storage directory.
    fn from_spec(
        spec: &crate::CheckpointSpec,
        flow: &str,
        d: &mut Diagnostics,
    ) -> Option<CheckpointConfig> {
        let interval = spec.interval.unwrap_or(std::time::Duration::from_secs(10));
        if interval.is_zero() {
            d.push("checkpoint.interval", "must be greater than 0");
        }
        let timeout = spec.timeout.unwrap_or(std::time::Duration::from_secs(600));
        if timeout.is_zero() {
            d.push("checkpoint.timeout", "must be greater than 0");
        }
        let retain = spec.retain.unwrap_or(3);
        if retain < 1 {
            d.push("checkpoint.retain", "must be at least 1");
        }
        let storage = match &spec.storage {
            Some(s) if s.trim().is_empty() => {
                d.push("checkpoint.storage", "must not be empty");
                return None;
            }
            Some(s) => s.clone(),
            None => format!(".streamflow/{flow}/checkpoints"),
        };
        Some(CheckpointConfig {
            interval,
            storage,
            retain: retain.max(1) as usize,
            asynchronous: spec.asynchronous.unwrap_or(true),
            timeout,
        })
    }
}

impl FlowGraph {
    /// Checks the declaration and builds the graph.
    ///
    /// # Errors
    /// Every structural problem, each with its path.
    pub fn from_spec(spec: &FlowSpec) -> Result<FlowGraph, Diagnostics> {
        let mut d = Diagnostics::new();
        let name = match &spec.name {
            Some(n) if !n.trim().is_empty() => n.clone(),
            _ => {
                d.push("name", "required");
                String::new()
            }
        };
        let checkpoint = spec
            .checkpoint
            .as_ref()
            .and_then(|c| CheckpointConfig::from_spec(c, &name, &mut d));
        let default_capacity =
            queue_capacity(spec.queue.as_ref(), "queue", DEFAULT_QUEUE_CAPACITY, &mut d);
        if spec.sources.is_empty() {
            d.push("sources", "at least one source is required");
        }
        if spec.sinks.is_empty() {
            d.push("sinks", "at least one sink is required");
        }

        // Declarations in one list, with their raw wiring.
        struct Decl<'a> {
            node: Node,
            input: Option<&'a Inputs>,
            dlq: Option<&'a String>,
            late: Option<&'a String>,
        }
        let mut decls: Vec<Decl> = Vec::new();
        for (i, s) in spec.sources.iter().enumerate() {
            let path = format!("sources[{i}]");
            let mut node = Node::declared(
                Role::Source,
                Declared {
                    path: &path,
                    name: &s.name,
                    kind: &s.kind,
                    parallelism: s.parallelism,
                    queue: None,
                },
                default_capacity,
                &mut d,
            );
            node.settings_path = format!("{path}.config");
            node.settings = s.config.clone();
            node.event_time = s.event_time.clone();
            decls.push(Decl {
                node,
                input: None,
                dlq: s.dlq.as_ref(),
                late: None,
            });
        }
        for (i, s) in spec.stages.iter().enumerate() {
            let path = format!("stages[{i}]");
            if s.input.is_none() {
                d.push(format!("{path}.input"), "required");
            }
            let mut node = Node::declared(
                Role::Stage,
                Declared {
                    path: &path,
                    name: &s.name,
                    kind: &s.kind,
                    parallelism: s.parallelism,
                    queue: s.queue.as_ref(),
                },
                default_capacity,
                &mut d,
            );
            node.key_by = s.key_by.clone().unwrap_or_default();
            node.settings = s.settings.clone();
            decls.push(Decl {
                node,
                input: s.input.as_ref(),
                dlq: s.dlq.as_ref(),
                late: s.late.as_ref(),
            });
        }
        for (i, s) in spec.sinks.iter().enumerate() {
            let path = format!("sinks[{i}]");
            if let Some(Inputs::Many(v)) = &s.input
                && v.len() != 1
            {
                d.push(
                    format!("{path}.input"),
                    "a sink reads exactly one input; put a union stage before it",
                );
            }
            let mut node = Node::declared(
                Role::Sink,
                Declared {
                    path: &path,
                    name: &s.name,
                    kind: &s.kind,
                    parallelism: s.parallelism,
                    queue: s.queue.as_ref(),
                },
                default_capacity,
                &mut d,
            );
            node.settings_path = format!("{path}.config");
            node.settings = s.config.clone();
            decls.push(Decl {
                node,
                input: s.input.as_ref(),
                dlq: s.dlq.as_ref(),
                late: None,
            });
        }

        // Unique names.
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (id, decl) in decls.iter().enumerate() {
            if decl.node.name.is_empty() {
                continue;
            }
            if let Some(&first) = by_name.get(&decl.node.name) {
                d.push(
                    format!("{}.name", decl.node.path),
                    format!(
                        "duplicate name '{}' (also used by {})",
                        decl.node.name, decls[first].node.path
                    ),
                );
            } else {
                by_name.insert(decl.node.name.clone(), id);
            }
        }
        let names: Vec<&str> = by_name.keys().map(String::as_str).collect();
        let lookup = |name: &str| -> Result<usize, String> {
            by_name
                .get(name)
                .copied()
                .ok_or_else(|| match suggest(name, &names) {
                    Some(s) => format!("unknown input '{name}' (did you mean '{s}'?)"),
                    None => format!("unknown input '{name}'"),
                })
        };

        // Wiring: inputs and dead-letter targets.
        let mut inputs: Vec<Vec<usize>> = vec![Vec::new(); decls.len()];
        let mut dlqs: Vec<Option<usize>> = vec![None; decls.len()];
        let mut lates: Vec<Option<usize>> = vec![None; decls.len()];
        for (id, decl) in decls.iter().enumerate() {
            let path = &decl.node.path;
            if let Some(input) = decl.input {
                let list = input.names();
                if list.is_empty() {
                    d.push(format!("{path}.input"), "needs at least one input");
                }
                for (k, name) in list.iter().enumerate() {
                    let at = match input {
                        Inputs::One(_) => format!("{path}.input"),
                        Inputs::Many(_) => format!("{path}.input[{k}]"),
                    };
                    match lookup(name) {
                        Ok(up) if decls[up].node.role == Role::Sink => {
                            d.push(at, format!("'{name}' is a sink and has no output"));
                        }
                        Ok(up) if up == id => {
                            d.push(at, format!("'{name}' cannot read its own output"))
                        }
                        Ok(up) => inputs[id].push(up),
                        Err(m) => d.push(at, m),
                    }
                }
            }
            let mut side = |field: &str, target: Option<&String>| -> Option<usize> {
                let target = target?;
                let at = format!("{path}.{field}");
                match by_name.get(target.as_str()) {
                    Some(&t) if decls[t].node.role == Role::Sink => Some(t),
                    Some(_) => {
                        d.push(
                            at,
                            format!("'{target}' is not a sink; {field} must name a sink"),
                        );
                        None
                    }
                    None => {
                        d.push(
                            at,
                            match suggest(target, &names) {
                                Some(s) => format!("unknown sink '{target}' (did you mean '{s}'?)"),
                                None => format!("unknown sink '{target}'"),
                            },
                        );
                        None
                    }
                }
            };
            dlqs[id] = side("dlq", decl.dlq);
            lates[id] = side("late", decl.late);
        }
        for (id, decl) in decls.iter().enumerate() {
            if decl.node.role != Role::Sink || decl.node.name.is_empty() {
                continue;
            }
            let is_dlq = dlqs.contains(&Some(id));
            let is_late = lates.contains(&Some(id));
            let at = format!("{}.input", decl.node.path);
            match (decl.input.is_some(), is_dlq, is_late) {
                (false, false, false) => {
                    d.push(at, "required: a sink reads one input (or is named as another node's dlq or late output)")
                }
                (true, true, _) => d.push(at, "a sink used as a dlq receives dead letters only and takes no input"),
                (true, _, true) => d.push(at, "a sink used as a late output receives late records only and takes no input"),
                (false, true, true) => d.push(
                    format!("{}.name", decl.node.path),
                    "a sink cannot be both a dlq and a late output (their records differ)",
                ),
                _ => {}
            }
        }

        // Cycles, and a topological order (Kahn).
        let n = decls.len();
        let mut indegree: Vec<usize> = inputs.iter().map(Vec::len).collect();
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (id, ins) in inputs.iter().enumerate() {
            for &up in ins {
                consumers[up].push(id);
            }
        }
        // A dlq or late sink is planned after the nodes that feed it.
        for id in 0..n {
            for t in [dlqs[id], lates[id]].into_iter().flatten() {
                consumers[id].push(t);
                indegree[t] += 1;
            }
        }
        let mut order: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut head = 0;
        while head < order.len() {
            let id = order[head];
            head += 1;
            for &c in &consumers[id] {
                indegree[c] -= 1;
                if indegree[c] == 0 {
                    order.push(c);
                }
            }
        }
        if order.len() < n {
            let in_cycle: Vec<usize> = (0..n).filter(|i| indegree[*i] > 0).collect();
            if let Some(&start) = in_cycle.first() {
                let cycle = describe_cycle(
                    start,
                    &inputs,
                    &indegree,
                    &decls
                        .iter()
                        .map(|x| x.node.name.as_str())
                        .collect::<Vec<_>>(),
                );
                d.push(
                    format!("{}.input", decls[start].node.path),
                    format!("cycle: {cycle}"),
                );
            }
        }
        if !d.is_empty() {
            return Err(d);
        }

        // Renumber in topological order.
        let mut position = vec![0usize; n];
        for (pos, &id) in order.iter().enumerate() {
            position[id] = pos;
        }
        let mut slots: Vec<Option<Decl>> = decls.into_iter().map(Some).collect();
        let mut nodes = Vec::with_capacity(n);
        for &id in &order {
            let Some(decl) = slots[id].take() else {
                continue;
            };
            let mut node = decl.node;
            node.inputs = inputs[id].iter().map(|&u| position[u]).collect();
            node.dlq = dlqs[id].map(|t| position[t]);
            node.late = lates[id].map(|t| position[t]);
            nodes.push(node);
        }
        for id in 0..nodes.len() {
            if let Some(t) = nodes[id].dlq {
                nodes[t].dead_letter_inputs.push(id);
            }
            if let Some(t) = nodes[id].late {
                nodes[t].late_inputs.push(id);
            }
        }
        Ok(FlowGraph {
            name,
            mode: spec.mode,
            nodes,
            checkpoint,
        })
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Nodes reading `id`'s output, with the logical input index they read it as.
    pub fn consumers(&self, id: NodeId) -> Vec<(NodeId, usize)> {
        let mut out = Vec::new();
        for (c, node) in self.nodes.iter().enumerate() {
            for (k, &up) in node.inputs.iter().enumerate() {
                if up == id {
                    out.push((c, k));
                }
            }
        }
        out
    }
}

/// The fields every declaration has.
struct Declared<'a> {
    path: &'a str,
    name: &'a Option<String>,
    kind: &'a Option<String>,
    parallelism: Option<i64>,
    queue: Option<&'a QueueSpec>,
}

impl Node {
    /// A node from its common fields, checked; wiring and settings are filled in later.
    fn declared(role: Role, c: Declared<'_>, default_capacity: usize, d: &mut Diagnostics) -> Node {
        Node {
            name: required(c.name, c.path, "name", d),
            role,
            kind: required(c.kind, c.path, "type", d),
            path: c.path.to_string(),
            settings_path: c.path.to_string(),
            inputs: Vec::new(),
            dead_letter_inputs: Vec::new(),
            late_inputs: Vec::new(),
            parallelism: parallelism(c.parallelism, c.path, d),
            queue_capacity: queue_capacity(
                c.queue,
                &format!("{}.queue", c.path),
                default_capacity,
                d,
            ),
            dlq: None,
            late: None,
            key_by: Vec::new(),
            settings: Map::new(),
            event_time: None,
        }
    }
}

fn required(value: &Option<String>, path: &str, field: &str, d: &mut Diagnostics) -> String {
    match value {
        Some(v) if !v.trim().is_empty() => v.clone(),
        _ => {
            d.push(format!("{path}.{field}"), "required");
            String::new()
        }
    }
}

fn parallelism(value: Option<i64>, path: &str, d: &mut Diagnostics) -> usize {
    match value {
        None => 1,
        Some(p) if p >= 1 => p as usize,
        Some(p) => {
            d.push(
                format!("{path}.parallelism"),
                format!("must be at least 1 (got {p})"),
            );
            1
        }
    }
}

fn queue_capacity(q: Option<&QueueSpec>, path: &str, default: usize, d: &mut Diagnostics) -> usize {
    match q {
        None => default,
        Some(q) if q.capacity > 0 => q.capacity as usize,
        Some(q) => {
            d.push(
                format!("{path}.capacity"),
                format!("must be greater than 0 (got {})", q.capacity),
            );
            default
        }
    }
}

/// Follows inputs from `start` until a node repeats: `a -> b -> a`.
fn describe_cycle(
    start: usize,
    inputs: &[Vec<usize>],
    indegree: &[usize],
    names: &[&str],
) -> String {
    let mut path = vec![start];
    let mut cur = start;
    while let Some(&next) = inputs[cur].iter().find(|&&u| indegree[u] > 0) {
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<&str> = path[pos..].iter().rev().map(|&i| names[i]).collect();
            cycle.push(names[path[path.len() - 1]]);
            return cycle.join(" -> ");
        }
        path.push(next);
        cur = next;
    }
    names[start].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{FileFormat, parse_str};

    fn graph(yaml: &str) -> Result<FlowGraph, Diagnostics> {
        FlowGraph::from_spec(&parse_str(yaml, FileFormat::Yaml).expect("parses"))
    }

    #[test]
    fn builds_topological_order() {
        let g = graph(
            "name: t\nsinks: [{name: out, type: stdout, input: f}]\nstages: [{name: f, type: filter, input: src, where: 'true'}]\nsources: [{name: src, type: nexmark}]\n",
        )
        .expect("valid");
        let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, vec!["src", "f", "out"]);
        assert_eq!(g.nodes[2].inputs, vec![1]);
    }

    #[test]
    fn reports_all_structural_errors_at_once() {
        let err = graph(
            "name: t\nsources: [{name: bids, type: nexmark, parallelism: 0}]\nstages:\n  - {name: a, type: filter, input: bidz, queue: {capacity: 0}}\n  - {name: a, type: map, input: bids}\nsinks: [{name: out, type: stdout}]\n",
        )
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "sources[0].parallelism: must be at least 1 (got 0)",
            "stages[0].input: unknown input 'bidz' (did you mean 'bids'?)",
            "stages[0].queue.capacity: must be greater than 0 (got 0)",
            "stages[1].name: duplicate name 'a' (also used by stages[0])",
            "sinks[0].input: required",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }

    #[test]
    fn detects_cycles() {
        let err = graph(
            "name: t\nsources: [{name: s, type: nexmark}]\nstages:\n  - {name: a, type: union, input: [s, b]}\n  - {name: b, type: map, input: a}\nsinks: [{name: out, type: stdout, input: b}]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("cycle: "), "{err}");
    }
}
