//! Pinning (issue 15) and the session-level statements of issue 14 end to end, against a
//! real PostgreSQL: temp tables of one client never reach another at scale, a client that
//! leaves while pinned leaves nothing behind, pins show in the console and the metrics,
//! `max_pinned_clients` refuses with 53400, two-phase commit through psycopg, and a session
//! authorization stays with the client that set it.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use pgtenant::localpg::LocalPgOptions;
use tokio_postgres::Client;

use crate::support::clients::{connect_killable, superuser, Killable};
use crate::support::ops::{eventually, row_where, rows, sample, OpsProxy};
use crate::support::{
    conn_str_to, connect, describe, own_pg_with, pg, pg_conn_str, simple_value, tenant_of, Naming,
    ProxyOptions, TestProxy,
};
use crate::support::{exec, tenant_client as client, value};

/// Temp objects (tables and functions) in the connection's own temp schema.
const TEMP_OBJECTS: &str =
    "SELECT ((SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) \
     + (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema()))::text";

async fn killable(proxy: &TestProxy, tenant: &str) -> Killable {
    connect_killable(&proxy.connect_str("app", Naming::Options, tenant))
        .await
        .unwrap_or_else(|e| panic!("connect as {tenant}: {e}"))
}

/// The SQLSTATE and message of the error `sql` gets.
async fn error_of(client: &Client, sql: &str) -> (String, String) {
    let e = client
        .batch_execute(sql)
        .await
        .expect_err("the statement fails");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: not a server error: {}", describe(&e)));
    (db.code().code().to_string(), db.message().to_string())
}

/// A plpgsql function that creates a temp table `whoami` (invisible to any SQL scanner).
async fn make_temp_function() {
    superuser()
        .await
        .batch_execute(
            "CREATE OR REPLACE FUNCTION public.pinning_make_temp(v text) RETURNS void \
             LANGUAGE plpgsql AS $$ BEGIN \
             EXECUTE format('CREATE TEMP TABLE whoami AS SELECT %L::text AS tenant', v); END $$",
        )
        .await
        .expect("create pinning_make_temp");
}

/// The three ways an owner makes its temp `whoami`: plain SQL, a DO block, a function.
fn maker(kind: usize, v: &str) -> String {
    match kind {
        0 => format!("CREATE TEMP TABLE whoami AS SELECT '{v}'::text AS tenant"),
        1 => format!(
            "DO $$ BEGIN CREATE TEMP TABLE whoami AS SELECT '{v}'::text AS tenant; \
             CREATE FUNCTION pg_temp.pinning_probe() RETURNS text LANGUAGE sql AS 'SELECT 1::text'; END $$"
        ),
        _ => format!("SELECT public.pinning_make_temp('{v}')"),
    }
}

/// How an owner's episode ends.
const ENDINGS: [&str; 4] = [
    "discard temp",
    "terminate",
    "kill idle",
    "kill in transaction",
];

/// One read of a non-owner: (tenant it read, temp objects it sees), by one of three paths.
async fn read_tenant(c: &Client, how: usize) -> Result<(String, String), String> {
    const SQL: &str = "SELECT tenant, ((SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) \
         + (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema()))::text FROM whoami";
    let err = |e: tokio_postgres::Error| describe(&e);
    match how % 3 {
        0 => {
            let row = c.query_one(SQL, &[]).await.map_err(err)?;
            Ok((row.get(0), row.get(1)))
        }
        how => {
            let sql = if how == 1 {
                SQL.to_string()
            } else {
                format!("BEGIN; {SQL}; COMMIT")
            };
            let msgs = c.simple_query(&sql).await.map_err(err)?;
            msgs.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                        r.get(0).unwrap_or("NULL").to_string(),
                        r.get(1).unwrap_or("NULL").to_string(),
                    )),
                    _ => None,
                })
                .ok_or_else(|| "no row".to_string())
        }
    }
}

#[derive(Default)]
struct Tally {
    reads: AtomicUsize,
    owner_reads: AtomicUsize,
    wrong: std::sync::Mutex<Vec<String>>,
    episodes: [AtomicUsize; 12],
}

impl Tally {
    fn wrong(&self, what: String) {
        self.wrong.lock().unwrap().push(what);
    }
}

/// Issue 15, first done-means bullet: 16 clients of 4 schema tenants on a pool of 2; one
/// "owner" at a time creates a temp `whoami` (plain SQL, DO block, plpgsql function), reads
/// it across transactions, then drops it (DISCARD TEMP) or leaves (Terminate, killed idle,
/// killed inside a transaction). Every other read must be its own tenant's table, with no
/// temp object in sight.
#[tokio::test]
async fn owners_temp_tables_never_reach_other_clients() {
    make_temp_function().await;
    let proxy = Arc::new(TestProxy::start_with(
        ProxyOptions::default()
            .pool_size(2)
            .timeout("query_wait_timeout", "60s"),
    ));
    let owner_slot = Arc::new(tokio::sync::Semaphore::new(1));
    let tally = Arc::new(Tally::default());
    let next_episode = Arc::new(AtomicUsize::new(0));
    const ROUNDS: usize = 80;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (proxy, slot, tally, next_episode) = (
            proxy.clone(),
            owner_slot.clone(),
            tally.clone(),
            next_episode.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let tenant = format!("t{}", i % 4 + 1);
            let mut c = killable(&proxy, &tenant).await;
            for round in 0..ROUNDS {
                let permit = if (round + i) % 7 == 3 {
                    slot.try_acquire().ok()
                } else {
                    None
                };
                let Some(_permit) = permit else {
                    tally.reads.fetch_add(1, Ordering::Relaxed);
                    match read_tenant(&c.client, round + i).await {
                        Ok((t, n)) if t == tenant && n == "0" => {}
                        Ok((t, n)) => tally.wrong(format!(
                            "client {i} ({tenant}) read {t:?} with {n} temp objects"
                        )),
                        Err(e) => tally.wrong(format!("client {i} ({tenant}): {e}")),
                    }
                    continue;
                };
                // An owner episode.
                let episode = next_episode.fetch_add(1, Ordering::Relaxed) % 12;
                tally.episodes[episode].fetch_add(1, Ordering::Relaxed);
                let (kind, ending) = (episode % 3, episode / 3);
                let mine = format!("temp-of-c{i}");
                let sql = maker(kind, &mine);
                if let Err(e) = c.client.batch_execute(&sql).await {
                    tally.wrong(format!("client {i}: {sql}: {}", describe(&e)));
                    continue;
                }
                for k in 0..4 {
                    tally.owner_reads.fetch_add(1, Ordering::Relaxed);
                    let got = match read_tenant(&c.client, k).await {
                        Ok((t, _)) => t,
                        Err(e) => e,
                    };
                    if got != mine {
                        tally.wrong(format!(
                            "owner {i} ({tenant}, maker {kind}) read {got:?}, not its temp table"
                        ));
                    }
                    // Another client's transaction in between, most of the time.
                    tokio::task::yield_now().await;
                }
                match ENDINGS[ending] {
                    "discard temp" => {
                        exec(&c.client, "DISCARD TEMP").await;
                        match read_tenant(&c.client, round).await {
                            Ok((t, n)) if t == tenant && n == "0" => {}
                            other => {
                                tally.wrong(format!("owner {i} after DISCARD TEMP read {other:?}"))
                            }
                        }
                        continue;
                    }
                    "terminate" => {
                        let Killable { client, task } = c;
                        drop(client);
                        let _ = task.await;
                    }
                    "kill idle" => c.kill().await,
                    _ => {
                        exec(&c.client, "BEGIN; SELECT * FROM whoami").await;
                        c.kill().await;
                    }
                }
                c = killable(&proxy, &tenant).await;
                match read_tenant(&c.client, round).await {
                    Ok((t, n)) if t == tenant && n == "0" => {}
                    other => tally.wrong(format!(
                        "client {i} reconnected after '{}' read {other:?}",
                        ENDINGS[ending]
                    )),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let mut wrong = tally.wrong.lock().unwrap().clone();
    // Other clients' failures first: they are the isolation breaches.
    wrong.sort_by_key(|w| w.starts_with("owner"));
    let by_owners = wrong.iter().filter(|w| w.starts_with("owner")).count();
    let reads = tally.reads.load(Ordering::Relaxed);
    let owner_reads = tally.owner_reads.load(Ordering::Relaxed);
    let episodes: Vec<usize> = tally
        .episodes
        .iter()
        .map(|e| e.load(Ordering::Relaxed))
        .collect();
    eprintln!("{reads} reads, {owner_reads} owner reads, episodes {episodes:?}");
    assert!(
        wrong.is_empty(),
        "{} wrong of {} reads ({} of other clients, {by_owners} of owners), first: {:#?}",
        wrong.len(),
        reads + owner_reads,
        wrong.len() - by_owners,
        &wrong[..wrong.len().min(10)]
    );
    assert!(reads + owner_reads >= 1_000, "only {reads} + {owner_reads}");
    assert!(
        episodes.iter().all(|&n| n > 0),
        "every maker x ending ran: {episodes:?}"
    );
    match Arc::try_unwrap(proxy) {
        Ok(proxy) => proxy.stop().await.unwrap(),
        Err(_) => panic!("proxy still shared"),
    }
}

/// How a pinned client leaves in [`left_while_pinned`].
#[derive(Debug, Clone, Copy)]
enum Leave {
    Idle,
    InTransaction,
    InCopy,
}

/// A client holding a session advisory lock and a temp table disconnects abruptly; then no
/// lock, no open transaction and no temp table of it is left, from PostgreSQL's own view
/// and for the proxy's next clients (same tenant and another).
async fn left_while_pinned(how: Leave, key: i64) {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let table = format!("pinning_gone_{key}");
    let a = killable(&proxy, "t1").await;
    exec(
        &a.client,
        &format!("CREATE TEMP TABLE {table} (x int); SELECT pg_advisory_lock({key})"),
    )
    .await;
    let pid: String = value(&a.client, "SELECT pg_backend_pid()::text")
        .await
        .unwrap();
    let su = Arc::new(superuser().await);
    match how {
        Leave::Idle => {}
        Leave::InTransaction => {
            exec(&a.client, &format!("BEGIN; INSERT INTO {table} VALUES (1)")).await;
        }
        Leave::InCopy => {
            let sink = a
                .client
                .copy_in::<_, Bytes>(&format!("COPY {table} FROM STDIN"))
                .await
                .expect("COPY starts");
            let mut sink = Box::pin(sink);
            sink.send(Bytes::from_static(b"1\n2\n3\n"))
                .await
                .expect("copy data");
            // The server is inside the COPY.
            let su2 = su.clone();
            let sql = format!(
                "SELECT count(*)::text FROM pg_stat_activity WHERE pid = {pid} \
                 AND state = 'active' AND query LIKE 'COPY%'"
            );
            eventually(Duration::from_secs(10), "the backend runs the COPY", || {
                let (su, sql) = (su2.clone(), sql.clone());
                async move { value(&su, &sql).await.as_deref() == Some("1") }
            })
            .await;
            std::mem::forget(sink);
        }
    }
    a.kill().await;
    let gone = format!(
        "SELECT ((SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {key}) \
         + (SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state <> 'idle') \
         + (SELECT count(*) FROM pg_class WHERE relname = '{table}'))::text"
    );
    eventually(
        Duration::from_secs(10),
        &format!("{how:?}: lock, transaction and temp table gone"),
        || {
            let (su, gone) = (su.clone(), gone.clone());
            async move { value(&su, &gone).await.as_deref() == Some("0") }
        },
    )
    .await;
    // Anyone may take the lock now.
    assert_eq!(
        value(&su, &format!("SELECT pg_try_advisory_lock({key})::text"))
            .await
            .as_deref(),
        Some("true"),
        "{how:?}"
    );
    exec(&su, &format!("SELECT pg_advisory_unlock({key})")).await;
    for tenant in ["t1", "t2", "t1"] {
        let c = client(&proxy, tenant).await;
        assert_eq!(
            value(&c, TEMP_OBJECTS).await.as_deref(),
            Some("0"),
            "{how:?}: {tenant}"
        );
        assert_eq!(
            error_of(&c, &format!("SELECT * FROM {table}")).await.0,
            "42P01",
            "{how:?}: {tenant}"
        );
        assert_eq!(
            value(&c, &format!("SELECT pg_try_advisory_lock({key})::text"))
                .await
                .as_deref(),
            Some("true"),
            "{how:?}: {tenant} takes the lock"
        );
        assert_eq!(
            value(&c, &format!("SELECT pg_advisory_unlock({key})::text"))
                .await
                .as_deref(),
            Some("true")
        );
        assert_eq!(tenant_of(&c).await.as_deref(), Some(tenant));
    }
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_pinned_client_that_leaves_idle_leaves_nothing() {
    left_while_pinned(Leave::Idle, 7_150_001).await;
}

#[tokio::test]
async fn a_pinned_client_that_leaves_mid_transaction_leaves_nothing() {
    left_while_pinned(Leave::InTransaction, 7_150_002).await;
}

#[tokio::test]
async fn a_pinned_client_that_leaves_mid_copy_leaves_nothing() {
    left_while_pinned(Leave::InCopy, 7_150_003).await;
}

/// Pinned and why, in `SHOW CLIENTS` and `/metrics`, and back to nothing when the session
/// objects are gone.
#[tokio::test]
async fn pins_show_in_the_console_and_the_metrics() {
    let proxy = OpsProxy::start(ProxyOptions::default().pool_size(2));
    let a = client(&proxy, "t1").await;
    let admin = proxy.admin().await;
    let series =
        |reason: &str| format!("pgtenant_clients_pinned{{tenant=\"t1\",reason=\"{reason}\"}}");
    async fn pinned_as(admin: &Client, want: &str) -> bool {
        let clients = rows(admin, "SHOW CLIENTS").await;
        row_where(&clients, "tenant", "t1").get("pinned") == Some(want)
    }
    let check = |pinned: &'static str, lock: f64, temp: f64| {
        let (admin, proxy, series) = (&admin, &proxy, &series);
        async move {
            let text = proxy.scrape().await;
            pinned_as(admin, pinned).await
                && sample(&text, &series("advisory_lock")) == Some(lock)
                && sample(&text, &series("temp")) == Some(temp)
        }
    };
    assert!(check("", 0.0, 0.0).await, "nothing pinned at first");
    exec(&a, "SELECT pg_advisory_lock(7150010)").await;
    eventually(Duration::from_secs(5), "pinned = advisory_lock", || {
        check("advisory_lock", 1.0, 0.0)
    })
    .await;
    exec(&a, "CREATE TEMP TABLE pinning_visible (x int)").await;
    eventually(
        Duration::from_secs(5),
        "pinned = temp+advisory_lock",
        || check("temp+advisory_lock", 1.0, 1.0),
    )
    .await;
    exec(&a, "DISCARD TEMP").await;
    eventually(
        Duration::from_secs(5),
        "pinned = advisory_lock again",
        || check("advisory_lock", 1.0, 0.0),
    )
    .await;
    exec(&a, "SELECT pg_advisory_unlock_all()").await;
    eventually(Duration::from_secs(5), "not pinned", || check("", 0.0, 0.0)).await;
    // Other tenants' series are listed, at 0.
    let text = proxy.scrape().await;
    assert_eq!(
        sample(
            &text,
            "pgtenant_clients_pinned{tenant=\"t2\",reason=\"advisory_lock\"}"
        ),
        Some(0.0)
    );
}

const PIN_REFUSED_MESSAGE: &str = "too many pinned clients for this tenant (max_pinned_clients)";

/// `max_pinned_clients = 1`: a second client of the tenant that would pin gets 53400 (and
/// no temp table), another tenant still pins, and the slot is free again once the first
/// client unpins.
#[tokio::test]
async fn max_pinned_clients_refuses_one_more_with_53400() {
    let proxy = TestProxy::start_with(
        ProxyOptions::default()
            .pool_size(4)
            .proxy_line("max_pinned_clients = 1"),
    );
    let a = client(&proxy, "t1").await;
    let b = client(&proxy, "t1").await;
    let c = client(&proxy, "t2").await;
    exec(&a, "CREATE TEMP TABLE x ()").await;
    let refused = ("53400".to_string(), PIN_REFUSED_MESSAGE.to_string());
    assert_eq!(error_of(&b, "CREATE TEMP TABLE x ()").await, refused);
    assert_eq!(value(&b, TEMP_OBJECTS).await.as_deref(), Some("0"));
    assert_eq!(
        error_of(&b, "SELECT pg_advisory_lock(7150020)").await,
        refused
    );
    // Inside a transaction: the error aborts it, as a real one would.
    exec(&b, "BEGIN").await;
    assert_eq!(error_of(&b, "LISTEN pinning_chan").await, refused);
    assert_eq!(error_of(&b, "SELECT 1").await.0, "25P02");
    exec(&b, "ROLLBACK").await;
    assert_eq!(tenant_of(&b).await.as_deref(), Some("t1"));
    // Another tenant's clients count on their own.
    exec(&c, "CREATE TEMP TABLE x ()").await;
    assert_eq!(value(&c, TEMP_OBJECTS).await.as_deref(), Some("1"));
    // a unpins: b may pin now.
    exec(&a, "DISCARD TEMP").await;
    let b = &b;
    eventually(
        Duration::from_secs(5),
        "b may pin once a unpinned",
        || async move { b.batch_execute("CREATE TEMP TABLE x ()").await.is_ok() },
    )
    .await;
    assert_eq!(value(b, TEMP_OBJECTS).await.as_deref(), Some("1"));
    proxy.stop().await.unwrap();
}

/// The same cap for statements sent with the extended protocol (tokio-postgres' `execute`
/// and `query` use Parse/Bind/Execute).
#[tokio::test]
async fn max_pinned_clients_holds_in_the_extended_protocol() {
    let proxy = TestProxy::start_with(
        ProxyOptions::default()
            .pool_size(4)
            .proxy_line("max_pinned_clients = 1"),
    );
    let a = client(&proxy, "t1").await;
    let b = client(&proxy, "t1").await;
    exec(&a, "CREATE TEMP TABLE x ()").await;
    let e = b
        .execute("CREATE TEMP TABLE y (a int)", &[])
        .await
        .expect_err("refused");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {}", describe(&e)));
    assert_eq!(
        (db.code().code(), db.message()),
        ("53400", PIN_REFUSED_MESSAGE)
    );
    assert_refusal_is_pgtenants(db);
    assert_eq!(value(&b, TEMP_OBJECTS).await.as_deref(), Some("0"));
    // The simple protocol's refusal is built by pgtenant too.
    let e = b
        .batch_execute("CREATE TEMP TABLE y (a int)")
        .await
        .expect_err("refused");
    assert_refusal_is_pgtenants(e.as_db_error().expect("a server error"));
    proxy.stop().await.unwrap();
}

/// A refusal is pgtenant's own ErrorResponse: ERROR 53400 with its hint, and nothing that
/// shows how it was raised (no PL/pgSQL CONTEXT).
fn assert_refusal_is_pgtenants(db: &tokio_postgres::error::DbError) {
    assert_eq!(db.severity(), "ERROR");
    assert_eq!(db.where_(), None, "the refusal shows internals: {db:?}");
    assert!(
        db.hint().is_some_and(|h| h.contains("max_pinned_clients")),
        "{db:?}"
    );
}

/// psycopg 3's two-phase commit (`tpc_begin`, `tpc_prepare`, `tpc_commit`, `tpc_recover`,
/// `tpc_rollback`) through transaction mode on a pool of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_two_phase_commit_works_in_transaction_mode() {
    let server = own_pg_with(LocalPgOptions::default().conf("max_prepared_transactions = 5"));
    let direct = conn_str_to(&server, "app", "app_pw", "app");
    let app = connect(&direct).await.expect("direct connection");
    exec(
        &app,
        "CREATE TABLE public.tpc_items (id int PRIMARY KEY, note text)",
    )
    .await;
    let proxy = TestProxy::start_on(
        ProxyOptions::default().pool_size(1),
        server.host(),
        server.port(),
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/tpc.py");
    let port = proxy.port().to_string();
    let out = tokio::task::block_in_place(|| {
        let mut cmd = Command::new("python3");
        for var in pgtenant::localpg::LIBPQ_ENV {
            cmd.env_remove(var);
        }
        // scripts/test's psycopg when PYTHONPATH names none (as root: /opt/pgtenant).
        let pyclients = std::env::var("PGTENANT_PYCLIENTS_DIR")
            .unwrap_or_else(|_| "/opt/pgtenant/pyclients".into());
        if std::env::var_os("PYTHONPATH").is_none() && std::path::Path::new(&pyclients).is_dir() {
            cmd.env("PYTHONPATH", pyclients);
        }
        cmd.arg(script)
            .args(["--port", &port])
            .output()
            .expect("python3 runs")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("tpc ok"),
        "tpc.py failed (psycopg 3 on PYTHONPATH?):\n{stdout}\n{stderr}"
    );
    // PostgreSQL's own word.
    assert_eq!(
        value(
            &app,
            "SELECT string_agg(id || ':' || note, ',' ORDER BY id) FROM public.tpc_items"
        )
        .await
        .as_deref(),
        Some("1:committed")
    );
    assert_eq!(
        value(&app, "SELECT count(*)::text FROM pg_prepared_xacts")
            .await
            .as_deref(),
        Some("0")
    );
    proxy.stop().await.unwrap();
}

/// A superuser server login: a client's `SET SESSION AUTHORIZATION` is its own. Its
/// observations match a direct session's; the other tenant's client on the same (only)
/// server connection, and every later client, runs as the login.
#[tokio::test]
async fn session_authorization_stays_with_its_client() {
    let pg = pg();
    let extra = format!(
        "[backends.su]\nhost = \"{}\"\nport = {}\ndatabase = \"app\"\nuser = \"postgres\"\n\
         password = \"postgres\"\npool_size = 1\n\n\
         [tenants.su1]\nbackend = \"su\"\nsearch_path = [\"t1\", \"public\"]\n\n\
         [tenants.su2]\nbackend = \"su\"\nsearch_path = [\"t2\", \"public\"]\n",
        pg.host(),
        pg.port()
    );
    let proxy = TestProxy::start_with(ProxyOptions::default().extra(&extra));
    let a = client(&proxy, "su1").await;
    let b = client(&proxy, "su2").await;
    // The same session straight to PostgreSQL: the login, the tenant's search_path.
    let direct = connect(&format!(
        "{} options='-c search_path=t1,public'",
        pg_conn_str("postgres", "postgres", "app")
    ))
    .await
    .expect("direct superuser connection");
    const WHO: &str = "SELECT session_user || '/' || current_user || '/' || \
                       current_setting('is_superuser') || '/' || (SELECT tenant FROM whoami)";
    // B runs as the login on the one server connection between A's steps (each step ends
    // its transaction, but the failed one: B waits for its ROLLBACK then).
    let login = Some("postgres/postgres/on/t2".to_string());
    let script = [
        "SET SESSION AUTHORIZATION app",
        "SELECT 1",
        "BEGIN; SELECT 2; COMMIT",
        "SET ROLE vs_role",
        "BEGIN; SET SESSION AUTHORIZATION postgres; ROLLBACK",
        "BEGIN; SET SESSION AUTHORIZATION postgres; SELECT 1/0",
        "ROLLBACK",
        "SET SESSION AUTHORIZATION postgres; SELECT 1/0",
        "RESET ROLE",
        "RESET SESSION AUTHORIZATION",
        "SET SESSION AUTHORIZATION app",
        "RESET ALL",
        "DISCARD ALL",
        "SET SESSION AUTHORIZATION app",
    ];
    for step in script {
        let want = direct
            .simple_query(step)
            .await
            .map(|_| ())
            .map_err(|e| describe(&e));
        let got = a
            .simple_query(step)
            .await
            .map(|_| ())
            .map_err(|e| describe(&e));
        assert_eq!(got, want, "{step}");
        let in_failed_transaction = step.starts_with("BEGIN") && step.ends_with("1/0");
        if !in_failed_transaction {
            assert_eq!(value(&b, WHO).await, login, "B after A's {step}");
        }
        let who = |c| async move { simple_value(c, WHO).await.map_err(|e| describe(&e)) };
        assert_eq!(who(&a).await, who(&direct).await, "A after {step}");
    }
    // A leaves as `app`: every later client of either tenant runs as the login.
    assert_eq!(value(&a, WHO).await.as_deref(), Some("app/app/off/t1"));
    drop(a);
    for tenant in ["su2", "su1", "su2"] {
        let c = client(&proxy, tenant).await;
        let t = if tenant == "su1" { "t1" } else { "t2" };
        assert_eq!(
            value(&c, WHO).await,
            Some(format!("postgres/postgres/on/{t}")),
            "{tenant} after A left"
        );
    }
    proxy.stop().await.unwrap();
}

/// A client with a temp table that shadows a tenant table reads it with a statement it
/// prepares afterwards, as on a direct connection, even when another client of its tenant
/// prepared the same text on that server connection before (the proxy shares the server's
/// copy of a statement among a tenant's clients; PostgreSQL does not re-plan it for a new
/// temp table once the backend has a temp schema).
#[tokio::test]
async fn a_statement_prepared_after_a_temp_table_reads_it() {
    // Straight to PostgreSQL first: what the client must see.
    let d = crate::support::clients::direct("t1").await;
    exec(&d, "CREATE TEMP TABLE scratch (); DISCARD TEMP").await;
    let early = d.prepare("SELECT tenant FROM whoami").await.unwrap();
    exec(
        &d,
        "CREATE TEMP TABLE whoami AS SELECT 'temp-a'::text AS tenant",
    )
    .await;
    let direct_fresh: String = d
        .query_one("SELECT tenant FROM whoami", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(direct_fresh, "temp-a");
    drop(early);

    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let a = client(&proxy, "t1").await;
    let b = client(&proxy, "t1").await;
    // The server connection has had a temp schema (an earlier client's temp table).
    exec(&a, "CREATE TEMP TABLE scratch (); DISCARD TEMP").await;
    let got: String = b
        .query_one("SELECT tenant FROM whoami", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, "t1");
    exec(
        &a,
        "CREATE TEMP TABLE whoami AS SELECT 'temp-a'::text AS tenant",
    )
    .await;
    assert_eq!(
        tenant_of(&a).await.as_deref(),
        Some("temp-a"),
        "simple query"
    );
    let got: String = a
        .query_one("SELECT tenant FROM whoami", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        got, "temp-a",
        "a statement a prepared after its CREATE TEMP TABLE"
    );
    exec(&a, "DISCARD TEMP").await;
    proxy.stop().await.unwrap();
}

/// Spellings of session objects the scanner may miss: each must pin its client (it keeps
/// reading its own object across transactions) and reach no other client of its tenant.
async fn pins_like_direct(make: &str, read: &str, mine: &str, others: &str) {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let a = client(&proxy, "t1").await;
    let b = client(&proxy, "t1").await;
    let c = client(&proxy, "t1").await;
    exec(&a, make).await;
    for round in 0..10 {
        assert_eq!(
            value(&a, read).await.as_deref(),
            Some(mine),
            "{make}: a, round {round}"
        );
        assert_eq!(
            value(&b, read).await.as_deref(),
            Some(others),
            "{make}: b, round {round}"
        );
        assert_eq!(
            value(&c, read).await.as_deref(),
            Some(others),
            "{make}: c, round {round}"
        );
    }
    drop(a);
    for _ in 0..4 {
        let d = client(&proxy, "t1").await;
        assert_eq!(
            value(&d, read).await.as_deref(),
            Some(others),
            "{make}: after a left"
        );
    }
}

#[tokio::test]
async fn select_into_pg_temp_pins() {
    pins_like_direct(
        "SELECT 'temp-a'::text AS tenant INTO pg_temp.whoami",
        "SELECT tenant FROM whoami",
        "temp-a",
        "t1",
    )
    .await;
}

#[tokio::test]
async fn create_table_as_in_quoted_pg_temp_pins() {
    pins_like_direct(
        "CREATE TABLE \"pg_temp\".whoami AS SELECT 'temp-a'::text AS tenant",
        "SELECT tenant FROM whoami",
        "temp-a",
        "t1",
    )
    .await;
}

#[tokio::test]
async fn a_quoted_advisory_lock_call_pins() {
    pins_like_direct(
        "SELECT \"pg_advisory_lock\"(7150030)",
        "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND objid = 7150030 \
         AND pid = pg_backend_pid()",
        "1",
        "0",
    )
    .await;
}
