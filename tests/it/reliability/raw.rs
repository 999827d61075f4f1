//! A wire-level client for the tests that must stop at a chosen protocol point (half a
//! startup packet, after AuthenticationSASL, a pipeline without Sync), or must not read.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Any one step of a raw exchange may take this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

/// One server message: type byte and body.
#[derive(Debug)]
pub struct Msg {
    pub tag: u8,
    pub body: BytesMut,
}

impl Msg {
    /// The SQLSTATE of an ErrorResponse/NoticeResponse.
    pub fn code(&self) -> Option<String> {
        field(&self.body, b'C')
    }

    pub fn message(&self) -> Option<String> {
        field(&self.body, b'M')
    }

    /// An i32 at the front of the body (Authentication request kinds).
    pub fn int(&self) -> i32 {
        i32::from_be_bytes([self.body[0], self.body[1], self.body[2], self.body[3]])
    }
}

fn field(body: &[u8], code: u8) -> Option<String> {
    let mut rest = body;
    while let Some((&c, tail)) = rest.split_first() {
        if c == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if c == code {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}

/// A StartupMessage with these parameters.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(196_608);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// `tag`, length, `body`.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

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

pub const FLUSH: &[u8] = b"H\0\0\0\x04";

impl Raw {
    pub async fn connect(addr: std::net::SocketAddr) -> Raw {
        let stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to proxy");
    }

    /// Reads more into the buffer; false on EOF.
    async fn fill(&mut self) -> bool {
        if self.buf.capacity() - self.buf.len() < 8192 {
            self.buf.reserve(64 * 1024);
        }
        let n = tokio::time::timeout(STEP_TIMEOUT, self.stream.read_buf(&mut self.buf))
            .await
            .expect("read from proxy timed out")
            .unwrap_or(0);
        n > 0
    }

    /// The next whole message, or `None` at EOF.
    pub async fn read(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let total = len as usize + 1;
                if self.buf.len() >= total {
                    let tag = self.buf[0];
                    let mut msg = self.buf.split_to(total);
                    msg.advance(5);
                    return Some(Msg { tag, body: msg });
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads until a message of type `tag` (returned); panics on EOF or an ErrorResponse.
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

    /// Startup as `app` (tenant by options), then password exchange for SCRAM or trust,
    /// through ReadyForQuery.
    pub async fn login(addr: std::net::SocketAddr, tenant: &str, password: &str) -> Raw {
        let mut raw = Raw::connect(addr).await;
        let options = format!("-c tenant={tenant}");
        raw.send(&startup_packet(&[
            ("user", "app"),
            ("database", "app"),
            ("options", &options),
        ]))
        .await;
        let first = raw.read().await.expect("an authentication request");
        assert_eq!(first.tag, b'R', "{:?}", first.message());
        if first.int() == 10 {
            raw.scram(password).await;
        }
        raw.read_until(b'Z').await;
        raw
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

    /// Reads and discards everything up to EOF, counting DataRow messages and their bytes
    /// (header included), without ever holding more than one read buffer.
    pub async fn count_rows_until_ready(&mut self) -> (u64, u64, Vec<u8>) {
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut owed = 0usize;
        loop {
            if owed > 0 {
                let n = owed.min(self.buf.len());
                self.buf.advance(n);
                owed -= n;
                if owed > 0 && !self.fill().await {
                    panic!("EOF in the middle of a row");
                }
                continue;
            }
            if self.buf.len() < 5 {
                assert!(self.fill().await, "EOF before ReadyForQuery");
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
                    return (rows, bytes, msg.body.to_vec());
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

/// SASLInitialResponse choosing SCRAM-SHA-256.
pub fn sasl_initial(first: &[u8]) -> Vec<u8> {
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first);
    message(b'p', &body)
}
