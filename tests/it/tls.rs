//! TLS on both sides (SPEC "TLS"): psql with every sslmode the docs promise, direct TLS,
//! channel binding, `client_tls = "require"`, SNI tenant naming, certificate rotation with
//! clients connected, hostile handshakes; servers that only accept TLS, certificate failures
//! as 08006 naming the backend, `prefer` falling back; the collision and prepared-statement
//! checks with TLS on both sides.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::binary::Binary;
use crate::support::clients::run_psql;
use crate::support::tls::{
    backend_lines, connect_rustls, connect_tls, install_server_cert, psql_cmd, tls_pg, Certs,
};
use crate::support::wire::{packet, Wire, SSL_REQUEST};
use crate::support::{
    connect, eventually, simple_value, tenant_of, ConnectError, Naming, ProxyOptions, TestProxy,
};

fn proxy_with_tls(certs: &Certs, client_tls: &str, more: &str) -> TestProxy {
    TestProxy::start_with(
        ProxyOptions::default()
            .proxy_line(&certs.proxy_lines(client_tls))
            .proxy_line(more),
    )
}

/// Runs `sql` with psql over `conn`; stdout, or the error output.
async fn psql(conn: &str, sql: &str) -> Result<String, String> {
    let mut cmd = psql_cmd(conn);
    cmd.args(["-At", "-c", sql]);
    let out = run_psql(cmd).await;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn libpq(proxy: &TestProxy, host: &str, tenant: &str, tls: &str) -> String {
    format!(
        "host={host} port={} user=app password=secret dbname=app options='-c tenant={tenant}' {tls}",
        proxy.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_logs_in_over_tls_with_every_sslmode() {
    let certs = Certs::new();
    let proxy = proxy_with_tls(&certs, "allow", "");
    let ca = certs.ca().display().to_string();
    let cases = [
        ("localhost", format!("sslmode=verify-full sslrootcert={ca}")),
        ("127.0.0.1", "sslmode=require".to_string()),
        (
            "127.0.0.1",
            "sslmode=require channel_binding=require".to_string(),
        ),
        ("127.0.0.1", "sslmode=disable".to_string()),
    ];
    for (i, (host, tls)) in cases.iter().enumerate() {
        let tenant = format!("t{}", i % 4 + 1);
        let conn = libpq(&proxy, host, &tenant, tls);
        let out = psql(&conn, "SELECT tenant FROM whoami")
            .await
            .unwrap_or_else(|e| panic!("{tls}: {e}"));
        assert_eq!(out, tenant, "{tls}");
        // On TLS, \conninfo names the protocol.
        let info = psql(&conn, "\\conninfo").await.unwrap();
        assert_eq!(
            info.contains("SSL connection"),
            !tls.contains("disable"),
            "{tls}: {info}"
        );
    }
    // The host name is checked: the certificate does not name this one.
    let wrong = libpq(
        &proxy,
        "wrong.example hostaddr=127.0.0.1",
        "t1",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    );
    let e = psql(&wrong, "SELECT 1").await.unwrap_err();
    assert!(e.contains("does not match host name"), "{e}");
    assert!(proxy.incidents().is_empty(), "{:?}", proxy.incidents());
}

/// PostgreSQL 17's direct TLS (`sslnegotiation=direct`: a ClientHello first, ALPN
/// `postgresql`). The PostgreSQL 18 psql installed here is built without SSL, so the client
/// is tokio-postgres (which speaks it since 0.7.13) over rustls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_needs_alpn_postgresql() {
    let certs = Certs::new();
    let proxy = proxy_with_tls(&certs, "require", "");
    let conn = format!(
        "{} host=localhost sslmode=require sslnegotiation=direct",
        proxy.connect_str("app", Naming::Options, "t3")
    );
    let client = connect_tls(&certs, &conn).await.expect("direct TLS login");
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t3"));

    // Without ALPN "postgresql" the connection is closed (as PostgreSQL does).
    let mut config = certs.client_config();
    config.alpn_protocols.clear();
    match connect_rustls(config, &conn).await {
        Err(ConnectError::Postgres(e)) => assert!(e.code().is_none(), "{e:?}"),
        other => panic!("direct TLS without ALPN: {:?}", other.map(drop)),
    }
    assert!(proxy.incidents().is_empty(), "{:?}", proxy.incidents());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_when_tls_is_required() {
    let certs = Certs::new();
    let proxy = proxy_with_tls(&certs, "require", "");
    let plain = proxy.connect_str("app", Naming::Options, "t1");
    match connect(&plain).await {
        Err(e) => assert_eq!(e.code(), Some("28000"), "{e:?}"),
        Ok(_) => panic!("a plaintext login got in"),
    }
    let e = psql(
        &libpq(&proxy, "127.0.0.1", "t1", "sslmode=disable"),
        "SELECT 1",
    )
    .await
    .unwrap_err();
    assert!(e.contains("TLS is required"), "{e}");
    let ok = connect_tls(&certs, &format!("{plain} sslmode=require"))
        .await
        .expect("TLS login");
    assert_eq!(tenant_of(&ok).await.as_deref(), Some("t1"));
}

/// `tls_client_ca`: clients must present a certificate signed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_with_tls_client_ca() {
    let certs = Certs::new();
    let proxy = proxy_with_tls(
        &certs,
        "require",
        &format!("tls_client_ca = \"{}\"", certs.ca().display()),
    );
    let conn = format!(
        "{} host=localhost sslmode=require",
        proxy.connect_str("app", Naming::Options, "t4")
    );
    let mine = certs.issue("client", &["app"], false);
    let client = connect_rustls(certs.client_config_with_cert(&mine), &conn)
        .await
        .expect("a client certificate from the CA");
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t4"));
    assert!(
        connect_tls(&certs, &conn).await.is_err(),
        "no client certificate, yet logged in"
    );
    let stranger = Certs::new();
    let theirs = stranger.issue("client", &["app"], false);
    assert!(
        connect_rustls(certs.client_config_with_cert(&theirs), &conn)
            .await
            .is_err(),
        "a certificate from another CA, yet logged in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_is_offered_and_checked() {
    let certs = Certs::new();
    let proxy = proxy_with_tls(&certs, "allow", "");
    let base = proxy.connect_str("app", Naming::Options, "t2");
    let client = connect_tls(
        &certs,
        &format!("{base} host=localhost sslmode=require channel_binding=require"),
    )
    .await
    .expect("SCRAM-SHA-256-PLUS login");
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t2"));
    // Without TLS there is nothing to bind to: channel_binding=require cannot be met.
    let e = psql(
        &libpq(
            &proxy,
            "127.0.0.1",
            "t2",
            "sslmode=disable channel_binding=require",
        ),
        "SELECT 1",
    )
    .await
    .unwrap_err();
    assert!(e.contains("channel binding"), "{e}");
    // A wrong password over TLS with -PLUS is still 28P01.
    let wrong = base.replace("password='secret'", "password='nope'");
    let wrong = wrong.replace("password=secret", "password=nope");
    match connect_tls(&certs, &format!("{wrong} sslmode=require")).await {
        Err(e) => assert_eq!(e.code(), Some("28P01"), "{e:?}"),
        Ok(_) => panic!("a wrong password got in"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_names_the_tenant() {
    let certs = Certs::new();
    let proxy = proxy_with_tls(
        &certs,
        "allow",
        "tenant_from = [\"sni\", \"options\", \"user\", \"database\"]\nsni_suffix = \".db.test\"",
    );
    let ca = certs.ca().display().to_string();
    let by_sni = |name: &str| {
        format!(
            "host={name} hostaddr=127.0.0.1 port={} user=app password=secret dbname=app \
             sslmode=verify-full sslrootcert={ca}",
            proxy.port()
        )
    };
    for tenant in ["t1", "t3"] {
        let out = psql(
            &by_sni(&format!("{tenant}.db.test")),
            "SELECT tenant FROM whoami",
        )
        .await
        .unwrap();
        assert_eq!(out, tenant);
    }
    // Explicit: a name that is not a tenant is an error, not a fall-through.
    let e = psql(&by_sni("nope.db.test"), "SELECT 1").await.unwrap_err();
    assert!(e.contains("tenant \"nope\" does not exist"), "{e}");
    // No suffix (or no TLS): the next method names it.
    let out = psql(
        &libpq(&proxy, "localhost", "t4", "sslmode=require"),
        "SELECT tenant FROM whoami",
    )
    .await
    .unwrap();
    assert_eq!(out, "t4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_handshakes_close_only_their_connection() {
    let certs = Certs::new();
    let proxy = proxy_with_tls(&certs, "allow", "");
    let honest_conn = format!(
        "{} sslmode=require",
        proxy.connect_str("app", Naming::Options, "t1")
    );
    let honest = connect_tls(&certs, &honest_conn).await.unwrap();

    // Garbage after the 'S'.
    let mut garbage = Wire::connect(proxy.addr()).await;
    garbage.send(&packet(SSL_REQUEST, &[])).await;
    assert_eq!(garbage.byte().await.unwrap(), Some(b'S'));
    garbage.send(&[0xff; 64]).await;
    let reply = garbage.until_closed().await.expect("closed");
    assert!(reply.messages.is_empty(), "{reply:?}");

    // A client that stops mid-handshake: half a ClientHello, then silence.
    let mut stalled = Wire::connect(proxy.addr()).await;
    stalled.send(&packet(SSL_REQUEST, &[])).await;
    assert_eq!(stalled.byte().await.unwrap(), Some(b'S'));
    stalled
        .send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await;

    // A 1 MB ClientHello (direct TLS): records of a handshake message far over any limit.
    let mut big = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let mut hello = vec![0x01, 0x10, 0x00, 0x00]; // ClientHello of 1 MiB
    hello.resize(1 << 20, 0x41);
    let mut sent = Ok(());
    for chunk in hello.chunks(16_384) {
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        record.extend_from_slice(chunk);
        sent = big.write_all(&record).await;
        if sent.is_err() {
            break;
        }
    }
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut big, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // an alert
            }
        }
    })
    .await;
    assert!(
        closed.is_ok() || sent.is_err(),
        "the 1 MB ClientHello was not refused"
    );

    // Honest clients, old and new, are served meanwhile.
    assert_eq!(tenant_of(&honest).await.as_deref(), Some("t1"));
    let again = connect_tls(&certs, &honest_conn).await.unwrap();
    assert_eq!(tenant_of(&again).await.as_deref(), Some("t1"));
    drop(stalled);
    assert!(proxy.incidents().is_empty(), "{:?}", proxy.incidents());
}

/// New certificate files + SIGHUP with 50 clients connected over TLS: none is dropped, new
/// logins get the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_keeps_connected_clients() {
    let old = Certs::new();
    let issued = old.proxy_cert();
    let cert_path = issued.cert.clone();
    let key_path = issued.key.clone();
    let pg = crate::support::pg();
    let text = ProxyOptions::default()
        .proxy_line(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert_path.display(),
            key_path.display()
        ))
        .toml(pg.host(), pg.port());
    let binary = Binary::start(&text).await;
    let conn = |tenant: &str| format!("{} sslmode=require host=localhost", binary.conn_str(tenant));
    let mut clients = Vec::new();
    for i in 0..50 {
        let tenant = format!("t{}", i % 4 + 1);
        let client = connect_tls(&old, &conn(&tenant))
            .await
            .unwrap_or_else(|e| panic!("client {i}: {e:?}"));
        clients.push((tenant, client));
    }

    // A new CA and certificate in the same files, then SIGHUP.
    let new = Certs::new();
    let fresh = new.proxy_cert();
    std::fs::copy(&fresh.cert, &cert_path).unwrap();
    std::fs::copy(&fresh.key, &key_path).unwrap();
    binary.signal(libc::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "new logins get the new certificate",
        || {
            let conn = conn("t1");
            let new = &new;
            async move { connect_tls(new, &conn).await.is_ok() }
        },
    )
    .await;
    match connect_tls(&old, &conn("t1")).await {
        Err(ConnectError::Postgres(e)) => {
            let text = format!("{e:?}");
            assert!(text.contains("UnknownIssuer"), "{text}");
        }
        other => panic!("the old CA still verifies: {:?}", other.map(drop)),
    }
    for (tenant, client) in &clients {
        let got = simple_value(client, "SELECT tenant FROM whoami")
            .await
            .unwrap_or_else(|e| panic!("a connected client was dropped: {e}"));
        assert_eq!(got.as_deref(), Some(tenant.as_str()));
    }
    binary.check_log();
}

/// A PostgreSQL that only accepts TLS, through backends with each sslmode; certificate
/// failures are 08006 naming the backend and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_verifies_the_server() {
    let certs = Certs::new();
    let Some(server) = tls_pg(&certs) else {
        return;
    };
    let ca = certs.ca();
    let with_backend = |lines: &str| {
        let text = ProxyOptions::default().toml(server.host(), server.port());
        text.replace("pool_size = 2\n", &format!("pool_size = 2\n{lines}"))
    };
    let proxy = TestProxy::start_text(with_backend(&backend_lines("verify-full", Some(&ca))));
    let client = connect(&proxy.connect_str("app", Naming::Options, "t2"))
        .await
        .expect("login through a verify-full backend");
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t2"));
    let ssl = simple_value(
        &client,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await
    .unwrap();
    assert_eq!(ssl.as_deref(), Some("t"), "the server connection is TLS");
    drop(client);

    // Plaintext is refused by this server: sslmode matters.
    let fail = |lines: String| {
        let config =
            pgtenant::config::Config::from_toml_str(&with_backend(&lines), "t.toml").unwrap();
        proxy.handle.apply(config);
        async {
            match connect(&proxy.connect_str("app", Naming::Options, "t1")).await {
                Err(ConnectError::Postgres(e)) => crate::support::db_error(&e).clone(),
                other => panic!("logged in: {:?}", other.map(drop)),
            }
        }
    };
    let other_ca = Certs::new();
    let e = fail(backend_lines("verify-full", Some(&other_ca.ca()))).await;
    assert_eq!(e.code().code(), "08006");
    assert!(e.message().contains("backend \"main\""), "{}", e.message());
    assert!(e.message().contains("UnknownIssuer"), "{}", e.message());

    let e = fail(backend_lines("disable", None)).await;
    assert_eq!(e.code().code(), "08006", "{}", e.message());

    // An expired server certificate.
    install_server_cert(&server, &certs.issue("expired", &["127.0.0.1"], true));
    server.psql("SELECT pg_reload_conf()").unwrap();
    let e = fail(backend_lines("verify-ca", Some(&ca))).await;
    assert_eq!(e.code().code(), "08006");
    assert!(e.message().contains("backend \"main\""), "{}", e.message());
    assert!(
        e.message().to_lowercase().contains("expired"),
        "{}",
        e.message()
    );
    // `require` without a root certificate does not check it (as libpq).
    let config = pgtenant::config::Config::from_toml_str(
        &with_backend(&backend_lines("require", None)),
        "t.toml",
    )
    .unwrap();
    proxy.handle.apply(config);
    let client = connect(&proxy.connect_str("app", Naming::Options, "t3"))
        .await
        .expect("require without a root certificate");
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_falls_back_to_plaintext_and_require_does_not() {
    // The shared PostgreSQL has ssl off.
    let proxy = TestProxy::start_with(ProxyOptions::default());
    let pg = crate::support::pg();
    let text = |mode: &str| {
        ProxyOptions::default().toml(pg.host(), pg.port()).replace(
            "pool_size = 2\n",
            &format!("pool_size = 2\nsslmode = \"{mode}\"\n"),
        )
    };
    proxy
        .handle
        .apply(pgtenant::config::Config::from_toml_str(&text("prefer"), "t").unwrap());
    let client = connect(&proxy.connect_str("app", Naming::Options, "t1"))
        .await
        .expect("prefer falls back");
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t1"));
    proxy
        .handle
        .apply(pgtenant::config::Config::from_toml_str(&text("require"), "t").unwrap());
    match connect(&proxy.connect_str("app", Naming::Options, "t2")).await {
        Err(ConnectError::Postgres(e)) => {
            let db = crate::support::db_error(&e);
            assert_eq!(db.code().code(), "08006");
            assert!(
                db.message().contains("does not support TLS"),
                "{}",
                db.message()
            );
        }
        other => panic!("require connected in plaintext: {:?}", other.map(drop)),
    }
}

/// Tenants never see each other's rows, and named prepared statements work, with TLS on
/// both sides (clients on TLS, a verify-full backend that only accepts TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collisions_and_prepared_statements_over_tls_on_both_sides() {
    let certs = Certs::new();
    let Some(server) = tls_pg(&certs) else {
        return;
    };
    let text = ProxyOptions::default()
        .proxy_line(&certs.proxy_lines("require"))
        .toml(server.host(), server.port())
        .replace(
            "pool_size = 2\n",
            &format!(
                "pool_size = 2\n{}",
                backend_lines("verify-full", Some(&certs.ca()))
            ),
        );
    let proxy = TestProxy::start_text(text);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let tenant = format!("t{}", i % 4 + 1);
        let conn = format!(
            "{} sslmode=require host=localhost",
            proxy.connect_str("app", Naming::Options, &tenant)
        );
        let client = connect_tls(&certs, &conn).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let stmt = client
                .prepare("SELECT tenant, n FROM whoami WHERE n > $1")
                .await
                .unwrap();
            for round in 0..50 {
                let rows = client.query(&stmt, &[&0i32]).await.unwrap();
                let got: String = rows[0].get(0);
                assert_eq!(got, tenant, "round {round}: another tenant's rows");
                let simple = simple_value(&client, "SELECT tenant FROM whoami")
                    .await
                    .unwrap();
                assert_eq!(simple.as_deref(), Some(tenant.as_str()));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 800 transactions on 2 server connections: idle TLS connections are reused (the idle
    // probe does not take TLS traffic for a closed connection).
    let sessions = server
        .psql("SELECT sessions FROM pg_stat_database WHERE datname = 'app'")
        .unwrap();
    let sessions: u32 = sessions.trim().parse().unwrap();
    assert!(sessions <= 4, "{sessions} server sessions for a pool of 2");
    assert!(proxy.incidents().is_empty(), "{:?}", proxy.incidents());
}

/// PostgreSQL 17+'s direct TLS from a real libpq: psycopg's bundled libpq (18 here; the
/// machine's psql 18 is built without SSL) with `sslnegotiation=direct`, the host name
/// verified, and channel binding required, lands in its tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_direct_tls_with_verify_full_and_channel_binding() {
    let certs = Certs::new();
    let proxy = proxy_with_tls(&certs, "require", "");
    let ca = certs.ca().display().to_string();
    let conn = libpq(
        &proxy,
        "localhost",
        "t2",
        &format!(
            "sslmode=verify-full sslrootcert={ca} sslnegotiation=direct channel_binding=require"
        ),
    );
    let script = "import sys, psycopg\n\
        assert psycopg.pq.version() >= 170000, psycopg.pq.version()\n\
        with psycopg.connect(sys.argv[1]) as c:\n\
        \x20   print(c.execute('select tenant from whoami').fetchone()[0])\n\
        \x20   print(c.pgconn.ssl_in_use)\n";
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &conn])
        .output()
        .await
        .expect("run python3");
    assert!(
        out.status.success(),
        "psycopg (scripts/test installs it; PYTHONPATH=/opt/pgtenant/pyclients): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["t2", "True"],
        "{stdout}"
    );
}
