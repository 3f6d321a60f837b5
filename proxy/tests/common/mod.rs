//! Shared test support: a recording upstream registry stand-in, a TLS client, htpasswd files made by the real
//! `htpasswd` binary, and an in-process proxy on 127.0.0.1:0.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};

pub type TestBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub body_sha256: String,
}

/// A small HTTP/1.1 server standing in for the registry: records requests, hashes bodies it receives, and
/// serves `GET /v2/big/<bytes>` as a stream of that many pattern bytes.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Deterministic pattern bytes for big transfers.
pub fn pattern_chunk() -> Bytes {
    Bytes::from(
        (0..65536u32)
            .map(|i| (i.wrapping_mul(31) % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// A body of `total` pattern bytes, sent in chunks (no length: chunked on HTTP/1.1).
pub fn pattern_body(total: u64) -> TestBody {
    let chunk = pattern_chunk();
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(chunk.len() as u64) as usize;
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.slice(..n))),
                sent + n as u64,
            ))
        }
    });
    StreamBody::new(stream).boxed()
}

/// `chunks` pattern chunks of 64 KiB, one every `every`: a slow upload that keeps making progress.
pub fn slow_pattern_body(chunks: u64, every: std::time::Duration) -> TestBody {
    let chunk = pattern_chunk();
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= chunks {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk)),
                sent + 1,
            ))
        }
    });
    StreamBody::new(stream).boxed()
}

/// A body that sends `first` and then nothing more until the returned sender is dropped (a stalled client).
pub fn stalled_body(first: Bytes) -> (TestBody, tokio::sync::oneshot::Sender<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let stream = futures_util::stream::unfold((Some(first), Some(rx)), |(first, rx)| async move {
        if let Some(b) = first {
            return Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)),
                (None, rx),
            ));
        }
        let _ = rx?.await;
        None
    });
    (StreamBody::new(stream).boxed(), tx)
}

/// The sha256 of `total` pattern bytes.
pub fn pattern_sha256(total: u64) -> String {
    let chunk = pattern_chunk();
    let mut h = Sha256::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        h.update(&chunk[..n]);
        left -= n as u64;
    }
    hex::encode(h.finalize())
}

async fn upstream_handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let (parts, mut body) = req.into_parts();
    if parts.uri.path().starts_with("/v2/deaf/") {
        // Never reads the body nor answers: an upstream that hangs while a client uploads.
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
    let mut h = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    h.update(d);
                    len += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let sha = hex::encode(h.finalize());
    seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body_len: len,
        body_sha256: sha.clone(),
    });
    let path = parts.uri.path().to_string();
    if path.starts_with("/v2/stall/") {
        // Reads the whole body, then takes a minute to answer.
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
    let mut resp = if path.starts_with("/v2/hang-body/") {
        // Answers at once, sends one chunk, then nothing (the sender is kept alive by the stream).
        let (body, hold) = stalled_body(Bytes::from_static(b"first chunk"));
        let body = StreamBody::new(futures_util::stream::unfold(
            (body, Some(hold)),
            |(mut body, hold)| async move {
                let frame = body.frame().await?;
                Some((frame, (body, hold)))
            },
        ))
        .boxed();
        Response::new(body)
    } else if let Some(n) = path.strip_prefix("/v2/big/") {
        let total: u64 = n.parse().unwrap_or(0);
        let mut r = Response::new(pattern_body(total));
        r.headers_mut().insert("content-length", total.into());
        r
    } else {
        let body = serde_json::json!({"bytes": len, "sha256": sha, "path": path}).to_string();
        Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
    };
    *resp.status_mut() = StatusCode::OK;
    // The real registry sets this too: the proxy must not duplicate it.
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        "registry/2.0".parse().unwrap(),
    );
    resp.headers_mut()
        .insert("connection", "keep-alive".parse().unwrap());
    Ok(resp)
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| upstream_handle(Arc::clone(&s), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A port nothing listens on.
pub async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// Run the real `htpasswd` binary (apache2-utils). Missing binary = test failure, never a skip.
pub fn htpasswd(args: &[&str]) {
    let out = Command::new("/usr/bin/htpasswd")
        .args(args)
        .output()
        .expect("/usr/bin/htpasswd is required (apt-get install apache2-utils)");
    assert!(
        out.status.success(),
        "htpasswd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// rustls client config trusting only `ca_pem`.
pub fn client_config(ca_pem: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    connector
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
}

/// An HTTP/2 connection over TLS to the proxy, and the task that drives it.
pub async fn h2_client(
    proxy: &Proxy,
) -> (
    hyper::client::conn::http2::SendRequest<TestBody>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tls = tls_connect(proxy.addr, client_config(&proxy.ca, &[b"h2"]), "localhost")
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    (send, tokio::spawn(conn))
}

/// An HTTP/1.1 connection over TLS to the proxy.
pub struct Client {
    pub send: hyper::client::conn::http1::SendRequest<TestBody>,
    pub host: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr, ca: &Path) -> Client {
        let tls = tls_connect(addr, client_config(ca, &[b"http/1.1"]), "localhost")
            .await
            .unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client {
            send,
            host: format!("localhost:{}", addr.port()),
        }
    }

    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
    }

    pub async fn send(&mut self, req: Request<TestBody>) -> (http::response::Parts, Bytes) {
        // The connection becomes ready again only after the previous exchange is fully processed; sending
        // earlier fails with "connection was not ready" on a loaded machine.
        self.send.ready().await.unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts, bytes)
    }

    pub async fn get(
        &mut self,
        path: &str,
        auth: Option<(&str, &str)>,
        ua: &str,
    ) -> (http::response::Parts, Bytes) {
        let mut b = self.request("GET", path).header("user-agent", ua);
        if let Some((u, p)) = auth {
            b = b.header("authorization", basic(u, p));
        }
        self.send(b.body(empty()).unwrap()).await
    }
}

pub fn empty() -> TestBody {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

pub const UA: &str = "docker/27.3.1 go/go1.22.7 git-commit/41ca978 kernel/6.8 os/linux arch/amd64";

/// A proxy running in-process, with its own certs dir and htpasswd file.
pub struct Proxy {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub htpasswd: PathBuf,
    pub ca: PathBuf,
    pub cert: Arc<berth_proxy::tls::ReloadableCert>,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub state: Arc<berth_proxy::server::ProxyState>,
    /// Where the metrics are served, when the config asked for them (`metrics_listen`).
    pub metrics: Option<SocketAddr>,
}

impl Proxy {
    /// Start with users alice:alice-pw (bcrypt), and `tweak` applied to the config.
    pub async fn start(
        upstreams: Vec<String>,
        tweak: impl FnOnce(&mut berth_proxy::config::Config),
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        berth_proxy::ca::init(
            &certs,
            &["localhost".into(), "127.0.0.1".into()],
            berth_proxy::ca::KeyType::EcdsaP256,
            false,
        )
        .unwrap();
        let htpasswd_path = dir.path().join("htpasswd");
        htpasswd(&["-cbB", htpasswd_path.to_str().unwrap(), "alice", "alice-pw"]);
        let mut config = berth_proxy::config::Config {
            listen: "127.0.0.1:0".into(),
            upstreams,
            htpasswd: htpasswd_path.clone(),
            certs_dir: certs.clone(),
            realm: "test-realm".into(),
            htpasswd_poll_ms: 100,
            connect_timeout_secs: 2,
            shutdown_grace_secs: 10,
            ..Default::default()
        };
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut server =
            tokio::task::spawn_blocking(move || berth_proxy::server::Server::new(config, listener))
                .await
                .unwrap()
                .unwrap();
        let metrics = server.bind_metrics().await.unwrap();
        let addr = server.local_addr().unwrap();
        let cert = server.cert();
        let state = server.state();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Proxy {
            addr,
            htpasswd: htpasswd_path,
            ca: certs.join("devdockerCA.crt"),
            dir,
            cert,
            shutdown: Some(tx),
            task,
            state,
            metrics,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr, &self.ca).await
    }
}

pub fn _unused(_: TokioExecutor) {}

/// One response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True when the server said it closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    /// The OCI error code of the first error in the JSON body.
    pub fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body));
        v["errors"][0]["code"].as_str().unwrap_or("").to_string()
    }
}

/// An HTTP/1.1 client over TLS that behaves like the simplest real clients: it writes a whole request, body
/// included, before it reads a byte of the answer.
pub struct RawConn<S> {
    pub io: S,
    buf: Vec<u8>,
}

pub type RawTls = RawConn<tokio_rustls::client::TlsStream<TcpStream>>;

impl RawTls {
    pub async fn tls(addr: SocketAddr, ca: &Path) -> RawTls {
        let io = tls_connect(addr, client_config(ca, &[b"http/1.1"]), "localhost")
            .await
            .unwrap();
        RawConn::new(io)
    }
}

impl<S> RawConn<S> {
    pub fn new(io: S) -> Self {
        RawConn {
            io,
            buf: Vec::new(),
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> RawConn<S> {
    /// Writes `head` (request line and headers, without the blank line), then `body_len` pattern bytes, plain
    /// (`chunked` false, with Content-Length given by the caller in `head`) or chunked.
    pub async fn write_request(
        &mut self,
        head: &str,
        body_len: u64,
        chunked: bool,
    ) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.io.write_all(head.as_bytes()).await?;
        self.io.write_all(b"\r\n").await?;
        self.write_body(body_len, chunked).await?;
        self.io.flush().await
    }

    /// Writes `body_len` pattern bytes, plain or chunked (ending with the last chunk).
    pub async fn write_body(&mut self, body_len: u64, chunked: bool) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let chunk = pattern_chunk();
        let mut left = body_len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if chunked {
                self.io.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            }
            self.io.write_all(&chunk[..n]).await?;
            if chunked {
                self.io.write_all(b"\r\n").await?;
            }
            left -= n as u64;
        }
        if chunked {
            self.io.write_all(b"0\r\n\r\n").await?;
        }
        self.io.flush().await
    }
}

impl<S: tokio::io::AsyncRead + Unpin> RawConn<S> {
    async fn fill(&mut self) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16 * 1024];
        let n = self.io.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response (the body by its Content-Length; `head` for the answer to a HEAD). `None` when the
    /// connection ends before a complete response.
    pub async fn read_response(&mut self, head: bool) -> std::io::Result<Option<RawResponse>> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        };
        let text = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = if head || status == 100 || status == 204 || status == 304 {
            0
        } else {
            headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or_else(|| panic!("response without content-length: {headers:?}"))
        };
        while self.buf.len() < len {
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
        let body = self.buf.drain(..len).collect();
        Ok(Some(RawResponse {
            status,
            headers,
            body,
        }))
    }

    /// True when the server closed the connection (a clean end or an error, within `limit`).
    pub async fn closed_within(&mut self, limit: std::time::Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        match tokio::time::timeout(limit, self.fill()).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }
}

/// The real berth-registry binary, built next to this test's binaries (`cargo build --workspace --bins`, as
/// scripts/test.sh does), on a fresh data directory. Missing binary = test failure, never a skip.
pub struct RealRegistry {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// What the registry prints after its listen line (the debug address, when it has one).
    pub stdout: std::io::BufReader<std::process::ChildStdout>,
    _dir: tempfile::TempDir,
}

impl RealRegistry {
    pub fn start() -> RealRegistry {
        Self::start_with(&[])
    }

    /// [`RealRegistry::start`] with more environment variables.
    pub fn start_with(env: &[(&str, &str)]) -> RealRegistry {
        use std::io::BufRead;
        let exe = std::env::current_exe().unwrap();
        let bin = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("berth-registry"))
            .unwrap();
        assert!(
            bin.exists(),
            "{} is missing: build it first (cargo build --workspace --bins)",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(&bin)
            .env_clear()
            .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
            .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", dir.path())
            .env("REGISTRY_LOG_LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("berth-registry listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        RealRegistry {
            child,
            addr,
            stdout,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RealRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type H2Sender = hyper::client::conn::http2::SendRequest<TestBody>;

/// An HTTP/2 connection to the proxy from the local address `from` (any 127.x.y.z works on loopback).
pub async fn h2_from(from: &str, proxy: &Proxy) -> H2Sender {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse::<SocketAddr>().unwrap())
        .unwrap();
    let tcp = socket.connect(proxy.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&proxy.ca, &[b"h2"]));
    let tls = connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

pub async fn h2_get(send: &mut H2Sender, proxy: &Proxy, auth: &str) -> u16 {
    h2_get_headers(send, proxy, auth).await.0
}

/// `GET /v2/` with `auth` over an HTTP/2 connection: the status and the response headers.
pub async fn h2_get_headers(
    send: &mut H2Sender,
    proxy: &Proxy,
    auth: &str,
) -> (u16, http::HeaderMap) {
    let req = http::Request::builder()
        .uri(format!("https://localhost:{}/v2/", proxy.addr.port()))
        .header("authorization", auth)
        .header("user-agent", UA)
        .body(empty())
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let _ = resp.into_body().collect().await;
    (status, headers)
}

/// A plain-HTTP `GET` (the operator listener): the head and the body.
pub async fn plain_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// `GET /metrics` over plain HTTP: the text.
pub async fn scrape(addr: SocketAddr) -> String {
    let (head, body) = plain_get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample whose line starts with `series` (name and labels), 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).filter(|v| v.starts_with(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `promtool check metrics` (Debian package prometheus, installed by scripts/install-test-deps.sh) passes on
/// `text`.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt install prometheus; scripts/install-test-deps.sh does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
