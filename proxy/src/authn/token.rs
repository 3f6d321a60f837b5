//! Bearer tokens for clients that need a token challenge: the Docker daemon cannot pull without credentials
//! from a registry that answers its ping with a Basic challenge (it stops with "no basic auth credentials"),
//! so when the access rules let anonymous clients pull, the proxy answers with a Bearer challenge and issues
//! tokens at `/_berth/token`: anonymous ones without credentials, a user's with their Basic credentials.
//!
//! A token says who (a user name, or no one) and until when, signed with HMAC-SHA256 under a key kept in
//! `token.key` in the certificates folder (0600; made at first use), so proxies sharing that folder accept
//! each other's tokens. Tokens say nothing about what their holder may do: every request is still decided by
//! the access rules.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The path of the token endpoint.
pub const TOKEN_PATH: &str = "/_berth/token";

/// The name of the key file in the certificates folder.
pub const TOKEN_KEY_FILE: &str = "token.key";

/// Issues and checks bearer tokens.
pub struct Tokens {
    mac: HmacSha256,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("ttl", &self.ttl).finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads the key `file` in `dir`, or makes it when there is none (0600, written whole then renamed, never
/// over another proxy's: when one appears meanwhile, it is read instead).
pub(crate) fn load_key(dir: &Path, file: &str) -> std::io::Result<Vec<u8>> {
    let path = dir.join(file);
    let read = |path: &Path| -> std::io::Result<Vec<u8>> {
        let text = std::fs::read_to_string(path)?;
        hex::decode(text.trim())
            .ok()
            .filter(|k| k.len() >= 32)
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "{} does not hold a key (64 hex digits)",
                    path.display()
                ))
            })
    };
    match read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let key: [u8; 32] = rand::random();
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(format!("{}\n", hex::encode(key)).as_bytes())?;
    tmp.as_file().sync_all()?;
    match tmp.persist_noclobber(&path) {
        Ok(_) => Ok(key.to_vec()),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(e) => Err(e.error),
    }
}

impl Tokens {
    /// Tokens signed with the key in `dir` (made when missing), valid for `ttl`. When the key can be neither
    /// read nor made, tokens are signed with a key of this process only (and a warning says so).
    pub fn load(dir: &Path, ttl: Duration) -> Tokens {
        let key = load_key(dir, TOKEN_KEY_FILE).unwrap_or_else(|e| {
            tracing::warn!(
                "token key {}: {e}; tokens are signed with a key of this process only (other proxies, and \
                 this one after a restart, refuse them)",
                dir.join(TOKEN_KEY_FILE).display()
            );
            rand::random::<[u8; 32]>().to_vec()
        });
        Tokens {
            mac: HmacSha256::new_from_slice(&key).expect("HMAC takes a key of any length"),
            ttl,
        }
    }

    /// How long an issued token is valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn sign(&self, payload: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// A token for `user` (`None`: anonymous).
    pub fn issue(&self, user: Option<&str>) -> String {
        let payload = format!(
            "{}:{}",
            now_secs().saturating_add(self.ttl.as_secs()),
            user.unwrap_or("")
        );
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(self.sign(payload.as_bytes()))
        )
    }

    /// Who a valid, unexpired token is for: `Some(None)` for an anonymous token, `None` when the token is
    /// not one of ours or has expired.
    pub fn verify(&self, token: &str) -> Option<Option<String>> {
        let (payload, sig) = token.trim().split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        if !bool::from(self.sign(&payload).as_slice().ct_eq(&sig)) {
            return None;
        }
        let payload = String::from_utf8(payload).ok()?;
        let (exp, user) = payload.split_once(':')?;
        if exp.parse::<u64>().ok()? <= now_secs() {
            return None;
        }
        Some((!user.is_empty()).then(|| user.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_forgeries_fail() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::load(dir.path(), Duration::from_secs(60));
        assert_eq!(
            t.verify(&t.issue(Some("alice"))),
            Some(Some("alice".into()))
        );
        assert_eq!(t.verify(&t.issue(None)), Some(None));
        let tok = t.issue(Some("alice"));
        let (p, s) = tok.split_once('.').unwrap();
        let forged = format!(
            "{}.{s}",
            URL_SAFE_NO_PAD.encode(
                String::from_utf8(URL_SAFE_NO_PAD.decode(p).unwrap())
                    .unwrap()
                    .replace("alice", "admin")
            )
        );
        assert_eq!(t.verify(&forged), None);
        assert_eq!(t.verify("garbage"), None);
        // The key is kept (0600) and shared by a second proxy on the same folder.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(TOKEN_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = Tokens::load(dir.path(), Duration::from_secs(60));
        assert_eq!(other.verify(&tok), Some(Some("alice".into())));
        // A key file that cannot be used is an error, never replaced.
        std::fs::write(dir.path().join(TOKEN_KEY_FILE), "not hex\n").unwrap();
        assert!(load_key(dir.path(), TOKEN_KEY_FILE).is_err());
        // Expired tokens fail.
        let short = Tokens::load(dir.path(), Duration::ZERO);
        assert_eq!(short.verify(&short.issue(Some("alice"))), None);
    }
}
