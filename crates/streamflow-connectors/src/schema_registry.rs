//! A client of a schema registry speaking the Confluent REST API (the one
//! in `streamflow serve`, or any other): writer schemas by id for readers
//! of the Confluent wire format, subject versions for flows' schemas, and
//! registration and compatibility checks for writers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

/// The registry flows use when they name none: `STREAMFLOW_REGISTRY`, else
/// the one set by the embedding process (`streamflow serve` sets itself).
pub fn default_url() -> Option<String> {
    std::env::var("STREAMFLOW_REGISTRY")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| DEFAULT.get().map(|(url, _)| url.clone()))
}

/// The embedding server's registry and the token it requires.
static DEFAULT: OnceLock<(String, Option<String>)> = OnceLock::new();

/// Makes `url` (which requires `token`, if any) the registry of flows that
/// name none (the first call wins).
pub fn set_default(url: String, token: Option<String>) {
    let _ = DEFAULT.set((url, token));
}

/// A registered schema as a reader needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Global id.
    pub id: u32,
    /// `AVRO`, `JSON` or `PROTOBUF`.
    pub schema_type: String,
    /// The schema text.
    pub schema: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    id: Option<u32>,
    schema: Option<String>,
    schema_type: Option<String>,
    #[serde(rename = "is_compatible")]
    is_compatible: Option<bool>,
    #[serde(default)]
    messages: Vec<String>,
    message: Option<String>,
}

/// A registry client; answers by id are cached (an id's schema never changes).
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    by_id: Arc<Mutex<HashMap<u32, Fetched>>>,
}

/// Bound on one call.
const TIMEOUT: Duration = Duration::from_secs(10);

impl RegistryClient {
    /// A client of the registry at `url`. A bearer token is sent: the
    /// embedding server's for its own registry, else `STREAMFLOW_TOKEN`.
    pub fn new(url: &str) -> RegistryClient {
        let base = url.trim_end_matches('/').to_string();
        let token = match DEFAULT.get() {
            Some((own, token)) if own.trim_end_matches('/') == base => token.clone(),
            _ => std::env::var("STREAMFLOW_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        };
        RegistryClient {
            base,
            http: streamflow_tls::http_client(None)
                .ok()
                .and_then(|b| b.build().ok())
                .unwrap_or_default(),
            token,
            by_id: Arc::default(),
        }
    }

    /// The client of the registry a flow names (`registry:`), else of the
    /// default one ([`default_url`]).
    ///
    /// # Errors
    /// Neither is set.
    pub fn for_flow(registry: Option<&str>) -> Result<RegistryClient, String> {
        let url = registry
            .map(str::to_string)
            .or_else(default_url)
            .ok_or("a schema registry is needed: set `registry: URL` (or STREAMFLOW_REGISTRY)")?;
        Ok(RegistryClient::new(&url))
    }

    /// Version `version` (latest when `None`) of `subject`, asked while a
    /// flow is planned; it must be of `schema_type` when one is given.
    ///
    /// # Errors
    /// As [`version`](Self::version), or another type of schema.
    pub fn version_at_plan_time(
        &self,
        subject: &str,
        version: Option<u32>,
        schema_type: Option<&str>,
    ) -> Result<Fetched, String> {
        let (c, s) = (self.clone(), subject.to_string());
        let fetched =
            crate::server::at_plan_time(move || async move { c.version(&s, version).await })?;
        match schema_type {
            Some(t) if fetched.schema_type != t => Err(format!(
                "subject '{subject}' holds a {} schema, not {t}",
                fetched.schema_type
            )),
            _ => Ok(fetched),
        }
    }

    /// Fails, with the registry's reasons, when `schema` could not be
    /// registered under `subject`; asked while a flow is planned.
    ///
    /// # Errors
    /// Incompatible, or the registry unreachable.
    pub fn check_at_plan_time(
        &self,
        subject: &str,
        schema_type: &str,
        schema: &str,
    ) -> Result<(), String> {
        let (c, s, t, text) = (
            self.clone(),
            subject.to_string(),
            schema_type.to_string(),
            schema.to_string(),
        );
        let why = crate::server::at_plan_time(move || async move { c.check(&s, &t, &text).await })?;
        if why.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the rows' {schema_type} schema may not be registered under subject '{subject}': {}",
                why.join("; ")
            ))
        }
    }

    /// The registry's address.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Answer), String> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(TIMEOUT)
            .header(
                "Accept",
                "application/vnd.schemaregistry.v1+json, application/json",
            );
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach the schema registry at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| format!("reading the schema registry's answer: {e}"))?;
        let answer = serde_json::from_str(&text).unwrap_or(Answer {
            id: None,
            schema: None,
            schema_type: None,
            is_compatible: None,
            messages: Vec::new(),
            message: Some(text),
        });
        Ok((status, answer))
    }

    fn refused(&self, what: &str, status: u16, answer: &Answer) -> String {
        format!(
            "schema registry at {}: {what}: {} ({status})",
            self.base,
            answer.message.as_deref().unwrap_or("no message")
        )
    }

    /// The schema with id `id`; `None` when the registry has none.
    ///
    /// # Errors
    /// The registry cannot be reached or answers nonsense.
    pub async fn schema(&self, id: u32) -> Result<Option<Fetched>, String> {
        if let Some(f) = self
            .by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return Ok(Some(f.clone()));
        }
        let (status, answer) = self
            .call(reqwest::Method::GET, &format!("/schemas/ids/{id}"), None)
            .await?;
        if status == 404 {
            return Ok(None);
        }
        let Some(schema) = answer.schema.clone().filter(|_| status == 200) else {
            return Err(self.refused(&format!("schema {id}"), status, &answer));
        };
        let fetched = Fetched {
            id,
            schema_type: answer.schema_type.unwrap_or_else(|| "AVRO".into()),
            schema,
        };
        self.by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, fetched.clone());
        Ok(Some(fetched))
    }

    /// Version `version` (`None`: the latest) of `subject`.
    ///
    /// # Errors
    /// No such subject or version, or the registry cannot be reached.
    pub async fn version(&self, subject: &str, version: Option<u32>) -> Result<Fetched, String> {
        let which = version.map_or_else(|| "latest".to_string(), |v| v.to_string());
        let path = format!("/subjects/{}/versions/{which}", segment(subject));
        let (status, answer) = self.call(reqwest::Method::GET, &path, None).await?;
        match (status, answer.id, answer.schema.clone()) {
            (200, Some(id), Some(schema)) => Ok(Fetched {
                id,
                schema_type: answer.schema_type.unwrap_or_else(|| "AVRO".into()),
                schema,
            }),
            _ => Err(self.refused(
                &format!("subject '{subject}' version {which}"),
                status,
                &answer,
            )),
        }
    }

    /// Why `schema` could not be registered under `subject` (nothing: it could).
    ///
    /// # Errors
    /// The registry cannot be reached or refuses the schema itself.
    pub async fn check(
        &self,
        subject: &str,
        schema_type: &str,
        schema: &str,
    ) -> Result<Vec<String>, String> {
        let path = format!(
            "/compatibility/subjects/{}/versions?verbose=true",
            segment(subject)
        );
        let body = json!({"schema": schema, "schemaType": schema_type});
        let (status, answer) = self.call(reqwest::Method::POST, &path, Some(body)).await?;
        match (status, answer.is_compatible) {
            (200, Some(true)) => Ok(Vec::new()),
            (200, Some(false)) if answer.messages.is_empty() => Ok(vec!["incompatible".into()]),
            (200, Some(false)) => Ok(answer.messages),
            // No such subject yet: anything goes.
            (404, _) => Ok(Vec::new()),
            _ => Err(self.refused(&format!("checking subject '{subject}'"), status, &answer)),
        }
    }

    /// Registers `schema` under `subject` (or finds it there); its id.
    ///
    /// # Errors
    /// Incompatible or invalid, or the registry cannot be reached.
    pub async fn register(
        &self,
        subject: &str,
        schema_type: &str,
        schema: &str,
    ) -> Result<u32, String> {
        let path = format!("/subjects/{}/versions", segment(subject));
        let body = json!({"schema": schema, "schemaType": schema_type});
        let (status, answer) = self.call(reqwest::Method::POST, &path, Some(body)).await?;
        match (status, answer.id) {
            (200, Some(id)) => Ok(id),
            _ => Err(self.refused(&format!("registering under '{subject}'"), status, &answer)),
        }
    }
}

/// `s` as one URL path segment (percent-encoded).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
