//! Verifying clients: SCRAM-SHA-256 (pgwire's server state machine, against a stored or
//! derived verifier; SCRAM-SHA-256-PLUS with `tls-server-end-point` channel binding for
//! clients on TLS), md5 and trust. Failures look like PostgreSQL's own: 28P01
//! `password authentication failed for user "x"`, whether the user exists or not.

pub mod query;

use md5::{Digest, Md5};
use pgwire::api::auth::sasl::scram::{ScramSecret, ScramServerAuth};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};

use base64::Engine;

use crate::config::{AuthMethod, PassThrough, ScramVerifier, UserConfig, UserSecret};
use crate::protocol::encode::{self, ErrorInfo};
use crate::protocol::frontend::{self, Frontend};
use crate::protocol::sqlstate;
use crate::transport::stream::{ClientStream, StreamError};

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

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
/// AuthenticationOk: the caller does, once the tenant is also settled. `channel_binding`:
/// SCRAM bound to the certificate of the client's TLS session (offered as
/// SCRAM-SHA-256-PLUS), for clients on TLS.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    method: AuthMethod,
    user_name: &str,
    user: Option<&UserConfig>,
    channel_binding: Option<ScramServerAuth>,
) -> Result<(), AuthError> {
    let secret = user.map(|u| &u.secret);
    match method {
        AuthMethod::Trust => match user {
            Some(_) => Ok(()),
            None => Err(AuthError::Failed(user_name.to_string())),
        },
        AuthMethod::Md5 => md5_exchange(client, user_name, secret).await,
        AuthMethod::ScramSha256 => {
            let verifier = match secret {
                Some(UserSecret::Plain { scram, .. }) | Some(UserSecret::Scram(scram)) => {
                    Some(scram.clone())
                }
                _ => None,
            };
            scram_exchange(client, user_name, verifier, channel_binding)
                .await
                .map(drop)
        }
    }
}

/// Authenticates a user found by `auth_query` (`secret`: `None` when there is none) and
/// returns how its own endpoint logs in to the server: the ClientKey of its SCRAM proof,
/// or its md5 hash. A SCRAM verifier is always checked with SCRAM (as PostgreSQL's `md5`
/// method does); an md5 hash with md5, except under `auth = "scram-sha-256"`, where it
/// fails as PostgreSQL's `scram-sha-256` method fails it. `trust` does not apply: the
/// server login needs what the client's password gives.
pub async fn authenticate_looked_up<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    method: AuthMethod,
    user_name: &str,
    secret: Option<&UserSecret>,
    channel_binding: Option<ScramServerAuth>,
) -> Result<PassThrough, AuthError> {
    match secret {
        Some(UserSecret::Md5(hash)) if method != AuthMethod::ScramSha256 => {
            md5_exchange(client, user_name, secret).await?;
            Ok(PassThrough::Md5(hash.clone()))
        }
        Some(UserSecret::Scram(v)) => {
            let client_key =
                scram_exchange(client, user_name, Some(v.clone()), channel_binding).await?;
            Ok(PassThrough::Scram {
                client_key,
                server_key: v.server_key.clone(),
            })
        }
        _ if method == AuthMethod::ScramSha256 => {
            scram_exchange(client, user_name, None, channel_binding).await?;
            Err(AuthError::Failed(user_name.to_string()))
        }
        _ => {
            md5_exchange(client, user_name, None).await?;
            Err(AuthError::Failed(user_name.to_string()))
        }
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

/// A SCRAM exchange against `verifier` (`None`: a user that cannot log in). Returns the
/// ClientKey the client's proof carries (see [`crate::server::passthrough`]).
async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    user_name: &str,
    verifier: Option<ScramVerifier>,
    channel_binding: Option<ScramServerAuth>,
) -> Result<Vec<u8>, AuthError> {
    // Unknown users (or md5-only secrets) run the whole exchange against a random verifier
    // and fail at the end, so the reply does not reveal which part was wrong.
    let known = verifier.is_some();
    let verifier = verifier.unwrap_or_else(random_verifier);
    let plus = channel_binding.is_some();
    let mechanisms: &[&str] = if plus {
        &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    } else {
        &[SCRAM_SHA_256]
    };
    encode::authentication_sasl(&mut client.wbuf, mechanisms);
    client.flush().await.map_err(StreamError::from)?;

    let msg = read_password(client).await?;
    let (mechanism, first) = frontend::sasl_initial_response(&msg[5..])
        .ok_or_else(|| AuthError::Malformed("malformed SASLInitialResponse".into()))?;
    check_mechanism(mechanism, first, plus)?;
    let secret = ScramSecret::Verifier {
        salt: verifier.salt,
        iterations: verifier.iterations,
        stored_key: verifier.stored_key.clone(),
        server_key: verifier.server_key,
    };
    let (server_first, waiting) = channel_binding
        .unwrap_or_default()
        .on_client_first_message_with_secret(first, secret)
        .map_err(|e| AuthError::Malformed(format!("malformed SCRAM message: {e}")))?;
    encode::authentication_sasl_continue(&mut client.wbuf, server_first.as_bytes());
    client.flush().await.map_err(StreamError::from)?;

    let msg = read_password(client).await?;
    match waiting.on_client_final_message(&msg[5..]) {
        Ok(server_final) if known => {
            let client_key = client_key(&verifier.stored_key, first, &server_first, &msg[5..])
                .ok_or_else(|| AuthError::Failed(user_name.to_string()))?;
            encode::authentication_sasl_final(&mut client.wbuf, server_final.as_bytes());
            Ok(client_key)
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

/// The ClientKey of an accepted exchange, from the messages exactly as they were sent:
/// AuthMessage = client-first-bare (after the GS2 header's two commas), server-first,
/// client-final-without-proof.
fn client_key(stored_key: &[u8], first: &[u8], server_first: &str, last: &[u8]) -> Option<Vec<u8>> {
    let bare_at = first
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b',')
        .nth(1)?
        .0
        + 1;
    let at = last.windows(3).rposition(|w| w == b",p=")?;
    let proof = base64::engine::general_purpose::STANDARD
        .decode(&last[at + 3..])
        .ok()?;
    let mut auth_message = first[bare_at..].to_vec();
    auth_message.push(b',');
    auth_message.extend_from_slice(server_first.as_bytes());
    auth_message.push(b',');
    auth_message.extend_from_slice(&last[..at]);
    crate::server::passthrough::client_key_from_proof(stored_key, &auth_message, &proof)
}

/// The mechanism must be one offered, and agree with the client's channel binding flag
/// (`p=...` is SCRAM-SHA-256-PLUS, as PostgreSQL checks). pgwire checks the rest: the binding
/// type, a `y` flag while -PLUS was offered (a downgrade), the binding data itself.
fn check_mechanism(mechanism: &[u8], first: &[u8], plus_offered: bool) -> Result<(), AuthError> {
    let binds = first.starts_with(b"p=");
    if mechanism == SCRAM_SHA_256_PLUS.as_bytes() && plus_offered {
        if !binds {
            return Err(AuthError::Malformed(
                "channel binding flag does not match the selected SCRAM-SHA-256-PLUS".into(),
            ));
        }
        return Ok(());
    }
    if mechanism == SCRAM_SHA_256.as_bytes() {
        if binds {
            return Err(AuthError::Malformed(
                "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data".into(),
            ));
        }
        return Ok(());
    }
    Err(AuthError::Malformed(
        "client selected an invalid SASL authentication mechanism".into(),
    ))
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
    secret: Option<&UserSecret>,
) -> Result<(), AuthError> {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    encode::authentication_md5(&mut client.wbuf, salt);
    client.flush().await.map_err(StreamError::from)?;
    let msg = read_password(client).await?;
    let sent = crate::protocol::cstr(&msg[5..])
        .ok_or_else(|| AuthError::Malformed("malformed password message".into()))?
        .0;
    let expected = match secret {
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

    /// A real client (postgres-protocol's) against pgwire's server with a verifier: the
    /// ClientKey recovered from the raw messages hashes to the verifier's StoredKey.
    #[test]
    fn client_key_is_recovered_from_an_accepted_exchange() {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let verifier =
            ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let first = client.message().to_vec();
        let secret = ScramSecret::Verifier {
            salt: verifier.salt.clone(),
            iterations: verifier.iterations,
            stored_key: verifier.stored_key.clone(),
            server_key: verifier.server_key.clone(),
        };
        let (server_first, waiting) = ScramServerAuth::default()
            .on_client_first_message_with_secret(&first, secret)
            .unwrap();
        client.update(server_first.as_bytes()).unwrap();
        let last = client.message().to_vec();
        let server_final = waiting.on_client_final_message(&last).unwrap();
        client.finish(server_final.as_bytes()).unwrap();
        let key = client_key(&verifier.stored_key, &first, &server_first, &last).unwrap();
        let stored = ring::digest::digest(&ring::digest::SHA256, &key);
        assert_eq!(stored.as_ref(), &verifier.stored_key[..]);
        // Another server-first than the one the proof was made for: no key.
        let other = server_first.replacen("r=", "r=x", 1);
        assert!(client_key(&verifier.stored_key, &first, &other, &last).is_none());
    }

    #[test]
    fn stored_md5_hash_gives_the_same_reply_as_the_password() {
        let salt = [1, 2, 3, 4];
        let stored = postgres_protocol::password::md5(b"secret", "app");
        let from_password = postgres_protocol::authentication::md5_hash(b"app", b"secret", salt);
        assert_eq!(salted_md5(&stored[3..], salt), from_password);
    }
}
