//! Building each node type from its declaration (the rules per type).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use serde_json::Value;

use super::{At, Builder, Decl};
use crate::process::builtin::{Noop, Sql};
use crate::process::exec::{Breaker, Kind, Node, limiter};
use crate::process::registry::Processor;
use crate::projection::{ColumnSource, Projection};

impl Builder<'_> {
    /// Builds a node of a given type (`d.ty`) from its declaration.
    pub(super) fn typed(&mut self, d: &Decl<'_>) -> Option<Arc<Node>> {
        let Decl {
            obj,
            here,
            label,
            ty,
            input,
        } = *d;
        let node = |schema: SchemaRef, kind: Kind| {
            Some(Arc::new(Node {
                path: label.into(),
                schema,
                kind,
            }))
        };
        let same = |n: &Arc<Node>| Arc::clone(&n.schema);
        match ty {
            "sequence" => self.sequence_of(d),
            "concurrent" | "worker-pool" => {
                let workers = if ty == "worker-pool" {
                    self.count(d, "workers", 4)
                } else {
                    Some(0)
                };
                let reducer = match obj.get("reducer").and_then(Value::as_str) {
                    None => None,
                    Some(r) => match self.components.get_reducer(r) {
                        Some(r) => Some(r),
                        None => {
                            self.err(
                                format!("{here}.reducer"),
                                format!("reducer '{r}' not found"),
                            );
                            return None;
                        }
                    },
                };
                let children = self.children(d, false)?;
                let input = input?;
                let schema = match &reducer {
                    None => Arc::clone(input),
                    Some(r) => {
                        let outs: Vec<SchemaRef> = children.iter().map(same).collect();
                        match r.output_schema(input, &outs) {
                            Ok(s) => s,
                            Err(e) => {
                                self.err(format!("{here}.reducer"), e);
                                return None;
                            }
                        }
                    }
                };
                let workers = workers?;
                let workers =
                    (ty == "worker-pool").then(|| Arc::new(tokio::sync::Semaphore::new(workers)));
                node(
                    schema,
                    Kind::Concurrent {
                        children,
                        reducer,
                        workers,
                    },
                )
            }
            "race" | "contest" => {
                let children = self.children(d, false);
                let schema = children.as_ref().and_then(|c| {
                    let outs: Vec<(String, SchemaRef)> = c
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (format!("{here}.children[{i}]"), same(c)))
                        .collect();
                    self.agree(&outs)
                });
                // A contest's predicate reads its children's output.
                let predicate = match (&schema, ty) {
                    (_, "race") => None,
                    (Some(s), _) => self.predicate(d, "predicate", Some(s)),
                    (None, _) => {
                        if obj.get("predicate").is_none() {
                            self.err(format!("{here}.predicate"), "contest requires a predicate (a registered predicate or a SQL expression)");
                        }
                        None
                    }
                };
                let (children, schema) = (children?, schema?);
                if ty == "race" {
                    node(schema, Kind::Race(children))
                } else {
                    node(
                        schema,
                        Kind::Contest {
                            children,
                            predicate: predicate?,
                        },
                    )
                }
            }
            "fallback" => {
                let n = obj
                    .get("children")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                if n != 2 {
                    self.err(
                        format!("{here}.children"),
                        format!(
                            "fallback requires exactly 2 children (primary, fallback); got {n}"
                        ),
                    );
                    return None;
                }
                let children = self.children(d, false)?;
                let outs: Vec<(String, SchemaRef)> = children
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("{here}.children[{i}]"), same(c)))
                    .collect();
                let schema = self.agree(&outs)?;
                node(
                    schema,
                    Kind::Fallback(Arc::clone(&children[0]), Arc::clone(&children[1])),
                )
            }
            "retry" => {
                let attempts = self.count(d, "attempts", 3);
                let backoff = self.duration(d, "backoff", None);
                let child = self.child(d)?;
                node(
                    same(&child),
                    Kind::Retry {
                        child,
                        attempts: attempts?,
                        backoff: backoff?,
                    },
                )
            }
            "timeout" => {
                let duration = self.duration(d, "duration", Some(Duration::from_secs(30)));
                let child = self.child(d)?;
                node(
                    same(&child),
                    Kind::Timeout {
                        child,
                        duration: duration.flatten()?,
                    },
                )
            }
            "filter" => {
                let predicate = self.predicate(d, "predicate", input);
                let then = match obj.get("then") {
                    Some(t) => {
                        self.branch(|b| b.node(t, At::below(&format!("{here}.then"), label), input))
                    }
                    None => {
                        self.err(format!("{here}.then"), "filter requires then");
                        None
                    }
                };
                let otherwise = obj.get("else").map(|e| {
                    self.branch(|b| b.node(e, At::below(&format!("{here}.else"), label), input))
                });
                let (then, input) = (then?, input?);
                let outs = match &otherwise {
                    Some(e) => vec![
                        (format!("{here}.then"), same(&then)),
                        (format!("{here}.else"), same(e.as_ref()?)),
                    ],
                    // Records the predicate rejects pass through unchanged.
                    None => vec![
                        (
                            "the input (passed through without else)".to_string(),
                            Arc::clone(input),
                        ),
                        (format!("{here}.then"), same(&then)),
                    ],
                };
                let schema = self.agree(&outs)?;
                let otherwise = match otherwise {
                    Some(e) => Some(e?),
                    None => None,
                };
                node(
                    schema,
                    Kind::Filter {
                        predicate: predicate?,
                        then,
                        otherwise,
                    },
                )
            }
            "switch" => {
                let condition = self.condition(d);
                let mut routes = BTreeMap::new();
                let mut outs = Vec::new();
                let mut ok = true;
                match obj.get("routes") {
                    Some(Value::Object(m)) if !m.is_empty() => {
                        for (key, v) in m {
                            let path = format!("{here}.routes.{key}");
                            match self.branch(|b| b.node(v, At::below(&path, label), input)) {
                                Some(n) => {
                                    outs.push((path, same(&n)));
                                    routes.insert(key.clone(), n);
                                }
                                None => ok = false,
                            }
                        }
                    }
                    _ => {
                        self.err(
                            format!("{here}.routes"),
                            "switch requires routes: {key: node, ...}",
                        );
                        ok = false;
                    }
                }
                let default = match obj.get("default") {
                    Some(v) => {
                        let path = format!("{here}.default");
                        let n = self.branch(|b| b.node(v, At::below(&path, label), input));
                        if let Some(n) = &n {
                            outs.push((path, same(n)));
                        }
                        ok &= n.is_some();
                        n
                    }
                    None => {
                        // Unmatched records pass through unchanged.
                        if let Some(i) = input {
                            outs.insert(
                                0,
                                (
                                    "the input (unmatched records pass through without default)"
                                        .to_string(),
                                    Arc::clone(i),
                                ),
                            );
                        }
                        None
                    }
                };
                if !ok {
                    return None;
                }
                let schema = self.agree(&outs)?;
                node(
                    schema,
                    Kind::Switch {
                        condition: condition?,
                        routes,
                        default,
                    },
                )
            }
            "circuit-breaker" => {
                let threshold = self.count(d, "failure_threshold", 5);
                let recovery = self.duration(d, "recovery_timeout", Some(Duration::from_secs(60)));
                let child = self.child(d)?;
                let breaker = Breaker::new(label, threshold?, recovery.flatten()?);
                node(same(&child), Kind::CircuitBreaker { child, breaker })
            }
            "rate-limit" => {
                let rps = match obj.get("requests_per_second") {
                    None => Some(10.0),
                    Some(v) => match v.as_f64() {
                        Some(r) if r > 0.0 && r.is_finite() => Some(r),
                        _ => {
                            self.err(
                                format!("{here}.requests_per_second"),
                                format!("must be a positive number (got {v})"),
                            );
                            None
                        }
                    },
                };
                let burst = self.count(d, "burst_size", 1);
                let wait = match obj.get("mode").and_then(Value::as_str) {
                    None | Some("wait") => Some(true),
                    Some("drop") => Some(false),
                    Some(other) => {
                        self.err(
                            format!("{here}.mode"),
                            format!("'{other}': expected wait or drop"),
                        );
                        None
                    }
                };
                let child = self.child(d)?;
                let (rps, burst, wait) = (rps?, burst?, wait?);
                let Some(limiter) = limiter(rps, u32::try_from(burst).unwrap_or(u32::MAX)) else {
                    self.err(format!("{here}.requests_per_second"), "rate out of range");
                    return None;
                };
                node(
                    same(&child),
                    Kind::RateLimit {
                        child,
                        limiter,
                        wait,
                    },
                )
            }
            "handle" => {
                let handler = match obj.get("error_handler").and_then(Value::as_str) {
                    None => {
                        self.err(
                            format!("{here}.error_handler"),
                            "handle requires an error_handler",
                        );
                        None
                    }
                    Some(h) => {
                        let found = self.components.get_error_handler(h);
                        if found.is_none() {
                            self.err(
                                format!("{here}.error_handler"),
                                format!("error handler '{h}' not found"),
                            );
                        }
                        found
                    }
                };
                let child = self.child(d)?;
                node(
                    same(&child),
                    Kind::Handle {
                        child,
                        handler: handler?,
                    },
                )
            }
            "scaffold" => {
                let children = self.children(d, false)?;
                node(Arc::clone(input?), Kind::Scaffold(children))
            }
            "noop" => node(Arc::clone(input?), Kind::Processor(Arc::new(Noop))),
            "sql" => {
                let input = input?;
                let Some(map) = obj
                    .get("map")
                    .and_then(Value::as_object)
                    .filter(|m| !m.is_empty())
                else {
                    self.err(
                        format!("{here}.map"),
                        "sql requires map: {column: expression}",
                    );
                    return None;
                };
                let mut columns = Projection::identity(input);
                let mut ok = true;
                for (name, sql) in map {
                    let sql = sql.as_str().map_or_else(|| sql.to_string(), str::to_string);
                    match streamflow_expr::compile(&sql, input) {
                        Ok(e) => match columns.iter_mut().find(|(n, _)| n == name) {
                            Some(slot) => slot.1 = ColumnSource::Expr(e),
                            None => columns.push((name.clone(), ColumnSource::Expr(e))),
                        },
                        Err(e) => {
                            self.err(format!("{here}.map.{name}"), e.message);
                            ok = false;
                        }
                    }
                }
                ok.then_some(())?;
                let projection = Projection::new(input, columns);
                let p: Arc<dyn Processor> = Arc::new(Sql(projection));
                node(p.output_schema(input).ok()?, Kind::Processor(p))
            }
            "http" => {
                let input = input?;
                let mut settings = obj.clone();
                settings.remove("type");
                settings.remove("name");
                match crate::process::http::plan(&settings, input) {
                    Ok(h) => {
                        let p: Arc<dyn Processor> = Arc::new(h);
                        node(p.output_schema(input).ok()?, Kind::Processor(p))
                    }
                    Err(errors) => {
                        for (k, m) in errors {
                            self.err(format!("{here}.{k}"), m);
                        }
                        None
                    }
                }
            }
            _ => None,
        }
    }
}
