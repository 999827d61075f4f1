//! `[directory]`: tenants looked up in a table, cached.
//!
//! - The query runs on the directory's own server connection (never one from a client
//!   pool, never with a client's startup parameters), in the extended protocol with the
//!   name as its one text parameter (`$1`): the name is never part of the SQL text.
//! - One query per name at a time: concurrent lookups of one name wait for the same query
//!   (single flight). A row is cached for `ttl`, "no such row" for `negative_ttl`.
//! - The directory down (cannot connect, the query fails): a name cached before keeps its
//!   last row; other names get [`DirectoryError::Down`]. That outcome is itself cached for
//!   [`DOWN_RETRY`], so a herd of logins does not hammer a server that is down.
//! - The cache holds at most [`MAX_CACHED`] names: when full, expired entries go first,
//!   then the oldest half.
//!
//! The row's columns, by name (others are ignored): `search_path` (text[] or text with
//! comma-separated names), `settings` (a json object), `backend`, `database`,
//! `max_server_connections`. More than one row, or a bad value, is [`DirectoryError::Invalid`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::directory_row::tenant_from_row;
use crate::config::{Config, DirectoryConfig, EndpointConfig, ProxyConfig, TenantConfig};
use crate::server::ServerConn;

/// Most names cached at once (rows and "no such row" alike): about 300 bytes each plus
/// the row's strings, so at most ~100 MB for names nobody uses twice.
pub const MAX_CACHED: usize = 250_000;
/// How long "the directory is down" is remembered before the next attempt.
pub const DOWN_RETRY: Duration = Duration::from_secs(1);
/// What the directory connection runs once after logging in: PostgreSQL's default
/// `search_path` (the proxy's server logins start with an empty one), so that an
/// unqualified table name in `query` resolves as it would in psql.
const SETUP_SQL: &str = "SET search_path TO \"$user\", public";

/// Why a lookup found no tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("no such tenant in the directory")]
    Unknown,
    /// The directory could not be asked (the reason is for the log).
    #[error("the tenant directory is unavailable: {0}")]
    Down(String),
    /// The row could not be used (the reason is for the log).
    #[error("the tenant's directory row is invalid: {0}")]
    Invalid(String),
}

/// What one query found.
#[derive(Debug, Clone)]
enum Found {
    Tenant(Arc<TenantConfig>),
    Missing,
    Down(String),
    Invalid(String),
}

/// One name's cache entry: its query's outcome once known (concurrent lookups wait on the
/// same cell), and the row it had before, served while the directory is down.
struct Slot {
    outcome: OnceCell<(Found, Instant)>,
    previous: Option<Arc<TenantConfig>>,
}

pub struct Directory {
    pub config: Arc<DirectoryConfig>,
    endpoint: Arc<EndpointConfig>,
    conn: tokio::sync::Mutex<Option<ServerConn>>,
    cache: Mutex<HashMap<Arc<str>, Arc<Slot>>>,
    /// Queries sent (for tests, `SHOW`, and the benchmark).
    pub queries: AtomicU64,
}

impl Directory {
    pub fn new(config: Arc<DirectoryConfig>, endpoint: EndpointConfig) -> Directory {
        Directory {
            config,
            endpoint: Arc::new(endpoint),
            conn: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            queries: AtomicU64::new(0),
        }
    }

    /// Names cached now.
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Slot>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant `name` as the directory has it (from the cache while fresh).
    pub async fn find(
        &self,
        name: &str,
        config: &Config,
        proxy: &ProxyConfig,
    ) -> Result<Arc<TenantConfig>, DirectoryError> {
        let slot = self.slot(name);
        let (found, _) = slot
            .outcome
            .get_or_init(|| async { (self.query(name, config, proxy).await, Instant::now()) })
            .await;
        match found {
            Found::Tenant(t) => Ok(t.clone()),
            Found::Missing => Err(DirectoryError::Unknown),
            Found::Down(why) => slot
                .previous
                .clone()
                .ok_or_else(|| DirectoryError::Down(why.clone())),
            Found::Invalid(why) => Err(DirectoryError::Invalid(why.clone())),
        }
    }

    /// The cache entry to wait on: the current one while fresh (or still being asked),
    /// else a new one that remembers the last row.
    fn slot(&self, name: &str) -> Arc<Slot> {
        let now = Instant::now();
        let mut cache = self.lock();
        let previous = match cache.get(name) {
            Some(slot) => match slot.outcome.get() {
                None => return slot.clone(),
                Some((found, at)) if now.duration_since(*at) < self.lifetime(found) => {
                    return slot.clone()
                }
                Some((Found::Tenant(t), _)) => Some(t.clone()),
                // Still down: the last row carries on. A row found missing or invalid
                // since is never served again, even while the directory is down.
                Some((Found::Down(_), _)) => slot.previous.clone(),
                Some(_) => None,
            },
            None => None,
        };
        if cache.len() >= MAX_CACHED {
            self.make_room(&mut cache, now);
        }
        let slot = Arc::new(Slot {
            outcome: OnceCell::new(),
            previous,
        });
        cache.insert(name.into(), slot.clone());
        slot
    }

    fn lifetime(&self, found: &Found) -> Duration {
        match found {
            Found::Tenant(_) => self.config.ttl,
            Found::Missing | Found::Invalid(_) => self.config.negative_ttl,
            Found::Down(_) => DOWN_RETRY.min(self.config.negative_ttl),
        }
    }

    /// Drops expired entries; if that is not enough, the oldest half of the rest.
    fn make_room(&self, cache: &mut HashMap<Arc<str>, Arc<Slot>>, now: Instant) {
        let fresh = |slot: &Slot| {
            slot.outcome
                .get()
                .is_none_or(|(f, at)| now.duration_since(*at) < self.lifetime(f))
        };
        cache.retain(|_, slot| fresh(slot));
        if cache.len() < MAX_CACHED {
            return;
        }
        let mut ages: Vec<Instant> = cache
            .values()
            .filter_map(|s| s.outcome.get().map(|(_, at)| *at))
            .collect();
        ages.sort_unstable();
        if let Some(&cut) = ages.get(ages.len() / 2) {
            cache.retain(|_, s| s.outcome.get().is_none_or(|(_, at)| *at > cut));
        }
    }

    /// Asks the directory about `name` on its own connection (opened if needed).
    async fn query(&self, name: &str, config: &Config, proxy: &ProxyConfig) -> Found {
        let mut conn = self.conn.lock().await;
        self.queries.fetch_add(1, Ordering::Relaxed);
        let timeout = proxy.server_connect_timeout.max(proxy.query_wait_timeout);
        let asked = tokio::time::timeout(timeout, self.ask(&mut conn, name, proxy)).await;
        // Whatever failed, the next query starts on a new connection.
        let rows = match asked {
            Ok(Ok(rows)) => rows,
            Ok(Err(why)) => {
                *conn = None;
                return self.down(name, why);
            }
            Err(_) => {
                *conn = None;
                return self.down(name, "timed out".into());
            }
        };
        drop(conn);
        match tenant_from_row(name, &rows, &self.config.backend, config) {
            Ok(Some(t)) => Found::Tenant(Arc::new(t)),
            Ok(None) => Found::Missing,
            Err(why) => {
                tracing::warn!(tenant = name, error = %why, "invalid tenant directory row");
                Found::Invalid(why)
            }
        }
    }

    fn down(&self, name: &str, why: String) -> Found {
        tracing::warn!(tenant = name, backend = %self.config.backend, error = %why,
            "tenant directory lookup failed");
        Found::Down(why)
    }

    /// Connects if needed, then runs the query. `Err` says why (for the log).
    async fn ask(
        &self,
        conn: &mut Option<ServerConn>,
        name: &str,
        proxy: &ProxyConfig,
    ) -> Result<crate::server::LookupRows, String> {
        if conn.as_ref().is_none_or(|c| c.is_broken()) {
            let mut fresh = ServerConn::open(self.endpoint.clone(), proxy)
                .await
                .map_err(|e| e.to_string())?;
            let setup = fresh
                .own_query(SETUP_SQL)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(code) = setup.error {
                return Err(format!("setting search_path failed ({code})"));
            }
            *conn = Some(fresh);
        }
        let Some(c) = conn.as_mut() else {
            unreachable!("opened above")
        };
        let rows = c
            .lookup(&self.config.query, name)
            .await
            .map_err(|e| e.to_string())?;
        match rows.error {
            Some((code, message)) => Err(format!("the query failed: {code} {message}")),
            None => Ok(rows),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> Directory {
        let text = "[backends.main]\nhost='h'\ndatabase='d'\nuser='u'\npassword='p'\n\
                    [users.app]\npassword='x'\n\
                    [directory]\nbackend='main'\nquery='SELECT $1'\nttl='60s'\nnegative_ttl='10s'\n";
        let config = Config::from_toml_str(text, "t").unwrap();
        let d = config.directory.clone().unwrap();
        let probe = TenantConfig::plain("", "main", Vec::new());
        Directory::new(d, config.endpoint_for(&probe))
    }

    fn put(d: &Directory, name: &str, found: Found, age: Duration, previous: Option<&str>) {
        let previous = previous.map(|p| Arc::new(TenantConfig::plain(p, "main", vec![p.into()])));
        let slot = Slot {
            outcome: OnceCell::new_with(Some((found, Instant::now() - age))),
            previous,
        };
        d.lock().insert(name.into(), Arc::new(slot));
    }

    fn tenant(name: &str) -> Found {
        Found::Tenant(Arc::new(TenantConfig::plain(
            name,
            "main",
            vec![name.into()],
        )))
    }

    /// A fresh entry is reused (single flight, the cache); an expired one is replaced by a
    /// slot to ask again that remembers the last row, but never a row found gone since.
    #[test]
    fn which_entry_a_lookup_waits_on() {
        let d = directory();
        let s = Duration::from_secs;
        put(&d, "fresh", tenant("fresh"), s(59), None);
        put(&d, "old", tenant("old"), s(61), None);
        put(&d, "missing", Found::Missing, s(9), None);
        put(&d, "gone", Found::Missing, s(11), Some("gone"));
        put(&d, "down", Found::Down("x".into()), s(2), Some("down"));
        let fresh = d.slot("fresh");
        assert!(fresh.outcome.get().is_some(), "answered from the cache");
        assert!(Arc::ptr_eq(&fresh, &d.slot("fresh")));
        assert!(
            d.slot("missing").outcome.get().is_some(),
            "negative_ttl not over"
        );
        let old = d.slot("old");
        assert!(old.outcome.get().is_none(), "asked again after ttl");
        assert_eq!(
            old.previous.as_ref().unwrap().name,
            "old",
            "its row kept meanwhile"
        );
        assert!(
            Arc::ptr_eq(&old, &d.slot("old")),
            "one query however many ask"
        );
        assert!(
            d.slot("gone").previous.is_none(),
            "a row found missing is not served"
        );
        let down = d.slot("down");
        assert!(
            down.outcome.get().is_none(),
            "down is retried after a second"
        );
        assert_eq!(down.previous.as_ref().unwrap().name, "down");
        assert!(d.slot("new").outcome.get().is_none());
        assert_eq!(d.cached(), 6);
    }
}
