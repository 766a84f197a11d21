"""Socket scenarios: `ws-idle` and `ws-chat`, each with its bare `websockets` ceiling.

`ws-idle`: `--sockets` authenticated sockets held by one server; its RSS per socket and
connects/s, then the same client processes against a bare `websockets` server that
answers the same frames (bench.ceiling ws-idle, bench.ws_ceiling.measure_idle).
`ws-chat`: the `chat` window (A sends to B in a direct room; with `--redis`, B is on a
second instance) and the `fanout` window (one sender, a room of `--members`), then the
same sends through a bare `websockets` relay (bench.ceiling ws, bench.ws_ceiling.measure).

Accounts are not signed up (10,000 argon2id hashes): users and sessions go in with SQL
and tokens are signed with the server's secret (bench.ws.accounts). Without `--url` the
servers are started here (one; two on one Redis with `--redis`), on the embedded
PostgreSQL or a throw-away database of `--database-url`. The parts live in bench/ws/.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec

from bench.ceiling import CeilingServer
from bench.progress import Progress
from bench.report import Comparison, Report, Section, Series, new_report
from bench.server import ServerStartError, ThrowawayDatabase
from bench.target import TargetError
from bench.ws.accounts import seed_accounts
from bench.ws.idle import run_idle
from bench.ws.messages import Pace, run_messages
from bench.ws.result import SocketResult, build_notes, section
from bench.ws.servers import BenchServer, Target, drop_redis_keys, server_pid
from bench.ws.workers import raise_nofile
from bench.ws_ceiling import RelayResult, measure, measure_idle

WINDOWS = ("chat", "fanout")
# Per window of ws-chat: messages, seconds between sends, messages left out first, receiving
# client processes. One-to-one at 100/s shows the p99 of one message among many; fan-out
# at 4/s leaves the server time to walk the room between messages.
DEFAULT_PACE = {"chat": (2000, 0.01, 100, 1), "fanout": (100, 0.25, 10, 3)}
IDLE_PROCS = 4


def add_options(p: argparse.ArgumentParser, scenario: str) -> None:
    if scenario == "ws-idle":
        p.add_argument("--sockets", type=int, default=10_000, help="idle sockets (default 10000)")
        p.add_argument("--hold", type=float, default=5.0, help="seconds they stay open (default 5)")
        p.add_argument("--procs", type=int, default=IDLE_PROCS, help=f"client processes (default {IDLE_PROCS})")
        p.add_argument("--no-ceiling", action="store_true", help="skip the bare websockets server")
    else:
        p.add_argument("--phases", help="comma-separated subset of: chat, fanout (default both)")
        p.add_argument("--members", type=int, default=1000, help="fanout: receiving members (default 1000)")
        p.add_argument("--messages", type=int, help="messages sent (chat 2000, fanout 100)")
        p.add_argument("--interval", type=float, help="seconds between sends (chat 0.01, fanout 0.25)")
        p.add_argument("--warmup", type=int, help="first messages left out (chat 100, fanout 10; at most a tenth)")
        p.add_argument("--procs", type=int, help="fanout: receiving client processes (default 3)")
        p.add_argument("--profile", metavar="DIR", help="py-spy record each server during each window into DIR")
        p.add_argument("--no-ceiling", action="store_true", help="skip the bare websockets relay")
        p.add_argument(
            "--same-server",
            action="store_true",
            help="with --redis: every receiver on the sender's server (delivery without the trip through Redis)",
        )
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate, as browsers do")
    p.add_argument("--keep-db", action="store_true", help="do not drop the throw-away database")


def run(scenario: str, args: argparse.Namespace, progress: Progress) -> tuple[Report, Series]:
    if args.kafka:
        raise TargetError(f"{scenario} has no Kafka path: leave out --kafka")
    if args.url and not (args.database_url and args.jwt_secret):
        raise TargetError("--url needs --database-url (the server's database) and --jwt-secret")
    if args.url and args.redis and len(args.url) < 2:
        raise TargetError("--redis with --url needs two --url")
    windows = _windows(args.phases) if scenario == "ws-chat" else ()
    if "fanout" in windows and args.members < 1:
        raise TargetError("--members must be at least 1 (or leave fanout out: --phases chat)")
    nofile = raise_nofile()
    progress.say(f"RLIMIT_NOFILE of the benchmark (inherited by a spawned server): {nofile}")
    needed = args.sockets if scenario == "ws-idle" else (args.members + 1 if "fanout" in windows else 2)
    report = new_report(scenario, "")
    with _servers(args, progress) as servers:
        targets = servers.targets
        report.target = ", ".join(f"{t.url} (pid {t.pid})" for t in targets)
        t0 = time.monotonic()
        accounts = asyncio.run(seed_accounts(servers.db_url, servers.secret, needed, secrets.token_hex(3)))
        report.setup["users and sessions"] = len(accounts)
        report.setup["seeded in s"] = round(time.monotonic() - t0, 1)
        if scenario == "ws-idle":
            progress.say(f"{len(accounts)} idle sockets from {args.procs} client processes ...")
            results = [run_idle(targets, [a.token for a in accounts], args.procs, args.hold, args.deflate)]
        else:
            results = []
            for window in windows:
                pace = _pace(args, window)
                who = accounts if window == "fanout" else accounts[:2]
                progress.say(f"{window}: {pace.messages} messages every {pace.interval * 1000:g} ms to "
                             f"{len(who) - 1} member(s) ...")  # fmt: skip
                results.append(run_messages(pace, targets, who, fanout=window == "fanout"))
        for i, server in enumerate(servers.started, 1):
            logged = server.logged_errors()
            if logged:
                report.server[f"server {i} logged errors"] = logged
    for result in results:
        _add(report, result, f"socialhub {result.scenario}")
    if not args.no_ceiling:
        if scenario == "ws-idle":
            _idle_ceiling(report, results[0], args, progress)
        else:
            _relay_ceiling(report, results, args, progress)
    report.extra["series"] = {r.scenario: r.series for r in results if r.series}
    return report, {}


def _add(report: Report, result: SocketResult, title: str) -> None:
    report.sections.append(section(result, title))
    report.notes += [f"{title}: {note}" for note in build_notes(result)]


def _idle_ceiling(report: Report, mine: SocketResult, args: argparse.Namespace, progress: Progress) -> None:
    # The same client processes as the socialhub run, so that both connect alike.
    procs = len(mine.client_cpu_share) or 1
    progress.say(f"ceiling: bare websockets server, {args.sockets} idle sockets from {procs} client processes ...")
    bare = measure_idle(args.sockets, procs, args.hold)
    _add(report, bare, "ceiling: bare websockets server (bench.ceiling ws-idle)")
    rss, connects = "rss_per_socket_kib", "connects_per_s"
    if mine.figures.get(rss) and bare.figures.get(rss):
        report.comparisons.append(Comparison("RSS per idle socket", mine.figures[rss], bare.figures[rss], False,
                                             unit=" KiB"))  # fmt: skip
    if mine.figures.get(connects) and bare.figures.get(connects):
        report.comparisons.append(Comparison("connects/s", mine.figures[connects], bare.figures[connects]))


def _relay_ceiling(report: Report, results: list[SocketResult], args: argparse.Namespace, progress: Progress) -> None:
    with CeilingServer("ws") as relay:
        for mine in results:
            pace = _pace(args, mine.scenario)
            members = args.members if mine.scenario == "fanout" else 1
            progress.say(f"ceiling: bare websockets relay, {mine.scenario}, {pace.messages} messages ...")
            bare = measure(relay.port, members, pace.messages, pace.interval, pace.warmup, pace.procs)
            report.sections.append(_relay_section(bare, mine.scenario))
            key = f"send -> last of {members} members" if mine.scenario == "fanout" else "send (A) -> new_message (B)"
            own = mine.latency.get(key)
            if own is None or bare.last_member is None:
                continue
            what = "one-to-one" if mine.scenario == "chat" else f"fan-out {key}"
            if mine.scenario == "chat":
                report.comparisons.append(Comparison(f"{what} p50", own.p50_ms, bare.last_member.p50_ms, False))
            report.comparisons.append(Comparison(f"{what} p99", own.p99_ms, bare.last_member.p99_ms, False))


def _relay_section(bare: RelayResult, window: str) -> Section:
    latency = {}
    last = "send (A) -> B" if bare.members == 1 else f"send -> last of {bare.members} members"
    if bare.last_member is not None:
        latency[last] = bare.last_member
    if bare.each_delivery is not None and bare.members > 1:
        latency["send -> each delivery"] = bare.each_delivery
    return Section(f"ceiling {window}: bare websockets relay (bench.ceiling ws)",
                   {"receivers": bare.members, "deliveries_lost": bare.lost}, latency)  # fmt: skip


def _windows(chosen: str | None) -> tuple[str, ...]:
    if not chosen:
        return WINDOWS
    picked = tuple(w.strip() for w in chosen.split(",") if w.strip())
    unknown = [w for w in picked if w not in WINDOWS]
    if unknown or not picked:
        raise TargetError(f"--phases: unknown {', '.join(unknown) or '(none)'} (known: {', '.join(WINDOWS)})")
    return picked


def _pace(args: argparse.Namespace, window: str) -> Pace:
    messages, interval, warmup, procs = DEFAULT_PACE[window]
    messages = args.messages or messages
    # Without --warmup, at most a tenth of the messages are left out (a short run keeps most).
    warmup = args.warmup if args.warmup is not None else min(warmup, messages // 10)
    return Pace(
        messages=messages,
        interval=args.interval if args.interval is not None else interval,
        warmup=max(0, min(warmup, messages - 1)),
        procs=(args.procs or procs) if window == "fanout" else procs,
        deflate=args.deflate,
        profile=args.profile,
        same_server=args.same_server,
    )


class Servers(msgspec.Struct):
    targets: list[Target]  # what the clients connect to
    db_url: str  # where users and sessions are inserted
    secret: str  # the servers' JWT secret
    started: list[BenchServer]  # those started here (none with --url)


@contextmanager
def _servers(args: argparse.Namespace, progress: Progress) -> Iterator[Servers]:
    """The servers measured, the database to seed and the JWT secret: running ones
    (`--url`), or started here and stopped, their database dropped, their Redis keys
    deleted when the run ends."""
    if args.url:
        count = 2 if args.redis else 1
        targets = [Target(u.rstrip("/"), server_pid(u, args.server_pid, i)) for i, u in enumerate(args.url[:count])]
        yield Servers(targets, args.database_url, args.jwt_secret, [])
        return
    servers: list[BenchServer] = []
    database: ThrowawayDatabase | None = None
    redis_prefix = f"wsbench:{secrets.token_hex(4)}:"  # the spawned servers' keys, deleted after
    secret = secrets.token_urlsafe(32)
    settings = {"SOCIALHUB_AUTH_JWT_SECRET": secret}
    try:
        if args.database_url:
            database = ThrowawayDatabase(args.database_url, "socialhub_wsbench_", keep=args.keep_db)
            settings["SOCIALHUB_DATABASE_URL"] = database.create()
        if args.redis:
            settings["SOCIALHUB_REDIS_URL"] = args.redis
            settings["SOCIALHUB_REDIS_KEY_PREFIX"] = redis_prefix
        first = BenchServer(settings)
        servers.append(first)
        progress.say(f"starting socialhub serve on {first.url} ...")
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
            progress.say(f"starting a second socialhub serve on {second.url} (same database, same Redis) ...")
            second.start()
        db_url = settings.get("SOCIALHUB_DATABASE_URL") or first.embedded_url()
        if db_url is None:
            raise ServerStartError("cannot find the embedded PostgreSQL of the server")
        targets = [Target(s.url, s.proc.pid if s.proc else None) for s in servers]
        yield Servers(targets, db_url, secret, servers)
    finally:
        for server in reversed(servers):
            server.stop()
        if database is not None:
            database.drop()
        if servers and args.redis:
            asyncio.run(drop_redis_keys(args.redis, redis_prefix))
