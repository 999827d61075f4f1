//! Virtual sessions in transaction mode: each client's own settings and session objects
//! live on as on a direct connection, whichever server connection serves it, and never
//! reach another client. Clients share a pool of one or two server connections, so every
//! check below crosses a connection that another client used in between.

use std::time::Duration;

use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::support::clients::superuser;
use crate::support::ops::eventually;
use crate::support::{connect, describe, simple_value, tenant_of, Naming, ProxyOptions, TestProxy};
use crate::support::{exec, tenant_client as client, value};

async fn code_of(client: &Client, sql: &str) -> String {
    let e = client
        .batch_execute(sql)
        .await
        .expect_err("the statement fails");
    e.code().expect("a server error").code().to_string()
}

#[tokio::test]
async fn settings_persist_for_their_client_alone() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let a = client(&proxy, "t1").await;
    let b = client(&proxy, "t2").await;
    exec(&a, "SET statement_timeout = '7s'").await;
    exec(&a, "SELECT set_config('app.x', 'from-a', false)").await;
    exec(&a, "SET search_path TO t3").await;
    // b runs on the same (only) server connection in between.
    assert_eq!(
        value(&b, "SHOW statement_timeout").await.as_deref(),
        Some("0")
    );
    // A custom setting's name stays defined on the connection (PostgreSQL keeps
    // placeholders for the backend's life), empty: never a's value (README "Known limits").
    assert_eq!(
        value(&b, "SELECT coalesce(current_setting('app.x', true), '')")
            .await
            .as_deref(),
        Some("")
    );
    assert_eq!(tenant_of(&b).await.as_deref(), Some("t2"));
    assert_eq!(
        value(&a, "SHOW statement_timeout").await.as_deref(),
        Some("7s")
    );
    assert_eq!(
        value(&a, "SELECT current_setting('app.x', true)")
            .await
            .as_deref(),
        Some("from-a")
    );
    assert_eq!(tenant_of(&a).await.as_deref(), Some("t3"));
    // RESET goes back to the client's own default: its tenant's, not the connection's ''.
    exec(&a, "RESET search_path").await;
    assert_eq!(tenant_of(&a).await.as_deref(), Some("t1"));
    exec(&a, "SET search_path TO t4").await;
    exec(&a, "RESET ALL").await;
    assert_eq!(tenant_of(&a).await.as_deref(), Some("t1"));
    assert_eq!(
        value(&a, "SHOW statement_timeout").await.as_deref(),
        Some("0")
    );
    exec(&a, "SET search_path TO t4").await;
    exec(&a, "DISCARD ALL").await;
    assert_eq!(tenant_of(&a).await.as_deref(), Some("t1"));
    assert_eq!(tenant_of(&b).await.as_deref(), Some("t2"));
}

#[tokio::test]
async fn settings_follow_transaction_semantics() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let a = client(&proxy, "t1").await;
    let b = client(&proxy, "t2").await;
    async fn work_mem(c: &Client) -> String {
        value(c, "SHOW work_mem").await.unwrap()
    }
    let default = work_mem(&a).await;
    exec(&a, "BEGIN; SET work_mem = '5MB'; ROLLBACK").await;
    assert_eq!(work_mem(&a).await, default);
    exec(&a, "BEGIN; SET work_mem = '6MB'; COMMIT").await;
    assert_eq!(work_mem(&b).await, default);
    assert_eq!(work_mem(&a).await, "6MB");
    exec(&a, "BEGIN; SET LOCAL work_mem = '7MB'; COMMIT").await;
    assert_eq!(work_mem(&a).await, "6MB");
    assert_eq!(
        code_of(&a, "SET work_mem = '8MB'; SELECT 1/0").await,
        "22012"
    );
    assert_eq!(
        work_mem(&a).await,
        "6MB",
        "a failed implicit transaction undoes its SET"
    );
    exec(
        &a,
        "BEGIN; SAVEPOINT s; SET work_mem = '9MB'; ROLLBACK TO SAVEPOINT s; COMMIT",
    )
    .await;
    assert_eq!(work_mem(&a).await, "6MB");
    exec(&a, "BEGIN; RESET work_mem; ROLLBACK").await;
    assert_eq!(
        work_mem(&a).await,
        "6MB",
        "a rolled-back RESET changes nothing"
    );
    assert_eq!(work_mem(&b).await, default);
}

#[tokio::test]
async fn a_role_stays_with_the_client_that_set_it() {
    let su = superuser().await;
    su.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sessions_role') \
         THEN CREATE ROLE sessions_role; END IF; END $$; GRANT sessions_role TO app",
    )
    .await
    .unwrap();
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let a = client(&proxy, "t1").await;
    let b = client(&proxy, "t2").await;
    exec(&a, "SET ROLE sessions_role").await;
    assert_eq!(
        value(&b, "SELECT current_user").await.as_deref(),
        Some("app")
    );
    assert_eq!(
        value(&a, "SELECT current_user || '/' || session_user")
            .await
            .as_deref(),
        Some("sessions_role/app")
    );
    assert_eq!(
        value(&b, "SELECT current_user || '/' || session_user")
            .await
            .as_deref(),
        Some("app/app")
    );
    exec(&a, "RESET ROLE").await;
    assert_eq!(
        value(&a, "SELECT current_user").await.as_deref(),
        Some("app")
    );
}

#[tokio::test]
async fn an_app_that_sets_its_own_schema_reads_only_it() {
    // No tenant named: default_tenant; each client sets its schema once after connecting
    // (16 clients, 4 schemas, pool 2), then again before each "request" of a few
    // transactions (django-tenants).
    let proxy = TestProxy::start_with(
        ProxyOptions::default()
            .pool_size(2)
            .proxy_line("default_tenant = \"t1\""),
    );
    let conn = format!(
        "host=127.0.0.1 port={} user=app password=secret dbname=app",
        proxy.port()
    );
    let mut tasks = Vec::new();
    for i in 0..16 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let schema = format!("t{}", i % 4 + 1);
            let c = connect(&conn).await.expect("connect");
            let mut wrong = 0;
            let mut reads = 0;
            let once = i % 2 == 0;
            if once {
                exec(&c, &format!("SET search_path TO {schema}")).await;
            }
            for n in 0..200 {
                if !once && n % 4 == 0 {
                    exec(&c, &format!("SET search_path TO {schema}, public")).await;
                }
                let got = tenant_of(&c).await;
                reads += 1;
                if got.as_deref() != Some(schema.as_str()) {
                    wrong += 1;
                }
            }
            (reads, wrong)
        }));
    }
    let (mut reads, mut wrong) = (0, 0);
    for t in tasks {
        let (r, w) = t.await.unwrap();
        reads += r;
        wrong += w;
    }
    assert_eq!(reads, 3200);
    assert_eq!(wrong, 0, "{wrong} of {reads} reads saw another schema");
}

#[tokio::test]
async fn temp_objects_pin_their_client_and_reach_no_one_else() {
    let su = superuser().await;
    su.batch_execute(
        "CREATE OR REPLACE FUNCTION public.sessions_make_temp(v text) RETURNS void \
         LANGUAGE plpgsql AS $$ BEGIN \
         EXECUTE format('CREATE TEMP TABLE whoami AS SELECT %L::text AS tenant', v); END $$",
    )
    .await
    .unwrap();
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let makers = [
        "CREATE TEMP TABLE whoami AS SELECT 'temp-a'::text AS tenant",
        "DO $$ BEGIN CREATE TEMP TABLE whoami AS SELECT 'temp-a'::text AS tenant; END $$",
        "SELECT public.sessions_make_temp('temp-a')",
    ];
    for maker in makers {
        let a = client(&proxy, "t1").await;
        let others = [client(&proxy, "t2").await, client(&proxy, "t1").await];
        exec(&a, maker).await;
        for _ in 0..20 {
            assert_eq!(tenant_of(&a).await.as_deref(), Some("temp-a"), "{maker}");
            assert_eq!(
                tenant_of(&others[0]).await.as_deref(),
                Some("t2"),
                "{maker}"
            );
            assert_eq!(
                tenant_of(&others[1]).await.as_deref(),
                Some("t1"),
                "{maker}"
            );
        }
        // Gone: the client is unpinned and reads its tenant's table again.
        exec(&a, "DISCARD TEMP").await;
        assert_eq!(tenant_of(&a).await.as_deref(), Some("t1"));
        // Made again and left behind: the next clients never see it.
        exec(&a, maker).await;
        drop(a);
        for _ in 0..10 {
            let c = client(&proxy, "t1").await;
            assert_eq!(tenant_of(&c).await.as_deref(), Some("t1"), "{maker}");
            assert_eq!(
                value(
                    &c,
                    "SELECT count(*)::text FROM pg_class WHERE relnamespace = pg_my_temp_schema()"
                )
                .await
                .as_deref(),
                Some("0")
            );
        }
    }
}

#[tokio::test]
async fn a_session_lock_is_its_clients_and_goes_with_it() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let a = client(&proxy, "t1").await;
    let b = client(&proxy, "t2").await;
    exec(&a, "SELECT pg_advisory_lock(424242)").await;
    for _ in 0..10 {
        assert_eq!(
            value(&b, "SELECT pg_try_advisory_lock(424243)::text")
                .await
                .as_deref(),
            Some("true")
        );
        exec(&b, "SELECT pg_advisory_unlock(424243)").await;
        assert_eq!(
            value(&b, "SELECT pg_try_advisory_lock(424242)::text")
                .await
                .as_deref(),
            Some("false"),
            "another client never holds a's lock"
        );
    }
    drop(a);
    let su = std::sync::Arc::new(superuser().await);
    eventually(Duration::from_secs(10), "a's lock released", || {
        let su = su.clone();
        async move {
            value(
                &su,
                "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND objid = 424242",
            )
            .await
            .as_deref()
                == Some("0")
        }
    })
    .await;
}

#[tokio::test]
async fn sql_prepare_and_hold_cursors_work_and_unpin() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let a = client(&proxy, "t1").await;
    let b = client(&proxy, "t2").await;
    exec(&a, "PREPARE p (int) AS SELECT ($1 + 1)::text").await;
    assert_eq!(tenant_of(&b).await.as_deref(), Some("t2"));
    assert_eq!(value(&a, "EXECUTE p(41)").await.as_deref(), Some("42"));
    assert_eq!(code_of(&b, "EXECUTE p(1)").await, "26000");
    exec(&a, "DEALLOCATE p").await;
    assert_eq!(code_of(&a, "EXECUTE p(1)").await, "26000");
    exec(
        &a,
        "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT g::text FROM generate_series(1, 3) g; COMMIT",
    )
    .await;
    assert_eq!(tenant_of(&b).await.as_deref(), Some("t2"));
    assert_eq!(value(&a, "FETCH c").await.as_deref(), Some("1"));
    assert_eq!(code_of(&b, "FETCH c").await, "34000");
    assert_eq!(value(&a, "FETCH c").await.as_deref(), Some("2"));
    exec(&a, "CLOSE c").await;
    // Unpinned: with a pool of one, b is served while a is connected.
    let proxy1 = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let a = client(&proxy1, "t1").await;
    let b = client(&proxy1, "t2").await;
    exec(&a, "PREPARE q AS SELECT 1").await;
    exec(&a, "DEALLOCATE q").await;
    assert_eq!(tenant_of(&b).await.as_deref(), Some("t2"));
}

/// A client whose connection task forwards its notifications (`channel:payload`).
async fn listener(
    proxy: &TestProxy,
    tenant: &str,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (c, mut connection) =
        tokio_postgres::connect(&proxy.connect_str("app", Naming::Options, tenant), NoTls)
            .await
            .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(format!("{}:{}", n.channel(), n.payload()));
            }
        }
    });
    (c, rx)
}

/// Server backends whose last statement was a LISTEN on a channel starting `prefix`.
async fn backends_listening(su: &Client, prefix: &str) -> i64 {
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN \"' || $1 || '%'",
        &[&prefix],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn listeners_get_their_own_notifications_without_holding_connections() {
    // 8 listeners of 4 tenants on a pool of 2 that other clients keep busy.
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let mut listeners = Vec::new();
    for i in 0..8 {
        let tenant = format!("t{}", i % 4 + 1);
        let (c, rx) = listener(&proxy, &tenant).await;
        exec(&c, &format!("LISTEN chan_{i}")).await;
        listeners.push((c, rx));
    }
    let busy: Vec<_> = (0..4)
        .map(|i| {
            let conn = proxy.connect_str("app", Naming::Options, &format!("t{}", i + 1));
            tokio::spawn(async move {
                let c = connect(&conn).await.expect("connect");
                for _ in 0..100 {
                    c.batch_execute("SELECT pg_sleep(0.001)").await.unwrap();
                }
            })
        })
        .collect();
    let notifier = client(&proxy, "t1").await;
    for round in 0..5 {
        for i in 0..8 {
            exec(&notifier, &format!("NOTIFY chan_{i}, 'p{i}.{round}'")).await;
        }
    }
    for (i, (c, rx)) in listeners.iter_mut().enumerate() {
        for round in 0..5 {
            let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a notification within 10 s");
            assert_eq!(got, Some(format!("chan_{i}:p{i}.{round}")));
        }
        // Between queries too, and in the client's own tenant.
        let expect = format!("t{}", i % 4 + 1);
        assert_eq!(tenant_of(c).await.as_deref(), Some(expect.as_str()));
    }
    for b in busy {
        b.await.unwrap();
    }
    for (i, (c, rx)) in listeners.iter_mut().enumerate() {
        exec(c, "UNLISTEN *").await;
        exec(&notifier, &format!("NOTIFY chan_{i}, 'late'")).await;
        exec(c, "SELECT 1").await;
        assert!(rx.try_recv().is_err(), "no notification after UNLISTEN");
    }
}

#[tokio::test]
async fn a_thousand_listeners_hold_one_connection() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let su = superuser().await;
    let mut listeners = Vec::new();
    for i in 0..1000 {
        let (c, rx) = listener(&proxy, "t1").await;
        exec(&c, &format!("LISTEN many_{}", i % 10)).await;
        listeners.push((c, rx));
    }
    assert_eq!(
        backends_listening(&su, "many_").await,
        1,
        "1,000 listeners share one LISTEN connection"
    );
    exec(&su, "NOTIFY many_3, 'x'").await;
    for (i, (_, rx)) in listeners
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| i % 10 == 3)
    {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("listener {i} got nothing"));
        assert_eq!(got.as_deref(), Some("many_3:x"));
    }
}

#[tokio::test]
async fn listen_inside_a_transaction_pins() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let (a, mut rx) = listener(&proxy, "t1").await;
    exec(&a, "BEGIN; LISTEN pinned_chan; COMMIT").await;
    let su = superuser().await;
    exec(&su, "NOTIFY pinned_chan, 'ok'").await;
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification within 10 s");
    assert_eq!(got.as_deref(), Some("pinned_chan:ok"));
    exec(&a, "UNLISTEN *").await;
    assert_eq!(tenant_of(&a).await.as_deref(), Some("t1"));
}

#[tokio::test]
async fn two_phase_commit_is_forwarded() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let a = client(&proxy, "t1").await;
    // The shared test server has max_prepared_transactions = 0: PostgreSQL's own refusal
    // (55000), not the proxy's (0A000), shows the statement reached it.
    assert_eq!(
        code_of(&a, "BEGIN; SELECT 1; PREPARE TRANSACTION 'sessions_tx'").await,
        "55000"
    );
    exec(&a, "ROLLBACK").await;
    assert_eq!(
        code_of(&a, "COMMIT PREPARED 'sessions_none'").await,
        "42704"
    );
}

/// A setting whose name is made up at run time (`'app.d' || i`) cannot be read back, so
/// the connection's state is unknown to the next client, of the same tenant too: it must
/// not see the setting (the scanner once took `'app.d'` for the name).
#[tokio::test]
async fn a_setting_named_at_run_time_never_reaches_another_client() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let b = client(&proxy, "t1").await;
    let a = client(&proxy, "t1").await;
    exec(
        &b,
        "SELECT pg_catalog.set_config('app.d' || i, 'secret', false) FROM generate_series(1, 3) i",
    )
    .await;
    assert_eq!(
        value(&a, "SELECT current_setting('app.d3', true)")
            .await
            .unwrap_or_default(),
        ""
    );
}

/// Sets `app.k1` .. `app.k3000` to 200 bytes each (in Queries of 1,000): a state whose
/// prelude is about 700 KB, which PostgreSQL takes some milliseconds to parse, and whose
/// capture takes as long.
async fn set_3000_long_settings(client: &Client) {
    let long = "x".repeat(200);
    for chunk in 0..3 {
        let sets: String = (1..=1000)
            .map(|i| format!("SET app.k{} = '{long}';", chunk * 1000 + i))
            .collect();
        exec(client, &sets).await;
    }
}

/// The same hole, made certain: PostgreSQL arms a statement timeout when a Query arrives
/// and parses the whole Query under it, so a prelude that takes longer to parse than the
/// last client's timeout is cut before its first statement could lift it. b's prelude is
/// long (thousands of settings of its own); a's timeout is short.
#[tokio::test]
async fn a_long_prelude_never_runs_under_the_last_clients_timeout() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let b = client(&proxy, "t1").await;
    set_3000_long_settings(&b).await;
    for round in 0..3 {
        let a = client(&proxy, "t1").await;
        // b's settings are b's alone.
        assert_eq!(
            value(&a, "SELECT current_setting('app.k3000', true)")
                .await
                .unwrap_or_default(),
            "",
            "round {round}"
        );
        // From a default of 0, these SETs themselves are never cut.
        exec(&a, "SET lock_timeout = '1ms'").await;
        exec(&a, "SET statement_timeout = '2ms'").await;
        let got = simple_value(&b, "SELECT current_setting('app.k3000') = repeat('x', 200)")
            .await
            .unwrap_or_else(|e| panic!("round {round}: {}", describe(&e)));
        assert_eq!(got.as_deref(), Some("t"), "round {round}");
        assert_eq!(tenant_of(&b).await.as_deref(), Some("t1"));
    }
}

/// A client whose own timeout is shorter than reading its session back takes (thousands of
/// settings: PostgreSQL times the whole Query, parsing included) keeps that timeout and
/// the rest of its settings.
#[tokio::test]
async fn a_timeout_shorter_than_reading_the_session_back_is_kept() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let a = client(&proxy, "t1").await;
    let c = client(&proxy, "t2").await;
    set_3000_long_settings(&a).await;
    exec(&a, "SET statement_timeout = '2ms'").await;
    for round in 0..2 {
        // Another tenant's client takes a's state off the connection; a's next checkout
        // puts it back.
        assert_eq!(tenant_of(&c).await.as_deref(), Some("t2"), "round {round}");
        assert_eq!(
            value(&a, "SHOW statement_timeout").await.as_deref(),
            Some("2ms"),
            "round {round}"
        );
        assert_eq!(
            value(&a, "SELECT current_setting('app.k3000') = repeat('x', 200)")
                .await
                .as_deref(),
            Some("t"),
            "round {round}"
        );
    }
}

/// A client's own `idle_session_timeout` ends the server connections it leaves idle in the
/// pool (pgtenant replaces them), never the client, nor another client's work.
#[tokio::test]
async fn a_clients_idle_session_timeout_hurts_nobody() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let a = client(&proxy, "t1").await;
    let b = client(&proxy, "t1").await;
    exec(&a, "SET idle_session_timeout = '200ms'").await;
    for round in 0..3 {
        // The server ends the pooled connection a left behind.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(tenant_of(&b).await.as_deref(), Some("t1"), "round {round}");
        assert_eq!(
            value(&a, "SHOW idle_session_timeout").await.as_deref(),
            Some("200ms"),
            "round {round}"
        );
    }
}

/// A setting that applied before can fail later (its role was dropped). The client's
/// statement goes to the server right behind the prelude, so it runs whether the prelude
/// failed or not: it must never run in the state of the client before it (another
/// tenant's `search_path`, another client's settings).
#[tokio::test]
async fn a_prelude_that_fails_never_leaves_the_last_clients_state() {
    let su = superuser().await;
    su.batch_execute(
        "DROP TABLE IF EXISTS public.sessions_seen; \
         CREATE TABLE public.sessions_seen (search_path text, secret text); \
         GRANT ALL ON public.sessions_seen TO PUBLIC; \
         DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sessions_gone') \
         THEN CREATE ROLE sessions_gone; END IF; END $$; GRANT sessions_gone TO app",
    )
    .await
    .unwrap();
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let a = client(&proxy, "t1").await;
    let c = client(&proxy, "t2").await;
    exec(&a, "SET ROLE sessions_gone").await;
    exec(&c, "SET app.secret = 'c-only'").await;
    su.batch_execute("DROP ROLE sessions_gone").await.unwrap();
    // a's state cannot be put back: a is told, and its statement must not have run as c.
    let err = a
        .simple_query(
            "INSERT INTO public.sessions_seen \
             SELECT current_setting('search_path'), current_setting('app.secret', true)",
        )
        .await
        .expect_err("a's role is gone");
    assert_eq!(
        crate::support::db_error(&err).code().code(),
        "22023",
        "{err}"
    );
    let seen = su
        .query("SELECT search_path, secret FROM public.sessions_seen", &[])
        .await
        .unwrap();
    for row in &seen {
        let (path, secret): (String, Option<String>) = (row.get(0), row.get(1));
        assert!(!path.contains("t2"), "ran in c's search_path: {path}");
        assert_ne!(secret.as_deref(), Some("c-only"), "ran with c's setting");
    }
    // c is not disturbed.
    assert_eq!(tenant_of(&c).await.as_deref(), Some("t2"));
}

/// A client keeps its own `statement_timeout`, but the prelude that takes its state off the
/// connection must not run under it (seen in CI: under load, a 1 ms timeout cut the next
/// client's prelude, and that client got 57014). On a quiet machine the prelude is fast
/// enough either way; `a_long_prelude_never_runs_under_the_last_clients_timeout` makes
/// the same hole certain.
#[tokio::test]
async fn a_clients_short_statement_timeout_never_cuts_another_clients_work() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let a = client(&proxy, "t1").await;
    let b = client(&proxy, "t1").await;
    let c = client(&proxy, "t2").await;
    exec(&a, "SET work_mem = '9MB'").await;
    // Last: from here a's own statements run under it, as on a direct connection.
    exec(&a, "SET statement_timeout = '1ms'").await;
    for _ in 0..20 {
        // The prelude that takes a's state off the connection runs first, on the one
        // server connection a just used.
        assert_eq!(tenant_of(&b).await.as_deref(), Some("t1"));
        assert_eq!(tenant_of(&c).await.as_deref(), Some("t2"));
        exec(&b, "SELECT pg_sleep(0.01)").await;
    }
}
