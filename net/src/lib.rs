//! Connection helpers both berth processes use so that an early answer reaches the client: a request body
//! answered without being read is thrown away (up to a bound) so the connection can serve the retry, and a
//! connection being closed lingers (its write side shut, whatever the client still sends read and dropped, for a
//! bounded time) so that unread bytes in the socket never make the kernel send a reset that destroys the answer
//! already sent (nginx's `discard_body` and `lingering_close`). Also the metric labels both share
//! ([`labels`]) and the plain-HTTP listener each keeps for operators ([`operator`]).

pub mod labels;
pub mod operator;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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
/// (dropping it then makes the connection close after its answer).
pub async fn discard_body<B>(mut body: B, max: u64, bounds: LingerBounds) -> bool
where
    B: Body + Unpin,
{
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

/// Shuts the write side of `tcp`, then reads and drops what arrives until the peer closes or the bounds are over.
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

/// A client connection that lingers when dropped: the stream (plain TCP, or TLS over it) is turned back into
/// its TCP socket, whose write side is shut (after the TLS close_notify, when the HTTP layer shut the stream
/// down itself) and whose raw bytes are read and dropped until the client closes, pauses longer than
/// `bounds.idle`, or `bounds.time` is over. `hold` (a connection slot, say) is dropped only then.
pub struct Lingering<S> {
    stream: Option<S>,
    into_tcp: fn(S) -> TcpStream,
    bounds: LingerBounds,
    hold: Option<Box<dyn Send>>,
}

impl<S> Lingering<S> {
    /// Wrap `stream`; `into_tcp` gives its TCP socket back, `hold` is kept until lingering is over.
    pub fn new(
        stream: S,
        into_tcp: fn(S) -> TcpStream,
        bounds: LingerBounds,
        hold: Option<Box<dyn Send>>,
    ) -> Self {
        Lingering {
            stream: Some(stream),
            into_tcp,
            bounds,
            hold,
        }
    }

    fn stream(&mut self) -> std::io::Result<Pin<&mut S>>
    where
        S: Unpin,
    {
        match self.stream.as_mut() {
            Some(s) => Ok(Pin::new(s)),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
        }
    }
}

impl<S> Drop for Lingering<S> {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let tcp = (self.into_tcp)(stream);
        let hold = self.hold.take();
        let bounds = self.bounds;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                linger(tcp, bounds).await;
                drop(hold);
            });
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
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
        let b = LingerBounds {
            time: Duration::from_secs(30),
            idle: Duration::from_millis(200),
        };
        let started = std::time::Instant::now();
        assert!(!discard_body(stalled, 1 << 20, b).await);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// A dropped connection shuts its write side at once (the peer reads its end), keeps reading what the peer
    /// still sends, and gives its hold back once the peer closes.
    #[tokio::test]
    async fn a_dropped_connection_lingers_until_the_peer_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (held_tx, mut held_rx) = tokio::sync::mpsc::channel::<()>(1);
        let conn = Lingering::new(
            server,
            |s| s,
            LingerBounds {
                time: Duration::from_secs(30),
                idle: Duration::from_secs(30),
            },
            Some(Box::new(held_tx)),
        );
        drop(conn);
        let mut buf = [0u8; 16];
        assert_eq!(peer.read(&mut buf).await.unwrap(), 0, "write side not shut");
        // Still lingering: what the peer sends is taken (no reset), and the hold is kept.
        peer.write_all(&[1u8; 100_000]).await.unwrap();
        assert!(matches!(
            held_rx.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty)
        ));
        drop(peer);
        // The peer closed: lingering ends and the hold is dropped (the channel closes).
        assert!(
            tokio::time::timeout(Duration::from_secs(10), held_rx.recv())
                .await
                .unwrap()
                .is_none()
        );
    }
}
