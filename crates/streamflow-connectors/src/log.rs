//! Reaching StreamFlow's durable log (`streamflow-log`) from the `log`
//! source and sink: a local store directory, or a server's store over
//! WebSocket.

use std::path::PathBuf;
use std::sync::RwLock;

use serde::Deserialize;
use streamflow_core::{Error, Result};
use streamflow_log::LogClient;

/// Where a local log is kept when a flow names none and no server set one.
pub const DEFAULT_PATH: &str = ".streamflow/log";

/// The local store flows use by default (`serve` sets its own).
static DEFAULT: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Makes `path` the store of flows that name no `path` or `url` (set by
/// `serve` to its own store, which its `/streamz` serves too).
pub fn set_default_path(path: PathBuf) {
    if let Ok(mut d) = DEFAULT.write() {
        *d = Some(path);
    }
}

/// Which log (shared by the source and the sink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEndpoint {
    /// Local store directory (default `.streamflow/log`, or the server's
    /// store for flows run by `serve`). A local store belongs to one
    /// process at a time: flows in different processes share a log
    /// through a server (`url`).
    pub path: Option<PathBuf>,
    /// A `streamflow serve`'s log: `ws://host:port`.
    pub url: Option<String>,
    /// The server's store (default `default`).
    pub store: Option<String>,
    /// Environment variable holding the token (a JWT from `streamflow log
    /// token`, or the server's bearer token).
    pub token_env: Option<String>,
}

impl LogEndpoint {
    /// Checks the settings, before anything runs.
    pub(crate) fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.url.is_some() && self.path.is_some() {
            return Err((
                "path",
                "give `path` (a local store) or `url` (a server), not both".into(),
            ));
        }
        if self.url.is_none() && self.store.is_some() {
            return Err((
                "store",
                "`store` names a server's store: set `url` too".into(),
            ));
        }
        if let Some(url) = &self.url
            && !(url.starts_with("ws://") || url.starts_with("wss://"))
        {
            return Err(("url", format!("'{url}' is not a ws:// or wss:// url")));
        }
        Ok(())
    }

    /// `url (store)` or the path, for messages.
    pub(crate) fn describe(&self) -> String {
        match &self.url {
            Some(url) => format!("{url} store {}", self.store.as_deref().unwrap_or("default")),
            None => self.local_path().display().to_string(),
        }
    }

    fn local_path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| {
            DEFAULT
                .read()
                .ok()
                .and_then(|d| d.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
        })
    }

    /// The log.
    pub(crate) async fn connect(&self) -> Result<LogClient> {
        let fail =
            |e: streamflow_log::LogError| Error::Other(format!("log {}: {e}", self.describe()));
        match &self.url {
            Some(url) => {
                let token = match &self.token_env {
                    Some(var) => Some(std::env::var(var).map_err(|_| {
                        Error::Other(format!("environment variable {var} is not set"))
                    })?),
                    None => None,
                };
                let store = self.store.as_deref().unwrap_or("default");
                LogClient::connect(url, store, token).await.map_err(fail)
            }
            None => LogClient::open(&self.local_path()).map_err(fail),
        }
    }
}
