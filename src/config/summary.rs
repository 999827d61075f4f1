//! A readable summary of a validated [`Config`], as printed by `pgtenant check`.
//! Passwords and verifiers are never printed; only whether a login has one.
use std::fmt::Write;

use super::{Config, TenantAllow, TenantConfig, UserSecret};

impl Config {
    /// A multi-line summary: proxy settings, backends, tenants, users. Contains no secrets.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        self.write_proxy(&mut out);
        self.write_backends(&mut out);
        self.write_tenants(&mut out);
        self.write_users(&mut out);
        out
    }

    fn write_proxy(&self, out: &mut String) {
        let p = &self.proxy;
        let sources: Vec<&str> = p.tenant_from.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(out, "proxy:");
        let _ = writeln!(
            out,
            "  listen {}  pool_mode {}  auth {}  search_path_sync {}",
            p.listen,
            p.pool_mode.as_str(),
            p.auth.as_str(),
            p.search_path_sync.as_str()
        );
        let _ = writeln!(
            out,
            "  tenant_from [{}]  user_separator {:?}  default_tenant {}",
            sources.join(", "),
            p.user_separator,
            p.default_tenant
                .as_deref()
                .map_or("(none: reject)".to_string(), |t| format!("{t:?}"))
        );
        let _ = writeln!(
            out,
            "  max_client_connections {}  query_wait_timeout {}  idle_transaction_timeout {}",
            p.max_client_connections,
            humantime::format_duration(p.query_wait_timeout),
            p.idle_transaction_timeout
                .map_or("off".to_string(), |d| humantime::format_duration(d)
                    .to_string())
        );
        let _ = writeln!(
            out,
            "  max_pending_logins {}  client_login_timeout {}",
            p.max_pending_logins,
            humantime::format_duration(p.client_login_timeout)
        );
        if let (Some(tls), Some(cert)) = (&p.tls, &p.tls_cert) {
            let _ = writeln!(
                out,
                "  client_tls {}  tls_cert {}{}{}",
                p.client_tls.as_str(),
                cert.display(),
                if tls.verifies_clients {
                    "  (client certificates verified)"
                } else {
                    ""
                },
                if tls.channel_binding.is_some() {
                    "  (SCRAM-SHA-256-PLUS)"
                } else {
                    ""
                }
            );
        }
        if let Some(addr) = p.metrics_listen {
            let _ = writeln!(out, "  metrics_listen {addr}");
        }
        if !p.admin_users.is_empty() {
            let _ = writeln!(out, "  admin_users {}", p.admin_users.join(", "));
        }
    }

    fn write_backends(&self, out: &mut String) {
        let _ = writeln!(out, "backends ({}):", self.backends.len());
        for b in self.backends.values() {
            let _ = writeln!(
                out,
                "  {}  {}:{}  database {}  user {}{}  pool_size {} (min {})",
                b.name,
                b.host,
                b.port,
                b.database,
                b.user,
                if b.password.is_some() {
                    ""
                } else {
                    " (no password)"
                },
                b.pool_size,
                b.min_pool_size
            );
            if b.tls.mode != super::SslMode::Disable {
                let root = b.tls.rootcert.as_ref();
                let _ = writeln!(
                    out,
                    "    sslmode {}{}",
                    b.tls.mode.as_str(),
                    root.map_or(String::new(), |r| format!("  sslrootcert {}", r.display()))
                );
            }
        }
    }

    fn write_tenants(&self, out: &mut String) {
        let _ = writeln!(out, "tenants ({}):", self.tenants.len());
        for t in self.tenants.values() {
            let _ = writeln!(out, "  {:?}  {}", t.name, tenant_details(t));
        }
        if let Some(t) = &self.tenant_template {
            let example = t.tenant("{tenant}");
            let _ = writeln!(
                out,
                "  template: names matching {}  {}",
                t.tenant_name_pattern,
                tenant_details(&example)
            );
        }
        if let Some(d) = &self.directory {
            let _ = writeln!(
                out,
                "  directory: backend {}  ttl {}  negative_ttl {}  query {:?}",
                d.backend,
                humantime::format_duration(d.ttl),
                humantime::format_duration(d.negative_ttl),
                d.query
            );
        }
    }

    fn write_users(&self, out: &mut String) {
        let _ = writeln!(out, "users ({}):", self.users.len());
        for u in self.users.values() {
            let tenants = match &u.tenants {
                TenantAllow::All => "*".to_string(),
                TenantAllow::Only(set) if set.is_empty() => "(none)".to_string(),
                TenantAllow::Only(set) => set.iter().cloned().collect::<Vec<_>>().join(", "),
            };
            let secret = match u.secret {
                UserSecret::Plain { .. } => "plain password",
                UserSecret::Scram(_) => "SCRAM verifier",
                UserSecret::Md5(_) => "md5 hash",
            };
            let admin = if self.proxy.admin_users.contains(&u.name) {
                "  (admin)"
            } else {
                ""
            };
            let _ = writeln!(out, "  {}  tenants {tenants}  [{secret}]{admin}", u.name);
        }
    }
}

fn tenant_details(t: &TenantConfig) -> String {
    let quoted: Vec<String> = t.search_path.iter().map(|s| format!("{s:?}")).collect();
    let mut line = format!("backend {}  search_path [{}]", t.backend, quoted.join(", "));
    if !t.settings.is_empty() {
        let names: Vec<&str> = t.settings.iter().map(|(name, _)| name.as_str()).collect();
        let _ = write!(line, "  settings {}", names.join(", "));
    }
    if let Some(database) = &t.database {
        let _ = write!(line, "  database {database}");
    }
    if let Some(user) = &t.user {
        let _ = write!(line, "  user {user}");
    }
    if let Some(n) = t.max_server_connections {
        let _ = write!(line, "  max_server_connections {n}");
    }
    if let Some(n) = t.max_client_connections {
        let _ = write!(line, "  max_client_connections {n}");
    }
    line
}
