//! A client connection that reads and writes whole messages. Deliberately not `AsyncRead`:
//! sessions see frames, and the linked loop reaches into the buffers to forward without copying.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::bufpool;
use crate::protocol::encode::{self, ErrorInfo};
use crate::protocol::{FrameError, FrameScanner, Scanned};

/// Waiting for a socket to become readable without holding a buffer (so idle clients cost
/// little memory). Streams without such a notion just return at once.
pub trait Readiness {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
}

impl Readiness for tokio::net::TcpStream {
    async fn readable(&self) -> io::Result<()> {
        tokio::net::TcpStream::readable(self).await
    }
}

impl Readiness for tokio::io::DuplexStream {
    async fn readable(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Sockets an idle session can hand to the park lot ([`super::park`]).
pub trait Parkable: Sized {
    fn parkable(&self) -> bool;
    /// The plain socket, out of tokio's reactor (only called when `parkable`).
    fn into_std(self) -> io::Result<std::net::TcpStream>;
}

impl Parkable for tokio::net::TcpStream {
    fn parkable(&self) -> bool {
        true
    }

    fn into_std(self) -> io::Result<std::net::TcpStream> {
        tokio::net::TcpStream::into_std(self)
    }
}

impl Parkable for tokio::io::DuplexStream {
    fn parkable(&self) -> bool {
        false
    }

    fn into_std(self) -> io::Result<std::net::TcpStream> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "an in-memory stream cannot be parked",
        ))
    }
}

/// See [`ClientStream::reserve_write`].
const LOGIN_WRITE_ROOM: usize = 1024;

/// Largest authentication message (PasswordMessage, SASLInitialResponse, SASLResponse) a
/// client may send, length field included: PostgreSQL's `PG_MAX_AUTH_TOKEN_LENGTH`. Before
/// login nothing larger is ever buffered (the startup packet has its own 10,000-byte cap,
/// [`crate::protocol::startup::MAX_STARTUP_PACKET`]).
pub const MAX_AUTH_MESSAGE: usize = 65_535;

pub struct ClientStream<S> {
    pub io: S,
    /// Unconsumed bytes read from the client.
    pub rbuf: BytesMut,
    /// Messages the proxy composed for the client, not yet written.
    pub wbuf: BytesMut,
    /// Scratch for what goes to the linked server (reused; see `session::linked`).
    pub sbuf: BytesMut,
    pub scanner: FrameScanner,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("client closed the connection")]
    Closed,
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A message of another type than the stage allows (refused at its header).
    #[error("expected password response, got message type {0}")]
    Unexpected(u8),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientStream<S> {
    /// `max_message`: the largest message [`read_message`](Self::read_message) (or the
    /// linked relay) buffers whole; a stage sets its own with
    /// [`set_max_message`](Self::set_max_message).
    pub fn new(io: S, max_message: usize) -> Self {
        ClientStream {
            io,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            sbuf: BytesMut::new(),
            scanner: FrameScanner::new(max_message),
        }
    }

    /// Waits for the next bytes while idle. With nothing buffered the client's buffers go
    /// back to the thread's free list first ([`bufpool`]): an idle client holds none.
    pub async fn fill_idle(&mut self) -> io::Result<usize>
    where
        S: Readiness,
    {
        if self.rbuf.is_empty() {
            self.give_buffers();
            self.io.readable().await?;
        }
        self.fill().await
    }

    /// Makes room in `wbuf` for the messages of a login (the largest is AuthenticationOk +
    /// ParameterStatus block, about 0.5 KiB) in one allocation instead of growing it step
    /// by step. Not a free-list buffer: logins in flight hold no more than they need.
    pub fn reserve_write(&mut self) {
        self.wbuf.reserve(LOGIN_WRITE_ROOM);
    }

    /// Reads more bytes into `rbuf`; `Ok(0)` is EOF.
    pub async fn fill(&mut self) -> io::Result<usize> {
        bufpool::room(&mut self.rbuf, 1024);
        self.io.read_buf(&mut self.rbuf).await
    }

    /// A client that has yet to log in: messages capped at [`MAX_AUTH_MESSAGE`] (the
    /// startup packet is capped by its own decoder).
    pub fn for_login(io: S) -> Self {
        // The scanner counts the tag byte too; PostgreSQL's limit is on the length field.
        Self::new(io, MAX_AUTH_MESSAGE + 1)
    }

    /// The largest message the stream buffers whole from now on (per stage: 65,535 bytes
    /// while authenticating, `max_message_size` once logged in).
    pub fn set_max_message(&mut self, max_message: usize) {
        self.scanner.set_max_message(max_message);
    }

    /// Reads one whole message of type `tag` during authentication. Another type, or a
    /// length over the stage's limit, is refused at the message's header: its body is never
    /// read, let alone buffered.
    pub async fn read_expected(&mut self, tag: u8) -> Result<BytesMut, StreamError> {
        loop {
            if let Some(&first) = self.rbuf.first() {
                if first != tag {
                    return Err(StreamError::Unexpected(first));
                }
            }
            if let Some(Scanned::Message { len, .. }) = self.scanner.scan(&self.rbuf, |_| true)? {
                return Ok(self.rbuf.split_to(len));
            }
            if self.fill().await? == 0 {
                return Err(StreamError::Closed);
            }
        }
    }

    /// Reads one whole message (the admin console).
    pub async fn read_message(&mut self) -> Result<BytesMut, StreamError> {
        loop {
            if let Some(Scanned::Message { len, .. }) = self.scanner.scan(&self.rbuf, |_| true)? {
                return Ok(self.rbuf.split_to(len));
            }
            if self.fill().await? == 0 {
                return Err(StreamError::Closed);
            }
        }
    }

    /// Writes out `wbuf`.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            // TLS may hold the last record back when the socket was full (a no-op on TCP).
            self.io.flush().await?;
        }
        Ok(())
    }

    /// Sends an error (and, for FATAL, nothing more is expected to follow).
    pub async fn send_error(&mut self, e: &ErrorInfo) -> io::Result<()> {
        encode::error_response(&mut self.wbuf, e);
        self.flush().await
    }
}

impl<S> ClientStream<S> {
    /// Hands the empty buffers to the free list.
    fn give_buffers(&mut self) {
        bufpool::give(&mut self.rbuf);
        bufpool::give(&mut self.wbuf);
        bufpool::give(&mut self.sbuf);
    }

    /// Drops whatever the buffers hold and hands them to the free list (the client is
    /// gone, or parks between messages).
    fn discard_buffers(&mut self) {
        self.rbuf.clear();
        self.wbuf.clear();
        self.sbuf.clear();
        self.give_buffers();
    }

    /// The socket alone (parking): the buffers go back to the free list, as on drop. Only
    /// between messages: whatever is still buffered is dropped.
    pub fn into_io(self) -> S {
        let mut this = std::mem::ManuallyDrop::new(self);
        this.discard_buffers();
        // SAFETY: `this` is never used (nor dropped) again; every other field is dropped
        // here, in place, once.
        unsafe {
            std::ptr::drop_in_place(&mut this.rbuf);
            std::ptr::drop_in_place(&mut this.wbuf);
            std::ptr::drop_in_place(&mut this.sbuf);
            std::ptr::drop_in_place(&mut this.scanner);
            std::ptr::read(&this.io)
        }
    }
}

/// A closed client's buffers go back to the free list too, so the next login on this thread
/// takes a warm buffer instead of allocating one (with `-C`-style clients, every time).
/// Whatever they still hold (a Terminate, say) is of no use to anyone now.
impl<S> Drop for ClientStream<S> {
    fn drop(&mut self) {
        self.discard_buffers();
    }
}
