//! The real `pgtenant` binary as a child process, for what only the binary does: signals
//! (SIGHUP reloads, SIGTERM drains), `workers` (its runtime), binding `metrics_listen`.
//!
//! Its log (stderr, `RUST_LOG=info`) goes to a file; [`Binary::check_log`] fails the test on
//! a panic or an ERROR in it, as [`super::watch`] does for the in-process proxy. Killed on
//! drop.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Child;

use super::ops::write_atomically;
use super::PROXY_PASSWORD;

pub struct Binary {
    child: Child,
    /// The client port it listens on.
    pub port: u16,
    pub config_path: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// A port that was free a moment ago (for a config the binary binds itself).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local address").port()
}

impl Binary {
    /// Writes `config_text` (its `listen = "127.0.0.1:0"` replaced by a free port) to a file,
    /// starts the binary on it and waits until it listens.
    pub async fn start(config_text: &str) -> Binary {
        Binary::start_on(config_text, free_port()).await
    }

    /// [`Binary::start`] on `port` (which another process may share with `reuse_port`).
    pub async fn start_on(config_text: &str, port: u16) -> Binary {
        let text = Binary::listen_on(config_text, port);
        Binary::spawn(&text, port, &[]).await
    }

    /// A new process started with `--takeover` on this one's config: it takes the
    /// listening socket and the clients over (this one then exits).
    pub async fn take_over(&self) -> Binary {
        let text = std::fs::read_to_string(&self.config_path).expect("read the config");
        Binary::spawn(&text, self.port, &["--takeover"]).await
    }

    async fn spawn(text: &str, port: u16, args: &[&str]) -> Binary {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("proxy.toml");
        let log_path = dir.path().join("pgtenant.log");
        write_atomically(&config_path, text);
        let log = std::fs::File::create(&log_path).expect("create the log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start pgtenant");
        let binary = Binary {
            child,
            port,
            config_path,
            log_path,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !binary.log().contains("pgtenant is accepting connections") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the binary did not listen within 10 s; its log:\n{}",
                binary.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        binary
    }

    /// `text` with `listen = "127.0.0.1:0"` replaced by `port`.
    pub fn listen_on(text: &str, port: u16) -> String {
        assert!(text.contains("listen = \"127.0.0.1:0\""), "{text}");
        text.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
    }

    /// Replaces the config file (`listen` kept on the same port).
    pub fn write_config(&self, text: &str) {
        write_atomically(&self.config_path, &Binary::listen_on(text, self.port));
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id().expect("the binary is running") as libc::pid_t
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: sends a signal to our own child process.
        assert_eq!(
            unsafe { libc::kill(self.pid(), signal) },
            0,
            "kill {signal}"
        );
    }

    /// Waits (at most `within`) for the process to exit.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the binary did not exit within {within:?}"))
            .expect("wait for the binary")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Fails the test if the binary panicked or logged an ERROR.
    pub fn check_log(&self) {
        let log = self.log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("panicked at") || l.contains(" ERROR "))
            .collect();
        assert!(bad.is_empty(), "the binary failed:\n{}", bad.join("\n"));
    }

    /// A key=value connection string for `app` (password `secret`) as `tenant`.
    pub fn conn_str(&self, tenant: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password={PROXY_PASSWORD} dbname=app \
             options='-c tenant={tenant}' connect_timeout=10",
            self.port
        )
    }
}
