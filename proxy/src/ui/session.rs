//! Web interface sessions: a signed cookie that says who, since when and until when, bound to the user's
//! htpasswd line (a changed password or a removed user ends it), ended early by logging out; and the token
//! that each form carries against cross-site request forgery.
//!
//! The cookie is `__Host-berth_session=v1.USER.ISSUED.EXPIRY.NONCE.MAC` (`__Host-`: only this host, over
//! https, `Path=/`, so no neighbouring site can plant one): the user name in base64url, when it was issued
//! (Unix milliseconds), the expiry (Unix seconds), 16 random bytes in hex, and an HMAC-SHA256 under
//! `ui-session.key` in the certificates folder (0600, made at first use, shared by proxies sharing the folder)
//! over all of it and the user's htpasswd line.
//!
//! Logging out ends every session of that user issued before it: the moment is kept per user in
//! `ui-logouts` next to the key (written whole then renamed, re-read when another proxy changes it), so it
//! survives restarts, holds one line per user, and proxies sharing the folder share it.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The cookie's name.
pub const COOKIE: &str = "__Host-berth_session";
/// The key file in the certificates folder.
pub const KEY_FILE: &str = "ui-session.key";
/// The logouts file in the certificates folder.
pub const LOGOUTS_FILE: &str = "ui-logouts";

/// A valid session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who logged in.
    pub user: String,
    /// Its random part, what the form token is made from.
    pub nonce: String,
    /// When it was issued, Unix milliseconds.
    pub issued: u64,
    /// When it ends, Unix seconds.
    pub expires: u64,
}

/// When each user last logged out, Unix milliseconds: sessions issued before are void.
#[derive(Debug, Default)]
struct Logouts {
    path: Option<PathBuf>,
    state: Mutex<(Option<crate::watch::FileStamp>, HashMap<String, u64>)>,
}

impl Logouts {
    fn parse(text: &str) -> HashMap<String, u64> {
        text.lines()
            .filter_map(|l| {
                let (user, at) = l.split_once(' ')?;
                let user = String::from_utf8(URL_SAFE_NO_PAD.decode(user).ok()?).ok()?;
                Some((user, at.trim().parse().ok()?))
            })
            .collect()
    }

    /// The user's last logout, after re-reading the file if another proxy changed it.
    fn cutoff(&self, user: &str) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.path {
            let now = crate::watch::stamp(path);
            if now != state.0 {
                state.1 = std::fs::read_to_string(path)
                    .map(|t| Logouts::parse(&t))
                    .unwrap_or_default();
                state.0 = now;
            }
        }
        state.1.get(user).copied()
    }

    /// Records a logout of `user` at `at`; entries older than `forget_before` (every session they void has
    /// expired) are dropped. Written whole, then renamed over the file.
    fn record(&self, user: &str, at: u64, forget_before: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.path {
            if let Ok(t) = std::fs::read_to_string(path) {
                for (u, t) in Logouts::parse(&t) {
                    let e = state.1.entry(u).or_insert(t);
                    *e = (*e).max(t);
                }
            }
        }
        let e = state.1.entry(user.to_string()).or_insert(at);
        *e = (*e).max(at);
        state.1.retain(|_, t| *t >= forget_before);
        let Some(path) = &self.path else {
            return;
        };
        let mut text = String::new();
        for (u, t) in &state.1 {
            text.push_str(&format!("{} {t}\n", URL_SAFE_NO_PAD.encode(u.as_bytes())));
        }
        let written = (|| -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            {
                use std::os::unix::fs::PermissionsExt;
                tmp.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            tmp.write_all(text.as_bytes())?;
            tmp.as_file().sync_all()?;
            tmp.persist(path).map_err(|e| e.error)?;
            Ok(())
        })();
        match written {
            Ok(()) => state.0 = crate::watch::stamp(path),
            Err(e) => tracing::warn!(
                "{}: {e}; this logout holds in this process only",
                path.display()
            ),
        }
    }
}

/// Issues and checks sessions.
pub struct Sessions {
    mac: HmacSha256,
    ttl: Duration,
    logouts: Logouts,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("ttl", &self.ttl).finish()
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_secs() -> u64 {
    now_millis() / 1000
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
        let mut sessions = Sessions::with_key(&key, ttl);
        sessions.logouts.path = Some(dir.join(LOGOUTS_FILE));
        sessions
    }

    /// Sessions signed with `key`, logouts kept in memory only.
    pub fn with_key(key: &[u8], ttl: Duration) -> Sessions {
        Sessions {
            mac: HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length"),
            ttl,
            logouts: Logouts::default(),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn sign(
        &self,
        user_b64: &str,
        issued: u64,
        expires: u64,
        nonce: &str,
        fingerprint: &[u8; 32],
    ) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"berth-ui-session\0");
        mac.update(user_b64.as_bytes());
        mac.update(b"\0");
        mac.update(issued.to_string().as_bytes());
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
        // Always after the user's last logout, even within the same millisecond.
        let issued = now_millis().max(self.logouts.cutoff(user).map_or(0, |c| c.saturating_add(1)));
        let expires = (issued / 1000).saturating_add(self.ttl.as_secs());
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let mac = self.sign(&user_b64, issued, expires, &nonce, fingerprint);
        format!("v1.{user_b64}.{issued}.{expires}.{nonce}.{mac}")
    }

    /// The session a cookie value stands for, if it is genuine, unexpired, issued after its user's last logout, and
    /// `fingerprint` (the named user's htpasswd line now; `None` when there is no such user) is the one it
    /// was issued for.
    pub fn verify(
        &self,
        value: &str,
        fingerprint: impl FnOnce(&str) -> Option<[u8; 32]>,
    ) -> Option<Session> {
        let mut parts = value.split('.');
        let (Some("v1"), Some(user_b64), Some(issued), Some(expires), Some(nonce), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let issued: u64 = issued.parse().ok()?;
        let expires: u64 = expires.parse().ok()?;
        if expires <= now_secs() || nonce.len() != 32 {
            return None;
        }
        let user = String::from_utf8(URL_SAFE_NO_PAD.decode(user_b64).ok()?).ok()?;
        let fp = fingerprint(&user)?;
        let want = self.sign(user_b64, issued, expires, nonce, &fp);
        if !bool::from(want.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        if self
            .logouts
            .cutoff(&user)
            .is_some_and(|cutoff| issued <= cutoff)
        {
            return None;
        }
        Some(Session {
            user,
            nonce: nonce.to_string(),
            issued,
            expires,
        })
    }

    /// Logging out: ends this session and every other session of its user issued before now. Blocking (writes
    /// the logouts file).
    pub fn revoke(&self, session: &Session) {
        let now = now_millis().max(session.issued);
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        self.logouts
            .record(&session.user, now, now.saturating_sub(ttl_ms));
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
    fn logging_out_ends_the_users_sessions_and_expiry_too() {
        let s = Sessions::with_key(b"k", Duration::from_secs(60));
        let v = s.issue("alice", &FP);
        let other = s.issue("alice", &FP);
        let bob = s.issue("bob", &FP);
        let session = s.verify(&v, |_| Some(FP)).unwrap();
        s.revoke(&session);
        assert!(s.verify(&v, |_| Some(FP)).is_none());
        assert!(s.verify(&other, |_| Some(FP)).is_none());
        assert!(s.verify(&bob, |_| Some(FP)).is_some());
        let expired = Sessions::with_key(b"k", Duration::from_secs(0));
        let v = expired.issue("alice", &FP);
        assert!(expired.verify(&v, |_| Some(FP)).is_none());
    }

    #[test]
    fn logouts_survive_a_restart_and_are_shared_through_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let a = Sessions::load(dir.path(), Duration::from_secs(60));
        let b = Sessions::load(dir.path(), Duration::from_secs(60));
        let v = a.issue("al ice", &FP);
        let session = b.verify(&v, |_| Some(FP)).expect("shared key");
        a.revoke(&session);
        assert!(b.verify(&v, |_| Some(FP)).is_none(), "the other proxy");
        let restarted = Sessions::load(dir.path(), Duration::from_secs(60));
        assert!(
            restarted.verify(&v, |_| Some(FP)).is_none(),
            "after a restart"
        );
        assert!(restarted
            .verify(&restarted.issue("al ice", &FP), |_| Some(FP))
            .is_some());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(LOGOUTS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
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
            "a=1; __Host-berth_session=v1.x; berth_session=v1.y"
                .parse()
                .unwrap(),
        );
        assert_eq!(cookie_value(&h), Some("v1.x"));
    }
}
