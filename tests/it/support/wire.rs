//! The one raw wire client of the suite: for tests that must stop at a chosen protocol point
//! (half a startup packet, after AuthenticationSASL, a pipeline without Sync), must not read,
//! or send what no driver would (random bytes, absurd lengths, unknown message types).
//!
//! Builders make the bytes ([`startup`], [`query`], [`extended`], [`packet`], ...); a
//! [`Wire`] sends them and reads what comes back: one message ([`Wire::next`], or
//! [`Wire::read`] which fails the test on a hang), up to ReadyForQuery
//! ([`Wire::until_ready`]), or everything up to the close ([`Wire::until_closed`]).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Any one read may take this long before the test calls it a hang.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

pub const PROTOCOL_3_0: i32 = 3 << 16;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// Flush ('H').
pub const FLUSH: &[u8] = b"H\0\0\0\x04";

/// A startup-style packet: length, code, body.
pub fn packet(code: i32, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 8) as i32).to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A StartupMessage body: `name\0value\0...\0`.
pub fn params(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (name, value) in pairs {
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        v.extend_from_slice(value.as_bytes());
        v.push(0);
    }
    v.push(0);
    v
}

/// A protocol 3.0 StartupMessage with these parameters.
pub fn startup_packet(pairs: &[(&str, &str)]) -> Vec<u8> {
    packet(PROTOCOL_3_0, &params(pairs))
}

/// The StartupMessage of user `app`, database `app`, naming `tenant` in options.
pub fn startup(tenant: &str) -> Vec<u8> {
    let options = format!("-c tenant={tenant}");
    startup_packet(&[("user", "app"), ("database", "app"), ("options", &options)])
}

/// A regular message: tag, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// Parse (unnamed, no parameter types) + Bind (unnamed, no parameters, text results) +
/// Execute (all rows), without Sync.
pub fn extended(sql: &str) -> Vec<u8> {
    let mut parse = vec![0u8];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut out = message(b'P', &parse);
    out.extend(message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    out.extend(message(b'E', &[0, 0, 0, 0, 0]));
    out
}

/// SASLInitialResponse choosing SCRAM-SHA-256.
pub fn sasl_initial(first: &[u8]) -> Vec<u8> {
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first);
    message(b'p', &body)
}

/// One backend message: type byte and body.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// A field (`C` SQLSTATE, `M` message, `S` severity) of an ErrorResponse/NoticeResponse.
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                return None;
            }
            let end = tail.iter().position(|b| *b == 0)?;
            if kind == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    /// The SQLSTATE of an ErrorResponse/NoticeResponse.
    pub fn code(&self) -> Option<String> {
        self.field(b'C')
    }

    pub fn message(&self) -> Option<String> {
        self.field(b'M')
    }

    /// An i32 at the front of the body (Authentication request kinds).
    pub fn int(&self) -> i32 {
        i32::from_be_bytes([self.body[0], self.body[1], self.body[2], self.body[3]])
    }
}

/// What a connection got before the proxy closed it.
#[derive(Debug)]
pub struct Reply {
    pub messages: Vec<Msg>,
    /// Bytes after the last whole message.
    pub trailing: Vec<u8>,
}

impl Reply {
    pub fn error(&self) -> Option<&Msg> {
        self.messages.iter().find(|m| m.tag == b'E')
    }

    /// The SQLSTATE of the first ErrorResponse.
    pub fn sqlstate(&self) -> Option<String> {
        self.error().and_then(Msg::code)
    }

    /// The first ErrorResponse if its SQLSTATE is `code` (the connection closed after it,
    /// as every `Reply` is read to the close); else what came instead.
    pub fn expect_error(&self, code: &str) -> Result<&Msg, String> {
        match self.error() {
            Some(e) if e.code().as_deref() == Some(code) => Ok(e),
            _ => Err(format!("expected {code} and a close, got {self:?}")),
        }
    }
}

/// A raw connection to the proxy.
pub struct Wire {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Wire {
    pub async fn connect(addr: std::net::SocketAddr) -> Wire {
        let stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        stream.set_nodelay(true).expect("nodelay");
        Wire {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Sends bytes; the proxy may already have closed (that shows in what is read next).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads more into the buffer; false at EOF or reset; Err after [`STEP_TIMEOUT`].
    async fn fill(&mut self) -> Result<bool, String> {
        if self.buf.capacity() - self.buf.len() < 8192 {
            self.buf.reserve(64 * 1024);
        }
        match tokio::time::timeout(STEP_TIMEOUT, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(format!(
                "no answer and no close within {STEP_TIMEOUT:?} (have {} bytes)",
                self.buf.len()
            )),
            Ok(Ok(n)) => Ok(n > 0),
            Ok(Err(_)) => Ok(false),
        }
    }

    fn take_message(&mut self) -> Option<Msg> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let total = usize::try_from(len).ok()? + 1;
        if len < 4 || self.buf.len() < total {
            return None;
        }
        let tag = self.buf[0];
        let mut msg = self.buf.split_to(total);
        msg.advance(5);
        Some(Msg {
            tag,
            body: msg.to_vec(),
        })
    }

    /// The next message; `Ok(None)` when the connection closed first.
    pub async fn next(&mut self) -> Result<Option<Msg>, String> {
        loop {
            if let Some(m) = self.take_message() {
                return Ok(Some(m));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The next message, or `None` at EOF; fails the test on a hang.
    pub async fn read(&mut self) -> Option<Msg> {
        self.next().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Reads until a message of type `tag` (returned); fails the test on EOF or an
    /// ErrorResponse.
    pub async fn read_until(&mut self, tag: u8) -> Msg {
        loop {
            let msg = self.read().await.expect("proxy closed the connection");
            if msg.tag == tag {
                return msg;
            }
            assert_ne!(
                msg.tag,
                b'E',
                "error from proxy: {:?} {:?}",
                msg.code(),
                msg.message()
            );
        }
    }

    /// Everything until the proxy closes the connection.
    pub async fn until_closed(&mut self) -> Result<Reply, String> {
        let mut messages = Vec::new();
        loop {
            while let Some(m) = self.take_message() {
                messages.push(m);
            }
            if !self.fill().await? {
                break;
            }
        }
        while let Some(m) = self.take_message() {
            messages.push(m);
        }
        Ok(Reply {
            messages,
            trailing: std::mem::take(&mut self.buf).to_vec(),
        })
    }

    /// One unframed byte (the answer to SSLRequest/GSSENCRequest).
    pub async fn byte(&mut self) -> Result<Option<u8>, String> {
        if self.buf.is_empty() && !self.fill().await? {
            return Ok(None);
        }
        Ok(Some(self.buf.get_u8()))
    }

    /// Reads until ReadyForQuery; Err with what came instead (an error, a close).
    pub async fn until_ready(&mut self) -> Result<Vec<Msg>, String> {
        let mut got = Vec::new();
        loop {
            match self.next().await? {
                Some(m) if m.tag == b'Z' => {
                    got.push(m);
                    return Ok(got);
                }
                Some(m) if m.tag == b'E' => {
                    return Err(format!("error {:?}: {:?}", m.code(), m.message()))
                }
                Some(m) => got.push(m),
                None => return Err(format!("closed before ReadyForQuery; got {got:?}")),
            }
        }
    }

    /// Logs in as `app` (tenant named in options) through ReadyForQuery: SCRAM with
    /// `password` when the proxy asks for it, else trust. Fails the test otherwise.
    pub async fn login(addr: std::net::SocketAddr, tenant: &str, password: &str) -> Wire {
        Wire::login_keyed(addr, tenant, password).await.0
    }

    /// [`Wire::login`], also returning the cancel key the proxy gave (BackendKeyData).
    pub async fn login_keyed(
        addr: std::net::SocketAddr,
        tenant: &str,
        password: &str,
    ) -> (Wire, (i32, i32)) {
        let mut wire = Wire::connect(addr).await;
        wire.send(&startup(tenant)).await;
        let first = wire.read().await.expect("an authentication request");
        assert_eq!(first.tag, b'R', "{:?}", first.message());
        match first.int() {
            0 => {}
            10 => wire.scram(password).await,
            other => panic!("authentication request {other}: neither trust nor SCRAM"),
        }
        let mut key = None;
        loop {
            let msg = wire
                .read()
                .await
                .expect("login messages through ReadyForQuery");
            match msg.tag {
                b'K' => {
                    let b = &msg.body;
                    key = Some((
                        i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                        i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                    ));
                }
                b'Z' => break,
                b'E' => panic!("login failed: {:?}", msg.message()),
                _ => {}
            }
        }
        (wire, key.expect("BackendKeyData"))
    }

    /// The client side of SCRAM-SHA-256 after AuthenticationSASL, through AuthenticationOk.
    pub async fn scram(&mut self, password: &str) {
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        self.send(&sasl_initial(scram.message())).await;
        let cont = self.read().await.expect("SASLContinue");
        assert_eq!((cont.tag, cont.int()), (b'R', 11), "{:?}", cont.message());
        scram.update(&cont.body[4..]).expect("server-first");
        self.send(&message(b'p', scram.message())).await;
        let fin = self.read().await.expect("SASLFinal");
        assert_eq!((fin.tag, fin.int()), (b'R', 12), "{:?}", fin.message());
        let ok = self.read().await.expect("AuthenticationOk");
        assert_eq!((ok.tag, ok.int()), (b'R', 0));
    }

    /// Reads and discards everything up to ReadyForQuery, counting DataRow messages and
    /// their bytes (header included), without ever holding more than one read buffer.
    /// Returns (rows, bytes, ReadyForQuery's body).
    pub async fn count_rows_until_ready(&mut self) -> (u64, u64, Vec<u8>) {
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut owed = 0usize;
        loop {
            if owed > 0 {
                let n = owed.min(self.buf.len());
                self.buf.advance(n);
                owed -= n;
                if owed > 0 {
                    assert!(
                        self.fill().await.unwrap_or_else(|e| panic!("{e}")),
                        "EOF in the middle of a row"
                    );
                }
                continue;
            }
            if self.buf.len() < 5 {
                assert!(
                    self.fill().await.unwrap_or_else(|e| panic!("{e}")),
                    "EOF before ReadyForQuery"
                );
                continue;
            }
            let total = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                as usize
                + 1;
            match self.buf[0] {
                b'D' => {
                    rows += 1;
                    bytes += total as u64;
                    owed = total;
                }
                b'Z' => {
                    let msg = self.read().await.expect("ReadyForQuery");
                    return (rows, bytes, msg.body);
                }
                b'E' => {
                    let msg = self.read().await.expect("ErrorResponse");
                    panic!("error from proxy: {:?} {:?}", msg.code(), msg.message());
                }
                _ => {
                    self.read().await.expect("a message");
                }
            }
        }
    }
}
