//! Waiting for a connection: a waiter is the sending half of a oneshot channel with a
//! deadline. Deadlines are enforced by one task per pool that runs while anyone waits and
//! sleeps until the earliest deadline, not by a timer per wait: under load nearly every
//! checkout waits, and registering and cancelling a timer each time cost more than the rest
//! of the hand-off.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::{Grant, Pool, Poolable};

pub(super) struct Waiter<C> {
    pub(super) tx: oneshot::Sender<Grant<C>>,
    /// `None`: waits for ever (a timeout too large to add to the clock).
    pub(super) deadline: Option<Instant>,
    /// Hash of the state it wants (see `TenantSlot::hand_to_next`).
    pub(super) want: u64,
    /// How often a connection went to a waiter behind it.
    pub(super) passed: u8,
}

impl<C> Waiter<C> {
    /// The waiting side has gone (its checkout was dropped, or it timed out).
    pub(super) fn given_up(&self) -> bool {
        self.tx.is_closed()
    }

    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }
}

/// Pops the waiters at the front of a queue that have given up. Only the front matters to
/// the hand-off: behind a live waiter a checkout queues anyway (and dozens may wait).
pub(super) fn drop_given_up<C>(waiters: &mut VecDeque<Waiter<C>>) {
    while waiters.front().is_some_and(Waiter::given_up) {
        waiters.pop_front();
    }
}

/// The expiry task of a pool (see the module docs). Dropping an expired waiter's sender ends
/// its wait with an error. Ends when nobody waits with a deadline, or the pool is gone.
pub(super) async fn expire<C: Poolable>(pool: Weak<Pool<C>>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else {
                return;
            };
            let mut inner = pool.lock();
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for slot in &mut inner.tenants {
                slot.waiters.retain(|w| !w.given_up() && !w.expired(now));
                for d in slot.waiters.iter().filter_map(|w| w.deadline) {
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
            }
            inner.expiry_at = next;
            match next {
                Some(at) => at,
                None => {
                    // Under the lock: a wait that starts after this starts a new task.
                    inner.expiring = false;
                    return;
                }
            }
        };
        // Woken early when a wait with an earlier deadline starts (a reload shortened the
        // timeout).
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = wake.notified() => {}
        }
    }
}
