//! Throttling of password checks: checks in flight and failures per client address, and the back-off per
//! (user name, client address) that stops online guessing without locking a user out everywhere.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::AuthLimits;

/// What is counted per client address.
#[derive(Debug)]
struct ClientState {
    in_flight: usize,
    failures: u32,
    window_start: Instant,
}

/// Checks in flight and recent failures per client address, bounded in size.
#[derive(Debug, Default)]
pub(super) struct Clients {
    map: Mutex<(HashMap<IpAddr, ClientState>, usize)>,
}

/// Most client addresses tracked before stale ones are dropped.
const CLIENTS_PRUNE_AT: usize = 4096;

/// The address a client is counted under: IPv4 as it is, IPv6 by its /64 (one host usually has a whole /64).
pub(super) fn client_key(ip: IpAddr) -> IpAddr {
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
pub(super) struct ClientTicket<'a> {
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
    pub(super) fn enter(
        &self,
        ip: IpAddr,
        limits: &AuthLimits,
    ) -> Result<ClientTicket<'_>, Duration> {
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

    pub(super) fn failed(&self, ip: IpAddr) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.0.get_mut(&client_key(ip)) {
            c.failures = c.failures.saturating_add(1);
        }
    }
}

/// Failures of one user name from one client address.
#[derive(Debug)]
struct PairState {
    failures: u32,
    /// Checks for the pair are refused until then.
    locked_until: Instant,
    /// After this the pair is forgotten (its count starts again).
    forget_at: Instant,
}

/// Most (user name, client address) pairs remembered; past it, expired ones are dropped, and when none is, new
/// pairs are not tracked (the per-address limits still hold), so a flood of names or addresses cannot grow it.
pub const USER_PAIRS_MAX: usize = 65_536;

/// Longest user name kept in a key (longer ones are cut: the name only tells pairs apart).
const USER_KEY_MAX: usize = 256;

/// Exponential back-off per (user name, client address): after `user_failures` failed checks, each further
/// failure locks the pair for `user_backoff`, doubling up to `user_backoff_max`. A locked pair is refused
/// without a hash; a success clears the pair. The name is the one claimed, whether or not it exists, so
/// refusals tell nothing about which names do.
#[derive(Debug)]
pub(super) struct UserThrottle {
    map: Mutex<HashMap<(Box<str>, IpAddr), PairState>>,
    /// When the latest lock of any pair ends, in nanoseconds after `epoch`: once it has passed no pair is
    /// locked, and a request costs one load however many pairs are remembered.
    locks_end: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

impl Default for UserThrottle {
    fn default() -> Self {
        UserThrottle {
            map: Mutex::default(),
            locks_end: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

fn user_key(user: &str, ip: IpAddr) -> (Box<str>, IpAddr) {
    (super::cut_name(user, USER_KEY_MAX).into(), client_key(ip))
}

impl UserThrottle {
    fn since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether some pair may be locked now.
    pub(super) fn any_locked(&self) -> bool {
        self.since_epoch(Instant::now()) < self.locks_end.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long the pair is still locked, if it is.
    pub(super) fn locked(&self, user: &str, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let left = map
            .get(&user_key(user, ip))?
            .locked_until
            .checked_duration_since(now)?;
        (!left.is_zero()).then_some(left)
    }

    /// Counts a failed check of `user` from `ip`.
    pub(super) fn failed(&self, user: &str, ip: IpAddr, limits: &AuthLimits) {
        let now = Instant::now();
        let key = user_key(user, ip);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&key) && map.len() >= USER_PAIRS_MAX {
            map.retain(|_, p| p.forget_at > now);
            if map.len() >= USER_PAIRS_MAX {
                // Full of live pairs (a flood of names or addresses): the one with the fewest failures makes
                // room, so a pair that is being guessed hard stays locked.
                if let Some(k) = map
                    .iter()
                    .min_by_key(|(_, p)| (p.failures, p.forget_at))
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&k);
                }
            }
        }
        let p = map.entry(key).or_insert(PairState {
            failures: 0,
            locked_until: now,
            forget_at: now,
        });
        if p.forget_at <= now {
            p.failures = 0;
        }
        p.failures = p.failures.saturating_add(1);
        let lock = match p.failures.checked_sub(limits.user_failures) {
            None => Duration::ZERO,
            Some(over) => limits
                .user_backoff
                .saturating_mul(1u32.checked_shl(over.min(31)).unwrap_or(u32::MAX))
                .min(limits.user_backoff_max),
        };
        p.locked_until = now + lock;
        // Remembered for as long as the longest lock after this one, so a slow guesser keeps climbing.
        p.forget_at = p.locked_until + limits.user_backoff_max.max(limits.failure_window);
        let end = self.since_epoch(p.locked_until);
        self.locks_end
            .fetch_max(end, std::sync::atomic::Ordering::Relaxed);
    }

    /// A successful check of `user` from `ip` clears the pair.
    pub(super) fn succeeded(&self, user: &str, ip: IpAddr) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if !map.is_empty() {
            map.remove(&user_key(user, ip));
        }
    }

    /// Pairs remembered (for tests of the bound).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AuthLimits {
        AuthLimits {
            user_failures: 3,
            user_backoff: Duration::from_secs(10),
            user_backoff_max: Duration::from_secs(60),
            ..AuthLimits::default()
        }
    }

    #[test]
    fn pairs_back_off_exponentially_and_only_for_their_address() {
        let t = UserThrottle::default();
        let l = limits();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..2 {
            t.failed("alice", a, &l);
            assert_eq!(t.locked("alice", a), None, "two mistakes cost nothing");
        }
        t.failed("alice", a, &l);
        let first = t.locked("alice", a).unwrap();
        assert!(first > Duration::from_secs(9) && first <= Duration::from_secs(10));
        t.failed("alice", a, &l);
        assert!(t.locked("alice", a).unwrap() > Duration::from_secs(19));
        for _ in 0..10 {
            t.failed("alice", a, &l);
        }
        assert!(
            t.locked("alice", a).unwrap() <= Duration::from_secs(60),
            "capped"
        );
        assert_eq!(t.locked("alice", b), None, "another address is not locked");
        assert_eq!(t.locked("bob", a), None, "another name is not locked");
        t.succeeded("alice", a);
        assert_eq!(t.locked("alice", a), None);
    }

    #[test]
    fn ipv6_pairs_are_counted_per_64_and_names_are_cut() {
        let t = UserThrottle::default();
        let l = limits();
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::2".parse().unwrap();
        let long = "n".repeat(10_000);
        for _ in 0..3 {
            t.failed(&long, x, &l);
        }
        assert!(t.locked(&long, y).is_some());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_map_is_bounded_and_a_flood_does_not_unlock_a_guessed_pair() {
        let t = UserThrottle::default();
        let l = limits();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..4 {
            t.failed("victim", ip, &l);
        }
        assert!(t.locked("victim", ip).is_some());
        for i in 0..USER_PAIRS_MAX + 100 {
            t.failed(&format!("u{i}"), ip, &l);
        }
        assert_eq!(t.len(), USER_PAIRS_MAX);
        assert!(
            t.locked("victim", ip).is_some(),
            "the guessed pair was evicted"
        );
        t.failed("victim", ip, &l);
        assert!(
            t.locked("victim", ip).unwrap() > Duration::from_secs(19),
            "its count went on"
        );
    }
}
