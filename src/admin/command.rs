//! The console's grammar: `SHOW what`, `PAUSE [tenant]`, `RESUME [tenant]`, `RELOAD`,
//! `KILL tenant`. Keywords are case-insensitive; a tenant is a bare word (taken exactly as
//! written, dots and all) or a double-quoted name (`""` inside is a quote). A query may hold
//! several commands separated by `;`.

use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    /// `None`: every tenant.
    Pause(Option<String>),
    Resume(Option<String>),
    Reload,
    Kill(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Tenants,
    Pools,
    Clients,
    Servers,
    Stats,
    Config,
    Version,
    Help,
}

impl Show {
    const ALL: [(&'static str, Show); 8] = [
        ("TENANTS", Show::Tenants),
        ("POOLS", Show::Pools),
        ("CLIENTS", Show::Clients),
        ("SERVERS", Show::Servers),
        ("STATS", Show::Stats),
        ("CONFIG", Show::Config),
        ("VERSION", Show::Version),
        ("HELP", Show::Help),
    ];
}

const HINT: &str = "SHOW HELP lists the commands";

/// Splits a query into statements at `;` outside quotes; empty statements are dropped.
pub fn split(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quote) = (0, None);
    for (i, c) in sql.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            (';', None) => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&sql[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses one statement.
pub fn parse(stmt: &str) -> Result<Command, ErrorInfo> {
    let words = tokens(stmt)?;
    let keyword = |i: usize| words.get(i).map(|w| w.text.to_ascii_uppercase());
    let name = |i: usize| words.get(i).map(|w| w.text.clone());
    let args = words.len().saturating_sub(1);
    let command = match keyword(0).as_deref() {
        Some("SHOW") => {
            let what = keyword(1).unwrap_or_default();
            let show = Show::ALL.iter().find(|(k, _)| *k == what).map(|(_, s)| *s);
            match show {
                Some(s) if args == 1 => Command::Show(s),
                Some(_) => return Err(extra(stmt)),
                None => {
                    return Err(syntax(format!("unknown SHOW item \"{what}\""))
                        .with_hint("SHOW TENANTS|POOLS|CLIENTS|SERVERS|STATS|CONFIG|VERSION|HELP"))
                }
            }
        }
        Some("PAUSE") if args <= 1 => Command::Pause(name(1)),
        Some("RESUME") if args <= 1 => Command::Resume(name(1)),
        Some("RELOAD") if args == 0 => Command::Reload,
        Some("KILL") if args == 1 => Command::Kill(name(1).unwrap_or_default()),
        Some("KILL") if args == 0 => {
            return Err(syntax("KILL needs a tenant: KILL tenant").with_hint(HINT))
        }
        Some("PAUSE" | "RESUME" | "RELOAD" | "KILL") => return Err(extra(stmt)),
        _ => {
            let first = words.first().map(|w| w.text.as_str()).unwrap_or(stmt);
            return Err(syntax(format!("unrecognized admin command \"{first}\"")).with_hint(HINT));
        }
    };
    Ok(command)
}

fn syntax(message: impl Into<String>) -> ErrorInfo {
    ErrorInfo::error(sqlstate::SYNTAX_ERROR, message)
}

fn extra(stmt: &str) -> ErrorInfo {
    syntax(format!("unexpected words in \"{stmt}\"")).with_hint(HINT)
}

struct Word {
    text: String,
}

/// Bare words and double-quoted names.
fn tokens(stmt: &str) -> Result<Vec<Word>, ErrorInfo> {
    let mut words = Vec::new();
    let mut chars = stmt.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut text = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        text.push('"');
                    }
                    Some('"') => break,
                    Some(c) => text.push(c),
                    None => return Err(syntax("unterminated quoted name")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' {
                    break;
                }
                text.push(c);
                chars.next();
            }
        }
        words.push(Word { text });
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("show tenants").unwrap(), Command::Show(Show::Tenants));
        assert_eq!(parse("SHOW  Stats").unwrap(), Command::Show(Show::Stats));
        assert_eq!(parse("PAUSE").unwrap(), Command::Pause(None));
        assert_eq!(
            parse("pause a.com").unwrap(),
            Command::Pause(Some("a.com".into()))
        );
        assert_eq!(
            parse("RESUME \"we\"\"ird name\"").unwrap(),
            Command::Resume(Some("we\"ird name".into()))
        );
        assert_eq!(parse("reload").unwrap(), Command::Reload);
        assert_eq!(parse("KILL t1").unwrap(), Command::Kill("t1".into()));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "SELECT 1",
            "SHOW",
            "SHOW users",
            "SHOW TENANTS x",
            "PAUSE a b",
            "KILL",
            "RELOAD now",
            "PAUSE \"open",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code, "42601", "{bad}");
            assert_eq!(e.severity, "ERROR", "{bad}");
        }
    }

    #[test]
    fn splits_statements() {
        assert_eq!(
            split("SHOW TENANTS; show pools;"),
            vec!["SHOW TENANTS", "show pools"]
        );
        assert_eq!(
            split("PAUSE \"a;b\"; RESUME"),
            vec!["PAUSE \"a;b\"", "RESUME"]
        );
        assert!(split(" ; ").is_empty());
    }
}
