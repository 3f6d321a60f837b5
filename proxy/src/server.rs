//! The server: accept loop, TLS handshake (with a timeout and a short answer to plain HTTP), HTTP/1.1 and
//! HTTP/2 on the same port, the per-request stages, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::audit::{AuditEvent, AuditLog};
use crate::authn::token::Tokens;
use crate::authn::{AuthFailure, AuthLimits, Authenticator};
use crate::authz::{Access, Authorizer, Decision, Grant};
use crate::config::{parse_trusted, parse_upstream, Config};
use crate::error::{json_response, ProxyError};
use crate::filter::UserAgentFilter;
use crate::forward::{
    classify, client_host, rewrite_request_headers, strip_hop_by_hop, BoxError, ClientContext,
    ProxyBody, RelayBody, Route, API_VERSION, API_VERSION_HEADER,
};
use crate::log::AccessRecord;
use crate::metrics::Metrics;
use crate::readahead::ReadAhead;
use crate::tls::{server_config, server_paths, ReloadableCert, TlsError};
use crate::upstream::Upstreams;
use berth_net::{discard_body, LingerBounds, Lingering};

/// Why the server could not be built.
#[derive(Debug)]
pub enum ServerError {
    /// The configuration is invalid.
    Config(crate::config::ConfigError),
    /// The certificate or key could not be loaded.
    Tls(TlsError),
    /// A socket problem.
    Io(std::io::Error),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Config(e) => write!(f, "invalid configuration:\n{e}"),
            ServerError::Tls(e) => write!(f, "TLS: {e}"),
            ServerError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// Everything a request handler needs, shared by all connections.
pub struct ProxyState {
    config: Config,
    auth: Arc<Authenticator>,
    authz: Arc<Authorizer>,
    audit: AuditLog,
    filter: UserAgentFilter,
    upstreams: Upstreams,
    trusted: Vec<ipnet::IpNet>,
    metrics: Arc<Metrics>,
    ui: Option<crate::ui::Ui>,
}

impl ProxyState {
    /// Build from a configuration (validated here).
    pub fn new(config: Config) -> Result<Self, ServerError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ServerError::Config(crate::config::ConfigError(problems)));
        }
        let bad = |m: String| {
            ServerError::Config(crate::config::ConfigError(vec![
                crate::config::ConfigProblem {
                    key: "config".into(),
                    message: m,
                },
            ]))
        };
        let filter = UserAgentFilter::new(&config.user_agent_deny).map_err(bad)?;
        let targets = config
            .upstreams
            .iter()
            .map(|u| parse_upstream(u).map(|a| a.authority))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let trusted = config
            .trusted_proxies
            .iter()
            .map(|t| parse_trusted(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let mut limits = AuthLimits {
            verify_wait: Duration::from_millis(config.auth_verify_wait_ms),
            client_failures: config.auth_client_failures,
            failure_window: Duration::from_secs(config.auth_failure_window_secs),
            negative_ttl: Duration::from_secs(config.negative_cache_ttl_secs),
            user_failures: config.auth_user_failures,
            user_backoff: Duration::from_secs(config.auth_user_backoff_secs),
            user_backoff_max: Duration::from_secs(config.auth_user_backoff_max_secs),
            ..AuthLimits::default()
        };
        if config.auth_client_concurrency > 0 {
            limits.per_client = config.auth_client_concurrency;
        }
        let authz = match &config.acl {
            Some(path) => Authorizer::load(path.clone()).map_err(bad)?,
            None => Authorizer::open(),
        };
        let audit = AuditLog::open(config.audit_log.as_deref()).map_err(|e| {
            bad(format!(
                "audit_log (BERTH_AUDIT_LOG): cannot open {}: {e}",
                config
                    .audit_log
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            ))
        })?;
        let metrics = Arc::new(if config.metrics_listen.is_some() {
            Metrics::new()
        } else {
            Metrics::disabled()
        });
        let mut auth = Authenticator::with_limits(
            config.htpasswd.clone(),
            Duration::from_secs(config.credential_cache_ttl_secs),
            config.credential_cache_size,
            limits,
        );
        // Tokens serve anonymous pulls, which only an access file can allow.
        if config.acl.is_some() {
            auth = auth.with_tokens(Tokens::load(
                &config.certs_dir,
                Duration::from_secs(config.token_ttl_secs),
            ));
        }
        if metrics.enabled() {
            auth = auth.with_cache_hits(metrics.auth.with_label_values(&["cache_hit"]));
        }
        let auth = Arc::new(auth);
        let upstreams = Upstreams::new(
            targets,
            Duration::from_secs(config.connect_timeout_secs),
            Duration::from_secs(config.read_timeout_secs),
        )
        .with_metrics(Arc::clone(&metrics));
        let ui = config.ui.then(|| {
            crate::ui::Ui::new(
                &config.certs_dir,
                Duration::from_secs(config.ui_session_ttl_secs),
            )
        });
        Ok(ProxyState {
            ui,
            config,
            auth,
            authz: Arc::new(authz),
            audit,
            filter,
            upstreams,
            trusted,
            metrics,
        })
    }

    /// The metrics every stage increments.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The authenticator (its cache, its reload).
    pub fn auth(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// The access rules in force.
    pub fn authz(&self) -> &Arc<Authorizer> {
        &self.authz
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The registry replicas requests go to.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Whether `ip` is a trusted front proxy (`trusted_proxies`), whose `X-Forwarded-*` headers are kept.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The web interface, unless it is turned off.
    pub fn ui(&self) -> Option<&crate::ui::Ui> {
        self.ui.as_ref()
    }

    /// The `WWW-Authenticate` value of a 401 for a request to `host`: Basic, or when the access rules let
    /// anonymous clients pull, Bearer with the proxy's token endpoint (the Docker daemon pulls without
    /// credentials only after a token challenge).
    fn challenge(&self, host: Option<&HeaderValue>) -> String {
        let realm = &self.config.realm;
        match host.and_then(|h| h.to_str().ok()) {
            Some(host) if self.authz.anonymous_pulls() => format!(
                "Bearer realm=\"https://{host}{}\",service=\"{realm}\"",
                crate::authn::token::TOKEN_PATH
            ),
            _ => format!("Basic realm=\"{realm}\""),
        }
    }
}

/// A bound proxy, ready to run.
pub struct Server {
    state: Arc<ProxyState>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    cert: Arc<ReloadableCert>,
    metrics_listener: Option<TcpListener>,
}

impl Server {
    /// Build the proxy on `listener`, loading `domain.crt`/`domain.key` from the configured certs directory
    /// (call [`crate::tls::ensure_server_cert`] first to generate them when missing). Blocking (reads files,
    /// hashes the dummy password): from async code, call it on a blocking thread.
    pub fn new(config: Config, listener: TcpListener) -> Result<Server, ServerError> {
        let (cert_path, key_path) = server_paths(&config.certs_dir);
        let cert = Arc::new(ReloadableCert::load(cert_path, key_path).map_err(ServerError::Tls)?);
        let tls = server_config(Arc::clone(&cert)).map_err(ServerError::Tls)?;
        let state = Arc::new(ProxyState::new(config)?);
        Ok(Server {
            state,
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            cert,
            metrics_listener: None,
        })
    }

    /// Binds `metrics_listen` when it is set, so that `run` serves the metrics there; returns the address
    /// bound (`None` when metrics are off).
    pub async fn bind_metrics(&mut self) -> std::io::Result<Option<SocketAddr>> {
        let Some(addr) = self.state.config.metrics_listen.as_deref() else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        self.metrics_listener = Some(listener);
        Ok(Some(local))
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The certificate holder; call `reload()` on it to swap the certificate (what SIGHUP does).
    pub fn cert(&self) -> Arc<ReloadableCert> {
        Arc::clone(&self.cert)
    }

    /// The shared request state.
    pub fn state(&self) -> Arc<ProxyState> {
        Arc::clone(&self.state)
    }

    /// Serve until `shutdown` completes, then stop accepting and let open exchanges finish for up to
    /// `shutdown_grace_secs`.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let cfg = &self.state.config;
        let watcher = self
            .state
            .auth
            .spawn_watcher(Duration::from_millis(cfg.htpasswd_poll_ms));
        let acl_watcher = self
            .state
            .authz
            .spawn_watcher(Duration::from_millis(cfg.htpasswd_poll_ms));
        let renewal = crate::tls::spawn_renewal(
            cfg.certs_dir.clone(),
            Arc::clone(&self.cert),
            Duration::from_secs(cfg.cert_renew_check_secs),
            Duration::from_secs(cfg.cert_renew_before_days.saturating_mul(86_400)),
        );
        let metrics_task = self.metrics_listener.take().map(|l| {
            let (state, cert) = (Arc::clone(&self.state), Arc::clone(&self.cert));
            let handler: crate::metrics::AdminHandler =
                Arc::new(move |req| Box::pin(admin(Arc::clone(&state), Arc::clone(&cert), req)));
            tokio::spawn(crate::metrics::serve(l, handler, std::future::pending()))
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(cfg.header_read_timeout_secs))
            .max_buf_size(cfg.max_header_bytes.max(8192))
            .max_headers(cfg.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(60)));
        let builder = Arc::new(builder);
        let handshake_timeout = Duration::from_secs(cfg.handshake_timeout_secs);
        let idle_timeout = Duration::from_secs(cfg.idle_timeout_secs);
        let write_timeout = Duration::from_secs(cfg.write_timeout_secs);
        let grace = Duration::from_secs(cfg.shutdown_grace_secs);
        let linger_bounds = LingerBounds {
            time: Duration::from_secs(cfg.lingering_time_secs),
            idle: Duration::from_secs(cfg.lingering_timeout_secs),
        };
        let max_connections = u32::try_from(cfg.max_connections).unwrap_or(u32::MAX >> 3);
        // One permit per open connection (handshakes included): at the cap, new connections wait in the
        // listen backlog. Getting every permit back means every connection is closed.
        let slots = Arc::new(tokio::sync::Semaphore::new(max_connections as usize));
        let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
        let mut at_cap = false;
        tokio::pin!(shutdown);
        loop {
            if slots.available_permits() == 0 && !at_cap {
                at_cap = true;
                tracing::warn!(
                    max_connections,
                    "connection limit reached; new connections wait until one closes"
                );
            }
            let permit = tokio::select! {
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            if slots.available_permits() > 0 {
                at_cap = false;
            }
            let (tcp, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let state = Arc::clone(&self.state);
            let builder = Arc::clone(&builder);
            let mut closing = closing_rx.clone();
            let open = crate::metrics::OpenConnection::start(&state.metrics);
            tokio::spawn(async move {
                let Some(tls) =
                    handshake(acceptor, tcp, peer, handshake_timeout, &state.metrics).await
                else {
                    return;
                };
                // Holds the connection's slot until the connection has finished lingering.
                let tls = Lingering::new(
                    tls,
                    |tls| tls.into_inner().0.into_inner(),
                    linger_bounds,
                    // The slot and the open-connection count go when lingering is over.
                    Some(Box::new((permit, open))),
                );
                let activity = Arc::new(Activity::default());
                let a = Arc::clone(&activity);
                let service = hyper::service::service_fn(move |req| {
                    handle(Arc::clone(&state), peer, req, InFlight::start(&a))
                });
                let io = TokioIo::new(WriteTimeout::new(tls, write_timeout));
                let conn = builder.serve_connection(io, service);
                tokio::pin!(conn);
                let mut closed = false;
                loop {
                    tokio::select! {
                        res = conn.as_mut() => {
                            if let Err(e) = res {
                                tracing::debug!(%peer, "connection ended: {e}");
                            }
                            break;
                        }
                        _ = closing.wait_for(|c| *c), if !closed => {
                            closed = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        _ = activity.idle_for(idle_timeout), if !closed => {
                            closed = true;
                            tracing::debug!(%peer, "connection idle; closing it");
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            });
        }
        drop(self.listener);
        tracing::info!(
            "shutting down: waiting up to {}s for open transfers",
            grace.as_secs()
        );
        let _ = closing_tx.send(true);
        tokio::select! {
            _ = slots.acquire_many(max_connections) => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
        }
        watcher.abort();
        if let Some(w) = acl_watcher {
            w.abort();
        }
        renewal.abort();
        if let Some(t) = metrics_task {
            t.abort();
        }
        Ok(())
    }
}

/// The operator listener (`metrics_listen`): `/metrics`, and the health and readiness probes in plain HTTP.
async fn admin(
    state: Arc<ProxyState>,
    cert: Arc<ReloadableCert>,
    req: Request<Incoming>,
) -> Response<http_body_util::Full<bytes::Bytes>> {
    use crate::metrics::{metrics_response, text_response, METRICS_PATH};
    if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return text_response(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        METRICS_PATH => {
            crate::tls::note_expiry(&state.metrics, &cert, &state.config.certs_dir);
            metrics_response(&state.metrics)
        }
        crate::forward::HEALTH_PATH => text_response(StatusCode::OK, "ok\n"),
        crate::forward::READY_PATH => {
            let wait = Duration::from_secs(state.config.connect_timeout_secs.max(1));
            match state.upstreams.ready(wait).await {
                Ok(()) => text_response(StatusCode::OK, "ready\n"),
                Err(why) => text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("no upstream answers: {why}\n"),
                ),
            }
        }
        _ => text_response(
            StatusCode::NOT_FOUND,
            "only /metrics, /_berth/health, /_berth/ready here\n",
        ),
    }
}

/// Requests in flight on one connection, to close it after it has been idle for a while (HTTP/2 has no idle
/// timeout of its own: the proxy sends GOAWAY).
#[derive(Debug, Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Activity {
    /// Resolves once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(timeout) => {
                        if self.in_flight.load(Ordering::SeqCst) == 0 {
                            return;
                        }
                    }
                    _ = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

/// One request in flight, from its arrival until its response body is finished or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.changed.notify_waiters();
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// The client connection's transport with a write-progress timeout: when a write or flush stays blocked (the
/// client stopped reading, its window is closed) for longer than the timeout, it fails, and the connection is
/// closed. Time between writes (nothing to send) does not count.
struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    blocked: bool,
}

impl<T> WriteTimeout<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            blocked: false,
        }
    }

    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if poll.is_ready() {
            self.blocked = false;
            return poll;
        }
        if !self.blocked {
            self.blocked = true;
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client stopped reading: write timeout",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check(cx, poll)
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    mut tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    metrics: &Metrics,
) -> Option<tokio_rustls::server::TlsStream<ReadAhead<TcpStream>>> {
    let failed = |why: &str| metrics.handshake(why);
    // One deadline for the whole handshake (first byte, plain-HTTP answer, TLS), not one per step.
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        Err(_) => {
            failed("timeout");
            return None;
        }
        _ => {
            failed("closed");
            return None;
        }
    }
    if first[0] != 0x16 {
        // Not a TLS handshake record: most likely plain HTTP sent to the TLS port.
        let msg = "This port speaks HTTPS only; use https://\n";
        let resp = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Docker-Distribution-Api-Version: registry/2.0\r\nConnection: close\r\n\r\n{msg}",
            msg.len()
        );
        if tokio::time::timeout_at(deadline, tcp.write_all(resp.as_bytes()))
            .await
            .is_ok_and(|w| w.is_ok())
        {
            // Whatever the client sent after its request head stays unread: linger (within what is left of
            // the handshake deadline) so that it does not turn into a reset that destroys the answer.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            berth_net::linger(
                tcp,
                LingerBounds {
                    time: left,
                    idle: left.min(Duration::from_secs(1)),
                },
            )
            .await;
        }
        tracing::debug!(%peer, "plain HTTP on the TLS port refused");
        failed("plain_http");
        return None;
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(ReadAhead::new(tcp))).await {
        Ok(Ok(tls)) => {
            failed("ok");
            Some(tls)
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            failed(handshake_failure(&e));
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            failed("timeout");
            None
        }
    }
}

/// Why a handshake failed, in a few words fit for a label.
fn handshake_failure(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(_)) => "alert",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::PeerMisbehaved(_),
        ) => "protocol",
        Some(_) => "other",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "closed",
        None => "other",
    }
}

/// A TLS record's largest plaintext (16 KiB) less an HTTP/2 frame header (9 bytes).
const H2_DATA_PER_RECORD: usize = 16 * 1024 - 9;

async fn handle(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    req: Request<Incoming>,
    in_flight: InFlight,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let http2 = req.version() == http::Version::HTTP_2;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // The name the client used, for a token challenge's realm.
    let host = client_host(req.version(), req.uri(), req.headers());
    let declared_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Decoded once, for the user-agent rules and the access log.
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    let (mut resp, user) = match stages(
        &state,
        peer,
        req,
        &user_agent,
        declared_length,
        Arc::clone(&bytes_in),
    )
    .await
    {
        Ok(ok) => ok,
        Err(early) => {
            let mut resp = early.error.response(&state.challenge(host.as_ref()));
            if let Some(body) = early.unread {
                let unread = Unread {
                    http2,
                    expects_continue,
                    declared_length,
                };
                unread.dispose(&state.config, body, resp.headers_mut());
            }
            (resp, early.user)
        }
    };
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
    if method == http::Method::HEAD {
        // A HEAD answer ends with its headers (HTTP/2 would otherwise send the body as DATA); its
        // Content-Length stays what a GET would have had.
        resp = resp.map(|_| http_body_util::Empty::new().map_err(|e| match e {}).boxed());
    }
    let metrics = Arc::clone(&state.metrics);
    let record = AccessRecord {
        client: peer,
        user,
        method,
        path,
        status: resp.status().as_u16(),
        bytes_in,
        bytes_out: Arc::clone(&bytes_out),
        start,
        user_agent,
    };
    // The one wrapper of every response body: counts bytes out, times out an upstream body that stops
    // arriving, writes the access log when done.
    let read_timeout = Duration::from_secs(state.config.read_timeout_secs);
    let resp = resp.map(|body| {
        let body = RelayBody::new(body, bytes_out)
            .idle_timeout(read_timeout)
            .on_drop(Box::new(move || {
                record.emit();
                metrics.request_done(
                    crate::metrics::route_index(&record.path),
                    &record.method,
                    record.status,
                    record.start.elapsed(),
                    record.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                    record.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
                );
                drop(in_flight);
            }));
        // HTTP/2 sends data in frames of at most 16 KiB (the client's default SETTINGS_MAX_FRAME_SIZE), and a
        // full frame with its 9-byte header is 9 bytes more than one TLS record holds: every frame would cost
        // a second, nearly empty record (and its own encryption). Pieces of one record minus the frame header
        // make each frame exactly one record.
        if http2 {
            body.split(H2_DATA_PER_RECORD).boxed()
        } else {
            body.boxed()
        }
    });
    Ok(resp)
}

/// What is known of a request body that the proxy answered without reading.
struct Unread {
    http2: bool,
    expects_continue: bool,
    declared_length: Option<u64>,
}

impl Unread {
    /// Make sure the early answer reaches the client and, where the bounds allow, the connection survives for
    /// the retry. HTTP/2 ends the stream (RST_STREAM NO_ERROR after the answer) and the connection goes on.
    /// HTTP/1.1: a client waiting for `100 Continue` gets the answer instead and the connection closes without
    /// reading its body; a body declared larger than `discard_body_max_bytes` gets `Connection: close`;
    /// any other body is read and thrown away while the answer is written, and if it turns out too long or
    /// too slow the connection closes after the answer. Closed connections linger ([`Lingering`]), so unread
    /// bytes never turn into a reset that destroys the answer.
    fn dispose(self, cfg: &Config, body: Incoming, headers: &mut http::HeaderMap) {
        if self.http2 || http_body::Body::is_end_stream(&body) {
            return;
        }
        let max = cfg.discard_body_max_bytes;
        if self.expects_continue || self.declared_length.is_some_and(|n| n > max) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            return;
        }
        let bounds = LingerBounds {
            time: Duration::from_secs(cfg.lingering_time_secs),
            idle: Duration::from_secs(cfg.lingering_timeout_secs),
        };
        tokio::spawn(async move {
            if !discard_body(body, max, bounds).await {
                tracing::debug!("unread request body too long or too slow; closing the connection");
            }
        });
    }
}

/// An answer the proxy gives itself, with the request body when it was not read.
struct Early {
    error: ProxyError,
    user: Option<String>,
    unread: Option<Incoming>,
}

impl Early {
    fn new(error: ProxyError, user: Option<String>, req: Request<Incoming>) -> Early {
        Early {
            error,
            user,
            unread: Some(req.into_body()),
        }
    }

    /// After the body went (partly) to the upstream: nothing left to dispose of here.
    fn sent(error: ProxyError, user: Option<String>) -> Early {
        Early {
            error,
            user,
            unread: None,
        }
    }
}

type StageResult = Result<(Response<ProxyBody>, Option<String>), Early>;

/// The stages in order: health/ping bypass -> user-agent filter -> authenticate -> rewrite -> forward.
async fn stages(
    state: &ProxyState,
    peer: SocketAddr,
    req: Request<Incoming>,
    user_agent: &str,
    declared_length: Option<u64>,
    bytes_in: Arc<AtomicU64>,
) -> StageResult {
    let cfg = &state.config;
    let route = match classify(req.version(), req.uri()) {
        Ok(r) => r,
        Err(m) => return Err(Early::new(ProxyError::BadRequest(m), None, req)),
    };
    if req.headers().len() > cfg.max_headers {
        // HTTP/1.1 heads with more fields never get here (the HTTP/1.1 parser answers 431 itself); HTTP/2
        // ones are held to the same limit.
        return Err(Early::new(ProxyError::TooManyHeaders, None, req));
    }
    if req.method() == http::Method::CONNECT {
        return Err(Early::new(
            ProxyError::BadRequest("CONNECT is not supported"),
            None,
            req,
        ));
    }
    match route {
        Route::Health => return Ok((json_response(StatusCode::OK, r#"{"status":"ok"}"#), None)),
        Route::Ready => {
            let wait = Duration::from_secs(cfg.connect_timeout_secs.max(1));
            let resp = match state.upstreams.ready(wait).await {
                Ok(()) => json_response(StatusCode::OK, r#"{"status":"ready"}"#),
                Err(why) => {
                    tracing::warn!("not ready: no upstream answers: {why}");
                    let body = serde_json::json!({"status": "unavailable", "upstreams": why});
                    json_response(StatusCode::SERVICE_UNAVAILABLE, &body.to_string())
                }
            };
            return Ok((resp, None));
        }
        Route::Unknown => return Err(Early::new(ProxyError::NotFound, None, req)),
        // The ping bypass is for reads only; any other method on a ping path needs credentials like the API.
        Route::Ping if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) => {}
        Route::Ping if cfg.ping_local => return Ok((json_response(StatusCode::OK, "{}"), None)),
        Route::Ping => {
            return forward(state, peer, req, None, None, declared_length, bytes_in).await
        }
        Route::Registry | Route::Token | Route::Ui => {}
    }
    if state.filter.refuses(user_agent) {
        return Err(Early::new(ProxyError::ClientRefused, None, req));
    }
    let client = client_address(state, peer, req.headers());
    if route == Route::Ui {
        let Some(ui) = state.ui() else {
            return Err(Early::new(ProxyError::NotFound, None, req));
        };
        return Ok(crate::ui::handle(state, ui, req, peer, client).await);
    }
    if route == Route::Token {
        return token(state, req, client).await;
    }
    let access = Access::of(req.method(), req.uri());
    let user = authenticate(state, &req, client, &access).await;
    let (user, grant) = match user.and_then(|user| authorize(state, &access, user, client)) {
        Ok(allowed) => allowed,
        Err((error, user)) => return Err(Early::new(error, user, req)),
    };
    let mut req = req;
    if grant.drop_mount && !drop_mount(req.uri_mut()) {
        return Err(Early::new(ProxyError::Internal, user, req));
    }
    let answer = forward(
        state,
        peer,
        req,
        user,
        grant.pull_filter,
        declared_length,
        bytes_in,
    )
    .await;
    if let Access::Repo {
        repo,
        action,
        audited: Some(reference),
        ..
    } = &access
    {
        let (status, user) = match &answer {
            Ok((resp, user)) => (resp.status().as_u16(), user.as_deref()),
            Err(early) => (early.error.parts().0.as_u16(), early.user.as_deref()),
        };
        state.audit.record(&AuditEvent {
            user,
            client,
            action: action.as_str(),
            repository: Some(repo),
            reference: Some(reference),
            status,
            reason: None,
        });
    }
    answer
}

/// Who sent the request: `Ok(None)` without credentials (the access rules decide whether that will do).
/// Refused credentials are audited.
async fn authenticate(
    state: &ProxyState,
    req: &Request<Incoming>,
    client: IpAddr,
    access: &Access,
) -> Result<Option<String>, (ProxyError, Option<String>)> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let failure = match state.auth.authenticate_from(authorization, client).await {
        Ok(user) => {
            state.metrics.auth("success");
            return Ok(Some(user));
        }
        Err(AuthFailure::Missing) => return Ok(None),
        Err(f) => f,
    };
    state.metrics.auth(match failure {
        AuthFailure::Throttled(_) => "throttled",
        AuthFailure::Busy => "busy",
        _ => "failure",
    });
    let (error, reason) = match failure {
        AuthFailure::Rejected => (ProxyError::Unauthorized, "credentials rejected"),
        AuthFailure::Throttled(wait) => (
            ProxyError::Throttled(wait.as_secs().max(1)),
            "authentication throttled",
        ),
        AuthFailure::Busy => {
            tracing::warn!("every password-check slot stayed busy; answering 503");
            return Err((ProxyError::Busy, None));
        }
        AuthFailure::Missing | AuthFailure::Malformed => {
            return Err((ProxyError::Unauthorized, None))
        }
    };
    let claimed = authorization
        .and_then(crate::authn::parse_basic)
        .map(|c| c.user);
    let status = error.parts().0.as_u16();
    audit_refusal(
        state,
        claimed.as_deref(),
        client,
        access,
        "login",
        status,
        reason,
    );
    Err((error, None))
}

/// Writes a refusal to the audit log: the action is the request's, or `otherwise` when it names no repository.
fn audit_refusal(
    state: &ProxyState,
    user: Option<&str>,
    client: IpAddr,
    access: &Access,
    otherwise: &str,
    status: u16,
    reason: &str,
) {
    let (repository, action) = match access {
        Access::Repo { repo, action, .. } => (Some(repo.as_str()), action.as_str()),
        _ => (None, otherwise),
    };
    state.audit.record(&AuditEvent {
        user,
        client,
        action,
        repository,
        reference: None,
        status,
        reason: Some(reason),
    });
}

/// What the access rules say of the request; refusals of authenticated users are audited.
fn authorize(
    state: &ProxyState,
    access: &Access,
    user: Option<String>,
    client: IpAddr,
) -> Result<(Option<String>, Grant), (ProxyError, Option<String>)> {
    match state.authz.decide(access, user.as_deref()) {
        Decision::Allow(grant) => Ok((user, grant)),
        Decision::NeedCredentials => Err((ProxyError::Unauthorized, user)),
        Decision::Denied(message) => {
            let status = StatusCode::FORBIDDEN.as_u16();
            audit_refusal(
                state,
                user.as_deref(),
                client,
                access,
                "pull",
                status,
                &message,
            );
            Err((ProxyError::Denied(message), user))
        }
    }
}

/// Takes `mount` and `from` off an upload's query: the registry then opens a normal upload session. False
/// when the target could not be rebuilt (the request must not go on with the mount).
fn drop_mount(uri: &mut http::Uri) -> bool {
    let Some(query) = uri.query() else {
        return true;
    };
    let kept: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "mount" && k != "from"),
        )
        .finish();
    let target = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{kept}", uri.path())
    };
    let mut parts = uri.clone().into_parts();
    let Ok(pq) = target.parse() else {
        return false;
    };
    parts.path_and_query = Some(pq);
    match http::Uri::from_parts(parts) {
        Ok(u) => {
            *uri = u;
            true
        }
        Err(_) => false,
    }
}

/// `GET /_berth/token`: a bearer token for the Basic credentials sent, or without any (when the access rules
/// let anonymous clients pull) an anonymous one. The answer is what Docker's token clients read.
async fn token(state: &ProxyState, req: Request<Incoming>, client: IpAddr) -> StageResult {
    if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return Err(Early::new(
            ProxyError::BadRequest("the token endpoint answers GET"),
            None,
            req,
        ));
    }
    let tokens = match state.auth.tokens() {
        Some(t) if state.authz.anonymous_pulls() => t,
        // Without anonymous pulls the challenge is Basic and nobody is sent here.
        _ => return Err(Early::new(ProxyError::NotFound, None, req)),
    };
    // A token is had for a password, or for nothing: not for another token (that would renew it for ever).
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| crate::authn::bearer(v.as_bytes()));
    if bearer.is_some() {
        return Err(Early::new(ProxyError::Unauthorized, None, req));
    }
    let user = match authenticate(state, &req, client, &Access::Login).await {
        Ok(Some(user)) => Some(user),
        Ok(None) if state.authz.anonymous_pulls() => None,
        Ok(None) => return Err(Early::new(ProxyError::Unauthorized, None, req)),
        Err((error, user)) => return Err(Early::new(error, user, req)),
    };
    let token = tokens.issue(user.as_deref());
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": tokens.ttl().as_secs(),
    })
    .to_string();
    let mut resp = json_response(StatusCode::OK, &body);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((resp, user))
}

/// The client's address for throttling: the peer's, or the `X-Real-IP` a trusted front proxy set.
fn client_address(state: &ProxyState, peer: SocketAddr, headers: &http::HeaderMap) -> IpAddr {
    if state.trusted.iter().any(|n| n.contains(&peer.ip())) {
        if let Some(ip) = headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
        {
            return ip;
        }
    }
    peer.ip()
}

async fn forward(
    state: &ProxyState,
    peer: SocketAddr,
    req: Request<Incoming>,
    user: Option<String>,
    pull_filter: Option<String>,
    declared_length: Option<u64>,
    bytes_in: Arc<AtomicU64>,
) -> StageResult {
    let cfg = &state.config;
    let limit = (cfg.max_body_size > 0).then_some(cfg.max_body_size);
    if limit.is_some_and(|max| declared_length.is_some_and(|n| n > max)) {
        return Err(Early::new(ProxyError::PayloadTooLarge, user, req));
    }
    let Some(host) = client_host(req.version(), req.uri(), req.headers()) else {
        // Without the name the client used, the registry would build its Location headers from the
        // upstream's address (RFC 9112 section 3.2: 400 for a request without Host).
        return Err(Early::new(
            ProxyError::BadRequest("a Host header is required"),
            user,
            req,
        ));
    };
    let (mut parts, body) = req.into_parts();
    let client = ClientContext {
        peer_ip: peer.ip(),
        peer_trusted: state.trusted.iter().any(|n| n.contains(&peer.ip())),
    };
    rewrite_request_headers(
        &mut parts.headers,
        Some(host),
        &client,
        user.as_deref(),
        cfg.pass_authorization,
    );
    if let Some(filter) = pull_filter {
        // Without its filter a listing would show everything: no filter, no listing.
        let Ok(v) = HeaderValue::try_from(filter) else {
            return Err(Early::sent(ProxyError::Internal, user));
        };
        parts.headers.insert(berth_glob::PULL_FILTER_HEADER, v);
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let read_timeout = Duration::from_secs(cfg.read_timeout_secs);
    let mut body = RelayBody::new(body, bytes_in).idle_timeout(read_timeout);
    if let Some(max) = limit {
        body = body.limit(max, Arc::clone(&exceeded));
    }
    let resp = match state.upstreams.send(parts, body).await {
        Ok(r) => r,
        Err(e) if exceeded.load(Ordering::Relaxed) => {
            let _ = e;
            return Err(Early::sent(ProxyError::PayloadTooLarge, user));
        }
        Err(e) => return Err(Early::sent(e, user)),
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Counted and timed by the single wrapper in `handle`.
    let body = body.map_err(BoxError::from).boxed();
    Ok((Response::from_parts(parts, body), user))
}
