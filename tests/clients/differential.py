"""Differential test of per-client session settings: the same random scripts run on direct
PostgreSQL connections and through pgtenant, and every observation must be equal.

Each client runs `SET`/`RESET`/`set_config`/`DISCARD ALL`/transactions/savepoints/`SET LOCAL`/
roles/failing multi-statement queries (generated from `--seed`); in session mode also
prepared statements, WITH HOLD cursors, temporary tables and LISTEN. After every statement both
sides observe the statement's outcome, the transaction status, the `current_setting` of every
setting in the pool (plus `current_user`/`session_user`) and the ParameterStatus values libpq
was told. Direct side: one PostgreSQL session per client, started as pgtenant starts a client
of that tenant (its `search_path` and settings as startup options). Proxy side: the same
clients through pgtenant, which in the suite has `pool_size = 1`.

  --mode transaction: the clients are connected at once and interleaved (a random client runs
    its next statement; a client inside a transaction keeps the turn until it ends, since they
    all share one server connection).
  --mode session: the clients run one after another (connect, run, leave; sometimes inside a
    transaction), so state left by one client shows up in the next one's observations.

Prints `observations=N differences=M new_differences=K` (an observation is everything seen
after one statement or connect; it differs if any of its fields does; it is a new difference if
a field differs that did not in the client's previous observation, so K counts the events where
state went wrong rather than their consequences), counts per field, and for every field the
first observation where it differed, with the client's preceding statements, so a seed
reproduces it. Exit 1 on any difference or fewer than --min-observations observations.

Run by the Rust integration tests in tests/it/vsession.rs. Uses psycopg 3's libpq binding
(`psycopg.pq`) directly, so exactly one protocol exchange per statement: simple Query (or, for
some single statements, the extended protocol) with no driver-side statements or caching.
"""
import argparse
import os
import random
import sys
import threading

from psycopg import pq
from psycopg.conninfo import make_conninfo

# Tenants as tests/it/support/mod.rs configures them: t1..t4 a schema each, r1..r4 the public
# schema and a setting. A direct connection gets them as startup options.
TENANTS = {
    **{f"t{n}": {"search_path": f"t{n}, public", "settings": {}} for n in range(1, 5)},
    **{f"r{n}": {"search_path": "public", "settings": {"app.tenant_id": str(n)}} for n in range(1, 5)},
}

ROLE = "vs_role"  # tests/it/support/fixture.sql: GRANT vs_role TO app
LOGIN = "app"  # the server login of the direct side and of the proxy's backend

# The settings pool: name -> values. Values are strings; `sql_value` spells them for SET.
SETTINGS = {
    "search_path": ["t2", "t3, public", "public", "t1, t4", "t4, public", '"$user", public'],
    "statement_timeout": ["5s", "30s", "2min", "0"],
    "lock_timeout": ["3s", "10s", "0"],
    "work_mem": ["5MB", "16MB", "64kB"],
    "default_transaction_isolation": ["serializable", "repeatable read", "read committed"],
    "default_transaction_read_only": ["on", "off"],
    "DateStyle": ["SQL, DMY", "German", "ISO, MDY", "Postgres, YMD"],
    "TimeZone": ["Europe/Berlin", "UTC", "America/New_York", "Asia/Kolkata"],
    "IntervalStyle": ["postgres_verbose", "sql_standard", "iso_8601", "postgres"],
    "application_name": ["app-a", "app-b"],
    "extra_float_digits": ["0", "3", "-2"],
    "client_encoding": ["LATIN1", "UTF8", "WIN1252"],
    "standard_conforming_strings": ["off", "on"],
    "app.x": ["a1", "b2"],
    "myapp.flag": ["on", "off"],
    "app.tenant_id": ["7", "8"],
}
CUSTOM = {"app.x", "myapp.flag", "app.tenant_id"}
# Observed with current_setting (custom ones as coalesce(current_setting(x, true), ''): a
# placeholder never defined in a session reads NULL, one defined and reset reads '', and no
# pooler can undefine a placeholder on a shared connection).
OBSERVED = list(SETTINGS) + ["transaction_isolation", "transaction_read_only"]
# ParameterStatus values libpq was told (search_path is reported by PostgreSQL 18+).
REPORTED = [
    "client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings",
    "application_name", "search_path", "session_authorization", "is_superuser",
    "default_transaction_read_only", "in_hot_standby", "integer_datetimes", "server_encoding",
    "server_version",
]
# Startup options a client may give (besides its tenant), on both sides alike.
STARTUP_OPTIONS = {
    "statement_timeout": "20s",
    "work_mem": "8MB",
    "DateStyle": "SQL, DMY",
    "lock_timeout": "15s",
    "app.x": "startup",
    "extra_float_digits": "2",
    "TimeZone": "Asia/Tokyo",
    "IntervalStyle": "iso_8601",
}

IDLE, INTRANS, INERROR = pq.TransactionStatus.IDLE, pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR
TX_NAMES = {IDLE: "idle", INTRANS: "in-transaction", INERROR: "failed-transaction"}


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_value(name: str, value: str) -> str:
    # search_path values are identifier lists; everything else a string literal.
    return value if name == "search_path" else lit(value)


def option_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


# Session-scoped objects, observed in session mode only (in transaction mode they pin a client
# to its server connection, which with one server connection would stall the other clients).
SESSION_OBJECTS = {
    "prepared statements": "(SELECT count(*) FROM pg_prepared_statements)",
    "open cursors": "(SELECT count(*) FROM pg_cursors)",
    "temporary relations": "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())",
    "listened channels": "(SELECT count(*) FROM pg_listening_channels())",
}


def observation_sql(objects: bool) -> str:
    cols = []
    for name in OBSERVED:
        if name in CUSTOM:
            cols.append(f"coalesce(current_setting({lit(name)}, true), '')")
        else:
            cols.append(f"current_setting({lit(name)})")
    cols += ["current_user", "session_user"]
    if objects:
        cols += SESSION_OBJECTS.values()
    return "SELECT " + ", ".join(cols)


def observation_fields(objects: bool) -> list:
    fields = [f"setting {n}" for n in OBSERVED] + ["current_user", "session_user"]
    if objects:
        fields += SESSION_OBJECTS
    return fields


# --------------------------------------------------------------------------------------------
# Script generation: one statement at a time, chosen from the client's transaction status on
# the direct side (so the script is a function of the seed alone when nothing differs).


class Generator:
    def __init__(self, rng: random.Random, mode: str):
        self.rng = rng
        self.session_mode = mode == "session"

    def setting(self):
        name = self.rng.choice(list(SETTINGS))
        return name, self.rng.choice(SETTINGS[name])

    def set_stmt(self, scope: str = "") -> str:
        r = self.rng
        name, value = self.setting()
        if name == "TimeZone" and not scope and r.random() < 0.4:
            return f"SET TIME ZONE {lit(value)}"
        head = {"": r.choice(["SET", "SET", "SET SESSION"]), "local": "SET LOCAL"}[scope]
        return f"{head} {name} {r.choice(['TO', '='])} {sql_value(name, value)}"

    def reset_stmt(self) -> str:
        r = self.rng
        name = r.choice(list(SETTINGS))
        if name == "TimeZone" and r.random() < 0.4:
            return r.choice(["SET TIME ZONE DEFAULT", "SET TIME ZONE LOCAL"])
        return r.choice([f"RESET {name}", f"RESET {name}", f"SET {name} TO DEFAULT", f"SET {name} = DEFAULT"])

    def set_config_stmt(self, is_local: bool) -> str:
        name, value = self.setting()
        return f"SELECT set_config({lit(name)}, {lit(value)}, {'true' if is_local else 'false'})"

    def role_stmt(self) -> str:
        return self.rng.choice([
            f"SET ROLE {ROLE}", f"SET ROLE {ROLE}", f"SET SESSION ROLE {ROLE}", "RESET ROLE",
            "SET ROLE NONE", f"SET SESSION AUTHORIZATION {LOGIN}", "SET SESSION AUTHORIZATION DEFAULT",
            "RESET SESSION AUTHORIZATION", f"SELECT set_config('role', {lit(ROLE)}, false)",
        ])

    def failing_set(self) -> str:
        return self.rng.choice([
            "SET work_mem = 'lots'", "SET statement_timeout TO 'soon'", "SET no_such_setting = 1",
            "SET DateStyle = 'Martian'", "SET ROLE no_such_role",
        ])

    def changing(self) -> str:
        """A statement that changes session state (for the multi-statement forms)."""
        r = self.rng.random()
        if r < 0.55:
            return self.set_stmt()
        if r < 0.7:
            return self.reset_stmt()
        if r < 0.8:
            return "RESET ALL"
        if r < 0.9:
            return self.set_config_stmt(False)
        return self.role_stmt()

    def multi(self) -> str:
        r = self.rng
        a, b = self.changing(), self.changing()
        return r.choice([
            f"{a}; SELECT 1/0",
            f"{a}; {b}; SELECT 1/0",
            f"SELECT 1; {a}; SELECT 2/0",
            f"{a}; SELECT 1",
            f"{a}; {b}",
            f"BEGIN; {a}; COMMIT",
            f"BEGIN; {a}; ROLLBACK",
            f"BEGIN; {a}; SELECT 1/0",
            f"BEGIN; {a}; COMMIT; {b}; SELECT 1/0",
            f"{self.set_stmt('local')}; {a}; SELECT 1",
            f"{self.set_config_stmt(True)}; SELECT 1",
            f"{a}; BEGIN; {b}",
            f"{a}; DISCARD ALL",
        ])

    def session_objects(self) -> str:
        return self.rng.choice([
            "PREPARE vs_p AS SELECT 1", "DEALLOCATE vs_p", "DEALLOCATE ALL", "EXECUTE vs_p",
            "DECLARE vs_c CURSOR WITH HOLD FOR SELECT 1", "CLOSE vs_c", "CLOSE ALL",
            "CREATE TEMP TABLE vs_tmp (a int)", "DROP TABLE IF EXISTS vs_tmp",
            "LISTEN vs_channel", "UNLISTEN *",
        ])

    def pick(self, table) -> str:
        total = sum(w for w, _ in table)
        x = self.rng.random() * total
        for w, make in table:
            x -= w
            if x < 0:
                return make()
        return table[-1][1]()

    def next(self, tx) -> str:
        r = self.rng
        if tx == IDLE:
            table = [
                (30, self.set_stmt),
                (10, self.reset_stmt),
                (3, lambda: "RESET ALL"),
                (6, lambda: self.set_config_stmt(False)),
                (2, lambda: self.set_config_stmt(True)),
                (2, lambda: self.set_stmt("local")),
                (3, lambda: "DISCARD ALL"),
                (12, lambda: r.choice(["BEGIN", "BEGIN", "START TRANSACTION",
                                       "BEGIN ISOLATION LEVEL REPEATABLE READ"])),
                (6, self.role_stmt),
                (10, self.multi),
                (3, self.failing_set),
                (3, lambda: r.choice(["SELECT 1", "SELECT 1/0", "COMMIT", "ROLLBACK", "SAVEPOINT s1"])),
                (2, lambda: "\\reconnect"),
            ]
            if self.session_mode:
                table.append((5, self.session_objects))
            return self.pick(table)
        if tx == INTRANS:
            return self.pick([
                (20, self.set_stmt),
                (6, self.reset_stmt),
                (2, lambda: "RESET ALL"),
                (5, lambda: self.set_stmt("local")),
                (4, lambda: self.set_config_stmt(False)),
                (3, lambda: self.set_config_stmt(True)),
                (4, self.role_stmt),
                (5, lambda: r.choice(["SAVEPOINT s1", "SAVEPOINT s2"])),
                (4, lambda: r.choice(["ROLLBACK TO SAVEPOINT s1", "ROLLBACK TO s2", "RELEASE s1",
                                      "RELEASE SAVEPOINT s2"])),
                (3, lambda: r.choice(["SELECT 1/0", "SELECT 1", "DISCARD ALL"])),
                (2, self.failing_set),
                (2, self.multi),
                (9, lambda: r.choice(["COMMIT", "END", "COMMIT"])),
                (7, lambda: r.choice(["ROLLBACK", "ABORT"])),
                (1, lambda: "\\reconnect"),
            ])
        return self.pick([
            (6, lambda: "ROLLBACK"),
            (4, lambda: r.choice(["ROLLBACK TO SAVEPOINT s1", "ROLLBACK TO s2"])),
            (2, lambda: "COMMIT"),
            (2, lambda: r.choice(["SELECT 1", self.set_stmt()])),
        ])


# --------------------------------------------------------------------------------------------
# Connections and observations.


class Side:
    """One client's connection on one side (direct or proxy)."""

    def __init__(self, base: str, naming: str, spec: dict):
        options = []
        if naming == "tenant":
            options.append(f"-c tenant={spec['tenant']}")
        else:
            tenant = TENANTS[spec["tenant"]]
            options.append(f"-c search_path={option_escape(tenant['search_path'])}")
            for name, value in tenant["settings"].items():
                options.append(f"-c {name}={option_escape(value)}")
        for name, value in spec["options"]:
            options.append(f"-c {name}={option_escape(value)}")
        kwargs = {"options": " ".join(options)}
        if spec["application_name"] is not None:
            kwargs["application_name"] = spec["application_name"]
        if spec["client_encoding"] is not None:
            kwargs["client_encoding"] = spec["client_encoding"]
        self.conninfo = make_conninfo(base, **kwargs)
        self.conn = pq.PGconn.connect(self.conninfo.encode())
        if self.conn.status != pq.ConnStatus.OK:
            message = self.conn.error_message.decode(errors="replace").strip()
            raise ConnectionError(f"connecting ({self.conninfo}): {message}")
        self.conn.notice_handler = lambda _result: None  # warnings are not observed

    def close(self) -> None:
        self.conn.finish()

    def run(self, sql: str, extended: bool) -> str:
        if extended:
            res = self.conn.exec_params(sql.encode(), [])
        else:
            res = self.conn.exec_(sql.encode())
        return outcome(res)

    def observe(self, obs_sql: str, fields: list) -> dict:
        seen = {"transaction status": TX_NAMES.get(self.conn.transaction_status, "unknown")}
        res = self.conn.exec_(obs_sql.encode())
        if res.status == pq.ExecStatus.TUPLES_OK and res.ntuples == 1:
            for i, field in enumerate(fields):
                value = res.get_value(0, i)
                seen[field] = None if value is None else value.decode(errors="replace")
        else:
            seen["observation query"] = outcome(res)
        for name in REPORTED:
            value = self.conn.parameter_status(name.encode())
            seen[f"reported {name}"] = None if value is None else value.decode(errors="replace")
        return seen

    @property
    def tx(self):
        return self.conn.transaction_status


def outcome(res) -> str:
    if res.status == pq.ExecStatus.FATAL_ERROR:
        code = res.error_field(pq.DiagnosticField.SQLSTATE)
        return "ERROR " + (code.decode() if code else res.error_message.decode(errors="replace").strip())
    status = (res.command_status or b"").decode()
    if res.status == pq.ExecStatus.TUPLES_OK:
        rows = [
            "|".join("NULL" if res.get_value(r, c) is None else res.get_value(r, c).decode(errors="replace")
                     for c in range(res.nfields))
            for r in range(res.ntuples)
        ]
        return f"OK {status} [{'; '.join(rows)}]"
    return f"OK {status}"


def client_spec(rng: random.Random, tenants: list, name: str) -> dict:
    chosen = rng.sample(sorted(STARTUP_OPTIONS), rng.choice([0, 0, 1, 2]))
    return {
        "tenant": rng.choice(tenants),
        "options": [(n, STARTUP_OPTIONS[n]) for n in chosen],
        "application_name": rng.choice([name, name, name, None]),
        "client_encoding": rng.choice([None, None, None, "UTF8", "LATIN1"]),
    }


def describe_spec(spec: dict) -> str:
    opts = " ".join(f"-c {n}={v}" for n, v in spec["options"])
    return (f"tenant={spec['tenant']} application_name={spec['application_name']} "
            f"client_encoding={spec['client_encoding']} options=[{opts}]")


# --------------------------------------------------------------------------------------------
# The run.


class Run:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.gen = Generator(self.rng, args.mode)
        self.tenants = args.tenants.split(",")
        objects = args.mode == "session"
        self.obs_sql = observation_sql(objects)
        self.fields = observation_fields(objects)
        self.observations = 0
        self.differing = 0
        self.new_differences = 0  # observations where a field starts to differ for its client
        self.last_differing = {}  # client -> fields that differed in its previous observation
        self.resyncs = 0
        self.field_counts = {}
        self.first_by_field = {}
        self.diffs = []
        self.history = {}  # client -> list of (step, statement)
        self.specs = {}
        self.step = 0
        self.direct_outcomes = {}  # outcome class on the direct side -> count (coverage)

    # One client's pair of connections.
    def connect(self, client: str):
        spec = client_spec(self.rng, self.tenants, f"vs-{client}")
        self.specs[client] = spec
        self.history.setdefault(client, []).append((self.step, f"\\connect {describe_spec(spec)}"))
        direct = Side(self.args.direct, "direct", spec)
        proxy = Side(self.args.proxy, self.args.proxy_naming, spec)
        self.last_differing.pop(client, None)  # a new session: every difference is new
        self.compare(client, "\\connect", direct, proxy, "OK", "OK")
        return [direct, proxy]

    def compare(self, client, stmt, direct, proxy, out_d, out_p) -> None:
        seen_d = {"outcome": out_d, **direct.observe(self.obs_sql, self.fields)}
        seen_p = {"outcome": out_p, **proxy.observe(self.obs_sql, self.fields)}
        self.observations += 1
        differing = [f for f in seen_d.keys() | seen_p.keys() if seen_d.get(f) != seen_p.get(f)]
        previous = self.last_differing.get(client, set())
        self.last_differing[client] = set(differing)
        if not differing:
            return
        if not set(differing) <= previous:
            self.new_differences += 1
        self.differing += 1
        record = {
            "client": client, "step": self.step, "statement": stmt, "fields": sorted(differing),
            "direct": seen_d, "proxy": seen_p, "history": list(self.history[client][-8:]),
            "spec": self.specs[client],
        }
        if len(self.diffs) < self.args.show:
            self.diffs.append(record)
        for f in differing:
            self.field_counts[f] = self.field_counts.get(f, 0) + 1
            self.first_by_field.setdefault(f, record)

    def statement(self, client: str, pair: list, stmt: str) -> list:
        """Runs one statement on both sides (or reconnects); returns the (new) pair."""
        self.step += 1
        if stmt == "\\reconnect":
            self.history[client].append((self.step, "\\disconnect"))
            for side in pair:
                side.close()
            return self.connect(client)
        self.history[client].append((self.step, stmt))
        # Single statements sometimes go through the extended protocol (Parse/Bind/Execute).
        extended = ";" not in stmt and self.rng.random() < 0.25
        direct, proxy = pair
        out_d = direct.run(stmt, extended)
        out_p = proxy.run(stmt, extended)
        kind = out_d.split(" [")[0] if out_d.startswith("ERROR") else "OK " + out_d.split()[1]
        self.direct_outcomes[kind] = self.direct_outcomes.get(kind, 0) + 1
        self.compare(client, stmt + ("  [extended protocol]" if extended else ""), direct, proxy, out_d, out_p)
        if direct.tx != proxy.tx:
            # Different transaction states would let the next client wait for the one server
            # connection forever: end both transactions (the difference is already counted).
            self.resyncs += 1
            self.history[client].append((self.step, "ROLLBACK  [harness: resync after differing transaction status]"))
            direct.run("ROLLBACK", False)
            proxy.run("ROLLBACK", False)
        return pair

    def run_transaction_mode(self) -> None:
        names = [f"c{i}" for i in range(self.args.clients)]
        pairs = {c: self.connect(c) for c in names}
        busy = None
        for _ in range(self.args.steps):
            client = busy if busy is not None else self.rng.choice(names)
            pair = pairs[client]
            stmt = self.gen.next(pair[0].tx)
            pairs[client] = pair = self.statement(client, pair, stmt)
            busy = client if any(side.tx != IDLE for side in pair) else None
        for pair in pairs.values():
            for side in pair:
                side.close()

    def run_session_mode(self) -> None:
        per_client = max(1, self.args.steps // self.args.clients)
        for i in range(self.args.clients):
            client = f"c{i}"
            pair = self.connect(client)
            for _ in range(per_client):
                pair = self.statement(client, pair, self.gen.next(pair[0].tx))
            # Leave; sometimes in the middle of a transaction (the pooler must clean up).
            if pair[0].tx == IDLE and self.rng.random() < 0.2:
                stmt = self.rng.choice(["BEGIN", f"BEGIN; {self.gen.set_stmt()}", f"BEGIN; {self.gen.set_stmt()}; SELECT 1/0"])
                pair = self.statement(client, pair, stmt)
            self.history[client].append((self.step, "\\disconnect"))
            for side in pair:
                side.close()

    def report(self, out=sys.stdout) -> None:
        a = self.args
        print(f"differential: mode={a.mode} seed={a.seed} clients={a.clients} steps={a.steps} "
              f"tenants={a.tenants} proxy_naming={a.proxy_naming}", file=out)
        print(f"observations={self.observations} differences={self.differing} "
              f"new_differences={self.new_differences} resyncs={self.resyncs}", file=out)
        outcomes = sorted(self.direct_outcomes.items(), key=lambda kv: (-kv[1], kv[0]))
        print("statements (direct side): " + ", ".join(f"{k}={n}" for k, n in outcomes), file=out)
        for field, n in sorted(self.field_counts.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {n:5} differ in {field}", file=out)
        if self.first_by_field:
            print("first difference of each field (direct vs proxy):", file=out)
        shown = set()
        for field, rec in sorted(self.first_by_field.items(), key=lambda kv: kv[1]["step"]):
            print(f"- {field}: {rec['direct'].get(field)!r} vs {rec['proxy'].get(field)!r}  "
                  f"(seed {a.seed}, client {rec['client']}, step {rec['step']}: {rec['statement']})", file=out)
            key = (rec["client"], rec["step"])
            if key in shown:
                continue
            shown.add(key)
            print(f"    client {rec['client']}: {describe_spec(rec['spec'])}", file=out)
            for step, stmt in rec["history"]:
                print(f"    {step:5}  {stmt}", file=out)
        if a.verbose:
            for rec in self.diffs:
                print(f"--- seed {a.seed} client {rec['client']} step {rec['step']}: {rec['statement']}", file=out)
                for f in rec["fields"]:
                    print(f"    {f}: direct={rec['direct'].get(f)!r} proxy={rec['proxy'].get(f)!r}", file=out)
        out.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--direct", required=True, help="libpq connection string straight to PostgreSQL (no options)")
    p.add_argument("--proxy", required=True, help="libpq connection string to pgtenant (or to PostgreSQL)")
    p.add_argument("--proxy-naming", choices=["tenant", "direct"], default="tenant",
                   help="how proxy-side clients start: `-c tenant=X` (pgtenant) or as the direct side "
                        "(to run the harness against PostgreSQL on both sides)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--steps", type=int, default=400, help="statements in all (session mode: split over the clients)")
    p.add_argument("--mode", choices=["transaction", "session"], required=True)
    p.add_argument("--tenants", default="t1,t2,t3,r1", help="tenants the clients are drawn from")
    p.add_argument("--min-observations", type=int, default=0)
    p.add_argument("--show", type=int, default=20, help="differing observations kept for --verbose")
    p.add_argument("--verbose", action="store_true", help="print every kept differing observation")
    p.add_argument("--deadline", type=float, default=300, help="seconds before giving up (exit 3)")
    args = p.parse_args()
    if args.mode == "transaction" and args.clients < 2:
        p.error("transaction mode needs at least 2 clients")
    for t in args.tenants.split(","):
        if t not in TENANTS:
            p.error(f"unknown tenant {t!r} (known: {', '.join(TENANTS)})")

    run = Run(args)

    def give_up():
        print(f"differential: deadline of {args.deadline}s passed at step {run.step} "
              "(a statement hung?); results so far:", flush=True)
        run.report()
        os._exit(3)

    timer = threading.Timer(args.deadline, give_up)
    timer.daemon = True
    timer.start()
    if args.mode == "transaction":
        run.run_transaction_mode()
    else:
        run.run_session_mode()
    timer.cancel()
    run.report()
    if run.differing > 0:
        return 1
    if run.observations < args.min_observations:
        print(f"too few observations: {run.observations} < {args.min_observations}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
