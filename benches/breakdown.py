#!/usr/bin/env python3
"""Where a transaction's CPU goes on the whole machine: for scenario 1 (`pgbench -S`, tenant
t1, 64 clients, pool 8) through each system, the CPU time (user + system) and context
switches per transaction of every process group: the pooler, the PostgreSQL backends and
pgbench itself. On a machine that the clients, the pooler and PostgreSQL share, TPS is
about (cores / total CPU per transaction), so this says what a pooler can and cannot win.

    python3 benches/breakdown.py [--rounds 2] [--clients 64] [--systems direct,pgbouncer,pgtenant]
    python3 benches/breakdown.py --base OLD/pgtenant --systems pgtenant-base,pgtenant --rounds 6

With `--base`, a second pgtenant (another build, e.g. the commit before a change) runs beside
the first as system `pgtenant-base`, so a change's cost is read A B A B in one run.

Same stack as benches/pgbench.py (its own PostgreSQL, PgBouncer, pgtenant release build).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgbench as pb  # noqa: E402
from harness.scenarios import Bench, Options  # noqa: E402
from harness.runner import Target  # noqa: E402
from harness.stack import PROXY_PASSWORD, PgTenant, Reaper  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
GROUPS = ("pooler", "postgres", "pgbench")


def group_of(pid: str) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None
    name = os.path.basename(cmd)
    if "(postgres)" in stat or name == "postgres":
        return "postgres"
    if name == "pgbench":
        return "pgbench"
    if name in ("pgbouncer", "pgtenant"):
        return "pooler"
    return None


def sample() -> dict[int, tuple[str, float, int, int]]:
    """pid -> (group, CPU seconds, voluntary switches, involuntary switches)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        group = group_of(pid)
        if group is None:
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            vol = invol = 0
            for tid in os.listdir(f"/proc/{pid}/task"):
                for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out[int(pid)] = (group, cpu, vol, invol)
    return out


def measured(run_one):
    """Runs `run_one()`, sampling every process meanwhile (pgbench exits before the end)."""
    before = sample()
    last: dict[int, tuple[str, float, int, int]] = {}
    done = threading.Event()

    def poll():
        while not done.is_set():
            last.update(sample())
            time.sleep(0.2)

    t = threading.Thread(target=poll)
    t.start()
    try:
        run = run_one()
    finally:
        done.set()
        t.join()
    last.update(sample())
    totals = {g: [0.0, 0, 0] for g in GROUPS}
    for pid, (group, cpu, vol, invol) in last.items():
        _, cpu0, vol0, invol0 = before.get(pid, (group, 0.0, 0, 0))
        acc = totals[group]
        acc[0] += cpu - cpu0
        acc[1] += vol - vol0
        acc[2] += invol - invol0
    return run, totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--systems", default="direct,pgbouncer,pgtenant")
    ap.add_argument("--pgtenant", default=str(pb.REPO / "target" / "release" / "pgtenant"))
    ap.add_argument("--base", help="another pgtenant binary, run as system pgtenant-base")
    args = ap.parse_args()
    systems = args.systems.split(",")
    reaper = Reaper()
    try:
        pg, bin_dir, auth = pb.start_database(reaper)
        opts = Options(seconds=args.seconds, pairs=1, quick=False, idle_clients=[], isolation_queries=0)
        bench = Bench(reaper, pg, f"{bin_dir}/pgbench", pb.ensure_pgbouncer(), args.pgtenant, auth, opts)
        bench.start_poolers()
        if args.base:
            base = PgTenant(reaper, args.base, pg, auth, name="pgtenant-base", default_tenant=True)
            base.start()
            bench.tenant["pgtenant-base"] = base
            bench.targets["pgtenant-base"] = Target("pgtenant-base", base.port, PROXY_PASSWORD, "proxy")
        print("per transaction: CPU µs (user + system) and voluntary / involuntary context switches")
        for rnd in range(args.rounds):
            for system in systems if rnd % 2 == 0 else systems[::-1]:
                run, totals = measured(lambda: bench._pgbench(system, ["t1"], args.clients, 2))
                tx = max(1, run.transactions)
                total = sum(v[0] for v in totals.values()) / tx * 1e6
                parts = "  ".join(
                    f"{g} {totals[g][0] / tx * 1e6:5.1f} ({totals[g][1] / tx:.2f} / {totals[g][2] / tx:.2f})"
                    for g in GROUPS)
                print(f"{system:10s} {run.tps or 0:8,.0f} TPS  total {total:5.1f}  {parts}", flush=True)
        bench.stop_poolers()
    finally:
        reaper.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
