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
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle | ClientState::Parked => "idle",
            ClientState::Paused => "paused",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }
}

/// [`ClientEntry`]'s state byte also counts the park lot's sweeps that found the client
/// idle (any `set_state` by the session starts the count again).
const IDLE_SEEN_ONCE: u8 = 5;
const IDLE_SEEN_TWICE: u8 = 6;

/// Why a session's [`ClientEntry::stop`] was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The proxy is shutting down: linked transactions finish.
    Shutdown,
    /// A reload removed the tenant: the transaction in progress finishes.
    Removed,
    /// `KILL tenant`: at once, even mid-transaction.
    Killed,
}

/// A session's stop signal. Checked at every transaction and waited on by the session's one
/// task, so it is cheap where `CancellationToken` is not (that locks a mutex per check and
/// per poll): a check is one atomic load, and waiting registers the task's waker without
/// a lock. It also carries the park lot's request that an idle session park itself.
#[derive(Default)]
pub struct Stop {
    /// Low bits: 0 running, else a [`StopReason`] + 1. [`PARK`](Self::PARK): park requested.
    reason: AtomicU8,
    waker: AtomicWaker,
}

impl Stop {
    const PARK: u8 = 0x80;

    /// Stops for `reason`. `Killed` overrides an earlier reason; the others keep the first.
    pub fn stop(&self, reason: StopReason) {
        let code = reason as u8 + 1;
        let _ = self
            .reason
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
                let kept = old & !Self::PARK;
                (kept == 0 || reason == StopReason::Killed).then_some(code | (old & Self::PARK))
            });
        self.waker.wake();
    }

    #[inline]
    pub fn is_stopped(&self) -> bool {
        self.reason.load(Ordering::SeqCst) & !Self::PARK != 0
    }

    /// Why it stopped (meaningful once it has).
    pub fn reason(&self) -> StopReason {
        match self.reason.load(Ordering::SeqCst) & !Self::PARK {
            3 => StopReason::Killed,
            2 => StopReason::Removed,
            _ => StopReason::Shutdown,
        }
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
        self.wait_until(|s| s.reason.load(Ordering::SeqCst) != 0)
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

    #[inline]
    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Paused,
            2 => ClientState::Waiting,
            3 => ClientState::Active,
            4 => ClientState::Parked,
            _ => ClientState::Idle,
        }
    }

    /// The park lot's sweep: true when the session has been idle for three sweeps in a row
    /// (at least two sweep periods) and should park.
    pub fn idle_for_three_sweeps(&self) -> bool {
        let s = &self.state;
        let step = |from: u8, to: u8| {
            let _ = s.compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed);
        };
        match s.load(Ordering::Relaxed) {
            x if x == ClientState::Idle as u8 => step(x, IDLE_SEEN_ONCE),
            IDLE_SEEN_ONCE => step(IDLE_SEEN_ONCE, IDLE_SEEN_TWICE),
            IDLE_SEEN_TWICE => return true,
            _ => {}
        }
        false
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
    /// Idle clients parked now (kept by the park lot, see `session::park`).
    pub clients_parked: AtomicUsize,
    /// Logins in progress and client places (`max_client_connections`).
    pub admission: Arc<crate::admission::Admission>,
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
            admission: crate::admission::Admission::new(max_clients),
            panic_next_client: AtomicBool::new(false),
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

    /// Installs a new generation (see [`crate::reload`]).
    pub(crate) fn install(&self, generation: Generation) {
        self.current.store(Arc::new(generation));
    }

    /// Forwards a client's CancelRequest, with the server's own key, to the server
    /// connection that client is linked to right now, if any.
    pub async fn forward_cancel(&self, key: CancelKey) {
        crate::cancel::forward(self.clients.get(&key).and_then(|c| c.cancel.get())).await
    }
}
