//! `/metrics`: scraped over HTTP during and after a run, per-tenant series whose values
//! agree with `SHOW STATS`; the switch that turns tenant labels off; HTTP edge cases.

use std::time::Duration;

use crate::support::ops::{num, row_where, rows, sample, OpsProxy};
use crate::support::{simple_value, Naming, ProxyOptions};

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
            tokio::time::sleep(Duration::from_millis(50)).await;
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
async fn the_responder_answers_only_metrics_and_health() {
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
