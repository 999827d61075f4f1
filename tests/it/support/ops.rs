//! Support for the operations tests: a proxy whose config lives in a file (so `RELOAD` and
//! [`pgtenant::ProxyHandle::reload`] can read it again), with an admin user, a `/metrics`
//! listener on a random port, and helpers for the console and for scraping.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgtenant::config::Config;
use pgtenant::{Proxy, ProxyHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};
use tokio_util::sync::CancellationToken;

pub use super::eventually;
use super::{connect, pg, ProxyOptions, TestProxy, PROXY_PASSWORD};

/// The console user (password `secret`), added to every [`OpsProxy`] config.
pub const ADMIN_USER: &str = "admin";

/// A [`TestProxy`] started from a config file, with its handle and metrics address.
pub struct OpsProxy {
    pub proxy: TestProxy,
    pub handle: ProxyHandle,
    pub metrics_addr: SocketAddr,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for OpsProxy {
    type Target = TestProxy;
    fn deref(&self) -> &TestProxy {
        &self.proxy
    }
}

/// `options` plus the admin user, as TOML for the shared PostgreSQL.
pub fn ops_toml(options: &ProxyOptions) -> String {
    let pg = pg();
    let options = options
        .clone()
        .proxy_line(&format!("admin_users = [\"{ADMIN_USER}\"]"))
        .extra(&format!(
            "[users.{ADMIN_USER}]\npassword = \"{PROXY_PASSWORD}\"\ntenants = []\n"
        ));
    options.toml(pg.host(), pg.port())
}

fn listener() -> tokio::net::TcpListener {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a listener");
    l.set_nonblocking(true).expect("nonblocking listener");
    tokio::net::TcpListener::from_std(l).expect("listener into tokio")
}

impl OpsProxy {
    /// Starts a proxy with `options` (plus the admin user). Call inside a tokio runtime.
    pub fn start(options: ProxyOptions) -> OpsProxy {
        let config_text = ops_toml(&options);
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, &config_text).expect("write the config file");
        let config = Config::load(&config_path)
            .unwrap_or_else(|e| panic!("test config does not load: {e}\n---\n{config_text}"));
        let (proxy_listener, metrics_listener) = (listener(), listener());
        let metrics_addr = metrics_listener.local_addr().expect("metrics address");
        let shutdown = CancellationToken::new();
        let proxy = Proxy::new(
            Arc::new(config),
            Some(config_path.clone()),
            shutdown.clone(),
        )
        .with_metrics_listener(metrics_listener);
        let handle = proxy.handle();
        OpsProxy {
            proxy: TestProxy::serve(proxy, proxy_listener, shutdown, config_text),
            handle,
            metrics_addr,
            config_path,
            _dir: dir,
        }
    }

    /// Replaces the config file with `options` (plus the admin user); nothing is reloaded.
    pub fn write_config(&self, options: &ProxyOptions) {
        self.write_config_text(&ops_toml(options));
    }

    pub fn write_config_text(&self, text: &str) {
        write_atomically(&self.config_path, text);
    }

    /// A console connection (database `pgtenant`) as the admin user.
    pub async fn admin(&self) -> Client {
        let conn = self.conn_params(ADMIN_USER, PROXY_PASSWORD, "pgtenant", None);
        connect(&conn)
            .await
            .unwrap_or_else(|e| panic!("admin console login: {e}"))
    }

    /// `GET path` on the metrics listener: (status line, body).
    pub async fn http_get(&self, path: &str) -> (String, String) {
        http(self.metrics_addr, &format!("GET {path} HTTP/1.1")).await
    }

    /// The `/metrics` body (asserting 200).
    pub async fn scrape(&self) -> String {
        let (status, body) = self.http_get("/metrics").await;
        assert!(status.contains("200"), "{status}\n{body}");
        body
    }
}

/// Sends one request line (plus Host) and reads the whole response.
pub async fn http(addr: SocketAddr, request_line: &str) -> (String, String) {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("{request_line}\r\nHost: test\r\nAccept: text/plain\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        let text = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        (
            head.lines().next().unwrap_or_default().to_string(),
            body.to_string(),
        )
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("HTTP response within 10s")
}

/// Writes `text` to `path` through a temporary file and a rename (as editors and config
/// management do), so a reload never sees half a file.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the new config");
    std::fs::rename(&tmp, path).expect("move the new config in place");
}

/// The rows of a simple query's result.
pub async fn rows(client: &Client, sql: &str) -> Vec<SimpleQueryRow> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", super::describe(&e)))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// The row whose column `key` equals `value`.
pub fn row_where<'a>(rows: &'a [SimpleQueryRow], key: &str, value: &str) -> &'a SimpleQueryRow {
    rows.iter()
        .find(|r| r.get(key) == Some(value))
        .unwrap_or_else(|| panic!("no row with {key} = {value}"))
}

/// Column `col` of `row` as a number.
pub fn num(row: &SimpleQueryRow, col: &str) -> u64 {
    let text = row.get(col).unwrap_or_else(|| panic!("{col} is NULL"));
    text.parse()
        .unwrap_or_else(|_| panic!("{col} = {text:?} is not a number"))
}

/// Value of the sample `name{labels}` (labels exactly as printed) in exposition text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a numeric sample"))
}
