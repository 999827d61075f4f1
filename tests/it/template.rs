//! `[tenant_template]` with no `[tenants]` block: 1,000 schema-per-tenant tenants on a pool
//! of 4, each client reading only its own (a collision test through template tenants); a
//! schema created while the proxy runs, served with no reload; names the pattern refuses
//! (hostile ones too) never reach the template; idle template tenants are dropped and come
//! back on their next use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::ops::{rows, ADMIN_USER};
use crate::support::{connect, eventually, own_pg, TestProxy, PROXY_PASSWORD};
use pgtenant::localpg::LocalPostgres;

/// A config for `server` with the template (and no `[tenants]` block), trust auth, the
/// console user, and `proxy` lines.
pub fn template_toml(server: &LocalPostgres, pool_size: usize, proxy: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nauth = \"trust\"\nadmin_users = [\"{ADMIN_USER}\"]\n\
         query_wait_timeout = \"20s\"\nserver_connect_timeout = \"3s\"\nshutdown_timeout = \"1s\"\n{proxy}\n\
         [backends.main]\nhost = \"{}\"\nport = {}\ndatabase = \"app\"\nuser = \"app\"\n\
         password = \"app_pw\"\npool_size = {pool_size}\n\
         [users.app]\npassword = \"{PROXY_PASSWORD}\"\n\
         [users.{ADMIN_USER}]\npassword = \"{PROXY_PASSWORD}\"\ntenants = []\n\
         [tenant_template]\nbackend = \"main\"\nsearch_path = [\"{{tenant}}\", \"public\"]\n\
         settings = {{ \"app.tenant_id\" = \"{{tenant}}\" }}\ntenant_name_pattern = \"^tt_[0-9]{{4}}$\"\n",
        server.host(),
        server.port()
    )
}

/// Schemas `tt_0001` .. `tt_{n}`, each with `whoami(tenant)` holding its own name.
pub(crate) fn make_schemas(server: &LocalPostgres, from: usize, to: usize) {
    let sql = format!(
        "SET ROLE app;\nDO $$ BEGIN FOR i IN {from}..{to} LOOP\n\
         EXECUTE format('CREATE SCHEMA %I', 'tt_' || lpad(i::text, 4, '0'));\n\
         EXECUTE format('CREATE TABLE %I.whoami (tenant text)', 'tt_' || lpad(i::text, 4, '0'));\n\
         EXECUTE format('INSERT INTO %I.whoami VALUES (%L)', 'tt_' || lpad(i::text, 4, '0'), 'tt_' || lpad(i::text, 4, '0'));\n\
         END LOOP; END $$;\n"
    );
    server.psql_db("app", &sql).expect("make schemas");
}

fn options(name: &str) -> String {
    format!("-c tenant={name}")
}

/// What tenant `name`'s client reads: its table and its setting, by a simple query and an
/// extended one.
async fn reads(client: &tokio_postgres::Client) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let msgs = client
        .simple_query("SELECT tenant, current_setting('app.tenant_id') FROM whoami")
        .await
        .map_err(|e| e.to_string())?;
    for m in msgs {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            out.push(r.get(0).unwrap_or_default().to_string());
            out.push(r.get(1).unwrap_or_default().to_string());
        }
    }
    let row = client
        .query_one("SELECT tenant FROM whoami WHERE $1::int = 1", &[&1i32])
        .await
        .map_err(|e| e.to_string())?;
    out.push(row.get(0));
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_template_tenants_each_read_only_their_own_schema() {
    const TENANTS: usize = 1000;
    const WORKERS: usize = 32;
    let server = own_pg();
    make_schemas(&server, 1, TENANTS);
    let proxy = Arc::new(TestProxy::start_text(template_toml(&server, 4, "")));
    let next = Arc::new(AtomicUsize::new(1));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (proxy, next) = (proxy.clone(), next.clone());
            tokio::spawn(async move {
                let (mut wrong, mut errors, mut reads_done) = (Vec::new(), Vec::new(), 0);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i > TENANTS {
                        return (wrong, errors, reads_done);
                    }
                    let name = format!("tt_{i:04}");
                    let conn = proxy.conn_params("app", "", "app", Some(&options(&name)));
                    let client = match connect(&conn).await {
                        Ok(c) => c,
                        Err(e) => {
                            errors.push(format!("{name}: connect: {e}"));
                            continue;
                        }
                    };
                    for _ in 0..3 {
                        match reads(&client).await {
                            Ok(got) => {
                                reads_done += got.len();
                                if got.iter().any(|g| *g != name) {
                                    wrong.push(format!("{name} read {got:?}"));
                                }
                            }
                            Err(e) => errors.push(format!("{name}: {e}")),
                        }
                    }
                }
            })
        })
        .collect();
    let (mut wrong, mut errors, mut total) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (w, e, n) = t.await.unwrap();
        wrong.extend(w);
        errors.extend(e);
        total += n;
    }
    assert_eq!(
        wrong.len(),
        0,
        "wrong-tenant reads: {:?}",
        &wrong[..wrong.len().min(10)]
    );
    assert_eq!(
        errors.len(),
        0,
        "errors: {:?}",
        &errors[..errors.len().min(10)]
    );
    assert_eq!(total, TENANTS * 3 * 3, "every read done");
}

#[tokio::test]
async fn a_schema_created_while_running_is_served_with_no_reload() {
    let server = own_pg();
    make_schemas(&server, 1, 1);
    let proxy = TestProxy::start_text(template_toml(&server, 2, ""));
    let first = connect(&proxy.conn_params("app", "", "app", Some(&options("tt_0001"))))
        .await
        .unwrap();
    assert_eq!(reads(&first).await.unwrap(), ["tt_0001"; 3]);
    // Not there yet: the name is served (it matches), the schema is missing.
    let early = connect(&proxy.conn_params("app", "", "app", Some(&options("tt_0002"))))
        .await
        .unwrap();
    let e = early
        .simple_query("SELECT tenant FROM whoami")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42P01"), "{e}");
    make_schemas(&server, 2, 2);
    let later = connect(&proxy.conn_params("app", "", "app", Some(&options("tt_0002"))))
        .await
        .unwrap();
    assert_eq!(reads(&later).await.unwrap(), ["tt_0002"; 3]);
    assert_eq!(
        reads(&early).await.unwrap(),
        ["tt_0002"; 3],
        "the early client too"
    );
}

/// Names the pattern refuses get `3D000` without reaching the template (or SQL), whichever
/// way they are named; the database is untouched.
#[tokio::test]
async fn names_the_pattern_refuses_are_unknown_tenants() {
    let server = own_pg();
    make_schemas(&server, 1, 1);
    server
        .psql_db(
            "app",
            "CREATE TABLE public.x (n int); INSERT INTO public.x VALUES (1);",
        )
        .unwrap();
    let proxy = TestProxy::start_text(template_toml(&server, 2, ""));
    let long = "t".repeat(300);
    for name in [
        "a'; drop table x; --",
        "\"",
        "ä",
        long.as_str(),
        "TT_0001",
        "tt_0001 ",
    ] {
        let by_user = proxy.conn_params(&format!("app.{name}"), "", "app", None);
        let err = connect(&by_user).await.expect_err(name);
        assert_eq!(err.code(), Some("3D000"), "{name:?}: {err}");
        assert_eq!(
            err.message(),
            Some(format!("tenant \"{name}\" does not exist").as_str()),
            "{name:?}"
        );
    }
    let ok = connect(&proxy.conn_params("app.tt_0001", "", "app", None))
        .await
        .unwrap();
    assert_eq!(reads(&ok).await.unwrap(), ["tt_0001"; 3]);
    let intact = server
        .psql_db("app", "SELECT count(*) FROM public.x;")
        .unwrap();
    assert!(intact.contains('1'), "table x intact: {intact}");
}

/// A template tenant is listed while in use, dropped after `server_idle_timeout` with no
/// client, and made again (fresh) on its next use.
#[tokio::test]
async fn idle_template_tenants_are_dropped_and_come_back() {
    let server = own_pg();
    make_schemas(&server, 1, 2);
    let proxy = TestProxy::start_text(template_toml(
        &server,
        2,
        "server_idle_timeout = \"300ms\"\n",
    ));
    let admin = connect(&proxy.conn_params(ADMIN_USER, "", "pgtenant", None))
        .await
        .unwrap();
    let listed = |rows: &[tokio_postgres::SimpleQueryRow], name: &str| {
        rows.iter().any(|r| r.get("tenant") == Some(name))
    };
    let client = connect(&proxy.conn_params("app", "", "app", Some(&options("tt_0001"))))
        .await
        .unwrap();
    assert_eq!(reads(&client).await.unwrap(), ["tt_0001"; 3]);
    let keep = connect(&proxy.conn_params("app", "", "app", Some(&options("tt_0002"))))
        .await
        .unwrap();
    assert!(listed(&rows(&admin, "SHOW TENANTS").await, "tt_0001"));
    drop(client);
    eventually(
        Duration::from_secs(10),
        "tt_0001 dropped when idle",
        || async { !listed(&rows(&admin, "SHOW TENANTS").await, "tt_0001") },
    )
    .await;
    // One with a client stays, however long it is idle.
    assert!(listed(&rows(&admin, "SHOW TENANTS").await, "tt_0002"));
    let again = connect(&proxy.conn_params("app", "", "app", Some(&options("tt_0001"))))
        .await
        .unwrap();
    assert_eq!(reads(&again).await.unwrap(), ["tt_0001"; 3]);
    assert_eq!(reads(&keep).await.unwrap(), ["tt_0002"; 3]);
    // PAUSE and RESUME work on it as on a configured tenant.
    rows(&admin, "PAUSE tt_0001").await;
    assert_eq!(
        rows(&admin, "SHOW TENANTS")
            .await
            .iter()
            .find(|r| r.get("tenant") == Some("tt_0001"))
            .and_then(|r| r.get("paused")),
        Some("t")
    );
    rows(&admin, "RESUME tt_0001").await;
    assert_eq!(reads(&again).await.unwrap(), ["tt_0001"; 3]);
}

/// 120 template tenants with a client each: `/metrics` labels the busiest 100 and sums the
/// rest under `tenant="_other"` (configured tenants keep their own series).
#[tokio::test]
async fn metrics_label_at_most_a_hundred_tenants_made_on_demand() {
    use crate::support::ops::{sample, OpsProxy};
    use crate::support::ProxyOptions;
    let template = "[tenant_template]\nbackend = \"main\"\ntenant_name_pattern = \"^tm_[0-9]+$\"\n";
    let proxy = OpsProxy::start(ProxyOptions::default().auth("trust").extra(template));
    let mut clients = Vec::new();
    for i in 0..120 {
        let conn = proxy.conn_params("app", "", "app", Some(&options(&format!("tm_{i}"))));
        let c = connect(&conn).await.unwrap();
        c.simple_query("SELECT 1").await.unwrap();
        clients.push(c);
    }
    let text = proxy.scrape().await;
    let labelled = text
        .lines()
        .filter(|l| l.starts_with("pgtenant_clients{tenant=\"tm_"))
        .count();
    assert_eq!(labelled, 100, "the busiest 100 get a label");
    assert_eq!(
        sample(&text, "pgtenant_clients{tenant=\"_other\"}"),
        Some(20.0)
    );
    assert_eq!(
        sample(&text, "pgtenant_clients{tenant=\"t1\"}"),
        Some(0.0),
        "configured"
    );
}

/// A reload that leaves the template as it was keeps its tenants (same state, no new
/// logical pool); one that changes it moves their clients to the new template at their
/// next checkout.
#[tokio::test]
async fn a_reload_keeps_template_tenants_unless_the_template_changed() {
    use crate::support::ops::{rows, OpsProxy};
    use crate::support::ProxyOptions;
    let template = |path: &str| {
        format!("[tenant_template]\nbackend = \"main\"\nsearch_path = [\"{path}\"]\ntenant_name_pattern = \"^tr_[0-9]+$\"\n")
    };
    let options_for = |path: &str| ProxyOptions::default().auth("trust").extra(&template(path));
    let proxy = OpsProxy::start(options_for("t1"));
    let client = connect(&proxy.conn_params("app", "", "app", Some(&options("tr_1"))))
        .await
        .unwrap();
    assert_eq!(who(&client).await, "t1");
    let admin = proxy.admin().await;
    // The logical pool's own count: a new runtime would start a new one at 1.
    let checkouts = |rows: Vec<tokio_postgres::SimpleQueryRow>| {
        crate::support::ops::num(
            crate::support::ops::row_where(&rows, "tenant", "tr_1"),
            "checkouts",
        )
    };
    for _ in 0..20 {
        who(&client).await;
    }
    let before = checkouts(rows(&admin, "SHOW POOLS").await);
    assert!(before >= 40, "{before}");
    proxy.write_config(&options_for("t1").proxy_line("server_lifetime = \"2h\""));
    proxy.handle.reload().await.unwrap();
    assert_eq!(who(&client).await, "t1");
    let after = checkouts(rows(&admin, "SHOW POOLS").await);
    assert!(
        after > before,
        "the same logical pool: {after} after {before}"
    );
    proxy.write_config(&options_for("t2"));
    proxy.handle.reload().await.unwrap();
    assert_eq!(who(&client).await, "t2", "the changed template applies");
}

async fn who(c: &tokio_postgres::Client) -> String {
    let row = c.query_one("SELECT tenant FROM whoami", &[]).await.unwrap();
    row.get(0)
}
