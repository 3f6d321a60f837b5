//! Early answers that reach the client: a request body the proxy answered without reading is thrown away (up to
//! a bound) so the connection can serve the retry, and a connection the proxy closes lingers (its write side
//! shut, whatever the client still sends read and dropped, for a bounded time) so that unread data in the
//! socket never makes the kernel send a reset that destroys the answer already sent.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

/// Bounds on throwing away unread data: total time and longest pause between reads.
#[derive(Debug, Clone, Copy)]
pub struct LingerBounds {
    /// Most time spent in all (nginx `lingering_time`).
    pub time: Duration,
    /// Longest wait for the next piece (nginx `lingering_timeout`).
    pub idle: Duration,
}

/// Reads and drops the rest of `body`, at most `max` bytes within `bounds`. True when the body ended within
/// the bounds (the connection can then serve another request); false when it was cut, failed or is too long
/// (dropping it makes the connection close after its answer).
pub async fn discard_body<B>(body: B, max: u64, bounds: LingerBounds) -> bool
where
    B: Body + Unpin,
{
    let mut body = body;
    let deadline = Instant::now() + bounds.time;
    let mut total: u64 = 0;
    loop {
        let wait = deadline.min(Instant::now() + bounds.idle);
        match tokio::time::timeout_at(wait, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    total = total.saturating_add(bytes::Buf::remaining(data) as u64);
                    if total > max {
                        return false;
                    }
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// The client connection's TLS stream, which lingers when dropped: the TCP write side is shut (after the TLS
/// close_notify, when the HTTP layer shut the stream down itself) and the raw bytes the client still sends are
/// read and dropped until it closes, pauses longer than `bounds.idle`, or `bounds.time` is over. The
/// connection's slot (its permit) is given back only then, so lingering connections count against
/// `max_connections`.
pub struct Lingering {
    stream: Option<TlsStream<TcpStream>>,
    bounds: LingerBounds,
    permit: Option<OwnedSemaphorePermit>,
}

impl Lingering {
    /// Wrap `stream`, holding the connection slot `permit` until lingering is over.
    pub fn new(
        stream: TlsStream<TcpStream>,
        bounds: LingerBounds,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Lingering {
            stream: Some(stream),
            bounds,
            permit: Some(permit),
        }
    }

    fn stream(&mut self) -> std::io::Result<Pin<&mut TlsStream<TcpStream>>> {
        match self.stream.as_mut() {
            Some(s) => Ok(Pin::new(s)),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let (tcp, _) = stream.into_inner();
        let permit = self.permit.take();
        let bounds = self.bounds;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                linger(tcp, bounds).await;
                drop(permit);
            });
        }
    }
}

/// Shut the write side of `tcp`, then read and drop what arrives until the peer closes or the bounds are over.
pub async fn linger(mut tcp: TcpStream, bounds: LingerBounds) {
    let deadline = Instant::now() + bounds.time;
    if tokio::time::timeout_at(deadline, tcp.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 8192];
    loop {
        let wait = deadline.min(Instant::now() + bounds.idle);
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
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::StreamBody;

    fn bounds() -> LingerBounds {
        LingerBounds {
            time: Duration::from_secs(5),
            idle: Duration::from_secs(1),
        }
    }

    fn body_of(chunks: usize, size: usize) -> impl Body<Data = Bytes> + Unpin {
        let chunk = Bytes::from(vec![7u8; size]);
        StreamBody::new(futures_util::stream::iter((0..chunks).map(move |_| {
            Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone()))
        })))
    }

    #[tokio::test]
    async fn a_body_within_the_bound_is_thrown_away_to_its_end() {
        assert!(discard_body(body_of(4, 1000), 4000, bounds()).await);
        assert!(!discard_body(body_of(5, 1000), 4000, bounds()).await);
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_is_cut_after_the_pause_bound() {
        let stalled = StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::io::Error>,
        >());
        let started = std::time::Instant::now();
        let b = LingerBounds {
            time: Duration::from_secs(30),
            idle: Duration::from_millis(200),
        };
        assert!(!discard_body(stalled, 1 << 20, b).await);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
