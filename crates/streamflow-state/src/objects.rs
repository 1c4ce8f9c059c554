//! Where checkpoint files live: a local directory, a bucket of a cloud
//! object store (S3, GCS, Azure, through `object_store`), or a NATS
//! JetStream object store. Each write of an object is atomic: a reader sees
//! the whole object or none of it.

use std::sync::Arc;

use async_nats::jetstream::object_store as nats;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use streamflow_core::{Error, Result};
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

/// The NATS server of `nats://bucket` storage when the URL names none.
const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

fn fail(location: &str, context: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("checkpoint storage '{location}': {context}: {e}"))
}

/// A place to keep objects under a root, by `/`-separated relative paths.
pub(crate) struct Objects {
    location: String,
    backend: Backend,
}

enum Backend {
    /// A local directory or a cloud bucket; `prefix` is the root within it.
    Store {
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        /// The directory, when local (emptied directories are removed too).
        local: Option<std::path::PathBuf>,
    },
    /// A JetStream object store.
    Nats(Box<NatsBucket>),
}

/// A bucket of a JetStream object store, connected on first use.
struct NatsBucket {
    url: String,
    bucket: String,
    /// The root within the bucket (no `/` at either end; may be empty).
    prefix: String,
    store: OnceCell<nats::ObjectStore>,
}

impl NatsBucket {
    /// The object name of `path` (relative to the root).
    fn name(&self, path: &str) -> String {
        if self.prefix.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.prefix)
        }
    }
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Objects {
    /// Opens the storage at `location`:
    /// - a directory, or `file:///dir` (created if needed);
    /// - `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`
    ///   (credentials and endpoint from the usual `AWS_*`, `GOOGLE_*`,
    ///   `AZURE_*` variables);
    /// - `nats://HOST:PORT/bucket/prefix`, or `nats://bucket/prefix` on the
    ///   server named by `STREAMFLOW_CLUSTER` (else 127.0.0.1:4222); the
    ///   bucket is created if absent.
    pub(crate) fn open(location: &str) -> Result<Self> {
        let backend = match location.split_once("://") {
            None => local(location, location)?,
            Some(("file", path)) => local(location, path)?,
            Some(("nats", rest)) => {
                let (server, path) = match rest.split_once('/') {
                    // A port: the first part names the server.
                    Some((host, path)) if host.contains(':') => {
                        (format!("nats://{host}"), path.to_string())
                    }
                    _ => (
                        std::env::var("STREAMFLOW_CLUSTER")
                            .unwrap_or_else(|_| DEFAULT_NATS.to_string()),
                        rest.to_string(),
                    ),
                };
                let mut parts = path.trim_matches('/').splitn(2, '/');
                let bucket = parts.next().unwrap_or_default().to_string();
                let valid = !bucket.is_empty()
                    && bucket
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !valid {
                    return Err(fail(
                        location,
                        "naming the bucket",
                        "use nats://[HOST:PORT/]BUCKET[/PREFIX], the bucket of letters, digits, '-' or '_'",
                    ));
                }
                Backend::Nats(Box::new(NatsBucket {
                    url: server,
                    bucket,
                    prefix: parts
                        .next()
                        .unwrap_or_default()
                        .trim_matches('/')
                        .to_string(),
                    store: OnceCell::new(),
                }))
            }
            Some(_) => {
                let url = url::Url::parse(location).map_err(|e| fail(location, "parsing", e))?;
                let (store, prefix) = object_store::parse_url_opts(&url, std::env::vars())
                    .map_err(|e| fail(location, "opening", e))?;
                Backend::Store {
                    store: Arc::from(store),
                    prefix,
                    local: None,
                }
            }
        };
        Ok(Self {
            location: location.to_string(),
            backend,
        })
    }

    /// The location it was opened at.
    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    fn fail(&self, context: &str, e: impl std::fmt::Display) -> Error {
        fail(&self.location, context, e)
    }

    /// The bucket's store, connecting (and creating the bucket) the first time.
    async fn nats<'a>(&self, n: &'a NatsBucket) -> Result<&'a nats::ObjectStore> {
        let (url, bucket) = (&n.url, &n.bucket);
        n.store
            .get_or_try_init(|| async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(std::time::Duration::from_secs(5))
                    .connect(url)
                    .await
                    .map_err(|e| self.fail(&format!("connecting to {url}"), e))?;
                let js = async_nats::jetstream::new(client);
                match js.get_object_store(bucket).await {
                    Ok(s) => Ok(s),
                    Err(_) => js
                        .create_object_store(nats::Config {
                            bucket: bucket.to_string(),
                            description: Some("StreamFlow checkpoints".into()),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| self.fail(&format!("creating bucket {bucket}"), e)),
                }
            })
            .await
    }

    /// Writes `bytes` at `path`, replacing what was there.
    pub(crate) async fn put(&self, path: &str, bytes: Bytes) -> Result<()> {
        match &self.backend {
            Backend::Store { store, prefix, .. } => store
                .put(&child(prefix, path), PutPayload::from(bytes))
                .await
                .map(drop)
                .map_err(|e| self.fail(path, e)),
            Backend::Nats(n) => {
                let store = self.nats(n).await?;
                store
                    .put(n.name(path).as_str(), &mut bytes.as_ref())
                    .await
                    .map(drop)
                    .map_err(|e| self.fail(path, e))
            }
        }
    }

    /// The object at `path`.
    pub(crate) async fn get(&self, path: &str) -> Result<Bytes> {
        match &self.backend {
            Backend::Store { store, prefix, .. } => store
                .get(&child(prefix, path))
                .await
                .map_err(|e| self.fail(path, e))?
                .bytes()
                .await
                .map_err(|e| self.fail(path, e)),
            Backend::Nats(n) => {
                let store = self.nats(n).await?;
                let mut object = store
                    .get(n.name(path))
                    .await
                    .map_err(|e| self.fail(path, e))?;
                let mut out = Vec::with_capacity(object.info().size);
                object
                    .read_to_end(&mut out)
                    .await
                    .map_err(|e| self.fail(path, e))?;
                Ok(Bytes::from(out))
            }
        }
    }

    /// The paths of every object under `dir` (relative to the root).
    pub(crate) async fn list(&self, dir: &str) -> Result<Vec<String>> {
        match &self.backend {
            Backend::Store { store, prefix, .. } => {
                let under = child(prefix, dir);
                let mut out = Vec::new();
                let mut listing = store.list(Some(&under));
                while let Some(meta) = listing.try_next().await.map_err(|e| self.fail(dir, e))? {
                    if let Some(rel) = meta.location.prefix_match(prefix) {
                        out.push(
                            rel.map(|p| p.as_ref().to_string())
                                .collect::<Vec<_>>()
                                .join("/"),
                        );
                    }
                }
                Ok(out)
            }
            Backend::Nats(n) => {
                let store = self.nats(n).await?;
                let root = n.name("");
                let under = if dir.is_empty() {
                    root.clone()
                } else {
                    format!("{root}{dir}/")
                };
                let mut listing = store.list().await.map_err(|e| self.fail(dir, e))?;
                let mut out = Vec::new();
                while let Some(info) = listing.try_next().await.map_err(|e| self.fail(dir, e))? {
                    if !info.deleted
                        && info.name.starts_with(&under)
                        && let Some(rel) = info.name.strip_prefix(&root)
                    {
                        out.push(rel.to_string());
                    }
                }
                Ok(out)
            }
        }
    }

    /// Deletes every object under `dir` (and, on a local disk, the
    /// directory).
    pub(crate) async fn delete_all(&self, dir: &str) -> Result<()> {
        for path in self.list(dir).await? {
            self.delete(&path).await?;
        }
        if let Backend::Store {
            local: Some(root), ..
        } = &self.backend
        {
            match tokio::fs::remove_dir_all(root.join(dir)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(self.fail(dir, e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Deletes the object at `path` (no error when it is absent).
    pub(crate) async fn delete(&self, path: &str) -> Result<()> {
        match &self.backend {
            Backend::Store { store, prefix, .. } => {
                match store.delete(&child(prefix, path)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.fail(path, e)),
                }
            }
            Backend::Nats(n) => {
                let store = self.nats(n).await?;
                match store.delete(n.name(path)).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == nats::DeleteErrorKind::NotFound => Ok(()),
                    Err(e) => Err(self.fail(path, e)),
                }
            }
        }
    }
}

/// A local directory, created if needed.
fn local(location: &str, dir: &str) -> Result<Backend> {
    std::fs::create_dir_all(dir).map_err(|e| fail(location, "creating the directory", e))?;
    let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| fail(location, "opening", e))?;
    Ok(Backend::Store {
        store: Arc::new(store),
        prefix: ObjectPath::default(),
        local: Some(dir.into()),
    })
}

/// `path` (relative, `/`-separated) under `prefix`.
fn child(prefix: &ObjectPath, path: &str) -> ObjectPath {
    path.split('/')
        .filter(|p| !p.is_empty())
        .fold(prefix.clone(), |p, part| p.join(part))
}
