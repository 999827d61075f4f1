//! `SHOW HELP`: the commands the console knows.

use super::table::{Table, Type};

const COMMANDS: [(&str, &str); 12] = [
    (
        "SHOW TENANTS",
        "tenants: backend, search_path, clients, waiting, server connections, paused",
    ),
    (
        "SHOW POOLS",
        "per endpoint and tenant: pool size, open, idle, in use, waiting",
    ),
    ("SHOW CLIENTS", "logged-in clients and what they are doing"),
    (
        "SHOW SERVERS",
        "server connections: active (linked) and idle",
    ),
    (
        "SHOW STATS",
        "per tenant: transactions, queries, bytes, wait time, SETs injected",
    ),
    (
        "SHOW CONFIG",
        "the [proxy] settings in force and the config generation",
    ),
    ("SHOW VERSION", "the pgtenant version"),
    (
        "PAUSE [tenant]",
        "hold new transactions of one tenant (or all); waits for linked ones",
    ),
    ("RESUME [tenant]", "let a paused tenant (or all) run again"),
    (
        "RELOAD",
        "read the config file again (a bad file keeps the current config)",
    ),
    ("KILL tenant", "disconnect every client of a tenant now"),
    ("SHOW HELP", "this list"),
];

pub fn run() -> Table {
    let mut table = Table::new(&[("command", Type::Text), ("does", Type::Text)]);
    for (command, does) in COMMANDS {
        table.push(vec![command.into(), does.into()]);
    }
    table
}
