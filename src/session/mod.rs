//! One client's life: handshake -> authentication -> tenant -> login reply -> then, in
//! transaction mode, `Idle <-> Linked(server)` until the client leaves -> cleanup.

mod auth_query;
mod checkout;
mod cleanup;
pub mod client;
pub mod expect;
pub mod handoff;
pub mod handshake;
mod idle;
pub mod linked;
mod login;
pub mod park;
mod pause;
pub mod prepared;
pub mod sync;
mod tenant;
pub mod vsession;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;

use crate::admission::PendingLogin;
use crate::config::PoolMode;
use crate::kinds::SessionErrorKind;
use crate::pool::Pooled;
use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;
use crate::server::ServerConn;
use crate::shared::{ClientEntry, ClientState, Generation, StopReason};
use crate::tenant::LoginFailure;
use crate::transport::counted::{Counted, Peer};
use crate::transport::stream::ClientStream;
pub use crate::transport::ClientIo;
use checkout::{checkout, timed_checkout};
use cleanup::dispose;
use client::ClientCtx;
use idle::{answer_listen, answer_repeated_set};
use linked::{Disposition, Link, LinkEnd, LinkError};
use login::{login, LoggedIn, LoginError};
use pause::pass_pause_gate;
use tenant::{refresh, resolve_again};

pub use crate::shared::Shared;

/// Serves one client connection to the end (or until it parks: see [`park`]).
pub async fn serve<S: ClientIo>(
    io: S,
    shared: Arc<Shared>,
    lot: Option<Arc<park::ParkLot>>,
    login: PendingLogin,
) {
    // Boxed, and so are the rarely used stages: this future lives as long as the client, so
    // its size (the largest of its states) is what every idle client costs.
    let Some((mut client, logged_in, permit)) = Box::pin(log_in(io, &shared, login)).await else {
        return;
    };
    match logged_in {
        LoggedIn::Admin(user) => Box::pin(crate::admin::serve(&mut client, &shared, &user)).await,
        LoggedIn::Tenant {
            ctx,
            application_name,
        } => {
            let entry = register(&client, &ctx, application_name, &shared);
            let mut session = Session {
                client,
                ctx,
                entry,
                permit,
                lot,
            };
            // The session stays in this future (`live` borrows it): passed by value it
            // would be stored twice, here and in `live`'s future.
            if live(&mut session, &shared).await {
                park_session(session, &shared);
            }
        }
    }
}

/// The login phase, within `client_login_timeout` and while newer logins leave it room
/// (`max_pending_logins`): `None` when it failed (the client was told). Until it is logged
/// in, a client's messages are capped as PostgreSQL caps them (see [`ClientStream::for_login`]).
async fn log_in<S: ClientIo>(
    io: S,
    shared: &Shared,
    pending: PendingLogin,
) -> Option<(
    ClientStream<Counted<S>>,
    LoggedIn,
    Option<OwnedSemaphorePermit>,
)> {
    let (max_message, timeout) = {
        let generation = shared.current();
        let proxy = &generation.config.proxy;
        (proxy.max_message_size, proxy.client_login_timeout)
    };
    let mut client = ClientStream::for_login(Counted::new(io));
    let login = tokio::select! {
        r = tokio::time::timeout(timeout, login(&mut client, shared, &pending)) => r.ok(),
        _ = pending.dropped() => Some(Err(LoginError::anonymous(
            LoginFailure::TooManyClients,
            ErrorInfo::fatal("53300", "sorry, too many connections are logging in"),
        ))),
    };
    drop(pending);
    let e = match login {
        Some(Ok(Some((logged_in, permit)))) => {
            client.set_max_message(max_message);
            return Some((client, logged_in, permit));
        }
        Some(Ok(None)) => return None,
        Some(Err(e)) => e,
        None => LoginError::anonymous(
            LoginFailure::Timeout,
            ErrorInfo::fatal(sqlstate::CONNECTION_FAILURE, "timeout expired during login"),
        ),
    };
    e.record(shared);
    let _ = client.send_error(&e.info).await;
    None
}

/// A logged-in tenant client: its socket, what the proxy knows of it, its console entry
/// and its place under `max_client_connections`.
struct Session<S> {
    client: ClientStream<Counted<S>>,
    ctx: Box<ClientCtx>,
    entry: Arc<ClientEntry>,
    permit: Option<OwnedSemaphorePermit>,
    /// Where it parks when idle (`None`: it never parks).
    lot: Option<Arc<park::ParkLot>>,
}

/// Registers a logged-in tenant client for the console (and for cancel requests).
fn register<S: ClientIo>(
    client: &ClientStream<Counted<S>>,
    ctx: &ClientCtx,
    application_name: String,
    shared: &Shared,
) -> Arc<ClientEntry> {
    tracing::info!(user = %ctx.user, tenant = %ctx.tenant.name, result = "ok", "login");
    enlist(ctx, client.io.peer(), application_name, shared)
}

/// The console entry of a client (logged in, or taken over from another process), under
/// its cancel key, told of a shutdown or handoff already under way.
fn enlist(
    ctx: &ClientCtx,
    peer: Option<std::net::SocketAddr>,
    application_name: String,
    shared: &Shared,
) -> Arc<ClientEntry> {
    let entry = Arc::new(ClientEntry::new(
        ctx.user.clone(),
        ctx.tenant.name.clone(),
        peer,
        application_name,
    ));
    shared.clients.insert(ctx.key, entry.clone());
    // After the insert: either the shutdown sweep sees this entry, or this sees the token.
    if shared.shutdown.is_cancelled() {
        entry.stop.stop(crate::shared::StopReason::Shutdown);
    }
    if shared.handing_off.load(Ordering::SeqCst) {
        entry.stop.request_handoff();
    }
    entry
}

/// The client has gone (or moved to another process): off the console's list, its
/// tenant's counts and its channels.
fn unregister(ctx: &mut ClientCtx, shared: &Shared) {
    ctx.unlisten(None);
    shared.clients.remove(&ctx.key);
    ctx.tenant.stats.clients.fetch_sub(1, Ordering::Relaxed);
    ctx.tenant.stats.repin(ctx.vs.pins(), 0);
}

/// The idle/linked loop until the client leaves (then cleanup: false), or until it is to
/// park (true).
async fn live<S: ClientIo>(s: &mut Session<S>, shared: &Arc<Shared>) -> bool {
    s.client.io.count_into(s.ctx.tenant.stats.clone());
    let may_park = s.lot.is_some();
    let result = run(&mut s.client, &mut s.ctx, &s.entry, shared, may_park).await;
    if let Ok(RunEnd::Park) = result {
        return true;
    }
    unregister(&mut s.ctx, shared);
    if let Err(e) = result {
        shared.session_errors.record(e.kind());
        // Boxed: the error and its message would otherwise take room in every session.
        Box::pin(report_end(&mut s.client, &s.ctx, e)).await;
    }
    false
}

/// Hands an idle session to the park lot (the caller's task then ends).
fn park_session<S: ClientIo>(s: Session<S>, shared: &Arc<Shared>) {
    let Session {
        client,
        mut ctx,
        entry,
        permit,
        lot,
    } = s;
    let Some(lot) = lot else {
        unreachable!("only a session with a park lot is asked to park")
    };
    let socket = match client.into_io().into_inner().into_std() {
        Ok(socket) => socket,
        Err(e) => {
            // Tokio could not let go of the socket (it is closed by now).
            tracing::warn!(user = %ctx.user, tenant = %ctx.tenant.name, error = %e,
                "could not park an idle client; closing it");
            unregister(&mut ctx, shared);
            return;
        }
    };
    ctx.share_alike();
    let parked = park::Parked {
        socket,
        // A fresh copy: the old box was allocated amid the login's short-lived allocations;
        // copies made at park time (parks come in batches, per sweep) pack together, and the
        // login-time pages can empty out and go back to the system.
        ctx: Box::new(*ctx),
        permit,
    };
    if let Err(parked) = lot.park(&entry, parked) {
        lot.spawn_resumed(parked, entry);
    }
}

/// A parked session's new task (see [`park`]).
pub(crate) async fn resume(
    parked: park::Parked,
    entry: Arc<ClientEntry>,
    shared: Arc<Shared>,
    lot: Arc<park::ParkLot>,
) {
    let park::Parked {
        socket,
        mut ctx,
        permit,
    } = parked;
    let io = match tokio::net::TcpStream::from_std(socket) {
        Ok(io) => crate::transport::tls::ClientSocket::Tcp(io),
        Err(e) => {
            tracing::warn!(user = %ctx.user, tenant = %ctx.tenant.name, error = %e,
                "could not resume a parked client; closing it");
            unregister(&mut ctx, &shared);
            return;
        }
    };
    let max_message = shared.current().config.proxy.max_message_size;
    let mut session = Session {
        client: ClientStream::new(Counted::new(io), max_message),
        ctx,
        entry,
        permit,
        lot: Some(lot),
    };
    if live(&mut session, &shared).await {
        park_session(session, &shared);
    }
}

/// One line per session that did not end by the client's choice (no query text: errors name
/// what happened, not what was sent), and the error to the client when it should see one.
async fn report_end<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &ClientCtx,
    e: SessionError,
) {
    tracing::info!(user = %ctx.user, tenant = %ctx.tenant.name, error = %e, "session closed");
    if let Some(info) = e.to_client() {
        let _ = client.send_error(&info).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Link(#[from] LinkError),
    /// No server connection (the wait timed out, the backend is down or refused). Boxed,
    /// as errors are in `LinkError`: a session's future makes room for its error.
    #[error("{}", .0.message)]
    NoServer(Box<ErrorInfo>),
    /// A reload no longer lets the client's user use its tenant.
    #[error("{}", .0.message)]
    Forbidden(Box<ErrorInfo>),
    #[error("shutting down")]
    Shutdown,
    /// `KILL tenant`. Linked mid-reply the stream may be mid-message: nothing more is sent
    /// (a KILL of a linked client at a message boundary is `LinkError::Killed`).
    #[error("killed by an administrator")]
    Killed { linked: bool },
    /// A reload removed the tenant (noticed between transactions).
    #[error("tenant \"{0}\" was removed from the configuration")]
    Removed(String),
    /// A tenant made on demand that is no more (its directory row deleted, or no longer
    /// served after a reload): what the client is told (`3D000`, or `08006` when the
    /// directory cannot be asked).
    #[error("{}", .0.message)]
    Gone(Box<ErrorInfo>),
}

impl SessionError {
    /// The metric label (`pgtenant_session_errors_total{kind}`).
    fn kind(&self) -> SessionErrorKind {
        match self {
            SessionError::Link(e) => e.kind(),
            SessionError::NoServer(_) => SessionErrorKind::NoServer,
            SessionError::Forbidden(_) => SessionErrorKind::Forbidden,
            SessionError::Shutdown => SessionErrorKind::Shutdown,
            SessionError::Killed { .. } => SessionErrorKind::Killed,
            SessionError::Removed(_) | SessionError::Gone(_) => SessionErrorKind::Removed,
        }
    }

    fn to_client(&self) -> Option<ErrorInfo> {
        match self {
            SessionError::Link(e) => e.to_client(),
            SessionError::NoServer(e) | SessionError::Forbidden(e) | SessionError::Gone(e) => {
                Some((**e).clone())
            }
            SessionError::Shutdown | SessionError::Killed { linked: false } => {
                Some(ErrorInfo::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command",
                ))
            }
            SessionError::Killed { linked: true } => None,
            SessionError::Removed(_) => {
                Some(ErrorInfo::fatal(sqlstate::ADMIN_SHUTDOWN, self.to_string()))
            }
        }
    }
}

/// How the idle/linked loop ended without an error.
enum RunEnd {
    /// The client left.
    Left,
    /// Idle, and asked to park.
    Park,
}

/// The idle/linked loop.
async fn run<S: ClientIo>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    entry: &ClientEntry,
    shared: &Shared,
    may_park: bool,
) -> Result<RunEnd, SessionError> {
    let mut generation = shared.current();
    // A resumed session may have slept through a reload.
    if refresh(ctx, &generation)? {
        Box::pin(resolve_again(ctx, &generation)).await?;
    }
    let mode = generation.config.proxy.pool_mode;
    let session_mode = mode == PoolMode::Session;
    // Boxed: it lives as long as the session, and inline it would make every idle
    // session's future bigger (it is only used while linked).
    let mut link = Box::new(Link::new(mode));
    loop {
        // Idle: wait until the client has sent a message the link can act on (a whole one,
        // or the start of a streamed CopyData): half a Query must not hold a server
        // connection, nor spin.
        let max = generation.config.proxy.max_message_size;
        match wait_for_message(client, ctx, entry, max, !session_mode, may_park).await? {
            Idle::Message => {}
            Idle::Left => return Ok(RunEnd::Left),
            Idle::Park => return Ok(RunEnd::Park),
        }
        if client.rbuf[0] == crate::protocol::ftag::TERMINATE {
            return Ok(RunEnd::Left);
        }
        if !session_mode && answer_repeated_set(client, ctx) {
            // A client that has gone away surfaces on its next read.
            let _ = client.flush().await;
            continue;
        }
        // Boxed: rare, and its state (opening the LISTEN connection) would otherwise make
        // every idle session's future bigger.
        if !session_mode
            && idle::mentions_listen(&client.rbuf)
            && Box::pin(answer_listen(client, ctx, &generation.config.proxy)).await
        {
            continue;
        }
        // A reload since the last checkout: this client's tenant, afresh.
        if shared.generation_id() != generation.id {
            generation = shared.current();
            if refresh(ctx, &generation)? {
                Box::pin(resolve_again(ctx, &generation)).await?;
            }
        }
        // A directory tenant whose row's `ttl` has passed: asked again (one query however
        // many of its clients ask at once); a deleted row ends the session here.
        if ctx.tenant.needs_recheck() {
            Box::pin(resolve_again(ctx, &generation)).await?;
        }
        // Boxed: what a transaction needs (the server connection, the linked state machine)
        // exists only while one runs, so an idle client's future stays small.
        let end = Box::pin(transaction(client, ctx, entry, &generation, &mut link)).await?;
        if end == TxEnd::ClientLeft {
            return Ok(RunEnd::Left);
        }
    }
}

/// How a transaction (one checkout) ended.
#[derive(Debug, PartialEq, Eq)]
enum TxEnd {
    /// The connection went back; the client stays.
    Released,
    /// The client left (while linked or waiting for its tenant to be resumed).
    ClientLeft,
}

/// One checkout: the pause gate, a server connection, the prelude, the link until it ends.
async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    entry: &ClientEntry,
    generation: &Generation,
    link: &mut Link,
) -> Result<TxEnd, SessionError> {
    let Some(_linked) = pass_pause_gate(client, ctx, entry).await? else {
        return Ok(TxEnd::ClientLeft);
    };
    let proxy = &generation.config.proxy;
    // Session mode links once, for the client's whole life (the link never releases).
    let (mut conn, prelude) = checkout_with_prelude(proxy, ctx, entry).await?;
    if prelude.is_some() {
        ctx.tenant.stats.preludes.fetch_add(1, Ordering::Relaxed);
    }
    entry
        .cancel
        .set(Some((conn.endpoint().clone(), conn.backend_key())));
    link.reset();
    link.max_pinned = proxy.max_pinned_clients;
    // KILL cuts the link; shutdown and removal let the transaction finish (the idle loop
    // ends the session afterwards).
    let end = {
        let linked = linked::run(
            client,
            ctx,
            entry,
            &mut conn,
            link,
            prelude,
            proxy.idle_transaction_timeout,
        );
        tokio::pin!(linked);
        loop {
            tokio::select! {
                biased;
                end = &mut linked => break Some(end),
                _ = entry.stop.stopped(), if !entry.stop.is_stopped() => {
                    if entry.stop_reason() == StopReason::Killed {
                        break None;
                    }
                }
            }
        }
    };
    entry.cancel.set(None);
    entry.set_state(ClientState::Idle);
    let pinned = ctx.vs.pins() != 0 || link.may_hold_objects();
    let_go(conn, link, pinned, end).await
}

/// A server connection and the prelude that brings it to the client's state, with the
/// timeouts its last state left that could cut that prelude short lifted first. A
/// connection whose timeouts cannot be lifted is closed and another one taken (a new
/// connection has none to lift, so this ends).
async fn checkout_with_prelude(
    proxy: &crate::config::ProxyConfig,
    ctx: &ClientCtx,
    entry: &ClientEntry,
) -> Result<(Pooled<ServerConn>, Option<sync::Prelude>), SessionError> {
    loop {
        let mut conn = timed_checkout(proxy, ctx, entry).await?;
        let prelude = sync::prelude(proxy.search_path_sync, ctx, &conn);
        match prelude.as_ref().and_then(|p| p.lift.as_deref()) {
            Some(sql) if !lift_timeouts(&mut conn, sql).await => {
                dispose(conn, Disposition::Close).await;
            }
            _ => return Ok((conn, prelude)),
        }
    }
}

/// Runs `sql` ([`sync::lift_timeouts_sql`]) until it succeeds. Cut short by the very
/// timeout it lifts (armed before the statement runs), nothing of it applied: it is tried
/// again.
async fn lift_timeouts(conn: &mut ServerConn, sql: &str) -> bool {
    for _ in 0..sync::CUT_SHORT_TRIES {
        let Ok(result) = conn.own_query(sql).await else {
            return false;
        };
        match result.error.as_deref() {
            None => {
                conn.timeouts_lifted();
                return true;
            }
            Some(code) if sync::cut_short(code) => {}
            Some(code) => {
                tracing::warn!(
                    code,
                    "could not lift a server connection's timeouts; closing it"
                );
                return false;
            }
        }
    }
    false
}

/// What becomes of the connection once the link has ended (`end`: `None` when a KILL cut
/// it mid-link), and how the transaction ended for the session.
async fn let_go(
    conn: Pooled<ServerConn>,
    link: &Link,
    pinned: bool,
    end: Option<Result<LinkEnd, LinkError>>,
) -> Result<TxEnd, SessionError> {
    match end {
        Some(Ok(LinkEnd::Released)) => {
            // Released means nothing is owed and nothing pins the client: the connection
            // goes back keeping the client's state, known (unless it broke meanwhile).
            if link.disposition(&conn, false) != Disposition::Return {
                dispose(conn, Disposition::Close).await;
            }
            Ok(TxEnd::Released)
        }
        Some(Ok(LinkEnd::ClientGone)) => {
            let disposition = link.disposition(&conn, pinned);
            dispose(conn, disposition).await;
            Ok(TxEnd::ClientLeft)
        }
        Some(Err(LinkError::Killed)) => {
            // As when cut mid-link: its transaction ends with the connection.
            dispose(conn, Disposition::Close).await;
            Err(LinkError::Killed.into())
        }
        Some(Err(e)) => {
            let disposition = link.disposition(&conn, pinned);
            dispose(conn, disposition).await;
            Err(e.into())
        }
        // KILL mid-link: closing the server connection is the only safe cleanup.
        None => {
            // A query running there would go on (holding its locks) until it next writes:
            // cancel it, then close the connection.
            let target = (conn.endpoint().clone(), conn.backend_key());
            tokio::spawn(crate::cancel::forward(Some(target)));
            dispose(conn, Disposition::Close).await;
            Err(SessionError::Killed { linked: true })
        }
    }
}

/// How an idle wait ended.
enum Idle {
    /// A message to act on is buffered.
    Message,
    /// The client left.
    Left,
    /// The park lot asked this idle session to park, and it can.
    Park,
}

/// Waits while idle until the client has sent a message to act on (see `message_ready`).
/// Ends early for shutdown, `KILL` and the tenant's removal (one token for all three), and
/// when the park lot asks an idle session with nothing buffered to park.
async fn wait_for_message<S: ClientIo>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    entry: &ClientEntry,
    max_message: usize,
    pooled: bool,
    may_park: bool,
) -> Result<Idle, SessionError> {
    // The tenant's own flag too: a client that logged in just as its tenant was removed.
    if entry.stop.is_stopped() || ctx.tenant.control.is_removed() {
        return Err(stopped(ctx, entry));
    }
    let parkable = |client: &ClientStream<S>, ctx: &ClientCtx| {
        may_park
            && client.rbuf.is_empty()
            && !client.scanner.mid_message()
            && ctx.listening.is_none()
            && client.io.parkable()
    };
    // Handing over to a new process: every idle session moves (parked sessions go first).
    if entry.stop.handing_off() && parkable(client, ctx) {
        return Ok(Idle::Park);
    }
    while !linked::ready(&client.rbuf, max_message, pooled) {
        tokio::select! {
            r = client.fill_idle() => match r {
                Ok(n) if n > 0 => {}
                _ => return Ok(Idle::Left),
            },
            Some(n) = idle::next_notification(ctx) => client.wbuf.extend_from_slice(&n),
            _ = entry.stop.signalled() => {
                if entry.stop.is_stopped() {
                    return Err(stopped(ctx, entry));
                }
                if entry.stop.take_park_request() && parkable(client, ctx) {
                    return Ok(Idle::Park);
                }
            }
        }
        if !client.wbuf.is_empty() {
            // Boxed: only listening clients get here, and inline its state would make every
            // idle session's future bigger.
            let _ = Box::pin(client.flush()).await;
        }
    }
    Ok(Idle::Message)
}

/// The error for a session whose stop token (or tenant) says it must end.
fn stopped(ctx: &ClientCtx, entry: &ClientEntry) -> SessionError {
    match entry.stop_reason() {
        StopReason::Killed => SessionError::Killed { linked: false },
        _ if ctx.tenant.control.is_removed() => SessionError::Removed(ctx.tenant.name.to_string()),
        StopReason::Removed => SessionError::Removed(ctx.tenant.name.to_string()),
        StopReason::Shutdown => SessionError::Shutdown,
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn an_idle_session_is_small() {
        let text = "[backends.main]\nhost='h'\ndatabase='d'\nuser='u'\npassword='p'\n[users.app]\npassword='x'\n[tenants.t]\nbackend='main'\n";
        let config = std::sync::Arc::new(crate::config::Config::from_toml_str(text, "t").unwrap());
        let shared = std::sync::Arc::new(super::Shared::new(config, None, Default::default()));
        // Every idle client holds one of these: keep it small (rarely used stages are
        // boxed). 2,088 bytes before the transaction, the login and the error paths were.
        let (a, _b) = tokio::io::duplex(64);
        let login = || crate::admission::PendingLogin::detached(1);
        let size = std::mem::size_of_val(&super::serve(a, shared.clone(), None, login()));
        assert!(size <= 1024, "serve future (duplex) is {size} bytes");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let tcp = crate::transport::tls::ClientSocket::Tcp(tcp);
            let size = std::mem::size_of_val(&super::serve(tcp, shared, None, login()));
            assert!(size <= 1024, "serve future (TCP) is {size} bytes");
        });
    }
}
