//! A client that leaves: nothing of its transaction or session reaches the next client
//! of its server connection (roll back and confirm idle, `DISCARD ALL`, or close it).

use std::time::Duration;

use super::linked::Link;
use super::SessionError;
use crate::pool::Pooled;
use crate::protocol::backend::TxStatus;
use crate::server::ServerConn;

/// How long cleanup of an abandoned link may take before the connection is closed instead.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The client has left: make sure nothing of its session reaches the next client.
pub(super) async fn finish_session(
    mut conn: Pooled<ServerConn>,
    link: &Link,
    session_mode: bool,
    pinned: bool,
) -> Result<(), SessionError> {
    if (session_mode || pinned) && link.is_idle() && !link.client_mid_message {
        // Session mode, or session objects of the client's: the connection goes back with
        // no state at all (DISCARD ALL also drops temp objects, locks, LISTENs, cursors and
        // prepared statements).
        if reset(&mut conn, "DISCARD ALL").await {
            conn.state = None;
            conn.prepared.clear();
            return Ok(());
        }
        conn.discard();
        return Ok(());
    }
    abandon(conn, link, pinned).await;
    Ok(())
}

/// Returns a connection whose client left mid-link: idle -> as is; an open transaction with
/// nothing in flight -> ROLLBACK and confirm idle; anything else (a query or COPY in
/// flight, an unsynced extended batch, session objects of the client's) -> close it.
pub(super) async fn abandon(mut conn: Pooled<ServerConn>, link: &Link, pinned: bool) {
    // Whatever happened, the proxy no longer vouches for this connection's state.
    conn.state = None;
    if conn.broken || link.client_mid_message || pinned {
        conn.discard();
        return;
    }
    if link.is_idle() {
        return;
    }
    // Only when nothing at all is outstanding (no prelude, no reply of any kind) is the
    // next ReadyForQuery surely the ROLLBACK's own.
    if link.expect.is_empty() && !link.unsynced && reset(&mut conn, "ROLLBACK").await {
        return;
    }
    conn.discard();
}

/// Runs `sql` and reads until ReadyForQuery `I`, within [`CLEANUP_TIMEOUT`], recording the
/// parameters it reports (a `DISCARD ALL` puts DateStyle, TimeZone... back). False on any
/// error (the caller closes the connection).
async fn reset(conn: &mut ServerConn, sql: &str) -> bool {
    match tokio::time::timeout(CLEANUP_TIMEOUT, conn.own_query(sql)).await {
        Ok(Ok(r)) => r.error.is_none() && r.status == Some(TxStatus::Idle),
        _ => false,
    }
}
