#!/usr/bin/env python3
"""What a sleeping backend costs: PostgreSQL's CPU per query when every query arrives at a
backend that has gone to sleep (4 separate queries per pgbench transaction) against when
the next query is already waiting (the same 4 queries in one pipeline). Direct to
PostgreSQL, 8 clients, `-M extended`, no pooler involved.

    python3 benches/wakeups.py [--rounds 2] [--seconds 8]

This is the cost a pooler can only save by keeping a backend fed (sending the next
transaction before the previous one is answered); see docs/BENCHMARKS.md, Analysis.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgbench as pb  # noqa: E402
from breakdown import measured  # noqa: E402
from harness.stack import Reaper  # noqa: E402

QUERY = "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
SCRIPTS = {
    "separate": "\\set aid random(1, 1000000)\n" + QUERY * 4,
    "pipelined": "\\set aid random(1, 1000000)\n\\startpipeline\n" + QUERY * 4 + "\\endpipeline\n",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    reaper = Reaper()
    try:
        pg, bin_dir, _ = pb.start_database(reaper)
        for rnd in range(args.rounds):
            for name, body in SCRIPTS.items():
                # Sampled while it runs: backends exit with their clients, taking their CPU along.
                out, totals = measured(lambda: pb.run_script(pg, bin_dir, body, args.seconds, ("-M", "extended")))
                cpu, sleeps = totals["postgres"][0], totals["postgres"][1]
                done = [ln for ln in out.splitlines() if "actually processed" in ln]
                if not done:
                    raise RuntimeError(f"no count from pgbench: {out}")
                queries = 4 * int(done[0].split(":")[1].split("/")[0])
                print(f"round {rnd + 1} {name:9s}: PostgreSQL {cpu / queries * 1e6:5.1f} µs "
                      f"and {sleeps / queries:.2f} sleeps per query ({queries:,} queries)",
                      flush=True)
    finally:
        reaper.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
