"""`asgi-cpu`: the CPU a REST read costs inside socialhub's ASGI app, with no HTTP server
and no sockets: the app made as `socialhub serve` makes it, its lifespan started in this
process, a seeded data set, then requests handed to the app one after another and timed
with `time.process_time()`. Beside it, the bare-Starlette ceiling app of `rest-read`
(bench/ceiling.py `http_app`) answering the same bytes, timed the same way, in rounds
that alternate with socialhub's; and the floor, a plain ASGI callable answering those
bytes with no framework (what Starlette's own layers cost is the ceiling less it).

What `rest-read` measures end to end (uvicorn, the kernel's sockets, the client processes)
swings by tens of percent with the VM's other work; this figure holds to a few percent,
so a change on the request path can be compared before and after (run it on each tree,
alternating). It is the app's part only: uvicorn's HTTP protocol and the socket writes,
paid alike by socialhub and the ceiling, are not in it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable
from typing import Any, TextIO

from starlette.types import ASGIApp, Receive, Scope, Send

from bench.progress import Progress
from bench.report import Report, Section, Series, new_report
from bench.seed import SizeSpec, seed
from bench.server import ThrowawayDatabase
from bench.target import TargetError

PHASES = ("feed", "post", "user")


def add_options(p: argparse.ArgumentParser, scenario: str) -> None:
    p.add_argument("--phases", default="feed", help=f"comma-separated subset of: {', '.join(PHASES)} (default feed)")
    p.add_argument("--requests", type=int, default=20_000, help="requests a round (default 20000)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per phase; the median is reported (7)")
    p.add_argument("--users", type=int, default=500, help="seeded users (default 500; follows, posts as rest-read)")


def scope_of(method: str, path: str, token: str | None) -> dict[str, Any]:
    """An HTTP scope as uvicorn makes it for a request from 127.0.0.1."""
    headers = [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http", "root_path": "",
        "method": method, "path": path, "raw_path": path.encode(), "query_string": b"", "headers": headers,
    }  # fmt: skip


class Caller:
    """Hands requests to an ASGI app and keeps what the last one answered."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app, self.state = app, state
        self.status, self.body, self.errors = 0, b"", 0

    async def _receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    async def call(self, scope: dict[str, Any]) -> None:
        # Each request its own copy of the scope and of the lifespan state, as uvicorn gives.
        self.body = b""
        await self.app({**scope, "state": dict(self.state)}, self._receive, self._send)  # type: ignore[arg-type]
        if self.status != 200:
            self.errors += 1

    async def timed(self, scopes: list[dict[str, Any]], n: int, rounds: int, rng: random.Random) -> list[float]:
        """µs of this process's CPU per request, one figure per round of `n` random picks."""
        out = []
        for _ in range(rounds):
            picks = [rng.choice(scopes) for _ in range(n)]
            started = time.process_time()
            for scope in picks:
                await self.call(scope)
            out.append((time.process_time() - started) / n * 1e6)
        return out


def plain_app(body: bytes) -> ASGIApp:
    """The least an ASGI app can do per request: answer `body`, no framework at all."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _summary(samples: list[float]) -> str:
    rounds = ", ".join(f"{s:.1f}" for s in samples)
    return f"median {statistics.median(samples):.2f}, min {min(samples):.2f} (rounds: {rounds})"


async def _measure(
    args: argparse.Namespace, db_url: str, phases: list[str], progress: Progress, sink: TextIO
) -> Report:
    # Imported here: the server's modules, made and started in this process.
    from bench.ceiling import http_app
    from socialhub.app import create_app
    from socialhub.cli import tune_gc
    from socialhub.config import load_settings, with_overrides
    from socialhub.logs import setup_logging

    rng = random.Random(args.seed)
    secret = secrets.token_hex(32)
    report = new_report("asgi-cpu", "socialhub's ASGI app in this process (no HTTP server, no sockets)")
    with tempfile.TemporaryDirectory() as data_dir:
        settings = with_overrides(
            load_settings(env={}), server={"data_dir": data_dir}, auth={"jwt_secret": secret},
            database={"url": db_url}, ratelimit={"enabled": False},
        )  # fmt: skip
        setup_logging("info")  # the access log on, as `socialhub serve` has it
        app = create_app(settings)
        # The access log's lines go nowhere: they would flood the terminal.
        with contextlib.redirect_stderr(sink):
            async with app.router.lifespan_context(app):
                tune_gc()  # as `socialhub serve` does once started
                size = SizeSpec(users=args.users)
                data = await seed(db_url, secret, size, "ac" + secrets.token_hex(2), "bench-password-1")
                accounts = data.accounts
                by_phase = {
                    "feed": [scope_of("GET", "/feed", a.token) for a in accounts],
                    "post": [scope_of("GET", f"/posts/{rng.choice(data.post_ids)}", rng.choice(accounts).token)
                             for _ in range(len(accounts) * 4)],
                    "user": [scope_of("GET", f"/users/{rng.choice(accounts).user_id}", rng.choice(accounts).token)
                             for _ in range(len(accounts) * 4)],
                }  # fmt: skip
                caller = Caller(app, {})
                for phase in phases:
                    for scope in by_phase[phase]:  # warm: every request once (caches filled)
                        await caller.call(scope)
                    # The ceiling answers the bytes of this phase's last answer, for any request.
                    ceiling = Caller(http_app(caller.body), {})  # type: ignore[arg-type]
                    floor = Caller(plain_app(caller.body), {})
                    bare = [scope_of("GET", by_phase[phase][0]["path"], None)]
                    caller.errors = 0
                    ours, theirs, least = [], [], []
                    # Rounds alternate (socialhub, ceiling, socialhub, ...): the VM's speed drifts by
                    # tens of percent over minutes, and each pair sees the same moment.
                    for _ in range(args.rounds):
                        ours += await caller.timed(by_phase[phase], args.requests, 1, rng)
                        theirs += await ceiling.timed(bare, args.requests, 1, rng)
                        least += await floor.timed(bare, args.requests, 1, rng)
                    own = [a - b for a, b in zip(ours, theirs, strict=True)]
                    report.sections.append(Section(title=f"GET {phase}: CPU a request in the app, µs", figures={
                        "socialhub": _summary(ours), "ceiling (bare Starlette, the same bytes)": _summary(theirs),
                        "socialhub's own (socialhub - ceiling, round by round)": _summary(own),
                        "floor: a plain ASGI callable answering the same bytes": _summary(least),
                        "bytes an answer": len(caller.body), "answers other than 200": caller.errors,
                    }))  # fmt: skip
                    progress.say(
                        f"{phase}: socialhub {statistics.median(ours):.2f} µs, ceiling {statistics.median(theirs):.2f}"
                        f" µs CPU a request (medians)"
                    )
    report.setup = {"users": args.users, "requests a round": args.requests, "rounds": args.rounds, "phases": phases}
    report.notes.append(
        "CPU of this one process (time.process_time) per request, the app's part only: no uvicorn, no sockets "
        "(both paid alike by socialhub and the ceiling in rest-read); access log on (written to /dev/null), "
        "rate limits off, the garbage collector tuned as `socialhub serve` tunes it"
    )
    return report


def run(scenario: str, args: argparse.Namespace, progress: Progress) -> tuple[Report, Series]:
    if args.url:
        raise TargetError("asgi-cpu runs the app in this process: --url does not apply")
    if not args.database_url:
        raise TargetError("asgi-cpu needs --database-url (a PostgreSQL to make a throw-away database on)")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown or not phases:
        raise TargetError(f"--phases: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PHASES)}")
    with ThrowawayDatabase(args.database_url) as db, open(os.devnull, "w") as sink:  # start-up migrates db
        report = _uvloop_run(_measure(args, db.url, phases, progress, sink))
    return report, {}


def _uvloop_run(coro: Awaitable[Report]) -> Report:
    """On uvloop, as `socialhub serve` runs."""
    import uvloop

    return uvloop.run(coro)  # type: ignore[arg-type]
