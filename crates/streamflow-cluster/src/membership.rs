//! Workers: a worker is a lease on its name in the cluster's `workers`
//! bucket, carrying what it offers; the cluster's members are the
//! unexpired ones.

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::{Acquired, Cluster, ClusterError, HeldLease, Result, check_name};

/// The bucket of worker leases.
const WORKERS: &str = "workers";

/// A worker as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its name, unique in the cluster.
    pub name: String,
    /// Operator instances it can run at once.
    pub slots: usize,
    /// The host it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// When it joined, milliseconds since the Unix epoch.
    pub joined_ms: u64,
    /// Where producers send it channels directly (`host:port`), if they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
}

/// This process's place in the cluster: a worker lease renewed in the
/// background. Dropped, the worker leaves after the ttl; [`Membership::leave`]
/// leaves at once.
#[derive(Debug)]
pub struct Membership {
    member: Member,
    lease: HeldLease,
}

impl Membership {
    /// The member this process is.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// The epoch of its membership (grows each time the name is taken).
    pub fn epoch(&self) -> u64 {
        self.lease.epoch()
    }

    /// Waits until the cluster removed this worker (its lease expired,
    /// say while the process was stopped, and was taken or renewed by no
    /// one); returns why. The worker must then stop acting.
    pub async fn removed(&mut self) -> std::sync::Arc<ClusterError> {
        self.lease.until_lost().await
    }

    /// Leaves the cluster at once.
    pub async fn leave(self) {
        self.lease.release().await;
    }
}

impl Cluster {
    /// Joins the cluster as `member`.
    ///
    /// # Errors
    /// A live worker already has the name, or the server fails.
    pub async fn join(&self, member: Member) -> Result<Membership> {
        check_name("worker name", &member.name)?;
        let value = serde_json::to_vec(&member)
            .map_err(|e| ClusterError::Invalid(format!("worker description: {e}")))?;
        match self.acquire_in(WORKERS, &member.name, &value).await? {
            Acquired::Won(lease) => Ok(Membership {
                member,
                lease: lease.keep(),
            }),
            Acquired::Held { value, .. } => {
                let holder = serde_json::from_slice::<Member>(&value)
                    .map(|m| format!(" (pid {} on {})", m.pid, m.host))
                    .unwrap_or_default();
                Err(ClusterError::Invalid(format!(
                    "a worker named '{}' is already in cluster '{}'{holder}",
                    member.name, self.name
                )))
            }
        }
    }

    /// The workers in the cluster now, by name.
    ///
    /// # Errors
    /// The server failing.
    pub async fn members(&self) -> Result<Vec<Member>> {
        let store = self.bucket(WORKERS).await?;
        // The subjects the bucket's stream holds, in one request. (The
        // client's `keys()` runs a consumer that waits for every entry it
        // counted at its start, forever if one expires meanwhile.)
        let prefix = format!("$KV.{}.", store.name);
        let keys: Vec<String> = store
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| self.error("listing workers", e))?
            .map_ok(|(subject, _)| {
                subject
                    .strip_prefix(&prefix)
                    .unwrap_or(&subject)
                    .to_string()
            })
            .try_collect()
            .await
            .map_err(|e| self.error("listing workers", e))?;
        let mut members = Vec::with_capacity(keys.len());
        for key in keys {
            let entry = store
                .entry(key.as_str())
                .await
                .map_err(|e| self.error(format!("reading worker {key}"), e))?;
            let Some(entry) = entry else { continue };
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                continue;
            }
            match serde_json::from_slice::<Member>(&entry.value) {
                Ok(member) => members.push(member),
                Err(e) => tracing::warn!(worker = %key, error = %e, "unreadable worker entry"),
            }
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(members)
    }
}
