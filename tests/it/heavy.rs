//! Heavy clients after login: messages larger than the proxy's inspection window (Query,
//! Bind, Parse) stream through to the server instead of being held whole, with the same
//! results as small ones, and the tenant's state stays exact: a `SET` hidden in a large
//! multi-statement Query is kept across server connections, a `RESET` restores the
//! client's defaults, and a statement too large to inspect is read back from the server.
//! Messages PostgreSQL caps at 10,000 bytes are refused at their header. Sizes here are a
//! few MB (the window is 256 KiB); the 300 MB figures and their memory are in
//! `benches/memory_hostile.py`.

use tokio_postgres::types::Type;

use crate::support::wire::{message, Wire};
use crate::support::{describe, exec, tenant_client, value, ProxyOptions, TestProxy};

/// Larger than the inspection window (256 KiB), several times over.
const BIG: usize = 3 << 20;

fn big_literal(c: char) -> String {
    c.to_string().repeat(BIG)
}

#[tokio::test]
async fn large_query_bind_and_parse_stream_with_the_right_results() {
    for mode in ["transaction", "session"] {
        // One server connection that the tenants share (session mode: one each).
        let pool = if mode == "session" { 2 } else { 1 };
        let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(pool).pool_mode(mode));
        let client = tenant_client(&proxy, "t1").await;
        let other = tenant_client(&proxy, "t2").await;
        let literal = big_literal('x');

        // A simple Query.
        let sql = format!("SELECT length('{literal}') || (SELECT tenant FROM whoami)");
        assert_eq!(
            value(&client, &sql).await.unwrap(),
            format!("{BIG}t1"),
            "{mode}"
        );

        // A Bind with a large parameter: unnamed statement, then a named one (its name
        // is mapped to the server's in transaction mode: the Bind's head is rewritten).
        let rows = client
            .query_typed("SELECT length($1::text)", &[(&literal, Type::TEXT)])
            .await
            .unwrap_or_else(|e| panic!("{mode}: {}", describe(&e)));
        assert_eq!(rows[0].get::<_, i32>(0), BIG as i32);
        let stmt = client
            .prepare("SELECT length($1::text), (SELECT tenant FROM whoami)")
            .await
            .unwrap();
        for _ in 0..2 {
            let row = client.query_one(&stmt, &[&literal]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), BIG as i32);
            assert_eq!(row.get::<_, String>(1), "t1");
            // Another tenant uses the one server connection in between.
            assert_eq!(
                value(&other, "SELECT tenant FROM whoami").await.unwrap(),
                "t2"
            );
        }

        // A large Parse: unnamed (streams), then named (in transaction mode read whole:
        // the proxy prepares it again on other connections).
        let sql = format!("SELECT length('{literal}') + $1::int");
        let rows = client
            .query_typed(&sql, &[(&1i32, Type::INT4)])
            .await
            .unwrap_or_else(|e| panic!("{mode}: {}", describe(&e)));
        assert_eq!(rows[0].get::<_, i32>(0), BIG as i32 + 1);
        let named = client.prepare(&sql).await.unwrap();
        for n in 0..2 {
            let row = client.query_one(&named, &[&n]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), BIG as i32 + n);
            assert_eq!(
                value(&other, "SELECT tenant FROM whoami").await.unwrap(),
                "t2"
            );
        }
        proxy.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_set_hidden_in_a_large_query_is_kept() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let client = tenant_client(&proxy, "t1").await;
    let other = tenant_client(&proxy, "t2").await;
    let literal = big_literal('y');

    // After a large literal, in the same Query: a setting and a search_path of its own.
    exec(
        &client,
        &format!(
            "SELECT length('{literal}'); SET app.hidden = 'kept'; SET search_path TO t3, public"
        ),
    )
    .await;
    // The other tenant runs on the one connection (its prelude resets everything) ...
    assert_eq!(
        value(&other, "SELECT tenant FROM whoami").await.unwrap(),
        "t2"
    );
    let leaked = value(&other, "SELECT current_setting('app.hidden', true)").await;
    assert!(matches!(leaked.as_deref(), None | Some("")), "{leaked:?}");
    // ... and the client finds its session as it left it.
    assert_eq!(value(&client, "SHOW app.hidden").await.unwrap(), "kept");
    assert_eq!(
        value(&client, "SELECT tenant FROM whoami").await.unwrap(),
        "t3"
    );

    // A RESET hidden the same way returns to the client's default (its tenant's
    // search_path), not to the server connection's.
    exec(
        &client,
        &format!("SELECT length('{literal}'); RESET search_path; RESET app.hidden"),
    )
    .await;
    assert_eq!(
        value(&other, "SELECT tenant FROM whoami").await.unwrap(),
        "t2"
    );
    assert_eq!(
        value(&client, "SELECT tenant FROM whoami").await.unwrap(),
        "t1"
    );
    assert_eq!(
        value(&client, "SELECT current_setting('app.hidden', true)")
            .await
            .unwrap_or_default(),
        ""
    );

    // A statement too large to inspect (more than 64 KiB of code, not literals): its
    // effect is read back from the server.
    let ones = ",1".repeat(50_000);
    exec(
        &client,
        &format!(
            "SELECT set_config('app.opaque', 'seen', false), ARRAY[1{ones}]; \
             SELECT length('{literal}')"
        ),
    )
    .await;
    assert_eq!(
        value(&other, "SELECT tenant FROM whoami").await.unwrap(),
        "t2"
    );
    assert_eq!(value(&client, "SHOW app.opaque").await.unwrap(), "seen");
    assert_eq!(
        value(&client, "SELECT tenant FROM whoami").await.unwrap(),
        "t1"
    );

    // A large Parse that sets something (a function call the scanner knows).
    let sql = format!("SELECT set_config('app.parsed', 'yes', false), length('{literal}')");
    client.query_typed(&sql, &[]).await.unwrap();
    assert_eq!(
        value(&other, "SELECT tenant FROM whoami").await.unwrap(),
        "t2"
    );
    assert_eq!(value(&client, "SHOW app.parsed").await.unwrap(), "yes");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn small_message_types_over_postgresqls_limit_are_refused_at_their_header() {
    let proxy = TestProxy::start_with(ProxyOptions::default().auth("trust"));
    // A Describe, Execute or Sync over 10,000 bytes; and a type that does not exist, with
    // a large length: each refused with only its header sent.
    for tag in [b'D', b'E', b'S', b'?'] {
        let mut wire = Wire::login(proxy.addr(), "t1", crate::support::PROXY_PASSWORD).await;
        let mut header = vec![tag];
        header.extend_from_slice(&(50_000_000i32).to_be_bytes());
        wire.send(&header).await;
        let reply = wire.until_closed().await.unwrap();
        reply.expect_error("08P01").unwrap();
    }
    // At the limit: a Describe of a 9,990-byte statement name reaches the server.
    let mut wire = Wire::login(proxy.addr(), "t1", crate::support::PROXY_PASSWORD).await;
    let mut body = vec![b'S'];
    body.extend(std::iter::repeat_n(b'n', 9_990));
    body.push(0);
    let mut batch = message(b'D', &body);
    batch.extend_from_slice(&message(b'S', b""));
    wire.send(&batch).await;
    let err = wire.until_ready().await.expect_err("no such statement");
    assert!(err.contains("26000"), "{err}");
    let client = tenant_client(&proxy, "t2").await;
    assert_eq!(
        value(&client, "SELECT tenant FROM whoami").await.unwrap(),
        "t2"
    );
    proxy.stop().await.unwrap();
}
