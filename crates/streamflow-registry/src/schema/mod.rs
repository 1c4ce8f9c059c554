//! Schemas of the three formats: parsing (with references), the identity
//! that decides whether two registrations are the same schema, and the
//! reader/writer check that compatibility levels are built on.

mod avro;
mod json;
pub mod protobuf;

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A schema's format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaType {
    /// Apache Avro (the default).
    #[default]
    Avro,
    /// JSON Schema.
    Json,
    /// Protocol Buffers (proto2/proto3 source).
    Protobuf,
}

impl SchemaType {
    /// Every format, as `GET /schemas/types` lists them.
    pub const ALL: [SchemaType; 3] = [SchemaType::Json, SchemaType::Protobuf, SchemaType::Avro];

    /// `AVRO`, `JSON` or `PROTOBUF`.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Json => "JSON",
            SchemaType::Protobuf => "PROTOBUF",
        }
    }

    /// The format named `name` (any case).
    pub fn parse(name: &str) -> Option<SchemaType> {
        match name.to_ascii_uppercase().as_str() {
            "AVRO" => Some(SchemaType::Avro),
            "JSON" => Some(SchemaType::Json),
            "PROTOBUF" => Some(SchemaType::Protobuf),
            _ => None,
        }
    }
}

impl fmt::Display for SchemaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named reference from one schema to a version of another subject
/// (an Avro named type, a JSON `$ref`, a Protobuf import).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reference {
    /// The name the referring schema uses.
    pub name: String,
    /// The subject holding the referenced schema.
    pub subject: String,
    /// Its version there.
    pub version: i64,
}

/// A referenced schema's text, by the name it is referred to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The name the referring schema uses.
    pub name: String,
    /// The referenced schema.
    pub schema: String,
}

/// A schema parsed and found valid.
pub enum Parsed {
    /// An Avro schema.
    Avro(apache_avro::Schema),
    /// A JSON Schema document.
    Json(serde_json::Value),
    /// A compiled Protobuf file.
    Protobuf(protobuf::Compiled),
}

impl fmt::Debug for Parsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Parsed::Avro(_) => "Parsed::Avro",
            Parsed::Json(_) => "Parsed::Json",
            Parsed::Protobuf(_) => "Parsed::Protobuf",
        })
    }
}

impl Parsed {
    /// Parses `text` as a schema of `kind`; `references` holds the text of
    /// every schema it refers to, directly or not, dependencies first.
    ///
    /// # Errors
    /// Why it is not a valid schema.
    pub fn parse(kind: SchemaType, text: &str, references: &[Resolved]) -> Result<Parsed, String> {
        match kind {
            SchemaType::Avro => avro::parse(text, references).map(Parsed::Avro),
            SchemaType::Json => json::parse(text).map(Parsed::Json),
            SchemaType::Protobuf => protobuf::parse(text, references).map(Parsed::Protobuf),
        }
    }

    /// The format.
    pub fn kind(&self) -> SchemaType {
        match self {
            Parsed::Avro(_) => SchemaType::Avro,
            Parsed::Json(_) => SchemaType::Json,
            Parsed::Protobuf(_) => SchemaType::Protobuf,
        }
    }

    /// The parsed Avro schema, for Avro.
    pub fn as_avro(&self) -> Option<&apache_avro::Schema> {
        match self {
            Parsed::Avro(s) => Some(s),
            _ => None,
        }
    }

    /// Why data written with `writer` cannot be read with `reader` (nothing:
    /// it can). Schemas of different formats never can.
    pub fn can_read(writer: &Parsed, reader: &Parsed) -> Vec<String> {
        match (writer, reader) {
            (Parsed::Avro(w), Parsed::Avro(r)) => avro::can_read(w, r),
            (Parsed::Json(w), Parsed::Json(r)) => json::can_read(w, r),
            (Parsed::Protobuf(w), Parsed::Protobuf(r)) => protobuf::can_read(w, r),
            (w, r) => vec![format!(
                "the schema type changed from {} to {}",
                w.kind(),
                r.kind()
            )],
        }
    }
}

/// What decides that two registrations are the same schema: the format,
/// the schema in a normal form (JSON whitespace and key order, Protobuf
/// layout and comments do not count) and the references — as a SHA-256.
pub fn identity(kind: SchemaType, parsed: &Parsed, text: &str, references: &[Reference]) -> String {
    let normal = match parsed {
        Parsed::Protobuf(c) => c.normal_form(),
        _ => serde_json::from_str::<serde_json::Value>(text)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| text.to_string()),
    };
    let mut digest = Sha256::new();
    digest.update(kind.as_str());
    digest.update([0]);
    digest.update(normal.as_bytes());
    for r in references {
        digest.update([0]);
        digest.update(format!("{}\u{1}{}\u{1}{}", r.name, r.subject, r.version).as_bytes());
    }
    digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
