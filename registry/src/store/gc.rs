//! Online garbage collection: mark from the tags, sweep what nothing references, while pushes go on.
//!
//! The design, and why a manifest `PUT` that got 201 never points at a swept blob, is written down in
//! `docs/gc.md`. In short:
//!
//! - **Mark** walks every repository: roots are the tags' current links (and every revision unless
//!   `delete_untagged`), and every link or blob written within the grace period. Marking follows image
//!   manifests to their config and layers, indexes to their children, and keeps referrers of live manifests.
//! - **Sweep** deletes the unmarked blobs and every link to them, and (with `delete_untagged`) the revision
//!   links of unmarked manifests, in batches. Before deleting a batch the collector *publishes* it in the
//!   sweep marker, then reads the *pins*. A manifest push writes its pin (the digests it depends on) before
//!   it reads the marker. Whichever of the two writes first, the other sees it: either the collector sees the
//!   pin and spares those digests, or the push sees them doomed and fails with `MANIFEST_BLOB_UNKNOWN`.
//! - **One collector at a time**, on any number of replicas: leases are objects created only when absent, one
//!   per epoch; the holder of the highest epoch collects, and renews its lease before every batch.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::{RegistryStore, LINK_LIMIT, STORED_MANIFEST_LIMIT};
use crate::error::RegistryError;
use crate::oci::{Algorithm, Digest};
use crate::paths;
use crate::storage::Storage;

/// How long a lease, and the batch published with it, stays valid without renewal.
const LEASE_TTL: Duration = Duration::from_secs(300);
/// The lease is renewed this often while the collector walks and marks.
const LEASE_RENEW: Duration = Duration::from_secs(60);
/// A batch's deletions stop this long before the published batch expires (room for the last group of
/// deletes, and for clocks that differ by up to half a minute).
const LEASE_MARGIN: Duration = Duration::from_secs(120);
/// Deletes sent at once; the deadline is checked before each group.
const DELETE_GROUP: usize = 64;
/// Digests published and deleted at a time.
const BATCH: usize = 256;
/// A manifest push whose pin is older than this when it starts writing gives up (the collector removes pins
/// older than [`PIN_STALE`], and only then).
pub(super) const PIN_DEADLINE: Duration = Duration::from_secs(60);
/// Pins older than this belong to pushes that are over (they gave up at [`PIN_DEADLINE`]).
const PIN_STALE: Duration = Duration::from_secs(600);
/// Largest pin or marker read (a pin lists a manifest's references; a marker one batch).
const SMALL_LIMIT: u64 = 4 * 1024 * 1024;

/// What a collection does.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Nothing written within this long before the collection started is swept.
    pub grace: Duration,
    /// Also remove manifests no tag reaches (never children of a kept index, nor referrers of a kept manifest).
    pub delete_untagged: bool,
    /// Upload sessions idle longer than this are removed.
    pub upload_max_age: Duration,
    /// Report only; change nothing (and take no lease).
    pub dry_run: bool,
    /// Tag retention rules, applied before marking.
    pub retention: std::sync::Arc<super::retention::Retention>,
    /// Mirrored namespaces (prefix, empty for all) and their TTL: there, tags not fetched or checked within
    /// the TTL go, and manifests fetched longer ago that no kept tag reaches (docs/mirror.md).
    pub mirrors: Vec<(String, Duration)>,
}

impl GcOptions {
    /// The TTL of the mirror `repo` is in, when it is in one with a TTL.
    fn mirror_ttl(&self, repo: &str) -> Option<Duration> {
        self.mirrors
            .iter()
            .find(|(p, _)| {
                p.is_empty()
                    || repo
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
            .map(|(_, ttl)| *ttl)
            .filter(|ttl| !ttl.is_zero())
    }
}

/// A repository's manifest revision that a collection removed (or would remove).
#[derive(Debug, Clone, Serialize)]
pub struct UnlinkedManifest {
    /// The repository folder.
    pub repository: String,
    /// The manifest digest.
    pub digest: String,
}

/// A tag a retention rule removed (or would remove).
#[derive(Debug, Clone, Serialize)]
pub struct RemovedTag {
    /// The repository folder.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest it pointed at.
    pub digest: String,
}

/// An upload session a collection removed (or would remove).
#[derive(Debug, Clone, Serialize)]
pub struct PurgedUpload {
    /// The repository folder.
    pub repository: String,
    /// The session id.
    pub id: String,
}

/// What a collection did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Digests of the blobs deleted.
    pub blobs: Vec<String>,
    /// Their total size.
    pub bytes: u64,
    /// Manifest revisions removed from repositories (`delete_untagged`).
    pub manifests: Vec<UnlinkedManifest>,
    /// Links removed (repository links to deleted blobs, and links to blobs that were already missing).
    pub links: u64,
    /// Upload sessions removed.
    pub uploads: Vec<PurgedUpload>,
    /// Tags removed by retention rules.
    pub tags: Vec<RemovedTag>,
    /// Blobs seen in storage.
    pub blobs_seen: u64,
    /// Their total size.
    pub bytes_seen: u64,
    /// Blobs marked live.
    pub blobs_live: u64,
    /// Candidates spared because a push in flight pinned them, or they were written again meanwhile.
    pub spared: u64,
    /// Repository folders walked.
    pub repositories: u64,
}

/// A set of digests, compact for sha256 (32 bytes each): a mark set of a million blobs stays in tens of MB.
#[derive(Default)]
pub(crate) struct DigestSet {
    sha256: HashSet<[u8; 32]>,
    other: HashSet<String>,
}

fn sha256_key(d: &Digest) -> Option<[u8; 32]> {
    if d.algorithm() != Algorithm::Sha256 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(d.hex(), &mut out).ok()?;
    Some(out)
}

impl DigestSet {
    /// Adds a digest; returns whether it was new.
    pub(crate) fn insert(&mut self, d: &Digest) -> bool {
        match sha256_key(d) {
            Some(k) => self.sha256.insert(k),
            None => self.other.insert(d.to_string()),
        }
    }
    /// Whether the digest is in the set.
    pub(crate) fn contains(&self, d: &Digest) -> bool {
        match sha256_key(d) {
            Some(k) => self.sha256.contains(&k),
            None => self.other.contains(&d.to_string()),
        }
    }
    fn len(&self) -> usize {
        self.sha256.len() + self.other.len()
    }
}

/// Seconds since the epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The sweep marker: the batch a collector is deleting, valid until `expires` (seconds since the epoch).
#[derive(Debug, Serialize, Deserialize)]
struct SweepMarker {
    epoch: u64,
    expires: u64,
    doomed: Vec<String>,
}

/// A pin: the digests a manifest push depends on, and when it was written.
#[derive(Debug, Serialize, Deserialize)]
struct PinBody {
    created: u64,
    digests: Vec<String>,
    /// The push is over: the collection that starts next sees its writes and removes the pin.
    #[serde(default)]
    done: bool,
}

/// A lease object's content.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseBody {
    owner: String,
    expires: u64,
    released: bool,
}

/// A manifest push's pin, written before the push reads the sweep marker and removed when the push is over.
pub(super) struct Pin {
    key: String,
    body: PinBody,
    written: std::time::Instant,
}

impl Pin {
    /// Writes a pin for `digests`, then reads the sweep marker; returns the pin and the first of `digests` a
    /// running collector has published for deletion, if any (the pin is then already removed).
    async fn write(
        storage: &dyn Storage,
        digests: &[Digest],
    ) -> Result<(Pin, Option<Digest>), RegistryError> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let body = PinBody {
            created: unix_now(),
            digests: digests.iter().map(|d| d.to_string()).collect(),
            done: false,
        };
        let key = paths::gc_pin(&id);
        let json = serde_json::to_vec(&body).map_err(|e| RegistryError::Internal(e.to_string()))?;
        storage.put(&key, Bytes::from(json)).await?;
        let pin = Pin {
            key,
            body,
            written: std::time::Instant::now(),
        };
        let doomed = match read_markers(storage).await {
            Ok(markers) => {
                let doomed: HashSet<&str> = markers
                    .iter()
                    .flat_map(|m| m.doomed.iter().map(String::as_str))
                    .collect();
                digests
                    .iter()
                    .find(|d| doomed.contains(d.to_string().as_str()))
                    .cloned()
            }
            Err(e) => {
                let _ = storage.delete(&pin.key).await;
                return Err(e);
            }
        };
        if doomed.is_some() {
            storage.delete(&pin.key).await?;
        }
        Ok((pin, doomed))
    }

    /// Pins what a manifest push depends on; fails with `MANIFEST_BLOB_UNKNOWN` when a running collector has
    /// published one of them for deletion (the client uploads again).
    pub(super) async fn take(
        storage: &dyn Storage,
        digests: &[Digest],
    ) -> Result<Pin, RegistryError> {
        match Pin::write(storage, digests).await? {
            (pin, None) => Ok(pin),
            (_, Some(d)) => Err(RegistryError::ManifestBlobUnknown(d.to_string())),
        }
    }

    /// Pins a blob about to be linked into a repository. While a running collector's published batch dooms
    /// it, waits for that batch to be over (the caller then finds the blob gone, or spared).
    pub(super) async fn take_waiting(
        storage: &dyn Storage,
        d: &Digest,
    ) -> Result<Pin, RegistryError> {
        let give_up = std::time::Instant::now() + LEASE_TTL;
        loop {
            match Pin::write(storage, std::slice::from_ref(d)).await? {
                (pin, None) => return Ok(pin),
                (_, Some(_)) if std::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                (_, Some(d)) => {
                    return Err(RegistryError::Internal(format!(
                        "{d} stayed in a garbage collector's published batch for too long"
                    )))
                }
            }
        }
    }

    /// Fails when the pin is too old to be trusted (the push stalled): the collector may have removed it.
    pub(super) fn check_fresh(&self) -> Result<(), RegistryError> {
        if self.written.elapsed() > PIN_DEADLINE {
            return Err(RegistryError::Internal(
                "push stalled past the garbage collector's pin deadline; push again".into(),
            ));
        }
        Ok(())
    }

    /// Ends the push. Without a collection running, the pin is removed. During one, it stays for that
    /// collector (whose walk may have missed this push's writes), marked done: the next collection removes it
    /// when it starts, as its walk comes after these writes. Failures are logged: the pin is then left for a
    /// later collection, which removes it once it is [`PIN_STALE`].
    pub(super) async fn release(mut self, storage: &dyn Storage) {
        let running = match read_markers(storage).await {
            Ok(m) => !m.is_empty(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the sweep marker; pin left for the collector");
                return;
            }
        };
        let result = if running {
            self.body.done = true;
            match serde_json::to_vec(&self.body) {
                Ok(json) => storage.put(&self.key, Bytes::from(json)).await,
                Err(_) => Ok(()),
            }
        } else {
            storage.delete(&self.key).await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot update a pin; a later collection removes it");
        }
    }
}

/// The sweep markers of running collectors (those not expired). A marker that cannot be read (written by a
/// later version, say) counts as a collection running with an unknown batch until it is as old as a marker can
/// live: pushes fail meanwhile rather than risk a reference to something being deleted.
async fn read_markers(storage: &dyn Storage) -> Result<Vec<SweepMarker>, RegistryError> {
    let mut out = Vec::new();
    for name in storage.list(&paths::gc_sweeps()).await? {
        let key = format!("{}/{name}", paths::gc_sweeps());
        let bytes = match storage.read_small(&key, SMALL_LIMIT).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        match serde_json::from_slice::<SweepMarker>(&bytes) {
            Ok(m) if m.expires > unix_now() => out.push(m),
            Ok(_) => {}
            Err(e) => {
                let young = storage.stat(&key).await?.is_some_and(|m| {
                    m.modified
                        .is_none_or(|t| t.elapsed().unwrap_or_default() < LEASE_TTL)
                });
                if young {
                    return Err(RegistryError::Internal(format!(
                        "{key}: unreadable sweep marker: {e}"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// The collector's lease on one epoch.
struct Lease {
    epoch: u64,
    owner: String,
}

/// Why a collection did not run.
#[derive(Debug)]
pub enum GcError {
    /// Another collector holds the lease.
    Busy(String),
    /// The lease was lost during the collection (another collector took over after it expired).
    LeaseLost,
    /// Storage or data failure.
    Failed(RegistryError),
}

impl std::fmt::Display for GcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GcError::Busy(owner) => write!(f, "another collector is running ({owner})"),
            GcError::LeaseLost => write!(f, "the collector lease was lost; stopped"),
            GcError::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GcError {}

impl<E: Into<RegistryError>> From<E> for GcError {
    fn from(e: E) -> Self {
        GcError::Failed(e.into())
    }
}

impl Lease {
    fn body(&self, released: bool) -> Result<Bytes, GcError> {
        let b = LeaseBody {
            owner: self.owner.clone(),
            expires: unix_now() + LEASE_TTL.as_secs(),
            released,
        };
        Ok(Bytes::from(
            serde_json::to_vec(&b).map_err(|e| RegistryError::Internal(e.to_string()))?,
        ))
    }

    async fn epochs(storage: &dyn Storage) -> Result<Vec<u64>, GcError> {
        let mut e: Vec<u64> = storage
            .list(&paths::gc_leases())
            .await?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        e.sort_unstable();
        Ok(e)
    }

    /// Takes the next epoch when the current one is released or expired.
    async fn acquire(storage: &dyn Storage) -> Result<Lease, GcError> {
        let epochs = Self::epochs(storage).await?;
        let next = match epochs.last() {
            None => 1,
            Some(&n) => {
                let body = storage.read_small(&paths::gc_lease(n), SMALL_LIMIT).await?;
                match serde_json::from_slice::<LeaseBody>(&body) {
                    Ok(b) if !b.released && b.expires > unix_now() => {
                        return Err(GcError::Busy(b.owner))
                    }
                    _ => n + 1,
                }
            }
        };
        let lease = Lease {
            epoch: next,
            owner: format!(
                "{}/{}/{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
                std::process::id(),
                hex::encode(rand::random::<[u8; 4]>())
            ),
        };
        if !storage
            .create(&paths::gc_lease(next), lease.body(false)?)
            .await?
        {
            return Err(GcError::Busy(format!("epoch {next} taken meanwhile")));
        }
        for old in epochs {
            storage.delete(&paths::gc_lease(old)).await?;
        }
        // Markers of earlier collectors that died: expired ones fail no push, but every push reads them.
        for name in storage.list(&paths::gc_sweeps()).await? {
            let Ok(epoch) = name.parse::<u64>() else {
                continue;
            };
            if epoch >= next {
                continue;
            }
            let key = paths::gc_sweep(epoch);
            let expired = match storage.read_small(&key, SMALL_LIMIT).await {
                // An unreadable one is left (pushes ignore it once it is old).
                Ok(b) => serde_json::from_slice::<SweepMarker>(&b)
                    .map(|m| m.expires <= unix_now())
                    .unwrap_or(false),
                Err(e) if e.is_not_found() => false,
                Err(e) => return Err(e.into()),
            };
            if expired {
                storage.delete(&key).await?;
            }
        }
        Ok(lease)
    }

    /// Checks that no later epoch exists, and extends the lease.
    async fn renew(&self, storage: &dyn Storage) -> Result<(), GcError> {
        if Self::epochs(storage).await?.last() != Some(&self.epoch) {
            return Err(GcError::LeaseLost);
        }
        storage
            .put(&paths::gc_lease(self.epoch), self.body(false)?)
            .await?;
        Ok(())
    }

    async fn release(&self, storage: &dyn Storage) {
        if Self::epochs(storage)
            .await
            .ok()
            .and_then(|e| e.last().copied())
            == Some(self.epoch)
        {
            if let Ok(b) = self.body(true) {
                let _ = storage.put(&paths::gc_lease(self.epoch), b).await;
            }
        }
    }
}

/// What the walk of one repository folder found.
#[derive(Default)]
struct RepoRecord {
    /// `_layers` links: digest, modification time.
    layers: Vec<(Digest, Option<SystemTime>)>,
    /// Manifest revision links.
    revisions: Vec<(Digest, Option<SystemTime>)>,
    /// The tags' current links: tag, key, modification time (when it was last pushed).
    tag_links: Vec<(String, String, Option<SystemTime>)>,
    /// Tag history entries: tag folder name, digest.
    tag_index: Vec<(String, Digest)>,
    /// Upload sessions: id, newest modification time seen.
    uploads: HashMap<String, Option<SystemTime>>,
    /// A mirror has fetched into it (`_berth_mirror`): only then does its content expire after the TTL.
    mirrored: bool,
}

/// A key under `repositories/`, split into the repository folder and the part from its first `_` segment.
fn split_repo_key(rel: &str) -> Option<(&str, &str)> {
    let mut at = 0;
    for seg in rel.split('/') {
        if seg.starts_with('_') {
            return (at > 0).then(|| (&rel[..at - 1], &rel[at..]));
        }
        at += seg.len() + 1;
    }
    None
}

fn digest_of(alg: &str, hex: &str) -> Option<Digest> {
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

impl RepoRecord {
    fn add(&mut self, key: &str, rest: &str, modified: Option<SystemTime>) {
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [paths::MIRROR_MARKER] => self.mirrored = true,
            ["_layers", alg, hex, "link"] => {
                if let Some(d) = digest_of(alg, hex) {
                    self.layers.push((d, modified));
                }
            }
            ["_manifests", "revisions", alg, hex, "link"] => {
                if let Some(d) = digest_of(alg, hex) {
                    self.revisions.push((d, modified));
                }
            }
            ["_manifests", "tags", tag, "current", "link"] => {
                self.tag_links
                    .push((tag.to_string(), key.to_string(), modified))
            }
            ["_manifests", "tags", tag, "index", alg, hex, "link"] => {
                if let Some(d) = digest_of(alg, hex) {
                    self.tag_index.push((tag.to_string(), d));
                }
            }
            ["_uploads", id, ..] => {
                let e = self.uploads.entry(id.to_string()).or_insert(modified);
                if modified > *e {
                    *e = modified;
                }
            }
            _ => {}
        }
    }
}

/// The digest a tag's current link names; `None` when the link is gone or holds no digest (a collection
/// skips such a tag rather than failing on it).
async fn tag_target(storage: &dyn Storage, key: &str) -> Result<Option<Digest>, GcError> {
    match storage.read_small(key, LINK_LIMIT).await {
        Ok(b) => Ok(Digest::parse(String::from_utf8_lossy(&b).trim()).ok()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What a stored manifest refers to, read leniently (whatever registry:2 accepted is followed).
#[derive(Default)]
pub struct References {
    /// Config and layers (every one named, stored or not).
    pub blobs: Vec<Digest>,
    /// Layers the registry does not store (foreign layers), among `blobs`.
    pub foreign: Vec<Digest>,
    /// Child manifests of an index.
    pub children: Vec<Digest>,
    /// The manifest this one refers to.
    pub subject: Option<Digest>,
}

/// What stored manifest bytes refer to, read leniently: anything that is not JSON, or not a manifest, refers
/// to nothing; a descriptor without a valid digest is skipped. Plus every digest the push's validation read from
/// the same bytes ([`crate::oci::declared_digests`]): a manifest the registry accepted never loses what it
/// references to a reading that differs from validation's.
pub fn references(bytes: &[u8]) -> References {
    // One lossy decoding (borrowed when the bytes are UTF-8), read both ways.
    let text = String::from_utf8_lossy(bytes);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let digest_at = |d: &serde_json::Value, field: &str| {
        d.get(field)
            .and_then(|s| s.as_str())
            .and_then(|s| Digest::parse(s).ok())
    };
    let list = |name: &str, field: &str| -> Vec<Digest> {
        v.get(name)
            .and_then(|l| l.as_array())
            .map(|l| l.iter().filter_map(|d| digest_at(d, field)).collect())
            .unwrap_or_default()
    };
    let mut r = References {
        children: list("manifests", "digest"),
        subject: v.get("subject").and_then(|s| digest_at(s, "digest")),
        ..References::default()
    };
    r.blobs
        .extend(v.get("config").and_then(|c| digest_at(c, "digest")));
    r.blobs.extend(list("layers", "digest"));
    r.blobs.extend(list("blobs", "digest"));
    r.blobs.extend(list("fsLayers", "blobSum"));
    r.foreign = v
        .get("layers")
        .and_then(|l| l.as_array())
        .map(|l| {
            l.iter()
                .filter(|d| {
                    d.get("mediaType").and_then(|m| m.as_str()) == Some(super::FOREIGN_LAYER)
                })
                .filter_map(|d| digest_at(d, "digest"))
                .collect()
        })
        .unwrap_or_default();
    if let Some((blobs, children, subject)) = crate::oci::declared_digests(&text) {
        let parsed = |l: Vec<String>| l.into_iter().filter_map(|d| Digest::parse(&d).ok());
        for d in parsed(blobs) {
            if !r.blobs.contains(&d) {
                r.blobs.push(d);
            }
        }
        for d in parsed(children) {
            if !r.children.contains(&d) {
                r.children.push(d);
            }
        }
        if r.subject.is_none() {
            r.subject = subject.and_then(|d| Digest::parse(&d).ok());
        }
    }
    r
}

/// A deletion the sweep may do, keyed by the digest it concerns.
enum Removal {
    /// The blob (content and every link to it).
    Blob(u64),
    /// Links to a blob that is already missing.
    Dangling,
    /// A manifest's revision link (and history entries) in some repositories; its content stays.
    Unlink,
}

fn recent(t: Option<SystemTime>, cutoff: SystemTime) -> bool {
    // An unknown time counts as recent: never sweep what cannot be dated.
    t.is_none_or(|t| t >= cutoff)
}

impl RegistryStore {
    /// Runs one collection. See the module documentation.
    pub async fn collect_garbage(&self, opts: &GcOptions) -> Result<GcReport, GcError> {
        let storage = self.storage().as_ref();
        let mut hold = if opts.dry_run {
            None
        } else {
            Some(Hold {
                storage,
                lease: Lease::acquire(storage).await?,
                marked: std::time::Instant::now(),
                pins: HashMap::new(),
            })
        };
        let result = self.collect_with(opts, hold.as_mut()).await;
        if let (Ok(r), false) = (&result, opts.dry_run) {
            // The walk just counted the blob store: the census starts again from it.
            let m = self.metrics();
            m.census_epoch
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            m.blobs.set(
                i64::try_from(r.blobs_seen.saturating_sub(r.blobs.len() as u64))
                    .unwrap_or(i64::MAX),
            );
            m.blob_bytes
                .set(i64::try_from(r.bytes_seen.saturating_sub(r.bytes)).unwrap_or(i64::MAX));
            m.gc_freed_bytes.inc_by(r.bytes);
            m.gc_deleted_blobs.inc_by(r.blobs.len() as u64);
        }
        if let Some(hold) = &hold {
            // Whatever happened, pushes stop treating this collector's batch as doomed.
            let _ = storage.delete(&paths::gc_sweep(hold.lease.epoch)).await;
            hold.lease.release(storage).await;
        }
        result
    }

    async fn collect_with(
        &self,
        opts: &GcOptions,
        mut hold: Option<&mut Hold<'_>>,
    ) -> Result<GcReport, GcError> {
        let storage = self.storage().as_ref();
        let started = SystemTime::now();
        let cutoff = started.checked_sub(opts.grace).unwrap_or(UNIX_EPOCH);
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        if let Some(hold) = hold.as_deref_mut() {
            // From here until the end, pushes keep their pins for this collector to read; pins of pushes
            // that were over before now are not needed (the walk below sees their writes).
            hold.publish(&[]).await?;
            remove_finished_pins(storage).await?;
        }

        // 1. Walk the repositories.
        let root = paths::repositories_root();
        let mut repos: HashMap<String, RepoRecord> = HashMap::new();
        let mut walk = storage.walk(&root);
        while let Some((key, meta)) = walk.try_next().await? {
            if let Some(hold) = hold.as_deref_mut() {
                hold.keep_alive().await?;
            }
            let Some(rel) = key.strip_prefix(&root).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            if let Some((repo, rest)) = split_repo_key(rel) {
                repos
                    .entry(repo.to_string())
                    .or_default()
                    .add(&key, rest, meta.modified);
            }
        }
        report.repositories = repos.len() as u64;

        // 2. Mark, one repository at a time.
        let mut live = DigestSet::default();
        let mut unlink: HashMap<String, Vec<Digest>> = HashMap::new();
        for (repo, rec) in &repos {
            if let Some(hold) = hold.as_deref_mut() {
                hold.keep_alive().await?;
            }
            // Content a mirror fetched expires; what was pushed before the namespace was mirrored does not.
            let mirror_ttl = opts.mirror_ttl(repo).filter(|_| rec.mirrored);
            let removed = if opts.retention.is_empty() && mirror_ttl.is_none() {
                HashMap::new()
            } else {
                let tags: Vec<(String, Option<SystemTime>)> = rec
                    .tag_links
                    .iter()
                    .map(|(t, _, when)| (t.clone(), *when))
                    .collect();
                let mut chosen = opts.retention.select(repo, &tags, started);
                if let Some(ttl) = mirror_ttl {
                    // A mirrored tag not fetched or checked within its TTL expires.
                    for (t, when) in &tags {
                        let expired = when
                            .is_some_and(|w| started.duration_since(w).unwrap_or_default() > ttl);
                        if expired && !chosen.contains(t) {
                            chosen.push(t.clone());
                        }
                    }
                    chosen.sort();
                }
                self.untag(repo, rec, &chosen, opts.dry_run, &mut report)
                    .await?
            };
            let mirror_cutoff =
                mirror_ttl.map(|ttl| started.checked_sub(ttl).unwrap_or(SystemTime::UNIX_EPOCH));
            let dead = self
                .mark_repository(
                    rec,
                    opts,
                    (cutoff, mirror_cutoff),
                    &mut live,
                    &removed,
                    hold.as_deref_mut(),
                )
                .await?;
            if !dead.is_empty() {
                unlink.insert(repo.clone(), dead);
            }
            for (d, t) in &rec.layers {
                if recent(*t, cutoff) {
                    live.insert(d);
                }
            }
        }
        report.blobs_live = live.len() as u64;

        // 3. Candidates: blobs present, unmarked and older than the grace period; links to missing blobs.
        let mut linked = DigestSet::default();
        for rec in repos.values() {
            for (d, _) in rec.layers.iter().chain(rec.revisions.iter()) {
                if !live.contains(d) {
                    linked.insert(d);
                }
            }
        }
        let mut present_linked = DigestSet::default();
        let mut removals: Vec<(Digest, Removal)> = Vec::new();
        let blobs_root = paths::blobs_root();
        let mut walk = storage.walk(&blobs_root);
        while let Some((key, meta)) = walk.try_next().await? {
            if let Some(hold) = hold.as_deref_mut() {
                hold.keep_alive().await?;
            }
            let rel = key.strip_prefix(&blobs_root).unwrap_or(&key);
            let parts: Vec<&str> = rel.trim_start_matches('/').split('/').collect();
            let [alg, _, hex, "data"] = parts.as_slice() else {
                continue;
            };
            let Some(d) = digest_of(alg, hex) else {
                continue;
            };
            report.blobs_seen += 1;
            report.bytes_seen += meta.size;
            if linked.contains(&d) {
                present_linked.insert(&d);
            }
            if !live.contains(&d) && !recent(meta.modified, cutoff) {
                removals.push((d, Removal::Blob(meta.size)));
            }
        }
        drop(linked);
        let mut dangling = DigestSet::default();
        for rec in repos.values() {
            for (d, _) in rec.layers.iter().chain(rec.revisions.iter()) {
                if !live.contains(d) && !present_linked.contains(d) && dangling.insert(d) {
                    removals.push((d.clone(), Removal::Dangling));
                }
            }
        }
        let mut unlinked_once = DigestSet::default();
        for dead in unlink.values() {
            for d in dead {
                if live.contains(d) && unlinked_once.insert(d) {
                    // Live elsewhere: only this repository's revision link goes.
                    removals.push((d.clone(), Removal::Unlink));
                }
            }
        }
        drop((present_linked, dangling, unlinked_once));

        // Where each digest to remove is linked.
        let doomed: HashSet<Digest> = removals.iter().map(|(d, _)| d.clone()).collect();
        let mut links: HashMap<Digest, Vec<String>> = HashMap::new();
        for (repo, rec) in &repos {
            let dir = paths::stored_repo_dir(repo);
            let unlinked: HashSet<&Digest> = unlink.get(repo).into_iter().flatten().collect();
            let mut add = |within: &str, d: &Digest| {
                links.entry(d.clone()).or_default().push(format!(
                    "{dir}/{within}/{}/{}",
                    d.algorithm().as_str(),
                    d.hex()
                ));
            };
            // A link goes when its digest is swept, or (revisions, tag history) unlinked from this repository.
            let goes = |d: &Digest, unlinkable: bool| {
                doomed.contains(d) && (!live.contains(d) || (unlinkable && unlinked.contains(d)))
            };
            for (d, _) in &rec.layers {
                if goes(d, false) {
                    add("_layers", d);
                }
            }
            for (d, _) in &rec.revisions {
                if goes(d, true) {
                    add("_manifests/revisions", d);
                }
            }
            for (tag, d) in &rec.tag_index {
                if goes(d, true) {
                    add(&format!("_manifests/tags/{tag}/index"), d);
                }
            }
        }
        drop(doomed);
        // Batches of digests linked from the same repositories: the links' folders are synced once per batch.
        removals.sort_by(|(a, _), (b, _)| {
            let first = |d: &Digest| links.get(d).and_then(|l| l.first());
            first(a).cmp(&first(b))
        });

        // 4. Sweep in batches: publish, read the pins, delete what no push pinned.
        for batch in removals.chunks(BATCH) {
            let spared = match hold.as_deref_mut() {
                Some(hold) => {
                    let digests: Vec<&Digest> = batch.iter().map(|(d, _)| d).collect();
                    hold.publish(&digests).await?;
                    hold.pinned().await?
                }
                None => DigestSet::default(),
            };
            // Links first (durably), then content: a crash in between leaves garbage, never a dangling link.
            let (mut link_keys, mut data_keys) = (Vec::new(), Vec::new());
            for (d, removal) in batch {
                if spared.contains(d) {
                    report.spared += 1;
                    continue;
                }
                match removal {
                    Removal::Blob(_) | Removal::Dangling => {
                        // Written again since the walk (a new upload of the same content): not garbage.
                        let now = storage.stat(&paths::blob_data(d)).await?;
                        if now.is_some_and(|m| recent(m.modified, cutoff)) {
                            report.spared += 1;
                            continue;
                        }
                    }
                    Removal::Unlink => {}
                }
                for k in links.get(d).map(Vec::as_slice).unwrap_or_default() {
                    report.links += 1;
                    if k.contains("/_manifests/revisions/") {
                        // A revision's folder (registry:2 may keep signatures beside the link).
                        link_keys.push(k.clone());
                        if let Some(repo) = k
                            .strip_prefix(&root)
                            .and_then(|r| r.strip_prefix('/'))
                            .and_then(|r| r.split("/_manifests/").next())
                        {
                            report.manifests.push(UnlinkedManifest {
                                repository: repo.to_string(),
                                digest: d.to_string(),
                            });
                        }
                    } else {
                        link_keys.push(format!("{k}/link"));
                    }
                }
                if let Removal::Blob(size) = removal {
                    data_keys.push(paths::blob_data(d));
                    report.blobs.push(d.to_string());
                    report.bytes += size;
                }
            }
            if let Some(hold) = hold.as_deref() {
                // In small groups, the deadline checked before each: a folder delete on S3 is a listing and
                // a request, and a batch may name thousands of links.
                for group in link_keys.chunks(DELETE_GROUP) {
                    hold.check_deadline()?;
                    storage.delete_batch(group, true).await?;
                }
                for group in data_keys.chunks(DELETE_GROUP) {
                    hold.check_deadline()?;
                    storage.delete_batch(group, false).await?;
                }
            }
        }
        if let Some(hold) = hold.as_deref_mut() {
            hold.publish(&[]).await?;
        }

        // 5. Abandoned uploads.
        let upload_cutoff = started
            .checked_sub(opts.upload_max_age)
            .unwrap_or(UNIX_EPOCH);
        for (repo, rec) in &repos {
            for (id, seen) in &rec.uploads {
                if recent(*seen, upload_cutoff) {
                    continue;
                }
                if let Some(hold) = hold.as_deref_mut() {
                    hold.keep_alive().await?;
                }
                let dir = format!("{}/_uploads/{id}", paths::stored_repo_dir(repo));
                // Appended data on some backends is not in the walk: ask for it.
                let data = storage.stat(&format!("{dir}/data")).await?;
                if data.is_some_and(|m| recent(m.modified, upload_cutoff)) {
                    continue;
                }
                if !opts.dry_run {
                    storage.delete(&dir).await?;
                }
                report.uploads.push(PurgedUpload {
                    repository: repo.clone(),
                    id: id.clone(),
                });
            }
        }
        report.blobs.sort();
        report
            .manifests
            .sort_by(|a, b| (&a.repository, &a.digest).cmp(&(&b.repository, &b.digest)));
        report
            .uploads
            .sort_by(|a, b| (&a.repository, &a.id).cmp(&(&b.repository, &b.id)));
        Ok(report)
    }

    /// Marks what one repository keeps alive; returns its revisions that no root reaches (only with
    /// `delete_untagged`, else none).
    async fn mark_repository(
        &self,
        rec: &RepoRecord,
        opts: &GcOptions,
        (cutoff, mirror_cutoff): (SystemTime, Option<SystemTime>),
        live: &mut DigestSet,
        removed_tags: &HashMap<String, Digest>,
        mut hold: Option<&mut Hold<'_>>,
    ) -> Result<Vec<Digest>, GcError> {
        let storage = self.storage().as_ref();
        let mut roots: Vec<Digest> = Vec::new();
        let mut retired: HashSet<Digest> = HashSet::new();
        for (tag, key, _) in &rec.tag_links {
            if let Some(d) = removed_tags.get(tag) {
                retired.insert(d.clone());
                continue;
            }
            let Some(d) = tag_target(storage, key).await? else {
                continue;
            };
            roots.push(d);
        }
        // A manifest a removed tag pointed at goes too, unless a kept tag (or index, or subject) needs it.
        for d in &roots {
            retired.remove(d);
        }
        let mut parsed: HashMap<Digest, References> = HashMap::new();
        if !retired.is_empty() {
            // With them go the children of a retired index and the referrers of a retired manifest (to a
            // fixed point), unless marking from what stays reaches them again.
            for (d, _) in &rec.revisions {
                if let Some(h) = hold.as_deref_mut() {
                    h.keep_alive().await?;
                }
                let refs = self.read_references(d).await?;
                parsed.insert(d.clone(), refs);
            }
            loop {
                let mut more: Vec<Digest> = Vec::new();
                for r in &retired {
                    if let Some(refs) = parsed.get(r) {
                        more.extend(
                            refs.children
                                .iter()
                                .filter(|c| !retired.contains(*c))
                                .cloned(),
                        );
                    }
                }
                for (d, refs) in &parsed {
                    if !retired.contains(d)
                        && refs.subject.as_ref().is_some_and(|s| retired.contains(s))
                    {
                        more.push(d.clone());
                    }
                }
                if more.is_empty() {
                    break;
                }
                retired.extend(more);
            }
        }
        for (d, t) in &rec.revisions {
            // In a mirror, an untagged manifest stays for the TTL after its fetch.
            let untagged_kept = match mirror_cutoff {
                Some(c) => recent(*t, c),
                None => !opts.delete_untagged,
            };
            if (untagged_kept && !retired.contains(d)) || recent(*t, cutoff) {
                roots.push(d.clone());
            }
        }
        let unrooted = opts.delete_untagged || mirror_cutoff.is_some() || !retired.is_empty();
        let mut kept: HashSet<Digest> = HashSet::new();
        let mut queue = roots;
        loop {
            while let Some(m) = queue.pop() {
                if !kept.insert(m.clone()) {
                    continue;
                }
                if let Some(h) = hold.as_deref_mut() {
                    h.keep_alive().await?;
                }
                live.insert(&m);
                let refs = match parsed.remove(&m) {
                    Some(r) => r,
                    None => self.read_references(&m).await?,
                };
                for b in &refs.blobs {
                    live.insert(b);
                }
                queue.extend(refs.children.iter().cloned());
                parsed.insert(m, refs);
            }
            if !unrooted {
                break;
            }
            // Referrers of kept manifests are kept too (to a fixed point: a signature of a signature).
            for (d, _) in &rec.revisions {
                if kept.contains(d) {
                    continue;
                }
                if !parsed.contains_key(d) {
                    if let Some(h) = hold.as_deref_mut() {
                        h.keep_alive().await?;
                    }
                    let refs = self.read_references(d).await?;
                    parsed.insert(d.clone(), refs);
                }
                if parsed[d].subject.as_ref().is_some_and(|s| kept.contains(s)) {
                    queue.push(d.clone());
                }
            }
            if queue.is_empty() {
                break;
            }
        }
        Ok(rec
            .revisions
            .iter()
            .filter(|(d, _)| !kept.contains(d))
            .map(|(d, _)| d.clone())
            .collect())
    }

    /// Removes the tags a retention rule chose (in a dry run, only reports them), before marking: returns
    /// each removed tag with the digest it pointed at. A tag whose link changed since the walk (pushed again;
    /// times compared to the second, as object stores give them) is kept.
    async fn untag(
        &self,
        repo: &str,
        rec: &RepoRecord,
        chosen: &[String],
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<HashMap<String, Digest>, GcError> {
        let storage = self.storage().as_ref();
        let secs = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        let mut out = HashMap::new();
        for (tag, key, seen) in rec.tag_links.iter().filter(|(t, _, _)| chosen.contains(t)) {
            let Some(now) = storage.stat(key).await? else {
                continue;
            };
            if secs(now.modified).is_none() || secs(now.modified) != secs(*seen) {
                continue;
            }
            let Some(d) = tag_target(storage, key).await? else {
                continue;
            };
            if !dry_run {
                storage
                    .delete(key.trim_end_matches("/current/link"))
                    .await?;
            }
            report.tags.push(RemovedTag {
                repository: repo.to_string(),
                tag: tag.clone(),
                digest: d.to_string(),
            });
            out.insert(tag.clone(), d);
        }
        Ok(out)
    }

    async fn read_references(&self, d: &Digest) -> Result<References, GcError> {
        let key = paths::blob_data(d);
        // A revision whose content is missing, or too large to be a manifest, names nothing to follow (no
        // client can read it as a manifest either); it must not stop every collection.
        match self.storage().stat(&key).await? {
            None => return Ok(References::default()),
            Some(m) if m.size > STORED_MANIFEST_LIMIT => {
                tracing::warn!(digest = %d, size = m.size, "a manifest revision too large to be a manifest");
                return Ok(References::default());
            }
            Some(_) => {}
        }
        match self.storage().read_small(&key, STORED_MANIFEST_LIMIT).await {
            Ok(b) => Ok(references(&b)),
            Err(e) if e.is_not_found() => Ok(References::default()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A running collection's hold on the storage: its lease, its sweep marker, and the pins it has read.
struct Hold<'a> {
    storage: &'a dyn Storage,
    lease: Lease,
    /// When the sweep marker was last written (before the write began): it is valid for [`LEASE_TTL`] from
    /// then, and this collector stops short of that.
    marked: std::time::Instant,
    /// Pins read so far, by name (a pin's digests never change).
    pins: HashMap<String, Vec<Digest>>,
}

impl Hold<'_> {
    /// Fails when the published marker may be about to expire: a push could then stop seeing the batch.
    fn check_deadline(&self) -> Result<(), GcError> {
        if self.marked.elapsed() > LEASE_TTL - LEASE_MARGIN {
            return Err(GcError::LeaseLost);
        }
        Ok(())
    }

    /// Renews the lease and writes this epoch's sweep marker with `doomed` (nothing is deleted before the
    /// pins are read after this).
    async fn publish(&mut self, doomed: &[&Digest]) -> Result<(), GcError> {
        self.check_deadline()?;
        let at = std::time::Instant::now();
        self.lease.renew(self.storage).await?;
        let m = SweepMarker {
            epoch: self.lease.epoch,
            expires: unix_now() + LEASE_TTL.as_secs(),
            doomed: doomed.iter().map(|d| d.to_string()).collect(),
        };
        let json = serde_json::to_vec(&m).map_err(|e| RegistryError::Internal(e.to_string()))?;
        self.storage
            .put(&paths::gc_sweep(self.lease.epoch), Bytes::from(json))
            .await?;
        self.marked = at;
        Ok(())
    }

    /// Renews the lease and the marker (with an empty batch) when due; between batches only.
    async fn keep_alive(&mut self) -> Result<(), GcError> {
        if self.marked.elapsed() > LEASE_RENEW {
            self.publish(&[]).await?;
        }
        Ok(())
    }

    /// Every digest pinned by a push, read after the batch was published.
    async fn pinned(&mut self) -> Result<DigestSet, GcError> {
        let names = self.storage.list(&paths::gc_pins()).await?;
        let listed: HashSet<&String> = names.iter().collect();
        self.pins.retain(|k, _| listed.contains(k));
        let mut set = DigestSet::default();
        for name in &names {
            if !self.pins.contains_key(name) {
                let body = match self
                    .storage
                    .read_small(&paths::gc_pin(name), SMALL_LIMIT)
                    .await
                {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e.into()),
                };
                let digests = serde_json::from_slice::<PinBody>(&body)
                    .map(|p| {
                        p.digests
                            .iter()
                            .filter_map(|d| Digest::parse(d).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                self.pins.insert(name.clone(), digests);
            }
            for d in &self.pins[name] {
                set.insert(d);
            }
        }
        Ok(set)
    }
}

/// Removes the pins of pushes that are over: marked done, older than [`PIN_STALE`], or unreadable.
async fn remove_finished_pins(storage: &dyn Storage) -> Result<(), GcError> {
    let now = unix_now();
    for name in storage.list(&paths::gc_pins()).await? {
        let key = paths::gc_pin(&name);
        let finished = match storage.read_small(&key, SMALL_LIMIT).await {
            Ok(b) => serde_json::from_slice::<PinBody>(&b)
                .map_or(true, |p| p.done || p.created + PIN_STALE.as_secs() < now),
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        if finished {
            storage.delete(&key).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{RepoName, Tag};
    use crate::storage::{AppendWriter, ByteStream, ObjectMeta, ObjectStream, StorageError};
    use async_trait::async_trait;
    use std::sync::Arc;

    /// A filesystem storage that holds a collector's publication of a non-empty batch until the test lets it
    /// go: the moment between choosing what to delete and publishing it, made as long as the test needs.
    struct Held {
        inner: crate::storage::fs::FsStorage,
        reached: tokio::sync::Notify,
        go: tokio::sync::Semaphore,
        /// Hold once the batch is published (before the pins are read) instead of before.
        after: bool,
    }

    impl Held {
        fn new(dir: &std::path::Path, after: bool) -> Arc<Held> {
            Arc::new(Held {
                inner: crate::storage::fs::FsStorage::new(dir).unwrap(),
                reached: tokio::sync::Notify::new(),
                go: tokio::sync::Semaphore::new(0),
                after,
            })
        }
    }

    #[async_trait]
    impl Storage for Held {
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
            let batch = key.starts_with(&paths::gc_sweeps())
                && !bytes.windows(12).any(|w| w == b"\"doomed\":[]}");
            if batch && !self.after {
                self.reached.notify_one();
                self.go.acquire().await.expect("open").forget();
            }
            self.inner.put(key, bytes).await?;
            if batch && self.after {
                self.reached.notify_one();
                self.go.acquire().await.expect("open").forget();
            }
            Ok(())
        }
        async fn append(&self, key: &str) -> Result<Box<dyn AppendWriter>, StorageError> {
            self.inner.append(key).await
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
        fn walk(&self, prefix: &str) -> ObjectStream {
            self.inner.walk(prefix)
        }
    }

    async fn push_blob(store: &RegistryStore, name: &RepoName, data: &'static [u8]) -> Digest {
        let d = Digest::sha256_of(data);
        let s = store.start_upload(name).await.unwrap();
        let body: crate::store::BodyStream = Box::pin(futures_util::stream::once(async move {
            Ok(Bytes::from_static(data))
        }));
        store
            .commit_upload(&s, &d, Some((None, None, body)))
            .await
            .unwrap();
        d
    }

    fn options(delete_untagged: bool) -> GcOptions {
        GcOptions {
            grace: Duration::ZERO,
            delete_untagged,
            mirrors: Vec::new(),
            upload_max_age: Duration::from_secs(3600),
            dry_run: false,
            retention: Default::default(),
        }
    }

    fn image(config: &Digest, layer: &Digest) -> Bytes {
        Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": crate::oci::media::OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 1}],
            }))
            .unwrap(),
        )
    }

    /// The other side of the protocol: a push that comes after the batch naming its layer was published
    /// (and before the collector reads the pins) fails with `MANIFEST_BLOB_UNKNOWN`; once the layer is swept
    /// and uploaded again, the same push succeeds and the image is whole.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_push_after_the_batch_is_published_fails_then_succeeds_after_upload() {
        let dir = tempfile::tempdir().unwrap();
        let held = Held::new(dir.path(), true);
        let store = RegistryStore::new(held.clone());
        let name: RepoName = "r".parse().unwrap();
        let config = push_blob(&store, &name, b"{}").await;
        let layer = push_blob(&store, &name, b"l").await;
        let collector = {
            let store = store.clone();
            tokio::spawn(async move { store.collect_garbage(&options(false)).await })
        };
        held.reached.notified().await;
        let tag: Tag = "v1".parse().unwrap();
        let m = image(&config, &layer);
        match store
            .put_manifest(&name, Some(&tag), None, m.clone(), None)
            .await
        {
            Err(RegistryError::ManifestBlobUnknown(_)) => {}
            other => panic!(
                "a push naming a published blob must fail: {:?}",
                other.map(|p| p.digest)
            ),
        }
        held.go.add_permits(1000);
        let report = collector.await.unwrap().unwrap();
        assert_eq!(report.blobs.len(), 2, "{report:?}");
        assert_eq!(report.spared, 0, "{report:?}");
        assert!(store.resolve_tag(&name, &tag).await.unwrap().is_none());
        push_blob(&store, &name, b"{}").await;
        push_blob(&store, &name, b"l").await;
        store
            .put_manifest(&name, Some(&tag), None, m, None)
            .await
            .expect("pushed again after the upload");
        for d in [&config, &layer] {
            assert!(store.repo_blob_size(&name, d).await.unwrap().is_some());
        }
    }

    /// The case a pin of the index and its direct children would miss: an untagged child and its layer are
    /// both chosen for deletion; before the batch is published, an index naming the child is pushed. The
    /// push pins what the child references too, so the collector spares the layer as well as the child, and
    /// the index that got its 201 is whole.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_index_pushed_while_its_child_is_doomed_keeps_the_child_s_layers() {
        let dir = tempfile::tempdir().unwrap();
        let held = Held::new(dir.path(), false);
        let store = RegistryStore::new(held.clone());
        let name: RepoName = "r".parse().unwrap();
        let config = push_blob(&store, &name, b"{}").await;
        let layer = push_blob(&store, &name, b"the child's only layer").await;
        let child = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": crate::oci::media::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 22}],
        }))
        .unwrap();
        let c = store
            .put_manifest(&name, None, None, Bytes::from(child.clone()), None)
            .await
            .unwrap()
            .digest;
        let opts = options(true);
        let collector = {
            let store = store.clone();
            tokio::spawn(async move { store.collect_garbage(&opts).await })
        };
        held.reached.notified().await;
        // The batch (child, layer, config) is chosen and about to be published: the index lands now.
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": crate::oci::media::OCI_INDEX,
            "manifests": [{"mediaType": crate::oci::media::OCI_MANIFEST, "digest": c.to_string(), "size": child.len()}],
        }))
        .unwrap();
        let tag: Tag = "v1".parse().unwrap();
        store
            .put_manifest(&name, Some(&tag), None, Bytes::from(index), None)
            .await
            .expect("the index push gets its 201");
        held.go.add_permits(1000);
        let report = collector.await.unwrap().unwrap();
        assert!(
            report.blobs.is_empty(),
            "nothing the index needs is swept: {report:?}"
        );
        assert_eq!(report.spared, 3, "{report:?}");
        for d in [&c, &layer, &config] {
            assert!(store.blob_size(d).await.unwrap().is_some(), "{d} swept");
        }
        assert!(store.manifest_by_digest(&name, &c).await.unwrap().is_some());
    }

    #[test]
    fn repository_keys_split_at_the_first_underscore_segment() {
        assert_eq!(
            split_repo_key("a/b/_layers/sha256/x/link"),
            Some(("a/b", "_layers/sha256/x/link"))
        );
        assert_eq!(
            split_repo_key("a/_uploads/u/data"),
            Some(("a", "_uploads/u/data"))
        );
        assert_eq!(split_repo_key("_layers/x"), None);
        assert_eq!(split_repo_key("a/b"), None);
    }

    #[test]
    fn references_follow_every_kind_of_manifest() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let image = serde_json::json!({
            "config": {"digest": d('a')},
            "layers": [{"digest": d('b')}, {"digest": d('c')}],
            "subject": {"digest": d('d')},
        });
        let r = references(image.to_string().as_bytes());
        assert_eq!(r.blobs.len(), 3);
        assert_eq!(r.subject.unwrap().to_string(), d('d'));
        let index = serde_json::json!({"manifests": [{"digest": d('e')}]});
        assert_eq!(references(index.to_string().as_bytes()).children.len(), 1);
        let schema1 = serde_json::json!({"fsLayers": [{"blobSum": d('f')}]});
        assert_eq!(references(schema1.to_string().as_bytes()).blobs.len(), 1);
        assert!(references(b"not json").blobs.is_empty());
    }

    /// A manifest with bytes that are not UTF-8 in a field validation skips passes validation (as it does in
    /// registry:2, whose decoder replaces them); the collector still sees its config and layers (found by the
    /// fuzz target `manifest_references`: it once saw nothing, and a collection would have deleted them).
    #[test]
    fn references_survive_bytes_that_are_not_utf8() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let mut bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"x","digest":"{}","size":2}},"layers":[{{"mediaType":"y","digest":"{}","size":5}}],"other":"#,
            crate::oci::media::OCI_MANIFEST,
            d('a'),
            d('b')
        )
        .into_bytes();
        bytes.extend_from_slice(b"\"bad \xff\xfe bytes\"}");
        assert!(crate::oci::Manifest::parse(&bytes, None).is_ok());
        let r = references(&bytes);
        let want: Vec<Digest> = [d('a'), d('b')]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(r.blobs, want);
    }
}
