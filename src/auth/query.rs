//! `[auth]`: looking a user's stored password up with `auth_query`, on a server connection
//! of the lookup's own (the `[auth]` backend's login, the proxy's startup parameters only:
//! never a client's), with the user name bound as the text parameter `$1` of an extended
//! protocol query. Answers (a secret, or "no such user") are cached for `ttl`; concurrent
//! logins of one user wait on one query; the cache holds at most [`MAX_CACHED`] users.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use tokio::sync::OnceCell;

use crate::config::{AuthLookupConfig, Config, EndpointConfig, ScramVerifier, UserSecret};
use crate::pool::Poolable;
use crate::server::{ServerConn, ServerError};

/// Users whose answers are kept at most (beyond it expired ones go first, then any).
pub const MAX_CACHED: usize = 10_000;

/// Why a user could not be looked up (the login then fails with 08006).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("could not reach the auth backend: {0}")]
    Server(#[from] ServerError),
    #[error("auth_query failed: {0}")]
    Query(String),
    #[error("auth_query timed out")]
    Timeout,
}

type Answer = Option<UserSecret>;

struct Entry {
    at: Instant,
    answer: Arc<OnceCell<Answer>>,
}

/// The cache and the lookup connection (kept across reloads in `Shared`).
#[derive(Default)]
pub struct AuthLookup {
    /// Answers by user name, with the `[auth]` section they were found with.
    cache: Mutex<(Option<AuthLookupConfig>, HashMap<String, Entry>)>,
    conn: tokio::sync::Mutex<Option<ServerConn>>,
    /// Queries run (for tests and `SHOW`-style introspection).
    pub queries: AtomicU64,
}

impl AuthLookup {
    /// The stored secret of `user` (`None`: no such user, or a password that is neither a
    /// SCRAM verifier nor an md5 hash). `config.auth_lookup` must be set.
    pub async fn find(&self, config: &Config, user: &str) -> Result<Answer, LookupError> {
        let Some(auth) = config.auth_lookup.as_ref() else {
            return Ok(None);
        };
        let cell = self.cell(auth, user);
        let answer = cell
            .get_or_try_init(|| self.query(config, auth, user))
            .await?;
        Ok(answer.clone())
    }

    /// The cell that holds (or will hold) `user`'s answer: a fresh one when there is none,
    /// it expired, or `[auth]` changed.
    fn cell(&self, auth: &AuthLookupConfig, user: &str) -> Arc<OnceCell<Answer>> {
        // A poisoned lock only means another login panicked; the map is still consistent.
        let mut guard = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (configured, map) = &mut *guard;
        if configured.as_ref() != Some(auth) {
            *configured = Some(auth.clone());
            map.clear();
        }
        let now = Instant::now();
        let fresh = |e: &Entry| now.duration_since(e.at) < auth.ttl;
        if let Some(e) = map.get(user).filter(|e| fresh(e)) {
            return e.answer.clone();
        }
        if map.len() >= MAX_CACHED {
            map.retain(|_, e| fresh(e));
            if map.len() >= MAX_CACHED {
                let any = map.keys().next().cloned();
                any.map(|k| map.remove(&k));
            }
        }
        let answer = Arc::new(OnceCell::new());
        let entry = Entry {
            at: now,
            answer: answer.clone(),
        };
        map.insert(user.to_string(), entry);
        answer
    }

    async fn query(
        &self,
        config: &Config,
        auth: &AuthLookupConfig,
        user: &str,
    ) -> Result<Answer, LookupError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let endpoint = lookup_endpoint(config, auth);
        let timeout = config.proxy.server_connect_timeout;
        let mut slot = self.conn.lock().await;
        let reusable = slot
            .as_mut()
            .is_some_and(|c| **c.endpoint() == endpoint && !c.is_broken() && c.reusable());
        if !reusable {
            *slot = None;
            *slot = Some(ServerConn::open(Arc::new(endpoint), &config.proxy).await?);
        }
        // Just set.
        let conn = slot.as_mut().expect("lookup connection");
        match tokio::time::timeout(timeout, run(conn, &auth.auth_query, user)).await {
            Ok(Ok(passwd)) => Ok(passwd.as_deref().and_then(stored_secret)),
            Ok(Err(e)) => {
                if !matches!(e, LookupError::Query(_)) {
                    *slot = None;
                }
                Err(e)
            }
            Err(_) => {
                *slot = None;
                Err(LookupError::Timeout)
            }
        }
    }
}

/// The `[auth]` backend's own login.
fn lookup_endpoint(config: &Config, auth: &AuthLookupConfig) -> EndpointConfig {
    EndpointConfig {
        pool_size: 1,
        min_pool_size: 0,
        ..config.backends[&auth.backend].own_endpoint()
    }
}

/// A `passwd` the proxy can log a client in with: a SCRAM-SHA-256 verifier or an md5 hash.
fn stored_secret(passwd: &str) -> Option<UserSecret> {
    if passwd.starts_with("SCRAM-SHA-256$") {
        return ScramVerifier::parse(passwd).ok().map(UserSecret::Scram);
    }
    let md5 = passwd.strip_prefix("md5").is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    md5.then(|| UserSecret::Md5(passwd.to_string()))
}

/// Runs `query` with `$1 = user` (text) and returns the first row's second column (NULL:
/// `None`; no row: `None`). A server error is [`LookupError::Query`], after which the
/// connection is still usable (its ReadyForQuery was read).
async fn run(
    conn: &mut ServerConn,
    query: &str,
    user: &str,
) -> Result<Option<String>, LookupError> {
    let mut out = BytesMut::new();
    let io = |e: std::io::Error| LookupError::Server(ServerError::Io(e));
    frontend::parse("", query, [25], &mut out).map_err(io)?;
    frontend::bind(
        "",
        "",
        [0],
        [user],
        |v, buf| {
            buf.extend_from_slice(v.as_bytes());
            Ok::<_, Box<dyn std::error::Error + Sync + Send>>(IsNull::No)
        },
        [0],
        &mut out,
    )
    .map_err(|_| io(std::io::ErrorKind::InvalidInput.into()))?;
    frontend::execute("", 0, &mut out).map_err(io)?;
    frontend::sync(&mut out);
    conn.write_all(&out).await.map_err(io)?;
    let mut found: Option<Option<String>> = None;
    let mut error = None;
    loop {
        let mut msg = conn.read_message().await?;
        let parsed = Message::parse(&mut msg)
            .map_err(io)?
            .ok_or_else(|| io(std::io::ErrorKind::UnexpectedEof.into()))?;
        match parsed {
            Message::DataRow(row) if found.is_none() => found = Some(passwd_of(&row)?),
            Message::ErrorResponse(body) => error = Some(error_text(&body)),
            Message::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(LookupError::Query(e)),
        None => Ok(found.flatten()),
    }
}

/// The second column of a `(usename, passwd)` row; a NULL `usename` is no user.
fn passwd_of(
    row: &postgres_protocol::message::backend::DataRowBody,
) -> Result<Option<String>, LookupError> {
    use fallible_iterator::FallibleIterator;
    let buf = row.buffer();
    let fields: Vec<Option<std::ops::Range<usize>>> = row
        .ranges()
        .collect()
        .map_err(|e| LookupError::Query(format!("malformed row: {e}")))?;
    if fields.len() != 2 {
        return Err(LookupError::Query(format!(
            "auth_query must return two columns (usename, passwd), not {}",
            fields.len()
        )));
    }
    let text = |r: &Option<std::ops::Range<usize>>| {
        r.clone()
            .map(|r| String::from_utf8_lossy(&buf[r]).into_owned())
    };
    Ok(text(&fields[0]).and(text(&fields[1])))
}

fn error_text(body: &postgres_protocol::message::backend::ErrorResponseBody) -> String {
    use fallible_iterator::FallibleIterator;
    let mut fields = body.fields();
    let (mut code, mut message) = (String::new(), String::new());
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    format!("{code} {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_verifiers_and_md5_hashes_are_secrets() {
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(matches!(
            stored_secret(&verifier),
            Some(UserSecret::Scram(_))
        ));
        let md5 = postgres_protocol::password::md5(b"pw", "u");
        assert!(matches!(stored_secret(&md5), Some(UserSecret::Md5(_))));
        for bad in [
            "",
            "pw",
            "md5",
            "md5XYZ",
            "SCRAM-SHA-256$x",
            &md5.to_uppercase(),
        ] {
            assert!(stored_secret(bad).is_none(), "{bad:?}");
        }
    }
}
