#!/usr/bin/env python3
"""What hostile and heavy clients cost pgtenant in memory (issue 17), measured on the release
build as a child process: its RSS is sampled from /proc every 20 ms and each phase reports
its peak growth over the RSS the phase started at.

    python3 benches/memory_hostile.py                 # all phases, 300 MB messages
    python3 benches/memory_hostile.py --size-mb 50    # smaller messages (less PostgreSQL memory)
    python3 benches/memory_hostile.py --phases 1,3    # some phases

Phases (the issue's "Done means"):
  1. 1,000 unauthenticated sockets at once, each claiming a 900 MB SASL message and sending
     1 MB of it: each must get 08P01 or a closed socket (goal: RSS growth < 64 MB), while an
     honest client logs in and runs queries (all must succeed).
  2. One client sending a 300 MB simple Query, one a 300 MB Bind parameter, one a 300 MB
     Parse, one after the other: each must return the right length (goal: < 16 MB each);
     then ten such clients at once (goal: < 64 MB). PostgreSQL needs about 1 GB per 300 MB
     query; the ten run on a pool of 8 connections.
  3. 5,000 sockets that connect and stall (half say nothing, half send a startup packet and
     then nothing) while an honest client logs in 100 times: every login must succeed (goal:
     each < 1 s).

It starts its own PostgreSQL (harness/stack.py), builds nothing unless asked (--build), and
stops everything on exit. Prints one line per measurement and a summary; exit 1 if a goal
is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.stack import (  # noqa: E402
    APP_DB, APP_USER, PROXY_PASSWORD, PROXY_USER, Auth, PgTenant, Postgres, Reaper,
    find_pg_bin, rss_kb,
)
from harness.wire import PROTOCOL_V3, Connection, PgError, scram_verifier  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MB = 1 << 20


def msg(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


def startup_packet(tenant: str) -> bytes:
    body = struct.pack("!i", PROTOCOL_V3)
    for k, v in (("user", PROXY_USER), ("database", APP_DB), ("options", f"-c tenant={tenant}")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


class Sampler:
    """Peak RSS of a process, sampled in a thread."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self.start_kb = rss_kb(pid)
        self.peak = self.start_kb
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_kb(self.pid))
            except (OSError, RuntimeError):
                return
            time.sleep(0.02)

    def stop(self) -> float:
        """Peak growth in MB."""
        self._stop.set()
        self._t.join()
        return (self.peak - self.start_kb) / 1024


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!i", head[1:])
    return head[:1], await reader.readexactly(length - 4)


def sqlstate(body: bytes) -> str:
    for part in body.split(b"\0"):
        if part[:1] == b"C":
            return part[1:].decode()
    return ""


async def until_closed(reader: asyncio.StreamReader, timeout: float) -> list[tuple[bytes, bytes]]:
    got = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                got.append(await read_message(reader))
    except (asyncio.IncompleteReadError, ConnectionError):
        return got


# -- phase 1 ---------------------------------------------------------------------------------

async def huge_auth_message(port: int, chunk: bytes) -> str:
    """Startup, then a SASLInitialResponse header claiming 900 MB and 1 MB of it. Returns
    'ok' (08P01 or closed) or what went wrong."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 30)
    except (OSError, asyncio.TimeoutError) as e:
        return f"connect: {e!r}"
    try:
        writer.write(startup_packet("t1"))
        tag, body = await asyncio.wait_for(read_message(reader), 30)
        if tag != b"R":
            return f"expected an authentication request, got {tag!r}"
        writer.write(b"p" + struct.pack("!i", 900_000_000))
        try:
            writer.write(chunk)
            await writer.drain()
        except ConnectionError:
            pass
        got = await until_closed(reader, 30)
        errors = [sqlstate(b) for t, b in got if t == b"E"]
        return "ok" if errors in ([], ["08P01"]) else f"answered {errors}"
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
        return f"{e!r}"
    finally:
        writer.close()


async def honest_loop(port: int, stop: asyncio.Event, tenant: str = "t2") -> tuple[int, list[str]]:
    """Logs in and runs 5 queries, again and again until `stop` (at least 5 times)."""
    done, errors = 0, []
    while not stop.is_set() or done < 5:
        try:
            conn = await Connection.connect(HOST, port, PROXY_USER, APP_DB, PROXY_PASSWORD,
                                            options=f"-c tenant={tenant}", timeout=30)
            for _ in range(5):
                rows = await conn.query("SELECT tenant FROM whoami")
                if rows != [[tenant]]:
                    errors.append(f"read {rows}")
            await conn.close()
            done += 1
        except (PgError, OSError, asyncio.TimeoutError) as e:
            errors.append(repr(e))
        await asyncio.sleep(0.01)
    return done, errors


async def phase1(proxy: PgTenant, sockets: int) -> list[str]:
    print(f"\n== phase 1: {sockets} unauthenticated sockets, each claiming a 900 MB auth message",
          flush=True)
    chunk = b"z" * MB
    sampler = Sampler(proxy.proc.pid)
    stop = asyncio.Event()
    honest = asyncio.create_task(honest_loop(proxy.port, stop))
    started = time.monotonic()
    results = await asyncio.gather(*(huge_auth_message(proxy.port, chunk) for _ in range(sockets)))
    elapsed = time.monotonic() - started
    stop.set()
    logins, errors = await honest
    growth = sampler.stop()
    bad = [r for r in results if r != "ok"]
    print(f"  {sockets - len(bad)}/{sockets} got 08P01 or a closed socket in {elapsed:.1f} s; "
          f"honest client meanwhile: {logins} logins x 5 queries, {len(errors)} errors", flush=True)
    print(f"  proxy RSS growth (peak): {growth:.1f} MB (goal < 64 MB)", flush=True)
    problems = []
    if bad:
        problems.append(f"phase 1: {len(bad)} sockets not refused as expected, e.g. {bad[:3]}")
    if errors or logins == 0:
        problems.append(f"phase 1: honest client: {logins} logins, errors {errors[:3]}")
    if growth >= 64:
        problems.append(f"phase 1: RSS growth {growth:.1f} MB")
    return problems


# -- phase 2 ---------------------------------------------------------------------------------

async def login_raw(port: int, tenant: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    conn = await Connection.connect(HOST, port, PROXY_USER, APP_DB, PROXY_PASSWORD,
                                    options=f"-c tenant={tenant}", timeout=60)
    return conn.reader, conn.writer


async def send_chunked(writer: asyncio.StreamWriter, parts: list[bytes | memoryview]) -> None:
    for part in parts:
        view = memoryview(part)
        for i in range(0, len(view), 4 * MB):
            writer.write(view[i:i + 4 * MB])
            await writer.drain()


async def big_one(port: int, kind: str, payload: bytes, tenant: str = "t1") -> str:
    """Sends one message of len(payload) bytes of kind `query`, `bind` or `parse` and checks
    the length PostgreSQL returns. Returns 'ok' or the problem."""
    reader, writer = await login_raw(port, tenant)
    n = len(payload)
    try:
        if kind == "query":
            head, tail = b"SELECT length('", b"')\0"
            parts = [b"Q" + struct.pack("!i", 4 + len(head) + n + len(tail)) + head, payload, tail]
        elif kind == "bind":
            parse = msg(b"P", b"\0SELECT length($1::text)\0" + struct.pack("!h", 0))
            bind_head = b"\0\0" + struct.pack("!hhi", 0, 1, n)
            bind_tail = struct.pack("!h", 0)
            bind = b"B" + struct.pack("!i", 4 + len(bind_head) + n + len(bind_tail)) + bind_head
            rest = msg(b"E", b"\0" + struct.pack("!i", 0)) + msg(b"S", b"")
            parts = [parse + bind, payload, bind_tail + rest]
        else:
            head, tail = b"\0SELECT length('", b"')\0" + struct.pack("!h", 0)
            parse = b"P" + struct.pack("!i", 4 + len(head) + n + len(tail)) + head
            rest = (msg(b"B", b"\0\0" + struct.pack("!hhh", 0, 0, 0)) +
                    msg(b"E", b"\0" + struct.pack("!i", 0)) + msg(b"S", b""))
            parts = [parse, payload, tail + rest]
        await send_chunked(writer, parts)
        value, error = None, None
        async with asyncio.timeout(600):
            while True:
                tag, body = await read_message(reader)
                if tag == b"D":
                    (ln,) = struct.unpack("!i", body[2:6])
                    value = body[6:6 + ln].decode()
                elif tag == b"E":
                    error = sqlstate(body)
                elif tag == b"Z":
                    break
        if error or value != str(n):
            return f"{kind}: got {value!r}, error {error}"
        # The session goes on normally afterwards.
        writer.write(msg(b"Q", b"SELECT tenant FROM whoami\0"))
        await writer.drain()
        rows = []
        async with asyncio.timeout(60):
            while True:
                tag, body = await read_message(reader)
                if tag == b"D":
                    rows.append(body[6:].decode())
                if tag == b"Z":
                    break
        return "ok" if rows == [tenant] else f"{kind}: then read {rows}"
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
        return f"{kind}: {e!r}"
    finally:
        writer.close()


async def phase2(proxy: PgTenant, size_mb: int, at_once: int) -> list[str]:
    print(f"\n== phase 2: {size_mb} MB messages after login", flush=True)
    payload = b"x" * (size_mb * MB)
    problems = []
    for kind in ("query", "bind", "parse"):
        sampler = Sampler(proxy.proc.pid)
        started = time.monotonic()
        result = await big_one(proxy.port, kind, payload)
        growth = sampler.stop()
        print(f"  one {size_mb} MB {kind:5s}: {result} in {time.monotonic() - started:.1f} s; "
              f"proxy RSS growth {growth:.1f} MB (goal < 16 MB)", flush=True)
        if result != "ok":
            problems.append(f"phase 2: {result}")
        if growth >= 16:
            problems.append(f"phase 2: {kind} RSS growth {growth:.1f} MB")
    sampler = Sampler(proxy.proc.pid)
    started = time.monotonic()
    kinds = ["query", "bind", "parse"]
    results = await asyncio.gather(*(big_one(proxy.port, kinds[i % 3], payload, f"t{1 + i % 4}")
                                     for i in range(at_once)))
    growth = sampler.stop()
    bad = [r for r in results if r != "ok"]
    print(f"  {at_once} at once (query/bind/parse): {at_once - len(bad)} ok in "
          f"{time.monotonic() - started:.1f} s; proxy RSS growth {growth:.1f} MB (goal < 64 MB)",
          flush=True)
    if bad:
        problems.append(f"phase 2: {len(bad)} of {at_once} at once failed: {bad[:3]}")
    if growth >= 64:
        problems.append(f"phase 2: {at_once} at once RSS growth {growth:.1f} MB")
    return problems


# -- phase 3 ---------------------------------------------------------------------------------

async def stall(port: int, send_startup: bool, hold: asyncio.Event) -> str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 60)
    except (OSError, asyncio.TimeoutError) as e:
        return f"connect: {e!r}"
    try:
        if send_startup:
            writer.write(startup_packet("t1"))
            await writer.drain()
        # Wait for the end of the phase, or for the proxy to drop this login.
        closed = asyncio.create_task(reader.read(65536))
        waiter = asyncio.create_task(hold.wait())
        done, pending = await asyncio.wait({closed, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        return "dropped" if closed in done else "held"
    except (ConnectionError, OSError):
        return "dropped"
    finally:
        writer.close()


async def phase3(proxy: PgTenant, sockets: int, logins: int) -> list[str]:
    print(f"\n== phase 3: {sockets} stalled sockets, an honest client logs in {logins} times",
          flush=True)
    sampler = Sampler(proxy.proc.pid)
    hold = asyncio.Event()
    stalled = []
    for i in range(sockets):
        stalled.append(asyncio.create_task(stall(proxy.port, i % 2 == 1, hold)))
        if i % 250 == 249:
            await asyncio.sleep(0)
    times, errors = [], []
    for i in range(logins):
        started = time.monotonic()
        try:
            conn = await Connection.connect(HOST, proxy.port, PROXY_USER, APP_DB, PROXY_PASSWORD,
                                            options="-c tenant=t3", timeout=30)
            rows = await conn.query("SELECT tenant FROM whoami")
            times.append(time.monotonic() - started)
            if rows != [["t3"]]:
                errors.append(f"login {i} read {rows}")
            await conn.close()
        except (PgError, OSError, asyncio.TimeoutError) as e:
            errors.append(f"login {i}: {e!r}")
    hold.set()
    outcomes = await asyncio.gather(*stalled)
    growth = sampler.stop()
    dropped = sum(1 for o in outcomes if o == "dropped")
    failed = [o for o in outcomes if o not in ("dropped", "held")]
    worst = max(times) if times else float("nan")
    med = statistics.median(times) if times else float("nan")
    print(f"  honest logins: {len(times)}/{logins} ok, median {med * 1000:.1f} ms, max "
          f"{worst * 1000:.1f} ms (goal: all ok, each < 1 s); {len(errors)} errors", flush=True)
    print(f"  stalled sockets: {dropped} dropped by the proxy (max_pending_logins), "
          f"{sockets - dropped - len(failed)} still open at the end, {len(failed)} could not connect",
          flush=True)
    print(f"  proxy RSS growth (peak): {growth:.1f} MB", flush=True)
    problems = []
    if errors:
        problems.append(f"phase 3: {errors[:3]}")
    if times and worst >= 1.0:
        problems.append(f"phase 3: slowest login {worst:.2f} s")
    return problems


# -- setup -----------------------------------------------------------------------------------

def start(reaper: Reaper, exe: str) -> PgTenant:
    bin_dir = find_pg_bin()
    pg = Postgres(reaper, bin_dir, max_connections=100)
    pg.start()
    auth = Auth.make("verifier", scram_verifier(PROXY_PASSWORD))
    pg.psql(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{auth.role_password}'; "
            f"CREATE DATABASE {APP_DB} OWNER {APP_USER};")
    pg.psql("".join(f"CREATE SCHEMA t{i}; CREATE TABLE t{i}.whoami AS SELECT 't{i}'::text AS tenant;"
                    for i in range(1, 5)), user=APP_USER, db=APP_DB)
    proxy = PgTenant(reaper, exe, pg, auth, tenants=4)
    proxy.start()
    return proxy


async def warm_up(proxy: PgTenant) -> None:
    for t in ("t1", "t2", "t3", "t4"):
        conn = await Connection.connect(HOST, proxy.port, PROXY_USER, APP_DB, PROXY_PASSWORD,
                                        options=f"-c tenant={t}")
        await conn.query("SELECT tenant FROM whoami")
        await conn.close()


async def run(args, proxy: PgTenant) -> list[str]:
    await warm_up(proxy)
    print(f"pgtenant pid {proxy.proc.pid}, RSS after warm-up {rss_kb(proxy.proc.pid) / 1024:.1f} MB",
          flush=True)
    phases = {int(p) for p in args.phases.split(",")}
    problems = []
    if 1 in phases:
        problems += await phase1(proxy, args.auth_sockets)
    if 2 in phases:
        problems += await phase2(proxy, args.size_mb, args.at_once)
    if 3 in phases:
        problems += await phase3(proxy, args.stalled, args.logins)
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phases", default="1,2,3")
    ap.add_argument("--size-mb", type=int, default=300, help="phase 2 message size (default 300)")
    ap.add_argument("--at-once", type=int, default=10, help="phase 2 clients at once (default 10)")
    ap.add_argument("--auth-sockets", type=int, default=1000)
    ap.add_argument("--stalled", type=int, default=5000)
    ap.add_argument("--logins", type=int, default=100)
    ap.add_argument("--pgtenant", default=str(REPO / "target/release/pgtenant"))
    ap.add_argument("--build", action="store_true", help="cargo build --release first")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.build:
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    if not os.path.exists(args.pgtenant):
        sys.exit(f"{args.pgtenant} not found: build it (cargo build --release) or pass --build")
    reaper = Reaper()
    try:
        proxy = start(reaper, args.pgtenant)
        problems = asyncio.run(run(args, proxy))
    finally:
        reaper.cleanup()
    print("\nsummary: " + ("all goals met" if not problems else "MISSED:\n  " + "\n  ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
