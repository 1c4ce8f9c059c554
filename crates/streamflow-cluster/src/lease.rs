//! Leases: a key created only if absent, renewed by compare-and-swap on its
//! revision, gone when not renewed for the cluster's ttl.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;
use tokio::sync::watch;

use crate::{Cluster, ClusterError, Result};

/// The outcome of trying to take a lease.
#[derive(Debug)]
pub enum Acquired {
    /// Taken: this process holds it now.
    Won(Box<Lease>),
    /// Someone holds it; `value` is what the holder put in it.
    Held {
        /// The holder's value.
        value: Bytes,
        /// The holder's current revision.
        revision: u64,
    },
}

/// A lease this process holds, renewed by hand with [`Lease::renew`]; see
/// [`Lease::keep`] for renewal in the background.
#[derive(Debug)]
pub struct Lease {
    cluster: Cluster,
    store: kv::Store,
    key: String,
    value: Bytes,
    epoch: u64,
    revision: u64,
    renewed: Instant,
}

impl Lease {
    pub(crate) async fn acquire(
        cluster: Cluster,
        store: kv::Store,
        key: &str,
        value: &[u8],
    ) -> Result<Acquired> {
        let value = Bytes::copy_from_slice(value);
        let started = Instant::now();
        match store.create(key, value.clone()).await {
            Ok(revision) => Ok(Acquired::Won(Box::new(Lease {
                cluster,
                store,
                key: key.to_string(),
                value,
                epoch: revision,
                revision,
                renewed: started,
            }))),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                match store.entry(key).await {
                    Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                        Ok(Acquired::Held {
                            value: entry.value,
                            revision: entry.revision,
                        })
                    }
                    // Expired or released between the two calls: try again later.
                    Ok(_) => Ok(Acquired::Held {
                        value: Bytes::new(),
                        revision: 0,
                    }),
                    Err(e) => Err(cluster.error(format!("reading lease {key}"), e)),
                }
            }
            Err(e) if e.kind() == CreateErrorKind::InvalidKey => Err(ClusterError::Invalid(
                format!("'{key}' cannot be a lease key"),
            )),
            Err(e) => Err(cluster.error(format!("taking lease {key}"), e)),
        }
    }

    /// The revision the lease was won at: grows with every new holder.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The lease's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the lease is certainly still held: renewed less than a ttl
    /// ago. A holder that cannot say so must stop acting.
    pub fn is_fresh(&self) -> bool {
        self.renewed.elapsed() < self.cluster.ttl
    }

    /// Renews the lease for another ttl.
    ///
    /// # Errors
    /// [`ClusterError::LeaseLost`] when another holder took it over (this
    /// one let it expire); a server error otherwise (the lease may still be
    /// held: see [`Lease::is_fresh`]).
    pub async fn renew(&mut self) -> Result<()> {
        let started = Instant::now();
        match self
            .store
            .update(&self.key, self.value.clone(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.renewed = started;
                Ok(())
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                Err(self.lost("it expired and was taken over or released"))
            }
            Err(e) => Err(self
                .cluster
                .error(format!("renewing lease {}", self.key), e)),
        }
    }

    fn lost(&self, reason: &str) -> ClusterError {
        ClusterError::LeaseLost {
            key: self.key.clone(),
            epoch: self.epoch,
            reason: reason.to_string(),
        }
    }

    /// Gives the lease up at once, so another can take it without waiting
    /// for the ttl. Leaves a lease someone else took over alone.
    ///
    /// # Errors
    /// The server failing (the lease then expires by itself).
    pub async fn release(self) -> Result<()> {
        match self
            .store
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(self
                .cluster
                .error(format!("releasing lease {}", self.key), e)),
        }
    }

    /// Renews the lease in the background every ttl/3 until it is released
    /// or lost.
    pub fn keep(self) -> HeldLease {
        let (tell, lost) = watch::channel(None);
        let epoch = self.epoch;
        let key = self.key.clone();
        let (release, released) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(renew_until_lost(self, tell, released));
        HeldLease {
            key,
            epoch,
            lost,
            release: Some(release),
            task: Some(task),
        }
    }
}

/// The background renewal of a kept lease.
async fn renew_until_lost(
    mut lease: Lease,
    tell: watch::Sender<Option<Arc<ClusterError>>>,
    mut released: tokio::sync::oneshot::Receiver<()>,
) {
    let period = lease.cluster.ttl / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = &mut released => {
                if let Err(e) = lease.release().await {
                    tracing::warn!(error = %e, "releasing a lease");
                }
                return;
            }
        }
        match lease.renew().await {
            Ok(()) => {}
            Err(e @ ClusterError::LeaseLost { .. }) => {
                tracing::error!(error = %e, "lease lost");
                let _ = tell.send(Some(Arc::new(e)));
                return;
            }
            Err(e) if lease.is_fresh() => {
                tracing::warn!(error = %e, "renewing a lease failed; retrying");
            }
            Err(e) => {
                let e = lease.lost(&format!(
                    "not renewed within the ttl ({:?}): {e}",
                    lease.cluster.ttl
                ));
                tracing::error!(error = %e, "lease lost");
                let _ = tell.send(Some(Arc::new(e)));
                return;
            }
        }
    }
}

/// A lease renewed in the background. Dropping it stops the renewal (the
/// lease then expires after the ttl); [`HeldLease::release`] gives it up at
/// once.
#[derive(Debug)]
pub struct HeldLease {
    key: String,
    epoch: u64,
    lost: watch::Receiver<Option<Arc<ClusterError>>>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HeldLease {
    /// The epoch the lease was won at.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The lease's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Why the lease was lost, if it was.
    pub fn lost(&self) -> Option<Arc<ClusterError>> {
        self.lost.borrow().clone()
    }

    /// Waits until the lease is lost; returns why.
    pub async fn until_lost(&mut self) -> Arc<ClusterError> {
        loop {
            if let Some(why) = self.lost.borrow_and_update().clone() {
                return why;
            }
            if self.lost.changed().await.is_err() {
                // The renewal ended without a loss: released.
                return Arc::new(ClusterError::Invalid(format!(
                    "the lease '{}' was released",
                    self.key
                )));
            }
        }
    }

    /// Gives the lease up and waits until it is deleted.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
