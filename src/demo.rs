//! `pgtenant demo`: a throwaway local PostgreSQL with four schema-per-tenant tenants, the
//! proxy in front of it, and ready-to-paste `psql` lines. Ctrl-C (or SIGTERM) stops the
//! proxy and removes the server and its temp dir.

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

/// The port the demo proxy prefers (PgBouncer's); a random one if it is taken.
const PREFERRED_PORT: u16 = 6432;

/// Password of the demo's proxy user `app`.
const PROXY_PASSWORD: &str = "secret";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting the local PostgreSQL: {0}")]
    LocalPg(#[from] LocalPgError),
    #[error("the demo config does not load: {0}")]
    Config(#[from] ConfigError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the proxy stopped: {0}")]
    Proxy(std::io::Error),
    #[error("the proxy task failed: {0}")]
    ProxyTask(#[from] tokio::task::JoinError),
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run() -> Result<(), DemoError> {
    println!("Starting a throwaway PostgreSQL (initdb in a temp dir)...");
    let pg = tokio::task::spawn_blocking(start_postgres).await??;

    let listener = bind_listener().await?;
    let addr = listener.local_addr().map_err(|e| DemoError::Io {
        what: "proxy address",
        source: e,
    })?;
    let config = Config::from_toml_str(&config_toml(&pg, addr), "demo.toml")?;
    let shutdown = CancellationToken::new();
    let mut proxy = tokio::spawn(crate::run(listener, Arc::new(config), shutdown.clone()));

    print_banner(&pg, addr.port());
    tokio::select! {
        signal = wait_for_stop() => signal?,
        result = &mut proxy => {
            // The proxy ended on its own: report why, then clean up.
            pg_cleanup(pg).await;
            return match result? {
                Ok(()) => Ok(()),
                Err(e) => Err(DemoError::Proxy(e)),
            };
        }
    }
    println!("\nStopping: closing the proxy and removing the PostgreSQL temp dir...");
    shutdown.cancel();
    let result = proxy.await?;
    pg_cleanup(pg).await;
    result.map_err(DemoError::Proxy)
}

/// Starts the server and creates role `app`, database `app` and the tenant schemas.
fn start_postgres() -> Result<LocalPostgres, DemoError> {
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
    Ok(pg)
}

/// Drops the server off the async runtime (stopping it runs `pg_ctl`).
async fn pg_cleanup(pg: LocalPostgres) {
    // A failed join only means the drop panicked; nothing more to clean up then.
    let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
}

async fn bind_listener() -> Result<TcpListener, DemoError> {
    match TcpListener::bind(("127.0.0.1", PREFERRED_PORT)).await {
        Ok(listener) => Ok(listener),
        Err(_) => TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| DemoError::Io {
                what: "binding the proxy listener",
                source: e,
            }),
    }
}

/// The demo's `proxy.toml`, as text, so it goes through the same validation as a real one.
fn config_toml(pg: &LocalPostgres, listen: std::net::SocketAddr) -> String {
    let mut text = format!(
        "[proxy]\nlisten = \"{listen}\"\npool_mode = \"transaction\"\n\n\
         [backends.main]\nhost = \"{host}\"\nport = {port}\ndatabase = \"app\"\n\
         user = \"app\"\npassword = \"app_pw\"\npool_size = 4\n\n\
         [users.app]\npassword = \"{PROXY_PASSWORD}\"\ntenants = [\"*\"]\n",
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

fn print_banner(pg: &LocalPostgres, port: u16) {
    println!();
    println!("pgtenant demo is running.");
    println!("  proxy:      127.0.0.1:{port}  (user app, password {PROXY_PASSWORD})");
    println!(
        "  PostgreSQL: 127.0.0.1:{} ({}), data in {}",
        pg.port(),
        pg.version_num(),
        pg.data_dir().display()
    );
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
    println!("Press Ctrl-C to stop and remove everything.");
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_stop() -> Result<(), DemoError> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DemoError::Io {
            what: "listening for SIGTERM",
            source: e,
        })?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            result.map_err(|e| DemoError::Io { what: "listening for Ctrl-C", source: e })
        }
        _ = sigterm.recv() => Ok(()),
    }
}
