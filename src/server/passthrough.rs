//! SCRAM pass-through: logging in to a server as an `[auth]` user with no password, from the
//! keys of the client's own SCRAM login (as PgBouncer does since 1.14).
//!
//! A SCRAM proof is `ClientKey XOR HMAC(StoredKey, AuthMessage)`: the proxy, holding the
//! verifier (StoredKey), recovers the ClientKey from the client's proof
//! ([`client_key_from_proof`]), and with it alone can compute a proof for any other
//! exchange with a server storing the same verifier ([`KeyScram`]). The ServerKey of the
//! verifier checks the server's signature. Names follow RFC 5802 section 3.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rand::RngCore;
use ring::{digest, hmac};

use super::ServerError;
use crate::config::PassThrough;

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, message).as_ref().to_vec()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// The ClientKey inside a client's `proof`, if it is right: `H(ClientKey)` must equal the
/// verifier's `stored_key`. `auth_message` is `client-first-bare,server-first,
/// client-final-without-proof`, exactly as sent.
pub fn client_key_from_proof(
    stored_key: &[u8],
    auth_message: &[u8],
    proof: &[u8],
) -> Option<Vec<u8>> {
    if proof.len() != stored_key.len() {
        return None;
    }
    let client_key = xor(proof, &hmac_sha256(stored_key, auth_message));
    let same = sha256(&client_key)
        .iter()
        .zip(stored_key)
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0;
    same.then_some(client_key)
}

/// The server's SCRAM exchange: from a password (a configured login) or from pass-through
/// keys.
pub(super) enum ServerScram {
    Password(ScramSha256),
    Keys(KeyScram),
}

impl ServerScram {
    pub(super) fn new(
        password: Option<&str>,
        pass_through: Option<&PassThrough>,
    ) -> Result<ServerScram, ServerError> {
        match (pass_through, password) {
            (
                Some(PassThrough::Scram {
                    client_key,
                    server_key,
                }),
                _,
            ) => Ok(ServerScram::Keys(KeyScram::new(client_key, server_key))),
            (Some(PassThrough::Md5(_)), _) => Err(ServerError::PassThrough(
                "the server asks for SCRAM and the user's password is stored as md5",
            )),
            (None, Some(password)) => Ok(ServerScram::Password(ScramSha256::new(
                password.as_bytes(),
                ChannelBinding::unsupported(),
            ))),
            (None, None) => Err(ServerError::NoPassword),
        }
    }

    pub(super) fn message(&self) -> &[u8] {
        match self {
            ServerScram::Password(s) => s.message(),
            ServerScram::Keys(s) => s.message.as_bytes(),
        }
    }

    pub(super) fn update(&mut self, server_first: &[u8]) -> Result<(), ServerError> {
        match self {
            ServerScram::Password(s) => s.update(server_first).map_err(ServerError::Scram),
            ServerScram::Keys(s) => s.update(server_first),
        }
    }

    pub(super) fn finish(&mut self, server_final: &[u8]) -> Result<(), ServerError> {
        match self {
            ServerScram::Password(s) => s.finish(server_final).map_err(ServerError::Scram),
            ServerScram::Keys(s) => s.finish(server_final),
        }
    }
}

/// The reply to an md5 challenge from a stored `md5...` hash: `"md5" + md5(hex + salt)`.
pub(super) fn md5_reply(stored: &str, salt: [u8; 4]) -> Result<String, ServerError> {
    use md5::{Digest, Md5};
    let inner = stored
        .strip_prefix("md5")
        .ok_or(ServerError::PassThrough("not an md5 hash"))?;
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    let mut out = String::from("md5");
    for b in h.finalize() {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

fn scram_error(what: &'static str) -> ServerError {
    ServerError::Scram(std::io::Error::new(std::io::ErrorKind::InvalidInput, what))
}

/// A SCRAM-SHA-256 client exchange (no channel binding) that proves knowledge of a
/// ClientKey instead of a password.
pub(super) struct KeyScram {
    client_key: Vec<u8>,
    server_key: Vec<u8>,
    client_first_bare: String,
    client_nonce: String,
    /// The message to send next.
    message: String,
    /// The AuthMessage, once the server's first message arrived.
    auth_message: Option<String>,
}

impl KeyScram {
    fn new(client_key: &[u8], server_key: &[u8]) -> KeyScram {
        let mut nonce = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut nonce);
        KeyScram::with_nonce(client_key, server_key, &STANDARD.encode(nonce))
    }

    fn with_nonce(client_key: &[u8], server_key: &[u8], nonce: &str) -> KeyScram {
        // The user name is the startup packet's; PostgreSQL ignores this one.
        let client_first_bare = format!("n=,r={nonce}");
        KeyScram {
            client_key: client_key.to_vec(),
            server_key: server_key.to_vec(),
            message: format!("n,,{client_first_bare}"),
            client_first_bare,
            client_nonce: nonce.to_string(),
            auth_message: None,
        }
    }

    fn update(&mut self, server_first: &[u8]) -> Result<(), ServerError> {
        let text = std::str::from_utf8(server_first).map_err(|_| scram_error("not UTF-8"))?;
        let mut parts = text.split(',');
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or_else(|| scram_error("server-first without a nonce"))?;
        let client_nonce = &self.client_nonce;
        if !nonce.starts_with(client_nonce.as_str()) || nonce.len() == client_nonce.len() {
            return Err(scram_error("the server's nonce does not extend ours"));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let stored_key = sha256(&self.client_key);
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof = xor(&self.client_key, &signature);
        self.message = format!("{without_proof},p={}", STANDARD.encode(proof));
        self.auth_message = Some(auth_message);
        Ok(())
    }

    fn finish(&mut self, server_final: &[u8]) -> Result<(), ServerError> {
        let auth_message = self
            .auth_message
            .as_ref()
            .ok_or_else(|| scram_error("server-final before server-first"))?;
        let text = std::str::from_utf8(server_final).map_err(|_| scram_error("not UTF-8"))?;
        let verifier = text
            .split(',')
            .next()
            .and_then(|p| p.strip_prefix("v="))
            .ok_or_else(|| scram_error("server-final without a signature"))?;
        let expected = STANDARD.encode(hmac_sha256(&self.server_key, auth_message.as_bytes()));
        if verifier != expected {
            return Err(scram_error("the server's signature is wrong"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    /// ClientKey and ServerKey of "pencil" with the vector's salt and iterations.
    fn keys() -> (Vec<u8>, Vec<u8>) {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let mut salted_password = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(4096).unwrap(),
            &salt,
            b"pencil",
            &mut salted_password,
        );
        (
            hmac_sha256(&salted_password, b"Client Key"),
            hmac_sha256(&salted_password, b"Server Key"),
        )
    }

    #[test]
    fn key_scram_reproduces_rfc7677() {
        let (client_key, server_key) = keys();
        let mut scram = KeyScram::with_nonce(&client_key, &server_key, CLIENT_NONCE);
        // The vector's client-first names user "user": only the bare part differs.
        scram.client_first_bare = format!("n=user,r={CLIENT_NONCE}");
        scram.update(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(scram.message, CLIENT_FINAL);
        scram.finish(SERVER_FINAL.as_bytes()).unwrap();
        let forged = "v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        assert!(
            scram.finish(forged.as_bytes()).is_err(),
            "a wrong server signature"
        );
    }

    #[test]
    fn client_key_is_recovered_from_the_rfc7677_proof() {
        let (client_key, _) = keys();
        let stored_key = sha256(&client_key);
        let (without_proof, proof) = CLIENT_FINAL.rsplit_once(",p=").unwrap();
        let auth_message = format!("n=user,r={CLIENT_NONCE},{SERVER_FIRST},{without_proof}");
        let proof = STANDARD.decode(proof).unwrap();
        let got = client_key_from_proof(&stored_key, auth_message.as_bytes(), &proof);
        assert_eq!(got.as_deref(), Some(&client_key[..]));
        let mut wrong = proof.clone();
        wrong[0] ^= 1;
        assert_eq!(
            client_key_from_proof(&stored_key, auth_message.as_bytes(), &wrong),
            None
        );
        assert_eq!(
            client_key_from_proof(&stored_key, auth_message.as_bytes(), &proof[1..]),
            None
        );
    }

    #[test]
    fn stored_md5_hash_answers_as_the_password_would() {
        let salt = [9, 8, 7, 6];
        let stored = postgres_protocol::password::md5(b"secret", "app");
        let from_password = postgres_protocol::authentication::md5_hash(b"app", b"secret", salt);
        assert_eq!(md5_reply(&stored, salt).unwrap(), from_password);
    }
}
