//! Named prepared statements in transaction mode.
//!
//! A client's statement names are its own; on the server every statement is named after
//! (tenant, query text, parameter types), so the clients of one tenant share a statement and
//! two tenants never do. Each server connection remembers (LRU) which of those it holds;
//! a Bind/Describe for one it lacks gets the Parse injected first.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::protocol::encode;

/// Prefix of every server-side statement name the proxy creates.
pub const SERVER_PREFIX: &str = "pgt_";

/// A statement as the server knows it.
#[derive(Debug)]
pub struct Stmt {
    /// `pgt_<32 hex>`.
    pub server_name: Bytes,
    /// The whole Parse message with the server name, ready to inject.
    pub parse: Bytes,
}

/// A client's named statements. Boxed once the first one exists: most clients (and most
/// idle ones) have none, and every client carries this.
#[derive(Debug, Default)]
pub struct ClientStatements {
    // The box is the point: an empty `HashMap` is 48 bytes inline, this is 8.
    #[allow(clippy::box_collection)]
    map: Option<Box<HashMap<Bytes, Arc<Stmt>>>>,
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Stmt>> {
        self.map.as_ref()?.get(name)
    }

    pub fn insert(&mut self, name: Bytes, stmt: Arc<Stmt>) {
        self.map.get_or_insert_default().insert(name, stmt);
    }

    /// Forgets `name` if it still maps to `server_name` (a failed Parse).
    pub fn forget_if(&mut self, name: &[u8], server_name: &[u8]) {
        if self.get(name).is_some_and(|s| s.server_name == server_name) {
            self.remove(name);
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.map
            .as_mut()
            .is_some_and(|map| map.remove(name).is_some())
    }

    pub fn clear(&mut self) {
        self.map = None;
    }

    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |map| map.len())
    }

    /// Every (client name, statement).
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Arc<Stmt>)> {
        self.map.iter().flat_map(|map| map.iter())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Builds the server statement for a client Parse of tenant `tenant`.
pub fn server_stmt(tenant: u64, sql: &[u8], types: &[u8]) -> Stmt {
    let digest = |salt: u8| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        tenant.hash(&mut h);
        sql.hash(&mut h);
        types.hash(&mut h);
        h.finish()
    };
    let name = format!("{SERVER_PREFIX}{:016x}{:016x}", digest(1), digest(2));
    let mut parse = BytesMut::with_capacity(5 + name.len() + sql.len() + types.len() + 2);
    encode::parse(&mut parse, name.as_bytes(), sql, types);
    Stmt {
        server_name: Bytes::from(name),
        parse: parse.freeze(),
    }
}

/// What a simple Query means for prepared statements.
#[derive(Debug, PartialEq, Eq)]
pub enum SqlStatement {
    /// `DEALLOCATE [PREPARE] name` (the name as PostgreSQL folds it) or `... ALL` (`None`).
    Deallocate(Option<Vec<u8>>),
    /// `PREPARE ...` (not supported in transaction mode).
    Prepare,
    Other,
}

/// Classifies a single-statement Query by its leading keyword(s).
pub fn classify_sql(sql: &[u8]) -> SqlStatement {
    // Most queries start with another keyword: no need to split words.
    if sql
        .first()
        .is_some_and(|c| c.is_ascii_alphabetic() && !matches!(c | 0x20, b'p' | b'd'))
    {
        return SqlStatement::Other;
    }
    let mut words = Words { rest: sql };
    let Some(first) = words.next() else {
        return SqlStatement::Other;
    };
    if first.eq_ignore_ascii_case(b"prepare") {
        return SqlStatement::Prepare;
    }
    if !first.eq_ignore_ascii_case(b"deallocate") {
        return SqlStatement::Other;
    }
    let mut name = words.next();
    if name.is_some_and(|w| w.eq_ignore_ascii_case(b"prepare")) {
        name = words.next();
    }
    let Some(name) = name else {
        return SqlStatement::Other;
    };
    if words.next().is_some() {
        return SqlStatement::Other;
    }
    if name.eq_ignore_ascii_case(b"all") {
        return SqlStatement::Deallocate(None);
    }
    let name = match name {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'"') => inner.to_vec(),
        n if n.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_') => n.to_ascii_lowercase(),
        _ => return SqlStatement::Other,
    };
    SqlStatement::Deallocate(Some(name))
}

/// Splits SQL into words, skipping whitespace, comments and a trailing `;`.
struct Words<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            match self.rest {
                [c, tail @ ..] if c.is_ascii_whitespace() || *c == b';' => self.rest = tail,
                [b'-', b'-', tail @ ..] => {
                    let end = tail
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(tail.len(), |p| p + 1);
                    self.rest = &tail[end..];
                }
                [b'/', b'*', tail @ ..] => {
                    let end = tail
                        .windows(2)
                        .position(|w| w == b"*/")
                        .map_or(tail.len(), |p| p + 2);
                    self.rest = &tail[end..];
                }
                [] => return None,
                _ => break,
            }
        }
        let quoted = self.rest.first() == Some(&b'"');
        let end = if quoted {
            self.rest[1..]
                .iter()
                .position(|&c| c == b'"')
                .map_or(self.rest.len(), |p| p + 2)
        } else {
            self.rest
                .iter()
                .position(|c| c.is_ascii_whitespace() || *c == b';')
                .unwrap_or(self.rest.len())
        };
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_depend_on_tenant_text_and_types() {
        let a = server_stmt(1, b"select 1", b"\0\0");
        assert_eq!(
            a.server_name,
            server_stmt(1, b"select 1", b"\0\0").server_name
        );
        assert_ne!(
            a.server_name,
            server_stmt(2, b"select 1", b"\0\0").server_name
        );
        assert_ne!(
            a.server_name,
            server_stmt(1, b"select 2", b"\0\0").server_name
        );
        assert_ne!(
            a.server_name,
            server_stmt(1, b"select 1", b"\0\x01\0\0\0\x17").server_name
        );
        let (name, sql, types) = crate::protocol::frontend::split_parse(&a.parse).unwrap();
        assert_eq!(
            (name, sql, types),
            (&a.server_name[..], &b"select 1"[..], &b"\0\0"[..])
        );
        assert_eq!(
            i32::from_be_bytes(a.parse[1..5].try_into().unwrap()) as usize,
            a.parse.len() - 1
        );
    }

    #[test]
    fn classifies_sql() {
        assert_eq!(
            classify_sql(b"DEALLOCATE S1"),
            SqlStatement::Deallocate(Some(b"s1".to_vec()))
        );
        assert_eq!(
            classify_sql(b" deallocate prepare \"S 1\";"),
            SqlStatement::Deallocate(Some(b"S 1".to_vec()))
        );
        assert_eq!(
            classify_sql(b"-- c\nDEALLOCATE ALL"),
            SqlStatement::Deallocate(None)
        );
        assert_eq!(
            classify_sql(b"/* x */ prepare p as select 1"),
            SqlStatement::Prepare
        );
        assert_eq!(
            classify_sql(b"DEALLOCATE s1; select 1"),
            SqlStatement::Other
        );
        assert_eq!(classify_sql(b"select 1"), SqlStatement::Other);
    }
}
