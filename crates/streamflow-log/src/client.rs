//! One way to reach a log, whatever the transport: a store opened in this
//! process, or a store of a `streamflow serve` over WebSocket. Pipelines,
//! the CLI and the tests use this, so each works over both.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    Entry, Log, LogError, Record, Retention, SegmentRange, SegmentStatus, SpaceRange, Subscription,
};

/// A log store, local or remote. Cheap to clone.
#[derive(Clone)]
pub enum LogClient {
    /// A store opened in this process.
    Local(Arc<Log>),
    /// A store of a server, over WebSocket.
    Remote(crate::remote::RemoteLog),
}

impl std::fmt::Debug for LogClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogClient::Local(_) => f.write_str("LogClient::Local"),
            LogClient::Remote(r) => write!(f, "LogClient::Remote({})", r.describe()),
        }
    }
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    log: &Arc<Log>,
    f: impl FnOnce(&Log) -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    let log = Arc::clone(log);
    tokio::task::spawn_blocking(move || f(&log))
        .await
        .map_err(|e| LogError::Store(format!("a store call panicked: {e}")))?
}

impl LogClient {
    /// The store in directory `dir`, opened in this process (shared with
    /// its other users in the process; another process cannot open it
    /// meanwhile).
    ///
    /// # Errors
    /// As [`Log::open`].
    pub fn open(dir: &Path) -> Result<LogClient, LogError> {
        Ok(LogClient::Local(Log::shared(dir, "local")?))
    }

    /// Store `store` of the server at `url` (`ws://host:port`, `/streamz`
    /// implied), authenticated by the JWT `token`.
    ///
    /// # Errors
    /// The server cannot be reached or refuses the token.
    pub async fn connect(
        url: &str,
        store: &str,
        token: Option<String>,
    ) -> Result<LogClient, LogError> {
        Ok(LogClient::Remote(
            crate::remote::RemoteLog::connect(url, store, token).await?,
        ))
    }

    /// See [`Log::produce`].
    ///
    /// # Errors
    /// As [`Log::produce`], or the transport.
    pub async fn produce(
        &self,
        space: &str,
        segment: &str,
        records: Vec<Record>,
    ) -> Result<Vec<SegmentStatus>, LogError> {
        match self {
            LogClient::Local(log) => {
                let (space, segment) = (space.to_string(), segment.to_string());
                blocking(log, move |l| l.produce(&space, &segment, &records)).await
            }
            LogClient::Remote(r) => r.produce(space, segment, records).await,
        }
    }

    /// See [`Log::publish`].
    ///
    /// # Errors
    /// As [`Log::publish`], or the transport.
    pub async fn publish(
        &self,
        space: &str,
        segment: &str,
        payload: Vec<u8>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<SegmentStatus, LogError> {
        match self {
            LogClient::Local(log) => {
                let (space, segment) = (space.to_string(), segment.to_string());
                blocking(log, move |l| l.publish(&space, &segment, payload, metadata)).await
            }
            LogClient::Remote(r) => r.publish(space, segment, payload, metadata).await,
        }
    }

    /// See [`Log::consume_segment`].
    ///
    /// # Errors
    /// The store or the transport.
    pub async fn consume_segment(
        &self,
        space: &str,
        segment: &str,
        range: SegmentRange,
    ) -> Result<Vec<Entry>, LogError> {
        match self {
            LogClient::Local(log) => {
                let (space, segment) = (space.to_string(), segment.to_string());
                blocking(log, move |l| l.consume_segment(&space, &segment, range)).await
            }
            LogClient::Remote(r) => r.consume_segment(space, segment, range).await,
        }
    }

    /// See [`Log::consume_space`].
    ///
    /// # Errors
    /// The store or the transport.
    pub async fn consume_space(
        &self,
        space: &str,
        range: SpaceRange,
    ) -> Result<Vec<Entry>, LogError> {
        match self {
            LogClient::Local(log) => {
                let space = space.to_string();
                blocking(log, move |l| l.consume_space(&space, range)).await
            }
            LogClient::Remote(r) => r.consume_space(space, range).await,
        }
    }

    /// See [`Log::consume`].
    ///
    /// # Errors
    /// The store or the transport.
    pub async fn consume(
        &self,
        offsets: Vec<(String, u64)>,
        limit: usize,
    ) -> Result<Vec<Entry>, LogError> {
        match self {
            LogClient::Local(log) => {
                blocking(log, move |l| {
                    let offsets: Vec<(&str, u64)> =
                        offsets.iter().map(|(s, o)| (s.as_str(), *o)).collect();
                    l.consume(&offsets, limit)
                })
                .await
            }
            LogClient::Remote(r) => r.consume(offsets, limit).await,
        }
    }

    /// See [`Log::peek`].
    ///
    /// # Errors
    /// The store or the transport.
    pub async fn peek(&self, space: &str, segment: &str) -> Result<SegmentStatus, LogError> {
        match self {
            LogClient::Local(log) => {
                let (space, segment) = (space.to_string(), segment.to_string());
                blocking(log, move |l| l.peek(&space, &segment)).await
            }
            LogClient::Remote(r) => r.peek(space, segment).await,
        }
    }

    /// See [`Log::last_offset`].
    ///
    /// # Errors
    /// The store or the transport.
    pub async fn last_offset(&self, space: &str) -> Result<u64, LogError> {
        match self {
            LogClient::Local(log) => {
                let space = space.to_string();
                blocking(log, move |l| l.last_offset(&space)).await
            }
            LogClient::Remote(r) => r.last_offset(space).await,
        }
    }

    /// See [`Log::spaces`].
    ///
    /// # Errors
    /// The store or the transport.
    pub async fn spaces(&self) -> Result<Vec<String>, LogError> {
        match self {
            LogClient::Local(log) => blocking(log, Log::spaces).await,
            LogClient::Remote(r) => r.spaces().await,
        }
    }

    /// See [`Log::segments`].
    ///
    /// # Errors
    /// The store or the transport.
    pub async fn segments(&self, space: &str) -> Result<Vec<String>, LogError> {
        match self {
            LogClient::Local(log) => {
                let space = space.to_string();
                blocking(log, move |l| l.segments(&space)).await
            }
            LogClient::Remote(r) => r.segments(space).await,
        }
    }

    /// See [`Log::delete_segment`].
    ///
    /// # Errors
    /// The store or the transport.
    pub async fn delete_segment(&self, space: &str, segment: &str) -> Result<(), LogError> {
        match self {
            LogClient::Local(log) => {
                let (space, segment) = (space.to_string(), segment.to_string());
                blocking(log, move |l| l.delete_segment(&space, &segment)).await
            }
            LogClient::Remote(r) => r.delete_segment(space, segment).await,
        }
    }

    /// See [`Log::set_retention`].
    ///
    /// # Errors
    /// The store or the transport.
    pub async fn set_retention(&self, space: &str, retention: Retention) -> Result<(), LogError> {
        match self {
            LogClient::Local(log) => {
                let space = space.to_string();
                blocking(log, move |l| l.set_retention(&space, retention)).await
            }
            LogClient::Remote(r) => r.set_retention(space, retention).await,
        }
    }

    /// See [`Log::subscribe`]; a remote subscription is renewed after a
    /// reconnect.
    ///
    /// # Errors
    /// The store or the transport.
    pub async fn subscribe(&self, space: &str, segment: &str) -> Result<Subscription, LogError> {
        match self {
            LogClient::Local(log) => log.subscribe(space, segment),
            LogClient::Remote(r) => r.subscribe(space, segment).await,
        }
    }

    /// See [`Log::acquire_lease`].
    ///
    /// # Errors
    /// [`LogError::LeaseHeld`], the store or the transport.
    pub async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<(), LogError> {
        match self {
            LogClient::Local(log) => {
                let (key, holder) = (key.to_string(), holder.to_string());
                blocking(log, move |l| l.acquire_lease(&key, &holder, ttl)).await
            }
            LogClient::Remote(r) => r.acquire_lease(key, holder, ttl).await,
        }
    }

    /// See [`Log::release_lease`].
    ///
    /// # Errors
    /// The store or the transport.
    pub async fn release_lease(&self, key: &str, holder: &str) -> Result<(), LogError> {
        match self {
            LogClient::Local(log) => {
                let (key, holder) = (key.to_string(), holder.to_string());
                blocking(log, move |l| l.release_lease(&key, &holder)).await
            }
            LogClient::Remote(r) => r.release_lease(key, holder).await,
        }
    }
}
