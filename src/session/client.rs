//! What the proxy knows about one client: who it is, its tenant, and the session state it
//! expects on every server connection it is linked to.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

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
    /// Shared with the client's console entry.
    pub user: Arc<str>,
    pub tenant: Arc<TenantRuntime>,
    /// Reported parameter values as this client knows them.
    pub params: Params,
    /// Reported parameter values as of login: what `RESET ALL` returns the client to.
    pub login_params: Params,
    /// The client's own startup settings (`-c name=value`) as SQL (empty when none).
    pub settings_sql: String,
    /// Those settings (`None`: none, the usual case, with nothing allocated).
    startup_settings: Option<Arc<[(String, String)]>>,
    settings_hash: u64,
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
        let settings_sql = settings_sql(&info.settings);
        let mut h = DefaultHasher::new();
        settings_sql.hash(&mut h);
        ClientCtx {
            user: user.into(),
            tenant,
            login_params: params.clone(),
            params,
            settings_verified: settings_sql.is_empty(),
            settings_sql,
            startup_settings: (!info.settings.is_empty()).then(|| info.settings.clone().into()),
            settings_hash: h.finish(),
            key,
            stmts: Default::default(),
            vs: Default::default(),
            listening: None,
        }
    }

    /// A client another process handed over (`super::handoff`): what `new` would have
    /// made of its login, with the parameters it has been told since.
    pub fn adopted(
        user: String,
        tenant: Arc<TenantRuntime>,
        settings: Vec<(String, String)>,
        params: Params,
        login_params: Params,
        key: (i32, i32),
    ) -> Self {
        let settings_sql = settings_sql(&settings);
        let mut h = DefaultHasher::new();
        settings_sql.hash(&mut h);
        ClientCtx {
            user: user.into(),
            tenant,
            login_params,
            params,
            settings_verified: settings_sql.is_empty(),
            settings_sql,
            startup_settings: (!settings.is_empty()).then(|| settings.into()),
            settings_hash: h.finish(),
            key,
            stmts: Default::default(),
            vs: Default::default(),
            listening: None,
        }
    }

    /// The client's startup settings.
    pub fn startup_settings(&self) -> &[(String, String)] {
        self.startup_settings.as_deref().unwrap_or(&[])
    }

    /// What the state [`ClientCtx::wanted_state`] names sets: the tenant's settings, then
    /// the client's startup settings and its own (captured) ones.
    pub fn setting_names(&self) -> SettingNames {
        let snapshot = self.vs.snapshot();
        let client: Arc<[String]> = if self.startup_settings.is_none() && snapshot.is_none() {
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
            client_settings: self.settings_hash ^ self.vs.settings_hash().rotate_left(17),
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
