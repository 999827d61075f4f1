//! Raw structs -> validated [`super::Config`].
//!
//! Sections are validated in the order backends, tenants, users, proxy, so that each can
//! check its references to the ones before it (a tenant's backend, a user's tenants,
//! `default_tenant`, `admin_users`). The first problem found is reported as
//! `ORIGIN: KEY.PATH: problem`, e.g.
//! `proxy.toml: tenants."a.com".backend: no backend named "mian" (backends: main)`.
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::raw::{DurationText, RawBackend, RawConfig, RawProxy, RawTenant, RawUser};
use super::tls::{self, ClientTls, ServerTls, SslMode, TlsAcceptorConfig};
use super::{
    secret, AuthMethod, BackendConfig, Config, PoolMode, ProxyConfig, SearchPathSync, TenantAllow,
    TenantConfig, TenantSource, UserConfig,
};

/// Why a config file could not be loaded. The text names the file, the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// TOML syntax errors, unknown keys and wrong value types (toml gives line and column).
    #[error("{origin}: {}", .source.to_string().trim_end())]
    Toml {
        origin: String,
        source: toml::de::Error,
    },
    /// The file parsed but says something impossible; `message` starts with the key path.
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl ConfigError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ConfigError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Looks up an environment variable (`password_env`); replaced in tests.
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(super) fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    parse_with_env(text, origin, &|name| std::env::var(name).ok())
}

pub(super) fn parse_with_env(
    text: &str,
    origin: &str,
    env: Env<'_>,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Toml {
        origin: origin.to_string(),
        source,
    })?;
    validate(raw, env).map_err(|message| ConfigError::Invalid {
        origin: origin.to_string(),
        message,
    })
}

/// A problem, already prefixed with its key path.
type Problem = String;

fn validate(raw: RawConfig, env: Env<'_>) -> Result<Config, Problem> {
    if raw.backends.is_empty() {
        return Err("backends: at least one [backends.NAME] section is required".into());
    }
    let mut backends = BTreeMap::new();
    for (name, backend) in raw.backends {
        let backend = backend_config(&name, backend, env)?;
        backends.insert(name, Arc::new(backend));
    }
    let mut tenants = BTreeMap::new();
    for (name, tenant) in raw.tenants {
        let tenant = tenant_config(&name, tenant, &backends, env)?;
        tenants.insert(name, Arc::new(tenant));
    }
    let tenant_template = raw
        .tenant_template
        .map(|t| dynamic::template(t, &backends).map(Arc::new))
        .transpose()?;
    let directory = raw
        .directory
        .map(|d| dynamic::directory(d, &backends).map(Arc::new))
        .transpose()?;
    // With a template or a directory, a user's list may name tenants no block defines.
    let any_name = tenant_template.is_some() || directory.is_some();
    let mut users = BTreeMap::new();
    for (name, user) in raw.users {
        let user = user_config(&name, user, &tenants, any_name)?;
        users.insert(name, Arc::new(user));
    }
    let proxy = proxy_config(raw.proxy, &tenants, &users)?;
    let peers = peers(raw.peers, proxy.instance_id)?;
    let auth_lookup = super::auth::auth_lookup(raw.auth, &backends)?;
    Ok(Config {
        proxy,
        auth_lookup,
        backends,
        users,
        tenants,
        peers,
        tenant_template,
        directory,
    })
}

/// `[peers.N]`: N an instance id other than this one's, which must then be set.
fn peers(
    raw: BTreeMap<String, super::raw::RawPeer>,
    instance_id: u16,
) -> Result<BTreeMap<u16, super::PeerConfig>, Problem> {
    if !raw.is_empty() && instance_id == 0 {
        return Err(
            "proxy.instance_id: must be set (1 to 2047) when [peers] lists other instances".into(),
        );
    }
    let mut peers = BTreeMap::new();
    for (name, peer) in raw {
        let id: u16 = match name.parse() {
            Ok(id) if (1..=super::MAX_INSTANCE_ID).contains(&id) => id,
            _ => {
                return Err(format!(
                    "peers.{name}: the section name must be the peer's instance_id (1 to {})",
                    super::MAX_INSTANCE_ID
                ))
            }
        };
        if id == instance_id {
            return Err(format!("peers.{name}: is this instance's own instance_id"));
        }
        if peer.host.is_empty() {
            return Err(format!("peers.{name}.host: must not be empty"));
        }
        peers.insert(
            id,
            super::PeerConfig {
                host: peer.host,
                port: peer.port,
            },
        );
    }
    Ok(peers)
}

fn proxy_config<T, U>(
    raw: RawProxy,
    tenants: &BTreeMap<String, T>,
    users: &BTreeMap<String, U>,
) -> Result<ProxyConfig, Problem> {
    let default_tenant = default_tenant(&raw.default_tenant, tenants)?;
    check_admin_users(&raw.admin_users, users)?;
    if raw.user_separator.is_empty() {
        return Err(r#"proxy.user_separator: must not be empty (the default is ".")"#.into());
    }
    let timeout =
        |key: &str, value: &DurationText| nonzero_duration(&format!("proxy.{key}"), value);
    let count = |key: &str, value: usize| at_least_one(&format!("proxy.{key}"), value);
    let client_tls = choice("proxy.client_tls", &raw.client_tls)?;
    let tls = client_tls_config(&raw, client_tls)?;
    let tenant_from = tenant_from(&raw.tenant_from, default_tenant.is_some())?;
    if tenant_from.contains(&TenantSource::Sni) && tls.is_none() {
        return Err(
            r#"proxy.tenant_from: "sni" needs client TLS (tls_cert, tls_key and client_tls other than "disable")"#
                .into(),
        );
    }
    Ok(ProxyConfig {
        listen: socket_addr("proxy.listen", &raw.listen)?,
        pool_mode: choice("proxy.pool_mode", &raw.pool_mode)?,
        tenant_from,
        user_separator: raw.user_separator,
        default_tenant,
        auth: choice("proxy.auth", &raw.auth)?,
        search_path_sync: choice("proxy.search_path_sync", &raw.search_path_sync)?,
        admin_users: raw.admin_users,
        max_client_connections: count("max_client_connections", raw.max_client_connections)?,
        query_wait_timeout: timeout("query_wait_timeout", &raw.query_wait_timeout)?,
        server_connect_timeout: timeout("server_connect_timeout", &raw.server_connect_timeout)?,
        server_idle_timeout: timeout("server_idle_timeout", &raw.server_idle_timeout)?,
        server_lifetime: timeout("server_lifetime", &raw.server_lifetime)?,
        idle_transaction_timeout: duration_or_off(
            "proxy.idle_transaction_timeout",
            &raw.idle_transaction_timeout,
        )?,
        park_idle_clients_after: duration_or_off(
            "proxy.park_idle_clients_after",
            &raw.park_idle_clients_after,
        )?,
        shutdown_timeout: duration("proxy.shutdown_timeout", &raw.shutdown_timeout)?,
        client_login_timeout: timeout("client_login_timeout", &raw.client_login_timeout)?,
        max_pending_logins: count("max_pending_logins", raw.max_pending_logins)?,
        metrics_listen: match raw.metrics_listen.as_deref() {
            None | Some("") => None,
            Some(addr) => Some(socket_addr("proxy.metrics_listen", addr)?),
        },
        metrics_tenant_labels: raw.metrics_tenant_labels,
        max_message_size: count("max_message_size", raw.max_message_size)?,
        max_prepared_statements: count("max_prepared_statements", raw.max_prepared_statements)?,
        max_pinned_clients: raw.max_pinned_clients,
        workers: match raw.workers {
            0 => auto_workers(),
            n => n,
        },
        instance_id: match raw.instance_id {
            id if id <= super::MAX_INSTANCE_ID => id,
            id => {
                return Err(format!(
                    "proxy.instance_id: {id} is out of range (0 to {})",
                    super::MAX_INSTANCE_ID
                ))
            }
        },
        reuse_port: raw.reuse_port,
        takeover_socket: match raw.takeover_socket.as_str() {
            "" => super::TakeoverSocket::Off,
            "auto" => super::TakeoverSocket::Auto,
            path => super::TakeoverSocket::At(path.into()),
        },
        client_tls,
        tls_cert: some_path(&raw.tls_cert),
        tls_key: some_path(&raw.tls_key),
        tls_client_ca: some_path(&raw.tls_client_ca),
        sni_suffix: raw.sni_suffix,
        tls,
    })
}

/// `""` is none.
fn some_path(value: &str) -> Option<std::path::PathBuf> {
    (!value.is_empty()).then(|| value.into())
}

/// `[proxy]` TLS keys: the certificate loaded when clients may use TLS.
fn client_tls_config(
    raw: &RawProxy,
    mode: ClientTls,
) -> Result<Option<Arc<TlsAcceptorConfig>>, Problem> {
    let (cert, key, ca) = (
        some_path(&raw.tls_cert),
        some_path(&raw.tls_key),
        some_path(&raw.tls_client_ca),
    );
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => return Err("proxy.tls_key: required with tls_cert".into()),
        (None, Some(_)) => return Err("proxy.tls_cert: required with tls_key".into()),
        (None, None) if mode == ClientTls::Require => {
            return Err(r#"proxy.client_tls: "require" needs tls_cert and tls_key"#.into())
        }
        (None, None) if ca.is_some() => {
            return Err("proxy.tls_client_ca: needs tls_cert and tls_key".into())
        }
        (None, None) => return Ok(None),
    };
    if mode == ClientTls::Disable {
        return Ok(None);
    }
    tls::acceptor(&cert, &key, ca.as_deref())
        .map(|t| Some(Arc::new(t)))
        .map_err(|e| format!("proxy.tls_cert: {e}"))
}

/// A backend's `sslmode` and files.
fn backend_tls(path: &str, raw: &RawBackend) -> Result<ServerTls, Problem> {
    let mode: SslMode = choice(&format!("{path}.sslmode"), &raw.sslmode)?;
    let rootcert = some_path(&raw.sslrootcert);
    let (cert, key) = (some_path(&raw.sslcert), some_path(&raw.sslkey));
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && rootcert.is_none() {
        return Err(format!(
            "{path}.sslrootcert: sslmode {:?} needs the CA certificate that signed the server's",
            mode.as_str()
        ));
    }
    match (&cert, &key) {
        (Some(_), None) => return Err(format!("{path}.sslkey: required with sslcert")),
        (None, Some(_)) => return Err(format!("{path}.sslcert: required with sslkey")),
        _ => {}
    }
    tls::server_tls(mode, rootcert, cert, key).map_err(|e| format!("{path}: {e}"))
}

/// `workers = 0`: half the cores, at least one. The proxy shares its machine with clients or
/// PostgreSQL more often than not, and on 2 cores one thread measured faster than two
/// (docs/BENCHMARKS.md): fewer cross-thread wakeups.
pub fn auto_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// `proxy.default_tenant`: `""` is none, anything else must be a tenant.
fn default_tenant<T>(name: &str, tenants: &BTreeMap<String, T>) -> Result<Option<String>, Problem> {
    match name {
        "" => Ok(None),
        name if tenants.contains_key(name) => Ok(Some(name.to_string())),
        name => Err(format!(
            "proxy.default_tenant: no tenant named {name:?} ({})",
            listing("tenants", tenants)
        )),
    }
}

fn check_admin_users<U>(
    admin_users: &[String],
    users: &BTreeMap<String, U>,
) -> Result<(), Problem> {
    for (i, name) in admin_users.iter().enumerate() {
        if !users.contains_key(name) {
            return Err(format!(
                "proxy.admin_users[{i}]: no user named {name:?} ({})",
                listing("users", users)
            ));
        }
    }
    Ok(())
}

fn tenant_from(raw: &[String], has_default: bool) -> Result<Vec<TenantSource>, Problem> {
    if raw.is_empty() && !has_default {
        return Err(
            "proxy.tenant_from: empty and no default_tenant, so every client would be rejected"
                .into(),
        );
    }
    let mut sources = Vec::with_capacity(raw.len());
    for (i, value) in raw.iter().enumerate() {
        let source: TenantSource = choice(&format!("proxy.tenant_from[{i}]"), value)?;
        if sources.contains(&source) {
            return Err(format!("proxy.tenant_from[{i}]: {value:?} is listed twice"));
        }
        sources.push(source);
    }
    Ok(sources)
}

fn backend_config(name: &str, raw: RawBackend, env: Env<'_>) -> Result<BackendConfig, Problem> {
    let path = section_path("backends", name)?;
    non_empty(&path, "host", &raw.host)?;
    non_empty(&path, "database", &raw.database)?;
    non_empty(&path, "user", &raw.user)?;
    if raw.port == 0 {
        return Err(format!("{path}.port: must be between 1 and 65535"));
    }
    let pool_size = at_least_one(&format!("{path}.pool_size"), raw.pool_size)?;
    if raw.min_pool_size > pool_size {
        return Err(format!(
            "{path}.min_pool_size: {} is larger than pool_size ({pool_size})",
            raw.min_pool_size
        ));
    }
    let tls = backend_tls(&path, &raw)?;
    Ok(BackendConfig {
        tls,
        name: name.to_string(),
        password: password(&path, raw.password, raw.password_env, env)?,
        host: raw.host,
        port: raw.port,
        database: raw.database,
        user: raw.user,
        pool_size,
        min_pool_size: raw.min_pool_size,
    })
}

fn tenant_config<B>(
    name: &str,
    raw: RawTenant,
    backends: &BTreeMap<String, B>,
    env: Env<'_>,
) -> Result<TenantConfig, Problem> {
    let path = section_path("tenants", name)?;
    if !backends.contains_key(&raw.backend) {
        return Err(format!(
            "{path}.backend: no backend named {:?} ({})",
            raw.backend,
            listing("backends", backends)
        ));
    }
    for (i, schema) in raw.search_path.iter().enumerate() {
        if schema.is_empty() {
            return Err(format!(
                "{path}.search_path[{i}]: schema names must not be empty"
            ));
        }
    }
    let settings = settings(&path, raw.settings.0)?;
    if let Some(database) = &raw.database {
        non_empty(&path, "database", database)?;
    }
    let password = password(&path, raw.password, raw.password_env, env)?;
    match (&raw.user, &password) {
        (Some(user), None) => {
            non_empty(&path, "user", user)?;
            return Err(format!("{path}: user {user:?} needs a password or password_env"));
        }
        (Some(user), Some(_)) => non_empty(&path, "user", user)?,
        (None, Some(_)) => {
            return Err(format!(
                "{path}: password is only used together with user (the backend's login is used otherwise)"
            ))
        }
        (None, None) => {}
    }
    let cap = |key: &str, value: Option<usize>| {
        value
            .map(|v| at_least_one(&format!("{path}.{key}"), v))
            .transpose()
    };
    Ok(TenantConfig {
        name: name.to_string(),
        backend: raw.backend,
        search_path: raw.search_path,
        settings,
        database: raw.database,
        user: raw.user,
        password,
        max_server_connections: cap("max_server_connections", raw.max_server_connections)?,
        max_client_connections: cap("max_client_connections", raw.max_client_connections)?,
    })
}

fn settings(
    tenant_path: &str,
    raw: Vec<(String, super::raw::SettingValue)>,
) -> Result<Vec<(String, String)>, Problem> {
    let mut seen = BTreeSet::new();
    let mut settings = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let path = format!("{tenant_path}.settings.{}", toml_key(&name));
        if !is_setting_name(&name) {
            return Err(format!(
                "{path}: not a setting name (letters, digits and _, optionally one '.', like app.tenant_id)"
            ));
        }
        if name.eq_ignore_ascii_case("search_path") {
            return Err(format!("{path}: use the tenant's search_path key instead"));
        }
        // PostgreSQL folds setting names to lower case: App.X and app.x are one setting.
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(format!(
                "{path}: set twice (setting names are case-insensitive)"
            ));
        }
        settings.push((name, value.0));
    }
    Ok(settings)
}

/// `^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`: the setting names accepted in
/// `settings` and in clients' `-c name=value` options (they are written into SQL unquoted).
pub fn is_setting_name(name: &str) -> bool {
    fn is_identifier(part: &str) -> bool {
        let mut bytes = part.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }
    match name.split_once('.') {
        None => is_identifier(name),
        Some((class, rest)) => is_identifier(class) && is_identifier(rest),
    }
}

fn user_config<T>(
    name: &str,
    raw: RawUser,
    tenants: &BTreeMap<String, T>,
    any_name: bool,
) -> Result<UserConfig, Problem> {
    let path = section_path("users", name)?;
    let secret = secret::user_secret(&raw.password).map_err(|e| format!("{path}.password: {e}"))?;
    let mut allowed = BTreeSet::new();
    let mut all = false;
    for (i, tenant) in raw.tenants.into_iter().enumerate() {
        if tenant == "*" {
            all = true;
        } else if any_name || tenants.contains_key(&tenant) {
            allowed.insert(tenant);
        } else {
            return Err(format!(
                "{path}.tenants[{i}]: no tenant named {tenant:?} ({}; \"*\" allows all)",
                listing("tenants", tenants)
            ));
        }
    }
    let tenants = if all {
        TenantAllow::All
    } else {
        TenantAllow::Only(allowed)
    };
    Ok(UserConfig {
        name: name.to_string(),
        secret,
        tenants,
    })
}

/// Resolves `password` / `password_env` of the section at `path`.
fn password(
    path: &str,
    password: Option<String>,
    password_env: Option<String>,
    env: Env<'_>,
) -> Result<Option<String>, Problem> {
    match (password, password_env) {
        (Some(_), Some(_)) => Err(format!("{path}: set password or password_env, not both")),
        (Some(password), None) => Ok(Some(password)),
        (None, Some(var)) => match env(&var) {
            None => Err(format!(
                "{path}.password_env: environment variable {var} is not set"
            )),
            Some(value) if value.is_empty() => Err(format!(
                "{path}.password_env: environment variable {var} is empty"
            )),
            Some(value) => Ok(Some(value)),
        },
        (None, None) => Ok(None),
    }
}

/// `tenants."a.com"`, checking that the section name is not empty.
fn section_path(section: &str, name: &str) -> Result<String, Problem> {
    if name.is_empty() {
        return Err(format!("{section}.\"\": the name must not be empty"));
    }
    Ok(format!("{section}.{}", toml_key(name)))
}

/// A key as it would be written in TOML: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// `tenants: a, b, c` (the first few names), for "no such name" errors.
fn listing<T>(what: &str, map: &BTreeMap<String, T>) -> String {
    const SHOWN: usize = 8;
    if map.is_empty() {
        return format!("no {what} are configured");
    }
    let names: Vec<&str> = map.keys().take(SHOWN).map(String::as_str).collect();
    let more = if map.len() > SHOWN {
        format!(", ... {} in all", map.len())
    } else {
        String::new()
    };
    format!("{what}: {}{more}", names.join(", "))
}

fn non_empty(section_path: &str, key: &str, value: &str) -> Result<(), Problem> {
    if value.is_empty() {
        return Err(format!("{section_path}.{key}: must not be empty"));
    }
    Ok(())
}

fn at_least_one(path: &str, value: usize) -> Result<usize, Problem> {
    if value == 0 {
        return Err(format!("{path}: must be at least 1"));
    }
    Ok(value)
}

/// A config value that is one of a fixed set of spellings.
trait Choice: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
}

macro_rules! impl_choice {
    ($($t:ty),*) => {$(
        impl Choice for $t {
            const ALL: &'static [Self] = &<$t>::ALL;
            fn as_str(self) -> &'static str {
                <$t>::as_str(self)
            }
        }
    )*};
}
impl_choice!(
    PoolMode,
    TenantSource,
    AuthMethod,
    SearchPathSync,
    ClientTls,
    SslMode
);

fn choice<T: Choice>(path: &str, value: &str) -> Result<T, Problem> {
    T::ALL
        .iter()
        .copied()
        .find(|c| c.as_str() == value)
        .ok_or_else(|| {
            let names: Vec<String> = T::ALL.iter().map(|c| format!("{:?}", c.as_str())).collect();
            format!("{path}: {value:?} is not one of {}", names.join(", "))
        })
}

fn socket_addr(path: &str, value: &str) -> Result<SocketAddr, Problem> {
    value.parse().map_err(|_| {
        format!("{path}: {value:?} is not an IP address and port, like \"127.0.0.1:6432\" or \"[::1]:6432\"")
    })
}

fn duration(path: &str, value: &DurationText) -> Result<Duration, Problem> {
    humantime::parse_duration(&value.0).map_err(|e| {
        format!(
            "{path}: {:?} is not a duration ({e}); write e.g. \"30s\", \"250ms\", \"10m\"",
            value.0
        )
    })
}

/// A duration where `"0s"` means off (`None`).
fn duration_or_off(path: &str, value: &DurationText) -> Result<Option<Duration>, Problem> {
    Ok(Some(duration(path, value)?).filter(|d| !d.is_zero()))
}

pub(super) fn nonzero_duration(path: &str, value: &DurationText) -> Result<Duration, Problem> {
    let parsed = duration(path, value)?;
    if parsed.is_zero() {
        return Err(format!("{path}: must be longer than 0s"));
    }
    Ok(parsed)
}

#[path = "validate_dynamic.rs"]
mod dynamic;

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
