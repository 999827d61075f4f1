//! The scanner's lexer: PostgreSQL's lexical rules, as far as the scan needs them.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Token<'a> {
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
    pub(super) fn is(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword.as_bytes()))
    }

    /// A name as PostgreSQL folds it: an unquoted word in lower case, a quoted one as is.
    pub(super) fn name(&self) -> Option<Vec<u8>> {
        match self {
            Token::Word(w) => Some(w.to_ascii_lowercase()),
            Token::Ident(w) => Some(w.to_vec()),
            _ => None,
        }
    }
}

pub(super) struct Lexer<'a> {
    pub(super) s: &'a [u8],
    pub(super) at: usize,
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

    pub(super) fn next(&mut self) -> Option<Token<'a>> {
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
