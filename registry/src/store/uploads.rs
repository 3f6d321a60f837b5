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

/// Bytes gathered from the network before one write to storage.
const BATCH: usize = 1024 * 1024;
/// Batches queued for each of the hash and the disk (bounds memory per upload). The hash is the slow stage;
/// two batches are milliseconds of its work, enough to keep it busy while the network refills the queue.
const IN_FLIGHT: usize = 2;

/// Running hash of an upload's data, valid for its first `offset` bytes.
struct HashState {
    offset: u64,
    hasher: Hasher,
}

type Slot = Arc<tokio::sync::Mutex<Option<HashState>>>;

/// Per-session locks and hash states.
#[derive(Default)]
pub(super) struct UploadStates {
    slots: Mutex<HashMap<String, (Instant, Slot)>>,
}

/// Past this many sessions, states unused for [`STATE_TTL`] are dropped (abandoned uploads, or sessions that
/// another replica committed). Dropping a state only costs a re-hash at commit.
const STATE_PRUNE_AT: usize = 1024;
const STATE_TTL: Duration = Duration::from_secs(3600);

impl UploadStates {
    fn slot(&self, key: &str) -> Slot {
        let mut map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() >= STATE_PRUNE_AT {
            // A state in use (its lock held elsewhere) is never dropped.
            map.retain(|_, (used, slot)| {
                now.duration_since(*used) < STATE_TTL || Arc::strong_count(slot) > 1
            });
        }
        let entry = map
            .entry(key.to_string())
            .or_insert_with(|| (now, Slot::default()));
        entry.0 = now;
        entry.1.clone()
    }

    fn forget(&self, key: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// A session in a repository, as named in its URL.
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
        Ok(session)
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
        let slot = self.uploads.slot(&s.key());
        let mut state = slot.lock().await;
        self.append_locked(s, &mut state, start, expected_len, body)
            .await
    }

    async fn append_locked(
        &self,
        s: &UploadSession,
        state: &mut Option<HashState>,
        start: Option<u64>,
        expected_len: Option<u64>,
        mut body: BodyStream,
    ) -> Result<Appended, RegistryError> {
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
        let (tx, mut rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
        let worker = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                writer.write(batch).await?;
            }
            let size = writer.size();
            writer.finish().await?;
            Ok::<_, crate::storage::StorageError>(size)
        });
        let (mut hash_tx, hashing) = match hasher {
            Some(hasher) => {
                let (htx, mut hrx) = mpsc::channel::<Bytes>(IN_FLIGHT);
                let task = tokio::spawn(async move {
                    let mut hasher = hasher;
                    while let Some(batch) = hrx.recv().await {
                        hasher = tokio::task::spawn_blocking(move || {
                            hasher.update(&batch);
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
            batch: Bytes,
            hash_tx: &mut Option<mpsc::Sender<Bytes>>,
            tx: &mpsc::Sender<Bytes>,
        ) -> bool {
            if let Some(h) = hash_tx {
                if h.send(batch.clone()).await.is_err() {
                    *hash_tx = None;
                }
            }
            tx.send(batch).await.is_ok()
        }
        let mut received: u64 = 0;
        let mut batch = BytesMut::new();
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
                    // A batch is sent before it would outgrow its one allocation.
                    if !batch.is_empty()
                        && batch.len() + c.len() > BATCH
                        && !send(std::mem::take(&mut batch).freeze(), &mut hash_tx, &tx).await
                    {
                        break;
                    }
                    if batch.capacity() - batch.len() < c.len() {
                        batch.reserve(BATCH.max(c.len()));
                    }
                    batch.extend_from_slice(&c);
                }
                Err(e) => {
                    body_error = Some(RegistryError::BlobUploadInvalid(format!(
                        "body read failed: {e}"
                    )));
                    break;
                }
            }
        }
        if !batch.is_empty() {
            send(batch.freeze(), &mut hash_tx, &tx).await;
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
        let slot = self.uploads.slot(&s.key());
        let mut state = slot.lock().await;
        let mut size = self.upload_size(s).await?;
        if let Some((start, len, body)) = final_chunk {
            size = self
                .append_locked(s, &mut state, start, len, body)
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
        if self.blob_size(digest).await? == Some(size) {
            self.storage.delete(&data_key).await?;
        } else {
            self.storage
                .rename(&data_key, &paths::blob_data(digest))
                .await?;
        }
        self.link_blob(&s.name, digest).await?;
        self.storage
            .delete(&paths::upload_dir(&s.name, &s.id))
            .await?;
        drop(state);
        self.uploads.forget(&s.key());
        Ok(size)
    }

    /// Cancels an upload and removes its data.
    pub async fn cancel_upload(&self, s: &UploadSession) -> Result<(), RegistryError> {
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
            let mut map = states.slots.lock().unwrap();
            for i in 0..STATE_PRUNE_AT {
                map.insert(format!("old{i}"), (long_ago, Slot::default()));
            }
            map.get_mut("held").unwrap().0 = long_ago;
        }
        let _fresh = states.slot("fresh");
        let map = states.slots.lock().unwrap();
        let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["fresh", "held"]);
        drop(held);
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
