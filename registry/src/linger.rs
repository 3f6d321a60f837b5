//! Early errors that reach the client: a request body a handler answered without reading to its end is thrown
//! away in the background (up to a bound) so the connection can serve the retry, and a closed connection
//! lingers (write side shut, whatever the client still sends read and dropped, for a bounded time) so unread
//! bytes in the socket never make the kernel send a reset that destroys the answer. The mechanics are in
//! `berth-net`, shared with berth-proxy.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use berth_net::{LingerBounds, Lingering};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::net::TcpStream;

/// Most of an unread request body thrown away to keep the connection open.
pub const DISCARD_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Most time spent throwing a body away, or lingering on a closed connection (30 s), and the longest pause in
/// what the client sends during that time (5 s): nginx's `lingering_time` and `lingering_timeout`.
pub const BOUNDS: LingerBounds = LingerBounds {
    time: Duration::from_secs(30),
    idle: Duration::from_secs(5),
};

/// A client connection that lingers when closed (see [`berth_net::Lingering`]).
pub fn lingering(tcp: TcpStream) -> Lingering<TcpStream> {
    Lingering::new(tcp, |tcp| tcp, BOUNDS, None)
}

/// A request body that, when its handler drops it before its end, is read to its end and thrown away in the
/// background (at most [`DISCARD_MAX_BYTES`], within [`BOUNDS`]), so that
/// the connection survives for the client's next request. A body the client only announced with
/// `Expect: 100-continue` and that was never read is not asked for.
pub struct RequestBody {
    inner: Option<Incoming>,
    read: bool,
    expects_continue: bool,
    received: Option<Arc<AtomicU64>>,
}

impl RequestBody {
    /// Wrap `inner`; `expects_continue` when the request carried `Expect: 100-continue`.
    pub fn new(inner: Incoming, expects_continue: bool) -> Self {
        RequestBody {
            inner: Some(inner),
            read: false,
            expects_continue,
            received: None,
        }
    }

    /// Adds the size of every data frame read to `received`.
    pub fn counting(mut self, received: Arc<AtomicU64>) -> Self {
        self.received = Some(received);
        self
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        this.read = true;
        let Some(b) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(b).poll_frame(cx);
        if let (Some(n), Poll::Ready(Some(Ok(frame)))) = (&this.received, &polled) {
            if let Some(data) = frame.data_ref() {
                n.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() || (self.expects_continue && !self.read) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(berth_net::discard_body(body, DISCARD_MAX_BYTES, BOUNDS));
        }
    }
}
