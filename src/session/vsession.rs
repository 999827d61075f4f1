//! A client's virtual session: the session-level state it would have on a direct
//! connection, kept by the proxy between transactions (transaction mode).
//!
//! While a client is linked, its server connection holds the truth, and PostgreSQL applies
//! its own transaction semantics (ROLLBACK, savepoints, `SET LOCAL`, failed implicit
//! transactions). When a transaction may have changed settings, the proxy asks the server
//! for the session's settings before the connection goes back to the pool (a *capture*: one
//! query, only after such transactions) and keeps what differs from the client's defaults
//! as a [`Snapshot`]: the state the next checkout re-applies, wherever it lands. Most
//! clients never set anything: their virtual session is two null pointers. Clients left in
//! the same state share one snapshot ([`crate::intern`]).
//!
//! It also keeps the client's session objects as [`pin`] bits (temp tables, session
//! advisory locks, LISTEN, WITH HOLD cursors, SQL PREPARE), which keep the client on its
//! server connection, and the memo that lets the proxy answer a repeated plain `SET` itself.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use postgres_protocol::escape::escape_literal;

use crate::intern::Interner;
use crate::protocol::sql::{pin, Effects};
use crate::server::{is_role_setting, timeout_index, tracked_name, Params};

/// Settings the client holds beyond its defaults, as the server reported them. Clients
/// left in the same state (the same app's statements, in the same tenant) share one.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Snapshot {
    /// `(name, value)` in the order they are applied (roles last).
    pub entries: Vec<(String, String)>,
    /// `SELECT pg_catalog.set_config(...), ...;` (one `SELECT` per thousand entries; empty
    /// when there are no entries).
    pub sql: String,
    pub hash: u64,
}

/// Every client's snapshot, by content.
static SNAPSHOTS: LazyLock<Interner<Snapshot>> = LazyLock::new(Interner::default);

/// The names a client's defaults set: its tenant's (`search_path`, settings), its own
/// startup options, and the server login (what `session_authorization` is by default).
pub struct Defaults {
    pub tenant: Arc<[String]>,
    pub startup: Vec<String>,
    pub login_user: String,
}

impl Defaults {
    fn names(&self) -> impl Iterator<Item = &str> {
        self.tenant
            .iter()
            .chain(self.startup.iter())
            .map(String::as_str)
    }
}

/// The session state of one client beyond its defaults (both `None`: nothing, the usual
/// case). The snapshot sits outside the box: a client whose state is only settings (a pool
/// that runs `RESET ALL` at release leaves every client so) holds one shared pointer.
#[derive(Debug, Default)]
pub struct VSession {
    snapshot: Option<Arc<Snapshot>>,
    rest: Option<Box<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Setting names the client's own statements named (lower case): custom ones are
    /// read at every capture (`pg_settings` does not list them).
    own_names: Vec<String>,
    memo: Option<Memo>,
    pins: u8,
}

/// The last plain `SET` the proxy forwarded and the state it left.
#[derive(Debug)]
struct Memo {
    text: Box<[u8]>,
    snapshot: u64,
    params: Params,
}

impl VSession {
    fn inner(&mut self) -> &mut Inner {
        self.rest.get_or_insert_default()
    }

    /// Records the setting names a statement names.
    pub fn note(&mut self, fx: &Effects) {
        if fx.names.is_empty() {
            return;
        }
        let inner = self.inner();
        for name in &fx.names {
            if !inner.own_names.contains(name) {
                inner.own_names.push(name.clone());
            }
        }
    }

    pub fn snapshot(&self) -> Option<&Arc<Snapshot>> {
        self.snapshot.as_ref()
    }

    /// Identity of the snapshot (`0`: none).
    pub fn settings_hash(&self) -> u64 {
        self.snapshot().map_or(0, |s| s.hash)
    }

    pub fn pins(&self) -> u8 {
        self.rest.as_ref().map_or(0, |i| i.pins)
    }

    pub fn set_pins(&mut self, pins: u8) {
        if pins != self.pins() {
            self.inner().pins = pins;
        }
    }

    /// The query that reads the session's settings: every one set at session level
    /// (`pg_settings` shows all but custom and role settings), the role settings, and the
    /// custom settings the client's defaults or statements named.
    pub fn capture_sql(&self, defaults: &Defaults) -> String {
        let mut sql = String::from(
            "SELECT name, setting FROM pg_catalog.pg_settings \
             WHERE source OPERATOR(pg_catalog.=) 'session' \
             UNION ALL SELECT 'session_authorization', \
             pg_catalog.current_setting('session_authorization') \
             UNION ALL SELECT 'role', pg_catalog.current_setting('role')",
        );
        let own = self
            .rest
            .as_ref()
            .map(|i| i.own_names.as_slice())
            .unwrap_or(&[]);
        let mut custom: Vec<String> = Vec::new();
        for name in defaults.names().chain(own.iter().map(String::as_str)) {
            let name = name.to_ascii_lowercase();
            if name.contains('.') && !custom.contains(&name) {
                custom.push(name);
            }
        }
        for name in custom {
            let lit = escape_literal(&name);
            sql.push_str(" UNION ALL SELECT ");
            sql.push_str(&lit);
            sql.push_str(", pg_catalog.current_setting(");
            sql.push_str(&lit);
            sql.push_str(", true)");
        }
        sql
    }

    /// Takes the rows of [`VSession::capture_sql`] as the client's settings.
    pub fn captured(&mut self, rows: Vec<(String, Option<String>)>, defaults: &Defaults) {
        let mut entries: Vec<(String, String)> = Vec::new();
        let mut roles: Vec<(String, String)> = Vec::new();
        for (name, value) in rows {
            let Some(value) = value else { continue };
            if tracked_name(&name).is_some()
                || entries.iter().chain(roles.iter()).any(|(n, _)| *n == name)
            {
                // Reported parameters follow ParameterStatus (the client's `Params`).
                continue;
            }
            match name.as_str() {
                "session_authorization" if value != defaults.login_user => {
                    roles.insert(0, (name, value))
                }
                "role" if value != "none" => roles.push((name, value)),
                "session_authorization" | "role" => {}
                _ => entries.push((name, value)),
            }
        }
        entries.extend(roles);
        let snapshot =
            (!entries.is_empty()).then(|| SNAPSHOTS.intern(Arc::new(Snapshot::new(entries))));
        self.snapshot = snapshot;
    }

    /// Remembers a plain `SET` the server just ran, with the state it left (`params`: the
    /// client's reported parameters then).
    pub fn remember_set(&mut self, text: &[u8], params: &Params) {
        let snapshot = self.settings_hash();
        self.inner().memo = Some(Memo {
            text: text.into(),
            snapshot,
            params: params.clone(),
        });
    }

    /// Whether `text` is the plain `SET` that left the client exactly in its current state:
    /// then running it again changes nothing, and the proxy may answer it itself.
    pub fn is_repeated_set(&self, text: &[u8], params: &Params) -> bool {
        let Some(inner) = self.rest.as_ref() else {
            return false;
        };
        let snapshot = self.settings_hash();
        inner
            .memo
            .as_ref()
            .is_some_and(|m| *m.text == *text && m.snapshot == snapshot && m.params == *params)
    }

    /// What another process needs to carry this session on (`super::handoff`): the
    /// snapshot's entries and the setting names the client named. The memo is left out
    /// (the next `SET` is then forwarded, as after any other change).
    pub fn export(&self) -> (Vec<(String, String)>, Vec<String>) {
        (
            self.snapshot
                .as_ref()
                .map_or_else(Vec::new, |s| s.entries.clone()),
            self.rest
                .as_ref()
                .map_or_else(Vec::new, |r| r.own_names.clone()),
        )
    }

    /// The session [`VSession::export`] described (no pins: a pinned client never moves).
    pub fn import(entries: Vec<(String, String)>, own_names: Vec<String>) -> VSession {
        VSession {
            snapshot: (!entries.is_empty())
                .then(|| SNAPSHOTS.intern(Arc::new(Snapshot::new(entries)))),
            rest: (!own_names.is_empty()).then(|| {
                Box::new(Inner {
                    own_names,
                    memo: None,
                    pins: 0,
                })
            }),
        }
    }

    /// Forgets the memo (anything else the client runs may have changed what it assumed).
    pub fn forget_memo(&mut self) {
        if let Some(inner) = self.rest.as_mut() {
            inner.memo = None;
        }
    }
}

/// PostgreSQL refuses a target list of more than 1664 entries: a snapshot of more settings
/// than this is applied by more than one `SELECT`.
const SET_CONFIG_PER_SELECT: usize = 1000;

impl Snapshot {
    fn new(mut entries: Vec<(String, String)>) -> Snapshot {
        // Timeouts go last but for the roles (which must be: a setting may need the login's
        // privileges), and the last SELECT holds them: PostgreSQL arms a timeout per
        // statement, so no statement of the prelude runs under the client's own timeout
        // but the reported parameters' `SET`s after it.
        entries.sort_by_key(|(name, _)| {
            if is_role_setting(name) {
                2
            } else if timeout_index(name).is_some() {
                1
            } else {
                0
            }
        });
        entries.shrink_to_fit();
        let mut h = DefaultHasher::new();
        entries.hash(&mut h);
        let mut sql = String::from("SELECT ");
        // The first SELECT takes the remainder, so the last one is full.
        let first = entries.len() % SET_CONFIG_PER_SELECT;
        for (i, (name, value)) in entries.iter().enumerate() {
            if i > 0 && i % SET_CONFIG_PER_SELECT == first {
                sql.push_str(";SELECT ");
            } else if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("pg_catalog.set_config(");
            sql.push_str(&escape_literal(name));
            sql.push_str(", ");
            sql.push_str(&escape_literal(value));
            sql.push_str(", false)");
        }
        sql.push(';');
        sql.shrink_to_fit();
        Snapshot {
            entries,
            sql,
            hash: h.finish() | 1,
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }
}

/// The [`pin`] bits of a census row (one count per reason, in [`pin::ALL`] order).
pub fn census_pins(counts: &[Option<&[u8]>]) -> u8 {
    let mut bits = 0;
    for (bit, count) in pin::ALL.iter().zip(counts) {
        if count.is_some_and(|c| c != b"0") {
            bits |= bit;
        }
    }
    bits
}

/// Counts the session objects of the connection (see [`census_pins`]). Everything is
/// schema-qualified: the client's `search_path` is in force.
pub const CENSUS_SQL: &str = "SELECT \
(SELECT pg_catalog.count(*) FROM pg_catalog.pg_class WHERE relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()) \
OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_proc WHERE pronamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()), \
(SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks WHERE locktype OPERATOR(pg_catalog.=) 'advisory' AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()), \
(SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels()), \
(SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors WHERE is_holdable), \
(SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)";

/// Drops every session object a connection may carry, so the next client finds none:
/// prepended to the state prelude when a connection changes tenant or its state is
/// unknown (cheap when there is nothing to drop).
pub const CLEANUP_SQL: &str =
    "CLOSE ALL;UNLISTEN *;SELECT pg_catalog.pg_advisory_unlock_all();DISCARD TEMP;DISCARD SEQUENCES;";

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.map(String::from)))
            .collect()
    }

    #[test]
    fn a_snapshot_of_many_settings_is_applied_by_several_selects() {
        let entries: Vec<(String, String)> = (0..2500)
            .map(|i| (format!("app.k{i}"), "v".into()))
            .collect();
        let s = Snapshot::new(entries);
        assert_eq!(s.sql.matches("SELECT ").count(), 3);
        assert_eq!(s.sql.matches("set_config(").count(), 2500);
        assert!(!s.sql.contains(", ;") && !s.sql.contains("SELECT ,"));
        let last = s.sql.rsplit("SELECT ").next().unwrap();
        assert_eq!(last.matches("set_config(").count(), SET_CONFIG_PER_SELECT);
    }

    #[test]
    fn timeouts_come_last_but_for_the_roles() {
        let entries = [
            ("role", "r"),
            ("statement_timeout", "1ms"),
            ("work_mem", "9MB"),
            ("Lock_Timeout", "2ms"),
            ("app.x", "1"),
        ];
        let s = Snapshot::new(
            entries
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        );
        let names: Vec<&str> = s.names().collect();
        assert_eq!(
            names,
            [
                "work_mem",
                "app.x",
                "statement_timeout",
                "Lock_Timeout",
                "role"
            ]
        );
    }

    #[test]
    fn keeps_the_session_settings_but_reported_and_default_roles() {
        let tenant = vec!["search_path".to_string(), "app.tenant_id".to_string()];
        let d = Defaults {
            tenant: tenant.into(),
            startup: vec![],
            login_user: "app".into(),
        };
        let mut vs = VSession::default();
        assert!(vs
            .capture_sql(&d)
            .contains("current_setting('app.tenant_id', true)"));
        vs.captured(
            rows(&[
                ("search_path", Some("t1, public")),
                ("statement_timeout", Some("5000")),
                ("DateStyle", Some("SQL, DMY")),
                ("session_authorization", Some("app")),
                ("role", Some("limited")),
                ("app.tenant_id", Some("1")),
            ]),
            &d,
        );
        let s = vs.snapshot().unwrap();
        assert_eq!(
            s.entries,
            vec![
                ("search_path".into(), "t1, public".into()),
                ("app.tenant_id".into(), "1".into()),
                ("statement_timeout".into(), "5000".into()),
                ("role".into(), "limited".into())
            ]
        );
        assert!(s
            .sql
            .starts_with("SELECT pg_catalog.set_config('search_path', 't1, public', false), "));
        assert!(s
            .sql
            .ends_with("pg_catalog.set_config('role', 'limited', false);"));
        // Custom names the client's statements named are read too.
        let mut fx = Effects::default();
        fx.names.push("my.flag".into());
        vs.note(&fx);
        assert!(vs
            .capture_sql(&d)
            .contains("current_setting('my.flag', true)"));
        vs.captured(rows(&[("search_path", Some("t2"))]), &d);
        let h = vs.settings_hash();
        vs.captured(rows(&[]), &d);
        assert!(vs.snapshot().is_none());
        assert_ne!(h, vs.settings_hash());
    }

    #[test]
    fn clients_left_in_the_same_state_share_one_snapshot() {
        let d = Defaults {
            tenant: Arc::new([]),
            startup: vec![],
            login_user: "app".into(),
        };
        let state = rows(&[("search_path", Some("t1, public")), ("x.y", Some("1"))]);
        let (mut a, mut b, mut c) = (
            VSession::default(),
            VSession::default(),
            VSession::default(),
        );
        a.captured(state.clone(), &d);
        b.captured(state, &d);
        c.captured(rows(&[("search_path", Some("t2, public"))]), &d);
        let (sa, sb) = (a.snapshot().unwrap(), b.snapshot().unwrap());
        assert!(Arc::ptr_eq(sa, sb));
        assert!(!Arc::ptr_eq(sa, c.snapshot().unwrap()));
        assert_eq!(a.settings_hash(), b.settings_hash());
        // One client moving on leaves the other's state as it was.
        a.captured(rows(&[("x.y", Some("2"))]), &d);
        assert_eq!(b.snapshot().unwrap().entries.len(), 2);
        assert_ne!(a.settings_hash(), b.settings_hash());
    }

    #[test]
    fn a_set_is_repeated_only_in_the_state_it_left() {
        let d = Defaults {
            tenant: Arc::new([]),
            startup: vec![],
            login_user: "app".into(),
        };
        let mut vs = VSession::default();
        let p = Params::default();
        assert!(!vs.is_repeated_set(b"SET x.y = 1", &p));
        vs.captured(rows(&[("x.y", Some("1"))]), &d);
        vs.remember_set(b"SET x.y = 1", &p);
        assert!(vs.is_repeated_set(b"SET x.y = 1", &p));
        assert!(!vs.is_repeated_set(b"SET x.y = 2", &p));
        let mut q = p.clone();
        q.set("TimeZone", b"UTC");
        assert!(!vs.is_repeated_set(b"SET x.y = 1", &q));
        vs.captured(rows(&[("x.y", Some("2"))]), &d);
        assert!(!vs.is_repeated_set(b"SET x.y = 1", &p));
    }

    #[test]
    fn census_bits() {
        assert_eq!(
            census_pins(&[Some(b"0"), Some(b"2"), Some(b"0"), Some(b"1"), Some(b"0")]),
            pin::ADVISORY | pin::CURSOR
        );
    }
}
