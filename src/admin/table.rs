//! Console results as tables of typed cells, sent as PostgreSQL sends them (RowDescription,
//! DataRow in text format, CommandComplete: encoded in [`crate::protocol::encode`]), so psql
//! prints tables and drivers' `simple_query` returns rows.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>

use bytes::BytesMut;

use crate::protocol::encode;

/// Column types (OIDs from `pg_type`), so clients align and parse values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Text,
    Int8,
    Bool,
}

impl Type {
    fn oid(self) -> i32 {
        match self {
            Type::Bool => 16,
            Type::Int8 => 20,
            Type::Text => 25,
        }
    }

    fn len(self) -> i16 {
        match self {
            Type::Bool => 1,
            Type::Int8 => 8,
            Type::Text => -1,
        }
    }
}

/// One value, in text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Text(String),
    Int(i64),
    Bool(bool),
    Null,
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_string())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Cell {
        Cell::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Cell {
    fn from(n: usize) -> Cell {
        Cell::from(n as u64)
    }
}

impl From<i64> for Cell {
    fn from(n: i64) -> Cell {
        Cell::Int(n)
    }
}

impl From<bool> for Cell {
    fn from(b: bool) -> Cell {
        Cell::Bool(b)
    }
}

impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Cell {
        v.map_or(Cell::Null, Into::into)
    }
}

/// A result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    columns: Vec<(&'static str, Type)>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Type)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column.
    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width");
        self.rows.push(row);
    }

    pub fn rows(&self) -> &[Vec<Cell>] {
        &self.rows
    }

    /// RowDescription, a DataRow per row, CommandComplete `SHOW`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let columns: Vec<encode::Column<'_>> = self
            .columns
            .iter()
            .map(|(name, ty)| encode::Column {
                name,
                type_oid: ty.oid(),
                type_len: ty.len(),
            })
            .collect();
        encode::row_description(buf, &columns);
        for row in &self.rows {
            let texts: Vec<Option<String>> = row.iter().map(Cell::text).collect();
            encode::data_row(buf, texts.iter().map(|t| t.as_deref().map(str::as_bytes)));
        }
        encode::command_complete(buf, "SHOW");
    }
}

impl Cell {
    /// The value in text format (`None`: NULL).
    fn text(&self) -> Option<String> {
        match self {
            Cell::Text(s) => Some(s.clone()),
            Cell::Int(n) => Some(n.to_string()),
            Cell::Bool(b) => Some(if *b { "t" } else { "f" }.to_string()),
            Cell::Null => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_table() {
        let mut t = Table::new(&[("name", Type::Text), ("n", Type::Int8)]);
        t.push(vec!["a".into(), 7u64.into()]);
        t.push(vec![Cell::Null, Cell::Bool(true)]);
        let mut buf = BytesMut::new();
        t.encode(&mut buf);
        assert_eq!(buf[0], b'T');
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let rest = &buf[1 + len..];
        assert_eq!(&rest[..1], b"D");
        // DataRow: 2 columns, "a" then "7".
        assert_eq!(&rest[5..7], &[0, 2]);
        assert_eq!(&rest[7..12], b"\0\0\0\x01a");
        assert_eq!(&rest[12..17], b"\0\0\0\x017");
        assert!(buf.ends_with(b"C\0\0\0\x09SHOW\0"));
    }
}
