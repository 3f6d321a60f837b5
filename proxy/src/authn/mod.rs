//! Authentication ("who are you"): the htpasswd file and its watcher, the password check with its bounds
//! (verification slots, per-client and per-user throttling, equal time for every failure), and the
//! verified-credential cache. What an authenticated user may do is [`crate::authz`]'s business.

mod cache;
mod htpasswd;
mod throttle;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::watch::{stamp, FileStamp};
pub use cache::CredentialCache;
pub use htpasswd::*;
pub use throttle::USER_PAIRS_MAX;
use throttle::{client_key, Clients, UserThrottle};
use token::Tokens;

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
    /// Failed checks of one user name from one client address before that pair backs off.
    pub user_failures: u32,
    /// The first back-off of a pair; each further failure doubles it.
    pub user_backoff: Duration,
    /// The longest back-off of a pair.
    pub user_backoff_max: Duration,
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
            user_failures: 5,
            user_backoff: Duration::from_secs(2),
            user_backoff_max: Duration::from_secs(900),
        }
    }
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
    users_throttle: UserThrottle,
    /// Bearer tokens accepted in place of Basic credentials (see [`token`]).
    tokens: Option<Tokens>,
    /// Checks in flight, by header fingerprint and client address: the same header arriving again meanwhile
    /// (a client's parallel requests, or a flood of one bad header) waits for that check's answer instead of
    /// starting another. Each check runs as a task of its own, so a request that goes away cannot cut short
    /// its bookkeeping (failures counted, negative cache, padding); the task removes its entry when done.
    checks: Mutex<HashMap<CheckKey, (u64, CheckAnswer)>>,
    next_check: std::sync::atomic::AtomicU64,
    /// Recent duration of checks at the file's slowest cost (an average), in nanoseconds: failures of cheaper
    /// hashes are padded to at least this, so that on a busy machine they still take as long as the slow ones.
    slow_check_ns: std::sync::atomic::AtomicU64,
    /// Counts credentials answered from the verified-credential cache (a metric).
    cache_hits: Option<prometheus::IntCounter>,
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

/// `name` cut to at most `max` bytes at a character boundary (a claimed user name can be any length).
pub fn cut_name(name: &str, max: usize) -> &str {
    let mut end = name.len().min(max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(header: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
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
            user_failures: u32::MAX,
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
            users_throttle: UserThrottle::default(),
            tokens: None,
            checks: Mutex::new(HashMap::new()),
            next_check: std::sync::atomic::AtomicU64::new(0),
            slow_check_ns: std::sync::atomic::AtomicU64::new(0),
            cache_hits: None,
        }
    }

    /// Counts cache hits on `counter`.
    pub fn with_cache_hits(mut self, counter: prometheus::IntCounter) -> Self {
        self.cache_hits = Some(counter);
        self
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
        crate::watch::spawn_poller(interval, move || {
            me.reload_if_changed();
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
        if let Some(token) = bearer(header) {
            return match self.tokens.as_ref().and_then(|t| t.verify(token)) {
                // A user removed from the htpasswd file loses their tokens at once.
                Some(Some(user)) if self.user_exists(&user) => Ok(user),
                // An anonymous token is no credentials.
                Some(None) => Err(AuthFailure::Missing),
                _ => Err(AuthFailure::Rejected),
            };
        }
        // A pair that failed too often is refused before anything else, even a header verified before: a
        // guess that hit the cache would otherwise tell the guesser it was right.
        if self.users_throttle.any_locked() {
            if let Some(wait) = parse_basic(header)
                .and_then(|creds| self.users_throttle.locked(&creds.user, client))
            {
                return Err(AuthFailure::Throttled(wait.max(Duration::from_secs(1))));
            }
        }
        if let Some(user) = self.cache.lookup(header) {
            if let Some(c) = &self.cache_hits {
                c.inc();
            }
            return Ok(user);
        }
        let creds = parse_basic(header).ok_or(AuthFailure::Malformed)?;
        if self.rejected.lookup(header).is_some() {
            return Err(AuthFailure::Rejected);
        }
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

    /// Accept (and issue) bearer tokens signed with these.
    pub fn with_tokens(mut self, tokens: Tokens) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// The token issuer, when tokens are on.
    pub fn tokens(&self) -> Option<&Tokens> {
        self.tokens.as_ref()
    }

    /// A fingerprint of `user`'s line in the htpasswd file (`None`: no such user): web interface sessions are
    /// bound to it, so a changed password or a removed user ends them.
    pub fn user_fingerprint(&self, user: &str) -> Option<[u8; 32]> {
        use sha2::Digest as _;
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let hash = users.htpasswd.hash_of(user)?;
        Some(sha2::Sha256::digest(hash.as_bytes()).into())
    }

    fn user_exists(&self, user: &str) -> bool {
        self.users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .htpasswd
            .hash_of(user)
            .is_some()
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
        // Checks of one pair that arrived together all passed the lock test on arrival: the first failures
        // among them lock the pair for the rest.
        if let Some(wait) = self.users_throttle.locked(&creds.user, client) {
            return Err(AuthFailure::Throttled(wait.max(Duration::from_secs(1))));
        }
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
            self.users_throttle.succeeded(&user, client);
            Ok(user)
        } else {
            self.clients.failed(client);
            self.users_throttle.failed(&user, client, &self.limits);
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
