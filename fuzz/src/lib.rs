//! The bodies of pgtenant's fuzz targets, one function per target, shared by the libFuzzer
//! binaries in `fuzz_targets/` (run by `cargo fuzz`, see `scripts/fuzz`) and by this crate's
//! `cargo test`, which replays the seeds, the regression inputs and a stretch of
//! pseudo-random inputs on any toolchain ([`replay`]). The main crate compiles this file
//! too (`tests/fuzz_replay.rs`), so `scripts/test` replays the saved inputs as well.
//!
//! Each target checks properties, not only "does not panic": the frame scanner reports the
//! same frames whatever the read boundaries, a decoded startup packet re-encodes to the same
//! bytes, a renamed Bind keeps its framing, no fuzzed SCRAM/md5 exchange ever logs in, and
//! an authentication message over PostgreSQL's limit is refused at its header.

use std::cell::RefCell;
use std::path::Path;

use bytes::BytesMut;
use pgtenant::config::{AuthMethod, ScramVerifier, TenantAllow, UserConfig, UserSecret};
use pgtenant::protocol::startup::{self, StartupRequest, MAX_STARTUP_PACKET};
use pgtenant::protocol::{backend, encode, frontend, FrameError, FrameScanner, Scanned};
use pgtenant::session::client::read_startup;
use pgtenant::session::prepared;
use pgtenant::transport::stream::ClientStream;
use tokio::io::AsyncWriteExt;

/// A whole message: `tag`, length, `body`.
fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// What one scan of a stream reported, continuations merged.
#[derive(Debug, PartialEq, Eq)]
struct ScanLog {
    whole: Vec<(usize, Vec<u8>)>,
    through: Vec<(Option<u8>, Vec<u8>)>,
    error: Option<FrameError>,
    left_over: usize,
}

/// Scans `stream` fed in reads of `sizes` (cycled), consuming exactly what is reported.
fn scan(stream: &[u8], sizes: &[usize], inspect: impl Fn(u8) -> bool, max: usize) -> ScanLog {
    let mut scanner = FrameScanner::new(max);
    let mut log = ScanLog {
        whole: Vec::new(),
        through: Vec::new(),
        error: None,
        left_over: 0,
    };
    let mut buf: Vec<u8> = Vec::new();
    let (mut fed, mut read, mut event) = (0, 0, 0);
    loop {
        match scanner.scan(&buf, &inspect) {
            Err(e) => {
                log.error = Some(e);
                break;
            }
            Ok(Some(Scanned::Message { tag, len })) => {
                assert!(
                    len >= 5 && len <= buf.len() && len <= max,
                    "bad message len {len}"
                );
                assert!(inspect(tag) && buf[0] == tag);
                let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                assert_eq!(declared as usize + 1, len);
                log.whole.push((event, buf[..len].to_vec()));
                event += 1;
                buf.drain(..len);
            }
            Ok(Some(Scanned::Through { len, start })) => {
                assert!(len > 0 && len <= buf.len(), "bad through len {len}");
                match start {
                    Some(tag) => {
                        assert!(!inspect(tag) && buf[0] == tag);
                        log.through.push((Some(tag), buf[..len].to_vec()));
                        event += 1;
                    }
                    None => log
                        .through
                        .last_mut()
                        .expect("a continuation follows a start")
                        .1
                        .extend_from_slice(&buf[..len]),
                }
                buf.drain(..len);
            }
            Ok(None) => {
                if fed == stream.len() {
                    break;
                }
                let end = (fed + sizes[read % sizes.len()].max(1)).min(stream.len());
                read += 1;
                buf.extend_from_slice(&stream[fed..end]);
                fed = end;
            }
        }
    }
    log.left_over = buf.len() + (stream.len() - fed);
    log
}

/// xorshift64*: read sizes from a seed.
fn read_sizes(seed: u64, n: usize, max: usize) -> Vec<usize> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % max + 1
        })
        .collect()
}

/// `frames`: [`FrameScanner`] over arbitrary bytes with arbitrary chunking. Bytes 0..3 pick
/// the inspected tags, the read sizes and the message cap; the rest is the stream. Scanning
/// it in those reads must report exactly what scanning it in one read does.
pub fn frames(data: &[u8]) {
    let [mask, seed, cap, stream @ ..] = data else {
        return;
    };
    let inspect = |t: u8| (t.wrapping_mul(0x9d) ^ mask) & 0b11 != 0;
    let max = 5 + *cap as usize * 8;
    let one_read = scan(stream, &[stream.len()], inspect, max);
    let sizes = read_sizes(u64::from(*seed) << 8 | stream.len() as u64, 16, 64);
    let many_reads = scan(stream, &sizes, inspect, max);
    assert_eq!(one_read, many_reads, "read sizes {sizes:?}");
    let bytewise = scan(stream, &[1], inspect, max);
    assert_eq!(one_read, bytewise);
}

/// `startup`: the first packet ([`startup::decode`]), the client's startup parameters
/// ([`read_startup`]) and `options` parsing ([`startup::parse_options`]).
pub fn startup(data: &[u8]) {
    match startup::decode(data) {
        Ok(Some((request, len))) => {
            assert!((8..=MAX_STARTUP_PACKET).contains(&len) && len <= data.len());
            // The packet alone decodes the same; one byte short is incomplete.
            assert_eq!(
                startup::decode(&data[..len]),
                Ok(Some((request.clone(), len)))
            );
            assert_eq!(startup::decode(&data[..len - 1]), Ok(None));
            if let StartupRequest::Startup { params, minor } = request {
                assert_eq!(minor, u16::from_be_bytes([data[6], data[7]]));
                let pairs: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let mut again = BytesMut::new();
                encode::startup_message(&mut again, &pairs);
                // The encoder speaks 3.0; any 3.x minor version decodes (and is negotiated
                // down by the session), so the rest must match byte for byte.
                let mut as_3_0 = data[..len].to_vec();
                as_3_0[6..8].copy_from_slice(&[0, 0]);
                assert_eq!(&again[..], &as_3_0[..], "startup packet re-encodes");
                let _ = read_startup(params);
            }
        }
        Ok(None) => {
            if data.len() >= 4 {
                let len = i32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                assert!(len as usize > data.len());
            }
        }
        Err(_) => {}
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(settings) = startup::parse_options(&text) {
        for (name, _) in settings {
            assert!(!name.is_empty() && !name.contains('-'), "{name:?}");
        }
    }
}

/// `backend_decode`: [`backend::decode`] on a whole frame (tag = first byte, body = rest),
/// and the error-field accessors the proxy uses on what it decodes.
pub fn backend_decode(data: &[u8]) {
    let Some((&tag, body)) = data.split_first() else {
        return;
    };
    let msg = frame(tag, body);
    match backend::decode(&msg) {
        Ok(backend::Backend::Error(fields)) | Ok(backend::Backend::Notice(fields)) => {
            let _ = (fields.code(), fields.message(), fields.severity());
            for code in [b'C', b'M', b'S', b'V', b'D', b'H'] {
                let _ = fields.get(code);
            }
        }
        Ok(backend::Backend::ReadyForQuery(status)) => {
            assert_eq!(Some(status.as_byte()), body.first().copied());
        }
        _ => {}
    }
    let _ = backend::tag_changes_session_state(body);
}

/// `frontend_decode`: [`frontend::decode`] and the prepared-statement helpers that take
/// client messages apart and rewrite them, on a whole frame (tag = first byte).
pub fn frontend_decode(data: &[u8]) {
    let Some((&tag, body)) = data.split_first() else {
        return;
    };
    let msg = frame(tag, body);
    let _ = frontend::decode(&msg);
    let _ = frontend::is_known_tag(tag);
    let _ = pgtenant::protocol::sql::effects(body);
    let _ = frontend::sasl_initial_response(body);
    let _ = prepared::classify_sql(body);
    if let Some((name, sql, types)) = frontend::split_parse(&msg) {
        assert!(name.len() + sql.len() + types.len() + 2 <= body.len());
        let stmt = prepared::server_stmt(7, sql, types);
        assert_eq!(
            frontend::split_parse(&stmt.parse),
            Some((&stmt.server_name[..], sql, types))
        );
    }
    if let Some((portal, _, _)) = frontend::split_bind(&msg) {
        let mut out = BytesMut::new();
        encode::bind_renamed(&mut out, &msg, b"pgtenant_s1").expect("a Bind that splits");
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len(), "renamed Bind is framed");
        let (p, s, _) = frontend::split_bind(&out).expect("renamed Bind splits");
        assert_eq!((p, s), (portal, &b"pgtenant_s1"[..]));
    }
    if let Some((which, name)) = frontend::split_target(&msg) {
        let mut out = BytesMut::new();
        encode::describe_or_close(&mut out, tag, which, name);
        assert_eq!(frontend::split_target(&out), Some((which, name)));
    }
}

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|cell| {
        let mut cell = cell.borrow_mut();
        let rt = cell.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime")
        });
        rt.block_on(f)
    })
}

/// A user with a fixed, unguessable verifier: no fuzzed exchange can log in as it.
fn fuzz_user() -> UserConfig {
    UserConfig {
        name: "app".into(),
        secret: UserSecret::Scram(ScramVerifier {
            iterations: 4096,
            salt: b"pgtenant-fuzz-salt".to_vec(),
            stored_key: (0..32u32).map(|i| (i * 7 + 3) as u8).collect(),
            server_key: (0..32u32).map(|i| (i * 11 + 5) as u8).collect(),
        }),
        tenants: TenantAllow::All,
    }
}

/// `scram`: a client's side of authentication from arbitrary bytes, fed to
/// [`pgtenant::auth::authenticate`] over a `tokio::io::duplex`. Byte 0 picks the method
/// (SCRAM mostly, md5 sometimes), whether the mechanism name is right, whether the
/// SASLInitialResponse length is right, and whether the rest is sent raw (unframed); bytes
/// 1..3 split the rest into client-first and client-final messages.
pub fn scram(data: &[u8]) {
    let [mode, split_hi, split_lo, rest @ ..] = data else {
        return;
    };
    let method = if mode & 0b11 == 3 {
        AuthMethod::Md5
    } else {
        AuthMethod::ScramSha256
    };
    let split = (usize::from(*split_hi) << 8 | usize::from(*split_lo)).min(rest.len());
    let (first, last) = rest.split_at(split);
    let mut wire = Vec::new();
    if mode & 0b100 != 0 {
        wire.extend_from_slice(rest);
    } else {
        let mechanism: &[u8] = if mode & 0b1000 != 0 {
            b"SCRAM-SHA-256-PLUS"
        } else {
            b"SCRAM-SHA-256"
        };
        let mut initial = mechanism.to_vec();
        initial.push(0);
        let declared = if mode & 0b1_0000 != 0 {
            first.len() as i32 + 1
        } else {
            first.len() as i32
        };
        initial.extend_from_slice(&declared.to_be_bytes());
        initial.extend_from_slice(first);
        let initial_msg = if method == AuthMethod::Md5 {
            frame(b'p', first)
        } else {
            frame(b'p', &initial)
        };
        wire.extend(initial_msg);
        wire.extend(frame(b'p', last));
    }
    let user = fuzz_user();
    let result = block_on(async {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        client.write_all(&wire).await.expect("duplex has room");
        client.shutdown().await.expect("shutdown");
        let mut stream = ClientStream::new(server, 1 << 16);
        let result =
            pgtenant::auth::authenticate(&mut stream, method, "app", Some(&user), None).await;
        drop(client);
        result
    });
    assert!(result.is_err(), "a fuzzed exchange logged in");
}

/// The authentication exchange as a client that has not logged in drives it: `data[0]`
/// picks md5 or SCRAM, the rest is what the client sends, raw (its own length fields,
/// truncated anywhere, oversized). Checked: it never logs in; a first message of another
/// type than a password message, or with a length field below 4 or above PostgreSQL's
/// 65,535, is refused (08P01) at its header, whether or not its body follows; and the
/// stream never holds more than about one authentication message, whatever is sent.
pub fn auth_exchange(data: &[u8]) {
    use pgtenant::auth::AuthError;
    use pgtenant::transport::stream::MAX_AUTH_MESSAGE;
    let [mode, wire @ ..] = data else {
        return;
    };
    let method = if mode & 1 == 1 {
        AuthMethod::Md5
    } else {
        AuthMethod::ScramSha256
    };
    let user = fuzz_user();
    let (result, buffered) = block_on(async {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        client.write_all(wire).await.expect("duplex has room");
        client.shutdown().await.expect("shutdown");
        let mut stream = ClientStream::for_login(server);
        let result =
            pgtenant::auth::authenticate(&mut stream, method, "app", Some(&user), None).await;
        drop(client);
        (result, stream.rbuf.capacity())
    });
    assert!(result.is_err(), "a fuzzed exchange logged in");
    if wire.len() >= 5 {
        let len = i32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]);
        if wire[0] != b'p' || !(4..=MAX_AUTH_MESSAGE as i32).contains(&len) {
            let refused = matches!(&result, Err(e @ AuthError::Malformed(_))
                if e.to_client().is_some_and(|i| i.code == "08P01"));
            assert!(
                refused,
                "first message {:?} not refused at its header: {result:?}",
                &wire[..5]
            );
        }
    }
    assert!(
        buffered <= 4 * (MAX_AUTH_MESSAGE + 1),
        "{buffered} bytes buffered during authentication"
    );
}

// --- Replaying saved inputs without libFuzzer (this crate's `cargo test`, and the main
// crate's `tests/fuzz_replay.rs`, which `scripts/test` runs) ---

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its directories under `seeds/`, `regressions/`, `corpus/`.
pub const TARGETS: [(&str, Target); 6] = [
    ("frames", frames),
    ("startup", startup),
    ("backend_decode", backend_decode),
    ("frontend_decode", frontend_decode),
    ("scram", scram),
    ("auth_exchange", auth_exchange),
];

/// The files in `dir` (none if it does not exist), sorted by name.
pub fn inputs(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != ".keep"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `seed`: flip, overwrite with an interesting byte, insert, delete,
/// truncate, or splice in a run of another length field.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if at < v.len() => v[at] ^= 1 << rng.below(8),
            1 if at < v.len() => v[at] = [0, 0xff, 0x7f, 0x80, b'=', b',', 4][rng.below(7)],
            2 => v.insert(at, rng.next() as u8),
            3 if at < v.len() => {
                v.remove(at);
            }
            4 => v.truncate(at),
            _ => {
                let len = [0i32, 3, 4, 5, -1, i32::MAX, 10_001][rng.below(7)];
                let at = at.min(v.len());
                v.splice(at..at, len.to_be_bytes());
            }
        }
    }
    v
}

/// Runs every target over its saved inputs, from `root` (this crate's directory): the seeds,
/// every input kept under `regressions/<target>/` (crashes found by `scripts/fuzz`) and the
/// local corpus `corpus/<target>/` if there is one (not in git), then `mutations`
/// pseudo-random mutations of the seeds. Returns one summary line per target.
pub fn replay(root: &Path, mutations: usize) -> Vec<String> {
    let mut summary = Vec::new();
    for (name, target) in TARGETS {
        let seeds = inputs(&root.join("seeds").join(name));
        assert!(!seeds.is_empty(), "no seeds for {name}");
        let regressions = inputs(&root.join("regressions").join(name));
        let corpus = inputs(&root.join("corpus").join(name));
        for input in seeds.iter().chain(&regressions).chain(&corpus) {
            target(input);
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        for _ in 0..mutations {
            let seed = &seeds[rng.below(seeds.len())];
            target(&mutate(&mut rng, seed));
        }
        summary.push(format!(
            "{name}: {} seeds, {} regressions, {} corpus inputs, {mutations} mutations",
            seeds.len(),
            regressions.len(),
            corpus.len()
        ));
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_sizes_are_in_range() {
        let sizes = read_sizes(42, 100, 64);
        assert!(sizes.iter().all(|s| (1..=64).contains(s)));
        assert!(sizes.iter().any(|&s| s != sizes[0]));
    }
}
