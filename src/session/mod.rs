//! One client's life: handshake -> authentication -> tenant -> login reply -> then, in
//! transaction mode, `Idle <-> Linked(server)` until the client leaves -> cleanup.

pub mod client;
pub mod expect;
pub mod handshake;
pub mod linked;
pub mod prepared;
pub mod stream;
pub mod sync;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PoolMode};
use crate::pool::{Lease, Pooled};
use crate::protocol::backend::TxStatus;
use crate::protocol::encode::{self, ErrorInfo};
use crate::server::{Params, ServerConn, ServerError};
use crate::tenant::{identify, Registry, TenantRuntime};
use client::{CancelSlot, ClientCtx, StartupInfo};
use handshake::Opening;
use linked::{Link, LinkEnd, LinkError};
use stream::ClientStream;

/// How long a client may take from connecting to being logged in (as PostgreSQL's
/// `authentication_timeout`).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long cleanup of an abandoned link may take before the connection is closed instead.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by all sessions.
pub struct Shared {
    pub config: Arc<Config>,
    pub registry: Registry,
    /// Client cancel keys -> where a cancel should go while that client is linked.
    pub cancels: DashMap<(i32, i32), Arc<CancelSlot>>,
    pub shutdown: CancellationToken,
}

impl Shared {
    pub fn new(config: Arc<Config>, shutdown: CancellationToken) -> Self {
        Shared {
            registry: Registry::build(&config),
            config,
            cancels: DashMap::new(),
            shutdown,
        }
    }

    /// Forwards a client's CancelRequest, with the server's own key, to the server
    /// connection that client is linked to right now, if any.
    pub async fn forward_cancel(&self, key: (i32, i32)) {
        let target = self
            .cancels
            .get(&key)
            .and_then(|slot| slot.linked.lock().ok().and_then(|l| l.clone()));
        match target {
            Some((endpoint, server_key)) => {
                if let Err(e) = crate::server::send_cancel(&endpoint, server_key).await {
                    tracing::warn!(backend = %endpoint.backend, error = %e, "forwarding cancel failed");
                }
            }
            None => tracing::debug!("cancel request for a client that is not linked (ignored)"),
        }
    }
}

/// Serves one client connection to the end.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + stream::Readiness>(
    io: S,
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
) {
    let mut client = ClientStream::new(io, shared.config.proxy.max_message_size);
    let login = tokio::time::timeout(
        LOGIN_TIMEOUT,
        Box::pin(login(&mut client, &shared, permit.is_some())),
    )
    .await;
    let mut ctx = match login {
        Ok(Ok(Some(ctx))) => ctx,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            let _ = client.send_error(&e).await;
            return;
        }
        Err(_) => {
            let _ = client
                .send_error(&ErrorInfo::fatal("08006", "timeout expired during login"))
                .await;
            return;
        }
    };
    shared.cancels.insert(ctx.key, ctx.cancel.clone());
    let result = run(&mut client, &mut ctx, &shared).await;
    shared.cancels.remove(&ctx.key);
    ctx.tenant.clients.fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = result {
        tracing::debug!(tenant = %ctx.tenant.name, error = %e, "session ended with an error");
        if let Some(info) = e.to_client() {
            let _ = client.send_error(&info).await;
        }
    }
    drop(permit);
}

/// Handshake and authentication. `Ok(None)`: nothing more to do (a cancel request, or the
/// client left). `Err`: what to tell the client before closing.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    shared: &Shared,
    admitted: bool,
) -> Result<Option<ClientCtx>, ErrorInfo> {
    let params = match handshake::open(client, shared).await {
        Ok(Opening::Startup(params)) => params,
        Ok(Opening::Cancelled) => return Ok(None),
        Err(e) => return e.to_client().map_or(Ok(None), Err),
    };
    if !admitted {
        return Err(ErrorInfo::fatal("53300", "sorry, too many clients already"));
    }
    let info = client::read_startup(params)?;
    let config = &shared.config;
    let identity = identify(
        config,
        &info.user,
        &info.database,
        info.options_tenant.as_deref(),
    );
    let user = config.users.get(&identity.user);
    if let Err(e) = crate::auth::authenticate(
        client,
        config.proxy.auth,
        &identity.user,
        user.map(|u| &**u),
    )
    .await
    {
        tracing::info!(user = %identity.user, result = e.kind(), "login failed");
        return e.to_client().map_or(Ok(None), Err);
    }
    let tenant_name = identity.tenant.map_err(|e| {
        tracing::info!(user = %identity.user, result = "tenant", "login failed: {e}");
        e.to_client()
    })?;
    // Authentication succeeded, so `user` is configured.
    let allowed = user.is_some_and(|u| u.tenants.allows(&tenant_name));
    if !allowed {
        return Err(ErrorInfo::fatal(
            "28000",
            format!(
                "user \"{}\" may not use tenant \"{tenant_name}\"",
                identity.user
            ),
        ));
    }
    let tenant = shared.registry.tenants[&tenant_name].clone();
    admit_to_tenant(&tenant)?;
    let ctx = match finish_login(client, shared, identity.user, tenant.clone(), &info).await {
        Ok(ctx) => ctx,
        Err(e) => {
            tenant.clients.fetch_sub(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    tracing::info!(user = %ctx.user, tenant = %tenant_name, "login");
    Ok(Some(ctx))
}

fn admit_to_tenant(tenant: &TenantRuntime) -> Result<(), ErrorInfo> {
    let n = tenant.clients.fetch_add(1, Ordering::Relaxed) + 1;
    if tenant
        .config
        .max_client_connections
        .is_some_and(|max| n > max)
    {
        tenant.clients.fetch_sub(1, Ordering::Relaxed);
        return Err(ErrorInfo::fatal(
            "53300",
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
    user: String,
    tenant: Arc<TenantRuntime>,
    info: &StartupInfo,
) -> Result<ClientCtx, ErrorInfo> {
    let server_params = endpoint_params(shared, &tenant).await?;
    // Shared with every other client of the endpoint until this one differs.
    let mut params = server_params;
    for (name, value) in &info.reported {
        params.set(name, value.as_bytes());
    }
    let key = loop {
        let key = (rand::random::<i32>() & i32::MAX, rand::random::<i32>());
        if !shared.cancels.contains_key(&key) {
            break key;
        }
    };
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
        .map_err(|_| ErrorInfo::fatal("08006", "client went away"))?;
    Ok(ClientCtx::new(user, tenant, info, params, key))
}

/// The endpoint's reported parameters, from its first server connection (opened now if
/// there has never been one).
async fn endpoint_params(shared: &Shared, tenant: &TenantRuntime) -> Result<Params, ErrorInfo> {
    let endpoint = &tenant.endpoint;
    let params = endpoint
        .params
        .get_or_try_init(|| async {
            let conn = checkout(shared, tenant, None).await?;
            // search_path is the proxy's business (PostgreSQL 18 reports it): not shown.
            let mut params = Params::default();
            for (name, value) in conn
                .startup_params
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

/// Checks out a server connection for `tenant`, opening one if the pool allows.
async fn checkout(
    shared: &Shared,
    tenant: &TenantRuntime,
    want: Option<&crate::server::StateKey>,
) -> Result<Pooled<ServerConn>, ErrorInfo> {
    let proxy = &shared.config.proxy;
    let endpoint = &tenant.endpoint;
    let none = crate::server::StateKey {
        tenant: 0,
        client_settings: 0,
    };
    let lease = endpoint
        .pool
        .checkout(
            tenant.pool_id,
            want.unwrap_or(&none),
            proxy.query_wait_timeout,
        )
        .await
        .map_err(|_| {
            ErrorInfo::fatal(
                "53300",
                "timed out waiting for a server connection (query_wait_timeout)",
            )
        })?;
    match lease {
        Lease::Ready(conn) => Ok(conn),
        Lease::Connect(permit) => {
            let conn = ServerConn::connect(
                endpoint.config.clone(),
                proxy.server_connect_timeout,
                proxy.server_lifetime,
                proxy.max_message_size,
                proxy.max_prepared_statements,
            )
            .await
            .map_err(|e| unreachable_backend(&endpoint.config.backend, &e))?;
            Ok(permit.fulfil(conn))
        }
    }
}

fn unreachable_backend(backend: &str, e: &ServerError) -> ErrorInfo {
    tracing::warn!(backend, kind = e.kind(), error = %e, "server connection failed");
    ErrorInfo::fatal(
        "08006",
        format!("could not connect to backend \"{backend}\""),
    )
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("{}", .0.message)]
    Refused(ErrorInfo),
    #[error("shutting down")]
    Shutdown,
}

impl SessionError {
    fn to_client(&self) -> Option<ErrorInfo> {
        match self {
            SessionError::Link(e) => e.to_client(),
            SessionError::Refused(e) => Some(e.clone()),
            SessionError::Shutdown => Some(ErrorInfo::fatal(
                "57P01",
                "terminating connection due to administrator command",
            )),
        }
    }
}

/// The idle/linked loop.
async fn run<S: AsyncRead + AsyncWrite + Unpin + stream::Readiness>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    shared: &Shared,
) -> Result<(), SessionError> {
    let proxy = &shared.config.proxy;
    let session_mode = proxy.pool_mode == PoolMode::Session;
    let mut link = Link::new(!session_mode);
    loop {
        // Idle: wait until the client has sent at least one whole message header.
        while client.rbuf.len() < 5 {
            tokio::select! {
                r = client.fill_idle() => match r {
                    Ok(n) if n > 0 => {}
                    _ => return Ok(()),
                },
                _ = shared.shutdown.cancelled() => return Err(SessionError::Shutdown),
            }
        }
        if client.rbuf[0] == crate::protocol::ftag::TERMINATE {
            return Ok(());
        }
        // Session mode links once, for the client's whole life (the link never releases).
        let mut conn = Box::pin(checkout(shared, &ctx.tenant, Some(&ctx.wanted_state())))
            .await
            .map_err(SessionError::Refused)?;
        let prelude = sync::prelude(proxy.search_path_sync, ctx, &conn);
        ctx.cancel
            .set(Some((conn.endpoint.clone(), conn.backend_key)));
        link.reset();
        // Boxed: the linked state machine is large and only needed while linked, so idle
        // clients (the vast majority) stay small.
        let end = Box::pin(linked::run(
            client,
            ctx,
            &mut conn,
            &mut link,
            prelude,
            proxy.idle_transaction_timeout,
        ))
        .await;
        ctx.cancel.set(None);
        match end {
            Ok(LinkEnd::Released) => drop(conn),
            Ok(LinkEnd::ClientGone) => {
                return Box::pin(finish_session(conn, &link, session_mode)).await
            }
            Err(e) => {
                Box::pin(abandon(conn, &link)).await;
                return Err(e.into());
            }
        }
    }
}

/// The client has left: make sure nothing of its transaction reaches the next client.
async fn finish_session(
    mut conn: Pooled<ServerConn>,
    link: &Link,
    session_mode: bool,
) -> Result<(), SessionError> {
    if session_mode && link.is_idle() {
        // Session mode: the connection goes back with no state at all.
        if reset(&mut conn, "DISCARD ALL").await {
            conn.state = None;
            return Ok(());
        }
        conn.discard();
        return Ok(());
    }
    abandon(conn, link).await;
    Ok(())
}

/// Returns a connection whose client left mid-link: idle -> as is; an open transaction with
/// nothing in flight -> ROLLBACK and confirm idle; anything else (a query or COPY in
/// flight, an unsynced extended batch) -> close it.
async fn abandon(mut conn: Pooled<ServerConn>, link: &Link) {
    // Whatever happened, the proxy no longer vouches for this connection's state.
    conn.state = None;
    if conn.broken {
        conn.discard();
        return;
    }
    if link.is_idle() {
        return;
    }
    if link.expect.owed() == 0 && !link.unsynced && reset(&mut conn, "ROLLBACK").await {
        return;
    }
    conn.discard();
}

/// Runs `sql` and reads until ReadyForQuery `I`, within [`CLEANUP_TIMEOUT`]. False on any
/// error (the caller closes the connection).
async fn reset(conn: &mut ServerConn, sql: &str) -> bool {
    let work = async {
        let mut out = bytes::BytesMut::new();
        encode::query(&mut out, sql);
        conn.write_all(&out).await.ok()?;
        let mut ok = true;
        loop {
            let msg = conn.read_message().await.ok()?;
            match crate::protocol::backend::decode(&msg).ok()? {
                crate::protocol::backend::Backend::Error(_) => ok = false,
                crate::protocol::backend::Backend::ReadyForQuery(s) => {
                    return Some(ok && s == TxStatus::Idle)
                }
                _ => {}
            }
        }
    };
    matches!(
        tokio::time::timeout(CLEANUP_TIMEOUT, work).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn an_idle_session_is_small() {
        let text = "[backends.main]\nhost='h'\ndatabase='d'\nuser='u'\npassword='p'\n[users.app]\npassword='x'\n[tenants.t]\nbackend='main'\n";
        let config = std::sync::Arc::new(crate::config::Config::from_toml_str(text, "t").unwrap());
        let shared = std::sync::Arc::new(super::Shared::new(config, Default::default()));
        let (a, _b) = tokio::io::duplex(64);
        let f = super::serve(a, shared, None);
        // Every idle client holds one of these: keep it small (rarely used stages are boxed).
        let size = std::mem::size_of_val(&f);
        assert!(size < 2048, "serve future is {size} bytes");
    }
}
