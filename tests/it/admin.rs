//! The admin console through real clients (tokio-postgres `simple_query`, psql): every SHOW
//! answers rows with the right counts while clients are active; PAUSE holds one tenant
//! while others run; RESUME releases it; KILL disconnects; errors keep the console usable.

use std::time::{Duration, Instant};

use crate::support::clients::{connect_with_notices, psql_cmd, run_psql};
use crate::support::ops::{eventually, num, row_where, rows, OpsProxy, ADMIN_USER};
use crate::support::{
    assert_db_error, connect, connect_watched, simple_value, Naming, ProxyOptions, PROXY_PASSWORD,
};

/// Tenants in the standard test config.
const TENANTS: usize = 11;

#[tokio::test]
async fn show_commands_report_active_clients() {
    let proxy = OpsProxy::start(ProxyOptions::default().pool_size(4));
    let busy = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    let _idle_t1 = proxy.connect("app", Naming::User, "t1").await.unwrap();
    let idle_t2 = proxy.connect("app", Naming::Database, "t2").await.unwrap();
    // An open transaction keeps t1's server connection linked.
    busy.simple_query("BEGIN; SELECT * FROM whoami")
        .await
        .unwrap();
    // Then t2 leaves an idle connection holding its state.
    simple_value(&idle_t2, "select 1").await.unwrap();
    let admin = proxy.admin().await;

    let tenants = rows(&admin, "SHOW TENANTS").await;
    assert_eq!(tenants.len(), TENANTS);
    let t1 = row_where(&tenants, "tenant", "t1");
    assert_eq!(num(t1, "clients"), 2);
    assert_eq!(num(t1, "server_in_use"), 1);
    assert_eq!(t1.get("search_path"), Some("t1,public"));
    assert_eq!(t1.get("backend"), Some("main"));
    assert_eq!(t1.get("paused"), Some("f"));
    let t2 = row_where(&tenants, "tenant", "t2");
    assert_eq!(num(t2, "clients"), 1);
    assert_eq!(num(t2, "server_in_use"), 0);
    assert_eq!(
        num(t2, "server_idle"),
        1,
        "t2's connection is idle with t2's state"
    );
    assert_eq!(num(row_where(&tenants, "tenant", "t3"), "clients"), 0);

    let pools = rows(&admin, "SHOW POOLS").await;
    assert_eq!(pools.len(), TENANTS, "a row per (endpoint, tenant)");
    let p1 = row_where(&pools, "tenant", "t1");
    assert_eq!(num(p1, "in_use"), 1);
    assert_eq!(num(p1, "pool_size"), 4);
    assert_eq!(p1.get("database"), Some("app"));
    assert_eq!(
        row_where(&pools, "tenant", "t5").get("database"),
        Some("app_t5")
    );

    let clients = rows(&admin, "SHOW CLIENTS").await;
    assert_eq!(clients.len(), 3, "console sessions are not listed");
    let states: Vec<_> = clients
        .iter()
        .filter(|c| c.get("tenant") == Some("t1"))
        .map(|c| c.get("state").unwrap().to_string())
        .collect();
    assert!(states.contains(&"active".to_string()), "{states:?}");
    assert!(states.contains(&"idle".to_string()), "{states:?}");
    let active = clients
        .iter()
        .find(|c| c.get("state") == Some("active"))
        .unwrap();
    let pid = num(active, "server_pid");
    assert_eq!(active.get("addr"), Some("127.0.0.1"));

    let servers = rows(&admin, "SHOW SERVERS").await;
    let linked = row_where(&servers, "state", "active");
    assert_eq!(linked.get("tenant"), Some("t1"));
    assert_eq!(
        num(linked, "pid"),
        pid,
        "the same server as SHOW CLIENTS says"
    );
    assert!(servers
        .iter()
        .any(|s| s.get("state") == Some("idle") && s.get("tenant") == Some("t2")));
}

#[tokio::test]
async fn show_stats_config_and_version() {
    let proxy = OpsProxy::start(ProxyOptions::default().pool_size(4));
    let busy = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    let idle_t1 = proxy.connect("app", Naming::User, "t1").await.unwrap();
    busy.simple_query("BEGIN; SELECT * FROM whoami")
        .await
        .unwrap();
    busy.simple_query("COMMIT").await.unwrap();
    simple_value(&idle_t1, "select 1").await.unwrap();
    let admin = proxy.admin().await;
    let stats = rows(&admin, "SHOW STATS").await;
    assert_eq!(stats.len(), TENANTS);
    let s1 = row_where(&stats, "tenant", "t1");
    // BEGIN;SELECT (one Query), COMMIT, select 1: three queries, two transactions.
    assert_eq!(num(s1, "queries"), 3);
    assert_eq!(num(s1, "transactions"), 2);
    assert_eq!(num(s1, "checkouts"), 2);
    assert!(num(s1, "bytes_received") > 0 && num(s1, "bytes_sent") > 0);
    assert!(num(s1, "sets_injected") >= 1);
    assert_eq!(num(row_where(&stats, "tenant", "t3"), "transactions"), 0);

    let config = rows(&admin, "SHOW CONFIG").await;
    assert_eq!(
        row_where(&config, "key", "pool_mode").get("value"),
        Some("transaction")
    );
    assert_eq!(
        row_where(&config, "key", "query_wait_timeout").get("value"),
        Some("10s")
    );
    assert_eq!(
        row_where(&config, "key", "tenants").get("value"),
        Some("11")
    );
    assert_eq!(
        row_where(&config, "key", "generation").get("value"),
        Some("1")
    );
    assert!(!config
        .iter()
        .any(|r| r.get("value").unwrap_or("").contains("secret")));

    let version = simple_value(&admin, "show version").await.unwrap().unwrap();
    assert!(version.starts_with("pgtenant "), "{version}");
    assert!(rows(&admin, "SHOW HELP").await.len() > 5);
}

#[tokio::test]
async fn errors_leave_the_console_usable() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let admin = proxy.admin().await;
    for (sql, code) in [
        ("SELECT 1", "42601"),
        ("SHOW USERS", "42601"),
        ("PAUSE a b", "42601"),
        ("PAUSE nope", "3D000"),
        ("KILL nope", "3D000"),
    ] {
        let e = admin.simple_query(sql).await.expect_err(sql);
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
        assert_eq!(db.severity(), "ERROR");
    }
    // The extended protocol is refused, then the simple one still works.
    let e = admin
        .query("SHOW TENANTS", &[])
        .await
        .expect_err("extended protocol");
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    // Several commands in one query; an empty query.
    let messages = admin
        .simple_query("SHOW VERSION; SHOW VERSION;")
        .await
        .unwrap();
    assert_eq!(
        messages
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count(),
        2
    );
    admin.simple_query("").await.unwrap();
    assert_eq!(rows(&admin, "SHOW TENANTS").await.len(), TENANTS);
}

#[tokio::test]
async fn only_admin_users_get_the_console() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let err = connect(&proxy.conn_params("app", PROXY_PASSWORD, "pgtenant", None))
        .await
        .expect_err("app is not in admin_users");
    assert_eq!(err.code(), Some("42501"), "{err}");
    let err = connect(&proxy.conn_params(ADMIN_USER, "wrong", "pgtenant", None))
        .await
        .expect_err("wrong password");
    assert_eq!(err.code(), Some("28P01"), "{err}");
    // The admin user names no tenant, so it cannot use a tenant database.
    let err = connect(&proxy.conn_params(ADMIN_USER, PROXY_PASSWORD, "t1", None))
        .await
        .expect_err("admin has no tenants");
    assert_eq!(err.code(), Some("28000"), "{err}");
}

#[tokio::test]
async fn psql_prints_console_tables() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let _client = proxy.connect("app", Naming::Options, "t3").await.unwrap();
    let url = format!(
        "postgres://{ADMIN_USER}:{PROXY_PASSWORD}@127.0.0.1:{}/pgtenant",
        proxy.port()
    );
    let mut cmd = psql_cmd(&url);
    cmd.args(["-c", "SHOW TENANTS", "-c", "PAUSE t3", "-c", "SHOW TENANTS"]);
    let output = run_psql(cmd).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql failed: {stderr}\n{stdout}");
    assert!(
        stdout.contains(" tenant | backend | database |"),
        "{stdout}"
    );
    assert!(stdout.contains("(11 rows)"), "{stdout}");
    assert!(stdout.contains("PAUSE"), "{stdout}");
    let t3_lines: Vec<_> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("t3 "))
        .collect();
    assert_eq!(t3_lines.len(), 2, "{stdout}");
    assert!(t3_lines[0].trim_end().ends_with("| f"), "{}", t3_lines[0]);
    assert!(t3_lines[1].trim_end().ends_with("| t"), "{}", t3_lines[1]);
}

#[tokio::test]
async fn pause_holds_one_tenant_and_resume_releases_it() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let t1 = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    let t2 = proxy.connect("app", Naming::Options, "t2").await.unwrap();
    let admin = proxy.admin().await;
    admin.simple_query("PAUSE \"t1\"").await.unwrap();

    let held = tokio::spawn(async move {
        let who = simple_value(&t1, "select tenant from whoami").await;
        (t1, who)
    });
    eventually(
        Duration::from_secs(5),
        "t1's query waits at the pause",
        || async {
            let tenants = rows(&admin, "SHOW TENANTS").await;
            num(row_where(&tenants, "tenant", "t1"), "waiting") == 1
        },
    )
    .await;
    let tenants = rows(&admin, "SHOW TENANTS").await;
    assert_eq!(row_where(&tenants, "tenant", "t1").get("paused"), Some("t"));
    let clients = rows(&admin, "SHOW CLIENTS").await;
    assert_eq!(
        row_where(&clients, "tenant", "t1").get("state"),
        Some("paused")
    );
    // Another tenant runs meanwhile.
    for _ in 0..3 {
        let who = simple_value(&t2, "select tenant from whoami")
            .await
            .unwrap();
        assert_eq!(who.as_deref(), Some("t2"));
    }
    // A fixed sleep on purpose: the paused query must not run meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "a paused tenant's query must wait");

    admin.simple_query("RESUME t1").await.unwrap();
    let (t1, who) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("RESUME releases the query")
        .unwrap();
    assert_eq!(who.unwrap().as_deref(), Some("t1"));
    assert_eq!(
        simple_value(&t1, "select 1").await.unwrap().as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn pause_lets_linked_transactions_finish() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let t1 = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    t1.simple_query("BEGIN; UPDATE whoami SET n = n")
        .await
        .unwrap();
    let admin = proxy.admin().await;
    let pause = tokio::spawn(async move {
        let r = admin.simple_query("PAUSE").await.map(|_| ());
        (admin, r)
    });
    // A fixed sleep on purpose: PAUSE must not return meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pause.is_finished(), "PAUSE waits for the open transaction");
    // The linked transaction carries on and ends.
    assert_eq!(
        simple_value(&t1, "select tenant from whoami")
            .await
            .unwrap()
            .as_deref(),
        Some("t1")
    );
    t1.simple_query("COMMIT").await.unwrap();
    let (admin, r) = tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("PAUSE returns once the transaction ended")
        .unwrap();
    r.unwrap();
    let tenants = rows(&admin, "SHOW TENANTS").await;
    assert_eq!(tenants.len(), TENANTS);
    assert!(
        tenants.iter().all(|t| t.get("paused") == Some("t")),
        "bare PAUSE pauses all"
    );
    admin.simple_query("RESUME").await.unwrap();
    let tenants = rows(&admin, "SHOW TENANTS").await;
    assert_eq!(tenants.len(), TENANTS);
    assert!(tenants.iter().all(|t| t.get("paused") == Some("f")));
    simple_value(&t1, "select 1").await.unwrap();
}

/// PAUSE waits at most `shutdown_timeout` for linked transactions; one still running then
/// gets a WARNING, and the tenant stays paused while the transaction carries on.
#[tokio::test]
async fn pause_warns_when_a_transaction_outlasts_shutdown_timeout() {
    let proxy = OpsProxy::start(ProxyOptions::default().timeout("shutdown_timeout", "500ms"));
    let t1 = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    t1.simple_query("BEGIN; UPDATE whoami SET n = n")
        .await
        .unwrap();
    let console = proxy.conn_params(ADMIN_USER, PROXY_PASSWORD, "pgtenant", None);
    let (admin, mut notices) = connect_with_notices(&console).await.unwrap();
    let started = Instant::now();
    admin.simple_query("PAUSE t1").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "PAUSE returned before shutdown_timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        notices.try_recv().ok().as_deref(),
        Some("WARNING 00000: tenant \"t1\" paused, but 1 transaction(s) are still running")
    );
    assert!(notices.try_recv().is_err(), "one notice");
    let tenants = rows(&admin, "SHOW TENANTS").await;
    assert_eq!(row_where(&tenants, "tenant", "t1").get("paused"), Some("t"));
    // The transaction carries on to its end.
    assert_eq!(
        simple_value(&t1, "select tenant from whoami")
            .await
            .unwrap()
            .as_deref(),
        Some("t1")
    );
    t1.simple_query("COMMIT").await.unwrap();
    admin.simple_query("RESUME t1").await.unwrap();
    simple_value(&t1, "select 1").await.unwrap();
}

#[tokio::test]
async fn kill_disconnects_one_tenants_clients() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let a = connect_watched(&proxy.connect_str("app", Naming::Options, "t1"))
        .await
        .unwrap();
    let b = connect_watched(&proxy.connect_str("app", Naming::User, "t1"))
        .await
        .unwrap();
    b.simple_query("BEGIN").await.unwrap();
    let b_backend = simple_value(&b, "SELECT pg_backend_pid()")
        .await
        .unwrap()
        .unwrap();
    let other = proxy.connect("app", Naming::Options, "t2").await.unwrap();
    let admin = proxy.admin().await;
    admin.simple_query("KILL t1").await.unwrap();
    // Idle: told, as PostgreSQL tells a terminated backend's client.
    let e = a.simple_query("select 1").await.expect_err("killed");
    assert_db_error(
        &a.closing_error(&e).await,
        "57P01",
        "terminating connection due to administrator command",
    );
    // Linked, idle in its transaction: told the same.
    let e = b.simple_query("select 1").await.expect_err("killed");
    assert_db_error(
        &b.closing_error(&e).await,
        "57P01",
        "terminating connection due to administrator command",
    );
    // Its transaction did not survive: the server connection that held it is closed.
    let su = crate::support::clients::superuser().await;
    eventually(Duration::from_secs(5), "b's server backend is gone", || {
        let su = &su;
        let pid = b_backend.clone();
        async move {
            let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
            simple_value(su, &sql).await.unwrap().as_deref() == Some("0")
        }
    })
    .await;
    eventually(Duration::from_secs(5), "t1's clients are gone", || async {
        rows(&admin, "SHOW CLIENTS")
            .await
            .iter()
            .all(|c| c.get("tenant") != Some("t1"))
    })
    .await;
    assert_eq!(
        simple_value(&other, "select tenant from whoami")
            .await
            .unwrap()
            .as_deref(),
        Some("t2")
    );
    // New clients of the tenant may connect again, and no transaction survived.
    let again = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    assert_eq!(
        simple_value(&again, "select tenant from whoami")
            .await
            .unwrap()
            .as_deref(),
        Some("t1")
    );
    let tenants = rows(&admin, "SHOW TENANTS").await;
    assert_eq!(num(row_where(&tenants, "tenant", "t1"), "server_in_use"), 0);
}

/// KILL of a client whose query is running: the proxy may be in the middle of relaying a
/// reply, so the link is cut with nothing more sent (docs/OPERATIONS.md), and the server
/// connection, query and transaction with it.
#[tokio::test]
async fn kill_cuts_a_running_query_without_a_message() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let busy = connect_watched(&proxy.connect_str("app", Naming::Options, "t1"))
        .await
        .unwrap();
    busy.simple_query("BEGIN").await.unwrap();
    let backend = simple_value(&busy, "SELECT pg_backend_pid()")
        .await
        .unwrap()
        .unwrap();
    let admin = proxy.admin().await;
    let running = tokio::spawn(async move {
        let r = busy.simple_query("SELECT pg_sleep(60)").await.map(drop);
        (busy, r)
    });
    let su = crate::support::clients::superuser().await;
    let sql = format!("SELECT wait_event FROM pg_stat_activity WHERE pid = {backend}");
    eventually(Duration::from_secs(5), "the query is running", || async {
        simple_value(&su, &sql).await.unwrap().as_deref() == Some("PgSleep")
    })
    .await;
    admin.simple_query("KILL t1").await.unwrap();
    let (busy, r) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the running query ends at the KILL")
        .unwrap();
    busy.closed_without_error(&r.expect_err("killed")).await;
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {backend}");
    eventually(
        Duration::from_secs(5),
        "its server backend is gone",
        || async { simple_value(&su, &sql).await.unwrap().as_deref() == Some("0") },
    )
    .await;
}
