//! Upload sessions as a client drives them: starts, chunks in and out of order, chunks whose length or
//! `Content-Range` lies, connections that break mid-chunk, commits with the right and a wrong digest, cancels, and
//! restarts of the registry between any two of them (the running hash is lost and must be rebuilt from the data). A
//! model of each session's bytes says what must happen. Properties: the session's size and data are always the
//! model's; a chunk at the wrong offset (ahead or behind) is refused with the current offset and changes nothing; a
//! chunk longer than it declared keeps at most its declared length, a shorter one or one whose connection broke keeps
//! everything that arrived (the offset a client resumes from); a commit with the right digest stores exactly the
//! model's bytes as the blob, linked into the repository; a wrong digest stores nothing and ends the session; a
//! session that was committed, cancelled or never existed is unknown to every operation.
#![no_main]

use std::sync::Arc;

use berth_registry::error::RegistryError;
use berth_registry::oci::{Digest, RepoName, UploadId};
use berth_registry::paths;
use berth_registry::storage::fs::{FsStorage, MinFree};
use berth_registry::storage::Storage;
use berth_registry::store::{BodyStream, RegistryStore, UploadSession};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// Reads the fuzzer's bytes as a program.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        a.to_vec()
    }
}

/// The size of the pieces [`body`] cuts a chunk into.
fn step(cuts: u8) -> usize {
    (cuts as usize % 7) + 1
}

/// A body split where the input says, as the network would deliver it; with `broken`, the connection breaks
/// after the last byte (the stream ends with an error).
fn body(data: &[u8], cuts: u8, broken: bool) -> BodyStream {
    let mut parts: Vec<std::io::Result<Bytes>> = data
        .chunks(step(cuts))
        .map(Bytes::copy_from_slice)
        .map(Ok)
        .collect();
    if broken {
        parts.push(Err(std::io::Error::other("connection reset")));
    }
    Box::pin(futures_util::stream::iter(parts))
}

struct Session {
    s: UploadSession,
    /// What the session's data must be; `None` once the session has ended.
    data: Option<Vec<u8>>,
}

async fn run(mut input: Input<'_>) {
    // In memory when the machine has it (syncs cost nothing there), and without a free-space reserve, so a
    // small disk is never taken for a failure.
    let dir = match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("temp dir");
    let storage: Arc<dyn Storage> = Arc::new(
        FsStorage::new(dir.path())
            .expect("storage")
            .with_min_free(MinFree::Bytes(0)),
    );
    let mut store = RegistryStore::new(Arc::clone(&storage));
    let name: RepoName = "fuzz/uploads".parse().unwrap();
    let mut sessions: Vec<Session> = Vec::new();
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 64 {
            break;
        }
        let pick = input.byte().unwrap_or(0) as usize;
        match op % 8 {
            0 => {
                if sessions.len() < 4 {
                    let s = store.start_upload(&name).await.expect("start");
                    assert_eq!(store.upload_size(&s).await.expect("size"), 0);
                    sessions.push(Session {
                        s,
                        data: Some(Vec::new()),
                    });
                } else {
                    // A session nobody started.
                    let s = UploadSession {
                        name: name.clone(),
                        id: UploadId::generate(),
                    };
                    let got = store
                        .append_upload(&s, None, None, body(b"x", 0, false))
                        .await;
                    assert!(matches!(got, Err(RegistryError::BlobUploadUnknown)));
                }
            }
            // A chunk: its offset right, wrong or absent, its declared length right, short, long or absent.
            1 | 2 => {
                let Some(sess) = sessions.get_mut(pick % 4) else {
                    continue;
                };
                let flags = input.byte().unwrap_or(0);
                let len = input.byte().unwrap_or(0) as usize;
                let chunk = input.bytes(len);
                let cur = sess.data.as_ref().map(|d| d.len() as u64);
                // Bits 0-1: the offset (none, right, ahead, behind); 2-3: the declared length (none, right,
                // one short, one long); 4: the connection breaks after the body; 5-7: how far off the offset is.
                let off = 1 + (flags as u64 >> 5);
                let start = match flags & 3 {
                    0 => None,
                    1 => Some(cur.unwrap_or(0)),
                    2 => Some(cur.unwrap_or(0) + off),
                    _ => Some(cur.unwrap_or(0).saturating_sub(off)),
                };
                let declared = match (flags >> 2) & 3 {
                    0 => None,
                    1 => Some(chunk.len() as u64),
                    2 => Some((chunk.len() as u64).saturating_sub(1)),
                    _ => Some(chunk.len() as u64 + 1),
                };
                let broken = flags & 0x10 != 0;
                let got = store
                    .append_upload(&sess.s, start, declared, body(&chunk, flags, broken))
                    .await;
                let Some(model) = sess.data.as_mut() else {
                    assert!(
                        matches!(got, Err(RegistryError::BlobUploadUnknown)),
                        "an ended session took a chunk"
                    );
                    continue;
                };
                let before = model.len();
                let len = chunk.len();
                let kept = || async {
                    let size = store.upload_size(&sess.s).await.expect("size") as usize;
                    assert!(size >= before, "a failed chunk shrank the session");
                    size - before
                };
                match got {
                    Err(RegistryError::RangeInvalid { upload_offset, .. }) => {
                        assert!(start.is_some_and(|s| s != before as u64));
                        assert_eq!(upload_offset, Some(before as u64));
                    }
                    Err(RegistryError::SizeInvalid(_)) => {
                        let d =
                            declared.expect("a length error without a declared length") as usize;
                        assert_ne!(d, len);
                        let k = kept().await;
                        if d < len {
                            // Longer than declared: what came before the excess may stay, never more.
                            assert!(k <= d, "kept {k} bytes of a chunk declared as {d}");
                        } else {
                            // Shorter than declared: what did arrive stays, and the next chunk goes after it.
                            assert_eq!(k, len, "a short chunk was not kept whole");
                        }
                        model.extend_from_slice(&chunk[..k]);
                    }
                    Err(RegistryError::BlobUploadInvalid(_)) => {
                        assert!(
                            broken,
                            "a chunk refused as invalid without a broken connection"
                        );
                        assert!(declared.is_none_or(|d| d as usize >= len));
                        // Everything before the break stays: a client resumes from the offset it is told.
                        assert_eq!(kept().await, len);
                        model.extend_from_slice(&chunk);
                    }
                    Ok(a) => {
                        assert!(!broken, "a broken body was accepted");
                        assert!(start.is_none_or(|s| s == before as u64));
                        assert!(declared.is_none_or(|d| d == len as u64));
                        assert_eq!(a.received, len as u64);
                        model.extend_from_slice(&chunk);
                        assert_eq!(a.size, model.len() as u64);
                    }
                    Err(e) => panic!("a chunk failed: {e}"),
                }
                let on_disk = storage
                    .read_small(&paths::upload_data(&sess.s.name, &sess.s.id), 1 << 20)
                    .await
                    .expect("data");
                assert_eq!(
                    &on_disk[..],
                    &model[..],
                    "the session's data is not the model's"
                );
            }
            // A commit with the right digest, maybe with a last chunk.
            3 => {
                let Some(sess) = sessions.get_mut(pick % 4) else {
                    continue;
                };
                let last = if pick & 0x80 != 0 {
                    let len = input.byte().unwrap_or(0) as usize;
                    input.bytes(len)
                } else {
                    Vec::new()
                };
                let mut want = sess.data.clone().unwrap_or_default();
                want.extend_from_slice(&last);
                let digest = Digest::sha256_of(&want);
                let final_chunk = (!last.is_empty()).then(|| {
                    (
                        Some((want.len() - last.len()) as u64),
                        Some(last.len() as u64),
                        body(&last, pick as u8, false),
                    )
                });
                let got = store.commit_upload(&sess.s, &digest, final_chunk).await;
                if sess.data.take().is_none() {
                    assert!(matches!(got, Err(RegistryError::BlobUploadUnknown)));
                    continue;
                }
                assert_eq!(got.expect("commit"), want.len() as u64);
                let blob = storage
                    .read_small(&paths::blob_data(&digest), 1 << 20)
                    .await
                    .expect("blob");
                assert_eq!(&blob[..], &want[..], "the blob is not what was uploaded");
                assert_eq!(
                    store.repo_blob_size(&name, &digest).await.expect("linked"),
                    Some(want.len() as u64)
                );
            }
            // A commit with a wrong digest.
            4 => {
                let Some(sess) = sessions.get_mut(pick % 4) else {
                    continue;
                };
                let mut wrong = sess.data.clone().unwrap_or_default();
                wrong.push(pick as u8);
                let digest = Digest::sha256_of(&wrong);
                // Another session may have stored exactly those bytes: the blob is then left as it was.
                let existing = store.blob_size(&digest).await.expect("stat");
                let got = store.commit_upload(&sess.s, &digest, None).await;
                if sess.data.take().is_none() {
                    assert!(matches!(got, Err(RegistryError::BlobUploadUnknown)));
                    continue;
                }
                assert!(matches!(got, Err(RegistryError::DigestInvalid(_))));
                assert_eq!(store.blob_size(&digest).await.expect("stat"), existing);
                let gone = store.upload_size(&sess.s).await;
                assert!(matches!(gone, Err(RegistryError::BlobUploadUnknown)));
            }
            5 => {
                let Some(sess) = sessions.get_mut(pick % 4) else {
                    continue;
                };
                let got = store.cancel_upload(&sess.s).await;
                if sess.data.take().is_none() {
                    assert!(matches!(got, Err(RegistryError::BlobUploadUnknown)));
                } else {
                    got.expect("cancel");
                }
            }
            // The registry restarts: every running hash is gone, the sessions stay in storage.
            6 => store = RegistryStore::new(Arc::clone(&storage)),
            _ => {
                let Some(sess) = sessions.get(pick % 4) else {
                    continue;
                };
                let got = store.upload_size(&sess.s).await;
                match &sess.data {
                    Some(d) => assert_eq!(got.expect("size"), d.len() as u64),
                    None => assert!(matches!(got, Err(RegistryError::BlobUploadUnknown))),
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(Input(data)));
});
