//! The server-to-client half of the relay: each server message against the [`Expect`]
//! queue (forwarded, swallowed, answered for), the prelude's replies, the ReadyForQuery
//! held back until the session has settled.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::messages::{forget, on_forwarded};
use super::{emit_synths, pin_refused, proto, Link, LinkError, PIN_REFUSED_MARK};
use crate::protocol::backend::{self, Backend};
use crate::protocol::Scanned;
use crate::protocol::{btag, encode, sqlstate};
use crate::server::ServerConn;
use crate::session::client::ClientCtx;
use crate::session::expect::{Expect, Step};
use crate::session::sync;
use crate::transport::stream::ClientStream;

/// Relays what the server has sent, message by message against the [`Expect`] queue.
pub(super) async fn server_to_client<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<(), LinkError> {
    // The buffer is taken out for the duration so messages in it can be read while the
    // connection's bookkeeping is updated.
    let mut rbuf = std::mem::take(&mut conn.io.rbuf);
    let result = relay(client, ctx, conn, link, &mut rbuf).await;
    conn.io.rbuf = rbuf;
    result
}

async fn relay<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
    rbuf: &mut BytesMut,
) -> Result<(), LinkError> {
    // Bytes at the front of `rbuf` that are ready to go to the client.
    let mut off = 0;
    loop {
        let expect = &link.expect;
        // The prelude's replies are all swallowed, rows included (its SELECTs).
        let swallowing = expect.prelude_pending();
        let inspect = |t: u8| swallowing || inspected(t, expect);
        let item = conn
            .io
            .scanner
            .scan(&rbuf[off..], inspect)
            .map_err(|e| proto(&e))?;
        let (tag, len) = match item {
            None => break,
            Some(Scanned::Through { len, .. }) => {
                off += len;
                continue;
            }
            Some(Scanned::Message { tag, len }) => (tag, len),
        };
        let step = if link.expect.is_empty() {
            // Nothing is owed (e.g. an asynchronous notice): forward, keep track of state.
            Step::Forward
        } else {
            link.expect.on_message(tag)
        };
        match step {
            Step::Forward | Step::Completed(_) | Step::Failed { .. } => {
                on_forwarded(&rbuf[off..off + len], ctx, conn, link).map_err(|e| proto(&e))?;
                if tag == btag::ERROR_RESPONSE && is_refusal(&rbuf[off..off + len]) {
                    // The server's error for a refused pin: the client gets pgtenant's own.
                    flush_front(client, rbuf, &mut off).await;
                    rbuf.advance(len);
                    encode::error_response(&mut client.wbuf, &pin_refused());
                } else if tag == btag::READY_FOR_QUERY && link.settles_before_ready() {
                    // The client sees this ReadyForQuery once its session is recorded (its
                    // settings read back, its objects counted): what it does next finds
                    // its pins and settings in place.
                    flush_front(client, rbuf, &mut off).await;
                    link.held_ready = Some(rbuf.split_to(len));
                    continue;
                } else {
                    off += len;
                }
                if let Step::Failed { entry, dropped } = &step {
                    forget(entry, conn, ctx);
                    for e in dropped {
                        forget(e, conn, ctx);
                    }
                }
            }
            Step::Swallow(_) => {
                flush_front(client, rbuf, &mut off).await;
                rbuf.advance(len);
            }
            Step::Prelude | Step::PreludeDone => {
                flush_front(client, rbuf, &mut off).await;
                let msg = rbuf.split_to(len);
                prelude_reply(&msg, client, ctx, conn, link)?;
            }
            Step::PreludeFailed => {
                conn.mark_broken();
                flush_front(client, rbuf, &mut off).await;
                client.wbuf.extend_from_slice(&rbuf[..len]);
                let _ = client.flush().await;
                return Err(LinkError::StateFailed);
            }
        }
        if link.expect.front_is_synth() || !client.wbuf.is_empty() {
            flush_front(client, rbuf, &mut off).await;
            emit_synths(client, link).await;
        }
    }
    flush_front(client, rbuf, &mut off).await;
    Ok(())
}

/// Writes the first `off` bytes of the server buffer to the client.
async fn flush_front<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    rbuf: &mut BytesMut,
    off: &mut usize,
) {
    if *off > 0 {
        // A client that has gone away surfaces on its next read; keep the server stream
        // consistent meanwhile.
        if client.io.write_all(&rbuf[..*off]).await.is_ok() {
            // TLS may hold the last record back when the socket was full (no-op on TCP).
            let _ = client.io.flush().await;
        }
        rbuf.advance(*off);
        *off = 0;
    }
}

/// Whether `msg` (an ErrorResponse) is the server's error for a refused pin (sent in this
/// link or, for a refused Parse, in an earlier one).
fn is_refusal(msg: &[u8]) -> bool {
    matches!(backend::decode(msg), Ok(Backend::Error(fields))
        if fields.code() == sqlstate::CONFIGURATION_LIMIT_EXCEEDED
            && fields.get(b'M') == Some(PIN_REFUSED_MARK))
}

/// Whether a server message of type `t` is looked at (rows and copy data stream through).
fn inspected(t: u8, expect: &Expect) -> bool {
    t != btag::DATA_ROW
        && t != btag::COPY_DATA
        && (matches!(
            t,
            btag::READY_FOR_QUERY
                | btag::COMMAND_COMPLETE
                | btag::ERROR_RESPONSE
                | btag::PARAMETER_STATUS
        ) || expect.needs_whole(t))
}

/// A reply to the pipelined prelude: swallowed, its parameter reports recorded; at its
/// ReadyForQuery the connection holds the client's state.
fn prelude_reply<S>(
    msg: &[u8],
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
) -> Result<(), LinkError> {
    if let Backend::ParameterStatus { name, value } = backend::decode(msg).map_err(|e| proto(&e))? {
        conn.set_param(&String::from_utf8_lossy(name), value);
    }
    // (The prelude's last Query ends it: its first one may be still pending.)
    if msg[0] == btag::READY_FOR_QUERY && !link.expect.prelude_pending() {
        let state = link.pending_state.take();
        sync::finish(conn, ctx, state, &mut client.wbuf);
    }
    Ok(())
}
