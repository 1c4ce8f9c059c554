//! Leases: a key held by one holder until its time runs out, renewed by
//! the holder while it works; the work learns when the lease is lost.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::{LogClient, LogError};

/// What runs under a lease learns through this when the lease is lost
/// (another holder took it after a renewal failed or came too late).
#[derive(Debug, Clone)]
pub struct LeaseToken {
    holder: String,
    lost: watch::Receiver<bool>,
}

impl LeaseToken {
    /// This holder's id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Whether the lease is lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Waits until the lease is lost.
    pub async fn lost(&mut self) {
        if self.lost.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A holder id unique to this process and call.
fn holder_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `f` holding lease `key` of `log`: fails at once while another
/// holder's lease is unexpired; renews every third of `ttl` while `f` runs
/// (a renewal that finds the lease taken fires `f`'s token); releases the
/// lease when `f` is done.
///
/// # Errors
/// [`LogError::LeaseHeld`], or the store.
pub async fn with_lease<T, F, Fut>(
    log: &LogClient,
    key: &str,
    ttl: Duration,
    f: F,
) -> Result<T, LogError>
where
    F: FnOnce(LeaseToken) -> Fut,
    Fut: Future<Output = T>,
{
    let holder = holder_id();
    log.acquire_lease(key, &holder, ttl).await?;
    let (lost_tx, lost) = watch::channel(false);
    let renewer = {
        let (log, key, holder) = (log.clone(), key.to_string(), holder.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                if log.acquire_lease(&key, &holder, ttl).await.is_err() {
                    tracing::warn!(lease = %key, holder = %holder, "lease lost");
                    let _ = lost_tx.send(true);
                    return;
                }
            }
        })
    };
    let out = f(LeaseToken {
        holder: holder.clone(),
        lost,
    })
    .await;
    renewer.abort();
    log.release_lease(key, &holder).await?;
    Ok(out)
}
