//! LISTEN/NOTIFY for clients in transaction mode, without a server connection per listener:
//! one connection per endpoint (the *hub*) LISTENs on the union of its clients' channels and
//! fans each notification out to the clients listening on its channel, in the order the
//! server sent them. Channels are the server's: a NOTIFY from anywhere in the database
//! reaches every client listening on that channel, as on a direct connection.
//!
//! The hub connection is opened at the first LISTEN and kept while anyone listens. If it
//! is lost, it is opened again at the next LISTEN and listens on every channel still wanted;
//! notifications sent meanwhile are lost (as they are for a direct connection that drops).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

use super::{ServerConn, ServerError};
use crate::config::{EndpointConfig, ProxyConfig};
use crate::protocol::backend::{self, Backend};
use crate::protocol::{btag, Scanned};

/// Where a client's notifications go: whole NotificationResponse messages.
pub type Inbox = mpsc::UnboundedSender<Bytes>;

/// One endpoint's hub (see the module docs).
#[derive(Default)]
pub struct ListenHub {
    state: Mutex<HubState>,
    /// Held while the hub connection is being opened (one at a time).
    opening: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct HubState {
    /// Channel -> (client id, inbox) of every client listening on it.
    channels: HashMap<String, Vec<(u64, Inbox)>>,
    /// Commands to the hub task (`None`: no task runs).
    task: Option<mpsc::UnboundedSender<Command>>,
}

enum Command {
    /// LISTEN or UNLISTEN on the hub connection; `done` once the server answered.
    Run {
        sql: String,
        done: oneshot::Sender<Result<(), ServerError>>,
    },
}

impl ListenHub {
    /// Adds `client` as a listener of `channel`; returns once the hub connection listens on
    /// it (a NOTIFY after this reaches the client).
    pub async fn listen(
        self: &Arc<Self>,
        endpoint: &Arc<EndpointConfig>,
        proxy: &ProxyConfig,
        client: u64,
        inbox: &Inbox,
        channel: &str,
    ) -> Result<(), ServerError> {
        let needs_listen = {
            let mut state = self.lock();
            let listeners = state.channels.entry(channel.to_string()).or_default();
            if listeners.iter().any(|(id, _)| *id == client) {
                return Ok(());
            }
            listeners.push((client, inbox.clone()));
            listeners.len() == 1
        };
        if !needs_listen && self.lock().task.is_some() {
            return Ok(());
        }
        let result = self.run(endpoint, proxy, listen_sql(channel)).await;
        if result.is_err() {
            self.unlisten(client, Some(channel));
        }
        result
    }

    /// Removes `client` from `channel` (all its channels with `None`).
    pub fn unlisten(&self, client: u64, channel: Option<&str>) {
        let mut state = self.lock();
        let mut emptied = Vec::new();
        state.channels.retain(|name, listeners| {
            if channel.is_some_and(|c| c != name) {
                return true;
            }
            listeners.retain(|(id, _)| *id != client);
            if listeners.is_empty() {
                emptied.push(name.clone());
                return false;
            }
            true
        });
        if let Some(task) = &state.task {
            for name in emptied {
                let (done, _) = oneshot::channel();
                let _ = task.send(Command::Run {
                    sql: format!("UNLISTEN {}", quote(&name)),
                    done,
                });
            }
        }
    }

    /// Clients listening (for tests and the console).
    pub fn listeners(&self) -> usize {
        let state = self.lock();
        let mut ids: Vec<u64> = state
            .channels
            .values()
            .flat_map(|l| l.iter().map(|(id, _)| *id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    /// Whether a hub connection is open.
    pub fn connected(&self) -> bool {
        self.lock().task.as_ref().is_some_and(|t| !t.is_closed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `sql` on the hub connection, opening it (and listening on every wanted channel)
    /// if there is none.
    async fn run(
        self: &Arc<Self>,
        endpoint: &Arc<EndpointConfig>,
        proxy: &ProxyConfig,
        sql: String,
    ) -> Result<(), ServerError> {
        let _opening = self.opening.lock().await;
        let task = {
            let state = self.lock();
            state.task.clone().filter(|t| !t.is_closed())
        };
        let task = match task {
            Some(task) => task,
            None => {
                let conn = ServerConn::open(endpoint.clone(), proxy).await?;
                let (tx, rx) = mpsc::unbounded_channel();
                let wanted: Vec<String> = {
                    let mut state = self.lock();
                    state.task = Some(tx.clone());
                    state.channels.keys().cloned().collect()
                };
                tokio::spawn(hub_task(self.clone(), conn, rx));
                for name in wanted {
                    let (done, _) = oneshot::channel();
                    let _ = tx.send(Command::Run {
                        sql: listen_sql(&name),
                        done,
                    });
                }
                tx
            }
        };
        let (done, result) = oneshot::channel();
        if task.send(Command::Run { sql, done }).is_err() {
            return Err(ServerError::Protocol(super::ServerProtocol::ListenClosed));
        }
        result.await.unwrap_or(Err(ServerError::Protocol(
            super::ServerProtocol::ListenClosed,
        )))
    }

    /// Passes a notification to the clients listening on its channel.
    fn deliver(&self, msg: Bytes) {
        let Ok(Some(channel)) = notification_channel(&msg) else {
            return;
        };
        let state = self.lock();
        if let Some(listeners) = state.channels.get(&channel) {
            for (_, inbox) in listeners {
                let _ = inbox.send(msg.clone());
            }
        }
    }
}

fn listen_sql(channel: &str) -> String {
    format!("LISTEN {}", quote(channel))
}

fn quote(channel: &str) -> String {
    postgres_protocol::escape::escape_identifier(channel)
}

/// The channel of a NotificationResponse (`A`: pid, channel, payload).
fn notification_channel(msg: &[u8]) -> Result<Option<String>, ()> {
    if msg.first() != Some(&btag::NOTIFICATION_RESPONSE) || msg.len() < 9 {
        return Ok(None);
    }
    let (channel, _) = crate::protocol::cstr(&msg[9..]).ok_or(())?;
    Ok(Some(String::from_utf8_lossy(channel).into_owned()))
}

/// Owns the hub connection: runs commands one at a time and delivers notifications.
async fn hub_task(
    hub: Arc<ListenHub>,
    mut conn: ServerConn,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut pending: std::collections::VecDeque<oneshot::Sender<Result<(), ServerError>>> =
        Default::default();
    let mut failed = false;
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(Command::Run { sql, done }) = cmd else { break };
                let mut out = BytesMut::new();
                crate::protocol::encode::query(&mut out, &sql);
                if let Err(e) = conn.write_all(&out).await {
                    let _ = done.send(Err(e.into()));
                    break;
                }
                pending.push_back(done);
            }
            r = conn.io.stream.read_buf(&mut conn.io.rbuf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    break;
                }
                loop {
                    let len = match conn.io.scanner.scan(&conn.io.rbuf, |_| true) {
                        Ok(Some(Scanned::Message { len, .. })) => len,
                        Ok(_) => break,
                        Err(_) => return close(&hub, pending),
                    };
                    let msg = conn.io.rbuf.split_to(len).freeze();
                    match backend::decode(&msg) {
                        Ok(Backend::Error(_)) => failed = true,
                        Ok(Backend::ReadyForQuery(_)) => {
                            if let Some(done) = pending.pop_front() {
                                let result = if failed {
                                    Err(ServerError::Protocol(super::ServerProtocol::ListenFailed))
                                } else {
                                    Ok(())
                                };
                                let _ = done.send(result);
                            }
                            failed = false;
                        }
                        Ok(Backend::Other(btag::NOTIFICATION_RESPONSE)) => hub.deliver(msg),
                        _ => {}
                    }
                }
            }
        }
    }
    close(&hub, pending);
}

/// The hub connection is gone: the next LISTEN opens another.
fn close(
    hub: &ListenHub,
    pending: std::collections::VecDeque<oneshot::Sender<Result<(), ServerError>>>,
) {
    hub.lock().task = None;
    for done in pending {
        let _ = done.send(Err(ServerError::Protocol(
            super::ServerProtocol::ListenClosed,
        )));
    }
    tracing::info!("LISTEN connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_channel_of_a_notification() {
        let mut m = BytesMut::new();
        m.extend_from_slice(b"A\0\0\0\x14\0\0\0\x07chan\0payload\0");
        assert_eq!(notification_channel(&m), Ok(Some("chan".to_string())));
        assert_eq!(notification_channel(b"Z\0\0\0\x05I"), Ok(None));
    }
}
