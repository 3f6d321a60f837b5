//! The filesystem backend: one file per object under a root directory, registry:2's layout.
//!
//! Atomic writes go through a temporary file in the destination directory (named `.tmp-*`, never listed),
//! fsync, rename, and fsync of the directory.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream;

mod append;

use super::{
    human_bytes, AppendWriter, ByteStream, ObjectMeta, ObjectStream, Space, Storage, StorageError,
};

/// Prefix of temporary files; `list` hides them.
const TMP_PREFIX: &str = ".tmp-";
/// Size of one read from disk when streaming an object out (what each download holds in memory, times the
/// few chunks hyper queues).
const READ_CHUNK: usize = 128 * 1024;

/// Filesystem storage rooted at a directory.
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: PathBuf,
    listings: Arc<ListingCache>,
    space: Arc<SpaceGuard>,
}

/// How much free space appended data (uploads) must leave on the filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    /// 1 GiB or 2 % of the filesystem, whichever is smaller.
    Auto,
    /// A number of bytes (0: no reserve; a full device still fails writes cleanly).
    Bytes(u64),
    /// A share of the filesystem's size, in percent.
    Percent(f64),
}

impl MinFree {
    /// The reserve on a filesystem of `total` bytes.
    pub fn bytes(&self, total: u64) -> u64 {
        match *self {
            MinFree::Auto => (1u64 << 30).min(total / 50),
            MinFree::Bytes(n) => n,
            MinFree::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

/// The free-space check of appended data, and whether the last check found the reserve crossed (logged
/// when that changes).
#[derive(Debug)]
struct SpaceGuard {
    root: PathBuf,
    min_free: MinFree,
    below: std::sync::atomic::AtomicBool,
}

impl SpaceGuard {
    fn space(&self) -> io::Result<Space> {
        let st = rustix::fs::statvfs(&self.root)?;
        let total = st.f_blocks.saturating_mul(st.f_frsize);
        Ok(Space {
            available: st.f_bavail.saturating_mul(st.f_frsize),
            total,
            reserve: self.min_free.bytes(total),
        })
    }

    /// Fails with `Full` when writing `len` more bytes would leave less than the reserve.
    fn check(&self, len: u64) -> Result<(), StorageError> {
        let sp = self
            .space()
            .map_err(|e| io_err(&self.root.display().to_string(), e))?;
        let below = sp.available.saturating_sub(len) < sp.reserve;
        if self.below.swap(below, std::sync::atomic::Ordering::Relaxed) != below {
            if below {
                tracing::warn!(
                    free = %human_bytes(sp.available),
                    reserve = %human_bytes(sp.reserve),
                    "free space reached the reserve: uploads are refused"
                );
            } else {
                tracing::info!(
                    free = %human_bytes(sp.available),
                    reserve = %human_bytes(sp.reserve),
                    "free space above the reserve again: uploads accepted"
                );
            }
        }
        if below {
            return Err(full_message(&sp));
        }
        Ok(())
    }
}

impl SpaceGuard {
    /// A `Full` error from the device (ENOSPC) restated with the free space, as the reserve check says it.
    fn restate<T>(&self, r: Result<T, StorageError>) -> Result<T, StorageError> {
        match r {
            Err(StorageError::Full(m)) => match self.space() {
                Ok(sp) => Err(full_message(&sp)),
                Err(_) => Err(StorageError::Full(m)),
            },
            r => r,
        }
    }
}

fn full_message(sp: &Space) -> StorageError {
    StorageError::Full(format!(
        "storage full: {} free, {} kept in reserve",
        human_bytes(sp.available),
        human_bytes(sp.reserve)
    ))
}

/// Directories with at least this many entries have their sorted listing kept in memory, and so have those
/// that hold only `_`-prefixed entries (a repository's own folder, or one that holds nothing but `_uploads`):
/// the dead ends a `_catalog` walk must look into, one per repository.
const CACHE_MIN_ENTRIES: usize = 256;
/// Past this many names in all, the cache is emptied and starts again.
const CACHE_MAX_NAMES: usize = 1 << 20;
/// A listing is kept only when the directory's mtime is at least this much older than the moment the
/// listing began: a change made within the same timestamp tick as the listing (timestamps are coarse, two
/// seconds on some filesystems) would otherwise leave the mtime unchanged and the cached listing stale.
const RACY_MARGIN: Duration = Duration::from_secs(2);

/// What identifies one state of a directory: a change of any entry changes its mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirStamp {
    dev: u64,
    ino: u64,
    mtime: Option<SystemTime>,
}

impl DirStamp {
    fn of(m: &std::fs::Metadata) -> DirStamp {
        use std::os::unix::fs::MetadataExt;
        DirStamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime: m.modified().ok(),
        }
    }
}

/// Sorted listings of large directories, each valid while its directory's [`DirStamp`] is unchanged, so a
/// page of `_catalog` or of a tags list costs one `stat` and a binary search instead of a `readdir` and a
/// sort of the whole directory. berth's own writes also drop the listings of every directory above the
/// object they touch.
#[derive(Debug, Default)]
struct ListingCache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<PathBuf, (DirStamp, Arc<[String]>)>,
    names: usize,
}

impl ListingCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, dir: &Path, stamp: &DirStamp) -> Option<Arc<[String]>> {
        let inner = self.lock();
        match inner.map.get(dir) {
            Some((s, names)) if s == stamp => Some(names.clone()),
            _ => None,
        }
    }

    fn put(&self, dir: PathBuf, stamp: DirStamp, began: SystemTime, names: &Arc<[String]>) {
        let settled = stamp.mtime.is_some_and(|m| m + RACY_MARGIN <= began);
        let worth = names.len() >= CACHE_MIN_ENTRIES || names.iter().all(|n| n.starts_with('_'));
        if !worth || !settled {
            return;
        }
        let mut inner = self.lock();
        if inner.names + names.len() > CACHE_MAX_NAMES {
            inner.map.clear();
            inner.names = 0;
        }
        inner.names += names.len();
        if let Some((_, old)) = inner.map.insert(dir, (stamp, names.clone())) {
            inner.names -= old.len();
        }
    }

    /// Drops the listings of every directory above `path` (berth is about to change it).
    fn forget_above(&self, path: &Path) {
        let mut inner = self.lock();
        if inner.map.is_empty() {
            return;
        }
        for dir in path.ancestors().skip(1) {
            if let Some((_, old)) = inner.map.remove(dir) {
                inner.names -= old.len();
            }
        }
    }
}

impl FsStorage {
    /// Storage under `root` (created when absent).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<FsStorage> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(FsStorage {
            space: Arc::new(SpaceGuard {
                root: root.clone(),
                min_free: MinFree::Auto,
                below: Default::default(),
            }),
            root,
            listings: Arc::default(),
        })
    }

    /// The same storage with another free-space reserve for uploads.
    pub fn with_min_free(mut self, min_free: MinFree) -> FsStorage {
        self.space = Arc::new(SpaceGuard {
            root: self.root.clone(),
            min_free,
            below: Default::default(),
        });
        self
    }

    fn path(&self, key: &str) -> PathBuf {
        // The empty key is the root. Keys come from `paths` only; refuse anything that could leave the root all the same.
        debug_assert!(
            key.is_empty()
                || !key
                    .split('/')
                    .any(|c| c == ".." || c == "." || c.is_empty())
        );
        self.root.join(key)
    }
}

fn io_err(key: &str, e: io::Error) -> StorageError {
    match e.kind() {
        ErrorKind::NotFound => StorageError::NotFound(key.to_string()),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            StorageError::Full(format!("storage full: {key}: {e}"))
        }
        _ => StorageError::Io(key.to_string(), e),
    }
}

async fn blocking<T: Send + 'static>(
    key: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| io_err(key, e)),
        Err(e) => Err(StorageError::Io(key.to_string(), io::Error::other(e))),
    }
}

/// What [`read_cached`] found.
enum Cached {
    /// This many bytes came from the page cache (possibly fewer than asked: the cached part).
    Read(usize),
    /// Not in the page cache: this chunk must be read from the disk.
    Miss,
    /// The kernel or filesystem cannot read without waiting: every chunk goes to the blocking pool.
    Unsupported,
}

/// Fills `buf` from offset `pos` only as far as the data is in the page cache (`preadv2` with `RWF_NOWAIT`),
/// so that a download of cached data is read on the request's own thread. Handing every chunk to the blocking
/// pool and back costs two thread switches per chunk, which was more CPU than the copy itself (a 1 GiB
/// download: 45 % of the registry's CPU in futex wake-ups and task switches). A read that would wait for the
/// disk returns `Miss` at once and goes to the blocking pool, so a cold blob never stalls other requests.
fn read_cached(file: &std::fs::File, pos: u64, buf: &mut [u8]) -> Cached {
    let len = buf.len();
    let mut filled = 0;
    while filled < len {
        let mut slices = [io::IoSliceMut::new(&mut buf[filled..])];
        match rustix::io::preadv2(
            file,
            &mut slices,
            pos + filled as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => break,
            Err(_) if filled == 0 => return Cached::Unsupported,
            Err(_) => break,
        }
    }
    if filled == 0 {
        return Cached::Miss;
    }
    Cached::Read(filled)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, fsyncing each parent whose entries changed.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                fsync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The sorted names in `dir` (none when it does not exist), without temporary files.
fn read_sorted(dir: &Path) -> io::Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in rd {
        let name = entry?.file_name();
        if let Some(n) = name.to_str() {
            if !n.starts_with(TMP_PREFIX) {
                names.push(n.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

fn tmp_name() -> String {
    format!("{TMP_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// Writes `bytes` durably to a new temporary file in `dir` (created when missing) and returns its path.
fn write_temp(dir: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    ensure_dir(dir)?;
    let tmp = dir.join(tmp_name());
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `bytes` to `path` atomically and durably.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    let tmp = write_temp(dir, bytes)?;
    let result = std::fs::rename(&tmp, path).and_then(|()| fsync_dir(dir));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[async_trait]
impl Storage for FsStorage {
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.path(key))
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        // On the request's own thread, as `read_small` (see there).
        match std::fs::metadata(self.path(key)) {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                size: m.len(),
                modified: m.modified().ok(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
                Ok(None)
            }
            Err(e) => Err(io_err(key, e)),
        }
    }

    async fn read(&self, key: &str, range: Option<(u64, u64)>) -> Result<ByteStream, StorageError> {
        let path = self.path(key);
        let (file, start, end) = blocking(key, move || {
            let f = std::fs::File::open(&path)?;
            let size = f.metadata()?.len();
            let (start, end) = range.unwrap_or((0, size));
            if start > end || end > size {
                return Err(io::Error::new(ErrorKind::InvalidInput, "range"));
            }
            Ok((f, start, end))
        })
        .await
        .map_err(|e| match e {
            StorageError::Io(_, ref ioe) if ioe.kind() == ErrorKind::InvalidInput => {
                StorageError::InvalidRange
            }
            e => e,
        })?;
        // Each step reads one chunk at its offset: from the page cache on the request's own thread when the
        // data is there, else on the blocking pool (see `read_cached`).
        let file = Arc::new(file);
        let s = stream::try_unfold(
            (file, start, true),
            move |(file, pos, try_cached)| async move {
                if pos >= end {
                    return Ok(None);
                }
                let want = (end - pos).min(READ_CHUNK as u64) as usize;
                let mut buf = vec![0; want];
                let cached = if try_cached {
                    read_cached(&file, pos, &mut buf)
                } else {
                    Cached::Unsupported
                };
                let (buf, try_cached) = match cached {
                    Cached::Read(n) => {
                        buf.truncate(n);
                        (buf, true)
                    }
                    miss => {
                        let f = Arc::clone(&file);
                        let buf = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
                            std::os::unix::fs::FileExt::read_exact_at(&*f, &mut buf, pos).map_err(
                                |e| match e.kind() {
                                    ErrorKind::UnexpectedEof => io::Error::new(
                                        ErrorKind::UnexpectedEof,
                                        "object shrank while read",
                                    ),
                                    _ => e,
                                },
                            )?;
                            Ok(buf)
                        })
                        .await
                        .map_err(io::Error::other)??;
                        (buf, !matches!(miss, Cached::Unsupported))
                    }
                };
                let next = pos + buf.len() as u64;
                Ok(Some((Bytes::from(buf), (file, next, try_cached))))
            },
        );
        Ok(Box::pin(s))
    }

    async fn read_small(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        // Links and manifests are read on the request's own thread, not handed to the blocking pool: on a
        // local filesystem they come from the page cache in microseconds, and the two thread handoffs of
        // `spawn_blocking` cost far more (a HEAD of a blob through berth-proxy: 5,300 requests/s with the
        // handoffs, 11,000 without). Bulk reads and every write and sync stay on the blocking pool.
        let path = self.path(key);
        let r = (|| {
            let f = std::fs::File::open(&path)?;
            if f.metadata()?.len() > limit {
                return Err(io::Error::other("object larger than the limit"));
            }
            let mut v = Vec::new();
            f.take(limit + 1).read_to_end(&mut v)?;
            Ok(Bytes::from(v))
        })();
        r.map_err(|e| io_err(key, e))
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let path = self.path(key);
        self.listings.forget_above(&path);
        let r = blocking(key, move || write_atomic(&path, &bytes)).await;
        self.space.restate(r)
    }

    async fn append(&self, key: &str) -> Result<Box<dyn AppendWriter>, StorageError> {
        let path = self.path(key);
        self.listings.forget_above(&path);
        let (k, space) = (key.to_string(), self.space.clone());
        let writer = blocking(key, move || {
            if let Some(dir) = path.parent() {
                ensure_dir(dir)?;
            }
            append::open(&k, &path, space)
        })
        .await?;
        Ok(Box::new(writer))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (src, dst) = (self.path(from), self.path(to));
        self.listings.forget_above(&src);
        self.listings.forget_above(&dst);
        blocking(from, move || {
            let f = std::fs::OpenOptions::new().write(true).open(&src)?;
            // The object is new at its destination: its time says so (the collector's grace period counts
            // from it), not when the source was last appended to.
            f.set_modified(SystemTime::now())?;
            f.sync_all()?;
            let dir = dst
                .parent()
                .ok_or_else(|| io::Error::other("no parent directory"))?;
            ensure_dir(dir)?;
            if let Err(e) = std::fs::rename(&src, &dst) {
                // The folder went between the two (a collection removed an emptied blob folder): once more.
                if e.kind() != ErrorKind::NotFound || !src.exists() {
                    return Err(e);
                }
                ensure_dir(dir)?;
                std::fs::rename(&src, &dst)?;
            }
            fsync_dir(dir)?;
            if let Some(src_dir) = src.parent() {
                fsync_dir(src_dir)?;
            }
            Ok(())
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let path = self.path(prefix);
        blocking(prefix, move || read_sorted(&path)).await
    }

    async fn list_shared(&self, prefix: &str) -> Result<Arc<[String]>, StorageError> {
        let path = self.path(prefix);
        // The stat and the cache lookup on the request's own thread, as `stat`: a cached listing (a page of a
        // large folder, or one of the many small dead ends of a catalog walk) costs no trip to the blocking
        // pool, which would cost more than the stat itself.
        let began = SystemTime::now();
        let stamp = match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => DirStamp::of(&m),
            Ok(_) => return Ok(Arc::from(Vec::new())),
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
                return Ok(Arc::from(Vec::new()))
            }
            Err(e) => return Err(io_err(prefix, e)),
        };
        if let Some(names) = self.listings.get(&path, &stamp) {
            return Ok(names);
        }
        let cache = self.listings.clone();
        blocking(prefix, move || {
            let names: Arc<[String]> = read_sorted(&path)?.into();
            cache.put(path, stamp, began, &names);
            Ok(names)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key);
        self.listings.forget_above(&path);
        blocking(key, move || {
            let r = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => {
                    if let Some(dir) = path.parent() {
                        fsync_dir(dir)?;
                    }
                    Ok(())
                }
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError> {
        let path = self.path(key);
        self.listings.forget_above(&path);
        let r = blocking(key, move || create_exclusive(&path, &bytes)).await;
        self.space.restate(r)
    }

    async fn delete_batch(&self, keys: &[String], durable: bool) -> Result<(), StorageError> {
        let paths: Vec<PathBuf> = keys
            .iter()
            .map(|k| {
                let p = self.path(k);
                self.listings.forget_above(&p);
                p
            })
            .collect();
        blocking("", move || {
            let mut touched = std::collections::BTreeSet::new();
            for path in &paths {
                let (removed, file) = match std::fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => (std::fs::remove_dir_all(path), false),
                    Ok(_) => (std::fs::remove_file(path), true),
                    Err(e) => (Err(e), false),
                };
                match removed {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                let Some(dir) = path.parent() else { continue };
                // The folder of a single object (a link's, a blob's) goes with it when it is left empty.
                if file && std::fs::remove_dir(dir).is_ok() {
                    touched.extend(dir.parent().map(Path::to_path_buf));
                } else {
                    touched.insert(dir.to_path_buf());
                }
            }
            if durable {
                for dir in touched {
                    match fsync_dir(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn space(&self) -> Result<Option<Space>, StorageError> {
        let guard = self.space.clone();
        blocking("", move || guard.space()).await.map(Some)
    }

    fn walk(&self, prefix: &str) -> ObjectStream {
        let (tx, rx) = tokio::sync::mpsc::channel(WALK_QUEUE);
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        tokio::task::spawn_blocking(move || walk_tree(&root, &prefix, &tx));
        Box::pin(stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }
}

/// Objects a walk finds ahead of its consumer.
const WALK_QUEUE: usize = 256;

/// Sends every file under `root/prefix` (temporary files excepted) with its meta; stops early when the
/// receiver is gone. A folder that vanishes during the walk is skipped.
fn walk_tree(
    root: &Path,
    prefix: &str,
    tx: &tokio::sync::mpsc::Sender<Result<(String, ObjectMeta), StorageError>>,
) {
    let mut stack = vec![prefix.trim_end_matches('/').to_string()];
    while let Some(key) = stack.pop() {
        let dir = if key.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&key)
        };
        let names = match read_sorted(&dir) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(Err(io_err(&key, e)));
                return;
            }
        };
        // Reversed onto the stack, so folders are walked in name order.
        for name in names.into_iter().rev() {
            let child = if key.is_empty() {
                name
            } else {
                format!("{key}/{name}")
            };
            match std::fs::symlink_metadata(root.join(&child)) {
                Ok(m) if m.is_dir() => stack.push(child),
                Ok(m) if m.is_file() => {
                    let meta = ObjectMeta {
                        size: m.len(),
                        modified: m.modified().ok(),
                    };
                    if tx.blocking_send(Ok((child, meta))).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(io_err(&child, e)));
                    return;
                }
            }
        }
    }
}

/// Writes `bytes` to `path` only when no file is there, atomically (a complete temporary file is hard-linked
/// into place, which fails when the name exists).
fn create_exclusive(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    let tmp = write_temp(dir, bytes)?;
    let result = match std::fs::hard_link(&tmp, path) {
        Ok(()) => fsync_dir(dir).map(|()| true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance_on_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::new(dir.path()).unwrap();
        super::super::conformance::run_all(&s).await;
        // Every check leaves the backend clean.
        assert!(
            s.list("").await.unwrap().is_empty(),
            "conformance suite left objects behind"
        );
    }

    fn set_mtime(dir: &Path, t: SystemTime) {
        std::fs::File::open(dir).unwrap().set_modified(t).unwrap();
    }

    fn mtime(dir: &Path) -> SystemTime {
        std::fs::metadata(dir).unwrap().modified().unwrap()
    }

    /// A large listing is answered from memory while its directory is unchanged; a change by another process
    /// (which moves the mtime) or by berth itself shows at the next call.
    #[tokio::test]
    async fn large_listings_are_cached_until_the_directory_changes() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::new(dir.path()).unwrap();
        let t = dir.path().join("t");
        for i in 0..300 {
            std::fs::create_dir_all(t.join(format!("v{i:03}"))).unwrap();
        }
        let past = SystemTime::now() - Duration::from_secs(60);
        set_mtime(&t, past);
        assert_eq!(s.list_shared("t").await.unwrap().len(), 300);
        // Another process adds an entry: the mtime moves, the listing follows.
        std::fs::create_dir(t.join("v300")).unwrap();
        let now = s.list_shared("t").await.unwrap();
        assert_eq!(now.len(), 301);
        assert_eq!(now.last().map(String::as_str), Some("v300"));
        // The cache is really used: an entry removed behind its back, with the mtime put back, is still
        // listed (what `DirStamp` cannot see, it cannot see).
        let past = past + Duration::from_secs(1);
        set_mtime(&t, past);
        assert_eq!(s.list_shared("t").await.unwrap().len(), 301);
        std::fs::remove_dir(t.join("v300")).unwrap();
        set_mtime(&t, past);
        assert_eq!(s.list_shared("t").await.unwrap().len(), 301);
        // berth's own writes drop the listings above them, whatever the mtime says.
        s.put("t/v400/x", Bytes::from_static(b"x")).await.unwrap();
        set_mtime(&t, past);
        let after = s.list_shared("t").await.unwrap();
        assert_eq!(after.len(), 301);
        assert!(after.iter().any(|n| n == "v400") && !after.iter().any(|n| n == "v300"));
        // Plain `list` never uses the cache.
        assert_eq!(s.list("t").await.unwrap().len(), 301);
    }

    /// A folder that holds only `_`-prefixed entries (a repository's own folder, or one with nothing but
    /// `_uploads`) is cached whatever its size, and follows its directory like a large one.
    #[tokio::test]
    async fn metadata_only_folders_are_cached_too() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::new(dir.path()).unwrap();
        let repo = dir.path().join("r");
        std::fs::create_dir_all(repo.join("_uploads/u1")).unwrap();
        let past = SystemTime::now() - Duration::from_secs(60);
        set_mtime(&repo, past);
        assert_eq!(&*s.list_shared("r").await.unwrap(), ["_uploads"]);
        // Used: an entry added behind its back, with the mtime put back, is not seen.
        std::fs::create_dir(repo.join("_manifests")).unwrap();
        set_mtime(&repo, past);
        assert_eq!(&*s.list_shared("r").await.unwrap(), ["_uploads"]);
        // The mtime moves: the listing follows.
        set_mtime(&repo, past + Duration::from_secs(1));
        assert_eq!(
            &*s.list_shared("r").await.unwrap(),
            ["_manifests", "_uploads"]
        );
        // A small folder with an ordinary entry (a namespace with repositories below) is never cached.
        let ns = dir.path().join("ns");
        std::fs::create_dir_all(ns.join("app")).unwrap();
        set_mtime(&ns, past);
        assert_eq!(&*s.list_shared("ns").await.unwrap(), ["app"]);
        std::fs::create_dir(ns.join("web")).unwrap();
        set_mtime(&ns, past);
        assert_eq!(&*s.list_shared("ns").await.unwrap(), ["app", "web"]);
    }

    /// A directory changed within [`RACY_MARGIN`] of its listing is not cached: a second change in the same
    /// timestamp tick would leave its mtime as it was.
    #[tokio::test]
    async fn recently_changed_directories_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::new(dir.path()).unwrap();
        let t = dir.path().join("t");
        for i in 0..300 {
            std::fs::create_dir_all(t.join(format!("v{i:03}"))).unwrap();
        }
        let stamp = mtime(&t);
        assert_eq!(s.list_shared("t").await.unwrap().len(), 300);
        std::fs::remove_dir(t.join("v000")).unwrap();
        set_mtime(&t, stamp);
        assert_eq!(s.list_shared("t").await.unwrap().len(), 299);
    }
}
