//! The registry over HTTP: the Confluent Schema Registry REST API (what
//! Kafka clients, serializers and tools speak) and the flow API's
//! `/v1/schemas` view of the same subjects.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    Level, Reference, Registry, RegistryError, SchemaRequest, SchemaType, SubjectVersion,
    VersionRef,
};

/// The media type of the Confluent API's answers.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Reg = State<Arc<Registry>>;
type Params = Query<HashMap<String, String>>;

/// The routes, for any router state (the registry is their own).
pub fn router<S>(registry: Arc<Registry>) -> Router<S> {
    Router::new()
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route("/schemas/types", get(types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/schemas/ids/{id}/subjects", get(id_subjects))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_one),
        )
        .route(
            "/config",
            get(global_config)
                .put(set_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(set_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(mode))
        .route("/mode/{subject}", get(mode))
        .route("/v1/schemas", get(v1_list).post(v1_register))
        .route("/v1/schemas/{id}", axum::routing::delete(v1_delete))
        .route("/v1/schemas/{id}/versions", get(v1_versions))
        .route("/v1/schemas/{id}/versions/{version}", get(v1_version))
        .with_state(registry)
}

/// An answer in the registry's media type.
fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    reply(StatusCode::OK, body)
}

/// An error answer: `{"error_code", "message"}` with the code's HTTP status.
enum Failure {
    /// What the registry refused.
    Registry(RegistryError),
    /// A body that is not what the endpoint takes (422).
    Body(String),
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Self {
        Failure::Registry(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Failure::Registry(e) => (e.status(), e.code(), e.to_string()),
            Failure::Body(message) => (422, 422, message),
        };
        reply(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({"error_code": code, "message": message}),
        )
    }
}

/// `?name=true` (any case, as clients write it).
fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// A registration, lookup or check body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: Option<String>,
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

fn schema_request(body: &Bytes) -> Result<SchemaRequest, Failure> {
    let parsed: SchemaBody = serde_json::from_slice(body)
        .map_err(|e| Failure::Body(format!("the body is not a schema request: {e}")))?;
    let schema = parsed
        .schema
        .ok_or_else(|| RegistryError::InvalidSchema("the body has no 'schema'".into()))?;
    let schema_type = schema_type(parsed.schema_type.as_deref())?;
    Ok(SchemaRequest {
        schema,
        schema_type,
        references: parsed.references,
    })
}

/// `schema`, `schemaType` (left out for Avro, as Confluent does) and `references`.
fn schema_fields(body: &mut Value, schema: &crate::StoredSchema) {
    body["schema"] = json!(schema.schema);
    if schema.schema_type != SchemaType::Avro {
        body["schemaType"] = json!(schema.schema_type.as_str());
    }
    if !schema.references.is_empty() {
        body["references"] = json!(schema.references);
    }
}

fn version_body(v: &SubjectVersion) -> Value {
    let mut body = json!({"subject": v.subject, "version": v.version, "id": v.id});
    schema_fields(&mut body, &v.schema);
    body
}

/// `schema` in the form `?format=` asks for (`serialized`: Protobuf as a
/// base64 descriptor).
fn in_format(
    r: &Registry,
    mut schema: crate::StoredSchema,
    q: &HashMap<String, String>,
) -> Result<crate::StoredSchema, Failure> {
    if q.get("format").is_some_and(|f| f == "serialized") {
        schema.schema = r.serialized(&schema)?;
    }
    Ok(schema)
}

/// The format named in a request (Avro when none is).
fn schema_type(name: Option<&str>) -> Result<SchemaType, Failure> {
    match name {
        None => Ok(SchemaType::Avro),
        Some(t) => SchemaType::parse(t).ok_or_else(|| {
            RegistryError::InvalidSchema(format!("unknown schema type '{t}'")).into()
        }),
    }
}

fn version_ref(text: &str) -> Result<VersionRef, Failure> {
    Ok(VersionRef::parse(text)?)
}

fn schema_id(text: &str) -> Result<u32, Failure> {
    text.parse()
        .map_err(|_| RegistryError::SchemaNotFound(text.to_string()).into())
}

async fn subjects(State(r): Reg, Query(q): Params) -> Response {
    ok(json!(r.subjects(flag(&q, "deleted"))))
}

async fn versions(
    State(r): Reg,
    Path(subject): Path<String>,
    Query(q): Params,
) -> Result<Response, Failure> {
    Ok(ok(json!(r.versions(&subject, flag(&q, "deleted"))?)))
}

async fn register(
    State(r): Reg,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request = schema_request(&body)?;
    let (id, version) = r.register(&subject, &request)?;
    tracing::info!(target: "streamflow::registry", event = "schema_registered", subject = %subject, id, version);
    Ok(ok(
        json!({"id": id, "version": version, "subject": subject}),
    ))
}

async fn lookup(
    State(r): Reg,
    Path(subject): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> Result<Response, Failure> {
    let request = schema_request(&body)?;
    let mut v = r.lookup(&subject, &request, flag(&q, "deleted"))?;
    v.schema = in_format(&r, v.schema, &q)?;
    Ok(ok(version_body(&v)))
}

async fn version(
    State(r): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, Failure> {
    let mut v = r.version(&subject, version_ref(&version)?, flag(&q, "deleted"))?;
    v.schema = in_format(&r, v.schema, &q)?;
    Ok(ok(version_body(&v)))
}

async fn version_schema(
    State(r): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, Failure> {
    let v = r.version(&subject, version_ref(&version)?, flag(&q, "deleted"))?;
    Ok(raw(&v.schema.schema))
}

/// A schema's own text as the body (JSON schemas as JSON).
fn raw(schema: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        schema.to_string(),
    )
        .into_response()
}

async fn delete_version(
    State(r): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, Failure> {
    let deleted = r.delete_version(&subject, version_ref(&version)?, flag(&q, "permanent"))?;
    Ok(ok(json!(deleted)))
}

async fn delete_subject(
    State(r): Reg,
    Path(subject): Path<String>,
    Query(q): Params,
) -> Result<Response, Failure> {
    Ok(ok(json!(
        r.delete_subject(&subject, flag(&q, "permanent"))?
    )))
}

async fn types() -> Response {
    ok(json!(SchemaType::ALL.map(SchemaType::as_str)))
}

async fn schema_by_id(
    State(r): Reg,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, Failure> {
    let schema = in_format(&r, r.schema(schema_id(&id)?)?, &q)?;
    let mut body = json!({});
    schema_fields(&mut body, &schema);
    Ok(ok(body))
}

async fn raw_schema_by_id(State(r): Reg, Path(id): Path<String>) -> Result<Response, Failure> {
    Ok(raw(&r.schema(schema_id(&id)?)?.schema))
}

async fn id_versions(
    State(r): Reg,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, Failure> {
    let pairs = r.schema_versions(schema_id(&id)?, flag(&q, "deleted"))?;
    Ok(ok(json!(
        pairs
            .into_iter()
            .map(|(subject, version)| json!({"subject": subject, "version": version}))
            .collect::<Vec<_>>()
    )))
}

async fn id_subjects(
    State(r): Reg,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, Failure> {
    let mut subjects: Vec<String> = r
        .schema_versions(schema_id(&id)?, flag(&q, "deleted"))?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    subjects.dedup();
    Ok(ok(json!(subjects)))
}

fn compatibility(messages: Vec<String>, verbose: bool) -> Response {
    let mut body = json!({"is_compatible": messages.is_empty()});
    if verbose {
        body["messages"] = json!(messages);
    }
    ok(body)
}

async fn check_all(
    State(r): Reg,
    Path(subject): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> Result<Response, Failure> {
    let request = schema_request(&body)?;
    Ok(compatibility(
        r.check(&subject, None, &request)?,
        flag(&q, "verbose"),
    ))
}

async fn check_one(
    State(r): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
    body: Bytes,
) -> Result<Response, Failure> {
    let which = version_ref(&version)?;
    let request = schema_request(&body)?;
    Ok(compatibility(
        r.check(&subject, Some(which), &request)?,
        flag(&q, "verbose"),
    ))
}

/// A `PUT /config` body.
#[derive(Deserialize)]
struct ConfigBody {
    compatibility: Option<String>,
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

fn level_of(body: &Bytes) -> Result<Level, Failure> {
    let parsed: ConfigBody = serde_json::from_slice(body)
        .map_err(|e| Failure::Body(format!("the body is not a config: {e}")))?;
    let text = parsed
        .compatibility
        .or(parsed.compatibility_level)
        .unwrap_or_default();
    text.parse()
        .map_err(|_| RegistryError::InvalidLevel(text).into())
}

async fn global_config(State(r): Reg) -> Result<Response, Failure> {
    Ok(ok(json!({"compatibilityLevel": r.config(None)?.as_str()})))
}

async fn subject_config(
    State(r): Reg,
    Path(subject): Path<String>,
    Query(q): Params,
) -> Result<Response, Failure> {
    let level = match r.config(Some(&subject)) {
        Err(RegistryError::SubjectConfigNotFound(_)) if flag(&q, "defaultToGlobal") => {
            r.config(None)?
        }
        other => other?,
    };
    Ok(ok(json!({"compatibilityLevel": level.as_str()})))
}

async fn set_global_config(State(r): Reg, body: Bytes) -> Result<Response, Failure> {
    let level = level_of(&body)?;
    r.set_config(None, level)?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn set_subject_config(
    State(r): Reg,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let level = level_of(&body)?;
    r.set_config(Some(&subject), level)?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn delete_global_config(State(r): Reg) -> Result<Response, Failure> {
    Ok(ok(
        json!({"compatibilityLevel": r.delete_config(None)?.as_str()}),
    ))
}

async fn delete_subject_config(
    State(r): Reg,
    Path(subject): Path<String>,
) -> Result<Response, Failure> {
    Ok(ok(
        json!({"compatibilityLevel": r.delete_config(Some(&subject))?.as_str()}),
    ))
}

/// Always read-write (there is no import mode).
async fn mode() -> Response {
    ok(json!({"mode": "READWRITE"}))
}

// The flow API's view: a schema `id` is a subject; version 0 is the active
// (newest live) version.

/// `POST /v1/schemas` body.
#[derive(Deserialize)]
struct V1Body {
    id: String,
    schema: Value,
    #[serde(rename = "type", default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

fn v1_version_body(v: &SubjectVersion) -> Value {
    json!({
        "id": v.subject,
        "version": v.version,
        "schema_id": v.id,
        "type": v.schema.schema_type.as_str(),
        "schema": v.schema.schema,
        "references": v.schema.references,
    })
}

async fn v1_register(State(r): Reg, body: Bytes) -> Result<Response, Failure> {
    let parsed: V1Body = serde_json::from_slice(&body)
        .map_err(|e| Failure::Body(format!("expected {{id, schema, type?, references?}}: {e}")))?;
    let schema_type = schema_type(parsed.schema_type.as_deref())?;
    let schema = match parsed.schema {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let request = SchemaRequest {
        schema,
        schema_type,
        references: parsed.references,
    };
    let (id, version) = r.register(&parsed.id, &request)?;
    tracing::info!(target: "streamflow::registry", event = "schema_registered", subject = %parsed.id, id, version);
    Ok(reply(
        StatusCode::CREATED,
        json!({"id": parsed.id, "version": version, "schema_id": id}),
    ))
}

async fn v1_list(State(r): Reg) -> Result<Response, Failure> {
    let mut out = Vec::new();
    for subject in r.subjects(false) {
        let v = r.version(&subject, VersionRef::Latest, false)?;
        out.push(json!({"id": subject, "active_version": v.version, "schema_id": v.id, "type": v.schema.schema_type.as_str()}));
    }
    Ok(ok(json!(out)))
}

async fn v1_versions(State(r): Reg, Path(id): Path<String>) -> Result<Response, Failure> {
    let mut out = Vec::new();
    for version in r.versions(&id, false)? {
        out.push(v1_version_body(&r.version(
            &id,
            VersionRef::Number(version),
            false,
        )?));
    }
    Ok(ok(json!(out)))
}

async fn v1_version(
    State(r): Reg,
    Path((id, version)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let which = if version == "0" {
        VersionRef::Latest
    } else {
        version_ref(&version)?
    };
    Ok(ok(v1_version_body(&r.version(&id, which, false)?)))
}

async fn v1_delete(State(r): Reg, Path(id): Path<String>) -> Result<Response, Failure> {
    match r.delete_subject(&id, false) {
        Ok(_) | Err(RegistryError::SubjectSoftDeleted(_)) => {}
        Err(e) => return Err(e.into()),
    }
    r.delete_subject(&id, true)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
