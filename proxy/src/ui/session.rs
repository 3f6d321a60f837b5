//! Web interface sessions: a signed cookie that says who and until when, bound to the user's htpasswd line (a
//! changed password or a removed user ends it), ended early by logging out; and the token that each form
//! carries against cross-site request forgery.
//!
//! The cookie is `berth_session=v1.USER.EXPIRY.NONCE.MAC`: the user name in base64url, the expiry in Unix
//! seconds, 16 random bytes in hex, and an HMAC-SHA256 under `ui-session.key` in the certificates folder (0600,
//! made at first use, shared by proxies sharing the folder) over all of it and the user's htpasswd line.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The cookie's name.
pub const COOKIE: &str = "berth_session";
/// The key file in the certificates folder.
pub const KEY_FILE: &str = "ui-session.key";
/// Most logged-out sessions remembered until they expire.
const MAX_REVOKED: usize = 100_000;

/// A valid session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who logged in.
    pub user: String,
    /// Its random part, what logging out revokes and what the form token is made from.
    pub nonce: String,
    /// When it ends, Unix seconds.
    pub expires: u64,
}

/// Issues and checks sessions.
pub struct Sessions {
    mac: HmacSha256,
    ttl: Duration,
    revoked: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("ttl", &self.ttl).finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sessions {
    /// Sessions signed with the key in `dir` (made when missing); without one, a key of this process.
    pub fn load(dir: &Path, ttl: Duration) -> Sessions {
        let key = crate::authn::token::load_key(dir, KEY_FILE).unwrap_or_else(|e| {
            tracing::warn!(
                "web interface session key {}: {e}; sessions are signed with a key of this process only \
                 (they end when it restarts)",
                dir.join(KEY_FILE).display()
            );
            rand::random::<[u8; 32]>().to_vec()
        });
        Sessions::with_key(&key, ttl)
    }

    /// Sessions signed with `key`.
    pub fn with_key(key: &[u8], ttl: Duration) -> Sessions {
        Sessions {
            mac: HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length"),
            ttl,
            revoked: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn sign(&self, user_b64: &str, expires: u64, nonce: &str, fingerprint: &[u8; 32]) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"berth-ui-session\0");
        mac.update(user_b64.as_bytes());
        mac.update(b"\0");
        mac.update(expires.to_string().as_bytes());
        mac.update(b"\0");
        mac.update(nonce.as_bytes());
        mac.update(b"\0");
        mac.update(fingerprint);
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// A new session's cookie value for `user`, whose htpasswd line has `fingerprint`.
    pub fn issue(&self, user: &str, fingerprint: &[u8; 32]) -> String {
        let user_b64 = URL_SAFE_NO_PAD.encode(user.as_bytes());
        let expires = now_secs().saturating_add(self.ttl.as_secs());
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let mac = self.sign(&user_b64, expires, &nonce, fingerprint);
        format!("v1.{user_b64}.{expires}.{nonce}.{mac}")
    }

    /// The session a cookie value stands for, if it is genuine, unexpired, not logged out, and
    /// `fingerprint` (the named user's htpasswd line now; `None` when there is no such user) is the one it
    /// was issued for.
    pub fn verify(
        &self,
        value: &str,
        fingerprint: impl FnOnce(&str) -> Option<[u8; 32]>,
    ) -> Option<Session> {
        let mut parts = value.split('.');
        let (Some("v1"), Some(user_b64), Some(expires), Some(nonce), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let expires: u64 = expires.parse().ok()?;
        if expires <= now_secs() || nonce.len() != 32 {
            return None;
        }
        let user = String::from_utf8(URL_SAFE_NO_PAD.decode(user_b64).ok()?).ok()?;
        let fp = fingerprint(&user)?;
        let want = self.sign(user_b64, expires, nonce, &fp);
        if !bool::from(want.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        if self
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(nonce)
        {
            return None;
        }
        Some(Session {
            user,
            nonce: nonce.to_string(),
            expires,
        })
    }

    /// Ends a session before its time (logging out).
    pub fn revoke(&self, session: &Session) {
        let now = now_secs();
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        if revoked.len() >= MAX_REVOKED {
            revoked.retain(|_, expires| *expires > now);
        }
        if revoked.len() < MAX_REVOKED {
            revoked.insert(session.nonce.clone(), session.expires);
        }
    }

    /// The token a session's forms carry: only pages of this session know it.
    pub fn form_token(&self, session: &Session) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"berth-ui-form\0");
        mac.update(session.nonce.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Whether `token` is `session`'s form token (compared in constant time).
    pub fn form_token_ok(&self, session: &Session, token: &str) -> bool {
        bool::from(self.form_token(session).as_bytes().ct_eq(token.as_bytes()))
    }
}

/// The value of the session cookie among a request's `Cookie` headers.
pub fn cookie_value(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: [u8; 32] = [7; 32];

    #[test]
    fn a_session_round_trips_and_binds_to_the_password() {
        let s = Sessions::with_key(b"k", Duration::from_secs(60));
        let v = s.issue("alice", &FP);
        let got = s.verify(&v, |u| (u == "alice").then_some(FP)).unwrap();
        assert_eq!(got.user, "alice");
        // Password changed, user removed, another key, a tampered value.
        assert!(s.verify(&v, |_| Some([8; 32])).is_none());
        assert!(s.verify(&v, |_| None).is_none());
        let other = Sessions::with_key(b"other", Duration::from_secs(60));
        assert!(other.verify(&v, |_| Some(FP)).is_none());
        let bob = URL_SAFE_NO_PAD.encode("bob");
        let forged = v.replacen(&URL_SAFE_NO_PAD.encode("alice"), &bob, 1);
        assert!(s.verify(&forged, |_| Some(FP)).is_none());
    }

    #[test]
    fn logging_out_ends_the_session_and_expiry_too() {
        let s = Sessions::with_key(b"k", Duration::from_secs(60));
        let v = s.issue("alice", &FP);
        let session = s.verify(&v, |_| Some(FP)).unwrap();
        s.revoke(&session);
        assert!(s.verify(&v, |_| Some(FP)).is_none());
        let expired = Sessions::with_key(b"k", Duration::from_secs(0));
        let v = expired.issue("alice", &FP);
        assert!(expired.verify(&v, |_| Some(FP)).is_none());
    }

    #[test]
    fn form_tokens_belong_to_their_session() {
        let s = Sessions::with_key(b"k", Duration::from_secs(60));
        let a = s.verify(&s.issue("alice", &FP), |_| Some(FP)).unwrap();
        let b = s.verify(&s.issue("alice", &FP), |_| Some(FP)).unwrap();
        assert!(s.form_token_ok(&a, &s.form_token(&a)));
        assert!(!s.form_token_ok(&a, &s.form_token(&b)));
        assert!(!s.form_token_ok(&a, ""));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; berth_session=v1.x".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h), Some("v1.x"));
    }
}
