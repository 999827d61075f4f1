//! Per-tenant live numbers and controls, shared by every generation of the registry that
//! knows the tenant (a reload that keeps a tenant keeps its counters, its pause and its
//! removal signal).
//!
//! Everything on the hot path is a relaxed atomic: no locks, no allocation. The one
//! exception is [`TenantStats::linked`], which pairs with [`TenantControl::pause`] (see
//! there).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::backend::TxStatus;
use crate::protocol::frontend::Frontend;

/// Upper bounds (inclusive) of the checkout-wait histogram buckets, in microseconds; a last
/// bucket (`+Inf`) catches the rest.
pub const WAIT_BUCKETS_MICROS: [u64; 8] = [
    1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000,
];

/// A histogram of durations with fixed buckets ([`WAIT_BUCKETS_MICROS`]).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: [AtomicU64; WAIT_BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A consistent-enough copy of a [`Histogram`] (each field read once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Cumulative counts, one per bound of [`WAIT_BUCKETS_MICROS`], then `+Inf`.
    pub cumulative: Vec<u64>,
    pub sum_micros: u64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = WAIT_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(WAIT_BUCKETS_MICROS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
            // The bucket total, so that `+Inf` and `_count` always agree in one scrape.
            count: total,
        }
    }
}

/// Why a login failed: the `reason` label of `pgtenant_login_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// Wrong password or unknown user (28P01).
    Password,
    /// The named tenant does not exist (3D000).
    UnknownTenant,
    /// No tenant named and no `default_tenant` (28000).
    NoTenant,
    /// The user may not act as that tenant (28000).
    TenantForbidden,
    /// `max_client_connections` of the proxy or the tenant (53300).
    TooManyClients,
    /// The tenant's backend could not be reached (08006).
    Backend,
    /// Malformed startup or authentication messages (08P01).
    Protocol,
    /// Login took longer than the login timeout.
    Timeout,
    /// Database `pgtenant` asked for by a user not in `admin_users` (42501).
    AdminForbidden,
}

impl LoginFailure {
    pub const ALL: [LoginFailure; 9] = [
        LoginFailure::Password,
        LoginFailure::UnknownTenant,
        LoginFailure::NoTenant,
        LoginFailure::TenantForbidden,
        LoginFailure::TooManyClients,
        LoginFailure::Backend,
        LoginFailure::Protocol,
        LoginFailure::Timeout,
        LoginFailure::AdminForbidden,
    ];

    /// The label value (also the `result` field of the login log line).
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::Password => "password",
            LoginFailure::UnknownTenant => "unknown_tenant",
            LoginFailure::NoTenant => "no_tenant",
            LoginFailure::TenantForbidden => "tenant_forbidden",
            LoginFailure::TooManyClients => "too_many_clients",
            LoginFailure::Backend => "backend",
            LoginFailure::Protocol => "protocol",
            LoginFailure::Timeout => "timeout",
            LoginFailure::AdminForbidden => "admin_forbidden",
        }
    }
}

/// Login failures counted by reason.
#[derive(Debug, Default)]
pub struct LoginFailures([AtomicU64; LoginFailure::ALL.len()]);

impl LoginFailures {
    pub fn record(&self, reason: LoginFailure) {
        self.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: LoginFailure) -> u64 {
        self.0[reason as usize].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// What one tenant has done since it was first loaded.
#[derive(Debug, Default)]
pub struct TenantStats {
    /// Connected clients (also enforces the tenant's `max_client_connections`).
    pub clients: AtomicUsize,
    /// Clients that passed the pause gate and have not finished their link: checking out,
    /// or linked to a server connection. Updated with `SeqCst` (see [`TenantControl`]).
    pub linked: AtomicUsize,
    /// Clients holding a new transaction back because the tenant is paused.
    pub paused_waiting: AtomicUsize,
    /// Transactions finished: ReadyForQuery `I` relayed to a client.
    pub transactions: AtomicU64,
    /// Simple Query and extended Execute messages from clients.
    pub queries: AtomicU64,
    /// Bytes read from this tenant's clients after login.
    pub bytes_received: AtomicU64,
    /// Bytes written to this tenant's clients after login.
    pub bytes_sent: AtomicU64,
    /// Checkouts that had to send a state prelude (`SET search_path ...`).
    pub preludes: AtomicU64,
    /// From wanting a server connection to holding one (pool wait and connect; not pause).
    pub checkout_wait: Histogram,
    pub login_failures: LoginFailures,
    /// Clients pinned to their server connection, in all and by reason
    /// ([`crate::protocol::sql::pin`] order).
    pub pinned: AtomicUsize,
    pub pinned_by: [AtomicUsize; 5],
}

impl TenantStats {
    /// A client's pins went from `old` to `new` (bits of [`crate::protocol::sql::pin`]).
    pub fn repin(&self, old: u8, new: u8) {
        if (old == 0) != (new == 0) {
            if new == 0 {
                self.pinned.fetch_sub(1, Ordering::Relaxed);
            } else {
                self.pinned.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (i, bit) in crate::protocol::sql::pin::ALL.iter().enumerate() {
            match (old & bit != 0, new & bit != 0) {
                (false, true) => self.pinned_by[i].fetch_add(1, Ordering::Relaxed),
                (true, false) => self.pinned_by[i].fetch_sub(1, Ordering::Relaxed),
                _ => 0,
            };
        }
    }

    /// Counts a client message (called for every whole message sent while linked).
    #[inline]
    pub fn on_client_message(&self, msg: &Frontend<'_>) {
        if matches!(msg, Frontend::Query { .. } | Frontend::Execute) {
            self.queries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a ReadyForQuery relayed to a client: idle means a transaction ended.
    #[inline]
    pub fn on_ready_for_query(&self, status: TxStatus) {
        if status == TxStatus::Idle {
            self.transactions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn add_received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Operator controls of one tenant: pause and removal.
///
/// Pausing pairs two `SeqCst` operations so that [`TenantControl::pause`] cannot miss a
/// session that is about to check out: a session first increments
/// [`TenantStats::linked`], then reads the paused flag; `pause` first sets the flag, then
/// reads `linked`. Either the session sees the pause, or `pause` sees the session.
#[derive(Debug, Default)]
pub struct TenantControl {
    paused: AtomicBool,
    resumed: Notify,
    /// Cancelled when a reload removes the tenant: its clients are closed at their next
    /// idle point (after the transaction they are in). Set only by [`TenantControl::remove`].
    removed: CancellationToken,
    /// The same, as a flag: checked at every transaction (a token check locks a mutex).
    removed_flag: AtomicBool,
}

impl TenantControl {
    /// A reload removed the tenant.
    pub fn remove(&self) {
        self.removed_flag.store(true, Ordering::SeqCst);
        self.removed.cancel();
    }

    #[inline]
    pub fn is_removed(&self) -> bool {
        self.removed_flag.load(Ordering::SeqCst)
    }

    /// Resolves once the tenant is removed.
    pub async fn wait_removed(&self) {
        self.removed.cancelled().await
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }

    #[inline]
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Returns once the tenant is not paused.
    pub async fn wait_resumed(&self) {
        loop {
            let notified = self.resumed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a resume in between is not lost.
            notified.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![1, 2, 2, 2, 2, 2, 2, 2, 3]);
        assert_eq!(s.count, 3);
        assert_eq!(s.sum_micros, 10 + 3_000 + 60_000_000);
    }

    #[test]
    fn counts_queries_and_transactions() {
        let s = TenantStats::default();
        s.on_client_message(&Frontend::Query { sql: b"select 1" });
        s.on_client_message(&Frontend::Execute);
        s.on_client_message(&Frontend::Sync);
        s.on_ready_for_query(TxStatus::InTransaction);
        s.on_ready_for_query(TxStatus::Idle);
        assert_eq!(s.queries.load(Ordering::Relaxed), 2);
        assert_eq!(s.transactions.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn resume_wakes_waiters() {
        let c = std::sync::Arc::new(TenantControl::default());
        c.pause();
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.wait_resumed().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        c.resume();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("resumed")
            .unwrap();
    }
}
