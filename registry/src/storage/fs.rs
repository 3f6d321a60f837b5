//! The filesystem backend: one file per object under a root directory, registry:2's layout.
//!
//! Atomic writes go through a temporary file in the destination directory (named `.tmp-*`, never listed),
//! fsync, rename, and fsync of the directory.

use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::stream;

use super::{AppendWriter, ByteStream, ObjectMeta, Storage, StorageError};

/// Prefix of temporary files; `list` hides them.
const TMP_PREFIX: &str = ".tmp-";
/// Size of one read from disk when streaming an object out.
const READ_CHUNK: usize = 256 * 1024;

/// Filesystem storage rooted at a directory.
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: PathBuf,
}

impl FsStorage {
    /// Storage under `root` (created when absent).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<FsStorage> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(FsStorage { root })
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
    if e.kind() == ErrorKind::NotFound {
        StorageError::NotFound(key.to_string())
    } else {
        StorageError::Io(key.to_string(), e)
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

fn tmp_name() -> String {
    format!("{TMP_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// Writes `bytes` to `path` atomically and durably.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    ensure_dir(dir)?;
    let tmp = dir.join(tmp_name());
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

struct FsAppend {
    key: String,
    file: Option<std::fs::File>,
    size: u64,
    /// Bytes written since the last `sync_data` started.
    unsynced: u64,
    /// The `sync_data` running on a duplicate of the descriptor while writes go on.
    syncing: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

/// Appended data is synced to disk every this many bytes, so `finish` only has the tail left to sync (a
/// gigabyte synced at once stalls the commit for seconds). The sync runs beside the writes that follow it, on
/// a duplicate of the file descriptor; one sync is in flight at a time and its result is checked before the
/// next one starts and at `finish`.
const SYNC_EVERY: u64 = 64 * 1024 * 1024;

impl FsAppend {
    async fn wait_sync(&mut self) -> Result<(), StorageError> {
        match self.syncing.take() {
            Some(task) => match task.await {
                Ok(r) => r.map_err(|e| io_err(&self.key, e)),
                Err(e) => Err(StorageError::Io(self.key.clone(), io::Error::other(e))),
            },
            None => Ok(()),
        }
    }
}

#[async_trait]
impl AppendWriter for FsAppend {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StorageError> {
        let mut file = self.file.take().ok_or_else(|| {
            StorageError::Io(self.key.clone(), io::Error::other("writer failed earlier"))
        })?;
        let len = bytes.len() as u64;
        let file = blocking(&self.key, move || {
            file.write_all(&bytes)?;
            Ok(file)
        })
        .await?;
        self.size += len;
        self.unsynced += len;
        if self.unsynced >= SYNC_EVERY {
            self.wait_sync().await?;
            let dup = file.try_clone().map_err(|e| io_err(&self.key, e))?;
            self.syncing = Some(tokio::task::spawn_blocking(move || dup.sync_data()));
            self.unsynced = 0;
        }
        self.file = Some(file);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        self.wait_sync().await?;
        let key = self.key.clone();
        match self.file.take() {
            Some(f) => blocking(&key, move || f.sync_all()).await,
            None => Err(StorageError::Io(
                key,
                io::Error::other("writer failed earlier"),
            )),
        }
    }
}

#[async_trait]
impl Storage for FsStorage {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta { size: m.len() })),
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
            let mut f = std::fs::File::open(&path)?;
            let size = f.metadata()?.len();
            let (start, end) = range.unwrap_or((0, size));
            if start > end || end > size {
                return Err(io::Error::new(ErrorKind::InvalidInput, "range"));
            }
            f.seek(SeekFrom::Start(start))?;
            Ok((f, start, end))
        })
        .await
        .map_err(|e| match e {
            StorageError::Io(_, ref ioe) if ioe.kind() == ErrorKind::InvalidInput => {
                StorageError::InvalidRange
            }
            e => e,
        })?;
        let remaining = end - start;
        // Each step reads one chunk on the blocking pool and hands the file back.
        let s = stream::try_unfold((Some(file), remaining), |(file, remaining)| async move {
            let Some(mut file) = file else {
                return Ok(None);
            };
            if remaining == 0 {
                return Ok(None);
            }
            let want = remaining.min(READ_CHUNK as u64) as usize;
            let (file, buf) = tokio::task::spawn_blocking(move || -> io::Result<_> {
                let mut buf = BytesMut::zeroed(want);
                let mut got = 0;
                while got < want {
                    let n = file.read(&mut buf[got..])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            ErrorKind::UnexpectedEof,
                            "object shrank while read",
                        ));
                    }
                    got += n;
                }
                Ok((file, buf.freeze()))
            })
            .await
            .map_err(io::Error::other)??;
            let left = remaining - buf.len() as u64;
            Ok(Some((buf, (Some(file), left))))
        });
        Ok(Box::pin(s))
    }

    async fn read_small(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        let path = self.path(key);
        blocking(key, move || {
            let f = std::fs::File::open(&path)?;
            if f.metadata()?.len() > limit {
                return Err(io::Error::other("object larger than the limit"));
            }
            let mut v = Vec::new();
            f.take(limit + 1).read_to_end(&mut v)?;
            Ok(Bytes::from(v))
        })
        .await
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let path = self.path(key);
        blocking(key, move || write_atomic(&path, &bytes)).await
    }

    async fn append(&self, key: &str) -> Result<Box<dyn AppendWriter>, StorageError> {
        let path = self.path(key);
        let file = blocking(key, move || {
            if let Some(dir) = path.parent() {
                ensure_dir(dir)?;
            }
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
        })
        .await?;
        let size = file.metadata().map_err(|e| io_err(key, e))?.len();
        Ok(Box::new(FsAppend {
            key: key.to_string(),
            file: Some(file),
            size,
            unsynced: 0,
            syncing: None,
        }))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (src, dst) = (self.path(from), self.path(to));
        blocking(from, move || {
            std::fs::File::open(&src)?.sync_all()?;
            let dir = dst
                .parent()
                .ok_or_else(|| io::Error::other("no parent directory"))?;
            ensure_dir(dir)?;
            std::fs::rename(&src, &dst)?;
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
        blocking(prefix, move || {
            let rd = match std::fs::read_dir(&path) {
                Ok(rd) => rd,
                Err(e)
                    if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory =>
                {
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
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key);
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
}
