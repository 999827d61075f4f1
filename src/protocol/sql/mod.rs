//! A small SQL scanner: just enough of PostgreSQL's lexical rules (quoted strings, `E''`
//! strings, quoted identifiers, dollar quotes, nested comments) to split a Query or Parse
//! text into statements and find the few statements that change *session* state: settings
//! (`SET`, `RESET`, `set_config`, `DISCARD`), and objects that outlive a transaction (temp
//! tables, session advisory locks, `LISTEN`, `WITH HOLD` cursors, SQL `PREPARE`).
//!
//! It reads only what the proxy must know; everything it cannot see (a function body that
//! calls `set_config` or creates a temp table) is the session code's to handle by other
//! means (the server's reports, the clean-up on a client switch). See
//! <https://www.postgresql.org/docs/current/sql-syntax-lexical.html>.

mod harmless;
mod lexer;
#[cfg(test)]
mod tests;

use harmless::harmless_call;
use lexer::{Lexer, Token};

/// Session objects that keep a client on its server connection (a bit each).
pub mod pin {
    pub const TEMP: u8 = 1;
    pub const ADVISORY: u8 = 2;
    pub const LISTEN: u8 = 4;
    pub const CURSOR: u8 = 8;
    pub const PREPARE: u8 = 16;
    /// Every reason, in the order of [`NAMES`].
    pub const ALL: [u8; 5] = [TEMP, ADVISORY, LISTEN, CURSOR, PREPARE];
    pub const NAMES: [&str; 5] = ["temp", "advisory_lock", "listen", "cursor", "prepare"];

    /// The reasons in `bits`, as labels joined by `+` (`""` for none).
    pub fn describe(bits: u8) -> String {
        let mut out = String::new();
        for (bit, name) in ALL.iter().zip(NAMES) {
            if bits & bit != 0 {
                if !out.is_empty() {
                    out.push('+');
                }
                out.push_str(name);
            }
        }
        out
    }
}

/// Which settings a statement returns to the connection's default (`RESET`, `SET x TO
/// DEFAULT`, `RESET ALL`, `DISCARD ALL`): on a server connection shared by tenants that is
/// not the client's own default, so the session puts the client's back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Resets {
    #[default]
    None,
    Names(Vec<String>),
    All,
}

impl Resets {
    fn add(&mut self, name: String) {
        match self {
            Resets::None => *self = Resets::Names(vec![name]),
            Resets::Names(names) => {
                if !names.contains(&name) {
                    names.push(name)
                }
            }
            Resets::All => {}
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Resets::None
    }

    /// Adds the resets of `more` (a later statement's) to these.
    pub fn merge(&mut self, more: Resets) {
        *self = match (std::mem::take(self), more) {
            (Resets::All, _) | (_, Resets::All) => Resets::All,
            (Resets::None, r) | (r, Resets::None) => r,
            (Resets::Names(mut a), Resets::Names(b)) => {
                for n in b {
                    if !a.contains(&n) {
                        a.push(n);
                    }
                }
                Resets::Names(a)
            }
        };
    }
}

/// A sole `LISTEN channel`, `UNLISTEN channel` or `UNLISTEN *` (channel names folded as
/// PostgreSQL folds identifiers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Listen(String),
    Unlisten(Option<String>),
}

/// What one Query or Parse text does to session state, as far as its text tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// May change session-level settings (`SET`, `RESET`, `set_config`, `DISCARD ALL`,
    /// `SET ROLE`, `SET SESSION AUTHORIZATION`).
    pub settings: bool,
    /// Settings it returns to the connection's default.
    pub resets: Resets,
    /// Setting names it names (lower case; `set_config` only with a literal name).
    pub names: Vec<String>,
    /// Session objects it may create ([`pin`] bits).
    pub pins: u8,
    /// May drop session objects (`DISCARD`, `CLOSE`, `DEALLOCATE`, `UNLISTEN`, unlock
    /// functions, `DROP`): a pinned client's objects are counted again afterwards.
    pub releases: bool,
    /// `DISCARD ALL`: every session object and setting is gone.
    pub discard_all: bool,
    /// The text is exactly one plain session `SET name TO value` (no `DEFAULT`, not a
    /// role): running it twice in a row changes nothing the second time.
    pub plain_set: bool,
    /// An SQL `PREPARE name AS ...` (not `PREPARE TRANSACTION`).
    pub sql_prepare: bool,
    /// The text is exactly one `LISTEN`/`UNLISTEN` (which the proxy can serve itself).
    pub listen: Option<Listen>,
    /// Runs code the scanner cannot see into (`DO`, `CALL`, a function it does not know
    /// as harmless): settings and session objects are asked of the server afterwards.
    pub calls: bool,
}

impl Effects {
    /// Nothing of interest (the usual query).
    pub fn is_empty(&self) -> bool {
        *self == Effects::default()
    }
}

/// Scans `sql` (a Query's or Parse's text).
pub fn effects(sql: &[u8]) -> Effects {
    let mut fx = Effects::default();
    // Most queries mention none of the words that matter: skip the scan.
    if !might_matter(sql) {
        return fx;
    }
    let mut lexer = Lexer { s: sql, at: 0 };
    let mut stmt: Vec<Token<'_>> = Vec::new();
    let mut statements = 0;
    let mut last_plain_set = false;
    loop {
        let tok = lexer.next();
        match tok {
            None | Some(Token::Semicolon) => {
                if !stmt.is_empty() {
                    statements += 1;
                    last_plain_set = statement(&stmt, &mut fx);
                    stmt.clear();
                }
                if tok.is_none() {
                    break;
                }
            }
            Some(t) => stmt.push(t),
        }
    }
    fx.plain_set = statements == 1 && last_plain_set;
    if statements != 1 {
        fx.listen = None;
    }
    fx
}

/// Whether `sql` contains (in any case) a word the scan looks for, in one pass. False
/// positives only cost a scan.
fn might_matter(sql: &[u8]) -> bool {
    let at = |i: usize, word: &[u8]| {
        sql.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    };
    let mut in_word = false;
    for (i, &c) in sql.iter().enumerate() {
        if c == b'(' {
            return true;
        }
        let word_char = c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
        let start = word_char && !in_word;
        in_word = word_char;
        if !start {
            continue;
        }
        // Words the scan looks for, by their first letter (`pg_` covers pg_temp and the
        // advisory lock functions).
        let hit = match c | 0x20 {
            b's' => at(i, b"set"),
            b'r' => at(i, b"reset"),
            b'd' => at(i, b"discard") || at(i, b"deallocate") || at(i, b"drop") || at(i, b"do"),
            b't' => at(i, b"temp"),
            b'l' => at(i, b"listen"),
            b'u' => at(i, b"unlisten"),
            b'h' => at(i, b"hold"),
            b'p' => at(i, b"prepare") || at(i, b"pg_"),
            b'c' => at(i, b"close") || at(i, b"call") || at(i, b"create"),
            _ => false,
        };
        if hit {
            return true;
        }
    }
    false
}

/// A setting name as PostgreSQL folds it: unquoted words in lower case, quoted as written,
/// parts joined by `.`.
fn setting_name(tokens: &[Token<'_>]) -> Option<(String, usize)> {
    let part = |t: &Token<'_>| match t {
        Token::Word(w) => Some(String::from_utf8_lossy(w).to_ascii_lowercase()),
        Token::Ident(w) => Some(String::from_utf8_lossy(w).replace("\"\"", "\"")),
        _ => None,
    };
    let mut name = part(tokens.first()?)?;
    let mut used = 1;
    while tokens.get(used) == Some(&Token::Punct(b'.')) {
        name.push('.');
        name.push_str(&part(tokens.get(used + 1)?)?);
        used += 2;
    }
    Some((name, used))
}

/// The setting a `SET`/`RESET` special form names (`SET TIME ZONE`, `SET ROLE`, ...), with
/// the number of words it takes.
fn special_setting(tokens: &[Token<'_>]) -> Option<(&'static str, usize)> {
    let first = tokens.first()?;
    let second = tokens.get(1);
    Some(
        if first.is("time") && second.is_some_and(|t| t.is("zone")) {
            ("timezone", 2)
        } else if first.is("session") && second.is_some_and(|t| t.is("authorization")) {
            ("session_authorization", 2)
        } else if first.is("role") {
            ("role", 1)
        } else if first.is("names") {
            ("client_encoding", 1)
        } else if first.is("schema") {
            ("search_path", 1)
        } else if first.is("xml") && second.is_some_and(|t| t.is("option")) {
            ("xmloption", 2)
        } else {
            return None;
        },
    )
}

/// Records what one statement does; returns whether it is a plain session `SET`.
fn statement(t: &[Token<'_>], fx: &mut Effects) -> bool {
    let Some(first) = t.first() else {
        return false;
    };
    calls(t, fx);
    // `SELECT ... INTO TEMP x`.
    if t.windows(2)
        .any(|w| w[0].is("into") && (w[1].is("temp") || w[1].is("temporary")))
    {
        fx.pins |= pin::TEMP;
    }
    if first.is("do") || first.is("call") {
        fx.calls = true;
    }
    let rest = &t[1..];
    if first.is("set") {
        return set(rest, fx);
    }
    command(first, rest, fx);
    false
}

/// Function calls anywhere in a statement, and `pg_temp.x`.
fn calls(t: &[Token<'_>], fx: &mut Effects) {
    for (i, tok) in t.iter().enumerate() {
        let Some(w) = tok.name() else { continue };
        if w == b"pg_temp" && t.get(i + 1) == Some(&Token::Punct(b'.')) {
            // `pg_temp.x` anywhere (CREATE ..., SELECT ... INTO pg_temp.x): counted after.
            fx.pins |= pin::TEMP;
        }
        if t.get(i + 1) != Some(&Token::Punct(b'(')) {
            continue;
        }
        match w.as_slice() {
            b"set_config" => {
                fx.settings = true;
                match (t.get(i + 2), t.get(i + 3)) {
                    // Only a literal that is the whole argument names the setting (not
                    // `'app.k' || i`, nor `'app.k'::text`).
                    (Some(Token::Str(name)), Some(Token::Punct(b','))) => fx
                        .names
                        .push(String::from_utf8_lossy(name).to_ascii_lowercase()),
                    // A name the text does not spell out: treated as unseen code.
                    _ => fx.calls = true,
                }
            }
            b"pg_advisory_lock"
            | b"pg_advisory_lock_shared"
            | b"pg_try_advisory_lock"
            | b"pg_try_advisory_lock_shared" => fx.pins |= pin::ADVISORY,
            b"pg_advisory_unlock" | b"pg_advisory_unlock_shared" | b"pg_advisory_unlock_all" => {
                fx.releases = true
            }
            w if matches!(tok, Token::Ident(_)) || !harmless_call(w, &t[..i]) => fx.calls = true,
            _ => {}
        }
    }
}

/// What a statement other than `SET` does, by its first word.
fn command(first: &Token<'_>, rest: &[Token<'_>], fx: &mut Effects) {
    if first.is("reset") {
        fx.settings = true;
        if rest.first().is_some_and(|t| t.is("all")) {
            fx.resets = Resets::All;
        } else if let Some((name, _)) = special_setting(rest) {
            fx.names.push(name.into());
            fx.resets.add(name.into());
        } else if let Some((name, _)) = setting_name(rest) {
            fx.names.push(name.clone());
            fx.resets.add(name);
        }
    } else if first.is("discard") {
        fx.releases = true;
        if rest.first().is_some_and(|t| t.is("all")) {
            fx.settings = true;
            fx.discard_all = true;
            fx.resets = Resets::All;
        }
    } else if first.is("create") {
        // Whatever it creates (its tag may be `SELECT n`), the session's objects are
        // counted after it: DDL is rare.
        fx.releases = true;
        if rest
            .iter()
            .take(4)
            .any(|t| t.is("temp") || t.is("temporary"))
        {
            fx.pins |= pin::TEMP;
        }
    } else if first.is("listen") {
        fx.pins |= pin::LISTEN;
        if let (Some((name, 1)), 1) = (setting_name(rest), rest.len()) {
            fx.listen = Some(Listen::Listen(name));
        }
    } else if first.is("unlisten") {
        fx.releases = true;
        fx.listen = match rest {
            [Token::Punct(b'*')] => Some(Listen::Unlisten(None)),
            _ => match (setting_name(rest), rest.len()) {
                (Some((name, 1)), 1) => Some(Listen::Unlisten(Some(name))),
                _ => None,
            },
        };
    } else if first.is("declare") {
        if rest.windows(2).any(|w| w[0].is("with") && w[1].is("hold")) {
            fx.pins |= pin::CURSOR;
        }
    } else if first.is("prepare") {
        if !rest.first().is_some_and(|t| t.is("transaction")) {
            fx.pins |= pin::PREPARE;
            fx.sql_prepare = true;
        }
    } else if first.is("close") || first.is("deallocate") || first.is("drop") {
        fx.releases = true;
    }
}

/// `SET ...` (after the `SET`).
fn set(t: &[Token<'_>], fx: &mut Effects) -> bool {
    let Some(first) = t.first() else {
        return false;
    };
    if first.is("local") || first.is("transaction") || first.is("constraints") {
        // Ends with the transaction.
        return false;
    }
    let t = if first.is("session") && !t.get(1).is_some_and(|x| x.is("authorization")) {
        &t[1..]
    } else {
        t
    };
    fx.settings = true;
    if t.first().is_some_and(|x| x.is("characteristics")) {
        fx.names.extend(
            [
                "default_transaction_isolation",
                "default_transaction_read_only",
                "default_transaction_deferrable",
            ]
            .map(String::from),
        );
        return false;
    }
    if let Some((name, used)) = special_setting(t) {
        fx.names.push(name.into());
        let value = &t[used..];
        if value.first().is_some_and(|v| v.is("default"))
            || (name == "session_authorization" && value.first().is_some_and(|v| v.is("default")))
        {
            fx.resets.add(name.into());
        }
        // Roles are checked against the catalog at every SET: never answered by the proxy.
        return !matches!(name, "role" | "session_authorization")
            && value
                .first()
                .is_some_and(|v| !v.is("default") && !v.is("local"));
    }
    let Some((name, used)) = setting_name(t) else {
        return false;
    };
    fx.names.push(name.clone());
    let value = match t.get(used) {
        Some(Token::Punct(b'=')) => &t[used + 1..],
        Some(x) if x.is("to") => &t[used + 1..],
        _ => return false,
    };
    if value.first().is_some_and(|v| v.is("default")) {
        fx.resets.add(name);
        return false;
    }
    !value.is_empty() && !matches!(name.as_str(), "role" | "session_authorization")
}
