//! Protobuf: `.proto` source compiled by `protox` (references are imports,
//! by file name; the well-known `google/protobuf/*` types are built in).
//! A reader can read a writer's messages when, for every message of the
//! writer that the reader also declares, each field number both use has a
//! wire-compatible type, the same cardinality and the same oneof, and the
//! reader requires (proto2) no field the writer lacks; messages may not be
//! removed nor the package renamed. Removed fields are skipped by readers
//! as unknown fields, so removing is allowed.

use std::collections::HashMap;

use prost_reflect::prost::Message as _;
use prost_reflect::{
    Cardinality, DescriptorPool, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use super::Resolved;

/// The name the registered schema's own file is compiled under.
const MAIN: &str = "schema.proto";

/// A compiled Protobuf schema: its file and everything it imports.
pub struct Compiled {
    pool: DescriptorPool,
}

impl Compiled {
    fn file(&self) -> Option<FileDescriptor> {
        self.pool.get_file_by_name(MAIN)
    }

    /// The file descriptor, encoded: equal for sources that differ only in
    /// layout and comments.
    pub(super) fn normal_form(&self) -> String {
        self.file()
            .map(|f| {
                let mut proto = f.file_descriptor_proto().clone();
                proto.source_code_info = None;
                proto
                    .encode_to_vec()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The compiled descriptors.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// The message named `name` (full name), or without a name the first
    /// message of the schema's file (Confluent's message index `[0]`).
    pub fn message(&self, name: Option<&str>) -> Option<MessageDescriptor> {
        match name {
            Some(n) => self.pool.get_message_by_name(n),
            None => self.file()?.messages().next(),
        }
    }

    /// The schema's `FileDescriptorProto`, serialized and base64-encoded:
    /// the `format=serialized` form Confluent's deserializers ask for.
    pub fn serialized(&self) -> String {
        use base64::Engine as _;
        let bytes = self
            .file()
            .map(|f| {
                let mut proto = f.file_descriptor_proto().clone();
                proto.source_code_info = None;
                proto.encode_to_vec()
            })
            .unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// Sources by file name.
struct Sources(HashMap<String, String>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            // `.proto` source, or a serialized descriptor.
            Some(source) => {
                File::from_source(name, source).or_else(|e| serialized(name, source).ok_or(e))
            }
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// A schema given as a base64 `FileDescriptorProto` (what Confluent's
/// serializers register), renamed `name`; `None` when `text` is not one.
fn serialized(name: &str, text: &str) -> Option<File> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    let mut proto =
        prost_reflect::prost_types::FileDescriptorProto::decode(bytes.as_slice()).ok()?;
    proto.name = Some(name.to_string());
    Some(File::from_file_descriptor_proto(proto))
}

pub(super) fn parse(text: &str, references: &[Resolved]) -> Result<Compiled, String> {
    let mut sources: HashMap<String, String> = references
        .iter()
        .map(|r| (r.name.clone(), r.schema.clone()))
        .collect();
    sources.insert(MAIN.to_string(), text.to_string());
    let mut resolver = ChainFileResolver::new();
    resolver.add(Sources(sources));
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_source_info(false);
    compiler.open_file(MAIN).map_err(|e| e.to_string())?;
    Ok(Compiled {
        pool: compiler.descriptor_pool(),
    })
}

/// Messages declared in a file, nested ones included.
fn all_messages(file: &FileDescriptor) -> Vec<MessageDescriptor> {
    let mut out = Vec::new();
    let mut todo: Vec<MessageDescriptor> = file.messages().collect();
    while let Some(m) = todo.pop() {
        if !m.is_map_entry() {
            todo.extend(m.child_messages());
            out.push(m);
        }
    }
    out
}

/// Wire-compatible scalar groups (varints, zigzag varints, 32-bit, 64-bit,
/// length-delimited).
fn wire_group(kind: &Kind) -> u8 {
    match kind {
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Bool => 0,
        Kind::Sint32 | Kind::Sint64 => 1,
        Kind::Fixed32 | Kind::Sfixed32 => 2,
        Kind::Fixed64 | Kind::Sfixed64 => 3,
        Kind::String | Kind::Bytes => 4,
        Kind::Float => 5,
        Kind::Double => 6,
        Kind::Message(_) => 7,
        Kind::Enum(_) => 8,
    }
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.full_name().to_string(),
        Kind::Enum(e) => e.full_name().to_string(),
        k => format!("{k:?}").to_lowercase(),
    }
}

fn field_compatible(w: &FieldDescriptor, r: &FieldDescriptor, at: &str, out: &mut Vec<String>) {
    let (wk, rk) = (w.kind(), r.kind());
    let same_type = match (&wk, &rk) {
        (Kind::Message(a), Kind::Message(b)) => a.full_name() == b.full_name(),
        (Kind::Enum(a), Kind::Enum(b)) => a.full_name() == b.full_name(),
        // An enum is read as an int32 varint and back.
        (Kind::Enum(_), Kind::Int32) | (Kind::Int32, Kind::Enum(_)) => true,
        (a, b) => wire_group(a) == wire_group(b),
    };
    if !same_type {
        out.push(format!(
            "{at}: field {} changed type from {} to {}",
            w.number(),
            kind_name(&wk),
            kind_name(&rk)
        ));
    }
    if w.is_list() != r.is_list() || w.is_map() != r.is_map() {
        out.push(format!(
            "{at}: field {} changed between single, repeated and map",
            w.number()
        ));
    }
    let oneof = |f: &FieldDescriptor| {
        f.containing_oneof()
            .filter(|o| !o.is_synthetic())
            .map(|o| (o.name().to_string(), o.fields().len()))
    };
    match (oneof(w), oneof(r)) {
        (a, b) if a.as_ref().map(|x| &x.0) == b.as_ref().map(|x| &x.0) => {}
        // A lone field moving into a new oneof of its own reads the same.
        (None, Some((_, 1))) => {}
        _ => out.push(format!("{at}: field {} changed oneof", w.number())),
    }
}

pub(super) fn can_read(writer: &Compiled, reader: &Compiled) -> Vec<String> {
    let mut out = Vec::new();
    let (Some(wf), Some(rf)) = (writer.file(), reader.file()) else {
        return vec!["the schema has no file".into()];
    };
    if wf.package_name() != rf.package_name() {
        out.push(format!(
            "the package changed from '{}' to '{}'",
            wf.package_name(),
            rf.package_name()
        ));
        return out;
    }
    for wm in all_messages(&wf) {
        let Some(rm) = reader.pool.get_message_by_name(wm.full_name()) else {
            out.push(format!("message {} was removed", wm.full_name()));
            continue;
        };
        for wfield in wm.fields() {
            if let Some(rfield) = rm.get_field(wfield.number()) {
                field_compatible(&wfield, &rfield, wm.full_name(), &mut out);
            }
        }
        for rfield in rm.fields() {
            if rfield.cardinality() == Cardinality::Required
                && wm.get_field(rfield.number()).is_none()
            {
                out.push(format!(
                    "{}: required field {} ({}) is missing from the writer",
                    wm.full_name(),
                    rfield.number(),
                    rfield.name()
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(text: &str) -> Compiled {
        parse(text, &[]).expect("compiles")
    }

    #[test]
    fn field_numbers_and_types_decide() {
        let v1 =
            compiled("syntax = \"proto3\"; package p; message M { string a = 1; int32 b = 2; }");
        let renamed_and_added = compiled(
            "syntax = \"proto3\"; package p;\n// a comment\nmessage M { string name = 1; int64 b = 2; bool c = 3; }",
        );
        assert!(can_read(&v1, &renamed_and_added).is_empty());
        let retyped =
            compiled("syntax = \"proto3\"; package p; message M { string a = 1; string b = 2; }");
        let why = can_read(&v1, &retyped);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("field 2"), "{why:?}");
        let removed = compiled("syntax = \"proto3\"; package p; message N { string a = 1; }");
        assert!(!can_read(&v1, &removed).is_empty());
    }

    #[test]
    fn layout_and_comments_do_not_change_the_normal_form() {
        let a = compiled("syntax = \"proto3\"; package p; message M { string a = 1; }");
        let b =
            compiled("syntax = \"proto3\";\n\npackage p;\n// c\nmessage M {\n  string a = 1;\n}\n");
        assert_eq!(a.normal_form(), b.normal_form());
    }

    #[test]
    fn serialized_descriptors_are_schemas_too() {
        let source =
            compiled("syntax = \"proto3\"; package p; message M { string a = 1; int64 b = 2; }");
        let from_descriptor =
            parse(&source.serialized(), &[]).expect("a base64 descriptor compiles");
        assert_eq!(from_descriptor.normal_form(), source.normal_form());
        assert!(can_read(&source, &from_descriptor).is_empty());
    }

    #[test]
    fn imports_come_from_references_and_well_known_types() {
        let refs = [Resolved {
            name: "other.proto".into(),
            schema: "syntax = \"proto3\"; package q; message O { int32 x = 1; }".into(),
        }];
        let text = "syntax = \"proto3\"; package p; import \"other.proto\"; import \"google/protobuf/timestamp.proto\"; message M { q.O o = 1; google.protobuf.Timestamp t = 2; }";
        assert!(parse(text, &refs).is_ok());
        assert!(parse(text, &[]).is_err());
    }
}
