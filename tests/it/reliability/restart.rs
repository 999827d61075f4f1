//! The server stops abruptly (`pg_ctl stop -m immediate`, as a crash looks to clients) and
//! starts again, under load. Each test runs its own PostgreSQL.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtenant::localpg::{LocalPgOptions, LocalPostgres};

use crate::support::{
    conn_str_to, connect, describe, own_pg, own_pg_with, simple_value, Naming, ProxyOptions,
    TestProxy,
};

const UP: u8 = 0;
/// The stop has been asked for: clients keep going (their in-flight transaction is hit).
const STOPPING: u8 = 1;
const DOWN: u8 = 2;
const AGAIN: u8 = 3;
const DONE: u8 = 4;

/// Transactions each client must complete after the restart.
const AFTER: usize = 20;

/// What one looping client saw.
#[derive(Debug, Default)]
struct ClientLog {
    before: usize,
    /// Failures before the stop was asked for: must stay empty.
    errors_before: Vec<String>,
    /// Transactions that failed while the server was being stopped (the in-flight one).
    failed_at_stop: Vec<String>,
    after: usize,
    /// Anything that failed once the server was back: must stay empty.
    errors_after: Vec<String>,
    wrong_tenant: Vec<String>,
    reconnects: usize,
}

/// `BEGIN; read whoami; sleep a little; COMMIT` as four statements (four round trips, so
/// the stop is likely to land inside one); returns the tenant it read.
async fn transaction(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    client.simple_query("BEGIN").await?;
    let tenant = simple_value(client, "SELECT tenant FROM whoami").await?;
    client.simple_query("SELECT pg_sleep(0.002)").await?;
    client.simple_query("COMMIT").await?;
    Ok(tenant.unwrap_or_default())
}

async fn looping_client(
    conn: String,
    tenant: String,
    phase: Arc<AtomicU8>,
    done_before: Arc<AtomicUsize>,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut client = Some(
        connect(&conn)
            .await
            .unwrap_or_else(|e| panic!("{tenant}: {e}")),
    );
    // After a failure the client rests until the server is back (like an app's retry
    // delay), so what it counts as failed is exactly its in-flight transaction.
    let mut resting = false;
    loop {
        let now = phase.load(Ordering::SeqCst);
        if now == DONE || (now == AGAIN && log.after >= AFTER) {
            return log;
        }
        if now == DOWN || (resting && now != AGAIN) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match connect(&conn).await {
                Ok(c) => {
                    client = Some(c);
                    log.reconnects += 1;
                }
                Err(e) => {
                    log.errors_after.push(format!("reconnect: {e}"));
                    return log;
                }
            }
        }
        let result = transaction(client.as_ref().expect("connected")).await;
        match result {
            Ok(seen) => {
                if seen != tenant {
                    log.wrong_tenant.push(seen);
                }
                if now == AGAIN {
                    log.after += 1;
                } else {
                    log.before += 1;
                    done_before.fetch_add(1, Ordering::SeqCst);
                }
            }
            // The phase as of the failure: a transaction begun just before the stop was
            // asked for is still the in-flight one.
            Err(e) if phase.load(Ordering::SeqCst) == UP => log.errors_before.push(describe(&e)),
            Err(e) if now != AGAIN => {
                log.failed_at_stop.push(describe(&e));
                resting = true;
            }
            Err(e) => log.errors_after.push(describe(&e)),
        }
    }
}

fn run_blocking(server: &Arc<LocalPostgres>, what: fn(&LocalPostgres) -> Result<(), String>) {
    let server = server.clone();
    std::thread::spawn(move || what(&server))
        .join()
        .expect("server control thread")
        .unwrap_or_else(|e| panic!("{e}"));
}

fn stop(server: &LocalPostgres) -> Result<(), String> {
    server.stop_immediate().map_err(|e| e.to_string())
}

fn start(server: &LocalPostgres) -> Result<(), String> {
    server.start_again().map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_under_load_loses_at_most_the_in_flight_transaction() {
    let server = Arc::new(own_pg());
    let proxy = TestProxy::start_on(
        ProxyOptions::default()
            .pool_size(4)
            .timeout("query_wait_timeout", "5s"),
        server.host(),
        server.port(),
    );
    let phase = Arc::new(AtomicU8::new(UP));
    // Transactions each looping client has completed before the stop.
    let done_before: Vec<Arc<AtomicUsize>> = (0..8).map(|_| Arc::default()).collect();
    let mut clients = Vec::new();
    for (i, done) in done_before.iter().enumerate() {
        let tenant = if i % 2 == 0 { "t1" } else { "t2" };
        let conn = proxy.connect_str("app", Naming::Options, tenant);
        clients.push(tokio::spawn(looping_client(
            conn,
            tenant.to_string(),
            phase.clone(),
            done.clone(),
        )));
    }
    // Two clients that are idle (connected to the proxy, not linked) across the restart.
    let mut idle = Vec::new();
    for tenant in ["t1", "t2"] {
        let client = proxy
            .connect("app", Naming::Options, tenant)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(transaction(&client).await.expect("idle client"), tenant);
        idle.push((tenant, client));
    }
    crate::support::eventually(
        Duration::from_secs(30),
        "every looping client is under way",
        || async { done_before.iter().all(|n| n.load(Ordering::SeqCst) >= 3) },
    )
    .await;

    phase.store(STOPPING, Ordering::SeqCst);
    run_blocking(&server, stop);
    phase.store(DOWN, Ordering::SeqCst);
    // While it is down: a new client gets 08006 naming the backend, quickly.
    let started = Instant::now();
    let down_error = match proxy.connect("app", Naming::Options, "t1").await {
        Ok(client) => simple_value(&client, "SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| (e.code().map(|c| c.code().to_string()), describe(&e))),
        Err(e) => Err((e.code().map(str::to_string), e.to_string())),
    };
    let down_elapsed = started.elapsed();
    eprintln!("while down: {down_error:?} after {down_elapsed:?}");
    let (code, text) = down_error.expect_err("a query while the server is down must fail");
    assert_eq!(code.as_deref(), Some("08006"), "{text}");
    assert!(
        text.contains("\"main\""),
        "the error names the backend: {text}"
    );
    assert!(down_elapsed < Duration::from_secs(5), "{down_elapsed:?}");

    run_blocking(&server, start);
    // As an app's health check would: wait until the proxy reaches the server again (it
    // fails fast for up to a couple of seconds after the last failed attempt).
    let back = super::eventually(
        Duration::from_secs(10),
        "the proxy reaches the restarted server",
        || async {
            match proxy.connect("app", Naming::Options, "t1").await {
                Ok(c) => simple_value(&c, "SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        },
    )
    .await;
    eprintln!("the proxy reached the server again {back:?} after it started");
    phase.store(AGAIN, Ordering::SeqCst);

    // The idle clients kept their proxy connections; their next transaction just works.
    for (tenant, client) in &idle {
        assert!(
            !client.is_closed(),
            "{tenant}: idle client was disconnected"
        );
        let seen = transaction(client)
            .await
            .unwrap_or_else(|e| panic!("{tenant}: idle client after restart: {}", describe(&e)));
        assert_eq!(&seen, tenant);
    }
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    let mut logs = Vec::new();
    for c in clients {
        tokio::select! {
            log = c => logs.push(log.expect("client task")),
            _ = &mut deadline => {
                phase.store(DONE, Ordering::SeqCst);
                panic!("clients did not finish after the restart");
            }
        }
    }
    for (i, log) in logs.iter().enumerate() {
        eprintln!(
            "client {i}: {} before, {} failed at stop {:?}, {} after ({} reconnects)",
            log.before,
            log.failed_at_stop.len(),
            log.failed_at_stop,
            log.after,
            log.reconnects
        );
    }
    for (i, log) in logs.iter().enumerate() {
        assert!(log.before > 0, "client {i} never ran before the stop");
        assert!(log.errors_before.is_empty(), "client {i}: {log:?}");
        assert!(log.failed_at_stop.len() <= 1, "client {i}: {log:?}");
        assert!(log.errors_after.is_empty(), "client {i}: {log:?}");
        assert_eq!(log.after, AFTER, "client {i}: {log:?}");
        assert!(log.wrong_tenant.is_empty(), "client {i}: {log:?}");
    }
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_insert_survives_an_immediate_stop() {
    // The test servers run with synchronous_commit = off, where PostgreSQL itself may lose
    // the last commits it acknowledged in a crash; this test needs the real promise.
    let server = Arc::new(own_pg_with(
        LocalPgOptions::default().conf("synchronous_commit = on"),
    ));
    server
        .psql_db(
            "app",
            "CREATE TABLE t1.acked (n int PRIMARY KEY); ALTER TABLE t1.acked OWNER TO app;",
        )
        .expect("table");
    let proxy = TestProxy::start_on(ProxyOptions::default(), server.host(), server.port());
    let acked_count = Arc::new(AtomicUsize::new(0));
    let restarted = Arc::new(AtomicBool::new(false));
    let stopper = {
        let (server, acked_count, restarted) =
            (server.clone(), acked_count.clone(), restarted.clone());
        tokio::spawn(async move {
            while acked_count.load(Ordering::SeqCst) < 300 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            run_blocking(&server, stop);
            // Down for a while on purpose: clients must ride it out.
            tokio::time::sleep(Duration::from_millis(300)).await;
            run_blocking(&server, start);
            restarted.store(true, Ordering::SeqCst);
        })
    };
    let conn = proxy.connect_str("app", Naming::Options, "t1");
    let mut client = connect(&conn).await.unwrap_or_else(|e| panic!("{e}"));
    let (mut acked, mut in_doubt) = (Vec::new(), Vec::new());
    let mut acked_after_restart = 0;
    let started = Instant::now();
    let mut n = 0;
    while acked_after_restart < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "stuck: {} acked, {} in doubt",
            acked.len(),
            in_doubt.len()
        );
        if client.is_closed() {
            if !restarted.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            client = connect(&conn).await.unwrap_or_else(|e| panic!("{e}"));
        }
        n += 1;
        let was_restarted = restarted.load(Ordering::SeqCst);
        match client
            .simple_query(&format!("INSERT INTO acked VALUES ({n})"))
            .await
        {
            Ok(_) => {
                acked.push(n);
                acked_count.fetch_add(1, Ordering::SeqCst);
                if was_restarted {
                    acked_after_restart += 1;
                }
            }
            Err(e) => {
                assert!(
                    !was_restarted,
                    "insert {n} failed after the restart: {}",
                    describe(&e)
                );
                in_doubt.push((n, describe(&e)));
            }
        }
    }
    stopper.await.expect("stopper");
    let direct = connect(&conn_str_to(&server, "postgres", "postgres", "app"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let present: std::collections::BTreeSet<i32> = direct
        .query("SELECT n FROM t1.acked", &[])
        .await
        .expect("read back")
        .iter()
        .map(|r| r.get(0))
        .collect();
    eprintln!(
        "{} acknowledged, {} in doubt {:?}, {} rows in the table",
        acked.len(),
        in_doubt.len(),
        in_doubt,
        present.len()
    );
    let lost: Vec<i32> = acked
        .iter()
        .copied()
        .filter(|n| !present.contains(n))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    // Nothing appears that the client never sent, and at most the in-doubt ones are extra.
    let extra = present.len() - acked.len();
    assert!(extra <= in_doubt.len(), "{extra} unexplained rows");
    assert!(present.iter().all(|&p| p >= 1 && p <= n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_fails_waiting_logins_fast() {
    const LOGINS: usize = 12;
    // A "server" on loopback that accepts connections and never says a word (a hung host).
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = hung.local_addr().expect("addr").port();
    let attempts = Arc::new(AtomicUsize::new(0));
    let holder = {
        let attempts = attempts.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = hung.accept().await {
                attempts.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        })
    };
    let proxy = Arc::new(TestProxy::start_on(
        ProxyOptions::default().timeout("server_connect_timeout", "1s"),
        "127.0.0.1",
        port,
    ));
    let started = Instant::now();
    let logins: Vec<_> = (0..LOGINS)
        .map(|i| {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let tenant = ["t1", "t2"][i % 2];
                let result = proxy.connect("app", Naming::Options, tenant).await;
                (result.map(|_| ()), started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for login in logins {
        let (result, elapsed) = login.await.expect("login task");
        let err = result.expect_err("a login to a hung backend must fail");
        assert_eq!(err.code(), Some("08006"), "{err}");
        assert!(err.to_string().contains("\"main\""), "{err}");
        slowest = slowest.max(elapsed);
    }
    let attempts = attempts.load(Ordering::SeqCst);
    eprintln!(
        "{LOGINS} logins to a hung backend all got 08006 within {slowest:?}, \
         after {attempts} connection attempts"
    );
    // One after another each login would wait out its own connect attempt; marked down
    // after the first failures, the rest fail fast without trying: a count, not a time.
    assert!(
        (1..LOGINS / 2).contains(&attempts),
        "{attempts} connection attempts for {LOGINS} logins"
    );
    holder.abort();
}
