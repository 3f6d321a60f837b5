//! Early errors that reach the client: a request body a handler answered without reading to its end is thrown
//! away in the background (up to a bound) so the connection can serve the retry, and a closed connection
//! lingers (write side shut, whatever the client still sends read and dropped, for a bounded time) so unread
//! bytes in the socket never make the kernel send a reset that destroys the answer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Most of an unread request body thrown away to keep the connection open.
pub const DISCARD_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Most time spent throwing a body away, or lingering on a closed connection.
pub const LINGERING_TIME: Duration = Duration::from_secs(30);
/// Longest pause in what the client sends during that time.
pub const LINGERING_TIMEOUT: Duration = Duration::from_secs(5);

/// A request body that, when its handler drops it before its end, is read to its end and thrown away in the
/// background (at most [`DISCARD_MAX_BYTES`], within [`LINGERING_TIME`] and [`LINGERING_TIMEOUT`]), so that
/// the connection survives for the client's next request. A body the client only announced with
/// `Expect: 100-continue` and that was never read is not asked for.
pub struct RequestBody {
    inner: Option<Incoming>,
    read: bool,
    expects_continue: bool,
}

impl RequestBody {
    /// Wrap `inner`; `expects_continue` when the request carried `Expect: 100-continue`.
    pub fn new(inner: Incoming, expects_continue: bool) -> Self {
        RequestBody {
            inner: Some(inner),
            read: false,
            expects_continue,
        }
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
        match this.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
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
            rt.spawn(discard_body(body, DISCARD_MAX_BYTES));
        }
    }
}

/// Reads and drops the rest of `body`, at most `max` bytes within the lingering bounds. True when it ended.
pub async fn discard_body(mut body: Incoming, max: u64) -> bool {
    let deadline = Instant::now() + LINGERING_TIME;
    let mut total: u64 = 0;
    loop {
        let wait = deadline.min(Instant::now() + LINGERING_TIMEOUT);
        match tokio::time::timeout_at(wait, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    total = total.saturating_add(data.len() as u64);
                    if total > max {
                        return false;
                    }
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// A client connection that lingers when dropped: its write side is shut and what the client still sends is
/// read and dropped until it closes or the lingering bounds are over.
pub struct Lingering(Option<TcpStream>);

impl Lingering {
    /// Wrap an accepted connection.
    pub fn new(tcp: TcpStream) -> Self {
        Lingering(Some(tcp))
    }

    fn stream(&mut self) -> std::io::Result<Pin<&mut TcpStream>> {
        match self.0.as_mut() {
            Some(s) => Ok(Pin::new(s)),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(tcp) = self.0.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(linger(tcp));
        }
    }
}

async fn linger(mut tcp: TcpStream) {
    let deadline = Instant::now() + LINGERING_TIME;
    if tokio::time::timeout_at(deadline, tcp.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 8192];
    loop {
        let wait = deadline.min(Instant::now() + LINGERING_TIMEOUT);
        match tokio::time::timeout_at(wait, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => return,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
