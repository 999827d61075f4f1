//! Getting a server connection: from the tenant's pool, or a new one when the pool allows
//! (with the endpoint's down-marking and failure counts); the wait is timed for the
//! tenant's statistics.

use std::time::{Duration, Instant};

use super::client::ClientCtx;
use super::SessionError;
use crate::config::ProxyConfig;
use crate::kinds::Kind;
use crate::pool::{Lease, Pooled};
use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;
use crate::server::{FailureReason, ServerConn, ServerError};
use crate::shared::{ClientEntry, ClientState};
use crate::tenant::TenantRuntime;

/// Checks out a server connection for `tenant`, opening one if the pool allows.
pub(super) async fn checkout(
    proxy: &ProxyConfig,
    tenant: &TenantRuntime,
    want: Option<&crate::server::StateKey>,
) -> Result<Pooled<ServerConn>, ErrorInfo> {
    let (conn, _) = checkout_timed(proxy, tenant, want).await?;
    Ok(conn)
}

/// [`checkout`], also returning how long it took (waiting, and connecting when it opened a
/// connection): zero, without reading the clock, when an idle connection was at hand.
async fn checkout_timed(
    proxy: &ProxyConfig,
    tenant: &TenantRuntime,
    want: Option<&crate::server::StateKey>,
) -> Result<(Pooled<ServerConn>, Duration), ErrorInfo> {
    let endpoint = &tenant.endpoint;
    let none = crate::server::StateKey {
        tenant: 0,
        client_settings: 0,
    };
    let (lease, waited) = endpoint
        .pool
        .checkout_timed(
            tenant.pool_id,
            want.unwrap_or(&none),
            proxy.query_wait_timeout,
        )
        .await
        .map_err(|_| {
            tracing::warn!(tenant = %tenant.name, backend = %endpoint.config.backend,
                "timed out waiting for a server connection");
            ErrorInfo::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                "timed out waiting for a server connection (query_wait_timeout)",
            )
        })?;
    match lease {
        Lease::Ready(conn) => Ok((conn, waited)),
        Lease::Connect(permit) => {
            let started = Instant::now();
            // Marked down by a recent failure: fail now rather than queue behind the
            // attempts that are already timing out (the permit goes back on drop).
            if let Err(retry_in) = endpoint.health.check(&endpoint.config) {
                tracing::debug!(backend = %endpoint.config.backend, ?retry_in, "backend is down");
                let reason = endpoint.health.last_failure(&endpoint.config);
                return Err(backend_down(
                    &endpoint.config.backend,
                    reason,
                    Some(retry_in),
                ));
            }
            // Boxed: connecting is rare, and its state would otherwise be part of every
            // transaction's future.
            let conn = Box::pin(ServerConn::open(endpoint.config.clone(), proxy)).await;
            match conn {
                Ok(conn) => {
                    endpoint.health.succeeded(&endpoint.config);
                    Ok((permit.fulfil(conn), waited + started.elapsed()))
                }
                Err(e) => {
                    let reason = FailureReason::of(&e);
                    endpoint.health.failed_because(&endpoint.config, reason);
                    endpoint.connect_failures.record(e.kind());
                    Err(unreachable_backend(&endpoint.config.backend, &e, reason))
                }
            }
        }
    }
}

fn unreachable_backend(backend: &str, e: &ServerError, reason: FailureReason) -> ErrorInfo {
    tracing::warn!(backend, kind = e.kind().label(), error = %e, "server connection failed");
    let mut info = backend_down(backend, Some(reason), None);
    if let Some(tls) = e.client_reason() {
        info.message = format!("{}: {tls}", info.message);
    }
    info
}

/// 08006 naming the backend, with a HINT saying why in classes only (see
/// [`FailureReason::hint`]) and, when it is marked down, when the next attempt is.
fn backend_down(
    backend: &str,
    reason: Option<FailureReason>,
    retry_in: Option<Duration>,
) -> ErrorInfo {
    let mut hint = reason.map_or_else(
        || "the backend failed recently; the proxy's log says why".to_string(),
        |r| r.hint(),
    );
    if let Some(retry_in) = retry_in {
        hint += &format!(
            " (the backend is marked down after repeated failures; next attempt in {} ms)",
            retry_in.as_millis().max(1)
        );
    }
    ErrorInfo::fatal(
        sqlstate::CONNECTION_FAILURE,
        format!("could not connect to backend \"{backend}\""),
    )
    .with_hint(hint)
}

/// Checks out a server connection for the client, timing the wait.
pub(super) async fn timed_checkout(
    proxy: &ProxyConfig,
    ctx: &ClientCtx,
    entry: &ClientEntry,
) -> Result<Pooled<ServerConn>, SessionError> {
    entry.set_state(ClientState::Waiting);
    let (conn, waited) = checkout_timed(proxy, &ctx.tenant, Some(&ctx.wanted_state()))
        .await
        .map_err(|e| SessionError::NoServer(Box::new(e)))?;
    ctx.tenant.stats.checkout_wait.observe(waited);
    entry.set_state(ClientState::Active);
    Ok(conn)
}
