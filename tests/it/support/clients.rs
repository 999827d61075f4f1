//! Clients for comparing the proxy with PostgreSQL itself: direct connections (as a tenant
//! would see the database, and as superuser), connections whose task the test controls
//! (to kill them abruptly, or to collect notices), simple-query results as comparable
//! text, and `psql` subprocesses with a clean environment.

use std::future::poll_fn;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

use super::{pg, pg_conn_str, ConnectError, CONNECT_TIMEOUT};

use pgtenant::localpg::LIBPQ_ENV;

/// A connection string straight to PostgreSQL as server user `app`, with the search_path
/// tenant `tenant` (t1..t4) gets through the proxy.
pub fn direct_str(tenant: &str) -> String {
    format!(
        "{} options='-c search_path={tenant},public'",
        pg_conn_str("app", "app_pw", "app")
    )
}

/// Connects straight to PostgreSQL as tenant `tenant` would see it (see [`direct_str`]).
pub async fn direct(tenant: &str) -> Client {
    super::connect(&direct_str(tenant))
        .await
        .unwrap_or_else(|e| panic!("direct connection as {tenant}: {e}"))
}

/// Connects straight to PostgreSQL as superuser `postgres`, database `app`.
pub async fn superuser() -> Client {
    super::connect(&pg_conn_str("postgres", "postgres", "app"))
        .await
        .unwrap_or_else(|e| panic!("superuser connection: {e}"))
}

/// A client whose connection task the test holds: aborting it closes the socket at once,
/// without a Terminate message (as a crashed client process would).
pub struct Killable {
    pub client: Client,
    pub task: JoinHandle<()>,
}

impl Killable {
    /// Closes the connection abruptly: no Terminate, just the socket going away.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        drop(self.client);
    }
}

pub async fn connect_killable(conn_str: &str) -> Result<Killable, ConnectError> {
    let connecting = tokio_postgres::connect(conn_str, NoTls);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((client, connection))) => {
            let task = tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Killable { client, task })
        }
        Ok(Err(e)) => Err(ConnectError::Postgres(e)),
        Err(_) => Err(ConnectError::TimedOut),
    }
}

/// Connects and drives the connection with `poll_message`, sending every notice as
/// `"SEVERITY CODE: message"` to the returned channel.
pub async fn connect_with_notices(
    conn_str: &str,
) -> Result<(Client, mpsc::UnboundedReceiver<String>), ConnectError> {
    let connecting = tokio_postgres::connect(conn_str, NoTls);
    let (client, mut connection) = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(ConnectError::Postgres(e)),
        Err(_) => return Err(ConnectError::TimedOut),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notice(n))) => {
                    let text = format!("{} {}: {}", n.severity(), n.code().code(), n.message());
                    let _ = tx.send(text);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    });
    Ok((client, rx))
}

/// A simple query's messages as comparable lines: `columns: a,b`, `row: 1|x|NULL`,
/// `complete: N`.
pub fn render(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match m {
            SimpleQueryMessage::RowDescription(columns) => format!(
                "columns: {}",
                columns
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            SimpleQueryMessage::Row(row) => format!(
                "row: {}",
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|")
            ),
            SimpleQueryMessage::CommandComplete(n) => format!("complete: {n}"),
            other => format!("other: {other:?}"),
        })
        .collect()
}

/// What one statement gave: its rendered messages, or the SQLSTATE of its error (or the
/// error text when it is not a server error).
pub async fn outcome(client: &Client, sql: &str) -> Result<Vec<String>, String> {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(render(&messages)),
        Err(e) => Err(e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| super::describe(&e))),
    }
}

/// A `psql` (the one matching the test server) with no libpq environment, no psqlrc, and a
/// connect timeout. Killed when dropped.
pub fn psql_cmd(conn: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(pg().psql_path());
    cmd.arg(conn)
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true);
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs a prepared `psql` command to the end (30 s at most) and returns its output.
pub async fn run_psql(mut cmd: tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("psql finished within 30s")
        .expect("psql ran")
}
