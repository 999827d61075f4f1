//! A client linked to a server connection: bytes flow both ways, untouched, while the proxy
//! peeks at the few messages that decide when the link ends (ReadyForQuery with nothing
//! owed) and what the connection's state becomes (SET/RESET/DISCARD tags, errors, reported
//! parameters).

use std::time::Duration;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::client::ClientCtx;
use super::stream::ClientStream;
use super::sync::{self, Prelude, Reply};
use crate::protocol::backend::{self, tag_changes_session_state, Backend, TxStatus};
use crate::protocol::encode::ErrorInfo;
use crate::protocol::frontend::{self, is_known_tag, mentions_set_config, Frontend};
use crate::protocol::{btag, ftag, Scanned};
use crate::server::ServerConn;

/// Bookkeeping of one link.
#[derive(Debug)]
pub struct Link {
    /// Query/Sync/FunctionCall sent whose ReadyForQuery has not come back.
    pub owed: u32,
    /// Extended-protocol messages sent since the last Sync (a transaction may be open).
    pub unsynced: bool,
    /// Prelude replies still to swallow.
    internal: u32,
    /// State to record once the pipelined prelude succeeds.
    pending_state: Option<crate::server::StateKey>,
    pub status: TxStatus,
    /// The server already sent a FATAL error (the client has seen it).
    server_fatal: bool,
    /// Release the connection when the link goes idle (transaction mode).
    release_on_idle: bool,
}

/// How a link ended.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// Idle with nothing owed: the connection may go back to the pool.
    Released,
    /// The client closed (Terminate or EOF).
    ClientGone,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("server connection lost")]
    ServerLost { told: bool },
    #[error("the session state could not be applied")]
    StateFailed,
    #[error("client protocol violation: {}", .0.message)]
    ClientProtocol(ErrorInfo),
    #[error("server protocol violation: {0}")]
    ServerProtocol(String),
    #[error("idle-in-transaction timeout")]
    IdleInTransaction,
}

impl LinkError {
    pub fn to_client(&self) -> Option<ErrorInfo> {
        match self {
            LinkError::ServerLost { told: true } | LinkError::StateFailed => None,
            LinkError::ServerLost { told: false } | LinkError::ServerProtocol(_) => {
                Some(ErrorInfo::fatal("08006", "server connection lost"))
            }
            LinkError::ClientProtocol(e) => Some(e.clone()),
            LinkError::IdleInTransaction => Some(ErrorInfo::fatal(
                "25P03",
                "terminating connection due to idle-in-transaction timeout",
            )),
        }
    }
}

impl Link {
    pub fn new(release_on_idle: bool) -> Self {
        Link {
            owed: 0,
            unsynced: false,
            internal: 0,
            pending_state: None,
            status: TxStatus::Idle,
            server_fatal: false,
            release_on_idle,
        }
    }

    /// Nothing outstanding and no transaction open.
    pub fn is_idle(&self) -> bool {
        self.owed == 0 && !self.unsynced && self.internal == 0 && self.status == TxStatus::Idle
    }
}

/// Runs one link: applies `prelude`, forwards what the client has buffered, then relays until
/// the link ends.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
    prelude: Option<Prelude>,
    idle_tx_timeout: Option<Duration>,
) -> Result<LinkEnd, LinkError> {
    let mut out = bytes::BytesMut::new();
    if let Some(p) = prelude {
        sync::encode_prelude(&mut out, &p);
        if p.unverified {
            round_trip(client, ctx, conn, p, out.split()).await?;
        } else {
            link.internal = 1;
            link.pending_state = p.state;
        }
    }
    let (n, terminated) = scan_client(client, conn, link)?;
    out.extend_from_slice(&client.rbuf[..n]);
    client.rbuf.advance(n);
    conn.write_all(&out)
        .await
        .map_err(|_| LinkError::ServerLost { told: false })?;
    drop(out);
    if terminated {
        return Ok(LinkEnd::ClientGone);
    }
    loop {
        reserve(&mut conn.rbuf);
        reserve(&mut client.rbuf);
        let idle_in_tx = link.owed == 0 && link.status != TxStatus::Idle;
        let timer = async {
            match idle_tx_timeout {
                Some(d) if idle_in_tx => tokio::time::sleep(d).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.stream.read_buf(&mut conn.rbuf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    conn.broken = true;
                    return Err(LinkError::ServerLost { told: link.server_fatal });
                }
                if server_to_client(client, ctx, conn, link).await? {
                    return Ok(LinkEnd::Released);
                }
            }
            r = client.io.read_buf(&mut client.rbuf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    return Ok(LinkEnd::ClientGone);
                }
                let (n, terminated) = scan_client(client, conn, link)?;
                if n > 0 {
                    conn.stream.write_all(&client.rbuf[..n]).await.map_err(|_| {
                        conn.broken = true;
                        LinkError::ServerLost { told: false }
                    })?;
                    client.rbuf.advance(n);
                }
                if terminated {
                    return Ok(LinkEnd::ClientGone);
                }
            }
            _ = timer => return Err(LinkError::IdleInTransaction),
        }
    }
}

fn reserve(buf: &mut bytes::BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}

/// Applies an unverified prelude in a round trip of its own.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    p: Prelude,
    bytes: bytes::BytesMut,
) -> Result<(), LinkError> {
    let lost = |_| LinkError::ServerLost { told: false };
    conn.write_all(&bytes)
        .await
        .map_err(|_| LinkError::ServerLost { told: false })?;
    let mut failed = false;
    loop {
        let msg = conn.read_message().await.map_err(lost)?;
        match sync::on_reply(conn, &msg).map_err(|e| LinkError::ServerProtocol(e.into()))? {
            Reply::More => {}
            Reply::Failed => {
                failed = true;
                client.wbuf.extend_from_slice(&msg);
            }
            Reply::Done if failed => {
                conn.broken = true;
                let _ = client.flush().await;
                return Err(LinkError::StateFailed);
            }
            Reply::Done => break,
        }
    }
    sync::finish(conn, ctx, p.state, &mut client.wbuf);
    client
        .flush()
        .await
        .map_err(|_| LinkError::ServerLost { told: false })
}

/// Scans what the client has buffered: returns how many bytes to forward and whether a
/// Terminate ends the stream (it is not forwarded: the server connection lives on).
fn scan_client<S>(
    client: &mut ClientStream<S>,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<(usize, bool), LinkError> {
    let mut off = 0;
    let inspect = |t: u8| t != ftag::COPY_DATA && t != ftag::BIND;
    loop {
        let item = client
            .scanner
            .scan(&client.rbuf[off..], inspect)
            .map_err(|e| LinkError::ClientProtocol(ErrorInfo::fatal("08P01", e.to_string())))?;
        match item {
            None => return Ok((off, false)),
            Some(Scanned::Through { len, start }) => {
                if let Some(tag) = start {
                    if tag == ftag::BIND {
                        link.unsynced = true;
                    }
                }
                off += len;
            }
            Some(Scanned::Message { tag, len }) => {
                let msg = &client.rbuf[off..off + len];
                if !is_known_tag(tag) {
                    return Err(LinkError::ClientProtocol(ErrorInfo::fatal(
                        "08P01",
                        format!("invalid frontend message type {tag}"),
                    )));
                }
                let decoded = frontend::decode(msg)
                    .map_err(|e| LinkError::ClientProtocol(ErrorInfo::fatal("08P01", e)))?;
                match decoded {
                    Frontend::Terminate => return Ok((off, true)),
                    Frontend::Query { sql } => {
                        link.owed += 1;
                        if mentions_set_config(sql) {
                            conn.state = None;
                        }
                    }
                    Frontend::Parse { sql, .. } => {
                        link.unsynced = true;
                        if mentions_set_config(sql) {
                            conn.state = None;
                        }
                    }
                    Frontend::Sync => {
                        link.owed += 1;
                        link.unsynced = false;
                    }
                    Frontend::FunctionCall => link.owed += 1,
                    Frontend::Describe | Frontend::Execute | Frontend::Close | Frontend::Flush => {
                        link.unsynced = true
                    }
                    Frontend::Password(_) => {
                        return Err(LinkError::ClientProtocol(ErrorInfo::fatal(
                            "08P01",
                            "unexpected password message after authentication",
                        )))
                    }
                    _ => {}
                }
                off += len;
            }
        }
    }
}

/// Relays what the server has sent. Returns true when the link is released.
async fn server_to_client<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<bool, LinkError> {
    let mut off = 0;
    let mut release = false;
    let proto = |e: &dyn std::fmt::Display| LinkError::ServerProtocol(e.to_string());
    loop {
        let internal = link.internal > 0;
        let inspect = |t: u8| {
            internal
                || matches!(
                    t,
                    btag::READY_FOR_QUERY
                        | btag::COMMAND_COMPLETE
                        | btag::ERROR_RESPONSE
                        | btag::PARAMETER_STATUS
                )
        };
        let item = conn
            .scanner
            .scan(&conn.rbuf[off..], inspect)
            .map_err(|e| proto(&e))?;
        match item {
            None => break,
            Some(Scanned::Through { len, .. }) => off += len,
            Some(Scanned::Message { len, .. }) if internal => {
                // Prelude replies come first on the stream: they are always a prefix.
                debug_assert_eq!(off, 0);
                let msg = conn.rbuf.split_to(len);
                match sync::on_reply(conn, &msg).map_err(|e| proto(&e))? {
                    Reply::More => {}
                    Reply::Failed => {
                        conn.broken = true;
                        client.wbuf.extend_from_slice(&msg);
                        let _ = client.flush().await;
                        return Err(LinkError::StateFailed);
                    }
                    Reply::Done => {
                        link.internal -= 1;
                        let state = link.pending_state.take();
                        sync::finish(conn, ctx, state, &mut client.wbuf);
                    }
                }
            }
            Some(Scanned::Message { len, .. }) => {
                let msg = &conn.rbuf[off..off + len];
                match backend::decode(msg).map_err(|e| proto(&e))? {
                    Backend::ReadyForQuery(status) => {
                        link.owed = link.owed.saturating_sub(1);
                        link.status = status;
                        if link.release_on_idle && link.is_idle() {
                            release = true;
                        }
                    }
                    Backend::CommandComplete(tag) if tag_changes_session_state(tag) => {
                        conn.state = None
                    }
                    Backend::Error(fields) => {
                        conn.state = None;
                        if matches!(fields.severity(), b"FATAL" | b"PANIC") {
                            conn.broken = true;
                            link.server_fatal = true;
                        }
                    }
                    Backend::ParameterStatus { name, value } => {
                        let name = String::from_utf8_lossy(name).into_owned();
                        if name == "search_path"
                            && conn.reported_search_path.as_deref() != Some(value)
                        {
                            conn.state = None;
                        }
                        conn.params.set(&name, value);
                        if ctx.params.get(&name).is_some() {
                            ctx.params.set(&name, value);
                        }
                    }
                    _ => {}
                }
                off += len;
            }
        }
    }
    if !client.wbuf.is_empty() {
        client
            .flush()
            .await
            .map_err(|_| LinkError::ServerLost { told: false })?;
    }
    if off > 0 {
        // A client that has gone away surfaces on its next read; keep the server stream
        // consistent meanwhile.
        let _ = client.io.write_all(&conn.rbuf[..off]).await;
        conn.rbuf.advance(off);
    }
    Ok(release)
}
