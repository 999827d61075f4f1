//! Raw serde structs mirroring `proxy.toml` one to one (`deny_unknown_fields`).
//!
//! These hold what the file says, with the defaults docs/CONFIGURATION.md lists filled in,
//! and nothing more: no cross-references are checked and no strings are interpreted here.
//! Enumerated choices (`pool_mode`, `auth`, ...) stay strings so that [`super::validate`] can
//! report a bad value with its key path. Durations and setting values have small wrapper
//! types whose only job is a readable type error (toml adds the line and column).
//!
//! Every field here is a key users may write: document it in docs/CONFIGURATION.md
//! (`doc_tests` fails until the key is in its section's table).
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub backends: BTreeMap<String, RawBackend>,
    #[serde(default)]
    pub users: BTreeMap<String, RawUser>,
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
    /// `[peers.N]`: the other instances, by their `instance_id`.
    #[serde(default)]
    pub peers: BTreeMap<String, RawPeer>,
    /// `[auth]`: logins looked up in the database (see `super::auth`).
    pub auth: Option<RawAuth>,
    pub tenant_template: Option<RawTemplate>,
    pub directory: Option<RawDirectory>,
}

/// `[auth]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub backend: String,
    /// Returns `(usename, passwd)` for the user name in `$1`.
    pub auth_query: String,
    #[serde(default = "default_auth_ttl")]
    pub ttl: DurationText,
}

fn default_auth_ttl() -> DurationText {
    DurationText("60s".into())
}

/// `[tenant_template]`: tenants made from a name on first use (see `super::dynamic`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplate {
    pub backend: String,
    #[serde(default = "default_search_path")]
    pub search_path: Vec<String>,
    #[serde(default)]
    pub settings: RawSettings,
    #[serde(default)]
    pub database: String,
    pub max_server_connections: Option<usize>,
    pub max_client_connections: Option<usize>,
    #[serde(default = "default_tenant_name_pattern")]
    pub tenant_name_pattern: String,
}

fn default_tenant_name_pattern() -> String {
    "^[a-z0-9_]{1,63}$".into()
}

/// `[directory]`: tenants looked up in a table (see `super::dynamic`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDirectory {
    pub backend: String,
    pub query: String,
    #[serde(default = "default_ttl")]
    pub ttl: DurationText,
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: DurationText,
}

fn default_ttl() -> DurationText {
    DurationText("60s".into())
}

fn default_negative_ttl() -> DurationText {
    DurationText("10s".into())
}

/// `[peers.N]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub host: String,
    #[serde(default = "default_proxy_port")]
    pub port: u16,
}

fn default_proxy_port() -> u16 {
    6432
}

/// `[proxy]`; every key is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawProxy {
    pub listen: String,
    pub pool_mode: String,
    pub tenant_from: Vec<String>,
    pub user_separator: String,
    /// `""` means none.
    pub default_tenant: String,
    pub auth: String,
    pub search_path_sync: String,
    pub admin_users: Vec<String>,
    pub max_client_connections: usize,
    pub query_wait_timeout: DurationText,
    pub server_connect_timeout: DurationText,
    pub server_idle_timeout: DurationText,
    pub server_lifetime: DurationText,
    pub idle_transaction_timeout: DurationText,
    /// `"0s"` = never.
    pub park_idle_clients_after: DurationText,
    pub shutdown_timeout: DurationText,
    /// Startup + authentication must finish within this.
    pub client_login_timeout: DurationText,
    /// Connections still logging in, counted apart from logged-in clients.
    pub max_pending_logins: usize,
    pub metrics_listen: Option<String>,
    pub metrics_tenant_labels: bool,
    pub max_message_size: usize,
    pub max_prepared_statements: usize,
    /// Per tenant: clients that may be pinned to a server connection at once.
    pub max_pinned_clients: usize,
    /// Threads serving clients; 0 = automatic (half the cores, at least one).
    pub workers: usize,
    /// This instance among its peers (encoded in every cancel key); 0 = alone.
    pub instance_id: u16,
    /// SO_REUSEPORT on the listener.
    pub reuse_port: bool,
    /// The Unix socket a new process takes the listener and the clients over by;
    /// `"auto"` = `/tmp/.s.PGTENANT.<port>`, `""` = none.
    pub takeover_socket: String,
    /// PEM files of the proxy's certificate (chain) and key; `""` = none.
    pub tls_cert: String,
    pub tls_key: String,
    pub client_tls: String,
    /// PEM file of the CA client certificates must be signed by; `""` = not checked.
    pub tls_client_ca: String,
    pub sni_suffix: String,
}

impl Default for RawProxy {
    fn default() -> Self {
        let duration = |text: &str| DurationText(text.to_string());
        RawProxy {
            listen: "0.0.0.0:6432".into(),
            pool_mode: "transaction".into(),
            tenant_from: vec!["options".into(), "user".into(), "database".into()],
            user_separator: ".".into(),
            default_tenant: String::new(),
            auth: "scram-sha-256".into(),
            search_path_sync: "tracked".into(),
            admin_users: Vec::new(),
            max_client_connections: 10_000,
            query_wait_timeout: duration("30s"),
            server_connect_timeout: duration("5s"),
            server_idle_timeout: duration("10m"),
            server_lifetime: duration("1h"),
            idle_transaction_timeout: duration("0s"),
            park_idle_clients_after: duration("1s"),
            shutdown_timeout: duration("30s"),
            client_login_timeout: duration("60s"),
            max_pending_logins: 1000,
            metrics_listen: None,
            metrics_tenant_labels: true,
            max_message_size: 1 << 30,
            max_prepared_statements: 200,
            max_pinned_clients: 100,
            workers: 0,
            instance_id: 0,
            reuse_port: false,
            takeover_socket: "auto".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            client_tls: "allow".into(),
            tls_client_ca: String::new(),
            sni_suffix: String::new(),
        }
    }
}

/// `[backends.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    pub password_env: Option<String>,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default)]
    pub min_pool_size: usize,
    #[serde(default = "default_sslmode")]
    pub sslmode: String,
    /// PEM files; `""` = none.
    #[serde(default)]
    pub sslrootcert: String,
    #[serde(default)]
    pub sslcert: String,
    #[serde(default)]
    pub sslkey: String,
}

fn default_sslmode() -> String {
    "disable".into()
}

fn default_port() -> u16 {
    5432
}

fn default_pool_size() -> usize {
    20
}

/// `[users.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    /// Plain, `SCRAM-SHA-256$...` verifier, or `md5...` hash.
    pub password: String,
    #[serde(default = "all_tenants")]
    pub tenants: Vec<String>,
}

fn all_tenants() -> Vec<String> {
    vec!["*".into()]
}

/// `[tenants."NAME"]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pub backend: String,
    #[serde(default = "default_search_path")]
    pub search_path: Vec<String>,
    #[serde(default)]
    pub settings: RawSettings,
    pub database: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub max_server_connections: Option<usize>,
    pub max_client_connections: Option<usize>,
}

fn default_search_path() -> Vec<String> {
    vec!["public".into()]
}

/// A duration as written (`"30s"`); parsed by `humantime` during validation. Exists so that a
/// bare number fails with a message saying what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DurationText(pub String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration string with a unit, like "30s", "250ms" or "10m""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// A tenant's `settings` table, in file order (the order they are applied at checkout).
#[derive(Debug, Default)]
pub(super) struct RawSettings(pub Vec<(String, SettingValue)>);

impl<'de> Deserialize<'de> for RawSettings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SettingsVisitor;
        impl<'de> Visitor<'de> for SettingsVisitor {
            type Value = RawSettings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a table of settings, like { "app.tenant_id" = "17" }"#)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSettings, A::Error> {
                let mut entries = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, SettingValue>()? {
                    entries.push((name, value));
                }
                Ok(RawSettings(entries))
            }
        }
        deserializer.deserialize_map(SettingsVisitor)
    }
}

/// A setting value: a TOML string, or an integer or boolean written as its decimal/`true`
/// /`false` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SettingValue(pub String);

impl<'de> Deserialize<'de> for SettingValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = SettingValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a setting value: a string (like "0.5"), an integer or a boolean"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}
