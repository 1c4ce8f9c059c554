//! The HTTP API of `streamflow serve`: the versioned flow API, health, and
//! bearer-token authentication.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;
use streamflow_dsl::{FileFormat, FlowSpec};
use streamflow_runtime::RecoveryOptions;

use crate::store::{FlowStore, FlowVersion, StoreError};
use crate::supervisor::{FlowStatus, State, Supervisor, SupervisorError, plan};

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
    /// The schema registry.
    pub registry: Arc<streamflow_registry::Registry>,
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

/// The OpenAPI document's frame; the paths come from the routes.
#[derive(utoipa::OpenApi)]
#[openapi(info(
    title = "StreamFlow control plane",
    description = "Versioned flows: submit, update (hot reload), roll back, observe."
))]
struct ApiDoc;

/// The routes and the OpenAPI document describing exactly them (both are
/// built from one list of handlers).
fn routes() -> (Router<Api>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create, list))
        .routes(routes!(read, update, delete))
        .routes(routes!(status))
        .routes(routes!(versions))
        .routes(routes!(diff))
        .routes(routes!(rollback))
        .routes(routes!(stop))
        .routes(routes!(start))
        .routes(routes!(events))
        .routes(routes!(metrics))
        .routes(routes!(ready))
        .split_for_parts()
}

/// The OpenAPI 3 document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// The routes, with authentication when a token is set.
pub fn router(api: Api) -> Router {
    let (flows, doc) = routes();
    let doc = Arc::new(doc);
    let flows = flows
        .route(
            "/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            authenticate,
        ));
    let schemas = streamflow_registry::api::router(Arc::clone(&api.registry)).route_layer(
        axum::middleware::from_fn_with_state(api.clone(), authenticate),
    );
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(flows)
        .merge(schemas)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(api)
}

/// The token in an `Authorization` header: `Bearer <token>`, or — for
/// schema registry clients configured with `user:password` — `Basic` with
/// the token as the password.
fn presented_token(header: &str) -> Option<String> {
    if let Some(token) = header.strip_prefix("Bearer ") {
        return Some(token.to_string());
    }
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(header.strip_prefix("Basic ")?)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.1.to_string())
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
            .and_then(presented_token)
            .unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
                .into_response();
        }
    }
    next.run(request).await
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "the store is open and the flows restored")))]
async fn ready() -> &'static str {
    "ready"
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(AxumState(api): AxumState<Api>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(&api.supervisor.metrics()),
    )
        .into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    flow: Option<String>,
}

#[utoipa::path(get, path = "/v1/events", tag = "flows", params(("flow" = Option<String>, Query, description = "only this flow's events")), responses((status = 200, body = Vec<crate::events::Event>)))]
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

/// A version of a flow, as every read and write returns it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FlowView {
    /// Flow name.
    name: String,
    /// This version.
    version: u64,
    /// Whether it is the active version.
    active: bool,
    /// SHA-256 of the normal-form declaration.
    fingerprint: String,
    /// When it was made, milliseconds since the epoch.
    created_ms: u64,
    /// The declaration in normal form.
    #[schema(value_type = Object)]
    spec: serde_json::Value,
    /// The flow's state now.
    state: State,
    /// Writes: whether a new version was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
}

impl FlowView {
    fn new(api: &Api, name: &str, v: FlowVersion, active: u64, created: Option<bool>) -> Self {
        Self {
            name: name.to_string(),
            version: v.version,
            active: v.version == active,
            fingerprint: v.fingerprint,
            created_ms: v.created_ms,
            spec: v.spec,
            state: api.supervisor.state(name),
            created,
        }
    }
}

/// A flow in the listing.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FlowListItem {
    /// Flow name.
    name: String,
    /// Active version.
    version: u64,
    /// Newest version.
    latest: u64,
    /// State now.
    state: State,
}

/// A version in a flow's history.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionItem {
    /// Version.
    version: u64,
    /// Whether it is active.
    active: bool,
    /// SHA-256 of its normal-form declaration.
    fingerprint: String,
    /// When it was made, milliseconds since the epoch.
    created_ms: u64,
}

/// An error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    error: String,
    /// Every problem of an invalid declaration, with its path.
    errors: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/v1/flows", tag = "flows", request_body(content = Object, description = "a flow declaration (JSON, or YAML with Content-Type application/yaml)"), responses((status = 201, body = FlowView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, description = "body over 1 MiB")))]
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
    let view = FlowView::new(&api, &name, version, 1, None);
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

#[derive(Deserialize)]
struct UpdateQuery {
    expected_version: Option<u64>,
    #[serde(default)]
    allow_state_drop: bool,
}

#[utoipa::path(put, path = "/v1/flows/{name}", tag = "flows", params(("name" = String, Path), ("If-Match" = Option<u64>, Header, description = "the active version read (compare-and-swap)"), ("expected_version" = Option<u64>, Query), ("allow_state_drop" = Option<bool>, Query)), request_body(content = Object), responses((status = 200, body = FlowView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
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
    let active = version.version;
    let view = FlowView::new(&api, &name, version, active, Some(created));
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

#[utoipa::path(get, path = "/v1/flows/{name}", tag = "flows", params(("name" = String, Path), ("version" = Option<u64>, Query)), responses((status = 200, body = FlowView), (status = 404, body = ErrorBody)))]
async fn read(
    AxumState(api): AxumState<Api>,
    Path(name): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Answer {
    let record = api.store.get(&name)?;
    let version = api
        .store
        .version(&name, q.version.unwrap_or(record.active))?;
    let view = FlowView::new(&api, &name, version, record.active, None);
    Ok(axum::Json(view).into_response())
}

#[utoipa::path(get, path = "/v1/flows", tag = "flows", responses((status = 200, body = Vec<FlowListItem>)))]
async fn list(AxumState(api): AxumState<Api>) -> Answer {
    let flows: Vec<FlowListItem> = api
        .store
        .list()?
        .into_iter()
        .map(|r| FlowListItem {
            state: api.supervisor.state(&r.name),
            name: r.name,
            version: r.active,
            latest: r.latest,
        })
        .collect();
    Ok(axum::Json(flows).into_response())
}

#[utoipa::path(get, path = "/v1/flows/{name}/versions", tag = "flows", params(("name" = String, Path)), responses((status = 200, body = Vec<VersionItem>), (status = 404, body = ErrorBody)))]
async fn versions(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Answer {
    let record = api.store.get(&name)?;
    let all: Vec<VersionItem> = api
        .store
        .versions(&name)?
        .into_iter()
        .map(|v| VersionItem {
            active: v.version == record.active,
            version: v.version,
            fingerprint: v.fingerprint,
            created_ms: v.created_ms,
        })
        .collect();
    Ok(axum::Json(all).into_response())
}

#[derive(Deserialize)]
struct DiffQuery {
    from: u64,
    to: u64,
}

#[utoipa::path(get, path = "/v1/flows/{name}/diff", tag = "flows", params(("name" = String, Path), ("from" = u64, Query), ("to" = u64, Query)), responses((status = 200, description = "unified diff", content_type = "text/plain"), (status = 404, body = ErrorBody)))]
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

#[utoipa::path(post, path = "/v1/flows/{name}/rollback/{version}", tag = "flows", params(("name" = String, Path), ("version" = u64, Path), ("allow_state_drop" = Option<bool>, Query)), responses((status = 200, body = FlowStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
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

#[utoipa::path(post, path = "/v1/flows/{name}/stop", tag = "flows", params(("name" = String, Path)), responses((status = 200, body = FlowStatus), (status = 404, body = ErrorBody)))]
async fn stop(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Answer {
    api.store.get(&name)?;
    api.supervisor.stop(&name, false).await?;
    status(AxumState(api), Path(name)).await
}

#[utoipa::path(post, path = "/v1/flows/{name}/start", tag = "flows", params(("name" = String, Path)), responses((status = 200, body = FlowStatus), (status = 404, body = ErrorBody)))]
async fn start(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Answer {
    api.supervisor
        .start(&name, RecoveryOptions::default())
        .await?;
    status(AxumState(api), Path(name)).await
}

#[utoipa::path(delete, path = "/v1/flows/{name}", tag = "flows", params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Answer {
    api.store.get(&name)?;
    api.supervisor.delete(&name).await?;
    api.supervisor.event(&name, "deleted", None);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/v1/flows/{name}/status", tag = "flows", params(("name" = String, Path)), responses((status = 200, body = FlowStatus), (status = 404, body = ErrorBody)))]
async fn status(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Answer {
    let status = api.supervisor.status(&name)?;
    Ok(axum::Json(status).into_response())
}
