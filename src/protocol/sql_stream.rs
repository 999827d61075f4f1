//! The SQL scanner ([`super::sql`]) for texts too large to hold: a Query or Parse text that
//! streams through in pieces. [`StreamScan`] follows the same lexical rules as
//! [`super::sql`]'s lexer across piece boundaries (quotes, `E''` escapes, quoted identifiers,
//! dollar quotes, nested comments) and keeps, per statement, a *skeleton*: the code as
//! written, with comments left out and each string or quoted identifier cut to its first
//! [`KEEP_LITERAL`] bytes and each dollar-quoted body left empty. What makes a text large is
//! nearly always its literals, and [`super::sql::effects`] never needs more of a literal
//! than a setting's name. Each statement's skeleton is scanned as soon as its `;` arrives,
//! so memory is one statement's skeleton, at most [`MAX_SKELETON`] bytes. A statement whose
//! skeleton is larger than that cannot be inspected as a whole: it counts as [`unknown`]
//! (fail closed: the session reads its state back from the server and counts its objects
//! afterwards), and its skeleton is scanned in pieces cut between tokens for the setting
//! names and session objects it mentions (what that read-back needs to know of).

use super::sql::{self, Effects, Resets};

/// Bytes of a string constant or quoted identifier kept in the skeleton (setting names,
/// the only literals the scan reads, are far shorter).
pub const KEEP_LITERAL: usize = 256;
/// Largest skeleton of one statement that is inspected; a larger one is [`unknown`].
pub const MAX_SKELETON: usize = 64 * 1024;
/// Longest dollar-quote tag followed; a longer one makes the rest of the text [`unknown`].
const MAX_TAG: usize = 64;

/// What a statement the scan could not inspect may have done: anything the text of a
/// statement can do to a session (settings changed or reset, code the scanner cannot see
/// into, session objects made or dropped). The session then reads back the server's truth.
pub fn unknown() -> Effects {
    Effects {
        settings: true,
        resets: Resets::All,
        releases: true,
        calls: true,
        ..Effects::default()
    }
}

/// Where the lexer is between two pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tokens, or in a word or number ([`Word`]).
    Code,
    /// After a `-` (a comment if another follows).
    Dash,
    /// After a `/` (a comment if `*` follows).
    Slash,
    LineComment,
    /// Nested `/* */`; `pending` is a `/` or `*` that may start a pair.
    BlockComment {
        depth: u32,
        pending: u8,
    },
    /// In a string (`'`) or quoted identifier (`"`); `quote_seen`: the closing quote unless
    /// the next byte doubles it; `escaped`: the byte after a backslash (E'' strings).
    Quoted {
        quote: u8,
        escapes: bool,
        quote_seen: bool,
        escaped: bool,
    },
    /// After a `$` that starts a token: collecting a dollar-quote tag.
    DollarTag,
    /// In a dollar-quoted body; `matched` bytes of the closing tag seen.
    Dollar {
        matched: usize,
    },
    /// Lost track (an absurd dollar tag): the rest is [`unknown`].
    Lost,
}

/// The token the last code byte belongs to (what decides whether `$` or `'` start one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word {
    None,
    /// A word; `e`: it is exactly one `e`/`E` so far (`E'...'` is an escape string).
    Ident {
        e: bool,
    },
    /// Numbers and `$1` parameters (they take `.` too).
    Number,
}

/// Incremental [`sql::effects`] over a text that arrives in pieces. See the module docs.
#[derive(Debug)]
pub struct StreamScan {
    lex: Lex,
    word: Word,
    /// The current statement's skeleton.
    stmt: Vec<u8>,
    /// The current statement outgrew [`MAX_SKELETON`]: scanned in pieces, it is unknown.
    partial: bool,
    /// ... and could not even be cut between tokens: nothing more of it is kept.
    overflow: bool,
    /// Literal bytes kept of the current string/identifier.
    kept: usize,
    tag: Vec<u8>,
    fx: Effects,
}

impl Default for StreamScan {
    fn default() -> Self {
        StreamScan::new()
    }
}

impl StreamScan {
    pub fn new() -> Self {
        StreamScan {
            lex: Lex::Code,
            word: Word::None,
            stmt: Vec::new(),
            partial: false,
            overflow: false,
            kept: 0,
            tag: Vec::new(),
            fx: Effects::default(),
        }
    }

    /// Scans the next piece of the text.
    pub fn feed(&mut self, mut piece: &[u8]) {
        while let Some((&c, rest)) = piece.split_first() {
            // Long runs inside literals and comments are skipped in bulk.
            if let Some(skip) = self.bulk_skip(piece) {
                piece = &piece[skip..];
                continue;
            }
            piece = rest;
            self.byte(c);
        }
    }

    /// What the whole text does (as [`sql::effects`], except that a statement it could not
    /// inspect counts as [`unknown`] and the single-statement facts, `plain_set` and
    /// `listen`, are never claimed: the text was too large to be remembered or served).
    pub fn finish(mut self) -> Effects {
        match self.lex {
            Lex::DollarTag => {
                let tag = std::mem::take(&mut self.tag);
                self.extend(&tag);
            }
            Lex::Dash => self.push(b'-'),
            Lex::Slash => self.push(b'/'),
            Lex::Quoted {
                quote,
                quote_seen: true,
                ..
            } => self.push(quote),
            _ => {}
        }
        if self.lex == Lex::Lost {
            merge(&mut self.fx, unknown());
        } else {
            self.end_statement();
        }
        let mut fx = self.fx;
        fx.plain_set = false;
        fx.listen = None;
        fx
    }

    /// In a literal, comment or dollar body: how many bytes at the front of `piece` can be
    /// passed over at once (none of them can end it).
    fn bulk_skip(&mut self, piece: &[u8]) -> Option<usize> {
        let stop = match self.lex {
            Lex::Quoted {
                quote,
                escapes,
                quote_seen: false,
                escaped: false,
            } if self.kept >= KEEP_LITERAL => {
                if escapes {
                    memchr::memchr2(quote, b'\\', piece)
                } else {
                    memchr::memchr(quote, piece)
                }
            }
            Lex::LineComment => memchr::memchr(b'\n', piece),
            Lex::Dollar { matched: 0 } => memchr::memchr(b'$', piece),
            Lex::BlockComment { pending: 0, .. } => memchr::memchr2(b'*', b'/', piece),
            Lex::Lost => return Some(piece.len()),
            _ => return None,
        };
        match stop {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(piece.len()),
        }
    }

    fn byte(&mut self, c: u8) {
        match self.lex {
            Lex::Code => self.code(c),
            Lex::Dash => {
                if c == b'-' {
                    self.lex = Lex::LineComment;
                } else {
                    self.lex = Lex::Code;
                    self.push(b'-');
                    self.code(c);
                }
            }
            Lex::Slash => {
                if c == b'*' {
                    self.lex = Lex::BlockComment {
                        depth: 1,
                        pending: 0,
                    };
                } else {
                    self.lex = Lex::Code;
                    self.push(b'/');
                    self.code(c);
                }
            }
            Lex::LineComment => {
                if c == b'\n' {
                    self.lex = Lex::Code;
                    self.space();
                }
            }
            Lex::BlockComment { depth, pending } => {
                self.lex = match (pending, c) {
                    (b'/', b'*') => Lex::BlockComment {
                        depth: depth + 1,
                        pending: 0,
                    },
                    (b'*', b'/') if depth == 1 => {
                        self.space();
                        Lex::Code
                    }
                    (b'*', b'/') => Lex::BlockComment {
                        depth: depth - 1,
                        pending: 0,
                    },
                    (_, b'/' | b'*') => Lex::BlockComment { depth, pending: c },
                    _ => Lex::BlockComment { depth, pending: 0 },
                };
            }
            Lex::Quoted {
                quote,
                escapes,
                quote_seen,
                escaped,
            } => self.quoted(c, quote, escapes, quote_seen, escaped),
            Lex::DollarTag => self.dollar_tag(c),
            Lex::Dollar { matched } => {
                let matched = if c == self.tag[matched] {
                    matched + 1
                } else if c == b'$' {
                    1
                } else {
                    0
                };
                if matched == self.tag.len() {
                    let tag = std::mem::take(&mut self.tag);
                    self.extend(&tag);
                    self.tag = tag;
                    self.lex = Lex::Code;
                    self.word = Word::None;
                } else {
                    self.lex = Lex::Dollar { matched };
                }
            }
            Lex::Lost => {}
        }
    }

    /// A byte of code (not in a literal or comment).
    fn code(&mut self, c: u8) {
        let continues = match self.word {
            Word::Ident { .. } => is_ident_char(c),
            Word::Number => is_ident_char(c) || c == b'.',
            Word::None => false,
        };
        if continues {
            self.word = match self.word {
                Word::Ident { .. } => Word::Ident { e: false },
                w => w,
            };
            self.push(c);
            return;
        }
        let e_string = self.word == Word::Ident { e: true };
        self.word = Word::None;
        match c {
            b';' => {
                self.push(b';');
                self.end_statement();
            }
            b'\'' | b'"' => {
                self.push(c);
                self.kept = 0;
                self.lex = Lex::Quoted {
                    quote: c,
                    escapes: c == b'\'' && e_string,
                    quote_seen: false,
                    escaped: false,
                };
            }
            b'-' => self.lex = Lex::Dash,
            b'/' => self.lex = Lex::Slash,
            b'$' => {
                self.tag.clear();
                self.tag.push(b'$');
                self.lex = Lex::DollarTag;
            }
            b'0'..=b'9' => {
                self.word = Word::Number;
                self.push(c);
            }
            c if is_ident_start(c) => {
                self.word = Word::Ident {
                    e: c == b'e' || c == b'E',
                };
                self.push(c);
            }
            c if c.is_ascii_whitespace() => self.space(),
            c => self.push(c),
        }
    }

    fn quoted(&mut self, c: u8, quote: u8, escapes: bool, quote_seen: bool, escaped: bool) {
        let inside = |quote_seen, escaped| Lex::Quoted {
            quote,
            escapes,
            quote_seen,
            escaped,
        };
        if escaped {
            self.literal(&[b'\\', c]);
            self.lex = inside(false, false);
        } else if quote_seen {
            if c == quote {
                self.literal(&[quote, quote]);
                self.lex = inside(false, false);
            } else {
                self.push(quote);
                self.lex = Lex::Code;
                self.code(c);
            }
        } else if escapes && c == b'\\' {
            self.lex = inside(false, true);
        } else if c == quote {
            self.lex = inside(true, false);
        } else {
            self.literal(&[c]);
        }
    }

    fn dollar_tag(&mut self, c: u8) {
        let valid = if self.tag.len() == 1 {
            is_ident_start(c)
        } else {
            is_ident_char(c) && c != b'$'
        };
        if c == b'$' {
            self.tag.push(b'$');
            let tag = std::mem::take(&mut self.tag);
            self.extend(&tag);
            self.tag = tag;
            self.lex = Lex::Dollar { matched: 0 };
        } else if valid {
            self.tag.push(c);
            if self.tag.len() > MAX_TAG {
                self.lex = Lex::Lost;
            }
        } else {
            // Not a dollar quote: `$1`, or `$name` in a number-like token (as the lexer).
            let tag = std::mem::take(&mut self.tag);
            self.extend(&tag);
            self.tag = tag;
            self.lex = Lex::Code;
            self.word = Word::Number;
            self.code(c);
        }
    }

    /// Literal text: kept up to [`KEEP_LITERAL`] bytes (never half an escape or a doubled
    /// quote).
    fn literal(&mut self, bytes: &[u8]) {
        if self.kept + bytes.len() <= KEEP_LITERAL {
            self.kept += bytes.len();
            self.extend(bytes);
        } else {
            self.kept = KEEP_LITERAL;
        }
    }

    /// Whitespace (or a comment): one space in the skeleton.
    fn space(&mut self) {
        if self.stmt.last().is_some_and(|&b| b != b' ') {
            self.push(b' ');
        }
    }

    fn push(&mut self, c: u8) {
        self.extend(&[c]);
    }

    fn extend(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.stmt.len() + bytes.len() > MAX_SKELETON {
            if self.lex == Lex::Code && self.word == Word::None {
                self.spill();
            } else if self.stmt.len() + bytes.len() > 2 * MAX_SKELETON {
                self.overflow = true;
                self.stmt = Vec::new();
                return;
            }
        }
        self.stmt.extend_from_slice(bytes);
    }

    /// Scans the skeleton so far (cut between tokens) for what it names, and starts over.
    fn spill(&mut self) {
        let fx = sql::effects(&self.stmt);
        for name in fx.names {
            if !self.fx.names.contains(&name) {
                self.fx.names.push(name);
            }
        }
        self.fx.pins |= fx.pins;
        self.partial = true;
        self.stmt.clear();
    }

    fn end_statement(&mut self) {
        if self.partial || self.overflow {
            if !self.overflow && !self.stmt.is_empty() {
                self.spill();
            }
            merge(&mut self.fx, unknown());
        } else if !self.stmt.is_empty() {
            merge(&mut self.fx, sql::effects(&self.stmt));
        }
        self.stmt.clear();
        self.partial = false;
        self.overflow = false;
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Adds what one more statement does to `into`.
fn merge(into: &mut Effects, more: Effects) {
    into.settings |= more.settings;
    into.resets.merge(more.resets);
    for name in more.names {
        if !into.names.contains(&name) {
            into.names.push(name);
        }
    }
    into.pins |= more.pins;
    into.releases |= more.releases;
    into.discard_all |= more.discard_all;
    into.sql_prepare |= more.sql_prepare;
    into.calls |= more.calls;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The effects of `sql` fed in pieces of `chunk` bytes.
    fn streamed(sql: &[u8], chunk: usize) -> Effects {
        let mut scan = StreamScan::new();
        for piece in sql.chunks(chunk) {
            scan.feed(piece);
        }
        scan.finish()
    }

    /// What the whole-text scanner says, without the single-statement facts.
    fn whole(sql: &[u8]) -> Effects {
        let mut fx = Effects::default();
        // Per statement, as the stream does (the whole-text scan also splits at `;`).
        merge(&mut fx, sql::effects(sql));
        fx.plain_set = false;
        fx.listen = None;
        fx
    }

    #[test]
    fn agrees_with_the_whole_text_scan_however_split() {
        let texts: &[&[u8]] = &[
            b"select 1",
            b"SET search_path TO a, b",
            b"select 'x;y'; set app.v = 'q''z'; reset work_mem",
            b"select E'\\'; set x = 1' ; RESET ALL",
            b"select $$ set a = 1; $$; discard all",
            b"select $t$ $ $tt$ set a = 1 $t$, 2; LISTEN ch",
            b"/* set x /* nested */ = 1 */ select 1; -- set y = 2\n select set_config('app.v', '1', false)",
            b"select \"set\" from t; create temp table tt (a int)",
            b"select $1, a$b$ from t; select pg_advisory_lock(1)",
            b"select e'a\\\\'; declare c cursor with hold for select 1",
            b"select 1 - -1; select 2/3; select 4 -- x\n; set datestyle = iso",
            b"prepare p as select 1; call proc(); do $$ begin end $$",
            b"select f(x); select lower(y)",
        ];
        for text in texts {
            let expected = whole(text);
            for chunk in [1, 2, 3, 7, 1000] {
                assert_eq!(
                    streamed(text, chunk),
                    expected,
                    "{:?} in pieces of {chunk}",
                    String::from_utf8_lossy(text)
                );
            }
        }
    }

    /// Random texts of the characters that matter to the lexer, split at random: the same
    /// effects as the whole-text scan (literals here are shorter than what is kept).
    #[test]
    fn random_texts_agree_with_the_whole_text_scan() {
        use rand::{Rng, SeedableRng};
        let normal = |mut fx: Effects| {
            fx.names.sort();
            fx.names.dedup();
            if let Resets::Names(n) = &mut fx.resets {
                n.sort();
            }
            fx
        };
        let atoms: &[&[u8]] = &[
            b"'",
            b"\"",
            b"$",
            b"$$",
            b"$a$",
            b"-",
            b"--",
            b"/",
            b"/*",
            b"*/",
            b"*",
            b";",
            b"\\",
            b"e",
            b"E'",
            b" ",
            b"\n",
            b"1",
            b".",
            b"(",
            b")",
            b"set ",
            b"reset ",
            b"x",
            b"all",
            b"set_config(",
            b"temp ",
            b"create ",
            b"listen ",
            b"do ",
            b"pg_temp",
            b"=",
            b",",
            b"discard ",
            b"prepare ",
            b"search_path",
            b"a$b",
            b"''",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for _ in 0..20_000 {
            let n = rng.gen_range(1..24);
            let text: Vec<u8> = (0..n)
                .flat_map(|_| atoms[rng.gen_range(0..atoms.len())].iter().copied())
                .collect();
            let expected = normal(whole(&text));
            let mut scan = StreamScan::new();
            let mut rest = &text[..];
            while !rest.is_empty() {
                let k = rng.gen_range(1..=rest.len());
                scan.feed(&rest[..k]);
                rest = &rest[k..];
            }
            assert_eq!(
                normal(scan.finish()),
                expected,
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn large_literals_are_cut_and_a_set_after_them_is_seen() {
        let mut sql = b"select length('".to_vec();
        sql.extend(std::iter::repeat_n(b'x', 3 << 20));
        sql.extend_from_slice(b"'), $$");
        sql.extend(std::iter::repeat_n(b'$', 1000));
        sql.extend_from_slice(b" $$; set search_path = 'a'; select 1 /* ");
        sql.extend(std::iter::repeat_n(b'c', 100_000));
        sql.extend_from_slice(b" */");
        for chunk in [4096, 65_536, 1 << 20] {
            let mut scan = StreamScan::new();
            for piece in sql.chunks(chunk) {
                scan.feed(piece);
                assert!(scan.stmt.len() <= 1024, "the skeleton stays small");
            }
            let fx = scan.finish();
            assert!(fx.settings && !fx.calls, "{fx:?}");
            assert_eq!(fx.names, ["search_path"]);
        }
    }

    #[test]
    fn a_statement_too_large_to_inspect_is_unknown() {
        let mut sql = b"select 1".to_vec();
        for _ in 0..MAX_SKELETON {
            sql.extend_from_slice(b",1");
        }
        sql.extend_from_slice(b"; select 2");
        let fx = streamed(&sql, 8192);
        assert_eq!(fx, unknown());
        // The statement after it is inspected again.
        let mut more = sql.clone();
        more.extend_from_slice(b"; listen ch");
        assert_ne!(streamed(&more, 8192).pins, 0);
        // What it names is still found (so the session reads those settings back).
        let mut named = b"select set_config('app.v', 'x', false)".to_vec();
        named.extend_from_slice(&sql);
        let fx = streamed(&named, 8192);
        assert_eq!(fx.names, ["app.v"]);
        assert!(fx.calls && fx.settings, "{fx:?}");
        // A dollar tag longer than any real one loses track: unknown too.
        let mut tag = b"select $".to_vec();
        tag.extend(std::iter::repeat_n(b'a', 100));
        tag.extend_from_slice(b"$ x");
        assert_eq!(streamed(&tag, 10), unknown());
    }
}
