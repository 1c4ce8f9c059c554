//! `json` messages with a schema registry: the Confluent JSON Schema wire
//! format (magic byte 0, the schema's 4-byte registry id, the JSON
//! document). A source reads them as a registry subject's JSON Schema —
//! its columns derived from the schema's `properties` — and a sink derives
//! the JSON Schema of its input, checks it against its subject at
//! validation and registers it on its first write.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::{Map, Value, json};
use streamflow_core::{Error, Result};

use crate::schema_registry::RegistryClient;

/// The columns of an object JSON Schema: each property a column (integer →
/// Int64, number → Float64, string → Utf8 (`format: date-time` →
/// timestamp), boolean, object → struct, array → list), nullable unless
/// required and not `null`-typed.
///
/// # Errors
/// Not an object schema, or a property whose type has no column form.
pub fn columns_of(schema: &Value) -> std::result::Result<Schema, String> {
    let fields = object_fields(schema, "#")?;
    Ok(Schema::new(fields))
}

fn object_fields(schema: &Value, at: &str) -> std::result::Result<Fields, String> {
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{at}: an object schema with `properties` gives columns"))?;
    let required: BTreeSet<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    properties
        .iter()
        .map(|(name, p)| {
            let (t, null_allowed) = column_type(p, &format!("{at}/properties/{name}"))?;
            Ok(Field::new(
                name,
                t,
                null_allowed || !required.contains(name.as_str()),
            ))
        })
        .collect()
}

/// A property's column type, and whether it admits `null`.
fn column_type(p: &Value, at: &str) -> std::result::Result<(DataType, bool), String> {
    let types: Vec<&str> = match p.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Err(format!("{at}: a column needs a `type`")),
    };
    let nullable = types.contains(&"null");
    let concrete: Vec<&str> = types.into_iter().filter(|t| *t != "null").collect();
    let t = match concrete.as_slice() {
        ["integer"] => DataType::Int64,
        ["number"] | ["integer", "number"] | ["number", "integer"] => DataType::Float64,
        ["boolean"] => DataType::Boolean,
        ["string"] => match p.get("format").and_then(Value::as_str) {
            Some("date-time") => DataType::Timestamp(TimeUnit::Millisecond, None),
            _ => DataType::Utf8,
        },
        ["object"] => DataType::Struct(object_fields(p, at)?),
        ["array"] => {
            let items = p
                .get("items")
                .ok_or_else(|| format!("{at}: an array column needs `items`"))?;
            let (item, _) = column_type(items, &format!("{at}/items"))?;
            DataType::List(Arc::new(Field::new("item", item, true)))
        }
        other => return Err(format!("{at}: type {other:?} has no column form")),
    };
    Ok((t, nullable))
}

/// The JSON Schema of rows of `schema` (the inverse of [`columns_of`]).
///
/// # Errors
/// A column type with no JSON Schema form.
pub fn schema_of(schema: &Schema) -> std::result::Result<Value, String> {
    object_schema(schema.fields())
}

fn object_schema(fields: &Fields) -> std::result::Result<Value, String> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in fields {
        let mut p = property(f.data_type()).map_err(|m| format!("column '{}': {m}", f.name()))?;
        if f.is_nullable() {
            if let Some(t) = p.get("type").cloned() {
                p["type"] = json!([t, "null"]);
            }
        } else {
            required.push(json!(f.name()));
        }
        properties.insert(f.name().clone(), p);
    }
    Ok(json!({"type": "object", "properties": properties, "required": required}))
}

fn property(t: &DataType) -> std::result::Result<Value, String> {
    Ok(match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => json!({"type": "integer"}),
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            json!({"type": "number"})
        }
        DataType::Boolean => json!({"type": "boolean"}),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!({"type": "string"}),
        DataType::Timestamp(..) => json!({"type": "string", "format": "date-time"}),
        DataType::Date32 | DataType::Date64 => json!({"type": "string", "format": "date"}),
        DataType::Struct(fields) => object_schema(fields)?,
        DataType::List(item) | DataType::LargeList(item) => {
            json!({"type": "array", "items": property(item.data_type())?})
        }
        other => return Err(format!("type {other} has no JSON Schema form")),
    })
}

/// A source's reading of registry-framed JSON, as planned.
#[derive(Debug)]
pub struct JsonSchemaPlan {
    client: RegistryClient,
    /// The subject version's id.
    reader_id: u32,
    /// The columns.
    arrow: SchemaRef,
}

impl JsonSchemaPlan {
    /// Reads version `version` (latest when `None`) of `subject` as the
    /// flow's schema.
    ///
    /// # Errors
    /// No registry, the registry unreachable, no such subject or version,
    /// a schema that is not JSON or has no column form.
    pub fn plan(
        registry: Option<&str>,
        subject: &str,
        version: Option<u32>,
    ) -> std::result::Result<JsonSchemaPlan, String> {
        let client = RegistryClient::for_flow(registry)?;
        let fetched = client.version_at_plan_time(subject, version, Some("JSON"))?;
        let schema: Value = serde_json::from_str(&fetched.schema)
            .map_err(|e| format!("subject '{subject}': not JSON: {e}"))?;
        let arrow = columns_of(&schema).map_err(|e| format!("subject '{subject}': {e}"))?;
        Ok(JsonSchemaPlan {
            client,
            reader_id: fetched.id,
            arrow: Arc::new(arrow),
        })
    }

    /// The columns rows have.
    pub fn schema(&self) -> Schema {
        self.arrow.as_ref().clone()
    }

    /// The registry id of `message`'s schema, when the registry holds a
    /// JSON schema of that id; else why the message is not read.
    pub(crate) async fn check_framing(
        &self,
        message: &[u8],
    ) -> Result<std::result::Result<usize, String>> {
        let Some(id) = super::framed_id(message) else {
            return Ok(Err(super::NOT_FRAMED.into()));
        };
        if id == self.reader_id {
            return Ok(Ok(5));
        }
        match self.client.schema(id).await.map_err(Error::Other)? {
            None => Ok(Err(format!(
                "schema id {id} is not in the registry at {}",
                self.client.url()
            ))),
            Some(f) if f.schema_type != "JSON" => Ok(Err(format!(
                "schema id {id} is a {} schema, not JSON",
                f.schema_type
            ))),
            Some(_) => Ok(Ok(5)),
        }
    }
}

/// A sink's registry-framed JSON, as planned: the JSON Schema derived from
/// its input, checked against its subject.
#[derive(Debug)]
pub struct JsonSinkPlan {
    client: RegistryClient,
    subject: String,
    schema: String,
}

impl JsonSinkPlan {
    /// Derives the JSON Schema of `input` and checks that it may be
    /// registered under `subject`; the registration happens on first write.
    ///
    /// # Errors
    /// No registry, a column type with no JSON Schema form, or an
    /// incompatible schema.
    pub fn plan(
        registry: Option<&str>,
        subject: &str,
        input: &Schema,
    ) -> std::result::Result<JsonSinkPlan, String> {
        let client = RegistryClient::for_flow(registry)?;
        let schema = schema_of(input)?.to_string();
        client.check_at_plan_time(subject, "JSON", &schema)?;
        Ok(JsonSinkPlan {
            client,
            subject: subject.to_string(),
            schema,
        })
    }

    /// The wire-format prefix of this sink's messages (registering the
    /// schema, or finding it, under the subject).
    pub(crate) async fn prefix(&self) -> Result<[u8; 5]> {
        let id = self
            .client
            .register(&self.subject, "JSON", &self.schema)
            .await
            .map_err(Error::Other)?;
        tracing::info!(subject = %self.subject, id, "JSON Schema registered");
        let [a, b, c, d] = id.to_be_bytes();
        Ok([0, a, b, c, d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_and_schemas_round_trip() {
        let schema = json!({
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "price": {"type": ["number", "null"]},
                "name": {"type": "string"},
                "at": {"type": "string", "format": "date-time"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "buyer": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
            },
            "required": ["id", "name"]
        });
        let columns = columns_of(&schema).expect("columns");
        assert_eq!(
            columns.field_with_name("id").expect("id").data_type(),
            &DataType::Int64
        );
        assert!(!columns.field_with_name("id").expect("id").is_nullable());
        assert!(
            columns
                .field_with_name("price")
                .expect("price")
                .is_nullable()
        );
        assert!(matches!(
            columns.field_with_name("at").expect("at").data_type(),
            DataType::Timestamp(TimeUnit::Millisecond, None)
        ));
        let back = columns_of(&schema_of(&columns).expect("schema")).expect("columns again");
        assert_eq!(back, columns);
    }

    #[test]
    fn schemas_without_columns_are_refused() {
        assert!(columns_of(&json!({"type": "string"})).is_err());
        assert!(columns_of(&json!({"type": "object", "properties": {"x": {}}})).is_err());
    }
}
