//! Virtual sessions (issue 14): every client keeps its own session settings, as on a direct
//! connection, though all of them share one server connection.
//!
//! The differential harness `tests/clients/differential.py` runs random scripts of `SET`,
//! `RESET`, `set_config`, `DISCARD ALL`, transactions, savepoints, `SET LOCAL`, roles and
//! failing multi-statement queries on direct connections and through the proxy
//! (`pool_size = 1`), and compares what both sides observe after every statement: outcome,
//! transaction status, `current_setting` of every setting in play, `current_user`/
//! `session_user`, and the ParameterStatus values the driver was told. It needs psycopg 3
//! (scripts/test installs it; see [`python`]).

use std::process::{Command, Output};

use crate::support::{pg_conn_str, ProxyOptions, TestProxy};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/differential.py");

/// Fixed seeds: each run is reproducible with the command line the failure message prints.
const SEEDS: [u64; 3] = [1, 2, 3];

/// Observations wanted per pool mode, over all seeds (the issue asks for at least 1,000).
const MIN_OBSERVATIONS: usize = 1_000;

/// Where the test connects straight to PostgreSQL: server login `app`, database `app`.
fn direct_base() -> String {
    pg_conn_str("app", "app_pw", "app")
}

/// The proxy's connection string without a tenant (the harness adds `-c tenant=X`).
fn proxy_base(proxy: &TestProxy) -> String {
    proxy.conn_params("app", "secret", "app", None)
}

/// `python3` for the harness: no libpq environment (PGOPTIONS would reach both sides), and
/// the Python clients' directory of scripts/test on PYTHONPATH when it exists, so that
/// `cargo test --test it vsession` works outside scripts/test too.
fn python() -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT);
    for var in pgtenant::localpg::LIBPQ_ENV {
        cmd.env_remove(var);
    }
    let mut path = std::env::var("PYTHONPATH").unwrap_or_default();
    let default_dir = std::env::var("PGTENANT_PYCLIENTS_DIR").ok().or_else(|| {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            Some("/opt/pgtenant/pyclients".into())
        } else {
            std::env::var("XDG_CACHE_HOME")
                .ok()
                .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cache")))
                .map(|cache| format!("{cache}/pgtenant/pyclients"))
        }
    });
    if let Some(dir) = default_dir.filter(|d| std::path::Path::new(d).is_dir()) {
        if !path.split(':').any(|p| p == dir) {
            path = if path.is_empty() {
                dir
            } else {
                format!("{path}:{dir}")
            };
        }
    }
    cmd.env("PYTHONPATH", path);
    cmd
}

/// One harness run; returns its output and the command line that reproduces it.
fn run(args: &[&str]) -> (Output, String) {
    let mut cmd = python();
    cmd.args(args);
    let line = format!("python3 {SCRIPT} {}", shell_words(args));
    let out = cmd.output().expect("python3 runs");
    (out, line)
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.contains([' ', '\'', '"', '$']) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `observations=N differences=M` line's numbers.
fn counts(stdout: &str) -> Option<(usize, usize)> {
    let line = stdout.lines().find(|l| l.starts_with("observations="))?;
    let mut fields = line
        .split_whitespace()
        .map(|f| f.split_once('=').map(|(_, v)| v));
    let observations = fields.next()??.parse().ok()?;
    let differences = fields.next()??.parse().ok()?;
    Some((observations, differences))
}

/// Runs the harness once per seed and asserts every run found nothing, with at least
/// [`MIN_OBSERVATIONS`] observations in all.
fn differential(mode: &str, proxy: &str, naming: &str, clients: usize, steps: usize) {
    let direct = direct_base();
    let clients = clients.to_string();
    let steps = steps.to_string();
    let mut failures = Vec::new();
    let mut total = 0;
    for seed in SEEDS {
        let seed = seed.to_string();
        let args = [
            "--mode",
            mode,
            "--direct",
            &direct,
            "--proxy",
            proxy,
            "--proxy-naming",
            naming,
            "--seed",
            &seed,
            "--clients",
            &clients,
            "--steps",
            &steps,
        ];
        let (out, line) = run(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let found = counts(&stdout);
        total += found.map_or(0, |(n, _)| n);
        if !out.status.success() || found.is_none_or(|(_, d)| d > 0) {
            failures.push(format!(
                "seed {seed} ({}):\n{line}\n{stdout}{stderr}",
                out.status
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {mode}-mode runs differ from direct connections (psycopg missing? see \
         scripts/test):\n\n{}",
        failures.len(),
        SEEDS.len(),
        failures.join("\n")
    );
    assert!(
        total >= MIN_OBSERVATIONS,
        "only {total} observations in {mode} mode (want {MIN_OBSERVATIONS})"
    );
}

/// Four clients (tenants t1, t2, t3, r1, some with startup options), interleaved on the one
/// server connection: each one's settings must be its own, as on its own direct session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_clients_keep_their_own_settings() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1));
    let base = proxy_base(&proxy);
    tokio::task::block_in_place(|| differential("transaction", &base, "tenant", 4, 400));
}

/// Twelve clients one after another on the one server connection (some leave inside a
/// transaction): each one starts as on a fresh direct connection, nothing of the previous
/// client (settings, role, reported parameters, prepared statements, WITH HOLD cursors,
/// temporary tables, LISTEN) shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_clients_start_clean_and_keep_their_settings() {
    let proxy = TestProxy::start_with(ProxyOptions::default().pool_size(1).pool_mode("session"));
    let base = proxy_base(&proxy);
    tokio::task::block_in_place(|| differential("session", &base, "tenant", 12, 480));
}

/// The harness against PostgreSQL on both sides finds nothing, in both modes: its scripts
/// and observations are deterministic, so a difference through the proxy is the proxy's.
#[test]
fn harness_finds_no_difference_between_two_direct_runs() {
    let direct = direct_base();
    differential("transaction", &direct, "direct", 4, 400);
    differential("session", &direct, "direct", 12, 480);
}

/// ... and it does see a difference when there is one: the "proxy" side logs in as another
/// server user (tenant_t7, who may not `SET ROLE vs_role`).
#[test]
fn harness_reports_a_real_difference() {
    let direct = direct_base();
    let other = pg_conn_str("tenant_t7", "t7_pw", "app");
    let (out, line) = run(&[
        "--mode",
        "transaction",
        "--direct",
        &direct,
        "--proxy",
        &other,
        "--proxy-naming",
        "direct",
        "--seed",
        "1",
        "--steps",
        "100",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let found = counts(&stdout);
    assert!(
        out.status.code() == Some(1) && found.is_some_and(|(n, d)| n > 0 && d > 0),
        "expected differences (exit 1):\n{line}\n{stdout}{stderr}"
    );
    assert!(stdout.contains("differ in current_user"), "{stdout}");
}
