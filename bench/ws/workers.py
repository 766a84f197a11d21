"""Client processes: each opens its share of the sockets, then follows the parent's commands.

A `Worker` is one spawned process (uvloop) and the parent's end of its pipe. The
process opens and authenticates its sockets (joining `room_id` for a sender or a
receiver) with `CONNECT_CONCURRENCY` handshakes in flight, reports `Ready`, then obeys
"go" (start the window; a sender sends its messages on schedule), "ping" (every socket
pings, the count of pongs is the answer) and "stop" (report `Done`, close).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from bench.stats import merge_counts
from bench.ws.client import WsClient, decode_frame, open_socket

# Handshakes in flight per client process while connecting.
CONNECT_CONCURRENCY = 64
SETUP_TIMEOUT_S = 60.0
# After the last send, how long stragglers may take before they count as lost.
DRAIN_S = 3.0
BODY = "The quick brown fox jumps over the lazy dog; a chat line of realistic length. "  # ~80 chars


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


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (a spawned server inherits it); the limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def worker_main(job: WorkerJob, conn: Connection) -> None:
    raise_nofile()
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
        frame = decode_frame(payload)
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


def check_ready(workers: list[Worker], expected: int) -> tuple[list[Ready], dict[str, int]]:
    """Every worker's `Ready`, and their setup errors merged; says so when sockets are missing."""
    readies: list[Ready] = [w.expect() for w in workers]
    errors = merge_counts(r.errors for r in readies)
    connected = sum(r.connected for r in readies)
    if connected < expected:
        print(f"only {connected} of {expected} sockets are ready: {errors}", file=sys.stderr)
    return readies, errors


def finish(workers: list[Worker]) -> list[Done]:
    """ "stop" to every worker; their `Done`, once each process has ended."""
    for w in workers:
        w.conn.send("stop")
    dones: list[Done] = [w.expect() for w in workers]
    for w in workers:
        w.stop()
    return dones
