//! Bringing a server connection to a client's state at checkout.
//!
//! The prelude is one simple Query: when the connection's state is not known to be this
//! client's (or sync is `always`): a reset, the tenant's `search_path` and settings, the
//! client's own settings; then, in every case, `SET` for each reported parameter whose value
//! differs from the client's. It runs as its own implicit transaction, so a client's later
//! ROLLBACK cannot undo it.
//!
//! The reset is `RESET ALL` (so nothing of a previous tenant or client survives) unless sync
//! is `tracked` and the connection holds another *known* state: then exactly the settings
//! that state set ([`ServerConn::applied`]) and the new one does not are `RESET` one by
//! one. A known state is one the proxy applied with nothing since that could have changed a
//! setting (a `SET` tag, `set_config`, a changed `search_path` all make it unknown), the
//! same trust `tracked` places in a connection whose state already matches. `RESET ALL`
//! costs PostgreSQL more than the SETs themselves (measured: RESET ALL + SET + SELECT runs
//! at about 0.7x the rate of SET + SELECT), and in tenant churn nearly every checkout
//! switches state.

use bytes::BytesMut;
use postgres_protocol::escape::escape_literal;

use super::client::ClientCtx;
use super::vsession::CLEANUP_SQL;
use crate::config::SearchPathSync;
use crate::protocol::backend::{self, Backend};
use crate::protocol::encode;
use crate::protocol::sql::Resets;
use crate::server::{ServerConn, StateKey, TRACKED_PARAMS};

pub struct Prelude {
    pub sql: String,
    /// The state the connection holds once the prelude succeeded (`None`: it only re-sets
    /// reported parameters and leaves the known state as it is).
    pub state: Option<StateKey>,
    /// Whether settings never applied before are in it: then it runs in a round trip of its
    /// own before any client message is sent, so a failing setting cannot leave the client's
    /// statement running in someone else's state.
    pub unverified: bool,
}

pub fn prelude(mode: SearchPathSync, ctx: &ClientCtx, conn: &ServerConn) -> Option<Prelude> {
    let want = ctx.wanted_state();
    let held = conn.state().held();
    let full = mode == SearchPathSync::Always || held.map(|h| &h.key) != Some(&want);
    // The usual checkout: the state is known to be the client's, and so are the reported
    // parameters.
    if !full && ctx.params.same_tracked(conn.params()) {
        return None;
    }
    // `tracked`, and the connection holds another known state: reset only what that state
    // set and this one does not (a `RESET ALL` costs the server more than the SETs).
    let switch = held
        .filter(|_| full && mode == SearchPathSync::Tracked)
        .map(|h| (&h.applied, ctx.setting_names()));
    let resets = |name: &str| match &switch {
        Some((old, new)) => old.contains(name) && !new.contains(name),
        None => full,
    };
    let mut sql = String::new();
    if full {
        let other_tenant = held.is_none_or(|h| h.key.tenant != want.tenant);
        if held.is_none_or(|h| h.applied.contains("statement_timeout")) {
            // The last client's own timeout must not cut the prelude short (PostgreSQL
            // times each statement of a Query separately, so this covers the rest).
            sql.push_str("SET statement_timeout = 0;");
        }
        if other_tenant || mode == SearchPathSync::Always {
            // Whatever the last client left (a temp table, a lock, a cursor made where no
            // scanner sees it) goes before another tenant's client, after an unknown one,
            // and before anyone in `always` mode.
            sql.push_str(CLEANUP_SQL);
        }
        match &switch {
            Some((old, new)) => {
                for name in old.iter().filter(|n| !new.contains(n)) {
                    sql.push_str("RESET ");
                    sql.push_str(name);
                    sql.push(';');
                }
            }
            // RESET ALL leaves the roles alone (PostgreSQL marks them GUC_NO_RESET_ALL).
            None => sql.push_str("RESET ALL;SET SESSION AUTHORIZATION DEFAULT;"),
        }
        match ctx.vs.snapshot() {
            // A snapshot holds every session setting, the tenant's and the startup
            // options' included: it alone brings the connection to the client's state.
            Some(snapshot) => sql.push_str(&snapshot.sql),
            None => {
                sql.push_str(&ctx.tenant.state_sql);
                sql.push_str(ctx.settings_sql());
            }
        }
    }
    set_reported(&mut sql, ctx, conn, &resets);
    if sql.is_empty() {
        return None;
    }
    let unverified = full
        && (!ctx.settings_verified
            || !ctx
                .tenant
                .settings_verified
                .load(std::sync::atomic::Ordering::Relaxed));
    Some(Prelude {
        sql,
        state: if full {
            Some(want)
        } else {
            conn.state().key().cloned()
        },
        unverified,
    })
}

/// Appends a `SET` for each reported parameter whose value on `conn` (after the resets the
/// prelude does, `resets` telling which) is not what the client was told.
fn set_reported(
    sql: &mut String,
    ctx: &ClientCtx,
    conn: &ServerConn,
    resets: &dyn Fn(&str) -> bool,
) {
    for (i, name) in TRACKED_PARAMS.iter().enumerate() {
        let Some(value) = ctx.params.tracked(i) else {
            continue;
        };
        let current = conn.params().tracked(i);
        let after_reset = conn.startup_params().tracked(i);
        if current != Some(value) || (resets(name) && after_reset != Some(value)) {
            sql.push_str("SET ");
            sql.push_str(name);
            sql.push_str(" TO ");
            sql.push_str(&escape_literal(&String::from_utf8_lossy(value)));
            sql.push(';');
        }
    }
}

pub fn encode_prelude(buf: &mut BytesMut, p: &Prelude) {
    encode::query(buf, &p.sql);
}

/// What one reply to the prelude means.
pub enum Reply {
    More,
    /// ReadyForQuery: the prelude is done.
    Done,
    /// It failed; the raw ErrorResponse is forwarded to the client.
    Failed,
}

/// Consumes one reply to the prelude (all are swallowed; parameter changes are recorded).
pub fn on_reply(conn: &mut ServerConn, msg: &[u8]) -> Result<Reply, crate::protocol::DecodeError> {
    Ok(match backend::decode(msg)? {
        Backend::ParameterStatus { name, value } => {
            let name = String::from_utf8_lossy(name);
            conn.set_param(&name, value);
            Reply::More
        }
        Backend::Error(_) => Reply::Failed,
        Backend::ReadyForQuery(_) => Reply::Done,
        _ => Reply::More,
    })
}

/// After a successful prelude: record the state and tell the client about any reported
/// parameter whose value the server spells differently than the client was told.
pub fn finish(
    conn: &mut ServerConn,
    ctx: &mut ClientCtx,
    state: Option<StateKey>,
    out: &mut BytesMut,
) {
    match state {
        Some(key) => conn.hold(key, ctx.setting_names()),
        None => conn.forget_state(),
    }
    ctx.settings_verified = true;
    ctx.tenant
        .settings_verified
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tell_params(conn, ctx, out);
}

/// What puts back the client's defaults after statements that may have returned settings
/// to the connection's defaults (`RESET`, `SET x TO DEFAULT`, `RESET ALL`, `DISCARD ALL`):
/// the tenant's `search_path` and settings, the client's startup settings and the reported
/// parameters it logged in with. Empty when the connection's default is the client's.
///
/// The server decides which it needs: a default the proxy applied has source `session`, so
/// a setting whose source is something else was reset by the client's statement, and one
/// still from `session` was not (the statement failed, was rolled back, or set it again).
/// Custom settings are not in `pg_settings`: an empty one was reset.
pub fn fixup_sql(resets: &Resets, ctx: &ClientCtx) -> String {
    let mut listed: Vec<(String, String)> = Vec::new();
    let mut custom: Vec<(String, String)> = Vec::new();
    let tenant = &ctx.tenant.config;
    let mut add = |name: &str| {
        let lower = name.to_ascii_lowercase();
        if listed.iter().chain(custom.iter()).any(|(n, _)| *n == lower) {
            return;
        }
        if let Some(value) = default_value(ctx, name) {
            if lower.contains('.') {
                custom.push((lower, value));
            } else {
                listed.push((lower, value));
            }
        }
    };
    match resets {
        Resets::None => {}
        Resets::All => {
            add("search_path");
            for (name, _) in tenant.settings.iter().chain(ctx.startup_settings()) {
                add(name);
            }
            for name in TRACKED_PARAMS {
                add(name);
            }
        }
        Resets::Names(names) => names.iter().for_each(|n| add(n)),
    }
    let mut sql = restore_listed(&listed);
    for (name, value) in custom {
        let name = escape_literal(&name);
        sql.push_str("SELECT pg_catalog.set_config(");
        sql.push_str(&name);
        sql.push_str(", ");
        sql.push_str(&value);
        sql.push_str(", false) WHERE pg_catalog.current_setting(");
        sql.push_str(&name);
        sql.push_str(", true) OPERATOR(pg_catalog.=) '';");
    }
    sql
}

/// The client's default for `name` as an SQL expression: the tenant's `search_path` or
/// setting, the client's startup option, or the reported value it logged in with.
fn default_value(ctx: &ClientCtx, name: &str) -> Option<String> {
    let tenant = &ctx.tenant.config;
    if name.eq_ignore_ascii_case("search_path") {
        // As `SET search_path TO "a","b"` shows it: quoted only where needed (the server's
        // own quote_ident), joined by ", ".
        let items: Vec<String> = tenant
            .search_path
            .iter()
            .map(|s| escape_literal(s))
            .collect();
        return Some(format!(
            "pg_catalog.array_to_string(ARRAY(SELECT pg_catalog.quote_ident(x) \
             FROM pg_catalog.unnest(ARRAY[{}]::text[]) WITH ORDINALITY u(x, n) ORDER BY n), ', ')",
            items.join(", ")
        ));
    }
    if let Some((_, v)) = tenant
        .settings
        .iter()
        .chain(ctx.startup_settings())
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
    {
        return Some(escape_literal(v));
    }
    crate::server::tracked_name(name)
        .and_then(|t| ctx.login_params.get(t))
        .map(|v| escape_literal(&String::from_utf8_lossy(v)))
}

/// One query putting back the built-in settings of `listed` (name, value expression) where
/// the server says a reset happened (their source is no longer `session`).
fn restore_listed(listed: &[(String, String)]) -> String {
    let mut sql = String::new();
    if listed.is_empty() {
        return sql;
    }
    sql.push_str(
        "SELECT pg_catalog.set_config(s.name, v.value, false) \
         FROM pg_catalog.pg_settings s JOIN (VALUES ",
    );
    for (i, (name, value)) in listed.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        sql.push_str(&escape_literal(name));
        sql.push_str(", ");
        sql.push_str(value);
        sql.push(')');
    }
    sql.push_str(
        ") v(name, value) ON pg_catalog.lower(s.name) OPERATOR(pg_catalog.=) v.name \
         WHERE s.source OPERATOR(pg_catalog.<>) 'session';",
    );
    sql
}

/// Tells the client each reported parameter whose value on its connection differs from
/// what it was told (after the proxy's own statements changed some).
pub fn tell_params(conn: &ServerConn, ctx: &mut ClientCtx, out: &mut BytesMut) {
    // search_path too where the server reports it (PostgreSQL 18+: the client has it).
    for name in TRACKED_PARAMS.iter().chain(&["search_path"]) {
        if let Some(value) = conn.params().get(name) {
            if ctx.params.get(name).is_some_and(|v| v != value) {
                encode::parameter_status(out, name.as_bytes(), value);
                ctx.params.set(name, value);
            }
        }
    }
}
