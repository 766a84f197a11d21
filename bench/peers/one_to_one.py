"""The one-to-one window of `vs-synapse`, the same on both sides, in this process.

A sends `messages` at a fixed interval (open loop: a send never waits for the previous
answer), B listens; latency = A's send start -> B has the message decoded, both stamped
with `time.monotonic()` in this one process. socialhub: two sockets of bench.ws.client
(A's `send_message` frames, B joined to the room and reading `new_message`). Synapse: one
httpx HTTP/1.1 keep-alive client per user, A's `PUT .../send/m.room.message/{txn}` and
B's `/sync` long-poll with a `since` token (Matrix's realtime path), filtered to the room.

Server CPU (utime + stime from /proc/<pid>/stat) and every process's cores
(bench.ws.machine) are read from just before the first measured message to the
window's end: at least DRAIN_S after the last send, longer while messages are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from bench.peers.matrix import registration_mac, sent_path, sync_filter, timeline_limited, timeline_marks
from bench.peers.synapse_result import ChatWindow, after_ack, window_samples
from bench.peers.windows import server_cpu_s
from bench.ws.client import WsClient, decode_frame, open_socket
from bench.ws.machine import Probe
from bench.ws.servers import hostport
from bench.ws.workers import BODY

# After the last send: the last deliveries and acks (both sides alike, so that the
# window's length, over which the server's idle CPU is counted too, is the same).
DRAIN_S = 1.0
# A message not delivered this long after the last send is lost.
LOST_AFTER_S = 10.0
SYNC_TIMEOUT_MS = 30_000
# The Matrix event's field holding the benchmark's mark (a namespaced key: clients ignore it).
MARK = "org.socialhub.bench.mark"
SETUP_TIMEOUT_S = 60.0


class Pace(msgspec.Struct, frozen=True):
    messages: int
    interval_s: float
    warmup: int  # first messages left out of the latencies and of the CPU


class _Probe(Probe):
    """bench.ws.machine's probe (CPU by process group over a window) for known pids."""

    def __init__(self, servers: set[int], clients: set[int]) -> None:
        self.servers, self.clients = servers, clients


def run(coro: Coroutine[Any, Any, ChatWindow]) -> ChatWindow:
    """One window on its own event loop (uvloop when installed, as the bench's clients)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


class _Window:
    """What both sides share: the pacer, the stamps, the CPU readings."""

    def __init__(self, pace: Pace, server_pid: int, tag: str) -> None:
        self.pace, self.pid, self.tag = pace, server_pid, tag
        self.sends: dict[str, float] = {}
        self.arrivals: dict[str, float] = {}
        self.acks: dict[str, float] = {}
        self.errors: dict[str, int] = {}
        self.max_lag = 0.0
        self.cpu0 = 0.0
        self.process0 = 0.0
        self.t0 = 0.0
        self.probe = _Probe({server_pid}, set())

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def send_all(self, send: Callable[[str], None]) -> None:
        """`send(cmid)` on the schedule; CPU readings start just before the first measured
        message (reading every process's CPU blocks the loop, so not between a send and
        its stamp)."""
        start = time.monotonic() + 0.05
        for i in range(self.pace.messages):
            target = start + i * self.pace.interval_s
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # How late the loop woke for this send (the readings below are not counted).
            self.max_lag = max(self.max_lag, time.monotonic() - target)
            if i == self.pace.warmup:
                self._start_readings()
            cmid = f"{self.tag}-{i}"
            self.sends[cmid] = time.monotonic()
            send(cmid)
        if self.pace.warmup >= self.pace.messages:
            self._start_readings()
        last = time.monotonic()
        await asyncio.sleep(DRAIN_S)
        deadline = last + LOST_AFTER_S
        n = len(self.sends)
        while time.monotonic() < deadline and (len(self.arrivals) < n or len(self.acks) < n):
            await asyncio.sleep(0.05)

    def _start_readings(self) -> None:
        self.probe.start()
        self.cpu0 = server_cpu_s(self.pid)
        self.process0, self.t0 = time.process_time(), time.monotonic()

    def result(self, **extra: Any) -> ChatWindow:
        cpu = server_cpu_s(self.pid) - self.cpu0
        client = (time.process_time() - self.process0) / max(time.monotonic() - self.t0, 1e-9)
        window = self.probe.stop()
        latency, acks, lost, measured = window_samples(self.tag, self.pace.warmup, self.sends, self.arrivals,
                                                       self.acks)  # fmt: skip
        return ChatWindow(sent=len(self.sends), measured=measured, latency_s=latency, ack_s=acks, lost=lost,
                          errors=dict(self.errors), server_cpu_s=cpu, wall_s=window.wall_s, cores=window.cores,
                          client_cpu=round(client, 3), max_send_lag_ms=round(self.max_lag * 1000, 2),
                          after_ack_s=after_ack(self.tag, self.pace.warmup, self.sends, self.arrivals, self.acks),
                          **extra)  # fmt: skip


async def socialhub_window(url: str, pid: int, tokens: tuple[str, str], room_id: str, pace: Pace,
                           tag: str) -> ChatWindow:  # fmt: skip
    """A (not joined: a member sends without joining) sends on its socket; B joined the room."""
    host, port = hostport(url)
    w = _Window(pace, pid, tag)
    async with asyncio.timeout(SETUP_TIMEOUT_S):
        a = await open_socket(host, port, tokens[0], False, None)
        b = await open_socket(host, port, tokens[1], False, room_id)
    prefix = tag + "-"

    def on_b(_c: WsClient, payload: bytes, _t: float) -> None:
        frame = decode_frame(payload)
        if frame.type == "new_message":
            cmid = frame.message.get("client_msg_id", "")
            if cmid.startswith(prefix) and cmid not in w.arrivals:
                w.arrivals[cmid] = time.monotonic()

    def on_a(_c: WsClient, payload: bytes, _t: float) -> None:
        frame = decode_frame(payload)
        if frame.type == "ack" and isinstance(frame.ref, str):
            w.acks.setdefault(frame.ref, time.monotonic())
        elif frame.type == "error":
            w.error(f"error {frame.code}")

    a.handler, b.handler = on_a, on_b
    await asyncio.sleep(1.0)  # the connections settle, the loops go idle

    def send(cmid: str) -> None:
        a.send({"type": "send_message", "room_id": room_id, "body": BODY, "client_msg_id": cmid, "ref": cmid})

    try:
        await w.send_all(send)
        return w.result()
    finally:
        await asyncio.gather(a.close(), b.close())


class MatrixUser(msgspec.Struct, frozen=True):
    user_id: str
    access_token: str


async def register(client: httpx.AsyncClient, shared_secret: str, username: str) -> MatrixUser:
    """A user made through the admin API's shared-secret registration (nonce, then the MAC)."""
    path = "/_synapse/admin/v1/register"
    nonce = (await _ok(await client.get(path)))["nonce"]
    password = f"bench-{username}"
    body = {"nonce": nonce, "username": username, "password": password, "admin": False,
            "mac": registration_mac(shared_secret, nonce, username, password)}  # fmt: skip
    answer = await _ok(await client.post(path, json=body))
    return MatrixUser(answer["user_id"], answer["access_token"])


async def direct_room(url: str, a: MatrixUser, b: MatrixUser) -> str:
    """A private room A creates and invites B to; B joins."""
    async with httpx.AsyncClient(base_url=url, timeout=SETUP_TIMEOUT_S) as client:
        created = await _ok(await client.post("/_matrix/client/v3/createRoom", headers=_auth(a),
                                              json={"preset": "private_chat", "invite": [b.user_id]}))  # fmt: skip
        room_id: str = created["room_id"]
        await _ok(await client.post(f"/_matrix/client/v3/join/{quote(room_id, safe='')}", headers=_auth(b), json={}))
    return room_id


async def synapse_users(url: str, shared_secret: str, tag: str) -> tuple[MatrixUser, MatrixUser]:
    async with httpx.AsyncClient(base_url=url, timeout=SETUP_TIMEOUT_S) as client:
        return await register(client, shared_secret, f"a_{tag}"), await register(client, shared_secret, f"b_{tag}")


def _auth(user: MatrixUser) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.access_token}"}


async def _ok(r: httpx.Response) -> Any:
    if r.status_code != 200:
        raise RuntimeError(f"{r.request.method} {r.request.url.path} answered {r.status_code}: {r.text[:300]}")
    return r.json()


async def synapse_window(url: str, pid: int, a: MatrixUser, b: MatrixUser, room_id: str, pace: Pace,
                         tag: str) -> ChatWindow:  # fmt: skip
    """A PUTs each message (a task per message: open loop); B long-polls /sync from the
    `next_batch` of an initial sync, so every answer holds only what came after."""
    w = _Window(pace, pid, tag)
    prefix = tag + "-"
    filt = sync_filter(room_id)
    counts = {"wakeups": 0, "delivered": 0, "limited": 0}
    sends: set[asyncio.Task[None]] = set()
    # One keep-alive HTTP/1.1 client per user; A's may open a second connection when a
    # PUT is still in flight at the next send (open loop).
    a_client = httpx.AsyncClient(base_url=url, headers=_auth(a), timeout=SETUP_TIMEOUT_S)
    b_client = httpx.AsyncClient(base_url=url, headers=_auth(b), timeout=SYNC_TIMEOUT_MS / 1000 + 30)
    sync_path = "/_matrix/client/v3/sync"
    try:
        first = await _ok(await b_client.get(sync_path, params={"filter": filt, "timeout": "0"}))
        since: str = first["next_batch"]

        async def listen() -> None:
            nonlocal since
            while True:
                r = await b_client.get(sync_path, params={"since": since, "filter": filt,
                                                          "timeout": str(SYNC_TIMEOUT_MS)})  # fmt: skip
                if r.status_code != 200:
                    w.error(f"/sync {r.status_code}")
                    await asyncio.sleep(0.1)
                    continue
                body = r.json()
                t = time.monotonic()
                since = body["next_batch"]
                got = 0
                for mark in timeline_marks(body, room_id, MARK):
                    if mark.startswith(prefix) and mark not in w.arrivals:
                        w.arrivals[mark] = t
                        got += int(mark.rsplit("-", 1)[1]) >= pace.warmup
                if got:
                    counts["wakeups"] += 1
                    counts["delivered"] += got
                if timeline_limited(body, room_id):
                    counts["limited"] += 1

        async def put(cmid: str) -> None:
            content = {"msgtype": "m.text", "body": BODY, MARK: cmid}
            try:
                r = await a_client.put(sent_path(room_id, cmid), json=content)
            except httpx.HTTPError as exc:
                w.error(type(exc).__name__)
                return
            if r.status_code == 200:
                w.acks.setdefault(cmid, time.monotonic())
            else:
                w.error(f"PUT {r.status_code}")

        def send(cmid: str) -> None:
            task = asyncio.create_task(put(cmid))
            sends.add(task)
            task.add_done_callback(sends.discard)

        listener = asyncio.create_task(listen())
        await asyncio.sleep(1.0)  # the long-poll is waiting, the loops go idle
        try:
            await w.send_all(send)
            return w.result(wakeups=counts["wakeups"], delivered_in_wakeups=counts["delivered"],
                            limited=counts["limited"])  # fmt: skip
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
    finally:
        for task in list(sends):
            task.cancel()
        await a_client.aclose()
        await b_client.aclose()
