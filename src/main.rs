//! The `pgtenant` binary: parses the command line, sets up logging and dispatches.
//! Everything else lives in the library; see `lib.rs` for the layout.
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use pgtenant::cli::{Cli, Command, LogFormat};
use pgtenant::config::{Config, ConfigError};

/// jemalloc, told to give memory back as soon as pages empty out (no decay delay): after a
/// burst of logins, what those logins freed (the tasks of clients that then parked, login
/// buffers) goes back to the system at once. With glibc's malloc, or with a decay delay
/// and a proxy whose clients have all gone idle (so nothing allocates and nothing purges),
/// it stayed resident: ~1.3 KB per idle client at 10,000 clients instead of ~0.5 KB.
/// `_RJEM_MALLOC_CONF` in the environment still overrides this.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C `const char *` for jemalloc's `malloc_conf`.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points at an immutable, 'static string.
unsafe impl Sync for MallocConf {}

#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(c"dirty_decay_ms:0,muzzy_decay_ms:0".as_ptr());

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        None => proxy(&cli.config, cli.takeover),
        Some(Command::Check { connect }) => check(&cli.config, connect),
        Some(Command::Verifier { password }) => verifier(password),
        Some(Command::Demo { keep_config }) => demo(keep_config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, so that `check` and `verifier` output on stdout stays clean. Colours
/// only on a terminal (and without `NO_COLOR`): a log file or collector gets plain text,
/// and a line costs less to format without the escape codes.
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && no_color_unset())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// <https://no-color.org/>: a non-empty `NO_COLOR` turns colours off.
fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Printed when the config file does not exist (most often: no `./proxy.toml` here).
const NO_CONFIG_HINT: &str = "hint: name the config file with --config FILE (or PGTENANT_CONFIG); \
every key is described in docs/CONFIGURATION.md, and proxy.toml in the source tree is a \
commented sample. To try pgtenant without a config: pgtenant demo";

/// Loads the config; a bad file is reported as is (it already names file, key and problem).
fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        if matches!(&e, ConfigError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
        {
            eprintln!("{NO_CONFIG_HINT}");
        }
        ExitCode::FAILURE
    })
}

/// `pgtenant check [--connect]`
fn check(path: &Path, connect: bool) -> anyhow::Result<ExitCode> {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    println!("{}: ok", path.display());
    print!("{}", config.summary());
    if !connect {
        return Ok(ExitCode::SUCCESS);
    }
    let problems = runtime(1)?.block_on(pgtenant::check::connect_check(&config));
    if problems.is_empty() {
        println!("connect: every backend logs in; every tenant's schemas exist");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        println!("problem: {problem}");
    }
    println!("connect: {} problem(s)", problems.len());
    Ok(ExitCode::FAILURE)
}

/// `pgtenant verifier [PASSWORD]`
fn verifier(password: Option<String>) -> anyhow::Result<ExitCode> {
    let password = match password {
        Some(password) => password,
        None => read_password_line()?,
    };
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    println!(
        "{}",
        postgres_protocol::password::scram_sha_256(password.as_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

/// One line from stdin without its line ending (other whitespace is part of the password).
fn read_password_line() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
        std::io::stderr().flush().context("writing the prompt")?;
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
}

/// `pgtenant demo`
fn demo(keep_config: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    let options = pgtenant::demo::DemoOptions { keep_config };
    runtime(pgtenant::config::auto_workers())?
        .block_on(pgtenant::demo::run(options))
        .context("demo")?;
    Ok(ExitCode::SUCCESS)
}

/// `pgtenant [--config FILE]`: runs the proxy until SIGTERM/SIGINT.
fn proxy(path: &Path, takeover: bool) -> anyhow::Result<ExitCode> {
    let config = match load_config(path) {
        Ok(config) => Arc::new(config),
        Err(code) => return Ok(code),
    };
    runtime(config.proxy.workers)?.block_on(async move {
        let addr = config.proxy.listen;
        let shutdown = CancellationToken::new();
        let proxy =
            pgtenant::Proxy::new(config.clone(), Some(path.to_path_buf()), shutdown.clone());
        let (listener, proxy) = if takeover {
            take_over(&config, proxy)?
        } else {
            let listener = bind(addr, config.proxy.reuse_port)
                .with_context(|| format!("cannot listen on {addr}"))?;
            defer_accept(&listener);
            (listener, proxy)
        };
        info!(addr = %listener.local_addr()?, config = %path.display(), "listening");
        spawn_signal_handler(shutdown, proxy.handle()).context("installing signal handlers")?;
        proxy.serve(listener).await.context("proxy stopped")?;
        info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// The client listener: `SO_REUSEADDR` (a restart finds the port free at once), and with
/// `reuse_port` `SO_REUSEPORT`, so that several processes can listen on one address (the
/// kernel spreads new connections over them).
/// `--takeover`: the listening sockets and then the clients of the process running with
/// this config.
fn take_over(
    config: &pgtenant::config::Config,
    proxy: pgtenant::Proxy,
) -> anyhow::Result<(tokio::net::TcpListener, pgtenant::Proxy)> {
    let socket = config
        .proxy
        .takeover_socket
        .path(config.proxy.listen.port())
        .context("--takeover needs proxy.takeover_socket (it is \"\")")?;
    let taken = pgtenant::takeover::take_over(&socket)?;
    taken.listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(taken.listener)?;
    let mut proxy = proxy.taking_over(taken.clients);
    if let Some(metrics) = taken.metrics {
        metrics.set_nonblocking(true)?;
        proxy = proxy.with_metrics_listener(tokio::net::TcpListener::from_std(metrics)?);
    }
    info!(socket = %socket.display(), "took the listening socket over; clients follow");
    Ok((listener, proxy))
}

fn bind(addr: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// How long the kernel holds a connection that has sent nothing before handing it over
/// anyway (PgBouncer's `tcp_defer_accept` default).
#[cfg(target_os = "linux")]
const DEFER_ACCEPT_SECS: libc::c_int = 45;

/// `TCP_DEFER_ACCEPT`, as PgBouncer sets by default on Linux: the kernel hands a connection
/// to `accept` only once the client has sent its first packet (PostgreSQL clients speak
/// first). Accepting a client and reading its SSLRequest or StartupMessage then take one
/// wake-up of the proxy instead of two, and a connection that never sends anything never
/// takes a client slot. Failing to set it only costs that; the proxy goes on.
#[cfg(target_os = "linux")]
fn defer_accept(listener: &tokio::net::TcpListener) {
    use std::os::fd::AsRawFd;
    let secs = DEFER_ACCEPT_SECS;
    // SAFETY: a valid socket descriptor, and a pointer to a c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        warn!(error = %std::io::Error::last_os_error(), "could not set TCP_DEFER_ACCEPT");
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_accept(_listener: &tokio::net::TcpListener) {}

/// One worker: a current-thread runtime (no work stealing, no cross-thread wakeups).
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// SIGTERM/SIGINT cancel `shutdown` (a second one exits at once); SIGHUP reloads the config
/// file (a bad file keeps the running config; `reload` logs why).
fn spawn_signal_handler(
    shutdown: CancellationToken,
    handle: pgtenant::ProxyHandle,
) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
                _ = hangup.recv() => {
                    info!(signal = "SIGHUP", "reloading the config file");
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        let _ = handle.reload().await;
                    });
                    continue;
                }
            };
            if shutdown.is_cancelled() {
                warn!(signal = name, "second signal: exiting now");
                std::process::exit(1);
            }
            info!(
                signal = name,
                "shutting down: no new clients, letting transactions finish"
            );
            shutdown.cancel();
        }
    });
    Ok(())
}
