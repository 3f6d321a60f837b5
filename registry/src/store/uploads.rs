//! Upload sessions: data appended to the session's own object, hashed as it streams in, committed into the
//! blob store by a rename once the digest is verified.
//!
//! The session lives in storage (`_uploads/<id>/startedat` and `data`), so it survives a restart and can be
//! resumed. The running sha256 state is kept in memory only as an optimisation; when it is missing (after a
//! restart) or does not match the data's length, the data is hashed again at commit.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::RegistryStore;
use crate::error::RegistryError;
use crate::oci::{Algorithm, Digest, Hasher, RepoName, UploadId};
use crate::paths;

/// A request body as a stream of bytes.
pub type BodyStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Bytes gathered from the network before they are handed to the hash and the disk together. A batch is the
/// body's own chunks, not a copy of them: the storage writer copies them once, into its own buffers.
const BATCH: usize = 1024 * 1024;

/// Batches queued for each of the hash and the disk (bounds memory per upload). The hash is the slow stage;
/// two batches are milliseconds of its work, enough to keep it busy while the network refills the queue.
const IN_FLIGHT: usize = 2;

/// Chunks of a body, shared by the hash and the disk stages.
type Batch = Arc<Vec<Bytes>>;

/// Chunks smaller than this are copied together instead of kept as they came (see [`Batcher`]).
const SMALL_CHUNK: usize = 16 * 1024;

/// Gathers a body's chunks into batches of about [`BATCH`] bytes. Chunks of [`SMALL_CHUNK`] bytes or more are
/// kept as they are, without a copy; smaller ones are copied together, so that a body sent in tiny pieces (a
/// chunked upload of 1-byte chunks) cannot make a batch of a million handles, each keeping alive the network
/// buffer it was read into.
#[derive(Default)]
struct Batcher {
    chunks: Vec<Bytes>,
    small: BytesMut,
    len: usize,
}

impl Batcher {
    /// Adds a chunk; returns the batch gathered so far when this chunk would take it past [`BATCH`].
    fn push(&mut self, c: Bytes) -> Option<Batch> {
        let full = (self.len > 0 && self.len + c.len() > BATCH).then(|| self.take());
        self.len += c.len();
        if c.len() >= SMALL_CHUNK {
            self.seal_small();
            self.chunks.push(c);
        } else {
            if self.small.capacity() - self.small.len() < c.len() {
                self.small.reserve(4 * SMALL_CHUNK);
            }
            self.small.extend_from_slice(&c);
            if self.small.len() >= SMALL_CHUNK {
                self.seal_small();
            }
        }
        full
    }

    fn seal_small(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
    }

    /// The batch gathered so far.
    fn take(&mut self) -> Batch {
        self.seal_small();
        self.len = 0;
        Arc::new(std::mem::take(&mut self.chunks))
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Running hash of an upload's data, valid for its first `offset` bytes.
struct HashState {
    offset: u64,
    hasher: Hasher,
}

/// A session's running hash, and the lock its data writer holds until its last write is done.
#[derive(Default)]
struct SessionSlot {
    state: tokio::sync::Mutex<Option<HashState>>,
    /// Held by the task that appends a request's body to the session's data. That task outlives the request
    /// when the request is dropped (the client went away) with batches still queued; whoever appends to or
    /// commits the session next waits for it, so late writes never mix with theirs.
    writing: Arc<tokio::sync::Mutex<()>>,
}

type Slot = Arc<SessionSlot>;

/// Per-session locks and hash states, only for sessions known to exist (started here, or found in storage):
/// a request naming an unknown session leaves nothing behind.
#[derive(Default)]
pub(super) struct UploadStates {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    map: HashMap<String, (Instant, Slot)>,
    /// The size at which the next prune runs: twice what the last one left, so pruning costs O(1) per insert
    /// however many live sessions there are.
    prune_at: usize,
}

/// Past this many sessions, states unused for [`STATE_TTL`] are dropped (abandoned uploads, or sessions that
/// another replica committed). Dropping a state only costs a re-hash at commit.
const STATE_PRUNE_AT: usize = 1024;
const STATE_TTL: Duration = Duration::from_secs(3600);

impl UploadStates {
    /// The state of a session known to exist, created when missing.
    fn slot(&self, key: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if slots.map.len() >= slots.prune_at.max(STATE_PRUNE_AT) {
            // A state in use (its lock held elsewhere) is never dropped.
            slots.map.retain(|_, (used, slot)| {
                now.duration_since(*used) < STATE_TTL
                    || Arc::strong_count(slot) > 1
                    || Arc::strong_count(&slot.writing) > 1
            });
            slots.prune_at = slots.map.len().saturating_mul(2);
        }
        let entry = slots
            .map
            .entry(key.to_string())
            .or_insert_with(|| (now, Slot::default()));
        entry.0 = now;
        entry.1.clone()
    }

    /// The state of a session, if one is kept.
    fn existing(&self, key: &str) -> Option<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let entry = slots.map.get_mut(key)?;
        entry.0 = Instant::now();
        Some(entry.1.clone())
    }

    /// Number of sessions with a kept state.
    pub(super) fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    fn forget(&self, key: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .remove(key);
    }
}

/// A session in a repository, as named in its URL.
#[derive(Clone)]
pub struct UploadSession {
    /// Repository.
    pub name: RepoName,
    /// Session id.
    pub id: UploadId,
}

impl UploadSession {
    fn key(&self) -> String {
        format!("{}/{}", self.name, self.id.as_str())
    }
}

/// What an append did.
pub struct Appended {
    /// Size of the upload's data afterwards.
    pub size: u64,
    /// Bytes taken from this request's body.
    pub received: u64,
}

impl RegistryStore {
    /// Starts an upload session in `name`.
    pub async fn start_upload(&self, name: &RepoName) -> Result<UploadSession, RegistryError> {
        if let Some(sp) = self.storage.space().await? {
            if sp.available < sp.reserve {
                return Err(RegistryError::StorageFull(format!(
                    "storage full: {} free, {} kept in reserve",
                    crate::storage::human_bytes(sp.available),
                    crate::storage::human_bytes(sp.reserve)
                )));
            }
        }
        let session = UploadSession {
            name: name.clone(),
            id: UploadId::generate(),
        };
        let now = httpdate_now();
        self.storage
            .put(
                &paths::upload_started_at(name, &session.id),
                Bytes::from(now),
            )
            .await?;
        self.storage
            .append(&paths::upload_data(name, &session.id))
            .await?
            .finish()
            .await?;
        self.uploads.slot(&session.key());
        Ok(session)
    }

    /// The state of session `s`; `BlobUploadUnknown` (and no state kept) when it does not exist.
    async fn session_slot(&self, s: &UploadSession) -> Result<Slot, RegistryError> {
        let key = s.key();
        if let Some(slot) = self.uploads.existing(&key) {
            return Ok(slot);
        }
        self.upload_size(s).await?;
        Ok(self.uploads.slot(&key))
    }

    /// Current size of an upload's data; `BlobUploadUnknown` when there is no such session.
    pub async fn upload_size(&self, s: &UploadSession) -> Result<u64, RegistryError> {
        if self
            .storage
            .stat(&paths::upload_started_at(&s.name, &s.id))
            .await?
            .is_none()
        {
            return Err(RegistryError::BlobUploadUnknown);
        }
        Ok(self
            .storage
            .stat(&paths::upload_data(&s.name, &s.id))
            .await?
            .map(|m| m.size)
            .unwrap_or(0))
    }

    /// Appends a body to an upload. With `start`, the body must begin at the upload's current size
    /// (else 416 with the current offset); with `expected_len`, exactly that many bytes must arrive.
    pub async fn append_upload(
        &self,
        s: &UploadSession,
        start: Option<u64>,
        expected_len: Option<u64>,
        body: BodyStream,
    ) -> Result<Appended, RegistryError> {
        let slot = self.session_slot(s).await?;
        let mut state = slot.state.lock().await;
        self.append_locked(s, &slot.writing, &mut state, start, expected_len, body)
            .await
    }

    async fn append_locked(
        &self,
        s: &UploadSession,
        writing: &Arc<tokio::sync::Mutex<()>>,
        state: &mut Option<HashState>,
        start: Option<u64>,
        expected_len: Option<u64>,
        mut body: BodyStream,
    ) -> Result<Appended, RegistryError> {
        // Waits for the writer of an earlier request that was dropped mid-body; this one's writer keeps the
        // lock until its last write is done, even if this request is dropped in turn.
        let writing = Arc::clone(writing).lock_owned().await;
        let size = self.upload_size(s).await?;
        if let Some(start) = start {
            if start != size {
                return Err(RegistryError::RangeInvalid {
                    upload_offset: Some(size),
                    blob_size: None,
                });
            }
        }
        let hasher = match state.take() {
            Some(h) if h.offset == size => Some(h.hasher),
            _ if size == 0 => Some(Hasher::new(Algorithm::Sha256)),
            _ => None,
        };
        let mut writer = self
            .storage
            .append(&paths::upload_data(&s.name, &s.id))
            .await?;
        // The network, the disk and the hash are three stages with a bounded channel between each: a writer task
        // takes batches while the next one is read, and the hash has its own task and channel, so a slow write
        // (or a periodic sync) never holds the hash up and the hash never holds the disk up. The channels bound
        // what is held in memory; a batch is shared by both consumers, not copied.
        let (tx, mut rx) = mpsc::channel::<Batch>(IN_FLIGHT);
        let worker = tokio::spawn(async move {
            let _writing = writing;
            while let Some(batch) = rx.recv().await {
                for chunk in batch.iter() {
                    writer.write(chunk.clone()).await?;
                }
            }
            let size = writer.size();
            writer.finish().await?;
            Ok::<_, crate::storage::StorageError>(size)
        });
        let (mut hash_tx, hashing) = match hasher {
            Some(hasher) => {
                let (htx, mut hrx) = mpsc::channel::<Batch>(IN_FLIGHT);
                let task = tokio::spawn(async move {
                    let mut hasher = hasher;
                    while let Some(batch) = hrx.recv().await {
                        hasher = tokio::task::spawn_blocking(move || {
                            for chunk in batch.iter() {
                                hasher.update(chunk);
                            }
                            hasher
                        })
                        .await
                        .ok()?;
                    }
                    Some(hasher)
                });
                (Some(htx), Some(task))
            }
            None => (None, None),
        };
        // A batch goes to the hash first, then to the disk. When the hash task has gone (it cannot, short of a
        // panic), the data is still written and hashed again at commit.
        async fn send(
            batch: Batch,
            hash_tx: &mut Option<mpsc::Sender<Batch>>,
            tx: &mpsc::Sender<Batch>,
        ) -> bool {
            if let Some(h) = hash_tx {
                if h.send(batch.clone()).await.is_err() {
                    *hash_tx = None;
                }
            }
            tx.send(batch).await.is_ok()
        }
        let mut received: u64 = 0;
        let mut batcher = Batcher::default();
        let mut body_error = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => {
                    received += c.len() as u64;
                    if expected_len.is_some_and(|n| received > n) {
                        body_error = Some(RegistryError::SizeInvalid(
                            "body is longer than its declared length".into(),
                        ));
                        break;
                    }
                    if let Some(full) = batcher.push(c) {
                        if !send(full, &mut hash_tx, &tx).await {
                            break;
                        }
                    }
                }
                Err(e) => {
                    body_error = Some(RegistryError::BlobUploadInvalid(format!(
                        "body read failed: {e}"
                    )));
                    break;
                }
            }
        }
        if !batcher.is_empty() {
            send(batcher.take(), &mut hash_tx, &tx).await;
        }
        drop(tx);
        let hash_live = hash_tx.take().is_some();
        let new_size = match worker.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(RegistryError::Internal(e.to_string())),
        };
        // The hash is kept only if it saw every batch the disk did.
        let hasher = match hashing {
            Some(task) if hash_live => task.await.ok().flatten(),
            _ => None,
        };
        *state = hasher.map(|hasher| HashState {
            offset: new_size,
            hasher,
        });
        if let Some(e) = body_error {
            return Err(e);
        }
        if expected_len.is_some_and(|n| n != received) {
            return Err(RegistryError::SizeInvalid(format!(
                "received {received} bytes, expected {}",
                expected_len.unwrap_or(0)
            )));
        }
        Ok(Appended {
            size: new_size,
            received,
        })
    }

    /// Completes an upload: appends the optional final body, verifies `digest`, moves the data into the blob
    /// store and links the blob into the repository. A digest mismatch removes the session.
    pub async fn commit_upload(
        &self,
        s: &UploadSession,
        digest: &Digest,
        final_chunk: Option<(Option<u64>, Option<u64>, BodyStream)>,
    ) -> Result<u64, RegistryError> {
        let slot = self.session_slot(s).await?;
        let mut state = slot.state.lock().await;
        // No writer of a dropped request may still be appending while the data is hashed and moved.
        drop(slot.writing.lock().await);
        let mut size = self.upload_size(s).await?;
        if let Some((start, len, body)) = final_chunk {
            size = self
                .append_locked(s, &slot.writing, &mut state, start, len, body)
                .await?
                .size;
        }
        let data_key = paths::upload_data(&s.name, &s.id);
        let actual = match state.take() {
            Some(h) if h.offset == size && h.hasher.algorithm() == digest.algorithm() => {
                h.hasher.finish()
            }
            _ => self.hash_object(&data_key, digest.algorithm()).await?,
        };
        if &actual != digest {
            drop(state);
            self.cancel_upload(s).await?;
            return Err(RegistryError::DigestInvalid(format!(
                "uploaded content has digest {actual}, not {digest}"
            )));
        }
        self.move_into_blob_store(&data_key, digest, size).await?;
        let linked = self.link_blob(&s.name, digest).await?;
        self.storage
            .delete(&paths::upload_dir(&s.name, &s.id))
            .await?;
        if !linked {
            // Only with a collector sweeping this very content at this very moment (a grace period of 0).
            drop(state);
            self.uploads.forget(&s.key());
            return Err(RegistryError::BlobUploadInvalid(
                "the blob was garbage collected while the upload was committed; upload it again"
                    .into(),
            ));
        }
        drop(state);
        self.uploads.forget(&s.key());
        Ok(size)
    }

    /// Stores a blob whose content was checked against `digest` as it arrived (a mirror's fetch): written as
    /// an upload of `name`, then moved into the blob store and linked, as a committed upload is. Returns its
    /// size.
    pub async fn ingest_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        mut body: BodyStream,
    ) -> Result<u64, RegistryError> {
        if let Some(size) = self.blob_size(digest).await? {
            if self.link_blob(name, digest).await? {
                return Ok(size);
            }
        }
        let s = self.start_upload(name).await?;
        let data_key = paths::upload_data(name, &s.id);
        let stored = async {
            let mut w = self.storage.append(&data_key).await?;
            while let Some(chunk) = body.next().await {
                w.write(chunk?).await?;
            }
            let size = w.size();
            w.finish().await?;
            self.storage
                .rename(&data_key, &paths::blob_data(digest))
                .await?;
            self.metrics.blob_added(size);
            if !self.link_blob(name, digest).await? {
                return Err(RegistryError::Internal(
                    "the blob was garbage collected while it was stored".into(),
                ));
            }
            Ok(size)
        }
        .await;
        let _ = self.storage.delete(&paths::upload_dir(name, &s.id)).await;
        self.uploads.forget(&s.key());
        stored
    }

    /// Makes an upload's checked data the blob `digest`: moved into the blob store, or dropped when the same
    /// content is there already.
    async fn move_into_blob_store(
        &self,
        data_key: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        if self.blob_size(digest).await? == Some(size) {
            self.storage.delete(data_key).await?;
        } else {
            self.storage
                .rename(data_key, &paths::blob_data(digest))
                .await?;
            self.metrics.blob_added(size);
        }
        Ok(())
    }

    /// Commits an upload whose data file a mirror wrote itself (on a filesystem, see
    /// [`crate::storage::Storage::local_path`]), made durable and checked against `digest`: moves it into the
    /// blob store and links it, as [`RegistryStore::commit_upload`] does after its own check.
    pub async fn commit_fetched(
        &self,
        s: &UploadSession,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        let data_key = paths::upload_data(&s.name, &s.id);
        let committed = async {
            self.move_into_blob_store(&data_key, digest, size).await?;
            if !self.link_blob(&s.name, digest).await? {
                return Err(RegistryError::Internal(
                    "the blob was garbage collected while it was stored".into(),
                ));
            }
            Ok(())
        }
        .await;
        let _ = self
            .storage
            .delete(&paths::upload_dir(&s.name, &s.id))
            .await;
        self.uploads.forget(&s.key());
        committed
    }

    /// Cancels an upload and removes its data, once the writer of a request dropped mid-body (if any) is done.
    pub async fn cancel_upload(&self, s: &UploadSession) -> Result<(), RegistryError> {
        // The session's state (made here when it was not kept, after a restart or a prune) is locked like an
        // append or a commit would, so a request between its size check and its writes is waited for.
        let slot = self.session_slot(s).await?;
        let _state = slot.state.lock().await;
        drop(slot.writing.lock().await);
        self.upload_size(s).await?;
        self.storage
            .delete(&paths::upload_dir(&s.name, &s.id))
            .await?;
        self.uploads.forget(&s.key());
        Ok(())
    }
}

/// Now in RFC 3339 (UTC), as registry:2 writes `startedat`.
fn httpdate_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_hash_states_are_pruned_but_not_ones_in_use() {
        let states = UploadStates::default();
        let long_ago = Instant::now().checked_sub(2 * STATE_TTL).expect("clock");
        let held = states.slot("held");
        {
            let map = &mut states.slots.lock().unwrap().map;
            for i in 0..STATE_PRUNE_AT {
                map.insert(format!("old{i}"), (long_ago, Slot::default()));
            }
            map.get_mut("held").unwrap().0 = long_ago;
        }
        let _fresh = states.slot("fresh");
        let map = &states.slots.lock().unwrap().map;
        let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["fresh", "held"]);
        drop(held);
    }

    use crate::storage::{AppendWriter, ByteStream, ObjectMeta, Storage, StorageError};
    use async_trait::async_trait;
    use tokio::sync::Semaphore;

    /// Filesystem storage whose appends wait for a permit per write, so a test decides when data lands.
    struct Gated {
        inner: crate::storage::fs::FsStorage,
        gate: Arc<Semaphore>,
    }

    struct GatedWriter {
        inner: Box<dyn AppendWriter>,
        gate: Arc<Semaphore>,
    }

    #[async_trait]
    impl AppendWriter for GatedWriter {
        async fn write(&mut self, bytes: Bytes) -> Result<(), StorageError> {
            self.gate.acquire().await.expect("gate open").forget();
            self.inner.write(bytes).await
        }
        fn size(&self) -> u64 {
            self.inner.size()
        }
        async fn finish(self: Box<Self>) -> Result<(), StorageError> {
            self.inner.finish().await
        }
    }

    #[async_trait]
    impl Storage for Gated {
        async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
            self.inner.stat(key).await
        }
        async fn read(&self, key: &str, r: Option<(u64, u64)>) -> Result<ByteStream, StorageError> {
            self.inner.read(key, r).await
        }
        async fn read_small(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
            self.inner.read_small(key, limit).await
        }
        async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
            self.inner.put(key, bytes).await
        }
        async fn append(&self, key: &str) -> Result<Box<dyn AppendWriter>, StorageError> {
            Ok(Box::new(GatedWriter {
                inner: self.inner.append(key).await?,
                gate: self.gate.clone(),
            }))
        }
        async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
            self.inner.rename(from, to).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.inner.delete(key).await
        }
        async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError> {
            self.inner.create(key, bytes).await
        }
        fn walk(&self, prefix: &str) -> crate::storage::ObjectStream {
            self.inner.walk(prefix)
        }
    }

    /// Batches keep every byte in order, stay near their size, and a body of tiny chunks makes a few large
    /// pieces, not one handle per chunk; large chunks are kept as they came.
    #[test]
    fn batches_keep_order_and_tiny_chunks_are_gathered() {
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let mut b = Batcher::default();
        let mut batches = Vec::new();
        let big = Bytes::from(vec![7u8; 3 * SMALL_CHUNK]);
        for i in 0..(3 * BATCH) {
            // Mostly 1-byte chunks, with a large one now and then.
            let c = if i % 100_000 == 99_999 {
                big.clone()
            } else {
                Bytes::from(vec![(i % 251) as u8])
            };
            sent.extend_from_slice(&c);
            batches.extend(b.push(c));
        }
        batches.push(b.take());
        for batch in &batches {
            let len: usize = batch.iter().map(|c| c.len()).sum();
            assert!(len <= BATCH, "a batch of {len} bytes");
            assert!(
                batch.len() <= 2 * BATCH / SMALL_CHUNK + 2,
                "{} pieces",
                batch.len()
            );
            for c in batch.iter() {
                got.extend_from_slice(c);
            }
        }
        assert!(got == sent, "the batches do not give back the body");
        assert!(
            batches
                .iter()
                .flat_map(|b| b.iter())
                .any(|c| c.as_ptr() == big.as_ptr()),
            "a large chunk was copied"
        );
    }

    /// A request dropped mid-body (the client went away) leaves batches queued for its writer. The next
    /// request on the session waits until those are written, so they never land between its own bytes or
    /// after its commit: here the commit sees all of them, hashes the data again, and the blob is whole.
    #[tokio::test]
    async fn a_dropped_request_s_late_writes_finish_before_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Semaphore::new(0));
        let storage = Arc::new(Gated {
            inner: crate::storage::fs::FsStorage::new(dir.path()).unwrap(),
            gate: gate.clone(),
        });
        let store = RegistryStore::new(storage.clone());
        let name: RepoName = "late/writes".parse().unwrap();
        let s = store.start_upload(&name).await.unwrap();
        let chunks: Vec<Bytes> = (0..3u8)
            .map(|i| Bytes::from(vec![b'a' + i; BATCH]))
            .collect();
        // Three batches, then nothing more: the first two are handed to the writer when the next one arrives,
        // the third stays in the request; the stream says when it has been drained.
        let (drained_tx, drained) = tokio::sync::oneshot::channel::<()>();
        let mut drained_tx = Some(drained_tx);
        let mut queue = chunks.clone();
        queue.reverse();
        let body: BodyStream =
            Box::pin(futures_util::stream::poll_fn(move |_| match queue.pop() {
                Some(c) => std::task::Poll::Ready(Some(Ok(c))),
                None => {
                    if let Some(tx) = drained_tx.take() {
                        let _ = tx.send(());
                    }
                    std::task::Poll::Pending
                }
            }));
        tokio::select! {
            r = store.append_upload(&s, None, None, body) => panic!("append ended: {:?}", r.is_ok()),
            _ = drained => {}
        }
        // The request is gone; its writer holds the first two batches and no write has landed yet.
        let want = [&chunks[0][..], &chunks[1][..]].concat();
        let digest = Digest::sha256_of(&want);
        let mut commit = Box::pin(store.commit_upload(&s, &digest, None));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut commit)
                .await
                .is_err(),
            "the commit went ahead while the dropped request's data was still being written"
        );
        gate.add_permits(16);
        assert_eq!(commit.await.unwrap(), want.len() as u64);
        let blob = storage
            .read_small(&paths::blob_data(&digest), 1 << 30)
            .await
            .unwrap();
        assert!(
            blob[..] == want[..],
            "the committed blob is not the data sent"
        );
    }

    /// PATCH and PUT naming sessions that do not exist get `BlobUploadUnknown` and leave no state behind; a
    /// session that exists gets one, and loses it when committed or cancelled.
    #[tokio::test]
    async fn unknown_sessions_leave_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegistryStore::new(Arc::new(
            crate::storage::fs::FsStorage::new(dir.path()).unwrap(),
        ));
        let name: RepoName = "a".parse().unwrap();
        let empty = || -> BodyStream { Box::pin(futures_util::stream::empty()) };
        for _ in 0..3000 {
            let s = UploadSession {
                name: name.clone(),
                id: UploadId::generate(),
            };
            let appended = store.append_upload(&s, None, None, empty()).await;
            assert!(matches!(appended, Err(RegistryError::BlobUploadUnknown)));
            let committed = store.commit_upload(&s, &Digest::sha256_of(b""), None).await;
            assert!(matches!(committed, Err(RegistryError::BlobUploadUnknown)));
        }
        assert_eq!(store.uploads.len(), 0);
        let s = store.start_upload(&name).await.unwrap();
        store.append_upload(&s, None, None, empty()).await.unwrap();
        assert_eq!(store.uploads.len(), 1);
        store.cancel_upload(&s).await.unwrap();
        assert_eq!(store.uploads.len(), 0);
    }

    /// Pruning runs when the map has doubled since the last prune, not on every insert past the threshold.
    #[test]
    fn pruning_is_amortised() {
        let states = UploadStates::default();
        let live: Vec<Slot> = (0..STATE_PRUNE_AT + 10)
            .map(|i| states.slot(&format!("live{i}")))
            .collect();
        // Every state is recent: the prune at STATE_PRUNE_AT kept them all and set the next one at twice that.
        let next = states.slots.lock().unwrap().prune_at;
        assert_eq!(next, 2 * STATE_PRUNE_AT);
        for i in 0..STATE_PRUNE_AT - 11 {
            states.slot(&format!("more{i}"));
        }
        assert_eq!(states.slots.lock().unwrap().prune_at, next);
        drop(live);
    }

    #[test]
    fn started_at_is_rfc3339() {
        let s = httpdate_now();
        assert_eq!(s.len(), 20, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && s.as_bytes()[10] == b'T',
            "{s}"
        );
    }
}
