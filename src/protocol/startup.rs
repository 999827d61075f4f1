//! The untagged first packet a client sends: StartupMessage, SSLRequest, GSSENCRequest or
//! CancelRequest (`len: i32, code: i32, ...`).
//! See <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

use std::fmt;

/// The largest startup packet accepted, in bytes (PostgreSQL uses the same limit).
pub const MAX_STARTUP_PACKET: usize = 10_000;

pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Ends a CancelRequest passed on by a peer pgtenant (see `encode::peer_cancel_request`).
pub const PEER_CANCEL_MARKER: [u8; 4] = *b"pgtP";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// A CancelRequest another pgtenant instance passed on: acted on here, never passed on.
    PeerCancel {
        pid: i32,
        secret: i32,
    },
    /// `minor`: the protocol 3 minor version the client asked for; the proxy speaks 3.0 and
    /// answers a higher one with NegotiateProtocolVersion, as PostgreSQL does.
    Startup {
        params: Vec<(String, String)>,
        minor: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupError {
    BadLength(i32),
    UnsupportedVersion { major: i32, minor: i32 },
    Malformed(&'static str),
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupError::BadLength(n) => write!(f, "invalid length of startup packet: {n}"),
            StartupError::UnsupportedVersion { major, minor } => write!(
                f,
                "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
            ),
            StartupError::Malformed(what) => write!(f, "invalid startup packet: {what}"),
        }
    }
}

impl std::error::Error for StartupError {}

/// Decodes one startup packet from the front of `buf`, returning it and its length, or
/// `Ok(None)` when more bytes are needed.
pub fn decode(buf: &[u8]) -> Result<Option<(StartupRequest, usize)>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(StartupError::BadLength(len));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let packet = &buf[4..len];
    let code = i32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
    let rest = &packet[4..];
    let request = match code {
        SSL_REQUEST_CODE if rest.is_empty() => StartupRequest::Ssl,
        GSSENC_REQUEST_CODE if rest.is_empty() => StartupRequest::GssEnc,
        CANCEL_REQUEST_CODE if rest.len() == 8 => StartupRequest::Cancel {
            pid: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
            secret: i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
        },
        CANCEL_REQUEST_CODE if rest.len() == 12 && rest[8..] == PEER_CANCEL_MARKER => {
            StartupRequest::PeerCancel {
                pid: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
                secret: i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
            }
        }
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => {
            return Err(StartupError::Malformed(
                "wrong length for a special request",
            ))
        }
        v if v >> 16 == 3 => StartupRequest::Startup {
            params: decode_params(rest)?,
            minor: (v & 0xffff) as u16,
        },
        other => {
            return Err(StartupError::UnsupportedVersion {
                major: other >> 16,
                minor: other & 0xffff,
            })
        }
    };
    Ok(Some((request, len)))
}

/// `name\0value\0 ... \0`
fn decode_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        match rest {
            [0] => return Ok(params),
            [] => return Err(StartupError::Malformed("missing terminator")),
            _ => {}
        }
        let (name, tail) = super::cstr(rest).ok_or(StartupError::Malformed("unterminated name"))?;
        let (value, tail) =
            super::cstr(tail).ok_or(StartupError::Malformed("unterminated value"))?;
        if name.is_empty() {
            return Err(StartupError::Malformed("empty parameter name"));
        }
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
        let value = String::from_utf8(value.to_vec())
            .map_err(|_| StartupError::Malformed("parameter value is not UTF-8"))?;
        params.push((name, value));
        rest = tail;
    }
}

/// Splits a startup `options` string into `(name, value)` settings, accepting the forms
/// PostgreSQL accepts for settings: `-c name=value`, `-cname=value` and `--name=value`.
/// Arguments are separated by unescaped whitespace; `\` escapes the next character.
/// Dashes in `--name` become underscores, as PostgreSQL does.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let args = split_args(options);
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let setting = if arg == "-c" {
            i += 1;
            args.get(i)
                .ok_or_else(|| "option -c needs a name=value argument".to_string())?
                .clone()
        } else if let Some(s) = arg.strip_prefix("--") {
            s.to_string()
        } else if let Some(s) = arg.strip_prefix("-c") {
            s.to_string()
        } else {
            return Err(format!("unsupported startup option \"{arg}\": only -c name=value and --name=value are supported"));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("option \"{setting}\" has no value (expected name=value)"))?;
        if name.is_empty() {
            return Err(format!("option \"{setting}\" has an empty name"));
        }
        out.push((name.replace('-', "_"), value.to_string()));
        i += 1;
    }
    Ok(out)
}

fn split_args(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_arg = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                cur.push(n);
            }
            in_arg = true;
        } else if c.is_whitespace() {
            if in_arg {
                args.push(std::mem::take(&mut cur));
                in_arg = false;
            }
        } else {
            cur.push(c);
            in_arg = true;
        }
    }
    if in_arg {
        args.push(cur);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as i32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn decodes_startup_and_special_requests() {
        let p = packet(PROTOCOL_3_0, b"user\0app\0database\0app\0\0");
        let (req, len) = decode(&p).unwrap().unwrap();
        assert_eq!(len, p.len());
        assert_eq!(
            req,
            StartupRequest::Startup {
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "app".into())
                ],
                minor: 0
            }
        );
        assert_eq!(decode(&p[..p.len() - 1]).unwrap(), None);
        let p32 = packet(PROTOCOL_3_0 + 2, b"user\0app\0\0");
        assert!(matches!(
            decode(&p32).unwrap().unwrap().0,
            StartupRequest::Startup { minor: 2, .. }
        ));
        assert_eq!(
            decode(&packet(SSL_REQUEST_CODE, b"")).unwrap().unwrap().0,
            StartupRequest::Ssl
        );
        let c = packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(
            decode(&c).unwrap().unwrap().0,
            StartupRequest::Cancel { pid: 7, secret: 9 }
        );
    }

    #[test]
    fn rejects_bad_packets() {
        assert_eq!(decode(&[0, 0, 0, 3]), Err(StartupError::BadLength(3)));
        assert_eq!(
            decode(&[0, 0, 0x27, 0x11]),
            Err(StartupError::BadLength(10_001))
        );
        assert!(matches!(
            decode(&packet(2 << 16, b"\0")),
            Err(StartupError::UnsupportedVersion { major: 2, minor: 0 })
        ));
        assert!(decode(&packet(PROTOCOL_3_0, b"user\0app")).is_err());
        assert!(decode(&packet(PROTOCOL_3_0, b"user\0app\0")).is_err());
        assert!(decode(&packet(PROTOCOL_3_0, b"\0x\0\0")).is_err());
        assert!(decode(&packet(CANCEL_REQUEST_CODE, b"1234")).is_err());
    }

    #[test]
    fn parses_options() {
        assert_eq!(
            parse_options("-c tenant=a.com  -cstatement_timeout=5s --search-path=x\\ y").unwrap(),
            vec![
                ("tenant".into(), "a.com".into()),
                ("statement_timeout".into(), "5s".into()),
                ("search_path".into(), "x y".into())
            ]
        );
        assert_eq!(
            parse_options("--tenant=b").unwrap(),
            vec![("tenant".into(), "b".into())]
        );
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-d 5").is_err());
        assert!(parse_options("-c novalue").is_err());
        assert_eq!(parse_options("  ").unwrap(), vec![]);
    }
}
