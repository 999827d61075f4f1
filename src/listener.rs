//! Accepting clients: the listener loop, admission (pending logins, the client cap), the idle-connection reaper, the
//! metrics listener and graceful shutdown. [`Proxy`] is the running proxy; a
//! [`ProxyHandle`] reloads it (SIGHUP in `main.rs`, tests in-process) or stops it.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::{AsFd, AsRawFd};

use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::reload::{ReloadError, ReloadSummary};
use crate::server::ServerConn;
use crate::session;
use crate::session::handoff::Moving;
use crate::shared::Shared;
use crate::tenant::Endpoint;

/// Runs the proxy on `listener` until `shutdown` is cancelled, then lets linked transactions
/// finish for up to `shutdown_timeout` and returns. There is no config file, so `RELOAD`
/// is refused; use [`Proxy`] for a reloadable proxy.
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    Proxy::new(config, None, shutdown).serve(listener).await
}

/// A proxy ready to serve.
pub struct Proxy {
    shared: Arc<Shared>,
    metrics: Option<TcpListener>,
    clients_from: Option<UnboundedReceiver<Moving>>,
}

/// Controls a running [`Proxy`] from outside (signals, tests).
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl Proxy {
    /// `config_path`: the file `RELOAD` and SIGHUP read again (`None`: reload is refused).
    pub fn new(
        config: Arc<Config>,
        config_path: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Proxy {
        Proxy {
            shared: Arc::new(Shared::new(config, config_path, shutdown)),
            metrics: None,
            clients_from: None,
        }
    }

    /// Serves `/metrics` on `listener` instead of binding `metrics_listen` (e.g. a listener
    /// on port 0 in tests).
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Proxy {
        self.metrics = Some(listener);
        self
    }

    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle {
            shared: self.shared.clone(),
        }
    }

    /// Takes over the clients another process hands over (`pgtenant --takeover`, see
    /// [`crate::takeover`]) as they come.
    pub fn taking_over(mut self, clients: UnboundedReceiver<Moving>) -> Proxy {
        self.clients_from = Some(clients);
        self
    }

    /// Accepts clients on `listener` until shutdown, then drains (see [`run`]); or until a
    /// new process takes over, then hands the clients over first.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let shared = self.shared;
        let config = shared.current().config.clone();
        let metrics = match (self.metrics, config.proxy.metrics_listen) {
            (Some(l), _) => Some(l),
            (None, Some(addr)) => Some(TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("metrics_listen {addr}: {e}"))
            })?),
            (None, None) => None,
        };
        // Kept to hand the metrics socket to a successor.
        let metrics_fd = match &metrics {
            Some(l) => Some(l.as_fd().try_clone_to_owned()?),
            None => None,
        };
        let metrics = metrics.map(|l| tokio::spawn(crate::metrics::serve(l, shared.clone())));
        let reaper = tokio::spawn(reap_idle(shared.clone()));
        let tracker = TaskTracker::new();
        let lot = match session::park::ParkLot::new(tracker.clone(), shared.clone()) {
            Ok(lot) => {
                tracker.spawn(lot.clone().run());
                Some(lot)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no park lot: idle clients will not be parked");
                None
            }
        };
        if let Some(clients) = self.clients_from {
            tokio::spawn(adopt_clients(clients, shared.clone(), lot.clone()));
        }
        let port = listener.local_addr()?.port();
        let mut point = open_takeover_point(&config, port);
        let successor = accept_loop(&listener, &shared, lot.as_ref(), &tracker, &mut point).await?;
        drop(point);
        if let Some(conn) = successor {
            let fds: Vec<_> = std::iter::once(listener.as_raw_fd())
                .chain(metrics_fd.as_ref().map(|m| m.as_raw_fd()))
                .collect();
            match crate::takeover::give_listeners(&conn, &fds) {
                Ok(()) => {
                    if let Some(m) = &metrics {
                        m.abort();
                    }
                    drop(listener);
                    hand_over(conn, &shared, lot.as_ref()).await;
                }
                Err(e) => tracing::error!(error = %e,
                    "takeover: could not hand the listening socket over; shutting down"),
            }
        } else {
            drop(listener);
        }
        drop(metrics_fd);
        shared.stop_sessions();
        tracker.close();
        tracing::info!("shutting down: waiting for linked transactions to finish");
        let timeout = shared.current().config.proxy.shutdown_timeout;
        if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
            tracing::warn!("shutdown_timeout reached; closing remaining connections");
        }
        reaper.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        Ok(())
    }
}

/// Where a successor may take this process over (`None`: `takeover_socket` is off, or
/// another process answers there: logged).
fn open_takeover_point(config: &Config, port: u16) -> Option<crate::takeover::Point> {
    let path = config.proxy.takeover_socket.path(port)?;
    match crate::takeover::Point::open(&path) {
        Ok(point) => Some(point),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e,
                "takeover_socket: not listening; this process cannot be taken over");
            None
        }
    }
}

/// The successor has the listening socket: every client that can move goes to it (parked
/// ones now, the others when idle) until none is left, or `shutdown_timeout` passes. Then
/// the process shuts down as at SIGTERM (the clients that could not move are told so).
async fn hand_over(
    conn: std::os::fd::OwnedFd,
    shared: &Arc<Shared>,
    lot: Option<&Arc<session::park::ParkLot>>,
) {
    tracing::info!("takeover: a new process has the listening socket; handing clients over");
    let (sink, sender) = crate::takeover::client_sender(conn);
    if let Some(lot) = lot {
        lot.start_handoff(sink);
    }
    shared.hand_off_sessions();
    let timeout = shared.current().config.proxy.shutdown_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    while !(shared.clients.is_empty() && shared.admission.pending() == 0) {
        if tokio::time::Instant::now() >= deadline || shared.shutdown.is_cancelled() {
            tracing::warn!(
                left = shared.clients.len(),
                "takeover: clients that could not move are closed"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(lot) = lot {
        lot.end_handoff();
    }
    // The last clients sent, and the successor told that no more come.
    let _ = tokio::task::spawn_blocking(move || sender.join()).await;
    shared.shutdown.cancel();
}

/// The new process's side: each client handed over is registered and parked.
async fn adopt_clients(
    mut clients: UnboundedReceiver<Moving>,
    shared: Arc<Shared>,
    lot: Option<Arc<session::park::ParkLot>>,
) {
    while let Some(moving) = clients.recv().await {
        match &lot {
            Some(lot) => session::handoff::adopt(moving, &shared, lot).await,
            None => tracing::warn!("takeover: no park lot to take a client into; closing it"),
        }
    }
}

/// Accepts until shutdown (`None`) or until a successor says hello (its connection).
async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    lot: Option<&Arc<session::park::ParkLot>>,
    tracker: &TaskTracker,
    point: &mut Option<crate::takeover::Point>,
) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    tracing::info!(listen = %listener.local_addr()?, "pgtenant is accepting connections");
    let mut backoff = Duration::from_millis(5);
    loop {
        let successor = async {
            match point.as_mut() {
                Some(point) => point.successor().await,
                None => std::future::pending().await,
            }
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.shutdown.cancelled() => return Ok(None),
            conn = successor => return Ok(Some(conn)),
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                // Counted apart from logged-in clients (`max_client_connections` needs a
                // restart to change; `max_pending_logins` applies from the next accept).
                let max_pending = shared.current().config.proxy.max_pending_logins;
                let login = shared.admission.begin_login(max_pending);
                if shared.panic_next_client.swap(false, Ordering::Relaxed) {
                    tracker.spawn(async move {
                        let _client = stream;
                        panic!("injected panic (ProxyHandle::panic_next_client)");
                    });
                    continue;
                }
                let socket = crate::transport::tls::ClientSocket::Tcp(stream);
                tracker.spawn(session::serve(socket, shared.clone(), lot.cloned(), login));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

impl ProxyHandle {
    /// Reads the config file again and applies it; a bad file keeps the current config
    /// (and the error says why). Also what `RELOAD` and SIGHUP do.
    pub async fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        crate::reload::reload(&self.shared).await
    }

    /// Applies an already validated config, as a reload would.
    pub fn apply(&self, config: Config) -> ReloadSummary {
        crate::reload::apply(&self.shared, config)
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.shared.current().config.clone()
    }

    /// What `/metrics` would answer now.
    pub fn metrics_text(&self) -> String {
        crate::metrics::render(&self.shared)
    }

    /// Test hook: the next client accepted gets a task that panics (its connection closes
    /// with no message), as a bug in a session would. The test suite uses it to show that
    /// it notices panics in the proxy's tasks.
    #[doc(hidden)]
    pub fn panic_next_client(&self) {
        self.shared.panic_next_client.store(true, Ordering::Relaxed);
    }

    /// Stops accepting clients and drains (as SIGTERM does).
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }
}

/// Closes idle server connections past `server_idle_timeout` or `server_lifetime`, and
/// opens connections up to each endpoint's `min_pool_size` (of the generation in force).
async fn reap_idle(shared: Arc<Shared>) {
    loop {
        let tick = {
            let generation = shared.current();
            let proxy = &generation.config.proxy;
            if let Some(dynamic) = &generation.registry.dynamic {
                dynamic.sweep(proxy.server_idle_timeout);
            }
            let user_endpoints = generation.registry.user_endpoints.endpoints();
            for endpoint in generation
                .registry
                .all_endpoints()
                .iter()
                .chain(&user_endpoints)
            {
                let closed = endpoint.pool.prune_idle(|conn, idle_for| {
                    idle_for < proxy.server_idle_timeout && conn.age() < proxy.server_lifetime
                });
                if closed > 0 {
                    tracing::debug!(backend = %endpoint.config.backend, closed, "closed idle server connections");
                }
                keep_warm(endpoint, proxy).await;
            }
            generation.registry.user_endpoints.drop_unused();
            (proxy.server_idle_timeout.min(proxy.server_lifetime) / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(5))
        };
        tokio::time::sleep(tick).await;
    }
}

/// Opens connections until the endpoint has `min_pool_size`.
async fn keep_warm(endpoint: &Endpoint, proxy: &crate::config::ProxyConfig) {
    let min = endpoint.config.min_pool_size;
    while endpoint.pool.counts().0 < min {
        let conn = ServerConn::open(endpoint.config.clone(), proxy).await;
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
