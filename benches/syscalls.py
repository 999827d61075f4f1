#!/usr/bin/env python3
"""Syscalls per transaction of PgBouncer and pgtenant, counted with `strace -c -f`.

    python3 benches/syscalls.py [--seconds 5] [--pgtenant target/release/pgtenant]

Starts the same stack as benches/pgbench.py (without building), runs scenario 1
(`pgbench -S`, tenant t1, 64 clients) and scenario 3 (64 tenants x 1 client) against each
pooler with strace attached, and prints syscalls per transaction by name. strace slows the
pooler a lot, so only the counts per transaction mean anything here, not the TPS.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import runner  # noqa: E402
from harness.scenarios import Bench, Options  # noqa: E402
from harness.stack import PROXY_PASSWORD, Auth, Postgres, Reaper, ensure_pgbouncer, find_pg_bin  # noqa: E402
from harness.wire import scram_verifier  # noqa: E402
from pgbench import REPO, setup_database  # noqa: E402


def traced(bench: Bench, system: str, tenants: list[str], clients: int, jobs: int, seconds: int) -> None:
    pid = bench.pooler_pid(system)
    out = f"/tmp/strace-{system}-{len(tenants)}.txt"
    st = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", out],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    try:
        run = runner.pgbench(bench.pgbench_exe, bench.targets[system], tenants, clients, jobs, seconds)
    finally:
        st.send_signal(2)
        st.wait(60)
    calls: dict[str, int] = {}
    for line in Path(out).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and re.match(r"^[\d.]+$", parts[0]) and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    tx = max(1, run.transactions)
    total = sum(calls.values())
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
    print(f"  {system:16} {tx:>8} tx  {total / tx:6.2f} syscalls/tx: "
          + ", ".join(f"{k} {v / tx:.2f}" for k, v in top), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--pgtenant", default=str(REPO / "target" / "release" / "pgtenant"))
    args = p.parse_args()
    bin_dir = find_pg_bin()
    reaper = Reaper()
    try:
        pg = Postgres(reaper, bin_dir, 300)
        pg.start()
        auth = Auth.make("verifier", scram_verifier(PROXY_PASSWORD))
        setup_database(pg, bin_dir, auth)
        opts = Options(seconds=args.seconds, pairs=1, quick=True, idle_clients=[], isolation_queries=0)
        bench = Bench(reaper, pg, f"{bin_dir}/pgbench", ensure_pgbouncer(), args.pgtenant, auth, opts)
        bench.start_poolers()
        for label, tenants, clients, jobs in (("scenario 1 (t1, 64 clients)", ["t1"], 64, 2),
                                              ("scenario 3 (64 tenants x 1)", [f"t{i}" for i in range(1, 65)], 1, 1)):
            print(label, flush=True)
            for system in ("pgbouncer", "pgtenant", "pgtenant-always"):
                if system in bench.targets and (system != "pgtenant-always" or len(tenants) > 1):
                    traced(bench, system, tenants, clients, jobs, args.seconds)
    finally:
        reaper.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
