//! A client linked to a server connection: bytes flow both ways while the proxy peeks at the
//! messages that decide when the link ends (the [`Expect`] queue empties, nothing is
//! unsynced, ReadyForQuery said idle) and what the connection's state becomes (SET/RESET/
//! DISCARD tags, errors, reported parameters). In transaction mode named statements are
//! mapped to per-tenant server statements ([`super::prepared`]).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

mod big;
mod messages;
mod relay;
mod settle;

pub use big::{ready, INSPECT_WINDOW};

use messages::on_client_message;
use relay::server_to_client;
use settle::{resolve_fixup, settle};

use super::client::ClientCtx;
use super::expect::{Entry, Expect, Synth};
use super::sync::{self, Prelude, Reply};
use crate::config::PoolMode;
use crate::kinds::SessionErrorKind;
use crate::protocol::backend::{self, Backend, TxStatus};
use crate::protocol::encode::{self, ErrorInfo};
use crate::protocol::frontend::is_known_tag;
use crate::protocol::sql::Resets;
use crate::protocol::sqlstate;
use crate::protocol::{btag, ftag, Scanned};
use crate::server::ServerConn;
use crate::shared::StopReason;
use crate::transport::stream::ClientStream;

/// Sent instead of a statement that would pin a client beyond `max_pinned_clients`: the
/// server raises an error, with the transaction semantics of a real one (a transaction
/// block is aborted), when it runs (a refused Parse fails at its Execute, maybe in a later
/// link). The relay gives the client [`pin_refused`] in place of any error with this
/// message, which shows nothing of how it was raised.
const PIN_REFUSED: &str =
    "DO $pgtenant$ BEGIN RAISE EXCEPTION USING ERRCODE = 'configuration_limit_exceeded', \
MESSAGE = 'pgtenant: pin refused'; END $pgtenant$";

/// The message [`PIN_REFUSED`] raises.
const PIN_REFUSED_MARK: &[u8] = b"pgtenant: pin refused";

/// What a client is told for a statement that would pin it beyond `max_pinned_clients`.
fn pin_refused() -> ErrorInfo {
    ErrorInfo::error(
        sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
        "too many pinned clients for this tenant (max_pinned_clients)",
    )
    .with_hint(
        "Temp tables, session advisory locks, LISTEN, WITH HOLD cursors and SQL PREPARE keep \
         a client on its server connection; end them (DISCARD ALL) or raise max_pinned_clients.",
    )
}

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
    /// The client's last ReadyForQuery, held back until the session has settled.
    held_ready: Option<BytesMut>,
    /// A client message larger than the inspection window, streaming through.
    big: Option<Box<big::Big>>,
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

/// What becomes of a server connection when its client lets go of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Back to the pool as it is: idle, nothing owed.
    Return,
    /// Back once `DISCARD ALL` has confirmed it idle: it holds a session of the client's
    /// (session mode, or session objects such as temp tables).
    Discard,
    /// Back once `ROLLBACK` has confirmed it idle: a transaction is open, nothing in flight.
    Rollback,
    /// Closed: anything else (broken, a message or reply in flight, an unsynced batch).
    Close,
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
    /// `KILL tenant` while nothing was in flight to the client (see [`run`]).
    #[error("killed by an administrator")]
    Killed,
}

impl LinkError {
    pub fn kind(&self) -> SessionErrorKind {
        match self {
            LinkError::ServerLost { .. } => SessionErrorKind::ServerLost,
            LinkError::StateFailed => SessionErrorKind::StateFailed,
            LinkError::ClientProtocol(_) => SessionErrorKind::ClientProtocol,
            LinkError::ServerProtocol(_) => SessionErrorKind::ServerProtocol,
            LinkError::IdleInTransaction => SessionErrorKind::IdleInTransaction,
            LinkError::Killed => SessionErrorKind::Killed,
        }
    }

    pub fn to_client(&self) -> Option<ErrorInfo> {
        match self {
            LinkError::ServerLost { told: true } | LinkError::StateFailed => None,
            LinkError::ServerLost { told: false } | LinkError::ServerProtocol(_) => Some(
                ErrorInfo::fatal(sqlstate::CONNECTION_FAILURE, "server connection lost"),
            ),
            LinkError::ClientProtocol(e) => Some((**e).clone()),
            LinkError::IdleInTransaction => Some(ErrorInfo::fatal(
                sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                "terminating connection due to idle-in-transaction timeout",
            )),
            LinkError::Killed => Some(ErrorInfo::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            )),
        }
    }
}

fn client_protocol(message: impl Into<String>) -> LinkError {
    LinkError::ClientProtocol(Box::new(ErrorInfo::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        message,
    )))
}

impl Link {
    pub fn new(mode: PoolMode) -> Self {
        let pooled = mode == PoolMode::Transaction;
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
            held_ready: None,
            big: None,
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
        self.held_ready = None;
        self.big = None;
    }

    /// Nothing outstanding and no transaction open.
    pub fn is_idle(&self) -> bool {
        self.expect.is_empty() && !self.unsynced && self.status == TxStatus::Idle
    }

    /// Statements of this link may have made session objects no census has counted yet.
    pub fn may_hold_objects(&self) -> bool {
        self.pending.census || self.maybe_pins != 0
    }

    /// Whether the ReadyForQuery that ends the client's last unit waits for the session to
    /// settle (transaction mode, nothing else owed, a capture or census pending).
    fn settles_before_ready(&self) -> bool {
        self.pooled
            && self.expect.is_empty()
            && !self.pending.hold
            && (self.pending.capture || self.pending.census)
    }

    /// Nothing outstanding at all: the session may settle its pending work.
    fn quiet(&self) -> bool {
        self.is_idle() && !self.client_mid_message && !self.pending.hold
    }

    /// What becomes of `conn` if the client lets go of it now. `pinned`: the client's
    /// session objects may be on it. The one place that decides; a connection the pool
    /// gets back is still probed there ([`crate::pool::Poolable::reusable`]).
    pub fn disposition(&self, conn: &ServerConn, pinned: bool) -> Disposition {
        if conn.is_broken() || self.client_mid_message {
            Disposition::Close
        } else if pinned || !self.pooled {
            // Only when nothing at all is outstanding is the next ReadyForQuery surely the
            // DISCARD's own.
            if self.is_idle() {
                Disposition::Discard
            } else {
                Disposition::Close
            }
        } else if self.is_idle() {
            Disposition::Return
        } else if self.expect.is_empty() && !self.unsynced {
            Disposition::Rollback
        } else {
            Disposition::Close
        }
    }

    /// Whether the link may end with the client staying (transaction mode, nothing owed or
    /// pending, no session object keeping the client on its connection).
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
    conn.forget_state();
    link.pending_state = None;
}

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
        send_prelude(client, ctx, conn, link, p).await?;
    }
    if client_to_server(client, ctx, conn, link).await? == Sent::Terminate {
        return Ok(LinkEnd::ClientGone);
    }
    loop {
        if let Some(end) = catch_up(client, ctx, entry, conn, link).await? {
            return Ok(end);
        }
        reserve(&mut conn.io.rbuf);
        crate::transport::bufpool::room(&mut client.rbuf, 4096);
        let idle_in_tx = link.expect.owed() == 0 && link.status != TxStatus::Idle;
        // Nothing owed and no server message half relayed: the client's stream is at a
        // message boundary, so a KILL can tell it (57P01) as it tells an idle client. Mid-
        // reply, `session::transaction` cuts the link with nothing more sent.
        let client_at_boundary = link.expect.owed() == 0 && !conn.io.scanner.mid_message();
        if client_at_boundary
            && entry.stop.is_stopped()
            && entry.stop.reason() == StopReason::Killed
        {
            return Err(LinkError::Killed);
        }
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
            r = conn.io.stream.read_buf(&mut conn.io.rbuf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    conn.mark_broken();
                    return Err(LinkError::ServerLost { told: link.server_fatal });
                }
                server_to_client(client, ctx, conn, link).await?;
            }
            r = client.io.read_buf(&mut client.rbuf), if read_client => {
                if !matches!(r, Ok(n) if n > 0) {
                    return Ok(LinkEnd::ClientGone);
                }
                if !link.pending.hold
                    && client_to_server(client, ctx, conn, link).await? == Sent::Terminate
                {
                    return Ok(LinkEnd::ClientGone);
                }
            }
            _ = timer => return Err(LinkError::IdleInTransaction),
            // A stop: a KILL is answered at the top of the loop (shutdown and removal let
            // the transaction finish; once stopped, the branch is off).
            _ = entry.stop.stopped(), if client_at_boundary && !entry.stop.is_stopped() => {}
            // A pinned client between transactions gets its LISTEN connection's
            // notifications as a direct connection would.
            Some(n) = super::idle::next_notification(ctx), if link.quiet() && link.status == TxStatus::Idle => {
                client.wbuf.extend_from_slice(&n);
                let _ = client.flush().await;
            }
        }
    }
}

/// A prelude that only re-applies known settings goes in the same write as the client's
/// first messages; one that may fail runs in a round trip of its own ([`Prelude::alone`]).
async fn send_prelude<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
    p: Prelude,
) -> Result<(), LinkError> {
    if p.alone {
        return round_trip(client, ctx, conn, p).await;
    }
    for _ in 0..sync::encode_prelude(&mut client.sbuf, &p) {
        link.expect.push(Entry::Prelude);
    }
    link.pending_state = p.state;
    Ok(())
}

/// What the link owes once the server has answered: the client's defaults put back after
/// a RESET (then the messages held back meanwhile sent), its session settled, the held
/// ReadyForQuery passed on. `Some`: the link ends.
async fn catch_up<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    entry: &crate::shared::ClientEntry,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<Option<LinkEnd>, LinkError> {
    while link.pending.hold && link.expect.is_empty() {
        resolve_fixup(client, ctx, conn, link).await?;
        if client_to_server(client, ctx, conn, link).await? == Sent::Terminate {
            return Ok(Some(LinkEnd::ClientGone));
        }
    }
    if link.quiet() && (link.pending.capture || link.pending.census) {
        settle(client, ctx, entry, conn, link).await?;
    }
    if let Some(ready) = link.held_ready.take() {
        client.wbuf.extend_from_slice(&ready);
        // A client that has gone away surfaces on its next read.
        let _ = client.flush().await;
    }
    Ok(link.released(ctx).then_some(LinkEnd::Released))
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}

/// Applies a prelude in a round trip of its own. One cut short by a timeout (the client's
/// own, set by the prelude itself) is tried again: nothing of it applied. Any other error
/// goes to the client, and the session ends.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    p: Prelude,
) -> Result<(), LinkError> {
    fn lost<E>(_: E) -> LinkError {
        LinkError::ServerLost { told: false }
    }
    let mut bytes = BytesMut::new();
    let queries = sync::encode_prelude(&mut bytes, &p);
    let mut tries = 1;
    loop {
        conn.write_all(&bytes).await.map_err(lost)?;
        let mut failure = None;
        let mut done = 0;
        while done < queries {
            let msg = conn.read_message().await.map_err(lost)?;
            match sync::on_reply(conn, &msg).map_err(|e| proto(&e))? {
                Reply::More => {}
                Reply::Failed => failure = failure.or(Some(msg)),
                Reply::Done => done += 1,
            }
        }
        let Some(error) = failure else {
            sync::finish(conn, ctx, p.state, &mut client.wbuf);
            return client.flush().await.map_err(lost);
        };
        let cut = matches!(backend::decode(&error),
            Ok(Backend::Error(fields)) if sync::cut_short(fields.code()));
        if cut && tries < sync::CUT_SHORT_TRIES {
            tries += 1;
            continue;
        }
        conn.mark_broken();
        client.wbuf.extend_from_slice(&error);
        let _ = client.flush().await;
        return Err(LinkError::StateFailed);
    }
}

pub(super) fn proto(e: &dyn std::fmt::Display) -> LinkError {
    LinkError::ServerProtocol(e.to_string())
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
            self.buf = crate::transport::bufpool::take();
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
async fn client_to_server<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<Sent, LinkError> {
    let mut out = Outgoing {
        rbuf: &client.rbuf,
        direct: 0,
        at: 0,
        // Reused across calls: no allocation per message once it has grown.
        buf: std::mem::take(&mut client.sbuf),
    };
    let mut off = 0;
    let mut sent = Sent::Forwarded;
    loop {
        // A message larger than the inspection window streams (see `big`).
        if let Some(big) = link.big.as_mut() {
            if off == out.rbuf.len() {
                break;
            }
            off += big.step(off, &mut out);
            if big.done() {
                if let Some(big) = link.big.take() {
                    big.finish(ctx, conn, link);
                }
                if link.pending.hold {
                    break;
                }
            }
            continue;
        }
        if !client.scanner.mid_message() {
            let max = client.scanner.max_message();
            match big::classify(&out.rbuf[off..], max) {
                big::Class::Whole => {}
                big::Class::Refuse(message) => return Err(client_protocol(message)),
                big::Class::Big { tag, total } => {
                    match big::begin(tag, total, off, ctx, conn, link, &mut out)
                        .map_err(client_protocol)?
                    {
                        big::Begun::Streaming(n) => {
                            off += n;
                            continue;
                        }
                        big::Begun::NeedMore => break,
                        big::Begun::Whole => {}
                    }
                }
            }
        }
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
                    sent = Sent::Terminate;
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
    link.client_mid_message = client.scanner.mid_message() || link.big.is_some();
    let bytes = out.bytes();
    let written = if bytes.is_empty() {
        Ok(())
    } else {
        write_server(&mut conn.io.stream, bytes).await
    };
    let mut buf = out.buf;
    buf.clear();
    client.sbuf = buf;
    client.rbuf.advance(off);
    written.map_err(|_| {
        conn.mark_broken();
        LinkError::ServerLost { told: false }
    })?;
    // Usually nothing to emit: not even a future to poll then.
    if link.expect.front_is_synth() || !client.wbuf.is_empty() {
        emit_synths(client, link).await;
    }
    Ok(sent)
}

/// What forwarding the client's buffered messages came to.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Forwarded,
    /// The client sent Terminate (not forwarded: the server connection lives on).
    Terminate,
}

/// Writes made-up responses that are at the front of the queue.
pub(super) async fn emit_synths<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    link: &mut Link,
) {
    while let Some(synth) = link.expect.pop_synth() {
        let out = &mut client.wbuf;
        match synth {
            Synth::ParseComplete { .. } => encode::bodiless(out, btag::PARSE_COMPLETE),
            Synth::CloseComplete => encode::bodiless(out, btag::CLOSE_COMPLETE),
            Synth::QueryDone { tag } => {
                encode::command_complete(out, tag);
                encode::ready_for_query(out, link.status);
            }
        }
    }
    // A client that has gone away surfaces on its next read.
    let _ = client.flush().await;
}

/// Writes `bytes` to the server, then flushes (TLS may hold the last record back when the
/// socket was full; a no-op on TCP).
async fn write_server(
    stream: &mut crate::server::ServerStream,
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
