//! Hot reload: through the console (`RELOAD`), the in-process handle, and SIGHUP to the
//! real binary. Tenants are added, changed and removed without dropping unaffected
//! clients; a bad file is refused and the running config stays.

use std::time::Duration;

use crate::reliability::{activity, own_login, own_login_on, superuser, OWN_LOGIN_PASSWORD};
use crate::support::binary::Binary;
use crate::support::ops::{eventually, num, ops_toml, row_where, rows, OpsProxy};
use crate::support::{
    assert_db_error, connect, connect_watched, own_pg, pg, schema_tenant, tenant_of, value, Naming,
    ProxyOptions,
};

/// The standard config plus tenant `t8`, which reads schema t2.
fn with_t8() -> ProxyOptions {
    ProxyOptions::default()
        .extra("[tenants.t8]\nbackend = \"main\"\nsearch_path = [\"t2\", \"public\"]\n")
}

#[tokio::test]
async fn reload_adds_a_tenant_while_a_held_connection_keeps_working() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let held = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    held.simple_query("BEGIN; UPDATE whoami SET n = n")
        .await
        .unwrap();
    let other = proxy.connect("app", Naming::Options, "t2").await.unwrap();
    assert_eq!(tenant_of(&other).await.as_deref(), Some("t2"));
    let err = proxy
        .connect("app", Naming::Options, "t8")
        .await
        .expect_err("no t8 yet");
    assert_eq!(err.code(), Some("3D000"), "{err}");

    proxy.write_config(&with_t8());
    let admin = proxy.admin().await;
    let messages = admin.simple_query("RELOAD").await.unwrap();
    assert!(matches!(
        messages.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(_))
    ));

    let t8 = proxy.connect("app", Naming::Options, "t8").await.unwrap();
    assert_eq!(
        tenant_of(&t8).await.as_deref(),
        Some("t2"),
        "t8 reads schema t2"
    );
    // The held transaction is untouched and still commits.
    assert_eq!(tenant_of(&held).await.as_deref(), Some("t1"));
    held.simple_query("COMMIT").await.unwrap();
    assert_eq!(tenant_of(&held).await.as_deref(), Some("t1"));
    assert_eq!(tenant_of(&other).await.as_deref(), Some("t2"));
    // Unchanged tenants keep their counters across the reload.
    let stats = rows(&admin, "SHOW STATS").await;
    assert_eq!(num(row_where(&stats, "tenant", "t2"), "transactions"), 2);
    let config = rows(&admin, "SHOW CONFIG").await;
    assert_eq!(
        row_where(&config, "key", "generation").get("value"),
        Some("2")
    );
    assert_eq!(
        row_where(&config, "key", "tenants").get("value"),
        Some("12")
    );
}

#[tokio::test]
async fn a_bad_config_is_refused_and_the_old_one_stays() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let client = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    let admin = proxy.admin().await;
    let good = ops_toml(&with_t8());
    for (bad, names) in [
        (
            good.replace("[proxy]\n", "[proxy]\nno_such_key = 1\n"),
            "no_such_key",
        ),
        (
            good.replace(
                "backend = \"main\"\nsearch_path = [\"t2\"",
                "backend = \"nope\"\nsearch_path = [\"t2\"",
            ),
            "nope",
        ),
        ("[proxy\n".to_string(), "proxy.toml"),
    ] {
        proxy.write_config_text(&bad);
        let e = admin
            .simple_query("RELOAD")
            .await
            .expect_err("a bad file is refused");
        let db = e.as_db_error().unwrap();
        assert_eq!(db.code().code(), "F0000", "{}", db.message());
        assert!(
            db.message().contains(names),
            "the error names the problem: {}",
            db.message()
        );
        assert!(
            db.message().contains("proxy.toml"),
            "the error names the file: {}",
            db.message()
        );
        assert!(proxy.handle.reload().await.is_err());
    }
    let config = rows(&admin, "SHOW CONFIG").await;
    assert_eq!(
        row_where(&config, "key", "generation").get("value"),
        Some("1")
    );
    assert_eq!(rows(&admin, "SHOW TENANTS").await.len(), 11);
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t1"));
    let again = proxy.connect("app", Naming::Options, "t2").await.unwrap();
    assert_eq!(tenant_of(&again).await.as_deref(), Some("t2"));
    let metrics = proxy.scrape().await;
    assert!(
        metrics.contains("pgtenant_config_reload_failures_total 6\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_changed_search_path_applies_from_the_next_checkout() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let client = proxy.connect("app", Naming::Options, "t3").await.unwrap();
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t3"));
    client.simple_query("BEGIN").await.unwrap();
    let text = ops_toml(&ProxyOptions::default()).replace(
        "[tenants.t3]\nbackend = \"main\"\nsearch_path = [\"t3\", \"public\"]",
        "[tenants.t3]\nbackend = \"main\"\nsearch_path = [\"t4\", \"public\"]",
    );
    proxy.write_config_text(&text);
    let summary = proxy.handle.reload().await.unwrap();
    assert_eq!(summary.tenants.changed, vec!["t3".to_string()], "{summary}");
    // Inside the transaction that was open at the reload: still the old path.
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t3"));
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(
        tenant_of(&client).await.as_deref(),
        Some("t4"),
        "the next checkout"
    );
    let fresh = proxy.connect("app", Naming::User, "t3").await.unwrap();
    assert_eq!(tenant_of(&fresh).await.as_deref(), Some("t4"));
}

#[tokio::test]
async fn a_removed_tenants_clients_finish_their_transaction_and_are_closed() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let busy = connect_watched(&proxy.connect_str("app", Naming::Options, "t3"))
        .await
        .unwrap();
    let idle = connect_watched(&proxy.connect_str("app", Naming::Options, "t4"))
        .await
        .unwrap();
    let unaffected = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    assert_eq!(tenant_of(&idle).await.as_deref(), Some("t4"));
    busy.simple_query("BEGIN; UPDATE whoami SET n = n")
        .await
        .unwrap();
    let text = ops_toml(&ProxyOptions::default())
        .replace(&schema_tenant(3), "")
        .replace(&schema_tenant(4), "");
    proxy.write_config_text(&text);
    let summary = proxy.handle.reload().await.unwrap();
    assert_eq!(
        summary.tenants.removed,
        vec!["t3".to_string(), "t4".to_string()],
        "{summary}"
    );

    // The idle client is closed at once.
    eventually(
        Duration::from_secs(5),
        "t4's idle client is closed",
        || async { idle.is_closed() },
    )
    .await;
    let e = idle.simple_query("select 1").await.expect_err("closed");
    assert_db_error(
        &idle.closing_error(&e).await,
        "57P01",
        "tenant \"t4\" was removed from the configuration",
    );
    // The busy one finishes its transaction...
    assert_eq!(tenant_of(&busy).await.as_deref(), Some("t3"));
    busy.simple_query("COMMIT").await.unwrap();
    // ... and is closed before its next one.
    let e = busy
        .simple_query("select 1")
        .await
        .expect_err("closed after its transaction");
    assert_db_error(
        &busy.closing_error(&e).await,
        "57P01",
        "tenant \"t3\" was removed from the configuration",
    );
    let err = proxy
        .connect("app", Naming::Options, "t3")
        .await
        .expect_err("t3 is gone");
    assert_eq!(err.code(), Some("3D000"), "{err}");
    assert_eq!(tenant_of(&unaffected).await.as_deref(), Some("t1"));
}

#[tokio::test]
async fn a_removed_user_is_closed_at_its_next_checkout() {
    let proxy = OpsProxy::start(ProxyOptions::default());
    let limited = connect_watched(&proxy.connect_str("limited", Naming::Options, "t1"))
        .await
        .unwrap();
    let app = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    let text = ops_toml(&ProxyOptions::default()).replace(
        "\n[users.limited]\npassword = \"secret\"\ntenants = [\"t1\"]\n",
        "",
    );
    proxy.write_config_text(&text);
    let summary = proxy.handle.reload().await.unwrap();
    assert_eq!(
        summary.users.removed,
        vec!["limited".to_string()],
        "{summary}"
    );
    let e = limited
        .simple_query("select 1")
        .await
        .expect_err("user removed");
    assert_db_error(
        &limited.closing_error(&e).await,
        "28000",
        "user \"limited\" may no longer use tenant \"t1\"",
    );
    assert_eq!(tenant_of(&app).await.as_deref(), Some("t1"));
}

/// The backend `side` (server login `moving`) on the server at `port`, and tenant `moving`
/// on it.
fn side_backend(port: u16) -> ProxyOptions {
    ProxyOptions::default().extra(&format!(
        "[backends.side]\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = \"app\"\n\
         user = \"moving\"\npassword = \"{OWN_LOGIN_PASSWORD}\"\npool_size = 2\n\
         [tenants.moving]\nbackend = \"side\"\nsearch_path = [\"moving\"]\n"
    ))
}

/// A backend moved to another server: a new pool; a transaction open at the reload finishes
/// on the old server, every client's next checkout goes to the new one, and the old pool's
/// idle connections are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_backend_serves_the_next_checkout_from_a_new_pool() {
    let new_server = own_pg();
    own_login("moving");
    own_login_on(&new_server, "moving");
    let (old_port, new_port) = (pg().port().to_string(), new_server.port().to_string());
    let proxy = OpsProxy::start(side_backend(pg().port()));
    let port = "SELECT current_setting('port') FROM whoami";
    let idle = proxy
        .connect("app", Naming::Options, "moving")
        .await
        .unwrap();
    let busy = proxy
        .connect("app", Naming::Options, "moving")
        .await
        .unwrap();
    busy.simple_query("BEGIN").await.unwrap();
    assert_eq!(value(&busy, port).await, Some(old_port.clone()));
    // A second server connection, left idle in the old pool.
    assert_eq!(value(&idle, port).await, Some(old_port.clone()));
    let su = superuser().await;
    assert_eq!(
        activity(&su, "moving").await.len(),
        2,
        "busy's and an idle one"
    );

    proxy.write_config(&side_backend(new_server.port()));
    let summary = proxy.handle.reload().await.unwrap();
    assert_eq!(
        summary.backends.changed,
        vec!["side".to_string()],
        "{summary}"
    );
    assert!(summary.tenants.changed.is_empty(), "{summary}");
    // The open transaction is still on the old server.
    assert_eq!(value(&busy, port).await, Some(old_port.clone()));
    busy.simple_query("COMMIT").await.unwrap();
    // The next checkouts: the new server.
    assert_eq!(value(&busy, port).await, Some(new_port.clone()));
    assert_eq!(value(&idle, port).await, Some(new_port.clone()));
    eventually(
        Duration::from_secs(10),
        "the old pool's connections are closed",
        || async { activity(&su, "moving").await.is_empty() },
    )
    .await;
    let fresh = proxy
        .connect("app", Naming::Options, "moving")
        .await
        .unwrap();
    assert_eq!(value(&fresh, port).await, Some(new_port));
}

/// The real binary: SIGHUP reloads the file while a held connection keeps working.
#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let mut binary = Binary::start(&ops_toml(&ProxyOptions::default())).await;
    let held = connect(&binary.conn_str("t1"))
        .await
        .unwrap_or_else(|e| panic!("the binary accepts clients: {e}"));
    held.simple_query("BEGIN; UPDATE whoami SET n = n")
        .await
        .unwrap();
    assert_eq!(
        connect(&binary.conn_str("t8"))
            .await
            .expect_err("no t8 yet")
            .code(),
        Some("3D000")
    );

    binary.write_config(&ops_toml(&with_t8()));
    binary.signal(libc::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "SIGHUP reloaded the file",
        || async { binary.log().contains("configuration reloaded") },
    )
    .await;
    let added = connect(&binary.conn_str("t8"))
        .await
        .unwrap_or_else(|e| panic!("SIGHUP added tenant t8: {e}"));
    assert_eq!(tenant_of(&added).await.as_deref(), Some("t2"));
    assert_eq!(tenant_of(&held).await.as_deref(), Some("t1"));
    held.simple_query("COMMIT").await.unwrap();
    assert_eq!(tenant_of(&held).await.as_deref(), Some("t1"));
    binary.signal(libc::SIGTERM);
    let status = binary.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    binary.check_log();
}
