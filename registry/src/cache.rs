//! The metadata cache: what the read paths of the API ask the storage most (is this blob linked into the
//! repository, how big is it, what does this tag point at, is this manifest a revision of the repository, the
//! manifest's bytes), kept in memory so that a `HEAD` of a blob or a `GET` of a manifest costs no round trip to
//! a bucket once it has been answered.
//!
//! # Correctness
//! - Entries are keyed by storage key and hold what `stat` (the size) and `read_small` (the bytes) returned;
//!   absence is never cached.
//! - Every write through [`Invalidating`] (the storage the store, its uploads and its collector use) drops the
//!   entries of the key it wrote and of everything under it, after the write and before the caller hears of
//!   it: this process reads its own writes at once.
//! - A fill that raced a write is refused: each fill notes the invalidation count when it starts, and is not
//!   stored when an invalidation that covers its key happened since (the fill may hold what the write
//!   replaced).
//! - Content-addressed entries (under the blob store) are kept until evicted or invalidated; everything else
//!   (links, tags) expires after the configured TTL, which bounds what another replica's writes can leave
//!   stale here.
//! - Bounded by entries and bytes; the least recently used entries go first.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::metrics::Metrics;
use crate::storage::{AppendWriter, ObjectStream, Space, Storage, StorageError};

/// How many recent invalidations a fill is checked against; a fill older than all of them is refused.
const RECENT: usize = 1024;
/// What one entry costs beyond its key and bytes (map nodes, the LRU index), as counted against the bound.
const OVERHEAD: usize = 96;

/// Limits and lifetimes of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most entries kept.
    pub max_entries: usize,
    /// Most bytes kept (keys, values and [`OVERHEAD`] per entry).
    pub max_bytes: usize,
    /// Lifetime of entries that are not content-addressed.
    pub ttl: Duration,
}

struct Entry {
    size: u64,
    bytes: Option<Bytes>,
    /// `None`: content-addressed, kept until evicted or invalidated.
    expires: Option<Instant>,
    /// Position in the LRU order.
    used: u64,
}

impl Entry {
    fn cost(&self, key: &str) -> usize {
        key.len() + self.bytes.as_ref().map_or(0, |b| b.len()) + OVERHEAD
    }
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<String, Entry>,
    /// `used` → key, oldest first.
    lru: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
    /// Invalidations so far.
    generation: u64,
    /// The last [`RECENT`] invalidated keys, with the generation each made.
    recent: VecDeque<(u64, String)>,
}

/// Whether `key` is `path` or lies under it.
fn covers(path: &str, key: &str) -> bool {
    key.strip_prefix(path)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        || path.is_empty()
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.lru.remove(&e.used);
            self.bytes -= e.cost(key);
        }
    }

    fn touch(&mut self, key: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(key) {
            self.lru.remove(&e.used);
            e.used = tick;
            self.lru.insert(tick, key.to_string());
        }
    }

    /// Whether an invalidation covering `key` happened after `since`.
    fn raced(&self, key: &str, since: u64) -> bool {
        if since == self.generation {
            return false;
        }
        match self.recent.front() {
            // Older than everything remembered: cannot tell, so assume it raced.
            Some((first, _)) if *first > since + 1 => return true,
            None => return true,
            _ => {}
        }
        self.recent
            .iter()
            .rev()
            .take_while(|(g, _)| *g > since)
            .any(|(_, p)| covers(p, key))
    }
}

/// The in-memory metadata cache. See the module documentation.
pub struct MetaCache {
    inner: Mutex<Inner>,
    limits: CacheLimits,
    /// Keys under this prefix are content-addressed.
    immutable: String,
    metrics: Arc<Metrics>,
}

/// What a fill remembers from its start.
pub struct Fill(u64);

impl MetaCache {
    /// An empty cache.
    pub fn new(limits: CacheLimits, metrics: Arc<Metrics>) -> MetaCache {
        MetaCache {
            inner: Mutex::new(Inner::default()),
            limits,
            immutable: format!("{}/", crate::paths::blobs_root()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup<T>(&self, key: &str, f: impl FnOnce(&Entry) -> Option<T>) -> Option<T> {
        let mut inner = self.lock();
        let found = match inner.entries.get(key) {
            Some(e) if e.expires.is_some_and(|t| t <= Instant::now()) => {
                inner.remove(key);
                None
            }
            Some(e) => f(e),
            None => None,
        };
        if found.is_some() {
            inner.touch(key);
        }
        drop(inner);
        let result = if found.is_some() { "hit" } else { "miss" };
        self.metrics
            .cache_requests
            .with_label_values(&[result])
            .inc();
        found
    }

    /// Marks the start of a fill (before the storage is asked).
    pub fn begin(&self) -> Fill {
        Fill(self.lock().generation)
    }

    /// Stores what the storage answered for `key`, unless a write covering `key` happened since `fill` began.
    pub fn store(&self, fill: Fill, key: &str, size: u64, bytes: Option<Bytes>) {
        let expires = if key.starts_with(&self.immutable) {
            None
        } else {
            Some(Instant::now() + self.limits.ttl)
        };
        let mut inner = self.lock();
        if inner.raced(key, fill.0) {
            return;
        }
        // A stat after a read keeps the bytes the read stored.
        let bytes = match (bytes, inner.entries.get(key)) {
            (None, Some(e)) if e.size == size => e.bytes.clone(),
            (b, _) => b,
        };
        inner.remove(key);
        inner.tick += 1;
        let entry = Entry {
            size,
            bytes,
            expires,
            used: inner.tick,
        };
        let cost = entry.cost(key);
        if cost > self.limits.max_bytes || self.limits.max_entries == 0 {
            return;
        }
        inner.lru.insert(entry.used, key.to_string());
        inner.entries.insert(key.to_string(), entry);
        inner.bytes += cost;
        while inner.entries.len() > self.limits.max_entries || inner.bytes > self.limits.max_bytes {
            let Some((_, oldest)) = inner.lru.pop_first() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= e.cost(&oldest);
            }
        }
        self.publish(&inner);
    }

    /// Drops `path` and everything under it, and refuses fills of them that began before now.
    pub fn invalidate(&self, path: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        let g = inner.generation;
        inner.recent.push_back((g, path.to_string()));
        if inner.recent.len() > RECENT {
            inner.recent.pop_front();
        }
        let doomed: Vec<String> = inner
            .entries
            .range(path.to_string()..)
            .take_while(|(k, _)| k.starts_with(path))
            .filter(|(k, _)| covers(path, k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            inner.remove(&k);
        }
        self.publish(&inner);
    }

    fn publish(&self, inner: &Inner) {
        self.metrics.cache_entries.set(inner.entries.len() as i64);
        self.metrics.cache_bytes.set(inner.bytes as i64);
    }

    /// The size of the object at `key`, from the cache or else from `storage` (then cached); `None`: absent.
    pub async fn stat(
        &self,
        storage: &dyn Storage,
        key: &str,
    ) -> Result<Option<u64>, StorageError> {
        if let Some(size) = self.lookup(key, |e| Some(e.size)) {
            return Ok(Some(size));
        }
        let fill = self.begin();
        let meta = storage.stat(key).await?;
        if let Some(m) = meta {
            self.store(fill, key, m.size, None);
        }
        Ok(meta.map(|m| m.size))
    }

    /// [`Storage::read_small`] through the cache.
    pub async fn read_small(
        &self,
        storage: &dyn Storage,
        key: &str,
        limit: u64,
    ) -> Result<Bytes, StorageError> {
        let hit = self.lookup(key, |e| {
            e.bytes
                .as_ref()
                .filter(|b| b.len() as u64 <= limit)
                .cloned()
        });
        if let Some(b) = hit {
            return Ok(b);
        }
        let fill = self.begin();
        let bytes = storage.read_small(key, limit).await?;
        self.store(fill, key, bytes.len() as u64, Some(bytes.clone()));
        Ok(bytes)
    }

    /// Entries held (for tests).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A storage whose writes invalidate a [`MetaCache`]: every change goes through it, so no change escapes the
/// cache. Reads pass through unchanged (the store asks the cache where it wants one).
pub struct Invalidating {
    inner: Arc<dyn Storage>,
    cache: Arc<MetaCache>,
}

impl Invalidating {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>, cache: Arc<MetaCache>) -> Invalidating {
        Invalidating { inner, cache }
    }
}

#[async_trait]
impl Storage for Invalidating {
    async fn stat(&self, key: &str) -> Result<Option<crate::storage::ObjectMeta>, StorageError> {
        self.inner.stat(key).await
    }
    async fn read(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<crate::storage::ByteStream, StorageError> {
        self.inner.read(key, range).await
    }
    async fn read_small(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        self.inner.read_small(key, limit).await
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let r = self.inner.put(key, bytes).await;
        self.cache.invalidate(key);
        r
    }
    async fn append(&self, key: &str) -> Result<Box<dyn AppendWriter>, StorageError> {
        let r = self.inner.append(key).await;
        self.cache.invalidate(key);
        r
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let r = self.inner.rename(from, to).await;
        self.cache.invalidate(from);
        self.cache.invalidate(to);
        r
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix).await
    }
    async fn list_shared(&self, prefix: &str) -> Result<Arc<[String]>, StorageError> {
        self.inner.list_shared(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let r = self.inner.delete(key).await;
        self.cache.invalidate(key);
        r
    }
    async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError> {
        let r = self.inner.create(key, bytes).await;
        self.cache.invalidate(key);
        r
    }
    fn walk(&self, prefix: &str) -> ObjectStream {
        self.inner.walk(prefix)
    }
    async fn delete_batch(&self, keys: &[String], durable: bool) -> Result<(), StorageError> {
        let r = self.inner.delete_batch(keys, durable).await;
        for k in keys {
            self.cache.invalidate(k);
        }
        r
    }
    async fn space(&self) -> Result<Option<Space>, StorageError> {
        self.inner.space().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_entries: usize, max_bytes: usize, ttl: Duration) -> MetaCache {
        MetaCache::new(
            CacheLimits {
                max_entries,
                max_bytes,
                ttl,
            },
            Arc::new(Metrics::new()),
        )
    }

    fn blob(n: u32) -> String {
        format!("{}/sha256/00/{n:064}/data", crate::paths::blobs_root())
    }

    fn get(c: &MetaCache, key: &str) -> Option<u64> {
        c.lookup(key, |e| Some(e.size))
    }

    #[test]
    fn a_write_drops_the_key_and_everything_under_it_and_nothing_beside() {
        let c = cache(100, 1 << 20, Duration::from_secs(60));
        for k in [
            "r/a/_layers/x/link",
            "r/a/_layers/x",
            "r/a/_layers/xy/link",
            "r/b/link",
        ] {
            c.store(c.begin(), k, 1, None);
        }
        c.invalidate("r/a/_layers/x");
        assert_eq!(get(&c, "r/a/_layers/x/link"), None);
        assert_eq!(get(&c, "r/a/_layers/x"), None);
        assert_eq!(get(&c, "r/a/_layers/xy/link"), Some(1));
        assert_eq!(get(&c, "r/b/link"), Some(1));
    }

    #[test]
    fn a_fill_that_raced_a_write_of_its_key_is_not_stored() {
        let c = cache(100, 1 << 20, Duration::from_secs(60));
        let fill = c.begin();
        c.invalidate("r/a");
        c.store(fill, "r/a/link", 1, None);
        assert_eq!(get(&c, "r/a/link"), None);
        // A write elsewhere does not refuse it.
        let fill = c.begin();
        c.invalidate("r/b");
        c.store(fill, "r/a/link", 2, None);
        assert_eq!(get(&c, "r/a/link"), Some(2));
        // A fill older than every remembered write is refused.
        let fill = c.begin();
        for i in 0..=RECENT {
            c.invalidate(&format!("other/{i}"));
        }
        c.store(fill, "r/c/link", 3, None);
        assert_eq!(get(&c, "r/c/link"), None);
    }

    #[test]
    fn least_recently_used_entries_go_first_within_both_bounds() {
        let c = cache(3, 1 << 20, Duration::from_secs(60));
        for n in 0..3 {
            c.store(c.begin(), &blob(n), n.into(), None);
        }
        assert_eq!(get(&c, &blob(0)), Some(0));
        c.store(c.begin(), &blob(3), 3, None);
        assert_eq!(c.len(), 3);
        assert_eq!(get(&c, &blob(1)), None, "the least recently used went");
        assert_eq!(get(&c, &blob(0)), Some(0));
        let per_entry = blob(0).len() + 10 + OVERHEAD;
        let c = cache(100, 2 * per_entry, Duration::from_secs(60));
        for n in 0..5 {
            c.store(c.begin(), &blob(n), 10, Some(Bytes::from(vec![0; 10])));
        }
        assert_eq!(c.len(), 2);
        assert!(c.lock().bytes <= 2 * per_entry);
        // What is over the bound alone is not kept.
        c.store(
            c.begin(),
            &blob(9),
            1,
            Some(Bytes::from(vec![0; 3 * per_entry])),
        );
        assert_eq!(get(&c, &blob(9)), None);
    }

    #[test]
    fn only_content_addressed_entries_outlive_the_ttl() {
        let c = cache(100, 1 << 20, Duration::ZERO);
        c.store(c.begin(), "repositories/a/_layers/x/link", 1, None);
        c.store(c.begin(), &blob(1), 1, None);
        assert_eq!(get(&c, "repositories/a/_layers/x/link"), None);
        assert_eq!(get(&c, &blob(1)), Some(1));
    }

    #[test]
    fn a_stat_keeps_the_bytes_a_read_stored() {
        let c = cache(100, 1 << 20, Duration::from_secs(60));
        c.store(c.begin(), &blob(1), 2, Some(Bytes::from_static(b"{}")));
        c.store(c.begin(), &blob(1), 2, None);
        assert_eq!(
            c.lookup(&blob(1), |e| e.bytes.clone()),
            Some(Bytes::from_static(b"{}"))
        );
    }
}
