//! The loaded tenants: for each, its endpoint pool, its logical pool inside it, and the SQL
//! that puts a server connection into its state.
//!
//! A reload builds a new [`Registry`] from the old one ([`Registry::rebuild`]): an endpoint
//! whose configuration is unchanged keeps its pool (and its idle connections); a tenant
//! whose configuration and endpoint are unchanged keeps its [`TenantRuntime`] (and so its
//! `state_id`: connections holding its state stay valid); a changed tenant gets a new
//! runtime and `state_id`, so its next checkout re-applies its state. Counters and controls
//! ([`TenantStats`], [`TenantControl`]) follow the tenant's name across reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use postgres_protocol::escape::{escape_identifier, escape_literal};

use super::stats::{TenantControl, TenantStats};
use crate::config::{Config, EndpointConfig, TenantConfig};
use crate::kinds::{ConnectFailure, KindCounts};
use crate::pool::{Pool, TenantId};
use crate::server::{Params, ServerConn};

/// A server endpoint (host, port, database, server user) and its pool.
pub struct Endpoint {
    pub config: Arc<EndpointConfig>,
    pub pool: Arc<Pool<ServerConn>>,
    /// Parameters reported by the first server connection (shown to clients at login).
    pub params: tokio::sync::OnceCell<Params>,
    /// Whether the last connection attempt failed (new connections then fail fast, with
    /// back-off, instead of queueing behind attempts that time out).
    pub health: crate::server::Health,
    /// The endpoint's LISTEN connection, shared by its listening clients.
    pub listen: Arc<crate::server::notify::ListenHub>,
    /// The registry's failure counts (shared by all endpoints).
    pub connect_failures: Arc<KindCounts<ConnectFailure>>,
}

/// One tenant as the sessions use it.
pub struct TenantRuntime {
    /// Shared with every client's console entry.
    pub name: Arc<str>,
    pub config: Arc<TenantConfig>,
    pub endpoint: Arc<Endpoint>,
    pub pool_id: TenantId,
    /// Unique identity of this tenant's state (see [`crate::server::StateKey`]).
    pub state_id: u64,
    /// `SET search_path ...; SET setting ...;` for this tenant.
    pub state_sql: String,
    /// The names of what `state_sql` sets (`search_path` first).
    pub setting_names: std::sync::Arc<[String]>,
    /// Whether the tenant's settings have been applied once without error (until then a
    /// checkout applies them in a round trip of its own, before any client message).
    pub settings_verified: AtomicBool,
    /// Counters (kept across reloads).
    pub stats: Arc<TenantStats>,
    /// Pause and removal (kept across reloads).
    pub control: Arc<TenantControl>,
    /// Where the tenant comes from: a `[tenants]` block, the template or the directory.
    pub origin: Origin,
    /// Directory tenants: until when (ms on [`now_ms`]'s clock) the row it was made from
    /// is known to be current; a checkout after that asks the directory again.
    pub valid_until_ms: AtomicU64,
}

/// Where a tenant comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `[tenants]` block.
    Configured,
    /// `[tenant_template]`, made on first use.
    Template,
    /// A `[directory]` row, made on first use and checked again after `ttl`.
    Directory,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Configured => "config",
            Origin::Template => "template",
            Origin::Directory => "directory",
        }
    }
}

/// Milliseconds on a monotonic clock of the process's own (for validity stamps).
pub fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl TenantRuntime {
    /// Whether a checkout must ask the directory again first (its row's `ttl` has passed).
    #[inline]
    pub fn needs_recheck(&self) -> bool {
        self.origin == Origin::Directory && now_ms() >= self.valid_until_ms.load(Ordering::Relaxed)
    }
}

impl Drop for TenantRuntime {
    /// A tenant made on demand gives its logical pool back (reused once quiet); configured
    /// tenants' slots follow their name across reloads.
    fn drop(&mut self) {
        if self.origin != Origin::Configured {
            self.endpoint.pool.remove_tenant(self.pool_id);
        }
    }
}

pub struct Registry {
    /// The `[tenants]` blocks.
    pub tenants: HashMap<String, Arc<TenantRuntime>>,
    /// Tenants made on demand (`[tenant_template]`, `[directory]`), if configured; shared
    /// by the generations whose template, directory and backends are the same.
    pub dynamic: Option<Arc<super::dynamic::Dynamic>>,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Failed server connection attempts by kind, over every endpoint (and every reload).
    pub connect_failures: Arc<KindCounts<ConnectFailure>>,
    /// The own endpoints of users found by `auth_query` (carried over by reloads).
    pub user_endpoints: super::user_endpoints::UserEndpoints,
}

static NEXT_STATE_ID: AtomicU64 = AtomicU64::new(1);

impl Registry {
    pub fn build(config: &Config) -> Registry {
        Registry::build_from(config, None)
    }

    /// The registry for a reloaded `config`, reusing what it can of `old` (see the module
    /// docs).
    pub fn rebuild(config: &Config, old: &Registry) -> Registry {
        Registry::build_from(config, Some(old))
    }

    fn build_from(config: &Config, old: Option<&Registry>) -> Registry {
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
        let connect_failures = old.map(|o| o.connect_failures.clone()).unwrap_or_default();
        let mut tenants = HashMap::new();
        for (name, tenant) in &config.tenants {
            let ep = config.endpoint_for(tenant);
            let endpoint = match endpoints.iter().find(|e| same_endpoint(&e.config, &ep)) {
                Some(e) => e.clone(),
                None => {
                    let reused = old.and_then(|o| o.endpoints.iter().find(|e| *e.config == ep));
                    let e = match reused {
                        Some(e) => e.clone(),
                        None => new_endpoint(ep, &connect_failures),
                    };
                    endpoints.push(e.clone());
                    e
                }
            };
            let previous = old.and_then(|o| o.tenants.get(name));
            let runtime = match previous {
                Some(p)
                    if Arc::ptr_eq(&p.endpoint, &endpoint) && same_tenant(&p.config, tenant) =>
                {
                    p.clone()
                }
                _ => Arc::new(new_runtime(name, tenant, endpoint, previous.map(|p| &**p))),
            };
            tenants.insert(name.clone(), runtime);
        }
        let dynamic = super::dynamic::Dynamic::for_config(
            config,
            old.and_then(|o| o.dynamic.as_ref()),
            &connect_failures,
        );
        Registry {
            tenants,
            dynamic,
            endpoints,
            connect_failures,
            user_endpoints: old
                .map(|o| o.user_endpoints.carry_over(config))
                .unwrap_or_default(),
        }
    }

    /// The tenant called `name` if it is loaded: a `[tenants]` block, or a tenant made on
    /// demand that is in use now.
    pub fn get(&self, name: &str) -> Option<Arc<TenantRuntime>> {
        match self.tenants.get(name) {
            Some(t) => Some(t.clone()),
            None => self.dynamic.as_ref()?.get(name),
        }
    }

    /// Every loaded tenant (see [`Registry::get`]), configured ones first.
    pub fn all_tenants(&self) -> Vec<Arc<TenantRuntime>> {
        let mut all: Vec<_> = self.tenants.values().cloned().collect();
        if let Some(d) = &self.dynamic {
            all.extend(d.active());
        }
        all
    }

    /// Every endpoint in use: the configured tenants' and those of tenants made on demand.
    pub fn all_endpoints(&self) -> Vec<Arc<Endpoint>> {
        let mut all = self.endpoints.clone();
        if let Some(d) = &self.dynamic {
            for e in d.endpoints() {
                if !all.iter().any(|a| Arc::ptr_eq(a, &e)) {
                    all.push(e);
                }
            }
        }
        all
    }

    /// The tenant called `name`, in SPEC's order: a `[tenants]` block, then the directory,
    /// then the template (made now if it is not in use).
    pub async fn resolve(
        &self,
        config: &Config,
        name: &str,
    ) -> Result<Arc<TenantRuntime>, super::dynamic::ResolveError> {
        if let Some(t) = self.tenants.get(name) {
            return Ok(t.clone());
        }
        match &self.dynamic {
            Some(d) => d.resolve(name, config, &self.endpoints).await,
            None => Err(super::dynamic::ResolveError::Unknown),
        }
    }
}

/// A new endpoint pool.
pub(super) fn new_endpoint(
    ep: EndpointConfig,
    connect_failures: &Arc<KindCounts<ConnectFailure>>,
) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        pool: Pool::new(ep.pool_size),
        config: Arc::new(ep),
        params: tokio::sync::OnceCell::new(),
        health: crate::server::Health::default(),
        listen: Default::default(),
        connect_failures: connect_failures.clone(),
    })
}

/// A runtime for a tenant made on demand: always a logical pool of its own (given back
/// when the runtime is dropped) and a fresh `state_id`; counters and controls carried over
/// from `previous` (the same name's runtime before its row changed).
pub(super) fn on_demand_runtime(
    tenant: &Arc<TenantConfig>,
    endpoint: Arc<Endpoint>,
    previous: Option<&TenantRuntime>,
    origin: Origin,
    valid_until_ms: u64,
) -> TenantRuntime {
    // Without a previous runtime `new_runtime` takes a slot of its own.
    let mut runtime = new_runtime(&tenant.name, tenant, endpoint, None);
    runtime.origin = origin;
    runtime.valid_until_ms = AtomicU64::new(valid_until_ms);
    if let Some(p) = previous {
        runtime.stats = p.stats.clone();
        runtime.control = p.control.clone();
    }
    runtime
}

/// A runtime for a new or changed tenant. A changed one keeps its counters and controls,
/// and its logical pool when that is still right (same endpoint, same cap).
fn new_runtime(
    name: &str,
    tenant: &Arc<TenantConfig>,
    endpoint: Arc<Endpoint>,
    previous: Option<&TenantRuntime>,
) -> TenantRuntime {
    let same_slot = previous.filter(|p| {
        Arc::ptr_eq(&p.endpoint, &endpoint)
            && p.config.max_server_connections == tenant.max_server_connections
    });
    let pool_id = match same_slot {
        Some(p) => p.pool_id,
        None => endpoint.pool.add_tenant(tenant.max_server_connections),
    };
    TenantRuntime {
        name: name.into(),
        config: tenant.clone(),
        pool_id,
        state_id: NEXT_STATE_ID.fetch_add(1, Ordering::Relaxed),
        state_sql: state_sql(tenant),
        setting_names: std::iter::once("search_path".to_string())
            .chain(tenant.settings.iter().map(|(name, _)| name.clone()))
            .collect(),
        settings_verified: AtomicBool::new(tenant.settings.is_empty()),
        stats: previous.map(|p| p.stats.clone()).unwrap_or_default(),
        control: previous.map(|p| p.control.clone()).unwrap_or_default(),
        endpoint,
        origin: Origin::Configured,
        valid_until_ms: AtomicU64::new(u64::MAX),
    }
}

/// Endpoints are equal on (host, port, database, server user).
/// Whether two backends' tenants may share one pool: the same server, database and login,
/// logging in the same way (password, TLS). Anything less would hand one backend's tenants
/// connections made as the other says (fail closed: a `verify-full` backend never gets a
/// connection a `disable` one made).
pub(super) fn same_endpoint(a: &EndpointConfig, b: &EndpointConfig) -> bool {
    a.host == b.host
        && a.port == b.port
        && a.database == b.database
        && a.user == b.user
        && a.password == b.password
        && a.tls == b.tls
}

/// Whether two tenant configurations would behave the same (every field counts).
pub fn same_tenant(a: &TenantConfig, b: &TenantConfig) -> bool {
    a == b
}

/// The statements that give a connection this tenant's state. Schema names are always
/// quoted as identifiers, values as literals; setting names were validated at load.
pub fn state_sql(tenant: &TenantConfig) -> String {
    let mut sql = search_path_sql(tenant);
    sql.push_str(&settings_sql(&tenant.settings));
    sql
}

/// `SET search_path TO "a","b";` for the tenant.
fn search_path_sql(tenant: &TenantConfig) -> String {
    let mut sql = String::from("SET search_path TO ");
    if tenant.search_path.is_empty() {
        sql.push_str("''");
    } else {
        let quoted: Vec<String> = tenant
            .search_path
            .iter()
            .map(|s| escape_identifier(s))
            .collect();
        sql.push_str(&quoted.join(","));
    }
    sql.push(';');
    sql
}

/// `SET name TO 'value';` for each setting (names must already be valid).
pub fn settings_sql(settings: &[(String, String)]) -> String {
    let mut sql = String::new();
    for (name, value) in settings {
        sql.push_str("SET ");
        sql.push_str(name);
        sql.push_str(" TO ");
        sql.push_str(&escape_literal(value));
        sql.push(';');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_schemas_and_values() {
        let t = TenantConfig {
            name: "a.com".into(),
            backend: "main".into(),
            search_path: vec!["a_com".into(), "we\"ird".into()],
            settings: vec![("app.tenant_id".into(), "17'; drop".into())],
            database: None,
            user: None,
            password: None,
            max_server_connections: None,
            max_client_connections: None,
        };
        assert_eq!(
            state_sql(&t),
            "SET search_path TO \"a_com\",\"we\"\"ird\";SET app.tenant_id TO '17''; drop';"
        );
    }

    fn config(b_search_path: &str, pool_size: usize, extra: &str) -> Config {
        let text = format!(
            "[backends.main]\nhost = \"127.0.0.1\"\nport = 5432\ndatabase = \"app\"\n\
             user = \"app\"\npassword = \"pw\"\npool_size = {pool_size}\n\
             [users.app]\npassword = \"secret\"\n\
             [tenants.a]\nbackend = \"main\"\nsearch_path = [\"a\"]\n\
             [tenants.b]\nbackend = \"main\"\nsearch_path = [\"{b_search_path}\"]\n{extra}"
        );
        Config::from_toml_str(&text, "test.toml").unwrap()
    }

    #[test]
    fn rebuild_keeps_what_did_not_change() {
        let old = Registry::build(&config("b", 4, ""));
        let extra = "[tenants.c]\nbackend = \"main\"\nsearch_path = [\"c\"]\n";
        let new = Registry::rebuild(&config("b2", 4, extra), &old);
        assert_eq!(new.endpoints.len(), 1);
        assert!(
            Arc::ptr_eq(&new.endpoints[0], &old.endpoints[0]),
            "same pool"
        );
        assert!(
            Arc::ptr_eq(&new.tenants["a"], &old.tenants["a"]),
            "a unchanged"
        );
        let (b_old, b_new) = (&old.tenants["b"], &new.tenants["b"]);
        assert!(!Arc::ptr_eq(b_old, b_new));
        assert_ne!(
            b_old.state_id, b_new.state_id,
            "a new state: SET again at checkout"
        );
        assert_eq!(b_new.state_sql, "SET search_path TO \"b2\";");
        assert_eq!(b_old.pool_id, b_new.pool_id, "same logical pool");
        assert!(
            Arc::ptr_eq(&b_old.stats, &b_new.stats),
            "counters carry over"
        );
        assert!(
            Arc::ptr_eq(&b_old.control, &b_new.control),
            "pause carries over"
        );
        assert!(new.tenants.contains_key("c"));
        assert_ne!(new.tenants["c"].pool_id, b_new.pool_id);
    }

    #[test]
    fn rebuild_replaces_a_resized_endpoint() {
        let old = Registry::build(&config("b", 4, ""));
        let new = Registry::rebuild(&config("b", 8, ""), &old);
        assert!(!Arc::ptr_eq(&new.endpoints[0], &old.endpoints[0]));
        assert_eq!(new.endpoints[0].pool.size(), 8);
        let (a_old, a_new) = (&old.tenants["a"], &new.tenants["a"]);
        assert!(!Arc::ptr_eq(a_old, a_new), "a moved to the new pool");
        assert!(Arc::ptr_eq(&a_old.stats, &a_new.stats));
    }

    /// Two backends on the same server, database and login that differ in how they log in
    /// (password) or in TLS (`sslmode`) are two endpoints: a tenant of the `verify-full`
    /// one must never get a connection the `disable` one made.
    #[test]
    fn backends_differing_in_password_or_tls_do_not_share_a_pool() {
        let extra = "[backends.other_pw]\nhost = \"127.0.0.1\"\nport = 5432\ndatabase = \"app\"\n\
             user = \"app\"\npassword = \"another\"\n\
             [backends.tls]\nhost = \"127.0.0.1\"\nport = 5432\ndatabase = \"app\"\n\
             user = \"app\"\npassword = \"pw\"\nsslmode = \"require\"\n\
             [tenants.c]\nbackend = \"other_pw\"\nsearch_path = [\"c\"]\n\
             [tenants.d]\nbackend = \"tls\"\nsearch_path = [\"d\"]\n";
        let registry = Registry::build(&config("b", 4, extra));
        let pool = |t: &str| Arc::as_ptr(&registry.tenants[t].endpoint);
        assert_eq!(pool("a"), pool("b"), "same backend, same pool");
        assert_ne!(pool("a"), pool("c"), "another password");
        assert_ne!(pool("a"), pool("d"), "another sslmode");
        assert_eq!(registry.endpoints.len(), 3);
    }
}
