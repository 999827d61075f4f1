//! State shared by every session, the admin console and the metrics endpoint: the current
//! configuration [`Generation`] (config + registry, swapped as one on reload), the
//! connected clients, login failure counters and the shutdown signal. Passed explicitly as
//! an `Arc<Shared>`; nothing here is global.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;

use crate::cancel::{CancelKey, CancelSlot};
use crate::config::Config;
use crate::kinds::{KindCounts, SessionErrorKind};
use crate::tenant::stats::LoginFailures;
use crate::tenant::Registry;

/// One loaded configuration and the registry built from it.
pub struct Generation {
    /// 1 for the configuration the proxy started with, +1 per successful reload.
    pub id: u64,
    pub config: Arc<Config>,
    pub registry: Registry,
    pub loaded_at: SystemTime,
}

/// What a client is doing, for `SHOW CLIENTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in, no server connection.
    Idle = 0,
    /// Waiting for its tenant to be resumed.
    Paused = 1,
    /// Waiting for a server connection.
    Waiting = 2,
    /// Linked to a server connection.
    Active = 3,
    /// Idle long enough to be parked: no task, its socket in the park lot
    /// (`session::park`). Shown as idle.
    Parked = 4,
}

impl ClientState {
    pub const ALL: [ClientState; 5] = [
        ClientState::Idle,
        ClientState::Paused,
        ClientState::Waiting,
        ClientState::Active,
        ClientState::Parked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle | ClientState::Parked => "idle",
            ClientState::Paused => "paused",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }
}

/// Why a session's [`ClientEntry::stop`] was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    /// The proxy is shutting down: linked transactions finish.
    Shutdown = 1,
    /// A reload removed the tenant: the transaction in progress finishes.
    Removed = 2,
    /// `KILL tenant`: at once, even mid-transaction.
    Killed = 3,
}

impl StopReason {
    fn from_code(code: u8) -> Option<StopReason> {
        [
            StopReason::Shutdown,
            StopReason::Removed,
            StopReason::Killed,
        ]
        .into_iter()
        .find(|r| *r as u8 == code)
    }
}

/// A session's stop signal. Checked at every transaction and waited on by the session's one
/// task, so it is cheap where `CancellationToken` is not (that locks a mutex per check and
/// per poll): a check is one atomic load, and waiting registers the task's waker without
/// a lock. It also carries the park lot's request that an idle session park itself.
#[derive(Default)]
pub struct Stop {
    /// Low bits: 0 running, else a [`StopReason`]'s code. [`PARK`](Self::PARK): park
    /// requested.
    reason: AtomicU8,
    waker: AtomicWaker,
}

impl Stop {
    const PARK: u8 = 0x80;
    /// Sticky (unlike `PARK`, which a session takes): see [`Stop::request_handoff`].
    const HANDOFF: u8 = 0x40;
    const REASON: u8 = !(Self::PARK | Self::HANDOFF);

    /// Stops for `reason`. `Killed` overrides an earlier reason; the others keep the first.
    pub fn stop(&self, reason: StopReason) {
        let code = reason as u8;
        let _ = self
            .reason
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
                let kept = old & Self::REASON;
                (kept == 0 || reason == StopReason::Killed).then_some(code | (old & !Self::REASON))
            });
        self.waker.wake();
    }

    #[inline]
    pub fn is_stopped(&self) -> bool {
        self.reason.load(Ordering::SeqCst) & Self::REASON != 0
    }

    /// Why it stopped (meaningful once it has).
    pub fn reason(&self) -> StopReason {
        StopReason::from_code(self.reason.load(Ordering::SeqCst) & Self::REASON)
            .unwrap_or(StopReason::Shutdown)
    }

    /// The process is handing its clients over to a new one (`takeover.rs`): the session
    /// is to park (and so move) whenever it is idle with nothing buffered, from now on.
    pub fn request_handoff(&self) {
        self.reason
            .fetch_or(Self::HANDOFF | Self::PARK, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Whether [`Stop::request_handoff`] was called.
    #[inline]
    pub fn handing_off(&self) -> bool {
        self.reason.load(Ordering::SeqCst) & Self::HANDOFF != 0
    }

    /// Asks the (idle) session to park itself.
    pub fn request_park(&self) {
        self.reason.fetch_or(Self::PARK, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Whether parking was requested; clears the request.
    pub fn take_park_request(&self) -> bool {
        self.reason.fetch_and(!Self::PARK, Ordering::SeqCst) & Self::PARK != 0
    }

    /// Who is woken by a stop from now on (the park lot, while the session is parked).
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Resolves once stopped. For one task at a time (the session's).
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.wait_until(Self::is_stopped)
    }

    /// Resolves once stopped or asked to park (the idle wait).
    pub fn signalled(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.wait_until(|s| s.reason.load(Ordering::SeqCst) & !Self::HANDOFF != 0)
    }

    fn wait_until(&self, done: fn(&Self) -> bool) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if done(self) {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // Checked again after registering: a stop in between is not lost.
            if done(self) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

/// A logged-in client, as the console sees it.
pub struct ClientEntry {
    pub user: Arc<str>,
    pub tenant: Arc<str>,
    pub peer: Option<SocketAddr>,
    pub application_name: Box<str>,
    pub since: Instant,
    /// Where a cancel for this client goes while it is linked (also: which server).
    pub cancel: CancelSlot,
    state: AtomicU8,
    /// Sweeps of the park lot that found the client idle since its last change of state.
    idle_sweeps: AtomicU8,
    /// Set to end the session (see [`StopReason`]). One signal per session for all three
    /// reasons, so an idle session waits on one future only (idle sessions are the many:
    /// their size matters).
    pub stop: Stop,
    /// Why the client is pinned to its server connection ([`crate::protocol::sql::pin`]
    /// bits; 0: not pinned).
    pub pins: std::sync::atomic::AtomicU8,
}

impl ClientEntry {
    pub fn new(
        user: Arc<str>,
        tenant: Arc<str>,
        peer: Option<SocketAddr>,
        application_name: String,
    ) -> Self {
        ClientEntry {
            user,
            tenant,
            peer,
            application_name: application_name.into_boxed_str(),
            since: Instant::now(),
            cancel: CancelSlot::default(),
            state: AtomicU8::new(ClientState::Idle as u8),
            idle_sweeps: AtomicU8::new(0),
            stop: Stop::default(),
            pins: Default::default(),
        }
    }

    /// `KILL`: ends the session at once.
    pub fn kill(&self) {
        self.stop.stop(StopReason::Killed);
    }

    /// The tenant was removed: ends the session after its transaction.
    pub fn remove(&self) {
        self.stop.stop(StopReason::Removed);
    }

    /// Why `stop` was set (meaningful once it is).
    pub fn stop_reason(&self) -> StopReason {
        self.stop.reason()
    }

    /// Any change of state starts the park lot's count of idle sweeps again.
    #[inline]
    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.idle_sweeps.store(0, Ordering::Relaxed);
    }

    pub fn state(&self) -> ClientState {
        let code = self.state.load(Ordering::Relaxed);
        ClientState::ALL
            .into_iter()
            .find(|s| *s as u8 == code)
            .unwrap_or(ClientState::Idle)
    }

    /// The park lot's sweep: true when the session has been idle for three sweeps in a row
    /// (at least two sweep periods, no state change between) and should park.
    pub fn idle_for_three_sweeps(&self) -> bool {
        if self.state() != ClientState::Idle {
            return false;
        }
        self.idle_sweeps.fetch_add(1, Ordering::Relaxed) + 1 >= 3
    }
}

/// State shared by all sessions.
pub struct Shared {
    current: ArcSwap<Generation>,
    /// Logged-in clients by their (proxy-issued) cancel key.
    pub clients: DashMap<(i32, i32), Arc<ClientEntry>>,
    pub shutdown: CancellationToken,
    /// Failed logins by reason, whatever the tenant (or none).
    pub login_failures: LoginFailures,
    /// Reloads that were refused (bad file); successful ones are the generation id - 1.
    pub reload_failures: AtomicU64,
    /// The file `RELOAD` and SIGHUP read; `None` when started from an in-memory config.
    pub config_path: Option<PathBuf>,
    /// Serialises reloads.
    pub(crate) reload_lock: Mutex<()>,
    pub started: Instant,
    /// Sessions that ended with an error, by kind.
    pub session_errors: KindCounts<SessionErrorKind>,
    /// Idle clients parked now (kept by the park lot, see `session::park`).
    pub clients_parked: AtomicUsize,
    /// Logins in progress and client places (`max_client_connections`).
    pub admission: Arc<crate::admission::Admission>,
    /// Set when the clients are being handed over to a new process (`takeover.rs`): a
    /// session registered from then on is asked to move too.
    pub handing_off: AtomicBool,
    /// `[auth]`: the `auth_query` cache and connection (kept across reloads).
    pub auth_lookup: crate::auth::query::AuthLookup,
    /// Test hook ([`crate::ProxyHandle::panic_next_client`]): the next accepted client's
    /// task panics, so the test suite can show that it notices a panicking session.
    #[doc(hidden)]
    pub panic_next_client: AtomicBool,
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        config_path: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Self {
        let max_clients = config.proxy.max_client_connections;
        let generation = Generation {
            id: 1,
            registry: Registry::build(&config),
            config,
            loaded_at: SystemTime::now(),
        };
        Shared {
            current: ArcSwap::from_pointee(generation),
            clients: DashMap::new(),
            shutdown,
            login_failures: LoginFailures::default(),
            reload_failures: AtomicU64::new(0),
            config_path,
            reload_lock: Mutex::new(()),
            started: Instant::now(),
            clients_parked: AtomicUsize::new(0),
            session_errors: KindCounts::default(),
            admission: crate::admission::Admission::new(max_clients),
            auth_lookup: Default::default(),
            panic_next_client: AtomicBool::new(false),
            handing_off: AtomicBool::new(false),
        }
    }

    /// The configuration and registry in force now.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// The id of the generation in force now (cheap: no reference count change).
    #[inline]
    pub fn generation_id(&self) -> u64 {
        self.current.load().id
    }

    /// Shutdown: stops every logged-in session (each finishes its transaction first). A
    /// session registered after this call sees `shutdown` cancelled when it registers.
    pub fn stop_sessions(&self) {
        for client in self.clients.iter() {
            client.stop.stop(StopReason::Shutdown);
        }
    }

    /// Takeover: every logged-in session is to move to the new process as soon as it is
    /// idle. A session registered after this call sees `handing_off` when it registers.
    pub fn hand_off_sessions(&self) {
        self.handing_off.store(true, Ordering::SeqCst);
        for client in self.clients.iter() {
            client.stop.request_handoff();
        }
    }

    /// Installs a new generation (see [`crate::reload`]).
    pub(crate) fn install(&self, generation: Generation) {
        self.current.store(Arc::new(generation));
    }

    /// Forwards a client's CancelRequest, with the server's own key, to the server
    /// connection that client is linked to right now, if any.
    /// A CancelRequest for `key`: to the server its client is linked to when the client is
    /// ours; to the peer that issued the key when it is a peer's (unless a peer sent it:
    /// passed on once at most); else dropped, as PostgreSQL drops unknown keys.
    pub async fn forward_cancel(&self, key: CancelKey, from_peer: bool) {
        if let Some(client) = self.clients.get(&key) {
            let target = client.cancel.get();
            drop(client);
            return crate::cancel::forward(target).await;
        }
        let generation = self.current();
        let own = generation.config.proxy.instance_id;
        let issuer = crate::cancel::instance_of(key);
        match generation.config.peers.get(&issuer) {
            Some(peer) if !from_peer && own != 0 && issuer != own => {
                crate::cancel::to_peer(peer, key).await
            }
            _ => tracing::debug!("cancel request for no client of this instance (ignored)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> ClientEntry {
        ClientEntry::new("u".into(), "t".into(), None, String::new())
    }

    #[test]
    fn three_idle_sweeps_in_a_row_ask_to_park_and_any_state_change_restarts_the_count() {
        let e = entry();
        assert!(!e.idle_for_three_sweeps());
        assert!(!e.idle_for_three_sweeps());
        e.set_state(ClientState::Active);
        e.set_state(ClientState::Idle);
        assert!(!e.idle_for_three_sweeps());
        assert!(!e.idle_for_three_sweeps());
        assert!(e.idle_for_three_sweeps());
        e.set_state(ClientState::Waiting);
        assert!(!e.idle_for_three_sweeps(), "not idle");
        for s in ClientState::ALL {
            e.set_state(s);
            assert_eq!(e.state(), s);
        }
    }

    #[test]
    fn kill_overrides_an_earlier_stop_and_parking_requests_are_apart() {
        let e = entry();
        e.stop.request_park();
        assert!(!e.stop.is_stopped());
        e.remove();
        assert_eq!(e.stop_reason(), StopReason::Removed);
        e.stop.stop(StopReason::Shutdown);
        assert_eq!(
            e.stop_reason(),
            StopReason::Removed,
            "the first reason is kept"
        );
        e.kill();
        assert_eq!(e.stop_reason(), StopReason::Killed);
        assert!(e.stop.take_park_request());
        assert!(!e.stop.take_park_request());
        assert!(e.stop.is_stopped());
    }
}
