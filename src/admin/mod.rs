//! The admin console: clients that log in to database [`ADMIN_DATABASE`] as one of
//! `admin_users` get a console over the simple query protocol instead of a tenant session.
//! Answers are real result sets (RowDescription/DataRow), so psql prints tables and drivers'
//! `simple_query` returns rows. One file per command; `command.rs` is the grammar, `table.rs`
//! the encoding.
//!
//! An unknown command or a bad argument is an ERROR and the console carries on. The
//! extended query protocol is refused (with an ERROR, then skipped up to Sync).

mod command;
mod kill;
mod pause;
mod reload;
mod resume;
mod show_clients;
mod show_config;
mod show_help;
mod show_pools;
mod show_servers;
mod show_stats;
mod show_tenants;
mod show_version;
mod table;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::protocol::backend::TxStatus;
use crate::protocol::encode::{self, ErrorInfo};
use crate::protocol::frontend::{self, Frontend};
use crate::protocol::sqlstate;
use crate::shared::{Generation, Shared};
use crate::tenant::TenantRuntime;
use crate::transport::stream::ClientStream;
use command::{Command, Show};
use table::Table;

/// The database name that means "the console".
pub const ADMIN_DATABASE: &str = "pgtenant";

/// What a command answers.
pub enum Reply {
    Table(Table),
    /// A command tag, after any notices (severity, message).
    Done {
        tag: &'static str,
        notices: Vec<(&'static str, String)>,
    },
}

impl Reply {
    fn done(tag: &'static str) -> Reply {
        Reply::Done {
            tag,
            notices: Vec::new(),
        }
    }

    fn encode(&self, buf: &mut BytesMut) {
        match self {
            Reply::Table(t) => t.encode(buf),
            Reply::Done { tag, notices } => {
                for (severity, message) in notices {
                    encode::notice(buf, severity, message);
                }
                encode::command_complete(buf, tag);
            }
        }
    }
}

/// Runs the console for an authenticated admin `user` until it leaves.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    shared: &Arc<Shared>,
    user: &str,
) {
    if greet(client).await.is_err() {
        return;
    }
    // After an extended-protocol message: skip until Sync (as PostgreSQL does after an error).
    let mut skipping = false;
    loop {
        let msg = tokio::select! {
            m = client.read_message() => m,
            _ = shared.shutdown.cancelled() => {
                let bye = ErrorInfo::fatal(sqlstate::ADMIN_SHUTDOWN, "terminating connection due to administrator command");
                let _ = client.send_error(&bye).await;
                return;
            }
        };
        let Ok(msg) = msg else { return };
        let out = match frontend::decode(&msg) {
            Ok(Frontend::Query { sql }) => {
                let sql = String::from_utf8_lossy(sql).into_owned();
                run_query(&mut client.wbuf, shared, user, &sql).await;
                true
            }
            Ok(Frontend::Terminate) => return,
            Ok(Frontend::Sync) => {
                skipping = false;
                encode::ready_for_query(&mut client.wbuf, TxStatus::Idle);
                true
            }
            Ok(Frontend::Flush | Frontend::CopyData | Frontend::CopyDone | Frontend::CopyFail) => {
                false
            }
            Ok(_) if skipping => false,
            Ok(Frontend::FunctionCall) => {
                encode::error_response(&mut client.wbuf, &simple_only());
                encode::ready_for_query(&mut client.wbuf, TxStatus::Idle);
                true
            }
            Ok(_) => {
                skipping = true;
                encode::error_response(&mut client.wbuf, &simple_only());
                true
            }
            Err(e) => {
                let _ = client
                    .send_error(&ErrorInfo::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        e.to_string(),
                    ))
                    .await;
                return;
            }
        };
        if out && client.flush().await.is_err() {
            return;
        }
    }
}

fn simple_only() -> ErrorInfo {
    ErrorInfo::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "the pgtenant console speaks the simple query protocol only",
    )
    .with_hint("use psql, or your driver's simple_query")
}

/// AuthenticationOk, a few parameters clients expect, a (useless) key, ReadyForQuery.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
) -> std::io::Result<()> {
    let out = &mut client.wbuf;
    encode::authentication_ok(out);
    let version = format!("{}/pgtenant", env!("CARGO_PKG_VERSION"));
    let params: [(&str, &str); 6] = [
        ("server_version", &version),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ];
    for (name, value) in params {
        encode::parameter_status(out, name.as_bytes(), value.as_bytes());
    }
    let key = crate::cancel::issue(0, |_| false);
    encode::backend_key_data(out, key.0, key.1);
    encode::ready_for_query(out, TxStatus::Idle);
    client.flush().await
}

/// Runs every command in `sql`; the first error ends the query (as in PostgreSQL).
async fn run_query(out: &mut BytesMut, shared: &Shared, user: &str, sql: &str) {
    let statements = command::split(sql);
    if statements.is_empty() {
        encode::empty_query(out);
    }
    for stmt in statements {
        let result = match command::parse(stmt) {
            Ok(cmd) => {
                if matches!(cmd, Command::Show(_)) {
                    tracing::debug!(user, command = ?cmd, "admin command");
                } else {
                    tracing::info!(user, command = ?cmd, "admin command");
                }
                execute(cmd, shared).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(reply) => reply.encode(out),
            Err(e) => {
                encode::error_response(out, &e);
                break;
            }
        }
    }
    encode::ready_for_query(out, TxStatus::Idle);
}

async fn execute(cmd: Command, shared: &Shared) -> Result<Reply, ErrorInfo> {
    let generation = shared.current();
    let table = match cmd {
        Command::Show(Show::Tenants) => show_tenants::run(&generation),
        Command::Show(Show::Pools) => show_pools::run(&generation),
        Command::Show(Show::Clients) => show_clients::run(shared),
        Command::Show(Show::Servers) => show_servers::run(shared, &generation),
        Command::Show(Show::Stats) => show_stats::run(&generation),
        Command::Show(Show::Config) => show_config::run(shared, &generation),
        Command::Show(Show::Version) => show_version::run(),
        Command::Show(Show::Help) => show_help::run(),
        Command::Pause(name) => return pause::run(&generation, name.as_deref()).await,
        Command::Resume(name) => return resume::run(&generation, name.as_deref()),
        Command::Reload => return reload::run(shared).await,
        Command::Kill(name) => return kill::run(shared, &generation, &name),
    };
    Ok(Reply::Table(table))
}

/// The tenant called `name`, or every tenant when `None`.
fn tenants_named(
    generation: &Generation,
    name: Option<&str>,
) -> Result<Vec<Arc<TenantRuntime>>, ErrorInfo> {
    let registry = &generation.registry;
    match name {
        Some(name) => match registry.get(name) {
            Some(t) => Ok(vec![t]),
            None => Err(ErrorInfo::error(
                sqlstate::INVALID_CATALOG_NAME,
                format!("tenant \"{name}\" does not exist"),
            )),
        },
        None => Ok(registry.all_tenants()),
    }
}
