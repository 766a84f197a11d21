"""Calls: `call_invite` -> both aiortc peers `connected`, N calls with C at a time.

The `calls` scenario: `python -m bench calls --calls N --concurrency C [--procs P]
[--database-url ...]`.

It starts its own `socialhub serve` (rate limits off; `--database-url` for a throw-away
database on an external PostgreSQL, `--redis` for Redis pub/sub) or measures `--url`.
2×N users with live sessions are inserted with SQL and get access tokens signed with
the server's secret (as bench/seed.py does), so every call is between a fresh pair.

The calls run in `--procs` client processes (aiortc is CPU-heavy: DTLS, SRTP, ICE and
an Opus encoder per peer, all in Python), each with its share of the calls and of the
concurrency. Each call, as in tests/e2e/test_calls.py: the caller and the callee open
and authenticate their own socialhub socket; the caller's RTCPeerConnection makes an
offer (data channel + a silent audio track, candidates inside the SDP); the clock
starts when `call_invite` is sent. The callee's peer gets the offer only from
`call_incoming` on its own socket, answers with `call_answer`; the caller's peer gets
the answer only from `call_answered` on its socket. Measured per call:

- invite -> connected: from sending `call_invite` until both peers'
  `connectionState == "connected"` (ICE + DTLS on loopback included);
- invite -> call_incoming: sending `call_invite` until the callee's socket has it;
- answer -> call_answered: sending `call_answer` until the caller's socket has it;
- invite -> ack: the caller's `call_invite` ack (the call row is written).

Then the caller hangs up and both sockets must see `call_ended`. Server CPU is read
(psutil) before the first and after the last call: socialhub's CPU seconds over the
run divided by the calls is its cost per call (signaling, sockets, the call rows and
the presence work of the sockets opened for the calls). Client CPU is reported per
process; above 90 % of a core it is marked BOUND, and the latencies then include
client queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import secrets
import time
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from bench.load import stop_workers
from bench.progress import Progress
from bench.report import Report, Section, Series, new_report
from bench.stats import merge_counts, split_evenly, summarize
from bench.target import Target, TargetError
from bench.ws.accounts import seed_accounts

BOUND_SHARE = 0.9
HOPS = ("invite -> connected", "invite -> call_incoming", "answer -> call_answered", "invite -> ack")


class Pair(msgspec.Struct, frozen=True):
    caller_id: str
    caller_token: str
    callee_id: str
    callee_token: str


class WorkerJob(msgspec.Struct, frozen=True):
    ws_url: str
    pairs: list[Pair]
    concurrency: int
    timeout: float
    hold: float


class WorkerResult(msgspec.Struct, frozen=True):
    samples: dict[str, list[float]]
    errors: dict[str, int]
    ok: int
    cpu_s: float
    wall_s: float


# -- one client process ---------------------------------------------------------------------


class Sock:
    """One socialhub socket; a reader keeps the frames, `expect` takes the first match."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, token: str, timeout: float) -> Sock:
        from websockets.asyncio.client import connect

        ws = await asyncio.wait_for(connect(url, max_size=2**20, open_timeout=timeout), timeout)
        sock = cls(ws)
        await sock.send({"type": "authenticate", "token": token})
        await sock.expect("authenticated", timeout)
        return sock

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.ws:
                self.frames.append((time.perf_counter(), json.loads(raw)))
                self._arrived.set()
        except ConnectionClosed:
            pass
        finally:
            self._arrived.set()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def expect(self, kind: str, timeout: float, **fields: Any) -> tuple[float, dict[str, Any]]:
        end = time.monotonic() + timeout
        while True:
            for i, (at, f) in enumerate(self.frames):
                if f.get("type") == "error" and (not fields.get("ref") or f.get("ref") == fields.get("ref")):
                    raise RuntimeError(f"error {f.get('code')} waiting for {kind}")
                if f.get("type") == kind and all(f.get(k) == v for k, v in fields.items()):
                    del self.frames[i]
                    return at, f
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind} in {timeout:g} s")
            if self._reader.done():
                raise RuntimeError(f"socket closed waiting for {kind}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


def _peer() -> tuple[Any, asyncio.Event]:
    from aiortc import RTCConfiguration, RTCPeerConnection

    # iceServers=[]: aiortc would otherwise ask Google's STUN server; loopback needs none.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def _changed() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            connected.set()

    @pc.on("track")
    def _track(track: Any) -> None:
        async def drain() -> None:
            with contextlib.suppress(Exception):
                while True:
                    await track.recv()

        task = asyncio.ensure_future(drain())
        pc.on("connectionstatechange", lambda: task.cancel() if pc.connectionState == "closed" else None)

    return pc, connected


async def one_call(job: WorkerJob, pair: Pair, samples: dict[str, list[float]]) -> None:
    from aiortc import AudioStreamTrack, RTCSessionDescription

    t = job.timeout
    caller = callee = None
    pcs: list[Any] = []
    try:
        caller, callee = await asyncio.gather(
            Sock.open(job.ws_url, pair.caller_token, t), Sock.open(job.ws_url, pair.callee_token, t)
        )
        (a, a_up), (b, b_up) = _peer(), _peer()
        pcs += [a, b]
        a.createDataChannel("chat")
        a.addTrack(AudioStreamTrack())
        await a.setLocalDescription(await a.createOffer())
        ref = secrets.token_hex(4)
        t0 = time.perf_counter()
        await caller.send({"type": "call_invite", "callee_id": pair.callee_id, "media": "audio",
                           "sdp": a.localDescription.sdp, "ref": ref})  # fmt: skip
        # The callee's peer hears of the call only through its own socket.
        t_in, incoming = await callee.expect("call_incoming", t)
        t_ack, ack = await caller.expect("ack", t, ref=ref)
        call_id = ack["call"]["id"]
        if incoming["call"]["id"] != call_id:
            raise RuntimeError("call_incoming for another call")
        await b.setRemoteDescription(RTCSessionDescription(sdp=incoming["sdp"], type="offer"))
        await b.setLocalDescription(await b.createAnswer())
        t1 = time.perf_counter()
        await callee.send({"type": "call_answer", "call_id": call_id, "sdp": b.localDescription.sdp})
        t_ans, answered = await caller.expect("call_answered", t, call_id=call_id)
        await a.setRemoteDescription(RTCSessionDescription(sdp=answered["sdp"], type="answer"))
        await asyncio.wait_for(asyncio.gather(a_up.wait(), b_up.wait()), max(0.1, t - (time.perf_counter() - t0)))
        if a.connectionState != "connected" or b.connectionState != "connected":
            raise RuntimeError(f"peers {a.connectionState}/{b.connectionState}")
        t_conn = time.perf_counter()
        samples["invite -> connected"].append(t_conn - t0)
        samples["invite -> call_incoming"].append(t_in - t0)
        samples["answer -> call_answered"].append(t_ans - t1)
        samples["invite -> ack"].append(t_ack - t0)
        if job.hold > 0:
            await asyncio.sleep(job.hold)
        await caller.send({"type": "call_hangup", "call_id": call_id})
        await asyncio.gather(caller.expect("call_ended", t, call_id=call_id),
                             callee.expect("call_ended", t, call_id=call_id))  # fmt: skip
    finally:
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
        await asyncio.gather(*(s.close() for s in (caller, callee) if s is not None), return_exceptions=True)


async def run_worker(job: WorkerJob, counter: Any) -> WorkerResult:
    samples: dict[str, list[float]] = {hop: [] for hop in HOPS}
    errors: dict[str, int] = {}
    ok = 0
    sem = asyncio.Semaphore(job.concurrency)
    cpu0, wall0 = time.process_time(), time.perf_counter()

    async def guarded(pair: Pair) -> None:
        nonlocal ok
        async with sem:
            try:
                await one_call(job, pair, samples)
                ok += 1
            except Exception as exc:  # every failure is counted by kind
                kind = f"{type(exc).__name__}: {exc}"[:120]
                errors[kind] = errors.get(kind, 0) + 1
            with counter.get_lock():
                counter.value += 1

    await asyncio.gather(*(guarded(p) for p in job.pairs))
    return WorkerResult(samples, errors, ok, time.process_time() - cpu0, time.perf_counter() - wall0)


def worker_main(job_bytes: bytes, conn: Connection, counter: Any, start_at: float) -> None:
    job = msgspec.json.decode(job_bytes, type=WorkerJob)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    import aiortc  # noqa: F401 - imported before the start, not timed

    conn.send(b"ready")
    time.sleep(max(0.0, start_at - time.monotonic()))
    result = asyncio.run(run_worker(job, counter))
    conn.send(msgspec.json.encode(result))
    conn.close()


# -- the run ---------------------------------------------------------------------------------


async def make_pairs(db_url: str, secret: str, calls: int) -> list[Pair]:
    """A fresh caller and callee for each call: users, sessions and tokens by SQL."""
    accounts = await seed_accounts(db_url, secret, 2 * calls, secrets.token_hex(3))
    return [
        Pair(accounts[2 * i].user_id, accounts[2 * i].token, accounts[2 * i + 1].user_id, accounts[2 * i + 1].token)
        for i in range(calls)
    ]


def run(scenario: str, args: argparse.Namespace, progress: Progress) -> tuple[Report, Series]:
    if args.calls < 1 or args.concurrency < 1:
        raise TargetError("--calls and --concurrency must be at least 1")
    with Target(args) as target:
        db_url, secret = target.require_database()
        t_seed = time.monotonic()
        pairs = asyncio.run(make_pairs(db_url, secret, args.calls))
        progress.say(f"{2 * args.calls} users inserted in {time.monotonic() - t_seed:.1f} s")
        procs = max(1, min(args.procs, args.concurrency, args.calls))
        conc = split_evenly(args.concurrency, procs)
        shares = split_evenly(args.calls, procs)
        jobs, at = [], 0
        for n, c in zip(shares, conc, strict=True):
            jobs.append(WorkerJob(target.url.replace("http", "ws", 1) + "/ws", pairs[at : at + n], c,
                                  args.timeout, args.hold))  # fmt: skip
            at += n
        ctx = multiprocessing.get_context("spawn")
        counter = ctx.Value("i", 0)
        start_at = time.monotonic() + 3.0 + 0.5 * len(jobs)
        running: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        try:
            for job in jobs:
                parent, child = ctx.Pipe()
                client = ctx.Process(target=worker_main, args=(msgspec.json.encode(job), child, counter, start_at))
                client.start()
                running.append((client, parent))
            for _proc, parent in running:
                if not parent.poll(60) or parent.recv() != b"ready":
                    raise TargetError("a client process did not start")
            while time.monotonic() < start_at:
                time.sleep(0.05)
            before = target.watch.snapshot() if target.watch else None
            t0 = time.monotonic()
            last = 0.0
            while any(proc.is_alive() and not parent.poll() for proc, parent in running):
                time.sleep(0.2)
                if target.watch:
                    target.watch.sample_memory()
                if time.monotonic() - last >= 2.0:
                    last = time.monotonic()
                    progress.say(f"calls {counter.value}/{args.calls} done, {last - t0:.0f} s")
            wall = time.monotonic() - t0
            after = target.watch.snapshot() if target.watch else None
            results: list[WorkerResult] = []
            for proc, parent in running:
                if not parent.poll(5):
                    raise TargetError(f"client process {proc.pid} ended without a result ({proc.exitcode})")
                results.append(msgspec.json.decode(parent.recv(), type=WorkerResult))
                proc.join(10)
        finally:
            stop_workers(running)  # the clients of a run that failed half-way
        usage = target.watch.usage(before, after) if target.watch and before and after else None
        logged = target.logged_errors()
        description = target.description
    samples = {hop: [x for r in results for x in r.samples[hop]] for hop in HOPS}
    ok = sum(r.ok for r in results)
    shares_cpu = [r.cpu_s / max(r.wall_s, 1e-9) for r in results]
    bound = any(s > BOUND_SHARE for s in shares_cpu)
    notes = [
        "each call: fresh caller/callee pair, own sockets, aiortc peers (data channel + silent audio, "
        "candidates in the SDP), clock from sending call_invite",
    ]
    if bound:
        notes.append("a client process was above 90% of a core: the client saturates; add --procs or cores")
    if len(shares_cpu) and (os.cpu_count() or 1) <= 2:
        notes.append(f"{os.cpu_count()} CPUs shared by server, PostgreSQL and {len(results)} client processes")
    errors = merge_counts(r.errors for r in results)
    figures: dict[str, object] = {
        "calls": f"{args.calls} at {args.concurrency} concurrent over {len(results)} client processes",
        "ok": ok,
        "errors": sum(errors.values()),
        **{f"error: {kind}": n for kind, n in errors.items()},
        "wall s": round(wall, 2),
        "calls per s": round(ok / max(wall, 1e-9), 2),
        "client CPU per process": " ".join(f"{share:.0%}" for share in shares_cpu)
        + (" (BOUND: client-saturated, latencies include client queueing)" if bound else ""),
    }
    report = new_report(scenario, description)
    report.setup = {"users inserted": 2 * args.calls, "hold s": args.hold, "timeout s": args.timeout}
    if usage is not None:
        pg = "" if usage.postgres_cpu_s is None else f", PostgreSQL {usage.postgres_cpu_s:.2f} s"
        figures["server CPU"] = (
            f"{usage.app_cpu_s:.2f} s over the run = {usage.app_cpu_s / max(ok, 1) * 1000:.1f} ms per call "
            f"({usage.app_cpu_s / max(wall, 1e-9):.0%} of a core){pg}; RSS {usage.app_rss_mib:.0f} MiB "
            f"(peak {usage.app_peak_rss_mib:.0f})"
        )
        report.extra["server_usage"] = msgspec.to_builtins(usage)
    if logged:
        report.server["logged errors"] = logged
        notes.append(f"server logged errors: {logged}")
    latency = {hop: lat for hop, v in samples.items() if (lat := summarize(v)) is not None}
    report.sections.append(Section("calls", figures, latency))
    report.notes = notes
    return report, {}


def add_options(p: argparse.ArgumentParser, scenario: str) -> None:
    p.add_argument("--calls", type=int, default=50, help="calls in all, each between a fresh pair (default 50)")
    p.add_argument("--concurrency", type=int, default=5, help="calls at a time, over all processes (default 5)")
    p.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a call may take to connect (default 30)")
    p.add_argument("--hold", type=float, default=0.0, help="seconds a connected call lasts before the hangup")
