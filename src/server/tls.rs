//! TLS to servers, per backend `sslmode` (as libpq's): an SSLRequest, then the handshake
//! with SNI set to the backend's host name (not for IP addresses) and the certificate
//! checked per `sslmode`. [`ServerStream`] is the connection's stream either way; the
//! plaintext path pays one `match` per read or write call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{EndpointConfig, SslMode};

/// SSLRequest: length 8, code 80877103.
/// <https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-SSLREQUEST>
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A server connection's stream.
pub enum ServerStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Why TLS with a server could not be set up: the reason the client and the log are given.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("the server does not support TLS, but sslmode is \"{0}\"")]
    NotSupported(&'static str),
    #[error("the server answered the SSLRequest with {0:?}")]
    BadAnswer(char),
    #[error("invalid server name {0:?} for TLS")]
    BadName(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("I/O error before TLS: {0}")]
    Io(#[from] io::Error),
}

impl ServerStream {
    /// Starts TLS on `tcp` per the endpoint's `sslmode` (plaintext for `disable`, and for
    /// `prefer` when the server declines).
    pub async fn negotiate(
        mut tcp: TcpStream,
        endpoint: &EndpointConfig,
    ) -> Result<ServerStream, ServerTlsError> {
        let Some(config) = endpoint.tls.client.clone() else {
            return Ok(ServerStream::Tcp(tcp));
        };
        tcp.write_all(&SSL_REQUEST).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {}
            b'N' if endpoint.tls.mode == SslMode::Prefer => return Ok(ServerStream::Tcp(tcp)),
            b'N' => return Err(ServerTlsError::NotSupported(endpoint.tls.mode.as_str())),
            other => return Err(ServerTlsError::BadAnswer(other as char)),
        }
        // Bytes after the 'S' before the handshake would be injected plaintext (CVE-2021-23222).
        let mut probe = [0u8; 1];
        if tcp.try_read(&mut probe).is_ok() {
            return Err(ServerTlsError::BadAnswer(probe[0] as char));
        }
        let name = ServerName::try_from(endpoint.host.clone())
            .map_err(|_| ServerTlsError::BadName(endpoint.host.clone()))?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(ServerTlsError::Handshake)?;
        Ok(ServerStream::Tls(Box::new(tls)))
    }

    /// Whether an idle connection has said nothing (any bytes on an idle connection, a
    /// FATAL or EOF or a TLS alert, mean it is gone).
    pub fn quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        let tcp = match self {
            ServerStream::Tcp(tcp) => tcp,
            ServerStream::Tls(tls) => tls.get_ref().0,
        };
        matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Best effort, never blocks: a Terminate on a plaintext connection (a TLS one just
    /// closes).
    pub fn try_terminate(&self) {
        if let ServerStream::Tcp(tcp) = self {
            let _ = tcp.try_write(crate::protocol::encode::TERMINATE);
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ServerStream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ServerStream::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            ServerStream::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Tcp(tcp) => tcp.is_write_vectored(),
            ServerStream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            ServerStream::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ServerStream::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}
