//! Configuration: `proxy.toml` parsed into raw serde structs ([`raw`]), then validated into
//! the typed [`Config`] the rest of the program uses. Validation checks references between
//! sections, parses durations, checks setting names, resolves `password_env` and turns every
//! user's password into the verifier form client authentication needs. Every error names the
//! file, the key and the problem.

mod auth;
pub mod dynamic;
mod raw;
mod secret;
mod summary;
pub mod tls;
mod validate;

#[cfg(test)]
mod doc_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use auth::{AuthLookupConfig, PassThrough};
pub use dynamic::{DirectoryConfig, TemplateConfig};
pub use secret::VerifierError;
pub use tls::{ClientTls, ServerTls, SslMode, TlsAcceptorConfig};
pub use validate::{auto_workers, is_setting_name, ConfigError};

/// The whole validated configuration. Cheap to share: wrap in an `Arc` (and swap on reload).
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub backends: BTreeMap<String, Arc<BackendConfig>>,
    pub users: BTreeMap<String, Arc<UserConfig>>,
    pub tenants: BTreeMap<String, Arc<TenantConfig>>,
    /// The other instances, by `instance_id`: where a cancel for their clients goes.
    pub peers: BTreeMap<u16, PeerConfig>,
    /// `[auth]`: users not in `[users]` are looked up in the database (`None`: they are not).
    pub auth_lookup: Option<AuthLookupConfig>,
    /// `[tenant_template]`: tenants made from their name on first use.
    pub tenant_template: Option<Arc<TemplateConfig>>,
    /// `[directory]`: tenants looked up in a table.
    pub directory: Option<Arc<DirectoryConfig>>,
}

/// The largest `instance_id`: it takes the 11 bits above the 20 random ones of a cancel
/// key's process id (which stays a positive `i32`).
pub const MAX_INSTANCE_ID: u16 = 2047;

/// `[peers.N]`: another pgtenant instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub host: String,
    pub port: u16,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
        Config::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` (usually the file name) prefixes errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        validate::parse(text, origin)
    }

    /// The server endpoint a tenant's connections go to: its backend, with the tenant's
    /// `database`/`user`/`password` overrides applied.
    pub fn endpoint_for(&self, tenant: &TenantConfig) -> EndpointConfig {
        let mut endpoint = self.backends[&tenant.backend].own_endpoint();
        if let Some(database) = &tenant.database {
            endpoint.database = database.clone();
        }
        if let Some(user) = &tenant.user {
            endpoint.user = user.clone();
            endpoint.password = tenant.password.clone();
        }
        endpoint
    }
}

impl BackendConfig {
    /// The backend's own database and login (what a tenant's `database`/`user` override).
    pub fn own_endpoint(&self) -> EndpointConfig {
        EndpointConfig {
            backend: self.name.clone(),
            host: self.host.clone(),
            port: self.port,
            database: self.database.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            pool_size: self.pool_size,
            min_pool_size: self.min_pool_size,
            tls: self.tls.clone(),
            pass_through: None,
        }
    }
}

/// `[proxy]`
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub pool_mode: PoolMode,
    /// Tried in order; the first method that names a tenant wins.
    pub tenant_from: Vec<TenantSource>,
    pub user_separator: String,
    /// For clients that name no tenant; `None` rejects them.
    pub default_tenant: Option<String>,
    pub auth: AuthMethod,
    pub search_path_sync: SearchPathSync,
    pub admin_users: Vec<String>,
    pub max_client_connections: usize,
    pub query_wait_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub server_idle_timeout: Duration,
    pub server_lifetime: Duration,
    /// `None` when configured as `"0s"` (off).
    pub idle_transaction_timeout: Option<Duration>,
    /// A client idle this long (between transactions) parks: it keeps its socket and its
    /// state but no task (see `session::park`). `None` when configured as `"0s"` (never).
    pub park_idle_clients_after: Option<Duration>,
    pub shutdown_timeout: Duration,
    /// From accepting a connection to the login reply (as PostgreSQL's
    /// `authentication_timeout`): a login still unfinished then is closed (08006).
    pub client_login_timeout: Duration,
    /// Connections still logging in (accepted, not yet answered AuthenticationOk), counted
    /// apart from `max_client_connections`: a new one beyond it drops the oldest, so a flood
    /// of unfinished logins cannot lock honest clients out.
    pub max_pending_logins: usize,
    pub metrics_listen: Option<SocketAddr>,
    /// Whether `/metrics` labels per-tenant series with `tenant` (off: sums over tenants).
    pub metrics_tenant_labels: bool,
    /// Largest message a logged-in client may send (PostgreSQL's own limit is 1 GB). Before
    /// login the limits are PostgreSQL's: 10,000 bytes for the startup packet, 65,535 for
    /// authentication messages. Messages larger than the proxy's inspection window stream
    /// through (see `session::linked::big`).
    pub max_message_size: usize,
    /// Per-server-connection LRU size of prepared statements (transaction mode).
    pub max_prepared_statements: usize,
    /// Per tenant: how many clients session objects (temp tables, session advisory locks,
    /// LISTEN, WITH HOLD cursors, SQL PREPARE) may keep on their server connection at once.
    pub max_pinned_clients: usize,
    /// Threads serving clients (resolved: `workers = 0` in the file is half the cores, at
    /// least one). One means a single-threaded runtime: a client, its server connection and
    /// every wakeup between them stay on one thread.
    pub workers: usize,
    /// This instance's id among its peers, encoded in the cancel keys it gives clients
    /// (0: a lone instance).
    pub instance_id: u16,
    /// SO_REUSEPORT on the listener: several processes may listen on one address.
    pub reuse_port: bool,
    /// Where this process answers a `--takeover` (see `takeover.rs`).
    pub takeover_socket: TakeoverSocket,
    /// Whether clients may or must use TLS (only with a certificate: see `tls`).
    pub client_tls: ClientTls,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// With `tenant_from` containing `sni`: what is cut off the TLS server name to leave the
    /// tenant's name.
    pub sni_suffix: String,
    /// The certificate loaded, when clients may use TLS (a cert is set, `client_tls` is not
    /// `disable`).
    pub tls: Option<Arc<TlsAcceptorConfig>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Transaction,
    Session,
}

impl PoolMode {
    /// Every value, in the order the docs list them.
    pub const ALL: [PoolMode; 2] = [PoolMode::Transaction, PoolMode::Session];

    /// The spelling used in `proxy.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSource {
    Options,
    User,
    Database,
    /// The TLS server name, minus `sni_suffix`.
    Sni,
}

impl TenantSource {
    /// Every value, in the order the docs list them.
    pub const ALL: [TenantSource; 4] = [
        TenantSource::Options,
        TenantSource::User,
        TenantSource::Database,
        TenantSource::Sni,
    ];

    /// The spelling used in `proxy.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantSource::Options => "options",
            TenantSource::User => "user",
            TenantSource::Database => "database",
            TenantSource::Sni => "sni",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ScramSha256,
    Md5,
    Trust,
}

impl AuthMethod {
    /// Every value, in the order the docs list them.
    pub const ALL: [AuthMethod; 3] = [AuthMethod::ScramSha256, AuthMethod::Md5, AuthMethod::Trust];

    /// The spelling used in `proxy.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Trust => "trust",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPathSync {
    Tracked,
    Always,
}

impl SearchPathSync {
    /// Every value, in the order the docs list them.
    pub const ALL: [SearchPathSync; 2] = [SearchPathSync::Tracked, SearchPathSync::Always];

    /// The spelling used in `proxy.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchPathSync::Tracked => "tracked",
            SearchPathSync::Always => "always",
        }
    }
}

/// `[backends.NAME]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    /// Resolved from `password` or `password_env`; `None` for trust servers.
    pub password: Option<String>,
    pub pool_size: usize,
    pub min_pool_size: usize,
    /// `sslmode` and its files.
    pub tls: ServerTls,
}

/// A server endpoint: (host, port, database, server user) plus how to log in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointConfig {
    /// Name of the backend it came from (for error messages).
    pub backend: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    pub pool_size: usize,
    pub min_pool_size: usize,
    pub tls: ServerTls,
    /// The login of an `[auth]` user's own endpoint: keys from the client's own login
    /// instead of a password (then `password` is `None`).
    pub pass_through: Option<PassThrough>,
}

/// `proxy.takeover_socket`: the Unix socket a new process takes this one over by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeoverSocket {
    Off,
    /// `/tmp/.s.PGTENANT.<port>`, the port the listener has.
    Auto,
    At(PathBuf),
}

impl TakeoverSocket {
    /// The socket's path for a listener on `port`.
    pub fn path(&self, port: u16) -> Option<PathBuf> {
        match self {
            TakeoverSocket::Off => None,
            TakeoverSocket::Auto => Some(PathBuf::from(format!("/tmp/.s.PGTENANT.{port}"))),
            TakeoverSocket::At(path) => Some(path.clone()),
        }
    }
}

/// `[users.NAME]`
#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    pub secret: UserSecret,
    pub tenants: TenantAllow,
}

/// How a user's password is stored.
#[derive(Clone)]
pub enum UserSecret {
    /// A plain password; `scram` is a verifier derived from it at load time.
    Plain {
        password: String,
        scram: ScramVerifier,
    },
    /// A `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey` verifier (SCRAM only).
    Scram(ScramVerifier),
    /// An `md5` + md5(password || user) hash (md5 only).
    Md5(String),
}

impl std::fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UserSecret::Plain { .. } => "Plain(<redacted>)",
            UserSecret::Scram(_) => "Scram(<redacted>)",
            UserSecret::Md5(_) => "Md5(<redacted>)",
        })
    }
}

/// The parts of a SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: usize,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Which tenants a user may act as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantAllow {
    All,
    Only(BTreeSet<String>),
}

impl TenantAllow {
    pub fn allows(&self, tenant: &str) -> bool {
        match self {
            TenantAllow::All => true,
            TenantAllow::Only(set) => set.contains(tenant),
        }
    }
}

/// `[tenants."NAME"]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    pub name: String,
    pub backend: String,
    pub search_path: Vec<String>,
    /// Extra GUCs applied at checkout, in file order. Names validated at load.
    pub settings: Vec<(String, String)>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub max_server_connections: Option<usize>,
    pub max_client_connections: Option<usize>,
}

impl TenantConfig {
    /// A tenant of `backend` with `search_path` and nothing else set.
    pub fn plain(name: &str, backend: &str, search_path: Vec<String>) -> TenantConfig {
        TenantConfig {
            name: name.to_string(),
            backend: backend.to_string(),
            search_path,
            settings: Vec::new(),
            database: None,
            user: None,
            password: None,
            max_server_connections: None,
            max_client_connections: None,
        }
    }
}
