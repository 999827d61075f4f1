//! `pgtenant --takeover`: a new process takes the listening socket and the clients over
//! from the running one, which exits; no client is dropped or notices anything (same
//! connection, same cancel key, same settings and prepared statements).

use std::time::Duration;

use tokio_postgres::NoTls;

use crate::support::binary::Binary;
use crate::support::ops::ops_toml;
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
