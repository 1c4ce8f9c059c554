//! The server side of the transport: the stores a server holds, and one
//! connection's streams run against them. Independent of the WebSocket
//! library: a connection is a channel of incoming frames and one of
//! outgoing frames.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::auth::Scope;
use crate::codec::{decode_records, encode_entry};
use crate::wire::{CANCEL, ERROR, EVENT, Frame, REPLY, REQUEST, Request, RequestHead};
use crate::{Log, LogError, store_error};

/// Failures to open a store before it is refused for [`COOL_DOWN`].
const FAILURES_TO_TRIP: u32 = 3;
/// How long a store that failed to open is refused.
const COOL_DOWN: Duration = Duration::from_secs(30);

/// The stores of a server, each a directory under `dir`, opened on first
/// use and closed when idle. Opening a store that keeps failing trips a
/// circuit breaker: after 3 failures it is refused for 30 s.
pub struct Stores {
    dir: PathBuf,
    node: String,
    slots: Mutex<HashMap<String, Slot>>,
}

#[derive(Default)]
struct Slot {
    log: Option<Arc<Log>>,
    last_used: Option<Instant>,
    failures: u32,
    refused_until: Option<Instant>,
}

/// Whether `name` can name a store (a directory of its own).
fn valid_store_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Stores {
    /// The stores under `dir`, writing entries as node `node`.
    pub fn new(dir: PathBuf, node: &str) -> Arc<Stores> {
        Arc::new(Stores {
            dir,
            node: node.to_string(),
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The directory of store `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn slots(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Slot>>, LogError> {
        self.slots
            .lock()
            .map_err(|_| LogError::Store("stores: poisoned".into()))
    }

    /// Store `name`, opened if it is not.
    ///
    /// # Errors
    /// An invalid name, [`LogError::Unavailable`] while its breaker is
    /// open, or the failure to open it.
    pub fn get(&self, name: &str) -> Result<Arc<Log>, LogError> {
        if !valid_store_name(name) {
            return Err(LogError::InvalidArgs(format!(
                "'{name}' is not a store name (letters, digits, '-', '_', '.')"
            )));
        }
        let mut slots = self.slots()?;
        let slot = slots.entry(name.to_string()).or_default();
        let now = Instant::now();
        slot.last_used = Some(now);
        if let Some(log) = &slot.log {
            return Ok(Arc::clone(log));
        }
        if let Some(until) = slot.refused_until {
            if until > now {
                return Err(LogError::Unavailable {
                    store: name.to_string(),
                    retry_in_ms: until.duration_since(now).as_millis() as u64,
                });
            }
            slot.refused_until = None;
        }
        match Log::shared(&self.dir.join(name), &self.node) {
            Ok(log) => {
                slot.failures = 0;
                slot.log = Some(Arc::clone(&log));
                Ok(log)
            }
            Err(e) => {
                slot.failures += 1;
                if slot.failures >= FAILURES_TO_TRIP {
                    slot.failures = 0;
                    slot.refused_until = Some(now + COOL_DOWN);
                    tracing::warn!(store = name, error = %e, "store failed to open {FAILURES_TO_TRIP} times: refused for {COOL_DOWN:?}");
                }
                Err(e)
            }
        }
    }

    /// Closes stores unused for `idle` that nobody else holds.
    pub fn evict_idle(&self, idle: Duration) {
        let Ok(mut slots) = self.slots() else { return };
        let now = Instant::now();
        for (name, slot) in slots.iter_mut() {
            let unused = slot.last_used.is_none_or(|t| now.duration_since(t) >= idle);
            if unused && slot.log.as_ref().is_some_and(|l| Arc::strong_count(l) == 1) {
                tracing::debug!(store = %name, "closing an idle store");
                slot.log = None;
            }
        }
    }

    /// Applies the retention of every open store.
    pub fn enforce_retention(&self) {
        let open: Vec<(String, Arc<Log>)> = match self.slots() {
            Ok(slots) => slots
                .iter()
                .filter_map(|(n, s)| s.log.clone().map(|l| (n.clone(), l)))
                .collect(),
            Err(_) => return,
        };
        for (name, log) in open {
            match log.enforce_retention() {
                Ok(0) => {}
                Ok(n) => tracing::debug!(store = %name, removed = n, "retention applied"),
                Err(e) => tracing::warn!(store = %name, error = %e, "applying retention failed"),
            }
        }
    }
}

/// Runs one connection: each request frame of `incoming` opens a stream,
/// answered on `outgoing`; streams run concurrently. Ends when `incoming`
/// ends (every stream of the connection is then dropped).
pub async fn serve_connection(
    stores: Arc<Stores>,
    scope: Scope,
    mut incoming: mpsc::Receiver<Vec<u8>>,
    outgoing: mpsc::Sender<Vec<u8>>,
) {
    let mut streams = JoinSet::new();
    let mut running: HashMap<u32, tokio::task::AbortHandle> = HashMap::new();
    while let Some(bytes) = incoming.recv().await {
        while streams.try_join_next().is_some() {}
        let frame = match Frame::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "dropping a connection that sent a malformed frame");
                break;
            }
        };
        match frame.kind {
            REQUEST => {
                let (stores, scope, out) = (Arc::clone(&stores), scope.clone(), outgoing.clone());
                let id = frame.stream;
                let handle = streams.spawn(async move {
                    let kind_and_reply = run_stream(&stores, &scope, frame, &out).await;
                    let reply = match kind_and_reply {
                        Ok(Some(reply)) => reply,
                        Ok(None) => return,
                        Err(e) => Frame::new(id, ERROR, &e, Vec::new()).unwrap_or(Frame {
                            stream: id,
                            kind: ERROR,
                            head: Vec::new(),
                            body: Vec::new(),
                        }),
                    };
                    let _ = out.send(reply.encode()).await;
                });
                running.retain(|_, h| !h.is_finished());
                running.insert(id, handle);
            }
            CANCEL => {
                if let Some(h) = running.remove(&frame.stream) {
                    h.abort();
                }
            }
            other => tracing::debug!(kind = other, "ignoring a frame of unknown kind"),
        }
    }
    streams.abort_all();
}

/// One stream: the reply frame, or `None` when the stream ended otherwise.
async fn run_stream(
    stores: &Stores,
    scope: &Scope,
    frame: Frame,
    out: &mpsc::Sender<Vec<u8>>,
) -> Result<Option<Frame>, LogError> {
    let id = frame.stream;
    let head: RequestHead = frame.head()?;
    if !scope.allows(&head.store) {
        return Err(LogError::Unauthorized(format!(
            "the token does not cover store '{}'",
            head.store
        )));
    }
    let log = stores.get(&head.store)?;
    let reply = move |value: &dyn erased::Json, body: Vec<u8>| -> Result<Option<Frame>, LogError> {
        Ok(Some(Frame {
            stream: id,
            kind: REPLY,
            head: value.to_json()?,
            body,
        }))
    };
    if let Request::Subscribe { space, segment } = &head.request {
        let mut subscription = log.subscribe(space, segment)?;
        while let Some(status) = subscription.next().await {
            let event = Frame::new(id, EVENT, &status, Vec::new())?;
            if out.send(event.encode()).await.is_err() {
                break;
            }
        }
        return Ok(None);
    }
    let body = frame.body;
    let request = head.request;
    let result = tokio::task::spawn_blocking(move || -> Result<Option<Frame>, LogError> {
        match request {
            Request::Produce { space, segment } => {
                let records = decode_records(&body)?;
                reply(&log.produce(&space, &segment, &records)?, Vec::new())
            }
            Request::Publish {
                space,
                segment,
                metadata,
            } => reply(&log.publish(&space, &segment, body, metadata)?, Vec::new()),
            Request::ConsumeSegment {
                space,
                segment,
                range,
            } => {
                let mut body = Vec::new();
                log.visit_segment(&space, &segment, range, |sp, sg, seq, v| {
                    encode_entry(&mut body, sp, sg, seq, v);
                    Ok(())
                })?;
                reply(&(), body)
            }
            Request::ConsumeSpace { space, range } => {
                let mut body = Vec::new();
                log.visit_space(&space, range, |sp, sg, seq, v| {
                    encode_entry(&mut body, sp, sg, seq, v);
                    Ok(())
                })?;
                reply(&(), body)
            }
            Request::Consume { offsets, limit } => {
                let offsets: Vec<(&str, u64)> =
                    offsets.iter().map(|(s, o)| (s.as_str(), *o)).collect();
                let mut body = Vec::new();
                log.visit(&offsets, limit, |sp, sg, seq, v| {
                    encode_entry(&mut body, sp, sg, seq, v);
                    Ok(())
                })?;
                reply(&(), body)
            }
            Request::Peek { space, segment } => reply(&log.peek(&space, &segment)?, Vec::new()),
            Request::LastOffset { space } => reply(&log.last_offset(&space)?, Vec::new()),
            Request::Spaces => reply(&log.spaces()?, Vec::new()),
            Request::Segments { space } => reply(&log.segments(&space)?, Vec::new()),
            Request::DeleteSegment { space, segment } => {
                log.delete_segment(&space, &segment)?;
                reply(&(), Vec::new())
            }
            Request::AcquireLease {
                key,
                holder,
                ttl_ms,
            } => {
                log.acquire_lease(&key, &holder, Duration::from_millis(ttl_ms))?;
                reply(&(), Vec::new())
            }
            Request::ReleaseLease { key, holder } => {
                log.release_lease(&key, &holder)?;
                reply(&(), Vec::new())
            }
            Request::SetRetention {
                space,
                max_age_ms,
                max_bytes,
            } => {
                let retention = crate::Retention {
                    max_age: max_age_ms.map(Duration::from_millis),
                    max_bytes,
                };
                log.set_retention(&space, retention)?;
                reply(&(), Vec::new())
            }
            Request::Subscribe { .. } => Ok(None),
        }
    })
    .await
    .map_err(store_error)?;
    result
}

/// Reply heads of different types through one closure.
mod erased {
    use crate::LogError;

    pub(super) trait Json {
        fn to_json(&self) -> Result<Vec<u8>, LogError>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<Vec<u8>, LogError> {
            serde_json::to_vec(self).map_err(|e| LogError::Transport(e.to_string()))
        }
    }
}
