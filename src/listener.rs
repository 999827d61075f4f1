//! Accepting clients: the listener loop, the client cap, graceful shutdown.
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Runs the proxy on `listener` until `shutdown` is cancelled, then lets linked transactions
/// finish for up to `shutdown_timeout` and returns.
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let _ = (listener, config);
    shutdown.cancelled().await;
    Ok(())
}
