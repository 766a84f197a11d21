"""The pure parts of `vs-socketio`: what the Node driver prints, the server's CPU from
/proc/<pid>/stat, each window's samples, and the side-by-side table with its ratios.

Samples are kept per round in seconds and merged over the rounds of a side before any
percentile (bench.stats: a percentile of percentiles is not a percentile of the run).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from bench.report import Section, table
from bench.stats import LatencySummary, summarize

SIDES = {"socialhub": "socialhub", "socketio": "Socket.IO"}


class Ready(msgspec.Struct, frozen=True, tag_field="event", tag="ready"):
    """A driver process has opened (and authenticated, and joined) its sockets."""

    connected: int
    errors: dict[str, int]
    connect_ms: list[float]
    cpu_share: float


class Warm(msgspec.Struct, frozen=True, tag_field="event", tag="warm"):
    """The sender is past its warm-up messages: the measured part of the window begins."""


class Sent(msgspec.Struct, frozen=True, tag_field="event", tag="sent"):
    """The sender has sent every message and has their acks (or waited long enough)."""


class Done(msgspec.Struct, frozen=True, tag_field="event", tag="done"):
    """What a driver process saw over the window; times in ms of CLOCK_MONOTONIC."""

    arrivals: dict[str, list[float]]  # client_msg_id -> receipt times (receivers)
    sends: dict[str, float]  # client_msg_id -> send time (sender)
    acks: dict[str, float]
    closed: dict[str, int]  # sockets the server closed, by code or reason
    cpu_share: float  # of one core, between "go" and "stop"
    max_send_lag_ms: float


Event = Ready | Warm | Sent | Done
decode_event = msgspec.json.Decoder(Event).decode


def proc_cpu_split(stat: str, ticks_per_s: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads) from the text of /proc/<pid>/stat:
    CPU seconds in user space and in the kernel (system calls: a socket write is there).

    The command name (field 2) is in parentheses and may hold spaces or parentheses
    itself, so the fields are counted from the last ')'; utime and stime are fields 14
    and 15 of proc(5), in clock ticks.
    """
    rest = stat[stat.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): field n is rest[n - 3].
    return int(rest[11]) / ticks_per_s, int(rest[12]) / ticks_per_s


def proc_cpu_seconds(stat: str, ticks_per_s: int) -> float:
    """utime + stime of a process (all its threads) from the text of /proc/<pid>/stat."""
    return sum(proc_cpu_split(stat, ticks_per_s))


class WindowSamples(msgspec.Struct):
    """One chat or fan-out window of one side in one round."""

    members: int  # receivers in the room
    sent: int
    measured: int  # sent after the warm-up: the latencies and the CPU are of these
    latency_s: list[float]  # per measured message that every member got: send -> the last member's receipt
    each_s: list[float]  # every delivery of a measured message
    ack_s: list[float]
    lost: int  # deliveries of measured messages that never came
    server_cpu_s: float  # the server process(es) from the first measured message to the window's end
    wall_s: float
    cores: dict[str, float]  # cores used by group over the window (server, clients, postgres, redis, ...)
    driver_cpu: list[float]  # each driver process, share of one core
    closed: dict[str, int]
    server_system_s: float | None = None  # of server_cpu_s, the part in the kernel (stime)


class IdleSample(msgspec.Struct):
    sockets: int  # asked for
    connected: int
    rss_before_mib: float
    rss_after_mib: float
    connect_p50_ms: float | None
    errors: dict[str, int]
    driver_cpu: list[float]  # while connecting


class RoundResult(msgspec.Struct):
    side: str  # a key of SIDES
    round: int
    chat: WindowSamples | None = None
    fanout: WindowSamples | None = None
    idle: IdleSample | None = None
    logged_errors: dict[str, int] = {}


def window_samples(
    tag: str, warmup: int, members: int, dones: Sequence[Done], sender: Done
) -> tuple[list[float], list[float], list[float], int, int]:
    """From the driver processes' `Done`: per measured message send -> last of `members`
    (only when every member got it), every delivery, send -> ack; deliveries lost; measured."""
    arrivals: dict[str, list[float]] = {}
    for d in dones:
        for cmid, times in d.arrivals.items():
            arrivals.setdefault(cmid, []).extend(times)
    measured = [f"{tag}-{i}" for i in range(warmup, len(sender.sends))]
    last, each, acks, lost = [], [], [], 0
    for cmid in measured:
        sent = sender.sends[cmid]
        times = arrivals.get(cmid, [])
        lost += max(0, members - len(times))
        each += [(t - sent) / 1000 for t in times]
        if times and len(times) >= members:
            last.append((max(times) - sent) / 1000)
        if cmid in sender.acks:
            acks.append((sender.acks[cmid] - sent) / 1000)
    return last, each, acks, lost, len(measured)


def idle_kib_per_socket(samples: Sequence[IdleSample]) -> float | None:
    """Server RSS grown with the sockets, over all rounds: sum(after - before) / sum(sockets)."""
    sockets = sum(s.connected for s in samples)
    if sockets == 0:
        return None
    return sum(s.rss_after_mib - s.rss_before_mib for s in samples) * 1024 / sockets


def cpu_ms_per_message(windows: Sequence[WindowSamples]) -> float | None:
    """Server CPU over the measured messages of every window (warm-up left out: a fresh
    server compiles and fills caches on its first messages, Node's JIT most of all)."""
    measured = sum(w.measured for w in windows)
    return sum(w.server_cpu_s for w in windows) * 1000 / measured if measured else None


def system_ms_per_message(windows: Sequence[WindowSamples]) -> float | None:
    """The kernel's part of `cpu_ms_per_message` (None when a window did not record it)."""
    measured = sum(w.measured for w in windows)
    if not measured or any(w.server_system_s is None for w in windows):
        return None
    return sum(w.server_system_s or 0.0 for w in windows) * 1000 / measured


class SideSummary(msgspec.Struct):
    """One side over every round."""

    side: str
    rounds: int
    one_to_one: LatencySummary | None
    fanout_last: LatencySummary | None
    fanout_each: LatencySummary | None
    fanout_cpu_ms_per_message: float | None
    fanout_system_ms_per_message: float | None
    chat_cpu_ms_per_message: float | None
    rss_kib_per_idle_socket: float | None
    lost: int


def summarize_side(side: str, rounds: Sequence[RoundResult]) -> SideSummary:
    mine = [r for r in rounds if r.side == side]
    chats = [r.chat for r in mine if r.chat is not None]
    fanouts = [r.fanout for r in mine if r.fanout is not None]
    return SideSummary(
        side=side,
        rounds=len(mine),
        one_to_one=summarize(s for w in chats for s in w.latency_s),
        fanout_last=summarize(s for w in fanouts for s in w.latency_s),
        fanout_each=summarize(s for w in fanouts for s in w.each_s),
        fanout_cpu_ms_per_message=cpu_ms_per_message(fanouts),
        fanout_system_ms_per_message=system_ms_per_message(fanouts),
        chat_cpu_ms_per_message=cpu_ms_per_message(chats),
        rss_kib_per_idle_socket=idle_kib_per_socket([r.idle for r in mine if r.idle is not None]),
        lost=sum(w.lost for w in [*chats, *fanouts]),
    )


# (row label, unit, how to read it from a summary); lower is better for every one.
def _rows(members: int) -> list[tuple[str, str, str]]:
    return [
        ("one-to-one send -> receive p50", "ms", "one_to_one.p50"),
        ("one-to-one send -> receive p99", "ms", "one_to_one.p99"),
        (f"fan-out to {members:,}: server CPU per message", "ms", "fanout_cpu"),
        (f"fan-out to {members:,}: of which in the kernel", "ms", "fanout_system"),
        (f"fan-out to {members:,}: of which in user space", "ms", "fanout_user"),
        (f"fan-out to {members:,}: send -> last member p50", "ms", "fanout_last.p50"),
        (f"fan-out to {members:,}: send -> last member p99", "ms", "fanout_last.p99"),
        ("RSS per idle authenticated socket", "KiB", "rss"),
    ]


def _value(s: SideSummary, key: str) -> float | None:
    if key == "fanout_cpu":
        return s.fanout_cpu_ms_per_message
    if key == "fanout_system":
        return s.fanout_system_ms_per_message
    if key == "fanout_user":
        cpu, system = s.fanout_cpu_ms_per_message, s.fanout_system_ms_per_message
        return None if cpu is None or system is None else cpu - system
    if key == "rss":
        return s.rss_kib_per_idle_socket
    field, _, pct = key.partition(".")
    lat: LatencySummary | None = getattr(s, field)
    if lat is None:
        return None
    return lat.p50_ms if pct == "p50" else lat.p99_ms


def ratio(mine: float | None, peer: float | None) -> float | None:
    """socialhub / Socket.IO: below 1, socialhub is faster or leaner (every measure here is a cost)."""
    if mine is None or peer is None or peer <= 0:
        return None
    return mine / peer


def comparison(ours: SideSummary, peer: SideSummary, members: int) -> tuple[Section, dict[str, float | None]]:
    """The side-by-side table (every round merged) as a report section, and its ratios by measure."""
    rows = [["measure (lower is better)", SIDES[ours.side], SIDES[peer.side], "socialhub / Socket.IO"]]
    ratios: dict[str, float | None] = {}
    for label, unit, key in _rows(members):
        a, b = _value(ours, key), _value(peer, key)
        r = ratio(a, b)
        rows.append([f"{label}, {unit}", _fmt(a), _fmt(b), "-" if r is None else f"{r:.2f}"])
        ratios[label] = None if r is None else round(r, 3)
    title = f"socialhub vs Socket.IO 4 + Redis adapter, {ours.rounds} round(s) each, samples of all rounds merged"
    return Section(title=title, text=table(rows)), ratios


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"
