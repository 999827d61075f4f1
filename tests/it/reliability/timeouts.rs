//! `idle_transaction_timeout`, `server_idle_timeout` and `server_lifetime`, observed from
//! the server side (`pg_stat_activity` of a server login of the test's own), and
//! `query_wait_timeout` ending a wait for a server connection.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use super::{activity, eventually, own_login, superuser};
use crate::support::{
    assert_db_error, connect_watched, describe, simple_value, tenant_client, tenant_of, Naming,
    ProxyOptions, TestProxy,
};

async fn pid(client: &tokio_postgres::Client) -> i32 {
    simple_value(client, "SELECT pg_backend_pid()")
        .await
        .unwrap_or_else(|e| panic!("{}", describe(&e)))
        .expect("a pid")
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_ends_the_client_and_frees_its_connection() {
    let tenant = "rel_idle_tx";
    let proxy = TestProxy::start_with(
        ProxyOptions::default()
            .pool_size(1)
            .timeout("idle_transaction_timeout", "500ms")
            .extra(&own_login(tenant)),
    );
    // The sleeper's connection future tells how the proxy ended it.
    let (sleeper, connection) =
        tokio_postgres::connect(&proxy.connect_str("app", Naming::Options, tenant), NoTls)
            .await
            .unwrap_or_else(|e| panic!("{}", describe(&e)));
    let ended = tokio::spawn(connection);
    sleeper
        .batch_execute("BEGIN; INSERT INTO whoami VALUES ('uncommitted', 1)")
        .await
        .unwrap_or_else(|e| panic!("{}", describe(&e)));
    let began = Instant::now();

    // Another client needs the only server connection meanwhile.
    let waiter = proxy
        .connect("app", Naming::Options, tenant)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let count = simple_value(&waiter, "SELECT count(*) FROM whoami")
        .await
        .unwrap_or_else(|e| panic!("the waiter: {}", describe(&e)));
    let waited = began.elapsed();
    eprintln!("waiter got the connection after {waited:?}");
    assert_eq!(
        count.as_deref(),
        Some("1"),
        "the sleeper's insert was rolled back"
    );
    // Not before the timeout (500 ms, counted from the sleeper's last message, a little
    // before `began`).
    assert!(waited >= Duration::from_millis(400), "{waited:?}");

    let end = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the sleeper's connection was closed")
        .expect("connection task");
    let err = end.expect_err("the sleeper must get an error");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("25P03"),
        "{}",
        describe(&err)
    );
    assert!(sleeper.is_closed());
    let admin = superuser().await;
    let left = activity(&admin, tenant).await;
    assert!(
        left.iter()
            .all(|(_, state)| !state.starts_with("idle in transaction")),
        "{left:?}"
    );
}

/// The lower bound is measured from before the queries are sent, not from when the last one
/// returned: each connection's idle age starts at its own check-in, and under load the
/// three server logins (and so the three `pg_sleep`s) are hundreds of milliseconds apart.
/// Measuring from the last return is what once made one connection look closed "at ~650 ms"
/// into a 1 s timeout: it had been idle for over 1 s (the reaper closes at
/// `idle >= server_idle_timeout`, sweeping every timeout/4; `since` is stamped at check-in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_idle_server_connections() {
    let tenant = "rel_idle_server";
    let timeout = Duration::from_secs(2);
    let proxy = TestProxy::start_with(
        ProxyOptions::default()
            .pool_size(3)
            .timeout("server_idle_timeout", "2s")
            .extra(&own_login(tenant)),
    );
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            proxy
                .connect("app", Naming::Options, tenant)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    // Three at once: three server connections. None can be checked in before `sent` plus
    // the sleep, so none may be closed before `sent + sleep + timeout`.
    let sleep = Duration::from_millis(300);
    let sql = format!("SELECT pg_sleep({})", sleep.as_secs_f64());
    let sent = Instant::now();
    let (a, b, c) = tokio::join!(
        clients[0].simple_query(&sql),
        clients[1].simple_query(&sql),
        clients[2].simple_query(&sql)
    );
    for r in [a, b, c] {
        r.unwrap_or_else(|e| panic!("{}", describe(&e)));
    }
    let admin = superuser().await;
    let earliest_close = sent + sleep + timeout;
    let mut samples = 0;
    loop {
        let open = activity(&admin, tenant).await;
        // The snapshot was taken before now: if now is before the earliest allowed close,
        // so was the snapshot.
        if Instant::now() >= earliest_close {
            break;
        }
        samples += 1;
        assert_eq!(
            open.len(),
            3,
            "closed before server_idle_timeout: {open:?} {:?} after the queries were sent",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        samples > 0,
        "no look at pg_stat_activity finished within {:?} of sending the queries",
        sleep + timeout
    );
    eventually(
        Duration::from_secs(6),
        "the idle server connections are closed",
        || async { activity(&admin, tenant).await.is_empty() },
    )
    .await;
    eprintln!(
        "{samples} samples with all three open; all closed {:?} after the queries were sent",
        sent.elapsed()
    );
    // The clients themselves stay connected and get a fresh server connection.
    assert_eq!(
        simple_value(&clients[0], "SELECT tenant FROM whoami")
            .await
            .expect("after the timeout")
            .as_deref(),
        Some(tenant)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_retires_old_connections_but_never_mid_transaction() {
    let tenant = "rel_lifetime";
    let proxy = TestProxy::start_with(
        ProxyOptions::default()
            .pool_size(1)
            .timeout("server_lifetime", "1s")
            .extra(&own_login(tenant)),
    );
    let client = proxy
        .connect("app", Naming::Options, tenant)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first = pid(&client).await;
    assert_eq!(pid(&client).await, first, "reused within its lifetime");
    // A transaction that outlives the lifetime keeps its connection to the end.
    client.simple_query("BEGIN").await.expect("begin");
    let in_tx = pid(&client).await;
    // A fixed sleep on purpose: it shows that nothing happens to the transaction's
    // connection while it outlives its lifetime.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(pid(&client).await, in_tx, "cut mid-transaction");
    client.simple_query("COMMIT").await.expect("commit");
    let later = pid(&client).await;
    eprintln!("pids: {first} then {in_tx}, after the lifetime {later}");
    assert_ne!(later, in_tx, "a connection past server_lifetime was reused");
    let admin = superuser().await;
    eventually(
        Duration::from_secs(3),
        "the retired connection is closed",
        || async {
            activity(&admin, tenant)
                .await
                .iter()
                .all(|(p, _)| *p != in_tx)
        },
    )
    .await;
}

#[tokio::test]
async fn query_wait_timeout_ends_a_wait_with_53300() {
    let proxy = TestProxy::start_with(
        ProxyOptions::default()
            .pool_size(1)
            .timeout("query_wait_timeout", "500ms"),
    );
    let holder = tenant_client(&proxy, "t1").await;
    holder
        .simple_query("BEGIN; SELECT * FROM whoami")
        .await
        .unwrap();
    let waiter = connect_watched(&proxy.connect_str("app", Naming::Options, "t2"))
        .await
        .unwrap();
    let started = Instant::now();
    let e = waiter
        .simple_query("SELECT tenant FROM whoami")
        .await
        .expect_err("no server connection within query_wait_timeout");
    let waited = started.elapsed();
    let db = waiter.closing_error(&e).await;
    assert_db_error(
        &db,
        "53300",
        "timed out waiting for a server connection (query_wait_timeout)",
    );
    assert_eq!(db.severity(), "FATAL");
    assert!(
        waited >= Duration::from_millis(500),
        "not before query_wait_timeout: {waited:?}"
    );
    // The holder is untouched, and once it is done the pool serves others again.
    assert_eq!(tenant_of(&holder).await.as_deref(), Some("t1"));
    holder.simple_query("COMMIT").await.unwrap();
    let next = tenant_client(&proxy, "t2").await;
    assert_eq!(tenant_of(&next).await.as_deref(), Some("t2"));
    proxy.stop().await.unwrap();
}
