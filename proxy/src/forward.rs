//! Forwarding: which route a request target is, the header rewrite towards the upstream and back, and the one
//! body wrapper ([`RelayBody`]) that streams (never collects) while counting bytes and enforcing idle timeouts and
//! size limits.

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

use crate::error::ProxyError;

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
    /// The web interface under `/ui/`, answered by the proxy (it asks the registry itself).
    Ui,
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
        p if crate::ui::is_ui_path(p) => Route::Ui,
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

/// Every body the proxy relays, request or response, in one wrapper: the one place where a byte of a body
/// passes through the proxy. It streams frames through unchanged (never collects), with the behaviours each
/// direction composes:
/// - [`count`](RelayBody::new): data bytes are added to a counter (access log, metrics);
/// - [`limit`](RelayBody::limit): fails past a size, flagging it;
/// - [`idle_timeout`](RelayBody::idle_timeout): fails when no frame arrives for a while the reader waits;
/// - [`split`](RelayBody::split): hands long data frames on in pieces (no copy);
/// - [`track`](RelayBody::track): reports how far a request body got to the timer waiting for the upstream's
///   answer, and which side failed;
/// - [`deferred`](RelayBody::deferred): a handle on a body kept in a shared slot until an upstream connection
///   first reads it (so a failed connection attempt leaves it untouched for the next replica); on first read
///   the handle becomes the body itself, so even then each byte is handled once. Behaviours go on the body in
///   the slot: a handle has none (checked in debug builds);
/// - [`on_drop`](RelayBody::on_drop): a callback when the body is dropped, finished or not.
pub struct RelayBody<B> {
    source: Source<B>,
    counter: Option<Counter>,
    limit: Option<(u64, Arc<AtomicBool>)>,
    idle: Option<(Duration, Pin<Box<Sleep>>, bool)>,
    progress: Option<Arc<Progress>>,
    on_drop: Option<OnDrop>,
    /// With `split`, data frames longer than this are handed on in pieces of this size.
    split: Option<usize>,
    /// The rest of a data frame being handed on in pieces.
    rest: Bytes,
    /// Data bytes of this body so far (what `limit` is checked against).
    passed: u64,
}

/// Where a [`RelayBody`] reads from.
enum Source<B> {
    Body(Pin<Box<B>>),
    /// A body in a shared slot, taken on first read.
    Deferred(DeferredSlot<B>),
}

/// A request body waiting for the upstream connection that reads it.
pub type DeferredSlot<B> = Arc<Mutex<Option<RelayBody<B>>>>;

impl<B> RelayBody<B> {
    /// Wrap `inner`, adding its data bytes to `counter`.
    pub fn new(inner: B, counter: Counter) -> Self {
        let mut body = Self::bare(Source::Body(Box::pin(inner)));
        body.counter = Some(counter);
        body
    }

    /// A handle reading the body in `slot` on first use (and becoming it).
    pub fn deferred(slot: DeferredSlot<B>) -> Self {
        Self::bare(Source::Deferred(slot))
    }

    /// A body with no behaviours.
    fn bare(source: Source<B>) -> Self {
        RelayBody {
            source,
            counter: None,
            limit: None,
            idle: None,
            progress: None,
            on_drop: None,
            split: None,
            rest: Bytes::new(),
            passed: 0,
        }
    }

    /// Hand data on in pieces of at most `max` bytes (no copy: the pieces share the frame's buffer).
    pub fn split(mut self, max: usize) -> Self {
        self.split = Some(max.max(1));
        self
    }

    /// Fail once more than `max` data bytes of this body went through, setting `exceeded`.
    pub fn limit(mut self, max: u64, exceeded: Arc<AtomicBool>) -> Self {
        self.limit = Some((max, exceeded));
        self
    }

    /// Fail when no frame arrives for `timeout` while the reader is waiting.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle = Some((timeout, Box::pin(tokio::time::sleep(timeout)), false));
        self
    }

    /// Report progress (and the client's failures) to `progress`.
    pub(crate) fn track(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Run `f` when the body is dropped.
    pub fn on_drop(mut self, f: OnDrop) -> Self {
        self.on_drop = Some(f);
        self
    }

    fn note(&self, f: impl FnOnce(&mut ProgressState)) {
        if let Some(p) = &self.progress {
            p.update(f);
        }
    }
}

impl<B> Drop for RelayBody<B> {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

/// The error a [`RelayBody`] fails with when no frame arrived within its idle timeout.
#[derive(Debug)]
pub struct BodyIdle;
impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("body idle timeout")
    }
}
impl std::error::Error for BodyIdle {}

/// The error a [`RelayBody`] fails with when its limit is exceeded.
#[derive(Debug)]
pub struct BodyTooLarge;
impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("body larger than the configured maximum")
    }
}
impl std::error::Error for BodyTooLarge {}

impl<B> Body for RelayBody<B>
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
        // A handle becomes the body in its slot (which may be a handle in turn).
        while let Source::Deferred(slot) = &this.source {
            debug_assert!(
                this.counter.is_none()
                    && this.limit.is_none()
                    && this.idle.is_none()
                    && this.progress.is_none()
                    && this.on_drop.is_none()
                    && this.split.is_none(),
                "behaviours belong on the body in the slot, not on its handle"
            );
            let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            match taken {
                Some(body) => *this = body,
                None => return Poll::Ready(Some(Err("request body already consumed".into()))),
            }
        }
        let frame = if !this.rest.is_empty() {
            let n = this.split.unwrap_or(usize::MAX).min(this.rest.len());
            Frame::data(this.rest.split_to(n))
        } else {
            let Source::Body(inner) = &mut this.source else {
                unreachable!("the loop above leaves no handle");
            };
            match inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some((_, _, waiting)) = &mut this.idle {
                        *waiting = false;
                    }
                    if let Some(data) = frame.data_ref() {
                        let n = data.len() as u64;
                        if let Some(c) = &this.counter {
                            c.fetch_add(n, Ordering::Relaxed);
                        }
                        this.passed = this.passed.saturating_add(n);
                        if let Some((max, exceeded)) = &this.limit {
                            if this.passed > *max {
                                exceeded.store(true, Ordering::Relaxed);
                                this.note(|s| {
                                    s.waiting_on_client = false;
                                    s.fault = Some(ProxyError::PayloadTooLarge);
                                });
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                            }
                        }
                    }
                    match (this.split, frame.into_data()) {
                        (Some(max), Ok(mut data)) if data.len() > max => {
                            this.rest = data.split_off(max);
                            Frame::data(data)
                        }
                        (_, Ok(data)) => Frame::data(data),
                        (_, Err(frame)) => frame,
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.note(|s| {
                        s.waiting_on_client = false;
                        s.fault = Some(ProxyError::ClientAborted);
                    });
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.note(|s| {
                        s.last = Instant::now();
                        s.waiting_on_client = false;
                        s.ended = true;
                    });
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if let Some((timeout, sleep, waiting)) = &mut this.idle {
                        if !*waiting {
                            *waiting = true;
                            sleep.as_mut().reset(Instant::now() + *timeout);
                        }
                        if sleep.as_mut().poll(cx).is_ready() {
                            this.note(|s| {
                                s.waiting_on_client = false;
                                s.fault = Some(ProxyError::ClientTimeout);
                            });
                            return Poll::Ready(Some(Err(Box::new(BodyIdle))));
                        }
                    }
                    this.note(|s| s.waiting_on_client = true);
                    return Poll::Pending;
                }
            }
        };
        // Every frame handed on, whole or a piece of one, leaves through here.
        if this.progress.is_some() {
            let ended = Body::is_end_stream(&*this);
            this.note(|s| {
                s.last = Instant::now();
                s.waiting_on_client = false;
                s.ended = ended;
            });
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Body(inner) => self.rest.is_empty() && inner.is_end_stream(),
            Source::Deferred(slot) => slot
                .lock()
                .map(|s| s.as_ref().is_some_and(|b| b.is_end_stream()))
                .unwrap_or(false),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = match &self.source {
            Source::Body(inner) => inner.size_hint(),
            Source::Deferred(slot) => {
                return slot
                    .lock()
                    .ok()
                    .and_then(|s| s.as_ref().map(|b| b.size_hint()))
                    .unwrap_or_default()
            }
        };
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower().saturating_add(rest));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// How far a request body got, as of its last frame.
#[derive(Debug, Clone)]
pub(crate) struct ProgressState {
    /// When the body last delivered a frame or ended (or was created).
    pub last: Instant,
    /// The body was polled and is waiting for the client to send more.
    pub waiting_on_client: bool,
    /// The whole body was handed to the upstream connection.
    pub ended: bool,
    /// The client's side of the body failed: too large, idle, or broken off.
    pub fault: Option<ProxyError>,
}

/// How far a request body got, shared between the body ([`RelayBody::track`]) and the timer waiting for the
/// upstream's answer.
#[derive(Debug)]
pub(crate) struct Progress(Mutex<ProgressState>);

impl Progress {
    /// `ended`: the body is empty (hyper will not poll it).
    pub fn new(ended: bool) -> Self {
        Progress(Mutex::new(ProgressState {
            last: Instant::now(),
            waiting_on_client: false,
            ended,
            fault: None,
        }))
    }

    pub fn state(&self) -> ProgressState {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut ProgressState)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn client_fault(&self) -> Option<ProxyError> {
        self.state().fault
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
            RelayBody::new(Full::new(Bytes::from(data.clone())), counter.clone()).split(16_375);
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

    /// A tracked 10-byte body with a limit, and what reports on it: its counter, progress and limit flag.
    #[allow(clippy::type_complexity)]
    fn ten_bytes_limited_to(
        limit: u64,
    ) -> (
        RelayBody<Full<Bytes>>,
        Counter,
        Arc<Progress>,
        Arc<AtomicBool>,
    ) {
        let counter: Counter = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Progress::new(false));
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = RelayBody::new(
            Full::new(Bytes::from_static(b"0123456789")),
            counter.clone(),
        )
        .limit(limit, exceeded.clone())
        .track(Arc::clone(&progress));
        (body, counter, progress, exceeded)
    }

    /// A deferred handle leaves its body in the slot until the first read (what a retry on the next replica
    /// relies on), then hands on the body's frames with the body's behaviours: its progress says `ended` with
    /// the last frame, before the final poll; a second handle finds the slot empty.
    #[tokio::test]
    async fn a_deferred_handle_becomes_its_body() {
        let (body, counter, progress, exceeded) = ten_bytes_limited_to(10);
        let slot: DeferredSlot<_> = Arc::new(Mutex::new(Some(body)));
        let mut first = RelayBody::deferred(Arc::clone(&slot));
        assert_eq!(first.size_hint().exact(), Some(10));
        assert!(!first.is_end_stream());
        assert!(slot.lock().unwrap().is_some(), "looking took the body");
        let data = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"0123456789");
        assert!(
            slot.lock().unwrap().is_none(),
            "reading left the body in the slot"
        );
        assert!(
            progress.state().ended,
            "the last frame did not say the body ended"
        );
        assert!(first.frame().await.is_none());
        assert_eq!(counter.load(Ordering::Relaxed), 10);
        assert!(!exceeded.load(Ordering::Relaxed));
        assert!(progress.client_fault().is_none());
        let second = RelayBody::deferred(slot);
        let err = second.collect().await.expect_err("the body was taken");
        assert_eq!(err.to_string(), "request body already consumed");
    }

    /// The limit counts the body's own bytes, also through a handle: past it, the error, the flag and the
    /// progress all say so.
    #[tokio::test]
    async fn the_limit_holds_through_a_handle() {
        let (body, counter, progress, exceeded) = ten_bytes_limited_to(9);
        let handle = RelayBody::deferred(Arc::new(Mutex::new(Some(body))));
        let err = handle.collect().await.expect_err("over the limit");
        assert!(err.downcast_ref::<BodyTooLarge>().is_some());
        assert!(exceeded.load(Ordering::Relaxed));
        assert_eq!(progress.client_fault(), Some(ProxyError::PayloadTooLarge));
        assert_eq!(counter.load(Ordering::Relaxed), 10);
    }

    /// Pieces of a split frame report progress like whole frames: the last piece says the body ended.
    #[tokio::test]
    async fn split_pieces_report_progress() {
        let progress = Arc::new(Progress::new(false));
        let mut body = RelayBody::new(
            Full::new(Bytes::from(vec![7u8; 40_000])),
            Arc::new(AtomicU64::new(0)),
        )
        .split(16_375)
        .track(Arc::clone(&progress));
        let mut got = 0;
        for _ in 0..3 {
            assert!(!progress.state().ended);
            got += body
                .frame()
                .await
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap()
                .len();
        }
        assert_eq!(got, 40_000);
        assert!(
            progress.state().ended,
            "the last piece did not say the body ended"
        );
        assert!(body.frame().await.is_none());
    }

    /// A body that stops arriving fails with [`BodyIdle`] once its idle timeout passes with nothing sent, also
    /// after a frame went through, and its progress names the client as the one at fault.
    #[tokio::test]
    async fn an_idle_body_times_out() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let stream = http_body_util::StreamBody::new(tokio_stream_of(rx));
        let progress = Arc::new(Progress::new(false));
        let counter: Counter = Arc::new(AtomicU64::new(0));
        let mut body = RelayBody::new(stream, counter.clone())
            .idle_timeout(Duration::from_millis(50))
            .track(Arc::clone(&progress));
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            let first = body.frame().await.unwrap().unwrap();
            assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"abc"));
            body.frame().await
        })
        .await
        .expect("the idle timeout never fired");
        let err = got.unwrap().expect_err("idle");
        assert!(err.downcast_ref::<BodyIdle>().is_some());
        assert_eq!(counter.load(Ordering::Relaxed), 3);
        assert_eq!(progress.client_fault(), Some(ProxyError::ClientTimeout));
        drop(tx);
    }

    /// A receiver as a stream of frames.
    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
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
