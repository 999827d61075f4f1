//! `[directory]`: tenants looked up in a table. A row inserted is served within `ttl`, a
//! row changed applies, a row deleted stops being served (new logins and connected
//! clients) within `ttl`; a herd of logins for unknown names costs one query per name per
//! `negative_ttl`; hostile names go only as the bound parameter, on the directory's own
//! connection with none of the client's startup parameters; the directory down leaves
//! cached tenants working and refuses unknown ones with `08006`.
//!
//! Each test has tables of its own in the shared server: `<t>` (the directory), and
//! `<t>_lookup($1)`, a function that records every call it gets in `<t>_calls` (the
//! name exactly as received, and the caller's `application_name` and `search_path`).

use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    assert_db_error, connect, connect_watched, eventually, own_pg_with, pg, ProxyOptions,
    TestProxy, PROXY_PASSWORD,
};
use pgtenant::localpg::{LocalPgOptions, LocalPostgres};

/// Creates directory table `t` (and its recording lookup function) in database `app` of
/// `server`.
fn make_directory(server: &LocalPostgres, t: &str) {
    let sql = format!(
        "SET ROLE app;\n\
         CREATE TABLE public.{t} (name text PRIMARY KEY, search_path text[], settings json, backend text);\n\
         CREATE TABLE public.{t}_calls (name text, app_name text, search_path text);\n\
         CREATE FUNCTION public.{t}_lookup(n text) RETURNS SETOF public.{t} LANGUAGE plpgsql AS $f$\n\
         BEGIN\n\
           INSERT INTO public.{t}_calls VALUES (n, current_setting('application_name'), current_setting('search_path'));\n\
           RETURN QUERY SELECT * FROM public.{t} WHERE name = n;\n\
         END $f$;\n"
    );
    server.psql_db("app", &sql).expect("make the directory");
}

fn directory_section(t: &str, backend: &str, ttl: &str, negative_ttl: &str) -> String {
    format!(
        "[directory]\nbackend = \"{backend}\"\n\
         query = \"SELECT search_path, settings, backend FROM {t}_lookup($1)\"\n\
         ttl = \"{ttl}\"\nnegative_ttl = \"{negative_ttl}\"\n"
    )
}

fn start(t: &str, ttl: &str, negative_ttl: &str, extra: &str) -> TestProxy {
    let pg = pg();
    make_directory(pg, t);
    TestProxy::start_with(
        ProxyOptions::default()
            .auth("trust")
            .extra(&(directory_section(t, "main", ttl, negative_ttl) + extra)),
    )
}

/// Runs `statement` in database `app` of the shared server as `app`.
async fn app_sql(statement: &str) {
    let client = connect(&crate::support::pg_conn_str("app", "app_pw", "app"))
        .await
        .unwrap();
    client
        .batch_execute(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

async fn app_value(query: &str) -> String {
    let client = connect(&crate::support::pg_conn_str("app", "app_pw", "app"))
        .await
        .unwrap();
    let msgs = client.simple_query(query).await.unwrap();
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default()
}

async fn whoami(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    let row = client.query_one("SELECT tenant FROM whoami", &[]).await?;
    Ok(row.get(0))
}

fn login(proxy: &TestProxy, name: &str) -> String {
    proxy.conn_params(&format!("app.{name}"), PROXY_PASSWORD, "app", None)
}

#[tokio::test]
async fn rows_inserted_changed_and_deleted_apply_within_ttl() {
    let t = "dir_life";
    let proxy = start(t, "300ms", "300ms", "");
    let err = connect(&login(&proxy, "dx_new"))
        .await
        .expect_err("no row yet");
    assert_eq!(err.code(), Some("3D000"), "{err}");
    assert_eq!(err.message(), Some("tenant \"dx_new\" does not exist"));
    app_sql(&format!(
        "INSERT INTO {t} VALUES ('dx_new', '{{t2}}', NULL, NULL)"
    ))
    .await;
    eventually(Duration::from_secs(10), "the new row served", || async {
        connect(&login(&proxy, "dx_new")).await.is_ok()
    })
    .await;
    let watched = connect_watched(&login(&proxy, "dx_new")).await.unwrap();
    assert_eq!(whoami(&watched).await.unwrap(), "t2");
    app_sql(&format!(
        "UPDATE {t} SET search_path = '{{t3}}' WHERE name = 'dx_new'"
    ))
    .await;
    eventually(
        Duration::from_secs(10),
        "the changed row applies",
        || async { whoami(&watched).await.unwrap() == "t3" },
    )
    .await;
    app_sql(&format!("DELETE FROM {t} WHERE name = 'dx_new'")).await;
    // Polled by hand: the failing query's error is what the test reads.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let e = loop {
        match whoami(&watched).await {
            Ok(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "the deleted row did not end the client"
            ),
            Err(e) => break e,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_db_error(
        &watched.closing_error(&e).await,
        "3D000",
        "tenant \"dx_new\" does not exist",
    );
    let err = connect(&login(&proxy, "dx_new"))
        .await
        .expect_err("row deleted");
    assert_eq!(err.code(), Some("3D000"), "{err}");
}

/// 1,000 logins for 50 unknown names (and 200 at once for one known name) cost one query
/// per name, as the lookup function itself counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_herd_of_logins_costs_one_query_per_name() {
    let t = "dir_herd";
    let proxy = Arc::new(start(t, "60s", "60s", ""));
    app_sql(&format!(
        "INSERT INTO {t} VALUES ('dh_known', '{{t1}}', NULL, NULL)"
    ))
    .await;
    let started = std::time::Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(100));
    let mut tasks = Vec::new();
    for i in 0..1200 {
        let name = if i < 1000 {
            format!("dh_unknown_{}", i % 50)
        } else {
            "dh_known".to_string()
        };
        let (proxy, sem) = (proxy.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            match connect(&login(&proxy, &name)).await {
                Ok(c) => whoami(&c).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.code().unwrap_or("none").to_string()),
            }
        }));
    }
    let mut outcomes = std::collections::BTreeMap::new();
    for task in tasks {
        let got = task.await.unwrap();
        *outcomes.entry(format!("{got:?}")).or_insert(0) += 1;
    }
    eprintln!("1,200 logins in {:?}: {outcomes:?}", started.elapsed());
    assert_eq!(outcomes.get("Err(\"3D000\")"), Some(&1000), "{outcomes:?}");
    assert_eq!(outcomes.get("Ok(\"t1\")"), Some(&200), "{outcomes:?}");
    let per_name = app_value(&format!(
        "SELECT count(*) || ' ' || count(DISTINCT name) || ' ' || max(c) FROM \
         (SELECT name, count(*) c FROM {t}_calls GROUP BY name) x"
    ))
    .await;
    assert_eq!(per_name, "51 51 1", "calls, names, most calls for one name");
}

/// Names a template would refuse, and ones meant to break SQL, reach the directory only as
/// the bound parameter (recorded byte for byte), from a connection that carries none of
/// the client's startup parameters; the directory table is intact.
#[tokio::test]
async fn hostile_names_are_bound_never_spliced() {
    let t = "dir_hostile";
    let proxy = start(t, "60s", "60s", "");
    let long = "n".repeat(300);
    let served = ["a'; drop table dir_hostile; --", "\"", "ä", "$1", "x\\y"];
    for name in served {
        let quoted = name.replace('\'', "''");
        app_sql(&format!(
            "INSERT INTO {t} VALUES ('{quoted}', '{{t1}}', '{{\"app.tenant_id\": \"1\"}}', NULL)"
        ))
        .await;
    }
    let evil_client = |name: &str| {
        format!(
            "{} application_name=evil_app options='-c search_path=evil'",
            login(&proxy, name)
        )
    };
    for name in served {
        let client = connect(&evil_client(name))
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        // (the client's own `-c search_path=evil` applies to its own queries, as it should)
        let row = client
            .query_one(
                "SELECT current_setting('app.tenant_id'), current_setting('search_path')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "1", "{name:?}: the row's settings");
        assert_eq!(row.get::<_, String>(1), "evil", "{name:?}");
    }
    for name in [long.as_str(), "nope'--", "NUL\u{1}x"] {
        let err = connect(&evil_client(name)).await.expect_err(name);
        assert_eq!(err.code(), Some("3D000"), "{name:?}: {err}");
    }
    assert_eq!(
        app_value(&format!("SELECT count(*) FROM {t}")).await,
        "5",
        "table intact"
    );
    let recorded = app_value(&format!(
        "SELECT string_agg(DISTINCT app_name || '|' || search_path, ';') FROM {t}_calls"
    ))
    .await;
    assert_eq!(
        recorded, "|\"$user\", public",
        "no client parameter on the lookup"
    );
    for name in served.iter().copied().chain([long.as_str(), "nope'--"]) {
        let quoted = name.replace('\'', "''");
        let n = app_value(&format!(
            "SELECT count(*) FROM {t}_calls WHERE name = '{quoted}'"
        ))
        .await;
        assert_eq!(n, "1", "{name:?} received exactly as sent");
    }
}

/// The directory on a server of its own, stopped: a tenant cached before keeps working past
/// its `ttl`; an unknown name gets `08006` naming the directory; back up, unknown names
/// are `3D000` again.
#[tokio::test]
async fn directory_down_keeps_cached_tenants_and_refuses_unknown_ones() {
    let t = "dir_down";
    // Commits on disk before the abrupt stop (the suite's servers run with it off).
    let dir = own_pg_with(LocalPgOptions::default().conf("synchronous_commit = on"));
    make_directory(&dir, t);
    dir.psql_db(
        "app",
        &format!("INSERT INTO {t} VALUES ('dd_cached', '{{t4}}', NULL, 'main')"),
    )
    .unwrap();
    let extra = format!(
        "[backends.dir]\nhost = \"{}\"\nport = {}\ndatabase = \"app\"\nuser = \"app\"\n\
         password = \"app_pw\"\n{}",
        dir.host(),
        dir.port(),
        directory_section(t, "dir", "200ms", "200ms")
    );
    let proxy = TestProxy::start_with(ProxyOptions::default().auth("trust").extra(&extra));
    let cached = connect(&login(&proxy, "dd_cached")).await.unwrap();
    assert_eq!(whoami(&cached).await.unwrap(), "t4");
    dir.stop_immediate().unwrap();
    // Past the row's ttl (a wait for something that must NOT happen: being dropped).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(whoami(&cached).await.unwrap(), "t4", "the connected client");
    let again = connect(&login(&proxy, "dd_cached")).await.unwrap();
    assert_eq!(
        whoami(&again).await.unwrap(),
        "t4",
        "a new login of a cached tenant"
    );
    let err = connect(&login(&proxy, "dd_unknown"))
        .await
        .expect_err("directory down");
    assert_eq!(err.code(), Some("08006"), "{err}");
    assert_eq!(
        err.message(),
        Some("could not look up tenant \"dd_unknown\": the tenant directory is unavailable")
    );
    dir.start_again().unwrap();
    eventually(
        Duration::from_secs(10),
        "unknown names are 3D000 again",
        || async {
            let err = connect(&login(&proxy, "dd_unknown"))
                .await
                .expect_err("no row");
            err.code() == Some("3D000")
        },
    )
    .await;
}
