"""REST scenarios: `rest-read`, `rest-write`, `login`, each with its bare-Starlette ceiling.

Every scenario seeds its data set with SQL (bench.seed), then runs one measured window
per phase (one kind of request each, so each row of the table is one route), then the
ceiling: the same client settings against a bare Starlette app that answers with the
bytes the real server gave for the scenario's headline route (a feed page for
`rest-read`, a created post for `rest-write`, a login answer for `login`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import secrets
import statistics
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from bench.ceiling import CeilingServer
from bench.load import PhaseJob, PhaseResult, PhaseRun, run_phase, split_url
from bench.progress import Progress
from bench.rawhttp import RawHttpConnection, encode_request
from bench.report import Comparison, Report, Series, client_notes, command_line, machine_description, now_utc
from bench.seed import DataSet, SizeSpec, default_hasher, seed
from bench.server import ServerWatch
from bench.stats import LatencySummary, summarize
from bench.target import Target, TargetError

# Connections of the background like writer (`--likes-per-s`).
WRITER_LANES = 20
# Pre-encoded requests per phase; the client draws from them at random.
REQUEST_POOL = 4000
# Headline phase of each scenario: the one compared with the ceiling.
HEADLINE = {"rest-read": "feed", "rest-write": "post", "login": "login"}
PHASES = {
    "rest-read": ("feed", "post", "user"),
    "rest-write": ("post", "like", "follow"),
    "login": ("login",),
}
# argon2id verifications timed in this process to show the hash's cost on its own.
ARGON2_SAMPLES = 5


def add_options(p: argparse.ArgumentParser, scenario: str) -> None:
    defaults = SizeSpec()
    procs = max(2, os.cpu_count() or 2)
    p.add_argument("--procs", type=int, default=procs, help=f"client processes (default {procs}: the CPUs, at least 2)")
    p.add_argument("--concurrency", type=int, default=10 if scenario == "login" else 50, help="requests in flight")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    p.add_argument("--timeout", type=float, default=30.0, help="per request (default 30 s)")
    p.add_argument("--phases", help=f"comma-separated subset of: {', '.join(PHASES[scenario])}")
    p.add_argument("--users", type=int, default=200 if scenario == "login" else defaults.users)
    p.add_argument("--follows", type=int, default=defaults.follows_per_user, help="follows per user")
    p.add_argument("--posts", type=int, default=defaults.posts_per_user, help="posts per user")
    p.add_argument("--likes", type=int, default=defaults.likes_per_post, help="likes per post (on average)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the bare-Starlette ceiling")
    p.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="windows of the headline phase and of the ceiling, alternating, both servers up (default 1); "
        "with more, the share of the ceiling is given per pair and as their median (the VM's speed drifts)",
    )
    if scenario == "rest-read":
        p.add_argument(
            "--likes-per-s",
            type=float,
            default=0.0,
            help="while the read phases run, a writer process likes and unlikes the newest posts at this rate "
            "(each change invalidates what shows the post; default 0: reads only)",
        )


def read_requests(phase: str, data: DataSet, host: str, port: int, rng: random.Random) -> list[bytes]:
    accounts = data.accounts
    pool = min(REQUEST_POOL, len(accounts) * 20)

    def auth(i: int) -> dict[str, str]:
        return {"authorization": f"Bearer {accounts[i].token}"}

    if phase == "feed":
        return [encode_request(host, port, "GET", "/feed", auth(i)) for i in range(len(accounts))]
    if phase == "post":
        return [
            encode_request(host, port, "GET", f"/posts/{rng.choice(data.post_ids)}", auth(rng.randrange(len(accounts))))
            for _ in range(pool)
        ]
    if phase == "user":
        # A random profile seen by another random user (follow state and counters included).
        return [
            encode_request(
                host, port, "GET", f"/users/{rng.choice(accounts).user_id}", auth(rng.randrange(len(accounts)))
            )
            for _ in range(pool)
        ]
    raise ValueError(f"unknown read phase {phase}")


def write_requests(phase: str, data: DataSet, host: str, port: int, rng: random.Random) -> list[bytes]:
    accounts = data.accounts
    pool = min(REQUEST_POOL, len(accounts) * 20)
    json_ct = {"content-type": "application/json"}

    def auth(i: int) -> dict[str, str]:
        return {"authorization": f"Bearer {accounts[i].token}"}

    if phase == "post":
        return [
            encode_request(
                host,
                port,
                "POST",
                "/posts/",
                auth(i % len(accounts)) | json_ct,
                msgspec.json.encode({"content": f"bench post {i}: " + "lorem ipsum " * (1 + i % 8)}),
            )
            for i in range(pool)
        ]
    if phase == "like":
        # Liking a post twice is idempotent (200), so repeats in the pool are harmless.
        return [
            encode_request(
                host, port, "POST", f"/posts/like/{rng.choice(data.post_ids)}", auth(rng.randrange(len(accounts)))
            )
            for _ in range(pool)
        ]
    if phase == "follow":
        out = []
        for _ in range(pool):
            who, whom = rng.sample(range(len(accounts)), 2)
            out.append(encode_request(host, port, "POST", f"/users/follow/{accounts[whom].user_id}", auth(who)))
        return out
    if phase == "login":
        return [
            encode_request(
                host,
                port,
                "POST",
                "/auth/login",
                json_ct,
                msgspec.json.encode({"identifier": a.username, "password": data.password}),
            )
            for a in accounts
        ]
    raise ValueError(f"unknown write phase {phase}")


def argon2_cost_ms() -> float:
    """Median time of one argon2id verification at the server's default cost, in this process."""
    hasher = default_hasher()
    stored = hasher.hash("x")
    times = []
    for _ in range(ARGON2_SAMPLES):
        t0 = time.perf_counter()
        hasher.verify(stored, "x")
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1000


def run(scenario: str, args: argparse.Namespace, progress: Progress) -> tuple[Report, Series]:
    phases = _phases(scenario, args.phases)
    rng = random.Random(args.seed)
    runs: dict[str, PhaseRun] = {}
    ceiling: list[PhaseResult] = []
    comparisons: list[Comparison] = []
    pairs: list[tuple[PhaseResult, PhaseResult]] = []  # the headline's and the ceiling's windows after the first
    notes: list[str] = []
    extra: dict[str, object] = {}
    size = SizeSpec(users=args.users, follows_per_user=min(args.follows, args.users - 1),
                    posts_per_user=args.posts, likes_per_post=args.likes)  # fmt: skip
    with Target(args) as target:
        db_url, secret = target.require_database()
        progress.say(
            f"seeding {size.users} users, {size.follows_per_user} follows each, {size.posts_per_user} posts each, "
            f"~{size.likes_per_post} likes per post (SQL) ..."
        )
        t0 = time.monotonic()
        data = asyncio.run(seed(db_url, secret, size, secrets.token_hex(3), f"bench-{secrets.token_urlsafe(9)}"))
        seeded_s = time.monotonic() - t0
        progress.say(
            f"seeded in {seeded_s:.1f} s: {data.follows} follows, {len(data.post_ids)} posts, {data.likes} likes"
        )
        run_start = target.watch.snapshot() if target.watch is not None else None
        host, port = split_url(target.url)
        if scenario == "rest-read" and "feed" in phases:
            # Every user's first page is read once, unmeasured by the windows: the
            # windows then show a server that has been up (timelines built, read cache
            # warm), and this pass shows the cold reads.
            progress.say(f"cold pass: the first feed page of each of the {len(data.accounts)} users, once ...")
            requests = [encode_request(host, port, "GET", "/feed", {"authorization": f"Bearer {a.token}"})
                        for a in data.accounts]  # fmt: skip
            cold, cold_s, cold_errors = asyncio.run(first_reads(host, port, requests, args.concurrency))
            extra["cold_pass"] = {"requests": len(requests), "seconds": round(cold_s, 2), "errors": cold_errors,
                                  "latency": msgspec.to_builtins(cold)}  # fmt: skip
            if cold is not None:
                notes.append(
                    f"cold pass (each user's first feed page once, {args.concurrency} in flight, before the windows): "
                    f"{len(requests)} requests in {cold_s:.1f} s, p50 {cold.p50_ms:.1f} ms, p99 {cold.p99_ms:.1f} ms, "
                    f"max {cold.max_ms:.1f} ms, {cold_errors} errors"
                )
        writer = None
        if getattr(args, "likes_per_s", 0.0) > 0:
            writer = LikeWriter(host, port, like_requests(data, host, port, rng), args.likes_per_s)
            progress.say(f"a writer likes and unlikes the newest posts at {args.likes_per_s:g}/s during the phases")
        with writer or contextlib.nullcontext():
            for phase in phases:
                build = read_requests if scenario == "rest-read" else write_requests
                job = _job(args, host, port, build(phase, data, host, port, rng), rng)
                runs[phase] = run_phase(phase, job, args.procs, target.watch, progress)
        if writer is not None:
            extra["background_writes"] = {"per_s": args.likes_per_s, "sent": writer.sent, "errors": writer.errors}
            notes.append(
                f"during the phases a writer process sent {writer.sent} likes/unlikes of the newest posts "
                f"({args.likes_per_s:g}/s asked), {writer.errors} errors"
            )
        headline = HEADLINE[scenario]
        body = runs[headline].body if headline in runs else b""
        if not args.no_ceiling and body:
            # The ceiling runs while socialhub is still up (idle), so that more pairs can
            # alternate the two: each pair sees the same moment of the machine.
            progress.say(f"ceiling: bare Starlette serving the {len(body)} bytes of a {headline} answer ...")
            with CeilingServer("http", body) as bare:
                chost, cport = split_url(bare.url)
                # The ceiling answers any path; the same requests keep the client's work identical.
                requests = runs_requests(scenario, headline, data, chost, cport, rng)
                c = run_phase(f"{headline} (bare Starlette)", _job(args, chost, cport, requests, rng), args.procs,
                              _watch(bare), progress)  # fmt: skip
                shares = [_share(runs[headline].result, c.result)]
                build = read_requests if scenario == "rest-read" else write_requests
                for k in range(2, args.pairs + 1):
                    again = run_phase(f"{headline} (pair {k})", _job(args, host, port, build(headline, data, host,
                                      port, rng), rng), args.procs, target.watch, progress)  # fmt: skip
                    bare_again = run_phase(f"{headline} (bare Starlette, pair {k})", _job(args, chost, cport,
                                           requests, rng), args.procs, _watch(bare), progress)  # fmt: skip
                    pairs.append((again.result, bare_again.result))
                    shares.append(_share(again.result, bare_again.result))
            ceiling.append(c.result)
            runs[c.result.name] = c
            mine = runs[headline].result
            comparisons.append(Comparison(f"{headline} req/s", mine.throughput_rps, c.result.throughput_rps))
            if mine.latency is not None and c.result.latency is not None:
                comparisons.append(Comparison(f"{headline} p99", mine.latency.p99_ms, c.result.latency.p99_ms, False))
            if len(shares) > 1:
                extra["pairs"] = [round(x, 3) for x in shares]
                notes.append(
                    f"{headline} req/s as a share of the ceiling, pair by pair (socialhub's window, then the "
                    f"ceiling's): {', '.join(f'{x:.0%}' for x in shares)}; median {statistics.median(shares):.0%}"
                )
        total = target.watch.usage(run_start, target.watch.snapshot()) if target.watch and run_start else None
        server_errors = target.logged_errors()
    if scenario == "login":
        cost = argon2_cost_ms()
        extra["argon2_verify_ms"] = round(cost, 1)
        notes.append(
            f"argon2id alone: one verification at the server's default cost takes {cost:.0f} ms in this process "
            f"(one thread, 4 lanes); so about {1000 / cost * 1:.0f} logins/s per fully used core is the hash's "
            "bound, whatever the HTTP stack does — the cost is on purpose (password guessing)"
        )
    notes += client_notes([r.result for r in runs.values()])
    server: dict[str, object] = {}
    if total is not None:
        server["RSS MiB (end)"] = round(total.app_rss_mib)
        server["peak RSS MiB"] = round(total.app_peak_rss_mib)
        server["CPU s over the run"] = round(total.app_cpu_s, 1)
        if total.postgres_cpu_s is not None:
            server["PostgreSQL CPU s"] = round(total.postgres_cpu_s, 1)
    if server_errors:
        server["logged errors"] = server_errors
    report = Report(
        scenario=scenario,
        command=command_line(),
        started_at=now_utc(),
        machine=machine_description(),
        target=target.description,
        setup={
            "users": size.users,
            "follows": data.follows,
            "posts": len(data.post_ids),
            "likes": data.likes,
            "seeded in s": round(seeded_s, 1),
            "client procs": args.procs,
            "warm-up s": args.warmup,
            "window s": args.duration,
        },
        phases=[runs[p].result for p in phases] + [mine for mine, _ in pairs],
        ceiling=ceiling + [bare for _, bare in pairs],
        comparisons=comparisons,
        server=server,
        notes=notes,
        extra=extra,
    )
    return report, {name: r.samples for name, r in runs.items()}


def like_requests(data: DataSet, host: str, port: int, rng: random.Random) -> list[tuple[bytes, bytes]]:
    """(like, unlike) request pairs: random users on the newest posts (those on first pages)."""
    newest = sorted(data.post_ids, key=int)[-min(2000, len(data.post_ids)) :]
    pairs = []
    for _ in range(REQUEST_POOL):
        headers = {"authorization": f"Bearer {rng.choice(data.accounts).token}"}
        path = f"/posts/like/{rng.choice(newest)}"
        pairs.append(
            (encode_request(host, port, "POST", path, headers), encode_request(host, port, "DELETE", path, headers))
        )
    return pairs


class LikeWriter:
    """A process that sends like then unlike requests at a steady rate until closed."""

    def __init__(self, host: str, port: int, pairs: list[tuple[bytes, bytes]], per_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._counts = ctx.Array("q", 2)
        self._proc = ctx.Process(target=_write_likes, args=(host, port, pairs, per_s, self._stop, self._counts))
        self.sent = 0
        self.errors = 0

    def __enter__(self) -> LikeWriter:
        self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._proc.join(30)
        self.sent, self.errors = self._counts[0], self._counts[1]


def _write_likes(host: str, port: int, pairs: list[tuple[bytes, bytes]], per_s: float, stop: Any, counts: Any) -> None:
    # Several connections, each at its share of the rate: one answer waiting behind the
    # reads does not hold the others back.
    lanes = max(1, min(WRITER_LANES, int(per_s // 10) or 1))

    async def lane(k: int) -> None:
        client = RawHttpConnection(host, port)
        interval = lanes / per_s
        next_at = time.perf_counter() + k * interval / lanes
        i = 0
        while not stop.is_set():
            like, unlike = pairs[(k + lanes * (i // 2)) % len(pairs)]
            try:
                status, _ = await client.send(like if i % 2 == 0 else unlike)
                counts[0] += 1
                counts[1] += status != 200
            except OSError:
                counts[1] += 1
            i += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await client.close()

    async def run() -> None:
        await asyncio.gather(*(lane(k) for k in range(lanes)))

    asyncio.run(run())


async def first_reads(
    host: str, port: int, requests: list[bytes], concurrency: int
) -> tuple[LatencySummary | None, float, int]:
    """Send each request once, `concurrency` at a time: (latencies, seconds, errors)."""
    queue = list(reversed(requests))
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        client = RawHttpConnection(host, port)
        try:
            while queue:
                raw = queue.pop()
                t = time.perf_counter()
                try:
                    status, _ = await client.send(raw)
                except OSError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t)
                errors += status != 200
        finally:
            await client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(latencies), time.perf_counter() - started, errors


def runs_requests(scenario: str, phase: str, data: DataSet, host: str, port: int, rng: random.Random) -> list[bytes]:
    build = read_requests if scenario == "rest-read" else write_requests
    return build(phase, data, host, port, rng)


def _job(args: argparse.Namespace, host: str, port: int, requests: list[bytes], rng: random.Random) -> PhaseJob:
    return PhaseJob(
        host=host,
        port=port,
        requests=requests,
        concurrency=args.concurrency,
        warmup_s=args.warmup,
        duration_s=args.duration,
        timeout_s=args.timeout,
        seed=rng.randrange(2**31),
    )


def _share(mine: PhaseResult, bare: PhaseResult) -> float:
    """socialhub's req/s as a share of the ceiling's in one pair of windows."""
    return mine.throughput_rps / bare.throughput_rps if bare.throughput_rps else 0.0


def _watch(server: CeilingServer) -> ServerWatch | None:
    return ServerWatch(server.proc.pid) if server.proc is not None else None


def _phases(scenario: str, chosen: str | None) -> Sequence[str]:
    known = PHASES[scenario]
    if not chosen:
        return known
    picked = [p.strip() for p in chosen.split(",") if p.strip()]
    unknown = [p for p in picked if p not in known]
    if unknown or not picked:
        raise TargetError(f"--phases: unknown {', '.join(unknown) or '(none)'} (known: {', '.join(known)})")
    return picked
