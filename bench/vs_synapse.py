"""`vs-synapse`: socialhub's one-to-one chat latency beside Matrix Synapse's, on this
machine, in one run.

Rounds alternate (socialhub, Synapse, socialhub, ...), each on a fresh server with a
database of its own on `--database-url` (dropped after): `socialhub serve` (rate limits
off, no Redis unless `--redis`: one process, as Synapse without workers), and Synapse
from its own venv (bench/peers/synapse/.venv) with a generated config
(bench.peers.matrix). In each round two users A and B share a room; A sends
`--messages` at `--rate`, B listens (socialhub: its socket; Synapse: the /sync
long-poll); latency = A's send start -> B has the message decoded, in this one process
(bench.peers.one_to_one). The report gives each round's figures, then the table of every
round merged with the ratios socialhub / Synapse and the goal (p99 ratio <= 0.10).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from bench.peers import one_to_one
from bench.peers.one_to_one import Pace
from bench.peers.synapse_result import SIDES, ChatWindow, comparison, summarize_side
from bench.peers.synapse_server import DbCounter, SynapseSide, synapse_python, synapse_version
from bench.progress import Progress
from bench.report import Report, Section, Series, new_report
from bench.server import ServerStartError, ThrowawayDatabase, free_port
from bench.stats import LatencySummary, summarize
from bench.target import TargetError
from bench.ws.accounts import create_room, seed_accounts
from bench.ws.servers import BenchServer, drop_redis_keys

# Other processes' CPU (cores) during a window above which its figures are flagged.
FOREIGN_CORES = 0.15
CLIENT_BOUND = 0.9
# PostgreSQL (a shared service) above this many cores during a side's window: others'
# queries (each side's own use at 20 messages a second: socialhub ~0.01, Synapse ~0.15).
BUSY_POSTGRES = {"socialhub": 0.2, "synapse": 0.3}

WHAT_EACH_DOES = [
    "per message, socialhub: A's send_message frame on its socket; the server checks A is a member of the "
    "room in the same statement that stores the message durably in PostgreSQL with a gap-free per-room seq "
    "(idempotent by client_msg_id), acks A on its socket, publishes the message on its in-process pub/sub "
    "(Redis with --redis) to every socket that joined the room (B's: one new_message frame), and stores "
    "notifications for members with no socket in the room after the ack (A's own message: none)",
    "per message, Synapse: A's PUT /_matrix/client/v3/rooms/{room}/send/m.room.message/{txn} over HTTP/1.1 "
    "(the access token looked up, the txn id checked for a retry), the event built and signed, its auth "
    "checked against the room's state (membership, power levels), its push rules evaluated for B (and "
    "push actions stored), the event persisted in PostgreSQL (events, event_json, the room's stream and "
    "state tables) and the PUT answered with its event_id; the notifier then wakes B's pending /sync "
    "long-poll, which computes B's incremental sync (filtered to the room's timeline) and answers it; "
    "B's client sends the next /sync with the new since token",
    "one Python process holds both clients of a side (socialhub: two sockets of bench.ws.client; Synapse: "
    "two httpx HTTP/1.1 keep-alive clients); A sends open loop on a fixed schedule; a message is stamped "
    "when B's frame or /sync answer is JSON-decoded, A's send when the frame is written or the PUT task "
    "created (time.monotonic(), one clock)",
    "server CPU: utime + stime of the server process from /proc/<pid>/stat, from just before the first "
    "measured message to the window's end (the warm-up tenth left out), divided by the measured messages; "
    "PostgreSQL is in each window's cores (a shared service: other people's queries included)",
]


def add_options(p: argparse.ArgumentParser, scenario: str) -> None:
    p.add_argument("--rounds", type=int, default=2, help="rounds of each side, alternating (default 2)")
    p.add_argument("--messages", type=int, default=200, help="messages A sends per window (default 200)")
    p.add_argument("--rate", type=float, default=20.0, help="messages a second (default 20)")
    p.add_argument("--ports", default="", help="LO-HI: the servers' ports from this range (default: any free port)")
    p.add_argument("--presence", action="store_true", help="Synapse: presence on (default off, see the README)")
    p.add_argument("--keep-db", action="store_true", help="do not drop the throw-away databases")


def run(scenario: str, args: argparse.Namespace, progress: Progress) -> tuple[Report, Series]:
    _check(args)
    python = synapse_python()  # before anything starts: without the venv, say how to install it
    version = synapse_version(python)
    ports = _port_range(args.ports)
    secret = secrets.token_urlsafe(32)
    warmup = min(100, args.messages // 10)
    pace = Pace(args.messages, 1 / args.rate, warmup)
    report = new_report(scenario, "")
    report.target = (
        f"socialhub (socialhub serve, rate limits off, a throw-away database on {args.database_url}, "
        f"{'Redis ' + args.redis if args.redis else 'no Redis'}); Synapse {version} (one process, "
        f"a throw-away database on {args.database_url}, presence {'on' if args.presence else 'off'})"
    )
    report.setup = {"rounds": args.rounds, "messages per window": args.messages, "rate /s": args.rate,
                    "warm-up messages": warmup}  # fmt: skip
    windows: dict[str, list[ChatWindow]] = {side: [] for side in SIDES}
    for n in range(1, args.rounds + 1):
        for side in SIDES:
            tag = f"r{n}{secrets.token_hex(3)}"
            if side == "socialhub":
                with _socialhub(args, secret, _free_port(ports)) as (server, tokens, room_id):
                    server.db_counter.start()
                    progress.say(f"round {n}: socialhub on {server.url} (pid {server.pid}): "
                                 f"{pace.messages} messages at {args.rate:g}/s ...")  # fmt: skip
                    w = one_to_one.run(one_to_one.socialhub_window(server.url, server.pid, tokens, room_id, pace, tag))
                    errors = server.logged_errors()
                counter = server.db_counter
            else:
                with SynapseSide(python, args.database_url, _free_port(ports), args.presence, args.keep_db) as syn:
                    a, b = asyncio.run(one_to_one.synapse_users(syn.url, syn.shared_secret, tag))
                    room_id = asyncio.run(one_to_one.direct_room(syn.url, a, b))
                    syn.db_counter.start()
                    progress.say(f"round {n}: Synapse on {syn.url} (pid {syn.pid}): "
                                 f"{pace.messages} messages at {args.rate:g}/s ...")  # fmt: skip
                    w = one_to_one.run(one_to_one.synapse_window(syn.url, syn.pid, a, b, room_id, pace, tag))
                    errors = syn.logged_errors()
                counter = syn.db_counter
            pg = counter.per_message(w.sent)
            if pg is not None:
                w.pg_xacts_per_message, w.pg_rows_per_message = round(pg[0], 2), round(pg[1], 2)
            windows[side].append(w)
            report.sections.append(round_section(side, n, w, errors))
            report.notes += round_notes(side, n, w)
    ours, peer = summarize_side("socialhub", windows["socialhub"]), summarize_side("synapse", windows["synapse"])
    table, ratios, verdict = comparison(ours, peer)
    report.sections.append(table)
    report.notes += [*synapse_notes(windows["synapse"], args.presence), *WHAT_EACH_DOES]
    report.extra["ratios (socialhub / Synapse)"] = ratios
    report.extra["goal"] = verdict
    report.extra["summaries"] = [ours, peer]
    return report, {}


def _check(args: argparse.Namespace) -> None:
    if args.url or args.server_pid or args.jwt_secret:
        raise TargetError("vs-synapse starts a fresh server per round: leave out --url, --server-pid, --jwt-secret")
    if args.kafka:
        raise TargetError("vs-synapse has no Kafka path: leave out --kafka")
    if not args.database_url:
        raise TargetError("vs-synapse needs --database-url (e.g. postgresql://127.0.0.1/test): Synapse and "
                          "socialhub each get a throw-away database there")  # fmt: skip
    if args.rounds < 1 or args.messages < 1:
        raise TargetError("--rounds and --messages must be at least 1")
    if args.rate <= 0:
        raise TargetError("--rate must be more than 0")


def _port_range(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    lo, sep, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi)
    except ValueError:
        raise TargetError(f"--ports wants LO-HI, e.g. 18000-18999, not {text!r}") from None
    if not sep or not 1024 <= first <= last <= 65535:
        raise TargetError(f"--ports wants LO-HI within 1024-65535, not {text!r}")
    return first, last


def _free_port(ports: tuple[int, int] | None) -> int:
    """A port nothing listens on: from `ports` (tried from a random start), or any."""
    if ports is None:
        return free_port()
    lo, hi = ports
    start = secrets.randbelow(hi - lo + 1)
    for i in range(hi - lo + 1):
        port = lo + (start + i) % (hi - lo + 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ServerStartError(f"no free port in {lo}-{hi}")


class _Socialhub:
    def __init__(self, server: BenchServer, db_counter: DbCounter) -> None:
        self.server, self.db_counter = server, db_counter
        self.url = server.url
        assert server.proc is not None
        self.pid = server.proc.pid

    def logged_errors(self) -> dict[str, int]:
        return self.server.logged_errors()


@contextmanager
def _socialhub(args: argparse.Namespace, secret: str, port: int) -> Iterator[tuple[_Socialhub, tuple[str, str], str]]:
    """A fresh `socialhub serve` on a throw-away database, two users and their direct room."""
    db = ThrowawayDatabase(args.database_url, "socialhub_vssyn_", keep=args.keep_db)
    settings = {"SOCIALHUB_AUTH_JWT_SECRET": secret, "SOCIALHUB_DATABASE_URL": db.create()}
    prefix = f"vssyn:{secrets.token_hex(4)}:"
    if args.redis:
        settings |= {"SOCIALHUB_REDIS_URL": args.redis, "SOCIALHUB_REDIS_KEY_PREFIX": prefix}
    server = BenchServer(settings)
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    counter = DbCounter(args.database_url, db.name)
    try:
        server.start()
        a, b = asyncio.run(seed_accounts(db.url, secret, 2, secrets.token_hex(3)))
        room_id = create_room(server.url, a, [b], None)
        yield _Socialhub(server, counter), (a.token, b.token), room_id
    finally:
        server.stop()
        counter.stop()
        db.drop()
        if args.redis:
            asyncio.run(drop_redis_keys(args.redis, prefix))


def round_section(side: str, n: int, w: ChatWindow, logged_errors: dict[str, int]) -> Section:
    figures: dict[str, object] = {
        "sent, measured, lost": f"{w.sent}, {w.measured}, {w.lost}",
        "server CPU per measured message ms": round(w.server_cpu_s * 1000 / max(w.measured, 1), 3),
        f"cores over {w.wall_s:.1f} s": ", ".join(f"{k} {v:.2f}" for k, v in w.cores.items()),
        "client process (share of a core)": f"{w.client_cpu:.0%}",
        "pacer's latest send, ms late": w.max_send_lag_ms,
    }
    if w.pg_xacts_per_message is not None:
        figures["PostgreSQL per message: transactions, rows written"] = (
            f"{w.pg_xacts_per_message:g}, {w.pg_rows_per_message:g}"
        )
    if side == "synapse":
        per = w.delivered_in_wakeups / w.wakeups if w.wakeups else 0.0
        figures["/sync answers holding measured messages, messages per answer"] = f"{w.wakeups}, {per:.2f}"
        if w.limited:
            figures["/sync answers with a cut (limited) timeline"] = w.limited
    if w.errors:
        figures["send errors"] = w.errors
    if logged_errors:
        figures["server logged errors"] = logged_errors
    latency: dict[str, LatencySummary] = {}
    for label, samples in (
        ("send (A) -> received (B)", w.latency_s),
        ("send (A) -> ack (A)", w.ack_s),
        ("ack (A) -> received (B)", w.after_ack_s),
    ):
        s = summarize(samples)
        if s is not None:
            latency[label] = s
    return Section(f"round {n}: {SIDES[side]}", figures, latency)


def round_notes(side: str, n: int, w: ChatWindow) -> list[str]:
    notes = []
    where = f"round {n}, {SIDES[side]}"
    if w.client_cpu > CLIENT_BOUND:
        notes.append(f"{where}: the client process used {w.client_cpu:.0%} of a core: client-bound")
    foreign = w.cores.get("others", 0.0) + w.cores.get("unattributed", 0.0)
    if foreign > FOREIGN_CORES:
        notes.append(f"{where}: other processes used {foreign:.2f} cores during the window")
    pg = w.cores.get("postgres", 0.0)
    if pg > BUSY_POSTGRES[side]:
        notes.append(
            f"{where}: PostgreSQL used {pg:.2f} cores during the window (each side's own use at 20 "
            "messages a second is ~0.01 for socialhub and ~0.15 for Synapse): other people's queries, "
            "which slow every commit of the side measured"
        )
    return notes


def synapse_notes(windows: list[ChatWindow], presence: bool) -> list[str]:
    wakeups = sum(w.wakeups for w in windows)
    delivered = sum(w.delivered_in_wakeups for w in windows)
    notes = [
        f"Synapse presence {'on' if presence else 'off'}: "
        + (
            "as asked (--presence)"
            if presence
            else "off by default, because it is not on the message path: with it on, A's sends mark A active "
            "and B's /sync can be woken for presence changes its filter then drops, which only adds noise "
            "to a message latency; socialhub's presence changes on connect and disconnect only, "
            "outside the window"
        ),
        "Synapse's log is at WARNING (no per-request access log) and its rate limits are lifted; one "
        "process, no workers, no Redis",
    ]
    if wakeups:
        notes.append(
            f"Synapse: {wakeups} /sync answers held the {delivered} measured messages B got "
            f"({delivered / wakeups:.2f} per answer): above 1, a message waited for B's next /sync request "
            "(it came while the previous answer was on its way or being decoded)"
        )
    return notes
