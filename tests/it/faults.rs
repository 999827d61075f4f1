//! Faults: cancel requests, clients that die inside a transaction, a COPY or a query, and
//! server connections terminated under the proxy. Whatever happens to one client or one
//! server connection, the next client gets a clean connection and the others keep working.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio_postgres::{Client, NoTls};

use crate::support::clients::{connect_killable, psql_cmd, superuser, Killable};
use crate::support::ops::sample;
use crate::support::{
    assert_db_error, connect, connect_watched, describe, simple_value, Naming, ProxyOptions,
    TestProxy,
};
use crate::support::{eventually, tenant_client as proxy_client, value};

/// Waits (at most `within`) until `sql` (a count, on a direct superuser connection) says
/// `want`.
async fn wait_for_count(su: &Client, sql: &str, want: &str, within: Duration) {
    eventually(within, &format!("{sql} gives {want}"), || async {
        value(su, sql).await.as_deref() == Some(want)
    })
    .await;
}

/// Waits until a statement whose text contains `marker` is active on the server.
async fn wait_until_active(su: &Client, marker: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
         AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
    );
    wait_for_count(su, &sql, "1", Duration::from_secs(10)).await;
}

/// The query's SQLSTATE, or its error text.
fn code_of(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| describe(e), |c| c.code().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_query() {
    let proxy = TestProxy::start_with(ProxyOptions::default());
    let su = superuser().await;
    let client = proxy_client(&proxy, "t1").await;
    let token = client.cancel_token();
    let running = tokio::spawn(async move {
        let r = client
            .simple_query("SELECT pg_sleep(30) /* cancel-me */")
            .await;
        (client, r)
    });
    wait_until_active(&su, "cancel-me").await;
    token
        .cancel_query(NoTls)
        .await
        .unwrap_or_else(|e| panic!("sending the cancel request: {}", describe(&e)));
    let (client, result) = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the cancelled query ended within 20s")
        .unwrap();
    // 57014 (not the end of a 30 s sleep: the wait above is 20 s).
    let err = result.expect_err("the query was cancelled");
    assert_eq!(code_of(&err), "57014");
    // The client goes on as usual.
    assert_eq!(
        value(&client, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t1")
    );
}

/// A cancel for a client that is not running anything (so is not linked) must not reach the
/// server connection some other client is using right now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_an_idle_client_is_harmless() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let su = superuser().await;
    let busy = proxy_client(&proxy, "t1").await;
    let idle = proxy_client(&proxy, "t2").await;
    assert_eq!(
        value(&idle, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t2")
    );
    let idle_token = idle.cancel_token();
    let busy_token = busy.cancel_token();
    let running = tokio::spawn(async move {
        let r = busy
            .simple_query("SELECT pg_sleep(1.5) /* not-me */, 'done'")
            .await
            .map(|m| crate::support::clients::render(&m));
        (busy, r)
    });
    wait_until_active(&su, "not-me").await;
    // The idle client's own cancel, twice, while the only server connection is busy.
    for _ in 0..2 {
        idle_token.cancel_query(NoTls).await.expect("cancel sent");
    }
    let (busy, result) = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the busy query ended")
        .unwrap();
    let rows =
        result.unwrap_or_else(|e| panic!("the busy client's query was hit: {}", describe(&e)));
    assert!(rows.iter().any(|r| r.ends_with("|done")), "{rows:?}");
    // A cancel for the busy client after it finished is harmless too.
    busy_token.cancel_query(NoTls).await.expect("cancel sent");
    // A fixed sleep on purpose: the stray cancel has time to land, and must hit nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        value(&busy, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t1")
    );
    assert_eq!(
        value(&idle, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t2")
    );
}

/// How client A leaves while it holds a row lock.
#[derive(Debug, Clone, Copy)]
enum Death {
    /// tokio-postgres drops the client: a Terminate message, then the socket closes.
    Terminate,
    /// The connection task is aborted: the socket just closes.
    Eof,
    /// A psql process is SIGKILLed.
    KilledPsql,
}

/// A holds `SELECT ... FOR UPDATE` inside a transaction on a pool of 1, then dies. The next
/// clients (same and other tenant) lock the same row with NOWAIT, and the server shows no
/// transaction left open for A.
async fn lock_released_after(death: Death, table: &str) {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let su = superuser().await;
    let app_name = format!("lock_holder_{table}");
    let lock_sql = format!("SELECT id FROM {table} WHERE id = 1 FOR UPDATE");
    let locks_sql = format!("SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass");
    let mut psql = None;
    match death {
        Death::Terminate | Death::Eof => {
            let conn = format!(
                "{} application_name={app_name}",
                proxy.connect_str("app", Naming::Options, "t1")
            );
            let a = connect_killable(&conn).await.expect("client A");
            a.client.batch_execute("BEGIN").await.unwrap();
            a.client.batch_execute(&lock_sql).await.unwrap();
            wait_for_count(&su, &locks_sql, "1", Duration::from_secs(5)).await;
            match death {
                Death::Terminate => {
                    let Killable { client, task } = a;
                    drop(client);
                    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                }
                _ => a.kill().await,
            }
        }
        Death::KilledPsql => {
            let url = format!(
                "{}&application_name={app_name}",
                proxy.url("app", Naming::Options, "t1")
            );
            let mut cmd = psql_cmd(&url);
            cmd.args(["-q", "-At"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null());
            let mut child = cmd.spawn().expect("psql starts");
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(format!("BEGIN;\n{lock_sql};\n").as_bytes())
                .await
                .unwrap();
            stdin.flush().await.unwrap();
            wait_for_count(&su, &locks_sql, "1", Duration::from_secs(10)).await;
            child.kill().await.expect("kill psql");
            psql = Some((child, stdin));
        }
    }
    let started = Instant::now();
    for tenant in ["t1", "t2"] {
        let b = proxy_client(&proxy, tenant).await;
        let nowait = format!("SELECT id FROM {table} WHERE id = 1 FOR UPDATE NOWAIT");
        let got = tokio::time::timeout(Duration::from_secs(10), simple_value(&b, &nowait))
            .await
            .unwrap_or_else(|_| panic!("{death:?}: {tenant} waited 10s for a connection"));
        match got {
            Ok(v) => assert_eq!(v.as_deref(), Some("1")),
            Err(e) => panic!(
                "{death:?}: {tenant}: the lock was left behind: {}",
                describe(&e)
            ),
        }
        assert_eq!(
            value(&b, "SELECT tenant FROM whoami").await.as_deref(),
            Some(tenant)
        );
    }
    eprintln!(
        "{death:?}: next clients locked the row after {:?}",
        started.elapsed()
    );
    let open = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' \
         AND datname = 'app' AND application_name = '{app_name}'"
    );
    wait_for_count(&su, &open, "0", Duration::from_secs(5)).await;
    wait_for_count(&su, &locks_sql, "0", Duration::from_secs(5)).await;
    drop(psql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_released_when_client_terminates_in_transaction() {
    lock_released_after(Death::Terminate, "lock_terminate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_released_when_client_socket_closes_in_transaction() {
    lock_released_after(Death::Eof, "lock_eof").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_released_when_psql_is_killed_in_transaction() {
    lock_released_after(Death::KilledPsql, "lock_psql").await;
}

/// The next client on the pool of 1 must get an answer to a plain query, not land in
/// the dead client's COPY.
async fn assert_next_client_clean(proxy: &TestProxy, table: &str) {
    let started = Instant::now();
    let b = proxy_client(proxy, "t1").await;
    let count = tokio::time::timeout(
        Duration::from_secs(10),
        simple_value(&b, &format!("SELECT count(*) FROM {table}")),
    )
    .await
    .expect("the next client got an answer within 10s")
    .unwrap_or_else(|e| panic!("next client: {}", describe(&e)));
    assert_eq!(
        count.as_deref(),
        Some("0"),
        "rows of the aborted COPY are visible"
    );
    assert_eq!(
        value(&b, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t1")
    );
    let rows = b
        .simple_query("SELECT g FROM generate_series(1, 3) g")
        .await
        .unwrap();
    assert_eq!(crate::support::clients::render(&rows).len(), 5);
    eprintln!("next client clean after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_copy_in_leaves_nothing() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let su = superuser().await;
    let conn = format!(
        "{} application_name=copy_killer",
        proxy.connect_str("app", Naming::Options, "t1")
    );
    let a = connect_killable(&conn).await.expect("client A");
    // copy_in prepares a named statement: keep it on one server connection.
    a.client.batch_execute("BEGIN").await.unwrap();
    let sink = a
        .client
        .copy_in("COPY copy_abort_tp FROM STDIN")
        .await
        .unwrap_or_else(|e| panic!("copy_in: {}", describe(&e)));
    futures_util::pin_mut!(sink);
    let rows: String = (1..=100).map(|i| format!("{i}\trow {i}\n")).collect();
    sink.send(Bytes::from(rows)).await.expect("send rows");
    let active = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'copy_killer' \
                  AND state = 'active' AND query LIKE 'COPY%'";
    wait_for_count(&su, active, "1", Duration::from_secs(10)).await;
    a.kill().await;
    assert_next_client_clean(&proxy, "copy_abort_tp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_killed_mid_copy_in_leaves_nothing() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let su = superuser().await;
    let url = format!(
        "{}&application_name=copy_psql_killer",
        proxy.url("app", Naming::Options, "t1")
    );
    let mut cmd = psql_cmd(&url);
    cmd.args(["-c", "\\copy copy_abort_psql FROM STDIN"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("psql starts");
    let mut stdin = child.stdin.take().unwrap();
    let rows: String = (1..=100).map(|i| format!("{i}\trow {i}\n")).collect();
    stdin.write_all(rows.as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
    let active = "SELECT count(*) FROM pg_stat_activity \
                  WHERE application_name = 'copy_psql_killer' AND state = 'active' \
                  AND query LIKE 'COPY%'";
    wait_for_count(&su, active, "1", Duration::from_secs(10)).await;
    child.kill().await.expect("kill psql");
    drop(stdin);
    assert_next_client_clean(&proxy, "copy_abort_psql").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_query_frees_the_pool_quickly() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let su = superuser().await;
    let a = connect_killable(&proxy.connect_str("app", Naming::Options, "t1"))
        .await
        .expect("client A");
    let a_client = a.client;
    let a_task = a.task;
    let query = tokio::spawn(async move {
        let _ = a_client
            .simple_query("SELECT pg_sleep(20) /* killed-mid-query */")
            .await;
    });
    wait_until_active(&su, "killed-mid-query").await;
    a_task.abort();
    let _ = a_task.await;
    let started = Instant::now();
    let b = proxy_client(&proxy, "t2").await;
    let got = tokio::time::timeout(
        Duration::from_secs(15),
        simple_value(&b, "SELECT tenant FROM whoami"),
    )
    .await
    .expect("the next client got an answer within 15s")
    .unwrap_or_else(|e| panic!("next client: {}", describe(&e)));
    eprintln!(
        "next client answered {:?} after A was killed mid-query",
        started.elapsed()
    );
    // Within 15 s (above): it did not wait for A's 20 s query.
    assert_eq!(got.as_deref(), Some("t2"));
    query.abort();
}

/// The server pids of the connections `client` is given over a few transactions.
async fn server_pids(client: &Client, rounds: usize) -> Vec<String> {
    let mut pids = Vec::new();
    for _ in 0..rounds {
        pids.push(value(client, "SELECT pg_backend_pid()").await.unwrap());
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_connections_terminated_under_the_proxy() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let su = superuser().await;
    let tenants = ["t1", "t2", "t3", "t4"];
    let mut clients = Vec::new();
    for tenant in tenants {
        clients.push((proxy_client(&proxy, tenant).await, tenant));
    }
    for round in 0..2 {
        let mut pids = Vec::new();
        for (client, _) in &clients {
            pids.extend(server_pids(client, 2).await);
        }
        pids.sort();
        pids.dedup();
        assert!(pids.len() <= 2, "pool of 2 used {pids:?}");
        let terminated = value(
            &su,
            &format!(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE pid IN ({})",
                pids.join(",")
            ),
        )
        .await;
        assert_eq!(terminated, Some(pids.len().to_string()), "round {round}");
        // Let the termination land on the idle connections.
        let gone = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid IN ({})",
            pids.join(",")
        );
        wait_for_count(&su, &gone, "0", Duration::from_secs(5)).await;
        eventually(
            Duration::from_secs(5),
            "the proxy has seen its idle connections close",
            || async {
                let text = proxy.handle.metrics_text();
                sample(
                    &text,
                    "pgtenant_server_connections{backend=\"main\",state=\"idle\"}",
                ) == Some(0.0)
            },
        )
        .await;
        for (client, tenant) in &clients {
            let got = simple_value(client, "SELECT tenant FROM whoami").await;
            match got {
                Ok(v) => assert_eq!(v.as_deref(), Some(*tenant), "round {round}"),
                Err(e) => panic!(
                    "round {round}: {tenant}'s next transaction after its idle server \
                     connection was terminated failed: {}",
                    describe(&e)
                ),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_terminated_while_client_in_transaction() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let su = superuser().await;
    let a = connect_watched(&proxy.connect_str("app", Naming::Options, "t1"))
        .await
        .unwrap();
    let b = proxy_client(&proxy, "t2").await;
    let c = proxy_client(&proxy, "t3").await;
    a.batch_execute("BEGIN").await.unwrap();
    let pid = value(&a, "SELECT pg_backend_pid()").await.unwrap();
    assert_eq!(
        value(&b, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t2")
    );
    let killed = value(&su, &format!("SELECT pg_terminate_backend({pid})")).await;
    assert_eq!(killed.as_deref(), Some("t"));
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), a.simple_query("SELECT 1")).await;
    let err = match result {
        Err(_) => panic!("A's query hung after its server connection was terminated"),
        Ok(Ok(rows)) => panic!("A's transaction went on on another connection: {rows:?}"),
        Ok(Err(e)) => e,
    };
    eprintln!("A got {:?} after {:?}", describe(&err), started.elapsed());
    // The server's own FATAL, relayed (A was linked when its backend was terminated).
    assert_db_error(
        &a.closing_error(&err).await,
        "57P01",
        "terminating connection due to administrator command",
    );
    for round in 0..3 {
        assert_eq!(
            value(&b, "SELECT tenant FROM whoami").await.as_deref(),
            Some("t2"),
            "{round}"
        );
        assert_eq!(
            value(&c, "SELECT tenant FROM whoami").await.as_deref(),
            Some("t3"),
            "{round}"
        );
    }
    let again = connect(&proxy.connect_str("app", Naming::Options, "t1"))
        .await
        .expect("A reconnects");
    assert_eq!(
        value(&again, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t1")
    );
}
