//! `/streamz`: the durable log's WebSocket transport. A connection is
//! authorised at the upgrade — a JWT (HS256, the server's log secret)
//! whose `stores` claim scopes it, checked again per operation; without a
//! log secret, the server's bearer token (or none on loopback) covers every
//! store.

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use streamflow_log::auth::Scope;
use streamflow_log::node::{Stores, serve_connection};
use tokio::sync::mpsc;

/// What the transport needs.
#[derive(Clone)]
pub struct Streamz {
    /// The stores served.
    pub stores: Arc<Stores>,
    /// Secret of the JWTs (HS256), if tokens are scoped.
    pub secret: Option<Arc<[u8]>>,
    /// The server's bearer token, when there is no secret.
    pub token: Option<Arc<str>>,
}

/// The `/streamz` route.
pub fn router(streamz: Streamz) -> Router {
    Router::new()
        .route("/streamz", get(upgrade))
        .with_state(streamz)
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The scope a request's credentials give, or the refusal.
fn authorize(
    streamz: &Streamz,
    headers: &HeaderMap,
    query: Option<String>,
) -> Result<Scope, Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .or(query);
    let refuse = |m: String| (StatusCode::UNAUTHORIZED, m).into_response();
    if let Some(secret) = &streamz.secret {
        let token = presented.ok_or_else(|| refuse("a log token (JWT) is required".into()))?;
        return streamflow_log::auth::verify(secret, &token).map_err(|e| refuse(e.to_string()));
    }
    if let Some(expected) = &streamz.token {
        use subtle::ConstantTimeEq;
        let given = presented.unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(refuse("a valid bearer token is required".into()));
        }
    }
    Ok(Scope::All)
}

async fn upgrade(
    State(streamz): State<Streamz>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let scope = match authorize(&streamz, &headers, query.token) {
        Ok(scope) => scope,
        Err(refusal) => return refusal,
    };
    let stores = Arc::clone(&streamz.stores);
    ws.max_message_size(256 << 20)
        .on_upgrade(move |socket| connection(socket, stores, scope))
}

/// Moves frames between the socket and the connection's streams.
async fn connection(mut socket: WebSocket, stores: Arc<Stores>, scope: Scope) {
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(64);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
    let streams = tokio::spawn(serve_connection(stores, scope, in_rx, out_tx));
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Binary(bytes))) => {
                    if in_tx.send(bytes.to_vec()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            outgoing = out_rx.recv() => match outgoing {
                Some(frame) => {
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    drop(in_tx);
    streams.abort();
}
