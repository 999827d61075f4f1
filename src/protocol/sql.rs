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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// An unquoted word (keyword or identifier), as written.
    Word(&'a [u8]),
    /// A quoted identifier (inner text, `""` not undone).
    Ident(&'a [u8]),
    /// A string constant (inner text, escapes not undone).
    Str(&'a [u8]),
    Semicolon,
    /// Any other single character (operators, parentheses, `.`, `=`, `*`).
    Punct(u8),
    /// Numbers, parameters (`$1`), dollar-quoted bodies.
    Other,
}

impl Token<'_> {
    fn is(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword.as_bytes()))
    }

    /// A name as PostgreSQL folds it: an unquoted word in lower case, a quoted one as is.
    fn name(&self) -> Option<Vec<u8>> {
        match self {
            Token::Word(w) => Some(w.to_ascii_lowercase()),
            Token::Ident(w) => Some(w.to_vec()),
            _ => None,
        }
    }
}

struct Lexer<'a> {
    s: &'a [u8],
    at: usize,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

impl<'a> Lexer<'a> {
    fn peek(&self, off: usize) -> u8 {
        self.s.get(self.at + off).copied().unwrap_or(0)
    }

    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_space();
        let c = *self.s.get(self.at)?;
        let start = self.at;
        Some(match c {
            b';' => {
                self.at += 1;
                Token::Semicolon
            }
            b'\'' => self.string(false),
            b'"' => {
                self.at += 1;
                let inner = self.until_quote(b'"', false);
                Token::Ident(inner)
            }
            b'$' if self.dollar_tag().is_some() => {
                let tag = self.dollar_tag().unwrap_or(b"$$");
                self.at += tag.len();
                let body = &self.s[self.at..];
                match body.windows(tag.len()).position(|w| w == tag) {
                    Some(end) => self.at += end + tag.len(),
                    None => self.at = self.s.len(),
                }
                Token::Other
            }
            b'$' | b'0'..=b'9' => {
                self.at += 1;
                while self.at < self.s.len()
                    && (is_ident_char(self.s[self.at]) || self.s[self.at] == b'.')
                {
                    self.at += 1;
                }
                Token::Other
            }
            c if (c == b'e' || c == b'E') && self.peek(1) == b'\'' => {
                self.at += 1;
                self.string(true)
            }
            c if is_ident_start(c) => {
                while self.at < self.s.len() && is_ident_char(self.s[self.at]) {
                    self.at += 1;
                }
                Token::Word(&self.s[start..self.at])
            }
            c => {
                self.at += 1;
                Token::Punct(c)
            }
        })
    }

    fn string(&mut self, escapes: bool) -> Token<'a> {
        self.at += 1;
        let inner = self.until_quote(b'\'', escapes);
        Token::Str(inner)
    }

    /// Reads up to the closing `quote` (a doubled one is part of the text); with `escapes`,
    /// a backslash escapes the next character.
    fn until_quote(&mut self, quote: u8, escapes: bool) -> &'a [u8] {
        let start = self.at;
        while self.at < self.s.len() {
            let c = self.s[self.at];
            if escapes && c == b'\\' {
                self.at += 2;
                continue;
            }
            if c == quote {
                if self.peek(1) == quote {
                    self.at += 2;
                    continue;
                }
                let inner = &self.s[start..self.at];
                self.at += 1;
                return inner;
            }
            self.at += 1;
        }
        self.at = self.s.len();
        &self.s[start..]
    }

    /// `$tag$` or `$$` at the current position.
    fn dollar_tag(&self) -> Option<&'a [u8]> {
        let rest = &self.s[self.at..];
        let mut i = 1;
        if rest.get(1).is_some_and(|c| is_ident_start(*c)) {
            while rest.get(i).is_some_and(|c| is_ident_char(*c) && *c != b'$') {
                i += 1;
            }
        }
        (rest.get(i) == Some(&b'$')).then(|| &rest[..=i])
    }

    fn skip_space(&mut self) {
        loop {
            match (self.peek(0), self.peek(1)) {
                (c, _) if c.is_ascii_whitespace() && self.at < self.s.len() => self.at += 1,
                (b'-', b'-') => {
                    while self.at < self.s.len() && self.s[self.at] != b'\n' {
                        self.at += 1;
                    }
                }
                (b'/', b'*') => {
                    let mut depth = 0;
                    while self.at < self.s.len() {
                        if self.peek(0) == b'/' && self.peek(1) == b'*' {
                            depth += 1;
                            self.at += 2;
                        } else if self.peek(0) == b'*' && self.peek(1) == b'/' {
                            depth -= 1;
                            self.at += 2;
                            if depth == 0 {
                                break;
                            }
                        } else {
                            self.at += 1;
                        }
                    }
                }
                _ => return,
            }
        }
    }
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
    // Function calls anywhere in the statement.
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
                match t.get(i + 2) {
                    Some(Token::Str(name)) => fx
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
    false
}

/// Whether `word(` (after `before`) is a keyword, a type modifier, a table's column list
/// or a built-in function that cannot create session state. Anything else may be a user
/// function, whose body the scanner cannot see.
fn harmless_call(word: &[u8], before: &[Token<'_>]) -> bool {
    match before {
        // `pg_catalog.lower(`: a built-in; `app.f(`: anything.
        [.., schema, Token::Punct(b'.')] if !schema.is("pg_catalog") => return false,
        // `x::numeric(10, 2)`
        [.., Token::Punct(b':')] => return true,
        // `INSERT INTO t (a, b)`, `REFERENCES t (id)`, `CREATE TABLE t (...)`...
        [.., b]
            if [
                "into",
                "table",
                "references",
                "exists",
                "on",
                "index",
                "view",
                "type",
            ]
            .iter()
            .any(|k| b.is(k)) =>
        {
            return true
        }
        _ => {}
    }
    const HARMLESS: &[&str] = &[
        // keywords and clauses followed by a parenthesis
        "in",
        "values",
        "exists",
        "any",
        "all",
        "some",
        "array",
        "row",
        "cast",
        "as",
        "on",
        "using",
        "from",
        "join",
        "where",
        "and",
        "or",
        "not",
        "select",
        "returning",
        "set",
        "when",
        "then",
        "else",
        "over",
        "filter",
        "within",
        "lateral",
        "conflict",
        "key",
        "unique",
        "check",
        "primary",
        "default",
        "include",
        "partition",
        "by",
        "with",
        "distinct",
        "is",
        "between",
        "like",
        "ilike",
        "case",
        "table",
        "group",
        "order",
        "having",
        "limit",
        "offset",
        "union",
        "except",
        "intersect",
        "tablesample",
        "recursive",
        "materialized",
        "do",
        "update",
        "nulls",
        "only",
        "to",
        "for",
        // types with modifiers
        "numeric",
        "decimal",
        "varchar",
        "char",
        "character",
        "varying",
        "bit",
        "timestamp",
        "time",
        "interval",
        "float",
        "double",
        "precision",
        // built-in functions that cannot leave session state behind
        "count",
        "sum",
        "min",
        "max",
        "avg",
        "coalesce",
        "nullif",
        "greatest",
        "least",
        "now",
        "lower",
        "upper",
        "length",
        "substring",
        "substr",
        "position",
        "trim",
        "btrim",
        "ltrim",
        "rtrim",
        "replace",
        "concat",
        "concat_ws",
        "format",
        "extract",
        "date_trunc",
        "date_part",
        "to_char",
        "to_date",
        "to_timestamp",
        "to_number",
        "abs",
        "round",
        "floor",
        "ceil",
        "ceiling",
        "mod",
        "power",
        "sqrt",
        "random",
        "md5",
        "string_agg",
        "array_agg",
        "json_agg",
        "jsonb_agg",
        "json_build_object",
        "jsonb_build_object",
        "json_build_array",
        "jsonb_build_array",
        "row_to_json",
        "to_json",
        "to_jsonb",
        "jsonb_set",
        "json_object_agg",
        "jsonb_object_agg",
        "unnest",
        "generate_series",
        "array_length",
        "cardinality",
        "current_setting",
        "nextval",
        "currval",
        "setval",
        "lastval",
        "left",
        "right",
        "split_part",
        "strpos",
        "regexp_replace",
        "regexp_match",
        "regexp_matches",
        "octet_length",
        "char_length",
        "age",
        "make_interval",
        "encode",
        "decode",
        "gen_random_uuid",
        "uuid_generate_v4",
        "bool_and",
        "bool_or",
        "every",
        "row_number",
        "rank",
        "dense_rank",
        "lag",
        "lead",
        "first_value",
        "last_value",
        "ntile",
        "percentile_cont",
        "percentile_disc",
        "mode",
        "pg_backend_pid",
        "version",
        "current_database",
        "current_schema",
        "current_schemas",
        "pg_sleep",
        "txid_current",
        "clock_timestamp",
        "statement_timestamp",
        "transaction_timestamp",
        "timeofday",
        "pg_typeof",
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
        "pg_notify",
        "pg_listening_channels",
        "pg_my_temp_schema",
        "pg_is_other_temp_schema",
        "set_config",
        "to_tsvector",
        "to_tsquery",
        "plainto_tsquery",
        "websearch_to_tsquery",
        "ts_rank",
        "similarity",
        "exp",
        "ln",
        "log",
        "sign",
        "trunc",
        "width_bucket",
        "initcap",
        "repeat",
        "reverse",
        "lpad",
        "rpad",
        "translate",
        "chr",
        "ascii",
        "quote_ident",
        "quote_literal",
        "quote_nullable",
        "array_to_string",
        "string_to_array",
        "array_position",
        "array_remove",
        "array_append",
        "array_prepend",
        "array_cat",
        "jsonb_array_elements",
        "json_array_elements",
        "jsonb_each",
        "json_each",
        "jsonb_object_keys",
        "jsonb_typeof",
        "jsonb_array_length",
        "jsonb_extract_path_text",
        "json_extract_path_text",
        "jsonb_strip_nulls",
        "jsonb_path_query",
    ];
    let lower = String::from_utf8_lossy(word);
    HARMLESS.contains(&lower.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fx(sql: &str) -> Effects {
        effects(sql.as_bytes())
    }

    #[test]
    fn ordinary_queries_have_no_effects() {
        for sql in [
            "select 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "UPDATE t SET x = 1 WHERE id = 2",
            "select 'set search_path to x; listen y'",
            "select $$ create temp table x() $$",
            "select $f$ reset all $f$, 1",
            "-- set x = 1\nselect 1",
            "/* discard all /* nested */ listen c */ select 1",
            "select \"set\" from t",
            "SELECT temp FROM weather",
            "insert into settings(name) values ('a')",
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
            "PREPARE TRANSACTION 'x'",
            "SET LOCAL search_path TO a",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "INSERT INTO t (a, b) VALUES (1, now())",
            "SELECT count(*), coalesce(max(x), 0) FROM t WHERE id IN (1, 2)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SELECT x::numeric(10, 2) FROM t",
            "SELECT pg_catalog.lower('A')",
        ] {
            assert!(fx(sql).is_empty(), "{sql}: {:?}", fx(sql));
        }
    }

    #[test]
    fn finds_settings() {
        let e = fx("SET search_path TO a, \"B\"");
        assert!(e.settings && e.plain_set);
        assert_eq!(e.names, vec!["search_path"]);
        assert_eq!(e.resets, Resets::None);
        let e = fx("set session statement_timeout = '5s';");
        assert!(e.settings && e.plain_set);
        assert_eq!(e.names, vec!["statement_timeout"]);
        let e = fx("SET app.tenant_id = '7'; select 1");
        assert!(e.settings && !e.plain_set, "two statements");
        assert_eq!(e.names, vec!["app.tenant_id"]);
        let e = fx("SET TIME ZONE 'UTC'");
        assert!(e.plain_set);
        assert_eq!(e.names, vec!["timezone"]);
        let e = fx("SET ROLE limited");
        assert!(e.settings && !e.plain_set);
        let e = fx("SET SESSION AUTHORIZATION postgres");
        assert!(e.settings && !e.plain_set);
        assert_eq!(e.names, vec!["session_authorization"]);
        let e = fx("SET work_mem TO DEFAULT");
        assert!(e.settings && !e.plain_set);
        assert_eq!(e.resets, Resets::Names(vec!["work_mem".into()]));
        let e = fx("RESET search_path");
        assert_eq!(e.resets, Resets::Names(vec!["search_path".into()]));
        assert!(fx("reset all").resets == Resets::All);
        let e = fx("DISCARD ALL");
        assert!(e.discard_all && e.releases && e.resets == Resets::All);
        let e = fx("select pg_catalog.set_config('App.X', '1', false)");
        assert!(e.settings && !e.plain_set);
        assert_eq!(e.names, vec!["app.x"]);
        let e = fx("RESET SESSION AUTHORIZATION");
        assert_eq!(
            e.resets,
            Resets::Names(vec!["session_authorization".into()])
        );
        assert!(fx("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").settings);
    }

    #[test]
    fn finds_session_objects() {
        assert_eq!(fx("CREATE TEMP TABLE x (a int)").pins, pin::TEMP);
        assert_eq!(fx("create temporary view v as select 1").pins, pin::TEMP);
        assert_eq!(
            fx("create or replace temp view v as select 1").pins,
            pin::TEMP
        );
        assert_eq!(fx("CREATE TABLE pg_temp.x (a int)").pins, pin::TEMP);
        assert_eq!(fx("CREATE TABLE \"pg_temp\".x AS SELECT 1").pins, pin::TEMP);
        assert_eq!(fx("SELECT 1 AS a INTO pg_temp.x").pins, pin::TEMP);
        assert_eq!(fx("SELECT \"pg_advisory_lock\"(1)").pins, pin::ADVISORY);
        assert!(fx("SELECT \"MyFunc\"(1)").calls);
        assert!(fx("create table t (a int)").releases);
        assert_eq!(fx("select 1 as a into temp t").pins, pin::TEMP);
        assert_eq!(fx("select pg_advisory_lock(1)").pins, pin::ADVISORY);
        assert_eq!(
            fx("select pg_try_advisory_lock_shared(1, 2)").pins,
            pin::ADVISORY
        );
        assert_eq!(fx("select pg_advisory_xact_lock(1)").pins, 0);
        assert_eq!(fx("LISTEN chan").pins, pin::LISTEN);
        assert_eq!(
            fx("declare c cursor with hold for select 1").pins,
            pin::CURSOR
        );
        assert_eq!(fx("declare c cursor for select 1").pins, 0);
        let e = fx("PREPARE p (int) AS SELECT $1");
        assert!(e.sql_prepare && e.pins == pin::PREPARE);
        for sql in [
            "UNLISTEN *",
            "close c",
            "DEALLOCATE p",
            "select pg_advisory_unlock_all()",
            "DISCARD TEMP",
            "drop table x",
        ] {
            assert!(fx(sql).releases, "{sql}");
        }
    }

    #[test]
    fn finds_code_it_cannot_see_into() {
        assert!(fx("DO $$ BEGIN CREATE TEMP TABLE x(); END $$").calls);
        assert!(fx("call p()").calls);
        assert!(fx("select make_temp()").calls);
        assert!(fx("select public.make_temp(1)").calls);
        assert!(!fx("select count(*) from t").calls);
    }

    #[test]
    fn lexes_quotes_and_comments() {
        assert!(fx("select E'\\' ; set x = 1'").is_empty());
        assert!(fx("select 'it''s; set x = 1'").is_empty());
        assert!(fx("select \"a\"\"; set\" from t").is_empty());
        assert!(fx("select $a$ $b$ set x=1 $b$ $a$").is_empty());
        assert!(fx("select $1; select 2").is_empty());
        assert!(fx("select 1 /* unterminated set x = 1").is_empty());
        assert!(fx("select 1; -- set x = 1").is_empty());
        assert!(fx("select 1; set x.y = 1").settings);
    }
}
