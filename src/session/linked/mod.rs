//! A client linked to a server connection: bytes flow both ways while the proxy peeks at the
//! messages that decide when the link ends (the [`Expect`] queue empties, nothing is
//! unsynced, ReadyForQuery said idle) and what the connection's state becomes (SET/RESET/
//! DISCARD tags, errors, reported parameters). In transaction mode named statements are
//! mapped to per-tenant server statements ([`super::prepared`]).

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

mod big;
mod messages;
mod settle;

pub use big::{ready, INSPECT_WINDOW};

use messages::{forget, on_client_message, on_forwarded};
use settle::{resolve_fixup, settle};

use super::client::ClientCtx;
use super::expect::{Entry, Expect, Step, Synth};
use super::sync::{self, Prelude, Reply};
use crate::protocol::backend::{self, Backend, TxStatus};
use crate::protocol::encode::{self, ErrorInfo};
use crate::protocol::frontend::is_known_tag;
use crate::protocol::sql::Resets;
use crate::protocol::{btag, ftag, Scanned};
use crate::server::ServerConn;
use crate::transport::stream::ClientStream;

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
        if let Some(ready) = link.held_ready.take() {
            client.wbuf.extend_from_slice(&ready);
            // A client that has gone away surfaces on its next read.
            let _ = client.flush().await;
        }
        if link.released(ctx) {
            return Ok(LinkEnd::Released);
        }
        reserve(&mut conn.rbuf);
        crate::transport::bufpool::room(&mut client.rbuf, 4096);
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
            Some(n) = super::idle::next_notification(ctx), if link.quiet() && link.status == TxStatus::Idle => {
                client.wbuf.extend_from_slice(&n);
                let _ = client.flush().await;
            }
        }
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
    link.client_mid_message = client.scanner.mid_message() || link.big.is_some();
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
                if tag == btag::READY_FOR_QUERY && link.settles_before_ready() {
                    // The client sees this ReadyForQuery once its session is recorded (its
                    // settings read back, its objects counted): what it does next finds
                    // its pins and settings in place.
                    flush_front(client, rbuf, &mut off).await;
                    link.held_ready = Some(rbuf.split_to(len));
                    continue;
                }
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
