//! `SHOW CONFIG`: the `[proxy]` settings in force (durations as in `proxy.toml`), how many
//! backends, tenants and users are loaded, and which generation. No passwords.

use std::time::Duration;

use super::table::{Table, Type};
use crate::shared::{Generation, Shared};

pub fn run(shared: &Shared, generation: &Generation) -> Table {
    let config = &generation.config;
    let p = &config.proxy;
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let sources: Vec<&str> = p.tenant_from.iter().map(|s| s.as_str()).collect();
    let rows: Vec<(&str, String)> = vec![
        ("listen", p.listen.to_string()),
        ("pool_mode", p.pool_mode.as_str().into()),
        ("tenant_from", sources.join(",")),
        ("user_separator", p.user_separator.clone()),
        (
            "default_tenant",
            p.default_tenant.clone().unwrap_or_default(),
        ),
        ("auth", p.auth.as_str().into()),
        ("search_path_sync", p.search_path_sync.as_str().into()),
        ("admin_users", p.admin_users.join(",")),
        (
            "max_client_connections",
            p.max_client_connections.to_string(),
        ),
        ("query_wait_timeout", d(p.query_wait_timeout)),
        ("server_connect_timeout", d(p.server_connect_timeout)),
        ("server_idle_timeout", d(p.server_idle_timeout)),
        ("server_lifetime", d(p.server_lifetime)),
        (
            "idle_transaction_timeout",
            p.idle_transaction_timeout.map_or("0s".into(), d),
        ),
        (
            "park_idle_clients_after",
            p.park_idle_clients_after.map_or("0s".into(), d),
        ),
        ("shutdown_timeout", d(p.shutdown_timeout)),
        ("client_login_timeout", d(p.client_login_timeout)),
        ("max_pending_logins", p.max_pending_logins.to_string()),
        (
            "metrics_listen",
            p.metrics_listen.map(|a| a.to_string()).unwrap_or_default(),
        ),
        ("metrics_tenant_labels", p.metrics_tenant_labels.to_string()),
        ("max_message_size", p.max_message_size.to_string()),
        (
            "max_prepared_statements",
            p.max_prepared_statements.to_string(),
        ),
        ("workers", p.workers.to_string()),
        ("client_tls", client_tls(p).into()),
        ("tls_cert", path(&p.tls_cert)),
        ("tls_key", path(&p.tls_key)),
        ("tls_client_ca", path(&p.tls_client_ca)),
        ("sni_suffix", p.sni_suffix.clone()),
        ("backends", config.backends.len().to_string()),
        ("tenants", config.tenants.len().to_string()),
        ("users", config.users.len().to_string()),
        (
            "config_file",
            shared
                .config_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        ("generation", generation.id.to_string()),
    ];
    let mut table = Table::new(&[("key", Type::Text), ("value", Type::Text)]);
    for (key, value) in rows {
        table.push(vec![key.into(), value.into()]);
    }
    table
}

/// `client_tls` as in force: without a certificate, TLS is off whatever the file says.
fn client_tls(p: &crate::config::ProxyConfig) -> &'static str {
    match &p.tls {
        Some(_) => p.client_tls.as_str(),
        None => crate::config::ClientTls::Disable.as_str(),
    }
}

fn path(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}
