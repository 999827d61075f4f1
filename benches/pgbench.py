#!/usr/bin/env python3
"""pgtenant vs PgBouncer vs direct PostgreSQL, with pgbench. One command:

    python3 benches/pgbench.py              # full run (about 20 minutes on 2 cores)
    python3 benches/pgbench.py --quick      # 3 s runs, small idle-client counts: a smoke test
    python3 benches/pgbench.py --write-docs # also rewrite docs/BENCHMARKS.md

It builds pgtenant (release), starts its own PostgreSQL, PgBouncer and pgtenant on random
loopback ports, runs the scenarios of issues 4 and 14 (see benches/README.md), writes
bench-results/<timestamp>/results.csv and scenario6.png, prints a Markdown summary, and
stops everything it started, also on Ctrl-C. Python 3.11 standard library only;
matplotlib (for the PNG) is pip-installed when missing, and the PNG is skipped if that fails.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import report  # noqa: E402
from harness.scenarios import SCENARIOS, Bench, Options  # noqa: E402
from harness.stack import (  # noqa: E402
    APP_DB, APP_USER, PROXY_PASSWORD, Auth, Postgres, Reaper, client_env, ensure_pgbouncer, find_pg_bin,
)
from harness.wire import scram_verifier  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TENANTS = 64


class Tee:
    """Everything printed also goes to <results>/run.log."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 s runs and 500/2000 idle clients (smoke test)")
    p.add_argument("--seconds", type=int, help="pgbench -T per run (default 10, 3 with --quick)")
    p.add_argument("--pairs", type=int, default=3, help="rounds per scenario (default 3)")
    p.add_argument("--scenarios", default="1,2,3,4,5,6,7,8",
                   help="comma-separated, e.g. 1,2,7,8 (default: all; see benches/README.md)")
    p.add_argument("--idle-clients", help="scenario 7 client counts (default 2000,10000)")
    p.add_argument("--auth", choices=["verifier", "plain"], default="verifier",
                   help="how the poolers store the password (see harness/stack.py Auth; default verifier)")
    p.add_argument("--perf", action="store_true",
                   help="perf-record the poolers in the first round of each point (results dir, perf/)")
    p.add_argument("--write-docs", action="store_true", help="rewrite docs/BENCHMARKS.md with the summary")
    p.add_argument("--no-build", action="store_true", help="use the existing target/release/pgtenant")
    p.add_argument("--pgtenant", help="path of a pgtenant binary to use instead of building one")
    p.add_argument("--out", help="results directory (default bench-results/<timestamp>)")
    return p.parse_args()


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def ensure_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib missing: pip install matplotlib (for scenario6.png)", flush=True)
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            print(f"  pip failed, the PNG will be skipped: {r.stderr.strip().splitlines()[-1:]}", flush=True)


def build_pgtenant(args) -> str | None:
    if args.pgtenant:
        return args.pgtenant
    exe = REPO / "target" / "release" / "pgtenant"
    if not args.no_build:
        print("building pgtenant (cargo build --release)", flush=True)
        r = subprocess.run(["cargo", "build", "--release", "--bin", "pgtenant"], cwd=REPO, timeout=3600)
        if r.returncode != 0:
            print("  cargo build failed: pgtenant will be skipped", flush=True)
            return None
    return str(exe) if exe.exists() else None


def setup_database(pg: Postgres, bin_dir: str, auth: Auth) -> None:
    pg.psql(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{auth.role_password}'; CREATE DATABASE {APP_DB} OWNER {APP_USER};")
    env = client_env()
    print("pgbench -i -s 10", flush=True)
    r = subprocess.run([f"{bin_dir}/pgbench", "-i", "-s", "10", "-q", "-h", pg.dir, "-p", str(pg.port),
                        "-U", APP_USER, APP_DB], env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {r.stderr}")
    pg.psql(f"""
        CREATE TABLE public.tenant_marker AS SELECT 0 AS tenant_id;
        DO $$ BEGIN
          FOR i IN 1..{TENANTS} LOOP
            EXECUTE format('CREATE SCHEMA t%s', i);
            EXECUTE format('CREATE VIEW t%s.tenant_marker AS SELECT %s AS tenant_id', i, i);
            EXECUTE format('CREATE VIEW t%s.pgbench_accounts AS SELECT * FROM public.pgbench_accounts', i);
            EXECUTE format('CREATE VIEW t%s.pgbench_branches AS SELECT * FROM public.pgbench_branches', i);
            EXECUTE format('CREATE VIEW t%s.pgbench_tellers AS SELECT * FROM public.pgbench_tellers', i);
            EXECUTE format('CREATE VIEW t%s.pgbench_history AS SELECT * FROM public.pgbench_history', i);
          END LOOP;
        END $$;
        VACUUM ANALYZE;
    """, user=APP_USER, db=APP_DB)


def start_database(reaper: Reaper, max_connections: int = 300) -> tuple[Postgres, str, Auth]:
    """A fresh PostgreSQL with the benchmark's database (for the smaller scripts here)."""
    bin_dir = find_pg_bin()
    pg = Postgres(reaper, bin_dir, max_connections=max_connections)
    pg.start()
    auth = Auth.make("verifier", scram_verifier(PROXY_PASSWORD))
    setup_database(pg, bin_dir, auth)
    return pg, bin_dir, auth


def run_script(pg: Postgres, bin_dir: str, body: str, seconds: int, args: tuple[str, ...] = (),
               **env: str) -> str:
    """Runs the pgbench script `body` straight against `pg` (8 clients, a pool's worth) for
    `seconds`; returns pgbench's report. `env`: extra variables, e.g. PGOPTIONS."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.sql"
        script.write_text(body)
        r = subprocess.run(
            [f"{bin_dir}/pgbench", "-n", *args, "-f", str(script), "-c", "8", "-j", "2",
             "-T", str(seconds), "-h", "127.0.0.1", "-p", str(pg.port), "-U", APP_USER, APP_DB],
            capture_output=True, text=True, env=client_env(PROXY_PASSWORD, **env), timeout=seconds * 10)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench failed: {r.stdout}\n{r.stderr}")
    return r.stdout


def main() -> int:
    args = parse_args()
    which = sorted({int(x) for x in args.scenarios.split(",") if x.strip()})
    bad = [s for s in which if s not in SCENARIOS]
    if bad:
        sys.exit(f"unknown scenario(s) {bad}; choose from {sorted(SCENARIOS)}")
    seconds = args.seconds or (3 if args.quick else 10)
    idle = [int(x) for x in (args.idle_clients or ("500,2000" if args.quick else "2000,10000")).split(",")]
    nofile = raise_nofile()
    if 7 in which and max(idle) + 200 > nofile:
        print(f"warning: RLIMIT_NOFILE hard limit is {nofile}; {max(idle)} idle clients may not fit", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out or REPO / "bench-results" / stamp)
    out_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout = Tee(sys.stdout, open(out_dir / "run.log", "a"))
    command = "python3 benches/pgbench.py" + "".join(f" {a}" for a in sys.argv[1:])
    load_start = open("/proc/loadavg").read().split()[0]
    started = time.monotonic()

    ensure_matplotlib()
    pgtenant_exe = build_pgtenant(args)
    bouncer_exe = ensure_pgbouncer()
    bin_dir = find_pg_bin()
    reaper = Reaper()
    bench = None
    try:
        pg = Postgres(reaper, bin_dir, max_connections=300)
        pg.start()
        print(f"PostgreSQL {pg.version()} on 127.0.0.1:{pg.port} ({pg.dir})", flush=True)
        auth = Auth.make(args.auth, scram_verifier(PROXY_PASSWORD))
        setup_database(pg, bin_dir, auth)
        opts = Options(seconds=seconds, pairs=args.pairs, quick=args.quick, idle_clients=idle,
                       isolation_queries=100 if args.quick else 300,
                       perf_dir=str(out_dir / "perf") if args.perf else None)
        if args.perf:
            (out_dir / "perf").mkdir(exist_ok=True)
        bench = Bench(reaper, pg, f"{bin_dir}/pgbench", bouncer_exe, pgtenant_exe, auth, opts)
        if not pgtenant_exe:
            bench.results.error(0, "pgtenant", "no binary (build failed): skipped everywhere")
        bench.start_poolers()
        print("running: " + ", ".join(f"{k} :{t.port}" for k, t in bench.targets.items()), flush=True)
        bench.run(which)
    finally:
        if bench is not None:
            finish(bench, which, out_dir, args, command, load_start, started, bouncer_exe,
                   pg_version=f"{bench.pg.version() if bench.pg.proc else '?'}")
        reaper.cleanup()
    return 0


def finish(bench: Bench, which, out_dir: Path, args, command, load_start, started, bouncer_exe, pg_version) -> None:
    report.write_csv(bench, str(out_dir / "results.csv"))
    if 6 in which:
        print(report.plot_s6(bench, str(out_dir / "scenario6.png")), flush=True)
    meta = report.machine(pg_version, bouncer_exe, bench.pgbench_exe, str(REPO))
    md = report.summary(bench, which, meta)
    print("\n" + md, flush=True)
    load = f"{load_start} / {open('/proc/loadavg').read().split()[0]}"
    print(f"results in {out_dir} ({(time.monotonic() - started) / 60:.1f} min; load average {load})", flush=True)
    if args.write_docs:
        date = time.strftime("%Y-%m-%d %H:%M %Z")
        path = REPO / "docs" / "BENCHMARKS.md"
        path.parent.mkdir(exist_ok=True)
        old = path.read_text() if path.exists() else ""
        perf = report.perf_digest(str(out_dir / "perf")) if args.perf else []
        png = out_dir / "scenario6.png"
        if png.exists():
            shutil.copy(png, path.parent / "benchmarks-scenario6.png")
            md = md.replace("Scenario 6 (TPS;", "![Scenario 6: TPS and latency vs clients](benchmarks-scenario6.png)\n\nScenario 6 (TPS;", 1)
        path.write_text(report.docs(md, meta, command, date, load, args.auth, report.kept_analysis(old), perf))
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e}); everything started was stopped", file=sys.stderr)
        sys.exit(130)
