//! The loaded tenants: for each, its endpoint pool, its logical pool inside it, and the SQL
//! that puts a server connection into its state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use postgres_protocol::escape::{escape_identifier, escape_literal};

use crate::config::{Config, EndpointConfig, TenantConfig};
use crate::pool::{Pool, TenantId};
use crate::server::{Params, ServerConn};

/// A server endpoint (host, port, database, server user) and its pool.
pub struct Endpoint {
    pub config: Arc<EndpointConfig>,
    pub pool: Arc<Pool<ServerConn>>,
    /// Parameters reported by the first server connection (shown to clients at login).
    pub params: tokio::sync::OnceCell<Params>,
}

/// One tenant as the sessions use it.
pub struct TenantRuntime {
    pub name: String,
    pub config: Arc<TenantConfig>,
    pub endpoint: Arc<Endpoint>,
    pub pool_id: TenantId,
    /// Unique identity of this tenant's state (see [`crate::server::StateKey`]).
    pub state_id: u64,
    /// `SET search_path ...; SET setting ...;` for this tenant.
    pub state_sql: String,
    /// Whether the tenant's settings have been applied once without error (until then a
    /// checkout applies them in a round trip of its own, before any client message).
    pub settings_verified: AtomicBool,
    /// Connected clients (for `max_client_connections`).
    pub clients: AtomicUsize,
}

pub struct Registry {
    pub tenants: HashMap<String, Arc<TenantRuntime>>,
    pub endpoints: Vec<Arc<Endpoint>>,
}

static NEXT_STATE_ID: AtomicU64 = AtomicU64::new(1);

impl Registry {
    pub fn build(config: &Config) -> Registry {
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
        let mut tenants = HashMap::new();
        for (name, tenant) in &config.tenants {
            let ep = config.endpoint_for(tenant);
            let endpoint = match endpoints.iter().find(|e| same_endpoint(&e.config, &ep)) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(Endpoint {
                        pool: Pool::new(ep.pool_size),
                        config: Arc::new(ep),
                        params: tokio::sync::OnceCell::new(),
                    });
                    endpoints.push(e.clone());
                    e
                }
            };
            let pool_id = endpoint.pool.add_tenant(tenant.max_server_connections);
            let runtime = TenantRuntime {
                name: name.clone(),
                config: tenant.clone(),
                pool_id,
                state_id: NEXT_STATE_ID.fetch_add(1, Ordering::Relaxed),
                state_sql: state_sql(tenant),
                settings_verified: AtomicBool::new(tenant.settings.is_empty()),
                clients: AtomicUsize::new(0),
                endpoint,
            };
            tenants.insert(name.clone(), Arc::new(runtime));
        }
        Registry { tenants, endpoints }
    }
}

/// Endpoints are equal on (host, port, database, server user).
fn same_endpoint(a: &EndpointConfig, b: &EndpointConfig) -> bool {
    a.host == b.host && a.port == b.port && a.database == b.database && a.user == b.user
}

/// The statements that give a connection this tenant's state. Schema names are always
/// quoted as identifiers, values as literals; setting names were validated at load.
pub fn state_sql(tenant: &TenantConfig) -> String {
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
    sql.push_str(&settings_sql(&tenant.settings));
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
}
