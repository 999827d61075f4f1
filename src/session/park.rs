//! Parking idle clients. A logged-in client that has sent nothing for
//! `park_idle_clients_after` gives up its task and its registration with tokio's reactor:
//! its session state ([`Parked`]: the socket, the client context, the client-cap permit)
//! and its socket wait in the [`ParkLot`], the socket in one epoll set shared by every
//! parked client. When the client sends something or closes, or its session is
//! stopped (shutdown, `KILL`, its tenant removed), the lot spawns a new session task from
//! that state, which carries on exactly where the old one stopped waiting.
//!
//! Why: a task (its future in a 128-byte-aligned cell) and a reactor registration (a
//! 128-byte-aligned `ScheduledIo`) are most of what an idle client costs; thousands of
//! clients of an app's connection pools sit idle at any time. A client busy enough to
//! matter never parks: the lot's sweep only parks a client found idle three sweeps in a row.
//!
//! Parking happens between transactions only, with nothing buffered from the client and
//! no server connection held, so there is nothing in flight to lose.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::task::TaskTracker;

use super::client::ClientCtx;
use super::handoff::Moving;
use crate::cancel::CancelKey;
use crate::shared::{ClientEntry, ClientState, Shared};

/// A parked session: everything needed to carry on.
pub struct Parked {
    pub socket: std::net::TcpStream,
    pub ctx: Box<ClientCtx>,
    pub permit: Option<OwnedSemaphorePermit>,
}

/// How often the lot looks at idle clients when parking is off (to notice a reload that
/// turns it on).
const SWEEP_WHEN_OFF: Duration = Duration::from_secs(1);
/// Events taken from the epoll set per call.
const EVENTS: usize = 64;

/// The epoll set of parked sockets and the task that watches it.
pub struct ParkLot {
    epoll: AsyncFd<OwnedFd>,
    /// Set at shutdown: nothing parks any more.
    closed: AtomicBool,
    /// The sessions parked now, by client key, with their console entries.
    sessions: Mutex<HashMap<CancelKey, (Arc<ClientEntry>, Parked)>>,
    shared: Arc<Shared>,
    /// Woken when a parked session's stop signal fires.
    stops: Arc<StopNotify>,
    stop_waker: Waker,
    /// Resumed sessions are tracked like every other session (graceful shutdown).
    tracker: TaskTracker,
    /// Set when the process hands its clients over (`crate::takeover`): where a session
    /// that parks goes instead.
    handoff: Mutex<Option<Sender<Moving>>>,
}

struct StopNotify(Notify);

impl Wake for StopNotify {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

/// The epoll `data` of a parked client: its cancel key, which is its key in
/// [`Shared::clients`].
fn token(key: (i32, i32)) -> u64 {
    (u64::from(key.0 as u32) << 32) | u64::from(key.1 as u32)
}

fn key_of(token: u64) -> (i32, i32) {
    ((token >> 32) as u32 as i32, token as u32 as i32)
}

fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl ParkLot {
    /// A new, empty lot (inside the runtime: it registers its epoll set with the reactor).
    pub fn new(tracker: TaskTracker, shared: Arc<Shared>) -> std::io::Result<Arc<ParkLot>> {
        // SAFETY: epoll_create1 returns a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let stops = Arc::new(StopNotify(Notify::new()));
        // SAFETY: the lot owns `fd` (an OwnedFd) for as long as it is registered.
        let epoll = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Arc::new(ParkLot {
            epoll,
            closed: AtomicBool::new(false),
            sessions: Mutex::new(HashMap::new()),
            shared,
            stop_waker: Waker::from(stops.clone()),
            stops,
            tracker,
            handoff: Mutex::new(None),
        }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> std::io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open; `event` outlives the call.
        cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) }).map(|_| ())
    }

    /// Parks a session. `Err` gives it back when the lot is closed (shutdown) or the
    /// socket cannot be watched: the caller resumes it at once.
    pub fn park(&self, entry: &Arc<ClientEntry>, parked: Parked) -> Result<(), Parked> {
        // The flag first: no lock while nothing is handed over (the sink is set before it).
        let sink = if self.shared.handing_off.load(Ordering::SeqCst) {
            self.handoff
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        } else {
            None
        };
        let parked = match sink {
            Some(sink) => match self.hand_over(&sink, entry, parked) {
                Ok(()) => return Ok(()),
                Err(parked) => parked,
            },
            None => parked,
        };
        let fd = parked.socket.as_raw_fd();
        let key = parked.ctx.key;
        {
            let mut sessions = self.lock();
            // Under the lot's lock: the closing sweep takes it after setting `closed`, so a
            // session either sees `closed` or is seen by it.
            if self.closed.load(Ordering::SeqCst) {
                return Err(parked);
            }
            entry.set_state(ClientState::Parked);
            sessions.insert(key, (entry.clone(), parked));
            self.shared.clients_parked.fetch_add(1, Ordering::Relaxed);
        }
        entry.stop.register(&self.stop_waker);
        if self.ctl(libc::EPOLL_CTL_ADD, fd, token(key)).is_err() {
            // Unless a stop already had the lot resume it, the caller carries on with it.
            return self.take(key).map_or(Ok(()), |(_, parked)| Err(parked));
        }
        // A stop that came before the lot's waker was registered would be lost.
        if entry.stop.is_stopped() {
            self.stops.0.notify_one();
        }
        Ok(())
    }

    /// Sends a session to the new process; `Err` gives back one that cannot move.
    fn hand_over(
        &self,
        sink: &Sender<Moving>,
        entry: &ClientEntry,
        parked: Parked,
    ) -> Result<(), Parked> {
        let Some(state) = super::handoff::encode(&parked.ctx, entry) else {
            return Err(parked);
        };
        let Parked {
            socket,
            ctx,
            permit,
        } = parked;
        let moving = Moving {
            state,
            socket: socket.into(),
        };
        if let Err(back) = sink.send(moving) {
            return Err(Parked {
                socket: back.0.socket.into(),
                ctx,
                permit,
            });
        }
        // Gone from this process: as if it had left (its permit is dropped here).
        let mut ctx = ctx;
        super::unregister(&mut ctx, &self.shared);
        Ok(())
    }

    /// Takeover: from now on sessions that park go to `sink`, and so do the ones parked
    /// now (those that cannot move stay parked here).
    pub fn start_handoff(self: &Arc<Self>, sink: Sender<Moving>) {
        *self.handoff.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        // What `park` looks at before the sink (also set by `Shared::hand_off_sessions`).
        self.shared.handing_off.store(true, Ordering::SeqCst);
        let keys: Vec<CancelKey> = self.lock().keys().copied().collect();
        for key in keys {
            if let Some((entry, parked)) = self.take(key) {
                if let Err(parked) = self.park(&entry, parked) {
                    self.spawn_resumed(parked, entry);
                }
            }
        }
    }

    /// No more sessions go to the new process (once the last sender is dropped, it is
    /// told so).
    pub fn end_handoff(&self) {
        self.handoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CancelKey, (Arc<ClientEntry>, Parked)>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a parked session back out of the lot (and its socket out of the epoll set).
    fn take(&self, key: CancelKey) -> Option<(Arc<ClientEntry>, Parked)> {
        let (entry, parked) = self.lock().remove(&key)?;
        self.shared.clients_parked.fetch_sub(1, Ordering::Relaxed);
        let _ = self.ctl(libc::EPOLL_CTL_DEL, parked.socket.as_raw_fd(), 0);
        entry.set_state(ClientState::Idle);
        Some((entry, parked))
    }

    /// Resumes the session of `key`, if it is parked.
    fn resume(self: &Arc<Self>, key: CancelKey) {
        if let Some((entry, parked)) = self.take(key) {
            self.spawn_resumed(parked, entry);
        }
    }

    /// Spawns a session given back by [`ParkLot::park`].
    pub fn spawn_resumed(self: &Arc<Self>, parked: Parked, entry: Arc<ClientEntry>) {
        let lot = self.clone();
        self.tracker
            .spawn(super::resume(parked, entry, self.shared.clone(), lot));
    }

    /// The lot's task: resumes sessions whose sockets turn readable or whose stop signal
    /// fires, and sweeps for idle ones. Ends at shutdown, once every parked session has
    /// been resumed (so each is told, as an unparked one would be).
    pub async fn run(self: Arc<Self>) {
        let shared = self.shared.clone();
        loop {
            let period = shared
                .current()
                .config
                .proxy
                .park_idle_clients_after
                .map_or(SWEEP_WHEN_OFF, |d| d / 2);
            tokio::select! {
                ready = self.epoll.readable() => match ready {
                    Ok(mut guard) => {
                        if self.resume_ready() {
                            guard.clear_ready();
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "park lot: epoll failed; parking stops");
                        self.close();
                        return;
                    }
                },
                _ = self.stops.0.notified() => {
                    self.resume_where(|e| e.stop.is_stopped());
                }
                _ = tokio::time::sleep(period) => self.sweep(&shared),
                _ = shared.shutdown.cancelled() => {
                    self.close();
                    return;
                }
            }
        }
    }

    /// Resumes the sessions whose sockets have something (data, EOF, an error). True
    /// when the epoll set had no more events.
    fn resume_ready(self: &Arc<Self>) -> bool {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        // SAFETY: `events` has room for EVENTS entries; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as libc::c_int,
                0,
            )
        };
        let Ok(n) = cvt(n) else {
            return false;
        };
        for event in &events[..n as usize] {
            self.resume(key_of(event.u64));
        }
        (n as usize) < EVENTS
    }

    /// Resumes the parked sessions for which `pick` says so (`take` re-checks that each
    /// is still parked).
    fn resume_where(self: &Arc<Self>, pick: impl Fn(&ClientEntry) -> bool) {
        let picked: Vec<CancelKey> = self
            .lock()
            .iter()
            .filter(|(_, (entry, _))| pick(entry))
            .map(|(key, _)| *key)
            .collect();
        for key in picked {
            self.resume(key);
        }
    }

    /// Asks every session idle for three sweeps in a row to park.
    fn sweep(&self, shared: &Shared) {
        if shared
            .current()
            .config
            .proxy
            .park_idle_clients_after
            .is_none()
        {
            return;
        }
        let mut asked = 0;
        for entry in shared.clients.iter() {
            if entry.idle_for_three_sweeps() {
                entry.stop.request_park();
                asked += 1;
            }
        }
        if asked > 0 {
            tracing::debug!(asked, "park lot: asked idle sessions to park");
        }
    }

    /// Shutdown: nothing parks from now on, and every parked session is resumed (it sees
    /// its stop signal and ends as an unparked one would). The sessions are listed under
    /// the lot's lock: see [`ParkLot::park`].
    fn close(self: &Arc<Self>) {
        self.closed.store(true, Ordering::SeqCst);
        self.resume_where(|_| true);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_round_trip_every_key() {
        for key in [(0, 0), (1, -1), (i32::MIN, i32::MAX), (-5, 7)] {
            assert_eq!(super::key_of(super::token(key)), key);
        }
    }
}
