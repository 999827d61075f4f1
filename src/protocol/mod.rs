//! The PostgreSQL wire protocol (v3) as bytes: framing, typed views of the few messages the
//! proxy has to understand, and encoders. No I/O lives here: decoders take `&[u8]`/`&mut
//! BytesMut` and return `Ok(None)` for an incomplete frame; encoders append to a `BytesMut`
//! and back-patch the length.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>

pub mod backend;
pub mod encode;
pub mod frame;
pub mod frontend;
pub mod sql;
pub mod sql_stream;
pub mod sqlstate;
pub mod startup;

pub use frame::{FrameError, FrameScanner, Scanned};

/// A message whose frame is whole but whose body does not hold what its type requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body of this message type is malformed.
    #[error("malformed {0} message")]
    Malformed(&'static str),
    /// A message type a client may not send (PostgreSQL's wording).
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
}

/// Message type bytes sent by clients (frontend). See "Message Formats" in the PostgreSQL docs.
pub mod ftag {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, SASLInitialResponse and SASLResponse share this tag.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';
}

/// Message type bytes sent by servers (backend).
pub mod btag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// Reads a NUL-terminated string at the front of `buf`; returns it and the rest.
pub(crate) fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(0, buf)?;
    Some((&buf[..end], &buf[end + 1..]))
}
