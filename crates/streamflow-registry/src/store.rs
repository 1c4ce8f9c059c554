//! The registry's durable record, in tables of the server's redb file:
//! schemas by id (never removed, so ids stay stable and unique), subjects
//! with their versions, and compatibility settings. Each change is one
//! transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{RegistryError, store};
use crate::level::Level;
use crate::schema::{Reference, SchemaType};

/// Schema id → [`StoredSchema`] (JSON).
const SCHEMAS: TableDefinition<u64, &[u8]> = TableDefinition::new("registry_schemas");
/// Subject → [`Subject`] (JSON).
const SUBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("registry_subjects");
/// Subject (`""`: the registry) → compatibility level.
const CONFIG: TableDefinition<&str, &str> = TableDefinition::new("registry_config");

/// A registered schema.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSchema {
    /// Its format.
    pub schema_type: SchemaType,
    /// The schema as first registered.
    pub schema: String,
    /// What it refers to.
    #[serde(default)]
    pub references: Vec<Reference>,
    /// See [`crate::schema::identity`].
    pub identity: String,
}

/// One version of a subject.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Version {
    /// 1, 2, …
    pub version: u32,
    /// The schema's id.
    pub id: u32,
    /// Soft-deleted.
    pub deleted: bool,
}

/// A subject: its versions, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Subject {
    /// Versions, oldest first (permanently deleted ones are gone).
    pub versions: Vec<Version>,
}

/// Everything, as loaded.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) schemas: BTreeMap<u32, StoredSchema>,
    pub(crate) subjects: BTreeMap<String, Subject>,
    pub(crate) config: BTreeMap<String, Level>,
}

/// One transaction's changes.
#[derive(Default)]
pub(crate) struct Change<'a> {
    pub(crate) schema: Option<(u32, &'a StoredSchema)>,
    /// `None`: remove the subject.
    pub(crate) subject: Option<(&'a str, Option<&'a Subject>)>,
    /// `None`: remove the setting.
    pub(crate) config: Option<(&'a str, Option<Level>)>,
}

/// The tables in a redb database.
pub(crate) struct Store {
    db: Arc<Database>,
}

impl Store {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    pub(crate) fn load(&self) -> Result<Loaded, RegistryError> {
        let txn = self.db.begin_read().map_err(store)?;
        let mut loaded = Loaded::default();
        match txn.open_table(SCHEMAS) {
            Ok(t) => {
                for entry in t.iter().map_err(store)? {
                    let (k, v) = entry.map_err(store)?;
                    let id = u32::try_from(k.value()).map_err(store)?;
                    loaded
                        .schemas
                        .insert(id, serde_json::from_slice(v.value()).map_err(store)?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(store(e)),
        }
        match txn.open_table(SUBJECTS) {
            Ok(t) => {
                for entry in t.iter().map_err(store)? {
                    let (k, v) = entry.map_err(store)?;
                    loaded.subjects.insert(
                        k.value().to_string(),
                        serde_json::from_slice(v.value()).map_err(store)?,
                    );
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(store(e)),
        }
        match txn.open_table(CONFIG) {
            Ok(t) => {
                for entry in t.iter().map_err(store)? {
                    let (k, v) = entry.map_err(store)?;
                    let level = v.value().parse().map_err(store)?;
                    loaded.config.insert(k.value().to_string(), level);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(store(e)),
        }
        Ok(loaded)
    }

    /// Writes `change` in one transaction.
    pub(crate) fn apply(&self, change: &Change<'_>) -> Result<(), RegistryError> {
        let txn = self.db.begin_write().map_err(store)?;
        {
            if let Some((id, schema)) = change.schema {
                let mut t = txn.open_table(SCHEMAS).map_err(store)?;
                let json = serde_json::to_vec(schema).map_err(store)?;
                t.insert(u64::from(id), json.as_slice()).map_err(store)?;
            }
            if let Some((name, subject)) = change.subject {
                let mut t = txn.open_table(SUBJECTS).map_err(store)?;
                match subject {
                    Some(s) => {
                        let json = serde_json::to_vec(s).map_err(store)?;
                        t.insert(name, json.as_slice()).map_err(store)?;
                    }
                    None => {
                        t.remove(name).map_err(store)?;
                    }
                }
            }
            if let Some((name, level)) = change.config {
                let mut t = txn.open_table(CONFIG).map_err(store)?;
                match level {
                    Some(l) => {
                        t.insert(name, l.as_str()).map_err(store)?;
                    }
                    None => {
                        t.remove(name).map_err(store)?;
                    }
                }
            }
        }
        txn.commit().map_err(store)
    }
}
