//! A client linked to a server connection: bytes flow both ways while the proxy peeks at the
//! messages that decide when the link ends (the [`Expect`] queue empties, nothing is
//! unsynced, ReadyForQuery said idle) and what the connection's state becomes (SET/RESET/
//! DISCARD tags, errors, reported parameters). In transaction mode named statements are
//! mapped to per-tenant server statements ([`super::prepared`]).

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::client::ClientCtx;
use super::expect::{Entry, Expect, Kind, Step, StmtRef, Synth};
use super::prepared::{self, SqlStatement};
use super::stream::ClientStream;
use super::sync::{self, Prelude, Reply};
use super::vsession;
use crate::protocol::backend::{self, tag_changes_session_state, Backend, TxStatus};
use crate::protocol::encode::{self, ErrorInfo};
use crate::protocol::frontend::{self, is_known_tag, Frontend};
use crate::protocol::sql::{self as sqlscan, Effects, Resets};
use crate::protocol::{btag, ftag, Scanned};
use crate::server::ServerConn;

/// Sent instead of a statement that would pin a client beyond `max_pinned_clients`: the
/// server raises a clear error, with the transaction semantics of a real one.
const PIN_REFUSED: &str = "DO $pgtenant$ BEGIN RAISE EXCEPTION USING ERRCODE = 'configuration_limit_exceeded', \
MESSAGE = 'too many pinned clients for this tenant (max_pinned_clients)', \
HINT = 'Temp tables, session advisory locks, LISTEN, WITH HOLD cursors and SQL PREPARE keep a client on its server connection; end them (DISCARD ALL) or raise max_pinned_clients.'; END $pgtenant$";

/// Bookkeeping of one link.
#[derive(Debug)]
pub struct Link {
    pub expect: Expect,
    /// Extended-protocol messages sent since the last Sync (a transaction may be open).
    pub unsynced: bool,
    /// State to record once the pipelined prelude succeeds.
    pending_state: Option<crate::server::StateKey>,
    pub status: TxStatus,
    /// The server already sent a FATAL error (the client has seen it).
    server_fatal: bool,
    /// Transaction mode: release when idle, and map statement names.
    pooled: bool,
    /// Part of a streamed client message (CopyData) has been forwarded: the server stream is
    /// mid-message, so the connection can be neither released nor reused.
    pub client_mid_message: bool,
    /// What the session must settle once the server has answered everything.
    pending: Pending,
    /// Client messages handled in this link.
    messages: u32,
    /// Code ran that the scanner cannot see into: a capture reads the settings the client
    /// may know of, but not custom ones the code made up, so the connection's state stays
    /// unknown to everyone else (the next client's prelude resets everything).
    opaque: bool,
    /// An error reached the client since the last ReadyForQuery.
    unit_error: bool,
    /// Session objects the client's statements in this link may have made (until a census
    /// says which exist).
    maybe_pins: u8,
    /// Largest number of pinned clients the tenant may have.
    pub max_pinned: usize,
}

/// Work the link owes the virtual session (see [`super::vsession`]).
#[derive(Debug, Default)]
struct Pending {
    /// Settings may have changed: read them before the connection goes back.
    capture: bool,
    /// Session objects may have appeared or gone: count them.
    census: bool,
    /// Settings the unit being run may return to the connection's defaults; while `hold`
    /// is set, no further client message is sent: the client's defaults go back first.
    fixup: Resets,
    hold: bool,
    /// The last unit (up to its ReadyForQuery) had an error: PostgreSQL undid it.
    failed: bool,
    /// The link so far is one plain `SET` Query (its text): remembered once it succeeded.
    sole_set: Option<Box<[u8]>>,
}

/// How a link ended.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// Idle with nothing owed: the connection may go back to the pool.
    Released,
    /// The client closed (Terminate or EOF).
    ClientGone,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("server connection lost")]
    ServerLost { told: bool },
    #[error("the session state could not be applied")]
    StateFailed,
    #[error("client protocol violation: {}", .0.message)]
    ClientProtocol(Box<ErrorInfo>),
    #[error("server protocol violation: {0}")]
    ServerProtocol(String),
    #[error("idle-in-transaction timeout")]
    IdleInTransaction,
}

impl LinkError {
    pub fn to_client(&self) -> Option<ErrorInfo> {
        match self {
            LinkError::ServerLost { told: true } | LinkError::StateFailed => None,
            LinkError::ServerLost { told: false } | LinkError::ServerProtocol(_) => {
                Some(ErrorInfo::fatal("08006", "server connection lost"))
            }
            LinkError::ClientProtocol(e) => Some((**e).clone()),
            LinkError::IdleInTransaction => Some(ErrorInfo::fatal(
                "25P03",
                "terminating connection due to idle-in-transaction timeout",
            )),
        }
    }
}

fn client_protocol(message: impl Into<String>) -> LinkError {
    LinkError::ClientProtocol(Box::new(ErrorInfo::fatal("08P01", message)))
}

impl Link {
    /// `pooled`: transaction mode.
    pub fn new(pooled: bool) -> Self {
        Link {
            expect: Expect::default(),
            unsynced: false,
            pending_state: None,
            status: TxStatus::Idle,
            server_fatal: false,
            pooled,
            client_mid_message: false,
            pending: Pending::default(),
            messages: 0,
            opaque: false,
            unit_error: false,
            maybe_pins: 0,
            max_pinned: usize::MAX,
        }
    }

    /// Ready for the next transaction (keeps the queue's allocation).
    pub fn reset(&mut self) {
        debug_assert!(self.expect.is_empty());
        self.expect.clear();
        self.unsynced = false;
        self.pending_state = None;
        self.status = TxStatus::Idle;
        self.server_fatal = false;
        self.client_mid_message = false;
        self.pending = Pending::default();
        self.messages = 0;
        self.opaque = false;
        self.unit_error = false;
        self.maybe_pins = 0;
    }

    /// Nothing outstanding and no transaction open.
    pub fn is_idle(&self) -> bool {
        self.expect.is_empty() && !self.unsynced && self.status == TxStatus::Idle
    }

    /// Statements of this link may have made session objects no census has counted yet.
    pub fn may_hold_objects(&self) -> bool {
        self.pending.census || self.maybe_pins != 0
    }

    /// Nothing outstanding at all: the session may settle its pending work.
    fn quiet(&self) -> bool {
        self.is_idle() && !self.client_mid_message && !self.pending.hold
    }

    /// Whether the connection may go back to the pool (transaction mode, nothing owed or
    /// pending, no session object keeping the client on it).
    fn released(&self, ctx: &ClientCtx) -> bool {
        self.pooled
            && self.quiet()
            && !self.pending.capture
            && !self.pending.census
            && ctx.vs.pins() == 0
    }
}

/// The proxy no longer knows the connection's state, including the state a prelude still in
/// flight was going to record.
fn forget_state(conn: &mut ServerConn, link: &mut Link) {
    conn.state = None;
    link.pending_state = None;
}

/// SQLSTATE of a statement canceled by `statement_timeout`.
const QUERY_CANCELED: &str = "57014";

/// How much a client may send ahead while its link holds further messages back.
const HOLD_READ_LIMIT: usize = 1 << 20;

/// Runs one link: applies `prelude`, forwards what the client has buffered, then relays until
/// the link ends.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    entry: &crate::shared::ClientEntry,
    conn: &mut ServerConn,
    link: &mut Link,
    prelude: Option<Prelude>,
    idle_tx_timeout: Option<Duration>,
) -> Result<LinkEnd, LinkError> {
    if let Some(p) = prelude {
        if p.unverified {
            let mut out = BytesMut::new();
            sync::encode_prelude(&mut out, &p);
            round_trip(client, ctx, conn, p, out).await?;
        } else {
            sync::encode_prelude(&mut client.sbuf, &p);
            link.expect.push(Entry::Prelude);
            link.pending_state = p.state;
        }
    }
    let terminated = client_to_server(client, ctx, conn, link).await?;
    if terminated {
        return Ok(LinkEnd::ClientGone);
    }
    loop {
        if link.pending.hold && link.expect.is_empty() {
            resolve_fixup(client, ctx, conn, link).await?;
            if client_to_server(client, ctx, conn, link).await? {
                return Ok(LinkEnd::ClientGone);
            }
            continue;
        }
        if link.quiet() && (link.pending.capture || link.pending.census) {
            settle(client, ctx, entry, conn, link).await?;
        }
        if link.released(ctx) {
            return Ok(LinkEnd::Released);
        }
        reserve(&mut conn.rbuf);
        super::bufpool::room(&mut client.rbuf, 4096);
        let idle_in_tx = link.expect.owed() == 0 && link.status != TxStatus::Idle;
        let timer = async {
            match idle_tx_timeout {
                Some(d) if idle_in_tx => tokio::time::sleep(d).await,
                _ => std::future::pending().await,
            }
        };
        let read_client = !link.pending.hold || client.rbuf.len() < HOLD_READ_LIMIT;
        // Biased: no random branch order per wakeup (the server first: its replies free the
        // connection; the client's next message waits for them anyway).
        tokio::select! {
            biased;
            r = conn.stream.read_buf(&mut conn.rbuf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    conn.broken = true;
                    return Err(LinkError::ServerLost { told: link.server_fatal });
                }
                server_to_client(client, ctx, conn, link).await?;
            }
            r = client.io.read_buf(&mut client.rbuf), if read_client => {
                if !matches!(r, Ok(n) if n > 0) {
                    return Ok(LinkEnd::ClientGone);
                }
                if !link.pending.hold && client_to_server(client, ctx, conn, link).await? {
                    return Ok(LinkEnd::ClientGone);
                }
            }
            _ = timer => return Err(LinkError::IdleInTransaction),
            // A pinned client between transactions gets its LISTEN connection's
            // notifications as a direct connection would.
            Some(n) = super::next_notification(ctx), if link.quiet() && link.status == TxStatus::Idle => {
                client.wbuf.extend_from_slice(&n);
                let _ = client.flush().await;
            }
        }
    }
}

/// After a unit that may have returned settings to the connection's defaults (see
/// [`Pending::fixup`]): puts the client's own defaults back where the server says they
/// were reset ([`sync::fixup_sql`]), and tells the client what changed.
async fn resolve_fixup<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<(), LinkError> {
    link.pending.hold = false;
    if link.status == TxStatus::Failed {
        // Nothing runs in an aborted transaction: put the defaults back after the next
        // unit (the check is the server's, so running it later is as exact).
        return Ok(());
    }
    let resets = std::mem::take(&mut link.pending.fixup);
    let sql = sync::fixup_sql(&resets, ctx);
    if sql.is_empty() {
        return Ok(());
    }
    let result = own_query(client, conn, &sql).await?;
    if let Some(code) = result.error {
        tracing::warn!(tenant = %ctx.tenant.name, code, "could not restore a client's defaults after RESET");
        conn.broken = true;
        return Err(LinkError::ServerProtocol(format!(
            "could not restore the session's defaults ({code})"
        )));
    }
    sync::tell_params(conn, ctx, &mut client.wbuf);
    client
        .flush()
        .await
        .map_err(|_| LinkError::ServerLost { told: false })
}

/// Runs a query of the proxy's own while the client is linked, passing on the client's
/// notifications that arrive meanwhile.
async fn own_query<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    conn: &mut ServerConn,
    sql: &str,
) -> Result<crate::server::OwnQuery, LinkError> {
    let result = conn.own_query(sql).await.map_err(|_| {
        conn.broken = true;
        LinkError::ServerLost { told: false }
    })?;
    for n in &result.notifications {
        client.wbuf.extend_from_slice(n);
    }
    Ok(result)
}

/// The server has answered everything: read the session's settings (a capture) and count
/// its objects (a census), as the transaction may have changed them; the client is then
/// pinned or not, and the connection's state is the client's, known.
async fn settle<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    entry: &crate::shared::ClientEntry,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<(), LinkError> {
    let capture = std::mem::take(&mut link.pending.capture);
    let census = std::mem::take(&mut link.pending.census);
    let sole_set = link.pending.sole_set.take();
    if !link.pooled {
        // Session mode: the client keeps its connection, which is its session.
        return Ok(());
    }
    let defaults = ctx.defaults(&conn.endpoint.user);
    let mut sql = String::new();
    if capture {
        sql.push_str(&ctx.vs.capture_sql(&defaults));
        sql.push(';');
    }
    if census {
        sql.push_str(vsession::CENSUS_SQL);
    }
    let mut result = own_query(client, conn, &sql).await?;
    if result.error.as_deref() == Some(QUERY_CANCELED) {
        // The client's own statement_timeout is shorter than the query: read it first,
        // then run the query without it (its value then comes from the first row).
        let retry = format!(
            "SELECT 'statement_timeout', pg_catalog.current_setting('statement_timeout');\
             BEGIN;SET LOCAL statement_timeout = 0;{sql};COMMIT"
        );
        result = own_query(client, conn, &retry).await?;
    }
    if !client.wbuf.is_empty() {
        let _ = client.flush().await;
    }
    if let Some(code) = result.error {
        // E.g. a statement_timeout too short for the query: the proxy cannot know the
        // session, so the connection goes (and whatever it held with it).
        tracing::warn!(tenant = %ctx.tenant.name, code, "could not read a client's session state; closing its server connection");
        conn.broken = true;
        forget_state(conn, link);
        update_pins(ctx, entry, 0);
        return Ok(());
    }
    let (settings, counts): (Vec<_>, Vec<_>) =
        result.rows.into_iter().partition(|row| row.len() == 2);
    if capture {
        let rows = settings
            .into_iter()
            .filter_map(|mut row| {
                let value = row.pop()?;
                Some((row.pop()??, value))
            })
            .collect();
        ctx.vs.captured(rows, &defaults);
        conn.state = (!link.opaque).then(|| ctx.wanted_state());
        conn.applied = ctx.setting_names();
        conn.reported_search_path = conn.params.get("search_path").map(|v| v.to_vec());
        match sole_set {
            Some(text) if !link.pending.failed && link.status == TxStatus::Idle => {
                ctx.vs.remember_set(&text, &ctx.params)
            }
            _ => ctx.vs.forget_memo(),
        }
    }
    if census {
        let row: Vec<Option<&[u8]>> = counts
            .first()
            .map(|r| r.iter().map(|c| c.as_deref().map(str::as_bytes)).collect())
            .unwrap_or_default();
        update_pins(ctx, entry, vsession::census_pins(&row));
    }
    Ok(())
}

/// Records the client's session objects: its pins, the console's and the metrics' view,
/// and one log line when it is pinned or unpinned.
fn update_pins(ctx: &mut ClientCtx, entry: &crate::shared::ClientEntry, pins: u8) {
    let old = ctx.vs.pins();
    if old == pins {
        return;
    }
    ctx.vs.set_pins(pins);
    entry.pins.store(pins, std::sync::atomic::Ordering::Relaxed);
    ctx.tenant.stats.repin(old, pins);
    let reason = sqlscan::pin::describe(pins);
    if pins == 0 {
        tracing::info!(user = %ctx.user, tenant = %ctx.tenant.name, was = %sqlscan::pin::describe(old), "client unpinned");
    } else {
        tracing::info!(user = %ctx.user, tenant = %ctx.tenant.name, reason = %reason, "client pinned to its server connection");
    }
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}

/// Applies an unverified prelude in a round trip of its own.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    p: Prelude,
    bytes: BytesMut,
) -> Result<(), LinkError> {
    let lost = |_| LinkError::ServerLost { told: false };
    conn.write_all(&bytes)
        .await
        .map_err(|_| LinkError::ServerLost { told: false })?;
    let mut failed = false;
    loop {
        let msg = conn.read_message().await.map_err(lost)?;
        match sync::on_reply(conn, &msg).map_err(|e| LinkError::ServerProtocol(e.into()))? {
            Reply::More => {}
            Reply::Failed => {
                failed = true;
                client.wbuf.extend_from_slice(&msg);
            }
            Reply::Done if failed => {
                conn.broken = true;
                let _ = client.flush().await;
                return Err(LinkError::StateFailed);
            }
            Reply::Done => break,
        }
    }
    sync::finish(conn, ctx, p.state, &mut client.wbuf);
    client
        .flush()
        .await
        .map_err(|_| LinkError::ServerLost { told: false })
}

/// What goes to the server from one batch of client messages. As long as every message goes
/// as it is, nothing is copied: the batch is written straight from the client's read
/// buffer. From the first message the proxy rewrites, injects before or leaves out (or when
/// a prelude is already queued), everything is copied into `buf` instead.
struct Outgoing<'a> {
    rbuf: &'a [u8],
    /// Bytes at the front of `rbuf` that go as they are (only while `buf` is empty).
    direct: usize,
    /// Offset in `rbuf` of the message being handled.
    at: usize,
    buf: BytesMut,
}

impl Outgoing<'_> {
    /// Forwards `len` bytes of `rbuf` at `at` unchanged.
    fn forward_at(&mut self, at: usize, len: usize) {
        if self.buf.is_empty() && self.direct == at {
            self.direct = at + len;
        } else {
            let rbuf = self.rbuf;
            self.buf().extend_from_slice(&rbuf[at..at + len]);
        }
    }

    /// Forwards the message being handled (`msg`) unchanged.
    fn forward(&mut self, msg: &[u8]) {
        self.forward_at(self.at, msg.len());
    }

    /// Where bytes of the proxy's own making go: after everything forwarded so far.
    fn buf(&mut self) -> &mut BytesMut {
        if self.buf.capacity() == 0 {
            self.buf = super::bufpool::take();
        }
        if self.direct > 0 {
            self.buf.extend_from_slice(&self.rbuf[..self.direct]);
            self.direct = 0;
        }
        &mut self.buf
    }

    fn bytes(&self) -> &[u8] {
        if self.direct > 0 {
            &self.rbuf[..self.direct]
        } else {
            &self.buf
        }
    }
}

/// Forwards every whole message the client has buffered (after whatever `client.sbuf`
/// already holds, e.g. the prelude), then emits any made-up responses whose turn has come.
/// Returns true on Terminate (not forwarded: the server connection lives on).
async fn client_to_server<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<bool, LinkError> {
    let mut out = Outgoing {
        rbuf: &client.rbuf,
        direct: 0,
        at: 0,
        // Reused across calls: no allocation per message once it has grown.
        buf: std::mem::take(&mut client.sbuf),
    };
    let mut off = 0;
    let mut terminated = false;
    loop {
        let item = client
            .scanner
            .scan(&out.rbuf[off..], |t| t != ftag::COPY_DATA)
            .map_err(|e| client_protocol(e.to_string()))?;
        let len = match item {
            None => break,
            Some(Scanned::Through { len, .. }) => {
                out.forward_at(off, len);
                len
            }
            Some(Scanned::Message { tag, len }) => {
                let msg = &out.rbuf[off..off + len];
                if !is_known_tag(tag) {
                    return Err(client_protocol(format!(
                        "invalid frontend message type {tag}"
                    )));
                }
                if tag == ftag::TERMINATE {
                    terminated = true;
                    off += len;
                    break;
                }
                out.at = off;
                on_client_message(msg, ctx, conn, link, &mut out)?;
                if link.pending.hold {
                    // The rest waits until the client's defaults are back.
                    off += len;
                    break;
                }
                len
            }
        };
        off += len;
    }
    link.client_mid_message = client.scanner.mid_message();
    let bytes = out.bytes();
    let written = if bytes.is_empty() {
        Ok(())
    } else {
        conn.stream.write_all(bytes).await
    };
    let mut buf = out.buf;
    buf.clear();
    client.sbuf = buf;
    client.rbuf.advance(off);
    written.map_err(|_| {
        conn.broken = true;
        LinkError::ServerLost { told: false }
    })?;
    // Usually nothing to emit: not even a future to poll then.
    if link.expect.front_is_synth() || !client.wbuf.is_empty() {
        emit_synths(client, link).await;
    }
    Ok(terminated)
}

/// Appends one client message (possibly rewritten, possibly preceded by injected ones) to
/// `out` and records the responses it will get.
fn on_client_message(
    msg: &[u8],
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
    out: &mut Outgoing<'_>,
) -> Result<(), LinkError> {
    let decoded = frontend::decode(msg).map_err(client_protocol)?;
    ctx.tenant.stats.on_client_message(&decoded);
    link.messages += 1;
    if link.messages > 1 {
        link.pending.sole_set = None;
    }
    let malformed = || client_protocol(format!("malformed message of type {}", msg[0] as char));
    let client_entry = |kind| Entry::Client { kind, stmt: None };
    match decoded {
        Frontend::Query { sql } => {
            let fx = sqlscan::effects(sql);
            if link.messages == 1 && fx.plain_set && link.status == TxStatus::Idle {
                link.pending.sole_set = Some(sql.into());
            }
            note_effects(&fx, ctx, conn, link);
            match link.pooled.then(|| prepared::classify_sql(sql)) {
                Some(SqlStatement::Deallocate(name)) if !server_deallocates(ctx, link, &name) => {
                    let tag = match name {
                        Some(name) => {
                            ctx.stmts.remove(&name);
                            "DEALLOCATE"
                        }
                        None => {
                            ctx.stmts.clear();
                            "DEALLOCATE ALL"
                        }
                    };
                    link.expect.push(Entry::Synth(Synth::QueryDone { tag }));
                    return Ok(());
                }
                _ if refuse_pin(&fx, ctx, link) => encode::query(out.buf(), PIN_REFUSED),
                _ => out.forward(msg),
            }
            link.expect.push(client_entry(Kind::Query));
            merge_resets(&mut link.pending.fixup, fx.resets);
            if !link.pending.fixup.is_none() {
                link.pending.hold = true;
            }
        }
        Frontend::Parse { name, sql } => {
            link.unsynced = true;
            let fx = sqlscan::effects(sql);
            note_effects(&fx, ctx, conn, link);
            if !fx.resets.is_none() {
                // Put back at the next Sync (see `Frontend::Sync`).
                merge_resets(&mut link.pending.fixup, fx.resets);
            }
            if !link.pooled || name.is_empty() {
                out.forward(msg);
                link.expect.push(client_entry(Kind::Parse));
                return Ok(());
            }
            let (_, sql, types) = prepared::split_parse(msg).ok_or_else(malformed)?;
            let stmt = std::sync::Arc::new(prepared::server_stmt(ctx.tenant.state_id, sql, types));
            let client_name = bytes::Bytes::copy_from_slice(name);
            ctx.stmts.insert(client_name.clone(), stmt.clone());
            if conn.prepared.get(&stmt.server_name).is_some() {
                link.expect
                    .push(Entry::Synth(Synth::ParseComplete { client_name }));
            } else {
                let out = out.buf();
                make_room(conn, link, out);
                out.extend_from_slice(&stmt.parse);
                conn.prepared.put(stmt.server_name.clone(), ());
                let stmt = Some(StmtRef {
                    server: stmt.server_name.clone(),
                    client: Some(client_name),
                });
                link.expect.push(Entry::Client {
                    kind: Kind::Parse,
                    stmt,
                });
            }
        }
        Frontend::Bind => {
            link.unsynced = true;
            let (_, name, _) = prepared::split_bind(msg).ok_or_else(malformed)?;
            match mapped(ctx, link, name) {
                Some(stmt) => {
                    let out = out.buf();
                    ensure_prepared(conn, link, &stmt, out);
                    prepared::put_bind_renamed(out, msg, &stmt.server_name)
                        .ok_or_else(malformed)?;
                }
                None => out.forward(msg),
            }
            link.expect.push(client_entry(Kind::Bind));
        }
        Frontend::Describe => {
            link.unsynced = true;
            let (which, name) = prepared::split_target(msg).ok_or_else(malformed)?;
            match mapped(ctx, link, name).filter(|_| which == b'S') {
                Some(stmt) => {
                    let out = out.buf();
                    ensure_prepared(conn, link, &stmt, out);
                    prepared::put_target(out, ftag::DESCRIBE, b'S', &stmt.server_name);
                }
                None => out.forward(msg),
            }
            link.expect.push(client_entry(Kind::Describe));
        }
        Frontend::Close => {
            link.unsynced = true;
            let (which, name) = prepared::split_target(msg).ok_or_else(malformed)?;
            if link.pooled && which == b'S' && !name.is_empty() {
                // The server copy stays cached for the tenant's other clients.
                ctx.stmts.remove(name);
                link.expect.push(Entry::Synth(Synth::CloseComplete));
            } else {
                out.forward(msg);
                link.expect.push(client_entry(Kind::Close));
            }
        }
        Frontend::Execute => {
            link.unsynced = true;
            out.forward(msg);
            link.expect.push(client_entry(Kind::Execute));
        }
        Frontend::Sync => {
            link.unsynced = false;
            out.forward(msg);
            link.expect.push_sync();
            if !link.pending.fixup.is_none() {
                link.pending.hold = true;
            }
        }
        Frontend::FunctionCall => {
            out.forward(msg);
            link.expect.push(client_entry(Kind::FunctionCall));
        }
        Frontend::CopyDone | Frontend::CopyFail => {
            out.forward(msg);
            link.expect.copy_end();
        }
        Frontend::Flush | Frontend::CopyData => out.forward(msg),
        Frontend::Password(_) => {
            return Err(client_protocol(
                "unexpected password message after authentication",
            ))
        }
        Frontend::Terminate => {}
    }
    Ok(())
}

/// Records what a statement's text says it may do to the session: settings to read back
/// once the server is idle, session objects to count.
fn note_effects(fx: &Effects, ctx: &mut ClientCtx, conn: &mut ServerConn, link: &mut Link) {
    if fx.is_empty() {
        return;
    }
    // UNLISTEN and DISCARD ALL end what the client listens on through the LISTEN
    // connection too (served there, they are not seen by this server connection).
    if fx.discard_all {
        ctx.unlisten(None);
    } else if let Some(sqlscan::Listen::Unlisten(channel)) = &fx.listen {
        ctx.unlisten(channel.as_deref());
    }
    if fx.settings || fx.calls {
        forget_state(conn, link);
        link.pending.capture = true;
        link.opaque |= fx.calls;
        ctx.vs.note(fx);
    }
    if fx.pins != 0 || fx.releases || fx.calls {
        link.pending.census = true;
        link.maybe_pins |= fx.pins;
    }
}

fn merge_resets(into: &mut Resets, more: Resets) {
    *into = match (std::mem::take(into), more) {
        (Resets::All, _) | (_, Resets::All) => Resets::All,
        (Resets::None, r) | (r, Resets::None) => r,
        (Resets::Names(mut a), Resets::Names(b)) => {
            for n in b {
                if !a.contains(&n) {
                    a.push(n);
                }
            }
            Resets::Names(a)
        }
    };
}

/// Whether a `DEALLOCATE` goes to the server: the client has SQL-prepared statements there
/// and it does not name one of its protocol-level statements (those the proxy maps).
fn server_deallocates(ctx: &ClientCtx, link: &Link, name: &Option<Vec<u8>>) -> bool {
    let prepared = (ctx.vs.pins() | link.maybe_pins) & sqlscan::pin::PREPARE != 0;
    prepared && name.as_ref().is_none_or(|n| ctx.stmts.get(n).is_none())
}

/// Whether a statement that would pin a client not yet pinned is over its tenant's
/// `max_pinned_clients`.
fn refuse_pin(fx: &Effects, ctx: &ClientCtx, link: &mut Link) -> bool {
    if !link.pooled || fx.pins == 0 || ctx.vs.pins() != 0 || link.maybe_pins & !fx.pins != 0 {
        return false;
    }
    let pinned = ctx
        .tenant
        .stats
        .pinned
        .load(std::sync::atomic::Ordering::Relaxed);
    if pinned < link.max_pinned {
        return false;
    }
    link.maybe_pins &= !fx.pins;
    true
}

/// The server statement a client's statement name maps to (named statements in
/// transaction mode only; unknown names pass through and get PostgreSQL's own error).
fn mapped(ctx: &ClientCtx, link: &Link, name: &[u8]) -> Option<std::sync::Arc<prepared::Stmt>> {
    if !link.pooled || name.is_empty() {
        return None;
    }
    ctx.stmts.get(name).cloned()
}

/// Injects the Parse of `stmt` if this connection does not have it.
fn ensure_prepared(
    conn: &mut ServerConn,
    link: &mut Link,
    stmt: &prepared::Stmt,
    out: &mut BytesMut,
) {
    if conn.prepared.get(&stmt.server_name).is_some() {
        return;
    }
    make_room(conn, link, out);
    out.extend_from_slice(&stmt.parse);
    conn.prepared.put(stmt.server_name.clone(), ());
    let stmt = Some(StmtRef {
        server: stmt.server_name.clone(),
        client: None,
    });
    link.expect.push(Entry::Injected {
        kind: Kind::Parse,
        stmt,
    });
}

/// Keeps the connection's statement cache under its cap: closes the least recently used.
fn make_room(conn: &mut ServerConn, link: &mut Link, out: &mut BytesMut) {
    while conn.prepared.len() >= conn.max_prepared {
        let Some((victim, ())) = conn.prepared.pop_lru() else {
            break;
        };
        prepared::put_target(out, ftag::CLOSE, b'S', &victim);
        let stmt = Some(StmtRef {
            server: victim,
            client: None,
        });
        link.expect.push(Entry::Injected {
            kind: Kind::Close,
            stmt,
        });
    }
}

/// Undoes the statement bookkeeping of an entry the server failed or skipped.
fn forget(entry: &Entry, conn: &mut ServerConn, ctx: &mut ClientCtx) {
    match entry {
        Entry::Client {
            kind: Kind::Parse,
            stmt: Some(s),
        }
        | Entry::Injected {
            kind: Kind::Parse,
            stmt: Some(s),
        } => {
            conn.prepared.pop(&s.server);
            if let Some(client) = &s.client {
                ctx.stmts.forget_if(client, &s.server);
            }
        }
        // A skipped Close: the statement is still there.
        Entry::Injected {
            kind: Kind::Close,
            stmt: Some(s),
        } => {
            conn.prepared.put(s.server.clone(), ());
        }
        // A skipped Parse the proxy answered itself: PostgreSQL would not have created it.
        Entry::Synth(Synth::ParseComplete { client_name }) => {
            ctx.stmts.remove(client_name);
        }
        _ => {}
    }
}

/// Writes made-up responses that are at the front of the queue.
async fn emit_synths<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    link: &mut Link,
) {
    while let Some(synth) = link.expect.pop_synth() {
        let out = &mut client.wbuf;
        match synth {
            Synth::ParseComplete { .. } => simple_message(out, btag::PARSE_COMPLETE),
            Synth::CloseComplete => simple_message(out, btag::CLOSE_COMPLETE),
            Synth::QueryDone { tag } => {
                encode::command_complete(out, tag);
                encode::ready_for_query(out, link.status);
            }
        }
    }
    // A client that has gone away surfaces on its next read.
    let _ = client.flush().await;
}

fn simple_message(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_i32(4);
}

/// Relays what the server has sent, message by message against the [`Expect`] queue.
async fn server_to_client<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<(), LinkError> {
    // The buffer is taken out for the duration so messages in it can be read while the
    // connection's bookkeeping is updated.
    let mut rbuf = std::mem::take(&mut conn.rbuf);
    let result = relay(client, ctx, conn, link, &mut rbuf).await;
    conn.rbuf = rbuf;
    result
}

async fn relay<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
    rbuf: &mut BytesMut,
) -> Result<(), LinkError> {
    let proto = |e: &dyn std::fmt::Display| LinkError::ServerProtocol(e.to_string());
    // Bytes at the front of `rbuf` that are ready to go to the client.
    let mut off = 0;
    loop {
        let expect = &link.expect;
        // The prelude's replies are all swallowed, rows included (its SELECTs).
        let swallowing = expect.prelude_pending();
        let inspect = |t: u8| {
            swallowing
                || t != btag::DATA_ROW
                    && t != btag::COPY_DATA
                    && (matches!(
                        t,
                        btag::READY_FOR_QUERY
                            | btag::COMMAND_COMPLETE
                            | btag::ERROR_RESPONSE
                            | btag::PARAMETER_STATUS
                    ) || expect.needs_whole(t))
        };
        let item = conn
            .scanner
            .scan(&rbuf[off..], inspect)
            .map_err(|e| proto(&e))?;
        let (tag, len) = match item {
            None => break,
            Some(Scanned::Through { len, .. }) => {
                off += len;
                continue;
            }
            Some(Scanned::Message { tag, len }) => (tag, len),
        };
        let step = if link.expect.is_empty() {
            // Nothing is owed (e.g. an asynchronous notice): forward, keep track of state.
            Step::Forward
        } else {
            link.expect.on_message(tag)
        };
        match step {
            Step::Forward | Step::Completed(_) | Step::Failed { .. } => {
                on_forwarded(&rbuf[off..off + len], ctx, conn, link).map_err(|e| proto(&e))?;
                off += len;
                if let Step::Failed { entry, dropped } = &step {
                    forget(entry, conn, ctx);
                    for e in dropped {
                        forget(e, conn, ctx);
                    }
                }
            }
            Step::Swallow(_) => {
                flush_front(client, rbuf, &mut off).await;
                rbuf.advance(len);
            }
            Step::Prelude | Step::PreludeDone => {
                flush_front(client, rbuf, &mut off).await;
                let msg = rbuf.split_to(len);
                if let Backend::ParameterStatus { name, value } =
                    backend::decode(&msg).map_err(|e| proto(&e))?
                {
                    conn.params.set(&String::from_utf8_lossy(name), value);
                }
                if tag == btag::READY_FOR_QUERY {
                    let state = link.pending_state.take();
                    sync::finish(conn, ctx, state, &mut client.wbuf);
                }
            }
            Step::PreludeFailed => {
                conn.broken = true;
                flush_front(client, rbuf, &mut off).await;
                client.wbuf.extend_from_slice(&rbuf[..len]);
                let _ = client.flush().await;
                return Err(LinkError::StateFailed);
            }
        }
        if link.expect.front_is_synth() || !client.wbuf.is_empty() {
            flush_front(client, rbuf, &mut off).await;
            emit_synths(client, link).await;
        }
    }
    flush_front(client, rbuf, &mut off).await;
    Ok(())
}

/// Writes the first `off` bytes of the server buffer to the client.
async fn flush_front<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    rbuf: &mut BytesMut,
    off: &mut usize,
) {
    if *off > 0 {
        // A client that has gone away surfaces on its next read; keep the server stream
        // consistent meanwhile.
        let _ = client.io.write_all(&rbuf[..*off]).await;
        rbuf.advance(*off);
        *off = 0;
    }
}

/// Bookkeeping for a message that goes to the client.
fn on_forwarded(
    msg: &[u8],
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<(), &'static str> {
    match backend::decode(msg)? {
        Backend::ReadyForQuery(status) => {
            ctx.tenant.stats.on_ready_for_query(status);
            link.status = status;
            link.pending.failed = std::mem::take(&mut link.unit_error);
        }
        Backend::CommandComplete(tag) => {
            if tag_changes_session_state(tag) {
                forget_state(conn, link);
                link.pending.capture = true;
            }
            if tag_may_touch_objects(tag) {
                link.pending.census = true;
            }
            if tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL" {
                conn.prepared.clear();
                ctx.stmts.clear();
            }
        }
        Backend::Error(fields) => {
            forget_state(conn, link);
            link.unit_error = true;
            if fields.code() == "0A000"
                && fields
                    .get(b'M')
                    .is_some_and(|m| m.starts_with(b"cached plan must not change result type"))
            {
                // A statement the tenant's clients share went stale (DDL): the driver will
                // prepare it again, and must get a fresh one, so this connection's cache
                // goes with it.
                conn.broken = true;
            }
            if matches!(fields.severity(), b"FATAL" | b"PANIC") {
                conn.broken = true;
                link.server_fatal = true;
            }
        }
        Backend::ParameterStatus { name, value } => {
            let name = String::from_utf8_lossy(name).into_owned();
            if name == "search_path" && conn.reported_search_path.as_deref() != Some(value) {
                // PostgreSQL 18 reports every change, even from a function: read it back.
                forget_state(conn, link);
                link.pending.capture = true;
            }
            conn.params.set(&name, value);
            if ctx.params.get(&name).is_some() {
                ctx.params.set(&name, value);
            }
        }
        _ => {}
    }
    Ok(())
}

/// CommandComplete tags of statements that may create or drop session objects (temp
/// objects, cursors, SQL prepared statements, LISTEN), or run code that may: the server's
/// word, whatever the scanner saw in the text.
fn tag_may_touch_objects(tag: &[u8]) -> bool {
    const EXACT: [&[u8]; 7] = [
        b"LISTEN",
        b"UNLISTEN",
        b"DECLARE CURSOR",
        b"PREPARE",
        b"DO",
        b"CALL",
        b"DEALLOCATE",
    ];
    EXACT.contains(&tag)
        || tag.starts_with(b"CREATE ")
        || tag.starts_with(b"DROP ")
        || tag.starts_with(b"CLOSE CURSOR")
        || tag.starts_with(b"DISCARD")
        || tag.starts_with(b"DEALLOCATE")
}
