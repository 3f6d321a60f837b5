//! The S3 backend: objects in an S3-compatible bucket under an optional root prefix, registry:2's layout
//! (keys are `<root>/docker/registry/v2/...`, the same keys registry:2's S3 driver writes).
//!
//! S3 cannot append, and upload sessions must work from several replicas at once, so an append object (upload
//! data) is a set of *part objects* next to its key:
//!
//! ```text
//! <key>!parts/00000000000000000000     first part (an empty one marks an empty append object)
//! <key>!parts/00000000000010485760     the part that starts at byte 10485760
//! ```
//!
//! Each part is written by one plain `PUT` of at most `chunk_size` bytes, so a part is either whole or absent.
//! An append object's content is the contiguous run of parts from offset 0 (`stat` lists and sums them,
//! `read` concatenates them, with ranged `GET`s for a range); a part after a gap (left by a writer that died
//! between two parts) is not part of the object and is removed by the next writer. `!` never appears in the
//! keys made by [`crate::paths`], so `<key>!parts` cannot clash with a real key; `list` shows it as `<key>`.
//!
//! `rename` of an append object streams its parts in order into a multipart upload of the destination
//! (parts of `chunk_size`, two in flight), completes it (S3 makes the object visible atomically), then
//! removes the parts: no server-side copy of a large object and never the whole object in memory. An
//! object of a single part is copied server-side (it is at most `chunk_size` bytes).
//!
//! Because every piece of session state is in the bucket, a session started on one replica can be
//! appended to on another and committed on either.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    WriteMultipart,
};
use tokio::task::JoinHandle;

use super::{AppendWriter, ByteStream, ObjectMeta, ObjectStream, Storage, StorageError};

/// Suffix of the folder holding an append object's parts.
const PARTS_SUFFIX: &str = "!parts";
/// Digits of a part's offset in its name (sorts like the number).
const OFFSET_DIGITS: usize = 20;
/// Part uploads in flight per writer, on top of the part being filled.
const PARTS_IN_FLIGHT: usize = 1;
/// Multipart part uploads in flight during a rename.
const RENAME_IN_FLIGHT: usize = 2;
/// Largest chunk handed out by `read` (bigger chunks from the client are sliced, without copying).
const READ_CHUNK: usize = 256 * 1024;
/// The smallest part S3 accepts in a multipart upload (except the last).
pub const MIN_CHUNK_SIZE: u64 = 5 * 1024 * 1024;
/// The largest part S3 accepts.
pub const MAX_CHUNK_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// How to reach the bucket.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Bucket name.
    pub bucket: String,
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Endpoint URL of an S3-compatible service (`http://127.0.0.1:9000`); AWS when `None`.
    pub endpoint: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted ones.
    pub force_path_style: bool,
    /// Allow plain HTTP to the endpoint.
    pub allow_http: bool,
    /// Key prefix under which `docker/registry/v2` lives; empty for the bucket root.
    pub root_directory: String,
    /// Static credentials; when `None`, the AWS environment, web identity or instance metadata are used.
    pub access_key: Option<String>,
    /// Secret of `access_key`.
    pub secret_key: Option<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// Size of each upload part and each multipart part, in bytes (>= 5 MiB).
    pub chunk_size: u64,
}

/// S3 storage (any S3-compatible service).
#[derive(Debug, Clone)]
pub struct S3Storage {
    store: Arc<dyn ObjectStore>,
    /// Root prefix without leading or trailing `/`.
    root: String,
    chunk_size: usize,
}

/// Slices the chunks of a stream to at most [`READ_CHUNK`] bytes each.
fn rechunk(s: ByteStream) -> ByteStream {
    Box::pin(
        s.map_ok(|b| {
            let pieces: Vec<std::io::Result<Bytes>> = (0..b.len())
                .step_by(READ_CHUNK)
                .map(|i| Ok(b.slice(i..b.len().min(i + READ_CHUNK))))
                .collect();
            stream::iter(pieces)
        })
        .try_flatten(),
    )
}

fn other(key: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(key.to_string(), std::io::Error::other(e.to_string()))
}

fn os_err(key: &str, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_string()),
        e => StorageError::Io(key.to_string(), std::io::Error::other(e)),
    }
}

/// One part of an append object.
#[derive(Debug, Clone)]
struct Part {
    location: Path,
    offset: u64,
    size: u64,
    modified: std::time::SystemTime,
}

/// The parts of an append object: the contiguous run from offset 0, and what lies after a gap.
#[derive(Debug, Default)]
struct Parts {
    run: Vec<Part>,
    stale: Vec<Path>,
}

impl Parts {
    fn size(&self) -> u64 {
        self.run.last().map(|p| p.offset + p.size).unwrap_or(0)
    }
    /// When the object was last appended to.
    fn modified(&self) -> Option<std::time::SystemTime> {
        self.run.iter().map(|p| p.modified).max()
    }
}

impl S3Storage {
    /// Storage over the bucket described by `o` (no request is made until used).
    pub fn new(o: &S3Options) -> Result<S3Storage, StorageError> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&o.bucket)
            .with_region(&o.region)
            .with_virtual_hosted_style_request(!o.force_path_style)
            .with_allow_http(o.allow_http);
        if let Some(e) = &o.endpoint {
            b = b.with_endpoint(e);
        }
        if let (Some(k), Some(s)) = (&o.access_key, &o.secret_key) {
            b = b.with_access_key_id(k).with_secret_access_key(s);
            if let Some(t) = &o.session_token {
                b = b.with_token(t);
            }
        }
        let store = b.build().map_err(|e| other(&o.bucket, e))?;
        Ok(S3Storage::with_store(
            Arc::new(store),
            &o.root_directory,
            o.chunk_size,
        ))
    }

    /// Storage over any [`ObjectStore`] (tests use this with the in-memory store).
    pub fn with_store(store: Arc<dyn ObjectStore>, root: &str, chunk_size: u64) -> S3Storage {
        S3Storage {
            store,
            root: root.trim_matches('/').to_string(),
            chunk_size: chunk_size.clamp(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE) as usize,
        }
    }

    fn path(&self, key: &str) -> Path {
        match (self.root.is_empty(), key.is_empty()) {
            (true, _) => Path::from(key),
            (false, true) => Path::from(self.root.as_str()),
            (false, false) => Path::from(format!("{}/{key}", self.root).as_str()),
        }
    }

    fn parts_prefix(&self, key: &str) -> Path {
        self.path(&format!("{key}{PARTS_SUFFIX}"))
    }

    fn part_path(&self, key: &str, offset: u64) -> Path {
        self.path(&format!(
            "{key}{PARTS_SUFFIX}/{offset:0width$}",
            width = OFFSET_DIGITS
        ))
    }

    /// Lists the parts of an append object.
    async fn parts(&self, key: &str) -> Result<Parts, StorageError> {
        let prefix = self.parts_prefix(key);
        let mut found: Vec<Part> = self
            .store
            .list(Some(&prefix))
            .map_err(|e| os_err(key, e))
            .try_filter_map(|m| async move {
                let offset = m.location.filename().and_then(|f| {
                    (f.len() == OFFSET_DIGITS)
                        .then(|| f.parse::<u64>().ok())
                        .flatten()
                });
                Ok(offset.map(|offset| Part {
                    location: m.location,
                    offset,
                    size: m.size,
                    modified: m.last_modified.into(),
                }))
            })
            .try_collect()
            .await?;
        found.sort_by_key(|p| p.offset);
        let mut parts = Parts::default();
        let mut next = 0u64;
        for p in found {
            if parts.stale.is_empty() && p.offset == next {
                next += p.size;
                parts.run.push(p);
            } else {
                parts.stale.push(p.location);
            }
        }
        Ok(parts)
    }

    /// Removes every object in `paths` (bulk deletes).
    async fn delete_paths(&self, key: &str, paths: Vec<Path>) -> Result<(), StorageError> {
        if paths.is_empty() {
            return Ok(());
        }
        let input = stream::iter(paths.into_iter().map(Ok)).boxed();
        self.store
            .delete_stream(input)
            .try_for_each(|_| async { Ok(()) })
            .await
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(()),
                e => Err(os_err(key, e)),
            })
    }

    /// Every object under the folder `prefix` (recursive).
    async fn all_under(&self, key: &str, prefix: &Path) -> Result<Vec<Path>, StorageError> {
        self.store
            .list(Some(prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| os_err(key, e))
    }

    /// Streams `start..end` of a plain object with one (ranged) `GET`; `None` when the object is absent.
    async fn read_plain(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<ByteStream>, StorageError> {
        let opts = GetOptions::new().with_range(range.map(|(s, e)| GetRange::Bounded(s..e)));
        match self.store.get_opts(&self.path(key), opts).await {
            Ok(r) => {
                if let Some((s, e)) = range {
                    if r.range != (s..e) {
                        return Err(StorageError::InvalidRange);
                    }
                }
                let k = key.to_string();
                Ok(Some(rechunk(Box::pin(r.into_stream().map_err(move |e| {
                    std::io::Error::other(format!("{k}: {e}"))
                })))))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => match range {
                // A range starting at or after the end is refused by the service; say so plainly.
                Some((_, end)) => match self.stat(key).await? {
                    Some(m) if end > m.size => Err(StorageError::InvalidRange),
                    _ => Err(os_err(key, e)),
                },
                None => Err(os_err(key, e)),
            },
        }
    }

    /// Streams `start..end` of an append object, one ranged `GET` per part, opened one after the other.
    fn read_parts(&self, key: &str, parts: Parts, start: u64, end: u64) -> ByteStream {
        let store = self.store.clone();
        let slices: Vec<(Path, u64, u64)> = parts
            .run
            .into_iter()
            .filter(|p| p.offset + p.size > start && p.offset < end && p.size > 0)
            .map(|p| {
                let s = start.max(p.offset) - p.offset;
                let e = end.min(p.offset + p.size) - p.offset;
                (p.location, s, e)
            })
            .collect();
        let key = key.to_string();
        let s = stream::iter(slices)
            .then(move |(location, s, e)| {
                let store = store.clone();
                let key = key.clone();
                async move {
                    let opts = GetOptions::new().with_range(Some(GetRange::Bounded(s..e)));
                    let r = store.get_opts(&location, opts).await.map_err(|err| {
                        std::io::Error::other(format!("{key}: part {location}: {err}"))
                    })?;
                    if r.range != (s..e) {
                        return Err(std::io::Error::other(format!(
                            "{key}: part {location} changed while read"
                        )));
                    }
                    Ok(r.into_stream()
                        .map_err(move |err| std::io::Error::other(format!("{key}: {err}"))))
                }
            })
            .try_flatten();
        rechunk(Box::pin(s))
    }

    /// Streams the parts of an append object into a multipart upload at `to`.
    async fn assemble(&self, from: &str, to: &Path, parts: &Parts) -> Result<(), StorageError> {
        let upload = self
            .store
            .put_multipart(to)
            .await
            .map_err(|e| os_err(from, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, self.chunk_size);
        let total = parts.size();
        let mut data = self.read_parts(
            from,
            Parts {
                run: parts.run.clone(),
                stale: Vec::new(),
            },
            0,
            total,
        );
        let result: Result<(), StorageError> = async {
            while let Some(chunk) = data.try_next().await.map_err(|e| other(from, e))? {
                w.wait_for_capacity(RENAME_IN_FLIGHT)
                    .await
                    .map_err(|e| os_err(from, e))?;
                w.put(chunk);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                w.finish().await.map_err(|e| os_err(from, e))?;
                Ok(())
            }
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }
}

/// Appends to an object made of parts.
struct S3Append {
    storage: S3Storage,
    key: String,
    /// Offset of the next part to write (everything before it is written or in flight).
    next_offset: u64,
    buffer: BytesMut,
    in_flight: Vec<JoinHandle<Result<(), StorageError>>>,
    failed: bool,
}

impl S3Append {
    fn spawn_part(&mut self, bytes: Bytes) {
        let path = self.storage.part_path(&self.key, self.next_offset);
        self.next_offset += bytes.len() as u64;
        let store = self.storage.store.clone();
        let key = self.key.clone();
        self.in_flight.push(tokio::spawn(async move {
            store
                .put(&path, PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| os_err(&key, e))
        }));
    }

    async fn wait_until(&mut self, max: usize) -> Result<(), StorageError> {
        while self.in_flight.len() > max {
            let h = self.in_flight.remove(0);
            let r = h.await.map_err(|e| other(&self.key, e)).and_then(|r| r);
            if let Err(e) = r {
                self.failed = true;
                return Err(e);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl AppendWriter for S3Append {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StorageError> {
        if self.failed {
            return Err(other(&self.key, "writer failed earlier"));
        }
        self.buffer.extend_from_slice(&bytes);
        let chunk = self.storage.chunk_size;
        while self.buffer.len() >= chunk {
            let part = self.buffer.split_to(chunk).freeze();
            self.wait_until(PARTS_IN_FLIGHT.saturating_sub(1)).await?;
            self.spawn_part(part);
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.next_offset + self.buffer.len() as u64
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        if self.failed {
            return Err(other(&self.key, "writer failed earlier"));
        }
        if !self.buffer.is_empty() {
            let part = self.buffer.split().freeze();
            self.spawn_part(part);
        }
        self.wait_until(0).await
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        match self.store.head(&self.path(key)).await {
            Ok(m) => {
                return Ok(Some(ObjectMeta {
                    size: m.size,
                    modified: Some(m.last_modified.into()),
                }))
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(os_err(key, e)),
        }
        let parts = self.parts(key).await?;
        Ok((!parts.run.is_empty()).then(|| ObjectMeta {
            size: parts.size(),
            modified: parts.modified(),
        }))
    }

    async fn read(&self, key: &str, range: Option<(u64, u64)>) -> Result<ByteStream, StorageError> {
        if let Some((s, e)) = range {
            if s > e {
                return Err(StorageError::InvalidRange);
            }
            if s == e {
                return match self.stat(key).await? {
                    None => Err(StorageError::NotFound(key.to_string())),
                    Some(m) if e > m.size => Err(StorageError::InvalidRange),
                    Some(_) => Ok(Box::pin(stream::empty())),
                };
            }
        }
        if let Some(s) = self.read_plain(key, range).await? {
            return Ok(s);
        }
        let parts = self.parts(key).await?;
        if parts.run.is_empty() {
            return Err(StorageError::NotFound(key.to_string()));
        }
        let size = parts.size();
        let (start, end) = range.unwrap_or((0, size));
        if end > size {
            return Err(StorageError::InvalidRange);
        }
        Ok(self.read_parts(key, parts, start, end))
    }

    async fn read_small(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        match self.store.get(&self.path(key)).await {
            Ok(r) if r.meta.size > limit => Err(other(key, "object larger than the limit")),
            Ok(r) => r.bytes().await.map_err(|e| os_err(key, e)),
            Err(object_store::Error::NotFound { .. }) => {
                let parts = self.parts(key).await?;
                if parts.run.is_empty() {
                    return Err(StorageError::NotFound(key.to_string()));
                }
                if parts.size() > limit {
                    return Err(other(key, "object larger than the limit"));
                }
                let size = parts.size();
                let chunks: Vec<Bytes> = self
                    .read_parts(key, parts, 0, size)
                    .try_collect()
                    .await
                    .map_err(|e| other(key, e))?;
                Ok(Bytes::from(chunks.concat()))
            }
            Err(e) => Err(os_err(key, e)),
        }
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| os_err(key, e))
    }

    async fn append(&self, key: &str) -> Result<Box<dyn AppendWriter>, StorageError> {
        let parts = self.parts(key).await?;
        // Parts after a gap were left by a writer that died; they are not data and would be in the way.
        self.delete_paths(key, parts.stale.clone()).await?;
        let mut size = parts.size();
        if parts.run.is_empty() {
            let plain = self.path(key);
            match self.store.head(&plain).await {
                // A plain object (written by `put`, or by registry:2) becomes the first part.
                Ok(m) => {
                    self.store
                        .copy(&plain, &self.part_path(key, 0))
                        .await
                        .map_err(|e| os_err(key, e))?;
                    self.store
                        .delete(&plain)
                        .await
                        .map_err(|e| os_err(key, e))?;
                    size = m.size;
                }
                Err(object_store::Error::NotFound { .. }) => {
                    // An empty part at offset 0 makes the empty object exist; the first real part replaces it.
                    self.store
                        .put(&self.part_path(key, 0), PutPayload::default())
                        .await
                        .map_err(|e| os_err(key, e))?;
                }
                Err(e) => return Err(os_err(key, e)),
            }
        }
        Ok(Box::new(S3Append {
            storage: self.clone(),
            key: key.to_string(),
            next_offset: size,
            buffer: BytesMut::new(),
            in_flight: Vec::new(),
            failed: false,
        }))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (src, dst) = (self.path(from), self.path(to));
        match self.store.head(&src).await {
            Ok(_) => {
                // Plain objects are small (links, manifests): a server-side copy.
                self.store
                    .copy(&src, &dst)
                    .await
                    .map_err(|e| os_err(from, e))?;
                return self.store.delete(&src).await.map_err(|e| os_err(from, e));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(os_err(from, e)),
        }
        let parts = self.parts(from).await?;
        match parts.run.as_slice() {
            [] => return Err(StorageError::NotFound(from.to_string())),
            [one] => self
                .store
                .copy(&one.location, &dst)
                .await
                .map_err(|e| os_err(from, e))?,
            _ => self.assemble(from, &dst, &parts).await?,
        }
        let all = self.all_under(from, &self.parts_prefix(from)).await?;
        self.delete_paths(from, all).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let base = self.path(prefix);
        let at = if base.as_ref().is_empty() {
            None
        } else {
            Some(&base)
        };
        let r = self
            .store
            .list_with_delimiter(at)
            .await
            .map_err(|e| os_err(prefix, e))?;
        let mut names: Vec<String> = r
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .map(|n| n.strip_suffix(PARTS_SUFFIX).unwrap_or(n).to_string())
            .chain(
                r.objects
                    .iter()
                    .filter_map(|m| m.location.filename())
                    .map(str::to_string),
            )
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let base = self.path(key);
        let mut all = self.all_under(key, &base).await?;
        if !key.is_empty() {
            all.extend(self.all_under(key, &self.parts_prefix(key)).await?);
            all.push(base);
        }
        all.sort();
        all.dedup();
        self.delete_paths(key, all).await
    }

    async fn delete_batch(&self, keys: &[String], _durable: bool) -> Result<(), StorageError> {
        // Single objects (links, blob data) in bulk requests; folders one by one (they need a listing).
        let (objects, folders): (Vec<&String>, Vec<&String>) = keys
            .iter()
            .partition(|k| k.ends_with("/link") || k.ends_with("/data"));
        self.delete_paths("", objects.iter().map(|k| self.path(k)).collect())
            .await?;
        for k in folders {
            self.delete(k).await?;
        }
        Ok(())
    }

    async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&self.path(key), PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(os_err(key, e)),
        }
    }

    fn walk(&self, prefix: &str) -> ObjectStream {
        let base = self.path(prefix.trim_end_matches('/'));
        let skip = if self.root.is_empty() {
            0
        } else {
            self.root.len() + 1
        };
        let key = prefix.to_string();
        let listing = if base.as_ref().is_empty() {
            self.store.list(None)
        } else {
            self.store.list(Some(&base))
        };
        Box::pin(listing.filter_map(move |r| {
            let out = match r {
                // Part objects of append objects (upload data) are left out.
                Ok(m) if m.location.as_ref().contains(PARTS_SUFFIX) => None,
                Ok(m) => m.location.as_ref().get(skip..).map(|k| {
                    Ok((
                        k.to_string(),
                        ObjectMeta {
                            size: m.size,
                            modified: Some(m.last_modified.into()),
                        },
                    ))
                }),
                Err(e) => Some(Err(os_err(&key, e))),
            };
            std::future::ready(out)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance_on_an_in_memory_object_store() {
        let s = S3Storage::with_store(
            Arc::new(object_store::memory::InMemory::new()),
            "root",
            MIN_CHUNK_SIZE,
        );
        super::super::conformance::run_all(&s).await;
        assert!(s.list("").await.unwrap().is_empty());
    }

    #[test]
    fn keys_keep_registry_layout_under_the_root() {
        let mem = Arc::new(object_store::memory::InMemory::new());
        let s = S3Storage::with_store(mem.clone(), "/some/root/", MIN_CHUNK_SIZE);
        assert_eq!(
            s.path("docker/registry/v2/x").as_ref(),
            "some/root/docker/registry/v2/x"
        );
        assert_eq!(
            s.part_path("a/data", 10).as_ref(),
            "some/root/a/data!parts/00000000000000000010"
        );
        let s = S3Storage::with_store(mem, "", MIN_CHUNK_SIZE);
        assert_eq!(
            s.path("docker/registry/v2/x").as_ref(),
            "docker/registry/v2/x"
        );
    }
}
