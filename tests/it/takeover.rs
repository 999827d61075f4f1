//! `pgtenant --takeover`: a new process takes the listening socket and the clients over
//! from the running one, which exits; no client is dropped or notices anything (same
//! connection, same cancel key, same settings and prepared statements).

use std::time::Duration;

use tokio_postgres::NoTls;

use crate::support::binary::Binary;
use crate::support::ops::{ops_toml, ADMIN_USER};
use crate::support::wire::{query, Wire};
use crate::support::{connect, pg, simple_value, tenant_of, ProxyOptions, PROXY_PASSWORD};

const TENANTS: [&str; 4] = ["t1", "t2", "t3", "t4"];

fn raise_fd_limit() {
    // SAFETY: reads and sets this process's own limit.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The tenant a raw client reads (`SELECT tenant FROM whoami`).
async fn wire_tenant(client: &mut Wire) -> String {
    client.send(&query("SELECT tenant FROM whoami")).await;
    let messages = client.until_ready().await.expect("the query runs");
    let row = messages
        .iter()
        .find(|m| m.tag == b'D')
        .expect("a row comes back");
    // DataRow: field count (2), length (4), value.
    String::from_utf8_lossy(&row.body[6..]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_move_to_the_new_process_with_their_sessions() {
    raise_fd_limit();
    let text = ops_toml(&ProxyOptions::default().proxy_line("max_client_connections = 5000"));
    let mut old = Binary::start(&text).await;

    // Clients with sessions of their own: a setting, a named prepared statement.
    let mut rich = Vec::new();
    for (i, tenant) in TENANTS.iter().enumerate() {
        let client = connect(&old.conn_str(tenant)).await.unwrap();
        client
            .simple_query(&format!("SET statement_timeout = '{}s'", 100 + i))
            .await
            .unwrap();
        let stmt = client
            .prepare("SELECT tenant FROM whoami WHERE n > $1")
            .await
            .unwrap();
        let rows = client.query(&stmt, &[&0i32]).await.unwrap();
        assert_eq!(rows[0].get::<_, String>(0), *tenant);
        rich.push((tenant, client, stmt, 100 + i));
    }
    // And many plain ones, each of which has run a query.
    let mut plain = Vec::new();
    for i in 0..2000 {
        let tenant = TENANTS[i % TENANTS.len()];
        let (mut client, key) = Wire::login_keyed(
            std::net::SocketAddr::from(([127, 0, 0, 1], old.port)),
            tenant,
            PROXY_PASSWORD,
        )
        .await;
        assert_eq!(wire_tenant(&mut client).await, tenant);
        plain.push((tenant, client, key));
    }

    let new = old.take_over().await;
    assert_ne!(new.pid(), old.pid());
    let status = old.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "the old process exits cleanly: {status}");
    old.check_log();
    assert!(
        old.log().contains("sent=2004") && old.log().contains("lost=0"),
        "every client was handed over:\n{}",
        old.log()
    );

    for (tenant, client, stmt, secs) in &rich {
        assert_eq!(tenant_of(client).await.as_deref(), Some(**tenant));
        assert_eq!(
            simple_value(client, "SHOW statement_timeout")
                .await
                .unwrap(),
            Some(format!("{secs}s")),
            "the client's own setting moved with it"
        );
        let rows = client.query(stmt, &[&0i32]).await.unwrap();
        assert_eq!(
            rows[0].get::<_, String>(0),
            **tenant,
            "its prepared statement too"
        );
    }
    for (tenant, client, _) in plain.iter_mut() {
        assert_eq!(wire_tenant(client).await, *tenant);
    }

    // The same cancel key works, now on the new process.
    let (_, client, _, _) = &rich[0];
    let token = client.cancel_token();
    let sleeping = client.simple_query("SELECT pg_sleep(30)");
    let cancel = async {
        crate::support::eventually(Duration::from_secs(10), "the sleep runs", || async {
            let admin = crate::support::connect(&crate::support::pg_conn_str(
                "postgres", "postgres", "app",
            ))
            .await
            .unwrap();
            let rows = admin
                .simple_query("SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'")
                .await
                .unwrap();
            rows.iter()
                .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        })
        .await;
        token.cancel_query(NoTls).await.unwrap();
    };
    let (result, ()) = tokio::join!(sleeping, cancel);
    let error = result.expect_err("the sleep is cancelled");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    new.check_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_through_a_takeover_without_a_failed_transaction() {
    let text = ops_toml(&ProxyOptions::default().pool_size(8));
    let mut old = Binary::start(&text).await;
    let script = tempfile::NamedTempFile::new().unwrap();
    // A wrong tenant divides by zero and fails the transaction.
    std::fs::write(
        script.path(),
        "SELECT n AS got FROM whoami \\gset\n\\if :got != 1\nSELECT 1/0;\n\\endif\n\
         BEGIN;\nSELECT tenant FROM whoami WHERE n = :got;\nEND;\n",
    )
    .unwrap();
    let bench = tokio::process::Command::new(pg().bin_dir().join("pgbench"))
        .args(["-n", "-c", "64", "-j", "4", "-T", "8", "-f"])
        .arg(script.path())
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &old.port.to_string(),
            "-U",
            "app",
            "app",
        ])
        .env("PGPASSWORD", PROXY_PASSWORD)
        .env("PGOPTIONS", "-c tenant=t1")
        .output();
    let takeover = async {
        // Every pgbench client has logged in.
        crate::support::eventually(Duration::from_secs(10), "pgbench runs", || async {
            old.log().matches("result=\"ok\"").count() + old.log().matches("result=ok").count()
                >= 64
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let new = old.take_over().await;
        let status = old.wait(Duration::from_secs(30)).await;
        // While pgbench still runs: its 64 clients are the new process's.
        let admin = connect(&format!(
            "host=127.0.0.1 port={} user={ADMIN_USER} password={PROXY_PASSWORD} dbname=pgtenant",
            new.port
        ))
        .await
        .unwrap();
        let clients = admin.simple_query("SHOW CLIENTS").await.unwrap();
        let of_t1 = clients
            .iter()
            .filter(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    (0..row.len()).any(|i| row.get(i) == Some("t1"))
                }
                _ => false,
            })
            .count();
        assert_eq!(of_t1, 64, "{clients:?}");
        (new, status)
    };
    let (out, (new, status)) = tokio::join!(bench, takeover);
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench failed:\n{stdout}\n{stderr}");
    assert!(
        !stderr.contains("abort"),
        "a pgbench client was dropped:\n{stderr}"
    );
    if stdout.contains("failed transactions") {
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "{stdout}"
        );
    }
    assert!(status.success(), "the old process exits cleanly: {status}");
    old.check_log();
    assert!(
        old.log().contains("sent=64") && old.log().contains("lost=0"),
        "every pgbench client was handed over:\n{}",
        old.log()
    );
    // The new process serves new clients too.
    let client = connect(&new.conn_str("t2")).await.unwrap();
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t2"));
    new.check_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_moves_when_it_ends_and_a_listener_stays_until_shutdown_timeout() {
    let text = ops_toml(&ProxyOptions::default().timeout("shutdown_timeout", "3s"));
    let mut old = Binary::start(&text).await;
    let in_tx = connect(&old.conn_str("t1")).await.unwrap();
    in_tx.simple_query("BEGIN").await.unwrap();
    assert_eq!(tenant_of(&in_tx).await.as_deref(), Some("t1"));
    let listener = crate::support::connect_watched(&old.conn_str("t2"))
        .await
        .unwrap();
    listener.client.simple_query("LISTEN ch").await.unwrap();

    let new = old.take_over().await;
    crate::support::eventually(Duration::from_secs(10), "the handoff starts", || async {
        old.log().contains("handing clients over")
    })
    .await;
    // The open transaction goes on in the old process, then moves.
    in_tx
        .simple_query("CREATE TEMP TABLE IF NOT EXISTS scratch (x int) ON COMMIT DROP")
        .await
        .unwrap();
    assert_eq!(tenant_of(&in_tx).await.as_deref(), Some("t1"));
    in_tx.simple_query("COMMIT").await.unwrap();
    // The LISTEN client cannot move: closed when shutdown_timeout has passed, as at SIGTERM.
    let status = old.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    assert_eq!(tenant_of(&in_tx).await.as_deref(), Some("t1"), "it moved");
    let err = listener
        .client
        .simple_query("SELECT 1")
        .await
        .expect_err("the listener's connection was closed");
    let fatal = listener.closing_error(&err).await;
    assert_eq!(
        fatal.code(),
        &tokio_postgres::error::SqlState::ADMIN_SHUTDOWN
    );
    let log = old.log();
    assert!(log.contains("sent=1 lost=0"), "{log}");
    assert!(log.contains("left=1"), "the listener stayed: {log}");
    old.check_log();
    new.check_log();
}

#[tokio::test]
async fn takeover_with_no_running_process_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let text = Binary::listen_on(
        &ops_toml(&ProxyOptions::default()),
        crate::support::binary::free_port(),
    );
    std::fs::write(&config, text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["--takeover", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no pgtenant to take over at /tmp/.s.PGTENANT."),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_found_by_auth_query_moves_and_still_logs_in_as_itself() {
    let server =
        crate::auth_query::server("scram-sha-256", &[("alice", "alice_pw", "scram-sha-256")]);
    let text = ProxyOptions::default()
        .extra(&format!("{}ttl = \"60s\"\n", crate::auth_query::AUTH))
        .toml(server.host(), server.port());
    let mut old = Binary::start(&text).await;
    let conn = format!(
        "host=127.0.0.1 port={} user=alice password=alice_pw dbname=app \
         options='-c tenant=t1' connect_timeout=10",
        old.port
    );
    let client = connect(&conn).await.expect("alice logs in");
    let whoami = "SELECT current_user || ' ' || tenant FROM whoami";
    assert_eq!(
        simple_value(&client, whoami).await.unwrap().as_deref(),
        Some("alice t1")
    );
    let new = old.take_over().await;
    assert!(old.wait(Duration::from_secs(30)).await.success());
    // The old process's server connections are gone: the new one logs in as alice with
    // the keys that moved with her session (no password for her anywhere).
    assert_eq!(
        simple_value(&client, whoami).await.unwrap().as_deref(),
        Some("alice t1")
    );
    assert!(old.log().contains("sent=1 lost=0"), "{}", old.log());
    old.check_log();
    new.check_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_tenant_moves_and_is_made_again_in_the_new_process() {
    let server = crate::support::own_pg();
    crate::template::make_schemas(&server, 1, 2);
    let mut old = Binary::start(&crate::template::template_toml(&server, 2, "")).await;
    let conn = |port: u16, tenant: &str| {
        format!(
            "host=127.0.0.1 port={port} user=app password={PROXY_PASSWORD} dbname=app \
             options='-c tenant={tenant}' connect_timeout=10"
        )
    };
    let a = connect(&conn(old.port, "tt_0001")).await.unwrap();
    let b = connect(&conn(old.port, "tt_0002")).await.unwrap();
    let reads = "SELECT tenant || ' ' || current_setting('app.tenant_id') FROM whoami";
    assert_eq!(
        simple_value(&a, reads).await.unwrap().as_deref(),
        Some("tt_0001 tt_0001")
    );
    let new = old.take_over().await;
    assert!(old.wait(Duration::from_secs(30)).await.success());
    assert!(old.log().contains("sent=2 lost=0"), "{}", old.log());
    assert_eq!(
        simple_value(&a, reads).await.unwrap().as_deref(),
        Some("tt_0001 tt_0001")
    );
    assert_eq!(
        simple_value(&b, reads).await.unwrap().as_deref(),
        Some("tt_0002 tt_0002")
    );
    old.check_log();
    new.check_log();
}
