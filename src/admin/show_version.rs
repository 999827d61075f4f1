//! `SHOW VERSION`

use super::table::{Table, Type};

pub fn run() -> Table {
    let mut table = Table::new(&[("version", Type::Text)]);
    table.push(vec![
        format!("pgtenant {}", env!("CARGO_PKG_VERSION")).into()
    ]);
    table
}
