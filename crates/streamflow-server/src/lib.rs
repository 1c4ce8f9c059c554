//! StreamFlow's control plane, `streamflow serve`: one server process that
//! keeps versioned flows in an embedded store ([`store`]), runs them
//! ([`supervisor`]), answers the flow API over HTTP ([`api`]) and serves
//! the schema registry (`streamflow-registry`) from the same store, and
//! the durable log (`streamflow-log`) over WebSocket ([`streamz`]).

pub mod api;
pub mod events;
pub mod metrics;
pub mod store;
pub mod streamz;
pub mod supervisor;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// How the server is started.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where flows, versions and checkpoints are kept.
    pub data: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token every endpoint but `/healthz` requires.
    pub token: Option<String>,
    /// Allow a non-loopback address without a token.
    pub insecure: bool,
    /// Secret (HS256) of the JWTs scoping access to the log's stores; without
    /// one, the bearer token covers every store.
    pub log_secret: Option<String>,
    /// Where lifecycle events are kept (install its
    /// [`layer`](events::EventLog::layer) to have events raised inside
    /// flows, such as checkpoints, recorded too).
    pub events: events::EventLog,
    /// Run the flows over this cluster's workers (the server coordinates
    /// them) instead of in this process.
    pub cluster: Option<streamflow_cluster::Cluster>,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Refused to expose an unauthenticated API.
    #[error(
        "refusing to listen on {0} without --token (only loopback addresses are served without one; --insecure overrides)"
    )]
    Exposed(SocketAddr),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The schema registry's tables could not be read.
    #[error("schema registry: {0}")]
    Registry(#[from] streamflow_registry::RegistryError),
    /// The address could not be bound, or serving failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the server until SIGINT/SIGTERM: opens the store, restarts the
/// flows that were running, serves the API. On the signal the flows are
/// stopped at a final checkpoint and stay marked to run, so the next start
/// of the server resumes them; `ready` is called with the bound address.
///
/// # Errors
/// See [`ServeError`].
pub async fn serve(
    options: ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    if options.token.is_none() && !options.listen.ip().is_loopback() && !options.insecure {
        return Err(ServeError::Exposed(options.listen));
    }
    let store = Arc::new(store::FlowStore::open(&options.data)?);
    let registry = Arc::new(streamflow_registry::Registry::open(store.database())?);
    let supervisor = supervisor::Supervisor::new(
        options.data.clone(),
        Arc::clone(&store),
        options.events,
        options.cluster,
    );
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: options.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: options.listen,
        source,
    })?;
    // Flows that name no schema registry use this server's.
    streamflow_connectors::schema_registry::set_default(
        format!("http://{addr}"),
        options.token.clone(),
    );
    // The log's stores; flows that name no log use store `default`.
    let stores = streamflow_log::node::Stores::new(options.data.join("log"), &addr.to_string());
    streamflow_connectors::log::set_default_path(stores.path("default"));
    tokio::spawn(maintain(Arc::clone(&stores)));
    supervisor.restore().await?;
    let token: Option<Arc<str>> = options.token.map(Arc::from);
    let app = api::router(api::Api {
        store: Arc::clone(&store),
        supervisor: Arc::clone(&supervisor),
        token: token.clone(),
        registry,
    })
    .merge(streamz::router(streamz::Streamz {
        stores,
        secret: options.log_secret.map(|s| Arc::from(s.into_bytes())),
        token,
    }));
    tracing::info!(%addr, data = %options.data.display(), "serving");
    ready(addr);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    for record in store.list()? {
        if supervisor.is_live(&record.name) {
            let _ = supervisor.stop(&record.name, true).await;
        }
    }
    Ok(())
}

/// Stores unused this long are closed.
const STORE_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// Every minute: retention applied, idle stores closed.
async fn maintain(stores: Arc<streamflow_log::node::Stores>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tick.tick().await;
        let s = Arc::clone(&stores);
        let _ = tokio::task::spawn_blocking(move || {
            s.enforce_retention();
            s.evict_idle(STORE_IDLE);
        })
        .await;
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down: stopping the flows at a checkpoint");
}

/// A unified line diff of two versions' declarations (pretty JSON).
pub fn diff(from: &serde_json::Value, to: &serde_json::Value, a: u64, b: u64) -> String {
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    let (old, new) = (pretty(from), pretty(to));
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .header(&format!("version {a}"), &format!("version {b}"))
        .to_string()
}
