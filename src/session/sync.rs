//! Bringing a server connection to a client's state at checkout.
//!
//! The prelude is one or two simple Queries. When the connection's state is not known to be
//! this client's (or sync is `always`), the first takes the last state off (the cleanup of
//! session objects, a reset) and the second applies the client's: the tenant's
//! `search_path` and settings, the client's own settings. In every case, `SET` for each
//! reported parameter whose value differs from the client's ends the last Query. Each
//! runs as its own implicit transaction, so a client's later ROLLBACK cannot undo them.
//!
//! Two Queries, because the client's first messages go to the server right behind the
//! prelude: a setting that applied before can fail now (its role was dropped), and the
//! client's statement then runs whatever the prelude left. With the reset committed on its
//! own, that is the connection's defaults, never the last client's state. (The client is
//! told the error and its session ends.)
//!
//! The reset is `RESET ALL` (so nothing of a previous tenant or client survives) unless sync
//! is `tracked` and the connection holds another *known* state: then exactly the settings
//! that state set ([`crate::server::Held::applied`]) are `RESET` one by one, roles first. A
//! known state is one the proxy applied with nothing since that could have changed a
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
use crate::protocol::sql::Resets;
use crate::protocol::{encode, sqlstate};
use crate::server::{
    is_role_setting, timeout_index, ServerConn, StateKey, TIMEOUTS, TRACKED_PARAMS,
};

pub struct Prelude {
    /// The first Query: what takes the last state off (empty when the state is the
    /// client's already).
    pub reset: String,
    /// The last Query: the client's state, its reported parameters.
    pub sql: String,
    /// The state the connection holds once the prelude succeeded (`None`: it only re-sets
    /// reported parameters and leaves the known state as it is).
    pub state: Option<StateKey>,
    /// Whether it runs in a round trip of its own before any client message is sent:
    /// settings never applied before are in it (a failing one must not leave the client's
    /// statement running in someone else's state), or the client's own timeouts may cut
    /// its statements after the one that sets them (then it is tried again).
    pub alone: bool,
    /// `SET`s that lift the timeouts the connection's last state set, when they may be
    /// short enough to cut this prelude: they run first, in a round trip of their own (see
    /// [`lift_timeouts_sql`]).
    pub lift: Option<String>,
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
    // set (a `RESET ALL` costs the server more than the SETs).
    let switch = held
        .filter(|_| full && mode == SearchPathSync::Tracked)
        .map(|h| &h.applied);
    let resets = |name: &str| match switch {
        Some(old) => old.contains(name),
        None => full,
    };
    let mut reset = String::new();
    let mut sql = String::new();
    let lift = full.then(|| lift_timeouts_sql(conn)).flatten();
    if full {
        let other_tenant = held.is_none_or(|h| h.key.tenant != want.tenant);
        if lift.is_none() && held.is_none_or(|h| h.applied.contains("statement_timeout")) {
            // The last client's own timeout must not cut the prelude short (PostgreSQL
            // times each statement of a Query separately, so this covers the rest).
            reset.push_str("SET statement_timeout = 0;");
        }
        if other_tenant || mode == SearchPathSync::Always {
            // Whatever the last client left (a temp table, a lock, a cursor made where no
            // scanner sees it) goes before another tenant's client, after an unknown one,
            // and before anyone in `always` mode.
            reset.push_str(CLEANUP_SQL);
        }
        match switch {
            Some(old) => {
                // Roles first: a setting only the login may change cannot be reset under
                // another role.
                for name in old
                    .iter()
                    .filter(|n| is_role_setting(n))
                    .chain(old.iter().filter(|n| !is_role_setting(n)))
                {
                    reset.push_str("RESET ");
                    reset.push_str(name);
                    reset.push(';');
                }
            }
            // RESET ALL leaves the roles alone (PostgreSQL marks them GUC_NO_RESET_ALL).
            None => reset.push_str("RESET ALL;SET SESSION AUTHORIZATION DEFAULT;"),
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
        if reset.is_empty() {
            return None;
        }
        // (Never when full: the tenant's state always sets `search_path`.)
        std::mem::swap(&mut reset, &mut sql);
    }
    let unverified = full
        && (!ctx.settings_verified
            || !ctx
                .tenant
                .settings_verified
                .load(std::sync::atomic::Ordering::Relaxed));
    let alone = unverified || short_timeouts(ctx) != 0;
    Some(Prelude {
        reset,
        sql,
        state: if full {
            Some(want)
        } else {
            conn.state().key().cloned()
        },
        alone,
        lift,
    })
}

/// Below this many milliseconds, a timeout may cut a prelude short before its first
/// statement could lift it: PostgreSQL arms `statement_timeout` when a Query arrives and
/// parses the whole Query under it. From here up, the prelude's own first statement (`SET
/// statement_timeout = 0`) covers the rest.
const SHORT_MS: f64 = 1000.0;

/// `SET`s that bring the timeouts the connection's state may have left short to 0, or
/// `None` when none may be. A known state's prelude resets or sets each of them again (they
/// are among the settings it applied); after an unknown one, `RESET ALL` does.
pub fn lift_timeouts_sql(conn: &ServerConn) -> Option<String> {
    let bits = conn.short_timeouts();
    let mut sql = String::new();
    for (i, name) in TIMEOUTS.iter().enumerate() {
        // (`transaction_timeout` does not exist before PostgreSQL 17.)
        if bits & (1 << i) != 0 && (i < 2 || conn.server_major() >= 17) {
            sql.push_str("SET ");
            sql.push_str(name);
            sql.push_str(" = 0;");
        }
    }
    (!sql.is_empty()).then_some(sql)
}

/// Which of [`TIMEOUTS`] the client's state sets short enough to cut the next client's
/// prelude (bits), or a value the proxy cannot read (fail closed).
pub fn short_timeouts(ctx: &ClientCtx) -> u8 {
    let mut values: [Option<&str>; 3] = [None; 3];
    // A snapshot holds every session setting; without one, the tenant's then the startup
    // options' (applied in that order).
    let settings: &mut dyn Iterator<Item = &(String, String)> = match ctx.vs.snapshot() {
        Some(snapshot) => &mut snapshot.entries.iter(),
        None => &mut ctx
            .tenant
            .config
            .settings
            .iter()
            .chain(ctx.startup_settings()),
    };
    for (name, value) in settings {
        if let Some(i) = timeout_index(name) {
            values[i] = Some(value);
        }
    }
    let mut bits = 0;
    for (i, value) in values.iter().enumerate() {
        if value.is_some_and(|v| timeout_ms(v).is_none_or(|ms| ms > 0.0 && ms < SHORT_MS)) {
            bits |= 1 << i;
        }
    }
    bits
}

/// A timeout setting's value in milliseconds (PostgreSQL's units; a bare number is
/// milliseconds), `None` when it cannot be read.
fn timeout_ms(value: &str) -> Option<f64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(value.len());
    let number: f64 = value[..split].parse().ok()?;
    let unit = match value[split..].trim() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    Some(number * unit)
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

/// Writes the prelude's Queries; returns how many (each ends with its ReadyForQuery).
pub fn encode_prelude(buf: &mut BytesMut, p: &Prelude) -> usize {
    let mut queries = 1;
    if !p.reset.is_empty() {
        encode::query(buf, &p.reset);
        queries += 1;
    }
    encode::query(buf, &p.sql);
    queries
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

/// How often a Query of the proxy's own that a timeout cut short is sent again (the
/// prelude, the timeouts' lift) before the proxy gives up on the connection.
pub const CUT_SHORT_TRIES: usize = 10;

/// Whether an SQLSTATE says a timeout cut the statement short (nothing of a Query cut
/// short applied: it may be sent again).
pub fn cut_short(code: &str) -> bool {
    matches!(
        code,
        sqlstate::QUERY_CANCELED | sqlstate::LOCK_NOT_AVAILABLE
    )
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
        Some(key) => conn.hold(key, ctx.setting_names(), short_timeouts(ctx)),
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

#[cfg(test)]
mod tests {
    use super::timeout_ms;

    #[test]
    fn reads_timeouts_in_postgres_units() {
        assert_eq!(timeout_ms("0"), Some(0.0));
        assert_eq!(timeout_ms("250"), Some(250.0));
        assert_eq!(timeout_ms("1ms"), Some(1.0));
        assert_eq!(timeout_ms(" 1.5s "), Some(1500.0));
        assert_eq!(timeout_ms("2min"), Some(120_000.0));
        assert_eq!(timeout_ms("1h"), Some(3_600_000.0));
        assert_eq!(timeout_ms("500us"), Some(0.5));
        // Unreadable: the caller treats it as short (fail closed).
        assert_eq!(timeout_ms("soon"), None);
        assert_eq!(timeout_ms("5 fortnights"), None);
    }
}
