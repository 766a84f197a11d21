"""HTTP throughput and latency of login and `GET /users/{id}` against a running server.

Usage (from the project root, with the venv):

    # let the benchmark start its own server (embedded PostgreSQL, rate limits off)
    .venv/bin/python -m bench.http_bench --spawn --concurrency 50 --duration 10

    # or measure a server that is already running
    SOCIALHUB_RATELIMIT_ENABLED=false .venv/bin/socialhub serve --port 8000 &
    .venv/bin/python -m bench.http_bench --url http://127.0.0.1:8000 --server-pid $!

Options: `--scenarios login,user` (default both, run in that order), `--concurrency`
(requests in flight in total, default 50), `--procs` (client processes sharing them,
default 2), `--duration` (measured seconds per scenario, default 10) after `--warmup`
(default 2), `--users` (accounts signed up for the run, default 50), `--follows` (how many
others each of them follows, default 5), `--timeout` (per request, default 30 s),
`--json out.json` (the figures as JSON too), `--seed`.

Setup goes through the API: it signs up `--users` accounts with names unique to the run
and makes each follow a few others. The `user` scenario is `GET /users/{id}` of a random
account by another random account (a bearer token from the sign-up; tokens live
`auth.access_ttl`, 15 min by default, which bounds how long a run may be). The `login`
scenario is `POST /auth/login` of random accounts: it costs one argon2id verification
each, which is slow on purpose, so its throughput is bounded by the hash cost.

Load comes from `--procs` separate processes, each with one asyncio loop and one
`httpx.AsyncClient` (HTTP/1.1 keep-alive, one connection per request in flight). All
start together; a request counts when it completes inside the measured window. The
latencies of successful (2xx) requests from every process are merged and the
percentiles are computed exactly over all of them (nearest rank, see `bench.stats`).
Errors are counted by status or by exception. When a client process uses most of a core
the figures are marked "client-bound": they then measure the client as much as the
server. Sign-up and login are rate-limited per IP unless the server runs with
`SOCIALHUB_RATELIMIT_ENABLED=false`; the benchmark says so when it meets a 429.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.load import WorkerError, cpu_share, expect_message, stop_workers
from bench.report import machine_description
from bench.server import ServerStartError, ServerUsage, ServerWatch, SpawnedServer
from bench.stats import LatencySummary, merge_counts, split_evenly, summarize

SCENARIOS = ("login", "user")
# Parallel sign-ups during setup: each one is an argon2id hash on the server, so more
# would only queue there.
SIGNUP_CONCURRENCY = 4
FOLLOW_CONCURRENCY = 16
# A 5xx on a follow is a server bug, reported as such; retrying keeps the benchmark going.
FOLLOW_ATTEMPTS = 3
# A client process above this share of one core is the bottleneck, not the server.
CLIENT_BOUND_CPU = 0.9
# On a machine shared by server and client, this much busy CPU means they compete for it.
SHARED_BUSY = 0.75
# Other processes using this much of a core during a window get a note: they skew it.
OTHER_CPU_NOTE = 0.15
# Time allowed for a client process to start (spawn start method: a fresh interpreter).
WORKER_START_TIMEOUT_S = 60.0
# Pause after a transport error so a dead server does not turn the client into a busy loop.
ERROR_BACKOFF_S = 0.05

LOGIN_NOTE = (
    "login throughput is bounded by the argon2id password hash (auth.argon2_*: 3 passes over "
    "64 MiB by default) on purpose: that cost is what makes password guessing expensive"
)
RATE_LIMIT_HINT = (
    "the server rate-limits this route per IP; restart it with SOCIALHUB_RATELIMIT_ENABLED=false "
    "(or let the benchmark start its own server with --spawn)"
)


class Account(msgspec.Struct, frozen=True):
    id: str
    username: str
    token: str


class WorkerJob(msgspec.Struct, frozen=True):
    url: str
    scenario: str
    concurrency: int
    warmup_s: float
    duration_s: float
    timeout_s: float
    password: str
    accounts: tuple[Account, ...]
    seed: int


class WorkerResult(msgspec.Struct, frozen=True):
    latencies_s: list[float]  # successful requests completed in the window
    errors: dict[str, int]
    cpu_share: float  # CPU time over wall time in the window: 1.0 is one full core


class ScenarioResult(msgspec.Struct, frozen=True):
    scenario: str
    concurrency: int
    procs: int
    duration_s: float
    ok: int
    throughput_rps: float
    latency: LatencySummary | None
    errors: dict[str, int]
    client_cpu: list[float]
    machine_cpu_busy: float  # share of all the machine's cores busy in the window
    server: ServerUsage | None
    # CPU used by neither the clients nor the server (other work, the kernel's share of
    # loopback traffic), in cores; known only when the server's processes are watched.
    other_cpu: float | None

    @property
    def client_bound(self) -> bool:
        return max(self.client_cpu, default=0.0) >= CLIENT_BOUND_CPU


class Report(msgspec.Struct, frozen=True):
    started_at: str
    url: str
    spawned: bool
    cpu_count: int
    machine: str
    background_cpu_busy: float  # share of all CPUs busy in the second before the setup
    users: int
    follows: int
    warmup_s: float
    duration_s: float
    results: list[ScenarioResult]
    server_total: ServerUsage | None  # over the whole run, when the server's pid is known
    server_errors: dict[str, int]  # error records in a spawned server's log
    notes: list[str]


class SetupError(RuntimeError):
    pass


# ---- setup: accounts and follows through the API ---------------------------------------


async def create_accounts(url: str, count: int, follows: int, password: str, rng: random.Random) -> list[Account]:
    """Sign up `count` accounts unique to this run, then make each follow a few others."""
    run = secrets.token_hex(3)
    accounts: list[Account | None] = [None] * count
    limited: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=60.0, trust_env=False) as client:
        signups = asyncio.Semaphore(SIGNUP_CONCURRENCY)

        async def signup(i: int) -> None:
            username = f"bench_{run}_{i}"
            body = {"name": f"Bench {i}", "email": f"{username}@bench.invalid", "username": username}
            async with signups:
                resp = await client.post("/auth/signup", json={**body, "password": password})
            if resp.status_code == 429:
                retry_after = resp.headers.get("retry-after", "?")
                raise SetupError(
                    f"POST /auth/signup answered 429 rate_limited (Retry-After: {retry_after} s) "
                    f"after {sum(a is not None for a in accounts)} of {count} sign-ups succeeded: {RATE_LIMIT_HINT}"
                )
            if resp.status_code != 201:
                raise SetupError(f"POST /auth/signup answered {resp.status_code}: {resp.text[:300]}")
            if "ratelimit-limit" in resp.headers and not limited:
                limited.append(resp.headers["ratelimit-limit"])
            data = resp.json()
            accounts[i] = Account(id=data["user"]["id"], username=username, token=data["token"])

        await _all(signup(i) for i in range(count))
        made = [a for a in accounts if a is not None]
        if limited:
            print(f"warning: rate limits are on (RateLimit-Limit: {limited[0]} on sign-up); {RATE_LIMIT_HINT}")

        following = asyncio.Semaphore(FOLLOW_CONCURRENCY)
        retried: list[int] = []

        async def follow(who: Account, whom: Account) -> None:
            for attempt in range(1, FOLLOW_ATTEMPTS + 1):
                async with following:
                    resp = await client.post(f"/users/follow/{whom.id}", headers=_bearer(who))
                if resp.status_code < 500 or attempt == FOLLOW_ATTEMPTS:
                    break
                retried.append(resp.status_code)
            if resp.status_code != 200:
                hint = f": {RATE_LIMIT_HINT}" if resp.status_code == 429 else f": {resp.text[:300]}"
                raise SetupError(f"POST /users/follow answered {resp.status_code}{hint}")

        pairs = [
            (who, whom)
            for who in made
            for whom in rng.sample([a for a in made if a is not who], min(follows, len(made) - 1))
        ]
        await _all(follow(who, whom) for who, whom in pairs)
        if retried:
            print(
                f"warning: {len(retried)} of {len(pairs)} follow requests answered {sorted(set(retried))} and "
                "succeeded when retried: a server bug under concurrent writes (see the server's log)"
            )
    return made


async def _all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


def _bearer(account: Account) -> dict[str, str]:
    return {"authorization": f"Bearer {account.token}"}


# ---- client processes ---------------------------------------------------------------------


def worker_main(job: WorkerJob, conn: Connection) -> None:
    """Entry point of one client process: ready, wait for the start time, load, report."""
    try:
        result = asyncio.run(_drive(job, conn))
        conn.send(("done", result))
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
    finally:
        conn.close()


async def _drive(job: WorkerJob, conn: Connection) -> WorkerResult:
    # One client, holding one keep-alive connection, per request in flight: httpx's
    # connection pool costs CPU that grows with the number of connections it holds
    # (encode/httpx#3215), and on a machine shared with the server that cost would be
    # measured as the server's.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=job.url, limits=limits, timeout=job.timeout_s, trust_env=False)
            )
            for _ in range(job.concurrency)
        ]
        conn.send(("ready", None))
        # The parent answers with a time on the monotonic clock, which Linux shares
        # between processes, so every client measures the same window.
        start_at: float = await asyncio.to_thread(conn.recv)
        window_start = start_at + job.warmup_s
        window_end = window_start + job.duration_s
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))

        latencies: list[float] = []
        errors: dict[str, int] = {}
        rng = random.Random(job.seed)
        request = _login_request(job) if job.scenario == "login" else _user_request(job)

        async def loop(client: httpx.AsyncClient) -> None:
            while (t0 := time.monotonic()) < window_end:
                method, path, kwargs = request(rng)
                error: str | None = None
                try:
                    resp = await client.request(method, path, **kwargs)
                    if not 200 <= resp.status_code < 300:
                        error = f"HTTP {resp.status_code}"
                except httpx.TimeoutException:
                    error = "timeout"
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                t1 = time.monotonic()
                if window_start <= t1 <= window_end:
                    if error is None:
                        latencies.append(t1 - t0)
                    else:
                        errors[error] = errors.get(error, 0) + 1
                if error is not None and not error.startswith("HTTP"):
                    await asyncio.sleep(ERROR_BACKOFF_S)

        cpu = asyncio.create_task(cpu_share(window_start, window_end))
        await asyncio.gather(*(loop(client) for client in clients))
        return WorkerResult(latencies_s=latencies, errors=errors, cpu_share=await cpu)


RequestArgs = tuple[str, str, dict[str, Any]]
RequestFactory = Callable[[random.Random], RequestArgs]


def _login_request(job: WorkerJob) -> RequestFactory:
    # Bodies are encoded once, so the loop spends its CPU on HTTP, not on JSON.
    bodies = [msgspec.json.encode({"identifier": a.username, "password": job.password}) for a in job.accounts]
    headers = {"content-type": "application/json"}

    def make(rng: random.Random) -> RequestArgs:
        return "POST", "/auth/login", {"content": rng.choice(bodies), "headers": headers}

    return make


def _user_request(job: WorkerJob) -> RequestFactory:
    viewers = [_bearer(a) for a in job.accounts]
    paths = [f"/users/{a.id}" for a in job.accounts]

    def make(rng: random.Random) -> RequestArgs:
        return "GET", rng.choice(paths), {"headers": rng.choice(viewers)}

    return make


# ---- one scenario -------------------------------------------------------------------------


def run_scenario(job: WorkerJob, procs: int, watch: ServerWatch | None) -> ScenarioResult:
    """Run `job` split over `procs` client processes; merge what they measured."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited loop or sockets
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        for i, share in enumerate(split_evenly(job.concurrency, procs)):
            parent, child = ctx.Pipe()
            part = msgspec.structs.replace(job, concurrency=share, seed=job.seed + i)
            client = ctx.Process(target=worker_main, args=(part, child), name=f"bench-client-{i}", daemon=True)
            client.start()
            child.close()
            workers.append((client, parent))
        for proc, conn in workers:
            expect_message(conn, proc, "ready", WORKER_START_TIMEOUT_S)
        start_at = time.monotonic() + 0.1
        for _, conn in workers:
            conn.send(start_at)
        window_start = start_at + job.warmup_s
        window_end = window_start + job.duration_s

        _sleep_until(window_start, watch)
        psutil.cpu_percent(None)  # starts the machine-wide measurement
        before = watch.snapshot() if watch is not None else None
        _sleep_until(window_end, watch)
        machine_busy = psutil.cpu_percent(None) / 100
        server = watch.usage(before, watch.snapshot()) if watch is not None and before is not None else None

        parts: list[WorkerResult] = [
            expect_message(conn, proc, "done", job.timeout_s + WORKER_START_TIMEOUT_S) for proc, conn in workers
        ]
    finally:
        stop_workers(workers)

    latency = summarize(sample for part in parts for sample in part.latencies_s)
    other: float | None = None
    if server is not None:
        cores = machine_busy * (os.cpu_count() or 1)
        other = max(0.0, cores - sum(p.cpu_share for p in parts) - _server_cores(server, job.duration_s))
    ok = latency.count if latency is not None else 0
    return ScenarioResult(
        scenario=job.scenario,
        concurrency=job.concurrency,
        procs=len(parts),
        duration_s=job.duration_s,
        ok=ok,
        throughput_rps=ok / job.duration_s,
        latency=latency,
        errors=merge_counts(part.errors for part in parts),
        client_cpu=[part.cpu_share for part in parts],
        machine_cpu_busy=machine_busy,
        server=server,
        other_cpu=other,
    )


def _sleep_until(deadline: float, watch: ServerWatch | None) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))
        if watch is not None:
            watch.sample_memory()


# ---- the report ---------------------------------------------------------------------------


def build_notes(results: Sequence[ScenarioResult], cpu_count: int, spawned: bool) -> list[str]:
    notes: list[str] = []
    if spawned:
        notes.append(f"server and client processes share the same {cpu_count} CPUs")
    for r in results:
        if r.scenario == "login":
            notes.append(LOGIN_NOTE)
        if r.client_bound:
            notes.append(
                f"{r.scenario}: client-bound: a client process used {max(r.client_cpu):.0%} of a core, so these "
                "figures measure the client as much as the server (add --procs, or run the client elsewhere)"
            )
        if r.machine_cpu_busy >= CLIENT_BOUND_CPU:
            notes.append(
                f"{r.scenario}: the machine's CPUs were {r.machine_cpu_busy:.0%} busy: the server did not have "
                "them to itself"
            )
        if spawned and r.server is not None and r.machine_cpu_busy >= SHARED_BUSY:
            server_cpu = _server_cores(r.server, r.duration_s)
            if sum(r.client_cpu) >= server_cpu:
                notes.append(
                    f"{r.scenario}: the clients used {sum(r.client_cpu):.0%} of a core in total against the server's "
                    f"{server_cpu:.0%} on the shared CPUs, so the client's own cost limits this figure"
                )
        if r.other_cpu is not None and r.other_cpu >= OTHER_CPU_NOTE:
            notes.append(
                f"{r.scenario}: processes outside the benchmark used {r.other_cpu:.0%} of a core in the window "
                '(the "others" column): the figures are lower than on a quiet machine'
            )
        if "HTTP 429" in r.errors:
            notes.append(f"{r.scenario}: {r.errors['HTTP 429']} answers were 429 rate_limited: {RATE_LIMIT_HINT}")
        if "HTTP 401" in r.errors and r.scenario == "user":
            notes.append(f"{r.scenario}: 401 answers: the access tokens from the sign-up may have expired")
    return notes


def format_report(report: Report) -> str:
    header = ["scenario", "in flight", "procs", "ok", "ok/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"]
    header += ["client CPU", "server CPU", "others", "machine CPU"]
    rows = [header]
    for r in report.results:
        lat = r.latency
        figures = [lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.max_ms] if lat is not None else []
        rows.append(
            [
                r.scenario,
                str(r.concurrency),
                str(r.procs),
                str(r.ok),
                f"{r.throughput_rps:.1f}",
                *([f"{v:.1f}" for v in figures] or ["-"] * 4),
                str(sum(r.errors.values())),
                " ".join(f"{share:.0%}" for share in r.client_cpu) + (" client-bound" if r.client_bound else ""),
                _server_cpu(r),
                f"{r.other_cpu:.0%}" if r.other_cpu is not None else "-",
                f"{r.machine_cpu_busy:.0%}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        f"socialhub HTTP benchmark, {report.started_at}, {report.url}"
        + (" (spawned: embedded PostgreSQL, rate limits off)" if report.spawned else ""),
        f"machine: {report.machine}; {report.background_cpu_busy:.0%} of the CPUs busy before the run",
        f"setup: {report.users} users, each following {report.follows}; {report.warmup_s:g} s warm-up, then "
        f"{report.duration_s:g} s measured per scenario",
        "",
    ]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(
        "CPU: share of one core over the measured window (client: per process; others: everything else on the "
        "machine); machine CPU: share of all cores busy."
    )
    for r in report.results:
        if r.errors:
            lines.append(f"{r.scenario} errors: " + ", ".join(f"{kind} x{n}" for kind, n in r.errors.items()))
    if report.server_total is not None:
        lines.append(_server_memory(report.server_total))
    if report.server_errors:
        lines.append(f"server log: {sum(report.server_errors.values())} error records:")
        lines.append(_error_lines(report.server_errors))
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def _server_cpu(r: ScenarioResult) -> str:
    if r.server is None:
        return "-"
    app = r.server.app_cpu_s / r.duration_s
    if r.server.postgres_cpu_s is None:
        return f"{app:.0%}"
    return f"{app:.0%} + pg {r.server.postgres_cpu_s / r.duration_s:.0%}"


def _error_lines(logged: dict[str, int]) -> str:
    return "\n".join(f"  {n} x {summary}" for summary, n in sorted(logged.items(), key=lambda item: -item[1]))


def _server_cores(usage: ServerUsage, duration_s: float) -> float:
    return (usage.app_cpu_s + (usage.postgres_cpu_s or 0.0)) / duration_s


def _server_memory(total: ServerUsage) -> str:
    cpu = f"{total.app_cpu_s:.1f} s"
    if total.postgres_cpu_s is not None:
        cpu += f" + {total.postgres_cpu_s:.1f} s in PostgreSQL"
    text = (
        f"server: socialhub process RSS {total.app_rss_mib:.0f} MiB at the end (peak seen {total.app_peak_rss_mib:.0f} "
        f"MiB); CPU time over the whole run (setup, warm-ups and windows) {cpu}"
    )
    if total.postgres_pss_mib is not None:
        text += f"; embedded PostgreSQL PSS {total.postgres_pss_mib:.0f} MiB"
    return text


# ---- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_bench", description="Login and GET /users/{id} throughput and latency."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server to measure (default %(default)s)")
    parser.add_argument("--spawn", action="store_true", help="start socialhub serve for the run (temp data dir)")
    parser.add_argument("--server-pid", type=int, help="pid of a running server, to report its CPU and memory")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: login, user")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight in total (default 50)")
    parser.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    parser.add_argument("--users", type=int, default=50, help="accounts to sign up (default 50)")
    parser.add_argument("--follows", type=int, default=5, help="accounts each one follows (default 5)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds (default 30)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--seed", type=int, help="for the random choices (default: random)")
    args = parser.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown or not scenarios:
        parser.error(f"--scenarios: unknown {', '.join(unknown) or '(none given)'} (known: {', '.join(SCENARIOS)})")
    args.scenarios = scenarios
    for name in ("concurrency", "procs", "users"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.users < 2 and "user" in scenarios:
        parser.error("--users must be at least 2")
    if args.duration <= 0 or args.warmup < 0 or args.timeout <= 0 or args.follows < 0:
        parser.error("--duration and --timeout must be positive, --warmup and --follows not negative")
    if args.spawn and args.server_pid is not None:
        parser.error("--server-pid is for a server you started; --spawn watches its own")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    password = f"bench-{secrets.token_urlsafe(12)}"
    spawned = SpawnedServer() if args.spawn else None
    url: str = spawned.url if spawned is not None else args.url.rstrip("/")
    results: list[ScenarioResult] = []
    total: ServerUsage | None = None
    server_errors: dict[str, int] = {}
    try:
        if spawned is not None:
            print(f"starting socialhub serve on {url} (data dir {spawned.data_dir}) ...", flush=True)
            spawned.start()
            assert spawned.proc is not None
            watch: ServerWatch | None = ServerWatch(spawned.proc.pid, spawned.data_dir / "postgres")
        else:
            watch = ServerWatch(args.server_pid) if args.server_pid is not None else None
        run_start = watch.snapshot() if watch is not None else None
        # Other work on the machine skews every figure; measure it once, before adding load.
        background = psutil.cpu_percent(interval=1.0) / 100

        print(f"setup: signing up {args.users} users, each following {args.follows} ...", flush=True)
        t0 = time.monotonic()
        accounts = asyncio.run(create_accounts(url, args.users, args.follows, password, random.Random(seed)))
        print(f"setup: done in {time.monotonic() - t0:.1f} s", flush=True)

        for scenario in args.scenarios:
            print(
                f"{scenario}: {args.warmup:g} s warm-up + {args.duration:g} s, {args.concurrency} in flight ...",
                flush=True,
            )
            job = WorkerJob(
                url=url,
                scenario=scenario,
                concurrency=args.concurrency,
                warmup_s=args.warmup,
                duration_s=args.duration,
                timeout_s=args.timeout,
                password=password,
                accounts=tuple(accounts),
                seed=seed,
            )
            results.append(run_scenario(job, args.procs, watch))
        if watch is not None and run_start is not None:
            total = watch.usage(run_start, watch.snapshot())
    except (SetupError, ServerStartError, WorkerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if spawned is not None and isinstance(exc, SetupError):
            logged = spawned.logged_errors()
            if logged:
                print("errors in the server's log:\n" + _error_lines(logged), file=sys.stderr)
            else:
                print(f"last lines of the server's log:\n{spawned.log_tail()}", file=sys.stderr)
        return 2
    except httpx.TransportError as exc:
        print(f"error: cannot reach {url} ({exc!r}); is the server running? (or use --spawn)", file=sys.stderr)
        return 2
    finally:
        if spawned is not None:
            server_errors = spawned.logged_errors()
            code = spawned.stop()
            print(f"server stopped with SIGTERM (exit code {code})", flush=True)

    cpu_count = os.cpu_count() or 1
    report = Report(
        started_at=started_at,
        url=url,
        spawned=spawned is not None,
        cpu_count=cpu_count,
        machine=machine_description(),
        background_cpu_busy=background,
        users=len(accounts),
        follows=args.follows,
        warmup_s=args.warmup,
        duration_s=args.duration,
        results=results,
        server_total=total,
        server_errors=server_errors,
        notes=build_notes(results, cpu_count, spawned is not None),
    )
    print()
    print(format_report(report))
    if args.json:
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
