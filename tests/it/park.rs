//! Parking idle clients (`park_idle_clients_after`): a parked client carries on exactly where
//! it stopped (its tenant, its settings, its prepared statements), and everything that
//! reaches an unparked idle client reaches a parked one too: KILL, shutdown, its tenant's
//! removal, its own departure. Half a message, or session mode, never parks.

use std::time::Duration;

use crate::support::ops::{eventually, ops_toml, row_where, rows, sample, OpsProxy};
use crate::support::wire::{query, Wire};
use crate::support::{schema_tenant, tenant_of, Naming, ProxyOptions, PROXY_PASSWORD};

/// Parks after 100 ms idle (sweeps every 50 ms, parks on the third): tests wait for it.
fn parking() -> ProxyOptions {
    ProxyOptions::default().timeout("park_idle_clients_after", "100ms")
}

async fn parked(proxy: &OpsProxy) -> u64 {
    let text = proxy.scrape().await;
    sample(&text, "pgtenant_clients_parked").expect("pgtenant_clients_parked") as u64
}

async fn wait_parked(proxy: &OpsProxy, n: u64) {
    eventually(
        Duration::from_secs(10),
        &format!("{n} clients parked"),
        || async { parked(proxy).await == n },
    )
    .await;
}

// Multi-threaded, as the proxy runs with `workers` > 1: parks and resumes cross threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_clients_carry_on_in_their_own_tenant_with_their_statements() {
    let proxy = OpsProxy::start(parking().pool_size(2));
    let mut clients = Vec::new();
    for i in 0..8 {
        let tenant = format!("t{}", i % 4 + 1);
        let naming = Naming::ALL[i % 3];
        let client = proxy.connect("app", naming, &tenant).await.unwrap();
        // A named statement made before parking must still work after it.
        let stmt = client
            .prepare("SELECT tenant, n FROM whoami WHERE n > $1")
            .await
            .unwrap();
        clients.push((tenant, client, stmt));
    }
    for round in 0..3 {
        wait_parked(&proxy, 8).await;
        let admin = proxy.admin().await;
        let listed = rows(&admin, "SHOW CLIENTS").await;
        assert_eq!(listed.len(), 8);
        assert!(
            listed
                .iter()
                .all(|c| c.get("parked") == Some("t") && c.get("state") == Some("idle")),
            "round {round}: every idle client is parked and shown idle"
        );
        for (tenant, client, stmt) in &clients {
            assert_eq!(tenant_of(client).await.as_ref(), Some(tenant), "{round}");
            let rows = client.query(stmt, &[&0i32]).await.unwrap();
            let got: String = rows[0].get(0);
            assert_eq!(
                &got, tenant,
                "round {round}: the statement runs in its tenant"
            );
        }
        // A client in a transaction is linked, so never parked, however long the round took
        // (idle ones may have parked again already).
        let (_, first, _) = &clients[0];
        first.batch_execute("BEGIN").await.unwrap();
        let listed = rows(&admin, "SHOW CLIENTS").await;
        assert_eq!(listed.len(), 8);
        let active: Vec<_> = listed
            .iter()
            .filter(|c| c.get("state") == Some("active"))
            .collect();
        assert_eq!(active.len(), 1, "round {round}");
        assert_eq!(active[0].get("parked"), Some("f"), "round {round}");
        assert!(parked(&proxy).await < 8, "round {round}");
        first.batch_execute("COMMIT").await.unwrap();
    }
}

#[tokio::test]
async fn a_client_that_leaves_while_parked_is_forgotten() {
    let proxy = OpsProxy::start(parking());
    let stays = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    let leaves = proxy.connect("app", Naming::Options, "t2").await.unwrap();
    wait_parked(&proxy, 2).await;
    drop(leaves);
    let admin = proxy.admin().await;
    eventually(Duration::from_secs(10), "t2's client is gone", || async {
        rows(&admin, "SHOW CLIENTS").await.len() == 1
    })
    .await;
    let text = proxy.scrape().await;
    assert_eq!(sample(&text, "pgtenant_clients{tenant=\"t2\"}"), Some(0.0));
    assert_eq!(sample(&text, "pgtenant_clients{tenant=\"t1\"}"), Some(1.0));
    assert_eq!(tenant_of(&stays).await.as_deref(), Some("t1"));
}

#[tokio::test]
async fn kill_reaches_parked_clients() {
    let proxy = OpsProxy::start(parking());
    let a = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    let b = proxy.connect("app", Naming::User, "t1").await.unwrap();
    let other = proxy.connect("app", Naming::Options, "t2").await.unwrap();
    wait_parked(&proxy, 3).await;
    let admin = proxy.admin().await;
    admin.simple_query("KILL t1").await.unwrap();
    for c in [&a, &b] {
        eventually(
            Duration::from_secs(10),
            "a killed parked client is closed",
            || async { c.is_closed() },
        )
        .await;
    }
    assert_eq!(tenant_of(&other).await.as_deref(), Some("t2"));
    let listed = rows(&admin, "SHOW CLIENTS").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(row_where(&listed, "tenant", "t2").get("user"), Some("app"));
}

#[tokio::test]
async fn removing_a_tenant_closes_its_parked_clients() {
    let proxy = OpsProxy::start(parking());
    let gone = proxy.connect("app", Naming::Options, "t4").await.unwrap();
    let kept = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    wait_parked(&proxy, 2).await;
    let text = ops_toml(&parking()).replace(&schema_tenant(4), "");
    proxy.write_config_text(&text);
    let summary = proxy.handle.reload().await.unwrap();
    assert_eq!(summary.tenants.removed, vec!["t4".to_string()], "{summary}");
    eventually(
        Duration::from_secs(10),
        "t4's parked client is closed",
        || async { gone.is_closed() },
    )
    .await;
    assert_eq!(tenant_of(&kept).await.as_deref(), Some("t1"));
}

#[tokio::test]
async fn shutdown_reaches_parked_clients() {
    let proxy = OpsProxy::start(parking());
    let mut raw = Wire::login(proxy.addr(), "t1", PROXY_PASSWORD).await;
    wait_parked(&proxy, 1).await;
    proxy.handle.shutdown();
    // The parked client is told, as an idle one is: 57P01, then the connection closes.
    let msg = raw.read().await.expect("an error before the close");
    assert_eq!((msg.tag, msg.code().as_deref()), (b'E', Some("57P01")));
    assert!(raw.read().await.is_none(), "closed after the error");
}

#[tokio::test]
async fn half_a_message_or_session_mode_never_parks() {
    let proxy = OpsProxy::start(parking());
    let mut raw = Wire::login(proxy.addr(), "t2", PROXY_PASSWORD).await;
    let q = query("SELECT tenant FROM whoami");
    raw.send(&q[..7]).await;
    // A fixed sleep on purpose, long enough for several sweeps: it must not park.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        parked(&proxy).await,
        0,
        "a client with half a message parks"
    );
    raw.send(&q[7..]).await;
    let row = raw.read_until(b'D').await;
    assert!(row.body.ends_with(b"t2"), "{:?}", row.body);
    raw.read_until(b'Z').await;
    wait_parked(&proxy, 1).await;

    let session = OpsProxy::start(parking().pool_mode("session"));
    let client = session.connect("app", Naming::Options, "t3").await.unwrap();
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t3"));
    // A fixed sleep on purpose (several sweeps): it must not park.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(parked(&session).await, 0, "a session-mode client parks");
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t3"));
}

#[tokio::test]
async fn parking_off_keeps_every_client_in_its_task() {
    let proxy = OpsProxy::start(ProxyOptions::default().timeout("park_idle_clients_after", "0s"));
    let client = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    // A fixed sleep on purpose (what would be several sweeps): it must not park.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(parked(&proxy).await, 0);
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t1"));
}

/// Clients that log in alike share one copy of what they hold alike while parked (their
/// reported parameters, their settings snapshot: src/intern.rs). A change one of them
/// makes stays its own; each still has exactly what it was told and what it set, across
/// parks, and `RESET ALL` takes each back to its own login values.
#[tokio::test]
async fn clients_alike_keep_their_own_state_across_parks() {
    let proxy = OpsProxy::start(parking().pool_size(1));
    let conn = format!(
        "{} application_name=fleet",
        proxy.connect_str("app", Naming::Options, "t1")
    );
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(crate::support::connect(&conn).await.unwrap());
    }
    let [a, b, c] = &fleet[..] else {
        unreachable!()
    };
    for client in [a, b] {
        client
            .batch_execute("SET statement_timeout = '7s'")
            .await
            .unwrap();
    }
    wait_parked(&proxy, 3).await;
    a.batch_execute("SET application_name = 'mine'; SET statement_timeout = '9s'")
        .await
        .unwrap();
    let show = |client, sql| crate::support::value(client, sql);
    for round in 0..2 {
        wait_parked(&proxy, 3).await;
        let expected = [(a, "mine", "9s"), (b, "fleet", "7s"), (c, "fleet", "0")];
        for (i, (client, app, timeout)) in expected.into_iter().enumerate() {
            let got = (
                show(client, "SHOW application_name").await,
                show(client, "SHOW statement_timeout").await,
            );
            let want = (Some(app.to_string()), Some(timeout.to_string()));
            assert_eq!(got, want, "round {round}, client {i}");
        }
        assert_eq!(tenant_of(a).await.as_deref(), Some("t1"), "round {round}");
    }
    a.batch_execute("RESET ALL").await.unwrap();
    wait_parked(&proxy, 3).await;
    for (i, client) in [a, b].into_iter().enumerate() {
        let app = show(client, "SHOW application_name").await;
        assert_eq!(app.as_deref(), Some("fleet"), "client {i}: its login value");
    }
    assert_eq!(
        show(a, "SHOW statement_timeout").await.as_deref(),
        Some("0")
    );
    assert_eq!(
        show(b, "SHOW statement_timeout").await.as_deref(),
        Some("7s")
    );
}
