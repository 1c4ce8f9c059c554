//! The client of a server's log over WebSocket (`/streamz`): one
//! connection per client, many operations in flight over it, each its own
//! stream. A lost connection is re-established with backoff; operations in
//! flight then fail with [`LogError::Transport`] (a produce with explicit
//! sequences can be retried safely: a repeat is a sequence gap), and
//! subscriptions are renewed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::codec::{decode_entries, encode_records};
use crate::wire::{CANCEL, ERROR, EVENT, Frame, REPLY, REQUEST, Request, RequestHead};
use crate::{Entry, LogError, Record, SegmentRange, SegmentStatus, SpaceRange, Subscription};

/// How long an operation waits for a lost connection to come back.
const RECONNECT_WAIT: Duration = Duration::from_secs(10);
/// Frames queued for sending, per connection.
const OUTGOING: usize = 256;

/// A store of a server, reached over WebSocket. Cheap to clone; the
/// connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct RemoteLog {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    store: String,
    token: Option<String>,
    next_stream: AtomicU32,
    /// Calls waiting for their reply.
    calls: Mutex<HashMap<u32, oneshot::Sender<Result<Frame, LogError>>>>,
    /// Live subscriptions: their request, to renew, and where statuses go.
    subscriptions: Mutex<HashMap<u32, (Vec<u8>, mpsc::Sender<SegmentStatus>)>>,
    /// The current connection's outgoing frames; `None` while reconnecting.
    sender: watch::Sender<Option<mpsc::Sender<Vec<u8>>>>,
    /// Ends the connection task.
    closed: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.closed.send(true);
    }
}

/// Cancels a remote subscription when dropped.
pub(crate) struct CancelOnDrop {
    inner: std::sync::Weak<Inner>,
    stream: u32,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            if let Ok(mut subs) = inner.subscriptions.lock() {
                subs.remove(&self.stream);
            }
            let frame = Frame {
                stream: self.stream,
                kind: CANCEL,
                head: b"null".to_vec(),
                body: Vec::new(),
            };
            if let Some(sender) = inner.sender.borrow().as_ref() {
                let _ = sender.try_send(frame.encode());
            }
        }
    }
}

fn transport(e: impl std::fmt::Display) -> LogError {
    LogError::Transport(e.to_string())
}

impl RemoteLog {
    /// Connects to store `store` of the server at `url` (`ws://host:port`;
    /// `/streamz` is added when the url has no path).
    ///
    /// # Errors
    /// The first connection fails, or the server refuses the token.
    pub async fn connect(
        url: &str,
        store: &str,
        token: Option<String>,
    ) -> Result<RemoteLog, LogError> {
        let url = endpoint(url);
        let (sender, _) = watch::channel(None);
        let (closed, closed_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            url,
            store: store.to_string(),
            token,
            next_stream: AtomicU32::new(1),
            calls: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            sender,
            closed,
        });
        // The first connection is made here, so a bad address or token fails now.
        let socket = open(&inner).await?;
        tokio::spawn(run(Arc::downgrade(&inner), socket, closed_rx));
        Ok(RemoteLog { inner })
    }

    /// `url (store)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} (store {})", self.inner.url, self.inner.store)
    }

    async fn sender(&self) -> Result<mpsc::Sender<Vec<u8>>, LogError> {
        let mut rx = self.inner.sender.subscribe();
        let ready = tokio::time::timeout(RECONNECT_WAIT, rx.wait_for(Option::is_some))
            .await
            .map_err(|_| {
                LogError::Transport(format!(
                    "{} unreachable for {RECONNECT_WAIT:?}",
                    self.inner.url
                ))
            })?
            .map_err(transport)?;
        ready
            .clone()
            .ok_or_else(|| LogError::Transport("not connected".into()))
    }

    fn request(&self, stream: u32, request: Request, body: Vec<u8>) -> Result<Vec<u8>, LogError> {
        let head = RequestHead {
            store: self.inner.store.clone(),
            request,
        };
        Ok(Frame::new(stream, REQUEST, &head, body)?.encode())
    }

    /// Sends `request` and waits for its reply.
    async fn call(&self, request: Request, body: Vec<u8>) -> Result<Frame, LogError> {
        let stream = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let frame = self.request(stream, request, body)?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .calls
            .lock()
            .map_err(transport)?
            .insert(stream, tx);
        let sent = match self.sender().await {
            Ok(sender) => sender
                .send(frame)
                .await
                .map_err(|_| transport("connection lost")),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            self.inner.calls.lock().map_err(transport)?.remove(&stream);
            return Err(e);
        }
        let reply = rx
            .await
            .map_err(|_| transport("connection lost before the reply"))??;
        if reply.kind == ERROR {
            return Err(reply.head()?);
        }
        Ok(reply)
    }

    /// See [`crate::Log::produce`].
    pub(crate) async fn produce(
        &self,
        space: &str,
        segment: &str,
        records: Vec<Record>,
    ) -> Result<Vec<SegmentStatus>, LogError> {
        let mut body = Vec::new();
        encode_records(&mut body, &records)?;
        let request = Request::Produce {
            space: space.into(),
            segment: segment.into(),
        };
        self.call(request, body).await?.head()
    }

    pub(crate) async fn publish(
        &self,
        space: &str,
        segment: &str,
        payload: Vec<u8>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<SegmentStatus, LogError> {
        let request = Request::Publish {
            space: space.into(),
            segment: segment.into(),
            metadata,
        };
        self.call(request, payload).await?.head()
    }

    pub(crate) async fn consume_segment(
        &self,
        space: &str,
        segment: &str,
        range: SegmentRange,
    ) -> Result<Vec<Entry>, LogError> {
        let request = Request::ConsumeSegment {
            space: space.into(),
            segment: segment.into(),
            range,
        };
        decode_entries(&self.call(request, Vec::new()).await?.body)
    }

    pub(crate) async fn consume_space(
        &self,
        space: &str,
        range: SpaceRange,
    ) -> Result<Vec<Entry>, LogError> {
        let request = Request::ConsumeSpace {
            space: space.into(),
            range,
        };
        decode_entries(&self.call(request, Vec::new()).await?.body)
    }

    pub(crate) async fn consume(
        &self,
        offsets: Vec<(String, u64)>,
        limit: usize,
    ) -> Result<Vec<Entry>, LogError> {
        let request = Request::Consume { offsets, limit };
        decode_entries(&self.call(request, Vec::new()).await?.body)
    }

    pub(crate) async fn peek(&self, space: &str, segment: &str) -> Result<SegmentStatus, LogError> {
        let request = Request::Peek {
            space: space.into(),
            segment: segment.into(),
        };
        self.call(request, Vec::new()).await?.head()
    }

    pub(crate) async fn last_offset(&self, space: &str) -> Result<u64, LogError> {
        let request = Request::LastOffset {
            space: space.into(),
        };
        self.call(request, Vec::new()).await?.head()
    }

    pub(crate) async fn spaces(&self) -> Result<Vec<String>, LogError> {
        self.call(Request::Spaces, Vec::new()).await?.head()
    }

    pub(crate) async fn segments(&self, space: &str) -> Result<Vec<String>, LogError> {
        let request = Request::Segments {
            space: space.into(),
        };
        self.call(request, Vec::new()).await?.head()
    }

    pub(crate) async fn delete_segment(&self, space: &str, segment: &str) -> Result<(), LogError> {
        let request = Request::DeleteSegment {
            space: space.into(),
            segment: segment.into(),
        };
        self.call(request, Vec::new()).await.map(|_| ())
    }

    pub(crate) async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<(), LogError> {
        let request = Request::AcquireLease {
            key: key.into(),
            holder: holder.into(),
            ttl_ms: ttl.as_millis() as u64,
        };
        self.call(request, Vec::new()).await.map(|_| ())
    }

    pub(crate) async fn release_lease(&self, key: &str, holder: &str) -> Result<(), LogError> {
        let request = Request::ReleaseLease {
            key: key.into(),
            holder: holder.into(),
        };
        self.call(request, Vec::new()).await.map(|_| ())
    }

    pub(crate) async fn set_retention(
        &self,
        space: &str,
        retention: crate::Retention,
    ) -> Result<(), LogError> {
        let request = Request::SetRetention {
            space: space.into(),
            max_age_ms: retention.max_age.map(|d| d.as_millis() as u64),
            max_bytes: retention.max_bytes,
        };
        self.call(request, Vec::new()).await.map(|_| ())
    }

    pub(crate) async fn subscribe(
        &self,
        space: &str,
        segment: &str,
    ) -> Result<Subscription, LogError> {
        let stream = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let request = Request::Subscribe {
            space: space.into(),
            segment: segment.into(),
        };
        let frame = self.request(stream, request, Vec::new())?;
        let (tx, rx) = mpsc::channel(1024);
        self.inner
            .subscriptions
            .lock()
            .map_err(transport)?
            .insert(stream, (frame.clone(), tx));
        let cancel = CancelOnDrop {
            inner: Arc::downgrade(&self.inner),
            stream,
        };
        self.sender()
            .await?
            .send(frame)
            .await
            .map_err(|_| transport("connection lost"))?;
        Ok(Subscription::remote(rx, cancel))
    }
}

/// `url` with `/streamz` when it names no path.
fn endpoint(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    if rest.contains('/') {
        url.to_string()
    } else {
        format!("{url}/streamz")
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection attempt.
async fn open(inner: &Inner) -> Result<Socket, LogError> {
    let mut request = inner
        .url
        .as_str()
        .into_client_request()
        .map_err(transport)?;
    if let Some(token) = &inner.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| LogError::Unauthorized("the token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response))
            if response.status() == 401 || response.status() == 403 =>
        {
            Err(LogError::Unauthorized(format!(
                "{} refused the token ({})",
                inner.url,
                response.status()
            )))
        }
        Err(e) => Err(LogError::Transport(format!(
            "connecting to {}: {e}",
            inner.url
        ))),
    }
}

/// Runs connections until the client is dropped: frames out from the
/// queue, frames in to their calls and subscriptions; on a loss, fails the
/// calls in flight, reconnects with backoff and renews subscriptions.
async fn run(inner: std::sync::Weak<Inner>, first: Socket, mut closed: watch::Receiver<bool>) {
    let mut socket = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let ws = match socket.take() {
            Some(s) => s,
            None => match open(&strong).await {
                Ok(s) => {
                    backoff = Duration::from_millis(100);
                    s
                }
                Err(e) => {
                    tracing::debug!(error = %e, "log connection: reconnect failed");
                    drop(strong);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = closed.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let (mut write, mut read) = ws.split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(OUTGOING);
        // Renew subscriptions before anything else is sent.
        let renew: Vec<Vec<u8>> = strong
            .subscriptions
            .lock()
            .map(|s| s.values().map(|(frame, _)| frame.clone()).collect())
            .unwrap_or_default();
        for frame in renew {
            let _ = write.send(Message::Binary(frame.into())).await;
        }
        strong.sender.send_replace(Some(tx));
        drop(strong);
        let lost = loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(frame) => {
                        if let Err(e) = write.send(Message::Binary(frame.into())).await {
                            break e.to_string();
                        }
                    }
                    None => break "closed".to_string(),
                },
                incoming = read.next() => match incoming {
                    Some(Ok(Message::Binary(bytes))) => {
                        let Some(strong) = inner.upgrade() else { return };
                        deliver(&strong, bytes.to_vec()).await;
                    }
                    Some(Ok(Message::Close(_))) | None => break "closed by the server".to_string(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e.to_string(),
                },
                _ = closed.changed() => {
                    let _ = write.send(Message::Close(None)).await;
                    return;
                }
            }
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        tracing::warn!(url = %strong.url, reason = %lost, "log connection lost; reconnecting");
        strong.sender.send_replace(None);
        // Calls in flight fail; their callers decide whether to retry.
        if let Ok(mut calls) = strong.calls.lock() {
            calls.clear();
        }
    }
}

/// Hands an incoming frame to its call or subscription.
async fn deliver(inner: &Inner, bytes: Vec<u8>) {
    let frame = match Frame::decode(bytes) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "log connection: ignoring a malformed frame");
            return;
        }
    };
    match frame.kind {
        EVENT => {
            let target = inner
                .subscriptions
                .lock()
                .ok()
                .and_then(|s| s.get(&frame.stream).map(|(_, tx)| tx.clone()));
            if let (Some(tx), Ok(status)) = (target, frame.head::<SegmentStatus>()) {
                // A full queue drops a status: the next one holds it.
                let _ = tx.try_send(status);
            }
        }
        REPLY | ERROR => {
            let call = inner
                .calls
                .lock()
                .ok()
                .and_then(|mut c| c.remove(&frame.stream));
            match call {
                Some(tx) => {
                    let _ = tx.send(Ok(frame));
                }
                None if frame.kind == ERROR => {
                    // A subscription the server refused.
                    let sub = inner
                        .subscriptions
                        .lock()
                        .ok()
                        .and_then(|mut s| s.remove(&frame.stream));
                    if sub.is_some() {
                        let e: Result<LogError, _> = frame.head();
                        tracing::warn!(error = ?e, "log subscription refused");
                    }
                }
                None => {}
            }
        }
        _ => {}
    }
}
