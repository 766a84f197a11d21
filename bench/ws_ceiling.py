"""The WebSocket ceilings: bare `websockets` servers (bench.ceiling) under the same load.

`measure`: send -> receive through the bare relay (`bench.ceiling ws`), the same shape
as the `chat` and `fanout` windows of `ws-chat`: one sender, `members` receivers in separate
processes, `messages` sends at `interval`. A message carries its send time on the
monotonic clock (one clock for every process of the machine), so each receiver computes
the latency when the frame arrives.

`measure_idle`: `ws-idle`'s own client processes and measurement
(`bench.ws.idle.run_idle`) against the bare idle server (`bench.ceiling ws-idle`): the
same number of sockets, each sending an `authenticate` frame with a token of a real
token's size and waiting for `authenticated`, then one `ping`; RSS per socket.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
import time
import traceback
from multiprocessing.connection import Connection

import msgspec

from bench.ceiling import CeilingServer
from bench.load import stop_workers
from bench.stats import LatencySummary, split_evenly, summarize
from bench.ws.idle import run_idle
from bench.ws.result import SocketResult
from bench.ws.servers import Target
from bench.ws.workers import raise_nofile
from socialhub.services.tokens import TokenCodec

CONNECT_CONCURRENCY = 100


class RelayResult(msgspec.Struct, frozen=True):
    members: int
    last_member: LatencySummary | None  # per message: the slowest member
    each_delivery: LatencySummary | None
    lost: int


def _receiver_main(port: int, count: int, conn: Connection) -> None:
    try:
        import uvloop

        conn.send(("done", uvloop.run(_receive(port, count, conn))))
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
    finally:
        conn.close()


async def _receive(port: int, count: int, conn: Connection) -> dict[int, list[float]]:
    from websockets.asyncio.client import ClientConnection, connect

    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one() -> ClientConnection:
        async with gate:
            return await connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=64 * 1024)

    sockets = await asyncio.gather(*(open_one() for _ in range(count)))
    arrivals: dict[int, list[float]] = {}

    async def read(ws: ClientConnection) -> None:
        async for frame in ws:
            now = time.monotonic()
            n, sent = str(frame).split(" ", 1)
            arrivals.setdefault(int(n), []).append(now - float(sent))

    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    conn.send(("ready", None))
    await asyncio.to_thread(conn.recv)  # "stop"
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)
    return arrivals


async def _send(port: int, messages: int, interval: float) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
        next_at = time.monotonic()
        for n in range(messages):
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await ws.send(f"{n} {time.monotonic()!r}")
            next_at += interval
        await asyncio.sleep(1.0)  # let the last deliveries arrive


def measure(port: int, members: int, messages: int, interval: float, warmup: int, procs: int) -> RelayResult:
    ctx = multiprocessing.get_context("spawn")
    workers = []
    for share in split_evenly(members, max(1, min(procs, members))):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_receiver_main, args=(port, share, child), daemon=True)
        proc.start()
        child.close()
        workers.append((proc, parent))
    try:
        for _proc, conn in workers:
            kind, payload = conn.recv()
            if kind != "ready":
                raise RuntimeError(f"relay receiver failed:\n{payload}")
        import uvloop

        uvloop.run(_send(port, messages, interval))
        merged: dict[int, list[float]] = {}
        for _, conn in workers:
            conn.send("stop")
        for _proc, conn in workers:
            kind, payload = conn.recv()
            if kind != "done":
                raise RuntimeError(f"relay receiver failed:\n{payload}")
            for n, lats in payload.items():
                merged.setdefault(n, []).extend(lats)
    finally:
        stop_workers(workers)
    measured = range(warmup, messages)
    complete = [merged[n] for n in measured if len(merged.get(n, [])) == members]
    return RelayResult(
        members=members,
        last_member=summarize(max(lats) for lats in complete),
        each_delivery=summarize(lat for n in measured for lat in merged.get(n, [])),
        lost=sum(members - len(merged.get(n, [])) for n in measured),
    )


def sized_tokens(count: int) -> list[str]:
    """Access tokens as socialhub issues them (the bare server reads none of them), so that
    each `authenticate` frame has a real frame's size."""
    codec = TokenCodec(secrets.token_urlsafe(32), 3600.0)
    base = 7_000_000_000_000_000_000  # snowflake-sized ids
    return [codec.issue(base + i, base + count + i) for i in range(count)]


def measure_idle(sockets: int, procs: int, hold: float) -> SocketResult:
    """`sockets` idle sockets on the bare `websockets` server, as `ws-idle` opens them."""
    raise_nofile()  # before the server starts: it inherits the limit
    with CeilingServer("ws-idle") as server:
        assert server.proc is not None
        target = Target(f"http://127.0.0.1:{server.port}", server.proc.pid)
        return run_idle([target], sized_tokens(sockets), procs, hold, deflate=False, goal=False)
