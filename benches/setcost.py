#!/usr/bin/env python3
"""What a tenant switch costs PostgreSQL: `pgbench -S`'s SELECT through a tenant's views,
alone and behind a `SET search_path` to a random tenant, sent in the same Query message
(as a pipelined prelude costs at best) or in a round trip of its own. Direct to PostgreSQL,
8 clients (a pool's worth), no pooler involved.

    python3 benches/setcost.py [--rounds 3] [--seconds 8]

It bounds scenario 3 (tenant churn, `tracked` vs `always`): see docs/BENCHMARKS.md, Analysis.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgbench as pb  # noqa: E402
from harness.stack import Reaper  # noqa: E402

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = :aid"
HEAD = "\\set aid random(1, 1000000)\n\\set t random(1, 64)\n"
SCRIPTS = {
    "SELECT (search_path t1 from login)": HEAD + SELECT + ";\n",
    "SET same tenant; SELECT (one message)": HEAD + "SET search_path TO t1, public \\; " + SELECT + ";\n",
    "SET random tenant; SELECT (one message)": HEAD + "SET search_path TO t:t, public \\; " + SELECT + ";\n",
    "RESET ALL; SET; SELECT (one message)":
        HEAD + "RESET ALL \\; SET search_path TO t:t, public \\; " + SELECT + ";\n",
    "SET, then SELECT (two round trips)": HEAD + "SET search_path TO t:t, public;\n" + SELECT + ";\n",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    reaper = Reaper()
    tps: dict[str, list[float]] = {name: [] for name in SCRIPTS}
    try:
        pg, bin_dir, _ = pb.start_database(reaper)
        for rnd in range(args.rounds):
            order = list(SCRIPTS.items())
            for name, body in order if rnd % 2 == 0 else order[::-1]:
                out = pb.run_script(pg, bin_dir, body, args.seconds, PGOPTIONS="-c search_path=t1,public")
                line = [ln for ln in out.splitlines() if ln.startswith("tps")]
                if not line:
                    raise RuntimeError(f"no TPS from pgbench: {out}")
                tps[name].append(float(line[0].split()[2]))
                print(f"round {rnd + 1} {name:42s} {tps[name][-1]:9,.0f} TPS", flush=True)
        base = statistics.median(tps[next(iter(SCRIPTS))])
        print("\nmedians (and against the SELECT alone):")
        for name, values in tps.items():
            m = statistics.median(values)
            print(f"  {name:42s} {m:9,.0f} TPS  {m / base:.2f}")
    finally:
        reaper.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
