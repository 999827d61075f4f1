//! Hostile and malformed input over raw TCP: random bytes, absurd lengths, truncated and
//! oversized startup packets, unsupported protocol versions, garbage after SSLRequest or
//! after a valid login, messages over `max_message_size`. Each gets 08P01 (or just a
//! closed connection), and an honest client on the same proxy sees nothing of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::types::Type;

use crate::support::wire::{
    message, packet, params, query, startup, Msg, Reply, Wire, CANCEL_REQUEST, GSSENC_REQUEST,
    PROTOCOL_3_0, SSL_REQUEST, STEP_TIMEOUT,
};
use crate::support::{
    connect, connect_watched, describe, simple_value, ConnectError, ProxyOptions,
};

/// Env var that makes [`isolated_proxy_process`] run a proxy with the config it holds.
const ISOLATED_CONFIG_ENV: &str = "PGTENANT_IT_ISOLATED_PROXY_CONFIG";
const PORT_LINE: &str = "ISOLATED_PROXY_PORT=";
/// What the child prints for each panic in its tasks (one line).
const PANIC_LINE: &str = "ISOLATED_PROXY_PANIC=";

/// A proxy in a child process (this test binary again, running only
/// [`isolated_proxy_process`]). A proxy task that never yields would freeze a runtime shared
/// with the test, so the test would hang instead of failing, and keep burning CPU for the
/// rest of the run; a child process is simply killed when the test ends. A panic in one of
/// the child's tasks fails the test when the proxy is dropped, as with a `TestProxy`.
pub(crate) struct IsolatedProxy {
    addr: std::net::SocketAddr,
    child: std::process::Child,
    /// Reads the child's stdout to its end, collecting its [`PANIC_LINE`]s.
    output: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl IsolatedProxy {
    pub(crate) fn start(options: ProxyOptions) -> IsolatedProxy {
        use std::io::BufRead;
        let pg = crate::support::pg();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "hostile::isolated_proxy_process", "--nocapture"])
            .arg("--ignored")
            .args(["--test-threads", "1"])
            .env(ISOLATED_CONFIG_ENV, options.toml(pg.host(), pg.port()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the isolated proxy process");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let port = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    // libtest prints "test NAME ... " on the same line first.
                    if let Some(at) = line.find(PORT_LINE) {
                        let port = line[at + PORT_LINE.len()..].trim();
                        break port.parse::<u16>().expect("a port number");
                    }
                }
                _ => {
                    let _ = child.kill();
                    panic!("the isolated proxy process exited before listening");
                }
            }
        };
        // Keep reading its output so it never blocks on a full pipe; keep the panics.
        let output = std::thread::spawn(move || {
            lines
                .map_while(Result::ok)
                .filter_map(|l| Some(l[l.find(PANIC_LINE)? + PANIC_LINE.len()..].to_string()))
                .collect()
        });
        IsolatedProxy {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            output: Some(output),
        }
    }

    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The proxy's own process (for its RSS).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A tokio-postgres connection string for user `app` as `tenant`.
    pub(crate) fn connect_str(&self, tenant: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password={} dbname=app \
             options='-c tenant={tenant}' connect_timeout=10",
            self.addr.port(),
            crate::support::PROXY_PASSWORD
        )
    }

    pub(crate) async fn connect(
        &self,
        tenant: &str,
    ) -> Result<tokio_postgres::Client, ConnectError> {
        connect(&self.connect_str(tenant)).await
    }
}

impl Drop for IsolatedProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let panics = match self.output.take().map(|t| t.join()) {
            Some(Ok(panics)) => panics,
            _ => Vec::new(),
        };
        if !panics.is_empty() {
            let text = format!(
                "the isolated proxy panicked inside its own tasks during this test:\n  {}",
                panics.join("\n  ")
            );
            if std::thread::panicking() {
                eprintln!("{text}");
            } else {
                panic!("{text}");
            }
        }
    }
}

/// Not a test of its own: the body of an [`IsolatedProxy`] child process (run with
/// `--ignored`), hence ignored in a normal run. Without the env var it does nothing.
#[test]
#[ignore = "the body of IsolatedProxy's child process, not a test"]
fn isolated_proxy_process() {
    let Ok(config_text) = std::env::var(ISOLATED_CONFIG_ENV) else {
        return;
    };
    // Each panic in a task as one line on stdout, for the parent's IsolatedProxy to see.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if tokio::task::try_id().is_some() {
            let text = info.to_string().replace('\n', " ");
            println!("{PANIC_LINE}{text}");
        }
        previous(info);
    }));
    // The parent holds our stdin: when it goes away, so do we.
    std::thread::spawn(|| {
        let mut buf = [0u8; 1];
        let _ = std::io::Read::read(&mut std::io::stdin(), &mut buf);
        std::process::exit(0);
    });
    // Proxy logs on stderr when asked for (RUST_LOG=pgtenant=debug cargo test ...).
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let config = pgtenant::config::Config::from_toml_str(&config_text, "isolated.toml")
        .unwrap_or_else(|e| panic!("isolated proxy config: {e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{PORT_LINE}{}", listener.local_addr().unwrap().port());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let _ = pgtenant::run(listener, std::sync::Arc::new(config), shutdown).await;
    });
}

/// Runs one hostile connection of kind `i % KINDS`; Err says what was wrong.
async fn attack(addr: std::net::SocketAddr, i: usize) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(i as u64);
    let kind = i % KINDS;
    let unsupported = |r: &Reply| -> Result<(), String> {
        let e = r.expect_error("08P01")?;
        let text = e.message().unwrap_or_default();
        if text.contains("unsupported") && text.contains("protocol") {
            Ok(())
        } else {
            Err(format!(
                "message should mention an unsupported protocol: {text:?}"
            ))
        }
    };
    let mut wire = match kind {
        10..=13 => Wire::login(addr, "t1", "").await,
        _ => Wire::connect(addr).await,
    };
    match kind {
        0 => {
            // Random bytes, then the client stops writing.
            let n = rng.gen_range(1..=64);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            wire.send(&bytes).await;
            let _ = wire.stream.shutdown().await;
            wire.until_closed().await.map(drop)
        }
        1..=4 => {
            let len: u32 = [0xFFFF_FFFF, 0x7FFF_FFFF, 3, 9_999_999][kind - 1];
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
            wire.send(&bytes).await;
            wire.until_closed().await?.expect_error("08P01").map(drop)
        }
        5 => {
            // A truncated startup packet, then the client goes away.
            let full = startup("t1");
            wire.send(&full[..rng.gen_range(1..full.len())]).await;
            let _ = wire.stream.shutdown().await;
            wire.until_closed().await.map(drop)
        }
        6 | 7 => {
            let major = if kind == 6 { 2 } else { 4 };
            wire.send(&packet(major << 16, &params(&[("user", "app")])))
                .await;
            unsupported(&wire.until_closed().await?)
        }
        8 => {
            wire.send(&packet(SSL_REQUEST, &[])).await;
            match wire.byte().await? {
                Some(b'N') => {}
                other => return Err(format!("SSLRequest answered {other:?}")),
            }
            wire.send(&[0xff; 16]).await;
            wire.until_closed().await?.expect_error("08P01").map(drop)
        }
        9 => {
            // Bytes sent before the answer to SSLRequest.
            let mut bytes = packet(SSL_REQUEST, &[]);
            bytes.extend_from_slice(&startup("t1"));
            wire.send(&bytes).await;
            let reply = wire.until_closed().await?;
            if reply.messages.iter().any(|m| m.tag == b'R') {
                return Err(format!("logged in after a stuffed SSLRequest: {reply:?}"));
            }
            reply.expect_error("08P01").map(drop)
        }
        10 => {
            // A message type that does not exist.
            let tag = [b'!', b'z', 0, 0xff, b'A'][rng.gen_range(0..5)];
            wire.send(&message(tag, b"")).await;
            wire.until_closed().await?.expect_error("08P01").map(drop)
        }
        11 => {
            wire.send(&[b'Q', 0, 0, 0, 3]).await;
            wire.until_closed().await?.expect_error("08P01").map(drop)
        }
        12 => {
            wire.send(&message(b'p', b"secret\0")).await;
            wire.until_closed().await?.expect_error("08P01").map(drop)
        }
        13 => {
            // Half a Query, then the client goes away.
            let q = query("SELECT tenant FROM whoami");
            wire.send(&q[..rng.gen_range(1..q.len())]).await;
            let _ = wire.stream.shutdown().await;
            wire.until_closed().await.map(drop)
        }
        14 => {
            // Startup packet whose parameters are not terminated.
            wire.send(&packet(PROTOCOL_3_0, b"user\0app\0database\0app"))
                .await;
            wire.until_closed().await?.expect_error("08P01").map(drop)
        }
        15 => {
            wire.send(&packet(GSSENC_REQUEST, &[])).await;
            match wire.byte().await? {
                Some(b'N') => {}
                other => return Err(format!("GSSENCRequest answered {other:?}")),
            }
            let _ = wire.stream.shutdown().await;
            wire.until_closed().await.map(drop)
        }
        16 => {
            // A cancel request with a key nobody holds.
            let mut key = rng.gen::<[u8; 8]>().to_vec();
            key[0] &= 0x7f;
            wire.send(&packet(CANCEL_REQUEST, &key)).await;
            let reply = wire.until_closed().await?;
            if reply.messages.is_empty() && reply.trailing.is_empty() {
                Ok(())
            } else {
                Err(format!("a cancel request got an answer: {reply:?}"))
            }
        }
        _ => {
            // A parameter value that is not UTF-8.
            wire.send(&packet(PROTOCOL_3_0, b"user\0app\xff\xfe\0\0"))
                .await;
            wire.until_closed().await?.expect_error("08P01").map(drop)
        }
    }
}

const KINDS: usize = 18;

/// A client doing honest transactions until `stop`; returns (transactions, errors).
async fn honest(conn: String, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let client = match connect(&conn).await {
        Ok(c) => c,
        Err(e) => return (0, vec![format!("connecting: {e}")]),
    };
    let mut done = 0;
    let mut errors = Vec::new();
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && done < 20_000 && Instant::now() < deadline {
        let got = match done % 3 {
            0 => simple_value(&client, "SELECT tenant FROM whoami").await,
            1 => client
                .query_typed(
                    "SELECT tenant FROM whoami WHERE n = $1",
                    &[(&2i32, Type::INT4)],
                )
                .await
                .map(|rows| rows.first().map(|r| r.get::<_, String>(0))),
            _ => {
                async {
                    client.batch_execute("BEGIN").await?;
                    let v = simple_value(&client, "SELECT tenant FROM whoami").await?;
                    client.batch_execute("COMMIT").await?;
                    Ok(v)
                }
                .await
            }
        };
        match got {
            Ok(Some(t)) if t == "t2" => {}
            Ok(other) => errors.push(format!("transaction {done}: read {other:?}")),
            Err(e) => {
                errors.push(format!(
                    "transaction {done} ({:?} in): {}",
                    started.elapsed(),
                    describe(&e)
                ));
                if client.is_closed() {
                    break;
                }
            }
        }
        done += 1;
    }
    (done, errors)
}

pub(crate) async fn assert_still_serving(proxy: &IsolatedProxy) {
    let client = proxy
        .connect("t3")
        .await
        .unwrap_or_else(|e| panic!("a login after the attack: {e}"));
    let got = simple_value(&client, "SELECT tenant FROM whoami")
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("t3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connections_do_not_hurt_an_honest_client() {
    const ATTACKS: usize = 306;
    const AT_ONCE: usize = 34;
    let proxy = IsolatedProxy::start(ProxyOptions::default().auth("trust").pool_size(2));
    let addr = proxy.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let honest_task = tokio::spawn(honest(proxy.connect_str("t2"), stop.clone()));
    let started = Instant::now();
    let mut failures = Vec::new();
    for batch in (0..ATTACKS).collect::<Vec<_>>().chunks(AT_ONCE) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&i| tokio::spawn(async move { (i, attack(addr, i).await) }))
            .collect();
        for task in tasks {
            let (i, result) = task.await.expect("attack task");
            if let Err(e) = result {
                failures.push(format!("attack {i} (kind {}): {e}", i % KINDS));
            }
        }
    }
    eprintln!("{ATTACKS} hostile connections in {:?}", started.elapsed());
    stop.store(true, Ordering::Relaxed);
    let (done, errors) = honest_task.await.expect("honest client task");
    eprintln!(
        "honest client: {done} transactions, {} errors",
        errors.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {ATTACKS} hostile connections were not handled as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        errors.is_empty(),
        "honest client errors:\n{}",
        errors.join("\n")
    );
    assert!(done > 0, "the honest client ran no transaction");
    assert_still_serving(&proxy).await;
}

#[tokio::test]
async fn oversized_startup_packet_is_08p01() {
    let proxy = IsolatedProxy::start(ProxyOptions::default().auth("trust"));
    // A real packet of 12,000 bytes (a long options value).
    let pad = "x".repeat(12_000);
    let big = packet(
        PROTOCOL_3_0,
        &params(&[("user", "app"), ("database", "app"), ("options", &pad)]),
    );
    assert!(big.len() > 10_000);
    let mut wire = Wire::connect(proxy.addr()).await;
    wire.send(&big).await;
    let reply = wire.until_closed().await.unwrap();
    reply.expect_error("08P01").unwrap();
    assert!(!reply.messages.iter().any(|m| m.tag == b'R'), "{reply:?}");
    // Only the length announced, the rest never sent.
    let mut wire = Wire::connect(proxy.addr()).await;
    wire.send(&20_000u32.to_be_bytes()).await;
    wire.until_closed()
        .await
        .unwrap()
        .expect_error("08P01")
        .unwrap();

    // Just under the limit is a normal login.
    let options = format!("-c tenant=t1 -c my.pad={}", "y".repeat(9_000));
    let near = packet(
        PROTOCOL_3_0,
        &params(&[("user", "app"), ("database", "app"), ("options", &options)]),
    );
    assert!(near.len() < 10_000);
    let mut wire = Wire::connect(proxy.addr()).await;
    wire.send(&near).await;
    wire.until_ready()
        .await
        .expect("a 9 kB startup packet logs in");
    wire.send(&query(
        "SELECT tenant || length(current_setting('my.pad')) FROM whoami",
    ))
    .await;
    let rows = wire.until_ready().await.unwrap();
    let row = rows.iter().find(|m| m.tag == b'D').expect("a row");
    assert!(row.body.ends_with(b"t19000"), "{row:?}");
    assert_still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_max_message_size_is_08p01() {
    let proxy = IsolatedProxy::start(
        ProxyOptions::default()
            .auth("trust")
            .proxy_line("max_message_size = 65536"),
    );
    let other = proxy.connect("t2").await.unwrap();
    assert_eq!(
        simple_value(&other, "SELECT tenant FROM whoami")
            .await
            .unwrap()
            .as_deref(),
        Some("t2")
    );
    let sql_of = |len: usize| format!("SELECT length('{}')", "q".repeat(len));

    // Under the limit: fine.
    let mut wire = Wire::login(proxy.addr(), "t1", "").await;
    wire.send(&query(&sql_of(60_000))).await;
    let rows = wire.until_ready().await.expect("a 60 kB query runs");
    assert!(rows
        .iter()
        .any(|m| m.tag == b'D' && m.body.ends_with(b"60000")));

    // Over it: 08P01 and the connection closes.
    let mut wire = Wire::login(proxy.addr(), "t1", "").await;
    wire.send(&query(&sql_of(100_000))).await;
    let reply = wire.until_closed().await.unwrap();
    reply.expect_error("08P01").unwrap();
    assert!(!reply.messages.iter().any(|m| m.tag == b'D'), "{reply:?}");

    // Through tokio-postgres: the error reaches the client.
    let victim = connect_watched(&proxy.connect_str("t1")).await.unwrap();
    let err = victim
        .simple_query(&sql_of(100_000))
        .await
        .expect_err("a 100 kB Query is over the limit");
    assert_eq!(victim.closing_error(&err).await.code().code(), "08P01");
    // Bind is capped the same way (the proxy reads it whole to map statement names).
    let param = "b".repeat(60_000);
    let rows = other
        .query_typed("SELECT length($1::text)", &[(&param, Type::TEXT)])
        .await
        .unwrap_or_else(|e| panic!("60 kB parameter: {}", describe(&e)));
    assert_eq!(rows[0].get::<_, i32>(0), 60_000);
    let victim = connect_watched(&proxy.connect_str("t1")).await.unwrap();
    let param = "b".repeat(100_000);
    let err = victim
        .query_typed("SELECT length($1::text)", &[(&param, Type::TEXT)])
        .await
        .expect_err("a 100 kB Bind is over the limit");
    assert_eq!(victim.closing_error(&err).await.code().code(), "08P01");
    assert_eq!(
        simple_value(&other, "SELECT tenant FROM whoami")
            .await
            .unwrap()
            .as_deref(),
        Some("t2")
    );
    assert_still_serving(&proxy).await;
}

/// Protocol 3.2 (PostgreSQL 18, libpq's `max_protocol_version=3.2`) is a 3.x minor version
/// the proxy does not speak: PostgreSQL answers such a client with NegotiateProtocolVersion
/// and goes on in 3.0; the proxy should do the same, not refuse the login.
#[tokio::test]
async fn newer_minor_protocol_version_is_negotiated_down() {
    // PostgreSQL itself (over its unix socket, trust): 15 negotiates down, 18 speaks 3.2.
    let pg = crate::support::pg();
    let socket = pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port()));
    let mut direct = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("PostgreSQL's unix socket");
    direct
        .write_all(&packet(
            (3 << 16) | 2,
            &params(&[("user", "app"), ("database", "app")]),
        ))
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"Z\0\0\0\x05I") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(STEP_TIMEOUT, direct.read(&mut chunk))
            .await
            .expect("PostgreSQL answers")
            .unwrap();
        assert!(n > 0, "PostgreSQL refused a 3.2 startup: {answer:?}");
        answer.extend_from_slice(&chunk[..n]);
    }
    // NegotiateProtocolVersion ('v') from a server that speaks only 3.0; 18 speaks 3.2.
    let negotiates = pg.version_num() < 180_000;
    assert_eq!(
        answer[0] == b'v',
        negotiates,
        "PostgreSQL {} answered a 3.2 startup with {:?} first",
        pg.version_num(),
        answer[0] as char
    );

    let proxy = IsolatedProxy::start(ProxyOptions::default().auth("trust"));
    let mut wire = Wire::connect(proxy.addr()).await;
    wire.send(&packet(
        (3 << 16) | 2,
        &params(&[
            ("user", "app"),
            ("database", "app"),
            ("options", "-c tenant=t1"),
        ]),
    ))
    .await;
    let got = wire
        .until_ready()
        .await
        .unwrap_or_else(|e| panic!("a protocol 3.2 startup was refused: {e}"));
    // The proxy speaks 3.0 only, so it negotiates down as PostgreSQL 15 does: one
    // NegotiateProtocolVersion (newest version 3.0, no unrecognized options), first.
    let negotiations: Vec<&Msg> = got.iter().filter(|m| m.tag == b'v').collect();
    assert_eq!(negotiations.len(), 1, "{got:?}");
    assert_eq!(
        got[0].tag, b'v',
        "NegotiateProtocolVersion comes first: {got:?}"
    );
    let mut body = (3i32 << 16).to_be_bytes().to_vec();
    body.extend_from_slice(&0i32.to_be_bytes());
    assert_eq!(negotiations[0].body, body);
    wire.send(&query("SELECT tenant FROM whoami")).await;
    let rows = wire.until_ready().await.unwrap();
    assert!(rows
        .iter()
        .any(|m| m.tag == b'D' && m.body.ends_with(b"t1")));
}

/// A client that disconnects in the middle of a CopyData message sent outside COPY (the
/// proxy streams CopyData without buffering it) must not leave the server connection
/// waiting for the rest of that message: the next client's query would be swallowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_streamed_message_does_not_poison_the_connection() {
    let proxy = IsolatedProxy::start(ProxyOptions::default().auth("trust").pool_size(1));
    let mut wire = Wire::login(proxy.addr(), "t1", "").await;
    let mut partial = vec![b'd'];
    partial.extend_from_slice(&1_000_000i32.to_be_bytes());
    partial.extend_from_slice(&[b'x'; 100]);
    wire.send(&partial).await;
    // Fixed sleeps, as no condition shows from outside the isolated proxy: the partial
    // message reaches the server connection (a server reading it looks as idle as one
    // waiting for a message), then the disconnect is handled, before the next client comes.
    // Were they too short, the next client would only wait for the connection's cleanup.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(wire);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = proxy.connect("t2").await.unwrap();
    let started = Instant::now();
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        simple_value(&client, "SELECT tenant FROM whoami"),
    )
    .await;
    match got {
        Err(_) => panic!(
            "the next client's query got no answer in 10s: its bytes went into the dead \
             client's unfinished CopyData message"
        ),
        Ok(result) => {
            let value = result.unwrap_or_else(|e| panic!("next client: {}", describe(&e)));
            assert_eq!(value.as_deref(), Some("t2"));
        }
    }
    eprintln!("next client answered after {:?}", started.elapsed());
}

/// Clients that send the first bytes of a Query and then pause (a slow link, or on
/// purpose) must neither hold the server connections everyone else needs (two of them would
/// take a pool of 2) nor keep the proxy busy; when the rest arrives they get their answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_partial_messages_do_not_stall_others() {
    let proxy = IsolatedProxy::start(
        ProxyOptions::default()
            .auth("trust")
            .pool_size(2)
            .timeout("query_wait_timeout", "5s"),
    );
    let client = proxy.connect("t2").await.unwrap();
    let q = query(&format!("SELECT '{}'", "s".repeat(87)));
    let mut paused = Vec::new();
    for _ in 0..2 {
        let mut wire = Wire::login(proxy.addr(), "t1", "").await;
        // The header and 10 of the 97 bytes the Query announces.
        wire.send(&q[..15]).await;
        paused.push(wire);
    }
    // A fixed sleep on purpose: the two half-sent Queries must take no connection while
    // they sit there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 0..3 {
        let started = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(15),
            simple_value(&client, "SELECT tenant FROM whoami"),
        )
        .await;
        eprintln!(
            "round {round}: honest client answered after {:?}: {got:?}",
            started.elapsed()
        );
        match got {
            Err(_) => panic!(
                "round {round}: no answer within 15s while two clients sit on half a \
                 Query (the proxy is stuck)"
            ),
            Ok(Err(e)) => panic!(
                "round {round}: two half-sent Queries starved the pool of 2: {}",
                describe(&e)
            ),
            Ok(Ok(v)) => assert_eq!(v.as_deref(), Some("t2")),
        }
    }
    for (i, wire) in paused.iter_mut().enumerate() {
        wire.send(&q[15..]).await;
        let rows = wire
            .until_ready()
            .await
            .unwrap_or_else(|e| panic!("paused client {i} after sending the rest: {e}"));
        assert!(
            rows.iter().any(|m| m.tag == b'D'),
            "paused client {i}: {rows:?}"
        );
    }
}

/// A client whose first message goes out together with the proxy's state prelude (here a
/// Flush, which the server does not answer) and which disconnects before the prelude's
/// reply is back. Cleaning up, the proxy must not hand the connection on with replies
/// still unread: the next clients (other tenants, same single connection) would read them
/// as answers to their own queries, and then each other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_during_the_prelude_leaves_no_stray_replies() {
    let proxy = IsolatedProxy::start(ProxyOptions::default().auth("trust").pool_size(1));
    // t2 speaks raw protocol, so the test sees exactly which rows reach it.
    let mut t2 = Wire::login(proxy.addr(), "t2", "").await;
    let t3 = proxy.connect("t3").await.unwrap();
    let mut problems = Vec::new();
    for round in 0..30 {
        // The only server connection now holds t2's state, so t1 needs a prelude.
        t2.send(&query("SELECT tenant FROM whoami")).await;
        match t2.until_ready().await {
            Ok(m) if data_rows(&m) == ["t2"] => {}
            other => {
                problems.push(format!("round {round}: t2 before: {other:?}"));
                break;
            }
        }
        let mut wire = Wire::login(proxy.addr(), "t1", "").await;
        wire.send(&message(b'H', b"")).await;
        drop(wire);
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            simple_value(&t3, "SELECT tenant FROM whoami"),
        )
        .await;
        match got {
            Ok(Ok(Some(t))) if t == "t3" => {}
            Ok(Ok(other)) => problems.push(format!("round {round}: t3 read {other:?}")),
            Ok(Err(e)) => problems.push(format!("round {round}: t3: {}", describe(&e))),
            Err(_) => problems.push(format!("round {round}: t3: no answer in 10s")),
        }
        t2.send(&query("SELECT tenant FROM whoami")).await;
        match t2.until_ready().await {
            Ok(m) if data_rows(&m) == ["t2"] => {}
            Ok(m) => problems.push(format!(
                "round {round}: t2 got rows {:?} ({} messages: {:?})",
                data_rows(&m),
                m.len(),
                m.iter().map(|m| m.tag as char).collect::<String>()
            )),
            Err(e) => problems.push(format!("round {round}: t2: {e}")),
        }
        if !problems.is_empty() {
            // Where did the answer that went missing end up? One more read by t3.
            let next = tokio::time::timeout(
                Duration::from_secs(5),
                simple_value(&t3, "SELECT 'this is t3 asking'"),
            )
            .await;
            problems.push(format!("then t3's next query read: {next:?}"));
            break;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The first column of each DataRow, as text.
fn data_rows(messages: &[Msg]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.tag == b'D' && m.body.len() >= 6)
        .map(|m| String::from_utf8_lossy(&m.body[6..]).into_owned())
        .collect()
}
