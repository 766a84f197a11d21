"""Closed-loop HTTP load from separate client processes, one measured window per phase.

Each phase sends requests drawn at random from a list of pre-encoded ones (so a client
spends its CPU on sockets, not on building requests) with `concurrency` in flight in
total, split over `procs` processes (spawn start method: fresh interpreters, uvloop).
All processes start at one instant on the shared monotonic clock; a request counts when
it completes inside the window. Latencies of every process are merged before any
percentile is taken (bench.stats). The parent prints a progress line while it waits.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import msgspec

from bench.progress import Progress
from bench.rawhttp import ConnectionLost, RawHttpConnection
from bench.server import ServerWatch
from bench.stats import LatencySummary, merge_counts, split_evenly, summarize

# A client process above this share of one core is the bottleneck, not the server.
CLIENT_BOUND_CPU = 0.9
WORKER_START_TIMEOUT_S = 60.0
# Pause after a transport error so a dead server does not turn the client into a busy loop.
ERROR_BACKOFF_S = 0.05
# Samples kept per phase for the plot (the summary uses all of them).
PLOT_SAMPLES = 20_000


class PhaseJob(msgspec.Struct, frozen=True):
    host: str
    port: int
    requests: list[bytes]
    concurrency: int
    warmup_s: float
    duration_s: float
    timeout_s: float
    seed: int


class WorkerResult(msgspec.Struct, frozen=True):
    samples: list[tuple[float, float]]  # (completion time from the window start, latency), in seconds
    errors: dict[str, int]
    cpu_share: float  # CPU time over wall time in the window: 1.0 is one full core
    body: bytes  # the first successful answer, e.g. for the ceiling server to serve


class PhaseResult(msgspec.Struct, frozen=True):
    name: str
    concurrency: int
    procs: int
    duration_s: float
    ok: int
    throughput_rps: float
    latency: LatencySummary | None
    errors: dict[str, int]
    client_cpu: list[float]
    server_cpu: float | None  # cores used by the server process in the window
    server_rss_mib: float | None
    postgres_cpu: float | None  # cores, embedded PostgreSQL only

    @property
    def client_bound(self) -> bool:
        return max(self.client_cpu, default=0.0) >= CLIENT_BOUND_CPU


class PhaseRun(msgspec.Struct, frozen=True):
    result: PhaseResult
    samples: list[tuple[float, float]]  # for the plot, at most PLOT_SAMPLES
    body: bytes


class WorkerError(RuntimeError):
    """A client process failed or fell silent."""


def worker_main(job: PhaseJob, conn: Connection, counter: Synchronized[int]) -> None:
    try:
        import uvloop

        result = uvloop.run(_drive(job, conn, counter))
        conn.send(("done", result))
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
    finally:
        conn.close()


async def _drive(job: PhaseJob, conn: Connection, counter: Synchronized[int]) -> WorkerResult:
    conns = [RawHttpConnection(job.host, job.port) for _ in range(job.concurrency)]
    conn.send(("ready", None))
    start_at: float = await asyncio.to_thread(conn.recv)
    window_start = start_at + job.warmup_s
    window_end = window_start + job.duration_s
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    samples: list[tuple[float, float]] = []
    errors: dict[str, int] = {}
    body: list[bytes] = []
    rng = random.Random(job.seed)
    requests = job.requests

    async def loop(client: RawHttpConnection) -> None:
        while (t0 := time.monotonic()) < window_end:
            error: str | None = None
            try:
                status, answer = await asyncio.wait_for(client.send(rng.choice(requests)), job.timeout_s)
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
                elif not body:
                    body.append(answer)
            except TimeoutError:
                error = "timeout"
                await client.close()
            except (ConnectionLost, OSError) as exc:
                error = type(exc).__name__
                await client.close()
            t1 = time.monotonic()
            if window_start <= t1 <= window_end:
                if error is None:
                    samples.append((t1 - window_start, t1 - t0))
                    counter.value += 1  # one writer per counter: no lock needed
                else:
                    errors[error] = errors.get(error, 0) + 1
            if error is not None and not error.startswith("HTTP"):
                await asyncio.sleep(ERROR_BACKOFF_S)

    cpu = asyncio.create_task(cpu_share(window_start, window_end))
    await asyncio.gather(*(loop(c) for c in conns))
    for c in conns:
        await c.close()
    return WorkerResult(samples=samples, errors=errors, cpu_share=await cpu, body=body[0] if body else b"")


def run_phase(name: str, job: PhaseJob, procs: int, watch: ServerWatch | None, progress: Progress) -> PhaseRun:
    """Run `job` split over `procs` client processes; merge what they measured."""
    ctx = multiprocessing.get_context("spawn")
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection, Synchronized[int]]] = []
    try:
        for i, share in enumerate(split_evenly(job.concurrency, procs)):
            parent, child = ctx.Pipe()
            counter: Synchronized[int] = ctx.Value("q", 0, lock=False)  # type: ignore[assignment,unused-ignore]
            part = msgspec.structs.replace(job, concurrency=share, seed=job.seed + i)
            client = ctx.Process(target=worker_main, args=(part, child, counter), name=f"bench-{name}-{i}", daemon=True)
            client.start()
            child.close()
            workers.append((client, parent, counter))
        for proc, conn, _ in workers:
            expect_message(conn, proc, "ready", WORKER_START_TIMEOUT_S)
        start_at = time.monotonic() + 0.1
        for _, conn, _ in workers:
            conn.send(start_at)
        window_start = start_at + job.warmup_s
        window_end = window_start + job.duration_s
        progress.wait_until(window_start, f"{name}: warm-up")
        before = watch.snapshot() if watch is not None else None
        progress.window(name, window_start, window_end, lambda: sum(c.value for _, _, c in workers), watch)
        usage = watch.usage(before, watch.snapshot()) if watch is not None and before is not None else None
        parts: list[WorkerResult] = [
            expect_message(conn, proc, "done", job.timeout_s + WORKER_START_TIMEOUT_S) for proc, conn, _ in workers
        ]
    finally:
        stop_workers([(proc, conn) for proc, conn, _ in workers])
    samples = sorted(s for part in parts for s in part.samples)
    latency = summarize(lat for _, lat in samples)
    ok = latency.count if latency is not None else 0
    step = max(1, len(samples) // PLOT_SAMPLES)
    result = PhaseResult(
        name=name,
        concurrency=job.concurrency,
        procs=len(parts),
        duration_s=job.duration_s,
        ok=ok,
        throughput_rps=ok / job.duration_s,
        latency=latency,
        errors=merge_counts(part.errors for part in parts),
        client_cpu=[part.cpu_share for part in parts],
        server_cpu=usage.app_cpu_s / job.duration_s if usage is not None else None,
        server_rss_mib=usage.app_rss_mib if usage is not None else None,
        postgres_cpu=(usage.postgres_cpu_s / job.duration_s)
        if usage is not None and usage.postgres_cpu_s is not None
        else None,
    )
    body = next((p.body for p in parts if p.body), b"")
    return PhaseRun(result=result, samples=samples[::step], body=body)


def stop_workers(workers: Sequence[tuple[multiprocessing.process.BaseProcess, Connection]]) -> None:
    """Close each client process's pipe and let it end; terminate one that does not."""
    for proc, conn in workers:
        conn.close()
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join()


async def cpu_share(start: float, end: float) -> float:
    """This process's CPU time over wall time between `start` and `end` (monotonic)."""
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    wall0, cpu0 = time.monotonic(), time.process_time()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    wall1, cpu1 = time.monotonic(), time.process_time()
    return (cpu1 - cpu0) / (wall1 - wall0) if wall1 > wall0 else 0.0


def expect_message(conn: Connection, proc: multiprocessing.process.BaseProcess, kind: str, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise WorkerError(f"{proc.name} sent nothing in {timeout:.0f} s (expected {kind!r})")
    try:
        got, payload = conn.recv()
    except EOFError:
        proc.join(1)
        raise WorkerError(f"{proc.name} ended (exit code {proc.exitcode}) before {kind!r}") from None
    if got != kind:
        raise WorkerError(f"{proc.name} failed:\n{payload}")
    return payload


def default_procs(cpus: int | None = None) -> int:
    """Client processes: two on a 2-core machine (the server needs the rest of it)."""
    return max(2, (cpus or 2))


def split_url(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        print(f"error: only http:// URLs are supported, got {url}", file=sys.stderr)
        raise SystemExit(2)
    return parts.hostname, parts.port or 80


def pick(requests: Sequence[bytes]) -> list[bytes]:
    if not requests:
        raise ValueError("a phase needs at least one request")
    return list(requests)
