"""The processes under test: a throwaway PostgreSQL, PgBouncer and pgtenant.

Every process started here is registered with `Reaper`, which stops them all (and removes
the temp dir) on normal exit, on an exception, on Ctrl-C/SIGTERM/SIGHUP, and via atexit.
Children also get PR_SET_PDEATHSIG, so even a `kill -9` of the harness takes them down.

PostgreSQL and PgBouncer refuse to run as root: when the harness is root they run as the
`postgres` OS user (Popen `user=`/`group=`, no PAM, so RLIMIT_NOFILE is inherited), and the
temp dir is chowned to it.
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1

# Unix-socket logins are trust (setup only); TCP logins, which every benchmark uses, SCRAM.
APP_USER, APP_DB = "app", "app"
PROXY_USER, PROXY_PASSWORD = "app", "secret"


@dataclass
class Auth:
    """How the passwords are stored. Both poolers always get the same secret for `app`.

    - `verifier` (default): both poolers store the same SCRAM-SHA-256 verifier of `secret`,
      so a client login costs each of them a few HMACs. PgBouncer 1.18 can then log in to
      the server only by SCRAM pass-through (a stored verifier plus a forced user with its
      own password fails: pgbouncer/pgbouncer#944, #1461), so the role `app` has that same
      verifier as its password, and every system logs in to PostgreSQL with `secret`.
    - `plain`: the brief's literal setup: role `app` password `app_pw`, both poolers hold
      the plain password `secret`, PgBouncer logs in as a forced user with `app_pw`. PgBouncer
      then derives a SCRAM secret (pbkdf2, 4096 rounds) on every client login; pgtenant
      derives it once at config load.
    """

    mode: str
    server_password: str
    role_password: str
    proxy_secret: str

    @classmethod
    def make(cls, mode: str, verifier: str) -> "Auth":
        if mode == "verifier":
            return cls(mode, PROXY_PASSWORD, verifier, verifier)
        if mode == "plain":
            return cls(mode, "app_pw", "app_pw", PROXY_PASSWORD)
        raise ValueError(f"unknown auth mode {mode!r}")


def _pdeathsig() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class Reaper:
    """Owns every child process and the temp dir; `cleanup()` is idempotent."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[str] = []
        self.done = False
        atexit.register(self.cleanup)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        # Unwind through every `finally`; cleanup() runs there and again at exit (no-op).
        raise KeyboardInterrupt(f"signal {signum}")

    def spawn(self, args: list[str], as_pg_user: bool = False, **kw) -> subprocess.Popen:
        if as_pg_user and os.geteuid() == 0:
            kw.update(user="postgres", group="postgres", extra_groups=[])
        p = subprocess.Popen(args, preexec_fn=_pdeathsig, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        if p in self.procs:
            self.procs.remove(p)

    def tempdir(self, prefix: str) -> str:
        d = tempfile.mkdtemp(prefix=prefix)
        os.chmod(d, 0o755)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(d, pw.pw_uid, pw.pw_gid)
        self.dirs.append(d)
        return d

    def cleanup(self) -> None:
        if self.done:
            return
        self.done = True
        for p in reversed(list(self.procs)):
            # PostgreSQL: SIGQUIT is "immediate shutdown"; the others stop on SIGTERM.
            self.stop(p, getattr(p, "stop_signal", signal.SIGTERM), grace=10)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


def client_env(password: str | None = None, **extra: str) -> dict[str, str]:
    """The environment for a PostgreSQL client (psql, pgbench): ours without any PG*
    variable, so nothing of the caller's (PGHOST, PGOPTIONS, ...) leaks in, plus PGPASSWORD
    when given and `extra` (e.g. PGOPTIONS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_accepting(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before accepting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not accept on port {port} within {timeout}s")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_and_switches(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, all threads) and context switches so far of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    switches = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        except OSError:
            pass  # a thread that just exited
    return cpu, switches


def find_pg_bin() -> str:
    env = os.environ.get("PG_BIN")
    if env:
        return env
    preferred = "/usr/lib/postgresql/15/bin"
    if os.path.exists(f"{preferred}/initdb"):
        return preferred
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        sys.exit("no PostgreSQL binaries: install postgresql-15 or set PG_BIN")
    return os.path.dirname(found[-1])


def ensure_pgbouncer() -> str:
    exe = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if exe:
        return exe
    print("pgbouncer not found: installing it with apt-get", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], check=True, timeout=600,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    # The package starts a service on :6432 where systemd exists; ours uses its own port.
    subprocess.run(["service", "pgbouncer", "stop"], capture_output=True, timeout=60)
    return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class Postgres:
    """A PostgreSQL cluster in a temp dir, on a random port of 127.0.0.1."""

    def __init__(self, reaper: Reaper, bin_dir: str, max_connections: int):
        self.reaper, self.bin = reaper, bin_dir
        self.dir = reaper.tempdir("pgtenant-bench-")
        self.data = f"{self.dir}/data"
        self.port = free_port()
        self.max_connections = max_connections
        self.proc: subprocess.Popen | None = None
        self.log = open(f"{self.dir}/postgres.log", "ab")
        pwfile = f"{self.dir}/pw"
        Path(pwfile).write_text("postgres\n")
        self._chown(pwfile)
        r = reaper.spawn(
            [f"{bin_dir}/initdb", "-D", self.data, "-U", "postgres", "--pwfile", pwfile,
             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8",
             "--locale=C"],
            as_pg_user=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        out, _ = r.communicate(timeout=300)
        reaper.procs.remove(r)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{out.decode(errors='replace')}")

    def _chown(self, path: str) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        conf = {
            "port": self.port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.dir}'",
            "max_connections": self.max_connections,
            "shared_buffers": "'256MB'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        args = [f"{self.bin}/postgres", "-D", self.data]
        for k, v in conf.items():
            args += ["-c", f"{k}={v}".replace("'", "")]
        self.proc = self.reaper.spawn(args, as_pg_user=True, stdout=self.log, stderr=self.log)
        self.proc.stop_signal = signal.SIGQUIT
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited; see {self.dir}/postgres.log:\n" + self.tail_log())
            r = subprocess.run([f"{self.bin}/pg_isready", "-h", self.dir, "-p", str(self.port)],
                               capture_output=True, timeout=10)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("postgres did not become ready in 60s:\n" + self.tail_log())

    def tail_log(self, n: int = 30) -> str:
        try:
            return "\n".join(Path(f"{self.dir}/postgres.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc:
            # SIGINT = fast shutdown: clean, and quick with fsync off.
            self.reaper.stop(self.proc, signal.SIGINT, grace=60)
            self.proc = None

    def restart(self, max_connections: int) -> None:
        self.stop()
        self.max_connections = max_connections
        self.start()

    def psql(self, sql: str, user: str = "postgres", db: str = "postgres") -> str:
        env = client_env()
        r = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.dir,
             "-p", str(self.port), "-U", user, "-d", db],
            input=sql.encode(), capture_output=True, env=env, timeout=600,
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr.decode(errors='replace')}")
        return r.stdout.decode()

    def version(self) -> str:
        return self.psql("SHOW server_version").strip()


class PgBouncer:
    """PgBouncer in transaction mode, SCRAM client auth, one forced server login."""

    def __init__(self, reaper: Reaper, exe: str, pg: Postgres, auth: Auth, name: str = "pgbouncer"):
        self.reaper, self.exe, self.pg = reaper, exe, pg
        self.port = free_port()
        self.dir = f"{pg.dir}/{name}"
        os.makedirs(self.dir, exist_ok=True)
        pg._chown(self.dir)
        Path(f"{self.dir}/userlist.txt").write_text(f'"{PROXY_USER}" "{auth.proxy_secret}"\n')
        login = "" if auth.mode == "verifier" else f" user={APP_USER} password={auth.server_password}"
        # PgBouncer cannot route by tenant, so every one of its server connections reads
        # through tenant t1's views (the schema all single-tenant scenarios use): the same
        # SQL against the same relations as pgtenant and direct, instead of the cheaper
        # public tables (the views alone cost 5-25% of pgbench -S's TPS here).
        Path(f"{self.dir}/pgbouncer.ini").write_text(f"""\
[databases]
{APP_DB} = host=127.0.0.1 port={pg.port} dbname={APP_DB}{login} connect_query='SET search_path TO t1, public'

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {self.dir}/userlist.txt
pool_mode = transaction
default_pool_size = 8
max_client_conn = 12000
ignore_startup_parameters = options,extra_float_digits
logfile = {self.dir}/pgbouncer.log
pidfile = {self.dir}/pgbouncer.pid
""")
        for f in ("userlist.txt", "pgbouncer.ini"):
            pg._chown(f"{self.dir}/{f}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(f"{self.dir}/stderr.log", "ab")
        self.proc = self.reaper.spawn([self.exe, f"{self.dir}/pgbouncer.ini"], as_pg_user=True,
                                      stdout=out, stderr=out)
        wait_accepting(self.port, self.proc, "pgbouncer")

    def stop(self) -> None:
        if self.proc:
            self.reaper.stop(self.proc, signal.SIGINT)
            self.proc = None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(Path(f"{self.dir}/pgbouncer.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# The tenant of clients that name none (scenario 8: an app that sets its own search_path).
# Its search_path is public's, so a read through it that the app's own SET did not steer
# answers tenant 0: a wrong-tenant read.
DEFAULT_TENANT = "shared"


def backend_and_user_toml(pg: Postgres, auth: Auth) -> list[str]:
    """proxy.toml lines for the bench's one backend (`main`, pool_size 8) and its proxy
    user's `[users]` block (its password last: a caller may add lines to the block)."""
    return [
        "[backends.main]",
        'host = "127.0.0.1"',
        f"port = {pg.port}",
        f'database = "{APP_DB}"',
        f'user = "{APP_USER}"',
        f'password = "{auth.server_password}"',
        "pool_size = 8",
        "",
        f"[users.{PROXY_USER}]",
        f'password = "{auth.proxy_secret}"',
    ]


class PgTenant:
    """pgtenant (release build) with `search_path_sync` set per instance. With
    `default_tenant`, a tenant `shared` (search_path public) takes clients that name none."""

    def __init__(self, reaper: Reaper, exe: str, pg: Postgres, auth: Auth,
                 sync: str = "tracked", tenants: int = 64, name: str = "pgtenant",
                 default_tenant: bool = False):
        self.reaper, self.exe, self.pg, self.sync = reaper, exe, pg, sync
        self.port = free_port()
        self.dir = f"{pg.dir}/{name}"
        os.makedirs(self.dir, exist_ok=True)
        self.config = f"{self.dir}/proxy.toml"
        lines = [
            "[proxy]",
            f'listen = "127.0.0.1:{self.port}"',
            'pool_mode = "transaction"',
            'auth = "scram-sha-256"',
            f'search_path_sync = "{sync}"',
            *([f'default_tenant = "{DEFAULT_TENANT}"'] if default_tenant else []),
            "max_client_connections = 12000",
            "shutdown_timeout = \"5s\"",
            "",
            *backend_and_user_toml(pg, auth),
            'tenants = ["*"]',
            "",
        ]
        for i in range(1, tenants + 1):
            lines += [f"[tenants.t{i}]", 'backend = "main"', f'search_path = ["t{i}", "public"]', ""]
        if default_tenant:
            lines += [f"[tenants.{DEFAULT_TENANT}]", 'backend = "main"', 'search_path = ["public"]', ""]
        Path(self.config).write_text("\n".join(lines))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(f"{self.dir}/pgtenant.log", "ab")
        self.proc = self.reaper.spawn([self.exe, "--config", self.config], stdout=out, stderr=out)
        wait_accepting(self.port, self.proc, f"pgtenant ({self.sync})", timeout=30)

    def stop(self) -> None:
        if self.proc:
            self.reaper.stop(self.proc, signal.SIGTERM)
            self.proc = None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(Path(f"{self.dir}/pgtenant.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
