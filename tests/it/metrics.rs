//! `/metrics`: scraped over HTTP during and after a run, per-tenant series whose values
//! agree with `SHOW STATS`; the switch that turns tenant labels off; HTTP edge cases.

use std::time::Duration;

use crate::support::ops::{eventually, num, row_where, rows, sample, OpsProxy};
use crate::support::wire::{packet, params, Wire};
use crate::support::{
    connect, connect_watched, simple_value, Naming, ProxyOptions, PROXY_PASSWORD,
};

/// A client and its prepared statement, kept alive until the numbers are read (dropping
/// a statement sends a Close + Sync: one more transaction).
type Traffic = (tokio_postgres::Client, tokio_postgres::Statement);

/// Prepares one statement (one Sync: a transaction), then runs `n` rounds for `tenant`:
/// every third an explicit transaction of three simple queries (one transaction), the
/// others an execute of the statement (one transaction, one query).
async fn traffic(proxy: &OpsProxy, tenant: &str, n: usize) -> Traffic {
    let client = proxy.connect("app", Naming::Options, tenant).await.unwrap();
    let stmt = client
        .prepare("select n from whoami where n > $1")
        .await
        .unwrap();
    for i in 0..n {
        if i % 3 == 0 {
            client.simple_query("BEGIN").await.unwrap();
            simple_value(&client, "select tenant from whoami")
                .await
                .unwrap();
            client.simple_query("COMMIT").await.unwrap();
        } else {
            client.query(&stmt, &[&0i32]).await.unwrap();
        }
    }
    (client, stmt)
}

#[tokio::test]
async fn metrics_agree_with_show_stats() {
    let proxy = OpsProxy::start(ProxyOptions::default().pool_size(3));
    // Scraped while tenants are busy: per-tenant series are there.
    let (_t1, _t2, during) = tokio::join!(
        traffic(&proxy, "t1", 30),
        traffic(&proxy, "t2", 12),
        async {
            eventually(
                Duration::from_secs(10),
                "t1's client is connected",
                || async {
                    sample(&proxy.scrape().await, "pgtenant_clients{tenant=\"t1\"}") == Some(1.0)
                },
            )
            .await;
            proxy.scrape().await
        }
    );
    assert!(
        during.contains("# TYPE pgtenant_transactions_total counter"),
        "{during}"
    );
    assert!(
        during.contains("pgtenant_clients{tenant=\"t3\"} 0\n"),
        "{during}"
    );
    // Idle again: the scrape and SHOW STATS see the same, settled numbers.
    let text = proxy.scrape().await;
    let admin = proxy.admin().await;
    let stats = rows(&admin, "SHOW STATS").await;
    for tenant in ["t1", "t2", "t3"] {
        let row = row_where(&stats, "tenant", tenant);
        let series = |name: &str| {
            let key = format!("{name}{{tenant=\"{tenant}\"}}");
            sample(&text, &key).unwrap_or_else(|| panic!("no {key} in\n{text}")) as u64
        };
        assert_eq!(
            series("pgtenant_transactions_total"),
            num(row, "transactions"),
            "{tenant}"
        );
        assert_eq!(
            series("pgtenant_queries_total"),
            num(row, "queries"),
            "{tenant}"
        );
        assert_eq!(
            series("pgtenant_bytes_received_total"),
            num(row, "bytes_received"),
            "{tenant}"
        );
        assert_eq!(
            series("pgtenant_bytes_sent_total"),
            num(row, "bytes_sent"),
            "{tenant}"
        );
        assert_eq!(
            series("pgtenant_sets_injected_total"),
            num(row, "sets_injected"),
            "{tenant}"
        );
        assert_eq!(
            series("pgtenant_checkout_wait_seconds_count"),
            num(row, "checkouts"),
            "{tenant}"
        );
        let inf =
            format!("pgtenant_checkout_wait_seconds_bucket{{tenant=\"{tenant}\",le=\"+Inf\"}}");
        assert_eq!(sample(&text, &inf).unwrap() as u64, num(row, "checkouts"));
    }
    let t1 = row_where(&stats, "tenant", "t1");
    // The prepare, 10 explicit transactions of three queries, 20 executes.
    assert_eq!(num(t1, "transactions"), 1 + 10 + 20);
    assert_eq!(num(t1, "queries"), 10 * 3 + 20);
    assert_eq!(num(t1, "checkouts"), 1 + 10 + 20);
    assert_eq!(
        num(row_where(&stats, "tenant", "t2"), "transactions"),
        1 + 4 + 8
    );
    assert_eq!(sample(&text, "pgtenant_paused{tenant=\"t1\"}"), Some(0.0));
    let idle = sample(
        &text,
        "pgtenant_server_connections{backend=\"main\",state=\"idle\"}",
    )
    .unwrap();
    assert!((1.0..=3.0).contains(&idle), "{idle}");
    assert_eq!(sample(&text, "pgtenant_config_generation"), Some(1.0));
}

#[tokio::test]
async fn login_failures_are_counted_by_reason() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let wrong = proxy.connect_str_with_password("app", "wrong", Naming::Options, "t1");
    let code = |r: Result<_, crate::support::ConnectError>| {
        r.expect_err("login refused").code().map(str::to_string)
    };
    assert_eq!(
        code(crate::support::connect(&wrong).await).as_deref(),
        Some("28P01")
    );
    assert_eq!(
        code(proxy.connect("app", Naming::Options, "nope").await).as_deref(),
        Some("3D000")
    );
    assert_eq!(
        code(proxy.connect("limited", Naming::Options, "t2").await).as_deref(),
        Some("28000")
    );
    let text = proxy.scrape().await;
    for (series, n) in [
        ("pgtenant_login_failures_total{reason=\"password\"}", 1.0),
        (
            "pgtenant_login_failures_total{reason=\"unknown_tenant\"}",
            1.0,
        ),
        (
            "pgtenant_login_failures_total{reason=\"tenant_forbidden\"}",
            1.0,
        ),
        ("pgtenant_login_failures_total{reason=\"timeout\"}", 0.0),
        (
            "pgtenant_tenant_login_failures_total{tenant=\"t1\",reason=\"password\"}",
            1.0,
        ),
        (
            "pgtenant_tenant_login_failures_total{tenant=\"t2\",reason=\"tenant_forbidden\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(n), "{series} in\n{text}");
    }
}

/// The reasons the test above does not produce, each once: nothing named, a tenant's
/// `max_client_connections`, an unreachable backend, a malformed startup, the console
/// refused. (`timeout` needs a login that lasts the fixed 60 s login limit: not tested.)
#[tokio::test]
async fn every_other_login_failure_reason_is_counted() {
    let dead_port = crate::support::binary::free_port();
    let proxy = OpsProxy::start(ProxyOptions::default().extra(&format!(
        "[tenants.solo]\nbackend = \"main\"\nsearch_path = [\"t1\", \"public\"]\n\
         max_client_connections = 1\n\
         [backends.dead]\nhost = \"127.0.0.1\"\nport = {dead_port}\ndatabase = \"app\"\n\
         user = \"app\"\npassword = \"app_pw\"\n\
         [tenants.down]\nbackend = \"dead\"\nsearch_path = [\"t1\"]\n"
    )));
    let refused = |conn: String| async move {
        let err = connect(&conn).await.expect_err("login refused");
        (
            err.code().map(str::to_string),
            err.message().map(str::to_string),
        )
    };
    let (code, _) = refused(proxy.conn_params("app", PROXY_PASSWORD, "app", None)).await;
    assert_eq!(code.as_deref(), Some("28000"), "no tenant named");
    let _solo = proxy.connect("app", Naming::Options, "solo").await.unwrap();
    let (code, message) = refused(proxy.connect_str("app", Naming::Options, "solo")).await;
    assert_eq!(
        (code.as_deref(), message.as_deref()),
        (
            Some("53300"),
            Some("sorry, too many clients already for tenant \"solo\"")
        )
    );
    let (code, message) = refused(proxy.connect_str("app", Naming::Options, "down")).await;
    assert_eq!(
        (code.as_deref(), message.as_deref()),
        (Some("08006"), Some("could not connect to backend \"dead\""))
    );
    let (code, _) = refused(proxy.conn_params("app", PROXY_PASSWORD, "pgtenant", None)).await;
    assert_eq!(
        code.as_deref(),
        Some("42501"),
        "the console is for admin_users"
    );
    let mut wire = Wire::connect(proxy.addr()).await;
    wire.send(&packet(2 << 16, &params(&[("user", "app")])))
        .await;
    let reply = wire.until_closed().await.unwrap();
    reply.expect_error("08P01").unwrap();

    let text = proxy.scrape().await;
    for (series, n) in [
        ("pgtenant_login_failures_total{reason=\"no_tenant\"}", 1.0),
        (
            "pgtenant_login_failures_total{reason=\"too_many_clients\"}",
            1.0,
        ),
        ("pgtenant_login_failures_total{reason=\"backend\"}", 1.0),
        ("pgtenant_login_failures_total{reason=\"protocol\"}", 1.0),
        (
            "pgtenant_login_failures_total{reason=\"admin_forbidden\"}",
            1.0,
        ),
        ("pgtenant_login_failures_total{reason=\"password\"}", 0.0),
        (
            "pgtenant_tenant_login_failures_total{tenant=\"solo\",reason=\"too_many_clients\"}",
            1.0,
        ),
        (
            "pgtenant_tenant_login_failures_total{tenant=\"down\",reason=\"backend\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(n), "{series} in\n{text}");
    }
}

/// `pgtenant_clients_waiting` and `pgtenant_tenant_server_connections` while one client
/// holds the only server connection and another waits for it, then after.
#[tokio::test]
async fn waiting_clients_and_tenant_server_connections() {
    let proxy = OpsProxy::start(ProxyOptions::default().pool_size(1));
    let holder = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    holder
        .simple_query("BEGIN; SELECT * FROM whoami")
        .await
        .unwrap();
    let waiter = proxy.connect("app", Naming::Options, "t2").await.unwrap();
    let waiting = tokio::spawn(async move {
        let who = simple_value(&waiter, "select tenant from whoami").await;
        (waiter, who)
    });
    eventually(Duration::from_secs(5), "t2's client is waiting", || async {
        sample(
            &proxy.scrape().await,
            "pgtenant_clients_waiting{tenant=\"t2\"}",
        ) == Some(1.0)
    })
    .await;
    let text = proxy.scrape().await;
    for (series, n) in [
        ("pgtenant_clients_waiting{tenant=\"t1\"}", 0.0),
        ("pgtenant_clients_waiting{tenant=\"t2\"}", 1.0),
        (
            "pgtenant_tenant_server_connections{tenant=\"t1\",state=\"active\"}",
            1.0,
        ),
        (
            "pgtenant_tenant_server_connections{tenant=\"t1\",state=\"idle\"}",
            0.0,
        ),
        (
            "pgtenant_tenant_server_connections{tenant=\"t2\",state=\"active\"}",
            0.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(n), "{series} in\n{text}");
    }
    holder.simple_query("COMMIT").await.unwrap();
    let (_waiter, who) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter runs once the holder committed")
        .unwrap();
    assert_eq!(who.unwrap().as_deref(), Some("t2"));
    let text = proxy.scrape().await;
    for (series, n) in [
        ("pgtenant_clients_waiting{tenant=\"t2\"}", 0.0),
        (
            "pgtenant_tenant_server_connections{tenant=\"t1\",state=\"active\"}",
            0.0,
        ),
        (
            "pgtenant_tenant_server_connections{tenant=\"t2\",state=\"active\"}",
            0.0,
        ),
        (
            "pgtenant_tenant_server_connections{tenant=\"t2\",state=\"idle\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(n), "{series} in\n{text}");
    }
}

#[tokio::test]
async fn tenant_labels_can_be_turned_off() {
    let proxy =
        OpsProxy::start(ProxyOptions::default().proxy_line("metrics_tenant_labels = false"));
    let _t1 = traffic(&proxy, "t1", 4).await;
    let _t2 = traffic(&proxy, "t2", 2).await;
    let text = proxy.scrape().await;
    assert!(!text.contains("tenant=\""), "no tenant labels:\n{text}");
    // t1: prepare + 2 explicit + 2 executes; t2: prepare + 1 explicit + 1 execute.
    assert_eq!(
        sample(&text, "pgtenant_transactions_total"),
        Some(8.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "pgtenant_checkout_wait_seconds_count"),
        Some(8.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "pgtenant_checkout_wait_seconds_bucket{le=\"+Inf\"}"),
        Some(8.0)
    );
}

#[tokio::test]
async fn the_responder_answers_its_paths_only() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let (status, _) = proxy.http_get("/nope").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let (status, _) = crate::support::ops::http(proxy.metrics_addr, "POST /metrics HTTP/1.1").await;
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    let (status, body) = proxy.http_get("/health").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "ok\n");
    let (status, body) = proxy.http_get("/metrics?x=1").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("pgtenant_info{version="), "{body}");
    assert_eq!(
        proxy.handle.metrics_text().lines().next(),
        body.lines().next()
    );
}

/// Error kinds as labels: a session cut by `idle_transaction_timeout`, one that waited out
/// `query_wait_timeout`, and logins to a backend that refuses connections are counted under
/// their kinds (every kind is listed, zeros too).
#[tokio::test]
async fn session_errors_and_connect_failures_are_counted_by_kind() {
    // A port nothing listens on: bound, then released.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "[backends.dead]\nhost = \"127.0.0.1\"\nport = {dead_port}\ndatabase = \"app\"\n\
         user = \"app\"\npassword = \"app\"\n\n\
         [tenants.gone]\nbackend = \"dead\"\nsearch_path = [\"t1\"]\n"
    );
    let proxy = OpsProxy::start(
        ProxyOptions::default()
            .pool_size(1)
            .timeout("idle_transaction_timeout", "2s")
            .timeout("query_wait_timeout", "300ms")
            .extra(&extra),
    );
    let before = proxy.scrape().await;
    for kind in [
        "idle_in_transaction",
        "no_server",
        "killed",
        "client_protocol",
    ] {
        let series = format!("pgtenant_session_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(sample(&before, &series), Some(0.0), "{series} in\n{before}");
    }

    // t1's only server connection held in a transaction: t2's query waits it out (53300),
    // then the holder is cut by idle_transaction_timeout (25P03).
    let holder = connect_watched(&proxy.connect_str("app", Naming::Options, "t1"))
        .await
        .unwrap();
    holder.simple_query("BEGIN").await.unwrap();
    let waiter = connect_watched(&proxy.connect_str("app", Naming::Options, "t2"))
        .await
        .unwrap();
    let err = waiter.simple_query("select 1").await.unwrap_err();
    let e = waiter.closing_error(&err).await;
    assert_eq!(e.code().code(), "53300", "{e:?}");
    // Past the idle timeout: the proxy has ended the holder's session.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = holder.simple_query("select 1").await.unwrap_err();
    let e = holder.closing_error(&err).await;
    assert_eq!(e.code().code(), "25P03", "{e:?}");

    // The dead backend: each login gets 08006.
    for _ in 0..2 {
        let e = proxy
            .connect("app", Naming::Options, "gone")
            .await
            .expect_err("the backend is down");
        assert_eq!(e.code(), Some("08006"), "{e:?}");
    }

    let text = proxy.scrape().await;
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    assert_eq!(
        value("pgtenant_session_errors_total{kind=\"idle_in_transaction\"}"),
        1.0
    );
    assert_eq!(
        value("pgtenant_session_errors_total{kind=\"no_server\"}"),
        1.0
    );
    assert_eq!(value("pgtenant_session_errors_total{kind=\"killed\"}"), 0.0);
    // The first login fails to connect; the second is refused at once (the backend is
    // marked down only after two failures) or fails to connect again: connect failures
    // only.
    assert!(value("pgtenant_server_connect_failures_total{kind=\"connect\"}") >= 1.0);
    for kind in ["timeout", "auth", "refused", "protocol", "io"] {
        let series = format!("pgtenant_server_connect_failures_total{{kind=\"{kind}\"}}");
        assert_eq!(value(&series), 0.0, "{series}");
    }
}

/// `/health` answers while the process runs; `/ready` only while every backend is
/// reachable: a backend nothing listens on makes it 503, naming the backend.
#[tokio::test]
async fn health_and_ready_answer_for_probes() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let (status, body) = proxy.http_get("/health").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "ok\n");
    let (status, body) = proxy.http_get("/ready").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}: {body}");
    let (status, _) = crate::support::ops::http(proxy.metrics_addr, "POST /ready HTTP/1.1").await;
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");

    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "[backends.dead]\nhost = \"127.0.0.1\"\nport = {dead_port}\ndatabase = \"app\"\n\
         user = \"app\"\npassword = \"app\"\n\n\
         [tenants.gone]\nbackend = \"dead\"\nsearch_path = [\"t1\"]\n"
    );
    let proxy = OpsProxy::start(ProxyOptions::default().extra(&extra));
    let (status, body) = proxy.http_get("/ready").await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}: {body}");
    assert!(body.contains("backend \"dead\""), "{body}");
    assert!(
        !body.contains("\"main\""),
        "the reachable backend is fine: {body}"
    );
    let (status, _) = proxy.http_get("/health").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}
