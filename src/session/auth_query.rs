//! The login of users found by `auth_query` (`[auth]`), as the session sees it: who is looked
//! up, how they authenticate, and the tenant runtime on their own endpoint (see
//! `tenant::user_endpoints`).
//!
//! Order: a user in `[users]` authenticates as configured; an `admin_users` name is never
//! looked up; any other user is looked up when `[auth]` is set. A lookup that cannot run
//! (backend down, a failing query) refuses the login with `08006` and logs why.

use std::sync::Arc;

use pgwire::api::auth::sasl::scram::ScramServerAuth;
use tokio::io::{AsyncRead, AsyncWrite};

use super::client::ClientCtx;
use super::{SessionError, Shared};
use crate::auth::AuthError;
use crate::config::{Config, PassThrough, UserConfig, UserSecret};
use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;
use crate::shared::Generation;
use crate::tenant::{LoginFailure, TenantRuntime};
use crate::transport::stream::ClientStream;

/// `Some(answer)` when `user_name` is one to look up (`answer`: its stored secret, if
/// any); `None` when it is not (configured, an admin name, or no `[auth]`).
async fn lookup(
    shared: &Shared,
    config: &Config,
    user_name: &str,
    user: Option<&UserConfig>,
) -> Result<Option<Option<UserSecret>>, ErrorInfo> {
    let admin = config.proxy.admin_users.iter().any(|a| a == user_name);
    if user.is_some() || admin || config.auth_lookup.is_none() {
        return Ok(None);
    }
    match shared.auth_lookup.find(config, user_name).await {
        Ok(answer) => Ok(Some(answer)),
        Err(e) => {
            tracing::warn!(user = user_name, error = %e, "auth_query lookup failed");
            Err(ErrorInfo::fatal(
                sqlstate::CONNECTION_FAILURE,
                "could not look up the user: the auth backend is unavailable",
            )
            .with_hint("the proxy could not run [auth] auth_query; its log says why"))
        }
    }
}

/// Authenticates the client (looking it up first when it is an `[auth]` user); for a
/// looked-up user, returns its pass-through keys. `Err(None)`: the client left mid-exchange
/// (nothing to tell it); `Err(Some(..))`: the failure to count and the client's error.
pub(super) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    shared: &Shared,
    config: &Config,
    user_name: &str,
    user: Option<&UserConfig>,
    channel_binding: Option<ScramServerAuth>,
) -> Result<Option<PassThrough>, Option<(LoginFailure, ErrorInfo)>> {
    let looked_up = lookup(shared, config, user_name, user)
        .await
        .map_err(|i| Some((LoginFailure::Backend, i)))?;
    let method = config.proxy.auth;
    let result = match looked_up {
        None => crate::auth::authenticate(client, method, user_name, user, channel_binding)
            .await
            .map(|()| None),
        Some(secret) => crate::auth::authenticate_looked_up(
            client,
            method,
            user_name,
            secret.as_ref(),
            channel_binding,
        )
        .await
        .map(Some),
    };
    result.map_err(|e| {
        let reason = match e {
            AuthError::Failed(_) => LoginFailure::Password,
            _ => LoginFailure::Protocol,
        };
        e.to_client().map(|i| (reason, i))
    })
}

/// `tenant` on `user`'s own endpoint (see [`crate::tenant::user_endpoints`]).
pub(super) fn own_runtime(
    generation: &Generation,
    tenant: &Arc<TenantRuntime>,
    user: &str,
    keys: &PassThrough,
    login: bool,
) -> Arc<TenantRuntime> {
    let registry = &generation.registry;
    registry.user_endpoints.runtime(
        &generation.config,
        tenant,
        user,
        keys,
        &registry.connect_failures,
        login,
    )
}

/// After a reload, for a session of a looked-up user (its endpoint logs in by
/// pass-through): its tenant on its own endpoint, while `[auth]` is still set. `None` for
/// other sessions.
pub(super) fn refreshed(
    generation: &Generation,
    tenant: &Arc<TenantRuntime>,
    ctx: &ClientCtx,
) -> Result<Option<Arc<TenantRuntime>>, SessionError> {
    let Some(keys) = &ctx.tenant.endpoint.config.pass_through else {
        return Ok(None);
    };
    if generation.config.auth_lookup.is_none() {
        let message = format!(
            "user \"{}\" may no longer log in: [auth] was removed",
            ctx.user
        );
        return Err(SessionError::Forbidden(Box::new(ErrorInfo::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            message,
        ))));
    }
    Ok(Some(own_runtime(
        generation, tenant, &ctx.user, keys, false,
    )))
}
