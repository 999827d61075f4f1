"""The seven scenarios of issue 4 and scenario 8 of issue 14, each run as rounds over the systems in alternating order
(A B C, C B A, A B C, ...), so that a machine that slows down or speeds up during a
scenario affects every system alike; ratios are taken within a round, then the median.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from . import runner
from .runner import Run, Target
from .stack import PROXY_PASSWORD, Auth, PgBouncer, PgTenant, Postgres, Reaper, cpu_and_switches

SCENARIOS = {
    1: "pgbench -S, 1 tenant, 64 clients, pool 8",
    2: "4 tenants x 16 clients at once",
    3: "tenant churn: 64 tenants x 1 client, pool 8 (tracked vs always)",
    4: "pgbench -C -S: a new SCRAM connection per transaction, 16 clients",
    5: "pgbench -M prepared -S, 1 tenant, 64 clients",
    6: "1, 8, 64, 256, 1000 clients: TPS and latency p50/p99",
    7: "RSS per idle logged-in client",
    8: "the app sets its own search_path (SET before every transaction), 4 tenants x 16 clients",
}


def s8_script(tenant: str) -> str:
    """Scenario 8's pgbench transaction for one tenant's clients: what an app written for
    PgBouncer does (it names no tenant and sends its own `SET search_path` at the start of
    every transaction), then the tenant-distinguishing read of the wrong-tenant check. In
    autocommit, each statement is its own transaction."""
    return f"SET search_path TO {tenant}, public;\nSELECT tenant_id FROM tenant_marker;\n"

S6_CLIENTS = [1, 8, 64, 256, 1000]
# PostgreSQL's max_connections for the 1000-client point (all three systems run it).
S6_BIG_MAX_CONNECTIONS = 1100


@dataclass
class Results:
    rows: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, scenario: int, point: str, system: str, rnd: int, metric: str, value, unit: str = "") -> None:
        self.rows.append(dict(scenario=scenario, point=point, system=system, round=rnd,
                              metric=metric, value=value, unit=unit))

    def values(self, scenario: int, point: str, system: str, metric: str) -> dict[int, float]:
        return {r["round"]: r["value"] for r in self.rows
                if (r["scenario"], r["point"], r["system"], r["metric"]) == (scenario, point, system, metric)
                and isinstance(r["value"], (int, float))}

    def error(self, scenario: int, system: str, text: str) -> None:
        line = f"scenario {scenario}, {system}: {text}"
        if line not in self.errors:
            self.errors.append(line)
        print(f"    ! {line}", flush=True)


@dataclass
class Options:
    seconds: int
    pairs: int
    quick: bool
    idle_clients: list[int]
    isolation_queries: int
    # Directory for `perf` profiles of the poolers (first round of each point), or None.
    perf_dir: str | None = None


class Bench:
    """Holds the running stack and runs scenarios against it."""

    def __init__(self, reaper: Reaper, pg: Postgres, pgbench_exe: str, bouncer_exe: str,
                 pgtenant_exe: str | None, auth: Auth, opts: Options):
        self.reaper, self.pg, self.pgbench_exe = reaper, pg, pgbench_exe
        self.bouncer_exe, self.pgtenant_exe, self.auth = bouncer_exe, pgtenant_exe, auth
        self.opts = opts
        self.results = Results()
        self.bouncer: PgBouncer | None = None
        self.tenant: dict[str, PgTenant] = {}
        self.targets: dict[str, Target] = {}
        self.connect_allowance: dict[str, int] = {}

    # ---- the stack -------------------------------------------------------------------

    def start_poolers(self) -> None:
        pw = self.auth.server_password
        self.targets = {
            "direct-public": Target("direct-public", self.pg.port, pw, "public"),
            "direct": Target("direct", self.pg.port, pw, "direct"),
        }
        self.bouncer = PgBouncer(self.reaper, self.bouncer_exe, self.pg, self.auth)
        self.bouncer.start()
        self.targets["pgbouncer"] = Target("pgbouncer", self.bouncer.port, PROXY_PASSWORD, "proxy")
        if not self.pgtenant_exe:
            return
        for name, sync in (("pgtenant", "tracked"), ("pgtenant-always", "always")):
            inst = PgTenant(self.reaper, self.pgtenant_exe, self.pg, self.auth, sync=sync, name=name,
                            default_tenant=True)
            try:
                inst.start()
            except RuntimeError as e:
                self.results.error(0, name, f"did not start: {e}\n{inst.log_tail()}")
                inst.stop()
                continue
            self.tenant[name] = inst
            self.targets[name] = Target(name, inst.port, PROXY_PASSWORD, "proxy")

    def stop_poolers(self) -> None:
        for inst in self.tenant.values():
            inst.stop()
        self.tenant.clear()
        if self.bouncer:
            self.bouncer.stop()
            self.bouncer = None

    def restart_all(self, max_connections: int) -> None:
        print(f"  restarting PostgreSQL (max_connections={max_connections}) and the poolers", flush=True)
        self.stop_poolers()
        self.pg.restart(max_connections)
        self.start_poolers()

    def available(self, names: list[str], scenario: int) -> list[str]:
        out = []
        for n in names:
            if n in self.targets:
                out.append(n)
            else:
                self.results.error(scenario, n, "not running; skipped")
        return out

    # ---- helpers ---------------------------------------------------------------------

    def target(self, system: str, bare: bool = False) -> Target:
        """`bare`: its clients name no tenant (pgtenant then uses its default_tenant)."""
        return self.targets[system].bare() if bare else self.targets[system]

    def _pgbench(self, target: str, tenants: list[str], clients: int, jobs: int, bare: bool = False, **kw) -> Run:
        # pgbench's -T clock runs while it connects its clients (one after another per
        # thread, SCRAM each); its TPS leaves that time out. Extend -T by what the warm-up
        # measured so every system gets about `seconds` of measured work.
        secs = self.opts.seconds + self.connect_allowance.get(target, 0)
        return runner.pgbench(self.pgbench_exe, self.target(target, bare), tenants, clients, jobs, secs, **kw)

    def warm_up(self, systems: list[str], tenants: list[str], clients: int, jobs: int,
                bare: bool = False, **kw) -> None:
        """An unrecorded short run per system; measures how long connecting takes."""
        base = 1 if self.opts.quick else 2
        secs = base + math.ceil(clients / max(1, jobs) * 0.05)
        self.connect_allowance = {}
        for s in systems:
            run = runner.pgbench(self.pgbench_exe, self.target(s, bare), tenants, clients, jobs, secs, **kw)
            if run.connect_ms > 500:
                self.connect_allowance[s] = math.ceil(run.connect_ms / 1000 * 1.5)

    def pooler_pid(self, system: str) -> int | None:
        if system == "pgbouncer" and self.bouncer and self.bouncer.proc:
            return self.bouncer.proc.pid
        inst = self.tenant.get(system)
        return inst.proc.pid if inst and inst.proc else None

    def profiled(self, scenario: int, point: str, system: str, run_one) -> Run:
        """Runs `run_one(system)` under `perf record` of the pooler process; writes the
        flat profile (self time by symbol, and by shared object) next to the results."""
        import subprocess

        pid = self.pooler_pid(system)
        if not self.opts.perf_dir or pid is None:
            return run_one(system)
        base = f"{self.opts.perf_dir}/s{scenario}-{point}-{system}"
        rec = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", f"{base}.data"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return run_one(system)
        finally:
            rec.send_signal(2)
            try:
                rec.wait(60)
            except subprocess.TimeoutExpired:
                rec.kill()
            with open(f"{base}.txt", "w") as f:
                for sort in ("dso", "symbol"):
                    r = subprocess.run(["perf", "report", "-i", f"{base}.data", "--stdio", "--no-children",
                                        "-g", "none", "--percent-limit", "0.5", "--sort", sort],
                                       capture_output=True, text=True, timeout=300)
                    f.write(r.stdout)

    def rounds(self, scenario: int, point: str, systems: list[str], run_one) -> None:
        """`run_one(system) -> Run`, over `pairs` rounds in alternating order."""
        for rnd in range(self.opts.pairs):
            order = systems if rnd % 2 == 0 else systems[::-1]
            line = []
            for s in order:
                pid = self.pooler_pid(s)
                before = cpu_and_switches(pid) if pid else None
                run = self.profiled(scenario, point, s, run_one) if rnd == 0 else run_one(s)
                self.record(scenario, point, s, rnd, run)
                if before and run.transactions and self.pooler_pid(s) == pid:
                    cpu, sw = cpu_and_switches(pid)
                    self.results.add(scenario, point, s, rnd, "pooler_cpu_us_per_tx",
                                     round((cpu - before[0]) / run.transactions * 1e6, 2), "us")
                    self.results.add(scenario, point, s, rnd, "pooler_ctx_switches_per_tx",
                                     round((sw - before[1]) / run.transactions, 3), "switches")
                line.append(f"{s} {run.tps:,.0f}" if run.tps is not None else f"{s} n/a")
            print(f"    round {rnd + 1}: " + ", ".join(line), flush=True)
        self.print_ratios(scenario, point, systems)

    def record(self, scenario: int, point: str, system: str, rnd: int, run: Run) -> None:
        r = self.results
        if run.tps is not None:
            r.add(scenario, point, system, rnd, "tps", round(run.tps, 1), "tx/s")
        if run.latency_ms is not None:
            r.add(scenario, point, system, rnd, "latency_avg", round(run.latency_ms, 3), "ms")
        if run.p50_ms is not None:
            r.add(scenario, point, system, rnd, "latency_p50", round(run.p50_ms, 3), "ms")
            r.add(scenario, point, system, rnd, "latency_p99", round(run.p99_ms, 3), "ms")
        if run.failed or run.aborted_clients:
            r.add(scenario, point, system, rnd, "failed_tx", run.failed, "tx")
            r.add(scenario, point, system, rnd, "aborted_clients", run.aborted_clients, "clients")
        for e in run.errors:
            r.error(scenario, system, f"[{point}] {e}")

    def ratio(self, scenario: int, point: str, a: str, b: str, metric: str = "tps") -> list[float]:
        va, vb = (self.results.values(scenario, point, s, metric) for s in (a, b))
        return [va[k] / vb[k] for k in sorted(va) if k in vb and vb[k]]

    def print_ratios(self, scenario: int, point: str, systems: list[str]) -> None:
        pairs = [("pgtenant", "pgbouncer"), ("pgtenant", "direct"), ("pgtenant", "pgtenant-always"),
                 ("direct", "direct-public")]
        for a, b in pairs:
            if a in systems and b in systems:
                rs = self.ratio(scenario, point, a, b)
                if rs:
                    per = " ".join(f"{x:.3f}" for x in rs)
                    print(f"    {a}/{b}: per pair {per}; median {runner.median(rs):.3f}", flush=True)

    def isolation(self, scenario: int, systems: list[str], tenants: list[str], clients_each: int,
                  bare: bool = False, set_each: bool = False) -> None:
        for s in systems:
            iso = runner.check_isolation(self.target(s, bare), tenants, clients_each, self.opts.isolation_queries,
                                         set_each=set_each)
            r = self.results
            r.add(scenario, "isolation", s, 0, "reads", iso.reads, "queries")
            r.add(scenario, "isolation", s, 0, "wrong_tenant_reads", iso.wrong, "queries")
            r.add(scenario, "isolation", s, 0, "read_errors", iso.errors, "queries")
            pct = 100.0 * iso.wrong / iso.reads if iso.reads else 0.0
            print(f"    wrong-tenant reads, {s}: {iso.wrong} of {iso.reads} ({pct:.1f}%), "
                  f"errors {iso.errors}", flush=True)
            for e in iso.samples[:3]:
                r.error(scenario, s, f"[isolation] {e}")

    # ---- scenarios -------------------------------------------------------------------

    def s1(self) -> None:
        systems = self.available(["direct-public", "direct", "pgbouncer", "pgtenant"], 1)
        self.warm_up(systems, ["t1"], 64, 2)
        self.rounds(1, "64", systems, lambda s: self._pgbench(s, ["t1"], 64, 2))

    def s2(self) -> None:
        tenants = [f"t{i}" for i in range(1, 5)]
        systems = self.available(["direct", "pgbouncer", "pgtenant"], 2)
        self.warm_up(systems, tenants, 16, 1)
        self.rounds(2, "4x16", systems, lambda s: self._pgbench(s, tenants, 16, 1))
        self.isolation(2, systems, tenants, 16)

    def s3(self) -> None:
        tenants = [f"t{i}" for i in range(1, 65)]
        systems = self.available(["direct", "pgbouncer", "pgtenant", "pgtenant-always"], 3)
        self.warm_up(systems, tenants, 1, 1)
        self.rounds(3, "64x1", systems, lambda s: self._pgbench(s, tenants, 1, 1))
        self.isolation(3, systems, tenants, 1)

    def s4(self) -> None:
        systems = self.available(["direct", "pgbouncer", "pgtenant"], 4)
        self.warm_up(systems, ["t1"], 16, 2, extra=["-C"])
        self.rounds(4, "16", systems, lambda s: self._pgbench(s, ["t1"], 16, 2, extra=["-C"]))

    def s5(self) -> None:
        systems = self.available(["direct", "pgbouncer", "pgtenant"], 5)
        self.warm_up(systems, ["t1"], 64, 2, extra=["-M", "prepared"])
        self.rounds(5, "64", systems, lambda s: self._pgbench(s, ["t1"], 64, 2, extra=["-M", "prepared"]))

    def s6(self) -> None:
        sampling = 0.2 if self.opts.quick else 0.1
        for clients in S6_CLIENTS:
            if clients > self.pg.max_connections - 20:
                self.restart_all(S6_BIG_MAX_CONNECTIONS)
            systems = self.available(["direct", "pgbouncer", "pgtenant"], 6)
            print(f"  {clients} clients", flush=True)
            jobs = min(2, clients)
            self.warm_up(systems, ["t1"], clients, jobs)
            self.rounds(6, str(clients), systems, lambda s: self._pgbench(
                s, ["t1"], clients, jobs, latency_log=True, sampling=sampling))
        if self.pg.max_connections != 300:
            self.restart_all(300)

    def s7(self) -> None:
        kinds = ["pgbouncer"] + (["pgtenant"] if "pgtenant" in self.targets else [])
        if "pgtenant" not in kinds:
            self.results.error(7, "pgtenant", "not running; skipped")
        pairs = 1 if self.opts.quick else max(1, min(self.opts.pairs, 3))
        for n in self.opts.idle_clients:
            print(f"  {n} idle clients", flush=True)
            for rnd in range(pairs):
                order = kinds if rnd % 2 == 0 else kinds[::-1]
                line = []
                for kind in order:
                    # A fresh process each time: memory freed by a previous run would be
                    # reused and hide the real cost.
                    if kind == "pgbouncer":
                        inst = PgBouncer(self.reaper, self.bouncer_exe, self.pg, self.auth, name=f"mem-bouncer-{n}-{rnd}")
                    else:
                        inst = PgTenant(self.reaper, self.pgtenant_exe, self.pg, self.auth, name=f"mem-pgtenant-{n}-{rnd}")
                    try:
                        inst.start()
                        target = Target(kind, inst.port, PROXY_PASSWORD, "proxy")
                        mem = runner.idle_memory(target, lambda: inst.proc.pid, n)
                    except Exception as e:  # noqa: BLE001 -- report, never crash the harness
                        self.results.error(7, kind, f"[{n}] {e!r}\n{inst.log_tail()}")
                        continue
                    finally:
                        inst.stop()
                    self._record_memory(n, kind, rnd, mem)
                    per = mem.per_client(mem.idle_kb)
                    line.append(f"{kind} {per:,.0f} B/client" if per is not None else f"{kind} n/a")
                print(f"    round {rnd + 1}: " + ", ".join(line), flush=True)

    def s8(self) -> None:
        # The app names no tenant (pgtenant: default_tenant, whose search_path is public's;
        # direct: nothing in options either) and sets its own schema before every
        # transaction, as on PgBouncer. The wrong-tenant check does the same.
        tenants = [f"t{i}" for i in range(1, 5)]
        systems = self.available(["direct", "pgbouncer", "pgtenant"], 8)
        self.warm_up(systems, tenants, 16, 1, bare=True, script=s8_script)
        self.rounds(8, "4x16", systems, lambda s: self._pgbench(s, tenants, 16, 1, bare=True, script=s8_script))
        self.isolation(8, systems, tenants, 16, bare=True, set_each=True)

    def _record_memory(self, n: int, kind: str, rnd: int, mem: runner.Memory) -> None:
        r, p = self.results, str(n)
        r.add(7, p, kind, rnd, "connected", mem.connected, "clients")
        r.add(7, p, kind, rnd, "rss_base", mem.base_kb, "KiB")
        r.add(7, p, kind, rnd, "rss_idle", mem.idle_kb, "KiB")
        r.add(7, p, kind, rnd, "rss_after_query", mem.after_query_kb, "KiB")
        if mem.connected:
            r.add(7, p, kind, rnd, "bytes_per_idle_client", round(mem.per_client(mem.idle_kb)), "B")
            r.add(7, p, kind, rnd, "bytes_per_client_after_query", round(mem.per_client(mem.after_query_kb)), "B")
        if mem.connected < n:
            r.error(7, kind, f"[{n}] only {mem.connected} of {n} clients logged in")
        for e in mem.errors:
            r.error(7, kind, f"[{n}] {e}")

    def run(self, which: list[int]) -> None:
        for s in which:
            print(f"\n== scenario {s}: {SCENARIOS[s]}", flush=True)
            t0 = time.monotonic()
            try:
                getattr(self, f"s{s}")()
            except Exception as e:  # noqa: BLE001 -- one broken scenario must not lose the rest
                import traceback

                self.results.error(s, "harness", f"scenario failed: {e!r}\n{traceback.format_exc()}")
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
