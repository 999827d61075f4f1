//! `pgtenant demo`: a throwaway local PostgreSQL with four schema-per-tenant tenants, the
//! proxy in front of it (with an admin console user and `/metrics`), the config it runs
//! written to a file, and ready-to-paste `psql` and `curl` lines. Ctrl-C (or SIGTERM) stops
//! the proxy and removes the server, its temp dir and the config (unless `--keep-config`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::localpg::{LocalPgError, LocalPostgres};

/// The demo's tenants; each is a schema holding a `customers` table.
const TENANTS: [(&str, [&str; 3]); 4] = [
    (
        "acme",
        ["Acme Anvils", "Acme Rockets", "Acme Giant Magnets"],
    ),
    (
        "globex",
        [
            "Globex Hammocks",
            "Globex Volcano Lair",
            "Globex Doomsday Devices",
        ],
    ),
    (
        "initech",
        [
            "Initech TPS Reports",
            "Initech Staplers",
            "Initech Printer Repair",
        ],
    ),
    (
        "umbrella",
        ["Umbrella Pharma", "Umbrella Hive Lab", "Umbrella Umbrellas"],
    ),
];

/// The port the demo proxy prefers (PgBouncer's); another one if it is taken.
const PREFERRED_PORT: u16 = 6432;

/// The port the demo's `/metrics` prefers (the one docs/OPERATIONS.md uses).
const PREFERRED_METRICS_PORT: u16 = 9930;

/// Password of the demo's proxy user `app`.
const PROXY_PASSWORD: &str = "secret";

/// The demo's admin console user (database `pgtenant`) and its password.
const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "admin_secret";

/// How `pgtenant demo` runs.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Write the config here (as `proxy.toml`) and keep it after the demo stops; by default
    /// it goes to a temp dir removed at exit.
    pub keep_config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting the local PostgreSQL: {0}")]
    LocalPg(#[from] LocalPgError),
    #[error("the demo config does not load: {0}")]
    Config(#[from] ConfigError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the proxy stopped: {0}")]
    Proxy(std::io::Error),
    #[error("the proxy task failed: {0}")]
    ProxyTask(#[from] tokio::task::JoinError),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Where the demo's config lives: a temp dir removed on drop, or a directory it keeps.
enum ConfigDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl ConfigDir {
    fn new(keep: Option<PathBuf>) -> Result<ConfigDir, DemoError> {
        match keep {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .map_err(io_error(format!("creating {}", dir.display())))?;
                Ok(ConfigDir::Kept(dir))
            }
            None => tempfile::Builder::new()
                .prefix("pgtenant-demo-")
                .tempdir()
                .map(ConfigDir::Temp)
                .map_err(io_error("creating a temp dir for the config")),
        }
    }

    fn file(&self) -> PathBuf {
        match self {
            ConfigDir::Temp(dir) => dir.path().join("proxy.toml"),
            ConfigDir::Kept(dir) => dir.join("proxy.toml"),
        }
    }
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(options: DemoOptions) -> Result<(), DemoError> {
    println!("Starting a throwaway PostgreSQL (initdb in a temp dir)...");
    let (pg, version) = tokio::task::spawn_blocking(start_postgres).await??;

    let listener = bind_listener(PREFERRED_PORT, "the proxy").await?;
    let metrics = bind_listener(PREFERRED_METRICS_PORT, "/metrics").await?;
    let addr = listener.local_addr().map_err(io_error("proxy address"))?;
    let metrics_addr = metrics.local_addr().map_err(io_error("metrics address"))?;

    let dir = ConfigDir::new(options.keep_config)?;
    let path = dir.file();
    std::fs::write(&path, config_toml(&pg, addr, metrics_addr))
        .map_err(io_error(format!("writing {}", path.display())))?;
    // Loaded from the file, as `pgtenant --config` would: what runs is what the file says,
    // and the console's RELOAD reads it again.
    let config = Config::load(&path)?;
    let shutdown = CancellationToken::new();
    let proxy = crate::Proxy::new(Arc::new(config), Some(path.clone()), shutdown.clone())
        .with_metrics_listener(metrics);
    let mut proxy = tokio::spawn(proxy.serve(listener));

    print_banner(&pg, &version, addr.port(), metrics_addr, &path, &dir);
    let ended = tokio::select! {
        signal = wait_for_stop() => { signal?; None }
        result = &mut proxy => Some(result),
    };
    let result = match ended {
        // The proxy ended on its own: report why, after cleaning up.
        Some(result) => result?.map_err(DemoError::Proxy),
        None => {
            println!("\nStopping: closing the proxy and removing the PostgreSQL temp dir...");
            shutdown.cancel();
            proxy.await?.map_err(DemoError::Proxy)
        }
    };
    pg_cleanup(pg).await;
    match &dir {
        ConfigDir::Temp(_) => println!("pgtenant demo stopped; everything it made is removed."),
        ConfigDir::Kept(_) => println!(
            "pgtenant demo stopped; everything it made is removed except {} (its backend, \
             this demo's PostgreSQL, is gone: point [backends.main] at your own).",
            path.display()
        ),
    }
    drop(dir);
    result
}

/// Starts the server and creates role `app`, database `app` and the tenant schemas; returns
/// the server with its version as PostgreSQL spells it (`SHOW server_version`).
fn start_postgres() -> Result<(LocalPostgres, String), DemoError> {
    let pg = LocalPostgres::start()?;
    pg.psql(
        "CREATE ROLE app LOGIN PASSWORD 'app_pw';\n\
         CREATE DATABASE app OWNER app;\n",
    )?;
    let mut sql = String::from("SET ROLE app;\n");
    for (tenant, customers) in TENANTS {
        sql += &format!("CREATE SCHEMA {tenant};\n");
        sql += &format!(
            "CREATE TABLE {tenant}.customers (id serial PRIMARY KEY, name text NOT NULL);\n"
        );
        for name in customers {
            sql += &format!("INSERT INTO {tenant}.customers (name) VALUES ('{name}');\n");
        }
    }
    pg.psql_db("app", &sql)?;
    let version = pg.psql("SHOW server_version")?.trim().to_string();
    Ok((pg, version))
}

/// Drops the server off the async runtime (stopping it runs `pg_ctl`).
async fn pg_cleanup(pg: LocalPostgres) {
    // A failed join only means the drop panicked; nothing more to clean up then.
    let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
}

/// Binds 127.0.0.1:`preferred`, or any free port if that fails, saying so and why.
async fn bind_listener(preferred: u16, what: &str) -> Result<TcpListener, DemoError> {
    let e = match TcpListener::bind(("127.0.0.1", preferred)).await {
        Ok(listener) => return Ok(listener),
        Err(e) => e,
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io_error(format!("binding a port for {what}")))?;
    if let Ok(addr) = listener.local_addr() {
        println!(
            "Port {preferred} is not available for {what} ({e}): using port {} instead.",
            addr.port()
        );
    }
    Ok(listener)
}

/// The demo's `proxy.toml`.
fn config_toml(
    pg: &LocalPostgres,
    listen: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
) -> String {
    let mut text = format!(
        "# Written by `pgtenant demo`; every key: docs/CONFIGURATION.md.\n\
         # Its backend is the demo's throwaway PostgreSQL: point [backends.main] at your own.\n\n\
         [proxy]\nlisten = \"{listen}\"\npool_mode = \"transaction\"\n\
         admin_users = [\"{ADMIN_USER}\"]\nmetrics_listen = \"{metrics}\"\n\n\
         [backends.main]\nhost = \"{host}\"\nport = {port}\ndatabase = \"app\"\n\
         user = \"app\"\npassword = \"app_pw\"\npool_size = 4\n\n\
         [users.app]\npassword = \"{PROXY_PASSWORD}\"\ntenants = [\"*\"]\n\n\
         [users.{ADMIN_USER}]\npassword = \"{ADMIN_PASSWORD}\"\ntenants = []\n",
        host = pg.host(),
        port = pg.port(),
    );
    for (tenant, _) in TENANTS {
        text += &format!(
            "\n[tenants.{tenant}]\nbackend = \"main\"\nsearch_path = [\"{tenant}\", \"public\"]\n"
        );
    }
    text
}

fn print_banner(
    pg: &LocalPostgres,
    version: &str,
    port: u16,
    metrics: std::net::SocketAddr,
    config: &Path,
    dir: &ConfigDir,
) {
    println!();
    println!("pgtenant demo is running.");
    println!("  proxy:      127.0.0.1:{port}  (user app, password {PROXY_PASSWORD})");
    println!(
        "  PostgreSQL: {version} on 127.0.0.1:{}, data in {}",
        pg.port(),
        pg.data_dir().display()
    );
    let kept = match dir {
        ConfigDir::Temp(_) => "removed at exit; `pgtenant demo --keep-config DIR` keeps it",
        ConfigDir::Kept(_) => "kept after exit",
    };
    println!("  config:     {} ({kept})", config.display());
    println!();
    println!("Each tenant sees only its own customers (pool of 4 shared by all four):");
    for (tenant, _) in TENANTS {
        println!(
            "  psql \"postgres://app:{PROXY_PASSWORD}@127.0.0.1:{port}/app?options=-c%20tenant%3D{tenant}\" \
             -c \"select * from customers\""
        );
    }
    println!();
    println!("Or name the tenant in the user name:");
    println!("  psql \"postgres://app.acme:{PROXY_PASSWORD}@127.0.0.1:{port}/app\" -c \"select * from customers\"");
    println!();
    println!("Admin console (user {ADMIN_USER}, password {ADMIN_PASSWORD}; SHOW HELP lists the commands):");
    println!("  psql \"postgres://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:{port}/pgtenant\" -c \"SHOW TENANTS\"");
    println!("Metrics (Prometheus text):");
    println!("  curl -s http://{metrics}/metrics");
    println!();
    println!("All four tenants share the server login `app`: a search_path is not a security");
    println!(
        "boundary (acme can `select * from globex.customers`); see README \"Security model\"."
    );
    println!();
    println!("Press Ctrl-C to stop and remove everything.");
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_stop() -> Result<(), DemoError> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io_error("listening for SIGTERM"))?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            result.map_err(io_error("listening for Ctrl-C"))
        }
        _ = sigterm.recv() => Ok(()),
    }
}
