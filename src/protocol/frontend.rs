//! Typed views of the client messages the proxy must understand.

use super::frame::body;
use super::{ftag, DecodeError};

/// A client message, decoded only as far as the proxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend<'a> {
    Query {
        sql: &'a [u8],
    },
    Parse {
        name: &'a [u8],
        sql: &'a [u8],
    },
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Flush,
    FunctionCall,
    CopyData,
    CopyDone,
    CopyFail,
    Terminate,
    /// PasswordMessage / SASL responses (only valid during authentication).
    Password(&'a [u8]),
}

/// Decodes a whole client message (header included). Unknown types are an error.
pub fn decode(message: &[u8]) -> Result<Frontend<'_>, DecodeError> {
    let b = body(message);
    Ok(match message[0] {
        // The text is the whole body but its closing NUL (what PostgreSQL accepts), so no
        // search for the NUL. A NUL inside it makes the server refuse the message; looking
        // at the text beyond it (for `set_config`) is then only cautious.
        ftag::QUERY => Frontend::Query {
            sql: match b.split_last() {
                Some((0, sql)) => sql,
                _ => super::cstr(b).ok_or(DecodeError::Malformed("Query"))?.0,
            },
        },
        ftag::PARSE => {
            let (name, rest) = super::cstr(b).ok_or(DecodeError::Malformed("Parse"))?;
            let (sql, _) = super::cstr(rest).ok_or(DecodeError::Malformed("Parse"))?;
            Frontend::Parse { name, sql }
        }
        ftag::BIND => Frontend::Bind,
        ftag::DESCRIBE => Frontend::Describe,
        ftag::EXECUTE => Frontend::Execute,
        ftag::CLOSE => Frontend::Close,
        ftag::SYNC => Frontend::Sync,
        ftag::FLUSH => Frontend::Flush,
        ftag::FUNCTION_CALL => Frontend::FunctionCall,
        ftag::COPY_DATA => Frontend::CopyData,
        ftag::COPY_DONE => Frontend::CopyDone,
        ftag::COPY_FAIL => Frontend::CopyFail,
        ftag::TERMINATE => Frontend::Terminate,
        ftag::PASSWORD => Frontend::Password(b),
        other => return Err(DecodeError::UnknownType(other)),
    })
}

/// The fields of a Parse message: (statement name, query text, parameter-type bytes).
pub fn split_parse(msg: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (name, rest) = super::cstr(&msg[5..])?;
    let (sql, types) = super::cstr(rest)?;
    Some((name, sql, types))
}

/// Bind: (portal, statement name, offset of what follows the statement name).
pub fn split_bind(msg: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let body = &msg[5..];
    let (portal, rest) = super::cstr(body)?;
    let (stmt, tail) = super::cstr(rest)?;
    Some((portal, stmt, msg.len() - tail.len()))
}

/// Describe/Close: (`S` or `P`, name).
pub fn split_target(msg: &[u8]) -> Option<(u8, &[u8])> {
    let body = &msg[5..];
    let (&which, rest) = body.split_first()?;
    let (name, _) = super::cstr(rest)?;
    Some((which, name))
}

/// True for message types a client may send after login.
pub fn is_known_tag(tag: u8) -> bool {
    matches!(
        tag,
        ftag::QUERY
            | ftag::PARSE
            | ftag::BIND
            | ftag::DESCRIBE
            | ftag::EXECUTE
            | ftag::CLOSE
            | ftag::SYNC
            | ftag::FLUSH
            | ftag::FUNCTION_CALL
            | ftag::COPY_DATA
            | ftag::COPY_DONE
            | ftag::COPY_FAIL
            | ftag::TERMINATE
    )
}

/// SASLInitialResponse body: mechanism name, then `i32` length and the client-first message.
pub fn sasl_initial_response(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mechanism, rest) = super::cstr(b)?;
    if rest.len() < 4 {
        return None;
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return None;
    }
    Some((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_and_parse() {
        assert_eq!(
            decode(b"Q\0\0\0\x0bselect\0").unwrap(),
            Frontend::Query { sql: b"select" }
        );
        assert_eq!(
            decode(b"P\0\0\0\x0cs1\0sel\0\0\0").unwrap(),
            Frontend::Parse {
                name: b"s1",
                sql: b"sel"
            }
        );
        assert!(decode(b"Q\0\0\0\x05x").is_err());
        assert!(decode(b"?\0\0\0\x04").is_err());
    }

    #[test]
    fn sasl_initial_response_checks_its_length() {
        assert_eq!(
            sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x03abc"),
            Some((&b"SCRAM-SHA-256"[..], &b"abc"[..]))
        );
        assert_eq!(sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x09abc"), None);
    }
}
