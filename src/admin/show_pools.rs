//! `SHOW POOLS`: one row per (endpoint, tenant): the endpoint's pool (size, open, idle) and
//! the tenant's logical pool inside it (cap, in use, waiting, checkouts).

use super::table::{Table, Type};
use crate::shared::Generation;

pub fn run(generation: &Generation) -> Table {
    let mut table = Table::new(&[
        ("backend", Type::Text),
        ("host", Type::Text),
        ("port", Type::Int8),
        ("database", Type::Text),
        ("user", Type::Text),
        ("pool_size", Type::Int8),
        ("open", Type::Int8),
        ("idle", Type::Int8),
        ("tenant", Type::Text),
        ("tenant_max", Type::Int8),
        ("in_use", Type::Int8),
        ("waiting", Type::Int8),
        ("checkouts", Type::Int8),
        ("affinity_hits", Type::Int8),
    ]);
    let mut tenants = generation.registry.all_tenants();
    tenants.sort_by(|a, b| {
        let key = |t: &crate::tenant::TenantRuntime| {
            let e = &t.endpoint.config;
            (
                e.host.clone(),
                e.port,
                e.database.clone(),
                e.user.clone(),
                t.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    for t in &tenants {
        let e = &t.endpoint.config;
        let pool = &t.endpoint.pool;
        let (open, idle) = pool.counts();
        let stats = pool.tenant_stats(t.pool_id);
        let cap = t
            .config
            .max_server_connections
            .unwrap_or(pool.size())
            .min(pool.size());
        table.push(vec![
            e.backend.as_str().into(),
            e.host.as_str().into(),
            u64::from(e.port).into(),
            e.database.as_str().into(),
            e.user.as_str().into(),
            pool.size().into(),
            open.into(),
            idle.into(),
            (&*t.name).into(),
            cap.into(),
            stats.in_use.into(),
            stats.waiting.into(),
            stats.checkouts.into(),
            stats.affinity_hits.into(),
        ]);
    }
    table
}
