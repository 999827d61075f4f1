//! Verifying clients: SCRAM-SHA-256 (pgwire's server state machine, against a stored or
//! derived verifier), md5 and trust. Failures look like PostgreSQL's own: 28P01
//! `password authentication failed for user "x"`, whether the user exists or not.

use md5::{Digest, Md5};
use pgwire::api::auth::sasl::scram::{ScramSecret, ScramServerAuth};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{AuthMethod, ScramVerifier, UserConfig, UserSecret};
use crate::protocol::encode::{self, ErrorInfo};
use crate::protocol::frontend::{self, Frontend};
use crate::protocol::sqlstate;
use crate::transport::stream::{ClientStream, StreamError};

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    #[error("malformed authentication message: {0}")]
    Malformed(String),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl AuthError {
    /// What the client is told.
    pub fn to_client(&self) -> Option<ErrorInfo> {
        match self {
            AuthError::Failed(_) => Some(ErrorInfo::fatal(
                sqlstate::INVALID_PASSWORD,
                self.to_string(),
            )),
            AuthError::Malformed(m) => {
                Some(ErrorInfo::fatal(sqlstate::PROTOCOL_VIOLATION, m.clone()))
            }
            AuthError::Stream(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Failed(_) => "password",
            AuthError::Malformed(_) => "malformed",
            AuthError::Stream(_) => "disconnect",
        }
    }
}

/// Authenticates `user_name` (the configured user `user`, if any). Does not send
/// AuthenticationOk: the caller does, once the tenant is also settled.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    method: AuthMethod,
    user_name: &str,
    user: Option<&UserConfig>,
) -> Result<(), AuthError> {
    match method {
        AuthMethod::Trust => match user {
            Some(_) => Ok(()),
            None => Err(AuthError::Failed(user_name.to_string())),
        },
        AuthMethod::Md5 => md5_exchange(client, user_name, user).await,
        AuthMethod::ScramSha256 => scram_exchange(client, user_name, user).await,
    }
}

/// The client's next PasswordMessage / SASL response: at most
/// [`MAX_AUTH_MESSAGE`](crate::transport::stream::MAX_AUTH_MESSAGE) bytes (the stream's limit
/// during login), and nothing but that type. Anything else gets 08P01 before its body is
/// read.
async fn read_password<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
) -> Result<bytes::BytesMut, AuthError> {
    let msg = match client.read_expected(crate::protocol::ftag::PASSWORD).await {
        Ok(msg) => msg,
        Err(e @ (StreamError::Frame(_) | StreamError::Unexpected(_))) => {
            return Err(AuthError::Malformed(e.to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    match frontend::decode(&msg) {
        Ok(Frontend::Password(_)) => Ok(msg),
        _ => Err(AuthError::Malformed("expected a password message".into())),
    }
}

async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    user_name: &str,
    user: Option<&UserConfig>,
) -> Result<(), AuthError> {
    let verifier = match user.map(|u| &u.secret) {
        Some(UserSecret::Plain { scram, .. }) | Some(UserSecret::Scram(scram)) => {
            Some(scram.clone())
        }
        _ => None,
    };
    // Unknown users (or md5-only secrets) run the whole exchange against a random verifier
    // and fail at the end, so the reply does not reveal which part was wrong.
    let known = verifier.is_some();
    let verifier = verifier.unwrap_or_else(random_verifier);
    encode::authentication_sasl(&mut client.wbuf, &[SCRAM_SHA_256]);
    client.flush().await.map_err(StreamError::from)?;

    let msg = read_password(client).await?;
    let (mechanism, first) = frontend::sasl_initial_response(&msg[5..])
        .ok_or_else(|| AuthError::Malformed("malformed SASLInitialResponse".into()))?;
    if mechanism != SCRAM_SHA_256.as_bytes() {
        return Err(AuthError::Malformed(
            "client selected an invalid SASL authentication mechanism".into(),
        ));
    }
    let secret = ScramSecret::Verifier {
        salt: verifier.salt,
        iterations: verifier.iterations,
        stored_key: verifier.stored_key,
        server_key: verifier.server_key,
    };
    let (server_first, waiting) = ScramServerAuth::new()
        .on_client_first_message_with_secret(first, secret)
        .map_err(|e| AuthError::Malformed(format!("malformed SCRAM message: {e}")))?;
    encode::authentication_sasl_continue(&mut client.wbuf, server_first.as_bytes());
    client.flush().await.map_err(StreamError::from)?;

    let msg = read_password(client).await?;
    match waiting.on_client_final_message(&msg[5..]) {
        Ok(server_final) if known => {
            encode::authentication_sasl_final(&mut client.wbuf, server_final.as_bytes());
            Ok(())
        }
        Ok(_) => Err(AuthError::Failed(user_name.to_string())),
        Err(pgwire::error::PgWireError::InvalidPassword(_)) => {
            Err(AuthError::Failed(user_name.to_string()))
        }
        Err(e) => Err(AuthError::Malformed(format!(
            "malformed SCRAM message: {e}"
        ))),
    }
}

fn random_verifier() -> ScramVerifier {
    let mut rng = rand::thread_rng();
    let mut v = ScramVerifier {
        iterations: 4096,
        salt: vec![0; 16],
        stored_key: vec![0; 32],
        server_key: vec![0; 32],
    };
    rng.fill_bytes(&mut v.salt);
    rng.fill_bytes(&mut v.stored_key);
    rng.fill_bytes(&mut v.server_key);
    v
}

async fn md5_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    user_name: &str,
    user: Option<&UserConfig>,
) -> Result<(), AuthError> {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    encode::authentication_md5(&mut client.wbuf, salt);
    client.flush().await.map_err(StreamError::from)?;
    let msg = read_password(client).await?;
    let sent = crate::protocol::cstr(&msg[5..])
        .ok_or_else(|| AuthError::Malformed("malformed password message".into()))?
        .0;
    let expected = match user.map(|u| &u.secret) {
        Some(UserSecret::Plain { password, .. }) => {
            Some(postgres_protocol::authentication::md5_hash(
                user_name.as_bytes(),
                password.as_bytes(),
                salt,
            ))
        }
        Some(UserSecret::Md5(hash)) => Some(salted_md5(&hash[3..], salt)),
        _ => None,
    };
    match expected {
        Some(e) if constant_time_eq(e.as_bytes(), sent) => Ok(()),
        _ => Err(AuthError::Failed(user_name.to_string())),
    }
}

/// `"md5" + md5(hex_inner + salt)`, the reply for a stored `md5...` hash.
fn salted_md5(inner_hex: &str, salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(inner_hex.as_bytes());
    h.update(salt);
    let digest = h.finalize();
    let mut out = String::from("md5");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_md5_hash_gives_the_same_reply_as_the_password() {
        let salt = [1, 2, 3, 4];
        let stored = postgres_protocol::password::md5(b"secret", "app");
        let from_password = postgres_protocol::authentication::md5_hash(b"app", b"secret", salt);
        assert_eq!(salted_md5(&stored[3..], salt), from_password);
    }
}
