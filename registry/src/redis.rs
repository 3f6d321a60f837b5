//! A small Redis client for the shared metadata cache: RESP2 over TCP, a few pooled connections, every
//! exchange under a timeout, and a circuit breaker. Redis is a cache here, never a dependency: any failure
//! (refused, slow, an error reply) answers "no answer" and the caller asks the storage instead; after
//! [`TRIP_AFTER`] failures in a row the breaker skips Redis for [`OPEN_FOR`], then lets one request try again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream,
};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Failures in a row that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker skips Redis before one request tries again.
pub const OPEN_FOR: Duration = Duration::from_secs(1);
/// Connections kept idle for reuse.
const MAX_IDLE: usize = 16;
/// Largest reply read (a cached value is at most a small manifest).
const MAX_REPLY: usize = 1 << 20;

/// Where Redis is and how long to wait for it (no `Debug`: it holds the password).
#[derive(Clone)]
pub struct RedisOptions {
    /// `host:port`.
    pub addr: String,
    /// `AUTH` password, when set.
    pub password: Option<String>,
    /// Database number (`SELECT`).
    pub db: u32,
    /// Longest wait for a new connection (and its `AUTH` and `SELECT`).
    pub dial_timeout: Duration,
    /// Longest wait for a lookup.
    pub read_timeout: Duration,
    /// Longest wait for a fill or an invalidation.
    pub write_timeout: Duration,
    /// TLS to Redis, when set: the client configuration (the roots it trusts).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A TLS client configuration trusting the CA certificates in `cafile` (PEM), or the system's roots.
pub fn tls_config(cafile: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    crate::tls::client_config(cafile, cafile.is_none()).map(Arc::new)
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `$-1`.
    Nil,
    /// `+...` or a bulk string.
    Data(Bytes),
    /// `:n`.
    Int(i64),
    /// `-...`.
    Error(String),
}

/// A connection: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Conn = BufStream<Box<dyn Io>>;

/// The client. See the module documentation.
pub struct Redis {
    opts: RedisOptions,
    idle: Mutex<Vec<Conn>>,
    failures: AtomicU32,
    /// Until when (ms since `epoch`) the breaker is open; 0: closed.
    open_until: AtomicU64,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

async fn read_line<R: AsyncBufRead + Unpin>(c: &mut R) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let n = (&mut *c)
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(bad("reply line without CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn number(s: &[u8]) -> std::io::Result<i64> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad number in reply"))
}

/// Reads one reply from the start of `bytes`, and how many bytes it took (for the fuzz target; the client reads
/// from its connection with the same code).
pub async fn parse_reply(bytes: &[u8]) -> std::io::Result<(Reply, usize)> {
    let mut r = tokio::io::BufReader::new(bytes);
    let reply = read_reply(&mut r).await?;
    let left = r.buffer().len() + r.into_inner().len();
    Ok((reply, bytes.len() - left))
}

/// Reads one reply. The commands berth sends (`GET`, `SET`, `AUTH`, `SELECT`) never answer with arrays, so an
/// array is refused like any other malformed reply.
async fn read_reply<R: AsyncBufRead + Unpin>(c: &mut R) -> std::io::Result<Reply> {
    let line = read_line(c).await?;
    let (kind, rest) = line.split_first().ok_or_else(|| bad("empty reply"))?;
    match kind {
        b'+' => Ok(Reply::Data(Bytes::copy_from_slice(rest))),
        b'-' => Ok(Reply::Error(String::from_utf8_lossy(rest).into_owned())),
        b':' => Ok(Reply::Int(number(rest)?)),
        b'$' => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            let n = usize::try_from(n).map_err(|_| bad("bad length"))?;
            if n > MAX_REPLY {
                return Err(bad("reply too large"));
            }
            let mut buf = vec![0; n + 2];
            c.read_exact(&mut buf).await?;
            if !buf.ends_with(b"\r\n") {
                return Err(bad("bulk string without CRLF"));
            }
            buf.truncate(n);
            Ok(Reply::Data(Bytes::from(buf)))
        }
        _ => Err(bad("unknown reply type")),
    }
}

impl Redis {
    /// A client; connects on first use.
    pub fn new(opts: RedisOptions, metrics: Arc<Metrics>) -> Redis {
        metrics.redis_up.set(1);
        Redis {
            opts,
            idle: Mutex::new(Vec::new()),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether the breaker lets a request through now.
    fn allowed(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        // Once the time is over, one request (the one that wins this exchange) tries again.
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now + OPEN_FOR.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            self.metrics.redis_up.set(1);
            tracing::info!(addr = %self.opts.addr, "redis answers again; the shared cache is back in use");
        }
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.metrics.redis_errors.inc();
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= TRIP_AFTER {
            let until = self.now_ms() + OPEN_FOR.as_millis() as u64;
            if self.open_until.swap(until, Ordering::AcqRel) == 0 {
                self.metrics.redis_up.set(0);
                tracing::warn!(
                    addr = %self.opts.addr,
                    error = %e,
                    "redis {what} failed {n} times in a row; the shared cache is skipped (the storage answers) and retried every {OPEN_FOR:?}"
                );
            }
        } else {
            tracing::debug!(addr = %self.opts.addr, error = %e, "redis {what} failed");
        }
    }

    async fn connect(&self) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(&self.opts.addr).await?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.opts.tls {
            None => Box::new(tcp),
            Some(config) => {
                let host = self
                    .opts
                    .addr
                    .rsplit_once(':')
                    .map_or(self.opts.addr.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Box::new(
                    tokio_rustls::TlsConnector::from(Arc::clone(config))
                        .connect(name, tcp)
                        .await?,
                )
            }
        };
        let mut c = BufStream::new(io);
        let mut out = Vec::new();
        let mut expected = 0;
        if let Some(p) = &self.opts.password {
            encode(&mut out, &[b"AUTH", p.as_bytes()]);
            expected += 1;
        }
        if self.opts.db != 0 {
            encode(&mut out, &[b"SELECT", self.opts.db.to_string().as_bytes()]);
            expected += 1;
        }
        if expected > 0 {
            c.write_all(&out).await?;
            c.flush().await?;
            for _ in 0..expected {
                if let Reply::Error(e) = read_reply(&mut c).await? {
                    // The reply names the problem (a wrong password, a database out of range), never the secret.
                    return Err(std::io::Error::other(e));
                }
            }
        }
        Ok(c)
    }

    async fn exchange(&self, c: &mut Conn, out: &[u8], n: usize) -> std::io::Result<Vec<Reply>> {
        c.write_all(out).await?;
        c.flush().await?;
        let mut replies = Vec::with_capacity(n);
        for _ in 0..n {
            replies.push(read_reply(c).await?);
        }
        Ok(replies)
    }

    /// Sends `commands` in one pipeline and returns their replies, or `None` when Redis is skipped or fails
    /// within `timeout` (the failure is counted and may open the breaker).
    pub async fn run(&self, commands: &[Vec<&[u8]>], write: bool) -> Option<Vec<Reply>> {
        if commands.is_empty() || !self.allowed() {
            return None;
        }
        let mut out = Vec::new();
        for c in commands {
            encode(&mut out, c);
        }
        let timeout = if write {
            self.opts.write_timeout
        } else {
            self.opts.read_timeout
        };
        let once = |pooled: Option<Conn>| {
            let out = &out;
            async move {
                let mut c = match pooled {
                    Some(c) => c,
                    None => tokio::time::timeout(self.opts.dial_timeout, self.connect())
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??,
                };
                let replies =
                    tokio::time::timeout(timeout, self.exchange(&mut c, out, commands.len()))
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                Ok::<_, std::io::Error>((c, replies))
            }
        };
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let attempt = async {
            match pooled {
                // A pooled connection Redis (or something in between) closed while it sat idle fails at
                // once: the pool is emptied (its other connections are as old) and a new connection tries.
                Some(c) => match once(Some(c)).await {
                    Err(e) if e.kind() != std::io::ErrorKind::TimedOut => {
                        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                        once(None).await
                    }
                    r => r,
                },
                None => once(None).await,
            }
        };
        match attempt.await {
            Ok((c, replies)) => {
                if let Some(Reply::Error(e)) = replies.iter().find(|r| matches!(r, Reply::Error(_)))
                {
                    self.failed("command", e);
                    return None;
                }
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(c);
                }
                drop(idle);
                self.succeeded();
                Some(replies)
            }
            Err(e) => {
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                self.failed(if write { "write" } else { "lookup" }, &e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_encoded_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b"v\r\n", b"NX"]);
        assert_eq!(
            out,
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\nNX\r\n"
        );
    }

    #[tokio::test]
    async fn replies_of_every_kind_are_read_and_bad_ones_refused() {
        async fn parse(bytes: &[u8]) -> std::io::Result<Reply> {
            read_reply(&mut tokio::io::BufReader::new(bytes)).await
        }
        assert_eq!(
            parse(b"+OK\r\n").await.unwrap(),
            Reply::Data(Bytes::from_static(b"OK"))
        );
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Reply::Nil);
        assert_eq!(
            parse(b"$3\r\na\r\n\r\n").await.unwrap(),
            Reply::Data(Bytes::from_static(b"a\r\n"))
        );
        assert_eq!(parse(b":12\r\n").await.unwrap(), Reply::Int(12));
        assert_eq!(
            parse(b"-ERR wrong\r\n").await.unwrap(),
            Reply::Error("ERR wrong".into())
        );
        for bad in [
            &b"$5\r\nab\r\n"[..],
            b"?x\r\n",
            b"+OK\n",
            b"$99999999\r\n",
            b"*1\r\n:1\r\n",
            b":x\r\n",
            b"",
        ] {
            assert!(
                parse(bad).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
