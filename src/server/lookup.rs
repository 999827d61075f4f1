//! Lookups of the proxy's own (the tenant directory): one query with one text parameter in
//! the extended protocol, on a connection no client ever uses.

use bytes::BytesMut;

use super::{ServerConn, ServerError, ServerProtocol};
use crate::protocol::backend::{self, Backend};
use crate::protocol::btag;

/// What a lookup returned: its columns (name, type OID) and its rows as text.
#[derive(Debug, Default)]
pub struct LookupRows {
    pub columns: Vec<(String, u32)>,
    pub rows: Vec<Vec<Option<String>>>,
    /// SQLSTATE and message of the error, if the query failed.
    pub error: Option<(String, String)>,
}

impl ServerConn {
    /// Runs `sql` with `param` bound as `$1` (Parse/Bind/Describe/Execute/Sync) and reads
    /// until ReadyForQuery. The text of `param` never becomes part of the SQL.
    pub async fn lookup(&mut self, sql: &str, param: &str) -> Result<LookupRows, ServerError> {
        let mut out = BytesMut::new();
        crate::protocol::encode::lookup(&mut out, sql, param.as_bytes());
        self.write_all(&out).await?;
        let mut result = LookupRows::default();
        loop {
            let msg = self.read_message().await?;
            match backend::decode(&msg).map_err(ServerProtocol::from)? {
                Backend::ReadyForQuery(_) => return Ok(result),
                Backend::Error(fields) => {
                    if matches!(fields.severity(), b"FATAL" | b"PANIC") {
                        self.mark_broken();
                    }
                    result.error = Some((fields.code().to_string(), fields.message()));
                }
                Backend::ParameterStatus { name, value } => {
                    let name = String::from_utf8_lossy(name).into_owned();
                    self.set_param(&name, value);
                }
                Backend::Other(btag::ROW_DESCRIPTION) => {
                    result.columns = backend::row_description(&msg)
                        .map_err(ServerProtocol::from)?
                        .into_iter()
                        .map(|(n, oid)| (String::from_utf8_lossy(n).into_owned(), oid))
                        .collect();
                }
                Backend::Other(btag::DATA_ROW) => result.rows.push(super::text_row(&msg)?),
                _ => {}
            }
        }
    }
}
