//! The control plane's durable record: every version of every flow, which
//! one is active, and whether the flow should run — in one redb file, each
//! change one transaction.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Flow name → [`FlowRecord`] (JSON).
const FLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("flows");
/// (flow name, version) → [`FlowVersion`] (JSON).
const VERSIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("versions");

/// What can go wrong with the record.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No flow of that name.
    #[error("flow '{0}' does not exist")]
    NotFound(String),
    /// No such version of the flow.
    #[error("version {0} does not exist")]
    NoVersion(u64),
    /// A flow of that name exists already.
    #[error("flow '{0}' exists already")]
    Exists(String),
    /// The expected version was not the active one.
    #[error(
        "flow '{name}' was modified concurrently: expected version {expected}, active is {active}"
    )]
    Conflict {
        /// The flow.
        name: String,
        /// What the caller expected.
        expected: u64,
        /// What is active.
        active: u64,
    },
    /// The database failed.
    #[error("flow store: {0}")]
    Db(String),
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Whether a flow should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    /// Run it (again after a restart of the server).
    Running,
    /// Leave it stopped.
    Stopped,
}

/// How a flow's last run ended, kept across restarts of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// Its input ended and everything was written.
    Succeeded,
    /// It failed.
    Failed {
        /// Why.
        error: String,
    },
    /// It was stopped.
    Stopped,
}

/// A flow: its versions' bounds, the active one and what it should do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Flow name.
    pub name: String,
    /// The version that runs.
    pub active: u64,
    /// The newest version.
    pub latest: u64,
    /// Whether it should run.
    pub desired: Desired,
    /// How its last run ended, if it ended.
    pub outcome: Option<Outcome>,
}

/// One version of a flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowVersion {
    /// 1, 2, …
    pub version: u64,
    /// SHA-256 (hex) of the normal-form declaration.
    pub fingerprint: String,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
    /// The declaration in normal form.
    pub spec: serde_json::Value,
}

/// The SHA-256 (hex) of a normal-form declaration.
pub fn fingerprint(spec: &serde_json::Value) -> String {
    let digest = Sha256::digest(spec.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The record, in `<data>/flows.redb` (which the schema registry shares).
pub struct FlowStore {
    db: Arc<Database>,
}

impl FlowStore {
    /// Opens (or creates) the record in `dir`.
    ///
    /// # Errors
    /// When the file cannot be opened (another server holds it, say).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(db)?;
        let db = Database::create(dir.join("flows.redb")).map_err(db)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The database, for other parts of the server to keep their tables in.
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// Every flow, by name.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn list(&self) -> Result<Vec<FlowRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = match txn.open_table(FLOWS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db(e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(db)? {
            let (_, v) = entry.map_err(db)?;
            out.push(serde_json::from_slice(v.value()).map_err(db)?);
        }
        Ok(out)
    }

    /// The flow called `name`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or the database failing.
    pub fn get(&self, name: &str) -> Result<FlowRecord, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = match txn.open_table(FLOWS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(StoreError::NotFound(name.to_string()));
            }
            Err(e) => return Err(db(e)),
        };
        let v = table
            .get(name)
            .map_err(db)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        serde_json::from_slice(v.value()).map_err(db)
    }

    /// Version `version` of `name`.
    ///
    /// # Errors
    /// [`StoreError::NoVersion`], or the database failing.
    pub fn version(&self, name: &str, version: u64) -> Result<FlowVersion, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(VERSIONS).map_err(db)?;
        let v = table
            .get((name, version))
            .map_err(db)?
            .ok_or(StoreError::NoVersion(version))?;
        serde_json::from_slice(v.value()).map_err(db)
    }

    /// Every version of `name`, oldest first.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn versions(&self, name: &str) -> Result<Vec<FlowVersion>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(VERSIONS).map_err(db)?;
        let mut out = Vec::new();
        for entry in table.range((name, 0)..=(name, u64::MAX)).map_err(db)? {
            let (_, v) = entry.map_err(db)?;
            out.push(serde_json::from_slice(v.value()).map_err(db)?);
        }
        Ok(out)
    }

    /// Creates flow `name` at version 1, to run.
    ///
    /// # Errors
    /// [`StoreError::Exists`], or the database failing.
    pub fn create(&self, name: &str, spec: serde_json::Value) -> Result<FlowVersion, StoreError> {
        let version = FlowVersion {
            version: 1,
            fingerprint: fingerprint(&spec),
            created_ms: now_ms(),
            spec,
        };
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut flows = txn.open_table(FLOWS).map_err(db)?;
            if flows.get(name).map_err(db)?.is_some() {
                return Err(StoreError::Exists(name.to_string()));
            }
            let record = FlowRecord {
                name: name.to_string(),
                active: 1,
                latest: 1,
                desired: Desired::Running,
                outcome: None,
            };
            put(&mut flows, name, &record)?;
            let mut versions = txn.open_table(VERSIONS).map_err(db)?;
            let json = serde_json::to_vec(&version).map_err(db)?;
            versions.insert((name, 1), json.as_slice()).map_err(db)?;
        }
        txn.commit().map_err(db)?;
        Ok(version)
    }

    /// Makes `spec` the active version of `name`: a new version, unless it
    /// equals the active one (then that one and `false`). `expected`: the
    /// version the caller read as active (compare-and-swap).
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Conflict`], or the database failing.
    pub fn update(
        &self,
        name: &str,
        spec: serde_json::Value,
        expected: Option<u64>,
    ) -> Result<(FlowVersion, bool), StoreError> {
        let print = fingerprint(&spec);
        let txn = self.db.begin_write().map_err(db)?;
        let outcome = {
            let mut flows = txn.open_table(FLOWS).map_err(db)?;
            let mut record: FlowRecord = match flows.get(name).map_err(db)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(db)?,
                None => return Err(StoreError::NotFound(name.to_string())),
            };
            if let Some(expected) = expected
                && expected != record.active
            {
                return Err(StoreError::Conflict {
                    name: name.to_string(),
                    expected,
                    active: record.active,
                });
            }
            let mut versions = txn.open_table(VERSIONS).map_err(db)?;
            let active: FlowVersion = match versions.get((name, record.active)).map_err(db)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(db)?,
                None => return Err(StoreError::NoVersion(record.active)),
            };
            if active.fingerprint == print {
                (active, false)
            } else {
                let version = FlowVersion {
                    version: record.latest + 1,
                    fingerprint: print,
                    created_ms: now_ms(),
                    spec,
                };
                let json = serde_json::to_vec(&version).map_err(db)?;
                versions
                    .insert((name, version.version), json.as_slice())
                    .map_err(db)?;
                record.latest = version.version;
                record.active = version.version;
                put(&mut flows, name, &record)?;
                (version, true)
            }
        };
        txn.commit().map_err(db)?;
        Ok(outcome)
    }

    /// Changes `name`'s record with `change` in one transaction.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], what `change` returns, or the database failing.
    pub fn modify(
        &self,
        name: &str,
        change: impl FnOnce(&mut FlowRecord) -> Result<(), StoreError>,
    ) -> Result<FlowRecord, StoreError> {
        let txn = self.db.begin_write().map_err(db)?;
        let record = {
            let mut flows = txn.open_table(FLOWS).map_err(db)?;
            let mut record: FlowRecord = match flows.get(name).map_err(db)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(db)?,
                None => return Err(StoreError::NotFound(name.to_string())),
            };
            change(&mut record)?;
            put(&mut flows, name, &record)?;
            record
        };
        txn.commit().map_err(db)?;
        Ok(record)
    }

    /// Removes `name` and all its versions.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or the database failing.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut flows = txn.open_table(FLOWS).map_err(db)?;
            let record: FlowRecord = match flows.remove(name).map_err(db)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(db)?,
                None => return Err(StoreError::NotFound(name.to_string())),
            };
            let mut versions = txn.open_table(VERSIONS).map_err(db)?;
            for v in 1..=record.latest {
                versions.remove((name, v)).map_err(db)?;
            }
        }
        txn.commit().map_err(db)
    }
}

fn put(
    flows: &mut redb::Table<'_, &str, &[u8]>,
    name: &str,
    record: &FlowRecord,
) -> Result<(), StoreError> {
    let json = serde_json::to_vec(record).map_err(db)?;
    flows.insert(name, json.as_slice()).map_err(db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_and_swap_and_identical_specs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FlowStore::open(dir.path()).expect("open");
        let a = serde_json::json!({"name": "f", "mode": "job"});
        let b = serde_json::json!({"name": "f", "mode": "streaming"});
        assert_eq!(store.create("f", a.clone()).expect("create").version, 1);
        assert!(matches!(
            store.create("f", a.clone()),
            Err(StoreError::Exists(_))
        ));
        // The same declaration makes no new version.
        let (same, created) = store.update("f", a, Some(1)).expect("update");
        assert_eq!((same.version, created), (1, false));
        let (v2, created) = store.update("f", b.clone(), Some(1)).expect("update");
        assert_eq!((v2.version, created), (2, true));
        // A writer that read version 1 lost the race.
        assert!(matches!(
            store.update("f", serde_json::json!({"name": "f"}), Some(1)),
            Err(StoreError::Conflict {
                expected: 1,
                active: 2,
                ..
            })
        ));
        let record = store
            .modify("f", |r| {
                r.active = 1;
                Ok(())
            })
            .expect("rollback");
        assert_eq!((record.active, record.latest), (1, 2));
        assert_eq!(store.versions("f").expect("versions").len(), 2);
        // Reopened, everything is still there.
        drop(store);
        let store = FlowStore::open(dir.path()).expect("reopen");
        assert_eq!(store.get("f").expect("get").active, 1);
        assert_eq!(store.version("f", 2).expect("v2").spec, b);
        store.delete("f").expect("delete");
        assert!(matches!(store.get("f"), Err(StoreError::NotFound(_))));
        assert!(store.list().expect("list").is_empty());
    }
}
