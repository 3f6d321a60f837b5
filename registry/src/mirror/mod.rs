//! Pull-through mirrors: repositories whose content is fetched from a remote registry when a client asks for
//! it, stored like any other, and served from storage afterwards (docs/mirror.md).
//!
//! - Manifests by digest are fetched once and kept; a tag is served from storage for the mirror's TTL after
//!   its last fetch or check, then checked with a `HEAD` to the remote (refetched when it moved). While the
//!   remote is unreachable, a stored tag is served stale, with a `Warning` header.
//! - A blob is fetched once however many clients ask for it at the same time ([`Fetch`]): the remote's bytes
//!   go to an unlinked spool file as they arrive, hashed on the way, and every client (ranges included) reads
//!   that file as it grows. The last byte is held back until the digest is checked, so no client completes a
//!   download of corrupt content, and only checked content is stored in the blob store.

pub mod remote;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::Method;
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::error::RegistryError;
use crate::metrics::Metrics;
use crate::oci::{Digest, Hasher, Reference, RepoName, Tag};
use crate::storage::ByteStream;
use crate::store::{RegistryStore, StoredManifest};
use remote::{read_limited, Remote, RemoteError, MANIFEST_ACCEPT};

/// How much of a blob is gathered before it is hashed, spooled and offered to clients.
const BATCH: usize = 256 * 1024;
/// Batches between the network and the spooler.
const PIPELINE: usize = 8;
/// The most a client's read of the spool takes at once.
const READ_CHUNK: u64 = 256 * 1024;
/// How long a blob request waits for one of the `proxy.max_fetches` slots before it is answered 429.
const SLOT_WAIT: Duration = Duration::from_secs(30);
/// Time limit of a remote manifest request (a blob's transfer has only the read timeout: it may be long).
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The `Warning` sent with a tag served while the remote could not be asked (RFC 7234's "Response is Stale").
pub const STALE_WARNING: &str = "110 berth \"Response is Stale\"";

/// One mirrored namespace.
pub struct Mirror {
    /// Local namespace; empty: the whole registry.
    pub prefix: String,
    /// The `ns` value it answers.
    pub namespace: String,
    /// See `proxy.ttl`.
    pub ttl: Duration,
    /// Docker Hub: a one-component name is one of its official images (`library/NAME`).
    hub: bool,
    remote: Remote,
}

impl Mirror {
    /// The remote's name of local repository `name`, when `name` is in this mirror.
    pub fn remote_name(&self, name: &str) -> Option<String> {
        let rest = if self.prefix.is_empty() {
            name
        } else {
            name.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?
        };
        if rest.is_empty() {
            return None;
        }
        Some(if self.hub && !rest.contains('/') {
            format!("library/{rest}")
        } else {
            rest.to_string()
        })
    }

    /// The remote's base URL.
    pub fn url(&self) -> &str {
        self.remote.base()
    }
}

/// Where a blob is served from.
pub enum BlobSource {
    /// Storage, with its size.
    Stored(u64),
    /// A fetch under way, with the blob's size.
    Fetching(Arc<Fetch>, u64),
    /// Only the remote's `HEAD` (for a `HEAD` request): the size.
    Remote(u64),
}

/// A manifest as a mirror serves it.
pub struct Served {
    /// The manifest.
    pub manifest: StoredManifest,
    /// Served from storage while the remote could not be asked.
    pub stale: bool,
}

/// What a fetch has got so far.
#[derive(Clone)]
enum Progress {
    Starting,
    /// `written` bytes are in the spool; `size` when the remote said it.
    Streaming {
        size: Option<u64>,
        written: u64,
    },
    /// All of it is in the spool and matches the digest.
    Verified {
        size: u64,
    },
    Failed(RemoteError),
}

/// One blob being fetched, shared by every client asking for it meanwhile.
pub struct Fetch {
    progress: watch::Sender<Progress>,
    spool: OnceLock<Arc<std::fs::File>>,
}

impl Fetch {
    /// The blob's size, once the remote said it (or once it is all here when the remote did not).
    pub async fn size(&self) -> Result<u64, RemoteError> {
        let mut rx = self.progress.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Streaming { size: Some(s), .. } | Progress::Verified { size: s } => {
                    return Ok(*s)
                }
                Progress::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(RemoteError::Unavailable(
                    "the fetch was abandoned".into(),
                    None,
                ));
            }
        }
    }

    /// Bytes `start..end` of the blob, as they arrive. Ends with an error when the fetch fails (a client then
    /// sees a truncated body). The last byte of the blob comes only once its digest is checked.
    pub fn read(self: Arc<Self>, start: u64, end: u64) -> ByteStream {
        let rx = self.progress.subscribe();
        Box::pin(futures_util::stream::unfold(
            (self, rx, start),
            move |(fetch, mut rx, pos)| async move {
                if pos >= end {
                    return None;
                }
                loop {
                    let avail = match &*rx.borrow_and_update() {
                        Progress::Starting => Ok(0),
                        Progress::Streaming { size, written } => {
                            Ok(size.map_or(0, |s| (*written).min(s.saturating_sub(1))))
                        }
                        Progress::Verified { size } => Ok(*size),
                        Progress::Failed(e) => Err(e.to_string()),
                    };
                    let avail = match avail {
                        Ok(a) => a,
                        Err(e) => {
                            return Some((Err(std::io::Error::other(e)), (fetch, rx, end)));
                        }
                    };
                    if pos < avail {
                        let Some(file) = fetch.spool.get().cloned() else {
                            return Some((
                                Err(std::io::Error::other("no spool file")),
                                (fetch, rx, end),
                            ));
                        };
                        let n = (avail.min(end) - pos).min(READ_CHUNK);
                        let read = tokio::task::spawn_blocking(move || {
                            let mut buf = vec![0u8; n as usize];
                            file.read_exact_at(&mut buf, pos).map(|_| buf)
                        })
                        .await
                        .map_err(std::io::Error::other)
                        .and_then(|r| r);
                        return Some(match read {
                            Ok(buf) => (Ok(Bytes::from(buf)), (fetch, rx, pos + n)),
                            Err(e) => (Err(e), (fetch, rx, end)),
                        });
                    }
                    if rx.changed().await.is_err() {
                        return Some((
                            Err(std::io::Error::other("the fetch was abandoned")),
                            (fetch, rx, end),
                        ));
                    }
                }
            },
        ))
    }
}

/// Ends a fetch task however it ends: out of the map, the gauge down, and a fetch that published no outcome
/// (its task panicked or was cancelled) failed, so that no reader waits for it.
struct Ended {
    mirrors: Arc<Mirrors>,
    key: String,
    fetch: Arc<Fetch>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        self.mirrors.forget(&self.key);
        self.mirrors.metrics.mirror_fetches.dec();
        self.fetch.progress.send_if_modified(|p| {
            if matches!(p, Progress::Starting | Progress::Streaming { .. }) {
                *p = Progress::Failed(RemoteError::Unavailable(
                    "the fetch ended without an outcome".into(),
                    None,
                ));
                true
            } else {
                false
            }
        });
    }
}

/// The registry's mirrors, and the fetches under way.
pub struct Mirrors {
    list: Vec<Arc<Mirror>>,
    slots: Semaphore,
    fetches: Mutex<HashMap<String, Arc<Fetch>>>,
    spool: PathBuf,
    store: RegistryStore,
    metrics: Arc<Metrics>,
    max_manifest: u64,
}

/// Why a mirror could not answer: the remote, or our own storage.
enum Failure {
    Remote(RemoteError),
    Local(RegistryError),
}

impl From<RemoteError> for Failure {
    fn from(e: RemoteError) -> Self {
        Failure::Remote(e)
    }
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Self {
        Failure::Local(e)
    }
}

fn digest_header(headers: &reqwest::header::HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v.trim()).ok())
}

impl Mirrors {
    /// The mirrors `config` sets up over `store`; `None` when there are none.
    pub fn new(config: &Config, store: RegistryStore) -> Result<Option<Arc<Mirrors>>, String> {
        let specs = config.mirror_specs();
        if specs.is_empty() {
            return Ok(None);
        }
        let tls = remote::tls_config(config.proxy.cafile.as_deref())
            .map_err(|e| format!("proxy.cafile: {e}"))?;
        let mut list = Vec::new();
        for s in specs {
            list.push(Arc::new(Mirror {
                hub: crate::config::is_docker_hub(&s.url),
                remote: Remote::new(&s.url, s.credentials, tls.clone())?,
                prefix: s.prefix,
                namespace: s.namespace,
                ttl: s.ttl,
            }));
        }
        let spool = config
            .proxy
            .spool_directory
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("berth-mirror-spool"));
        // On a filesystem a fetched blob is written straight into an upload's data file: no spool.
        if store.storage().local_path("").is_none() {
            std::fs::create_dir_all(&spool)
                .map_err(|e| format!("proxy.spool_directory: {}: {e}", spool.display()))?;
            // Its files are unlinked at once; checking that one can be made catches a bad folder early.
            tempfile::tempfile_in(&spool)
                .map_err(|e| format!("proxy.spool_directory: {}: {e}", spool.display()))?;
        }
        let metrics = Arc::clone(store.metrics());
        Ok(Some(Arc::new(Mirrors {
            list,
            slots: Semaphore::new(config.proxy.max_fetches.unwrap_or(16)),
            fetches: Mutex::new(HashMap::new()),
            spool,
            store,
            metrics,
            max_manifest: config.http.max_manifest_bytes.max(4 * 1024 * 1024),
        })))
    }

    /// The mirrors, in configuration order.
    pub fn list(&self) -> &[Arc<Mirror>] {
        &self.list
    }

    /// The mirror `name` is in, with the remote's name for it.
    pub fn find(&self, name: &RepoName) -> Option<(Arc<Mirror>, String)> {
        self.list
            .iter()
            .find_map(|m| m.remote_name(name.as_str()).map(|r| (Arc::clone(m), r)))
    }

    /// The mirror answering namespace `ns` (`?ns=`).
    pub fn by_namespace(&self, ns: &str) -> Option<&Arc<Mirror>> {
        self.list
            .iter()
            .find(|m| m.namespace.eq_ignore_ascii_case(ns))
    }

    fn count(&self, kind: &str, result: &str) {
        self.metrics
            .mirror_requests
            .with_label_values(&[kind, result])
            .inc();
    }

    /// Waits for one of the remote fetch slots.
    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, RemoteError> {
        match tokio::time::timeout(SLOT_WAIT, self.slots.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(RemoteError::TooManyRequests(Some("5".into()))),
        }
    }

    // ---- manifests ----

    /// A manifest of mirrored repository `name` (the remote's `remote`), from storage or the remote.
    pub async fn manifest(
        &self,
        mirror: &Mirror,
        remote: &str,
        name: &RepoName,
        r: &Reference,
    ) -> Result<Served, RegistryError> {
        let served = match r {
            Reference::Digest(d) => self.manifest_by_digest(mirror, remote, name, d).await,
            Reference::Tag(t) => self.manifest_by_tag(mirror, remote, name, t).await,
        };
        served.map_err(|f| {
            self.count("manifest", "error");
            match f {
                Failure::Remote(e) => {
                    tracing::warn!(repository = %name, remote = %mirror.url(), error = %e, "mirror: manifest fetch failed");
                    e.to_registry(false)
                }
                Failure::Local(e) => e,
            }
        })
    }

    async fn manifest_by_digest(
        &self,
        mirror: &Mirror,
        remote: &str,
        name: &RepoName,
        d: &Digest,
    ) -> Result<Served, Failure> {
        if let Some(m) = self.store.serve_manifest(name, d).await? {
            self.count("manifest", "hit");
            return Ok(Served {
                manifest: m,
                stale: false,
            });
        }
        let m = self
            .fetch_manifest(mirror, remote, name, &d.to_string(), Some(d), None)
            .await?;
        self.count("manifest", "miss");
        Ok(Served {
            manifest: m,
            stale: false,
        })
    }

    async fn manifest_by_tag(
        &self,
        mirror: &Mirror,
        remote: &str,
        name: &RepoName,
        t: &Tag,
    ) -> Result<Served, Failure> {
        let local = self.store.tag_with_time(name, t).await?;
        if let Some((d, Some(when))) = &local {
            let fresh = match SystemTime::now().duration_since(*when) {
                Ok(age) => age < mirror.ttl,
                Err(_) => true,
            };
            if fresh {
                if let Some(m) = self.store.serve_manifest(name, d).await? {
                    self.count("manifest", "hit");
                    return Ok(Served {
                        manifest: m,
                        stale: false,
                    });
                }
            }
        }
        let stale = |e: RemoteError| async move {
            if e.is_unreachable() {
                if let Some((d, _)) = &local {
                    if let Some(m) = self.store.serve_manifest(name, d).await? {
                        tracing::warn!(repository = %name, tag = %t, remote = %mirror.url(), error = %e, "mirror: remote unreachable, serving the stored tag");
                        self.count("manifest", "stale");
                        return Ok(Served {
                            manifest: m,
                            stale: true,
                        });
                    }
                }
            }
            Err(Failure::Remote(e))
        };
        let path = format!("/v2/{remote}/manifests/{t}");
        let head = mirror
            .remote
            .send(
                Method::HEAD,
                remote,
                &path,
                Some(MANIFEST_ACCEPT),
                Some(MANIFEST_TIMEOUT),
            )
            .await;
        let now = match head {
            Ok(resp) => digest_header(resp.headers()),
            Err(e) => return stale(e).await,
        };
        if let Some(now) = &now {
            // Unchanged, or moved to a manifest already here: the tag is (re)written, which restarts its TTL.
            if let Some(m) = self.store.serve_manifest(name, now).await? {
                self.store
                    .put_mirrored_manifest(name, Some(t), now, m.bytes.clone())
                    .await?;
                self.count("manifest", "revalidated");
                return Ok(Served {
                    manifest: m,
                    stale: false,
                });
            }
        }
        match self
            .fetch_manifest(mirror, remote, name, t.as_str(), now.as_ref(), Some(t))
            .await
        {
            Ok(m) => {
                self.count("manifest", "miss");
                Ok(Served {
                    manifest: m,
                    stale: false,
                })
            }
            Err(Failure::Remote(e)) => stale(e).await,
            Err(e) => Err(e),
        }
    }

    /// Fetches a manifest, checks it against `expected` (else the remote's `Docker-Content-Digest`), stores it
    /// and points `tag` at it.
    async fn fetch_manifest(
        &self,
        mirror: &Mirror,
        remote: &str,
        name: &RepoName,
        reference: &str,
        expected: Option<&Digest>,
        tag: Option<&Tag>,
    ) -> Result<StoredManifest, Failure> {
        let resp = mirror
            .remote
            .send(
                Method::GET,
                remote,
                &format!("/v2/{remote}/manifests/{reference}"),
                Some(MANIFEST_ACCEPT),
                Some(MANIFEST_TIMEOUT),
            )
            .await?;
        let said = digest_header(resp.headers());
        let bytes = read_limited(resp, self.max_manifest as usize)
            .await
            .map_err(|e| RemoteError::Unavailable(e, None))?;
        self.metrics.mirror_fetched_bytes.inc_by(bytes.len() as u64);
        let digest = match expected.or(said.as_ref()) {
            Some(e) => {
                let actual = Digest::of(e.algorithm(), &bytes);
                if &actual != e {
                    return Err(RemoteError::Corrupt(format!(
                        "manifest {reference} has digest {actual}, not {e}"
                    ))
                    .into());
                }
                actual
            }
            None => Digest::sha256_of(&bytes),
        };
        self.store
            .put_mirrored_manifest(name, tag, &digest, bytes.clone())
            .await?;
        tracing::info!(repository = %name, reference, digest = %digest, bytes = bytes.len(), "mirror: manifest fetched");
        Ok(StoredManifest {
            media_type: crate::store::detect_media_type(&bytes),
            bytes,
            digest,
        })
    }

    // ---- tags ----

    /// A page of the remote's tags of a mirrored repository (`n`, `last` as in the API), and whether the remote
    /// has more; `None` when the remote cannot be asked now (the caller lists what is stored).
    pub async fn tags(
        &self,
        mirror: &Mirror,
        remote: &str,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Option<(Vec<String>, bool)>, RegistryError> {
        let mut path = format!("/v2/{remote}/tags/list");
        let q = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            if let Some(l) = last {
                q.append_pair("last", l);
            }
            q.finish()
        };
        if !q.is_empty() {
            path = format!("{path}?{q}");
        }
        let resp = match mirror
            .remote
            .send(Method::GET, remote, &path, None, Some(MANIFEST_TIMEOUT))
            .await
        {
            Ok(r) => r,
            Err(RemoteError::NotFound) => return Err(RegistryError::NameUnknown),
            Err(e) if e.is_unreachable() => return Ok(None),
            Err(e) => return Err(e.to_registry(false)),
        };
        let more = resp.headers().contains_key(reqwest::header::LINK);
        let body = read_limited(resp, 16 * 1024 * 1024)
            .await
            .map_err(|e| RemoteError::Unavailable(e, None).to_registry(false))?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            RemoteError::Refused("the remote's tag list is not JSON".into()).to_registry(false)
        })?;
        let tags = v
            .get("tags")
            .and_then(|t| t.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str())
                    .filter(|t| t.parse::<Tag>().is_ok())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some((tags, more)))
    }

    // ---- blobs ----

    /// Where blob `d` of mirrored repository `name` is served from: storage, or a fetch (started here or
    /// joined). A `HEAD` of a blob not here asks the remote's `HEAD` only.
    pub async fn blob(
        self: &Arc<Self>,
        mirror: &Arc<Mirror>,
        remote: &str,
        name: &RepoName,
        d: &Digest,
        head: bool,
    ) -> Result<BlobSource, RegistryError> {
        // The fetches under way are looked at before the storage: a fetch leaves the map only once its blob is
        // stored, so a blob is either found here, or stored, or fetched by no one yet (never fetched twice).
        let key = format!("{name}@{d}");
        let joined = self
            .fetches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let failed = |e: RemoteError| {
            self.count("blob", "error");
            tracing::warn!(repository = %name, digest = %d, remote = %mirror.url(), error = %e, "mirror: blob fetch failed");
            e.to_registry(true)
        };
        if joined.is_none() {
            if let Some(size) = self.store.serve_blob_size(name, d).await? {
                self.count("blob", "hit");
                return Ok(BlobSource::Stored(size));
            }
            // Content another repository holds is linked here only once the remote says this repository has
            // it: pulling a mirror must not read what other repositories hold.
            if self.store.blob_size(d).await?.is_some() {
                let size = self
                    .remote_blob_size(mirror, remote, d)
                    .await
                    .map_err(failed)?;
                if self.store.link_blob(name, d).await? {
                    if let Some(stored) = self.store.blob_size(d).await? {
                        self.count("blob", "hit");
                        return Ok(BlobSource::Stored(stored));
                    }
                }
                if head {
                    self.count("blob", "miss");
                    return Ok(BlobSource::Remote(size));
                }
            }
        }
        if head && joined.is_none() {
            let size = self
                .remote_blob_size(mirror, remote, d)
                .await
                .map_err(failed)?;
            self.count("blob", "miss");
            return Ok(BlobSource::Remote(size));
        }
        let fetch = match joined {
            Some(f) => f,
            None => self.start_fetch(mirror, remote, name, d, key),
        };
        let size = fetch.size().await.map_err(failed)?;
        self.count("blob", "miss");
        Ok(BlobSource::Fetching(fetch, size))
    }

    /// The size of a blob of the remote's repository, from its `HEAD`.
    async fn remote_blob_size(
        &self,
        mirror: &Mirror,
        remote: &str,
        d: &Digest,
    ) -> Result<u64, RemoteError> {
        let resp = mirror
            .remote
            .send(
                Method::HEAD,
                remote,
                &format!("/v2/{remote}/blobs/{d}"),
                None,
                Some(MANIFEST_TIMEOUT),
            )
            .await?;
        resp.headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                RemoteError::Refused("the remote's HEAD of a blob has no Content-Length".into())
            })
    }

    /// The fetch of `d` into `name`, started unless one is under way already.
    fn start_fetch(
        self: &Arc<Self>,
        mirror: &Arc<Mirror>,
        remote: &str,
        name: &RepoName,
        d: &Digest,
        key: String,
    ) -> Arc<Fetch> {
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fetches.get(&key) {
            return Arc::clone(f);
        }
        let fetch = Arc::new(Fetch {
            progress: watch::channel(Progress::Starting).0,
            spool: OnceLock::new(),
        });
        fetches.insert(key.clone(), Arc::clone(&fetch));
        drop(fetches);
        let (this, mirror, remote, name, d, f) = (
            Arc::clone(self),
            Arc::clone(mirror),
            remote.to_string(),
            name.clone(),
            d.clone(),
            Arc::clone(&fetch),
        );
        tokio::spawn(async move {
            // Whatever ends this task (a panic included), the fetch leaves the map and its readers are told.
            let _ended = Ended {
                mirrors: Arc::clone(&this),
                key: key.clone(),
                fetch: Arc::clone(&f),
            };
            this.metrics.mirror_fetches.inc();
            let began = std::time::Instant::now();
            let result = this.run_fetch(&mirror, &remote, &name, &d, &f).await;
            // Out of the map before a failure is published: a client retrying at once starts a new fetch.
            this.forget(&key);
            match result {
                Ok(size) => tracing::info!(
                    repository = %name,
                    digest = %d,
                    bytes = size,
                    took_ms = began.elapsed().as_millis() as u64,
                    "mirror: blob fetched"
                ),
                Err(Failure::Remote(e)) => {
                    tracing::warn!(repository = %name, digest = %d, remote = %mirror.url(), error = %e, "mirror: blob fetch failed");
                    f.progress.send_replace(Progress::Failed(e));
                }
                Err(Failure::Local(e)) => {
                    tracing::warn!(repository = %name, digest = %d, error = %e, "mirror: fetched blob not stored");
                    f.progress.send_modify(|p| {
                        if !matches!(p, Progress::Verified { .. }) {
                            *p = Progress::Failed(RemoteError::Unavailable(
                                "the blob could not be stored".into(),
                                None,
                            ))
                        }
                    });
                }
            }
        });
        fetch
    }

    fn forget(&self, key: &str) {
        self.fetches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Fetches into the spool (hashing as it goes), then stores what matched the digest. On a filesystem the
    /// spool is the data file of an upload in `name`, committed by a rename once checked (no copy); what a
    /// failed fetch wrote there is removed with its upload.
    async fn run_fetch(
        &self,
        mirror: &Mirror,
        remote: &str,
        name: &RepoName,
        d: &Digest,
        fetch: &Arc<Fetch>,
    ) -> Result<u64, Failure> {
        let mut session = None;
        let result = self
            .fetch_into(mirror, remote, name, d, fetch, &mut session)
            .await;
        if let (Err(_), Some(s)) = (&result, &session) {
            if let Err(e) = self.store.cancel_upload(s).await {
                tracing::warn!(repository = %name, error = %e, "mirror: a failed fetch's upload was not removed");
            }
        }
        result
    }

    async fn fetch_into(
        &self,
        mirror: &Mirror,
        remote: &str,
        name: &RepoName,
        d: &Digest,
        fetch: &Arc<Fetch>,
        session: &mut Option<crate::store::UploadSession>,
    ) -> Result<u64, Failure> {
        let slot = self.slot().await?;
        let mut resp = mirror
            .remote
            .send(
                Method::GET,
                remote,
                &format!("/v2/{remote}/blobs/{d}"),
                None,
                None,
            )
            .await?;
        let size = resp.content_length();
        let storage = Arc::clone(self.store.storage());
        if let (Some(sp), Some(size)) = (storage.space().await.map_err(RegistryError::from)?, size)
        {
            if sp.available < sp.reserve.saturating_add(size) {
                return Err(RegistryError::StorageFull(format!(
                    "storage full: {} free, {} kept in reserve, the blob needs {}",
                    crate::storage::human_bytes(sp.available),
                    crate::storage::human_bytes(sp.reserve),
                    crate::storage::human_bytes(size)
                ))
                .into());
            }
        }
        let direct = storage.local_path("").is_some();
        let file = if direct {
            let s = self.store.start_upload(name).await?;
            let path = storage
                .local_path(&crate::paths::upload_data(&s.name, &s.id))
                .unwrap_or_default();
            *session = Some(s);
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| RegistryError::Internal(format!("{}: {e}", path.display())))?
        } else {
            tempfile::tempfile_in(&self.spool)
                .map_err(|e| RegistryError::Internal(format!("{}: {e}", self.spool.display())))?
        };
        let file = Arc::new(file);
        let _ = fetch.spool.set(Arc::clone(&file));
        fetch
            .progress
            .send_replace(Progress::Streaming { size, written: 0 });
        // The network is read here while another thread hashes and spools what came before (a few batches
        // in between): reading and decrypting overlap with hashing and writing.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(PIPELINE);
        let spooler = {
            let (file, fetch, metrics, mut hasher) = (
                Arc::clone(&file),
                Arc::clone(fetch),
                Arc::clone(&self.metrics),
                Hasher::new(d.algorithm()),
            );
            tokio::task::spawn_blocking(move || -> std::io::Result<(Hasher, u64)> {
                let mut written: u64 = 0;
                while let Some(bytes) = rx.blocking_recv() {
                    hasher.update(&bytes);
                    file.write_all_at(&bytes, written)?;
                    written += bytes.len() as u64;
                    metrics.mirror_fetched_bytes.inc_by(bytes.len() as u64);
                    fetch
                        .progress
                        .send_replace(Progress::Streaming { size, written });
                }
                Ok((hasher, written))
            })
        };
        let mut received: u64 = 0;
        let mut batch = BytesMut::new();
        let read = async {
            loop {
                let chunk = resp.chunk().await.map_err(|e| {
                    RemoteError::Unavailable(
                        format!(
                            "the transfer broke after {received} bytes: {}",
                            remote::error_chain(&e)
                        ),
                        None,
                    )
                })?;
                let done = chunk.is_none();
                if let Some(c) = chunk {
                    received += c.len() as u64;
                    if size.is_some_and(|s| received > s) {
                        return Err(RemoteError::Corrupt(format!(
                            "more bytes than the {} of its Content-Length",
                            size.unwrap_or_default()
                        )));
                    }
                    batch.extend_from_slice(&c);
                    if batch.len() < BATCH {
                        continue;
                    }
                }
                // A closed channel means the spooler failed: its error is read below.
                if !batch.is_empty() && tx.send(batch.split().freeze()).await.is_err() {
                    return Ok(());
                }
                if done {
                    return Ok(());
                }
            }
        }
        .await;
        drop(tx);
        let spooled = spooler
            .await
            .map_err(|e| RegistryError::Internal(e.to_string()))?
            .map_err(|e| RegistryError::Internal(format!("spool: {e}")));
        read?;
        let (hasher, written) = spooled?;
        drop(slot);
        if let Some(s) = size.filter(|s| *s != written) {
            return Err(RemoteError::Corrupt(format!(
                "the transfer ended after {written} of {s} bytes"
            ))
            .into());
        }
        let actual = hasher.finish();
        if &actual != d {
            return Err(RemoteError::Corrupt(format!(
                "the blob's content has digest {actual}, not {d}"
            ))
            .into());
        }
        fetch
            .progress
            .send_replace(Progress::Verified { size: written });
        match session.take() {
            Some(s) => {
                // Durable before the rename that makes it the blob (readers go on with the open file).
                let f = Arc::clone(&file);
                let synced = tokio::task::spawn_blocking(move || f.sync_data())
                    .await
                    .map_err(|e| RegistryError::Internal(e.to_string()))
                    .and_then(|r| r.map_err(|e| RegistryError::Internal(format!("sync: {e}"))));
                if let Err(e) = synced {
                    *session = Some(s);
                    return Err(e.into());
                }
                self.store.commit_fetched(&s, d, written).await?;
            }
            None => {
                let body = Arc::clone(fetch).read(0, written);
                self.store.ingest_blob(name, d, body).await?;
            }
        }
        Ok(written)
    }
}
