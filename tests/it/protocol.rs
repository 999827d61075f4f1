//! Protocol behaviour through the proxy, compared with PostgreSQL itself: simple and
//! extended (unnamed) queries, COPY both ways (tokio-postgres and `psql \copy`), a 20 MB
//! value, notices, a LATIN1 client, errors inside transactions, and which session state a
//! client keeps (tracked parameters, session mode) or must never see (another client's).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt};
use md5::{Digest, Md5};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::support::clients::{
    connect_with_notices, direct, direct_str, outcome, psql_cmd, render, run_psql, superuser,
};
use crate::support::{describe, simple_value, Naming, ProxyOptions, TestProxy};
use crate::support::{tenant_client as proxy_client, value};

/// Runs each statement on both clients and asserts the outcomes are the same.
async fn assert_same(proxied: &Client, direct: &Client, statements: &[&str]) {
    for sql in statements {
        let via_proxy = outcome(proxied, sql).await;
        let straight = outcome(direct, sql).await;
        assert_eq!(via_proxy, straight, "{sql:?}: proxy vs direct");
    }
}

#[tokio::test]
async fn simple_queries_match_direct() {
    let proxy = TestProxy::start_with(ProxyOptions::default());
    let proxied = proxy_client(&proxy, "t1").await;
    let direct = direct("t1").await;
    assert_same(
        &proxied,
        &direct,
        &[
            "SELECT tenant, n FROM whoami",
            "SELECT 1 AS a, 'x' AS b, NULL AS c, E'tab\\there' AS d",
            "SELECT g, repeat('y', g) FROM generate_series(1, 200) g",
            // Two result sets from one Query.
            "SELECT 1; SELECT 2",
            "SELECT 1 AS one; SELECT 'two' AS two, 2; VALUES (3), (4)",
            // Empty queries.
            "",
            ";",
            "  ;  ; ",
            // A command tag with a row count, and one without rows.
            "CREATE TEMP TABLE simple_tmp (x int); INSERT INTO simple_tmp VALUES (1), (2); \
             DROP TABLE simple_tmp",
            "SELECT 1 WHERE false",
            // An error stops the rest of the batch; the next query is fine.
            "SELECT 1; SELECT 1/0; SELECT 3",
            "SELECT 'after the error'",
            "SELECT no_such_column FROM whoami",
            "SELECT 'still fine'",
        ],
    )
    .await;
    let both = proxied.simple_query("SELECT 1; SELECT 2").await.unwrap();
    assert_eq!(
        render(&both),
        [
            "columns: ?column?",
            "row: 1",
            "complete: 1",
            "columns: ?column?",
            "row: 2",
            "complete: 1"
        ]
    );
}

/// The row of the typed query below, as text.
fn typed_row(row: &tokio_postgres::Row) -> String {
    format!(
        "{:?}",
        (
            row.get::<_, i32>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2),
            row.get::<_, f64>(3),
            row.get::<_, bool>(4),
            row.get::<_, i32>(5),
            row.get::<_, bool>(6),
            row.get::<_, i32>(7),
            row.get::<_, Vec<u8>>(8),
            row.get::<_, Option<String>>(9),
        )
    )
}

const TYPED_SQL: &str = "SELECT $1::int4 + 1, $2::int8 * 2, $3::text || '!', $4::float8 / 2, \
                         NOT $5::bool, length($6::bytea), $7::int4 IS NULL, \
                         array_length($8::int4[], 1), $6::bytea, $9::text";

async fn typed_query(client: &Client) -> Result<Vec<String>, String> {
    let bytes: Vec<u8> = vec![0, 1, 2, 0xfe, 0xff];
    let none: Option<i32> = None;
    let array = vec![1i32, 2, 3];
    let text_null: Option<&str> = None;
    let params: [(&(dyn ToSql + Sync), Type); 9] = [
        (&41i32, Type::INT4),
        (&(1i64 << 40), Type::INT8),
        (&"héllo ☃ 'quoted' \\", Type::TEXT),
        (&3.5f64, Type::FLOAT8),
        (&true, Type::BOOL),
        (&bytes, Type::BYTEA),
        (&none, Type::INT4),
        (&array, Type::INT4_ARRAY),
        (&text_null, Type::TEXT),
    ];
    let rows = client
        .query_typed(TYPED_SQL, &params)
        .await
        .map_err(|e| describe(&e))?;
    Ok(rows.iter().map(typed_row).collect())
}

async fn typed_error(client: &Client, sql: &str) -> Option<String> {
    let err = client
        .query_typed(sql, &[(&7i32, Type::INT4)])
        .await
        .err()?;
    Some(
        err.code()
            .map_or_else(|| describe(&err), |c| c.code().into()),
    )
}

async fn many_rows(client: &Client) -> Vec<(i32, String)> {
    client
        .query_typed("SELECT g, 'v' || g FROM generate_series(1, 2000) g", &[])
        .await
        .expect("2000 rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn extended_unnamed_queries_match_direct() {
    let proxy = TestProxy::start_with(ProxyOptions::default());
    let proxied = proxy_client(&proxy, "t2").await;
    let direct = direct("t2").await;

    let via_proxy = typed_query(&proxied).await;
    assert_eq!(via_proxy, typed_query(&direct).await);
    assert_eq!(
        via_proxy.unwrap(),
        [
            "(42, 2199023255552, \"héllo ☃ 'quoted' \\\\!\", 1.75, false, 5, true, 3, \
             [0, 1, 2, 254, 255], None)"
        ]
    );
    assert_eq!(many_rows(&proxied).await, many_rows(&direct).await);

    // Errors in the extended protocol, then the client goes on.
    for sql in ["SELECT $1::int4 / 0", "SELECT $1::int4 FROM no_such_table"] {
        let got = typed_error(&proxied, sql).await;
        assert_eq!(got, typed_error(&direct, sql).await, "{sql}");
        assert!(got.is_some(), "{sql} must fail");
    }
    let tenant = proxied
        .query_typed(
            "SELECT tenant FROM whoami WHERE n = $1",
            &[(&2i32, Type::INT4)],
        )
        .await
        .expect("query after errors");
    assert_eq!(tenant[0].get::<_, String>(0), "t2");

    // Pipelined: many unnamed statements in flight at once on one connection.
    let queries = (0..20).map(|i| {
        let proxied = &proxied;
        async move {
            let rows = proxied
                .query_typed(
                    "SELECT $1::int4 * 10, tenant FROM whoami",
                    &[(&i, Type::INT4)],
                )
                .await
                .map_err(|e| describe(&e))?;
            Ok::<_, String>((rows[0].get::<_, i32>(0), rows[0].get::<_, String>(1)))
        }
    });
    let results = futures_util::future::join_all(queries).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(
            r,
            Ok((i as i32 * 10, "t2".to_string())),
            "pipelined query {i}"
        );
    }
}

/// Count and an md5 over every row, in id order (NULLs visible).
const FINGERPRINT: &str = "SELECT count(*)::text || ':' || coalesce(md5(string_agg(\
                           id::text || '=' || coalesce(val, '<null>'), ',' ORDER BY id)), '')";

async fn fingerprint(client: &Client, table: &str) -> String {
    value(client, &format!("{FINGERPRINT} FROM {table}"))
        .await
        .expect("fingerprint")
}

async fn copy_out(client: &Client, sql: &str) -> Vec<u8> {
    let stream = client
        .copy_out(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    let chunks: Vec<Bytes> = stream
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    chunks.concat()
}

/// tokio-postgres's `copy_in`/`copy_out` prepare a named statement first, then run it:
/// once in autocommit (prepare and execute may land on different server connections) and
/// once inside an explicit transaction.
#[tokio::test]
async fn copy_through_tokio_postgres_matches_direct() {
    let proxy = TestProxy::start_with(ProxyOptions::default());
    let proxied = proxy_client(&proxy, "t1").await;
    let direct = direct("t1").await;

    for sql in [
        "COPY copy_src TO STDOUT",
        "COPY (SELECT * FROM copy_src ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY copy_src TO STDOUT WITH (FORMAT binary)",
    ] {
        let via_proxy = copy_out(&proxied, sql).await;
        proxied.batch_execute("BEGIN").await.unwrap();
        let in_transaction = copy_out(&proxied, sql).await;
        proxied.batch_execute("COMMIT").await.unwrap();
        let straight = copy_out(&direct, sql).await;
        assert!(
            in_transaction == straight,
            "{sql}: COPY output differs in a transaction"
        );
        assert!(
            via_proxy.len() > 100_000,
            "{sql}: {} bytes",
            via_proxy.len()
        );
        assert!(via_proxy == straight, "{sql}: COPY output differs");
    }
    let text = copy_out(&direct, "COPY copy_src TO STDOUT").await;
    assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 10_000);

    let sink = proxied
        .copy_in("COPY copy_dst_tp FROM STDIN")
        .await
        .unwrap_or_else(|e| panic!("copy_in: {}", describe(&e)));
    futures_util::pin_mut!(sink);
    for chunk in text.chunks(8192) {
        sink.send(Bytes::copy_from_slice(chunk))
            .await
            .unwrap_or_else(|e| panic!("sending COPY data: {}", describe(&e)));
    }
    let rows = sink
        .finish()
        .await
        .unwrap_or_else(|e| panic!("finishing COPY: {}", describe(&e)));
    assert_eq!(rows, 10_000);
    let expected = fingerprint(&direct, "copy_src").await;
    assert!(expected.starts_with("10000:"), "{expected}");
    assert_eq!(fingerprint(&direct, "copy_dst_tp").await, expected);
    assert_eq!(fingerprint(&proxied, "copy_dst_tp").await, expected);

    // A COPY the server rejects mid-stream: the error reaches the client, which goes on.
    proxied.batch_execute("BEGIN").await.unwrap();
    let sink = proxied
        .copy_in("COPY copy_dst_tp FROM STDIN")
        .await
        .expect("copy_in");
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\tok\nnot-a-number\tbad\n"))
        .await
        .ok();
    let err = sink.finish().await.expect_err("bad COPY data must fail");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("22P02"),
        "{}",
        describe(&err)
    );
    proxied.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        value(&proxied, "SELECT tenant FROM whoami")
            .await
            .as_deref(),
        Some("t1")
    );
}

/// tokio-postgres's `copy_in` sends Bind, Execute, Sync, CopyData..., CopyDone, Sync.
/// PostgreSQL ignores a Sync that arrives during COPY IN, so one ReadyForQuery answers
/// both. Afterwards the client's server connection must go back to the pool (a second
/// client on the pool of 1 gets it), and the client itself goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_in_releases_the_server_connection() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let a = proxy_client(&proxy, "t1").await;
    let sink = a
        .copy_in("COPY copy_release FROM STDIN")
        .await
        .unwrap_or_else(|e| panic!("copy_in: {}", describe(&e)));
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\ta\n2\tb\n3\tc\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);

    let b = proxy_client(&proxy, "t2").await;
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        simple_value(&b, "SELECT tenant FROM whoami"),
    )
    .await
    .expect("after the COPY, a second client on the pool of 1 got no connection in 10s");
    assert_eq!(got.unwrap().as_deref(), Some("t2"));
    let count = tokio::time::timeout(
        Duration::from_secs(10),
        simple_value(&a, "SELECT count(*) FROM copy_release"),
    )
    .await
    .expect("the copying client's next query got an answer");
    match count {
        Ok(v) => assert_eq!(v.as_deref(), Some("3")),
        Err(e) => panic!("the copying client's next query: {}", describe(&e)),
    }
}

#[tokio::test]
async fn copy_through_psql_matches_direct() {
    let proxy = TestProxy::start_with(ProxyOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let via_proxy_file = dir.path().join("proxy.tsv");
    let direct_file = dir.path().join("direct.tsv");
    let url = proxy.url("app", Naming::Options, "t1");

    for (conn, file) in [
        (url.as_str(), &via_proxy_file),
        (&direct_str("t1"), &direct_file),
    ] {
        let mut cmd = psql_cmd(conn);
        cmd.arg("-c")
            .arg(format!("\\copy copy_src TO '{}'", file.display()));
        let out = run_psql(cmd).await;
        assert!(
            out.status.success(),
            "psql \\copy out: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "COPY 10000");
    }
    let copied = std::fs::read(&via_proxy_file).unwrap();
    assert!(
        copied == std::fs::read(&direct_file).unwrap(),
        "\\copy output differs"
    );

    let mut cmd = psql_cmd(&url);
    cmd.arg("-c").arg(format!(
        "\\copy copy_dst_psql FROM '{}'",
        via_proxy_file.display()
    ));
    let out = run_psql(cmd).await;
    assert!(
        out.status.success(),
        "psql \\copy in: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "COPY 10000");
    let direct = direct("t1").await;
    assert_eq!(
        fingerprint(&direct, "copy_dst_psql").await,
        fingerprint(&direct, "copy_src").await
    );
}

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `len` bytes of printable ASCII that do not repeat in any short period.
fn big_text(len: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b' ' + (x % 95) as u8) as char
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabyte_value_round_trips() {
    const LEN: usize = 20 * 1024 * 1024;
    let proxy = TestProxy::start_with(ProxyOptions::default());
    let proxied = proxy_client(&proxy, "t3").await;
    let direct = direct("t3").await;
    let up = big_text(LEN, 0x5eed);
    let down = big_text(LEN, 0xd0d0);

    // Up through the proxy (a Bind parameter), down both ways.
    proxied
        .query_typed(
            "INSERT INTO big_values VALUES ($1, $2)",
            &[(&1i32, Type::INT4), (&up, Type::TEXT)],
        )
        .await
        .unwrap_or_else(|e| panic!("insert 20 MB: {}", describe(&e)));
    // Up directly, down through the proxy.
    direct
        .query_typed(
            "INSERT INTO big_values VALUES ($1, $2)",
            &[(&2i32, Type::INT4), (&down, Type::TEXT)],
        )
        .await
        .unwrap();

    for (id, sent) in [(1, &up), (2, &down)] {
        let sql = format!("SELECT val FROM big_values WHERE id = {id}");
        for (how, client) in [("proxy", &proxied), ("direct", &direct)] {
            let got = value(client, &sql).await.expect("a value");
            assert_eq!(got.len(), LEN, "id {id} via {how}: length");
            assert_eq!(
                md5_hex(got.as_bytes()),
                md5_hex(sent.as_bytes()),
                "id {id} via {how}"
            );
        }
        let rows = proxied
            .query_typed(
                "SELECT val, md5(val) FROM big_values WHERE id = $1",
                &[(&id, Type::INT4)],
            )
            .await
            .unwrap();
        let got: &str = rows[0].get(0);
        let server_md5: &str = rows[0].get(1);
        assert_eq!(got.len(), LEN);
        assert_eq!(md5_hex(got.as_bytes()), md5_hex(sent.as_bytes()));
        assert_eq!(server_md5, md5_hex(sent.as_bytes()));
    }
    assert_eq!(
        value(&proxied, "SELECT tenant FROM whoami")
            .await
            .as_deref(),
        Some("t3")
    );
}

const NOTICE_SQL: &str = "DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$";

async fn notices_of(conn: &str, sql: &str) -> Vec<String> {
    let (client, mut notices) = connect_with_notices(conn)
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"));
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    // A notice precedes the query's ReadyForQuery, so it has been read by now; the
    // channel is drained after a query that proves the connection moved on.
    client.simple_query("SELECT 1").await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(200), notices.recv()).await {
        got.push(n);
    }
    got
}

#[tokio::test]
async fn notices_reach_the_client() {
    let proxy = TestProxy::start_with(ProxyOptions::default());
    let conn = proxy.connect_str("app", Naming::Options, "t1");
    for sql in [
        NOTICE_SQL,
        "BEGIN; DO $$ BEGIN RAISE NOTICE 'one'; RAISE WARNING 'two %', 2; END $$; COMMIT",
        "SELECT 1; DO $$ BEGIN RAISE NOTICE 'after a select'; END $$; SELECT 2",
    ] {
        let via_proxy = notices_of(&conn, sql).await;
        assert_eq!(via_proxy, notices_of(&direct_str("t1"), sql).await, "{sql}");
        assert!(!via_proxy.is_empty(), "{sql}: no notice");
    }
    assert_eq!(
        notices_of(&conn, NOTICE_SQL).await,
        ["NOTICE 00000: hello 42"]
    );

    // psql prints notices on stderr.
    let mut stderrs = Vec::new();
    for conn in [proxy.url("app", Naming::Options, "t1"), direct_str("t1")] {
        let mut cmd = psql_cmd(&conn);
        cmd.args(["-c", NOTICE_SQL]);
        let out = run_psql(cmd).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stderrs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    assert_eq!(stderrs[0], stderrs[1]);
    assert!(stderrs[0].contains("NOTICE:  hello 42"), "{}", stderrs[0]);
}

/// LATIN1 text: `café à ÿ` as one byte per character.
const LATIN1_VALUE: &[u8] = b"caf\xe9 \xe0 \xff";

/// Runs a script of raw bytes with psql as a LATIN1 client; returns stdout bytes.
async fn psql_latin1(conn: &str, script: &[u8], dir: &std::path::Path, name: &str) -> Vec<u8> {
    let file = dir.join(name);
    std::fs::write(&file, script).unwrap();
    let mut cmd = psql_cmd(conn);
    cmd.env("PGCLIENTENCODING", "LATIN1")
        .args(["-q", "-At", "-f"])
        .arg(&file);
    let out = run_psql(cmd).await;
    assert!(
        out.status.success(),
        "psql LATIN1 {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Bytes as readable text, non-ASCII escaped (`\xe9`), for exact comparisons.
fn escaped(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn latin1_script(id: i32) -> Vec<u8> {
    let mut s = format!("INSERT INTO latin1_items VALUES ({id}, '").into_bytes();
    s.extend_from_slice(LATIN1_VALUE);
    s.extend_from_slice(b"');\nSHOW client_encoding;\n");
    s.extend_from_slice(format!("SELECT val FROM latin1_items WHERE id = {id};\n").as_bytes());
    s.extend_from_slice(b"SELECT id FROM latin1_items WHERE val = '");
    s.extend_from_slice(LATIN1_VALUE);
    s.extend_from_slice(format!("' AND id = {id};\n").as_bytes());
    s
}

#[tokio::test]
async fn latin1_client_bytes_match_direct() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let dir = tempfile::tempdir().unwrap();
    let url = proxy.url("app", Naming::Options, "t1");
    // A UTF8 client shares the pool of 1, so the connection changes encoding in between.
    let utf8 = proxy_client(&proxy, "t2").await;
    assert_eq!(
        value(&utf8, "SHOW client_encoding").await.as_deref(),
        Some("UTF8")
    );

    let via_proxy = psql_latin1(&url, &latin1_script(1), dir.path(), "p1.sql").await;
    let straight = psql_latin1(&direct_str("t1"), &latin1_script(2), dir.path(), "d.sql").await;
    let mut expected = b"LATIN1\n".to_vec();
    expected.extend_from_slice(LATIN1_VALUE);
    expected.push(b'\n');
    assert_eq!(
        escaped(&straight),
        escaped(&[expected.clone(), b"2\n".to_vec()].concat()),
        "direct"
    );
    assert_eq!(
        escaped(&via_proxy),
        escaped(&[expected, b"1\n".to_vec()].concat()),
        "through the proxy"
    );

    // Stored as the same characters both ways.
    let direct = direct("t1").await;
    let stored = direct
        .simple_query("SELECT val FROM latin1_items WHERE id IN (1, 2) ORDER BY id")
        .await
        .unwrap();
    assert_eq!(render(&stored)[1..3], ["row: café à ÿ", "row: café à ÿ"]);
    assert_eq!(
        value(&utf8, "SELECT val FROM latin1_items WHERE id = 1")
            .await
            .as_deref(),
        Some("café à ÿ")
    );
    assert_eq!(
        value(&utf8, "SHOW client_encoding").await.as_deref(),
        Some("UTF8")
    );

    // Read back by a LATIN1 client again, after the UTF8 one used the connection.
    let mut read = b"SELECT val FROM latin1_items WHERE id = 2;\n".to_vec();
    read.extend_from_slice(b"SELECT length(val) FROM latin1_items WHERE id = 2;\n");
    let again = psql_latin1(&url, &read, dir.path(), "p2.sql").await;
    assert_eq!(escaped(&again), escaped(&[LATIN1_VALUE, b"\n8\n"].concat()));
}

/// One client session of psql kept open (stdin piped) so other clients can act between its
/// statements.
struct PsqlSession {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
}

impl PsqlSession {
    fn start(conn: &str, encoding: &str) -> PsqlSession {
        let mut cmd = psql_cmd(conn);
        cmd.env("PGCLIENTENCODING", encoding)
            .args(["-q", "-At"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        let mut child = cmd.spawn().expect("psql starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        PsqlSession {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends `sql` (one or more statements) and returns its output lines (raw bytes).
    async fn ask(&mut self, sql: &[u8]) -> Vec<Vec<u8>> {
        let mut input = sql.to_vec();
        input.extend_from_slice(b"\n\\echo __done__\n");
        self.stdin.write_all(&input).await.unwrap();
        self.stdin.flush().await.unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let read = tokio::time::timeout(
                Duration::from_secs(20),
                self.stdout.read_until(b'\n', &mut line),
            )
            .await
            .expect("psql answers within 20s")
            .unwrap();
            assert!(read > 0, "psql exited; lines so far: {lines:?}");
            if line.ends_with(b"\n") {
                line.pop();
            }
            if line == b"__done__" {
                return lines;
            }
            lines.push(line);
        }
    }

    async fn finish(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// A LATIN1 psql session and UTF8 tokio-postgres clients take turns on a pool of 1: the
/// LATIN1 session's bytes stay LATIN1 in every transaction.
#[tokio::test]
async fn latin1_session_interleaved_with_utf8_clients() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let utf8 = proxy_client(&proxy, "t2").await;
    let mut latin1 = PsqlSession::start(&proxy.url("app", Naming::Options, "t1"), "LATIN1");
    let mut insert = b"INSERT INTO latin1_items VALUES (10, '".to_vec();
    insert.extend_from_slice(LATIN1_VALUE);
    insert.extend_from_slice(b"');");
    assert!(latin1.ask(&insert).await.is_empty());
    for round in 0..5 {
        assert_eq!(
            value(&utf8, "SELECT val FROM latin1_items WHERE id = 10")
                .await
                .as_deref(),
            Some("café à ÿ"),
            "round {round}: UTF8 client"
        );
        let got = latin1
            .ask(b"SHOW client_encoding; SELECT val FROM latin1_items WHERE id = 10;")
            .await;
        assert_eq!(
            got,
            [b"LATIN1".to_vec(), LATIN1_VALUE.to_vec()],
            "round {round}: LATIN1 client"
        );
    }
    latin1.finish().await;
}

#[tokio::test]
async fn errors_in_transactions_match_direct() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let proxied = proxy_client(&proxy, "t1").await;
    let direct = direct("t1").await;
    let steps = [
        "BEGIN",
        "SELECT 1/0",
        "SELECT 1",
        "SELECT tenant FROM whoami",
        "ROLLBACK",
        "BEGIN",
        "SELECT tenant FROM whoami",
        "COMMIT",
        // Autocommit errors.
        "SELECT 1/0",
        "SELECT tenant FROM whoami",
        "SELECT * FROM no_such_table",
        "SELECT 2",
        // An error inside one Query holding a whole transaction.
        "BEGIN; SELECT 1/0; COMMIT",
        "SELECT 'failed block'",
        "ROLLBACK",
        // A savepoint recovers the transaction.
        "BEGIN",
        "SAVEPOINT s",
        "SELECT 1/0",
        "ROLLBACK TO SAVEPOINT s",
        "SELECT tenant FROM whoami",
        "COMMIT",
        // COMMIT of a failed transaction reports ROLLBACK.
        "BEGIN",
        "SELECT 1/0",
        "COMMIT",
        "SELECT 'after'",
    ];
    let mut via_proxy = Vec::new();
    let mut straight = Vec::new();
    for sql in steps {
        via_proxy.push((sql, outcome(&proxied, sql).await));
        straight.push((sql, outcome(&direct, sql).await));
    }
    assert_eq!(via_proxy, straight);
    assert_eq!(via_proxy[1].1, Err("22012".into()));
    assert_eq!(via_proxy[2].1, Err("25P02".into()));
    assert_eq!(
        via_proxy[6].1,
        Ok(vec![
            "columns: tenant".into(),
            "row: t1".into(),
            "complete: 1".into()
        ])
    );

    // The extended protocol inside a failed transaction.
    for client in [&proxied, &direct] {
        client.batch_execute("BEGIN").await.unwrap();
        let err = client
            .batch_execute("SELECT 1/0")
            .await
            .expect_err("division by zero");
        assert_eq!(err.code().map(|c| c.code()), Some("22012"));
        let err = client
            .query_typed("SELECT $1::int4", &[(&1i32, Type::INT4)])
            .await
            .expect_err("in a failed transaction");
        assert_eq!(err.code().map(|c| c.code()), Some("25P02"));
        client.batch_execute("ROLLBACK").await.unwrap();
    }
    assert_eq!(
        value(&proxied, "SELECT tenant FROM whoami")
            .await
            .as_deref(),
        Some("t1")
    );
}

/// A client that SETs a tracked parameter keeps it in every later transaction, while
/// clients of other tenants with other values share the same single server connection.
#[tokio::test]
async fn tracked_timezone_survives_a_shared_pool() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let zones = [
        ("t1", "UTC"),
        ("t2", "Asia/Tokyo"),
        ("t3", "America/New_York"),
    ];
    let mut clients = Vec::new();
    for (tenant, zone) in zones {
        let client = proxy_client(&proxy, tenant).await;
        client
            .batch_execute(&format!("SET TimeZone = '{zone}'"))
            .await
            .unwrap_or_else(|e| panic!("SET TimeZone {zone}: {}", describe(&e)));
        clients.push((client, tenant, zone));
    }
    // t4 never sets it: it keeps the server's default.
    let default_zone = value(&direct("t4").await, "SHOW TimeZone").await;
    let plain = proxy_client(&proxy, "t4").await;
    for round in 0..5 {
        for (client, tenant, zone) in &clients {
            assert_eq!(
                value(client, "SHOW TimeZone").await.as_deref(),
                Some(*zone),
                "round {round}"
            );
            client.batch_execute("BEGIN").await.unwrap();
            let got = value(
                client,
                "SELECT current_setting('TimeZone') || '/' || tenant FROM whoami",
            )
            .await;
            client.batch_execute("COMMIT").await.unwrap();
            assert_eq!(got, Some(format!("{zone}/{tenant}")), "round {round}");
        }
        assert_eq!(
            value(&plain, "SHOW TimeZone").await,
            default_zone,
            "round {round}: t4"
        );
    }
    // A tracked parameter changed inside a function is reported too.
    let (client, _, _) = &clients[0];
    client
        .batch_execute("SELECT set_config('TimeZone', 'Europe/Paris', false)")
        .await
        .unwrap();
    assert_eq!(value(&plain, "SHOW TimeZone").await, default_zone);
    assert_eq!(
        value(client, "SHOW TimeZone").await.as_deref(),
        Some("Europe/Paris")
    );
}

#[tokio::test]
async fn application_name_per_client() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let foo_conn = format!(
        "{} application_name=foo",
        proxy.connect_str("app", Naming::Options, "t1")
    );
    let bar_conn = format!(
        "{} application_name=bar",
        proxy.connect_str("app", Naming::Options, "t2")
    );
    let foo = crate::support::connect(&foo_conn).await.unwrap();
    let bar = crate::support::connect(&bar_conn).await.unwrap();
    let none = proxy_client(&proxy, "t1").await;
    let su = superuser().await;
    for round in 0..5 {
        assert_eq!(
            value(&foo, "SHOW application_name").await.as_deref(),
            Some("foo"),
            "round {round}"
        );
        assert_eq!(
            value(&bar, "SHOW application_name").await.as_deref(),
            Some("bar"),
            "round {round}"
        );
        let seen = value(&none, "SHOW application_name").await;
        assert!(
            seen.as_deref() != Some("foo") && seen.as_deref() != Some("bar"),
            "round {round}: {seen:?}"
        );
        // What the server itself shows for the connection foo is using.
        foo.batch_execute("BEGIN").await.unwrap();
        let pid = value(&foo, "SELECT pg_backend_pid()").await.unwrap();
        let shown = value(
            &su,
            &format!("SELECT application_name FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .await;
        foo.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            shown.as_deref(),
            Some("foo"),
            "round {round}: pg_stat_activity"
        );
    }
    bar.batch_execute("SET application_name = 'baz'")
        .await
        .unwrap();
    assert_eq!(
        value(&foo, "SHOW application_name").await.as_deref(),
        Some("foo")
    );
    assert_eq!(
        value(&bar, "SHOW application_name").await.as_deref(),
        Some("baz")
    );
}

/// One server connection passed between tenants with different settings, and clients with
/// settings of their own: `tracked` switches from one known state to the next by resetting
/// only what the previous state set (no `RESET ALL`); nothing of it may survive the switch,
/// including a reported parameter (TimeZone) set by a tenant. `always` for comparison.
#[tokio::test]
async fn switching_tenants_resets_what_the_previous_state_set() {
    for sync in ["tracked", "always"] {
        let proxy = TestProxy::start_with(
            ProxyOptions::default()
                .pool_size(1)
                .search_path_sync(sync)
                .extra(
                    "[tenants.tz]\nbackend = \"main\"\nsearch_path = [\"t2\"]\n\
                     settings = { TimeZone = \"Asia/Tokyo\", work_mem = \"77MB\", \"app.tenant_id\" = \"9\" }\n",
                ),
        );
        let r1 = proxy_client(&proxy, "r1").await;
        let tz = proxy_client(&proxy, "tz").await;
        let t1 = proxy_client(&proxy, "t1").await;
        let own = crate::support::connect(&format!(
            "{} options='-c tenant=t3 -c work_mem=33MB -c app.tenant_id=5'",
            proxy.conn_params("app", crate::support::PROXY_PASSWORD, "app", None)
        ))
        .await
        .unwrap();
        let show = "SELECT current_setting('TimeZone') || ' ' || current_setting('work_mem') \
                    || ' ' || coalesce(current_setting('app.tenant_id', true), '-') \
                    || ' ' || current_setting('search_path')";
        let baseline = value(&r1, show).await.unwrap();
        let zone = baseline.split(' ').next().unwrap().to_string();
        assert_ne!(zone, "Asia/Tokyo", "{sync}: the server's default zone");
        assert_eq!(baseline, format!("{zone} 4MB 1 public"), "{sync}");
        let tz_state = vec!["Asia/Tokyo 77MB 9 t2".to_string()];
        let r1_state = vec![format!("{zone} 4MB 1 public")];
        let own_state = vec![format!("{zone} 33MB 5 t3, public")];
        // t1 sets no app.tenant_id: after a RESET it is unset or empty.
        let t1_state = vec![
            format!("{zone} 4MB - t1, public"),
            format!("{zone} 4MB  t1, public"),
        ];
        let steps = [
            (&tz, &tz_state, "tz"),
            (&r1, &r1_state, "r1 after tz"),
            (&own, &own_state, "t3 with its own settings"),
            (&t1, &t1_state, "t1 after t3"),
            (&tz, &tz_state, "tz after t1"),
            (&own, &own_state, "t3 after tz"),
        ];
        for round in 0..2 {
            for (client, want, who) in &steps {
                let got = value(client, show).await.unwrap();
                assert!(
                    want.contains(&got),
                    "{sync}, round {round}: {who}: got {got:?}, want one of {want:?}"
                );
            }
        }
    }
}

/// Session state a client sets in transaction mode never reaches another client of the
/// same tenant on the same (single) server connection.
#[tokio::test]
async fn transaction_mode_does_not_pass_state_on() {
    for sync in ["tracked", "always"] {
        let proxy =
            TestProxy::start_with(ProxyOptions::default().pool_size(1).search_path_sync(sync));
        let a = proxy_client(&proxy, "t1").await;
        let b = proxy_client(&proxy, "t1").await;
        a.batch_execute("SET my.x = 'a'").await.unwrap();
        a.batch_execute("SET work_mem = '77MB'").await.unwrap();
        // Last: a keeps it (its session), so its own statements run under it from here.
        a.batch_execute("SET statement_timeout = '20ms'")
            .await
            .unwrap();
        let x = value(&b, "SELECT current_setting('my.x', true)").await;
        assert!(x.as_deref() != Some("a"), "{sync}: B sees A's my.x");
        assert!(matches!(x.as_deref(), None | Some("")), "{sync}: {x:?}");
        b.batch_execute("SELECT pg_sleep(0.05)")
            .await
            .unwrap_or_else(|e| panic!("{sync}: B got A's statement_timeout: {}", describe(&e)));
        // A keeps its own (its session), as on a direct connection.
        assert_eq!(
            value(&a, "SHOW statement_timeout").await.as_deref(),
            Some("20ms")
        );
        a.batch_execute("RESET statement_timeout").await.unwrap();
        assert_ne!(
            value(&b, "SHOW work_mem").await.as_deref(),
            Some("77MB"),
            "{sync}"
        );
        // The same through set_config() and inside a function.
        a.batch_execute("SELECT set_config('my.x', 'b', false)")
            .await
            .unwrap();
        a.batch_execute("DO $$ BEGIN PERFORM set_config('my.y', 'c', false); END $$")
            .await
            .unwrap();
        let x = value(&b, "SELECT coalesce(current_setting('my.x', true), '') || '/' || coalesce(current_setting('my.y', true), '')").await;
        assert_eq!(x.as_deref(), Some("/"), "{sync}");
        assert_eq!(
            value(&b, "SELECT tenant FROM whoami").await.as_deref(),
            Some("t1")
        );
    }
}

#[tokio::test]
async fn session_mode_keeps_state_then_discards_it() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1).pool_mode("session"));
    let a = proxy_client(&proxy, "t1").await;
    a.batch_execute("SET my.x = 'a'").await.unwrap();
    a.batch_execute("SET search_path TO t2").await.unwrap();
    a.batch_execute("CREATE TEMP TABLE session_tmp (x int)")
        .await
        .unwrap();
    for round in 0..3 {
        a.batch_execute("BEGIN").await.unwrap();
        let x = value(
            &a,
            "SELECT current_setting('my.x') || '/' || tenant FROM whoami",
        )
        .await;
        a.batch_execute("COMMIT").await.unwrap();
        assert_eq!(x.as_deref(), Some("a/t2"), "round {round}");
    }
    drop(a);
    // B waits for A's only server connection, which must come back clean.
    for tenant in ["t1", "t2"] {
        let b = proxy_client(&proxy, tenant).await;
        let x = tokio::time::timeout(
            Duration::from_secs(10),
            value(
                &b,
                "SELECT coalesce(current_setting('my.x', true), '') || '/' || tenant FROM whoami",
            ),
        )
        .await
        .expect("B gets the connection within 10s");
        assert_eq!(x, Some(format!("/{tenant}")));
        let tmp = value(
            &b,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'session_tmp'",
        )
        .await;
        assert_eq!(tmp.as_deref(), Some("0"));
    }
}

/// `SET search_path` inside one client of t1 is not seen by the next t1 client on the same
/// single connection, with either sync mode.
#[tokio::test]
async fn search_path_set_by_a_client_is_not_inherited() {
    for sync in ["tracked", "always"] {
        let proxy =
            TestProxy::start_with(ProxyOptions::default().pool_size(1).search_path_sync(sync));
        let a = proxy_client(&proxy, "t1").await;
        let b = proxy_client(&proxy, "t1").await;
        let own = value(&a, "SET search_path TO t2; SELECT tenant FROM whoami").await;
        assert_eq!(
            own.as_deref(),
            Some("t2"),
            "{sync}: A's own SET applies to A's query"
        );
        assert_eq!(
            value(&b, "SELECT tenant FROM whoami").await.as_deref(),
            Some("t1"),
            "{sync}"
        );
        a.batch_execute("BEGIN; SET LOCAL search_path TO t3; COMMIT")
            .await
            .unwrap();
        assert_eq!(
            value(&b, "SELECT tenant FROM whoami").await.as_deref(),
            Some("t1"),
            "{sync}"
        );
        a.batch_execute("RESET search_path").await.unwrap();
        assert_eq!(
            value(&b, "SELECT tenant FROM whoami").await.as_deref(),
            Some("t1"),
            "{sync}"
        );
        a.batch_execute("SELECT set_config('search_path', 't4', false)")
            .await
            .unwrap();
        assert_eq!(
            value(&b, "SELECT tenant FROM whoami").await.as_deref(),
            Some("t1"),
            "{sync}"
        );
        let other = proxy_client(&proxy, "t2").await;
        assert_eq!(
            value(&other, "SELECT tenant FROM whoami").await.as_deref(),
            Some("t2"),
            "{sync}"
        );
        assert_eq!(
            value(&b, "SELECT tenant FROM whoami").await.as_deref(),
            Some("t1"),
            "{sync}"
        );
    }
}
