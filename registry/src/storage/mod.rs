//! The storage backend trait: an object-store-like interface the registry semantics sit on.
//!
//! Keys are `/`-separated relative paths made only by [`crate::paths`] from parsed names and digests.
//!
//! # Contract (checked for every backend by [`conformance`])
//! - `put` is atomic: a reader sees the old object, the new one, or nothing; never a partial object.
//! - Append writers (upload data) write to the end of one object; `finish` makes what was written durable.
//!   A writer dropped without `finish` keeps what reached storage (an upload can be resumed from `stat`).
//! - `rename` moves an object atomically and durably, replacing any object at the destination; it is how an
//!   upload is committed into the blob store. The destination's modification time is the time of the rename.
//! - `read` streams, optionally a byte range, and never loads a whole object in memory.
//! - `list` returns the names of the direct children of a prefix (objects and "directories"), sorted,
//!   without temporary files; an absent prefix lists as empty.
//! - `delete` removes an object or everything under a prefix; deleting what is absent succeeds.
//! - `create` writes an object only when none is there, atomically: of two racing creators exactly one wins.
//! - `walk` streams every object under a prefix, recursively, with its size and modification time, in bounded
//!   memory; append objects (upload data) may be left out.

pub mod conformance;
pub mod fs;
pub mod s3;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

/// A stream of object bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A stream of objects found by [`Storage::walk`]: each object's key (as the other methods take it) and meta.
pub type ObjectStream =
    Pin<Box<dyn Stream<Item = Result<(String, ObjectMeta), StorageError>> + Send>>;

/// Storage failures.
#[derive(Debug)]
pub enum StorageError {
    /// The object does not exist.
    NotFound(String),
    /// A range outside the object.
    InvalidRange,
    /// I/O or backend failure.
    Io(String, std::io::Error),
    /// No room: the write would leave less free space than the reserve, or the device is full. The message
    /// says how much is free.
    Full(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::NotFound(k) => write!(f, "not found: {k}"),
            StorageError::InvalidRange => write!(f, "invalid range"),
            StorageError::Io(k, e) => write!(f, "{k}: {e}"),
            StorageError::Full(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for StorageError {}

impl StorageError {
    /// Whether the error means "absent".
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
    }
}

/// What `stat` tells about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// When the object was last written, when the backend knows.
    pub modified: Option<SystemTime>,
}

/// Free space where a backend writes, and the reserve it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to the registry.
    pub available: u64,
    /// Size of the filesystem.
    pub total: u64,
    /// Free space uploads never use.
    pub reserve: u64,
}

/// Bytes as a person reads them: `512 B`, `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A writer appending to one object.
#[async_trait]
pub trait AppendWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, bytes: Bytes) -> Result<(), StorageError>;
    /// Size of the object including everything written so far.
    fn size(&self) -> u64;
    /// Makes everything written durable.
    async fn finish(self: Box<Self>) -> Result<(), StorageError>;
}

/// A storage backend. See the module documentation for the contract.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Size of an object, or `None` when absent.
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;
    /// Streams an object, or the half-open byte range `start..end` of it.
    async fn read(&self, key: &str, range: Option<(u64, u64)>) -> Result<ByteStream, StorageError>;
    /// Reads a small object whole (links, manifests); refuses objects over `limit` bytes.
    async fn read_small(&self, key: &str, limit: u64) -> Result<Bytes, StorageError>;
    /// Writes a small object atomically, replacing any previous one.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError>;
    /// Opens an object for appending, creating it empty when absent.
    async fn append(&self, key: &str) -> Result<Box<dyn AppendWriter>, StorageError>;
    /// Moves an object atomically, replacing the destination.
    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError>;
    /// Names of the direct children of `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// [`Storage::list`] as a shared slice, for listings read often and paged through (catalog, tags). A
    /// backend may answer from a cache, provided the answer reflects every change made before the call.
    async fn list_shared(&self, prefix: &str) -> Result<Arc<[String]>, StorageError> {
        Ok(self.list(prefix).await?.into())
    }
    /// Removes an object or a whole prefix.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Writes a small object only when no object is at `key`; returns whether this call created it. Of
    /// several concurrent creators, exactly one gets `true`.
    async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError>;
    /// Every object under `prefix`, recursively, in no particular order, streamed (memory does not grow with
    /// the number of objects). Append objects may be left out.
    fn walk(&self, prefix: &str) -> ObjectStream;
    /// Removes many objects (exact keys of objects, or folders), like [`Storage::delete`] of each. With
    /// `durable`, the removals are durable when this returns (a crash does not bring them back); without, they
    /// may be undone by a crash. Backends do it in bulk (one directory sync per folder, one request per
    /// thousand keys).
    async fn delete_batch(&self, keys: &[String], durable: bool) -> Result<(), StorageError> {
        let _ = durable;
        for k in keys {
            self.delete(k).await?;
        }
        Ok(())
    }
    /// Free space and the reserve, for backends that can run out of it (`None`: unbounded, as a bucket).
    async fn space(&self) -> Result<Option<Space>, StorageError> {
        Ok(None)
    }
    /// The local file an object is, for backends whose objects are files (the filesystem): a mirror writes a
    /// blob it fetches straight into its upload's data file and clients read that file as it grows, instead
    /// of going through a spool and a copy. `None` for the others.
    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        let _ = key;
        None
    }
}
