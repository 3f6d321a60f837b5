//! The verified-credential cache: headers checked recently, keyed by an HMAC so no plaintext is kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Remembers `Authorization` headers that were verified recently, keyed by an HMAC (random per-process key) of
/// the whole header, so the plaintext is never stored and a password is not re-hashed for every blob chunk.
#[derive(Debug)]
pub struct CredentialCache {
    /// HMAC-SHA256 keyed with a random key made at start.
    mac: HmacSha256,
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

impl CredentialCache {
    /// An empty cache.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        let key: [u8; 32] = rand::random();
        CredentialCache {
            mac: HmacSha256::new_from_slice(&key).expect("HMAC takes a key of any length"),
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn fingerprint(&self, header: &[u8]) -> [u8; 32] {
        // The keyed state is cloned, not derived from the key again: two SHA-256 blocks per lookup instead
        // of four.
        let mut mac = self.mac.clone();
        mac.update(header);
        mac.finalize().into_bytes().into()
    }

    /// The user a still-fresh verified header belongs to.
    pub fn lookup(&self, header: &[u8]) -> Option<String> {
        let fp = self.fingerprint(header);
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&fp) {
            Some((user, expires)) if *expires > Instant::now() => Some(user.clone()),
            Some(_) => {
                map.remove(&fp);
                None
            }
            None => None,
        }
    }

    /// Remember that `header` verified as `user`.
    pub fn insert(&self, header: &[u8], user: &str) {
        let fp = self.fingerprint(header);
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.capacity {
            map.retain(|_, (_, exp)| *exp > now);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(fp, (user.to_string(), now + self.ttl));
    }

    /// Forget everything (the htpasswd file changed).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Number of remembered entries.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
