//! Client messages larger than the inspection window ([`INSPECT_WINDOW`]) stream through
//! to the server as they arrive, so what a client costs the proxy is bounded by what the
//! proxy must inspect, not by what the client sends (up to `max_message_size`, 1 GB).
//!
//! What the proxy needs from such a message it takes on the way:
//! - Query and Parse texts go through [`StreamScan`] (the SQL scanner across pieces); a
//!   statement it cannot inspect counts as unknown, so the session reads its settings back
//!   and counts its objects afterwards (the path of code the scanner cannot see into).
//! - Bind and Parse statement names are at the front: the proxy waits for them, rewrites
//!   the Bind's head when the name maps to a server statement, and streams the rest.
//! - FunctionCall, CopyDone and CopyFail need nothing but their type.
//!
//! Two things differ from a message read whole. A named Parse in transaction mode is still
//! read whole: the proxy keeps its text to prepare it again on other server connections.
//! And `max_pinned_clients` cannot refuse a streamed statement (the statement has gone to
//! the server by the time its text is known); the pins it makes are counted as usual.
//!
//! Messages that PostgreSQL itself caps at 10,000 bytes (Close, Describe, Execute, Flush,
//! Sync, Terminate) are refused above that at their header, and so is a message type that
//! does not exist: nothing is buffered for them either.

use super::messages::{ensure_prepared, mapped, note_effects};
use super::{Link, Outgoing};
use crate::protocol::frame::{self, HEADER_LEN};
use crate::protocol::sql_stream::StreamScan;
use crate::protocol::{encode, ftag, FrameError};
use crate::server::ServerConn;
use crate::session::client::ClientCtx;
use crate::session::expect::{Entry, Kind};

/// Messages up to this size are read whole (as every message used to be); larger ones of
/// the types that may be large stream. Also the most a streamed message's statement names
/// may take.
pub const INSPECT_WINDOW: usize = 256 * 1024;
/// PostgreSQL's `PQ_SMALL_MESSAGE_LIMIT`: the length field of Close, Describe, Execute,
/// Flush, Sync and Terminate may not exceed it.
const SMALL_MESSAGE_LIMIT: usize = 10_000;

/// What to do with the client message at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Class {
    /// Read it whole (or let the frame scanner stream it: CopyData).
    Whole,
    /// Larger than the window: stream it.
    Big { tag: u8, total: usize },
    /// Refuse it (08P01) before reading its body.
    Refuse(String),
}

/// Classifies the message whose header starts `buf` (at a message boundary). Messages no
/// larger than PostgreSQL's small-message limit, nearly all of them, cost one comparison.
#[inline]
pub(super) fn classify(buf: &[u8], max_message: usize) -> Class {
    if buf.len() < HEADER_LEN {
        return Class::Whole;
    }
    let raw = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    // Negative lengths are the frame scanner's to refuse.
    if raw <= SMALL_MESSAGE_LIMIT as i32 {
        return Class::Whole;
    }
    classify_large(buf[0], raw as usize + 1, max_message)
}

#[cold]
fn classify_large(tag: u8, total: usize, max_message: usize) -> Class {
    match tag {
        ftag::CLOSE
        | ftag::DESCRIBE
        | ftag::EXECUTE
        | ftag::FLUSH
        | ftag::SYNC
        | ftag::TERMINATE => Class::Refuse(format!(
            "invalid message length {} for message type \"{}\"",
            total - 1,
            tag as char
        )),
        ftag::COPY_DATA => Class::Whole,
        ftag::QUERY
        | ftag::PARSE
        | ftag::BIND
        | ftag::FUNCTION_CALL
        | ftag::COPY_DONE
        | ftag::COPY_FAIL => {
            if total > max_message {
                Class::Refuse(
                    FrameError::TooLarge {
                        tag,
                        len: total,
                        max: max_message,
                    }
                    .to_string(),
                )
            } else if total > INSPECT_WINDOW {
                Class::Big { tag, total }
            } else {
                Class::Whole
            }
        }
        other => Class::Refuse(format!("invalid frontend message type {other}")),
    }
}

/// Whether an idle client's buffer holds enough to act on: a whole message, the start of
/// one that streams (with its statement names, see [`begin`]), or a header that is already
/// to be refused. `pooled`: transaction mode (where a named Parse is read whole).
pub fn ready(buf: &[u8], max_message: usize, pooled: bool) -> bool {
    if frame::message_ready(buf, |t| t == ftag::COPY_DATA, max_message) {
        return true;
    }
    if buf.len() < HEADER_LEN {
        return false;
    }
    match classify(buf, max_message) {
        Class::Whole => false,
        Class::Refuse(_) => true,
        Class::Big { tag, .. } => {
            let body = &buf[HEADER_LEN..];
            match tag {
                // Whole (the frame scanner's readiness above) when named in transaction mode.
                ftag::PARSE => match names(body, 1) {
                    Ok(Some(name)) => !pooled || name[0].is_empty(),
                    Ok(None) => false,
                    Err(_) => true,
                },
                ftag::BIND => !matches!(names(body, 2), Ok(None)),
                _ => true,
            }
        }
    }
}

/// A client message streaming through.
#[derive(Debug)]
pub(super) struct Big {
    /// Bytes of it not yet forwarded.
    remaining: usize,
    scan: Scan,
}

#[derive(Debug)]
enum Scan {
    None,
    /// A Query's text: everything but the message's last byte (its NUL).
    Query(StreamScan),
    /// A Parse's text, up to its NUL; then the parameter types, not scanned.
    Parse(Option<StreamScan>, Option<crate::protocol::sql::Effects>),
}

/// How the start of a large message was handled.
pub(super) enum Begun {
    /// Streaming: this many bytes at the front were consumed (forwarded, or replaced by a
    /// rewritten head); the rest is in [`Link::big`].
    Streaming(usize),
    /// Its names are not all here yet.
    NeedMore,
    /// Read it whole after all (a named Parse in transaction mode).
    Whole,
}

/// Starts streaming the message of type `tag` and `total` bytes at the front of
/// `out.rbuf[at..]`, recording the responses it will get as a whole message would.
#[allow(clippy::too_many_arguments)]
pub(super) fn begin(
    tag: u8,
    total: usize,
    at: usize,
    ctx: &mut ClientCtx,
    conn: &mut ServerConn,
    link: &mut Link,
    out: &mut Outgoing<'_>,
) -> Result<Begun, String> {
    let buf = &out.rbuf[at..];
    let body = &buf[HEADER_LEN..];
    let (scan, consumed) = match tag {
        ftag::QUERY => {
            link.expect.push(client_entry(Kind::Query));
            out.forward_at(at, HEADER_LEN);
            (Scan::Query(StreamScan::new()), HEADER_LEN)
        }
        ftag::PARSE => {
            let Some(name) = names(body, 1)? else {
                return Ok(Begun::NeedMore);
            };
            if link.pooled && !name[0].is_empty() {
                return Ok(Begun::Whole);
            }
            link.unsynced = true;
            link.expect.push(client_entry(Kind::Parse));
            // The text starts after the name; scanning starts there.
            let head = HEADER_LEN + name[0].len() + 1;
            out.forward_at(at, head);
            (Scan::Parse(Some(StreamScan::new()), None), head)
        }
        ftag::BIND => {
            let Some(names) = names(body, 2)? else {
                return Ok(Begun::NeedMore);
            };
            let (portal, name) = (names[0], names[1]);
            link.unsynced = true;
            let head = HEADER_LEN + portal.len() + 1 + name.len() + 1;
            match mapped(ctx, link, name) {
                Some(stmt) => {
                    let b = out.buf();
                    ensure_prepared(conn, link, &stmt, b);
                    encode::bind_head(b, portal, &stmt.server_name, total - head);
                }
                None => out.forward_at(at, head),
            }
            link.expect.push(client_entry(Kind::Bind));
            (Scan::None, head)
        }
        ftag::FUNCTION_CALL => {
            link.expect.push(client_entry(Kind::FunctionCall));
            (Scan::None, 0)
        }
        // CopyDone, CopyFail.
        _ => {
            link.expect.copy_end();
            (Scan::None, 0)
        }
    };
    count_message(tag, ctx, link);
    link.big = Some(Box::new(Big {
        remaining: total - consumed,
        scan,
    }));
    Ok(Begun::Streaming(consumed))
}

fn client_entry(kind: Kind) -> Entry {
    Entry::Client { kind, stmt: None }
}

/// The bookkeeping every client message gets (see `messages::on_client_message`).
fn count_message(tag: u8, ctx: &ClientCtx, link: &mut Link) {
    if tag == ftag::QUERY {
        ctx.tenant
            .stats
            .on_client_message(&crate::protocol::frontend::Frontend::Query { sql: b"" });
    }
    link.messages += 1;
    link.pending.sole_set = None;
}

/// The first `n` NUL-terminated names of `body`; `None` while they have not all arrived.
fn names(body: &[u8], n: usize) -> Result<Option<Vec<&[u8]>>, String> {
    let mut names = Vec::with_capacity(n);
    let mut rest = body;
    for _ in 0..n {
        match memchr::memchr(0, rest) {
            Some(end) => {
                names.push(&rest[..end]);
                rest = &rest[end + 1..];
            }
            None if body.len() >= INSPECT_WINDOW => {
                return Err("statement or portal name too long".into())
            }
            None => return Ok(None),
        }
    }
    Ok(Some(names))
}

impl Big {
    /// Forwards the next piece of the message from `out.rbuf[at..]` (scanning what must be
    /// scanned); returns how many bytes it took.
    pub(super) fn step(&mut self, at: usize, out: &mut Outgoing<'_>) -> usize {
        let piece = &out.rbuf[at..];
        let n = self.remaining.min(piece.len());
        let piece = &piece[..n];
        match &mut self.scan {
            Scan::None => {}
            Scan::Query(scan) => {
                // The last byte of the message is the text's NUL.
                let text = if n == self.remaining { n - 1 } else { n };
                scan.feed(&piece[..text]);
            }
            Scan::Parse(scan, fx) => {
                if let Some(s) = scan {
                    match memchr::memchr(0, piece) {
                        Some(end) => {
                            s.feed(&piece[..end]);
                            *fx = scan.take().map(StreamScan::finish);
                        }
                        None => s.feed(piece),
                    }
                }
            }
        }
        out.forward_at(at, n);
        self.remaining -= n;
        n
    }

    pub(super) fn done(&self) -> bool {
        self.remaining == 0
    }

    /// The message has gone: what its text does to the session is noted as for a whole
    /// message (a Query's resets hold the client's next messages back, as there).
    pub(super) fn finish(self, ctx: &mut ClientCtx, conn: &mut ServerConn, link: &mut Link) {
        let (fx, query) = match self.scan {
            Scan::None => return,
            Scan::Query(scan) => (scan.finish(), true),
            Scan::Parse(scan, fx) => {
                // A text without its NUL (PostgreSQL refuses the message): scanned all the same.
                let fx = fx.or_else(|| scan.map(StreamScan::finish));
                (
                    fx.unwrap_or_else(crate::protocol::sql_stream::unknown),
                    false,
                )
            }
        };
        note_effects(&fx, ctx, conn, link);
        link.pending.fixup.merge(fx.resets);
        if query && !link.pending.fixup.is_none() {
            link.pending.hold = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tag: u8, total: usize) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((total - 1) as i32).to_be_bytes());
        v
    }

    #[test]
    fn classifies_by_type_and_size() {
        let max = 1 << 30;
        assert_eq!(classify(&header(b'Q', 100), max), Class::Whole);
        assert_eq!(classify(&header(b'Q', INSPECT_WINDOW), max), Class::Whole);
        assert_eq!(
            classify(&header(b'Q', INSPECT_WINDOW + 1), max),
            Class::Big {
                tag: b'Q',
                total: INSPECT_WINDOW + 1
            }
        );
        assert!(matches!(
            classify(&header(b'B', 300 << 20), max),
            Class::Big { .. }
        ));
        assert!(matches!(
            classify(&header(b'Q', max + 1), max),
            Class::Refuse(_)
        ));
        // PostgreSQL's small-message limit.
        assert_eq!(classify(&header(b'S', 10_001), max), Class::Whole);
        assert!(matches!(
            classify(&header(b'S', 10_002), max),
            Class::Refuse(_)
        ));
        assert!(matches!(
            classify(&header(b'E', 1 << 20), max),
            Class::Refuse(_)
        ));
        // CopyData is the frame scanner's to stream; unknown types are refused.
        assert_eq!(classify(&header(b'd', 300 << 20), max), Class::Whole);
        assert!(matches!(
            classify(&header(b'?', 1 << 20), max),
            Class::Refuse(_)
        ));
        assert!(ready(&header(b'Q', 300 << 20), max, true));
        assert!(!ready(&header(b'Q', 1000), max, true));
        // Parse and Bind once their names are in; a named Parse in transaction mode whole.
        let mut parse = header(b'P', 300 << 20);
        assert!(!ready(&parse, max, false));
        parse.extend_from_slice(b"s1\0select");
        assert!(ready(&parse, max, false));
        assert!(!ready(&parse, max, true));
        let mut bind = header(b'B', 300 << 20);
        bind.extend_from_slice(b"\0s1");
        assert!(!ready(&bind, max, true));
        bind.push(0);
        assert!(ready(&bind, max, true));
    }
}
