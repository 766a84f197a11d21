"""WebSocket benchmarks: idle sockets per process, one-to-one latency, room fan-out.

Usage (from the project root, with the venv):

    # the benchmark starts `socialhub serve` itself (rate limits off); an external
    # PostgreSQL is faster to set up than the embedded one: a throw-away database is
    # created on it for the run and dropped after
    .venv/bin/python -m bench.ws_bench idle   --database-url postgresql://root@127.0.0.1:5432/test
    .venv/bin/python -m bench.ws_bench chat   --database-url postgresql://root@127.0.0.1:5432/test
    .venv/bin/python -m bench.ws_bench chat   --database-url ... --redis   # A on server 1, B on server 2
    .venv/bin/python -m bench.ws_bench fanout --database-url ... [--members 1000]
    .venv/bin/python -m bench.ws_bench fanout --database-url ... --profile /tmp/prof   # py-spy the server

    # or a running server: its own database (users and sessions are inserted there) and
    # its JWT secret (tokens are signed here); give --url twice for --redis
    .venv/bin/python -m bench.ws_bench chat --url http://127.0.0.1:8000 \
        --database-url postgresql://.../socialhub --jwt-secret "$SECRET" [--server-pid PID]

Scenarios:

- `idle`: `--sockets` (default 10,000) sockets to one process, each authenticated, then
  each answers one `ping`; the server's RSS before, after (at the end of `--hold`) and
  per socket, and how long connecting took.
- `chat`: A sends `--messages` (default 2,000) `send_message` at `--interval` (10 ms)
  in a direct room; the figure is send -> B's `new_message`. With `--redis`, A is on
  server 1 and B on server 2 (two processes on one PostgreSQL and one Redis).
- `fanout`: a room of `--members` (default 1,000) receivers plus the sender, every one
  with a socket joined; `--messages` (100) sends at `--interval` (250 ms). Per message:
  send -> the last member's `new_message`, and send -> the median member's. With
  `--redis` the receivers alternate between the two servers.

Accounts are not signed up (10,000 argon2id hashes would take longer than the run):
users and sessions rows are inserted with SQL, and access tokens are signed with the
server's JWT secret by `socialhub.services.tokens.TokenCodec`, exactly as the server
issues them. Rooms are made through `POST /chat/rooms`.

Clients: separate processes (`--procs`, spawn start method, uvloop), each speaking
RFC 6455 directly over asyncio protocols so that a frame costs the client microseconds
and its arrival is stamped in `data_received`, before any parsing. Times are
`time.monotonic()` (CLOCK_MONOTONIC, one clock for every process of the machine), so a
send stamped in one process and a receipt stamped in another are comparable.
`--deflate` offers `permessage-deflate` as browsers and the `websockets` client do;
the default is not to (the server then keeps no zlib state per socket). A client
process using more than 90% of a core is reported as client-bound. The CPU of every
process during the measured window is added up by group (server, clients, PostgreSQL,
Redis, others) because on this 2-core machine they all share the same cores.

File descriptors: the soft RLIMIT_NOFILE of this process and of every client process is
raised to the hard limit; a server spawned by the benchmark inherits the raised limit.
A server started by hand needs `ulimit -n` raised itself (its limit is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing
import os
import platform
import resource
import secrets
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.server import MIB, ServerStartError, SpawnedServer
from bench.stats import LatencySummary, merge_counts, percentile, split_evenly, summarize
from socialhub.services.tokens import TokenCodec

SCENARIOS = ("idle", "chat", "fanout")
# Tokens signed here outlive any run (the server checks the signature and exp only).
TOKEN_TTL_S = 4 * 3600.0
# Handshakes in flight per client process while connecting.
CONNECT_CONCURRENCY = 64
SETUP_TIMEOUT_S = 60.0
# After the last send, how long stragglers may take before they count as lost.
DRAIN_S = 3.0
CLIENT_BOUND_CPU = 0.9
MACHINE_BUSY = 0.9
BODY = "The quick brown fox jumps over the lazy dog; a chat line of realistic length. "  # ~80 chars
# A real argon2id hash of a password nobody knows (login is never exercised here).
PASSWORD_HASH = "$argon2id$v=19$m=1024,t=1,p=1$sYpa4dqD5G7Y4oJUi2egNw$JmCZasTcYTUY608mLgnRjqQ3vo84ltEY3HcgHZh6lC8"


# -- the client side of RFC 6455, small and cheap ------------------------------------------


class SocketClosed(Exception):
    pass


class _Frame(msgspec.Struct):
    type: str
    ref: Any = None
    message: Any = None
    code: Any = None


_decode = msgspec.json.Decoder(_Frame).decode
_encode = msgspec.json.Encoder().encode
FrameHandler = Callable[["WsClient", bytes, float], None]


class WsClient(asyncio.Protocol):
    """One client socket. Frames from the server go to `handler(client, payload, t)`,
    `t` being the monotonic time their bytes arrived."""

    def __init__(self, host: str, port: int, deflate: bool) -> None:
        self.host, self.port, self.deflate = host, port, deflate
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.handler: FrameHandler = lambda _c, payload, _t: self.inbox.put_nowait(payload)
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self._buf = bytearray()
        self._key = base64.b64encode(os.urandom(16))
        self._inflate: Any = None
        self._reset_inflate = False
        self._parts: list[bytes] = []
        self._compressed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport = self.transport
        ext = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if self.deflate else b""
        transport.write(
            b"GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
            % (self.host.encode(), self.port, self._key, ext)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = 1006
        if not self.upgraded.done():
            self.upgraded.set_exception(SocketClosed("connection lost during the handshake"))
        self.inbox.put_nowait(b"")  # wakes a setup step waiting for a frame

    def data_received(self, data: bytes) -> None:
        t = time.monotonic()
        self._buf += data
        if not self.upgraded.done():
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[: end + 4]
            if not head.startswith("HTTP/1.1 101"):
                self.upgraded.set_exception(SocketClosed(head.split("\r\n", 1)[0]))
                return
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                    self._inflate = zlib.decompressobj(wbits=-15)
                    self._reset_inflate = "server_no_context_takeover" in value
            self.upgraded.set_result(None)
        self._frames(t)

    def _frames(self, t: float) -> None:
        buf = self._buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            length, offset = b1 & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, offset = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, offset = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < offset + length:
                return
            payload = bytes(buf[offset : offset + length])
            del buf[: offset + length]
            opcode = b0 & 0x0F
            if opcode in (1, 2, 0):
                if opcode:
                    self._compressed = bool(b0 & 0x40)
                self._parts.append(payload)
                if b0 & 0x80:
                    message = b"".join(self._parts)
                    self._parts.clear()
                    if self._compressed and self._inflate is not None:
                        message = self._inflate.decompress(message + b"\x00\x00\xff\xff")
                        if self._reset_inflate:
                            self._inflate = zlib.decompressobj(wbits=-15)
                    self.handler(self, message, t)
            elif opcode == 9:
                self._write(10, payload)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.transport is not None:
                    self._write(8, payload[:2])
                    self.transport.close()

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        # XOR of the whole payload with the repeated mask, as one big-integer operation.
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        self.transport.write(head + mask + masked)

    def send(self, frame: dict[str, Any]) -> None:
        self._write(1, _encode(frame))

    async def expect(self, frame_type: str) -> _Frame:
        """The next frame of that type (during setup); an `error` or a close raises."""
        while True:
            payload = await self.inbox.get()
            if not payload:
                raise SocketClosed(f"closed with {self.close_code} while waiting for {frame_type}")
            frame = _decode(payload)
            if frame.type == frame_type:
                return frame
            if frame.type == "error":
                raise SocketClosed(f"error {frame.code} while waiting for {frame_type}")

    async def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._write(8, (1000).to_bytes(2, "big"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while self.close_code is None:
                    await asyncio.sleep(0.05)
        self.transport.close()


async def open_socket(host: str, port: int, token: str, deflate: bool, room_id: str | None) -> WsClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: WsClient(host, port, deflate), host, port)
    await client.upgraded
    client.send({"type": "authenticate", "token": token})
    await client.expect("authenticated")
    if room_id is not None:
        client.send({"type": "join_room", "room_id": room_id})
        await client.expect("joined")
    return client


# -- client processes ---------------------------------------------------------------------


class WorkerJob(msgspec.Struct, frozen=True):
    role: str  # "idle" | "receiver" | "sender"
    host: str
    port: int
    tokens: list[str]
    deflate: bool
    room_id: str | None = None
    tag: str = ""
    messages: int = 0
    interval_s: float = 0.0


class Ready(msgspec.Struct, frozen=True):
    connected: int
    errors: dict[str, int]
    connect_s: list[float]  # connect -> authenticated (-> joined) per socket
    started_at: float
    finished_at: float
    cpu_share: float


class Done(msgspec.Struct, frozen=True):
    arrivals: dict[str, list[float]]  # client_msg_id -> receipt times (receivers)
    sends: dict[str, float]  # client_msg_id -> send time (sender)
    acks: dict[str, float]
    pongs: int
    closed: dict[str, int]  # sockets closed by the server, by close code
    cpu_share: float  # CPU over wall time between "go" and "stop"
    max_send_lag_s: float


def _raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def worker_main(job: WorkerJob, conn: Connection) -> None:
    _raise_nofile()
    try:
        import uvloop

        uvloop.run(_worker(job, conn))
    except ImportError:
        asyncio.run(_worker(job, conn))


async def _worker(job: WorkerJob, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    recv: Callable[[], Any] = conn.recv
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    clients: list[WsClient] = []
    errors: dict[str, int] = {}
    connect_s: list[float] = []
    join = job.room_id if job.role in ("receiver", "sender") else None

    async def one(token: str) -> None:
        async with sem:
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(SETUP_TIMEOUT_S):
                    client = await open_socket(job.host, job.port, token, job.deflate, join)
            except Exception as exc:  # counted by kind, reported to the parent
                key = f"{type(exc).__name__}: {exc}"[:120]
                errors[key] = errors.get(key, 0) + 1
                return
            connect_s.append(time.monotonic() - t0)
            clients.append(client)

    cpu0, started = time.process_time(), time.monotonic()
    await asyncio.gather(*(one(token) for token in job.tokens))
    finished = time.monotonic()
    share = (time.process_time() - cpu0) / max(finished - started, 1e-9)
    conn.send(Ready(len(clients), errors, connect_s, started, finished, share))

    arrivals: dict[str, list[float]] = {}
    sends: dict[str, float] = {}
    acks: dict[str, float] = {}
    pongs = 0
    prefix = job.tag + "-"

    def on_frame(_client: WsClient, payload: bytes, t: float) -> None:
        nonlocal pongs
        frame = _decode(payload)
        kind = frame.type
        if kind == "new_message":
            cmid = frame.message["client_msg_id"]
            if cmid.startswith(prefix):
                arrivals.setdefault(cmid, []).append(t)
        elif kind == "ack":
            if isinstance(frame.ref, str):
                acks[frame.ref] = t
        elif kind == "pong":
            pongs += 1

    for client in clients:
        client.handler = on_frame
    # Commands: "go" (start the window; a sender sends), "ping" (idle check), "stop".
    cpu0, t0, max_lag = time.process_time(), time.monotonic(), 0.0
    while True:
        command = await loop.run_in_executor(None, recv)
        if command == "go":
            cpu0, t0 = time.process_time(), time.monotonic()
            if job.role == "sender" and clients:
                max_lag = await _send_paced(clients[0], job, sends)
                await _wait_for(lambda: len(acks) >= len(sends), DRAIN_S)
                conn.send("sent")
        elif command == "ping":
            for client in clients:
                client.send({"type": "ping"})
            await _wait_for(lambda: pongs >= len(clients), SETUP_TIMEOUT_S)
            conn.send(pongs)
        elif command == "stop":
            break
    cpu_share = (time.process_time() - cpu0) / max(time.monotonic() - t0, 1e-9)
    closed: dict[str, int] = {}
    for client in clients:
        if client.close_code is not None:
            closed[str(client.close_code)] = closed.get(str(client.close_code), 0) + 1
    conn.send(Done(arrivals, sends, acks, pongs, closed, cpu_share, max_lag))
    await asyncio.gather(*(client.close() for client in clients))


async def _send_paced(client: WsClient, job: WorkerJob, sends: dict[str, float]) -> float:
    """`job.messages` sends, one every `job.interval_s` (open loop: never waits for acks)."""
    start, max_lag = time.monotonic() + 0.05, 0.0
    for i in range(job.messages):
        target = start + i * job.interval_s
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        cmid = f"{job.tag}-{i}"
        frame = {"type": "send_message", "room_id": job.room_id, "body": BODY, "client_msg_id": cmid, "ref": cmid}
        t = time.monotonic()
        client.send(frame)
        sends[cmid] = t
        max_lag = max(max_lag, t - target)
    return max_lag


async def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


class Worker:
    """A client process and the parent's end of its pipe."""

    def __init__(self, job: WorkerJob) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(job, child), daemon=True)
        self.proc.start()
        child.close()

    def expect(self, timeout: float = SETUP_TIMEOUT_S * 3) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"client process {self.proc.pid} did not answer in {timeout:.0f} s")
        try:
            return self.conn.recv()
        except EOFError:
            raise RuntimeError(f"client process {self.proc.pid} died (exit {self.proc.exitcode})") from None

    def stop(self) -> None:
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


# -- servers, database, accounts ------------------------------------------------------------


class BenchServer(SpawnedServer):
    """`socialhub serve` with the benchmark's settings (database, Redis, JWT secret),
    ready when `/readyz` answers (the database, and Redis where configured)."""

    def __init__(self, settings: dict[str, str]) -> None:
        super().__init__(env=settings, ready_path="/readyz")

    def embedded_url(self) -> str | None:
        """A URL of the embedded cluster this server started, from its pid file."""
        try:
            lines = (self.data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        return f"postgresql://postgres@/postgres?host={lines[4].strip()}&port={lines[3].strip()}"


class Target(msgspec.Struct, frozen=True):
    url: str
    pid: int | None


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _drop_redis_keys(url: str, prefix: str) -> int:
    """Delete what the spawned servers left under their key prefix (presence flags
    outlive a stopped instance by design; a benchmark should not leave them)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await client.delete(*batch)
                batch.clear()
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


class Account(msgspec.Struct, frozen=True):
    user_id: str
    token: str


async def seed_accounts(db_url: str, secret: str, count: int, tag: str) -> list[Account]:
    """`count` users, each with a live session and an access token, in two statements."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            """
            INSERT INTO users (username, email, name, password_hash)
            SELECT 'wb' || $1 || '_' || i, 'wb' || $1 || '_' || i || '@bench.invalid', 'Bench ' || i, $2
            FROM generate_series(1, $3::int) AS i
            RETURNING id
            """,
            tag,
            PASSWORD_HASH,
            count,
        )
        sessions = await conn.fetch(
            """
            INSERT INTO sessions (user_id, expires_at, user_agent)
            SELECT u, now() + interval '1 day', 'bench.ws_bench' FROM unnest($1::bigint[]) AS u
            RETURNING id, user_id
            """,
            [r["id"] for r in rows],
        )
    finally:
        await conn.close()
    codec = TokenCodec(secret, TOKEN_TTL_S)
    return [Account(str(r["user_id"]), codec.issue(r["user_id"], r["id"])) for r in sessions]


def create_room(base_url: str, owner: Account, members: Sequence[Account], name: str | None) -> str:
    body: dict[str, Any] = {"members": [m.user_id for m in members]}
    if name:
        body["name"] = name
    r = httpx.post(f"{base_url}/chat/rooms", json=body, headers={"Authorization": f"Bearer {owner.token}"}, timeout=60)
    if r.status_code not in (200, 201):
        raise RuntimeError(f"POST /chat/rooms answered {r.status_code}: {r.text[:300]}")
    room_id: str = r.json()["id"]
    return room_id


def _listener_pid(url: str) -> int | None:
    port = urlsplit(url).port
    with contextlib.suppress(psutil.Error):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return int(c.pid)
    return None


def _server_pid(url: str, given: list[int] | None, index: int) -> int | None:
    """The pid of the process listening on the URL's port; a --server-pid that is not it
    (a shell or wrapper around the server) would make every memory figure wrong."""
    pid = given[index] if given and index < len(given) else None
    found = _listener_pid(url)
    if pid is not None and found is not None and found != pid:
        print(f"--server-pid {pid} does not listen on {url}; measuring pid {found}, which does", file=sys.stderr)
        return found
    if pid is None and found is None:
        print(f"cannot find the process listening on {url}: no server CPU or memory figures", file=sys.stderr)
    return pid if pid is not None else found


# -- measuring the machine -------------------------------------------------------------------

CpuTable = dict[tuple[int, float], tuple[str, float]]


def cpu_table() -> CpuTable:
    """(pid, create_time) -> (name, user+system CPU seconds) for every process."""
    out: CpuTable = {}
    for proc in psutil.process_iter(["name", "cpu_times", "create_time"]):
        info = proc.info
        times = info.get("cpu_times")
        if times is not None and info.get("create_time") is not None:
            out[(proc.pid, info["create_time"])] = (info.get("name") or "", times.user + times.system)
    return out


class CpuWindow(msgspec.Struct, frozen=True):
    """Cores used on average over one window, by group."""

    wall_s: float
    machine_busy: float  # share of all cores busy (1.0 = every core), steal included
    steal: float  # share of all cores taken by the hypervisor for other guests
    cores: dict[str, float]  # server, clients, postgres, redis, py-spy, others, unattributed


def cpu_window(
    before: CpuTable,
    after: CpuTable,
    wall: float,
    busy: float,
    steal: float,
    servers: set[int],
    clients: set[int],
) -> CpuWindow:
    cores: dict[str, float] = {"server": 0.0, "clients": 0.0, "postgres": 0.0, "redis": 0.0, "py-spy": 0.0}
    others = 0.0
    me = os.getpid()
    for key, (name, cpu) in after.items():
        used = cpu - before.get(key, (name, 0.0))[1]
        pid = key[0]
        if pid in servers:
            cores["server"] += used
        elif pid in clients or pid == me:
            cores["clients"] += used
        elif name.startswith("postgres"):
            cores["postgres"] += used
        elif name.startswith("redis"):
            cores["redis"] += used
        elif name.startswith("py-spy"):
            cores["py-spy"] += used
        else:
            others += used
    cores["others"] = others
    # Busy time no process accounts for: processes that started and ended inside the
    # window (another engineer's test run), interrupts, steal.
    cores["unattributed"] = max(0.0, busy * (os.cpu_count() or 1) * wall - sum(cores.values()))
    return CpuWindow(wall, busy, steal, {k: round(v / max(wall, 1e-9), 3) for k, v in cores.items()})


class Probe:
    """Wall time, per-process CPU and machine busy share over one window."""

    def __init__(self, servers: list[Target], clients: list[Worker]) -> None:
        self.servers = {t.pid for t in servers if t.pid}
        self.clients = {w.proc.pid for w in clients if w.proc.pid}

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.table0 = cpu_table()
        self.machine0 = psutil.cpu_times()

    def stop(self) -> CpuWindow:
        wall = time.monotonic() - self.t0
        m1 = psutil.cpu_times()
        total = sum(m1) - sum(self.machine0)
        idle = (m1.idle + getattr(m1, "iowait", 0.0)) - (self.machine0.idle + getattr(self.machine0, "iowait", 0.0))
        busy = 1.0 - idle / total if total > 0 else 0.0
        steal = (getattr(m1, "steal", 0.0) - getattr(self.machine0, "steal", 0.0)) / total if total > 0 else 0.0
        return cpu_window(self.table0, cpu_table(), wall, busy, steal, self.servers, self.clients)


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return float(psutil.Process(pid).memory_info().rss) / MIB
    except psutil.Error:
        return None


class Profiler:
    """py-spy on each server during the measured window (raw collapsed stacks)."""

    def __init__(self, out_dir: str | None, servers: list[Target]) -> None:
        self.out_dir = Path(out_dir) if out_dir else None
        self.servers = servers
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, seconds: float) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).with_name("py-spy")
        for i, target in enumerate(self.servers, 1):
            if target.pid is None:
                continue
            out = self.out_dir / f"server{i}.txt"
            cmd = [str(spy), "record", "--pid", str(target.pid), "--format", "raw", "--rate", "250",
                   "--nonblocking", "--duration", str(int(seconds) + 5), "-o", str(out)]  # fmt: skip
            self.procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out))

    def stop(self) -> list[str]:
        lines: list[str] = []
        for proc, out in self.procs:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            lines += summarize_profile(out)
        return lines


def summarize_profile(path: Path, top: int = 12) -> list[str]:
    """From py-spy's raw format: the lines where CPU was spent (self) and the functions
    that spent it (inclusive), as shares of the on-CPU samples. Time in C code (a
    syscall, uvloop, asyncpg's parser) is charged to the Python line that called it."""
    try:
        text = path.read_text()
    except OSError:
        return [f"no profile at {path}"]
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        leaf = frames[-1]
        own[f"{leaf[0]} ({leaf[1]}:{leaf[2]})"] = own.get(f"{leaf[0]} ({leaf[1]}:{leaf[2]})", 0) + n
        for func in {f"{f[0]} ({f[1]})" for f in frames}:
            incl[func] = incl.get(func, 0) + n
    if not total:
        return [f"{path}: no samples"]
    out = [f"py-spy {path}: {total} samples on CPU", "  self   line"]
    out += [f"  {n / total:5.1%}  {f}" for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    out += ["  incl   function"]
    out += [f"  {n / total:5.1%}  {f}" for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[: top * 2]]
    return out


def _frame_name(frame: str) -> tuple[str, str, str]:
    """("Frame.write", "websockets/legacy/framing.py", "146") from py-spy's frame text."""
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file, _, line = where.rpartition(":")
    if not file:
        file, line = where, ""
    # Keep the path from the package down (site-packages/... and /work/... are noise).
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return func, file, line


# -- scenarios --------------------------------------------------------------------------------


class Report(msgspec.Struct):
    scenario: str
    machine: str
    command: str
    servers: int
    deflate: bool
    figures: dict[str, Any]
    latency: dict[str, LatencySummary]
    cpu: CpuWindow | None
    client_cpu_share: list[float]
    notes: list[str]
    goals: dict[str, str]
    profile: list[str]
    series: dict[str, list[float | None]] = {}  # per measured message, in send order (ms)
    window_start: float = 0.0  # time.monotonic() when the measured window began (to match server logs)


def _hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _check_ready(workers: list[Worker], expected: int) -> tuple[list[Ready], dict[str, int]]:
    readies: list[Ready] = [w.expect() for w in workers]
    errors = merge_counts(r.errors for r in readies)
    connected = sum(r.connected for r in readies)
    if connected < expected:
        print(f"only {connected} of {expected} sockets are ready: {errors}", file=sys.stderr)
    return readies, errors


def _finish(workers: list[Worker]) -> list[Done]:
    for w in workers:
        w.conn.send("stop")
    dones: list[Done] = [w.expect() for w in workers]
    for w in workers:
        w.stop()
    return dones


def run_idle(args: argparse.Namespace, targets: list[Target], accounts: list[Account]) -> Report:
    host, port = _hostport(targets[0].url)
    pid = targets[0].pid
    shares = split_evenly(len(accounts), args.procs)
    jobs, start = [], 0
    for n in shares:
        tokens = [a.token for a in accounts[start : start + n]]
        jobs.append(WorkerJob("idle", host, port, tokens, args.deflate))
        start += n
    time.sleep(1.0)
    rss_before = rss_mib(pid)
    fds_before = _fds(pid)
    probe = Probe(targets, [])
    probe.start()  # before the client processes start: they connect as soon as they run
    workers = [Worker(job) for job in jobs]
    probe.clients = {w.proc.pid for w in workers if w.proc.pid}
    readies, errors = _check_ready(workers, len(accounts))
    cpu = probe.stop()
    connected = sum(r.connected for r in readies)
    connect_wall = max(r.finished_at for r in readies) - min(r.started_at for r in readies)
    for w in workers:
        w.conn.send("ping")
    pongs = sum(int(w.expect()) for w in workers)
    peak = 0.0
    for _ in range(max(1, int(args.hold))):
        time.sleep(1.0)
        peak = max(peak, rss_mib(pid) or 0.0)
    rss_after = rss_mib(pid)
    fds_after = _fds(pid)
    dones = _finish(workers)
    time.sleep(3.0)
    rss_closed = rss_mib(pid)
    figures: dict[str, Any] = {
        "sockets_requested": len(accounts),
        "sockets_authenticated": connected,
        "sockets_answering_ping": pongs,
        "connect_wall_s": round(connect_wall, 2),
        "connects_per_s": round(connected / connect_wall, 1) if connect_wall else None,
        "server_rss_before_mib": _r(rss_before),
        "server_rss_after_mib": _r(rss_after),
        "server_rss_peak_mib": _r(peak),
        "server_rss_after_close_mib": _r(rss_closed),
        "rss_per_socket_kib": round((rss_after - rss_before) * 1024 / connected, 1)
        if rss_after and rss_before and connected
        else None,
        "server_fds_before_after": [fds_before, fds_after],
        "server_nofile_limit": _nofile(pid),
        "closed_by_server": merge_counts(d.closed for d in dones),
        "errors": errors,
    }
    latency = {}
    summary = summarize(s for r in readies for s in r.connect_s)
    if summary is not None:
        latency["connect+authenticate"] = summary
    goals = {}
    if rss_after is not None and len(accounts) >= 10_000:
        ok = rss_after < 1024 and connected >= 10_000
        goals["10,000 sockets < 1 GiB RSS"] = f"{'met' if ok else 'MISSED'}: {connected} sockets, {rss_after:.0f} MiB"
    return Report("idle", "", "", len(targets), args.deflate, figures, latency, cpu,
                  [r.cpu_share for r in readies], [], goals, [])  # fmt: skip


def run_messages(args: argparse.Namespace, targets: list[Target], accounts: list[Account], fanout: bool) -> Report:
    tag = "m" + secrets.token_hex(3)
    sender, receivers = accounts[0], accounts[1:]
    room_id = create_room(targets[0].url, sender, receivers, f"bench {tag}" if fanout else None)
    # Receivers alternate over the servers (chat with --redis: B is on server 2).
    by_server: list[list[Account]] = [[] for _ in targets]
    for i, acc in enumerate(receivers):
        by_server[(i + (1 if len(targets) > 1 else 0)) % len(targets)].append(acc)
    jobs: list[WorkerJob] = []
    procs_per_server = max(1, args.procs // len(targets)) if fanout else 1
    for target, accs in zip(targets, by_server, strict=True):
        host, port = _hostport(target.url)
        start = 0
        for n in split_evenly(len(accs), min(procs_per_server, max(1, len(accs)))) if accs else []:
            tokens = [a.token for a in accs[start : start + n]]
            jobs.append(WorkerJob("receiver", host, port, tokens, args.deflate, room_id, tag))
            start += n
    host, port = _hostport(targets[0].url)
    sender_job = WorkerJob(
        "sender", host, port, [sender.token], args.deflate, room_id, tag, args.messages, args.interval
    )
    workers = [Worker(job) for job in jobs]
    _, errors = _check_ready(workers, len(receivers))
    sender_worker = Worker(sender_job)
    s_ready, s_errors = _check_ready([sender_worker], 1)
    if not s_ready[0].connected:
        raise RuntimeError(f"the sender could not connect: {s_errors}")
    everyone = [*workers, sender_worker]
    time.sleep(1.0)
    window = args.messages * args.interval + DRAIN_S
    probe = Probe(targets, everyone)
    profiler = Profiler(args.profile, targets)
    rss_before = [rss_mib(t.pid) for t in targets]
    profiler.start(window)
    probe.start()
    window_start = time.monotonic()
    for w in everyone:
        w.conn.send("go")
    if sender_worker.expect(window + 60) != "sent":
        raise RuntimeError("the sender did not finish")
    time.sleep(DRAIN_S if fanout else 0.5)
    cpu = probe.stop()
    profile = profiler.stop()
    rss_after = [rss_mib(t.pid) for t in targets]
    dones = _finish(everyone)
    sender_done = dones[-1]
    sends, acks = sender_done.sends, sender_done.acks
    arrivals: dict[str, list[float]] = {}
    for d in dones[:-1]:
        for cmid, ts in d.arrivals.items():
            arrivals.setdefault(cmid, []).extend(ts)
    measured = [f"{tag}-{i}" for i in range(args.warmup, args.messages)]
    expected = len(receivers)
    lost = sum(expected - len(arrivals.get(c, [])) for c in measured if c in sends)
    latency: dict[str, LatencySummary] = {}
    series: dict[str, list[float | None]] = {"first_ms": [], "last_ms": []} if fanout else {"latency_ms": []}
    series["ack_ms"] = [_ms(acks[c] - sends[c]) if c in acks and c in sends else None for c in measured]
    ack = summarize(acks[c] - sends[c] for c in measured if c in acks and c in sends)
    if fanout:
        first, last, median, every = [], [], [], []
        for c in measured:
            ts = sorted(t - sends[c] for t in arrivals.get(c, []))
            if c in sends and ts:
                every += ts
                first.append(ts[0])
                median.append(percentile(ts, 50))
                if len(ts) == expected:
                    last.append(ts[-1])
            series["first_ms"].append(_ms(ts[0]) if ts else None)
            series["last_ms"].append(_ms(ts[-1]) if len(ts) == expected else None)
        for name, samples in (
            (f"send -> last of {expected} members", last),
            ("send -> first member", first),
            ("send -> median member", median),
            ("send -> each delivery", every),
        ):
            s = summarize(samples)
            if s is not None:
                latency[name] = s
    else:
        series["latency_ms"] = [
            _ms(min(arrivals[c]) - sends[c]) if c in sends and c in arrivals else None for c in measured
        ]
        one = summarize(min(arrivals[c]) - sends[c] for c in measured if c in sends and c in arrivals)
        if one is not None:
            latency["send (A) -> new_message (B)"] = one
    if ack is not None:
        latency["send -> ack (sender)"] = ack
    figures: dict[str, Any] = {
        "room_members": expected + 1,
        "messages_sent": len(sends),
        "messages_measured": len(measured),
        "warmup_messages": args.warmup,
        "interval_ms": args.interval * 1000,
        "deliveries_lost": lost,
        "acks_missing": len(sends) - len(acks),
        "max_send_lag_ms": round(sender_done.max_send_lag_s * 1000, 2),
        "server_rss_mib_before_after": [[_r(a), _r(b)] for a, b in zip(rss_before, rss_after, strict=True)],
        "closed_by_server": merge_counts(d.closed for d in dones),
        "setup_errors": merge_counts([errors, s_errors]),
    }
    goals: dict[str, str] = {}
    if fanout:
        s = latency.get(f"send -> last of {expected} members")
        if s is not None and expected >= 1000:
            goals["fan-out to 1,000 members p99 < 50 ms"] = f"{'met' if s.p99_ms < 50 else 'MISSED'}: {s.p99_ms:.1f} ms"
    else:
        s = latency.get("send (A) -> new_message (B)")
        limit = 10.0 if len(targets) > 1 else 5.0
        where = "across two instances" if len(targets) > 1 else "one instance"
        if s is not None:
            goals[f"one-to-one p99 < {limit:.0f} ms ({where})"] = (
                f"{'met' if s.p99_ms < limit else 'MISSED'}: {s.p99_ms:.2f} ms"
            )
    return Report("fanout" if fanout else "chat", "", "", len(targets), args.deflate, figures, latency, cpu,
                  [d.cpu_share for d in dones], [], goals, profile, series, window_start)  # fmt: skip


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _fds(pid: int | None) -> int | None:
    try:
        return int(psutil.Process(pid).num_fds()) if pid else None
    except psutil.Error:
        return None


def _nofile(pid: int | None) -> list[int] | None:
    try:
        return list(psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)) if pid else None
    except psutil.Error:
        return None


# -- report -----------------------------------------------------------------------------------


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    py = platform.python_version()
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, Linux {platform.release()}, Python {py}"


def build_notes(report: Report) -> list[str]:
    notes = []
    bound = [f"{s:.0%}" for s in report.client_cpu_share if s > CLIENT_BOUND_CPU]
    if bound:
        notes.append(f"client-bound: {len(bound)} client process(es) used over 90% of a core ({', '.join(bound)})")
    if report.cpu is not None and report.cpu.machine_busy > MACHINE_BUSY:
        notes.append(
            f"machine saturated: {report.cpu.machine_busy:.0%} of all cores busy; server and clients compete for them"
        )
    if report.cpu is not None:
        foreign = report.cpu.cores.get("others", 0.0) + report.cpu.cores.get("unattributed", 0.0)
        if foreign > 0.15:
            notes.append(f"other processes used {foreign:.2f} cores during the window: figures skewed")
        if report.cpu.steal > 0.02:
            notes.append(f"the hypervisor took {report.cpu.steal:.0%} of the cores (steal)")
    return notes


def format_report(report: Report) -> str:
    lines = [f"ws_bench {report.scenario} — {report.machine}", f"command: {report.command}"]
    lines.append(
        f"servers: {report.servers}{' (two processes on one Redis)' if report.servers > 1 else ''};"
        f" permessage-deflate {'offered' if report.deflate else 'not offered'}"
    )
    lines.append("")
    width = max((len(k) for k in report.figures), default=10)
    for key, value in report.figures.items():
        lines.append(f"  {key:<{width}}  {value}")
    if report.latency:
        lines.append("")
        name_w = max(len(k) for k in report.latency)
        lines.append(
            f"  {'latency (ms)':<{name_w}}  {'count':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}"
        )
        for name, s in report.latency.items():
            lines.append(
                f"  {name:<{name_w}}  {s.count:>7} {s.p50_ms:>8.2f} {s.p90_ms:>8.2f} {s.p99_ms:>8.2f}"
                f" {s.max_ms:>8.2f} {s.mean_ms:>8.2f}"
            )
    if report.cpu is not None:
        cores = ", ".join(f"{k} {v:.2f}" for k, v in report.cpu.cores.items())
        lines += [
            "",
            f"  CPU over {report.cpu.wall_s:.1f} s (cores): {cores}; machine {report.cpu.machine_busy:.0%} busy",
        ]
        shares = ", ".join(f"{s:.0%}" for s in report.client_cpu_share)
        lines.append(f"  client processes (share of one core each): {shares}")
    for goal, verdict in report.goals.items():
        lines.append(f"  goal {goal}: {verdict}")
    lines += [f"  note: {n}" for n in report.notes]
    if report.profile:
        lines += ["", *report.profile]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ws_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--url", action="append", help="a running server (twice with --redis); default: spawn")
    p.add_argument("--server-pid", type=int, action="append", help="pid of each --url server (default: found by port)")
    p.add_argument("--database-url", help="spawn: admin URL of a PostgreSQL to make a throw-away database on "
                   "(default: embedded); --url: the server's own database")  # fmt: skip
    p.add_argument("--jwt-secret", help="the running server's auth.jwt_secret (with --url)")
    p.add_argument("--redis", nargs="?", const="redis://127.0.0.1:6379/0", help="two servers on this Redis")
    p.add_argument("--procs", type=int, help="client processes (default: idle 4, fanout 3; chat: 1 + 1)")
    p.add_argument("--sockets", type=int, default=10_000, help="idle: sockets (default 10000)")
    p.add_argument("--members", type=int, default=1000, help="fanout: receiving members (default 1000)")
    p.add_argument("--messages", type=int, help="chat: 2000, fanout: 100")
    p.add_argument("--interval", type=float, help="seconds between sends (chat 0.01, fanout 0.25)")
    p.add_argument("--warmup", type=int, help="first messages left out (chat 100, fanout 10)")
    p.add_argument("--hold", type=float, default=5.0, help="idle: seconds the sockets stay open (default 5)")
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate, as browsers do")
    p.add_argument("--profile", metavar="DIR", help="py-spy record each server during the window into DIR")
    p.add_argument("--keep-db", action="store_true", help="do not drop the throw-away database")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = p.parse_args(argv)
    fanout = args.scenario == "fanout"
    args.procs = args.procs or {"idle": 4, "fanout": 3, "chat": 1}[args.scenario]
    args.messages = args.messages or (100 if fanout else 2000)
    args.interval = args.interval if args.interval is not None else (0.25 if fanout else 0.01)
    args.warmup = args.warmup if args.warmup is not None else (10 if fanout else 100)
    args.warmup = min(args.warmup, args.messages - 1)
    if args.url and not (args.database_url and args.jwt_secret):
        p.error("--url needs --database-url (the server's database) and --jwt-secret")
    if args.url and args.redis and len(args.url) < 2:
        p.error("--redis with --url needs two --url")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = _raise_nofile()
    print(f"RLIMIT_NOFILE of the benchmark (inherited by a spawned server): {nofile}", file=sys.stderr)
    needed = {"idle": args.sockets, "chat": 2, "fanout": args.members + 1}[args.scenario]
    count = 2 if args.redis else 1
    servers: list[BenchServer] = []
    db_name: str | None = None
    redis_prefix = f"wsbench:{secrets.token_hex(4)}:"  # the spawned servers' keys, deleted after
    try:
        if args.url:
            urls = args.url[:count]
            targets = [Target(u.rstrip("/"), _server_pid(u, args.server_pid, i)) for i, u in enumerate(urls)]
            db_url, secret = args.database_url, args.jwt_secret
        else:
            secret = secrets.token_urlsafe(32)
            settings = {"SOCIALHUB_AUTH_JWT_SECRET": secret}
            if args.database_url:
                db_name = "socialhub_wsbench_" + secrets.token_hex(4)
                asyncio.run(_create_database(args.database_url, db_name))
                settings["SOCIALHUB_DATABASE_URL"] = _with_database(args.database_url, db_name)
            if args.redis:
                settings["SOCIALHUB_REDIS_URL"] = args.redis
                settings["SOCIALHUB_REDIS_KEY_PREFIX"] = redis_prefix
            first = BenchServer(settings)
            servers.append(first)
            first.start()
            if args.redis:
                second_settings = dict(settings)
                if not args.database_url:
                    embedded = first.embedded_url()
                    if embedded is None:
                        raise ServerStartError("cannot find the embedded PostgreSQL of server 1")
                    second_settings["SOCIALHUB_DATABASE_URL"] = embedded
                second = BenchServer(second_settings)
                servers.append(second)
                second.start()
            db_url = settings.get("SOCIALHUB_DATABASE_URL") or first.embedded_url()
            assert db_url is not None
            targets = [Target(s.url, s.proc.pid if s.proc else None) for s in servers]
        print("servers: " + ", ".join(f"{t.url} (pid {t.pid})" for t in targets), file=sys.stderr)
        t0 = time.monotonic()
        accounts = asyncio.run(seed_accounts(db_url, secret, needed, secrets.token_hex(3)))
        print(f"seeded {len(accounts)} users and sessions in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        if args.scenario == "idle":
            report = run_idle(args, targets, accounts)
        else:
            report = run_messages(args, targets, accounts, fanout=args.scenario == "fanout")
        for i, server in enumerate(servers, 1):
            logged = server.logged_errors()
            if logged:
                report.figures[f"server{i}_logged_errors"] = logged
    finally:
        for server in reversed(servers):
            server.stop()
        if db_name and not args.keep_db:
            asyncio.run(_drop_database(args.database_url, db_name))
        if servers and args.redis:
            asyncio.run(_drop_redis_keys(args.redis, redis_prefix))
    report.machine = machine_description()
    report.command = " ".join(["python -m bench.ws_bench", *(argv if argv is not None else sys.argv[1:])])
    report.notes = build_notes(report)
    print(format_report(report))
    if args.json:
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
