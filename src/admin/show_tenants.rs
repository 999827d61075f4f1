//! `SHOW TENANTS`: one row per tenant: where it goes, its clients, its server connections,
//! whether it is paused.

use super::table::{Table, Type};
use crate::shared::Generation;
use crate::tenant::snapshot::tenant_snapshots;

pub fn run(generation: &Generation) -> Table {
    let mut table = Table::new(&[
        ("tenant", Type::Text),
        ("backend", Type::Text),
        ("database", Type::Text),
        ("search_path", Type::Text),
        ("clients", Type::Int8),
        ("active", Type::Int8),
        ("waiting", Type::Int8),
        ("server_in_use", Type::Int8),
        ("server_idle", Type::Int8),
        ("paused", Type::Bool),
    ]);
    for t in tenant_snapshots(&generation.registry) {
        table.push(vec![
            t.name.into(),
            t.backend.into(),
            t.database.into(),
            t.search_path.into(),
            t.clients.into(),
            // `linked` counts waiting checkouts too; "active" is linked or opening.
            t.linked.saturating_sub(t.waiting).into(),
            (t.waiting + t.paused_waiting).into(),
            t.server_in_use.into(),
            t.server_idle.into(),
            t.paused.into(),
        ]);
    }
    table
}
