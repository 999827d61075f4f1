//! `[auth]`: users not in `[users]` looked up with `auth_query` (a SECURITY DEFINER function
//! reading `pg_authid`, as docs/OPERATIONS.md sets it up), logging in with their PostgreSQL
//! password, and their server connections logging in as themselves by SCRAM pass-through
//! (md5: the stored hash), with no password for them in proxy.toml.

use std::time::Duration;

use crate::support::clients::psql_cmd;
use crate::support::clients::run_psql;
use crate::support::{
    conn_str_to, connect, eventually, own_pg_with_auth, pg, value, Naming, ProxyOptions, TestProxy,
};
use pgtenant::localpg::LocalPostgres;

/// The lookup function, EXECUTE for `app` (the backend's login) only. It logs every call
/// with the `search_path` and `application_name` it runs with (so a test can see that a
/// client's startup parameters never reach it); a production function would also pin its
/// own `search_path` (docs/OPERATIONS.md).
const LOOKUP_SQL: &str = "
CREATE SCHEMA pgtenant;
GRANT USAGE ON SCHEMA pgtenant TO app;
CREATE TABLE pgtenant.lookup_log (usename text, search_path text, application_name text);
CREATE FUNCTION pgtenant.user_lookup(p_user text, OUT usename text, OUT passwd text)
RETURNS record LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO pgtenant.lookup_log VALUES (p_user, pg_catalog.current_setting('search_path'),
        pg_catalog.current_setting('application_name'));
    SELECT a.rolname::text, a.rolpassword INTO usename, passwd
        FROM pg_catalog.pg_authid a WHERE a.rolname = p_user AND a.rolcanlogin;
END $$;
REVOKE ALL ON FUNCTION pgtenant.user_lookup(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgtenant.user_lookup(text) TO app;
";

pub(crate) const AUTH: &str = "[auth]\nbackend = \"main\"\n\
    auth_query = \"SELECT usename, passwd FROM pgtenant.user_lookup($1)\"\n";

/// A server of the test's own whose pg_hba.conf asks everyone for `method`, with the
/// lookup function in database `app`, and `roles` (name, password) created under
/// `password_encryption` each, allowed to read tenant t1's table.
pub(crate) fn server(method: &str, roles: &[(&str, &str, &str)]) -> LocalPostgres {
    let server = own_pg_with_auth(&format!("host all all 127.0.0.1/32 {method}"), method);
    let mut sql = String::from(LOOKUP_SQL);
    for (name, password, encryption) in roles {
        sql += &format!(
            "SET password_encryption = '{encryption}';\n\
             CREATE ROLE {name} LOGIN PASSWORD '{password}';\n\
             GRANT USAGE ON SCHEMA t1 TO {name};\nGRANT SELECT ON t1.whoami TO {name};\n"
        );
    }
    server
        .psql_db("app", &sql)
        .expect("lookup function and roles");
    server
}

fn proxy_on(server: &LocalPostgres, auth: &str, ttl: &str) -> TestProxy {
    let options = ProxyOptions::default()
        .auth(auth)
        .extra(&format!("{AUTH}ttl = \"{ttl}\"\n"));
    TestProxy::start_on(options, server.host(), server.port())
}

async fn superuser_of(server: &LocalPostgres) -> tokio_postgres::Client {
    connect(&conn_str_to(server, "postgres", "postgres", "app"))
        .await
        .expect("superuser")
}

/// How many times the lookup ran for `user`.
async fn lookups(su: &tokio_postgres::Client, user: &str) -> i64 {
    su.query_one(
        "SELECT count(*) FROM pgtenant.lookup_log WHERE usename = $1",
        &[&user],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn scram_stored_user_logs_in_and_passes_through_to_a_scram_only_server() {
    let server = server("scram-sha-256", &[("alice", "alice_pw", "scram-sha-256")]);
    let proxy = proxy_on(&server, "scram-sha-256", "60s");
    let conn = proxy.connect_str_with_password("alice", "alice_pw", Naming::Options, "t1");
    let client = connect(&conn).await.expect("alice logs in");
    assert_eq!(
        value(&client, "SELECT current_user").await.as_deref(),
        Some("alice")
    );
    assert_eq!(
        value(&client, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t1")
    );
    // The server saw alice log in with SCRAM: no password for alice is in proxy.toml.
    assert!(!proxy.config_text.contains("alice_pw"));
    let wanted = "identity=\"alice\" method=scram-sha-256";
    eventually(
        Duration::from_secs(5),
        "the server logs alice's SCRAM login",
        || async { server.log().contains(wanted) },
    )
    .await;
    let su = superuser_of(&server).await;
    let users: Vec<String> = su
        .query(
            "SELECT usename::text FROM pg_stat_activity WHERE usename = 'alice'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!users.is_empty(), "a server connection as alice");
    // psql too.
    let url = format!(
        "postgres://alice:alice_pw@127.0.0.1:{}/app?options=-c%20tenant%3Dt1",
        proxy.port()
    );
    let mut cmd = psql_cmd(&url);
    cmd.args([
        "-At",
        "-c",
        "SELECT current_user || '/' || tenant FROM whoami",
    ]);
    let out = run_psql(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice/t1");
    // A wrong password, an unknown user: the same answer as PostgreSQL's.
    for (user, password) in [("alice", "wrong"), ("nobody", "alice_pw")] {
        let conn = proxy.connect_str_with_password(user, password, Naming::Options, "t1");
        let err = connect(&conn).await.expect_err("refused");
        let message = format!("password authentication failed for user \"{user}\"");
        assert_eq!(
            (err.code(), err.message()),
            (Some("28P01"), Some(&*message))
        );
    }
    drop(client);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn md5_stored_user_logs_in_with_md5_and_its_hash_logs_in_to_the_server() {
    let server = server("md5", &[("bob", "bob_pw", "md5")]);
    let proxy = proxy_on(&server, "md5", "60s");
    let conn = proxy.connect_str_with_password("bob", "bob_pw", Naming::Options, "t1");
    let client = connect(&conn).await.expect("bob logs in");
    assert_eq!(
        value(&client, "SELECT current_user").await.as_deref(),
        Some("bob")
    );
    assert_eq!(
        value(&client, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t1")
    );
    let wanted = "identity=\"bob\" method=md5";
    eventually(
        Duration::from_secs(5),
        "the server logs bob's md5 login",
        || async { server.log().contains(wanted) },
    )
    .await;
    let conn = proxy.connect_str_with_password("bob", "wrong", Naming::Options, "t1");
    let err = connect(&conn).await.expect_err("a wrong password");
    let message = "password authentication failed for user \"bob\"";
    assert_eq!((err.code(), err.message()), (Some("28P01"), Some(message)));
    drop(client);
    proxy.stop().await.unwrap();
    // Under auth = "scram-sha-256" an md5-stored password cannot log in (as PostgreSQL).
    let proxy = proxy_on(&server, "scram-sha-256", "60s");
    let conn = proxy.connect_str_with_password("bob", "bob_pw", Naming::Options, "t1");
    let err = connect(&conn)
        .await
        .expect_err("md5-stored under scram-sha-256");
    assert_eq!((err.code(), err.message()), (Some("28P01"), Some(message)));
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_dropped_role_is_served_from_the_cache_until_its_ttl_then_refused() {
    let server = server("scram-sha-256", &[("carol", "carol_pw", "scram-sha-256")]);
    let proxy = proxy_on(&server, "scram-sha-256", "4s");
    let conn = proxy.connect_str_with_password("carol", "carol_pw", Naming::Options, "r1");
    let client = connect(&conn).await.expect("carol logs in");
    assert_eq!(
        value(&client, "SELECT current_user").await.as_deref(),
        Some("carol")
    );
    drop(client);
    let su = superuser_of(&server).await;
    su.batch_execute(
        "REVOKE ALL ON SCHEMA t1 FROM carol; REVOKE ALL ON t1.whoami FROM carol; DROP ROLE carol",
    )
    .await
    .expect("drop carol");
    // Within the ttl the cached verifier still authenticates her (her idle server
    // connection serves the query).
    let client = connect(&conn).await.expect("still cached");
    assert_eq!(value(&client, "SELECT 1").await.as_deref(), Some("1"));
    drop(client);
    assert_eq!(lookups(&su, "carol").await, 1, "served from the cache");
    eventually(
        Duration::from_secs(20),
        "carol refused after the ttl",
        || async { matches!(connect(&conn).await, Err(e) if e.code() == Some("28P01")) },
    )
    .await;
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_logins_of_one_user_run_one_lookup() {
    let server = server("scram-sha-256", &[("dave", "dave_pw", "scram-sha-256")]);
    let proxy = proxy_on(&server, "scram-sha-256", "60s");
    let conn = proxy.connect_str_with_password("dave", "dave_pw", Naming::Options, "t1");
    let logins = (0..8).map(|_| {
        let conn = conn.clone();
        tokio::spawn(async move { connect(&conn).await.map(|_| ()).map_err(|e| e.to_string()) })
    });
    for login in futures_util::future::join_all(logins).await {
        login.unwrap().expect("dave logs in");
    }
    let su = superuser_of(&server).await;
    assert_eq!(lookups(&su, "dave").await, 1, "one query for 8 logins");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn hostile_user_names_are_refused_and_bound_as_a_parameter() {
    let server = server("scram-sha-256", &[("erin", "erin_pw", "scram-sha-256")]);
    // A separator no name below has: each reaches the lookup whole.
    let options = ProxyOptions::default()
        .proxy_line("user_separator = \"~~\"")
        .extra(AUTH);
    let proxy = TestProxy::start_on(options, server.host(), server.port());
    let long = "x".repeat(300);
    let hostile = [
        "a'; DROP TABLE pgtenant.lookup_log; --",
        "\"",
        "a\\'; SELECT 1; --",
        long.as_str(),
    ];
    for user in hostile {
        let conn = proxy.conn_params(user, "secret", "app", Some("-c tenant=t1"));
        let err = connect(&conn).await.expect_err("no such user");
        assert_eq!(err.code(), Some("28P01"), "{user}: {err}");
    }
    let su = superuser_of(&server).await;
    for user in hostile {
        assert_eq!(lookups(&su, user).await, 1, "looked up verbatim: {user}");
    }
    // A client's startup parameters never reach the lookup's connection.
    let conn = proxy.conn_params(
        "erin",
        "erin_pw",
        "app",
        Some("-c tenant=t1 -c search_path=evil"),
    ) + " application_name=evil_app";
    let client = connect(&conn).await.expect("erin logs in");
    assert_eq!(
        value(&client, "SELECT current_user").await.as_deref(),
        Some("erin")
    );
    let row = su
        .query_one(
            "SELECT search_path, application_name FROM pgtenant.lookup_log WHERE usename = 'erin'",
            &[],
        )
        .await
        .unwrap();
    let (search_path, application_name): (String, String) = (row.get(0), row.get(1));
    assert!(!search_path.contains("evil"), "{search_path}");
    assert_ne!(application_name, "evil_app");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_auth_backend_is_08006_and_configured_users_still_log_in() {
    let options = ProxyOptions::default().extra(
        "[backends.gone]\nhost = \"127.0.0.1\"\nport = 1\ndatabase = \"app\"\nuser = \"app\"\n\
         password = \"x\"\n[auth]\nbackend = \"gone\"\nauth_query = \"SELECT f($1)\"\n",
    );
    let proxy = TestProxy::start_on(options, pg().host(), pg().port());
    let conn = proxy.connect_str_with_password("zed", "pw", Naming::Options, "t1");
    let err = connect(&conn).await.expect_err("lookup cannot run");
    let message = "could not look up the user: the auth backend is unavailable";
    assert_eq!((err.code(), err.message()), (Some("08006"), Some(message)));
    let client = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    assert_eq!(
        value(&client, "SELECT current_user").await.as_deref(),
        Some("app")
    );
    proxy.stop().await.unwrap();
}

/// After a reload that changes the backend, a looked-up user's session stays on a pool of
/// its own: its next transaction logs in anew as itself (pass-through again), never on the
/// backend's shared pool.
#[tokio::test]
async fn a_reload_rebuilds_a_looked_up_users_endpoint_as_that_user() {
    let server = server("scram-sha-256", &[("frank", "frank_pw", "scram-sha-256")]);
    let options = ProxyOptions::default().extra(AUTH);
    let proxy = TestProxy::start_on(options.clone(), server.host(), server.port());
    let conn = proxy.connect_str_with_password("frank", "frank_pw", Naming::Options, "t1");
    let frank = connect(&conn).await.expect("frank logs in");
    let app = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    let before = value(&frank, "SELECT pg_backend_pid()").await;
    let text = options.pool_size(7).toml(server.host(), server.port());
    let config = pgtenant::config::Config::from_toml_str(&text, "test.toml").unwrap();
    proxy.handle.apply(config);
    assert_eq!(
        value(&frank, "SELECT current_user").await.as_deref(),
        Some("frank")
    );
    assert_ne!(
        value(&frank, "SELECT pg_backend_pid()").await,
        before,
        "a new pool"
    );
    assert_eq!(
        value(&app, "SELECT current_user").await.as_deref(),
        Some("app")
    );
    proxy.stop().await.unwrap();
}

/// On TLS a looked-up user logs in with SCRAM-SHA-256-PLUS (channel binding), and its
/// ClientKey still passes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_plus_on_tls_passes_through_too() {
    use crate::support::tls::{connect_tls, Certs};
    let server = server("scram-sha-256", &[("gina", "gina_pw", "scram-sha-256")]);
    let certs = Certs::new();
    let options = ProxyOptions::default()
        .proxy_line(&certs.proxy_lines("allow"))
        .extra(AUTH);
    let proxy = TestProxy::start_on(options, server.host(), server.port());
    let base = proxy.connect_str_with_password("gina", "gina_pw", Naming::Options, "t1");
    let conn = format!("{base} host=localhost sslmode=require channel_binding=require");
    let client = connect_tls(&certs, &conn)
        .await
        .expect("SCRAM-SHA-256-PLUS login");
    assert_eq!(
        value(&client, "SELECT current_user").await.as_deref(),
        Some("gina")
    );
    let wrong = base.replace("gina_pw", "nope");
    match connect_tls(&certs, &format!("{wrong} host=localhost sslmode=require")).await {
        Err(e) => assert_eq!(e.code(), Some("28P01"), "{e:?}"),
        Ok(_) => panic!("a wrong password got in"),
    }
    proxy.stop().await.unwrap();
}
