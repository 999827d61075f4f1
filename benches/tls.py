#!/usr/bin/env python3
"""Client TLS on both poolers: pgtenant vs PgBouncer with the same certificate.

    python3 benches/tls.py [--seconds 10] [--pairs 3] [--pgtenant target/release/pgtenant]

Two measurements, each as rounds over the two poolers in alternating order:
- S1 over TLS: `pgbench -S`, 64 clients, 1 tenant, pool 8, `sslmode=require` (one TLS
  handshake per client, then every query and row encrypted);
- TLS logins per second: `pgbench -C` (a new connection per transaction: TCP, SSLRequest,
  TLS handshake, SCRAM-SHA-256, `SELECT 1`), 8 clients.
PostgreSQL, the database and the poolers come from the pgbench harness (benches/harness);
the certificate is a self-signed ECDSA P-256 one made with openssl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import runner  # noqa: E402
from harness.stack import (APP_DB, APP_USER, PROXY_PASSWORD, PgBouncer, PgTenant, Reaper,  # noqa: E402
                           client_env, ensure_pgbouncer)
from pgbench import start_database  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def make_cert(pg, directory: str) -> tuple[str, str]:
    """A self-signed certificate for localhost, readable by PgBouncer (the postgres user)."""
    cert, key = f"{directory}/server.crt", f"{directory}/server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    for f in (cert, key):
        os.chmod(f, 0o600)
        pg._chown(f)
    return cert, key


def pgbench(bin_dir: str, port: int, args: list[str], seconds: int, script: str | None = None) -> runner.Run:
    conn = f"dbname={APP_DB} sslmode=require"
    with tempfile.TemporaryDirectory() as tmp:
        workload = ["-S"]
        if script:
            path = Path(tmp) / "script.sql"
            path.write_text(script)
            workload = ["-f", str(path)]
        cmd = [f"{bin_dir}/pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", APP_USER, "-n",
               *workload, *args, "-T", str(seconds), conn]
        env = client_env(PROXY_PASSWORD, PGOPTIONS="-c tenant=t1")
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds * 20 + 120, cwd=tmp)
    return runner._parse(r.stdout, r.stderr, r.returncode)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--pgtenant", default=str(REPO / "target/release/pgtenant"))
    args = p.parse_args()
    reaper = Reaper()
    try:
        pg, bin_dir, auth = start_database(reaper)
        tls_dir = f"{pg.dir}/tls"
        os.makedirs(tls_dir, exist_ok=True)
        pg._chown(tls_dir)
        cert, key = make_cert(pg, tls_dir)
        bouncer = PgBouncer(reaper, ensure_pgbouncer(), pg, auth)
        ini = Path(f"{bouncer.dir}/pgbouncer.ini")
        ini.write_text(ini.read_text() + f"client_tls_sslmode = require\nclient_tls_cert_file = {cert}\n"
                       f"client_tls_key_file = {key}\n")
        bouncer.start()
        tenant = PgTenant(reaper, args.pgtenant, pg, auth)
        conf = Path(tenant.config)
        conf.write_text(conf.read_text().replace(
            "[proxy]\n", f'[proxy]\ntls_cert = "{cert}"\ntls_key = "{key}"\nclient_tls = "require"\n', 1))
        tenant.start()
        systems = {"pgbouncer": bouncer.port, "pgtenant": tenant.port}
        tests = {
            "S1 over TLS (pgbench -S, 64 clients), TPS": (["-c", "64", "-j", "2"], None),
            "TLS logins/s (pgbench -C, SELECT 1, 8 clients)": (["-C", "-c", "8", "-j", "2"], "SELECT 1;\n"),
        }
        print(f"PostgreSQL {pg.version()}; pgbouncer :{bouncer.port}, pgtenant :{tenant.port}", flush=True)
        results: dict[str, dict[str, list[float]]] = {}
        for name, (extra, script) in tests.items():
            for s, port in systems.items():  # warm-up
                pgbench(bin_dir, port, extra, 2, script)
            res = results.setdefault(name, {s: [] for s in systems})
            for rnd in range(args.pairs * 2):
                order = list(systems) if rnd % 2 == 0 else list(reversed(systems))
                for s in order:
                    run = pgbench(bin_dir, systems[s], extra, args.seconds, script)
                    if not run.ok:
                        print(f"  {s}: failed: {run.errors[:3]} rc={run.rc}", flush=True)
                        continue
                    res[s].append(run.tps)
                    print(f"  {name} round {rnd + 1} {s}: {run.tps:.0f}", flush=True)
        print("\n| measurement | PgBouncer | pgtenant | pgtenant / PgBouncer (median of rounds) |")
        print("|---|---|---|---|")
        for name, res in results.items():
            pairs = [t / b for t, b in zip(res["pgtenant"], res["pgbouncer"])]
            med = lambda v: statistics.median(v) if v else float("nan")  # noqa: E731
            ratios = " ".join(f"{r:.2f}" for r in pairs)
            print(f"| {name} | {med(res['pgbouncer']):.0f} | {med(res['pgtenant']):.0f} | "
                  f"**{med(pairs):.3f}** ({ratios}) |")
        print(f"\nload average at the end: {open('/proc/loadavg').read().split()[0]}")
    finally:
        reaper.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
