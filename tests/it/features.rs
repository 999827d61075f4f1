//! Config keys end to end, each against a real PostgreSQL: client auth `md5` and stored
//! passwords (`SCRAM-SHA-256$...` verifiers, `md5...` hashes), md5 and cleartext *server*
//! logins, `min_pool_size`, a tenant's `max_server_connections`, several backends,
//! `default_tenant`, `user_separator`, `password_env`, `workers`, `metrics_listen`, and
//! SIGTERM draining within `shutdown_timeout` (the real binary).

use std::time::Duration;

use crate::reliability::{activity, own_login, OWN_LOGIN_PASSWORD};
use crate::support::binary::{free_port, Binary};
use crate::support::clients::superuser;
use crate::support::ops::{http, num, ops_toml, row_where, rows, OpsProxy};
use crate::support::wire::{startup_packet, Wire};
use crate::support::{
    assert_db_error, connect, connect_watched, eventually, own_pg, own_pg_with_auth, pg, tenant_of,
    value, Naming, ProxyOptions, TestProxy, PROXY_PASSWORD,
};

/// The first authentication request the proxy sends `user` (5 = md5, 10 = SASL).
async fn auth_request(proxy: &TestProxy, user: &str) -> i32 {
    let mut wire = Wire::connect(proxy.addr()).await;
    wire.send(&startup_packet(&[
        ("user", user),
        ("database", "app"),
        ("options", "-c tenant=t1"),
    ]))
    .await;
    let first = wire.read().await.expect("an authentication request");
    assert_eq!(first.tag, b'R', "{:?}", first.message());
    first.int()
}

#[tokio::test]
async fn md5_client_auth_takes_a_plain_password_and_a_stored_md5_hash() {
    let hash = postgres_protocol::password::md5(b"hash_pw", "hashed");
    assert!(hash.starts_with("md5"), "{hash}");
    let proxy = TestProxy::start_with(ProxyOptions::default().auth("md5").extra(&format!(
        "[users.hashed]\npassword = \"{hash}\"\ntenants = [\"t2\"]\n"
    )));
    assert_eq!(
        auth_request(&proxy, "app").await,
        5,
        "AuthenticationMD5Password"
    );
    let plain = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    assert_eq!(tenant_of(&plain).await.as_deref(), Some("t1"));
    let hashed =
        connect(&proxy.connect_str_with_password("hashed", "hash_pw", Naming::Options, "t2"))
            .await
            .unwrap_or_else(|e| panic!("md5 login with a stored md5 hash: {e}"));
    assert_eq!(tenant_of(&hashed).await.as_deref(), Some("t2"));
    for (user, password) in [("app", "wrong"), ("hashed", "secret"), ("nobody", "secret")] {
        let err = connect(&proxy.connect_str_with_password(user, password, Naming::Options, "t1"))
            .await
            .expect_err("a wrong password");
        assert_eq!(err.code(), Some("28P01"), "{user}: {err}");
    }
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_stored_scram_verifier_logs_in_with_scram() {
    let verifier = postgres_protocol::password::scram_sha_256(b"verified_pw");
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    let hash = postgres_protocol::password::md5(b"hash_pw", "hashed");
    let proxy = TestProxy::start_with(ProxyOptions::default().extra(&format!(
        "[users.verified]\npassword = \"{verifier}\"\ntenants = [\"t3\"]\n\
         [users.hashed]\npassword = \"{hash}\"\ntenants = [\"t3\"]\n"
    )));
    assert_eq!(
        auth_request(&proxy, "verified").await,
        10,
        "AuthenticationSASL"
    );
    let client =
        connect(&proxy.connect_str_with_password("verified", "verified_pw", Naming::Options, "t3"))
            .await
            .unwrap_or_else(|e| panic!("SCRAM login against a stored verifier: {e}"));
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t3"));
    let err = connect(&proxy.connect_str_with_password("verified", "wrong", Naming::Options, "t3"))
        .await
        .expect_err("a wrong password");
    assert_eq!(err.code(), Some("28P01"), "{err}");
    // As in PostgreSQL: an md5 hash cannot answer a SCRAM exchange, even with the right
    // password.
    let err = connect(&proxy.connect_str_with_password("hashed", "hash_pw", Naming::Options, "t3"))
        .await
        .expect_err("an md5 hash under scram-sha-256");
    assert_eq!(err.code(), Some("28P01"), "{err}");
    proxy.stop().await.unwrap();
}

/// The proxy logs in to a server whose pg_hba.conf asks `app` for `method`; the server's
/// log shows that method was used.
async fn server_login_with(method: &str, password_encryption: &str) {
    let server = own_pg_with_auth(
        &format!("host all app 127.0.0.1/32 {method}"),
        password_encryption,
    );
    let proxy = TestProxy::start_on(ProxyOptions::default(), server.host(), server.port());
    let client = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t1"));
    let wanted = format!("identity=\"app\" method={method} ");
    eventually(
        Duration::from_secs(5),
        "the server logs the login's method",
        || async { server.log().contains(&wanted) },
    )
    .await;
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn md5_server_login() {
    server_login_with("md5", "md5").await;
}

#[tokio::test]
async fn cleartext_server_login() {
    server_login_with("password", "scram-sha-256").await;
}

#[tokio::test]
async fn min_pool_size_opens_server_connections_without_a_client() {
    own_login("warm_login");
    let options = ProxyOptions::default().extra(&format!(
        "[backends.warm]\nhost = \"{}\"\nport = {}\ndatabase = \"app\"\nuser = \"warm_login\"\n\
         password = \"{OWN_LOGIN_PASSWORD}\"\npool_size = 3\nmin_pool_size = 2\n\
         [tenants.warm]\nbackend = \"warm\"\nsearch_path = [\"warm_login\"]\n",
        pg().host(),
        pg().port()
    ));
    let proxy = OpsProxy::start(options);
    let su = superuser().await;
    eventually(
        Duration::from_secs(10),
        "two idle server connections of warm_login, no client",
        || async { activity(&su, "warm_login").await.len() == 2 },
    )
    .await;
    let admin = proxy.admin().await;
    let servers = rows(&admin, "SHOW SERVERS").await;
    let warm: Vec<_> = servers
        .iter()
        .filter(|s| s.get("user") == Some("warm_login"))
        .collect();
    assert_eq!(warm.len(), 2, "SHOW SERVERS lists them");
    assert!(warm.iter().all(|s| s.get("state") == Some("idle")));
    // A client uses one of them: still two in all, none opened for it.
    let client = proxy.connect("app", Naming::Options, "warm").await.unwrap();
    assert_eq!(tenant_of(&client).await.as_deref(), Some("warm_login"));
    assert_eq!(activity(&su, "warm_login").await.len(), 2);
}

#[tokio::test]
async fn max_server_connections_caps_one_tenant_inside_a_shared_pool() {
    let proxy = OpsProxy::start(ProxyOptions::default().pool_size(4).extra(
        "[tenants.capped]\nbackend = \"main\"\nsearch_path = [\"t1\", \"public\"]\n\
             max_server_connections = 1\n",
    ));
    let admin = proxy.admin().await;
    let first = proxy
        .connect("app", Naming::Options, "capped")
        .await
        .unwrap();
    let second = proxy
        .connect("app", Naming::Options, "capped")
        .await
        .unwrap();
    first
        .simple_query("BEGIN; SELECT * FROM whoami")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let who = tenant_of(&second).await;
        (second, who)
    });
    eventually(
        Duration::from_secs(5),
        "the capped tenant's second client waits",
        || async {
            let pools = rows(&admin, "SHOW POOLS").await;
            num(row_where(&pools, "tenant", "capped"), "waiting") == 1
        },
    )
    .await;
    let pools = rows(&admin, "SHOW POOLS").await;
    let capped = row_where(&pools, "tenant", "capped");
    assert_eq!(num(capped, "in_use"), 1);
    assert!(
        num(capped, "open") < 4,
        "the endpoint had room: only the tenant's cap holds the client back"
    );
    // Other tenants of the same pool are not held back.
    let other = proxy.connect("app", Naming::Options, "t2").await.unwrap();
    assert_eq!(tenant_of(&other).await.as_deref(), Some("t2"));
    assert!(
        !waiting.is_finished(),
        "still capped while the first holds its connection"
    );
    first.simple_query("COMMIT").await.unwrap();
    let (_second, who) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the second client runs once the first released")
        .unwrap();
    assert_eq!(who.as_deref(), Some("t1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_on_another_backend_reads_the_other_server() {
    let other = own_pg();
    let options = ProxyOptions::default().pool_size(1).extra(&format!(
        "[backends.other]\nhost = \"{}\"\nport = {}\ndatabase = \"app\"\nuser = \"app\"\n\
         password = \"app_pw\"\npool_size = 1\n\
         [tenants.far]\nbackend = \"other\"\nsearch_path = [\"t3\", \"public\"]\n",
        other.host(),
        other.port()
    ));
    let proxy = TestProxy::start_with(options);
    let probe = "SELECT tenant || '@' || current_setting('port') FROM whoami";
    let expect = |tenant: &str, port: u16| format!("{tenant}@{port}");
    // Interleaved on pools of one: every read on its own tenant's server.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (tenant, want) = if i % 2 == 0 {
            ("far", expect("t3", other.port()))
        } else {
            ("t3", expect("t3", pg().port()))
        };
        let conn = proxy.connect_str("app", Naming::Options, tenant);
        tasks.push(tokio::spawn(async move {
            let client = connect(&conn).await.unwrap();
            let mut wrong = Vec::new();
            for _ in 0..50 {
                let got = value(&client, probe).await;
                if got.as_deref() != Some(want.as_str()) {
                    wrong.push(format!("{tenant} read {got:?}, wanted {want}"));
                }
            }
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for task in tasks {
        wrong.extend(task.await.unwrap());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn default_tenant_serves_clients_that_name_none() {
    let proxy =
        TestProxy::start_with(ProxyOptions::default().proxy_line("default_tenant = \"t2\""));
    let client = connect(&proxy.conn_params("app", PROXY_PASSWORD, "app", None))
        .await
        .unwrap();
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t2"));
    // Naming one still wins.
    let named = proxy.connect("app", Naming::Options, "t3").await.unwrap();
    assert_eq!(tenant_of(&named).await.as_deref(), Some("t3"));
    // The default does not lift the user's own limits.
    let err = connect(&proxy.conn_params("limited", PROXY_PASSWORD, "app", None))
        .await
        .expect_err("limited may not use t2");
    assert_eq!(err.code(), Some("28000"), "{err}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn user_separator_splits_at_its_first_occurrence() {
    let proxy = TestProxy::start_with(
        ProxyOptions::default()
            .proxy_line("user_separator = \"+\"")
            .extra("[tenants.\"t4+x\"]\nbackend = \"main\"\nsearch_path = [\"t1\"]\n"),
    );
    let split = connect(&proxy.conn_params("app+t4", PROXY_PASSWORD, "app", None))
        .await
        .unwrap();
    assert_eq!(tenant_of(&split).await.as_deref(), Some("t4"));
    // Split at the first separator: tenant "t4+x" (reads schema t1).
    let rest = connect(&proxy.conn_params("app+t4+x", PROXY_PASSWORD, "app", None))
        .await
        .unwrap();
    assert_eq!(tenant_of(&rest).await.as_deref(), Some("t1"));
    // "." no longer separates: `app.t4` is a user that does not exist.
    let err = connect(&proxy.conn_params("app.t4", PROXY_PASSWORD, "app", None))
        .await
        .expect_err("app.t4 is not a user");
    assert_eq!(err.code(), Some("28P01"), "{err}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn password_env_supplies_server_passwords() {
    std::env::set_var("PGTENANT_IT_APP_PW", "app_pw");
    std::env::set_var("PGTENANT_IT_T7_PW", "t7_pw");
    let text = ProxyOptions::default().toml(pg().host(), pg().port());
    let backend = "user = \"app\"\npassword = \"app_pw\"\n";
    let tenant = "user = \"tenant_t7\"\npassword = \"t7_pw\"\n";
    assert!(text.contains(backend) && text.contains(tenant), "{text}");
    let with_env = text
        .replace(
            backend,
            "user = \"app\"\npassword_env = \"PGTENANT_IT_APP_PW\"\n",
        )
        .replace(
            tenant,
            "user = \"tenant_t7\"\npassword_env = \"PGTENANT_IT_T7_PW\"\n",
        );
    let proxy = TestProxy::start_text(with_env.clone());
    let t1 = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    assert_eq!(tenant_of(&t1).await.as_deref(), Some("t1"));
    let t7 = proxy.connect("app", Naming::Options, "t7").await.unwrap();
    assert_eq!(
        value(&t7, "SELECT tenant || '/' || current_user FROM whoami")
            .await
            .as_deref(),
        Some("t7/tenant_t7")
    );
    proxy.stop().await.unwrap();
    // A variable that is not set: the config does not load, naming the key and variable.
    let unset = with_env.replace("PGTENANT_IT_T7_PW", "PGTENANT_IT_UNSET_PW");
    let err = pgtenant::config::Config::from_toml_str(&unset, "test.toml")
        .expect_err("an unset password_env");
    let text = err.to_string();
    assert!(
        text.contains("password_env") && text.contains("PGTENANT_IT_UNSET_PW"),
        "{text}"
    );
}

/// Threads of process `pid` named as tokio names its runtime's workers (`tokio-rt-worker`,
/// or `tokio-runtime-worker` cut to 15 bytes by older tokio versions).
fn runtime_workers(pid: libc::pid_t) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| matches!(comm.trim(), "tokio-rt-worker" | "tokio-runtime-w"))
        .count()
}

#[tokio::test]
async fn workers_sets_the_runtime_threads_of_the_binary() {
    for (workers, threads) in [(3, 3), (1, 0)] {
        let text = ops_toml(&ProxyOptions::default().proxy_line(&format!("workers = {workers}")));
        let mut binary = Binary::start(&text).await;
        // Before any client (a client's work could start blocking-pool threads, which carry
        // the same name): the runtime's own workers. One worker is a current-thread runtime.
        assert_eq!(
            runtime_workers(binary.pid()),
            threads,
            "workers = {workers}"
        );
        let client = connect(&binary.conn_str("t2")).await.unwrap();
        assert_eq!(tenant_of(&client).await.as_deref(), Some("t2"));
        binary.signal(libc::SIGTERM);
        assert!(binary.wait(Duration::from_secs(10)).await.success());
        binary.check_log();
    }
}

#[tokio::test]
async fn metrics_listen_serves_metrics_from_the_config() {
    let port = free_port();
    let proxy = TestProxy::start_with(
        ProxyOptions::default().proxy_line(&format!("metrics_listen = \"127.0.0.1:{port}\"")),
    );
    let client = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t1"));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) = http(addr, "GET /metrics HTTP/1.1").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        body.contains("pgtenant_clients{tenant=\"t1\"} 1\n"),
        "{body}"
    );
    proxy.stop().await.unwrap();
}

/// SIGTERM: no new clients; a linked transaction runs to its COMMIT (within
/// `shutdown_timeout`); then its client is told 57P01 and the binary exits by itself,
/// well before the 30 s limit.
#[tokio::test]
async fn sigterm_lets_a_linked_transaction_finish() {
    let text = ops_toml(&ProxyOptions::default().timeout("shutdown_timeout", "30s"));
    let mut binary = Binary::start(&text).await;
    let idle = connect_watched(&binary.conn_str("t2")).await.unwrap();
    assert_eq!(tenant_of(&idle).await.as_deref(), Some("t2"));
    let busy = connect_watched(&binary.conn_str("t1")).await.unwrap();
    busy.simple_query("BEGIN; UPDATE whoami SET n = n")
        .await
        .unwrap();
    binary.signal(libc::SIGTERM);
    eventually(
        Duration::from_secs(10),
        "the listener is closed",
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", binary.port))
                .await
                .is_err()
        },
    )
    .await;
    // The idle client is told at once.
    let e = idle.simple_query("SELECT 1").await.expect_err("shut down");
    assert_db_error(
        &idle.closing_error(&e).await,
        "57P01",
        "terminating connection due to administrator command",
    );
    // The linked transaction carries on and commits.
    assert_eq!(tenant_of(&busy).await.as_deref(), Some("t1"));
    busy.simple_query("COMMIT").await.unwrap();
    let e = busy
        .simple_query("SELECT 1")
        .await
        .expect_err("closed after its transaction");
    assert_db_error(
        &busy.closing_error(&e).await,
        "57P01",
        "terminating connection due to administrator command",
    );
    let status = binary.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    assert!(
        !binary.log().contains("shutdown_timeout reached"),
        "{}",
        binary.log()
    );
    binary.check_log();
}

/// SIGTERM with a transaction that does not end: the binary closes it at
/// `shutdown_timeout` and exits; the server rolls it back (its backend is gone).
#[tokio::test]
async fn sigterm_closes_a_transaction_still_open_at_shutdown_timeout() {
    let tenant = own_login("drain_login");
    let text = ops_toml(
        &ProxyOptions::default()
            .timeout("shutdown_timeout", "1s")
            .extra(&tenant),
    );
    let mut binary = Binary::start(&text).await;
    let busy = connect(&binary.conn_str("drain_login")).await.unwrap();
    busy.simple_query("BEGIN; UPDATE whoami SET n = n + 1")
        .await
        .unwrap();
    let su = superuser().await;
    assert_eq!(activity(&su, "drain_login").await.len(), 1);
    binary.signal(libc::SIGTERM);
    let status = binary.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    assert!(
        binary.log().contains("shutdown_timeout reached"),
        "{}",
        binary.log()
    );
    binary.check_log();
    eventually(
        Duration::from_secs(10),
        "the transaction's server backend is gone",
        || async { activity(&su, "drain_login").await.is_empty() },
    )
    .await;
    let n = value(&su, "SELECT n FROM drain_login.whoami").await;
    assert_eq!(n.as_deref(), Some("0"), "the update was rolled back");
}
