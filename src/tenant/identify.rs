//! Which tenant a client names, as README's "Naming the tenant" and docs/CONFIGURATION.md
//! (`tenant_from`, `user_separator`, `default_tenant`) say:
//! `options` and `user` name a tenant explicitly (a name that is not a tenant is an error);
//! `database` names one only when it is a tenant's name; methods are tried in the configured
//! order; nothing named falls back to `default_tenant`, else an error with a hint.

use crate::config::{Config, TenantSource};
use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;

/// Who the client is, once its startup names are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The proxy user to authenticate as.
    pub user: String,
    /// The tenant, or why there is none (reported only after authentication succeeds).
    pub tenant: Result<String, IdentifyError>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    #[error("tenant \"{0}\" does not exist")]
    Unknown(String),
    #[error("no tenant named")]
    NoneNamed,
}

impl IdentifyError {
    pub fn to_client(&self) -> ErrorInfo {
        match self {
            IdentifyError::Unknown(_) => {
                ErrorInfo::fatal(sqlstate::INVALID_CATALOG_NAME, self.to_string())
            }
            IdentifyError::NoneNamed => ErrorInfo::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "no tenant named for this connection",
            )
            .with_hint("name one with options='-c tenant=NAME', user=USER.NAME or dbname=NAME"),
        }
    }
}

/// Resolves the user and tenant from the startup `user`, `database`, the `tenant` given in
/// `options` (if any) and the TLS server name (SNI, if any).
pub fn identify(
    config: &Config,
    user: &str,
    database: &str,
    options_tenant: Option<&str>,
    sni: Option<&str>,
) -> Identity {
    let sources = &config.proxy.tenant_from;
    let (user, user_tenant) = split_user(config, user);
    let exists = |t: &str| config.tenants.contains_key(t);
    // Named explicitly: a `[tenants]` block, or a name the directory or the template may
    // know (resolved after authentication; `database` never names one of those).
    let may_exist = |t: &str| {
        exists(t)
            || config.directory.is_some()
            || config
                .tenant_template
                .as_ref()
                .is_some_and(|tt| tt.serves(t))
    };
    for source in sources {
        let named = match source {
            TenantSource::Options => options_tenant,
            TenantSource::Sni => sni.and_then(|name| sni_tenant(name, &config.proxy.sni_suffix)),
            TenantSource::User => user_tenant.as_deref(),
            TenantSource::Database => {
                if exists(database) {
                    Some(database)
                } else {
                    None
                }
            }
        };
        if let Some(t) = named {
            let tenant = if may_exist(t) {
                Ok(t.to_string())
            } else {
                Err(IdentifyError::Unknown(t.to_string()))
            };
            return Identity { user, tenant };
        }
    }
    let tenant = match &config.proxy.default_tenant {
        Some(t) => Ok(t.clone()),
        None => Err(IdentifyError::NoneNamed),
    };
    Identity { user, tenant }
}

/// `acme.db.example.com` with suffix `.db.example.com` -> `acme`. A name without the suffix
/// (or nothing left before it) names no tenant. Host names are case-insensitive.
fn sni_tenant<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = name.len().checked_sub(suffix.len())?;
    let (tenant, tail) = (name.get(..cut)?, name.get(cut..)?);
    (tail.eq_ignore_ascii_case(suffix) && !tenant.is_empty()).then_some(tenant)
}

/// `app.a.com` -> (`app`, `a.com`), splitting at the first separator, only when `user` is a
/// naming method and the full name is not itself a configured user.
fn split_user(config: &Config, user: &str) -> (String, Option<String>) {
    let by_user = config.proxy.tenant_from.contains(&TenantSource::User);
    if !by_user || config.users.contains_key(user) {
        return (user.to_string(), None);
    }
    match user.split_once(config.proxy.user_separator.as_str()) {
        Some((u, t)) if !u.is_empty() && !t.is_empty() => (u.to_string(), Some(t.to_string())),
        _ => (user.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(proxy: &str) -> Config {
        let text = format!(
            r#"
[proxy]
{proxy}
[backends.main]
host = "127.0.0.1"
database = "app"
user = "app"
password = "pw"
[users.app]
password = "secret"
[users."app.admin"]
password = "secret"
[tenants."a.com"]
backend = "main"
[tenants.b]
backend = "main"
"#
        );
        Config::from_toml_str(&text, "test.toml").unwrap()
    }

    fn tenant(
        c: &Config,
        user: &str,
        db: &str,
        opt: Option<&str>,
    ) -> (String, Result<String, IdentifyError>) {
        let id = identify(c, user, db, opt, None);
        (id.user, id.tenant)
    }

    #[test]
    fn options_then_user_then_database() {
        let c = config("");
        assert_eq!(
            tenant(&c, "app", "app", Some("b")),
            ("app".into(), Ok("b".into()))
        );
        assert_eq!(
            tenant(&c, "app.a.com", "b", None),
            ("app".into(), Ok("a.com".into())),
            "split at the first separator"
        );
        assert_eq!(tenant(&c, "app", "b", None), ("app".into(), Ok("b".into())));
        assert_eq!(
            tenant(&c, "app.b", "a.com", Some("a.com")),
            ("app".into(), Ok("a.com".into())),
            "options win"
        );
    }

    #[test]
    fn explicit_names_must_exist_database_names_need_not() {
        let c = config("");
        assert_eq!(
            tenant(&c, "app", "app", Some("nope")).1,
            Err(IdentifyError::Unknown("nope".into()))
        );
        assert_eq!(
            tenant(&c, "app.nope", "app", None).1,
            Err(IdentifyError::Unknown("nope".into()))
        );
        assert_eq!(
            tenant(&c, "app", "app", None).1,
            Err(IdentifyError::NoneNamed)
        );
        assert_eq!(IdentifyError::NoneNamed.to_client().code, "28000");
        assert_eq!(IdentifyError::Unknown("x".into()).to_client().code, "3D000");
    }

    #[test]
    fn a_configured_user_name_is_not_split() {
        let c = config("");
        assert_eq!(
            tenant(&c, "app.admin", "b", None),
            ("app.admin".into(), Ok("b".into()))
        );
    }

    #[test]
    fn order_and_default_are_configurable() {
        let c = config(
            r#"tenant_from = ["database", "options"]
default_tenant = "b""#,
        );
        assert_eq!(tenant(&c, "app", "a.com", Some("b")).1, Ok("a.com".into()));
        assert_eq!(
            tenant(&c, "app.a.com", "app", None),
            ("app.a.com".into(), Ok("b".into())),
            "user naming is off"
        );
    }

    #[test]
    fn the_server_name_minus_the_suffix_names_the_tenant() {
        assert_eq!(
            sni_tenant("acme.db.example.com", ".db.example.com"),
            Some("acme")
        );
        assert_eq!(
            sni_tenant("ACME.DB.example.com", ".db.example.com"),
            Some("ACME")
        );
        assert_eq!(sni_tenant("acme.other.com", ".db.example.com"), None);
        assert_eq!(sni_tenant(".db.example.com", ".db.example.com"), None);
        assert_eq!(sni_tenant("com", ".db.example.com"), None);
        assert_eq!(sni_tenant("a.com", ""), Some("a.com"));
    }
}
