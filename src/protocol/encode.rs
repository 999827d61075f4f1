//! Encoders for the messages the proxy writes itself. Each appends one message to `buf`.
//! Client-bound (backend) messages are written here; server-bound (frontend) messages reuse
//! `postgres_protocol::message::frontend` where it has them.

use bytes::{BufMut, BytesMut};

use super::backend::TxStatus;
use super::btag;

/// Starts a message: writes the tag and a length placeholder; returns the length's offset.
pub(crate) fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    at
}

/// Back-patches the length written by [`begin`].
pub(crate) fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub(crate) fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// An error or notice the proxy itself reports to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub severity: &'static str,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorInfo {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        ErrorInfo {
            severity: "FATAL",
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        ErrorInfo {
            severity: "ERROR",
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

pub fn error_response(buf: &mut BytesMut, e: &ErrorInfo) {
    let at = begin(buf, btag::ERROR_RESPONSE);
    buf.put_u8(b'S');
    put_cstr(buf, e.severity.as_bytes());
    buf.put_u8(b'V');
    put_cstr(buf, e.severity.as_bytes());
    buf.put_u8(b'C');
    put_cstr(buf, e.code.as_bytes());
    buf.put_u8(b'M');
    put_cstr(buf, e.message.as_bytes());
    if let Some(d) = &e.detail {
        buf.put_u8(b'D');
        put_cstr(buf, d.as_bytes());
    }
    if let Some(h) = &e.hint {
        buf.put_u8(b'H');
        put_cstr(buf, h.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, at);
}

pub fn authentication_ok(buf: &mut BytesMut) {
    let at = begin(buf, btag::AUTHENTICATION);
    buf.put_i32(0);
    finish(buf, at);
}

pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    let at = begin(buf, btag::AUTHENTICATION);
    buf.put_i32(5);
    buf.put_slice(&salt);
    finish(buf, at);
}

pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let at = begin(buf, btag::AUTHENTICATION);
    buf.put_i32(10);
    for m in mechanisms {
        put_cstr(buf, m.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, at);
}

pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, btag::AUTHENTICATION);
    buf.put_i32(11);
    buf.put_slice(data);
    finish(buf, at);
}

pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, btag::AUTHENTICATION);
    buf.put_i32(12);
    buf.put_slice(data);
    finish(buf, at);
}

pub fn parameter_status(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    let at = begin(buf, btag::PARAMETER_STATUS);
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish(buf, at);
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(buf, btag::BACKEND_KEY_DATA);
    buf.put_i32(pid);
    buf.put_i32(secret);
    finish(buf, at);
}

pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    let at = begin(buf, btag::READY_FOR_QUERY);
    buf.put_u8(status.as_byte());
    finish(buf, at);
}

/// NegotiateProtocolVersion: the protocol version offered instead (PostgreSQL sends the
/// whole number, e.g. 3.0 = 196608) and the `_pq_.` options not recognized.
pub fn negotiate_protocol_version(buf: &mut BytesMut, version: i32, unrecognized: &[&str]) {
    let at = begin(buf, btag::NEGOTIATE_PROTOCOL_VERSION);
    buf.put_i32(version);
    buf.put_i32(unrecognized.len() as i32);
    for o in unrecognized {
        put_cstr(buf, o.as_bytes());
    }
    finish(buf, at);
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, btag::COMMAND_COMPLETE);
    put_cstr(buf, tag.as_bytes());
    finish(buf, at);
}

/// A simple-protocol Query (server-bound).
pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, super::ftag::QUERY);
    put_cstr(buf, sql.as_bytes());
    finish(buf, at);
}

/// A Parse of `sql` named `name` (server-bound); `types` is the message's parameter-type
/// part as it stands, its count included (`&[0, 0]`: none).
pub fn parse(buf: &mut BytesMut, name: &[u8], sql: &[u8], types: &[u8]) {
    let at = begin(buf, super::ftag::PARSE);
    put_cstr(buf, name);
    put_cstr(buf, sql);
    buf.put_slice(types);
    finish(buf, at);
}

/// The head of a Bind (server-bound) whose last `rest_len` bytes, everything after the
/// statement name, follow unchanged from the client's own Bind as it streams through.
pub fn bind_head(buf: &mut BytesMut, portal: &[u8], statement: &[u8], rest_len: usize) {
    let at = begin(buf, super::ftag::BIND);
    put_cstr(buf, portal);
    put_cstr(buf, statement);
    let len = (buf.len() - at + rest_len) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Terminate (server-bound).
pub fn terminate(buf: &mut BytesMut) {
    let at = begin(buf, super::ftag::TERMINATE);
    finish(buf, at);
}

/// A protocol 3.0 StartupMessage (server-bound).
pub fn startup_message(buf: &mut BytesMut, params: &[(&str, &str)]) {
    let at = buf.len();
    buf.put_i32(0);
    buf.put_i32(super::startup::PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(buf, k.as_bytes());
        put_cstr(buf, v.as_bytes());
    }
    buf.put_u8(0);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A CancelRequest packet (server-bound, on a fresh connection).
pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_i32(16);
    buf.put_i32(super::startup::CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_back_patched() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, TxStatus::Idle);
        assert_eq!(&buf[..], b"Z\0\0\0\x05I");
        buf.clear();
        query(&mut buf, "SET a TO 'b'");
        assert_eq!(buf[0], b'Q');
        assert_eq!(
            i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize,
            buf.len() - 1
        );
        buf.clear();
        startup_message(&mut buf, &[("user", "u")]);
        let (req, len) = crate::protocol::startup::decode(&buf).unwrap().unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(
            req,
            crate::protocol::startup::StartupRequest::Startup {
                params: vec![("user".into(), "u".into())],
                minor: 0
            }
        );
    }
}
