//! Unit tests for config parsing and validation.
use std::time::Duration;

use super::*;
use crate::config::{AuthMethod, PeerConfig, PoolMode, SearchPathSync, UserSecret};

/// A sample setting every `[proxy]` key of the original design (docs/CONFIGURATION.md has
/// them all), with `admin_users` naming an `admin` user.
const FULL_SAMPLE: &str = r#"
[proxy]
listen = "0.0.0.0:6432"
pool_mode = "transaction"          # "transaction" | "session"
tenant_from = ["options", "user", "database"]   # tried in order; first that names a tenant wins
user_separator = "."               # "app.a.com" -> user "app", tenant "a.com"
default_tenant = ""                # for clients that name none; "" = reject them
auth = "scram-sha-256"             # client auth: "scram-sha-256" | "md5" | "trust"
search_path_sync = "tracked"       # "tracked" | "always"  (see Checkout)
admin_users = ["admin"]            # may use the admin database "pgtenant"
max_client_connections = 10000
query_wait_timeout = "30s"         # waiting for a server connection
server_connect_timeout = "5s"
server_idle_timeout = "10m"
server_lifetime = "1h"
idle_transaction_timeout = "0s"    # 0 = off
shutdown_timeout = "30s"
metrics_listen = "127.0.0.1:9930"  # optional: Prometheus text at /metrics

[backends.main]                    # a PostgreSQL server + database + login
host = "127.0.0.1"
port = 5432
database = "app"
user = "app"
password = "app_pw"                # or password_env = "APP_DB_PASSWORD"
pool_size = 20                     # max server connections per endpoint
min_pool_size = 0

[users.app]                        # who may connect to the proxy
password = "secret"                # plain, "SCRAM-SHA-256$..." verifier, or "md5..." hash
tenants = ["*"]                    # tenants this user may act as; "*" = all

[users.admin]
password = "admin_pw"

[tenants."a.com"]
backend = "main"
search_path = ["a_com", "public"]  # applied as SET search_path at checkout
settings = { "app.tenant_id" = "17" }  # optional extra GUCs applied at checkout
database = "app_a"                 # optional: overrides the backend's database (own endpoint)
user = "tenant_a"                  # optional: own server login (own endpoint) ...
password = "a_pw"                  # ... for tenants that need a hard isolation boundary
max_server_connections = 5         # optional cap of this tenant inside the endpoint's pool
max_client_connections = 500       # optional
"#;

/// The smallest valid file, for tests that add one key to it.
const MINIMAL: &str = r#"
[backends.main]
host = "127.0.0.1"
database = "app"
user = "app"

[users.app]
password = "secret"

[tenants."a.com"]
backend = "main"
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Config, ConfigError> {
    parse_with_env(text, "proxy.toml", &no_env)
}

/// Loads `text`, expecting an error, and returns its message.
fn error(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that `text` is rejected with a message containing every one of `parts`.
fn assert_error(text: &str, parts: &[&str]) {
    let message = error(text);
    assert!(message.starts_with("proxy.toml: "), "no origin: {message}");
    for part in parts {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
}

/// MINIMAL with `replace` substituted for `find` (which must occur).
fn minimal_with(find: &str, replace: &str) -> String {
    assert!(MINIMAL.contains(find), "{find:?} not in MINIMAL");
    MINIMAL.replacen(find, replace, 1)
}

#[test]
fn spec_sample_parses() {
    let config = load(FULL_SAMPLE).unwrap();
    let p = &config.proxy;
    assert_eq!(p.listen, "0.0.0.0:6432".parse().unwrap());
    assert_eq!(p.pool_mode, PoolMode::Transaction);
    assert_eq!(
        p.tenant_from,
        [
            TenantSource::Options,
            TenantSource::User,
            TenantSource::Database
        ]
    );
    assert_eq!(p.default_tenant, None);
    assert_eq!(p.auth, AuthMethod::ScramSha256);
    assert_eq!(p.search_path_sync, SearchPathSync::Tracked);
    assert_eq!(p.admin_users, ["admin"]);
    assert_eq!(p.server_idle_timeout, Duration::from_secs(600));
    assert_eq!(p.server_lifetime, Duration::from_secs(3600));
    assert_eq!(p.idle_transaction_timeout, None);
    assert_eq!(p.park_idle_clients_after, Some(Duration::from_secs(1)));
    assert_eq!(p.metrics_listen, Some("127.0.0.1:9930".parse().unwrap()));

    let tenant = &config.tenants["a.com"];
    assert_eq!(tenant.search_path, ["a_com", "public"]);
    assert_eq!(
        tenant.settings,
        [("app.tenant_id".to_string(), "17".to_string())]
    );
    let endpoint = config.endpoint_for(tenant);
    assert_eq!(
        (endpoint.database.as_str(), endpoint.user.as_str()),
        ("app_a", "tenant_a")
    );
    assert_eq!(endpoint.password.as_deref(), Some("a_pw"));
    assert_eq!(tenant.max_server_connections, Some(5));
    assert!(config.users["app"].tenants.allows("a.com"));
    assert!(matches!(
        config.users["app"].secret,
        UserSecret::Plain { .. }
    ));
}

#[test]
fn defaults_follow_the_spec() {
    let config = load(MINIMAL).unwrap();
    let p = &config.proxy;
    assert_eq!(p.listen, "0.0.0.0:6432".parse().unwrap());
    assert_eq!(p.user_separator, ".");
    assert_eq!(p.tenant_from.len(), 3);
    assert!(p.admin_users.is_empty());
    assert_eq!(p.max_client_connections, 10_000);
    assert_eq!(p.query_wait_timeout, Duration::from_secs(30));
    assert_eq!(p.server_connect_timeout, Duration::from_secs(5));
    assert_eq!(p.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(p.metrics_listen, None);
    assert_eq!(p.max_message_size, 1 << 30);
    assert_eq!(p.client_login_timeout, Duration::from_secs(60));
    assert_eq!(p.max_pending_logins, 1000);
    assert_eq!(p.max_prepared_statements, 200);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(p.workers, (cores / 2).max(1));
    let backend = &config.backends["main"];
    assert_eq!(
        (backend.port, backend.pool_size, backend.min_pool_size),
        (5432, 20, 0)
    );
    assert_eq!(backend.password, None);
    assert_eq!(config.users["app"].tenants, TenantAllow::All);
    let tenant = &config.tenants["a.com"];
    assert_eq!(tenant.search_path, ["public"]);
    assert!(tenant.settings.is_empty());
    assert_eq!(config.endpoint_for(tenant).database, "app");
}

#[test]
fn durations() {
    let with = |value: &str| {
        minimal_with(
            "[backends.main]",
            &format!("[proxy]\nquery_wait_timeout = {value}\n[backends.main]"),
        )
    };
    let config = load(&with(r#""250ms""#)).unwrap();
    assert_eq!(config.proxy.query_wait_timeout, Duration::from_millis(250));
    let config = load(&with(r#""10m""#)).unwrap();
    assert_eq!(config.proxy.query_wait_timeout, Duration::from_secs(600));
    assert_error(
        &with("30"),
        &[
            "query_wait_timeout",
            "duration string with a unit",
            "line 3",
        ],
    );
    assert_error(
        &with(r#""30""#),
        &["proxy.query_wait_timeout: \"30\" is not a duration"],
    );
    assert_error(
        &with(r#""0s""#),
        &["proxy.query_wait_timeout: must be longer than 0s"],
    );
    let idle = minimal_with(
        "[backends.main]",
        "[proxy]\nidle_transaction_timeout = \"1m\"\n[backends.main]",
    );
    assert_eq!(
        load(&idle).unwrap().proxy.idle_transaction_timeout,
        Some(Duration::from_secs(60))
    );
    let never = minimal_with(
        "[backends.main]",
        "[proxy]\npark_idle_clients_after = \"0s\"\n[backends.main]",
    );
    assert_eq!(load(&never).unwrap().proxy.park_idle_clients_after, None);
}

#[test]
fn unknown_keys_are_rejected() {
    assert_error(
        &minimal_with(
            "[backends.main]",
            "[proxy]\nlisten_addr = \"x\"\n[backends.main]",
        ),
        &["listen_addr", "line 3"],
    );
    assert_error(
        &minimal_with("backend = \"main\"", "backend = \"main\"\nschema = \"a\""),
        &["unknown field `schema`"],
    );
    assert_error(
        &minimal_with("user = \"app\"", "user = \"app\"\npasword = \"x\""),
        &["unknown field `pasword`"],
    );
    assert_error(
        &format!("{MINIMAL}\n[tenant.x]\nbackend = \"main\"\n"),
        &["unknown field `tenant`"],
    );
    assert_error(
        &format!("{MINIMAL}\n[users.app2]\npassword = \"x\"\nrole = 1\n"),
        &["unknown field `role`"],
    );
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    assert_error("[proxy\nlisten = 1", &["TOML parse error at line 1"]);
    assert_error(
        &minimal_with("host = \"127.0.0.1\"", "host = 127.0.0.1"),
        &["line 3"],
    );
}

#[test]
fn references_are_checked() {
    assert_error(
        &minimal_with("backend = \"main\"", "backend = \"mian\""),
        &[r#"tenants."a.com".backend: no backend named "mian" (backends: main)"#],
    );
    let with_proxy = |line: &str| {
        minimal_with(
            "[backends.main]",
            &format!("[proxy]\n{line}\n[backends.main]"),
        )
    };
    assert_error(
        &with_proxy(r#"default_tenant = "b.com""#),
        &[r#"proxy.default_tenant: no tenant named "b.com" (tenants: a.com)"#],
    );
    assert_error(
        &with_proxy(r#"admin_users = ["root"]"#),
        &[r#"proxy.admin_users[0]: no user named "root""#],
    );
    assert_error(
        &minimal_with(
            "password = \"secret\"",
            "password = \"secret\"\ntenants = [\"a.com\", \"b.com\"]",
        ),
        &[r#"users.app.tenants[1]: no tenant named "b.com""#],
    );
    assert_error(
        "[users.app]\npassword = \"x\"\n",
        &["backends: at least one"],
    );
    let config = load(&with_proxy(r#"default_tenant = "a.com""#)).unwrap();
    assert_eq!(config.proxy.default_tenant.as_deref(), Some("a.com"));
}

#[test]
fn proxy_values_are_checked() {
    let with_proxy = |line: &str| {
        minimal_with(
            "[backends.main]",
            &format!("[proxy]\n{line}\n[backends.main]"),
        )
    };
    assert_error(
        &with_proxy(r#"pool_mode = "statement""#),
        &[r#"proxy.pool_mode: "statement" is not one of "transaction", "session""#],
    );
    assert_error(&with_proxy(r#"auth = "password""#), &["proxy.auth:"]);
    assert_error(
        &with_proxy(r#"search_path_sync = "never""#),
        &["proxy.search_path_sync:"],
    );
    assert_error(
        &with_proxy(r#"tenant_from = ["user", "ssl"]"#),
        &[r#"proxy.tenant_from[1]: "ssl" is not one of"#],
    );
    assert_error(
        &with_proxy(r#"tenant_from = ["user", "user"]"#),
        &["proxy.tenant_from[1]: \"user\" is listed twice"],
    );
    assert_error(
        &with_proxy("tenant_from = []"),
        &["proxy.tenant_from: empty"],
    );
    assert_error(
        &with_proxy(r#"user_separator = """#),
        &["proxy.user_separator: must not be empty"],
    );
    assert_error(
        &with_proxy(r#"listen = "localhost:6432""#),
        &["proxy.listen: \"localhost:6432\" is not an IP address"],
    );
    assert_error(
        &with_proxy(r#"metrics_listen = "9930""#),
        &["proxy.metrics_listen:"],
    );
    assert_error(
        &with_proxy("max_client_connections = 0"),
        &["proxy.max_client_connections: must be at least 1"],
    );
    assert_eq!(load(&with_proxy("workers = 3")).unwrap().proxy.workers, 3);
    assert_error(&with_proxy("workers = -1"), &["workers"]);
    assert_error(
        &with_proxy("max_prepared_statements = 0"),
        &["proxy.max_prepared_statements:"],
    );
    assert_error(
        &with_proxy("max_pending_logins = 0"),
        &["proxy.max_pending_logins: must be at least 1"],
    );
    assert_error(
        &with_proxy("max_pending_logins = -5"),
        &["max_pending_logins"],
    );
    assert_eq!(
        load(&with_proxy("max_pending_logins = 50"))
            .unwrap()
            .proxy
            .max_pending_logins,
        50
    );
    assert_error(
        &with_proxy(r#"client_login_timeout = "0s""#),
        &["proxy.client_login_timeout: must be longer than 0s"],
    );
    assert_error(
        &with_proxy(r#"client_login_timeout = "soon""#),
        &["proxy.client_login_timeout:", "not a duration"],
    );
    assert_eq!(
        load(&with_proxy(r#"client_login_timeout = "5s""#))
            .unwrap()
            .proxy
            .client_login_timeout,
        Duration::from_secs(5)
    );
    assert_error(
        &with_proxy("max_message_size = -1"),
        &["max_message_size", "line 3"],
    );
    let config = load(&with_proxy("tenant_from = []\ndefault_tenant = \"a.com\"")).unwrap();
    assert!(config.proxy.tenant_from.is_empty());
}

#[test]
fn backend_values_are_checked() {
    assert_error(
        &minimal_with("user = \"app\"", "user = \"app\"\npool_size = 0"),
        &["backends.main.pool_size: must be at least 1"],
    );
    assert_error(
        &minimal_with(
            "user = \"app\"",
            "user = \"app\"\npool_size = 2\nmin_pool_size = 3",
        ),
        &["backends.main.min_pool_size: 3 is larger than pool_size (2)"],
    );
    assert_error(
        &minimal_with("host = \"127.0.0.1\"", "host = \"\""),
        &["backends.main.host: must not be empty"],
    );
    assert_error(
        &minimal_with("user = \"app\"", "user = \"app\"\nport = 0"),
        &["backends.main.port:"],
    );
    assert_error(
        &minimal_with(
            "user = \"app\"",
            "user = \"app\"\npassword = \"a\"\npassword_env = \"B\"",
        ),
        &["backends.main: set password or password_env, not both"],
    );
}

#[test]
fn password_env_is_resolved() {
    let text = minimal_with(
        "user = \"app\"",
        "user = \"app\"\npassword_env = \"PGTENANT_TEST_PW\"",
    );
    assert_error(
        &text,
        &["backends.main.password_env: environment variable PGTENANT_TEST_PW is not set"],
    );
    let env = |name: &str| (name == "PGTENANT_TEST_PW").then(|| "from_env".to_string());
    let config = parse_with_env(&text, "proxy.toml", &env).unwrap();
    assert_eq!(
        config.backends["main"].password.as_deref(),
        Some("from_env")
    );
    let empty = |_: &str| Some(String::new());
    let message = parse_with_env(&text, "proxy.toml", &empty)
        .unwrap_err()
        .to_string();
    assert!(message.contains("PGTENANT_TEST_PW is empty"), "{message}");
}

#[test]
fn tenant_values_are_checked() {
    let with = |extra: &str| {
        minimal_with(
            "backend = \"main\"",
            &format!("backend = \"main\"\n{extra}"),
        )
    };
    assert_error(
        &with(r#"search_path = ["a", ""]"#),
        &[r#"tenants."a.com".search_path[1]: schema names must not be empty"#],
    );
    assert_error(
        &with("max_server_connections = 0"),
        &[r#"tenants."a.com".max_server_connections: must be at least 1"#],
    );
    assert_error(
        &with("max_client_connections = 0"),
        &[r#"tenants."a.com".max_client_connections:"#],
    );
    assert_error(
        &with(r#"user = "tenant_a""#),
        &[r#"tenants."a.com": user "tenant_a" needs a password or password_env"#],
    );
    assert_error(
        &with(r#"password = "x""#),
        &[r#"tenants."a.com": password is only used together with user"#],
    );
    assert_error(
        &with("user = \"t\"\npassword_env = \"PGTENANT_TEST_TENANT_PW\""),
        &[
            r#"tenants."a.com".password_env: environment variable PGTENANT_TEST_TENANT_PW is not set"#,
        ],
    );
    assert_error(
        &format!("{MINIMAL}\n[tenants.\"\"]\nbackend = \"main\"\n"),
        &["tenants.\"\": the name must not be empty"],
    );
    let config = load(&with("search_path = []")).unwrap();
    assert!(config.tenants["a.com"].search_path.is_empty());
}

#[test]
fn settings_are_checked_and_keep_file_order() {
    let with = |settings: &str| {
        minimal_with(
            "backend = \"main\"",
            &format!("backend = \"main\"\nsettings = {{ {settings} }}"),
        )
    };
    let config = load(&with(
        r#"zeta = "1", "app.tenant_id" = 17, alpha = true, "app.name" = "x""#,
    ))
    .unwrap();
    let settings: Vec<(&str, &str)> = config.tenants["a.com"]
        .settings
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        settings,
        [
            ("zeta", "1"),
            ("app.tenant_id", "17"),
            ("alpha", "true"),
            ("app.name", "x")
        ]
    );
    for bad in ["1abc", "a.b.c", "a-b", "a.", ".a", "a b", "", "é"] {
        assert_error(
            &with(&format!("{bad:?} = \"1\"")),
            &[r#"tenants."a.com".settings."#, "not a setting name"],
        );
    }
    assert_error(
        &with(r#"bad-name = "1""#),
        &[r#"tenants."a.com".settings.bad-name: not a setting name"#],
    );
    assert_error(
        &with(r#"search_path = "x""#),
        &["use the tenant's search_path key"],
    );
    assert_error(
        &with(r#""App.X" = "1", "app.x" = "2""#),
        &["settings.\"app.x\": set twice"],
    );
    assert_error(&with("work_mem = 0.5"), &["a setting value"]);
    assert_error(&with("work_mem = [1]"), &["a setting value"]);
    for good in ["a", "_a1", "A_b.c_D9", "x._"] {
        assert!(is_setting_name(good), "{good}");
    }
}

#[test]
fn user_secrets_are_parsed() {
    let verifier = postgres_protocol::password::scram_sha_256(b"pw");
    let text = format!(
        "{MINIMAL}\n[users.v]\npassword = \"{verifier}\"\n[users.m]\npassword = \"md5{}\"\n",
        "0".repeat(32)
    );
    let config = load(&text).unwrap();
    assert!(matches!(config.users["v"].secret, UserSecret::Scram(ref s) if s.iterations == 4096));
    assert!(matches!(config.users["m"].secret, UserSecret::Md5(_)));
    let bad = format!("{MINIMAL}\n[users.v]\npassword = \"SCRAM-SHA-256$4096:abc\"\n");
    assert_error(
        &bad,
        &["users.v.password: not a valid SCRAM-SHA-256 verifier"],
    );
}

#[test]
fn summary_lists_everything_but_secrets() {
    let summary = load(FULL_SAMPLE).unwrap().summary();
    for part in [
        "127.0.0.1:5432",
        "database app",
        "pool_size 20",
        "\"a.com\"",
        "app.tenant_id",
        "user tenant_a",
        "tenants *",
        "admin",
    ] {
        assert!(summary.contains(part), "{part:?} not in:\n{summary}");
    }
    for secret in [
        "app_pw",
        "secret",
        "a_pw",
        "admin_pw",
        "SCRAM-SHA-256$",
        "17",
    ] {
        assert!(!summary.contains(secret), "{secret:?} leaked:\n{summary}");
    }
}

#[test]
fn peers_need_an_instance_id_and_numeric_distinct_names() {
    let with_id = |id: u32, tail: &str| format!("[proxy]\ninstance_id = {id}\n{MINIMAL}{tail}");
    let peer = "\n[peers.2]\nhost = \"10.0.0.12\"\n";
    let config = load(&with_id(1, peer)).expect("peers load");
    assert_eq!(config.proxy.instance_id, 1);
    assert_eq!(
        config.peers.get(&2),
        Some(&PeerConfig {
            host: "10.0.0.12".into(),
            port: 6432
        })
    );
    assert!(!config.proxy.reuse_port);
    assert_error(
        &format!("{MINIMAL}{peer}"),
        &["proxy.instance_id", "must be set"],
    );
    assert_error(
        &with_id(1, "\n[peers.b]\nhost = \"h\"\n"),
        &["peers.b", "instance_id"],
    );
    assert_error(
        &with_id(1, "\n[peers.1]\nhost = \"h\"\n"),
        &["peers.1", "own instance_id"],
    );
    assert_error(&with_id(4000, ""), &["proxy.instance_id", "out of range"]);
}
