//! Logging: the tracing subscriber and the access log line written once per request (never a password).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::forward::Counter;

/// Install the global tracing subscriber with `filter` (tracing-subscriber `EnvFilter` syntax).
pub fn init(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// What the access log records about one request.
#[derive(Debug)]
pub struct AccessRecord {
    /// The TCP peer.
    pub client: SocketAddr,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// Request method.
    pub method: http::Method,
    /// Request path (without the query string, which may carry upload state).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Request body bytes received.
    pub bytes_in: Counter,
    /// Response body bytes sent.
    pub bytes_out: Counter,
    /// When the request arrived.
    pub start: Instant,
    /// The client's `User-Agent`.
    pub user_agent: String,
}

impl AccessRecord {
    /// Write the access log line (target `berth_proxy::access`).
    pub fn emit(&self) {
        tracing::info!(
            target: "berth_proxy::access",
            client = %self.client,
            user = self.user.as_deref().unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out.load(Ordering::Relaxed),
            duration_ms = self.start.elapsed().as_millis() as u64,
            user_agent = %self.user_agent,
            "request"
        );
    }
}
