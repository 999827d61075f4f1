#!/usr/bin/env python3
"""Pooler memory per idle client with real drivers (issue 21, item 6): asyncpg, psycopg
(async) and pgbench-style raw clients, pgtenant against PgBouncer.

    python3 benches/idle_drivers.py                       # builds pgtenant (release), N=10,000, 2 pairs
    python3 benches/idle_drivers.py --no-build --pgtenant PATH --clients 2000 --pairs 1
    python3 benches/idle_drivers.py --drivers asyncpg     # one driver

For each driver and each pooler (A B A B ..., `--pairs` rounds), a fresh pooler process is
started (memory a previous run freed would be reused and hide the cost); one client of the
driver logs in and runs a query (so the pools exist); RSS is read; N clients of the driver
connect as the driver normally does (tenants t1..t64 in turn, named by `options` as
scenario 7 does: PgBouncer ignores it) and then stay idle; RSS is read again 3 s after the
last login (pgtenant parks clients idle for 1 s). Bytes per idle client = RSS growth / N.
Then each client makes one *use* (a `SELECT 1`; asyncpg also the `reset()` an asyncpg Pool
runs at release) and idles again, and RSS is read once more, 3 s later. The table shows the
medians over the rounds. `--application-name NAME` makes every client send one, as an
app's fleet does.

Before measuring, it logs once what each driver sends in its startup packet (a fake server
that reads it) and what it runs at connect (`log_statement = all` on a direct connection).
The drivers come from PYTHONPATH (e.g. /opt/pgtenant/pyclients: asyncpg and psycopg).
Python 3.11; everything started is stopped at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.stack import (  # noqa: E402
    APP_DB, APP_USER, PROXY_PASSWORD, PROXY_USER, Auth, PgBouncer, PgTenant, Postgres, Reaper,
    ensure_pgbouncer, find_pg_bin, free_port, rss_kb,
)
from harness.wire import PROTOCOL_V3, Connection, scram_verifier  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TENANTS = 64
SETTLE_S = 3.0
DRIVERS = ("pgbench", "asyncpg", "psycopg")


# -- the drivers -------------------------------------------------------------------------------

class Raw:
    """pgbench-style: user, database, options (the harness's wire client), and
    application_name when given (real pgbench sends `pgbench`, libpq's fallback name)."""

    name = "pgbench"

    def __init__(self, app_name: str):
        self.app_name = app_name

    async def connect(self, port: int, tenant: str | None, password: str = PROXY_PASSWORD):
        options = f"-c tenant={tenant}" if tenant else None
        extra = {"application_name": self.app_name} if self.app_name else None
        return await Connection.connect(HOST, port, APP_USER, APP_DB, password, options, timeout=120,
                                        extra=extra)

    async def query(self, conn) -> None:
        await conn.query("SELECT 1")

    async def use(self, conn) -> None:
        await self.query(conn)

    async def close(self, conn) -> None:
        await conn.close()


class Asyncpg:
    name = "asyncpg"

    def __init__(self, app_name: str):
        import asyncpg
        self.mod, self.app_name = asyncpg, app_name

    async def connect(self, port: int, tenant: str | None, password: str = PROXY_PASSWORD):
        settings = {"options": f"-c tenant={tenant}"} if tenant else {}
        if self.app_name:
            settings["application_name"] = self.app_name
        # statement_cache_size=0 would be needed on PgBouncer for prepared statements; a
        # plain connect runs none, so the driver's defaults stay.
        return await self.mod.connect(host=HOST, port=port, user=APP_USER, password=password,
                                      database=APP_DB, server_settings=settings or None, timeout=120)

    async def query(self, conn) -> None:
        await conn.execute("SELECT 1")

    async def use(self, conn) -> None:
        """One turn through an asyncpg Pool: a query, then the reset its release runs."""
        await self.query(conn)
        await conn.reset()

    async def close(self, conn) -> None:
        await conn.close(timeout=5)


class Psycopg:
    name = "psycopg"

    def __init__(self, app_name: str):
        import psycopg
        self.mod, self.app_name = psycopg, app_name

    async def connect(self, port: int, tenant: str | None, password: str = PROXY_PASSWORD):
        extra = {"options": f"-c tenant={tenant}"} if tenant else {}
        if self.app_name:
            extra["application_name"] = self.app_name
        return await self.mod.AsyncConnection.connect(
            host=HOST, port=port, user=APP_USER, password=password, dbname=APP_DB,
            autocommit=True, connect_timeout=120, **extra)

    async def query(self, conn) -> None:
        await conn.execute("SELECT 1")

    async def use(self, conn) -> None:
        await self.query(conn)

    async def close(self, conn) -> None:
        await conn.close()


def make_driver(name: str, app_name: str):
    return {"pgbench": Raw, "asyncpg": Asyncpg, "psycopg": Psycopg}[name](app_name)


# -- what a driver sends and runs at connect ---------------------------------------------------

async def startup_params(driver) -> dict[str, str]:
    """The driver's startup packet, read by a fake server (SSLRequest answered `N`)."""
    got: dict[str, str] = {}
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                (length,) = struct.unpack("!i", await reader.readexactly(4))
                body = await reader.readexactly(length - 4)
                (code,) = struct.unpack("!i", body[:4])
                if code == 80877103 or code == 80877104:  # SSLRequest, GSSENCRequest
                    writer.write(b"N")
                    await writer.drain()
                    continue
                if code == PROTOCOL_V3:
                    parts = body[4:].split(b"\0")
                    for k, v in zip(parts[::2], parts[1::2]):
                        if k:
                            got[k.decode()] = v.decode()
                break
            err = b"SFATAL\0C08P01\0Mcapture only\0\0"
            writer.write(b"E" + struct.pack("!i", len(err) + 4) + err)
            await writer.drain()
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.wait_for(driver.connect(port, "t1"), 10)
    except Exception:  # noqa: BLE001 -- the fake server always refuses
        pass
    await asyncio.wait_for(done.wait(), 10)
    server.close()
    return got


def connect_statements(pg: Postgres, driver) -> list[str]:
    """What the driver runs at connect: a direct connection with log_statement = all."""
    log = Path(f"{pg.dir}/postgres.log")
    pg.psql("ALTER SYSTEM SET log_statement = 'all'; SELECT pg_reload_conf();")
    time.sleep(0.5)
    start = log.stat().st_size

    async def one():
        conn = await driver.connect(pg.port, None)
        await asyncio.sleep(0.3)
        await driver.close(conn)

    asyncio.run(one())
    time.sleep(0.5)
    pg.psql("ALTER SYSTEM RESET log_statement; SELECT pg_reload_conf();")
    text = log.read_bytes()[start:].decode(errors="replace")
    return [line.split("statement: ", 1)[1] for line in text.splitlines()
            if "statement: " in line and "ALTER SYSTEM" not in line and "pg_reload_conf" not in line]


# -- the measurement ---------------------------------------------------------------------------

def parked(metrics_port: int | None) -> str:
    if metrics_port is None:
        return ""
    try:
        text = urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=5).read().decode()
    except OSError as e:
        return f" (metrics: {e!r})"
    for line in text.splitlines():
        if line.startswith("pgtenant_clients_parked "):
            return f", {int(float(line.split()[1])):,} parked"
    return ""


def one_round(reaper, pg, auth, kind: str, exe: str, driver, n: int, concurrency: int, tag: str):
    if kind == "pgbouncer":
        inst = PgBouncer(reaper, exe, pg, auth, name=f"mem-{tag}")
        metrics_port = None
    else:
        inst = PgTenant(reaper, exe, pg, auth, name=f"mem-{tag}")
        metrics_port = free_port()
        text = Path(inst.config).read_text()
        Path(inst.config).write_text(text.replace("[proxy]\n", f'[proxy]\nmetrics_listen = "{HOST}:{metrics_port}"\n', 1))
    inst.start()
    try:
        result: dict = {}
        asyncio.run(measure(driver, inst, n, concurrency, metrics_port, result))
        return result
    finally:
        inst.stop()


async def measure(driver, inst, n, concurrency, metrics_port, result: dict) -> None:
    """Bytes per idle client (`per`), clients connected, errors, parked count."""
    pid = inst.proc.pid
    warm = await driver.connect(inst.port, "t1")
    await driver.query(warm)
    await driver.close(warm)
    await asyncio.sleep(0.5)
    base = rss_kb(pid)
    gate = asyncio.Semaphore(concurrency)
    conns: list = []
    errors: list[str] = []

    async def open_one(i: int):
        async with gate:
            try:
                conns.append(await driver.connect(inst.port, f"t{i % TENANTS + 1}"))
            except Exception as e:  # noqa: BLE001 -- counted and reported
                if len(errors) < 5:
                    errors.append(f"connect: {e!r}")

    try:
        await asyncio.gather(*(open_one(i) for i in range(n)))
        await asyncio.sleep(SETTLE_S)
        idle = rss_kb(pid)
        result["parked"] = await asyncio.to_thread(parked, metrics_port)
        qgate = asyncio.Semaphore(64)

        async def use_one(c):
            async with qgate:
                try:
                    await driver.use(c)
                except Exception as e:  # noqa: BLE001 -- counted and reported
                    if len(errors) < 5:
                        errors.append(f"use: {e!r}")

        await asyncio.gather(*(use_one(c) for c in conns))
        await asyncio.sleep(SETTLE_S)
        used = rss_kb(pid)
        result["parked_used"] = await asyncio.to_thread(parked, metrics_port)
    finally:
        await asyncio.gather(*(driver.close(c) for c in conns), return_exceptions=True)
    result["per"] = (idle - base) * 1024 / len(conns) if conns else float("nan")
    result["per_used"] = (used - base) * 1024 / len(conns) if conns else float("nan")
    result["connected"] = len(conns)
    result["errors"] = errors


# -- main --------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=10_000, help="idle clients per measurement (default 10000)")
    p.add_argument("--pairs", type=int, default=2, help="A B rounds per driver (default 2)")
    p.add_argument("--drivers", default=",".join(DRIVERS), help=f"comma-separated, from {','.join(DRIVERS)}")
    p.add_argument("--concurrency", type=int, default=200, help="logins in flight at once (default 200)")
    p.add_argument("--application-name", default="",
                   help="application_name every client sends (default none: each driver's defaults)")
    p.add_argument("--no-build", action="store_true", help="use the existing target/release/pgtenant")
    p.add_argument("--pgtenant", help="a pgtenant binary to use instead of building one")
    return p.parse_args()


def setup_database(pg: Postgres, auth: Auth) -> None:
    pg.psql(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{auth.role_password}'; "
            f"CREATE DATABASE {APP_DB} OWNER {APP_USER};")
    pg.psql(f"DO $$ BEGIN FOR i IN 1..{TENANTS} LOOP EXECUTE format('CREATE SCHEMA t%s', i); "
            "END LOOP; END $$;", user=APP_USER, db=APP_DB)


def main() -> int:
    args = parse_args()
    drivers = [make_driver(d.strip(), args.application_name) for d in args.drivers.split(",") if d.strip()]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.clients + 200 > hard:
        print(f"warning: RLIMIT_NOFILE hard limit is {hard}; {args.clients} clients may not fit", flush=True)
    exe = args.pgtenant or str(REPO / "target/release/pgtenant")
    if not args.pgtenant and not args.no_build:
        print("building pgtenant (cargo build --release)", flush=True)
        subprocess.run(["cargo", "build", "--release", "--bin", "pgtenant"], cwd=REPO, check=True)
    bouncer = ensure_pgbouncer()
    reaper = Reaper()
    load_start = open("/proc/loadavg").read().split()[0]
    table: dict[tuple[str, str], list[float]] = {}
    try:
        pg = Postgres(reaper, find_pg_bin(), max_connections=300)
        pg.start()
        auth = Auth.make("verifier", scram_verifier(PROXY_PASSWORD))
        setup_database(pg, auth)
        print(f"PostgreSQL {pg.version()}, PgBouncer {bouncer}, pgtenant {exe}; {args.clients:,} clients", flush=True)
        for driver in drivers:
            params = asyncio.run(startup_params(driver))
            print(f"\n== {driver.name}: startup packet {params}", flush=True)
            print(f"   runs at connect: {connect_statements(pg, driver) or 'nothing'}", flush=True)
            for rnd in range(args.pairs):
                line = []
                for kind, path in (("pgbouncer", bouncer), ("pgtenant", exe)):
                    r = one_round(reaper, pg, auth, kind, path, driver, args.clients, args.concurrency,
                                  f"{driver.name}-{kind}-{rnd}")
                    table.setdefault((driver.name, kind, "idle"), []).append(r["per"])
                    table.setdefault((driver.name, kind, "used"), []).append(r["per_used"])
                    note = f" ERRORS {r['errors']}" if r["errors"] else ""
                    line.append(f"{kind} {r['per']:,.0f} B/client ({r['connected']:,} connected{r['parked']}), "
                                f"after one use {r['per_used']:,.0f}{r['parked_used']}{note}")
                print(f"   round {rnd + 1}: " + "; ".join(line), flush=True)
    finally:
        reaper.cleanup()
    load = f"{load_start} / {open('/proc/loadavg').read().split()[0]}"
    app = f"application_name {args.application_name!r}" if args.application_name else "no application_name"
    print(f"\nBytes per idle client at {args.clients:,} clients, {app} (median of {args.pairs}; "
          f"load average {load}); 'after one use': each client then ran the driver's use "
          "(a SELECT 1; asyncpg: also the reset an asyncpg Pool runs at release) and idled again:\n")
    print("| driver | PgBouncer | pgtenant | PgBouncer after one use | pgtenant after one use | pgtenant <= PgBouncer |")
    print("|---|---|---|---|---|---|")
    for driver in drivers:
        m = {(k, ph): statistics.median(table.get((driver.name, k, ph), [float("nan")]))
             for k in ("pgbouncer", "pgtenant") for ph in ("idle", "used")}
        ok = m["pgtenant", "idle"] <= m["pgbouncer", "idle"] and m["pgtenant", "used"] <= m["pgbouncer", "used"]
        print(f"| {driver.name} | {m['pgbouncer', 'idle']:,.0f} | {m['pgtenant', 'idle']:,.0f} | "
              f"{m['pgbouncer', 'used']:,.0f} | {m['pgtenant', 'used']:,.0f} | {'yes' if ok else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
