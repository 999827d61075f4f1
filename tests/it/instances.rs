//! Several instances as one pooler: a CancelRequest sent to any instance reaches the client
//! of the instance that issued its key (`instance_id`, `[peers.N]`); `reuse_port` lets two
//! processes share one port.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::binary::Binary;
use crate::support::wire::{packet, query, Wire};
use crate::support::{ProxyOptions, TestProxy, PROXY_PASSWORD};

const CANCEL_REQUEST_CODE: i32 = 80_877_102;

fn bound() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy listener")
}

/// Sends a plain CancelRequest for `key` to `addr`, as a client's driver does.
async fn cancel(addr: SocketAddr, key: (i32, i32)) {
    let mut body = key.0.to_be_bytes().to_vec();
    body.extend_from_slice(&key.1.to_be_bytes());
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&packet(CANCEL_REQUEST_CODE, &body))
        .await
        .expect("send the cancel");
    let _ = stream.shutdown().await;
}

/// Two instances that know each other: instance 1 on `a`, instance 2 on `b`.
fn pair() -> (TestProxy, TestProxy) {
    let (a, b) = (bound(), bound());
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    let config = |id: u16, peer: u16, port: u16| {
        let pg = crate::support::pg();
        ProxyOptions::default()
            .proxy_line(&format!("instance_id = {id}"))
            .extra(&format!(
                "[peers.{peer}]\nhost = \"127.0.0.1\"\nport = {port}\n"
            ))
            .toml(pg.host(), pg.port())
    };
    (
        TestProxy::start_text_on(config(1, 2, pb), a),
        TestProxy::start_text_on(config(2, 1, pa), b),
    )
}

#[tokio::test]
async fn a_cancel_sent_to_another_instance_reaches_the_client() {
    let (a, b) = pair();
    let (mut client, key) = Wire::login_keyed(a.addr(), "t1", PROXY_PASSWORD).await;
    assert_eq!(key.0 >> 20, 1, "the key names instance 1: {key:?}");
    client.send(&query("select pg_sleep(30)")).await;
    // The query is running on the server before the cancel is sent.
    crate::support::eventually(Duration::from_secs(10), "the sleep runs", || async {
        let admin = crate::support::connect(&crate::support::pg_conn_str("postgres", "postgres", "app"))
            .await
            .unwrap();
        let rows = admin
            .simple_query("select 1 from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'")
            .await
            .unwrap();
        rows.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
    })
    .await;
    cancel(b.addr(), key).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), client.until_ready())
        .await
        .expect("the query ends once cancelled (not after 30 s)");
    let error = ended.expect_err("the query is cancelled");
    assert!(error.contains("57014"), "{error}");
    // The rest of the cancelled query's replies (up to its ReadyForQuery).
    client.read_until(b'Z').await;
    // The client goes on.
    client.send(&query("select 1")).await;
    let replies = client.until_ready().await.expect("replies");
    assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
}

#[tokio::test]
async fn forged_and_foreign_keys_cancel_nothing() {
    let (a, b) = pair();
    let (mut client, key) = Wire::login_keyed(a.addr(), "t1", PROXY_PASSWORD).await;
    client.send(&query("select pg_sleep(1.5)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The right pid with a wrong secret, to both instances; a key of an instance nobody
    // knows; a key of instance 2 sent to instance 2 itself (no such client).
    for (addr, forged) in [
        (a.addr(), (key.0, key.1.wrapping_add(1))),
        (b.addr(), (key.0, key.1.wrapping_add(1))),
        (b.addr(), ((77 << 20) | 5, 1)),
        (b.addr(), ((2 << 20) | 5, 1)),
    ] {
        cancel(addr, forged).await;
    }
    // Nothing happens to the query meanwhile (it must run its 1.5 s to the end).
    let replies = client.until_ready().await.expect("replies");
    assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
    assert!(replies.iter().any(|m| m.tag == b'D'), "{replies:?}");
}

/// Two processes with `reuse_port` on one port both take clients; stopping one leaves the
/// other's clients working.
#[tokio::test]
async fn two_processes_share_a_port_with_reuse_port() {
    let pg = crate::support::pg();
    let config = |id: u16| {
        ProxyOptions::default()
            .proxy_line(&format!("instance_id = {id}\nreuse_port = true"))
            .toml(pg.host(), pg.port())
    };
    let port = crate::support::binary::free_port();
    let mut first = Binary::start_on(&config(1), port).await;
    let second = Binary::start_on(&config(2), port).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut by_instance: std::collections::BTreeMap<i32, Vec<Wire>> = Default::default();
    for _ in 0..40 {
        let (wire, key) = Wire::login_keyed(addr, "t1", PROXY_PASSWORD).await;
        by_instance.entry(key.0 >> 20).or_default().push(wire);
    }
    let counts: Vec<(i32, usize)> = by_instance.iter().map(|(k, v)| (*k, v.len())).collect();
    assert_eq!(
        by_instance.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "both processes took clients: {counts:?}"
    );
    first.signal(libc::SIGTERM);
    first.wait(Duration::from_secs(30)).await;
    for wire in by_instance.get_mut(&2).unwrap() {
        wire.send(&query("select tenant from whoami")).await;
        let replies = wire.until_ready().await.expect("replies");
        assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
    }
    // New clients find the one that is left.
    let (_, key) = Wire::login_keyed(addr, "t1", PROXY_PASSWORD).await;
    assert_eq!(key.0 >> 20, 2);
    first.check_log();
    second.check_log();
}
