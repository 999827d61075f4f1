//! Clients that never finish logging in, or send more than PostgreSQL would accept before
//! login: authentication messages are capped at 65,535 bytes and refused at their header
//! (never buffered), connections still logging in are counted apart from clients
//! (`max_pending_logins`, oldest dropped first) and bounded in time
//! (`client_login_timeout`). Honest clients log in and run queries meanwhile. The memory
//! figures of the same floods (1,000 and 5,000 sockets) are in `benches/memory_hostile.py`.

use tokio::io::AsyncWriteExt;

use crate::hostile::IsolatedProxy;
use crate::support::wire::{message, startup, Wire, STEP_TIMEOUT as RAW_TIMEOUT};
use crate::support::{simple_value, ProxyOptions, TestProxy};

/// A connection that has sent its startup packet and been asked for a SCRAM exchange.
async fn at_password_step(addr: std::net::SocketAddr) -> Result<Wire, String> {
    let mut wire = Wire::connect(addr).await;
    wire.send(&startup("t1")).await;
    match wire.next().await? {
        Some(m) if m.tag == b'R' && m.body.starts_with(&10i32.to_be_bytes()) => Ok(wire),
        other => Err(format!("expected AuthenticationSASL, got {other:?}")),
    }
}

/// The header of a PasswordMessage/SASL response claiming `len` (the length field).
fn password_header(len: u32) -> Vec<u8> {
    let mut v = vec![b'p'];
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// An honest login and one query through tokio-postgres; Err says what went wrong.
async fn honest_login(proxy: &IsolatedProxy, tenant: &str) -> Result<(), String> {
    let client = tokio::time::timeout(RAW_TIMEOUT, proxy.connect(tenant))
        .await
        .map_err(|_| "no login within 10 s".to_string())?
        .map_err(|e| format!("login: {e}"))?;
    let got = simple_value(&client, "SELECT tenant FROM whoami")
        .await
        .map_err(|e| format!("query: {e}"))?;
    if got.as_deref() != Some(tenant) {
        return Err(format!("read {got:?} as {tenant}"));
    }
    Ok(())
}

#[tokio::test]
async fn auth_messages_over_65535_bytes_are_refused_at_their_header() {
    let proxy = IsolatedProxy::start(ProxyOptions::default());

    // A SASLInitialResponse claiming 900 MB: 08P01 at once, with only the header sent (a
    // proxy that waited for the body would never answer).
    let mut wire = at_password_step(proxy.addr()).await.unwrap();
    wire.send(&password_header(900_000_000)).await;
    let reply = wire.until_closed().await.unwrap();
    let e = reply.expect_error("08P01").unwrap();
    let text = e.field(b'M').unwrap_or_default();
    assert!(text.contains("limit"), "{text:?}");

    // One byte over PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH, then a megabyte of body.
    let mut wire = at_password_step(proxy.addr()).await.unwrap();
    wire.send(&password_header(65_536)).await;
    let body = vec![b'x'; 1 << 20];
    let _ = wire.stream.write_all(&body).await;
    wire.until_closed()
        .await
        .unwrap()
        .expect_error("08P01")
        .unwrap();

    // At the limit it is read (and found to be no SCRAM message).
    let mut wire = at_password_step(proxy.addr()).await.unwrap();
    let mut sasl = b"SCRAM-SHA-256\0".to_vec();
    let data = vec![b'y'; 65_535 - 4 - sasl.len() - 4];
    sasl.extend_from_slice(&(data.len() as i32).to_be_bytes());
    sasl.extend_from_slice(&data);
    let msg = message(b'p', &sasl);
    assert_eq!(msg.len(), 65_536);
    wire.send(&msg).await;
    let reply = wire.until_closed().await.unwrap();
    let e = reply.expect_error("08P01").unwrap();
    let text = e.field(b'M').unwrap_or_default();
    assert!(text.contains("SCRAM"), "read whole, then refused: {text:?}");

    // Anything but a password message while one is expected: refused at its header.
    let mut wire = at_password_step(proxy.addr()).await.unwrap();
    wire.send(&[b'Q', 0x30, 0, 0, 0]).await;
    let reply = wire.until_closed().await.unwrap();
    let e = reply.expect_error("08P01").unwrap();
    let text = e.field(b'M').unwrap_or_default();
    assert!(text.contains("expected password response"), "{text:?}");

    honest_login(&proxy, "t2").await.unwrap();
}

/// Many unauthenticated sockets at once, each claiming a 900 MB SASL message and sending a
/// part of it, while an honest client logs in and runs queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_flood_of_huge_auth_messages_leaves_honest_clients_served() {
    const SOCKETS: usize = 200;
    let proxy = IsolatedProxy::start(ProxyOptions::default());
    let addr = proxy.addr();
    let attackers: Vec<_> = (0..SOCKETS)
        .map(|_| {
            tokio::spawn(async move {
                let mut wire = at_password_step(addr).await?;
                wire.send(&password_header(900_000_000)).await;
                // The proxy may close before all of it is sent.
                let _ = wire.stream.write_all(&vec![b'z'; 256 * 1024]).await;
                let reply = wire.until_closed().await?;
                match reply.sqlstate().as_deref() {
                    None | Some("08P01") => Ok(()),
                    other => Err(format!("answered {other:?}: {reply:?}")),
                }
            })
        })
        .collect();
    for i in 0..10 {
        honest_login(&proxy, "t2")
            .await
            .unwrap_or_else(|e| panic!("honest login {i} during the flood: {e}"));
    }
    let mut failures = Vec::new();
    for task in attackers {
        if let Err(e) = task.await.expect("attacker task") {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    honest_login(&proxy, "t3").await.unwrap();
}

/// Sockets that connect and say nothing, or send a startup packet and then nothing, do not
/// hold client places: with `max_client_connections = 5` and 3x `max_pending_logins` of
/// them open, every honest login succeeds, and the oldest stalled logins were dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_logins_do_not_lock_out_honest_clients() {
    const PENDING: usize = 40;
    let proxy = IsolatedProxy::start(
        ProxyOptions::default()
            .proxy_line("max_client_connections = 5")
            .proxy_line(&format!("max_pending_logins = {PENDING}")),
    );
    let addr = proxy.addr();
    let mut stalled = Vec::new();
    for i in 0..3 * PENDING {
        if i % 2 == 0 {
            stalled.push(Wire::connect(addr).await);
        } else {
            stalled.push(at_password_step(addr).await.unwrap());
        }
    }
    for i in 0..20 {
        honest_login(&proxy, "t2")
            .await
            .unwrap_or_else(|e| panic!("honest login {i} among stalled logins: {e}"));
    }
    // The first two thirds were pushed out by newer ones: told 53300 (or just closed).
    for (i, wire) in stalled.iter_mut().take(2 * PENDING).enumerate() {
        let reply = wire.until_closed().await.unwrap();
        if let Some(code) = reply.sqlstate() {
            assert_eq!(code, "53300", "stalled login {i}: {reply:?}");
        }
    }
}

#[tokio::test]
async fn client_login_timeout_closes_a_stalled_login() {
    let proxy =
        TestProxy::start_with(ProxyOptions::default().timeout("client_login_timeout", "500ms"));
    let mut wire = at_password_step(proxy.addr()).await.unwrap();
    let reply = wire.until_closed().await.unwrap();
    let e = reply.expect_error("08006").unwrap();
    assert_eq!(
        e.field(b'M').as_deref(),
        Some("timeout expired during login")
    );
    // Said nothing at all: closed the same way.
    let mut wire = Wire::connect(proxy.addr()).await;
    wire.until_closed()
        .await
        .unwrap()
        .expect_error("08006")
        .unwrap();
    // Both counted under the login-failure reason `timeout`.
    let text = proxy.handle.metrics_text();
    assert!(
        text.lines()
            .any(|l| l == "pgtenant_login_failures_total{reason=\"timeout\"} 2"),
        "{text}"
    );
    // A login in time is unaffected.
    let client = proxy
        .connect("app", crate::support::Naming::Options, "t1")
        .await
        .unwrap();
    let got = simple_value(&client, "SELECT tenant FROM whoami")
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("t1"));
    proxy.stop().await.unwrap();
}
