//! Registry semantics on top of a [`Storage`]: blobs and their links, upload sessions, manifests, tags,
//! the catalog and referrers, in registry:2's layout.
//!
//! Ordering rules that keep a crash harmless: blob content is committed before the link that makes it part
//! of a repository, and a manifest's content and revision link before the tag that points at it. Every
//! write of a link replaces it atomically.

pub mod gc;
pub mod retention;
mod uploads;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;

use crate::cache::{Invalidating, MetaCache};
use crate::error::RegistryError;
use crate::metrics::Metrics;
use crate::oci::{media, Algorithm, Digest, Hasher, Manifest, ManifestKind, RepoName, Tag};
use crate::paths;
use crate::storage::{ByteStream, ObjectMeta, Storage, StorageError};

pub use uploads::{BodyStream, UploadSession};

/// The largest link file read (a digest and a little slack).
const LINK_LIMIT: u64 = 1024;
/// The largest stored manifest served (registry:2 data may hold manifests larger than our push limit).
const STORED_MANIFEST_LIMIT: u64 = 32 * 1024 * 1024;
/// Media type of foreign layers, which are not stored in the registry.
const FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// A manifest as served.
pub struct StoredManifest {
    /// Exact bytes as pushed.
    pub bytes: Bytes,
    /// Media type, from the body or its structure.
    pub media_type: String,
    /// Canonical digest.
    pub digest: Digest,
}

/// The outcome of a manifest push.
pub struct PushedManifest {
    /// Digest of the stored bytes.
    pub digest: Digest,
    /// The `subject` the manifest refers to, if any.
    pub subject: Option<Digest>,
}

/// Registry semantics over one storage backend.
#[derive(Clone)]
pub struct RegistryStore {
    storage: Arc<dyn Storage>,
    uploads: Arc<uploads::UploadStates>,
    metrics: Arc<Metrics>,
    /// The metadata cache the read paths use, when on.
    cache: Option<Arc<MetaCache>>,
}

/// Whether a storage error means "absent".
fn absent<T>(r: Result<T, StorageError>) -> Result<Option<T>, RegistryError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The digest a link object holds.
fn parse_link(key: &str, bytes: &[u8]) -> Result<Option<Digest>, RegistryError> {
    let text = String::from_utf8_lossy(bytes);
    match Digest::parse(text.trim()) {
        Ok(d) => Ok(Some(d)),
        Err(_) => Err(RegistryError::Internal(format!(
            "{key}: link holds no valid digest"
        ))),
    }
}

/// Media type of stored manifest bytes, as registry:2 decides it: the `mediaType` field, else the structure.
pub fn detect_media_type(bytes: &[u8]) -> String {
    let v = crate::oci::json_lenient(bytes);
    if let Some(mt) = v.get("mediaType").and_then(|m| m.as_str()) {
        if !mt.is_empty() {
            return mt.to_string();
        }
    }
    if v.get("schemaVersion").and_then(|s| s.as_i64()) == Some(1) {
        return if v.get("signatures").is_some() {
            media::DOCKER_V1_SIGNED.to_string()
        } else {
            media::DOCKER_V1.to_string()
        };
    }
    if v.get("manifests").is_some() {
        media::OCI_INDEX.to_string()
    } else {
        media::OCI_MANIFEST.to_string()
    }
}

impl RegistryStore {
    /// A store over `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> RegistryStore {
        RegistryStore::with_metrics(storage, Arc::new(Metrics::new()))
    }

    /// A store over `storage` that keeps `metrics`' blob census and upload gauge up to date.
    pub fn with_metrics(storage: Arc<dyn Storage>, metrics: Arc<Metrics>) -> RegistryStore {
        RegistryStore {
            storage,
            uploads: Arc::new(uploads::UploadStates::default()),
            metrics,
            cache: None,
        }
    }

    /// This store with a metadata cache: its read paths (a blob's `HEAD` and `GET`, a tag, a manifest) ask
    /// `cache` first, and every write through [`RegistryStore::storage`] invalidates it.
    pub fn with_cache(mut self, cache: Arc<MetaCache>) -> RegistryStore {
        self.storage = Arc::new(Invalidating::new(self.storage, Arc::clone(&cache)));
        self.cache = Some(cache);
        self
    }

    /// The metadata cache, when on.
    pub fn cache(&self) -> Option<&Arc<MetaCache>> {
        self.cache.as_ref()
    }

    /// The size of the object at `key`, through the cache when on.
    async fn cached_size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match &self.cache {
            Some(c) => c.stat(self.storage.as_ref(), key).await,
            None => Ok(self.storage.stat(key).await?.map(|m| m.size)),
        }
    }

    /// A small object, through the cache when on.
    async fn cached_small(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        match &self.cache {
            Some(c) => c.read_small(self.storage.as_ref(), key, limit).await,
            None => self.storage.read_small(key, limit).await,
        }
    }

    /// The metrics this store keeps.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Upload sessions this process holds state for.
    pub fn upload_sessions(&self) -> usize {
        self.uploads.len()
    }

    /// Counts the blobs in the blob store (one walk) and sets the census to what it found.
    pub async fn count_blobs(&self) -> Result<(u64, u64), StorageError> {
        use std::sync::atomic::Ordering;
        let epoch = self.metrics.census_epoch.load(Ordering::SeqCst);
        let root = paths::blobs_root();
        let mut walk = self.storage.walk(&root);
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some((key, meta)) = walk.try_next().await? {
            if key.ends_with("/data") {
                n += 1;
                bytes += meta.size;
            }
        }
        // A collection that finished meanwhile counted more recently.
        if self.metrics.census_epoch.load(Ordering::SeqCst) == epoch {
            self.metrics.blobs.set(i64::try_from(n).unwrap_or(i64::MAX));
            self.metrics
                .blob_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        Ok((n, bytes))
    }

    /// The backend.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    async fn read_link(&self, key: &str) -> Result<Option<Digest>, RegistryError> {
        let Some(bytes) = absent(self.storage.read_small(key, LINK_LIMIT).await)? else {
            return Ok(None);
        };
        parse_link(key, &bytes)
    }

    /// [`RegistryStore::read_link`] through the cache, for read paths only.
    async fn read_link_cached(&self, key: &str) -> Result<Option<Digest>, RegistryError> {
        let Some(bytes) = absent(self.cached_small(key, LINK_LIMIT).await)? else {
            return Ok(None);
        };
        parse_link(key, &bytes)
    }

    async fn write_link(&self, key: &str, d: &Digest) -> Result<(), RegistryError> {
        Ok(self.storage.put(key, Bytes::from(d.to_string())).await?)
    }

    /// Whether the repository exists (has any content, links or uploads).
    pub async fn repo_exists(&self, name: &RepoName) -> Result<bool, RegistryError> {
        Ok(!self.storage.list(&paths::repo_dir(name)).await?.is_empty())
    }

    // ---- blobs ----

    /// Size of a blob in the blob store, whatever repository links it.
    pub async fn blob_size(&self, d: &Digest) -> Result<Option<u64>, RegistryError> {
        Ok(self
            .storage
            .stat(&paths::blob_data(d))
            .await?
            .map(|m| m.size))
    }

    /// Size of a blob that is part of `name` (linked into the repository and present), asked of the storage.
    pub async fn repo_blob_size(
        &self,
        name: &RepoName,
        d: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        if self
            .storage
            .stat(&paths::layer_link(name, d))
            .await?
            .is_none()
        {
            return Ok(None);
        }
        self.blob_size(d).await
    }

    /// [`RegistryStore::repo_blob_size`] through the metadata cache: for answering `HEAD` and `GET` only
    /// (what a write depends on is asked of the storage, which another replica may have changed).
    pub async fn serve_blob_size(
        &self,
        name: &RepoName,
        d: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        if self
            .cached_size(&paths::layer_link(name, d))
            .await?
            .is_none()
        {
            return Ok(None);
        }
        Ok(self.cached_size(&paths::blob_data(d)).await?)
    }

    /// Streams a blob, or a half-open byte range of it.
    pub async fn open_blob(
        &self,
        d: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, RegistryError> {
        match self.storage.read(&paths::blob_data(d), range).await {
            Ok(s) => Ok(s),
            Err(e) if e.is_not_found() => Err(RegistryError::BlobUnknown),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes a blob part of a repository if its content is present; returns whether it was. The link is
    /// written under a pin, so a running collector never leaves it pointing at deleted content (docs/gc.md).
    pub async fn link_blob(&self, name: &RepoName, d: &Digest) -> Result<bool, RegistryError> {
        let pin = gc::Pin::take_waiting(self.storage.as_ref(), d).await?;
        let linked = async {
            if self.blob_size(d).await?.is_none() {
                return Ok(false);
            }
            pin.check_fresh()?;
            self.write_link(&paths::layer_link(name, d), d).await?;
            Ok(true)
        }
        .await;
        pin.release(self.storage.as_ref()).await;
        linked
    }

    /// Mounts a blob into `name` from `from` (or from anywhere when `from` is `None`). Returns whether it did.
    pub async fn mount_blob(
        &self,
        name: &RepoName,
        d: &Digest,
        from: Option<&RepoName>,
    ) -> Result<bool, RegistryError> {
        let present = match from {
            Some(from) => self.repo_blob_size(from, d).await?.is_some(),
            None => self.blob_size(d).await?.is_some(),
        };
        Ok(present && self.link_blob(name, d).await?)
    }

    /// Removes a blob from a repository (the content stays for other repositories until garbage collection).
    pub async fn delete_blob(&self, name: &RepoName, d: &Digest) -> Result<(), RegistryError> {
        if self
            .storage
            .stat(&paths::layer_link(name, d))
            .await?
            .is_none()
        {
            return Err(RegistryError::BlobUnknown);
        }
        Ok(self.storage.delete(&paths::layer_dir(name, d)).await?)
    }

    /// Hashes a stored object with `algorithm`, streaming.
    pub(crate) async fn hash_object(
        &self,
        key: &str,
        algorithm: Algorithm,
    ) -> Result<Digest, RegistryError> {
        let mut stream = self.storage.read(key, None).await?;
        let mut hasher = Hasher::new(algorithm);
        while let Some(chunk) = stream.try_next().await? {
            hasher = tokio::task::spawn_blocking(move || {
                hasher.update(&chunk);
                hasher
            })
            .await
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        }
        Ok(hasher.finish())
    }

    // ---- manifests and tags ----

    /// Resolves a tag to the digest it points at.
    pub async fn resolve_tag(
        &self,
        name: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Digest>, RegistryError> {
        self.read_link(&paths::tag_current_link(name, tag)).await
    }

    /// [`RegistryStore::resolve_tag`] through the metadata cache, for answering pulls only.
    pub async fn serve_tag(
        &self,
        name: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Digest>, RegistryError> {
        self.read_link_cached(&paths::tag_current_link(name, tag))
            .await
    }

    /// Reads a manifest by digest, if it is a revision of the repository.
    pub async fn manifest_by_digest(
        &self,
        name: &RepoName,
        d: &Digest,
    ) -> Result<Option<StoredManifest>, RegistryError> {
        self.manifest_from(name, d, false).await
    }

    /// [`RegistryStore::manifest_by_digest`] through the metadata cache, for answering pulls only.
    pub async fn serve_manifest(
        &self,
        name: &RepoName,
        d: &Digest,
    ) -> Result<Option<StoredManifest>, RegistryError> {
        self.manifest_from(name, d, true).await
    }

    async fn manifest_from(
        &self,
        name: &RepoName,
        d: &Digest,
        cached: bool,
    ) -> Result<Option<StoredManifest>, RegistryError> {
        let (link, data) = (paths::revision_link(name, d), paths::blob_data(d));
        let linked = if cached {
            self.cached_size(&link).await?
        } else {
            self.storage.stat(&link).await?.map(|m| m.size)
        };
        if linked.is_none() {
            return Ok(None);
        }
        let read = if cached {
            self.cached_small(&data, STORED_MANIFEST_LIMIT).await
        } else {
            self.storage.read_small(&data, STORED_MANIFEST_LIMIT).await
        };
        let Some(bytes) = absent(read)? else {
            return Ok(None);
        };
        Ok(Some(StoredManifest {
            media_type: detect_media_type(&bytes),
            bytes,
            digest: d.clone(),
        }))
    }

    /// Validates and stores a manifest, then points `tag` at it when given.
    pub async fn put_manifest(
        &self,
        name: &RepoName,
        tag: Option<&Tag>,
        expected: Option<&Digest>,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> Result<PushedManifest, RegistryError> {
        let manifest =
            Manifest::parse(&bytes, content_type).map_err(RegistryError::ManifestInvalid)?;
        let digest = match expected {
            Some(e) => {
                let actual = Digest::of(e.algorithm(), &bytes);
                if &actual != e {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest digest {actual} does not match the reference {e}"
                    )));
                }
                actual
            }
            None => Digest::sha256_of(&bytes),
        };
        // The pin keeps a running collector away from what this push depends on (docs/gc.md).
        let mut deps = vec![digest.clone()];
        deps.extend(
            manifest
                .config
                .iter()
                .chain(manifest.references.iter())
                .filter_map(|d| Digest::parse(&d.digest).ok()),
        );
        // An index also depends on what its children reference (their config and layers, nested indexes):
        // all of it is pinned, and checked once pinned.
        let below = match manifest.kind {
            ManifestKind::Index => self.index_descendants(name, &manifest).await?,
            ManifestKind::Image => Vec::new(),
        };
        deps.extend(below.iter().cloned());
        let pin = gc::Pin::take(self.storage.as_ref(), &deps).await?;
        let stored = async {
            for d in &below {
                if self.blob_size(d).await?.is_none() {
                    return Err(RegistryError::ManifestBlobUnknown(d.to_string()));
                }
            }
            self.store_manifest(name, tag, &manifest, &digest, bytes, &pin)
                .await
        }
        .await;
        pin.release(self.storage.as_ref()).await;
        stored?;
        let subject = manifest
            .subject
            .as_ref()
            .and_then(|s| Digest::parse(&s.digest).ok());
        Ok(PushedManifest { digest, subject })
    }

    /// What an index needs below its direct children, read from the repository: each child's config and
    /// stored layers, and the children of nested indexes, with theirs. A child not in the repository adds
    /// nothing (the reference check rejects it).
    async fn index_descendants(
        &self,
        name: &RepoName,
        m: &Manifest,
    ) -> Result<Vec<Digest>, RegistryError> {
        let mut queue: Vec<Digest> = m
            .references
            .iter()
            .filter_map(|d| Digest::parse(&d.digest).ok())
            .collect();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while let Some(child) = queue.pop() {
            if !seen.insert(child.clone()) {
                continue;
            }
            if seen.len() > 10_000 {
                return Err(RegistryError::ManifestInvalid(
                    "the index names more than 10000 manifests below it".into(),
                ));
            }
            let Some(stored) = self.manifest_by_digest(name, &child).await? else {
                continue;
            };
            let refs = gc::references(&stored.bytes);
            out.extend(
                refs.blobs
                    .iter()
                    .filter(|b| !refs.foreign.contains(b))
                    .cloned(),
            );
            for c in refs.children {
                out.push(c.clone());
                queue.push(c);
            }
        }
        Ok(out)
    }

    // ---- mirrors ----

    /// A tag's digest and when its link was last written (for a mirror: its last fetch or check).
    pub async fn tag_with_time(
        &self,
        name: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(Digest, Option<std::time::SystemTime>)>, RegistryError> {
        let key = paths::tag_current_link(name, tag);
        let Some(meta) = self.storage.stat(&key).await? else {
            return Ok(None);
        };
        Ok(self.read_link(&key).await?.map(|d| (d, meta.modified)))
    }

    /// Stores a manifest a mirror fetched and checked against `digest`, and points `tag` at it. Unlike a push,
    /// what it references need not be here: a mirror fetches it when a client asks.
    pub async fn put_mirrored_manifest(
        &self,
        name: &RepoName,
        tag: Option<&Tag>,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        self.storage
            .create(&paths::mirror_marker(name), Bytes::new())
            .await?;
        let pin = gc::Pin::take_waiting(self.storage.as_ref(), digest).await?;
        let stored = async {
            pin.check_fresh()?;
            self.write_manifest(name, tag, digest, bytes).await
        }
        .await;
        pin.release(self.storage.as_ref()).await;
        stored
    }

    /// Checks a pinned manifest's references, then writes it: content, revision link, tag.
    async fn store_manifest(
        &self,
        name: &RepoName,
        tag: Option<&Tag>,
        manifest: &Manifest,
        digest: &Digest,
        bytes: Bytes,
        pin: &gc::Pin,
    ) -> Result<(), RegistryError> {
        self.check_references(name, manifest).await?;
        pin.check_fresh()?;
        self.write_manifest(name, tag, digest, bytes).await
    }

    /// Writes a pinned manifest, in the order that keeps a crash harmless: content, revision link, tag.
    async fn write_manifest(
        &self,
        name: &RepoName,
        tag: Option<&Tag>,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        if self.blob_size(digest).await? != Some(bytes.len() as u64) {
            let size = bytes.len() as u64;
            self.storage.put(&paths::blob_data(digest), bytes).await?;
            self.metrics.blob_added(size);
        }
        self.write_link(&paths::revision_link(name, digest), digest)
            .await?;
        if let Some(tag) = tag {
            self.write_link(&paths::tag_index_link(name, tag, digest), digest)
                .await?;
            self.write_link(&paths::tag_current_link(name, tag), digest)
                .await?;
        }
        Ok(())
    }

    async fn check_references(&self, name: &RepoName, m: &Manifest) -> Result<(), RegistryError> {
        let mut checked = HashSet::new();
        for desc in m.config.iter().chain(m.references.iter()) {
            if desc.media_type.as_deref() == Some(FOREIGN_LAYER)
                || !checked.insert(desc.digest.clone())
            {
                continue;
            }
            let d = Digest::parse(&desc.digest).map_err(|_| {
                RegistryError::ManifestInvalid(format!("invalid digest {}", desc.digest))
            })?;
            let present = match m.kind {
                ManifestKind::Image => self.repo_blob_size(name, &d).await?.is_some(),
                ManifestKind::Index => self
                    .storage
                    .stat(&paths::revision_link(name, &d))
                    .await?
                    .is_some(),
            };
            if !present {
                return Err(RegistryError::ManifestBlobUnknown(d.to_string()));
            }
        }
        Ok(())
    }

    /// Deletes a manifest revision and every tag pointing at it.
    pub async fn delete_manifest(&self, name: &RepoName, d: &Digest) -> Result<(), RegistryError> {
        if self
            .storage
            .stat(&paths::revision_link(name, d))
            .await?
            .is_none()
        {
            return Err(RegistryError::ManifestUnknown);
        }
        for tag in self.tags(name).await? {
            if self.resolve_tag(name, &tag).await?.as_ref() == Some(d) {
                self.storage.delete(&paths::tag_dir(name, &tag)).await?;
            }
        }
        Ok(self.storage.delete(&paths::revision_dir(name, d)).await?)
    }

    /// Deletes a tag (the manifest stays).
    pub async fn delete_tag(&self, name: &RepoName, tag: &Tag) -> Result<(), RegistryError> {
        if self.resolve_tag(name, tag).await?.is_none() {
            return Err(RegistryError::ManifestUnknown);
        }
        Ok(self.storage.delete(&paths::tag_dir(name, tag)).await?)
    }

    /// Tags of a repository, sorted; tag folders without a current link are not tags.
    pub async fn tags(&self, name: &RepoName) -> Result<Vec<Tag>, RegistryError> {
        let names = self.storage.list(&paths::tags_dir(name)).await?;
        Ok(names
            .into_iter()
            .filter_map(|n| n.parse::<Tag>().ok())
            .collect())
    }

    /// Tags of a repository strictly after `last`, sorted, at most `n`, and whether more follow. Only the
    /// page is parsed; where it starts is found by binary search in the (cached) listing.
    pub async fn tags_page(
        &self,
        name: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        let names = self.storage.list_shared(&paths::tags_dir(name)).await?;
        let start = last.map_or(0, |l| names.partition_point(|x| x.as_str() <= l));
        let mut tags = names[start..]
            .iter()
            .filter(|t| t.parse::<Tag>().is_ok())
            .take(n.map_or(usize::MAX, |n| n.saturating_add(1)))
            .cloned()
            .collect::<Vec<_>>();
        let more = n.is_some_and(|n| n > 0 && tags.len() > n);
        if let Some(n) = n {
            tags.truncate(n);
        }
        Ok((tags, more))
    }

    /// A small blob's bytes (an image config) if it is in the blob store, through the metadata cache: for the
    /// browsing view only, which shows what a config says.
    pub async fn serve_small_blob(
        &self,
        d: &Digest,
        limit: u64,
    ) -> Result<Option<Bytes>, RegistryError> {
        absent(self.cached_small(&paths::blob_data(d), limit).await)
    }

    /// When each tag's link was last written (its last push), `None` where the tag went meanwhile. On a
    /// filesystem each is a `stat` on the request's thread. Elsewhere a few are asked 32 at a time, and many
    /// are read from one listing of the tags folder (on S3, a request per thousand objects instead of one per
    /// tag).
    pub async fn tag_times(
        &self,
        name: &RepoName,
        tags: &[String],
    ) -> Result<Vec<Option<std::time::SystemTime>>, RegistryError> {
        /// More tags than this, on storage that is no filesystem, are read from a listing.
        const LIST_ABOVE: usize = 16;
        let dir = paths::tags_dir(name);
        if tags.len() > LIST_ABOVE && self.storage.local_path(&dir).is_none() {
            let prefix = format!("{dir}/");
            let mut found = std::collections::HashMap::new();
            let mut objects = self.storage.walk(&dir);
            while let Some((key, meta)) = objects.try_next().await? {
                if let Some(tag) = key
                    .strip_prefix(&prefix)
                    .and_then(|k| k.strip_suffix("/current/link"))
                {
                    found.insert(tag.to_string(), meta.modified);
                }
            }
            return Ok(tags
                .iter()
                .map(|t| found.get(t.as_str()).copied().flatten())
                .collect());
        }
        let mut times = Vec::with_capacity(tags.len());
        for chunk in tags.chunks(32) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|t| format!("{dir}/{t}/current/link"))
                .collect();
            let metas =
                futures_util::future::join_all(keys.iter().map(|k| self.storage.stat(k))).await;
            for m in metas {
                times.push(m?.and_then(|m: ObjectMeta| m.modified));
            }
        }
        Ok(times)
    }

    /// Every tag name of a repository, sorted, from the (cached) listing; names that are no tags left out.
    pub async fn tag_names(&self, name: &RepoName) -> Result<Arc<[String]>, RegistryError> {
        let names = self.storage.list_shared(&paths::tags_dir(name)).await?;
        if names.iter().all(|t| t.parse::<Tag>().is_ok()) {
            return Ok(names);
        }
        Ok(names
            .iter()
            .filter(|t| t.parse::<Tag>().is_ok())
            .cloned()
            .collect())
    }

    /// Every repository name, sorted: folders under `repositories/` that hold `_manifests`.
    pub async fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        self.catalog_of(None).await
    }

    /// Every repository name `filter` allows, sorted.
    pub async fn catalog_of(
        &self,
        filter: Option<&berth_glob::RepoFilter>,
    ) -> Result<Vec<String>, RegistryError> {
        Ok(self.catalog_page_of(None, None, filter).await?.0)
    }

    /// Repository names strictly after `last`, sorted, at most `n`, and whether more follow.
    ///
    /// The walk lists one folder level at a time (a delimiter listing on S3) in name order, skips every
    /// subtree that sorts wholly before `last`, and stops once it has one name more than the page. A listed
    /// folder is read through a cursor that yields its children one at a time as the merge needs them, and a
    /// cursor starts at `last` by binary search, so a page costs about `n` listings plus the depth of the
    /// tree, and no work in proportion to the size of the folders it passes through (the filesystem backend
    /// keeps large listings cached).
    pub async fn catalog_page(
        &self,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        self.catalog_page_of(n, last, None).await
    }

    /// [`RegistryStore::catalog_page`] over the names `filter` allows (all when `None`): a page holds up to `n`
    /// allowed names, and `more` says whether another allowed name follows.
    pub async fn catalog_page_of(
        &self,
        n: Option<usize>,
        last: Option<&str>,
        filter: Option<&berth_glob::RepoFilter>,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        use std::cmp::{Ordering, Reverse};
        use std::collections::BinaryHeap;

        /// A name found, or the next child of a listed folder; every name inside a folder sorts at or after
        /// the folder's own path, so popping in path order yields names in order.
        enum Entry {
            Repo(String),
            Child {
                path: String,
                parent: Arc<str>,
                children: Arc<[String]>,
                at: usize,
            },
        }
        impl Entry {
            fn key(&self) -> &str {
                match self {
                    Entry::Repo(k) | Entry::Child { path: k, .. } => k,
                }
            }
        }
        struct ByKey(Entry);
        impl Ord for ByKey {
            fn cmp(&self, o: &Self) -> Ordering {
                // A repository before the folder of the same path (its sub-repositories sort after it).
                self.0.key().cmp(o.0.key()).then_with(|| {
                    matches!(o.0, Entry::Repo(_)).cmp(&matches!(self.0, Entry::Repo(_)))
                })
            }
        }
        impl PartialOrd for ByKey {
            fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
                Some(self.cmp(o))
            }
        }
        impl PartialEq for ByKey {
            fn eq(&self, o: &Self) -> bool {
                self.cmp(o) == Ordering::Equal
            }
        }
        impl Eq for ByKey {}

        /// The first child of `parent` at or after `from` that is a folder to walk: not `_`-prefixed and not
        /// wholly before `last`.
        fn next_child(
            parent: Arc<str>,
            children: Arc<[String]>,
            mut at: usize,
            last: Option<&str>,
        ) -> Option<Entry> {
            while let Some(child) = children.get(at) {
                if !child.starts_with('_') {
                    let path = if parent.is_empty() {
                        child.clone()
                    } else {
                        format!("{parent}/{child}")
                    };
                    // Everything under `path` (itself, then `path/...`) sorts before `last` unless `last`
                    // continues `path` with '/' or a byte below it ("lib/y" sorts after "lib-x", but before
                    // "lib2").
                    let before = last.is_some_and(|l| {
                        path.as_str() < l
                            && !(l.starts_with(path.as_str())
                                && l.as_bytes().get(path.len()).is_some_and(|&c| c <= b'/'))
                    });
                    if !before {
                        return Some(Entry::Child {
                            path,
                            parent,
                            children,
                            at,
                        });
                    }
                }
                at += 1;
            }
            None
        }

        let want = n.map(|n| n.saturating_add(1));
        if want == Some(1) {
            return Ok((Vec::new(), false));
        }
        let root = paths::repositories_root();
        let mut out = Vec::new();
        let mut heap = BinaryHeap::new();
        // Lists `rel` and pushes its repository (when it is one) and its first child to walk.
        let expand = async |rel: String, heap: &mut BinaryHeap<Reverse<ByKey>>| {
            let dir = if rel.is_empty() {
                root.clone()
            } else {
                format!("{root}/{rel}")
            };
            let children = self.storage.list_shared(&dir).await?;
            if !rel.is_empty()
                && children
                    .binary_search_by(|c| c.as_str().cmp("_manifests"))
                    .is_ok()
            {
                heap.push(Reverse(ByKey(Entry::Repo(rel.clone()))));
            }
            // Children whose name sorts before the part of `last` below `rel` hold nothing after `last`,
            // except names that `last` starts with, which come no earlier than that part's first segment.
            let below = match last {
                Some(l) if rel.is_empty() => Some(l),
                Some(l) => l
                    .strip_prefix(rel.as_str())
                    .and_then(|r| r.strip_prefix('/')),
                None => None,
            };
            let from = below.map_or(0, |b| {
                let first = b.split('/').next().unwrap_or(b);
                let mut from = children.partition_point(|c| c.as_str() < first);
                // A child named by a proper prefix of that segment, followed in it by a byte below '/', can
                // still hold later names ("lib/x" sorts after "lib-x"); the shortest one present sorts first.
                for (i, _) in first.char_indices().skip(1) {
                    if first.as_bytes()[i] >= b'/' {
                        continue;
                    }
                    if let Ok(at) = children.binary_search_by(|c| c.as_str().cmp(&first[..i])) {
                        from = from.min(at);
                        break;
                    }
                }
                from
            });
            if let Some(e) = next_child(Arc::from(rel), children, from, last) {
                heap.push(Reverse(ByKey(e)));
            }
            Ok::<_, RegistryError>(())
        };
        expand(String::new(), &mut heap).await?;
        while let Some(Reverse(ByKey(entry))) = heap.pop() {
            match entry {
                Entry::Repo(name) => {
                    if last.is_none_or(|l| name.as_str() > l)
                        && filter.is_none_or(|f| f.allows(&name))
                        && name.parse::<RepoName>().is_ok()
                    {
                        out.push(name);
                        if want.is_some_and(|w| out.len() >= w) {
                            break;
                        }
                    }
                }
                Entry::Child {
                    path,
                    parent,
                    children,
                    at,
                } => {
                    if let Some(e) = next_child(parent, children, at + 1, last) {
                        heap.push(Reverse(ByKey(e)));
                    }
                    expand(path, &mut heap).await?;
                }
            }
        }
        let more = want.is_some_and(|w| out.len() >= w);
        if more {
            out.pop();
        }
        Ok((out, more))
    }

    /// Descriptors of the manifests in `name` whose `subject` is `subject`, optionally of one artifact type.
    pub async fn referrers(
        &self,
        name: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<serde_json::Value>, RegistryError> {
        let mut out = Vec::new();
        for alg in ["sha256", "sha512"] {
            for hex in self.storage.list(&paths::revisions_dir(name, alg)).await? {
                let Ok(d) = Digest::parse(&format!("{alg}:{hex}")) else {
                    continue;
                };
                let Some(m) = self.manifest_by_digest(name, &d).await? else {
                    continue;
                };
                let Ok(parsed) = Manifest::parse(&m.bytes, None) else {
                    continue;
                };
                let Some(s) = &parsed.subject else { continue };
                if s.digest != subject.to_string() {
                    continue;
                }
                let at = parsed.referrer_artifact_type();
                if let Some(want) = artifact_type {
                    if at.as_deref() != Some(want) {
                        continue;
                    }
                }
                let mut desc = serde_json::json!({
                    "mediaType": m.media_type,
                    "digest": d.to_string(),
                    "size": m.bytes.len(),
                });
                if let Some(at) = at {
                    desc["artifactType"] = at.into();
                }
                if let Some(a) = parsed.annotations {
                    desc["annotations"] = serde_json::Value::Object(a);
                }
                out.push(desc);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(sorted: &[String], n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
        let start = last.map_or(0, |l| sorted.partition_point(|x| x.as_str() <= l));
        let rest = &sorted[start..];
        match n {
            Some(n) if n < rest.len() => (rest[..n].to_vec(), n > 0),
            _ => (rest.to_vec(), false),
        }
    }

    /// Tag pages are slices of the sorted tags; names that are not tags are skipped; large tag folders
    /// (served from the listing cache) page the same way.
    #[tokio::test]
    async fn tag_pages_are_slices_of_the_sorted_tags() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::storage::fs::FsStorage::new(dir.path()).unwrap());
        let store = RegistryStore::new(storage.clone());
        for (repo, count) in [("small", 4), ("large", 300)] {
            let name: RepoName = repo.parse().unwrap();
            let tags_dir = dir.path().join(paths::tags_dir(&name));
            let mut sorted = Vec::new();
            for i in 0..count {
                let tag = if count == 4 {
                    ["a", "b", "c", "d"][i].to_string()
                } else {
                    format!("v{i:03}")
                };
                std::fs::create_dir_all(tags_dir.join(&tag).join("current")).unwrap();
                sorted.push(tag);
            }
            // Not a tag name: never listed.
            std::fs::create_dir_all(tags_dir.join("-x")).unwrap();
            let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
            std::fs::File::open(&tags_dir)
                .unwrap()
                .set_modified(past)
                .unwrap();
            let lasts = [
                None,
                Some("b"),
                Some("bb"),
                Some("d"),
                Some("v149"),
                Some("v299"),
            ];
            for n in [
                None,
                Some(0),
                Some(1),
                Some(2),
                Some(10),
                Some(100),
                Some(1000),
            ] {
                for last in lasts {
                    let got = store.tags_page(&name, n, last).await.unwrap();
                    assert_eq!(got, slice(&sorted, n, last), "{repo} n={n:?} last={last:?}");
                }
            }
        }
    }

    /// With a large root folder (listing cached, cursors started by binary search), catalog pages are still
    /// the slices of the sorted names, including names under folders named by a prefix of `last`'s first
    /// segment (`lib/y` sorts after `lib-x`); a repository berth creates shows at once.
    #[tokio::test]
    async fn catalog_pages_from_a_large_cached_root() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::storage::fs::FsStorage::new(dir.path()).unwrap());
        let store = RegistryStore::new(storage.clone());
        let root = dir.path().join(paths::repositories_root());
        let mut sorted: Vec<String> = (0..300).map(|i| format!("r{i:03}")).collect();
        sorted.extend(["lib", "lib-x", "lib.a", "lib/y", "lib/y/z", "lib_b"].map(String::from));
        for n in &sorted {
            std::fs::create_dir_all(root.join(n).join("_manifests")).unwrap();
        }
        sorted.sort();
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::open(&root)
            .unwrap()
            .set_modified(past)
            .unwrap();
        let lasts = [
            None,
            Some("lib"),
            Some("lib-x"),
            Some("lib-"),
            Some("lib.a"),
            Some("lib/y"),
            Some("lib/y/z"),
            Some("lib_b"),
            Some("lib0"),
            Some("lib/y-"),
            Some("r150"),
            Some("r299"),
            Some("a"),
            Some("zzz"),
        ];
        for n in [
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(3),
            Some(100),
            Some(1000),
        ] {
            for last in lasts {
                let got = store.catalog_page(n, last).await.unwrap();
                assert_eq!(got, slice(&sorted, n, last), "n={n:?} last={last:?}");
            }
        }
        let name: RepoName = "r1000".parse().unwrap();
        storage
            .put(
                &format!("{}/_manifests/tags/t/current/link", paths::repo_dir(&name)),
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
        std::fs::File::open(&root)
            .unwrap()
            .set_modified(past)
            .unwrap();
        let (page, _) = store.catalog_page(Some(2), Some("r099")).await.unwrap();
        assert_eq!(page, ["r100", "r1000"]);
    }

    /// Pages of the catalog, whatever `n` and `last`, are the slices of the sorted list of names, even
    /// where the folder walk order differs from the name order (`a/x` sorts after `a-b`).
    #[tokio::test]
    async fn catalog_pages_are_slices_of_the_sorted_names() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::storage::fs::FsStorage::new(dir.path()).unwrap());
        let store = RegistryStore::new(storage.clone());
        let names = [
            "a", "a-b", "a.c", "a/x", "a/x/y", "a/x-z", "a_d", "b", "b/c/d", "zz",
        ];
        let d = Digest::sha256_of(b"x");
        for n in names {
            let name: RepoName = n.parse().unwrap();
            store.link_blob(&name, &d).await.unwrap();
            storage
                .put(
                    &format!("{}/_manifests/tags/t/current/link", paths::repo_dir(&name)),
                    Bytes::from(d.to_string()),
                )
                .await
                .unwrap();
        }
        // A folder with uploads only is not a repository.
        storage
            .put(
                "docker/registry/v2/repositories/b/c/_uploads/u/startedat",
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
        let mut sorted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        sorted.sort();
        assert_eq!(store.catalog().await.unwrap(), sorted);
        for n in 0..=sorted.len() + 1 {
            let lasts = std::iter::once(None).chain(sorted.iter().map(|s| Some(s.as_str())));
            for last in lasts.chain([
                Some("a/"),
                Some("a/x/"),
                Some("0"),
                Some("zzz"),
                Some("a0"),
                Some("a/x0"),
                Some("a/x-"),
                Some("a/w"),
            ]) {
                let start = last.map_or(0, |l| sorted.partition_point(|x| x.as_str() <= l));
                let rest = &sorted[start..];
                let (want, more) = if n < rest.len() {
                    (rest[..n].to_vec(), n > 0)
                } else {
                    (rest.to_vec(), false)
                };
                let got = store.catalog_page(Some(n), last).await.unwrap();
                assert_eq!(got, (want, more), "n={n} last={last:?}");
            }
        }
    }
}
