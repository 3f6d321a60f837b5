//! Authentication: htpasswd parsing, password hash verification, the verified-credential cache and the
//! htpasswd watcher that reloads the file when it changes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Digest as _;
use sha2::Sha256;
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
fn work_of(hash: &str) -> Option<(u8, u64, u8)> {
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

    fn fingerprint(&self, header: &[u8]) -> [u8; 32] {
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

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// Not a decodable Basic header.
    Malformed,
    /// Unknown user or wrong password.
    Rejected,
    /// This client has too many checks in flight, or failed too often lately: try again after this long.
    Throttled(Duration),
    /// Every verification slot stayed taken for the longest wait: try again shortly.
    Busy,
}

/// Bounds on password checks, so that no client can make the others wait.
#[derive(Debug, Clone)]
pub struct AuthLimits {
    /// Password hashes checked at once, all clients together (each holds a blocking thread and a core).
    pub verify_limit: usize,
    /// Longest wait for one of those slots; past it the check fails with [`AuthFailure::Busy`].
    pub verify_wait: Duration,
    /// Checks in flight at once from one client address (IPv6: one /64), waiting and padding included.
    pub per_client: usize,
    /// Failed checks allowed from one client address per `failure_window`; further ones are throttled until
    /// the window ends.
    pub client_failures: u32,
    /// The window those failures are counted in.
    pub failure_window: Duration,
    /// How long a rejected `Authorization` header is remembered (answered 401 again without a hash).
    pub negative_ttl: Duration,
}

impl Default for AuthLimits {
    fn default() -> Self {
        let verify_limit = default_verify_limit();
        AuthLimits {
            verify_limit,
            verify_wait: Duration::from_secs(2),
            per_client: (verify_limit / 2).max(2),
            client_failures: 30,
            failure_window: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
        }
    }
}

/// What is counted per client address.
#[derive(Debug)]
struct ClientState {
    in_flight: usize,
    failures: u32,
    window_start: Instant,
}

/// Checks in flight and recent failures per client address, bounded in size.
#[derive(Debug, Default)]
struct Clients {
    map: Mutex<(HashMap<IpAddr, ClientState>, usize)>,
}

/// Most client addresses tracked before stale ones are dropped.
const CLIENTS_PRUNE_AT: usize = 4096;

/// The address a client is counted under: IPv4 as it is, IPv6 by its /64 (one host usually has a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One check in flight for a client; counted until dropped.
struct ClientTicket<'a> {
    clients: &'a Clients,
    key: IpAddr,
}

impl Drop for ClientTicket<'_> {
    fn drop(&mut self) {
        let mut map = self.clients.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.0.get_mut(&self.key) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }
}

impl Clients {
    /// Start a check for `ip`, or say how long it must wait.
    fn enter(&self, ip: IpAddr, limits: &AuthLimits) -> Result<ClientTicket<'_>, Duration> {
        let key = client_key(ip);
        let now = Instant::now();
        let mut guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (map, prune_at) = &mut *guard;
        if map.len() >= (*prune_at).max(CLIENTS_PRUNE_AT) {
            map.retain(|_, c| {
                c.in_flight > 0 || now.duration_since(c.window_start) < limits.failure_window
            });
            *prune_at = map.len().saturating_mul(2);
        }
        let c = map.entry(key).or_insert(ClientState {
            in_flight: 0,
            failures: 0,
            window_start: now,
        });
        if now.duration_since(c.window_start) >= limits.failure_window {
            c.failures = 0;
            c.window_start = now;
        }
        if c.failures >= limits.client_failures {
            let left = limits
                .failure_window
                .saturating_sub(now.duration_since(c.window_start));
            return Err(left.max(Duration::from_secs(1)));
        }
        if c.in_flight >= limits.per_client {
            return Err(Duration::from_secs(1));
        }
        c.in_flight += 1;
        Ok(ClientTicket { clients: self, key })
    }

    fn failed(&self, ip: IpAddr) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.0.get_mut(&client_key(ip)) {
            c.failures = c.failures.saturating_add(1);
        }
    }
}

/// Identity of the htpasswd file on disk, to notice changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

struct Users {
    htpasswd: Htpasswd,
    /// A hash in the slowest scheme and cost of the file, checked for unknown names.
    dummy_hash: String,
    /// That scheme and cost, as [`work_of`] ranks it.
    slowest: Option<(u8, u64, u8)>,
    /// How long checking a password against the slowest hash in the file takes (measured at load): every
    /// failed check takes at least this long, so timing does not tell which names exist.
    failure_time: Duration,
}

/// Checks credentials against the htpasswd file, through the [`CredentialCache`], reloading the file when it
/// changes.
pub struct Authenticator {
    path: PathBuf,
    users: RwLock<Arc<Users>>,
    stamp: Mutex<Option<FileStamp>>,
    generation: std::sync::atomic::AtomicU64,
    cache: CredentialCache,
    /// Rejected headers, remembered for a short while (the value is unused).
    rejected: CredentialCache,
    /// At most this many password hashes are checked at once (each holds a blocking thread and a core), so a
    /// burst of wrong passwords cannot take every blocking thread; reloads of the file do not go through it.
    verify_gate: Arc<tokio::sync::Semaphore>,
    limits: AuthLimits,
    clients: Clients,
    /// Checks in flight, by header fingerprint and client address: the same header arriving again meanwhile
    /// (a client's parallel requests, or a flood of one bad header) waits for that check's answer instead of
    /// starting another. Each check runs as a task of its own, so a request that goes away cannot cut short
    /// its bookkeeping (failures counted, negative cache, padding); the task removes its entry when done.
    checks: Mutex<HashMap<CheckKey, (u64, CheckAnswer)>>,
    next_check: std::sync::atomic::AtomicU64,
    /// Recent duration of checks at the file's slowest cost (an average), in nanoseconds: failures of cheaper
    /// hashes are padded to at least this, so that on a busy machine they still take as long as the slow ones.
    slow_check_ns: std::sync::atomic::AtomicU64,
}

type CheckKey = ([u8; 32], IpAddr);
type CheckAnswer = tokio::sync::watch::Receiver<Option<Result<String, AuthFailure>>>;

/// Removes a finished (or panicked) check's entry, if it is still the one it made.
struct CheckEntry<'a> {
    checks: &'a Mutex<HashMap<CheckKey, (u64, CheckAnswer)>>,
    key: CheckKey,
    id: u64,
}

impl Drop for CheckEntry<'_> {
    fn drop(&mut self) {
        let mut map = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

/// How many password verifications may run at once by default: twice the cores, at least 2.
pub fn default_verify_limit() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_mul(2))
        .unwrap_or(2)
        .max(2)
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("path", &self.path)
            .finish()
    }
}

fn load_users(path: &Path) -> Users {
    let htpasswd = match std::fs::read_to_string(path) {
        Ok(text) => {
            let (h, warnings) = Htpasswd::parse(&text);
            for w in warnings {
                tracing::warn!("{}:{}: {}", path.display(), w.line, w.message);
            }
            tracing::info!(users = h.len(), "loaded {}", path.display());
            h
        }
        Err(e) => {
            tracing::warn!(
                "cannot read htpasswd file {}: {e}; every request needing credentials is refused until it exists \
                 (create users with `berth-proxy user add NAME`)",
                path.display()
            );
            Htpasswd::default()
        }
    };
    // The fastest of three checks of a dummy in the slowest scheme and cost present (the machine's best time,
    // not a moment it was busy).
    let dummy_hash = htpasswd.dummy_hash();
    let failure_time = (0..3)
        .map(|_| {
            let t = Instant::now();
            let _ = verify_hash(&dummy_hash, "not the secret");
            t.elapsed()
        })
        .min()
        .unwrap_or_default();
    let slowest = work_of(&dummy_hash);
    Users {
        htpasswd,
        dummy_hash,
        slowest,
        failure_time,
    }
}

impl Authenticator {
    /// Load `path` now (a missing file means no users, with a warning).
    pub fn new(path: PathBuf, cache_ttl: Duration, cache_size: usize) -> Self {
        Self::with_verify_limit(path, cache_ttl, cache_size, default_verify_limit())
    }

    /// [`Authenticator::new`] with at most `verify_limit` (at least 1) password checks running at once, each
    /// waiting for a slot as long as needed.
    pub fn with_verify_limit(
        path: PathBuf,
        cache_ttl: Duration,
        cache_size: usize,
        verify_limit: usize,
    ) -> Self {
        let limits = AuthLimits {
            verify_limit,
            verify_wait: Duration::from_secs(3600),
            per_client: usize::MAX,
            ..AuthLimits::default()
        };
        Self::with_limits(path, cache_ttl, cache_size, limits)
    }

    /// [`Authenticator::new`] with the given bounds on password checks.
    pub fn with_limits(
        path: PathBuf,
        cache_ttl: Duration,
        cache_size: usize,
        limits: AuthLimits,
    ) -> Self {
        let st = stamp(&path);
        let users = load_users(&path);
        Authenticator {
            path,
            users: RwLock::new(Arc::new(users)),
            stamp: Mutex::new(st),
            generation: std::sync::atomic::AtomicU64::new(0),
            cache: CredentialCache::new(cache_ttl, cache_size),
            rejected: CredentialCache::new(limits.negative_ttl, cache_size),
            verify_gate: Arc::new(tokio::sync::Semaphore::new(limits.verify_limit.max(1))),
            limits,
            clients: Clients::default(),
            checks: Mutex::new(HashMap::new()),
            next_check: std::sync::atomic::AtomicU64::new(0),
            slow_check_ns: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Reload the file if its mtime, size or inode changed; clears the credential cache when it did.
    /// Returns whether a reload happened. Blocking (reads the file, hashes the dummy): use a blocking thread.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.path);
        {
            let current = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *current == now {
                return false;
            }
        }
        let users = load_users(&self.path);
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = now;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache.clear();
        self.rejected.clear();
        self.slow_check_ns
            .store(0, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "htpasswd file {} changed: reloaded, credential cache cleared",
            self.path.display()
        );
        true
    }

    /// Poll the file every `interval` until the returned task is dropped/aborted.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let m = Arc::clone(&me);
                let _ = tokio::task::spawn_blocking(move || m.reload_if_changed()).await;
            }
        })
    }

    /// The verified-credential cache.
    pub fn cache(&self) -> &CredentialCache {
        &self.cache
    }

    /// Authenticate an `Authorization` header value from an unknown client address; returns the user name.
    pub async fn authenticate(
        self: &Arc<Self>,
        header: Option<&[u8]>,
    ) -> Result<String, AuthFailure> {
        self.authenticate_from(header, IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
            .await
    }

    /// Authenticate an `Authorization` header value sent by `client`; returns the user name.
    ///
    /// A header verified recently is answered from the cache, one rejected recently is rejected again without
    /// a hash. Otherwise the check is bounded: a client with too many checks in flight or too many recent
    /// failures is throttled at once, a check waits at most `verify_wait` for a verification slot, and a
    /// failed check takes at least as long as a check against the slowest hash in the file.
    pub async fn authenticate_from(
        self: &Arc<Self>,
        header: Option<&[u8]>,
        client: IpAddr,
    ) -> Result<String, AuthFailure> {
        let header = header.ok_or(AuthFailure::Missing)?;
        if let Some(user) = self.cache.lookup(header) {
            return Ok(user);
        }
        if self.rejected.lookup(header).is_some() {
            return Err(AuthFailure::Rejected);
        }
        let creds = parse_basic(header).ok_or(AuthFailure::Malformed)?;
        let key = (self.cache.fingerprint(header), client_key(client));
        let mut answer = {
            let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
            match checks.get(&key) {
                Some((_, answer)) => answer.clone(),
                None => {
                    let (tx, answer) = tokio::sync::watch::channel(None);
                    let id = self
                        .next_check
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    checks.insert(key, (id, answer.clone()));
                    let me = Arc::clone(self);
                    let header = header.to_vec();
                    tokio::spawn(async move {
                        let _entry = CheckEntry {
                            checks: &me.checks,
                            key,
                            id,
                        };
                        let result = me.check(&header, creds, client).await;
                        let _ = tx.send(Some(result));
                    });
                    answer
                }
            }
        };
        let result = match answer.wait_for(Option::is_some).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        result.unwrap_or(Err(AuthFailure::Busy))
    }

    /// Checks in flight (for tests: entries never outlive their check).
    pub fn checks_in_flight(&self) -> usize {
        self.checks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn slow_check(&self) -> Duration {
        Duration::from_nanos(
            self.slow_check_ns
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Folds a check at the slowest cost into the running average (weight 1/8).
    fn note_slow_check(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = self.slow_check_ns.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |avg| {
                Some(if avg == 0 {
                    took
                } else {
                    avg - avg / 8 + took / 8
                })
            },
        );
    }

    async fn check(
        &self,
        header: &[u8],
        creds: BasicCredentials,
        client: IpAddr,
    ) -> Result<String, AuthFailure> {
        let _ticket = self
            .clients
            .enter(client, &self.limits)
            .map_err(AuthFailure::Throttled)?;
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let users = Arc::clone(&self.users.read().unwrap_or_else(|e| e.into_inner()));
        let user = creds.user.clone();
        // Wait (bounded) for a slot before taking a blocking thread; the permit is released when the check is
        // done, before any padding.
        let permit = match tokio::time::timeout(
            self.limits.verify_wait,
            Arc::clone(&self.verify_gate).acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(AuthFailure::Rejected),
            Err(_) => return Err(AuthFailure::Busy),
        };
        let started = tokio::time::Instant::now();
        let checked = Arc::clone(&users);
        let (ok, at_slowest) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match checked.htpasswd.hash_of(&creds.user) {
                Some(hash) => (
                    verify_hash(hash, &creds.password),
                    work_of(hash) == checked.slowest,
                ),
                None => {
                    // Same work as for the slowest real user, so timing (and its slowing under load) does
                    // not tell which names exist.
                    let _ = verify_hash(&checked.dummy_hash, &creds.password);
                    (false, true)
                }
            }
        })
        .await
        .unwrap_or((false, false));
        if at_slowest {
            self.note_slow_check(started.elapsed());
        }
        if ok {
            // A verification that raced with a reload is not remembered: the new file decides next time.
            if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
                self.cache.insert(header, &user);
            }
            Ok(user)
        } else {
            self.clients.failed(client);
            if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
                self.rejected.insert(header, "");
            }
            // Every failure takes at least the time of the slowest hash in the file (as measured at load, or
            // lately if the machine is busier), whatever the name's own hash: cheaper checks sleep the
            // difference, which costs no CPU.
            let pad = users.failure_time.max(self.slow_check());
            tokio::time::sleep_until(started + pad).await;
            Err(AuthFailure::Rejected)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_lines() {
        let text = "# comment\n\nalice:$2y$05$abc\nbroken line\n:nohash\nbob:\ncarol:{SHA}x\nalice:$apr1$dup\ndave:secret\n";
        let (h, w) = Htpasswd::parse(text);
        assert_eq!(h.len(), 3);
        assert_eq!(h.hash_of("alice"), Some("$2y$05$abc"));
        let lines: Vec<usize> = w.iter().map(|w| w.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 8, 9]);
    }

    #[test]
    fn unknown_schemes_are_skipped_not_taken_for_plaintext() {
        let text = "argon:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA\n\
                    md5:{MD5}X03MO1qnZdYdgyfeuILPmQ==\n\
                    twox:$2x$10$abcdefghijklmnopqrstuu\n\
                    dollar:$\n\
                    plain:{PLAIN}pw\n\
                    bare:hunter2\n";
        let (h, w) = Htpasswd::parse(text);
        for skipped in ["argon", "md5", "twox", "dollar"] {
            assert_eq!(h.hash_of(skipped), None, "{skipped}");
        }
        assert_eq!(h.hash_of("plain"), Some("{PLAIN}pw"));
        assert_eq!(h.hash_of("bare"), Some("hunter2"));
        let unsupported: Vec<(usize, &str)> = w
            .iter()
            .filter(|w| w.message.contains("unsupported hash scheme"))
            .map(|w| (w.line, w.message.as_str()))
            .collect();
        assert_eq!(
            unsupported.iter().map(|u| u.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4],
            "{w:?}"
        );
        assert!(unsupported[0].1.contains("$argon2id$"), "{unsupported:?}");
        assert!(unsupported[1].1.contains("{MD5}"), "{unsupported:?}");
        assert!(
            !unsupported[0].1.contains("aGFzaA"),
            "the hash is never shown"
        );
        // The stored value typed as the password must not work.
        let argon = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA";
        assert_eq!(HashKind::detect(argon), HashKind::Unsupported);
        assert!(!verify_hash(argon, argon));
        assert!(!verify_hash("{MD5}abc", "{MD5}abc"));
    }

    #[test]
    #[allow(deprecated)]
    fn dummy_hash_is_in_the_slowest_scheme_present() {
        let secret = "x";
        let b4 = bcrypt_hash(secret, 4).unwrap();
        let b6 = bcrypt_hash(secret, 6).unwrap();
        let sha = pwhash::sha512_crypt::hash_with("$6$rounds=20000$saltsaltsalt", secret).unwrap();
        let sha256 = pwhash::sha256_crypt::hash_with("$5$saltsalt", secret).unwrap();
        let apr = md5_crypt(b"x", b"saltsalt", "$apr1$");
        let dummy = |lines: &[(&str, &str)]| {
            let text: String = lines.iter().map(|(u, h)| format!("{u}:{h}\n")).collect();
            Htpasswd::parse(&text).0.dummy_hash()
        };
        // bcrypt at the highest cost wins over everything else.
        let d = dummy(&[("a", &b4), ("b", &b6), ("c", &sha), ("d", &apr)]);
        assert!(d.starts_with("$2y$06$"), "{d}");
        // No bcrypt: SHA-crypt with the most rounds.
        let d = dummy(&[("c", &sha), ("e", &sha256), ("d", &apr)]);
        assert!(d.starts_with("$6$rounds=20000$"), "{d}");
        assert!(!verify_hash(&d, ""));
        let d = dummy(&[("e", &sha256), ("d", &apr)]);
        assert!(d.starts_with("$5$") && !d.contains("rounds="), "{d}");
        let d = dummy(&[("d", &apr), ("f", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=")]);
        assert!(d.starts_with("$apr1$"), "{d}");
        let d = dummy(&[("f", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="), ("g", "plain")]);
        assert!(d.starts_with("{SHA}"), "{d}");
        assert!(dummy(&[]).starts_with("$2y$05$"));
        // Every dummy is a valid hash of its kind that no password matches.
        for d in [
            dummy(&[("d", &apr)]),
            dummy(&[("c", &sha)]),
            dummy(&[("g", "plain")]),
        ] {
            assert_ne!(HashKind::detect(&d), HashKind::Unsupported);
            assert!(!verify_hash(&d, "plain") && !verify_hash(&d, "x"));
        }
    }

    #[test]
    fn hash_kinds() {
        assert_eq!(HashKind::detect("$2b$10$x"), HashKind::Bcrypt);
        assert_eq!(HashKind::detect("$apr1$x$y"), HashKind::Apr1);
        assert_eq!(HashKind::detect("$6$x$y"), HashKind::Sha512Crypt);
        assert_eq!(HashKind::detect("{SSHA}x"), HashKind::Ssha);
        assert_eq!(HashKind::detect("abJnggxhB/yWI"), HashKind::DesCrypt);
        assert_eq!(HashKind::detect("{PLAIN}pw"), HashKind::Plain);
        assert_eq!(HashKind::detect("hunter2"), HashKind::Plain);
    }

    #[test]
    #[allow(deprecated)]
    fn known_vectors() {
        // Apache documentation vector for apr1 ("myPassword").
        assert!(verify_hash(
            "$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/",
            "myPassword"
        ));
        assert!(!verify_hash(
            "$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/",
            "mypassword"
        ));
        // {SHA} of "password".
        assert!(verify_hash("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "password"));
        assert!(verify_hash("{PLAIN}pw", "pw"));
        assert!(!verify_hash("{PLAIN}pw", "pw2"));
        let md5 = pwhash::md5_crypt::hash_with("$1$saltsalt", "pw").unwrap();
        assert_eq!(md5_crypt(b"pw", b"saltsalt", "$1$"), md5);
        assert!(verify_hash(&md5, "pw"));
        let b = bcrypt_hash("pw", 4).unwrap();
        assert!(b.starts_with("$2y$04$"));
        assert!(verify_hash(&b, "pw"));
        assert!(!verify_hash(&b, "px"));
        assert!(!verify_hash("{SSHA}!!", "pw"));
    }

    #[test]
    fn basic_credentials() {
        let c = parse_basic(b"Basic YWxpY2U6cDphc3M=").unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.password, "p:ass");
        assert!(parse_basic(b"basic YWxpY2U6").is_some());
        assert!(parse_basic(b"Bearer abc").is_none());
        assert!(parse_basic(b"Basic !!!").is_none());
        assert!(parse_basic(b"Basic bm9jb2xvbg==").is_none()); // "nocolon"
        assert!(parse_basic(b"Basic OnB3").is_none()); // ":pw"
        assert!(parse_basic(&[0xff, 0xfe]).is_none());
    }

    #[tokio::test]
    async fn verification_is_gated_and_reload_is_not() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt_hash("pw", 4).unwrap();
        std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
        let auth = Arc::new(Authenticator::with_verify_limit(
            path.clone(),
            Duration::from_secs(60),
            100,
            1,
        ));
        // Every slot taken (as by a burst of slow checks): a new check waits for one.
        let held = Arc::clone(&auth.verify_gate).acquire_owned().await.unwrap();
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pw")
        );
        let a = Arc::clone(&auth);
        let h = header.clone();
        let queued = tokio::spawn(async move { a.authenticate(Some(h.as_bytes())).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!queued.is_finished(), "the check waits for the gate");
        // The file watcher's reload does not wait behind it.
        std::fs::write(&path, format!("alice:{hash}\nbob:{hash}\n")).unwrap();
        let a = Arc::clone(&auth);
        let reloaded = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || a.reload_if_changed()),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(reloaded);
        drop(held);
        assert_eq!(queued.await.unwrap(), Ok("alice".to_string()));
        assert_eq!(auth.verify_gate.available_permits(), 1);
        assert!(default_verify_limit() >= 2);
    }

    #[test]
    fn cache_is_keyed_and_bounded() {
        let c = CredentialCache::new(Duration::from_secs(60), 2);
        c.insert(b"Basic a", "a");
        c.insert(b"Basic b", "b");
        assert_eq!(c.lookup(b"Basic a").as_deref(), Some("a"));
        c.insert(b"Basic c", "c");
        assert!(c.len() <= 2);
        assert_eq!(c.lookup(b"Basic c").as_deref(), Some("c"));
        c.clear();
        assert!(c.is_empty());
        let expired = CredentialCache::new(Duration::from_millis(0), 2);
        expired.insert(b"Basic a", "a");
        assert_eq!(expired.lookup(b"Basic a"), None);
    }
}
