//! `SHOW CLIENTS`: one row per logged-in tenant client (console sessions are not listed).

use super::table::{Table, Type};
use crate::shared::{ClientState, Shared};

pub fn run(shared: &Shared) -> Table {
    let mut table = Table::new(&[
        ("user", Type::Text),
        ("tenant", Type::Text),
        ("addr", Type::Text),
        ("port", Type::Int8),
        ("state", Type::Text),
        ("parked", Type::Bool),
        ("pinned", Type::Text),
        ("application_name", Type::Text),
        ("connected_s", Type::Int8),
        ("server_pid", Type::Int8),
    ]);
    let mut clients: Vec<_> = shared.clients.iter().map(|c| c.value().clone()).collect();
    clients.sort_by(|a, b| (&a.tenant, a.since).cmp(&(&b.tenant, b.since)));
    for c in clients {
        let server_pid = c.cancel.get().map(|(_, key)| i64::from(key.0));
        table.push(vec![
            (&*c.user).into(),
            (&*c.tenant).into(),
            c.peer.map(|p| p.ip().to_string()).into(),
            c.peer.map(|p| u64::from(p.port())).into(),
            c.state().as_str().into(),
            (c.state() == ClientState::Parked).into(),
            crate::protocol::sql::pin::describe(c.pins.load(std::sync::atomic::Ordering::Relaxed))
                .into(),
            (&*c.application_name).into(),
            c.since.elapsed().as_secs().into(),
            server_pid.into(),
        ]);
    }
    table
}
