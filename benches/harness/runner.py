"""Running pgbench (one process or several at once) and the two Python-client probes:
the wrong-tenant check and the idle-client memory probe.

A `Target` is one system as a client sees it: a port, a password, and how a client names
its tenant. pgtenant and PgBouncer get the *same* `PGOPTIONS='-c tenant=tN'` (PgBouncer
is told to ignore `options`, so it never learns the tenant); direct PostgreSQL gets the
tenant's `search_path` in `PGOPTIONS` instead (or nothing: `direct-public`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .stack import APP_DB, APP_USER, client_env
from .wire import Connection, PgError


@dataclass
class Target:
    name: str
    port: int
    password: str
    # "proxy": names its tenant in options; "direct": search_path in options; "public"
    # (direct on the public tables) and "none" (scenario 8: the app sets its own
    # search_path): nothing in options.
    naming: str

    def pgoptions(self, tenant: str) -> str | None:
        if self.naming == "proxy":
            return f"-c tenant={tenant}"
        if self.naming == "direct":
            return f"-c search_path={tenant},public"
        return None

    def bare(self) -> "Target":
        """The same system, its clients naming neither tenant nor schema at login."""
        return dataclasses.replace(self, naming="none")


@dataclass
class Run:
    tps: float | None = None
    latency_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    transactions: int = 0
    # pgbench's "initial connection time": -T counts it, the TPS figure leaves it out.
    connect_ms: float = 0.0
    failed: int = 0
    aborted_clients: int = 0
    rc: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.tps is not None and self.rc == 0 and not self.errors


_TPS = re.compile(r"^tps = ([\d.]+) \((without initial connection time|including reconnection times|including connections establishing)\)", re.M)
_LAT = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_TXNS = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_CONNECT = re.compile(r"^initial connection time = ([\d.]+) ms", re.M)


def _env(target: Target, tenant: str) -> dict[str, str]:
    env = client_env(target.password)
    opts = target.pgoptions(tenant)
    if opts:
        env["PGOPTIONS"] = opts
    return env


def _args(pgbench: str, target: Target, clients: int, jobs: int, seconds: float,
          extra: list[str], log_prefix: str | None, sampling: float | None,
          workload: list[str]) -> list[str]:
    args = [pgbench, "-h", "127.0.0.1", "-p", str(target.port), "-U", APP_USER,
            "-n", *workload, "-c", str(clients), "-j", str(min(jobs, clients)), "-T", str(seconds)]
    if log_prefix:
        args += ["-l", f"--log-prefix={log_prefix}"]
        if sampling and sampling < 1:
            args += [f"--sampling-rate={sampling}"]
    return args + extra + [APP_DB]


def _error_lines(stderr: str) -> list[str]:
    """The distinct errors in pgbench's stderr. Threads interleave their lines, and 64
    clients repeat one error 64 times: keep the server's message (or pgbench's own) once."""
    seen: list[str] = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line or "ignoring this error" in line:
            continue
        if "ERROR:" in line or "FATAL:" in line:
            key = line[min(i for i in (line.find("ERROR:"), line.find("FATAL:")) if i >= 0):]
        else:
            key = re.sub(r"^((pgbench|error):\s*)+", "", line)
        key = re.sub(r"client \d+", "client N", key)
        key = re.sub(r"\s+", " ", key)
        if key and key not in seen:
            seen.append(key)
    return seen[:5]


def _parse(out: str, err: str, rc: int) -> Run:
    run = Run(rc=rc)
    m = _TPS.search(out)
    run.tps = float(m.group(1)) if m else None
    m = _LAT.search(out)
    run.latency_ms = float(m.group(1)) if m else None
    m = _TXNS.search(out)
    run.transactions = int(m.group(1)) if m else 0
    m = _FAILED.search(out)
    run.failed = int(m.group(1)) if m else 0
    m = _CONNECT.search(out)
    run.connect_ms = float(m.group(1)) if m else 0.0
    run.aborted_clients = len(set(re.findall(r"client (\d+) aborted", err)))
    if rc != 0 or run.aborted_clients or run.failed:
        run.errors = _error_lines(err) or [f"pgbench exited with {rc}"]
    elif "ERROR:" in err or "FATAL:" in err:
        # pgbench logs some errors and carries on (a failed PREPARE with -M prepared, for
        # one): the run counts, but the errors are reported.
        run.errors = [f"(pgbench carried on) {e}" for e in _error_lines(err)]
    if run.aborted_clients:
        run.errors.insert(0, f"{run.aborted_clients} client(s) aborted")
    if run.tps is None and not run.errors:
        run.errors = [f"no TPS reported ({run.transactions} transactions; connecting took longer than -T?)"]
    return run


def _percentiles(log_dir: str) -> tuple[float | None, float | None]:
    lat = []
    for path in Path(log_dir).glob("pgbench_log*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
    if len(lat) < 20:
        return None, None
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0  # noqa: E731
    return pick(0.50), pick(0.99)


def pgbench(pgbench_exe: str, target: Target, tenants: list[str], clients_each: int,
            jobs: int, seconds: int, extra: list[str] | None = None,
            latency_log: bool = False, sampling: float | None = None,
            script: Callable[[str], str] | None = None) -> Run:
    """Runs one pgbench process per tenant, all at once, and sums their TPS. The workload
    is `-S`, or with `script` the pgbench script `script(tenant)` (`-f`)."""
    extra = extra or []
    with tempfile.TemporaryDirectory(prefix="pgbench-log-") as log_dir:
        procs = []
        for t in tenants:
            prefix = f"{log_dir}/pgbench_log_{t}" if latency_log else None
            workload = ["-S"]
            if script:
                path = Path(log_dir) / f"script_{t}.sql"
                path.write_text(script(t))
                workload = ["-f", str(path)]
            args = _args(pgbench_exe, target, clients_each, jobs, seconds, extra, prefix, sampling, workload)
            procs.append(subprocess.Popen(args, env=_env(target, t), cwd=log_dir,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        runs = []
        deadline = time.monotonic() + seconds + 180
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                err += "\npgbench timed out"
            runs.append(_parse(out, err, p.returncode))
        total = _combine(runs)
        if latency_log:
            total.p50_ms, total.p99_ms = _percentiles(log_dir)
        return total


def _combine(runs: list[Run]) -> Run:
    if len(runs) == 1:
        return runs[0]
    total = Run(rc=max(r.rc for r in runs))
    done = [r for r in runs if r.tps is not None]
    if done:
        total.tps = sum(r.tps for r in done)
        weighted = [(r.latency_ms, r.tps) for r in done if r.latency_ms is not None and r.tps]
        if weighted:
            total.latency_ms = sum(l * w for l, w in weighted) / sum(w for _, w in weighted)
    total.transactions = sum(r.transactions for r in runs)
    total.connect_ms = max(r.connect_ms for r in runs)
    total.failed = sum(r.failed for r in runs)
    total.aborted_clients = sum(r.aborted_clients for r in runs)
    missing = len(runs) - len(done)
    for r in runs:
        for e in r.errors:
            if e not in total.errors:
                total.errors.append(e)
    if missing:
        total.errors.insert(0, f"{missing} of {len(runs)} pgbench processes reported no TPS")
        total.tps = None
    total.errors = total.errors[:6]
    return total


@dataclass
class Isolation:
    reads: int = 0
    wrong: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)


async def _isolation_client(target: Target, tenant: str, queries: int, out: Isolation,
                             set_each: bool) -> None:
    want = tenant[1:]
    try:
        conn = await Connection.connect("127.0.0.1", target.port, APP_USER, APP_DB,
                                        target.password, target.pgoptions(tenant))
    except (OSError, PgError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        out.errors += queries
        out.samples.append(f"connect: {e}")
        return
    try:
        # What an application on PgBouncer has to do, since PgBouncer drops `options`: set
        # its schema once per connection, or (`set_each`, scenario 8) before every
        # transaction. Each statement is its own Query, so its own (implicit) transaction.
        # The same client runs against every system.
        set_schema = f'SET search_path TO "{tenant}", public'
        if not set_each:
            await conn.query(set_schema)
        for _ in range(queries):
            try:
                if set_each:
                    await conn.query(set_schema)
                rows = await conn.query("SELECT tenant_id FROM tenant_marker")
            except PgError as e:
                out.errors += 1
                if len(out.samples) < 5:
                    out.samples.append(str(e))
                continue
            out.reads += 1
            if rows[0][0] != want:
                out.wrong += 1
    except (OSError, PgError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        out.errors += 1
        out.samples.append(f"connection: {e!r}")
    finally:
        await conn.close()


def check_isolation(target: Target, tenants: list[str], clients_each: int, queries: int,
                    set_each: bool = False) -> Isolation:
    """Every client reads its tenant's marker view `queries` times; counts wrong answers.
    `set_each`: the client sends its `SET search_path` before every read, not once."""
    out = Isolation()

    async def main():
        await asyncio.gather(*(
            _isolation_client(target, t, queries, out, set_each) for t in tenants for _ in range(clients_each)
        ))

    asyncio.run(asyncio.wait_for(main(), 600))
    return out


@dataclass
class Memory:
    clients: int
    base_kb: int = 0
    idle_kb: int = 0
    after_query_kb: int = 0
    connected: int = 0
    errors: list[str] = field(default_factory=list)

    def per_client(self, kb: int) -> float | None:
        return (kb - self.base_kb) * 1024 / self.connected if self.connected else None


# Seconds between the last login (or query) and reading the pooler's RSS.
IDLE_SETTLE_S = 3.0


def idle_memory(target: Target, pid_fn, n: int, concurrency: int = 200) -> Memory:
    """Opens `n` logged-in clients (tenants t1..t64 in turn), then reads the pooler's RSS;
    then every client runs one `SELECT 1` and goes idle again, and RSS is read once more."""
    from .stack import rss_kb

    mem = Memory(clients=n)

    async def main():
        warm = await Connection.connect("127.0.0.1", target.port, APP_USER, APP_DB,
                                        target.password, target.pgoptions("t1"))
        await warm.query("SELECT 1")
        await warm.close()
        await asyncio.sleep(0.5)
        mem.base_kb = rss_kb(pid_fn())
        gate = asyncio.Semaphore(concurrency)
        conns: list[Connection] = []

        async def open_one(i: int):
            async with gate:
                try:
                    conns.append(await Connection.connect(
                        "127.0.0.1", target.port, APP_USER, APP_DB, target.password,
                        target.pgoptions(f"t{i % 64 + 1}"), timeout=60))
                except (OSError, PgError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                    if len(mem.errors) < 5:
                        mem.errors.append(f"connect: {e!r}")

        try:
            await asyncio.gather(*(open_one(i) for i in range(n)))
            mem.connected = len(conns)
            # Idle, steady state: pgtenant parks clients idle for 1 s (its default
            # park_idle_clients_after), so read a few seconds later; PgBouncer's RSS does
            # not change while its clients are idle.
            await asyncio.sleep(IDLE_SETTLE_S)
            mem.idle_kb = rss_kb(pid_fn())
            qgate = asyncio.Semaphore(64)

            async def one_query(c: Connection):
                async with qgate:
                    try:
                        await c.query("SELECT 1", timeout=60)
                    except (OSError, PgError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                        if len(mem.errors) < 5:
                            mem.errors.append(f"query: {e!r}")

            await asyncio.gather(*(one_query(c) for c in conns))
            await asyncio.sleep(IDLE_SETTLE_S)
            mem.after_query_kb = rss_kb(pid_fn())
        finally:
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 900))
    return mem


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
