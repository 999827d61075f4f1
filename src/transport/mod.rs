//! The client's socket as the proxy sees it: whole messages in and out ([`stream`]), the
//! per-thread buffer free list ([`bufpool`]) and the byte counting wrapper ([`counted`]).
//! Below `auth`, `admin` and `session`, which all talk to a client through it.

pub mod bufpool;
pub mod counted;
pub mod stream;

use tokio::io::{AsyncRead, AsyncWrite};

/// What a session needs of its client socket.
pub trait ClientIo:
    AsyncRead + AsyncWrite + Unpin + stream::Readiness + counted::Peer + stream::Parkable
{
}

impl<S: AsyncRead + AsyncWrite + Unpin + stream::Readiness + counted::Peer + stream::Parkable>
    ClientIo for S
{
}
