//! The HTTP API of `streamflow serve`: the versioned flow API, health, and
//! bearer-token authentication.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use streamflow_dsl::{FileFormat, FlowSpec};
use streamflow_runtime::RecoveryOptions;

use crate::store::{FlowStore, FlowVersion, StoreError};
use crate::supervisor::{Supervisor, SupervisorError, plan};

/// Largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 1 << 20;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    /// The record of flows.
    pub store: Arc<FlowStore>,
    /// The flows being run.
    pub supervisor: Arc<Supervisor>,
    /// Required bearer token, if any.
    pub token: Option<Arc<str>>,
    /// Renders `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// An error answer: a status and `{error, errors?}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    errors: Vec<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    /// 400 with every problem of a declaration, one per line as `validate` prints them.
    fn invalid(text: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: "invalid flow".into(),
            errors: text.lines().map(str::to_string).collect(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound(_) | StoreError::NoVersion(_) => StatusCode::NOT_FOUND,
            StoreError::Exists(_) | StoreError::Conflict { .. } => StatusCode::CONFLICT,
            StoreError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<SupervisorError> for ApiError {
    fn from(e: SupervisorError) -> Self {
        match e {
            SupervisorError::Store(s) => s.into(),
            SupervisorError::Invalid(text) => Self::invalid(&text),
            SupervisorError::Start(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, m),
        }
    }
}

type Answer = Result<Response, ApiError>;

/// The routes, with authentication when a token is set.
pub fn router(api: Api) -> Router {
    let flows = Router::new()
        .route("/v1/flows", post(create).get(list))
        .route("/v1/flows/{name}", get(read).put(update).delete(delete))
        .route("/v1/flows/{name}/status", get(status))
        .route("/v1/flows/{name}/versions", get(versions))
        .route("/v1/flows/{name}/diff", get(diff))
        .route("/v1/flows/{name}/rollback/{version}", post(rollback))
        .route("/v1/flows/{name}/stop", post(stop))
        .route("/v1/flows/{name}/start", post(start))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/events", get(events))
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            authenticate,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(flows)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(api)
}

/// With a token set, requires `Authorization: Bearer <token>` (compared in
/// constant time).
async fn authenticate(AxumState(api): AxumState<Api>, request: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        use subtle::ConstantTimeEq;
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
                .into_response();
        }
    }
    next.run(request).await
}

async fn ready() -> &'static str {
    "ready"
}

async fn metrics(AxumState(api): AxumState<Api>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        api.metrics.render(&api.supervisor),
    )
        .into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    flow: Option<String>,
}

async fn events(AxumState(api): AxumState<Api>, Query(q): Query<EventsQuery>) -> Response {
    axum::Json(api.supervisor.events(q.flow.as_deref())).into_response()
}

/// The declaration in a request body: YAML with `Content-Type:
/// application/yaml` (or `text/yaml`), else JSON.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<FlowSpec, ApiError> {
    let yaml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("yaml"));
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the body is not UTF-8"))?;
    let format = if yaml {
        FileFormat::Yaml
    } else {
        FileFormat::Json
    };
    streamflow_dsl::parse_str(text, format).map_err(|d| ApiError::invalid(&d.to_string()))
}

/// Validates `spec` completely (as `streamflow validate` does).
async fn validate(spec: &FlowSpec) -> Result<(), ApiError> {
    plan(spec.clone()).await.map(|_| ()).map_err(ApiError::from)
}

#[derive(Serialize)]
struct VersionView<'a> {
    name: &'a str,
    version: u64,
    active: bool,
    fingerprint: &'a str,
    created_ms: u64,
    spec: &'a serde_json::Value,
}

fn version_view(name: &str, v: &FlowVersion, active: u64) -> serde_json::Value {
    json!(VersionView {
        name,
        version: v.version,
        active: v.version == active,
        fingerprint: &v.fingerprint,
        created_ms: v.created_ms,
        spec: &v.spec,
    })
}

async fn create(AxumState(api): AxumState<Api>, headers: HeaderMap, body: Bytes) -> Answer {
    let spec = parse_body(&headers, &body)?;
    let Some(name) = spec.name.clone().filter(|n| !n.is_empty()) else {
        return Err(ApiError::invalid(
            "name: a flow submitted to the server needs a name",
        ));
    };
    validate(&spec).await?;
    let version = api.store.create(&name, spec.to_document())?;
    api.supervisor
        .event(&name, "submitted", Some("version 1".into()));
    if let Err(e) = api
        .supervisor
        .start(&name, RecoveryOptions::default())
        .await
    {
        tracing::warn!(flow = %name, error = %e, "flow did not start");
    }
    let mut view = version_view(&name, &version, 1);
    view["state"] = json!(api.supervisor.state(&name));
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

#[derive(Deserialize)]
struct UpdateQuery {
    expected_version: Option<u64>,
    #[serde(default)]
    allow_state_drop: bool,
}

async fn update(
    AxumState(api): AxumState<Api>,
    Path(name): Path<String>,
    Query(q): Query<UpdateQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let previous = api.store.get(&name)?;
    let expected = match headers.get(header::IF_MATCH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(|s| s.trim().trim_matches('"'))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "If-Match must be a version number")
                })?,
        ),
        None => q.expected_version,
    };
    let mut spec = parse_body(&headers, &body)?;
    match &spec.name {
        Some(n) if !n.is_empty() && *n != name => {
            return Err(ApiError::invalid(&format!(
                "name: the declaration is named '{n}', not '{name}'"
            )));
        }
        _ => spec.name = Some(name.clone()),
    }
    if let Err(e) = validate(&spec).await {
        // The running version goes on; the status says why the update was refused.
        let why = e.errors.join("\n");
        api.supervisor
            .event(&name, "update_refused", Some(why.clone()));
        api.supervisor.set_refused(&name, Some(why));
        return Err(e);
    }
    let (version, created) = api
        .store
        .update(&name, spec.to_document(), expected)
        .map_err(|e| match e {
            StoreError::Conflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                format!("flow '{name}' was modified concurrently: {e}"),
            ),
            e => e.into(),
        })?;
    api.supervisor.set_refused(&name, None);
    if created {
        api.supervisor.event(
            &name,
            "updated",
            Some(format!("version {}", version.version)),
        );
        swap(&api, &name, previous.active, q.allow_state_drop).await?;
    }
    let mut view = version_view(&name, &version, version.version);
    view["created"] = json!(created);
    view["state"] = json!(api.supervisor.state(&name));
    Ok(axum::Json(view).into_response())
}

/// Runs the (new) active version of `name` in place of the running one:
/// stop at a final checkpoint, start from it. When the new version cannot
/// start, `previous` becomes active again and runs on.
async fn swap(
    api: &Api,
    name: &str,
    previous: u64,
    allow_state_drop: bool,
) -> Result<(), ApiError> {
    if !api.supervisor.is_live(name) {
        return Ok(());
    }
    api.supervisor.stop(name, true).await?;
    let options = RecoveryOptions {
        allow_state_drop,
        ..RecoveryOptions::default()
    };
    match api.supervisor.start(name, options).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let why = e.to_string();
            api.store.modify(name, |r| {
                r.active = previous;
                Ok(())
            })?;
            api.supervisor
                .event(name, "update_refused", Some(why.clone()));
            api.supervisor.set_refused(name, Some(why.clone()));
            if let Err(again) = api.supervisor.start(name, RecoveryOptions::default()).await {
                tracing::warn!(flow = name, error = %again, "the previous version did not restart");
            }
            Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("the new version cannot take over (version {previous} runs on): {why}"),
            ))
        }
    }
}

#[derive(Deserialize)]
struct ReadQuery {
    version: Option<u64>,
}

async fn read(
    AxumState(api): AxumState<Api>,
    Path(name): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Answer {
    let record = api.store.get(&name)?;
    let version = api
        .store
        .version(&name, q.version.unwrap_or(record.active))?;
    let mut view = version_view(&name, &version, record.active);
    view["state"] = json!(api.supervisor.state(&name));
    Ok(axum::Json(view).into_response())
}

async fn list(AxumState(api): AxumState<Api>) -> Answer {
    let flows: Vec<serde_json::Value> = api
        .store
        .list()?
        .into_iter()
        .map(|r| {
            json!({
                "name": r.name,
                "version": r.active,
                "latest": r.latest,
                "state": api.supervisor.state(&r.name),
            })
        })
        .collect();
    Ok(axum::Json(flows).into_response())
}

async fn versions(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Answer {
    let record = api.store.get(&name)?;
    let all: Vec<serde_json::Value> = api
        .store
        .versions(&name)?
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "active": v.version == record.active,
                "fingerprint": v.fingerprint,
                "created_ms": v.created_ms,
            })
        })
        .collect();
    Ok(axum::Json(all).into_response())
}

#[derive(Deserialize)]
struct DiffQuery {
    from: u64,
    to: u64,
}

async fn diff(
    AxumState(api): AxumState<Api>,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Answer {
    api.store.get(&name)?;
    let from = api.store.version(&name, q.from)?;
    let to = api.store.version(&name, q.to)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        crate::diff(&from.spec, &to.spec, q.from, q.to),
    )
        .into_response())
}

#[derive(Deserialize)]
struct SwapQuery {
    #[serde(default)]
    allow_state_drop: bool,
}

async fn rollback(
    AxumState(api): AxumState<Api>,
    Path((name, version)): Path<(String, u64)>,
    Query(q): Query<SwapQuery>,
) -> Answer {
    let previous = api.store.get(&name)?.active;
    api.store.version(&name, version)?;
    api.store.modify(&name, |r| {
        r.active = version;
        Ok(())
    })?;
    api.supervisor.event(
        &name,
        "rolled_back",
        Some(format!("from version {previous} to {version}")),
    );
    if previous != version {
        swap(&api, &name, previous, q.allow_state_drop).await?;
    }
    status(AxumState(api), Path(name)).await
}

async fn stop(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Answer {
    api.store.get(&name)?;
    api.supervisor.stop(&name, false).await?;
    status(AxumState(api), Path(name)).await
}

async fn start(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Answer {
    api.supervisor
        .start(&name, RecoveryOptions::default())
        .await?;
    status(AxumState(api), Path(name)).await
}

async fn delete(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Answer {
    api.store.get(&name)?;
    api.supervisor.delete(&name).await?;
    api.supervisor.event(&name, "deleted", None);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn status(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Answer {
    let status = api.supervisor.status(&name)?;
    Ok(axum::Json(status).into_response())
}
