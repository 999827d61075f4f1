//! The client's socket as the proxy sees it: whole messages in and out ([`stream`]), the
//! per-thread buffer free list ([`bufpool`]), the byte counting wrapper ([`counted`]) and
//! plain TCP or TLS ([`tls`]).
//! Below `auth`, `admin` and `session`, which all talk to a client through it.

pub mod bufpool;
pub mod counted;
pub mod stream;
pub mod tls;

use tokio::io::{AsyncRead, AsyncWrite};

/// What a session needs of its client socket.
pub trait ClientIo:
    AsyncRead
    + AsyncWrite
    + Unpin
    + Send
    + stream::Readiness
    + counted::Peer
    + stream::Parkable
    + tls::StartTls
{
}

impl<
        S: AsyncRead
            + AsyncWrite
            + Unpin
            + Send
            + stream::Readiness
            + counted::Peer
            + stream::Parkable
            + tls::StartTls,
    > ClientIo for S
{
}
