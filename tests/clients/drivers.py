"""Real Python drivers through pgtenant in transaction mode, with named prepared statements.

psycopg 3 with prepare_threshold=0 (every query prepared) and asyncpg with its default
statement cache, several tenants at once on a small pool: every row must come from the
client's own tenant. Prints "psycopg ok" / "asyncpg ok"; exits non-zero on any error.
Run by the Rust integration test `prepared::python_drivers_psycopg_and_asyncpg`.
"""
import argparse
import asyncio
import sys
import threading

TENANTS = {"t1": 1, "t2": 2, "t3": 3, "t4": 4}
ROUNDS = 60


def check_psycopg(port: int) -> list:
    import psycopg

    errors = []

    def client(tenant: str, n: int) -> None:
        try:
            with psycopg.connect(
                host="127.0.0.1", port=port, user="app", password="secret", dbname="app",
                options=f"-c tenant={tenant}", prepare_threshold=0, autocommit=True,
            ) as conn:
                for i in range(ROUNDS):
                    if i % 3 == 0:
                        with conn.transaction():
                            row = conn.execute("SELECT tenant, n FROM whoami WHERE n = %s", (n,)).fetchone()
                    else:
                        row = conn.execute("SELECT tenant, n FROM whoami WHERE n = %s", (n,)).fetchone()
                    if row is None or row[0] != tenant:
                        errors.append(f"psycopg {tenant}: read {row!r}")
                    other = conn.execute("SELECT %s::int + 1", (i,)).fetchone()[0]
                    if other != i + 1:
                        errors.append(f"psycopg {tenant}: {other} != {i + 1}")
        except Exception as e:  # noqa: BLE001 - report every failure
            errors.append(f"psycopg {tenant}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(t, n)) for t, n in TENANTS.items() for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


async def check_asyncpg(port: int) -> list:
    import asyncpg

    errors = []

    async def client(tenant: str, n: int) -> None:
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=port, user="app", password="secret", database="app",
                server_settings={"tenant": tenant},
            )
        except Exception as e:  # noqa: BLE001
            errors.append(f"asyncpg {tenant} connect: {type(e).__name__}: {e}")
            return
        try:
            for i in range(ROUNDS):
                if i % 3 == 0:
                    async with conn.transaction():
                        row = await conn.fetchrow("SELECT tenant, n FROM whoami WHERE n = $1", n)
                else:
                    row = await conn.fetchrow("SELECT tenant, n FROM whoami WHERE n = $1", n)
                if row is None or row["tenant"] != tenant:
                    errors.append(f"asyncpg {tenant}: read {row!r}")
                val = await conn.fetchval("SELECT $1::int * 2", i)
                if val != i * 2:
                    errors.append(f"asyncpg {tenant}: {val} != {i * 2}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"asyncpg {tenant}: {type(e).__name__}: {e}")
        finally:
            await conn.close()

    await asyncio.gather(*(client(t, n) for t, n in TENANTS.items() for _ in range(2)))
    return errors


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    failed = False
    errors = check_psycopg(args.port)
    if errors:
        failed = True
        print("psycopg FAILED", *errors[:10], sep="\n")
    else:
        print("psycopg ok")
    errors = asyncio.run(check_asyncpg(args.port))
    if errors:
        failed = True
        print("asyncpg FAILED", *errors[:10], sep="\n")
    else:
        print("asyncpg ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
