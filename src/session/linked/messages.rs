//! The synchronous half of the relay: what each client message becomes on its way to the
//! server (statement names mapped, Parses injected, Closes and DEALLOCATEs answered, the
//! session effects of its SQL noted), and the bookkeeping for each server message that
//! goes to the client.

use bytes::BytesMut;

use super::{client_protocol, forget_state, Link, LinkError, Outgoing, PIN_REFUSED};
use crate::protocol::backend::{self, tag_changes_session_state, Backend, TxStatus};
use crate::protocol::encode;
use crate::protocol::frontend::{self, Frontend};
use crate::protocol::ftag;
use crate::protocol::sql::{self as sqlscan, Effects};
use crate::protocol::sqlstate;
use crate::server::ServerConn;
use crate::session::client::ClientCtx;
use crate::session::expect::{Entry, Kind, StmtRef, Synth};
use crate::session::prepared::{self, SqlStatement};

/// Appends one client message (possibly rewritten, possibly preceded by injected ones) to
/// `out` and records the responses it will get.
pub(super) fn on_client_message(
    msg: &[u8],
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
    out: &mut Outgoing<'_>,
) -> Result<(), LinkError> {
    let decoded = frontend::decode(msg).map_err(|e| client_protocol(e.to_string()))?;
    ctx.tenant.stats.on_client_message(&decoded);
    link.messages += 1;
    if link.messages > 1 {
        link.pending.sole_set = None;
    }
    match decoded {
        Frontend::Query { sql } => on_query(msg, sql, ctx, conn, link, out),
        Frontend::Parse { name, sql } => on_parse(msg, name, sql, ctx, conn, link, out)?,
        Frontend::Bind => {
            link.unsynced = true;
            let (_, name, _) = frontend::split_bind(msg).ok_or_else(|| malformed(msg))?;
            match mapped(ctx, link, name) {
                Some(stmt) => {
                    let out = out.buf();
                    ensure_prepared(conn, link, &stmt, out);
                    encode::bind_renamed(out, msg, &stmt.server_name)
                        .ok_or_else(|| malformed(msg))?;
                }
                None => out.forward(msg),
            }
            link.expect.push(client_entry(Kind::Bind));
        }
        Frontend::Describe | Frontend::Close => on_target(msg, ctx, conn, link, out)?,
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

fn malformed(msg: &[u8]) -> LinkError {
    client_protocol(format!("malformed message of type {}", msg[0] as char))
}

fn client_entry(kind: Kind) -> Entry {
    Entry::Client { kind, stmt: None }
}

/// A simple Query: its effects noted, a DEALLOCATE of a mapped statement answered here, a
/// statement that would pin beyond the cap replaced by the refusal.
fn on_query(
    msg: &[u8],
    sql: &[u8],
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
    out: &mut Outgoing<'_>,
) {
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
            return;
        }
        _ if refuse_pin(&fx, ctx, link) => encode::query(out.buf(), PIN_REFUSED),
        _ => out.forward(msg),
    }
    link.expect.push(client_entry(Kind::Query));
    link.pending.fixup.merge(fx.resets);
    if !link.pending.fixup.is_none() {
        link.pending.hold = true;
    }
}

/// A Parse: effects noted; in transaction mode a named statement becomes the tenant's
/// shared server statement (prepared here unless the connection has it).
fn on_parse(
    msg: &[u8],
    name: &[u8],
    sql: &[u8],
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
    out: &mut Outgoing<'_>,
) -> Result<(), LinkError> {
    link.unsynced = true;
    let fx = sqlscan::effects(sql);
    note_effects(&fx, ctx, conn, link);
    let refused = refuse_pin(&fx, ctx, link);
    // Put back at the next Sync (see `Frontend::Sync`).
    link.pending.fixup.merge(fx.resets);
    if refused {
        // The statement becomes the refusal (same name, no parameters).
        encode::parse(out.buf(), name, PIN_REFUSED.as_bytes(), &[0, 0]);
        link.expect.push(client_entry(Kind::Parse));
        return Ok(());
    }
    if !link.pooled || name.is_empty() {
        out.forward(msg);
        link.expect.push(client_entry(Kind::Parse));
        return Ok(());
    }
    let (_, sql, types) = frontend::split_parse(msg).ok_or_else(|| malformed(msg))?;
    // A client with temp objects gets statements of its own: PostgreSQL does not plan a
    // shared statement again when a new temp table hides a table it reads.
    let temp = (ctx.vs.pins() | link.maybe_pins) & sqlscan::pin::TEMP != 0;
    let owner = if temp { ctx.listener_id() } else { 0 };
    let stmt = std::sync::Arc::new(prepared::server_stmt(
        ctx.tenant.state_id ^ owner,
        sql,
        types,
    ));
    let client_name = bytes::Bytes::copy_from_slice(name);
    ctx.stmts.insert(client_name.clone(), stmt.clone());
    if conn.statements().has(&stmt.server_name) {
        link.expect
            .push(Entry::Synth(Synth::ParseComplete { client_name }));
        return Ok(());
    }
    let out = out.buf();
    make_room(conn, link, out);
    out.extend_from_slice(&stmt.parse);
    conn.statements().add(stmt.server_name.clone());
    let stmt = Some(StmtRef {
        server: stmt.server_name.clone(),
        client: Some(client_name),
    });
    link.expect.push(Entry::Client {
        kind: Kind::Parse,
        stmt,
    });
    Ok(())
}

/// Describe or Close of a statement (`S`) or portal (`P`): a mapped statement is described
/// under its server name (prepared first if need be); a Close of one is answered here (the
/// server copy stays cached for the tenant's other clients).
fn on_target(
    msg: &[u8],
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
    out: &mut Outgoing<'_>,
) -> Result<(), LinkError> {
    link.unsynced = true;
    let (which, name) = frontend::split_target(msg).ok_or_else(|| malformed(msg))?;
    if msg[0] == ftag::CLOSE {
        if link.pooled && which == b'S' && !name.is_empty() {
            ctx.stmts.remove(name);
            link.expect.push(Entry::Synth(Synth::CloseComplete));
        } else {
            out.forward(msg);
            link.expect.push(client_entry(Kind::Close));
        }
        return Ok(());
    }
    match mapped(ctx, link, name).filter(|_| which == b'S') {
        Some(stmt) => {
            let out = out.buf();
            ensure_prepared(conn, link, &stmt, out);
            encode::describe_or_close(out, ftag::DESCRIBE, b'S', &stmt.server_name);
        }
        None => out.forward(msg),
    }
    link.expect.push(client_entry(Kind::Describe));
    Ok(())
}

/// Records what a statement's text says it may do to the session: settings to read back
/// once the server is idle, session objects to count.
pub(super) fn note_effects(
    fx: &Effects,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
) {
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
pub(super) fn mapped(
    ctx: &ClientCtx,
    link: &Link,
    name: &[u8],
) -> Option<std::sync::Arc<prepared::Stmt>> {
    if !link.pooled || name.is_empty() {
        return None;
    }
    ctx.stmts.get(name).cloned()
}

/// Injects the Parse of `stmt` if this connection does not have it.
pub(super) fn ensure_prepared(
    conn: &mut ServerConn,
    link: &mut Link,
    stmt: &prepared::Stmt,
    out: &mut BytesMut,
) {
    if conn.statements().has(&stmt.server_name) {
        return;
    }
    make_room(conn, link, out);
    out.extend_from_slice(&stmt.parse);
    conn.statements().add(stmt.server_name.clone());
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
    while let Some(victim) = conn.statements().evict_if_full() {
        encode::describe_or_close(out, ftag::CLOSE, b'S', &victim);
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
pub(super) fn forget(entry: &Entry, conn: &mut ServerConn, ctx: &mut ClientCtx) {
    match entry {
        Entry::Client {
            kind: Kind::Parse,
            stmt: Some(s),
        }
        | Entry::Injected {
            kind: Kind::Parse,
            stmt: Some(s),
        } => {
            conn.statements().remove(&s.server);
            if let Some(client) = &s.client {
                ctx.stmts.forget_if(client, &s.server);
            }
        }
        // A skipped Close: the statement is still there.
        Entry::Injected {
            kind: Kind::Close,
            stmt: Some(s),
        } => {
            conn.statements().add(s.server.clone());
        }
        // A skipped Parse the proxy answered itself: PostgreSQL would not have created it.
        Entry::Synth(Synth::ParseComplete { client_name }) => {
            ctx.stmts.remove(client_name);
        }
        _ => {}
    }
}

/// Bookkeeping for a message that goes to the client.
pub(super) fn on_forwarded(
    msg: &[u8],
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<(), crate::protocol::DecodeError> {
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
                conn.statements().clear();
                ctx.stmts.clear();
            }
        }
        Backend::Error(fields) => {
            forget_state(conn, link);
            link.unit_error = true;
            if fields.code() == sqlstate::FEATURE_NOT_SUPPORTED
                && fields
                    .get(b'M')
                    .is_some_and(|m| m.starts_with(b"cached plan must not change result type"))
            {
                // A statement the tenant's clients share went stale (DDL): the driver will
                // prepare it again, and must get a fresh one, so this connection's cache
                // goes with it.
                conn.mark_broken();
            }
            if matches!(fields.severity(), b"FATAL" | b"PANIC") {
                conn.mark_broken();
                link.server_fatal = true;
            }
        }
        Backend::ParameterStatus { name, value } => {
            let name = String::from_utf8_lossy(name).into_owned();
            let reported = conn
                .state()
                .held()
                .and_then(|h| h.reported_search_path.as_deref());
            if name == "search_path" && reported != Some(value) {
                // PostgreSQL 18 reports every change, even from a function: read it back.
                forget_state(conn, link);
                link.pending.capture = true;
            }
            conn.set_param(&name, value);
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
