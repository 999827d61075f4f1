//! Server connection pools, knowing nothing of the protocol.
//!
//! One [`Pool`] per endpoint (host, port, database, server user); `size` caps its
//! connections. Inside it every tenant has a logical pool ([`TenantId`]) with its own cap,
//! FIFO queue of waiters and counters. Checkout prefers an idle connection already carrying
//! the wanted state (affinity), then any idle connection, then a new one under the caps,
//! else waits. A released connection stays with its tenant when that tenant has waiters
//! and holds less than its fair share (pool size / tenants waiting): it then needs no
//! state change. Otherwise it goes to the next tenant, round-robin, among tenants with
//! waiters that are under their cap, so one busy tenant cannot starve a quiet one.
//!
//! Waiting ([`wait`]) is a oneshot channel per waiter; one task per pool ends the waits
//! that reach their deadline.
//!
//! The mutex is a `std` one and is never held across an `.await`.

mod guard;
#[cfg(test)]
mod tests;
mod wait;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use guard::{ConnectPermit, Lease, Pooled};
use wait::{drop_given_up, Waiter};

/// What a pool needs to know about a connection.
pub trait Poolable: Send + 'static {
    /// The session state a connection carries; checkout prefers equal state.
    type State: PartialEq + std::hash::Hash + Send + Sync;
    /// `None` when unknown.
    fn state(&self) -> Option<&Self::State>;
    /// Called before an idle connection is handed out or kept. `false` drops it: e.g. it
    /// received bytes while idle (a FATAL from `pg_terminate_backend`, EOF after a restart).
    /// Should not need the clock: see `expired`.
    fn reusable(&mut self) -> bool;
    /// Whether it is too old to keep at `now`. Asked when it comes back, with the one clock
    /// read that also stamps it idle (idle ones are pruned by their owner's own rules).
    fn expired(&self, _now: Instant) -> bool {
        false
    }
}

/// A tenant's logical pool inside an endpoint pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantId(pub usize);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("timed out waiting for a server connection")]
    Timeout,
}

/// Connections are boxed while pooled: a hand-off (idle list, waiter channel, guard) moves
/// a pointer, not the whole connection.
enum Grant<C> {
    Conn(Box<C>),
    /// Permission to open a new connection (already counted in `open` and `in_use`).
    Slot,
}

struct Idle<C> {
    conn: Box<C>,
    since: Instant,
}

/// Counters for one tenant's logical pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantStats {
    pub in_use: usize,
    pub waiting: usize,
    pub checkouts: u64,
    /// Checkouts that found a connection already carrying the wanted state.
    pub affinity_hits: u64,
}

/// How far down a tenant's queue a released connection looks for a waiter that wants its
/// state, and how often a waiter may be passed over for one.
const WINDOW: usize = 16;
const MAX_PASSES: u8 = 2;

/// Identity of a state, as waiters record what they want.
fn state_hash<S: std::hash::Hash>(state: &S) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    state.hash(&mut h);
    h.finish()
}

/// The state hash of what a grant hands over (a new connection has none).
fn grant_state<C: Poolable>(grant: &Grant<C>) -> Option<u64> {
    match grant {
        Grant::Conn(conn) => conn.state().map(state_hash),
        Grant::Slot => None,
    }
}

struct TenantSlot<C> {
    max: usize,
    in_use: usize,
    waiters: VecDeque<Waiter<C>>,
    checkouts: u64,
    affinity_hits: u64,
}

impl<C> TenantSlot<C> {
    /// Hands `grant` to the tenant's next waiter and counts the checkout (under the pool's
    /// lock, so the count is right before the waiter can use it). Gives it back when no one
    /// waits or that waiter has just given up.
    ///
    /// A connection known to carry some state (`have`, its hash) goes to the first of the
    /// next [`WINDOW`] waiters that wants that state, so a tenant whose clients differ in
    /// their own settings does not trade a SET at every hand-off; the waiters it passes
    /// are passed at most [`MAX_PASSES`] times each, then served in turn.
    fn hand_to_next(&mut self, grant: Grant<C>, have: Option<u64>) -> Result<(), Grant<C>> {
        let front_may_wait = self.waiters.front().is_some_and(|w| w.passed < MAX_PASSES);
        let pick = have.filter(|_| front_may_wait).and_then(|h| {
            self.waiters
                .iter()
                .take(WINDOW)
                .position(|w| w.want == h && !w.given_up())
        });
        let waiter = match pick {
            Some(i) => {
                for w in self.waiters.iter_mut().take(i) {
                    w.passed += 1;
                }
                self.waiters.remove(i)
            }
            None => self.waiters.pop_front(),
        };
        let Some(waiter) = waiter else {
            return Err(grant);
        };
        waiter.tx.send(grant)?;
        self.in_use += 1;
        self.checkouts += 1;
        Ok(())
    }
}

struct Inner<C> {
    idle: Vec<Idle<C>>,
    /// Logical pools given up ([`Pool::remove_tenant`]): reused by a later `add_tenant`
    /// once nothing is checked out through them and nobody waits in them.
    retired: Vec<usize>,
    /// Connections counted against `size`: idle, in use and being opened.
    open: usize,
    tenants: Vec<TenantSlot<C>>,
    /// Tenants that (may) have waiters, in round-robin order.
    ring: VecDeque<usize>,
    /// The expiry task runs (see [`wait`]).
    expiring: bool,
    /// When it wakes next, if it sleeps until a deadline.
    expiry_at: Option<tokio::time::Instant>,
}

pub struct Pool<C: Poolable> {
    size: usize,
    inner: Mutex<Inner<C>>,
    /// Wakes the expiry task early.
    expiry: Arc<tokio::sync::Notify>,
}

impl<C: Poolable> Pool<C> {
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Pool {
            size,
            inner: Mutex::new(Inner {
                idle: Vec::new(),
                retired: Vec::new(),
                open: 0,
                tenants: Vec::new(),
                ring: VecDeque::new(),
                expiring: false,
                expiry_at: None,
            }),
            expiry: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Registers a tenant's logical pool with its own cap (`None` = the pool size). Reuses
    /// the slot of a removed one when that one is quiet (nothing checked out, no waiter):
    /// the pool holds as many slots as tenants were ever in use at once. Connections never
    /// carry a slot, only a state key, so a reused slot matches no connection's state.
    pub fn add_tenant(&self, max: Option<usize>) -> TenantId {
        let mut inner = self.lock();
        let fresh = TenantSlot {
            max: max.unwrap_or(self.size).min(self.size),
            in_use: 0,
            waiters: VecDeque::new(),
            checkouts: 0,
            affinity_hits: 0,
        };
        let inner = &mut *inner;
        let quiet = inner.retired.iter().position(|&i| {
            let slot = &mut inner.tenants[i];
            drop_given_up(&mut slot.waiters);
            slot.in_use == 0 && slot.waiters.is_empty()
        });
        if let Some(at) = quiet {
            let i = inner.retired.swap_remove(at);
            inner.tenants[i] = fresh;
            return TenantId(i);
        }
        inner.tenants.push(fresh);
        TenantId(inner.tenants.len() - 1)
    }

    /// Gives up a logical pool (a tenant made on demand that has been idle): its slot is
    /// reused by a later [`Pool::add_tenant`] once it is quiet.
    pub fn remove_tenant(&self, tenant: TenantId) {
        let mut inner = self.lock();
        if !inner.retired.contains(&tenant.0) {
            inner.retired.push(tenant.0);
        }
    }

    /// Logical pools in use and given up: (slots, of which retired).
    pub fn tenant_slots(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.tenants.len(), inner.retired.len())
    }

    pub fn size(&self) -> usize {
        self.size
    }

    fn lock(&self) -> MutexGuard<'_, Inner<C>> {
        // A panic while holding this lock is a bug elsewhere; the state is still consistent
        // enough to keep serving (all updates are single assignments), so don't cascade.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gets a connection for `tenant`, preferring one in state `want`. Either a ready
    /// connection or a permit to open one. Waits at most `timeout`.
    pub async fn checkout(
        self: &Arc<Self>,
        tenant: TenantId,
        want: &C::State,
        timeout: Duration,
    ) -> Result<Lease<C>, PoolError> {
        let (lease, _) = self.checkout_timed(tenant, want, timeout).await?;
        Ok(lease)
    }

    /// [`Pool::checkout`], also returning how long it waited: zero when it did not wait, and
    /// then without reading the clock (the usual case under light load).
    pub async fn checkout_timed(
        self: &Arc<Self>,
        tenant: TenantId,
        want: &C::State,
        timeout: Duration,
    ) -> Result<(Lease<C>, Duration), PoolError> {
        let (rx, started, expire) = {
            let mut inner = self.lock();
            if let Some(grant) = self.try_take(&mut inner, tenant.0, want) {
                inner.tenants[tenant.0].checkouts += 1;
                return Ok((self.lease(grant, tenant), Duration::ZERO));
            }
            // One clock read for both the deadline and the wait time.
            let started = tokio::time::Instant::now();
            let deadline = started.checked_add(timeout);
            let (tx, rx) = oneshot::channel();
            inner.tenants[tenant.0].waiters.push_back(Waiter {
                tx,
                deadline,
                want: state_hash(want),
                passed: 0,
            });
            if !inner.ring.contains(&tenant.0) {
                inner.ring.push_back(tenant.0);
            }
            // The expiry task: started if none runs, woken if this deadline comes first.
            let expire = match (deadline, inner.expiry_at) {
                (Some(_), None) if !inner.expiring => {
                    inner.expiring = true;
                    true
                }
                (Some(d), Some(at)) if d < at => {
                    self.expiry.notify_one();
                    false
                }
                _ => false,
            };
            (rx, started, expire)
        };
        if expire {
            tokio::spawn(wait::expire(Arc::downgrade(self), self.expiry.clone()));
        }
        // The sender is dropped at the deadline (or with the pool): an error here is the
        // timeout.
        let grant = rx.await.map_err(|_| PoolError::Timeout)?;
        // (the granting side counted the checkout, under the lock it held anyway)
        Ok((self.lease(grant, tenant), started.elapsed()))
    }

    fn lease(self: &Arc<Self>, grant: Grant<C>, tenant: TenantId) -> Lease<C> {
        match grant {
            Grant::Conn(conn) => Lease::Ready(Pooled::new(self.clone(), tenant, conn)),
            Grant::Slot => Lease::Connect(ConnectPermit::new(self.clone(), tenant)),
        }
    }

    /// Without waiting: an idle connection (affinity first) or a slot, if the caps allow.
    fn try_take(&self, inner: &mut Inner<C>, t: usize, want: &C::State) -> Option<Grant<C>> {
        let slot = &mut inner.tenants[t];
        // Waiters that gave up (timed out) only matter at the front: behind a live one this
        // checkout queues anyway. Not a full sweep: dozens may wait at once.
        drop_given_up(&mut slot.waiters);
        if slot.in_use >= slot.max || !slot.waiters.is_empty() {
            return None;
        }
        loop {
            let pick = inner
                .idle
                .iter()
                .rposition(|i| i.conn.state() == Some(want))
                .map(|i| (i, true))
                .or_else(|| inner.idle.len().checked_sub(1).map(|i| (i, false)));
            let Some((i, hit)) = pick else { break };
            let mut idle = inner.idle.swap_remove(i);
            if !idle.conn.reusable() {
                inner.open -= 1;
                continue;
            }
            let slot = &mut inner.tenants[t];
            slot.in_use += 1;
            slot.affinity_hits += u64::from(hit);
            return Some(Grant::Conn(idle.conn));
        }
        if inner.open < self.size {
            inner.open += 1;
            inner.tenants[t].in_use += 1;
            return Some(Grant::Slot);
        }
        None
    }

    /// Returns a connection (from a [`Pooled`] drop).
    fn checkin(&self, tenant: TenantId, mut conn: Box<C>) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tenants[tenant.0].in_use -= 1;
        if conn.expired(now) || !conn.reusable() {
            inner.open -= 1;
            drop(conn);
            self.dispatch_slot(&mut inner);
            return;
        }
        let grant = match self.keep_with(&mut inner, tenant.0, Grant::Conn(conn)) {
            Some(grant) => grant,
            None => return,
        };
        if let Some(conn) = self.dispatch(&mut inner, grant) {
            match conn {
                Grant::Conn(conn) => inner.idle.push(Idle { conn, since: now }),
                Grant::Slot => unreachable!("dispatch returns what it was given"),
            }
        }
    }

    /// Gives up a slot (a connection closed, or a permit unused).
    fn release_slot(&self, tenant: TenantId) {
        let mut inner = self.lock();
        inner.tenants[tenant.0].in_use -= 1;
        inner.open -= 1;
        self.dispatch_slot(&mut inner);
    }

    fn dispatch_slot(&self, inner: &mut Inner<C>) {
        if inner.open < self.size {
            inner.open += 1;
            if self.dispatch(inner, Grant::Slot).is_some() {
                inner.open -= 1;
            }
        }
    }

    /// Hands a connection tenant `t` just released to `t`'s next waiter, if `t` holds less
    /// than its fair share of the pool (the size divided among the tenants waiting) and is
    /// under its cap: the connection already carries `t`'s state, so in a steady load
    /// tenants keep their connections instead of trading them (and a SET) at every
    /// checkout. Returns the grant when it stays unused.
    fn keep_with(&self, inner: &mut Inner<C>, t: usize, grant: Grant<C>) -> Option<Grant<C>> {
        let share = self.size / inner.ring.len().max(1);
        let slot = &mut inner.tenants[t];
        drop_given_up(&mut slot.waiters);
        if slot.in_use >= share || slot.in_use >= slot.max {
            return Some(grant);
        }
        let have = grant_state(&grant);
        inner.tenants[t].hand_to_next(grant, have).err()
    }

    /// Hands `grant` to the next eligible waiter, round-robin across tenants and FIFO within
    /// one. Returns it when nobody can take it.
    fn dispatch(&self, inner: &mut Inner<C>, mut grant: Grant<C>) -> Option<Grant<C>> {
        let mut skipped = 0;
        while skipped < inner.ring.len() {
            let Some(t) = inner.ring.pop_front() else {
                break;
            };
            let slot = &mut inner.tenants[t];
            drop_given_up(&mut slot.waiters);
            if slot.waiters.is_empty() {
                continue;
            }
            if slot.in_use >= slot.max {
                inner.ring.push_back(t);
                skipped += 1;
                continue;
            }
            let have = grant_state(&grant);
            match slot.hand_to_next(grant, have) {
                Ok(()) => {
                    if !slot.waiters.is_empty() {
                        inner.ring.push_back(t);
                    }
                    return None;
                }
                Err(back) => {
                    // The waiter gave up in between; try the same tenant's next one.
                    grant = back;
                    inner.ring.push_front(t);
                }
            }
        }
        Some(grant)
    }

    /// Drops idle connections for which `keep` says no (timeouts, lifetime); returns how many.
    pub fn prune_idle(&self, mut keep: impl FnMut(&mut C, Duration) -> bool) -> usize {
        let mut inner = self.lock();
        let now = Instant::now();
        let before = inner.idle.len();
        let mut dropped = Vec::new();
        let idle = std::mem::take(&mut inner.idle);
        for mut i in idle {
            if keep(&mut *i.conn, now - i.since) && i.conn.reusable() {
                inner.idle.push(i);
            } else {
                dropped.push(i);
            }
        }
        let n = before - inner.idle.len();
        inner.open -= n;
        for _ in 0..n {
            self.dispatch_slot(&mut inner);
        }
        drop(inner);
        drop(dropped);
        n
    }

    /// Adds a freshly opened connection as idle (to keep `min_pool_size` warm), if the pool
    /// has room; otherwise hands it back.
    pub fn add_idle(&self, conn: C) -> Result<(), C> {
        let mut inner = self.lock();
        if inner.open >= self.size {
            return Err(conn);
        }
        inner.open += 1;
        if let Some(Grant::Conn(conn)) = self.dispatch(&mut inner, Grant::Conn(Box::new(conn))) {
            inner.idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        Ok(())
    }

    /// Calls `f` for every idle connection with how long it has been idle. Runs under the
    /// pool's lock: `f` must be quick (it is for `SHOW SERVERS` and metrics).
    pub fn for_each_idle(&self, mut f: impl FnMut(&C, Duration)) {
        let inner = self.lock();
        let now = Instant::now();
        for i in &inner.idle {
            f(&i.conn, now - i.since);
        }
    }

    /// Counts: (open, idle).
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.open, inner.idle.len())
    }

    pub fn tenant_stats(&self, tenant: TenantId) -> TenantStats {
        let inner = self.lock();
        let s = &inner.tenants[tenant.0];
        TenantStats {
            in_use: s.in_use,
            waiting: s.waiters.iter().filter(|w| !w.given_up()).count(),
            checkouts: s.checkouts,
            affinity_hits: s.affinity_hits,
        }
    }
}
