//! Scale-out on NATS JetStream (DESIGN.md, "Scale-out"): the workers of a
//! cluster, and the leases that make one process the holder of a role —
//! a worker of its name, the coordinator of a flow.
//!
//! Both are [leases](lease) in JetStream key-value buckets whose entries
//! expire after the cluster's `ttl`: a key is created only if absent and
//! renewed every `ttl / 3` by compare-and-swap on its revision. The revision
//! at which a lease was won is its **epoch**; epochs only grow, so a holder
//! that was paused past the `ttl` (a stopped process, a partition) finds
//! its next renewal refused and must stop acting — it is fenced, and
//! whatever it tagged with its old epoch can be refused. A worker is a
//! lease on its name carrying a [`Member`] description; the membership of
//! the cluster is the set of unexpired worker leases. Several clusters share
//! one server under different names (buckets `streamflow-<name>-…`).
//!
//! A flow's coordinator places its operator instances on the workers
//! ([`Assignment`], tagged with its lease epoch) and publishes the
//! assignment; one made at an older epoch than the published one is
//! refused. The instances on different workers find each other through
//! NATS ([`NatsTransport`]) and talk directly over TCP (a worker's
//! [`DirectExchange`]) or, where workers cannot reach each other, through
//! the NATS server; the flow's checkpoints are coordinated by the process
//! coordinating the run, over NATS.
//! A checkpointed flow whose worker is lost restarts from its last
//! complete checkpoint on the workers left; one whose coordinator is lost
//! is taken over by a worker.

mod assignment;
mod checkpoints;
pub mod exchange;
mod job;
mod lease;
mod membership;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};

pub use assignment::{Assignment, NodeSpec, Task};
pub use exchange::{DirectExchange, NatsTransport};
pub use job::{Outcome, Report, RunState, StageCount};
pub use lease::{Acquired, HeldLease, Lease};
pub use membership::{Member, Membership};

/// What can go wrong talking to a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The NATS server cannot be reached.
    #[error("cannot reach the cluster's NATS server at {url}: {reason}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
    /// A JetStream request failed.
    #[error("cluster '{cluster}': {what}: {reason}")]
    JetStream {
        /// The cluster's name.
        cluster: String,
        /// What was being done.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A name or setting that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The lease was taken over by another holder (this one was paused or
    /// cut off for longer than the ttl): the holder must stop acting.
    #[error("lost the lease '{key}' (epoch {epoch}): {reason}")]
    LeaseLost {
        /// The lease's key.
        key: String,
        /// The epoch it was held at.
        epoch: u64,
        /// How it was lost.
        reason: String,
    },
}

/// Results of cluster operations.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// The buckets of a cluster: `streamflow-<cluster>-<kind>`.
const KINDS: [&str; 4] = ["workers", "leases", "assignments", "runs"];

/// Default time after which a worker or lease that is not renewed is gone.
pub const DEFAULT_TTL: Duration = Duration::from_secs(6);

/// A connection to one cluster: a name on a NATS JetStream server.
#[derive(Clone)]
pub struct Cluster {
    name: String,
    url: String,
    ttl: Duration,
    js: jetstream::Context,
    /// Where the channels into this process's shares arrive directly.
    direct: Option<Arc<DirectExchange>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Checks a name used in keys and bucket names: letters, digits, `-`, `_`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Invalid(format!(
            "{what} '{name}': use 1 to 64 letters, digits, '-' or '_'"
        )))
    }
}

impl Cluster {
    /// Connects to the cluster `name` on the server at `url`
    /// (`nats://host:4222`), whose workers and leases expire after `ttl`.
    ///
    /// # Errors
    /// A bad name or ttl, or a server that cannot be reached.
    pub async fn connect(url: &str, name: &str, ttl: Duration) -> Result<Cluster> {
        check_name("cluster name", name)?;
        if ttl < Duration::from_millis(300) {
            return Err(ClusterError::Invalid(format!(
                "ttl {ttl:?} is too short (at least 300ms)"
            )));
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| ClusterError::Connect {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Cluster {
            name: name.to_string(),
            url: url.to_string(),
            ttl,
            js: jetstream::new(client),
            direct: None,
        })
    }

    /// Has the channels into the shares this process runs come straight
    /// from their producers over TCP, through a listener on `listen`
    /// (port 0: any free one) reached at `advertise` — by default the
    /// address this host reaches the cluster's NATS server from. Without
    /// it, they are relayed by the NATS server.
    ///
    /// # Errors
    /// The address cannot be listened on, or (with no `advertise`) the
    /// server's address does not resolve.
    pub async fn exchange_directly(
        mut self,
        listen: SocketAddr,
        advertise: Option<&str>,
    ) -> Result<Cluster> {
        let failed = |what: &str, e: std::io::Error| {
            ClusterError::Invalid(format!("direct exchange: {what}: {e}"))
        };
        let host = match advertise {
            Some(host) => host.to_string(),
            None if !listen.ip().is_unspecified() => listen.ip().to_string(),
            None => exchange::local_ip_toward(self.server())
                .map_err(|e| {
                    failed(
                        &format!("finding this host's address toward {}", self.server()),
                        e,
                    )
                })?
                .to_string(),
        };
        let exchange = DirectExchange::bind(listen, &host)
            .await
            .map_err(|e| failed(&format!("listening on {listen}"), e))?;
        self.direct = Some(exchange);
        Ok(self)
    }

    /// Where producers reach this process's direct exchange, if it has one.
    pub fn direct_exchange(&self) -> Option<&str> {
        self.direct.as_deref().map(DirectExchange::address)
    }

    /// The first server of the cluster's URL, as `host:port`.
    fn server(&self) -> &str {
        let server = self.url.split(',').next().unwrap_or(&self.url);
        let server = server.split_once("://").map_or(server, |(_, rest)| rest);
        server.trim_end_matches('/')
    }

    /// The connection to the cluster's server.
    pub fn client(&self) -> async_nats::Client {
        self.js.client()
    }

    /// Whether someone holds the lease `key` now.
    ///
    /// # Errors
    /// The server failing.
    pub async fn lease_held(&self, key: &str) -> Result<bool> {
        let store = self.bucket("leases").await?;
        let entry = store
            .entry(key)
            .await
            .map_err(|e| self.error(format!("reading lease {key}"), e))?;
        Ok(entry.is_some_and(|e| e.operation == kv::Operation::Put))
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the checkpoints of a flow that names no `checkpoint.storage`
    /// go when it runs on the cluster: the JetStream object store
    /// `streamflow-<cluster>-checkpoints` on the cluster's own server (which
    /// every worker reaches), under the flow's name.
    pub fn default_checkpoint_storage(&self, flow: &str) -> String {
        format!(
            "nats://{}/{}/{flow}",
            self.server(),
            self.checkpoints_bucket()
        )
    }

    /// The object store of [`default_checkpoint_storage`](Self::default_checkpoint_storage).
    fn checkpoints_bucket(&self) -> String {
        format!("streamflow-{}-checkpoints", self.name)
    }

    /// The time after which an unrenewed worker or lease is gone.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn error(&self, what: impl Into<String>, reason: impl std::fmt::Display) -> ClusterError {
        ClusterError::JetStream {
            cluster: self.name.clone(),
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// The bucket `streamflow-<cluster>-<kind>`, created on first use; its
    /// entries expire after the cluster's ttl, but for assignments and
    /// workers' reports, which stay until replaced.
    async fn bucket(&self, kind: &str) -> Result<kv::Store> {
        let bucket = format!("streamflow-{}-{kind}", self.name);
        let max_age = if matches!(kind, "assignments" | "runs") {
            Duration::ZERO
        } else {
            self.ttl
        };
        if let Ok(store) = self.js.get_key_value(&bucket).await {
            let status = store
                .status()
                .await
                .map_err(|e| self.error(format!("reading bucket {bucket}"), e))?;
            let found = status.max_age();
            if found != max_age {
                return Err(ClusterError::Invalid(format!(
                    "cluster '{}' runs with a ttl of {found:?}, not {:?}: use --ttl {}ms",
                    self.name,
                    self.ttl,
                    found.as_millis()
                )));
            }
            return Ok(store);
        }
        // The bucket's stream is made here rather than by the client's
        // `create_key_value`, which first asks for account details that a
        // 2.9 server answers in a shape the client no longer reads; the
        // stream is the one a key-value bucket is.
        self.js
            .create_stream(jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                description: Some(format!("StreamFlow cluster '{}': {kind}", self.name)),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age,
                storage: jetstream::stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: jetstream::stream::DiscardPolicy::New,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| self.error(format!("creating bucket {bucket}"), e))?;
        self.js
            .get_key_value(&bucket)
            .await
            .map_err(|e| self.error(format!("opening bucket {bucket}"), e))
    }

    /// Publishes `assignment` for its flow, unless one of a later epoch is
    /// there (its coordinator lost the lease to a newer one: fenced).
    ///
    /// # Errors
    /// [`ClusterError::LeaseLost`] when fenced; the server failing.
    pub async fn publish_assignment(&self, assignment: &Assignment) -> Result<()> {
        check_name("flow name", &assignment.flow)?;
        let store = self.bucket("assignments").await?;
        let value = serde_json::to_vec(assignment)
            .map_err(|e| ClusterError::Invalid(format!("assignment: {e}")))?;
        let key = assignment.flow.as_str();
        let fenced = |epoch: u64| ClusterError::LeaseLost {
            key: format!("coordinator of {key}"),
            epoch: assignment.epoch,
            reason: format!("an assignment of epoch {epoch} is published already"),
        };
        let current = store
            .entry(key)
            .await
            .map_err(|e| self.error(format!("reading the assignment of {key}"), e))?
            .filter(|e| e.operation == kv::Operation::Put);
        let written = match current {
            None => store
                .create(key, value.into())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Some(entry) => {
                let published: Assignment = serde_json::from_slice(&entry.value)
                    .map_err(|e| self.error(format!("reading the assignment of {key}"), e))?;
                if published.epoch > assignment.epoch {
                    return Err(fenced(published.epoch));
                }
                store
                    .update(key, value.into(), entry.revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        // Failing the compare-and-swap means another coordinator wrote meanwhile.
        written.map_err(|why| self.error(format!("publishing the assignment of {key}"), why))
    }

    /// The published assignment of `flow`, if any.
    ///
    /// # Errors
    /// The server failing.
    pub async fn assignment(&self, flow: &str) -> Result<Option<Assignment>> {
        check_name("flow name", flow)?;
        let store = self.bucket("assignments").await?;
        let entry = store
            .entry(flow)
            .await
            .map_err(|e| self.error(format!("reading the assignment of {flow}"), e))?;
        entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| {
                serde_json::from_slice(&e.value)
                    .map_err(|e| self.error(format!("reading the assignment of {flow}"), e))
            })
            .transpose()
    }

    /// Removes the cluster's buckets: every worker and lease is gone (the
    /// processes holding them find out at their next renewal).
    ///
    /// # Errors
    /// The server failing.
    pub async fn dissolve(&self) -> Result<()> {
        for kind in KINDS {
            let bucket = format!("streamflow-{}-{kind}", self.name);
            if self.js.get_key_value(&bucket).await.is_ok() {
                self.js
                    .delete_key_value(&bucket)
                    .await
                    .map_err(|e| self.error(format!("deleting bucket {bucket}"), e))?;
            }
        }
        let bucket = self.checkpoints_bucket();
        if self.js.get_object_store(&bucket).await.is_ok() {
            self.js
                .delete_object_store(&bucket)
                .await
                .map_err(|e| self.error(format!("deleting bucket {bucket}"), e))?;
        }
        Ok(())
    }

    /// Tries to take the lease `key` (letters, digits, `-`, `_`, `.`; say
    /// `coordinator.<flow>`), carrying `value` (who holds it).
    ///
    /// # Errors
    /// A bad key or the server failing; a lease held by someone else is
    /// not an error but [`Acquired::Held`].
    pub async fn acquire(&self, key: &str, value: &[u8]) -> Result<Acquired> {
        self.acquire_in("leases", key, value).await
    }

    /// [`Cluster::acquire`] in the bucket of `kind`.
    async fn acquire_in(&self, kind: &str, key: &str, value: &[u8]) -> Result<Acquired> {
        let store = self.bucket(kind).await?;
        Lease::acquire(self.clone(), store, key, value).await
    }
}
