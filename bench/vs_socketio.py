"""`vs-socketio`: socialhub side by side with the stack it replaces, a Socket.IO 4 + Redis
adapter chat server (bench/peers/socketio), measured by one Node driver (bench/peers/driver).

Rounds alternate (socialhub, Socket.IO, socialhub, ...), each on a fresh server, both on
the same Redis under key prefixes of their own (deleted after); socialhub on a throw-away
database of `--database-url` (or the embedded PostgreSQL), rate limits off. In each round,
on each side: `chat` (one-to-one, send -> receive at `--rate`), `fanout` (a room of
`--members`: server CPU per message and send -> last member), then `idle` (`--idle`
authenticated sockets: server RSS per socket). The report gives each round's figures,
then the table of every round merged with the ratios socialhub / Socket.IO.
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.peers.result import SIDES, IdleSample, RoundResult, WindowSamples, comparison, summarize_side
from bench.peers.servers import SocialhubSide, SocketIoSide, check_node
from bench.peers.windows import Pace, run_idle, run_messages
from bench.progress import Progress
from bench.report import Report, Section, Series, new_report
from bench.stats import LatencySummary, summarize
from bench.target import TargetError

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
# Between windows: socialhub publishes a user offline 5 s after their last socket closed
# (presence's grace); the next window starts after that, on both sides alike.
BETWEEN_WINDOWS_S = 6.0
# A driver process above this share of a core measures itself as much as the server.
CLIENT_BOUND = 0.9
# Other processes' CPU (cores) during a window above which its figures are flagged.
FOREIGN_CORES = 0.15

WHAT_EACH_DOES = [
    "per message, socialhub: checks the sender is a member of the room, stores the message in PostgreSQL "
    "with a gap-free per-room seq (idempotent by client_msg_id: a repeat is acked with the stored message), "
    "acks, publishes it to every instance through Redis, and notifies the members with no socket in the "
    "room (none here: every member has joined); its sockets carry presence. Socket.IO: verifies the JWT "
    "once at `authenticate`, then per message an RPUSH of its JSON to a Redis list, an emit to the room "
    "through the Redis adapter and the ack callback: no membership check, no seq, no idempotency, no "
    "notifications, nothing durable beyond Redis",
    "one Node driver (ws for socialhub's JSON frames, socket.io-client over the same ws package for the "
    "peer) paces, times and counts for both; a message is stamped when the driver's handler has it decoded",
    "server CPU: utime + stime of the server process from /proc/<pid>/stat from the first measured message "
    "to the window's end, divided by the measured messages (the warm-up, a tenth, is left out), and of it "
    "stime, the kernel's part (a socket write is a system call: one per recipient on both sides); "
    "PostgreSQL and Redis are shown apart in each window's cores (shared services: other "
    "people's work included)",
]


def add_options(p: argparse.ArgumentParser, scenario: str) -> None:
    p.add_argument("--rounds", type=int, default=2, help="rounds of each side, alternating (default 2)")
    p.add_argument("--members", type=int, default=1000, help="fan-out: receivers in the room (default 1000)")
    p.add_argument("--idle", type=int, default=5000, help="idle authenticated sockets (default 5000)")
    p.add_argument("--messages", type=int, default=200, help="messages sent in each chat and fan-out window (200)")
    p.add_argument("--rate", type=float, default=20.0, help="one-to-one: messages a second (default 20)")
    p.add_argument("--fanout-rate", type=float, default=4.0, help="fan-out: messages a second (default 4)")
    p.add_argument("--procs", type=int, default=2, help="driver processes for fan-out receivers and idle sockets (2)")
    p.add_argument("--hold", type=float, default=5.0, help="idle: seconds before RSS is read (default 5)")
    p.add_argument("--node", default="node", help="the Node.js executable (default: node on PATH)")
    p.add_argument("--keep-db", action="store_true", help="do not drop socialhub's throw-away databases")


def run(scenario: str, args: argparse.Namespace, progress: Progress) -> tuple[Report, Series]:
    _check(args)
    node = check_node(args.node)
    redis_url = args.redis or DEFAULT_REDIS
    secret = secrets.token_urlsafe(32)
    report = new_report(scenario, "")
    report.setup = {
        "rounds": args.rounds,
        "messages per window": args.messages,
        "one-to-one rate /s": args.rate,
        "fan-out members": args.members,
        "fan-out rate /s": args.fanout_rate,
        "idle sockets": args.idle,
        "driver procs": args.procs,
    }
    needed = max(args.idle, args.members + 1, 2)
    rounds: list[RoundResult] = []
    targets: list[str] = []
    for n in range(1, args.rounds + 1):
        for side_name in SIDES:
            with _side(side_name, args, node, redis_url, secret) as side:
                progress.say(f"round {n}: {SIDES[side_name]} on {side.url} (pid {side.pid}) ...")
                if n == 1:
                    targets.append(f"{SIDES[side_name]} {_describe(side_name, args, redis_url)}")
                t0 = time.monotonic()
                tokens = side.tokens(needed)
                if side_name == "socialhub":
                    report.setup[f"users seeded in s (round {n})"] = round(time.monotonic() - t0, 1)
                result = RoundResult(side=side_name, round=n)
                chat, fanout = _paces(args)
                progress.say(f"  one-to-one: {chat.messages} messages at {args.rate:g}/s ...")
                result.chat = run_messages(node, side, tokens, 1, chat, 1)
                time.sleep(BETWEEN_WINDOWS_S)
                progress.say(f"  fan-out: {fanout.messages} messages at {args.fanout_rate:g}/s to {args.members} ...")
                result.fanout = run_messages(node, side, tokens, args.members, fanout, args.procs)
                time.sleep(BETWEEN_WINDOWS_S)
                progress.say(f"  idle: {args.idle} authenticated sockets ...")
                result.idle = run_idle(node, side, tokens[: args.idle], args.procs, args.hold)
                result.logged_errors = side.logged_errors()
                rounds.append(result)
                report.sections.append(round_section(result))
                report.notes += round_notes(result)
    report.target = "; ".join(targets)
    ours, peer = summarize_side("socialhub", rounds), summarize_side("socketio", rounds)
    table, ratios = comparison(ours, peer, args.members)
    report.sections.append(table)
    report.notes += WHAT_EACH_DOES
    report.extra["ratios (socialhub / Socket.IO)"] = ratios
    report.extra["summaries"] = [ours, peer]
    return report, {}


def _check(args: argparse.Namespace) -> None:
    if args.url or args.server_pid or args.jwt_secret:
        raise TargetError("vs-socketio starts a fresh server per round: leave out --url, --server-pid, --jwt-secret")
    if args.kafka:
        raise TargetError("vs-socketio has no Kafka path: leave out --kafka")
    if args.rounds < 1 or args.members < 1 or args.idle < 1 or args.messages < 1 or args.procs < 1:
        raise TargetError("--rounds, --members, --idle, --messages and --procs must be at least 1")
    if args.rate <= 0 or args.fanout_rate <= 0:
        raise TargetError("--rate and --fanout-rate must be more than 0")


def _paces(args: argparse.Namespace) -> tuple[Pace, Pace]:
    # At most a tenth of the messages (and 100) are left out of the latencies as warm-up.
    warmup = min(100, args.messages // 10)
    return Pace(args.messages, 1 / args.rate, warmup), Pace(args.messages, 1 / args.fanout_rate, warmup)


@contextmanager
def _side(
    name: str, args: argparse.Namespace, node: str, redis_url: str, secret: str
) -> Iterator[SocialhubSide | SocketIoSide]:
    if name == "socialhub":
        with SocialhubSide(args.database_url, redis_url, secret, args.keep_db) as side:
            yield side
    else:
        with SocketIoSide(node, redis_url, secret) as peer:
            yield peer


def _describe(name: str, args: argparse.Namespace, redis_url: str) -> str:
    if name == "socialhub":
        db = f"a throw-away database on {args.database_url}" if args.database_url else "the embedded PostgreSQL"
        return f"(socialhub serve, rate limits off, {db}, Redis {redis_url})"
    return f"(node bench/peers/socketio/server.js: Socket.IO 4.8 + @socket.io/redis-adapter 8, Redis {redis_url})"


def round_section(r: RoundResult) -> Section:
    figures: dict[str, object] = {}
    latency: dict[str, LatencySummary] = {}
    for label, w in (("one-to-one", r.chat), ("fan-out", r.fanout)):
        if w is None:
            continue
        figures[f"{label}: sent, measured, deliveries lost"] = f"{w.sent}, {w.measured}, {w.lost}"
        figures[f"{label}: server CPU per measured message ms"] = round(w.server_cpu_s * 1000 / max(w.measured, 1), 3)
        if w.server_system_s is not None:
            figures[f"{label}: of which in the kernel ms"] = round(w.server_system_s * 1000 / max(w.measured, 1), 3)
        figures[f"{label}: cores over {w.wall_s:.1f} s"] = ", ".join(f"{k} {v:.2f}" for k, v in w.cores.items())
        figures[f"{label}: driver processes (share of a core)"] = ", ".join(f"{c:.0%}" for c in w.driver_cpu)
        if w.closed:
            figures[f"{label}: sockets closed by the server"] = w.closed
        _latencies(latency, label, w)
    if r.idle is not None:
        i = r.idle
        figures["idle: sockets connected"] = f"{i.connected} of {i.sockets}"
        figures["idle: server RSS MiB before, after"] = f"{i.rss_before_mib:.1f}, {i.rss_after_mib:.1f}"
        figures["idle: RSS per socket KiB"] = _per_socket(i)
        figures["idle: connect + authenticate p50 ms"] = i.connect_p50_ms
        if i.errors:
            figures["idle: errors"] = i.errors
    if r.logged_errors:
        figures["server logged errors"] = r.logged_errors
    return Section(f"round {r.round}: {SIDES[r.side]}", figures, latency)


def _latencies(out: dict[str, LatencySummary], label: str, w: WindowSamples) -> None:
    last = "send -> receive" if w.members == 1 else f"send -> last of {w.members} members"
    for name, samples in ((last, w.latency_s), ("send -> ack", w.ack_s)):
        s = summarize(samples)
        if s is not None:
            out[f"{label}: {name}"] = s
    if w.members > 1:
        each = summarize(w.each_s)
        if each is not None:
            out[f"{label}: send -> each delivery"] = each


def _per_socket(i: IdleSample) -> float | None:
    return round((i.rss_after_mib - i.rss_before_mib) * 1024 / i.connected, 1) if i.connected else None


def round_notes(r: RoundResult) -> list[str]:
    notes = []
    where = f"round {r.round}, {SIDES[r.side]}"
    for label, w in (("one-to-one", r.chat), ("fan-out", r.fanout)):
        if w is None:
            continue
        bound = [c for c in w.driver_cpu if c > CLIENT_BOUND]
        if bound:
            notes.append(f"{where}, {label}: a driver process used {max(bound):.0%} of a core: client-bound")
        foreign = w.cores.get("others", 0.0) + w.cores.get("unattributed", 0.0)
        if foreign > FOREIGN_CORES:
            notes.append(f"{where}, {label}: other processes used {foreign:.2f} cores during the window")
    return notes
