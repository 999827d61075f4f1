#!/usr/bin/env python3
"""Login latency of `[auth]` users (issue 20 part B): p50/p99 of a full login (TCP connect,
SCRAM, the login reply, one `SELECT 1`) through pgtenant, for

- a `[users]` user (the baseline),
- an `[auth]` user whose answer is cached (and whose own pool is warm),
- an `[auth]` user looked up at every login (`ttl = "1ms"`; its pool is warm),
- an `[auth]` user's first login (a role never seen: lookup, a new pool, a new server
  connection logged in by SCRAM pass-through).

    PYTHONPATH=/opt/pgtenant/pyclients python3 benches/auth_login.py [--pgtenant PATH] [-n 300]

Clients are psycopg (libpq), one login at a time. The server stores SCRAM verifiers
(4096 iterations), so every login costs the client one PBKDF2 and pgtenant a few HMACs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402

from harness.stack import PROXY_PASSWORD, PgTenant, Reaper  # noqa: E402
from pgbench import start_database  # noqa: E402

LOOKUP = """
CREATE SCHEMA pgtenant;
GRANT USAGE ON SCHEMA pgtenant TO app;
CREATE FUNCTION pgtenant.user_lookup(p_user text, OUT usename text, OUT passwd text)
RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT rolname::text, rolpassword FROM pg_catalog.pg_authid
    WHERE rolname = p_user AND rolcanlogin
$$;
REVOKE ALL ON FUNCTION pgtenant.user_lookup(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgtenant.user_lookup(text) TO app;
"""


def login_ms(port: int, user: str, password: str) -> float:
    start = time.perf_counter()
    with psycopg.connect(host="127.0.0.1", port=port, user=user, password=password,
                         dbname="app", options="-c tenant=t1", sslmode="disable") as conn:
        conn.execute("SELECT 1").fetchone()
    return (time.perf_counter() - start) * 1000


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def proxy(reaper: Reaper, exe: str, pg, auth, name: str, ttl: str) -> PgTenant:
    tenant = PgTenant(reaper, exe, pg, auth, tenants=4, name=name)
    conf = Path(tenant.config)
    conf.write_text(conf.read_text() + '\n[auth]\nbackend = "main"\n'
                    'auth_query = "SELECT usename, passwd FROM pgtenant.user_lookup($1)"\n'
                    f'ttl = "{ttl}"\n')
    tenant.start()
    return tenant


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pgtenant", default=str(REPO / "target/release/pgtenant"))
    p.add_argument("-n", type=int, default=300, help="logins per case")
    args = p.parse_args()
    reaper = Reaper()
    try:
        pg, _bin, auth = start_database(reaper)
        roles = "".join(f"CREATE ROLE u{i} LOGIN PASSWORD 'pw{i}';\n" for i in range(args.n))
        pg.psql("SET password_encryption = 'scram-sha-256';\n" + roles
                + "CREATE ROLE looked LOGIN PASSWORD 'looked_pw';\n")
        pg.psql(LOOKUP + "GRANT USAGE ON SCHEMA t1 TO PUBLIC;\n", db="app")
        cached = proxy(reaper, args.pgtenant, pg, auth, "cached", "1h")
        every = proxy(reaper, args.pgtenant, pg, auth, "every", "1ms")
        cases = {
            "[users] user": lambda i: login_ms(cached.port, "app", PROXY_PASSWORD),
            "[auth] user, cached": lambda i: login_ms(cached.port, "looked", "looked_pw"),
            "[auth] user, looked up every login": lambda i: login_ms(every.port, "looked", "looked_pw"),
            "[auth] user, first login (new pool)": lambda i: login_ms(cached.port, f"u{i}", f"pw{i}"),
        }
        for run in (cases["[users] user"], cases["[auth] user, cached"],
                    cases["[auth] user, looked up every login"]):
            for i in range(10):  # warm-up: pools, caches
                run(i)
        print(f"PostgreSQL {pg.version()}, {args.n} logins per case (first logins: at most 150), "
              "one at a time")
        print("\n| login | p50 ms | p99 ms | mean ms |")
        print("|---|---|---|---|")
        for name, run in cases.items():
            # Each first login leaves its user's server connection idle in its own pool
            # (until server_idle_timeout): stay well under max_connections (300).
            n = min(args.n, 150) if "first login" in name else args.n
            times = [run(i) for i in range(n)]
            print(f"| {name} | {pct(times, 50):.2f} | {pct(times, 99):.2f} | {statistics.mean(times):.2f} |",
                  flush=True)
        print(f"\nload average at the end: {open('/proc/loadavg').read().split()[0]}")
    finally:
        reaper.cleanup()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PGCONNECT_TIMEOUT", "10")
    sys.exit(main())
