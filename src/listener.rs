//! Accepting clients: the listener loop, the client cap, graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::server::ServerConn;
use crate::session::{self, Shared};

/// Runs the proxy on `listener` until `shutdown` is cancelled, then lets linked transactions
/// finish for up to `shutdown_timeout` and returns.
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared::new(config.clone(), shutdown.clone()));
    let clients = Arc::new(Semaphore::new(config.proxy.max_client_connections));
    let tracker = TaskTracker::new();
    let reaper = tokio::spawn(reap_idle(shared.clone()));
    tracing::info!(listen = %listener.local_addr()?, "pgtenant is accepting connections");
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                let permit = clients.clone().try_acquire_owned().ok();
                tracker.spawn(session::serve(stream, shared.clone(), permit));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    drop(listener);
    tracker.close();
    tracing::info!("shutting down: waiting for linked transactions to finish");
    if tokio::time::timeout(config.proxy.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown_timeout reached; closing remaining connections");
    }
    reaper.abort();
    Ok(())
}

/// Closes idle server connections past `server_idle_timeout` or `server_lifetime`, and
/// opens connections up to each endpoint's `min_pool_size`.
async fn reap_idle(shared: Arc<Shared>) {
    let proxy = &shared.config.proxy;
    let tick = (proxy.server_idle_timeout.min(proxy.server_lifetime) / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        for endpoint in &shared.registry.endpoints {
            endpoint.pool.prune_idle(|conn, idle_for| {
                idle_for < proxy.server_idle_timeout && conn.age() < proxy.server_lifetime
            });
            let min = endpoint.config.min_pool_size;
            while endpoint.pool.counts().0 < min {
                let conn = ServerConn::connect(
                    endpoint.config.clone(),
                    proxy.server_connect_timeout,
                    proxy.server_lifetime,
                    proxy.max_message_size,
                    proxy.max_prepared_statements,
                )
                .await;
                match conn {
                    Ok(conn) => {
                        if endpoint.pool.add_idle(conn).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(backend = %endpoint.config.backend, error = %e, "could not open a min_pool_size connection");
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(tick).await;
    }
}
