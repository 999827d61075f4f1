//! A point-in-time copy of every tenant's numbers, read once and used by both the console
//! (`SHOW TENANTS`, `SHOW STATS`) and `/metrics`, so the two always agree.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::registry::Registry;
use super::stats::{HistogramSnapshot, LoginFailure};

/// One tenant's numbers.
#[derive(Debug, Clone)]
pub struct TenantSnapshot {
    pub name: String,
    /// Where the tenant comes from (`config`, `template`, `directory`).
    pub origin: &'static str,
    pub backend: String,
    pub database: String,
    /// The configured `search_path`, comma-separated.
    pub search_path: String,
    pub paused: bool,
    pub clients: u64,
    /// Clients checking out or linked to a server connection.
    pub linked: u64,
    /// Clients waiting for a server connection (in the pool's queue).
    pub waiting: u64,
    /// Clients holding a transaction back because the tenant is paused.
    pub paused_waiting: u64,
    /// Server connections checked out by (or being opened for) this tenant.
    pub server_in_use: u64,
    /// Idle server connections known to hold this tenant's state.
    pub server_idle: u64,
    pub transactions: u64,
    pub queries: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub preludes: u64,
    pub checkouts: u64,
    pub affinity_hits: u64,
    pub checkout_wait: HistogramSnapshot,
    /// Non-zero login failure counts.
    pub login_failures: Vec<(LoginFailure, u64)>,
}

/// Snapshots of every tenant in `registry`, sorted by name.
pub fn tenant_snapshots(registry: &Registry) -> Vec<TenantSnapshot> {
    let idle_by_state = idle_by_state(registry);
    let mut all: Vec<TenantSnapshot> = registry
        .all_tenants()
        .iter()
        .map(|t| {
            let s = &t.stats;
            let pool = t.endpoint.pool.tenant_stats(t.pool_id);
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            let load_usize = |c: &std::sync::atomic::AtomicUsize| c.load(Ordering::Relaxed) as u64;
            TenantSnapshot {
                name: t.name.to_string(),
                origin: t.origin.as_str(),
                backend: t.config.backend.clone(),
                database: t.endpoint.config.database.clone(),
                search_path: t.config.search_path.join(","),
                paused: t.control.is_paused(),
                clients: load_usize(&s.clients),
                linked: load_usize(&s.linked),
                waiting: pool.waiting as u64,
                paused_waiting: load_usize(&s.paused_waiting),
                server_in_use: pool.in_use as u64,
                server_idle: idle_by_state.get(&t.state_id).copied().unwrap_or(0),
                transactions: load(&s.transactions),
                queries: load(&s.queries),
                bytes_received: load(&s.bytes_received),
                bytes_sent: load(&s.bytes_sent),
                preludes: load(&s.preludes),
                checkouts: pool.checkouts,
                affinity_hits: pool.affinity_hits,
                checkout_wait: s.checkout_wait.snapshot(),
                login_failures: LoginFailure::ALL
                    .iter()
                    .map(|&r| (r, s.login_failures.get(r)))
                    .filter(|(_, n)| *n > 0)
                    .collect(),
            }
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// Idle connections per tenant state id, over all endpoints.
fn idle_by_state(registry: &Registry) -> HashMap<u64, u64> {
    let mut counts = HashMap::new();
    for endpoint in &registry.all_endpoints() {
        endpoint.pool.for_each_idle(|conn, _| {
            if let Some(state) = conn.state().key() {
                *counts.entry(state.tenant).or_insert(0) += 1;
            }
        });
    }
    counts
}

impl TenantSnapshot {
    /// Adds `other`'s numbers to these (for a summed series).
    pub fn add(&mut self, other: &TenantSnapshot) {
        self.clients += other.clients;
        self.linked += other.linked;
        self.waiting += other.waiting;
        self.paused_waiting += other.paused_waiting;
        self.server_in_use += other.server_in_use;
        self.server_idle += other.server_idle;
        self.transactions += other.transactions;
        self.queries += other.queries;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.preludes += other.preludes;
        self.checkouts += other.checkouts;
        self.affinity_hits += other.affinity_hits;
        let wait = &mut self.checkout_wait;
        if wait.cumulative.len() < other.checkout_wait.cumulative.len() {
            wait.cumulative
                .resize(other.checkout_wait.cumulative.len(), 0);
        }
        for (sum, n) in wait
            .cumulative
            .iter_mut()
            .zip(&other.checkout_wait.cumulative)
        {
            *sum += n;
        }
        wait.sum_micros += other.checkout_wait.sum_micros;
        wait.count += other.checkout_wait.count;
        for (reason, n) in &other.login_failures {
            match self.login_failures.iter_mut().find(|(r, _)| r == reason) {
                Some((_, total)) => *total += n,
                None => self.login_failures.push((*reason, *n)),
            }
        }
    }
}
