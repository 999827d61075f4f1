//! Typed views of the server messages the proxy must understand. Everything else is
//! forwarded as bytes.

use super::frame::body;
use super::{btag, DecodeError};

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// An authentication request from the server (`R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<&'a [u8]> },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    Other(i32),
}

/// A server message, decoded only as far as the proxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend<'a> {
    ReadyForQuery(TxStatus),
    /// The command tag, without its NUL.
    CommandComplete(&'a [u8]),
    Error(ErrorFields<'a>),
    Notice(ErrorFields<'a>),
    ParameterStatus {
        name: &'a [u8],
        value: &'a [u8],
    },
    BackendKeyData {
        pid: i32,
        secret: i32,
    },
    Authentication(AuthRequest<'a>),
    CopyInResponse,
    CopyOutResponse,
    CopyBothResponse,
    /// Any other message type (passed through).
    Other(u8),
}

/// Error/notice fields: `(code byte, value)` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    raw: &'a [u8],
}

impl<'a> ErrorFields<'a> {
    pub fn get(&self, field: u8) -> Option<&'a [u8]> {
        let mut rest = self.raw;
        while let Some((&code, tail)) = rest.split_first() {
            if code == 0 {
                return None;
            }
            let (value, tail) = super::cstr(tail)?;
            if code == field {
                return Some(value);
            }
            rest = tail;
        }
        None
    }

    /// SQLSTATE (`C`).
    pub fn code(&self) -> &'a str {
        self.get(b'C')
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("")
    }

    /// Primary message (`M`), lossily decoded (for logs).
    pub fn message(&self) -> String {
        String::from_utf8_lossy(self.get(b'M').unwrap_or_default()).into_owned()
    }

    /// Non-localized severity (`V`), else the localized one (`S`).
    pub fn severity(&self) -> &'a [u8] {
        self.get(b'V')
            .or_else(|| self.get(b'S'))
            .unwrap_or_default()
    }
}

/// Decodes a whole server message (header included).
pub fn decode(message: &[u8]) -> Result<Backend<'_>, DecodeError> {
    let tag = message[0];
    let b = body(message);
    Ok(match tag {
        btag::READY_FOR_QUERY => Backend::ReadyForQuery(
            b.first()
                .copied()
                .and_then(TxStatus::from_byte)
                .ok_or(DecodeError::Malformed("ReadyForQuery"))?,
        ),
        btag::COMMAND_COMPLETE => Backend::CommandComplete(
            super::cstr(b)
                .ok_or(DecodeError::Malformed("CommandComplete"))?
                .0,
        ),
        btag::ERROR_RESPONSE => Backend::Error(ErrorFields { raw: b }),
        btag::NOTICE_RESPONSE => Backend::Notice(ErrorFields { raw: b }),
        btag::PARAMETER_STATUS => {
            let (name, rest) = super::cstr(b).ok_or(DecodeError::Malformed("ParameterStatus"))?;
            let (value, _) = super::cstr(rest).ok_or(DecodeError::Malformed("ParameterStatus"))?;
            Backend::ParameterStatus { name, value }
        }
        btag::BACKEND_KEY_DATA => {
            // Protocol 3.0 keys are 4 bytes; 3.2 allows longer secrets, which we never request.
            if b.len() != 8 {
                return Err(DecodeError::Malformed("BackendKeyData"));
            }
            Backend::BackendKeyData {
                pid: i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                secret: i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            }
        }
        btag::AUTHENTICATION => Backend::Authentication(decode_auth(b)?),
        btag::COPY_IN_RESPONSE => Backend::CopyInResponse,
        btag::COPY_OUT_RESPONSE => Backend::CopyOutResponse,
        btag::COPY_BOTH_RESPONSE => Backend::CopyBothResponse,
        other => Backend::Other(other),
    })
}

fn decode_auth(b: &[u8]) -> Result<AuthRequest<'_>, DecodeError> {
    if b.len() < 4 {
        return Err(DecodeError::Malformed("Authentication"));
    }
    let kind = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let rest = &b[4..];
    Ok(match kind {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let salt: [u8; 4] = rest
                .try_into()
                .map_err(|_| DecodeError::Malformed("AuthenticationMD5Password"))?;
            AuthRequest::Md5 { salt }
        }
        10 => {
            let mut mechanisms = Vec::new();
            let mut r = rest;
            while let Some((m, tail)) = super::cstr(r) {
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
                r = tail;
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(rest),
        12 => AuthRequest::SaslFinal(rest),
        other => AuthRequest::Other(other),
    })
}

/// The columns of a DataRow (`D`), `None` for NULL.
pub fn data_row(message: &[u8]) -> Result<Vec<Option<&[u8]>>, DecodeError> {
    const BAD: DecodeError = DecodeError::Malformed("DataRow");
    let b = body(message);
    let count = u16::from_be_bytes([*b.first().ok_or(BAD)?, *b.get(1).ok_or(BAD)?]);
    let mut rest = &b[2..];
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = rest.get(..4).ok_or(BAD)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| BAD)?;
        out.push(Some(rest.get(..len).ok_or(BAD)?));
        rest = &rest[len..];
    }
    Ok(out)
}

/// The columns of a RowDescription (`T`): each one's name and type OID.
pub fn row_description(message: &[u8]) -> Result<Vec<(&[u8], u32)>, DecodeError> {
    const BAD: DecodeError = DecodeError::Malformed("RowDescription");
    let b = body(message);
    let count = u16::from_be_bytes([*b.first().ok_or(BAD)?, *b.get(1).ok_or(BAD)?]);
    let mut rest = &b[2..];
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let end = memchr::memchr(0, rest).ok_or(BAD)?;
        let name = &rest[..end];
        // table oid (4), column number (2), type oid (4), size (2), modifier (4), format (2)
        let fixed = rest.get(end + 1..end + 19).ok_or(BAD)?;
        let oid = u32::from_be_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]);
        out.push((name, oid));
        rest = &rest[end + 19..];
    }
    Ok(out)
}

/// True for CommandComplete tags after which the proxy no longer knows the session state.
pub fn tag_changes_session_state(tag: &[u8]) -> bool {
    tag == b"SET" || tag == b"RESET" || tag.starts_with(b"DISCARD")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn decodes_the_messages_we_inspect() {
        assert_eq!(
            decode(b"Z\0\0\0\x05T").unwrap(),
            Backend::ReadyForQuery(TxStatus::InTransaction)
        );
        assert_eq!(
            decode(b"C\0\0\0\x08SET\0").unwrap(),
            Backend::CommandComplete(b"SET")
        );
        assert_eq!(
            decode(b"S\0\0\0\x0ea\0b\0").unwrap(),
            Backend::ParameterStatus {
                name: b"a",
                value: b"b"
            }
        );
        let mut buf = BytesMut::new();
        crate::protocol::encode::error_response(
            &mut buf,
            &crate::protocol::encode::ErrorInfo::fatal("3D000", "tenant \"x\" does not exist"),
        );
        match decode(&buf).unwrap() {
            Backend::Error(f) => {
                assert_eq!(f.code(), "3D000");
                assert_eq!(f.message(), "tenant \"x\" does not exist");
                assert_eq!(f.severity(), b"FATAL");
            }
            other => panic!("{other:?}"),
        }
        assert!(decode(b"Z\0\0\0\x05Q").is_err());
        assert_eq!(
            data_row(b"D\0\0\0\x0f\0\x02\0\0\0\x01a\xff\xff\xff\xff").unwrap(),
            vec![Some(&b"a"[..]), None]
        );
        assert!(data_row(b"D\0\0\0\x0a\0\x02\0\0\0\x09").is_err());
    }

    #[test]
    fn state_changing_tags() {
        assert!(tag_changes_session_state(b"SET"));
        assert!(tag_changes_session_state(b"RESET"));
        assert!(tag_changes_session_state(b"DISCARD ALL"));
        assert!(!tag_changes_session_state(b"SELECT 1"));
        assert!(!tag_changes_session_state(b"SET CONSTRAINTS"));
    }
}
