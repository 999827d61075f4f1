//! `SHOW STATS`: per tenant, what it has done since it was loaded (counters survive reloads
//! that keep the tenant). The same numbers `/metrics` reports.

use super::table::{Table, Type};
use crate::shared::Generation;
use crate::tenant::snapshot::tenant_snapshots;

pub fn run(generation: &Generation) -> Table {
    let mut table = Table::new(&[
        ("tenant", Type::Text),
        ("transactions", Type::Int8),
        ("queries", Type::Int8),
        ("bytes_received", Type::Int8),
        ("bytes_sent", Type::Int8),
        ("checkouts", Type::Int8),
        ("wait_us", Type::Int8),
        ("avg_wait_us", Type::Int8),
        ("sets_injected", Type::Int8),
        ("affinity_hits", Type::Int8),
        ("login_failures", Type::Int8),
    ]);
    for t in tenant_snapshots(&generation.registry) {
        let wait = &t.checkout_wait;
        let avg = wait.sum_micros.checked_div(wait.count).unwrap_or(0);
        let failures: u64 = t.login_failures.iter().map(|(_, n)| n).sum();
        table.push(vec![
            t.name.into(),
            t.transactions.into(),
            t.queries.into(),
            t.bytes_received.into(),
            t.bytes_sent.into(),
            wait.count.into(),
            wait.sum_micros.into(),
            avg.into(),
            t.preludes.into(),
            t.affinity_hits.into(),
            failures.into(),
        ]);
    }
    table
}
