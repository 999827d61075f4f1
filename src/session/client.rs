//! What the proxy knows about one client: who it is, its tenant, and the session state it
//! expects on every server connection it is linked to.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use crate::intern::Interner;
use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;
use crate::protocol::startup::parse_options;
use crate::server::{Params, SettingNames, StateKey};
use crate::tenant::registry::settings_sql;
use crate::tenant::TenantRuntime;

/// Startup parameters sorted into what the proxy does with them.
#[derive(Debug, Default)]
pub struct StartupInfo {
    pub user: String,
    pub database: String,
    /// `tenant` from `options` (`-c tenant=X` or `--tenant=X`).
    pub options_tenant: Option<String>,
    /// Reported parameters the client asked for (client_encoding, application_name, ...).
    pub reported: Vec<(&'static str, String)>,
    /// Other settings, applied at checkout like `SET`.
    pub settings: Vec<(String, String)>,
}

impl StartupInfo {
    /// The `application_name` it asked for (empty when none).
    pub fn application_name(&self) -> String {
        self.reported
            .iter()
            .find(|(name, _)| *name == "application_name")
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    }
}

pub fn read_startup(params: Vec<(String, String)>) -> Result<StartupInfo, ErrorInfo> {
    let mut info = StartupInfo::default();
    let mut database = None;
    for (name, value) in params {
        match name.as_str() {
            "user" => info.user = value,
            "database" => database = Some(value),
            "options" => {
                for (n, v) in parse_options(&value)
                    .map_err(|e| ErrorInfo::fatal(sqlstate::PROTOCOL_VIOLATION, e))?
                {
                    add_setting(&mut info, n, v)?;
                }
            }
            "replication" => {
                if !matches!(value.as_str(), "false" | "off" | "no" | "0") {
                    return Err(ErrorInfo::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        "replication connections are not supported by pgtenant",
                    ));
                }
            }
            // Protocol extensions (`_pq_.*`) are not supported: ignore rather than fail.
            n if n.starts_with("_pq_.") => {}
            _ => add_setting(&mut info, name, value)?,
        }
    }
    if info.user.is_empty() {
        return Err(ErrorInfo::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "no PostgreSQL user name specified in startup packet",
        ));
    }
    info.database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| info.user.clone());
    Ok(info)
}

fn add_setting(info: &mut StartupInfo, name: String, value: String) -> Result<(), ErrorInfo> {
    if name.eq_ignore_ascii_case("tenant") {
        info.options_tenant = Some(value);
        return Ok(());
    }
    if !crate::config::is_setting_name(&name) {
        return Err(ErrorInfo::fatal(
            sqlstate::INVALID_NAME,
            format!("invalid setting name \"{name}\""),
        ));
    }
    match crate::server::tracked_name(&name) {
        Some(canonical) => {
            let value = if canonical == "client_encoding" {
                normalize_encoding(&value)
            } else {
                value
            };
            info.reported.retain(|(n, _)| *n != canonical);
            info.reported.push((canonical, value));
        }
        None => info.settings.push((name, value)),
    }
    Ok(())
}

/// PostgreSQL's spelling of common encoding names (the server corrects the rest at the
/// first checkout, through ParameterStatus).
fn normalize_encoding(value: &str) -> String {
    // asyncpg sends `'utf-8'`, quotes included (PostgreSQL takes it so).
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(value);
    let upper = value.to_ascii_uppercase();
    match upper.as_str() {
        "UTF-8" | "UNICODE" | "UTF_8" => "UTF8".into(),
        "LATIN-1" | "ISO-8859-1" | "ISO_8859_1" => "LATIN1".into(),
        _ => upper,
    }
}

pub struct ClientCtx {
    /// Shared with the client's console entry (and with every client of the same name).
    pub user: Arc<str>,
    pub tenant: Arc<TenantRuntime>,
    /// Reported parameter values as this client knows them.
    pub params: Params,
    /// Reported parameter values as of login: what `RESET ALL` returns the client to.
    pub login_params: Params,
    /// The client's own startup settings (`-c name=value`; `None`: none, the usual case,
    /// with nothing allocated).
    startup: Option<Arc<StartupSettings>>,
    /// Whether the client's settings have been applied once without error.
    pub settings_verified: bool,
    pub key: (i32, i32),
    /// Named prepared statements (transaction mode).
    pub stmts: super::prepared::ClientStatements,
    /// What the client's session holds beyond its defaults (see [`super::vsession`]).
    pub vs: super::vsession::VSession,
    /// The channels it listens on through its endpoint's LISTEN connection.
    pub listening: Option<Box<Listening>>,
}

/// A client's own startup settings, shared by every client that sent the same ones.
#[derive(Debug, PartialEq, Eq, Hash)]
struct StartupSettings {
    list: Box<[(String, String)]>,
    /// `list` as SQL.
    sql: Box<str>,
    /// Identity of `sql` (see [`ClientCtx::wanted_state`]).
    hash: u64,
}

/// Every client's startup settings, by content.
static STARTUP_SETTINGS: LazyLock<Interner<StartupSettings>> = LazyLock::new(Interner::default);
/// Every client's user name, by content.
static USER_NAMES: LazyLock<Interner<str>> = LazyLock::new(Interner::default);

/// The identity of a client's startup settings as SQL.
fn sql_hash(sql: &str) -> u64 {
    let mut h = DefaultHasher::new();
    sql.hash(&mut h);
    h.finish()
}

/// [`sql_hash`] of no settings (`""`).
static NO_SETTINGS_HASH: LazyLock<u64> = LazyLock::new(|| sql_hash(""));

/// A client's LISTENs served by the endpoint's hub ([`crate::server::notify`]).
pub struct Listening {
    pub inbox: crate::server::notify::Inbox,
    pub notifications: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    pub channels: Vec<String>,
}

impl ClientCtx {
    pub fn new(
        user: String,
        tenant: Arc<TenantRuntime>,
        info: &StartupInfo,
        params: Params,
        key: (i32, i32),
    ) -> Self {
        ClientCtx::adopted(
            user,
            tenant,
            info.settings.clone(),
            params.clone(),
            params,
            key,
        )
    }

    /// A client with `settings` and the parameters it was told (now and at login): a new
    /// login's, or one another process handed over (`super::handoff`).
    pub fn adopted(
        user: String,
        tenant: Arc<TenantRuntime>,
        settings: Vec<(String, String)>,
        params: Params,
        login_params: Params,
        key: (i32, i32),
    ) -> Self {
        let startup = (!settings.is_empty()).then(|| {
            let sql = settings_sql(&settings);
            STARTUP_SETTINGS.intern(Arc::new(StartupSettings {
                list: settings.into(),
                hash: sql_hash(&sql),
                sql: sql.into(),
            }))
        });
        ClientCtx {
            user: USER_NAMES.intern(user.into()),
            tenant,
            login_params: login_params.shared(),
            params: params.shared(),
            settings_verified: startup.is_none(),
            startup,
            key,
            stmts: Default::default(),
            vs: Default::default(),
            listening: None,
        }
    }

    /// The client's startup settings.
    pub fn startup_settings(&self) -> &[(String, String)] {
        self.startup.as_ref().map_or(&[], |s| &s.list)
    }

    /// The client's startup settings as SQL (empty when none).
    pub fn settings_sql(&self) -> &str {
        self.startup.as_ref().map_or("", |s| &s.sql)
    }

    /// Before the client parks: what it holds that other clients hold alike becomes their
    /// one shared copy (its reported parameters may have changed since login).
    pub fn share_alike(&mut self) {
        self.params = std::mem::take(&mut self.params).shared();
        self.login_params = std::mem::take(&mut self.login_params).shared();
    }

    /// What the state [`ClientCtx::wanted_state`] names sets: the tenant's settings, then
    /// the client's startup settings and its own (captured) ones.
    pub fn setting_names(&self) -> SettingNames {
        let snapshot = self.vs.snapshot();
        let client: Arc<[String]> = if self.startup.is_none() && snapshot.is_none() {
            NO_NAMES.with(|none| none.clone())
        } else {
            self.startup_settings()
                .iter()
                .map(|(n, _)| n.as_str())
                .chain(snapshot.into_iter().flat_map(|s| s.names()))
                .map(String::from)
                .collect()
        };
        SettingNames {
            tenant: self.tenant.setting_names.clone(),
            client,
        }
    }

    /// The names the client's defaults set (for [`super::vsession`]); `login_user` is the
    /// server login.
    pub fn defaults(&self, login_user: &str) -> super::vsession::Defaults {
        super::vsession::Defaults {
            tenant: self.tenant.setting_names.clone(),
            startup: self
                .startup_settings()
                .iter()
                .map(|(n, _)| n.clone())
                .collect(),
            login_user: login_user.to_string(),
        }
    }

    /// The client's identity for its endpoint's LISTEN connection.
    pub fn listener_id(&self) -> u64 {
        (u64::from(self.key.0 as u32) << 32) | u64::from(self.key.1 as u32)
    }

    /// Stops listening on `channel` (every channel with `None`).
    pub fn unlisten(&mut self, channel: Option<&str>) {
        let id = self.listener_id();
        let Some(listening) = self.listening.as_mut() else {
            return;
        };
        self.tenant.endpoint.listen.unlisten(id, channel);
        listening
            .channels
            .retain(|c| channel.is_some_and(|ch| ch != c));
        if listening.channels.is_empty() {
            self.listening = None;
        }
    }

    /// The state a connection must hold to serve this client.
    pub fn wanted_state(&self) -> StateKey {
        StateKey {
            tenant: self.tenant.state_id,
            client_settings: self.startup.as_ref().map_or(*NO_SETTINGS_HASH, |s| s.hash)
                ^ self.vs.settings_hash().rotate_left(17),
        }
    }
}

thread_local! {
    /// The (shared) empty list of a client's own setting names.
    static NO_NAMES: Arc<[String]> = Arc::new([]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn sorts_startup_parameters() {
        let info = read_startup(p(&[
            ("user", "app.acme"),
            ("options", "-c tenant=acme -c statement_timeout=5s"),
            ("client_encoding", "'utf-8'"),
            ("application_name", "psql"),
            ("extra_float_digits", "3"),
        ]))
        .unwrap();
        assert_eq!(
            info.database, "app.acme",
            "database defaults to the user name"
        );
        assert_eq!(info.options_tenant.as_deref(), Some("acme"));
        assert_eq!(
            info.reported,
            vec![
                ("client_encoding", "UTF8".into()),
                ("application_name", "psql".into())
            ]
        );
        assert_eq!(
            info.settings,
            vec![
                ("statement_timeout".into(), "5s".into()),
                ("extra_float_digits".into(), "3".into())
            ]
        );
    }

    #[test]
    fn rejects_bad_startup_parameters() {
        assert_eq!(
            read_startup(p(&[("database", "x")])).unwrap_err().code,
            "28000"
        );
        assert_eq!(
            read_startup(p(&[("user", "u"), ("replication", "true")]))
                .unwrap_err()
                .code,
            "08P01"
        );
        assert_eq!(
            read_startup(p(&[("user", "u"), ("options", "-c x;drop=1")]))
                .unwrap_err()
                .code,
            "42602"
        );
        assert_eq!(
            read_startup(p(&[("user", "u"), ("options", "-q")]))
                .unwrap_err()
                .code,
            "08P01"
        );
    }
}

#[cfg(test)]
mod sharing_tests {
    use super::*;

    fn tenant() -> Arc<TenantRuntime> {
        let text = "[backends.main]\nhost='h'\ndatabase='d'\nuser='u'\npassword='p'\n[users.app]\npassword='x'\n[tenants.t]\nbackend='main'\n";
        let config = crate::config::Config::from_toml_str(text, "t").unwrap();
        crate::tenant::registry::Registry::build(&config).tenants["t"].clone()
    }

    fn login(tenant: &Arc<TenantRuntime>, startup: &[(&str, &str)]) -> ClientCtx {
        let mut params = Params::default();
        params.set("server_version", b"18.0");
        let list = startup
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .chain([("user".into(), "app".into())])
            .collect();
        let info = read_startup(list).unwrap();
        for (name, value) in &info.reported {
            params.set(name, value.as_bytes());
        }
        ClientCtx::new("app".into(), tenant.clone(), &info, params, (1, 2))
    }

    #[test]
    fn clients_that_log_in_alike_share_what_they_hold() {
        let t = tenant();
        let app = [
            ("application_name", "orders"),
            ("options", "-c statement_timeout=5s"),
        ];
        let (a, b) = (login(&t, &app), login(&t, &app));
        assert!(Arc::ptr_eq(&a.user, &b.user), "one user name");
        assert!(a.params.same_copy(&b.params), "one parameter set");
        assert!(a.login_params.same_copy(&b.params));
        let (sa, sb) = (a.startup.as_ref().unwrap(), b.startup.as_ref().unwrap());
        assert!(Arc::ptr_eq(sa, sb), "one set of startup settings");
        assert_eq!(a.settings_sql(), b.settings_sql());
        assert_eq!(a.wanted_state(), b.wanted_state());
        let c = login(&t, &[("application_name", "billing")]);
        assert!(!c.params.same_copy(&a.params));
        assert_eq!(c.params.get("application_name"), Some(&b"billing"[..]));
        assert!(c.startup.is_none() && c.settings_sql().is_empty());
        assert_ne!(c.wanted_state(), a.wanted_state());
        let d = login(&t, &[("options", "-c statement_timeout=6s")]);
        assert_ne!(
            d.wanted_state(),
            a.wanted_state(),
            "other settings, other state"
        );
    }

    #[test]
    fn a_client_changed_after_login_shares_again_when_it_parks() {
        let t = tenant();
        let mut a = login(&t, &[]);
        let b = login(&t, &[("TimeZone", "UTC")]);
        // What a ParameterStatus does while a is linked: a copy of its own.
        a.params.set("TimeZone", b"UTC");
        assert!(!a.params.same_copy(&b.params));
        a.share_alike();
        assert!(a.params.same_copy(&b.params), "parked: the shared copy");
        assert_eq!(a.login_params.get("TimeZone"), None, "login values kept");
    }

    #[test]
    fn an_idle_client_context_is_small() {
        // Every parked client holds one (boxed): 128 bytes while the startup settings
        // were three fields of their own.
        let size = std::mem::size_of::<ClientCtx>();
        assert!(size <= 96, "ClientCtx is {size} bytes");
    }
}
