//! Who may take a place in the proxy: connections still logging in and logged-in clients are
//! counted apart, so a flood of logins that never finish cannot lock honest clients out.
//!
//! - A connection is a *pending login* from its accept until its login ends (logged in,
//!   refused, timed out, or gone). At most `max_pending_logins` are kept: one more drops the
//!   oldest (its login is told `53300` and closed), as PostgreSQL's postmaster is bounded by
//!   its backlog rather than by its clients. `client_login_timeout` ends any login that
//!   takes longer.
//! - A *client* (a place under `max_client_connections`) is taken only once the client has
//!   authenticated: half-finished logins hold none.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The proxy's admission counts (one per proxy, in `Shared`).
pub struct Admission {
    /// `max_client_connections`: a permit per logged-in client (restart to change).
    clients: Arc<Semaphore>,
    /// Pending logins by age (ids increase), each with the signal that drops it.
    pending: Mutex<BTreeMap<u64, Arc<Notify>>>,
    next_id: AtomicU64,
    /// Logins dropped to make room for newer ones, since start.
    evicted: AtomicU64,
}

impl Admission {
    pub fn new(max_clients: usize) -> Arc<Admission> {
        Arc::new(Admission {
            clients: Arc::new(Semaphore::new(max_clients)),
            pending: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    /// A new connection starts its login. With `max_pending` logins already pending, the
    /// oldest is told to stop first.
    pub fn begin_login(self: &Arc<Self>, max_pending: usize) -> PendingLogin {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(Notify::new());
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            while pending.len() >= max_pending.max(1) {
                let Some((_, oldest)) = pending.pop_first() else {
                    break;
                };
                // Stored if its task is not waiting yet: it stops at its next poll.
                oldest.notify_one();
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
            pending.insert(id, dropped.clone());
        }
        PendingLogin {
            admission: self.clone(),
            id,
            dropped,
        }
    }

    /// A client place for a client taken over from another process (`None` when none is
    /// left: it is served anyway, it was already connected).
    pub fn adopt(&self) -> Option<OwnedSemaphorePermit> {
        self.clients.clone().try_acquire_owned().ok()
    }

    /// Logins in progress now.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Logins dropped (oldest first) because `max_pending_logins` were already pending.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// One connection's login in progress; dropping it ends the login's place.
pub struct PendingLogin {
    admission: Arc<Admission>,
    id: u64,
    dropped: Arc<Notify>,
}

impl PendingLogin {
    /// A login with unlimited room (tests that build a session by hand).
    pub fn detached(max_clients: usize) -> PendingLogin {
        Admission::new(max_clients).begin_login(usize::MAX)
    }

    /// Completes when newer logins pushed this one out of `max_pending_logins`.
    pub async fn dropped(&self) {
        self.dropped.notified().await
    }

    /// Whether no client place is left (checked before authentication, so a client that
    /// would be refused is refused before the exchange).
    pub fn clients_full(&self) -> bool {
        self.admission.clients.available_permits() == 0
    }

    /// A client place under `max_client_connections` for an authenticated client, which
    /// from then on is no longer a pending login (newer logins cannot drop it).
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.admission.clients.clone().try_acquire_owned().ok()?;
        self.leave();
        Some(permit)
    }

    /// No longer counted as pending (idempotent).
    fn leave(&self) {
        let mut pending = self
            .admission
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.remove(&self.id);
    }
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_login_is_dropped_when_full() {
        let admission = Admission::new(10);
        let a = admission.begin_login(2);
        let b = admission.begin_login(2);
        assert_eq!(admission.pending(), 2);
        let c = admission.begin_login(2);
        assert_eq!(admission.pending(), 2);
        assert_eq!(admission.evicted(), 1);
        // `a` was told (the signal waits for it), `b` and `c` were not.
        tokio::time::timeout(std::time::Duration::from_secs(1), a.dropped())
            .await
            .expect("the oldest login is dropped");
        let not_b = tokio::time::timeout(std::time::Duration::from_millis(10), b.dropped());
        assert!(not_b.await.is_err());
        drop(a);
        assert_eq!(
            admission.pending(),
            2,
            "dropping an evicted login changes nothing"
        );
        drop(b);
        drop(c);
        assert_eq!(admission.pending(), 0);
    }

    #[test]
    fn client_places_are_taken_after_login() {
        let admission = Admission::new(1);
        let login = admission.begin_login(10);
        assert!(!login.clients_full());
        assert_eq!(admission.pending(), 1);
        let permit = login.admit().expect("one place");
        assert!(login.clients_full());
        assert_eq!(admission.pending(), 0, "admitted: no longer pending");
        assert!(admission.begin_login(10).admit().is_none());
        drop(permit);
        assert!(!login.clients_full());
    }
}
