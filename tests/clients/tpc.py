"""Two-phase commit with psycopg 3 through pgtenant in transaction mode (pool of one).

One transaction is prepared and committed (`tpc_begin`, `tpc_prepare`, `tpc_commit`), with
another tenant's client served on the only server connection in between; another is
prepared, left, recovered from a new connection (`tpc_recover`) and rolled back
(`tpc_rollback`). Prints "tpc ok"; exits non-zero on any error.
Run by the Rust integration test `pinning::psycopg_two_phase_commit_works_in_transaction_mode`.
"""
import argparse
import sys

import psycopg


def connect(port: int, tenant: str, **kw) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1", port=port, user="app", password="secret", dbname="app",
        options=f"-c tenant={tenant}", connect_timeout=10, **kw,
    )


def check(what: str, got, want) -> None:
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    port = ap.parse_args().port

    other = connect(port, "t2", autocommit=True)
    conn = connect(port, "t1")
    x1 = conn.xid(7, "pgtenant-commit", "branch-1")
    conn.tpc_begin(x1)
    conn.execute("INSERT INTO public.tpc_items VALUES (1, 'committed')")
    conn.tpc_prepare()
    # Prepared: the server connection is free for another tenant meanwhile.
    check("t2 between prepare and commit",
          other.execute("SELECT tenant FROM whoami").fetchone()[0], "t2")
    check("prepared, not yet visible",
          other.execute("SELECT count(*) FROM public.tpc_items").fetchone()[0], 0)
    conn.tpc_commit()
    check("committed",
          other.execute("SELECT note FROM public.tpc_items WHERE id = 1").fetchone()[0],
          "committed")

    x2 = conn.xid(7, "pgtenant-rollback", "branch-2")
    conn.tpc_begin(x2)
    conn.execute("INSERT INTO public.tpc_items VALUES (2, 'rolled back')")
    conn.tpc_prepare()
    conn.close()

    rec = connect(port, "t3")
    found = [x for x in rec.tpc_recover() if x.gtrid == "pgtenant-rollback"]
    check("recovered xids", [(x.format_id, x.gtrid, x.bqual) for x in found],
          [(7, "pgtenant-rollback", "branch-2")])
    rec.tpc_rollback(found[0])
    check("left after rollback", [x.gtrid for x in rec.tpc_recover()], [])
    rec.autocommit = True
    check("rows", rec.execute("SELECT id FROM public.tpc_items ORDER BY id").fetchall(),
          [(1,)])
    check("t3 reads its tenant", rec.execute("SELECT tenant FROM whoami").fetchone()[0], "t3")
    rec.close()
    other.close()
    print("tpc ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
