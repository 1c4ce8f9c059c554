//! `http`: sends rows to an HTTP endpoint as JSON, in batches — a JSON
//! array per request (`body: array`, the default) or JSON lines
//! (`body: lines`).
//!
//! A batch goes when it reaches `batch.max_rows` rows or `batch.max_bytes`
//! bytes, or its first row has waited `batch.linger`, with up to
//! `concurrency` requests in flight; a checkpoint waits
//! until every row before its barrier was answered with a success, so what
//! a checkpoint covers has been delivered (at-least-once; with
//! `idempotency_header`, each request carries a key made of the run (kept
//! across restores), the instance and the number of the batch's first row
//! in the run, so a receiver can drop a batch a replay after a crash sends
//! again with the same rows). Requests failing with
//! 5xx, 429, a timeout or a connection error are retried with exponential
//! backoff and jitter (honouring `Retry-After`); other statuses, and the
//! last failed attempt, send the batch's rows to the sink's `dlq` with the
//! status and the start of the answer (without a `dlq`, the run fails).
//!
//! ```yaml
//! - name: out
//!   type: http
//!   input: totals
//!   dlq: rejected
//!   config:
//!     url: "https://example.com/ingest"
//!     headers: {Authorization: "Bearer ${INGEST_TOKEN}"}
//!     batch: {max_rows: 500, linger: 200ms}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::{DeadLetter, Diagnostic, Diagnostics, Error, Result, Sink};
use streamflow_dsl::{ByteSize, HumanDuration};
use tokio::sync::{mpsc, oneshot};

use streamflow_tls::TlsOptions;

use super::replay_ids::ReplayIds;
use super::retry::RetryConfig;
use crate::message::{MessageEncoder, MessageFormat};
use crate::registry::{SinkContext, SinkFactory};

/// How rows are laid out in a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Body {
    /// One JSON array of objects.
    #[default]
    Array,
    /// One JSON object per line.
    Lines,
}

/// The HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// POST.
    #[default]
    Post,
    /// PUT.
    Put,
}

/// When a batch is sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Rows per request at most.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Body bytes per request at most (a single larger row goes alone).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// How long the first row of a batch waits for more.
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            linger: default_linger(),
        }
    }
}

fn default_max_rows() -> usize {
    1000
}
fn default_max_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_linger() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// Settings of an `http` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where requests go (`http://` or `https://`).
    pub url: String,
    /// POST or PUT.
    #[serde(default)]
    pub method: Method,
    /// Extra headers; `${VAR}` in a value is replaced by the environment
    /// variable's value when the flow starts (secrets stay out of the file).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body layout.
    #[serde(default)]
    pub body: Body,
    /// When a batch is sent.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Retries.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// A header carrying a key unique to each batch (`Idempotency-Key`).
    pub idempotency_header: Option<String>,
    /// TLS settings of `https://` requests (default: the system's trust
    /// store).
    pub tls: Option<TlsOptions>,
    /// Requests in flight at once (1 keeps batches in order).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    4
}

/// `text` with each `${VAR}` replaced by the variable's value.
fn interpolate(text: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in '{text}'"))?;
        let var = &after[..end];
        let value =
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let config: HttpSinkConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    let url = reqwest::Url::parse(&config.url)
        .map_err(|e| fail("url", format!("'{}': {e}", config.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(fail(
            "url",
            format!("'{}' is not an http(s) url", config.url),
        ));
    }
    if config.tls.is_some() && url.scheme() != "https" {
        return Err(fail("tls", "tls settings need an https:// url".into()));
    }
    crate::server::check_tls(
        |k| ctx.at(k),
        crate::server::tls(config.tls.as_ref(), url.scheme() == "https").as_ref(),
    )?;
    if config.batch.max_rows == 0 {
        return Err(fail("batch.max_rows", "must be positive".into()));
    }
    if config.concurrency == 0 {
        return Err(fail("concurrency", "must be at least 1".into()));
    }
    if config.retry.max_attempts == 0 {
        return Err(fail("retry.max_attempts", "must be at least 1".into()));
    }
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &config.headers {
        let at = format!("headers.{name}");
        let value = interpolate(value).map_err(|m| fail(&at, m))?;
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| fail(&at, e.to_string()))?;
        let value =
            reqwest::header::HeaderValue::from_str(&value).map_err(|e| fail(&at, e.to_string()))?;
        headers.insert(name, value);
    }
    let content_type = match config.body {
        Body::Array => "application/json",
        Body::Lines => "application/x-ndjson",
    };
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static(content_type),
    );
    let encoder = MessageEncoder::new(&crate::message::EncoderSource {
        format: MessageFormat::Json,
        input: &ctx.input,
        declared: None,
        registry: None,
        default_subject: String::new(),
    })
    .map_err(|m| fail("url", m))?;
    let client = streamflow_tls::http_client(config.tls.as_ref())
        .map_err(|e| fail("tls", e.to_string()))?
        .timeout(config.timeout.0)
        .default_headers(headers)
        .build()
        .map_err(|e| fail("url", e.to_string()))?;
    Ok(Arc::new(HttpSinkFactory {
        name: ctx.name.to_string(),
        config: Arc::new(config),
        url,
        client,
        encoder,
    }))
}

struct HttpSinkFactory {
    name: String,
    config: Arc<HttpSinkConfig>,
    url: reqwest::Url,
    client: reqwest::Client,
    encoder: MessageEncoder,
}

impl SinkFactory for HttpSinkFactory {
    fn create(&self, instance: usize) -> Result<Box<dyn Sink>> {
        let (rows, rx) = mpsc::channel(QUEUE);
        let sender = Sender {
            config: Arc::clone(&self.config),
            url: self.url.clone(),
            client: self.client.clone(),
        };
        let ids = ReplayIds::new(&self.name, instance);
        let task = tokio::spawn(Arc::new(sender).run(rx, ids));
        Ok(Box::new(HttpSink {
            encoder: self.encoder.clone(),
            rows,
            task: Some(task),
            dead: Vec::new(),
        }))
    }
}

/// Messages queued for the sending task.
const QUEUE: usize = 64;

/// What the sink tells its sending task.
enum Command {
    /// Continue the idempotency keys of the restored checkpoint.
    Restore(Vec<serde_json::Value>),
    /// Encoded rows to send.
    Rows(Vec<Vec<u8>>),
    /// Send what is buffered and answer once every row so far is answered
    /// for: with the dead letters of the failed ones and what a checkpoint
    /// records of the keys, or the error.
    Flush {
        done: oneshot::Sender<Result<(Vec<DeadLetter>, serde_json::Value)>>,
    },
}

struct HttpSink {
    encoder: MessageEncoder,
    rows: mpsc::Sender<Command>,
    task: Option<tokio::task::JoinHandle<()>>,
    dead: Vec<DeadLetter>,
}

impl HttpSink {
    /// Waits until every row so far is answered for; what a checkpoint
    /// records of the idempotency keys.
    async fn flush(&mut self) -> Result<serde_json::Value> {
        let (done, answer) = oneshot::channel();
        self.command(Command::Flush { done }).await?;
        let (dead, keys) = answer
            .await
            .map_err(|_| Error::Other("http sink: the sending task ended".into()))??;
        self.dead.extend(dead);
        Ok(keys)
    }

    async fn command(&self, command: Command) -> Result<()> {
        self.rows
            .send(command)
            .await
            .map_err(|_| Error::Other("http sink: the sending task ended".into()))
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn open(&mut self, checkpointing: Option<Vec<serde_json::Value>>) -> Result<()> {
        self.command(Command::Restore(checkpointing.unwrap_or_default()))
            .await
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = self.encoder.encode(&batch).await?;
        self.command(Command::Rows(rows)).await
    }

    async fn pre_commit(&mut self, _checkpoint: u64) -> Result<Vec<serde_json::Value>> {
        // Everything before the barrier is delivered (or dead-lettered)
        // before the checkpoint can complete.
        Ok(vec![self.flush().await?])
    }

    fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead)
    }

    async fn finish(&mut self) -> Result<()> {
        self.flush().await?;
        if let Some(task) = self.task.take() {
            task.abort();
        }
        Ok(())
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The task that batches rows and sends them.
struct Sender {
    config: Arc<HttpSinkConfig>,
    url: reqwest::Url,
    client: reqwest::Client,
}

/// Requests in flight, and what those that ended left.
#[derive(Default)]
struct Flights {
    requests: tokio::task::JoinSet<(Vec<Vec<u8>>, std::result::Result<(), String>)>,
    dead: Vec<DeadLetter>,
    failure: Option<Error>,
}

impl Flights {
    /// Waits for one request to end; its rows become dead letters if it failed.
    async fn land_one(&mut self, url: &reqwest::Url) {
        match self.requests.join_next().await {
            Some(Ok((rows, Err(reason)))) => self.dead.extend(rows.iter().map(|row| DeadLetter {
                file: Some(url.to_string()),
                line: None,
                payload: Some(String::from_utf8_lossy(row).into_owned()),
                error: reason.clone(),
            })),
            Some(Err(e)) => {
                self.failure = Some(Error::Other(format!(
                    "http sink: a request task failed: {e}"
                )));
            }
            Some(Ok((_, Ok(())))) | None => {}
        }
    }
}

/// Rows waiting to go, and when the first came.
#[derive(Default)]
struct Pending {
    rows: Vec<Vec<u8>>,
    bytes: usize,
    since: Option<tokio::time::Instant>,
}

impl Sender {
    async fn run(self: Arc<Self>, mut commands: mpsc::Receiver<Command>, mut ids: ReplayIds) {
        let mut pending = Pending::default();
        let mut flights = Flights::default();
        loop {
            let linger = pending.since.map(|t| t + self.config.batch.linger.0);
            let command = tokio::select! {
                c = commands.recv() => c,
                () = sleep_until(linger) => {
                    self.send_pending(&mut pending, &mut ids, &mut flights).await;
                    continue;
                }
            };
            match command {
                None => return,
                Some(Command::Rows(rows)) => {
                    for row in rows {
                        let len = row.len() + 1;
                        if !pending.rows.is_empty()
                            && (pending.rows.len() >= self.config.batch.max_rows
                                || pending.bytes + len > self.config.batch.max_bytes.0 as usize)
                        {
                            self.send_pending(&mut pending, &mut ids, &mut flights)
                                .await;
                        }
                        pending.bytes += len;
                        pending.since.get_or_insert_with(tokio::time::Instant::now);
                        pending.rows.push(row);
                    }
                }
                Some(Command::Restore(staged)) => ids.restore(Some(&staged)),
                Some(Command::Flush { done }) => {
                    self.send_pending(&mut pending, &mut ids, &mut flights)
                        .await;
                    while !flights.requests.is_empty() {
                        flights.land_one(&self.url).await;
                    }
                    let answer = match flights.failure.take() {
                        Some(e) => Err(e),
                        None => Ok((std::mem::take(&mut flights.dead), ids.checkpoint())),
                    };
                    let _ = done.send(answer);
                }
            }
        }
    }

    /// Sends the pending rows as one request, once fewer than
    /// `concurrency` are in flight.
    async fn send_pending(
        self: &Arc<Self>,
        pending: &mut Pending,
        ids: &mut ReplayIds,
        flights: &mut Flights,
    ) {
        let rows = std::mem::take(&mut pending.rows);
        *pending = Pending::default();
        if rows.is_empty() {
            return;
        }
        while flights.requests.len() >= self.config.concurrency {
            flights.land_one(&self.url).await;
        }
        let key = ids.next_range(rows.len() as u64);
        let sender = Arc::clone(self);
        flights.requests.spawn(async move {
            let outcome = sender.deliver(&rows, &key).await;
            (rows, outcome)
        });
    }

    fn body(&self, rows: &[Vec<u8>]) -> Vec<u8> {
        let size: usize = rows.iter().map(|r| r.len() + 1).sum();
        let mut body = Vec::with_capacity(size + 2);
        match self.config.body {
            Body::Array => {
                body.push(b'[');
                for (i, row) in rows.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(row);
                }
                body.push(b']');
            }
            Body::Lines => {
                for row in rows {
                    body.extend_from_slice(row);
                    body.push(b'\n');
                }
            }
        }
        body
    }

    /// Sends one batch, retrying what may succeed later; the reason of the
    /// final failure.
    async fn deliver(&self, rows: &[Vec<u8>], key: &str) -> std::result::Result<(), String> {
        let body = bytes_of(self.body(rows));
        let retry = &self.config.retry;
        let mut backoff = retry.backoff();
        let mut attempt = 1;
        loop {
            let mut request = match self.config.method {
                Method::Post => self.client.post(self.url.clone()),
                Method::Put => self.client.put(self.url.clone()),
            };
            if let Some(header) = &self.config.idempotency_header {
                request = request.header(header.as_str(), key);
            }
            let outcome = request.body(body.clone()).send().await;
            let (reason, retryable, wait) = match outcome {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => {
                    let status = response.status();
                    let after = retry_after(response.headers());
                    let text = response.text().await.unwrap_or_default();
                    let excerpt: String = text.chars().take(200).collect();
                    let retryable = status.is_server_error() || status.as_u16() == 429;
                    (format!("HTTP {status}: {excerpt}"), retryable, after)
                }
                Err(e) => (
                    format!("request failed: {}", streamflow_core::error::describe(&e)),
                    e.is_timeout() || e.is_connect() || e.is_request(),
                    None,
                ),
            };
            if !retryable || attempt >= retry.max_attempts {
                let tried = if attempt > 1 {
                    format!(" (after {attempt} attempts)")
                } else {
                    String::new()
                };
                tracing::warn!(url = %self.url, rows = rows.len(), reason = %reason, "http sink: a batch failed{tried}");
                return Err(format!("{reason}{tried}"));
            }
            let jittered = backoff.next_wait();
            let wait = wait.unwrap_or(jittered).min(retry.max_backoff.0);
            tracing::debug!(url = %self.url, attempt, ?wait, reason = %reason, "http sink: retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// The body as cheaply clonable bytes (no copy per attempt).
fn bytes_of(body: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from(body)
}

/// `Retry-After` in seconds, when the answer has one.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Sleeps until `at`; never returns for `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_fill_header_values() {
        let path = std::env::var("PATH").expect("PATH is set");
        assert_eq!(interpolate("p=${PATH}!"), Ok(format!("p={path}!")));
        assert!(interpolate("${STREAMFLOW_NOT_SET_ANYWHERE}").is_err());
        assert!(interpolate("${UNCLOSED").is_err());
    }
}
