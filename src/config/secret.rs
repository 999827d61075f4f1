//! User passwords as written in `[users]`: telling verifiers, md5 hashes and plain passwords
//! apart, and parsing SCRAM-SHA-256 verifiers (the format PostgreSQL keeps in `pg_authid`).
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::{ScramVerifier, UserSecret};

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";
/// SHA-256 output size: the length of StoredKey and ServerKey.
const SCRAM_KEY_LEN: usize = 32;

/// Why a `SCRAM-SHA-256$...` string is not a usable verifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid SCRAM-SHA-256 verifier ({0}); expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")]
pub struct VerifierError(&'static str);

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`,
    /// as printed by `pgtenant verifier` and stored by PostgreSQL.
    pub fn parse(text: &str) -> Result<ScramVerifier, VerifierError> {
        let rest = text
            .strip_prefix(SCRAM_PREFIX)
            .ok_or(VerifierError("missing SCRAM-SHA-256$ prefix"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(VerifierError("missing '$' before the keys"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(VerifierError("missing ':' after the iteration count"))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(VerifierError("missing ':' between the keys"))?;
        let iterations: usize = iterations
            .parse()
            .map_err(|_| VerifierError("iteration count is not a number"))?;
        if iterations == 0 {
            return Err(VerifierError("iteration count is 0"));
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| VerifierError("salt is not base64"))?;
        if salt.is_empty() {
            return Err(VerifierError("salt is empty"));
        }
        let stored_key = decode_key(stored_key, "StoredKey is not 32 bytes of base64")?;
        let server_key = decode_key(server_key, "ServerKey is not 32 bytes of base64")?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }
}

fn decode_key(text: &str, problem: &'static str) -> Result<Vec<u8>, VerifierError> {
    match STANDARD.decode(text) {
        Ok(key) if key.len() == SCRAM_KEY_LEN => Ok(key),
        _ => Err(VerifierError(problem)),
    }
}

/// Classifies a `[users]` password: a `SCRAM-SHA-256$` verifier, an `md5` + 32 lowercase hex
/// hash, or else a plain password, for which a SCRAM verifier is derived here (random salt,
/// 4096 iterations; SASLprep applied as PostgreSQL does).
pub(super) fn user_secret(password: &str) -> Result<UserSecret, VerifierError> {
    if password.starts_with(SCRAM_PREFIX) {
        return ScramVerifier::parse(password).map(UserSecret::Scram);
    }
    if is_md5_hash(password) {
        return Ok(UserSecret::Md5(password.to_string()));
    }
    let scram = ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(
        password.as_bytes(),
    ))?;
    Ok(UserSecret::Plain {
        password: password.to_string(),
        scram,
    })
}

fn is_md5_hash(text: &str) -> bool {
    text.strip_prefix("md5").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_verifier_round_trips() {
        let text = postgres_protocol::password::scram_sha_256(b"secret");
        let verifier = ScramVerifier::parse(&text).unwrap();
        assert_eq!(verifier.iterations, 4096);
        assert_eq!(verifier.salt.len(), 16);
        assert_eq!(verifier.stored_key.len(), 32);
        assert_eq!(verifier.server_key.len(), 32);
        let rebuilt = format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            verifier.iterations,
            STANDARD.encode(&verifier.salt),
            STANDARD.encode(&verifier.stored_key),
            STANDARD.encode(&verifier.server_key)
        );
        assert_eq!(rebuilt, text);
    }

    #[test]
    fn bad_verifiers_are_rejected() {
        let good = postgres_protocol::password::scram_sha_256(b"secret");
        let (head, _) = good.rsplit_once(':').unwrap();
        for bad in [
            "SCRAM-SHA-256$".to_string(),
            "SCRAM-SHA-256$4096:c2FsdA==".to_string(),
            good.replacen("4096", "many", 1),
            good.replacen("4096", "0", 1),
            format!("{head}:c2hvcnQ="),
            format!("{head}:!!!"),
        ] {
            assert!(ScramVerifier::parse(&bad).is_err(), "accepted {bad}");
            assert!(user_secret(&bad).is_err(), "user_secret accepted {bad}");
        }
    }

    #[test]
    fn secrets_are_classified() {
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(matches!(user_secret(&verifier), Ok(UserSecret::Scram(_))));
        let md5 = postgres_protocol::password::md5(b"pw", "app");
        assert!(matches!(user_secret(&md5), Ok(UserSecret::Md5(ref h)) if *h == md5));
        // Not lowercase hex, or the wrong length: a plain password that happens to start with md5.
        for plain in ["md5ABCDEF0123456789ABCDEF0123456789", "md5abc", "secret"] {
            match user_secret(plain) {
                Ok(UserSecret::Plain { password, scram }) => {
                    assert_eq!(password, plain);
                    assert_eq!(scram.iterations, 4096);
                }
                other => panic!("{plain}: {other:?}"),
            }
        }
    }
}
