//! Logging a client in: handshake, authentication, then either the admin console (database
//! `pgtenant` for `admin_users`) or its tenant: the tenant's client cap, the login reply.
//! Every refusal is counted by reason (globally and for the tenant named, if it exists)
//! and logged in one line with the user, the tenant and the result.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;

use super::client::{self, ClientCtx, StartupInfo};
use super::handshake::{self, Opening};
use super::{checkout, Shared};
use crate::admission::PendingLogin;
use crate::config::ProxyConfig;
use crate::protocol::backend::TxStatus;
use crate::protocol::encode::{self, ErrorInfo};
use crate::protocol::sqlstate;
use crate::server::Params;
use crate::tenant::{identify, IdentifyError, LoginFailure, TenantRuntime};
use crate::transport::stream::ClientStream;

/// Who a client turned out to be.
pub(super) enum LoggedIn {
    Tenant {
        /// Boxed: it lives as long as the session, and inline it would be stored twice in
        /// the session's future (as argument and as local).
        ctx: Box<ClientCtx>,
        /// What the client itself set (`""` if nothing), for `SHOW CLIENTS`.
        application_name: String,
    },
    /// An `admin_users` user asking for database `pgtenant`.
    Admin(String),
}

/// A refused login: what to count, log and tell the client.
pub(super) struct LoginError {
    reason: LoginFailure,
    pub(super) info: ErrorInfo,
    user: Option<String>,
    /// The tenant the client named, even one that does not exist (the log line shows it);
    /// an existing one's counters get the failure too.
    tenant: Option<String>,
}

impl LoginError {
    pub(super) fn anonymous(reason: LoginFailure, info: ErrorInfo) -> Box<Self> {
        Box::new(LoginError {
            reason,
            info,
            user: None,
            tenant: None,
        })
    }

    /// Counts the failure (globally and for the tenant, if any) and logs it.
    pub(super) fn record(&self, shared: &Shared) {
        shared.login_failures.record(self.reason);
        let generation = shared.current();
        if let Some(t) = self
            .tenant
            .as_ref()
            .and_then(|t| generation.registry.get(t))
        {
            t.stats.login_failures.record(self.reason);
        }
        tracing::info!(
            user = self.user.as_deref().unwrap_or(""),
            tenant = self.tenant.as_deref().unwrap_or(""),
            result = self.reason.as_str(),
            code = self.info.code,
            "login failed"
        );
    }
}

/// Handshake and authentication. `Ok(None)`: nothing more to do (a cancel request, or the
/// client left). `Err`: what to count, log and tell the client before closing.
pub(super) async fn login<S: crate::transport::ClientIo>(
    client: &mut ClientStream<S>,
    shared: &Shared,
    pending: &PendingLogin,
) -> Result<Option<(LoggedIn, Option<OwnedSemaphorePermit>)>, Box<LoginError>> {
    use LoginFailure as F;
    let params = match handshake::open(client, shared).await {
        Ok(Opening::Startup(params)) => params,
        Ok(Opening::Cancelled) => return Ok(None),
        Err(e) => {
            return e
                .to_client()
                .map_or(Ok(None), |i| Err(LoginError::anonymous(F::Protocol, i)))
        }
    };
    client.reserve_write();
    let too_many = || {
        ErrorInfo::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        )
    };
    if pending.clients_full() {
        return Err(LoginError::anonymous(F::TooManyClients, too_many()));
    }
    let info = client::read_startup(params).map_err(|i| LoginError::anonymous(F::Protocol, i))?;
    let generation = shared.current();
    let config = &generation.config;
    let tls = client.io.tls();
    let identity = identify(
        config,
        &info.user,
        &info.database,
        info.options_tenant.as_deref(),
        tls.and_then(|t| t.server_name.as_deref()),
    );
    let channel_binding = tls.and_then(|t| t.config.channel_binding.clone());
    // Logged even when it does not exist (what the client tried); counted only if it does.
    let named = match &identity.tenant {
        Ok(name) | Err(IdentifyError::Unknown(name)) => Some(name.clone()),
        Err(IdentifyError::NoneNamed) => None,
    };
    let fail = |reason, info| {
        Box::new(LoginError {
            reason,
            info,
            user: Some(identity.user.clone()),
            tenant: named.clone(),
        })
    };
    let user = config.users.get(&identity.user);
    let auth = super::auth_query::authenticate(
        client,
        shared,
        config,
        &identity.user,
        user.map(|u| &**u),
        channel_binding,
    );
    let pass_through = match auth.await {
        Ok(pass_through) => pass_through,
        // `None`: the client left mid-exchange (psql does, to prompt for a password).
        Err(e) => return e.map_or(Ok(None), |(reason, i)| Err(fail(reason, i))),
    };
    // A client place only now (logins that never authenticate hold none), and no longer a
    // pending login.
    let Some(permit) = pending.admit() else {
        return Err(fail(F::TooManyClients, too_many()));
    };
    let permit = Some(permit);
    if info.database == crate::admin::ADMIN_DATABASE {
        return admin_login(config, &identity.user)
            .map(|admin| admin.map(|a| (a, permit)))
            .map_err(|i| fail(F::AdminForbidden, i));
    }
    let tenant_name = allowed_tenant(&identity, user, pass_through.is_some())
        .map_err(|(reason, i)| fail(reason, i))?;
    let mut tenant = resolve(&generation, &tenant_name)
        .await
        .map_err(|(reason, i)| fail(reason, i))?;
    if let Some(keys) = &pass_through {
        tenant = super::auth_query::own_runtime(&generation, &tenant, &identity.user, keys, true);
    }
    admit_to_tenant(&tenant).map_err(|i| fail(F::TooManyClients, i))?;
    // Given back if the login does not finish: an error, or `client_login_timeout` while it
    // waits for a server connection (the future is dropped then).
    let place = TenantPlace(Some(tenant.clone()));
    let proxy = &config.proxy;
    let ctx = finish_login(
        client,
        shared,
        proxy,
        identity.user.clone(),
        tenant.clone(),
        &info,
    );
    match ctx.await {
        Ok(ctx) => {
            place.keep();
            let tenant = LoggedIn::Tenant {
                ctx: Box::new(ctx),
                application_name: info.application_name(),
            };
            Ok(Some((tenant, permit)))
        }
        Err(i) => Err(fail(F::Backend, i)),
    }
}

/// The tenant called `name`: a `[tenants]` block, else the directory or the template
/// (asked only now, after authentication). The refusal's login-failure reason: `backend`
/// when the directory cannot be asked, else `unknown_tenant`.
async fn resolve(
    generation: &crate::shared::Generation,
    name: &str,
) -> Result<Arc<TenantRuntime>, (LoginFailure, ErrorInfo)> {
    use crate::tenant::directory::DirectoryError;
    use crate::tenant::ResolveError;
    generation
        .registry
        .resolve(&generation.config, name)
        .await
        .map_err(|e| {
            let reason = match e {
                ResolveError::Directory(DirectoryError::Down(_)) => LoginFailure::Backend,
                _ => LoginFailure::UnknownTenant,
            };
            (reason, e.to_client(name))
        })
}

/// A client counted in its tenant's `clients` while its login finishes.
struct TenantPlace(Option<Arc<TenantRuntime>>);

impl TenantPlace {
    /// The login finished: the session keeps the count (and gives it back when it ends).
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TenantPlace {
    fn drop(&mut self) {
        if let Some(tenant) = self.0.take() {
            tenant.stats.clients.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The tenant the client named, if it exists and its (authenticated, so configured) user
/// may use it. A user found by `auth_query` (`looked_up`) may name any tenant: its server
/// login is its own role, whose grants decide what it sees.
fn allowed_tenant(
    identity: &crate::tenant::Identity,
    user: Option<&std::sync::Arc<crate::config::UserConfig>>,
    looked_up: bool,
) -> Result<String, (LoginFailure, ErrorInfo)> {
    let tenant_name = match &identity.tenant {
        Ok(name) => name.clone(),
        Err(e @ IdentifyError::Unknown(_)) => {
            return Err((LoginFailure::UnknownTenant, e.to_client()))
        }
        Err(e @ IdentifyError::NoneNamed) => return Err((LoginFailure::NoTenant, e.to_client())),
    };
    if !looked_up && !user.is_some_and(|u| u.tenants.allows(&tenant_name)) {
        let message = format!(
            "user \"{}\" may not use tenant \"{tenant_name}\"",
            identity.user
        );
        return Err((
            LoginFailure::TenantForbidden,
            ErrorInfo::fatal(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, message),
        ));
    }
    Ok(tenant_name)
}

/// Database `pgtenant`: the console, for `admin_users` only.
fn admin_login(config: &crate::config::Config, user: &str) -> Result<Option<LoggedIn>, ErrorInfo> {
    if config.proxy.admin_users.iter().any(|u| u == user) {
        tracing::info!(user, tenant = "", result = "ok", "admin console login");
        return Ok(Some(LoggedIn::Admin(user.to_string())));
    }
    Err(ErrorInfo::fatal(
        sqlstate::INSUFFICIENT_PRIVILEGE,
        format!("permission denied: user \"{user}\" may not use the admin console"),
    )
    .with_hint("list the user in admin_users to allow it"))
}

fn admit_to_tenant(tenant: &TenantRuntime) -> Result<(), ErrorInfo> {
    let clients = &tenant.stats.clients;
    let n = clients.fetch_add(1, Ordering::Relaxed) + 1;
    if tenant
        .config
        .max_client_connections
        .is_some_and(|max| n > max)
    {
        clients.fetch_sub(1, Ordering::Relaxed);
        return Err(ErrorInfo::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "sorry, too many clients already for tenant \"{}\"",
                tenant.name
            ),
        ));
    }
    Ok(())
}

/// AuthenticationOk, the server's parameters (with the client's own values for the ones it
/// set), a BackendKeyData of the client's own, ReadyForQuery.
async fn finish_login<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    shared: &Shared,
    proxy: &ProxyConfig,
    user: String,
    tenant: Arc<TenantRuntime>,
    info: &StartupInfo,
) -> Result<ClientCtx, ErrorInfo> {
    let server_params = endpoint_params(proxy, &tenant).await?;
    // Shared with every other client of the endpoint until this one differs.
    let mut params = server_params;
    if reports_search_path(&params) {
        // As a direct connection whose startup options set it (PostgreSQL 18+ reports it).
        params.set(
            "search_path",
            spelled_search_path(&tenant.config.search_path).as_bytes(),
        );
    }
    for (name, value) in &info.reported {
        params.set(name, value.as_bytes());
    }
    let key = crate::cancel::issue(proxy.instance_id, |key| shared.clients.contains_key(key));
    let out = &mut client.wbuf;
    encode::authentication_ok(out);
    for (name, value) in params.iter() {
        encode::parameter_status(out, name.as_bytes(), value);
    }
    encode::backend_key_data(out, key.0, key.1);
    encode::ready_for_query(out, TxStatus::Idle);
    client
        .flush()
        .await
        .map_err(|_| ErrorInfo::fatal(sqlstate::CONNECTION_FAILURE, "client went away"))?;
    Ok(ClientCtx::new(user, tenant, info, params, key))
}

/// Whether the server reports `search_path` (PostgreSQL 18 and later).
fn reports_search_path(params: &Params) -> bool {
    params
        .get("server_version")
        .and_then(|v| {
            let digits: String = v
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .map(|&c| c as char)
                .collect();
            digits.parse::<u32>().ok()
        })
        .is_some_and(|major| major >= 18)
}

/// A `search_path` as the server shows it after `SET search_path TO "a","b"`: each name
/// quoted only when it needs to be (lower-case letters, digits and `_` do not; keywords
/// are not recognised here), joined by `", "`.
pub fn spelled_search_path(schemas: &[String]) -> String {
    let plain = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    schemas
        .iter()
        .map(|s| {
            if plain(s) {
                s.clone()
            } else {
                postgres_protocol::escape::escape_identifier(s)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The endpoint's reported parameters, from its first server connection (opened now if
/// there has never been one).
async fn endpoint_params(proxy: &ProxyConfig, tenant: &TenantRuntime) -> Result<Params, ErrorInfo> {
    let endpoint = &tenant.endpoint;
    let params = endpoint
        .params
        .get_or_try_init(|| async {
            let conn = checkout(proxy, tenant, None).await?;
            // search_path is the proxy's business (PostgreSQL 18 reports it): not shown.
            let mut params = Params::default();
            for (name, value) in conn
                .startup_params()
                .iter()
                .filter(|(n, _)| *n != "search_path")
            {
                params.set(name, value);
            }
            Ok::<_, ErrorInfo>(params)
        })
        .await?;
    Ok(params.clone())
}
