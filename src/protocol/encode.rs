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

/// One column of a RowDescription: its name, type OID and length (text format).
pub struct Column<'a> {
    pub name: &'a str,
    pub type_oid: i32,
    pub type_len: i16,
}

/// RowDescription (text format, no table).
pub fn row_description(buf: &mut BytesMut, columns: &[Column<'_>]) {
    let at = begin(buf, super::btag::ROW_DESCRIPTION);
    buf.put_i16(columns.len() as i16);
    for c in columns {
        put_cstr(buf, c.name.as_bytes());
        buf.put_i32(0); // table OID
        buf.put_i16(0); // column number
        buf.put_i32(c.type_oid);
        buf.put_i16(c.type_len);
        buf.put_i32(-1); // type modifier
        buf.put_i16(0); // text format
    }
    finish(buf, at);
}

/// DataRow: each value in text format, `None` for NULL.
pub fn data_row<'a>(buf: &mut BytesMut, values: impl ExactSizeIterator<Item = Option<&'a [u8]>>) {
    let at = begin(buf, super::btag::DATA_ROW);
    buf.put_i16(values.len() as i16);
    for value in values {
        match value {
            Some(v) => {
                buf.put_i32(v.len() as i32);
                buf.put_slice(v);
            }
            None => buf.put_i32(-1),
        }
    }
    finish(buf, at);
}

pub fn empty_query(buf: &mut BytesMut) {
    let at = begin(buf, super::btag::EMPTY_QUERY_RESPONSE);
    finish(buf, at);
}

/// A NoticeResponse of severity `severity` (`NOTICE`, `WARNING`).
pub fn notice(buf: &mut BytesMut, severity: &str, message: &str) {
    let at = begin(buf, super::btag::NOTICE_RESPONSE);
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', super::sqlstate::SUCCESSFUL_COMPLETION),
        (b'M', message),
    ] {
        buf.put_u8(field);
        put_cstr(buf, value.as_bytes());
    }
    buf.put_u8(0);
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

/// One lookup of the proxy's own in the extended protocol (server-bound): Parse (unnamed)
/// of `sql`, Bind of `param` as its one text parameter (`$1`, never spliced into the text),
/// Describe of the portal (for the column names), Execute, Sync.
pub fn lookup(buf: &mut BytesMut, sql: &str, param: &[u8]) {
    parse(buf, b"", sql.as_bytes(), &[0, 0]);
    let at = begin(buf, super::ftag::BIND);
    put_cstr(buf, b"");
    put_cstr(buf, b"");
    buf.put_i16(0); // parameter formats: all text
    buf.put_i16(1);
    buf.put_i32(param.len() as i32);
    buf.put_slice(param);
    buf.put_i16(0); // result formats: all text
    finish(buf, at);
    describe_or_close(buf, super::ftag::DESCRIBE, b'P', b"");
    let at = begin(buf, super::ftag::EXECUTE);
    put_cstr(buf, b"");
    buf.put_i32(0);
    finish(buf, at);
    bodiless(buf, super::ftag::SYNC);
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
/// A CancelRequest one pgtenant instance passes to the peer whose client it is for: the
/// standard 16 bytes plus [`super::startup::PEER_CANCEL_MARKER`], so the peer never passes
/// it on again.
pub fn peer_cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_i32(20);
    buf.put_i32(super::startup::CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_i32(secret);
    buf.put_slice(&super::startup::PEER_CANCEL_MARKER);
}

/// A whole Terminate message, for a best-effort write where no buffer is at hand (a
/// Appends `msg` (a Bind) to `out` with its statement name replaced.
pub fn bind_renamed(out: &mut BytesMut, msg: &[u8], server_name: &[u8]) -> Option<()> {
    let (portal, _, tail_at) = super::frontend::split_bind(msg)?;
    let at = begin(out, super::ftag::BIND);
    put_cstr(out, portal);
    put_cstr(out, server_name);
    out.put_slice(&msg[tail_at..]);
    finish(out, at);
    Some(())
}

/// Appends a Describe/Close message of type `tag` for statement `name`.
pub fn describe_or_close(out: &mut BytesMut, tag: u8, which: u8, name: &[u8]) {
    let at = begin(out, tag);
    out.put_u8(which);
    put_cstr(out, name);
    finish(out, at);
}

/// A message with no body (ParseComplete, BindComplete, CloseComplete, NoData, ...).
pub fn bodiless(out: &mut BytesMut, tag: u8) {
    let at = begin(out, tag);
    finish(out, at);
}

/// connection being dropped). Equal to what [`terminate`] appends (tested).
pub const TERMINATE: &[u8] = &[super::ftag::TERMINATE, 0, 0, 0, 4];

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

    #[test]
    fn terminate_const_is_the_encoded_message() {
        let mut buf = BytesMut::new();
        super::terminate(&mut buf);
        assert_eq!(&buf[..], super::TERMINATE);
    }
    #[test]
    fn renames_bind() {
        let msg = b"B\0\0\0\x12\0s1\0\0\0\0\0\0\0\0\0";
        let mut out = BytesMut::new();
        super::bind_renamed(&mut out, msg, b"pgt_x").unwrap();
        let (portal, stmt, _) = crate::protocol::frontend::split_bind(&out).unwrap();
        assert_eq!((portal, stmt), (&b""[..], &b"pgt_x"[..]));
        assert_eq!(
            &out[out.len() - 9..],
            &msg[msg.len() - 9..],
            "everything after the name is kept"
        );
        assert_eq!(
            i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );
    }
}
