//! What an idle client (no server connection) can be answered without one: a repeated
//! plain `SET` that would change nothing, a sole `LISTEN`/`UNLISTEN` (served by the
//! endpoint's LISTEN connection), and the notifications that connection passes on.

use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncWrite};

use super::client::{self, ClientCtx};
use crate::config::ProxyConfig;
use crate::protocol::backend::TxStatus;
use crate::protocol::encode::{self, ErrorInfo};
use crate::protocol::sqlstate;
use crate::transport::stream::ClientStream;

/// A plain `SET` the client repeats in the state it left last time (apps that set their
/// schema at the start of every request or transaction): running it again would change
/// nothing, so the proxy answers it itself, with no server connection. True when answered.
pub(super) fn answer_repeated_set<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &ClientCtx,
) -> bool {
    let Some((sql, len)) = query_text(&client.rbuf) else {
        return false;
    };
    if !ctx.vs.is_repeated_set(sql, &ctx.params) {
        return false;
    }
    encode::command_complete(&mut client.wbuf, "SET");
    encode::ready_for_query(&mut client.wbuf, TxStatus::Idle);
    bytes::Buf::advance(&mut client.rbuf, len);
    ctx.tenant.stats.queries.fetch_add(1, Ordering::Relaxed);
    ctx.tenant
        .stats
        .transactions
        .fetch_add(1, Ordering::Relaxed);
    true
}

/// The text of the whole simple Query at the front of `buf`, if that is what it holds.
fn query_text(buf: &[u8]) -> Option<(&[u8], usize)> {
    if buf.first() != Some(&crate::protocol::ftag::QUERY) || buf.len() < 6 {
        return None;
    }
    let len = 1 + u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    (buf.len() >= len && len >= 6).then(|| (&buf[5..len - 1], len))
}

/// Whether the simple Query at the front of `buf` mentions LISTEN (the cheap test before
/// [`answer_listen`]).
pub(super) fn mentions_listen(buf: &[u8]) -> bool {
    query_text(buf).is_some_and(|(text, _)| {
        memchr::memchr2(b'l', b'L', text).is_some()
            && text.windows(6).any(|w| w.eq_ignore_ascii_case(b"listen"))
    })
}

/// A sole `LISTEN`/`UNLISTEN` from an idle client: served by the endpoint's LISTEN
/// connection ([`crate::server::notify`]), so a listener holds no server connection of its
/// own. True when answered.
pub(super) async fn answer_listen<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    ctx: &mut ClientCtx,
    proxy: &ProxyConfig,
) -> bool {
    use crate::protocol::sql::{self, Listen};
    let Some((text, len)) = query_text(&client.rbuf) else {
        return false;
    };
    let Some(op) = sql::effects(text).listen else {
        return false;
    };
    bytes::Buf::advance(&mut client.rbuf, len);
    let endpoint = ctx.tenant.endpoint.clone();
    let tag = match op {
        Listen::Listen(channel) => {
            let id = ctx.listener_id();
            let listening = ctx.listening.get_or_insert_with(|| {
                let (inbox, notifications) = tokio::sync::mpsc::unbounded_channel();
                Box::new(client::Listening {
                    inbox,
                    notifications,
                    channels: Vec::new(),
                })
            });
            let hub = &endpoint.listen;
            match hub
                .listen(&endpoint.config, proxy, id, &listening.inbox, &channel)
                .await
            {
                Ok(()) => {
                    if !listening.channels.contains(&channel) {
                        listening.channels.push(channel);
                    }
                    "LISTEN"
                }
                Err(e) => {
                    tracing::warn!(tenant = %ctx.tenant.name, error = %e, "LISTEN failed");
                    if listening.channels.is_empty() {
                        ctx.listening = None;
                    }
                    let info = ErrorInfo::error(
                        sqlstate::CONNECTION_FAILURE,
                        format!(
                            "could not listen: the LISTEN connection to backend \"{}\" failed",
                            endpoint.config.backend
                        ),
                    );
                    encode::error_response(&mut client.wbuf, &info);
                    encode::ready_for_query(&mut client.wbuf, TxStatus::Idle);
                    let _ = client.flush().await;
                    return true;
                }
            }
        }
        Listen::Unlisten(channel) => {
            ctx.unlisten(channel.as_deref());
            "UNLISTEN"
        }
    };
    encode::command_complete(&mut client.wbuf, tag);
    encode::ready_for_query(&mut client.wbuf, TxStatus::Idle);
    ctx.tenant.stats.queries.fetch_add(1, Ordering::Relaxed);
    let _ = client.flush().await;
    true
}

/// The next notification for a listening client (never, for one that does not listen).
pub(super) async fn next_notification(ctx: &mut ClientCtx) -> Option<bytes::Bytes> {
    match ctx.listening.as_mut() {
        Some(l) => l.notifications.recv().await,
        None => std::future::pending().await,
    }
}
