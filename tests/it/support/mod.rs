//! Test support: one shared PostgreSQL for the whole test binary (with its fixture), an
//! in-process proxy per test ([`TestProxy`]), connection strings for each way of naming a
//! tenant, and connecting with a timeout.
//!
//! The server is started on first use and stopped by an `atexit` hook when the test binary
//! exits, so `cargo test` leaves no postgres processes behind.
#![allow(dead_code)] // Not every test module uses every helper.

pub mod binary;
pub mod clients;
pub mod ops;
pub mod tls;
pub mod watch;
pub mod wire;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pgtenant::config::Config;
use pgtenant::localpg::{LocalPgOptions, LocalPostgres};
use pgtenant::{Proxy, ProxyHandle};
use tokio::task::JoinHandle;
use tokio_postgres::error::DbError;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

/// Password of the proxy users `app` and `limited`.
pub const PROXY_PASSWORD: &str = "secret";

/// How long connecting (TCP + startup + auth) may take before a test gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const FIXTURE_SQL: &str = include_str!("fixture.sql");

static SHARED_PG: OnceLock<LocalPostgres> = OnceLock::new();

/// The PostgreSQL shared by every test in this binary, started (and the fixture applied) on
/// first use.
pub fn pg() -> &'static LocalPostgres {
    SHARED_PG.get_or_init(|| {
        let pg = LocalPostgres::start().unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
        pg.psql(FIXTURE_SQL)
            .unwrap_or_else(|e| panic!("applying the test fixture: {e}"));
        // SAFETY: registers a plain `extern "C" fn` with no arguments; always sound.
        unsafe { libc::atexit(stop_shared_pg) };
        eprintln!(
            "test PostgreSQL {} from {} on 127.0.0.1:{}",
            pg.version_num(),
            pg.bin_dir().display(),
            pg.port()
        );
        pg
    })
}

/// A key=value connection string straight to the shared PostgreSQL (bypassing the proxy),
/// e.g. `pg_conn_str("app", "app_pw", "app")` or as superuser `postgres`/`postgres`.
pub fn pg_conn_str(user: &str, password: &str, dbname: &str) -> String {
    let pg = pg();
    format!(
        "host={} port={} user={} password={} dbname={} connect_timeout=10",
        pg.host(),
        pg.port(),
        quote(user),
        quote(password),
        quote(dbname)
    )
}

/// A PostgreSQL of the test's own, with the fixture applied: for tests that stop or restart
/// the server (the shared one must stay up for everyone else). Stopped on drop.
pub fn own_pg() -> LocalPostgres {
    own_pg_with(LocalPgOptions::default())
}

/// [`own_pg`] with options (e.g. `.conf("synchronous_commit = on")`).
pub fn own_pg_with(options: LocalPgOptions) -> LocalPostgres {
    let pg =
        LocalPostgres::start_with(options).unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
    pg.psql(FIXTURE_SQL)
        .unwrap_or_else(|e| panic!("applying the test fixture: {e}"));
    pg
}

/// A PostgreSQL of the test's own whose `pg_hba.conf` starts with `hba_line` (e.g.
/// `"host all app 127.0.0.1/32 md5"`) and which stores passwords as `password_encryption`
/// (`"md5"` or `"scram-sha-256"`; the fixture's roles are created with it), with
/// `log_connections` on so the log names the method each login used
/// (`method=md5 (...pg_hba.conf:1)`).
pub fn own_pg_with_auth(hba_line: &str, password_encryption: &str) -> LocalPostgres {
    let pg = own_pg_with(
        LocalPgOptions::default()
            .conf(format!("password_encryption = '{password_encryption}'"))
            .conf("log_connections = on"),
    );
    let hba = pg.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    // Rewritten in place: the file keeps its owner (`postgres` when run as root).
    std::fs::write(&hba, format!("{hba_line}\n{rules}")).expect("write pg_hba.conf");
    // A restart rather than a reload: the rules are in force when it returns.
    pg.stop_immediate().expect("stop PostgreSQL");
    pg.start_again().expect("start PostgreSQL again");
    pg
}

/// Like [`pg_conn_str`], straight to the PostgreSQL `server` (e.g. from [`own_pg`]).
pub fn conn_str_to(server: &LocalPostgres, user: &str, password: &str, dbname: &str) -> String {
    format!(
        "host={} port={} user={} password={} dbname={} connect_timeout=10",
        server.host(),
        server.port(),
        quote(user),
        quote(password),
        quote(dbname)
    )
}

extern "C" fn stop_shared_pg() {
    if let Some(pg) = SHARED_PG.get() {
        pg.shutdown();
    }
}

/// A way for a client to name its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `options='-c tenant=X'`, database `app`.
    Options,
    /// user `app.X`, database `app`.
    User,
    /// database `X`.
    Database,
}

impl Naming {
    pub const ALL: [Naming; 3] = [Naming::Options, Naming::User, Naming::Database];

    /// (user, dbname, options) for `user` acting as `tenant`.
    fn startup(self, user: &str, tenant: &str) -> (String, String, Option<String>) {
        match self {
            Naming::Options => (
                user.into(),
                "app".into(),
                Some(format!("-c tenant={tenant}")),
            ),
            Naming::User => (format!("{user}.{tenant}"), "app".into(), None),
            Naming::Database => (user.into(), tenant.into(), None),
        }
    }
}

/// What the generated `proxy.toml` contains. The tenants, users and backend are always
/// there; these are the knobs tests turn.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `pool_size` of backend `main`.
    pub pool_size: usize,
    /// `"transaction"` | `"session"`.
    pub pool_mode: String,
    /// `"tracked"` | `"always"`.
    pub search_path_sync: String,
    /// `"scram-sha-256"` | `"md5"` | `"trust"`.
    pub auth: String,
    /// Extra `key = value` lines inside `[proxy]` (keys not set above or in
    /// [`ProxyOptions::timeouts`]).
    pub extra_proxy: String,
    /// Extra TOML after everything else (new sections: more tenants, users, backends).
    pub extra: String,
    /// `[proxy]` durations, fast by default; replace one with [`ProxyOptions::timeout`].
    pub timeouts: Vec<(&'static str, String)>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            pool_size: 2,
            pool_mode: "transaction".into(),
            search_path_sync: "tracked".into(),
            auth: "scram-sha-256".into(),
            extra_proxy: String::new(),
            extra: String::new(),
            timeouts: vec![
                ("query_wait_timeout", "10s".into()),
                ("server_connect_timeout", "3s".into()),
                ("shutdown_timeout", "1s".into()),
            ],
        }
    }
}

impl ProxyOptions {
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    pub fn pool_mode(mut self, mode: &str) -> Self {
        self.pool_mode = mode.into();
        self
    }

    pub fn search_path_sync(mut self, sync: &str) -> Self {
        self.search_path_sync = sync.into();
        self
    }

    pub fn auth(mut self, auth: &str) -> Self {
        self.auth = auth.into();
        self
    }

    /// Adds one raw line to `[proxy]`, e.g. `"max_client_connections = 2"`.
    pub fn proxy_line(mut self, line: &str) -> Self {
        self.extra_proxy.push_str(line);
        self.extra_proxy.push('\n');
        self
    }

    /// Sets one `[proxy]` duration, e.g. `timeout("query_wait_timeout", "500ms")`.
    pub fn timeout(mut self, key: &'static str, value: &str) -> Self {
        self.timeouts.retain(|(k, _)| *k != key);
        self.timeouts.push((key, value.into()));
        self
    }

    /// Appends raw TOML after everything else.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// The config text for a backend at `pg_host:pg_port`.
    pub fn toml(&self, pg_host: &str, pg_port: u16) -> String {
        let mut text = String::from("[proxy]\nlisten = \"127.0.0.1:0\"\n");
        text += &format!("pool_mode = \"{}\"\n", self.pool_mode);
        text += &format!("search_path_sync = \"{}\"\n", self.search_path_sync);
        text += &format!("auth = \"{}\"\n", self.auth);
        for (key, value) in &self.timeouts {
            text += &format!("{key} = \"{value}\"\n");
        }
        text += &self.extra_proxy;
        text += &format!(
            "\n[backends.main]\nhost = \"{pg_host}\"\nport = {pg_port}\ndatabase = \"app\"\n\
             user = \"app\"\npassword = \"app_pw\"\npool_size = {}\n",
            self.pool_size
        );
        text += "\n[users.app]\npassword = \"secret\"\ntenants = [\"*\"]\n";
        text += "\n[users.limited]\npassword = \"secret\"\ntenants = [\"t1\"]\n";
        for n in 1..=4 {
            text += &schema_tenant(n);
        }
        for n in 1..=4 {
            text += &format!(
                "\n[tenants.r{n}]\nbackend = \"main\"\nsearch_path = [\"public\"]\n\
                 settings = {{ \"app.tenant_id\" = \"{n}\" }}\n"
            );
        }
        for n in 5..=6 {
            text += &format!(
                "\n[tenants.t{n}]\nbackend = \"main\"\ndatabase = \"app_t{n}\"\n\
                 search_path = [\"public\"]\n"
            );
        }
        text += "\n[tenants.t7]\nbackend = \"main\"\nuser = \"tenant_t7\"\npassword = \"t7_pw\"\n\
                 search_path = [\"t7\"]\n";
        text += "\n";
        text += &self.extra;
        text
    }
}

/// The proxy running in-process on the test's tokio runtime. Dropping it cancels it;
/// [`TestProxy::stop`] also waits for it to drain. Either way, a panic or an ERROR logged in
/// the proxy's tasks during the test fails the test (see [`watch`]).
pub struct TestProxy {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// Reloads, stops, injects faults.
    pub handle: ProxyHandle,
    watch: watch::Watch,
    /// The config text it runs with (printed when a test fails to start it).
    pub config_text: String,
}

impl TestProxy {
    /// The standard config plus `extra_toml` appended (new sections).
    pub fn start(extra_toml: &str) -> TestProxy {
        TestProxy::start_with(ProxyOptions::default().extra(extra_toml))
    }

    /// Starts a proxy against the shared PostgreSQL. Call inside a tokio runtime.
    pub fn start_with(options: ProxyOptions) -> TestProxy {
        let pg = pg();
        TestProxy::start_on(options, pg.host(), pg.port())
    }

    /// Starts a proxy whose backend `main` is the PostgreSQL at `pg_host:pg_port` (e.g. a
    /// test's own [`own_pg`]). Call inside a tokio runtime.
    pub fn start_on(options: ProxyOptions, pg_host: &str, pg_port: u16) -> TestProxy {
        TestProxy::start_text(options.toml(pg_host, pg_port))
    }

    /// Starts a proxy with exactly this config text (e.g. [`ProxyOptions::toml`] edited).
    /// Call inside a tokio runtime.
    pub fn start_text(config_text: String) -> TestProxy {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy listener");
        TestProxy::start_text_on(config_text, std_listener)
    }

    /// [`TestProxy::start_text`] on a listener bound beforehand (so that another proxy's
    /// config can name its port).
    pub fn start_text_on(config_text: String, std_listener: std::net::TcpListener) -> TestProxy {
        let config = Config::from_toml_str(&config_text, "test.toml")
            .unwrap_or_else(|e| panic!("test config does not load: {e}\n---\n{config_text}"));
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let listener =
            tokio::net::TcpListener::from_std(std_listener).expect("listener into tokio");
        let shutdown = CancellationToken::new();
        let proxy = Proxy::new(Arc::new(config), None, shutdown.clone());
        TestProxy::serve(proxy, listener, shutdown, config_text)
    }

    /// Runs `proxy` (made with `shutdown`) on `listener`, watching its tasks.
    pub fn serve(
        proxy: Proxy,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
        config_text: String,
    ) -> TestProxy {
        let watch = watch::Watch::start();
        let addr = listener.local_addr().expect("listener address");
        let handle = proxy.handle();
        let task = tokio::spawn(proxy.serve(listener));
        TestProxy {
            addr,
            shutdown,
            task: Some(task),
            handle,
            watch,
            config_text,
        }
    }

    /// What went wrong inside the proxy's tasks so far (panics, ERROR logs).
    pub fn incidents(&self) -> Vec<String> {
        self.watch.incidents()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A key=value connection string (tokio-postgres and libpq) for `user` (password
    /// `secret`) acting as `tenant`, named by `naming`.
    pub fn connect_str(&self, user: &str, naming: Naming, tenant: &str) -> String {
        self.connect_str_with_password(user, PROXY_PASSWORD, naming, tenant)
    }

    pub fn connect_str_with_password(
        &self,
        user: &str,
        password: &str,
        naming: Naming,
        tenant: &str,
    ) -> String {
        let (user, dbname, options) = naming.startup(user, tenant);
        self.conn_params(&user, password, &dbname, options.as_deref())
    }

    /// A key=value connection string with exactly these startup values (e.g. no tenant).
    pub fn conn_params(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
        options: Option<&str>,
    ) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={} password={} dbname={} connect_timeout=10",
            self.port(),
            quote(user),
            quote(password),
            quote(dbname)
        );
        if let Some(options) = options {
            s += &format!(" options={}", quote(options));
        }
        s
    }

    /// A `postgres://` URL (for psql/libpq) for `user` (password `secret`) as `tenant`.
    pub fn url(&self, user: &str, naming: Naming, tenant: &str) -> String {
        let (user, dbname, options) = naming.startup(user, tenant);
        let mut url = format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            percent_encode(&user),
            percent_encode(PROXY_PASSWORD),
            self.port(),
            percent_encode(&dbname)
        );
        if let Some(options) = options {
            url += &format!("?options={}", percent_encode(&options));
        }
        url
    }

    /// Connects `user` (password `secret`) as `tenant`.
    pub async fn connect(
        &self,
        user: &str,
        naming: Naming,
        tenant: &str,
    ) -> Result<tokio_postgres::Client, ConnectError> {
        connect(&self.connect_str(user, naming, tenant)).await
    }

    /// Cancels the proxy, waits for it to drain (at most `shutdown_timeout`) and fails the
    /// test if anything went wrong inside its tasks.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        let result = match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        };
        self.watch.check();
        result
    }
}

impl Drop for TestProxy {
    /// Cancels the proxy and fails the test if anything went wrong inside its tasks so far
    /// (`stop` has checked already when it ran: `task` is then gone).
    fn drop(&mut self) {
        self.shutdown.cancel();
        if self.task.is_some() {
            self.watch.check();
        }
    }
}

/// Why a test connection failed: a server error (with SQLSTATE) or the timeout.
#[derive(Debug)]
pub enum ConnectError {
    Postgres(tokio_postgres::Error),
    TimedOut,
}

impl ConnectError {
    /// The SQLSTATE of the ErrorResponse, if the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ConnectError::Postgres(e) => e.code().map(|c| c.code()),
            ConnectError::TimedOut => None,
        }
    }

    /// The ErrorResponse's message, if the server sent one.
    pub fn message(&self) -> Option<&str> {
        match self {
            ConnectError::Postgres(e) => e.as_db_error().map(|d| d.message()),
            ConnectError::TimedOut => None,
        }
    }

    /// The ErrorResponse's hint, if it has one.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ConnectError::Postgres(e) => e.as_db_error().and_then(|d| d.hint()),
            ConnectError::TimedOut => None,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Postgres(e) => f.write_str(&describe(e)),
            ConnectError::TimedOut => write!(f, "timed out after {CONNECT_TIMEOUT:?} connecting"),
        }
    }
}

/// A tokio-postgres error as one readable line: `SEVERITY CODE: message` for a server
/// error, else the error and its causes (its `Display` alone says just "db error" or
/// "error connecting to server").
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// Connects with tokio-postgres (no TLS), spawning the connection task; gives up after
/// [`CONNECT_TIMEOUT`].
pub async fn connect(conn_str: &str) -> Result<tokio_postgres::Client, ConnectError> {
    let connecting = tokio_postgres::connect(conn_str, NoTls);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                // Errors surface on the client's next call.
                let _ = connection.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(ConnectError::Postgres(e)),
        Err(_) => Err(ConnectError::TimedOut),
    }
}

/// A client whose connection task's end the test can read. A FATAL sent between queries
/// (KILL, a removed tenant, a timeout) ends tokio-postgres's connection task with that
/// error, and the client's next query sees only "connection closed"; a FATAL that answers a
/// query is that query's error. [`Watched::closing_error`] finds it either way.
pub struct Watched {
    pub client: tokio_postgres::Client,
    ended: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl std::ops::Deref for Watched {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

/// Connects like [`connect`], keeping the connection task's result.
pub async fn connect_watched(conn_str: &str) -> Result<Watched, ConnectError> {
    let connecting = tokio_postgres::connect(conn_str, NoTls);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((client, connection))) => Ok(Watched {
            client,
            ended: tokio::spawn(connection),
        }),
        Ok(Err(e)) => Err(ConnectError::Postgres(e)),
        Err(_) => Err(ConnectError::TimedOut),
    }
}

impl Watched {
    /// The ErrorResponse that closed the connection: `query_err` itself when the query got
    /// it, else the one that ended the connection task. Fails the test when the connection
    /// closed with no ErrorResponse at all.
    pub async fn closing_error(self, query_err: &tokio_postgres::Error) -> DbError {
        self.end(query_err)
            .await
            .unwrap_or_else(|why| panic!("closed with no ErrorResponse: {why}"))
    }

    /// Asserts that the connection closed with no ErrorResponse at all.
    pub async fn closed_without_error(self, query_err: &tokio_postgres::Error) {
        if let Ok(db) = self.end(query_err).await {
            panic!(
                "expected a close with no ErrorResponse, got {} {}: {}",
                db.severity(),
                db.code().code(),
                db.message()
            );
        }
    }

    /// The closing ErrorResponse, or what happened instead.
    async fn end(self, query_err: &tokio_postgres::Error) -> Result<DbError, String> {
        if let Some(db) = query_err.as_db_error() {
            return Ok(db.clone());
        }
        let ended = tokio::time::timeout(CONNECT_TIMEOUT, self.ended)
            .await
            .unwrap_or_else(|_| panic!("the connection did not end: {}", describe(query_err)))
            .expect("connection task");
        let why = format!("query: {}", describe(query_err));
        match ended {
            Err(e) => e
                .as_db_error()
                .cloned()
                .ok_or_else(|| format!("{why}; connection: {}", describe(&e))),
            Ok(()) => Err(why),
        }
    }
}

/// Asserts that `db` is exactly `code` with `message`.
pub fn assert_db_error(db: &DbError, code: &str, message: &str) {
    assert_eq!(
        (db.code().code(), db.message()),
        (code, message),
        "{} {}: {}",
        db.severity(),
        db.code().code(),
        db.message()
    );
}

/// The server error in `e` (failing the test if `e` is not one), e.g. to compare its
/// SQLSTATE: `assert_eq!(db_error(&e).code().code(), "42P01")`.
pub fn db_error(e: &tokio_postgres::Error) -> &DbError {
    e.as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got: {}", describe(e)))
}

/// Waits for a condition: polls `check` every 20 ms until it holds, and returns how long
/// that took; fails the test naming `what` if it does not hold within `within`. The one way
/// tests wait (STYLE 20): for a condition, never for a fixed time.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// A client of `tenant` (named in `options`) as user `app`; panics when it cannot connect.
pub async fn tenant_client(proxy: &TestProxy, tenant: &str) -> tokio_postgres::Client {
    proxy
        .connect("app", Naming::Options, tenant)
        .await
        .unwrap_or_else(|e| panic!("connect as {tenant}: {e}"))
}

/// [`simple_value`], panicking on an error.
pub async fn value(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    simple_value(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
}

/// Runs `sql` as a simple query, panicking on an error.
pub async fn exec(client: &tokio_postgres::Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
}

/// The first column of the first row of a simple query's result, as text.
/// The config block of schema tenant `t{n}` (`search_path = ["t{n}", "public"]`), as
/// [`ProxyOptions::toml`] writes it for t1..t4.
pub fn schema_tenant(n: u32) -> String {
    format!("\n[tenants.t{n}]\nbackend = \"main\"\nsearch_path = [\"t{n}\", \"public\"]\n")
}

/// Which tenant the client's transactions run in (the `whoami` view of its schema).
pub async fn tenant_of(client: &tokio_postgres::Client) -> Option<String> {
    simple_value(client, "SELECT tenant FROM whoami")
        .await
        .unwrap()
}

pub async fn simple_value(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    let first = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
        _ => None,
    });
    Ok(first.flatten())
}

/// Quotes a value for a key=value connection string.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
