"""Realtime scenarios: `ws-idle`, `ws-chat`, `post-to-feed`, `calls`.

The socket and post-to-feed measurements live in their own modules (bench.ws_bench,
bench.post_to_feed), which keep working on their own; here they are run as child
processes with the options of the one entry point, their JSON is read back, and the
figures join the common report, with the ceilings measured in the same run:
`ws-idle` the same sockets held by a bare `websockets` server, `ws-chat` the same sends
through a bare `websockets` relay (bench.ceiling, bench.ws_ceiling).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from bench.ceiling import CeilingServer
from bench.progress import Progress
from bench.report import Comparison, Report, command_line, machine_description, now_utc
from bench.ws import report as ws_report
from bench.ws_ceiling import measure, measure_idle

Series = dict[str, list[tuple[float, float]]]


def add_parsers(
    sub: Any,
    described: dict[str, str],
    add_target_options: Callable[[argparse.ArgumentParser], None],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser("ws-idle", help=described["ws-idle"])
    add_target_options(p)
    p.add_argument("--sockets", type=int, default=10_000, help="idle sockets (default 10000)")
    p.add_argument("--hold", type=float, default=5.0, help="seconds they stay open (default 5)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the bare websockets server")
    common(p)

    p = sub.add_parser("ws-chat", help=described["ws-chat"])
    add_target_options(p)
    p.add_argument("--members", type=int, default=1000, help="fan-out room members (default 1000; 0: skip fan-out)")
    p.add_argument("--messages", type=int, help="one-to-one: 2000, fan-out: 100")
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate, as browsers do")
    p.add_argument("--no-ceiling", action="store_true", help="skip the bare websockets relay")
    common(p)

    p = sub.add_parser("post-to-feed", help=described["post-to-feed"])
    add_target_options(p)
    p.add_argument("--followers", type=int, default=20)
    p.add_argument("--posts", type=int, default=200)
    p.add_argument("--rate", type=float, default=5.0)
    p.add_argument("--sample", type=int, default=0, help="followers polled per post (0: all)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the bare in-memory feed")
    common(p)

    p = sub.add_parser("calls", help=described["calls"])
    add_target_options(p)
    p.add_argument("--calls", type=int, default=50, help="calls in all, each between a fresh pair (default 50)")
    p.add_argument("--concurrency", type=int, default=5, help="calls at a time (default 5)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a call may take to connect (default 30)")
    p.add_argument("--hold", type=float, default=0.0, help="seconds a connected call lasts before the hangup")
    common(p)


def _target_args(args: argparse.Namespace, redis_twice: bool, kafka: bool) -> list[str]:
    """The server options for a child module; `redis_twice`: it takes `--redis URL` (else
    `--redis-url URL`); `kafka`: it has `--kafka` (bench.ws_bench has not)."""
    out: list[str] = []
    if args.url:
        out += ["--url", args.url]
    if args.server_pid:
        out += ["--server-pid", str(args.server_pid)]
    if args.jwt_secret:
        out += ["--jwt-secret", args.jwt_secret]
    if args.database_url:
        out += ["--database-url", args.database_url]
    if args.redis:
        out += ["--redis", args.redis] if redis_twice else ["--redis-url", args.redis]
    if args.kafka and kafka:
        out.append("--kafka")
    return out


def _child(module: str, argv: list[str], progress: Progress) -> dict[str, Any] | None:
    """Run `python -m bench.<module> ...` with --json; its output goes straight through."""
    with tempfile.TemporaryDirectory(prefix="socialhub-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", f"bench.{module}", *argv, "--json", str(out)]
        progress.say("running: " + " ".join(cmd[1:]))
        code = subprocess.call(cmd)
        if code != 0 or not out.exists():
            print(f"error: bench.{module} exited with {code}", file=sys.stderr)
            return None
        data: dict[str, Any] = msgspec.json.decode(out.read_bytes())
        return data


def _report(scenario: str, target: str, extra: dict[str, object], comparisons: list[Comparison]) -> Report:
    return Report(
        scenario=scenario,
        command=command_line(),
        started_at=now_utc(),
        machine=machine_description(),
        target=target,
        setup={},
        phases=[],
        ceiling=[],
        comparisons=comparisons,
        server={},
        notes=[],
        extra=extra,
    )


def run(scenario: str, args: argparse.Namespace, progress: Progress) -> tuple[Report, Series] | None:
    module = {"ws-idle": "ws_bench", "ws-chat": "ws_bench", "calls": "calls_bench"}.get(scenario, "post_to_feed")
    target = args.url or f"started by bench.{module}"
    if scenario.startswith("ws") and args.kafka:
        print(f"error: {scenario} has no Kafka path (bench.ws_bench has no --kafka)", file=sys.stderr)
        return None
    if scenario == "ws-idle":
        return _ws_idle(args, progress, target)
    if scenario == "ws-chat":
        return _ws_chat(args, progress, target)
    if scenario == "post-to-feed":
        return _post_to_feed(args, progress, target)
    if scenario == "calls":
        # bench.calls_bench: aiortc peers driven only by their own sockets (its table prints first).
        argv = ["--calls", str(args.calls), "--concurrency", str(args.concurrency), "--procs", str(args.procs)]
        argv += ["--timeout", str(args.timeout), "--hold", str(args.hold), *_target_args(args, True, kafka=True)]
        data = _child("calls_bench", argv, progress)
        if data is None:
            return None
        report = _report(scenario, str(data.get("target") or target), {"calls_bench": data}, [])
        report.notes.append("the calls table of bench.calls_bench is printed above; the JSON holds every figure")
        return report, {}
    raise ValueError(scenario)


def _post_to_feed(args: argparse.Namespace, progress: Progress, target: str) -> tuple[Report, Series] | None:
    if args.url:
        print("error: post-to-feed starts its own server (bench.post_to_feed has no --url)", file=sys.stderr)
        return None
    load = ["--followers", str(args.followers), "--posts", str(args.posts), "--rate", str(args.rate)]
    load += ["--sample", str(args.sample)]
    argv = [*load, *_target_args(args, False, kafka=True)]
    data = _child("post_to_feed", argv, progress)
    if data is None:
        return None
    extra: dict[str, object] = {"post_to_feed": data}
    comparisons: list[Comparison] = []
    if not args.no_ceiling:
        # The same client and load against a feed that is readable when the POST is handled.
        bare = _child("post_to_feed", [*load, "--ceiling"], progress)
        if bare is None:
            return None
        extra["ceiling"] = bare
        for key, label in (("first_follower", "first polled follower"), ("all_followers", "all polled followers")):
            mine, floor = data.get(key), bare.get(key)
            if not (mine and floor):
                continue
            for pct in ("p50", "p99"):
                what = f"write -> visible, {label} {pct}"
                comparisons.append(Comparison(what, mine[f"{pct}_ms"], floor[f"{pct}_ms"], higher_is_better=False))
    report = _report("post-to-feed", target, extra, comparisons)
    if comparisons:
        report.notes.append(
            "ceiling: bench.ceiling feed, an in-memory list the POST appends to, so its figures are the floor of "
            "the method (POST round trip + first poll within one interval + one GET); the rest is socialhub's pipeline"
        )
    return report, {}


def _ws_idle(args: argparse.Namespace, progress: Progress, target: str) -> tuple[Report, Series] | None:
    argv = ["idle", "--sockets", str(args.sockets), "--hold", str(args.hold), *_target_args(args, True, kafka=False)]
    data = _child("ws_bench", argv, progress)
    if data is None:
        return None
    extra: dict[str, object] = {"ws_bench idle": data}
    comparisons: list[Comparison] = []
    if not args.no_ceiling:
        # The same client processes as the socialhub run, so that both connect alike.
        procs = len(data["client_cpu_share"]) or 1
        progress.say(f"ceiling: bare websockets server, {args.sockets} idle sockets from {procs} client processes ...")
        bare = measure_idle(args.sockets, procs, args.hold)
        bare.machine = ws_report.machine_description()
        bare.command = f"bench.ceiling ws-idle (bare websockets server), {args.sockets} sockets, {procs} client procs"
        bare.notes = ws_report.build_notes(bare)
        print(ws_report.format_report(bare))
        extra["ceiling"] = msgspec.to_builtins(bare)
        mine, floor = data["figures"], bare.figures
        rss, connects = "rss_per_socket_kib", "connects_per_s"
        if mine.get(rss) and floor.get(rss):
            comparisons.append(Comparison("RSS per idle socket", mine[rss], floor[rss], False, unit=" KiB"))
        if mine.get(connects) and floor.get(connects):
            comparisons.append(Comparison("connects/s", mine[connects], floor[connects]))
    report = _report("ws-idle", target, extra, comparisons)
    report.notes.append("socket figures of bench.ws_bench (and of the ceiling) are printed above; the JSON holds them")
    return report, {}


def _ws_chat(args: argparse.Namespace, progress: Progress, target: str) -> tuple[Report, Series] | None:
    extra: dict[str, object] = {}
    comparisons: list[Comparison] = []
    common = _target_args(args, True, kafka=False) + (["--deflate"] if args.deflate else [])
    chat_messages = args.messages or 2000
    chat = _child("ws_bench", ["chat", "--messages", str(chat_messages), *common], progress)
    if chat is None:
        return None
    extra["one-to-one"] = chat
    fan: dict[str, Any] | None = None
    fan_messages = args.messages or 100
    if args.members > 0:
        fan = _child("ws_bench", ["fanout", "--members", str(args.members), "--messages", str(fan_messages), *common],
                     progress)  # fmt: skip
        if fan is None:
            return None
        extra["fan-out"] = fan
    if not args.no_ceiling:
        with CeilingServer("ws") as relay:
            progress.say(f"ceiling: bare websockets relay, one-to-one, {chat_messages} messages every 10 ms ...")
            one = measure(relay.port, 1, chat_messages, 0.01, min(100, chat_messages // 10), 1)
            extra["ceiling one-to-one"] = msgspec.to_builtins(one)
            mine = chat["latency"].get("send (A) -> new_message (B)")
            if mine and one.last_member:
                comparisons.append(Comparison("one-to-one p50", mine["p50_ms"], one.last_member.p50_ms, False))
                comparisons.append(Comparison("one-to-one p99", mine["p99_ms"], one.last_member.p99_ms, False))
            if fan is not None:
                progress.say(f"ceiling: bare websockets relay, fan-out to {args.members}, {fan_messages} messages ...")
                many = measure(relay.port, args.members, fan_messages, 0.25, min(10, fan_messages // 10), args.procs)
                extra["ceiling fan-out"] = msgspec.to_builtins(many)
                key = f"send -> last of {args.members} members"
                mine = fan["latency"].get(key)
                if mine and many.last_member:
                    comparisons.append(Comparison(f"fan-out {key} p99", mine["p99_ms"], many.last_member.p99_ms, False))
    report = _report("ws-chat", target, extra, comparisons)
    report.notes.append("socket figures and notes of bench.ws_bench are printed above; the JSON holds them all")
    return report, {}
