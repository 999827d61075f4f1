//! `SHOW SERVERS`: one row per server connection: linked ones (from the clients using
//! them) and idle ones (from the pools), with the tenant whose state they hold.

use std::collections::HashMap;

use super::table::{Cell, Table, Type};
use crate::config::EndpointConfig;
use crate::shared::{Generation, Shared};

pub fn run(shared: &Shared, generation: &Generation) -> Table {
    let mut table = Table::new(&[
        ("backend", Type::Text),
        ("host", Type::Text),
        ("port", Type::Int8),
        ("database", Type::Text),
        ("user", Type::Text),
        ("pid", Type::Int8),
        ("state", Type::Text),
        ("tenant", Type::Text),
        ("age_s", Type::Int8),
        ("idle_s", Type::Int8),
    ]);
    let row = |e: &EndpointConfig, pid: i32, state: &str, tenant: Cell, age: Cell, idle: Cell| {
        vec![
            e.backend.as_str().into(),
            e.host.as_str().into(),
            u64::from(e.port).into(),
            e.database.as_str().into(),
            e.user.as_str().into(),
            i64::from(pid).into(),
            state.into(),
            tenant,
            age,
            idle,
        ]
    };
    let mut linked: Vec<_> = shared
        .clients
        .iter()
        .filter_map(|c| c.cancel.get().map(|(e, key)| (e, key.0, c.tenant.clone())))
        .collect();
    linked.sort_by_key(|(_, pid, _)| *pid);
    for (e, pid, tenant) in linked {
        table.push(row(
            &e,
            pid,
            "active",
            (&*tenant).into(),
            Cell::Null,
            Cell::Null,
        ));
    }
    let by_state: HashMap<u64, &str> = generation
        .registry
        .tenants
        .values()
        .map(|t| (t.state_id, &*t.name))
        .collect();
    for endpoint in &generation.registry.all_endpoints() {
        endpoint.pool.for_each_idle(|conn, idle_for| {
            let tenant = conn
                .state()
                .key()
                .and_then(|s| by_state.get(&s.tenant).copied());
            table.push(row(
                &endpoint.config,
                conn.backend_key().0,
                "idle",
                tenant.into(),
                conn.age().as_secs().into(),
                idle_for.as_secs().into(),
            ));
        });
    }
    table
}
