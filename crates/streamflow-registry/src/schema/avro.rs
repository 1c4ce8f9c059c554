//! Avro: parsed and checked by `apache-avro` (the reader/writer
//! resolution rules of the Avro specification).

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;

use super::Resolved;

pub(super) fn parse(text: &str, references: &[Resolved]) -> Result<Schema, String> {
    if references.is_empty() {
        return Schema::parse_str(text).map_err(|e| e.to_string());
    }
    Schema::parse_str_with_list(text, references.iter().map(|r| r.schema.as_str()))
        .map(|(schema, _)| schema)
        .map_err(|e| e.to_string())
}

pub(super) fn can_read(writer: &Schema, reader: &Schema) -> Vec<String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(_) => Vec::new(),
        Err(e) => vec![e.to_string()],
    }
}
