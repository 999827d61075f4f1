//! One server connection: connecting, logging in (SCRAM-SHA-256, md5, cleartext or trust, as
//! the server asks), and the session state it carries, which decides whether a checkout must
//! re-apply tenant state.

mod health;
mod login;
mod lookup;
pub mod notify;
mod params;
pub mod passthrough;
mod reason;
pub mod tls;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub use tls::{ServerStream, ServerTlsError};

use crate::cancel::CancelKey;
use crate::config::EndpointConfig;
use crate::kinds::ConnectFailure;
use crate::pool::Poolable;
use crate::protocol::{DecodeError, FrameError, FrameScanner};

pub use health::Health;
pub use lookup::LookupRows;
pub use params::{tracked_name, Params, TRACKED_PARAMS};
pub use reason::FailureReason;

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

/// The settings that may cut any statement short whatever it does (`transaction_timeout`
/// exists from PostgreSQL 17).
pub const TIMEOUTS: [&str; 3] = ["statement_timeout", "lock_timeout", "transaction_timeout"];
/// Every bit of [`TIMEOUTS`].
pub const ALL_TIMEOUTS: u8 = 0b111;

/// Which of [`TIMEOUTS`] the setting `name` is (setting names are case-insensitive).
pub fn timeout_index(name: &str) -> Option<usize> {
    TIMEOUTS.iter().position(|t| t.eq_ignore_ascii_case(name))
}

/// Whether `name` is a role setting (`role`, `session_authorization`): a prelude sets them
/// last and resets them first, as a setting may need the login's privileges.
pub fn is_role_setting(name: &str) -> bool {
    name.eq_ignore_ascii_case("role") || name.eq_ignore_ascii_case("session_authorization")
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
    #[error("timed out connecting to {addr}")]
    Timeout { addr: String },
    /// TLS could not be set up (`sslmode`): the server declined, the handshake failed or
    /// its certificate did not verify.
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        source: ServerTlsError,
    },
    /// The server answered the login with an ErrorResponse.
    #[error("server refused login: {message} ({code})")]
    Refused { code: String, message: String },
    /// The SCRAM exchange with the server failed (wrong password, bad server proof).
    #[error("SCRAM authentication with the server failed: {0}")]
    Scram(io::Error),
    #[error("server login needs a password and the backend has none")]
    NoPassword,
    /// An `[auth]` user's own endpoint cannot log in the way the server asks.
    #[error("cannot pass the client's login through to the server: {0}")]
    PassThrough(&'static str),
    #[error("protocol error from server: {0}")]
    Protocol(#[from] ServerProtocol),
    #[error("I/O error on server connection: {0}")]
    Io(#[from] io::Error),
}

/// What the server said that the proxy cannot follow.
#[derive(Debug, thiserror::Error)]
pub enum ServerProtocol {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("unexpected {0}")]
    Unexpected(&'static str),
    #[error("unexpected message type {0:?} at login")]
    UnexpectedAtLogin(char),
    #[error("unsupported authentication method {0}")]
    UnsupportedAuth(i32),
    #[error("the LISTEN connection closed")]
    ListenClosed,
    #[error("LISTEN failed")]
    ListenFailed,
}

impl ServerError {
    /// The metric label (`pgtenant_server_connect_failures_total{kind}`).
    pub fn kind(&self) -> ConnectFailure {
        match self {
            ServerError::Connect { .. } => ConnectFailure::Connect,
            ServerError::Timeout { .. } => ConnectFailure::Timeout,
            ServerError::Tls { .. } => ConnectFailure::Tls,
            ServerError::Refused { code, .. } if code.starts_with("28") => ConnectFailure::Auth,
            ServerError::Refused { .. } => ConnectFailure::Refused,
            ServerError::Scram(_) | ServerError::NoPassword | ServerError::PassThrough(_) => {
                ConnectFailure::Auth
            }
            ServerError::Protocol(_) => ConnectFailure::Protocol,
            ServerError::Io(_) => ConnectFailure::Io,
        }
    }
}

impl ServerError {
    /// The reason a client may be told along with the backend's name (TLS problems: the
    /// operator's to fix, and nothing secret), if any.
    pub fn client_reason(&self) -> Option<String> {
        match self {
            ServerError::Tls { source, .. } => Some(source.to_string()),
            _ => None,
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What the proxy knows of the session state a server connection carries.
#[derive(Debug, Default)]
pub enum ConnState {
    /// A tenant state the proxy set (or read back): the next client in the same state needs
    /// nothing sent.
    Known(Held),
    /// Anything may be set: the next checkout re-establishes state from scratch (and cleans
    /// when another tenant gets it).
    #[default]
    Unknown,
    /// Must not be reused: closed when its client lets go of it.
    Broken,
}

/// A known state and what it consists of.
#[derive(Debug)]
pub struct Held {
    pub key: StateKey,
    /// The settings the state consists of: what a switch to another state resets, instead
    /// of `RESET ALL`.
    pub applied: SettingNames,
    /// The `search_path` the server reported once the state was set (PostgreSQL 18+).
    pub reported_search_path: Option<Vec<u8>>,
}

impl ConnState {
    pub fn key(&self) -> Option<&StateKey> {
        match self {
            ConnState::Known(held) => Some(&held.key),
            _ => None,
        }
    }

    pub fn held(&self) -> Option<&Held> {
        match self {
            ConnState::Known(held) => Some(held),
            _ => None,
        }
    }
}

/// The bytes in flight on a server connection: the relay reads and writes through these.
pub struct ServerIo {
    pub stream: ServerStream,
    /// Unconsumed bytes read from the server.
    pub rbuf: BytesMut,
    pub scanner: FrameScanner,
}

/// The server-side prepared statements a connection holds (names), least recently used
/// first out, at most `cap`.
pub struct StatementCache {
    names: lru::LruCache<bytes::Bytes, ()>,
    cap: usize,
}

impl StatementCache {
    fn new(cap: usize) -> Self {
        StatementCache {
            names: lru::LruCache::unbounded(),
            cap: cap.max(1),
        }
    }

    /// Whether the connection has `name` (and marks it used).
    pub fn has(&mut self, name: &[u8]) -> bool {
        self.names.get(name).is_some()
    }

    pub fn add(&mut self, name: bytes::Bytes) {
        self.names.put(name, ());
    }

    pub fn remove(&mut self, name: &[u8]) {
        self.names.pop(name);
    }

    pub fn clear(&mut self) {
        self.names.clear();
    }

    /// The least recently used name, taken out, while the cache is full.
    pub fn evict_if_full(&mut self) -> Option<bytes::Bytes> {
        if self.names.len() < self.cap {
            return None;
        }
        self.names.pop_lru().map(|(name, ())| name)
    }
}

/// A logged-in server connection. What decides its fate (its state, whether it is broken)
/// changes only through its methods.
pub struct ServerConn {
    id: u64,
    pub io: ServerIo,
    /// The server's own key, for forwarding cancels.
    backend_key: CancelKey,
    endpoint: Arc<EndpointConfig>,
    /// Reported parameter values as of now, and as of login (what `RESET ALL` returns to).
    params: Params,
    startup_params: Params,
    state: ConnState,
    /// Which of [`TIMEOUTS`] the state on the connection may have left short enough to cut
    /// the next client's prelude (bit `i`: `TIMEOUTS[i]`): all after anything the proxy
    /// does not know; what the last state set once it is known.
    short_timeouts: u8,
    statements: StatementCache,
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
            let stream = ServerStream::negotiate(stream, &endpoint)
                .await
                .map_err(|source| ServerError::Tls {
                    addr: addr.clone(),
                    source,
                })?;
            let mut conn = ServerConn {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                io: ServerIo {
                    stream,
                    rbuf: BytesMut::with_capacity(8192),
                    scanner: FrameScanner::new(max_message),
                },
                backend_key: (0, 0),
                endpoint: endpoint.clone(),
                params: Params::default(),
                startup_params: Params::default(),
                state: ConnState::Unknown,
                // The server's own defaults: a direct connection has them too.
                short_timeouts: 0,
                statements: StatementCache::new(max_prepared),
                created: Instant::now(),
                lifetime,
            };
            login::login(&mut conn).await?;
            conn.startup_params = conn.params.clone();
            Ok(conn)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ServerError::Timeout { addr }),
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

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The server's own cancel key (its process id first).
    pub fn backend_key(&self) -> CancelKey {
        self.backend_key
    }

    pub fn endpoint(&self) -> &Arc<EndpointConfig> {
        &self.endpoint
    }

    /// Reported parameters as the server last reported them.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Records a ParameterStatus.
    pub fn set_param(&mut self, name: &str, value: &[u8]) {
        self.params.set(name, value);
    }

    /// Reported parameters as of login.
    pub fn startup_params(&self) -> &Params {
        &self.startup_params
    }

    pub fn state(&self) -> &ConnState {
        &self.state
    }

    pub fn is_broken(&self) -> bool {
        matches!(self.state, ConnState::Broken)
    }

    /// The connection must not be reused (a FATAL, a lost stream, a state the proxy could
    /// not read or restore).
    pub fn mark_broken(&mut self) {
        self.state = ConnState::Broken;
    }

    /// The proxy no longer vouches for the connection's state (a broken one stays broken):
    /// any timeout may be set too.
    pub fn forget_state(&mut self) {
        if !self.is_broken() {
            self.state = ConnState::Unknown;
            self.short_timeouts = ALL_TIMEOUTS;
        }
    }

    /// The state is unknown (code the proxy cannot see into ran) but its settings were read
    /// back: `short_timeouts` are the timeouts among them that may cut a statement short.
    pub fn forget_state_but_timeouts(&mut self, short_timeouts: u8) {
        self.forget_state();
        self.short_timeouts = short_timeouts;
    }

    /// The connection now holds state `key`, made of the settings `applied`, of which
    /// `short_timeouts` may cut a statement short (a broken one stays broken).
    pub fn hold(&mut self, key: StateKey, applied: SettingNames, short_timeouts: u8) {
        if self.is_broken() {
            return;
        }
        let reported_search_path = self.params.get("search_path").map(|v| v.to_vec());
        self.state = ConnState::Known(Held {
            key,
            applied,
            reported_search_path,
        });
        self.short_timeouts = short_timeouts;
    }

    /// See [`ServerConn::short_timeouts`] (bits of [`TIMEOUTS`]).
    pub fn short_timeouts(&self) -> u8 {
        self.short_timeouts
    }

    /// The timeouts were set to 0 (the state's prelude puts them back as the next state
    /// has them).
    pub fn timeouts_lifted(&mut self) {
        self.short_timeouts = 0;
    }

    /// The server's major version (`server_version` as reported at login).
    pub fn server_major(&self) -> u32 {
        self.startup_params
            .get("server_version")
            .and_then(|v| {
                let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
                std::str::from_utf8(&v[..digits]).ok()?.parse().ok()
            })
            .unwrap_or(0)
    }

    /// After `DISCARD ALL` (or an equivalent reset): nothing of any client's is left.
    pub fn discarded(&mut self) {
        self.forget_state();
        self.short_timeouts = 0;
        self.statements.clear();
    }

    pub fn statements(&mut self) -> &mut StatementCache {
        &mut self.statements
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.stream.write_all(bytes).await?;
        // TLS may hold the last record back when the socket was full (no-op on TCP).
        self.io.stream.flush().await
    }
}

impl Poolable for ServerConn {
    type State = StateKey;

    fn state(&self) -> Option<&StateKey> {
        self.state.key()
    }

    fn reusable(&mut self) -> bool {
        if self.is_broken() || !self.io.rbuf.is_empty() || self.io.scanner.mid_message() {
            return false;
        }
        // An idle connection must have nothing to say: any bytes (a FATAL after
        // pg_terminate_backend, EOF after a restart) mean it is gone.
        self.io.stream.quiet()
    }

    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) >= self.lifetime
    }
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        // Best effort, never blocks: tell the server we are leaving.
        self.io.stream.try_terminate();
    }
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
            let decoded = backend::decode(&msg).map_err(ServerProtocol::from)?;
            match decoded {
                Backend::ReadyForQuery(status) => {
                    result.status = Some(status);
                    return Ok(result);
                }
                Backend::Error(fields) => {
                    if matches!(fields.severity(), b"FATAL" | b"PANIC") {
                        self.mark_broken();
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
                    result.rows.push(text_row(&msg)?);
                }
                Backend::Other(crate::protocol::btag::NOTIFICATION_RESPONSE) => {
                    result.notifications.push(msg);
                }
                _ => {}
            }
        }
    }
}

/// A DataRow's columns as text (NULL as `None`).
pub(crate) fn text_row(msg: &[u8]) -> Result<Vec<Option<String>>, ServerProtocol> {
    Ok(crate::protocol::backend::data_row(msg)
        .map_err(ServerProtocol::from)?
        .into_iter()
        .map(|c| c.map(|v| String::from_utf8_lossy(v).into_owned()))
        .collect())
}
