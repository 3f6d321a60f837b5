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
//! - With Redis ([`MetaCache::with_shared`]), links and tags live there only, so replicas see each other's
//!   writes at once: a write leaves a short-lived tombstone on each key it may have changed, lookups that find
//!   one ask the storage, and fills only create absent keys (`SET NX`). Redis failing or slow only sends
//!   lookups to the storage (see [`crate::redis`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::metrics::Metrics;
use crate::redis::{Redis, Reply};
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
    /// `berth_registry_cache_requests_total` by result, resolved once (no label hashing per lookup).
    hits: prometheus::IntCounter,
    shared_hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
    shared: Option<Shared>,
}

/// What a fill remembers from its start.
pub struct Fill(u64, Instant);

impl MetaCache {
    /// An empty cache.
    pub fn new(limits: CacheLimits, metrics: Arc<Metrics>) -> MetaCache {
        MetaCache {
            inner: Mutex::new(Inner::default()),
            limits,
            immutable: format!("{}/", crate::paths::blobs_root()),
            hits: metrics.cache_requests.with_label_values(&["hit"]),
            shared_hits: metrics.cache_requests.with_label_values(&["shared_hit"]),
            misses: metrics.cache_requests.with_label_values(&["miss"]),
            metrics,
            shared: None,
        }
    }

    /// This cache backed by Redis, shared with the other replicas of the same storage (`namespace` tells this
    /// storage's entries from others'); entries that are not content-addressed live `ttl` there.
    pub fn with_shared(mut self, redis: Redis, namespace: &str, ttl: Duration) -> MetaCache {
        self.shared = Some(Shared {
            redis,
            prefix: format!("berth:{namespace}:"),
            repositories: format!("{}/", crate::paths::repositories_root()),
            ttl,
            dirty: Mutex::new(Dirty::default()),
        });
        self
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
        found
    }

    /// Whether `key` may be kept in this process's memory: everything without Redis; with Redis only what is
    /// content-addressed (links and tags live in Redis alone, where every replica's writes invalidate them).
    fn in_memory(&self, key: &str) -> bool {
        self.shared.is_none() || key.starts_with(&self.immutable)
    }

    /// The shared cache, when `key` is something it holds (links, tags, blob facts; never upload state).
    fn shared_for(&self, key: &str) -> Option<&Shared> {
        self.shared.as_ref().filter(|sh| {
            (key.starts_with(&self.immutable) || key.starts_with(&sh.repositories))
                && !key.contains("/_uploads/")
                && !sh.is_dirty(key)
        })
    }

    /// Marks the start of a fill (before the storage is asked).
    pub fn begin(&self) -> Fill {
        Fill(self.lock().generation, Instant::now())
    }

    /// Whether a fill that began at `fill` may still be put in Redis: no write of this process covering `key`
    /// since, and young enough that no other replica's tombstone for it can have expired meanwhile.
    fn may_share(&self, fill: &Fill, key: &str) -> bool {
        fill.1.elapsed() < SHARED_FILL_WINDOW && !self.lock().raced(key, fill.0)
    }

    /// Stores what the storage answered for `key`, unless a write covering `key` happened since `fill` began.
    pub fn store(&self, fill: &Fill, key: &str, size: u64, bytes: Option<Bytes>) {
        let expires = if key.starts_with(&self.immutable) {
            None
        } else if self.limits.ttl.is_zero() {
            return;
        } else {
            Some(Instant::now() + self.limits.ttl)
        };
        let mut inner = self.lock();
        if inner.raced(key, fill.0) {
            return;
        }
        // A stat after a read keeps the bytes the read stored (content-addressed entries only: a link of the
        // same length may hold another digest).
        let bytes = match (bytes, inner.entries.get(key)) {
            (None, Some(e)) if e.size == size && e.expires.is_none() => e.bytes.clone(),
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
        // One entry never takes more than an eighth of the cache (a large manifest does not flush it).
        if cost > self.limits.max_bytes / 8 || self.limits.max_entries == 0 {
            self.publish(&inner);
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

    /// Drops `path` and everything under it, here and in Redis, before returning: after the write to `path`
    /// and before the writer answers.
    pub async fn invalidate<S: AsRef<str>>(&self, paths: &[S]) {
        for p in paths {
            self.forget(p.as_ref());
        }
        let Some(sh) = self.shared.as_ref() else {
            return;
        };
        let paths: Vec<&str> = paths
            .iter()
            .map(|p| p.as_ref().trim_end_matches('/'))
            .filter(|p| {
                let folder = format!("{p}/");
                (folder.starts_with(&self.immutable)
                    || folder.starts_with(&sh.repositories)
                    || self.immutable.starts_with(&folder)
                    || sh.repositories.starts_with(&folder))
                    && !folder.contains("/_uploads/")
            })
            .collect();
        let keys: Vec<String> = paths.iter().flat_map(|p| sh.affected(p)).collect();
        if !sh.tombstones(&keys).await {
            // Another replica may still read what these writes replaced; this one asks the storage for them
            // until their Redis entries have expired.
            sh.mark_dirty(&paths);
        } else {
            // A folder above the cached facts (none is written today): its keys cannot be listed in Redis.
            let above: Vec<&str> = paths
                .iter()
                .copied()
                .filter(|p| !self.at_fact_level(sh, p))
                .collect();
            if !above.is_empty() {
                sh.mark_dirty(&above);
            }
        }
    }

    /// Whether `path` is one cached fact's folder or object, or lies under one: then [`Shared::affected`] names
    /// every Redis key a write to it may have changed.
    fn at_fact_level(&self, sh: &Shared, path: &str) -> bool {
        let depth = |rest: &str, marker: &str, need: usize| {
            rest.find(marker)
                .is_some_and(|i| rest[i + marker.len()..].split('/').count() >= need)
        };
        if let Some(rest) = path.strip_prefix(&self.immutable) {
            return rest.split('/').count() >= 3;
        }
        match path.strip_prefix(&sh.repositories) {
            Some(rest) => {
                depth(rest, "/_layers/", 2)
                    || depth(rest, "/_manifests/revisions/", 2)
                    || depth(rest, "/_manifests/tags/", 1)
            }
            None => false,
        }
    }

    /// Drops `path` and everything under it from memory, and refuses fills of them that began before now.
    pub fn forget(&self, path: &str) {
        let path = path.trim_end_matches('/');
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
        let memory = self.in_memory(key);
        if memory {
            if let Some(size) = self.lookup(key, |e| Some(e.size)) {
                self.hits.inc();
                return Ok(Some(size));
            }
        }
        let fill = self.begin();
        let shared = self.shared_for(key);
        let mut fill_shared = false;
        if let Some(sh) = shared {
            match sh.get(key).await {
                Lookup::Found(v) => {
                    self.shared_hits.inc();
                    let size = v.size();
                    if memory {
                        self.store(&fill, key, size, v.into_bytes());
                    }
                    return Ok(Some(size));
                }
                Lookup::Absent => fill_shared = true,
                Lookup::Changed | Lookup::Failed => {}
            }
        }
        self.misses.inc();
        let meta = storage.stat(key).await?;
        if let Some(m) = meta {
            if memory {
                self.store(&fill, key, m.size, None);
            }
            if let (true, Some(sh)) = (fill_shared, shared) {
                if self.may_share(&fill, key) {
                    sh.fill(key, &Value::Size(m.size)).await;
                }
            }
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
        let memory = self.in_memory(key);
        if memory {
            let hit = self.lookup(key, |e| {
                e.bytes
                    .as_ref()
                    .filter(|b| b.len() as u64 <= limit)
                    .cloned()
            });
            if let Some(b) = hit {
                self.hits.inc();
                return Ok(b);
            }
        }
        let fill = self.begin();
        let shared = self.shared_for(key);
        let mut fill_shared = false;
        if let Some(sh) = shared {
            match sh.get(key).await {
                Lookup::Found(Value::Bytes(b)) if b.len() as u64 <= limit => {
                    self.shared_hits.inc();
                    if memory {
                        self.store(&fill, key, b.len() as u64, Some(b.clone()));
                    }
                    return Ok(b);
                }
                Lookup::Absent => fill_shared = true,
                _ => {}
            }
        }
        self.misses.inc();
        let bytes = storage.read_small(key, limit).await?;
        if memory {
            self.store(&fill, key, bytes.len() as u64, Some(bytes.clone()));
        }
        if let (true, Some(sh)) = (fill_shared, shared) {
            if bytes.len() <= SHARED_BYTES_LIMIT && self.may_share(&fill, key) {
                sh.fill(key, &Value::Bytes(bytes.clone())).await;
            }
        }
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

/// How long a tombstone (left by a write) keeps fills of its key away: longer than any read that began before
/// the write can take to come back with its (old) answer.
const TOMBSTONE_TTL: Duration = Duration::from_secs(10);
/// Lifetime in Redis of content-addressed entries (a bound for Redis set to evict nothing).
const STABLE_TTL: Duration = Duration::from_secs(24 * 3600);
/// A fill older than this is not put in Redis: a tombstone left by another replica's write after the fill's
/// read must still be there to refuse it.
const SHARED_FILL_WINDOW: Duration = Duration::from_secs(5);
/// How long content-addressed entries that could not be invalidated are skipped (they live a day in Redis; a
/// blob deleted and not pushed again is refused by the link check long before).
const STALE_FILL_BOUND: Duration = Duration::from_secs(60);
/// Most paths remembered as dirty (their tombstones could not be written); past it, every lookup of links and
/// tags skips Redis until the entries they may have left have expired.
const MAX_DIRTY: usize = 4096;
/// Largest value put in Redis (links are tens of bytes; larger manifests stay in each replica's memory).
const SHARED_BYTES_LIMIT: usize = 256 * 1024;

/// A cached fact as stored in Redis: `S<size>`, `B<bytes>`, or `T` (a tombstone: changed recently, ask the
/// storage and do not fill).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// What `stat` answered: the size.
    Size(u64),
    /// What `read_small` answered: the bytes.
    Bytes(Bytes),
}

impl Value {
    /// Reads a value stored in Redis; `None` for a tombstone or anything else (never trusted, never a panic).
    pub fn decode(v: &Bytes) -> Option<Value> {
        match v.first() {
            Some(b'S') => std::str::from_utf8(&v[1..])
                .ok()
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(Value::Size),
            Some(b'B') => Some(Value::Bytes(v.slice(1..))),
            _ => None,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Value::Size(n) => *n,
            Value::Bytes(b) => b.len() as u64,
        }
    }

    fn into_bytes(self) -> Option<Bytes> {
        match self {
            Value::Size(_) => None,
            Value::Bytes(b) => Some(b),
        }
    }

    /// The value as stored in Redis.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Value::Size(n) => format!("S{n}").into_bytes(),
            Value::Bytes(b) => {
                let mut v = Vec::with_capacity(b.len() + 1);
                v.push(b'B');
                v.extend_from_slice(b);
                v
            }
        }
    }
}

/// What Redis said about a key.
enum Lookup {
    Found(Value),
    /// No entry: ask the storage, then fill.
    Absent,
    /// A tombstone (or an entry that does not parse): ask the storage, do not fill.
    Changed,
    /// Redis skipped or failed: ask the storage.
    Failed,
}

/// The Redis side of the cache.
struct Shared {
    redis: Redis,
    prefix: String,
    repositories: String,
    ttl: Duration,
    /// Paths written while their tombstones could not be written, until when Redis may hold stale entries for
    /// them; and when every path is to be treated so (too many to list).
    dirty: Mutex<Dirty>,
}

#[derive(Default)]
struct Dirty {
    paths: Vec<(Instant, String)>,
    all_until: Option<Instant>,
}

impl Shared {
    fn key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    async fn get(&self, key: &str) -> Lookup {
        let k = self.key(key);
        match self.redis.run(&[vec![&b"GET"[..], &k]], false).await {
            Some(r) => match r.into_iter().next() {
                Some(Reply::Nil) => Lookup::Absent,
                Some(Reply::Data(v)) => Value::decode(&v).map_or(Lookup::Changed, Lookup::Found),
                _ => Lookup::Changed,
            },
            None => Lookup::Failed,
        }
    }

    /// Stores what the storage answered, unless anything is there (a tombstone left by a write since, or a
    /// fill by another replica).
    async fn fill(&self, key: &str, v: &Value) {
        let ttl = if key.starts_with(&self.repositories) {
            self.ttl
        } else {
            STABLE_TTL
        };
        let (k, v, ttl) = (self.key(key), v.encode(), ttl.as_secs().max(1).to_string());
        self.redis
            .run(
                &[vec![&b"SET"[..], &k, &v, b"NX", b"EX", ttl.as_bytes()]],
                true,
            )
            .await;
    }

    /// The keys a write to `path` (an object or a folder) may have changed: the path itself and the objects
    /// the cache reads in such a folder.
    fn affected(&self, path: &str) -> Vec<String> {
        if path.ends_with("/link") || path.ends_with("/data") {
            return vec![path.to_string()];
        }
        ["", "/link", "/current/link", "/data"]
            .iter()
            .map(|s| format!("{path}{s}"))
            .collect()
    }

    /// Leaves a tombstone on each key; false when any could not be written.
    async fn tombstones(&self, keys: &[String]) -> bool {
        let ttl = TOMBSTONE_TTL.as_secs().to_string();
        let mut all = true;
        for group in keys.chunks(256) {
            let ks: Vec<Vec<u8>> = group.iter().map(|k| self.key(k)).collect();
            let cmds: Vec<Vec<&[u8]>> = ks
                .iter()
                .map(|k| vec![&b"SET"[..], k, b"T", b"EX", ttl.as_bytes()])
                .collect();
            all &= self.redis.run(&cmds, true).await.is_some();
        }
        all
    }

    fn mark_dirty(&self, paths: &[&str]) {
        let until = Instant::now() + self.ttl.max(STALE_FILL_BOUND);
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        d.paths.retain(|(t, _)| *t > now);
        if d.paths.len() + paths.len() > MAX_DIRTY {
            d.paths.clear();
            d.all_until = Some(until);
        } else {
            d.paths.extend(paths.iter().map(|p| (until, p.to_string())));
        }
    }

    /// Whether `key` may have a stale entry in Redis that this replica could not invalidate.
    fn is_dirty(&self, key: &str) -> bool {
        let d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if d.all_until.is_some_and(|t| t > now) && key.starts_with(&self.repositories) {
            return true;
        }
        d.paths.iter().any(|(t, p)| *t > now && covers(p, key))
    }
}

/// The invalidation a write owes: done after the write, or, when the write's future is dropped before that (a
/// client that went away, a shutdown), on drop: the memory at once and Redis from a task of its own, since
/// the write may have reached the storage.
struct Pending {
    cache: Arc<MetaCache>,
    paths: Vec<String>,
    armed: bool,
}

impl Pending {
    fn new<S: AsRef<str>>(cache: &Arc<MetaCache>, paths: &[S]) -> Pending {
        Pending {
            cache: Arc::clone(cache),
            paths: paths.iter().map(|p| p.as_ref().to_string()).collect(),
            armed: true,
        }
    }

    async fn done(mut self) {
        self.cache.invalidate(&self.paths).await;
        self.armed = false;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for p in &self.paths {
            self.cache.forget(p);
        }
        if self.cache.shared.is_some() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let cache = Arc::clone(&self.cache);
                let paths = std::mem::take(&mut self.paths);
                rt.spawn(async move { cache.invalidate(&paths).await });
            }
        }
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
        let pending = Pending::new(&self.cache, &[key]);
        let r = self.inner.put(key, bytes).await;
        pending.done().await;
        r
    }
    async fn append(&self, key: &str) -> Result<Box<dyn AppendWriter>, StorageError> {
        // Upload data: nothing the cache holds is ever appended to.
        self.inner.append(key).await
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let pending = Pending::new(&self.cache, &[from, to]);
        let r = self.inner.rename(from, to).await;
        pending.done().await;
        r
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix).await
    }
    async fn list_shared(&self, prefix: &str) -> Result<Arc<[String]>, StorageError> {
        self.inner.list_shared(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let pending = Pending::new(&self.cache, &[key]);
        let r = self.inner.delete(key).await;
        pending.done().await;
        r
    }
    async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError> {
        let pending = Pending::new(&self.cache, &[key]);
        let r = self.inner.create(key, bytes).await;
        pending.done().await;
        r
    }
    fn walk(&self, prefix: &str) -> ObjectStream {
        self.inner.walk(prefix)
    }
    async fn delete_batch(&self, keys: &[String], durable: bool) -> Result<(), StorageError> {
        let pending = Pending::new(&self.cache, keys);
        let r = self.inner.delete_batch(keys, durable).await;
        pending.done().await;
        r
    }
    async fn space(&self) -> Result<Option<Space>, StorageError> {
        self.inner.space().await
    }
    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.inner.local_path(key)
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
            c.store(&c.begin(), k, 1, None);
        }
        c.forget("r/a/_layers/x");
        assert_eq!(get(&c, "r/a/_layers/x/link"), None);
        assert_eq!(get(&c, "r/a/_layers/x"), None);
        assert_eq!(get(&c, "r/a/_layers/xy/link"), Some(1));
        assert_eq!(get(&c, "r/b/link"), Some(1));
    }

    #[test]
    fn a_fill_that_raced_a_write_of_its_key_is_not_stored() {
        let c = cache(100, 1 << 20, Duration::from_secs(60));
        let fill = c.begin();
        c.forget("r/a");
        c.store(&fill, "r/a/link", 1, None);
        assert_eq!(get(&c, "r/a/link"), None);
        // A write elsewhere does not refuse it.
        let fill = c.begin();
        c.forget("r/b");
        c.store(&fill, "r/a/link", 2, None);
        assert_eq!(get(&c, "r/a/link"), Some(2));
        // A fill older than every remembered write is refused.
        let fill = c.begin();
        for i in 0..=RECENT {
            c.forget(&format!("other/{i}"));
        }
        c.store(&fill, "r/c/link", 3, None);
        assert_eq!(get(&c, "r/c/link"), None);
    }

    #[test]
    fn least_recently_used_entries_go_first_within_both_bounds() {
        let c = cache(3, 1 << 20, Duration::from_secs(60));
        for n in 0..3 {
            c.store(&c.begin(), &blob(n), n.into(), None);
        }
        assert_eq!(get(&c, &blob(0)), Some(0));
        c.store(&c.begin(), &blob(3), 3, None);
        assert_eq!(c.len(), 3);
        assert_eq!(get(&c, &blob(1)), None, "the least recently used went");
        assert_eq!(get(&c, &blob(0)), Some(0));
        let per_entry = blob(0).len() + 10 + OVERHEAD;
        let c = cache(100, 16 * per_entry, Duration::from_secs(60));
        for n in 0..20 {
            c.store(&c.begin(), &blob(n), 10, Some(Bytes::from(vec![0; 10])));
        }
        assert_eq!(c.len(), 16);
        assert!(c.lock().bytes <= 16 * per_entry);
        assert_eq!(get(&c, &blob(3)), None);
        assert_eq!(get(&c, &blob(4)), Some(10));
        // One entry over an eighth of the bound is not kept (it would flush the others).
        c.store(
            &c.begin(),
            &blob(99),
            1,
            Some(Bytes::from(vec![0; 2 * per_entry])),
        );
        assert_eq!(get(&c, &blob(99)), None);
        assert_eq!(c.len(), 16);
    }

    #[test]
    fn a_zero_ttl_keeps_only_content_addressed_entries() {
        let c = cache(100, 1 << 20, Duration::ZERO);
        c.store(&c.begin(), "repositories/a/_layers/x/link", 1, None);
        assert!(c.is_empty());
        c.store(&c.begin(), &blob(1), 1, None);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_stat_never_gives_a_link_the_bytes_of_an_older_one() {
        let c = cache(100, 1 << 20, Duration::from_secs(60));
        let link = "repositories/a/_manifests/tags/t/current/link";
        c.store(&c.begin(), link, 2, Some(Bytes::from_static(b"d1")));
        c.store(&c.begin(), link, 2, None);
        assert_eq!(c.lookup(link, |e| e.bytes.clone()), None);
    }

    #[test]
    fn only_content_addressed_entries_outlive_the_ttl() {
        let c = cache(100, 1 << 20, Duration::ZERO);
        c.store(&c.begin(), "repositories/a/_layers/x/link", 1, None);
        c.store(&c.begin(), &blob(1), 1, None);
        assert_eq!(get(&c, "repositories/a/_layers/x/link"), None);
        assert_eq!(get(&c, &blob(1)), Some(1));
    }

    #[test]
    fn a_stat_keeps_the_bytes_a_read_stored() {
        let c = cache(100, 1 << 20, Duration::from_secs(60));
        c.store(&c.begin(), &blob(1), 2, Some(Bytes::from_static(b"{}")));
        c.store(&c.begin(), &blob(1), 2, None);
        assert_eq!(
            c.lookup(&blob(1), |e| e.bytes.clone()),
            Some(Bytes::from_static(b"{}"))
        );
    }
}
