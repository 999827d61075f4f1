//! The pause gate: a transaction starts only while its tenant is not paused (`PAUSE`);
//! otherwise the client waits for `RESUME`, reading ahead at most [`PAUSED_READ_LIMIT`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::client::ClientCtx;
use super::{stopped, SessionError};
use crate::shared::{ClientEntry, ClientState};
use crate::tenant::TenantStats;
use crate::transport::stream::ClientStream;

/// How much a client waiting at a paused tenant may send ahead before the proxy stops reading.
const PAUSED_READ_LIMIT: usize = 1 << 20;

/// Counts a client in its tenant's [`TenantStats::linked`] until dropped.
pub(super) struct LinkedGuard(Arc<TenantStats>);

impl Drop for LinkedGuard {
    fn drop(&mut self) {
        self.0.linked.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Lets a new transaction through unless its tenant is paused (no await on that path).
/// See [`crate::tenant::TenantControl`] for why the count goes up before the flag is read.
fn enter(ctx: &ClientCtx) -> Option<LinkedGuard> {
    let stats = &ctx.tenant.stats;
    stats.linked.fetch_add(1, Ordering::SeqCst);
    if !ctx.tenant.control.is_paused() {
        return Some(LinkedGuard(stats.clone()));
    }
    stats.linked.fetch_sub(1, Ordering::SeqCst);
    None
}

/// Passes the pause gate, waiting for RESUME if the tenant is paused. `None`: the client
/// left while waiting.
pub(super) async fn pass_pause_gate<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &ClientCtx,
    entry: &ClientEntry,
) -> Result<Option<LinkedGuard>, SessionError> {
    loop {
        if let Some(guard) = enter(ctx) {
            return Ok(Some(guard));
        }
        // Boxed: rarely needed, and it would make every idle session's future bigger.
        if Box::pin(wait_while_paused(client, ctx, entry)).await? == Paused::ClientLeft {
            return Ok(None);
        }
    }
}

/// How a wait at a paused tenant ended.
#[derive(Debug, PartialEq, Eq)]
enum Paused {
    Resumed,
    ClientLeft,
}

/// Waits until the tenant is resumed (or the client leaves).
async fn wait_while_paused<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &ClientCtx,
    entry: &ClientEntry,
) -> Result<Paused, SessionError> {
    let (stats, control) = (&ctx.tenant.stats, &ctx.tenant.control);
    entry.set_state(ClientState::Paused);
    stats.paused_waiting.fetch_add(1, Ordering::Relaxed);
    let waited = loop {
        tokio::select! {
            _ = control.wait_resumed() => break Ok(Paused::Resumed),
            // Notices a client that leaves; what it sends meanwhile waits in the buffer.
            r = client.fill(), if client.rbuf.len() < PAUSED_READ_LIMIT => match r {
                Ok(n) if n > 0 => continue,
                _ => break Ok(Paused::ClientLeft),
            },
            _ = entry.stop.stopped() => break Err(stopped(ctx, entry)),
            _ = control.wait_removed() => break Err(stopped(ctx, entry)),
        }
    };
    stats.paused_waiting.fetch_sub(1, Ordering::Relaxed);
    entry.set_state(ClientState::Idle);
    waited
}
