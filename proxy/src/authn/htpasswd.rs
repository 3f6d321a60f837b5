//! The htpasswd file: its lines, the password hash schemes Apache's `htpasswd` writes (bcrypt, MD5-crypt,
//! SHA-1, crypt, plain), their verification in constant time, and the `Authorization: Basic` header.

use std::collections::HashMap;

use base64::Engine as _;
use sha1::Digest as _;
use subtle::ConstantTimeEq;

/// The password hash formats found in htpasswd files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    /// `$2y$`, `$2a$`, `$2b$`.
    Bcrypt,
    /// `$apr1$` (Apache MD5).
    Apr1,
    /// `$1$` (MD5-crypt).
    Md5Crypt,
    /// `$5$` (SHA-256-crypt).
    Sha256Crypt,
    /// `$6$` (SHA-512-crypt).
    Sha512Crypt,
    /// `{SHA}` (unsalted SHA-1, insecure).
    Sha1,
    /// `{SSHA}` (salted SHA-1, insecure).
    Ssha,
    /// Traditional DES crypt (13 characters, insecure).
    DesCrypt,
    /// `{PLAIN}` or an unprefixed value that is not a DES hash (plaintext, insecure).
    Plain,
    /// Starts with `$` or `{` but is none of the schemes above (`$argon2id$`, `{MD5}`, ...): never accepted,
    /// and never taken for plaintext.
    Unsupported,
}

const CRYPT_ALPHABET: &str = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl HashKind {
    /// Recognise the format of a stored hash.
    pub fn detect(hash: &str) -> HashKind {
        if hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$") {
            HashKind::Bcrypt
        } else if hash.starts_with("$apr1$") {
            HashKind::Apr1
        } else if hash.starts_with("$1$") {
            HashKind::Md5Crypt
        } else if hash.starts_with("$5$") {
            HashKind::Sha256Crypt
        } else if hash.starts_with("$6$") {
            HashKind::Sha512Crypt
        } else if hash.starts_with("{SHA}") {
            HashKind::Sha1
        } else if hash.starts_with("{SSHA}") {
            HashKind::Ssha
        } else if hash.starts_with("{PLAIN}") {
            HashKind::Plain
        } else if hash.starts_with('$') || hash.starts_with('{') {
            HashKind::Unsupported
        } else if hash.len() == 13 && hash.chars().all(|c| CRYPT_ALPHABET.contains(c)) {
            HashKind::DesCrypt
        } else {
            HashKind::Plain
        }
    }

    /// Whether loading an entry of this kind deserves a warning.
    pub fn insecure(self) -> bool {
        matches!(self, HashKind::DesCrypt | HashKind::Plain)
    }
}

/// Verify `password` against a stored htpasswd hash. Slow for bcrypt and the crypt family: call from a blocking
/// thread.
pub fn verify_hash(hash: &str, password: &str) -> bool {
    match HashKind::detect(hash) {
        HashKind::Bcrypt => pwhash::bcrypt::verify(password, hash),
        HashKind::Apr1 => md5_crypt_verify(password, hash, "$apr1$"),
        HashKind::Md5Crypt => md5_crypt_verify(password, hash, "$1$"),
        HashKind::Sha256Crypt => pwhash::sha256_crypt::verify(password, hash),
        HashKind::Sha512Crypt => pwhash::sha512_crypt::verify(password, hash),
        HashKind::Sha1 => {
            let Some(b64) = hash.strip_prefix("{SHA}") else {
                return false;
            };
            let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
                return false;
            };
            let got = sha1::Sha1::digest(password.as_bytes());
            expected.len() == got.len() && bool::from(expected.ct_eq(got.as_slice()))
        }
        HashKind::Ssha => {
            let Some(b64) = hash.strip_prefix("{SSHA}") else {
                return false;
            };
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
                return false;
            };
            if raw.len() < 20 {
                return false;
            }
            let (digest, salt) = raw.split_at(20);
            let mut h = sha1::Sha1::new();
            h.update(password.as_bytes());
            h.update(salt);
            bool::from(h.finalize().as_slice().ct_eq(digest))
        }
        HashKind::DesCrypt => pwhash::unix_crypt::verify(password, hash),
        HashKind::Unsupported => false,
        HashKind::Plain => {
            let stored = hash.strip_prefix("{PLAIN}").unwrap_or(hash);
            stored.len() == password.len()
                && bool::from(stored.as_bytes().ct_eq(password.as_bytes()))
        }
    }
}

/// MD5-crypt with a given magic (`$1$` or Apache's `$apr1$`), per the FreeBSD/Apache algorithm.
pub fn md5_crypt(password: &[u8], salt: &[u8], magic: &str) -> String {
    use md5::{Digest, Md5};
    let salt = &salt[..salt.len().min(8)];
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(magic.as_bytes());
    ctx.update(salt);
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1.min(password.len())]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for r in 0..1000 {
        let mut c = Md5::new();
        if r & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if r % 3 != 0 {
            c.update(salt);
        }
        if r % 7 != 0 {
            c.update(password);
        }
        if r & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize();
    }
    let alphabet = CRYPT_ALPHABET.as_bytes();
    let mut out = String::with_capacity(22);
    let mut to64 = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(alphabet[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let f = |i: usize| u32::from(fin[i]);
    to64((f(0) << 16) | (f(6) << 8) | f(12), 4);
    to64((f(1) << 16) | (f(7) << 8) | f(13), 4);
    to64((f(2) << 16) | (f(8) << 8) | f(14), 4);
    to64((f(3) << 16) | (f(9) << 8) | f(15), 4);
    to64((f(4) << 16) | (f(10) << 8) | f(5), 4);
    to64(f(11), 2);
    format!("{magic}{}${out}", String::from_utf8_lossy(salt))
}

fn md5_crypt_verify(password: &str, hash: &str, magic: &str) -> bool {
    let Some(rest) = hash.strip_prefix(magic) else {
        return false;
    };
    let Some((salt, _)) = rest.split_once('$') else {
        return false;
    };
    let computed = md5_crypt(password.as_bytes(), salt.as_bytes(), magic);
    computed.len() == hash.len() && bool::from(computed.as_bytes().ct_eq(hash.as_bytes()))
}

/// Hash a new password the way `htpasswd -B` does (`$2y$`, bcrypt).
pub fn bcrypt_hash(password: &str, cost: u32) -> Result<String, String> {
    pwhash::bcrypt::hash_with(
        pwhash::bcrypt::BcryptSetup {
            cost: Some(cost),
            variant: Some(pwhash::bcrypt::BcryptVariant::V2y),
            ..Default::default()
        },
        password,
    )
    .map_err(|e| format!("bcrypt: {e}"))
}

/// One problem found while reading an htpasswd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtpasswdWarning {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The users of an htpasswd file: name -> stored hash.
#[derive(Debug, Clone, Default)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl Htpasswd {
    /// Parse htpasswd text. Blank lines and `#` comments are skipped; a malformed line is reported and skipped;
    /// insecure formats are accepted with a warning; a repeated user keeps its first entry (as Apache does).
    pub fn parse(text: &str) -> (Htpasswd, Vec<HtpasswdWarning>) {
        let mut users = HashMap::new();
        let mut warnings = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Ok((user, hash)) => {
                    let kind = HashKind::detect(hash);
                    if kind == HashKind::Unsupported {
                        warnings.push(HtpasswdWarning {
                            line: line_no,
                            message: format!(
                                "user {user:?}: unsupported hash scheme {}; entry skipped",
                                scheme_of(hash)
                            ),
                        });
                        continue;
                    }
                    if kind.insecure() {
                        warnings.push(HtpasswdWarning {
                            line: line_no,
                            message: format!(
                                "user {user:?} uses an insecure {} password; replace it with `berth-proxy user add`",
                                if kind == HashKind::Plain { "plaintext" } else { "DES crypt" }
                            ),
                        });
                    }
                    if users.contains_key(user) {
                        warnings.push(HtpasswdWarning {
                            line: line_no,
                            message: format!(
                                "user {user:?} appears again; the first entry is used"
                            ),
                        });
                    } else {
                        users.insert(user.to_string(), hash.to_string());
                    }
                }
                Err(message) => warnings.push(HtpasswdWarning {
                    line: line_no,
                    message,
                }),
            }
        }
        (Htpasswd { users }, warnings)
    }

    /// The stored hash for `user`.
    pub fn hash_of(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// A hash of a random secret in the slowest scheme and cost found in the file (bcrypt at the highest cost if
    /// there is any bcrypt entry, else SHA-crypt with the most rounds, else MD5-crypt, ...), checked for unknown
    /// users so they take as long as the slowest known ones and timing does not tell which names exist.
    #[allow(deprecated)] // the dummy copies whatever scheme the file uses, weak ones included
    pub fn dummy_hash(&self) -> String {
        let secret = hex::encode(rand::random::<[u8; 16]>());
        let slowest = self
            .users
            .values()
            .filter_map(|h| work_of(h).map(|w| (w, h.as_str())))
            .max_by_key(|(w, _)| *w);
        let salt = |n: usize| -> String {
            let alphabet = CRYPT_ALPHABET.as_bytes();
            (0..n)
                .map(|_| alphabet[rand::random::<usize>() % alphabet.len()] as char)
                .collect()
        };
        let made = match slowest {
            None => bcrypt_hash(&secret, 5).ok(),
            Some(((_, cost, _), hash)) => match HashKind::detect(hash) {
                HashKind::Bcrypt => bcrypt_hash(&secret, cost.clamp(4, 20) as u32).ok(),
                kind @ (HashKind::Sha512Crypt | HashKind::Sha256Crypt) => {
                    let magic = if kind == HashKind::Sha512Crypt {
                        "$6$"
                    } else {
                        "$5$"
                    };
                    let setup = if hash[3..].starts_with("rounds=") {
                        format!("{magic}rounds={cost}${}", salt(16))
                    } else {
                        format!("{magic}{}", salt(16))
                    };
                    if kind == HashKind::Sha512Crypt {
                        pwhash::sha512_crypt::hash_with(setup.as_str(), &secret).ok()
                    } else {
                        pwhash::sha256_crypt::hash_with(setup.as_str(), &secret).ok()
                    }
                }
                HashKind::Apr1 => Some(md5_crypt(secret.as_bytes(), salt(8).as_bytes(), "$apr1$")),
                HashKind::Md5Crypt => Some(md5_crypt(secret.as_bytes(), salt(8).as_bytes(), "$1$")),
                HashKind::Ssha => {
                    let salt = rand::random::<[u8; 8]>();
                    let mut h = sha1::Sha1::new();
                    h.update(secret.as_bytes());
                    h.update(salt);
                    let mut raw = h.finalize().to_vec();
                    raw.extend_from_slice(&salt);
                    Some(format!(
                        "{{SSHA}}{}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    ))
                }
                HashKind::Sha1 => Some(format!(
                    "{{SHA}}{}",
                    base64::engine::general_purpose::STANDARD
                        .encode(sha1::Sha1::digest(secret.as_bytes()))
                )),
                HashKind::DesCrypt => pwhash::unix_crypt::hash(&secret).ok(),
                HashKind::Plain | HashKind::Unsupported => Some(format!("{{PLAIN}}{secret}")),
            },
        };
        made.unwrap_or_else(|| format!("{{PLAIN}}{secret}"))
    }
}

/// How slow checking `hash` is, for ordering: (scheme rank, cost within the scheme, variant). Bcrypt ranks
/// above SHA-crypt (rounds), above MD5-crypt, above salted and plain SHA-1, above DES, above plaintext.
pub(super) fn work_of(hash: &str) -> Option<(u8, u64, u8)> {
    Some(match HashKind::detect(hash) {
        HashKind::Bcrypt => (6, hash.get(4..6)?.parse().ok()?, 0),
        kind @ (HashKind::Sha512Crypt | HashKind::Sha256Crypt) => {
            let rounds = match hash.get(3..)?.strip_prefix("rounds=") {
                Some(rest) => rest.split('$').next()?.parse().ok()?,
                None => u64::from(pwhash::sha512_crypt::DEFAULT_ROUNDS),
            };
            (5, rounds, u8::from(kind == HashKind::Sha512Crypt))
        }
        HashKind::Apr1 => (4, 1000, 1),
        HashKind::Md5Crypt => (4, 1000, 0),
        HashKind::Ssha => (3, 0, 1),
        HashKind::Sha1 => (3, 0, 0),
        HashKind::DesCrypt => (2, 0, 0),
        HashKind::Plain => (1, 0, 0),
        HashKind::Unsupported => return None,
    })
}

/// The scheme prefix of a stored hash, for messages (`$argon2id$`, `{MD5}`), never the hash itself.
fn scheme_of(hash: &str) -> String {
    let end = if hash.starts_with('{') {
        hash.find('}').map(|i| i + 1)
    } else {
        hash[1..].find('$').map(|i| i + 2)
    };
    let prefix = &hash[..end.unwrap_or(1).min(hash.len())];
    prefix.chars().take(24).collect()
}

/// Split one htpasswd line into user and hash.
pub fn parse_line(line: &str) -> Result<(&str, &str), String> {
    let (user, hash) = line
        .split_once(':')
        .ok_or_else(|| "malformed line: expected user:hash".to_string())?;
    if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("malformed line: empty user name or one with spaces".into());
    }
    let hash = hash.trim();
    if hash.is_empty() {
        return Err(format!(
            "malformed line: user {user:?} has no password hash"
        ));
    }
    Ok((user, hash))
}

/// Credentials decoded from an `Authorization: Basic` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

/// Decode an `Authorization` header value of the Basic scheme.
pub fn parse_basic(value: &[u8]) -> Option<BasicCredentials> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    Some(BasicCredentials {
        user: user.to_string(),
        password: password.to_string(),
    })
}
