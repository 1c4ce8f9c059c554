//! Compatibility levels × formats through the registry's public API:
//! registrations accepted or refused, including transitive cases where a
//! new version is compatible with the latest but not with an older one.

use std::sync::Arc;

use serde_json::json;
use streamflow_registry::{Level, Registry, RegistryError, SchemaRequest, SchemaType, VersionRef};

fn registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = redb::Database::create(dir.path().join("r.redb")).expect("db");
    let r = Registry::open(Arc::new(db)).expect("open");
    (dir, r)
}

fn req(kind: SchemaType, schema: &str) -> SchemaRequest {
    SchemaRequest {
        schema: schema.to_string(),
        schema_type: kind,
        references: Vec::new(),
    }
}

fn avro(fields: serde_json::Value) -> SchemaRequest {
    req(
        SchemaType::Avro,
        &json!({"type": "record", "name": "Bid", "namespace": "nexmark", "fields": fields})
            .to_string(),
    )
}

fn json_schema(properties: serde_json::Value, required: &[&str]) -> SchemaRequest {
    req(
        SchemaType::Json,
        &json!({"type": "object", "properties": properties, "required": required}).to_string(),
    )
}

fn proto(body: &str) -> SchemaRequest {
    req(
        SchemaType::Protobuf,
        &format!("syntax = \"proto3\";\npackage nexmark;\nmessage Bid {{ {body} }}\n"),
    )
}

/// Registers in order under `level`; which were accepted.
fn accepted(level: Level, versions: &[SchemaRequest]) -> Vec<bool> {
    let (_dir, r) = registry();
    r.set_config(Some("s"), level).expect("config");
    versions
        .iter()
        .map(|v| match r.register("s", v) {
            Ok(_) => true,
            Err(RegistryError::Incompatible { .. }) => false,
            Err(e) => panic!("{e}"),
        })
        .collect()
}

#[test]
fn avro_levels() {
    let v1 = avro(json!([{"name": "auction", "type": "long"}]));
    let added_with_default = avro(json!([
        {"name": "auction", "type": "long"},
        {"name": "price", "type": "long", "default": 0}
    ]));
    let added_without_default = avro(json!([
        {"name": "auction", "type": "long"},
        {"name": "price", "type": "long"}
    ]));
    let removed = avro(json!([]));
    // A field with a default: readable both ways.
    for level in [Level::Backward, Level::Forward, Level::Full] {
        assert_eq!(
            accepted(level, &[v1.clone(), added_with_default.clone()]),
            [true, true],
            "{level}"
        );
    }
    // A field without a default: new readers cannot read old data.
    assert_eq!(
        accepted(
            Level::Backward,
            &[v1.clone(), added_without_default.clone()]
        ),
        [true, false]
    );
    assert_eq!(
        accepted(Level::Forward, &[v1.clone(), added_without_default.clone()]),
        [true, true]
    );
    assert_eq!(
        accepted(Level::Full, &[v1.clone(), added_without_default.clone()]),
        [true, false]
    );
    // Removing a field without a default: old readers cannot read new data.
    assert_eq!(
        accepted(Level::Backward, &[v1.clone(), removed.clone()]),
        [true, true]
    );
    assert_eq!(
        accepted(Level::Forward, &[v1.clone(), removed.clone()]),
        [true, false]
    );
    assert_eq!(
        accepted(
            Level::None,
            &[v1.clone(), removed.clone(), added_without_default.clone()]
        ),
        [true, true, true]
    );
    // A type change no reader resolves.
    let retyped = avro(json!([{"name": "auction", "type": "string"}]));
    assert_eq!(
        accepted(Level::Backward, &[v1.clone(), retyped]),
        [true, false]
    );
}

#[test]
fn avro_transitive_levels_look_at_every_version() {
    // v2 adds `price` with a default, v3 drops the default: v3 reads v2's
    // data (which has `price`) but not v1's.
    let v1 = avro(json!([{"name": "auction", "type": "long"}]));
    let v2 = avro(
        json!([{"name": "auction", "type": "long"}, {"name": "price", "type": "long", "default": 0}]),
    );
    let v3 = avro(json!([{"name": "auction", "type": "long"}, {"name": "price", "type": "long"}]));
    assert_eq!(
        accepted(Level::Backward, &[v1.clone(), v2.clone(), v3.clone()]),
        [true, true, true]
    );
    assert_eq!(
        accepted(
            Level::BackwardTransitive,
            &[v1.clone(), v2.clone(), v3.clone()]
        ),
        [true, true, false]
    );
    // Forward: v1 readers need `price`; v2 has a default for it; v3 drops it.
    let f1 = avro(json!([{"name": "auction", "type": "long"}, {"name": "price", "type": "long"}]));
    let f2 = avro(
        json!([{"name": "auction", "type": "long"}, {"name": "price", "type": "long", "default": 0}]),
    );
    let f3 = avro(json!([{"name": "auction", "type": "long"}]));
    assert_eq!(
        accepted(Level::Forward, &[f1.clone(), f2.clone(), f3.clone()]),
        [true, true, true]
    );
    assert_eq!(
        accepted(
            Level::ForwardTransitive,
            &[f1.clone(), f2.clone(), f3.clone()]
        ),
        [true, true, false]
    );
    assert_eq!(
        accepted(Level::FullTransitive, &[f1, f2, f3]),
        [true, true, false]
    );
}

#[test]
fn json_schema_levels() {
    let v1 = json_schema(json!({"auction": {"type": "integer"}}), &["auction"]);
    let optional_added = json_schema(
        json!({"auction": {"type": "integer"}, "price": {"type": "integer"}}),
        &["auction"],
    );
    let required_added = json_schema(
        json!({"auction": {"type": "integer"}, "price": {"type": "integer"}}),
        &["auction", "price"],
    );
    let widened = json_schema(json!({"auction": {"type": "number"}}), &["auction"]);
    assert_eq!(
        accepted(Level::Backward, &[v1.clone(), optional_added.clone()]),
        [true, true]
    );
    assert_eq!(
        accepted(Level::Backward, &[v1.clone(), required_added.clone()]),
        [true, false]
    );
    // Forward: the old reader requires `auction`, which stays required.
    assert_eq!(
        accepted(Level::Forward, &[v1.clone(), required_added.clone()]),
        [true, true]
    );
    assert_eq!(
        accepted(Level::Backward, &[v1.clone(), widened.clone()]),
        [true, true]
    );
    assert_eq!(
        accepted(Level::Forward, &[v1.clone(), widened.clone()]),
        [true, false]
    );
    assert_eq!(accepted(Level::Full, &[v1.clone(), widened]), [true, false]);
}

/// Under a level set after the fact: v2 was let in by NONE; v3 suits v2
/// but not v1, which only the transitive level sees.
fn after_none(level: Level, v1: &SchemaRequest, v2: &SchemaRequest, v3: &SchemaRequest) -> bool {
    let (_dir, r) = registry();
    r.set_config(Some("s"), Level::None).expect("config");
    r.register("s", v1).expect("v1");
    r.register("s", v2).expect("v2");
    r.set_config(Some("s"), level).expect("config");
    match r.register("s", v3) {
        Ok(_) => true,
        Err(RegistryError::Incompatible { .. }) => false,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn json_schema_and_protobuf_transitive_levels() {
    let j1 = json_schema(json!({"a": {"type": "integer"}}), &["a"]);
    let j2 = json_schema(json!({"a": {"type": "string"}}), &["a"]);
    let j3 = json_schema(
        json!({"a": {"type": "string"}, "b": {"type": "string"}}),
        &["a"],
    );
    assert!(after_none(Level::Backward, &j1, &j2, &j3));
    assert!(!after_none(Level::BackwardTransitive, &j1, &j2, &j3));
    let p1 = proto("int64 auction = 1;");
    let p2 = proto("string auction = 1;");
    let p3 = proto("string auction = 1; int64 price = 2;");
    assert!(after_none(Level::Full, &p1, &p2, &p3));
    assert!(!after_none(Level::FullTransitive, &p1, &p2, &p3));
}

#[test]
fn protobuf_levels() {
    let v1 = proto("int64 auction = 1; int64 price = 2;");
    let field_added = proto("int64 auction = 1; int64 price = 2; string channel = 3;");
    let field_removed = proto("int64 auction = 1;");
    let varint_widened = proto("int64 auction = 1; uint64 price = 2;");
    let retyped = proto("int64 auction = 1; string price = 2;");
    for level in [Level::Backward, Level::Forward, Level::Full] {
        assert_eq!(
            accepted(level, &[v1.clone(), field_added.clone()]),
            [true, true],
            "{level}"
        );
        assert_eq!(
            accepted(level, &[v1.clone(), field_removed.clone()]),
            [true, true],
            "{level}"
        );
        assert_eq!(
            accepted(level, &[v1.clone(), varint_widened.clone()]),
            [true, true],
            "{level}"
        );
        assert_eq!(
            accepted(level, &[v1.clone(), retyped.clone()]),
            [true, false],
            "{level}"
        );
    }
    let message_renamed = req(
        SchemaType::Protobuf,
        "syntax = \"proto3\";\npackage nexmark;\nmessage Offer { int64 auction = 1; }\n",
    );
    assert_eq!(
        accepted(Level::Backward, &[v1, message_renamed]),
        [true, false]
    );
}

#[test]
fn ids_are_global_and_identical_schemas_are_not_versioned_twice() {
    let (_dir, r) = registry();
    let v1 = avro(json!([{"name": "auction", "type": "long"}]));
    let (id, version) = r.register("a", &v1).expect("register");
    assert_eq!((id, version), (1, 1));
    // Same schema, other layout: same id and version.
    let spaced = req(
        SchemaType::Avro,
        &serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&v1.schema).expect("json"),
        )
        .expect("pretty"),
    );
    assert_eq!(r.register("a", &spaced).expect("again"), (1, 1));
    // Same schema under another subject: same id, that subject's version 1.
    assert_eq!(r.register("b", &v1).expect("other subject"), (1, 1));
    let v2 = avro(
        json!([{"name": "auction", "type": "long"}, {"name": "p", "type": "long", "default": 0}]),
    );
    assert_eq!(r.register("a", &v2).expect("v2"), (2, 2));
    assert_eq!(r.lookup("b", &v1, false).expect("lookup").id, 1);
    // Ids survive deletes: a deleted schema's id is never given to another.
    r.delete_subject("a", false).expect("soft");
    r.delete_subject("a", true).expect("hard");
    let v3 = avro(json!([{"name": "other", "type": "string"}]));
    assert_eq!(r.register("c", &v3).expect("v3").0, 3);
    assert!(matches!(r.schema(2), Err(RegistryError::SchemaNotFound(_))));
    assert_eq!(r.schema(1).expect("still held by b").schema, v1.schema);
}

#[test]
fn the_registry_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.redb");
    {
        let r = Registry::open(Arc::new(redb::Database::create(&path).expect("db"))).expect("open");
        r.register("s", &proto("int64 auction = 1;"))
            .expect("register");
        r.set_config(Some("s"), Level::Full).expect("config");
        r.delete_version("s", VersionRef::Latest, false)
            .expect("soft delete");
        r.register("s", &proto("int64 auction = 1; int64 price = 2;"))
            .expect("v2");
    }
    let r = Registry::open(Arc::new(redb::Database::create(&path).expect("db"))).expect("reopen");
    assert_eq!(r.versions("s", false).expect("versions"), [2]);
    assert_eq!(r.versions("s", true).expect("with deleted"), [1, 2]);
    assert_eq!(r.config(Some("s")).expect("level"), Level::Full);
    assert_eq!(
        r.version("s", VersionRef::Latest, false)
            .expect("latest")
            .id,
        2
    );
}
