//! `pgtenant check --connect`: what a config file cannot say about itself. Logs in to every
//! endpoint the config names (each backend's own, and those of tenants with a `database` or
//! `user` of their own) and checks that every tenant's `search_path` schemas exist there and
//! that its login may use them. PostgreSQL skips a `search_path` schema that does not exist,
//! so without this check such a tenant's clients only see `relation "x" does not exist`.
//!
//! Each problem is one line of text naming the backend or tenant; none means all is well.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use postgres_protocol::escape::escape_literal;

use crate::config::{Config, EndpointConfig};
use crate::server::{FailureReason, ServerConn};

/// Endpoints as the pool tells them apart (host, port, database, user), and the password:
/// two backends that differ only in it are each checked with their own.
type EndpointKey = (String, u16, String, String, Option<String>);

fn key(ep: &EndpointConfig) -> EndpointKey {
    (
        ep.host.clone(),
        ep.port,
        ep.database.clone(),
        ep.user.clone(),
        ep.password.clone(),
    )
}

/// One endpoint and the tenants whose connections go to it.
struct Target {
    endpoint: EndpointConfig,
    tenants: Vec<String>,
}

/// Runs every check; returns the problems found, one line each, in a stable order.
pub async fn connect_check(config: &Config) -> Vec<String> {
    let mut targets: BTreeMap<EndpointKey, Target> = BTreeMap::new();
    for backend in config.backends.values() {
        let endpoint = backend.own_endpoint();
        targets.entry(key(&endpoint)).or_insert(Target {
            endpoint,
            tenants: Vec::new(),
        });
    }
    for tenant in config.tenants.values() {
        let endpoint = config.endpoint_for(tenant);
        targets
            .entry(key(&endpoint))
            .or_insert(Target {
                endpoint,
                tenants: Vec::new(),
            })
            .tenants
            .push(tenant.name.clone());
    }
    let mut problems = Vec::new();
    for target in targets.into_values() {
        problems.extend(check_endpoint(config, target).await);
    }
    problems
}

/// `backend "main" (user app, database app on 127.0.0.1:5432)`
fn describe(ep: &EndpointConfig) -> String {
    format!(
        "backend \"{}\" (user {}, database {} on {}:{})",
        ep.backend, ep.user, ep.database, ep.host, ep.port
    )
}

async fn check_endpoint(config: &Config, target: Target) -> Vec<String> {
    let ep = target.endpoint;
    let mut conn = match ServerConn::open(Arc::new(ep.clone()), &config.proxy).await {
        Ok(conn) => conn,
        Err(e) => {
            let class = FailureReason::of(&e).hint();
            let mut line = format!("{}: cannot log in: {class} ({e})", describe(&ep));
            if !target.tenants.is_empty() {
                line += &format!("; tenants affected: {}", target.tenants.join(", "));
            }
            return vec![line];
        }
    };
    let wanted: BTreeSet<&str> = target
        .tenants
        .iter()
        .flat_map(|t| config.tenants[t].search_path.iter().map(String::as_str))
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let array: Vec<String> = wanted.iter().map(|s| escape_literal(s)).collect();
    let sql = format!(
        "SELECT s, n.oid IS NOT NULL, n.oid IS NOT NULL AND pg_catalog.has_schema_privilege(n.oid, 'USAGE') \
         FROM pg_catalog.unnest(ARRAY[{}]::text[]) AS s \
         LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = s",
        array.join(",")
    );
    let result = match conn.own_query(&sql).await {
        Ok(result) if result.error.is_none() => result,
        Ok(result) => {
            let code = result.error.unwrap_or_default();
            return vec![format!(
                "{}: the schema check failed with SQLSTATE {code}",
                describe(&ep)
            )];
        }
        Err(e) => return vec![format!("{}: the schema check failed: {e}", describe(&ep))],
    };
    // schema -> (exists, usable)
    let found: BTreeMap<String, (bool, bool)> = result
        .rows
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [Some(s), Some(exists), Some(usable)] => {
                Some((s.clone(), (exists == "t", usable == "t")))
            }
            _ => None,
        })
        .collect();
    let mut problems = Vec::new();
    for tenant in &target.tenants {
        for schema in &config.tenants[tenant].search_path {
            let problem = match found.get(schema) {
                Some((true, true)) => continue,
                Some((true, false)) => format!(
                    "user {} has no USAGE on schema \"{schema}\" in database {}",
                    ep.user, ep.database
                ),
                _ => format!(
                    "schema \"{schema}\" does not exist in database {} (backend \"{}\")",
                    ep.database, ep.backend
                ),
            };
            problems.push(format!("tenant \"{tenant}\": {problem}"));
        }
    }
    problems
}
