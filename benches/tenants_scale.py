#!/usr/bin/env python3
"""Tenants from a directory table at scale (issue 20): 100,000 rows in a `[directory]`
table, 10,000 of them logged in, on the release build as a child process.

    python3 benches/tenants_scale.py                       # 100,000 rows, 10,000 active
    python3 benches/tenants_scale.py --rows 20000 --active 2000

Measured (RSS from /proc, login = connect until ReadyForQuery, SCRAM with a stored verifier):
  1. uncached first login: each of `--active` tenants logs in once (the directory is asked,
     the tenant made); it stays connected (parked by the proxy) after one query checking it
     reads its own schema and setting. RSS growth / active = memory per active tenant,
     *including* its one connected client (~0.5 KB parked) and its cache entry.
  2. cached login, tenant active: a second login of `--sample` of those tenants.
  3. all clients leave; the tenants' runtimes are dropped after `server_idle_timeout` (3 s
     here); the directory cache keeps their rows (ttl 10 min). RSS growth / active over the
     start = memory per cached (not active) tenant.
  4. cached login, tenant not active: `--sample` logins of cached tenants (runtime made again,
     no query to the directory), after a few logins that reopen the server connections the
     same timeout closed.
  5./6. a second batch of `--active` new tenants, logged in then left: the growth over
     phase 4's RSS is memory per active, then per cached tenant, without the capacity the
     maps and the client list kept from the first batch.
Schemas: only `--schemas` (100) are created; row i has search_path {s_(i mod 100)} and
settings {"app.tenant_id": i}, so tenants share schemas but differ in their setting (each
client checks both). Logins run `--concurrency` at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.stack import (  # noqa: E402
    APP_DB, APP_USER, PROXY_PASSWORD, PROXY_USER, Auth, Postgres, Reaper,
    backend_and_user_toml, find_pg_bin, free_port, rss_kb, wait_accepting,
)
from harness.wire import Connection, scram_verifier  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def name(i: int) -> str:
    return f"tenant_{i:06d}"


def setup_db(pg: Postgres, rows: int, schemas: int) -> None:
    t0 = time.time()
    pg.psql("".join(
        f"CREATE SCHEMA s_{s:03d}; CREATE TABLE s_{s:03d}.whoami AS SELECT 's_{s:03d}'::text AS schema;"
        for s in range(schemas)), user=APP_USER, db=APP_DB)
    pg.psql(
        "CREATE TABLE public.tenants (name text PRIMARY KEY, search_path text[], settings json, "
        "backend text);"
        f"INSERT INTO public.tenants SELECT 'tenant_' || lpad(i::text, 6, '0'), "
        f"ARRAY['s_' || lpad((i % {schemas})::text, 3, '0')], "
        f"json_build_object('app.tenant_id', i::text), NULL FROM generate_series(1, {rows}) i;"
        "ANALYZE public.tenants;",
        user=APP_USER, db=APP_DB)
    print(f"directory: {rows} rows, {schemas} schemas in {time.time() - t0:.1f} s", flush=True)


def write_config(path: str, port: int, pg: Postgres, auth: Auth) -> None:
    Path(path).write_text("\n".join([
        "[proxy]",
        f'listen = "127.0.0.1:{port}"',
        'auth = "scram-sha-256"',
        "max_client_connections = 30000",
        "max_pending_logins = 5000",
        'server_idle_timeout = "3s"',
        'shutdown_timeout = "5s"',
        "",
        *backend_and_user_toml(pg, auth),
        "",
        "[directory]",
        'backend = "main"',
        'query = "SELECT search_path, settings, backend FROM tenants WHERE name = $1"',
        'ttl = "10m"',
        'negative_ttl = "10s"',
        "",
    ]))


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def login(port: int, i: int) -> tuple[Connection, float]:
    t0 = time.perf_counter()
    conn = await Connection.connect(HOST, port, PROXY_USER, APP_DB, PROXY_PASSWORD,
                                    options=f"-c tenant={name(i)}")
    return conn, (time.perf_counter() - t0) * 1000


async def check(conn: Connection, i: int, schemas: int) -> None:
    rows = await conn.query("SELECT schema, current_setting('app.tenant_id') FROM whoami")
    want = [[f"s_{i % schemas:03d}", str(i)]]
    if rows != want:
        raise AssertionError(f"{name(i)} read {rows}, wants {want}")


async def logins(port: int, ids: list[int], concurrency: int, schemas: int,
                 keep: bool) -> tuple[list[float], list[Connection]]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    kept: list[Connection] = []

    async def one(i: int) -> None:
        async with sem:
            conn, ms = await login(port, i)
            latencies.append(ms)
            await check(conn, i, schemas)
            if keep:
                kept.append(conn)
            else:
                await conn.close()

    await asyncio.gather(*(one(i) for i in ids))
    return latencies, kept


def settle_rss(pid: int, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return rss_kb(pid)


def line(what: str, lat: list[float]) -> str:
    return (f"{what}: n={len(lat)} p50 {statistics.median(lat):.2f} ms, "
            f"p99 {pct(lat, 99):.2f} ms, max {max(lat):.2f} ms")


async def run(args, port: int, pid: int) -> None:
    # Warm-up: the proxy's first server connection (endpoint parameters) and the directory's.
    warm, _ = await logins(port, [1], 1, args.schemas, keep=False)
    r0 = settle_rss(pid)
    print(f"RSS after warm-up: {r0 / 1024:.1f} MB", flush=True)
    active = list(range(2, args.active + 2))
    t0 = time.time()
    lat1, kept = await logins(port, active, args.concurrency, args.schemas, keep=True)
    took = time.time() - t0
    r1 = settle_rss(pid, 2.0)
    print(line("1. uncached first login", lat1) + f" ({len(active) / took:.0f} logins/s)")
    print(f"   RSS {r1 / 1024:.1f} MB: {(r1 - r0) * 1024 / len(active):.0f} B per active tenant "
          f"(with its one parked client)", flush=True)
    sample = active[:: max(1, len(active) // args.sample)][: args.sample]
    lat2, _ = await logins(port, sample, args.concurrency, args.schemas, keep=False)
    print(line("2. cached login, tenant active", lat2), flush=True)
    for c in kept:
        await c.close()
    # Runtimes go after server_idle_timeout (3 s) unused; the sweep runs every ~0.75 s.
    r2 = settle_rss(pid, 6.0)
    print(f"3. clients gone, runtimes dropped: RSS {r2 / 1024:.1f} MB: "
          f"{(r2 - r0) * 1024 / len(active):.0f} B per cached tenant", flush=True)
    # Idle server connections were closed too (the same server_idle_timeout): open them
    # again first, so that phase 4 measures logins, not server connects.
    await logins(port, [args.active + 2 + k for k in range(args.concurrency)], args.concurrency,
                 args.schemas, keep=False)
    lat3, _ = await logins(port, sample, args.concurrency, args.schemas, keep=False)
    print(line("4. cached login, tenant not active", lat3), flush=True)
    # A second batch of as many new tenants, logged in and left: the maps and the client
    # list already have their capacity, so the growth over phase 3 is the cache entries.
    r3 = settle_rss(pid, 6.0)
    second = list(range(args.active + 100, 2 * args.active + 100))
    lat4, kept = await logins(port, second, args.concurrency, args.schemas, keep=True)
    r4 = settle_rss(pid, 2.0)
    print(line("5. uncached first login, second batch", lat4))
    print(f"   RSS {r4 / 1024:.1f} MB: {(r4 - r3) * 1024 / len(second):.0f} B per active tenant "
          f"over phase 4's (maps already grown)", flush=True)
    for c in kept:
        await c.close()
    r5 = settle_rss(pid, 6.0)
    print(f"6. second batch gone: RSS {r5 / 1024:.1f} MB: {(r5 - r3) * 1024 / len(second):.0f} B "
          f"per cached tenant ({2 * args.active} cached in all)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--active", type=int, default=10_000)
    ap.add_argument("--schemas", type=int, default=100)
    ap.add_argument("--sample", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--pgtenant", default=str(REPO / "target/release/pgtenant"))
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not os.path.exists(args.pgtenant):
        sys.exit(f"{args.pgtenant} not found: cargo build --release")
    reaper = Reaper()
    try:
        pg = Postgres(reaper, find_pg_bin(), max_connections=100)
        pg.start()
        auth = Auth.make("verifier", scram_verifier(PROXY_PASSWORD))
        pg.psql(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{auth.role_password}'; "
                f"CREATE DATABASE {APP_DB} OWNER {APP_USER};")
        setup_db(pg, args.rows, args.schemas)
        print(f"PostgreSQL {pg.version()}", flush=True)
        port = free_port()
        config = f"{pg.dir}/proxy.toml"
        write_config(config, port, pg, auth)
        log = open(f"{pg.dir}/pgtenant.log", "ab")
        proc = reaper.spawn([args.pgtenant, "--config", config], stdout=log, stderr=log)
        wait_accepting(port, proc, "pgtenant", timeout=30)
        asyncio.run(run(args, port, proc.pid))
    finally:
        reaper.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
