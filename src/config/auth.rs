//! `[auth]`: logins looked up in the database with `auth_query`, and the server credential
//! such a user's own endpoint logs in with ([`PassThrough`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::raw::RawAuth;
use super::validate::nonzero_duration;
use super::BackendConfig;

/// `[auth]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLookupConfig {
    /// The `[backends]` entry whose own login runs `auth_query`.
    pub backend: String,
    /// Returns `(usename, passwd)` for the user name bound to `$1` (a parameter, never
    /// spliced into the text).
    pub auth_query: String,
    /// How long an answer (a secret, or "no such user") is kept.
    pub ttl: Duration,
}

/// How an `[auth]` user's own endpoint logs in to the server without a password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum PassThrough {
    /// SCRAM pass-through: the ClientKey recovered from the client's SCRAM proof, and the
    /// verifier's ServerKey (to check the server's signature).
    Scram {
        client_key: Vec<u8>,
        server_key: Vec<u8>,
    },
    /// The stored `md5...` hash: PostgreSQL's md5 login needs only md5(password || user).
    Md5(String),
}

impl std::fmt::Debug for PassThrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PassThrough::Scram { .. } => "Scram(<redacted>)",
            PassThrough::Md5(_) => "Md5(<redacted>)",
        })
    }
}

/// Validates `[auth]`: its backend exists, its query has the `$1` parameter, a ttl > 0.
pub(super) fn auth_lookup(
    raw: Option<RawAuth>,
    backends: &BTreeMap<String, Arc<BackendConfig>>,
) -> Result<Option<AuthLookupConfig>, String> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if !backends.contains_key(&raw.backend) {
        let names: Vec<&str> = backends.keys().map(String::as_str).collect();
        return Err(format!(
            "auth.backend: no backend named {:?} (backends: {})",
            raw.backend,
            names.join(", ")
        ));
    }
    if !raw.auth_query.contains("$1") {
        return Err(
            "auth.auth_query: must take the user name as the parameter $1, e.g. \
             \"SELECT usename, passwd FROM pgtenant.user_lookup($1)\""
                .into(),
        );
    }
    Ok(Some(AuthLookupConfig {
        backend: raw.backend,
        auth_query: raw.auth_query,
        ttl: nonzero_duration("auth.ttl", &raw.ttl)?,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[backends.main]\nhost = \"h\"\ndatabase = \"d\"\nuser = \"u\"\n";

    fn load(auth: &str) -> Result<Config, String> {
        Config::from_toml_str(&format!("{BASE}{auth}"), "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn auth_section_loads_with_a_default_ttl() {
        let c = load("[auth]\nbackend = \"main\"\nauth_query = \"SELECT * FROM f($1)\"\n").unwrap();
        let auth = c.auth_lookup.unwrap();
        assert_eq!(auth.ttl, std::time::Duration::from_secs(60));
        assert_eq!(auth.auth_query, "SELECT * FROM f($1)");
        assert!(load("").unwrap().auth_lookup.is_none());
    }

    #[test]
    fn auth_section_errors_name_the_key() {
        let e = load("[auth]\nbackend = \"nope\"\nauth_query = \"SELECT f($1)\"\n").unwrap_err();
        assert!(e.contains("auth.backend: no backend named \"nope\""), "{e}");
        let e = load("[auth]\nbackend = \"main\"\nauth_query = \"SELECT 1\"\n").unwrap_err();
        assert!(
            e.contains("auth.auth_query: must take the user name as the parameter $1"),
            "{e}"
        );
        let e = load("[auth]\nbackend = \"main\"\nauth_query = \"SELECT f($1)\"\nttl = \"0s\"\n")
            .unwrap_err();
        assert!(e.contains("auth.ttl: must be longer than 0s"), "{e}");
        let e = load("[auth]\nbackend = \"main\"\nauth_query = \"f($1)\"\nttll = \"1s\"\n")
            .unwrap_err();
        assert!(e.contains("ttll"), "{e}");
    }
}
