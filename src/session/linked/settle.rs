//! What a link settles with the server for the client's virtual session (see
//! [`crate::session::vsession`]): the client's defaults put back after a `RESET`, its
//! settings read back (a capture) and its session objects counted (a census) once the
//! server has answered everything.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{forget_state, Link, LinkError};
use crate::protocol::backend::TxStatus;
use crate::protocol::sql as sqlscan;
use crate::server::ServerConn;
use crate::session::client::ClientCtx;
use crate::session::{sync, vsession};
use crate::transport::stream::ClientStream;

/// After a unit that may have returned settings to the connection's defaults (see
/// [`Pending::fixup`]): puts the client's own defaults back where the server says they
/// were reset ([`sync::fixup_sql`]), and tells the client what changed.
pub(super) async fn resolve_fixup<S: AsyncRead + AsyncWrite + Unpin>(
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
        conn.mark_broken();
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
pub(super) async fn own_query<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    conn: &mut ServerConn,
    sql: &str,
) -> Result<crate::server::OwnQuery, LinkError> {
    let result = conn.own_query(sql).await.map_err(|_| {
        conn.mark_broken();
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
pub(super) async fn settle<S: AsyncRead + AsyncWrite + Unpin>(
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
    let defaults = ctx.defaults(&conn.endpoint().user);
    let mut sql = String::new();
    if capture {
        sql.push_str(&ctx.vs.capture_sql(&defaults));
        sql.push(';');
    }
    if census {
        sql.push_str(vsession::CENSUS_SQL);
    }
    let mut result = own_query(client, conn, &sql).await?;
    if result.error.as_deref() == Some(crate::protocol::sqlstate::QUERY_CANCELED) {
        result = untimed(client, conn, &sql).await?;
    }
    if !client.wbuf.is_empty() {
        let _ = client.flush().await;
    }
    if let Some(code) = result.error {
        // E.g. a statement_timeout too short for the query: the proxy cannot know the
        // session, so the connection goes (and whatever it held with it).
        tracing::warn!(tenant = %ctx.tenant.name, code, "could not read a client's session state; closing its server connection");
        conn.mark_broken();
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
        if link.opaque {
            conn.forget_state_but_timeouts(sync::short_timeouts(ctx));
        } else {
            conn.hold(
                ctx.wanted_state(),
                ctx.setting_names(),
                sync::short_timeouts(ctx),
            );
        }
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

/// The client's timeouts (cheaply: `pg_settings` alone can take milliseconds), then a
/// transaction where they are 0. Both are recorded as the session's own, as a direct
/// connection would keep them (its defaults are fixed at login).
const LIFT: &str = "SELECT 'statement_timeout', pg_catalog.current_setting('statement_timeout') \
UNION ALL SELECT 'lock_timeout', pg_catalog.current_setting('lock_timeout');\
BEGIN;SET LOCAL statement_timeout = 0;SET LOCAL lock_timeout = 0";

/// Runs `sql` (a capture, a census) when the client's own timeout cut it short: PostgreSQL
/// times a whole Query, its parsing included, so the timeouts are read and lifted for one
/// transaction by a small Query of its own first (tried again when cut short too), then
/// `sql` runs, then `COMMIT` puts the client's timeouts back.
async fn untimed<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    conn: &mut ServerConn,
    sql: &str,
) -> Result<crate::server::OwnQuery, LinkError> {
    for _ in 0..sync::CUT_SHORT_TRIES {
        let lifted = own_query(client, conn, LIFT).await?;
        match lifted.status {
            Some(TxStatus::InTransaction) if lifted.error.is_none() => {
                let mut result = own_query(client, conn, sql).await?;
                let commit = own_query(client, conn, "COMMIT").await?;
                result.error = result.error.or(commit.error);
                // The capture sees the lifted values (set in this transaction, so as if
                // by the session): the rows read before the lift are the session's.
                result.rows.retain(|row| {
                    !matches!(row.first(), Some(Some(name))
                        if row.len() == 2 && (name == "statement_timeout" || name == "lock_timeout"))
                });
                let mut rows = lifted.rows;
                rows.append(&mut result.rows);
                result.rows = rows;
                return Ok(result);
            }
            // Cut short inside the transaction: out of it, then again.
            Some(TxStatus::InTransaction | TxStatus::Failed) => {
                own_query(client, conn, "ROLLBACK").await?;
            }
            _ => {}
        }
    }
    Ok(crate::server::OwnQuery {
        error: Some(crate::protocol::sqlstate::QUERY_CANCELED.into()),
        ..Default::default()
    })
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
