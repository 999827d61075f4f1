//! The client's tenant between transactions: after a reload (the new generation's runtime
//! for its name, or the end of the session if it is gone or the user may no longer use it),
//! and for a tenant made on demand, resolved again when its directory row's `ttl` has
//! passed or a reload replaced the template or directory.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::client::ClientCtx;
use super::SessionError;
use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;
use crate::shared::Generation;
use crate::tenant::{Origin, TenantRuntime};

/// After a reload: the client's tenant as the new generation has it (a changed
/// `search_path` then applies from this checkout on), if it still exists and the user may
/// still use it. `Ok(true)`: a tenant made on demand that the new generation does not
/// have in use: to be resolved again ([`resolve_again`]).
pub(super) fn refresh(ctx: &mut ClientCtx, generation: &Generation) -> Result<bool, SessionError> {
    let name = &ctx.tenant.name;
    let Some(tenant) = generation.registry.get(name) else {
        if ctx.tenant.origin != Origin::Configured && generation.registry.dynamic.is_some() {
            return Ok(true);
        }
        return Err(SessionError::Removed(name.to_string()));
    };
    // A user found by auth_query: its own endpoint, never the tenant's shared one.
    if let Some(own) = super::auth_query::refreshed(generation, &tenant, ctx)? {
        if !Arc::ptr_eq(&own, &ctx.tenant) {
            switch_tenant(ctx, own);
        }
        return Ok(false);
    }
    let allowed = generation
        .config
        .users
        .get(&*ctx.user)
        .is_some_and(|u| u.tenants.allows(name));
    if !allowed {
        let message = format!("user \"{}\" may no longer use tenant \"{name}\"", ctx.user);
        return Err(SessionError::Forbidden(Box::new(ErrorInfo::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            message,
        ))));
    }
    if !Arc::ptr_eq(&tenant, &ctx.tenant) {
        switch_tenant(ctx, tenant);
    }
    Ok(false)
}

/// A tenant made on demand, resolved again (its row's `ttl` passed, or a reload changed the
/// template or directory): the runtime in use now, or the error that ends the session.
pub(super) async fn resolve_again(
    ctx: &mut ClientCtx,
    generation: &Generation,
) -> Result<(), SessionError> {
    let name = ctx.tenant.name.clone();
    match generation.registry.resolve(&generation.config, &name).await {
        Ok(tenant) => {
            let tenant = super::auth_query::refreshed(generation, &tenant, ctx)?.unwrap_or(tenant);
            if !Arc::ptr_eq(&tenant, &ctx.tenant) {
                switch_tenant(ctx, tenant);
            }
            Ok(())
        }
        Err(e) => {
            tracing::info!(tenant = %name, error = %e, "tenant no longer served; closing its client");
            Err(SessionError::Gone(Box::new(e.to_client(&name))))
        }
    }
}

/// Moves the client to `tenant` (the same name's newer runtime), its place in the
/// tenant's client count with it when the counters are not shared.
fn switch_tenant(ctx: &mut ClientCtx, tenant: Arc<TenantRuntime>) {
    if !Arc::ptr_eq(&tenant.stats, &ctx.tenant.stats) {
        ctx.tenant.stats.clients.fetch_sub(1, Ordering::Relaxed);
        tenant.stats.clients.fetch_add(1, Ordering::Relaxed);
    }
    ctx.tenant = tenant;
}
