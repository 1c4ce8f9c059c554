//! StreamFlow's schema registry: versioned Avro, JSON Schema and Protobuf
//! schemas under subjects, with compatibility levels, kept in the server's
//! embedded store and served over the Confluent Schema Registry REST API
//! ([`api`]) so that existing clients work unchanged.
//!
//! Ids are global: the same schema (format, normal form and references)
//! has one id under every subject, and an id never changes or comes back
//! for another schema. Deleting is soft first (the version is hidden but
//! its id still resolves), permanent only after.

pub mod api;
pub mod error;
pub mod level;
pub mod schema;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::Database;

pub use error::RegistryError;
pub use level::Level;
pub use schema::{Parsed, Reference, SchemaType};
pub use store::{StoredSchema, Subject, Version};

use schema::Resolved;
use store::{Change, Loaded, Store};

/// A schema to register, look up or check.
#[derive(Debug, Clone)]
pub struct SchemaRequest {
    /// The schema text.
    pub schema: String,
    /// Its format.
    pub schema_type: SchemaType,
    /// Schemas it refers to.
    pub references: Vec<Reference>,
}

/// A version of a subject, with its schema.
#[derive(Debug, Clone)]
pub struct SubjectVersion {
    /// The subject.
    pub subject: String,
    /// The version.
    pub version: u32,
    /// The schema's id.
    pub id: u32,
    /// The schema.
    pub schema: StoredSchema,
}

/// Which version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    /// The newest one (`latest` or `-1`).
    Latest,
    /// That one.
    Number(u32),
}

impl VersionRef {
    /// Reads `latest`, `-1` or a number from 1 to 2^31-1.
    ///
    /// # Errors
    /// [`RegistryError::InvalidVersion`].
    pub fn parse(text: &str) -> Result<VersionRef, RegistryError> {
        match text {
            "latest" | "-1" => Ok(VersionRef::Latest),
            t => match t.parse::<u32>() {
                Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(VersionRef::Number(n)),
                _ => Err(RegistryError::InvalidVersion(t.to_string())),
            },
        }
    }
}

/// Everything the registry holds, in memory; every change is written to
/// the store before it is made here.
#[derive(Debug, Default)]
struct Model {
    loaded: Loaded,
    /// Identity → id.
    identities: HashMap<String, u32>,
}

/// The registry. Reads are served from memory; changes are one store
/// transaction each, made under a lock (so concurrent registrations of a
/// subject are ordered).
pub struct Registry {
    store: Store,
    model: RwLock<Model>,
}

impl Registry {
    /// The registry kept in `db` (its own tables; created when missing).
    ///
    /// # Errors
    /// When the tables cannot be read.
    pub fn open(db: Arc<Database>) -> Result<Registry, RegistryError> {
        let store = Store::new(db);
        let loaded = store.load()?;
        let identities = loaded
            .schemas
            .iter()
            .map(|(id, s)| (s.identity.clone(), *id))
            .collect();
        Ok(Registry {
            store,
            model: RwLock::new(Model { loaded, identities }),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Model> {
        self.model.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Model> {
        self.model.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `request` under `subject`: the existing id and version when
    /// the subject already has this schema, else a new version (checked
    /// against the subject's compatibility level) with the schema's id.
    ///
    /// # Errors
    /// Invalid schema or references (42201), incompatible (409), the store.
    pub fn register(
        &self,
        subject: &str,
        request: &SchemaRequest,
    ) -> Result<(u32, u32), RegistryError> {
        let mut m = self.write();
        let (parsed, identity) = parse_request(&m.loaded, request)?;
        let current = m.loaded.subjects.get(subject).cloned().unwrap_or_default();
        if let Some(v) = current
            .versions
            .iter()
            .find(|v| !v.deleted && m.loaded.schemas[&v.id].identity == identity)
        {
            return Ok((v.id, v.version));
        }
        let earlier = live_parsed(&m.loaded, &current)?;
        let earlier: Vec<(u32, &Parsed)> = earlier.iter().map(|(v, p)| (*v, p)).collect();
        let messages = level_of(&m.loaded, subject).check(&parsed, &earlier);
        if !messages.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_string(),
                messages,
            });
        }
        let existing = m.identities.get(&identity).copied();
        let id = existing.unwrap_or_else(|| {
            m.loaded
                .schemas
                .keys()
                .next_back()
                .map_or(1, |last| last + 1)
        });
        let stored = StoredSchema {
            schema_type: request.schema_type,
            schema: request.schema.clone(),
            references: request.references.clone(),
            identity: identity.clone(),
        };
        let version = current.versions.last().map_or(1, |v| v.version + 1);
        let mut updated = current;
        updated.versions.push(Version {
            version,
            id,
            deleted: false,
        });
        self.store.apply(&Change {
            schema: existing.is_none().then_some((id, &stored)),
            subject: Some((subject, Some(&updated))),
            config: None,
        })?;
        if existing.is_none() {
            m.loaded.schemas.insert(id, stored);
            m.identities.insert(identity, id);
        }
        m.loaded.subjects.insert(subject.to_string(), updated);
        Ok((id, version))
    }

    /// The version of `subject` holding `request`'s schema.
    ///
    /// # Errors
    /// 40401 (no such subject), 40403 (not registered there), 42201.
    pub fn lookup(
        &self,
        subject: &str,
        request: &SchemaRequest,
        deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let m = self.read();
        let s = subject_of(&m.loaded, subject, deleted)?;
        let (_, identity) = parse_request(&m.loaded, request)?;
        let v = s
            .versions
            .iter()
            .rev()
            .find(|v| (deleted || !v.deleted) && m.loaded.schemas[&v.id].identity == identity)
            .ok_or_else(|| RegistryError::SchemaNotFound(format!("under subject '{subject}'")))?;
        Ok(subject_version(&m.loaded, subject, v))
    }

    /// Subjects with a version (soft-deleted ones too with `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.read()
            .loaded
            .subjects
            .iter()
            .filter(|(_, s)| s.versions.iter().any(|v| deleted || !v.deleted))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// `subject`'s version numbers, oldest first.
    ///
    /// # Errors
    /// 40401.
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, RegistryError> {
        let m = self.read();
        let s = subject_of(&m.loaded, subject, deleted)?;
        Ok(s.versions
            .iter()
            .filter(|v| deleted || !v.deleted)
            .map(|v| v.version)
            .collect())
    }

    /// One version of `subject`.
    ///
    /// # Errors
    /// 40401, 40402.
    pub fn version(
        &self,
        subject: &str,
        which: VersionRef,
        deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let m = self.read();
        let s = subject_of(&m.loaded, subject, deleted)?;
        let v = find_version(s, which, deleted)?;
        Ok(subject_version(&m.loaded, subject, v))
    }

    /// Deletes one version: soft, or (`permanent`, after a soft delete) for good.
    ///
    /// # Errors
    /// 40401, 40402, 40406, 40407, 42206 (other schemas refer to it).
    pub fn delete_version(
        &self,
        subject: &str,
        which: VersionRef,
        permanent: bool,
    ) -> Result<u32, RegistryError> {
        let mut m = self.write();
        let s = subject_of(&m.loaded, subject, true)?;
        // A soft delete of `latest` means the newest live version; a
        // numbered version is found deleted or not (to say which it is).
        let v = match which {
            VersionRef::Latest => *find_version(s, which, permanent)?,
            VersionRef::Number(_) => *find_version(s, which, true)?,
        };
        let mut updated = s.clone();
        if permanent {
            if !v.deleted {
                return Err(RegistryError::VersionNotSoftDeleted {
                    subject: subject.to_string(),
                    version: v.version,
                });
            }
            updated.versions.retain(|x| x.version != v.version);
        } else {
            if v.deleted {
                return Err(RegistryError::VersionSoftDeleted {
                    subject: subject.to_string(),
                    version: v.version,
                });
            }
            refuse_if_referenced(&m.loaded, subject, &[v.version])?;
            for x in &mut updated.versions {
                if x.version == v.version {
                    x.deleted = true;
                }
            }
        }
        self.save_subject(&mut m, subject, updated)?;
        Ok(v.version)
    }

    /// Deletes a subject: soft (its live versions), or (`permanent`, after
    /// a soft delete) for good. Returns the versions deleted.
    ///
    /// # Errors
    /// 40401, 40404, 40405, 42206.
    pub fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        let mut m = self.write();
        let s = subject_of(&m.loaded, subject, true)?.clone();
        let live: Vec<u32> = s
            .versions
            .iter()
            .filter(|v| !v.deleted)
            .map(|v| v.version)
            .collect();
        if permanent {
            if !live.is_empty() {
                return Err(RegistryError::SubjectNotSoftDeleted(subject.to_string()));
            }
            let all = s.versions.iter().map(|v| v.version).collect();
            self.save_subject(&mut m, subject, Subject::default())?;
            return Ok(all);
        }
        if live.is_empty() {
            return Err(RegistryError::SubjectSoftDeleted(subject.to_string()));
        }
        refuse_if_referenced(&m.loaded, subject, &live)?;
        let mut updated = s;
        for v in &mut updated.versions {
            v.deleted = true;
        }
        self.save_subject(&mut m, subject, updated)?;
        Ok(live)
    }

    /// Stores `subject` (removing it when it has no versions left).
    fn save_subject(&self, m: &mut Model, subject: &str, s: Subject) -> Result<(), RegistryError> {
        let keep = !s.versions.is_empty();
        self.store.apply(&Change {
            subject: Some((subject, keep.then_some(&s))),
            ..Change::default()
        })?;
        if keep {
            m.loaded.subjects.insert(subject.to_string(), s);
        } else {
            m.loaded.subjects.remove(subject);
        }
        Ok(())
    }

    /// The schema with id `id`, while some version (soft-deleted ones
    /// included) holds it.
    ///
    /// # Errors
    /// 40403.
    pub fn schema(&self, id: u32) -> Result<StoredSchema, RegistryError> {
        let m = self.read();
        let used = m
            .loaded
            .subjects
            .values()
            .any(|s| s.versions.iter().any(|v| v.id == id));
        match m.loaded.schemas.get(&id) {
            Some(s) if used => Ok(s.clone()),
            _ => Err(RegistryError::SchemaNotFound(id.to_string())),
        }
    }

    /// The (subject, version) pairs holding schema `id`.
    ///
    /// # Errors
    /// 40403.
    pub fn schema_versions(
        &self,
        id: u32,
        deleted: bool,
    ) -> Result<Vec<(String, u32)>, RegistryError> {
        self.schema(id)?;
        let m = self.read();
        Ok(m.loaded
            .subjects
            .iter()
            .flat_map(|(name, s)| {
                s.versions
                    .iter()
                    .filter(|v| v.id == id && (deleted || !v.deleted))
                    .map(|v| (name.clone(), v.version))
            })
            .collect())
    }

    /// Why `request` could not be registered under `subject` — against
    /// `which` version, or (`None`) the versions the subject's level checks.
    /// Nothing: it could.
    ///
    /// # Errors
    /// 40401/40402 (an explicit version that does not exist), 42201.
    pub fn check(
        &self,
        subject: &str,
        which: Option<VersionRef>,
        request: &SchemaRequest,
    ) -> Result<Vec<String>, RegistryError> {
        let m = self.read();
        let (parsed, _) = parse_request(&m.loaded, request)?;
        let level = level_of(&m.loaded, subject);
        let Some(which) = which else {
            let Some(s) = m.loaded.subjects.get(subject) else {
                return Ok(Vec::new());
            };
            let earlier = live_parsed(&m.loaded, s)?;
            let earlier: Vec<(u32, &Parsed)> = earlier.iter().map(|(v, p)| (*v, p)).collect();
            return Ok(level.check(&parsed, &earlier));
        };
        let s = subject_of(&m.loaded, subject, false)?;
        let v = find_version(s, which, false)?;
        let old = parse_stored(&m.loaded, &m.loaded.schemas[&v.id])?;
        Ok(level.check(&parsed, &[(v.version, &old)]))
    }

    /// The level set for `subject`, or (`None`) for the registry (which
    /// defaults to BACKWARD).
    ///
    /// # Errors
    /// 40408: the subject has no level of its own.
    pub fn config(&self, subject: Option<&str>) -> Result<Level, RegistryError> {
        let m = self.read();
        match subject {
            None => Ok(m.loaded.config.get("").copied().unwrap_or_default()),
            Some(s) => m
                .loaded
                .config
                .get(s)
                .copied()
                .ok_or_else(|| RegistryError::SubjectConfigNotFound(s.to_string())),
        }
    }

    /// The level that applies to `subject`: its own, else the registry's.
    pub fn effective_level(&self, subject: &str) -> Level {
        level_of(&self.read().loaded, subject)
    }

    /// Sets the level of `subject` (or, `None`, of the registry).
    ///
    /// # Errors
    /// The store.
    pub fn set_config(&self, subject: Option<&str>, level: Level) -> Result<(), RegistryError> {
        let mut m = self.write();
        let key = subject.unwrap_or("");
        self.store.apply(&Change {
            config: Some((key, Some(level))),
            ..Change::default()
        })?;
        m.loaded.config.insert(key.to_string(), level);
        Ok(())
    }

    /// Removes `subject`'s own level (or resets the registry's); returns
    /// what it was.
    ///
    /// # Errors
    /// 40408 when the subject had none.
    pub fn delete_config(&self, subject: Option<&str>) -> Result<Level, RegistryError> {
        let mut m = self.write();
        let key = subject.unwrap_or("");
        let previous = match (m.loaded.config.get(key), subject) {
            (Some(l), _) => *l,
            (None, None) => Level::default(),
            (None, Some(s)) => return Err(RegistryError::SubjectConfigNotFound(s.to_string())),
        };
        self.store.apply(&Change {
            config: Some((key, None)),
            ..Change::default()
        })?;
        m.loaded.config.remove(key);
        Ok(previous)
    }

    /// `schema` as asked with `format=serialized`: a Protobuf schema as its
    /// base64 `FileDescriptorProto` (what Confluent's deserializers read);
    /// other formats as registered.
    ///
    /// # Errors
    /// A stored schema that no longer parses.
    pub fn serialized(&self, schema: &StoredSchema) -> Result<String, RegistryError> {
        if schema.schema_type != SchemaType::Protobuf {
            return Ok(schema.schema.clone());
        }
        match parse_stored(&self.read().loaded, schema)? {
            Parsed::Protobuf(c) => Ok(c.serialized()),
            _ => Ok(schema.schema.clone()),
        }
    }

    /// Parses a registered schema (with its references), for readers of
    /// data written with it.
    ///
    /// # Errors
    /// 40403, or a stored schema that no longer parses.
    pub fn parsed(&self, id: u32) -> Result<Parsed, RegistryError> {
        let stored = self.schema(id)?;
        parse_stored(&self.read().loaded, &stored)
    }
}

fn level_of(m: &Loaded, subject: &str) -> Level {
    m.config
        .get(subject)
        .or_else(|| m.config.get(""))
        .copied()
        .unwrap_or_default()
}

fn subject_of<'m>(
    m: &'m Loaded,
    subject: &str,
    deleted: bool,
) -> Result<&'m Subject, RegistryError> {
    m.subjects
        .get(subject)
        .filter(|s| s.versions.iter().any(|v| deleted || !v.deleted))
        .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))
}

fn find_version(s: &Subject, which: VersionRef, deleted: bool) -> Result<&Version, RegistryError> {
    let mut candidates = s.versions.iter().filter(|v| deleted || !v.deleted);
    match which {
        VersionRef::Latest => candidates.next_back(),
        VersionRef::Number(n) => candidates.find(|v| v.version == n),
    }
    .ok_or_else(|| {
        RegistryError::VersionNotFound(match which {
            VersionRef::Latest => "latest".to_string(),
            VersionRef::Number(n) => n.to_string(),
        })
    })
}

fn subject_version(m: &Loaded, subject: &str, v: &Version) -> SubjectVersion {
    SubjectVersion {
        subject: subject.to_string(),
        version: v.version,
        id: v.id,
        schema: m.schemas[&v.id].clone(),
    }
}

/// Fails when a live version of another schema refers to one of `versions`
/// of `subject`.
fn refuse_if_referenced(m: &Loaded, subject: &str, versions: &[u32]) -> Result<(), RegistryError> {
    for s in m.subjects.values() {
        for v in s.versions.iter().filter(|v| !v.deleted) {
            for r in &m.schemas[&v.id].references {
                if r.subject == subject
                    && let Ok(n) = u32::try_from(r.version)
                    && versions.contains(&n)
                {
                    return Err(RegistryError::Referenced {
                        subject: subject.to_string(),
                        version: n,
                    });
                }
            }
        }
    }
    Ok(())
}

/// The texts of everything `references` reach, dependencies first.
fn resolve(
    m: &Loaded,
    references: &[Reference],
    out: &mut Vec<Resolved>,
    depth: usize,
) -> Result<(), RegistryError> {
    if depth > 32 {
        return Err(RegistryError::InvalidSchema(
            "references nest too deep (a cycle?)".into(),
        ));
    }
    for r in references {
        if out.iter().any(|x| x.name == r.name) {
            continue;
        }
        let missing = || {
            RegistryError::InvalidSchema(format!(
                "reference '{}': version {} of subject '{}' does not exist",
                r.name, r.version, r.subject
            ))
        };
        let s = m.subjects.get(&r.subject).ok_or_else(missing)?;
        let which = if r.version == -1 {
            VersionRef::Latest
        } else {
            VersionRef::Number(u32::try_from(r.version).map_err(|_| missing())?)
        };
        let v = find_version(s, which, true).map_err(|_| missing())?;
        let stored = &m.schemas[&v.id];
        resolve(m, &stored.references, out, depth + 1)?;
        out.push(Resolved {
            name: r.name.clone(),
            schema: stored.schema.clone(),
        });
    }
    Ok(())
}

fn parse_request(m: &Loaded, request: &SchemaRequest) -> Result<(Parsed, String), RegistryError> {
    let mut refs = Vec::new();
    resolve(m, &request.references, &mut refs, 0)?;
    let parsed = Parsed::parse(request.schema_type, &request.schema, &refs)
        .map_err(RegistryError::InvalidSchema)?;
    let identity = schema::identity(
        request.schema_type,
        &parsed,
        &request.schema,
        &request.references,
    );
    Ok((parsed, identity))
}

fn parse_stored(m: &Loaded, stored: &StoredSchema) -> Result<Parsed, RegistryError> {
    let mut refs = Vec::new();
    resolve(m, &stored.references, &mut refs, 0)?;
    Parsed::parse(stored.schema_type, &stored.schema, &refs)
        .map_err(|e| RegistryError::Store(format!("a stored schema no longer parses: {e}")))
}

/// A subject's live versions, parsed, oldest first.
fn live_parsed(m: &Loaded, s: &Subject) -> Result<Vec<(u32, Parsed)>, RegistryError> {
    s.versions
        .iter()
        .filter(|v| !v.deleted)
        .map(|v| Ok((v.version, parse_stored(m, &m.schemas[&v.id])?)))
        .collect()
}
