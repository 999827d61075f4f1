//! Named prepared statements in transaction mode: real drivers (tokio-postgres, pgbench,
//! psycopg 3, asyncpg) with more clients than server connections and several tenants.

use std::process::Command;

use crate::support::{connect, describe, pg, pg_conn_str, Naming, ProxyOptions, TestProxy};

const TENANTS: [(&str, i32); 4] = [("t1", 1), ("t2", 2), ("t3", 3), ("t4", 4)];

#[tokio::test]
async fn tokio_postgres_statements_survive_changing_connections() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (tenant, n) = TENANTS[i % 4];
        let conn = proxy.connect_str("app", Naming::Options, tenant);
        tasks.push(tokio::spawn(async move {
            let client = connect(&conn).await.expect("connect");
            let stmt = client
                .prepare("SELECT tenant, n FROM whoami WHERE n = $1")
                .await
                .expect("prepare");
            let mut errors = Vec::new();
            for round in 0..150 {
                let result = if round % 3 == 2 {
                    // An explicit transaction around the prepared statement.
                    async {
                        client.batch_execute("BEGIN").await?;
                        let rows = client.query(&stmt, &[&n]).await?;
                        client.batch_execute("COMMIT").await?;
                        Ok::<_, tokio_postgres::Error>(rows)
                    }
                    .await
                } else if round % 10 == 0 {
                    // Prepared, used and closed again (tokio-postgres closes on drop).
                    client
                        .query("SELECT tenant, n FROM whoami WHERE n = $1", &[&n])
                        .await
                } else {
                    client.query(&stmt, &[&n]).await
                };
                match result {
                    Ok(rows) if rows.len() == 1 && rows[0].get::<_, String>(0) == tenant => {}
                    Ok(rows) => errors.push(format!(
                        "{tenant}: wrong rows {:?}",
                        rows.iter()
                            .map(|r| r.get::<_, String>(0))
                            .collect::<Vec<_>>()
                    )),
                    Err(e) => errors.push(format!("{tenant}: {}", describe(&e))),
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

#[tokio::test]
async fn same_text_in_two_tenants_gets_each_its_own_statement() {
    let admin = connect(&pg_conn_str("app", "app_pw", "app")).await.unwrap();
    admin
        .batch_execute(
            "CREATE TABLE t1.shape (a int, b text); INSERT INTO t1.shape VALUES (1, 'one');
             CREATE TABLE t2.shape (x text, y bool, z numeric); INSERT INTO t2.shape VALUES ('two', true, 2.5);",
        )
        .await
        .unwrap();
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let c1 = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    let c2 = proxy.connect("app", Naming::Options, "t2").await.unwrap();
    for _ in 0..5 {
        let s1 = c1.prepare("SELECT * FROM shape").await.unwrap();
        let s2 = c2.prepare("SELECT * FROM shape").await.unwrap();
        let names = |s: &tokio_postgres::Statement| {
            s.columns()
                .iter()
                .map(|c| c.name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&s1), ["a", "b"]);
        assert_eq!(names(&s2), ["x", "y", "z"]);
        let r1 = c1.query(&s1, &[]).await.unwrap();
        let r2 = c2.query(&s2, &[]).await.unwrap();
        assert_eq!(
            (r1[0].get::<_, i32>(0), r1[0].get::<_, String>(1)),
            (1, "one".to_string())
        );
        assert_eq!(
            (r2[0].get::<_, String>(0), r2[0].get::<_, bool>(1)),
            ("two".to_string(), true)
        );
    }
}

#[tokio::test]
async fn server_statements_stay_under_the_lru_cap() {
    let proxy = TestProxy::start_with(
        ProxyOptions::default()
            .pool_size(1)
            .proxy_line("max_prepared_statements = 10"),
    );
    let client = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    for i in 0..300 {
        let sql = format!("SELECT {i}::int + $1");
        let stmt = client.prepare(&sql).await.unwrap();
        let row = client.query_one(&stmt, &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        if i % 2 == 0 {
            drop(stmt); // the rest stay open on the client side
        } else {
            std::mem::forget(stmt);
        }
    }
    let on_server: i64 = client
        .query_typed("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert!(
        on_server <= 11,
        "{on_server} statements on the server connection"
    );
}

#[tokio::test]
async fn sql_deallocate_discard_and_prepare() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let client = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    let stmt = client.prepare("SELECT n FROM whoami").await.unwrap();
    assert_eq!(
        client.query_one(&stmt, &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    client.batch_execute("DEALLOCATE ALL").await.unwrap();
    let err = client.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("26000"),
        "{}",
        describe(&err)
    );
    let stmt = client.prepare("SELECT n FROM whoami").await.unwrap();
    client.batch_execute("DISCARD ALL").await.unwrap();
    let err = client.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("26000"),
        "{}",
        describe(&err)
    );
    // SQL PREPARE works (the client is pinned to its server connection meanwhile).
    client
        .batch_execute("PREPARE p AS SELECT 1; EXECUTE p; DEALLOCATE p")
        .await
        .unwrap();
    // The connection is still good, in its own tenant.
    let n: i32 = client
        .query_one("SELECT n FROM whoami", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// Runs `pgbench -M mode` for each tenant at once; a custom script checks every read is the
/// tenant's own (a wrong read divides by zero and fails the run).
fn pgbench_all_tenants(proxy: &TestProxy, mode: &str) {
    let bin = pg().bin_dir().join("pgbench");
    let script = std::env::temp_dir().join(format!(
        "pgtenant-pgbench-{}-{mode}.sql",
        std::process::id()
    ));
    let mut children = Vec::new();
    for (tenant, n) in TENANTS {
        let path = script.with_extension(format!("{tenant}.sql"));
        std::fs::write(
            &path,
            format!("SELECT n AS got FROM whoami \\gset\n\\if :got != {n}\nSELECT 1/0;\n\\endif\nBEGIN;\nSELECT tenant FROM whoami WHERE n = :got;\nEND;\n"),
        )
        .unwrap();
        let child = Command::new(&bin)
            // One thread per client: pgbench prepares synchronously (PQprepare), so a thread
            // that serves several clients blocks all of them while one waits for a server
            // connection, even the one holding a connection inside BEGIN ... END.
            .args(["-n", "-M", mode, "-c", "4", "-j", "4", "-t", "100", "-f"])
            .arg(&path)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &proxy.port().to_string(),
                "-U",
                "app",
                "app",
            ])
            .env("PGPASSWORD", "secret")
            .env("PGOPTIONS", format!("-c tenant={tenant}"))
            .output_async(path);
        children.push((tenant, child));
    }
    for (tenant, child) in children {
        let (out, path) = child.wait();
        let _ = std::fs::remove_file(path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "pgbench -M {mode} for {tenant} failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("number of failed transactions: 0") || !stdout.contains("failed"),
            "{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_and_extended() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let modes = std::env::var("PGBENCH_MODES").unwrap_or("prepared,extended,simple".into());
    for mode in modes.split(',') {
        let proxy = &proxy;
        tokio::task::block_in_place(|| pgbench_all_tenants(proxy, mode));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_drivers_psycopg_and_asyncpg() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(2));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/drivers.py");
    let port = proxy.port().to_string();
    let out = tokio::task::block_in_place(|| {
        Command::new("python3")
            .arg(script)
            .args(["--port", &port])
            .output()
            .expect("python3 runs")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "drivers.py failed (scripts/test installs psycopg and asyncpg):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("psycopg ok") && stdout.contains("asyncpg ok"),
        "{stdout}"
    );
}

/// A child process whose output is collected later.
trait OutputAsync {
    fn output_async(&mut self, keep: std::path::PathBuf) -> Pending;
}

struct Pending(std::process::Child, std::path::PathBuf);

impl OutputAsync for Command {
    fn output_async(&mut self, keep: std::path::PathBuf) -> Pending {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("pgbench starts");
        Pending(child, keep)
    }
}

impl Pending {
    fn wait(self) -> (std::process::Output, std::path::PathBuf) {
        let out = self.0.wait_with_output().expect("pgbench finishes");
        (out, self.1)
    }
}
