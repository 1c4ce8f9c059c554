//! `http`: a webhook receiver. Clients POST JSON — one object, an array of
//! objects, or JSON lines — to `listen` + `path`; each object becomes a row.
//!
//! With `ack: checkpoint` (the default) a request is answered `200` only
//! once its rows are covered by a completed checkpoint, so a client that got
//! its answer never loses its rows, even if the pipeline then crashes
//! (without checkpoints the answer comes once the rows are handed on).
//! `ack: receipt` answers as soon as the rows are queued: faster, but rows
//! of answered requests are lost if the pipeline crashes before its next
//! checkpoint (at-most-once for them; clients that retry on errors get
//! at-least-once only with `ack: checkpoint`). A full queue answers `429`
//! with `Retry-After` (backpressure the client sees), a body over
//! `max_body` `413`, a missing or wrong token `401`, a body that is not
//! JSON objects `400`. One instance listens.
//!
//! ```yaml
//! - name: events
//!   type: http
//!   config: {listen: "127.0.0.1:8088", path: /events, token_env: WEBHOOK_TOKEN, schema: {id: int64, kind: string}}
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Source, SourceBatch};
use streamflow_dsl::ByteSize;
use tokio::sync::{mpsc, oneshot};

use streamflow_tls::ServerTlsOptions;

use super::acknowledgements::Acknowledgements;
use crate::message::{MessageDecoder, MessageFormat};
use crate::registry::{SourceContext, SourceFactory};

/// When a request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// Once a completed checkpoint covers its rows.
    #[default]
    Checkpoint,
    /// Once its rows are queued.
    Receipt,
}

/// Settings of an `http` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Address to listen on (`127.0.0.1:8088`; port 0 picks one).
    pub listen: SocketAddr,
    /// The path requests are POSTed to.
    #[serde(default = "default_path")]
    pub path: String,
    /// Declared schema, column → type.
    pub schema: Map<String, Value>,
    /// Largest body accepted (413 beyond).
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Environment variable holding the bearer token requests must carry.
    pub token_env: Option<String>,
    /// When requests are answered.
    #[serde(default)]
    pub ack: Ack,
    /// Requests queued for the pipeline before `429`.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Serve HTTPS with this certificate (`cert_file`, `key_file`).
    pub tls: Option<ServerTlsOptions>,
}

fn default_path() -> String {
    "/".into()
}
fn default_max_body() -> ByteSize {
    ByteSize(10 << 20)
}
fn default_queue() -> usize {
    64
}

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: HttpSourceConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    if !config.path.starts_with('/') {
        return Err(fail("path", format!("'{}' must start with /", config.path)));
    }
    if config.queue == 0 {
        return Err(fail("queue", "must be positive".into()));
    }
    if let Some(var) = &config.token_env
        && std::env::var(var).is_err()
    {
        return Err(fail(
            "token_env",
            format!("environment variable {var} is not set"),
        ));
    }
    if let Some(tls) = &config.tls {
        if !cfg!(feature = "tls") {
            return Err(fail(
                "tls",
                "this build of streamflow has no TLS (cargo feature `tls`)".into(),
            ));
        }
        if let Err(e) = tls.server_config() {
            let key = match &e {
                streamflow_tls::TlsError::File { key, .. } => format!("tls.{key}"),
                _ => "tls".into(),
            };
            return Err(fail(&key, e.to_string()));
        }
    }
    let schema: Schema = crate::sources::file::declared_schema(&config.schema, &ctx.at("schema"))?;
    let values = crate::message::Values {
        schema: Arc::new(schema),
        avro: None,
        json: None,
        protobuf: None,
    };
    Ok(Arc::new(HttpSourceFactory {
        config: Arc::new(config),
        values,
    }))
}

struct HttpSourceFactory {
    config: Arc<HttpSourceConfig>,
    values: crate::message::Values,
}

impl SourceFactory for HttpSourceFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.values.schema)
    }

    fn bounded(&self) -> bool {
        false
    }

    fn create(&self, instance: usize, _parallelism: usize) -> Result<Box<dyn Source>> {
        Ok(Box::new(HttpSource {
            config: Arc::clone(&self.config),
            decoder: MessageDecoder::new(MessageFormat::Json, &self.values),
            requests: None,
            server: None,
            checkpointing: false,
            answers: Acknowledgements::default(),
            listening: instance == 0,
        }))
    }
}

/// A request's rows, and where its answer goes.
struct Request {
    rows: Vec<Vec<u8>>,
    answer: Option<oneshot::Sender<StatusCode>>,
}

/// What the handler shares.
#[derive(Clone)]
struct Receiver {
    queue: mpsc::Sender<Request>,
    token: Option<Arc<str>>,
    max_body: usize,
    ack: Ack,
}

struct HttpSource {
    config: Arc<HttpSourceConfig>,
    decoder: MessageDecoder,
    requests: Option<mpsc::Receiver<Request>>,
    server: Option<tokio::task::JoinHandle<()>>,
    checkpointing: bool,
    /// Answers of requests handed on, released by checkpoints.
    answers: Acknowledgements<oneshot::Sender<StatusCode>>,
    listening: bool,
}

impl Drop for HttpSource {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Answers every request in `answers` with `status`.
fn answer_all(answers: Vec<oneshot::Sender<StatusCode>>, status: StatusCode) {
    for a in answers {
        // A client that went away is fine.
        let _ = a.send(status);
    }
}

/// The rows of a body: one object, an array of objects, or JSON lines.
fn rows_of(body: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let values: Vec<Value> =
            serde_json::from_str(trimmed).map_err(|e| format!("not a JSON array: {e}"))?;
        return values
            .iter()
            .map(|v| match v {
                Value::Object(_) => serde_json::to_vec(v).map_err(|e| e.to_string()),
                _ => Err("array elements must be JSON objects".to_string()),
            })
            .collect();
    }
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if !line.starts_with('{') {
            return Err(format!("line {}: not a JSON object", n + 1));
        }
        rows.push(line.as_bytes().to_vec());
    }
    if rows.is_empty() && !trimmed.is_empty() {
        return Err("no JSON objects in the body".into());
    }
    Ok(rows)
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(expected) = &r.token {
        use subtle::ConstantTimeEq;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required\n",
            )
                .into_response();
        }
    }
    if body.len() > r.max_body {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {} bytes\n", r.max_body),
        )
            .into_response();
    }
    let rows = match rows_of(&body) {
        Ok(rows) => rows,
        Err(m) => return (StatusCode::BAD_REQUEST, format!("{m}\n")).into_response(),
    };
    let count = rows.len();
    let (tx, rx) = oneshot::channel();
    let answer = match r.ack {
        Ack::Checkpoint => Some(tx),
        Ack::Receipt => None,
    };
    if let Err(mpsc::error::TrySendError::Full(_)) = r.queue.try_send(Request { rows, answer }) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "the pipeline is busy; retry later\n",
        )
            .into_response();
    }
    if r.ack == Ack::Receipt {
        return (StatusCode::OK, format!("{{\"rows\":{count}}}\n")).into_response();
    }
    match rx.await {
        Ok(status) if status.is_success() => {
            (status, format!("{{\"rows\":{count}}}\n")).into_response()
        }
        Ok(status) => (status, "the rows were not accepted\n").into_response(),
        // The pipeline stopped before a checkpoint covered the rows.
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline stopped; retry\n",
        )
            .into_response(),
    }
}

/// How long a pull waits for a first request.
const WAIT: Duration = Duration::from_millis(200);
/// Rows per batch at most.
const BATCH_ROWS: usize = 8192;

#[async_trait]
impl Source for HttpSource {
    async fn open(&mut self, checkpointing: bool) -> Result<()> {
        self.checkpointing = checkpointing;
        if !self.listening {
            return Ok(());
        }
        let token = match &self.config.token_env {
            Some(var) => Some(Arc::from(std::env::var(var).map_err(|_| {
                Error::Other(format!("environment variable {var} is not set"))
            })?)),
            None => None,
        };
        let (queue, requests) = mpsc::channel(self.config.queue);
        let receiver = Receiver {
            queue,
            token,
            max_body: self.config.max_body.0 as usize,
            ack: self.config.ack,
        };
        let app = axum::Router::new()
            .route(&self.config.path, axum::routing::post(receive))
            .layer(axum::extract::DefaultBodyLimit::max(
                (self.config.max_body.0 as usize).saturating_add(1),
            ))
            .with_state(receiver);
        let listener = tokio::net::TcpListener::bind(self.config.listen)
            .await
            .map_err(|e| {
                Error::Other(format!(
                    "http source: listening on {}: {e}",
                    self.config.listen
                ))
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Other(format!("http source: {e}")))?;
        tracing::info!(%addr, path = %self.config.path, tls = self.config.tls.is_some(), "http source listening");
        self.server = Some(match &self.config.tls {
            None => tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!(error = %e, "http source: the server stopped");
                }
            }),
            Some(tls) => serve_tls(listener, app, tls)?,
        });
        self.requests = Some(requests);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        let Some(requests) = self.requests.as_mut() else {
            // Not the listening instance.
            return Ok(None);
        };
        if !self.checkpointing {
            // Handed on at the previous pull: answer now.
            answer_all(self.answers.take_handed_on(), StatusCode::OK);
        }
        let mut taken = Vec::new();
        match tokio::time::timeout(WAIT, requests.recv()).await {
            Ok(Some(r)) => taken.push(r),
            Ok(None) | Err(_) => return Ok(Some(SourceBatch::default())),
        }
        let mut rows = taken[0].rows.len();
        while rows < BATCH_ROWS {
            match requests.try_recv() {
                Ok(r) => {
                    rows += r.rows.len();
                    taken.push(r);
                }
                Err(_) => break,
            }
        }
        let payloads: Vec<&[u8]> = taken
            .iter()
            .flat_map(|r| r.rows.iter().map(Vec::as_slice))
            .collect();
        let decoded = self
            .decoder
            .decode(&payloads, |i| format!("request row {i}"))
            .await?;
        drop(payloads);
        self.answers
            .handed_on(taken.into_iter().filter_map(|r| r.answer));
        Ok(Some(SourceBatch {
            data: decoded.batch,
            dead_letters: decoded.dead_letters,
            splits: None,
        }))
    }

    fn offset(&mut self, checkpoint: u64) -> streamflow_core::SourceOffset {
        self.answers.barrier(checkpoint);
        streamflow_core::SourceOffset::None
    }

    async fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<()> {
        answer_all(self.answers.complete(checkpoint), StatusCode::OK);
        Ok(())
    }
}

/// Serves `app` over TLS on `listener`.
#[cfg(feature = "tls")]
fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: &ServerTlsOptions,
) -> Result<tokio::task::JoinHandle<()>> {
    let config = tls
        .server_config()
        .map_err(|e| Error::Other(format!("http source: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("http source: {e}")))?;
    let (done, handshakes) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    Ok(tokio::spawn(async move {
        let handshaking = tokio::spawn(handshake(listener, acceptor, done));
        if let Err(e) = axum::serve(TlsListener { handshakes, local }, app).await {
            tracing::warn!(error = %e, "http source: the server stopped");
        }
        handshaking.abort();
    }))
}

#[cfg(not(feature = "tls"))]
fn serve_tls(
    _: tokio::net::TcpListener,
    _: axum::Router,
    _: &ServerTlsOptions,
) -> Result<tokio::task::JoinHandle<()>> {
    Err(Error::Other(
        "http source: this build has no TLS (cargo feature `tls`)".into(),
    ))
}

/// Bound on one client's TLS handshake.
#[cfg(feature = "tls")]
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(feature = "tls")]
type TlsConnection = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Accepts connections and runs each TLS handshake on a task of its own
/// (a slow client holds up no one), passing on those that succeed; failed
/// handshakes are logged and dropped.
#[cfg(feature = "tls")]
async fn handshake(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    done: mpsc::Sender<(TlsConnection, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait, as axum does.
                tracing::warn!(error = %e, "http source: accept failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (acceptor, done) = (acceptor.clone(), done.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = done.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "http source: TLS handshake failed")
                }
                Err(_) => tracing::debug!(%peer, "http source: TLS handshake timed out"),
            }
        });
    }
}

/// The connections whose TLS handshake succeeded, as an axum listener.
#[cfg(feature = "tls")]
struct TlsListener {
    handshakes: mpsc::Receiver<(TlsConnection, SocketAddr)>,
    local: SocketAddr,
}

#[cfg(feature = "tls")]
impl axum::serve::Listener for TlsListener {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshakes.recv().await {
            Some(connection) => connection,
            // The accepting task ended (aborted with the server): wait to be aborted too.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_become_rows() {
        assert_eq!(rows_of(br#"{"a":1}"#).expect("object").len(), 1);
        assert_eq!(rows_of(br#"[{"a":1},{"a":2}]"#).expect("array").len(), 2);
        assert_eq!(
            rows_of(b"{\"a\":1}\n\n{\"a\":2}\n").expect("lines").len(),
            2
        );
        assert!(rows_of(b"[1,2]").is_err());
        assert!(rows_of(b"hello").is_err());
        assert!(rows_of(&[0xff, 0xfe]).is_err());
    }
}
