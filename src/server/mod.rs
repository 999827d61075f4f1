//! One server connection: connecting, logging in (SCRAM-SHA-256, md5, cleartext or trust, as
//! the server asks), and the session state it carries, which decides whether a checkout must
//! re-apply tenant state.

mod health;
mod login;
pub mod notify;
mod params;
mod reason;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::EndpointConfig;
use crate::pool::Poolable;
use crate::protocol::FrameScanner;

pub use health::Health;
pub use params::{tracked_name, Params, TRACKED_PARAMS};
pub use reason::ConnectFailure;

/// The names of the settings a state sets: the tenant's (`search_path` first) and the
/// client's own. Shared, so recording them on a connection is two reference counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingNames {
    pub tenant: Arc<[String]>,
    pub client: Arc<[String]>,
}

impl SettingNames {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.tenant
            .iter()
            .chain(self.client.iter())
            .map(String::as_str)
    }

    /// PostgreSQL setting names are case-insensitive.
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Which tenant state a connection holds, as far as the proxy knows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateKey {
    /// Identity of the tenant (unique per tenant in a loaded config).
    pub tenant: u64,
    /// Hash of the client settings applied after the tenant's own.
    pub client_settings: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("timed out connecting to {0}")]
    Timeout(String),
    #[error("server refused login: {0}")]
    Refused(String),
    #[error("server login needs a password and the backend has none")]
    NoPassword,
    #[error("protocol error from server: {0}")]
    Protocol(String),
    #[error("I/O error on server connection: {0}")]
    Io(#[from] io::Error),
}

impl ServerError {
    /// Short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerError::Connect { .. } => "connect",
            ServerError::Timeout(_) => "timeout",
            ServerError::Refused(_) => "refused",
            ServerError::NoPassword => "no_password",
            ServerError::Protocol(_) => "protocol",
            ServerError::Io(_) => "io",
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A logged-in server connection.
pub struct ServerConn {
    pub id: u64,
    pub stream: TcpStream,
    /// Unconsumed bytes read from the server.
    pub rbuf: BytesMut,
    pub scanner: FrameScanner,
    /// The server's own key, for forwarding cancels.
    pub backend_key: (i32, i32),
    pub endpoint: Arc<EndpointConfig>,
    /// Reported parameter values as of now, and as of login (what `RESET ALL` returns to).
    pub params: Params,
    pub startup_params: Params,
    /// `None` = unknown: the next checkout must re-apply state.
    pub state: Option<StateKey>,
    /// The settings `state` consists of (meaningful while `state` is known): what a switch
    /// to another state resets, instead of `RESET ALL`.
    pub applied: SettingNames,
    /// The `search_path` the server reported after the proxy last set it (PostgreSQL 18+).
    pub reported_search_path: Option<Vec<u8>>,
    /// Set when the connection must not be reused.
    pub broken: bool,
    /// Server-side prepared statements this connection holds (names), least recently used
    /// first out; kept at most `max_prepared`.
    pub prepared: lru::LruCache<bytes::Bytes, ()>,
    pub max_prepared: usize,
    created: Instant,
    lifetime: Duration,
}

impl ServerConn {
    /// Connects and logs in, within `timeout`.
    pub async fn connect(
        endpoint: Arc<EndpointConfig>,
        timeout: Duration,
        lifetime: Duration,
        max_message: usize,
        max_prepared: usize,
    ) -> Result<ServerConn, ServerError> {
        let addr = format!("{}:{}", endpoint.host, endpoint.port);
        let work = async {
            let stream =
                TcpStream::connect(&addr)
                    .await
                    .map_err(|source| ServerError::Connect {
                        addr: addr.clone(),
                        source,
                    })?;
            stream.set_nodelay(true)?;
            let mut conn = ServerConn {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                stream,
                rbuf: BytesMut::with_capacity(8192),
                scanner: FrameScanner::new(max_message),
                backend_key: (0, 0),
                endpoint: endpoint.clone(),
                params: Params::default(),
                startup_params: Params::default(),
                state: None,
                applied: SettingNames::default(),
                reported_search_path: None,
                broken: false,
                prepared: lru::LruCache::unbounded(),
                max_prepared: max_prepared.max(1),
                created: Instant::now(),
                lifetime,
            };
            login::login(&mut conn).await?;
            conn.startup_params = conn.params.clone();
            Ok(conn)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ServerError::Timeout(addr)),
        }
    }

    /// Connects and logs in with the `[proxy]` limits.
    pub async fn open(
        endpoint: Arc<EndpointConfig>,
        proxy: &crate::config::ProxyConfig,
    ) -> Result<ServerConn, ServerError> {
        ServerConn::connect(
            endpoint,
            proxy.server_connect_timeout,
            proxy.server_lifetime,
            proxy.max_message_size,
            proxy.max_prepared_statements,
        )
        .await
    }

    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }
}

impl Poolable for ServerConn {
    type State = StateKey;

    fn state(&self) -> Option<&StateKey> {
        self.state.as_ref()
    }

    fn reusable(&mut self) -> bool {
        if self.broken || !self.rbuf.is_empty() || self.scanner.mid_message() {
            return false;
        }
        // An idle connection must have nothing to say: any bytes (a FATAL after
        // pg_terminate_backend, EOF after a restart) mean it is gone.
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) >= self.lifetime
    }
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        // Best effort, never blocks: tell the server we are leaving.
        let _ = self.stream.try_write(b"X\0\0\0\x04");
    }
}

/// Sends a CancelRequest for `key` to the server at `endpoint`.
pub async fn send_cancel(endpoint: &EndpointConfig, key: (i32, i32)) -> io::Result<()> {
    let mut stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
    let mut buf = BytesMut::with_capacity(16);
    crate::protocol::encode::cancel_request(&mut buf, key.0, key.1);
    stream.write_all(&buf).await?;
    stream.shutdown().await
}

/// What a query the proxy runs for itself returned (see [`ServerConn::own_query`]).
#[derive(Debug, Default)]
pub struct OwnQuery {
    /// Text columns of each row.
    pub rows: Vec<Vec<Option<String>>>,
    /// SQLSTATE of the first error, if any.
    pub error: Option<String>,
    /// Notifications that arrived meanwhile: the linked client's, to be passed on.
    pub notifications: Vec<BytesMut>,
    /// The transaction status the query left.
    pub status: Option<crate::protocol::backend::TxStatus>,
}

impl ServerConn {
    /// Runs `sql` (a simple Query of the proxy's own) and reads until its ReadyForQuery;
    /// nothing of it reaches a client. Reported parameters are recorded.
    pub async fn own_query(&mut self, sql: &str) -> Result<OwnQuery, ServerError> {
        use crate::protocol::backend::{self, Backend};
        let mut out = BytesMut::new();
        crate::protocol::encode::query(&mut out, sql);
        self.write_all(&out).await?;
        let mut result = OwnQuery::default();
        loop {
            let msg = self.read_message().await?;
            let decoded = backend::decode(&msg).map_err(|e| ServerError::Protocol(e.into()))?;
            match decoded {
                Backend::ReadyForQuery(status) => {
                    result.status = Some(status);
                    return Ok(result);
                }
                Backend::Error(fields) => {
                    if matches!(fields.severity(), b"FATAL" | b"PANIC") {
                        self.broken = true;
                    }
                    result
                        .error
                        .get_or_insert_with(|| fields.code().to_string());
                }
                Backend::ParameterStatus { name, value } => {
                    let name = String::from_utf8_lossy(name).into_owned();
                    self.params.set(&name, value);
                }
                Backend::Other(crate::protocol::btag::DATA_ROW) => {
                    let row = backend::data_row(&msg)
                        .map_err(|e| ServerError::Protocol(e.into()))?
                        .into_iter()
                        .map(|c| c.map(|v| String::from_utf8_lossy(v).into_owned()))
                        .collect();
                    result.rows.push(row);
                }
                Backend::Other(crate::protocol::btag::NOTIFICATION_RESPONSE) => {
                    result.notifications.push(msg);
                }
                _ => {}
            }
        }
    }
}
