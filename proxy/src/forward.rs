//! Forwarding: which route a request target is, the header rewrite towards the upstream and back, and the body
//! wrappers that stream (never collect) while counting bytes and enforcing idle timeouts and size limits.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the proxy sends and every request it forwards.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// The header every proxy response carries exactly once.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
/// Its value.
pub const API_VERSION: &str = "registry/2.0";
/// The proxy's own health endpoint (liveness: the proxy answers).
pub const HEALTH_PATH: &str = "/_berth/health";
/// Readiness: 200 while some upstream replica answers, 503 otherwise.
pub const READY_PATH: &str = "/_berth/ready";

/// What a request target is, for the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The proxy's health endpoint, answered locally.
    Health,
    /// The readiness endpoint, answered locally after asking the upstreams.
    Ready,
    /// `/_ping` or `/v1/_ping`: no credentials needed.
    Ping,
    /// The bearer token endpoint, answered locally.
    Token,
    /// Under `/v2/` or `/v1/`: needs credentials, then forwarded.
    Registry,
    /// Anything else: 404, never forwarded.
    Unknown,
}

/// Classify a request target, refusing path tricks so nothing unexpected reaches the upstream: absolute-form
/// targets over HTTP/1, `//`, backslashes, `.`/`..` segments, and encoded dots, slashes, backslashes and NULs.
pub fn classify(version: Version, uri: &Uri) -> Result<Route, &'static str> {
    if version < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
        return Err("absolute-form request targets are not accepted");
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return Err("request target must be a path");
    }
    if path.contains("//") || path.contains('\\') {
        return Err("empty path segments and backslashes are not accepted");
    }
    let lower = path.to_ascii_lowercase();
    for bad in ["%2e", "%2f", "%5c", "%00"] {
        if lower.contains(bad) {
            return Err("encoded dots, slashes, backslashes and NULs are not accepted in paths");
        }
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("dot segments are not accepted in paths");
    }
    Ok(match path {
        HEALTH_PATH => Route::Health,
        READY_PATH => Route::Ready,
        crate::authn::token::TOKEN_PATH => Route::Token,
        "/_ping" | "/v1/_ping" => Route::Ping,
        p if p == "/v2" || p.starts_with("/v2/") || p == "/v1" || p.starts_with("/v1/") => {
            Route::Registry
        }
        _ => Route::Unknown,
    })
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Remove hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

/// Who sent the request, as far as forwarding headers are concerned.
#[derive(Debug, Clone)]
pub struct ClientContext {
    /// The TCP peer's address.
    pub peer_ip: IpAddr,
    /// Whether the peer is a trusted front proxy whose `X-Forwarded-*` headers are kept.
    pub peer_trusted: bool,
}

/// Rewrite request headers for the upstream: keep `Host` (the client's, with its port), set `X-Real-IP`, append
/// to `X-Forwarded-For`, set `X-Forwarded-Proto: https`, drop hop-by-hop and `Expect` (the proxy answers
/// 100-continue itself), replace `Authorization` by `X-Forwarded-User` unless `pass_authorization`.
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    host: Option<HeaderValue>,
    client: &ClientContext,
    user: Option<&str>,
    pass_authorization: bool,
) {
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    headers.remove("x-forwarded-user");
    // Only the proxy says what a caller may list.
    headers.remove(berth_glob::PULL_FILTER_HEADER);
    if !client.peer_trusted {
        for h in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-real-ip",
            "forwarded",
        ] {
            headers.remove(h);
        }
    }
    let ip = client.peer_ip.to_string();
    if !headers.contains_key("x-real-ip") {
        if let Ok(v) = HeaderValue::from_str(&ip) {
            headers.insert("x-real-ip", v);
        }
    }
    let previous: Vec<String> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let xff = if previous.is_empty() {
        ip
    } else {
        format!("{}, {ip}", previous.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    }
    if !pass_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    if let Some(user) = user {
        if let Ok(v) = HeaderValue::from_str(user) {
            headers.insert("x-forwarded-user", v);
        }
    }
    headers.remove(header::HOST);
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
}

/// The `Host` the client addressed: `:authority` for HTTP/2, else the `Host` header.
pub fn client_host(version: Version, uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    if version >= Version::HTTP_2 {
        if let Some(a) = uri.authority() {
            return HeaderValue::from_str(a.as_str()).ok();
        }
    }
    headers.get(header::HOST).cloned()
}

/// Byte counter shared between a body and whoever reports on it.
pub type Counter = Arc<AtomicU64>;

/// Called once when a body is dropped (finished or aborted): used for the access log.
pub type OnDrop = Box<dyn FnOnce() + Send + Sync>;

/// A body wrapper that streams frames through unchanged while counting data bytes, failing when the body idles
/// longer than a timeout or grows past a limit, and running a callback when dropped.
pub struct MeteredBody<B> {
    inner: Pin<Box<B>>,
    counter: Counter,
    limit: Option<(u64, Arc<AtomicBool>)>,
    idle: Option<(Duration, Pin<Box<Sleep>>, bool)>,
    on_drop: Option<OnDrop>,
    /// With `split`, data frames longer than this are handed on in pieces of this size.
    split: Option<usize>,
    /// The rest of a data frame being handed on in pieces.
    rest: Bytes,
}

impl<B> MeteredBody<B> {
    /// Wrap `inner`, adding data bytes to `counter`.
    pub fn new(inner: B, counter: Counter) -> Self {
        MeteredBody {
            inner: Box::pin(inner),
            counter,
            limit: None,
            idle: None,
            on_drop: None,
            split: None,
            rest: Bytes::new(),
        }
    }

    /// Hand data on in pieces of at most `max` bytes (no copy: the pieces share the frame's buffer).
    pub fn split(mut self, max: usize) -> Self {
        self.split = Some(max.max(1));
        self
    }

    /// Fail once more than `max` bytes went through, setting `exceeded`.
    pub fn limit(mut self, max: u64, exceeded: Arc<AtomicBool>) -> Self {
        self.limit = Some((max, exceeded));
        self
    }

    /// Fail when no frame arrives for `timeout` while the reader is waiting.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle = Some((timeout, Box::pin(tokio::time::sleep(timeout)), false));
        self
    }

    /// Run `f` when the body is dropped.
    pub fn on_drop(mut self, f: OnDrop) -> Self {
        self.on_drop = Some(f);
        self
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

/// The error a [`MeteredBody`] fails with when no frame arrived within its idle timeout.
#[derive(Debug)]
pub struct BodyIdle;
impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("body idle timeout")
    }
}
impl std::error::Error for BodyIdle {}

/// The error a [`MeteredBody`] fails with when its limit is exceeded.
#[derive(Debug)]
pub struct BodyTooLarge;
impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("body larger than the configured maximum")
    }
}
impl std::error::Error for BodyTooLarge {}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            let n = this.split.unwrap_or(usize::MAX).min(this.rest.len());
            return Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))));
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some((_, _, waiting)) = &mut this.idle {
                    *waiting = false;
                }
                if let Some(data) = frame.data_ref() {
                    let total = this.counter.fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if let Some((max, exceeded)) = &this.limit {
                        if total > *max {
                            exceeded.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                        }
                    }
                }
                match (this.split, frame.into_data()) {
                    (Some(max), Ok(mut data)) if data.len() > max => {
                        this.rest = data.split_off(max);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    (_, Ok(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    (_, Err(frame)) => Poll::Ready(Some(Ok(frame))),
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let Some((timeout, sleep, waiting)) = &mut this.idle {
                    if !*waiting {
                        *waiting = true;
                        sleep.as_mut().reset(Instant::now() + *timeout);
                    }
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(Box::new(BodyIdle))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower().saturating_add(rest));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// A request body that stays in a shared slot until the upstream connection first reads it, so a request whose
/// connection attempt failed can be sent to the next upstream with its body untouched.
pub struct DeferredBody<B> {
    slot: Arc<Mutex<Option<B>>>,
    taken: Option<Pin<Box<B>>>,
}

impl<B> DeferredBody<B> {
    /// A body reading from `slot` on first use.
    pub fn new(slot: Arc<Mutex<Option<B>>>) -> Self {
        DeferredBody { slot, taken: None }
    }
}

impl<B> Body for DeferredBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.taken.is_none() {
            let taken = this.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            match taken {
                Some(b) => this.taken = Some(Box::pin(b)),
                None => return Poll::Ready(Some(Err("request body already consumed".into()))),
            }
        }
        match &mut this.taken {
            Some(b) => b.as_mut().poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(b) => b.is_end_stream(),
            None => self
                .slot
                .lock()
                .map(|s| s.as_ref().is_some_and(|b| b.is_end_stream()))
                .unwrap_or(false),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self
                .slot
                .lock()
                .ok()
                .and_then(|s| s.as_ref().map(|b| b.size_hint()))
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    /// `split` hands a long data frame on as pieces of at most the given size, all of its bytes in order,
    /// and the body ends only after the last piece.
    #[tokio::test]
    async fn split_hands_data_on_in_pieces() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let counter: Counter = Arc::new(AtomicU64::new(0));
        let mut body =
            MeteredBody::new(Full::new(Bytes::from(data.clone())), counter.clone()).split(16_375);
        assert_eq!(body.size_hint().exact(), Some(40_000));
        let mut sizes = Vec::new();
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let piece = frame.unwrap().into_data().unwrap();
            sizes.push(piece.len());
            got.extend_from_slice(&piece);
            assert_eq!(body.is_end_stream(), got.len() == data.len());
        }
        assert_eq!(sizes, [16_375, 16_375, 7_250]);
        assert_eq!(got, data);
        assert_eq!(counter.load(Ordering::Relaxed), 40_000);
    }

    fn c(target: &str) -> Result<Route, &'static str> {
        classify(Version::HTTP_11, &target.parse().unwrap())
    }

    #[test]
    fn path_normalization() {
        assert_eq!(c("/v2/"), Ok(Route::Registry));
        assert_eq!(c("/v2"), Ok(Route::Registry));
        assert_eq!(c("/v2/library/alpine/manifests/3.20"), Ok(Route::Registry));
        assert_eq!(c("/v1/search?q=x"), Ok(Route::Registry));
        assert_eq!(c("/_ping"), Ok(Route::Ping));
        assert_eq!(c("/v1/_ping"), Ok(Route::Ping));
        assert_eq!(c("/_berth/health"), Ok(Route::Health));
        assert_eq!(c("/"), Ok(Route::Unknown));
        assert_eq!(c("/v2x"), Ok(Route::Unknown));
        for bad in [
            "/v2/../v2/",
            "/_ping/../v2/",
            "//v2/",
            "/v2//x",
            "/v2/%2e%2e/x",
            "/v2/%2E%2e/x",
            "/v2/a%2fb",
            "/v2/./x",
            "/v2/a\\b",
            "http://evil/v2/",
            "*",
        ] {
            let parsed: Result<Uri, _> = bad.parse();
            if let Ok(u) = parsed {
                assert!(classify(Version::HTTP_11, &u).is_err(), "{bad}");
            }
        }
        // HTTP/2 targets always carry scheme and authority.
        let h2: Uri = "https://reg:5043/v2/".parse().unwrap();
        assert_eq!(classify(Version::HTTP_2, &h2), Ok(Route::Registry));
    }

    #[test]
    fn headers_are_rewritten() {
        let mut h = HeaderMap::new();
        h.insert("host", "evil".parse().unwrap());
        h.insert("authorization", "Basic eA==".parse().unwrap());
        h.insert("x-forwarded-user", "root".parse().unwrap());
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("expect", "100-continue".parse().unwrap());
        let client = ClientContext {
            peer_ip: "192.0.2.7".parse().unwrap(),
            peer_trusted: false,
        };
        rewrite_request_headers(
            &mut h,
            Some("reg:5043".parse().unwrap()),
            &client,
            Some("alice"),
            false,
        );
        assert_eq!(h["host"], "reg:5043");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-user"], "alice");
        for gone in ["authorization", "connection", "x-secret", "te", "expect"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.1".parse().unwrap());
        h.insert("x-forwarded-proto", "http".parse().unwrap());
        h.insert("authorization", "Basic eA==".parse().unwrap());
        let trusted = ClientContext {
            peer_ip: "10.0.0.2".parse().unwrap(),
            peer_trusted: true,
        };
        rewrite_request_headers(&mut h, None, &trusted, Some("bob"), true);
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.contains_key("authorization"));
    }
}
