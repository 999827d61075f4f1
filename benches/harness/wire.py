"""A minimal PostgreSQL wire-protocol client for the benchmark (asyncio, stdlib only).

It does just what the harness needs and no more: the startup packet (with `options`),
SCRAM-SHA-256 / md5 / cleartext login, simple-protocol queries returning text columns, and
Terminate. It is used for the wrong-tenant check (scenarios 2 and 3) and for opening
thousands of idle logged-in clients (scenario 7), where pgbench cannot help.

It also builds SCRAM-SHA-256 verifiers (`scram_verifier`), so that pgtenant and PgBouncer
can be given the *same stored secret* for the client password.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import struct

PROTOCOL_V3 = 196608

# pbkdf2 with 4096 iterations costs about a millisecond; a verifier's salt is fixed, so the
# client caches the salted password per (password, salt, iterations).
_SALTED: dict[tuple[str, bytes, int], bytes] = {}


class PgError(Exception):
    """An ErrorResponse from the server (or a protocol problem on our side)."""

    def __init__(self, fields: dict[str, str]):
        self.fields = fields
        self.sqlstate = fields.get("C", "")
        super().__init__(f"{fields.get('S', 'ERROR')} {self.sqlstate}: {fields.get('M', '')}")


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    key = (password, salt, iterations)
    if key not in _SALTED:
        _SALTED[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return _SALTED[key]


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def scram_verifier(password: str, iterations: int = 4096, salt: bytes | None = None) -> str:
    """`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`, as PostgreSQL stores it."""
    salt = salt or os.urandom(16)
    salted = _salted_password(password, salt, iterations)
    stored = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    server = _hmac(salted, b"Server Key")
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


class _Scram:
    """Client side of SCRAM-SHA-256 (RFC 5802 / 7677), without channel binding."""

    def __init__(self, password: str):
        self.password = password
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        # PostgreSQL ignores the SCRAM user name; libpq sends it empty.
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature = b""

    def initial(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
        nonce, salt, iters = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.nonce):
            raise PgError({"M": "SCRAM: server nonce does not extend ours"})
        salted = _salted_password(self.password, salt, iters)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        attrs = dict(kv.split("=", 1) for kv in server_final.decode().split(","))
        if base64.b64decode(attrs.get("v", "")) != self.server_signature:
            raise PgError({"M": "SCRAM: wrong server signature"})


def _msg(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


def _error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


class Connection:
    """One logged-in connection. Not safe for concurrent use by several tasks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.params: dict[str, str] = {}

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        user: str,
        database: str,
        password: str,
        options: str | None = None,
        timeout: float = 30.0,
        extra: dict[str, str] | None = None,
    ) -> "Connection":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        conn = cls(reader, writer)
        try:
            await asyncio.wait_for(conn._startup(user, database, password, options, extra), timeout)
        except BaseException:
            writer.close()
            raise
        return conn

    async def _read(self) -> tuple[bytes, bytes]:
        head = await self.reader.readexactly(5)
        (length,) = struct.unpack("!i", head[1:])
        return head[:1], await self.reader.readexactly(length - 4)

    async def _startup(self, user: str, database: str, password: str, options: str | None,
                       extra: dict[str, str] | None = None):
        params = {"user": user, "database": database}
        if options:
            params["options"] = options
        params.update(extra or {})
        body = struct.pack("!i", PROTOCOL_V3)
        for k, v in params.items():
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        self.writer.write(struct.pack("!i", len(body) + 4) + body)
        scram = None
        while True:
            tag, body = await self._read()
            if tag == b"E":
                raise PgError(_error_fields(body))
            if tag == b"Z":
                return
            if tag == b"S":
                name, value, _ = body.split(b"\0", 2)
                self.params[name.decode()] = value.decode()
                continue
            if tag != b"R":
                continue  # BackendKeyData, NoticeResponse
            (code,) = struct.unpack("!i", body[:4])
            if code == 0:
                continue
            if code == 3:
                self.writer.write(_msg(b"p", password.encode() + b"\0"))
            elif code == 5:
                inner = hashlib.md5((password + user).encode()).hexdigest().encode()
                outer = hashlib.md5(inner + body[4:8]).hexdigest()
                self.writer.write(_msg(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == 10:
                if b"SCRAM-SHA-256\0" not in body[4:]:
                    raise PgError({"M": f"no supported SASL mechanism in {body[4:]!r}"})
                scram = _Scram(password)
                first = scram.initial()
                self.writer.write(
                    _msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
                )
            elif code == 11 and scram:
                self.writer.write(_msg(b"p", scram.final(body[4:])))
            elif code == 12 and scram:
                scram.verify(body[4:])
            else:
                raise PgError({"M": f"unsupported authentication request {code}"})
            await self.writer.drain()

    async def query(self, sql: str, timeout: float = 30.0) -> list[list[str | None]]:
        """Runs one simple-protocol query; returns the rows of its last result as text."""
        self.writer.write(_msg(b"Q", sql.encode() + b"\0"))
        await self.writer.drain()
        return await asyncio.wait_for(self._results(), timeout)

    async def _results(self) -> list[list[str | None]]:
        rows: list[list[str | None]] = []
        error = None
        while True:
            tag, body = await self._read()
            if tag == b"T":
                rows = []
            elif tag == b"D":
                rows.append(_data_row(body))
            elif tag == b"E":
                error = PgError(_error_fields(body))
            elif tag == b"Z":
                if error:
                    raise error
                return rows

    async def close(self) -> None:
        try:
            self.writer.write(_msg(b"X", b""))
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (OSError, asyncio.TimeoutError):
            pass


def _data_row(body: bytes) -> list[str | None]:
    (ncols,) = struct.unpack("!h", body[:2])
    pos, row = 2, []
    for _ in range(ncols):
        (n,) = struct.unpack("!i", body[pos : pos + 4])
        pos += 4
        if n < 0:
            row.append(None)
        else:
            row.append(body[pos : pos + n].decode(errors="replace"))
            pos += n
    return row
