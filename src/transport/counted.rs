//! A client socket that counts the bytes it reads and writes into its tenant's
//! [`TenantStats`] (once the tenant is known): one relaxed atomic add per read or write
//! call, nothing per message.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tenant::TenantStats;

pub struct Counted<S> {
    inner: S,
    stats: Option<Arc<TenantStats>>,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> Self {
        Counted { inner, stats: None }
    }

    /// From now on, bytes go to `stats`.
    pub fn count_into(&mut self, stats: Arc<TenantStats>) {
        self.stats = Some(stats);
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: crate::transport::stream::Parkable> crate::transport::stream::Parkable for Counted<S> {
    fn parkable(&self) -> bool {
        self.inner.parkable()
    }

    fn into_std(self) -> io::Result<std::net::TcpStream> {
        self.inner.into_std()
    }
}

/// The client's address, where the socket has one (for `SHOW CLIENTS`).
pub trait Peer {
    fn peer(&self) -> Option<std::net::SocketAddr>;
}

impl Peer for tokio::net::TcpStream {
    fn peer(&self) -> Option<std::net::SocketAddr> {
        self.peer_addr().ok()
    }
}

impl Peer for tokio::io::DuplexStream {
    fn peer(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

impl<S: Peer> Peer for Counted<S> {
    fn peer(&self) -> Option<std::net::SocketAddr> {
        self.inner.peer()
    }
}

impl<S: crate::transport::stream::Readiness> crate::transport::stream::Readiness for Counted<S> {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        self.inner.readable()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(stats)) = (&poll, &this.stats) {
            stats.add_received(buf.filled().len() - before);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(stats)) = (&poll, &this.stats) {
            stats.add_sent(*n);
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(stats)) = (&poll, &this.stats) {
            stats.add_sent(*n);
        }
        poll
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
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_only_once_told_where() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut counted = Counted::new(a);
        counted.write_all(b"before").await.unwrap();
        let stats = Arc::new(TenantStats::default());
        counted.count_into(stats.clone());
        counted.write_all(b"hello").await.unwrap();
        b.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        counted.read_exact(&mut buf).await.unwrap();
        assert_eq!(stats.bytes_sent.load(Ordering::Relaxed), 5);
        assert_eq!(stats.bytes_received.load(Ordering::Relaxed), 3);
    }
}
