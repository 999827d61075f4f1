//! Splitting a byte stream into messages without copying.
//!
//! Every message after startup is `tag: u8, len: i32 (including itself), body`. The
//! [`FrameScanner`] walks a read buffer and reports, message by message, either a whole
//! message the caller wants to inspect, or a run of bytes that may be forwarded untouched.
//! Messages the caller does not inspect (DataRow, CopyData, ...) *stream*: their bytes are
//! reported as they arrive, so a 400 MB row never has to sit in memory at once.

use std::fmt;

/// Header size: tag byte plus the 4-byte length.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A length field below 4 (it counts itself).
    BadLength { tag: u8, len: i32 },
    /// An inspected message larger than the configured cap.
    TooLarge { tag: u8, len: usize, max: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadLength { tag, len } => {
                write!(
                    f,
                    "invalid message length {len} for message type {}",
                    show_tag(*tag)
                )
            }
            FrameError::TooLarge { tag, len, max } => write!(
                f,
                "message of type {} is {len} bytes, more than the limit of {max}",
                show_tag(*tag)
            ),
        }
    }
}

impl std::error::Error for FrameError {}

fn show_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("\"{}\"", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// What the scanner found at the front of the (unconsumed part of the) buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// A whole message of `len` bytes (header included) that the caller asked to inspect.
    Message { tag: u8, len: usize },
    /// `len` bytes that belong to uninspected messages: forward them as they are. `start` is
    /// set when these bytes begin a new message of type `tag`.
    Through { len: usize, start: Option<u8> },
}

/// Incremental message splitter; keeps only the count of bytes still owed by a streaming
/// message, so it can be fed buffers of any size.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    /// Bytes of a streaming (uninspected) message not yet seen.
    streaming: usize,
    /// Cap on messages that must be buffered whole.
    max_message: usize,
}

impl FrameScanner {
    pub fn new(max_message: usize) -> Self {
        FrameScanner {
            streaming: 0,
            max_message,
        }
    }

    /// The cap on messages that must be buffered whole, from now on.
    pub fn set_max_message(&mut self, max_message: usize) {
        self.max_message = max_message;
    }

    /// The cap on messages that must be buffered whole.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// True when the scanner is in the middle of a streaming message.
    pub fn mid_message(&self) -> bool {
        self.streaming > 0
    }

    /// Looks at `buf` (the unconsumed bytes) and reports the next item, or `Ok(None)` when
    /// more input is needed. `inspect(tag)` says whether a message of that type must be seen
    /// whole. The caller must consume exactly the reported length before calling again.
    pub fn scan(
        &mut self,
        buf: &[u8],
        inspect: impl Fn(u8) -> bool,
    ) -> Result<Option<Scanned>, FrameError> {
        if self.streaming > 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            let len = self.streaming.min(buf.len());
            self.streaming -= len;
            return Ok(Some(Scanned::Through { len, start: None }));
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let tag = buf[0];
        let raw = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if raw < 4 {
            return Err(FrameError::BadLength { tag, len: raw });
        }
        let total = raw as usize + 1;
        if inspect(tag) {
            if total > self.max_message {
                return Err(FrameError::TooLarge {
                    tag,
                    len: total,
                    max: self.max_message,
                });
            }
            if buf.len() < total {
                return Ok(None);
            }
            return Ok(Some(Scanned::Message { tag, len: total }));
        }
        let len = total.min(buf.len());
        self.streaming = total - len;
        Ok(Some(Scanned::Through {
            len,
            start: Some(tag),
        }))
    }
}

/// Whether `buf` (at a message boundary) holds enough to act on: a whole message, the
/// header of one that `streams`, or a header that is already an error (bad or oversized
/// length, which the scanner then reports).
pub fn message_ready(buf: &[u8], streams: impl Fn(u8) -> bool, max_message: usize) -> bool {
    if buf.len() < HEADER_LEN {
        return false;
    }
    let raw = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if raw < 4 || streams(buf[0]) {
        return true;
    }
    let total = raw as usize + 1;
    total > max_message || buf.len() >= total
}

/// The body of a whole message (after the 5-byte header).
pub fn body(message: &[u8]) -> &[u8] {
    &message[HEADER_LEN..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Feeds `stream` in chunks of `chunk` bytes and returns (inspected messages, streamed
    /// bytes per message start).
    fn run(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Vec<(u8, usize)>) {
        let mut sc = FrameScanner::new(1 << 20);
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut inspected = Vec::new();
        let mut through: Vec<(u8, usize)> = Vec::new();
        loop {
            match sc.scan(&buf, |t| t != b'D').unwrap() {
                Some(Scanned::Message { len, .. }) => {
                    inspected.push(buf[..len].to_vec());
                    buf.drain(..len);
                }
                Some(Scanned::Through { len, start }) => {
                    match start {
                        Some(t) => through.push((t, len)),
                        None => through.last_mut().unwrap().1 += len,
                    }
                    buf.drain(..len);
                }
                None => {
                    if fed == stream.len() {
                        break;
                    }
                    let end = (fed + chunk).min(stream.len());
                    buf.extend_from_slice(&stream[fed..end]);
                    fed = end;
                }
            }
        }
        assert!(buf.is_empty());
        (inspected, through)
    }

    #[test]
    fn any_split_gives_the_same_frames() {
        let mut stream = msg(b'T', b"rowdesc");
        stream.extend(msg(b'D', &[7u8; 1000]));
        stream.extend(msg(b'C', b"SELECT 1\0"));
        stream.extend(msg(b'Z', b"I"));
        for chunk in [1, 2, 3, 5, 7, 64, 4096] {
            let (inspected, through) = run(&stream, chunk);
            assert_eq!(inspected.len(), 3, "chunk {chunk}");
            assert_eq!(inspected[2], msg(b'Z', b"I"));
            assert_eq!(through, vec![(b'D', 1005)], "chunk {chunk}");
        }
    }

    #[test]
    fn ready_means_whole_streaming_or_broken() {
        let q = msg(b'Q', b"select 1\0");
        assert!(message_ready(&q, |_| false, 100));
        assert!(
            !message_ready(&q[..q.len() - 1], |_| false, 100),
            "half a Query is not ready"
        );
        assert!(!message_ready(&q[..4], |_| true, 100));
        assert!(
            message_ready(&q[..6], |t| t == b'Q', 100),
            "a streaming type is ready at its header"
        );
        assert!(
            message_ready(&q[..6], |_| false, 5),
            "an oversized message is ready to be refused"
        );
        assert!(
            message_ready(&[b'Q', 0, 0, 0, 1], |_| false, 100),
            "a bad length is ready to be refused"
        );
    }

    #[test]
    fn bad_and_oversized_lengths_are_errors() {
        let mut sc = FrameScanner::new(100);
        assert_eq!(
            sc.scan(&[b'Q', 0, 0, 0, 3], |_| true),
            Err(FrameError::BadLength { tag: b'Q', len: 3 })
        );
        assert_eq!(
            sc.scan(&[b'Q', 0xff, 0xff, 0xff, 0xff], |_| true),
            Err(FrameError::BadLength { tag: b'Q', len: -1 })
        );
        assert!(matches!(
            sc.scan(&[b'Q', 0, 0, 1, 0], |_| true),
            Err(FrameError::TooLarge { .. })
        ));
        // Streaming messages are not capped.
        assert_eq!(
            sc.scan(&[b'd', 0, 0, 1, 0], |_| false),
            Ok(Some(Scanned::Through {
                len: 5,
                start: Some(b'd')
            }))
        );
        assert!(sc.mid_message());
    }
}
