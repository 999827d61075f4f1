//! Errors that say why: a backend that cannot be reached gives the client 08006 with the
//! class of the reason as its HINT (never a password or the server's own text), and
//! `pgtenant check --connect` finds bad logins and missing schemas before clients do.

use std::process::Command;
use std::time::Duration;

use pgtenant::config::Config;

use crate::support::{pg, ConnectError, Naming, ProxyOptions, TestProxy};

/// A tenant `x` on a backend `broken` with the given lines (host/port default to the shared
/// PostgreSQL's), plus the usual test config.
fn broken_backend(lines: &str) -> ProxyOptions {
    let pg = pg();
    let mut backend = String::from("\n[backends.broken]\n");
    if !lines.contains("host =") {
        backend += &format!("host = \"{}\"\n", pg.host());
    }
    if !lines.contains("port =") {
        backend += &format!("port = {}\n", pg.port());
    }
    // An endpoint (host, port, database, user) no other tenant uses: tenants of backends
    // that differ only in the password share one pool (the first one's login).
    if !lines.contains("database =") {
        backend += "database = \"app_t5\"\n";
    }
    backend += "user = \"tenant_t7\"\n";
    backend += lines;
    backend += "\n[tenants.x]\nbackend = \"broken\"\nsearch_path = [\"public\"]\n";
    ProxyOptions::default().extra(&backend)
}

/// The error a client of tenant `x` gets: at login (the proxy logs in to the backend
/// then) or, at the latest, at its first query.
async fn client_error(proxy: &TestProxy) -> (String, String, String) {
    match proxy.connect("app", Naming::Options, "x").await {
        Err(e @ ConnectError::Postgres(_)) => (
            e.code().unwrap_or_default().to_string(),
            e.message().unwrap_or_default().to_string(),
            e.hint().unwrap_or_default().to_string(),
        ),
        Err(e) => panic!("no error from the proxy: {e}"),
        Ok(client) => {
            let e = client
                .simple_query("SELECT 1")
                .await
                .expect_err("the backend is broken");
            let db = e.as_db_error().expect("a server error");
            (
                db.code().code().to_string(),
                db.message().to_string(),
                db.hint().unwrap_or_default().to_string(),
            )
        }
    }
}

async fn assert_hint(options: ProxyOptions, class: &str, secret: Option<&str>) {
    let proxy = TestProxy::start_with(options);
    let (code, message, hint) = client_error(&proxy).await;
    assert_eq!(code, "08006", "{message} / {hint}");
    assert_eq!(message, "could not connect to backend \"broken\"");
    assert!(
        hint.starts_with(class),
        "hint {hint:?} should start with {class:?}"
    );
    if let Some(secret) = secret {
        assert!(
            !hint.contains(secret) && !message.contains(secret),
            "{hint}"
        );
    }
    // A second client is refused the same way (the backend may be marked down by now:
    // the hint then still says why).
    let (code, _, hint) = client_error(&proxy).await;
    assert_eq!(code, "08006");
    assert!(hint.starts_with(class), "second client: {hint:?}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_backend_password_says_authentication_failed() {
    let options = broken_backend("password = \"not-the-pw-4711\"\n");
    assert_hint(options, "authentication failed", Some("4711")).await;
}

#[tokio::test]
async fn backend_without_password_says_authentication_failed() {
    assert_hint(
        broken_backend(""),
        "authentication failed: the server asks for a password and the backend has none",
        None,
    )
    .await;
}

#[tokio::test]
async fn backend_down_says_connection_refused() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let options = broken_backend(&format!("port = {port}\npassword = \"t7_pw\"\n"));
    assert_hint(options, "connection refused", None).await;
}

#[tokio::test]
async fn hung_backend_says_timed_out() {
    // Accepts TCP connections (the kernel does, into the backlog) and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    let options = broken_backend(&format!("port = {port}\npassword = \"t7_pw\"\n"))
        .timeout("server_connect_timeout", "300ms");
    assert_hint(options, "timed out", None).await;
    drop(hung);
}

#[tokio::test]
async fn missing_database_says_server_error_with_its_sqlstate() {
    let options = broken_backend("database = \"no_such_db\"\npassword = \"t7_pw\"\n");
    assert_hint(options.clone(), "server error", None).await;
    let proxy = TestProxy::start_with(options);
    let (_, _, hint) = client_error(&proxy).await;
    assert!(hint.contains("SQLSTATE 3D000"), "{hint}");
    assert!(!hint.contains("no_such_db"), "{hint}");
    proxy.stop().await.unwrap();
}

/// The test config (every tenant's schema exists) plus `extra`.
fn config_text(extra: &str) -> String {
    let pg = pg();
    ProxyOptions::default()
        .extra(extra)
        .toml(pg.host(), pg.port())
}

#[tokio::test]
async fn check_connect_passes_on_a_good_config() {
    let config = Config::from_toml_str(&config_text(""), "test.toml").unwrap();
    let problems = pgtenant::check::connect_check(&config).await;
    assert_eq!(problems, Vec::<String>::new());
}

#[tokio::test]
async fn check_connect_names_missing_schemas_and_bad_logins() {
    let pg = pg();
    let extra = format!(
        "[tenants.ghost]\nbackend = \"main\"\nsearch_path = [\"ghost_schema\", \"public\"]\n\
         [tenants.locked]\nbackend = \"main\"\nuser = \"tenant_t7\"\npassword = \"t7_pw\"\n\
         search_path = [\"t1\"]\n\
         [backends.badpw]\nhost = \"{}\"\nport = {}\ndatabase = \"app\"\nuser = \"tenant_t7\"\n\
         password = \"wrong\"\n\
         [tenants.lost]\nbackend = \"badpw\"\n",
        pg.host(),
        pg.port()
    );
    let config = Config::from_toml_str(&config_text(&extra), "test.toml").unwrap();
    let problems = pgtenant::check::connect_check(&config).await;
    let text = problems.join("\n");
    assert_eq!(problems.len(), 3, "{text}");
    assert!(
        problems.iter().any(|p| p
            == "tenant \"ghost\": schema \"ghost_schema\" does not exist in database app (backend \"main\")"),
        "{text}"
    );
    assert!(
        problems.iter().any(|p| p
            == "tenant \"locked\": user tenant_t7 has no USAGE on schema \"t1\" in database app"),
        "{text}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("backend \"badpw\"")
            && p.contains("cannot log in: authentication failed")
            && p.ends_with("tenants affected: lost")
            && !p.contains("wrong")),
        "{text}"
    );
}

/// The binary: one line per problem, exit 1; exit 0 when all is well.
#[tokio::test]
async fn check_connect_command_exits_1_on_problems() {
    let dir = tempfile::tempdir().unwrap();
    let run = move |text: String| {
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .args(["check", "--connect", "--config"])
            .arg(&path)
            .env_remove("PGTENANT_CONFIG")
            .output()
            .expect("run pgtenant");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let handle = tokio::task::spawn_blocking(move || {
        let good = run(config_text(""));
        let bad = run(config_text(
            "[tenants.ghost]\nbackend = \"main\"\nsearch_path = [\"ghost_schema\"]\n",
        ));
        (good, bad)
    });
    let ((good_code, good_out), (bad_code, bad_out)) =
        tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("pgtenant check finishes")
            .unwrap();
    assert_eq!(good_code, Some(0), "{good_out}");
    assert!(
        good_out.contains("connect: every backend logs in"),
        "{good_out}"
    );
    assert_eq!(bad_code, Some(1), "{bad_out}");
    let problems: Vec<&str> = bad_out
        .lines()
        .filter(|l| l.starts_with("problem: "))
        .collect();
    assert_eq!(
        problems,
        ["problem: tenant \"ghost\": schema \"ghost_schema\" does not exist in database app (backend \"main\")"],
        "{bad_out}"
    );
}
