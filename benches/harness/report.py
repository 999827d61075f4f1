"""Results out: CSV, the Markdown summary (printed and, with --write-docs, written to
docs/BENCHMARKS.md), the goals of issues 4 and 14 checked against the medians, and the
scenario 6 plot."""

from __future__ import annotations

import csv
import os
import platform
import subprocess
import sys

from .runner import median
from .scenarios import S6_CLIENTS, SCENARIOS, Bench

SYSTEM_LABEL = {
    "direct-public": "direct (public)",
    "direct": "direct (tenant schema)",
    "pgbouncer": "PgBouncer",
    "pgtenant": "pgtenant",
    "pgtenant-always": "pgtenant (always)",
}


def write_csv(bench: Bench, path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["scenario", "point", "system", "round", "metric", "value", "unit"])
        w.writeheader()
        for row in bench.results.rows:
            w.writerow({**row, "round": row["round"] + 1})


def machine(pg_version: str, bouncer_exe: str, pgbench_exe: str, repo: str) -> dict[str, str]:
    def first(path: str, key: str) -> str:
        try:
            for line in open(path):
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    def out(args: list[str]) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=repo).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    mem_kb = first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "cores (nproc)": str(os.cpu_count()),
        "CPU": first("/proc/cpuinfo", "model name"),
        "RAM": f"{int(mem_kb) / 1024 / 1024:.1f} GiB" if mem_kb.isdigit() else "?",
        "kernel": platform.release(),
        "PostgreSQL": pg_version,
        "PgBouncer": out([bouncer_exe, "--version"]).splitlines()[0] if out([bouncer_exe, "--version"]) else "?",
        "pgbench": out([pgbench_exe, "--version"]) or "?",
        "pgtenant commit": out(["git", "rev-parse", "--short", "HEAD"]) + (" (dirty)" if out(["git", "status", "--porcelain", "--untracked-files=no"]) else ""),
        "python": sys.version.split()[0],
    }


def _fmt(v, digits: int = 0) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def _med(bench: Bench, s: int, point: str, system: str, metric: str = "tps"):
    return median(list(bench.results.values(s, point, system, metric).values()))


def _tps(bench: Bench, s: int, point: str, system: str) -> str:
    """Median TPS, marked when a round had aborted clients or failed transactions."""
    text = _fmt(_med(bench, s, point, system))
    if bench.results.values(s, point, system, "aborted_clients") or bench.results.values(s, point, system, "failed_tx"):
        text += " †"
    return text


def _ratio(bench: Bench, s: int, point: str, a: str, b: str, metric: str = "tps"):
    return median(bench.ratio(s, point, a, b, metric))


def _wrong(bench: Bench, s: int, system: str) -> str:
    reads = bench.results.values(s, "isolation", system, "reads").get(0)
    wrong = bench.results.values(s, "isolation", system, "wrong_tenant_reads").get(0)
    errors = bench.results.values(s, "isolation", system, "read_errors").get(0)
    if reads is None:
        return "n/a"
    pct = 100.0 * wrong / reads if reads else 0.0
    text = f"{wrong}/{reads} ({pct:.0f}%)"
    return text + (f", {errors} errors" if errors else "")


def summary(bench: Bench, which: list[int], meta: dict[str, str]) -> str:
    o = bench.opts
    md = [f"Each figure is the median of {o.pairs} rounds; systems run in alternating order "
          f"(A B C, C B A, ...), pgbench `-T {o.seconds:g}`; ratios are medians of per-round ratios.", ""]
    main_rows = [(1, "64"), (2, "4x16"), (3, "64x1"), (4, "16"), (5, "64"), (8, "4x16")]
    if any(s in which for s, _ in main_rows):
        md += ["| scenario | direct TPS | PgBouncer TPS | pgtenant TPS | pgtenant / PgBouncer | pgtenant / direct |",
               "|---|---:|---:|---:|---:|---:|"]
        for s, point in main_rows:
            if s not in which:
                continue
            md.append(f"| {s}. {SCENARIOS[s]} | {_tps(bench, s, point, 'direct')} | "
                      f"{_tps(bench, s, point, 'pgbouncer')} | {_tps(bench, s, point, 'pgtenant')} | "
                      f"{_fmt(_ratio(bench, s, point, 'pgtenant', 'pgbouncer'), 3)} | "
                      f"{_fmt(_ratio(bench, s, point, 'pgtenant', 'direct'), 3)} |")
        md.append("")
    cpu_points = [(s, p) for s, p in main_rows if s in which] + ([(6, str(c)) for c in S6_CLIENTS] if 6 in which else [])
    if cpu_points:
        md += ["Pooler CPU time per transaction (user + system, all threads, from /proc/PID/stat; "
               "less sensitive to other load on the machine than TPS) and context switches per transaction:", "",
               "| scenario | point | PgBouncer CPU µs/tx | pgtenant CPU µs/tx | pgtenant / PgBouncer | PgBouncer switches/tx | pgtenant switches/tx |",
               "|---|---|---:|---:|---:|---:|---:|"]
        for s, p in cpu_points:
            a = _med(bench, s, p, "pgbouncer", "pooler_cpu_us_per_tx")
            b = _med(bench, s, p, "pgtenant", "pooler_cpu_us_per_tx")
            md.append(f"| {s} | {p} | {_fmt(a, 1)} | {_fmt(b, 1)} | "
                      f"{_fmt(_ratio(bench, s, p, 'pgtenant', 'pgbouncer', 'pooler_cpu_us_per_tx'), 2)} | "
                      f"{_fmt(_med(bench, s, p, 'pgbouncer', 'pooler_ctx_switches_per_tx'), 2)} | "
                      f"{_fmt(_med(bench, s, p, 'pgtenant', 'pooler_ctx_switches_per_tx'), 2)} |")
            if s == 3:
                md.append(f"| 3 | 64x1, pgtenant always | | {_fmt(_med(bench, 3, p, 'pgtenant-always', 'pooler_cpu_us_per_tx'), 1)} | | | "
                          f"{_fmt(_med(bench, 3, p, 'pgtenant-always', 'pooler_ctx_switches_per_tx'), 2)} |")
        md.append("")
    if 1 in which:
        md += [f"Scenario 1, view overhead: direct PostgreSQL through a tenant schema's views ran at "
               f"{_fmt(_ratio(bench, 1, '64', 'direct', 'direct-public'), 3)} x direct on the public tables "
               f"({_fmt(_med(bench, 1, '64', 'direct-public'))} TPS). PgBouncer ignores the tenant; "
               "its server connections read through tenant t1's views (`connect_query`), so every "
               "system runs the same SQL against the same relations.", ""]
    if 4 in which:
        md += ["Scenario 4: with `-C` the rate is bounded by pgbench's own side of each SCRAM login "
               "(libpq derives the salted password, 4096 rounds of HMAC, on every connection) on the same "
               "cores, so the poolers' CPU per connection (in the CPU table, where the 'transaction' is one "
               "connection plus one query) says more about the poolers than the rate does.", ""]
    if 3 in which:
        md += [f"Scenario 3, `search_path_sync`: tracked {_fmt(_med(bench, 3, '64x1', 'pgtenant'))} TPS, "
               f"always {_fmt(_med(bench, 3, '64x1', 'pgtenant-always'))} TPS; tracked / always = "
               f"{_fmt(_ratio(bench, 3, '64x1', 'pgtenant', 'pgtenant-always'), 3)}.", ""]
    if 8 in which:
        md += ["Scenario 8: the clients name no tenant (pgtenant gives them its `default_tenant`, whose "
               "`search_path` is public's) and each pgbench transaction is `SET search_path TO tN, public;` "
               "then `SELECT tenant_id FROM tenant_marker;`, each statement its own implicit transaction, "
               "as an app written for PgBouncer does it. The goal (pgtenant >= 1.2 x PgBouncer) needs pgtenant "
               "to answer a SET its server connection already holds instead of forwarding it.", ""]
    if any(s in which for s in (2, 3, 8)):
        md += ["Wrong-tenant reads (scenarios 2 and 3: each client names its tenant and sets its schema "
               "once, as an app on PgBouncer must; scenario 8: each client names no tenant and sets its "
               "schema before every read, each statement its own transaction; then it reads its "
               "tenant's marker view, and a read of any other tenant's marker counts):", "",
               "| scenario | direct | PgBouncer | pgtenant | pgtenant (always) |", "|---|---|---|---|---|"]
        for s in (2, 3, 8):
            if s in which:
                md.append(f"| {s} | {_wrong(bench, s, 'direct')} | {_wrong(bench, s, 'pgbouncer')} | "
                          f"{_wrong(bench, s, 'pgtenant')} | {_wrong(bench, s, 'pgtenant-always') if s == 3 else ''} |")
        md.append("")
    if 6 in which:
        md += ["Scenario 6 (TPS; latency p50 / p99 in ms, from pgbench's sampled per-transaction log):", "",
               "| clients | direct TPS | PgBouncer TPS | pgtenant TPS | direct p50/p99 | PgBouncer p50/p99 | pgtenant p50/p99 | pgtenant / PgBouncer TPS |",
               "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in S6_CLIENTS:
            p = str(c)
            lat = lambda s: f"{_fmt(_med(bench, 6, p, s, 'latency_p50'), 2)} / {_fmt(_med(bench, 6, p, s, 'latency_p99'), 2)}"  # noqa: E731
            md.append(f"| {c} | {_tps(bench, 6, p, 'direct')} | {_tps(bench, 6, p, 'pgbouncer')} | "
                      f"{_tps(bench, 6, p, 'pgtenant')} | {lat('direct')} | {lat('pgbouncer')} | {lat('pgtenant')} | "
                      f"{_fmt(_ratio(bench, 6, p, 'pgtenant', 'pgbouncer'), 3)} |")
        md += ["", f"For 1000 clients PostgreSQL is restarted with max_connections = 1100 for all three systems.", ""]
    if 7 in which:
        md += ["Scenario 7 (bytes of pooler RSS per client: (RSS with N clients - RSS before) / N; a fresh "
               "pooler process per measurement):", "",
               "| clients | PgBouncer idle | pgtenant idle | PgBouncer after one query each | pgtenant after one query each |",
               "|---:|---:|---:|---:|---:|"]
        for n in o.idle_clients:
            p = str(n)
            md.append(f"| {n:,} | {_fmt(_med(bench, 7, p, 'pgbouncer', 'bytes_per_idle_client'))} | "
                      f"{_fmt(_med(bench, 7, p, 'pgtenant', 'bytes_per_idle_client'))} | "
                      f"{_fmt(_med(bench, 7, p, 'pgbouncer', 'bytes_per_client_after_query'))} | "
                      f"{_fmt(_med(bench, 7, p, 'pgtenant', 'bytes_per_client_after_query'))} |")
        md.append("")
    if any("†" in line for line in md):
        md += ["† some clients aborted on errors (pgbench stops a client at its first error): that "
               "TPS is the surviving clients'; see Errors below.", ""]
    md += goals(bench, which)
    md += ["Errors seen:", ""]
    md += [f"- `{e.splitlines()[0]}`" + ("".join(f"\n  `{x}`" for x in e.splitlines()[1:4] if x.strip())) for e in bench.results.errors] or ["- none"]
    md.append("")
    return "\n".join(md)


def goals(bench: Bench, which: list[int]) -> list[str]:
    rows = []
    issue = 4

    def goal(s: int, what: str, value, target: str, met) -> None:
        if s in which:
            verdict = "n/a" if met is None else ("met" if met else "**missed**")
            rows.append(f"| {issue} | {s} | {what} | {value} | {target} | {verdict} |")

    r1 = _ratio(bench, 1, "64", "pgtenant", "pgbouncer")
    goal(1, "pgtenant / PgBouncer TPS", _fmt(r1, 3), ">= 1.10", None if r1 is None else r1 >= 1.10)
    r2 = _ratio(bench, 2, "4x16", "pgtenant", "pgbouncer")
    issue = "4, 14"
    goal(2, "pgtenant / PgBouncer TPS", _fmt(r2, 3), ">= 0.95", None if r2 is None else r2 >= 0.95)
    issue = 4
    w2 = bench.results.values(2, "isolation", "pgtenant", "wrong_tenant_reads").get(0)
    goal(2, "pgtenant wrong-tenant reads", _fmt(w2), "0", None if w2 is None else w2 == 0)
    r3 = _ratio(bench, 3, "64x1", "pgtenant", "pgtenant-always")
    goal(3, "tracked / always TPS", _fmt(r3, 3), ">= 1.3", None if r3 is None else r3 >= 1.3)
    w3 = [bench.results.values(3, "isolation", s, "wrong_tenant_reads").get(0) for s in ("pgtenant", "pgtenant-always")]
    goal(3, "wrong-tenant reads (tracked, always)", " / ".join(_fmt(w) for w in w3), "0 / 0",
         None if None in w3 else sum(w3) == 0)
    r4 = _ratio(bench, 4, "16", "pgtenant", "pgbouncer")
    goal(4, "pgtenant / PgBouncer connection rate", _fmt(r4, 3), ">= 1.0", None if r4 is None else r4 >= 1.0)
    for c in ("64", "256"):
        a, b = _med(bench, 6, c, "pgtenant", "latency_p99"), _med(bench, 6, c, "pgbouncer", "latency_p99")
        goal(6, f"p99 at {c} clients, pgtenant vs PgBouncer (ms)", f"{_fmt(a, 2)} vs {_fmt(b, 2)}", "<=",
             None if a is None or b is None else a <= b)
    if bench.opts.idle_clients:
        n = str(max(bench.opts.idle_clients))
        a = _med(bench, 7, n, "pgtenant", "bytes_per_idle_client")
        b = _med(bench, 7, n, "pgbouncer", "bytes_per_idle_client")
        issue = "4, 14"
        goal(7, f"bytes per idle client at {n} clients, pgtenant vs PgBouncer", f"{_fmt(a)} vs {_fmt(b)}", "<=",
             None if a is None or b is None else a <= b)
    # Issue 14 (a virtual session per client): no slower than before where clients set
    # nothing (scenario 1 here; 2 and 7 above, marked "4, 14"), and faster than PgBouncer
    # where the app sets its own search_path before every transaction, without a wrong read.
    issue = 14
    goal(1, "pgtenant / PgBouncer TPS", _fmt(r1, 3), ">= 1.0", None if r1 is None else r1 >= 1.0)
    r8 = _ratio(bench, 8, "4x16", "pgtenant", "pgbouncer")
    goal(8, "pgtenant / PgBouncer TPS", _fmt(r8, 3), ">= 1.2", None if r8 is None else r8 >= 1.2)
    w8 = bench.results.values(8, "isolation", "pgtenant", "wrong_tenant_reads").get(0)
    goal(8, "pgtenant wrong-tenant reads", _fmt(w8), "0", None if w8 is None else w8 == 0)
    if not rows:
        return []
    return ["Goals of issues 4 and 14:", "", "| issue | scenario | measure | value | goal | |",
            "|---|---|---|---|---|---|", *rows, ""]


def plot_s6(bench: Bench, path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not available: no PNG"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for system, style in (("direct", "o-"), ("pgbouncer", "s-"), ("pgtenant", "^-")):
        xs, tps, p99, p50 = [], [], [], []
        for c in S6_CLIENTS:
            t = _med(bench, 6, str(c), system)
            if t is None:
                continue
            xs.append(c)
            tps.append(t)
            p99.append(_med(bench, 6, str(c), system, "latency_p99"))
            p50.append(_med(bench, 6, str(c), system, "latency_p50"))
        if not xs:
            continue
        label = SYSTEM_LABEL[system]
        ax1.plot(xs, tps, style, label=label)
        line = ax2.plot(xs, p99, style, label=f"{label} p99")[0]
        ax2.plot(xs, p50, style.replace("-", ":"), color=line.get_color(), alpha=0.6, label=f"{label} p50")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(S6_CLIENTS)
        ax.set_xticklabels([str(c) for c in S6_CLIENTS])
        ax.set_xlabel("clients")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_ylabel("TPS (pgbench -S)")
    ax1.set_ylim(bottom=0)
    ax2.set_ylabel("latency (ms)")
    ax2.set_yscale("log")
    fig.suptitle(f"pgbench -S, pool 8, medians of {bench.opts.pairs} rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {path}"


AUTH_NOTE = {
    "verifier": "SCRAM-SHA-256 client auth, both poolers storing the same SCRAM verifier of the "
    "same password (PgBouncer logs in to the server by SCRAM pass-through, so the role's password "
    "is that verifier too; see benches/README.md, Auth)",
    "plain": "SCRAM-SHA-256 client auth, both poolers holding the same plain password "
    "(PgBouncer then derives a SCRAM secret on every login, pgtenant once at load)",
}


ANALYSIS_START, ANALYSIS_END = "<!-- analysis: kept when the harness rewrites this file -->", "<!-- /analysis -->"


def kept_analysis(old_text: str) -> str:
    """The hand-written analysis section of an existing docs/BENCHMARKS.md, if any."""
    if ANALYSIS_START in old_text and ANALYSIS_END in old_text:
        start = old_text.index(ANALYSIS_START)
        return old_text[start:old_text.index(ANALYSIS_END) + len(ANALYSIS_END)]
    return (f"{ANALYSIS_START}\n## Analysis\n\n(Not written yet: where the time goes, from the "
            f"profiles, belongs here.)\n{ANALYSIS_END}")


def perf_digest(perf_dir: str, top: int = 12) -> list[str]:
    """A few lines per profile written by --perf: self time by shared object and top symbols."""
    import glob

    out = []
    for path in sorted(glob.glob(f"{perf_dir}/*.txt")):
        rows = [ln.rstrip() for ln in open(path) if ln.strip() and not ln.startswith("#")]
        dso = [r.strip() for r in rows if "[.]" not in r and "[k]" not in r][:5]
        sym = [" ".join(r.split()[:3]) for r in rows if "[.]" in r or "[k]" in r][:top]
        name = path.rsplit("/", 1)[1][:-4]
        out += [f"`{name}`: " + ", ".join(" ".join(d.split()) for d in dso), "", "```", *sym, "```", ""]
    return out


def docs(summary_md: str, meta: dict[str, str], command: str, date: str, load: str, auth_mode: str,
         analysis: str, perf: list[str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "pgtenant against PgBouncer and direct PostgreSQL, as measured by `benches/pgbench.py`",
        "(see `benches/README.md` for what each scenario does and how to read it). This file is",
        "rewritten by the harness with `--write-docs`; the numbers below are from the latest such run.",
        "",
        f"Run: `{command}` on {date}.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in meta.items()],
        f"| load average (start / end) | {load} |",
        "",
        "## Setup",
        "",
        "- PostgreSQL: `initdb` in a temp dir, 127.0.0.1 on a random port, `max_connections=300`, "
        "`shared_buffers=256MB`, `fsync=off`; `pgbench -i -s 10`; schemas `t1`..`t64`, each holding "
        "views `pgbench_*` over the public tables and a `tenant_marker` view.",
        "- Both poolers: transaction pooling, a pool of 8 server connections to the same database and "
        f"login, {AUTH_NOTE[auth_mode]}, up to 12,000 clients, their default logging. PgBouncer: `ignore_startup_parameters = "
        "options,extra_float_digits` and `connect_query = 'SET search_path TO t1, public'` (it cannot "
        "route by tenant; this way its clients run the same SQL against the same relations, tenant "
        "t1's views, as the others). pgtenant: 64 tenants `tN` with `search_path = [\"tN\", \"public\"]`, "
        "and `default_tenant = \"shared\"` (`search_path = [\"public\"]`, for scenario 8's clients, which "
        "name no tenant), its defaults otherwise (idle clients park after 1 s).",
        "- Clients: pgbench over TCP, `-j 2` (one pgbench process per tenant with `-j 1` where "
        "several run at once), `PGOPTIONS='-c tenant=tN'` for both poolers (PgBouncer ignores it, "
        "so it does not isolate tenants), `PGOPTIONS='-c search_path=tN,public'` for direct. Scenario 8: "
        "nothing in `PGOPTIONS` for any system; the pgbench script sets the schema.",
        "- All processes share the machine's cores: the clients (pgbench) compete with the pooler "
        "and PostgreSQL for CPU, as they would on a single application host.",
        "",
        "## Results",
        "",
        summary_md,
        analysis,
        "",
    ]
    if perf:
        lines += ["## Profiles (perf, self time, first round of each point)", "", *perf]
    return "\n".join(lines)
