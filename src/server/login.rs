//! Logging in to a server as an endpoint's user.

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::SCRAM_SHA_256;
use postgres_protocol::message::frontend;
use tokio::io::AsyncReadExt;

use super::passthrough::{md5_reply, ServerScram};
use super::{ServerConn, ServerError, ServerProtocol};
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
                Err(e) => return Err(ServerProtocol::from(e).into()),
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
    let mut scram: Option<ServerScram> = None;
    loop {
        let msg = conn.read_message().await?;
        let decoded = backend::decode(&msg).map_err(ServerProtocol::from)?;
        out.clear();
        match decoded {
            Backend::Authentication(req) => match req {
                AuthRequest::Ok => {}
                AuthRequest::Cleartext if ep.pass_through.is_some() => {
                    return Err(ServerError::PassThrough(
                        "the server asks for a cleartext password, which the proxy does not have",
                    ));
                }
                AuthRequest::Cleartext => {
                    frontend::password_message(password()?.as_bytes(), &mut out)?;
                }
                AuthRequest::Md5 { salt } if ep.pass_through.is_some() => {
                    let Some(crate::config::PassThrough::Md5(stored)) = &ep.pass_through else {
                        return Err(ServerError::PassThrough(
                            "the server asks for md5 and the user's password is stored as SCRAM",
                        ));
                    };
                    frontend::password_message(md5_reply(stored, salt)?.as_bytes(), &mut out)?;
                }
                AuthRequest::Md5 { salt } => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        ep.user.as_bytes(),
                        password()?.as_bytes(),
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                AuthRequest::Sasl { mechanisms } => {
                    if !mechanisms.iter().any(|m| *m == SCRAM_SHA_256.as_bytes()) {
                        return Err(ServerProtocol::Unexpected(
                            "SASL mechanisms without SCRAM-SHA-256",
                        )
                        .into());
                    }
                    let s = ServerScram::new(ep.password.as_deref(), ep.pass_through.as_ref())?;
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                    scram = Some(s);
                }
                AuthRequest::SaslContinue(data) => {
                    let s = scram
                        .as_mut()
                        .ok_or(ServerProtocol::Unexpected("SASL message"))?;
                    s.update(data)?;
                    frontend::sasl_response(s.message(), &mut out)?;
                }
                AuthRequest::SaslFinal(data) => {
                    let s = scram
                        .as_mut()
                        .ok_or(ServerProtocol::Unexpected("SASL message"))?;
                    s.finish(data)?;
                }
                AuthRequest::Other(n) => return Err(ServerProtocol::UnsupportedAuth(n).into()),
            },
            Backend::Error(fields) => {
                return Err(ServerError::Refused {
                    code: fields.code().to_string(),
                    message: fields.message(),
                })
            }
            Backend::ParameterStatus { name, value } => {
                conn.set_param(&String::from_utf8_lossy(name), value);
            }
            Backend::BackendKeyData { pid, secret } => conn.backend_key = (pid, secret),
            Backend::ReadyForQuery(_) => return Ok(()),
            Backend::Notice(_) => {}
            _ => return Err(ServerProtocol::UnexpectedAtLogin(msg[0] as char).into()),
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
        }
    }
}
