"""`chat` and `fanout`: one sender, receivers in a room, send -> `new_message` latency.

`chat`: A sends `--messages` `send_message` at `--interval` in a direct room; the
figure is send -> B's `new_message` (with two servers, B is on server 2). `fanout`: a
room of `--members` receivers plus the sender, every one joined; per message, send ->
the first, median and last member's `new_message` (receivers alternate over the
servers). Both are open loop: sends never wait for acks; the first `--warmup` messages
are left out.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec

from bench.stats import LatencySummary, merge_counts, percentile, split_evenly, summarize
from bench.ws.accounts import Account, create_room
from bench.ws.machine import Probe, Profiler, rss_mib
from bench.ws.result import SocketResult, ms, rounded
from bench.ws.servers import Target, hostport
from bench.ws.workers import DRAIN_S, Worker, WorkerJob, check_ready, finish

# The issues' goals, p99 of send -> receive: to the last of 1,000 members; one-to-one on
# one instance; one-to-one across two instances (through Redis).
GOAL_FANOUT_MEMBERS = 1000
GOAL_FANOUT_P99_MS = 50.0
GOAL_CHAT_P99_MS = 5.0
GOAL_CHAT_TWO_P99_MS = 10.0

Series = dict[str, list[float | None]]  # per measured message, in send order (ms)


class Pace(msgspec.Struct, frozen=True):
    """How one `chat` or `fanout` window sends, and how it is watched."""

    messages: int
    interval: float  # seconds between sends
    warmup: int  # first messages left out of the figures
    procs: int  # receiving client processes (fan-out; `chat` has one receiver process per server)
    deflate: bool
    profile: str | None  # directory for py-spy's output, or None
    # With two servers: every receiver on the sender's (delivered there without a trip
    # through Redis) rather than spread with `chat`'s B on server 2.
    same_server: bool = False


def run_messages(pace: Pace, targets: list[Target], accounts: list[Account], fanout: bool) -> SocketResult:
    """`accounts[0]` sends to a room of the others (`chat`: one other) over one window."""
    tag = "m" + secrets.token_hex(3)
    sender, receivers = accounts[0], accounts[1:]
    room_id = create_room(targets[0].url, sender, receivers, f"bench {tag}" if fanout else None)
    # Receivers alternate over the servers (chat with --redis: B is on server 2), or
    # all sit on the sender's.
    by_server: list[list[Account]] = [[] for _ in targets]
    for i, acc in enumerate(receivers):
        by_server[0 if pace.same_server else (i + (1 if len(targets) > 1 else 0)) % len(targets)].append(acc)
    jobs: list[WorkerJob] = []
    procs_per_server = max(1, pace.procs // len(targets)) if fanout else 1
    for target, accs in zip(targets, by_server, strict=True):
        host, port = hostport(target.url)
        start = 0
        for n in split_evenly(len(accs), min(procs_per_server, max(1, len(accs)))) if accs else []:
            tokens = [a.token for a in accs[start : start + n]]
            jobs.append(WorkerJob("receiver", host, port, tokens, pace.deflate, room_id, tag))
            start += n
    host, port = hostport(targets[0].url)
    sender_job = WorkerJob(
        "sender", host, port, [sender.token], pace.deflate, room_id, tag, pace.messages, pace.interval
    )
    workers = [Worker(job) for job in jobs]
    _, errors = check_ready(workers, len(receivers))
    sender_worker = Worker(sender_job)
    s_ready, s_errors = check_ready([sender_worker], 1)
    if not s_ready[0].connected:
        raise RuntimeError(f"the sender could not connect: {s_errors}")
    everyone = [*workers, sender_worker]
    time.sleep(1.0)
    window = pace.messages * pace.interval + DRAIN_S
    probe = Probe(targets, everyone)
    profiler = Profiler(pace.profile, targets, "fanout" if fanout else "chat")
    rss_before = [rss_mib(t.pid) for t in targets]
    profiler.start(window)
    probe.start()
    window_start = time.monotonic()
    for w in everyone:
        w.conn.send("go")
    if sender_worker.expect(window + 60) != "sent":
        raise RuntimeError("the sender did not finish")
    time.sleep(DRAIN_S if fanout else 0.5)
    cpu = probe.stop()
    profile = profiler.stop()
    rss_after = [rss_mib(t.pid) for t in targets]
    dones = finish(everyone)
    sender_done = dones[-1]
    sends, acks = sender_done.sends, sender_done.acks
    arrivals: dict[str, list[float]] = {}
    for d in dones[:-1]:
        for cmid, ts in d.arrivals.items():
            arrivals.setdefault(cmid, []).extend(ts)
    measured = [f"{tag}-{i}" for i in range(pace.warmup, pace.messages)]
    expected = len(receivers)
    lost = sum(expected - len(arrivals.get(c, [])) for c in measured if c in sends)
    if fanout:
        latency, series = fanout_latency(measured, sends, arrivals, expected)
    else:
        latency, series = chat_latency(measured, sends, arrivals)
    series["ack_ms"] = [ms(acks[c] - sends[c]) if c in acks and c in sends else None for c in measured]
    ack = summarize(acks[c] - sends[c] for c in measured if c in acks and c in sends)
    if ack is not None:
        latency["send -> ack (sender)"] = ack
    figures: dict[str, Any] = {
        "room_members": expected + 1,
        "messages_sent": len(sends),
        "messages_measured": len(measured),
        "warmup_messages": pace.warmup,
        "interval_ms": pace.interval * 1000,
        "deliveries_lost": lost,
        "acks_missing": len(sends) - len(acks),
        "max_send_lag_ms": round(sender_done.max_send_lag_s * 1000, 2),
        "server_rss_mib_before_after": [[rounded(a), rounded(b)] for a, b in zip(rss_before, rss_after, strict=True)],
        "closed_by_server": merge_counts(d.closed for d in dones),
        "setup_errors": merge_counts([errors, s_errors]),
    }
    if pace.same_server and len(targets) > 1:
        figures["receivers"] = "all on the sender's server (--same-server)"
    goals = _goals(latency, expected, 1 if pace.same_server else len(targets), fanout)
    return SocketResult("fanout" if fanout else "chat", len(targets), pace.deflate, figures, latency, cpu,
                        [d.cpu_share for d in dones], goals, profile, series, window_start)  # fmt: skip


def fanout_latency(
    measured: list[str], sends: dict[str, float], arrivals: dict[str, list[float]], members: int
) -> tuple[dict[str, LatencySummary], Series]:
    """Per message: send -> first, median and last of `members` (only when all got it)."""
    first, last, median, every = [], [], [], []
    series: Series = {"first_ms": [], "last_ms": []}
    for c in measured:
        ts = sorted(t - sends[c] for t in arrivals.get(c, []))
        if c in sends and ts:
            every += ts
            first.append(ts[0])
            median.append(percentile(ts, 50))
            if len(ts) == members:
                last.append(ts[-1])
        series["first_ms"].append(ms(ts[0]) if ts else None)
        series["last_ms"].append(ms(ts[-1]) if len(ts) == members else None)
    latency: dict[str, LatencySummary] = {}
    for name, samples in (
        (f"send -> last of {members} members", last),
        ("send -> first member", first),
        ("send -> median member", median),
        ("send -> each delivery", every),
    ):
        s = summarize(samples)
        if s is not None:
            latency[name] = s
    return latency, series


def chat_latency(
    measured: list[str], sends: dict[str, float], arrivals: dict[str, list[float]]
) -> tuple[dict[str, LatencySummary], Series]:
    """Per message: send (A) -> the first `new_message` at B."""
    got = [c for c in measured if c in sends and c in arrivals]
    series: Series = {
        "latency_ms": [ms(min(arrivals[c]) - sends[c]) if c in sends and c in arrivals else None for c in measured]
    }
    one = summarize(min(arrivals[c]) - sends[c] for c in got)
    return ({"send (A) -> new_message (B)": one} if one is not None else {}), series


def _goals(latency: dict[str, LatencySummary], members: int, servers: int, fanout: bool) -> dict[str, str]:
    goals: dict[str, str] = {}
    if fanout:
        s = latency.get(f"send -> last of {members} members")
        if s is not None and members >= GOAL_FANOUT_MEMBERS:
            verdict = "met" if s.p99_ms < GOAL_FANOUT_P99_MS else "MISSED"
            goals[f"fan-out to 1,000 members p99 < {GOAL_FANOUT_P99_MS:.0f} ms"] = f"{verdict}: {s.p99_ms:.1f} ms"
        return goals
    s = latency.get("send (A) -> new_message (B)")
    limit = GOAL_CHAT_TWO_P99_MS if servers > 1 else GOAL_CHAT_P99_MS
    where = "across two instances" if servers > 1 else "one instance"
    if s is not None:
        goals[f"one-to-one p99 < {limit:.0f} ms ({where})"] = (
            f"{'met' if s.p99_ms < limit else 'MISSED'}: {s.p99_ms:.2f} ms"
        )
    return goals
