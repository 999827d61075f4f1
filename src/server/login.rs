//! Logging in to a server as an endpoint's user.

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use tokio::io::AsyncReadExt;

use super::{ServerConn, ServerError};
use crate::protocol::backend::{self, AuthRequest, Backend};
use crate::protocol::{encode, Scanned};

impl ServerConn {
    /// Reads one whole message (off the hot path: login, state checks).
    pub async fn read_message(&mut self) -> Result<BytesMut, ServerError> {
        loop {
            match self.io.scanner.scan(&self.io.rbuf, |_| true) {
                Ok(Some(Scanned::Message { len, .. })) => return Ok(self.io.rbuf.split_to(len)),
                Ok(Some(Scanned::Through { .. })) => unreachable!("every message is inspected"),
                Ok(None) => {}
                Err(e) => return Err(ServerError::Protocol(e.to_string())),
            }
            self.io.rbuf.reserve(8192);
            if self.io.stream.read_buf(&mut self.io.rbuf).await? == 0 {
                return Err(ServerError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

/// Startup, authentication, then parameters and key until the first ReadyForQuery.
pub(super) async fn login(conn: &mut ServerConn) -> Result<(), ServerError> {
    let ep = conn.endpoint().clone();
    let mut out = BytesMut::new();
    // A neutral search_path: a new connection never carries anyone's schemas.
    encode::startup_message(
        &mut out,
        &[
            ("user", ep.user.as_str()),
            ("database", ep.database.as_str()),
            ("client_encoding", "UTF8"),
            ("search_path", ""),
        ],
    );
    conn.write_all(&out).await?;
    let password = || ep.password.as_deref().ok_or(ServerError::NoPassword);
    let mut scram: Option<ScramSha256> = None;
    loop {
        let msg = conn.read_message().await?;
        let decoded = backend::decode(&msg).map_err(|e| ServerError::Protocol(e.into()))?;
        out.clear();
        match decoded {
            Backend::Authentication(req) => match req {
                AuthRequest::Ok => {}
                AuthRequest::Cleartext => {
                    password_message(&mut out, password()?.as_bytes());
                }
                AuthRequest::Md5 { salt } => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        ep.user.as_bytes(),
                        password()?.as_bytes(),
                        salt,
                    );
                    password_message(&mut out, hash.as_bytes());
                }
                AuthRequest::Sasl { mechanisms } => {
                    if !mechanisms.iter().any(|m| *m == SCRAM_SHA_256.as_bytes()) {
                        return Err(ServerError::Protocol(
                            "server offers no SCRAM-SHA-256".into(),
                        ));
                    }
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    sasl_initial_response(&mut out, SCRAM_SHA_256, s.message());
                    scram = Some(s);
                }
                AuthRequest::SaslContinue(data) => {
                    let s = scram
                        .as_mut()
                        .ok_or(ServerError::Protocol("unexpected SASL".into()))?;
                    s.update(data)
                        .map_err(|e| ServerError::Refused(e.to_string()))?;
                    sasl_response(&mut out, s.message());
                }
                AuthRequest::SaslFinal(data) => {
                    let s = scram
                        .as_mut()
                        .ok_or(ServerError::Protocol("unexpected SASL".into()))?;
                    s.finish(data)
                        .map_err(|e| ServerError::Refused(e.to_string()))?;
                }
                AuthRequest::Other(n) => {
                    return Err(ServerError::Protocol(format!(
                        "unsupported auth method {n}"
                    )))
                }
            },
            Backend::Error(fields) => {
                return Err(ServerError::Refused(format!(
                    "{} ({})",
                    fields.message(),
                    fields.code()
                )))
            }
            Backend::ParameterStatus { name, value } => {
                conn.set_param(&String::from_utf8_lossy(name), value);
            }
            Backend::BackendKeyData { pid, secret } => conn.backend_key = (pid, secret),
            Backend::ReadyForQuery(_) => return Ok(()),
            Backend::Notice(_) => {}
            _ => {
                return Err(ServerError::Protocol(format!(
                    "unexpected message {:?} at login",
                    msg[0] as char
                )))
            }
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
        }
    }
}

/// PasswordMessage: the password (or md5 hash) as a C string.
fn password_message(buf: &mut BytesMut, password: &[u8]) {
    buf.put_u8(b'p');
    buf.put_i32((4 + password.len() + 1) as i32);
    buf.put_slice(password);
    buf.put_u8(0);
}

/// SASLResponse: raw mechanism data, no terminator.
fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    buf.put_u8(b'p');
    buf.put_i32((4 + data.len()) as i32);
    buf.put_slice(data);
}

fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    buf.put_u8(b'p');
    buf.put_i32((4 + mechanism.len() + 1 + 4 + data.len()) as i32);
    buf.put_slice(mechanism.as_bytes());
    buf.put_u8(0);
    buf.put_i32(data.len() as i32);
    buf.put_slice(data);
}
