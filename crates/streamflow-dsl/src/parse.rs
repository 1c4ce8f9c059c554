//! Reading flow files: format by extension, syntax errors with line and
//! column, `--set` overrides, and decoding that reports every bad field.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use streamflow_core::Diagnostics;

use crate::spec::{CheckpointSpec, FlowSpec, Mode, QueueSpec};

/// The syntax of a flow file, chosen by its extension (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// `.yaml` or `.yml`
    Yaml,
    /// `.json`
    Json,
}

impl FileFormat {
    /// The format for `path`.
    ///
    /// # Errors
    /// `unsupported file format: .txt` for any other extension.
    pub fn from_path(path: &Path) -> Result<Self, String> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Ok(FileFormat::Yaml),
            "json" => Ok(FileFormat::Json),
            "" => {
                Err("unsupported file format: no extension (use .yaml, .yml or .json)".to_string())
            }
            _ => Err(format!(
                "unsupported file format: .{ext} (use .yaml, .yml or .json)"
            )),
        }
    }
}

/// Reads, parses and decodes the flow file at `path`, applying `overrides`
/// (`path=value`, e.g. `sources.events.config.events=1000`) first.
///
/// # Errors
/// Every problem found, each with its path (syntax errors with line:column).
pub fn load_file(path: &Path, overrides: &[String]) -> Result<FlowSpec, Diagnostics> {
    let display = path.display().to_string();
    let format = FileFormat::from_path(path)
        .map_err(|m| Diagnostics::from(streamflow_core::Diagnostic::new(&display, m)))?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics::from(streamflow_core::Diagnostic::new(
            &display,
            format!("cannot read: {e}"),
        ))
    })?;
    let mut doc = parse_document(&text, format).map_err(|e| e.at(&format!("{display}:")))?;
    let mut diags = Diagnostics::new();
    for o in overrides {
        if let Err(m) = apply_override(&mut doc, o) {
            diags.push("--set", m);
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    decode_flow(doc)
}

/// Parses flow-file text in the given format.
///
/// # Errors
/// As for [`load_file`].
pub fn parse_str(text: &str, format: FileFormat) -> Result<FlowSpec, Diagnostics> {
    let doc = parse_document(text, format).map_err(|e| e.at(""))?;
    decode_flow(doc)
}

/// A syntax error at a line and column.
struct SyntaxError {
    line: u64,
    column: u64,
    message: String,
}

impl SyntaxError {
    /// As a diagnostic whose path is `<prefix>line:column`.
    fn at(self, prefix: &str) -> Diagnostics {
        Diagnostics::from(streamflow_core::Diagnostic::new(
            format!("{prefix}{}:{}", self.line, self.column),
            format!("syntax error: {}", self.message),
        ))
    }
}

/// Text → JSON document.
fn parse_document(text: &str, format: FileFormat) -> Result<Value, SyntaxError> {
    match format {
        FileFormat::Json => serde_json::from_str(text).map_err(|e| SyntaxError {
            line: e.line() as u64,
            column: e.column() as u64,
            message: strip_position(&e.to_string()),
        }),
        FileFormat::Yaml => {
            if text.trim().is_empty() {
                return Ok(Value::Object(Map::new()));
            }
            serde_saphyr::from_str_with_options::<Value>(text, yaml_options()).map_err(|e| {
                let (line, col) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((0, 0));
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or("invalid YAML").to_string();
                SyntaxError {
                    line,
                    column: col,
                    message: strip_position(&first),
                }
            })
        }
    }
}

/// YAML 1.2 scalars: only `true`/`false` are booleans, so column and node
/// names such as `y`, `n`, `yes`, `no`, `on`, `off` read as the strings
/// they spell (YAML 1.1 made them booleans).
fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options
}

/// Drops a trailing " at line X column Y" that the line:col prefix repeats.
fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Applies one `path=value` override to a parsed document. Path segments
/// are object keys, `[i]` indices, or — inside a list — an element's `name`.
///
/// # Errors
/// When the text has no `=` or the path does not exist.
pub fn apply_override(doc: &mut Value, assignment: &str) -> Result<(), String> {
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| format!("'{assignment}': expected path=value"))?;
    let value: Value = serde_saphyr::from_str_with_options(raw, yaml_options())
        .unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut segments = Vec::new();
    for part in path.split('.') {
        let (key, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            segments.push(key.to_string());
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            segments.push(idx.trim_end_matches(']').to_string());
        }
    }
    let Some((last, parents)) = segments.split_last() else {
        return Err(format!("'{assignment}': empty path"));
    };
    let mut node = doc;
    for seg in parents {
        node = step(node, seg, true).ok_or_else(|| format!("'{path}': no '{seg}' here"))?;
    }
    match node {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        _ => {
            let slot =
                step(node, last, false).ok_or_else(|| format!("'{path}': no '{last}' here"))?;
            *slot = value;
            Ok(())
        }
    }
}

fn step<'a>(node: &'a mut Value, seg: &str, create: bool) -> Option<&'a mut Value> {
    match node {
        Value::Object(map) => {
            if create && !map.contains_key(seg) {
                map.insert(seg.to_string(), Value::Object(Map::new()));
            }
            map.get_mut(seg)
        }
        Value::Array(items) => match seg.parse::<usize>() {
            Ok(i) => items.get_mut(i),
            Err(_) => items
                .iter_mut()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(seg)),
        },
        _ => None,
    }
}

/// Decodes the document into a [`FlowSpec`], reporting every bad field.
fn decode_flow(doc: Value) -> Result<FlowSpec, Diagnostics> {
    let mut diags = Diagnostics::new();
    let Value::Object(top) = doc else {
        diags.push(
            "",
            "a flow file must be a mapping with name, sources, stages and sinks",
        );
        return Err(diags);
    };
    let mut flow = FlowSpec::default();
    for (key, value) in top {
        match key.as_str() {
            "name" => flow.name = decode(value, "name", &mut diags),
            "mode" => flow.mode = decode::<Mode>(value, "mode", &mut diags).unwrap_or_default(),
            "queue" => flow.queue = decode::<QueueSpec>(value, "queue", &mut diags),
            "sources" => flow.sources = decode_list(value, "sources", &mut diags),
            "stages" => flow.stages = decode_list(value, "stages", &mut diags),
            "sinks" => flow.sinks = decode_list(value, "sinks", &mut diags),
            "checkpoint" => {
                flow.checkpoint = decode::<CheckpointSpec>(value, "checkpoint", &mut diags);
            }
            other => diags.push(
                other,
                unknown_field_message(
                    other,
                    &[
                        "name",
                        "mode",
                        "queue",
                        "sources",
                        "stages",
                        "sinks",
                        "checkpoint",
                    ],
                ),
            ),
        }
    }
    diags.into_result(flow)
}

fn decode_list<T: DeserializeOwned>(value: Value, path: &str, diags: &mut Diagnostics) -> Vec<T> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| decode(v, &format!("{path}[{i}]"), diags))
            .collect(),
        Value::Null => Vec::new(),
        _ => {
            diags.push(path, "expected a list");
            Vec::new()
        }
    }
}

/// Decodes one value, turning a serde error into a path-qualified diagnostic.
pub(crate) fn decode<T: DeserializeOwned>(
    value: Value,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let full = join_path(path, if inner == "." { "" } else { &inner });
            diags.push(full, friendly_serde_message(&e.inner().to_string()));
            None
        }
    }
}

/// Decodes the type-specific `settings` of a component into its config
/// struct; errors carry paths under `path` (e.g. `stages[1].window.size`).
///
/// # Errors
/// The decoding problem with its path.
pub fn decode_settings<T: DeserializeOwned>(
    settings: &Map<String, Value>,
    path: &str,
) -> Result<T, Diagnostics> {
    let mut diags = Diagnostics::new();
    match decode(Value::Object(settings.clone()), path, &mut diags) {
        Some(v) => Ok(v),
        None => Err(diags),
    }
}

/// Joins a base path and a serde path (`a.b`, `[0]`).
pub(crate) fn join_path(base: &str, inner: &str) -> String {
    if inner.is_empty() {
        base.to_string()
    } else if base.is_empty() || inner.starts_with('[') {
        format!("{base}{inner}")
    } else {
        format!("{base}.{inner}")
    }
}

/// Rewrites serde's `unknown field `x`, expected one of ...` into a short
/// message with a suggestion; other messages pass through.
pub fn friendly_serde_message(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        return unknown_field_message(field, &expected);
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `")
        && let Some((v, tail)) = rest.split_once('`')
    {
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        return format!(
            "unknown value '{v}' (expected one of: {})",
            expected.join(", ")
        );
    }
    msg.to_string()
}

/// `unknown field 'wher' (did you mean 'where'?)`.
pub fn unknown_field_message(field: &str, expected: &[&str]) -> String {
    match suggest(field, expected) {
        Some(s) => format!("unknown field '{field}' (did you mean '{s}'?)"),
        None if expected.is_empty() => format!("unknown field '{field}'"),
        None => format!(
            "unknown field '{field}' (expected one of: {})",
            expected.join(", ")
        ),
    }
}

/// The closest candidate by edit distance when close enough to be a typo.
pub fn suggest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(&name.to_lowercase(), &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance (the DSL has no DataFusion dependency to borrow it from).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_by_extension_any_case() {
        assert_eq!(
            FileFormat::from_path(Path::new("a.YML")),
            Ok(FileFormat::Yaml)
        );
        assert_eq!(
            FileFormat::from_path(Path::new("a.Json")),
            Ok(FileFormat::Json)
        );
        assert_eq!(
            FileFormat::from_path(Path::new("a.txt")).unwrap_err(),
            "unsupported file format: .txt (use .yaml, .yml or .json)"
        );
    }

    #[test]
    fn yaml_syntax_error_has_line_and_column() {
        let err = parse_str("name: x\nsources: [\n  - a: b\n", FileFormat::Yaml).unwrap_err();
        let d = &err.0[0];
        assert!(d.path.contains(':'), "{d}");
        assert!(!d.path.starts_with("0:0"), "{d}");
    }

    #[test]
    fn json_syntax_error_has_line_and_column() {
        let err =
            parse_str("{\n \"name\": \"x\",\n \"sources\": [}\n", FileFormat::Json).unwrap_err();
        assert_eq!(err.0[0].path, "3:14", "{}", err);
    }

    #[test]
    fn unknown_fields_are_reported_with_suggestions() {
        let err = parse_str(
            "name: x\nsinkz: []\nsources:\n  - {name: a, type: nexmark, dlg: bad}\n",
            FileFormat::Yaml,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("sinkz: unknown field 'sinkz' (did you mean 'sinks'?)"),
            "{text}"
        );
        assert!(
            text.contains("sources[0].dlg: unknown field 'dlg' (did you mean 'dlq'?)"),
            "{text}"
        );
    }

    #[test]
    fn overrides_by_name_and_index() {
        let mut doc: Value =
            serde_json::json!({"sources": [{"name": "ev", "config": {"events": 5}}]});
        apply_override(&mut doc, "sources.ev.config.events=100").expect("by name");
        assert_eq!(doc["sources"][0]["config"]["events"], 100);
        apply_override(&mut doc, "sources[0].config.rate=fast").expect("by index");
        assert_eq!(doc["sources"][0]["config"]["rate"], "fast");
        assert!(apply_override(&mut doc, "sources.nope.config.x=1").is_err());
    }
}
