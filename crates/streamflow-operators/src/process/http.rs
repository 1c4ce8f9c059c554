//! `http`: calls a service for each record (or once per batch) and merges
//! the JSON response into columns.
//!
//! ```yaml
//! type: http
//! url: "http://127.0.0.1:8080/owners/{channel}"   # {column} is filled from the record
//! method: GET                # GET | POST | PUT (POST/PUT send the record as a JSON object)
//! headers: {X-Api-Key: abc}
//! timeout: 5s                # per request (default 30s)
//! per: record                # record | batch (one POST of a JSON array, answered by an array)
//! response: {owner: string, region: string}   # response fields taken as columns
//! prefix: "owner_"           # prepended to those columns (default none)
//! concurrency: 8             # requests in flight per call, per: record (default 8)
//! tls: {ca_file: ca.pem}     # https: trusted authorities (default the system's), insecure_skip_verify, cert_file/key_file
//! ```
//!
//! A record whose request fails (connection error, non-2xx status, a
//! response that is not the expected JSON) fails alone. Response fields
//! that are missing are null. `https://` needs the `tls` cargo feature (on
//! in the binary).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::ArrayRef;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::json::ReaderBuilder;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use super::node::{duration_value, positive_count};
use super::outcome::Processed;
use super::registry::Processor;
use crate::row_errors::rows_as_json;

/// One piece of a URL template.
enum Part {
    Text(String),
    Column(usize),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Per {
    Record,
    Batch,
}

/// A planned `http` processor.
pub(crate) struct Http {
    client: reqwest::Client,
    url: Vec<Part>,
    method: reqwest::Method,
    headers: Vec<(String, String)>,
    per: Per,
    concurrency: usize,
    /// Response fields, as columns (unprefixed).
    response: SchemaRef,
    /// Output: the input's columns with the (prefixed) response columns.
    schema: SchemaRef,
    /// Output column index → input column or response column.
    layout: Vec<Result<usize, usize>>,
}

/// Plans an `http` node's settings against its input; errors as
/// `(settings key, message)`.
pub(crate) fn plan(
    settings: &Map<String, Value>,
    input: &SchemaRef,
) -> Result<Http, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let text = |key: &str| settings.get(key).and_then(Value::as_str);
    let per = match text("per").unwrap_or("record") {
        "record" => Per::Record,
        "batch" => Per::Batch,
        other => {
            errors.push(("per".into(), format!("'{other}': expected record or batch")));
            Per::Record
        }
    };
    let url = match text("url") {
        None => {
            errors.push(("url".into(), "an http node needs a url".into()));
            Vec::new()
        }
        Some(u) => match template(u, input) {
            Ok(parts) => {
                if per == Per::Batch && parts.iter().any(|p| matches!(p, Part::Column(_))) {
                    errors.push((
                        "url".into(),
                        "per: batch calls once per batch; the url cannot name columns".into(),
                    ));
                }
                parts
            }
            Err(e) => {
                errors.push(("url".into(), e));
                Vec::new()
            }
        },
    };
    let method = match text("method")
        .unwrap_or("GET")
        .to_ascii_uppercase()
        .as_str()
    {
        "GET" if per == Per::Batch => {
            errors.push((
                "method".into(),
                "per: batch sends the records: use POST or PUT".into(),
            ));
            reqwest::Method::POST
        }
        "GET" => reqwest::Method::GET,
        "POST" => reqwest::Method::POST,
        "PUT" => reqwest::Method::PUT,
        other => {
            errors.push((
                "method".into(),
                format!("'{other}': expected GET, POST or PUT"),
            ));
            reqwest::Method::GET
        }
    };
    let headers: Vec<(String, String)> = match settings.get("headers") {
        None => Vec::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                )
            })
            .collect(),
        Some(_) => {
            errors.push(("headers".into(), "expected a map of header: value".into()));
            Vec::new()
        }
    };
    let timeout = match settings.get("timeout").map(duration_value).transpose() {
        Ok(t) => t.unwrap_or(Duration::from_secs(30)),
        Err(e) => {
            errors.push(("timeout".into(), e));
            Duration::from_secs(30)
        }
    };
    let concurrency = match settings.get("concurrency").map(positive_count).transpose() {
        Ok(n) => n.unwrap_or(8),
        Err(e) => {
            errors.push(("concurrency".into(), e));
            1
        }
    };
    let prefix = text("prefix").unwrap_or_default();
    let mut response_fields = Vec::new();
    match settings.get("response") {
        None => {}
        Some(Value::Object(m)) => {
            for (name, ty) in m {
                match ty.as_str().map(streamflow_expr::parse_data_type) {
                    Some(Ok(t)) => response_fields.push(Field::new(name, t, true)),
                    Some(Err(e)) => errors.push((format!("response.{name}"), e)),
                    None => {
                        errors.push((format!("response.{name}"), "expected a type name".into()))
                    }
                }
            }
        }
        Some(_) => errors.push(("response".into(), "expected {field: type}".into())),
    }
    for key in settings.keys() {
        if !HTTP_KEYS.contains(&key.as_str()) {
            errors.push((
                key.clone(),
                format!("unknown http setting (known: {})", HTTP_KEYS.join(", ")),
            ));
        }
    }
    let tls = match settings.get("tls") {
        None => None,
        Some(v) => match serde_json::from_value::<streamflow_tls::TlsOptions>(v.clone()) {
            Ok(tls) => {
                for (key, message) in tls.problems() {
                    errors.push((format!("tls.{key}"), message));
                }
                Some(tls)
            }
            Err(e) => {
                errors.push(("tls".into(), e.to_string()));
                None
            }
        },
    };
    let client = streamflow_tls::http_client(tls.as_ref())
        .map_err(|e| ("tls", e.to_string()))
        .and_then(|b| {
            b.timeout(timeout)
                .build()
                .map_err(|e| ("timeout", format!("cannot build an HTTP client: {e}")))
        });
    let client = match client {
        Ok(c) => c,
        Err((key, message)) => {
            errors.push((key.into(), message));
            return Err(errors);
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let response = Arc::new(Schema::new(response_fields));
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut layout: Vec<Result<usize, usize>> = (0..fields.len()).map(Ok).collect();
    for (i, f) in response.fields().iter().enumerate() {
        let name = format!("{prefix}{}", f.name());
        let field = f.as_ref().clone().with_name(&name);
        match fields.iter().position(|g| g.name() == &name) {
            Some(at) => {
                fields[at] = field;
                layout[at] = Err(i);
            }
            None => {
                fields.push(field);
                layout.push(Err(i));
            }
        }
    }
    Ok(Http {
        client,
        url,
        method,
        headers,
        per,
        concurrency,
        response,
        schema: Arc::new(Schema::new(fields)),
        layout,
    })
}

/// Keys an `http` node takes besides the common node keys.
pub(crate) const HTTP_KEYS: &[&str] = &[
    "url",
    "method",
    "headers",
    "timeout",
    "per",
    "response",
    "prefix",
    "concurrency",
    "tls",
];

/// Splits `http://h/{col}/x` into text and column references.
fn template(url: &str, input: &SchemaRef) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = url;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in '{url}'"))?
            + open;
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let name = &rest[open + 1..close];
        let i = input.index_of(name).map_err(|_| {
            let names: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
            match streamflow_dsl::suggest(name, &names) {
                Some(s) => format!("column '{name}' not found (did you mean '{s}'?)"),
                None => format!("column '{name}' not found"),
            }
        })?;
        parts.push(Part::Column(i));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

impl Http {
    /// The URL for row `row` of `batch`.
    fn url(&self, batch: &RecordBatch, row: usize) -> Result<String, String> {
        let mut url = String::new();
        for p in &self.url {
            match p {
                Part::Text(t) => url.push_str(t),
                Part::Column(i) => {
                    let v = arrow::util::display::array_value_to_string(batch.column(*i), row)
                        .map_err(|e| e.to_string())?;
                    url.extend(utf8_percent_encode(&v, NON_ALPHANUMERIC));
                }
            }
        }
        Ok(url)
    }

    async fn send(&self, url: &str, body: Option<String>) -> Result<Value, String> {
        let mut req = self.client.request(self.method.clone(), url);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{} {url}: {}", self.method, without_url(&e)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("{} {url}: reading the response: {e}", self.method))?;
        if !status.is_success() {
            return Err(format!("{} {url}: HTTP {status}", self.method));
        }
        if self.response.fields().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| format!("{} {url}: response is not JSON: {e}", self.method))
    }

    /// The output batch for the records `rows` of `batch` with their responses.
    fn assemble(
        &self,
        batch: &RecordBatch,
        rows: &[usize],
        responses: &[Value],
    ) -> Result<RecordBatch, String> {
        let mut decoder = ReaderBuilder::new(Arc::clone(&self.response))
            .build_decoder()
            .map_err(|e| e.to_string())?;
        let objects: Vec<Value> = responses
            .iter()
            .map(|v| {
                if v.is_object() {
                    v.clone()
                } else {
                    Value::Object(Map::new())
                }
            })
            .collect();
        decoder
            .serialize(&objects)
            .map_err(|e| format!("response: {e}"))?;
        let decoded = decoder
            .flush()
            .map_err(|e| format!("response: {e}"))?
            .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&self.response)));
        let input = super::outcome::subset(batch, rows)?;
        let columns: Vec<ArrayRef> = self
            .layout
            .iter()
            .map(|l| match l {
                Ok(i) => Arc::clone(input.column(*i)),
                Err(i) => Arc::clone(decoded.column(*i)),
            })
            .collect();
        RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(|e| e.to_string())
    }
}

/// A request error without the URL repeated.
fn without_url(e: &reqwest::Error) -> String {
    let text = streamflow_core::error::describe(e);
    match e.url() {
        Some(url) => text.replace(&format!(" ({url})"), ""),
        None => text,
    }
}

#[async_trait]
impl Processor for Http {
    fn output_schema(&self, _input: &SchemaRef) -> Result<SchemaRef, String> {
        Ok(Arc::clone(&self.schema))
    }

    async fn process(&self, batch: RecordBatch) -> Result<Processed, String> {
        let sends_body = self.method != reqwest::Method::GET;
        match self.per {
            Per::Batch => {
                let body = format!("[{}]", rows_as_json(&batch).join(","));
                let url = self.url(&batch, 0)?;
                let answer = self.send(&url, Some(body)).await?;
                let responses = match answer {
                    Value::Array(items) if items.len() == batch.num_rows() => items,
                    Value::Null => vec![Value::Null; batch.num_rows()],
                    _ => {
                        return Err(format!(
                            "{url}: expected a JSON array of {} responses",
                            batch.num_rows()
                        ));
                    }
                };
                let rows: Vec<usize> = (0..batch.num_rows()).collect();
                Ok(Processed::ok(self.assemble(&batch, &rows, &responses)?))
            }
            Per::Record => {
                let bodies = if sends_body {
                    Some(rows_as_json(&batch))
                } else {
                    None
                };
                let results: Vec<Result<Value, String>> = stream::iter(0..batch.num_rows())
                    .map(|r| {
                        let body = bodies.as_ref().map(|b| b[r].clone());
                        let url = self.url(&batch, r);
                        async move { self.send(&url?, body).await }
                    })
                    .buffered(self.concurrency)
                    .collect()
                    .await;
                let mut rows = Vec::new();
                let mut answers = Vec::new();
                let mut failed = Vec::new();
                for (r, result) in results.into_iter().enumerate() {
                    match result {
                        Ok(v) => {
                            rows.push(r);
                            answers.push(v);
                        }
                        Err(e) => failed.push((r, e)),
                    }
                }
                let output = self.assemble(&batch, &rows, &answers)?;
                Ok(Processed { output, failed })
            }
        }
    }
}
