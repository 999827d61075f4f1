//! TLS with clients. A client's socket is a [`ClientSocket`]: plain TCP until the client asks
//! for TLS (an SSLRequest answered `S`, or PostgreSQL 17's direct TLS: a ClientHello as its
//! first bytes), then upgraded in place. What the handshake tells the session (the server
//! name, for SNI tenant naming; the certificate, for channel binding) stays with the socket.
//!
//! The plaintext path pays one `match` per read or write call, nothing per message. A TLS
//! session never parks (its keys live in the process, not in the socket).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConnection;
use tokio_rustls::TlsAcceptor;

use super::counted::{Counted, Peer};
use super::stream::{Parkable, Readiness};
use crate::config::tls::ALPN_POSTGRESQL;
use crate::config::TlsAcceptorConfig;

/// The first byte of a TLS record carrying a handshake message: a client that starts with it
/// speaks TLS directly (PostgreSQL 17's `sslnegotiation=direct`). A startup packet starts with
/// its length, whose first byte is 0.
pub const TLS_HANDSHAKE: u8 = 0x16;

/// A client's socket: plain TCP or TLS over it.
pub enum ClientSocket {
    Tcp(TcpStream),
    Tls(Box<TlsClient>),
    /// Only after an upgrade failed: reads see EOF, writes fail.
    Gone,
}

/// A client on TLS.
pub struct TlsClient {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    /// The certificate it was accepted with (a reload may have loaded another since): its
    /// channel binding is this one's.
    pub config: Arc<TlsAcceptorConfig>,
    /// The server name the client asked for (SNI), if any.
    pub server_name: Option<Box<str>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("direct TLS without ALPN \"postgresql\"")]
    NoAlpn,
    #[error("this connection cannot start TLS")]
    Unsupported,
}

/// Sockets a session can upgrade to TLS, and ask about it.
pub trait StartTls {
    /// Whether [`StartTls::start_tls`] may be called (a plain TCP socket).
    fn can_start_tls(&self) -> bool;

    /// Runs the server side of a TLS handshake. `prefix`: bytes of the client's first flight
    /// already read (direct TLS); `direct`: ALPN `postgresql` is then required, as
    /// PostgreSQL requires it.
    fn start_tls(
        &mut self,
        config: Arc<TlsAcceptorConfig>,
        prefix: &[u8],
        direct: bool,
    ) -> impl std::future::Future<Output = Result<(), TlsError>> + Send;

    /// The TLS session, if the client is on TLS.
    fn tls(&self) -> Option<&TlsClient>;
}

impl StartTls for ClientSocket {
    fn can_start_tls(&self) -> bool {
        matches!(self, ClientSocket::Tcp(_))
    }

    async fn start_tls(
        &mut self,
        config: Arc<TlsAcceptorConfig>,
        prefix: &[u8],
        direct: bool,
    ) -> Result<(), TlsError> {
        let ClientSocket::Tcp(tcp) = std::mem::replace(self, ClientSocket::Gone) else {
            return Err(TlsError::Unsupported);
        };
        let acceptor = TlsAcceptor::from(config.server.clone());
        let mut fed = Ok(());
        let accept = acceptor.accept_with(tcp, |conn| fed = feed(conn, prefix));
        fed.map_err(TlsError::Handshake)?;
        let stream = accept.await.map_err(TlsError::Handshake)?;
        let conn = stream.get_ref().1;
        if direct && conn.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            return Err(TlsError::NoAlpn);
        }
        let server_name = conn.server_name().map(Box::from);
        *self = ClientSocket::Tls(Box::new(TlsClient {
            stream,
            config,
            server_name,
        }));
        Ok(())
    }

    fn tls(&self) -> Option<&TlsClient> {
        match self {
            ClientSocket::Tls(t) => Some(t),
            _ => None,
        }
    }
}

/// Hands the bytes of the client's first flight already read to rustls.
fn feed(conn: &mut ServerConnection, mut prefix: &[u8]) -> io::Result<()> {
    while !prefix.is_empty() {
        conn.read_tls(&mut prefix)?;
        conn.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    Ok(())
}

/// Sockets that never do TLS (tests' in-memory streams, a bare `TcpStream`).
macro_rules! no_tls {
    ($($t:ty),*) => {$(
        impl StartTls for $t {
            fn can_start_tls(&self) -> bool {
                false
            }

            async fn start_tls(
                &mut self,
                _config: Arc<TlsAcceptorConfig>,
                _prefix: &[u8],
                _direct: bool,
            ) -> Result<(), TlsError> {
                Err(TlsError::Unsupported)
            }

            fn tls(&self) -> Option<&TlsClient> {
                None
            }
        }
    )*};
}
no_tls!(TcpStream, tokio::io::DuplexStream);

impl<S: StartTls + Send> StartTls for Counted<S> {
    fn can_start_tls(&self) -> bool {
        self.inner().can_start_tls()
    }

    fn start_tls(
        &mut self,
        config: Arc<TlsAcceptorConfig>,
        prefix: &[u8],
        direct: bool,
    ) -> impl std::future::Future<Output = Result<(), TlsError>> + Send {
        self.inner_mut().start_tls(config, prefix, direct)
    }

    fn tls(&self) -> Option<&TlsClient> {
        self.inner().tls()
    }
}

impl Readiness for ClientSocket {
    async fn readable(&self) -> io::Result<()> {
        match self {
            ClientSocket::Tcp(tcp) => tcp.readable().await,
            // rustls may hold decrypted bytes the socket no longer shows: read at once.
            ClientSocket::Tls(_) | ClientSocket::Gone => Ok(()),
        }
    }
}

impl Parkable for ClientSocket {
    fn parkable(&self) -> bool {
        matches!(self, ClientSocket::Tcp(_))
    }

    fn into_std(self) -> io::Result<std::net::TcpStream> {
        match self {
            ClientSocket::Tcp(tcp) => tcp.into_std(),
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a TLS session cannot be parked",
            )),
        }
    }
}

impl Peer for ClientSocket {
    fn peer(&self) -> Option<std::net::SocketAddr> {
        match self {
            ClientSocket::Tcp(tcp) => tcp.peer_addr().ok(),
            ClientSocket::Tls(t) => t.stream.get_ref().0.peer_addr().ok(),
            ClientSocket::Gone => None,
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed")
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientSocket::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ClientSocket::Tls(t) => Pin::new(&mut t.stream).poll_read(cx, buf),
            ClientSocket::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientSocket::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ClientSocket::Tls(t) => Pin::new(&mut t.stream).poll_write(cx, buf),
            ClientSocket::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientSocket::Tcp(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            ClientSocket::Tls(t) => Pin::new(&mut t.stream).poll_write_vectored(cx, bufs),
            ClientSocket::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientSocket::Tcp(tcp) => tcp.is_write_vectored(),
            ClientSocket::Tls(t) => t.stream.is_write_vectored(),
            ClientSocket::Gone => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientSocket::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            ClientSocket::Tls(t) => Pin::new(&mut t.stream).poll_flush(cx),
            ClientSocket::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientSocket::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ClientSocket::Tls(t) => Pin::new(&mut t.stream).poll_shutdown(cx),
            ClientSocket::Gone => Poll::Ready(Ok(())),
        }
    }
}
