//! A read-ahead buffer between a client's TCP socket and TLS.
//!
//! rustls asks its transport for at most 4 KiB more than it holds (its record buffer grows in 4 KiB steps up
//! to one record), so an upload over TLS cost one `recv` for every 4 to 16 KiB: 70,000 system calls for a
//! 1 GiB push, each a wake-up of the sending side on a loopback or LAN. Reading the socket [`CAPACITY`] bytes
//! at a time and handing rustls its small reads from memory takes one `recv` per four records or so.
//!
//! The buffer exists only while it holds data or the socket has more: it goes back to a small shared pool
//! whenever the socket has nothing to give (`Pending`), so an idle connection holds none of it, and a busy one
//! takes a buffer from the pool instead of allocating (allocating and freeing 64 KiB at every pause made the
//! allocator give memory back to the system and fault it in again: 8 % of the proxy's CPU in page faults).

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at a time: about four full TLS records.
const CAPACITY: usize = 64 * 1024;

/// Buffers not in use, kept for the next connection that has data (at most [`POOL_MAX`]).
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Buffers kept in the pool: enough for as many busy connections as a machine has cores, and more.
const POOL_MAX: usize = 64;

/// A buffer that goes back to the pool when dropped.
#[derive(Default)]
struct Pooled(Vec<u8>);

impl Pooled {
    fn take() -> Pooled {
        let pooled = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
        Pooled(pooled.unwrap_or_else(|| vec![0; CAPACITY]))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if buf.len() == CAPACITY {
            let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < POOL_MAX {
                pool.push(buf);
            }
        }
    }
}

/// `inner` with its reads buffered; writes pass straight through.
pub struct ReadAhead<T> {
    inner: T,
    /// Empty while released; else `CAPACITY` bytes of which `start..end` are unread.
    buf: Pooled,
    start: usize,
    end: usize,
}

impl<T> ReadAhead<T> {
    /// Wraps `inner`; nothing is allocated until the first small read.
    pub fn new(inner: T) -> Self {
        ReadAhead {
            inner,
            buf: Pooled::default(),
            start: 0,
            end: 0,
        }
    }

    /// The socket back; bytes read ahead and not yet asked for are dropped.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            // Nothing held. A read at least as large as the buffer needs no buffer.
            if out.remaining() >= CAPACITY {
                this.buf = Pooled::default();
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = Pooled::take();
            }
            let mut rb = ReadBuf::new(&mut this.buf.0);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    this.start = 0;
                    this.end = rb.filled().len();
                    if this.end == 0 {
                        // End of stream.
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    this.buf = Pooled::default();
                    return Poll::Pending;
                }
            }
        }
        let n = out.remaining().min(this.end - this.start);
        out.put_slice(&this.buf.0[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads, large reads and reads across refills give back the stream exactly, and the buffer is
    /// released while the peer sends nothing.
    #[tokio::test]
    async fn reads_come_back_whole_and_idle_holds_nothing() {
        let (a, mut b) = tokio::io::duplex(256 * 1024);
        let mut r = ReadAhead::new(a);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            b.write_all(&sent).await.unwrap();
            b
        });
        let mut got = Vec::new();
        let mut sizes = [1usize, 4096, 100, CAPACITY + 5, 16 * 1024 + 29]
            .into_iter()
            .cycle();
        while got.len() < data.len() {
            let mut chunk = vec![0; sizes.next().unwrap()];
            let n = r.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == data, "the bytes read differ from the bytes sent");
        let mut b = writer.await.unwrap();
        // Nothing more to read: the poll is pending, and the buffer is gone.
        let mut one = [0u8; 1];
        assert!(
            r.read(&mut one).now_or_never().is_none(),
            "a read with nothing sent"
        );
        assert!(r.buf.is_empty());
        b.write_all(b"x").await.unwrap();
        assert_eq!(r.read(&mut one).await.unwrap(), 1);
        assert_eq!(&one, b"x");
        drop(b);
        assert_eq!(r.read(&mut one).await.unwrap(), 0);
    }
}
