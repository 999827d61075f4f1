//! Reliability: the promises a pooler must keep when things go wrong (issue 5; README "Known limits", docs/OPERATIONS.md).
//! - [`restart`]: the server stops (immediately) and starts again under load; commits the
//!   client saw acknowledged are all there afterwards.
//! - [`load`]: a client that stops reading a 400 MB result; `max_client_connections`
//!   (proxy and tenant); a noisy tenant next to a quiet one.
//! - [`timeouts`]: `idle_transaction_timeout`, `server_idle_timeout`, `server_lifetime`.
//! - [`vanish`]: clients that disappear mid-startup, mid-SCRAM, mid-pipeline, mid-COPY.
//!
//! Tests that stop PostgreSQL start their own ([`crate::support::own_pg`]). Tests on the
//! shared one that look at `pg_stat_activity` give their tenant a server login of its own
//! ([`own_login`]), so what they count is theirs alone.

mod load;
mod restart;
mod timeouts;
mod vanish;

use std::time::Duration;

pub(crate) use crate::support::eventually;
use crate::support::{connect, describe, pg, pg_conn_str};

/// Password of the server logins made by [`own_login`].
pub(crate) const OWN_LOGIN_PASSWORD: &str = "rel_pw";

/// Creates server role `name` with a schema of its own (holding a `whoami` table saying
/// `name`) in database `app` of the shared PostgreSQL, and returns the TOML of a tenant
/// `name` that logs in as it. Each test uses its own name (the cluster lives for one run).
pub(crate) fn own_login(name: &str) -> String {
    own_login_on(pg(), name)
}

/// [`own_login`] on the PostgreSQL `server` (e.g. a test's own second server).
pub(crate) fn own_login_on(server: &pgtenant::localpg::LocalPostgres, name: &str) -> String {
    server
        .psql_db(
            "app",
            &format!(
                "CREATE ROLE {name} LOGIN PASSWORD '{OWN_LOGIN_PASSWORD}';\n\
             CREATE SCHEMA {name} AUTHORIZATION {name};\n\
             SET ROLE {name};\n\
             CREATE TABLE {name}.whoami (tenant text, n int);\n\
             INSERT INTO {name}.whoami VALUES ('{name}', 0);\n\
             RESET ROLE;\n"
            ),
        )
        .unwrap_or_else(|e| panic!("creating role {name}: {e}"));
    format!(
        "[tenants.{name}]\nbackend = \"main\"\nuser = \"{name}\"\n\
         password = \"{OWN_LOGIN_PASSWORD}\"\nsearch_path = [\"{name}\"]\n"
    )
}

/// A superuser connection straight to the shared PostgreSQL.
pub(crate) async fn superuser() -> tokio_postgres::Client {
    connect(&pg_conn_str("postgres", "postgres", "postgres"))
        .await
        .unwrap_or_else(|e| panic!("superuser connection: {e}"))
}

/// `(pid, state)` of every backend logged in as `user`.
pub(crate) async fn activity(admin: &tokio_postgres::Client, user: &str) -> Vec<(i32, String)> {
    admin
        .query(
            "SELECT pid, coalesce(state, '') FROM pg_stat_activity WHERE usename = $1",
            &[&user],
        )
        .await
        .unwrap_or_else(|e| panic!("pg_stat_activity: {}", describe(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The `p`-th percentile (0..=100) of `samples` (sorted here).
fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let i = (samples.len() * p).div_ceil(100).clamp(1, samples.len()) - 1;
    samples[i]
}

/// This process's resident set size in KiB (`VmRSS` in `/proc/self/status`).
/// Resident memory of process `pid`.
fn rss_kib_of(pid: u32) -> u64 {
    proc_status_kib(&pid.to_string(), "VmRSS:")
}

/// A `kB` field of `/proc/PID/status`.
fn proc_status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
