//! A client that lets go of its server connection: nothing of its transaction or session
//! reaches the next client (roll back and confirm idle, `DISCARD ALL`, or close it).

use std::time::Duration;

use super::linked::Disposition;
use crate::pool::Pooled;
use crate::protocol::backend::TxStatus;
use crate::server::ServerConn;

/// How long cleanup of an abandoned link may take before the connection is closed instead.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Gives `conn` back to the pool or closes it, as `disposition` says (see
/// [`Link::disposition`]). The proxy no longer vouches for its state: the next checkout
/// re-establishes it.
pub(super) async fn dispose(mut conn: Pooled<ServerConn>, disposition: Disposition) {
    conn.forget_state();
    let clean = match disposition {
        Disposition::Return => true,
        Disposition::Rollback => reset(&mut conn, "ROLLBACK").await,
        Disposition::Discard => {
            let done = reset(&mut conn, "DISCARD ALL").await;
            if done {
                conn.discarded();
            }
            done
        }
        Disposition::Close => false,
    };
    if !clean {
        conn.discard();
    }
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
