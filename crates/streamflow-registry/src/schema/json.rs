//! JSON Schema: a reader schema can read a writer's data when it accepts
//! every document the writer's schema accepts. Checked structurally:
//! `type` (integer widens to number), `enum`/`const`, object `properties`,
//! `required` and `additionalProperties` (open or closed content model),
//! array `items`, and the bounds `minimum`, `maximum`, `minLength`,
//! `maxLength`, `minItems`, `maxItems`. `$ref` targets are compared by
//! name; `allOf`/`anyOf`/`oneOf`, `pattern` and `format` must be equal.

use serde_json::{Map, Value};

const TYPES: [&str; 7] = [
    "null", "boolean", "object", "array", "number", "integer", "string",
];

pub(super) fn parse(text: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    check(&v, "#")?;
    Ok(v)
}

/// A light check that `v` is a JSON Schema: the keywords this module reads
/// have the right shape.
fn check(v: &Value, at: &str) -> Result<(), String> {
    let obj = match v {
        Value::Bool(_) => return Ok(()),
        Value::Object(o) => o,
        _ => return Err(format!("{at}: a schema is an object or a boolean")),
    };
    match obj.get("type") {
        None => {}
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
        Some(Value::Array(ts))
            if ts
                .iter()
                .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t))) => {}
        Some(t) => return Err(format!("{at}/type: unknown type {t}")),
    }
    if let Some(props) = obj.get("properties") {
        let props = props
            .as_object()
            .ok_or_else(|| format!("{at}/properties: must be an object"))?;
        for (name, p) in props {
            check(p, &format!("{at}/properties/{name}"))?;
        }
    }
    if let Some(req) = obj.get("required")
        && !req
            .as_array()
            .is_some_and(|r| r.iter().all(Value::is_string))
    {
        return Err(format!("{at}/required: must be an array of strings"));
    }
    match obj.get("items") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check(item, &format!("{at}/items/{i}"))?;
            }
        }
        Some(items) => check(items, &format!("{at}/items"))?,
    }
    if let Some(extra) = obj.get("additionalProperties") {
        check(extra, &format!("{at}/additionalProperties"))?;
    }
    Ok(())
}

pub(super) fn can_read(writer: &Value, reader: &Value) -> Vec<String> {
    let mut out = Vec::new();
    compare(writer, reader, "#", &mut out);
    out
}

/// The types a schema admits; `None` for any.
fn types(o: &Map<String, Value>) -> Option<Vec<&str>> {
    match o.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn compare(writer: &Value, reader: &Value, at: &str, out: &mut Vec<String>) {
    if writer == reader {
        return;
    }
    let (w, r) = match (writer, reader) {
        (_, Value::Bool(true)) | (Value::Bool(false), _) => return,
        (_, Value::Bool(false)) => {
            out.push(format!("{at}: the reader accepts nothing"));
            return;
        }
        (Value::Object(w), Value::Object(r)) if r.is_empty() => {
            let _ = w;
            return;
        }
        (Value::Bool(true), Value::Object(r)) => (&Map::new(), r),
        (Value::Object(w), Value::Object(r)) => (w, r),
        _ => return,
    };
    for key in [
        "$ref", "allOf", "anyOf", "oneOf", "not", "pattern", "format",
    ] {
        if r.get(key).is_some() && w.get(key) != r.get(key) {
            out.push(format!("{at}: '{key}' changed"));
        }
    }
    match (types(w), types(r)) {
        (_, None) => {}
        (None, Some(rt)) => out.push(format!("{at}: the type was narrowed to {}", rt.join(", "))),
        (Some(wt), Some(rt)) => {
            for t in wt {
                let accepted = rt.contains(&t) || (t == "integer" && rt.contains(&"number"));
                if !accepted {
                    out.push(format!("{at}: type '{t}' is no longer accepted"));
                }
            }
        }
    }
    for key in ["enum", "const"] {
        let Some(allowed) = r.get(key) else { continue };
        let allowed: Vec<&Value> = match allowed {
            Value::Array(a) if key == "enum" => a.iter().collect(),
            v => vec![v],
        };
        let written: Option<Vec<&Value>> = match (w.get("enum"), w.get("const")) {
            (Some(Value::Array(a)), _) => Some(a.iter().collect()),
            (_, Some(c)) => Some(vec![c]),
            _ => None,
        };
        match written {
            None => out.push(format!("{at}: '{key}' restricts values the writer did not")),
            Some(values) => {
                for v in values {
                    if !allowed.contains(&v) {
                        out.push(format!("{at}: value {v} is no longer allowed"));
                    }
                }
            }
        }
    }
    bounds(w, r, at, out);
    objects(w, r, at, out);
    if let (Some(wi), Some(ri)) = (w.get("items"), r.get("items"))
        && !wi.is_array()
        && !ri.is_array()
    {
        compare(wi, ri, &format!("{at}/items"), out);
    }
}

/// Lower bounds may only fall and upper bounds only rise.
fn bounds(w: &Map<String, Value>, r: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    for (key, upper) in [
        ("minimum", false),
        ("maximum", true),
        ("minLength", false),
        ("maxLength", true),
        ("minItems", false),
        ("maxItems", true),
    ] {
        let Some(rb) = r.get(key).and_then(Value::as_f64) else {
            continue;
        };
        let tighter = match w.get(key).and_then(Value::as_f64) {
            None => true,
            Some(wb) if upper => rb < wb,
            Some(wb) => rb > wb,
        };
        if tighter {
            out.push(format!("{at}: '{key}' is tighter ({rb})"));
        }
    }
}

fn required(o: &Map<String, Value>) -> Vec<&str> {
    o.get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Properties, required properties and the content model.
fn objects(w: &Map<String, Value>, r: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    let empty = Map::new();
    let props = |o: &Map<String, Value>| -> Map<String, Value> {
        o.get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_else(|| empty.clone())
    };
    let (wp, rp) = (props(w), props(r));
    let open = |o: &Map<String, Value>| o.get("additionalProperties") != Some(&Value::Bool(false));
    for (name, ws) in &wp {
        let here = format!("{at}/properties/{name}");
        match (rp.get(name), r.get("additionalProperties")) {
            (Some(rs), _) => compare(ws, rs, &here, out),
            (None, Some(Value::Bool(false))) => out.push(format!(
                "{here}: property removed from a closed content model"
            )),
            (None, Some(extra)) => compare(ws, extra, &here, out),
            (None, None) => {}
        }
    }
    let written_required = required(w);
    for name in required(r) {
        if !written_required.contains(&name) {
            out.push(format!(
                "{at}/required: '{name}' is required but the writer may leave it out"
            ));
        }
    }
    if open(w) && !open(r) {
        out.push(format!(
            "{at}: the content model was closed (additionalProperties: false)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reads(writer: Value, reader: Value) -> Vec<String> {
        can_read(&writer, &reader)
    }

    #[test]
    fn optional_property_added_is_readable_required_is_not() {
        let v1 =
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
        let optional = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"]});
        let required = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a", "b"]});
        assert!(reads(v1.clone(), optional).is_empty());
        assert_eq!(reads(v1, required).len(), 1);
    }

    #[test]
    fn types_widen_but_do_not_narrow() {
        let int = json!({"type": "integer"});
        let num = json!({"type": "number"});
        assert!(reads(int.clone(), num.clone()).is_empty());
        assert!(!reads(num, int).is_empty());
    }

    #[test]
    fn closing_the_content_model_loses_unknown_properties() {
        let open = json!({"type": "object", "properties": {"a": {}}});
        let closed =
            json!({"type": "object", "properties": {"a": {}}, "additionalProperties": false});
        assert!(!reads(open.clone(), closed.clone()).is_empty());
        assert!(reads(closed, open).is_empty());
    }

    #[test]
    fn enums_may_grow_only() {
        let ab = json!({"enum": ["a", "b"]});
        let abc = json!({"enum": ["a", "b", "c"]});
        assert!(reads(ab.clone(), abc.clone()).is_empty());
        assert!(!reads(abc, ab).is_empty());
    }

    #[test]
    fn invalid_schemas_are_refused() {
        assert!(parse("[1]").is_err());
        assert!(parse(r#"{"type": "text"}"#).is_err());
        assert!(parse(r#"{"properties": {"a": 3}}"#).is_err());
        assert!(parse(r#"{"type": ["string", "null"]}"#).is_ok());
    }
}
