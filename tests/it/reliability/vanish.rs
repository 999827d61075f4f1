//! Clients that vanish at awkward protocol points. After each, the next client is served
//! normally and nothing of the vanished client's transaction survives on the server: no
//! lock, no `idle in transaction` backend, no partial COPY.

use std::time::Duration;

use super::{activity, eventually, own_login, superuser};
use crate::support::wire::{self, Wire};
use crate::support::{describe, simple_value, Naming, ProxyOptions, TestProxy, PROXY_PASSWORD};

/// Both of the proxy's client slots (max_client_connections = 2) still serve clients.
async fn serves_two_clients(proxy: &TestProxy, tenant: &str) {
    for _ in 0..50 {
        let a = proxy.connect("app", Naming::Options, tenant).await;
        let b = proxy.connect("app", Naming::Options, tenant).await;
        if let (Ok(a), Ok(b)) = (&a, &b) {
            for c in [a, b] {
                let seen = simple_value(c, "SELECT tenant FROM whoami")
                    .await
                    .unwrap_or_else(|e| panic!("{}", describe(&e)));
                assert_eq!(seen.as_deref(), Some(tenant));
            }
            return;
        }
        // A slot may still be held for a moment by a session that is winding down.
        for r in [a, b] {
            if let Err(e) = r {
                assert_eq!(e.code(), Some("53300"), "{e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the vanished clients' slots were never released");
}

/// Sends `startup` and reads AuthenticationSASL. With only two client slots, one may still
/// be held for a moment by a session of a client that just vanished (53300): retry then.
async fn until_sasl(proxy: &TestProxy, startup: &[u8], round: usize) -> Wire {
    for _ in 0..100 {
        let mut c = Wire::connect(proxy.addr()).await;
        c.send(startup).await;
        let first = c.read().await.expect("a reply to the startup packet");
        if first.tag == b'E' && first.code().as_deref() == Some("53300") {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        assert_eq!((first.tag, first.int()), (b'R', 10), "round {round}");
        return c;
    }
    panic!("round {round}: a vanished client's slot was never released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_startup_and_mid_scram_leave_nothing_behind() {
    let proxy =
        TestProxy::start_with(ProxyOptions::default().proxy_line("max_client_connections = 2"));
    let startup = wire::startup_packet(&[
        ("user", "app"),
        ("database", "app"),
        ("options", "-c tenant=t1"),
    ]);
    for round in 0..5 {
        // Half a length field; half a startup packet; an SSLRequest then half a packet.
        for cut in [2, startup.len() / 2] {
            let mut c = Wire::connect(proxy.addr()).await;
            c.send(&startup[..cut]).await;
            drop(c);
        }
        let mut c = Wire::connect(proxy.addr()).await;
        c.send(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]).await;
        let mut answer = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut answer)
            .await
            .expect("SSLRequest answer");
        assert_eq!(&answer, b"N");
        c.send(&startup[..startup.len() - 3]).await;
        drop(c);

        // After AuthenticationSASL, before any answer.
        let c = until_sasl(&proxy, &startup, round).await;
        drop(c);

        // After SASLContinue (server-first), before the client-final message.
        let mut c = until_sasl(&proxy, &startup, round).await;
        c.send(&wire::sasl_initial(b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"))
            .await;
        let cont = c.read().await.expect("SASLContinue");
        assert_eq!((cont.tag, cont.int()), (b'R', 11));
        drop(c);

        // Half of the client-final message.
        let mut c = until_sasl(&proxy, &startup, round).await;
        c.send(&wire::sasl_initial(b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"))
            .await;
        c.read().await.expect("SASLContinue");
        c.send(&wire::message(b'p', b"c=biws,r=rOprNGfwEbeRWgbNEkqO")[..12])
            .await;
        drop(c);
    }
    serves_two_clients(&proxy, "t1").await;
    // And a full raw SCRAM login still works.
    let mut ok = until_sasl(&proxy, &startup, 99).await;
    ok.scram(PROXY_PASSWORD).await;
    ok.read_until(b'Z').await;
    ok.send(&wire::query("SELECT 1")).await;
    ok.read_until(b'Z').await;
}

/// The one server backend of `tenant`'s own login (pool_size 1), once it is the only one
/// (a connection the proxy just closed may take a moment to exit).
async fn only_backend(admin: &tokio_postgres::Client, tenant: &str) -> i32 {
    eventually(
        Duration::from_secs(5),
        &format!("one backend of {tenant}"),
        || async { activity(admin, tenant).await.len() == 1 },
    )
    .await;
    activity(admin, tenant).await[0].0
}

/// After a vanished client: its backend `pid` has gone away or sits idle, no backend of
/// the tenant is left in a transaction or running, and a new client reads normally.
async fn nothing_survives(proxy: &TestProxy, tenant: &str, pid: i32) {
    let admin = superuser().await;
    eventually(
        Duration::from_secs(5),
        &format!("backend {pid} does not survive its client"),
        || async {
            activity(&admin, tenant).await.iter().all(|(p, state)| {
                (*p != pid || state == "idle") && state != "active" && !state.starts_with("idle in")
            })
        },
    )
    .await;
    let next = proxy
        .connect("app", Naming::Options, tenant)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        simple_value(&next, "SELECT count(*) FROM whoami"),
    )
    .await
    .expect("the next client was blocked (a lock survived?)")
    .unwrap_or_else(|e| panic!("{}", describe(&e)));
    assert_eq!(
        read.as_deref(),
        Some("1"),
        "a vanished client's rows survived"
    );
    let in_tx = simple_value(&next, "SELECT now() = statement_timestamp()")
        .await
        .expect("probe");
    assert_eq!(
        in_tx.as_deref(),
        Some("t"),
        "the next client is inside a transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_pipeline_with_a_lock_leaves_no_lock_or_transaction() {
    let tenant = "rel_pipeline";
    let proxy = TestProxy::start_with(
        ProxyOptions::default()
            .pool_size(1)
            .extra(&own_login(tenant)),
    );
    let admin = superuser().await;
    for round in 0..3 {
        let mut c = Wire::login(proxy.addr(), tenant, PROXY_PASSWORD).await;
        // Make sure the pool's connection exists, and learn its pid.
        c.send(&wire::query("SELECT 1")).await;
        c.read_until(b'Z').await;
        let pid = only_backend(&admin, tenant).await;
        // BEGIN, write, take a lock: all executed, no Sync, then gone.
        let mut pipeline = wire::extended("BEGIN");
        pipeline.extend(wire::extended("INSERT INTO whoami VALUES ('ghost', 1)"));
        pipeline.extend(wire::extended("LOCK TABLE whoami IN ACCESS EXCLUSIVE MODE"));
        pipeline.extend_from_slice(wire::FLUSH);
        c.send(&pipeline).await;
        loop {
            let msg = c.read().await.expect("pipeline replies");
            assert_ne!(msg.tag, b'E', "{:?}", msg.message());
            if msg.tag == b'C' && msg.body.starts_with(b"LOCK TABLE") {
                break;
            }
        }
        let locks = admin
            .query(
                "SELECT mode FROM pg_locks WHERE pid = $1 AND mode = 'AccessExclusiveLock'",
                &[&pid],
            )
            .await
            .expect("pg_locks");
        assert!(!locks.is_empty(), "round {round}: the lock was not taken");
        drop(c);
        nothing_survives(&proxy, tenant, pid).await;
    }
    // A pipeline cut after Parse and Bind, before Execute.
    let mut c = Wire::login(proxy.addr(), tenant, PROXY_PASSWORD).await;
    let mut pipeline = wire::extended("SELECT pg_backend_pid()");
    pipeline.truncate(pipeline.len() - 10);
    c.send(&pipeline).await;
    c.send(wire::FLUSH).await;
    c.read_until(b'2').await;
    let pid = only_backend(&admin, tenant).await;
    drop(c);
    nothing_survives(&proxy, tenant, pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_copy_leaves_no_partial_copy() {
    let tenant = "rel_copy";
    let proxy = TestProxy::start_with(
        ProxyOptions::default()
            .pool_size(1)
            .extra(&own_login(tenant)),
    );
    let admin = superuser().await;
    // COPY FROM STDIN, some rows sent, no CopyDone.
    let mut c = Wire::login(proxy.addr(), tenant, PROXY_PASSWORD).await;
    c.send(&wire::query("COPY whoami FROM STDIN")).await;
    c.read_until(b'G').await;
    let pid = only_backend(&admin, tenant).await;
    c.send(&wire::message(b'd', b"ghost\t1\nghost\t2\n")).await;
    // Half a CopyData message.
    c.send(&wire::message(b'd', b"ghost\t3\n")[..7]).await;
    // A fixed sleep, as no condition shows it: the rows and the half message reach the
    // server before the client goes (PostgreSQL 18 reports no COPY progress until more
    // input arrives). Were it too short, the client would vanish earlier in the COPY.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(c);
    nothing_survives(&proxy, tenant, pid).await;

    // COPY TO STDOUT of a large result, the client gone while it streams.
    let mut c = Wire::login(proxy.addr(), tenant, PROXY_PASSWORD).await;
    c.send(&wire::query(
        "COPY (SELECT repeat('x', 100) FROM generate_series(1, 1000000)) TO STDOUT",
    ))
    .await;
    c.read_until(b'H').await;
    c.read_until(b'd').await;
    let pid = only_backend(&admin, tenant).await;
    drop(c);
    nothing_survives(&proxy, tenant, pid).await;
}
