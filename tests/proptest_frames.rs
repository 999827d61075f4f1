//! Property tests of the public [`FrameScanner`]: however a valid message stream is split
//! into reads, and whichever message types are inspected, the scanner reports the same
//! frames: every inspected message whole and exactly once, every other message's bytes in
//! order as pass-through runs, and nothing invented or lost. Malformed input fails at the
//! same message whatever the split.

use pgtenant::protocol::{FrameError, FrameScanner, Scanned};
use proptest::prelude::*;

/// What a scan reported, with pass-through continuations merged into the run they continue.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Whole(Vec<u8>),
    Through { tag: u8, bytes: Vec<u8> },
}

/// A message type byte from a small alphabet, so inspected and streamed types interleave.
fn tag() -> impl Strategy<Value = u8> {
    prop::sample::select(b"DdQPBECZTSNK".to_vec())
}

fn message() -> impl Strategy<Value = (u8, Vec<u8>)> {
    (
        tag(),
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..40),
            1 => prop::collection::vec(any::<u8>(), 0..3000),
        ],
    )
}

fn encode(messages: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, body) in messages {
        out.push(*tag);
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// What any correct scanner must report for `messages`.
fn model(messages: &[(u8, Vec<u8>)], inspected: &[u8]) -> Vec<Event> {
    messages
        .iter()
        .map(|(tag, body)| {
            let bytes = encode(&[(*tag, body.clone())]);
            if inspected.contains(tag) {
                Event::Whole(bytes)
            } else {
                Event::Through { tag: *tag, bytes }
            }
        })
        .collect()
}

/// Feeds `stream` to a scanner in reads of the given sizes (cycled; 0 counts as 1),
/// consuming exactly what it reports, as the proxy's relay loops do. Returns the events and
/// the error that stopped it, if any.
fn scan_in_reads(
    stream: &[u8],
    reads: &[usize],
    inspected: &[u8],
    max_message: usize,
) -> (Vec<Event>, Option<FrameError>) {
    let mut scanner = FrameScanner::new(max_message);
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut next_read = 0;
    let mut events = Vec::new();
    loop {
        match scanner.scan(&buf, |t| inspected.contains(&t)) {
            Err(e) => return (events, Some(e)),
            Ok(Some(Scanned::Message { tag, len })) => {
                assert!(len >= 5 && len <= buf.len(), "message length {len}");
                assert_eq!(buf[0], tag);
                assert!(inspected.contains(&tag), "uninspected tag reported whole");
                assert!(len <= max_message);
                events.push(Event::Whole(buf[..len].to_vec()));
                buf.drain(..len);
            }
            Ok(Some(Scanned::Through { len, start })) => {
                assert!(len > 0 && len <= buf.len(), "through length {len}");
                match start {
                    Some(tag) => {
                        assert_eq!(buf[0], tag);
                        assert!(!inspected.contains(&tag), "inspected tag streamed");
                        events.push(Event::Through {
                            tag,
                            bytes: buf[..len].to_vec(),
                        });
                    }
                    None => match events.last_mut() {
                        Some(Event::Through { bytes, .. }) => bytes.extend_from_slice(&buf[..len]),
                        other => panic!("continuation after {other:?}"),
                    },
                }
                buf.drain(..len);
            }
            Ok(None) => {
                if fed == stream.len() {
                    // A valid stream leaves nothing behind.
                    assert!(buf.is_empty(), "{} bytes never reported", buf.len());
                    return (events, None);
                }
                let size = reads[next_read % reads.len()].max(1);
                next_read += 1;
                let end = (fed + size).min(stream.len());
                buf.extend_from_slice(&stream[fed..end]);
                fed = end;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random splits of a valid stream, random inspect set: the frames of the model.
    #[test]
    fn random_splits_give_the_same_frames(
        messages in prop::collection::vec(message(), 0..40),
        inspected in prop::collection::vec(tag(), 0..8),
        reads in prop::collection::vec(0usize..700, 1..20),
    ) {
        let stream = encode(&messages);
        let expected = model(&messages, &inspected);
        let (whole, err) = scan_in_reads(&stream, &[stream.len().max(1)], &inspected, 1 << 20);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&whole, &expected);
        let (split, err) = scan_in_reads(&stream, &reads, &inspected, 1 << 20);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&split, &expected);
        let (bytewise, err) = scan_in_reads(&stream, &[1], &inspected, 1 << 20);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&bytewise, &expected);
    }

    /// A cap on inspected messages, or a corrupt length field, stops the scan at the same
    /// message whatever the split, after the same frames.
    #[test]
    fn errors_do_not_depend_on_the_split(
        messages in prop::collection::vec(message(), 1..20),
        inspected in prop::collection::vec(tag(), 0..8),
        reads in prop::collection::vec(0usize..300, 1..10),
        max_message in 5usize..200,
        corrupt in prop::option::of((any::<prop::sample::Index>(), -5i32..4)),
    ) {
        let mut stream = encode(&messages);
        if let Some((which, bad_len)) = corrupt {
            // Overwrite one message's length field with an impossible value.
            let i = which.index(messages.len());
            let at: usize = messages[..i].iter().map(|(_, b)| b.len() + 5).sum();
            stream[at + 1..at + 5].copy_from_slice(&bad_len.to_be_bytes());
            stream.truncate(at + 5);
        }
        let (whole, whole_err) = scan_in_reads(&stream, &[stream.len()], &inspected, max_message);
        let (split, split_err) = scan_in_reads(&stream, &reads, &inspected, max_message);
        prop_assert_eq!(&whole_err, &split_err);
        prop_assert_eq!(whole, split);
    }
}

#[test]
fn a_400_mb_row_never_needs_to_be_buffered() {
    // One DataRow header claiming 400 MB: the scanner streams it in whatever reads arrive.
    let mut scanner = FrameScanner::new(1 << 20);
    let header = [b'D', 0x17, 0xD7, 0x84, 0x04];
    let first = scanner.scan(&header, |t| t != b'D').unwrap();
    assert_eq!(
        first,
        Some(Scanned::Through {
            len: 5,
            start: Some(b'D')
        })
    );
    let chunk = vec![0u8; 64 * 1024];
    let mut owed = 0x17D7_8404usize - 4;
    while owed > 0 {
        match scanner.scan(&chunk, |t| t != b'D').unwrap() {
            Some(Scanned::Through { len, start: None }) => owed -= len,
            other => panic!("{other:?}"),
        }
    }
    assert!(!scanner.mid_message());
}
